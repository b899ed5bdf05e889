//! [`RaftStats`]: the numbers the server exports to Prometheus, as one snapshot struct,
//! and the lock-free counters and latency histograms behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tanvrit_api::Index;

use crate::raft::types::NodeId;

/// Upper bounds (seconds) of the latency histogram buckets; the last bucket is `+Inf`.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram in Prometheus' shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Bucket upper bounds in seconds ([`LATENCY_BUCKETS`]).
    pub bounds: Vec<f64>,
    /// Cumulative counts: `counts[i]` observations were `<= bounds[i]`; the last element
    /// (one past the bounds) counts every observation (`+Inf`).
    pub counts: Vec<u64>,
    /// Sum of every observation, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

/// Lock-free histogram recorder.
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencyHistogram {
        let mut counts = Vec::with_capacity(self.buckets.len());
        let mut total = 0;
        for bucket in &self.buckets {
            total += bucket.load(Ordering::Relaxed);
            counts.push(total);
        }
        LatencyHistogram {
            bounds: LATENCY_BUCKETS.to_vec(),
            counts,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: total,
        }
    }
}

/// Counters kept by the replica.
#[derive(Default)]
pub(crate) struct Counters {
    pub leader_changes: AtomicU64,
    pub elections_triggered: AtomicU64,
    pub writes: AtomicU64,
    pub writes_forwarded: AtomicU64,
    pub writes_failed: AtomicU64,
    pub write_entries: AtomicU64,
    pub write_entry_commands: AtomicU64,
    pub proposal_latency: Histogram,
    pub commit_latency: Histogram,
}

/// One replica's Raft numbers at a moment (exported as Prometheus metrics by the server).
#[derive(Clone, Debug, PartialEq)]
pub struct RaftStats {
    /// This replica's Raft id.
    pub node_id: NodeId,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Index,
    /// Commit index as this replica knows it.
    pub commit_index: Index,
    /// Applied index.
    pub applied_index: Index,
    /// The leader this replica follows (or is), if any.
    pub leader_id: Option<NodeId>,
    /// Whether this replica is the leader with a fresh quorum.
    pub is_leader: bool,
    /// New (term, leader) pairs this replica has seen since it started.
    pub leader_changes_total: u64,
    /// Elections the failure detector called.
    pub elections_triggered_total: u64,
    /// Writes submitted here that succeeded (locally or forwarded).
    pub writes_total: u64,
    /// Of those, forwarded to the leader.
    pub writes_forwarded_total: u64,
    /// Writes submitted here that failed (no leader, shutting down, storage).
    pub writes_failed_total: u64,
    /// Log entries of client writes this replica proposed as leader.
    pub write_entries_total: u64,
    /// Commands those entries carried (divided by `write_entries_total`: the batch size).
    pub write_entry_commands_total: u64,
    /// Submit-to-receipt latency of writes submitted here (forwarding included).
    pub proposal_latency: LatencyHistogram,
    /// Propose-to-applied latency of writes proposed by this replica as leader.
    pub commit_latency: LatencyHistogram,
    /// Snapshots this replica built (the tables made durable, the log purged behind).
    pub snapshots_built_total: u64,
    /// Snapshot files this replica wrote to send to a peer.
    pub snapshots_written_total: u64,
    /// Snapshots this replica installed from a leader.
    pub snapshots_installed_total: u64,
    /// Index of the latest snapshot (built or installed), 0 if none.
    pub snapshot_index: Index,
    /// Last purged log index, 0 if none.
    pub purged_index: Index,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Histogram;

    #[test]
    fn the_histogram_is_cumulative_with_an_infinite_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts.len(), s.bounds.len() + 1);
        assert_eq!(s.counts[0], 1, "<= 1 ms");
        assert_eq!(s.counts[5], 2, "<= 50 ms");
        assert_eq!(*s.counts.last().unwrap(), 3);
        assert!((s.sum_seconds - 60.0305).abs() < 1e-6);
    }
}
