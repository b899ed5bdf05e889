//! The checker: judges a [`History`] and the replicas' final states against the
//! guarantees (acknowledged writes kept exactly once everywhere; `strict` reads
//! linearizable for the set model; `min_index` reads never older than asked; never two
//! attempts of a job at once; the ledger adds up). Pure: no I/O, no clock.
//!
//! The data model is a grow-only set of idempotency keys (a job, once submitted, is
//! listed forever), so linearizability of a `strict` read reduces to three sound checks
//! that need no search: it contains every write acknowledged before it was invoked; it
//! contains no write invoked after it completed; and it contains everything an earlier
//! (completed before it began) `strict` read contained.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use tanvrit_api::{EntryKind, Index, JobState};

use crate::history::{
    Event, FailedRequest, History, Micros, Op, Outcome, ReadLevel, ReplicaState, RunRecord,
};

/// Most violations of one kind kept in detail (the count is always exact).
const DETAIL_LIMIT: usize = 5;

/// What kind of guarantee was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// An acknowledged submit is missing on some replica at the end.
    LostWrite,
    /// Two jobs with one idempotency key on some replica.
    DuplicateWrite,
    /// A job whose key no client ever submitted.
    PhantomWrite,
    /// A submit that failed definitely (a 4xx, or only ever `no_leader` or a refused
    /// connection) was applied anyway.
    RefusedWriteApplied,
    /// A `strict` read missed a write acknowledged before the read was invoked.
    StaleStrictRead,
    /// A `strict` read missed something an earlier `strict` read had seen.
    NonMonotonicStrictRead,
    /// A read saw a write whose submit began after the read had completed.
    ReadFromTheFuture,
    /// A `min_index` read missed a write at or below the index it passed.
    StaleMinIndexRead,
    /// An acknowledged cancel did not leave its job cancelled.
    LostCancel,
    /// Replicas disagree at the end (jobs or ledger).
    Divergence,
    /// A job had two attempts active at once (by the records or by the processes).
    OverlappingAttempts,
    /// A process ran for an attempt the control plane never recorded.
    UnknownAttemptRan,
    /// The ledger does not add up: a running balance, a negative balance, or the
    /// reported balance differs from the sum of entries.
    LedgerMismatch,
    /// An attempt charged more than once, or charged a different amount than recorded.
    DoubleCharge,
    /// No fault was injected, yet the Raft term moved: a leader was elected again.
    BaselineElection,
    /// No fault was injected, yet a request failed (a 503, a timeout, any error), even
    /// one that a retry then got through.
    BaselineFailedRequest,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// One broken guarantee, with enough detail to find it in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which guarantee.
    pub kind: ViolationKind,
    /// What exactly.
    pub detail: String,
}

/// The checker's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Submits acknowledged to a client.
    pub acked: usize,
    /// Acknowledged submits missing on some replica (must be 0).
    pub lost: usize,
    /// Keys present more than once on some replica (must be 0).
    pub duplicated: usize,
    /// Submits that ended indeterminate (may or may not have been applied).
    pub indeterminate: usize,
    /// Submits that failed definitely (certainly not applied; must never appear).
    pub refused: usize,
    /// Reads checked, by level.
    pub reads_checked: BTreeMap<String, usize>,
    /// Physical runs checked.
    pub runs_checked: usize,
    /// Violations by kind (exact counts).
    pub counts: BTreeMap<ViolationKind, usize>,
    /// The first few violations of each kind.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// True when nothing was violated.
    pub fn ok(&self) -> bool {
        self.counts.is_empty()
    }

    /// Whether a violation of `kind` was found.
    pub fn has(&self, kind: ViolationKind) -> bool {
        self.counts.contains_key(&kind)
    }

    fn add(&mut self, kind: ViolationKind, detail: impl FnOnce() -> String) {
        let count = self.counts.entry(kind).or_default();
        *count += 1;
        if *count <= DETAIL_LIMIT {
            self.violations.push(Violation {
                kind,
                detail: detail(),
            });
        }
    }
}

/// A submit as the checker sees it.
struct SubmitInfo {
    invoked: Micros,
    /// Completion time and index, when acknowledged.
    acked: Option<(Micros, Index)>,
    definite_failure: bool,
}

/// Judges everything. `finals` holds one state per replica; `runs` the processes' own
/// records.
pub fn check(history: &History, finals: &[ReplicaState], runs: &[RunRecord]) -> Verdict {
    let mut verdict = Verdict::default();
    let submits = submits(&history.events);
    verdict.acked = submits.values().filter(|s| s.acked.is_some()).count();
    verdict.indeterminate = submits
        .values()
        .filter(|s| s.acked.is_none() && !s.definite_failure)
        .count();
    verdict.refused = submits
        .values()
        .filter(|s| s.acked.is_none() && s.definite_failure)
        .count();
    check_final_sets(&submits, finals, &mut verdict);
    check_reads(&history.events, &submits, &mut verdict);
    check_cancels(&history.events, finals, &mut verdict);
    check_divergence(finals, &mut verdict);
    check_attempts(finals, runs, &mut verdict);
    check_ledger(finals, &mut verdict);
    verdict
}

/// The no-fault baseline's guarantees, added to `verdict`: with nothing injected the
/// first leader keeps leading (no other term had a leader, `leader_terms`, and every
/// replica ends in that term, `final_terms`), and every request the workload sent
/// succeeded at its first attempt (`history.failed_requests` is empty).
pub fn check_baseline(
    verdict: &mut Verdict,
    history: &History,
    leader_terms: &BTreeSet<u64>,
    final_terms: &[(String, u64)],
) {
    if leader_terms.len() > 1 {
        verdict.add(ViolationKind::BaselineElection, || {
            format!("leaders seen in terms {leader_terms:?}")
        });
    }
    if let Some(first) = leader_terms.first() {
        for (replica, term) in final_terms {
            if term != first {
                verdict.add(ViolationKind::BaselineElection, || {
                    format!("{replica} ended in term {term}; the first leader's was {first}")
                });
            }
        }
    }
    let mut failed: Vec<&FailedRequest> = history.failed_requests.iter().collect();
    failed.sort_by_key(|f| f.at);
    for f in failed {
        verdict.add(ViolationKind::BaselineFailedRequest, || {
            format!(
                "client {} {} at {} ms: {}{}",
                f.client,
                f.op,
                f.at / 1000,
                f.status.map_or(String::new(), |s| format!("{s} ")),
                f.code
            )
        });
    }
}

fn submits(events: &[Event]) -> HashMap<&str, SubmitInfo> {
    let mut submits = HashMap::new();
    for event in events {
        let Op::Submit { key } = &event.op else {
            continue;
        };
        let info = submits.entry(key.as_str()).or_insert(SubmitInfo {
            invoked: event.invoked,
            acked: None,
            definite_failure: false,
        });
        info.invoked = info.invoked.min(event.invoked);
        match &event.outcome {
            Outcome::Submitted { index, .. } => info.acked = Some((event.completed, *index)),
            Outcome::Failed { definite: true, .. } => info.definite_failure = true,
            _ => {}
        }
    }
    submits
}

/// (1) every acknowledged write on every replica, exactly once; nothing unknown.
fn check_final_sets(
    submits: &HashMap<&str, SubmitInfo>,
    finals: &[ReplicaState],
    verdict: &mut Verdict,
) {
    let mut lost: BTreeSet<&str> = BTreeSet::new();
    let mut duplicated: BTreeSet<String> = BTreeSet::new();
    for state in finals {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for job in &state.jobs {
            let Some(key) = job.key.as_deref() else {
                verdict.add(ViolationKind::PhantomWrite, || {
                    format!("{}: job {} has no idempotency key", state.replica, job.id)
                });
                continue;
            };
            *counts.entry(key).or_default() += 1;
            match submits.get(key) {
                None => verdict.add(ViolationKind::PhantomWrite, || {
                    format!(
                        "{}: job {} has key {key} nobody submitted",
                        state.replica, job.id
                    )
                }),
                Some(info) if info.definite_failure && info.acked.is_none() => verdict
                    .add(ViolationKind::RefusedWriteApplied, || {
                        format!("{}: refused submit {key} is job {}", state.replica, job.id)
                    }),
                Some(_) => {}
            }
        }
        for (key, count) in &counts {
            if *count > 1 {
                duplicated.insert(key.to_string());
                verdict.add(ViolationKind::DuplicateWrite, || {
                    format!("{}: key {key} is {count} jobs", state.replica)
                });
            }
        }
        for (key, info) in submits {
            if info.acked.is_some() && !counts.contains_key(key) {
                lost.insert(key);
                verdict.add(ViolationKind::LostWrite, || {
                    let (at, index) = info.acked.unwrap_or_default();
                    format!(
                        "{}: acknowledged submit {key} (index {index}, at {at} us) is missing",
                        state.replica
                    )
                });
            }
        }
    }
    verdict.lost = lost.len();
    verdict.duplicated = duplicated.len();
}

/// (2) reads: `strict` linearizable for the set, `min_index` not older than asked, no
/// read from the future at any level.
fn check_reads(events: &[Event], submits: &HashMap<&str, SubmitInfo>, verdict: &mut Verdict) {
    // Acknowledged submits by acknowledgement time, and by index.
    let mut by_ack: Vec<(Micros, &str)> = submits
        .iter()
        .filter_map(|(key, s)| s.acked.map(|(at, _)| (at, *key)))
        .collect();
    by_ack.sort();
    let mut by_index: Vec<(Index, &str)> = submits
        .iter()
        .filter_map(|(key, s)| s.acked.map(|(_, index)| (index, *key)))
        .collect();
    by_index.sort();

    let reads: Vec<(&Event, ReadLevel, &str, &BTreeSet<String>, Index)> = events
        .iter()
        .filter_map(|e| match (&e.op, &e.outcome) {
            (Op::Read { level, replica }, Outcome::Read { keys, index }) => {
                Some((e, *level, replica.as_str(), keys, *index))
            }
            _ => None,
        })
        .collect();

    for (event, level, replica, keys, index) in &reads {
        let name = match level {
            ReadLevel::Stale => "stale",
            ReadLevel::MinIndex(_) => "min_index",
            ReadLevel::Strict => "strict",
        };
        *verdict.reads_checked.entry(name.into()).or_default() += 1;
        for key in keys.iter() {
            match submits.get(key.as_str()) {
                Some(info) if info.invoked > event.completed => {
                    verdict.add(ViolationKind::ReadFromTheFuture, || {
                        format!(
                            "{name} read on {replica} [{}..{}] us saw {key}, submitted at {} us",
                            event.invoked, event.completed, info.invoked
                        )
                    })
                }
                Some(_) => {}
                None => verdict.add(ViolationKind::PhantomWrite, || {
                    format!("{name} read on {replica} saw {key}, which nobody submitted")
                }),
            }
        }
        match level {
            ReadLevel::Strict => {
                let before = by_ack.partition_point(|(at, _)| *at < event.invoked);
                if let Some((at, key)) = by_ack[..before]
                    .iter()
                    .find(|(_, key)| !keys.contains(*key))
                {
                    verdict.add(ViolationKind::StaleStrictRead, || {
                        format!(
                            "strict read on {replica} [{}..{}] us (index {index}) missed {key}, \
                             acknowledged at {at} us",
                            event.invoked, event.completed
                        )
                    });
                }
            }
            ReadLevel::MinIndex(asked) => {
                let upto = by_index.partition_point(|(i, _)| i <= asked);
                let missed = by_index[..upto]
                    .iter()
                    .find(|(_, key)| !keys.contains(*key));
                if index < asked || missed.is_some() {
                    verdict.add(ViolationKind::StaleMinIndexRead, || match missed {
                        Some((at, key)) => format!(
                            "min_index {asked} read on {replica} (index {index}) missed {key} \
                             written at index {at}"
                        ),
                        None => {
                            format!("min_index {asked} read on {replica} answered at index {index}")
                        }
                    });
                }
            }
            ReadLevel::Stale => {}
        }
    }

    // Strict reads never go back: the union of what strict reads completed before this
    // one began is a subset of what this one saw.
    let mut strict: Vec<_> = reads.iter().filter(|r| r.1 == ReadLevel::Strict).collect();
    let mut by_completion = strict.clone();
    by_completion.sort_by_key(|r| r.0.completed);
    strict.sort_by_key(|r| r.0.invoked);
    let mut seen: HashMap<&str, Micros> = HashMap::new();
    let mut next = 0;
    for read in strict {
        while next < by_completion.len() && by_completion[next].0.completed < read.0.invoked {
            for key in by_completion[next].3.iter() {
                seen.entry(key.as_str())
                    .or_insert(by_completion[next].0.completed);
            }
            next += 1;
        }
        if let Some((key, at)) = seen.iter().find(|(key, _)| !read.3.contains(**key)) {
            verdict.add(ViolationKind::NonMonotonicStrictRead, || {
                format!(
                    "strict read on {} [{}..{}] us missed {key}, seen by a strict read that \
                     completed at {at} us",
                    read.2, read.0.invoked, read.0.completed
                )
            });
        }
    }
}

/// An acknowledged cancel leaves its job cancelled on every replica.
fn check_cancels(events: &[Event], finals: &[ReplicaState], verdict: &mut Verdict) {
    for event in events {
        let (Op::Cancel { key, job }, Outcome::Cancelled { index }) = (&event.op, &event.outcome)
        else {
            continue;
        };
        for state in finals {
            let found = state.jobs.iter().find(|j| &j.id == job);
            if let Some(record) = found {
                if record.state != JobState::Cancelled {
                    verdict.add(ViolationKind::LostCancel, || {
                        format!(
                            "{}: cancel of {key} acknowledged at index {index}, job is {}",
                            state.replica,
                            record.state.as_str()
                        )
                    });
                }
            }
        }
    }
}

/// Replicas hold the same jobs (id, key, state, attempts) and the same ledger.
fn check_divergence(finals: &[ReplicaState], verdict: &mut Verdict) {
    let Some(first) = finals.first() else {
        return;
    };
    let sorted = |s: &ReplicaState| {
        let mut jobs = s.jobs.clone();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        jobs
    };
    let reference = sorted(first);
    for other in &finals[1..] {
        let jobs = sorted(other);
        if jobs != reference {
            let differing = jobs
                .iter()
                .zip(&reference)
                .find(|(a, b)| a != b)
                .map(|(a, _)| a.id.clone())
                .unwrap_or_else(|| "(a different number of jobs)".into());
            verdict.add(ViolationKind::Divergence, || {
                format!(
                    "{} ({} jobs, index {}) and {} ({} jobs, index {}) differ at {differing}",
                    first.replica,
                    reference.len(),
                    first.index,
                    other.replica,
                    jobs.len(),
                    other.index
                )
            });
        }
        if other.ledger != first.ledger {
            verdict.add(ViolationKind::Divergence, || {
                format!(
                    "{} and {} hold different ledgers ({} and {} entries)",
                    first.replica,
                    other.replica,
                    first.ledger.len(),
                    other.ledger.len()
                )
            });
        }
    }
}

/// (3) never two attempts of a job at once: by the records (at most one active attempt,
/// each placed only after the previous one ended) and by the processes' own records
/// (no two attempts' runs overlap in time).
fn check_attempts(finals: &[ReplicaState], runs: &[RunRecord], verdict: &mut Verdict) {
    for state in finals {
        for job in &state.jobs {
            let active = job.attempts.iter().filter(|a| a.state.is_active()).count();
            if active > 1 {
                verdict.add(ViolationKind::OverlappingAttempts, || {
                    format!(
                        "{}: job {} has {active} active attempts",
                        state.replica, job.id
                    )
                });
            }
            for pair in job.attempts.windows(2) {
                let (earlier, later) = (&pair[0], &pair[1]);
                let ended_before = earlier
                    .finished_at
                    .is_some_and(|end| end <= later.assigned_at);
                if earlier.state.is_active() || !ended_before {
                    verdict.add(ViolationKind::OverlappingAttempts, || {
                        format!(
                            "{}: job {} placed attempt {} at {} ms while attempt {} was {:?} \
                             (ended {:?})",
                            state.replica,
                            job.id,
                            later.number,
                            later.assigned_at,
                            earlier.number,
                            earlier.state,
                            earlier.finished_at
                        )
                    });
                }
            }
        }
    }

    verdict.runs_checked = runs.len();
    let known: HashSet<(&str, &str)> = finals
        .iter()
        .flat_map(|s| {
            s.jobs.iter().flat_map(|j| {
                j.attempts
                    .iter()
                    .map(move |a| (j.id.as_str(), a.id.as_str()))
            })
        })
        .collect();
    let mut by_job: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
    for run in runs {
        if !finals.is_empty() && !known.contains(&(run.job.as_str(), run.attempt.as_str())) {
            verdict.add(ViolationKind::UnknownAttemptRan, || {
                format!(
                    "attempt {} of job {} ran but is not recorded",
                    run.attempt, run.job
                )
            });
        }
        by_job.entry(run.job.as_str()).or_default().push(run);
    }
    for (job, mut job_runs) in by_job {
        job_runs.sort_by_key(|r| r.start_ns);
        for (i, run) in job_runs.iter().enumerate() {
            let end = run.end_ns.unwrap_or(u128::MAX);
            if let Some(other) = job_runs[i + 1..]
                .iter()
                .find(|o| o.attempt != run.attempt && o.start_ns < end)
            {
                verdict.add(ViolationKind::OverlappingAttempts, || {
                    format!(
                        "job {job}: attempt {} ran from {} ns to {:?} while attempt {} started \
                         at {} ns",
                        run.attempt, run.start_ns, run.end_ns, other.attempt, other.start_ns
                    )
                });
            }
        }
    }
}

/// (4) the ledger: every running balance is the sum so far and never negative; the
/// reported balance is the sum of entries; keys are unique; every attempt is charged at
/// most once, and what its job record says it was charged.
fn check_ledger(finals: &[ReplicaState], verdict: &mut Verdict) {
    for state in finals {
        let mut sum: i64 = 0;
        let mut keys: HashSet<&str> = HashSet::new();
        let mut charges: HashMap<&str, (usize, i64)> = HashMap::new();
        for (position, entry) in state.ledger.iter().enumerate() {
            sum += entry.amount;
            if entry.seq != position as u64 + 1 || entry.balance_after != sum || sum < 0 {
                verdict.add(ViolationKind::LedgerMismatch, || {
                    format!(
                        "{}: entry seq {} ({}) has balance_after {}, the sum so far is {sum}",
                        state.replica,
                        entry.seq,
                        entry.kind.as_str(),
                        entry.balance_after
                    )
                });
            }
            if !keys.insert(entry.key.as_str()) {
                verdict.add(ViolationKind::DoubleCharge, || {
                    format!("{}: ledger key {} used twice", state.replica, entry.key)
                });
            }
            if entry.kind == EntryKind::Charge {
                let attempt = entry.key.strip_prefix("charge:").unwrap_or(&entry.key);
                let slot = charges.entry(attempt).or_default();
                slot.0 += 1;
                slot.1 -= entry.amount;
            }
        }
        if sum != state.available {
            verdict.add(ViolationKind::LedgerMismatch, || {
                format!(
                    "{}: balance {} but the entries sum to {sum}",
                    state.replica, state.available
                )
            });
        }
        for job in &state.jobs {
            for attempt in &job.attempts {
                let (count, charged) = charges
                    .get(attempt.id.as_str())
                    .copied()
                    .unwrap_or_default();
                if count > 1 || charged != attempt.charged {
                    verdict.add(ViolationKind::DoubleCharge, || {
                        format!(
                            "{}: attempt {} of job {} records {} charged, the ledger has {count} \
                             charge(s) totalling {charged}",
                            state.replica, attempt.id, job.id, attempt.charged
                        )
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{AttemptRecord, JobRecord, LedgerRecord};
    use tanvrit_api::AttemptState;

    fn submit(client: u32, key: &str, invoked: Micros, completed: Micros, index: Index) -> Event {
        Event {
            client,
            op: Op::Submit { key: key.into() },
            invoked,
            completed,
            outcome: Outcome::Submitted {
                job: format!("job-{key}"),
                index,
            },
        }
    }

    fn read(level: ReadLevel, invoked: Micros, completed: Micros, keys: &[&str]) -> Event {
        Event {
            client: 9,
            op: Op::Read {
                level,
                replica: "r1".into(),
            },
            invoked,
            completed,
            outcome: Outcome::Read {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                index: 100,
            },
        }
    }

    fn job(key: &str) -> JobRecord {
        JobRecord {
            id: format!("job-{key}"),
            key: Some(key.into()),
            state: JobState::Pending,
            attempts: Vec::new(),
        }
    }

    fn replica(name: &str, jobs: Vec<JobRecord>) -> ReplicaState {
        ReplicaState {
            replica: name.into(),
            index: 100,
            jobs,
            ledger: vec![LedgerRecord {
                seq: 1,
                key: "top-up".into(),
                kind: EntryKind::TopUp,
                amount: 1000,
                balance_after: 1000,
            }],
            available: 1000,
        }
    }

    fn history(events: Vec<Event>) -> History {
        History {
            events,
            failed_requests: Vec::new(),
        }
    }

    #[test]
    fn a_baseline_with_one_leader_and_no_failed_request_passes() {
        let h = history(vec![submit(1, "a", 0, 10, 5)]);
        let mut verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        let terms = [("r1".to_string(), 3), ("r2".to_string(), 3)];
        check_baseline(&mut verdict, &h, &BTreeSet::from([3]), &terms);
        assert!(verdict.ok(), "{:?}", verdict.violations);
    }

    #[test]
    fn a_baseline_catches_an_election_seen_or_a_term_moved_at_the_end() {
        let h = history(vec![]);
        let mut seen = Verdict::default();
        check_baseline(&mut seen, &h, &BTreeSet::from([3, 4]), &[]);
        assert_eq!(seen.counts[&ViolationKind::BaselineElection], 1);
        // A term that moved between two scrapes of the watcher shows at the end.
        let mut moved = Verdict::default();
        let terms = [("r1".to_string(), 3), ("r3".to_string(), 5)];
        check_baseline(&mut moved, &h, &BTreeSet::from([3]), &terms);
        assert_eq!(moved.counts[&ViolationKind::BaselineElection], 1);
        assert!(moved.violations[0].detail.contains("r3 ended in term 5"));
    }

    #[test]
    fn a_baseline_catches_a_failed_request_even_if_its_retry_succeeded() {
        // The submit was acknowledged, but its first request met a 503.
        let mut h = history(vec![submit(1, "a", 0, 10, 5)]);
        h.failed_requests.push(FailedRequest {
            client: 1,
            op: "submit".into(),
            at: 2_000,
            status: Some(503),
            code: "no_leader".into(),
        });
        let mut verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        assert!(verdict.ok());
        check_baseline(&mut verdict, &h, &BTreeSet::from([3]), &[]);
        assert_eq!(verdict.counts[&ViolationKind::BaselineFailedRequest], 1);
        assert_eq!(
            verdict.violations[0].detail,
            "client 1 submit at 2 ms: 503 no_leader"
        );
    }

    #[test]
    fn a_clean_history_passes() {
        let h = history(vec![
            submit(1, "a", 0, 10, 5),
            submit(2, "b", 5, 20, 6),
            read(ReadLevel::Strict, 21, 30, &["a", "b"]),
            read(ReadLevel::MinIndex(5), 11, 15, &["a"]),
            read(ReadLevel::Stale, 0, 3, &[]),
        ]);
        let finals = vec![
            replica("r1", vec![job("a"), job("b")]),
            replica("r2", vec![job("b"), job("a")]),
        ];
        let verdict = check(&h, &finals, &[]);
        assert!(verdict.ok(), "{:?}", verdict.violations);
        assert_eq!((verdict.acked, verdict.lost, verdict.duplicated), (2, 0, 0));
    }

    #[test]
    fn an_acknowledged_write_missing_on_one_replica_is_lost() {
        let h = history(vec![submit(1, "a", 0, 10, 5), submit(1, "b", 11, 20, 6)]);
        let finals = vec![
            replica("r1", vec![job("a"), job("b")]),
            replica("r2", vec![job("a")]),
        ];
        let verdict = check(&h, &finals, &[]);
        assert!(verdict.has(ViolationKind::LostWrite));
        assert_eq!(verdict.lost, 1);
    }

    #[test]
    fn an_indeterminate_write_may_be_missing() {
        let mut failed = submit(1, "a", 0, 10, 5);
        failed.outcome = Outcome::Failed {
            definite: false,
            code: "timeout".into(),
        };
        let verdict = check(&history(vec![failed]), &[replica("r1", vec![])], &[]);
        assert!(verdict.ok(), "{:?}", verdict.violations);
        assert_eq!((verdict.indeterminate, verdict.refused), (1, 0));
    }

    #[test]
    fn a_definitely_refused_write_that_appears_is_caught() {
        let mut failed = submit(1, "a", 0, 10, 5);
        failed.outcome = Outcome::Failed {
            definite: true,
            code: "insufficient_credits".into(),
        };
        let verdict = check(
            &history(vec![failed]),
            &[replica("r1", vec![job("a")])],
            &[],
        );
        assert!(verdict.has(ViolationKind::RefusedWriteApplied));
        assert_eq!((verdict.indeterminate, verdict.refused), (0, 1));
    }

    #[test]
    fn two_jobs_with_one_key_are_a_duplicate() {
        let h = history(vec![submit(1, "a", 0, 10, 5)]);
        let mut twin = job("a");
        twin.id = "job-a-again".into();
        let verdict = check(&h, &[replica("r1", vec![job("a"), twin])], &[]);
        assert!(verdict.has(ViolationKind::DuplicateWrite));
        assert_eq!(verdict.duplicated, 1);
    }

    #[test]
    fn a_strict_read_missing_an_earlier_acknowledged_write_is_stale() {
        let h = history(vec![
            submit(1, "a", 0, 10, 5),
            read(ReadLevel::Strict, 11, 20, &[]),
        ]);
        let verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        assert!(verdict.has(ViolationKind::StaleStrictRead));
    }

    #[test]
    fn a_strict_read_concurrent_with_a_write_may_miss_it() {
        let h = history(vec![
            submit(1, "a", 0, 15, 5),
            read(ReadLevel::Strict, 10, 20, &[]),
            read(ReadLevel::Strict, 12, 18, &["a"]),
        ]);
        let verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        assert!(verdict.ok(), "{:?}", verdict.violations);
    }

    #[test]
    fn a_strict_read_that_forgets_what_an_earlier_strict_read_saw_is_caught() {
        // The write never got acknowledged, so only the earlier read proves it happened.
        let mut pending = submit(1, "a", 0, 100, 5);
        pending.outcome = Outcome::Failed {
            definite: false,
            code: "timeout".into(),
        };
        let h = history(vec![
            pending,
            read(ReadLevel::Strict, 10, 20, &["a"]),
            read(ReadLevel::Strict, 30, 40, &[]),
        ]);
        let verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        assert!(verdict.has(ViolationKind::NonMonotonicStrictRead));
    }

    #[test]
    fn a_read_that_sees_a_write_invoked_after_it_completed_is_caught() {
        let h = history(vec![
            read(ReadLevel::Stale, 0, 10, &["a"]),
            submit(1, "a", 20, 30, 5),
        ]);
        let verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        assert!(verdict.has(ViolationKind::ReadFromTheFuture));
    }

    #[test]
    fn a_min_index_read_older_than_its_index_is_caught() {
        let h = history(vec![
            submit(1, "a", 0, 10, 5),
            submit(1, "b", 11, 20, 7),
            read(ReadLevel::MinIndex(7), 21, 30, &["a"]),
        ]);
        let verdict = check(&h, &[replica("r1", vec![job("a"), job("b")])], &[]);
        assert!(verdict.has(ViolationKind::StaleMinIndexRead));
        // Stale reads promise nothing of the kind.
        let h = history(vec![
            submit(1, "a", 0, 10, 5),
            read(ReadLevel::Stale, 21, 30, &[]),
        ]);
        assert!(check(&h, &[replica("r1", vec![job("a")])], &[]).ok());
    }

    #[test]
    fn an_acknowledged_cancel_must_leave_the_job_cancelled() {
        let cancel = Event {
            client: 1,
            op: Op::Cancel {
                key: "a".into(),
                job: "job-a".into(),
            },
            invoked: 11,
            completed: 12,
            outcome: Outcome::Cancelled { index: 6 },
        };
        let h = history(vec![submit(1, "a", 0, 10, 5), cancel]);
        let verdict = check(&h, &[replica("r1", vec![job("a")])], &[]);
        assert!(verdict.has(ViolationKind::LostCancel));
    }

    fn attempt(
        id: &str,
        number: u32,
        state: AttemptState,
        at: i64,
        end: Option<i64>,
    ) -> AttemptRecord {
        AttemptRecord {
            id: id.into(),
            number,
            state,
            assigned_at: at,
            finished_at: end,
            charged: 0,
        }
    }

    #[test]
    fn overlapping_attempts_are_caught_in_records_and_in_runs() {
        let h = history(vec![submit(1, "a", 0, 10, 5)]);
        let mut record = job("a");
        record.attempts = vec![
            attempt("x1", 1, AttemptState::Running, 100, None),
            attempt("x2", 2, AttemptState::Running, 200, None),
        ];
        let verdict = check(&h, &[replica("r1", vec![record.clone()])], &[]);
        assert!(verdict.has(ViolationKind::OverlappingAttempts));

        record.attempts = vec![
            attempt("x1", 1, AttemptState::Lost, 100, Some(150)),
            attempt("x2", 2, AttemptState::Succeeded, 200, Some(300)),
        ];
        let sequential = [
            RunRecord {
                job: "job-a".into(),
                attempt: "x1".into(),
                start_ns: 1_000,
                end_ns: Some(2_000),
            },
            RunRecord {
                job: "job-a".into(),
                attempt: "x2".into(),
                start_ns: 3_000,
                end_ns: Some(4_000),
            },
        ];
        let finals = [replica("r1", vec![record])];
        assert!(check(&h, &finals, &sequential).ok());
        let mut overlapping = sequential.clone();
        overlapping[0].end_ns = Some(3_500);
        let verdict = check(&h, &finals, &overlapping);
        assert!(verdict.has(ViolationKind::OverlappingAttempts));
        // A run the control plane never placed.
        let mut stray = sequential.clone();
        stray[1].attempt = "x9".into();
        assert!(check(&h, &finals, &stray).has(ViolationKind::UnknownAttemptRan));
    }

    #[test]
    fn a_ledger_that_does_not_add_up_or_charges_twice_is_caught() {
        let h = history(vec![submit(1, "a", 0, 10, 5)]);
        let mut record = job("a");
        let mut charged = attempt("x1", 1, AttemptState::Succeeded, 100, Some(150));
        charged.charged = 30;
        record.attempts = vec![charged];
        let mut state = replica("r1", vec![record]);
        state.ledger.push(LedgerRecord {
            seq: 2,
            key: "charge:x1".into(),
            kind: EntryKind::Charge,
            amount: -30,
            balance_after: 970,
        });
        state.available = 970;
        assert!(check(&h, &[state.clone()], &[]).ok());

        let mut twice = state.clone();
        twice.ledger.push(LedgerRecord {
            seq: 3,
            key: "charge:x1".into(),
            kind: EntryKind::Charge,
            amount: -30,
            balance_after: 940,
        });
        twice.available = 940;
        assert!(check(&h, &[twice], &[]).has(ViolationKind::DoubleCharge));

        let mut wrong_sum = state.clone();
        wrong_sum.available = 1000;
        assert!(check(&h, &[wrong_sum], &[]).has(ViolationKind::LedgerMismatch));

        let mut negative = state;
        negative.ledger.push(LedgerRecord {
            seq: 3,
            key: "adj".into(),
            kind: EntryKind::Adjustment,
            amount: -2000,
            balance_after: -1030,
        });
        negative.available = -1030;
        assert!(check(&h, &[negative], &[]).has(ViolationKind::LedgerMismatch));
    }

    #[test]
    fn replicas_that_disagree_at_the_end_diverge() {
        let h = history(vec![submit(1, "a", 0, 10, 5)]);
        let mut cancelled = job("a");
        cancelled.state = JobState::Cancelled;
        let verdict = check(
            &h,
            &[
                replica("r1", vec![job("a")]),
                replica("r2", vec![cancelled]),
            ],
            &[],
        );
        assert!(verdict.has(ViolationKind::Divergence));
    }
}
