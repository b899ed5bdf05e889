//! The scenarios: a fault schedule each, run under the recorded workload, then healed,
//! settled and checked. Each is bounded (short by default, minutes with `long`) and ends
//! in one verdict line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;

use crate::checker::{self, Verdict};
use crate::docker::DockerFabric;
use crate::fabric::Fabric;
use crate::harness::{ClusterSettings, Harness, HarnessError};
use crate::history::{parse_runs, History, Op, Outcome};
use crate::netns::NetnsFabric;
use crate::workload::{self, Recorder, WorkloadConfig};

/// Every scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No fault: the baseline. The first leader must keep leading and every request
    /// succeed.
    Steady,
    /// `kill -9` of the leader, restarted after a while.
    LeaderKill,
    /// The leader cut off from the majority (clients still reach it).
    LeaderPartition,
    /// A follower cut off, then healed.
    MinorityPartition,
    /// Short partitions of random replicas, on and off.
    FlappingPartition,
    /// The leader frozen (SIGSTOP) for 10 s: a zombie leader.
    LeaderPause,
    /// `kill -9` of a follower, then (once the leader purged its log past it) of the
    /// other two, then a restart of all.
    KillAll,
    /// Each replica stopped (SIGTERM) and started again in turn, once the leader purged
    /// its log past the stopped one's.
    RollingRestart,
    /// A follower, then the leader, killed, its data directory wiped, started again empty.
    EmptyDiskRejoin,
    /// An agent cut off from the control plane while it runs jobs.
    AgentPartition,
    /// 10% of every replica's packets dropped.
    PacketLoss,
    /// One replica in a far region: 40-120 ms each way.
    RegionDelay,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 12] = [
        Scenario::Steady,
        Scenario::LeaderKill,
        Scenario::LeaderPartition,
        Scenario::MinorityPartition,
        Scenario::FlappingPartition,
        Scenario::LeaderPause,
        Scenario::KillAll,
        Scenario::RollingRestart,
        Scenario::EmptyDiskRejoin,
        Scenario::AgentPartition,
        Scenario::PacketLoss,
        Scenario::RegionDelay,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::LeaderKill => "leader-kill",
            Scenario::LeaderPartition => "leader-partition",
            Scenario::MinorityPartition => "minority-partition",
            Scenario::FlappingPartition => "flapping-partition",
            Scenario::LeaderPause => "leader-pause",
            Scenario::KillAll => "kill-all",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::EmptyDiskRejoin => "empty-disk-rejoin",
            Scenario::AgentPartition => "agent-partition",
            Scenario::PacketLoss => "packet-loss",
            Scenario::RegionDelay => "region-delay",
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// How long runnable jobs run: longer than the node TTL when an agent is cut off,
    /// so its attempts are declared lost while their processes still run.
    pub fn job_secs(self) -> f64 {
        if self == Scenario::AgentPartition {
            5.0
        } else {
            0.2
        }
    }

    fn settings(self, options: &RunOptions) -> ClusterSettings {
        ClusterSettings {
            // Tight timings make short runs; far-apart replicas need the default ones
            // (a LAN heartbeat of 100 ms is shorter than the delayed round trip).
            raft_profile: if self == Scenario::RegionDelay {
                "default".into()
            } else {
                "lan".into()
            },
            node_ttl: options.node_ttl,
            snapshot_every: options.snapshot_every,
            snapshot_logs_kept: options.snapshot_logs_kept,
        }
    }
}

/// Where the hosts run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Processes in Linux network namespaces ([`NetnsFabric`]).
    Netns,
    /// Containers of `image` ([`DockerFabric`]).
    Docker {
        /// The image (built from this repository; never pulled).
        image: String,
    },
}

/// How to run scenarios.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The fault backend.
    pub backend: Backend,
    /// The `tanvrit` binary (netns backend; containers run their image's).
    pub bin: PathBuf,
    /// Where data directories, logs and histories go.
    pub work_dir: PathBuf,
    /// Minutes per scenario instead of seconds.
    pub long: bool,
    /// Allow running outside the sandbox's private network namespace.
    pub no_sandbox: bool,
    /// How long a runnable job's process runs (default: [`Scenario::job_secs`]).
    pub job_secs: Option<f64>,
    /// `TANVRIT_NODE_TTL` for the replicas.
    pub node_ttl: Duration,
    /// `TANVRIT_SNAPSHOT_EVERY` for the replicas.
    pub snapshot_every: u64,
    /// `TANVRIT_SNAPSHOT_LOGS_KEPT` for the replicas.
    pub snapshot_logs_kept: u64,
}

/// What one scenario came to.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: &'static str,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// The longest time with no acknowledged write, in ms.
    pub unavailable_ms: u128,
    /// Leader elections seen (terms with a leader, beyond the first).
    pub elections: usize,
    /// Whether the replicas settled at one index before the check.
    pub settled: bool,
    /// Snapshots built and installed, over every replica and every process it ran.
    pub snapshots_built: u64,
    /// Snapshots installed from the leader: how often a replica caught up from one.
    pub snapshots_installed: u64,
    /// The highest applied index (log entries) a replica reached at the end.
    pub applied_index: u64,
    /// What the fault schedule observed on the way.
    pub notes: Vec<String>,
    /// Wall time of the whole scenario, in ms.
    pub wall_ms: u128,
}

impl ScenarioReport {
    /// The one-line verdict.
    pub fn line(&self) -> String {
        let v = &self.verdict;
        let reads: Vec<String> = v
            .reads_checked
            .iter()
            .map(|(level, n)| format!("{level}={n}"))
            .collect();
        let violations = if v.ok() {
            "none".to_string()
        } else {
            v.counts
                .iter()
                .map(|(kind, n)| format!("{kind}={n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{:<19} {} acked={} lost={} duplicated={} indeterminate={} refused={} \
             unavailable={}ms elections={} reads[{}] runs={} settled={} snapshots_built={} \
             snapshots_installed={} violations={} ({:.1}s)",
            self.scenario,
            if v.ok() { "PASS" } else { "FAIL" },
            v.acked,
            v.lost,
            v.duplicated,
            v.indeterminate,
            v.refused,
            self.unavailable_ms,
            self.elections,
            reads.join(" "),
            v.runs_checked,
            self.settled,
            self.snapshots_built,
            self.snapshots_installed,
            violations,
            self.wall_ms as f64 / 1000.0,
        )
    }
}

/// Runs one scenario on the chosen backend and checks it.
pub async fn run(scenario: Scenario, options: &RunOptions) -> Result<ScenarioReport, HarnessError> {
    let started = Instant::now();
    let dir = options.work_dir.join(scenario.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(crate::fabric::FabricError::from)?;
    }
    std::fs::create_dir_all(&dir).map_err(crate::fabric::FabricError::from)?;
    let hosts: Vec<String> = crate::harness::replica_hosts()
        .into_iter()
        .chain(crate::harness::agent_hosts())
        .collect();
    let fabric: Box<dyn Fabric> = match &options.backend {
        Backend::Netns => {
            Box::new(NetnsFabric::create(&options.bin, &dir, &hosts, options.no_sandbox).await?)
        }
        Backend::Docker { image } => Box::new(DockerFabric::create(image, &dir, &hosts).await?),
    };
    // On a failed start the fabric is dropped with the harness: its processes die with
    // it (kill_on_drop), the sandbox frees the namespaces, and the Docker fabric removes
    // its containers and networks when dropped.
    let harness = Harness::start(fabric, &scenario.settings(options)).await?;
    run_started(scenario, options, harness, &dir, started).await
}

async fn run_started(
    scenario: Scenario,
    options: &RunOptions,
    mut harness: Harness,
    dir: &Path,
    started: Instant,
) -> Result<ScenarioReport, HarnessError> {
    let run_log = dir.join("runs.log");
    std::fs::write(&run_log, "").map_err(crate::fabric::FabricError::from)?;
    let recorder = Recorder::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let config = WorkloadConfig {
        replicas: harness.urls(),
        api_key: crate::harness::ADMIN_KEY.into(),
        writers: 4,
        write_pause: Duration::from_millis(20),
        read_pause: Duration::from_millis(150),
        runnable_every: 4,
        job_secs: options.job_secs.unwrap_or(scenario.job_secs()),
        run_log: run_log.clone(),
        request_timeout: Duration::from_secs(3),
    };
    let (terms, watcher) = harness.watch_leaders(stop_rx.clone());
    let workload = tokio::spawn(workload::run(
        config,
        recorder.clone(),
        stop_rx.clone(),
        Duration::from_secs(15),
    ));
    let workload_start = recorder.now();
    let warmup = if options.long { 5 } else { 2 };
    tokio::time::sleep(Duration::from_secs(warmup)).await;

    let mut notes = Vec::new();
    let faults = inject(scenario, options, &mut harness, &mut notes).await;
    // Heal whatever the schedule left, even when it failed half-way.
    let healed = heal_all(&mut harness).await;
    let cooldown = if options.long { 10 } else { 3 };
    tokio::time::sleep(Duration::from_secs(cooldown)).await;
    let _ = stop_tx.send(true);
    let workload_end = recorder.now();
    let _ = workload.await;
    let _ = watcher.await;
    faults?;
    healed?;

    let (finals, settled) = harness.settle_and_collect(Duration::from_secs(60)).await?;
    let snapshots = harness.snapshot_counts().await;
    let runs = parse_runs(&std::fs::read_to_string(&run_log).unwrap_or_default());
    let history = recorder.history();
    let mut verdict = checker::check(&history, &finals, &runs);
    let seen = terms.lock().clone();
    if scenario == Scenario::Steady {
        let mut final_terms = Vec::new();
        for host in &harness.replicas {
            if let Some(view) = harness.raft_view(host).await {
                final_terms.push((host.clone(), view.term));
            }
        }
        checker::check_baseline(&mut verdict, &history, &seen, &final_terms);
    }
    let _ = std::fs::write(
        dir.join("history.json"),
        serde_json::to_vec(&history).unwrap_or_default(),
    );
    harness.fabric.teardown().await;
    Ok(ScenarioReport {
        scenario: scenario.name(),
        verdict,
        unavailable_ms: longest_write_gap(&history, workload_start, workload_end) / 1000,
        elections: seen.len().saturating_sub(1),
        settled,
        snapshots_built: snapshots.built,
        snapshots_installed: snapshots.installed,
        applied_index: finals.iter().map(|f| f.index).max().unwrap_or(0),
        notes,
        wall_ms: started.elapsed().as_millis(),
    })
}

/// The longest stretch of the workload with no submit acknowledged (in µs), counting
/// from the workload's start and to its end.
pub fn longest_write_gap(history: &History, start: u64, end: u64) -> u128 {
    let mut acks: Vec<u64> = history
        .events
        .iter()
        .filter(|e| matches!(e.op, Op::Submit { .. }))
        .filter(|e| matches!(e.outcome, Outcome::Submitted { .. }))
        .map(|e| e.completed.clamp(start, end))
        .collect();
    acks.push(start);
    acks.push(end);
    acks.sort_unstable();
    acks.windows(2)
        .map(|w| u128::from(w[1] - w[0]))
        .max()
        .unwrap_or(0)
}

async fn heal_all(harness: &mut Harness) -> Result<(), HarnessError> {
    harness.fabric.heal().await?;
    let hosts: Vec<String> = harness
        .replicas
        .iter()
        .chain(harness.agents.iter())
        .cloned()
        .collect();
    for host in &hosts {
        harness.fabric.set_loss(host, 0).await?;
        harness.fabric.set_delay(host, 0, 0).await?;
        harness.fabric.resume(host).await?;
        if !harness.fabric.is_running(host) {
            harness.restart(host).await?;
        }
    }
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The fault schedule. Short: one cycle (~10-15 s). Long: cycles for three minutes.
async fn inject(
    scenario: Scenario,
    options: &RunOptions,
    h: &mut Harness,
    notes: &mut Vec<String>,
) -> Result<(), HarnessError> {
    let until = Instant::now() + Duration::from_secs(180);
    let mut cycle = 0;
    loop {
        cycle += 1;
        one_cycle(scenario, options, h, notes, cycle).await?;
        if !options.long || Instant::now() >= until {
            return Ok(());
        }
    }
}

async fn leader(h: &Harness) -> Result<String, HarnessError> {
    h.leader(Duration::from_secs(20))
        .await
        .ok_or_else(|| HarnessError::Timeout("no leader within 20s".into()))
}

/// How long `host` (restarted on an empty disk) took to apply within 50 entries of the
/// leader; `None` if it did not within `within`.
async fn wait_caught_up(h: &Harness, host: &str, within: Duration) -> Option<Duration> {
    let restarted = Instant::now();
    while restarted.elapsed() < within {
        let here = h.raft_view(host).await.map(|v| v.applied);
        let there = match h.leader(secs(1.0)).await {
            Some(leader) if leader != host => h.raft_view(&leader).await.map(|v| v.applied),
            _ => None,
        };
        if let (Some(a), Some(b)) = (here, there) {
            if a > 0 && a + 50 >= b {
                return Some(restarted.elapsed());
            }
        }
        tokio::time::sleep(secs(0.2)).await;
    }
    None
}

/// Entries a stopped replica's log may have gained after the scrape that read where it
/// ended (a few milliseconds of writes).
const LOG_END_MARGIN: u64 = 10;

/// Waits (at most `within`) until the leader has purged its log past `index`: a replica
/// whose log ends at or before `index` can then catch up only by installing a snapshot.
/// How long it took; `None` if it did not happen in time.
async fn wait_purged_past(h: &Harness, index: u64, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(leader) = h.leader(secs(1.0)).await {
            if h.raft_view(&leader).await.is_some_and(|v| v.purged > index) {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(secs(0.1)).await;
    }
    None
}

/// Where `host`'s log ends, with [`LOG_END_MARGIN`]: read just before it is stopped.
async fn log_end(h: &Harness, host: &str) -> u64 {
    h.raft_view(host).await.map_or(0, |v| v.last_log) + LOG_END_MARGIN
}

async fn one_cycle(
    scenario: Scenario,
    options: &RunOptions,
    h: &mut Harness,
    notes: &mut Vec<String>,
    cycle: u32,
) -> Result<(), HarnessError> {
    match scenario {
        Scenario::Steady => {
            // As long as the other schedules' faults last.
            tokio::time::sleep(secs(12.0)).await;
            notes.push(format!("cycle {cycle}: no fault for 12 s"));
        }
        Scenario::LeaderKill => {
            let old = leader(h).await?;
            let killed = Instant::now();
            h.kill(&old).await?;
            let new = h.leader(Duration::from_secs(20)).await;
            notes.push(format!(
                "cycle {cycle}: killed leader {old}; new leader {new:?} seen after {} ms",
                killed.elapsed().as_millis()
            ));
            tokio::time::sleep(secs(3.0)).await;
            h.restart(&old).await?;
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::LeaderPartition => {
            let old = leader(h).await?;
            let majority: Vec<String> =
                h.others(&old).into_iter().chain(h.agents.clone()).collect();
            h.fabric
                .partition(&[vec![old.clone()], majority.clone()])
                .await?;
            tokio::time::sleep(secs(6.0)).await;
            let mut leaders = Vec::new();
            for host in &h.replicas {
                if let Some(view) = h.raft_view(host).await {
                    leaders.push(format!(
                        "{host}:term{}{}",
                        view.term,
                        if view.leader { ":leader" } else { "" }
                    ));
                }
            }
            notes.push(format!(
                "cycle {cycle}: isolated leader {old} for 6 s; then {}",
                leaders.join(" ")
            ));
            h.fabric.heal().await?;
            tokio::time::sleep(secs(2.0)).await;
        }
        Scenario::MinorityPartition => {
            let old = leader(h).await?;
            let follower = h.others(&old)[rand::rng().random_range(0..2)].clone();
            let rest: Vec<String> = h
                .others(&follower)
                .into_iter()
                .chain(h.agents.clone())
                .collect();
            h.fabric.partition(&[vec![follower.clone()], rest]).await?;
            tokio::time::sleep(secs(5.0)).await;
            h.fabric.heal().await?;
            notes.push(format!(
                "cycle {cycle}: isolated follower {follower} for 5 s"
            ));
            tokio::time::sleep(secs(2.0)).await;
        }
        Scenario::FlappingPartition => {
            let mut flips = 0;
            let end = Instant::now() + secs(10.0);
            while Instant::now() < end {
                let victim = h.replicas[rand::rng().random_range(0..h.replicas.len())].clone();
                let rest: Vec<String> = h
                    .others(&victim)
                    .into_iter()
                    .chain(h.agents.clone())
                    .collect();
                h.fabric.partition(&[vec![victim], rest]).await?;
                tokio::time::sleep(secs(rand::rng().random_range(0.3..1.5))).await;
                h.fabric.heal().await?;
                tokio::time::sleep(secs(rand::rng().random_range(0.2..1.0))).await;
                flips += 1;
            }
            notes.push(format!("cycle {cycle}: {flips} partitions"));
        }
        Scenario::LeaderPause => {
            let old = leader(h).await?;
            h.fabric.pause(&old).await?;
            tokio::time::sleep(secs(10.0)).await;
            h.fabric.resume(&old).await?;
            notes.push(format!("cycle {cycle}: paused leader {old} for 10 s"));
            tokio::time::sleep(secs(2.0)).await;
        }
        Scenario::KillAll => {
            // A follower dies first; the other two die once the leader purged its log
            // past the follower's, so after the restart the follower must install a
            // snapshot.
            let old = leader(h).await?;
            let first = h.others(&old)[rand::rng().random_range(0..2)].clone();
            let end = log_end(h, &first).await;
            h.kill(&first).await?;
            let purged = wait_purged_past(h, end, secs(10.0)).await;
            for host in h.others(&first) {
                h.kill(&host).await?;
            }
            tokio::time::sleep(secs(1.0)).await;
            let restarted = Instant::now();
            for host in h.replicas.clone() {
                h.restart(&host).await?;
            }
            let back = h.leader(Duration::from_secs(30)).await;
            notes.push(format!(
                "cycle {cycle}: killed follower {first}, the others {}; leader {back:?} {} ms \
                 after restart",
                purged.map_or(
                    "10 s later (the leader had not purged past it)".into(),
                    |d| { format!("{} ms later (the leader purged past it)", d.as_millis()) }
                ),
                restarted.elapsed().as_millis()
            ));
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::RollingRestart => {
            let mut down = Vec::new();
            for host in h.replicas.clone() {
                // Down for 0.5 s, and until the leader purged its log past this one's, so
                // each catches up by installing a snapshot (at most 10 s).
                let end = log_end(h, &host).await;
                let stopped = Instant::now();
                h.stop(&host).await?;
                tokio::time::sleep(secs(0.5)).await;
                let purged = wait_purged_past(h, end, secs(9.5)).await;
                down.push(format!(
                    "{host} {} ms{}",
                    stopped.elapsed().as_millis(),
                    if purged.is_some() {
                        ""
                    } else {
                        " (log not purged past it)"
                    }
                ));
                h.restart(&host).await?;
                // Next only once this one has a leader again (it serves requests).
                let deadline = Instant::now() + secs(20.0);
                while h.raft_view(&host).await.is_none() && Instant::now() < deadline {
                    tokio::time::sleep(secs(0.1)).await;
                }
                tokio::time::sleep(secs(1.0)).await;
            }
            notes.push(format!(
                "cycle {cycle}: stopped and restarted in turn, down: {}",
                down.join(", ")
            ));
        }
        Scenario::EmptyDiskRejoin => {
            // A follower first, then the leader itself (the others elect a new one).
            let old = leader(h).await?;
            let follower = h.others(&old)[rand::rng().random_range(0..2)].clone();
            for (role, host) in [("follower", follower), ("leader", old)] {
                h.kill(&host).await?;
                h.fabric.wipe(&host).await?;
                tokio::time::sleep(secs(1.0)).await;
                h.restart(&host).await?;
                let caught_up = wait_caught_up(h, &host, secs(20.0)).await;
                notes.push(format!(
                    "cycle {cycle}: wiped {role} {host}; caught up after {}",
                    caught_up.map_or("never (20 s)".into(), |d| format!("{} ms", d.as_millis()))
                ));
                tokio::time::sleep(secs(2.0)).await;
            }
        }
        Scenario::AgentPartition => {
            let agent = h.agents[0].clone();
            let hold = options.node_ttl + secs(3.0);
            h.fabric
                .partition(&[vec![agent.clone()], h.replicas.clone()])
                .await?;
            tokio::time::sleep(hold).await;
            h.fabric.heal().await?;
            notes.push(format!(
                "cycle {cycle}: cut agent {agent} off for {} ms (node TTL {} ms, jobs run {} s)",
                hold.as_millis(),
                options.node_ttl.as_millis(),
                options.job_secs.unwrap_or(scenario.job_secs())
            ));
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::PacketLoss => {
            for host in h.replicas.clone() {
                h.fabric.set_loss(&host, 10).await?;
            }
            tokio::time::sleep(secs(8.0)).await;
            for host in h.replicas.clone() {
                h.fabric.set_loss(&host, 0).await?;
            }
            notes.push(format!("cycle {cycle}: 10% loss on every replica for 8 s"));
        }
        Scenario::RegionDelay => {
            let far = h.replicas[0].clone();
            h.fabric.set_delay(&far, 40, 120).await?;
            tokio::time::sleep(secs(10.0)).await;
            let old = leader(h).await?;
            h.kill(&old).await?;
            tokio::time::sleep(secs(4.0)).await;
            h.restart(&old).await?;
            h.fabric.set_delay(&far, 0, 0).await?;
            notes.push(format!(
                "cycle {cycle}: {far} 40-120 ms away for 14 s; killed leader {old} meanwhile"
            ));
        }
    }
    Ok(())
}
