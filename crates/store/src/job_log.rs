//! Attempts' output on disk, never in RAM: table `(job, attempt, offset) -> bytes`, and
//! the bytes stored per job, so retention never has to scan.
//!
//! Retention is per job (all its attempts together): past `retention_bytes_per_job`
//! the oldest chunks go first, oldest meaning lowest `(attempt, offset)`. Attempt ids
//! are time-ordered (uuid v7), so that is the order they were written in. A job that
//! retention collects (`Command::JobsCollect`) loses all of its output at once
//! ([`Store::delete_job_logs`]).

use std::collections::BTreeSet;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use tanvrit_api::{AttemptId, JobId};

use crate::{Store, StoreError, JOB_LOGS, JOB_LOG_SIZES};

/// A piece of an attempt's output at a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLogChunk {
    /// The job.
    pub job: JobId,
    /// The attempt that produced it.
    pub attempt: AttemptId,
    /// Offset of the first byte within the attempt's output.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The answer to [`Store::read_job_log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLogRead {
    /// Offset of the first byte of `data`: the offset asked for, or later when retention
    /// dropped the start.
    pub offset: u64,
    /// Contiguous bytes from `offset`.
    pub data: Vec<u8>,
}

type ChunkTable<'t> = Table<'t, (&'static str, &'static str, u64), &'static [u8]>;

/// Deletes a job's oldest chunks until it stores at most `limit` bytes; returns what it keeps.
fn enforce_retention(
    chunks: &mut ChunkTable<'_>,
    job: &str,
    total: u64,
    limit: u64,
) -> Result<u64, StoreError> {
    let mut doomed: Vec<(String, u64)> = Vec::new();
    let mut kept = total;
    for item in chunks.range((job, "", 0u64)..)? {
        if kept <= limit {
            break;
        }
        let (k, v) = item?;
        let (chunk_job, attempt, offset) = k.value();
        if chunk_job != job {
            break;
        }
        kept -= v.value().len() as u64;
        doomed.push((attempt.to_string(), offset));
    }
    for (attempt, offset) in &doomed {
        chunks.remove((job, attempt.as_str(), *offset))?;
    }
    Ok(kept)
}

/// Deletes every chunk of each of `jobs`, and its size, inside `txn`.
pub(crate) fn delete_job_logs_in(txn: &WriteTransaction, jobs: &[JobId]) -> Result<(), StoreError> {
    let mut table = txn.open_table(JOB_LOGS)?;
    let mut sizes = txn.open_table(JOB_LOG_SIZES)?;
    for job in jobs {
        let job = job.as_str();
        let mut doomed: Vec<(String, u64)> = Vec::new();
        for item in table.range((job, "", 0u64)..)? {
            let (k, _) = item?;
            let (chunk_job, attempt, offset) = k.value();
            // Keys sort by job first: the job's chunks are one run from its first key.
            if chunk_job != job {
                break;
            }
            doomed.push((attempt.to_string(), offset));
        }
        for (attempt, offset) in &doomed {
            table.remove((job, attempt.as_str(), *offset))?;
        }
        sizes.remove(job)?;
    }
    Ok(())
}

/// Stores chunks inside `txn`, keeping each touched job within `limit` bytes.
pub(crate) fn write_chunks_in(
    txn: &WriteTransaction,
    chunks: &[JobLogChunk],
    limit: u64,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(JOB_LOGS)?;
    let mut sizes = txn.open_table(JOB_LOG_SIZES)?;
    let mut touched = BTreeSet::new();
    for chunk in chunks.iter().filter(|c| !c.data.is_empty()) {
        let key = (chunk.job.as_str(), chunk.attempt.as_str(), chunk.offset);
        let replaced = table
            .insert(key, chunk.data.as_slice())?
            .map_or(0, |old| old.value().len() as u64);
        let job = chunk.job.as_str();
        let before = sizes.get(job)?.map_or(0, |v| v.value());
        let after = before - replaced + chunk.data.len() as u64;
        sizes.insert(job, after)?;
        touched.insert(job);
    }
    for job in touched {
        let total = sizes.get(job)?.map_or(0, |v| v.value());
        if total > limit {
            let kept = enforce_retention(&mut table, job, total, limit)?;
            sizes.insert(job, kept)?;
        }
    }
    Ok(())
}

/// Calls `each` with every chunk `txn` sees, in key order, one at a time.
pub(crate) fn for_each_chunk_in(
    txn: &ReadTransaction,
    mut each: impl FnMut(JobLogChunk) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let table = txn.open_table(JOB_LOGS)?;
    for item in table.iter()? {
        let (k, v) = item?;
        let (job, attempt, offset) = k.value();
        each(JobLogChunk {
            job: JobId::from(job),
            attempt: AttemptId::from(attempt),
            offset,
            data: v.value().to_vec(),
        })?;
    }
    Ok(())
}

impl Store {
    /// Stores chunks in one transaction. Idempotent: a chunk at an existing key replaces
    /// the bytes there. Empty chunks are skipped. With `durable = false` the commit is
    /// not fsynced (it becomes durable with the next durable commit, or is lost in a
    /// crash: callers must be able to re-create it, e.g. by replaying the log).
    pub fn write_job_log_chunks(
        &self,
        chunks: &[JobLogChunk],
        durable: bool,
    ) -> Result<(), StoreError> {
        if chunks.iter().all(|c| c.data.is_empty()) {
            return Ok(());
        }
        let limit = self.options().retention_bytes_per_job;
        let mut txn = self.db().begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        write_chunks_in(&txn, chunks, limit)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes every chunk of each of `jobs` (all attempts) and its size, in one
    /// transaction: retention collected the jobs. Idempotent; unknown jobs are skipped.
    /// `durable` as for [`Store::write_job_log_chunks`] (a replayed collection deletes
    /// again what a crash brought back).
    pub fn delete_job_logs(&self, jobs: &[JobId], durable: bool) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut txn = self.db().begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        delete_job_logs_in(&txn, jobs)?;
        txn.commit()?;
        Ok(())
    }

    /// Calls `each` with every stored chunk, in key order, from one consistent view (a
    /// read transaction: writers carry on meanwhile), holding one chunk at a time.
    pub fn for_each_job_log_chunk(
        &self,
        each: impl FnMut(JobLogChunk) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for_each_chunk_in(&self.db().begin_read()?, each)
    }

    /// Deletes the chunks (and size) of every job for which `keep` answers false, in
    /// one durable transaction; returns how many jobs lost their output. A snapshot
    /// install uses it to drop output of jobs the installed state no longer has.
    pub fn retain_job_logs(&self, mut keep: impl FnMut(&JobId) -> bool) -> Result<u64, StoreError> {
        let doomed: Vec<JobId> = {
            let txn = self.db().begin_read()?;
            let sizes = txn.open_table(JOB_LOG_SIZES)?;
            let mut doomed = Vec::new();
            for item in sizes.iter()? {
                let (job, _) = item?;
                let job = JobId::from(job.value());
                if !keep(&job) {
                    doomed.push(job);
                }
            }
            doomed
        };
        self.delete_job_logs(&doomed, true)?;
        Ok(doomed.len() as u64)
    }

    /// Reads up to `max_bytes` contiguous bytes of an attempt's output starting at
    /// `offset`. Reading at or past the end returns no data at `offset`; when retention
    /// dropped the bytes at `offset`, the read starts at the first byte still kept.
    pub fn read_job_log(
        &self,
        job: &JobId,
        attempt: &AttemptId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<JobLogRead, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(JOB_LOGS)?;
        let (job, attempt) = (job.as_str(), attempt.as_str());
        let mut data = Vec::new();
        let mut first: Option<u64> = None;

        // The chunk that starts at or before `offset` may cover it: return its tail.
        if let Some(item) = table
            .range((job, attempt, 0u64)..=(job, attempt, offset))?
            .next_back()
        {
            let (k, v) = item?;
            let start = k.value().2;
            let bytes = v.value();
            let end = start + bytes.len() as u64;
            if end > offset {
                let from = (offset - start) as usize;
                let take = bytes.len().saturating_sub(from).min(max_bytes);
                data.extend_from_slice(&bytes[from..from + take]);
                first = Some(offset);
            }
        }
        if offset < u64::MAX {
            for item in table.range((job, attempt, offset + 1)..=(job, attempt, u64::MAX))? {
                if data.len() >= max_bytes {
                    break;
                }
                let (k, v) = item?;
                let start = k.value().2;
                let begin = *first.get_or_insert(start);
                // Only contiguous bytes: a hole ends the read.
                if start != begin + data.len() as u64 {
                    break;
                }
                let bytes = v.value();
                let take = bytes.len().min(max_bytes - data.len());
                data.extend_from_slice(&bytes[..take]);
            }
        }
        Ok(JobLogRead {
            offset: first.unwrap_or(offset),
            data,
        })
    }

    /// Bytes of output stored for a job (all attempts), after retention.
    pub fn job_log_bytes(&self, job: &JobId) -> Result<u64, StoreError> {
        let txn = self.db().begin_read()?;
        let sizes = txn.open_table(JOB_LOG_SIZES)?;
        let bytes = sizes.get(job.as_str())?.map_or(0, |v| v.value());
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use tanvrit_api::{AttemptId, JobId};

    use super::{JobLogChunk, JobLogRead};
    use crate::{Store, StoreOptions};

    fn chunk(job: &str, attempt: &str, offset: u64, data: &str) -> JobLogChunk {
        JobLogChunk {
            job: JobId::from(job),
            attempt: AttemptId::from(attempt),
            offset,
            data: data.as_bytes().to_vec(),
        }
    }

    fn read(store: &Store, job: &str, attempt: &str, offset: u64, max: usize) -> JobLogRead {
        store
            .read_job_log(&JobId::from(job), &AttemptId::from(attempt), offset, max)
            .unwrap()
    }

    fn text(r: &JobLogRead) -> (u64, String) {
        (r.offset, String::from_utf8(r.data.clone()).unwrap())
    }

    #[test]
    fn reads_start_exactly_at_the_offset_and_span_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_job_log_chunks(
                &[
                    chunk("j", "a1", 0, "hello "),
                    chunk("j", "a1", 6, "world"),
                    chunk("j", "a2", 0, "other attempt"),
                    chunk("k", "a1", 0, "other job"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text(&read(&store, "j", "a1", 0, 100)),
            (0, "hello world".into())
        );
        assert_eq!(text(&read(&store, "j", "a1", 3, 5)), (3, "lo wo".into()));
        assert_eq!(text(&read(&store, "j", "a1", 6, 100)), (6, "world".into()));
        assert_eq!(text(&read(&store, "j", "a1", 8, 2)), (8, "rl".into()));
        assert_eq!(text(&read(&store, "j", "a1", 11, 100)), (11, String::new()));
        assert_eq!(text(&read(&store, "j", "a1", 50, 100)), (50, String::new()));
        assert_eq!(text(&read(&store, "j", "a1", 2, 0)), (2, String::new()));
        assert_eq!(text(&read(&store, "j", "nope", 0, 100)), (0, String::new()));
        assert_eq!(
            text(&read(&store, "j", "a2", 0, 100)),
            (0, "other attempt".into())
        );
    }

    #[test]
    fn writing_the_same_chunk_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let chunks = [chunk("j", "a", 0, "abc"), chunk("j", "a", 3, "def")];
        store.write_job_log_chunks(&chunks, false).unwrap();
        store.write_job_log_chunks(&chunks, true).unwrap();
        assert_eq!(text(&read(&store, "j", "a", 0, 100)), (0, "abcdef".into()));
        assert_eq!(store.job_log_bytes(&JobId::from("j")).unwrap(), 6);
    }

    #[test]
    fn retention_drops_the_oldest_chunks_of_that_job_only() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            retention_bytes_per_job: 10,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), options).unwrap();
        store
            .write_job_log_chunks(
                &[
                    chunk("j", "a1", 0, "0123"),
                    chunk("big", "a1", 0, "0123456789"),
                ],
                true,
            )
            .unwrap();
        store
            .write_job_log_chunks(
                &[chunk("j", "a1", 4, "4567"), chunk("j", "a2", 0, "abcd")],
                true,
            )
            .unwrap();
        // 12 bytes > 10: the oldest chunk ("0123" of attempt a1) went.
        assert_eq!(store.job_log_bytes(&JobId::from("j")).unwrap(), 8);
        // Asking for the dropped start returns from the first byte still kept.
        assert_eq!(text(&read(&store, "j", "a1", 0, 100)), (4, "4567".into()));
        assert_eq!(text(&read(&store, "j", "a1", 2, 100)), (4, "4567".into()));
        assert_eq!(text(&read(&store, "j", "a2", 0, 100)), (0, "abcd".into()));
        // Another job at exactly the limit kept everything.
        assert_eq!(
            text(&read(&store, "big", "a1", 0, 100)),
            (0, "0123456789".into())
        );
    }

    #[test]
    fn deleting_a_jobs_logs_removes_every_attempt_and_its_size_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_job_log_chunks(
                &[
                    chunk("j", "a1", 0, "first "),
                    chunk("j", "a1", 6, "attempt"),
                    chunk("j", "a2", 0, "second"),
                    // Sorts right after `j`'s keys: the delete must stop at it.
                    chunk("j2", "a1", 0, "neighbour"),
                    chunk("k", "a1", 0, "other job"),
                ],
                true,
            )
            .unwrap();
        store
            .delete_job_logs(&[JobId::from("j"), JobId::from("never")], false)
            .unwrap();
        assert_eq!(text(&read(&store, "j", "a1", 0, 100)), (0, String::new()));
        assert_eq!(text(&read(&store, "j", "a2", 0, 100)), (0, String::new()));
        assert_eq!(store.job_log_bytes(&JobId::from("j")).unwrap(), 0);
        assert_eq!(
            text(&read(&store, "j2", "a1", 0, 100)),
            (0, "neighbour".into())
        );
        assert_eq!(store.job_log_bytes(&JobId::from("j2")).unwrap(), 9);
        assert_eq!(
            text(&read(&store, "k", "a1", 0, 100)),
            (0, "other job".into())
        );
        assert_eq!(jobs_with_output(&store), ["j2", "k"]);
        // Again (a replayed collection): nothing to do, no error.
        store.delete_job_logs(&[JobId::from("j")], true).unwrap();
        store.delete_job_logs(&[], true).unwrap();
    }

    fn jobs_with_output(store: &Store) -> Vec<String> {
        let mut jobs = Vec::new();
        store
            .for_each_job_log_chunk(|c| {
                jobs.push(c.job.0);
                Ok(())
            })
            .unwrap();
        jobs
    }

    #[test]
    fn retaining_job_logs_drops_the_output_of_every_job_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_job_log_chunks(
                &[
                    chunk("gone", "a1", 0, "x"),
                    chunk("gone", "a2", 0, "y"),
                    chunk("kept", "a1", 0, "z"),
                ],
                true,
            )
            .unwrap();
        let dropped = store.retain_job_logs(|job| job.as_str() == "kept").unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(jobs_with_output(&store), ["kept"]);
        assert_eq!(store.job_log_bytes(&JobId::from("gone")).unwrap(), 0);
        assert_eq!(store.retain_job_logs(|_| true).unwrap(), 0);
    }

    #[test]
    fn job_logs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write_job_log_chunks(&[chunk("j", "a", 0, "kept")], true)
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(text(&read(&store, "j", "a", 0, 100)), (0, "kept".into()));
    }
}
