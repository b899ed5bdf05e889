//! [`Node`]: one running replica (the openraft handle, its store and reader, its view of
//! the peers) and everything it does on request: writes (proposed here when leader,
//! forwarded otherwise), read barriers, membership changes, and answering replica RPC.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use parking_lot::Mutex;
use tanvrit_api::{ReplicaInfo, Role, Topology};
use tokio::sync::{mpsc, watch};

use crate::raft::batcher::Proposal;
use crate::raft::config::RaftClusterConfig;
use crate::raft::forward::Forwarded;
use crate::raft::rpc::{
    LeaderError, MembershipChange, MembershipView, ReplicaStatus, Rpc, RpcReply,
};
use crate::raft::stats::{Counters, RaftStats};
use crate::raft::storage::SnapshotCounters;
use crate::raft::transport::{Contacts, RaftTransport};
use crate::raft::types::{NodeId, Raft, RaftMetrics, ReplicaNode};
use crate::{ClusterError, Reader};

/// What the failure detector and the leadership watch remember between metrics.
#[derive(Debug, Default)]
pub(crate) struct Detector {
    /// Last AppendEntries (or snapshot chunk) accepted from a leader.
    pub last_leader_contact: Option<Instant>,
    /// Last vote this replica granted.
    pub last_vote_granted: Option<Instant>,
    /// Last election the detector called.
    pub last_trigger: Option<Instant>,
    /// The successor a stopping leader named, and when.
    pub successor: Option<(NodeId, Instant)>,
    /// openraft's `millis_since_quorum_ack` and when it was reported (leader only).
    pub quorum_ack: Option<(u64, Instant)>,
    /// The last (term, leader) pair seen, to count leader changes.
    pub last_leader: Option<(u64, NodeId)>,
}

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

pub(crate) fn fatal(err: Fatal<NodeId>) -> ClusterError {
    match err {
        Fatal::Stopped => ClusterError::ShuttingDown,
        Fatal::StorageError(e) => ClusterError::Storage(e.to_string()),
        Fatal::Panicked => ClusterError::Internal("the Raft core panicked".into()),
    }
}

fn membership_view(m: &RaftMetrics) -> MembershipView {
    let membership = m.membership_config.membership();
    MembershipView {
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        index: m.membership_config.log_id().map_or(0, |id| id.index),
    }
}

impl Node {
    /// The pause between two tries of a leader-only request, and the detector's tick
    /// (it adds up to one tick to a failover).
    pub fn tick(&self) -> Duration {
        (self.config.heartbeat / 10).max(Duration::from_millis(5))
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

    /// What is known of replica `id`: the membership first, then the configured peers.
    pub fn node_of(&self, id: NodeId) -> Option<ReplicaNode> {
        if id == self.config.node_id {
            return Some(self.me.clone());
        }
        let m = self.metrics.borrow();
        if let Some(node) = m.membership_config.membership().get_node(&id) {
            return Some(node.clone());
        }
        drop(m);
        self.config
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| ReplicaNode {
                name: p.name.clone(),
                region: String::new(),
                raft_addr: p.raft_addr.clone(),
                api_addr: String::new(),
            })
    }

    /// Every replica this one should know about: members and configured voters.
    pub fn known_replicas(&self) -> BTreeMap<NodeId, ReplicaNode> {
        let mut all: BTreeMap<NodeId, ReplicaNode> = BTreeMap::new();
        for peer in self.config.voters() {
            all.insert(
                peer.id,
                ReplicaNode {
                    name: peer.name,
                    region: String::new(),
                    raft_addr: peer.raft_addr,
                    api_addr: String::new(),
                },
            );
        }
        let m = self.metrics.borrow();
        for (id, node) in m.membership_config.membership().nodes() {
            all.insert(*id, node.clone());
        }
        all.insert(self.config.node_id, self.me.clone());
        all
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

    /// The API address of the leader [`Node::no_leader`] names (or this replica, when it
    /// leads): from that replica's latest status, else from the membership.
    pub fn leader_api_addr(&self) -> Option<String> {
        let m = self.metrics();
        let id = self
            .leader_of(&m)
            .or(m.current_leader.filter(|id| *id != self.config.node_id))?;
        self.api_addr_of(id)
    }

    /// Replica `id`'s API address, when known.
    fn api_addr_of(&self, id: NodeId) -> Option<String> {
        let known = |addr: String| Some(addr).filter(|a| !a.is_empty());
        if id == self.config.node_id {
            return known(self.me.api_addr.clone());
        }
        self.contacts
            .get(id)
            .status
            .filter(|s| s.id == id)
            .and_then(|s| known(s.node.api_addr))
            .or_else(|| self.node_of(id).and_then(|n| known(n.api_addr)))
    }

    /// Waits until the metrics change or a tick passes, but not past `deadline`.
    pub(super) async fn pause(&self, deadline: Instant) {
        let until = (Instant::now() + self.tick()).min(deadline);
        let mut metrics = self.metrics.clone();
        let _ = tokio::time::timeout_at(until.into(), metrics.changed()).await;
    }

    pub fn status(&self) -> ReplicaStatus {
        let m = self.metrics();
        ReplicaStatus {
            id: self.config.node_id,
            node: self.me.clone(),
            cluster_id: self.config.cluster_id.clone(),
            role: self.role_of(&m),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: self.reader.applied_index(),
            leader: self.leader_of(&m),
            initialized: m
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
                || m.last_log_index.is_some(),
        }
    }

    // ---- membership --------------------------------------------------------------

    /// Forms the cluster from the configured voters (see `RaftCluster::initialize`).
    pub async fn initialize(&self) -> Result<bool, ClusterError> {
        if !self.raft.is_initialized().await.map_err(fatal)? {
            let me = self.config.node_id;
            let formed = self
                .known_replicas()
                .into_keys()
                .any(|id| id != me && self.contacts.get(id).status.is_some_and(|s| s.initialized));
            if formed {
                // An empty replica of a cluster that exists (its disk was wiped): forming
                // a second history here would be wrong; it catches up from the leader.
                return Ok(false);
            }
            // The replica that forms the cluster has nothing to have forgotten.
            self.end_rejoining("initializing a new cluster");
        }
        let mut members = BTreeMap::new();
        for peer in self.config.voters() {
            let node = if peer.id == self.config.node_id {
                self.me.clone()
            } else {
                match self.contacts.get(peer.id).status {
                    Some(status) if status.id == peer.id => ReplicaNode {
                        raft_addr: peer.raft_addr.clone(),
                        ..status.node
                    },
                    _ => ReplicaNode {
                        name: peer.name.clone(),
                        region: String::new(),
                        raft_addr: peer.raft_addr.clone(),
                        api_addr: String::new(),
                    },
                }
            };
            members.insert(peer.id, node);
        }
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!("initialized the cluster");
                Ok(true)
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ClusterError::Config(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// Runs a membership change on the leader, from whichever replica it is asked on.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipView, ClusterError> {
        let deadline = Instant::now() + self.config.no_leader_timeout;
        let mut hint: Option<NodeId> = None;
        loop {
            if self.is_closed() {
                return Err(ClusterError::ShuttingDown);
            }
            let target = hint.take().or_else(|| self.usable_leader());
            let outcome =
                match target {
                    Some(id) if id == self.config.node_id => {
                        match self.change_membership_here(change.clone()).await {
                            Ok(view) => Forwarded::Done(view),
                            Err(LeaderError::NotLeader { leader }) => Forwarded::NotLeader(leader),
                            Err(LeaderError::Failed { error }) => Forwarded::Failed(error),
                        }
                    }
                    Some(id) => {
                        let timeout = self.config.catch_up_timeout + self.config.rpc_timeout;
                        self.forward(id, Rpc::Membership(change.clone()), timeout, |reply| {
                            match reply {
                                RpcReply::Membership(result) => Some(result),
                                _ => None,
                            }
                        })
                        .await
                    }
                    None => Forwarded::NotDelivered,
                };
            match outcome {
                Forwarded::Done(view) => return Ok(view),
                Forwarded::NotLeader(leader) => hint = leader.filter(|l| Some(*l) != target),
                Forwarded::NotDelivered => {}
                // Membership changes are repeatable (adding a voter twice is a no-op).
                Forwarded::Lost => return Err(self.no_leader()),
                Forwarded::Failed(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader());
            }
            if hint.is_none() {
                self.pause(deadline).await;
            }
        }
    }

    fn membership_error(
        &self,
        err: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>,
    ) -> LeaderError {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LeaderError::NotLeader {
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                LeaderError::Failed {
                    error: ClusterError::Membership(e.to_string()),
                }
            }
            RaftError::Fatal(f) => LeaderError::Failed { error: fatal(f) },
        }
    }

    /// A membership change with this replica as leader.
    pub(super) async fn change_membership_here(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipView, LeaderError> {
        if self.is_closed() || !self.is_leader() {
            return Err(LeaderError::NotLeader {
                leader: if self.is_closed() {
                    None
                } else {
                    self.leader_of(&self.metrics())
                },
            });
        }
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        match change {
            MembershipChange::Add { id, node } => {
                if membership.voter_ids().any(|v| v == id) {
                    return Ok(membership_view(&m));
                }
                if membership.get_node(&id).is_none() {
                    let node = self.describe(id, node).await;
                    let added = self
                        .raft
                        .add_learner(id, node, false)
                        .await
                        .map_err(|e| self.membership_error(e))?;
                    tracing::info!(id, index = added.log_id.index, "added a learner");
                }
                self.wait_caught_up(id).await?;
                let changed = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| self.membership_error(e))?;
                tracing::info!(
                    id,
                    index = changed.log_id.index,
                    "promoted a learner to voter"
                );
            }
            MembershipChange::Remove { id } => {
                if membership.get_node(&id).is_none() {
                    return Ok(membership_view(&m));
                }
                let change = if membership.voter_ids().any(|v| v == id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                // `retain = false`: a removed voter does not stay on as a learner.
                let changed = self
                    .raft
                    .change_membership(change, false)
                    .await
                    .map_err(|e| self.membership_error(e))?;
                tracing::info!(id, index = changed.log_id.index, "removed a replica");
            }
        }
        Ok(membership_view(&self.metrics()))
    }

    /// The new replica's own description (region, API address) when it answers, else
    /// what the caller gave.
    async fn describe(&self, id: NodeId, given: ReplicaNode) -> ReplicaNode {
        let reply = self
            .transport
            .call(
                self.config.node_id,
                id,
                &given.raft_addr,
                Rpc::Status,
                self.config.rpc_timeout,
            )
            .await;
        match reply {
            Ok(RpcReply::Status(status)) if status.id == id => ReplicaNode {
                raft_addr: given.raft_addr,
                ..status.node
            },
            _ => given,
        }
    }

    /// Waits until learner `id` replicated up to the leader's log end as of now.
    async fn wait_caught_up(&self, id: NodeId) -> Result<(), LeaderError> {
        let target = self.metrics().last_log_index.unwrap_or(0);
        let deadline = Instant::now() + self.config.catch_up_timeout;
        loop {
            let m = self.metrics();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |log_id| log_id.index);
            if matched >= target {
                return Ok(());
            }
            if m.state != ServerState::Leader {
                return Err(LeaderError::NotLeader {
                    leader: m.current_leader,
                });
            }
            if Instant::now() >= deadline {
                return Err(LeaderError::Failed {
                    error: ClusterError::Membership(format!(
                        "replica {id} did not catch up (at {matched} of {target}) within {:?}; \
                         it stays a learner, add it again to retry",
                        self.config.catch_up_timeout
                    )),
                });
            }
            self.pause(deadline).await;
        }
    }

    // ---- topology and stats ------------------------------------------------------

    pub fn topology(&self) -> Topology {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader = self.leader_of(&m);
        let last_log = m.last_log_index.unwrap_or(0);
        // The leader's log end, for lag: ours if we lead, else as the leader reported it.
        let leader_last_log = match leader {
            Some(id) if id == self.config.node_id => Some(last_log),
            Some(id) => self.contacts.get(id).status.map(|s| s.last_log_index),
            None => None,
        };
        let probe_window = self.probe_interval() * 3 + self.config.rpc_timeout;
        let now = Instant::now();
        let mut replicas = Vec::new();
        for (id, node) in self.known_replicas() {
            if id == self.config.node_id {
                let applied = self.reader.applied_index();
                replicas.push(ReplicaInfo {
                    id,
                    name: node.name,
                    region: node.region,
                    address: node.raft_addr,
                    api_address: Some(node.api_addr).filter(|a| !a.is_empty()),
                    role: self.role_of(&m),
                    term: m.current_term,
                    commit_index: self.committed.load(Ordering::Relaxed),
                    applied_index: applied,
                    lag: leader_last_log.map(|end| end.saturating_sub(applied)),
                    last_contact_ms: Some(0),
                    reachable: true,
                });
                continue;
            }
            let view = self.contacts.get(id);
            let fresh = view
                .last_ok
                .is_some_and(|at| now.duration_since(at) <= probe_window);
            let status = view.status.filter(|s| s.id == id);
            let role = match &status {
                Some(s) if fresh => s.role,
                _ if leader == Some(id) => Role::Leader,
                _ if voters.contains(&id) => Role::Follower,
                _ => Role::Learner,
            };
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            let applied = status.as_ref().map_or(0, |s| s.applied_index);
            let lag = match (leader == Some(self.config.node_id), matched) {
                (true, Some(matched)) => Some(last_log.saturating_sub(matched)),
                (true, None) => Some(last_log),
                (false, _) if status.is_some() => {
                    leader_last_log.map(|end| end.saturating_sub(applied))
                }
                _ => None,
            };
            replicas.push(ReplicaInfo {
                id,
                name: status
                    .as_ref()
                    .map_or(node.name.clone(), |s| s.node.name.clone()),
                region: status
                    .as_ref()
                    .map(|s| s.node.region.clone())
                    .filter(|r| !r.is_empty())
                    .unwrap_or(node.region),
                api_address: self.api_addr_of(id),
                address: node.raft_addr,
                role,
                term: status.as_ref().map_or(0, |s| s.term),
                commit_index: status.as_ref().map_or(0, |s| s.commit_index),
                applied_index: applied,
                lag,
                last_contact_ms: view
                    .last_ok
                    .map(|at| now.duration_since(at).as_millis() as u64),
                reachable: fresh && view.probe_ok,
            });
        }
        Topology {
            cluster_id: self.config.cluster_id.clone(),
            mode: "raft".into(),
            this_replica: self.config.replica_name.clone(),
            leader: leader.and_then(|id| self.node_of(id)).map(|n| n.name),
            replicas,
            index: self.reader.applied_index(),
        }
    }

    pub fn probe_interval(&self) -> Duration {
        (self.config.heartbeat * 2).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    pub fn stats(&self) -> RaftStats {
        let m = self.metrics();
        let c = &self.counters;
        let s = &self.snapshots;
        RaftStats {
            node_id: self.config.node_id,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: self.reader.applied_index(),
            leader_id: if m.state == ServerState::Leader {
                self.is_leader().then_some(self.config.node_id)
            } else {
                m.current_leader
            },
            is_leader: self.is_leader(),
            leader_changes_total: c.leader_changes.load(Ordering::Relaxed),
            elections_triggered_total: c.elections_triggered.load(Ordering::Relaxed),
            writes_total: c.writes.load(Ordering::Relaxed),
            writes_forwarded_total: c.writes_forwarded.load(Ordering::Relaxed),
            writes_failed_total: c.writes_failed.load(Ordering::Relaxed),
            write_entries_total: c.write_entries.load(Ordering::Relaxed),
            write_entry_commands_total: c.write_entry_commands.load(Ordering::Relaxed),
            proposal_latency: c.proposal_latency.snapshot(),
            commit_latency: c.commit_latency.snapshot(),
            snapshots_built_total: s.built.load(Ordering::Relaxed),
            snapshots_installed_total: s.installed.load(Ordering::Relaxed),
            snapshot_index: s.last_index.load(Ordering::Relaxed),
            purged_index: m.purged.map_or(0, |id| id.index),
        }
    }
}
