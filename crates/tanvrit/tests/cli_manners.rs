//! The CLI's manners against a real `tanvrit server` process: a closed pipe ends a
//! command quietly with status 0; a user key's jobs go to its own business without
//! `--business`; `job list --all` pages through more than one page; `-o yaml|wide`;
//! shell completions; server logs as JSON lines; `job list --watch` and `node list
//! --watch` follow changes; `tanvrit events` and `tanvrit job watch`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use tanvrit_api::{
    CreditEntryCreateRequest, EntryKind, JobSpec, JobSubmitRequest, KeyCreateRequest, Scope,
};
use tanvrit_client::Client;
use tanvrit_testkit::process::{ServerProcess, TEST_ADMIN_KEY};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn command(url: &str, key: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("TANVRIT_") || name == "RUST_LOG" || name == "NO_COLOR" {
            command.env_remove(name);
        }
    }
    command
        .env("TANVRIT_ADDR", url)
        .env("TANVRIT_API_KEY", key)
        .args(args)
        .kill_on_drop(true);
    command
}

async fn tanvrit(url: &str, key: &str, args: &[&str]) -> Run {
    let output = command(url, key, args).output().await.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the command with its stdout a pipe whose reading end is already closed, as
/// `tanvrit ... | head -0` leaves it: every write to stdout fails with a broken pipe.
async fn into_closed_pipe(url: &str, args: &[&str]) -> Run {
    let mut child = command(url, TEST_ADMIN_KEY, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().await.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn server(dir: &Path) -> (ServerProcess, Client) {
    let server = ServerProcess::start(Path::new(BIN), &dir.join("data"), &[])
        .await
        .unwrap();
    let admin = server.admin_client(3);
    for business in ["acme", "default"] {
        admin
            .create_credit_entry(CreditEntryCreateRequest {
                business: business.into(),
                kind: EntryKind::TopUp,
                amount: 1_000_000_000_000,
                idempotency_key: Some(format!("top-up-{business}")),
                note: None,
            })
            .await
            .unwrap();
    }
    (server, admin)
}

async fn submit_many(admin: &Client, count: usize) {
    futures::stream::iter(0..count)
        .map(|n| {
            let admin = admin.clone();
            async move {
                admin
                    .submit_job(JobSubmitRequest {
                        business: Some("acme".into()),
                        spec: JobSpec {
                            command: vec!["true".into()],
                            ..JobSpec::default()
                        },
                        idempotency_key: Some(format!("many-{n}")),
                    })
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_a_command_quietly_with_status_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    submit_many(&admin, 5).await;
    for args in [
        &["job", "list"][..],
        &["job", "list", "--json"],
        &["node", "list"],
        &["job", "list", "-o", "yaml"],
        &["cluster", "topology"],
    ] {
        let run = into_closed_pipe(server.url(), args).await;
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr, "", "{args:?} printed on stderr");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_key_submits_to_its_own_business_without_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    let user = admin
        .create_key(KeyCreateRequest {
            name: Some("acme ci".into()),
            scope: Scope::User,
            business: Some("acme".into()),
            node: None,
        })
        .await
        .unwrap()
        .secret;
    let run = tanvrit(
        server.url(),
        &user,
        &["-o", "json", "job", "submit", "--", "true"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["job"]["business"], "acme");
    let run = tanvrit(
        server.url(),
        &user,
        &[
            "-o",
            "json",
            "schedule",
            "create",
            "--cron",
            "0 0 * * *",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["schedule"]["business"], "acme");
    // An admin key still bills `default` when it names nothing.
    let run = tanvrit(
        server.url(),
        TEST_ADMIN_KEY,
        &["--json", "job", "submit", "--", "true"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["job"]["business"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_list_all_pages_through_more_than_a_page_and_prints_yaml_or_wide() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    submit_many(&admin, 1005).await;
    let run = tanvrit(
        server.url(),
        TEST_ADMIN_KEY,
        &["job", "list", "--all", "--json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let all: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let ids: std::collections::BTreeSet<&str> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1005, "every job once");
    assert!(all["next"].is_null());

    let run = tanvrit(
        server.url(),
        TEST_ADMIN_KEY,
        &["job", "list", "--limit", "1002", "-o", "yaml"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("\n- id: job-").count(),
        1002,
        "a limit above a page is paged"
    );

    let run = tanvrit(
        server.url(),
        TEST_ADMIN_KEY,
        &["job", "list", "--limit", "1", "-o", "wide"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("PRIORITY"), "{}", run.stdout);
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let run = tanvrit("http://127.0.0.1:9", "k", &["completion", shell]).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(run.stdout.contains("tanvrit"), "{shell}");
        assert!(
            run.stdout.contains("watch"),
            "{shell}: subcommands are completed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_logs_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command("http://127.0.0.1:9", TEST_ADMIN_KEY, &[])
        .args([
            "--log-format",
            "json",
            "server",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("TANVRIT_BOOTSTRAP_KEY", TEST_ADMIN_KEY)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a log line");
    let line: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert!(line["level"].is_string(), "{first}");
    assert!(line["fields"]["message"].is_string(), "{first}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_list_watch_prints_each_change_after_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    let mut child = command(
        server.url(),
        TEST_ADMIN_KEY,
        &["job", "list", "--watch", "--business", "acme", "-o", "json"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The list (one JSON document, pretty-printed) ends with its closing brace.
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "}" {
                return;
            }
        }
        panic!("the list was not printed");
    });
    started.await.unwrap();
    submit_many(&admin, 1).await;
    let watched = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a watched change");
    let job: serde_json::Value = serde_json::from_str(&watched).unwrap();
    assert_eq!(job["business"], "acme");
    assert_eq!(job["state"], "pending");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_list_watch_prints_a_node_that_registers_after_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    let mut child = command(
        server.url(),
        TEST_ADMIN_KEY,
        &["node", "list", "--watch", "-o", "json"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "}" {
                return;
            }
        }
        panic!("the list was not printed");
    })
    .await
    .unwrap();
    admin
        .register_node(tanvrit_api::NodeRegisterRequest {
            id: "node-watched".into(),
            name: "watched".into(),
            resources: tanvrit_api::Resources {
                cpu_millis: 1000,
                memory_mb: 512,
                gpus: 0,
            },
            drivers: Vec::new(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a watched change");
    let node: serde_json::Value = serde_json::from_str(&watched).unwrap();
    assert_eq!(node["id"], "node-watched");
    assert_eq!(node["state"], "ready");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_job_watch_follow_the_stream_and_end_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    submit_many(&admin, 2).await;
    // From the start, job events only: the two submissions; --limit ends it.
    let run = tanvrit(
        server.url(),
        TEST_ADMIN_KEY,
        &[
            "events",
            "--from-index",
            "0",
            "--topic",
            "job",
            "--limit",
            "2",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert!(
        events.iter().all(|e| e["type"] == "job_pending"),
        "{events:?}"
    );

    // `job watch` prints the job, then its changes, and ends with the job.
    let job = admin
        .submit_job(JobSubmitRequest {
            business: Some("acme".into()),
            spec: JobSpec {
                command: vec!["true".into()],
                ..JobSpec::default()
            },
            idempotency_key: Some("watched".into()),
        })
        .await
        .unwrap()
        .job
        .id;
    let mut child = command(
        server.url(),
        TEST_ADMIN_KEY,
        &["job", "watch", job.as_str(), "-o", "json"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the job now");
    assert!(first.contains("\"pending\""), "{first}");
    admin
        .cancel_job(&job, tanvrit_api::JobActionRequest { reason: None })
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("job watch ends with the job")
        .unwrap();
    assert!(status.success());
    let mut last = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        last = line;
    }
    let event: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(event["type"], "job_cancelled", "{last}");
}
