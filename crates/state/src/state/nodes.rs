//! Nodes: register, drain, delete, down and lost (liveness) and evict, which end the
//! attempts running there (down alone keeps them).

use std::collections::BTreeMap;

use tanvrit_api::{AttemptState, Index, JobId, Millis, Node, NodeId, NodeState, Resources};

use super::State;
use crate::{validate, Effect, Outcome, Rejection};

/// Labels a job requires are all present with the same value on the node.
pub fn labels_match(required: &BTreeMap<String, String>, node: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| node.get(k) == Some(v))
}

impl State {
    pub(super) fn node_or_404(&self, id: &NodeId) -> Result<&Node, Rejection> {
        self.data
            .nodes
            .get(id)
            .ok_or_else(|| Rejection::not_found("node", id))
    }

    pub(super) fn node_effect(&self, id: &NodeId) -> Outcome {
        Ok(Effect::Node {
            node: Box::new(self.data.nodes[id].clone()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn node_register(
        &mut self,
        index: Index,
        id: &NodeId,
        name: &str,
        resources: &Resources,
        labels: &BTreeMap<String, String>,
        drivers: &[String],
        at: Millis,
    ) -> Outcome {
        validate::identifier("node id", id.as_str())?;
        if drivers.len() > 16 || drivers.iter().any(|d| d.is_empty() || d.len() > 64) {
            return Err(Rejection::invalid(
                "drivers are at most 16 names of 1-64 bytes",
            ));
        }
        if name.is_empty() || name.len() > 256 {
            return Err(Rejection::invalid("node names are 1-256 bytes"));
        }
        if labels.len() > validate::MAX_ITEMS || labels.keys().any(|k| k.is_empty()) {
            return Err(Rejection::invalid(
                "labels need non-empty names (at most 1024)",
            ));
        }
        let node = self.data.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            name: name.to_string(),
            resources: *resources,
            labels: labels.clone(),
            drivers: drivers.to_vec(),
            state: NodeState::Ready,
            registered_at: at,
            updated_at: at,
            drain_deadline: None,
            modify_index: index,
        });
        node.name = name.to_string();
        node.resources = *resources;
        node.labels = labels.clone();
        node.drivers = drivers.to_vec();
        node.updated_at = at;
        node.modify_index = index;
        if matches!(node.state, NodeState::Down | NodeState::Deleted) {
            node.state = NodeState::Ready;
            node.drain_deadline = None;
        }
        self.node_effect(id)
    }

    pub(super) fn node_drain(
        &mut self,
        index: Index,
        id: &NodeId,
        deadline: Option<Millis>,
        at: Millis,
    ) -> Outcome {
        let node = self.node_or_404(id)?;
        if matches!(node.state, NodeState::Down | NodeState::Deleted) {
            return Err(Rejection::illegal("node", id, node.state.as_str(), "drain"));
        }
        let node = self.data.nodes.get_mut(id).expect("checked");
        node.state = NodeState::Draining;
        node.drain_deadline = deadline;
        node.updated_at = at;
        node.modify_index = index;
        self.node_effect(id)
    }

    /// Active jobs on a node.
    pub(super) fn active_on(&self, node: &NodeId) -> Vec<JobId> {
        self.idx
            .node_active
            .get(node)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn lose_attempts(
        &mut self,
        index: Index,
        node: &NodeId,
        reason: &str,
        consume_retry: bool,
        at: Millis,
    ) {
        for job in self.active_on(node) {
            self.end_attempt(
                index,
                &job,
                AttemptState::Lost,
                None,
                Some(reason.to_string()),
                None,
                consume_retry,
                at,
            );
        }
    }

    pub(super) fn node_delete(
        &mut self,
        index: Index,
        id: &NodeId,
        force: bool,
        at: Millis,
    ) -> Outcome {
        let node = self.node_or_404(id)?;
        if node.state == NodeState::Deleted {
            return Err(Rejection::illegal("node", id, "deleted", "delete"));
        }
        let active = self.active_on(id).len() as u32;
        if active > 0 && !force {
            return Err(Rejection::NodeBusy {
                node: id.to_string(),
                active,
            });
        }
        self.lose_attempts(index, id, "node deleted", true, at);
        let node = self.data.nodes.get_mut(id).expect("checked");
        node.state = NodeState::Deleted;
        node.updated_at = at;
        node.modify_index = index;
        self.node_effect(id)
    }

    /// Down and its work lost. On a node already down (by [`Command::NodeDown`]) it
    /// loses the attempts the node kept; a node that went down by `NodeLost` has none
    /// (placements need a ready node), so entries written before `NodeDown` existed
    /// apply as they always did.
    ///
    /// [`Command::NodeDown`]: crate::Command::NodeDown
    pub(super) fn node_lost(&mut self, index: Index, id: &NodeId, at: Millis) -> Outcome {
        let node = self.node_or_404(id)?;
        match node.state {
            NodeState::Deleted => Err(Rejection::illegal("node", id, "deleted", "be lost")),
            NodeState::Down if self.active_on(id).is_empty() => self.node_effect(id),
            NodeState::Ready | NodeState::Draining | NodeState::Down => {
                self.lose_attempts(index, id, "node missed its heartbeats", true, at);
                let node = self.data.nodes.get_mut(id).expect("checked");
                node.state = NodeState::Down;
                node.updated_at = at;
                node.modify_index = index;
                self.node_effect(id)
            }
        }
    }

    /// Down, keeping its attempts: they are neither placed elsewhere nor charged until
    /// the node registers again (they carry on) or a `NodeLost` ends them.
    pub(super) fn node_down(&mut self, index: Index, id: &NodeId, at: Millis) -> Outcome {
        let node = self.node_or_404(id)?;
        match node.state {
            NodeState::Deleted => Err(Rejection::illegal("node", id, "deleted", "go down")),
            NodeState::Down => self.node_effect(id),
            NodeState::Ready | NodeState::Draining => {
                let node = self.data.nodes.get_mut(id).expect("checked");
                node.state = NodeState::Down;
                node.updated_at = at;
                node.modify_index = index;
                self.node_effect(id)
            }
        }
    }

    pub(super) fn node_evict(
        &mut self,
        index: Index,
        id: &NodeId,
        reason: &str,
        at: Millis,
    ) -> Outcome {
        self.node_or_404(id)?;
        self.lose_attempts(index, id, reason, false, at);
        let node = self.data.nodes.get_mut(id).expect("checked");
        node.modify_index = index;
        self.node_effect(id)
    }
}
