//! The cron loop: fires each enabled schedule's due times, applying its catch-up policy
//! to due times missed while no leader was firing.
//!
//! Each due time handled is one fire (in a `SchedulesFire` entry with the other due
//! times of the same pass) whose job id derives from (schedule id, due time) alone
//! ([`crate::cron::fire_job_id`]); `apply` ignores a due time at or before the
//! schedule's `last_fire_at`. Together they make a tick fire exactly once, whichever
//! leader (or how many, across a failover) proposes it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tanvrit_api::{CatchUpPolicy, Millis, Schedule, ScheduleId};
use tanvrit_state::{Command, Effect, Fire};

use super::{LeaderContext, ProposeError};
use crate::app::now_ms;
use crate::cron::{fire_job_id, CronSchedule};

/// The loop looks at the schedules at least this often, so new and changed ones are
/// noticed soon.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Due times proposed in one `SchedulesFire` entry at most (each fire's job travels in
/// the entry's outcome, so this also bounds that).
const MAX_FIRES_PER_WRITE: usize = 500;
/// The skip reason of due times the catch-up policy passes over.
pub(crate) const MISSED: &str = "missed";

/// One due time to handle: fired, or recorded as skipped with a reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Due {
    /// The due time.
    pub due_at: Millis,
    /// Set when it is recorded as skipped instead of fired.
    pub skip_reason: Option<String>,
}

impl Due {
    fn fire(due_at: Millis) -> Self {
        Self {
            due_at,
            skip_reason: None,
        }
    }

    fn skip(due_at: Millis) -> Self {
        Self {
            due_at,
            skip_reason: Some(MISSED.into()),
        }
    }
}

/// The due times of `schedule` to handle at `now`, oldest first: those after its last
/// handled one (or its creation) and at or before `now`, filtered by its catch-up policy.
///
/// Due times passed over are recorded with one skip, at the newest of them: it moves
/// `last_fire_at` past all of them and counts once, however many there were (a schedule
/// every second that missed a day does not write 86,400 entries).
pub(crate) fn due_now(
    schedule: &Schedule,
    cron: &CronSchedule,
    now: Millis,
    skip_grace: Duration,
) -> Vec<Due> {
    let after = schedule.last_fire_at.unwrap_or(schedule.created_at);
    let due_after = |before: Millis| cron.previous_before(before).filter(|due| *due > after);
    let Some(latest) = due_after(now + 1) else {
        return Vec::new();
    };
    let grace = i64::try_from(skip_grace.as_millis()).unwrap_or(i64::MAX);
    let mut handled = Vec::new();
    match schedule.catch_up {
        CatchUpPolicy::Skip if now - latest > grace => handled.push(Due::skip(latest)),
        CatchUpPolicy::Skip | CatchUpPolicy::LatestOnly => {
            handled.extend(due_after(latest).map(Due::skip));
            handled.push(Due::fire(latest));
        }
        CatchUpPolicy::All(limit) => {
            // Walk back from the newest: `limit` fires at most, oldest first.
            let mut fires = vec![latest];
            while fires.len() < limit.max(1) as usize {
                match due_after(fires[fires.len() - 1]) {
                    Some(older) => fires.push(older),
                    None => break,
                }
            }
            handled.extend(due_after(fires[fires.len() - 1]).map(Due::skip));
            handled.extend(fires.into_iter().rev().map(Due::fire));
        }
    }
    handled
}

/// The cron loop; returns only when the replica shuts down.
///
/// Each pass plans the due times of every enabled schedule and proposes them together,
/// [`MAX_FIRES_PER_WRITE`] to a `SchedulesFire` entry: with many schedules due in the
/// same second, one Raft round trip (and one fsync) serves them all, where one entry per
/// due time made the last of them wait for all the others' round trips.
pub(crate) async fn run(context: &LeaderContext) {
    let grace = context.config.cron_skip_grace;
    // Parsed expressions by schedule, kept while its expression and zone stay the same:
    // parsing every schedule on every pass would cost more than planning them.
    let mut parsed: HashMap<ScheduleId, (String, String, CronSchedule)> = HashMap::new();
    // Schedules whose stored expression does not parse (cannot happen through the API,
    // which checks it) are reported once, not every second.
    let mut reported = HashSet::new();
    loop {
        let now = now_ms();
        let schedules: Vec<Schedule> = context
            .reader()
            .read(|state| state.schedules().filter(|s| s.enabled).cloned().collect());
        parsed.retain(|id, _| schedules.iter().any(|s| &s.id == id));
        let mut wake = now + MAX_SLEEP.as_millis() as Millis;
        let mut fires = Vec::new();
        for schedule in &schedules {
            let cron = match parsed.get(&schedule.id) {
                Some((cron, zone, parsed))
                    if *cron == schedule.cron && *zone == schedule.timezone =>
                {
                    parsed
                }
                _ => match CronSchedule::parse(&schedule.cron, &schedule.timezone) {
                    Ok(cron) => {
                        let entry = (schedule.cron.clone(), schedule.timezone.clone(), cron);
                        &parsed
                            .entry(schedule.id.clone())
                            .insert_entry(entry)
                            .into_mut()
                            .2
                    }
                    Err(error) => {
                        if reported.insert(schedule.id.clone()) {
                            tracing::error!(schedule = %schedule.id, %error, "schedule cannot be fired");
                        }
                        continue;
                    }
                },
            };
            fires.extend(
                due_now(schedule, cron, now, grace)
                    .into_iter()
                    .map(|due| Fire {
                        schedule: schedule.id.clone(),
                        job: fire_job_id(&schedule.id, due.due_at),
                        due_at: due.due_at,
                        skip_reason: due.skip_reason,
                    }),
            );
            if let Some(next) = cron.next_after(now) {
                wake = wake.min(next);
            }
        }
        // A schedule's due times stay in one chunk's order, oldest first, and chunks are
        // applied in order; a failed chunk is planned again on the next pass, at most a
        // second away (the fires already applied are then known duplicates).
        for chunk in fires.chunks(MAX_FIRES_PER_WRITE) {
            match fire(context, chunk.to_vec()).await {
                Ok(()) => {}
                Err(ProposeError::ShuttingDown) => return,
                Err(ProposeError::Failed) => break,
            }
        }
        let until = u64::try_from(wake - now_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(until)).await;
    }
}

/// Proposes one `SchedulesFire` and counts what it did.
async fn fire(context: &LeaderContext, fires: Vec<Fire>) -> Result<(), ProposeError> {
    let command = Command::SchedulesFire {
        fires: fires.clone(),
        rates: context.config.rates,
        template_defaults: Some(tanvrit_api::Resources::JOB_DEFAULT),
        at: now_ms(),
    };
    let (outcome, _) = context.propose(command).await?;
    let outcomes = match outcome {
        Ok(Effect::FiredMany { fires }) => fires,
        other => {
            tracing::warn!(?other, "unexpected outcome of a SchedulesFire");
            return Ok(());
        }
    };
    for (fire, outcome) in fires.iter().zip(outcomes) {
        match outcome {
            Ok(Effect::Fired {
                duplicate: true, ..
            }) => {}
            Ok(Effect::Fired { job, skipped, .. }) => {
                if let Some(job) = job {
                    context.metrics.schedule_fires.inc();
                    tracing::debug!(schedule = %fire.schedule, due_at = fire.due_at, job = %job.id, "schedule fired");
                }
                if let Some(reason) = skipped {
                    context.metrics.schedule_skips.inc();
                    tracing::debug!(schedule = %fire.schedule, due_at = fire.due_at, reason, "schedule due time skipped");
                }
            }
            Ok(other) => tracing::warn!(?other, "unexpected outcome of a fire"),
            // Deleted (or changed) since it was read: nothing to fire.
            Err(rejection) => {
                tracing::debug!(schedule = %fire.schedule, %rejection, "schedule fire refused")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{JobSpec, OverlapPolicy};

    // 2026-01-10T08:00:00Z
    const EIGHT: Millis = 1_768_032_000_000;
    const GRACE: Duration = Duration::from_secs(5);

    fn schedule(cron: &str, catch_up: CatchUpPolicy, last_fire_at: Option<Millis>) -> Schedule {
        Schedule {
            id: ScheduleId::from("sch-1"),
            business: "acme".into(),
            name: None,
            cron: cron.into(),
            timezone: "UTC".into(),
            template: JobSpec {
                command: vec!["true".into()],
                ..JobSpec::default()
            },
            enabled: true,
            overlap: OverlapPolicy::Allow,
            catch_up,
            created_at: EIGHT - 3_600_000,
            updated_at: EIGHT - 3_600_000,
            last_fire_at,
            last_job: None,
            fired: 0,
            skipped: 0,
            modify_index: 1,
        }
    }

    fn plan(cron: &str, catch_up: CatchUpPolicy, last: Option<Millis>, now: Millis) -> Vec<Due> {
        let s = schedule(cron, catch_up, last);
        due_now(&s, &CronSchedule::parse(cron, "UTC").unwrap(), now, GRACE)
    }

    const MINUTE: Millis = 60_000;

    #[test]
    fn a_due_time_on_schedule_fires_once_and_nothing_fires_before_it() {
        let every_minute = "* * * * *";
        for policy in [
            CatchUpPolicy::Skip,
            CatchUpPolicy::LatestOnly,
            CatchUpPolicy::All(5),
        ] {
            assert_eq!(
                plan(every_minute, policy, Some(EIGHT), EIGHT + 30_000),
                vec![],
                "{policy:?}"
            );
            assert_eq!(
                plan(every_minute, policy, Some(EIGHT), EIGHT + MINUTE + 20),
                vec![Due::fire(EIGHT + MINUTE)],
                "{policy:?}"
            );
            assert_eq!(
                plan(
                    every_minute,
                    policy,
                    Some(EIGHT + MINUTE),
                    EIGHT + MINUTE + 20
                ),
                vec![],
                "already handled: {policy:?}"
            );
        }
    }

    #[test]
    fn a_new_schedule_fires_nothing_from_before_it_was_created() {
        // Created at 07:00; the first due time is 07:01.
        assert_eq!(
            plan(
                "* * * * *",
                CatchUpPolicy::All(1000),
                None,
                EIGHT - 3_600_000 + 500
            ),
            vec![]
        );
        assert_eq!(
            plan(
                "* * * * *",
                CatchUpPolicy::All(1000),
                None,
                EIGHT - 3_600_000 + MINUTE
            ),
            vec![Due::fire(EIGHT - 3_600_000 + MINUTE)]
        );
    }

    #[test]
    fn skip_fires_a_missed_time_only_within_the_grace_and_records_the_rest_once() {
        let last = Some(EIGHT);
        let now = EIGHT + 10 * MINUTE + 2_000;
        assert_eq!(
            plan("* * * * *", CatchUpPolicy::Skip, last, now),
            vec![
                Due::skip(EIGHT + 9 * MINUTE),
                Due::fire(EIGHT + 10 * MINUTE)
            ],
            "the 10th minute is 2 s late: within the grace"
        );
        let late = EIGHT + 10 * MINUTE + 6_000;
        assert_eq!(
            plan("* * * * *", CatchUpPolicy::Skip, last, late),
            vec![Due::skip(EIGHT + 10 * MINUTE)]
        );
        assert_eq!(
            plan(
                "* * * * *",
                CatchUpPolicy::Skip,
                last,
                EIGHT + MINUTE + 6_000
            ),
            vec![Due::skip(EIGHT + MINUTE)],
            "a single missed time past the grace is skipped too"
        );
    }

    #[test]
    fn latest_only_fires_the_newest_missed_time_however_late() {
        let now = EIGHT + 10 * MINUTE + 30_000;
        assert_eq!(
            plan("* * * * *", CatchUpPolicy::LatestOnly, Some(EIGHT), now),
            vec![
                Due::skip(EIGHT + 9 * MINUTE),
                Due::fire(EIGHT + 10 * MINUTE)
            ]
        );
        assert_eq!(
            plan(
                "* * * * *",
                CatchUpPolicy::LatestOnly,
                Some(EIGHT),
                EIGHT + MINUTE + 30_000
            ),
            vec![Due::fire(EIGHT + MINUTE)]
        );
    }

    #[test]
    fn all_fires_up_to_n_missed_times_oldest_first_and_skips_older_ones_once() {
        let now = EIGHT + 10 * MINUTE + 30_000;
        assert_eq!(
            plan("* * * * *", CatchUpPolicy::All(3), Some(EIGHT), now),
            vec![
                Due::skip(EIGHT + 7 * MINUTE),
                Due::fire(EIGHT + 8 * MINUTE),
                Due::fire(EIGHT + 9 * MINUTE),
                Due::fire(EIGHT + 10 * MINUTE),
            ]
        );
        let fewer = EIGHT + 2 * MINUTE + 1;
        assert_eq!(
            plan("* * * * *", CatchUpPolicy::All(3), Some(EIGHT), fewer),
            vec![Due::fire(EIGHT + MINUTE), Due::fire(EIGHT + 2 * MINUTE)]
        );
    }

    #[test]
    fn a_year_of_missed_seconds_is_planned_without_walking_through_them() {
        let year = 365 * 24 * 3_600_000;
        let started = std::time::Instant::now();
        let handled = plan(
            "* * * * * *",
            CatchUpPolicy::Skip,
            Some(EIGHT),
            EIGHT + year,
        );
        assert_eq!(
            handled,
            vec![Due::skip(EIGHT + year - 1000), Due::fire(EIGHT + year)]
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
