//! Writes that are certainly refused are answered without being proposed, so a key
//! cannot grow the replicated log with requests the state already refuses (402, 404,
//! 409 `illegal_transition` / `stale_attempt` / `log_gap`, 410, 422).
//!
//! [`refusal`] mirrors a subset of `apply`'s checks on this replica's state; it only
//! ever refuses what `apply` would refuse on that state, and answers `None` (propose
//! it) whenever it is unsure. A refusal seen locally is checked again after a strict
//! read barrier (`AppState::write_keyed`), so a replica that has not applied a write
//! the client already saw acknowledged (a top-up, a registration) never refuses on stale
//! state: the answer is what `apply` would have said had the write been ordered at that
//! moment. `apply` keeps every check of its own, so a write racing another still ends
//! correctly.
//!
//! A refusal answered here is not recorded under the request's `Idempotency-Key`: a
//! retry with the same key is checked afresh (as Stripe does for requests refused before
//! they run). A key that already has a record is always proposed, so its replay is
//! answered from the record.

use tanvrit_api::{
    Attempt, AttemptId, AttemptState, BusinessId, JobId, JobSpec, JobState, NodeState, Rates,
};
use tanvrit_state::{
    billing, validate, Command, Rejection, State as DomainState, MAX_LOG_CHUNK_BYTES,
};

use crate::error::ApiError;
use crate::routes::jobs::missing_job;

/// Why `apply` would certainly refuse `command` on `state`, or `None` when it may
/// accept it (or this check does not know).
pub(crate) fn refusal(state: &DomainState, command: &Command) -> Option<ApiError> {
    match command {
        Command::Idempotent {
            key,
            scope,
            command,
            ..
        } => {
            if state.idempotency_record(scope, key).is_some() {
                return None;
            }
            refusal(state, command)
        }
        Command::JobSubmit {
            job,
            business,
            spec,
            idempotency_key,
            rates,
            ..
        } => submit_refusal(
            state,
            job,
            business,
            spec,
            idempotency_key.as_deref(),
            rates,
        ),
        Command::JobCancel { job, .. } => {
            let found = match state.find_job(job) {
                Ok(Some(found)) => found,
                Ok(None) => return Some(missing_job(state, job)),
                // The archive could not tell: `apply` will.
                Err(_) => return None,
            };
            found
                .state
                .is_terminal()
                .then(|| illegal("job", job.as_str(), found.state.as_str(), "cancel").into())
        }
        Command::JobRetry { job, .. } => {
            let found = match state.find_job(job) {
                Ok(Some(found)) => found,
                Ok(None) => return Some(missing_job(state, job)),
                Err(_) => return None,
            };
            let stopping = found.current_attempt().is_some_and(|a| a.state.is_active());
            let ended = matches!(
                found.state,
                JobState::Failed | JobState::Cancelled | JobState::Lost
            );
            if !ended || stopping {
                let from = if stopping {
                    "still stopping"
                } else {
                    found.state.as_str()
                };
                return Some(illegal("job", job.as_str(), from, "retry").into());
            }
            let hold =
                billing::hold_for(&found.spec.resources, &found.rates, found.spec.timeout_secs);
            credits_refusal(state, &found.business, hold)
        }
        Command::AttemptStarted { job, attempt, .. } => {
            let (current, found) = match find_attempt(state, job, attempt) {
                Ok(found) => found,
                Err(refusal) => return refusal,
            };
            let startable =
                current && matches!(found.state, AttemptState::Assigned | AttemptState::Running);
            (!startable).then(|| {
                stale(
                    job,
                    attempt,
                    format!("attempt is {:?}", found.state).to_lowercase(),
                )
            })
        }
        Command::AttemptFinished { job, attempt, .. } => {
            find_attempt(state, job, attempt).err().flatten()
        }
        Command::LogAppend {
            job,
            attempt,
            offset,
            data,
            ..
        } => {
            if data.len() > MAX_LOG_CHUNK_BYTES {
                return Some(ApiError::Rejected(Rejection::Invalid {
                    message: format!("log chunks are limited to {MAX_LOG_CHUNK_BYTES} bytes"),
                }));
            }
            let stored = match find_attempt(state, job, attempt) {
                Ok((_, found)) => found.log_bytes,
                Err(refusal) => return refusal,
            };
            let len = data.len() as u64;
            let duplicate = if len == 0 {
                *offset == stored
            } else {
                offset + len <= stored
            };
            (!duplicate && *offset != stored).then(|| {
                Rejection::LogGap {
                    offset: *offset,
                    expected: stored,
                }
                .into()
            })
        }
        Command::NodeDrain { node, .. } | Command::NodeDelete { node, .. } => {
            match state.node(node) {
                None => Some(
                    Rejection::NotFound {
                        kind: "node".into(),
                        id: node.to_string(),
                    }
                    .into(),
                ),
                Some(found) if matches!(found.state, NodeState::Deleted) => {
                    let action = match command {
                        Command::NodeDrain { .. } => "drain",
                        _ => "delete",
                    };
                    Some(illegal("node", node.as_str(), "deleted", action).into())
                }
                Some(_) => None,
            }
        }
        Command::KeyRevoke { key, .. } => state.key(key).is_none().then(|| {
            Rejection::NotFound {
                kind: "key".into(),
                id: key.to_string(),
            }
            .into()
        }),
        Command::ScheduleUpdate { schedule, .. } | Command::ScheduleDelete { schedule, .. } => {
            state.schedule(schedule).is_none().then(|| {
                Rejection::NotFound {
                    kind: "schedule".into(),
                    id: schedule.to_string(),
                }
                .into()
            })
        }
        _ => None,
    }
}

/// An attempt of a job: (is it the current one, the attempt), or `apply`'s refusal
/// for a missing job or an unknown attempt.
fn find_attempt(
    state: &DomainState,
    job: &JobId,
    attempt: &AttemptId,
) -> Result<(bool, Attempt), Option<ApiError>> {
    let found = match state.find_job(job) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(Some(missing_job(state, job))),
        // The archive could not tell: `apply` will.
        Err(_) => return Err(None),
    };
    let position = found
        .attempts
        .iter()
        .position(|a| &a.id == attempt)
        .ok_or_else(|| Some(stale(job, attempt, "unknown attempt".into())))?;
    Ok((
        position + 1 == found.attempts.len(),
        found.attempts[position].clone(),
    ))
}

fn stale(job: &JobId, attempt: &AttemptId, detail: String) -> ApiError {
    Rejection::StaleAttempt {
        job: job.to_string(),
        attempt: attempt.to_string(),
        detail,
    }
    .into()
}

/// A submission's refusals, in `apply`'s order: a kept idempotency key answers with its
/// job (or a conflict) before anything else is checked.
fn submit_refusal(
    state: &DomainState,
    job: &JobId,
    business: &BusinessId,
    spec: &JobSpec,
    idempotency_key: Option<&str>,
    rates: &Rates,
) -> Option<ApiError> {
    if let Some(key) = idempotency_key {
        // A kept key (or an archive that cannot tell) leaves the answer to `apply`.
        if !matches!(state.job_by_idempotency_key(business, key), Ok(None)) {
            return None;
        }
    }
    let checked = validate::identifier("business", business.as_str())
        .and_then(|()| validate::identifier("job id", job.as_str()))
        .and_then(|()| validate::job_spec(spec));
    if let Err(rejection) = checked {
        return Some(rejection.into());
    }
    if !matches!(state.find_job(job), Ok(None)) {
        return None;
    }
    let hold = billing::hold_for(&spec.resources, rates, spec.timeout_secs);
    credits_refusal(state, business, hold)
}

/// 402 when the business cannot cover `hold` now.
fn credits_refusal(state: &DomainState, business: &BusinessId, hold: i64) -> Option<ApiError> {
    let available = state.account(business).map_or(0, |a| a.available);
    (hold > available).then(|| {
        Rejection::InsufficientCredits {
            business: business.to_string(),
            needed: hold,
            available,
        }
        .into()
    })
}

fn illegal(kind: &str, id: &str, from: &str, action: &str) -> Rejection {
    Rejection::IllegalTransition {
        kind: kind.into(),
        id: id.into(),
        from: from.into(),
        action: action.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{KeyId, NodeId, Resources, ScheduleId};

    fn submit(business: &str, cpu_millis: u64, key: Option<&str>) -> Command {
        Command::JobSubmit {
            job: JobId(format!("job-{}", key.unwrap_or("1"))),
            business: business.into(),
            spec: JobSpec {
                command: vec!["true".into()],
                resources: Resources {
                    cpu_millis,
                    memory_mb: 0,
                    gpus: 0,
                },
                timeout_secs: 10,
                ..JobSpec::default()
            },
            idempotency_key: key.map(str::to_string),
            rates: Rates {
                cpu_second: 10,
                memory_gb_second: 0,
                gpu_second: 0,
                attempt_minimum: 0,
                basis: tanvrit_api::BillingBasis::Reserved,
            },
            at: 1,
        }
    }

    /// Asserts the pre-check and `apply` agree on `command` (a refusal's code included).
    fn agrees_with_apply(state: &DomainState, command: &Command) -> Option<&'static str> {
        let early = refusal(state, command).map(|e| e.code());
        let applied = state.clone().apply(state.applied_index() + 1, command);
        match (&early, &applied) {
            (Some(code), Err(rejection)) => assert_eq!(*code, rejection.code()),
            (Some(code), Ok(_)) => panic!("refused early ({code}) what apply accepts"),
            (None, _) => {}
        }
        early
    }

    #[test]
    fn a_submission_the_balance_cannot_cover_is_refused_before_it_is_proposed() {
        let mut state = DomainState::new();
        assert_eq!(
            agrees_with_apply(&state, &submit("acme", 1000, None)),
            Some("insufficient_credits")
        );
        state
            .apply(
                1,
                &Command::LedgerEntryCreate {
                    entry: "ent-1".into(),
                    business: "acme".into(),
                    kind: tanvrit_api::EntryKind::TopUp,
                    amount: 100,
                    idempotency_key: "t".into(),
                    note: None,
                    at: 1,
                },
            )
            .unwrap();
        assert_eq!(agrees_with_apply(&state, &submit("acme", 1000, None)), None);
        assert_eq!(
            agrees_with_apply(&state, &submit("acme", 2000, None)),
            Some("insufficient_credits")
        );
        assert_eq!(
            agrees_with_apply(&state, &submit("bad business", 0, None)),
            Some("invalid")
        );
    }

    #[test]
    fn a_kept_idempotency_key_is_always_proposed() {
        let mut state = DomainState::new();
        state.apply(1, &submit("acme", 0, Some("k"))).unwrap();
        // The same key over budget: apply answers with the kept job (or a conflict).
        assert_eq!(
            agrees_with_apply(&state, &submit("acme", 1000, Some("k"))),
            None
        );
        assert_eq!(
            agrees_with_apply(&state, &submit("acme", 1000, Some("other"))),
            Some("insufficient_credits")
        );
    }

    #[test]
    fn missing_targets_are_refused_as_apply_would() {
        let state = DomainState::new();
        for command in [
            Command::JobCancel {
                job: "job-x".into(),
                reason: None,
                at: 1,
            },
            Command::JobRetry {
                job: "job-x".into(),
                at: 1,
            },
            Command::NodeDrain {
                node: NodeId::from("node-x"),
                deadline: None,
                at: 1,
            },
            Command::KeyRevoke {
                key: KeyId::from("key-x"),
                at: 1,
            },
            Command::ScheduleDelete {
                schedule: ScheduleId::from("sch-x"),
                at: 1,
            },
        ] {
            assert_eq!(
                agrees_with_apply(&state, &command),
                Some("not_found"),
                "{command:?}"
            );
        }
    }

    #[test]
    fn reports_of_unknown_or_ended_attempts_and_log_gaps_are_refused_as_apply_would() {
        let mut state = DomainState::new();
        state.apply(1, &submit("acme", 0, None)).unwrap();
        state
            .apply(
                2,
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
                    at: 2,
                },
            )
            .unwrap();
        state
            .apply(
                3,
                &Command::JobsAssign {
                    placements: vec![tanvrit_state::Placement {
                        job: "job-1".into(),
                        attempt: "att-1".into(),
                        node: NodeId::from("node-1"),
                    }],
                    at: 3,
                },
            )
            .unwrap();
        let started = |attempt: &str| Command::AttemptStarted {
            job: "job-1".into(),
            attempt: attempt.into(),
            at: 4,
        };
        let chunk = |offset: u64, data: &str| Command::LogAppend {
            job: "job-1".into(),
            attempt: "att-1".into(),
            offset,
            data: data.into(),
            at: 5,
        };
        assert_eq!(
            agrees_with_apply(&state, &started("att-x")),
            Some("stale_attempt")
        );
        assert_eq!(agrees_with_apply(&state, &started("att-1")), None);
        assert_eq!(agrees_with_apply(&state, &chunk(0, "hello")), None);
        state.apply(4, &chunk(0, "hello")).unwrap();
        assert_eq!(
            agrees_with_apply(&state, &chunk(0, "hello")),
            None,
            "a repeat"
        );
        assert_eq!(agrees_with_apply(&state, &chunk(5, "more")), None);
        assert_eq!(agrees_with_apply(&state, &chunk(9, "gap")), Some("log_gap"));
        let finished = Command::AttemptFinished {
            job: "job-1".into(),
            attempt: "att-1".into(),
            kind: tanvrit_state::FinishKind::Succeeded,
            exit_code: Some(0),
            reason: None,
            usage: None,
            at: 6,
        };
        assert_eq!(agrees_with_apply(&state, &finished), None);
        state.apply(5, &finished).unwrap();
        assert_eq!(
            agrees_with_apply(&state, &started("att-1")),
            Some("stale_attempt")
        );
        assert_eq!(
            agrees_with_apply(&state, &finished),
            None,
            "the same end again"
        );
    }

    #[test]
    fn cancelling_an_ended_job_and_retrying_a_pending_one_are_illegal() {
        let mut state = DomainState::new();
        state.apply(1, &submit("acme", 0, None)).unwrap();
        let retry = Command::JobRetry {
            job: "job-1".into(),
            at: 2,
        };
        assert_eq!(
            agrees_with_apply(&state, &retry),
            Some("illegal_transition")
        );
        let cancel = Command::JobCancel {
            job: "job-1".into(),
            reason: None,
            at: 2,
        };
        assert_eq!(agrees_with_apply(&state, &cancel), None);
        state.apply(2, &cancel).unwrap();
        assert_eq!(
            agrees_with_apply(&state, &cancel),
            Some("illegal_transition")
        );
        assert_eq!(
            agrees_with_apply(&state, &retry),
            None,
            "a cancelled job may retry"
        );
    }
}
