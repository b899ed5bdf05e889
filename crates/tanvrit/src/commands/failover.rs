//! `tanvrit bench failover`: how long writes stop when the leader of a 3-member cluster
//! is killed with SIGKILL. It starts the cluster itself on loopback (`tanvrit server`
//! processes of this very binary, or `etcd` members), then, per round: finds the
//! leader, kills it, and measures from the moment the process is gone to the first
//! write acknowledged by a survivor (one prober per survivor, each sending a write as
//! soon as its previous one ended); then restarts the killed member and waits until
//! every member is healthy before the next round.
//!
//! etcd is driven through its HTTP/JSON gateway (`/v3/kv/put`, `/v3/maintenance/status`,
//! `/health`), the same way `bench etcd-put` drives it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use serde::Serialize;
use tanvrit_api::{
    BusinessId, CreditEntryCreateRequest, EntryKind, JobSpec, JobSubmitRequest, Role,
};
use tanvrit_client::{Client, ClientConfig};

use super::bench_process::{free_ports, work_dir_for, Member};

/// The admin key of the clusters this benchmark starts.
pub(crate) const BENCH_ADMIN_KEY: &str = "tvk-bench-admin-0123456789abcdef";
/// Probing writers per survivor after a kill.
const PROBERS: usize = 8;
/// Start offset between a survivor's probers.
const PROBE_STAGGER: Duration = Duration::from_millis(125);
/// Deadline of one probing write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a cluster to become healthy again.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// Which system to kill leaders of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverTarget {
    /// Three `tanvrit server` replicas in Raft mode.
    Tanvrit,
    /// Three `etcd` members.
    Etcd,
}

/// The failover figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    /// `tanvrit` or `etcd`.
    pub target: FailoverTarget,
    /// The timing profile (`default`, `lan`, or etcd's heartbeat/election in ms).
    pub profile: String,
    /// Kill-to-first-acknowledged-write of each round, in milliseconds.
    pub rounds_ms: Vec<f64>,
    /// Median of the rounds.
    pub median_ms: f64,
    /// Slowest round.
    pub max_ms: f64,
}

/// A cluster under test: its members and how to talk to it.
struct Cluster {
    target: FailoverTarget,
    members: Vec<Member>,
    http: reqwest::Client,
    /// One SDK client per tanvrit member (connections are reused across writes).
    clients: Vec<Client>,
}

impl Cluster {
    fn tanvrit(root: &Path, profile: &str) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let ports = free_ports(6)?;
        let peers = (0..3)
            .map(|i| format!("replica-{}=127.0.0.1:{}", i + 1, ports[3 + i]))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                command: vec![
                    exe.display().to_string(),
                    "server".into(),
                    "--data-dir".into(),
                    root.join(format!("replica-{}", i + 1))
                        .display()
                        .to_string(),
                    "--api-addr".into(),
                    format!("127.0.0.1:{}", ports[i]),
                ],
                env: vec![
                    ("TANVRIT_CLUSTER_RAFT".into(), "true".into()),
                    ("TANVRIT_PEERS".into(), peers.clone()),
                    ("TANVRIT_REPLICA_ID".into(), format!("replica-{}", i + 1)),
                    (
                        "TANVRIT_CLUSTER_SECRET".into(),
                        "bench-cluster-secret-0123".into(),
                    ),
                    ("TANVRIT_BOOTSTRAP_KEY".into(), BENCH_ADMIN_KEY.into()),
                    ("TANVRIT_RAFT_PROFILE".into(), profile.into()),
                ],
                url: format!("http://127.0.0.1:{}", ports[i]),
                log: None,
                child: None,
            })
            .collect();
        let clients = members
            .iter()
            .map(|m: &Member| Self::tanvrit_client(&m.url, Duration::from_secs(30)))
            .collect();
        Ok(Cluster {
            target: FailoverTarget::Tanvrit,
            members,
            http: reqwest::Client::new(),
            clients,
        })
    }

    fn etcd(
        root: &Path,
        bin: &Path,
        heartbeat_ms: u64,
        election_ms: u64,
    ) -> anyhow::Result<Cluster> {
        let ports = free_ports(6)?;
        let initial = (0..3)
            .map(|i| format!("e{}=http://127.0.0.1:{}", i + 1, ports[3 + i]))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..3)
            .map(|i| {
                let client = format!("http://127.0.0.1:{}", ports[i]);
                let peer = format!("http://127.0.0.1:{}", ports[3 + i]);
                Member {
                    command: vec![
                        bin.display().to_string(),
                        "--name".into(),
                        format!("e{}", i + 1),
                        "--data-dir".into(),
                        root.join(format!("e{}", i + 1)).display().to_string(),
                        "--listen-client-urls".into(),
                        client.clone(),
                        "--advertise-client-urls".into(),
                        client.clone(),
                        "--listen-peer-urls".into(),
                        peer.clone(),
                        "--initial-advertise-peer-urls".into(),
                        peer,
                        "--initial-cluster".into(),
                        initial.clone(),
                        "--initial-cluster-state".into(),
                        "new".into(),
                        "--initial-cluster-token".into(),
                        "tanvrit-bench".into(),
                        "--heartbeat-interval".into(),
                        heartbeat_ms.to_string(),
                        "--election-timeout".into(),
                        election_ms.to_string(),
                        "--log-level".into(),
                        "error".into(),
                    ],
                    env: Vec::new(),
                    url: client,
                    log: None,
                    child: None,
                }
            })
            .collect();
        Ok(Cluster {
            target: FailoverTarget::Etcd,
            members,
            http: reqwest::Client::new(),
            clients: Vec::new(),
        })
    }

    fn tanvrit_client(url: &str, timeout: Duration) -> Client {
        Client::new(ClientConfig {
            endpoints: vec![url.to_string()],
            api_key: Some(BENCH_ADMIN_KEY.into()),
            timeout,
            max_retries: 0,
            read_your_writes: false,
            ..ClientConfig::default()
        })
        .expect("a loopback URL is a valid endpoint")
    }

    /// Whether member `i` leads (`Some(false)`: it answers and does not).
    async fn leads(&self, i: usize) -> Option<bool> {
        let url = &self.members[i].url;
        self.members[i].child.as_ref()?;
        match self.target {
            FailoverTarget::Tanvrit => {
                let reply = tokio::time::timeout(
                    Duration::from_secs(1),
                    self.clients[i].get_raw("/readyz", &[]),
                )
                .await
                .ok()?
                .ok()?;
                let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
                let role: Role = serde_json::from_value(body.get("role")?.clone()).ok()?;
                Some(role == Role::Leader)
            }
            FailoverTarget::Etcd => {
                let reply: serde_json::Value = self
                    .http
                    .post(format!("{url}/v3/maintenance/status"))
                    .json(&serde_json::json!({}))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let me = reply.get("header")?.get("member_id")?.as_str()?;
                let leader = reply.get("leader")?.as_str()?;
                Some(me == leader)
            }
        }
    }

    /// Whether every member answers and one leads (tanvrit: each knows a leader).
    async fn healthy(&self) -> Option<usize> {
        let mut leader = None;
        for i in 0..self.members.len() {
            if self.leads(i).await? {
                leader = Some(i);
            }
        }
        leader
    }

    async fn wait_healthy(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some(leader) = self.healthy().await {
                // A write through the leader proves it serves (the admin key exists).
                if self.write(leader, 0, 0, Duration::from_secs(5)).await {
                    return Ok(leader);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the cluster was not healthy within {HEALTHY_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One write through member `i`; whether it was acknowledged within `timeout`.
    async fn write(&self, i: usize, prober: usize, n: u64, timeout: Duration) -> bool {
        match self.target {
            FailoverTarget::Tanvrit => {
                let submit = self.clients[i].submit_job(JobSubmitRequest {
                    business: Some(BusinessId::from("bench")),
                    spec: JobSpec {
                        command: vec!["true".into()],
                        ..JobSpec::default()
                    },
                    idempotency_key: Some(format!("failover-{}-{prober}-{n}", std::process::id())),
                });
                matches!(tokio::time::timeout(timeout, submit).await, Ok(Ok(_)))
            }
            FailoverTarget::Etcd => {
                let url = &self.members[i].url;
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = serde_json::json!({
                    "key": b64.encode(format!("failover/{prober}/{}", n % 1000)),
                    "value": b64.encode("x"),
                });
                match self
                    .http
                    .post(format!("{url}/v3/kv/put"))
                    .json(&body)
                    .timeout(timeout)
                    .send()
                    .await
                {
                    Ok(reply) => reply.status().is_success(),
                    Err(_) => false,
                }
            }
        }
    }

    /// Kills the leader and measures until a survivor acknowledges a write sent after.
    async fn round(&mut self, round: usize) -> anyhow::Result<Duration> {
        let leader = self.wait_healthy().await?;
        self.members[leader].kill9().await;
        let killed_at = Instant::now();
        let survivors: Vec<usize> = (0..self.members.len()).filter(|i| *i != leader).collect();
        // PROBERS per survivor, started PROBE_STAGGER apart, each writing again as soon
        // as its last write ended, each write given PROBE_TIMEOUT: a write sent while
        // there is no leader may hang until its timeout (etcd drops proposals without a
        // leader and answers at its request timeout), so staggered probers find the
        // first moment writes are taken again to within about a stagger / survivors.
        let this = &*self;
        let probers = survivors.iter().flat_map(|&i| {
            (0..PROBERS).map(move |p| async move {
                tokio::time::sleep(PROBE_STAGGER * p as u32).await;
                let mut n = 0u64;
                loop {
                    n += 1;
                    let id = round * 100 + i * PROBERS + p;
                    if this.write(i, id, n, PROBE_TIMEOUT).await {
                        return killed_at.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        });
        let first = futures::future::select_all(probers.map(Box::pin));
        let (elapsed, _, _) = tokio::time::timeout(HEALTHY_WITHIN, first)
            .await
            .context("no survivor acknowledged a write")?;
        self.members[leader].spawn()?;
        Ok(elapsed)
    }
}

/// Starts a cluster of `target` in a fresh directory under `work_dir`, runs `kills`
/// rounds, and stops it.
pub async fn run(
    target: FailoverTarget,
    kills: usize,
    profile: &str,
    etcd_bin: &Path,
    etcd_timing: (u64, u64),
    work_dir: Option<PathBuf>,
) -> anyhow::Result<FailoverReport> {
    let dir = work_dir_for("failover", work_dir)?;
    let (mut cluster, profile) = match target {
        FailoverTarget::Tanvrit => (Cluster::tanvrit(&dir, profile)?, profile.to_string()),
        FailoverTarget::Etcd => (
            Cluster::etcd(&dir, etcd_bin, etcd_timing.0, etcd_timing.1)?,
            format!(
                "heartbeat {} ms, election {} ms",
                etcd_timing.0, etcd_timing.1
            ),
        ),
    };
    for member in &mut cluster.members {
        member.spawn()?;
    }
    if target == FailoverTarget::Tanvrit {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let admin = Client::new(ClientConfig {
            endpoints: cluster.members.iter().map(|m| m.url.clone()).collect(),
            api_key: Some(BENCH_ADMIN_KEY.into()),
            max_retries: 0,
            ..ClientConfig::default()
        })?;
        while admin
            .create_credit_entry(CreditEntryCreateRequest {
                business: "bench".into(),
                kind: EntryKind::TopUp,
                amount: 1_000_000_000_000,
                idempotency_key: Some("failover-bench-top-up".into()),
                note: None,
            })
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "the cluster never took a write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut rounds = Vec::with_capacity(kills);
    for round in 0..kills {
        let took = cluster.round(round).await?;
        eprintln!(
            "{target:?} ({profile}) kill {}: first write after {took:?}",
            round + 1
        );
        rounds.push(took.as_secs_f64() * 1000.0);
    }
    cluster.wait_healthy().await?;
    for member in &mut cluster.members {
        member.kill9().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(FailoverReport {
        target,
        profile,
        max_ms: sorted.last().copied().unwrap_or(0.0),
        median_ms: median,
        rounds_ms: rounds,
    })
}
