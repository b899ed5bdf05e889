//! What issue 16 asks of the API without TLS: node-bound agent keys, nothing written
//! for a write the state already refuses, abuse limits. Driven in process through
//! `router` (and over TCP through `serve` where the connection itself matters), against
//! a real `SingleNode` in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tanvrit_api::{AttemptId, JobId, NodeId, Rates};
use tanvrit_cluster::{ClusterService, SingleNode, SingleNodeConfig};
use tanvrit_server::{ensure_bootstrap_admin, router, serve, RateLimit, RateLimits, ServerConfig};
use tanvrit_state::{Command, Placement};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
    ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some(ADMIN_SECRET))
        .await
        .unwrap();
    let router = router(config, cluster.clone());
    Api {
        cluster,
        router,
        _dir: dir,
    }
}

impl Api {
    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Reply {
        let mut request = Request::post(format!("/api/compute/{path}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request.body(Body::from(body.to_string())).unwrap();
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

    async fn admin(&self, path: &str, body: Value) -> Reply {
        self.post(path, Some(ADMIN_SECRET), body).await
    }

    /// Creates a key and returns its secret.
    async fn key(&self, body: Value) -> String {
        let reply = self.admin("keys/create", body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["secret"].as_str().unwrap().to_string()
    }

    async fn write(&self, command: Command) {
        let receipt = self.cluster.submit_write(command).await.unwrap();
        assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
    }

    fn applied(&self) -> u64 {
        self.cluster.reader().applied_index()
    }

    async fn metrics(&self) -> String {
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The whole replicated state, to show a refused request changed nothing.
    fn state(&self) -> String {
        self.cluster
            .reader()
            .read(|state| serde_json::to_string(state).unwrap())
    }
}

fn register_body(node: &str, cpu_millis: u64) -> Value {
    json!({
        "id": node,
        "name": format!("{node}.local"),
        "resources": { "cpu_millis": cpu_millis, "memory_mb": 1024, "gpus": 0 },
    })
}

fn job_spec(business: &str) -> Value {
    json!({
        "business": business,
        "command": ["echo", "hi"],
        "resources": { "cpu_millis": 1000 },
        "timeout_secs": 10,
    })
}

/// Asserts 403 `forbidden` and that nothing was written.
fn assert_forbidden_and_unchanged(reply: &Reply, api: &Api, before: (u64, &str), what: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{what}: {}",
        reply.body
    );
    assert_eq!(api.applied(), before.0, "{what} wrote to the log");
    assert_eq!(api.state(), before.1, "{what} changed the state");
}

// ---- node-bound agent keys ------------------------------------------------------------

/// Node A registered with a key bound to it, node B with its own key (bound by its first
/// registration), and a job of acme placed on node B.
async fn two_nodes_and_a_job_on_b() -> (Api, String, JobId, AttemptId) {
    let api = start(config()).await;
    let key_a = api.key(json!({ "scope": "agent", "node": "node-a" })).await;
    let key_b = api.key(json!({ "scope": "agent" })).await;
    for (node, key) in [("node-a", &key_a), ("node-b", &key_b)] {
        let reply = api
            .post("nodes/register", Some(key), register_body(node, 2000))
            .await;
        assert_eq!(reply.status, 200, "{node}: {}", reply.body);
    }
    api.admin(
        "credits/entries/create",
        json!({ "business": "acme", "kind": "top_up", "amount": 1_000_000 }),
    )
    .await;
    let submitted = api.admin("jobs/submit", job_spec("acme")).await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    let job = JobId::from(submitted.body["job"]["id"].as_str().unwrap());
    let attempt = AttemptId::from("att-b");
    api.write(Command::JobsAssign {
        placements: vec![Placement {
            job: job.clone(),
            attempt: attempt.clone(),
            node: NodeId::from("node-b"),
        }],
        at: 2,
    })
    .await;
    (api, key_a, job, attempt)
}

#[tokio::test]
async fn an_agent_key_bound_to_node_a_cannot_touch_node_b_or_read_jobs() {
    let (api, key_a, job, attempt) = two_nodes_and_a_job_on_b().await;
    let state = api.state();
    let before = (api.applied(), state.as_str());
    let key = Some(key_a.as_str());

    let poll = api.post("nodes/node-b/work", key, json!({})).await;
    assert_forbidden_and_unchanged(&poll, &api, before, "polling node B's work");
    let heartbeat = api
        .post("nodes/node-b/heartbeat", key, json!({ "running": [] }))
        .await;
    assert_forbidden_and_unchanged(&heartbeat, &api, before, "heartbeating node B");
    let attempt_path = format!("jobs/{job}/attempts/{attempt}");
    let started = api
        .post(&format!("{attempt_path}/started"), key, json!({}))
        .await;
    assert_forbidden_and_unchanged(&started, &api, before, "reporting B's attempt started");
    let finished = api
        .post(
            &format!("{attempt_path}/finished"),
            key,
            json!({ "outcome": "succeeded", "exit_code": 0 }),
        )
        .await;
    assert_forbidden_and_unchanged(&finished, &api, before, "reporting B's attempt finished");
    let logs = api
        .post(
            &format!("{attempt_path}/logs"),
            key,
            json!({ "offset": 0, "data": "injected\n" }),
        )
        .await;
    assert_forbidden_and_unchanged(&logs, &api, before, "appending to B's attempt's log");
    let register = api
        .post("nodes/register", key, register_body("node-b", 999_999))
        .await;
    assert_forbidden_and_unchanged(&register, &api, before, "re-registering node B");
    let read = api.post(&format!("jobs/{job}/get"), key, json!({})).await;
    assert_forbidden_and_unchanged(&read, &api, before, "reading a job");

    // Its own node is served as before.
    let own = api.post("nodes/node-a/work", key, json!({})).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let again = api
        .post("nodes/register", key, register_body("node-a", 2000))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
}

#[tokio::test]
async fn an_unbound_agent_key_is_bound_by_its_first_registration_and_only_then() {
    let api = start(config()).await;
    let unbound = api.key(json!({ "scope": "agent" })).await;
    let other = api.key(json!({ "scope": "agent" })).await;
    let key = Some(unbound.as_str());

    // Before it registers a node it acts for none.
    let state = api.state();
    let poll = api.post("nodes/node-x/work", key, json!({})).await;
    assert_forbidden_and_unchanged(&poll, &api, (api.applied(), &state), "an unbound poll");

    let enrolled = api
        .post("nodes/register", key, register_body("node-x", 2000))
        .await;
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    let keys = api.admin("keys/list", json!({})).await;
    let bound: Vec<&Value> = keys.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["node"] == "node-x")
        .collect();
    assert_eq!(bound.len(), 1, "{}", keys.body);

    // Node X now belongs to that key: another unbound key cannot take it over, and the
    // bound key cannot enroll a second node.
    let state = api.state();
    let before = (api.applied(), state.as_str());
    let takeover = api
        .post(
            "nodes/register",
            Some(&other),
            register_body("node-x", 999_999),
        )
        .await;
    assert_forbidden_and_unchanged(&takeover, &api, before, "taking over an enrolled node");
    let second = api
        .post("nodes/register", key, register_body("node-y", 2000))
        .await;
    assert_forbidden_and_unchanged(&second, &api, before, "enrolling a second node");
    assert_eq!(
        api.post("nodes/node-x/work", key, json!({})).await.status,
        200
    );
}

#[tokio::test]
async fn keys_other_than_agent_keys_cannot_be_bound_to_a_node() {
    let api = start(config()).await;
    let reply = api
        .admin("keys/create", json!({ "scope": "admin", "node": "node-a" }))
        .await;
    assert_eq!((reply.status.as_u16(), reply.code()), (422, "invalid"));
}

// ---- nothing written for a write that is certainly refused ----------------------------

#[tokio::test]
async fn submissions_refused_for_credits_leave_the_log_unchanged() {
    let api = start(config()).await;
    let user = api
        .key(json!({ "scope": "user", "business": "acme" }))
        .await;
    let state = api.state();
    let before = api.applied();
    for i in 0..20 {
        let mut spec = job_spec("acme");
        if i % 2 == 0 {
            // With a job idempotency key of its own each time: no way around the check.
            spec["idempotency_key"] = json!(format!("try-{i}"));
        }
        let refused = api.post("jobs/submit", Some(&user), spec).await;
        assert_eq!(
            (refused.status.as_u16(), refused.code()),
            (402, "insufficient_credits"),
            "{}",
            refused.body
        );
    }
    assert_eq!(api.applied(), before, "refused submissions entered the log");
    assert_eq!(api.state(), state);
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("tanvrit_writes_refused_early_total{command=\"job_submit\"} 20"),
        "{metrics}"
    );

    // Once the balance covers it, the same submission is proposed and accepted.
    api.admin(
        "credits/entries/create",
        json!({ "business": "acme", "kind": "top_up", "amount": 1_000_000 }),
    )
    .await;
    let accepted = api.post("jobs/submit", Some(&user), job_spec("acme")).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
}

#[tokio::test]
async fn writes_to_missing_or_ended_objects_leave_the_log_unchanged() {
    let api = start(config()).await;
    let state = api.state();
    let before = api.applied();
    for (path, status, code) in [
        ("jobs/job-nope/cancel", 404, "not_found"),
        ("jobs/job-nope/retry", 404, "not_found"),
        ("nodes/node-nope/drain", 404, "not_found"),
        ("nodes/node-nope/delete", 404, "not_found"),
        ("keys/key-nope/revoke", 404, "not_found"),
    ] {
        let refused = api.admin(path, json!({})).await;
        assert_eq!(
            (refused.status.as_u16(), refused.code()),
            (status, code),
            "{path}: {}",
            refused.body
        );
    }
    assert_eq!(api.applied(), before);
    assert_eq!(api.state(), state);
}

// ---- abuse limits -----------------------------------------------------------------------

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_429_while_another_key_is_served() {
    // Three requests at once, then one an hour: no refill can happen during the test.
    let config = ServerConfig {
        rate_limits: RateLimits {
            user: RateLimit {
                refill: Duration::from_secs(3600),
                burst: 3,
            },
            ..RateLimits::unlimited()
        },
        ..config()
    };
    let api = start(config).await;
    let busy = api
        .key(json!({ "scope": "user", "business": "acme" }))
        .await;
    let quiet = api
        .key(json!({ "scope": "user", "business": "globex" }))
        .await;
    for _ in 0..3 {
        let reply = api.post("jobs/list", Some(&busy), json!({})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let limited = api.post("jobs/list", Some(&busy), json!({})).await;
    assert_eq!(
        (limited.status.as_u16(), limited.code()),
        (429, "rate_limited"),
        "{}",
        limited.body
    );
    let retry_after: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let served = api.post("jobs/list", Some(&quiet), json!({})).await;
    assert_eq!(served.status, 200, "another key has a bucket of its own");
    assert_eq!(
        api.admin("jobs/list", json!({})).await.status,
        200,
        "admin keys are unlimited here"
    );
    assert!(api
        .metrics()
        .await
        .contains("tanvrit_rate_limited_total{scope=\"user\"} 1"));
}

#[tokio::test]
async fn a_key_holding_its_most_long_polls_is_refused_another_until_one_closes() {
    let config = ServerConfig {
        max_streams_per_key: 1,
        ..config()
    };
    let api = Arc::new(start(config).await);
    let agent = api.key(json!({ "scope": "agent", "node": "node-a" })).await;
    let reply = api
        .post(
            "nodes/register",
            Some(&agent),
            register_body("node-a", 1000),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let after = api.applied();
    let wait = json!({ "after_index": after, "wait_ms": 60_000 });
    let holding = {
        let (api, agent, wait) = (api.clone(), agent.clone(), wait.clone());
        tokio::spawn(async move { api.post("nodes/node-a/work", Some(&agent), wait).await })
    };
    // Until the first long poll is open (this scrape is the other request in flight).
    while !api
        .metrics()
        .await
        .contains("tanvrit_http_requests_in_flight 2")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = api
        .post("nodes/node-a/work", Some(&agent), wait.clone())
        .await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (429, "too_many_streams"),
        "{}",
        refused.body
    );
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    let at_once = api.post("nodes/node-a/work", Some(&agent), json!({})).await;
    assert_eq!(
        at_once.status, 200,
        "a poll that does not wait holds no stream"
    );
    holding.abort();
    let _ = holding.await;
    let again = api
        .post("nodes/node-a/work", Some(&agent), json!({ "wait_ms": 1 }))
        .await;
    assert_eq!(
        again.status, 200,
        "the closed poll freed its place: {}",
        again.body
    );
}

#[tokio::test]
async fn failed_authentications_are_counted_by_reason() {
    let api = start(config()).await;
    api.post("jobs/list", None, json!({})).await;
    for _ in 0..2 {
        let reply = api
            .post("jobs/list", Some("tvk_key-x_0000"), json!({}))
            .await;
        assert_eq!(reply.status, 401);
    }
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("tanvrit_auth_failures_total{reason=\"unknown\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tanvrit_auth_failures_total{reason=\"missing\"} 1"));
    assert!(!metrics.contains("tvk_key-x"), "never the presented secret");
}

/// Serves the API over TCP on a free port; returns its address and the task.
async fn serve_tcp(config: ServerConfig) -> (Api, std::net::SocketAddr) {
    let api = start(config.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let cluster = api.cluster.clone();
    tokio::spawn(serve(config, cluster, listener, std::future::pending()));
    (api, address)
}

#[tokio::test]
async fn a_connection_sending_headers_slower_than_the_limit_is_closed() {
    let config = ServerConfig {
        header_read_timeout: Duration::from_millis(300),
        ..config()
    };
    let (_api, address) = serve_tcp(config).await;
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"POST /api/compute/jobs/list HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header byte every 100 ms, until the server hangs up (EOF or a reset).
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 before the close, maybe
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if slow.write_all(b"X").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow connection was never closed");

    // A well-behaved client is served meanwhile.
    let mut fine = TcpStream::connect(address).await.unwrap();
    fine.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    fine.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed() {
    let config = ServerConfig {
        body_read_timeout: Duration::from_millis(300),
        ..config()
    };
    let (_api, address) = serve_tcp(config).await;
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/compute/jobs/list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_SECRET}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The rest of the body never comes; the server answers and hangs up.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was never closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

#[tokio::test]
async fn a_request_head_over_the_header_limit_is_refused_with_431() {
    let config = ServerConfig {
        header_limit_bytes: 16 * 1024,
        ..config()
    };
    let (_api, address) = serve_tcp(config).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may close before it has read everything it was sent.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

// ---- data at rest -------------------------------------------------------------------------

#[tokio::test]
async fn the_data_directory_and_the_store_file_are_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let api = start(config()).await;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = api._dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&data.join("tanvrit.redb")), 0o600, "the store");
}

#[tokio::test]
async fn an_oversized_id_is_quoted_as_a_short_prefix() {
    let api = start(config()).await;
    let id = "j".repeat(60_000);
    let reply = api.admin(&format!("jobs/{id}/cancel"), json!({})).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.len() < 200, "{} bytes: {message}", message.len());
}
