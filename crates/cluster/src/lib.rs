//! The `ClusterService`: the one door every write goes through, and the read barriers
//! that make reads as fresh as a request asks.
//!
//! # Layout
//! - this file: the [`ClusterService`] trait, [`Receipt`], [`ClusterError`].
//! - [`job_output`]: what applying a command writes outside the state (job output),
//!   shared by both engines.
//! - [`events`]: [`EventLog`], the bounded ring of recent events both engines' apply
//!   paths feed (derived by `tanvrit_state::events`), read by event streams.
//! - [`reader`]: [`Reader`], local read access to a replica's applied state and job logs.
//! - [`single_node`]: [`SingleNode`], the reference implementation (always leader; the
//!   redb store is the log).
//! - [`raft`]: [`RaftCluster`], the replicated implementation on openraft 0.9: storage,
//!   replica RPC, forwarding, failure detection, membership and the upgrade path.
//!
//! Call sites hold an `Arc<dyn ClusterService>` and never know which implementation
//! is bound (seed section 4).

// The chaos suite's deliberately broken build must never ship.
#[cfg(all(feature = "chaos-broken-strict-reads", not(debug_assertions)))]
compile_error!("`chaos-broken-strict-reads` breaks linearizable reads; debug builds only");

mod batch_rows;
pub mod events;
pub mod job_output;
pub mod raft;
pub mod reader;
pub mod single_node;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tanvrit_api::{Consistency, Index, Role, Topology};
use tanvrit_state::{Command, Outcome};
use tokio::sync::watch;

pub use events::{EventBatch, EventLog, EventsError, Position, DEFAULT_EVENTS_RETAINED};
pub use raft::{MembershipView, Peer, RaftCluster, RaftClusterConfig, RaftStats, ReplicaNode};
pub use reader::{LogWindow, Reader};
pub use single_node::{SingleNode, SingleNodeConfig, WriteStats};

/// What a write produced: the command's outcome and the log index it was applied at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Accepted (with its effect) or rejected by `apply` (with a typed reason).
    pub outcome: Outcome,
    /// The log index the command was applied at (rejected commands have one too).
    pub index: Index,
}

/// Why the cluster could not take a write or serve a read. Each has a stable code.
/// (Serializable: a leader's answer to a forwarded write travels back to the follower.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known right now (election in progress); retry after the hint. For a
    /// write this is definite: it was never proposed, so nothing of it can be applied
    /// and repeating it is safe whatever it is.
    #[error("no leader is available; retry in {retry_after:?}")]
    NoLeader {
        /// How long a client should wait before retrying.
        retry_after: Duration,
        /// The leader this replica last knew, if any.
        leader: Option<String>,
    },
    /// The write may have entered the log, but its outcome could not be learned: the
    /// leader lost its leadership or gave up waiting before the entry committed, or the
    /// leader's answer to a forwarded write was lost. A new leader may still commit it,
    /// so it may or may not take effect. Repeating it is safe only under the same
    /// idempotency key, and the repeat's answer tells which happened.
    #[error(
        "the write may or may not take effect: it was proposed, but leadership changed or \
         the leader's answer was lost before it committed; repeat it with the same \
         Idempotency-Key to learn which (retry in {retry_after:?})"
    )]
    OutcomeUnknown {
        /// How long a client should wait before repeating.
        retry_after: Duration,
        /// The leader this replica knows now, if any.
        leader: Option<String>,
    },
    /// This replica did not reach the requested index in time.
    #[error("replica has applied {applied}, not yet {wanted}; retry in {retry_after:?}")]
    NotCaughtUp {
        /// The index asked for.
        wanted: Index,
        /// What this replica has applied.
        applied: Index,
        /// How long a client should wait before retrying.
        retry_after: Duration,
    },
    /// The replica is shutting down.
    #[error("replica is shutting down")]
    ShuttingDown,
    /// The local store failed; the write was not acknowledged.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Anything else unexpected inside the cluster layer.
    #[error("internal cluster error: {0}")]
    Internal(String),
    /// The cluster configuration is not usable.
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// A membership change (add or remove a replica, initialize) was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
}

impl ClusterError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ClusterError::NoLeader { .. } => "no_leader",
            ClusterError::OutcomeUnknown { .. } => tanvrit_api::WRITE_OUTCOME_UNKNOWN,
            ClusterError::NotCaughtUp { .. } => "not_caught_up",
            ClusterError::ShuttingDown => "shutting_down",
            ClusterError::Storage(_) => "storage_error",
            ClusterError::Internal(_) => "internal",
            ClusterError::Config(_) => "cluster_config_invalid",
            ClusterError::Membership(_) => "membership_refused",
        }
    }

    /// When the client should retry, for `Retry-After` (503s only).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClusterError::NoLeader { retry_after, .. }
            | ClusterError::OutcomeUnknown { retry_after, .. }
            | ClusterError::NotCaughtUp { retry_after, .. } => Some(*retry_after),
            ClusterError::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The control plane's replication boundary (seed section 4).
#[async_trait]
pub trait ClusterService: Send + Sync + 'static {
    /// This replica's role now.
    fn role(&self) -> Role;
    /// The leader's replica name, if one is known.
    fn leader_id(&self) -> Option<String>;
    /// Every replica as this one sees it.
    fn topology(&self) -> Topology;
    /// Proposes a command; returns once it is durable (committed) and applied locally.
    /// Fails with [`ClusterError::OutcomeUnknown`] when the command may have entered the
    /// log without this call learning whether it committed, and with
    /// [`ClusterError::NoLeader`] only when it certainly was not proposed.
    async fn submit_write(&self, command: Command) -> Result<Receipt, ClusterError>;
    /// Waits until a read at `consistency` may be served here; returns the index it reflects.
    async fn read_barrier(&self, consistency: Consistency) -> Result<Index, ClusterError>;
    /// Local read access to the applied state and job logs.
    fn reader(&self) -> &Reader;
    /// Whether this replica is the leader now, as a watch: leader-only loops (scheduler,
    /// liveness, cron) run while it is `true` and stop when it turns `false`. A leader
    /// that lost contact with its quorum for longer than the lease reads `false` even
    /// before Raft replaces it.
    fn leadership(&self) -> watch::Receiver<bool>;
    /// Stops background work and flushes; later writes fail with `ShuttingDown`.
    async fn shutdown(&self);

    /// Resolves, with the reason, if the replica stops working by itself (its Raft
    /// core died): it can then serve nothing current, so the process should exit and be
    /// restarted rather than answer from a frozen state. Never resolves otherwise.
    async fn failed(&self) -> String {
        std::future::pending().await
    }

    /// The Raft numbers to export (term, indexes, leader, latencies, snapshots); `None`
    /// for implementations without a Raft log.
    fn raft_stats(&self) -> Option<RaftStats> {
        None
    }

    /// The API address (`host:port`) of the leader this replica knows (the same leader
    /// [`ClusterError::NoLeader`] names), for clients to retry there; `None` if unknown.
    fn leader_api_addr(&self) -> Option<String> {
        None
    }

    /// Forms the cluster from its configured voters. `Ok(false)` (nothing changed) when
    /// it already is. Only replicated implementations have a membership to form.
    async fn initialize(&self) -> Result<bool, ClusterError> {
        Err(not_replicated())
    }

    /// Adds replica `id` (a learner first, a voter once caught up), through the leader.
    async fn add_replica(
        &self,
        id: u64,
        node: ReplicaNode,
    ) -> Result<MembershipView, ClusterError> {
        let _ = (id, node);
        Err(not_replicated())
    }

    /// Removes replica `id` from the membership, through the leader.
    async fn remove_replica(&self, id: u64) -> Result<MembershipView, ClusterError> {
        let _ = id;
        Err(not_replicated())
    }
}

/// The refusal of membership changes by an implementation without a membership.
fn not_replicated() -> ClusterError {
    ClusterError::Membership(
        "this replica runs without Raft (single node); membership changes need \
         TANVRIT_CLUSTER_RAFT=true"
            .into(),
    )
}
