//! [`SingleNode`]: the reference [`ClusterService`] for one replica, built the way a Raft
//! replica works: a command is appended to the durable log first, then applied.
//!
//! One writer thread owns the write path. It takes every queued command (up to
//! [`MAX_BATCH`]), appends them to the log in one durable redb transaction (one fsync
//! for the whole group), then applies each under the state's write lock, stores the
//! output chunks of accepted `LogAppend`s (and deletes the output of jobs a `JobsCollect`
//! removed), publishes the applied index and answers the callers. A read therefore never sees a write that is not durable, and a crash at any
//! point loses no acknowledged write: on open, the last snapshot is loaded and the log
//! after it is replayed through the same `apply`.
//!
//! Every `snapshot_every` group commits the writer clones the state (a read lock, so readers
//! carry on) and a helper thread streams it to a snapshot file (holding no database
//! lock, so log appends go on), then purges the log it covers in a durable
//! transaction that also makes earlier non-durable job-log writes durable.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tanvrit_api::{Consistency, Index, JobId, ReplicaInfo, Role, Topology};
use tanvrit_state::{Command, Outcome, State};
use tanvrit_store::{
    JobLogChunk, Store, StoreError, StoreOptions, DEFAULT_RETENTION_BYTES_PER_JOB,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::job_output::{chunk_of, collected_of};
use crate::{ClusterError, ClusterService, Reader, Receipt};

/// Most commands committed in one log transaction.
pub const MAX_BATCH: usize = 1024;
/// Writes waiting for the writer before `submit_write` itself waits (backpressure).
const QUEUE_CAPACITY: usize = 4096;
/// Log entries read per page while replaying at open.
const REPLAY_PAGE: u64 = 1024;
/// The meta key recording the cluster id a data directory was created for.
const META_CLUSTER_ID: &str = "cluster_id";

/// How a [`SingleNode`] is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleNodeConfig {
    /// The replica's data directory (the database is `<data_dir>/tanvrit.redb`).
    pub data_dir: PathBuf,
    /// This replica's name (`TANVRIT_REPLICA_ID`); it is also the leader id.
    pub replica_name: String,
    /// This replica's region (`TANVRIT_REPLICA_REGION`).
    pub region: String,
    /// The cluster id (`TANVRIT_CLUSTER_ID`).
    pub cluster_id: String,
    /// The address shown in the topology (the public API address).
    pub address: String,
    /// Take a snapshot (and purge the log) every this many group commits (each carries
    /// one or more writes, as a Raft entry carries a batch). Default 10,000.
    pub snapshot_every: u64,
    /// Longest wait of a `min_index` read before `NotCaughtUp`. Default 5 s.
    pub min_index_wait: Duration,
    /// Job-log bytes kept per job; the oldest chunks go past it. Default 64 MiB.
    pub log_retention_bytes_per_job: u64,
}

impl SingleNodeConfig {
    /// The defaults (DESIGN.md's), with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            replica_name: "replica-1".into(),
            region: "local".into(),
            cluster_id: "local".into(),
            address: "127.0.0.1:7070".into(),
            snapshot_every: 10_000,
            min_index_wait: Duration::from_secs(5),
            log_retention_bytes_per_job: DEFAULT_RETENTION_BYTES_PER_JOB,
        }
    }
}

impl Default for SingleNodeConfig {
    /// The defaults with `./tanvrit-data` as data directory.
    fn default() -> Self {
        Self::new("./tanvrit-data")
    }
}

/// Write-path counters since open (cheap to read; exported to Prometheus).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Commands committed to the log and applied (accepted or rejected).
    pub writes: u64,
    /// Log transactions committed (one per group of writes).
    pub batches: u64,
    /// Durable (fsynced) commits: one per batch plus one per snapshot.
    pub fsyncs: u64,
    /// Snapshots saved.
    pub snapshots: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
    snapshots: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WriteStats {
        WriteStats {
            writes: self.writes.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            snapshots: self.snapshots.load(Ordering::Relaxed),
        }
    }
}

struct WriteRequest {
    command: Command,
    reply: oneshot::Sender<Result<Receipt, ClusterError>>,
}

/// One replica that is its own leader; the redb log is the replicated log of one.
pub struct SingleNode {
    config: SingleNodeConfig,
    reader: Reader,
    counters: Arc<Counters>,
    /// `None` once shut down; cloned per write so the lock is never held across an await.
    sender: Mutex<Option<mpsc::Sender<WriteRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Always `true`: a single node is always its own leader. Kept so receivers never
    /// see the sender gone.
    leadership: watch::Sender<bool>,
}

fn storage(err: StoreError) -> ClusterError {
    ClusterError::Storage(err.to_string())
}

/// Loads the snapshot and replays the log after it. Returns the state and the last
/// index in the log (which the state has applied).
pub(crate) fn recover(store: &Store) -> Result<(State, Index, Index), ClusterError> {
    let (snapshot_index, mut state) = store
        .load_snapshot()
        .map_err(storage)?
        .unwrap_or_else(|| (0, State::new()));
    state.set_applied_index(snapshot_index);
    let last = store.last_log_index().map_err(storage)?;
    let mut next = snapshot_index + 1;
    while next <= last {
        let page = store
            .read_log(next, (next + REPLAY_PAGE).min(last + 1))
            .map_err(storage)?;
        if page.is_empty() {
            return Err(ClusterError::Storage(format!(
                "log entry {next} is missing (snapshot at {snapshot_index}, log ends at {last})"
            )));
        }
        let mut chunks = Vec::new();
        let mut collected = Vec::new();
        for (index, command) in &page {
            if *index != next {
                return Err(ClusterError::Storage(format!(
                    "log entry {next} is missing (found {index} after it)"
                )));
            }
            let outcome = state.apply(*index, command);
            chunks.extend(chunk_of(command, &outcome));
            collected.extend_from_slice(collected_of(&outcome));
            next += 1;
        }
        // Re-creates chunks a crash may have lost (their writes are not fsynced), and
        // deletes again the output of collected jobs a crash may have brought back.
        store
            .write_job_log_chunks(&chunks, false)
            .map_err(storage)?;
        store.delete_job_logs(&collected, false).map_err(storage)?;
    }
    Ok((state, snapshot_index, last.max(snapshot_index)))
}

impl SingleNode {
    /// Opens the data directory, recovers (snapshot + log replay), and starts the writer.
    pub fn open(config: SingleNodeConfig) -> Result<Arc<SingleNode>, ClusterError> {
        let options = StoreOptions {
            retention_bytes_per_job: config.log_retention_bytes_per_job,
        };
        let store = Store::open_with(&config.data_dir, options).map_err(storage)?;
        if store
            .meta_get(crate::job_output::META_MODE)
            .map_err(storage)?
            .as_deref()
            == Some(crate::job_output::MODE_RAFT)
        {
            // Its single-node tables stopped being current when it became a replica.
            return Err(ClusterError::Config(format!(
                "{} belongs to a Raft replica; start it with the Raft cluster",
                config.data_dir.display()
            )));
        }
        match store.meta_get(META_CLUSTER_ID).map_err(storage)? {
            None => store
                .meta_put(META_CLUSTER_ID, config.cluster_id.as_bytes())
                .map_err(storage)?,
            Some(stored) if stored != config.cluster_id.as_bytes() => tracing::warn!(
                stored = %String::from_utf8_lossy(&stored),
                configured = %config.cluster_id,
                "data directory was created for another cluster id"
            ),
            Some(_) => {}
        }
        store
            .snapshot_dir(tanvrit_store::snapshot::SINGLE_NODE_GROUP)
            .and_then(|dir| dir.sweep_unfinished())
            .map_err(storage)?;
        let (state, snapshot_index, last) = recover(&store)?;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            snapshot_index,
            applied_index = last,
            "single node recovered"
        );
        let state = Arc::new(RwLock::new(state));
        let (applied_tx, applied_rx) = watch::channel(last);
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            store: store.clone(),
            state: state.clone(),
            applied: applied_tx,
            counters: counters.clone(),
            next_index: last + 1,
            snapshot_every: config.snapshot_every.max(1),
            since_snapshot: last - snapshot_index,
            snapshot_task: None,
            snapshots_blocked: false,
            poisoned: None,
        };
        let handle = std::thread::Builder::new()
            .name("tanvrit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| ClusterError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(SingleNode {
            reader: Reader::new(state, store, applied_rx),
            config,
            counters,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            closed: AtomicBool::new(false),
            leadership: watch::channel(true).0,
        }))
    }

    /// Write-path counters since open.
    pub fn stats(&self) -> WriteStats {
        self.counters.snapshot()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SingleNodeConfig {
        &self.config
    }

    fn writer_gone(&self) -> ClusterError {
        if self.closed.load(Ordering::SeqCst) {
            ClusterError::ShuttingDown
        } else {
            ClusterError::Internal("the writer thread stopped".into())
        }
    }

    /// Closes the queue and takes the writer's handle; the writer drains what is queued.
    fn close(&self) -> Option<JoinHandle<()>> {
        self.closed.store(true, Ordering::SeqCst);
        drop(self.sender.lock().take());
        self.writer.lock().take()
    }
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        // Joining releases the database file, so the directory can be reopened at once.
        if let Some(handle) = self.close() {
            if handle.join().is_err() {
                tracing::error!("the writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl ClusterService for SingleNode {
    fn role(&self) -> Role {
        Role::Leader
    }

    fn leader_id(&self) -> Option<String> {
        Some(self.config.replica_name.clone())
    }

    fn topology(&self) -> Topology {
        let applied = self.reader.applied_index();
        Topology {
            cluster_id: self.config.cluster_id.clone(),
            mode: "single_node".into(),
            this_replica: self.config.replica_name.clone(),
            leader: Some(self.config.replica_name.clone()),
            replicas: vec![ReplicaInfo {
                id: 1,
                name: self.config.replica_name.clone(),
                region: self.config.region.clone(),
                address: self.config.address.clone(),
                api_address: Some(self.config.address.clone()),
                role: Role::Leader,
                term: 0,
                commit_index: applied,
                applied_index: applied,
                lag: Some(0),
                last_contact_ms: None,
                reachable: true,
            }],
            index: applied,
        }
    }

    /// Cancellation: once the command is queued, dropping this future does not withdraw
    /// it; it is committed and applied all the same (clients retry with idempotency keys).
    async fn submit_write(&self, command: Command) -> Result<Receipt, ClusterError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ClusterError::ShuttingDown);
        }
        let sender = self
            .sender
            .lock()
            .clone()
            .ok_or(ClusterError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(WriteRequest { command, reply })
            .await
            .map_err(|_| self.writer_gone())?;
        answer.await.map_err(|_| self.writer_gone())?
    }

    async fn read_barrier(&self, consistency: Consistency) -> Result<Index, ClusterError> {
        match consistency {
            // Every write is applied before it is acknowledged, and this replica is the
            // only one: its applied index already reflects every acknowledged write.
            Consistency::Stale | Consistency::Strict => Ok(self.reader.applied_index()),
            Consistency::MinIndex(index) => {
                self.reader
                    .wait_applied(index, self.config.min_index_wait)
                    .await
            }
        }
    }

    fn reader(&self) -> &Reader {
        &self.reader
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.subscribe()
    }

    async fn shutdown(&self) {
        let Some(handle) = self.close() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || handle.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the writer thread did not stop cleanly");
        }
    }
}

/// The write path's owner; lives on its own thread.
struct Writer {
    store: Store,
    state: Arc<RwLock<State>>,
    applied: watch::Sender<Index>,
    counters: Arc<Counters>,
    next_index: Index,
    snapshot_every: u64,
    /// Group commits since the last snapshot.
    since_snapshot: u64,
    snapshot_task: Option<JoinHandle<()>>,
    /// Set when job-log chunks could not be stored: the log entries that carry them
    /// must not be purged, so no snapshot is taken until a restart replays them.
    snapshots_blocked: bool,
    /// Set when a failed commit left the log in an unknown state: the applied state may
    /// no longer match the log, so every later write fails until a restart recovers.
    poisoned: Option<String>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(std::mem::take(&mut batch));
        }
        if let Some(task) = self.snapshot_task.take() {
            let _ = task.join();
        }
        tracing::debug!("writer stopped");
    }

    fn commit(&mut self, batch: Vec<WriteRequest>) {
        if let Some(reason) = &self.poisoned {
            for request in batch {
                let _ = request
                    .reply
                    .send(Err(ClusterError::Storage(reason.clone())));
            }
            return;
        }
        let base = self.next_index;
        let mut entries = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (request, index) in batch.into_iter().zip(base..) {
            entries.push((index, request.command));
            replies.push(request.reply);
        }

        // 1. Log first: one durable transaction for the whole group.
        if let Err(err) = self.store.append_log(&entries) {
            tracing::error!(error = %err, first_index = base, "log append failed");
            // The batch is refused; carry on only if the log provably did not move.
            match self.store.last_log_index() {
                Ok(last) if last + 1 == base => {}
                _ => {
                    self.poisoned = Some(format!(
                        "log state unknown after a failed commit ({err}); restart"
                    ));
                }
            }
            let error = ClusterError::Storage(err.to_string());
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        let count = entries.len() as u64;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(count, Ordering::Relaxed);
        self.next_index = base + count;

        // 2. Then apply, all under one write lock.
        let outcomes: Vec<Outcome> = {
            let mut state = self.state.write();
            entries
                .iter()
                .map(|(index, command)| state.apply(*index, command))
                .collect()
        };

        // 3. Materialise log chunks before the index is published, so a reader that
        // waits for the index also finds the bytes.
        let chunks: Vec<JobLogChunk> = entries
            .iter()
            .zip(&outcomes)
            .filter_map(|((_, command), outcome)| chunk_of(command, outcome))
            .collect();
        if let Err(err) = self.store.write_job_log_chunks(&chunks, false) {
            tracing::error!(error = %err, "storing job-log chunks failed; snapshots paused until restart");
            self.snapshots_blocked = true;
        }
        // Retention: collected jobs' output goes with them (after this batch's chunks,
        // which may belong to a job collected later in the batch).
        let collected: Vec<JobId> = outcomes
            .iter()
            .flat_map(|outcome| collected_of(outcome).iter().cloned())
            .collect();
        if let Err(err) = self.store.delete_job_logs(&collected, false) {
            tracing::error!(error = %err, "deleting collected jobs' output failed; snapshots paused until restart");
            self.snapshots_blocked = true;
        }

        // 4. Publish, then answer.
        let last = base + count - 1;
        self.applied.send_replace(last);
        for (((index, _), outcome), reply) in entries.iter().zip(outcomes).zip(replies) {
            let _ = reply.send(Ok(Receipt {
                outcome,
                index: *index,
            }));
        }

        // A group commit is this engine's log entry, as a batch is a Raft replica's: under
        // load one commit carries many writes, and counting writes instead made a busy
        // single node copy its whole state ten times as often as a Raft replica did.
        self.since_snapshot += 1;
        self.maybe_snapshot(last);
    }

    /// Starts a background snapshot at `index` when one is due and none is running.
    fn maybe_snapshot(&mut self, index: Index) {
        if self.since_snapshot < self.snapshot_every || self.snapshots_blocked {
            return;
        }
        if let Some(task) = &self.snapshot_task {
            if !task.is_finished() {
                return;
            }
        }
        if let Some(task) = self.snapshot_task.take() {
            let _ = task.join();
        }
        // Cloning takes a read lock only; readers go on, and the writer alone mutates, so
        // the copy is exactly the state at `index`. Serializing happens off this thread.
        let copy = self.state.read().image();
        self.since_snapshot = 0;
        let store = self.store.clone();
        let counters = self.counters.clone();
        let started = std::time::Instant::now();
        let spawned = std::thread::Builder::new()
            .name("tanvrit-snapshot".into())
            .spawn(move || match store.save_snapshot(index, &copy) {
                Ok(()) => {
                    counters.snapshots.fetch_add(1, Ordering::Relaxed);
                    counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                    // The same line as a Raft replica's; `tanvrit bench scale` reads it.
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(index, ms, "built a snapshot");
                }
                // The log is kept, so nothing is lost; the next one is tried later.
                Err(err) => tracing::warn!(index, error = %err, "snapshot failed"),
            });
        match spawned {
            Ok(task) => self.snapshot_task = Some(task),
            Err(err) => tracing::warn!(error = %err, "cannot start the snapshot thread"),
        }
    }
}
