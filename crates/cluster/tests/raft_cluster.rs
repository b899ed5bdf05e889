//! RaftCluster end to end in one process: forming, writes on the leader and forwarded
//! from followers, read consistencies, topology and stats.

use std::collections::BTreeSet;
use std::time::Duration;

use tanvrit_api::{Consistency, EntryId, JobId, Role};
use tanvrit_cluster::ClusterService;
use tanvrit_state::{Command, Effect, FinishKind};
use tanvrit_testkit::commands::{
    business, has_top_up, job_with_output, ledger_len, node_register, top_up,
};
use tanvrit_testkit::{init_tracing, ClusterOptions, TestCluster};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_form_a_cluster_and_writes_reach_every_replica() {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();

    let on_leader = cluster.node(leader).submit_write(top_up(1)).await.unwrap();
    assert!(on_leader.outcome.is_ok());
    // A follower forwards to the leader and answers once it applied the write itself.
    let forwarded = cluster
        .node(follower)
        .submit_write(top_up(2))
        .await
        .unwrap();
    assert!(forwarded.index > on_leader.index);
    assert!(cluster.node(follower).reader().read(|s| has_top_up(s, 2)));
    cluster.applied_everywhere(forwarded.index, WAIT).await;
    for id in cluster.running() {
        let node = cluster.node(id);
        assert!(node.reader().read(|s| has_top_up(s, 1) && has_top_up(s, 2)));
    }
    let stats = cluster.node(follower).stats();
    assert_eq!(stats.writes_forwarded_total, 1);
    assert_eq!(stats.leader_id, Some(leader));
    assert!(!stats.is_leader);
    assert!(cluster.node(leader).stats().is_leader);
    assert_eq!(cluster.node(leader).role(), Role::Leader);
    assert_eq!(cluster.node(follower).role(), Role::Follower);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_outcome() {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let before = cluster.node(leader).stats();
    const WRITES: u64 = 200;
    // Half on the leader, half forwarded by a follower, all at once.
    let writes = (1..=WRITES).map(|n| {
        let node = cluster.node(if n % 2 == 0 { leader } else { follower });
        async move { (n, node.submit_write(top_up(n)).await.unwrap()) }
    });
    let receipts = futures::future::join_all(writes).await;

    let mut indexes = BTreeSet::new();
    for (n, receipt) in &receipts {
        match &receipt.outcome {
            Ok(Effect::Entry { entry, duplicate }) => {
                assert_eq!(
                    entry.id,
                    EntryId(format!("ent-{n}")),
                    "write {n}'s own outcome"
                );
                assert!(!duplicate);
            }
            other => panic!("write {n}: {other:?}"),
        }
        indexes.insert(receipt.index);
    }
    let after = cluster.node(leader).stats();
    let entries = after.write_entries_total - before.write_entries_total;
    assert_eq!(
        after.write_entry_commands_total - before.write_entry_commands_total,
        WRITES
    );
    // Writes in one entry share its index; every entry proposed answered someone.
    assert_eq!(indexes.len() as u64, entries);
    assert!(
        entries < WRITES,
        "{WRITES} concurrent writes took {entries} entries"
    );
    let last = *indexes.last().unwrap();
    cluster.applied_everywhere(last, WAIT).await;
    for id in cluster.running() {
        assert!(cluster
            .node(id)
            .reader()
            .read(|s| (1..=WRITES).all(|n| has_top_up(s, n))));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_and_min_index_reads_on_a_follower_see_acknowledged_writes() {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let receipt = cluster.node(leader).submit_write(top_up(1)).await.unwrap();

    let node = cluster.node(follower);
    let index = node
        .read_barrier(Consistency::MinIndex(receipt.index))
        .await
        .unwrap();
    assert!(index >= receipt.index);
    assert!(node.reader().read(|s| has_top_up(s, 1)));

    let receipt = cluster.node(leader).submit_write(top_up(2)).await.unwrap();
    let index = node.read_barrier(Consistency::Strict).await.unwrap();
    assert!(
        index >= receipt.index,
        "strict read at {index} < {}",
        receipt.index
    );
    assert!(node.reader().read(|s| has_top_up(s, 2)));

    let err = node
        .read_barrier(Consistency::MinIndex(receipt.index + 1_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_caught_up");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_lists_every_replica_with_roles_and_indexes() {
    init_tracing();
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let receipt = cluster.node(leader).submit_write(top_up(1)).await.unwrap();
    cluster.applied_everywhere(receipt.index, WAIT).await;
    let node = cluster.node(leader);
    let topology = tanvrit_testkit::eventually(WAIT, "a topology with fresh peers", || {
        let node = node.clone();
        async move {
            let t = node.topology();
            (t.replicas.len() == 3
                && t.replicas
                    .iter()
                    .all(|r| r.reachable && r.applied_index >= receipt.index))
            .then_some(t)
        }
    })
    .await;
    assert_eq!(topology.mode, "raft");
    assert_eq!(
        topology.leader.as_deref(),
        Some(format!("replica-{leader}").as_str())
    );
    let roles: Vec<Role> = topology.replicas.iter().map(|r| r.role).collect();
    assert_eq!(roles.iter().filter(|r| **r == Role::Leader).count(), 1);
    assert_eq!(roles.iter().filter(|r| **r == Role::Follower).count(), 2);
    for replica in &topology.replicas {
        assert!(replica.term >= 1);
        assert_eq!(
            replica.region,
            format!("region-{}", (replica.id - 1) % 3 + 1)
        );
        assert!(replica.lag.is_some());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_cluster_bootstraps_itself_and_survives_a_restart() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(1)).await.unwrap();
    assert_eq!(cluster.leader(WAIT).await, 1);
    let node = cluster.node(1);
    assert!(*node.leadership().borrow());
    let receipt = node.submit_write(top_up(1)).await.unwrap();
    assert_eq!(
        node.read_barrier(Consistency::Strict).await.unwrap(),
        receipt.index
    );
    drop(node);
    cluster.stop(1).await;
    let node = cluster.restart(1).await;
    assert_eq!(cluster.leader(WAIT).await, 1);
    assert!(node.reader().read(|s| has_top_up(s, 1)));
    let next = node.submit_write(top_up(2)).await.unwrap();
    assert!(next.index > receipt.index);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_the_same_jobs_and_their_output_on_every_replica() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let mut commands = vec![node_register("node-1"), top_up(0)];
    commands.extend(job_with_output(
        "job-old",
        "att-old",
        "node-1",
        "old output\n",
    ));
    commands.push(Command::AttemptFinished {
        job: "job-old".into(),
        attempt: "att-old".into(),
        kind: FinishKind::Succeeded,
        exit_code: Some(0),
        reason: None,
        usage: None,
        at: 2_010,
    });
    // Still running: retention never takes it.
    commands.extend(job_with_output(
        "job-live",
        "att-live",
        "node-1",
        "live output\n",
    ));
    for command in commands {
        let receipt = cluster.node(leader).submit_write(command).await.unwrap();
        assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
    }
    let entries = cluster.node(leader).reader().read(ledger_len);
    let balance = |s: &tanvrit_state::State| s.account(&business()).cloned();
    let account = cluster.node(leader).reader().read(balance);

    let receipt = cluster
        .node(leader)
        .submit_write(Command::JobsCollect {
            cutoff: 5_000,
            limit: 100,
            at: 5_000,
        })
        .await
        .unwrap();
    match &receipt.outcome {
        Ok(Effect::JobsCollected { jobs, more, .. }) => {
            assert_eq!(jobs, &[JobId::from("job-old")]);
            assert!(!more);
        }
        other => panic!("{other:?}"),
    }
    cluster.applied_everywhere(receipt.index, WAIT).await;
    cluster.converged(WAIT).await;
    let output = |node: &tanvrit_cluster::RaftCluster, job: &str, attempt: &str| {
        let window = node
            .reader()
            .job_log(&job.into(), &attempt.into(), 0, 1024)
            .unwrap();
        String::from_utf8(window.data).unwrap()
    };
    for id in cluster.running() {
        let node = cluster.node(id);
        node.reader().read(|s| {
            assert!(s.job(&"job-old".into()).is_none(), "replica {id}");
            assert!(s.job(&"job-live".into()).is_some(), "replica {id}");
            assert_eq!(s.jobs_collected_before(), 5_000, "replica {id}");
            assert_eq!(ledger_len(s), entries, "replica {id}: the ledger stays");
            assert_eq!(balance(s), account, "replica {id}");
        });
        assert_eq!(output(&node, "job-old", "att-old"), "", "replica {id}");
        assert_eq!(
            output(&node, "job-live", "att-live"),
            "live output\n",
            "replica {id}"
        );
    }

    // A follower restarted on its disk replays the log: the output stays deleted.
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.stop(follower).await;
    let node = cluster.restart(follower).await;
    cluster.applied_everywhere(receipt.index, WAIT).await;
    assert!(node.reader().read(|s| s.job(&"job-old".into()).is_none()));
    assert_eq!(output(&node, "job-old", "att-old"), "");
    assert_eq!(output(&node, "job-live", "att-live"), "live output\n");
    cluster.shutdown().await;
}
