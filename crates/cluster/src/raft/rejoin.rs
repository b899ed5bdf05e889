//! The rejoin vote rule: a replica that started on an empty disk (wiped, or new in a
//! cluster that exists) grants no vote (unless the cluster is still forming) and calls
//! no election until it has caught up.
//!
//! Why: it forgot its log and its vote, and voting with neither could elect a leader
//! that lacks acknowledged writes, or two leaders in one term (see
//! [`Node::refuse_vote`]).

use std::sync::atomic::Ordering;

use openraft::raft::{VoteRequest, VoteResponse};

use crate::raft::node::Node;
use crate::raft::types::{NodeId, RaftMetrics};

/// The meta key present while a replica that started on an empty disk has not caught up
/// (kept across restarts, so a crash half way through catching up does not end it).
pub(crate) const META_REJOINING: &str = "rejoining";

impl Node {
    /// Whether this replica started on an empty disk and has not caught up yet.
    pub fn is_rejoining(&self) -> bool {
        self.rejoining.load(Ordering::SeqCst)
    }

    /// The answer to a vote request while rejoining, or `None` to let openraft decide.
    ///
    /// A replica whose disk was wiped forgot its log and its vote, so granting votes
    /// could elect a leader without entries it had acknowledged (a majority held them
    /// with its old disk), or elect two leaders in one term. Until it holds a committed
    /// entry of the current leader's term (so its log is that leader's up to there, which
    /// has every earlier committed entry) it grants no vote, unless the cluster is still
    /// forming: every other replica answered and none has committed anything, so no
    /// acknowledged write can be lost (the first election of a new cluster, or of one
    /// upgraded from a single node, needs the empty replicas' votes).
    pub fn refuse_vote(&self, request: &VoteRequest<NodeId>) -> Option<VoteResponse<NodeId>> {
        if !self.is_rejoining() || self.cluster_is_forming() {
            return None;
        }
        tracing::info!(
            candidate = %request.vote,
            "refusing a vote: this replica started on an empty disk and has not caught up"
        );
        Some(VoteResponse::new(self.metrics().vote, None, false))
    }

    /// Every other known replica answered since this one started, in this cluster,
    /// and none reports a committed entry.
    fn cluster_is_forming(&self) -> bool {
        let me = self.config.node_id;
        self.known_replicas()
            .into_keys()
            .filter(|id| *id != me)
            .all(|id| match self.contacts.get(id).status {
                Some(status) => {
                    status.cluster_id == self.config.cluster_id && status.commit_index == 0
                }
                None => false,
            })
    }

    /// Ends rejoining once this replica applied a committed entry of the current
    /// leader's term; called on every metrics report.
    pub fn check_rejoined(&self, m: &RaftMetrics) {
        if !self.is_rejoining() {
            return;
        }
        let leader_term = m.vote.leader_id().term;
        let caught_up = m.vote.is_committed()
            && m.current_leader.is_some_and(|l| l != self.config.node_id)
            && m.last_applied
                .is_some_and(|applied| applied.leader_id.term == leader_term);
        if caught_up {
            self.end_rejoining("caught up with the leader");
        }
    }

    /// Leaves the rejoining state for good: votes and elections as any replica.
    pub fn end_rejoining(&self, why: &str) {
        if !self.rejoining.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Err(err) = self.reader.store().meta_delete(META_REJOINING) {
            // Harmless: the next start rejoins again and catches up at once.
            tracing::warn!(error = %err, "could not clear the rejoining mark");
        }
        self.raft.runtime_config().elect(true);
        tracing::info!(
            applied_index = self.reader.applied_index(),
            "{why}; this replica votes and stands for election again"
        );
    }
}
