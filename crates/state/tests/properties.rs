//! Property tests: random interleavings of every kind of command (with duplicated
//! deliveries, and wrapped in idempotency envelopes whose keys are reused, retried and
//! left to expire) keep the domain's invariants, a refused command changes nothing, an
//! envelope is transparent the first time and a pure replay afterwards, and a retention
//! collection removes only old terminal jobs and never touches a ledger.

mod support;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use proptest::prelude::*;
use support::{collection_was_sound, domain, RATES as BASE_RATES};
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, FinishKind, Placement, State, NOT_WRAPPABLE};

/// Every job here is held and charged at least this per attempt.
const ATTEMPT_MINIMUM: MicroCredits = 100;
/// Jobs are billed on measured usage where their attempts report it.
const RATES: Rates = Rates {
    attempt_minimum: ATTEMPT_MINIMUM,
    basis: BillingBasis::Used,
    ..BASE_RATES
};
const BUSINESSES: [&str; 2] = ["acme", "globex"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const JOBS: usize = 8;
const SCHEDULES: [&str; 2] = ["sch-1", "sch-2"];
/// Envelopes are kept for 20 commands' worth of time (commands are 1.5 s apart), so
/// keys expire and come back within a run.
const RETAIN_MS: Millis = 30_000;

/// A command shape with small-universe choices; concrete ids and times are filled in
/// against the current state so that a good share of commands are accepted.
#[derive(Clone, Debug, Hash)]
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
        /// The body's own idempotency key, from a small set so keys repeat.
        body_key: Option<u8>,
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
    Down {
        node: usize,
    },
    Evict {
        node: usize,
    },
    Fire {
        schedule: usize,
        due: u8,
    },
    KeyCreate {
        key: u8,
    },
    KeyRevoke {
        key: u8,
    },
    ScheduleCreate {
        schedule: usize,
        business: usize,
    },
    ScheduleUpdate {
        schedule: usize,
        enabled: bool,
        overlap: u8,
    },
    ScheduleDelete {
        schedule: usize,
    },
    /// Retention: collect jobs that finished more than `back` commands ago, at most
    /// `limit` of them.
    Collect {
        back: u8,
        limit: u8,
    },
    /// Deliver the previous command again, exactly as it was (an envelope included).
    Replay,
    /// Send the last keyed request again as a client retry does: the same key and
    /// request, but a command built afresh (new ids, a later time).
    RetryKeyed,
}

/// An idempotency key a step is sent with: a few keys in two scopes, so keys are
/// reused by the same request (replays) and by different ones (conflicts).
#[derive(Clone, Copy, Debug)]
struct Keyed {
    key: u8,
    scope: usize,
}

/// One step: a command, maybe under an idempotency key.
#[derive(Clone, Debug)]
struct Step {
    op: Op,
    keyed: Option<Keyed>,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 1..5_000i64).prop_map(|(business, amount)| Op::TopUp { business, amount }),
        (0..2usize, -3_000..3_000i64)
            .prop_map(|(business, amount)| Op::Adjust { business, amount }),
        (
            0..JOBS,
            0..2usize,
            0..3000u64,
            1..200u64,
            0..3u32,
            proptest::option::of(0..3u8)
        )
            .prop_map(
                |(job, business, cpu, timeout, retries, body_key)| Op::Submit {
                    job,
                    business,
                    cpu,
                    timeout,
                    retries,
                    body_key,
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
        (0..3usize).prop_map(|node| Op::Down { node }),
        (0..3usize).prop_map(|node| Op::Evict { node }),
        (0..2usize, 0..6u8).prop_map(|(schedule, due)| Op::Fire { schedule, due }),
        (0..3u8).prop_map(|key| Op::KeyCreate { key }),
        (0..3u8).prop_map(|key| Op::KeyRevoke { key }),
        (0..2usize, 0..2usize)
            .prop_map(|(schedule, business)| Op::ScheduleCreate { schedule, business }),
        (0..2usize, any::<bool>(), 0..3u8).prop_map(|(schedule, enabled, overlap)| {
            Op::ScheduleUpdate {
                schedule,
                enabled,
                overlap,
            }
        }),
        (0..2usize).prop_map(|schedule| Op::ScheduleDelete { schedule }),
        (0..12u8, 0..4u8).prop_map(|(back, limit)| Op::Collect { back, limit }),
        Just(Op::Replay),
        Just(Op::RetryKeyed),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let keyed = proptest::option::weighted(
        0.35,
        (0..3u8, 0..2usize).prop_map(|(key, scope)| Keyed { key, scope }),
    );
    (op(), keyed).prop_map(|(op, keyed)| Step { op, keyed })
}

/// The fingerprint a server would compute: one per request shape, whatever ids and
/// times the command built from it carries.
fn fingerprint(op: &Op) -> String {
    let mut hasher = DefaultHasher::new();
    op.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn envelope(keyed: Keyed, op: &Op, command: Command, at: Millis) -> Command {
    Command::Idempotent {
        key: format!("key-{}", keyed.key),
        scope: BUSINESSES[keyed.scope].to_string(),
        fingerprint: fingerprint(op),
        command: Box::new(command),
        retain_ms: RETAIN_MS,
        at,
    }
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
            body_key,
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
            idempotency_key: body_key.map(|k| format!("body-{k}")),
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
            // Measured for half the reports (billed on it), not for the others (billed
            // on the reservation).
            usage: (*kind % 2 == 0).then_some(AttemptUsage {
                cpu_ms: Some(*kind as u64 * 700),
                peak_memory_bytes: Some(3 << 20),
            }),
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
            drivers: Vec::new(),
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
        Op::Down { node } => Command::NodeDown {
            node: NODES[*node].into(),
            at,
        },
        Op::Evict { node } => Command::NodeEvict {
            node: NODES[*node].into(),
            reason: "drain deadline".into(),
            at,
        },
        Op::Fire { schedule, due } => Command::ScheduleFire {
            schedule: SCHEDULES[*schedule].into(),
            due_at: *due as i64 * 60_000,
            job: JobId(format!("job-fired-{index}")),
            rates: RATES,
            skip_reason: None,
            at,
        },
        Op::KeyCreate { key } => Command::KeyCreate {
            key: KeyId(format!("key-{key}")),
            name: "k".into(),
            scope: Scope::User,
            business: Some(BUSINESSES[*key as usize % 2].into()),
            secret_hash: format!("{key:064x}"),
            node: None,
            at,
        },
        Op::KeyRevoke { key } => Command::KeyRevoke {
            key: KeyId(format!("key-{key}")),
            at,
        },
        Op::ScheduleCreate { schedule, business } => {
            schedule_create(SCHEDULES[*schedule], BUSINESSES[*business], at)
        }
        Op::ScheduleUpdate {
            schedule,
            enabled,
            overlap,
        } => Command::ScheduleUpdate {
            schedule: SCHEDULES[*schedule].into(),
            patch: ScheduleUpdateRequest {
                enabled: Some(*enabled),
                overlap: Some(
                    [
                        OverlapPolicy::Allow,
                        OverlapPolicy::Forbid,
                        OverlapPolicy::Replace,
                    ][*overlap as usize],
                ),
                ..ScheduleUpdateRequest::default()
            },
            at,
        },
        Op::ScheduleDelete { schedule } => Command::ScheduleDelete {
            schedule: SCHEDULES[*schedule].into(),
            at,
        },
        Op::Collect { back, limit } => Command::JobsCollect {
            cutoff: at - *back as i64 * 1_500,
            // 0 is refused: refusals are exercised too.
            limit: *limit as u32,
            at,
        },
        Op::Replay => return previous.cloned(),
        // Handled by the runner, which remembers the last keyed step.
        Op::RetryKeyed => return None,
    };
    Some(command)
}

fn schedule() -> Command {
    schedule_create("sch-1", "acme", 0)
}

fn schedule_create(id: &str, business: &str, at: Millis) -> Command {
    Command::ScheduleCreate {
        schedule: id.into(),
        business: business.into(),
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
        at,
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
            let ended = !attempt.state.is_active();
            if ended && attempt.started_at.is_some() && attempt.charged < ATTEMPT_MINIMUM {
                return Err(format!(
                    "attempt {} ran but was charged {}, under the minimum {ATTEMPT_MINIMUM}",
                    attempt.id, attempt.charged
                ));
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

/// Runs steps against a state, checking after every command: the invariants, each
/// attempt charged once, a refused bare command changing nothing, and envelopes being
/// transparent on first delivery and pure replays (or conflicts) afterwards.
struct Runner {
    state: State,
    previous: Option<Command>,
    last_keyed: Option<(Keyed, Op)>,
    outcomes: Vec<tanvrit_state::Outcome>,
    /// Every command applied after the first, with its index.
    applied: Vec<(u64, Command)>,
}

impl Runner {
    fn new() -> Self {
        let mut state = State::new();
        state.apply(1, &schedule()).unwrap();
        Self {
            state,
            previous: None,
            last_keyed: None,
            outcomes: Vec::new(),
            applied: Vec::new(),
        }
    }

    /// The command a step sends at `index`, if any.
    fn command(&mut self, step: &Step, index: u64) -> Option<Command> {
        let at = index as i64 * 1_500;
        let (keyed, op) = match (&step.op, step.keyed) {
            (Op::RetryKeyed, _) => self.last_keyed.clone()?,
            (Op::Replay, _) => return self.previous.clone(),
            (op, Some(keyed)) => (keyed, op.clone()),
            (op, None) => return concretize(op, &self.state, index, self.previous.as_ref()),
        };
        let command = concretize(&op, &self.state, index, self.previous.as_ref())?;
        self.last_keyed = Some((keyed, op.clone()));
        Some(envelope(keyed, &op, command, at))
    }

    fn step(&mut self, step: &Step, index: u64) -> Result<(), TestCaseError> {
        let Some(command) = self.command(step, index) else {
            return Ok(());
        };
        let before = self.state.clone();
        let outcome = self.state.apply(index, &command);
        let mut unchanged = before.clone();
        unchanged.set_applied_index(index);
        match &command {
            Command::Idempotent {
                key,
                scope,
                fingerprint,
                command: inner,
                at,
                ..
            } => {
                let live = before
                    .idempotency_record(scope, key)
                    .filter(|r| r.live_at(*at))
                    .cloned();
                match live {
                    _ if NOT_WRAPPABLE.contains(&inner.name()) => {
                        prop_assert_eq!(outcome.as_ref().map_err(|r| r.code()), Err("invalid"));
                        prop_assert_eq!(&self.state, &unchanged);
                    }
                    Some(record) if &record.fingerprint == fingerprint => {
                        prop_assert_eq!(
                            &outcome,
                            &record.replay(),
                            "a replay answers the first outcome"
                        );
                        prop_assert_eq!(&self.state, &unchanged, "a replay changes nothing");
                    }
                    Some(_) => {
                        prop_assert_eq!(
                            outcome.as_ref().map_err(|r| r.code()).err(),
                            Some("idempotency_conflict")
                        );
                        prop_assert_eq!(&self.state, &unchanged, "a conflict changes nothing");
                    }
                    None => {
                        let mut bare = before.clone();
                        let bare_outcome = bare.apply(index, inner);
                        prop_assert_eq!(&outcome, &bare_outcome, "a first delivery is transparent");
                        prop_assert_eq!(domain(&self.state), domain(&bare));
                        let record = self.state.idempotency_record(scope, key).cloned();
                        prop_assert_eq!(
                            record
                                .as_ref()
                                .map(|r| (&r.outcome, r.index, &r.fingerprint)),
                            Some((&bare_outcome, index, fingerprint))
                        );
                    }
                }
            }
            Command::JobsCollect { cutoff, .. } => {
                if outcome.is_ok() {
                    collection_was_sound(&before, &self.state, &outcome, *cutoff)
                        .map_err(TestCaseError::fail)?;
                } else {
                    prop_assert_eq!(
                        &self.state,
                        &unchanged,
                        "a refused collection changed the state"
                    );
                }
            }
            bare => {
                // Refusals may only mark a pending job as blocked (placements); nothing else.
                if let (Err(rejection), false) =
                    (&outcome, matches!(bare, Command::JobsAssign { .. }))
                {
                    prop_assert_eq!(
                        &self.state,
                        &unchanged,
                        "refused {} ({}) changed the state",
                        bare.name(),
                        rejection
                    );
                }
            }
        }
        if let Err(broken) = invariants::check(&self.state) {
            return Err(TestCaseError::fail(format!(
                "after {} #{index}: {broken}",
                command.name()
            )));
        }
        if let Err(broken) = charged_exactly_once(&self.state) {
            return Err(TestCaseError::fail(format!(
                "after {} #{index}: {broken}",
                command.name()
            )));
        }
        self.outcomes.push(outcome);
        self.applied.push((index, command.clone()));
        self.previous = Some(command);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(steps in proptest::collection::vec(step(), 1..120)) {
        let mut runner = Runner::new();
        for (i, step) in steps.iter().enumerate() {
            runner.step(step, i as u64 + 2)?;
        }
    }

    #[test]
    fn apply_is_deterministic(steps in proptest::collection::vec(step(), 1..60)) {
        let run = || -> Result<Runner, TestCaseError> {
            let mut runner = Runner::new();
            for (i, step) in steps.iter().enumerate() {
                runner.step(step, i as u64 + 2)?;
            }
            Ok(runner)
        };
        let a = run()?;
        let b = run()?;
        prop_assert_eq!(&a.state, &b.state);
        prop_assert_eq!(&a.outcomes, &b.outcomes);
        // A replica that loads a snapshot of the end state holds the same data.
        let json = serde_json::to_string(&a.state).unwrap();
        let loaded: State = serde_json::from_str(&json).unwrap();
        prop_assert!(loaded.indexes_consistent());
        prop_assert_eq!(&loaded, &a.state);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A replica whose settled jobs leave memory after every batch (loading them back
    /// when a command names them) answers every command as a replica that keeps them,
    /// and its tables hold the same state; a restart from its working set goes on the
    /// same way.
    #[test]
    fn a_replica_that_evicts_settled_jobs_answers_and_stores_the_same(
        steps in proptest::collection::vec(step(), 1..120),
        batch in 1usize..6,
        restart_at in 0usize..120,
    ) {
        let mut reference = Runner::new();
        for (i, step) in steps.iter().enumerate() {
            reference.step(step, i as u64 + 2)?;
        }
        let mut tables = std::sync::Arc::new(tanvrit_state::MemoryTables::new());
        let mut replica = State::new();
        replica.set_archive(tables.clone());
        replica.apply(1, &schedule()).unwrap();
        for (n, ((index, command), expected)) in
            reference.applied.iter().zip(&reference.outcomes).enumerate()
        {
            let outcome = replica.apply(*index, command);
            prop_assert_eq!(&outcome, expected, "{} at {}", command.name(), index);
            prop_assert!(replica.take_archive_fault().is_none());
            if n % batch == 0 {
                tables.write_batch(&mut replica);
            }
            if n == restart_at {
                tables.write_batch(&mut replica);
                let rows = tables.snapshot();
                tables = std::sync::Arc::new(tanvrit_state::MemoryTables::new());
                let writes: Vec<_> = rows.iter().map(|((table, key), row)| (table, key, row)).collect();
                let mut whole = tanvrit_state::StateLoader::new();
                for (_, _, row) in &writes {
                    whole.add((*row).clone());
                }
                // Copy the rows into fresh tables and restart from their working set.
                let copy = whole.finish().unwrap();
                tables.write(&copy.all_rows().collect::<Vec<_>>());
                replica = tables.load_working_set().unwrap();
                replica.set_archive(tables.clone());
                prop_assert_eq!(replica.job_counts(), copy.job_counts());
            }
        }
        tables.write_batch(&mut replica);
        prop_assert_eq!(&tables.load().unwrap(), &reference.state);
        prop_assert_eq!(replica.job_counts(), reference.state.job_counts());
    }
}

/// Applies a state's changed rows to a table held in a map, as a storage engine would.
fn write_changes(
    state: &mut State,
    tables: &mut BTreeMap<(tanvrit_state::Table, String), tanvrit_state::Row>,
) {
    let changes = state.take_changes();
    for write in state.changed_rows(&changes) {
        let key = (write.table, write.key.clone());
        match write.to_row() {
            Some(row) => tables.insert(key, row),
            None => tables.remove(&key),
        };
    }
}

fn load(tables: &BTreeMap<(tanvrit_state::Table, String), tanvrit_state::Row>) -> State {
    let mut loader = tanvrit_state::StateLoader::new();
    for row in tables.values() {
        loader.add(row.clone());
    }
    loader.finish().expect("stored rows load")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The storage engines write only what apply marked, after each batch of commands:
    /// the tables must then hold exactly the state, whatever the batches were.
    #[test]
    fn the_rows_written_after_each_batch_load_back_as_the_state(
        steps in proptest::collection::vec(step(), 1..120),
        batch in 1usize..8,
    ) {
        let mut runner = Runner::new();
        let mut tables = BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            runner.step(step, i as u64 + 2)?;
            if i % batch == 0 {
                write_changes(&mut runner.state, &mut tables);
            }
        }
        write_changes(&mut runner.state, &mut tables);
        let loaded = load(&tables);
        prop_assert!(loaded.indexes_consistent());
        prop_assert_eq!(&loaded, &runner.state);
        // Writing every row into empty tables gives the same tables.
        let mut whole = BTreeMap::new();
        for write in runner.state.all_rows() {
            whole.insert((write.table, write.key.clone()), write.to_row().unwrap());
        }
        prop_assert_eq!(whole, tables);
    }
}
