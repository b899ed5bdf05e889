//! [`ServerConfig`]: the knobs of the HTTP API and the leader loops, with the defaults
//! DESIGN.md names.

use std::fmt;
use std::time::Duration;

use tanvrit_api::Rates;
use tanvrit_state::scheduler::Strategy;

use crate::limits::RateLimits;

/// How the API server and its leader loops behave. Every field has a default
/// ([`ServerConfig::default`]); build one with `..ServerConfig::default()` so new knobs
/// do not break callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest request body accepted; larger ones get 413 `body_too_large`. Default 1 MiB.
    pub body_limit_bytes: usize,
    /// Credit rates recorded on every job submitted (and held for at submission), and on
    /// every job a schedule fires. Default: all zero, so nothing is charged until an
    /// operator sets rates.
    pub rates: Rates,
    /// Longest a `min_index` or `strict` read waits for this replica to catch up before
    /// it answers 503 `not_caught_up`. Default 5 s.
    pub min_index_wait: Duration,
    /// Longest a long poll (`jobs/{id}/logs` with `wait_ms`, `nodes/{id}/work`) may hold
    /// a request. Default 30 s.
    pub long_poll_max: Duration,
    /// `Retry-After` sent with a 503 when the cluster layer gives no hint of its own.
    /// Default 1 s.
    pub retry_after: Duration,
    /// A node that has not heartbeated for this long is declared down and its attempts
    /// lost (retried per the job's `max_retries`). Agents are told to heartbeat every
    /// third of it. A new leader grants every node this long from when it took over.
    /// Default 15 s.
    pub node_ttl: Duration,
    /// How long a node may stay silent before its active attempts are declared lost and
    /// retried elsewhere (Nomad's `disconnect.lost_after`). After `node_ttl` the node is
    /// only down: it gets no new work, but what it runs stays its own, so an agent that
    /// outlives an outage of the whole control plane carries on and reports. Agents are
    /// told it, and stop their attempts before it runs out. Values up to `node_ttl`
    /// (`0` included) declare the work lost at the TTL, as before it existed.
    /// Default 5 min.
    pub node_lost_after: Duration,
    /// How the scheduler picks among nodes that fit a job: `BinPack` (the fullest that
    /// fits) or `Spread` (the emptiest). Default `BinPack`.
    pub scheduler_strategy: Strategy,
    /// Most placements the scheduler proposes in one `JobsAssign` log entry; a longer
    /// queue is placed in several entries back to back. Default 1000.
    pub max_placements_per_write: usize,
    /// Under a schedule's `skip` catch-up policy, a due time is still fired if the leader
    /// gets to it at most this late; older due times are recorded as skipped. Default 5 s.
    pub cron_skip_grace: Duration,
    /// When true this replica, as leader, fires no schedule (due times are handled once
    /// a leader without it takes over): for maintenance, and for tests that start old
    /// data whose schedules would otherwise fire. Default false.
    pub schedules_paused: bool,
    /// How long the answer to a write sent with an `Idempotency-Key` is kept: a retry
    /// within it gets the first answer, after it the key is free again. The window
    /// travels in each keyed command, so replicas agree whatever their own setting.
    /// Default 24 h.
    pub idempotency_window: Duration,
    /// Terminal jobs that ended longer ago than this are collected, with their attempts,
    /// logs and idempotency records, by the leader's retention loop (a replicated
    /// `JobsCollect`, so every replica removes the same jobs); a collected job answers
    /// 410 `job_expired`. Ledger entries are never collected. `Duration::ZERO` keeps
    /// every job (the loop does not run). Default 7 days.
    pub job_retention: Duration,
    /// How often the retention loop looks for jobs past `job_retention` (at once again
    /// while a batch leaves more behind). Default 30 s.
    pub retention_interval: Duration,
    /// The Raft cluster secret: sent in `X-Tanvrit-Cluster-Secret`, it authorizes the
    /// membership routes like an admin key (before a cluster is formed no key exists).
    /// Default `None`: only admin keys do.
    pub cluster_secret: Option<ClusterSecret>,
    /// Requests a second (and bursts) each key may make, by scope; over it a request is
    /// answered 429 `rate_limited` with `Retry-After`. Default: admin unlimited, user
    /// 100/s (bursts of 200), agent 1000/s (bursts of 2000).
    pub rate_limits: RateLimits,
    /// Long polls (`nodes/{id}/work`, `jobs/{id}/logs` with `wait_ms`) one key may hold
    /// open on this replica at once; past it, 429 `too_many_streams`. 0: unlimited.
    /// Default 64.
    pub max_streams_per_key: u32,
    /// A connection that has not sent a request's whole head this long after it started
    /// (or, between requests, after the last answer) is closed: slow-loris clients, and
    /// idle keep-alive connections. Default 10 s.
    pub header_read_timeout: Duration,
    /// A request's body must have arrived this long after the request started, or the
    /// request is answered 408 `body_timeout` and the connection closed. Default 30 s.
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted; a larger one is
    /// answered 431 and the connection closed. Default 64 KiB (at least 8 KiB).
    pub header_limit_bytes: usize,
    /// The cluster id client certificates are read in (`client-<name>.<cluster>.tanvrit`
    /// acts as `admin`, or as `user` of the business its `tanvrit:business:<id>` URI
    /// name gives) when a request over TLS carries no API key. `None`: certificates
    /// authenticate nobody; only keys do. Default `None`.
    pub client_cert_cluster: Option<String>,
    /// Whether the API is served over TLS, so leader hints name `https://` URLs (every
    /// replica of a cluster serves alike). [`crate::serve_tls`] sets it. Default false.
    pub api_https: bool,
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub String);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

impl ServerConfig {
    /// When a silent node's work is declared lost: `node_lost_after`, but never before
    /// the node is down.
    pub fn lost_after(&self) -> Duration {
        self.node_lost_after.max(self.node_ttl)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            rates: Rates::default(),
            min_index_wait: Duration::from_secs(5),
            long_poll_max: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
            node_ttl: Duration::from_secs(15),
            node_lost_after: Duration::from_secs(300),
            scheduler_strategy: Strategy::BinPack,
            max_placements_per_write: 1000,
            cron_skip_grace: Duration::from_secs(5),
            schedules_paused: false,
            idempotency_window: Duration::from_secs(24 * 3600),
            job_retention: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(30),
            cluster_secret: None,
            rate_limits: RateLimits::default(),
            max_streams_per_key: 64,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            header_limit_bytes: 64 * 1024,
            client_cert_cluster: None,
            api_https: false,
        }
    }
}
