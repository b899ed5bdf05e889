//! Finished jobs out of memory: a [`JobArchive`] holds every job as of the last batch a
//! storage engine wrote (its job table), so memory keeps only the jobs in flight.
//!
//! With an archive set, the engine calls [`State::evict_settled`] after each written
//! batch: a job that is terminal and settled (the jobs retention may collect) leaves
//! memory, and its place in the retention index with it: the archive keeps that index
//! ([`JobArchive::finished_before`]), so memory does not grow with history. A command that names a job loads
//! it back first ([`State::fault_in_named_jobs`]), so the handlers see exactly the state
//! they would without an archive, and apply stays deterministic across replicas whatever
//! each one evicted. Without an archive nothing is evicted (tests, tools).

use std::borrow::Cow;
use std::fmt;

use tanvrit_api::{Attempt, AttemptId, BusinessId, Job, JobId, LedgerEntry, Millis};

use super::jobs::job_key;
use super::retention::finish_time;
use super::{JobFilter, State};
use crate::Command;

/// Why the archive could not answer (a storage failure; the replica cannot go on
/// applying until it is repaired).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the job archive failed: {0}")]
pub struct ArchiveError(pub String);

/// Every job as of the last batch written, on disk.
pub trait JobArchive: Send + Sync + fmt::Debug {
    /// One job.
    fn job(&self, id: &JobId) -> Result<Option<Job>, ArchiveError>;

    /// A page of jobs as [`State::jobs`] answers it (newest first, filtered, with the id
    /// to continue after).
    fn jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, Option<JobId>), ArchiveError>;

    /// The job submitted under `key` (`business/idempotency key`).
    fn job_for_key(&self, key: &str) -> Result<Option<JobId>, ArchiveError>;

    /// The ledger entry of `business` posted under idempotency key `key`.
    fn ledger_entry_by_key(
        &self,
        business: &BusinessId,
        key: &str,
    ) -> Result<Option<LedgerEntry>, ArchiveError>;

    /// Up to `limit` entries of `business` after seq `after`, oldest first.
    fn ledger_entries(
        &self,
        business: &BusinessId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, ArchiveError>;

    /// Up to `limit` settled jobs that finished before `cutoff`, earliest first, with
    /// their finish times: retention's index, kept on disk only.
    fn finished_before(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, JobId)>, ArchiveError>;
}

/// Entries read from the archive per round while a ledger page is filtered.
const LEDGER_READ: usize = 1_000;

impl State {
    /// Sets the archive that finished jobs leave memory for.
    pub fn set_archive(&mut self, archive: std::sync::Arc<dyn JobArchive>) {
        self.archive = Some(archive);
    }

    /// Whether finished jobs leave memory.
    pub fn has_archive(&self) -> bool {
        self.archive.is_some()
    }

    /// A failure of the archive during the last applies, taken (the engine must not
    /// write a batch whose apply could not read what it needed).
    pub fn take_archive_fault(&mut self) -> Option<ArchiveError> {
        self.archive_fault.take()
    }

    /// One job, from memory or else from the archive.
    pub fn find_job(&self, id: &JobId) -> Result<Option<Cow<'_, Job>>, ArchiveError> {
        if let Some(job) = self.data.jobs.get(id) {
            return Ok(Some(Cow::Borrowed(job)));
        }
        match &self.archive {
            Some(archive) => Ok(archive.job(id)?.map(Cow::Owned)),
            None => Ok(None),
        }
    }

    /// One attempt of a job, from memory or else from the archive; `None` when either is
    /// unknown or the archive cannot answer (callers that must tell those apart use
    /// [`State::find_job`]).
    pub fn find_attempt(&self, job: &JobId, attempt: &AttemptId) -> Option<Attempt> {
        let found = self.find_job(job).ok().flatten()?;
        found.attempts.iter().find(|a| &a.id == attempt).cloned()
    }

    /// A page of jobs (see [`State::jobs`]), from the archive when there is one (it
    /// holds every job as of the last written batch), else from memory.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, Option<JobId>), ArchiveError> {
        match &self.archive {
            Some(archive) => archive.jobs(filter),
            None => {
                let (jobs, next) = self.jobs(filter);
                Ok((jobs.into_iter().cloned().collect(), next))
            }
        }
    }

    /// The entry of `business` under idempotency key `key`, in memory or archived.
    pub(super) fn ledger_entry_by_key(
        &mut self,
        business: &BusinessId,
        key: &str,
    ) -> Option<LedgerEntry> {
        let account = self.data.accounts.get(business)?;
        if let Some(&seq) = account.by_key.get(key) {
            let position = seq.checked_sub(account.evicted + 1)?;
            return account.entries.get(position as usize).cloned();
        }
        let archive = self.archive.as_ref()?;
        match archive.ledger_entry_by_key(business, key) {
            Ok(found) => found,
            Err(err) => {
                self.archive_fault = Some(err);
                None
            }
        }
    }

    /// Up to `limit` entries of `business` after seq `after` that `keep` accepts, oldest
    /// first: archived ones, then those still in memory.
    pub fn ledger_page(
        &self,
        business: &BusinessId,
        after: u64,
        limit: usize,
        keep: impl Fn(&LedgerEntry) -> bool,
    ) -> Result<Vec<LedgerEntry>, ArchiveError> {
        let Some(account) = self.data.accounts.get(business) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut cursor = after;
        if let Some(archive) = &self.archive {
            while out.len() < limit && cursor < account.evicted {
                let read = archive.ledger_entries(business, cursor, LEDGER_READ)?;
                let Some(last) = read.last().map(|e| e.seq) else {
                    break;
                };
                for entry in read {
                    if out.len() < limit && keep(&entry) {
                        out.push(entry);
                    }
                }
                cursor = last;
            }
        }
        for entry in account.entries.iter().filter(|e| e.seq > cursor) {
            if out.len() == limit {
                break;
            }
            if keep(entry) {
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Loads a job from the archive into memory (not a change: it is what the tables
    /// already hold). Remembers it, so it leaves again after the batch.
    fn fault_in(&mut self, id: &JobId) {
        let Some(archive) = &self.archive else {
            return;
        };
        // In memory, or removed by this very batch (its row is still on disk until the
        // batch is written: it must not come back).
        if self.data.jobs.contains_key(id) || self.changes.jobs.contains_key(id) {
            return;
        }
        match archive.job(id) {
            Ok(Some(job)) => {
                self.forget_evicted(&job);
                self.index_job(&job, true);
                self.data.jobs.insert(id.clone(), job);
                self.faulted.insert(id.clone());
            }
            Ok(None) => {}
            Err(err) => self.archive_fault = Some(err),
        }
    }

    /// Loads every job `command` names (or reaches through an idempotency key) that
    /// memory does not hold.
    pub(super) fn fault_in_named_jobs(&mut self, command: &Command) {
        if self.archive.is_none() {
            return;
        }
        match command {
            Command::JobSubmit {
                job,
                business,
                idempotency_key,
                ..
            } => {
                self.fault_in(job);
                if let Some(key) = idempotency_key {
                    let key = job_key(business, key);
                    self.fault_in_job_key(&key);
                    if let Some(existing) = self.data.job_idempotency.get(&key).cloned() {
                        self.fault_in(&existing);
                    }
                }
            }
            Command::JobCancel { job, .. }
            | Command::JobRetry { job, .. }
            | Command::AttemptStarted { job, .. }
            | Command::AttemptFinished { job, .. }
            | Command::LogAppend { job, .. }
            | Command::ScheduleFire { job, .. } => self.fault_in(job),
            Command::JobsAssign { placements, .. } => {
                for placement in placements {
                    self.fault_in(&placement.job);
                }
            }
            Command::SchedulesFire { fires, .. } => {
                for fire in fires {
                    self.fault_in(&fire.job);
                }
            }
            // `JobsCollect` loads what it collects itself; the rest name no job.
            _ => {}
        }
    }

    /// Loads the job an idempotency key names (`business/key`) into memory, unless
    /// memory has it or this batch removed it.
    pub(super) fn fault_in_job_key(&mut self, key: &str) {
        let Some(archive) = &self.archive else {
            return;
        };
        if self.data.job_idempotency.contains_key(key) || self.changes.job_keys.contains(key) {
            return;
        }
        match archive.job_for_key(key) {
            Ok(Some(job)) => {
                self.data.job_idempotency.insert(key.to_string(), job);
            }
            Ok(None) => {}
            Err(err) => self.archive_fault = Some(err),
        }
    }

    /// Loads a job retention is about to remove.
    pub(super) fn fault_in_for_collection(&mut self, id: &JobId) {
        self.fault_in(id);
    }

    /// After a batch was written: drops from memory the settled terminal jobs it
    /// touched or loaded (the archive's retention index has them). Returns how many
    /// left.
    pub fn evict_settled(&mut self, changes: &super::Changes) -> usize {
        if self.archive.is_none() {
            return 0;
        }
        // Idempotency keys are in the tables now; memory asks the archive for them.
        self.data.job_idempotency.clear();
        // Ledger entries the batch posted are in the tables now.
        for business in changes.accounts.keys() {
            if let Some(account) = self.data.accounts.get_mut(business) {
                account.evicted += account.entries.len() as u64;
                account.entries.clear();
                account.by_key.clear();
            }
        }
        let faulted = std::mem::take(&mut self.faulted);
        let mut evicted = 0;
        for id in changes.jobs.keys().chain(faulted.iter()) {
            let settled = self
                .data
                .jobs
                .get(id)
                .is_some_and(|job| finish_time(job).is_some());
            if !settled {
                continue;
            }
            if let Some(job) = self.data.jobs.remove(id) {
                self.unindex_evicted(&job);
                evicted += 1;
            }
        }
        evicted
    }
}
