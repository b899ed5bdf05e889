//! [`StateMachine`]: openraft's state machine on the replica's redb [`Store`] (the
//! domain [`State`]'s working set in memory, its tables on disk; the tables are the
//! snapshot); the log, vote and commit marker are [`crate::raft::log_store`]'s.
//!
//! The state machine's tables (`raft.*`, see `tanvrit_store::state_tables`) are written
//! by every `apply` with the rows it changed, its job-log chunks and the applied log id,
//! in one transaction that is not fsynced, but for one every [`DURABLE_EVERY`] and
//! the sync before a snapshot becomes current; a crash leaves the tables at an earlier
//! applied id, from which openraft re-applies the log (kept at least back to the
//! current snapshot). The log lives in a file of its own, so an apply never waits for
//! an append's fsync. A restart loads the tables; history is never replayed.
//!
//! The tables are the snapshot, so a replica keeps no second copy of them on disk.
//! Building a snapshot (every `snapshot_every` entries) makes the tables durable at
//! the applied id, after which openraft purges the log behind it. A snapshot is
//! written as a file only to be sent: when a lagging or new replica needs one, the
//! rows and job-log chunks of a read transaction (taken between two applies, so it is
//! exactly the applied state) stream into an unlinked temporary file in the sender's
//! replication task ([`SnapshotData`] writes it on first read), and the transfer
//! streams that file a chunk at a time. None of this touches the database's single
//! writer, which every log append needs (openraft's core awaits each append, so a
//! long write transaction there would hold up heartbeats and every answer to the
//! leader). An install checks the received file end to end, makes it the directory's
//! current file, streams it into the tables in bounded transactions behind an
//! `installing` mark, and deletes the file in the durable commit's wake; a crash
//! half-way leaves the mark and the file, and the next start installs the file again.
//! Memory holds a buffer and one batch of rows, besides the state itself.
//!
//! `apply` takes the state's write lock once and writes the rows and job-log chunks of
//! all the entries it is given in one redb transaction, however many entries that is.
//!
//! Every redb call blocks, so it runs under `spawn_blocking`.

use std::fmt::Debug;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use parking_lot::{Mutex, RwLock};
use tanvrit_api::Index;
use tanvrit_state::events::EntryEvents;
use tanvrit_state::State;
use tanvrit_store::raft::RAFT_GROUP;
use tanvrit_store::state_tables::{EncodedRow, ENGINE_META_PREFIX};
use tanvrit_store::{
    JobLogChunk, SnapshotDir, SnapshotItem, StateView, StateWrite, Store, StoreError, TableArchive,
};
use tokio::sync::watch;

use crate::batch_rows::take_batch_rows;
use crate::job_output::{chunk_of, collected_of};
use crate::raft::types::{
    Entry, LogId, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    WriteOutcome,
};
use crate::{EventLog, Reader, DEFAULT_EVENTS_RETAINED};

/// Runs a blocking store call off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AnyError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(AnyError::new(&err)),
        Err(err) => Err(AnyError::new(&err)),
    }
}

/// Snapshot counters, shared with the cluster's stats.
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounters {
    pub built: AtomicU64,
    pub installed: AtomicU64,
    /// Snapshot files written to send to a peer.
    pub written: AtomicU64,
    pub last_index: AtomicU64,
}

/// What the state machine has applied, besides the domain state.
#[derive(Clone, Debug, Default)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
}

/// The file a transfer from the leader is being written to, and its identity (device,
/// inode), so `install_snapshot` can tell that the data it is handed is that file.
type Receiving = (PathBuf, (u64, u64));

struct Shared {
    store: Store,
    snapshots: SnapshotDir,
    state: Arc<RwLock<State>>,
    applied: Mutex<Applied>,
    applied_index: watch::Sender<Index>,
    /// Fed with each batch's events before its index is published.
    events: EventLog,
    counters: Arc<SnapshotCounters>,
    receiving: Mutex<Option<Receiving>>,
}

/// The replicated state machine: the domain [`State`] in memory (shared with a
/// [`Reader`]), its tables and job-log chunks in the store, and snapshots as files
/// (`<data_dir>/snapshots/raft/`) only while they stream to or from a peer.
pub struct StateMachine {
    shared: Arc<Shared>,
    /// When an apply last made the tables durable.
    last_durable: Instant,
}

/// How often an apply's write is fsynced: bounds what a restart after a crash
/// re-applies from the log, and lets redb reuse the pages earlier writes freed. Rare
/// enough that its fsyncs do not compete with the log's (votes, appends) for the disk.
const DURABLE_EVERY: Duration = Duration::from_secs(10);

fn file_identity(file: &std::fs::File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = file.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Bytes (rows and job-log chunks) written per transaction while a snapshot is
/// installed: memory for the install stays bounded whatever the snapshot holds.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// Streams a checked snapshot file into the state tables and loads the state they then
/// hold. The tables are emptied and marked `installing` first; the mark goes in the
/// durable commit that ends the install, so a crash half-way is seen at the next start.
fn install_into_tables(
    store: &Store,
    path: &std::path::Path,
    applied: &Applied,
) -> Result<State, StoreError> {
    let marked = StateWrite {
        engine_meta: vec![engine_value(META_INSTALLING, &true)?],
        ..StateWrite::default()
    };
    store.clear_state(RAFT_GROUP)?;
    store.write_state(RAFT_GROUP, &marked, false)?;
    let mut rows: Vec<EncodedRow> = Vec::new();
    let mut chunks: Vec<JobLogChunk> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut whole = None;
    let flush = |rows: &mut Vec<EncodedRow>, chunks: &mut Vec<JobLogChunk>| {
        store.put_raw_rows(RAFT_GROUP, rows)?;
        store.write_job_log_chunks(chunks, false)?;
        rows.clear();
        chunks.clear();
        Ok::<(), StoreError>(())
    };
    tanvrit_store::snapshot_file::read_items_of(path, |item| {
        match item {
            SnapshotItem::Row(table, key, value) => {
                batch_bytes += key.len() + value.len();
                rows.push((table, key, Some(value)));
            }
            SnapshotItem::Chunk(chunk) => {
                batch_bytes += chunk.data.len();
                chunks.push(chunk);
            }
            // A file of an earlier version holds the whole state in one record.
            SnapshotItem::State(state) => whole = Some(*state),
        }
        if batch_bytes >= INSTALL_BATCH_BYTES {
            flush(&mut rows, &mut chunks)?;
            batch_bytes = 0;
        }
        Ok(())
    })?;
    flush(&mut rows, &mut chunks)?;
    let meta = engine_meta(applied)?;
    match whole {
        Some(state) => store.replace_state(RAFT_GROUP, &state, &meta)?,
        None => {
            let done = StateWrite {
                rows: vec![(
                    tanvrit_state::Table::Meta,
                    META_INSTALLING.to_string(),
                    None,
                )],
                engine_meta: meta,
                ..StateWrite::default()
            };
            store.write_state(RAFT_GROUP, &done, true)?;
        }
    }
    load_working_set(store)
}

/// The state the tables hold, settled jobs left on disk behind the tables' archive.
fn load_working_set(store: &Store) -> Result<State, StoreError> {
    let mut state = store.load_working_set(RAFT_GROUP)?.unwrap_or_default();
    state.set_archive(Arc::new(TableArchive::new(store.clone(), RAFT_GROUP)));
    Ok(state)
}

/// Writes `state` and every stored job-log chunk to a new snapshot file (not yet
/// current): a read transaction gives the chunks, so appends and applies carry on.
pub(crate) fn write_snapshot(
    store: &Store,
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta,
    state: &impl serde::Serialize,
) -> Result<tanvrit_store::SnapshotWriter, StoreError> {
    let index = meta.last_log_id.map_or(0, |id| id.index);
    let mut writer = snapshots.create(index, meta)?;
    writer.write_state(state)?;
    // The table may hold chunks of entries after `index` too; re-applying those entries
    // on the receiver rewrites them identically.
    store.for_each_job_log_chunk(|chunk| writer.write_chunk(&chunk))?;
    Ok(writer)
}

/// Engine meta rows in the state tables: the applied log id and membership, and the
/// mark of an install in progress.
const META_APPLIED: &str = "engine.raft_applied";
const META_MEMBERSHIP: &str = "engine.raft_membership";
const META_INSTALLING: &str = "engine.raft_installing";

fn engine_value<T: serde::Serialize>(
    name: &str,
    value: &T,
) -> Result<(String, Vec<u8>), StoreError> {
    debug_assert!(name.starts_with(ENGINE_META_PREFIX));
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        what: "raft meta",
        detail: e.to_string(),
    })?;
    Ok((name.to_string(), bytes))
}

fn engine_meta(applied: &Applied) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    Ok(vec![
        engine_value(META_APPLIED, &applied.last)?,
        engine_value(META_MEMBERSHIP, &applied.membership)?,
    ])
}

fn read_engine<T: serde::de::DeserializeOwned>(
    view: &StateView,
    name: &str,
) -> Result<Option<T>, StoreError> {
    view.meta_raw(name)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "raft meta",
                detail: e.to_string(),
            })
        })
        .transpose()
}

impl StateMachine {
    /// Loads the state tables of `store` (or starts empty). A snapshot file left in
    /// the directory is an install that did not finish (or, from an earlier version, the
    /// snapshot the tables were written behind): it is installed again if the tables are
    /// marked `installing` or hold no state, and deleted once they hold it. A snapshot
    /// record left in the database by an older version becomes such a file first.
    pub fn open(store: Store) -> Result<StateMachine, StoreError> {
        let snapshots = store.snapshot_dir(RAFT_GROUP)?;
        snapshots.sweep_unfinished()?;
        if snapshots.current::<SnapshotMeta>()?.is_none() {
            if let Some((meta, state)) = store.raft_load_legacy_snapshot::<SnapshotMeta>()? {
                write_snapshot(&store, &snapshots, &meta, &state)?.finish()?;
                store.raft_delete_legacy_snapshot()?;
                tracing::info!(
                    index = meta.last_log_id.map_or(0, |id| id.index),
                    "converted the stored snapshot record to a snapshot file"
                );
            }
        }
        let installing = store
            .state_view(RAFT_GROUP)?
            .meta_raw(META_INSTALLING)?
            .is_some();
        match snapshots.current::<SnapshotMeta>()? {
            Some(file) => {
                if installing || !store.has_state(RAFT_GROUP)? {
                    let applied = Applied {
                        last: file.meta.last_log_id,
                        membership: file.meta.last_membership.clone(),
                    };
                    install_into_tables(&store, &file.path, &applied)?;
                    tracing::info!(
                        index = file.index,
                        installing,
                        "rebuilt the state tables from the snapshot file"
                    );
                }
                // The tables hold it all, durably.
                store.sync()?;
                snapshots.remove(&file.path)?;
            }
            None if installing => {
                return Err(StoreError::Corrupt {
                    what: "raft state tables",
                    detail: "an install was interrupted and its snapshot file is gone".into(),
                })
            }
            None => {}
        }
        let indexed = store.ensure_job_indexes(RAFT_GROUP)?;
        if indexed > 0 {
            tracing::info!(jobs = indexed, "built the jobs-by-state index");
        }
        let view = store.state_view(RAFT_GROUP)?;
        let applied = Applied {
            last: read_engine(&view, META_APPLIED)?.flatten(),
            membership: read_engine(&view, META_MEMBERSHIP)?.unwrap_or_default(),
        };
        drop(view);
        let state = load_working_set(&store)?;
        let index = applied.last.map_or(0, |id| id.index);
        let counters = Arc::new(SnapshotCounters::default());
        counters.last_index.store(index, Ordering::Relaxed);
        let (applied_index, _) = watch::channel(index);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                store,
                snapshots,
                state: Arc::new(RwLock::new(state)),
                applied: Mutex::new(applied),
                applied_index,
                events: EventLog::new(index, DEFAULT_EVENTS_RETAINED),
                counters,
                receiving: Mutex::new(None),
            }),
            last_durable: Instant::now(),
        })
    }

    /// Local read access to what this state machine applied.
    pub fn reader(&self) -> Reader {
        Reader::new(
            self.shared.state.clone(),
            self.shared.store.clone(),
            self.shared.applied_index.subscribe(),
            self.shared.events.clone(),
        )
    }

    pub(crate) fn counters(&self) -> Arc<SnapshotCounters> {
        self.shared.counters.clone()
    }

    fn applied(&self) -> Applied {
        self.shared.applied.lock().clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.applied();
        Ok((applied.last, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<WriteOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut replies = Vec::new();
        let mut chunks = Vec::new();
        let mut collected = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut events = Vec::new();
        let (changes, rows) = {
            // One write lock for the batch; nothing in here awaits.
            let mut state = self.shared.state.write();
            for entry in entries {
                let index = entry.log_id.index;
                let mut entry_events = EntryEvents::new(index);
                match entry.payload {
                    EntryPayload::Blank => {
                        // A new leader's first entry: its term began (entries carry no
                        // time of their own, so the event's `at` is 0).
                        let leader = entry.log_id.leader_id;
                        entry_events.term_started(leader.term, leader.node_id, 0);
                        state.set_applied_index(index);
                        replies.push(WriteOutcome::default());
                    }
                    EntryPayload::Normal(request) => {
                        // Every command of the batch at the entry's index, in order; each
                        // sees the state its predecessors left.
                        let mut outcomes = Vec::with_capacity(request.commands.len());
                        for command in &request.commands {
                            let outcome = state.apply(index, command);
                            entry_events.command(command, &outcome, &state);
                            chunks.extend(chunk_of(command, &outcome));
                            collected.extend_from_slice(collected_of(&outcome));
                            outcomes.push(outcome);
                        }
                        // An empty batch (never proposed, but decodable) still moves the index.
                        state.set_applied_index(index);
                        replies.push(WriteOutcome(outcomes));
                    }
                    EntryPayload::Membership(m) => {
                        let voters: Vec<u64> = m.voter_ids().collect();
                        entry_events.membership_changed(&voters, 0);
                        state.set_applied_index(index);
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        replies.push(WriteOutcome::default());
                    }
                }
                events.extend(entry_events.finish());
                last = Some(entry.log_id);
            }
            // A failed archive read stops this replica (apply errs) rather than diverge.
            take_batch_rows(state)
        };
        let Some(last) = last else {
            return Ok(replies);
        };
        let applied = {
            let mut applied = self.shared.applied.lock();
            applied.last = Some(last);
            if let Some(m) = membership {
                applied.membership = m;
            }
            applied.clone()
        };
        // Before the index is published, so a reader waiting for it finds the output
        // (and no longer finds a collected job's, deleted after the batch's chunks).
        let store = self.shared.store.clone();
        let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
        blocking(move || {
            let write = StateWrite {
                rows: rows?,
                engine_meta: engine_meta(&applied)?,
                chunks: &chunks,
                collected: &collected,
            };
            store.write_state(RAFT_GROUP, &write, durable)
        })
        .await
        .map_err(|e| StorageIOError::apply(last, e))?;
        if durable {
            self.last_durable = Instant::now();
        }
        // Settled jobs leave memory once the tables hold them.
        self.shared.state.write().evict_settled(&changes);
        self.shared.events.publish(last.index, events);
        self.shared.applied_index.send_replace(last.index);
        slow("slow apply", started, replies.len());
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called between two applies: a read transaction now sees exactly the tables at
        // `applied.last` (the data of the snapshot, should anyone read it).
        SnapshotBuilder {
            shared: self.shared.clone(),
            view: Some(self.shared.store.state_view(RAFT_GROUP)),
            applied: self.applied(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let snapshots = self.shared.snapshots.clone();
        let (path, file) = blocking(move || {
            let (path, file) = snapshots.receive()?;
            let identity = file_identity(&file).map_err(|e| StoreError::Io(e.to_string()))?;
            Ok(((path, identity), file))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        // A transfer that was cut off leaves its file; only one arrives at a time.
        if let Some((stale, _)) = self.shared.receiving.lock().replace(path) {
            let _ = std::fs::remove_file(stale);
        }
        Ok(Box::new(SnapshotData::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let shared = self.shared.clone();
        let stored_meta = meta.clone();
        let mut file = snapshot
            .into_std()
            .await
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let receiving = self.shared.receiving.lock().take();
        let started = Instant::now();
        let bytes = blocking(move || {
            let io = |e: std::io::Error| StoreError::Io(e.to_string());
            // The data openraft hands over is the file the transfer wrote, unless it came
            // from elsewhere (a test, a local copy): then it is copied in first.
            let path = match receiving {
                Some((path, identity)) if file_identity(&file).map_err(io)? == identity => path,
                other => {
                    if let Some((stale, _)) = other {
                        let _ = std::fs::remove_file(stale);
                    }
                    let (path, mut copy) = shared.snapshots.receive()?;
                    file.seek(SeekFrom::Start(0)).map_err(io)?;
                    std::io::copy(&mut file, &mut copy).map_err(io)?;
                    path
                }
            };
            drop(file);
            // Checked end to end (and made durable) before the tables are touched.
            let received = shared
                .snapshots
                .read_received::<SnapshotMeta>(&path, |_| Ok(()))?;
            if received.meta.last_log_id != stored_meta.last_log_id {
                return Err(StoreError::Corrupt {
                    what: "snapshot file",
                    detail: format!(
                        "holds {:?}, the leader announced {:?}",
                        received.meta.last_log_id, stored_meta.last_log_id
                    ),
                });
            }
            let applied = Applied {
                last: stored_meta.last_log_id,
                membership: stored_meta.last_membership.clone(),
            };
            // Current first: once the tables are marked `installing`, the next start
            // needs this file to finish the install.
            let current = shared.snapshots.make_current(&received)?;
            // While the tables are rewritten, readers see them as they were (a read
            // transaction taken now), which is the state memory still holds.
            shared.store.set_rewriting(RAFT_GROUP, true)?;
            // A failure leaves the tables marked `installing` (readers keep the old
            // view); openraft stops the replica, and its next start installs again.
            let state = install_into_tables(&shared.store, &current, &applied)?;
            // A snapshot from a replica of an earlier version has no jobs-by-state rows.
            shared.store.ensure_job_indexes(RAFT_GROUP)?;
            // The install's last commit was durable: the tables are the snapshot now.
            shared.snapshots.remove(&current)?;
            {
                // Readers hold the state's read lock across memory and tables: under the
                // write lock both change at once, old memory with the old view, new with
                // the new tables.
                let mut memory = shared.state.write();
                shared.store.set_rewriting(RAFT_GROUP, false)?;
                *memory = state;
            }
            // Output of jobs the installed state no longer knows is not the leader's.
            let memory = shared.state.read();
            shared
                .store
                .retain_job_logs(|job| matches!(memory.find_job(job), Ok(Some(_))))?;
            drop(memory);
            Ok(received.bytes)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(signature, e))?;
        {
            let mut applied = self.shared.applied.lock();
            applied.last = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let counters = &self.shared.counters;
        counters.installed.fetch_add(1, Ordering::Relaxed);
        counters.last_index.store(index, Ordering::Relaxed);
        // What happened before the snapshot is not known here: streams resume after it.
        self.shared.events.reset(index);
        self.shared.applied_index.send_replace(index);
        tracing::info!(
            index,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Between two applies: the tables are exactly the applied state. They are made
        // durable first, since openraft may purge the log up to what it is handed here.
        let applied = self.applied();
        if applied.last.is_none() {
            return Ok(None);
        }
        let meta = snapshot_meta(&applied);
        let store = self.shared.store.clone();
        let view = blocking(move || {
            store.sync()?;
            store.state_view(RAFT_GROUP)
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(transfer_file(&self.shared, meta, view)),
        }))
    }
}

/// Openraft's description of a snapshot of the tables at `applied`. Its id is the log
/// id it ends at: the state at a log id is the same wherever and whenever it is taken.
fn snapshot_meta(applied: &Applied) -> SnapshotMeta {
    let last = applied.last;
    SnapshotMeta {
        last_log_id: last,
        last_membership: applied.membership.clone(),
        snapshot_id: last.map_or_else(
            || "0-0-0".to_string(),
            |id| {
                format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                )
            },
        ),
    }
}

/// The snapshot `view` sees, written on first read into an unlinked file that is gone
/// when the transfer drops it.
fn transfer_file(shared: &Arc<Shared>, meta: SnapshotMeta, view: StateView) -> SnapshotData {
    let snapshots = shared.snapshots.clone();
    let counters = shared.counters.clone();
    SnapshotData::lazy(Box::new(move || {
        let started = Instant::now();
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let (file, bytes) = write_snapshot_from(&snapshots, &meta, &view)
            .and_then(|writer| writer.finish_detached())
            .map_err(std::io::Error::other)?;
        drop(view);
        counters.written.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            index,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "wrote a snapshot to send"
        );
        Ok(file)
    }))
}

/// Logs a warning when a step that holds up Raft took longer than [`SLOW_MS`].
pub(super) fn slow(what: &'static str, started: Instant, items: usize) {
    let ms = started.elapsed().as_millis() as u64;
    if ms >= SLOW_MS {
        tracing::warn!(ms, items, "{what}");
    }
}

/// A storage step slower than this is logged (a fifth of the LAN profile's heartbeat).
const SLOW_MS: u64 = 20;

/// Makes a snapshot of the tables as they stand between two applies.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    view: Option<Result<StateView, StoreError>>,
    applied: Applied,
}

/// Writes the rows and job-log chunks `view` sees to a new snapshot file (not current).
fn write_snapshot_from(
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta,
    view: &StateView,
) -> Result<tanvrit_store::SnapshotWriter, StoreError> {
    let index = meta.last_log_id.map_or(0, |id| id.index);
    let mut writer = snapshots.create(index, meta)?;
    view.for_each_row(|table, key, value| {
        // The engine's own meta travels in the file's header.
        if key.starts_with(ENGINE_META_PREFIX) {
            return Ok(());
        }
        writer.write_row(table, key, value)
    })?;
    view.for_each_job_log_chunk(|chunk| writer.write_chunk(&chunk))?;
    Ok(writer)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// The tables are the snapshot: building one makes them durable at (at least) the
    /// applied id the builder was made at, so openraft may purge the log behind it.
    /// Nothing is copied; a transfer writes its own file (see [`transfer_file`]).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let meta = snapshot_meta(&self.applied);
        let store = self.shared.store.clone();
        let started = Instant::now();
        let view = self
            .view
            .take()
            .unwrap_or_else(|| Err(StoreError::Io("the snapshot view was used already".into())));
        let view = blocking(move || {
            let view = view?;
            store.sync()?;
            Ok(view)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let counters = &self.shared.counters;
        counters.built.fetch_add(1, Ordering::Relaxed);
        counters.last_index.fetch_max(index, Ordering::Relaxed);
        tracing::info!(
            index,
            bytes = 0u64,
            ms = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(transfer_file(&self.shared, meta, view)),
        })
    }
}
