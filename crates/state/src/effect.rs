//! What an accepted command produced: enough for the API to answer without a second read.

use serde::{Deserialize, Serialize};
use tanvrit_api::{ApiKeyInfo, Index, Job, JobId, LedgerEntry, Node, Schedule};

use crate::Rejection;

/// The result of an accepted command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// The job after the change. `duplicate` is true when nothing changed because the
    /// same request was already applied (an idempotent retry or a repeated report).
    Job { job: Box<Job>, duplicate: bool },
    /// Placements made and refused.
    Placements {
        placed: Vec<JobId>,
        refused: Vec<(JobId, Rejection)>,
    },
    /// A log chunk was stored (or was already stored, `duplicate`).
    LogAppended {
        offset: u64,
        len: u64,
        duplicate: bool,
    },
    /// The node after the change.
    Node { node: Box<Node> },
    /// The key after the change.
    Key { key: ApiKeyInfo },
    /// The ledger entry written, or the earlier one for a repeated idempotency key.
    Entry {
        entry: Box<LedgerEntry>,
        duplicate: bool,
    },
    /// The schedule after the change.
    Schedule { schedule: Box<Schedule> },
    /// The schedule was deleted.
    ScheduleDeleted,
    /// A due time was handled: a job was created, or it was skipped (`skipped` says why),
    /// or it had been handled before (`duplicate`).
    Fired {
        job: Option<Box<Job>>,
        skipped: Option<String>,
        duplicate: bool,
    },
    /// The outcome of each fire of a `SchedulesFire`, in order: a `Fired` effect or the
    /// fire's refusal.
    FiredMany {
        fires: Vec<Result<Effect, Rejection>>,
    },
    /// A repeated `Idempotent` command: the first delivery's effect, unchanged, and the
    /// log index it was applied at. Nothing was applied this time.
    Replayed { effect: Box<Effect>, index: Index },
    /// A `JobsCollect` removed these jobs (oldest finished first; their output is deleted
    /// by the storage layer) and `records` expired idempotency records; `more` is true
    /// when more were due than its `limit` allowed, so the leader collects again at once.
    JobsCollected {
        jobs: Vec<JobId>,
        records: u32,
        more: bool,
    },
}
