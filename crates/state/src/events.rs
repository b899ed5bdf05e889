//! Events derived from applied commands: a pure function of (log index, command,
//! outcome, the state right after it), so every replica derives the same events at the
//! same `(index, seq)` and a stream can resume on any of them.
//!
//! Refused commands and repeated deliveries (`duplicate`, replayed idempotent writes)
//! change nothing and yield no event. Output chunks (`LogAppend`) yield none either:
//! they are followed through `jobs/{id}/logs`.

use tanvrit_api::{
    BusinessId, Event, EventObject, Index, Job, JobId, Millis, Node, NodeId, Schedule, ScheduleId,
    Topic,
};

use crate::{Command, Effect, Outcome, State};

/// Collects the events of one log index, numbering them in order.
#[derive(Debug)]
pub struct EntryEvents {
    index: Index,
    events: Vec<Event>,
}

impl EntryEvents {
    /// No events yet at `index`.
    pub fn new(index: Index) -> Self {
        Self {
            index,
            events: Vec::new(),
        }
    }

    /// Adds the events of one command applied at this index. `state` is the state right
    /// after it was applied (only jobs just placed are looked up there: a placement's
    /// effect names the jobs, not their business).
    pub fn command(&mut self, command: &Command, outcome: &Outcome, state: &State) {
        let Ok(effect) = outcome else { return };
        self.effect(command.payload(), effect, state);
    }

    /// Adds `cluster_term_started`: a new leader's first (blank) entry.
    pub fn term_started(&mut self, term: u64, leader: u64, at: Millis) {
        let mut event = self.event(Topic::Cluster, "cluster_term_started", term.to_string(), at);
        event.state = Some(format!("leader {leader}"));
        self.push(event);
    }

    /// Adds `cluster_membership_changed` with the voters' ids.
    pub fn membership_changed(&mut self, voters: &[u64], at: Millis) {
        let ids: Vec<String> = voters.iter().map(u64::to_string).collect();
        let mut event = self.event(Topic::Cluster, "cluster_membership_changed", "", at);
        event.state = Some(ids.join(","));
        self.push(event);
    }

    /// The events collected, in order.
    pub fn finish(self) -> Vec<Event> {
        self.events
    }

    fn effect(&mut self, command: &Command, effect: &Effect, state: &State) {
        let at = command.at();
        match (command, effect) {
            (
                _,
                Effect::Job {
                    duplicate: true, ..
                },
            ) => {}
            (Command::AttemptStarted { attempt, .. }, Effect::Job { job, .. })
            | (Command::AttemptFinished { attempt, .. }, Effect::Job { job, .. }) => {
                if let Some(found) = job.attempts.iter().find(|a| &a.id == attempt) {
                    let mut event = self.job_scoped(Topic::Attempt, job, at);
                    event.kind = format!("attempt_{}", found.state.as_str());
                    event.id = found.id.to_string();
                    event.state = Some(found.state.as_str().into());
                    event.node = Some(found.node.clone());
                    event.object = Some(EventObject::Attempt(Box::new(found.clone())));
                    self.push(event);
                }
                self.job(job, at);
            }
            (_, Effect::Job { job, .. }) => self.job(job, at),
            (Command::JobsAssign { placements, .. }, Effect::Placements { placed, .. }) => {
                for placement in placements.iter().filter(|p| placed.contains(&p.job)) {
                    let Some(job) = state.job(&placement.job) else {
                        continue;
                    };
                    if let Some(found) = job.attempts.iter().find(|a| a.id == placement.attempt) {
                        let mut event = self.job_scoped(Topic::Attempt, job, at);
                        event.kind = format!("attempt_{}", found.state.as_str());
                        event.id = found.id.to_string();
                        event.state = Some(found.state.as_str().into());
                        event.node = Some(placement.node.clone());
                        event.object = Some(EventObject::Attempt(Box::new(found.clone())));
                        self.push(event);
                    }
                    self.job(job, at);
                }
            }
            (
                Command::NodeLost { node: id, .. }
                | Command::NodeEvict { node: id, .. }
                | Command::NodeDelete { node: id, .. },
                Effect::Node { node },
            ) => {
                self.node(node, at);
                self.lost_on(id, state, at);
            }
            (_, Effect::Node { node }) => self.node(node, at),
            (Command::KeyCreate { .. }, Effect::Key { key })
            | (Command::KeyRevoke { .. }, Effect::Key { key })
            | (Command::KeyBind { .. }, Effect::Key { key }) => {
                let verb = match command {
                    Command::KeyCreate { .. } => "created",
                    Command::KeyRevoke { .. } => "revoked",
                    _ => "bound",
                };
                let mut event = self.event(Topic::Key, &format!("key_{verb}"), key.id.as_str(), at);
                event.state = Some(
                    if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                    .into(),
                );
                event.business = key.business.clone();
                event.node = key.node.clone();
                event.object = Some(EventObject::Key(Box::new(key.clone())));
                self.push(event);
            }
            (_, Effect::Key { .. }) => {}
            (
                _,
                Effect::Entry {
                    duplicate: true, ..
                },
            ) => {}
            (_, Effect::Entry { entry, .. }) => {
                let mut event =
                    self.event(Topic::Credit, "credit_entry_created", entry.id.as_str(), at);
                event.state = Some(entry.kind.as_str().into());
                event.business = Some(entry.business.clone());
                event.job = entry.job.clone();
                event.object = Some(EventObject::Entry(entry.clone()));
                self.push(event);
            }
            (Command::ScheduleCreate { .. }, Effect::Schedule { schedule }) => {
                self.schedule(schedule, "schedule_created", at)
            }
            (_, Effect::Schedule { schedule }) => self.schedule(schedule, "schedule_updated", at),
            (Command::ScheduleDelete { schedule, .. }, Effect::ScheduleDeleted) => {
                let mut event =
                    self.event(Topic::Schedule, "schedule_deleted", schedule.as_str(), at);
                event.state = Some("deleted".into());
                self.push(event);
            }
            (_, Effect::ScheduleDeleted) => {}
            (Command::ScheduleFire { schedule, .. }, fired @ Effect::Fired { .. }) => {
                self.fired(schedule, fired, at)
            }
            (Command::SchedulesFire { fires, .. }, Effect::FiredMany { fires: outcomes }) => {
                for (fire, outcome) in fires.iter().zip(outcomes) {
                    if let Ok(fired) = outcome {
                        self.fired(&fire.schedule, fired, at);
                    }
                }
            }
            (_, Effect::Fired { .. } | Effect::FiredMany { .. }) => {}
            (_, Effect::JobsCollected { jobs, .. }) => {
                for job in jobs {
                    let mut event = self.event(Topic::Job, "job_collected", job.as_str(), at);
                    event.state = Some("collected".into());
                    event.job = Some(job.clone());
                    self.push(event);
                }
            }
            (
                _,
                Effect::Placements { .. } | Effect::LogAppended { .. } | Effect::Replayed { .. },
            ) => {}
        }
    }

    /// The attempts a node's loss, eviction or forced deletion ended at this index, and
    /// their jobs (requeued or lost): the effect names the node only. Such jobs were
    /// active, so every replica holds them in memory; the map is ordered by id, so
    /// every replica derives them in the same order.
    fn lost_on(&mut self, node: &NodeId, state: &State, at: Millis) {
        let index = self.index;
        let ended: Vec<(Job, tanvrit_api::Attempt)> = state
            .all_jobs()
            .filter(|job| job.modify_index == index)
            .filter_map(|job| {
                let attempt = job.attempts.iter().rev().find(|a| {
                    &a.node == node
                        && a.state == tanvrit_api::AttemptState::Lost
                        && a.finished_at == Some(at)
                })?;
                Some((job.clone(), attempt.clone()))
            })
            .collect();
        for (job, attempt) in ended {
            let mut event = self.job_scoped(Topic::Attempt, &job, at);
            event.kind = "attempt_lost".into();
            event.id = attempt.id.to_string();
            event.state = Some("lost".into());
            event.node = Some(node.clone());
            event.object = Some(EventObject::Attempt(Box::new(attempt)));
            self.push(event);
            self.job(&job, at);
        }
    }

    fn fired(&mut self, schedule: &ScheduleId, fired: &Effect, at: Millis) {
        let Effect::Fired {
            job,
            skipped,
            duplicate: false,
        } = fired
        else {
            return;
        };
        let kind = if skipped.is_some() {
            "schedule_skipped"
        } else {
            "schedule_fired"
        };
        let mut event = self.event(Topic::Schedule, kind, schedule.as_str(), at);
        event.state = skipped.clone();
        if let Some(job) = job {
            event.business = Some(job.business.clone());
            event.job = Some(job.id.clone());
            self.push(event);
            self.job(job, at);
        } else {
            self.push(event);
        }
    }

    fn job(&mut self, job: &Job, at: Millis) {
        let mut event = self.job_scoped(Topic::Job, job, at);
        event.kind = format!("job_{}", job.state.as_str());
        event.id = job.id.to_string();
        event.state = Some(job.state.as_str().into());
        event.node = job.attempts.last().map(|a| a.node.clone());
        event.object = Some(EventObject::Job(Box::new(job.clone())));
        self.push(event);
    }

    fn node(&mut self, node: &Node, at: Millis) {
        let kind = format!("node_{}", node.state.as_str());
        let mut event = self.event(Topic::Node, &kind, node.id.as_str(), at);
        event.state = Some(node.state.as_str().into());
        event.node = Some(node.id.clone());
        event.object = Some(EventObject::Node(Box::new(node.clone())));
        self.push(event);
    }

    fn schedule(&mut self, schedule: &Schedule, kind: &str, at: Millis) {
        let mut event = self.event(Topic::Schedule, kind, schedule.id.as_str(), at);
        event.state = Some(
            if schedule.enabled {
                "enabled"
            } else {
                "disabled"
            }
            .into(),
        );
        event.business = Some(schedule.business.clone());
        event.object = Some(EventObject::Schedule(Box::new(schedule.clone())));
        self.push(event);
    }

    /// An event about `job` (its business and id filled in).
    fn job_scoped(&self, topic: Topic, job: &Job, at: Millis) -> Event {
        let mut event = self.event(topic, "", job.id.as_str(), at);
        event.business = Some(job.business.clone());
        event.job = Some(job.id.clone());
        event
    }

    fn event(&self, topic: Topic, kind: &str, id: impl Into<String>, at: Millis) -> Event {
        Event {
            index: self.index,
            seq: 0,
            topic,
            kind: kind.into(),
            id: id.into(),
            state: None,
            business: None,
            job: None,
            node: None,
            at,
            object: None,
        }
    }

    fn push(&mut self, mut event: Event) {
        event.seq = u32::try_from(self.events.len()).unwrap_or(u32::MAX);
        self.events.push(event);
    }
}

/// The events of one command applied alone at `index` (the single-node engine's case).
pub fn events_of(index: Index, command: &Command, outcome: &Outcome, state: &State) -> Vec<Event> {
    let mut events = EntryEvents::new(index);
    events.command(command, outcome, state);
    events.finish()
}

/// Which events a stream passes: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these topics (all when empty).
    pub topics: Vec<Topic>,
    /// Only this business's events.
    pub business: Option<BusinessId>,
    /// Only this job's events.
    pub job: Option<JobId>,
    /// Only events about this node.
    pub node: Option<NodeId>,
    /// A tenant's stream (a user key): only the topics a business owns (jobs, attempts,
    /// schedules, credits), and only events that name `business`. Events without a
    /// business never pass.
    pub tenant: bool,
}

/// The topics a tenant's stream may carry: nodes, keys and the cluster are operators'.
pub const TENANT_TOPICS: [Topic; 4] = [Topic::Job, Topic::Attempt, Topic::Schedule, Topic::Credit];

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        if self.tenant && (self.business.is_none() || !TENANT_TOPICS.contains(&event.topic)) {
            return false;
        }
        (self.topics.is_empty() || self.topics.contains(&event.topic))
            && self
                .business
                .as_ref()
                .is_none_or(|b| event.business.as_ref() == Some(b))
            && self
                .job
                .as_ref()
                .is_none_or(|j| event.job.as_ref() == Some(j))
            && self
                .node
                .as_ref()
                .is_none_or(|n| event.node.as_ref() == Some(n))
    }
}
