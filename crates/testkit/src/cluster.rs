//! [`TestCluster`]: N Raft replicas in one process, each on its own temporary data
//! directory, all talking through one [`FaultyTransport`] (in-process by default, or
//! real HTTP on 127.0.0.1 with `http: true`).
//!
//! Replicas can be stopped gracefully (leader hand-off), crashed (no hand-off),
//! restarted on the same directory, and new ones started empty to be added.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tanvrit_api::Index;
use tanvrit_cluster::raft::{
    HttpTransport, NodeId, Peer, RaftCluster, RaftClusterConfig, RaftTransport,
};
use tanvrit_cluster::{ClusterError, ClusterService, Receipt};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::faults::Faults;
use crate::poll::eventually;
use crate::transport::{FaultyTransport, InProcess};

/// The secret every test replica shares.
pub const TEST_SECRET: &str = "tanvrit-test-cluster-secret";

/// A change applied to every replica's configuration.
pub type Tweak = Arc<dyn Fn(&mut RaftClusterConfig) + Send + Sync>;

/// How a [`TestCluster`] is built. Timings default to tight test values (heartbeat
/// 50 ms, election 200/300 ms).
#[derive(Clone)]
pub struct ClusterOptions {
    /// Voters started at once (ids 1..=voters).
    pub voters: u64,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout lower bound.
    pub election_min: Duration,
    /// Election timeout upper bound (the leader lease).
    pub election_max: Duration,
    /// Snapshot every this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Whether the lowest id bootstraps the cluster by itself.
    pub auto_bootstrap: bool,
    /// Real HTTP on 127.0.0.1 instead of in-process calls.
    pub http: bool,
    /// Seed of the loss and delay generator.
    pub seed: u64,
    /// Changes applied to every replica's configuration last.
    pub tweak: Option<Tweak>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            voters: 3,
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(200),
            election_max: Duration::from_millis(300),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
            auto_bootstrap: true,
            http: false,
            seed: 42,
            tweak: None,
        }
    }
}

impl ClusterOptions {
    /// The defaults with `voters` voters.
    pub fn voters(voters: u64) -> Self {
        Self {
            voters,
            ..Self::default()
        }
    }
}

struct Replica {
    config: RaftClusterConfig,
    running: Option<Arc<RaftCluster>>,
}

/// N replicas in one process.
pub struct TestCluster {
    options: ClusterOptions,
    dir: TempDir,
    faults: Arc<Faults>,
    registry: Arc<InProcess>,
    transport: Arc<dyn RaftTransport>,
    replicas: BTreeMap<NodeId, Replica>,
}

/// Replica `id`'s name.
pub fn name(id: NodeId) -> String {
    format!("replica-{id}")
}

/// Replica `id`'s data directory under a cluster's directory.
pub fn replica_dir(root: &std::path::Path, id: NodeId) -> PathBuf {
    root.join(name(id))
}

impl TestCluster {
    /// Starts `options.voters` replicas; with `auto_bootstrap` they form a cluster on
    /// their own (wait with [`TestCluster::leader`]).
    pub async fn start(options: ClusterOptions) -> Result<TestCluster, ClusterError> {
        let dir = tempfile::tempdir().map_err(|e| ClusterError::Internal(e.to_string()))?;
        Self::start_in(dir, options).await
    }

    /// Like [`TestCluster::start`], in `dir`: replica `id` uses `dir/replica-<id>`, so a
    /// test can put data there first (an upgrade from a single node).
    pub async fn start_in(
        dir: TempDir,
        options: ClusterOptions,
    ) -> Result<TestCluster, ClusterError> {
        let faults = Arc::new(Faults::new(options.seed));
        let registry = Arc::new(InProcess::new());
        let inner: Arc<dyn RaftTransport> = if options.http {
            Arc::new(HttpTransport::new(TEST_SECRET, Duration::from_millis(500))?)
        } else {
            registry.clone()
        };
        let transport: Arc<dyn RaftTransport> =
            Arc::new(FaultyTransport::new(inner, faults.clone()));
        let mut cluster = TestCluster {
            options: options.clone(),
            dir,
            faults,
            registry,
            transport,
            replicas: BTreeMap::new(),
        };
        let mut listeners = BTreeMap::new();
        let mut peers = Vec::new();
        for id in 1..=options.voters {
            let (addr, listener) = cluster.address(id).await?;
            listeners.insert(id, listener);
            peers.push(Peer {
                id,
                name: name(id),
                raft_addr: addr,
            });
        }
        for peer in &peers {
            let config = cluster.make_config(peer.id, &peer.raft_addr, peers.clone());
            cluster.replicas.insert(
                peer.id,
                Replica {
                    config,
                    running: None,
                },
            );
        }
        for id in 1..=options.voters {
            let listener = listeners.remove(&id).flatten();
            cluster.launch(id, listener).await?;
        }
        Ok(cluster)
    }

    /// A listener (HTTP mode) and the address peers reach replica `id` at.
    async fn address(&self, id: NodeId) -> Result<(String, Option<TcpListener>), ClusterError> {
        if !self.options.http {
            return Ok((format!("in-process-{id}"), None));
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        Ok((addr.to_string(), Some(listener)))
    }

    fn make_config(&self, id: NodeId, raft_addr: &str, peers: Vec<Peer>) -> RaftClusterConfig {
        let o = &self.options;
        let mut config =
            RaftClusterConfig::new(id, name(id), raft_addr, self.data_dir(id), TEST_SECRET);
        config.region = format!("region-{}", (id - 1) % 3 + 1);
        config.cluster_id = "test".into();
        config.api_addr = format!("127.0.0.1:{}", 17_000 + id);
        config.peers = peers;
        config.heartbeat = o.heartbeat;
        config.election_min = o.election_min;
        config.election_max = o.election_max;
        config.snapshot_every = o.snapshot_every;
        config.logs_kept_after_snapshot = o.logs_kept_after_snapshot;
        config.auto_bootstrap = o.auto_bootstrap;
        config.no_leader_timeout = o.election_max * 3;
        config.write_timeout = Duration::from_secs(3);
        config.rpc_timeout = Duration::from_millis(500);
        config.min_index_wait = Duration::from_secs(3);
        config.install_snapshot_timeout = Duration::from_secs(5);
        config.catch_up_timeout = Duration::from_secs(10);
        if let Some(tweak) = &o.tweak {
            tweak(&mut config);
        }
        config
    }

    /// Replica `id`'s data directory.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        replica_dir(self.dir.path(), id)
    }

    async fn launch(
        &mut self,
        id: NodeId,
        listener: Option<TcpListener>,
    ) -> Result<Arc<RaftCluster>, ClusterError> {
        let replica = self
            .replicas
            .get_mut(&id)
            .ok_or_else(|| ClusterError::Internal(format!("no replica {id}")))?;
        let listener = match (listener, self.options.http) {
            (Some(l), _) => Some(l),
            (None, true) => Some(
                TcpListener::bind(&replica.config.raft_addr)
                    .await
                    .map_err(|e| ClusterError::Internal(e.to_string()))?,
            ),
            (None, false) => None,
        };
        let started =
            RaftCluster::start_with(replica.config.clone(), listener, self.transport.clone())
                .await?;
        self.registry.register(&started);
        replica.running = Some(started.clone());
        Ok(started)
    }

    /// The fault switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The configuration replica `id` runs with.
    pub fn config(&self, id: NodeId) -> &RaftClusterConfig {
        &self.replicas[&id].config
    }

    /// Running replica `id` (panics if it is stopped: a test bug).
    pub fn node(&self, id: NodeId) -> Arc<RaftCluster> {
        self.replicas
            .get(&id)
            .and_then(|r| r.running.clone())
            .unwrap_or_else(|| panic!("replica {id} is not running"))
    }

    /// Ids of the running replicas.
    pub fn running(&self) -> Vec<NodeId> {
        self.replicas
            .iter()
            .filter(|(_, r)| r.running.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Waits until one running replica leads with a fresh quorum; returns its id.
    pub async fn leader(&self, timeout: Duration) -> NodeId {
        self.leader_among(&self.running(), timeout).await
    }

    /// Waits until one of `ids` leads with a fresh quorum; returns its id.
    pub async fn leader_among(&self, ids: &[NodeId], timeout: Duration) -> NodeId {
        eventually(timeout, "a leader", || async {
            ids.iter()
                .copied()
                .find(|id| *self.node(*id).leadership().borrow())
        })
        .await
    }

    /// Waits until every running replica applied at least `index`.
    pub async fn applied_everywhere(&self, index: Index, timeout: Duration) {
        for id in self.running() {
            let node = self.node(id);
            eventually(timeout, &format!("replica {id} to apply {index}"), || {
                let node = node.clone();
                async move { (node.reader().applied_index() >= index).then_some(()) }
            })
            .await;
        }
    }

    /// Waits until every running replica holds the same replicated data; returns it.
    pub async fn converged(&self, within: Duration) -> serde_json::Value {
        crate::eventually(within, "every replica to hold the same state", || async {
            let states: Vec<_> = self
                .running()
                .into_iter()
                .map(|id| self.node(id).reader().read(crate::commands::state_json))
                .collect();
            states
                .windows(2)
                .all(|w| w[0] == w[1])
                .then(|| states[0].clone())
        })
        .await
    }

    /// Deletes stopped replica `id`'s data directory: a lost or replaced disk.
    pub fn wipe(&self, id: NodeId) {
        let dir = self.data_dir(id);
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("wipe {}: {e}", dir.display()));
    }

    /// Stops replica `id` gracefully (a leader hands off).
    pub async fn stop(&mut self, id: NodeId) {
        let node = self.take(id);
        node.shutdown().await;
        drop(node);
    }

    /// Stops replica `id` like a crash: no hand-off.
    pub async fn crash(&mut self, id: NodeId) {
        let node = self.take(id);
        node.abort().await;
        drop(node);
    }

    fn take(&mut self, id: NodeId) -> Arc<RaftCluster> {
        self.registry.unregister(id);
        self.replicas
            .get_mut(&id)
            .and_then(|r| r.running.take())
            .unwrap_or_else(|| panic!("replica {id} is not running"))
    }

    /// Starts stopped replica `id` again on its data directory.
    pub async fn restart(&mut self, id: NodeId) -> Arc<RaftCluster> {
        // The database is released when the last handle goes; in-flight calls may hold
        // one briefly.
        let mut last = None;
        for _ in 0..200 {
            match self.launch(id, None).await {
                Ok(node) => return node,
                Err(err) if err.code() == "storage_error" => {
                    last = Some(err);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => panic!("restart of replica {id} failed: {err}"),
            }
        }
        panic!("restart of replica {id} failed: {last:?}");
    }

    /// Starts a new, empty replica `id` that is not a configured voter (it does not
    /// bootstrap); add it with [`RaftCluster::add_replica`].
    pub async fn start_new(&mut self, id: NodeId) -> Arc<RaftCluster> {
        let (addr, listener) = self.address(id).await.expect("an address");
        let mut config = self.make_config(id, &addr, Vec::new());
        config.auto_bootstrap = false;
        self.replicas.insert(
            id,
            Replica {
                config,
                running: None,
            },
        );
        self.launch(id, listener)
            .await
            .expect("start a new replica")
    }

    /// Stops every running replica gracefully.
    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

/// Writes top-up `n` through `node`, repeating it through `NoLeader` and `OutcomeUnknown`
/// answers for up to `within` (the top-up's idempotency key makes repeating it safe
/// either way); panics on any other error.
pub async fn top_up_retrying(node: &RaftCluster, n: u64, within: Duration) -> Receipt {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match node.submit_write(crate::commands::top_up(n)).await {
            Ok(receipt) => return receipt,
            Err(err @ (ClusterError::NoLeader { .. } | ClusterError::OutcomeUnknown { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(n, error = %err, "retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("write {n} failed: {err}"),
        }
    }
}
