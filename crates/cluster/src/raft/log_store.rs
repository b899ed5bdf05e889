//! [`LogStore`]: openraft's log storage on the replica's redb [`Store`] (log, vote,
//! committed, purged). Durability, in the order openraft relies on it:
//! - `append` commits the entries with fsync *before* it calls `LogFlushed`;
//! - `save_vote` and `purge`/`truncate` are durable before they return;
//! - `save_committed` only notes the value; it is written in the transaction of the next
//!   `append` (and, non-durably, when the log store is dropped). Losing it in a crash
//!   only means a restart re-applies fewer entries at once (the leader re-sends the
//!   commit index). openraft awaits `save_committed` before every apply, so a
//!   transaction of its own would sit on every write's path.
//!
//! The last [`RECENT_ENTRIES`] appended entries are also kept decoded in memory: openraft
//! reads each entry back to apply it and once per follower to replicate it, and serving
//! those reads from memory spares a redb read and a decode each.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use tanvrit_api::Index;
use tanvrit_store::Store;

use crate::raft::storage::{blocking, slow};
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";

/// How many of the last appended entries [`LogStore`] keeps decoded in memory (as many
/// as one AppendEntries message carries).
pub const RECENT_ENTRIES: usize = 256;

/// The Raft log, vote and commit marker of one replica.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    committed: Arc<AtomicU64>,
    marker: Arc<CommittedMarker>,
    /// The last appended entries, contiguous, ending at the log's end (or empty).
    recent: Arc<Mutex<VecDeque<Entry>>>,
}

/// The committed log id not yet written to the store.
struct CommittedMarker {
    store: Store,
    pending: Mutex<Option<Option<LogId>>>,
}

impl Drop for CommittedMarker {
    /// A clean close keeps the last committed id (not fsynced, like any other).
    fn drop(&mut self) {
        if let Some(committed) = self.pending.get_mut().take() {
            if let Err(err) = self.store.raft_put(KEY_COMMITTED, &committed, false) {
                tracing::warn!(error = %err, "could not save the committed log id");
            }
        }
    }
}

impl LogStore {
    /// The log storage of `store`.
    pub fn new(store: Store) -> Self {
        Self {
            marker: Arc::new(CommittedMarker {
                store: store.clone(),
                pending: Mutex::new(None),
            }),
            store,
            committed: Arc::new(AtomicU64::new(0)),
            recent: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// The entries `from..to` when memory holds all of them.
    fn recent_range(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let recent = self.recent.lock();
        let first = recent.front()?.log_id.index;
        let end = recent.back()?.log_id.index + 1;
        if from < first || to > end || from >= to {
            return None;
        }
        let skip = (from - first) as usize;
        Some(
            recent
                .iter()
                .skip(skip)
                .take((to - from) as usize)
                .cloned()
                .collect(),
        )
    }

    /// Remembers freshly appended (durable) entries.
    fn remember(&self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return;
        };
        let mut recent = self.recent.lock();
        if recent.back().is_some_and(|e| e.log_id.index + 1 != first) {
            // Not contiguous (openraft truncates before it overwrites, so this should not
            // happen): start over rather than serve a gap.
            recent.clear();
        }
        recent.extend(entries);
        while recent.len() > RECENT_ENTRIES {
            recent.pop_front();
        }
    }

    /// The last committed index this replica was told of (0 before the first).
    pub fn committed_index(&self) -> Index {
        self.committed.load(Ordering::Relaxed)
    }

    pub(crate) fn committed_handle(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = bounds(&range);
        if let Some(entries) = self.recent_range(from, to) {
            return Ok(entries);
        }
        let store = self.store.clone();
        let entries = blocking(move || store.raft_read::<Entry>(from, to))
            .await
            .map_err(StorageIOError::read_logs)?;
        Ok(entries.into_iter().map(|(_, entry)| entry).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let (purged, last) = blocking(move || {
            let purged = store.raft_get::<LogId>(tanvrit_store::raft::RAFT_KEY_PURGED)?;
            let last = store.raft_last::<Entry>()?.map(|(_, entry)| entry.log_id);
            Ok((purged, last))
        })
        .await
        .map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_log_id: last.or(purged),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (store, vote) = (self.store.clone(), *vote);
        blocking(move || store.raft_put(KEY_VOTE, &vote, true))
            .await
            .map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let store = self.store.clone();
        let vote = blocking(move || store.raft_get::<Vote>(KEY_VOTE))
            .await
            .map_err(StorageIOError::read_vote)?;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(log_id) = &committed {
            self.committed.fetch_max(log_id.index, Ordering::Relaxed);
        }
        // Written with the next append: see the module docs.
        let mut pending = self.marker.pending.lock();
        if pending.as_ref().is_none_or(|p| committed > *p) {
            *pending = Some(committed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(pending) = *self.marker.pending.lock() {
            return Ok(pending);
        }
        let store = self.store.clone();
        let committed = blocking(move || store.raft_get::<Option<LogId>>(KEY_COMMITTED))
            .await
            .map_err(StorageIOError::read)?
            .flatten();
        if let Some(log_id) = &committed {
            self.committed.fetch_max(log_id.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let count = entries.len();
        let store = self.store.clone();
        let committed = *self.marker.pending.lock();
        let result = blocking(move || {
            let refs: Vec<(u64, &Entry)> = entries.iter().map(|e| (e.log_id.index, e)).collect();
            let put = committed.as_ref().map(|c| (KEY_COMMITTED, c));
            store.raft_append_and_put(&refs, put)?;
            Ok(entries)
        })
        .await;
        match result {
            // The commit above fsynced: only now may openraft count the entries as flushed.
            Ok(entries) => {
                {
                    let mut pending = self.marker.pending.lock();
                    if *pending == committed {
                        *pending = None;
                    }
                }
                self.remember(entries);
                // openraft's core waits for this append: heartbeats and every answer to
                // the leader wait with it.
                slow("slow log append", started, count);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                Err(StorageIOError::write_logs(err).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut recent = self.recent.lock();
            while recent
                .back()
                .is_some_and(|e| e.log_id.index >= log_id.index)
            {
                recent.pop_back();
            }
        }
        let store = self.store.clone();
        blocking(move || store.raft_truncate_from(log_id.index))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut recent = self.recent.lock();
            while recent
                .front()
                .is_some_and(|e| e.log_id.index <= log_id.index)
            {
                recent.pop_front();
            }
        }
        let store = self.store.clone();
        blocking(move || store.raft_purge_through(log_id.index, &log_id))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}
