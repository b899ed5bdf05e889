//! [`ServerConfig`]: the knobs of the HTTP API, with the defaults DESIGN.md names.

use std::time::Duration;

use tanvrit_api::Rates;

/// How the API server behaves. Every field has a default ([`ServerConfig::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest request body accepted; larger ones get 413 `body_too_large`. Default 1 MiB.
    pub body_limit_bytes: usize,
    /// Credit rates recorded on every job submitted (and held for at submission).
    /// Default: all zero, so nothing is charged until an operator sets rates.
    pub rates: Rates,
    /// Longest a `min_index` or `strict` read waits for this replica to catch up before
    /// it answers 503 `not_caught_up`. Default 5 s.
    pub min_index_wait: Duration,
    /// Longest a `jobs/{id}/logs` long poll (`wait_ms`) may hold a request. Default 30 s.
    pub long_poll_max: Duration,
    /// `Retry-After` sent with a 503 when the cluster layer gives no hint of its own.
    /// Default 1 s.
    pub retry_after: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            rates: Rates::default(),
            min_index_wait: Duration::from_secs(5),
            long_poll_max: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
        }
    }
}
