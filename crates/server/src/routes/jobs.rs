//! `jobs/submit`, `jobs/list`, `jobs/{id}/get`, `jobs/{id}/cancel`, `jobs/{id}/retry`,
//! `jobs/{id}/logs` (with long polling).

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use tanvrit_api::{
    Attempt, BusinessId, ErrorBody, Job, JobActionRequest, JobId, JobListRequest, JobListResponse,
    JobLogsRequest, JobLogsResponse, JobResponse, JobSubmitRequest, Millis, Rates, ReadRequest,
    Scope, IDEMPOTENCY_HEADER,
};
use tanvrit_cluster::{ClusterError, LogWindow};
use tanvrit_state::{
    validate, ArchiveError, Command, Effect, JobFilter, Rejection, State as DomainState,
};
use tokio::time::Instant;

use super::{ApiErrors, IdempotencyHeader};
use crate::app::{job_id_time, new_id, now_ms, unexpected, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, IdempotencyKey};

/// Scopes that may use the job routes.
const JOB_SCOPES: &[Scope] = &[Scope::Admin, Scope::User];
/// Page size of `jobs/list` when none is asked for.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Largest page of `jobs/list`.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Window of `jobs/{id}/logs` when none is asked for.
pub const DEFAULT_LOG_WINDOW: u64 = 1024 * 1024;
/// Largest window of `jobs/{id}/logs`; larger asks are trimmed to it.
pub const MAX_LOG_WINDOW: u64 = 4 * 1024 * 1024;

/// Submits a job for a business; the credits its reservation needs are held at once.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/submit",
    tag = "jobs",
    request_body = JobSubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first response (same job and `index`) while the server keeps it (24 h by default); the same key with another request is 422 `idempotency_conflict`. Also the job's `idempotency_key`: the body's, if given, must be the same")),
    responses(
        (status = 200, description = "The new job, or the first response for a repeated idempotency key", body = JobResponse),
        (status = 402, description = "`insufficient_credits`: the balance cannot cover the hold", body = ErrorBody),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_submit_job(
    State(app): State<AppState>,
    principal: Principal,
    keyed: IdempotencyKey,
    ApiJson(mut request): ApiJson<JobSubmitRequest>,
) -> Result<Json<JobResponse>, ApiError> {
    principal.require(JOB_SCOPES)?;
    // The header is the body's key too, so the job is found by it after the window.
    // Merged first, so a retry that sends the key in one place or both fingerprints alike.
    request.idempotency_key =
        merge_idempotency(request.idempotency_key, keyed.key().map(str::to_string))?;
    let idempotency = keyed.bind(&principal, &request)?;
    let command = submit_command(&principal, request, None, app.config().rates, now_ms())?;
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(JobResponse {
        job: effect_job(written.effect)?,
        index: written.index,
    }))
}

/// Lists jobs, newest first, a page at a time.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/list",
    tag = "jobs",
    request_body = JobListRequest,
    responses(
        (status = 200, description = "A page of jobs", body = JobListResponse),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_list_jobs(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<JobListRequest>,
) -> Result<Json<JobListResponse>, ApiError> {
    principal.require(JOB_SCOPES)?;
    app.barrier(request.consistency).await?;
    app.read(|state| list_jobs(state, &principal, &request))
        .map(Json)
}

/// Reads one job.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/get",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The job", body = JobResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 410, description = "`job_expired`: the job ended longer ago than `compute.retention.jobs` and was collected (its ledger entries remain)", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_job(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<JobResponse>, ApiError> {
    principal.require(JOB_SCOPES)?;
    app.barrier(request.consistency).await?;
    app.read(|state| {
        let job = visible_job(state, &principal, &JobId(id))?.into_owned();
        Ok(Json(JobResponse {
            job,
            index: state.applied_index(),
        }))
    })
}

/// Cancels a job; a running attempt is told to stop.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), IdempotencyHeader),
    request_body = JobActionRequest,
    responses(
        (status = 200, description = "The cancelled job", body = JobResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 410, description = "`job_expired`: the job was collected by retention", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the job already ended", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_cancel_job(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<JobActionRequest>,
) -> Result<Json<JobResponse>, ApiError> {
    job_action(app, principal, id, keyed, request, |job, reason| {
        Command::JobCancel {
            job,
            reason,
            at: now_ms(),
        }
    })
    .await
}

/// Requeues a failed, cancelled or lost job (a new hold is placed).
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), IdempotencyHeader),
    request_body = JobActionRequest,
    responses(
        (status = 200, description = "The requeued job", body = JobResponse),
        (status = 402, description = "`insufficient_credits`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the job has not ended, or is still stopping", body = ErrorBody),
        (status = 410, description = "`job_expired`: the job was collected by retention", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_retry_job(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<JobActionRequest>,
) -> Result<Json<JobResponse>, ApiError> {
    job_action(app, principal, id, keyed, request, |job, reason| {
        if let Some(reason) = &reason {
            // `JobRetry` records no reason; keep it in the server log for the record.
            tracing::info!(job = %job, reason = %reason, "job retry requested");
        }
        Command::JobRetry { job, at: now_ms() }
    })
    .await
}

/// The shared body of cancel and retry: authorize, check the job is visible to the
/// caller (404 otherwise, 410 if retention collected it), write the command built from
/// the job id and the reason.
async fn job_action(
    app: AppState,
    principal: Principal,
    id: String,
    keyed: IdempotencyKey,
    request: JobActionRequest,
    command: impl FnOnce(JobId, Option<String>) -> Command,
) -> Result<Json<JobResponse>, ApiError> {
    principal.require(JOB_SCOPES)?;
    let job = JobId(id);
    check_reason(request.reason.as_deref())?;
    let written = async {
        app.ensure_visible(&principal, "job", job.as_str(), |s| owner(s, &job))
            .await?;
        let idempotency = keyed.bind(&principal, &request)?;
        app.write_keyed(command(job.clone(), request.reason), idempotency)
            .await
    }
    .await
    // Missing here (admins skip the visibility check) or by the time it applied.
    .map_err(|error| match error {
        ApiError::NotFound(_) | ApiError::Rejected(Rejection::NotFound { .. }) => {
            app.read(|state| missing_job(state, &job))
        }
        other => other,
    })?;
    Ok(Json(JobResponse {
        job: effect_job(written.effect)?,
        index: written.index,
    }))
}

/// Reads a window of an attempt's output. With `wait_ms`, waits (at most the server's
/// `long_poll_max`) until there is new output or the attempt ends.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/logs",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = JobLogsRequest,
    responses(
        (status = 200, description = "A window of output", body = JobLogsResponse),
        (status = 404, description = "`not_found`: no such job or attempt", body = ErrorBody),
        (status = 410, description = "`job_expired`: the job was collected by retention, with its logs", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_job_logs(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    ApiJson(request): ApiJson<JobLogsRequest>,
) -> Result<Json<JobLogsResponse>, ApiError> {
    principal.require(JOB_SCOPES)?;
    let _stream = app.open_stream(&principal, request.wait_ms)?;
    app.barrier(request.consistency).await?;
    follow_logs(&app, &principal, &JobId(id), &request)
        .await
        .map(Json)
}

/// Reads a window; while it is empty and more output can come, waits for the applied
/// index to move (every `LogAppend` and attempt change moves it) until `wait_ms`, the
/// server's `long_poll_max`, or shutdown.
async fn follow_logs(
    app: &AppState,
    principal: &Principal,
    job: &JobId,
    request: &JobLogsRequest,
) -> Result<JobLogsResponse, ApiError> {
    let max_bytes = log_window(request.max_bytes)?;
    let wait = Duration::from_millis(request.wait_ms.unwrap_or(0)).min(app.config().long_poll_max);
    let deadline = Instant::now() + wait;
    let shutting_down = app.shutting_down();
    tokio::pin!(shutting_down);
    loop {
        // Take the index before reading, so output applied after the read wakes the wait.
        let applied = app.reader().applied_index();
        let plan = app.read(|state| plan_log_read(state, principal, job, request))?;
        let window = match &plan.attempt {
            Some(attempt) if request.offset < attempt.log_bytes => {
                app.reader()
                    .job_log(job, &attempt.id, request.offset, max_bytes)?
            }
            _ => LogWindow {
                offset: request.offset,
                data: Vec::new(),
                next_offset: request.offset,
            },
        };
        let response = logs_response(&plan, window, app.reader().applied_index());
        let now = Instant::now();
        if !response.data.is_empty() || plan.finished || now >= deadline {
            return Ok(response);
        }
        tokio::select! {
            _ = app.reader().wait_past(applied, deadline - now) => {}
            _ = &mut shutting_down => return Ok(response),
        }
    }
}

// ---- logic, testable on a bare `State` ------------------------------------------------

/// Merges the header and body idempotency keys; both given must agree.
pub(crate) fn merge_idempotency(
    body: Option<String>,
    header: Option<String>,
) -> Result<Option<String>, ApiError> {
    let key = match (body, header) {
        (Some(body), Some(header)) if body != header => {
            return Err(ApiError::Invalid(format!(
                "`idempotency_key` and the `{IDEMPOTENCY_HEADER}` header differ"
            )))
        }
        (Some(key), _) | (None, Some(key)) => Some(key),
        (None, None) => None,
    };
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
        return Err(ApiError::Invalid("idempotency keys are 1-256 bytes".into()));
    }
    Ok(key)
}

/// Builds the `JobSubmit` command: the business it acts for, a new id, the rates, now.
pub(crate) fn submit_command(
    principal: &Principal,
    request: JobSubmitRequest,
    header_key: Option<String>,
    rates: Rates,
    at: Millis,
) -> Result<Command, ApiError> {
    let business = principal.required_business(request.business.as_ref())?;
    validate::identifier("business", business.as_str())?;
    validate::job_spec(&request.spec)?;
    validate::admission_resources(&request.spec.resources)?;
    let idempotency_key = merge_idempotency(request.idempotency_key, header_key)?;
    Ok(Command::JobSubmit {
        job: JobId(new_id("job")),
        business,
        spec: request.spec,
        idempotency_key,
        rates,
        at,
    })
}

pub(crate) fn check_reason(reason: Option<&str>) -> Result<(), ApiError> {
    match reason {
        Some(reason) if reason.len() > 4096 => {
            Err(ApiError::Invalid("reasons are at most 4096 bytes".into()))
        }
        _ => Ok(()),
    }
}

pub(crate) fn effect_job(effect: Effect) -> Result<Job, ApiError> {
    match effect {
        Effect::Job { job, .. } => Ok(*job),
        other => Err(unexpected(other)),
    }
}

fn owner(state: &DomainState, job: &JobId) -> Option<BusinessId> {
    // An archive that cannot answer hides the job; the read that follows reports it.
    match state.find_job(job) {
        Ok(found) => found.map(|job| job.business.clone()),
        Err(_) => None,
    }
}

/// The error for a failed read of the job archive (the replica's disk).
pub(crate) fn archive_failed(err: ArchiveError) -> ApiError {
    ApiError::Cluster(ClusterError::Storage(err.to_string()))
}

/// A job this principal may see, from memory or the archive; 404 if there is none (or
/// it is another business's), 410 if retention collected it.
pub(crate) fn visible_job<'s>(
    state: &'s DomainState,
    principal: &Principal,
    id: &JobId,
) -> Result<Cow<'s, Job>, ApiError> {
    match state.find_job(id).map_err(archive_failed)? {
        Some(job) if principal.sees(&job.business) => Ok(job),
        Some(_) => Err(ApiError::not_found("job", id)),
        None => Err(missing_job(state, id)),
    }
}

/// The error for a job id this replica does not hold: 410 `job_expired` when retention
/// collected it (its id's time is before the collection horizon), else 404. A collected
/// job's business is gone with it, so any key that may read jobs gets the 410.
pub(crate) fn missing_job(state: &DomainState, id: &JobId) -> ApiError {
    match job_id_time(id) {
        Some(created) if state.job_collected(id, created) => ApiError::JobExpired {
            job: id.to_string(),
        },
        _ => ApiError::not_found("job", id),
    }
}

/// A page of jobs as `jobs/list` answers it.
pub(crate) fn list_jobs(
    state: &DomainState,
    principal: &Principal,
    request: &JobListRequest,
) -> Result<JobListResponse, ApiError> {
    let limit = request.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::Invalid(format!(
            "`limit` must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let filter = JobFilter {
        state: request.state,
        business: principal.business_filter(request.business.as_ref())?,
        after: request.after.clone(),
        limit: limit as usize,
    };
    let (jobs, next) = state.list_jobs(&filter).map_err(archive_failed)?;
    Ok(JobListResponse {
        jobs,
        next,
        index: state.applied_index(),
    })
}

fn log_window(max_bytes: Option<u64>) -> Result<usize, ApiError> {
    match max_bytes.unwrap_or(DEFAULT_LOG_WINDOW) {
        0 => Err(ApiError::Invalid("`max_bytes` must be at least 1".into())),
        n => Ok(n.min(MAX_LOG_WINDOW) as usize),
    }
}

/// What a logs read found in the state: which attempt, and whether more can come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogPlan {
    /// The attempt to read (none if the job never ran).
    pub attempt: Option<Attempt>,
    /// No more output will ever come for this read: the attempt ended, or the job ended
    /// without ever running.
    pub finished: bool,
}

/// Picks the attempt a logs request reads (the one named, else the current one).
pub(crate) fn plan_log_read(
    state: &DomainState,
    principal: &Principal,
    job: &JobId,
    request: &JobLogsRequest,
) -> Result<LogPlan, ApiError> {
    let found = visible_job(state, principal, job)?;
    let attempt = match &request.attempt {
        Some(wanted) => Some(
            found
                .attempts
                .iter()
                .find(|a| &a.id == wanted)
                .ok_or_else(|| {
                    ApiError::Rejected(Rejection::NotFound {
                        kind: "attempt".into(),
                        id: wanted.to_string(),
                    })
                })?
                .clone(),
        ),
        None => found.current_attempt().cloned(),
    };
    let finished = match &attempt {
        Some(attempt) => !attempt.state.is_active(),
        None => found.state.is_terminal(),
    };
    Ok(LogPlan { attempt, finished })
}

/// The response for a window read under `plan`. Output is cut before a UTF-8 character
/// split by the window's end (the next read starts with it), unless nothing would remain.
pub(crate) fn logs_response(plan: &LogPlan, window: LogWindow, index: u64) -> JobLogsResponse {
    let total = plan.attempt.as_ref().map_or(0, |a| a.log_bytes);
    let at_end = window.next_offset >= total;
    let keep = if plan.finished && at_end {
        window.data.len()
    } else {
        whole_chars_len(&window.data)
    };
    let next_offset = window.offset + keep as u64;
    JobLogsResponse {
        attempt: plan.attempt.as_ref().map(|a| a.id.clone()),
        offset: window.offset,
        data: String::from_utf8_lossy(&window.data[..keep]).into_owned(),
        next_offset,
        complete: plan.finished && next_offset >= total,
        index,
    }
}

/// Length of `data` without a multi-byte UTF-8 sequence cut short at its end (all of it
/// if cutting would leave nothing).
fn whole_chars_len(data: &[u8]) -> usize {
    for back in 1..=data.len().min(3) {
        let byte = data[data.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        let start = data.len() - back;
        return if needed > back && start > 0 {
            start
        } else {
            data.len()
        };
    }
    data.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{AttemptId, JobSpec, JobState, KeyId, NodeId, Resources};
    use tanvrit_state::{FinishKind, Placement};

    fn user(business: &str) -> Principal {
        Principal {
            key: KeyId::from("key-u"),
            scope: Scope::User,
            business: Some(BusinessId::from(business)),
            node: None,
        }
    }

    fn admin() -> Principal {
        Principal {
            key: KeyId::from("key-a"),
            scope: Scope::Admin,
            business: None,
            node: None,
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            command: vec!["echo".into(), "hi".into()],
            resources: Resources {
                cpu_millis: 100,
                memory_mb: 64,
                gpus: 0,
            },
            ..JobSpec::default()
        }
    }

    /// A state with two businesses' jobs; returns the job ids, oldest first.
    fn state_with_jobs() -> (DomainState, Vec<JobId>) {
        let mut state = DomainState::new();
        let mut index = 0;
        let mut apply = |state: &mut DomainState, command: Command| {
            index += 1;
            state.apply(index, &command).expect("accepted")
        };
        let mut ids = Vec::new();
        for (i, business) in ["acme", "globex", "acme"].iter().enumerate() {
            let request = JobSubmitRequest {
                business: Some(BusinessId::from(*business)),
                spec: spec(),
                idempotency_key: None,
            };
            let command =
                submit_command(&admin(), request, None, Rates::default(), 10 + i as i64).unwrap();
            let Command::JobSubmit { job, .. } = &command else {
                unreachable!()
            };
            ids.push(job.clone());
            apply(&mut state, command);
        }
        (state, ids)
    }

    #[test]
    fn a_user_submission_is_billed_to_its_own_business_at_the_configured_rates() {
        let rates = Rates {
            cpu_second: 7,
            memory_gb_second: 1,
            gpu_second: 0,
            attempt_minimum: 0,
            basis: tanvrit_api::BillingBasis::Reserved,
        };
        let request = JobSubmitRequest {
            business: None,
            spec: spec(),
            idempotency_key: None,
        };
        let command =
            submit_command(&user("acme"), request, Some("key-1".into()), rates, 42).unwrap();
        let Command::JobSubmit {
            job,
            business,
            idempotency_key,
            rates: recorded,
            at,
            ..
        } = command
        else {
            panic!("not a submit: {command:?}");
        };
        assert!(job.as_str().starts_with("job-"));
        assert_eq!(business.as_str(), "acme");
        assert_eq!(
            idempotency_key.as_deref(),
            Some("key-1"),
            "the header is an alias"
        );
        assert_eq!((recorded, at), (rates, 42));
    }

    #[test]
    fn submissions_with_bad_input_are_refused_before_anything_is_proposed() {
        let bad_spec = JobSubmitRequest {
            business: Some(BusinessId::from("acme")),
            spec: JobSpec::default(),
            idempotency_key: None,
        };
        let error = submit_command(&admin(), bad_spec, None, Rates::default(), 1).unwrap_err();
        assert_eq!((error.status().as_u16(), error.code()), (422, "invalid"));

        let no_business = JobSubmitRequest {
            business: None,
            spec: spec(),
            idempotency_key: None,
        };
        let error = submit_command(&admin(), no_business, None, Rates::default(), 1).unwrap_err();
        assert_eq!(
            error.status().as_u16(),
            422,
            "admin keys must name a business"
        );

        let bad_business = JobSubmitRequest {
            business: Some(BusinessId::from("not a business")),
            spec: spec(),
            idempotency_key: None,
        };
        let error = submit_command(&admin(), bad_business, None, Rates::default(), 1).unwrap_err();
        assert_eq!(error.code(), "invalid");

        let other = JobSubmitRequest {
            business: Some(BusinessId::from("globex")),
            spec: spec(),
            idempotency_key: None,
        };
        let error = submit_command(&user("acme"), other, None, Rates::default(), 1).unwrap_err();
        assert_eq!(error.status().as_u16(), 404);
    }

    #[test]
    fn a_submission_naming_zero_cpu_or_memory_is_refused_with_zero_resources() {
        for (cpu_millis, memory_mb) in [(0, 256), (1000, 0)] {
            let mut zero = spec();
            zero.resources = Resources {
                cpu_millis,
                memory_mb,
                gpus: 0,
            };
            let request = JobSubmitRequest {
                business: Some(BusinessId::from("acme")),
                spec: zero,
                idempotency_key: None,
            };
            let error = submit_command(&admin(), request, None, Rates::default(), 1).unwrap_err();
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (422, "zero_resources")
            );
        }
    }

    #[test]
    fn header_and_body_idempotency_keys_must_agree() {
        assert_eq!(
            merge_idempotency(Some("a".into()), Some("a".into())).unwrap(),
            Some("a".into())
        );
        assert_eq!(merge_idempotency(None, None).unwrap(), None);
        assert_eq!(
            merge_idempotency(Some("a".into()), Some("b".into()))
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            merge_idempotency(Some(String::new()), None)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            merge_idempotency(None, Some("x".repeat(257)))
                .unwrap_err()
                .code(),
            "invalid"
        );
    }

    #[test]
    fn user_keys_list_only_their_own_jobs() {
        let (state, ids) = state_with_jobs();
        let all = list_jobs(&state, &admin(), &JobListRequest::default()).unwrap();
        assert_eq!(all.jobs.len(), 3);
        let acme = list_jobs(&state, &user("acme"), &JobListRequest::default()).unwrap();
        let listed: Vec<_> = acme.jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(listed, vec![ids[2].clone(), ids[0].clone()], "newest first");
        let asked_other = JobListRequest {
            business: Some(BusinessId::from("globex")),
            ..JobListRequest::default()
        };
        assert_eq!(
            list_jobs(&state, &user("acme"), &asked_other)
                .unwrap_err()
                .status()
                .as_u16(),
            404
        );
        let admin_filtered = list_jobs(&state, &admin(), &asked_other).unwrap();
        assert_eq!(admin_filtered.jobs.len(), 1);
        assert_eq!(admin_filtered.index, state.applied_index());
    }

    #[test]
    fn list_pages_continue_after_the_last_id_and_limits_are_bounded() {
        let (state, ids) = state_with_jobs();
        let first = JobListRequest {
            limit: Some(2),
            ..JobListRequest::default()
        };
        let page = list_jobs(&state, &admin(), &first).unwrap();
        assert_eq!(page.jobs.len(), 2);
        let next = JobListRequest {
            limit: Some(2),
            after: page.next.clone(),
            ..JobListRequest::default()
        };
        let rest = list_jobs(&state, &admin(), &next).unwrap();
        assert_eq!(
            rest.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            vec![ids[0].clone()]
        );
        assert_eq!(rest.next, None);
        for limit in [0, MAX_LIST_LIMIT + 1] {
            let request = JobListRequest {
                limit: Some(limit),
                ..JobListRequest::default()
            };
            assert_eq!(
                list_jobs(&state, &admin(), &request).unwrap_err().code(),
                "invalid"
            );
        }
        let by_state = JobListRequest {
            state: Some(JobState::Running),
            ..JobListRequest::default()
        };
        assert!(list_jobs(&state, &admin(), &by_state)
            .unwrap()
            .jobs
            .is_empty());
    }

    #[test]
    fn another_business_job_is_not_found_for_a_user_key() {
        let (state, ids) = state_with_jobs();
        assert!(visible_job(&state, &user("acme"), &ids[0]).is_ok());
        let error = visible_job(&state, &user("acme"), &ids[1]).unwrap_err();
        assert_eq!((error.status().as_u16(), error.code()), (404, "not_found"));
        assert!(visible_job(&state, &admin(), &ids[1]).is_ok());
        assert!(visible_job(&state, &admin(), &JobId::from("job-nope")).is_err());
    }

    #[test]
    fn a_collected_job_is_expired_and_an_id_newer_than_the_horizon_is_not_found() {
        // Ids with chosen times: a fired job's id carries its due time.
        let id_at = |at: Millis| crate::cron::fire_job_id(&"sch".into(), at);
        let (old, newer) = (id_at(1_000), id_at(5_000));
        let mut state = DomainState::new();
        let commands = [
            Command::JobSubmit {
                job: old.clone(),
                business: BusinessId::from("acme"),
                spec: spec(),
                idempotency_key: None,
                rates: Rates::default(),
                at: 1_000,
            },
            Command::JobCancel {
                job: old.clone(),
                reason: None,
                at: 2_000,
            },
            Command::JobsCollect {
                cutoff: 3_000,
                limit: 10,
                at: 3_000,
            },
        ];
        for (index, command) in commands.iter().enumerate() {
            state.apply(index as u64 + 1, command).unwrap();
        }
        for principal in [admin(), user("acme"), user("globex")] {
            let error = visible_job(&state, &principal, &old).unwrap_err();
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (410, "job_expired")
            );
        }
        let error = visible_job(&state, &admin(), &newer).unwrap_err();
        assert_eq!((error.status().as_u16(), error.code()), (404, "not_found"));
        let error = visible_job(&state, &admin(), &JobId::from("job-nope")).unwrap_err();
        assert_eq!(
            error.code(),
            "not_found",
            "no time in the id: never expired"
        );
        // An id that never existed but is older than the horizon cannot be told apart.
        assert_eq!(missing_job(&state, &id_at(2_500)).code(), "job_expired");
        let logs = plan_log_read(&state, &admin(), &old, &JobLogsRequest::default());
        assert_eq!(logs.unwrap_err().code(), "job_expired");
    }

    fn run_job(state: &mut DomainState, job: &JobId, finish: Option<FinishKind>) -> AttemptId {
        let next = state.applied_index() + 1;
        state
            .apply(
                next,
                &Command::NodeRegister {
                    node: NodeId::from("node-1"),
                    name: "n1".into(),
                    resources: Resources {
                        cpu_millis: 4000,
                        memory_mb: 4096,
                        gpus: 0,
                    },
                    labels: Default::default(),
                    drivers: Vec::new(),
                    at: 30,
                },
            )
            .unwrap();
        let attempt = AttemptId::from("att-1");
        let mut commands = vec![
            Command::JobsAssign {
                placements: vec![Placement {
                    job: job.clone(),
                    attempt: attempt.clone(),
                    node: NodeId::from("node-1"),
                }],
                at: 31,
            },
            Command::AttemptStarted {
                job: job.clone(),
                attempt: attempt.clone(),
                at: 32,
            },
            Command::LogAppend {
                job: job.clone(),
                attempt: attempt.clone(),
                offset: 0,
                data: "héllo\n".into(),
                at: 33,
            },
        ];
        if let Some(kind) = finish {
            commands.push(Command::AttemptFinished {
                job: job.clone(),
                attempt: attempt.clone(),
                kind,
                exit_code: Some(0),
                reason: None,
                usage: None,
                at: 34,
            });
        }
        for command in commands {
            let next = state.applied_index() + 1;
            state.apply(next, &command).unwrap();
        }
        attempt
    }

    fn window(offset: u64, data: &[u8]) -> LogWindow {
        LogWindow {
            offset,
            data: data.to_vec(),
            next_offset: offset + data.len() as u64,
        }
    }

    #[test]
    fn a_job_that_never_ran_has_no_attempt_and_is_finished_only_once_it_ended() {
        let (mut state, ids) = state_with_jobs();
        let request = JobLogsRequest::default();
        let plan = plan_log_read(&state, &admin(), &ids[0], &request).unwrap();
        assert_eq!(
            plan,
            LogPlan {
                attempt: None,
                finished: false
            }
        );
        let next = state.applied_index() + 1;
        state
            .apply(
                next,
                &Command::JobCancel {
                    job: ids[0].clone(),
                    reason: None,
                    at: 50,
                },
            )
            .unwrap();
        let plan = plan_log_read(&state, &admin(), &ids[0], &request).unwrap();
        assert!(plan.finished);
        let response = logs_response(&plan, window(0, b""), 7);
        assert!(response.complete);
        assert_eq!(response.attempt, None);
    }

    #[test]
    fn logs_are_complete_only_when_the_attempt_ended_and_every_byte_was_read() {
        let (mut state, ids) = state_with_jobs();
        let attempt = run_job(&mut state, &ids[0], None);
        let plan =
            plan_log_read(&state, &user("acme"), &ids[0], &JobLogsRequest::default()).unwrap();
        assert_eq!(
            plan.attempt.as_ref().map(|a| a.id.clone()),
            Some(attempt.clone())
        );
        assert!(!plan.finished, "still running");
        let output = "héllo\n".as_bytes();
        let running = logs_response(&plan, window(0, output), 9);
        assert_eq!(running.data, "héllo\n");
        assert!(!running.complete);

        let next = state.applied_index() + 1;
        state
            .apply(
                next,
                &Command::AttemptFinished {
                    job: ids[0].clone(),
                    attempt: attempt.clone(),
                    kind: FinishKind::Succeeded,
                    exit_code: Some(0),
                    reason: None,
                    usage: None,
                    at: 40,
                },
            )
            .unwrap();
        let plan =
            plan_log_read(&state, &user("acme"), &ids[0], &JobLogsRequest::default()).unwrap();
        assert!(plan.finished);
        let partial = logs_response(&plan, window(0, &output[..3]), 9);
        assert!(!partial.complete, "bytes remain");
        let whole = logs_response(&plan, window(0, output), 9);
        assert!(whole.complete);
        assert_eq!(whole.next_offset, output.len() as u64);
        assert_eq!(state.job(&ids[0]).unwrap().attempts.len(), 1);
    }

    #[test]
    fn a_window_never_ends_inside_a_utf8_character_while_more_output_follows() {
        let (mut state, ids) = state_with_jobs();
        run_job(&mut state, &ids[0], None);
        let plan = plan_log_read(&state, &admin(), &ids[0], &JobLogsRequest::default()).unwrap();
        // "hé" is 68 C3 A9: a window of two bytes ends inside the é.
        let cut = logs_response(&plan, window(0, &[0x68, 0xC3]), 1);
        assert_eq!(cut.data, "h");
        assert_eq!(cut.next_offset, 1, "the next read starts at the é");
        let lone = logs_response(&plan, window(1, &[0xC3]), 1);
        assert_eq!(
            lone.next_offset, 2,
            "a lone partial byte is returned rather than nothing"
        );
        assert_eq!(whole_chars_len("a€".as_bytes()), 4);
        assert_eq!(whole_chars_len(&"a€".as_bytes()[..3]), 1);
        assert_eq!(whole_chars_len(&[]), 0);
    }

    #[test]
    fn naming_an_unknown_attempt_is_not_found() {
        let (mut state, ids) = state_with_jobs();
        run_job(&mut state, &ids[0], Some(FinishKind::Succeeded));
        let request = JobLogsRequest {
            attempt: Some(AttemptId::from("att-nope")),
            ..JobLogsRequest::default()
        };
        let error = plan_log_read(&state, &admin(), &ids[0], &request).unwrap_err();
        assert_eq!(error.status().as_u16(), 404);
        let error = plan_log_read(&state, &user("globex"), &ids[0], &JobLogsRequest::default())
            .unwrap_err();
        assert_eq!(error.status().as_u16(), 404, "another business's job");
    }

    #[test]
    fn log_windows_default_to_a_mebibyte_and_are_bounded() {
        assert_eq!(log_window(None).unwrap(), DEFAULT_LOG_WINDOW as usize);
        assert_eq!(log_window(Some(10)).unwrap(), 10);
        assert_eq!(log_window(Some(u64::MAX)).unwrap(), MAX_LOG_WINDOW as usize);
        assert_eq!(log_window(Some(0)).unwrap_err().code(), "invalid");
    }
}
