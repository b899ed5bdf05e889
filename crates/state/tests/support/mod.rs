//! Builders shared by the domain tests: commands with readable defaults.

#![allow(dead_code)]

use tanvrit_api::*;
use tanvrit_state::{Command, Effect, FinishKind, Placement, State};

pub const RATES: Rates = Rates {
    cpu_second: 10,
    memory_gb_second: 2,
    gpu_second: 1000,
    attempt_minimum: 0,
    basis: tanvrit_api::BillingBasis::Reserved,
};

pub fn spec(cpu: u64, timeout: u64) -> JobSpec {
    JobSpec {
        command: vec!["echo".into(), "hi".into()],
        resources: Resources {
            cpu_millis: cpu,
            memory_mb: 0,
            gpus: 0,
        },
        timeout_secs: timeout,
        ..JobSpec::default()
    }
}

pub fn top_up(business: &str, amount: i64, key: &str) -> Command {
    Command::LedgerEntryCreate {
        entry: EntryId(format!("ent-{key}")),
        business: business.into(),
        kind: EntryKind::TopUp,
        amount,
        idempotency_key: key.into(),
        note: None,
        at: 1,
    }
}

pub fn submit(job: &str, business: &str, spec: JobSpec) -> Command {
    Command::JobSubmit {
        job: job.into(),
        business: business.into(),
        spec,
        idempotency_key: None,
        rates: RATES,
        at: 10,
    }
}

pub fn register(node: &str, cpu: u64) -> Command {
    Command::NodeRegister {
        node: node.into(),
        name: node.into(),
        resources: Resources {
            cpu_millis: cpu,
            memory_mb: 1024,
            gpus: 0,
        },
        labels: Default::default(),
        drivers: Vec::new(),
        at: 5,
    }
}

pub fn assign(job: &str, attempt: &str, node: &str, at: Millis) -> Command {
    Command::JobsAssign {
        placements: vec![Placement {
            job: job.into(),
            attempt: attempt.into(),
            node: node.into(),
        }],
        at,
    }
}

pub fn started(job: &str, attempt: &str, at: Millis) -> Command {
    Command::AttemptStarted {
        job: job.into(),
        attempt: attempt.into(),
        at,
    }
}

pub fn finished(job: &str, attempt: &str, kind: FinishKind, at: Millis) -> Command {
    Command::AttemptFinished {
        job: job.into(),
        attempt: attempt.into(),
        kind,
        exit_code: Some(if kind == FinishKind::Succeeded { 0 } else { 1 }),
        reason: None,
        usage: None,
        at,
    }
}

/// Applies commands in order at indices 1.., panicking on any rejection.
pub fn applied(commands: &[Command]) -> State {
    let mut state = State::new();
    for (i, command) in commands.iter().enumerate() {
        state
            .apply(i as u64 + 1, command)
            .unwrap_or_else(|r| panic!("command {i} ({}) rejected: {r}", command.name()));
    }
    state
}

pub fn next(state: &State) -> u64 {
    state.applied_index() + 1
}

pub fn apply(state: &mut State, command: &Command) -> Result<Effect, tanvrit_state::Rejection> {
    let index = next(state);
    state.apply(index, command)
}

/// Wraps a command in an idempotency envelope kept for `retain_ms`.
pub fn keyed(
    scope: &str,
    key: &str,
    fingerprint: &str,
    command: Command,
    retain_ms: Millis,
    at: Millis,
) -> Command {
    Command::Idempotent {
        key: key.into(),
        scope: scope.into(),
        fingerprint: fingerprint.into(),
        command: Box::new(command),
        retain_ms,
        at,
    }
}

/// The replicated data without the idempotency records and the applied index: what a
/// replay or a conflict must leave untouched.
pub fn domain(state: &State) -> serde_json::Value {
    let mut value = serde_json::to_value(state).expect("state serializes");
    let object = value.as_object_mut().expect("state is an object");
    object.remove("idempotency");
    object.remove("applied_index");
    value
}

/// Whether retention may collect `job` at `cutoff` (the rule `JobsCollect` documents).
pub fn collectable(job: &Job, cutoff: Millis) -> bool {
    job.state.is_terminal()
        && job.updated_at < cutoff
        && job.held == 0
        && !job.current_attempt().is_some_and(|a| a.state.is_active())
}

/// Checks an accepted `JobsCollect` that turned `before` into `after`: it removed exactly
/// the jobs it names, each collectable and finished no later than any collectable job it
/// left (oldest first), and changed no other job; every ledger is as it was; the indexes
/// are consistent; and it said `more` if a collectable job is left.
pub fn collection_was_sound(
    before: &State,
    after: &State,
    outcome: &tanvrit_state::Outcome,
    cutoff: Millis,
) -> Result<(), String> {
    let Ok(Effect::JobsCollected { jobs, more, .. }) = outcome else {
        return Err(format!("a collection answered {outcome:?}"));
    };
    for id in jobs {
        let job = before
            .job(id)
            .ok_or_else(|| format!("collected {id}, which did not exist"))?;
        if !collectable(job, cutoff) {
            return Err(format!(
                "collected {id}: {:?}, updated at {}, cutoff {cutoff}",
                job.state, job.updated_at
            ));
        }
        if after.job(id).is_some() {
            return Err(format!("collected {id} is still there"));
        }
    }
    for job in before.all_jobs().filter(|j| !jobs.contains(&j.id)) {
        if after.job(&job.id) != Some(job) {
            return Err(format!("job {} was not collected but changed", job.id));
        }
    }
    let accounts = |s: &State| {
        s.accounts()
            .map(|(b, a)| (b.clone(), a.clone()))
            .collect::<Vec<_>>()
    };
    if accounts(before) != accounts(after) {
        return Err("a collection touched a ledger".into());
    }
    if !after.indexes_consistent() {
        return Err("indexes inconsistent after a collection".into());
    }
    let oldest_left = after
        .all_jobs()
        .filter(|j| collectable(j, cutoff))
        .map(|j| (j.updated_at, j.id.clone()))
        .min();
    let newest_taken = jobs
        .iter()
        .filter_map(|id| before.job(id))
        .map(|j| (j.updated_at, j.id.clone()))
        .max();
    if let (Some(left), Some(taken)) = (&oldest_left, &newest_taken) {
        if taken > left {
            return Err(format!("collected {taken:?} before the older {left:?}"));
        }
    }
    if oldest_left.is_some() && !more {
        return Err("collectable jobs left without `more`".into());
    }
    Ok(())
}
