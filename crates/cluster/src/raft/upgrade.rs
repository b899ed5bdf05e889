//! The upgrade path: a data directory written by [`SingleNode`](crate::SingleNode)
//! starts as a replica of a new Raft cluster with everything kept.
//!
//! On the first Raft start of a directory whose Raft tables are empty but whose
//! single-node log or snapshot is not, the single-node state is recovered exactly as
//! `SingleNode::open` would (snapshot + log replay) and saved as a Raft snapshot at the
//! same index, term 0, whose membership is the configured voters. The Raft log starts
//! after it. This replica then holds the longest log, so it wins the first election,
//! and the other (empty) replicas catch up by installing its snapshot. Job logs are
//! already in the shared job-log table.
//!
//! The directory is marked `mode = raft` in `meta`; from then on `SingleNode` refuses
//! it (its single-node tables are no longer current).

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Membership};
use tanvrit_api::Index;
use tanvrit_store::raft::RAFT_GROUP;
use tanvrit_store::{Store, StoreError};

use crate::raft::config::RaftClusterConfig;
use crate::raft::storage::write_snapshot;
use crate::raft::types::{LogId, NodeId, ReplicaNode, SnapshotMeta, StoredMembership};
use crate::single_node::recover;
use crate::ClusterError;

pub use crate::job_output::{META_MODE, MODE_RAFT};

fn storage(err: StoreError) -> ClusterError {
    ClusterError::Storage(err.to_string())
}

/// Marks the directory as a Raft replica's and imports single-node data if there is
/// some and no Raft data yet. Returns the imported index.
pub(crate) fn prepare(
    store: &Store,
    config: &RaftClusterConfig,
) -> Result<Option<Index>, ClusterError> {
    store.meta_put(META_MODE, MODE_RAFT).map_err(storage)?;
    if !store.raft_is_pristine().map_err(storage)? {
        return Ok(None);
    }
    let (_, _, last) = recover(store)?;
    if last == 0 {
        return Ok(None);
    }
    // Recovery leaves settled jobs in the tables; the snapshot carries all of them.
    let state = store
        .load_state(crate::single_node::GROUP)
        .map_err(storage)?
        .unwrap_or_default();
    let log_id = LogId::new(CommittedLeaderId::new(0, config.node_id), last);
    let mut members: BTreeMap<NodeId, ReplicaNode> = BTreeMap::new();
    for peer in config.voters() {
        let node = if peer.id == config.node_id {
            config.node()
        } else {
            ReplicaNode {
                name: peer.name,
                region: String::new(),
                raft_addr: peer.raft_addr,
                api_addr: String::new(),
            }
        };
        members.insert(peer.id, node);
    }
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(
            Some(log_id),
            Membership::new(vec![voters], members),
        ),
        snapshot_id: format!("single-node-{last}"),
    };
    // The job-log chunks recovery re-created become durable before the snapshot.
    store.sync().map_err(storage)?;
    let snapshots = store.snapshot_dir(RAFT_GROUP).map_err(storage)?;
    write_snapshot(store, &snapshots, &meta, &state)
        .and_then(|writer| writer.finish())
        .map_err(storage)?;
    // The Raft log restarts after the imported index.
    store.raft_purge_through(last, &log_id).map_err(storage)?;
    tracing::info!(
        index = last,
        voters = config.voters().len(),
        "imported a single-node data directory as the first Raft snapshot"
    );
    Ok(Some(last))
}
