//! [`RaftCluster`]: the [`ClusterService`] of a replicated control plane on openraft 0.9.
//!
//! Each replica keeps its Raft log, vote, snapshots and job logs in its own redb
//! database, serves replica RPC on its own address (mutual TLS with the cluster CA, or
//! without TLS a shared cluster secret), and applies committed commands to an in-memory [`State`](tanvrit_state::State)
//! shared with its [`Reader`].
//!
//! # Layout
//! - this file: [`RaftCluster`] (start, membership, stats, the `ClusterService` impl).
//! - [`config`]: [`RaftClusterConfig`], [`Peer`], timings.
//! - [`types`]: the openraft type configuration.
//! - [`storage`]: openraft's log and state-machine traits on the redb store.
//! - [`rpc`]: replica-to-replica messages and their wire form.
//! - [`transport`]: [`RaftTransport`], [`HttpTransport`], and openraft's network traits.
//! - [`server`]: the replica RPC listener (axum).
//! - [`tls`]: [`ReplicaTls`], mutual TLS for replica RPC, and its listener.
//! - `node`: one running replica (`Node`): its parts, and who leads.
//! - `write`: writes, proposed here when leader, forwarded otherwise.
//! - `read`: read barriers and the leader's read index.
//! - `forward`: sending a leader-only request to the leader, and what its answer means.
//! - `dispatch`: answering replica RPC, one `match` over the messages.
//! - `membership`: forming the cluster (auto-bootstrap too), adding and removing replicas.
//! - `peers`: what this replica knows of the others, and the prober that asks them.
//! - `report`: its status, the topology and the Raft numbers it reports.
//! - `rejoin`: the vote rule of a replica that started on an empty disk.
//! - `handoff`: a stopping leader naming its successor.
//! - `batcher`: the leader packing queued writes into one log entry each.
//! - `monitor`: the leadership watch and the failure detector.
//! - [`stats`]: [`RaftStats`] and its latency histograms.
//! - [`upgrade`]: turning a single-node data directory into replica 1 of a cluster.
//!
//! # Forming a cluster
//! Start every replica with the same `peers` (the initial voters). With
//! `auto_bootstrap` (the default) the replica with the lowest id calls
//! [`RaftCluster::initialize`] once every peer answers and none is initialized; or call
//! it yourself on one replica. Restarted replicas never need it again. Later replicas
//! join with [`RaftCluster::add_replica`] (learner, catch up, then voter).

mod batcher;
pub mod config;
mod dispatch;
mod forward;
mod handoff;
pub mod log_store;
mod membership;
mod monitor;
mod node;
mod peers;
mod read;
mod rejoin;
mod report;
pub mod rpc;
pub mod server;
mod snapshot_data;
pub mod stats;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod types;
pub mod upgrade;
mod write;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tanvrit_api::{Consistency, Index, Role, Topology};
use tanvrit_state::Command;
use tanvrit_store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Peer, RaftClusterConfig};
pub use log_store::LogStore;
pub use rpc::{MembershipView, ReplicaStatus, Rpc, RpcKind, RpcReply};
pub use stats::{LatencyHistogram, RaftStats};
pub use storage::{SnapshotBuilder, StateMachine};
pub use tls::ReplicaTls;
pub use transport::{HttpTransport, RaftTransport, TransportError};
pub use types::{NodeId, ReplicaNode, TypeConfig, WriteOutcome, WriteRequest};

use crate::raft::monitor::Detector;
use crate::raft::node::Node;
use crate::raft::stats::Counters;
use crate::raft::transport::{Contacts, NetworkFactory};
use crate::{ClusterError, ClusterService, Reader, Receipt};

/// The meta key recording the cluster id a data directory was created for.
const META_CLUSTER_ID: &str = "cluster_id";

fn storage(err: tanvrit_store::StoreError) -> ClusterError {
    ClusterError::Storage(err.to_string())
}

/// One replica of a Raft cluster.
pub struct RaftCluster {
    node: Arc<Node>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    local_addr: Option<SocketAddr>,
    stopping: AtomicBool,
}

impl RaftCluster {
    /// Starts a replica that listens for replica RPC on `config.raft_addr` and reaches
    /// its peers over HTTP.
    pub async fn start(config: RaftClusterConfig) -> Result<Arc<RaftCluster>, ClusterError> {
        config.validate()?;
        let listener = TcpListener::bind(&config.raft_addr).await.map_err(|e| {
            ClusterError::Config(format!("cannot listen on {}: {e}", config.raft_addr))
        })?;
        let transport = HttpTransport::for_config(&config)?;
        Self::start_with(config, Some(listener), Arc::new(transport)).await
    }

    /// Starts a replica on a given transport; serves replica RPC on `listener` if given
    /// (in-process transports call [`RaftCluster::handle_rpc`] instead).
    pub async fn start_with(
        config: RaftClusterConfig,
        listener: Option<TcpListener>,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Arc<RaftCluster>, ClusterError> {
        config.validate()?;
        let raft_config = config.openraft()?;
        let options = StoreOptions {
            retention_bytes_per_job: config.log_retention_bytes_per_job,
            disk_faults: config.disk_faults.clone(),
            ..StoreOptions::default()
        };
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, options))
            .await
            .map_err(|e| ClusterError::Internal(e.to_string()))?
            .map_err(storage)?;
        match store.meta_get(META_CLUSTER_ID).map_err(storage)? {
            None => store
                .meta_put(META_CLUSTER_ID, config.cluster_id.as_bytes())
                .map_err(storage)?,
            Some(stored) if stored != config.cluster_id.as_bytes() => {
                return Err(ClusterError::Config(format!(
                    "the data directory belongs to cluster `{}`, not `{}`",
                    String::from_utf8_lossy(&stored),
                    config.cluster_id
                )))
            }
            Some(_) => {}
        }
        upgrade::prepare(&store, &config)?;
        if store.raft_is_pristine().map_err(storage)? {
            // Marked before any RPC is served; see `Node::refuse_vote`.
            store
                .meta_put(rejoin::META_REJOINING, b"1")
                .map_err(storage)?;
        }
        let rejoining = store
            .meta_get(rejoin::META_REJOINING)
            .map_err(storage)?
            .is_some();

        let log_store = LogStore::new(store.clone());
        let state_machine = StateMachine::open(store.clone()).map_err(storage)?;
        let reader = state_machine.reader();
        let committed = log_store.committed_handle();
        let snapshots = state_machine.counters();
        let contacts = Arc::new(Contacts::default());
        let network = NetworkFactory {
            from: config.node_id,
            transport: transport.clone(),
            contacts: contacts.clone(),
            backoff: (config.heartbeat * 2).min(Duration::from_millis(500)),
        };
        let raft = types::Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ClusterError::Internal(format!("cannot start Raft: {e}")))?;
        if let Some(tls) = &config.tls {
            tls.follow(raft.metrics());
        }
        if rejoining {
            // No election of its own until it caught up (`Node::check_rejoined`).
            raft.runtime_config().elect(false);
        }
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let (proposals, queue) =
            tokio::sync::mpsc::channel(batcher::queue_capacity(config.write_batch_max_commands));
        let node = Arc::new(Node {
            me: config.node(),
            metrics: raft.metrics(),
            raft,
            reader,
            transport,
            contacts,
            committed,
            snapshots,
            counters: Counters::default(),
            leadership: watch::channel(false).0,
            detector: Mutex::new(Detector::default()),
            closed: AtomicBool::new(false),
            started: Instant::now(),
            proposals,
            rejoining: AtomicBool::new(rejoining),
            config,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(monitor::watch_metrics(node.clone(), stop_rx.clone())),
            tokio::spawn(peers::probe_peers(node.clone(), stop_rx.clone())),
            tokio::spawn(batcher::run(
                node.clone(),
                batcher::Limits::of(&node.config),
                queue,
                stop_rx.clone(),
            )),
        ];
        if node.config.auto_bootstrap {
            tasks.push(tokio::spawn(membership::auto_bootstrap(
                node.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(listener) = listener {
            let mut until = stop_rx.clone();
            let served = node.clone();
            let secret = node.config.cluster_secret.clone();
            let tls = match &node.config.tls {
                Some(tls) => Some(tls.server(&node.config.cluster_id)?),
                None => None,
            };
            if let Some(tls) = &tls {
                tasks.push(tls.cert.watch(Duration::from_secs(2)));
            }
            tasks.push(tokio::spawn(async move {
                let shutdown = async move { monitor::stopped(&mut until).await };
                if let Err(err) = server::serve(listener, served, &secret, tls, shutdown).await {
                    tracing::error!(error = %err, "replica RPC listener failed");
                }
            }));
        }
        tracing::info!(
            node_id = node.config.node_id,
            name = %node.config.replica_name,
            raft_addr = ?local_addr.map(|a| a.to_string()).unwrap_or_else(|| node.config.raft_addr.clone()),
            applied_index = node.reader.applied_index(),
            rejoining,
            "raft replica started"
        );
        Ok(Arc::new(RaftCluster {
            node,
            stop,
            tasks: Mutex::new(tasks),
            local_addr,
            stopping: AtomicBool::new(false),
        }))
    }

    /// This replica's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.node.config.node_id
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &RaftClusterConfig {
        &self.node.config
    }

    /// The address the replica RPC listener is bound to (when it has one).
    pub fn local_raft_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The openraft handle (metrics, waits; for diagnostics and tests).
    pub fn raft(&self) -> &types::Raft {
        &self.node.raft
    }

    /// Answers one replica RPC (the HTTP listener and in-process transports call it).
    pub async fn handle_rpc(&self, from: Option<NodeId>, rpc: Rpc) -> RpcReply {
        self.node.handle_rpc(from, rpc).await
    }

    /// This replica's view of itself.
    pub fn status(&self) -> ReplicaStatus {
        self.node.status()
    }

    /// Forms the cluster with the configured voters as members. Returns `false` (and
    /// changes nothing) when this replica is already initialized. Call it on one
    /// replica, once; restarts never need it.
    pub async fn initialize(&self) -> Result<bool, ClusterError> {
        self.node.initialize().await
    }

    /// Adds a replica: as a learner first, then, once it caught up (bounded by
    /// `catch_up_timeout`), as a voter. Runs on the leader (forwarded if asked here).
    /// Adding a voter again changes nothing.
    pub async fn add_replica(
        &self,
        id: NodeId,
        node: ReplicaNode,
    ) -> Result<MembershipView, ClusterError> {
        self.node
            .change_membership(rpc::MembershipChange::Add { id, node })
            .await
    }

    /// Removes a replica (voter or learner) from the cluster. Runs on the leader.
    pub async fn remove_replica(&self, id: NodeId) -> Result<MembershipView, ClusterError> {
        self.node
            .change_membership(rpc::MembershipChange::Remove { id })
            .await
    }

    /// The Raft numbers to export.
    pub fn stats(&self) -> RaftStats {
        self.node.stats()
    }

    /// Stops at once, like a crash would: no hand-off to a successor, no waiting for
    /// followers. (Durable state is intact: everything acknowledged is on disk.)
    pub async fn abort(&self) {
        self.stop_with(false).await;
    }

    async fn stop_with(&self, hand_off: bool) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = &self.node;
        node.closed.store(true, Ordering::SeqCst);
        node.leadership.send_replace(false);
        let successor = if hand_off {
            node.pick_successor().await
        } else {
            None
        };
        let m = node.metrics();
        if let Err(err) = node.raft.shutdown().await {
            tracing::warn!(error = %err, "raft did not stop cleanly");
        }
        if let Some(successor) = successor {
            let voters = m.membership_config.membership().voter_ids().collect();
            node.announce_successor(successor, voters, m.current_term)
                .await;
            tracing::info!(successor, "handed leadership off");
        }
        self.stop.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        // Without `shutdown`, still stop the loops; the Raft core stops when its last
        // handle (held by the node) goes.
        self.stop.send_replace(true);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

#[async_trait]
impl ClusterService for RaftCluster {
    fn role(&self) -> Role {
        self.node.role_of(&self.node.metrics())
    }

    fn leader_id(&self) -> Option<String> {
        let m = self.node.metrics();
        self.node
            .leader_of(&m)
            .and_then(|id| self.node.node_of(id))
            .map(|n| n.name)
    }

    fn topology(&self) -> Topology {
        self.node.topology()
    }

    /// Cancellation: a write already handed to the leader is not withdrawn when this
    /// future is dropped; it may still be applied (retry with the idempotency key).
    async fn submit_write(&self, command: Command) -> Result<Receipt, ClusterError> {
        self.node.submit_write(command).await
    }

    async fn read_barrier(&self, consistency: Consistency) -> Result<Index, ClusterError> {
        self.node.read_barrier(consistency).await
    }

    fn reader(&self) -> &Reader {
        &self.node.reader
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.node.leadership.subscribe()
    }

    /// Stops gracefully: as leader, waits (bounded) for a follower to hold the whole
    /// log and names it successor; then stops Raft and the listener.
    async fn shutdown(&self) {
        self.stop_with(true).await;
    }

    async fn failed(&self) -> String {
        let mut metrics = self.node.metrics.clone();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                if !self.node.is_closed() {
                    return format!("the Raft core stopped: {fatal}");
                }
            }
            if metrics.changed().await.is_err() {
                if self.node.is_closed() {
                    // Closed on purpose: `shutdown` follows, nothing failed.
                    std::future::pending::<()>().await;
                }
                return "the Raft core stopped".into();
            }
        }
    }

    fn raft_stats(&self) -> Option<RaftStats> {
        Some(self.stats())
    }

    fn leader_api_addr(&self) -> Option<String> {
        self.node.leader_api_addr()
    }

    async fn initialize(&self) -> Result<bool, ClusterError> {
        RaftCluster::initialize(self).await
    }

    async fn add_replica(
        &self,
        id: NodeId,
        node: ReplicaNode,
    ) -> Result<MembershipView, ClusterError> {
        RaftCluster::add_replica(self, id, node).await
    }

    async fn remove_replica(&self, id: NodeId) -> Result<MembershipView, ClusterError> {
        RaftCluster::remove_replica(self, id).await
    }
}
