//! openraft's own storage test suite against the redb-backed log store and state
//! machine, plus the durability properties the suite does not check.

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};
use tanvrit_api::KeyId;
use tanvrit_cluster::raft::types::{Entry, StorageError, TypeConfig};
use tanvrit_cluster::raft::{LogStore, StateMachine, WriteRequest};
use tanvrit_state::{Command, Effect};
use tanvrit_store::Store;
use tanvrit_testkit::commands;
use tempfile::TempDir;

struct RedbBuilder;

fn open(dir: &TempDir) -> (LogStore, StateMachine) {
    let store = Store::open(dir.path()).expect("open store");
    let sm = StateMachine::open(store.clone()).expect("open state machine");
    (LogStore::new(store), sm)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open(&dir);
        Ok((dir, log, sm))
    }
}

/// The suite builds its own runtime, so this is a plain test.
#[test]
fn the_redb_store_passes_openraft_s_storage_suite() {
    Suite::test_all(RedbBuilder).expect("storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, key: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(WriteRequest::single(Command::KeyRevoke {
            key: KeyId::from(key),
            at: index as i64,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_vote_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vote = openraft::Vote::new_committed(3, 1);
    {
        let (mut log, mut sm) = open(&dir);
        log.save_vote(&vote).await.unwrap();
        let entries = vec![normal(1, 1, "a"), normal(1, 2, "b"), normal(2, 3, "c")];
        // `append` needs a `LogFlushed`, which only openraft can make: go through the
        // blocking helper openraft provides for tests.
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries.clone())
            .await
            .unwrap();
        let replies = sm.apply(entries[..2].to_vec()).await.unwrap();
        assert_eq!(replies.len(), 2);
        let snap = {
            use openraft::RaftSnapshotBuilder;
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap()
        };
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 2)));
        log.save_committed(Some(log_id(2, 3))).await.unwrap();
    }
    let (mut log, mut sm) = open(&dir);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(2, 3)));
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(
        applied,
        Some(log_id(1, 2)),
        "the snapshot is the applied state"
    );
    assert_eq!(sm.reader().applied_index(), 2);
    // The committed marker was written without fsync, but a clean close keeps it.
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 3)));
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_finishes_after_a_newer_install_does_not_replace_it() {
    use openraft::RaftSnapshotBuilder;
    let leader_dir = tempfile::tempdir().unwrap();
    let (_, mut leader) = open(&leader_dir);
    leader
        .apply(
            (1..=5)
                .map(|i| normal(1, i, &format!("k{i}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let shipped = leader.get_current_snapshot().await.unwrap().unwrap();

    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut sm) = open(&dir);
        sm.apply(vec![blank(1, 1), blank(1, 2)]).await.unwrap();
        // The copy is taken at index 2; the install of index 5 lands before it is saved.
        let mut late = sm.get_snapshot_builder().await;
        sm.install_snapshot(&shipped.meta, shipped.snapshot)
            .await
            .unwrap();
        late.build_snapshot().await.unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 5)));
    }
    let (_, mut sm) = open(&dir);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 5)));
    assert_eq!(sm.reader().applied_index(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_written_before_batching_still_decodes_and_applies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // The stored shape of an entry from before batching: `{"command": …}`, one command.
    let entry = Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Normal(WriteRequest::single(commands::top_up(1))),
    };
    let mut old = serde_json::to_value(&entry).unwrap();
    let request = old["payload"]["Normal"].as_object_mut().unwrap();
    let command = request.remove("commands").unwrap()[0].take();
    request.insert("command".into(), command);
    assert!(
        !old.to_string().contains("\"commands\""),
        "the old shape: {old}"
    );
    store.raft_append(&[(1, &old)]).unwrap();

    let mut log = LogStore::new(store.clone());
    let mut sm = StateMachine::open(store).unwrap();
    let read = log.try_get_log_entries(1..2).await.unwrap();
    assert_eq!(read, vec![entry]);
    let replies = sm.apply(read).await.unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0.len(), 1);
    assert!(replies[0].0[0].is_ok(), "{:?}", replies[0]);
    assert!(sm.reader().read(|state| commands::has_top_up(state, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_in_a_batch_leaves_its_neighbours_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut sm) = open(&dir);
    let batch = Entry {
        log_id: log_id(1, 2),
        payload: EntryPayload::Normal(WriteRequest {
            commands: vec![
                commands::top_up(1),
                Command::KeyRevoke {
                    key: KeyId::from("no-such-key"),
                    at: 5,
                },
                commands::top_up(2),
                // The first one's idempotency key again: it sees the first one applied.
                commands::top_up(1),
            ],
        }),
    };
    let replies = sm.apply(vec![blank(1, 1), batch]).await.unwrap();
    assert_eq!(replies.len(), 2, "one reply per entry");
    assert!(replies[0].0.is_empty(), "a blank entry has no outcomes");
    let outcomes = &replies[1].0;
    assert_eq!(outcomes.len(), 4, "one outcome per command: {outcomes:?}");
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert!(
        matches!(
            &outcomes[3],
            Ok(Effect::Entry {
                duplicate: true,
                ..
            })
        ),
        "{:?}",
        outcomes[3]
    );
    let reader = sm.reader();
    assert_eq!(reader.applied_index(), 2);
    reader.read(|state| {
        assert!(commands::has_top_up(state, 1) && commands::has_top_up(state, 2));
        assert_eq!(commands::ledger_len(state), 2);
    });
}
