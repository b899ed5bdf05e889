//! Node liveness: [`Liveness`] keeps the last heartbeat of each node in the leader's
//! memory (heartbeats are not writes), and the liveness loop declares a node down once
//! it has been silent for `node_ttl`, its work lost once it has been silent for
//! `lost_after`, and stops the work of a draining node at its drain deadline
//! (`NodeEvict`).
//!
//! Down is not lost. A node silent for the TTL gets no new work (`NodeDown`), but the
//! attempts it runs stay its own: the silence may be the control plane's own (every
//! replica restarting, a rolling upgrade), and its agent keeps running them until just
//! before `lost_after`. Only then are they declared lost (`NodeLost`) and retried
//! elsewhere; never while the agent may still run them, so a job never runs beside its
//! retry, and it is charged once, for the attempt that reports. With `lost_after` no
//! longer than the TTL a silent node is declared lost at once, as before.
//!
//! Grace: a node is judged from the later of its last heartbeat here and the moment this
//! leader's loop first saw it (ready, draining, or down with work). So a new leader
//! (which has heard no heartbeat yet) gives every node one TTL, and every down node's
//! work one `lost_after`, from when it took over; the count runs only while there is a
//! leader. A node that just registered gets one TTL to send its first heartbeat.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tanvrit_api::{Millis, NodeId, NodeState};
use tanvrit_state::{Command, Effect, State};
use tokio::time::Instant;

use super::{LeaderContext, ProposeError};
use crate::app::now_ms;

/// The reason recorded on attempts stopped at a drain deadline.
pub const DRAIN_DEADLINE_REASON: &str = "drain deadline";
/// Nodes are checked at least this often, so newly registered ones start their grace
/// soon after they appear.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Checks are at least this far apart, however many nodes expire together.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// The last heartbeat heard from each node, on this replica. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    last_seen: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Liveness {
    /// A new, empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a heartbeat from `node` now.
    pub fn record(&self, node: &NodeId) {
        self.last_seen.lock().insert(node.clone(), Instant::now());
    }

    /// When `node` last heartbeated here, if it did.
    pub fn last_seen(&self, node: &NodeId) -> Option<Instant> {
        self.last_seen.lock().get(node).copied()
    }

    /// Forgets every node `keep` refuses (nodes that are down or deleted).
    fn retain(&self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.last_seen.lock().retain(|node, _| keep(node));
    }
}

/// What one liveness check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Check {
    /// Nodes silent for longer than the TTL.
    pub lost: Vec<NodeId>,
    /// When the next node expires if nothing is heard from it.
    pub next_expiry: Option<Instant>,
}

/// Judges the `watched` nodes at `now` against `limit`. `since` holds when this loop
/// first saw each node; nodes not in it yet start now (see [`forget_unwatched`]).
pub(crate) fn check(
    watched: &[NodeId],
    liveness: &Liveness,
    since: &mut HashMap<NodeId, Instant>,
    now: Instant,
    limit: Duration,
) -> Check {
    let mut result = Check::default();
    for node in watched {
        let first_seen = *since.entry(node.clone()).or_insert(now);
        let heard = liveness
            .last_seen(node)
            .map_or(first_seen, |t| t.max(first_seen));
        let expiry = heard + limit;
        if now > expiry {
            result.lost.push(node.clone());
        } else {
            result.next_expiry = Some(result.next_expiry.map_or(expiry, |e| e.min(expiry)));
        }
    }
    result
}

/// Drops from `since` and `liveness` the nodes no longer watched (down without work,
/// deleted): one that comes back starts its grace over.
fn forget_unwatched(
    watched: &HashSet<&NodeId>,
    liveness: &Liveness,
    since: &mut HashMap<NodeId, Instant>,
) {
    since.retain(|node, _| watched.contains(node));
    liveness.retain(|node| watched.contains(node));
}

/// Draining nodes past their deadline that still have active attempts.
pub(crate) fn overdue_drains(state: &State, now: Millis) -> Vec<NodeId> {
    state
        .nodes()
        .filter(|node| node.state == NodeState::Draining)
        .filter(|node| node.drain_deadline.is_some_and(|deadline| deadline <= now))
        .filter(|node| state.node_view(node).active_attempts > 0)
        .map(|node| node.id.clone())
        .collect()
}

/// The earliest drain deadline of a draining node still ahead of `now`.
fn next_drain_deadline(state: &State, now: Millis) -> Option<Millis> {
    state
        .nodes()
        .filter(|node| node.state == NodeState::Draining)
        .filter_map(|node| node.drain_deadline)
        .filter(|deadline| *deadline > now)
        .min()
}

/// The liveness loop; returns only when the replica shuts down.
pub(crate) async fn run(context: &LeaderContext) {
    let ttl = context.config.node_ttl;
    let lost_after = context.config.lost_after();
    // With a `lost_after` past the TTL, silence first takes the node down, keeping work.
    let keep_work = lost_after > ttl;
    let mut since = HashMap::new();
    loop {
        let now = Instant::now();
        let wall = now_ms();
        let (live, holding, overdue, next_deadline) = context.reader().read(|state| {
            let live: Vec<NodeId> = state
                .nodes()
                .filter(|node| matches!(node.state, NodeState::Ready | NodeState::Draining))
                .map(|node| node.id.clone())
                .collect();
            let holding: Vec<NodeId> = state
                .nodes()
                .filter(|node| node.state == NodeState::Down)
                .filter(|node| state.node_view(node).active_attempts > 0)
                .map(|node| node.id.clone())
                .collect();
            (
                live,
                holding,
                overdue_drains(state, wall),
                next_drain_deadline(state, wall),
            )
        });
        let watched: HashSet<&NodeId> = live.iter().chain(&holding).collect();
        forget_unwatched(&watched, &context.liveness, &mut since);
        let silent = check(&live, &context.liveness, &mut since, now, ttl);
        let abandoned = check(&holding, &context.liveness, &mut since, now, lost_after);
        let mut failed = false;
        // (node, whether its work is lost): past the TTL a node goes down, keeping its
        // work when `lost_after` is longer; a down node holding work loses it after that.
        let declarations = (silent.lost.into_iter().map(|node| (node, !keep_work)))
            .chain(abandoned.lost.into_iter().map(|node| (node, true)));
        for (node, lost) in declarations {
            let at = now_ms();
            let command = if lost {
                tracing::warn!(node = %node, lost_after_ms = lost_after.as_millis() as u64, "node silent past lost_after; declaring it down and its work lost");
                Command::NodeLost {
                    node: node.clone(),
                    at,
                }
            } else {
                tracing::warn!(node = %node, ttl_ms = ttl.as_millis() as u64, "node missed its heartbeats; declaring it down (its running work stays its own until lost_after)");
                Command::NodeDown {
                    node: node.clone(),
                    at,
                }
            };
            match context.propose(command).await {
                Ok((Ok(Effect::Node { .. }), _)) => {
                    if lost {
                        context.metrics.nodes_lost.inc();
                    }
                }
                Ok((outcome, _)) => {
                    tracing::debug!(node = %node, ?outcome, "declaring a node down changed nothing")
                }
                Err(ProposeError::ShuttingDown) => return,
                Err(ProposeError::Failed) => failed = true,
            }
        }
        for node in overdue {
            tracing::info!(node = %node, "drain deadline passed; stopping the node's work");
            let command = Command::NodeEvict {
                node: node.clone(),
                reason: DRAIN_DEADLINE_REASON.into(),
                at: now_ms(),
            };
            match context.propose(command).await {
                Ok((Ok(Effect::Node { .. }), _)) => {
                    context.metrics.node_evictions.inc();
                }
                Ok((outcome, _)) => {
                    tracing::debug!(node = %node, ?outcome, "eviction at the drain deadline refused")
                }
                Err(ProposeError::ShuttingDown) => return,
                Err(ProposeError::Failed) => failed = true,
            }
        }
        let mut wake = now + MAX_CHECK_INTERVAL;
        for expiry in [silent.next_expiry, abandoned.next_expiry]
            .into_iter()
            .flatten()
        {
            // Just past the expiry: a node is lost once it is *more* than its limit silent.
            wake = wake.min(expiry + Duration::from_millis(1));
        }
        if let Some(deadline) = next_deadline {
            let until = Duration::from_millis(u64::try_from(deadline - wall).unwrap_or(0));
            wake = wake.min(now + until);
        }
        if failed {
            wake = wake.max(now + context.config.retry_after);
        }
        tokio::time::sleep_until(wake.max(now + MIN_CHECK_INTERVAL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{JobId, JobSpec, Rates, Resources};
    use tanvrit_state::Placement;

    const TTL: Duration = Duration::from_millis(300);

    fn nodes(ids: &[&str]) -> Vec<NodeId> {
        ids.iter().map(|id| NodeId::from(*id)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_is_lost_only_after_a_whole_ttl_without_a_heartbeat() {
        let liveness = Liveness::new();
        let mut since = HashMap::new();
        let start = Instant::now();
        let watched = nodes(&["node-a", "node-b"]);
        liveness.record(&NodeId::from("node-a"));
        let first = check(&watched, &liveness, &mut since, start, TTL);
        assert!(first.lost.is_empty());
        assert_eq!(first.next_expiry, Some(start + TTL));

        tokio::time::advance(Duration::from_millis(200)).await;
        liveness.record(&NodeId::from("node-b"));
        let at_ttl = check(&watched, &liveness, &mut since, start + TTL, TTL);
        assert!(
            at_ttl.lost.is_empty(),
            "exactly one TTL is not yet too long"
        );

        let later = start + TTL + Duration::from_millis(1);
        let found = check(&watched, &liveness, &mut since, later, TTL);
        assert_eq!(found.lost, nodes(&["node-a"]));
        assert_eq!(
            found.next_expiry,
            Some(start + Duration::from_millis(200) + TTL),
            "node-b heartbeated later"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_grants_every_node_one_ttl_from_when_it_first_saw_it() {
        let liveness = Liveness::new();
        // A heartbeat heard long ago (a previous term) does not shorten the grace.
        liveness.record(&NodeId::from("node-a"));
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut since = HashMap::new();
        let took_over = Instant::now();
        let watched = nodes(&["node-a"]);
        assert!(check(&watched, &liveness, &mut since, took_over, TTL)
            .lost
            .is_empty());
        let within = took_over + TTL - Duration::from_millis(1);
        assert!(check(&watched, &liveness, &mut since, within, TTL)
            .lost
            .is_empty());
        let past = took_over + TTL + Duration::from_millis(1);
        assert_eq!(
            check(&watched, &liveness, &mut since, past, TTL).lost,
            watched
        );
        // A node that appears later (registered) starts its own grace then.
        let both = nodes(&["node-a", "node-b"]);
        let found = check(&both, &liveness, &mut since, past, TTL);
        assert_eq!(found.lost, nodes(&["node-a"]));
        assert_eq!(found.next_expiry, Some(past + TTL));
        // A node no longer watched (down) is forgotten; when it comes back it starts over.
        forget_unwatched(&HashSet::new(), &liveness, &mut since);
        assert!(since.is_empty());
        assert_eq!(liveness.last_seen(&NodeId::from("node-a")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_down_nodes_work_is_lost_only_after_lost_after_from_its_last_heartbeat() {
        let lost_after = Duration::from_secs(3);
        let liveness = Liveness::new();
        let mut since = HashMap::new();
        let start = Instant::now();
        let node = nodes(&["node-a"]);
        check(&node, &liveness, &mut since, start, TTL);
        liveness.record(&node[0]);
        tokio::time::advance(TTL * 2).await;
        let down_at = Instant::now();
        assert_eq!(check(&node, &liveness, &mut since, down_at, TTL).lost, node);
        // Down now, still holding work: the same heartbeat is judged against lost_after.
        let held = check(&node, &liveness, &mut since, down_at, lost_after);
        assert!(held.lost.is_empty());
        assert_eq!(held.next_expiry, Some(start + lost_after));
        let at = start + lost_after;
        assert!(check(&node, &liveness, &mut since, at, lost_after)
            .lost
            .is_empty());
        let past = at + Duration::from_millis(1);
        assert_eq!(
            check(&node, &liveness, &mut since, past, lost_after).lost,
            node
        );
    }

    fn apply(state: &mut State, command: Command) {
        let index = state.applied_index() + 1;
        state.apply(index, &command).expect("accepted");
    }

    #[test]
    fn only_draining_nodes_past_their_deadline_with_active_work_are_overdue() {
        let mut state = State::new();
        for id in ["node-a", "node-b", "node-c"] {
            apply(
                &mut state,
                Command::NodeRegister {
                    node: NodeId::from(id),
                    name: id.into(),
                    resources: Resources {
                        cpu_millis: 1000,
                        memory_mb: 1024,
                        gpus: 0,
                    },
                    labels: Default::default(),
                    drivers: Vec::new(),
                    at: 1,
                },
            );
        }
        for (n, node) in ["node-a", "node-b"].iter().enumerate() {
            let job = JobId(format!("job-{n}"));
            apply(
                &mut state,
                Command::JobSubmit {
                    job: job.clone(),
                    business: "acme".into(),
                    spec: JobSpec {
                        command: vec!["true".into()],
                        ..JobSpec::default()
                    },
                    idempotency_key: None,
                    rates: Rates::default(),
                    at: 2,
                },
            );
            apply(
                &mut state,
                Command::JobsAssign {
                    placements: vec![Placement {
                        job,
                        attempt: format!("att-{n}").into(),
                        node: NodeId::from(*node),
                    }],
                    at: 3,
                },
            );
        }
        for (node, deadline) in [("node-a", 100), ("node-b", 500), ("node-c", 100)] {
            apply(
                &mut state,
                Command::NodeDrain {
                    node: NodeId::from(node),
                    deadline: Some(deadline),
                    at: 4,
                },
            );
        }
        assert!(overdue_drains(&state, 99).is_empty());
        assert_eq!(
            overdue_drains(&state, 100),
            nodes(&["node-a"]),
            "node-c has no work"
        );
        assert_eq!(overdue_drains(&state, 500), nodes(&["node-a", "node-b"]));
        assert_eq!(next_drain_deadline(&state, 100), Some(500));
        assert_eq!(next_drain_deadline(&state, 500), None);
    }
}
