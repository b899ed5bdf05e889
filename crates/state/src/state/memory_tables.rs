//! [`MemoryTables`]: the state tables in memory, the reference the redb tables are
//! tested against: it takes the rows a state writes after each batch, loads a state
//! back (whole or its working set), and is the [`JobArchive`] of a state whose settled
//! jobs left memory.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tanvrit_api::{BusinessId, Job, JobId, LedgerEntry, Millis};

use super::Table;
use super::{
    finished_key, ledger_key, ledger_key_key, split_finished_key, ArchiveError, JobArchive,
    JobFilter, LoadError, Row, RowWrite, State, StateLoader,
};

/// Rows by (table, key), as a storage engine keeps them.
#[derive(Debug, Default)]
pub struct MemoryTables {
    rows: Mutex<BTreeMap<(Table, String), Row>>,
}

impl MemoryTables {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Table, String), Row>> {
        // A panic while holding the lock leaves plain data behind; it is still usable.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes rows: a value replaces the row, `None` deletes it.
    pub fn write(&self, writes: &[RowWrite<'_>]) {
        let mut rows = self.rows();
        for write in writes {
            let key = (write.table, write.key.clone());
            match write.to_row() {
                Some(row) => rows.insert(key, row),
                None => rows.remove(&key),
            };
        }
    }

    /// Writes what `state` changed since the last call and evicts its settled jobs, as a
    /// storage engine does after each batch.
    pub fn write_batch(&self, state: &mut State) {
        let changes = state.take_changes();
        self.write(&state.changed_rows(&changes));
        state.evict_settled(&changes);
    }

    /// Every row, by table and key.
    pub fn snapshot(&self) -> BTreeMap<(Table, String), Row> {
        self.rows().clone()
    }

    /// The whole state the tables hold.
    pub fn load(&self) -> Result<State, LoadError> {
        let mut loader = StateLoader::new();
        for row in self.rows().values() {
            loader.add(row.clone());
        }
        loader.finish()
    }

    /// The working set (settled jobs left out), as a restart loads it; the caller gives
    /// it these tables as its archive.
    pub fn load_working_set(&self) -> Result<State, LoadError> {
        let rows = self.rows();
        let mut loader = StateLoader::evicting();
        for ((table, key), row) in rows.iter() {
            match table {
                Table::Jobs
                | Table::Ledger
                | Table::LedgerKeys
                | Table::JobKeys
                | Table::JobsByState
                | Table::FinishedJobs => {}
                Table::LiveJobs => {
                    if let Some(job) = rows.get(&(Table::Jobs, key.clone())) {
                        loader.add(job.clone());
                    }
                }
                _ => loader.add(row.clone()),
            }
        }
        loader.finish()
    }
}

impl JobArchive for MemoryTables {
    fn job(&self, id: &JobId) -> Result<Option<Job>, ArchiveError> {
        Ok(match self.rows().get(&(Table::Jobs, id.to_string())) {
            Some(Row::Job(job)) => Some(job.clone()),
            _ => None,
        })
    }

    fn jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, Option<JobId>), ArchiveError> {
        let limit = filter.limit.max(1);
        let rows = self.rows();
        let mut out: Vec<Job> = Vec::new();
        for row in rows.values().rev() {
            let Row::Job(job) = row else { continue };
            if filter.after.as_ref().is_some_and(|after| &job.id >= after)
                || filter.state.is_some_and(|s| job.state != s)
                || filter.business.as_ref().is_some_and(|b| &job.business != b)
            {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|j| j.id.clone());
                return Ok((out, next));
            }
            out.push(job.clone());
        }
        Ok((out, None))
    }

    fn job_for_key(&self, key: &str) -> Result<Option<JobId>, ArchiveError> {
        Ok(match self.rows().get(&(Table::JobKeys, key.to_string())) {
            Some(Row::JobKey(_, job)) => Some(job.clone()),
            _ => None,
        })
    }

    fn ledger_entry_by_key(
        &self,
        business: &BusinessId,
        key: &str,
    ) -> Result<Option<LedgerEntry>, ArchiveError> {
        let rows = self.rows();
        let Some(Row::Seq(_, _, seq)) =
            rows.get(&(Table::LedgerKeys, ledger_key_key(business, key)))
        else {
            return Ok(None);
        };
        Ok(
            match rows.get(&(Table::Ledger, ledger_key(business, *seq))) {
                Some(Row::Entry(entry)) => Some(entry.clone()),
                _ => None,
            },
        )
    }

    fn ledger_entries(
        &self,
        business: &BusinessId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, ArchiveError> {
        let rows = self.rows();
        let from = (Table::Ledger, ledger_key(business, after + 1));
        Ok(rows
            .range(from..)
            .map_while(|(_, row)| match row {
                Row::Entry(entry) if &entry.business == business => Some(entry.clone()),
                _ => None,
            })
            .take(limit)
            .collect())
    }

    fn finished_before(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, JobId)>, ArchiveError> {
        let rows = self.rows();
        let from = (Table::FinishedJobs, String::new());
        let to = (Table::FinishedJobs, finished_key(cutoff, &JobId::default()));
        Ok(rows
            .range(from..to)
            .filter_map(|((_, key), _)| split_finished_key(key))
            .take(limit)
            .collect())
    }
}
