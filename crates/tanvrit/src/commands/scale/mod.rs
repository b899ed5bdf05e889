//! `tanvrit bench scale`: does a replica stay the same size and speed as history grows?
//! The issue "Steady for a year" judges the on-disk state machine by it.
//!
//! For each mode (a single node, then 3 Raft replicas) it starts real `tanvrit server`
//! processes of this binary on loopback (fresh data directories, retention off), writes
//! `--jobs` jobs that end terminal (submit, then cancel while pending) from
//! `--concurrency` clients that never retry, and after every tenth of them samples each
//! replica: RSS (`/proc/<pid>/status`), data directory on disk, and the slice's jobs/s
//! and submit p99. Snapshot build times come from the replicas' own log lines
//! (`built a snapshot ... ms=`), and the worst client write that ran during each build
//! from the client's records. Then every replica is killed and started again (time to
//! the first read and write), and in Raft mode an empty replica is added as a learner
//! (time to catch up, peak RSS). The targets are printed beside the figures,
//! met or not: it measures, it never fails a run for a figure.
//!
//! # Layout
//! - [`replicas`]: starting, killing and probing the server processes.
//! - [`load`]: the workers and their per-job records.
//! - [`probe`]: `/proc`, disk usage, `/metrics` and log-line parsers (pure).
//! - [`phases`]: the restart and the learner.
//! - [`report`]: figures, targets, tables.

pub mod load;
pub mod phases;
pub mod probe;
pub mod replicas;
pub mod report;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;

use self::load::{worst_write_during, Writer};
use self::probe::SNAPSHOT_BUILT;
use self::replicas::{client, Replicas, Settings};
use self::report::{RunReport, ScaleReport, SliceReport, SnapshotReport};
use crate::commands::bench_process::work_dir_for;
use crate::output::Output;

/// Which replica sets to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One `tanvrit server` without Raft.
    Single,
    /// Three Raft replicas (then a fourth, empty, as a learner).
    Raft,
}

/// `tanvrit bench scale`'s flags.
#[derive(Clone, Debug, Args)]
pub struct ScaleArgs {
    /// Jobs to write per run (each submitted, then cancelled).
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: u64,
    /// Concurrent clients (none retries).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The runs, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "single,raft")]
    pub mode: Vec<Mode>,
    /// `TANVRIT_SNAPSHOT_EVERY` of the replicas (default: the server's, 10,000).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// The Raft timing profile (`default`, `lan`).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Where the data directories and logs go (default: the system temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the data directories and logs afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Tenths of the jobs: the replicas are sampled at the end of each.
const SLICES: u64 = 10;
/// Longest wait for freshly started replicas to take a write.
const START_WITHIN: Duration = Duration::from_secs(60);

const MIB: f64 = 1024.0 * 1024.0;

/// Runs every mode and prints the report.
pub async fn run(args: ScaleArgs, out: Output) -> anyhow::Result<()> {
    let root = work_dir_for("scale", args.work_dir.clone())?;
    let mut report = ScaleReport {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        jobs: args.jobs,
        concurrency: args.concurrency,
        snapshot_every: args
            .snapshot_every
            .map_or_else(|| "default".into(), |e| e.to_string()),
        runs: Vec::new(),
    };
    let runs = async {
        for &mode in &args.mode {
            let run = one_run(&args, mode, &root).await?;
            if !out.json {
                println!("{}", report::render(&run));
            }
            report.runs.push(run);
        }
        anyhow::Ok(())
    };
    // Ctrl-C or SIGTERM drops the replicas, and with them their processes.
    let outcome = tokio::select! {
        outcome = runs => outcome,
        () = crate::server::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    if args.keep {
        eprintln!("data directories and logs kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    outcome?;
    if out.json {
        out.json(&report)?;
    }
    Ok(())
}

/// One mode: start, load, sample, restart, (learner), stop.
async fn one_run(
    args: &ScaleArgs,
    mode: Mode,
    root: &std::path::Path,
) -> anyhow::Result<RunReport> {
    let (voters, name) = match mode {
        Mode::Single => (0, "single node".to_string()),
        Mode::Raft => (3, "raft, 3 replicas".to_string()),
    };
    let settings = Settings {
        voters,
        profile: args.profile.clone(),
        snapshot_every: args.snapshot_every,
        dir: root.join(match mode {
            Mode::Single => "single",
            Mode::Raft => "raft",
        }),
    };
    eprintln!(
        "== {name}: starting (data and logs in {})",
        settings.dir.display()
    );
    let mut replicas = Replicas::start(settings, START_WITHIN).await?;
    let leader = replicas
        .leader()
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader after the first write"))?
        .member
        .url
        .clone();
    let mut run = RunReport {
        run: name.clone(),
        replicas: replicas.all.iter().map(|r| r.name.clone()).collect(),
        ..RunReport::default()
    };
    let slice = args.jobs.div_ceil(SLICES).max(1);
    let mut writer = Writer::start(
        client(&[leader], Duration::from_secs(30))?,
        args.jobs,
        args.concurrency,
        slice,
    );
    // (end of the slice since the start, in µs) for placing each snapshot in a slice.
    let mut slice_ends_us = Vec::new();
    let mut last_at = writer.started;
    let mut last_done = 0;
    while let Some(boundary) = writer.boundaries.recv().await {
        let from = boundary.slice as u64 * slice;
        let figures = writer.figures(from, boundary.done);
        let seconds = boundary.at.duration_since(last_at).as_secs_f64();
        let mut row = SliceReport {
            jobs: boundary.done,
            jobs_per_second: (boundary.done - last_done) as f64 / seconds.max(1e-9),
            submit_p99_ms: figures.submit_p99_ms,
            worst_write_ms: figures.worst_write_ms,
            errors: figures.errors,
            rss_mib: replicas
                .all
                .iter()
                .map(|r| r.memory().map(|m| m.rss_kib as f64 / 1024.0))
                .collect(),
            data_dir_mib: replicas
                .all
                .iter()
                .map(|r| r.disk_bytes() as f64 / MIB)
                .collect(),
            ..SliceReport::default()
        };
        let end_us = boundary.at.duration_since(writer.started).as_micros() as u64;
        let start_us = last_at.duration_since(writer.started).as_micros() as u64;
        let built: Vec<u64> = replicas
            .all
            .iter()
            .flat_map(|r| r.logged(SNAPSHOT_BUILT))
            .filter(|s| {
                let at = since_us(writer.started_wall, s.at);
                at > start_us && at <= end_us
            })
            .map(|s| s.ms)
            .collect();
        row.snapshots = built.len();
        row.snapshot_build_max_ms = built.iter().max().map(|&ms| ms as f64);
        eprintln!("{name}: {}", report::progress_line(&row));
        run.slices.push(row);
        slice_ends_us.push(end_us);
        last_at = boundary.at;
        last_done = boundary.done;
        if boundary.done >= args.jobs {
            break;
        }
    }
    let started_wall = writer.started_wall;
    run.seconds = last_at.duration_since(writer.started).as_secs_f64();
    let (records, some_job) = writer.finish().await;
    run.errors = records.iter().filter(|r| !r.ok).count() as u64;
    run.jobs_written = records.len() as u64 - run.errors;
    for replica in &replicas.all {
        for step in replica.logged(SNAPSHOT_BUILT) {
            let end_us = since_us(started_wall, step.at);
            let start_us = end_us.saturating_sub(step.ms * 1000);
            if end_us == 0 || start_us > *slice_ends_us.last().unwrap_or(&0) {
                continue;
            }
            run.snapshots.push(SnapshotReport {
                replica: replica.name.clone(),
                index: step.index,
                mib: (step.bytes > 0).then(|| step.bytes as f64 / MIB),
                build_ms: step.ms,
                finished_at_s: end_us as f64 / 1e6,
                slice: slice_ends_us.partition_point(|&e| e < end_us) + 1,
                worst_write_ms: worst_write_during(&records, start_us, end_us),
            });
        }
    }
    drop(records);
    run.snapshots
        .sort_by(|a, b| a.finished_at_s.total_cmp(&b.finished_at_s));
    run.peak_rss_mib = replicas
        .all
        .iter()
        .map(|r| r.memory().map(|m| m.hwm_kib as f64 / 1024.0))
        .collect();
    let largest_dir = replicas
        .all
        .iter()
        .map(|r| r.disk_bytes())
        .max()
        .unwrap_or(0);
    run.data_dir_bytes_per_job = largest_dir as f64 / run.jobs_written.max(1) as f64;
    eprintln!("{name}: restarting every replica");
    run.restart = Some(phases::restart(&mut replicas, some_job).await?);
    if mode == Mode::Raft {
        eprintln!("{name}: adding an empty replica as a learner");
        run.learner = Some(phases::add_learner(&mut replicas).await?);
    }
    replicas.kill_all().await;
    run.targets = report::targets(&run);
    Ok(run)
}

/// Microseconds from `start` to `at` (0 if before).
fn since_us(start: SystemTime, at: SystemTime) -> u64 {
    at.duration_since(start).map_or(0, |d| d.as_micros() as u64)
}
