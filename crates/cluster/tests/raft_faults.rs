//! RaftCluster under faults: an isolated leader, a minority partition, message loss and
//! delay, a follower far behind, crashes with 3 and 5 voters, and failover timing.

use std::time::{Duration, Instant};

use tanvrit_api::Consistency;
use tanvrit_cluster::raft::RpcKind;
use tanvrit_cluster::{ClusterService, Receipt};
use tanvrit_state::Effect;
use tanvrit_testkit::cluster::top_up_retrying;
use tanvrit_testkit::commands::{has_top_up, job_with_output, ledger_len, node_register, top_up};
use tanvrit_testkit::{eventually, init_tracing, ClusterOptions, TestCluster};

const WAIT: Duration = Duration::from_secs(10);

async fn futures_join_all<F: std::future::Future>(futures: [F; 2]) -> Vec<F::Output> {
    let [a, b] = futures;
    let (a, b) = tokio::join!(a, b);
    vec![a, b]
}

/// Whether a repeated top-up found the first delivery already applied.
fn repeat_found_it(receipt: &Receipt) -> bool {
    match &receipt.outcome {
        Ok(Effect::Entry { duplicate, .. }) => *duplicate,
        other => panic!("a top-up answers with its entry, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_aside_and_never_acknowledges_a_write() {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let old = cluster.leader(WAIT).await;
    let before = cluster.node(old).submit_write(top_up(1)).await.unwrap();
    cluster.applied_everywhere(before.index, WAIT).await;
    let mut leadership = cluster.node(old).leadership();
    assert!(*leadership.borrow_and_update());

    cluster.faults().isolate(old);
    let started = Instant::now();
    // Proposed (appended to the old leader's log) while it still believes it leads; it
    // must not be acknowledged, and the caller must not be told nothing happened: a
    // leader that took it over could commit it.
    let refused = cluster.node(old).submit_write(top_up(99)).await;
    let err = refused.unwrap_err();
    assert_eq!(err.code(), "write_outcome_unknown", "{err}");
    assert!(err.retry_after().is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in bounded time"
    );
    // The leadership watch turned false (leader-only loops stop), and it no longer
    // calls itself leader.
    tokio::time::timeout(WAIT, leadership.wait_for(|l| !*l))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(cluster.node(old).role(), tanvrit_api::Role::Leader);
    assert_eq!(cluster.node(old).leader_id(), None);

    let others: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    let new = cluster.leader_among(&others, WAIT).await;
    assert_ne!(new, old);
    let after = top_up_retrying(&cluster.node(new), 2, WAIT).await;

    cluster.faults().heal();
    cluster.applied_everywhere(after.index, WAIT).await;
    let state = cluster.converged(WAIT).await;
    let node = cluster.node(old);
    assert!(node.reader().read(|s| has_top_up(s, 1) && has_top_up(s, 2)));
    assert!(
        !node.reader().read(|s| has_top_up(s, 99)),
        "the new leader's log replaced the unacknowledged entry"
    );
    assert!(state.to_string().contains("top-up-2"));
    // The caller learns what happened by repeating the write under its key: it had not
    // taken effect, so the repeat applies it, once.
    let repeat = top_up_retrying(&cluster.node(old), 99, WAIT).await;
    assert!(!repeat_found_it(&repeat), "{repeat:?}");
    cluster.applied_everywhere(repeat.index, WAIT).await;
    for id in cluster.running() {
        assert_eq!(
            cluster.node(id).reader().read(ledger_len),
            3,
            "replica {id}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_before_its_commit_is_unknown_and_its_key_then_finds_it_committed() {
    init_tracing();
    // A write deadline far below the lease: the leader stops waiting while it still leads.
    let options = ClusterOptions {
        tweak: Some(std::sync::Arc::new(|c| {
            c.write_timeout = Duration::from_millis(60);
        })),
        ..ClusterOptions::voters(3)
    };
    let cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let before = top_up_retrying(&cluster.node(leader), 1, WAIT).await;
    cluster.applied_everywhere(before.index, WAIT).await;

    // Cut off right as the write is queued: its entry is appended but cannot commit
    // before the deadline.
    cluster.faults().isolate(leader);
    let err = cluster
        .node(leader)
        .submit_write(top_up(7))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "write_outcome_unknown", "{err}");
    assert_eq!(
        err.retry_after(),
        Some(cluster.node(leader).config().election_max)
    );
    // Back within the lease, under the same leader: the entry commits after all.
    cluster.faults().heal();
    eventually(WAIT, "the unknown write to commit", || async {
        let node = cluster.node(leader);
        node.reader().read(|s| has_top_up(s, 7)).then_some(())
    })
    .await;
    // Repeating it under its key says it took effect, and does not apply it again.
    let repeat = top_up_retrying(&cluster.node(leader), 7, WAIT).await;
    assert!(repeat_found_it(&repeat), "{repeat:?}");
    cluster.applied_everywhere(repeat.index, WAIT).await;
    for id in cluster.running() {
        assert_eq!(
            cluster.node(id).reader().read(ledger_len),
            2,
            "replica {id}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_partition_refuses_writes_while_the_majority_carries_on() {
    init_tracing();
    // Five replicas in a process shared with the other tests: timings well above the
    // tightest, so tasks starved on two cores do not keep the majority re-electing
    // (a leader whose heartbeats come back late steps aside). The minority's answers
    // must still come in bounded time: `no_leader` after 3 x `election_max`.
    let election_max = Duration::from_millis(1_200);
    let options = ClusterOptions {
        heartbeat: Duration::from_millis(200),
        election_min: Duration::from_millis(800),
        election_max,
        ..ClusterOptions::voters(5)
    };
    let cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    // The leader ends up in the minority with one other replica.
    let buddy = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let majority: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader && *id != buddy)
        .collect();
    cluster.faults().partition(&[&[leader, buddy], &majority]);

    let new = cluster.leader_among(&majority, WAIT).await;
    for n in 1..=5 {
        top_up_retrying(&cluster.node(new), n, WAIT).await;
    }
    // Both minority replicas answer at once, and in bounded time.
    let minority_answers = [leader, buddy].map(|id| {
        let node = cluster.node(id);
        async move {
            let started = Instant::now();
            let (write, read) = tokio::join!(
                node.submit_write(top_up(100 + id)),
                node.read_barrier(Consistency::Strict)
            );
            (id, started.elapsed(), write, read)
        }
    });
    for (id, elapsed, write, read) in futures_join_all(minority_answers).await {
        let err = write.unwrap_err();
        assert_eq!(err.code(), "no_leader", "replica {id}: {err}");
        assert!(err.retry_after().is_some());
        assert_eq!(read.unwrap_err().code(), "no_leader", "replica {id}");
        assert!(elapsed < election_max * 4, "replica {id} took {elapsed:?}");
    }

    cluster.faults().heal();
    let last = top_up_retrying(&cluster.node(new), 6, WAIT).await;
    cluster.applied_everywhere(last.index, WAIT).await;
    cluster.converged(WAIT).await;
    for id in cluster.running() {
        let node = cluster.node(id);
        assert_eq!(node.reader().read(ledger_len), 6, "replica {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_message_loss_and_delay_exactly_once() {
    init_tracing();
    // A lost forwarded write costs its caller the whole forwarding deadline: keep it short.
    let options = ClusterOptions {
        tweak: Some(std::sync::Arc::new(|c| {
            c.write_timeout = Duration::from_millis(800);
            c.rpc_timeout = Duration::from_millis(300);
        })),
        ..ClusterOptions::voters(3)
    };
    let cluster = TestCluster::start(options).await.unwrap();
    cluster.leader(WAIT).await;
    cluster.faults().set_loss(0.05);
    cluster
        .faults()
        .set_delay(Duration::from_millis(0), Duration::from_millis(15));
    // Writes go to every replica in turn, so some are forwarded through the faults.
    let ids = cluster.running();
    for n in 1..=30 {
        let node = cluster.node(ids[n as usize % ids.len()]);
        top_up_retrying(&node, n, WAIT).await;
    }
    cluster.faults().clear();
    let last = top_up_retrying(&cluster.node(ids[0]), 31, WAIT).await;
    cluster.applied_everywhere(last.index, WAIT).await;
    cluster.converged(WAIT).await;
    for id in cluster.running() {
        // Retried writes were deduplicated by their idempotency keys.
        assert_eq!(
            cluster.node(id).reader().read(ledger_len),
            31,
            "replica {id}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_from_a_snapshot_with_its_job_logs() {
    init_tracing();
    let options = ClusterOptions {
        snapshot_every: 20,
        logs_kept_after_snapshot: 0,
        ..ClusterOptions::voters(3)
    };
    let mut cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let behind = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.crash(behind).await;

    let node = cluster.node(leader);
    let mut commands = vec![node_register("node-1"), top_up(0)];
    commands.extend(job_with_output("job-1", "att-1", "node-1", "hello world\n"));
    for command in commands {
        let receipt = node.submit_write(command).await.unwrap();
        assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
    }
    let mut last = 0;
    for n in 1..=60 {
        last = top_up_retrying(&node, n, WAIT).await.index;
    }
    // The leader snapshotted and purged what the crashed follower lacks.
    eventually(WAIT, "the leader to purge its log", || async {
        (node.stats().purged_index > 20).then_some(())
    })
    .await;
    assert!(node.stats().snapshots_built_total >= 1);

    let restarted = cluster.restart(behind).await;
    cluster.applied_everywhere(last, WAIT).await;
    assert!(restarted.stats().snapshots_installed_total >= 1);
    cluster.converged(WAIT).await;
    let output = restarted
        .reader()
        .job_log(&"job-1".into(), &"att-1".into(), 0, 1024)
        .unwrap();
    assert_eq!(
        output.data, b"hello world\n",
        "job logs travel with the snapshot"
    );
    cluster.shutdown().await;
}

/// Crashes the leader of a cluster of `voters` and measures until a write through
/// another replica succeeds.
async fn failover(options: ClusterOptions) -> (TestCluster, Duration) {
    let mut cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let receipt = cluster.node(leader).submit_write(top_up(1)).await.unwrap();
    cluster.applied_everywhere(receipt.index, WAIT).await;
    let survivor = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.crash(leader).await;
    let started = Instant::now();
    top_up_retrying(&cluster.node(survivor), 2, WAIT).await;
    let took = started.elapsed();
    tracing::info!(?took, "failover");
    (cluster, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_and_five_voters_survive_leader_crashes() {
    init_tracing();
    for voters in [3, 5] {
        let (mut cluster, took) = failover(ClusterOptions::voters(voters)).await;
        // Test timings: lease 300 ms.
        assert!(
            took < Duration::from_secs(2),
            "{voters} voters: failover took {took:?}"
        );
        if voters == 5 {
            // Five voters lose a second leader and still have a quorum.
            let second = cluster.leader(WAIT).await;
            let survivor = cluster
                .running()
                .into_iter()
                .find(|id| *id != second)
                .unwrap();
            cluster.crash(second).await;
            top_up_retrying(&cluster.node(survivor), 3, WAIT).await;
        }
        let last = top_up_retrying(&cluster.node(cluster.running()[0]), 4, WAIT).await;
        cluster.applied_everywhere(last.index, WAIT).await;
        cluster.converged(WAIT).await;
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_timings_a_crashed_leader_is_replaced_within_three_seconds() {
    init_tracing();
    let options = ClusterOptions {
        heartbeat: Duration::from_millis(500),
        election_min: Duration::from_millis(1000),
        election_max: Duration::from_millis(1500),
        tweak: Some(std::sync::Arc::new(|c| {
            c.no_leader_timeout = Duration::from_secs(2)
        })),
        ..ClusterOptions::voters(3)
    };
    let (cluster, took) = failover(options).await;
    assert!(took <= Duration::from_secs(3), "failover took {took:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lan_profile_a_crashed_leader_is_replaced_well_under_a_second() {
    init_tracing();
    let options = ClusterOptions {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(250),
        election_max: Duration::from_millis(400),
        ..ClusterOptions::voters(3)
    };
    let (cluster, took) = failover(options).await;
    assert!(
        took <= Duration::from_millis(1200),
        "failover took {took:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_leader_answers_within_the_lease() {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    top_up_retrying(&cluster.node(follower), 1, WAIT).await;
    cluster.faults().isolate(follower);
    let node = cluster.node(follower);
    let started = Instant::now();
    // Its forwarded write is lost; it gives up once no leader was heard for the lease.
    // The write may have reached the leader before the cut, so its outcome is unknown.
    let err = node.submit_write(top_up(2)).await.unwrap_err();
    assert_eq!(err.code(), "write_outcome_unknown", "{err}");
    let bound = node.config().election_max + node.config().no_leader_timeout;
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    // Now that it knows the leader is gone it forwards nothing: the next write certainly
    // did not happen.
    let err = node.submit_write(top_up(3)).await.unwrap_err();
    assert_eq!(err.code(), "no_leader", "{err}");
    let err = node.read_barrier(Consistency::Strict).await.unwrap_err();
    assert_eq!(err.code(), "no_leader");
    // Stale reads still work: whatever this replica applied.
    assert!(node.read_barrier(Consistency::Stale).await.unwrap() >= 1);
    cluster.faults().heal();
    let receipt = top_up_retrying(&node, 4, WAIT).await;
    cluster.applied_everywhere(receipt.index, WAIT).await;
    // The write that certainly did not happen never shows up.
    assert!(!node.reader().read(|s| has_top_up(s, 3)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_to_a_crashed_leader_back_off_between_tries() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let receipt = cluster.node(leader).submit_write(top_up(1)).await.unwrap();
    cluster.applied_everywhere(receipt.index, WAIT).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.crash(leader).await;
    let before = cluster.faults().sent_to(leader, RpcKind::ForwardWrite);
    // A flood on a follower that still believes in the crashed leader for about a lease.
    const WRITES: u64 = 16;
    let node = cluster.node(follower);
    let writes = (10..10 + WRITES).map(|n| top_up_retrying(&node, n, WAIT));
    futures::future::join_all(writes).await;
    let tries = cluster.faults().sent_to(leader, RpcKind::ForwardWrite) - before;
    // Test timings: tick 5 ms, lease 300 ms. Retrying every tick would make about 70
    // tries per write before the follower gives the leader up; backing off (5, 10, 20,
    // 40, then 75 ms) makes about 9.
    assert!(
        tries <= WRITES * 20,
        "{tries} forwarding tries to the crashed leader for {WRITES} writes"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_on_a_wiped_disk_catches_up_and_the_leader_carries_on() {
    init_tracing();
    let options = ClusterOptions {
        snapshot_every: 15,
        ..ClusterOptions::voters(3)
    };
    let mut cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    for n in 1..=40 {
        top_up_retrying(&cluster.node(leader), n, WAIT).await;
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.crash(follower).await;
    cluster.wipe(follower);
    cluster.restart(follower).await;

    // The leader that had replicated to the old disk keeps leading (openraft 0.9 would
    // panic on the follower's log going back) and the empty replica catches up from a
    // snapshot while writes go on.
    let mut last = 0;
    for n in 41..=70 {
        last = top_up_retrying(&cluster.node(leader), n, WAIT).await.index;
    }
    assert_eq!(cluster.leader(WAIT).await, leader);
    cluster.applied_everywhere(last, WAIT).await;
    cluster.converged(WAIT).await;
    let state = cluster.node(follower).reader().read(|s| s.clone());
    assert!((1..=70).all(|n| has_top_up(&state, n)));
    assert_eq!(ledger_len(&state), 70);

    // Caught up, it votes again: without the old leader, it and the third replica elect
    // one of them and keep every write.
    cluster.crash(leader).await;
    let survivors: Vec<u64> = cluster.running();
    let next = cluster.leader_among(&survivors, WAIT).await;
    let receipt = top_up_retrying(&cluster.node(next), 71, WAIT).await;
    cluster.applied_everywhere(receipt.index, WAIT).await;
    let state = cluster.node(follower).reader().read(|s| s.clone());
    assert!((1..=71).all(|n| has_top_up(&state, n)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_does_not_vote_a_stale_replica_into_leading() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (stale, wiped) = (others[0], others[1]);
    for n in 1..=5 {
        top_up_retrying(&cluster.node(leader), n, WAIT).await;
    }
    // `stale` misses writes 6..=20: they are committed by the leader and `wiped` alone.
    cluster.faults().isolate(stale);
    let mut last = 0;
    for n in 6..=20 {
        last = top_up_retrying(&cluster.node(leader), n, WAIT).await.index;
    }
    cluster.faults().heal();
    cluster.crash(stale).await;
    // `wiped` loses its disk, and the leader (the only other copy) goes down.
    cluster.crash(wiped).await;
    cluster.crash(leader).await;
    cluster.wipe(wiped);
    cluster.restart(stale).await;
    cluster.restart(wiped).await;

    // Granting `stale` its vote would elect a leader without writes 6..=20 and lose
    // them; the empty replica refuses, so there is no leader while the old one is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [stale, wiped] {
        assert!(
            !*cluster.node(id).leadership().borrow(),
            "replica {id} leads without the only full copy"
        );
    }
    // The old leader comes back with its disk: it leads, and nothing is lost.
    cluster.restart(leader).await;
    let next = cluster.leader(WAIT).await;
    let receipt = top_up_retrying(&cluster.node(next), 21, WAIT).await;
    assert!(receipt.index > last);
    cluster.applied_everywhere(receipt.index, WAIT).await;
    for id in 1..=3 {
        let state = cluster.node(id).reader().read(|s| s.clone());
        assert!(
            (1..=21).all(|n| has_top_up(&state, n)),
            "replica {id} lacks a write"
        );
    }
    cluster.shutdown().await;
}
