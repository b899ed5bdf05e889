//! The state machine on disk: one redb table per kind of state row and per group
//! (`<group>.jobs`, `<group>.ledger`, ...; see [`Table`]), written in the transaction
//! that records the applied index, so a restart loads the tables instead of replaying
//! history, and a snapshot streams them from a read transaction.
//!
//! Keys are text (see [`Table`] for each table's key); values are [`ROW_VERSION`] as one
//! byte, then MessagePack with field names (compact, and serde's defaults and tagged
//! enums still decode, so a later version can add fields without a migration).
//!
//! The meta table also holds the storage engine's own values under names that start
//! with [`ENGINE_META_PREFIX`] (Raft's applied log id and membership): raw bytes the
//! engine encodes itself, written in the same transaction as the rows they describe.

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tanvrit_api::{BusinessId, JobId};
use tanvrit_state::{
    split_idempotency_key, Row, RowWrite, State, StateLoader, Table, META_APPLIED_INDEX,
};

use crate::job_log::{delete_job_logs_in, write_chunks_in};
use crate::{JobLogChunk, Store, StoreError};

/// The version byte every state row starts with.
pub const ROW_VERSION: u8 = 1;
/// Meta rows with this prefix belong to the storage engine, not to the state.
pub const ENGINE_META_PREFIX: &str = "engine.";

const WHAT: &str = "state row";

/// The redb name of `table` in `group`.
pub fn table_name(group: &str, table: Table) -> String {
    format!("{group}.{}", table.name())
}

fn definition(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// Encodes a row's value: the version byte, then MessagePack with field names.
pub fn encode_row_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![ROW_VERSION];
    rmp_serde::encode::write_named(&mut bytes, value).map_err(|e| StoreError::Encode {
        what: WHAT,
        detail: e.to_string(),
    })?;
    Ok(bytes)
}

/// Decodes a stored row value as `T`.
pub(crate) fn decode_row_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_value(bytes)
}

fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&ROW_VERSION, body)) => {
            rmp_serde::from_slice(body).map_err(|e| StoreError::Corrupt {
                what: WHAT,
                detail: e.to_string(),
            })
        }
        Some((&found, _)) => Err(StoreError::UnsupportedRecord {
            what: WHAT,
            found: found.into(),
            supported: ROW_VERSION.into(),
        }),
        None => Err(StoreError::Corrupt {
            what: WHAT,
            detail: "empty value".into(),
        }),
    }
}

/// Decodes a stored row of `table` under `key`; `None` for the engine's meta rows.
pub fn decode_row(table: Table, key: &str, bytes: &[u8]) -> Result<Option<Row>, StoreError> {
    Ok(Some(match table {
        Table::Jobs => Row::Job(decode_value(bytes)?),
        Table::Nodes => Row::Node(decode_value(bytes)?),
        Table::Keys => Row::Key(decode_value(bytes)?),
        Table::Accounts => Row::Account(BusinessId::from(key), decode_value(bytes)?),
        Table::Ledger => Row::Entry(decode_value(bytes)?),
        Table::Schedules => Row::Schedule(decode_value(bytes)?),
        Table::JobKeys => Row::JobKey(key.to_string(), decode_value::<JobId>(bytes)?),
        Table::Idempotency => {
            let (scope, name) = split_idempotency_key(key).ok_or_else(|| StoreError::Corrupt {
                what: WHAT,
                detail: format!("idempotency key {key:?} has no scope"),
            })?;
            Row::Idempotency(scope.to_string(), name.to_string(), decode_value(bytes)?)
        }
        Table::LiveJobs | Table::FinishedJobs | Table::JobsByBusiness | Table::JobsByState => {
            Row::Marker(table, key.to_string())
        }
        Table::LedgerKeys => Row::Seq(table, key.to_string(), decode_value(bytes)?),
        Table::Meta if key.starts_with(ENGINE_META_PREFIX) => return Ok(None),
        Table::Meta => Row::Meta(key.to_string(), decode_value(bytes)?),
    }))
}

/// A row ready to store: its table, its key, its encoded value (`None`: delete it).
pub type EncodedRow = (Table, String, Option<Vec<u8>>);

/// Encodes rows (so a caller can release the state's lock before it writes them).
pub fn encode_rows(rows: &[RowWrite<'_>]) -> Result<Vec<EncodedRow>, StoreError> {
    rows.iter()
        .map(|row| {
            let value = row.value.as_ref().map(encode_row_value).transpose()?;
            Ok((row.table, row.key.clone(), value))
        })
        .collect()
}

fn encoded(row: &RowWrite<'_>) -> Result<Option<Vec<u8>>, StoreError> {
    row.value.as_ref().map(encode_row_value).transpose()
}

/// One applied batch for [`Store::write_state`].
#[derive(Debug, Default)]
pub struct StateWrite<'a> {
    /// The rows the batch changed (with the meta rows, applied index among them).
    pub rows: Vec<EncodedRow>,
    /// The engine's meta values (names start with [`ENGINE_META_PREFIX`]).
    pub engine_meta: Vec<(String, Vec<u8>)>,
    /// Output chunks of the batch's accepted log appends.
    pub chunks: &'a [JobLogChunk],
    /// Jobs the batch collected: their output goes.
    pub collected: &'a [JobId],
}

/// Writes rows (and engine meta) into `group`'s tables inside `txn`.
fn write_rows_in(
    txn: &WriteTransaction,
    group: &str,
    rows: &[EncodedRow],
    engine_meta: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    for table in Table::ALL {
        let name = table_name(group, table);
        let mut open = txn.open_table(definition(&name))?;
        for (_, key, value) in rows.iter().filter(|(t, _, _)| *t == table) {
            match value {
                Some(value) => {
                    open.insert(key.as_str(), value.as_slice())?;
                }
                None => {
                    open.remove(key.as_str())?;
                }
            }
        }
        if table == Table::Meta {
            for (key, value) in engine_meta {
                open.insert(key.as_str(), value.as_slice())?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// Writes one applied batch in one transaction: its rows, the engine's meta, its
    /// output chunks and the deletion of collected jobs' output. With `durable = false`
    /// the commit is not fsynced: the next durable commit makes it durable, and a crash
    /// before that leaves the tables at an earlier applied index, which the engine
    /// re-applies from its log.
    pub fn write_state(
        &self,
        group: &str,
        write: &StateWrite<'_>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db().begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        write_rows_in(&txn, group, &write.rows, &write.engine_meta)?;
        write_chunks_in(&txn, write.chunks, self.options().retention_bytes_per_job)?;
        delete_job_logs_in(&txn, write.collected)?;
        txn.commit()?;
        Ok(())
    }

    /// Writes a whole state into `group`'s tables, emptied first (a migration from a
    /// snapshot of an earlier version), durably.
    pub fn replace_state(
        &self,
        group: &str,
        state: &State,
        engine_meta: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let txn = self.db().begin_write()?;
        for table in Table::ALL {
            let name = table_name(group, table);
            txn.delete_table(definition(&name))?;
            let mut open = txn.open_table(definition(&name))?;
            for row in state.all_rows().filter(|r| r.table == table) {
                if let Some(value) = encoded(&row)? {
                    open.insert(row.key.as_str(), value.as_slice())?;
                }
            }
        }
        write_rows_in(&txn, group, &[], engine_meta)?;
        txn.commit()?;
        Ok(())
    }

    /// Builds `group`'s jobs-by-state index from its job table when the two disagree in
    /// size: tables written before the index existed, or a snapshot from such a
    /// replica. Durable; returns how many jobs it indexed (0: nothing to do).
    pub fn ensure_job_indexes(&self, group: &str) -> Result<u64, StoreError> {
        let jobs_name = table_name(group, Table::Jobs);
        let index_name = table_name(group, Table::JobsByState);
        let txn = self.db().begin_write()?;
        let rebuilt = {
            let jobs = txn.open_table(definition(&jobs_name))?;
            let mut index = txn.open_table(definition(&index_name))?;
            if jobs.len()? == index.len()? {
                0
            } else {
                index.retain(|_, _| false)?;
                let mut count = 0;
                for item in jobs.iter()? {
                    let (id, value) = item?;
                    let job: tanvrit_api::Job = decode_row_value(value.value())?;
                    let key = tanvrit_state::state_job_key(job.state, &job.id);
                    debug_assert_eq!(job.id.as_str(), id.value());
                    index.insert(key.as_str(), [].as_slice())?;
                    count += 1;
                }
                count
            }
        };
        if rebuilt == 0 {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok(rebuilt)
    }

    /// Whether `group`'s tables hold a state (they record an applied index).
    pub fn has_state(&self, group: &str) -> Result<bool, StoreError> {
        Ok(self
            .state_view(group)?
            .meta_raw(META_APPLIED_INDEX)?
            .is_some())
    }

    /// Loads `group`'s state from its tables; `None` when they hold none.
    pub fn load_state(&self, group: &str) -> Result<Option<State>, StoreError> {
        self.load(group, false)
    }

    /// Loads `group`'s working set: everything but the settled jobs, which stay in the
    /// tables (the state must be given their [`crate::TableArchive`]); their retention
    /// entries and counts are loaded instead. `None` when the tables hold no state.
    pub fn load_working_set(&self, group: &str) -> Result<Option<State>, StoreError> {
        self.load(group, true)
    }

    /// [`Store::load_state`] (`working_set` false) or [`Store::load_working_set`].
    fn load(&self, group: &str, working_set: bool) -> Result<Option<State>, StoreError> {
        let view = self.state_view(group)?;
        if view.meta_raw(META_APPLIED_INDEX)?.is_none() {
            return Ok(None);
        }
        let (mut loader, tables): (_, Vec<Table>) = if working_set {
            // History stays in the tables; jobs in flight come through `live_jobs`.
            let history = |t: &Table| {
                matches!(
                    t,
                    Table::Jobs
                        | Table::Ledger
                        | Table::LedgerKeys
                        | Table::JobKeys
                        | Table::JobsByState
                        | Table::FinishedJobs
                )
            };
            let tables = Table::ALL.into_iter().filter(|t| !history(t)).collect();
            (StateLoader::evicting(), tables)
        } else {
            (StateLoader::new(), Table::ALL.to_vec())
        };
        view.for_each_row_of(&tables, |table, key, bytes| {
            if working_set && table == Table::LiveJobs {
                let job = view
                    .row(Table::Jobs, key)?
                    .ok_or_else(|| StoreError::Corrupt {
                        what: WHAT,
                        detail: format!("live job `{key}` has no row"),
                    })?;
                loader.add(Row::Job(decode_value(&job)?));
            } else if let Some(row) = decode_row(table, key, bytes)? {
                loader.add(row);
            }
            Ok(())
        })?;
        loader.finish().map(Some).map_err(|e| StoreError::Corrupt {
            what: WHAT,
            detail: e.to_string(),
        })
    }

    /// A consistent view of `group`'s tables (a read transaction: writers carry on).
    pub fn state_view(&self, group: &str) -> Result<StateView, StoreError> {
        Ok(StateView {
            txn: self.db().begin_read()?,
            group: group.to_string(),
        })
    }

    /// Empties `group`'s tables in a transaction of their own (not durable: the caller
    /// syncs once the rows that replace them are written).
    pub fn clear_state(&self, group: &str) -> Result<(), StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        for table in Table::ALL {
            let name = table_name(group, table);
            txn.delete_table(definition(&name))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes stored rows as they are (a snapshot being installed), in one
    /// non-durable transaction; the caller bounds how many it passes at once.
    pub fn put_raw_rows(&self, group: &str, rows: &[EncodedRow]) -> Result<(), StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        write_rows_in(&txn, group, rows, &[])?;
        txn.commit()?;
        Ok(())
    }
}

/// A read transaction over one group's tables (and the job-log tables), for loading a
/// state or streaming a snapshot: what it sees does not change while writers go on.
pub struct StateView {
    txn: ReadTransaction,
    group: String,
}

impl StateView {
    /// A meta value as stored (engine values raw; state values encoded).
    pub fn meta_raw(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let table_name = table_name(&self.group, Table::Meta);
        let table = match self.txn.open_table(definition(&table_name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// One stored row.
    pub fn row(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = table_name(&self.group, table);
        let open = match self.txn.open_table(definition(&name)) {
            Ok(open) => open,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Ok(open.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Calls `each` with every row of every table (in [`Table::ALL`] order, keys in
    /// order within a table), one at a time.
    pub fn for_each_row(
        &self,
        each: impl FnMut(Table, &str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_row_of(&Table::ALL, each)
    }

    /// [`StateView::for_each_row`] over some tables only.
    pub fn for_each_row_of(
        &self,
        tables: &[Table],
        mut each: impl FnMut(Table, &str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for &table in tables {
            let name = table_name(&self.group, table);
            let open = match self.txn.open_table(definition(&name)) {
                Ok(open) => open,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(err) => return Err(err.into()),
            };
            for item in open.iter()? {
                let (key, value) = item?;
                each(table, key.value(), value.value())?;
            }
        }
        Ok(())
    }

    /// Calls `each` with every stored job-log chunk of this view, in key order.
    pub fn for_each_job_log_chunk(
        &self,
        each: impl FnMut(JobLogChunk) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        crate::job_log::for_each_chunk_in(&self.txn, each)
    }
}
