//! [`Fabric`]: what a fault backend must do to the hosts of a test cluster (start, kill,
//! pause, wipe, partition, lose and delay packets). Scenarios and the workload talk only
//! to this trait, so a backend ([`crate::netns`]: network namespaces; [`crate::docker`]:
//! containers) plugs in without touching them or the checker.

use std::path::PathBuf;

use async_trait::async_trait;

/// How to run a host's process: the `tanvrit` arguments and environment, and the
/// stdout line prefix that says it is ready (`listening on `, `registered node `).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Arguments after the binary.
    pub args: Vec<String>,
    /// Environment variables (the caller's `TANVRIT_*` are never inherited).
    pub env: Vec<(String, String)>,
    /// The stdout line prefix that means ready; the rest of that line is returned.
    pub ready_prefix: String,
}

/// Why a fabric operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// A command the backend runs (ip, nft, ...) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or the spawn error.
        message: String,
    },
    /// A process did not print its ready line in time, or exited first.
    #[error("{host} did not become ready: {message}")]
    NotReady {
        /// The host.
        host: String,
        /// What happened.
        message: String,
    },
    /// The host name is not part of this fabric.
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    /// The backend refuses to run here (e.g. outside its sandbox).
    #[error("unsafe environment: {0}")]
    Unsafe(String),
    /// A file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FabricError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            FabricError::Command { .. } => "fabric_command",
            FabricError::NotReady { .. } => "not_ready",
            FabricError::UnknownHost(_) => "unknown_host",
            FabricError::Unsafe(_) => "unsafe_environment",
            FabricError::Io(_) => "io",
        }
    }
}

/// Hosts on a private network that faults can be injected into. Hosts are named
/// (`r1`, `a1`, ...); the workload's clients reach every host's address, and partitions
/// cut hosts off from each other, never from the clients (a partitioned leader must
/// still be asked, to prove it acknowledges nothing).
#[async_trait]
pub trait Fabric: Send + Sync {
    /// The address (IP) of `host`, as the other hosts reach it (and the clients, unless
    /// [`Fabric::client_address`] says otherwise).
    fn address(&self, host: &str) -> Result<String, FabricError>;

    /// The address the workload's clients reach `host` at. A backend whose partitions
    /// take a host off its peers' network keeps the clients on a network of their own.
    fn client_address(&self, host: &str) -> Result<String, FabricError> {
        self.address(host)
    }

    /// The IP `host`'s API listens on: [`Fabric::address`], or a wildcard when the
    /// clients come in on another address.
    fn listen_address(&self, host: &str) -> Result<String, FabricError> {
        self.address(host)
    }

    /// The host's data directory (its process is told to use it).
    fn data_dir(&self, host: &str) -> Result<PathBuf, FabricError>;

    /// Starts `host`'s process and waits until it is ready; returns the rest of the
    /// ready line. The launch is remembered for [`Fabric::restart`].
    async fn start(&mut self, host: &str, launch: Launch) -> Result<String, FabricError>;

    /// Runs `host`'s process from the launch [`Fabric::start`] remembered and waits until
    /// it is ready; returns the rest of the ready line.
    async fn spawn(&mut self, host: &str) -> Result<String, FabricError>;

    /// Starts `host` again with its last launch (after a kill, a stop or a wipe).
    async fn restart(&mut self, host: &str) -> Result<String, FabricError> {
        if self.is_running(host) {
            self.kill(host).await?;
        }
        // A killed process's port (or container) may linger for a moment; retry briefly.
        let mut last = None;
        for _ in 0..20 {
            match self.spawn(host).await {
                Ok(rest) => return Ok(rest),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| FabricError::UnknownHost(host.to_string())))
    }

    /// SIGKILL: a crash, nothing flushed, nothing said.
    async fn kill(&mut self, host: &str) -> Result<(), FabricError>;

    /// SIGTERM and wait (bounded) for a clean exit.
    async fn stop(&mut self, host: &str) -> Result<(), FabricError>;

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    async fn pause(&mut self, host: &str) -> Result<(), FabricError>;

    /// Thaws a paused process (SIGCONT).
    async fn resume(&mut self, host: &str) -> Result<(), FabricError>;

    /// Deletes the host's data directory (an empty one takes its place); the host must
    /// be down.
    async fn wipe(&mut self, host: &str) -> Result<(), FabricError> {
        let dir = self.data_dir(host)?;
        if self.is_running(host) {
            return Err(FabricError::Unsafe(format!(
                "{host} is running; stop it first"
            )));
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(())
    }

    /// Whether the host's process is running (paused counts as running).
    fn is_running(&self, host: &str) -> bool;

    /// Cuts the network between groups: a host in one group cannot reach a host in
    /// another (both directions). Hosts in no group are unaffected. Replaces any earlier
    /// partition.
    async fn partition(&mut self, groups: &[Vec<String>]) -> Result<(), FabricError>;

    /// Removes every partition.
    async fn heal(&mut self) -> Result<(), FabricError>;

    /// Drops `percent` of the packets `host` sends (0 removes the loss).
    async fn set_loss(&mut self, host: &str, percent: u8) -> Result<(), FabricError>;

    /// Delays every packet `host` sends to the other hosts by a uniform random
    /// `min_ms..=max_ms` (0/0 removes the delay).
    async fn set_delay(&mut self, host: &str, min_ms: u32, max_ms: u32) -> Result<(), FabricError>;

    /// Stops every process and removes everything the fabric created.
    async fn teardown(&mut self);
}
