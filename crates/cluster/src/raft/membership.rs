//! Membership: forming the cluster from the configured voters (by hand, or by the
//! automatic bootstrap), and adding or removing a replica on the leader (from whichever
//! replica it is asked on). A new replica joins as a learner and becomes a voter only
//! once it caught up, so a replica still catching up never counts toward the quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tokio::sync::watch;

use crate::raft::forward::Forwarded;
use crate::raft::monitor::stopped;
use crate::raft::node::Node;
use crate::raft::rpc::{LeaderError, MembershipChange, MembershipView, Rpc, RpcReply};
use crate::raft::types::{fatal, NodeId, RaftMetrics, ReplicaNode};
use crate::ClusterError;

fn membership_view(m: &RaftMetrics) -> MembershipView {
    let membership = m.membership_config.membership();
    MembershipView {
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        index: m.membership_config.log_id().map_or(0, |id| id.index),
    }
}

impl Node {
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
}

/// The lowest-id configured voter initializes the cluster once every configured peer
/// answers and none is initialized; it gives up for good as soon as any is.
pub(crate) async fn auto_bootstrap(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let me = node.config.node_id;
    let voters = node.config.voters();
    if voters.first().map(|p| p.id) != Some(me) {
        return;
    }
    loop {
        match node.raft.is_initialized().await {
            Ok(false) => {}
            _ => return,
        }
        let mut ready = true;
        for peer in voters.iter().filter(|p| p.id != me) {
            let view = node.contacts.get(peer.id);
            match view.status.filter(|_| view.probe_ok) {
                Some(status) if status.initialized => {
                    tracing::info!(peer = peer.id, "a peer is initialized; not bootstrapping");
                    return;
                }
                Some(status) if status.cluster_id != node.config.cluster_id => {
                    tracing::warn!(
                        peer = peer.id,
                        theirs = %status.cluster_id,
                        ours = %node.config.cluster_id,
                        "a peer belongs to another cluster id; not bootstrapping"
                    );
                    ready = false;
                }
                Some(_) => {}
                None => ready = false,
            }
        }
        if ready {
            match node.initialize().await {
                Ok(_) => return,
                Err(err) => tracing::warn!(error = %err, "bootstrap failed; will retry"),
            }
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(node.probe_interval()) => {}
        }
    }
}
