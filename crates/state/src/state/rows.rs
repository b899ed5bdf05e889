//! The state as rows: what changed since the last [`State::take_changes`], every row of
//! the state, and [`StateLoader`], which assembles a state from rows again.
//!
//! A storage engine keeps one table per kind of row (see [`Table`]) and, after each
//! applied batch, writes the rows [`State::changed_rows`] names in the transaction that
//! records the applied index; a restart loads those tables instead of replaying history.
//! Marking is coarse on purpose: a handler marks what it may have touched, and a marked
//! row is written with its current value (or deleted when it is gone), so marking too
//! much costs a write and marking too little is the only way to be wrong.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tanvrit_api::{
    BusinessId, Job, JobId, JobState, KeyId, LedgerEntry, MicroCredits, Millis, Node, NodeId,
    Schedule, ScheduleId,
};

use super::loader::Row;
use super::retention::finish_time;
use super::{Account, IdempotencyRecord, State, StoredKey};
use crate::Command;

/// The meta row holding the applied index.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// The meta row holding the latest collection cutoff.
pub const META_JOBS_COLLECTED_BEFORE: &str = "jobs_collected_before";

/// The tables a state is stored in, one per kind of row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Job id -> [`Job`] (with its attempts).
    Jobs,
    /// Node id -> [`Node`].
    Nodes,
    /// Key id -> [`StoredKey`].
    Keys,
    /// Business -> [`AccountTotals`].
    Accounts,
    /// `business/seq` (seq zero-padded to 20 digits) -> [`LedgerEntry`].
    Ledger,
    /// Schedule id -> [`Schedule`].
    Schedules,
    /// `business/idempotency key` -> the job submitted under it.
    JobKeys,
    /// `scope NUL key` -> [`IdempotencyRecord`].
    Idempotency,
    /// Name -> number (applied index, collection cutoff, jobs per state).
    Meta,
    /// Job id -> nothing: the jobs in flight (not settled), which a restart loads.
    LiveJobs,
    /// `finish time/job id` (time zero-padded to 20 digits) -> nothing: settled jobs by
    /// when they finished, for retention.
    FinishedJobs,
    /// `business/job id` -> nothing: a business's jobs, for listing them in id order.
    JobsByBusiness,
    /// `business/idempotency key` -> the seq of the ledger entry posted under it.
    LedgerKeys,
    /// `state/job id` -> nothing: the jobs in each state, for listing them by state in
    /// id order.
    JobsByState,
}

impl Table {
    /// Every table, in the order a snapshot streams them.
    pub const ALL: [Table; 14] = [
        Table::LedgerKeys,
        Table::Meta,
        Table::LiveJobs,
        Table::FinishedJobs,
        Table::JobsByBusiness,
        Table::JobsByState,
        Table::Keys,
        Table::Nodes,
        Table::Accounts,
        Table::Ledger,
        Table::Schedules,
        Table::Jobs,
        Table::JobKeys,
        Table::Idempotency,
    ];

    /// The table's name (the storage engine prefixes its group).
    pub fn name(self) -> &'static str {
        match self {
            Table::Jobs => "jobs",
            Table::Nodes => "nodes",
            Table::Keys => "keys",
            Table::Accounts => "accounts",
            Table::Ledger => "ledger",
            Table::Schedules => "schedules",
            Table::JobKeys => "job_keys",
            Table::Idempotency => "idempotency",
            Table::Meta => "meta",
            Table::LiveJobs => "live_jobs",
            Table::FinishedJobs => "finished_jobs",
            Table::JobsByBusiness => "jobs_by_business",
            Table::LedgerKeys => "ledger_keys",
            Table::JobsByState => "jobs_by_state",
        }
    }

    /// The table of a name returned by [`Table::name`].
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// An account's balances and how many ledger entries it has (its entries are rows of
/// [`Table::Ledger`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTotals {
    /// Spendable credits.
    pub available: MicroCredits,
    /// Credits held for jobs.
    pub held: MicroCredits,
    /// Ledger entries (the last entry's seq).
    pub entries: u64,
}

/// A row's value, borrowed from the state.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
pub enum RowValue<'a> {
    /// In [`Table::Jobs`].
    Job(&'a Job),
    /// In [`Table::Nodes`].
    Node(&'a Node),
    /// In [`Table::Keys`].
    Key(&'a StoredKey),
    /// In [`Table::Accounts`].
    Account(AccountTotals),
    /// In [`Table::Ledger`].
    Entry(&'a LedgerEntry),
    /// In [`Table::Schedules`].
    Schedule(&'a Schedule),
    /// In [`Table::JobKeys`].
    JobKey(&'a JobId),
    /// In [`Table::Idempotency`].
    Idempotency(&'a IdempotencyRecord),
    /// In [`Table::Meta`].
    Meta(u64),
    /// In the index tables: the key is all there is.
    Marker,
    /// In [`Table::LedgerKeys`].
    Seq(u64),
}

/// One row to write: its table, its key, and its value (`None`: delete the row).
#[derive(Clone, Debug)]
pub struct RowWrite<'a> {
    /// The table.
    pub table: Table,
    /// The key (see [`Table`] for each table's key).
    pub key: String,
    /// The new value, or `None` when the row is gone.
    pub value: Option<RowValue<'a>>,
}

impl RowWrite<'_> {
    /// The row this write stores, owned (`None` for a delete); the key gives what the
    /// value does not hold.
    pub fn to_row(&self) -> Option<Row> {
        let value = self.value?;
        Some(match value {
            RowValue::Job(job) => Row::Job(job.clone()),
            RowValue::Node(node) => Row::Node(node.clone()),
            RowValue::Key(key) => Row::Key(key.clone()),
            RowValue::Account(totals) => Row::Account(BusinessId(self.key.clone()), totals),
            RowValue::Entry(entry) => Row::Entry(entry.clone()),
            RowValue::Schedule(schedule) => Row::Schedule(schedule.clone()),
            RowValue::JobKey(job) => Row::JobKey(self.key.clone(), job.clone()),
            RowValue::Idempotency(record) => {
                let (scope, key) = split_idempotency_key(&self.key)?;
                Row::Idempotency(scope.to_string(), key.to_string(), record.clone())
            }
            RowValue::Meta(value) => Row::Meta(self.key.clone(), value),
            RowValue::Marker => Row::Marker(self.table, self.key.clone()),
            RowValue::Seq(seq) => Row::Seq(self.table, self.key.clone(), seq),
        })
    }
}

/// The (scope, key) of an [`idempotency_key`].
pub fn split_idempotency_key(stored: &str) -> Option<(&str, &str)> {
    stored.split_once('\0')
}

/// The key of ledger entry `seq` of `business`: ordered by business, then seq.
pub fn ledger_key(business: &BusinessId, seq: u64) -> String {
    format!("{business}/{seq:020}")
}

/// The key of a settled job in [`Table::FinishedJobs`].
pub fn finished_key(finished: Millis, job: &JobId) -> String {
    format!("{:020}/{job}", finished.max(0))
}

/// The (finish time, job) of a [`finished_key`].
pub fn split_finished_key(key: &str) -> Option<(Millis, JobId)> {
    let (time, job) = key.split_once('/')?;
    Some((time.parse().ok()?, JobId::from(job)))
}

/// The key of an entry's idempotency key in [`Table::LedgerKeys`].
pub fn ledger_key_key(business: &BusinessId, key: &str) -> String {
    format!("{business}/{key}")
}

/// The key of a job in [`Table::JobsByBusiness`].
pub fn business_job_key(business: &BusinessId, job: &JobId) -> String {
    format!("{business}/{job}")
}

/// The key of a job in [`Table::JobsByState`].
pub fn state_job_key(state: JobState, job: &JobId) -> String {
    format!("{}/{job}", state.as_str())
}

/// The meta row counting the jobs in `state`.
pub fn job_count_key(state: JobState) -> String {
    format!("jobs.{}", state.as_str())
}

/// The key of idempotency record (`scope`, `key`).
pub fn idempotency_key(scope: &str, key: &str) -> String {
    format!("{scope}\0{key}")
}

/// What apply touched since the last [`State::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Jobs that changed or went, each with the state its stored rows were written in
    /// before the first change (`None`: it has no rows yet).
    pub(super) jobs: BTreeMap<JobId, Option<JobState>>,
    pub(super) nodes: BTreeSet<NodeId>,
    pub(super) keys: BTreeSet<KeyId>,
    /// Business -> the first seq appended since (`u64::MAX`: balances only).
    pub(super) accounts: BTreeMap<BusinessId, u64>,
    pub(super) schedules: BTreeSet<ScheduleId>,
    pub(super) job_keys: BTreeSet<String>,
    pub(super) idempotency: BTreeSet<(String, String)>,
    /// Retention entries of jobs that changed or went: their old finish keys.
    pub(super) finished_removed: BTreeSet<(Millis, JobId)>,
    /// Jobs that joined (`true`) or left (`false`) their business's listing.
    pub(super) by_business: BTreeMap<(BusinessId, JobId), bool>,
}

impl Changes {
    /// Whether nothing was touched.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// How many rows were marked (a ledger append counts its account once).
    pub fn len(&self) -> usize {
        self.jobs.len()
            + self.nodes.len()
            + self.keys.len()
            + self.accounts.len()
            + self.schedules.len()
            + self.job_keys.len()
            + self.idempotency.len()
            + self.finished_removed.len()
            + self.by_business.len()
    }

    /// The jobs that changed (or went) since the changes were taken.
    pub fn jobs(&self) -> impl Iterator<Item = &JobId> + '_ {
        self.jobs.keys()
    }
}

fn put<'a>(table: Table, key: String, value: RowValue<'a>) -> RowWrite<'a> {
    RowWrite {
        table,
        key,
        value: Some(value),
    }
}

fn put_or_delete<'a, T>(
    table: Table,
    key: String,
    value: Option<&'a T>,
    wrap: impl FnOnce(&'a T) -> RowValue<'a>,
) -> RowWrite<'a> {
    RowWrite {
        table,
        key,
        value: value.map(wrap),
    }
}

fn delete<'a>(table: Table, key: String) -> RowWrite<'a> {
    RowWrite {
        table,
        key,
        value: None,
    }
}

/// The live, finished and by-state rows of a job as it is now (`None`: gone), whose
/// stored rows were in state `before` (`None`: it had none).
fn job_index_rows<'a>(
    id: &JobId,
    job: Option<&Job>,
    before: Option<JobState>,
) -> Vec<RowWrite<'a>> {
    let now = job.map(|job| job.state);
    let mut rows = Vec::with_capacity(4);
    if before != now {
        if let Some(left) = before {
            rows.push(delete(Table::JobsByState, state_job_key(left, id)));
        }
        if let Some(state) = now {
            rows.push(put(
                Table::JobsByState,
                state_job_key(state, id),
                RowValue::Marker,
            ));
        }
    }
    rows.extend(live_and_finished_rows(id, job));
    rows
}

fn live_and_finished_rows<'a>(id: &JobId, job: Option<&Job>) -> Vec<RowWrite<'a>> {
    match job.map(|job| (job, finish_time(job))) {
        None => vec![delete(Table::LiveJobs, id.to_string())],
        Some((_, Some(finished))) => vec![
            delete(Table::LiveJobs, id.to_string()),
            put(
                Table::FinishedJobs,
                finished_key(finished, id),
                RowValue::Marker,
            ),
        ],
        Some((_, None)) => vec![put(Table::LiveJobs, id.to_string(), RowValue::Marker)],
    }
}

fn totals(account: &Account) -> AccountTotals {
    AccountTotals {
        available: account.available,
        held: account.held,
        entries: account.entry_count(),
    }
}

/// A ledger entry's row and its idempotency key's.
fn entry_rows<'a>(business: &BusinessId, entry: &'a LedgerEntry) -> [RowWrite<'a>; 2] {
    [
        put(
            Table::Ledger,
            ledger_key(business, entry.seq),
            RowValue::Entry(entry),
        ),
        put(
            Table::LedgerKeys,
            ledger_key_key(business, &entry.idempotency_key),
            RowValue::Seq(entry.seq),
        ),
    ]
}

impl State {
    /// Marks the nodes, keys and schedules a command names: their handlers change no
    /// other row of those tables.
    pub(super) fn mark_named_rows(&mut self, command: &Command) {
        let changes = &mut self.changes;
        match command {
            Command::NodeRegister { node, .. }
            | Command::NodeDrain { node, .. }
            | Command::NodeDelete { node, .. }
            | Command::NodeLost { node, .. }
            | Command::NodeDown { node, .. }
            | Command::NodeEvict { node, .. } => {
                changes.nodes.insert(node.clone());
            }
            Command::KeyCreate { key, .. }
            | Command::KeyRevoke { key, .. }
            | Command::KeyBind { key, .. } => {
                changes.keys.insert(key.clone());
            }
            Command::ScheduleCreate { schedule, .. }
            | Command::ScheduleUpdate { schedule, .. }
            | Command::ScheduleDelete { schedule, .. }
            | Command::ScheduleFire { schedule, .. } => {
                changes.schedules.insert(schedule.clone());
            }
            Command::SchedulesFire { fires, .. } => {
                changes
                    .schedules
                    .extend(fires.iter().map(|fire| fire.schedule.clone()));
            }
            _ => {}
        }
    }

    /// Notes that a job is about to change (or, absent from memory, to be created).
    pub(super) fn mark_job(&mut self, id: &JobId) {
        let state = self.data.jobs.get(id).map(|job| job.state);
        self.changes.jobs.entry(id.clone()).or_insert(state);
    }

    /// Notes what a job was before it changes or goes: its retention entry, if it had
    /// one, leaves the finished table.
    pub(super) fn mark_job_before(&mut self, job: &Job) {
        self.changes
            .jobs
            .entry(job.id.clone())
            .or_insert(Some(job.state));
        if let Some(finished) = finish_time(job) {
            self.changes
                .finished_removed
                .insert((finished, job.id.clone()));
        }
    }

    pub(super) fn mark_listed(&mut self, business: &BusinessId, job: &JobId, listed: bool) {
        self.changes
            .by_business
            .insert((business.clone(), job.clone()), listed);
    }

    pub(super) fn mark_job_key(&mut self, key: &str) {
        self.changes.job_keys.insert(key.to_string());
    }

    pub(super) fn mark_ledger(&mut self, business: &BusinessId, seq: u64) {
        let first = self.changes.accounts.entry(business.clone()).or_insert(seq);
        *first = (*first).min(seq);
    }

    pub(super) fn mark_idempotency(&mut self, scope: &str, key: &str) {
        self.changes
            .idempotency
            .insert((scope.to_string(), key.to_string()));
    }

    /// What apply touched since the last call, and starts counting afresh.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// The rows to write for `changes`, then the meta rows; each written row carries its
    /// current value, a row that is gone is deleted.
    pub fn changed_rows<'a>(&'a self, changes: &Changes) -> Vec<RowWrite<'a>> {
        let data = &self.data;
        let mut rows = Vec::with_capacity(changes.len() + 2);
        for id in changes.jobs.keys() {
            rows.push(put_or_delete(
                Table::Jobs,
                id.to_string(),
                data.jobs.get(id),
                RowValue::Job,
            ));
        }
        // Old retention entries go before new ones are written (a job may finish again
        // at the same time).
        for (finished, id) in &changes.finished_removed {
            rows.push(delete(Table::FinishedJobs, finished_key(*finished, id)));
        }
        for (id, before) in &changes.jobs {
            let job = data.jobs.get(id);
            rows.extend(job_index_rows(id, job, *before));
        }
        for ((business, id), listed) in &changes.by_business {
            let key = business_job_key(business, id);
            rows.push(if *listed {
                put(Table::JobsByBusiness, key, RowValue::Marker)
            } else {
                delete(Table::JobsByBusiness, key)
            });
        }
        for id in &changes.nodes {
            rows.push(put_or_delete(
                Table::Nodes,
                id.to_string(),
                data.nodes.get(id),
                RowValue::Node,
            ));
        }
        for id in &changes.keys {
            rows.push(put_or_delete(
                Table::Keys,
                id.to_string(),
                data.keys.get(id),
                RowValue::Key,
            ));
        }
        for (business, from) in &changes.accounts {
            // Accounts are never removed.
            let Some(account) = data.accounts.get(business) else {
                continue;
            };
            rows.push(put(
                Table::Accounts,
                business.to_string(),
                RowValue::Account(totals(account)),
            ));
            for entry in account.entries.iter().filter(|e| e.seq >= *from) {
                rows.extend(entry_rows(business, entry));
            }
        }
        for id in &changes.schedules {
            rows.push(put_or_delete(
                Table::Schedules,
                id.to_string(),
                data.schedules.get(id),
                RowValue::Schedule,
            ));
        }
        for key in &changes.job_keys {
            rows.push(put_or_delete(
                Table::JobKeys,
                key.clone(),
                data.job_idempotency.get(key),
                RowValue::JobKey,
            ));
        }
        for (scope, key) in &changes.idempotency {
            rows.push(put_or_delete(
                Table::Idempotency,
                idempotency_key(scope, key),
                self.idempotency_record(scope, key),
                RowValue::Idempotency,
            ));
        }
        self.meta_rows(&mut rows);
        rows
    }

    fn meta_rows<'a>(&'a self, rows: &mut Vec<RowWrite<'a>>) {
        rows.push(put(
            Table::Meta,
            META_APPLIED_INDEX.to_string(),
            RowValue::Meta(self.data.applied_index),
        ));
        rows.push(put(
            Table::Meta,
            META_JOBS_COLLECTED_BEFORE.to_string(),
            RowValue::Meta(self.data.jobs_collected_before.max(0) as u64),
        ));
        let counts = self.job_counts();
        for state in JobState::ALL {
            let count = counts.get(&state).copied().unwrap_or(0);
            rows.push(put(
                Table::Meta,
                job_count_key(state),
                RowValue::Meta(count),
            ));
        }
    }

    /// Every row of the state (to write a state into empty tables).
    pub fn all_rows(&self) -> impl Iterator<Item = RowWrite<'_>> + '_ {
        let data = &self.data;
        let mut meta = Vec::new();
        self.meta_rows(&mut meta);
        let keys = data
            .keys
            .iter()
            .map(|(id, key)| put(Table::Keys, id.to_string(), RowValue::Key(key)));
        let nodes = data
            .nodes
            .iter()
            .map(|(id, node)| put(Table::Nodes, id.to_string(), RowValue::Node(node)));
        let accounts = data.accounts.iter().flat_map(|(business, account)| {
            std::iter::once(put(
                Table::Accounts,
                business.to_string(),
                RowValue::Account(totals(account)),
            ))
            .chain(
                account
                    .entries
                    .iter()
                    .flat_map(move |entry| entry_rows(business, entry)),
            )
        });
        let schedules = data
            .schedules
            .iter()
            .map(|(id, s)| put(Table::Schedules, id.to_string(), RowValue::Schedule(s)));
        let jobs = data.jobs.iter().flat_map(|(id, job)| {
            std::iter::once(put(Table::Jobs, id.to_string(), RowValue::Job(job)))
                .chain(
                    job_index_rows(id, Some(job), None)
                        .into_iter()
                        .filter(|row| row.value.is_some()),
                )
                .chain(std::iter::once(put(
                    Table::JobsByBusiness,
                    business_job_key(&job.business, id),
                    RowValue::Marker,
                )))
        });
        let job_keys = data
            .job_idempotency
            .iter()
            .map(|(key, job)| put(Table::JobKeys, key.clone(), RowValue::JobKey(job)));
        let records = self.idempotency_records().map(|(scope, key, record)| {
            put(
                Table::Idempotency,
                idempotency_key(scope, key),
                RowValue::Idempotency(record),
            )
        });
        meta.into_iter()
            .chain(keys)
            .chain(nodes)
            .chain(accounts)
            .chain(schedules)
            .chain(jobs)
            .chain(job_keys)
            .chain(records)
    }
}
