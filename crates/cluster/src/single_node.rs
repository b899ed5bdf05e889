//! [`SingleNode`]: the reference [`ClusterService`] for one replica, built the way a Raft
//! replica works: a command is appended to the durable log first, then applied.
//!
//! One writer thread owns the write path. It takes every queued command (up to
//! [`MAX_BATCH`]), appends them to the log in one durable redb transaction (one fsync
//! for the whole group), then applies each under the state's write lock and writes what
//! they changed to the state tables (rows, output chunks of accepted `LogAppend`s,
//! deletion of collected jobs' output) in one transaction that is not fsynced: the next
//! durable commit makes it durable, and until then the log holds the batch. Only then
//! does it publish the applied index and answer the callers. A read therefore never
//! sees a write that is not durable, and a crash loses no acknowledged write: on open,
//! the tables are loaded and the log after their applied index is re-applied through
//! the same `apply`; history is never replayed.
//!
//! Every `snapshot_every` group commits the writer purges the log through the applied
//! index, in a durable transaction that first makes the tables' writes durable.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tanvrit_api::{Consistency, Index, JobId, ReplicaInfo, Role, Topology};
use tanvrit_state::events::events_of;
use tanvrit_state::{Command, Outcome, State};
use tanvrit_store::state_tables::encode_rows;
use tanvrit_store::{
    DiskFaults, JobLogChunk, StateWrite, Store, StoreError, StoreOptions, TableArchive,
    DEFAULT_RETENTION_BYTES_PER_JOB,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::batch_rows::take_batch_rows;
use crate::job_output::{chunk_of, collected_of};
use crate::{ClusterError, ClusterService, EventLog, Reader, Receipt, DEFAULT_EVENTS_RETAINED};

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
    /// Purge the log (the tables hold the state) every this many group commits (each carries
    /// one or more writes, as a Raft entry carries a batch). Default 10,000.
    pub snapshot_every: u64,
    /// Longest wait of a `min_index` read before `NotCaughtUp`. Default 5 s.
    pub min_index_wait: Duration,
    /// Job-log bytes kept per job; the oldest chunks go past it. Default 64 MiB.
    pub log_retention_bytes_per_job: u64,
    /// Tests only: a disk that fails writes or fsyncs while armed. Default none.
    pub disk_faults: Option<DiskFaults>,
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
            disk_faults: None,
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
    /// Durable (fsynced) commits: one per batch plus one per log purge.
    pub fsyncs: u64,
    /// Log purges (every `snapshot_every` group commits: the tables hold the state).
    pub log_purges: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    batches: AtomicU64,
    fsyncs: AtomicU64,
    log_purges: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WriteStats {
        WriteStats {
            writes: self.writes.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            log_purges: self.log_purges.load(Ordering::Relaxed),
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

/// The group of the single-node engine's state tables.
pub(crate) const GROUP: &str = tanvrit_store::snapshot::SINGLE_NODE_GROUP;

/// Loads the state tables (converting a snapshot of an earlier version into them first)
/// and re-applies the log after their applied index. Returns the state, the index the
/// tables held, and the last index in the log (which the state has applied).
pub(crate) fn recover(store: &Store) -> Result<(State, Index, Index), ClusterError> {
    if !store.has_state(GROUP).map_err(storage)? {
        migrate_snapshot(store)?;
    }
    let indexed = store.ensure_job_indexes(GROUP).map_err(storage)?;
    if indexed > 0 {
        tracing::info!(jobs = indexed, "built the jobs-by-state index");
    }
    let mut state = store
        .load_working_set(GROUP)
        .map_err(storage)?
        .unwrap_or_default();
    state.set_archive(Arc::new(TableArchive::new(store.clone(), GROUP)));
    let tables_index = state.applied_index();
    let last = store.last_log_index().map_err(storage)?;
    let mut next = tables_index + 1;
    while next <= last {
        let page = store
            .read_log(next, (next + REPLAY_PAGE).min(last + 1))
            .map_err(storage)?;
        if page.is_empty() {
            return Err(ClusterError::Storage(format!(
                "log entry {next} is missing (tables at {tables_index}, log ends at {last})"
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
        // Re-creates the rows and chunks a crash lost (their writes are not fsynced), and
        // deletes again the output of collected jobs a crash may have brought back.
        if let Some(fault) = state.take_archive_fault() {
            return Err(ClusterError::Storage(fault.to_string()));
        }
        let changes = state.take_changes();
        let rows = encode_rows(&state.changed_rows(&changes)).map_err(storage)?;
        let write = StateWrite {
            rows,
            chunks: &chunks,
            collected: &collected,
            ..StateWrite::default()
        };
        store.write_state(GROUP, &write, false).map_err(storage)?;
        state.evict_settled(&changes);
    }
    Ok((state, tables_index, last.max(tables_index)))
}

/// A directory written before the state lived in tables: its snapshot and log make the
/// state, which is written into the tables (durably) before the snapshot is removed.
fn migrate_snapshot(store: &Store) -> Result<(), ClusterError> {
    let Some((snapshot_index, mut state)) = store.load_snapshot().map_err(storage)? else {
        if store.last_log_index().map_err(storage)? > 0 {
            // Only a log: the tables start empty at index 0 and the replay does the rest.
            store
                .replace_state(GROUP, &State::new(), &[])
                .map_err(storage)?;
        }
        return Ok(());
    };
    state.set_applied_index(snapshot_index);
    store.replace_state(GROUP, &state, &[]).map_err(storage)?;
    store.delete_snapshot().map_err(storage)?;
    tracing::info!(
        index = snapshot_index,
        "moved the single-node snapshot of an earlier version into the state tables"
    );
    Ok(())
}

impl SingleNode {
    /// Opens the data directory, recovers (tables + the log after them), and starts the writer.
    pub fn open(config: SingleNodeConfig) -> Result<Arc<SingleNode>, ClusterError> {
        let options = StoreOptions {
            retention_bytes_per_job: config.log_retention_bytes_per_job,
            disk_faults: config.disk_faults.clone(),
            ..StoreOptions::default()
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
        let (state, tables_index, last) = recover(&store)?;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            tables_index,
            applied_index = last,
            "single node recovered"
        );
        let state = Arc::new(RwLock::new(state));
        let (applied_tx, applied_rx) = watch::channel(last);
        let events = EventLog::new(last, DEFAULT_EVENTS_RETAINED);
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            store: store.clone(),
            state: state.clone(),
            applied: applied_tx,
            events: events.clone(),
            counters: counters.clone(),
            next_index: last + 1,
            purge_every: config.snapshot_every.max(1),
            since_purge: 0,
            poisoned: None,
        };
        let handle = std::thread::Builder::new()
            .name("tanvrit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| ClusterError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(SingleNode {
            reader: Reader::new(state, store, applied_rx, events),
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
    /// Fed with each batch's events before its index is published.
    events: EventLog,
    counters: Arc<Counters>,
    next_index: Index,
    /// Purge the log every this many group commits.
    purge_every: u64,
    /// Group commits since the last purge.
    since_purge: u64,
    /// Set when a failed commit left the log or the tables behind the applied state:
    /// every later write fails until a restart recovers (tables + log replay).
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

        // 2. Then apply, all under one write lock, and encode the rows it changed under
        // the read lock it becomes (readers go on while the rows are encoded).
        let (outcomes, events, changes, rows) = {
            let mut state = self.state.write();
            let mut events = Vec::new();
            let outcomes: Vec<Outcome> = entries
                .iter()
                .map(|(index, command)| {
                    let outcome = state.apply(*index, command);
                    events.extend(events_of(*index, command, &outcome, &state));
                    outcome
                })
                .collect();
            let (changes, rows) = take_batch_rows(state);
            (outcomes, events, changes, rows)
        };

        // 3. Write the rows, the output chunks and the collected jobs' deletions in one
        // transaction before the index is published, so a reader that waits for the
        // index finds them. Not fsynced: the log holds the batch, and the next durable
        // commit makes the tables durable too.
        let chunks: Vec<JobLogChunk> = entries
            .iter()
            .zip(&outcomes)
            .filter_map(|((_, command), outcome)| chunk_of(command, outcome))
            .collect();
        let collected: Vec<JobId> = outcomes
            .iter()
            .flat_map(|outcome| collected_of(outcome).iter().cloned())
            .collect();
        let written = rows.and_then(|rows| {
            let write = StateWrite {
                rows,
                chunks: &chunks,
                collected: &collected,
                ..StateWrite::default()
            };
            self.store.write_state(GROUP, &write, false)
        });
        match written {
            // Settled jobs leave memory once the tables hold them.
            Ok(()) => {
                self.state.write().evict_settled(&changes);
            }
            Err(err) => {
                // The batch is in the durable log: a restart re-applies it after the
                // tables' index. Until then nothing more is written nor the log purged,
                // and the batch's callers learn that its outcome is not known.
                tracing::error!(error = %err, "writing the state tables failed; restart to recover");
                let reason = format!("the state tables could not be written ({err}); restart");
                self.poisoned = Some(reason.clone());
                for reply in replies {
                    let _ = reply.send(Err(ClusterError::Storage(reason.clone())));
                }
                return;
            }
        }

        // 4. Publish, then answer.
        let last = base + count - 1;
        self.events.publish(last, events);
        self.applied.send_replace(last);
        for (((index, _), outcome), reply) in entries.iter().zip(outcomes).zip(replies) {
            let _ = reply.send(Ok(Receipt {
                outcome,
                index: *index,
            }));
        }

        // A group commit is this engine's log entry, as a batch is a Raft replica's.
        self.since_purge += 1;
        if self.since_purge >= self.purge_every && self.poisoned.is_none() {
            self.purge_log(last);
        }
    }

    /// Drops the log through `index`: the tables hold its effect, and this durable
    /// transaction makes their non-durable writes durable first.
    fn purge_log(&mut self, index: Index) {
        self.since_purge = 0;
        match self.store.purge_log_through(index) {
            Ok(()) => {
                self.counters.log_purges.fetch_add(1, Ordering::Relaxed);
                self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(index, "log purged");
            }
            // The log is kept, so nothing is lost; the next purge tries again.
            Err(err) => tracing::warn!(index, error = %err, "log purge failed"),
        }
    }
}
