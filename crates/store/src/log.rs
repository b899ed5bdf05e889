//! The replicated log: `index -> command`, one versioned JSON record per entry.
//!
//! The single-node writer uses it today; the Raft log storage will sit on the same
//! table, so the operations are the ones a Raft log needs: append at the end, read a
//! range, purge a prefix (after a snapshot), truncate a suffix (a conflicting leader).
//! The last purged index is kept in `meta`, so the log's end is known even when every
//! entry has been purged.

use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};
use tanvrit_state::Command;

use crate::encoding::{decode, encode, RECORD_VERSION};
use crate::{parse_u64, Store, StoreError, LOG, META, META_LOG_PURGED};

const WHAT: &str = "log entry";

#[derive(Serialize)]
struct LogRecordRef<'a> {
    v: u64,
    command: &'a Command,
}

#[derive(Deserialize)]
struct LogRecord {
    v: u64,
    command: Command,
}

/// The bytes a single-node `log` record holds: `{"v":1,"command":...}`.
pub fn encode_log_record(command: &Command) -> Result<Vec<u8>, StoreError> {
    encode(
        WHAT,
        &LogRecordRef {
            v: RECORD_VERSION,
            command,
        },
    )
}

/// Decodes a single-node `log` record into its command.
pub fn decode_log_record(bytes: &[u8]) -> Result<Command, StoreError> {
    let record: LogRecord = decode(WHAT, bytes, |r: &LogRecord| r.v)?;
    Ok(record.command)
}

fn purged_in(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    match meta.get(META_LOG_PURGED)? {
        Some(v) => parse_u64("meta", v.value()),
        None => Ok(0),
    }
}

fn last_in(
    log: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    let last_entry = log.last()?.map_or(0, |(k, _)| k.value());
    Ok(last_entry.max(purged_in(meta)?))
}

/// Removes entries `<= index` and raises the purged mark; used by purge and snapshot.
pub(crate) fn purge_in(txn: &WriteTransaction, index: u64) -> Result<(), StoreError> {
    let mut log: Table<u64, &[u8]> = txn.open_table(LOG)?;
    log.retain_in(..=index, |_, _| false)?;
    let mut meta = txn.open_table(META)?;
    let purged = purged_in(&meta)?;
    if index > purged {
        meta.insert(META_LOG_PURGED, index.to_string().as_bytes())?;
    }
    Ok(())
}

impl Store {
    /// Appends entries in ONE durable transaction (fsynced before it returns). Indexes
    /// must continue the log one by one from [`Store::last_log_index`] + 1.
    pub fn append_log(&self, entries: &[(u64, Command)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Encode before the transaction: redb admits one writer at a time.
        let mut encoded = Vec::with_capacity(entries.len());
        for (index, command) in entries {
            encoded.push((*index, encode_log_record(command)?));
        }
        let txn = self.db().begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            let meta = txn.open_table(META)?;
            let next = last_in(&log, &meta)? + 1;
            for ((index, bytes), expected) in encoded.iter().zip(next..) {
                if *index != expected {
                    // Dropping the transaction aborts it: nothing of the batch is written.
                    return Err(StoreError::LogOutOfOrder {
                        expected,
                        got: *index,
                    });
                }
                log.insert(*index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Entries with `from <= index < to_exclusive`, in order (purged ones are absent).
    pub fn read_log(
        &self,
        from: u64,
        to_exclusive: u64,
    ) -> Result<Vec<(u64, Command)>, StoreError> {
        if from >= to_exclusive {
            return Ok(Vec::new());
        }
        let txn = self.db().begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for item in log.range(from..to_exclusive)? {
            let (k, v) = item?;
            out.push((k.value(), decode_log_record(v.value())?));
        }
        Ok(out)
    }

    /// The index of the last entry, or of the last purged one when the log is empty
    /// after a snapshot; 0 for a new log.
    pub fn last_log_index(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read()?;
        let log = txn.open_table(LOG)?;
        let meta = txn.open_table(META)?;
        last_in(&log, &meta)
    }

    /// The highest index purged so far (0 if none): entries up to it are gone.
    pub fn last_purged_log_index(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        purged_in(&meta)
    }

    /// Deletes entries `<= index` durably (their effect lives in a snapshot).
    pub fn purge_log_through(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        purge_in(&txn, index)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes entries `>= index` durably (a new leader overwrote them). Cutting into
    /// purged entries is refused: they are part of a snapshot.
    pub fn truncate_log_from(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        {
            let meta = txn.open_table(META)?;
            let purged = purged_in(&meta)?;
            if index <= purged {
                return Err(StoreError::TruncatePurged { index, purged });
            }
            let mut log = txn.open_table(LOG)?;
            log.retain_in(index.., |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTable;
    use tanvrit_api::KeyId;
    use tanvrit_state::Command;

    use crate::{Store, StoreError, LOG};

    fn cmd(i: u64) -> Command {
        Command::KeyRevoke {
            key: KeyId(format!("key-{i}")),
            at: i as i64,
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Command)> {
        range.map(|i| (i, cmd(i))).collect()
    }

    #[test]
    fn appended_entries_read_back_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.last_log_index().unwrap(), 0);
            store.append_log(&entries(1..=3)).unwrap();
            store.append_log(&entries(4..=5)).unwrap();
            assert_eq!(store.read_log(2, 4).unwrap(), entries(2..=3));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_log_index().unwrap(), 5);
        assert_eq!(store.read_log(1, 100).unwrap(), entries(1..=5));
        assert!(store.read_log(4, 4).unwrap().is_empty());
    }

    #[test]
    fn an_out_of_order_batch_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append_log(&entries(1..=2)).unwrap();
        let batch = vec![(3, cmd(3)), (5, cmd(5))];
        let err = store.append_log(&batch).unwrap_err();
        assert!(matches!(
            err,
            StoreError::LogOutOfOrder {
                expected: 4,
                got: 5
            }
        ));
        // Entry 3 of the refused batch was not written either.
        assert_eq!(store.last_log_index().unwrap(), 2);
        let err = store.append_log(&entries(2..=2)).unwrap_err();
        assert_eq!(err.code(), "store_log_out_of_order");
    }

    #[test]
    fn purge_keeps_the_log_end_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.append_log(&entries(1..=4)).unwrap();
            store.purge_log_through(2).unwrap();
            assert_eq!(store.read_log(0, 10).unwrap(), entries(3..=4));
            store.purge_log_through(4).unwrap();
            assert!(store.read_log(0, 10).unwrap().is_empty());
            // A lower purge later never lowers the mark.
            store.purge_log_through(1).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_log_index().unwrap(), 4);
        assert_eq!(store.last_purged_log_index().unwrap(), 4);
        store.append_log(&entries(5..=5)).unwrap();
        assert_eq!(store.read_log(0, 10).unwrap(), entries(5..=5));
    }

    #[test]
    fn truncate_removes_the_suffix_but_not_purged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append_log(&entries(1..=5)).unwrap();
        store.purge_log_through(1).unwrap();
        store.truncate_log_from(4).unwrap();
        assert_eq!(store.read_log(0, 10).unwrap(), entries(2..=3));
        assert_eq!(store.last_log_index().unwrap(), 3);
        let err = store.truncate_log_from(1).unwrap_err();
        assert!(matches!(
            err,
            StoreError::TruncatePurged {
                index: 1,
                purged: 1
            }
        ));
        store.append_log(&entries(4..=4)).unwrap();
        assert_eq!(store.last_log_index().unwrap(), 4);
    }

    #[test]
    fn log_records_are_versioned_and_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append_log(&entries(1..=1)).unwrap();
        let txn = store.db().begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            let raw = log.get(1).unwrap().unwrap().value().to_vec();
            let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            assert_eq!(json["v"], 1);
            assert_eq!(json["command"]["type"], "key_revoke");
            let future = br#"{"v":2,"payload":{"something":"new"}}"#;
            log.insert(2, future.as_slice()).unwrap();
            log.insert(3, b"not json".as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let err = store.read_log(2, 3).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedRecord { found: 2, .. }),
            "{err:?}"
        );
        let err = store.read_log(3, 4).unwrap_err();
        assert_eq!(err.code(), "store_corrupt");
    }
}
