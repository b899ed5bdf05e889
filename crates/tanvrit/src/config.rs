//! The replica's configuration: one TOML file, overridden by `TANVRIT_*` environment
//! variables, overridden by flags (figment merges the three; nothing is merged by hand).
//!
//! | TOML key | environment | default |
//! |---|---|---|
//! | `data_dir` | `TANVRIT_DATA_DIR` | `./tanvrit-data` |
//! | `api_addr` | `TANVRIT_API_ADDR` | `127.0.0.1:7070` |
//! | `raft_addr` | `TANVRIT_RAFT_ADDR` | this replica's `peers` entry, else `127.0.0.1:7071` |
//! | `advertise_api_addr` | `TANVRIT_ADVERTISE_API_ADDR` | the bound `api_addr` |
//! | `replica_id` | `TANVRIT_REPLICA_ID` | `replica-1` |
//! | `replica_region` | `TANVRIT_REPLICA_REGION` | `local` |
//! | `cluster_id` | `TANVRIT_CLUSTER_ID` | `local` |
//! | `compute.cluster.raft` | `TANVRIT_CLUSTER_RAFT` | `false` |
//! | `peers` | `TANVRIT_PEERS` (`name=host:port,...`) | none |
//! | `cluster_secret` | `TANVRIT_CLUSTER_SECRET` (16+ characters) | none; required in Raft mode |
//! | `raft_node_id` | `TANVRIT_RAFT_NODE_ID` | the position in `peers` |
//! | `raft_profile` | `TANVRIT_RAFT_PROFILE` (`default`, `lan`) | `default` |
//! | `raft_heartbeat` | `TANVRIT_RAFT_HEARTBEAT` | `500ms` (`lan`: `100ms`) |
//! | `raft_election_min` | `TANVRIT_RAFT_ELECTION_MIN` | `1s` (`lan`: `250ms`) |
//! | `raft_election_max` | `TANVRIT_RAFT_ELECTION_MAX` | `1500ms` (`lan`: `400ms`) |
//! | `raft_auto_bootstrap` | `TANVRIT_RAFT_AUTO_BOOTSTRAP` | `true` |
//! | `bootstrap_key` | `TANVRIT_BOOTSTRAP_KEY` | generated into `<data_dir>/admin.key` |
//! | `body_limit_bytes` | `TANVRIT_BODY_LIMIT_BYTES` | 2 MiB |
//! | `rates.cpu_second` | `TANVRIT_RATE_CPU_SECOND` | 10 |
//! | `rates.memory_gb_second` | `TANVRIT_RATE_MEMORY_GB_SECOND` | 2 |
//! | `rates.gpu_second` | `TANVRIT_RATE_GPU_SECOND` | 1000 |
//! | `compute.billing.basis` | `TANVRIT_BILLING_BASIS` (`reserved`: what an attempt reserved; `used`: the CPU time and peak memory its node measured) | `reserved` |
//! | `rates.attempt_minimum` | `TANVRIT_RATE_ATTEMPT_MINIMUM` (micro-credits every attempt is held and charged at least) | 100 |
//! | `snapshot_every` | `TANVRIT_SNAPSHOT_EVERY` | 10000 |
//! | `snapshot_logs_kept` | `TANVRIT_SNAPSHOT_LOGS_KEPT` (Raft) | 1000 |
//! | `log_retention_bytes_per_job` | `TANVRIT_LOG_RETENTION_BYTES_PER_JOB` | 16 MiB |
//! | `min_index_wait` | `TANVRIT_MIN_INDEX_WAIT` | `5s` |
//! | `long_poll_max` | `TANVRIT_LONG_POLL_MAX` | `30s` |
//! | `retry_after` | `TANVRIT_RETRY_AFTER` | `1s` |
//! | `node_ttl` | `TANVRIT_NODE_TTL` | `15s` |
//! | `node_lost_after` | `TANVRIT_NODE_LOST_AFTER` (`0`: at the TTL) | `5m` |
//! | `scheduler_strategy` | `TANVRIT_SCHEDULER_STRATEGY` (`bin_pack`, `spread`) | `bin_pack` |
//! | `cron_skip_grace` | `TANVRIT_CRON_SKIP_GRACE` | `5s` |
//! | `schedules_paused` | `TANVRIT_SCHEDULES_PAUSED` (a leader fires no schedule) | `false` |
//! | `idempotency_window` | `TANVRIT_IDEMPOTENCY_WINDOW` | `24h` |
//! | `compute.retention.jobs` | `TANVRIT_RETENTION_JOBS` (`7d`, `12h`; `0` keeps every job) | `7d` |
//! | `compute.limits.{admin,user,agent}_per_second` | `TANVRIT_LIMITS_{ADMIN,USER,AGENT}_PER_SECOND` (0: unlimited) | `0` / `100` / `1000` |
//! | `compute.limits.{admin,user,agent}_burst` | `TANVRIT_LIMITS_{ADMIN,USER,AGENT}_BURST` | `0` / `200` / `2000` |
//! | `compute.limits.streams_per_key` | `TANVRIT_LIMITS_STREAMS_PER_KEY` (0: unlimited) | `64` |
//! | `compute.limits.header_read_timeout` | `TANVRIT_LIMITS_HEADER_READ_TIMEOUT` | `10s` |
//! | `compute.limits.body_read_timeout` | `TANVRIT_LIMITS_BODY_READ_TIMEOUT` | `30s` |
//! | `compute.limits.header_bytes` | `TANVRIT_LIMITS_HEADER_BYTES` | 64 KiB |
//! | `compute.tls.cert_file` / `key_file` | `TANVRIT_TLS_CERT_FILE` / `_KEY_FILE` | none: plain HTTP |
//! | `compute.tls.ca_file` | `TANVRIT_TLS_CA_FILE` (cluster CA: replica mTLS) | none |
//! | `compute.tls.client_ca_file` | `TANVRIT_TLS_CLIENT_CA_FILE` | none |
//! | `compute.tls.client_auth` | `TANVRIT_TLS_CLIENT_AUTH` (`optional`, `required`) | `optional` |
//!
//! # Raft mode
//! `compute.cluster.raft = true` selects `RaftCluster`. The voters are `peers`; their Raft
//! ids are their 1-based positions in the list (or explicit: `id:name=host:port`), so
//! every replica must be given the same list. This replica is the entry named
//! `replica_id`; a replica outside the list (to be added later with `tanvrit cluster
//! add-replica`) names its id with `raft_node_id` and never forms a cluster by itself.
//! Every listed replica may be started in any order: the lowest id forms the cluster
//! once every listed peer answers (`raft_auto_bootstrap`), or `tanvrit cluster init`
//! forms it at once; restarts never need either again. See `docs/raft.md`.
//!
//! The file is named by `--config` or `TANVRIT_CONFIG`. Client-side variables
//! (`TANVRIT_ADDR`, `TANVRIT_API_KEY`, `TANVRIT_BUSINESS`) are not configuration of a
//! replica and are ignored here; an unknown key in the file is an error, so typos show.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use tanvrit_api::{BillingBasis, MicroCredits, Rates};
use tanvrit_cluster::raft::Peer as RaftPeer;
use tanvrit_cluster::RaftClusterConfig;

mod limits;
mod tls;

pub use limits::LimitsSection;
pub use tls::{ClientAuthSetting, TlsSection};

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "TANVRIT_CONFIG";

/// Environment variables (after `TANVRIT_`) whose values are text, and the config key
/// each sets. They are taken verbatim: figment's value parsing would read a secret like
/// `0123...` as a number and drop its leading zero.
const ENV_TEXT: &[(&str, &str)] = &[
    ("DATA_DIR", "data_dir"),
    ("API_ADDR", "api_addr"),
    ("RAFT_ADDR", "raft_addr"),
    ("ADVERTISE_API_ADDR", "advertise_api_addr"),
    ("RAFT_PROFILE", "raft_profile"),
    ("RAFT_HEARTBEAT", "raft_heartbeat"),
    ("RAFT_ELECTION_MIN", "raft_election_min"),
    ("RAFT_ELECTION_MAX", "raft_election_max"),
    ("REPLICA_ID", "replica_id"),
    ("REPLICA_REGION", "replica_region"),
    ("CLUSTER_ID", "cluster_id"),
    ("PEERS", "peers"),
    ("CLUSTER_SECRET", "cluster_secret"),
    ("BOOTSTRAP_KEY", "bootstrap_key"),
    ("MIN_INDEX_WAIT", "min_index_wait"),
    ("LONG_POLL_MAX", "long_poll_max"),
    ("RETRY_AFTER", "retry_after"),
    ("NODE_TTL", "node_ttl"),
    ("NODE_LOST_AFTER", "node_lost_after"),
    ("SCHEDULER_STRATEGY", "scheduler_strategy"),
    ("CRON_SKIP_GRACE", "cron_skip_grace"),
    ("IDEMPOTENCY_WINDOW", "idempotency_window"),
    ("RETENTION_JOBS", "compute.retention.jobs"),
    ("BILLING_BASIS", "compute.billing.basis"),
    (
        "LIMITS_HEADER_READ_TIMEOUT",
        "compute.limits.header_read_timeout",
    ),
];

/// Environment variables (after `TANVRIT_`, lowercased) whose values are numbers or
/// booleans, and the config key each sets.
const ENV_TYPED: &[(&str, &str)] = &[
    ("cluster_raft", "compute.cluster.raft"),
    ("raft_node_id", "raft_node_id"),
    ("raft_auto_bootstrap", "raft_auto_bootstrap"),
    ("schedules_paused", "schedules_paused"),
    ("body_limit_bytes", "body_limit_bytes"),
    ("rate_cpu_second", "rates.cpu_second"),
    ("rate_memory_gb_second", "rates.memory_gb_second"),
    ("rate_gpu_second", "rates.gpu_second"),
    ("rate_attempt_minimum", "rates.attempt_minimum"),
    ("snapshot_every", "snapshot_every"),
    ("snapshot_logs_kept", "snapshot_logs_kept"),
    ("log_retention_bytes_per_job", "log_retention_bytes_per_job"),
];

/// Why the configuration cannot be used. Each has a stable [`ConfigError::code`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` / `TANVRIT_CONFIG` names a file that does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the wrong type or an unknown key was given.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// Raft mode was asked for without the secret replica RPC is authenticated with.
    #[error(
        "Raft mode (TANVRIT_CLUSTER_RAFT=true / compute.cluster.raft = true) needs mutual \
         TLS (compute.tls cert_file, key_file and ca_file) or TANVRIT_CLUSTER_SECRET \
         (cluster_secret): the same string of 16+ characters on every replica"
    )]
    ClusterSecretMissing,
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// The stable code printed with the error.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::MissingFile(_) => "config_file_missing",
            ConfigError::Load(_) | ConfigError::Invalid(_) => "config_invalid",
            ConfigError::ClusterSecretMissing => "cluster_secret_missing",
        }
    }
}

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One voter of a Raft cluster: `name=raft_host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The replica's name (its `TANVRIT_REPLICA_ID`).
    pub name: String,
    /// Its replica RPC address.
    pub addr: String,
}

/// The `[compute]` table, kept for the seed's key `compute.cluster.raft`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeSection {
    /// `[compute.cluster]`.
    pub cluster: ClusterSection,
    /// `[compute.retention]`.
    pub retention: RetentionSection,
    /// `[compute.limits]`.
    pub limits: LimitsSection,
    /// `[compute.tls]`.
    pub tls: TlsSection,
    /// `[compute.billing]`.
    pub billing: BillingSection,
}

/// `[compute.billing]`: what attempts are charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSection {
    /// `reserved` (default): what an attempt reserved, for as long as it ran; `used`:
    /// the CPU time and peak memory its node measured (GPUs as reserved), falling back
    /// to the reservation for an attempt that was not measured. The hold at submission
    /// is the reservation either way, so no balance goes below zero. Recorded on each
    /// job at submission (`TANVRIT_BILLING_BASIS`).
    pub basis: BillingBasis,
}

/// `[compute.retention]`: how long finished work is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Terminal jobs (succeeded, failed, cancelled, lost) that ended longer ago than
    /// this are removed on every replica, with their attempts, logs and idempotency
    /// records, and then answer 410 `job_expired`; ledger entries are always kept.
    /// `0` keeps every job (`TANVRIT_RETENTION_JOBS`).
    #[serde(with = "duration_or_zero")]
    pub jobs: Duration,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            jobs: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[compute.cluster]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// `true` selects the Raft implementation, `RaftCluster` (`TANVRIT_CLUSTER_RAFT`).
    pub raft: bool,
}

/// Raft timing presets (`raft_profile`); `raft_heartbeat` and `raft_election_*` override
/// single values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftProfile {
    /// Heartbeat 500 ms, election 1000/1500 ms: a new leader serves writes about
    /// 1-2 s after the old one died (DESIGN.md's default, for links across regions).
    #[default]
    Default,
    /// Heartbeat 100 ms, election 250/400 ms: failover well under a second, for replicas
    /// on one LAN (or one machine).
    Lan,
}

/// What Raft mode starts with: the replica's configuration and where to listen.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// The `RaftCluster` configuration (its `raft_addr` is the address peers dial).
    pub cluster: RaftClusterConfig,
    /// The address the replica RPC listener binds (`raft_addr`; may be a wildcard).
    pub listen_addr: String,
}

/// Credit rates applied to new jobs, in micro-credits (1 credit = 1,000,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RatesSection {
    /// Per cpu-second: 1000 millicores reserved for one second.
    pub cpu_second: MicroCredits,
    /// Per GB-second: 1024 MB of memory reserved for one second.
    pub memory_gb_second: MicroCredits,
    /// Per GPU-second.
    pub gpu_second: MicroCredits,
    /// Every attempt is held (at admission) and charged (when it ran) at least this, so
    /// no job runs free and a business with no credits starts nothing.
    pub attempt_minimum: MicroCredits,
}

impl Default for RatesSection {
    fn default() -> Self {
        Self {
            cpu_second: 10,
            memory_gb_second: 2,
            gpu_second: 1000,
            attempt_minimum: 100,
        }
    }
}

impl From<RatesSection> for Rates {
    fn from(r: RatesSection) -> Self {
        Rates {
            cpu_second: r.cpu_second,
            memory_gb_second: r.memory_gb_second,
            gpu_second: r.gpu_second,
            attempt_minimum: r.attempt_minimum,
            basis: BillingBasis::Reserved,
        }
    }
}

/// Everything a replica is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The replica's data directory: its redb database, job logs, and `admin.key`.
    pub data_dir: PathBuf,
    /// Public API listen address (`host:port`).
    pub api_addr: String,
    /// Replica RPC listen address (Raft mode). Default: this replica's `peers` entry,
    /// else `127.0.0.1:7071`.
    pub raft_addr: Option<String>,
    /// The API address (`host:port`) other replicas and clients are told, for leader
    /// hints and the topology. Default: the bound `api_addr`.
    pub advertise_api_addr: Option<String>,
    /// This replica's name (the seed's `TANVRIT_REPLICA_ID`).
    #[serde(deserialize_with = "lenient::string")]
    pub replica_id: String,
    /// This replica's region (`TANVRIT_REPLICA_REGION`).
    #[serde(deserialize_with = "lenient::string")]
    pub replica_region: String,
    /// The cluster's id (`TANVRIT_CLUSTER_ID`).
    #[serde(deserialize_with = "lenient::string")]
    pub cluster_id: String,
    /// The `[compute]` table: `compute.cluster.raft`.
    pub compute: ComputeSection,
    /// The voters, `name=raft_host:port,...` (Raft mode).
    #[serde(deserialize_with = "lenient::peers")]
    pub peers: Vec<Peer>,
    /// Shared secret authenticating replica RPC (required in Raft mode).
    #[serde(deserialize_with = "lenient::secret")]
    pub cluster_secret: Option<Secret>,
    /// This replica's Raft id, for a replica that is not in `peers` (one added later).
    /// Default: its position in `peers`.
    pub raft_node_id: Option<u64>,
    /// Timing preset: `default` or `lan`.
    pub raft_profile: Option<RaftProfile>,
    /// Leader heartbeat interval (overrides the profile).
    #[serde(with = "human_duration_opt")]
    pub raft_heartbeat: Option<Duration>,
    /// Lower bound of the randomized election timeout (overrides the profile).
    #[serde(with = "human_duration_opt")]
    pub raft_election_min: Option<Duration>,
    /// Upper bound of the election timeout, and the leader lease (overrides the profile).
    #[serde(with = "human_duration_opt")]
    pub raft_election_max: Option<Duration>,
    /// The lowest-id peer forms the cluster once every peer answers. When false, run
    /// `tanvrit cluster init` once.
    pub raft_auto_bootstrap: bool,
    /// The first admin key (16+ characters); when absent one is generated into
    /// `<data_dir>/admin.key` at first start.
    #[serde(deserialize_with = "lenient::secret")]
    pub bootstrap_key: Option<Secret>,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Credit rates recorded on each new job.
    pub rates: RatesSection,
    /// Take a state snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Raft: log entries kept behind a snapshot, so a replica that lags by fewer catches
    /// up from the log instead of installing the snapshot.
    pub snapshot_logs_kept: u64,
    /// Job output kept per job; older bytes are dropped first.
    pub log_retention_bytes_per_job: u64,
    /// Longest a `min_index` read waits for this replica to catch up before a 503.
    #[serde(with = "human_duration")]
    pub min_index_wait: Duration,
    /// Longest a long poll (log follow, agent work poll) is held open.
    #[serde(with = "human_duration")]
    pub long_poll_max: Duration,
    /// The `Retry-After` sent with 503s.
    #[serde(with = "human_duration")]
    pub retry_after: Duration,
    /// A node that sends no heartbeat for this long is declared down: it gets no new work.
    #[serde(with = "human_duration")]
    pub node_ttl: Duration,
    /// A node silent this long has its running work declared lost and retried elsewhere;
    /// until then its agent keeps running it (through an outage of the whole control
    /// plane, say). Up to `node_ttl` (`0` included): lost at the TTL.
    #[serde(with = "human_duration")]
    pub node_lost_after: Duration,
    /// How the scheduler picks among nodes that fit: `bin_pack` or `spread`.
    pub scheduler_strategy: tanvrit_state::scheduler::Strategy,
    /// With catch-up `skip`, a due time this late still fires.
    #[serde(with = "human_duration")]
    pub cron_skip_grace: Duration,
    /// As leader, fire no schedule (maintenance; tests that start old data).
    pub schedules_paused: bool,
    /// How long an `Idempotency-Key` is remembered: a retry within it gets the first answer.
    #[serde(with = "human_duration")]
    pub idempotency_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./tanvrit-data"),
            api_addr: "127.0.0.1:7070".into(),
            raft_addr: None,
            advertise_api_addr: None,
            replica_id: "replica-1".into(),
            replica_region: "local".into(),
            cluster_id: "local".into(),
            compute: ComputeSection::default(),
            peers: Vec::new(),
            cluster_secret: None,
            raft_node_id: None,
            raft_profile: None,
            raft_heartbeat: None,
            raft_election_min: None,
            raft_election_max: None,
            raft_auto_bootstrap: true,
            bootstrap_key: None,
            body_limit_bytes: 2 * 1024 * 1024,
            rates: RatesSection::default(),
            snapshot_every: 10_000,
            snapshot_logs_kept: 1_000,
            log_retention_bytes_per_job: 16 * 1024 * 1024,
            min_index_wait: Duration::from_secs(5),
            long_poll_max: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
            node_ttl: Duration::from_secs(15),
            node_lost_after: Duration::from_secs(300),
            scheduler_strategy: tanvrit_state::scheduler::Strategy::BinPack,
            cron_skip_grace: Duration::from_secs(5),
            schedules_paused: false,
            idempotency_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// Flags that override the file and the environment; `None` leaves a value alone.
#[derive(Clone, Debug, Default, clap::Args, Serialize)]
pub struct ConfigFlags {
    /// The TOML config file.
    #[arg(long, env = ENV_CONFIG, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The data directory [default: ./tanvrit-data].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Public API listen address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_addr: Option<String>,
    /// Replica RPC listen address (Raft mode) [default: this replica's peers entry].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_addr: Option<String>,
    /// This replica's name [default: replica-1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// This replica's region [default: local].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_region: Option<String>,
    /// The cluster's id [default: local].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Largest accepted request body in bytes.
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_limit_bytes: Option<usize>,
    /// Snapshot every this many applied entries.
    #[arg(long, value_name = "ENTRIES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_every: Option<u64>,
}

impl Config {
    /// Loads defaults < the file named by `flags.config` < `TANVRIT_*` variables of this
    /// process < `flags`, then checks the result.
    pub fn load(flags: &ConfigFlags) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &flags.config {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.clone()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(typed_env());
        for (name, key) in ENV_TEXT.iter().chain(tls::ENV_TEXT) {
            let var = format!("TANVRIT_{name}");
            match std::env::var(&var) {
                Ok(value) => figment = figment.merge(Serialized::default(key, value)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError::Invalid(format!("{var} is not valid UTF-8")))
                }
            }
        }
        let config: Config = figment
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.check()?;
        Ok(config)
    }

    /// The rates as the wire type jobs record.
    pub fn rates(&self) -> Rates {
        Rates {
            basis: self.compute.billing.basis,
            ..self.rates.into()
        }
    }

    /// The bootstrap key, if one is configured.
    pub fn bootstrap_key(&self) -> Option<&str> {
        self.bootstrap_key.as_ref().map(|s| s.0.as_str())
    }

    /// Whether Raft mode is selected.
    pub fn raft(&self) -> bool {
        self.compute.cluster.raft
    }

    /// The configured voters with their Raft ids.
    pub fn raft_peers(&self) -> Result<Vec<RaftPeer>, ConfigError> {
        let list: Vec<String> = self
            .peers
            .iter()
            .map(|p| format!("{}={}", p.name, p.addr))
            .collect();
        if list.is_empty() {
            return Ok(Vec::new());
        }
        RaftPeer::parse_list(&list.join(","))
            .map_err(|e| ConfigError::Invalid(format!("peers (TANVRIT_PEERS): {e}")))
    }

    /// The Raft configuration of this replica, whose API is reachable at `api_addr`
    /// (`advertise_api_addr` wins when set).
    pub fn raft_settings(&self, api_addr: &str) -> Result<RaftSettings, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mtls = self.compute.tls.replica_mtls();
        // Over mutual TLS certificates authenticate replicas; the secret is for clusters
        // without TLS only.
        let secret = match self.cluster_secret.as_ref().filter(|s| !s.0.is_empty()) {
            _ if mtls => String::new(),
            Some(secret) => secret.0.clone(),
            None => return Err(ConfigError::ClusterSecretMissing),
        };
        let peers = self.raft_peers()?;
        let by_name = peers.iter().find(|p| p.name == self.replica_id);
        let (node_id, listed) = match (self.raft_node_id, by_name) {
            (Some(id), _) => (id, peers.iter().find(|p| p.id == id)),
            (None, Some(peer)) => (peer.id, Some(peer)),
            // No peers at all: a cluster of one voter, this replica.
            (None, None) if peers.is_empty() => (1, None),
            (None, None) => {
                let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
                return invalid(format!(
                    "replica_id (TANVRIT_REPLICA_ID) `{}` is not in peers (TANVRIT_PEERS: {}); \
                     a replica to be added later with `tanvrit cluster add-replica` names its \
                     Raft id with TANVRIT_RAFT_NODE_ID",
                    self.replica_id,
                    names.join(", ")
                ));
            }
        };
        let advertised = match (listed, &self.raft_addr) {
            (Some(peer), _) => peer.raft_addr.clone(),
            (None, Some(addr)) => addr.clone(),
            (None, None) => "127.0.0.1:7071".to_string(),
        };
        let listen_addr = self.raft_addr.clone().unwrap_or_else(|| advertised.clone());
        let mut cluster = RaftClusterConfig::new(
            node_id,
            self.replica_id.clone(),
            advertised,
            self.data_dir.clone(),
            secret,
        );
        if self.raft_profile == Some(RaftProfile::Lan) {
            cluster = cluster.lan();
        }
        if let Some(d) = self.raft_heartbeat {
            cluster.heartbeat = d;
        }
        if let Some(d) = self.raft_election_min {
            cluster.election_min = d;
        }
        if let Some(d) = self.raft_election_max {
            cluster.election_max = d;
        }
        cluster.region = self.replica_region.clone();
        cluster.cluster_id = self.cluster_id.clone();
        cluster.api_addr = self
            .advertise_api_addr
            .clone()
            .unwrap_or_else(|| api_addr.to_string());
        let peers_empty = peers.is_empty();
        // Only a listed voter (or the one voter of a peerless cluster) may form a
        // cluster; a replica waiting to be added must not make one of its own.
        let listed_voter = listed.is_some() || (peers_empty && self.raft_node_id.is_none());
        cluster.peers = peers.clone();
        cluster.snapshot_every = self.snapshot_every;
        cluster.logs_kept_after_snapshot = self.snapshot_logs_kept;
        cluster.min_index_wait = self.min_index_wait;
        cluster.log_retention_bytes_per_job = self.log_retention_bytes_per_job;
        cluster.auto_bootstrap = self.raft_auto_bootstrap && listed_voter;
        if let (true, Some(cert), Some(key), Some(ca)) = (
            mtls,
            &self.compute.tls.cert_file,
            &self.compute.tls.key_file,
            &self.compute.tls.ca_file,
        ) {
            let ids = cluster.voters().into_iter().map(|p| p.id);
            cluster.tls = Some(tanvrit_cluster::raft::ReplicaTls::new(
                cert.clone(),
                key.clone(),
                ca.clone(),
                ids,
            ));
        }
        cluster
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("Raft mode: {e}")))?;
        Ok(RaftSettings {
            cluster,
            listen_addr,
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.raft() {
            self.raft_settings(&self.api_addr)?;
        }
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.compute.tls.api().map_err(ConfigError::Invalid)?;
        if let Some(key) = &self.bootstrap_key {
            if key.0.chars().count() < 16 {
                return invalid(
                    "bootstrap_key (TANVRIT_BOOTSTRAP_KEY) must have at least 16 characters".into(),
                );
            }
        }
        for (name, value) in [
            ("replica_id", &self.replica_id),
            ("replica_region", &self.replica_region),
            ("cluster_id", &self.cluster_id),
            ("api_addr", &self.api_addr),
        ] {
            if value.trim().is_empty() {
                return invalid(format!("{name} must not be empty"));
            }
        }
        if self.body_limit_bytes == 0 {
            return invalid("body_limit_bytes must be positive".into());
        }
        if self.snapshot_every == 0 {
            return invalid("snapshot_every must be positive".into());
        }
        if self.node_ttl < Duration::from_millis(300) {
            return invalid("node_ttl must be at least 300ms".into());
        }
        let rates = [
            self.rates.cpu_second,
            self.rates.memory_gb_second,
            self.rates.gpu_second,
            self.rates.attempt_minimum,
        ];
        if rates.iter().any(|r| *r < 0) {
            return invalid("rates must not be negative".into());
        }
        Ok(())
    }
}

/// The `TANVRIT_*` variables named in [`ENV_TYPED`], parsed, mapped to their config keys.
/// Only named variables are read, so client variables like `TANVRIT_API_KEY` never collide.
fn typed_env() -> Env {
    Env::prefixed("TANVRIT_").filter_map(|key| {
        ENV_TYPED
            .iter()
            .chain(limits::ENV_TYPED)
            .find(|(env, _)| key == *env)
            .map(|(_, path)| (*path).into())
    })
}

/// Optional durations written like `500ms`, `1s`.
mod human_duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration with a unit, like \"500ms\" or \"1s\"")
        })?
        else {
            return Ok(None);
        };
        humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration like 500ms or 1s ({e})"
                ))
            })
    }
}

/// Durations written like `5s`, `1m 30s`.
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration with a unit, like \"5s\" or \"2m\"")
        })?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like 5s or 2m ({e})"))
        })
    }
}

/// Durations like `7d` or `12h`, or `0` (as text or a bare number) for "none".
mod duration_or_zero {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        super::human_duration::serialize(d, s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Number(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let expected = "expected a duration with a unit, like \"7d\" or \"12h\", or 0";
        match Value::deserialize(d).map_err(|_| serde::de::Error::custom(expected))? {
            Value::Number(0) => Ok(Duration::ZERO),
            Value::Number(n) => Err(serde::de::Error::custom(format!("`{n}`: {expected}"))),
            Value::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
                serde::de::Error::custom(format!("`{text}` is not a duration like 7d or 12h ({e})"))
            }),
        }
    }
}

/// Deserializers that accept what environment variables produce: figment reads
/// `TANVRIT_REPLICA_ID=1` as a number, but a name is a name.
mod lenient {
    use serde::{Deserialize, Deserializer};

    use super::{Peer, Secret};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool),
    }

    impl Scalar {
        fn into_string(self) -> String {
            match self {
                Scalar::Text(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Uint(n) => n.to_string(),
                Scalar::Float(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Scalar::deserialize(d)?.into_string())
    }

    pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(|s| Secret(s.into_string())))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum PeerList {
        Joined(String),
        Items(Vec<String>),
    }

    /// `"a=h:1,b=h:2"` or `["a=h:1", "b=h:2"]`.
    pub fn peers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Peer>, D::Error> {
        let items = match PeerList::deserialize(d)? {
            PeerList::Joined(s) => s.split(',').map(str::to_string).collect(),
            PeerList::Items(v) => v,
        };
        items
            .iter()
            .map(|item| item.trim())
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('=') {
                Some((name, addr)) if !name.is_empty() && !addr.is_empty() => Ok(Peer {
                    name: name.trim().to_string(),
                    addr: addr.trim().to_string(),
                }),
                _ => Err(serde::de::Error::custom(format!(
                    "peer `{item}` is not name=host:port"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
// `Jail::expect_with` closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn flags_with_file(path: &str) -> ConfigFlags {
        ConfigFlags {
            config: Some(PathBuf::from(path)),
            ..ConfigFlags::default()
        }
    }

    #[test]
    fn flags_beat_env_which_beats_the_file_which_beats_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tanvrit.toml",
                r#"
                data_dir = "/from/file"
                api_addr = "127.0.0.1:1111"
                replica_id = "file-replica"
                min_index_wait = "7s"
                [rates]
                gpu_second = 5
                "#,
            )?;
            jail.set_env("TANVRIT_API_ADDR", "127.0.0.1:2222");
            jail.set_env("TANVRIT_REPLICA_ID", "env-replica");
            jail.set_env("TANVRIT_RATE_CPU_SECOND", "42");
            jail.set_env("TANVRIT_RATE_ATTEMPT_MINIMUM", "7");
            jail.set_env("TANVRIT_BILLING_BASIS", "used");
            jail.set_env("TANVRIT_NODE_TTL", "2s");
            let mut flags = flags_with_file("tanvrit.toml");
            flags.replica_id = Some("flag-replica".into());
            let config = Config::load(&flags).map_err(|e| e.to_string())?;
            assert_eq!(
                config.data_dir,
                PathBuf::from("/from/file"),
                "file over default"
            );
            assert_eq!(config.api_addr, "127.0.0.1:2222", "env over file");
            assert_eq!(config.replica_id, "flag-replica", "flag over env");
            assert_eq!(config.min_index_wait, Duration::from_secs(7));
            assert_eq!(config.node_ttl, Duration::from_secs(2));
            assert_eq!(config.rates.gpu_second, 5);
            assert_eq!(config.rates.cpu_second, 42);
            assert_eq!(config.rates().attempt_minimum, 7);
            assert_eq!(config.rates().basis, BillingBasis::Used);
            assert_eq!(
                config.rates.memory_gb_second, 2,
                "untouched rates keep defaults"
            );
            assert_eq!(config.cluster_id, "local");
            Ok(())
        });
    }

    #[test]
    fn defaults_match_the_design_table() {
        Jail::expect_with(|_| {
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(config, Config::default());
            assert_eq!(config.data_dir, PathBuf::from("./tanvrit-data"));
            assert_eq!(config.api_addr, "127.0.0.1:7070");
            assert_eq!(config.replica_id, "replica-1");
            assert_eq!(config.replica_region, "local");
            assert!(!config.compute.cluster.raft);
            Ok(())
        });
    }

    #[test]
    fn client_variables_in_the_environment_are_ignored() {
        Jail::expect_with(|jail| {
            jail.set_env("TANVRIT_ADDR", "http://x:1");
            jail.set_env("TANVRIT_API_KEY", "k");
            jail.set_env("TANVRIT_BUSINESS", "acme");
            Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn raft_mode_from_env_selects_raft_and_maps_every_setting() {
        Jail::expect_with(|jail| {
            jail.set_env("TANVRIT_CLUSTER_RAFT", "true");
            jail.set_env(
                "TANVRIT_PEERS",
                "r1=10.0.0.1:7071,r2=10.0.0.2:7071,r3=10.0.0.3:7071",
            );
            jail.set_env("TANVRIT_REPLICA_ID", "r2");
            jail.set_env("TANVRIT_REPLICA_REGION", "eu-west");
            jail.set_env("TANVRIT_CLUSTER_ID", "prod");
            jail.set_env("TANVRIT_CLUSTER_SECRET", "0123456789abcdef-secret");
            jail.set_env("TANVRIT_RAFT_PROFILE", "lan");
            jail.set_env("TANVRIT_RAFT_HEARTBEAT", "50ms");
            jail.set_env("TANVRIT_RAFT_ADDR", "0.0.0.0:7071");
            jail.set_env("TANVRIT_SNAPSHOT_EVERY", "500");
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert!(config.raft());
            let settings = config
                .raft_settings("10.0.0.2:7070")
                .map_err(|e| e.to_string())?;
            let c = &settings.cluster;
            assert_eq!(c.node_id, 2, "the position in TANVRIT_PEERS");
            assert_eq!(c.replica_name, "r2");
            assert_eq!(
                c.raft_addr, "10.0.0.2:7071",
                "peers dial the listed address"
            );
            assert_eq!(settings.listen_addr, "0.0.0.0:7071");
            assert_eq!(c.api_addr, "10.0.0.2:7070");
            assert_eq!(
                (c.region.as_str(), c.cluster_id.as_str()),
                ("eu-west", "prod")
            );
            assert_eq!(c.peers.len(), 3);
            assert_eq!(
                c.heartbeat,
                Duration::from_millis(50),
                "explicit beats profile"
            );
            assert_eq!(c.election_min, Duration::from_millis(250), "lan profile");
            assert_eq!(c.election_max, Duration::from_millis(400), "lan profile");
            assert_eq!(c.snapshot_every, 500);
            assert!(c.auto_bootstrap);
            Ok(())
        });
    }

    #[test]
    fn raft_mode_from_the_seed_toml_key_needs_a_cluster_secret() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[compute.cluster]\nraft = true\n")?;
            let err = Config::load(&flags_with_file("c.toml")).unwrap_err();
            assert_eq!(err.code(), "cluster_secret_missing");
            assert!(err.to_string().contains("TANVRIT_CLUSTER_SECRET"), "{err}");
            jail.create_file(
                "ok.toml",
                "cluster_secret = \"0123456789abcdef\"\nraft_election_max = \"2s\"\n\
                 [compute.cluster]\nraft = true\n",
            )?;
            let config = Config::load(&flags_with_file("ok.toml")).map_err(|e| e.to_string())?;
            let settings = config
                .raft_settings("127.0.0.1:7070")
                .map_err(|e| e.to_string())?;
            assert_eq!(
                settings.cluster.node_id, 1,
                "no peers: a cluster of one voter"
            );
            assert_eq!(settings.cluster.raft_addr, "127.0.0.1:7071");
            assert_eq!(settings.cluster.heartbeat, Duration::from_millis(500));
            assert_eq!(settings.cluster.election_max, Duration::from_secs(2));
            assert!(settings.cluster.auto_bootstrap);
            Ok(())
        });
    }

    #[test]
    fn a_replica_outside_the_peers_needs_an_id_and_never_forms_a_cluster() {
        Jail::expect_with(|jail| {
            jail.set_env("TANVRIT_CLUSTER_RAFT", "true");
            jail.set_env("TANVRIT_CLUSTER_SECRET", "0123456789abcdef");
            jail.set_env("TANVRIT_PEERS", "r1=h:1,r2=h:2,r3=h:3");
            jail.set_env("TANVRIT_REPLICA_ID", "r4");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert_eq!(err.code(), "config_invalid");
            assert!(err.to_string().contains("TANVRIT_RAFT_NODE_ID"), "{err}");
            jail.set_env("TANVRIT_RAFT_NODE_ID", "4");
            jail.set_env("TANVRIT_RAFT_ADDR", "h:4");
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            let settings = config.raft_settings("h:40").map_err(|e| e.to_string())?;
            assert_eq!(settings.cluster.node_id, 4);
            assert_eq!(settings.cluster.raft_addr, "h:4");
            assert!(!settings.cluster.auto_bootstrap);
            Ok(())
        });
    }

    #[test]
    fn raft_timings_and_secrets_openraft_cannot_use_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("TANVRIT_CLUSTER_RAFT", "true");
            jail.set_env("TANVRIT_CLUSTER_SECRET", "short");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert!(err.to_string().contains("16 characters"), "{err}");
            jail.set_env("TANVRIT_CLUSTER_SECRET", "0123456789abcdef");
            jail.set_env("TANVRIT_RAFT_ELECTION_MIN", "2s");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert!(err.to_string().contains("election_min"), "{err}");
            jail.set_env("TANVRIT_RAFT_ELECTION_MIN", "fast");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert!(err.to_string().contains("duration"), "{err}");
            jail.set_env("TANVRIT_RAFT_ELECTION_MIN", "1s");
            jail.set_env("TANVRIT_RAFT_PROFILE", "wan");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert_eq!(err.code(), "config_invalid");
            Ok(())
        });
    }

    #[test]
    fn numeric_looking_names_and_peer_lists_from_env_are_read_as_text() {
        Jail::expect_with(|jail| {
            jail.set_env("TANVRIT_REPLICA_ID", "1");
            jail.set_env("TANVRIT_CLUSTER_SECRET", "12345");
            jail.set_env("TANVRIT_PEERS", "r1=10.0.0.1:7071,r2=10.0.0.2:7071");
            jail.set_env("TANVRIT_BOOTSTRAP_KEY", "0123456789012345678");
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.replica_id, "1");
            assert_eq!(config.cluster_secret, Some(Secret("12345".into())));
            assert_eq!(config.bootstrap_key(), Some("0123456789012345678"));
            assert_eq!(
                config.peers,
                vec![
                    Peer {
                        name: "r1".into(),
                        addr: "10.0.0.1:7071".into()
                    },
                    Peer {
                        name: "r2".into(),
                        addr: "10.0.0.2:7071".into()
                    },
                ]
            );
            assert!(
                !format!("{config:?}").contains("12345"),
                "secrets stay out of Debug"
            );
            Ok(())
        });
    }

    #[test]
    fn job_retention_reads_durations_and_zero_from_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                config.compute.retention.jobs,
                Duration::from_secs(7 * 24 * 3600),
                "default 7d"
            );
            jail.create_file("r.toml", "[compute.retention]\njobs = \"3d\"\n")?;
            let config = Config::load(&flags_with_file("r.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                config.compute.retention.jobs,
                Duration::from_secs(3 * 86_400)
            );
            jail.create_file("zero.toml", "[compute.retention]\njobs = 0\n")?;
            let config = Config::load(&flags_with_file("zero.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                config.compute.retention.jobs,
                Duration::ZERO,
                "0 keeps every job"
            );

            jail.set_env("TANVRIT_RETENTION_JOBS", "12h");
            let config = Config::load(&flags_with_file("r.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                config.compute.retention.jobs,
                Duration::from_secs(12 * 3600),
                "env over file"
            );
            jail.set_env("TANVRIT_RETENTION_JOBS", "0");
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.compute.retention.jobs, Duration::ZERO);

            for bad in ["7", "soon", "-1d"] {
                jail.set_env("TANVRIT_RETENTION_JOBS", bad);
                let err = Config::load(&ConfigFlags::default()).unwrap_err();
                assert_eq!(err.code(), "config_invalid", "{bad}");
                assert!(err.to_string().contains("duration"), "{bad}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn mistakes_are_reported_not_ignored() {
        Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "data_dri = \"x\"\n")?;
            let err = Config::load(&flags_with_file("typo.toml")).unwrap_err();
            assert_eq!(err.code(), "config_invalid");
            assert!(err.to_string().contains("data_dri"), "{err}");

            let err = Config::load(&flags_with_file("missing.toml")).unwrap_err();
            assert_eq!(err.code(), "config_file_missing");

            jail.set_env("TANVRIT_BOOTSTRAP_KEY", "short");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert!(err.to_string().contains("16"), "{err}");

            jail.set_env("TANVRIT_BOOTSTRAP_KEY", "long-enough-bootstrap-key");
            jail.set_env("TANVRIT_MIN_INDEX_WAIT", "5");
            let err = Config::load(&ConfigFlags::default()).unwrap_err();
            assert!(err.to_string().contains("duration"), "{err}");
            Ok(())
        });
    }
}
