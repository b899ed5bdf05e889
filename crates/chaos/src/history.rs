//! The recorded history (one [`Event`] per logical client operation, with the times it
//! was invoked and completed) and what the cluster holds at the end ([`ReplicaState`],
//! [`RunRecord`]): the plain data the checker judges.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tanvrit_api::{AttemptState, EntryKind, Index, Job, JobState, LedgerEntry, MicroCredits};

/// Microseconds since the run started (one monotonic clock for every client).
pub type Micros = u64;

/// How fresh a read asked to be (the API's `Consistency`, kept here so the history is
/// plain data the checker owns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    /// Whatever the replica asked has applied.
    Stale,
    /// The replica must have applied at least this index.
    MinIndex(Index),
    /// Linearizable.
    Strict,
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Submit a job carrying idempotency key `key` (retried with the same key until
    /// acknowledged or the client gives up).
    Submit {
        /// The job's idempotency key: the element of the set the workload builds.
        key: String,
    },
    /// Cancel the job submitted with `key`.
    Cancel {
        /// The job's idempotency key.
        key: String,
        /// The job id the submit's acknowledgement named.
        job: String,
    },
    /// Read the set of submitted jobs from one replica.
    Read {
        /// The consistency asked for.
        level: ReadLevel,
        /// The replica asked.
        replica: String,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A submit was acknowledged: the job and the log index it was applied at.
    Submitted {
        /// The job id.
        job: String,
        /// The write's log index.
        index: Index,
    },
    /// A cancel was acknowledged.
    Cancelled {
        /// The write's log index.
        index: Index,
    },
    /// A read answered: the idempotency keys of every job it saw, and the index it
    /// reflects.
    Read {
        /// Keys seen.
        keys: BTreeSet<String>,
        /// The answering replica's applied index.
        index: Index,
    },
    /// The operation failed. `definite` means it certainly changed nothing (a 4xx
    /// refusal, or every attempt met a refused connection or a 503 `no_leader`);
    /// otherwise it may or may not have taken effect (a timeout, a broken connection, a
    /// 503 `write_outcome_unknown` after the entry reached the log).
    Failed {
        /// Whether the failure proves the operation had no effect.
        definite: bool,
        /// The error's stable code.
        code: String,
    },
}

impl Outcome {
    /// True unless the operation failed.
    pub fn is_ok(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

/// One logical operation of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The client (a task of the workload) that ran it.
    pub client: u32,
    /// What was asked.
    pub op: Op,
    /// When the first attempt was sent.
    pub invoked: Micros,
    /// When the final answer arrived (or the client gave up).
    pub completed: Micros,
    /// How it ended.
    pub outcome: Outcome,
}

/// One request of the workload that did not succeed: any attempt of an operation,
/// whether the operation was then retried to success or not (a 503, a timeout, a
/// refused connection, a 4xx). Faults make these; a run without faults must have none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRequest {
    /// The client that sent it.
    pub client: u32,
    /// `submit`, `cancel` or `read`.
    pub op: String,
    /// When the failure was seen.
    pub at: Micros,
    /// The HTTP status, when a server answered.
    pub status: Option<u16>,
    /// The error's stable code (`no_leader`, `timeout`, ...).
    pub code: String,
}

/// Everything the workload's clients did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The events, in no particular order.
    pub events: Vec<Event>,
    /// Every request that failed, retried or not, in no particular order.
    #[serde(default)]
    pub failed_requests: Vec<FailedRequest>,
}

/// One attempt of a job as a replica stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt id.
    pub id: String,
    /// 1 for the first run.
    pub number: u32,
    /// Where it is.
    pub state: AttemptState,
    /// When it was placed (server clock, ms).
    pub assigned_at: i64,
    /// When it ended, if it did.
    pub finished_at: Option<i64>,
    /// Micro-credits charged for it.
    pub charged: MicroCredits,
}

/// One job as a replica stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// Its idempotency key.
    pub key: Option<String>,
    /// Its state.
    pub state: JobState,
    /// Its attempts, in order.
    pub attempts: Vec<AttemptRecord>,
}

impl From<&Job> for JobRecord {
    fn from(job: &Job) -> Self {
        JobRecord {
            id: job.id.to_string(),
            key: job.idempotency_key.clone(),
            state: job.state,
            attempts: job
                .attempts
                .iter()
                .map(|a| AttemptRecord {
                    id: a.id.to_string(),
                    number: a.number,
                    state: a.state,
                    assigned_at: a.assigned_at,
                    finished_at: a.finished_at,
                    charged: a.charged,
                })
                .collect(),
        }
    }
}

/// One ledger entry as a replica stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRecord {
    /// Position in the business's ledger, from 1.
    pub seq: u64,
    /// Its idempotency key (`charge:<attempt>` for a charge).
    pub key: String,
    /// What it records.
    pub kind: EntryKind,
    /// Its effect on the available balance.
    pub amount: MicroCredits,
    /// The available balance after it.
    pub balance_after: MicroCredits,
}

impl From<&LedgerEntry> for LedgerRecord {
    fn from(entry: &LedgerEntry) -> Self {
        LedgerRecord {
            seq: entry.seq,
            key: entry.idempotency_key.clone(),
            kind: entry.kind,
            amount: entry.amount,
            balance_after: entry.balance_after,
        }
    }
}

/// What one replica holds at the end of a run (read `stale` from that replica alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The replica's name.
    pub replica: String,
    /// The applied index the reads reflect.
    pub index: Index,
    /// Every job of the workload's business.
    pub jobs: Vec<JobRecord>,
    /// The business's ledger, by `seq`.
    pub ledger: Vec<LedgerRecord>,
    /// The available balance the replica reports.
    pub available: MicroCredits,
}

/// One run of a job's process as the job itself recorded it (each job appends a start
/// line, and a watcher outside its process group an end line once the last of its
/// processes is gone, to a file the harness reads): ground truth for "never two attempts
/// at once", independent of what the control plane believes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The job id (`TANVRIT_JOB_ID`).
    pub job: String,
    /// The attempt id (`TANVRIT_ATTEMPT_ID`).
    pub attempt: String,
    /// Start, in wall-clock nanoseconds.
    pub start_ns: u128,
    /// End (no earlier than the run really ended), if it was recorded; the checker takes
    /// a run without one as never ending.
    pub end_ns: Option<u128>,
}

/// Parses the run log: lines `start <job> <attempt> <ns>` and `end <job> <attempt> <ns>`.
/// Malformed lines (a torn write) are skipped.
pub fn parse_runs(text: &str) -> Vec<RunRecord> {
    let mut runs: Vec<RunRecord> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, job, attempt, ns] = parts.as_slice() else {
            continue;
        };
        let Ok(ns) = ns.parse::<u128>() else {
            continue;
        };
        match *what {
            "start" => runs.push(RunRecord {
                job: job.to_string(),
                attempt: attempt.to_string(),
                start_ns: ns,
                end_ns: None,
            }),
            "end" => {
                if let Some(run) = runs
                    .iter_mut()
                    .rev()
                    .find(|r| r.attempt == *attempt && r.end_ns.is_none())
                {
                    run.end_ns = Some(ns);
                }
            }
            _ => {}
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_runs_pairs_start_and_end_lines_and_skips_torn_ones() {
        let runs =
            parse_runs("start j1 a1 100\nstart j2 a2 150\nend j1 a1 200\ngarbage\nend j3 a3 x\n");
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].end_ns, Some(200));
        assert_eq!(runs[1].attempt, "a2");
        assert_eq!(runs[1].end_ns, None);
    }
}
