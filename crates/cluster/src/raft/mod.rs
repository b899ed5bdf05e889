//! [`RaftCluster`]'s parts: the openraft glue for a replicated control plane.
//!
//! # Layout
//! - [`types`]: the openraft type configuration (entry payload, response, node).
//! - [`storage`]: openraft's log and state-machine traits on the redb store.

pub mod storage;
pub mod types;

pub use storage::{LogStore, SnapshotBuilder, StateMachine};
pub use types::{NodeId, ReplicaNode, TypeConfig, WriteOutcome, WriteRequest};
