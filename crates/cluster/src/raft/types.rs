//! The openraft type configuration: what a log entry carries ([`WriteRequest`]), what
//! applying it answers ([`WriteOutcome`]) and what the membership knows of a replica
//! ([`ReplicaNode`]).

use openraft::error::Fatal;
use serde::{Deserialize, Serialize};
use std::fmt;
use tanvrit_state::{Command, Outcome};

use crate::ClusterError;

/// A replica's numeric Raft id; stable for the life of its data directory.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tanvrit's openraft types.
    pub TypeConfig:
        D = WriteRequest,
        R = WriteOutcome,
        NodeId = NodeId,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub use crate::raft::snapshot_data::SnapshotData;

/// The Raft handle of a replica.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, ReplicaNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ReplicaNode>;
/// A storage failure as openraft sees it.
pub type StorageError = openraft::StorageError<NodeId>;
/// openraft's metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, ReplicaNode>;

/// What a caller is told when the Raft core has stopped (shut down, or failed).
pub(crate) fn fatal(err: Fatal<NodeId>) -> ClusterError {
    match err {
        Fatal::Stopped => ClusterError::ShuttingDown,
        Fatal::StorageError(e) => ClusterError::Storage(e.to_string()),
        Fatal::Panicked => ClusterError::Internal("the Raft core panicked".into()),
    }
}

/// The payload of a normal log entry: a batch of domain commands, applied in order at
/// the entry's index. The leader packs every write queued while earlier entries were
/// being flushed into one entry, so one fsync and one replication round serve them all.
///
/// Entries written before batching carried one command as `{"command": …}`; they still
/// decode (as a batch of one). New entries are written as `{"commands": […]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WriteRequestWire")]
pub struct WriteRequest {
    /// The commands every replica applies, in this order.
    pub commands: Vec<Command>,
}

impl WriteRequest {
    /// A batch of one command.
    pub fn single(command: Command) -> Self {
        Self {
            commands: vec![command],
        }
    }
}

/// Both shapes a stored [`WriteRequest`] may have. (Two optional fields rather than an
/// untagged enum: serde buffers untagged input before trying each variant, and every
/// log read on the apply path goes through here.)
#[derive(Deserialize)]
struct WriteRequestWire {
    #[serde(default)]
    commands: Vec<Command>,
    /// The single-command shape of entries written before batching.
    #[serde(default)]
    command: Option<Command>,
}

impl From<WriteRequestWire> for WriteRequest {
    fn from(wire: WriteRequestWire) -> Self {
        let mut commands = wire.commands;
        if let Some(command) = wire.command {
            commands.insert(0, command);
        }
        Self { commands }
    }
}

/// What applying one log entry produced: one outcome per command of a normal entry, in
/// order (a rejected command has its own rejection and does not affect the others);
/// empty for the blank and membership entries Raft writes itself (openraft wants one
/// response per applied entry).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome(pub Vec<Outcome>);

/// What the membership records of a replica: enough to reach it and to show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// Replica name (`TANVRIT_REPLICA_ID`).
    pub name: String,
    /// Region (`TANVRIT_REPLICA_REGION`); empty when not yet known.
    #[serde(default)]
    pub region: String,
    /// Replica RPC address, `host:port`.
    pub raft_addr: String,
    /// Public API address, `host:port`; empty when not yet known.
    #[serde(default)]
    pub api_addr: String,
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.raft_addr)
    }
}
