//! [`Agent`]: registers the node, heartbeats, long-polls its work, starts and stops
//! attempts, and shuts down cleanly.
//!
//! Three loops feed one owner. The heartbeat loop and the work loop talk to the control
//! plane and send what they learn as [`Event`]s; the main loop owns the table of
//! attempts (which it alone changes), starts their tasks and reaps them. So no lock
//! guards the table, and the heartbeat reads the running attempts from a `watch` the
//! main loop publishes.
//!
//! The heartbeat loop also keeps the agent's [`Lease`]: the main loop starts attempts
//! only while the node surely is not down, keeps them running through a silence shorter
//! than the control plane's `lost_after`, and stops every process when the lease runs
//! out (see [`crate::lease`]), so an agent cut off from the control plane has stopped its
//! work before the control plane retries that work on another node, and an outage of
//! the whole control plane shorter than `lost_after` stops nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tanvrit_client::api::{
    Assignment, AttemptId, AttemptOutcome, AttemptState, HeartbeatRequest, Index, JobId, Node,
    NodeId, WorkRequest, WorkResponse,
};
use tanvrit_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::attempt::{self, result_without_process, Work};
use crate::backoff::Backoff;
use crate::config::{load_or_create_node_id, AgentConfig};
use crate::isolation::{secure_data_dir, Isolation, IsolationMode};
use crate::lease::Lease;
use crate::process::{scratch_dir, RunSpec, StopReason, DRAIN_AFTER_EXIT};
use crate::registration::{needs_registration, node_unknown, register};
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
    /// Renewed by acknowledged heartbeats, revoked when the node must register again.
    pub lease: watch::Sender<Lease>,
    /// How attempts are kept apart.
    pub isolation: Arc<Isolation>,
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
    isolation: Arc<Isolation>,
}

impl Agent {
    /// Prepares an agent: checks the configuration, reads (or creates) the node id in
    /// `config.data_dir` (made mode 0700), and sets up the isolation asked for — failing
    /// with [`AgentError::Isolation`] when the host cannot give it. The node's labels
    /// gain [`crate::isolation::LABEL_ISOLATION`] (and `LABEL_CGROUP`) so jobs can
    /// require isolation. The client carries the endpoints and the agent key; give it at
    /// least one retry so a follower's 503 moves heartbeats on to another endpoint.
    pub fn new(client: Client, mut config: AgentConfig) -> Result<Self, AgentError> {
        config.check()?;
        secure_data_dir(&config.data_dir)?;
        let node = load_or_create_node_id(&config.data_dir)?;
        let isolation = Isolation::prepare(&config.isolation, &node, &config.data_dir)?;
        let isolation = crate::registration::with_devices(isolation, &mut config)?;
        if config.isolation.mode == IsolationMode::None {
            tracing::warn!(
                "isolation is off (--isolation none): jobs run as the agent's own user, with \
                 no memory, CPU or process limits, and can read the agent's data directory"
            );
        }
        config.labels.extend(isolation.labels());
        Ok(Self {
            client,
            config,
            node,
            isolation: Arc::new(isolation),
        })
    }

    /// How this agent isolates jobs: `cgroup v1`, `cgroup v2` or `none`.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
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
    /// While the control plane does not acknowledge its heartbeats it keeps its results
    /// in the spool, starts nothing new once four fifths of the node TTL have passed since
    /// the last acknowledged heartbeat was sent, and runs its attempts on until its lease
    /// runs out (`lost_after` less a fifth of the TTL after that send): then it stops them
    /// all, reports them `failed` (the control plane refuses that if it has declared them
    /// lost meanwhile) and starts nothing until a heartbeat is acknowledged again. When
    /// the control plane answers that the node is down (it was silent past the TTL), the
    /// agent registers again and keeps its attempts: the next heartbeat's answer names
    /// the ones that are no longer its own, and only those are stopped.
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
            lease: watch::Sender::new(Lease::default()),
            isolation: self.isolation,
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
            let lease_runs_out = main.lease_runs_out();
            tokio::select! {
                _ = &mut shutdown => break,
                Some(event) = events.recv() => match event {
                    Event::Work(work) => main.on_work(work),
                    Event::Stop(ids) => main.on_stop(&ids),
                },
                Some(joined) = main.tasks.join_next_with_id(), if !main.tasks.is_empty() => {
                    main.on_joined(joined);
                }
                Ok(()) = main.lease.changed() => main.on_lease(),
                _ = tokio::time::sleep_until(lease_runs_out.unwrap_or_else(Instant::now)),
                    if lease_runs_out.is_some() => main.on_lease(),
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
    lease: watch::Receiver<Lease>,
    /// Whether the main loop acts as the lease's holder: it last found the lease valid
    /// (and has not yet seen it run out).
    holds_lease: bool,
    /// Set when the lease ran out, for the log line when it comes back.
    lost_lease: bool,
    /// Attempts to start that arrived without enough lease: started once a heartbeat's
    /// acknowledgement grants it (if a newer work answer does not replace them first).
    held: Option<WorkResponse>,
}

impl MainLoop {
    fn new(shared: Arc<Shared>) -> Self {
        let (running_tx, running_rx) = watch::channel(Vec::new());
        let lease = shared.lease.subscribe();
        Self {
            shared,
            table: HashMap::new(),
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            done: HashMap::new(),
            running_tx,
            running_rx,
            lease,
            holds_lease: false,
            lost_lease: false,
            held: None,
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
        let lease = *self.lease.borrow();
        if !lease.is_current(work.index) {
            // Read before the node's latest registration: the control plane has declared
            // those attempts lost since, and may be running them elsewhere.
            tracing::debug!(
                index = work.index,
                "ignoring a work answer from before the node registered again"
            );
            return;
        }
        let may_start = self.holds_lease && lease.may_start(Instant::now());
        // The newest answer is the whole truth: what an older one held is replaced.
        self.held = None;
        // Answers at or past a completion's index no longer list that attempt.
        self.done.retain(|_, index| *index > work.index);
        for assignment in work.assignments {
            if self.done.contains_key(&assignment.attempt) {
                continue;
            }
            match (assignment.state, self.table.get(&assignment.attempt)) {
                (AttemptState::Cancelling, Some(slot)) => stop(slot, StopReason::Cancelled),
                (_, Some(_)) => {}
                (AttemptState::Assigned, None) if !may_start => {
                    tracing::debug!(attempt = %assignment.attempt, "not starting an attempt without enough lease; holding it until a heartbeat is acknowledged");
                    self.held
                        .get_or_insert_with(|| WorkResponse {
                            assignments: Vec::new(),
                            index: work.index,
                        })
                        .assignments
                        .push(assignment);
                }
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
            scratch_dir: scratch_dir(self.shared.isolation.work_root(), &assignment.attempt),
            job: assignment.job,
            attempt: assignment.attempt.clone(),
            spec: assignment.spec,
            stop_grace: config.stop_grace,
            isolation: self.shared.isolation.clone(),
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

    /// When the lease runs out, while the main loop holds it.
    fn lease_runs_out(&self) -> Option<Instant> {
        if self.holds_lease {
            self.lease.borrow().expires_at()
        } else {
            None
        }
    }

    /// Acts on the lease as it is now: stops every process once it ran out, and starts
    /// what was held once it is renewed with enough left ([`Lease::may_start`]).
    fn on_lease(&mut self) {
        let now = Instant::now();
        let lease = *self.lease.borrow_and_update();
        let valid = lease.is_valid(now);
        if self.holds_lease && !valid {
            self.holds_lease = false;
            self.lost_lease = true;
            let grace = lease.stop_grace(self.shared.config.stop_grace);
            let processes = self.table.len();
            tracing::warn!(
                silent_ms = lease.silent_for(now).map(|d| d.as_millis() as u64),
                attempts = processes,
                grace_ms = grace.as_millis() as u64,
                "no heartbeat acknowledged for the node's lease (lost_after): stopping every \
                 attempt and starting none until the control plane answers again"
            );
            for slot in self.table.values() {
                stop(slot, StopReason::LeaseExpired { grace });
            }
        } else if !self.holds_lease && valid {
            self.holds_lease = true;
            if std::mem::take(&mut self.lost_lease) {
                tracing::info!(
                    "the control plane acknowledges heartbeats again; taking work again"
                );
            }
        }
        if self.holds_lease && self.held.is_some() && lease.may_start(now) {
            if let Some(work) = self.held.take() {
                self.on_work(work);
            }
        }
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

/// Asks a process to stop, unless it was already asked; a lease stop also replaces any
/// other (its grace is shorter, and the process sticks to the first cause it was given).
fn stop(slot: &Slot, reason: StopReason) {
    slot.stop.send_if_modified(|current| {
        let replace = match (*current, reason) {
            (None, _) => true,
            (Some(StopReason::LeaseExpired { .. }), _) => false,
            (Some(_), StopReason::LeaseExpired { .. }) => true,
            (Some(_), _) => false,
        };
        if replace {
            *current = Some(reason);
        }
        replace
    });
}

/// Heartbeats at the interval the server asks for; renews the lease with each
/// acknowledged one (from its send, with the TTL the server tells); forwards `stop`
/// lists; revokes the lease and registers again when the node was declared down.
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
        // Taken before the call: every try the client makes is sent after it.
        let sent = Instant::now();
        match shared.client.heartbeat_node(&shared.node, request).await {
            Ok(response) => {
                shared.lease.send_modify(|lease| {
                    lease.renew(
                        sent,
                        Duration::from_millis(response.ttl_ms),
                        response.lost_after_ms.map(Duration::from_millis),
                    );
                });
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
                if node_unknown(&err) {
                    shared.lease.send_modify(Lease::revoke);
                }
                // Down or deleted: the heartbeat after the registration names the
                // attempts that are no longer the node's own (its `stop` list).
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
                if !shared.lease.borrow().is_current(work.index) {
                    // This replica has not applied the node's latest registration yet, so
                    // its answer may list attempts since declared lost. Ask again from the
                    // old index: waiting on this one would wait for the work to change.
                    tracing::debug!(
                        index = work.index,
                        "the work answer predates the node's registration; polling again"
                    );
                    tokio::time::sleep(config.backoff_base).await;
                    continue;
                }
                after_index = work.index;
                if events.send(Event::Work(work)).await.is_err() {
                    return;
                }
            }
            Err(err) if needs_registration(&err) => {
                tracing::warn!(error = %err, "the node is unknown; registering again");
                shared.lease.send_modify(Lease::revoke);
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
    use crate::registration::refused_for_good;
    use std::path::PathBuf;
    use tanvrit_client::api::JobSpec;
    use tanvrit_client::ClientConfig;
    use tanvrit_client::ClientError;

    /// A main loop with a real spool and real processes, and a client that reaches
    /// nobody: the tests play the heartbeat loop by renewing and revoking the lease.
    struct Rig {
        _dir: tempfile::TempDir,
        root: PathBuf,
        shared: Arc<Shared>,
        main: MainLoop,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut config = AgentConfig::new(root.join("agent"));
        // Far longer than any test: only the lease's own grace can end a stop in time.
        config.stop_grace = Duration::from_secs(600);
        let (spool, _) = Spool::open(&config.spool_dir(), 1 << 30).unwrap();
        let client = Client::new(ClientConfig {
            endpoints: vec!["http://127.0.0.1:9".into()],
            max_retries: 0,
            ..ClientConfig::default()
        })
        .unwrap();
        let shared = Arc::new(Shared {
            client,
            config,
            node: NodeId::from("node-test"),
            spool,
            lease: watch::Sender::new(Lease::default()),
            isolation: Arc::new(Isolation::none(root.join("work"))),
        });
        let main = MainLoop::new(shared.clone());
        Rig {
            _dir: dir,
            root,
            shared,
            main,
        }
    }

    impl Rig {
        /// A work answer at `index` assigning `attempt`, whose process ignores SIGTERM
        /// and writes its pid to `<root>/<attempt>.pid`.
        fn assign(&self, attempt: &str, index: Index) -> WorkResponse {
            let pid_file = self.pid_file(attempt);
            let spec = JobSpec {
                shell: Some(format!(
                    "trap '' TERM; echo $$ > {}; while :; do sleep 0.05; done",
                    pid_file.display()
                )),
                ..JobSpec::default()
            };
            WorkResponse {
                assignments: vec![Assignment {
                    job: JobId(format!("job-{attempt}")),
                    attempt: AttemptId::from(attempt),
                    spec,
                    state: AttemptState::Assigned,
                    log_offset: 0,
                }],
                index,
            }
        }

        fn pid_file(&self, attempt: &str) -> PathBuf {
            self.root.join(format!("{attempt}.pid"))
        }

        fn renew(&mut self, ttl: Duration) {
            self.shared
                .lease
                .send_modify(|lease| lease.renew(Instant::now(), ttl, None));
            self.main.on_lease();
        }

        fn started(&self, attempt: &str) -> bool {
            self.main.table.contains_key(&AttemptId::from(attempt))
        }

        /// Waits (bounded) for the attempt's process to write its pid.
        async fn pid(&self, attempt: &str) -> i32 {
            let path = self.pid_file(attempt);
            for _ in 0..600 {
                if let Some(pid) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{attempt} never started its process");
        }
    }

    /// True while `pid` is a live (not zombie) process.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
    }

    /// Waits (bounded far below the configured 600 s grace) for `pid` to be gone.
    async fn wait_gone(pid: i32) {
        for _ in 0..600 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pid {pid} is still alive");
    }

    #[tokio::test]
    async fn an_assignment_waits_for_the_lease_and_starts_once_a_heartbeat_is_acknowledged() {
        let mut rig = rig();
        rig.main.on_work(rig.assign("att-1", 5));
        assert!(!rig.started("att-1"), "started without a lease");
        assert!(!rig.pid_file("att-1").exists());

        // An acknowledgement that came back slowly: valid, but nearly over.
        let ttl = Duration::from_secs(60);
        let slow = Instant::now() - (ttl - crate::lease::margin(ttl) - Duration::from_secs(1));
        rig.shared
            .lease
            .send_modify(|lease| lease.renew(slow, ttl, None));
        rig.main.on_lease();
        assert!(rig.main.lease_runs_out().is_some(), "the lease is held");
        assert!(!rig.started("att-1"), "started with a second of lease left");

        rig.renew(Duration::from_secs(60));
        assert!(
            rig.started("att-1"),
            "the held assignment starts with the lease"
        );
        let pid = rig.pid("att-1").await;
        assert!(alive(pid));

        // A revoked lease (the node was declared down) stops it at once.
        rig.shared.lease.send_modify(Lease::revoke);
        rig.main.on_lease();
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn when_the_lease_runs_out_every_process_is_killed_and_nothing_new_starts() {
        let mut rig = rig();
        rig.renew(Duration::from_secs(1));
        rig.main.on_work(rig.assign("att-1", 5));
        let pid = rig.pid("att-1").await;

        // What the main loop's timer does: wake when the lease runs out.
        let runs_out = rig.main.lease_runs_out().expect("held");
        tokio::time::sleep_until(runs_out).await;
        rig.main.on_lease();
        assert_eq!(rig.main.lease_runs_out(), None, "no longer held");
        // It ignores SIGTERM: only the lease's grace (not the configured 600 s) kills it.
        wait_gone(pid).await;
        for _ in 0..600 {
            if rig.shared.spool.is_finished(&AttemptId::from("att-1")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            rig.shared.spool.is_finished(&AttemptId::from("att-1")),
            "its result is kept for delivery when contact returns"
        );

        rig.main.on_work(rig.assign("att-2", 6));
        assert!(!rig.started("att-2"), "started with an expired lease");
        assert!(!rig.pid_file("att-2").exists());

        rig.renew(Duration::from_secs(60));
        assert!(
            rig.started("att-2"),
            "resumes once heartbeats are acknowledged"
        );
        let pid = rig.pid("att-2").await;
        rig.shared.lease.send_modify(Lease::revoke);
        rig.main.on_lease();
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn a_work_answer_from_before_the_latest_registration_starts_nothing() {
        let mut rig = rig();
        rig.shared.lease.send_modify(|lease| lease.registered(10));
        rig.renew(Duration::from_secs(60));
        rig.main.on_work(rig.assign("att-old", 9));
        assert!(!rig.started("att-old"));
        assert!(rig.main.held.is_none(), "not kept for later either");
        rig.main.on_work(rig.assign("att-new", 10));
        assert!(rig.started("att-new"));
        let pid = rig.pid("att-new").await;
        rig.shared.lease.send_modify(Lease::revoke);
        rig.main.on_lease();
        wait_gone(pid).await;
    }

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
    fn down_or_unknown_nodes_register_again_but_only_an_unknown_one_gives_up_its_work() {
        assert!(needs_registration(&api(404, "not_found")));
        assert!(needs_registration(&api(409, "illegal_transition")));
        assert!(!needs_registration(&api(503, "no_leader")));
        assert!(node_unknown(&api(404, "not_found")));
        assert!(!node_unknown(&api(409, "illegal_transition")));
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
