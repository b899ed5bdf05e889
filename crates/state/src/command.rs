//! Every replicated write of the domain, as one enum.
//!
//! Ids and timestamps (`at`) are chosen by the server before the command is proposed,
//! so `apply` stays deterministic. Variants and fields only grow: a new field carries
//! `#[serde(default)]`, so an old log entry still decodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tanvrit_api::{
    AttemptId, AttemptUsage, BusinessId, CatchUpPolicy, EntryId, EntryKind, JobId, JobSpec, KeyId,
    MicroCredits, Millis, NodeId, OverlapPolicy, Rates, Resources, ScheduleId,
    ScheduleUpdateRequest, Scope,
};

/// The commands [`Command::Idempotent`] may not wrap, by [`Command::name`]: an envelope
/// (one level is enough), a log chunk (its bytes are stored by the layer that sees the
/// top-level command, so a wrapped one would lose them; chunks are idempotent by offset)
/// and a collection (the leader's own command: the layer below deletes the output of the
/// jobs its top-level outcome names, and a record would only keep that list around).
pub const NOT_WRAPPABLE: &[&str] = &["idempotent", "log_append", "jobs_collect"];

/// One placement decided by the scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The pending job.
    pub job: JobId,
    /// The new attempt's id.
    pub attempt: AttemptId,
    /// The node it goes to.
    pub node: NodeId,
}

/// One due time of a schedule in a [`Command::SchedulesFire`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// The schedule.
    pub schedule: ScheduleId,
    /// The due time.
    pub due_at: Millis,
    /// The id of the job it creates (derived from schedule and due time).
    pub job: JobId,
    /// Set when the leader skips this due time (catch-up policy).
    #[serde(default)]
    pub skip_reason: Option<String>,
}

/// How an attempt ended, as its agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishKind {
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// Stopped at the job's timeout.
    TimedOut,
    /// Stopped because the job was cancelled (or the agent was told to stop it).
    Cancelled,
}

/// A replicated write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A business submits a job; its hold is placed in the same command.
    JobSubmit {
        job: JobId,
        business: BusinessId,
        spec: JobSpec,
        #[serde(default)]
        idempotency_key: Option<String>,
        rates: Rates,
        at: Millis,
    },
    /// Cancel a job; an active attempt is told to stop.
    JobCancel {
        job: JobId,
        #[serde(default)]
        reason: Option<String>,
        at: Millis,
    },
    /// Requeue a failed, cancelled or lost job.
    JobRetry { job: JobId, at: Millis },
    /// The scheduler's placements, many per entry.
    JobsAssign {
        placements: Vec<Placement>,
        at: Millis,
    },
    /// An agent started an attempt's process.
    AttemptStarted {
        job: JobId,
        attempt: AttemptId,
        at: Millis,
    },
    /// An agent reports an attempt's end; the charge and release happen here, once.
    AttemptFinished {
        job: JobId,
        attempt: AttemptId,
        kind: FinishKind,
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        reason: Option<String>,
        /// What the attempt used, as its node measured it. Left out of the encoding when
        /// absent, so a report without it encodes as before the field existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<AttemptUsage>,
        at: Millis,
    },
    /// A chunk of an attempt's output at a byte offset (the store keeps the bytes).
    LogAppend {
        job: JobId,
        attempt: AttemptId,
        offset: u64,
        data: String,
        at: Millis,
    },
    /// An agent registers (or re-registers) its node.
    NodeRegister {
        node: NodeId,
        name: String,
        resources: Resources,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// The drivers it offers (`exec`, `docker`). Left out of the encoding when empty,
        /// so a registration without it encodes as before the field existed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        drivers: Vec<String>,
        at: Millis,
    },
    /// Stop placing on a node; stop its work at the deadline, if one is given.
    NodeDrain {
        node: NodeId,
        #[serde(default)]
        deadline: Option<Millis>,
        at: Millis,
    },
    /// Remove a node; `force` declares its active attempts lost.
    NodeDelete {
        node: NodeId,
        #[serde(default)]
        force: bool,
        at: Millis,
    },
    /// The leader saw no heartbeat for the node's TTL (with a `lost_after` no longer than
    /// it), or for `lost_after` after the node went down: the node is down and its active
    /// attempts are lost (retried per `max_retries`).
    NodeLost { node: NodeId, at: Millis },
    /// The leader saw no heartbeat for the node's TTL, and the cluster's `lost_after` is
    /// longer: the node is down (it takes no new work) but its active attempts stay its
    /// own, so they carry on if it comes back (registers again) before a
    /// [`Command::NodeLost`] declares them lost. Added after `NodeLost`; an old log never
    /// holds it.
    NodeDown { node: NodeId, at: Millis },
    /// Stop a node's active attempts and requeue their jobs without using a retry
    /// (a drain deadline passed).
    NodeEvict {
        node: NodeId,
        reason: String,
        at: Millis,
    },
    /// A new API key; only its hash is replicated.
    KeyCreate {
        key: KeyId,
        name: String,
        scope: Scope,
        #[serde(default)]
        business: Option<BusinessId>,
        secret_hash: String,
        /// For agent keys: the one node the key acts for. Left out of the encoding when
        /// absent, so a command without it encodes as before the field existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<NodeId>,
        at: Millis,
    },
    /// Revoke a key.
    KeyRevoke { key: KeyId, at: Millis },
    /// Binds an unbound agent key to the node it registers first (enrollment). Refused
    /// when the key is bound to another node, is not an active agent key, or another
    /// active key is already bound to the node, so two keys racing for one node cannot
    /// both win.
    KeyBind {
        key: KeyId,
        node: NodeId,
        at: Millis,
    },
    /// A ledger entry written by an admin: top-up, refund or adjustment.
    LedgerEntryCreate {
        entry: EntryId,
        business: BusinessId,
        kind: EntryKind,
        amount: MicroCredits,
        idempotency_key: String,
        #[serde(default)]
        note: Option<String>,
        at: Millis,
    },
    /// A new schedule.
    ScheduleCreate {
        schedule: ScheduleId,
        business: BusinessId,
        #[serde(default)]
        name: Option<String>,
        cron: String,
        timezone: String,
        template: JobSpec,
        enabled: bool,
        overlap: OverlapPolicy,
        catch_up: CatchUpPolicy,
        at: Millis,
    },
    /// Change some fields of a schedule.
    ScheduleUpdate {
        schedule: ScheduleId,
        patch: ScheduleUpdateRequest,
        at: Millis,
    },
    /// Delete a schedule; jobs it fired stay.
    ScheduleDelete { schedule: ScheduleId, at: Millis },
    /// One due time of a schedule, fired or skipped. Keyed by (schedule, due_at): a
    /// second delivery of the same due time changes nothing.
    ScheduleFire {
        schedule: ScheduleId,
        due_at: Millis,
        job: JobId,
        rates: Rates,
        /// Set when the leader skips this due time (catch-up policy).
        #[serde(default)]
        skip_reason: Option<String>,
        at: Millis,
    },
    /// Many due times, of one or many schedules, in one entry: each handled exactly as
    /// its own [`Command::ScheduleFire`] would be, in order, so the cron loop writes one
    /// entry per pass instead of one per due time. One fire's refusal (its schedule was
    /// deleted meanwhile) refuses only that fire.
    SchedulesFire {
        fires: Vec<Fire>,
        rates: Rates,
        /// What a fired job reserves in place of its template's zero CPU or memory
        /// (templates stored before jobs had defaults); the leader sets
        /// [`Resources::JOB_DEFAULT`]. Absent from entries written before it: those fired
        /// such templates as they were, and still do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template_defaults: Option<Resources>,
        at: Millis,
    },
    /// A client write sent with an `Idempotency-Key`. The first delivery of
    /// (`scope`, `key`) applies `command` and records its outcome and index until
    /// `at + retain_ms`; a later one with the same `fingerprint` gets that record back
    /// (changing nothing else), one with another fingerprint is refused.
    Idempotent {
        /// The client's key (1-256 printable ASCII).
        key: String,
        /// Whose key it is (the server uses the tenant: a business, or an admin key), so
        /// two tenants' keys never meet.
        scope: String,
        /// Hex SHA-256 of the request (method, path, canonical body), chosen by the server.
        fingerprint: String,
        /// The write itself.
        command: Box<Command>,
        /// How long the record is kept, from `at`: the window is carried by each command,
        /// so expiry never depends on a replica's configuration or clock.
        retain_ms: Millis,
        at: Millis,
    },
    /// Retention (leader only): removes up to `limit` terminal jobs that finished before
    /// `cutoff`, oldest finished first, with their attempts and idempotency mapping, and
    /// drops up to `limit` idempotency records expired at `at`. Ledger entries stay: they
    /// are the billing record. `cutoff` becomes the collection horizon if it is later.
    JobsCollect {
        cutoff: Millis,
        limit: u32,
        at: Millis,
    },
}

impl Command {
    /// A short stable name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::JobSubmit { .. } => "job_submit",
            Command::JobCancel { .. } => "job_cancel",
            Command::JobRetry { .. } => "job_retry",
            Command::JobsAssign { .. } => "jobs_assign",
            Command::AttemptStarted { .. } => "attempt_started",
            Command::AttemptFinished { .. } => "attempt_finished",
            Command::LogAppend { .. } => "log_append",
            Command::NodeRegister { .. } => "node_register",
            Command::NodeDrain { .. } => "node_drain",
            Command::NodeDelete { .. } => "node_delete",
            Command::NodeLost { .. } => "node_lost",
            Command::NodeDown { .. } => "node_down",
            Command::NodeEvict { .. } => "node_evict",
            Command::KeyCreate { .. } => "key_create",
            Command::KeyRevoke { .. } => "key_revoke",
            Command::KeyBind { .. } => "key_bind",
            Command::LedgerEntryCreate { .. } => "ledger_entry_create",
            Command::ScheduleCreate { .. } => "schedule_create",
            Command::ScheduleUpdate { .. } => "schedule_update",
            Command::ScheduleDelete { .. } => "schedule_delete",
            Command::ScheduleFire { .. } => "schedule_fire",
            Command::SchedulesFire { .. } => "schedules_fire",
            Command::Idempotent { .. } => "idempotent",
            Command::JobsCollect { .. } => "jobs_collect",
        }
    }

    /// The write itself: the wrapped command of an [`Command::Idempotent`], else `self`.
    pub fn payload(&self) -> &Command {
        match self {
            Command::Idempotent { command, .. } => command.payload(),
            other => other,
        }
    }

    /// The time the server chose for this command.
    pub fn at(&self) -> Millis {
        match self {
            Command::JobSubmit { at, .. }
            | Command::JobCancel { at, .. }
            | Command::JobRetry { at, .. }
            | Command::JobsAssign { at, .. }
            | Command::AttemptStarted { at, .. }
            | Command::AttemptFinished { at, .. }
            | Command::LogAppend { at, .. }
            | Command::NodeRegister { at, .. }
            | Command::NodeDrain { at, .. }
            | Command::NodeDelete { at, .. }
            | Command::NodeLost { at, .. }
            | Command::NodeDown { at, .. }
            | Command::NodeEvict { at, .. }
            | Command::KeyCreate { at, .. }
            | Command::KeyRevoke { at, .. }
            | Command::KeyBind { at, .. }
            | Command::LedgerEntryCreate { at, .. }
            | Command::ScheduleCreate { at, .. }
            | Command::ScheduleUpdate { at, .. }
            | Command::ScheduleDelete { at, .. }
            | Command::ScheduleFire { at, .. }
            | Command::SchedulesFire { at, .. }
            | Command::Idempotent { at, .. }
            | Command::JobsCollect { at, .. } => *at,
        }
    }
}
