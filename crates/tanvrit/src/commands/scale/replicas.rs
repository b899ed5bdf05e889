//! The replicas `bench scale` measures: `tanvrit server` processes of this very binary
//! on loopback, each with a fresh data directory, retention off and its log kept in the
//! work directory; one single node, or the voters of a Raft cluster (plus, later, an
//! empty learner). Probes read their memory, disk and logs ([`super::probe`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tanvrit_api::{CreditEntryCreateRequest, EntryKind, Role};
use tanvrit_client::{Client, ClientConfig};

use super::probe::{self, LoggedStep, Memory};
use crate::commands::bench_process::{free_ports, Member};
use crate::commands::failover::BENCH_ADMIN_KEY;

/// The cluster secret of the Raft replicas this benchmark starts.
const BENCH_CLUSTER_SECRET: &str = "bench-cluster-secret-0123";
/// The business the benchmark's jobs are billed to.
pub const BUSINESS: &str = "bench-scale";

/// How to start the replicas.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Raft voters (0: a single node without Raft).
    pub voters: usize,
    /// The Raft timing profile (`default`, `lan`).
    pub profile: String,
    /// `TANVRIT_SNAPSHOT_EVERY`, when not the server's default.
    pub snapshot_every: Option<u64>,
    /// Where the data directories and logs go.
    pub dir: PathBuf,
}

/// One replica: its process and where its data and log are.
pub struct Replica {
    /// Its name (`r1`, ...).
    pub name: String,
    /// The process.
    pub(crate) member: Member,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// An SDK client for its API alone, no retries.
    pub client: Client,
}

impl Replica {
    /// Its memory now (none when it is not running).
    pub fn memory(&self) -> Option<Memory> {
        probe::memory(self.member.pid()?)
    }

    /// Its data directory's size on disk.
    pub fn disk_bytes(&self) -> u64 {
        probe::disk_usage(&self.data_dir)
    }

    /// The steps of `message` its log holds so far.
    pub fn logged(&self, message: &str) -> Vec<LoggedStep> {
        match &self.member.log {
            Some(path) => {
                probe::logged_steps(&std::fs::read_to_string(path).unwrap_or_default(), message)
            }
            None => Vec::new(),
        }
    }

    /// One unlabelled value of its `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let reply =
            tokio::time::timeout(Duration::from_secs(2), self.client.get_raw("/metrics", &[]))
                .await
                .ok()?
                .ok()?;
        probe::metric(&String::from_utf8_lossy(&reply.body), name)
    }

    /// The role it reports at `/readyz` (none while it does not answer).
    pub async fn role(&self) -> Option<Role> {
        let reply =
            tokio::time::timeout(Duration::from_secs(1), self.client.get_raw("/readyz", &[]))
                .await
                .ok()?
                .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
        serde_json::from_value(body.get("role")?.clone()).ok()
    }
}

/// A client of `urls` with the benchmark's admin key that never retries.
pub fn client(urls: &[String], timeout: Duration) -> anyhow::Result<Client> {
    Ok(Client::new(ClientConfig {
        endpoints: urls.to_vec(),
        api_key: Some(BENCH_ADMIN_KEY.into()),
        timeout,
        max_retries: 0,
        read_your_writes: false,
        ..ClientConfig::default()
    })?)
}

/// The replicas under test.
pub struct Replicas {
    settings: Settings,
    /// Every replica started, voters first.
    pub all: Vec<Replica>,
    /// `TANVRIT_PEERS` of the voters.
    peers: String,
}

impl Replicas {
    /// Starts the replicas and waits until they take a write (the business is topped up).
    pub async fn start(settings: Settings, within: Duration) -> anyhow::Result<Replicas> {
        let voters = settings.voters.max(1);
        let ports = free_ports(2 * voters)?;
        let peers = (0..voters)
            .map(|i| format!("r{}=127.0.0.1:{}", i + 1, ports[voters + i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut replicas = Replicas {
            settings,
            all: Vec::new(),
            peers,
        };
        for (i, &port) in ports.iter().take(voters).enumerate() {
            let name = format!("r{}", i + 1);
            let replica = replicas.replica(&name, port, &[])?;
            replicas.all.push(replica);
        }
        for replica in &mut replicas.all {
            replica.member.spawn()?;
        }
        replicas.wait_writable(within).await?;
        Ok(replicas)
    }

    /// A replica named `name` with its API on `port` (not started).
    fn replica(&self, name: &str, port: u16, extra: &[(&str, String)]) -> anyhow::Result<Replica> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let data_dir = self.settings.dir.join(name);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = vec![
            ("TANVRIT_BOOTSTRAP_KEY".into(), BENCH_ADMIN_KEY.into()),
            ("TANVRIT_RETENTION_JOBS".into(), "0".into()),
            // The timed steps (`built a snapshot ... ms=`) are logged at info.
            ("RUST_LOG".into(), "info".into()),
        ];
        if let Some(every) = self.settings.snapshot_every {
            env.push(("TANVRIT_SNAPSHOT_EVERY".into(), every.to_string()));
        }
        if self.settings.voters > 0 {
            env.extend([
                ("TANVRIT_CLUSTER_RAFT".into(), "true".into()),
                ("TANVRIT_PEERS".into(), self.peers.clone()),
                ("TANVRIT_REPLICA_ID".into(), name.into()),
                ("TANVRIT_CLUSTER_SECRET".into(), BENCH_CLUSTER_SECRET.into()),
                ("TANVRIT_RAFT_PROFILE".into(), self.settings.profile.clone()),
            ]);
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut member = Member::new(
            vec![
                exe.display().to_string(),
                "server".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--api-addr".into(),
                format!("127.0.0.1:{port}"),
            ],
            env,
            url.clone(),
        );
        member.log = Some(self.settings.dir.join(format!("{name}.log")));
        Ok(Replica {
            name: name.into(),
            member,
            data_dir,
            client: client(&[url], Duration::from_secs(30))?,
        })
    }

    /// The URLs of the voters.
    pub fn voter_urls(&self) -> Vec<String> {
        let voters = self.settings.voters.max(1);
        self.all
            .iter()
            .take(voters)
            .map(|r| r.member.url.clone())
            .collect()
    }

    /// The replica that leads (a single node always does), if one answers as leader.
    pub async fn leader(&self) -> Option<&Replica> {
        if self.settings.voters == 0 {
            return self.all.first();
        }
        for replica in &self.all {
            if replica.role().await == Some(Role::Leader) {
                return Some(replica);
            }
        }
        None
    }

    /// Waits until the leader takes a write (a top-up of the benchmark's business).
    async fn wait_writable(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.leader().await {
                let topped_up = leader
                    .client
                    .create_credit_entry(CreditEntryCreateRequest {
                        business: BUSINESS.into(),
                        kind: EntryKind::TopUp,
                        amount: 1_000_000_000_000_000,
                        idempotency_key: Some("bench-scale-top-up".into()),
                        note: Some("tanvrit bench scale".into()),
                    })
                    .await;
                if topped_up.is_ok() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the replicas took no write within {within:?} (logs in {})",
                self.settings.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs every replica.
    pub async fn kill_all(&mut self) {
        for replica in &mut self.all {
            replica.member.kill9().await;
        }
    }

    /// Starts every voter again on its ports and data directory.
    pub fn spawn_voters(&mut self) -> anyhow::Result<()> {
        let voters = self.settings.voters.max(1);
        for replica in self.all.iter_mut().take(voters) {
            replica.member.spawn()?;
        }
        Ok(())
    }

    /// Starts an empty replica `name` outside the voters (Raft id `id`), to be added
    /// with the membership API. Returns its index in [`Self::all`] and its Raft address.
    pub async fn spawn_empty(&mut self, name: &str, id: u64) -> anyhow::Result<(usize, String)> {
        let ports = free_ports(2)?;
        let raft_addr = format!("127.0.0.1:{}", ports[1]);
        let mut replica = self.replica(
            name,
            ports[0],
            &[
                ("TANVRIT_RAFT_NODE_ID", id.to_string()),
                ("TANVRIT_RAFT_ADDR", raft_addr.clone()),
            ],
        )?;
        replica.member.spawn()?;
        self.all.push(replica);
        Ok((self.all.len() - 1, raft_addr))
    }
}
