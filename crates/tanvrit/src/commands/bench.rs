//! `tanvrit bench`: measurements, never assertions. `submit` drives a running server over
//! HTTP at several concurrencies; `etcd-put` drives etcd the same way (its HTTP/JSON
//! gateway), for a side-by-side; `failover` starts a 3-member cluster (tanvrit or etcd)
//! and times leader kills ([`super::failover`]); `placement` times the scheduler's
//! planning and apply on a synthetic queue in process; `ledger` counts ledger entries/s
//! ([`super::ledger_bench`]); `schedules` measures the fire lag of many active
//! schedules ([`super::schedule_bench`]); `scale` writes a million jobs into replicas it
//! starts and watches memory, disk, speed, snapshots, restart and a learner
//! ([`super::scale`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

use clap::{Args, Subcommand};
use serde::Serialize;
use tanvrit_api::*;
use tanvrit_client::Client;
use tanvrit_state::scheduler::{plan, Strategy};
use tanvrit_state::{Command, Placement, State};

use crate::output::{self, Output};

/// The concurrency levels a throughput benchmark runs, each for the same time.
#[derive(Debug, Args)]
pub struct Levels {
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// How long to measure each level.
    #[arg(long, default_value = "10s", value_parser = crate::parse::duration)]
    duration: Duration,
    /// Unmeasured warm-up before each level.
    #[arg(long, default_value = "1s", value_parser = crate::parse::duration)]
    warmup: Duration,
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Job submissions/s and latency percentiles against a running server.
    Submit {
        #[command(flatten)]
        levels: Levels,
        /// The business billed for the benchmark jobs (topped up first).
        #[arg(long, default_value = "bench")]
        business: String,
    },
    /// Time from submission to `running` with real agents: submits `true` jobs, waits for
    /// them to finish, then reads each attempt's start time against the job's creation
    /// (both chosen by the server, so no polling error enters the figures).
    StartLatency {
        /// Jobs to submit.
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        /// Concurrent submitters.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Give up waiting for the jobs to finish after this long.
        #[arg(long, default_value = "120s", value_parser = crate::parse::duration)]
        timeout: Duration,
        /// The business billed for the benchmark jobs (topped up first).
        #[arg(long, default_value = "bench")]
        business: String,
    },
    /// etcd puts/s and latency percentiles at the same concurrencies, through etcd's
    /// HTTP/JSON gateway (`POST /v3/kv/put`), workers spread over the endpoints.
    EtcdPut {
        /// etcd client URLs, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
        endpoints: Vec<String>,
        #[command(flatten)]
        levels: Levels,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
    /// Leader failover: start a 3-member cluster on loopback, kill -9 its leader
    /// `--kills` times, and time each kill to the first write acknowledged by a
    /// survivor.
    Failover {
        /// What to kill leaders of.
        #[arg(long, value_enum, default_value = "tanvrit")]
        target: super::failover::FailoverTarget,
        /// Rounds.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// tanvrit's timing profile: `default` (heartbeat 500 ms) or `lan` (100 ms).
        #[arg(long, default_value = "default")]
        profile: String,
        /// The etcd binary.
        #[arg(long, default_value = "etcd")]
        etcd_bin: PathBuf,
        /// etcd's --heartbeat-interval in ms.
        #[arg(long, default_value_t = 500)]
        etcd_heartbeat_ms: u64,
        /// etcd's --election-timeout in ms.
        #[arg(long, default_value_t = 2500)]
        etcd_election_ms: u64,
        /// Where the members' data directories go (default: the system temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Credit-ledger entries/s against a running server: top-ups (one entry each) and
    /// submit+cancel cycles (a hold and its release), counted from the ledger itself.
    Ledger {
        /// Workloads, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "top-up,submit-cancel"
        )]
        workload: Vec<super::ledger_bench::LedgerWorkload>,
        #[command(flatten)]
        levels: Levels,
    },
    /// Schedule fire lag: many active schedules against a running server; lag = each
    /// fired job's creation time minus its due time, both the server's.
    Schedules {
        /// Active schedules.
        #[arg(long, default_value_t = 1_000)]
        schedules: usize,
        /// Each fires every this many seconds (a divisor of 60); offsets are spread.
        #[arg(long, default_value_t = 10)]
        every: u32,
        /// How long to let them fire.
        #[arg(long, default_value = "60s", value_parser = crate::parse::duration)]
        duration: Duration,
        /// Concurrent requests while creating and deleting the schedules.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The business the schedules belong to (topped up first).
        #[arg(long, default_value = "bench-cron")]
        business: String,
    },
    /// Growth with history: start a single node, then 3 Raft replicas, write `--jobs`
    /// terminal jobs into each, and report per tenth jobs/s, RSS, data directory, submit
    /// p99 and snapshots; then restart to serving and an empty learner's catch-up, with
    /// the targets of the issue "Steady for a year" beside the figures.
    Scale(super::scale::ScaleArgs),
    /// Scheduler placements/s: a queue of pending jobs over simulated nodes, in process.
    Placement {
        /// Pending jobs.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Ready nodes.
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        /// Placements proposed per write (one `JobsAssign` command).
        #[arg(long, default_value_t = 1_000)]
        per_write: usize,
    },
}

/// One concurrency level's figures.
#[derive(Clone, Debug, Serialize)]
pub struct LevelReport {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Acknowledged submissions in the measured window.
    pub requests: u64,
    /// Failed submissions.
    pub errors: u64,
    /// Acknowledged submissions per second.
    pub per_second: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The start-latency benchmark's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StartLatencyReport {
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs that started.
    pub started: usize,
    /// Submit-to-running percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The placement benchmark's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PlacementReport {
    /// Jobs queued.
    pub jobs: usize,
    /// Nodes.
    pub nodes: usize,
    /// Jobs placed.
    pub placed: usize,
    /// Planning + apply rounds.
    pub rounds: usize,
    /// Wall time in milliseconds.
    pub elapsed_ms: f64,
    /// Placements per second (plan + apply, one core).
    pub per_second: f64,
}

/// The `p`th percentile of sorted durations, in milliseconds (0 when there are none).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub(crate) fn bench_job(business: &str, worker: usize, n: u64) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(business.into()),
        spec: JobSpec {
            name: Some("bench".into()),
            command: vec!["true".into()],
            resources: Resources {
                cpu_millis: 100,
                memory_mb: 64,
                gpus: 0,
            },
            timeout_secs: 60,
            ..JobSpec::default()
        },
        idempotency_key: Some(format!("bench-{}-{worker}-{n}", std::process::id())),
    }
}

/// Runs `op(worker, n)` from `concurrency` workers for `warmup` + `duration`; counts
/// what finished in the measured window (`op` answers whether it succeeded).
pub(crate) async fn run_level<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> LevelReport
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut n = 0u64;
                while Instant::now() < stop_at {
                    let sent = Instant::now();
                    let ok = op(worker, n).await;
                    n += 1;
                    if sent < measure_from {
                        continue;
                    }
                    if ok {
                        latencies.push(sent.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((latencies, failed)) = task.await {
            all.extend(latencies);
            errors += failed;
        }
    }
    all.sort();
    LevelReport {
        concurrency,
        requests: all.len() as u64,
        errors,
        per_second: all.len() as f64 / duration.as_secs_f64(),
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }
}

async fn start_latency(
    client: &Client,
    business: &str,
    jobs: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<StartLatencyReport> {
    client
        .create_credit_entry(CreditEntryCreateRequest {
            business: business.into(),
            kind: EntryKind::TopUp,
            amount: 1_000_000_000_000,
            idempotency_key: None,
            note: Some("tanvrit bench".into()),
        })
        .await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let submitters: Vec<_> = (0..concurrency.max(1))
        .map(|worker| {
            let client = client.clone();
            let business = business.to_string();
            let next = next.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= jobs {
                        return ids;
                    }
                    let mut request = bench_job(&business, worker, n as u64);
                    request.spec.resources = Resources {
                        cpu_millis: 10,
                        memory_mb: 1,
                        gpus: 0,
                    };
                    if let Ok(response) = client.submit_job(request).await {
                        ids.push(response.job.id);
                    }
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for submitter in submitters {
        ids.extend(submitter.await?);
    }
    let deadline = Instant::now() + timeout;
    let mut latencies = Vec::new();
    for id in &ids {
        loop {
            let job = client.get_job(id, Consistency::Stale).await?.job;
            if job.state.is_terminal() || Instant::now() > deadline {
                if let Some(started) = job.attempts.first().and_then(|a| a.started_at) {
                    latencies.push(Duration::from_millis(
                        started.saturating_sub(job.created_at).max(0) as u64,
                    ));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    latencies.sort();
    Ok(StartLatencyReport {
        jobs: ids.len(),
        started: latencies.len(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

/// Prints each level as it finishes (unless `--json`) and the table at the end.
fn show_levels(out: Output, reports: &[LevelReport], what: &str) -> anyhow::Result<()> {
    out.show(&reports.to_vec(), |reports| {
        let mut table = output::table([
            "CONCURRENCY",
            what,
            "P50 MS",
            "P99 MS",
            "MAX MS",
            "OK",
            "ERRORS",
        ]);
        for r in reports {
            table.add_row([
                r.concurrency.to_string(),
                format!("{:.0}", r.per_second),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.max_ms),
                r.requests.to_string(),
                r.errors.to_string(),
            ]);
        }
        table
    })
}

fn progress(out: Output, report: &LevelReport) {
    if !out.json {
        eprintln!(
            "concurrency {}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            report.concurrency, report.per_second, report.p50_ms, report.p99_ms
        );
    }
}

/// Builds `jobs` pending jobs over `nodes` ready nodes, then plans and applies rounds of
/// `per_write` placements until nothing more fits.
pub fn placement(jobs: usize, nodes: usize, per_write: usize) -> PlacementReport {
    let mut state = State::new();
    let mut index = 0u64;
    let mut apply = |state: &mut State, command: Command| {
        index += 1;
        state
            .apply(index, &command)
            .unwrap_or_else(|r| panic!("{}: {r}", command.name()))
    };
    let rates = Rates::default();
    for n in 0..nodes {
        apply(
            &mut state,
            Command::NodeRegister {
                node: NodeId(format!("node-{n:05}")),
                name: format!("node-{n:05}"),
                // Mixed node sizes, as a real fleet has.
                resources: Resources {
                    cpu_millis: [8_000, 16_000, 32_000][n % 3],
                    memory_mb: [16_384, 65_536, 131_072][n % 3],
                    gpus: if n % 10 == 0 { 4 } else { 0 },
                },
                labels: [("zone".to_string(), format!("z{}", n % 4))].into(),
                drivers: Vec::new(),
                at: 1,
            },
        );
    }
    for j in 0..jobs {
        let mut labels = std::collections::BTreeMap::new();
        if j % 5 == 0 {
            labels.insert("zone".to_string(), format!("z{}", j % 4));
        }
        apply(
            &mut state,
            Command::JobSubmit {
                job: JobId(format!("job-{j:08}")),
                business: "bench".into(),
                spec: JobSpec {
                    command: vec!["true".into()],
                    resources: Resources {
                        cpu_millis: [250, 500, 1000, 2000][j % 4],
                        memory_mb: [256, 512, 1024, 4096][j % 4],
                        gpus: u32::from(j % 50 == 0),
                    },
                    priority: (j % 3) as i32,
                    labels,
                    ..JobSpec::default()
                },
                idempotency_key: None,
                rates,
                at: 2 + j as i64,
            },
        );
    }
    let started = Instant::now();
    let mut placed = 0;
    let mut rounds = 0;
    loop {
        let now = 1_000_000;
        let (planned, _) = plan(&state, now, Strategy::BinPack, per_write);
        if planned.is_empty() {
            break;
        }
        rounds += 1;
        let placements = planned
            .into_iter()
            .map(|p| Placement {
                attempt: AttemptId(format!("att-{}", p.job)),
                job: p.job,
                node: p.node,
            })
            .collect();
        let effect = apply(
            &mut state,
            Command::JobsAssign {
                placements,
                at: now,
            },
        );
        if let tanvrit_state::Effect::Placements { placed: done, .. } = effect {
            placed += done.len();
        }
    }
    let elapsed = started.elapsed();
    PlacementReport {
        jobs,
        nodes,
        placed,
        rounds,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        per_second: placed as f64 / elapsed.as_secs_f64(),
    }
}

impl BenchCommand {
    /// Runs the benchmark and prints its figures.
    pub async fn run(
        self,
        client: impl FnOnce() -> anyhow::Result<Client>,
        out: Output,
    ) -> anyhow::Result<()> {
        match self {
            BenchCommand::Submit {
                levels:
                    Levels {
                        concurrency,
                        duration,
                        warmup,
                    },
                business,
            } => {
                let client = client()?;
                client
                    .create_credit_entry(CreditEntryCreateRequest {
                        business: business.as_str().into(),
                        kind: EntryKind::TopUp,
                        amount: 1_000_000_000_000,
                        idempotency_key: None,
                        note: Some("tanvrit bench".into()),
                    })
                    .await?;
                // Workers are spread over the endpoints (`--addr a,b,c`), one client each.
                let clients: Arc<Vec<Client>> = Arc::new(client.per_endpoint()?);
                let mut reports = Vec::new();
                for level in concurrency {
                    let clients = clients.clone();
                    let business = business.clone();
                    let report = run_level(level, warmup, duration, move |worker, n| {
                        let client = clients[worker % clients.len()].clone();
                        let job = bench_job(&business, worker, n);
                        async move { client.submit_job(job).await.is_ok() }
                    })
                    .await;
                    progress(out, &report);
                    reports.push(report);
                }
                show_levels(out, &reports, "SUBMITS/S")
            }
            BenchCommand::EtcdPut {
                endpoints,
                levels:
                    Levels {
                        concurrency,
                        duration,
                        warmup,
                    },
                value_size,
            } => {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?;
                let b64 = base64::engine::general_purpose::STANDARD;
                // A fixed value of `value_size` bytes (the key space is 10,000 per worker).
                let value = b64.encode(
                    (0..value_size)
                        .map(|i| b'a' + (i % 26) as u8)
                        .collect::<Vec<u8>>(),
                );
                let urls: Arc<Vec<String>> = Arc::new(
                    endpoints
                        .iter()
                        .map(|e| format!("{}/v3/kv/put", e.trim_end_matches('/')))
                        .collect(),
                );
                let mut reports = Vec::new();
                for level in concurrency {
                    let (http, urls, value) = (http.clone(), urls.clone(), value.clone());
                    let report =
                        run_level(level, warmup, duration, move |worker, n| {
                            let url = urls[worker % urls.len()].clone();
                            let body = serde_json::json!({
                                "key": base64::engine::general_purpose::STANDARD
                                .encode(format!("bench/{worker}/{}", n % 10_000)),
                                "value": value,
                            });
                            let request = http.post(url).json(&body);
                            async move {
                                matches!(request.send().await, Ok(r) if r.status().is_success())
                            }
                        })
                        .await;
                    progress(out, &report);
                    reports.push(report);
                }
                show_levels(out, &reports, "PUTS/S")
            }
            BenchCommand::Failover {
                target,
                kills,
                profile,
                etcd_bin,
                etcd_heartbeat_ms,
                etcd_election_ms,
                work_dir,
            } => {
                let report = super::failover::run(
                    target,
                    kills,
                    &profile,
                    &etcd_bin,
                    (etcd_heartbeat_ms, etcd_election_ms),
                    work_dir,
                )
                .await?;
                out.show(&report, |r| {
                    let mut table =
                        output::table(["TARGET", "PROFILE", "KILLS", "MEDIAN MS", "MAX MS"]);
                    table.add_row([
                        format!("{:?}", r.target).to_lowercase(),
                        r.profile.clone(),
                        r.rounds_ms.len().to_string(),
                        format!("{:.0}", r.median_ms),
                        format!("{:.0}", r.max_ms),
                    ]);
                    table
                })
            }
            BenchCommand::StartLatency {
                jobs,
                concurrency,
                timeout,
                business,
            } => {
                let client = client()?;
                let report = start_latency(&client, &business, jobs, concurrency, timeout).await?;
                out.show(&report, |r| {
                    let mut table =
                        output::table(["JOBS", "STARTED", "P50 MS", "P99 MS", "MAX MS"]);
                    table.add_row([
                        r.jobs.to_string(),
                        r.started.to_string(),
                        format!("{:.1}", r.p50_ms),
                        format!("{:.1}", r.p99_ms),
                        format!("{:.1}", r.max_ms),
                    ]);
                    table
                })
            }
            BenchCommand::Ledger {
                workload,
                levels:
                    Levels {
                        concurrency,
                        duration,
                        warmup,
                    },
            } => {
                let client = client()?;
                let reports = super::ledger_bench::run(
                    &client,
                    &workload,
                    &concurrency,
                    warmup,
                    duration,
                    |r| {
                        if !out.json {
                            eprintln!(
                                "{} at concurrency {}: {:.0} entries/s",
                                r.workload.name(),
                                r.concurrency,
                                r.entries_per_second
                            );
                        }
                    },
                )
                .await?;
                out.show(&reports, |reports| {
                    let mut table = output::table([
                        "WORKLOAD",
                        "CONCURRENCY",
                        "ENTRIES/S",
                        "ENTRIES",
                        "REQUESTS",
                        "P50 MS",
                        "P99 MS",
                        "ERRORS",
                        "HOLDS",
                        "RELEASES",
                        "HELD AFTER",
                    ]);
                    for r in reports {
                        table.add_row([
                            r.workload.name().to_string(),
                            r.concurrency.to_string(),
                            format!("{:.0}", r.entries_per_second),
                            r.entries.to_string(),
                            r.requests.to_string(),
                            format!("{:.2}", r.p50_ms),
                            format!("{:.2}", r.p99_ms),
                            r.errors.to_string(),
                            r.holds.to_string(),
                            r.releases.to_string(),
                            r.held_after.to_string(),
                        ]);
                    }
                    table
                })
            }
            BenchCommand::Schedules {
                schedules,
                every,
                duration,
                concurrency,
                business,
            } => {
                let client = client()?;
                let report = super::schedule_bench::run(
                    &client,
                    &business,
                    schedules,
                    every,
                    duration,
                    concurrency,
                )
                .await?;
                out.show(&report, |r| {
                    let mut table = output::table([
                        "SCHEDULES",
                        "EVERY S",
                        "WINDOW S",
                        "DUE",
                        "FIRED",
                        "FIRES/S",
                        "LAG P50 MS",
                        "LAG P99 MS",
                        "LAG MAX MS",
                    ]);
                    table.add_row([
                        r.schedules.to_string(),
                        r.every_secs.to_string(),
                        format!("{:.0}", r.window_secs),
                        r.due.to_string(),
                        r.fired.to_string(),
                        format!("{:.1}", r.fires_per_second),
                        format!("{:.0}", r.p50_ms),
                        format!("{:.0}", r.p99_ms),
                        format!("{:.0}", r.max_ms),
                    ]);
                    table
                })
            }
            BenchCommand::Scale(args) => super::scale::run(args, out).await,
            BenchCommand::Placement {
                jobs,
                nodes,
                per_write,
            } => {
                let report =
                    tokio::task::spawn_blocking(move || placement(jobs, nodes, per_write)).await?;
                out.show(&report, |r| {
                    let mut table =
                        output::table(["JOBS", "NODES", "PLACED", "ROUNDS", "MS", "PLACEMENTS/S"]);
                    table.add_row([
                        r.jobs.to_string(),
                        r.nodes.to_string(),
                        r.placed.to_string(),
                        r.rounds.to_string(),
                        format!("{:.1}", r.elapsed_ms),
                        format!("{:.0}", r.per_second),
                    ]);
                    table
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks_of_the_sorted_latencies() {
        let sorted: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), 51.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn the_placement_bench_places_what_fits_and_nothing_twice() {
        let report = placement(200, 10, 50);
        assert!(report.placed > 0 && report.placed <= 200);
        assert!(report.rounds >= report.placed.div_ceil(50));
    }
}
