//! Placement planning: a pure function from the state and "now" to the placements the
//! leader proposes in one `JobsAssign` command. The leader's loop owns the clock and ids.

use std::collections::{BTreeMap, HashMap, HashSet};

use tanvrit_api::{BusinessId, JobId, MicroCredits, Millis, Node, NodeId, NodeState, Resources};

use crate::{billing, labels_match, State};

/// How to choose among nodes that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fill the fullest node that fits (fewer, busier nodes; frees whole nodes).
    #[default]
    BinPack,
    /// Use the emptiest node that fits (spreads load and blast radius).
    Spread,
}

/// One planned placement (the leader adds an attempt id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The pending job.
    pub job: JobId,
    /// Where it goes.
    pub node: NodeId,
}

/// Why pending jobs were left in the queue this round (for visibility and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanReport {
    /// Jobs still backing off after a failure.
    pub backing_off: u32,
    /// Jobs whose business cannot renew the hold.
    pub waiting_for_credits: u32,
    /// Jobs no ready node can take now.
    pub no_capacity: u32,
    /// The earliest time a backing-off job becomes placeable.
    pub next_wake: Option<Millis>,
}

fn free_of(capacity: &Resources, allocated: &Resources) -> Resources {
    Resources {
        cpu_millis: capacity.cpu_millis.saturating_sub(allocated.cpu_millis),
        memory_mb: capacity.memory_mb.saturating_sub(allocated.memory_mb),
        gpus: capacity.gpus.saturating_sub(allocated.gpus),
    }
}

/// A comparable measure of how much is left on a node: weighted so no dimension dominates.
fn slack(free: &Resources, capacity: &Resources) -> u128 {
    let part = |f: u64, c: u64| {
        if c == 0 {
            0
        } else {
            (f as u128 * 1_000_000) / c as u128
        }
    };
    part(free.cpu_millis, capacity.cpu_millis)
        + part(free.memory_mb, capacity.memory_mb)
        + part(free.gpus as u64, capacity.gpus as u64)
}

/// Plans up to `max` placements of pending jobs, in priority-then-age order.
pub fn plan(
    state: &State,
    now: Millis,
    strategy: Strategy,
    max: usize,
) -> (Vec<Planned>, PlanReport) {
    let mut report = PlanReport::default();
    let mut nodes: Vec<(NodeId, Resources, Resources, &Node)> = state
        .nodes()
        .filter(|n| n.state == NodeState::Ready)
        .map(|n| {
            let free = free_of(&n.resources, &state.node_allocated(&n.id));
            (n.id.clone(), n.resources, free, n)
        })
        .collect();
    // Keyed by reference: a long queue is scanned every round, and cloning each job's
    // business id to look it up showed in profiles.
    let mut available: HashMap<&BusinessId, MicroCredits> = HashMap::new();
    // Shapes (resources + labels) that found no node this round: identical jobs behind
    // them cannot fit either, which keeps a saturated queue cheap to scan.
    let mut full_shapes: HashSet<(Resources, &BTreeMap<String, String>, bool)> = HashSet::new();
    let mut planned = Vec::new();
    for job in state.pending_jobs() {
        if planned.len() >= max {
            break;
        }
        if let Some(not_before) = job.not_before.filter(|t| *t > now) {
            report.backing_off += 1;
            report.next_wake = Some(report.next_wake.map_or(not_before, |w| w.min(not_before)));
            continue;
        }
        let needed = billing::hold_for(&job.spec.resources, &job.rates, job.spec.timeout_secs);
        let top_up = (needed - job.held).max(0);
        let balance = available
            .entry(&job.business)
            .or_insert_with(|| state.account(&job.business).map_or(0, |a| a.available));
        if top_up > *balance {
            report.waiting_for_credits += 1;
            continue;
        }
        let shape = (
            job.spec.resources,
            &job.spec.labels,
            job.spec.image.is_some(),
        );
        if full_shapes.contains(&shape) {
            report.no_capacity += 1;
            continue;
        }
        let candidates = nodes.iter_mut().filter(|(_, _, free, node)| {
            free.fits(&job.spec.resources)
                && labels_match(&job.spec.labels, &node.labels)
                && node.runs(&job.spec)
        });
        // Judge each node by what it would have left after taking the job.
        let left =
            |cap: &Resources, free: &Resources| slack(&free_of(free, &job.spec.resources), cap);
        let chosen = match strategy {
            Strategy::BinPack => {
                candidates.min_by_key(|(id, cap, free, _)| (left(cap, free), (*id).clone()))
            }
            Strategy::Spread => candidates.max_by_key(|(id, cap, free, _)| {
                (left(cap, free), std::cmp::Reverse((*id).clone()))
            }),
        };
        let Some((node, _, free, _)) = chosen else {
            full_shapes.insert(shape);
            report.no_capacity += 1;
            continue;
        };
        free.cpu_millis -= job.spec.resources.cpu_millis;
        free.memory_mb -= job.spec.resources.memory_mb;
        free.gpus -= job.spec.resources.gpus;
        *balance -= top_up;
        planned.push(Planned {
            job: job.id.clone(),
            node: node.clone(),
        });
    }
    (planned, report)
}
