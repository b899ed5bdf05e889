//! [`AgentConfig`]: what the agent offers, where it keeps its state, and its timings;
//! plus the machine's defaults and the stable node id kept in `<data_dir>/node-id`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tanvrit_client::api::{NodeId, Resources};

use crate::isolation::IsolationConfig;
use crate::AgentError;

/// The file, inside the data directory, that holds the node id.
pub const NODE_ID_FILE: &str = "node-id";

/// How an agent behaves. [`AgentConfig::new`] fills in the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Holds `node-id` and the spool (`spool/`); made readable by the agent's user only
    /// (mode 0700). Without isolation it also holds the attempts' scratch directories
    /// (`work/<attempt>`).
    pub data_dir: PathBuf,
    /// The node's name for people. Default: the host name.
    pub name: String,
    /// Labels jobs can require.
    pub labels: BTreeMap<String, String>,
    /// What the node offers the scheduler. Default: [`machine_resources`].
    pub resources: Resources,
    /// Between SIGTERM and SIGKILL when an attempt is stopped (cancel, timeout, agent
    /// shutdown). Default 10 s. When the lease runs out, at most half the lease's margin
    /// (a tenth of the node TTL; see [`crate::lease`]).
    pub stop_grace: Duration,
    /// How long one work long poll may wait on the server (the server caps it). Default 30 s.
    pub poll_wait: Duration,
    /// First delay before retrying the control plane. Default 200 ms.
    pub backoff_base: Duration,
    /// Longest delay between retries. Default 5 s: well inside a node TTL, so an agent
    /// notices a restarted control plane before its node is declared down.
    pub backoff_max: Duration,
    /// Undelivered output kept on disk across all attempts; past it, the oldest
    /// undelivered bytes are dropped and a marker line says how many. Results are never
    /// dropped. Default 256 MiB.
    pub spool_limit_bytes: u64,
    /// Largest log chunk sent in one request. Default 64 KiB.
    pub log_chunk_bytes: usize,
    /// Output is sent at most this long after it was written (unless a whole chunk is
    /// ready sooner). Default 100 ms.
    pub log_flush_interval: Duration,
    /// After a shutdown has stopped every attempt, how long the agent keeps trying to
    /// deliver what is left before exiting; the rest stays in the spool for the next
    /// start. Default 5 s.
    pub shutdown_delivery: Duration,
    /// How attempts are kept apart. Default: cgroups and a uid per attempt.
    pub isolation: IsolationConfig,
    /// The `docker` CLI, to offer the `docker` driver (jobs naming an image); the agent
    /// refuses to start when the engine does not answer. Default `None`: `exec` only.
    pub docker: Option<PathBuf>,
    /// The node's GPU devices, by index or UUID; when given, the node offers that many
    /// GPUs and each attempt sees only its own in `CUDA_VISIBLE_DEVICES`. Default none.
    pub gpus: Vec<String>,
}

impl AgentConfig {
    /// The defaults for an agent keeping its state in `data_dir`, offering this machine.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            name: host_name(),
            labels: BTreeMap::new(),
            resources: machine_resources(),
            stop_grace: Duration::from_secs(10),
            poll_wait: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            spool_limit_bytes: 256 * 1024 * 1024,
            log_chunk_bytes: 64 * 1024,
            log_flush_interval: Duration::from_millis(100),
            shutdown_delivery: Duration::from_secs(5),
            isolation: IsolationConfig::default(),
            docker: None,
            gpus: Vec::new(),
        }
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub(crate) fn check(&self) -> Result<(), AgentError> {
        if self.name.is_empty() || self.name.len() > 256 {
            return Err(AgentError::Config(
                "the node name must be 1-256 bytes".into(),
            ));
        }
        if self.log_chunk_bytes < 16 {
            return Err(AgentError::Config(
                "log chunks must be at least 16 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// This machine: every core the process may use (x 1000 millicores), all memory (from
/// `/proc/meminfo`, in MB; 0 where that file does not exist), and no GPUs (they are
/// declared, not detected).
pub fn machine_resources() -> Resources {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_mb(&text))
        .unwrap_or(0);
    Resources {
        cpu_millis: cores * 1000,
        memory_mb,
        gpus: 0,
    }
}

/// `MemTotal:  16316412 kB` -> 15933.
fn mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// The host name, or `agent` when it cannot be read.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_string()
    } else {
        String::new()
    };
    if name.is_empty() {
        "agent".into()
    } else {
        name
    }
}

/// The node id stored in `<data_dir>/node-id`, created (`node-<uuid v7>`) on first use
/// and then never changed: an agent restarted on the same data directory is the same
/// node.
pub fn load_or_create_node_id(data_dir: &Path) -> Result<NodeId, AgentError> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !valid_node_id(id) {
                return Err(AgentError::Config(format!(
                    "{} holds `{id}`, not a node id (1-128 letters, digits, `-`, `_`, `.`, `:`)",
                    path.display()
                )));
            }
            Ok(NodeId::from(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| AgentError::io(data_dir, e))?;
            let id = format!("node-{}", uuid::Uuid::now_v7());
            write_atomically(&path, format!("{id}\n").as_bytes())?;
            Ok(NodeId(id))
        }
        Err(e) => Err(AgentError::io(&path, e)),
    }
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Writes `bytes` to a temporary file, syncs it, and renames it over `path`: readers see
/// the old content or the new, never half of it.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| AgentError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let first = load_or_create_node_id(&data).unwrap();
        assert!(first.as_str().starts_with("node-"), "{first}");
        assert_eq!(load_or_create_node_id(&data).unwrap(), first);
        std::fs::write(data.join(NODE_ID_FILE), "has spaces\n").unwrap();
        let err = load_or_create_node_id(&data).unwrap_err();
        assert_eq!(err.code(), "agent_config");
    }

    #[test]
    fn memory_comes_from_mem_total_in_megabytes() {
        let meminfo = "MemTotal:       16316412 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_mb(meminfo), Some(15933));
        assert_eq!(mem_total_mb("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn the_machine_offers_at_least_one_core() {
        let resources = machine_resources();
        assert!(resources.cpu_millis >= 1000);
        assert_eq!(resources.cpu_millis % 1000, 0);
        assert_eq!(resources.gpus, 0);
    }
}
