//! The `tanvrit` binary against a scripted HTTP server on 127.0.0.1:0: what it sends,
//! what it prints, and its exit codes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

type Script = dyn Fn(&str, &Value) -> Response + Send + Sync;
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Records `(path, body)` of every request and answers with `script(path, body)`.
async fn server(
    script: impl Fn(&str, &Value) -> Response + Send + Sync + 'static,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let record = seen.clone();
    let app = Router::new().fallback(move |uri: Uri, body: Bytes| {
        let record = record.clone();
        let script = script.clone();
        async move {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            record
                .lock()
                .unwrap()
                .push((uri.path().to_string(), body.clone()));
            script(uri.path(), &body)
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

/// Runs the binary with a clean `TANVRIT_*` environment plus `env`.
async fn tanvrit(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tanvrit"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TANVRIT_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .env("TANVRIT_ADDR", addr)
        .env("TANVRIT_API_KEY", "test-key")
        .envs(env.iter().copied())
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

fn job(id: &str, business: &str) -> Value {
    json!({
        "id": id, "business": business, "spec": {"command": ["echo", "hello"]},
        "state": "pending", "created_at": 0, "updated_at": 0
    })
}

fn logs(offset: u64, data: &str, complete: bool) -> Response {
    ok(json!({
        "attempt": "a-1", "offset": offset, "data": data,
        "next_offset": offset + data.len() as u64, "complete": complete, "index": 3
    }))
}

#[tokio::test]
async fn an_api_error_exits_1_with_its_code_on_stderr() {
    let (addr, _) = server(|_, _| {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "not_found", "message": "job `j9` not found"}})),
        )
            .into_response()
    })
    .await;
    let run = tanvrit(&addr, &["job", "get", "j9"], &[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: not_found: job `j9` not found");
    assert!(run.stdout.is_empty());
}

#[tokio::test]
async fn an_unreachable_server_exits_1_with_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let run = tanvrit(&addr, &["--retries", "0", "cluster", "topology"], &[]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: transport: "),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_usage_error_exits_2_before_anything_is_sent() {
    let (addr, seen) = server(|_, _| ok(json!({}))).await;
    let run = tanvrit(
        &addr,
        &["credit", "add", "--business", "b", "--amount", "1e3"],
        &[],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("not an amount of credits"),
        "{}",
        run.stderr
    );
    let run = tanvrit("ftp://nowhere", &["job", "list"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: config: "), "{}", run.stderr);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn job_submit_bills_the_keys_business_or_default_for_an_admin_and_prints_json() {
    // As the server answers: a user key's business is filled in; an admin key must name one.
    let (addr, seen) = server(|_, body| match body["business"].as_str() {
        Some(business) => ok(json!({"job": job("job-1", business), "index": 3})),
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": {
                "code": "invalid",
                "message": "admin keys must name the `business` to act on"
            }})),
        )
            .into_response(),
    })
    .await;
    let run = tanvrit(
        &addr,
        &["--json", "job", "submit", "--", "echo", "hello"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["job"]["id"], "job-1");
    assert_eq!(printed["index"], 3);

    let run = tanvrit(
        &addr,
        &["job", "submit", "--shell", "echo hi | wc -c"],
        &[("TANVRIT_BUSINESS", "acme")],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("job-1") && run.stdout.contains("acme"),
        "{}",
        run.stdout
    );

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0, "/api/compute/jobs/submit");
    // No business named: the key's own; refused for an admin key, so `default` next.
    assert!(seen[0].1["business"].is_null(), "{}", seen[0].1);
    assert_eq!(seen[1].1["business"], "default");
    assert_eq!(seen[1].1["command"], json!(["echo", "hello"]));
    assert!(
        seen[1].1["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("sdk-"),
        "retries are on by default, so the submit carries a key"
    );
    assert_eq!(seen[2].1["business"], "acme");
    assert_eq!(seen[2].1["shell"], "echo hi | wc -c");
}

#[tokio::test]
async fn credit_add_sends_exact_micro_credits() {
    let (addr, seen) = server(|_, body| {
        ok(json!({
            "entry": {
                "id": "e1", "seq": 1, "business": body["business"], "kind": body["kind"],
                "amount": body["amount"], "balance_after": body["amount"],
                "idempotency_key": body["idempotency_key"], "at": 0
            },
            "index": 3
        }))
    })
    .await;
    let run = tanvrit(
        &addr,
        &[
            "credit",
            "add",
            "--business",
            "acme",
            "--amount",
            "1000.1",
            "--idempotency-key",
            "dev-welcome",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("1000.1"), "{}", run.stdout);
    let run = tanvrit(
        &addr,
        &[
            "credit",
            "add",
            "--business",
            "acme",
            "--micro",
            "-7",
            "--kind",
            "adjustment",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].1["amount"], 1_000_100_000i64);
    assert_eq!(seen[0].1["kind"], "top_up");
    assert_eq!(seen[0].1["idempotency_key"], "dev-welcome");
    assert_eq!(seen[1].1["amount"], -7);
    assert_eq!(seen[1].1["kind"], "adjustment");
}

#[tokio::test]
async fn job_logs_follow_prints_output_until_the_attempt_completes() {
    let polls_at_six = Arc::new(AtomicUsize::new(0));
    let (addr, seen) = server(move |_, body| match body["offset"].as_u64().unwrap() {
        0 => logs(0, "hello\n", false),
        // The first poll past "hello" times out empty, as a long poll does; the next
        // one brings the rest and the attempt's end.
        6 if polls_at_six.fetch_add(1, Ordering::SeqCst) == 0 => logs(6, "", false),
        offset => logs(offset, "world\n", true),
    })
    .await;
    let run = tanvrit(&addr, &["job", "logs", "job-1", "--follow"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "hello\nworld\n");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0, "/api/compute/jobs/job-1/logs");
    assert!(
        seen[0].1["attempt"].is_null(),
        "the first poll asks for the current attempt"
    );
    for (_, body) in &seen[1..] {
        assert_eq!(body["attempt"], "a-1", "later polls stay on that attempt");
        assert!(body["wait_ms"].as_u64().unwrap() > 0, "follow long-polls");
    }
}

#[tokio::test]
async fn job_logs_without_follow_prints_what_is_there_and_stops() {
    let (addr, seen) = server(|_, body| match body["offset"].as_u64().unwrap() {
        0 => logs(0, "partial\n", false),
        offset => logs(offset, "", false),
    })
    .await;
    let run = tanvrit(&addr, &["job", "logs", "job-1"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "partial\n");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, body)| body["wait_ms"].is_null()));
}

#[tokio::test]
async fn key_create_prints_the_secret_once_clearly() {
    let (addr, seen) = server(|_, _| {
        ok(json!({
            "key": {"id": "key-1", "name": "ci", "scope": "user", "business": "acme", "created_at": 0},
            "secret": "tv_secret_value",
            "index": 3
        }))
    })
    .await;
    let run = tanvrit(
        &addr,
        &[
            "key",
            "create",
            "--scope",
            "user",
            "--business",
            "acme",
            "--name",
            "ci",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("shown only this once"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.matches("tv_secret_value").count(), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0].1,
        json!({"name": "ci", "scope": "user", "business": "acme"})
    );
}
