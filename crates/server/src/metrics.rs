//! `GET /metrics`: Prometheus metrics kept with `prometheus-client`.
//!
//! HTTP requests are counted as they finish; replica and domain gauges (applied index,
//! role, leader, jobs and nodes by state) are refreshed from the cluster at each scrape,
//! so they are never stale and cost nothing between scrapes. In Raft mode the cluster's
//! own numbers ([`ClusterService::raft_stats`]) are exported too, by [`RaftCollector`]:
//! `tanvrit_raft_leader_id`, `_is_leader`, `_leader_changes_total`, `_last_log_index`,
//! `_purged_index`, `_snapshot_index`, `_snapshots_built_total`, `_snapshots_written_total`,
//! `_snapshots_installed_total`, `_elections_triggered_total`, `_writes_total`,
//! `_writes_forwarded_total`, `_writes_failed_total`, `_write_entries_total` and
//! `_write_entry_commands_total` (their ratio is the leader's batch size), and the histograms
//! `tanvrit_raft_proposal_duration_seconds` (submit to receipt, forwarding included) and
//! `tanvrit_raft_commit_duration_seconds` (proposed by this leader to applied). The leader loops count
//! their work (placements, rounds, nodes lost, evictions, schedule fires and skips, loops
//! running) in [`LeaderMetrics`], handles into the same registry; the abuse limits
//! (`tanvrit_writes_refused_early_total`, `_auth_failures_total`, `_rate_limited_total`)
//! in [`AbuseMetrics`].
//!
//! `prometheus-client` writes OpenMetrics text. A scraper that asks for it (`Accept:
//! application/openmetrics-text`) gets it as is; everyone else (curl, `promtool check
//! metrics`) gets the classic Prometheus text format, into which
//! [`openmetrics_to_prometheus_text`] rewrites it (counter families named with their
//! `_total`, no `# UNIT` or `# EOF` lines).

mod abuse;

pub(crate) use abuse::AbuseMetrics;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tanvrit_api::{JobState, NodeState, Role};
use tanvrit_cluster::raft::LatencyHistogram;
use tanvrit_cluster::{ClusterService, RaftStats};

/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// What the leader loops count. Cheap to clone: every field is a shared handle into the
/// registry.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaderMetrics {
    /// Jobs placed by the scheduler (accepted placements).
    pub placements: Counter,
    /// Scheduler planning rounds.
    pub scheduler_rounds: Counter,
    /// Nodes declared down for missed heartbeats.
    pub nodes_lost: Counter,
    /// Draining nodes whose work was stopped at the drain deadline.
    pub node_evictions: Counter,
    /// Schedule due times that created a job.
    pub schedule_fires: Counter,
    /// Schedule due times recorded as skipped (catch-up, overlap, credits, disabled).
    pub schedule_skips: Counter,
    /// Jobs removed by retention (`JobsCollect` entries this replica proposed).
    pub jobs_collected: Counter,
    /// Leader loops running on this replica now (0 on followers).
    pub loops_running: Gauge,
}

/// The server's metrics registry.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    in_flight: Gauge,
    latency: HistogramFamily,
    applied_index: Gauge,
    commit_index: Gauge,
    term: Gauge,
    role: Family<RoleLabels, Gauge>,
    leader: Family<ReplicaLabels, Gauge>,
    jobs: Family<StateLabels, Gauge>,
    nodes: Family<StateLabels, Gauge>,
    leader_loops: LeaderMetrics,
    abuse: AbuseMetrics,
    /// The Raft numbers of the scrape in progress, read by the [`RaftCollector`].
    raft: Arc<Mutex<Option<RaftStats>>>,
    /// Serializes scrapes: each one refreshes the gauges, then encodes.
    scrape: Mutex<()>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s: covers quick reads and the longest log long poll.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

const NODE_STATES: [NodeState; 4] = [
    NodeState::Ready,
    NodeState::Draining,
    NodeState::Down,
    NodeState::Deleted,
];
const ROLES: [Role; 4] = [Role::Leader, Role::Follower, Role::Candidate, Role::Learner];

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("tanvrit");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being answered now (long polls included)",
            in_flight.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            Unit::Seconds,
            latency.clone(),
        );
        let applied_index = Gauge::default();
        registry.register(
            "raft_applied_index",
            "Last log index this replica applied",
            applied_index.clone(),
        );
        let commit_index = Gauge::default();
        registry.register(
            "raft_commit_index",
            "Last log index this replica knows to be committed",
            commit_index.clone(),
        );
        let term = Gauge::default();
        registry.register(
            "raft_term",
            "Current Raft term of this replica",
            term.clone(),
        );
        let role = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "raft_role",
            "1 for this replica's current role, 0 for the others",
            role.clone(),
        );
        let leader = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "raft_leader",
            "1 for the replica this one knows as leader (absent when none is known)",
            leader.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Jobs by state", jobs.clone());
        let nodes = Family::<StateLabels, Gauge>::default();
        registry.register("nodes", "Worker nodes by state", nodes.clone());
        let leader_loops = LeaderMetrics::default();
        registry.register(
            "scheduler_placements",
            "Jobs placed on nodes by the scheduler",
            leader_loops.placements.clone(),
        );
        registry.register(
            "scheduler_rounds",
            "Scheduler planning rounds",
            leader_loops.scheduler_rounds.clone(),
        );
        registry.register(
            "nodes_lost",
            "Nodes declared down after missing their heartbeats",
            leader_loops.nodes_lost.clone(),
        );
        registry.register(
            "node_evictions",
            "Draining nodes whose work was stopped at the drain deadline",
            leader_loops.node_evictions.clone(),
        );
        registry.register(
            "schedule_fires",
            "Schedule due times that created a job",
            leader_loops.schedule_fires.clone(),
        );
        registry.register(
            "schedule_skips",
            "Schedule due times recorded as skipped",
            leader_loops.schedule_skips.clone(),
        );
        registry.register(
            "jobs_collected",
            "Terminal jobs removed by retention on this replica's proposal",
            leader_loops.jobs_collected.clone(),
        );
        registry.register(
            "leader_loops_running",
            "Leader-only loops (scheduler, liveness, cron, retention) running on this replica",
            leader_loops.loops_running.clone(),
        );
        let abuse = AbuseMetrics::register(&mut registry);
        let raft = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(RaftCollector(raft.clone())));
        Self {
            registry,
            raft,
            requests,
            in_flight,
            latency,
            applied_index,
            commit_index,
            term,
            role,
            leader,
            jobs,
            nodes,
            leader_loops,
            abuse,
            scrape: Mutex::new(()),
        }
    }

    /// The leader loops' counters and gauge.
    pub(crate) fn leader_loops(&self) -> &LeaderMetrics {
        &self.leader_loops
    }

    /// The abuse limits' counters.
    pub(crate) fn abuse(&self) -> &AbuseMetrics {
        &self.abuse
    }

    /// Counts a request as in flight until the returned guard is dropped (also when the
    /// client goes away and the request's future is dropped mid-way).
    pub(crate) fn start_request(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts one answered request.
    pub(crate) fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Refreshes the gauges from the cluster and encodes everything.
    pub(crate) fn render(&self, cluster: &dyn ClusterService, openmetrics: bool) -> String {
        let _scrape = self.scrape.lock();
        let topology = cluster.topology();
        let this = topology
            .replicas
            .iter()
            .find(|replica| replica.name == topology.this_replica);
        let (job_counts, node_counts, applied) = cluster.reader().read(|state| {
            let mut nodes = [0i64; NODE_STATES.len()];
            for node in state.nodes() {
                if let Some(i) = NODE_STATES.iter().position(|s| *s == node.state) {
                    nodes[i] += 1;
                }
            }
            (state.job_counts(), nodes, state.applied_index())
        });
        let raft = cluster.raft_stats();
        self.applied_index.set(saturating_i64(applied));
        let (commit, term) = match &raft {
            Some(stats) => (stats.commit_index, stats.term),
            None => (
                this.map_or(applied, |r| r.commit_index),
                this.map_or(0, |r| r.term),
            ),
        };
        self.commit_index.set(saturating_i64(commit.max(applied)));
        self.term.set(saturating_i64(term));
        *self.raft.lock() = raft;
        let current = cluster.role();
        for role in ROLES {
            self.role
                .get_or_create(&RoleLabels {
                    role: role.as_str(),
                })
                .set(i64::from(role == current));
        }
        self.leader.clear();
        if let Some(leader) = cluster.leader_id() {
            self.leader
                .get_or_create(&ReplicaLabels { replica: leader })
                .set(1);
        }
        for state in JobState::ALL {
            let count = job_counts.get(&state).copied().unwrap_or(0);
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(saturating_i64(count));
        }
        for (state, count) in NODE_STATES.iter().zip(node_counts) {
            self.nodes
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(count);
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing into a String cannot fail; keep what was written if it somehow did.
            tracing::error!(%error, "encoding metrics failed");
        }
        if openmetrics {
            text
        } else {
            openmetrics_to_prometheus_text(&text)
        }
    }
}

/// Encodes the Raft numbers of the scrape in progress (nothing without Raft). They are
/// kept by the cluster, so they are encoded as they are rather than mirrored into
/// registry metrics.
#[derive(Debug)]
struct RaftCollector(Arc<Mutex<Option<RaftStats>>>);

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&saturating_i64(value))
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, f64>(&value, None)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &LatencyHistogram,
) -> std::fmt::Result {
    // The cluster keeps cumulative counts with a final `+Inf` slot; the encoder wants
    // per-bucket counts and `f64::MAX` for `+Inf`.
    let mut buckets = Vec::with_capacity(h.counts.len());
    let mut below = 0;
    for (i, cumulative) in h.counts.iter().enumerate() {
        let bound = h.bounds.get(i).copied().unwrap_or(f64::MAX);
        buckets.push((bound, cumulative.saturating_sub(below)));
        below = *cumulative;
    }
    encoder
        .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
}

impl Collector for RaftCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = self.0.lock().clone() else {
            return Ok(());
        };
        let e = &mut encoder;
        gauge(
            e,
            "raft_leader_id",
            "Raft id of the leader this replica follows or is (0 when none is known)",
            s.leader_id.unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_is_leader",
            "1 while this replica leads with a fresh quorum",
            u64::from(s.is_leader),
        )?;
        gauge(e, "raft_node_id", "This replica's Raft id", s.node_id)?;
        gauge(
            e,
            "raft_last_log_index",
            "Last index in this replica's log",
            s.last_log_index,
        )?;
        gauge(
            e,
            "raft_purged_index",
            "Last log index purged after a snapshot",
            s.purged_index,
        )?;
        gauge(
            e,
            "raft_snapshot_index",
            "Log index of the latest snapshot built or installed (0 if none)",
            s.snapshot_index,
        )?;
        counter(
            e,
            "raft_leader_changes",
            "New (term, leader) pairs seen since this replica started",
            s.leader_changes_total,
        )?;
        counter(
            e,
            "raft_elections_triggered",
            "Elections the failure detector called",
            s.elections_triggered_total,
        )?;
        counter(
            e,
            "raft_snapshots_built",
            "Snapshots this replica built (its tables made durable, the log purged behind)",
            s.snapshots_built_total,
        )?;
        counter(
            e,
            "raft_snapshots_written",
            "Snapshot files this replica wrote to send to a peer",
            s.snapshots_written_total,
        )?;
        counter(
            e,
            "raft_snapshots_installed",
            "Snapshots this replica installed from a leader",
            s.snapshots_installed_total,
        )?;
        counter(
            e,
            "raft_writes",
            "Writes submitted on this replica that were committed",
            s.writes_total,
        )?;
        counter(
            e,
            "raft_writes_forwarded",
            "Committed writes this replica forwarded to the leader",
            s.writes_forwarded_total,
        )?;
        counter(
            e,
            "raft_writes_failed",
            "Writes submitted on this replica that failed (no leader, shutting down, storage)",
            s.writes_failed_total,
        )?;
        counter(
            e,
            "raft_write_entries",
            "Log entries of client writes this replica proposed as leader",
            s.write_entries_total,
        )?;
        counter(
            e,
            "raft_write_entry_commands",
            "Commands carried by the write entries this replica proposed as leader",
            s.write_entry_commands_total,
        )?;
        histogram(
            e,
            "raft_proposal_duration",
            "Submit-to-receipt time of writes submitted on this replica (forwarding included)",
            &s.proposal_latency,
        )?;
        histogram(
            e,
            "raft_commit_duration",
            "Propose-to-applied time of writes this replica proposed as leader",
            &s.commit_latency,
        )
    }
}

/// Decrements the in-flight gauge when dropped.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// True when an `Accept` header asks for OpenMetrics.
pub(crate) fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text into the classic Prometheus text format (version 0.0.4).
///
/// The two differ, for what `prometheus-client` writes, in three ways: a counter family
/// is named without `_total` in OpenMetrics (its samples carry it) but with it in the
/// classic format; `# UNIT` lines and the closing `# EOF` exist only in OpenMetrics.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(line.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_registry_text() -> String {
        let metrics = Metrics::new();
        metrics.observe("/api/compute/jobs/list", 200, Duration::from_millis(3));
        metrics.observe("/api/compute/jobs/list", 200, Duration::from_millis(5));
        metrics.observe("unmatched", 404, Duration::from_micros(40));
        metrics
            .jobs
            .get_or_create(&StateLabels { state: "pending" })
            .set(2);
        *metrics.raft.lock() = Some(sample_raft_stats());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        text
    }

    fn sample_raft_stats() -> RaftStats {
        let bounds = tanvrit_cluster::raft::stats::LATENCY_BUCKETS.to_vec();
        // Two writes: one within 1 ms, one between 5 and 10 ms.
        let mut counts = vec![1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2];
        counts.truncate(bounds.len() + 1);
        let latency = LatencyHistogram {
            bounds,
            counts,
            sum_seconds: 0.0075,
            count: 2,
        };
        RaftStats {
            node_id: 2,
            term: 7,
            last_log_index: 42,
            commit_index: 41,
            applied_index: 40,
            leader_id: Some(3),
            is_leader: false,
            leader_changes_total: 4,
            elections_triggered_total: 1,
            writes_total: 2,
            writes_forwarded_total: 2,
            writes_failed_total: 0,
            write_entries_total: 3,
            write_entry_commands_total: 9,
            proposal_latency: latency.clone(),
            commit_latency: LatencyHistogram::default(),
            snapshots_built_total: 1,
            snapshots_written_total: 2,
            snapshots_installed_total: 0,
            snapshot_index: 30,
            purged_index: 20,
        }
    }

    #[test]
    fn raft_numbers_are_exported_when_the_cluster_has_them() {
        let text = openmetrics_to_prometheus_text(&sample_registry_text());
        for line in [
            "tanvrit_raft_leader_id 3\n",
            "tanvrit_raft_is_leader 0\n",
            "tanvrit_raft_leader_changes_total 4\n",
            "tanvrit_raft_write_entries_total 3\n",
            "tanvrit_raft_write_entry_commands_total 9\n",
            "# TYPE tanvrit_raft_leader_changes_total counter\n",
            "tanvrit_raft_snapshots_built_total 1\n",
            "tanvrit_raft_snapshots_written_total 2\n",
            "tanvrit_raft_snapshot_index 30\n",
            "# TYPE tanvrit_raft_proposal_duration_seconds histogram\n",
            "tanvrit_raft_proposal_duration_seconds_bucket{le=\"0.001\"} 1\n",
            "tanvrit_raft_proposal_duration_seconds_bucket{le=\"0.01\"} 2\n",
            "tanvrit_raft_proposal_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "tanvrit_raft_proposal_duration_seconds_count 2\n",
            "tanvrit_raft_commit_duration_seconds_count 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let metrics = Metrics::new();
        let mut plain = String::new();
        prometheus_client::encoding::text::encode(&mut plain, &metrics.registry).unwrap();
        assert!(!plain.contains("raft_leader_id"), "nothing without Raft");
    }

    #[test]
    fn counters_are_named_with_total_and_units_are_in_names() {
        let text = openmetrics_to_prometheus_text(&sample_registry_text());
        assert!(text.contains("# HELP tanvrit_http_requests_total HTTP requests answered"));
        assert!(text.contains("# TYPE tanvrit_http_requests_total counter\n"));
        assert!(text.contains(
            "tanvrit_http_requests_total{route=\"/api/compute/jobs/list\",status=\"200\"} 2\n"
        ));
        assert!(text.contains("# TYPE tanvrit_http_request_duration_seconds histogram\n"));
        assert!(
            text.contains("tanvrit_http_request_duration_seconds_count{route=\"unmatched\"} 1\n")
        );
        assert!(text.contains("# TYPE tanvrit_jobs gauge\n"));
        assert!(text.contains("tanvrit_jobs{state=\"pending\"} 2\n"));
        assert!(!text.contains("# UNIT"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn every_sample_family_has_help_and_type_lines() {
        let text = openmetrics_to_prometheus_text(&sample_registry_text());
        let mut typed = HashSet::new();
        let mut helped = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap().to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "no TYPE for {name}");
                assert!(helped.contains(family), "no HELP for {name}");
            }
        }
    }

    #[test]
    fn openmetrics_is_passed_through_only_when_asked_for() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
        let open = sample_registry_text();
        assert!(open.ends_with("# EOF\n"));
        assert!(open.contains("# TYPE tanvrit_http_requests counter\n"));
    }

    /// `promtool check metrics` is the judge of the format when it is installed (it is
    /// on the project's machines: Debian's `prometheus` package).
    #[test]
    fn promtool_accepts_the_prometheus_text() {
        let text = openmetrics_to_prometheus_text(&sample_registry_text());
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed; format checked by the other tests only");
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && report.trim().is_empty(),
            "promtool: {report}\n{text}"
        );
    }
}
