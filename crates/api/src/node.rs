//! Worker nodes: what an agent registers, and the node endpoints' bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The driver that runs host commands; every node offers it.
pub const DRIVER_EXEC: &str = "exec";
/// The driver that runs jobs naming an `image` in containers of the Docker engine.
pub const DRIVER_DOCKER: &str = "docker";

use crate::{Index, Millis, NodeId, Resources};

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new placements.
    Ready,
    /// Takes no new placements; running work finishes or is stopped at the deadline.
    Draining,
    /// Missed its heartbeats; its work was declared lost.
    Down,
    /// Removed by an operator.
    Deleted,
}

impl NodeState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
            NodeState::Deleted => "deleted",
        }
    }
}

/// A worker node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    /// The node's id.
    pub id: NodeId,
    /// A name for people (the host name by default).
    pub name: String,
    /// What it offers.
    pub resources: Resources,
    /// Labels jobs can require.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The drivers it offers: `exec` (host commands; every node) and `docker` (jobs
    /// naming an `image`). Empty for nodes registered before drivers existed: `exec`.
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Where it is.
    pub state: NodeState,
    /// When it first registered.
    pub registered_at: Millis,
    /// When it last registered (agent restarts re-register).
    pub updated_at: Millis,
    /// For a draining node: when running work is stopped and rescheduled.
    #[serde(default)]
    pub drain_deadline: Option<Millis>,
    /// The index of the write that last changed it.
    #[serde(default)]
    pub modify_index: Index,
}

/// A node with what is placed on it right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// The node.
    #[serde(flatten)]
    pub node: Node,
    /// Resources taken by active attempts.
    pub allocated: Resources,
    /// Active attempts on it.
    pub active_attempts: u32,
}

/// `POST /api/compute/nodes/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeListRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: crate::Consistency,
    /// Include deleted nodes.
    #[serde(default)]
    pub include_deleted: bool,
}

/// Nodes, by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeListResponse {
    /// The nodes.
    pub nodes: Vec<NodeView>,
    /// The replica's applied index this read reflects.
    pub index: Index,
}

/// `POST /api/compute/nodes/register` (agent scope).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeRegisterRequest {
    /// The node's id, kept by the agent across restarts.
    pub id: NodeId,
    /// A name for people.
    pub name: String,
    /// What it offers.
    pub resources: Resources,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The drivers it offers (`exec`, `docker`); absent: `exec` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<String>,
}

impl Node {
    /// Whether the node can run `spec`: a job naming an `image` needs the `docker`
    /// driver; any other runs with `exec`, which every node offers.
    pub fn runs(&self, spec: &crate::JobSpec) -> bool {
        spec.image.is_none() || self.drivers.iter().any(|d| d == DRIVER_DOCKER)
    }
}

/// `POST /api/compute/nodes/{id}/drain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeDrainRequest {
    /// Stop running work after this many seconds (none: wait for it to finish).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// `POST /api/compute/nodes/{id}/delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeDeleteRequest {
    /// Delete even with active attempts (they are declared lost and retried).
    #[serde(default)]
    pub force: bool,
}

/// The node a write produced or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeResponse {
    /// The node.
    pub node: Node,
    /// Log index of the write.
    pub index: Index,
}
