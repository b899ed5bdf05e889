//! What this replica knows of the others: their descriptions (from the membership,
//! else the configured peers) and their API addresses (from their latest status, else
//! the membership), for routing, hints to clients, and the topology; and the prober
//! that keeps their status fresh.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::raft::monitor::stopped;
use crate::raft::node::Node;
use crate::raft::rpc::{Rpc, RpcReply};
use crate::raft::types::{NodeId, ReplicaNode};

impl Node {
    /// What is known of replica `id`: the membership first, then the configured peers.
    pub fn node_of(&self, id: NodeId) -> Option<ReplicaNode> {
        if id == self.config.node_id {
            return Some(self.me.clone());
        }
        let m = self.metrics.borrow();
        if let Some(node) = m.membership_config.membership().get_node(&id) {
            return Some(node.clone());
        }
        drop(m);
        self.config
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| ReplicaNode {
                name: p.name.clone(),
                region: String::new(),
                raft_addr: p.raft_addr.clone(),
                api_addr: String::new(),
            })
    }

    /// Every replica this one should know about: members and configured voters.
    pub fn known_replicas(&self) -> BTreeMap<NodeId, ReplicaNode> {
        let mut all: BTreeMap<NodeId, ReplicaNode> = BTreeMap::new();
        for peer in self.config.voters() {
            all.insert(
                peer.id,
                ReplicaNode {
                    name: peer.name,
                    region: String::new(),
                    raft_addr: peer.raft_addr,
                    api_addr: String::new(),
                },
            );
        }
        let m = self.metrics.borrow();
        for (id, node) in m.membership_config.membership().nodes() {
            all.insert(*id, node.clone());
        }
        all.insert(self.config.node_id, self.me.clone());
        all
    }

    /// The API address of the leader [`Node::no_leader`] names (or this replica, when it
    /// leads): from that replica's latest status, else from the membership.
    pub fn leader_api_addr(&self) -> Option<String> {
        let m = self.metrics();
        let id = self
            .leader_of(&m)
            .or(m.current_leader.filter(|id| *id != self.config.node_id))?;
        self.api_addr_of(id)
    }

    /// Replica `id`'s API address, when known.
    pub(super) fn api_addr_of(&self, id: NodeId) -> Option<String> {
        let known = |addr: String| Some(addr).filter(|a| !a.is_empty());
        if id == self.config.node_id {
            return known(self.me.api_addr.clone());
        }
        self.contacts
            .get(id)
            .status
            .filter(|s| s.id == id)
            .and_then(|s| known(s.node.api_addr))
            .or_else(|| self.node_of(id).and_then(|n| known(n.api_addr)))
    }
}

/// Asks every known replica for its status, every probe interval.
pub(crate) async fn probe_peers(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let interval = node.probe_interval();
    let timeout = interval.min(node.config.rpc_timeout);
    loop {
        let me = node.config.node_id;
        let calls = node
            .known_replicas()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, replica)| {
                let node = node.clone();
                async move {
                    let reply = node
                        .transport
                        .call(me, id, &replica.raft_addr, Rpc::Status, timeout)
                        .await;
                    let status = match reply {
                        Ok(RpcReply::Status(status)) => Some(*status),
                        _ => None,
                    };
                    node.contacts.probed(id, status);
                }
            });
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = futures::future::join_all(calls) => {}
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
