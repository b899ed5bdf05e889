//! The openraft type configuration: what a log entry carries ([`WriteRequest`]), what
//! applying it answers ([`WriteOutcome`]) and what the membership knows of a replica
//! ([`ReplicaNode`]).

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use tanvrit_state::{Command, Outcome};

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
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

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

/// The payload of a normal log entry: one domain command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The command every replica applies.
    pub command: Command,
}

/// What applying one log entry produced: the command's outcome for a normal entry,
/// `None` for the blank and membership entries Raft writes itself (openraft wants one
/// response per applied entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome(pub Option<Outcome>);

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
