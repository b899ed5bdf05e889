//! [`Harness`]: a 3-replica Raft cluster and two agents as hosts of a [`Fabric`]: how
//! each is launched, who leads (from `/metrics`), and the replicas' final states once the
//! cluster has settled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tanvrit_api::{
    BusinessId, Consistency, CreditBalanceRequest, CreditEntriesRequest, CreditEntryCreateRequest,
    EntryKind, Job, JobListRequest, KeyCreateRequest, Scope,
};
use tanvrit_client::{Client, ClientConfig, ClientError};
use tokio::sync::watch;

use crate::fabric::{Fabric, FabricError, Launch};
use crate::history::{JobRecord, LedgerRecord, ReplicaState};
use crate::workload::{BUSINESS, POOL_LABEL};

/// The admin key every replica is bootstrapped with.
pub const ADMIN_KEY: &str = "tvk-chaos-admin-0123456789abcdef";
const CLUSTER_SECRET: &str = "tanvrit-chaos-cluster-secret";
const API_PORT: u16 = 7070;
const RAFT_PORT: u16 = 7071;

/// Why the harness could not do its part (never a verdict on the cluster).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The fault backend failed.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// The cluster did not reach a state the harness waits for.
    #[error("{0}")]
    Timeout(String),
    /// An API call the harness needs failed.
    #[error("{0}")]
    Client(#[from] ClientError),
}

impl HarnessError {
    /// A stable code for the error.
    pub fn code(&self) -> &str {
        match self {
            HarnessError::Fabric(e) => e.code(),
            HarnessError::Timeout(_) => "timeout",
            HarnessError::Client(e) => e.code(),
        }
    }
}

/// Cluster settings a scenario may change.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `TANVRIT_RAFT_PROFILE` (`lan` or `default`).
    pub raft_profile: String,
    /// `TANVRIT_NODE_TTL`: an agent silent this long is declared down.
    pub node_ttl: Duration,
    /// `TANVRIT_SNAPSHOT_EVERY`: log entries between two snapshots (each replica adds a
    /// tenth per replica id beyond the first).
    pub snapshot_every: u64,
    /// `TANVRIT_SNAPSHOT_LOGS_KEPT`: log entries kept behind a snapshot; a replica that
    /// lags by more catches up by installing the leader's snapshot.
    pub snapshot_logs_kept: u64,
}

/// The host names of the replicas and the agents.
pub fn replica_hosts() -> Vec<String> {
    vec!["r1".into(), "r2".into(), "r3".into()]
}

/// The agents' host names.
pub fn agent_hosts() -> Vec<String> {
    vec!["a1".into(), "a2".into()]
}

/// A running cluster on a fabric.
pub struct Harness {
    /// The fault backend; scenarios inject faults through it.
    pub fabric: Box<dyn Fabric>,
    /// Replica host names, in Raft id order.
    pub replicas: Vec<String>,
    /// Agent host names.
    pub agents: Vec<String>,
    urls: Vec<(String, String)>,
    snapshots: SnapshotTally,
}

fn single(url: &str, timeout: Duration) -> Client {
    Client::new(ClientConfig {
        endpoints: vec![url.to_string()],
        api_key: Some(ADMIN_KEY.to_string()),
        timeout,
        max_retries: 0,
        read_your_writes: false,
        ..ClientConfig::default()
    })
    .expect("harness client config is valid")
}

/// Raft term and leadership as one replica's `/metrics` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftView {
    /// `tanvrit_raft_term`.
    pub term: u64,
    /// `tanvrit_raft_is_leader`.
    pub leader: bool,
    /// `tanvrit_raft_applied_index`.
    pub applied: u64,
    /// `tanvrit_raft_last_log_index`: where this replica's log ends.
    pub last_log: u64,
    /// `tanvrit_raft_purged_index`: the log is purged up to here (a snapshot holds it).
    pub purged: u64,
    /// `tanvrit_raft_snapshots_built_total` and `_installed_total` of this process.
    pub snapshots: SnapshotCounts,
}

impl RaftView {
    fn parse(text: &str) -> Option<RaftView> {
        Some(RaftView {
            term: metric(text, "tanvrit_raft_term")?,
            leader: metric(text, "tanvrit_raft_is_leader")? == 1,
            applied: metric(text, "tanvrit_raft_applied_index").unwrap_or(0),
            last_log: metric(text, "tanvrit_raft_last_log_index").unwrap_or(0),
            purged: metric(text, "tanvrit_raft_purged_index").unwrap_or(0),
            snapshots: SnapshotCounts {
                built: metric(text, "tanvrit_raft_snapshots_built_total").unwrap_or(0),
                installed: metric(text, "tanvrit_raft_snapshots_installed_total").unwrap_or(0),
            },
        })
    }
}

/// Raft snapshots built and installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotCounts {
    /// Snapshots a replica built from its own state.
    pub built: u64,
    /// Snapshots a replica installed from the leader (it lagged behind the leader's log).
    pub installed: u64,
}

impl std::ops::AddAssign for SnapshotCounts {
    fn add_assign(&mut self, other: SnapshotCounts) {
        self.built += other.built;
        self.installed += other.installed;
    }
}

/// One replica's snapshot counters over every process it ran.
#[derive(Clone, Copy, Debug, Default)]
struct Incarnations {
    /// The sum over the processes that are gone.
    ended: SnapshotCounts,
    /// The counters the running process last reported.
    current: SnapshotCounts,
    /// Whether `current` may be updated (false from just before a kill or stop until
    /// the restart).
    live: bool,
    /// Bumped whenever the process changes: a scrape begun under an older generation
    /// may describe a process that is gone, and is dropped.
    generation: u64,
}

/// Snapshots built and installed per replica, summed over its processes. The counters
/// of `/metrics` start at 0 in every process, so the harness scrapes a replica just
/// before it kills or stops it ([`Harness::kill`], [`Harness::stop`]), keeps what every
/// other scrape of it saw meanwhile (a crash the harness did not cause loses only what
/// happened since the last one), and sums.
#[derive(Clone, Debug, Default)]
pub struct SnapshotTally {
    replicas: Arc<Mutex<BTreeMap<String, Incarnations>>>,
}

impl SnapshotTally {
    fn new(replicas: &[String]) -> Self {
        let live = Incarnations {
            live: true,
            ..Incarnations::default()
        };
        SnapshotTally {
            replicas: Arc::new(Mutex::new(
                replicas.iter().map(|h| (h.clone(), live)).collect(),
            )),
        }
    }

    /// The generation of `host`'s process, to pass to [`SnapshotTally::observe`].
    fn generation(&self, host: &str) -> u64 {
        self.replicas.lock().get(host).map_or(0, |i| i.generation)
    }

    /// What a scrape begun at `generation` read from `host`.
    fn observe(&self, host: &str, generation: u64, counts: SnapshotCounts) {
        if let Some(i) = self.replicas.lock().get_mut(host) {
            if i.live && i.generation == generation {
                i.current = counts;
            }
        }
    }

    /// `host`'s process is going (or gone): bank what it reported.
    fn retire(&self, host: &str) {
        if let Some(i) = self.replicas.lock().get_mut(host) {
            i.ended += std::mem::take(&mut i.current);
            i.live = false;
            i.generation += 1;
        }
    }

    /// A new process of `host` runs, its counters from 0.
    fn revive(&self, host: &str) {
        if let Some(i) = self.replicas.lock().get_mut(host) {
            i.ended += std::mem::take(&mut i.current);
            i.live = true;
            i.generation += 1;
        }
    }

    /// The sum over every replica and process.
    pub fn total(&self) -> SnapshotCounts {
        let mut total = SnapshotCounts::default();
        for i in self.replicas.lock().values() {
            total += i.ended;
            total += i.current;
        }
        total
    }
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

impl Harness {
    /// Starts the replicas, waits for a leader, tops up the workload's business, creates
    /// an agent key and starts the agents.
    pub async fn start(
        mut fabric: Box<dyn Fabric>,
        settings: &ClusterSettings,
    ) -> Result<Self, HarnessError> {
        let replicas = replica_hosts();
        let agents = agent_hosts();
        let peers = replicas
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Ok(format!(
                    "replica-{}={}:{RAFT_PORT}",
                    i + 1,
                    fabric.address(h)?
                ))
            })
            .collect::<Result<Vec<_>, FabricError>>()?
            .join(",");
        let mut urls = Vec::new();
        // Agents reach the replicas where the replicas reach each other, so a partition
        // cuts them off too; the workload's clients come in on the client address.
        let mut peer_urls = Vec::new();
        for (i, host) in replicas.iter().enumerate() {
            let address = fabric.address(host)?;
            let launch = Launch {
                args: vec![
                    "server".into(),
                    "--data-dir".into(),
                    fabric.data_dir(host)?.display().to_string(),
                    "--api-addr".into(),
                    format!("{}:{API_PORT}", fabric.listen_address(host)?),
                ],
                env: [
                    // The API may listen on a wildcard; leader hints name the address
                    // the other replicas and the agents reach.
                    (
                        "TANVRIT_ADVERTISE_API_ADDR",
                        format!("{address}:{API_PORT}"),
                    ),
                    ("TANVRIT_CLUSTER_RAFT", "true".to_string()),
                    ("TANVRIT_PEERS", peers.clone()),
                    ("TANVRIT_REPLICA_ID", format!("replica-{}", i + 1)),
                    ("TANVRIT_CLUSTER_SECRET", CLUSTER_SECRET.to_string()),
                    ("TANVRIT_BOOTSTRAP_KEY", ADMIN_KEY.to_string()),
                    ("TANVRIT_RAFT_PROFILE", settings.raft_profile.clone()),
                    (
                        "TANVRIT_NODE_TTL",
                        format!("{}ms", settings.node_ttl.as_millis()),
                    ),
                    (
                        "TANVRIT_SNAPSHOT_EVERY",
                        settings.snapshot_every.to_string(),
                    ),
                    (
                        "TANVRIT_SNAPSHOT_LOGS_KEPT",
                        settings.snapshot_logs_kept.to_string(),
                    ),
                    ("RUST_LOG", "warn".to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                ready_prefix: "listening on ".into(),
            };
            fabric.start(host, launch).await?;
            urls.push((
                host.clone(),
                format!("http://{}:{API_PORT}", fabric.client_address(host)?),
            ));
            peer_urls.push(format!("http://{address}:{API_PORT}"));
        }
        let snapshots = SnapshotTally::new(&replicas);
        let harness = Harness {
            fabric,
            replicas,
            agents,
            urls,
            snapshots,
        };
        let admin = harness.admin_client();
        let topped = harness
            .patiently(Duration::from_secs(60), "the first write", || {
                admin.create_credit_entry(CreditEntryCreateRequest {
                    business: BusinessId::from(BUSINESS),
                    kind: EntryKind::TopUp,
                    amount: 1_000_000_000_000,
                    idempotency_key: Some("chaos-top-up".into()),
                    note: None,
                })
            })
            .await?;
        tracing::debug!(index = topped.index, "topped up");
        let servers = peer_urls.join(",");
        let mut harness = harness;
        for (i, agent) in harness.agents.clone().into_iter().enumerate() {
            // One key per agent: an agent key acts for the one node it registers first.
            let keyed = admin.with_idempotency_key(format!("chaos-agent-key-{agent}"));
            let key = harness
                .patiently(Duration::from_secs(30), "an agent key", || {
                    keyed.create_key(KeyCreateRequest {
                        name: Some(format!("chaos agent {agent}")),
                        scope: Scope::Agent,
                        business: None,
                        node: None,
                    })
                })
                .await?
                .secret;
            // The first agent is the one scenarios cut off (`agent-partition`); the others
            // have room to spare, so what is retried from it starts as soon as its node is
            // declared down, while its own processes would still run if nothing stopped
            // them (with every agent full, retries waited for slots that freed about when
            // those processes ended anyway, and an overlap was rarely caught).
            let cpu_millis = if i == 0 { "2000" } else { "8000" };
            let launch = Launch {
                args: vec![
                    "agent".into(),
                    "--server".into(),
                    servers.clone(),
                    "--data-dir".into(),
                    harness.fabric.data_dir(&agent)?.display().to_string(),
                    "--name".into(),
                    agent.clone(),
                    "--labels".into(),
                    format!("{}={}", POOL_LABEL.0, POOL_LABEL.1),
                    "--cpu-millis".into(),
                    cpu_millis.into(),
                    "--memory-mb".into(),
                    "2048".into(),
                    "--backoff-max".into(),
                    "1s".into(),
                    "--stop-grace".into(),
                    "2s".into(),
                    // The workload's runs record their end from a watcher that outlives
                    // the job's processes and appends to the harness's run log: an
                    // isolated attempt can do neither (docs/chaos.md, "Agents run
                    // without isolation").
                    "--isolation".into(),
                    "none".into(),
                ],
                env: vec![
                    ("RUST_LOG".into(), "warn".into()),
                    // Not in argv: /proc/<pid>/cmdline is readable by every user.
                    ("TANVRIT_AGENT_KEY".into(), key.clone()),
                ],
                ready_prefix: "registered node ".into(),
            };
            harness.fabric.start(&agent, launch).await?;
        }
        Ok(harness)
    }

    /// Retries `call` (any failure) until it succeeds or `within` passes.
    async fn patiently<T, F, Fut>(
        &self,
        within: Duration,
        what: &str,
        mut call: F,
    ) -> Result<T, HarnessError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + within;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if Instant::now() >= deadline => {
                    return Err(HarnessError::Timeout(format!(
                        "no {what} within {within:?}: {err}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Replica names and their API URLs.
    pub fn urls(&self) -> Vec<(String, String)> {
        self.urls.clone()
    }

    fn url(&self, host: &str) -> &str {
        self.urls
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, u)| u.as_str())
            .unwrap_or_default()
    }

    /// An admin client over every replica.
    pub fn admin_client(&self) -> Client {
        Client::new(ClientConfig {
            endpoints: self.urls.iter().map(|(_, u)| u.clone()).collect(),
            api_key: Some(ADMIN_KEY.to_string()),
            timeout: Duration::from_secs(5),
            max_retries: 0,
            read_your_writes: false,
            ..ClientConfig::default()
        })
        .expect("harness client config is valid")
    }

    /// Term and leadership of one replica, if it answers within a second.
    pub async fn raft_view(&self, host: &str) -> Option<RaftView> {
        let generation = self.snapshots.generation(host);
        let client = single(self.url(host), Duration::from_secs(1));
        let text = client.metrics_text().await.ok()?;
        let view = RaftView::parse(&text)?;
        self.snapshots.observe(host, generation, view.snapshots);
        Some(view)
    }

    /// `kill -9` of `host`, its snapshot counters scraped first.
    pub async fn kill(&mut self, host: &str) -> Result<(), HarnessError> {
        self.retire(host).await;
        Ok(self.fabric.kill(host).await?)
    }

    /// SIGTERM to `host` (a clean stop), its snapshot counters scraped first.
    pub async fn stop(&mut self, host: &str) -> Result<(), HarnessError> {
        self.retire(host).await;
        Ok(self.fabric.stop(host).await?)
    }

    /// Starts `host` again (killing it first if it runs), counting its snapshots from 0.
    pub async fn restart(&mut self, host: &str) -> Result<(), HarnessError> {
        self.retire(host).await;
        let started = self.fabric.restart(host).await;
        self.snapshots.revive(host);
        started?;
        Ok(())
    }

    /// Scrapes a running replica's snapshot counters one last time and banks them.
    async fn retire(&self, host: &str) {
        if self.fabric.is_running(host) {
            let _ = self.raft_view(host).await;
        }
        self.snapshots.retire(host);
    }

    /// Snapshots built and installed so far, summed over every replica and every process
    /// it ran (each running replica scraped now).
    pub async fn snapshot_counts(&self) -> SnapshotCounts {
        for host in &self.replicas {
            let _ = self.raft_view(host).await;
        }
        self.snapshots.total()
    }

    /// The replica that leads in the highest term any replica reports, polled until
    /// `within` passes.
    pub async fn leader(&self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let mut best: Option<(u64, String)> = None;
            for host in &self.replicas {
                if let Some(view) = self.raft_view(host).await {
                    if view.leader && best.as_ref().is_none_or(|(t, _)| view.term > *t) {
                        best = Some((view.term, host.clone()));
                    }
                }
            }
            if let Some((_, host)) = best {
                return Some(host);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replicas other than `host`.
    pub fn others(&self, host: &str) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|h| *h != host)
            .cloned()
            .collect()
    }

    /// Watches every replica's `/metrics` until `stop`; the terms in which some replica
    /// was seen leading. Each scrape also updates the snapshot tally.
    pub fn watch_leaders(
        &self,
        stop: watch::Receiver<bool>,
    ) -> (Arc<Mutex<BTreeSet<u64>>>, tokio::task::JoinHandle<()>) {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let urls = self.urls.clone();
        let record = seen.clone();
        let snapshots = self.snapshots.clone();
        let task = tokio::spawn(async move {
            let clients: Vec<Client> = urls
                .iter()
                .map(|(_, u)| single(u, Duration::from_millis(800)))
                .collect();
            while !*stop.borrow() {
                for ((host, _), client) in urls.iter().zip(&clients) {
                    let generation = snapshots.generation(host);
                    let Ok(text) = client.metrics_text().await else {
                        continue;
                    };
                    if let Some(view) = RaftView::parse(&text) {
                        snapshots.observe(host, generation, view.snapshots);
                        if view.leader {
                            record.lock().insert(view.term);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (seen, task)
    }

    /// Waits until every replica answers at one applied index with no runnable job left
    /// unfinished (bounded), then returns each replica's state. After `within`, returns
    /// what it last read, so the checker judges any replica that never caught up.
    pub async fn settle_and_collect(
        &self,
        within: Duration,
    ) -> Result<(Vec<ReplicaState>, bool), HarnessError> {
        let deadline = Instant::now() + within;
        loop {
            let mut states = Vec::new();
            let mut busy = false;
            let mut failed = None;
            for (host, url) in &self.urls {
                match read_state(host, url).await {
                    Ok((state, unfinished)) => {
                        busy |= unfinished;
                        states.push(state);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            let settled =
                failed.is_none() && !busy && states.windows(2).all(|w| w[0].index == w[1].index);
            if settled {
                return Ok((states, true));
            }
            if Instant::now() >= deadline {
                return match failed {
                    Some(e) => Err(e),
                    None => Ok((states, false)),
                };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One replica's jobs, ledger and balance, read `stale` from it alone; all three reads
/// at one applied index (retried briefly otherwise). Also whether runnable jobs remain
/// unfinished.
async fn read_state(host: &str, url: &str) -> Result<(ReplicaState, bool), HarnessError> {
    let client = single(url, Duration::from_secs(10));
    let business = BusinessId::from(BUSINESS);
    for _ in 0..20 {
        let mut jobs: Vec<Job> = Vec::new();
        let mut after = None;
        let mut index = None;
        let mut consistent = true;
        loop {
            let page = client
                .list_jobs(JobListRequest {
                    consistency: Consistency::Stale,
                    business: Some(business.clone()),
                    limit: Some(1000),
                    after: after.clone(),
                    ..JobListRequest::default()
                })
                .await?;
            consistent &= *index.get_or_insert(page.index) == page.index;
            jobs.extend(page.jobs);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut ledger = Vec::new();
        loop {
            let page = client
                .credit_entries(CreditEntriesRequest {
                    consistency: Consistency::Stale,
                    business: Some(business.clone()),
                    after_seq: ledger.last().map(|e: &LedgerRecord| e.seq),
                    limit: Some(10_000),
                    ..CreditEntriesRequest::default()
                })
                .await?;
            consistent &= index == Some(page.index);
            if page.entries.is_empty() {
                break;
            }
            ledger.extend(page.entries.iter().map(LedgerRecord::from));
        }
        let balance = client
            .credit_balance(CreditBalanceRequest {
                consistency: Consistency::Stale,
                business: Some(business.clone()),
            })
            .await?;
        consistent &= index == Some(balance.index);
        if !consistent {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Runnable jobs still queued or running would change the state under the check.
        let unfinished = jobs.iter().any(|j| {
            j.spec.labels.get(POOL_LABEL.0).map(String::as_str) == Some(POOL_LABEL.1)
                && !j.state.is_terminal()
        });
        return Ok((
            ReplicaState {
                replica: host.to_string(),
                index: index.unwrap_or(0),
                jobs: jobs.iter().map(JobRecord::from).collect(),
                ledger,
                available: balance.available,
            },
            unfinished,
        ));
    }
    Err(HarnessError::Timeout(format!(
        "{host} kept applying while its state was read"
    )))
}

/// Where a scenario keeps its files.
pub fn scenario_dir(root: &std::path::Path, scenario: &str) -> PathBuf {
    root.join(scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(built: u64, installed: u64) -> SnapshotCounts {
        SnapshotCounts { built, installed }
    }

    #[test]
    fn metrics_text_gives_the_raft_view_and_the_snapshot_counters() {
        let text = "# HELP tanvrit_raft_term The term.\n# TYPE tanvrit_raft_term gauge\n\
                    tanvrit_raft_term 4\ntanvrit_raft_is_leader 1\n\
                    tanvrit_raft_applied_index 812\n\
                    tanvrit_raft_last_log_index 814\ntanvrit_raft_purged_index 780\n\
                    tanvrit_raft_snapshots_built_total 7\n\
                    tanvrit_raft_snapshots_installed_total 2\n";
        let view = RaftView::parse(text).unwrap();
        assert_eq!((view.term, view.leader, view.applied), (4, true, 812));
        assert_eq!((view.last_log, view.purged), (814, 780));
        assert_eq!(view.snapshots, counts(7, 2));
    }

    #[test]
    fn snapshot_counts_add_up_over_restarts_and_drop_scrapes_of_a_gone_process() {
        let tally = SnapshotTally::new(&["r1".into(), "r2".into()]);
        let before_kill = tally.generation("r1");
        tally.observe("r1", before_kill, counts(3, 0));
        tally.observe("r2", tally.generation("r2"), counts(2, 1));
        // r1 is killed: what it reported is banked. A scrape begun before, or one that
        // reaches it while it is down, says nothing of the next process.
        tally.retire("r1");
        tally.observe("r1", before_kill, counts(4, 0));
        tally.observe("r1", tally.generation("r1"), counts(9, 9));
        tally.revive("r1");
        tally.observe("r1", tally.generation("r1"), counts(1, 1));
        assert_eq!(tally.total(), counts(3 + 2 + 1, 1 + 1));
        // A replica restarted without a retire (it died on its own) keeps its last report.
        tally.revive("r2");
        tally.observe("r2", tally.generation("r2"), counts(1, 0));
        assert_eq!(tally.total(), counts(7, 2));
    }
}
