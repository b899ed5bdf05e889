//! `Idempotency-Key` on every client write, and the ledger's CSV export, driven in
//! process through `router` against a real `SingleNode` in a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tanvrit_api::Rates;
use tanvrit_cluster::{ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_server::{ensure_bootstrap_admin, router, ServerConfig};
use tempfile::TempDir;
use tower::ServiceExt;

const ADMIN: &str = "test-admin-secret-0001";

struct Api {
    cluster: Arc<SingleNode>,
    router: Router,
    dir: TempDir,
    config: ServerConfig,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// JSON, or the text of a body that is not JSON.
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    fn text(&self) -> &str {
        self.body.as_str().unwrap_or_default()
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        rates: Rates {
            cpu_second: 10,
            memory_gb_second: 0,
            gpu_second: 0,
            attempt_minimum: 0,
            basis: tanvrit_api::BillingBasis::Reserved,
        },
        min_index_wait: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

fn cluster_config(dir: &TempDir) -> SingleNodeConfig {
    SingleNodeConfig {
        // Snapshots often, so a restart loads idempotency records from one.
        snapshot_every: 3,
        ..SingleNodeConfig::new(dir.path().join("data"))
    }
}

async fn start(config: ServerConfig) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SingleNode::open(cluster_config(&dir)).unwrap();
    ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some(ADMIN))
        .await
        .unwrap();
    let router = router(config.clone(), cluster.clone());
    Api {
        cluster,
        router,
        dir,
        config,
    }
}

impl Api {
    /// Closes the replica and opens its data directory again.
    async fn restart(self) -> Api {
        let Api {
            cluster,
            router: old,
            dir,
            config,
        } = self;
        cluster.shutdown().await;
        drop(old);
        drop(cluster);
        let cluster = SingleNode::open(cluster_config(&dir)).unwrap();
        let router = router(config.clone(), cluster.clone());
        Api {
            cluster,
            router,
            dir,
            config,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` to `path` below `/api/compute` with `secret`, and the
    /// `Idempotency-Key` when given.
    async fn post(&self, path: &str, secret: &str, key: Option<&str>, body: &Value) -> Reply {
        let mut request = Request::post(format!("/api/compute/{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn admin(&self, path: &str, key: Option<&str>, body: Value) -> Reply {
        self.post(path, ADMIN, key, &body).await
    }

    async fn ok(&self, path: &str, key: Option<&str>, body: Value) -> Value {
        let reply = self.admin(path, key, body).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.body
    }

    /// A user key bound to `business`; returns its secret.
    async fn user(&self, business: &str) -> String {
        let body = self
            .ok(
                "keys/create",
                None,
                json!({ "scope": "user", "business": business }),
            )
            .await;
        body["secret"].as_str().unwrap().to_string()
    }

    async fn top_up(&self, business: &str, amount: i64) {
        self.ok(
            "credits/entries/create",
            None,
            json!({ "business": business, "kind": "top_up", "amount": amount }),
        )
        .await;
    }

    fn applied(&self) -> u64 {
        self.cluster.reader().applied_index()
    }

    fn jobs_of(&self, business: &str) -> usize {
        self.cluster.reader().read(|state| {
            state
                .all_jobs()
                .filter(|job| job.business.as_str() == business)
                .count()
        })
    }
}

fn submit(business: &str, command: &[&str]) -> Value {
    json!({
        "business": business,
        "command": command,
        "resources": { "cpu_millis": 1000 },
        "timeout_secs": 10,
    })
}

#[tokio::test]
async fn a_retried_submit_with_the_same_header_returns_the_same_job_and_index() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let body = submit("acme", &["echo", "hi"]);
    let first = api
        .admin("jobs/submit", Some("order-17"), body.clone())
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let written_at = api.applied();
    let second = api.admin("jobs/submit", Some("order-17"), body).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body, first.body,
        "the whole response is the first one, `index` included"
    );
    assert_eq!(first.body["job"]["idempotency_key"], "order-17");
    assert_eq!(api.jobs_of("acme"), 1);
    let entries = api
        .ok("credits/entries/list", None, json!({ "business": "acme" }))
        .await;
    let holds = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "hold")
        .count();
    assert_eq!(holds, 1, "the retry held nothing more");
    // The retry went through the log (it is ordered like any write) but changed nothing.
    assert_eq!(api.applied(), written_at + 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_422_idempotency_conflict() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let first = api
        .admin("jobs/submit", Some("k-1"), submit("acme", &["echo", "hi"]))
        .await;
    assert_eq!(first.status, 200);
    let job = first.body["job"]["id"].as_str().unwrap().to_string();
    let other_body = api
        .admin("jobs/submit", Some("k-1"), submit("acme", &["echo", "bye"]))
        .await;
    assert_eq!(
        (other_body.status.as_u16(), other_body.code()),
        (422, "idempotency_conflict")
    );
    let other_route = api
        .admin(&format!("jobs/{job}/cancel"), Some("k-1"), json!({}))
        .await;
    assert_eq!(
        (other_route.status.as_u16(), other_route.code()),
        (422, "idempotency_conflict"),
        "the path is part of the request"
    );
    assert_eq!(api.jobs_of("acme"), 1);
    // Field order and fields sent as null do not make a request different.
    let reordered = json!({
        "timeout_secs": 10,
        "resources": { "cpu_millis": 1000 },
        "command": ["echo", "hi"],
        "idempotency_key": null,
        "business": "acme",
    });
    let replay = api.admin("jobs/submit", Some("k-1"), reordered).await;
    assert_eq!(replay.body, first.body);
}

#[tokio::test]
async fn keys_are_scoped_per_tenant() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    api.top_up("globex", 1_000_000).await;
    let acme = api.user("acme").await;
    let acme_rotated = api.user("acme").await;
    let globex = api.user("globex").await;
    let body = submit("acme", &["echo", "hi"]);
    let body_globex = submit("globex", &["echo", "hi"]);
    let a = api.post("jobs/submit", &acme, Some("same"), &body).await;
    let g = api
        .post("jobs/submit", &globex, Some("same"), &body_globex)
        .await;
    assert_eq!((a.status, g.status), (StatusCode::OK, StatusCode::OK));
    assert_ne!(a.body["job"]["id"], g.body["job"]["id"]);
    assert_eq!((api.jobs_of("acme"), api.jobs_of("globex")), (1, 1));
    // Another key of the same business shares its keys: a retry through it finds the
    // first answer.
    let again = api
        .post("jobs/submit", &acme_rotated, Some("same"), &body)
        .await;
    assert_eq!(again.body, a.body);
    // An admin key is a tenant of its own: its request is applied anew (a new index).
    // The job's own key, which the header also sets, is per business, so the job found
    // is still acme's.
    let admin = api.admin("jobs/submit", Some("same"), body).await;
    assert_eq!(admin.status, 200);
    assert_ne!(admin.body["index"], a.body["index"]);
    assert_eq!(admin.body["job"]["id"], a.body["job"]["id"]);
    assert_eq!(api.jobs_of("acme"), 1);
}

#[tokio::test]
async fn every_client_write_answers_a_retry_with_its_first_response() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let job = api
        .ok("jobs/submit", None, submit("acme", &["sleep", "1"]))
        .await["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let schedule = json!({
        "business": "acme", "cron": "0 9 * * *", "timezone": "Europe/Berlin",
        "template": { "command": ["true"], "timeout_secs": 5 },
    });
    let node = json!({
        "id": "node-1", "name": "n1",
        "resources": { "cpu_millis": 4000, "memory_mb": 4096, "gpus": 0 },
    });
    let revocable = api
        .ok("keys/create", None, json!({ "scope": "agent" }))
        .await["key"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut writes: Vec<(String, Value)> = vec![
        (
            format!("jobs/{job}/cancel"),
            json!({ "reason": "no longer needed" }),
        ),
        (format!("jobs/{job}/retry"), json!({})),
        ("nodes/register".into(), node),
        ("nodes/node-1/drain".into(), json!({ "deadline_secs": 60 })),
        ("nodes/node-1/delete".into(), json!({})),
        (format!("keys/{revocable}/revoke"), json!({})),
        (
            "credits/entries/create".into(),
            json!({ "business": "acme", "kind": "refund", "amount": 5, "note": "sorry" }),
        ),
        ("schedules/create".into(), schedule),
    ];
    for (i, (path, body)) in writes.drain(..).enumerate() {
        let key = format!("w-{i}");
        let first = api.admin(&path, Some(&key), body.clone()).await;
        assert_eq!(first.status, 200, "{path}: {}", first.body);
        let second = api.admin(&path, Some(&key), body).await;
        assert_eq!(
            (second.status, &second.body),
            (first.status, &first.body),
            "{path}"
        );
    }
    let id = api.ok("schedules/list", None, json!({})).await["schedules"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, body) in [
        (
            format!("schedules/{id}/update"),
            json!({ "enabled": false }),
        ),
        (format!("schedules/{id}/delete"), json!({})),
    ] {
        let first = api.admin(&path, Some(&path), body.clone()).await;
        assert_eq!(first.status, 200, "{path}: {}", first.body);
        let second = api.admin(&path, Some(&path), body).await;
        assert_eq!((second.status, &second.body), (first.status, &first.body));
    }
    // Without a key the same repeats fail as they always did: the job is pending again
    // and cannot be retried, the schedule is gone.
    let bare = api
        .admin(&format!("jobs/{job}/retry"), None, json!({}))
        .await;
    assert_eq!(bare.code(), "illegal_transition");
    let gone = api
        .admin(&format!("schedules/{id}/delete"), None, json!({}))
        .await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn a_replayed_key_creation_is_409_naming_the_key_and_never_a_second_key() {
    let api = start(config()).await;
    let body = json!({ "scope": "user", "business": "acme", "name": "ci" });
    let first = api
        .admin("keys/create", Some("key-for-ci"), body.clone())
        .await;
    assert_eq!(first.status, 200);
    assert!(first.body["secret"].is_string());
    let replay = api.admin("keys/create", Some("key-for-ci"), body).await;
    assert_eq!(
        (replay.status.as_u16(), replay.code()),
        (409, "idempotent_replay_secret_unavailable")
    );
    assert_eq!(replay.body["error"]["id"], first.body["key"]["id"]);
    assert!(
        !replay.body.to_string().contains("tvk_"),
        "no secret in the answer"
    );
    let keys = api.ok("keys/list", None, json!({})).await;
    let named_ci = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "ci")
        .count();
    assert_eq!(named_ci, 1);
    // The secret is in no replicated record either.
    let secret = first.body["secret"].as_str().unwrap();
    let state = api
        .cluster
        .reader()
        .read(|state| serde_json::to_string(state).unwrap());
    assert!(!state.contains(secret));
}

/// A write the state certainly refuses is answered without being proposed (issue 16:
/// refused requests must not grow the log), so nothing records it under its key: once
/// the state changes, its retry runs, once, and later retries replay that answer.
#[tokio::test]
async fn a_refused_write_is_not_recorded_so_its_retry_runs_once_the_state_allows_it() {
    let api = start(config()).await;
    api.top_up("acme", 10).await;
    let body = submit("acme", &["echo", "hi"]);
    let first = api.admin("jobs/submit", Some("poor"), body.clone()).await;
    assert_eq!(
        (first.status.as_u16(), first.code()),
        (402, "insufficient_credits")
    );
    api.top_up("acme", 1_000_000).await;
    let retry = api.admin("jobs/submit", Some("poor"), body.clone()).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    let again = api.admin("jobs/submit", Some("poor"), body.clone()).await;
    assert_eq!((again.status, &again.body), (retry.status, &retry.body));
    assert_eq!(api.jobs_of("acme"), 1);
}

#[tokio::test]
async fn a_malformed_header_is_refused_before_anything_is_proposed() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let before = api.applied();
    let long = "k".repeat(257);
    let too_long = api
        .admin("jobs/submit", Some(&long), submit("acme", &["true"]))
        .await;
    assert_eq!(
        (too_long.status.as_u16(), too_long.code()),
        (422, "invalid")
    );
    let differs = api
        .admin(
            "jobs/submit",
            Some("header"),
            json!({ "business": "acme", "idempotency_key": "body",
                    "command": ["true"], "timeout_secs": 5 }),
        )
        .await;
    assert_eq!((differs.status.as_u16(), differs.code()), (422, "invalid"));
    assert_eq!(api.applied(), before);
}

#[tokio::test]
async fn a_retry_after_the_window_is_a_new_write_but_the_body_key_still_finds_the_job() {
    let api = start(ServerConfig {
        idempotency_window: Duration::from_millis(50),
        ..config()
    })
    .await;
    api.top_up("acme", 1_000_000).await;
    let body = submit("acme", &["echo", "hi"]);
    let first = api.admin("jobs/submit", Some("short"), body.clone()).await;
    assert_eq!(first.status, 200);
    // Within the window the retry is the first response; once it has passed (by the
    // server's clock, which stamps each command) the retry is applied anew, and the
    // job's own key still resolves it to the same job.
    let deadline = Instant::now() + Duration::from_secs(10);
    let later = loop {
        let reply = api.admin("jobs/submit", Some("short"), body.clone()).await;
        if reply.body["index"] != first.body["index"] {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "the record never expired: {}",
            reply.body
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(later.status, 200);
    assert_eq!(later.body["job"]["id"], first.body["job"]["id"]);
    assert_eq!(api.jobs_of("acme"), 1);
    // And a different request may use the key now.
    let reused = api
        .admin(
            "jobs/submit",
            Some("other"),
            submit("acme", &["echo", "bye"]),
        )
        .await;
    assert_eq!(reused.status, 200);
}

#[tokio::test]
async fn a_retry_after_a_restart_finds_the_first_answer() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let body = submit("acme", &["echo", "hi"]);
    let first = api
        .admin("jobs/submit", Some("durable"), body.clone())
        .await;
    assert_eq!(first.status, 200);
    // More writes, so the record is in a snapshot, not only in the log.
    for i in 0..4 {
        api.top_up("globex", 10 + i).await;
    }
    let api = api.restart().await;
    let retry = api.admin("jobs/submit", Some("durable"), body).await;
    assert_eq!((retry.status, &retry.body), (first.status, &first.body));
    assert_eq!(api.jobs_of("acme"), 1);
}

#[tokio::test]
async fn the_ledger_exports_as_csv_for_a_date_range() {
    let api = start(config()).await;
    api.ok(
        "credits/entries/create",
        None,
        json!({ "business": "acme", "kind": "top_up", "amount": 1_000,
                "idempotency_key": "first", "note": "welcome, \"friend\"" }),
    )
    .await;
    // Entries are timed to the millisecond: the range below needs the two apart.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    api.ok(
        "credits/entries/create",
        None,
        json!({ "business": "acme", "kind": "adjustment", "amount": -250,
                "idempotency_key": "second", "note": "two\nlines" }),
    )
    .await;
    api.top_up("globex", 5).await;
    let reply = api
        .admin(
            "credits/entries/export",
            None,
            json!({ "business": "acme" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        reply.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"ledger-acme.csv\""
    );
    assert!(reply.headers.contains_key("x-tanvrit-index"));
    let csv = reply.text();
    let rows: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(
        rows[0],
        "seq,id,at,kind,amount,balance_after,job,idempotency_key,note"
    );
    assert!(
        rows[1].starts_with("1,ent-")
            && rows[1].contains(",top_up,1000,1000,,first,\"welcome, \"\"friend\"\"\""),
        "{}",
        rows[1]
    );
    assert!(
        rows[2].starts_with("2,ent-")
            && rows[2].ends_with(",adjustment,-250,750,,second,\"two\nlines\""),
        "a line break stays inside its quoted field: {csv}"
    );
    assert_eq!(rows[3], "", "every row ends with CRLF");
    assert_eq!(rows.len(), 4, "globex's entries are not in acme's export");

    // The range is [from, to) in ms since the epoch, on `at`.
    let entries = api
        .ok("credits/entries/list", None, json!({ "business": "acme" }))
        .await;
    let second_at = entries["entries"][1]["at"].as_i64().unwrap();
    assert!(entries["entries"][0]["at"].as_i64().unwrap() < second_at);
    let from_second = api
        .admin(
            "credits/entries/export",
            None,
            json!({ "business": "acme", "from": second_at }),
        )
        .await;
    assert!(from_second.text().contains(",second,"));
    assert!(!from_second.text().contains(",first,"));
    let before_any = api
        .admin(
            "credits/entries/export",
            None,
            json!({ "business": "acme", "to": 0 }),
        )
        .await;
    assert_eq!(
        before_any.text(),
        "seq,id,at,kind,amount,balance_after,job,idempotency_key,note\r\n"
    );
}

#[tokio::test]
async fn the_export_is_for_admins_and_checks_its_input() {
    let api = start(config()).await;
    let user = api.user("acme").await;
    let forbidden = api
        .post(
            "credits/entries/export",
            &user,
            None,
            &json!({ "business": "acme" }),
        )
        .await;
    assert_eq!(
        (forbidden.status.as_u16(), forbidden.code()),
        (403, "forbidden")
    );
    let missing = api.admin("credits/entries/export", None, json!({})).await;
    assert_eq!(
        (missing.status.as_u16(), missing.code()),
        (400, "invalid_request")
    );
    let backwards = api
        .admin(
            "credits/entries/export",
            None,
            json!({ "business": "acme", "from": 10, "to": 5 }),
        )
        .await;
    assert_eq!(
        (backwards.status.as_u16(), backwards.code()),
        (422, "invalid")
    );
    let bad_business = api
        .admin(
            "credits/entries/export",
            None,
            json!({ "business": "not a business" }),
        )
        .await;
    assert_eq!(bad_business.code(), "invalid");
}
