//! `State`: every job, node, key, ledger and schedule, plus secondary indexes, and the
//! deterministic [`State::apply`].
//!
//! Invariant for every handler: check everything first, then mutate. A rejected command
//! leaves the state exactly as it was (the property tests compare before and after),
//! except that a rejected first delivery of a `Command::Idempotent` leaves its record
//! (see `idempotency`).
//!
//! # Layout
//! This file holds the data, the derived indexes and the one `match` over commands; each
//! concern's handlers live in a module of their own:
//! - `jobs`: submit, cancel, retry, assign, attempts and log appends.
//! - `nodes`: register, drain, delete, lost, evict.
//! - `keys`: API keys.
//! - `ledger`: balances and ledger entries.
//! - `schedules`: cron schedules and their fires.
//! - `idempotency`: the `Command::Idempotent` envelope.
//! - `retention`: `Command::JobsCollect`, which removes old terminal jobs.
//! - `indexes`: rebuilding and maintaining the derived indexes.
//! - `queries`: the public read accessors.
//! - `rows`: the state as table rows: what changed since the last write.
//! - `loader`: rows back into a state, whole or as its working set.
//! - `archive`: finished jobs out of memory, loaded back when a command names them.
//! - `memory_tables`: the state tables in memory (the reference storage, for tests).
//! - `lookups`: accessors for the server's checks before it proposes a write.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tanvrit_api::{
    ApiKeyInfo, BusinessId, Index, Job, JobId, JobState, KeyId, LedgerEntry, MicroCredits, Millis,
    Node, NodeId, Resources, Schedule, ScheduleId,
};

use crate::{Command, Effect, Outcome};

mod archive;
mod idempotency;
mod indexes;
mod jobs;
mod keys;
mod ledger;
mod loader;
mod lookups;
mod memory_tables;
mod nodes;
mod queries;
mod retention;
mod rows;
mod schedules;

pub use archive::{ArchiveError, JobArchive};
pub use idempotency::{
    IdempotencyRecord, IDEMPOTENCY_PRUNE_BATCH, MAX_FINGERPRINT_BYTES, MAX_SCOPE_BYTES,
};
pub use jobs::{MAX_LOG_CHUNK_BYTES, RETRY_BACKOFF_BASE_MS, RETRY_BACKOFF_MAX_MS};
pub use loader::{LoadError, Row, StateLoader};
pub use memory_tables::MemoryTables;
pub use nodes::labels_match;
pub use retention::MAX_COLLECT_BATCH;
pub use rows::{
    business_job_key, finished_key, idempotency_key, job_count_key, ledger_key, ledger_key_key,
    split_finished_key, split_idempotency_key, state_job_key, AccountTotals, Changes, RowValue,
    RowWrite, Table, META_APPLIED_INDEX, META_JOBS_COLLECTED_BEFORE,
};

/// A key as stored: public data plus the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Public data.
    pub info: ApiKeyInfo,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
}

/// One business's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable: the sum of every entry's amount.
    pub available: MicroCredits,
    /// Held for jobs: holds minus releases.
    pub held: MicroCredits,
    /// The entries still in memory, oldest first: every entry, unless an archive took
    /// the first `evicted` ones (`seq` = `evicted` + position + 1).
    pub entries: imbl::Vector<LedgerEntry>,
    /// Idempotency key -> seq, of the entries in memory.
    pub by_key: imbl::OrdMap<String, u64>,
    /// Entries moved to the archive (see `archive`); left out of the encoding while 0.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub evicted: u64,
}

impl Account {
    /// How many entries the ledger holds (in memory and in the archive).
    pub fn entry_count(&self) -> u64 {
        self.evicted + self.entries.len() as u64
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Filters for [`State::jobs`].
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this business.
    pub business: Option<BusinessId>,
    /// Continue after this id (newest-first order).
    pub after: Option<JobId>,
    /// Page size.
    pub limit: usize,
}

/// The replicated data; indexes are rebuilt from it on load. The collections that grow
/// with history are persistent maps (`imbl`): a copy shares their nodes, so a snapshot's
/// copy between two applies costs microseconds, not seconds; they encode exactly as the
/// `BTreeMap`s and `Vec`s they replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateData {
    applied_index: Index,
    jobs: imbl::OrdMap<JobId, Job>,
    nodes: BTreeMap<NodeId, Node>,
    keys: BTreeMap<KeyId, StoredKey>,
    accounts: BTreeMap<BusinessId, Account>,
    schedules: BTreeMap<ScheduleId, Schedule>,
    /// `"{business}/{idempotency key}"` -> job.
    job_idempotency: imbl::OrdMap<String, JobId>,
    /// `Idempotent` envelopes: scope -> key -> the first answer (until it expires).
    /// Left out of the encoding while empty, so a state that never saw an envelope
    /// encodes exactly as before envelopes existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    idempotency: BTreeMap<String, imbl::OrdMap<String, IdempotencyRecord>>,
    /// The latest cutoff of a `JobsCollect` (0: none yet): a job that is absent and was
    /// created before it may have been collected. Left out of the encoding while 0, so
    /// older snapshots decode and a state that never collected encodes as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    jobs_collected_before: Millis,
}

fn is_zero(millis: &Millis) -> bool {
    *millis == 0
}

/// Derived lookups, never serialized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Indexes {
    keys_by_hash: HashMap<String, KeyId>,
    /// Pending jobs in placement order: priority (high first), then age.
    pending: BTreeSet<(Reverse<i32>, Millis, JobId)>,
    by_state: BTreeMap<JobState, BTreeSet<JobId>>,
    by_business: HashMap<BusinessId, BTreeSet<JobId>>,
    /// Jobs whose current attempt is active on the node.
    node_active: HashMap<NodeId, BTreeSet<JobId>>,
    node_allocated: HashMap<NodeId, Resources>,
    /// Idempotency records by expiry: (expires_at, scope, key), oldest first, so
    /// pruning takes from the front.
    idempotency_expiry: BTreeSet<(Millis, String, String)>,
    /// Jobs retention may collect, by (finish time, id), oldest first: terminal, with no
    /// attempt still stopping and nothing held (see `retention`). Evicted jobs keep
    /// their entry here.
    finished: BTreeSet<(Millis, JobId)>,
    /// Jobs per state that left memory for the archive.
    evicted_counts: BTreeMap<JobState, u64>,
}

/// The replicated part of a [`State`] without its derived indexes: what a snapshot
/// stores. Copying it is cheaper than copying the state, and it encodes exactly as the
/// state does (decoding it as a [`State`] rebuilds the indexes).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StateImage(StateData);

/// The whole domain state of one replica.
#[derive(Clone, Debug, Default)]
pub struct State {
    data: StateData,
    idx: Indexes,
    /// What apply touched since the storage engine last took it (see `rows`).
    changes: Changes,
    /// Where settled jobs go when they leave memory (see `archive`); `None`: they stay.
    archive: Option<std::sync::Arc<dyn JobArchive>>,
    /// Jobs loaded from the archive since the last eviction.
    faulted: BTreeSet<JobId>,
    /// The archive's failure during an apply, for the engine to take.
    archive_fault: Option<ArchiveError>,
}

/// Two states are equal when their replicated data is: indexes are derived (and may keep
/// empty sets that a freshly loaded state does not have).
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for State {}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let data = StateData::deserialize(deserializer)?;
        let mut state = State {
            data,
            ..State::default()
        };
        state.rebuild_indexes();
        Ok(state)
    }
}

impl State {
    /// An empty state at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last command applied.
    pub fn applied_index(&self) -> Index {
        self.data.applied_index
    }

    /// A copy of the replicated data without the indexes (for a snapshot).
    pub fn image(&self) -> StateImage {
        StateImage(self.data.clone())
    }

    /// Restores the applied index (for a state restored alongside a log position).
    pub fn set_applied_index(&mut self, index: Index) {
        self.data.applied_index = index;
    }

    /// Applies one command at `index`. Deterministic: same state + same command = same result.
    pub fn apply(&mut self, index: Index, command: &Command) -> Outcome {
        let outcome = self.dispatch(index, command);
        self.data.applied_index = index;
        outcome
    }

    fn dispatch(&mut self, index: Index, command: &Command) -> Outcome {
        self.fault_in_named_jobs(command);
        self.mark_named_rows(command);
        match command {
            Command::JobSubmit {
                job,
                business,
                spec,
                idempotency_key,
                rates,
                at,
            } => self.job_submit(
                index,
                job,
                business,
                spec,
                idempotency_key.as_deref(),
                rates,
                *at,
            ),
            Command::JobCancel { job, reason, at } => {
                self.job_cancel(index, job, reason.clone(), *at)
            }
            Command::JobRetry { job, at } => self.job_retry(index, job, *at),
            Command::JobsAssign { placements, at } => self.jobs_assign(index, placements, *at),
            Command::AttemptStarted { job, attempt, at } => {
                self.attempt_started(index, job, attempt, *at)
            }
            Command::AttemptFinished {
                job,
                attempt,
                kind,
                exit_code,
                reason,
                usage,
                at,
            } => self.attempt_finished(
                index,
                job,
                attempt,
                *kind,
                *exit_code,
                reason.clone(),
                *usage,
                *at,
            ),
            Command::LogAppend {
                job,
                attempt,
                offset,
                data,
                ..
            } => self.log_append(job, attempt, *offset, data),
            Command::NodeRegister {
                node,
                name,
                resources,
                labels,
                drivers,
                at,
            } => self.node_register(index, node, name, resources, labels, drivers, *at),
            Command::NodeDrain { node, deadline, at } => {
                self.node_drain(index, node, *deadline, *at)
            }
            Command::NodeDelete { node, force, at } => self.node_delete(index, node, *force, *at),
            Command::NodeLost { node, at } => self.node_lost(index, node, *at),
            Command::NodeDown { node, at } => self.node_down(index, node, *at),
            Command::NodeEvict { node, reason, at } => self.node_evict(index, node, reason, *at),
            Command::KeyCreate {
                key,
                name,
                scope,
                business,
                secret_hash,
                node,
                at,
            } => self.key_create(
                key,
                name,
                *scope,
                business.as_ref(),
                node.as_ref(),
                secret_hash,
                *at,
            ),
            Command::KeyRevoke { key, at } => self.key_revoke(key, *at),
            Command::KeyBind { key, node, .. } => self.key_bind(key, node),
            Command::LedgerEntryCreate {
                entry,
                business,
                kind,
                amount,
                idempotency_key,
                note,
                at,
            } => self.ledger_entry_create(
                entry,
                business,
                *kind,
                *amount,
                idempotency_key,
                note.clone(),
                *at,
            ),
            Command::ScheduleCreate {
                schedule,
                business,
                name,
                cron,
                timezone,
                template,
                enabled,
                overlap,
                catch_up,
                at,
            } => self.schedule_create(
                index,
                Schedule {
                    id: schedule.clone(),
                    business: business.clone(),
                    name: name.clone(),
                    cron: cron.clone(),
                    timezone: timezone.clone(),
                    template: template.clone(),
                    enabled: *enabled,
                    overlap: *overlap,
                    catch_up: *catch_up,
                    created_at: *at,
                    updated_at: *at,
                    last_fire_at: None,
                    last_job: None,
                    fired: 0,
                    skipped: 0,
                    modify_index: index,
                },
            ),
            Command::ScheduleUpdate {
                schedule,
                patch,
                at,
            } => self.schedule_update(index, schedule, patch, *at),
            Command::ScheduleDelete { schedule, .. } => self.schedule_delete(schedule),
            Command::ScheduleFire {
                schedule,
                due_at,
                job,
                rates,
                skip_reason,
                at,
            } => self.schedule_fire(index, schedule, *due_at, job, rates, None, skip_reason, *at),
            Command::SchedulesFire {
                fires,
                rates,
                template_defaults,
                at,
            } => Ok(Effect::FiredMany {
                fires: fires
                    .iter()
                    .map(|fire| {
                        self.schedule_fire(
                            index,
                            &fire.schedule,
                            fire.due_at,
                            &fire.job,
                            rates,
                            *template_defaults,
                            &fire.skip_reason,
                            *at,
                        )
                    })
                    .collect(),
            }),
            Command::Idempotent {
                key,
                scope,
                fingerprint,
                command,
                retain_ms,
                at,
            } => self.idempotent(index, key, scope, fingerprint, command, *retain_ms, *at),
            Command::JobsCollect { cutoff, limit, at } => self.jobs_collect(*cutoff, *limit, *at),
        }
    }
}
