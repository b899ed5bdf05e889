//! [`AgentError`]: why the agent cannot start or keep running, each with a stable code.

use std::path::PathBuf;

use tanvrit_client::ClientError;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory (node id, spool) cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The configuration cannot work (a stored node id is malformed, no server given...).
    #[error("{0}")]
    Config(String),
    /// The control plane refused the agent for good (e.g. its key lacks the agent scope).
    #[error("the control plane refused the agent: {0}")]
    Refused(ClientError),
    /// The isolation asked for (`--isolation cgroup`) cannot be had on this host.
    #[error("cannot isolate jobs: {0}")]
    Isolation(String),
}

impl AgentError {
    /// The stable code printed with the error.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::Io { .. } => "agent_io",
            AgentError::Config(_) => "agent_config",
            AgentError::Refused(_) => "agent_refused",
            AgentError::Isolation(_) => "agent_isolation_unavailable",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
}
