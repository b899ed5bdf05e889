//! [`Agent`]: registers the node, heartbeats, long-polls its work, starts and stops
//! attempts, and shuts down cleanly.
//!
//! Three loops feed one owner. The heartbeat loop and the work loop talk to the control
//! plane and send what they learn as [`Event`]s; the main loop owns the table of
//! attempts (which it alone changes), starts their tasks and reaps them. So no lock
//! guards the table, and the heartbeat reads the running attempts from a `watch` the
//! main loop publishes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tanvrit_client::api::{
    Assignment, AttemptId, AttemptOutcome, AttemptState, HeartbeatRequest, Index, JobId, Node,
    NodeId, NodeRegisterRequest, WorkRequest, WorkResponse,
};
use tanvrit_client::{Client, ClientError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::attempt::{self, result_without_process, Work};
use crate::backoff::Backoff;
use crate::config::{load_or_create_node_id, AgentConfig};
use crate::process::{scratch_dir, RunSpec, StopReason, DRAIN_AFTER_EXIT};
use crate::spool::Spool;
use crate::AgentError;

/// Reason recorded for an attempt whose process an earlier agent run lost.
pub const REASON_AGENT_RESTARTED: &str =
    "the agent restarted while the attempt ran; its process was lost";
/// Reason recorded for a running attempt this agent has no process for.
pub const REASON_NO_PROCESS: &str =
    "the agent has no process for this attempt (it was restarted or its data directory changed)";
/// Reason recorded for an attempt cancelled before this agent started it.
pub const REASON_CANCELLED_BEFORE_START: &str = "cancelled before the agent started it";

/// What every attempt task shares.
pub(crate) struct Shared {
    pub client: Client,
    pub config: AgentConfig,
    pub node: NodeId,
    pub spool: Spool,
}

/// What the control-plane loops tell the main loop.
enum Event {
    /// The node's active attempts.
    Work(WorkResponse),
    /// Attempts a heartbeat said to stop.
    Stop(Vec<AttemptId>),
}

/// An attempt the agent holds: a process, or a result still to deliver.
struct Slot {
    stop: watch::Sender<Option<StopReason>>,
}

/// A worker agent. [`Agent::run`] does the work.
pub struct Agent {
    client: Client,
    config: AgentConfig,
    node: NodeId,
}

impl Agent {
    /// Prepares an agent: checks the configuration and reads (or creates) the node id in
    /// `config.data_dir`. The client carries the endpoints and the agent key; give it at
    /// least one retry so a follower's 503 moves heartbeats on to another endpoint.
    pub fn new(client: Client, config: AgentConfig) -> Result<Self, AgentError> {
        config.check()?;
        let node = load_or_create_node_id(&config.data_dir)?;
        Ok(Self {
            client,
            config,
            node,
        })
    }

    /// The node id this agent registers.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// Runs until `shutdown` resolves: delivers what an earlier run left in the spool,
    /// registers (calling `on_registered` once), then heartbeats, polls and runs work.
    ///
    /// On shutdown it stops polling, stops every running process (SIGTERM, then SIGKILL
    /// after the grace period) and reports each as `failed` with reason `agent stopped`
    /// (the control plane retries it per the job's `max_retries`), delivers for at most
    /// [`AgentConfig::shutdown_delivery`] more, and returns; what is still undelivered
    /// stays in the spool for the next start.
    ///
    /// Fails at once if the data directory is unusable or the first registration is
    /// refused for good (a key without the agent scope, invalid labels); while the
    /// control plane is unreachable it keeps retrying.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
        on_registered: impl FnOnce(&Node) + Send,
    ) -> Result<(), AgentError> {
        let spool_dir = self.config.spool_dir();
        let (spool, recovered) = Spool::open(&spool_dir, self.config.spool_limit_bytes)
            .map_err(|e| AgentError::io(&spool_dir, e))?;
        let shared = Arc::new(Shared {
            client: self.client,
            config: self.config,
            node: self.node,
            spool,
        });
        let mut main = MainLoop::new(shared.clone());
        for found in recovered {
            if !found.finished {
                shared.spool.finish(
                    &found.attempt,
                    result_without_process(AttemptOutcome::Failed, REASON_AGENT_RESTARTED),
                );
            }
            tracing::info!(attempt = %found.attempt, "delivering what an earlier run left in the spool");
            main.deliver_only(found.job, found.attempt);
        }

        tokio::pin!(shutdown);
        let node = tokio::select! {
            registered = register(&shared, true) => registered?,
            _ = &mut shutdown => {
                main.shut_down().await;
                return Ok(());
            }
        };
        on_registered(&node);

        let (events_tx, mut events) = mpsc::channel(16);
        let heartbeat = tokio::spawn(heartbeat_loop(
            shared.clone(),
            main.running_rx.clone(),
            events_tx.clone(),
        ));
        let poll = tokio::spawn(work_loop(shared.clone(), events_tx));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(event) = events.recv() => match event {
                    Event::Work(work) => main.on_work(work),
                    Event::Stop(ids) => main.on_stop(&ids),
                },
                Some(joined) = main.tasks.join_next_with_id(), if !main.tasks.is_empty() => {
                    main.on_joined(joined);
                }
            }
        }
        tracing::info!("shutting down: stopping running attempts");
        poll.abort();
        // Heartbeats go on while attempts stop, so the node is not declared down.
        main.shut_down().await;
        heartbeat.abort();
        Ok(())
    }
}

/// The owner of the attempt table.
struct MainLoop {
    shared: Arc<Shared>,
    table: HashMap<AttemptId, Slot>,
    tasks: JoinSet<AttemptId>,
    task_ids: HashMap<tokio::task::Id, AttemptId>,
    /// Attempts this agent finished with, and the index it knew of then: a work answer
    /// from before that index may still list them and must not start them again.
    done: HashMap<AttemptId, Index>,
    running_tx: watch::Sender<Vec<AttemptId>>,
    running_rx: watch::Receiver<Vec<AttemptId>>,
}

impl MainLoop {
    fn new(shared: Arc<Shared>) -> Self {
        let (running_tx, running_rx) = watch::channel(Vec::new());
        Self {
            shared,
            table: HashMap::new(),
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            done: HashMap::new(),
            running_tx,
            running_rx,
        }
    }

    fn spawn(&mut self, attempt: AttemptId, work: Work) {
        let (stop, stop_rx) = watch::channel(None);
        let handle = self
            .tasks
            .spawn(attempt::run(self.shared.clone(), work, stop_rx));
        self.task_ids.insert(handle.id(), attempt.clone());
        self.table.insert(attempt, Slot { stop });
        self.publish();
    }

    fn deliver_only(&mut self, job: JobId, attempt: AttemptId) {
        self.spawn(attempt.clone(), Work::Deliver { job, attempt });
    }

    fn publish(&self) {
        let mut running: Vec<AttemptId> = self.table.keys().cloned().collect();
        running.sort();
        self.running_tx.send_replace(running);
    }

    fn on_work(&mut self, work: WorkResponse) {
        // Answers at or past a completion's index no longer list that attempt.
        self.done.retain(|_, index| *index > work.index);
        for assignment in work.assignments {
            if self.done.contains_key(&assignment.attempt) {
                continue;
            }
            match (assignment.state, self.table.get(&assignment.attempt)) {
                (AttemptState::Cancelling, Some(slot)) => stop(slot, StopReason::Cancelled),
                (_, Some(_)) => {}
                (AttemptState::Assigned, None) => self.start(assignment),
                (AttemptState::Running, None) => self.record_without_process(
                    assignment,
                    AttemptOutcome::Failed,
                    REASON_NO_PROCESS,
                ),
                (AttemptState::Cancelling, None) => self.record_without_process(
                    assignment,
                    AttemptOutcome::Cancelled,
                    REASON_CANCELLED_BEFORE_START,
                ),
                (_, None) => {}
            }
        }
    }

    fn start(&mut self, assignment: Assignment) {
        let config = &self.shared.config;
        self.shared
            .spool
            .create(&assignment.job, &assignment.attempt, assignment.log_offset);
        let run = RunSpec {
            scratch_dir: scratch_dir(&config.work_dir(), &assignment.attempt),
            job: assignment.job,
            attempt: assignment.attempt.clone(),
            spec: assignment.spec,
            stop_grace: config.stop_grace,
        };
        self.spawn(assignment.attempt, Work::Run(Box::new(run)));
    }

    fn record_without_process(
        &mut self,
        assignment: Assignment,
        outcome: AttemptOutcome,
        reason: &str,
    ) {
        tracing::info!(attempt = %assignment.attempt, reason, "reporting an attempt without a process");
        let spool = &self.shared.spool;
        spool.create(&assignment.job, &assignment.attempt, assignment.log_offset);
        spool.finish(&assignment.attempt, result_without_process(outcome, reason));
        self.deliver_only(assignment.job, assignment.attempt);
    }

    fn on_stop(&mut self, ids: &[AttemptId]) {
        for id in ids {
            if let Some(slot) = self.table.get(id) {
                tracing::info!(attempt = %id, "the control plane says stop");
                stop(slot, StopReason::Cancelled);
            }
        }
    }

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, AttemptId), tokio::task::JoinError>) {
        let (task, attempt) = match joined {
            Ok((task, attempt)) => (task, Some(attempt)),
            Err(e) => {
                tracing::error!(error = %e, "an attempt task failed");
                (e.id(), None)
            }
        };
        let attempt = attempt.or_else(|| self.task_ids.get(&task).cloned());
        self.task_ids.remove(&task);
        if let Some(attempt) = attempt {
            self.table.remove(&attempt);
            self.done.insert(attempt, self.shared.client.last_index());
            self.publish();
        }
    }

    /// Stops every process, then lets deliveries finish for a bounded time.
    async fn shut_down(&mut self) {
        for slot in self.table.values() {
            stop(slot, StopReason::AgentStopped);
        }
        let config = &self.shared.config;
        let deadline = tokio::time::Instant::now()
            + config.stop_grace
            + DRAIN_AFTER_EXIT
            + config.shutdown_delivery;
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => self.on_joined(joined),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        attempts = self.tasks.len(),
                        "could not deliver everything before exiting; the rest stays in the spool"
                    );
                    break;
                }
            }
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Asks a process to stop, unless it was already asked.
fn stop(slot: &Slot, reason: StopReason) {
    slot.stop.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(reason);
            true
        } else {
            false
        }
    });
}

/// True for answers that mean the node must register again: unknown (404), or down or
/// deleted (409 `illegal_transition`).
fn needs_registration(err: &ClientError) -> bool {
    matches!(err, ClientError::Api { status: 404, .. })
        || matches!(err, ClientError::Api { code, .. } if code == "illegal_transition")
}

/// True for refusals that no retry can change (only on the first registration do they
/// end the agent: later, an operator may fix the key while the agent keeps its work).
fn refused_for_good(err: &ClientError) -> bool {
    match err {
        ClientError::Api { status, .. } => {
            (400..500).contains(status) && !matches!(status, 408 | 429)
        }
        ClientError::Config(_) => true,
        _ => false,
    }
}

/// Registers the node, retrying with backoff while the control plane is unreachable.
async fn register(shared: &Shared, first: bool) -> Result<Node, AgentError> {
    let config = &shared.config;
    let request = NodeRegisterRequest {
        id: shared.node.clone(),
        name: config.name.clone(),
        resources: config.resources,
        labels: config.labels.clone(),
    };
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    loop {
        match shared.client.register_node(request.clone()).await {
            Ok(response) => {
                tracing::info!(node = %response.node.id, "registered");
                return Ok(response.node);
            }
            Err(err) if first && refused_for_good(&err) => return Err(AgentError::Refused(err)),
            Err(err) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 || refused_for_good(&err) {
                    tracing::warn!(error = %err, "cannot register the node; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Heartbeats at the interval the server asks for; forwards `stop` lists; registers
/// again when the node was declared down.
async fn heartbeat_loop(
    shared: Arc<Shared>,
    running: watch::Receiver<Vec<AttemptId>>,
    events: mpsc::Sender<Event>,
) {
    let config = &shared.config;
    let mut interval = Duration::from_secs(1);
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    loop {
        let request = HeartbeatRequest {
            running: running.borrow().clone(),
        };
        match shared.client.heartbeat_node(&shared.node, request).await {
            Ok(response) => {
                if backoff.failures() > 0 {
                    tracing::info!("the control plane answers heartbeats again");
                }
                backoff.reset();
                interval = Duration::from_millis(response.interval_ms.max(50));
                if !response.stop.is_empty()
                    && events.send(Event::Stop(response.stop)).await.is_err()
                {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
            Err(err) if needs_registration(&err) => {
                tracing::warn!(error = %err, "the node is unknown, down or deleted; registering again");
                let _ = register(&shared, false).await;
            }
            Err(err) => {
                let delay = backoff.next_delay().min(interval.max(config.backoff_base));
                if backoff.failures() == 1 {
                    tracing::warn!(error = %err, "heartbeat failed; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Long-polls the node's work and forwards every answer.
async fn work_loop(shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    let config = &shared.config;
    let mut after_index = 0;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    loop {
        let request = WorkRequest {
            after_index,
            wait_ms: Some(config.poll_wait.as_millis() as u64),
        };
        match shared.client.poll_node_work(&shared.node, request).await {
            Ok(work) => {
                backoff.reset();
                after_index = work.index;
                if events.send(Event::Work(work)).await.is_err() {
                    return;
                }
            }
            Err(err) if needs_registration(&err) => {
                tracing::warn!(error = %err, "the node is unknown; registering again");
                let _ = register(&shared, false).await;
            }
            Err(err) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 {
                    tracing::warn!(error = %err, "work poll failed; retrying");
                } else {
                    tracing::debug!(error = %err, ?delay, "work poll failed again");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: None,
            leader: None,
        }
    }

    #[test]
    fn down_or_unknown_nodes_register_again() {
        assert!(needs_registration(&api(404, "not_found")));
        assert!(needs_registration(&api(409, "illegal_transition")));
        assert!(!needs_registration(&api(503, "no_leader")));
    }

    #[test]
    fn only_client_errors_refuse_a_first_registration_for_good() {
        assert!(refused_for_good(&api(401, "unauthorized")));
        assert!(refused_for_good(&api(403, "forbidden")));
        assert!(refused_for_good(&api(422, "invalid")));
        assert!(!refused_for_good(&api(429, "too_many_requests")));
        assert!(!refused_for_good(&api(503, "no_leader")));
    }
}
