//! The load of `bench scale`: N jobs, each submitted and then cancelled while pending
//! (so it ends terminal, with a credit hold and its release), by C workers through a
//! client that never retries. Every job leaves one [`Record`] (when it was sent, how
//! long its submit and its cancel took); each time another slice of the jobs is done
//! the writer reports a [`Boundary`], so the caller samples the replicas right then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tanvrit_api::{JobActionRequest, JobId};
use tanvrit_client::Client;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::commands::bench::{bench_job, percentile};

/// One job's submit and cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The job's number (0-based, in the order they were taken).
    pub n: u64,
    /// When its submit was sent, in microseconds since the load started.
    pub sent_us: u64,
    /// How long the submit took, in microseconds.
    pub submit_us: u32,
    /// How long the cancel took (sent when the submit returned; 0 if never sent).
    pub cancel_us: u32,
    /// Both were acknowledged.
    pub ok: bool,
}

impl Record {
    /// The worst write of this job that ran during `[from_us, to_us]` (since the start),
    /// in microseconds.
    pub fn worst_during(&self, from_us: u64, to_us: u64) -> Option<u32> {
        let overlaps = |start: u64, took: u32| start <= to_us && start + u64::from(took) >= from_us;
        let cancel_sent = self.sent_us + u64::from(self.submit_us);
        let submit = overlaps(self.sent_us, self.submit_us).then_some(self.submit_us);
        let cancel =
            (self.cancel_us > 0 && overlaps(cancel_sent, self.cancel_us)).then_some(self.cancel_us);
        submit.max(cancel)
    }
}

/// `done` jobs are finished (acknowledged or failed): the end of slice `slice`.
#[derive(Clone, Copy, Debug)]
pub struct Boundary {
    /// 0-based.
    pub slice: usize,
    /// Jobs finished so far.
    pub done: u64,
    /// When.
    pub at: Instant,
}

/// Figures of the jobs numbered `from..to`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SliceFigures {
    /// Submits p99, ms.
    pub submit_p99_ms: f64,
    /// Slowest write (submit or cancel), ms.
    pub worst_write_ms: f64,
    /// Jobs whose submit or cancel failed.
    pub errors: u64,
}

/// The figures of the records numbered `from..to`.
pub fn slice_figures(records: &[Record], from: u64, to: u64) -> SliceFigures {
    let mut submits = Vec::new();
    let mut worst = 0u32;
    let mut errors = 0;
    for r in records.iter().filter(|r| (from..to).contains(&r.n)) {
        submits.push(Duration::from_micros(r.submit_us.into()));
        worst = worst.max(r.submit_us).max(r.cancel_us);
        errors += u64::from(!r.ok);
    }
    submits.sort();
    SliceFigures {
        submit_p99_ms: percentile(&submits, 99.0),
        worst_write_ms: f64::from(worst) / 1000.0,
        errors,
    }
}

/// Every finished job's record; each worker pushes one per job (a short lock).
#[derive(Default)]
struct Records(Mutex<Vec<Record>>);

impl Records {
    fn push(&self, record: Record) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    fn with<T>(&self, f: impl FnOnce(&[Record]) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The running load.
pub struct Writer {
    records: Arc<Records>,
    tasks: Vec<JoinHandle<Option<JobId>>>,
    /// The end of each slice, as it happens.
    pub boundaries: mpsc::UnboundedReceiver<Boundary>,
    /// When the load started.
    pub started: Instant,
    /// The same moment on the wall clock (the replicas' logs are stamped with it).
    pub started_wall: SystemTime,
}

impl Writer {
    /// Starts `concurrency` workers writing `jobs` jobs through `client`, reporting a
    /// boundary every `slice` jobs (and at the last).
    pub fn start(client: Client, jobs: u64, concurrency: usize, slice: u64) -> Writer {
        let records = Arc::new(Records::default());
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let (tx, boundaries) = mpsc::unbounded_channel();
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let slice = slice.max(1);
        let tasks = (0..concurrency.max(1))
            .map(|worker| {
                let (client, records, next, done, tx) = (
                    client.clone(),
                    records.clone(),
                    next.clone(),
                    done.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    let mut last_id = None;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= jobs {
                            return last_id;
                        }
                        let sent = Instant::now();
                        let submitted = client
                            .submit_job(bench_job(super::replicas::BUSINESS, worker, n))
                            .await;
                        let submit_took = sent.elapsed();
                        let (cancel_took, ok) = match submitted {
                            Ok(reply) => {
                                let at = Instant::now();
                                let cancelled = client
                                    .cancel_job(&reply.job.id, JobActionRequest::default())
                                    .await;
                                last_id = Some(reply.job.id);
                                (at.elapsed(), cancelled.is_ok())
                            }
                            Err(_) => (Duration::ZERO, false),
                        };
                        records.push(Record {
                            n,
                            sent_us: sent.duration_since(started).as_micros() as u64,
                            submit_us: micros(submit_took),
                            cancel_us: micros(cancel_took),
                            ok,
                        });
                        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if finished % slice == 0 || finished == jobs {
                            let _ = tx.send(Boundary {
                                slice: ((finished - 1) / slice) as usize,
                                done: finished,
                                at: Instant::now(),
                            });
                        }
                    }
                })
            })
            .collect();
        Writer {
            records,
            tasks,
            boundaries,
            started,
            started_wall,
        }
    }

    /// The figures of the jobs numbered `from..to` finished so far.
    pub fn figures(&self, from: u64, to: u64) -> SliceFigures {
        self.records
            .with(|records| slice_figures(records, from, to))
    }

    /// Waits for the workers; every record, and the id of a job that was written.
    pub async fn finish(self) -> (Vec<Record>, Option<JobId>) {
        let mut some_id = None;
        for task in self.tasks {
            if let Ok(Some(id)) = task.await {
                some_id = Some(id);
            }
        }
        (self.records.take(), some_id)
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// The slowest write of `records` that ran during `[from_us, to_us]`, in ms.
pub fn worst_write_during(records: &[Record], from_us: u64, to_us: u64) -> f64 {
    let worst = records
        .iter()
        .filter_map(|r| r.worst_during(from_us, to_us))
        .max()
        .unwrap_or(0);
    f64::from(worst) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, sent_us: u64, submit_us: u32, cancel_us: u32) -> Record {
        Record {
            n,
            sent_us,
            submit_us,
            cancel_us,
            ok: cancel_us > 0,
        }
    }

    #[test]
    fn a_write_counts_for_a_window_it_overlaps_and_not_for_one_it_misses() {
        // Submit runs 100..300, cancel 300..1300.
        let r = record(0, 100, 200, 1_000);
        assert_eq!(r.worst_during(0, 150), Some(200));
        assert_eq!(r.worst_during(1_000, 2_000), Some(1_000));
        assert_eq!(r.worst_during(250, 260), Some(200));
        assert_eq!(r.worst_during(1_301, 2_000), None);
        assert_eq!(r.worst_during(0, 99), None);
        // A failed submit sent no cancel.
        assert_eq!(record(1, 0, 50, 0).worst_during(60, 70), None);
    }

    #[test]
    fn slice_figures_take_the_records_of_their_job_numbers_only() {
        let mut records: Vec<Record> = (0..100)
            .map(|n| record(n, n * 10, 1_000 * (n as u32 + 1), 500))
            .collect();
        records.push(record(100, 0, 900_000, 0));
        let first = slice_figures(&records, 0, 100);
        assert_eq!(first.errors, 0);
        assert_eq!(first.submit_p99_ms, 99.0);
        assert_eq!(first.worst_write_ms, 100.0);
        let last = slice_figures(&records, 100, 200);
        assert_eq!((last.errors, last.worst_write_ms), (1, 900.0));
        assert_eq!(worst_write_during(&records, 0, 5), 900.0);
        assert_eq!(slice_figures(&[], 0, 10), SliceFigures::default());
    }
}
