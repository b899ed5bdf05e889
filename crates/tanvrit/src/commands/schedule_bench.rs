//! `tanvrit bench schedules`: how late the leader fires due schedules when many are
//! active. Creates `--schedules` schedules of one business, each firing every `--every`
//! seconds with their offsets spread evenly over those seconds (so every second has its
//! share due), lets them fire for `--duration`, then reads every fired job and takes the
//! fire lag = the job's `created_at` (the time the leader chose for the fire) minus the
//! due time it was fired for (read back from its derived id). Both are the server's own
//! timestamps, so client polling adds nothing. The schedules are deleted at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use tanvrit_api::{
    BusinessId, CatchUpPolicy, Consistency, CreditEntryCreateRequest, EntryKind, JobListRequest,
    JobSpec, Millis, Resources, ScheduleCreateRequest, ScheduleId, ScheduleListRequest,
};
use tanvrit_client::Client;
use tanvrit_server::cron::{fire_due_at, CronSchedule};

use super::bench::percentile;

/// The figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleBenchReport {
    /// Active schedules.
    pub schedules: usize,
    /// Each fires every this many seconds.
    pub every_secs: u32,
    /// Seconds of firing measured.
    pub window_secs: f64,
    /// Due times in the window, over all schedules.
    pub due: u64,
    /// Of those, fired (a job exists for it).
    pub fired: u64,
    /// Fires per second in the window.
    pub fires_per_second: f64,
    /// Fire lag percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest lag.
    pub max_ms: f64,
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// The cron expression of schedule `n` of `count`, every `every` seconds: offsets spread
/// over the period (`every` divides 60, so each minute repeats the pattern).
fn expression(n: usize, count: usize, every: u32) -> String {
    let offset = (n * every as usize / count.max(1)) as u32 % every;
    if every == 60 {
        format!("{offset} * * * * *")
    } else {
        format!("{offset}/{every} * * * * *")
    }
}

/// Runs the benchmark against the cluster behind `client`.
pub async fn run(
    client: &Client,
    business: &str,
    count: usize,
    every: u32,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<ScheduleBenchReport> {
    anyhow::ensure!(
        every > 0 && 60 % every == 0,
        "--every must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)"
    );
    let business = BusinessId::from(business);
    client
        .create_credit_entry(CreditEntryCreateRequest {
            business: business.clone(),
            kind: EntryKind::TopUp,
            amount: 1_000_000_000_000,
            idempotency_key: None,
            note: Some("tanvrit bench schedules".into()),
        })
        .await?;
    // Create them all, `concurrency` at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let creators: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, business, next) = (client.clone(), business.clone(), next.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok::<_, anyhow::Error>(made);
                    }
                    let request = ScheduleCreateRequest {
                        business: Some(business.clone()),
                        name: Some(format!("bench {n}")),
                        cron: expression(n, count, every),
                        timezone: Some("UTC".into()),
                        template: JobSpec {
                            command: vec!["true".into()],
                            resources: Resources {
                                cpu_millis: 10,
                                memory_mb: 1,
                                gpus: 0,
                            },
                            ..JobSpec::default()
                        },
                        enabled: None,
                        overlap: None,
                        // A fire that is late is still fired: the lag shows it.
                        catch_up: Some(CatchUpPolicy::All(1000)),
                    };
                    let created = client.create_schedule(request).await?.schedule.schedule;
                    made.push((created.id, created.cron, created.created_at));
                }
            })
        })
        .collect();
    let mut schedules = Vec::new();
    for creator in creators {
        schedules.extend(creator.await??);
    }
    let last_created = schedules.iter().map(|s| s.2).max().unwrap_or(0);
    // Measure from the first whole second at which every schedule existed.
    let from = last_created.div_euclid(1000) * 1000 + 1000;
    let to = from + duration.as_millis() as Millis;
    let crons: BTreeMap<ScheduleId, CronSchedule> = schedules
        .iter()
        .map(|(id, cron, _)| Ok((id.clone(), CronSchedule::parse(cron, "UTC")?)))
        .collect::<anyhow::Result<_>>()?;
    // Every due time in [from, to], per schedule.
    let mut due = 0u64;
    let mut last_due: BTreeMap<&ScheduleId, Millis> = BTreeMap::new();
    for (id, cron) in &crons {
        let mut at = from - 1;
        while let Some(next) = cron.next_after(at).filter(|next| *next <= to) {
            due += 1;
            last_due.insert(id, next);
            at = next;
        }
    }
    // Wait for the window to pass and its last fires to be handled (bounded).
    let wait = u64::try_from(to - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = client
            .list_schedules(ScheduleListRequest {
                consistency: Consistency::Strict,
                business: Some(business.clone()),
            })
            .await?;
        let behind = listed
            .schedules
            .iter()
            .filter(|s| {
                last_due.get(&s.schedule.id).is_some_and(|last| {
                    s.schedule
                        .last_fire_at
                        .is_none_or(|handled| handled < *last)
                })
            })
            .count();
        if behind == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every fired job of the business with a due time in the window.
    let mut lags = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list_jobs(JobListRequest {
                consistency: Consistency::Strict,
                business: Some(business.clone()),
                limit: Some(1000),
                after: after.clone(),
                ..JobListRequest::default()
            })
            .await?;
        for job in &page.jobs {
            let Some(schedule) = &job.schedule else {
                continue;
            };
            if !crons.contains_key(schedule) {
                continue;
            }
            let due_at = fire_due_at(&job.id).context("a fired job's id names its due time")?;
            if (from..=to).contains(&due_at) {
                lags.push(Duration::from_millis(
                    job.created_at.saturating_sub(due_at).max(0) as u64,
                ));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    // Leave nothing firing behind.
    let ids: Vec<ScheduleId> = crons.keys().cloned().collect();
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let deleters: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(n) else {
                        return Ok::<_, anyhow::Error>(());
                    };
                    client.delete_schedule(id).await?;
                }
            })
        })
        .collect();
    for deleter in deleters {
        deleter.await??;
    }
    lags.sort();
    let window_secs = (to - from) as f64 / 1000.0;
    Ok(ScheduleBenchReport {
        schedules: count,
        every_secs: every,
        window_secs,
        due,
        fired: lags.len() as u64,
        fires_per_second: lags.len() as f64 / window_secs.max(0.001),
        p50_ms: percentile(&lags, 50.0),
        p99_ms: percentile(&lags, 99.0),
        max_ms: lags.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_the_schedules_over_the_period() {
        let offsets: Vec<String> = (0..20).map(|n| expression(n, 20, 10)).collect();
        assert_eq!(offsets[0], "0/10 * * * * *");
        assert_eq!(offsets[1], "0/10 * * * * *");
        assert_eq!(offsets[2], "1/10 * * * * *");
        assert_eq!(offsets[19], "9/10 * * * * *");
        assert_eq!(expression(59, 60, 60), "59 * * * * *");
        for every in [1, 5, 10, 30, 60] {
            for n in 0..100 {
                let cron = expression(n, 100, every);
                assert!(CronSchedule::parse(&cron, "UTC").is_ok(), "{cron}");
            }
        }
    }
}
