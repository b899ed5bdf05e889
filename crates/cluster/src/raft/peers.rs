//! What this replica knows of the others: their descriptions (from the membership,
//! else the configured peers) and their API addresses (from their latest status, else
//! the membership), for routing, hints to clients, and the topology.

use std::collections::BTreeMap;

use crate::raft::node::Node;
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
