//! The scheduler loop: plans placements with the pure `tanvrit_state::scheduler::plan`
//! and proposes them, many per `JobsAssign` entry.
//!
//! It wakes on new work, not on a fixed tick: any applied write (a job submitted, a node
//! registered, an attempt finished, credits topped up) may make a placement possible, so
//! it waits for the applied index to move, and plans at once; a timer covers the one
//! thing that changes without a write, a retry backoff running out. Nothing waits to
//! gather a batch: while one `JobsAssign` is being committed, the submissions that
//! arrive queue up, and the next round places them all in one entry, so entries grow
//! with the load and a lone job is placed one commit after its submission.

use std::time::{Duration, Instant};

use tanvrit_api::{AttemptId, NodeState};
use tanvrit_state::scheduler::{plan, PlanReport, Planned};
use tanvrit_state::{Command, Effect, Placement};

use super::{LeaderContext, ProposeError};
use crate::app::{new_id, now_ms};

/// With no backoff to wait for, the loop still plans this often. Nothing should change
/// without a write, so this is only a safety net.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// Rounds woken by writes are at least this many times as long apart as the last plan
/// took: planning scans the whole queue, and a long queue no node has room for (say, a
/// submission flood) would otherwise be re-planned after every write, taking CPU from
/// the writes themselves and holding the state's read lock (which the apply of those
/// writes waits for). This keeps planning under about a tenth of a core, however fast
/// jobs arrive.
const PLAN_SPACING_FACTOR: u32 = 10;
/// A spacing shorter than this is not worth a timer: the next round runs at once. A
/// short queue plans in microseconds, so a job submitted to an idle cluster waits for
/// no timer at all.
const MIN_SPACING: Duration = Duration::from_millis(1);

/// How long the loop pauses after a round woken by a write, given how long its plan took.
fn spacing(planning: Duration) -> Option<Duration> {
    let spacing = planning * PLAN_SPACING_FACTOR;
    (spacing >= MIN_SPACING).then_some(spacing)
}

/// Gives each planned placement a fresh attempt id.
fn placements(planned: Vec<Planned>) -> Vec<Placement> {
    planned
        .into_iter()
        .map(|planned| Placement {
            job: planned.job,
            attempt: AttemptId(new_id("att")),
            node: planned.node,
        })
        .collect()
}

/// The scheduler loop; returns only when the replica shuts down.
pub(crate) async fn run(context: &LeaderContext) {
    let strategy = context.config.scheduler_strategy;
    let max = context.config.max_placements_per_write.max(1);
    loop {
        // Taken before planning, so a write applied while planning wakes the next wait.
        let mut seen = context.reader().applied_index();
        let now = now_ms();
        let started = Instant::now();
        let (planned, report) = context.reader().read(|state| {
            // Only a ready node takes placements, and one becoming ready is a write that
            // wakes this loop: without one, scanning the queue (under the read lock the
            // apply of every write waits for) cannot place anything.
            if !state.nodes().any(|n| n.state == NodeState::Ready) {
                return (Vec::new(), PlanReport::default());
            }
            plan(state, now, strategy, max)
        });
        let planning = started.elapsed();
        context.metrics.scheduler_rounds.inc();
        if !planned.is_empty() {
            let command = Command::JobsAssign {
                placements: placements(planned),
                at: now,
            };
            match context.propose(command).await {
                Ok((Ok(Effect::Placements { placed, refused }), index)) => {
                    context.metrics.placements.inc_by(placed.len() as u64);
                    for (job, rejection) in &refused {
                        tracing::debug!(job = %job, %rejection, "placement refused");
                    }
                    if !placed.is_empty() {
                        // More may fit (the queue was longer than one entry): plan again.
                        continue;
                    }
                    // All refused: the state moved under the plan. Wait for the next
                    // change rather than planning the same thing again.
                    seen = index;
                }
                Ok((outcome, index)) => {
                    tracing::warn!(?outcome, "unexpected outcome of a JobsAssign");
                    seen = index;
                }
                Err(ProposeError::ShuttingDown) => return,
                Err(ProposeError::Failed) => {
                    tokio::time::sleep(context.config.retry_after).await;
                    continue;
                }
            }
        }
        let mut wait = IDLE_WAIT;
        if let Some(wake) = report.next_wake {
            let until = u64::try_from(wake - now_ms()).unwrap_or(0);
            wait = wait.min(Duration::from_millis(until));
        }
        context.reader().wait_past(seen, wait).await;
        if let Some(pause) = spacing(planning) {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_plan_is_followed_by_no_pause_and_a_slow_one_by_ten_times_its_length() {
        assert_eq!(spacing(Duration::ZERO), None);
        assert_eq!(spacing(Duration::from_micros(99)), None);
        assert_eq!(
            spacing(Duration::from_micros(100)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            spacing(Duration::from_millis(20)),
            Some(Duration::from_millis(200))
        );
    }
}
