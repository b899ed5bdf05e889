//! [`TableArchive`]: the [`JobArchive`] of a group's state tables, where settled jobs
//! live once they leave memory, and the listing of jobs from disk: each page reads a
//! fresh read transaction with a cursor over the job table (newest id first) or over a
//! business's listing, so a page costs the same at ten jobs or ten million, and no
//! reader holds anything a writer waits for.

use std::sync::Arc;

use redb::{ReadTransaction, TableDefinition};
use tanvrit_api::{BusinessId, Job, JobId, LedgerEntry, Millis};
use tanvrit_state::{
    finished_key, ledger_key, ledger_key_key, split_finished_key, ArchiveError, JobArchive,
    JobFilter, Table,
};

use crate::state_tables::{decode_row_value, table_name};
use crate::{Store, StoreError, WeakStore};

/// Rows a page may look at per job it returns before it answers with what it has (and
/// a cursor to go on from): a filter that matches rarely still answers promptly.
const SCAN_PER_RESULT: usize = 20;

/// The job archive of `group`'s tables in `store` (which it does not keep open).
#[derive(Clone, Debug)]
pub struct TableArchive {
    store: WeakStore,
    group: String,
}

fn archive_error(err: impl std::fmt::Display) -> ArchiveError {
    ArchiveError(err.to_string())
}

impl TableArchive {
    /// The archive of `group` (`single`, `raft`).
    pub fn new(store: Store, group: &str) -> Self {
        Self {
            store: store.downgrade(),
            group: group.to_string(),
        }
    }

    /// A read transaction over the whole state (during a snapshot install, the state
    /// as it was before it: memory too holds that one until the install ends).
    fn read(&self) -> Result<Arc<ReadTransaction>, StoreError> {
        let store = self
            .store
            .upgrade()
            .ok_or_else(|| StoreError::Io("the store was closed".into()))?;
        store.read_state_tables(&self.group)
    }

    fn job_in(&self, txn: &ReadTransaction, id: &str) -> Result<Option<Job>, StoreError> {
        let name = table_name(&self.group, Table::Jobs);
        let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let value = table.get(id)?;
        value.map(|v| decode_row_value(v.value())).transpose()
    }

    fn row_in(
        &self,
        txn: &ReadTransaction,
        table: Table,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let name = table_name(&self.group, table);
        let open = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(open) => open,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let value = open.get(key)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn page(&self, filter: &JobFilter) -> Result<(Vec<Job>, Option<JobId>), StoreError> {
        let txn = self.read()?;
        let limit = filter.limit.max(1);
        let budget = limit.saturating_mul(SCAN_PER_RESULT);
        let mut out: Vec<Job> = Vec::new();
        let mut scanned = 0usize;
        let mut last_seen: Option<JobId> = None;
        let mut more = false;
        let consider = |job: Job, out: &mut Vec<Job>| -> bool {
            // true: the page is full (one more matched beyond it).
            if filter.state.is_some_and(|state| job.state != state) {
                return false;
            }
            if out.len() == limit {
                return true;
            }
            out.push(job);
            false
        };
        // A business's jobs, or the jobs in one state, come from their index; the rest
        // from the job table itself.
        let index = match (&filter.business, filter.state) {
            (Some(business), _) => Some((Table::JobsByBusiness, format!("{business}/"))),
            (None, Some(state)) => Some((Table::JobsByState, format!("{}/", state.as_str()))),
            (None, None) => None,
        };
        match index {
            Some((table, prefix)) => {
                let name = table_name(&self.group, table);
                let index = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                    Ok(index) => index,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
                    Err(err) => return Err(err.into()),
                };
                let start = prefix.clone();
                // '0' follows '/': the end of the prefix's range.
                let end = match &filter.after {
                    Some(after) => format!("{prefix}{after}"),
                    None => format!("{}0", &prefix[..prefix.len() - 1]),
                };
                for item in index.range(start.as_str()..end.as_str())?.rev() {
                    let (key, _) = item?;
                    let id = &key.value()[prefix.len()..];
                    scanned += 1;
                    if let Some(job) = self.job_in(&txn, id)? {
                        if consider(job, &mut out) {
                            more = true;
                            break;
                        }
                    }
                    last_seen = Some(JobId::from(id));
                    if scanned >= budget {
                        more = true;
                        break;
                    }
                }
            }
            None => {
                let name = table_name(&self.group, Table::Jobs);
                let jobs = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                    Ok(jobs) => jobs,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
                    Err(err) => return Err(err.into()),
                };
                let range = match &filter.after {
                    Some(after) => jobs.range(..after.as_str())?,
                    None => jobs.range::<&str>(..)?,
                };
                for item in range.rev() {
                    let (key, value) = item?;
                    scanned += 1;
                    let job: Job = decode_row_value(value.value())?;
                    if consider(job, &mut out) {
                        more = true;
                        break;
                    }
                    last_seen = Some(JobId::from(key.value()));
                    if scanned >= budget {
                        more = true;
                        break;
                    }
                }
            }
        }
        // Continue after the last job returned, or, when the scan budget ran out first,
        // after the last row looked at.
        let next = match (more, out.len() == limit) {
            (false, _) => None,
            (true, true) => out.last().map(|job| job.id.clone()),
            (true, false) => last_seen,
        };
        Ok((out, next))
    }
}

impl JobArchive for TableArchive {
    fn job(&self, id: &JobId) -> Result<Option<Job>, ArchiveError> {
        let txn = self.read().map_err(archive_error)?;
        self.job_in(&txn, id.as_str()).map_err(archive_error)
    }

    fn jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, Option<JobId>), ArchiveError> {
        self.page(filter).map_err(archive_error)
    }

    fn job_for_key(&self, key: &str) -> Result<Option<JobId>, ArchiveError> {
        let found = || -> Result<Option<JobId>, StoreError> {
            let txn = self.read()?;
            self.row_in(&txn, Table::JobKeys, key)?
                .map(|bytes| decode_row_value(&bytes))
                .transpose()
        };
        found().map_err(archive_error)
    }

    fn ledger_entry_by_key(
        &self,
        business: &BusinessId,
        key: &str,
    ) -> Result<Option<LedgerEntry>, ArchiveError> {
        let found = || -> Result<Option<LedgerEntry>, StoreError> {
            let txn = self.read()?;
            let Some(seq) = self.row_in(&txn, Table::LedgerKeys, &ledger_key_key(business, key))?
            else {
                return Ok(None);
            };
            let seq: u64 = decode_row_value(&seq)?;
            self.row_in(&txn, Table::Ledger, &ledger_key(business, seq))?
                .map(|bytes| decode_row_value(&bytes))
                .transpose()
        };
        found().map_err(archive_error)
    }

    fn ledger_entries(
        &self,
        business: &BusinessId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, ArchiveError> {
        let read = || -> Result<Vec<LedgerEntry>, StoreError> {
            let txn = self.read()?;
            let name = table_name(&self.group, Table::Ledger);
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(err) => return Err(err.into()),
            };
            let from = ledger_key(business, after + 1);
            let end = format!("{business}0");
            let mut out = Vec::new();
            for item in table.range(from.as_str()..end.as_str())?.take(limit) {
                let (_, value) = item?;
                out.push(decode_row_value(value.value())?);
            }
            Ok(out)
        };
        read().map_err(archive_error)
    }

    fn finished_before(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, JobId)>, ArchiveError> {
        let read = || -> Result<Vec<(Millis, JobId)>, StoreError> {
            let txn = self.read()?;
            let name = table_name(&self.group, Table::FinishedJobs);
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(err) => return Err(err.into()),
            };
            let end = finished_key(cutoff, &JobId::default());
            let mut out = Vec::new();
            for item in table.range(..end.as_str())? {
                if out.len() == limit {
                    break;
                }
                let (key, _) = item?;
                let entry = split_finished_key(key.value()).ok_or_else(|| StoreError::Corrupt {
                    what: "state row",
                    detail: format!("retention entry {:?}", key.value()),
                })?;
                out.push(entry);
            }
            Ok(out)
        };
        read().map_err(archive_error)
    }
}

#[cfg(test)]
mod tests {
    use redb::TableDefinition;
    use tanvrit_api::{BusinessId, EntryId, EntryKind, JobId, JobSpec, JobState, Rates, Resources};
    use tanvrit_state::{Command, JobArchive, JobFilter, State, Table};

    use super::TableArchive;
    use crate::state_tables::table_name;
    use crate::Store;

    fn business() -> BusinessId {
        BusinessId::from("biz")
    }

    fn submit(job: &str) -> Command {
        Command::JobSubmit {
            job: JobId::from(job),
            business: business(),
            spec: JobSpec {
                command: vec!["true".into()],
                resources: Resources {
                    cpu_millis: 10,
                    memory_mb: 16,
                    gpus: 0,
                },
                ..JobSpec::default()
            },
            idempotency_key: None,
            rates: Rates::default(),
            at: 2_000,
        }
    }

    /// Three pending jobs, then thirty cancelled ones with newer ids.
    fn state() -> State {
        let mut commands = vec![Command::LedgerEntryCreate {
            entry: EntryId("ent-1".into()),
            business: business(),
            kind: EntryKind::TopUp,
            amount: 1_000_000,
            idempotency_key: "top-up".into(),
            note: None,
            at: 1_000,
        }];
        commands.extend((0..3).map(|n| submit(&format!("job-a-{n}"))));
        for n in 0..30 {
            let job = format!("job-b-{n:02}");
            commands.push(submit(&job));
            commands.push(Command::JobCancel {
                job: JobId::from(job.as_str()),
                reason: None,
                at: 3_000,
            });
        }
        let mut state = State::new();
        for (index, command) in commands.iter().enumerate() {
            state.apply(index as u64 + 1, command).unwrap();
        }
        state
    }

    fn pending(archive: &TableArchive) -> Vec<JobId> {
        let filter = JobFilter {
            state: Some(JobState::Pending),
            limit: 10,
            ..JobFilter::default()
        };
        let (jobs, _) = archive.jobs(&filter).unwrap();
        jobs.into_iter().map(|j| j.id).collect()
    }

    #[test]
    fn the_jobs_by_state_index_is_rebuilt_from_the_job_table_when_it_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.replace_state("single", &state(), &[]).unwrap();
        let archive = TableArchive::new(store.clone(), "single");
        let expected: Vec<JobId> = (0..3)
            .rev()
            .map(|n| JobId::from(format!("job-a-{n}").as_str()))
            .collect();
        assert_eq!(pending(&archive), expected);
        assert_eq!(store.ensure_job_indexes("single").unwrap(), 0);

        // As tables written before the index existed: none of it.
        let name = table_name("single", Table::JobsByState);
        let txn = store.db().begin_write().unwrap();
        txn.delete_table(TableDefinition::<&str, &[u8]>::new(&name))
            .unwrap();
        txn.commit().unwrap();
        assert!(pending(&archive).is_empty());

        assert_eq!(store.ensure_job_indexes("single").unwrap(), 33);
        assert_eq!(pending(&archive), expected);
        assert_eq!(store.ensure_job_indexes("single").unwrap(), 0);
    }

    #[test]
    fn while_the_tables_are_rewritten_readers_see_the_state_as_it_was_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.replace_state("single", &state(), &[]).unwrap();
        let archive = TableArchive::new(store.clone(), "single");
        assert_eq!(pending(&archive).len(), 3);

        store.set_rewriting("single", true).unwrap();
        // Half-way through an install: the tables already hold another state.
        store.replace_state("single", &State::new(), &[]).unwrap();
        assert_eq!(
            pending(&archive).len(),
            3,
            "a reader saw a half-installed state"
        );

        store.set_rewriting("single", false).unwrap();
        assert!(pending(&archive).is_empty());
    }
}
