//! Leadership hand-off: a leader that stops on purpose waits (bounded by the lease) for
//! the most caught-up voter to hold its whole log, then names it successor to every voter.
//!
//! Why: the failure detector ranks a named successor first, so the election after a
//! planned stop spares the rank stagger, and the replica standing first can win it.

use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::raft::node::Node;
use crate::raft::rpc::{HandOff, Rpc};
use crate::raft::types::NodeId;

impl Node {
    /// As leader, waits (bounded by the lease) for the most caught-up voter to hold the
    /// whole log; returns it, to be named successor once Raft is stopped.
    pub async fn pick_successor(&self) -> Option<NodeId> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return None;
        }
        let others: Vec<NodeId> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.config.node_id)
            .collect();
        if others.is_empty() {
            return None;
        }
        let target = m.last_log_index.unwrap_or(0);
        let deadline = Instant::now() + self.config.election_max;
        loop {
            let m = self.metrics();
            let best = others
                .iter()
                .map(|id| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map_or(0, |log_id| log_id.index);
                    (matched, std::cmp::Reverse(*id))
                })
                .max();
            if let Some((matched, std::cmp::Reverse(id))) = best {
                if matched >= target || Instant::now() >= deadline {
                    return Some(id);
                }
            }
            self.pause(deadline).await;
        }
    }

    /// Tells every other voter who should stand first.
    pub async fn announce_successor(&self, successor: NodeId, voters: Vec<NodeId>, term: u64) {
        let calls = voters
            .into_iter()
            .filter(|id| *id != self.config.node_id)
            .filter_map(|id| self.node_of(id).map(|n| (id, n.raft_addr)))
            .map(|(id, addr)| {
                let rpc = Rpc::HandOff(HandOff {
                    leader: self.config.node_id,
                    term,
                    successor,
                });
                let timeout = self.config.heartbeat.max(Duration::from_millis(100));
                async move {
                    let _ = self
                        .transport
                        .call(self.config.node_id, id, &addr, rpc, timeout)
                        .await;
                }
            });
        futures::future::join_all(calls).await;
    }

    /// A stopping leader named `hand_off.successor`: the failure detector ranks it
    /// first for a while (see `monitor`).
    pub(super) fn successor_named(&self, hand_off: HandOff) {
        tracing::info!(
            leader = hand_off.leader,
            successor = hand_off.successor,
            "the leader is stopping and named a successor"
        );
        self.detector.lock().successor = Some((hand_off.successor, Instant::now()));
    }
}
