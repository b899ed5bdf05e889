//! The replica's background loops: the leadership watch and failure detector, the peer
//! prober, and the automatic bootstrap.
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
use tokio::sync::watch;

use crate::raft::node::Node;
use crate::raft::rpc::{Rpc, RpcReply};
use crate::raft::types::{NodeId, RaftMetrics};

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the leadership watch and leader-change count current and runs the detector.
pub(crate) async fn watch_metrics(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.metrics.clone();
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
        observe(&node, &m, changed, now);
        node.check_rejoined(&m);
        detect(&node, &m, now).await;
    }
}

/// Records what a metrics report tells, and recomputes leadership.
fn observe(node: &Node, m: &RaftMetrics, fresh_report: bool, now: Instant) {
    let lease = node.config.election_max;
    let mut d = node.detector.lock();
    if fresh_report {
        d.quorum_ack = m.millis_since_quorum_ack.map(|ms| (ms, now));
    }
    if let Some(leader) = m.current_leader {
        if d.last_leader != Some((m.current_term, leader)) {
            d.last_leader = Some((m.current_term, leader));
            node.counters.leader_changes.fetch_add(1, Ordering::Relaxed);
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
    node.leadership.send_if_modified(|current| {
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
async fn detect(node: &Node, m: &RaftMetrics, now: Instant) {
    let config = &node.config;
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
        let mut d = node.detector.lock();
        let activity = [
            d.last_leader_contact,
            d.last_vote_granted,
            d.last_trigger,
            Some(node.started),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(node.started);
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
            .filter(|id| **id != me && node.contacts.get(**id).probe_ok)
            .count();
        if reachable * 2 <= voters.len() {
            return;
        }
        d.last_trigger = Some(now);
    }
    node.counters
        .elections_triggered
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        term = m.current_term,
        "leader silent past the lease; calling an election"
    );
    if let Err(err) = node.raft.trigger().elect().await {
        tracing::warn!(error = %err, "could not call an election");
    }
}

/// Asks every known replica for its status, every probe interval.
pub(crate) async fn probe_peers(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let interval = node.probe_interval();
    let timeout = interval.min(node.config.rpc_timeout);
    loop {
        let me = node.config.node_id;
        let calls = node
            .known_replicas()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, replica)| {
                let node = node.clone();
                async move {
                    let reply = node
                        .transport
                        .call(me, id, &replica.raft_addr, Rpc::Status, timeout)
                        .await;
                    let status = match reply {
                        Ok(RpcReply::Status(status)) => Some(*status),
                        _ => None,
                    };
                    node.contacts.probed(id, status);
                }
            });
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = futures::future::join_all(calls) => {}
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(interval) => {}
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
