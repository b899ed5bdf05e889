//! Rows back into a state: [`Row`] (a stored row, owned) and [`StateLoader`], which
//! assembles a [`State`] from rows in any order, whole or as its working set.

use std::collections::BTreeMap;

use tanvrit_api::{BusinessId, Index, Job, JobId, JobState, LedgerEntry, Millis, Node, Schedule};

use super::rows::{
    job_count_key, AccountTotals, Table, META_APPLIED_INDEX, META_JOBS_COLLECTED_BEFORE,
};
use super::{Account, IdempotencyRecord, State, StateData, StoredKey};

/// A row read back from storage, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// From [`Table::Jobs`].
    Job(Job),
    /// From [`Table::Nodes`].
    Node(Node),
    /// From [`Table::Keys`].
    Key(StoredKey),
    /// From [`Table::Accounts`].
    Account(BusinessId, AccountTotals),
    /// From [`Table::Ledger`].
    Entry(LedgerEntry),
    /// From [`Table::Schedules`].
    Schedule(Schedule),
    /// From [`Table::JobKeys`]: (business/key, job).
    JobKey(String, JobId),
    /// From [`Table::Idempotency`]: (scope, key, record).
    Idempotency(String, String, IdempotencyRecord),
    /// From [`Table::Meta`]: (name, value).
    Meta(String, u64),
    /// From an index table: its key.
    Marker(Table, String),
    /// From [`Table::LedgerKeys`]: its key and seq.
    Seq(Table, String, u64),
}

/// Why rows do not make a state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored rows are inconsistent: {0}")]
pub struct LoadError(pub String);

/// Assembles a [`State`] from rows in any order.
#[derive(Debug, Default)]
pub struct StateLoader {
    data: StateData,
    totals: BTreeMap<BusinessId, AccountTotals>,
    entries: BTreeMap<BusinessId, BTreeMap<u64, LedgerEntry>>,
    /// Settled jobs stay out of memory (their archive is the tables read from).
    evicting: bool,
    counts: BTreeMap<JobState, u64>,
}

impl StateLoader {
    /// An empty loader.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty loader that keeps settled jobs out of memory: the state it makes must be
    /// given the archive the rows came from ([`State::set_archive`]).
    pub fn evicting() -> Self {
        Self {
            evicting: true,
            ..Self::default()
        }
    }

    /// Takes one row.
    pub fn add(&mut self, row: Row) {
        let data = &mut self.data;
        match row {
            Row::Marker(..) | Row::Seq(..) => {}
            // Evicting, idempotency keys stay in the archive too.
            Row::JobKey(..) if self.evicting => {}
            // Evicting, entries stay in the archive; the account counts them.
            Row::Entry(_) if self.evicting => {}
            Row::Job(job) => {
                data.jobs.insert(job.id.clone(), job);
            }
            Row::Node(node) => {
                data.nodes.insert(node.id.clone(), node);
            }
            Row::Key(key) => {
                data.keys.insert(key.info.id.clone(), key);
            }
            Row::Account(business, totals) => {
                self.totals.insert(business, totals);
            }
            Row::Entry(entry) => {
                self.entries
                    .entry(entry.business.clone())
                    .or_default()
                    .insert(entry.seq, entry);
            }
            Row::Schedule(schedule) => {
                data.schedules.insert(schedule.id.clone(), schedule);
            }
            Row::JobKey(key, job) => {
                data.job_idempotency.insert(key, job);
            }
            Row::Idempotency(scope, key, record) => {
                data.idempotency
                    .entry(scope)
                    .or_default()
                    .insert(key, record);
            }
            Row::Meta(name, value) => match name.as_str() {
                META_APPLIED_INDEX => data.applied_index = value as Index,
                META_JOBS_COLLECTED_BEFORE => data.jobs_collected_before = value as Millis,
                counted if counted.starts_with("jobs.") => {
                    if let Some(state) = JobState::ALL
                        .into_iter()
                        .find(|s| job_count_key(*s) == counted)
                    {
                        self.counts.insert(state, value);
                    }
                }
                // Meta rows of the storage engine (Raft's applied log id, ...).
                _ => {}
            },
        }
    }

    /// The state the rows make, with its indexes built.
    pub fn finish(mut self) -> Result<State, LoadError> {
        for (business, totals) in std::mem::take(&mut self.totals) {
            let entries = self.entries.remove(&business).unwrap_or_default();
            let mut account = Account {
                available: totals.available,
                held: totals.held,
                ..Account::default()
            };
            for (expected, (seq, entry)) in (1..).zip(entries) {
                if seq != expected {
                    return Err(LoadError(format!(
                        "ledger of `{business}` has entry {seq} where {expected} belongs"
                    )));
                }
                account.by_key.insert(entry.idempotency_key.clone(), seq);
                account.entries.push_back(entry);
            }
            if self.evicting {
                account.evicted = totals.entries;
            } else if account.entries.len() as u64 != totals.entries {
                return Err(LoadError(format!(
                    "account `{business}` counts {} entries, {} are stored",
                    totals.entries,
                    account.entries.len()
                )));
            }
            self.data.accounts.insert(business, account);
        }
        if let Some(business) = self.entries.keys().next() {
            return Err(LoadError(format!(
                "ledger entries of `{business}` without its account"
            )));
        }
        let mut state = State {
            data: self.data,
            ..State::default()
        };
        state.rebuild_indexes();
        if self.evicting {
            state.evicted_on_load(&self.counts);
        }
        Ok(state)
    }
}
