//! Data directories written by an earlier `tanvrit` (checked in under
//! `tests/fixtures/v1/`, made by `fixtures/make-old-data-dirs.sh` with the binary of
//! commit ed663d5: snapshots as JSON records inside the database) start on this binary
//! and keep every job, attempt, output, key, ledger entry and schedule: a single node,
//! and the three replicas of a Raft cluster. Each test runs on a copy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
/// The admin key the fixtures were made with.
const KEY: &str = "fixture-admin-key-0123456789";
const PATIENCE: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs the CLI against `addr` with `--json`; the parsed answer, or `None` on failure.
async fn cli(addr: &str, args: &[&str]) -> Option<Value> {
    let output = tokio::process::Command::new(BIN)
        .args(["--addr", addr, "--retries", "3", "--json"])
        .args(args)
        .env("TANVRIT_API_KEY", KEY)
        .env_remove("TANVRIT_ADDR")
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

async fn wait_ready(addr: &str) {
    let deadline = Instant::now() + PATIENCE;
    while cli(addr, &["job", "list", "--business", "acme", "--limit", "1"])
        .await
        .is_none()
    {
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// What must survive, in a form that leaves out what a read adds (its index).
fn jobs(v: &Value) -> Vec<String> {
    sorted(
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                let attempts: Vec<String> = j["attempts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| format!("{}:{}", a["id"], a["state"]))
                    .collect();
                format!(
                    "{} {} {} {:?}",
                    j["id"], j["state"], j["spec"]["name"], attempts
                )
            })
            .collect(),
    )
}

fn by_field(v: &Value, list: &str, fields: &[&str]) -> Vec<String> {
    sorted(
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                fields
                    .iter()
                    .map(|f| item[*f].to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect(),
    )
}

/// Every read of `expected.json` answers the same on `addr`.
async fn assert_keeps_everything(addr: &str, expected: &Value) {
    let now = cli(
        addr,
        &["job", "list", "--business", "acme", "--limit", "1000"],
    )
    .await
    .unwrap();
    assert_eq!(jobs(&now), jobs(&expected["jobs"]), "jobs and attempts");
    let now = cli(addr, &["key", "list"]).await.unwrap();
    let key_fields = ["id", "name", "scope", "business", "revoked_at"];
    let kept: Vec<String> = by_field(&expected["keys"], "keys", &key_fields);
    let found = by_field(&now, "keys", &key_fields);
    for key in &kept {
        assert!(found.contains(key), "key {key} is gone: {found:?}");
    }
    let entry_fields = ["id", "seq", "kind", "amount", "balance_after", "job"];
    let now = cli(
        addr,
        &["credit", "entries", "--business", "acme", "--limit", "1000"],
    )
    .await
    .unwrap();
    assert_eq!(
        by_field(&now, "entries", &entry_fields),
        by_field(&expected["entries"], "entries", &entry_fields),
        "ledger entries"
    );
    let now = cli(addr, &["credit", "balance", "--business", "acme"])
        .await
        .unwrap();
    for field in ["available", "held", "entries"] {
        assert_eq!(now[field], expected["balance"][field], "balance {field}");
    }
    let schedule_fields = ["id", "business", "name", "cron", "timezone"];
    let now = cli(addr, &["schedule", "list"]).await.unwrap();
    assert_eq!(
        by_field(&now, "schedules", &schedule_fields),
        by_field(&expected["schedules"], "schedules", &schedule_fields),
        "schedules"
    );
    for (job, log) in expected["logs"].as_object().unwrap() {
        let old: Value = serde_json::from_str(log.as_str().unwrap()).unwrap();
        let now = cli(addr, &["job", "logs", job]).await.unwrap();
        assert_eq!(now["data"], old["data"], "output of {job}");
        assert!(old["data"].as_str().unwrap().starts_with("hello-"));
    }
}

fn expected(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_data_directory_of_the_previous_format_starts_and_keeps_everything() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("single");
    copy_dir(&fixture("single"), &dir);
    let expected = expected(&dir);
    for round in 0..2 {
        // The second start reads what the first wrote in the new format.
        let mut server = tokio::process::Command::new(BIN)
            .args(["server", "--data-dir"])
            .arg(&dir)
            .args(["--api-addr", "127.0.0.1:27110", "--snapshot-every", "5"])
            .env("RUST_LOG", "warn")
            // The fixture's `nightly` schedule would fire its latest missed time.
            .env("TANVRIT_SCHEDULES_PAUSED", "true")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = "http://127.0.0.1:27110";
        wait_ready(addr).await;
        assert_keeps_everything(addr, &expected).await;
        // Writes go on, into the state tables; the old snapshot was moved into them.
        for n in 0..12 {
            cli(
                addr,
                &["credit", "add", "--business", "zeta", "--amount", "1"],
            )
            .await
            .unwrap_or_else(|| panic!("round {round}: write {n} failed"));
        }
        let snapshots = dir.join("snapshots/single");
        assert!(
            !std::fs::read_dir(&snapshots)
                .map(|d| d
                    .filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "snap")))
                .unwrap_or(false),
            "the old snapshot files were removed once the tables held them: {}",
            snapshots.display()
        );
        let balance = cli(addr, &["credit", "balance", "--business", "zeta"])
            .await
            .unwrap();
        assert_eq!(balance["entries"], 12 * (round + 1), "{balance}");
        server.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_of_a_raft_cluster_of_the_previous_format_start_and_keep_everything() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("raft");
    copy_dir(&fixture("raft"), &dir);
    let expected = expected(&dir);
    // The ports the fixture's cluster was made on: its membership names them.
    let mut cluster = tokio::process::Command::new(BIN)
        // Plain HTTP, as the fixture's cluster was made (a secret between replicas).
        .args(["dev", "--insecure", "--replicas", "3", "--data-dir"])
        .arg(&dir)
        .args(["--api-addr", "127.0.0.1:27101"])
        .env("RUST_LOG", "error")
        .env("TANVRIT_SCHEDULES_PAUSED", "true")
        .env("TANVRIT_BOOTSTRAP_KEY", KEY)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addrs = [
        "http://127.0.0.1:27101",
        "http://127.0.0.1:27103",
        "http://127.0.0.1:27105",
    ];
    for addr in addrs {
        wait_ready(addr).await;
    }
    // A write through the cluster, then every replica read at its index.
    let wrote = cli(
        &addrs.join(","),
        &["credit", "add", "--business", "zeta", "--amount", "1"],
    )
    .await
    .expect("the upgraded cluster takes writes");
    assert!(wrote["index"].as_u64().is_some(), "{wrote}");
    for addr in addrs {
        assert_keeps_everything(addr, &expected).await;
    }
    for replica in 1..=3 {
        let snapshots = dir.join(format!("replica-{replica}/snapshots/raft"));
        let files: Vec<_> = std::fs::read_dir(&snapshots)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        // The stored snapshot record went through a file into the tables (which hold
        // everything, above); the tables are the snapshot now, so no file is kept.
        assert!(
            files.is_empty(),
            "replica {replica}: no snapshot file is kept: {files:?}"
        );
    }
    cluster.kill().await.unwrap();
}
