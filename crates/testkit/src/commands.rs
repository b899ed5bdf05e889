//! Small, always-accepted commands for tests that need writes, and a way to recognise
//! them in a replica's state.

use std::collections::BTreeMap;

use tanvrit_api::{
    AttemptId, BusinessId, EntryId, EntryKind, JobId, JobSpec, NodeId, Rates, Resources,
};
use tanvrit_state::{Command, Placement, State};

/// The business the helpers write to.
pub fn business() -> BusinessId {
    BusinessId::from("biz-test")
}

/// A top-up of 1 credit with a unique id and idempotency key derived from `n`.
pub fn top_up(n: u64) -> Command {
    Command::LedgerEntryCreate {
        entry: EntryId(format!("ent-{n}")),
        business: business(),
        kind: EntryKind::TopUp,
        amount: 1_000_000,
        idempotency_key: format!("top-up-{n}"),
        note: None,
        at: 1_000 + n as i64,
    }
}

/// How many ledger entries the test business has in `state`.
pub fn ledger_len(state: &State) -> usize {
    state
        .account(&business())
        .map_or(0, |a| a.entry_count() as usize)
}

/// Whether the top-up `n` is in `state`.
pub fn has_top_up(state: &State, n: u64) -> bool {
    let key = format!("top-up-{n}");
    // The ledger's entries leave memory once written: read them as the API does.
    state
        .ledger_page(&business(), 0, usize::MAX, |e| e.idempotency_key == key)
        .is_ok_and(|found| !found.is_empty())
}

/// A submission of a job that asks for almost nothing (`true`, 10 millicores, 16 MB)
/// for `business`, with no idempotency key.
pub fn small_job(job: &str, business: &BusinessId) -> Command {
    Command::JobSubmit {
        job: JobId::from(job),
        business: business.clone(),
        spec: JobSpec {
            command: vec!["true".into()],
            resources: Resources {
                cpu_millis: 10,
                memory_mb: 16,
                gpus: 0,
            },
            ..JobSpec::default()
        },
        idempotency_key: None,
        rates: Rates::default(),
        at: 2_000,
    }
}

/// A node with room for many small jobs.
pub fn node_register(node: &str) -> Command {
    Command::NodeRegister {
        node: NodeId::from(node),
        name: node.to_string(),
        resources: Resources {
            cpu_millis: 64_000,
            memory_mb: 65_536,
            gpus: 0,
        },
        labels: BTreeMap::new(),
        drivers: Vec::new(),
        at: 1_000,
    }
}

/// A job that runs on `node` and prints `output` in two chunks: submit, assign, start,
/// two log appends. The business needs credits first ([`top_up`]) and `node` must be
/// registered ([`node_register`]).
pub fn job_with_output(job: &str, attempt: &str, node: &str, output: &str) -> Vec<Command> {
    let (job, attempt) = (JobId::from(job), AttemptId::from(attempt));
    let split = output.len() / 2;
    let (first, second) = output.split_at(split);
    vec![
        Command::JobSubmit {
            job: job.clone(),
            business: business(),
            spec: JobSpec {
                command: vec!["echo".into(), output.into()],
                resources: Resources {
                    cpu_millis: 100,
                    memory_mb: 64,
                    gpus: 0,
                },
                ..JobSpec::default()
            },
            idempotency_key: None,
            rates: Rates::default(),
            at: 2_000,
        },
        Command::JobsAssign {
            placements: vec![Placement {
                job: job.clone(),
                attempt: attempt.clone(),
                node: NodeId::from(node),
            }],
            at: 2_001,
        },
        Command::AttemptStarted {
            job: job.clone(),
            attempt: attempt.clone(),
            at: 2_002,
        },
        Command::LogAppend {
            job: job.clone(),
            attempt: attempt.clone(),
            offset: 0,
            data: first.into(),
            at: 2_003,
        },
        Command::LogAppend {
            job,
            attempt,
            offset: split as u64,
            data: second.into(),
            at: 2_004,
        },
    ]
}

/// The replicated data of `state` as JSON, for comparing replicas (derived indexes
/// are left out).
pub fn state_json(state: &State) -> serde_json::Value {
    let mut value = serde_json::to_value(state).expect("a state serializes");
    // Settled jobs and written ledger entries live in the tables, not in memory: add
    // them as the API reads them, so two replicas compare on everything they hold.
    let mut jobs = Vec::new();
    let mut after = None;
    loop {
        let filter = tanvrit_state::JobFilter {
            after: after.clone(),
            limit: 1_000,
            ..tanvrit_state::JobFilter::default()
        };
        let (page, next) = state.list_jobs(&filter).expect("the job archive reads");
        jobs.extend(page);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let ledgers: serde_json::Map<String, serde_json::Value> = state
        .accounts()
        .map(|(business, _)| {
            let entries = state
                .ledger_page(business, 0, usize::MAX, |_| true)
                .expect("the ledger archive reads");
            (business.to_string(), serde_json::to_value(entries).unwrap())
        })
        .collect();
    value["all_jobs"] = serde_json::to_value(jobs).unwrap();
    value["all_ledgers"] = serde_json::Value::Object(ledgers);
    value
}
