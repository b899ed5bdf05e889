//! `tanvrit bench ledger`: credit-ledger entries per second against a running server, at
//! several concurrencies, for two workloads:
//! - `top_up`: admin top-ups, one entry each;
//! - `submit_cancel`: a job submit (its credit hold) and its cancel while pending (the
//!   hold's release), two entries per cycle.
//!
//! The rate is read back from the ledger itself: each level writes to a business of its
//! own, and the entries' own timestamps (chosen by the server) give the window, so client
//! and network timing add nothing. The same read checks that the level's ledger is
//! exact: every hold released once, nothing left held.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tanvrit_api::{
    BusinessId, Consistency, CreditBalanceRequest, CreditEntriesRequest, CreditEntryCreateRequest,
    EntryKind, JobActionRequest, JobSpec, JobSubmitRequest, LedgerEntry, Millis, Resources,
};
use tanvrit_client::Client;

use super::bench::run_level;

/// What each request writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerWorkload {
    /// Admin top-ups: one entry per request.
    TopUp,
    /// Submit a job, then cancel it: a hold and its release per cycle.
    SubmitCancel,
}

impl LedgerWorkload {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            LedgerWorkload::TopUp => "top_up",
            LedgerWorkload::SubmitCancel => "submit_cancel",
        }
    }
}

/// One (workload, concurrency) level's figures.
#[derive(Clone, Debug, Serialize)]
pub struct LedgerLevelReport {
    /// The workload.
    pub workload: LedgerWorkload,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests (top-ups, or submit+cancel cycles) that succeeded in the measured window.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Ledger entries whose time falls in the measured window.
    pub entries: u64,
    /// Those entries per second of the window, by the entries' own timestamps.
    pub entries_per_second: f64,
    /// Request (or cycle) latency, 50th percentile, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Holds written in the whole level (warm-up included).
    pub holds: u64,
    /// Releases written in the whole level.
    pub releases: u64,
    /// Micro-credits still held when the level ended (0 when every hold was released).
    pub held_after: i64,
}

fn job(business: &str) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(business.into()),
        spec: JobSpec {
            name: Some("bench ledger".into()),
            command: vec!["true".into()],
            resources: Resources {
                cpu_millis: 100,
                memory_mb: 64,
                gpus: 0,
            },
            timeout_secs: 60,
            ..JobSpec::default()
        },
        idempotency_key: None,
    }
}

/// Every ledger entry of `business`, oldest first.
async fn ledger(client: &Client, business: &BusinessId) -> anyhow::Result<Vec<LedgerEntry>> {
    let mut entries: Vec<LedgerEntry> = Vec::new();
    loop {
        let page = client
            .credit_entries(CreditEntriesRequest {
                consistency: Consistency::Strict,
                business: Some(business.clone()),
                after_seq: entries.last().map(|e| e.seq),
                limit: Some(10_000),
                ..CreditEntriesRequest::default()
            })
            .await?;
        if page.entries.is_empty() {
            return Ok(entries);
        }
        entries.extend(page.entries);
    }
}

/// Runs one level against a fresh business and reads its ledger back.
async fn level(
    clients: Arc<Vec<Client>>,
    workload: LedgerWorkload,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LedgerLevelReport> {
    let business = BusinessId(format!(
        "bench-ledger-{}-{}-{concurrency}",
        std::process::id(),
        workload.name()
    ));
    let admin = clients[0].clone();
    if workload == LedgerWorkload::SubmitCancel {
        admin
            .create_credit_entry(CreditEntryCreateRequest {
                business: business.clone(),
                kind: EntryKind::TopUp,
                amount: 1_000_000_000_000,
                idempotency_key: None,
                note: Some("tanvrit bench ledger".into()),
            })
            .await?;
    }
    let name = business.to_string();
    let timing = run_level(concurrency, warmup, duration, move |worker, _| {
        let client = clients[worker % clients.len()].clone();
        let business = name.clone();
        async move {
            match workload {
                LedgerWorkload::TopUp => client
                    .create_credit_entry(CreditEntryCreateRequest {
                        business: business.into(),
                        kind: EntryKind::TopUp,
                        amount: 1_000,
                        idempotency_key: None,
                        note: None,
                    })
                    .await
                    .is_ok(),
                LedgerWorkload::SubmitCancel => match client.submit_job(job(&business)).await {
                    Ok(submitted) => client
                        .cancel_job(&submitted.job.id, JobActionRequest::default())
                        .await
                        .is_ok(),
                    Err(_) => false,
                },
            }
        }
    })
    .await;
    let entries = ledger(&admin, &business).await?;
    let balance = admin
        .credit_balance(CreditBalanceRequest {
            consistency: Consistency::Strict,
            business: Some(business.clone()),
        })
        .await?;
    let count = |kind| entries.iter().filter(|e| e.kind == kind).count() as u64;
    // The window: from the first entry plus the warm-up to the last entry, server time.
    let first = entries.first().map_or(0, |e| e.at);
    let last = entries.last().map_or(0, |e| e.at);
    let from = first + warmup.as_millis() as Millis;
    let measured = entries.iter().filter(|e| e.at >= from).count() as u64;
    let window_ms = (last - from).max(1);
    Ok(LedgerLevelReport {
        workload,
        concurrency,
        requests: timing.requests,
        errors: timing.errors,
        entries: measured,
        entries_per_second: measured as f64 * 1000.0 / window_ms as f64,
        p50_ms: timing.p50_ms,
        p99_ms: timing.p99_ms,
        holds: count(EntryKind::Hold),
        releases: count(EntryKind::Release),
        held_after: balance.held,
    })
}

/// Runs every (workload, level) in turn, workers spread over the client's endpoints.
pub async fn run(
    client: &Client,
    workloads: &[LedgerWorkload],
    concurrency: &[usize],
    warmup: Duration,
    duration: Duration,
    progress: impl Fn(&LedgerLevelReport),
) -> anyhow::Result<Vec<LedgerLevelReport>> {
    let clients: Arc<Vec<Client>> = Arc::new(client.per_endpoint()?);
    let mut reports = Vec::new();
    for &workload in workloads {
        for &level_concurrency in concurrency {
            let report = level(
                clients.clone(),
                workload,
                level_concurrency,
                warmup,
                duration,
            )
            .await?;
            progress(&report);
            reports.push(report);
        }
    }
    Ok(reports)
}
