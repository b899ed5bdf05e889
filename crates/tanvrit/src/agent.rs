//! `tanvrit agent`: a worker agent for one node, and the in-process agent `tanvrit dev`
//! starts against its own server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tanvrit_agent::uids::UidRange;
use tanvrit_agent::{Agent, AgentConfig, IsolationMode};
use tanvrit_api::{KeyCreateRequest, Node, Scope};
use tanvrit_client::{config::split_endpoints, Client, ClientConfig, ClientError};

use crate::cli::GlobalArgs;
use crate::parse;
use tanvrit_server::auth::SECRET_PREFIX;

/// The file in a dev data directory holding the local agent's key.
pub const DEV_AGENT_KEY_FILE: &str = "agent.key";
/// The dev agent's data directory, inside the replica's.
pub const DEV_AGENT_DIR: &str = "agent";

/// `--gpus`: device indexes or UUIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuDevices(pub Vec<String>);

fn parse_gpus(text: &str) -> Result<GpuDevices, String> {
    tanvrit_agent::gpus::parse_devices(text).map(GpuDevices)
}

/// `tanvrit agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server URL(s), comma-separated [default: --addr / TANVRIT_ADDR].
    #[arg(long, value_name = "URL[,URL...]")]
    pub server: Option<String>,
    /// The agent key (scope `agent`). Prefer the environment variable or --key-file: a
    /// flag's value is visible to every user of the host in /proc/<pid>/cmdline
    /// [default: --key-file, then --api-key / TANVRIT_API_KEY].
    #[arg(long, env = "TANVRIT_AGENT_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// A file holding the agent key (keep it mode 0600, outside the jobs' reach).
    #[arg(
        long,
        env = "TANVRIT_AGENT_KEY_FILE",
        value_name = "FILE",
        conflicts_with = "key"
    )]
    pub key_file: Option<PathBuf>,
    /// How jobs are kept apart. `cgroup`: each attempt in its own cgroup (memory, CPU
    /// quota and pids limits from its resources), as a uid of its own, in a private
    /// directory, with a clean environment; the agent refuses to start where it cannot.
    /// `none`: jobs run as the agent's own user with no limits.
    #[arg(
        long,
        env = "TANVRIT_AGENT_ISOLATION",
        value_name = "cgroup|none",
        default_value = "cgroup"
    )]
    pub isolation: IsolationMode,
    /// The uids jobs run as (one per running attempt, with a private group of the same
    /// number). Agents of one host share a range safely.
    #[arg(
        long,
        value_name = "FIRST-LAST",
        default_value = "2000000000-2000065535"
    )]
    pub job_uids: UidRange,
    /// Processes and threads one attempt may have at once.
    #[arg(long, default_value_t = tanvrit_agent::isolation::DEFAULT_PIDS_MAX)]
    pub pids_max: u64,
    /// The parent of the attempts' private working directories; every parent must be
    /// traversable by others, and none may be /tmp, /var/tmp or /dev/shm (each job has
    /// its own) [default: /var/lib/tanvrit/work/<node id>; with `--isolation none`,
    /// <data-dir>/work].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Where the node id, the spool of undelivered output and results, and the jobs'
    /// scratch directories live.
    #[arg(long, value_name = "DIR", default_value = "./tanvrit-agent-data")]
    pub data_dir: PathBuf,
    /// The node id to register as, kept in `<data-dir>/node-id` [default: the one kept
    /// there, else a new `node-<uuid>`]. An agent key created with `--node NAME` needs
    /// NAME here; a data directory that already holds another id is refused.
    #[arg(long, value_name = "ID", env = "TANVRIT_NODE_ID")]
    pub node_id: Option<String>,
    /// The node's name [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Node labels jobs can require: KEY=VALUE, comma-separated or repeated.
    #[arg(long, value_name = "KEY=VALUE,...", value_delimiter = ',', value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,
    /// CPU offered, in millicores [default: cores x 1000].
    #[arg(long)]
    pub cpu_millis: Option<u64>,
    /// Memory offered, in MB [default: the machine's total memory].
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// The node's GPU devices, by index or UUID, comma-separated (`0,1`,
    /// `GPU-8f3a...`): the node offers that many GPUs, and each attempt sees only the ones
    /// it was given in CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES; no two running
    /// attempts share one.
    #[arg(long, value_name = "ID[,ID...]", value_parser = parse_gpus)]
    pub gpus: Option<GpuDevices>,
    /// Offer the `docker` driver: jobs naming an `image` run in containers of the local
    /// Docker engine (images from its local store only), with the same limits, a
    /// non-root user and no network. The agent refuses to start if the engine does not
    /// answer.
    #[arg(long, env = "TANVRIT_AGENT_DOCKER")]
    pub docker: bool,
    /// The `docker` CLI the driver uses.
    #[arg(long, value_name = "PATH", default_value = tanvrit_agent::docker::DEFAULT_DOCKER_BIN)]
    pub docker_bin: PathBuf,
    /// Between SIGTERM and SIGKILL when an attempt is stopped (at most a tenth of the
    /// node TTL when the agent's lease runs out).
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub stop_grace: Duration,
    /// Longest wait between retries while the control plane is unreachable.
    #[arg(long, default_value = "5s", value_parser = parse::duration)]
    pub backoff_max: Duration,
    /// Undelivered output kept on disk, in MiB; past it the oldest is dropped (with a
    /// marker line). Results are never dropped.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub spool_limit_mib: u64,
    /// Output is sent at most this long after it was written (unless a whole chunk is
    /// ready sooner); starts and results are sent at once.
    #[arg(long, default_value = "100ms", value_parser = parse::duration)]
    pub log_flush_interval: Duration,
}

impl AgentArgs {
    /// The agent configuration these flags describe.
    pub fn agent_config(&self) -> AgentConfig {
        let mut config = AgentConfig::new(&self.data_dir);
        if let Some(name) = &self.name {
            config.name = name.clone();
        }
        config.labels = self.labels.iter().cloned().collect::<BTreeMap<_, _>>();
        if let Some(cpu) = self.cpu_millis {
            config.resources.cpu_millis = cpu;
        }
        if let Some(memory) = self.memory_mb {
            config.resources.memory_mb = memory;
        }
        if let Some(GpuDevices(devices)) = &self.gpus {
            config.gpus = devices.clone();
        }
        if self.docker {
            config.docker = Some(self.docker_bin.clone());
        }
        config.stop_grace = self.stop_grace;
        config.backoff_max = self.backoff_max;
        config.spool_limit_bytes = self.spool_limit_mib.saturating_mul(1024 * 1024);
        config.log_flush_interval = self.log_flush_interval;
        config.isolation.mode = self.isolation;
        config.isolation.job_uids = self.job_uids;
        config.isolation.pids_max = self.pids_max;
        config.isolation.work_root = self.work_dir.clone();
        config
    }

    /// The SDK client the agent talks through.
    pub fn client(&self, global: &GlobalArgs) -> Result<Client, ClientError> {
        let addr = self.server.as_deref().unwrap_or(&global.addr);
        let from_file = match &self.key_file {
            Some(path) => Some(crate::server::read_secret(path).ok_or_else(|| {
                ClientError::Config(format!("cannot read an agent key from {}", path.display()))
            })?),
            None => None,
        };
        let key = from_file
            .or_else(|| self.key.clone())
            .or_else(|| global.api_key.clone())
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ClientError::Config(
                    "the agent needs an agent key: TANVRIT_AGENT_KEY, --key-file \
                     (TANVRIT_AGENT_KEY_FILE), --key or TANVRIT_API_KEY"
                        .into(),
                )
            })?;
        agent_client(
            split_endpoints(addr),
            key,
            global.request_timeout,
            self.backoff_max,
            AgentTls {
                ca_file: global.ca_file.clone(),
                identity: global.identity(),
            },
        )
    }
}

/// A client tuned for an agent: a couple of retries inside each call (so a follower's
/// 503 moves on to the next endpoint), short backoffs, no read-your-writes token (the
/// agent reads nothing it wrote through another replica).
pub fn agent_client(
    endpoints: Vec<String>,
    key: String,
    timeout: Duration,
    backoff_max: Duration,
    tls: AgentTls,
) -> Result<Client, ClientError> {
    Client::new(ClientConfig {
        endpoints,
        api_key: Some(key),
        timeout,
        max_retries: 2,
        read_your_writes: false,
        backoff_base: Duration::from_millis(100),
        backoff_max: backoff_max.min(Duration::from_secs(1)),
        ca_file: tls.ca_file,
        identity: tls.identity,
    })
}

/// How an agent checks the control plane (`--ca-file`) and proves which machine it is
/// (`--client-cert`, an `agent-<node>.<cluster>.tanvrit` certificate).
#[derive(Clone, Debug, Default)]
pub struct AgentTls {
    /// The cluster CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// The agent's own certificate and key.
    pub identity: Option<tanvrit_client::config::ClientIdentity>,
}

/// Runs `tanvrit agent` until Ctrl-C or SIGTERM.
pub async fn run_agent(args: AgentArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--key" || a.starts_with("--key=")) {
        tracing::warn!(
            "the agent key was given with --key: every user of this host can read it in \
             /proc/<pid>/cmdline; use TANVRIT_AGENT_KEY or --key-file instead"
        );
    }
    let client = args.client(global)?;
    let servers = client.config().endpoints.join(",");
    if args.isolation == IsolationMode::None {
        eprintln!(
            "WARNING: --isolation none: jobs run as this agent's own user with no memory, CPU \
             or process limits, and can read its data directory and signal it; use it only \
             where every job is trusted"
        );
    }
    if let Some(id) = &args.node_id {
        keep_node_id(&args.data_dir, id)?;
    }
    let agent = Agent::new(client, args.agent_config())?;
    let isolation = agent.isolation().describe();
    agent
        .run(crate::server::shutdown_signal(), |node| {
            // Tests and scripts wait for this line's start.
            println!(
                "registered node {} ({}) with {servers}; isolation: {isolation}",
                node.id,
                describe(node)
            );
        })
        .await?;
    Ok(())
}

/// Writes `id` to `<data_dir>/node-id` unless it already holds it; another id there is
/// an error (the directory belongs to another node: its spool, its attempts).
pub fn keep_node_id(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let path = data_dir.join(tanvrit_agent::NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(kept) if kept.trim() == id => Ok(()),
        Ok(kept) => anyhow::bail!(
            "{} holds node id `{}`, not `{id}`: use another --data-dir for node `{id}`",
            path.display(),
            kept.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
}

/// `name: 2000 millicores, 7953 MB, 0 GPUs, labels a=b`.
pub fn describe(node: &Node) -> String {
    let mut text = format!(
        "{}: {} millicores, {} MB, {} GPUs",
        node.name, node.resources.cpu_millis, node.resources.memory_mb, node.resources.gpus
    );
    if !node.labels.is_empty() {
        let labels: Vec<String> = node
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        text.push_str(&format!(", labels {}", labels.join(",")));
    }
    text
}

/// The dev agent's key, bound to the dev agent's node (`<data_dir>/agent/node-id`): the
/// one kept in `<data_dir>/agent.key` while the server still lists it as a live agent
/// key for that node (or for none yet), else a new one (created with `admin`, then kept).
pub async fn dev_agent_key(admin: &Client, data_dir: &Path) -> Result<String, ClientError> {
    let node = tanvrit_agent::config::load_or_create_node_id(&data_dir.join(DEV_AGENT_DIR))
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let path = data_dir.join(DEV_AGENT_KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let secret = text.trim().to_string();
        let keys = admin.list_keys().await?;
        let live = keys.keys.iter().any(|k| {
            k.scope == Scope::Agent
                && k.revoked_at.is_none()
                && k.node.as_ref().is_none_or(|bound| *bound == node)
                && secret.starts_with(&format!("{SECRET_PREFIX}{}_", k.id))
        });
        if live && !secret.is_empty() {
            return Ok(secret);
        }
    }
    let created = admin
        .create_key(KeyCreateRequest {
            name: Some("tanvrit dev local agent".into()),
            scope: Scope::Agent,
            business: None,
            node: Some(node),
        })
        .await?;
    if let Err(e) = write_private(&path, &created.secret) {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep the dev agent key; a new one is made next time");
    }
    Ok(created.secret)
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_node_id_is_kept_and_another_in_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        keep_node_id(&data, "gpu-1").unwrap();
        let kept = std::fs::read_to_string(data.join(tanvrit_agent::NODE_ID_FILE)).unwrap();
        assert_eq!(kept.trim(), "gpu-1");
        keep_node_id(&data, "gpu-1").unwrap();
        let err = keep_node_id(&data, "gpu-2").unwrap_err();
        assert!(err.to_string().contains("holds node id `gpu-1`"), "{err}");
    }
}
