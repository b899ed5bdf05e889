//! One typed method per API route, using the request and response types of `tanvrit-api`.
//!
//! Reads pass their consistency through [`Client::read_consistency`]; writes that the
//! server deduplicates are marked so the retry loop may repeat them (see [`Client`]), and
//! every write carries the handle's `Idempotency-Key`, if it has one
//! ([`Client::with_idempotency_key`]).

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Serialize;
use tanvrit_api::{
    AttemptFinishedRequest, AttemptId, AttemptStartedRequest, Consistency, CreditBalanceRequest,
    CreditBalanceResponse, CreditEntriesRequest, CreditEntriesResponse, CreditEntryCreateRequest,
    CreditEntryResponse, CreditExportRequest, HeartbeatRequest, HeartbeatResponse,
    JobActionRequest, JobId, JobListRequest, JobListResponse, JobLogsRequest, JobLogsResponse,
    JobResponse, JobSubmitRequest, KeyCreateRequest, KeyCreateResponse, KeyId, KeyListResponse,
    KeyResponse, LogAppendRequest, LogAppendResponse, MetricsSummary, NodeDeleteRequest,
    NodeDrainRequest, NodeId, NodeListRequest, NodeListResponse, NodeRegisterRequest, NodeResponse,
    ReadRequest, ScheduleCreateRequest, ScheduleId, ScheduleListRequest, ScheduleListResponse,
    ScheduleResponse, ScheduleUpdateRequest, Topology, WorkRequest, WorkResponse, WriteResponse,
    IDEMPOTENCY_HEADER,
};

use crate::client::{Call, Safety};
use crate::{Client, ClientError};

/// The body of calls that take no parameters.
#[derive(Serialize)]
struct Empty {}

impl Client {
    // ---- jobs ----

    /// `jobs/submit`. Without an idempotency key (in the body, or on the handle) and with
    /// retries on, the SDK picks one for the body (`sdk-<uuid v7>`) so a retried submit
    /// cannot create a second job.
    pub async fn submit_job(&self, mut req: JobSubmitRequest) -> Result<JobResponse, ClientError> {
        let safety = self.body_key(&mut req.idempotency_key);
        self.json(self.write(&["jobs", "submit"], &req, safety)?)
            .await
    }

    /// `jobs/list`, newest first, one page.
    pub async fn list_jobs(&self, mut req: JobListRequest) -> Result<JobListResponse, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        self.json(Call::api(&["jobs", "list"], &req, Safety::Read)?)
            .await
    }

    /// `jobs/{id}/get`.
    pub async fn get_job(
        &self,
        id: &JobId,
        consistency: Consistency,
    ) -> Result<JobResponse, ClientError> {
        let body = self.read_request(consistency);
        self.json(Call::api(
            &["jobs", id.as_str(), "get"],
            &body,
            Safety::Read,
        )?)
        .await
    }

    /// `jobs/{id}/cancel`.
    pub async fn cancel_job(
        &self,
        id: &JobId,
        req: JobActionRequest,
    ) -> Result<JobResponse, ClientError> {
        self.json(self.write(&["jobs", id.as_str(), "cancel"], &req, Safety::Write)?)
            .await
    }

    /// `jobs/{id}/retry`.
    pub async fn retry_job(
        &self,
        id: &JobId,
        req: JobActionRequest,
    ) -> Result<JobResponse, ClientError> {
        self.json(self.write(&["jobs", id.as_str(), "retry"], &req, Safety::Write)?)
            .await
    }

    /// `jobs/{id}/logs`: a window of an attempt's output. With `wait_ms` the server holds
    /// the request until output arrives or the wait ends; the HTTP timeout grows to match.
    pub async fn job_logs(
        &self,
        id: &JobId,
        mut req: JobLogsRequest,
    ) -> Result<JobLogsResponse, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        let mut call = Call::api(&["jobs", id.as_str(), "logs"], &req, Safety::Read)?;
        call.extra_timeout = Duration::from_millis(req.wait_ms.unwrap_or(0));
        self.json(call).await
    }

    // ---- nodes ----

    /// `nodes/register` (agent keys). Re-registering the same id is how an agent comes
    /// back after a restart, so this write is repeated after transport failures.
    pub async fn register_node(
        &self,
        req: NodeRegisterRequest,
    ) -> Result<NodeResponse, ClientError> {
        self.json(self.write(&["nodes", "register"], &req, Safety::IdempotentWrite)?)
            .await
    }

    /// `nodes/list`.
    pub async fn list_nodes(
        &self,
        mut req: NodeListRequest,
    ) -> Result<NodeListResponse, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        self.json(Call::api(&["nodes", "list"], &req, Safety::Read)?)
            .await
    }

    /// `nodes/{id}/get`.
    pub async fn get_node(
        &self,
        id: &NodeId,
        consistency: Consistency,
    ) -> Result<NodeResponse, ClientError> {
        let body = self.read_request(consistency);
        self.json(Call::api(
            &["nodes", id.as_str(), "get"],
            &body,
            Safety::Read,
        )?)
        .await
    }

    /// `nodes/{id}/drain`.
    pub async fn drain_node(
        &self,
        id: &NodeId,
        req: NodeDrainRequest,
    ) -> Result<NodeResponse, ClientError> {
        self.json(self.write(&["nodes", id.as_str(), "drain"], &req, Safety::Write)?)
            .await
    }

    /// `nodes/{id}/delete`.
    pub async fn delete_node(
        &self,
        id: &NodeId,
        req: NodeDeleteRequest,
    ) -> Result<NodeResponse, ClientError> {
        self.json(self.write(&["nodes", id.as_str(), "delete"], &req, Safety::Write)?)
            .await
    }

    // ---- the agent protocol ----

    /// `nodes/{id}/heartbeat` (agent keys): not a write; answered by the leader only
    /// (a follower's 503 `no_leader` moves the call on). Repeating one is harmless.
    pub async fn heartbeat_node(
        &self,
        id: &NodeId,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.json(Call::api(
            &["nodes", id.as_str(), "heartbeat"],
            &req,
            Safety::IdempotentWrite,
        )?)
        .await
    }

    /// `nodes/{id}/work` (agent keys): the node's active attempts, held by the server
    /// until its index passes `after_index` and the work changes, or `wait_ms` ends. The
    /// HTTP timeout grows by `wait_ms`.
    pub async fn poll_node_work(
        &self,
        id: &NodeId,
        req: WorkRequest,
    ) -> Result<WorkResponse, ClientError> {
        let mut call = Call::api(&["nodes", id.as_str(), "work"], &req, Safety::Read)?;
        call.extra_timeout = Duration::from_millis(req.wait_ms.unwrap_or(0));
        self.json(call).await
    }

    /// `jobs/{id}/attempts/{attempt}/started` (agent keys). The server treats a repeated
    /// report as a no-op, so it is repeated after transport failures.
    pub async fn report_attempt_started(
        &self,
        job: &JobId,
        attempt: &AttemptId,
        req: AttemptStartedRequest,
    ) -> Result<JobResponse, ClientError> {
        self.json(Call::api(
            &[
                "jobs",
                job.as_str(),
                "attempts",
                attempt.as_str(),
                "started",
            ],
            &req,
            Safety::IdempotentWrite,
        )?)
        .await
    }

    /// `jobs/{id}/attempts/{attempt}/finished` (agent keys). A repeated identical report
    /// is a no-op on the server, so it is repeated after transport failures; a report for
    /// an attempt that is no longer current is 409 `stale_attempt`.
    pub async fn report_attempt_finished(
        &self,
        job: &JobId,
        attempt: &AttemptId,
        req: AttemptFinishedRequest,
    ) -> Result<JobResponse, ClientError> {
        self.json(Call::api(
            &[
                "jobs",
                job.as_str(),
                "attempts",
                attempt.as_str(),
                "finished",
            ],
            &req,
            Safety::IdempotentWrite,
        )?)
        .await
    }

    /// `jobs/{id}/attempts/{attempt}/logs` (agent keys): appends a chunk at its byte
    /// offset. A chunk already stored is accepted again, so it is repeated after
    /// transport failures; a chunk that leaves a gap is 409 `log_gap` (see
    /// [`log_gap_expected`]).
    pub async fn append_attempt_logs(
        &self,
        job: &JobId,
        attempt: &AttemptId,
        req: LogAppendRequest,
    ) -> Result<LogAppendResponse, ClientError> {
        self.json(Call::api(
            &["jobs", job.as_str(), "attempts", attempt.as_str(), "logs"],
            &req,
            Safety::IdempotentWrite,
        )?)
        .await
    }

    // ---- keys ----

    /// `keys/create` (admin). The response's `secret` is shown this once: repeated with
    /// the same idempotency key, the server answers 409
    /// `idempotent_replay_secret_unavailable` naming the key it created instead.
    pub async fn create_key(
        &self,
        req: KeyCreateRequest,
    ) -> Result<KeyCreateResponse, ClientError> {
        self.json(self.write(&["keys", "create"], &req, Safety::Write)?)
            .await
    }

    /// `keys/list` (admin).
    pub async fn list_keys(&self) -> Result<KeyListResponse, ClientError> {
        self.json(Call::api(&["keys", "list"], &Empty {}, Safety::Read)?)
            .await
    }

    /// `keys/{id}/revoke` (admin).
    pub async fn revoke_key(&self, id: &KeyId) -> Result<KeyResponse, ClientError> {
        self.json(self.write(&["keys", id.as_str(), "revoke"], &Empty {}, Safety::Write)?)
            .await
    }

    // ---- credits ----

    /// `credits/entries/create` (admin). Like [`Client::submit_job`], a missing
    /// idempotency key is filled in when retries are on, so a retry never credits twice.
    pub async fn create_credit_entry(
        &self,
        mut req: CreditEntryCreateRequest,
    ) -> Result<CreditEntryResponse, ClientError> {
        let safety = self.body_key(&mut req.idempotency_key);
        self.json(self.write(&["credits", "entries", "create"], &req, safety)?)
            .await
    }

    /// `credits/balance`.
    pub async fn credit_balance(
        &self,
        mut req: CreditBalanceRequest,
    ) -> Result<CreditBalanceResponse, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        self.json(Call::api(&["credits", "balance"], &req, Safety::Read)?)
            .await
    }

    /// `credits/entries/list`.
    pub async fn credit_entries(
        &self,
        mut req: CreditEntriesRequest,
    ) -> Result<CreditEntriesResponse, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        self.json(Call::api(
            &["credits", "entries", "list"],
            &req,
            Safety::Read,
        )?)
        .await
    }

    /// `credits/entries/export` (admin): a business's ledger between two times as CSV
    /// text (header `seq,id,at,kind,amount,balance_after,job,idempotency_key,note`).
    pub async fn export_credit_entries(
        &self,
        mut req: CreditExportRequest,
    ) -> Result<String, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        let call = Call::api(&["credits", "entries", "export"], &req, Safety::Read)?;
        Ok(self.execute(&call).await?.text())
    }

    // ---- schedules ----

    /// `schedules/create`.
    pub async fn create_schedule(
        &self,
        req: ScheduleCreateRequest,
    ) -> Result<ScheduleResponse, ClientError> {
        self.json(self.write(&["schedules", "create"], &req, Safety::Write)?)
            .await
    }

    /// `schedules/list`.
    pub async fn list_schedules(
        &self,
        mut req: ScheduleListRequest,
    ) -> Result<ScheduleListResponse, ClientError> {
        req.consistency = self.read_consistency(req.consistency);
        self.json(Call::api(&["schedules", "list"], &req, Safety::Read)?)
            .await
    }

    /// `schedules/{id}/get`.
    pub async fn get_schedule(
        &self,
        id: &ScheduleId,
        consistency: Consistency,
    ) -> Result<ScheduleResponse, ClientError> {
        let body = self.read_request(consistency);
        self.json(Call::api(
            &["schedules", id.as_str(), "get"],
            &body,
            Safety::Read,
        )?)
        .await
    }

    /// `schedules/{id}/update`: only the fields that are set change.
    pub async fn update_schedule(
        &self,
        id: &ScheduleId,
        req: ScheduleUpdateRequest,
    ) -> Result<ScheduleResponse, ClientError> {
        self.json(self.write(&["schedules", id.as_str(), "update"], &req, Safety::Write)?)
            .await
    }

    /// `schedules/{id}/delete`.
    pub async fn delete_schedule(&self, id: &ScheduleId) -> Result<WriteResponse, ClientError> {
        self.json(self.write(
            &["schedules", id.as_str(), "delete"],
            &Empty {},
            Safety::Write,
        )?)
        .await
    }

    // ---- cluster and operations ----

    /// `cluster/topology`: every replica as the answering one sees it.
    pub async fn topology(&self) -> Result<Topology, ClientError> {
        self.json(Call::api(
            &["cluster", "topology"],
            &Empty {},
            Safety::Read,
        )?)
        .await
    }

    /// `POST /api/compute/metrics`: aggregated counts as JSON.
    pub async fn metrics_summary(&self) -> Result<MetricsSummary, ClientError> {
        self.json(Call::api(&["metrics"], &Empty {}, Safety::Read)?)
            .await
    }

    /// `GET /healthz`: the body of a healthy answer.
    pub async fn healthz(&self) -> Result<String, ClientError> {
        Ok(self.execute(&Call::get("/healthz")).await?.text())
    }

    /// `GET /readyz`: the body of a ready answer; not ready is an [`ClientError::Api`].
    pub async fn readyz(&self) -> Result<String, ClientError> {
        Ok(self.execute(&Call::get("/readyz")).await?.text())
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        Ok(self.execute(&Call::get("/metrics")).await?.text())
    }

    /// `GET /api/openapi.json`: the OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json(Call::get("/api/openapi.json")).await
    }

    // ---- helpers ----

    fn read_request(&self, consistency: Consistency) -> ReadRequest {
        ReadRequest {
            consistency: self.read_consistency(consistency),
        }
    }

    /// The body's idempotency key of a submit or credit entry: the caller's, else (with
    /// retries on and no key on the handle, which the server takes for the body's) a
    /// fresh `sdk-<uuid v7>`. A body key makes the write safe to repeat.
    ///
    /// Only the body carries an invented key: the header would also make the server keep
    /// the whole response for its idempotency window, for every submit.
    fn body_key(&self, slot: &mut Option<String>) -> Safety {
        if slot.is_none() && self.idempotency_key().is_none() && self.config().max_retries > 0 {
            *slot = Some(format!("sdk-{}", uuid::Uuid::now_v7()));
        }
        match slot {
            Some(_) => Safety::IdempotentWrite,
            None => Safety::Write,
        }
    }

    /// A write call with the handle's `Idempotency-Key`, if it has one (which makes any
    /// write safe to repeat).
    fn write<B: Serialize>(
        &self,
        segments: &[&str],
        body: &B,
        safety: Safety,
    ) -> Result<Call, ClientError> {
        let Some(key) = self.idempotency_key() else {
            return Call::api(segments, body, safety);
        };
        let mut call = Call::api(segments, body, Safety::IdempotentWrite)?;
        let value = HeaderValue::from_str(key).map_err(|_| {
            ClientError::Config(format!(
                "idempotency key `{key}` contains characters not allowed in a header"
            ))
        })?;
        let name = HeaderName::from_bytes(IDEMPOTENCY_HEADER.as_bytes())
            .map_err(|e| ClientError::Config(format!("header name: {e}")))?;
        call.headers.push((name, value));
        Ok(call)
    }
}

/// For a 409 `log_gap`, the offset the stored output ends at (where the next chunk must
/// start), read from the message the server words as `... ending at <offset>`.
pub fn log_gap_expected(err: &ClientError) -> Option<u64> {
    match err {
        ClientError::Api { code, message, .. } if code == "log_gap" => {
            let (_, tail) = message.rsplit_once("ending at ")?;
            let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str, message: &str) -> ClientError {
        ClientError::Api {
            status: 409,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            leader: None,
        }
    }

    #[test]
    fn a_log_gap_names_where_the_stored_output_ends() {
        let gap = api(
            "log_gap",
            "log chunk at offset 10 does not continue the output ending at 4096",
        );
        assert_eq!(log_gap_expected(&gap), Some(4096));
        assert_eq!(log_gap_expected(&api("log_gap", "garbled")), None);
        assert_eq!(
            log_gap_expected(&api("stale_attempt", "the output ending at 5")),
            None,
            "only log_gap carries an offset"
        );
    }
}
