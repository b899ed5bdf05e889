//! The replica's leadership watch and failure detector: one loop over openraft's
//! metrics. (The other background loops live with their concern: the peer prober in
//! `peers`, the automatic bootstrap in `membership`, the write batcher in `batcher`.)
//!
//! # Leadership
//! openraft 0.9 keeps an isolated leader in the `Leader` state until it hears of a
//! higher term. This replica counts itself leader only while a quorum acknowledged it
//! within the lease (`election_max`): past that, a new leader may exist, so the
//! leadership watch turns `false`, leader-only loops stop, and writes here stop waiting
//! for a commit that may not come: `NoLeader` for those not proposed yet, `OutcomeUnknown`
//! for those already in an entry (a new leader may still commit them).
//!
//! # Failure detector
//! A voter that has heard nothing from a leader (no AppendEntries, no vote granted) for
//! `election_max + slack + rank * stagger` calls an election itself, where `rank` orders
//! the voters (a successor a stopping leader named first, then by id, the silent leader
//! left out) so they do not split the vote. `election_max` is the least it can wait:
//! voters refuse votes while their lease runs. It only calls one when it can reach a
//! majority of the voters (its own pre-vote), so a partitioned minority does not keep
//! raising the term. openraft's own election timer stays on as a fallback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::raft::config::RaftClusterConfig;
use crate::raft::stats::Counters;
use crate::raft::transport::Contacts;
use crate::raft::types::{NodeId, Raft, RaftMetrics};

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

/// The replica as the leadership watch and the failure detector see it. `Node`
/// implements it; this file knows nothing else of the replica, so the replica can hold
/// the detector's memory without the two depending on each other.
pub(crate) trait Watched: Send + Sync {
    /// Its configuration: its id, the timings, whether the detector runs.
    fn config(&self) -> &RaftClusterConfig;
    /// openraft's metrics, as a watch of its own.
    fn metrics_watch(&self) -> watch::Receiver<RaftMetrics>;
    /// The openraft handle, to call an election on.
    fn raft(&self) -> &Raft;
    /// The detector's memory (replica RPC records contacts and votes in it too).
    fn detector(&self) -> &Mutex<Detector>;
    /// The leadership watch this loop keeps.
    fn leadership(&self) -> &watch::Sender<bool>;
    /// The replica's counters (leader changes and elections called are counted here).
    fn counters(&self) -> &Counters;
    /// What the peer prober last heard from each peer.
    fn contacts(&self) -> &Contacts;
    /// When the replica started: the detector's first "contact".
    fn started(&self) -> Instant;
    /// How often the loop looks when the metrics do not change.
    fn tick(&self) -> Duration;
    /// Whether the replica is stopping.
    fn is_closed(&self) -> bool;
    /// Whether the rejoin vote rule keeps the replica out of elections (see `rejoin`).
    fn is_rejoining(&self) -> bool;
    /// Ends the rejoin vote rule once `m` shows the replica caught up.
    fn check_rejoined(&self, m: &RaftMetrics);
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the leadership watch and leader-change count current and runs the detector.
pub(crate) async fn watch_metrics(node: Arc<dyn Watched>, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.metrics_watch();
    loop {
        let changed = tokio::select! {
            _ = stopped(&mut stop) => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            _ = tokio::time::sleep(node.tick()) => false,
        };
        let m = metrics.borrow_and_update().clone();
        let now = Instant::now();
        observe(&*node, &m, changed, now);
        node.check_rejoined(&m);
        detect(&*node, &m, now).await;
    }
}

/// Records what a metrics report tells, and recomputes leadership.
fn observe(node: &dyn Watched, m: &RaftMetrics, fresh_report: bool, now: Instant) {
    let lease = node.config().election_max;
    let mut d = node.detector().lock();
    if fresh_report {
        d.quorum_ack = m.millis_since_quorum_ack.map(|ms| (ms, now));
    }
    if let Some(leader) = m.current_leader {
        if d.last_leader != Some((m.current_term, leader)) {
            d.last_leader = Some((m.current_term, leader));
            node.counters()
                .leader_changes
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(term = m.current_term, leader, "new leader");
        }
    }
    let voters = m.membership_config.membership().voter_ids().count();
    let leading = !node.is_closed()
        && m.state == ServerState::Leader
        && (voters <= 1
            || d.quorum_ack.is_some_and(|(ms, at)| {
                Duration::from_millis(ms) + now.duration_since(at) <= lease
            }));
    drop(d);
    node.leadership().send_if_modified(|current| {
        if *current == leading {
            return false;
        }
        *current = leading;
        if !leading && m.state == ServerState::Leader {
            tracing::warn!("leader lost its quorum for longer than the lease; stepping aside");
        }
        true
    });
}

/// Calls an election when the leader has been silent for this replica's threshold.
async fn detect(node: &dyn Watched, m: &RaftMetrics, now: Instant) {
    let config = node.config();
    if !config.failure_detector || node.is_closed() || node.is_rejoining() {
        return;
    }
    if matches!(m.state, ServerState::Leader | ServerState::Shutdown) {
        return;
    }
    let me = config.node_id;
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    if !voters.contains(&me) {
        return;
    }
    let slack = (config.heartbeat / 5).max(Duration::from_millis(5));
    let stagger = (config.heartbeat / 2).max(Duration::from_millis(20));
    {
        let mut d = node.detector().lock();
        let activity = [
            d.last_leader_contact,
            d.last_vote_granted,
            d.last_trigger,
            Some(node.started()),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(node.started());
        let mut order: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|id| Some(*id) != m.current_leader)
            .collect();
        if let Some((successor, at)) = d.successor {
            if now.duration_since(at) <= config.election_max * 2 {
                if let Some(pos) = order.iter().position(|id| *id == successor) {
                    let id = order.remove(pos);
                    order.insert(0, id);
                }
            }
        }
        let rank = order.iter().position(|id| *id == me).unwrap_or(order.len()) as u32;
        let threshold = config.election_max + slack + stagger * rank;
        if now.duration_since(activity) < threshold {
            return;
        }
        let reachable = 1 + voters
            .iter()
            .filter(|id| **id != me && node.contacts().get(**id).probe_ok)
            .count();
        if reachable * 2 <= voters.len() {
            return;
        }
        d.last_trigger = Some(now);
    }
    node.counters()
        .elections_triggered
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        term = m.current_term,
        "leader silent past the lease; calling an election"
    );
    if let Err(err) = node.raft().trigger().elect().await {
        tracing::warn!(error = %err, "could not call an election");
    }
}
