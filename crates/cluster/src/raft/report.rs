//! What this replica reports: its own status (answered to peers over replica RPC), the
//! cluster's topology as it sees it (served by the API), and its Raft numbers (exported
//! as metrics).
//!
//! `stats` is built here, not in `stats.rs`: [`Node`] holds that file's counters, so
//! `stats.rs` must not import `Node` back.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use openraft::ServerState;
use tanvrit_api::{ReplicaInfo, Role, Topology};

use crate::raft::node::Node;
use crate::raft::rpc::ReplicaStatus;
use crate::raft::stats::RaftStats;
use crate::raft::types::NodeId;

impl Node {
    pub fn status(&self) -> ReplicaStatus {
        let m = self.metrics();
        ReplicaStatus {
            id: self.config.node_id,
            node: self.me.clone(),
            cluster_id: self.config.cluster_id.clone(),
            role: self.role_of(&m),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: self.reader.applied_index(),
            leader: self.leader_of(&m),
            initialized: m
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
                || m.last_log_index.is_some(),
        }
    }

    pub fn topology(&self) -> Topology {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader = self.leader_of(&m);
        let last_log = m.last_log_index.unwrap_or(0);
        // The leader's log end, for lag: ours if we lead, else as the leader reported it.
        let leader_last_log = match leader {
            Some(id) if id == self.config.node_id => Some(last_log),
            Some(id) => self.contacts.get(id).status.map(|s| s.last_log_index),
            None => None,
        };
        let probe_window = self.probe_interval() * 3 + self.config.rpc_timeout;
        let now = Instant::now();
        let mut replicas = Vec::new();
        for (id, node) in self.known_replicas() {
            if id == self.config.node_id {
                let applied = self.reader.applied_index();
                replicas.push(ReplicaInfo {
                    id,
                    name: node.name,
                    region: node.region,
                    address: node.raft_addr,
                    api_address: Some(node.api_addr).filter(|a| !a.is_empty()),
                    role: self.role_of(&m),
                    term: m.current_term,
                    commit_index: self.committed.load(Ordering::Relaxed),
                    applied_index: applied,
                    lag: leader_last_log.map(|end| end.saturating_sub(applied)),
                    last_contact_ms: Some(0),
                    reachable: true,
                });
                continue;
            }
            let view = self.contacts.get(id);
            let fresh = view
                .last_ok
                .is_some_and(|at| now.duration_since(at) <= probe_window);
            let status = view.status.filter(|s| s.id == id);
            let role = match &status {
                Some(s) if fresh => s.role,
                _ if leader == Some(id) => Role::Leader,
                _ if voters.contains(&id) => Role::Follower,
                _ => Role::Learner,
            };
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            let applied = status.as_ref().map_or(0, |s| s.applied_index);
            let lag = match (leader == Some(self.config.node_id), matched) {
                (true, Some(matched)) => Some(last_log.saturating_sub(matched)),
                (true, None) => Some(last_log),
                (false, _) if status.is_some() => {
                    leader_last_log.map(|end| end.saturating_sub(applied))
                }
                _ => None,
            };
            replicas.push(ReplicaInfo {
                id,
                name: status
                    .as_ref()
                    .map_or(node.name.clone(), |s| s.node.name.clone()),
                region: status
                    .as_ref()
                    .map(|s| s.node.region.clone())
                    .filter(|r| !r.is_empty())
                    .unwrap_or(node.region),
                api_address: self.api_addr_of(id),
                address: node.raft_addr,
                role,
                term: status.as_ref().map_or(0, |s| s.term),
                commit_index: status.as_ref().map_or(0, |s| s.commit_index),
                applied_index: applied,
                lag,
                last_contact_ms: view
                    .last_ok
                    .map(|at| now.duration_since(at).as_millis() as u64),
                reachable: fresh && view.probe_ok,
            });
        }
        Topology {
            cluster_id: self.config.cluster_id.clone(),
            mode: "raft".into(),
            this_replica: self.config.replica_name.clone(),
            leader: leader.and_then(|id| self.node_of(id)).map(|n| n.name),
            replicas,
            index: self.reader.applied_index(),
        }
    }

    pub fn stats(&self) -> RaftStats {
        let m = self.metrics();
        let c = &self.counters;
        let s = &self.snapshots;
        RaftStats {
            node_id: self.config.node_id,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self.committed.load(Ordering::Relaxed),
            applied_index: self.reader.applied_index(),
            leader_id: if m.state == ServerState::Leader {
                self.is_leader().then_some(self.config.node_id)
            } else {
                m.current_leader
            },
            is_leader: self.is_leader(),
            leader_changes_total: c.leader_changes.load(Ordering::Relaxed),
            elections_triggered_total: c.elections_triggered.load(Ordering::Relaxed),
            writes_total: c.writes.load(Ordering::Relaxed),
            writes_forwarded_total: c.writes_forwarded.load(Ordering::Relaxed),
            writes_failed_total: c.writes_failed.load(Ordering::Relaxed),
            write_entries_total: c.write_entries.load(Ordering::Relaxed),
            write_entry_commands_total: c.write_entry_commands.load(Ordering::Relaxed),
            proposal_latency: c.proposal_latency.snapshot(),
            commit_latency: c.commit_latency.snapshot(),
            snapshots_built_total: s.built.load(Ordering::Relaxed),
            snapshots_written_total: s.written.load(Ordering::Relaxed),
            snapshots_installed_total: s.installed.load(Ordering::Relaxed),
            snapshot_index: s.last_index.load(Ordering::Relaxed),
            purged_index: m.purged.map_or(0, |id| id.index),
        }
    }
}
