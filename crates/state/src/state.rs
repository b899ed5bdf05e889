//! `State`: every job, node, key, ledger and schedule, plus secondary indexes, and the
//! deterministic [`State::apply`].
//!
//! Invariant for every handler: check everything first, then mutate. A rejected command
//! leaves the state exactly as it was (the property tests compare before and after),
//! except that a rejected first delivery of a `Command::Idempotent` leaves its record
//! (see `idempotency`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tanvrit_api::{
    ApiKeyInfo, Attempt, AttemptId, AttemptState, BusinessId, CatchUpPolicy, EntryId, EntryKind,
    Index, Job, JobId, JobSpec, JobState, KeyId, LedgerEntry, MicroCredits, Millis, Node, NodeId,
    NodeState, NodeView, OverlapPolicy, Rates, Resources, Schedule, ScheduleId,
    ScheduleUpdateRequest, Scope,
};

use crate::{billing, validate, Command, Effect, FinishKind, Outcome, Placement, Rejection};

mod idempotency;

pub use idempotency::{
    IdempotencyRecord, IDEMPOTENCY_PRUNE_BATCH, MAX_FINGERPRINT_BYTES, MAX_SCOPE_BYTES,
};

/// Longest accepted log chunk.
pub const MAX_LOG_CHUNK_BYTES: usize = 1024 * 1024;
/// First automatic retry waits this long; each next one twice as long.
pub const RETRY_BACKOFF_BASE_MS: Millis = 1_000;
/// Automatic retry backoff never exceeds this.
pub const RETRY_BACKOFF_MAX_MS: Millis = 5 * 60 * 1000;

/// A key as stored: public data plus the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Public data.
    pub info: ApiKeyInfo,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
}

/// One business's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable: the sum of every entry's amount.
    pub available: MicroCredits,
    /// Held for jobs: holds minus releases.
    pub held: MicroCredits,
    /// Every entry, oldest first (`seq` = position + 1).
    pub entries: Vec<LedgerEntry>,
    /// Idempotency key -> seq.
    pub by_key: BTreeMap<String, u64>,
}

/// Filters for [`State::jobs`].
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this business.
    pub business: Option<BusinessId>,
    /// Continue after this id (newest-first order).
    pub after: Option<JobId>,
    /// Page size.
    pub limit: usize,
}

/// The replicated data; indexes are rebuilt from it on load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateData {
    applied_index: Index,
    jobs: BTreeMap<JobId, Job>,
    nodes: BTreeMap<NodeId, Node>,
    keys: BTreeMap<KeyId, StoredKey>,
    accounts: BTreeMap<BusinessId, Account>,
    schedules: BTreeMap<ScheduleId, Schedule>,
    /// `"{business}/{idempotency key}"` -> job.
    job_idempotency: BTreeMap<String, JobId>,
    /// `Idempotent` envelopes: scope -> key -> the first answer (until it expires).
    /// Left out of the encoding while empty, so a state that never saw an envelope
    /// encodes exactly as before envelopes existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    idempotency: BTreeMap<String, BTreeMap<String, IdempotencyRecord>>,
}

/// Derived lookups, never serialized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Indexes {
    keys_by_hash: HashMap<String, KeyId>,
    /// Pending jobs in placement order: priority (high first), then age.
    pending: BTreeSet<(Reverse<i32>, Millis, JobId)>,
    by_state: BTreeMap<JobState, BTreeSet<JobId>>,
    by_business: HashMap<BusinessId, BTreeSet<JobId>>,
    /// Jobs whose current attempt is active on the node.
    node_active: HashMap<NodeId, BTreeSet<JobId>>,
    node_allocated: HashMap<NodeId, Resources>,
    /// Idempotency records by expiry: (expires_at, scope, key), oldest first, so
    /// pruning takes from the front.
    idempotency_expiry: BTreeSet<(Millis, String, String)>,
}

/// The whole domain state of one replica.
#[derive(Clone, Debug, Default)]
pub struct State {
    data: StateData,
    idx: Indexes,
}

/// Two states are equal when their replicated data is: indexes are derived (and may keep
/// empty sets that a freshly loaded state does not have).
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for State {}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let data = StateData::deserialize(deserializer)?;
        let mut state = State {
            data,
            idx: Indexes::default(),
        };
        state.rebuild_indexes();
        Ok(state)
    }
}

fn job_key(business: &BusinessId, key: &str) -> String {
    format!("{business}/{key}")
}

fn add(a: &mut Resources, b: &Resources) {
    a.cpu_millis = a.cpu_millis.saturating_add(b.cpu_millis);
    a.memory_mb = a.memory_mb.saturating_add(b.memory_mb);
    a.gpus = a.gpus.saturating_add(b.gpus);
}

fn sub(a: &mut Resources, b: &Resources) {
    a.cpu_millis = a.cpu_millis.saturating_sub(b.cpu_millis);
    a.memory_mb = a.memory_mb.saturating_sub(b.memory_mb);
    a.gpus = a.gpus.saturating_sub(b.gpus);
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

/// Labels a job requires are all present with the same value on the node.
pub fn labels_match(required: &BTreeMap<String, String>, node: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(k, v)| node.get(k) == Some(v))
}

impl State {
    /// An empty state at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last command applied.
    pub fn applied_index(&self) -> Index {
        self.data.applied_index
    }

    /// Restores the applied index (for a state restored alongside a log position).
    pub fn set_applied_index(&mut self, index: Index) {
        self.data.applied_index = index;
    }

    fn rebuild_indexes(&mut self) {
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

    fn index_job(&mut self, job: &Job, insert: bool) {
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
    fn mutate_job<R>(&mut self, id: &JobId, index: Index, change: impl FnOnce(&mut Job) -> R) -> R {
        let mut job = self
            .data
            .jobs
            .remove(id)
            .expect("mutate_job on a missing job");
        self.index_job(&job, false);
        let result = change(&mut job);
        job.modify_index = index;
        self.index_job(&job, true);
        self.data.jobs.insert(id.clone(), job);
        result
    }

    fn job_or_404(&self, id: &JobId) -> Result<&Job, Rejection> {
        self.data
            .jobs
            .get(id)
            .ok_or_else(|| Rejection::not_found("job", id))
    }

    fn node_or_404(&self, id: &NodeId) -> Result<&Node, Rejection> {
        self.data
            .nodes
            .get(id)
            .ok_or_else(|| Rejection::not_found("node", id))
    }

    fn available(&self, business: &BusinessId) -> MicroCredits {
        self.data
            .accounts
            .get(business)
            .map_or(0, |account| account.available)
    }

    /// Appends a ledger entry; the caller has checked that `available` stays >= 0.
    #[allow(clippy::too_many_arguments)]
    fn post(
        &mut self,
        business: &BusinessId,
        kind: EntryKind,
        amount: MicroCredits,
        job: Option<&JobId>,
        idempotency_key: String,
        note: Option<String>,
        entry_id: Option<EntryId>,
        at: Millis,
    ) -> LedgerEntry {
        let account = self.data.accounts.entry(business.clone()).or_default();
        account.available += amount;
        // A hold (negative) moves credits into `held`; a release (positive) moves them back.
        if matches!(kind, EntryKind::Hold | EntryKind::Release) {
            account.held -= amount;
        }
        let seq = account.entries.len() as u64 + 1;
        let entry = LedgerEntry {
            id: entry_id.unwrap_or_else(|| EntryId(format!("ent-{business}-{seq}"))),
            seq,
            business: business.clone(),
            kind,
            amount,
            balance_after: account.available,
            job: job.cloned(),
            idempotency_key: idempotency_key.clone(),
            note,
            at,
        };
        account.by_key.insert(idempotency_key, seq);
        account.entries.push(entry.clone());
        entry
    }

    /// Applies one command at `index`. Deterministic: same state + same command = same result.
    pub fn apply(&mut self, index: Index, command: &Command) -> Outcome {
        let outcome = self.dispatch(index, command);
        self.data.applied_index = index;
        outcome
    }

    fn dispatch(&mut self, index: Index, command: &Command) -> Outcome {
        match command {
            Command::JobSubmit {
                job,
                business,
                spec,
                idempotency_key,
                rates,
                at,
            } => self.job_submit(
                index,
                job,
                business,
                spec,
                idempotency_key.as_deref(),
                rates,
                *at,
            ),
            Command::JobCancel { job, reason, at } => {
                self.job_cancel(index, job, reason.clone(), *at)
            }
            Command::JobRetry { job, at } => self.job_retry(index, job, *at),
            Command::JobsAssign { placements, at } => self.jobs_assign(index, placements, *at),
            Command::AttemptStarted { job, attempt, at } => {
                self.attempt_started(index, job, attempt, *at)
            }
            Command::AttemptFinished {
                job,
                attempt,
                kind,
                exit_code,
                reason,
                at,
            } => self.attempt_finished(index, job, attempt, *kind, *exit_code, reason.clone(), *at),
            Command::LogAppend {
                job,
                attempt,
                offset,
                data,
                ..
            } => self.log_append(job, attempt, *offset, data),
            Command::NodeRegister {
                node,
                name,
                resources,
                labels,
                at,
            } => self.node_register(index, node, name, resources, labels, *at),
            Command::NodeDrain { node, deadline, at } => {
                self.node_drain(index, node, *deadline, *at)
            }
            Command::NodeDelete { node, force, at } => self.node_delete(index, node, *force, *at),
            Command::NodeLost { node, at } => self.node_lost(index, node, *at),
            Command::NodeEvict { node, reason, at } => self.node_evict(index, node, reason, *at),
            Command::KeyCreate {
                key,
                name,
                scope,
                business,
                secret_hash,
                at,
            } => self.key_create(key, name, *scope, business.as_ref(), secret_hash, *at),
            Command::KeyRevoke { key, at } => self.key_revoke(key, *at),
            Command::LedgerEntryCreate {
                entry,
                business,
                kind,
                amount,
                idempotency_key,
                note,
                at,
            } => self.ledger_entry_create(
                entry,
                business,
                *kind,
                *amount,
                idempotency_key,
                note.clone(),
                *at,
            ),
            Command::ScheduleCreate {
                schedule,
                business,
                name,
                cron,
                timezone,
                template,
                enabled,
                overlap,
                catch_up,
                at,
            } => self.schedule_create(
                index,
                Schedule {
                    id: schedule.clone(),
                    business: business.clone(),
                    name: name.clone(),
                    cron: cron.clone(),
                    timezone: timezone.clone(),
                    template: template.clone(),
                    enabled: *enabled,
                    overlap: *overlap,
                    catch_up: *catch_up,
                    created_at: *at,
                    updated_at: *at,
                    last_fire_at: None,
                    last_job: None,
                    fired: 0,
                    skipped: 0,
                    modify_index: index,
                },
            ),
            Command::ScheduleUpdate {
                schedule,
                patch,
                at,
            } => self.schedule_update(index, schedule, patch, *at),
            Command::ScheduleDelete { schedule, .. } => self.schedule_delete(schedule),
            Command::ScheduleFire {
                schedule,
                due_at,
                job,
                rates,
                skip_reason,
                at,
            } => self.schedule_fire(index, schedule, *due_at, job, rates, skip_reason, *at),
            Command::SchedulesFire { fires, rates, at } => Ok(Effect::FiredMany {
                fires: fires
                    .iter()
                    .map(|fire| {
                        self.schedule_fire(
                            index,
                            &fire.schedule,
                            fire.due_at,
                            &fire.job,
                            rates,
                            &fire.skip_reason,
                            *at,
                        )
                    })
                    .collect(),
            }),
            Command::Idempotent {
                key,
                scope,
                fingerprint,
                command,
                retain_ms,
                at,
            } => self.idempotent(index, key, scope, fingerprint, command, *retain_ms, *at),
        }
    }

    // ---- jobs ------------------------------------------------------------------------

    /// Checks a new job and computes its hold; mutates nothing.
    fn check_new_job(
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
    fn insert_job(
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
            self.data
                .job_idempotency
                .insert(job_key(business, key), id.clone());
        }
        self.index_job(&job, true);
        self.data.jobs.insert(id.clone(), job.clone());
        job
    }

    #[allow(clippy::too_many_arguments)]
    fn job_submit(
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

    fn job_effect(&self, id: &JobId, duplicate: bool) -> Outcome {
        Ok(Effect::Job {
            job: Box::new(self.data.jobs[id].clone()),
            duplicate,
        })
    }

    /// Releases whatever a job still holds (it will not run again without a new hold).
    fn release_hold(&mut self, index: Index, id: &JobId, note: &str, at: Millis) {
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

    fn job_cancel(
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

    fn job_retry(&mut self, index: Index, id: &JobId, at: Millis) -> Outcome {
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

    fn jobs_assign(&mut self, index: Index, placements: &[Placement], at: Millis) -> Outcome {
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

    fn assign_one(
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
            });
        });
        Ok(())
    }

    /// Finds an attempt of a job: (is it the current one, its state).
    fn attempt_of(
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

    fn attempt_started(
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
    fn end_attempt(
        &mut self,
        index: Index,
        id: &JobId,
        ended: AttemptState,
        exit_code: Option<i32>,
        reason: Option<String>,
        consume_retry: bool,
        at: Millis,
    ) {
        let job = &self.data.jobs[id];
        let attempt = job
            .current_attempt()
            .expect("end_attempt without an attempt");
        let runtime = at.saturating_sub(attempt.started_at.unwrap_or(at)).max(0) as u64;
        let charge = billing::cost(&job.spec.resources, &job.rates, runtime).min(job.held);
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
            self.post(
                &business,
                EntryKind::Charge,
                -charge,
                Some(id),
                format!("charge:{attempt_id}"),
                Some(format!("attempt {attempt_id}: {runtime} ms")),
                None,
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
    fn attempt_finished(
        &mut self,
        index: Index,
        job: &JobId,
        attempt: &AttemptId,
        kind: FinishKind,
        exit_code: Option<i32>,
        reason: Option<String>,
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
        self.end_attempt(index, job, finish_state(kind), exit_code, reason, true, at);
        self.job_effect(job, false)
    }

    fn log_append(&mut self, job: &JobId, attempt: &AttemptId, offset: u64, data: &str) -> Outcome {
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

    // ---- nodes -----------------------------------------------------------------------

    fn node_effect(&self, id: &NodeId) -> Outcome {
        Ok(Effect::Node {
            node: Box::new(self.data.nodes[id].clone()),
        })
    }

    fn node_register(
        &mut self,
        index: Index,
        id: &NodeId,
        name: &str,
        resources: &Resources,
        labels: &BTreeMap<String, String>,
        at: Millis,
    ) -> Outcome {
        validate::identifier("node id", id.as_str())?;
        if name.is_empty() || name.len() > 256 {
            return Err(Rejection::invalid("node names are 1-256 bytes"));
        }
        if labels.len() > validate::MAX_ITEMS || labels.keys().any(|k| k.is_empty()) {
            return Err(Rejection::invalid(
                "labels need non-empty names (at most 1024)",
            ));
        }
        let node = self.data.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            name: name.to_string(),
            resources: *resources,
            labels: labels.clone(),
            state: NodeState::Ready,
            registered_at: at,
            updated_at: at,
            drain_deadline: None,
            modify_index: index,
        });
        node.name = name.to_string();
        node.resources = *resources;
        node.labels = labels.clone();
        node.updated_at = at;
        node.modify_index = index;
        if matches!(node.state, NodeState::Down | NodeState::Deleted) {
            node.state = NodeState::Ready;
            node.drain_deadline = None;
        }
        self.node_effect(id)
    }

    fn node_drain(
        &mut self,
        index: Index,
        id: &NodeId,
        deadline: Option<Millis>,
        at: Millis,
    ) -> Outcome {
        let node = self.node_or_404(id)?;
        if matches!(node.state, NodeState::Down | NodeState::Deleted) {
            return Err(Rejection::illegal("node", id, node.state.as_str(), "drain"));
        }
        let node = self.data.nodes.get_mut(id).expect("checked");
        node.state = NodeState::Draining;
        node.drain_deadline = deadline;
        node.updated_at = at;
        node.modify_index = index;
        self.node_effect(id)
    }

    /// Active jobs on a node.
    fn active_on(&self, node: &NodeId) -> Vec<JobId> {
        self.idx
            .node_active
            .get(node)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn lose_attempts(
        &mut self,
        index: Index,
        node: &NodeId,
        reason: &str,
        consume_retry: bool,
        at: Millis,
    ) {
        for job in self.active_on(node) {
            self.end_attempt(
                index,
                &job,
                AttemptState::Lost,
                None,
                Some(reason.to_string()),
                consume_retry,
                at,
            );
        }
    }

    fn node_delete(&mut self, index: Index, id: &NodeId, force: bool, at: Millis) -> Outcome {
        let node = self.node_or_404(id)?;
        if node.state == NodeState::Deleted {
            return Err(Rejection::illegal("node", id, "deleted", "delete"));
        }
        let active = self.active_on(id).len() as u32;
        if active > 0 && !force {
            return Err(Rejection::NodeBusy {
                node: id.to_string(),
                active,
            });
        }
        self.lose_attempts(index, id, "node deleted", true, at);
        let node = self.data.nodes.get_mut(id).expect("checked");
        node.state = NodeState::Deleted;
        node.updated_at = at;
        node.modify_index = index;
        self.node_effect(id)
    }

    fn node_lost(&mut self, index: Index, id: &NodeId, at: Millis) -> Outcome {
        let node = self.node_or_404(id)?;
        match node.state {
            NodeState::Deleted => Err(Rejection::illegal("node", id, "deleted", "be lost")),
            NodeState::Down => self.node_effect(id),
            NodeState::Ready | NodeState::Draining => {
                self.lose_attempts(index, id, "node missed its heartbeats", true, at);
                let node = self.data.nodes.get_mut(id).expect("checked");
                node.state = NodeState::Down;
                node.updated_at = at;
                node.modify_index = index;
                self.node_effect(id)
            }
        }
    }

    fn node_evict(&mut self, index: Index, id: &NodeId, reason: &str, at: Millis) -> Outcome {
        self.node_or_404(id)?;
        self.lose_attempts(index, id, reason, false, at);
        let node = self.data.nodes.get_mut(id).expect("checked");
        node.modify_index = index;
        self.node_effect(id)
    }

    // ---- keys ------------------------------------------------------------------------

    fn key_create(
        &mut self,
        id: &KeyId,
        name: &str,
        scope: Scope,
        business: Option<&BusinessId>,
        secret_hash: &str,
        at: Millis,
    ) -> Outcome {
        validate::identifier("key id", id.as_str())?;
        match (scope, business) {
            (Scope::User, None) => return Err(Rejection::invalid("user keys need a business")),
            (Scope::User, Some(b)) => validate::identifier("business", b.as_str())?,
            (_, Some(_)) => {
                return Err(Rejection::invalid("only user keys are bound to a business"))
            }
            _ => {}
        }
        if name.len() > 256 {
            return Err(Rejection::invalid("key names are at most 256 bytes"));
        }
        if secret_hash.len() < 32 {
            return Err(Rejection::invalid("secret hash too short"));
        }
        if self.data.keys.contains_key(id) || self.idx.keys_by_hash.contains_key(secret_hash) {
            return Err(Rejection::AlreadyExists {
                kind: "key".into(),
                id: id.to_string(),
            });
        }
        let info = ApiKeyInfo {
            id: id.clone(),
            name: name.to_string(),
            scope,
            business: business.cloned(),
            created_at: at,
            revoked_at: None,
        };
        self.idx
            .keys_by_hash
            .insert(secret_hash.to_string(), id.clone());
        self.data.keys.insert(
            id.clone(),
            StoredKey {
                info: info.clone(),
                secret_hash: secret_hash.to_string(),
            },
        );
        Ok(Effect::Key { key: info })
    }

    fn key_revoke(&mut self, id: &KeyId, at: Millis) -> Outcome {
        let key = self
            .data
            .keys
            .get_mut(id)
            .ok_or_else(|| Rejection::not_found("key", id))?;
        if key.info.revoked_at.is_none() {
            key.info.revoked_at = Some(at);
        }
        Ok(Effect::Key {
            key: key.info.clone(),
        })
    }

    // ---- credits ---------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn ledger_entry_create(
        &mut self,
        entry: &EntryId,
        business: &BusinessId,
        kind: EntryKind,
        amount: MicroCredits,
        idempotency_key: &str,
        note: Option<String>,
        at: Millis,
    ) -> Outcome {
        validate::identifier("business", business.as_str())?;
        if idempotency_key.is_empty() || idempotency_key.len() > 256 {
            return Err(Rejection::invalid("idempotency keys are 1-256 bytes"));
        }
        match kind {
            EntryKind::TopUp | EntryKind::Refund if amount <= 0 => {
                return Err(Rejection::invalid(format!(
                    "a {} must be a positive amount",
                    kind.as_str()
                )))
            }
            EntryKind::Adjustment if amount == 0 => {
                return Err(Rejection::invalid("an adjustment must not be zero"))
            }
            EntryKind::Hold | EntryKind::Charge | EntryKind::Release => {
                return Err(Rejection::invalid(
                    "holds, charges and releases are written by the system, not by hand",
                ))
            }
            _ => {}
        }
        if note.as_ref().is_some_and(|n| n.len() > 4096) {
            return Err(Rejection::invalid("notes are at most 4096 bytes"));
        }
        if let Some(account) = self.data.accounts.get(business) {
            if let Some(&seq) = account.by_key.get(idempotency_key) {
                let existing = &account.entries[seq as usize - 1];
                return if existing.kind == kind && existing.amount == amount {
                    Ok(Effect::Entry {
                        entry: Box::new(existing.clone()),
                        duplicate: true,
                    })
                } else {
                    Err(Rejection::IdempotencyConflict {
                        key: idempotency_key.to_string(),
                    })
                };
            }
        }
        let available = self.available(business);
        let after = available
            .checked_add(amount)
            .ok_or_else(|| Rejection::invalid("amount would overflow the balance"))?;
        if after < 0 {
            return Err(Rejection::InsufficientCredits {
                business: business.to_string(),
                needed: -amount,
                available,
            });
        }
        let entry = self.post(
            business,
            kind,
            amount,
            None,
            idempotency_key.to_string(),
            note,
            Some(entry.clone()),
            at,
        );
        Ok(Effect::Entry {
            entry: Box::new(entry),
            duplicate: false,
        })
    }

    // ---- schedules -------------------------------------------------------------------

    fn check_schedule(schedule: &Schedule) -> Result<(), Rejection> {
        validate::identifier("schedule id", schedule.id.as_str())?;
        validate::identifier("business", schedule.business.as_str())?;
        validate::job_spec(&schedule.template)?;
        if schedule.cron.trim().is_empty() || schedule.cron.len() > 256 {
            return Err(Rejection::invalid("cron expressions are 1-256 bytes"));
        }
        if schedule.timezone.is_empty() || schedule.timezone.len() > 64 {
            return Err(Rejection::invalid("time zones are 1-64 bytes"));
        }
        if let CatchUpPolicy::All(n) = schedule.catch_up {
            if n == 0 || n > 1000 {
                return Err(Rejection::invalid("catch-up `all` takes 1 to 1000"));
            }
        }
        Ok(())
    }

    fn schedule_effect(&self, id: &ScheduleId) -> Outcome {
        Ok(Effect::Schedule {
            schedule: Box::new(self.data.schedules[id].clone()),
        })
    }

    fn schedule_create(&mut self, _index: Index, schedule: Schedule) -> Outcome {
        Self::check_schedule(&schedule)?;
        if self.data.schedules.contains_key(&schedule.id) {
            return Err(Rejection::AlreadyExists {
                kind: "schedule".into(),
                id: schedule.id.to_string(),
            });
        }
        let id = schedule.id.clone();
        self.data.schedules.insert(id.clone(), schedule);
        self.schedule_effect(&id)
    }

    fn schedule_update(
        &mut self,
        index: Index,
        id: &ScheduleId,
        patch: &ScheduleUpdateRequest,
        at: Millis,
    ) -> Outcome {
        let current = self
            .data
            .schedules
            .get(id)
            .ok_or_else(|| Rejection::not_found("schedule", id))?;
        let mut next = current.clone();
        if let Some(name) = &patch.name {
            next.name = Some(name.clone());
        }
        if let Some(cron) = &patch.cron {
            next.cron = cron.clone();
        }
        if let Some(timezone) = &patch.timezone {
            next.timezone = timezone.clone();
        }
        if let Some(template) = &patch.template {
            next.template = template.clone();
        }
        if let Some(enabled) = patch.enabled {
            next.enabled = enabled;
        }
        if let Some(overlap) = patch.overlap {
            next.overlap = overlap;
        }
        if let Some(catch_up) = patch.catch_up {
            next.catch_up = catch_up;
        }
        Self::check_schedule(&next)?;
        next.updated_at = at;
        next.modify_index = index;
        self.data.schedules.insert(id.clone(), next);
        self.schedule_effect(id)
    }

    fn schedule_delete(&mut self, id: &ScheduleId) -> Outcome {
        self.data
            .schedules
            .remove(id)
            .ok_or_else(|| Rejection::not_found("schedule", id))?;
        Ok(Effect::ScheduleDeleted)
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule_fire(
        &mut self,
        index: Index,
        id: &ScheduleId,
        due_at: Millis,
        job_id: &JobId,
        rates: &Rates,
        skip_reason: &Option<String>,
        at: Millis,
    ) -> Outcome {
        let schedule = self
            .data
            .schedules
            .get(id)
            .ok_or_else(|| Rejection::not_found("schedule", id))?;
        if schedule.last_fire_at.is_some_and(|last| last >= due_at) {
            return Ok(Effect::Fired {
                job: None,
                skipped: None,
                duplicate: true,
            });
        }
        let active_previous = schedule
            .last_job
            .as_ref()
            .and_then(|j| self.data.jobs.get(j))
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id.clone());
        let mut skip = skip_reason.clone();
        if skip.is_none() && !schedule.enabled {
            skip = Some("disabled".into());
        }
        if skip.is_none() && active_previous.is_some() && schedule.overlap == OverlapPolicy::Forbid
        {
            skip = Some("overlap".into());
        }
        let business = schedule.business.clone();
        let template = schedule.template.clone();
        let replace = schedule.overlap == OverlapPolicy::Replace;
        let hold = if skip.is_none() {
            match self.check_new_job(job_id, &business, &template, rates) {
                Ok(hold) => Some(hold),
                Err(Rejection::InsufficientCredits { .. }) => {
                    skip = Some("insufficient_credits".into());
                    None
                }
                Err(other) => return Err(other),
            }
        } else {
            None
        };
        let job = match (skip.as_ref(), hold) {
            (None, Some(hold)) => {
                if let (true, Some(previous)) = (replace, active_previous.as_ref()) {
                    self.job_cancel(
                        index,
                        previous,
                        Some(format!("replaced by a newer fire of schedule {id}")),
                        at,
                    )?;
                }
                Some(self.insert_job(
                    index,
                    job_id,
                    &business,
                    &template,
                    None,
                    Some(id),
                    rates,
                    hold,
                    at,
                ))
            }
            _ => None,
        };
        let schedule = self.data.schedules.get_mut(id).expect("checked");
        schedule.last_fire_at = Some(due_at);
        schedule.modify_index = index;
        if let Some(job) = &job {
            schedule.fired += 1;
            schedule.last_job = Some(job.id.clone());
        } else {
            schedule.skipped += 1;
        }
        Ok(Effect::Fired {
            job: job.map(Box::new),
            skipped: skip,
            duplicate: false,
        })
    }

    // ---- queries ---------------------------------------------------------------------

    /// One job.
    pub fn job(&self, id: &JobId) -> Option<&Job> {
        self.data.jobs.get(id)
    }

    /// Jobs newest first, filtered, with the id to continue after (if more remain).
    pub fn jobs(&self, filter: &JobFilter) -> (Vec<&Job>, Option<JobId>) {
        let limit = filter.limit.max(1);
        let ids: Box<dyn Iterator<Item = &JobId>> = match (&filter.state, &filter.business) {
            (Some(state), _) => match self.idx.by_state.get(state) {
                Some(set) => Box::new(set.iter().rev()),
                None => Box::new(std::iter::empty()),
            },
            (None, Some(business)) => match self.idx.by_business.get(business) {
                Some(set) => Box::new(set.iter().rev()),
                None => Box::new(std::iter::empty()),
            },
            (None, None) => Box::new(self.data.jobs.keys().rev()),
        };
        let mut out = Vec::new();
        let mut next = None;
        for id in ids {
            if filter.after.as_ref().is_some_and(|after| id >= after) {
                continue;
            }
            let job = &self.data.jobs[id];
            if filter.business.as_ref().is_some_and(|b| &job.business != b) {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(|j: &&Job| j.id.clone());
                break;
            }
            out.push(job);
        }
        (out, next)
    }

    /// Pending jobs in placement order (priority, then age), backoff and credits not checked.
    pub fn pending_jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.idx
            .pending
            .iter()
            .map(|(_, _, id)| &self.data.jobs[id])
    }

    /// Number of jobs per state.
    pub fn job_counts(&self) -> BTreeMap<JobState, u64> {
        self.idx
            .by_state
            .iter()
            .map(|(state, set)| (*state, set.len() as u64))
            .collect()
    }

    /// Total jobs.
    pub fn job_total(&self) -> usize {
        self.data.jobs.len()
    }

    /// One node.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.data.nodes.get(id)
    }

    /// Every node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> + '_ {
        self.data.nodes.values()
    }

    /// A node with its allocation.
    pub fn node_view(&self, node: &Node) -> NodeView {
        NodeView {
            node: node.clone(),
            allocated: self
                .idx
                .node_allocated
                .get(&node.id)
                .copied()
                .unwrap_or_default(),
            active_attempts: self
                .idx
                .node_active
                .get(&node.id)
                .map_or(0, |s| s.len() as u32),
        }
    }

    /// Resources taken by active attempts on a node.
    pub fn node_allocated(&self, node: &NodeId) -> Resources {
        self.idx
            .node_allocated
            .get(node)
            .copied()
            .unwrap_or_default()
    }

    /// Jobs with an active attempt on a node (for agents polling for work).
    pub fn active_jobs_on(&self, node: &NodeId) -> impl Iterator<Item = &Job> + '_ {
        self.idx
            .node_active
            .get(node)
            .into_iter()
            .flat_map(|set| set.iter())
            .map(|id| &self.data.jobs[id])
    }

    /// A key by the hash of its secret.
    pub fn key_by_hash(&self, hash: &str) -> Option<&StoredKey> {
        self.idx
            .keys_by_hash
            .get(hash)
            .and_then(|id| self.data.keys.get(id))
    }

    /// One key.
    pub fn key(&self, id: &KeyId) -> Option<&StoredKey> {
        self.data.keys.get(id)
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &StoredKey> + '_ {
        self.data.keys.values()
    }

    /// A business's ledger.
    pub fn account(&self, business: &BusinessId) -> Option<&Account> {
        self.data.accounts.get(business)
    }

    /// Every business with a ledger.
    pub fn accounts(&self) -> impl Iterator<Item = (&BusinessId, &Account)> + '_ {
        self.data.accounts.iter()
    }

    /// One schedule.
    pub fn schedule(&self, id: &ScheduleId) -> Option<&Schedule> {
        self.data.schedules.get(id)
    }

    /// Every schedule, by id.
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> + '_ {
        self.data.schedules.values()
    }

    /// Every job (for invariant checks and snapshots).
    pub fn all_jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.data.jobs.values()
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
            )
        };
        norm(&fresh.idx) == norm(&self.idx)
    }
}
