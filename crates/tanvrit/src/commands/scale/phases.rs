//! The two phases of `bench scale` after the load: a restart of every replica (kill -9,
//! start again, time to the first read and the first write), and an empty replica
//! added as a learner (time until its applied index reaches the leader's log, its peak
//! RSS meanwhile). Both are bounded and give up with what they saw.

use std::time::{Duration, Instant};

use tanvrit_api::{Consistency, JobId, MembershipResponse, ReplicaAddRequest};

use super::probe::SNAPSHOT_INSTALLED;
use super::replicas::{client, Replicas, BUSINESS};
use super::report::{LearnerReport, RestartReport};
use crate::commands::bench::bench_job;

/// Longest wait for a restarted replica set to serve.
const RESTART_WITHIN: Duration = Duration::from_secs(120);
/// Longest wait for the learner to catch up.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(900);
/// How often the probes ask.
const POLL: Duration = Duration::from_millis(20);

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Kills every replica, starts them again, and times the first read of `job` (any
/// replica, stale) and the first acknowledged write (a submit; no retries, each try
/// bounded by a second).
pub async fn restart(replicas: &mut Replicas, job: Option<JobId>) -> anyhow::Result<RestartReport> {
    replicas.kill_all().await;
    let started = Instant::now();
    replicas.spawn_voters()?;
    let urls = replicas.voter_urls();
    let writer = client(&urls, Duration::from_secs(1))?;
    let readers = urls
        .iter()
        .map(|u| client(std::slice::from_ref(u), Duration::from_secs(1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first_read = async {
        let job = job?;
        while started.elapsed() < RESTART_WITHIN {
            for reader in &readers {
                if reader.get_job(&job, Consistency::Stale).await.is_ok() {
                    return Some(millis(started.elapsed()));
                }
            }
            tokio::time::sleep(POLL).await;
        }
        None
    };
    let first_write = async {
        let mut n = 0;
        while started.elapsed() < RESTART_WITHIN {
            n += 1;
            let job = bench_job(BUSINESS, usize::MAX, n);
            if writer.submit_job(job).await.is_ok() {
                return Some(millis(started.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
        None
    };
    let (first_read_ms, first_write_ms) = tokio::join!(first_read, first_write);
    Ok(RestartReport {
        first_read_ms,
        first_write_ms,
    })
}

/// Starts an empty replica `r<voters+1>`, adds it through the leader's membership API,
/// and follows it until its applied index reaches the leader's last log index at the
/// time of the call, sampling its RSS every 100 ms.
pub async fn add_learner(replicas: &mut Replicas) -> anyhow::Result<LearnerReport> {
    let deadline = Instant::now() + RESTART_WITHIN;
    let (leader_url, target_index) = loop {
        if let Some(leader) = replicas.leader().await {
            if let Some(last) = leader.metric("tanvrit_raft_last_log_index").await {
                break (leader.member.url.clone(), last as u64);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader to add a learner to");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = replicas.voter_urls().len() as u64 + 1;
    let name = format!("r{id}");
    let (at, raft_addr) = replicas.spawn_empty(&name, id).await?;
    // It must answer before the leader is told of it (its start is not catch-up time).
    while replicas.all[at]
        .metric("tanvrit_raft_applied_index")
        .await
        .is_none()
    {
        anyhow::ensure!(Instant::now() < deadline, "the empty replica did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api_addr = replicas.all[at]
        .member
        .url
        .trim_start_matches("http://")
        .to_string();
    let admin = client(&[leader_url], CATCH_UP_WITHIN)?;
    let started = Instant::now();
    let mut call = tokio::spawn(async move {
        let request = ReplicaAddRequest {
            id,
            name,
            raft_addr,
            api_addr,
            region: String::new(),
        };
        let answer: Result<MembershipResponse, _> = crate::commands::cluster::membership_call(
            &admin,
            None,
            "/api/compute/cluster/replicas/add",
            &request,
        )
        .await;
        (
            started.elapsed(),
            answer.map(|_| ()).map_err(|e| e.to_string()),
        )
    });
    let learner = &replicas.all[at];
    let mut report = LearnerReport {
        target_index,
        ..LearnerReport::default()
    };
    let mut peak_kib = 0u64;
    let mut call_result = None;
    while started.elapsed() < CATCH_UP_WITHIN {
        if let Some(memory) = learner.memory() {
            peak_kib = peak_kib.max(memory.rss_kib).max(memory.hwm_kib);
        }
        let applied = learner.metric("tanvrit_raft_applied_index").await;
        if applied.is_some_and(|a| a as u64 >= target_index) {
            report.caught_up_ms = Some(millis(started.elapsed()));
            break;
        }
        if call_result.is_none() && call.is_finished() {
            call_result = (&mut call).await.ok();
        }
        // A refused add leaves nothing to follow; one that timed out on the leader's
        // catch-up wait leaves a learner that still catches up.
        if matches!(call_result, Some((_, Err(_)))) && applied.unwrap_or(0.0) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(memory) = learner.memory() {
        peak_kib = peak_kib.max(memory.hwm_kib);
    }
    report.peak_rss_mib = (peak_kib > 0).then(|| peak_kib as f64 / 1024.0);
    if call_result.is_none() {
        // The promotion after catch-up is a single membership entry; wait a little.
        call_result = tokio::time::timeout(Duration::from_secs(60), &mut call)
            .await
            .ok()
            .and_then(Result::ok);
        call.abort();
    }
    match call_result {
        Some((took, outcome)) => {
            report.add_call_ms = Some(millis(took));
            report.add_outcome = outcome.map_or_else(|e| e, |()| "ok".into());
        }
        None => report.add_outcome = "no answer".into(),
    }
    report.installs = learner
        .logged(SNAPSHOT_INSTALLED)
        .into_iter()
        .map(|s| (s.ms, s.bytes as f64 / (1024.0 * 1024.0)))
        .collect();
    Ok(report)
}
