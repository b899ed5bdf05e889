//! Forwarding: a follower sends a leader-only request (a write, a read index, a
//! membership change) to the leader, and sorts the answer by what it says about the
//! request's fate ([`Forwarded`]), which decides whether the caller may try again.

use std::time::Duration;

use crate::raft::node::Node;
use crate::raft::rpc::{LeaderError, Rpc, RpcReply};
use crate::raft::types::NodeId;
use crate::ClusterError;

/// How a forwarded call to the leader ended.
pub(super) enum Forwarded<T> {
    Done(T),
    /// The receiver is not the leader (nothing was done); it named another, or none.
    NotLeader(Option<NodeId>),
    /// The request never reached the receiver: safe to retry.
    NotDelivered,
    /// The request may have reached the receiver, but no answer came back (timeout,
    /// broken exchange, or this replica stopped hearing from any leader meanwhile).
    Lost,
    /// The receiver answered with a failure.
    Failed(ClusterError),
}

impl Node {
    /// Sends a leader-only request to `leader` and sorts the answer.
    pub(super) async fn forward<T>(
        &self,
        leader: NodeId,
        rpc: Rpc,
        timeout: Duration,
        unpack: impl FnOnce(RpcReply) -> Option<Result<T, LeaderError>>,
    ) -> Forwarded<T> {
        let Some(node) = self.node_of(leader) else {
            return Forwarded::NotDelivered;
        };
        let kind = rpc.kind();
        let call = self
            .transport
            .call(self.config.node_id, leader, &node.raft_addr, rpc, timeout);
        // A follower that stops hearing from any leader gives up at once rather than
        // waiting out the call's deadline: the leader is gone or this replica is cut off.
        let silence = async {
            loop {
                tokio::time::sleep(self.tick()).await;
                if self.leader_silent() && !self.is_leader() {
                    return;
                }
            }
        };
        let answer = tokio::select! {
            answer = call => answer,
            _ = silence => {
                tracing::debug!(leader, "no leader heard from while forwarding; giving up");
                return Forwarded::Lost;
            }
        };
        match answer {
            Ok(reply) => {
                self.contacts.heard_from(leader);
                match unpack(reply) {
                    Some(Ok(value)) => Forwarded::Done(value),
                    Some(Err(LeaderError::NotLeader { leader })) => Forwarded::NotLeader(leader),
                    Some(Err(LeaderError::Failed { error })) => Forwarded::Failed(error),
                    None => Forwarded::Failed(ClusterError::Internal(format!(
                        "replica {leader} answered a {kind:?} call with another kind"
                    ))),
                }
            }
            Err(err) if err.not_delivered() => {
                tracing::debug!(leader, error = %err, "leader not reachable");
                Forwarded::NotDelivered
            }
            Err(err) => {
                tracing::debug!(leader, error = %err, "forwarded call failed");
                Forwarded::Lost
            }
        }
    }
}
