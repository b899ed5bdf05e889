//! A 3-replica Raft cluster of real `tanvrit server` processes on loopback (LAN timings:
//! heartbeat 100 ms, election 250/400 ms), under a stream of job submissions from
//! several clients that fail over between the three addresses and retry each submission
//! with its idempotency key until it is acknowledged:
//! - `kill -9` of the leader: a new leader soon, every acknowledged job on every replica
//!   exactly once, failures only as 503s or transport errors;
//! - `kill -9` of all three, then a restart: nothing lost;
//! - a rolling restart (SIGTERM, start, catch up; each replica in turn): writes go on
//!   with sub-second blips.
//!
//! And the membership commands on real processes: `tanvrit cluster init` (authorized by
//! the cluster secret, since no admin key exists before the cluster does) forms a
//! cluster once; `add-replica` and `remove-replica` change its voters; a full restart
//! needs no second init.
//!
//! The tests run one at a time (a lock): three clusters at once on two cores would
//! measure the machine, not the cluster. Figures are printed (`--nocapture`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tanvrit_api::{
    BusinessId, Consistency, Index, JobId, JobListRequest, JobSpec, JobSubmitRequest, Role,
};
use tanvrit_client::{Client, ClientConfig, ClientError};
use tanvrit_testkit::process::{ProcessCluster, TEST_ADMIN_KEY};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const BUSINESS: &str = "acme";
/// Generous bounds: the machine has two cores shared with other work.
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(3);
const MAX_WRITE_GAP: Duration = Duration::from_secs(3);
const PATIENCE: Duration = Duration::from_secs(30);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One acknowledged submission.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    job: JobId,
    index: Index,
    /// When the acknowledged attempt was sent.
    sent: Instant,
    /// When its acknowledgement arrived.
    at: Instant,
}

/// What the writers saw.
#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    /// Failures by code (`no_leader`, `transport`, ...): each was retried.
    retried: BTreeMap<String, u64>,
    /// Failures that are neither a 503 nor a transport error.
    unexpected: Vec<String>,
}

fn single(url: &str, timeout: Duration) -> Client {
    Client::new(ClientConfig {
        endpoints: vec![url.to_string()],
        api_key: Some(TEST_ADMIN_KEY.to_string()),
        timeout,
        // The writer retries by hand, moving to another replica.
        max_retries: 0,
        read_your_writes: false,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn submit(key: &str) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(BusinessId::from(BUSINESS)),
        spec: JobSpec {
            command: vec!["echo".into(), key.into()],
            ..JobSpec::default()
        },
        idempotency_key: Some(key.to_string()),
    }
}

/// Whether a failed submission may simply be retried: the replica said 503 (nothing
/// applied, or an outcome it cannot know) or the exchange failed on the wire.
fn retryable(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Api { status: 503, .. } | ClientError::Transport { .. }
    )
}

/// Submits `w<writer>-<n>` for n = 0, 1, ... until `stop`; each one is retried (on the
/// next replica, same idempotency key) until it is acknowledged, so a submission cut
/// short by a crash is either found committed or committed by the retry, never twice.
async fn writer(urls: Vec<String>, w: usize, stop: watch::Receiver<bool>, log: Arc<Mutex<Log>>) {
    let clients: Vec<Client> = urls
        .iter()
        .map(|u| single(u, Duration::from_secs(5)))
        .collect();
    let mut at = w % clients.len();
    let mut n = 0;
    while !*stop.borrow() {
        let key = format!("w{w}-{n}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let sent = Instant::now();
            match clients[at].submit_job(submit(&key)).await {
                Ok(response) => {
                    log.lock().acks.push(Ack {
                        key: key.clone(),
                        job: response.job.id,
                        index: response.index,
                        sent,
                        at: Instant::now(),
                    });
                    break;
                }
                Err(err) if retryable(&err) && Instant::now() < deadline => {
                    *log.lock()
                        .retried
                        .entry(err.code().to_string())
                        .or_default() += 1;
                    at = (at + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => {
                    log.lock().unexpected.push(format!("{key}: {err}"));
                    break;
                }
            }
        }
        n += 1;
    }
}

/// Writers running against a cluster.
struct Writers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    log: Arc<Mutex<Log>>,
}

impl Writers {
    fn start(urls: &[String], count: usize, first: usize) -> Writers {
        let (stop, stopped) = watch::channel(false);
        let log = Arc::new(Mutex::new(Log::default()));
        let tasks = (first..first + count)
            .map(|w| tokio::spawn(writer(urls.to_vec(), w, stopped.clone(), log.clone())))
            .collect();
        Writers { stop, tasks, log }
    }

    fn acked(&self) -> usize {
        self.log.lock().acks.len()
    }

    async fn until_acked(&self, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.acked() < count {
            assert!(Instant::now() < deadline, "only {} acks", self.acked());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops after each writer's current submission is acknowledged.
    async fn finish(self) -> Log {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        let log = std::mem::take(&mut *self.log.lock());
        assert!(
            log.unexpected.is_empty(),
            "unexpected failures: {:?}",
            log.unexpected
        );
        log
    }
}

/// Starts a cluster and waits until it has a leader and the admin key works; tops up.
async fn start_cluster(root: &Path) -> ProcessCluster {
    ProcessCluster::start_funded(Path::new(BIN), root, 3, BUSINESS, PATIENCE).await
}

/// Every job of the business on replica `url`, by idempotency key, read at `consistency`.
async fn jobs_by_key(url: &str, consistency: Consistency) -> BTreeMap<String, Vec<JobId>> {
    let client = single(url, Duration::from_secs(10));
    let mut by_key: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = client
            .list_jobs(JobListRequest {
                consistency,
                business: Some(BUSINESS.into()),
                limit: Some(1000),
                after: after.clone(),
                ..JobListRequest::default()
            })
            .await
            .unwrap_or_else(|e| panic!("listing jobs on {url}: {e}"));
        for job in page.jobs {
            let key = job.idempotency_key.clone().expect("every job has a key");
            by_key.entry(key).or_default().push(job.id);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return by_key,
        }
    }
}

/// Every acknowledged job is on every replica, once, with the acknowledged id; no key
/// has two jobs. Replicas are read at `min_index` of the last acknowledgement (the one
/// at `strict_on` at `strict` instead).
async fn check_every_replica(cluster: &ProcessCluster, acks: &[Ack], strict_on: usize) {
    let last = acks.iter().map(|a| a.index).max().unwrap_or(0);
    for (i, url) in cluster.urls().iter().enumerate() {
        let consistency = if i == strict_on {
            Consistency::Strict
        } else {
            Consistency::MinIndex(last)
        };
        let by_key = jobs_by_key(url, consistency).await;
        let doubled: Vec<_> = by_key.iter().filter(|(_, jobs)| jobs.len() > 1).collect();
        assert!(
            doubled.is_empty(),
            "replica {i}: keys with two jobs: {doubled:?}"
        );
        for ack in acks {
            assert_eq!(
                by_key.get(&ack.key).map(|jobs| &jobs[0]),
                Some(&ack.job),
                "replica {i}: acknowledged {} ({}) at index {} is missing or different",
                ack.key,
                ack.job,
                ack.index
            );
        }
    }
}

/// Longest pause between two consecutive acknowledgements (of any writer) inside
/// `[from, to]`, and how many pauses were over 100 ms.
fn gaps(acks: &[Ack], from: Instant, to: Instant) -> (Duration, usize) {
    let mut times: Vec<Instant> = acks
        .iter()
        .map(|a| a.at)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    times.sort();
    let mut edges = vec![from];
    edges.extend(times);
    edges.push(to);
    let pauses: Vec<Duration> = edges.windows(2).map(|w| w[1] - w[0]).collect();
    let max = pauses.iter().copied().max().unwrap_or_default();
    let blips = pauses
        .iter()
        .filter(|p| **p > Duration::from_millis(100))
        .count();
    (max, blips)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_and_duplicates_no_acknowledged_submission() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await;
    let writers = Writers::start(&cluster.urls(), 6, 0);
    writers.until_acked(150).await;

    let leader = cluster.leader(PATIENCE).await.expect("a leader");
    cluster.replica_mut(leader).kill9().await;
    // The process is gone (reaped): anything sent from now on is served by the others.
    let killed_at = Instant::now();
    let elected = cluster
        .leader(PATIENCE)
        .await
        .expect("a survivor becomes leader");
    let election = killed_at.elapsed();
    assert_ne!(elected, leader);
    let before = writers.acked();
    writers.until_acked(before + 150).await;
    let log = writers.finish().await;
    let first_write = log
        .acks
        .iter()
        .filter(|a| a.sent > killed_at)
        .map(|a| a.at - killed_at)
        .min()
        .expect("writes after the kill");
    eprintln!(
        "kill -9 of the leader (replica-{}): new leader replica-{} after {:?}, first \
         acknowledged write after {:?}; {} writes acknowledged, retried failures: {:?}",
        leader + 1,
        elected + 1,
        election,
        first_write,
        log.acks.len(),
        log.retried
    );
    assert!(
        election < NEW_LEADER_WITHIN,
        "new leader after {election:?}"
    );
    assert!(
        first_write < NEW_LEADER_WITHIN,
        "first write after {first_write:?}"
    );

    // The killed replica comes back and catches up.
    cluster
        .replica_mut(leader)
        .restart()
        .await
        .expect("restart");
    check_every_replica(&cluster, &log.acks, elected).await;
    for i in 0..cluster.len() {
        cluster.replica_mut(i).terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_all_three_and_restarting_them_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await;
    let writers = Writers::start(&cluster.urls(), 4, 100);
    writers.until_acked(200).await;
    // All at once, mid-stream: the writers keep retrying their current submission.
    for i in 0..cluster.len() {
        cluster.replica_mut(i).kill9().await;
    }
    let acked_at_kill = writers.acked();
    let down_at = Instant::now();
    for i in 0..cluster.len() {
        cluster.replica_mut(i).restart().await.expect("restart");
    }
    let leader = cluster
        .leader(PATIENCE)
        .await
        .expect("a leader after restart");
    writers.until_acked(acked_at_kill + 100).await;
    let log = writers.finish().await;
    eprintln!(
        "all three killed with {acked_at_kill} writes acknowledged; leader replica-{} again \
         {:?} after the kill; {} writes acknowledged in all",
        leader + 1,
        down_at.elapsed(),
        log.acks.len()
    );
    check_every_replica(&cluster, &log.acks, leader).await;
    for i in 0..cluster.len() {
        cluster.replica_mut(i).terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_writes_going_with_only_short_blips() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await;
    let writers = Writers::start(&cluster.urls(), 4, 200);
    writers.until_acked(100).await;
    let rolling_from = Instant::now();
    for i in 0..cluster.len() {
        let role = cluster.role(i).await;
        let stopped_at = Instant::now();
        let code = cluster.replica_mut(i).terminate().await;
        assert_eq!(code, Some(0), "replica-{} stops cleanly", i + 1);
        cluster.replica_mut(i).restart().await.expect("restart");
        // Caught up: it knows a leader and has applied the latest acknowledged write.
        let wanted = writers
            .log
            .lock()
            .acks
            .iter()
            .map(|a| a.index)
            .max()
            .unwrap_or(0);
        let client = single(cluster.replica(i).url(), Duration::from_secs(10));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = cluster.role(i).await.is_some();
            let applied = client
                .list_jobs(JobListRequest {
                    consistency: Consistency::Stale,
                    limit: Some(1),
                    ..JobListRequest::default()
                })
                .await
                .map(|page| page.index)
                .unwrap_or(0);
            if ready && applied >= wanted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica-{} did not catch up",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "replica-{} ({}) restarted and caught up in {:?}",
            i + 1,
            role.map_or("?", Role::as_str),
            stopped_at.elapsed()
        );
    }
    let rolling_to = Instant::now();
    writers.until_acked(writers.acked() + 50).await;
    let log = writers.finish().await;
    let (max_gap, blips) = gaps(&log.acks, rolling_from, rolling_to);
    let during = log
        .acks
        .iter()
        .filter(|a| a.at >= rolling_from && a.at <= rolling_to)
        .count();
    eprintln!(
        "rolling restart took {:?}: {during} writes acknowledged meanwhile, longest pause \
         between acknowledgements {max_gap:?}, {blips} pauses over 100 ms; retried: {:?}",
        rolling_to - rolling_from,
        log.retried
    );
    assert!(max_gap < MAX_WRITE_GAP, "writes stalled for {max_gap:?}");
    check_every_replica(&cluster, &log.acks, 0).await;
    for i in 0..cluster.len() {
        cluster.replica_mut(i).terminate().await;
    }
}

/// Runs a `tanvrit` client command against `addr`; (exit code, stdout, stderr).
async fn cli(addr: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("TANVRIT_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .env("TANVRIT_ADDR", addr)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The voter ids as the answering replica's topology shows them (its own view).
async fn voters(addr: &str) -> Vec<u64> {
    let (code, stdout, stderr) = cli(
        addr,
        &[("TANVRIT_API_KEY", TEST_ADMIN_KEY)],
        &["--json", "cluster", "topology"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let topology: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    topology["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| matches!(r["role"].as_str(), Some("leader" | "follower")))
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_forms_the_cluster_once_and_replicas_are_added_and_removed_by_cli() {
    use tanvrit_testkit::process::{ServerProcess, TEST_CLUSTER_SECRET};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
    let env = [
        ("TANVRIT_RAFT_PROFILE", "lan"),
        ("TANVRIT_RAFT_AUTO_BOOTSTRAP", "false"),
        ("RUST_LOG", log.as_str()),
    ];
    let mut cluster = ProcessCluster::start(Path::new(BIN), dir.path(), 3, &env)
        .await
        .expect("replicas start");
    let addr = cluster.urls().join(",");
    let secret = [("TANVRIT_CLUSTER_SECRET", TEST_CLUSTER_SECRET)];
    // Not formed: no leader, and no admin key yet, so only the cluster secret works.
    assert_eq!(cluster.role(0).await, None);
    let (code, _, stderr) = cli(
        &addr,
        &[("TANVRIT_API_KEY", TEST_ADMIN_KEY)],
        &["cluster", "init"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    let (code, stdout, stderr) = cli(&addr, &secret, &["cluster", "init"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("formed the cluster"), "{stdout}");
    cluster.leader(PATIENCE).await.expect("a leader after init");
    let (code, stdout, _) = cli(&addr, &secret, &["cluster", "init"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("already formed"), "{stdout}");
    // The first leader writes the admin key in the background.
    let deadline = Instant::now() + PATIENCE;
    while cli(
        &addr,
        &[("TANVRIT_API_KEY", TEST_ADMIN_KEY)],
        &["cluster", "topology"],
    )
    .await
    .0 != 0
    {
        assert!(Instant::now() < deadline, "the admin key was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A fourth replica, outside TANVRIT_PEERS, joins through `add-replica`.
    let raft_port = ProcessCluster::free_port().unwrap().to_string();
    let raft_addr = format!("127.0.0.1:{raft_port}");
    let fourth_dir = dir.path().join("replica-4");
    std::fs::create_dir_all(&fourth_dir).unwrap();
    let mut fourth = ServerProcess::start(
        Path::new(BIN),
        &fourth_dir,
        &[
            ("TANVRIT_CLUSTER_RAFT", "true"),
            ("TANVRIT_PEERS", cluster.peers()),
            ("TANVRIT_REPLICA_ID", "replica-4"),
            ("TANVRIT_RAFT_NODE_ID", "4"),
            ("TANVRIT_RAFT_ADDR", &raft_addr),
            ("TANVRIT_CLUSTER_SECRET", TEST_CLUSTER_SECRET),
            ("TANVRIT_RAFT_PROFILE", "lan"),
            ("RUST_LOG", log.as_str()),
        ],
    )
    .await
    .expect("the fourth replica starts");
    let api_addr = fourth.url().trim_start_matches("http://").to_string();
    let admin = [("TANVRIT_API_KEY", TEST_ADMIN_KEY)];
    let (code, stdout, stderr) = cli(
        &addr,
        &admin,
        &[
            "--json",
            "cluster",
            "add-replica",
            "--id",
            "4",
            "--name",
            "replica-4",
            "--raft-addr",
            &raft_addr,
            "--api-addr",
            &api_addr,
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let view: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view["voters"], serde_json::json!([1, 2, 3, 4]), "{stdout}");
    // The new voter takes writes (forwarded to the leader).
    let (code, _, stderr) = cli(
        fourth.url(),
        &admin,
        &["credit", "add", "--business", BUSINESS, "--amount", "5"],
    )
    .await;
    assert_eq!(code, 0, "a write through the new replica: {stderr}");
    let (code, stdout, stderr) = cli(
        &addr,
        &secret,
        &["--json", "cluster", "remove-replica", "--id", "4"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let view: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view["voters"], serde_json::json!([1, 2, 3]), "{stdout}");
    fourth.terminate().await;

    // Restarting every replica needs no init: the membership is in their logs.
    for i in 0..cluster.len() {
        cluster.replica_mut(i).kill9().await;
    }
    for i in 0..cluster.len() {
        cluster.replica_mut(i).restart().await.expect("restart");
    }
    let leader = cluster
        .leader(PATIENCE)
        .await
        .expect("a leader after restart");
    assert_eq!(voters(cluster.replica(leader).url()).await, vec![1, 2, 3]);
    for i in 0..cluster.len() {
        cluster.replica_mut(i).terminate().await;
    }
}
