//! The figures of `bench scale` (JSON with `--json`), the targets judged against
//! them (met, not met, or not measured: reported, never asserted), and the tables.

use comfy_table::Table;
use serde::Serialize;

use crate::output;

/// RSS a replica (and the learner) may reach, in MiB.
pub const RSS_TARGET_MIB: f64 = 300.0;
/// The last slice's jobs/s must be at least this share of the first's.
pub const RATE_KEPT_TARGET: f64 = 0.9;
/// Restart to serving, in ms.
pub const RESTART_TARGET_MS: f64 = 2_000.0;
/// Data directory per finished job, in bytes.
pub const DISK_PER_JOB_TARGET: f64 = 2_048.0;

/// Every run of one invocation.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    /// Jobs per run.
    pub jobs: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Snapshot interval given to the replicas (`default`: the server's own).
    pub snapshot_every: String,
    /// One per mode.
    pub runs: Vec<RunReport>,
}

/// One run: a single node or a Raft cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// `single node` or `raft, 3 replicas`.
    pub run: String,
    /// Replica names, in the order of every per-replica list.
    pub replicas: Vec<String>,
    /// Jobs written (submitted and cancelled, both acknowledged).
    pub jobs_written: u64,
    /// Jobs whose submit or cancel failed (never retried).
    pub errors: u64,
    /// Wall time of the load, seconds.
    pub seconds: f64,
    /// Per tenth of the jobs.
    pub slices: Vec<SliceReport>,
    /// Every snapshot a replica built during the load.
    pub snapshots: Vec<SnapshotReport>,
    /// Peak RSS (`VmHWM`) of each replica over the load, MiB.
    pub peak_rss_mib: Vec<Option<f64>>,
    /// The largest data directory at the end of the load, per job written, bytes.
    pub data_dir_bytes_per_job: f64,
    /// Kill -9 of every replica and start again.
    pub restart: Option<RestartReport>,
    /// An empty replica added as a learner (Raft only).
    pub learner: Option<LearnerReport>,
    /// The targets.
    pub targets: Vec<TargetReport>,
}

/// The replicas when another tenth of the jobs was done.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SliceReport {
    /// Jobs done at the end of the slice.
    pub jobs: u64,
    /// Jobs (submit + cancel) per second over the slice.
    pub jobs_per_second: f64,
    /// Submit p99 of the slice's jobs, ms.
    pub submit_p99_ms: f64,
    /// The slowest write (submit or cancel) of the slice's jobs, ms.
    pub worst_write_ms: f64,
    /// Jobs of the slice that failed.
    pub errors: u64,
    /// `VmRSS` of each replica at the end of the slice, MiB.
    pub rss_mib: Vec<Option<f64>>,
    /// Data directory of each replica at the end of the slice, MiB.
    pub data_dir_mib: Vec<f64>,
    /// Snapshots finished during the slice (every replica).
    pub snapshots: usize,
    /// The longest of them, ms.
    pub snapshot_build_max_ms: Option<f64>,
}

/// One snapshot a replica built.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    /// The replica.
    pub replica: String,
    /// The log index it covers.
    pub index: u64,
    /// Its size, MiB (none when the replica does not log it: the single node).
    pub mib: Option<f64>,
    /// Build time, ms (from the replica's log).
    pub build_ms: u64,
    /// Seconds since the load started, at the end of the build.
    pub finished_at_s: f64,
    /// The slice it finished in (1-based).
    pub slice: usize,
    /// The slowest client write that ran while it was built, ms.
    pub worst_write_ms: f64,
}

/// Kill -9 of every replica, start again, and time to serving.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestartReport {
    /// Start to the first read answered (a job by id, any replica), ms.
    pub first_read_ms: Option<f64>,
    /// Start to the first write acknowledged, ms.
    pub first_write_ms: Option<f64>,
}

/// An empty fourth replica added as a learner.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LearnerReport {
    /// The leader's last log index when it was added.
    pub target_index: u64,
    /// Add call to the learner's applied index reaching `target_index`, ms.
    pub caught_up_ms: Option<f64>,
    /// The add call (learner, catch-up, promotion to voter) took, ms.
    pub add_call_ms: Option<f64>,
    /// `ok`, or the add call's error.
    pub add_outcome: String,
    /// Peak RSS (`VmHWM`, or the highest `VmRSS` sampled) until caught up, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Snapshots it installed: (ms, MiB) from its log.
    pub installs: Vec<(u64, f64)>,
}

/// Whether a target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Met.
    Met,
    /// Not met.
    NotMet,
    /// The figure is missing.
    NotMeasured,
}

/// One target beside its figure.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// What is measured.
    pub what: String,
    /// The target.
    pub target: String,
    /// The figure.
    pub measured: String,
    /// Met or not.
    pub verdict: Verdict,
}

fn judge(
    what: &str,
    target: &str,
    measured: Option<(f64, String)>,
    met: impl Fn(f64) -> bool,
) -> TargetReport {
    let (verdict, measured) = match measured {
        Some((value, text)) if met(value) => (Verdict::Met, text),
        Some((_, text)) => (Verdict::NotMet, text),
        None => (Verdict::NotMeasured, "-".into()),
    };
    TargetReport {
        what: what.into(),
        target: target.into(),
        measured,
        verdict,
    }
}

/// The targets judged against a run's figures.
pub fn targets(run: &RunReport) -> Vec<TargetReport> {
    let mut out = Vec::new();
    let peak = run
        .peak_rss_mib
        .iter()
        .flatten()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    out.push(judge(
        "peak RSS of every replica",
        "<= 300 MiB",
        peak.map(|p| (p, format!("{p:.0} MiB (largest)"))),
        |p| p <= RSS_TARGET_MIB,
    ));
    let rates = run.slices.first().zip(run.slices.last());
    out.push(judge(
        "jobs/s, last tenth against the first",
        ">= 90%",
        rates
            .filter(|(first, _)| first.jobs_per_second > 0.0)
            .map(|(first, last)| {
                let kept = last.jobs_per_second / first.jobs_per_second;
                (
                    kept,
                    format!(
                        "{:.0}% ({:.0} of {:.0}/s)",
                        kept * 100.0,
                        last.jobs_per_second,
                        first.jobs_per_second
                    ),
                )
            }),
        |kept| kept >= RATE_KEPT_TARGET,
    ));
    out.push(judge(
        "restart to serving (first write)",
        "<= 2 s",
        run.restart
            .as_ref()
            .and_then(|r| r.first_write_ms)
            .map(|ms| (ms, format!("{:.2} s", ms / 1000.0))),
        |ms| ms <= RESTART_TARGET_MS,
    ));
    out.push(judge(
        "data directory per finished job",
        "<= 2 KiB",
        (run.jobs_written > 0).then(|| {
            let b = run.data_dir_bytes_per_job;
            (b, format!("{:.2} KiB", b / 1024.0))
        }),
        |b| b <= DISK_PER_JOB_TARGET,
    ));
    if let Some(learner) = &run.learner {
        out.push(judge(
            "learner's peak RSS while catching up",
            "<= 300 MiB",
            learner.peak_rss_mib.map(|p| (p, format!("{p:.0} MiB"))),
            |p| p <= RSS_TARGET_MIB,
        ));
    }
    out
}

/// An optional figure, rounded (`-` when missing).
fn whole(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn list(values: impl IntoIterator<Item = String>) -> String {
    values.into_iter().collect::<Vec<_>>().join(" / ")
}

/// One slice as a line of progress.
pub fn progress_line(s: &SliceReport) -> String {
    format!(
        "{} jobs, {:.0} jobs/s, submit p99 {:.1} ms, worst write {:.0} ms, {} errors, \
         RSS MiB {}, data dir MiB {}, {} snapshots (longest {} ms)",
        s.jobs,
        s.jobs_per_second,
        s.submit_p99_ms,
        s.worst_write_ms,
        s.errors,
        list(s.rss_mib.iter().map(|r| whole(*r))),
        list(s.data_dir_mib.iter().map(|d| format!("{d:.0}"))),
        s.snapshots,
        whole(s.snapshot_build_max_ms),
    )
}

/// Per slice: jobs/s, p99, worst write, RSS and data directory of each replica,
/// snapshots.
pub fn slices_table(run: &RunReport) -> Table {
    let mut table = output::table([
        "JOBS",
        "JOBS/S",
        "SUBMIT P99 MS",
        "WORST WRITE MS",
        "ERRORS",
        &format!("RSS MIB ({})", run.replicas.join("/")),
        "DATA DIR MIB",
        "SNAPSHOTS",
        "LONGEST BUILD MS",
    ]);
    for s in &run.slices {
        table.add_row([
            s.jobs.to_string(),
            format!("{:.0}", s.jobs_per_second),
            format!("{:.1}", s.submit_p99_ms),
            format!("{:.0}", s.worst_write_ms),
            s.errors.to_string(),
            list(s.rss_mib.iter().map(|r| whole(*r))),
            list(s.data_dir_mib.iter().map(|d| format!("{d:.0}"))),
            s.snapshots.to_string(),
            whole(s.snapshot_build_max_ms),
        ]);
    }
    table
}

/// Every snapshot built during the load.
pub fn snapshots_table(run: &RunReport) -> Table {
    let mut table = output::table([
        "REPLICA",
        "INDEX",
        "SLICE",
        "AT S",
        "MIB",
        "BUILD MS",
        "WORST WRITE MEANWHILE MS",
    ]);
    for s in &run.snapshots {
        table.add_row([
            s.replica.clone(),
            s.index.to_string(),
            s.slice.to_string(),
            format!("{:.0}", s.finished_at_s),
            whole(s.mib),
            s.build_ms.to_string(),
            format!("{:.0}", s.worst_write_ms),
        ]);
    }
    table
}

/// The targets beside the figures.
pub fn targets_table(run: &RunReport) -> Table {
    let mut table = output::table(["TARGET", "WANTED", "MEASURED", "VERDICT"]);
    for t in &run.targets {
        table.add_row([
            t.what.clone(),
            t.target.clone(),
            t.measured.clone(),
            match t.verdict {
                Verdict::Met => "met",
                Verdict::NotMet => "NOT MET",
                Verdict::NotMeasured => "not measured",
            }
            .to_string(),
        ]);
    }
    table
}

/// Everything of one run, for people.
pub fn render(run: &RunReport) -> String {
    let mut out = format!(
        "== {}: {} jobs written, {} failed, in {:.0} s\n{}\n",
        run.run,
        run.jobs_written,
        run.errors,
        run.seconds,
        slices_table(run)
    );
    if run.snapshots.is_empty() {
        out.push_str("no snapshot finished during the load\n");
    } else {
        out.push_str(&format!("{}\n", snapshots_table(run)));
    }
    out.push_str(&format!(
        "peak RSS (VmHWM) MiB: {}; data directory {:.2} KiB per job\n",
        list(run.peak_rss_mib.iter().map(|p| whole(*p))),
        run.data_dir_bytes_per_job / 1024.0
    ));
    if let Some(r) = &run.restart {
        out.push_str(&format!(
            "restart (kill -9 of every replica, start again): first read {} ms, first write {} ms\n",
            whole(r.first_read_ms),
            whole(r.first_write_ms)
        ));
    }
    if let Some(l) = &run.learner {
        out.push_str(&format!(
            "learner: caught up to index {} in {} ms (add call {} ms, {}), peak RSS {} MiB, \
             installed {}\n",
            l.target_index,
            whole(l.caught_up_ms),
            whole(l.add_call_ms),
            l.add_outcome,
            whole(l.peak_rss_mib),
            if l.installs.is_empty() {
                "no snapshot".to_string()
            } else {
                list(
                    l.installs
                        .iter()
                        .map(|(ms, mib)| format!("{mib:.0} MiB in {ms} ms")),
                )
            }
        ));
    }
    out.push_str(&format!("{}\n", targets_table(run)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(rate: f64) -> SliceReport {
        SliceReport {
            jobs: 10,
            jobs_per_second: rate,
            ..SliceReport::default()
        }
    }

    #[test]
    fn targets_are_met_not_met_or_not_measured() {
        let run = RunReport {
            run: "single node".into(),
            replicas: vec!["r1".into()],
            jobs_written: 1_000,
            slices: vec![slice(1_000.0), slice(950.0), slice(899.0)],
            peak_rss_mib: vec![Some(120.0), None, Some(301.0)],
            data_dir_bytes_per_job: 2_048.0,
            restart: Some(RestartReport {
                first_read_ms: Some(300.0),
                first_write_ms: None,
            }),
            ..RunReport::default()
        };
        let verdicts: Vec<(String, Verdict)> = targets(&run)
            .into_iter()
            .map(|t| (t.measured, t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("301 MiB (largest)".into(), Verdict::NotMet),
                ("90% (899 of 1000/s)".into(), Verdict::NotMet),
                ("-".into(), Verdict::NotMeasured),
                ("2.00 KiB".into(), Verdict::Met),
            ]
        );
        let learner = RunReport {
            learner: Some(LearnerReport {
                peak_rss_mib: Some(280.0),
                ..LearnerReport::default()
            }),
            slices: vec![slice(100.0), slice(95.0)],
            ..run
        };
        let t = targets(&learner);
        assert_eq!(t[1].verdict, Verdict::Met);
        assert_eq!(t[4].verdict, Verdict::Met);
    }

    #[test]
    fn the_tables_show_one_row_per_slice_and_a_verdict_per_target() {
        let mut run = RunReport {
            run: "raft, 3 replicas".into(),
            replicas: vec!["r1".into(), "r2".into()],
            jobs_written: 20,
            slices: vec![SliceReport {
                rss_mib: vec![Some(100.4), None],
                data_dir_mib: vec![12.0, 13.0],
                ..slice(500.0)
            }],
            ..RunReport::default()
        };
        run.targets = targets(&run);
        let text = render(&run);
        assert!(text.contains("RSS MIB (r1/r2)"), "{text}");
        assert!(text.contains("100 / -"), "{text}");
        assert!(text.contains("12 / 13"), "{text}");
        assert!(text.contains("not measured"), "{text}");
        assert!(text.contains("no snapshot finished"), "{text}");
    }
}
