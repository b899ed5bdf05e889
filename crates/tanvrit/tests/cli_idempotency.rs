//! `--idempotency-key` on the CLI's write commands and `credit export`, against a
//! scripted HTTP server on 127.0.0.1:0 that records each request's headers.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

type Script = dyn Fn(&str) -> Response + Send + Sync;

async fn server(
    script: impl Fn(&str) -> Response + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let record = seen.clone();
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let record = record.clone();
        let script = script.clone();
        async move {
            record.lock().unwrap().push(Seen {
                path: uri.path().to_string(),
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            script(uri.path())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn tanvrit(addr: &str, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tanvrit"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TANVRIT_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .env("TANVRIT_ADDR", addr)
        .env("TANVRIT_API_KEY", "test-key")
        .args(args);
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, [("x-tanvrit-index", "3")], axum::Json(body)).into_response()
}

fn job() -> Value {
    json!({"job": {
        "id": "job-1", "business": "acme", "spec": {"command": ["true"]},
        "state": "cancelled", "created_at": 0, "updated_at": 0
    }, "index": 3})
}

fn node() -> Value {
    json!({"node": {
        "id": "node-1", "name": "n1", "resources": {"cpu_millis": 1000, "memory_mb": 1, "gpus": 0},
        "state": "draining", "registered_at": 0, "updated_at": 0
    }, "index": 3})
}

#[tokio::test]
async fn write_commands_send_their_idempotency_key_as_the_header() {
    let (addr, seen) = server(|path| {
        if path.starts_with("/api/compute/jobs/") {
            ok(job())
        } else if path.starts_with("/api/compute/nodes/") {
            ok(node())
        } else if path.ends_with("/revoke") {
            ok(json!({"key": {
                "id": "key-1", "name": "k", "scope": "agent", "created_at": 0, "revoked_at": 5
            }, "index": 3}))
        } else {
            ok(json!({"index": 3}))
        }
    })
    .await;
    let commands: [&[&str]; 6] = [
        &["job", "cancel", "job-1", "--idempotency-key", "k-cancel"],
        &["job", "retry", "job-1", "--idempotency-key", "k-retry"],
        &["node", "drain", "node-1", "--idempotency-key", "k-drain"],
        &["node", "delete", "node-1", "--idempotency-key", "k-delete"],
        &["key", "revoke", "key-1", "--idempotency-key", "k-revoke"],
        &[
            "schedule",
            "delete",
            "sch-1",
            "--idempotency-key",
            "k-sched",
        ],
    ];
    for args in commands {
        let run = tanvrit(&addr, args).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    }
    let run = tanvrit(&addr, &["job", "cancel", "job-1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = seen.lock().unwrap();
    let keys: Vec<_> = seen
        .iter()
        .map(|s| {
            s.headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        keys,
        ["k-cancel", "k-retry", "k-drain", "k-delete", "k-revoke", "k-sched",]
            .iter()
            .map(|k| Some(k.to_string()))
            .chain([None])
            .collect::<Vec<_>>()
    );
    assert_eq!(seen[4].path, "/api/compute/keys/key-1/revoke");
}

#[tokio::test]
async fn a_submit_key_is_the_header_and_the_jobs_own_key() {
    let (addr, seen) = server(|_| ok(job())).await;
    let run = tanvrit(
        &addr,
        &[
            "job",
            "submit",
            "--idempotency-key",
            "order-17",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].headers["idempotency-key"], "order-17");
    assert_eq!(seen[0].body["idempotency_key"], "order-17");
}

#[tokio::test]
async fn a_repeated_key_creation_fails_naming_the_code() {
    let (addr, _) = server(|_| {
        (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": {
                "code": "idempotent_replay_secret_unavailable",
                "message": "this idempotency key already created key `key-1`",
                "id": "key-1"
            }})),
        )
            .into_response()
    })
    .await;
    let run = tanvrit(
        &addr,
        &[
            "key",
            "create",
            "--scope",
            "agent",
            "--idempotency-key",
            "ci",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("idempotent_replay_secret_unavailable") && run.stderr.contains("key-1"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn credit_export_prints_the_csv_as_received() {
    let csv = "seq,id,at,kind,amount,balance_after,job,idempotency_key,note\r\n\
               1,e1,2026-01-02T00:00:00.000Z,top_up,5,5,,k,\"a, b\"\r\n";
    let (addr, seen) = server(move |_| {
        (
            StatusCode::OK,
            [("content-type", "text/csv; charset=utf-8")],
            csv,
        )
            .into_response()
    })
    .await;
    let run = tanvrit(
        &addr,
        &[
            "credit",
            "export",
            "--business",
            "acme",
            "--from",
            "2026-01-02",
            "--to",
            "1767398400000",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, csv);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].path, "/api/compute/credits/entries/export");
    assert_eq!(seen[0].body["business"], "acme");
    assert_eq!(seen[0].body["from"], 1_767_312_000_000i64);
    assert_eq!(seen[0].body["to"], 1_767_398_400_000i64);
}

fn schedule() -> Value {
    json!({"schedule": {
        "id": "sch-1", "business": "acme", "cron": "* * * * *", "timezone": "UTC",
        "template": {"command": ["true"]}, "enabled": true, "overlap": "allow",
        "catch_up": {"all": 5}, "created_at": 0, "updated_at": 0, "fired": 0,
        "skipped": 0, "modify_index": 3
    }, "index": 3})
}

#[tokio::test]
async fn schedule_create_and_update_send_the_catch_up_policy_given() {
    let (addr, seen) = server(|_| ok(schedule())).await;
    let create = [
        "schedule",
        "create",
        "--cron",
        "* * * * *",
        "--catch-up",
        "all:5",
        "--",
        "true",
    ];
    let run = tanvrit(&addr, &create).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("all:5"), "{}", run.stdout);
    let run = tanvrit(
        &addr,
        &["schedule", "update", "sch-1", "--catch-up", "skip"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = tanvrit(&addr, &["schedule", "update", "sch-1", "--name", "n"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A bad value is a usage error, and nothing is sent.
    let run = tanvrit(
        &addr,
        &["schedule", "update", "sch-1", "--catch-up", "all:0"],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("catch-up policy"), "{}", run.stderr);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].path, "/api/compute/schedules/create");
    assert_eq!(seen[0].body["catch_up"], json!({"all": 5}));
    assert_eq!(seen[1].body["catch_up"], json!("skip"));
    // Not given: not sent, so the schedule keeps its policy.
    assert!(seen[2].body.get("catch_up").is_none_or(Value::is_null));
}
