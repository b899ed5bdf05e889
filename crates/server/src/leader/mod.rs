//! The leader-only loops: the scheduler, node liveness (with drain deadlines), cron and
//! retention.
//! They run on the replica that leads, and only while it does: a supervisor watches
//! [`ClusterService::leadership`], starts the loops when it turns `true` and aborts them
//! the moment it turns `false`.
//!
//! Every decision a loop makes is a `Command` proposed through `submit_write` with the
//! ids and times chosen here, so a loop that dies mid-way (leadership lost, process
//! killed) leaves nothing half done: a proposed command is applied whole or not at all,
//! and the next leader recomputes from the replicated state. Cron fires use job ids
//! derived from (schedule, due time), so two leaders firing the same tick create one job.
//!
//! # Layout
//! - this file: [`LeaderLoops`] (the handle) and the supervisor.
//! - [`liveness`]: [`Liveness`], last heartbeat per node (in memory, not replicated), and
//!   the loop that declares silent nodes lost and evicts drains past their deadline.
//! - `scheduler`: the loop that places pending jobs with `tanvrit_state::scheduler::plan`.
//! - `cron`: the loop that fires due schedules under their catch-up policy.
//! - `retention`: the loop that collects terminal jobs past `job_retention`.

mod cron;
pub mod liveness;
mod retention;
mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tanvrit_cluster::{ClusterError, ClusterService, Reader};
use tanvrit_state::{Command, Outcome};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::ServerConfig;
use crate::metrics::LeaderMetrics;

pub use liveness::Liveness;

/// How long a loop that panicked waits before it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What every leader loop shares.
pub(crate) struct LeaderContext {
    pub config: ServerConfig,
    pub cluster: Arc<dyn ClusterService>,
    pub liveness: Liveness,
    pub metrics: LeaderMetrics,
}

/// Why a loop could not get a command applied.
pub(crate) enum ProposeError {
    /// The replica is shutting down: the loop ends.
    ShuttingDown,
    /// Anything else (no leader, storage; logged here): the loop retries later.
    Failed,
}

impl LeaderContext {
    pub(crate) fn reader(&self) -> &Reader {
        self.cluster.reader()
    }

    /// Proposes a command; gives its outcome and log index.
    pub(crate) async fn propose(&self, command: Command) -> Result<(Outcome, u64), ProposeError> {
        let name = command.name();
        match self.cluster.submit_write(command).await {
            Ok(receipt) => Ok((receipt.outcome, receipt.index)),
            Err(ClusterError::ShuttingDown) => Err(ProposeError::ShuttingDown),
            Err(error) => {
                tracing::warn!(command = name, %error, "a leader loop's write failed");
                Err(ProposeError::Failed)
            }
        }
    }
}

/// The loops the supervisor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoopKind {
    Scheduler,
    Liveness,
    Cron,
    Retention,
}

impl LoopKind {
    const ALL: [LoopKind; 4] = [
        LoopKind::Scheduler,
        LoopKind::Liveness,
        LoopKind::Cron,
        LoopKind::Retention,
    ];

    fn name(self) -> &'static str {
        match self {
            LoopKind::Scheduler => "scheduler",
            LoopKind::Liveness => "liveness",
            LoopKind::Cron => "cron",
            LoopKind::Retention => "retention",
        }
    }

    /// Whether the configuration asks for this loop (retention 0 keeps every job).
    fn enabled(self, config: &ServerConfig) -> bool {
        match self {
            LoopKind::Retention => !config.job_retention.is_zero(),
            LoopKind::Cron => !config.schedules_paused,
            _ => true,
        }
    }

    /// Runs the loop; it returns only when the replica shuts down.
    async fn run(self, context: Arc<LeaderContext>, delay: Duration) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self {
            LoopKind::Scheduler => scheduler::run(&context).await,
            LoopKind::Liveness => liveness::run(&context).await,
            LoopKind::Cron => cron::run(&context).await,
            LoopKind::Retention => retention::run(&context).await,
        }
    }
}

/// The handle of the leader loops' supervisor. Dropping it aborts the loops; [`stop`]
/// also waits until they are gone.
///
/// [`stop`]: LeaderLoops::stop
pub struct LeaderLoops {
    supervisor: JoinHandle<()>,
    stop: watch::Sender<bool>,
    running: watch::Receiver<bool>,
}

impl LeaderLoops {
    /// True while the loops run (this replica leads).
    pub fn is_running(&self) -> bool {
        *self.running.borrow()
    }

    /// Waits until the loops run (`true`) or are stopped (`false`), up to `timeout`;
    /// returns whether they reached that.
    pub async fn wait_running(&self, running: bool, timeout: Duration) -> bool {
        let mut rx = self.running.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|now| *now == running)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Stops the loops and waits until none is left running.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if (&mut self.supervisor).await.is_err() {
            tracing::error!("the leader loops' supervisor panicked");
        }
    }
}

impl Drop for LeaderLoops {
    fn drop(&mut self) {
        // Aborting the supervisor drops its `JoinSet`, which aborts every loop.
        self.supervisor.abort();
    }
}

/// Starts the supervisor on the current tokio runtime.
pub(crate) fn spawn(context: LeaderContext) -> LeaderLoops {
    let (stop, stop_rx) = watch::channel(false);
    let (running_tx, running) = watch::channel(false);
    let leadership = context.cluster.leadership();
    let supervisor = tokio::spawn(supervise(
        Arc::new(context),
        leadership,
        stop_rx,
        running_tx,
    ));
    LeaderLoops {
        supervisor,
        stop,
        running,
    }
}

/// What ended a term of the loops.
enum TermEnd {
    /// Leadership moved away: wait for it to come back.
    LeadershipLost,
    /// Stop asked for, the cluster is gone, or it is shutting down: the supervisor ends.
    Finished,
}

async fn supervise(
    context: Arc<LeaderContext>,
    mut leadership: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    running: watch::Sender<bool>,
) {
    loop {
        tokio::select! {
            led = leadership.wait_for(|leader| *leader) => if led.is_err() { return },
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tracing::info!("this replica leads: leader loops starting");
        let mut loops = JoinSet::new();
        let mut kinds = HashMap::new();
        for kind in LoopKind::ALL
            .into_iter()
            .filter(|k| k.enabled(&context.config))
        {
            let task = loops.spawn(kind.run(context.clone(), Duration::ZERO));
            kinds.insert(task.id(), kind);
        }
        context.metrics.loops_running.set(loops.len() as i64);
        running.send_replace(true);
        let end = loop {
            tokio::select! {
                lost = leadership.wait_for(|leader| !*leader) => break match lost {
                    Ok(_) => TermEnd::LeadershipLost,
                    Err(_) => TermEnd::Finished,
                },
                _ = stop.wait_for(|stop| *stop) => break TermEnd::Finished,
                Some(ended) = loops.join_next_with_id() => match ended {
                    Err(error) if error.is_panic() => {
                        let kind = kinds.remove(&error.id());
                        tracing::error!(
                            leader_loop = kind.map_or("unknown", LoopKind::name),
                            "a leader loop panicked; starting it again"
                        );
                        if let Some(kind) = kind {
                            let task = loops.spawn(kind.run(context.clone(), RESTART_DELAY));
                            kinds.insert(task.id(), kind);
                        }
                    }
                    // A loop returns only when the replica shuts down.
                    _ => break TermEnd::Finished,
                },
            }
        };
        loops.abort_all();
        while loops.join_next().await.is_some() {}
        context.metrics.loops_running.set(0);
        running.send_replace(false);
        match end {
            TermEnd::LeadershipLost => tracing::info!("leadership lost: leader loops stopped"),
            TermEnd::Finished => return,
        }
    }
}
