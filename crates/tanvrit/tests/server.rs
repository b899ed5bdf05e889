//! `tanvrit dev` and `tanvrit server` as real processes on 127.0.0.1:0, driven by the
//! `tanvrit` client commands: out of the box a job can be submitted, the welcome credits
//! are written once across restarts, SIGTERM stops the server, and Raft mode needs its
//! cluster secret and runs with one voter when no peers are given.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");

/// A command with no `TANVRIT_*` or `RUST_LOG` inherited from the test's environment.
fn clean(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("TANVRIT_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.args(args);
    command
}

/// A running server and the lines it printed up to `listening on`.
struct Running {
    child: Child,
    lines: Vec<String>,
    url: String,
    /// The CA file `dev` exported (its API is over TLS).
    ca: Option<String>,
}

/// Starts `tanvrit <mode>` on a free port and waits (bounded) for its `listening on` line.
async fn start(mode: &str, data_dir: &Path, env: &[(&str, &str)]) -> Running {
    let mut child = clean(&[
        mode,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--api-addr",
        "127.0.0.1:0",
    ])
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line.clone());
            if let Some(url) = line.strip_prefix("listening on ") {
                return url.to_string();
            }
        }
        panic!("the server exited before listening: {lines:?}");
    })
    .await
    .expect("no `listening on` line within 60 s");
    let ca = lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("TANVRIT_CA_FILE="))
        .map(str::to_string);
    Running {
        child,
        lines,
        url,
        ca,
    }
}

impl Running {
    /// The value `dev` printed for `name` in its `export` line.
    fn exported(&self, name: &str) -> String {
        let line = self
            .lines
            .iter()
            .find(|l| l.trim_start().starts_with("export "))
            .expect("dev prints an export line");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} is not in `{line}`"))
            .to_string()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server did not stop within 30 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
    }
}

/// Runs a client command against `server` with `key`; returns (exit code, stdout, stderr).
async fn client(server: &Running, key: &str, args: &[&str]) -> (i32, String, String) {
    let mut command = clean(args);
    if let Some(ca) = &server.ca {
        command.env("TANVRIT_CA_FILE", ca);
    }
    let output = command
        .env("TANVRIT_ADDR", &server.url)
        .env("TANVRIT_API_KEY", key)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn client_json(server: &Running, key: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = client(server, key, &all).await;
    assert_eq!(code, 0, "{args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn dev_works_out_of_the_box_and_tops_up_once_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    // As a directory made with the usual umask would be: dev makes it private.
    std::fs::set_permissions(
        data.path(),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let dev = start("dev", data.path(), &[]).await;
    let key = dev.exported("TANVRIT_API_KEY");
    assert_eq!(dev.exported("TANVRIT_ADDR"), dev.url);
    // TLS by default, with a throwaway CA in the data directory.
    assert!(dev.url.starts_with("https://"), "{}", dev.url);
    assert_eq!(
        Path::new(&dev.exported("TANVRIT_CA_FILE")),
        data.path().join("tls/ca.pem")
    );
    assert!(
        dev.lines.iter().any(|l| l.contains("local agent: ")),
        "{:?}",
        dev.lines
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.path()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the jobs it runs cannot read its data");

    let (code, stdout, stderr) =
        client(&dev, &key, &["job", "submit", "--", "echo", "hello"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("pending"), "{stdout}");
    let jobs = client_json(&dev, &key, &["job", "list"]).await;
    assert_eq!(jobs["jobs"][0]["business"], "default");
    // The local agent runs it: following its logs shows the output, then ends.
    let id = jobs["jobs"][0]["id"].as_str().unwrap().to_string();
    let (code, stdout, stderr) = tokio::time::timeout(
        Duration::from_secs(60),
        client(&dev, &key, &["job", "logs", "-f", &id]),
    )
    .await
    .expect("`job logs -f` ends once the job has");
    assert_eq!((code, stdout.as_str()), (0, "hello\n"), "{stderr}");
    let job = client_json(&dev, &key, &["job", "get", &id]).await;
    assert_eq!(job["job"]["state"], "succeeded");

    let entries = client_json(&dev, &key, &["credit", "entries", "--business", "default"]).await;
    let top_ups = |entries: &Value| {
        entries["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "top_up")
            .map(|e| e["amount"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(top_ups(&entries), vec![1_000_000_000]);
    dev.terminate().await;

    // The same data directory: the same admin key, and no second welcome top-up.
    let again = start("dev", data.path(), &[]).await;
    assert_eq!(again.exported("TANVRIT_API_KEY"), key);
    let entries = client_json(
        &again,
        &key,
        &["credit", "entries", "--business", "default"],
    )
    .await;
    assert_eq!(top_ups(&entries), vec![1_000_000_000]);
    let jobs = client_json(&again, &key, &["job", "list"]).await;
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        1,
        "the job survived the restart"
    );
    again.terminate().await;
}

#[tokio::test]
async fn server_uses_the_bootstrap_key_and_reports_its_topology() {
    let data = tempfile::tempdir().unwrap();
    let key = "a-bootstrap-key-for-tests";
    let server = start(
        "server",
        data.path(),
        &[("TANVRIT_BOOTSTRAP_KEY", key), ("TANVRIT_REPLICA_ID", "r7")],
    )
    .await;
    let topology = client_json(&server, key, &["cluster", "topology"]).await;
    assert_eq!(topology["this_replica"], "r7");
    assert_eq!(topology["mode"], "single_node");
    assert_eq!(
        format!(
            "http://{}",
            topology["replicas"][0]["address"].as_str().unwrap()
        ),
        server.url,
        "the topology shows the bound port, not port 0"
    );
    let (code, _, stderr) = client(&server, "wrong-key-wrong-key", &["key", "list"]).await;
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: unauthorized: "), "{stderr}");
    server.terminate().await;
}

#[tokio::test]
async fn raft_mode_without_a_cluster_secret_is_refused_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let output = clean(&["server", "--data-dir", data.path().to_str().unwrap()])
        .env("TANVRIT_CLUSTER_RAFT", "true")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: cluster_secret_missing: ")
            && stderr.contains("TANVRIT_CLUSTER_SECRET"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(data.path()).unwrap().next().is_none(),
        "nothing was written before refusing"
    );
}

#[tokio::test]
async fn raft_mode_with_no_peers_is_a_one_voter_cluster_that_takes_writes() {
    let data = tempfile::tempdir().unwrap();
    let key = "a-bootstrap-key-for-tests";
    let raft_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let raft_addr = format!("127.0.0.1:{raft_port}");
    let server = start(
        "server",
        data.path(),
        &[
            ("TANVRIT_CLUSTER_RAFT", "true"),
            ("TANVRIT_CLUSTER_SECRET", "a-cluster-secret-for-tests"),
            ("TANVRIT_RAFT_ADDR", &raft_addr),
            ("TANVRIT_BOOTSTRAP_KEY", key),
            ("TANVRIT_RAFT_PROFILE", "lan"),
        ],
    )
    .await;
    // The admin key is written once the replica elected itself; poll for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let topology = loop {
        let (code, stdout, stderr) = client(&server, key, &["--json", "cluster", "topology"]).await;
        if code == 0 {
            break serde_json::from_str::<Value>(&stdout).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(topology["mode"], "raft");
    assert_eq!(topology["replicas"][0]["address"], raft_addr.as_str());
    assert_eq!(
        format!(
            "http://{}",
            topology["replicas"][0]["api_address"].as_str().unwrap()
        ),
        server.url
    );
    let (code, stdout, stderr) = client(
        &server,
        key,
        &["job", "submit", "--business", "acme", "--", "echo", "hi"],
    )
    .await;
    // No credits yet: the submission is refused by the state machine, through Raft.
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("insufficient_credits"), "{stderr}");
    let metrics = reqwest_free_get(&server.url, "/metrics").await;
    assert!(
        metrics.contains("tanvrit_raft_role{role=\"leader\"} 1"),
        "{metrics}"
    );
    server.terminate().await;
}

/// `GET path` with the SDK's raw call (no key needed for `/metrics`).
async fn reqwest_free_get(url: &str, path: &str) -> String {
    let client = tanvrit_client::Client::new(tanvrit_client::ClientConfig {
        endpoints: vec![url.to_string()],
        ..Default::default()
    })
    .unwrap();
    client.get_raw(path, &[]).await.unwrap().text()
}
