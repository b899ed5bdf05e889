//! The agent protocol: `nodes/{id}/heartbeat`, `nodes/{id}/work` (long poll), and the
//! attempt reports `jobs/{id}/attempts/{attempt}/started`, `.../finished`, `.../logs`.
//! Agent or admin keys.
//!
//! Heartbeats are not writes: the leader records them in memory ([`crate::Liveness`]),
//! so only the leader answers them. Reports are writes; `apply` refuses one for an
//! attempt that is no longer current (409 `stale_attempt`), so a job never runs twice.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use tanvrit_api::{
    Assignment, AttemptFinishedRequest, AttemptId, AttemptOutcome, AttemptStartedRequest,
    AttemptState, Consistency, ErrorBody, HeartbeatRequest, HeartbeatResponse, JobId, JobResponse,
    LogAppendRequest, LogAppendResponse, Millis, NodeId, NodeState, Scope, WorkRequest,
    WorkResponse,
};
use tanvrit_cluster::ClusterError;
use tanvrit_state::{Command, Effect, FinishKind, Rejection, State as DomainState};
use tokio::time::Instant;

use super::jobs::{check_reason, effect_job};
use super::ApiErrors;
use crate::app::{now_ms, unexpected, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiAttemptPath, ApiJson, ApiPath};
use crate::identity::{self, ensure_own_attempt};

/// The scopes that speak the agent protocol.
pub(crate) const AGENT_SCOPES: &[Scope] = &[Scope::Agent, Scope::Admin];

/// Tells the leader the node is alive; answers with the attempts the agent must stop.
#[utoipa::path(
    post,
    path = "/api/compute/nodes/{id}/heartbeat",
    tag = "agents",
    params(("id" = String, Path, description = "The node's id")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "Alive; stop the attempts listed", body = HeartbeatResponse),
        (status = 404, description = "`not_found`: the node is not registered", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the node is down or deleted; register it again", body = ErrorBody),
        // After `ApiErrors`, so this description of 503 replaces the generic one.
        ApiErrors,
        (status = 503, description = "`no_leader`: this replica does not lead; `leader` names the one that does", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_heartbeat_node(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    principal.require(AGENT_SCOPES)?;
    let node = NodeId(id);
    identity::require_node(&app, principal, &node).await?;
    heartbeat(&app, &node, &request).map(Json)
}

/// Long-polls for the node's assignments: every active attempt placed on it.
#[utoipa::path(
    post,
    path = "/api/compute/nodes/{id}/work",
    tag = "agents",
    params(("id" = String, Path, description = "The node's id")),
    request_body = WorkRequest,
    responses(
        (status = 200, description = "Every active attempt on the node", body = WorkResponse),
        (status = 404, description = "`not_found`: the node is not registered", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_poll_node_work(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    ApiJson(request): ApiJson<WorkRequest>,
) -> Result<Json<WorkResponse>, ApiError> {
    principal.require(AGENT_SCOPES)?;
    let node = NodeId(id);
    let _stream = app.open_stream(&principal, request.wait_ms)?;
    identity::require_node(&app, principal, &node).await?;
    poll_work(&app, &node, &request).await.map(Json)
}

/// Reports that an attempt's process started.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/attempts/{attempt}/started",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("attempt" = String, Path, description = "The attempt's id"),
    ),
    request_body = AttemptStartedRequest,
    responses(
        (status = 200, description = "The running job (a repeated report changes nothing)", body = JobResponse),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is not current or already ended; stop it", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_report_attempt_started(
    State(app): State<AppState>,
    principal: Principal,
    ApiAttemptPath { job, attempt }: ApiAttemptPath,
    ApiJson(request): ApiJson<AttemptStartedRequest>,
) -> Result<Json<JobResponse>, ApiError> {
    principal.require(AGENT_SCOPES)?;
    let (job, attempt) = (JobId(job), AttemptId(attempt));
    ensure_own_attempt(&app, &principal, &job, &attempt).await?;
    let at = app.read(|state| report_time(state, &job, &attempt, request.started_at, now_ms()));
    let (effect, index) = app
        .write(Command::AttemptStarted { job, attempt, at })
        .await?;
    Ok(Json(JobResponse {
        job: effect_job(effect)?,
        index,
    }))
}

/// Reports how an attempt ended; its runtime is charged and the job moves on (done,
/// retried, or ended).
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/attempts/{attempt}/finished",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("attempt" = String, Path, description = "The attempt's id"),
    ),
    request_body = AttemptFinishedRequest,
    responses(
        (status = 200, description = "The job after the attempt (a repeated report changes nothing)", body = JobResponse),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is not current or ended differently", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_report_attempt_finished(
    State(app): State<AppState>,
    principal: Principal,
    ApiAttemptPath { job, attempt }: ApiAttemptPath,
    ApiJson(request): ApiJson<AttemptFinishedRequest>,
) -> Result<Json<JobResponse>, ApiError> {
    principal.require(AGENT_SCOPES)?;
    check_reason(request.reason.as_deref())?;
    let (job, attempt) = (JobId(job), AttemptId(attempt));
    ensure_own_attempt(&app, &principal, &job, &attempt).await?;
    let at = app.read(|state| report_time(state, &job, &attempt, request.finished_at, now_ms()));
    let command = Command::AttemptFinished {
        job,
        attempt,
        kind: finish_kind(request.outcome),
        exit_code: request.exit_code,
        reason: request.reason,
        usage: request.usage,
        at,
    };
    let (effect, index) = app.write(command).await?;
    Ok(Json(JobResponse {
        job: effect_job(effect)?,
        index,
    }))
}

/// Appends the next chunk of an attempt's output at its byte offset. A chunk already
/// stored is accepted again (a retry after a lost answer); a chunk that leaves a gap is
/// 409 `log_gap`, whose message names the offset to send from.
#[utoipa::path(
    post,
    path = "/api/compute/jobs/{id}/attempts/{attempt}/logs",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("attempt" = String, Path, description = "The attempt's id"),
    ),
    request_body = LogAppendRequest,
    responses(
        (status = 200, description = "Stored (or already stored); send the next chunk from `next_offset`", body = LogAppendResponse),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`log_gap`: the chunk does not start where the stored output ends (the message names that offset); `stale_attempt`: unknown attempt", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_append_attempt_logs(
    State(app): State<AppState>,
    principal: Principal,
    ApiAttemptPath { job, attempt }: ApiAttemptPath,
    ApiJson(request): ApiJson<LogAppendRequest>,
) -> Result<Json<LogAppendResponse>, ApiError> {
    principal.require(AGENT_SCOPES)?;
    let (job, attempt) = (JobId(job), AttemptId(attempt));
    ensure_own_attempt(&app, &principal, &job, &attempt).await?;
    let command = Command::LogAppend {
        job: job.clone(),
        attempt: attempt.clone(),
        offset: request.offset,
        data: request.data,
        at: now_ms(),
    };
    let (effect, index) = app.write(command).await?;
    let next_offset = match effect {
        Effect::LogAppended {
            offset,
            len,
            duplicate: false,
        } => offset + len,
        // Already stored: the agent resumes from where the stored output ends now.
        Effect::LogAppended {
            offset,
            len,
            duplicate: true,
        } => app
            .read(|state| stored_log_bytes(state, &job, &attempt))
            .unwrap_or(offset + len),
        other => return Err(unexpected(other)),
    };
    Ok(Json(LogAppendResponse { next_offset, index }))
}

// ---- logic, testable on a bare `State` ------------------------------------------------

/// Answers a heartbeat. Only the leader keeps heartbeats, so elsewhere this is 503
/// `no_leader` naming the leader (a Raft replica can forward to it here instead).
fn heartbeat(
    app: &AppState,
    node: &NodeId,
    request: &HeartbeatRequest,
) -> Result<HeartbeatResponse, ApiError> {
    if !app.is_leader() {
        return Err(ApiError::Cluster(ClusterError::NoLeader {
            retry_after: app.config().retry_after,
            leader: app.cluster().leader_id(),
        }));
    }
    let (stop, index) = app.read(|state| {
        check_node_alive(state, node)?;
        Ok::<_, ApiError>((
            attempts_to_stop(state, node, &request.running),
            state.applied_index(),
        ))
    })?;
    app.liveness().record(node);
    let ttl_ms = app.config().node_ttl.as_millis() as u64;
    Ok(HeartbeatResponse {
        interval_ms: (ttl_ms / 3).max(1),
        ttl_ms,
        lost_after_ms: Some(app.config().lost_after().as_millis() as u64),
        stop,
        index,
    })
}

/// A node may heartbeat while it is ready or draining; a down or deleted node registers
/// again first (its work was declared lost).
pub(crate) fn check_node_alive(state: &DomainState, node: &NodeId) -> Result<(), ApiError> {
    let found = state
        .node(node)
        .ok_or_else(|| ApiError::not_found("node", node))?;
    match found.state {
        NodeState::Ready | NodeState::Draining => Ok(()),
        NodeState::Down | NodeState::Deleted => {
            Err(ApiError::Rejected(Rejection::IllegalTransition {
                kind: "node".into(),
                id: node.to_string(),
                from: found.state.as_str().into(),
                action: "heartbeat; register it again".into(),
            }))
        }
    }
}

/// The attempts of `running` the agent must stop: any that is not the current, assigned
/// or running attempt of a job on this node (unknown, superseded, ended, lost, moved) or
/// that is being cancelled (the agent stops it and reports it finished as cancelled).
pub(crate) fn attempts_to_stop(
    state: &DomainState,
    node: &NodeId,
    running: &[AttemptId],
) -> Vec<AttemptId> {
    let keep: HashSet<&AttemptId> = state
        .active_jobs_on(node)
        .filter_map(|job| job.current_attempt())
        .filter(|attempt| {
            matches!(
                attempt.state,
                AttemptState::Assigned | AttemptState::Running
            )
        })
        .map(|attempt| &attempt.id)
        .collect();
    let mut stop = Vec::new();
    for attempt in running {
        if !keep.contains(attempt) && !stop.contains(attempt) {
            stop.push(attempt.clone());
        }
    }
    stop
}

/// Every active attempt placed on `node`, as the agent runs it.
pub(crate) fn assignments(state: &DomainState, node: &NodeId) -> Vec<Assignment> {
    state
        .active_jobs_on(node)
        .filter_map(|job| {
            let attempt = job.current_attempt()?;
            Some(Assignment {
                job: job.id.clone(),
                attempt: attempt.id.clone(),
                spec: job.spec.clone(),
                state: attempt.state,
                log_offset: attempt.log_bytes,
            })
        })
        .collect()
}

/// What an agent acts on in a work answer: which attempts, in which state.
fn work_fingerprint(assignments: &[Assignment]) -> Vec<(AttemptId, AttemptState)> {
    assignments
        .iter()
        .map(|a| (a.attempt.clone(), a.state))
        .collect()
}

/// The work long poll. An agent behind this replica (`after_index` below the applied
/// index) is answered at once. Otherwise it has seen the node's work as it is now, so
/// the poll waits until that work changes (an attempt placed, cancelled, ended), not
/// merely until the index moves: log chunks from every agent move it many times a
/// second, and would otherwise wake every poll in the cluster.
async fn poll_work(
    app: &AppState,
    node: &NodeId,
    request: &WorkRequest,
) -> Result<WorkResponse, ApiError> {
    let wait = Duration::from_millis(request.wait_ms.unwrap_or(0)).min(app.config().long_poll_max);
    let deadline = Instant::now() + wait;
    let known = app.read(|state| state.node(node).is_some());
    if !known {
        // Maybe registered through the leader and not applied here yet.
        app.barrier(Consistency::Strict).await?;
        if !app.read(|state| state.node(node).is_some()) {
            return Err(ApiError::not_found("node", node));
        }
    }
    let shutting_down = app.shutting_down();
    tokio::pin!(shutting_down);
    let mut seen = None;
    loop {
        let response = app.read(|state| WorkResponse {
            assignments: assignments(state, node),
            index: state.applied_index(),
        });
        let fingerprint = work_fingerprint(&response.assignments);
        if let Some(before) = &seen {
            if *before != fingerprint {
                return Ok(response);
            }
        } else if response.index > request.after_index {
            return Ok(response);
        } else if response.index == request.after_index {
            // The agent has seen exactly this state: wait for its work to change.
            seen = Some(fingerprint);
        }
        // (Below `after_index`, this replica is behind what the agent saw: wait for it.)
        let now = Instant::now();
        if now >= deadline {
            return Ok(response);
        }
        tokio::select! {
            _ = app.reader().wait_past(response.index, deadline - now) => {}
            _ = &mut shutting_down => return Ok(response),
        }
    }
}

/// When an agent's report happened: its own clock's `reported` time, kept within
/// [the attempt's start (or placement), `now`], so a report delivered after an outage is
/// billed for the real runtime, and a skewed clock can neither bill the future nor run
/// time backwards. Unknown jobs and attempts get `now` (`apply` refuses them anyway).
pub(crate) fn report_time(
    state: &DomainState,
    job: &JobId,
    attempt: &AttemptId,
    reported: Option<Millis>,
    now: Millis,
) -> Millis {
    let earliest = state
        .find_attempt(job, attempt)
        .map(|attempt| attempt.started_at.unwrap_or(attempt.assigned_at));
    let at = reported.unwrap_or(now).min(now);
    match earliest {
        Some(earliest) => at.max(earliest),
        None => now,
    }
}

/// The stored output length of an attempt.
fn stored_log_bytes(state: &DomainState, job: &JobId, attempt: &AttemptId) -> Option<u64> {
    state.find_attempt(job, attempt).map(|a| a.log_bytes)
}

/// The domain's name for how an attempt ended.
pub(crate) fn finish_kind(outcome: AttemptOutcome) -> FinishKind {
    match outcome {
        AttemptOutcome::Succeeded => FinishKind::Succeeded,
        AttemptOutcome::Failed => FinishKind::Failed,
        AttemptOutcome::TimedOut => FinishKind::TimedOut,
        AttemptOutcome::Cancelled => FinishKind::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{JobSpec, Rates, Resources};
    use tanvrit_state::Placement;

    fn apply(state: &mut DomainState, command: Command) {
        let index = state.applied_index() + 1;
        state.apply(index, &command).expect("accepted");
    }

    /// node-1 with job-a running (att-a) and job-b assigned (att-b).
    fn busy_node() -> DomainState {
        let mut state = DomainState::new();
        apply(
            &mut state,
            Command::NodeRegister {
                node: NodeId::from("node-1"),
                name: "n1".into(),
                resources: Resources {
                    cpu_millis: 4000,
                    memory_mb: 4096,
                    gpus: 0,
                },
                labels: Default::default(),
                drivers: Vec::new(),
                at: 1,
            },
        );
        for name in ["a", "b"] {
            let job = JobId(format!("job-{name}"));
            apply(
                &mut state,
                Command::JobSubmit {
                    job: job.clone(),
                    business: "acme".into(),
                    spec: JobSpec {
                        command: vec!["true".into()],
                        ..JobSpec::default()
                    },
                    idempotency_key: None,
                    rates: Rates::default(),
                    at: 2,
                },
            );
            apply(
                &mut state,
                Command::JobsAssign {
                    placements: vec![Placement {
                        job,
                        attempt: AttemptId(format!("att-{name}")),
                        node: NodeId::from("node-1"),
                    }],
                    at: 100,
                },
            );
        }
        apply(
            &mut state,
            Command::AttemptStarted {
                job: JobId::from("job-a"),
                attempt: AttemptId::from("att-a"),
                at: 200,
            },
        );
        state
    }

    fn ids(ids: &[&str]) -> Vec<AttemptId> {
        ids.iter().map(|id| AttemptId::from(*id)).collect()
    }

    #[test]
    fn agents_stop_unknown_attempts_and_keep_current_ones() {
        let state = busy_node();
        let node = NodeId::from("node-1");
        assert!(attempts_to_stop(&state, &node, &ids(&["att-a", "att-b"])).is_empty());
        assert_eq!(
            attempts_to_stop(&state, &node, &ids(&["att-a", "att-x", "att-x"])),
            ids(&["att-x"])
        );
        assert_eq!(
            attempts_to_stop(&state, &NodeId::from("node-2"), &ids(&["att-a"])),
            ids(&["att-a"]),
            "an attempt placed on another node"
        );
    }

    #[test]
    fn agents_stop_cancelling_and_ended_attempts() {
        let mut state = busy_node();
        let node = NodeId::from("node-1");
        apply(
            &mut state,
            Command::JobCancel {
                job: JobId::from("job-a"),
                reason: None,
                at: 300,
            },
        );
        assert_eq!(
            attempts_to_stop(&state, &node, &ids(&["att-a", "att-b"])),
            ids(&["att-a"]),
            "cancelling: stop it, then report"
        );
        let cancelling = assignments(&state, &node);
        assert_eq!(cancelling.len(), 2);
        assert_eq!(cancelling[0].state, AttemptState::Cancelling);
        apply(
            &mut state,
            Command::AttemptFinished {
                job: JobId::from("job-a"),
                attempt: AttemptId::from("att-a"),
                kind: FinishKind::Cancelled,
                exit_code: None,
                reason: None,
                usage: None,
                at: 400,
            },
        );
        assert_eq!(
            attempts_to_stop(&state, &node, &ids(&["att-a", "att-b"])),
            ids(&["att-a"])
        );
        assert_eq!(assignments(&state, &node).len(), 1, "ended attempts leave");
    }

    #[test]
    fn heartbeats_need_a_ready_or_draining_node() {
        let mut state = busy_node();
        let node = NodeId::from("node-1");
        assert!(check_node_alive(&state, &node).is_ok());
        let unknown = check_node_alive(&state, &NodeId::from("node-9")).unwrap_err();
        assert_eq!(unknown.status().as_u16(), 404);
        apply(
            &mut state,
            Command::NodeLost {
                node: node.clone(),
                at: 500,
            },
        );
        let down = check_node_alive(&state, &node).unwrap_err();
        assert_eq!(
            (down.status().as_u16(), down.code()),
            (409, "illegal_transition")
        );
        assert!(down.to_string().contains("register it again"), "{down}");
    }

    #[test]
    fn assignments_carry_the_spec_state_and_stored_log_length() {
        let mut state = busy_node();
        apply(
            &mut state,
            Command::LogAppend {
                job: JobId::from("job-a"),
                attempt: AttemptId::from("att-a"),
                offset: 0,
                data: "hello".into(),
                at: 250,
            },
        );
        let work = assignments(&state, &NodeId::from("node-1"));
        let a = work.iter().find(|a| a.attempt.as_str() == "att-a").unwrap();
        assert_eq!((a.state, a.log_offset), (AttemptState::Running, 5));
        assert_eq!(a.spec.command, vec!["true".to_string()]);
        let b = work.iter().find(|a| a.attempt.as_str() == "att-b").unwrap();
        assert_eq!((b.state, b.log_offset), (AttemptState::Assigned, 0));
        assert_eq!(
            stored_log_bytes(&state, &JobId::from("job-a"), &AttemptId::from("att-a")),
            Some(5)
        );
    }

    #[test]
    fn report_times_are_clamped_between_the_attempts_start_and_now() {
        let state = busy_node();
        let (a, att_a) = (JobId::from("job-a"), AttemptId::from("att-a"));
        let (b, att_b) = (JobId::from("job-b"), AttemptId::from("att-b"));
        // att-a started at 200; att-b was placed at 100 and has not started.
        assert_eq!(report_time(&state, &a, &att_a, Some(250), 1000), 250);
        assert_eq!(report_time(&state, &a, &att_a, Some(5), 1000), 200);
        assert_eq!(report_time(&state, &a, &att_a, Some(9999), 1000), 1000);
        assert_eq!(report_time(&state, &a, &att_a, None, 1000), 1000);
        assert_eq!(report_time(&state, &b, &att_b, Some(50), 1000), 100);
        assert_eq!(
            report_time(&state, &a, &AttemptId::from("att-x"), Some(5), 1000),
            1000
        );
        // A start later than this replica's clock (another leader's clock ran ahead)
        // still wins: time never runs backwards within an attempt.
        assert_eq!(report_time(&state, &a, &att_a, Some(150), 180), 200);
    }

    #[test]
    fn every_outcome_maps_to_its_finish_kind() {
        assert_eq!(
            finish_kind(AttemptOutcome::Succeeded),
            FinishKind::Succeeded
        );
        assert_eq!(finish_kind(AttemptOutcome::Failed), FinishKind::Failed);
        assert_eq!(finish_kind(AttemptOutcome::TimedOut), FinishKind::TimedOut);
        assert_eq!(
            finish_kind(AttemptOutcome::Cancelled),
            FinishKind::Cancelled
        );
    }
}
