//! [`Node`]: one running replica (the openraft handle, its store's reader, its view of
//! the peers, its counters, the batcher's queue) and the questions every concern asks
//! of it: who leads, how long to wait, which error to answer. What it does lives beside
//! it, one module per concern (see the layout in `raft`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use parking_lot::Mutex;
use tanvrit_api::Role;
use tokio::sync::{mpsc, watch};

use crate::raft::batcher::{Leader, Proposal};
use crate::raft::config::RaftClusterConfig;
use crate::raft::monitor::{Detector, Watched};
use crate::raft::stats::Counters;
use crate::raft::storage::SnapshotCounters;
use crate::raft::transport::{Contacts, RaftTransport};
use crate::raft::types::{NodeId, Raft, RaftMetrics, ReplicaNode};
use crate::{ClusterError, Reader};

/// One running replica.
pub(crate) struct Node {
    pub config: RaftClusterConfig,
    pub me: ReplicaNode,
    pub raft: Raft,
    pub reader: Reader,
    pub transport: Arc<dyn RaftTransport>,
    pub contacts: Arc<Contacts>,
    pub committed: Arc<AtomicU64>,
    pub snapshots: Arc<SnapshotCounters>,
    pub counters: Counters,
    pub metrics: watch::Receiver<RaftMetrics>,
    pub leadership: watch::Sender<bool>,
    pub detector: Mutex<Detector>,
    pub closed: AtomicBool,
    pub started: Instant,
    /// The batcher's queue (see `batcher`).
    pub proposals: mpsc::Sender<Proposal>,
    /// Started on an empty disk and not yet caught up (see [`Node::refuse_vote`]).
    pub rejoining: AtomicBool,
}

impl Node {
    /// The pause between two tries of a leader-only request, and the detector's tick
    /// (it adds up to one tick to a failover).
    pub fn tick(&self) -> Duration {
        (self.config.heartbeat / 10).max(Duration::from_millis(5))
    }

    /// The pause between two rounds of the peer prober (see `peers`).
    pub fn probe_interval(&self) -> Duration {
        (self.config.heartbeat * 2).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether this replica is the leader with a fresh quorum.
    pub fn is_leader(&self) -> bool {
        *self.leadership.borrow()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.metrics.borrow().clone()
    }

    fn is_voter(m: &RaftMetrics, id: NodeId) -> bool {
        m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
    }

    /// The leader to send leader-only requests to: this replica only while its quorum
    /// is fresh, another replica as openraft knows it.
    pub fn leader_of(&self, m: &RaftMetrics) -> Option<NodeId> {
        if m.state == ServerState::Leader {
            return self.is_leader().then_some(self.config.node_id);
        }
        m.current_leader.filter(|id| *id != self.config.node_id)
    }

    /// The leader to route a leader-only request to now: [`Node::leader_of`], unless
    /// this follower has not heard from it for longer than the lease (it is gone or cut
    /// off; waiting for the next one beats a call that can only time out).
    pub fn usable_leader(&self) -> Option<NodeId> {
        let leader = self.leader_of(&self.metrics())?;
        (leader == self.config.node_id || !self.leader_silent()).then_some(leader)
    }

    /// Whether this replica has heard from no leader (no AppendEntries accepted) for
    /// longer than the lease and a heartbeat.
    pub(super) fn leader_silent(&self) -> bool {
        let last = self
            .detector
            .lock()
            .last_leader_contact
            .unwrap_or(self.started);
        Instant::now().saturating_duration_since(last)
            > self.config.election_max + self.config.heartbeat
    }

    pub fn role_of(&self, m: &RaftMetrics) -> Role {
        match m.state {
            ServerState::Leader if self.is_leader() => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            _ if Self::is_voter(m, self.config.node_id) => Role::Follower,
            // Not (yet) a member: it only receives what a leader sends it.
            _ => Role::Learner,
        }
    }

    /// The name of the other replica openraft takes for the leader, if any.
    fn leader_hint(&self) -> Option<String> {
        let m = self.metrics.borrow();
        m.current_leader
            .filter(|id| *id != self.config.node_id)
            .and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.name.clone())
            })
    }

    /// A write (or read) that certainly was not proposed: no usable leader.
    pub fn no_leader(&self) -> ClusterError {
        ClusterError::NoLeader {
            retry_after: self.config.election_max,
            leader: self.leader_hint(),
        }
    }

    /// A write that may have entered the log without its commit being seen.
    pub fn outcome_unknown(&self) -> ClusterError {
        ClusterError::OutcomeUnknown {
            retry_after: self.config.election_max,
            leader: self.leader_hint(),
        }
    }

    /// Waits until the metrics change or a tick passes, but not past `deadline`.
    pub(super) async fn pause(&self, deadline: Instant) {
        let until = (Instant::now() + self.tick()).min(deadline);
        let mut metrics = self.metrics.clone();
        let _ = tokio::time::timeout_at(until.into(), metrics.changed()).await;
    }
}

/// What the batcher sees of the replica (see `batcher`).
impl Leader for Node {
    fn is_leader(&self) -> bool {
        Node::is_leader(self)
    }

    fn leader(&self) -> Option<NodeId> {
        self.leader_of(&self.metrics())
    }

    fn outcome_unknown(&self) -> ClusterError {
        Node::outcome_unknown(self)
    }

    fn raft(&self) -> &Raft {
        &self.raft
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// What the leadership watch and the failure detector see of the replica (see
/// `monitor`).
impl Watched for Node {
    fn config(&self) -> &RaftClusterConfig {
        &self.config
    }

    fn metrics_watch(&self) -> watch::Receiver<RaftMetrics> {
        self.metrics.clone()
    }

    fn raft(&self) -> &Raft {
        &self.raft
    }

    fn detector(&self) -> &Mutex<Detector> {
        &self.detector
    }

    fn leadership(&self) -> &watch::Sender<bool> {
        &self.leadership
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn contacts(&self) -> &Contacts {
        &self.contacts
    }

    fn started(&self) -> Instant {
        self.started
    }

    fn tick(&self) -> Duration {
        Node::tick(self)
    }

    fn is_closed(&self) -> bool {
        Node::is_closed(self)
    }

    fn is_rejoining(&self) -> bool {
        Node::is_rejoining(self)
    }

    fn check_rejoined(&self, m: &RaftMetrics) {
        Node::check_rejoined(self, m)
    }
}
