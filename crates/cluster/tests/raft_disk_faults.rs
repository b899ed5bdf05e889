//! A Raft replica whose disk fails (fsync errors, a full disk): it stops taking part
//! rather than answer for what it could not make durable, the others keep every
//! acknowledged write, and restarted on a healed disk it catches up.

use std::sync::Arc;
use std::time::Duration;

use tanvrit_cluster::ClusterService;
use tanvrit_store::DiskFaults;
use tanvrit_testkit::cluster::top_up_retrying;
use tanvrit_testkit::commands::{has_top_up, ledger_len, top_up};
use tanvrit_testkit::{init_tracing, ClusterOptions, TestCluster};

const WAIT: Duration = Duration::from_secs(15);

/// A 3-voter cluster where every replica writes to a disk the test controls
/// (`disks[id]`).
async fn cluster_on_disks(disks: &[DiskFaults]) -> TestCluster {
    let disks = disks.to_vec();
    let options = ClusterOptions {
        snapshot_every: 20,
        logs_kept_after_snapshot: 5,
        tweak: Some(Arc::new(move |config| {
            config.disk_faults = Some(disks[config.node_id as usize].clone());
        })),
        ..ClusterOptions::voters(3)
    };
    TestCluster::start(options).await.unwrap()
}

async fn leader_loses_its_disk(arm: impl Fn(&DiskFaults)) {
    init_tracing();
    let disks: Vec<DiskFaults> = (0..=3).map(|_| DiskFaults::new()).collect();
    let mut cluster = cluster_on_disks(&disks).await;
    let leader = cluster.leader(WAIT).await;
    let faults = &disks[leader as usize];

    let mut acknowledged = Vec::new();
    for n in 1..=30 {
        top_up_retrying(&cluster.node(leader), n, WAIT).await;
        acknowledged.push(n);
    }

    arm(faults);
    // Writes sent to the failing replica are refused or unknown, never acknowledged
    // unless a quorum holds them; the other two elect a leader and carry on.
    for n in 31..=40 {
        if let Ok(receipt) = cluster.node(leader).submit_write(top_up(n)).await {
            if receipt.outcome.is_ok() {
                acknowledged.push(n);
            }
        }
    }
    assert!(faults.failures() > 0, "the disk was never touched");
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let next = cluster.leader_among(&others, WAIT).await;
    for n in 41..=60 {
        top_up_retrying(&cluster.node(next), n, WAIT).await;
        acknowledged.push(n);
    }

    // The failed replica comes back on a healed disk and catches up.
    cluster.crash(leader).await;
    faults.heal();
    cluster.restart(leader).await;
    let receipt = top_up_retrying(&cluster.node(next), 61, WAIT).await;
    acknowledged.push(61);
    cluster.applied_everywhere(receipt.index, WAIT).await;
    cluster.converged(WAIT).await;
    for id in 1..=3 {
        let state = cluster.node(id).reader().read(|s| s.clone());
        for n in &acknowledged {
            assert!(has_top_up(&state, *n), "replica {id} lost top-up {n}");
        }
        // Nothing twice: each top-up at most once (retries carry idempotency keys).
        assert!(
            ledger_len(&state) <= 61,
            "replica {id}: {}",
            ledger_len(&state)
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_steps_out_and_no_acknowledged_write_is_lost() {
    leader_loses_its_disk(|faults| faults.fail_syncs(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_steps_out_and_no_acknowledged_write_is_lost() {
    leader_loses_its_disk(|faults| faults.fail_writes(true)).await;
}
