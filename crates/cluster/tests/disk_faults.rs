//! A single node on a disk that fails: a failed fsync or a full disk answers a clear
//! storage error, never acknowledges what it could not make durable, and a restart on a
//! healed disk keeps every write it did acknowledge.

use std::sync::Arc;

use tanvrit_api::{BusinessId, EntryId, EntryKind};
use tanvrit_cluster::{ClusterError, ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_state::{Command, State};
use tanvrit_store::DiskFaults;

const TOP_UP: i64 = 1_000_000;

fn config(dir: &tempfile::TempDir, faults: Option<DiskFaults>) -> SingleNodeConfig {
    SingleNodeConfig {
        disk_faults: faults,
        // Purges (durable commits of the tables) happen during the faults too.
        snapshot_every: 4,
        ..SingleNodeConfig::new(dir.path())
    }
}

fn business() -> BusinessId {
    BusinessId::from("biz-1")
}

fn top_up(n: u64) -> Command {
    Command::LedgerEntryCreate {
        entry: EntryId(format!("ent-{n}")),
        business: business(),
        kind: EntryKind::TopUp,
        amount: TOP_UP,
        idempotency_key: format!("top-up-{n}"),
        note: None,
        at: 1_000 + n as i64,
    }
}

/// Sends top-ups `range` one at a time; returns those acknowledged, and the errors.
async fn top_ups(node: &SingleNode, range: std::ops::Range<u64>) -> (Vec<u64>, Vec<ClusterError>) {
    let mut acknowledged = Vec::new();
    let mut errors = Vec::new();
    for n in range {
        match node.submit_write(top_up(n)).await {
            Ok(receipt) => {
                assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
                acknowledged.push(n);
            }
            Err(err) => errors.push(err),
        }
    }
    (acknowledged, errors)
}

/// Everything the node's tables hold.
fn state_of(node: &SingleNode) -> State {
    node.reader()
        .store()
        .load_state("single")
        .unwrap()
        .unwrap_or_default()
}

/// Every acknowledged top-up is in the ledger once, and nothing that was never sent.
fn assert_kept(state: &State, acknowledged: &[u64], sent: u64) {
    let account = state.account(&business()).expect("the account");
    for n in acknowledged {
        assert!(
            account.by_key.contains_key(&format!("top-up-{n}")),
            "acknowledged top-up {n} was lost"
        );
    }
    let keys: Vec<&String> = account.by_key.keys().collect();
    assert!(keys.len() as u64 <= sent, "{keys:?}");
    assert_eq!(account.available, TOP_UP * account.entries.len() as i64);
}

async fn close(node: Arc<SingleNode>) {
    node.shutdown().await;
    drop(node);
}

async fn a_failing_disk_loses_nothing_acknowledged(arm: impl Fn(&DiskFaults)) {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let node = SingleNode::open(config(&dir, Some(faults.clone()))).unwrap();
    let (mut acknowledged, errors) = top_ups(&node, 0..10).await;
    assert_eq!(acknowledged.len(), 10, "{errors:?}");

    arm(&faults);
    let (during, errors) = top_ups(&node, 10..20).await;
    assert!(
        during.is_empty(),
        "acknowledged on a failing disk: {during:?}"
    );
    assert!(faults.failures() > 0);
    for err in &errors {
        assert_eq!(err.code(), "storage_error", "{err:?}");
    }
    // Said in words a person can act on.
    let first = errors[0].to_string();
    assert!(
        first.contains("fsync") || first.contains("space") || first.contains("restart"),
        "{first}"
    );

    // The disk heals; the node either writes again or asks for a restart, and never
    // acknowledges a write it cannot keep.
    faults.heal();
    let (after, errors) = top_ups(&node, 20..25).await;
    for err in &errors {
        assert_eq!(err.code(), "storage_error", "{err:?}");
    }
    acknowledged.extend(after);
    close(node).await;

    // A restart on the healed disk keeps every acknowledged write and takes new ones.
    let node = SingleNode::open(config(&dir, None)).unwrap();
    assert_kept(&state_of(&node), &acknowledged, 25);
    let (again, errors) = top_ups(&node, 25..30).await;
    assert_eq!(again.len(), 5, "{errors:?}");
    acknowledged.extend(again);
    assert_kept(&state_of(&node), &acknowledged, 30);
    close(node).await;

    // And once more, from the tables and log it wrote after the faults.
    let node = SingleNode::open(config(&dir, None)).unwrap();
    assert_kept(&state_of(&node), &acknowledged, 30);
    close(node).await;
}

#[tokio::test]
async fn a_failed_fsync_is_refused_and_a_restart_keeps_every_acknowledged_write() {
    a_failing_disk_loses_nothing_acknowledged(|faults| faults.fail_syncs(true)).await;
}

#[tokio::test]
async fn a_full_disk_is_refused_and_a_restart_keeps_every_acknowledged_write() {
    a_failing_disk_loses_nothing_acknowledged(|faults| faults.fail_writes(true)).await;
}
