//! Jobs and their attempts: submit, cancel, retry, assign (scheduler placements), attempt
//! started/finished (charging the runtime), and log appends.

use tanvrit_api::{
    Attempt, AttemptId, AttemptState, AttemptUsage, BusinessId, EntryKind, Index, Job, JobId,
    JobSpec, JobState, MicroCredits, Millis, NodeState, Rates, ScheduleId,
};

use super::indexes::add;
use super::{labels_match, State};
use crate::{billing, validate, Effect, FinishKind, Outcome, Placement, Rejection};

/// Longest accepted log chunk.
pub const MAX_LOG_CHUNK_BYTES: usize = 1024 * 1024;
/// First automatic retry waits this long; each next one twice as long.
pub const RETRY_BACKOFF_BASE_MS: Millis = 1_000;
/// Automatic retry backoff never exceeds this.
pub const RETRY_BACKOFF_MAX_MS: Millis = 5 * 60 * 1000;

pub(super) fn job_key(business: &BusinessId, key: &str) -> String {
    format!("{business}/{key}")
}

fn retry_backoff(retry: u32) -> Millis {
    let shift = retry.saturating_sub(1).min(20);
    (RETRY_BACKOFF_BASE_MS << shift).min(RETRY_BACKOFF_MAX_MS)
}

fn finish_state(kind: FinishKind) -> AttemptState {
    match kind {
        FinishKind::Succeeded => AttemptState::Succeeded,
        FinishKind::Failed => AttemptState::Failed,
        FinishKind::TimedOut => AttemptState::TimedOut,
        FinishKind::Cancelled => AttemptState::Cancelled,
    }
}

impl State {
    pub(super) fn job_or_404(&self, id: &JobId) -> Result<&Job, Rejection> {
        self.data
            .jobs
            .get(id)
            .ok_or_else(|| Rejection::not_found("job", id))
    }

    /// Checks a new job and computes its hold; mutates nothing.
    pub(super) fn check_new_job(
        &self,
        job: &JobId,
        business: &BusinessId,
        spec: &JobSpec,
        rates: &Rates,
    ) -> Result<MicroCredits, Rejection> {
        validate::identifier("business", business.as_str())?;
        validate::identifier("job id", job.as_str())?;
        validate::job_spec(spec)?;
        if self.data.jobs.contains_key(job) {
            return Err(Rejection::AlreadyExists {
                kind: "job".into(),
                id: job.to_string(),
            });
        }
        let hold = billing::hold_for(&spec.resources, rates, spec.timeout_secs);
        let available = self.available(business);
        if hold > available {
            return Err(Rejection::InsufficientCredits {
                business: business.to_string(),
                needed: hold,
                available,
            });
        }
        Ok(hold)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_job(
        &mut self,
        index: Index,
        id: &JobId,
        business: &BusinessId,
        spec: &JobSpec,
        idempotency_key: Option<&str>,
        schedule: Option<&ScheduleId>,
        rates: &Rates,
        hold: MicroCredits,
        at: Millis,
    ) -> Job {
        let job = Job {
            id: id.clone(),
            business: business.clone(),
            spec: spec.clone(),
            state: JobState::Pending,
            attempts: Vec::new(),
            created_at: at,
            updated_at: at,
            not_before: None,
            idempotency_key: idempotency_key.map(str::to_string),
            schedule: schedule.cloned(),
            rates: *rates,
            held: hold,
            retries: 0,
            blocked: None,
            modify_index: index,
        };
        if hold > 0 {
            self.post(
                business,
                EntryKind::Hold,
                -hold,
                Some(id),
                format!("hold:{id}:{index}"),
                None,
                None,
                at,
            );
        }
        if let Some(key) = idempotency_key {
            let key = job_key(business, key);
            self.mark_job_key(&key);
            self.data.job_idempotency.insert(key, id.clone());
        }
        self.mark_job(id);
        self.mark_listed(business, id, true);
        self.index_job(&job, true);
        self.data.jobs.insert(id.clone(), job.clone());
        job
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn job_submit(
        &mut self,
        index: Index,
        id: &JobId,
        business: &BusinessId,
        spec: &JobSpec,
        idempotency_key: Option<&str>,
        rates: &Rates,
        at: Millis,
    ) -> Outcome {
        if let Some(key) = idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(Rejection::invalid("idempotency keys are 1-256 bytes"));
            }
            if let Some(existing) = self.data.job_idempotency.get(&job_key(business, key)) {
                let job = &self.data.jobs[existing];
                return if &job.spec == spec {
                    Ok(Effect::Job {
                        job: Box::new(job.clone()),
                        duplicate: true,
                    })
                } else {
                    Err(Rejection::IdempotencyConflict {
                        key: key.to_string(),
                    })
                };
            }
        }
        let hold = self.check_new_job(id, business, spec, rates)?;
        let job = self.insert_job(
            index,
            id,
            business,
            spec,
            idempotency_key,
            None,
            rates,
            hold,
            at,
        );
        Ok(Effect::Job {
            job: Box::new(job),
            duplicate: false,
        })
    }

    pub(super) fn job_effect(&self, id: &JobId, duplicate: bool) -> Outcome {
        Ok(Effect::Job {
            job: Box::new(self.data.jobs[id].clone()),
            duplicate,
        })
    }

    /// Releases whatever a job still holds (it will not run again without a new hold).
    pub(super) fn release_hold(&mut self, index: Index, id: &JobId, note: &str, at: Millis) {
        let (business, held) = {
            let job = &self.data.jobs[id];
            (job.business.clone(), job.held)
        };
        if held > 0 {
            self.post(
                &business,
                EntryKind::Release,
                held,
                Some(id),
                format!("release:{id}:{index}"),
                Some(note.to_string()),
                None,
                at,
            );
            self.mutate_job(id, index, |job| job.held = 0);
        }
    }

    pub(super) fn job_cancel(
        &mut self,
        index: Index,
        id: &JobId,
        reason: Option<String>,
        at: Millis,
    ) -> Outcome {
        let job = self.job_or_404(id)?;
        if job.state.is_terminal() {
            return Err(Rejection::illegal("job", id, job.state.as_str(), "cancel"));
        }
        let was_pending = job.state == JobState::Pending;
        let reason = reason.unwrap_or_else(|| "cancelled by user".to_string());
        if was_pending {
            self.release_hold(index, id, "job cancelled before it ran", at);
        }
        self.mutate_job(id, index, |job| {
            job.state = JobState::Cancelled;
            job.updated_at = at;
            job.not_before = None;
            job.blocked = None;
            if let Some(attempt) = job.attempts.last_mut().filter(|a| a.state.is_active()) {
                attempt.state = AttemptState::Cancelling;
                attempt.reason = Some(reason);
            }
        });
        self.job_effect(id, false)
    }

    pub(super) fn job_retry(&mut self, index: Index, id: &JobId, at: Millis) -> Outcome {
        let job = self.job_or_404(id)?;
        let still_stopping = job.current_attempt().is_some_and(|a| a.state.is_active());
        if !matches!(
            job.state,
            JobState::Failed | JobState::Cancelled | JobState::Lost
        ) || still_stopping
        {
            let from = if still_stopping {
                "still stopping"
            } else {
                job.state.as_str()
            };
            return Err(Rejection::illegal("job", id, from, "retry"));
        }
        let hold = billing::hold_for(&job.spec.resources, &job.rates, job.spec.timeout_secs);
        let business = job.business.clone();
        let available = self.available(&business);
        if hold > available {
            return Err(Rejection::InsufficientCredits {
                business: business.to_string(),
                needed: hold,
                available,
            });
        }
        if hold > 0 {
            self.post(
                &business,
                EntryKind::Hold,
                -hold,
                Some(id),
                format!("hold:{id}:{index}"),
                Some("manual retry".into()),
                None,
                at,
            );
        }
        self.mutate_job(id, index, |job| {
            job.state = JobState::Pending;
            job.held = hold;
            job.retries = 0;
            job.not_before = None;
            job.blocked = None;
            job.updated_at = at;
        });
        self.job_effect(id, false)
    }

    pub(super) fn jobs_assign(
        &mut self,
        index: Index,
        placements: &[Placement],
        at: Millis,
    ) -> Outcome {
        let mut placed = Vec::new();
        let mut refused = Vec::new();
        for placement in placements {
            match self.assign_one(index, placement, at) {
                Ok(()) => placed.push(placement.job.clone()),
                Err(rejection) => refused.push((placement.job.clone(), rejection)),
            }
        }
        Ok(Effect::Placements { placed, refused })
    }

    pub(super) fn assign_one(
        &mut self,
        index: Index,
        placement: &Placement,
        at: Millis,
    ) -> Result<(), Rejection> {
        let job = self.job_or_404(&placement.job)?;
        if job.state != JobState::Pending {
            return Err(Rejection::illegal(
                "job",
                &job.id,
                job.state.as_str(),
                "assign",
            ));
        }
        if job.not_before.is_some_and(|t| t > at) {
            return Err(Rejection::invalid(format!(
                "job `{}` is backing off until {}",
                job.id,
                job.not_before.unwrap_or_default()
            )));
        }
        validate::identifier("attempt id", placement.attempt.as_str())?;
        if job.attempts.iter().any(|a| a.id == placement.attempt) {
            return Err(Rejection::AlreadyExists {
                kind: "attempt".into(),
                id: placement.attempt.to_string(),
            });
        }
        let node = self.node_or_404(&placement.node)?;
        if node.state != NodeState::Ready {
            return Err(Rejection::illegal(
                "node",
                &node.id,
                node.state.as_str(),
                "take work",
            ));
        }
        if !labels_match(&job.spec.labels, &node.labels) {
            return Err(Rejection::invalid(format!(
                "node `{}` lacks labels job `{}` requires",
                node.id, job.id
            )));
        }
        if !node.runs(&job.spec) {
            return Err(Rejection::invalid(format!(
                "node `{}` offers no docker driver for job `{}`'s image",
                node.id, job.id
            )));
        }
        let mut needed = self
            .idx
            .node_allocated
            .get(&node.id)
            .copied()
            .unwrap_or_default();
        add(&mut needed, &job.spec.resources);
        if !node.resources.fits(&needed) {
            return Err(Rejection::invalid(format!(
                "node `{}` has no room for job `{}`",
                node.id, job.id
            )));
        }
        let hold = billing::hold_for(&job.spec.resources, &job.rates, job.spec.timeout_secs);
        let top_up = hold - job.held;
        let business = job.business.clone();
        let job_id = job.id.clone();
        if top_up > 0 {
            let available = self.available(&business);
            if top_up > available {
                self.mutate_job(&job_id, index, |job| {
                    job.blocked = Some("insufficient_credits".into());
                });
                return Err(Rejection::InsufficientCredits {
                    business: business.to_string(),
                    needed: top_up,
                    available,
                });
            }
            self.post(
                &business,
                EntryKind::Hold,
                -top_up,
                Some(&job_id),
                format!("hold:{job_id}:{index}"),
                Some("hold renewed for a new attempt".into()),
                None,
                at,
            );
        }
        self.mutate_job(&job_id, index, |job| {
            job.held = hold;
            job.blocked = None;
            job.not_before = None;
            job.state = JobState::Assigned;
            job.updated_at = at;
            let number = job.attempts.len() as u32 + 1;
            job.attempts.push(Attempt {
                id: placement.attempt.clone(),
                number,
                node: placement.node.clone(),
                state: AttemptState::Assigned,
                assigned_at: at,
                started_at: None,
                finished_at: None,
                exit_code: None,
                reason: None,
                log_bytes: 0,
                charged: 0,
                usage: None,
            });
        });
        Ok(())
    }

    /// Finds an attempt of a job: (is it the current one, its state).
    pub(super) fn attempt_of(
        &self,
        job: &JobId,
        attempt: &AttemptId,
    ) -> Result<(bool, AttemptState), Rejection> {
        let job_ref = self.job_or_404(job)?;
        let position = job_ref
            .attempts
            .iter()
            .position(|a| &a.id == attempt)
            .ok_or_else(|| Rejection::StaleAttempt {
                job: job.to_string(),
                attempt: attempt.to_string(),
                detail: "unknown attempt".into(),
            })?;
        Ok((
            position + 1 == job_ref.attempts.len(),
            job_ref.attempts[position].state,
        ))
    }

    pub(super) fn attempt_started(
        &mut self,
        index: Index,
        job: &JobId,
        attempt: &AttemptId,
        at: Millis,
    ) -> Outcome {
        let (current, state) = self.attempt_of(job, attempt)?;
        match (current, state) {
            (true, AttemptState::Assigned) => {
                self.mutate_job(job, index, |j| {
                    j.state = JobState::Running;
                    j.updated_at = at;
                    if let Some(a) = j.attempts.last_mut() {
                        a.state = AttemptState::Running;
                        a.started_at = Some(at);
                    }
                });
                self.job_effect(job, false)
            }
            (true, AttemptState::Running) => self.job_effect(job, true),
            (_, state) => Err(Rejection::StaleAttempt {
                job: job.to_string(),
                attempt: attempt.to_string(),
                detail: format!("attempt is {state:?}").to_lowercase(),
            }),
        }
    }

    /// Ends the current active attempt of `id`: charges its runtime, releases the rest of
    /// the hold, and moves the job on (done, retried, or terminal).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn end_attempt(
        &mut self,
        index: Index,
        id: &JobId,
        ended: AttemptState,
        exit_code: Option<i32>,
        reason: Option<String>,
        usage: Option<AttemptUsage>,
        consume_retry: bool,
        at: Millis,
    ) {
        let job = &self.data.jobs[id];
        let attempt = job
            .current_attempt()
            .expect("end_attempt without an attempt");
        let runtime = at.saturating_sub(attempt.started_at.unwrap_or(at)).max(0) as u64;
        // An attempt whose process never started (lost or evicted before its start) is
        // not charged the attempt minimum: it did not run.
        let (charge, details) = if attempt.started_at.is_some() {
            billing::settle(&job.spec.resources, &job.rates, runtime, usage, job.held)
        } else {
            let (_, details) = billing::settle(&job.spec.resources, &job.rates, 0, usage, 0);
            (0, details)
        };
        let held = job.held;
        let business = job.business.clone();
        let attempt_id = attempt.id.clone();
        let cancelled = job.state == JobState::Cancelled;
        // Settle the hold: release all of it, then debit the runtime. Releasing first
        // keeps `available` from dipping below zero between the two entries.
        if held > 0 {
            self.post(
                &business,
                EntryKind::Release,
                held,
                Some(id),
                format!("release:{attempt_id}"),
                Some("hold settled".into()),
                None,
                at,
            );
        }
        if charge > 0 {
            let note = match (details.basis, usage) {
                (tanvrit_api::BillingBasis::Used, Some(u)) => format!(
                    "attempt {attempt_id}: {runtime} ms, used: cpu {} ms, peak memory {} bytes",
                    u.cpu_ms.map_or("-".into(), |v| v.to_string()),
                    u.peak_memory_bytes.map_or("-".into(), |v| v.to_string()),
                ),
                _ => format!("attempt {attempt_id}: {runtime} ms"),
            };
            self.post_entry(
                &business,
                EntryKind::Charge,
                -charge,
                Some(id),
                format!("charge:{attempt_id}"),
                Some(note),
                None,
                Some(details),
                at,
            );
        }
        self.mutate_job(id, index, |job| {
            job.held = 0;
            job.updated_at = at;
            let max_retries = job.spec.max_retries;
            let attempt = job.attempts.last_mut().expect("attempt");
            attempt.finished_at = Some(at);
            attempt.exit_code = exit_code;
            attempt.charged = charge;
            if usage.is_some() {
                attempt.usage = usage;
            }
            if reason.is_some() {
                attempt.reason = reason;
            }
            if cancelled {
                attempt.state = if ended == AttemptState::Succeeded {
                    AttemptState::Succeeded
                } else {
                    AttemptState::Cancelled
                };
                return;
            }
            attempt.state = ended;
            if ended == AttemptState::Succeeded {
                job.state = JobState::Succeeded;
            } else if !consume_retry {
                job.state = JobState::Pending;
            } else if job.retries < max_retries {
                job.retries += 1;
                job.state = JobState::Pending;
                job.not_before = Some(at + retry_backoff(job.retries));
            } else {
                job.state = if ended == AttemptState::Lost {
                    JobState::Lost
                } else {
                    JobState::Failed
                };
            }
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attempt_finished(
        &mut self,
        index: Index,
        job: &JobId,
        attempt: &AttemptId,
        kind: FinishKind,
        exit_code: Option<i32>,
        reason: Option<String>,
        usage: Option<AttemptUsage>,
        at: Millis,
    ) -> Outcome {
        let (current, state) = self.attempt_of(job, attempt)?;
        if !state.is_active() {
            let same = state == finish_state(kind)
                || (state == AttemptState::Cancelled && kind != FinishKind::Succeeded);
            return if same {
                self.job_effect(job, true)
            } else {
                Err(Rejection::StaleAttempt {
                    job: job.to_string(),
                    attempt: attempt.to_string(),
                    detail: format!("attempt already ended as {state:?}").to_lowercase(),
                })
            };
        }
        debug_assert!(current, "only the current attempt can be active");
        self.end_attempt(
            index,
            job,
            finish_state(kind),
            exit_code,
            reason,
            usage,
            true,
            at,
        );
        self.job_effect(job, false)
    }

    pub(super) fn log_append(
        &mut self,
        job: &JobId,
        attempt: &AttemptId,
        offset: u64,
        data: &str,
    ) -> Outcome {
        if data.len() > MAX_LOG_CHUNK_BYTES {
            return Err(Rejection::invalid(format!(
                "log chunks are limited to {MAX_LOG_CHUNK_BYTES} bytes"
            )));
        }
        self.attempt_of(job, attempt)?;
        let stored = self.data.jobs[job]
            .attempts
            .iter()
            .find(|a| &a.id == attempt)
            .map_or(0, |a| a.log_bytes);
        let len = data.len() as u64;
        // Already stored: a chunk inside the output, or an empty chunk at its end.
        let duplicate = if len == 0 {
            offset == stored
        } else {
            offset + len <= stored
        };
        if duplicate {
            return Ok(Effect::LogAppended {
                offset,
                len,
                duplicate: true,
            });
        }
        if offset != stored {
            return Err(Rejection::LogGap {
                offset,
                expected: stored,
            });
        }
        // Log chunks do not bump modify_index: they are not job state changes clients wait on.
        self.mark_job(job);
        let entry = self.data.jobs.get_mut(job).expect("checked");
        if let Some(a) = entry.attempts.iter_mut().find(|a| &a.id == attempt) {
            a.log_bytes += len;
        }
        Ok(Effect::LogAppended {
            offset,
            len,
            duplicate: false,
        })
    }
}
