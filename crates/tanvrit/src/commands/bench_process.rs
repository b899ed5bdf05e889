//! The processes a benchmark starts itself (`bench failover`, `bench scale`): free
//! loopback ports, and [`Member`], one server process (`tanvrit server` of this very
//! binary, or an `etcd` member) that can be started, SIGKILLed and started again on the
//! same ports and data directory. Children are killed when dropped, so an error or an
//! interrupted benchmark leaves nothing running.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Free loopback ports (bound together, then released).
pub(crate) fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A new directory `tanvrit-<bench>-<pid>-<ms>` under `base` (default: the system temp
/// dir) for the members' data.
pub(crate) fn work_dir_for(bench: &str, base: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let base = base.unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "tanvrit-{bench}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// One member: how to start it, its client URL, and the running process.
pub(crate) struct Member {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Environment on top of this process's, minus every `TANVRIT_*` of ours; a
    /// `RUST_LOG` here wins over the default (`off`).
    pub env: Vec<(String, String)>,
    /// Its client URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// Where its stdout and stderr go (appended to, across restarts); none: discarded.
    pub log: Option<PathBuf>,
    /// The running process, if any.
    pub child: Option<Child>,
}

impl Member {
    /// A member that is not running yet.
    pub(crate) fn new(command: Vec<String>, env: Vec<(String, String)>, url: String) -> Member {
        Member {
            command,
            env,
            url,
            log: None,
            child: None,
        }
    }

    /// Starts the process.
    pub(crate) fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.command[0]);
        for (name, _) in std::env::vars() {
            if name.starts_with("TANVRIT_") {
                command.env_remove(name);
            }
        }
        let (stdout, stderr) = match &self.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command
            .args(&self.command[1..])
            .env("RUST_LOG", "off")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("cannot start {}", self.command[0]))?,
        );
        Ok(())
    }

    /// The running process's id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, and wait until the process is reaped.
    pub(crate) async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}
