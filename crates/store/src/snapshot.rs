//! The single-node engine's snapshots of earlier versions, read once to move them into
//! the state tables ([`crate::state_tables`]), then deleted: a file in
//! `<data_dir>/snapshots/single/` ([`crate::snapshot_file`]) or, older still, one JSON
//! record in the `snapshot` table. [`Store::save_snapshot`] writes the file layout, so
//! tests can make such directories.

use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};
use tanvrit_state::State;

use crate::encoding::{decode, encode, RECORD_VERSION};
use crate::log::purge_in;
use crate::{Store, StoreError, SNAPSHOT};

const WHAT: &str = "snapshot";
const CURRENT: &str = "current";

#[derive(Serialize)]
struct SnapshotRecordRef<'a> {
    v: u64,
    index: u64,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotRecord {
    v: u64,
    index: u64,
    state: State,
}

/// The bytes the single-node `snapshot` record holds: `{"v":1,"index":N,"state":...}`.
pub fn encode_snapshot_record(index: u64, state: &State) -> Result<Vec<u8>, StoreError> {
    encode(
        WHAT,
        &SnapshotRecordRef {
            v: RECORD_VERSION,
            index,
            state,
        },
    )
}

/// Decodes the single-node `snapshot` record into its index and state (secondary
/// indexes of the state are rebuilt while decoding).
pub fn decode_snapshot_record(bytes: &[u8]) -> Result<(u64, State), StoreError> {
    let record: SnapshotRecord = decode(WHAT, bytes, |r: &SnapshotRecord| r.v)?;
    Ok((record.index, record.state))
}

/// The snapshot directory group of the single-node engine.
pub const SINGLE_NODE_GROUP: &str = "single";

impl Store {
    /// Writes `state` (a [`State`] or its image) as of `index` to a new snapshot file (no database lock is held
    /// meanwhile), then purges log entries `<= index` and the legacy snapshot record in
    /// one durable transaction, which also makes earlier non-durable job-log writes
    /// durable.
    pub fn save_snapshot(
        &self,
        index: u64,
        state: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let dir = self.snapshot_dir(SINGLE_NODE_GROUP)?;
        let mut writer = dir.create(index, &())?;
        writer.write_state(state)?;
        writer.finish()?;
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.remove(CURRENT)?;
        }
        purge_in(&txn, index)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes the single-node snapshot record and files (their state is in the tables).
    pub fn delete_snapshot(&self) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.remove(CURRENT)?;
        }
        txn.commit()?;
        let dir = self.snapshot_dir(SINGLE_NODE_GROUP)?;
        std::fs::remove_dir_all(dir.path())
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.path().display())))
    }

    /// The latest snapshot and its index, if one was saved: the newest snapshot file, or
    /// else a legacy snapshot record. Secondary indexes of the state are rebuilt while
    /// decoding.
    pub fn load_snapshot(&self) -> Result<Option<(u64, State)>, StoreError> {
        let dir = self.snapshot_dir(SINGLE_NODE_GROUP)?;
        if let Some(file) = dir.current::<()>()? {
            let state = dir.read_state(&file)?;
            return Ok(Some((file.index, state)));
        }
        let txn = self.db().begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let Some(value) = table.get(CURRENT)? else {
            return Ok(None);
        };
        decode_snapshot_record(value.value()).map(Some)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use tanvrit_api::{BusinessId, EntryId, EntryKind, KeyId, NodeId, Resources};
    use tanvrit_state::{Command, State};

    use crate::{Store, StoreError, SNAPSHOT};

    fn commands() -> Vec<Command> {
        vec![
            Command::NodeRegister {
                node: NodeId::from("node-1"),
                name: "n1".into(),
                resources: Resources {
                    cpu_millis: 4000,
                    memory_mb: 8192,
                    gpus: 0,
                },
                labels: BTreeMap::new(),
                drivers: Vec::new(),
                at: 10,
            },
            Command::LedgerEntryCreate {
                entry: EntryId::from("ent-1"),
                business: BusinessId::from("biz"),
                kind: EntryKind::TopUp,
                amount: 5_000_000,
                idempotency_key: "top-1".into(),
                note: None,
                at: 11,
            },
            Command::KeyRevoke {
                key: KeyId::from("missing"),
                at: 12,
            },
        ]
    }

    /// Three commands applied at indexes 1-3 (a node, a top-up, a refused revoke), and
    /// the state they leave: the small state the store's snapshot tests write.
    pub(crate) fn applied() -> (Vec<(u64, Command)>, State) {
        let entries: Vec<(u64, Command)> = commands()
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 1, c))
            .collect();
        let mut state = State::new();
        for (index, command) in &entries {
            let _ = state.apply(*index, command);
        }
        (entries, state)
    }

    #[test]
    fn a_snapshot_round_trips_through_reopen_with_indexes_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (entries, state) = applied();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.load_snapshot().unwrap().is_none());
            store.append_log(&entries).unwrap();
            store.save_snapshot(3, &state).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (index, loaded) = store.load_snapshot().unwrap().unwrap();
        assert_eq!(index, 3);
        assert_eq!(loaded, state);
        assert!(loaded.indexes_consistent());
        assert!(loaded.node(&NodeId::from("node-1")).is_some());
    }

    #[test]
    fn saving_a_snapshot_purges_the_log_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let (entries, _) = applied();
        let store = Store::open(dir.path()).unwrap();
        store.append_log(&entries).unwrap();
        let mut at_two = State::new();
        for (index, command) in &entries[..2] {
            let _ = at_two.apply(*index, command);
        }
        store.save_snapshot(2, &at_two).unwrap();
        let remaining = store.read_log(0, 10).unwrap();
        assert_eq!(remaining, entries[2..].to_vec());
        assert_eq!(store.last_purged_log_index().unwrap(), 2);
        assert_eq!(store.last_log_index().unwrap(), 3);
    }

    #[test]
    fn a_legacy_snapshot_record_is_read_until_a_file_snapshot_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (entries, state) = applied();
        let store = Store::open(dir.path()).unwrap();
        store.append_log(&entries).unwrap();
        let mut at_two = State::new();
        for (index, command) in &entries[..2] {
            let _ = at_two.apply(*index, command);
        }
        let txn = store.db().begin_write().unwrap();
        txn.open_table(SNAPSHOT)
            .unwrap()
            .insert(
                "current",
                super::encode_snapshot_record(2, &at_two)
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(store.load_snapshot().unwrap(), Some((2, at_two)));
        store.save_snapshot(3, &state).unwrap();
        assert_eq!(store.load_snapshot().unwrap(), Some((3, state)));
        let txn = redb::ReadableDatabase::begin_read(store.db()).unwrap();
        assert!(txn
            .open_table(SNAPSHOT)
            .unwrap()
            .get("current")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_snapshot_of_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(SNAPSHOT)
            .unwrap()
            .insert("current", br#"{"v":7,"blob":"..."}"#.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = store.load_snapshot().unwrap_err();
        assert!(matches!(
            err,
            StoreError::UnsupportedRecord {
                what: "snapshot",
                found: 7,
                supported: 1
            }
        ));
    }
}
