//! Transports for tests: [`InProcess`] delivers replica RPC to replicas in the same
//! process (through the real wire encoding, so serde bugs show), and
//! [`FaultyTransport`] applies [`Faults`] in front of any transport (in-process or HTTP).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;
use tanvrit_cluster::raft::{NodeId, RaftCluster, RaftTransport, Rpc, RpcReply, TransportError};

use crate::faults::{Fate, Faults};

/// Replicas of one process, by id. Holds them weakly: a stopped replica goes away.
#[derive(Default)]
pub struct InProcess {
    replicas: RwLock<HashMap<NodeId, Weak<RaftCluster>>>,
}

impl InProcess {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `replica` reachable under its id.
    pub fn register(&self, replica: &Arc<RaftCluster>) {
        self.replicas
            .write()
            .insert(replica.node_id(), Arc::downgrade(replica));
    }

    /// Makes replica `id` unreachable (it stopped).
    pub fn unregister(&self, id: NodeId) {
        self.replicas.write().remove(&id);
    }
}

fn wire(err: impl std::fmt::Display) -> TransportError {
    TransportError::Network(format!("wire encoding: {err}"))
}

#[async_trait]
impl RaftTransport for InProcess {
    async fn call(
        &self,
        from: NodeId,
        to: NodeId,
        _addr: &str,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError> {
        let target = self.replicas.read().get(&to).and_then(Weak::upgrade);
        let Some(target) = target else {
            return Err(TransportError::Unreachable(format!(
                "replica {to} is not running"
            )));
        };
        let kind = rpc.kind();
        let rpc = Rpc::decode(kind, &rpc.encode().map_err(wire)?).map_err(wire)?;
        let reply = tokio::time::timeout(timeout, target.handle_rpc(Some(from), rpc))
            .await
            .map_err(|_| TransportError::Timeout(timeout))?;
        RpcReply::decode(kind, &reply.encode().map_err(wire)?).map_err(wire)
    }
}

/// [`Faults`] in front of another transport.
pub struct FaultyTransport {
    inner: Arc<dyn RaftTransport>,
    faults: Arc<Faults>,
}

impl FaultyTransport {
    /// Applies `faults` to every call made through `inner`.
    pub fn new(inner: Arc<dyn RaftTransport>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl RaftTransport for FaultyTransport {
    async fn call(
        &self,
        from: NodeId,
        to: NodeId,
        addr: &str,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError> {
        let started = Instant::now();
        self.faults.record(to, rpc.kind());
        match self.faults.fate(from, to) {
            // A lost request: the caller hears nothing until its deadline.
            Fate::Drop => {
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout(timeout));
            }
            Fate::Deliver(delay) => tokio::time::sleep(delay).await,
        }
        let left = timeout.saturating_sub(started.elapsed());
        let reply = self.inner.call(from, to, addr, rpc, left).await?;
        match self.faults.fate(to, from) {
            // A lost answer: the request was handled, the caller does not know.
            Fate::Drop => {
                tokio::time::sleep(timeout.saturating_sub(started.elapsed())).await;
                Err(TransportError::Timeout(timeout))
            }
            Fate::Deliver(delay) => {
                if started.elapsed() + delay > timeout {
                    tokio::time::sleep(timeout.saturating_sub(started.elapsed())).await;
                    return Err(TransportError::Timeout(timeout));
                }
                tokio::time::sleep(delay).await;
                Ok(reply)
            }
        }
    }
}
