//! One attempt on this agent: its process (if it runs one here) and the delivery of
//! everything owed for it — the start, the output in order, then the result — retried
//! with backoff until the control plane takes it or refuses it for good.

use std::sync::Arc;

use tanvrit_client::api::{
    AttemptFinishedRequest, AttemptId, AttemptStartedRequest, JobId, LogAppendRequest,
};
use tanvrit_client::{log_gap_expected, ClientError};
use tokio::sync::{watch, Notify};

use crate::agent::Shared;
use crate::backoff::Backoff;
use crate::process::{self, RunSpec, StopReason};
use crate::spool::Next;

/// What the agent does for an attempt.
pub(crate) enum Work {
    /// Run the process, delivering as it goes.
    Run(Box<RunSpec>),
    /// Only deliver what the spool holds (a result recorded without a process here).
    Deliver { job: JobId, attempt: AttemptId },
}

/// Runs `work` to its end; returns the attempt's id for the agent's bookkeeping.
pub(crate) async fn run(
    shared: Arc<Shared>,
    work: Work,
    stop: watch::Receiver<Option<StopReason>>,
) -> AttemptId {
    let notify = Notify::new();
    match work {
        Work::Run(spec) => {
            tracing::info!(job = %spec.job, attempt = %spec.attempt, "starting");
            let runner = async {
                let result = process::run(&spec, &shared.spool, &notify, stop).await;
                tracing::info!(
                    job = %spec.job,
                    attempt = %spec.attempt,
                    outcome = ?result.outcome,
                    exit_code = ?result.exit_code,
                    reason = result.reason.as_deref().unwrap_or(""),
                    "ended"
                );
            };
            tokio::join!(runner, deliver(&shared, &spec.job, &spec.attempt, &notify));
            spec.attempt
        }
        Work::Deliver { job, attempt } => {
            deliver(&shared, &job, &attempt, &notify).await;
            attempt
        }
    }
}

/// How a failed call is handled.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The control plane is unreachable, unavailable or overloaded: try again later.
    Retry,
    /// 409 `log_gap`: the stored output ends at this offset.
    Gap(u64),
    /// The job no longer exists: nothing about this attempt will ever be taken.
    JobGone,
    /// Refused for good (stale attempt, invalid): repeating cannot help.
    Refused,
}

fn verdict(err: &ClientError) -> Verdict {
    if let Some(expected) = log_gap_expected(err) {
        return Verdict::Gap(expected);
    }
    match err {
        ClientError::Api { status: 404, .. } => Verdict::JobGone,
        // A key problem is an operator's to fix; keep what is owed until then.
        ClientError::Api {
            status: 401 | 403 | 408 | 429,
            ..
        } => Verdict::Retry,
        ClientError::Api { status, .. } if *status >= 500 => Verdict::Retry,
        ClientError::Api { .. } | ClientError::Config(_) => Verdict::Refused,
        // A TLS failure mid-run is most likely a certificate being rotated: keep what is
        // owed and try again.
        ClientError::Transport { .. } | ClientError::Tls { .. } | ClientError::Decode { .. } => {
            Verdict::Retry
        }
    }
}

/// Delivers the start, the output and the result of `attempt`, in that order, until the
/// result is taken (or refused for good). Output is batched: after new output arrives
/// the agent waits up to the flush interval unless a whole chunk (or the result) is
/// ready.
async fn deliver(shared: &Shared, job: &JobId, attempt: &AttemptId, notify: &Notify) {
    let config = &shared.config;
    let client = &shared.client;
    let spool = &shared.spool;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    loop {
        let failure = match spool.next(attempt, config.log_chunk_bytes) {
            Next::Gone => return,
            Next::Wait => {
                notify.notified().await;
                // The start goes out at once (it is what makes the job `running`);
                // output waits up to the flush interval to fill a chunk.
                if !spool.start_undelivered(attempt)
                    && spool.pending_bytes(attempt) < config.log_chunk_bytes as u64
                    && !spool.is_finished(attempt)
                {
                    tokio::time::sleep(config.log_flush_interval).await;
                }
                continue;
            }
            Next::Started(at) => {
                let request = AttemptStartedRequest {
                    started_at: Some(at),
                };
                match client.report_attempt_started(job, attempt, request).await {
                    Ok(_) => {
                        spool.started_delivered(attempt);
                        None
                    }
                    Err(err) => match verdict(&err) {
                        Verdict::Retry | Verdict::Gap(_) => Some(err),
                        Verdict::JobGone => return drop_attempt(shared, attempt, &err),
                        Verdict::Refused => {
                            // E.g. cancelled before the start arrived: the result says
                            // how it ended, so the start is simply not recorded.
                            tracing::debug!(attempt = %attempt, error = %err, "start refused");
                            spool.started_delivered(attempt);
                            None
                        }
                    },
                }
            }
            Next::Chunk(chunk) => {
                let request = LogAppendRequest {
                    offset: chunk.offset,
                    data: chunk.data.clone(),
                };
                match client.append_attempt_logs(job, attempt, request).await {
                    Ok(response) => {
                        spool.acked(attempt, &chunk, response.next_offset);
                        None
                    }
                    Err(err) => match verdict(&err) {
                        Verdict::Retry => Some(err),
                        Verdict::Gap(expected) => {
                            tracing::info!(attempt = %attempt, sent = chunk.offset, expected, "log gap; resynchronising");
                            spool.resync(attempt, &chunk, expected);
                            None
                        }
                        Verdict::JobGone => return drop_attempt(shared, attempt, &err),
                        Verdict::Refused => {
                            // Skip this chunk: the next one is sent past it, the server
                            // answers with a gap, and a marker takes the chunk's place.
                            tracing::warn!(attempt = %attempt, error = %err, "log chunk refused; skipping it");
                            spool.acked(attempt, &chunk, chunk.offset);
                            None
                        }
                    },
                }
            }
            Next::Finished(result) => {
                match client
                    .report_attempt_finished(job, attempt, result.clone())
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(attempt = %attempt, "result delivered");
                        spool.remove(attempt);
                        return;
                    }
                    Err(err) => match verdict(&err) {
                        Verdict::Retry => Some(err),
                        _ => return drop_attempt(shared, attempt, &err),
                    },
                }
            }
        };
        match failure {
            None => backoff.reset(),
            Some(err) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 {
                    tracing::warn!(attempt = %attempt, error = %err, "cannot reach the control plane; spooling and retrying");
                } else {
                    tracing::debug!(attempt = %attempt, error = %err, ?delay, "still unreachable");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The control plane will never take anything more for this attempt (stale, or its job
/// is gone): forget it. A process still running for it is stopped when a heartbeat
/// lists it.
fn drop_attempt(shared: &Shared, attempt: &AttemptId, err: &ClientError) {
    tracing::info!(attempt = %attempt, error = %err, "the control plane refused this attempt's reports; dropping them");
    shared.spool.remove(attempt);
}

/// The result recorded for an attempt the agent has no process for.
pub(crate) fn result_without_process(
    outcome: tanvrit_client::api::AttemptOutcome,
    reason: &str,
) -> AttemptFinishedRequest {
    AttemptFinishedRequest {
        outcome,
        exit_code: None,
        reason: Some(reason.to_string()),
        finished_at: Some(process::now_ms()),
        usage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            leader: None,
        }
    }

    #[test]
    fn failures_are_retried_only_when_a_later_try_can_succeed() {
        assert_eq!(verdict(&api(503, "no_leader", "")), Verdict::Retry);
        assert_eq!(verdict(&api(500, "internal", "")), Verdict::Retry);
        assert_eq!(verdict(&api(401, "unauthorized", "")), Verdict::Retry);
        let transport = ClientError::Transport {
            endpoint: "http://x".into(),
            message: "refused".into(),
            not_sent: true,
            timed_out: false,
        };
        assert_eq!(verdict(&transport), Verdict::Retry);
        assert_eq!(
            verdict(&api(
                409,
                "log_gap",
                "... does not continue the output ending at 12"
            )),
            Verdict::Gap(12)
        );
        assert_eq!(verdict(&api(404, "not_found", "")), Verdict::JobGone);
        assert_eq!(verdict(&api(409, "stale_attempt", "")), Verdict::Refused);
        assert_eq!(verdict(&api(422, "invalid", "")), Verdict::Refused);
    }
}
