//! [`RaftClusterConfig`]: who this replica is, who its peers are, and its timings.
//!
//! # Timings and failover
//! openraft 0.9 gives the leader a lease of `election_max`: a voter that heard from the
//! leader less than `election_max` ago refuses to vote for anyone, and a follower's own
//! election timer only fires after `election_max` + a random `[election_min,
//! election_max)`. The failure detector (see `monitor`) calls an election as soon as the
//! lease allows, so a crashed leader is replaced about `election_max` after its last
//! heartbeat instead of about twice that (openraft sends heartbeats every 1.5
//! `heartbeat`). The defaults (heartbeat 500 ms, election 1000/1500 ms) give a failover
//! of about 1.0-1.7 s from the crash to the first write on the new leader (1.6-1.8 s
//! measured in-process for a crash right after a heartbeat, the worst case);
//! [`RaftClusterConfig::lan`] (100 ms, 250/400 ms) about 0.3-0.5 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tanvrit_store::{DiskFaults, DEFAULT_RETENTION_BYTES_PER_JOB};

use crate::raft::types::{NodeId, ReplicaNode};
use crate::ClusterError;

/// One voter of the initial cluster, as configured (`TANVRIT_PEERS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its Raft id.
    pub id: NodeId,
    /// Its replica name.
    pub name: String,
    /// Its replica RPC address, `host:port`.
    pub raft_addr: String,
}

impl Peer {
    /// Parses `TANVRIT_PEERS`: comma-separated `name=host:port` entries, whose ids are
    /// their 1-based positions, or `id:name=host:port` entries with explicit ids.
    pub fn parse_list(list: &str) -> Result<Vec<Peer>, ClusterError> {
        let mut peers: Vec<Peer> = Vec::new();
        for (position, item) in list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let bad =
                || ClusterError::Config(format!("peer `{item}`: expected [id:]name=host:port"));
            let (head, raft_addr) = item.split_once('=').ok_or_else(bad)?;
            let (id, name) = match head.split_once(':') {
                Some((id, name)) => (id.trim().parse::<NodeId>().map_err(|_| bad())?, name),
                None => (position as NodeId + 1, head),
            };
            let (name, raft_addr) = (name.trim(), raft_addr.trim());
            if name.is_empty() || raft_addr.is_empty() || id == 0 {
                return Err(bad());
            }
            if peers.iter().any(|p| p.id == id || p.name == name) {
                return Err(ClusterError::Config(format!(
                    "peer `{item}`: id {id} or name `{name}` is listed twice"
                )));
            }
            peers.push(Peer {
                id,
                name: name.to_string(),
                raft_addr: raft_addr.to_string(),
            });
        }
        Ok(peers)
    }
}

/// How a [`RaftCluster`](crate::raft::RaftCluster) replica is set up.
#[derive(Clone, Debug)]
pub struct RaftClusterConfig {
    /// This replica's Raft id (non-zero; stable for the life of the data directory).
    pub node_id: NodeId,
    /// This replica's name (`TANVRIT_REPLICA_ID`).
    pub replica_name: String,
    /// This replica's region (`TANVRIT_REPLICA_REGION`).
    pub region: String,
    /// The cluster id (`TANVRIT_CLUSTER_ID`).
    pub cluster_id: String,
    /// Replica RPC address, `host:port` (`TANVRIT_RAFT_ADDR`): listened on and told to peers.
    pub raft_addr: String,
    /// Public API address, `host:port` (`TANVRIT_API_ADDR`), shown in the topology.
    pub api_addr: String,
    /// The voters of the initial cluster (`TANVRIT_PEERS`); this replica is added if absent.
    pub peers: Vec<Peer>,
    /// Shared secret every replica RPC carries (`TANVRIT_CLUSTER_SECRET`); not used (and
    /// not required) with `tls`.
    pub cluster_secret: String,
    /// Mutual TLS for replica RPC. `None`: plain HTTP with the shared secret. Default
    /// `None`.
    pub tls: Option<crate::raft::ReplicaTls>,
    /// The data directory (the database is `<data_dir>/tanvrit.redb`).
    pub data_dir: PathBuf,
    /// Leader heartbeat interval (also each AppendEntries deadline). Default 500 ms.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout. Default 1000 ms.
    pub election_min: Duration,
    /// Upper bound of the election timeout, and the leader lease. Default 1500 ms.
    pub election_max: Duration,
    /// Take a snapshot every this many log entries. Default 10,000.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for followers that lag a little. Default 1,000.
    pub logs_kept_after_snapshot: u64,
    /// Longest wait of a `min_index` read (and of a strict read's local catch-up) before
    /// `NotCaughtUp`. Default 5 s.
    pub min_index_wait: Duration,
    /// Longest time a write or strict read waits for a usable leader before
    /// `NoLeader`. Default 2 s.
    pub no_leader_timeout: Duration,
    /// Longest time a write proposed on the leader waits to be committed; past it, the
    /// write fails with `OutcomeUnknown` if it is in an entry already, else with
    /// `NoLeader`. Default 10 s.
    pub write_timeout: Duration,
    /// Deadline of replica-to-replica calls other than Raft's own (forwarded writes,
    /// read index, status). Default 2 s.
    pub rpc_timeout: Duration,
    /// Deadline of one snapshot chunk. Default 30 s.
    pub install_snapshot_timeout: Duration,
    /// Longest wait for a new replica to catch up (as a learner) before it is made a
    /// voter; past it, adding fails and the replica stays a learner. Default 60 s.
    pub catch_up_timeout: Duration,
    /// Job-log bytes kept per job. Default 64 MiB.
    pub log_retention_bytes_per_job: u64,
    /// Tests only: a disk that fails writes or fsyncs while armed. Default none.
    pub disk_faults: Option<DiskFaults>,
    /// Form the cluster without an explicit `initialize`: the replica with the lowest id
    /// initializes once every peer answers and none is initialized. Default true.
    pub auto_bootstrap: bool,
    /// Call an election as soon as the leader lease allows when the leader is silent
    /// (see the module docs). Default true.
    pub failure_detector: bool,
    /// Most commands the leader packs into one log entry. Default 512.
    pub write_batch_max_commands: usize,
    /// Most bytes (JSON) of commands in one log entry; a single larger command gets an
    /// entry of its own. Bounds an AppendEntries message to about
    /// `max_payload_entries` (256) times this. Default 64 KiB.
    pub write_batch_max_bytes: usize,
    /// Log entries of client writes the leader keeps in flight (proposed, not yet
    /// applied) at once; writes arriving meanwhile queue for the next entry. Default 2.
    pub writes_in_flight: usize,
}

impl RaftClusterConfig {
    /// A replica with DESIGN.md's defaults and no other peer.
    pub fn new(
        node_id: NodeId,
        replica_name: impl Into<String>,
        raft_addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        cluster_secret: impl Into<String>,
    ) -> Self {
        Self {
            node_id,
            replica_name: replica_name.into(),
            region: "local".into(),
            cluster_id: "local".into(),
            raft_addr: raft_addr.into(),
            api_addr: "127.0.0.1:7070".into(),
            peers: Vec::new(),
            cluster_secret: cluster_secret.into(),
            tls: None,
            data_dir: data_dir.into(),
            heartbeat: Duration::from_millis(500),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(1500),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
            min_index_wait: Duration::from_secs(5),
            no_leader_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(2),
            install_snapshot_timeout: Duration::from_secs(30),
            catch_up_timeout: Duration::from_secs(60),
            log_retention_bytes_per_job: DEFAULT_RETENTION_BYTES_PER_JOB,
            disk_faults: None,
            auto_bootstrap: true,
            failure_detector: true,
            write_batch_max_commands: 512,
            write_batch_max_bytes: 64 * 1024,
            writes_in_flight: 2,
        }
    }

    /// The LAN profile: heartbeat 100 ms, election 250/400 ms (failover well under 1 s).
    pub fn lan(mut self) -> Self {
        self.heartbeat = Duration::from_millis(100);
        self.election_min = Duration::from_millis(250);
        self.election_max = Duration::from_millis(400);
        self.no_leader_timeout = Duration::from_secs(1);
        self
    }

    /// The voters of the initial cluster, this replica included, by id.
    pub fn voters(&self) -> Vec<Peer> {
        let mut voters = self.peers.clone();
        if !voters.iter().any(|p| p.id == self.node_id) {
            voters.push(Peer {
                id: self.node_id,
                name: self.replica_name.clone(),
                raft_addr: self.raft_addr.clone(),
            });
        }
        voters.sort_by_key(|p| p.id);
        voters
    }

    /// What the membership records of this replica.
    pub fn node(&self) -> ReplicaNode {
        ReplicaNode {
            name: self.replica_name.clone(),
            region: self.region.clone(),
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
        }
    }

    /// Checks the values openraft and this crate rely on.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let fail = |m: String| Err(ClusterError::Config(m));
        if self.node_id == 0 {
            return fail("node_id must be non-zero".into());
        }
        if self.tls.is_none() && self.cluster_secret.len() < 16 {
            return fail("the cluster secret must be at least 16 characters".into());
        }
        if self.heartbeat < Duration::from_millis(10) {
            return fail("heartbeat must be at least 10 ms".into());
        }
        if self.election_min <= self.heartbeat || self.election_max <= self.election_min {
            return fail(format!(
                "timings must satisfy heartbeat < election_min < election_max \
                 (got {:?} / {:?} / {:?})",
                self.heartbeat, self.election_min, self.election_max
            ));
        }
        if self.snapshot_every == 0 {
            return fail("snapshot_every must be at least 1".into());
        }
        if self.write_batch_max_commands == 0
            || self.write_batch_max_bytes == 0
            || self.writes_in_flight == 0
        {
            return fail(
                "write_batch_max_commands, write_batch_max_bytes and writes_in_flight \
                 must be at least 1"
                    .into(),
            );
        }
        for peer in &self.peers {
            if peer.id == self.node_id && peer.name != self.replica_name {
                return fail(format!(
                    "peer {} is this replica but is named `{}`, not `{}`",
                    peer.id, peer.name, self.replica_name
                ));
            }
        }
        Ok(())
    }

    /// This replica's snapshot interval: `snapshot_every`, stretched by a tenth per
    /// replica id (modulo 5), so replicas do not all snapshot at the same index and a
    /// quorum never does its heaviest work at once.
    pub fn snapshot_interval(&self) -> u64 {
        let stagger = self.snapshot_every / 10 * (self.node_id.saturating_sub(1) % 5);
        self.snapshot_every.saturating_add(stagger).max(1)
    }

    /// openraft's configuration for these settings.
    pub(crate) fn openraft(&self) -> Result<Arc<openraft::Config>, ClusterError> {
        let ms = |d: Duration| d.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_min),
            election_timeout_max: ms(self.election_max),
            install_snapshot_timeout: ms(self.install_snapshot_timeout),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_interval()),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            // Purge in batches, but never wait for more than one snapshot interval.
            purge_batch_size: self.snapshot_every.clamp(1, 256),
            // Sized so a batch is sent well within one heartbeat on a slow link.
            max_payload_entries: 256,
            // A learner counts as caught up within this many entries of the leader.
            replication_lag_threshold: self.snapshot_every.max(1_000),
            ..Default::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|e| ClusterError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Peer, RaftClusterConfig};

    #[test]
    fn replicas_snapshot_at_staggered_intervals() {
        let mut config = RaftClusterConfig::new(1, "r1", "127.0.0.1:1", "/tmp/x", "secret");
        let intervals: Vec<u64> = (1..=6)
            .map(|id| {
                config.node_id = id;
                config.snapshot_interval()
            })
            .collect();
        assert_eq!(
            intervals,
            vec![10_000, 11_000, 12_000, 13_000, 14_000, 10_000]
        );
        config.snapshot_every = 5;
        config.node_id = 3;
        assert_eq!(config.snapshot_interval(), 5);
    }

    #[test]
    fn peers_parse_with_positional_or_explicit_ids() {
        let peers = Peer::parse_list("a=h1:1, b=h2:2 ,c=h3:3").unwrap();
        assert_eq!(
            peers
                .iter()
                .map(|p| (p.id, p.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (2, "b"), (3, "c")]
        );
        let peers = Peer::parse_list("7:x=h:1,9:y=h:2").unwrap();
        assert_eq!(peers[1].id, 9);
        assert_eq!(peers[1].raft_addr, "h:2");
        for bad in ["a", "=h:1", "0:a=h:1", "a=h:1,a=h:2", "z:a=h:1"] {
            let err = Peer::parse_list(bad).unwrap_err();
            assert_eq!(err.code(), "cluster_config_invalid", "{bad}");
        }
    }

    #[test]
    fn validation_refuses_timings_openraft_cannot_use() {
        let base = RaftClusterConfig::new(1, "r1", "127.0.0.1:0", "/tmp/x", "0123456789abcdef");
        base.validate().unwrap();
        base.openraft().unwrap();
        base.clone().lan().openraft().unwrap();
        let mut bad = base.clone();
        bad.election_min = Duration::from_millis(400);
        assert!(bad.validate().is_err());
        let mut short = base.clone();
        short.cluster_secret = "short".into();
        assert!(short.validate().is_err());
        assert_eq!(base.voters().len(), 1, "the replica itself is a voter");
    }
}
