//! The agent protocol: heartbeats, long-polled work, and attempt reports.
//!
//! Routes (agent or admin keys): `nodes/{id}/heartbeat`, `nodes/{id}/work`,
//! `jobs/{id}/attempts/{attempt}/started`, `.../finished`, `.../logs`.

use serde::{Deserialize, Serialize};

use crate::{AttemptId, AttemptState, AttemptUsage, Index, JobId, JobSpec, Millis};

/// `POST /api/compute/nodes/{id}/heartbeat`: not a write; the leader keeps last-seen times.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Attempts the agent has a process (or an undelivered result) for.
    #[serde(default)]
    pub running: Vec<AttemptId>,
}

/// What the leader tells a heartbeating agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// Heartbeat at least this often (a third of the node TTL).
    pub interval_ms: u64,
    /// The node is declared down after this long without a heartbeat: it gets no new
    /// work.
    pub ttl_ms: u64,
    /// The node's active attempts are declared lost (and retried elsewhere) only after
    /// this long without a heartbeat (at least `ttl_ms`): the agent may keep running them
    /// until just before then. Absent from servers older than the field: `ttl_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_ms: Option<u64>,
    /// Attempts the agent must stop now: cancelled, lost, or no longer current.
    pub stop: Vec<AttemptId>,
    /// The replica's applied index.
    pub index: Index,
}

/// `POST /api/compute/nodes/{id}/work`: long poll for this node's assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkRequest {
    /// Return at once if the replica has applied past this index; otherwise wait.
    #[serde(default)]
    pub after_index: Index,
    /// Longest wait in milliseconds (bounded by the server).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// One active attempt placed on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The attempt to run (reports carry it).
    pub attempt: AttemptId,
    /// What to run.
    pub spec: JobSpec,
    /// `assigned` (start it), `running` (keep it), `cancelling` (stop it and report).
    pub state: AttemptState,
    /// Bytes of output the control plane already has for this attempt.
    pub log_offset: u64,
}

/// The node's active attempts as of `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkResponse {
    /// Every active attempt on the node.
    pub assignments: Vec<Assignment>,
    /// The replica's applied index (pass as `after_index` next time).
    pub index: Index,
}

/// How an attempt ended, as the agent saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, killed by a signal, or could not start.
    Failed,
    /// Stopped at the job's timeout.
    TimedOut,
    /// Stopped because it was told to.
    Cancelled,
}

/// `POST .../attempts/{attempt}/started`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AttemptStartedRequest {
    /// When the process started, by the agent's clock (clamped by the server).
    #[serde(default)]
    pub started_at: Option<Millis>,
}

/// `POST .../attempts/{attempt}/finished`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AttemptFinishedRequest {
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The exit code, if it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why, for people (signal, timeout, spawn error...).
    #[serde(default)]
    pub reason: Option<String>,
    /// When it ended, by the agent's clock (clamped by the server): a result delivered
    /// after an outage is billed for the real runtime, not the outage.
    #[serde(default)]
    pub finished_at: Option<Millis>,
    /// What the attempt used, as the node's kernel measured it (absent when the node
    /// does not measure, e.g. without isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AttemptUsage>,
}

/// `POST .../attempts/{attempt}/logs`: the next chunk of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogAppendRequest {
    /// Byte offset of `data` in the attempt's output.
    pub offset: u64,
    /// The bytes (UTF-8; split chunks on character boundaries).
    pub data: String,
}

/// Where the stored output now ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogAppendResponse {
    /// Send the next chunk from here.
    pub next_offset: u64,
    /// Log index of the write.
    pub index: Index,
}
