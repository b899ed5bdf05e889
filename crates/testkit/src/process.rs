//! The real `tanvrit` binary as a child process: [`ServerProcess`] started on
//! `127.0.0.1:0`, its address read from the `listening on` line it prints, killed with
//! SIGKILL and restarted on the same port and data directory; [`AgentProcess`], a
//! `tanvrit agent` whose node id is read from the `registered node` line it prints,
//! killed and restarted the same way.
//! [`ProcessCluster`] runs several servers as the replicas of one Raft cluster on
//! loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tanvrit_api::{CreditEntryCreateRequest, EntryKind, Role};
use tanvrit_client::{Client, ClientConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The admin key every test server is bootstrapped with.
pub const TEST_ADMIN_KEY: &str = "tvk-test-admin-0123456789abcdef";

/// How long a server may take to print `listening on` (a cold debug build is slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `tanvrit server` (or `dev`) child process.
pub struct ServerProcess {
    bin: PathBuf,
    mode: String,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    api_addr: String,
    child: Option<Child>,
    url: String,
    /// The CA this process's API certificate chains to, for the clients made here.
    ca_file: Option<PathBuf>,
    /// Where its stderr (its log) goes; `None`: the test's own stderr.
    log_file: Option<PathBuf>,
}

impl ServerProcess {
    /// Starts `bin server` on a free loopback port with `data_dir` and extra `env`.
    pub async fn start(bin: &Path, data_dir: &Path, env: &[(&str, &str)]) -> std::io::Result<Self> {
        Self::start_mode(bin, "server", data_dir, env).await
    }

    /// Starts `bin <mode>` (`server` or `dev`).
    pub async fn start_mode(
        bin: &Path,
        mode: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        Self::start_logged(bin, mode, data_dir, env, None).await
    }

    /// [`start_mode`](Self::start_mode) with its log (stderr) appended to `log_file`, for
    /// tests that check what a server says.
    pub async fn start_logged(
        bin: &Path,
        mode: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
        log_file: Option<&Path>,
    ) -> std::io::Result<Self> {
        let mut process = ServerProcess {
            bin: bin.to_path_buf(),
            mode: mode.to_string(),
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            api_addr: "127.0.0.1:0".into(),
            child: None,
            url: String::new(),
            ca_file: env
                .iter()
                .find(|(k, _)| *k == "TANVRIT_TLS_CA_FILE")
                .map(|(_, v)| PathBuf::from(v)),
            log_file: log_file.map(Path::to_path_buf),
        };
        process.spawn().await?;
        // Later restarts reuse the port the first start got, so clients keep their URL.
        process.api_addr = process
            .url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        Ok(process)
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new(&self.bin);
        // The test's own environment must not leak settings into the server.
        for (name, _) in std::env::vars() {
            if name.starts_with("TANVRIT_") {
                command.env_remove(name);
            }
        }
        command
            .arg(&self.mode)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-addr")
            .arg(&self.api_addr)
            .env("TANVRIT_BOOTSTRAP_KEY", TEST_ADMIN_KEY)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(match &self.log_file {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                ),
                None => Stdio::inherit(),
            })
            .kill_on_drop(true);
        let (child, url) = spawn_until_line(&mut command, "listening on ").await?;
        self.child = Some(child);
        self.url = url.trim().to_string();
        Ok(())
    }

    /// The server's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL, then wait for the process to be gone: a crash, no cleanup at all.
    pub async fn kill9(&mut self) {
        if let Some(child) = self.child.take() {
            kill9(child).await;
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit status code.
    pub async fn terminate(&mut self) -> Option<i32> {
        terminate(self.child.take()?).await
    }

    /// Starts the process again on the same address and data directory.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            self.kill9().await;
        }
        // The port can stay busy for a moment after a kill; retry briefly.
        let mut last = None;
        for _ in 0..50 {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("restart failed")))
    }

    /// An SDK client for this server with the admin key and `max_retries` retries.
    pub fn admin_client(&self, max_retries: u32) -> Client {
        self.client(TEST_ADMIN_KEY, max_retries)
    }

    /// An admin client (3 retries), after giving `business` `amount` credits: jobs
    /// reserve resources, so a test's business must be able to pay for them.
    pub async fn admin_with_credits(&self, business: &str, amount: i64) -> Client {
        let admin = self.admin_client(3);
        admin
            .create_credit_entry(CreditEntryCreateRequest {
                business: business.into(),
                kind: EntryKind::TopUp,
                amount,
                idempotency_key: Some(format!("test-top-up-{business}")),
                note: None,
            })
            .await
            .expect("top up the test business");
        admin
    }

    /// Creates a new key with the `agent` scope (through the API, as admin) and returns
    /// its secret.
    pub async fn agent_key(&self) -> String {
        self.admin_client(3)
            .create_key(tanvrit_api::KeyCreateRequest {
                name: Some("test agent".into()),
                scope: tanvrit_api::Scope::Agent,
                business: None,
                node: None,
            })
            .await
            .expect("an admin can create an agent key")
            .secret
    }

    /// The CA file clients of this server need (its `TANVRIT_TLS_CA_FILE`), if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// An SDK client for this server with `key`.
    pub fn client(&self, key: &str, max_retries: u32) -> Client {
        Client::new(ClientConfig {
            endpoints: vec![self.url.clone()],
            api_key: Some(key.to_string()),
            timeout: Duration::from_secs(10),
            max_retries,
            ca_file: self.ca_file.clone(),
            ..ClientConfig::default()
        })
        .expect("client config is valid")
    }
}

/// Spawns `command` with stdout piped and waits for a line starting with `prefix`;
/// returns the child and the rest of that line. Stdout keeps being drained afterwards
/// so the child never blocks on a full pipe.
async fn spawn_until_line(command: &mut Command, prefix: &str) -> std::io::Result<(Child, String)> {
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.to_string());
            }
        }
        Err(std::io::Error::other(format!(
            "the process exited before printing `{prefix}`"
        )))
    })
    .await
    .map_err(|_| std::io::Error::other(format!("no `{prefix}` line in time")))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, found))
}

/// SIGKILL a child and reap it.
async fn kill9(mut child: Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
}

/// SIGTERM a child and wait (bounded, 30 s) for it; its exit code.
async fn terminate(mut child: Child) -> Option<i32> {
    if let Some(pid) = child.id() {
        // SAFETY: as in `kill9`.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) => status.code(),
        _ => {
            let _ = child.kill().await;
            None
        }
    }
}

/// A `tanvrit agent` child process.
pub struct AgentProcess {
    bin: PathBuf,
    servers: String,
    key: String,
    data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    node_id: String,
}

impl Drop for AgentProcess {
    /// Kills the agent and removes what an agent killed that way leaves on the host: its
    /// node's cgroup (and any attempt's in it) and its default work directory.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        if self.node_id.is_empty() {
            return;
        }
        let node = tanvrit_api::NodeId(self.node_id.clone());
        if let Ok(own) = tanvrit_agent::cgroup::own_cgroup() {
            let cgroup = own.child(&tanvrit_agent::isolation::node_cgroup_name(&node));
            if cgroup.dirs().iter().any(|dir| dir.exists()) {
                cgroup.remove_children();
                cgroup.kill_and_remove();
            }
        }
        let work = Path::new(tanvrit_agent::isolation::DEFAULT_WORK_ROOT).join(&self.node_id);
        let _ = std::fs::remove_dir_all(work);
    }
}

impl AgentProcess {
    /// Starts `bin agent --server <servers> --data-dir <data_dir> <args...>` with the key
    /// in `TANVRIT_AGENT_KEY` (not in its argv, which every user of the host can read),
    /// and waits until it has registered its node (so the servers must be up).
    pub async fn start(
        bin: &Path,
        servers: &str,
        key: &str,
        data_dir: &Path,
        args: &[&str],
    ) -> std::io::Result<Self> {
        let mut agent = AgentProcess {
            bin: bin.to_path_buf(),
            servers: servers.to_string(),
            key: key.to_string(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            node_id: String::new(),
        };
        agent.spawn().await?;
        Ok(agent)
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new(&self.bin);
        for (name, _) in std::env::vars() {
            if name.starts_with("TANVRIT_") {
                command.env_remove(name);
            }
        }
        command
            .arg("agent")
            .arg("--server")
            .arg(&self.servers)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            // The secret in the environment, never in the arguments (`ps` shows those).
            .env("TANVRIT_API_KEY", &self.key)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let (child, rest) = spawn_until_line(&mut command, "registered node ").await?;
        self.node_id = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        self.child = Some(child);
        Ok(())
    }

    /// The agent key it runs with.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The node id it registered.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL: the agent dies without stopping its jobs or reporting anything.
    pub async fn kill9(&mut self) {
        if let Some(child) = self.child.take() {
            kill9(child).await;
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit status code.
    pub async fn terminate(&mut self) -> Option<i32> {
        terminate(self.child.take()?).await
    }

    /// Starts the agent again on the same data directory (the same node).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            self.kill9().await;
        }
        self.spawn().await
    }
}

/// The cluster secret of every [`ProcessCluster`].
pub const TEST_CLUSTER_SECRET: &str = "tanvrit-test-cluster-secret";

/// Replicas of one Raft cluster, each a `tanvrit server` process on loopback: API on a
/// free port (kept across restarts), replica RPC on a port reserved up front (every
/// replica must know its peers' addresses before any starts), data in `root/replica-N`.
pub struct ProcessCluster {
    replicas: Vec<ServerProcess>,
    peers: String,
    ca_file: Option<PathBuf>,
}

/// Free loopback ports, reserved by binding them all at once and then released.
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl ProcessCluster {
    /// Starts `count` replicas named `replica-1..=count` with `TANVRIT_PEERS` naming them
    /// all (they form the cluster by themselves), plus `env` (timings, profile, ...).
    pub async fn start(
        bin: &Path,
        root: &Path,
        count: usize,
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        Self::start_with(bin, root, count, env, None).await
    }

    /// [`start`](Self::start) over TLS: each replica serves its API over TLS and speaks
    /// mutual TLS to its peers with a certificate of `pki` (no cluster secret).
    pub async fn start_mtls(
        bin: &Path,
        root: &Path,
        count: usize,
        env: &[(&str, &str)],
        pki: &crate::TestPki,
    ) -> std::io::Result<Self> {
        Self::start_with(bin, root, count, env, Some(pki)).await
    }

    async fn start_with(
        bin: &Path,
        root: &Path,
        count: usize,
        env: &[(&str, &str)],
        pki: Option<&crate::TestPki>,
    ) -> std::io::Result<Self> {
        let ports = free_ports(count)?;
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("replica-{}=127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut replicas = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("replica-{}", i + 1);
            let tls = pki
                .map(|pki| pki.replica_env(i as u64 + 1))
                .unwrap_or_default();
            let mut all: Vec<(&str, &str)> = vec![
                ("TANVRIT_CLUSTER_RAFT", "true"),
                ("TANVRIT_PEERS", &peers),
                ("TANVRIT_REPLICA_ID", &name),
            ];
            if pki.is_none() {
                all.push(("TANVRIT_CLUSTER_SECRET", TEST_CLUSTER_SECRET));
            }
            all.extend(tls.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            all.extend_from_slice(env);
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            replicas.push(ServerProcess::start(bin, &dir, &all).await?);
        }
        Ok(ProcessCluster {
            replicas,
            peers,
            ca_file: pki.map(crate::TestPki::ca_file),
        })
    }

    /// Starts `replicas` replicas in the LAN profile (quiet unless `RUST_LOG` asks, as
    /// failovers make every replica log each 503), waits for a leader, then tops
    /// `business` up, retrying while the first leader writes the admin key.
    pub async fn start_funded(
        bin: &Path,
        root: &Path,
        replicas: usize,
        business: &str,
        patience: Duration,
    ) -> ProcessCluster {
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
        let env = [("TANVRIT_RAFT_PROFILE", "lan"), ("RUST_LOG", log.as_str())];
        let cluster = ProcessCluster::start(bin, root, replicas, &env)
            .await
            .expect("replicas start");
        cluster.leader(patience).await.expect("a leader is elected");
        let admin = cluster.admin_client(10);
        let deadline = Instant::now() + patience;
        loop {
            let topped = admin
                .create_credit_entry(CreditEntryCreateRequest {
                    business: business.into(),
                    kind: EntryKind::TopUp,
                    amount: 1_000_000_000_000,
                    idempotency_key: Some(format!("start-funded-{business}")),
                    note: None,
                })
                .await;
            match topped {
                Ok(_) => return cluster,
                Err(err) => assert!(Instant::now() < deadline, "cannot top up: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `TANVRIT_PEERS` value every replica was started with.
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// A free loopback port (for a replica started later).
    pub fn free_port() -> std::io::Result<u16> {
        Ok(free_ports(1)?[0])
    }

    /// How many replicas there are.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Replica `i` (0-based).
    pub fn replica(&self, i: usize) -> &ServerProcess {
        &self.replicas[i]
    }

    /// Replica `i` (0-based), to kill, stop or restart.
    pub fn replica_mut(&mut self, i: usize) -> &mut ServerProcess {
        &mut self.replicas[i]
    }

    /// Every replica's base URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.url().to_string()).collect()
    }

    /// An SDK client for every replica's URL with the admin key.
    pub fn admin_client(&self, max_retries: u32) -> Client {
        Client::new(ClientConfig {
            endpoints: self.urls(),
            api_key: Some(TEST_ADMIN_KEY.to_string()),
            timeout: Duration::from_secs(10),
            max_retries,
            ca_file: self.ca_file.clone(),
            ..ClientConfig::default()
        })
        .expect("client config is valid")
    }

    /// Replica `i`'s role as its `/readyz` says (`None` while it is down or knows no
    /// leader).
    pub async fn role(&self, i: usize) -> Option<Role> {
        let replica = &self.replicas[i];
        replica.pid()?;
        let client = Client::new(ClientConfig {
            endpoints: vec![replica.url().to_string()],
            timeout: Duration::from_secs(2),
            max_retries: 0,
            ca_file: self.ca_file.clone(),
            ..ClientConfig::default()
        })
        .ok()?;
        let answer = client.get_raw("/readyz", &[]).await.ok()?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
        serde_json::from_value(body.get("role")?.clone()).ok()
    }

    /// Polls until a running replica reports itself leader; its index, or `None` after
    /// `within`.
    pub async fn leader(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..self.replicas.len() {
                if self.role(i).await == Some(Role::Leader) {
                    return Some(i);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
