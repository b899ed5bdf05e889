//! `SingleNode` end to end on a real data directory: durability across reopen,
//! snapshots, group commit, rejections, read barriers, job logs and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tanvrit_api::{
    AttemptId, BusinessId, Consistency, EntryId, EntryKind, JobId, JobSpec, JobState, KeyId,
    NodeId, Rates, Resources, Role,
};
use tanvrit_cluster::{ClusterError, ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_state::{Command, Effect, FinishKind, JobFilter, Placement, Rejection, State};
use tanvrit_store::Store;

fn config(dir: &tempfile::TempDir) -> SingleNodeConfig {
    SingleNodeConfig::new(dir.path())
}

fn business() -> BusinessId {
    BusinessId::from("biz-1")
}

fn node_register(node: &str) -> Command {
    Command::NodeRegister {
        node: NodeId::from(node),
        name: node.to_string(),
        resources: Resources {
            cpu_millis: 64_000,
            memory_mb: 65_536,
            gpus: 0,
        },
        labels: BTreeMap::new(),
        drivers: Vec::new(),
        at: 1_000,
    }
}

fn top_up(n: u64) -> Command {
    Command::LedgerEntryCreate {
        entry: EntryId(format!("ent-{n}")),
        business: business(),
        kind: EntryKind::TopUp,
        amount: 1_000_000,
        idempotency_key: format!("top-up-{n}"),
        note: None,
        at: 1_000 + n as i64,
    }
}

/// One job's whole life, with two log chunks: every command is accepted.
fn job_life(job: &str, attempt: &str, node: &str) -> Vec<Command> {
    let (job, attempt) = (JobId::from(job), AttemptId::from(attempt));
    vec![
        Command::JobSubmit {
            job: job.clone(),
            business: business(),
            spec: JobSpec {
                command: vec!["echo".into(), "hi".into()],
                resources: Resources {
                    cpu_millis: 1000,
                    memory_mb: 512,
                    gpus: 0,
                },
                ..JobSpec::default()
            },
            idempotency_key: None,
            rates: Rates::default(),
            at: 2_000,
        },
        Command::JobsAssign {
            placements: vec![Placement {
                job: job.clone(),
                attempt: attempt.clone(),
                node: NodeId::from(node),
            }],
            at: 2_001,
        },
        Command::AttemptStarted {
            job: job.clone(),
            attempt: attempt.clone(),
            at: 2_002,
        },
        Command::LogAppend {
            job: job.clone(),
            attempt: attempt.clone(),
            offset: 0,
            data: "hello ".into(),
            at: 2_003,
        },
        Command::LogAppend {
            job: job.clone(),
            attempt: attempt.clone(),
            offset: 6,
            data: "world\n".into(),
            at: 2_004,
        },
        Command::AttemptFinished {
            job,
            attempt,
            kind: FinishKind::Succeeded,
            exit_code: Some(0),
            reason: None,
            usage: None,
            at: 2_005,
        },
    ]
}

fn workload() -> Vec<Command> {
    let mut commands = vec![node_register("node-1"), top_up(1)];
    commands.extend(job_life("job-1", "att-1", "node-1"));
    commands.extend(job_life("job-2", "att-2", "node-1"));
    commands
}

/// Submits in order; every command must be accepted. Returns (index, command) pairs.
async fn submit_all(node: &SingleNode, commands: Vec<Command>) -> Vec<(u64, Command)> {
    let mut applied = Vec::new();
    for command in commands {
        let receipt = node.submit_write(command.clone()).await.unwrap();
        assert!(
            receipt.outcome.is_ok(),
            "{command:?} -> {:?}",
            receipt.outcome
        );
        applied.push((receipt.index, command));
    }
    applied
}

/// The whole state the node holds: its tables (memory keeps only the work in flight).
fn state_of(node: &SingleNode) -> State {
    node.reader()
        .store()
        .load_state("single")
        .unwrap()
        .unwrap_or_default()
}

/// Compares the replicated data. `State`'s derived `PartialEq` also compares its
/// secondary indexes, where a state rebuilt from a snapshot lacks the empty sets a
/// state built by `apply` leaves behind; both must still be consistent indexes.
fn assert_same_state(left: &State, right: &State) {
    assert!(left.indexes_consistent() && right.indexes_consistent());
    assert_eq!(
        serde_json::to_value(left).unwrap(),
        serde_json::to_value(right).unwrap()
    );
}

fn straight_apply(entries: &[(u64, Command)]) -> State {
    let mut state = State::new();
    for (index, command) in entries {
        let _ = state.apply(*index, command);
    }
    state
}

async fn close(node: Arc<SingleNode>) {
    node.shutdown().await;
    drop(node);
}

/// Polls `condition` every few milliseconds until it holds or 10 s pass.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn log_text(node: &SingleNode, job: &str, attempt: &str) -> String {
    let window = node
        .reader()
        .job_log(&JobId::from(job), &AttemptId::from(attempt), 0, 1 << 20)
        .unwrap();
    assert_eq!(window.offset, 0);
    assert_eq!(window.next_offset, window.data.len() as u64);
    String::from_utf8(window.data).unwrap()
}

#[tokio::test]
async fn writes_survive_reopen_with_an_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    let entries = submit_all(&node, workload()).await;
    let before = state_of(&node);
    assert_eq!(entries.last().unwrap().0, entries.len() as u64);
    assert_eq!(before.applied_index(), entries.len() as u64);
    let job = before.job(&JobId::from("job-2")).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    close(node).await;

    let node = SingleNode::open(config(&dir)).unwrap();
    assert_eq!(state_of(&node), before);
    assert_eq!(node.reader().applied_index(), entries.len() as u64);
    // The log continues where it stopped.
    let receipt = node.submit_write(top_up(2)).await.unwrap();
    assert_eq!(receipt.index, entries.len() as u64 + 1);
    close(node).await;
}

#[tokio::test]
async fn the_tables_hold_the_state_and_the_log_is_purged_behind_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    cfg.snapshot_every = 5;
    let node = SingleNode::open(cfg.clone()).unwrap();
    let entries = submit_all(&node, workload()).await;
    eventually("a log purge", || node.stats().log_purges >= 1).await;
    let straight = straight_apply(&entries);
    assert_eq!(state_of(&node), straight);
    close(node).await;
    {
        let store = Store::open(dir.path()).unwrap();
        let tables = store.load_state("single").unwrap().unwrap();
        assert_same_state(&tables, &straight);
        assert_eq!(tables.applied_index(), entries.len() as u64);
        let purged = store.last_purged_log_index().unwrap();
        assert!(purged >= 5, "purged through {purged}");
        let rest = store.read_log(0, u64::MAX).unwrap();
        assert_eq!(rest, entries[purged as usize..].to_vec());
    }

    // Reopen: the tables alone give the same state and logs.
    let node = SingleNode::open(cfg).unwrap();
    assert_same_state(&state_of(&node), &straight);
    assert_eq!(log_text(&node, "job-1", "att-1"), "hello world\n");
    assert_eq!(log_text(&node, "job-2", "att-2"), "hello world\n");
    close(node).await;
}

#[tokio::test]
async fn a_snapshot_of_an_earlier_version_moves_into_the_tables_with_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<(u64, Command)> = workload()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (i as u64 + 1, c))
        .collect();
    let half = entries.len() / 2;
    {
        let store = Store::open(dir.path()).unwrap();
        store.append_log(&entries).unwrap();
        store
            .save_snapshot(half as u64, &straight_apply(&entries[..half]))
            .unwrap();
    }
    let node = SingleNode::open(config(&dir)).unwrap();
    let straight = straight_apply(&entries);
    assert_same_state(&state_of(&node), &straight);
    close(node).await;
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.load_snapshot().unwrap().is_none(),
        "the snapshot is gone"
    );
    assert_same_state(&store.load_state("single").unwrap().unwrap(), &straight);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_group_committed_with_distinct_indices() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let node = node.clone();
            tokio::spawn(async move { node.submit_write(top_up(n)).await })
        })
        .collect();
    let mut indices = BTreeSet::new();
    for task in tasks {
        let receipt = task.await.unwrap().unwrap();
        assert!(receipt.outcome.is_ok());
        assert!(
            indices.insert(receipt.index),
            "index {} twice",
            receipt.index
        );
    }
    assert_eq!(indices, (1..=200).collect::<BTreeSet<u64>>());
    let stats = node.stats();
    assert_eq!(stats.writes, 200);
    assert!(
        stats.fsyncs < stats.writes,
        "group commit should need fewer fsyncs than writes: {stats:?}"
    );
    assert_eq!(stats.batches, stats.fsyncs);
    let balance = node
        .reader()
        .read(|s| s.account(&business()).unwrap().available);
    assert_eq!(balance, 200 * 1_000_000);
    close(node).await;
}

#[tokio::test]
async fn a_rejected_command_gets_an_index_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    submit_all(&node, vec![node_register("node-1"), top_up(1)]).await;
    let before = state_of(&node);
    let receipt = node
        .submit_write(Command::KeyRevoke {
            key: KeyId::from("no-such-key"),
            at: 5_000,
        })
        .await
        .unwrap();
    assert_eq!(receipt.index, 3);
    let rejection: Rejection = receipt.outcome.unwrap_err();
    assert_eq!(rejection.code(), "not_found");
    let mut after = state_of(&node);
    assert_eq!(after.applied_index(), 3);
    after.set_applied_index(before.applied_index());
    assert_eq!(after, before);
    close(node).await;
}

#[tokio::test]
async fn min_index_beyond_applied_times_out_with_not_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    cfg.min_index_wait = Duration::from_millis(50);
    let node = SingleNode::open(cfg).unwrap();
    submit_all(&node, vec![top_up(1), top_up(2)]).await;
    assert_eq!(node.read_barrier(Consistency::Stale).await.unwrap(), 2);
    assert_eq!(node.read_barrier(Consistency::Strict).await.unwrap(), 2);
    assert_eq!(
        node.read_barrier(Consistency::MinIndex(2)).await.unwrap(),
        2
    );
    let err = node
        .read_barrier(Consistency::MinIndex(7))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClusterError::NotCaughtUp {
            wanted: 7,
            applied: 2,
            retry_after: Duration::from_secs(1),
        }
    );
    assert_eq!(err.code(), "not_caught_up");
    close(node).await;
}

#[tokio::test]
async fn a_min_index_read_waits_for_a_write_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    let waiter = {
        let node = node.clone();
        tokio::spawn(async move { node.read_barrier(Consistency::MinIndex(1)).await })
    };
    node.submit_write(top_up(1)).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 1);
    close(node).await;
}

#[tokio::test]
async fn job_logs_from_log_append_are_readable_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    submit_all(&node, workload()).await;
    assert_eq!(log_text(&node, "job-1", "att-1"), "hello world\n");
    // A repeated chunk is a duplicate: acknowledged, nothing stored twice.
    let repeat = node
        .submit_write(Command::LogAppend {
            job: JobId::from("job-1"),
            attempt: AttemptId::from("att-1"),
            offset: 0,
            data: "hello ".into(),
            at: 3_000,
        })
        .await
        .unwrap();
    assert!(matches!(
        repeat.outcome,
        Ok(Effect::LogAppended {
            duplicate: true,
            ..
        })
    ));
    close(node).await;

    let node = SingleNode::open(config(&dir)).unwrap();
    assert_eq!(log_text(&node, "job-1", "att-1"), "hello world\n");
    let tail = node
        .reader()
        .job_log(&JobId::from("job-2"), &AttemptId::from("att-2"), 6, 100)
        .unwrap();
    assert_eq!(
        (tail.offset, tail.data.as_slice(), tail.next_offset),
        (6, b"world\n".as_slice(), 12)
    );
    close(node).await;
}

#[tokio::test]
async fn replay_recreates_job_log_chunks_missing_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // A crash after the log commit but before the chunk write leaves exactly this:
    // the commands in the log, no chunks on disk.
    {
        let store = Store::open(dir.path()).unwrap();
        let entries: Vec<(u64, Command)> = workload()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 1, c))
            .collect();
        store.append_log(&entries).unwrap();
        let read = store
            .read_job_log(&JobId::from("job-1"), &AttemptId::from("att-1"), 0, 100)
            .unwrap();
        assert!(read.data.is_empty());
    }
    let node = SingleNode::open(config(&dir)).unwrap();
    assert_eq!(log_text(&node, "job-1", "att-1"), "hello world\n");
    assert_eq!(node.reader().applied_index(), workload().len() as u64);
    close(node).await;
}

/// Retention at 3000 with room for one job: `job-1` and `job-2` both finished at 2005,
/// so `job-1` (the lower id) goes.
fn collect_one() -> Command {
    Command::JobsCollect {
        cutoff: 3_000,
        limit: 1,
        at: 3_000,
    }
}

#[tokio::test]
async fn a_collected_jobs_output_is_deleted_and_stays_deleted_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    submit_all(&node, workload()).await;
    let receipt = node.submit_write(collect_one()).await.unwrap();
    match receipt.outcome {
        Ok(Effect::JobsCollected { jobs, more, .. }) => {
            assert_eq!(jobs, [JobId::from("job-1")]);
            assert!(more, "job-2 is due too");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log_text(&node, "job-1", "att-1"), "");
    assert_eq!(log_text(&node, "job-2", "att-2"), "hello world\n");
    close(node).await;

    let node = SingleNode::open(config(&dir)).unwrap();
    assert!(node
        .reader()
        .read(|s| s.job(&JobId::from("job-1")).is_none()));
    assert_eq!(
        log_text(&node, "job-1", "att-1"),
        "",
        "replay deletes it again"
    );
    assert_eq!(log_text(&node, "job-2", "att-2"), "hello world\n");
    close(node).await;
}

#[tokio::test]
async fn replay_after_a_crash_does_not_bring_back_a_collected_jobs_output() {
    let dir = tempfile::tempdir().unwrap();
    // The log holds the jobs and their collection; no chunk reached the disk.
    {
        let store = Store::open(dir.path()).unwrap();
        let mut commands = workload();
        commands.push(collect_one());
        let entries: Vec<(u64, Command)> = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 1, c))
            .collect();
        store.append_log(&entries).unwrap();
    }
    let node = SingleNode::open(config(&dir)).unwrap();
    assert_eq!(log_text(&node, "job-1", "att-1"), "");
    assert_eq!(log_text(&node, "job-2", "att-2"), "hello world\n");
    close(node).await;
}

#[tokio::test]
async fn writes_after_shutdown_fail_with_shutting_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    node.submit_write(top_up(1)).await.unwrap();
    node.shutdown().await;
    let err = node.submit_write(top_up(2)).await.unwrap_err();
    assert_eq!(err, ClusterError::ShuttingDown);
    assert_eq!(err.code(), "shutting_down");
    // A second shutdown is harmless, and reads still work.
    node.shutdown().await;
    assert_eq!(node.reader().applied_index(), 1);
}

#[tokio::test]
async fn a_single_node_always_holds_leadership_and_its_watch_never_closes() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    let mut leadership = node.leadership();
    assert!(*leadership.borrow_and_update());
    node.submit_write(top_up(1)).await.unwrap();
    // Nothing changes and the sender stays alive while the node lives.
    let changed = tokio::time::timeout(Duration::from_millis(50), leadership.changed()).await;
    assert!(changed.is_err(), "the watch neither changed nor closed");
    assert!(*node.leadership().borrow());
    close(node).await;
}

#[tokio::test]
async fn topology_shows_one_leader_in_single_node_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    cfg.replica_name = "alpha".into();
    cfg.region = "eu-1".into();
    cfg.cluster_id = "c-9".into();
    let node = SingleNode::open(cfg).unwrap();
    node.submit_write(top_up(1)).await.unwrap();
    assert_eq!(node.role(), Role::Leader);
    assert_eq!(node.leader_id().as_deref(), Some("alpha"));
    let topology = node.topology();
    assert_eq!(topology.mode, "single_node");
    assert_eq!(topology.cluster_id, "c-9");
    assert_eq!(topology.leader.as_deref(), Some("alpha"));
    assert_eq!(topology.index, 1);
    assert_eq!(topology.replicas.len(), 1);
    let me = &topology.replicas[0];
    assert_eq!((me.name.as_str(), me.region.as_str()), ("alpha", "eu-1"));
    assert_eq!(
        (me.role, me.applied_index, me.reachable),
        (Role::Leader, 1, true)
    );
    assert_eq!(
        node.reader()
            .store()
            .meta_get("cluster_id")
            .unwrap()
            .unwrap(),
        b"c-9"
    );
    close(node).await;
}

#[tokio::test]
async fn a_failed_log_commit_fails_the_batch_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    node.submit_write(top_up(1)).await.unwrap();
    let before = state_of(&node);
    // Someone else takes index 2 behind the writer's back: its next commit must fail.
    node.reader()
        .store()
        .append_log(&[(2, top_up(99))])
        .unwrap();
    let err = node.submit_write(top_up(2)).await.unwrap_err();
    assert_eq!(err.code(), "storage_error");
    assert_eq!(state_of(&node), before);
    assert_eq!(node.reader().applied_index(), 1);
    assert_eq!(node.stats().writes, 1);
    // The log no longer matches what was applied: every later write is refused too.
    let err = node.submit_write(top_up(3)).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Storage(ref m) if m.contains("restart")),
        "{err:?}"
    );
    close(node).await;

    // A restart recovers from the log, which is the truth.
    let node = SingleNode::open(config(&dir)).unwrap();
    assert_eq!(node.reader().applied_index(), 2);
    let balance = node
        .reader()
        .read(|s| s.account(&business()).unwrap().available);
    assert_eq!(balance, 2_000_000);
    close(node).await;
}

#[tokio::test]
async fn jobs_are_listed_from_the_tables_newest_first_by_business_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    let entries = submit_all(&node, workload()).await;
    let expected = straight_apply(&entries);
    let (memory, _) = expected.jobs(&JobFilter {
        limit: 100,
        ..JobFilter::default()
    });
    let memory: Vec<_> = memory.into_iter().cloned().collect();
    let (listed, next) = node
        .reader()
        .read(|s| {
            s.list_jobs(&JobFilter {
                limit: 100,
                ..JobFilter::default()
            })
        })
        .unwrap();
    assert_eq!(listed, memory);
    assert_eq!(next, None);
    let (by_business, _) = node
        .reader()
        .read(|s| {
            s.list_jobs(&JobFilter {
                business: Some(business()),
                limit: 1,
                ..JobFilter::default()
            })
        })
        .unwrap();
    assert_eq!(by_business, memory[..1].to_vec());
    close(node).await;
}

fn small_job(job: &str) -> Command {
    tanvrit_testkit::commands::small_job(job, &business())
}

fn pending_page(node: &SingleNode) -> (Vec<JobId>, Option<JobId>) {
    let (jobs, next) = node
        .reader()
        .read(|s| {
            s.list_jobs(&JobFilter {
                state: Some(JobState::Pending),
                limit: 10,
                ..JobFilter::default()
            })
        })
        .unwrap();
    (jobs.into_iter().map(|j| j.id).collect(), next)
}

#[tokio::test]
async fn a_rare_state_is_listed_from_its_index_in_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let node = SingleNode::open(config(&dir)).unwrap();
    // Three pending jobs, then 500 cancelled ones with newer ids: a scan by id would
    // give up long before it reached the pending ones.
    let mut commands = vec![top_up(1)];
    for n in 0..3 {
        commands.push(small_job(&format!("job-a-{n}")));
    }
    for n in 0..500 {
        let job = format!("job-b-{n:03}");
        commands.push(small_job(&job));
        commands.push(Command::JobCancel {
            job: JobId::from(job.as_str()),
            reason: None,
            at: 3_000,
        });
    }
    submit_all(&node, commands).await;
    let expected: Vec<JobId> = (0..3)
        .rev()
        .map(|n| JobId::from(format!("job-a-{n}").as_str()))
        .collect();
    assert_eq!(pending_page(&node), (expected.clone(), None));
    close(node).await;
    // And after a restart, from the same index on disk.
    let node = SingleNode::open(config(&dir)).unwrap();
    assert_eq!(pending_page(&node), (expected, None));
    close(node).await;
}
