//! The API driven in process through `router` (and once over TCP through `serve`),
//! against a real `SingleNode` in a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tanvrit_api::{AttemptId, JobId, NodeId, Rates};
use tanvrit_cluster::{ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_server::{ensure_bootstrap_admin, router, serve, BootstrapOutcome, ServerConfig};
use tanvrit_state::{Command, FinishKind, Placement};
use tempfile::TempDir;
use tower::ServiceExt;

const ADMIN_SECRET: &str = "test-admin-secret-0001";

struct Api {
    cluster: Arc<SingleNode>,
    router: Router,
    _dir: TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
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

async fn start(config: ServerConfig) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SingleNode::open(SingleNodeConfig::new(dir.path().join("data"))).unwrap();
    let outcome = ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some(ADMIN_SECRET))
        .await
        .unwrap();
    assert!(
        matches!(outcome, BootstrapOutcome::FromEnv { .. }),
        "{outcome:?}"
    );
    let router = router(config, cluster.clone());
    Api {
        cluster,
        router,
        _dir: dir,
    }
}

impl Api {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        // Every response, errors included, names the replica's applied index.
        let index = headers
            .get("x-tanvrit-index")
            .unwrap_or_else(|| panic!("no X-Tanvrit-Index on {status}: {body}"));
        assert!(index.to_str().unwrap().parse::<u64>().is_ok());
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Reply {
        let mut request = Request::post(format!("/api/compute/{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> Reply {
        let mut request = Request::get(path);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn admin(&self, path: &str, body: Value) -> Reply {
        self.post(path, Some(ADMIN_SECRET), body).await
    }

    /// Creates a key and returns its secret.
    async fn key(&self, scope: &str, business: Option<&str>) -> String {
        let reply = self
            .admin(
                "keys/create",
                json!({ "scope": scope, "business": business }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["secret"].as_str().unwrap().to_string()
    }

    async fn top_up(&self, business: &str, amount: i64) {
        let reply = self
            .admin(
                "credits/entries/create",
                json!({ "business": business, "kind": "top_up", "amount": amount }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    async fn write(&self, command: Command) {
        let receipt = self.cluster.submit_write(command).await.unwrap();
        assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
    }

    fn applied(&self) -> u64 {
        self.cluster.reader().applied_index()
    }
}

fn job_spec() -> Value {
    json!({ "command": ["echo", "hi"], "resources": { "cpu_millis": 1000 }, "timeout_secs": 10 })
}

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthorized() {
    let api = start(config()).await;
    let missing = api.post("jobs/list", None, json!({})).await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let unknown = api.post("jobs/list", Some("tvk_nope"), json!({})).await;
    assert_eq!(unknown.status, 401);

    let secret = api.key("user", Some("acme")).await;
    assert_eq!(
        api.post("jobs/list", Some(&secret), json!({})).await.status,
        200
    );
    let key_id = api.admin("keys/list", json!({})).await.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["scope"] == "user")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = api.admin(&format!("keys/{key_id}/revoke"), json!({})).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(revoked.body["key"]["revoked_at"].is_i64());
    let after = api.post("jobs/list", Some(&secret), json!({})).await;
    assert_eq!((after.status.as_u16(), after.code()), (401, "unauthorized"));
}

#[tokio::test]
async fn scopes_limit_what_a_key_may_do() {
    let api = start(config()).await;
    let agent = api.key("agent", None).await;
    let user = api.key("user", Some("acme")).await;
    let forbidden = api.post("jobs/list", Some(&agent), json!({})).await;
    assert_eq!(
        (forbidden.status.as_u16(), forbidden.code()),
        (403, "forbidden")
    );
    assert_eq!(
        api.post("keys/list", Some(&user), json!({})).await.status,
        403
    );
    assert_eq!(
        api.post("nodes/list", Some(&user), json!({})).await.status,
        403
    );
    assert_eq!(
        api.post("metrics", Some(&user), json!({})).await.status,
        403
    );
    let registered = api
        .post(
            "nodes/register",
            Some(&agent),
            json!({ "id": "node-1", "name": "n1", "resources": { "cpu_millis": 4000, "memory_mb": 4096 } }),
        )
        .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    assert_eq!(registered.body["node"]["state"], "ready");
    let topology = api.post("cluster/topology", Some(&user), json!({})).await;
    assert_eq!(topology.status, 200);
    assert_eq!(topology.body["leader"], "replica-1");
    let agent_topology = api.post("cluster/topology", Some(&agent), json!({})).await;
    assert_eq!(agent_topology.status, 200);
    // Agents register and speak the agent protocol; nothing else.
    for path in [
        "nodes/list",
        "nodes/node-1/get",
        "nodes/node-1/drain",
        "keys/list",
    ] {
        let refused = api.post(path, Some(&agent), json!({})).await;
        assert_eq!(
            (refused.status.as_u16(), refused.code()),
            (403, "forbidden"),
            "{path}"
        );
    }
    for path in [
        "nodes/node-1/heartbeat",
        "jobs/job-1/attempts/att-1/started",
    ] {
        let refused = api.post(path, Some(&user), json!({})).await;
        assert_eq!(refused.status, 403, "{path}");
    }
    api.top_up("acme", 1_000_000).await;
    let job = api.post("jobs/submit", Some(&user), job_spec()).await.body["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Agents read no job through the user API: what they run comes with their work.
    let read = api
        .post(&format!("jobs/{job}/get"), Some(&agent), json!({}))
        .await;
    assert_eq!((read.status.as_u16(), read.code()), (403, "forbidden"));
    let logs = api
        .post(&format!("jobs/{job}/logs"), Some(&agent), json!({}))
        .await;
    assert_eq!(logs.status, 403);
}

#[tokio::test]
async fn a_user_key_sees_and_touches_only_its_own_business() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let acme = api.key("user", Some("acme")).await;
    let globex = api.key("user", Some("globex")).await;

    let submitted = api.post("jobs/submit", Some(&acme), job_spec()).await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    let job = submitted.body["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(submitted.body["job"]["business"], "acme");
    assert_eq!(
        submitted.body["job"]["held"], 100,
        "10 s of one core at 10 per cpu-second"
    );
    let index = submitted.body["index"].as_u64().unwrap();

    let read = api
        .post(
            &format!("jobs/{job}/get"),
            Some(&acme),
            json!({ "consistency": { "min_index": index } }),
        )
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["job"]["state"], "pending");

    for path in [
        format!("jobs/{job}/get"),
        format!("jobs/{job}/cancel"),
        format!("jobs/{job}/logs"),
    ] {
        let other = api.post(&path, Some(&globex), json!({})).await;
        assert_eq!(
            (other.status.as_u16(), other.code()),
            (404, "not_found"),
            "{path}"
        );
    }
    assert!(
        api.post("jobs/list", Some(&globex), json!({})).await.body["jobs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let named_other = api
        .post(
            "credits/balance",
            Some(&globex),
            json!({ "business": "acme" }),
        )
        .await;
    assert_eq!(named_other.status, 404);

    let balance = api.post("credits/balance", Some(&acme), json!({})).await;
    assert_eq!(
        (
            balance.body["available"].as_i64(),
            balance.body["held"].as_i64()
        ),
        (Some(999_900), Some(100))
    );
    let cancelled = api
        .post(
            &format!("jobs/{job}/cancel"),
            Some(&acme),
            json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["job"]["state"], "cancelled");
    let again = api
        .post(&format!("jobs/{job}/cancel"), Some(&acme), json!({}))
        .await;
    assert_eq!(
        (again.status.as_u16(), again.code()),
        (409, "illegal_transition")
    );
    let balance = api.post("credits/balance", Some(&acme), json!({})).await;
    assert_eq!(
        balance.body["available"], 1_000_000,
        "the hold was released"
    );
    let entries = api
        .post("credits/entries/list", Some(&acme), json!({}))
        .await;
    let kinds: Vec<&str> = entries.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["top_up", "hold", "release"]);
}

#[tokio::test]
async fn invalid_submissions_are_refused_and_write_nothing() {
    let api = start(config()).await;
    api.top_up("acme", 10).await;
    let before = api.applied();
    let no_business = api.admin("jobs/submit", job_spec()).await;
    assert_eq!(
        (no_business.status.as_u16(), no_business.code()),
        (422, "invalid")
    );
    let empty_spec = api
        .admin("jobs/submit", json!({ "business": "acme" }))
        .await;
    assert_eq!(
        (empty_spec.status.as_u16(), empty_spec.code()),
        (422, "invalid")
    );
    let unknown_field = api
        .admin(
            "jobs/submit",
            json!({ "business": "acme", "command": ["x"], "colour": 1 }),
        )
        .await;
    assert_eq!(
        (unknown_field.status.as_u16(), unknown_field.code()),
        (400, "invalid_request")
    );
    assert_eq!(api.applied(), before, "nothing reached the log");

    let mut too_costly = job_spec();
    too_costly["business"] = json!("acme");
    let refused = api.admin("jobs/submit", too_costly).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (402, "insufficient_credits")
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_job() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let mut body = job_spec();
    body["business"] = json!("acme");
    let api = &api;
    let submit = |body: Value| async move {
        let request = Request::post("/api/compute/jobs/submit")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_SECRET}"))
            .header("Idempotency-Key", "order-17")
            .body(Body::from(body.to_string()))
            .unwrap();
        api.send(request).await
    };
    let first = submit(body.clone()).await;
    let second = submit(body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["job"]["id"], second.body["job"]["id"]);
    assert_eq!(first.body["job"]["idempotency_key"], "order-17");
    body["command"] = json!(["something", "else"]);
    let conflict = submit(body).await;
    assert_eq!(
        (conflict.status.as_u16(), conflict.code()),
        (422, "idempotency_conflict")
    );
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_bodies_answer_json_errors() {
    let api = start(ServerConfig {
        body_limit_bytes: 256,
        ..config()
    })
    .await;
    let unknown = api.admin("jobs/frobnicate", json!({})).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.code()),
        (404, "not_found")
    );
    let wrong_method = api.get("/api/compute/jobs/list", None).await;
    assert_eq!(
        (wrong_method.status.as_u16(), wrong_method.code()),
        (405, "method_not_allowed")
    );
    assert_eq!(wrong_method.headers[header::ALLOW], "POST");
    let large = api
        .admin("jobs/list", json!({ "after": "x".repeat(1000) }))
        .await;
    assert_eq!(
        (large.status.as_u16(), large.code()),
        (413, "body_too_large")
    );
    let text = Request::post("/api/compute/jobs/list")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_SECRET}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let text = api.send(text).await;
    assert_eq!(
        (text.status.as_u16(), text.code()),
        (415, "unsupported_media_type")
    );
    let broken = Request::post("/api/compute/jobs/list")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_SECRET}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"limit\":"))
        .unwrap();
    let broken = api.send(broken).await;
    assert_eq!(
        (broken.status.as_u16(), broken.code()),
        (400, "malformed_json")
    );
    let empty = Request::post("/api/compute/jobs/list")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_SECRET}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        api.send(empty).await.status,
        200,
        "an empty body reads as {{}}"
    );
}

#[tokio::test]
async fn a_read_ahead_of_this_replica_answers_503_with_retry_after() {
    let api = start(config()).await;
    let ahead = api.applied() + 1000;
    let reply = api
        .admin(
            "jobs/list",
            json!({ "consistency": { "min_index": ahead } }),
        )
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (503, "not_caught_up")
    );
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    let strict = api
        .admin("jobs/list", json!({ "consistency": "strict" }))
        .await;
    assert_eq!(strict.status, 200);
}

/// Places a pending job on a new node and starts it; returns the attempt.
async fn run(api: &Api, job: &str) -> AttemptId {
    api.write(Command::NodeRegister {
        node: NodeId::from("node-1"),
        name: "n1".into(),
        resources: tanvrit_api::Resources {
            cpu_millis: 4000,
            memory_mb: 4096,
            gpus: 0,
        },
        labels: Default::default(),
        drivers: Vec::new(),
        at: 1,
    })
    .await;
    let attempt = AttemptId::from("att-1");
    api.write(Command::JobsAssign {
        placements: vec![Placement {
            job: JobId::from(job),
            attempt: attempt.clone(),
            node: NodeId::from("node-1"),
        }],
        at: 2,
    })
    .await;
    api.write(Command::AttemptStarted {
        job: JobId::from(job),
        attempt: attempt.clone(),
        at: 3,
    })
    .await;
    attempt
}

#[tokio::test]
async fn a_log_long_poll_returns_new_output_and_completes_when_the_attempt_ends() {
    let api = Arc::new(start(config()).await);
    api.top_up("acme", 1_000_000).await;
    let mut body = job_spec();
    body["business"] = json!("acme");
    let job = api.admin("jobs/submit", body).await.body["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let attempt = run(&api, &job).await;

    let nothing_yet = api.admin(&format!("jobs/{job}/logs"), json!({})).await;
    assert_eq!(nothing_yet.body["data"], "");
    assert_eq!(nothing_yet.body["complete"], false);

    let poller = {
        let api = api.clone();
        let job = job.clone();
        tokio::spawn(async move {
            api.admin(&format!("jobs/{job}/logs"), json!({ "wait_ms": 10_000 }))
                .await
        })
    };
    api.write(Command::LogAppend {
        job: JobId::from(job.as_str()),
        attempt: attempt.clone(),
        offset: 0,
        data: "hello\n".into(),
        at: 4,
    })
    .await;
    let polled = poller.await.unwrap();
    assert_eq!(polled.status, 200, "{}", polled.body);
    assert_eq!(polled.body["data"], "hello\n");
    assert_eq!(polled.body["next_offset"], 6);
    assert_eq!(polled.body["attempt"], attempt.as_str());
    assert_eq!(polled.body["complete"], false);

    api.write(Command::AttemptFinished {
        job: JobId::from(job.as_str()),
        attempt,
        kind: FinishKind::Succeeded,
        exit_code: Some(0),
        reason: None,
        usage: None,
        at: 5,
    })
    .await;
    let tail = api
        .admin(
            &format!("jobs/{job}/logs"),
            json!({ "offset": 6, "wait_ms": 10_000 }),
        )
        .await;
    assert_eq!(tail.body["data"], "");
    assert_eq!(tail.body["complete"], true, "ended and fully read: no wait");
}

#[tokio::test]
async fn a_log_long_poll_is_bounded_by_the_server_maximum() {
    let api = start(ServerConfig {
        long_poll_max: Duration::from_millis(300),
        ..config()
    })
    .await;
    api.top_up("acme", 1_000_000).await;
    let mut body = job_spec();
    body["business"] = json!("acme");
    let job = api.admin("jobs/submit", body).await.body["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let reply = api
        .admin(&format!("jobs/{job}/logs"), json!({ "wait_ms": 60_000 }))
        .await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["complete"], false);
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[tokio::test]
async fn schedules_check_cron_and_zone_and_show_the_next_fire() {
    let api = start(config()).await;
    let acme = api.key("user", Some("acme")).await;
    let bad = api
        .post(
            "schedules/create",
            Some(&acme),
            json!({ "cron": "99 * * * *", "template": job_spec() }),
        )
        .await;
    assert_eq!((bad.status.as_u16(), bad.code()), (422, "invalid"));
    let bad_zone = api
        .post(
            "schedules/create",
            Some(&acme),
            json!({ "cron": "@hourly", "timezone": "Moon/Base", "template": job_spec() }),
        )
        .await;
    assert_eq!(bad_zone.status, 422);
    let created = api
        .post(
            "schedules/create",
            Some(&acme),
            json!({ "cron": "*/5 * * * *", "timezone": "Europe/Berlin", "template": job_spec() }),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.body["schedule"]["id"].as_str().unwrap().to_string();
    let next = created.body["schedule"]["next_fire_at"].as_i64().unwrap();
    assert_eq!(next % (5 * 60 * 1000), 0, "on a five-minute boundary");

    let paused = api
        .post(
            &format!("schedules/{id}/update"),
            Some(&acme),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert!(paused.body["schedule"]["next_fire_at"].is_null());
    let globex = api.key("user", Some("globex")).await;
    assert_eq!(
        api.post(&format!("schedules/{id}/get"), Some(&globex), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        api.post(&format!("schedules/{id}/delete"), Some(&globex), json!({}))
            .await
            .status,
        404
    );
    let deleted = api
        .post(&format!("schedules/{id}/delete"), Some(&acme), json!({}))
        .await;
    assert_eq!(deleted.status, 200);
    assert!(deleted.body["index"].is_u64());
    assert_eq!(
        api.post(&format!("schedules/{id}/get"), Some(&acme), json!({}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_cron_expression_that_never_fires_is_refused_on_create_and_update() {
    // Found by fuzz/cli_values: croner accepts a date no year has and then searches
    // years ahead on every lookup, which the leader's cron loop does every pass.
    let api = start(config()).await;
    let acme = api.key("user", Some("acme")).await;
    for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"] {
        let refused = api
            .post(
                "schedules/create",
                Some(&acme),
                json!({ "cron": never, "template": job_spec() }),
            )
            .await;
        assert_eq!((refused.status.as_u16(), refused.code()), (422, "invalid"));
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("never fires"), "{message}");
    }
    // Rare is not never: 29 February comes every four years.
    let leap = api
        .post(
            "schedules/create",
            Some(&acme),
            json!({ "cron": "0 0 29 2 *", "template": job_spec() }),
        )
        .await;
    assert_eq!(leap.status, 200, "{}", leap.body);
    let id = leap.body["schedule"]["id"].as_str().unwrap().to_string();
    assert!(leap.body["schedule"]["next_fire_at"].is_i64());
    let patched = api
        .post(
            &format!("schedules/{id}/update"),
            Some(&acme),
            json!({ "cron": "0 0 30 2 *" }),
        )
        .await;
    assert_eq!((patched.status.as_u16(), patched.code()), (422, "invalid"));
}

#[tokio::test]
async fn probes_need_no_key() {
    let api = start(config()).await;
    let health = api.get("/healthz", None).await;
    assert_eq!(
        (health.status.as_u16(), health.body["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = api.get("/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["role"], "leader");
}

#[tokio::test]
async fn prometheus_metrics_count_requests_by_route_and_describe_the_replica() {
    let api = start(config()).await;
    api.admin("jobs/list", json!({})).await;
    api.admin("jobs/job-nope/get", json!({})).await;
    let reply = api.get("/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = reply.body.as_str().unwrap();
    for expected in [
        "tanvrit_http_requests_total{route=\"/api/compute/jobs/list\",status=\"200\"} 1",
        "tanvrit_http_requests_total{route=\"/api/compute/jobs/{id}/get\",status=\"404\"} 1",
        "# TYPE tanvrit_http_request_duration_seconds histogram",
        "tanvrit_raft_role{role=\"leader\"} 1",
        "tanvrit_raft_leader{replica=\"replica-1\"} 1",
        "tanvrit_jobs{state=\"pending\"} 0",
        "tanvrit_nodes{state=\"ready\"} 0",
    ] {
        assert!(text.contains(expected), "missing {expected}:\n{text}");
    }
    let applied = format!("tanvrit_raft_applied_index {}", api.applied());
    assert!(text.contains(&applied), "missing {applied}:\n{text}");
    promtool_accepts(text);

    let open = api
        .get(
            "/metrics",
            Some("application/openmetrics-text; version=1.0.0"),
        )
        .await;
    assert!(open.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(open.body.as_str().unwrap().ends_with("# EOF\n"));
}

/// `promtool check metrics` judges the format where it is installed (Debian's
/// `prometheus` package, on the project's machines).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command as Process, Stdio};
    let Ok(mut child) = Process::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed; the format was checked by the assertions only");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_resolves_every_reference() {
    let api = start(config()).await;
    let reply = api.get("/api/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    let doc = reply.body;
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/compute/jobs/submit",
        "/api/compute/jobs/list",
        "/api/compute/jobs/{id}/get",
        "/api/compute/jobs/{id}/cancel",
        "/api/compute/jobs/{id}/retry",
        "/api/compute/jobs/{id}/logs",
        "/api/compute/nodes/register",
        "/api/compute/nodes/list",
        "/api/compute/nodes/{id}/get",
        "/api/compute/nodes/{id}/drain",
        "/api/compute/nodes/{id}/delete",
        "/api/compute/nodes/{id}/heartbeat",
        "/api/compute/nodes/{id}/work",
        "/api/compute/jobs/{id}/attempts/{attempt}/started",
        "/api/compute/jobs/{id}/attempts/{attempt}/finished",
        "/api/compute/jobs/{id}/attempts/{attempt}/logs",
        "/api/compute/keys/create",
        "/api/compute/keys/list",
        "/api/compute/keys/{id}/revoke",
        "/api/compute/credits/entries/create",
        "/api/compute/credits/balance",
        "/api/compute/credits/entries/list",
        "/api/compute/credits/entries/export",
        "/api/compute/schedules/create",
        "/api/compute/schedules/list",
        "/api/compute/schedules/{id}/get",
        "/api/compute/schedules/{id}/update",
        "/api/compute/schedules/{id}/delete",
        "/api/compute/cluster/topology",
        "/api/compute/cluster/init",
        "/api/compute/cluster/replicas/add",
        "/api/compute/cluster/replicas/remove",
        "/api/compute/metrics",
        "/api/compute/events/stream",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert_eq!(
        paths.len(),
        38,
        "a route is documented that the test does not know"
    );
    for path in [
        "/api/compute/jobs/submit",
        "/api/compute/jobs/{id}/cancel",
        "/api/compute/jobs/{id}/retry",
        "/api/compute/nodes/register",
        "/api/compute/nodes/{id}/drain",
        "/api/compute/nodes/{id}/delete",
        "/api/compute/keys/create",
        "/api/compute/keys/{id}/revoke",
        "/api/compute/credits/entries/create",
        "/api/compute/schedules/create",
        "/api/compute/schedules/{id}/update",
        "/api/compute/schedules/{id}/delete",
    ] {
        let params = doc["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has no parameters"));
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
            "{path} does not document the Idempotency-Key header"
        );
    }
    let export = &doc["paths"]["/api/compute/credits/entries/export"]["post"];
    assert!(
        export["responses"]["200"]["content"]["text/csv"].is_object(),
        "{export}"
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
        assert!(
            schemas.contains_key(name),
            "$ref {reference} does not resolve"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn bootstrap_generates_an_admin_key_file_once_and_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SingleNode::open(SingleNodeConfig::new(dir.path().join("data"))).unwrap();
    let outcome = ensure_bootstrap_admin(cluster.as_ref(), dir.path(), None)
        .await
        .unwrap();
    let BootstrapOutcome::Generated { path, .. } = outcome else {
        panic!("{outcome:?}");
    };
    let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let again = ensure_bootstrap_admin(cluster.as_ref(), dir.path(), None)
        .await
        .unwrap();
    assert_eq!(again, BootstrapOutcome::AlreadyPresent);
    let also_with_env = ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some("x"))
        .await
        .unwrap();
    assert_eq!(
        also_with_env,
        BootstrapOutcome::AlreadyPresent,
        "an admin exists: nothing is checked or written"
    );

    let api = Api {
        router: router(config(), cluster.clone()),
        cluster,
        _dir: dir,
    };
    let keys = api.post("keys/list", Some(&secret), json!({})).await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    assert_eq!(keys.body["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_too_short_bootstrap_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SingleNode::open(SingleNodeConfig::new(dir.path().join("data"))).unwrap();
    let error = ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some("short"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "bootstrap_key_invalid");
}

/// One HTTP/1.1 exchange over a fresh connection; returns the raw response.
async fn http(address: std::net::SocketAddr, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn in_flight(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("tanvrit_http_requests_in_flight "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn serve_answers_over_tcp_and_shutdown_ends_long_polls_at_once() {
    let api = start(config()).await;
    api.top_up("acme", 1_000_000).await;
    let mut body = job_spec();
    body["business"] = json!("acme");
    let job = api.admin("jobs/submit", body).await.body["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config(), api.cluster.clone(), listener, async {
        let _ = stopped.await;
    }));

    let body = json!({ "wait_ms": 30_000 }).to_string();
    let long_poll = tokio::spawn(http(
        address,
        format!(
            "POST /api/compute/jobs/{job}/logs HTTP/1.1\r\nHost: test\r\n\
             Authorization: Bearer {ADMIN_SECRET}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    ));
    // Wait until the long poll is inside its handler: two requests in flight, the
    // long poll and the scrape asking.
    let scrape = "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_string();
    let polling = Instant::now();
    while in_flight(&http(address, scrape.clone()).await) < 2 {
        assert!(
            polling.elapsed() < Duration::from_secs(10),
            "the long poll never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let began = Instant::now();
    stop.send(()).unwrap();
    let response = long_poll.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-tanvrit-index:"),
        "{response}"
    );
    assert!(response.contains("\"complete\":false"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the long poll held the shutdown"
    );
}

#[tokio::test]
async fn the_last_admin_key_is_kept_and_with_none_left_bootstrap_takes_a_new_secret_only() {
    let api = start(config()).await;
    let keys = api.admin("keys/list", json!({})).await;
    let admin_id = keys.body["keys"][0]["id"].as_str().unwrap().to_string();
    // The API refuses to revoke the only admin key...
    let refused = api
        .admin(&format!("keys/{admin_id}/revoke"), json!({}))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "last_admin_key");
    assert_eq!(refused.body["error"]["id"], admin_id.as_str());
    let listed = api.admin("keys/list", json!({})).await;
    assert!(listed.body["keys"][0]["revoked_at"].is_null());
    // ...but two revocations racing on two replicas can both pass that check, so the
    // state can still end up with none: bootstrap must recover from it.
    api.cluster
        .submit_write(Command::KeyRevoke {
            key: admin_id.as_str().into(),
            at: 1,
        })
        .await
        .unwrap();

    let data_dir = api._dir.path();
    let error = ensure_bootstrap_admin(api.cluster.as_ref(), data_dir, Some(ADMIN_SECRET))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "bootstrap_key_unusable");
    let outcome = ensure_bootstrap_admin(
        api.cluster.as_ref(),
        data_dir,
        Some("a-brand-new-admin-secret"),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, BootstrapOutcome::FromEnv { .. }),
        "{outcome:?}"
    );
    let listed = api
        .post("keys/list", Some("a-brand-new-admin-secret"), json!({}))
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["keys"].as_array().unwrap().len(), 2);
}
