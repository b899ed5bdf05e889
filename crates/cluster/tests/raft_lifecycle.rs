//! RaftCluster over its life: restarts, graceful hand-off, membership changes, the
//! upgrade from a single-node data directory, and replica RPC over real HTTP.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tanvrit_api::Role;
use tanvrit_cluster::raft::rpc::{Rpc, RpcReply};
use tanvrit_cluster::raft::{HttpTransport, RaftTransport, ReplicaNode, TransportError};
use tanvrit_cluster::{ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_testkit::cluster::{name, replica_dir, top_up_retrying};
use tanvrit_testkit::commands::{
    has_top_up, job_with_output, ledger_len, node_register, state_json, top_up,
};
use tanvrit_testkit::{init_tracing, ClusterOptions, TestCluster};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_replica_keeps_every_write() {
    init_tracing();
    let options = ClusterOptions {
        snapshot_every: 15,
        ..ClusterOptions::voters(3)
    };
    let mut cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let mut commands = vec![node_register("node-1"), top_up(0)];
    commands.extend(job_with_output("job-1", "att-1", "node-1", "kept output\n"));
    for command in commands {
        cluster.node(leader).submit_write(command).await.unwrap();
    }
    let mut last = 0;
    for n in 1..=40 {
        last = top_up_retrying(&cluster.node(leader), n, WAIT).await.index;
    }
    cluster.applied_everywhere(last, WAIT).await;
    let before = cluster.converged(WAIT).await;

    for id in cluster.running() {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    // Nobody initializes again: the restarted replicas elect a leader by themselves.
    let leader = cluster.leader(WAIT).await;
    cluster.applied_everywhere(last, WAIT).await;
    assert_eq!(cluster.converged(WAIT).await, before);
    let node = cluster.node(leader);
    let output = node
        .reader()
        .job_log(&"job-1".into(), &"att-1".into(), 0, 100)
        .unwrap();
    assert_eq!(output.data, b"kept output\n");
    let next = top_up_retrying(&node, 41, WAIT).await;
    assert!(next.index > last);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_off_to_a_caught_up_successor() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let old = cluster.leader(WAIT).await;
    let receipt = top_up_retrying(&cluster.node(old), 1, WAIT).await;
    let others: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    let started = Instant::now();
    cluster.stop(old).await;
    let new = cluster.leader_among(&others, WAIT).await;
    // The lease (300 ms) bounds it from below; the hand-off spares the rank stagger.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let node = cluster.node(new);
    assert!(node.reader().applied_index() >= receipt.index);
    top_up_retrying(&node, 2, WAIT).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_as_learners_catch_up_from_a_snapshot_become_voters_and_leave() {
    init_tracing();
    let options = ClusterOptions {
        snapshot_every: 10,
        logs_kept_after_snapshot: 0,
        ..ClusterOptions::voters(3)
    };
    let mut cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let mut last = 0;
    for n in 1..=30 {
        last = top_up_retrying(&cluster.node(leader), n, WAIT).await.index;
    }
    // Grow to five voters; the fourth is added through a follower (forwarded).
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    for id in [4, 5] {
        let fresh = cluster.start_new(id).await;
        assert_eq!(fresh.role(), Role::Learner, "not a member yet");
        let asked = if id == 4 { follower } else { leader };
        let view = cluster
            .node(asked)
            .add_replica(id, fresh.config().node())
            .await
            .unwrap();
        assert!(view.voters.contains(&id), "{view:?}");
        assert!(
            fresh.reader().applied_index() >= last,
            "caught up before voting"
        );
        assert!(fresh.reader().read(|s| has_top_up(s, 30)));
    }
    assert!(cluster.node(5).stats().snapshots_installed_total >= 1);
    // Adding a voter again changes nothing.
    let again = cluster
        .node(leader)
        .add_replica(5, cluster.node(5).config().node())
        .await
        .unwrap();
    assert_eq!(again.voters, vec![1, 2, 3, 4, 5]);
    let topology = cluster.node(leader).topology();
    assert_eq!(topology.replicas.len(), 5);

    // With five voters, two can crash and writes still commit.
    let crashed: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .take(2)
        .collect();
    for id in &crashed {
        cluster.crash(*id).await;
    }
    let receipt = top_up_retrying(&cluster.node(leader), 31, WAIT).await;
    for id in &crashed {
        cluster.restart(*id).await;
    }
    cluster.applied_everywhere(receipt.index, WAIT).await;

    // Shrink back: remove one voter, which then no longer counts.
    let removed = crashed[0];
    let view = cluster.node(leader).remove_replica(removed).await.unwrap();
    assert!(!view.voters.contains(&removed) && !view.learners.contains(&removed));
    cluster.stop(removed).await;
    let receipt = top_up_retrying(&cluster.node(leader), 32, WAIT).await;
    cluster.applied_everywhere(receipt.index, WAIT).await;
    cluster.converged(WAIT).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_data_directory_becomes_replica_one_with_everything_kept() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let single_dir = replica_dir(dir.path(), 1);
    let single_state = {
        let mut config = SingleNodeConfig::new(&single_dir);
        config.cluster_id = "test".into();
        config.snapshot_every = 5;
        let single = SingleNode::open(config).unwrap();
        let mut commands = vec![node_register("node-1"), top_up(0)];
        commands.extend(job_with_output(
            "job-1",
            "att-1",
            "node-1",
            "from the single node\n",
        ));
        for n in 1..=12 {
            commands.push(top_up(n));
        }
        for command in commands {
            let receipt = single.submit_write(command).await.unwrap();
            assert!(receipt.outcome.is_ok());
        }
        let state = single.reader().read(state_json);
        single.shutdown().await;
        state
    };

    let mut cluster = TestCluster::start_in(dir, ClusterOptions::voters(3))
        .await
        .unwrap();
    let leader = cluster.leader(WAIT).await;
    assert_eq!(
        leader, 1,
        "the replica with the imported log wins the first election"
    );
    let imported = cluster.node(1).reader().applied_index();
    cluster.applied_everywhere(imported, WAIT).await;
    for id in [2, 3] {
        let node = cluster.node(id);
        assert!(node.stats().snapshots_installed_total >= 1, "replica {id}");
        let output = node
            .reader()
            .job_log(&"job-1".into(), &"att-1".into(), 0, 100)
            .unwrap();
        assert_eq!(output.data, b"from the single node\n");
    }
    // Equal but for the applied index: Raft adds its own entries (a new leader's blank).
    let without_index = |mut state: serde_json::Value| {
        state.as_object_mut().unwrap().remove("applied_index");
        state
    };
    assert_eq!(
        without_index(cluster.converged(WAIT).await),
        without_index(single_state)
    );
    let receipt = top_up_retrying(&cluster.node(2), 13, WAIT).await;
    cluster.applied_everywhere(receipt.index, WAIT).await;
    assert_eq!(cluster.node(3).reader().read(ledger_len), 14);

    // The directory now belongs to the Raft replica: the single node refuses it.
    cluster.stop(1).await;
    let mut config = SingleNodeConfig::new(cluster.data_dir(1));
    config.cluster_id = "test".into();
    let refused = SingleNode::open(config).err().expect("refused");
    assert_eq!(refused.code(), "cluster_config_invalid");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_http_forward_writes_and_refuse_a_wrong_secret() {
    init_tracing();
    let options = ClusterOptions {
        http: true,
        ..ClusterOptions::voters(3)
    };
    let cluster = TestCluster::start(options).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let receipt = top_up_retrying(&cluster.node(follower), 1, WAIT).await;
    cluster.applied_everywhere(receipt.index, WAIT).await;
    assert!(cluster.node(follower).reader().read(|s| has_top_up(s, 1)));

    let addr = cluster.node(leader).local_raft_addr().unwrap().to_string();
    let right = HttpTransport::new(tanvrit_testkit::cluster::TEST_SECRET, WAIT).unwrap();
    let reply = right
        .call(99, leader, &addr, Rpc::Status, WAIT)
        .await
        .unwrap();
    let RpcReply::Status(status) = reply else {
        panic!("not a status reply");
    };
    assert_eq!(status.id, leader);
    assert_eq!(status.node.name, name(leader));
    assert_eq!(status.role, Role::Leader);

    let wrong = HttpTransport::new("not-the-cluster-secret", WAIT).unwrap();
    let refused = wrong.call(99, leader, &addr, Rpc::Status, WAIT).await;
    assert_eq!(refused.unwrap_err(), TransportError::Unauthorized);
    // A forged write is refused too, and changes nothing.
    let forged = wrong
        .call(99, leader, &addr, Rpc::ForwardWrite(top_up(666)), WAIT)
        .await;
    assert_eq!(forged.unwrap_err(), TransportError::Unauthorized);
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let unreachable = right
        .call(99, 7, &gone, Rpc::Status, WAIT)
        .await
        .unwrap_err();
    assert!(unreachable.not_delivered(), "{unreachable:?}");
    assert!(!cluster.node(leader).reader().read(|s| has_top_up(s, 666)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_with_wrong_details_is_described_by_itself() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let fresh = cluster.start_new(4).await;
    let given = ReplicaNode {
        name: "replica-4".into(),
        region: String::new(),
        raft_addr: fresh.config().raft_addr.clone(),
        api_addr: String::new(),
    };
    cluster.node(leader).add_replica(4, given).await.unwrap();
    let members: BTreeMap<_, _> = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    assert_eq!(members[&4].region, fresh.config().region);
    assert_eq!(members[&4].api_addr, fresh.config().api_addr);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_raft_core_stops_by_itself_reports_it_failed() {
    init_tracing();
    let mut cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let node = cluster.node(follower);
    // Not failed while it works.
    let quiet = tokio::time::timeout(Duration::from_millis(300), node.failed()).await;
    assert!(quiet.is_err(), "a working replica reported a failure");

    // The core stops behind the replica's back (as when openraft panics): the server
    // must learn of it, to exit rather than serve a frozen state.
    node.raft().shutdown().await.unwrap();
    let reason = tokio::time::timeout(WAIT, node.failed())
        .await
        .expect("the failure to be reported");
    assert!(reason.contains("Raft core stopped"), "{reason}");

    // A shutdown asked for is not a failure.
    let other = cluster.node(leader);
    let watcher = tokio::spawn({
        let other = other.clone();
        async move { other.failed().await }
    });
    cluster.stop(leader).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watcher.is_finished(), "a graceful stop reported a failure");
    watcher.abort();
    cluster.shutdown().await;
}
