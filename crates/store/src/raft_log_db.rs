//! The Raft log's own database file, `<data_dir>/raft-log.redb` (as etcd keeps its WAL
//! apart from its key-value file): a log append waits for its fsync, and in one file
//! every state-machine write would queue behind it for redb's single writer; in two,
//! appends and applies go on side by side.
//!
//! Data directories of earlier versions kept `raft_log` and `raft_meta` in the main
//! file: the first open moves them here in one durable transaction, then empties them
//! there (a crash between the two finds the copy made and only empties).

use std::sync::{Mutex, OnceLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::{open_database, Store, StoreError, RAFT_LOG, RAFT_META};

/// The Raft log's file name inside the data directory.
pub const RAFT_LOG_FILE_NAME: &str = "raft-log.redb";
/// The log's page cache: appends and reads of recent entries only.
const LOG_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Opened once, on first use (a single node never opens it).
#[derive(Default)]
pub(crate) struct RaftLogDb {
    db: OnceLock<Database>,
    opening: Mutex<()>,
}

impl Store {
    /// The Raft log's database, opened (and migrated into) on first use.
    pub(crate) fn log_db(&self) -> Result<&Database, StoreError> {
        let slot = &self.inner.raft_log;
        if let Some(db) = slot.db.get() {
            return Ok(db);
        }
        let _opening = slot.opening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.db.get() {
            return Ok(db);
        }
        let path = self.data_dir().join(RAFT_LOG_FILE_NAME);
        let db = open_database(&path, LOG_CACHE_BYTES, self.options().disk_faults.as_ref())?;
        {
            let txn = db.begin_write()?;
            txn.open_table(RAFT_LOG)?;
            txn.open_table(RAFT_META)?;
            txn.commit()?;
        }
        move_log_from_main(self.db(), &db)?;
        Ok(slot.db.get_or_init(|| db))
    }
}

fn table_rows<K: redb::Key + 'static>(
    db: &Database,
    table: TableDefinition<K, &[u8]>,
) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(table) {
        Ok(open) => Ok(open.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(err) => Err(err.into()),
    }
}

/// Moves an earlier version's log and Raft values from the main file into `log`.
fn move_log_from_main(main: &Database, log: &Database) -> Result<(), StoreError> {
    let in_main = table_rows(main, RAFT_LOG)? + table_rows(main, RAFT_META)?;
    if in_main == 0 {
        return Ok(());
    }
    let moved = table_rows(log, RAFT_LOG)? + table_rows(log, RAFT_META)? > 0;
    if !moved {
        let read = main.begin_read()?;
        let txn = log.begin_write()?;
        {
            let mut to = txn.open_table(RAFT_LOG)?;
            if let Ok(from) = read.open_table(RAFT_LOG) {
                for item in from.iter()? {
                    let (key, value) = item?;
                    to.insert(key.value(), value.value())?;
                }
            }
            let mut to = txn.open_table(RAFT_META)?;
            if let Ok(from) = read.open_table(RAFT_META) {
                for item in from.iter()? {
                    let (key, value) = item?;
                    to.insert(key.value(), value.value())?;
                }
            }
        }
        txn.commit()?;
    }
    let txn = main.begin_write()?;
    txn.delete_table(RAFT_LOG)?;
    txn.delete_table(RAFT_META)?;
    txn.commit()?;
    Ok(())
}
