//! [`TlsError`]: why a certificate, key or TLS configuration could not be used.

use std::path::PathBuf;

/// What went wrong loading or making TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable (no certificate, no key, or broken PEM).
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA
    /// bundle with no usable certificate).
    #[error("{0}")]
    Config(String),
    /// Making a certificate failed.
    #[error("cannot make the certificate: {0}")]
    Issue(String),
    /// A name that cannot go into a certificate (`replica-<id>.<cluster>.tanvrit`).
    #[error("{0}")]
    InvalidName(String),
}

impl TlsError {
    /// A stable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            TlsError::Io { .. } => "tls_io",
            TlsError::Pem { .. } => "tls_pem_invalid",
            TlsError::Config(_) => "tls_config_invalid",
            TlsError::Issue(_) => "tls_issue_failed",
            TlsError::InvalidName(_) => "tls_name_invalid",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TlsError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pem(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TlsError::Pem {
            path: path.into(),
            message: message.into(),
        }
    }
}
