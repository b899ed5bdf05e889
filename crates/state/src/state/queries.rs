//! The public read accessors over jobs, nodes, keys, ledgers and schedules.

use std::collections::BTreeMap;

use tanvrit_api::{
    BusinessId, Job, JobId, JobState, KeyId, Node, NodeId, NodeView, Resources, Schedule,
    ScheduleId,
};

use super::{Account, JobFilter, State, StoredKey};

impl State {
    /// One job in memory: every job, unless an archive takes the settled ones (then
    /// see [`State::find_job`]).
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
    /// Number of jobs per state (in memory and evicted to the archive).
    pub fn job_counts(&self) -> BTreeMap<JobState, u64> {
        let mut counts: BTreeMap<JobState, u64> = self
            .idx
            .by_state
            .iter()
            .map(|(state, set)| (*state, set.len() as u64))
            .collect();
        for (state, evicted) in &self.idx.evicted_counts {
            *counts.entry(*state).or_default() += evicted;
        }
        counts.retain(|_, count| *count > 0);
        counts
    }

    /// Total jobs (in memory and evicted to the archive).
    pub fn job_total(&self) -> usize {
        self.data.jobs.len() + self.idx.evicted_counts.values().sum::<u64>() as usize
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
}
