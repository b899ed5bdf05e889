//! Retention: `Command::JobsCollect` removes terminal jobs that finished before a cutoff,
//! a bounded batch per command, and drops expired idempotency records.
//!
//! A job's finish time is its `updated_at` once it is terminal with no attempt still
//! stopping and nothing held: the last change it sees unless it is retried (which takes
//! it out of the `finished` index again). Collection takes from the front of that index,
//! so it never scans the jobs that stay. With an archive, memory's index holds only the
//! settled jobs still in memory; the archive's (its `finished_jobs` table) holds the
//! rest, and a collection merges the two. Ledger entries are never touched: they are the
//! billing record and keep the ids of collected jobs.
//!
//! The latest cutoff is kept as a horizon in the replicated data: an absent job created
//! before it may have been collected, which readers answer differently from an id that
//! never existed (the id's creation time is the caller's to read: see
//! [`State::job_collected`]).

use tanvrit_api::{Job, JobId, Millis};

use super::archive::ArchiveError;
use super::jobs::job_key;
use super::State;
use crate::{Effect, Outcome, Rejection};

/// The most jobs (and idempotency records) one `JobsCollect` may remove, so no single
/// log entry takes long to apply.
pub const MAX_COLLECT_BATCH: u32 = 10_000;

/// When a job finished, if retention may collect it.
pub(super) fn finish_time(job: &Job) -> Option<Millis> {
    let stopping = job.current_attempt().is_some_and(|a| a.state.is_active());
    (job.state.is_terminal() && !stopping && job.held == 0).then_some(job.updated_at)
}

impl State {
    pub(super) fn jobs_collect(&mut self, cutoff: Millis, limit: u32, at: Millis) -> Outcome {
        if limit == 0 || limit > MAX_COLLECT_BATCH {
            return Err(Rejection::invalid(format!(
                "a collection removes 1 to {MAX_COLLECT_BATCH} jobs"
            )));
        }
        if cutoff > at {
            return Err(Rejection::invalid(
                "a collection's cutoff must not be after its time",
            ));
        }
        let doomed = self.finished_due(cutoff, limit as usize);
        for (finished, id) in &doomed {
            self.fault_in_for_collection(id);
            self.remove_job(id);
            // An evicted job the archive no longer had leaves no entry behind either.
            self.idx.finished.remove(&(*finished, id.clone()));
        }
        let doomed: Vec<JobId> = doomed.into_iter().map(|(_, id)| id).collect();
        let records = self.prune_idempotency(at, limit as usize);
        let more = match self.finished_any_before(cutoff) {
            Ok(any) => any,
            Err(err) => {
                self.archive_fault = Some(err);
                false
            }
        } || self.idempotency_expired_at(at);
        self.data.jobs_collected_before = self.data.jobs_collected_before.max(cutoff);
        Ok(Effect::JobsCollected {
            jobs: doomed,
            records: records as u32,
            more,
        })
    }

    /// Removes a job with its attempts, index entries and idempotency mapping.
    fn remove_job(&mut self, id: &JobId) {
        let Some(job) = self.data.jobs.remove(id) else {
            return;
        };
        self.mark_job_before(&job);
        self.mark_listed(&job.business, id, false);
        self.index_job(&job, false);
        if let Some(key) = &job.idempotency_key {
            let key = job_key(&job.business, key);
            self.fault_in_job_key(&key);
            if self.data.job_idempotency.get(&key) == Some(id) {
                self.mark_job_key(&key);
                self.data.job_idempotency.remove(&key);
            }
        }
    }

    /// Whether a `JobsCollect` with this `cutoff` at `at` would remove anything: a job
    /// that finished before `cutoff`, or an idempotency record expired at `at`. (An
    /// archive that cannot answer counts as nothing due: the next check asks again.)
    pub fn collection_due(&self, cutoff: Millis, at: Millis) -> bool {
        self.finished_any_before(cutoff).unwrap_or(false) || self.idempotency_expired_at(at)
    }

    /// Rows of the archive's retention index that may be stale: those of jobs memory
    /// holds (loaded or changed by this batch; its truth is memory's) or this batch
    /// removed. Only such jobs can have a stale row, so reading this many more than
    /// wanted always leaves enough.
    fn stale_finished_rows(&self) -> usize {
        self.changes.jobs.len() + self.faulted.len()
    }

    /// Whether a row of the archive's retention index is the job as it is now.
    fn finished_row_current(&self, id: &JobId) -> bool {
        !self.data.jobs.contains_key(id) && !self.changes.jobs.contains_key(id)
    }

    /// The first `limit` settled jobs that finished before `cutoff`, earliest first:
    /// the ones in memory, and the ones only the archive holds.
    fn finished_due(&mut self, cutoff: Millis, limit: usize) -> Vec<(Millis, JobId)> {
        let mut due: Vec<(Millis, JobId)> = self
            .idx
            .finished
            .iter()
            .take_while(|(finished, _)| *finished < cutoff)
            .take(limit)
            .cloned()
            .collect();
        if let Some(archive) = &self.archive {
            match archive.finished_before(cutoff, limit + self.stale_finished_rows()) {
                Ok(stored) => due.extend(
                    stored
                        .into_iter()
                        .filter(|(_, id)| self.finished_row_current(id)),
                ),
                Err(err) => self.archive_fault = Some(err),
            }
            due.sort();
            due.truncate(limit);
        }
        due
    }

    /// Whether any settled job finished before `cutoff`.
    fn finished_any_before(&self, cutoff: Millis) -> Result<bool, ArchiveError> {
        if self
            .idx
            .finished
            .first()
            .is_some_and(|(finished, _)| *finished < cutoff)
        {
            return Ok(true);
        }
        let Some(archive) = &self.archive else {
            return Ok(false);
        };
        let stored = archive.finished_before(cutoff, 1 + self.stale_finished_rows())?;
        Ok(stored.iter().any(|(_, id)| self.finished_row_current(id)))
    }

    /// The latest cutoff retention collected jobs with (0: never).
    pub fn jobs_collected_before(&self) -> Millis {
        self.data.jobs_collected_before
    }

    /// Whether job `id`, created at `created` (read from its id by the caller), is gone
    /// because retention collected it: it is absent and was created before the horizon.
    /// An id that never existed but carries such an old time answers the same; nothing
    /// else can tell them apart once the job is gone.
    pub fn job_collected(&self, id: &JobId, created: Millis) -> bool {
        created < self.data.jobs_collected_before && !self.data.jobs.contains_key(id)
    }
}
