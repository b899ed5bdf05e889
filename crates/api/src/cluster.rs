//! Cluster introspection and read consistency.

use serde::{Deserialize, Serialize};

use crate::{Index, Millis};

/// How fresh a read must be.
///
/// JSON: `"stale"` (default), `"strict"`, or `{"min_index": N}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Whatever this replica has applied.
    #[default]
    Stale,
    /// Read-your-writes: wait (bounded) until this replica applied at least this index.
    MinIndex(Index),
    /// Linearizable: confirmed through the leader's read index.
    Strict,
}

/// A replica's Raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts writes.
    Leader,
    /// Replicates the leader's log.
    Follower,
    /// Standing for election.
    Candidate,
    /// Catching up; not a voter yet.
    Learner,
}

impl Role {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        }
    }
}

/// One replica as the answering replica sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaInfo {
    /// Numeric Raft id (1 for a single node).
    pub id: u64,
    /// Replica name (`TANVRIT_REPLICA_ID`).
    pub name: String,
    /// Region (`TANVRIT_REPLICA_REGION`).
    pub region: String,
    /// Address (replica RPC in Raft mode, API address otherwise).
    pub address: String,
    /// Its public API address (`host:port`), when known (Raft mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<String>,
    /// Its role.
    pub role: Role,
    /// Current term, when known.
    #[serde(default)]
    pub term: u64,
    /// Commit index, when known.
    #[serde(default)]
    pub commit_index: Index,
    /// Applied index, when known.
    #[serde(default)]
    pub applied_index: Index,
    /// Entries behind the leader, when known.
    #[serde(default)]
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from it, when known.
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
    /// Whether the answering replica can reach it.
    pub reachable: bool,
}

/// `POST /api/compute/cluster/topology` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Topology {
    /// `TANVRIT_CLUSTER_ID`.
    pub cluster_id: String,
    /// `single_node` or `raft`.
    pub mode: String,
    /// The answering replica's name.
    pub this_replica: String,
    /// The leader's name, if one is known.
    #[serde(default)]
    pub leader: Option<String>,
    /// Every replica.
    pub replicas: Vec<ReplicaInfo>,
    /// The answering replica's applied index.
    pub index: Index,
}

/// `POST /api/compute/cluster/init` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterInitResponse {
    /// `true` if this call formed the cluster; `false` if it already was (nothing changed).
    pub initialized: bool,
    /// The answering replica's view of the replicas right after the call.
    pub topology: Topology,
}

/// `POST /api/compute/cluster/replicas/add`: a replica to add (as a learner first, then,
/// once caught up, as a voter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplicaAddRequest {
    /// Its Raft id (non-zero, unused by any other replica).
    pub id: u64,
    /// Its name (`TANVRIT_REPLICA_ID` on that replica).
    pub name: String,
    /// Its replica RPC address, `host:port`.
    pub raft_addr: String,
    /// Its public API address, `host:port` (empty: learned from the replica itself).
    #[serde(default)]
    pub api_addr: String,
    /// Its region (empty: learned from the replica itself).
    #[serde(default)]
    pub region: String,
}

/// `POST /api/compute/cluster/replicas/remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplicaRemoveRequest {
    /// The Raft id of the replica to remove.
    pub id: u64,
}

/// The cluster's members after a membership change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembershipResponse {
    /// Voter ids.
    pub voters: Vec<u64>,
    /// Learner ids (members that do not vote).
    pub learners: Vec<u64>,
    /// The log index of the membership entry now in force.
    pub index: Index,
}

/// `POST /api/compute/metrics`: aggregated counts as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsSummary {
    /// Jobs per state (snake_case state name -> count).
    pub jobs_by_state: std::collections::BTreeMap<String, u64>,
    /// Nodes per state.
    pub nodes_by_state: std::collections::BTreeMap<String, u64>,
    /// Active API keys.
    pub active_keys: u64,
    /// Schedules.
    pub schedules: u64,
    /// Businesses with a ledger.
    pub businesses: u64,
    /// This replica's applied index.
    pub applied_index: Index,
    /// This replica's role.
    pub role: Option<Role>,
    /// Server time of the read.
    pub at: Millis,
}
