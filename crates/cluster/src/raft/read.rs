//! Read barriers: what a read waits for before it reads this replica's applied state.
//! `stale`: nothing; `min_index`: that index applied here (read-your-writes); `strict`:
//! the leader's read index, confirmed by a quorum and asked of the leader when this
//! replica is not it, then applied here (linearizable).

use std::time::Instant;

use openraft::error::{CheckIsLeaderError, RaftError};
use tanvrit_api::{Consistency, Index};

use crate::raft::forward::Forwarded;
use crate::raft::node::Node;
use crate::raft::rpc::{LeaderError, Rpc, RpcReply};
use crate::raft::types::{fatal, NodeId};
use crate::ClusterError;

impl Node {
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<Index, ClusterError> {
        match consistency {
            Consistency::Stale => Ok(self.reader.applied_index()),
            Consistency::MinIndex(index) => {
                self.reader
                    .wait_applied(index, self.config.min_index_wait)
                    .await
            }
            // DELIBERATELY BROKEN (chaos suite self-test, off by default): no read index.
            Consistency::Strict if cfg!(feature = "chaos-broken-strict-reads") => {
                Ok(self.reader.applied_index())
            }
            Consistency::Strict => {
                let index = self.read_index().await?;
                self.reader
                    .wait_applied(index, self.config.min_index_wait)
                    .await
            }
        }
    }

    /// The leader's read index: confirmed by a quorum, so every write acknowledged
    /// before this call is at or below it.
    async fn read_index(&self) -> Result<Index, ClusterError> {
        let deadline = Instant::now() + self.config.no_leader_timeout;
        let mut hint: Option<NodeId> = None;
        loop {
            if self.is_closed() {
                return Err(ClusterError::ShuttingDown);
            }
            let target = hint.take().or_else(|| self.usable_leader());
            let outcome =
                match target {
                    Some(id) if id == self.config.node_id => match self.read_index_here().await {
                        Ok(index) => Forwarded::Done(index),
                        Err(LeaderError::NotLeader { leader }) => Forwarded::NotLeader(leader),
                        Err(LeaderError::Failed { error }) => Forwarded::Failed(error),
                    },
                    Some(id) => {
                        self.forward(id, Rpc::ReadIndex, self.config.rpc_timeout, |reply| {
                            match reply {
                                RpcReply::ReadIndex(result) => Some(result),
                                _ => None,
                            }
                        })
                        .await
                    }
                    None => Forwarded::NotDelivered,
                };
            match outcome {
                Forwarded::Done(index) => return Ok(index),
                Forwarded::NotLeader(leader) => {
                    hint = leader.filter(|l| Some(*l) != target);
                }
                // A read changes nothing: every failure may be retried until the deadline.
                Forwarded::Failed(ClusterError::ShuttingDown)
                    if target == Some(self.config.node_id) =>
                {
                    return Err(ClusterError::ShuttingDown)
                }
                Forwarded::Failed(_) | Forwarded::NotDelivered | Forwarded::Lost => {}
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader());
            }
            if hint.is_none() {
                self.pause(deadline).await;
            }
        }
    }

    /// The read index as this replica, the leader, confirms it.
    pub(super) async fn read_index_here(&self) -> Result<Index, LeaderError> {
        if !self.is_leader() {
            return Err(LeaderError::NotLeader {
                leader: self.leader_of(&self.metrics()),
            });
        }
        let confirmed =
            tokio::time::timeout(self.config.rpc_timeout, self.raft.ensure_linearizable()).await;
        match confirmed {
            Ok(Ok(read_log_id)) => Ok(read_log_id
                .map_or(0, |id| id.index)
                .max(self.reader.applied_index())),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(LeaderError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) | Err(_) => {
                Err(LeaderError::Failed {
                    error: self.no_leader(),
                })
            }
            Ok(Err(RaftError::Fatal(f))) => Err(LeaderError::Failed { error: fatal(f) }),
        }
    }
}
