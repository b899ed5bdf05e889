//! [`ClientConfig`]: where the servers are, which key to use, and how hard to retry.

use std::path::PathBuf;
use std::time::Duration;

pub use tanvrit_tls::ClientIdentity;

use crate::ClientError;

/// Environment variable naming the server URL(s), comma-separated.
pub const ENV_ADDR: &str = "TANVRIT_ADDR";
/// Environment variable holding the API key.
pub const ENV_API_KEY: &str = "TANVRIT_API_KEY";
/// Environment variable naming the CA file `https://` servers are checked against.
pub const ENV_CA_FILE: &str = "TANVRIT_CA_FILE";
/// Environment variables naming a client certificate and its key, presented over TLS.
pub const ENV_CLIENT_CERT_FILE: &str = "TANVRIT_CLIENT_CERT_FILE";
/// See [`ENV_CLIENT_CERT_FILE`].
pub const ENV_CLIENT_KEY_FILE: &str = "TANVRIT_CLIENT_KEY_FILE";
/// The server a client talks to when nothing else is said.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

/// How a [`crate::Client`] reaches the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URLs of the replicas, e.g. `http://10.0.0.1:7070`. Calls go to one at a time
    /// and move on when a connection fails or a replica answers 503: to the leader the
    /// answer names, when its URL is one of these, else to the next.
    pub endpoints: Vec<String>,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Limit for one HTTP exchange (a long poll adds its own wait on top).
    pub timeout: Duration,
    /// Retries after the first attempt, for calls that are safe to repeat (see
    /// [`crate::Client`] for which are). Moving on from an endpoint that refused the
    /// connection to one not yet tried in the same call does not use a retry.
    pub max_retries: u32,
    /// Send reads that ask for `stale` consistency as `min_index` of the highest index this
    /// client has seen, so a read never misses this client's own earlier writes.
    pub read_your_writes: bool,
    /// First backoff between retries; it doubles per retry, with jitter.
    pub backoff_base: Duration,
    /// Longest backoff between retries, and longest `Retry-After` honoured.
    pub backoff_max: Duration,
    /// PEM CA bundle that `https://` servers' certificates must chain to (the cluster
    /// CA). `None`: the usual public roots.
    pub ca_file: Option<PathBuf>,
    /// A certificate (and key) to present when a server asks for one: an agent's
    /// `agent-<node>...` or an operator's `client-<name>...` certificate.
    pub identity: Option<ClientIdentity>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoints: vec![DEFAULT_ADDR.to_string()],
            api_key: None,
            timeout: Duration::from_secs(30),
            max_retries: 3,
            read_your_writes: true,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            ca_file: None,
            identity: None,
        }
    }
}

impl ClientConfig {
    /// The defaults, with `TANVRIT_ADDR` and `TANVRIT_API_KEY` from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The defaults, with `TANVRIT_ADDR` and `TANVRIT_API_KEY` taken from `lookup`
    /// (so callers and tests can supply an environment without touching the process's).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut config = Self::default();
        if let Some(addr) = lookup(ENV_ADDR).filter(|a| !a.trim().is_empty()) {
            config.endpoints = split_endpoints(&addr);
        }
        config.api_key = lookup(ENV_API_KEY).filter(|k| !k.is_empty());
        config.ca_file = lookup(ENV_CA_FILE)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        config.identity = lookup(ENV_CLIENT_CERT_FILE)
            .zip(lookup(ENV_CLIENT_KEY_FILE))
            .filter(|(c, k)| !c.is_empty() && !k.is_empty())
            .map(|(cert_file, key_file)| ClientIdentity {
                cert_file: cert_file.into(),
                key_file: key_file.into(),
            });
        config
    }

    /// The rustls configuration for `ca_file` and `identity`, if either is set (else the
    /// HTTP client's own, with the public roots). A file that does not read is a
    /// [`ClientError::Config`].
    pub(crate) fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, ClientError> {
        let tls = match (&self.ca_file, &self.identity) {
            (None, None) => return Ok(None),
            (Some(ca), identity) => tanvrit_tls::client_config(ca, identity.as_ref()),
            (None, Some(identity)) => tanvrit_tls::client::public_roots_config(identity),
        };
        tls.map(Some)
            .map_err(|e| ClientError::Config(format!("TLS: {e}")))
    }

    /// Checks the endpoints parse as http(s) URLs and returns them.
    pub(crate) fn parsed_endpoints(&self) -> Result<Vec<reqwest::Url>, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoint given".into()));
        }
        self.endpoints
            .iter()
            .map(|raw| {
                let url = reqwest::Url::parse(raw.trim())
                    .map_err(|e| ClientError::Config(format!("endpoint `{raw}`: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
                    return Err(ClientError::Config(format!(
                        "endpoint `{raw}` must be an http:// or https:// URL"
                    )));
                }
                Ok(url)
            })
            .collect()
    }
}

/// Splits a comma-separated address list; a bare `host:port` gets `http://`.
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lookup_reads_comma_separated_addresses_and_the_key() {
        let config = ClientConfig::from_lookup(|name| match name {
            ENV_ADDR => Some("http://a:1, b:2 ,".into()),
            ENV_API_KEY => Some("secret".into()),
            _ => None,
        });
        assert_eq!(config.endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(config.api_key.as_deref(), Some("secret"));
    }

    #[test]
    fn from_lookup_defaults_to_the_local_server_without_a_key() {
        let config = ClientConfig::from_lookup(|_| None);
        assert_eq!(config.endpoints, vec![DEFAULT_ADDR]);
        assert_eq!(config.api_key, None);
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        let mut config = ClientConfig {
            endpoints: vec!["ftp://x".into()],
            ..ClientConfig::default()
        };
        assert_eq!(config.parsed_endpoints().unwrap_err().code(), "config");
        config.endpoints.clear();
        assert_eq!(config.parsed_endpoints().unwrap_err().code(), "config");
    }
}
