//! The derived indexes: rebuilt from the replicated data on load, kept in step on every
//! job change, and checked against a fresh rebuild by [`State::indexes_consistent`].

use std::cmp::Reverse;
use std::collections::BTreeMap;

use tanvrit_api::{Index, Job, JobId, JobState, Resources};

use super::retention::finish_time;
use super::{Indexes, State};

pub(super) fn add(a: &mut Resources, b: &Resources) {
    a.cpu_millis = a.cpu_millis.saturating_add(b.cpu_millis);
    a.memory_mb = a.memory_mb.saturating_add(b.memory_mb);
    a.gpus = a.gpus.saturating_add(b.gpus);
}

pub(super) fn sub(a: &mut Resources, b: &Resources) {
    a.cpu_millis = a.cpu_millis.saturating_sub(b.cpu_millis);
    a.memory_mb = a.memory_mb.saturating_sub(b.memory_mb);
    a.gpus = a.gpus.saturating_sub(b.gpus);
}

impl State {
    pub(super) fn rebuild_indexes(&mut self) {
        self.idx = Indexes::default();
        for key in self.data.keys.values() {
            self.idx
                .keys_by_hash
                .insert(key.secret_hash.clone(), key.info.id.clone());
        }
        let jobs: Vec<Job> = self.data.jobs.values().cloned().collect();
        for job in &jobs {
            self.index_job(job, true);
        }
        for (scope, keys) in &self.data.idempotency {
            for (key, record) in keys {
                self.idx
                    .idempotency_expiry
                    .insert((record.expires_at, scope.clone(), key.clone()));
            }
        }
    }

    pub(super) fn index_job(&mut self, job: &Job, insert: bool) {
        let id = job.id.clone();
        let pending_key = (Reverse(job.spec.priority), job.created_at, id.clone());
        let state_set = self.idx.by_state.entry(job.state).or_default();
        let business_set = self
            .idx
            .by_business
            .entry(job.business.clone())
            .or_default();
        if insert {
            state_set.insert(id.clone());
            business_set.insert(id.clone());
            if job.state == JobState::Pending {
                self.idx.pending.insert(pending_key);
            }
        } else {
            state_set.remove(&id);
            business_set.remove(&id);
            self.idx.pending.remove(&pending_key);
        }
        if let Some(finished) = finish_time(job) {
            if insert {
                self.idx.finished.insert((finished, id.clone()));
            } else {
                self.idx.finished.remove(&(finished, id.clone()));
            }
        }
        if let Some(attempt) = job.current_attempt().filter(|a| a.state.is_active()) {
            let active = self
                .idx
                .node_active
                .entry(attempt.node.clone())
                .or_default();
            let allocated = self
                .idx
                .node_allocated
                .entry(attempt.node.clone())
                .or_default();
            if insert {
                active.insert(id);
                add(allocated, &job.spec.resources);
            } else {
                active.remove(&id);
                sub(allocated, &job.spec.resources);
            }
        }
    }

    /// Runs `change` on a job with its indexes kept in step. `change` must not fail
    /// after mutating (check first, then mutate).
    /// Drops an evicted job from the indexes, except its retention entry, and counts it.
    pub(super) fn unindex_evicted(&mut self, job: &Job) {
        self.index_job(job, false);
        *self.idx.evicted_counts.entry(job.state).or_default() += 1;
    }

    /// Counts the jobs a loader kept out of memory: the stored totals per state, less
    /// the jobs in memory (their retention entries stay in the archive).
    pub(super) fn evicted_on_load(&mut self, totals: &BTreeMap<JobState, u64>) {
        for (state, total) in totals {
            let in_memory = self.idx.by_state.get(state).map_or(0, |s| s.len() as u64);
            let evicted = total.saturating_sub(in_memory);
            if evicted > 0 {
                self.idx.evicted_counts.insert(*state, evicted);
            }
        }
    }

    /// Uncounts an evicted job loaded back into memory.
    pub(super) fn forget_evicted(&mut self, job: &Job) {
        if let Some(count) = self.idx.evicted_counts.get_mut(&job.state) {
            *count = count.saturating_sub(1);
        }
    }

    pub(super) fn mutate_job<R>(
        &mut self,
        id: &JobId,
        index: Index,
        change: impl FnOnce(&mut Job) -> R,
    ) -> R {
        let mut job = self
            .data
            .jobs
            .remove(id)
            .expect("mutate_job on a missing job");
        self.mark_job_before(&job);
        self.index_job(&job, false);
        let result = change(&mut job);
        job.modify_index = index;
        self.index_job(&job, true);
        self.data.jobs.insert(id.clone(), job);
        result
    }

    /// The indexes rebuilt from scratch equal the maintained ones (test aid).
    pub fn indexes_consistent(&self) -> bool {
        let mut fresh = self.clone();
        fresh.rebuild_indexes();
        // Empty sets left behind by removals are harmless; compare what they contain.
        let norm = |idx: &Indexes| {
            let by_state: BTreeMap<_, _> = idx
                .by_state
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            let by_business: BTreeMap<_, _> = idx
                .by_business
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let active: BTreeMap<_, _> = idx
                .node_active
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let allocated: BTreeMap<_, _> = idx
                .node_allocated
                .iter()
                .filter(|(_, r)| **r != Resources::default())
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            (
                idx.keys_by_hash.clone(),
                idx.pending.clone(),
                by_state,
                by_business,
                active,
                allocated,
                idx.idempotency_expiry.clone(),
                idx.finished.clone(),
            )
        };
        norm(&fresh.idx) == norm(&self.idx)
    }
}
