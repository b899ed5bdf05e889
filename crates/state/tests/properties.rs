//! Property tests: random interleavings of every kind of command (with duplicated
//! deliveries) keep the domain's invariants, and a refused command changes nothing.

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use support::RATES;
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, FinishKind, Placement, State};

const BUSINESSES: [&str; 2] = ["acme", "globex"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const JOBS: usize = 8;

/// A command shape with small-universe choices; concrete ids and times are filled in
/// against the current state so that a good share of commands are accepted.
#[derive(Clone, Debug)]
enum Op {
    TopUp {
        business: usize,
        amount: i64,
    },
    Adjust {
        business: usize,
        amount: i64,
    },
    Submit {
        job: usize,
        business: usize,
        cpu: u64,
        timeout: u64,
        retries: u32,
    },
    Cancel {
        job: usize,
    },
    Retry {
        job: usize,
    },
    Assign {
        job: usize,
        node: usize,
    },
    Start {
        job: usize,
        stale: bool,
    },
    Finish {
        job: usize,
        kind: u8,
        stale: bool,
    },
    Log {
        job: usize,
        len: usize,
        skew: u8,
    },
    Register {
        node: usize,
        cpu: u64,
    },
    Drain {
        node: usize,
    },
    Delete {
        node: usize,
        force: bool,
    },
    Lost {
        node: usize,
    },
    Evict {
        node: usize,
    },
    Fire {
        due: u8,
    },
    /// Deliver the previous command again.
    Replay,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 1..5_000i64).prop_map(|(business, amount)| Op::TopUp { business, amount }),
        (0..2usize, -3_000..3_000i64)
            .prop_map(|(business, amount)| Op::Adjust { business, amount }),
        (0..JOBS, 0..2usize, 0..3000u64, 1..200u64, 0..3u32).prop_map(
            |(job, business, cpu, timeout, retries)| Op::Submit {
                job,
                business,
                cpu,
                timeout,
                retries
            }
        ),
        (0..JOBS).prop_map(|job| Op::Cancel { job }),
        (0..JOBS).prop_map(|job| Op::Retry { job }),
        (0..JOBS, 0..3usize).prop_map(|(job, node)| Op::Assign { job, node }),
        (0..JOBS, any::<bool>()).prop_map(|(job, stale)| Op::Start { job, stale }),
        (0..JOBS, 0..4u8, any::<bool>()).prop_map(|(job, kind, stale)| Op::Finish {
            job,
            kind,
            stale
        }),
        (0..JOBS, 0..40usize, 0..3u8).prop_map(|(job, len, skew)| Op::Log { job, len, skew }),
        (0..3usize, 0..5000u64).prop_map(|(node, cpu)| Op::Register { node, cpu }),
        (0..3usize).prop_map(|node| Op::Drain { node }),
        (0..3usize, any::<bool>()).prop_map(|(node, force)| Op::Delete { node, force }),
        (0..3usize).prop_map(|node| Op::Lost { node }),
        (0..3usize).prop_map(|node| Op::Evict { node }),
        (0..6u8).prop_map(|due| Op::Fire { due }),
        Just(Op::Replay),
    ]
}

fn job_id(n: usize) -> JobId {
    JobId(format!("job-{n}"))
}

fn attempt_ref(state: &State, job: usize, stale: bool) -> AttemptId {
    let attempts = state
        .job(&job_id(job))
        .map(|j| j.attempts.clone())
        .unwrap_or_default();
    let pick = if stale {
        attempts.first()
    } else {
        attempts.last()
    };
    pick.map_or_else(|| AttemptId("att-none".into()), |a| a.id.clone())
}

fn concretize(op: &Op, state: &State, index: u64, previous: Option<&Command>) -> Option<Command> {
    // Time moves forward ~1.5 s per command so retry backoffs expire now and then.
    let at = index as i64 * 1_500;
    let command = match op {
        Op::TopUp { business, amount } => Command::LedgerEntryCreate {
            entry: EntryId(format!("ent-{index}")),
            business: BUSINESSES[*business].into(),
            kind: EntryKind::TopUp,
            amount: *amount,
            idempotency_key: format!("k{index}"),
            note: None,
            at,
        },
        Op::Adjust { business, amount } => Command::LedgerEntryCreate {
            entry: EntryId(format!("ent-{index}")),
            business: BUSINESSES[*business].into(),
            kind: EntryKind::Adjustment,
            amount: *amount,
            idempotency_key: format!("k{index}"),
            note: None,
            at,
        },
        Op::Submit {
            job,
            business,
            cpu,
            timeout,
            retries,
        } => Command::JobSubmit {
            job: job_id(*job),
            business: BUSINESSES[*business].into(),
            spec: JobSpec {
                command: vec!["true".into()],
                resources: Resources {
                    cpu_millis: *cpu,
                    memory_mb: 0,
                    gpus: 0,
                },
                timeout_secs: *timeout,
                max_retries: *retries,
                ..JobSpec::default()
            },
            idempotency_key: None,
            rates: RATES,
            at,
        },
        Op::Cancel { job } => Command::JobCancel {
            job: job_id(*job),
            reason: None,
            at,
        },
        Op::Retry { job } => Command::JobRetry {
            job: job_id(*job),
            at,
        },
        Op::Assign { job, node } => Command::JobsAssign {
            placements: vec![Placement {
                job: job_id(*job),
                attempt: AttemptId(format!("att-{index}")),
                node: NODES[*node].into(),
            }],
            at,
        },
        Op::Start { job, stale } => Command::AttemptStarted {
            job: job_id(*job),
            attempt: attempt_ref(state, *job, *stale),
            at,
        },
        Op::Finish { job, kind, stale } => Command::AttemptFinished {
            job: job_id(*job),
            attempt: attempt_ref(state, *job, *stale),
            kind: [
                FinishKind::Succeeded,
                FinishKind::Failed,
                FinishKind::TimedOut,
                FinishKind::Cancelled,
            ][*kind as usize],
            exit_code: Some(*kind as i32),
            reason: None,
            at,
        },
        Op::Log { job, len, skew } => {
            let attempt = attempt_ref(state, *job, false);
            let stored = state
                .job(&job_id(*job))
                .and_then(|j| j.attempts.last().map(|a| a.log_bytes))
                .unwrap_or(0);
            let offset = match skew {
                0 => stored,
                1 => stored.saturating_sub(3),
                _ => stored + 5,
            };
            Command::LogAppend {
                job: job_id(*job),
                attempt,
                offset,
                data: "x".repeat(*len),
                at,
            }
        }
        Op::Register { node, cpu } => Command::NodeRegister {
            node: NODES[*node].into(),
            name: NODES[*node].into(),
            resources: Resources {
                cpu_millis: *cpu,
                memory_mb: 1024,
                gpus: 0,
            },
            labels: BTreeMap::new(),
            at,
        },
        Op::Drain { node } => Command::NodeDrain {
            node: NODES[*node].into(),
            deadline: None,
            at,
        },
        Op::Delete { node, force } => Command::NodeDelete {
            node: NODES[*node].into(),
            force: *force,
            at,
        },
        Op::Lost { node } => Command::NodeLost {
            node: NODES[*node].into(),
            at,
        },
        Op::Evict { node } => Command::NodeEvict {
            node: NODES[*node].into(),
            reason: "drain deadline".into(),
            at,
        },
        Op::Fire { due } => Command::ScheduleFire {
            schedule: "sch-1".into(),
            due_at: *due as i64 * 60_000,
            job: JobId(format!("job-fired-{index}")),
            rates: RATES,
            skip_reason: None,
            at,
        },
        Op::Replay => return previous.cloned(),
    };
    Some(command)
}

fn schedule() -> Command {
    Command::ScheduleCreate {
        schedule: "sch-1".into(),
        business: "acme".into(),
        name: None,
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        template: JobSpec {
            command: vec!["true".into()],
            resources: Resources {
                cpu_millis: 100,
                memory_mb: 0,
                gpus: 0,
            },
            timeout_secs: 10,
            ..JobSpec::default()
        },
        enabled: true,
        overlap: OverlapPolicy::Allow,
        catch_up: CatchUpPolicy::LatestOnly,
        at: 0,
    }
}

/// Each ended attempt was charged at most once, and its charge entry matches `charged`.
fn charged_exactly_once(state: &State) -> Result<(), String> {
    let mut charges: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for (_, account) in state.accounts() {
        for entry in account
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Charge)
        {
            let slot = charges.entry(entry.idempotency_key.clone()).or_default();
            slot.0 += 1;
            slot.1 += -entry.amount;
        }
    }
    for job in state.all_jobs() {
        for attempt in &job.attempts {
            let key = format!("charge:{}", attempt.id);
            let (count, total) = charges.get(&key).copied().unwrap_or_default();
            if count > 1 {
                return Err(format!("attempt {} charged {count} times", attempt.id));
            }
            if total != attempt.charged {
                return Err(format!(
                    "attempt {} charged {} in the ledger but records {}",
                    attempt.id, total, attempt.charged
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..120)) {
        let mut state = State::new();
        state.apply(1, &schedule()).unwrap();
        let mut previous: Option<Command> = None;
        for (i, op) in ops.iter().enumerate() {
            let index = i as u64 + 2;
            let Some(command) = concretize(op, &state, index, previous.as_ref()) else { continue };
            let before = state.clone();
            let outcome = state.apply(index, &command);
            if let Err(rejection) = &outcome {
                let mut expected = before.clone();
                expected.set_applied_index(index);
                // Refusals may only mark a pending job as blocked (placements); nothing else.
                if !matches!(command, Command::JobsAssign { .. }) {
                    prop_assert_eq!(&state, &expected, "refused {} ({}) changed the state", command.name(), rejection);
                }
            }
            if let Err(broken) = invariants::check(&state) {
                return Err(TestCaseError::fail(format!("after {} #{index}: {broken}", command.name())));
            }
            if let Err(broken) = charged_exactly_once(&state) {
                return Err(TestCaseError::fail(format!("after {} #{index}: {broken}", command.name())));
            }
            previous = Some(command);
        }
    }

    #[test]
    fn apply_is_deterministic(ops in proptest::collection::vec(op(), 1..60)) {
        let run = || {
            let mut state = State::new();
            state.apply(1, &schedule()).unwrap();
            let mut outcomes = Vec::new();
            let mut previous = None;
            for (i, op) in ops.iter().enumerate() {
                let index = i as u64 + 2;
                if let Some(command) = concretize(op, &state, index, previous.as_ref()) {
                    outcomes.push(state.apply(index, &command));
                    previous = Some(command);
                }
            }
            (state, outcomes)
        };
        let (a, outcomes_a) = run();
        let (b, outcomes_b) = run();
        prop_assert_eq!(a, b);
        prop_assert_eq!(outcomes_a, outcomes_b);
    }
}
