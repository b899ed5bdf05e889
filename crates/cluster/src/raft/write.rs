//! Writes: [`Node::submit_write`] proposes a command here when this replica leads and
//! forwards it to the leader otherwise, trying again (bounded by `no_leader_timeout`)
//! while no leader is usable; as leader, [`Node::propose`] queues it for the batcher.
//!
//! Every failure tells whether the write may be in the log: `NoLeader` and
//! `ShuttingDown` say it certainly is not (repeating it is safe), `OutcomeUnknown` that
//! it may be (only a repeat under its idempotency key tells).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tanvrit_state::Command;
use tokio::sync::oneshot;

use crate::raft::batcher::{Claim, Proposal};
use crate::raft::forward::Forwarded;
use crate::raft::node::Node;
use crate::raft::rpc::{LeaderError, Rpc, RpcReply};
use crate::raft::types::NodeId;
use crate::{ClusterError, Receipt};

/// What a forwarded write's caller is told when the leader answered `Failed(error)`.
/// Replicas of this version answer a forwarded write with `NoLeader` or `ShuttingDown`
/// only as `NotLeader` (nothing proposed); an older replica answered them also after
/// proposing, so from a leader they mean the write may have entered its log.
fn from_leader(error: ClusterError, unknown: impl FnOnce() -> ClusterError) -> ClusterError {
    match error {
        ClusterError::NoLeader { .. } | ClusterError::ShuttingDown => unknown(),
        other => other,
    }
}

impl Node {
    /// Submits a write: proposed here when leader, forwarded to the leader otherwise.
    pub async fn submit_write(&self, command: Command) -> Result<Receipt, ClusterError> {
        let started = Instant::now();
        let result = self.write(command).await;
        match &result {
            Ok(_) => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                self.counters.proposal_latency.observe(started.elapsed());
            }
            Err(_) => {
                self.counters.writes_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn write(&self, command: Command) -> Result<Receipt, ClusterError> {
        let deadline = Instant::now() + self.config.no_leader_timeout;
        let mut hint: Option<NodeId> = None;
        let mut tries = 0;
        loop {
            if self.is_closed() {
                return Err(ClusterError::ShuttingDown);
            }
            let followed_hint = hint.is_some();
            let target = hint.take().or_else(|| self.usable_leader());
            match target {
                Some(id) if id == self.config.node_id => {
                    match self.propose(command.clone()).await {
                        Ok(receipt) => return Ok(receipt),
                        Err(LeaderError::NotLeader { leader }) => {
                            hint = leader.filter(|l| *l != self.config.node_id)
                        }
                        Err(LeaderError::Failed { error }) => return Err(error),
                    }
                }
                Some(id) => {
                    let timeout = self.config.write_timeout + self.config.rpc_timeout;
                    let rpc = Rpc::ForwardWrite(command.clone());
                    match self
                        .forward(id, rpc, timeout, |reply| match reply {
                            RpcReply::ForwardWrite(result) => Some(result),
                            _ => None,
                        })
                        .await
                    {
                        Forwarded::Done(receipt) => {
                            self.counters
                                .writes_forwarded
                                .fetch_add(1, Ordering::Relaxed);
                            // Read-your-writes on this replica too (bounded; the write
                            // succeeded whatever happens here).
                            let wait = self.config.min_index_wait.min(self.config.rpc_timeout);
                            let _ = self.reader.wait_applied(receipt.index, wait).await;
                            return Ok(receipt);
                        }
                        Forwarded::NotLeader(leader) => hint = leader.filter(|l| *l != id),
                        Forwarded::NotDelivered => {}
                        // It may have reached the leader and joined its log.
                        Forwarded::Lost => return Err(self.outcome_unknown()),
                        Forwarded::Failed(error) => {
                            return Err(from_leader(error, || self.outcome_unknown()))
                        }
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader());
            }
            // A fresh hint is followed at once, but only once in a row.
            if followed_hint || hint.is_none() {
                hint = None;
                self.back_off(deadline, tries, target).await;
                tries += 1;
            }
        }
    }

    /// Waits before the next try of a write: one tick, doubling with each failed try of
    /// this request, at most a quarter of the lease, never past `deadline`; and no longer
    /// than until a usable leader other than `failed` (the one just tried) shows up.
    ///
    /// Why not [`Node::pause`]: openraft publishes metrics at every turn of its loop, so
    /// "until the metrics change" is often at once; under a write flood to a dead
    /// leader, every queued write would then retry in a tight loop.
    async fn back_off(&self, deadline: Instant, tries: u32, failed: Option<NodeId>) {
        let step = self.tick().saturating_mul(1 << tries.min(10));
        let cap = (self.config.election_max / 4).max(self.tick());
        let until = (Instant::now() + step.min(cap)).min(deadline);
        let mut metrics = self.metrics.clone();
        let other_leader = async {
            while metrics.changed().await.is_ok() {
                if self.usable_leader().is_some_and(|l| Some(l) != failed) {
                    return;
                }
            }
            // The Raft core is gone: only the timer ends the wait.
            std::future::pending::<()>().await
        };
        let _ = tokio::time::timeout_at(until.into(), other_leader).await;
    }

    /// Proposes a command on this replica as leader; answers once it is applied here.
    /// The command joins the next log entry the batcher proposes (see `batcher`).
    ///
    /// Failures say whether the command may be in the log. `NotLeader` (and
    /// `ShuttingDown`): it certainly is not, because this replica did not lead, or gave
    /// up (leadership lost, write deadline passed) before the batcher handed it to
    /// openraft, which withdraws it. `OutcomeUnknown`: it was handed over and may still
    /// commit under a new leader; only a repeat under its idempotency key can tell.
    ///
    /// Cancellation: dropping this future before the batcher took the command leaves it
    /// out of every entry; after, it may still commit.
    pub async fn propose(&self, command: Command) -> Result<Receipt, LeaderError> {
        if !self.is_leader() {
            return Err(LeaderError::NotLeader {
                leader: self.leader_of(&self.metrics()),
            });
        }
        let started = Instant::now();
        let mut leadership = self.leadership.subscribe();
        let write_deadline = started + self.config.write_timeout;
        let (reply, answer) = oneshot::channel();
        let claim = Arc::new(Claim::default());
        let queued = async {
            self.proposals
                .send(Proposal {
                    command,
                    reply,
                    claim: claim.clone(),
                })
                .await
                .ok()?;
            answer.await.ok()
        };
        let result = tokio::select! {
            result = queued => result,
            _ = leadership.wait_for(|leader| !*leader) => return Err(self.give_up(&claim)),
            _ = tokio::time::sleep_until(write_deadline.into()) => {
                return Err(self.give_up(&claim));
            }
        };
        match result {
            Some(Ok(receipt)) => {
                self.counters.commit_latency.observe(started.elapsed());
                Ok(receipt)
            }
            Some(Err(error)) => Err(error),
            // The batcher stopped (the replica is shutting down) with the command in an
            // entry it had handed to openraft.
            None if claim.taken() => Err(LeaderError::Failed {
                error: self.outcome_unknown(),
            }),
            // The batcher stopped before taking it: nothing was proposed.
            None => Err(LeaderError::Failed {
                error: ClusterError::ShuttingDown,
            }),
        }
    }

    /// A proposal's caller stops waiting: withdrawn if the batcher has not handed it to
    /// openraft yet (then nothing was proposed), else its outcome is unknown.
    fn give_up(&self, claim: &Claim) -> LeaderError {
        if claim.withdraw() {
            LeaderError::NotLeader {
                leader: self.leader_of(&self.metrics()),
            }
        } else {
            LeaderError::Failed {
                error: self.outcome_unknown(),
            }
        }
    }

    /// Proposes a write a follower forwarded here. A refusal that proposed nothing is
    /// `NotLeader`, so the follower can tell it from a lost outcome (`from_leader`).
    pub(super) async fn forwarded_write(&self, command: Command) -> Result<Receipt, LeaderError> {
        if self.is_closed() {
            return Err(LeaderError::NotLeader { leader: None });
        }
        match self.propose(command).await {
            // Proposed nothing (see `propose`); a follower reads a leader's
            // `ShuttingDown` as outcome unknown (`from_leader`), so say so.
            Err(LeaderError::Failed {
                error: ClusterError::ShuttingDown,
            }) => Err(LeaderError::NotLeader { leader: None }),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_leaders_no_leader_or_shutting_down_answer_to_a_forwarded_write_is_unknown() {
        let unknown = || ClusterError::OutcomeUnknown {
            retry_after: Duration::from_secs(1),
            leader: None,
        };
        // What older replicas answered also after proposing.
        let old = ClusterError::NoLeader {
            retry_after: Duration::from_secs(1),
            leader: Some("replica-2".into()),
        };
        assert_eq!(from_leader(old, unknown), unknown());
        assert_eq!(from_leader(ClusterError::ShuttingDown, unknown), unknown());
        // Failures that already say what they are pass through.
        assert_eq!(from_leader(unknown(), unknown), unknown());
        let storage = ClusterError::Storage("disk".into());
        assert_eq!(from_leader(storage.clone(), unknown), storage);
    }
}
