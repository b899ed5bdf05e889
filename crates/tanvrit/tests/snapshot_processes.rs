//! Snapshots under `kill -9`, on a 3-replica cluster of real `tanvrit server` processes
//! (LAN timings, a snapshot every 50 entries, no log kept behind it): a leader killed
//! while it writes the snapshot file it is to send a lagging replica, or a replica
//! killed while it installs one it is receiving, restarts, catches up and holds every
//! acknowledged submission.
//!
//! A kill lands inside the window it aims at when the snapshot's temporary file
//! (`snapshots/raft/build-*.tmp` or `incoming-*.tmp`) still exists after the process is
//! gone; each test tries until that happens (bounded), and fails if it never does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tanvrit_api::{
    Consistency, CreditEntryCreateRequest, EntryKind, Index, JobListRequest, JobSpec,
    JobSubmitRequest,
};
use tanvrit_client::Client;
use tanvrit_testkit::process::ProcessCluster;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const BUSINESS: &str = "acme";
const PATIENCE: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Each job carries 4 KiB of environment, so a few thousand make snapshots big enough
/// (megabytes) that writing or installing one takes a while.
fn submission(key: &str) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(BUSINESS.into()),
        spec: JobSpec {
            name: Some(key.into()),
            command: vec!["true".into()],
            env: [("PAYLOAD".to_string(), "x".repeat(4096))].into(),
            ..JobSpec::default()
        },
        idempotency_key: Some(key.into()),
    }
}

async fn start(root: &Path, logs_kept: &str) -> ProcessCluster {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
    let env = [
        ("TANVRIT_RAFT_PROFILE", "lan"),
        ("RUST_LOG", log.as_str()),
        ("TANVRIT_SNAPSHOT_EVERY", "50"),
        ("TANVRIT_SNAPSHOT_LOGS_KEPT", logs_kept),
    ];
    let mut attempt = 0;
    let cluster = loop {
        // Each try on fresh ports and directories: a port reserved for a replica can be
        // taken by another process's outgoing connection before the replica binds it.
        match ProcessCluster::start(
            Path::new(BIN),
            &root.join(format!("try-{attempt}")),
            3,
            &env,
        )
        .await
        {
            Ok(cluster) => break cluster,
            Err(err) if attempt < 3 => {
                eprintln!("replicas did not start ({err}); trying again");
                attempt += 1;
            }
            Err(err) => panic!("replicas start: {err}"),
        }
    };
    cluster.leader(PATIENCE).await.expect("a leader");
    let admin = cluster.admin_client(20);
    let deadline = Instant::now() + PATIENCE;
    while admin
        .create_credit_entry(CreditEntryCreateRequest {
            business: BUSINESS.into(),
            kind: EntryKind::TopUp,
            amount: 1_000_000_000_000,
            idempotency_key: Some("fund".into()),
            note: None,
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "cannot fund the business");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster
}

/// Submits `keys` through `client` (which retries across replicas); returns the largest
/// acknowledged index.
async fn submit_all(client: &Client, keys: impl IntoIterator<Item = String>) -> Index {
    let mut last = 0;
    for key in keys {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match client.submit_job(submission(&key)).await {
                Ok(answer) => {
                    last = last.max(answer.index);
                    break;
                }
                Err(err) => assert!(Instant::now() < deadline, "{key}: {err}"),
            }
        }
    }
    last
}

/// The snapshot files of replica `dir` with the given prefix that are unfinished.
fn unfinished(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("snapshots/raft"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "tmp")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The snapshot files replica `dir` keeps: none once it is caught up, since its tables
/// are its snapshot.
fn kept_snapshot_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("snapshots/raft"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "snap"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every submitted key is on replica `url` exactly once, read at `min_index`.
async fn assert_holds(url: &str, keys: &[String], min_index: Index) {
    let client = Client::new(tanvrit_client::ClientConfig {
        endpoints: vec![url.to_string()],
        api_key: Some(tanvrit_testkit::process::TEST_ADMIN_KEY.into()),
        timeout: Duration::from_secs(30),
        max_retries: 20,
        ..tanvrit_client::ClientConfig::default()
    })
    .unwrap();
    let mut found = std::collections::BTreeMap::<String, usize>::new();
    let mut after = None;
    loop {
        let page = client
            .list_jobs(JobListRequest {
                consistency: Consistency::MinIndex(min_index),
                business: Some(BUSINESS.into()),
                limit: Some(1000),
                after: after.clone(),
                ..JobListRequest::default()
            })
            .await
            .unwrap_or_else(|e| panic!("listing on {url}: {e}"));
        for job in page.jobs {
            *found
                .entry(job.idempotency_key.unwrap_or_default())
                .or_default() += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for key in keys {
        assert_eq!(found.get(key), Some(&1), "{url}: job {key}");
    }
}

async fn snapshots_installed(url: &str) -> u64 {
    let body = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("tanvrit_raft_snapshots_installed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_it_writes_a_snapshot_to_send_restarts_with_everything() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    // No log kept behind a snapshot: a replica that missed one is sent one, which the
    // leader writes from its tables at that moment.
    let mut cluster = start(root.path(), "0").await;
    let client = cluster.admin_client(20);
    let mut keys: Vec<String> = Vec::new();
    let mut caught = false;
    for round in 0..10 {
        let leader = cluster.leader(PATIENCE).await.unwrap();
        let lagging = (leader + 1) % 3;
        cluster.replica_mut(lagging).kill9().await;
        let batch: Vec<String> = (0..1500).map(|n| format!("b{round}-{n}")).collect();
        keys.extend(batch.clone());
        submit_all(&client, batch).await;
        let dir = cluster.replica(leader).data_dir().to_path_buf();
        cluster.replica_mut(lagging).restart().await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if !unfinished(&dir, "build-").is_empty() {
                cluster.replica_mut(leader).kill9().await;
                caught = !unfinished(&dir, "build-").is_empty();
                cluster.replica_mut(leader).restart().await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if caught {
            break;
        }
    }
    assert!(caught, "no kill landed while a snapshot was being written");
    let last = submit_all(&client, ["after-the-kill".to_string()]).await;
    keys.push("after-the-kill".into());
    for url in cluster.urls() {
        assert_holds(&url, &keys, last).await;
    }
    for replica in 0..3 {
        let dir = cluster.replica(replica).data_dir();
        assert_eq!(kept_snapshot_files(dir), Vec::<PathBuf>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_it_installs_a_snapshot_restarts_and_catches_up() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    // No log kept behind a snapshot: a replica that missed one must install it.
    let mut cluster = start(root.path(), "0").await;
    let client = cluster.admin_client(20);
    let leader = cluster.leader(PATIENCE).await.unwrap();
    let victim = (leader + 1) % 3;
    let dir = cluster.replica(victim).data_dir().to_path_buf();
    let mut keys: Vec<String> = Vec::new();
    let mut caught = false;
    for round in 0..10 {
        cluster.replica_mut(victim).kill9().await;
        let batch: Vec<String> = (0..1500).map(|n| format!("i{round}-{n}")).collect();
        keys.extend(batch.clone());
        submit_all(&client, batch).await;
        cluster.replica_mut(victim).restart().await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if !unfinished(&dir, "incoming-").is_empty() {
                cluster.replica_mut(victim).kill9().await;
                caught = !unfinished(&dir, "incoming-").is_empty();
                cluster.replica_mut(victim).restart().await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if caught {
            break;
        }
    }
    assert!(caught, "no kill landed while a snapshot was being received");
    let last = submit_all(&client, ["after-the-kill".to_string()]).await;
    keys.push("after-the-kill".into());
    let url = cluster.replica(victim).url().to_string();
    assert_holds(&url, &keys, last).await;
    assert!(
        snapshots_installed(&url).await >= 1,
        "the restarted replica caught up by installing a snapshot"
    );
    assert!(unfinished(&dir, "incoming-").is_empty());
    assert_eq!(kept_snapshot_files(&dir), Vec::<PathBuf>::new());
}
