//! [`EventLog`]: a replica's recent events, in a bounded in-memory ring fed by the apply
//! path of either engine, read by any number of streams.
//!
//! Apply never waits for a stream: publishing appends to the ring under a short lock
//! and wakes the streams through a watch; each stream pulls what it has not read yet at
//! its own pace, and one whose position falls out of the ring learns it
//! ([`EventsError::Lagged`]) instead of holding memory or the writer back.
//!
//! What survives a restart: nothing of the ring itself. A replica holds the events of
//! the entries it applied since it started (or since it installed a snapshot): the
//! events are derived from applied commands, and a restarted replica does not replay
//! the history its tables already hold. A resume from before that floor is answered
//! `events_compacted` with the oldest index held, and the client re-lists, as a
//! Kubernetes watch does after a 410. A Raft replica restarted behind its log re-applies
//! the entries after its tables, so those events are derived again.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tanvrit_api::{Event, Index};
use tokio::sync::watch;

/// Events a replica keeps by default (the oldest whole indexes are dropped beyond it).
/// Job events carry the job, so this bounds memory to some tens of MB.
pub const DEFAULT_EVENTS_RETAINED: usize = 20_000;

/// Why a read of the event log gave no events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    /// The position asked for is older than the events this replica holds.
    #[error("events after index {asked} are no longer held here; the oldest index to resume from is {oldest}")]
    Compacted {
        /// The index asked to resume after.
        asked: Index,
        /// The oldest index a stream may resume after.
        oldest: Index,
    },
}

impl EventsError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            EventsError::Compacted { .. } => tanvrit_api::EVENTS_COMPACTED,
        }
    }
}

/// A stream's position: after `(index, seq)`; `seq: None` means after all of `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The last log index (partly) read.
    pub index: Index,
    /// The last `seq` read at `index`, or `None` for all of it.
    pub seq: Option<u32>,
}

impl Position {
    /// After every event of `index`.
    pub fn after(index: Index) -> Self {
        Self { index, seq: None }
    }

    fn passed(&self, event: &Event) -> bool {
        event.index < self.index
            || (event.index == self.index && self.seq.is_none_or(|seq| event.seq <= seq))
    }
}

/// What one read of the log gave.
#[derive(Debug, Default)]
pub struct EventBatch {
    /// The events after the position, oldest first (at most the limit asked).
    pub events: Vec<Arc<Event>>,
    /// True when more events follow the last one returned.
    pub more: bool,
    /// The last index published (events or not); all events through it are held.
    pub published: Index,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Every event after this index is held (events of this index and before may not be).
    floor: Index,
    /// The last index published.
    published: Index,
    capacity: usize,
}

/// A replica's recent events. Cheap to clone: clones share one ring.
#[derive(Clone)]
pub struct EventLog {
    ring: Arc<Mutex<Ring>>,
    head: watch::Sender<Index>,
}

impl EventLog {
    /// An empty log for a replica whose state is at `applied`, keeping `capacity` events.
    pub fn new(applied: Index, capacity: usize) -> Self {
        Self {
            ring: Arc::new(Mutex::new(Ring {
                events: VecDeque::new(),
                floor: applied,
                published: applied,
                capacity: capacity.max(1),
            })),
            head: watch::channel(applied).0,
        }
    }

    /// Appends the events of the entries applied through `through` (in order; none may
    /// be older than an earlier publish) and wakes the streams. Never blocks on them.
    pub fn publish(&self, through: Index, events: Vec<Event>) {
        {
            let mut ring = self.ring.lock();
            if through <= ring.published && events.is_empty() {
                return;
            }
            ring.events.extend(events.into_iter().map(Arc::new));
            ring.published = ring.published.max(through);
            // Drop whole indexes from the front: a partly held index could not be resumed.
            while ring.events.len() > ring.capacity {
                let Some(dropped) = ring.events.pop_front() else {
                    break;
                };
                ring.floor = dropped.index;
                while ring
                    .events
                    .front()
                    .is_some_and(|next| next.index == dropped.index)
                {
                    ring.events.pop_front();
                }
            }
        }
        self.head.send_replace(through);
    }

    /// Forgets every event: the state jumped to `index` (a snapshot was installed), and
    /// what happened before it is not known here.
    pub fn reset(&self, index: Index) {
        {
            let mut ring = self.ring.lock();
            ring.events.clear();
            ring.floor = index;
            ring.published = index;
        }
        self.head.send_replace(index);
    }

    /// The oldest index a stream may resume after.
    pub fn oldest(&self) -> Index {
        self.ring.lock().floor
    }

    /// The last index published.
    pub fn published(&self) -> Index {
        self.ring.lock().published
    }

    /// Up to `limit` events after `position`, oldest first.
    pub fn read(&self, position: Position, limit: usize) -> Result<EventBatch, EventsError> {
        let ring = self.ring.lock();
        if position.index < ring.floor {
            return Err(EventsError::Compacted {
                asked: position.index,
                oldest: ring.floor,
            });
        }
        let start = ring.events.partition_point(|event| position.passed(event));
        let end = start.saturating_add(limit).min(ring.events.len());
        Ok(EventBatch {
            events: ring.events.range(start..end).cloned().collect(),
            more: end < ring.events.len(),
            published: ring.published,
        })
    }

    /// How many held events come after `position` (how far behind a stream is).
    pub fn behind(&self, position: Position) -> usize {
        let ring = self.ring.lock();
        ring.events.len() - ring.events.partition_point(|event| position.passed(event))
    }

    /// A watch on the last published index, to wait for new events.
    pub fn subscribe(&self) -> watch::Receiver<Index> {
        self.head.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use tanvrit_api::Topic;

    use super::*;

    fn event(index: Index, seq: u32) -> Event {
        Event {
            index,
            seq,
            topic: Topic::Job,
            kind: "job_pending".into(),
            id: format!("job-{index}-{seq}"),
            state: None,
            business: None,
            job: None,
            node: None,
            at: 0,
            object: None,
        }
    }

    fn positions(batch: &EventBatch) -> Vec<(Index, u32)> {
        batch.events.iter().map(|e| (e.index, e.seq)).collect()
    }

    #[test]
    fn a_read_resumes_after_an_index_or_in_the_middle_of_one() {
        let log = EventLog::new(10, 100);
        log.publish(11, vec![event(11, 0), event(11, 1)]);
        log.publish(13, vec![event(13, 0)]);
        let all = log.read(Position::after(10), 100).unwrap();
        assert_eq!(positions(&all), vec![(11, 0), (11, 1), (13, 0)]);
        assert_eq!(all.published, 13);
        let mid = Position {
            index: 11,
            seq: Some(0),
        };
        assert_eq!(
            positions(&log.read(mid, 100).unwrap()),
            vec![(11, 1), (13, 0)]
        );
        assert_eq!(
            positions(&log.read(Position::after(11), 1).unwrap()),
            vec![(13, 0)]
        );
        assert!(log.read(Position::after(10), 1).unwrap().more);
    }

    #[test]
    fn a_resume_from_before_the_held_events_is_compacted_with_the_oldest_index() {
        let log = EventLog::new(5, 2);
        assert_eq!(
            log.read(Position::after(4), 10).unwrap_err(),
            EventsError::Compacted {
                asked: 4,
                oldest: 5
            }
        );
        log.publish(6, vec![event(6, 0), event(6, 1)]);
        log.publish(7, vec![event(7, 0)]);
        // Index 6 went whole: no stream can resume in the middle of it.
        assert_eq!(log.oldest(), 6);
        assert!(log.read(Position::after(5), 10).is_err());
        assert_eq!(
            positions(&log.read(Position::after(6), 10).unwrap()),
            vec![(7, 0)]
        );
    }

    #[test]
    fn a_reset_forgets_everything_before_the_installed_index() {
        let log = EventLog::new(0, 10);
        log.publish(1, vec![event(1, 0)]);
        log.reset(50);
        assert!(log.read(Position::after(1), 10).is_err());
        assert!(log.read(Position::after(50), 10).unwrap().events.is_empty());
        assert_eq!(*log.subscribe().borrow(), 50);
    }
}
