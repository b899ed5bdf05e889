//! Local reads: the replica's applied [`State`] behind a lock, its job logs on disk, and
//! a watch on the applied index for read-your-writes waits and long polls, and the
//! replica's recent events.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tanvrit_api::{AttemptId, Index, JobId};
use tanvrit_state::State;
use tanvrit_store::Store;
use tokio::sync::watch;

use crate::{ClusterError, EventLog};

/// A window of an attempt's output as stored on this replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogWindow {
    /// Offset of the first byte of `data` (later than asked if retention dropped the start).
    pub offset: u64,
    /// Raw bytes.
    pub data: Vec<u8>,
    /// Offset to read next.
    pub next_offset: u64,
}

/// Read access to one replica's applied state. Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    state: Arc<RwLock<State>>,
    store: Store,
    applied: watch::Receiver<Index>,
    events: EventLog,
}

impl Reader {
    /// Wraps a replica's state, its store, the watch its apply loop publishes to, and
    /// the event log that apply loop feeds.
    pub fn new(
        state: Arc<RwLock<State>>,
        store: Store,
        applied: watch::Receiver<Index>,
        events: EventLog,
    ) -> Self {
        Self {
            state,
            store,
            applied,
            events,
        }
    }

    /// The replica's recent events (see [`EventLog`]).
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Runs `f` on the applied state. Keep `f` short: it holds a read lock.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read())
    }

    /// The last applied index.
    pub fn applied_index(&self) -> Index {
        *self.applied.borrow()
    }

    /// Waits until this replica applied at least `index`, up to `timeout`.
    pub async fn wait_applied(
        &self,
        index: Index,
        timeout: Duration,
    ) -> Result<Index, ClusterError> {
        let mut rx = self.applied.clone();
        // Copy the index out of the watch guard inside this statement: the guard borrows
        // `rx` and must be gone before `rx` is.
        let waited = tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index))
            .await
            .map(|seen| seen.map(|applied| *applied));
        match waited {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(ClusterError::ShuttingDown),
            Err(_) => Err(ClusterError::NotCaughtUp {
                wanted: index,
                applied: self.applied_index(),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Waits until the applied index moves past `after`, or `timeout` passes (long polls).
    /// Returns the applied index either way.
    pub async fn wait_past(&self, after: Index, timeout: Duration) -> Index {
        let mut rx = self.applied.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|applied| *applied > after)).await;
        self.applied_index()
    }

    /// Reads up to `max_bytes` of an attempt's output from `offset`.
    pub fn job_log(
        &self,
        job: &JobId,
        attempt: &AttemptId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<LogWindow, ClusterError> {
        let read = self
            .store
            .read_job_log(job, attempt, offset, max_bytes)
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        Ok(LogWindow {
            offset: read.offset,
            next_offset: read.offset + read.data.len() as u64,
            data: read.data,
        })
    }

    /// The store behind this reader (for snapshots and diagnostics).
    pub fn store(&self) -> &Store {
        &self.store
    }
}
