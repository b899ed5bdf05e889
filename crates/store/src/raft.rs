//! The Raft replica's tables: its log, its small durable values (vote, committed, last
//! purged); its snapshots are files ([`crate::snapshot_file`], group [`RAFT_GROUP`]).
//!
//! The store does not know openraft: entries, votes and snapshot metadata are any serde
//! type the caller picks, each stored in a versioned JSON envelope like every other
//! record. `tanvrit-cluster` implements openraft's storage traits on top of these calls.
//!
//! Durability: every method commits with redb's default durability (fsync before it
//! returns) except [`Store::raft_put`] with `durable = false`, which is for values that
//! may be lost in a crash because they can be re-learnt (the committed index).

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tanvrit_state::State;

use crate::encoding::{decode, encode, RECORD_VERSION};
use crate::{Store, StoreError, RAFT_LOG, RAFT_META, RAFT_SNAPSHOT};

const ENTRY: &str = "raft log entry";
const VALUE: &str = "raft value";
const SNAPSHOT: &str = "raft snapshot";
const CURRENT: &str = "current";

/// The snapshot directory group of a Raft replica (`<data_dir>/snapshots/raft`).
pub const RAFT_GROUP: &str = "raft";

/// The key of the last purged log id in `raft_meta`; written only with a purge.
pub const RAFT_KEY_PURGED: &str = "purged";

#[derive(Serialize)]
struct EntryRef<'a, E> {
    v: u64,
    entry: &'a E,
}

#[derive(Deserialize)]
struct EntryRecord<E> {
    v: u64,
    entry: E,
}

#[derive(Serialize)]
struct ValueRef<'a, T> {
    v: u64,
    value: &'a T,
}

#[derive(Deserialize)]
struct ValueRecord<T> {
    v: u64,
    value: T,
}

#[derive(Serialize)]
struct SnapshotRef<'a, M> {
    v: u64,
    meta: &'a M,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotRecord<M> {
    v: u64,
    meta: M,
    state: State,
}

/// The bytes a `raft_log` record holds: `{"v":1,"entry":...}`. Public (with its
/// decoder and the other record codecs) so tools and the fuzz targets use the exact
/// format the store does.
pub fn encode_raft_entry<E: Serialize>(entry: &E) -> Result<Vec<u8>, StoreError> {
    encode(
        ENTRY,
        &EntryRef {
            v: RECORD_VERSION,
            entry,
        },
    )
}

/// Decodes a `raft_log` record.
pub fn decode_raft_entry<E: DeserializeOwned>(bytes: &[u8]) -> Result<E, StoreError> {
    let record: EntryRecord<E> = decode(ENTRY, bytes, |r: &EntryRecord<E>| r.v)?;
    Ok(record.entry)
}

/// The bytes a `raft_meta` record holds: `{"v":1,"value":...}`.
pub fn encode_raft_value<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode(
        VALUE,
        &ValueRef {
            v: RECORD_VERSION,
            value,
        },
    )
}

/// Decodes a `raft_meta` record.
pub fn decode_raft_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let record: ValueRecord<T> = decode(VALUE, bytes, |r: &ValueRecord<T>| r.v)?;
    Ok(record.value)
}

/// The bytes the `raft_snapshot` record holds: `{"v":1,"meta":...,"state":...}`.
pub fn encode_raft_snapshot<M: Serialize>(meta: &M, state: &State) -> Result<Vec<u8>, StoreError> {
    encode(
        SNAPSHOT,
        &SnapshotRef {
            v: RECORD_VERSION,
            meta,
            state,
        },
    )
}

/// Decodes the `raft_snapshot` record into its metadata and state.
pub fn decode_raft_snapshot<M: DeserializeOwned>(bytes: &[u8]) -> Result<(M, State), StoreError> {
    let record: SnapshotRecord<M> = decode(SNAPSHOT, bytes, |r: &SnapshotRecord<M>| r.v)?;
    Ok((record.meta, record.state))
}

impl Store {
    /// Appends Raft log entries in ONE durable transaction (fsynced before it returns).
    /// The first index must follow the last entry in the table; an empty table accepts
    /// any start (after a purge or a snapshot install the log restarts past it).
    pub fn raft_append<E: Serialize>(&self, entries: &[(u64, &E)]) -> Result<(), StoreError> {
        self.raft_append_and_put::<E, ()>(entries, None)
    }

    /// [`Store::raft_append`], and in the same durable transaction sets one `raft_meta`
    /// value (as [`Store::raft_put`] would): a value written along with the log costs
    /// no transaction of its own.
    pub fn raft_append_and_put<E: Serialize, T: Serialize>(
        &self,
        entries: &[(u64, &E)],
        put: Option<(&str, &T)>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let put = match put {
            Some((key, value)) => Some((
                key,
                encode(
                    VALUE,
                    &ValueRef {
                        v: RECORD_VERSION,
                        value,
                    },
                )?,
            )),
            None => None,
        };
        let mut encoded = Vec::with_capacity(entries.len());
        for (index, entry) in entries {
            encoded.push((*index, encode_raft_entry(*entry)?));
        }
        let txn = self.log_db()?.begin_write()?;
        {
            let mut log = txn.open_table(RAFT_LOG)?;
            let mut expected = log.last()?.map(|(k, _)| k.value() + 1);
            for (index, bytes) in &encoded {
                if let Some(expected) = expected {
                    if *index != expected {
                        return Err(StoreError::LogOutOfOrder {
                            expected,
                            got: *index,
                        });
                    }
                }
                log.insert(*index, bytes.as_slice())?;
                expected = Some(index + 1);
            }
        }
        if let Some((key, bytes)) = &put {
            txn.open_table(RAFT_META)?.insert(*key, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Raft log entries with `from <= index < to_exclusive`, in order.
    pub fn raft_read<E: DeserializeOwned>(
        &self,
        from: u64,
        to_exclusive: u64,
    ) -> Result<Vec<(u64, E)>, StoreError> {
        if from >= to_exclusive {
            return Ok(Vec::new());
        }
        let txn = self.log_db()?.begin_read()?;
        let log = txn.open_table(RAFT_LOG)?;
        let mut out = Vec::new();
        for item in log.range(from..to_exclusive)? {
            let (k, v) = item?;
            out.push((k.value(), decode_raft_entry(v.value())?));
        }
        Ok(out)
    }

    /// The last entry of the Raft log, if it has any.
    pub fn raft_last<E: DeserializeOwned>(&self) -> Result<Option<(u64, E)>, StoreError> {
        let txn = self.log_db()?.begin_read()?;
        let log = txn.open_table(RAFT_LOG)?;
        let last = log.last()?;
        match last {
            Some((k, v)) => Ok(Some((k.value(), decode_raft_entry(v.value())?))),
            None => Ok(None),
        }
    }

    /// Deletes Raft log entries `>= index` durably (a new leader overwrote them).
    pub fn raft_truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.log_db()?.begin_write()?;
        {
            let mut log = txn.open_table(RAFT_LOG)?;
            log.retain_in(index.., |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes Raft log entries `<= index` and records `purged` (the caller's id of the
    /// last purged entry) under [`RAFT_KEY_PURGED`], in one durable transaction.
    pub fn raft_purge_through<P: Serialize>(
        &self,
        index: u64,
        purged: &P,
    ) -> Result<(), StoreError> {
        let bytes = encode_raft_value(purged)?;
        let txn = self.log_db()?.begin_write()?;
        {
            let mut log: Table<u64, &[u8]> = txn.open_table(RAFT_LOG)?;
            log.retain_in(..=index, |_, _| false)?;
            let mut meta = txn.open_table(RAFT_META)?;
            meta.insert(RAFT_KEY_PURGED, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Reads a small Raft value (vote, committed, purged).
    pub fn raft_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.log_db()?.begin_read()?;
        let meta = txn.open_table(RAFT_META)?;
        let value = meta.get(key)?;
        match value {
            Some(v) => Ok(Some(decode_raft_value(v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes a small Raft value. With `durable = false` the commit is not fsynced: it
    /// becomes durable with the next durable commit or is lost in a crash, so use it
    /// only for values a replica can re-learn (the committed index).
    pub fn raft_put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), StoreError> {
        let bytes = encode_raft_value(value)?;
        let mut txn = self.log_db()?.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The snapshot record earlier versions kept in `raft_snapshot`, if one is left: a
    /// replica converts it to a snapshot file at start (see [`RAFT_GROUP`]).
    pub fn raft_load_legacy_snapshot<M: DeserializeOwned>(
        &self,
    ) -> Result<Option<(M, State)>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(RAFT_SNAPSHOT)?;
        let Some(value) = table.get(CURRENT)? else {
            return Ok(None);
        };
        decode_raft_snapshot(value.value()).map(Some)
    }

    /// Deletes the legacy snapshot record once a snapshot file replaces it (durably).
    pub fn raft_delete_legacy_snapshot(&self) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        txn.open_table(RAFT_SNAPSHOT)?.remove(CURRENT)?;
        txn.commit()?;
        Ok(())
    }

    /// True when no Raft data was ever written: no log entry, no value, no snapshot.
    pub fn raft_is_pristine(&self) -> Result<bool, StoreError> {
        let log_txn = self.log_db()?.begin_read()?;
        let log = log_txn.open_table(RAFT_LOG)?;
        let meta = log_txn.open_table(RAFT_META)?;
        let txn = self.db().begin_read()?;
        let snapshot = txn.open_table(RAFT_SNAPSHOT)?;
        Ok(log.is_empty()?
            && meta.is_empty()?
            && snapshot.is_empty()?
            && self.snapshot_dir(RAFT_GROUP)?.is_empty()?)
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;
    use serde::{Deserialize, Serialize};
    use tanvrit_state::State;

    use crate::{Store, StoreError, RAFT_LOG, RAFT_META, RAFT_SNAPSHOT};

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct Entry {
        term: u64,
        text: String,
    }

    fn entry(term: u64, i: u64) -> Entry {
        Entry {
            term,
            text: format!("e{i}"),
        }
    }

    fn append(store: &Store, range: std::ops::RangeInclusive<u64>, term: u64) {
        let entries: Vec<(u64, Entry)> = range.map(|i| (i, entry(term, i))).collect();
        let refs: Vec<(u64, &Entry)> = entries.iter().map(|(i, e)| (*i, e)).collect();
        store.raft_append(&refs).unwrap();
    }

    #[test]
    fn raft_entries_append_read_truncate_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.raft_is_pristine().unwrap());
            append(&store, 3..=6, 1);
            store.raft_truncate_from(5).unwrap();
            append(&store, 5..=7, 2);
            store.raft_purge_through(3, &"log-id-3").unwrap();
            assert!(!store.raft_is_pristine().unwrap());
        }
        let store = Store::open(dir.path()).unwrap();
        let read: Vec<(u64, Entry)> = store.raft_read(0, 100).unwrap();
        assert_eq!(
            read,
            vec![
                (4, entry(1, 4)),
                (5, entry(2, 5)),
                (6, entry(2, 6)),
                (7, entry(2, 7))
            ]
        );
        assert_eq!(store.raft_last::<Entry>().unwrap(), Some((7, entry(2, 7))));
        assert_eq!(
            store.raft_get::<String>(super::RAFT_KEY_PURGED).unwrap(),
            Some("log-id-3".to_string())
        );
    }

    #[test]
    fn a_raft_append_that_leaves_a_gap_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        append(&store, 1..=2, 1);
        let (a, b) = (entry(1, 3), entry(1, 5));
        let err = store.raft_append(&[(3, &a), (5, &b)]).unwrap_err();
        assert!(matches!(
            err,
            StoreError::LogOutOfOrder {
                expected: 4,
                got: 5
            }
        ));
        assert_eq!(store.raft_last::<Entry>().unwrap().unwrap().0, 2);
    }

    #[test]
    fn a_value_put_with_an_append_lands_with_it_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (entry(1, 1), entry(1, 3));
        store
            .raft_append_and_put(&[(1, &a)], Some(("committed", &1u64)))
            .unwrap();
        assert_eq!(store.raft_get::<u64>("committed").unwrap(), Some(1));
        assert_eq!(store.raft_last::<Entry>().unwrap(), Some((1, a)));
        // A refused append (a gap) leaves the value as it was.
        store
            .raft_append_and_put(&[(3, &b)], Some(("committed", &3u64)))
            .unwrap_err();
        assert_eq!(store.raft_get::<u64>("committed").unwrap(), Some(1));
    }

    #[test]
    fn raft_values_round_trip_durable_or_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.raft_get::<u64>("vote").unwrap(), None);
            store.raft_put("vote", &7u64, true).unwrap();
            // A later durable commit makes the non-durable one durable too.
            store.raft_put("committed", &5u64, false).unwrap();
            store.raft_put("vote", &8u64, true).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.raft_get::<u64>("vote").unwrap(), Some(8));
        assert_eq!(store.raft_get::<u64>("committed").unwrap(), Some(5));
    }

    #[test]
    fn a_legacy_snapshot_record_reads_back_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store
            .raft_load_legacy_snapshot::<String>()
            .unwrap()
            .is_none());
        let mut state = State::new();
        state.set_applied_index(9);
        let txn = store.db().begin_write().unwrap();
        txn.open_table(RAFT_SNAPSHOT)
            .unwrap()
            .insert(
                "current",
                super::encode_raft_snapshot(&"meta-9", &state)
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        assert!(!store.raft_is_pristine().unwrap());
        let (meta, loaded) = store
            .raft_load_legacy_snapshot::<String>()
            .unwrap()
            .unwrap();
        assert_eq!(meta, "meta-9");
        assert_eq!(loaded.applied_index(), 9);
        store.raft_delete_legacy_snapshot().unwrap();
        assert!(store
            .raft_load_legacy_snapshot::<String>()
            .unwrap()
            .is_none());
        assert!(store.raft_is_pristine().unwrap());
    }

    #[test]
    fn a_snapshot_file_makes_the_raft_tables_not_pristine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.raft_is_pristine().unwrap());
        let snapshots = store.snapshot_dir(super::RAFT_GROUP).unwrap();
        let mut writer = snapshots.create(3, &"meta").unwrap();
        writer.write_state(&State::new()).unwrap();
        writer.finish().unwrap();
        assert!(!store.raft_is_pristine().unwrap());
    }

    #[test]
    fn raft_records_are_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.log_db().unwrap().begin_write().unwrap();
        txn.open_table(RAFT_LOG)
            .unwrap()
            .insert(1, br#"{"v":3,"entry":{}}"#.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = store.raft_read::<Entry>(1, 2).unwrap_err();
        assert!(matches!(
            err,
            StoreError::UnsupportedRecord {
                what: "raft log entry",
                found: 3,
                ..
            }
        ));
    }

    #[test]
    fn a_log_kept_in_the_main_file_by_an_earlier_version_moves_to_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As an earlier version left it: log and values in `tanvrit.redb`.
            let store = Store::open(dir.path()).unwrap();
            let txn = store.db().begin_write().unwrap();
            {
                let mut log = txn.open_table(RAFT_LOG).unwrap();
                for i in 5..=7 {
                    let bytes = super::encode_raft_entry(&entry(2, i)).unwrap();
                    log.insert(i, bytes.as_slice()).unwrap();
                }
                let vote = super::encode_raft_value(&9u64).unwrap();
                txn.open_table(RAFT_META)
                    .unwrap()
                    .insert("vote", vote.as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(dir.path()).unwrap();
            let read = store.raft_read::<Entry>(0, 100).unwrap();
            assert_eq!(read.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5, 6, 7]);
            assert_eq!(read[2].1, entry(2, 7));
            assert_eq!(store.raft_get::<u64>("vote").unwrap(), Some(9));
            assert!(!store.raft_is_pristine().unwrap());
            // Gone from the main file: nothing is read twice, nothing left behind.
            let txn = store.db().begin_read().unwrap();
            assert!(txn.open_table(RAFT_LOG).is_err());
            assert!(txn.open_table(RAFT_META).is_err());
        }
        assert!(dir
            .path()
            .join(crate::raft_log_db::RAFT_LOG_FILE_NAME)
            .exists());
    }

    #[test]
    fn appends_and_state_writes_use_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A write transaction held on the main file does not hold up a log append.
        let held = store.db().begin_write().unwrap();
        store.raft_append(&[(1, &entry(1, 1))]).unwrap();
        drop(held);
        assert_eq!(store.raft_read::<Entry>(1, 2).unwrap().len(), 1);
    }
}
