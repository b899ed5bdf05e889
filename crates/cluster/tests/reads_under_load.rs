//! Job pages are served from the tables while a replica builds a snapshot of 100,000
//! jobs and while retention collects them: no read waits for either, and every page is
//! a consistent one (newest first, no job twice, only jobs that exist).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tanvrit_api::JobId;
use tanvrit_cluster::raft::RaftCluster;
use tanvrit_cluster::ClusterService;
use tanvrit_state::{Command, Effect, JobFilter};
use tanvrit_testkit::commands::{business, small_job, top_up};
use tanvrit_testkit::{eventually, ClusterOptions, TestCluster};

const JOBS: u64 = 100_000;
const WRITERS: u64 = 64;
const PAGE: usize = 100;
const WAIT: Duration = Duration::from_secs(30);
/// When the jobs were cancelled; collection removes what finished before its cutoff.
const FINISHED_AT: i64 = 10_000;

fn job_id(n: u64) -> JobId {
    JobId::from(format!("job-{n:07}"))
}

/// Submits and cancels jobs `n` for every `n` in `0..JOBS` with `n % WRITERS == lane`.
async fn fill_lane(node: Arc<RaftCluster>, lane: u64) {
    for n in (lane..JOBS).step_by(WRITERS as usize) {
        let submit = small_job(job_id(n).as_str(), &business());
        let cancel = Command::JobCancel {
            job: job_id(n),
            reason: None,
            at: FINISHED_AT,
        };
        for command in [submit, cancel] {
            let receipt = node.submit_write(command).await.expect("a write");
            assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
        }
    }
}

/// A page served, with when its read began and ended.
struct Served {
    began: Instant,
    ended: Instant,
    jobs: usize,
}

/// Lists the newest page again and again until `stop`; checks each page.
fn read_pages(node: Arc<RaftCluster>, stop: Arc<AtomicBool>, served: Arc<Mutex<Vec<Served>>>) {
    let filter = JobFilter {
        limit: PAGE,
        ..JobFilter::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let (jobs, _) = node
            .reader()
            .read(|s| s.list_jobs(&filter))
            .expect("a page");
        let ended = Instant::now();
        let ids: Vec<&JobId> = jobs.iter().map(|j| &j.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] > w[1]),
            "a page out of order: {ids:?}"
        );
        assert!(ids.iter().all(|id| id.as_str().starts_with("job-")));
        served.lock().push(Served {
            began,
            ended,
            jobs: jobs.len(),
        });
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Full pages read entirely between `from` and `to`.
fn pages_within(served: &Mutex<Vec<Served>>, from: Instant, to: Instant) -> usize {
    served
        .lock()
        .iter()
        .filter(|s| s.began >= from && s.ended <= to && s.jobs > 0)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pages_are_served_while_a_snapshot_is_built_and_while_100k_jobs_are_collected() {
    let options = ClusterOptions {
        // No snapshot but the one this test asks for.
        snapshot_every: 10_000_000,
        ..ClusterOptions::voters(1)
    };
    let cluster = TestCluster::start(options).await.unwrap();
    let node = cluster.node(cluster.leader(WAIT).await);
    node.submit_write(top_up(1)).await.unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for lane in 0..WRITERS {
        writers.spawn(fill_lane(node.clone(), lane));
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (node, stop, served) = (node.clone(), stop.clone(), served.clone());
        std::thread::spawn(move || read_pages(node, stop, served))
    };

    // 1. A snapshot of every job, built while pages are read.
    let built_before = node.stats().snapshots_built_total;
    let build_began = Instant::now();
    node.raft().trigger().snapshot().await.unwrap();
    eventually(WAIT, "the snapshot to be built", || async {
        (node.stats().snapshots_built_total > built_before).then_some(())
    })
    .await;
    let build_ended = Instant::now();
    let during_build = pages_within(&served, build_began, build_ended);
    assert!(
        during_build > 0,
        "no page was served during a {:?} snapshot build",
        build_ended - build_began
    );

    // 2. Retention collects every job, 1,000 an entry, while pages are read.
    let collect_began = Instant::now();
    let mut collected = 0usize;
    loop {
        let receipt = node
            .submit_write(Command::JobsCollect {
                cutoff: FINISHED_AT + 1,
                limit: 1_000,
                at: FINISHED_AT + 1_000,
            })
            .await
            .unwrap();
        let Ok(Effect::JobsCollected { jobs, more, .. }) = receipt.outcome else {
            panic!("{:?}", receipt.outcome);
        };
        collected += jobs.len();
        if !more {
            break;
        }
    }
    let collect_ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(collected as u64, JOBS);
    let during_collection = pages_within(&served, collect_began, collect_ended);
    assert!(
        during_collection > 0,
        "no page was served while {JOBS} jobs were collected in {:?}",
        collect_ended - collect_began
    );
    let (left, _) = node
        .reader()
        .read(|s| {
            s.list_jobs(&JobFilter {
                limit: PAGE,
                ..JobFilter::default()
            })
        })
        .unwrap();
    assert!(left.is_empty(), "{} jobs left", left.len());
    println!(
        "pages served: {during_build} during a {:?} build, {during_collection} during a {:?} collection",
        build_ended - build_began,
        collect_ended - collect_began
    );
    cluster.shutdown().await;
}
