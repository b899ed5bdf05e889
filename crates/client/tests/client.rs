//! The SDK against tiny scripted HTTP servers on 127.0.0.1:0: error parsing, 503 retries
//! with `Retry-After`, endpoint failover, write safety, and the consistency token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Mutex;
use tanvrit_client::api::{
    AttemptFinishedRequest, AttemptId, AttemptOutcome, AttemptStartedRequest, BusinessId,
    Consistency, CreditEntryCreateRequest, CreditExportRequest, EntryKind, HeartbeatRequest,
    JobActionRequest, JobId, JobListRequest, JobSpec, JobSubmitRequest, KeyCreateRequest, KeyId,
    LogAppendRequest, NodeDeleteRequest, NodeDrainRequest, NodeId, NodeRegisterRequest, Resources,
    ScheduleCreateRequest, ScheduleId, ScheduleUpdateRequest, Scope, WorkRequest,
};
use tanvrit_client::{Client, ClientConfig, ClientError};

/// One request as the test server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: serde_json::Value,
}

type Script = dyn Fn(usize, &Seen) -> Response + Send + Sync;

/// A server that records every request and answers with `script(n, request)`.
struct TestServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start(script: impl Fn(usize, &Seen) -> Response + Send + Sync + 'static) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let record = seen.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            let script = script.clone();
            let count = count.clone();
            async move {
                let request = Seen {
                    path: uri.path().to_string(),
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                record.lock().unwrap().push(request.clone());
                script(n, &request)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn json(status: StatusCode, index: u64, body: serde_json::Value) -> Response {
    (
        status,
        [("x-tanvrit-index", index.to_string())],
        axum::Json(body),
    )
        .into_response()
}

fn job_body(index: u64) -> serde_json::Value {
    serde_json::json!({
        "job": {
            "id": "job-1", "business": "acme", "spec": {"command": ["true"]},
            "state": "pending", "created_at": 1, "updated_at": 1
        },
        "index": index
    })
}

fn list_body(index: u64) -> serde_json::Value {
    serde_json::json!({"jobs": [], "index": index})
}

fn client(endpoints: Vec<String>, max_retries: u32) -> Client {
    Client::new(ClientConfig {
        endpoints,
        api_key: Some("test-key".into()),
        timeout: Duration::from_secs(5),
        max_retries,
        read_your_writes: true,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_secs(2),
        ..ClientConfig::default()
    })
    .unwrap()
}

fn submit() -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some("acme".into()),
        spec: JobSpec {
            command: vec!["true".into()],
            ..JobSpec::default()
        },
        idempotency_key: None,
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn an_error_body_becomes_an_api_error_with_its_code() {
    let server = TestServer::start(|_, _| {
        json(
            StatusCode::PAYMENT_REQUIRED,
            3,
            serde_json::json!({"error": {"code": "insufficient_credits", "message": "needs 10"}}),
        )
    })
    .await;
    let err = client(vec![server.url.clone()], 3)
        .submit_job(submit())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "insufficient_credits");
    assert_eq!(err.status(), Some(402));
    assert_eq!(err.message(), "needs 10");
    assert_eq!(server.seen().len(), 1, "a 402 is final, not retried");
}

#[tokio::test]
async fn requests_carry_the_bearer_key_and_the_api_path() {
    let server = TestServer::start(|_, _| json(StatusCode::OK, 1, job_body(1))).await;
    let id = JobId::from("job/with slash");
    client(vec![server.url.clone()], 0)
        .cancel_job(&id, JobActionRequest::default())
        .await
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/compute/jobs/job%2Fwith%20slash/cancel");
    assert_eq!(seen[0].headers["authorization"], "Bearer test-key");
    assert_eq!(seen[0].headers["content-type"], "application/json");
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after() {
    let server = TestServer::start(|n, _| {
        if n == 0 {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                axum::Json(
                    serde_json::json!({"error": {"code": "no_leader", "message": "election"}}),
                ),
            )
                .into_response()
        } else {
            json(StatusCode::OK, 5, job_body(5))
        }
    })
    .await;
    let started = Instant::now();
    let response = client(vec![server.url.clone()], 3)
        .submit_job(submit())
        .await
        .unwrap();
    assert_eq!(response.index, 5);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        started.elapsed()
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    // The retried submit is the same submission: the same idempotency key in the body.
    // An invented key stays out of the header, which would have the server keep the
    // whole response of every submit for its idempotency window.
    let key = seen[0].body["idempotency_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with("sdk-"));
    assert_eq!(seen[1].body["idempotency_key"], key.as_str());
    assert!(!seen[0].headers.contains_key("idempotency-key"));
    assert!(!seen[1].headers.contains_key("idempotency-key"));
}

#[tokio::test]
async fn a_429_is_retried_on_the_same_endpoint_even_for_a_keyless_write() {
    let server = TestServer::start(|n, _| {
        if n == 0 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                axum::Json(
                    serde_json::json!({"error": {"code": "rate_limited", "message": "slow down"}}),
                ),
            )
                .into_response()
        } else {
            json(StatusCode::OK, 6, job_body(6))
        }
    })
    .await;
    let other = TestServer::start(|_, _| json(StatusCode::OK, 7, job_body(7))).await;
    let response = client(vec![server.url.clone(), other.url.clone()], 1)
        .cancel_job(&JobId::from("job-1"), JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(response.index, 6);
    assert_eq!(
        server.seen().len(),
        2,
        "the limit is per replica: stay on it"
    );
    assert!(other.seen().is_empty());
}

#[tokio::test]
async fn a_503_that_persists_ends_as_an_api_error_with_the_hint() {
    let server = TestServer::start(|_, _| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            axum::Json(serde_json::json!({
                "error": {"code": "no_leader", "message": "election", "leader": "replica-2"}
            })),
        )
            .into_response()
    })
    .await;
    let err = client(vec![server.url.clone()], 2)
        .list_jobs(JobListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(server.seen().len(), 3, "one try and two retries");
    match err {
        ClientError::Api {
            status,
            code,
            retry_after,
            leader,
            ..
        } => {
            assert_eq!((status, code.as_str()), (503, "no_leader"));
            assert_eq!(retry_after, Some(Duration::ZERO));
            assert_eq!(leader.as_deref(), Some("replica-2"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_fails_over_to_the_next_endpoint_even_for_writes() {
    let server = TestServer::start(|_, _| json(StatusCode::OK, 9, job_body(9))).await;
    let dead = dead_endpoint().await;
    // No retries at all: moving past a refusing endpoint is free.
    let client = client(vec![dead, server.url.clone()], 0);
    let id = JobId::from("job-1");
    client
        .cancel_job(&id, JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(server.seen().len(), 1);
    assert_eq!(client.current_endpoint().trim_end_matches('/'), server.url);
    // Later calls start at the endpoint that worked.
    client
        .cancel_job(&id, JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn every_endpoint_refusing_is_a_transport_error_after_the_retries() {
    let client = client(vec![dead_endpoint().await, dead_endpoint().await], 1);
    let err = client
        .list_jobs(JobListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "transport");
    assert!(matches!(err, ClientError::Transport { not_sent: true, .. }));
}

/// A 503 `no_leader` as a replica cut off from the leader sends it: the leader's name in
/// the body and, when given, its API URL in the body and the `X-Tanvrit-Leader-Url` header.
fn no_leader(leader_url: Option<&str>) -> Response {
    let mut error = serde_json::json!({
        "code": "no_leader", "message": "cut off from the leader", "leader": "replica-3"
    });
    let mut response = if let Some(url) = leader_url {
        error["leader_url"] = url.into();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1"), ("x-tanvrit-leader-url", url)],
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response()
    };
    response.headers_mut().insert("x-tanvrit-index", 3.into());
    response
}

/// Replicas 2 and 3 that answer every call, and replica 1 that answers 503 naming
/// replica 3 as leader (with its URL when `hint`).
async fn cut_off_first_replica(hint: bool) -> [TestServer; 3] {
    let second = TestServer::start(|_, _| json(StatusCode::OK, 5, list_body(5))).await;
    let third = TestServer::start(|_, _| json(StatusCode::OK, 5, list_body(5))).await;
    let leader_url = hint.then(|| third.url.clone());
    let first = TestServer::start(move |_, _| no_leader(leader_url.as_deref())).await;
    [first, second, third]
}

fn urls(servers: &[TestServer]) -> Vec<String> {
    servers.iter().map(|s| s.url.clone()).collect()
}

fn calls(servers: &[TestServer]) -> Vec<usize> {
    servers.iter().map(|s| s.seen().len()).collect()
}

#[tokio::test]
async fn without_retries_a_503_naming_the_leader_sends_the_next_call_to_the_leaders_endpoint() {
    let replicas = cut_off_first_replica(true).await;
    let client = client(urls(&replicas), 0);
    let err = client
        .list_jobs(JobListRequest::default())
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), "no_leader"));
    assert_eq!(calls(&replicas), [1, 0, 0], "no retry left: one attempt");
    assert_eq!(
        client.current_endpoint().trim_end_matches('/'),
        replicas[2].url
    );
    client.list_jobs(JobListRequest::default()).await.unwrap();
    client.list_jobs(JobListRequest::default()).await.unwrap();
    assert_eq!(
        calls(&replicas),
        [1, 0, 2],
        "later calls stay with the leader"
    );
}

#[tokio::test]
async fn without_retries_a_503_without_a_leader_url_sends_the_next_call_to_the_next_endpoint() {
    let replicas = cut_off_first_replica(false).await;
    let client = client(urls(&replicas), 0);
    let id = JobId::from("job-1");
    // A write without a key: a 503 applied nothing, so moving on is safe for any call.
    client
        .cancel_job(&id, JobActionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(calls(&replicas), [1, 0, 0]);
    assert_eq!(
        client.current_endpoint().trim_end_matches('/'),
        replicas[1].url
    );
    client.list_jobs(JobListRequest::default()).await.unwrap();
    assert_eq!(calls(&replicas), [1, 1, 0]);
}

#[tokio::test]
async fn with_retries_a_503_naming_the_leader_is_retried_on_the_leaders_endpoint() {
    let replicas = cut_off_first_replica(true).await;
    let client = client(urls(&replicas), 2);
    let listed = client.list_jobs(JobListRequest::default()).await.unwrap();
    assert_eq!(listed.index, 5);
    assert_eq!(
        calls(&replicas),
        [1, 0, 1],
        "the retry skips replica 2 for the leader"
    );
    assert_eq!(
        client.current_endpoint().trim_end_matches('/'),
        replicas[2].url
    );
}

#[tokio::test]
async fn a_503_from_the_only_endpoint_keeps_it() {
    let server = TestServer::start(|_, _| no_leader(None)).await;
    let client = client(vec![server.url.clone()], 0);
    for _ in 0..2 {
        client
            .list_jobs(JobListRequest::default())
            .await
            .unwrap_err();
    }
    assert_eq!(server.seen().len(), 2);
    assert_eq!(client.current_endpoint().trim_end_matches('/'), server.url);
}

/// A server that reads each request and hangs up without answering, counting them.
async fn hang_up_server() -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                // Read until the end of the headers and the small body have arrived.
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n{") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_write_that_may_have_arrived_is_not_repeated_but_a_read_is() {
    let (url, count) = hang_up_server().await;
    let client = client(vec![url], 2);
    let err = client
        .cancel_job(&JobId::from("job-1"), JobActionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "transport");
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "cancel must not be repeated"
    );

    client
        .list_jobs(JobListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        count.load(Ordering::SeqCst),
        1 + 3,
        "a read is tried 1 + max_retries times"
    );

    // A submit carries an idempotency key, so it is repeated too.
    client.submit_job(submit()).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 4 + 3);
}

/// A 503 `write_outcome_unknown` as a leader cut off after proposing sends it.
fn outcome_unknown() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "0")],
        axum::Json(serde_json::json!({"error": {
            "code": "write_outcome_unknown",
            "message": "the write may or may not take effect",
            "leader": "replica-2"
        }})),
    )
        .into_response()
}

/// A replica that answers its first call with a 503 of `code`, then anything with `ok`.
async fn unavailable_once(first: fn() -> Response, ok: serde_json::Value) -> TestServer {
    TestServer::start(move |n, _| {
        if n == 0 {
            first()
        } else {
            json(StatusCode::OK, 5, ok.clone())
        }
    })
    .await
}

fn client_for(server: &TestServer, max_retries: u32) -> Client {
    client(vec![server.url.clone()], max_retries)
}

fn schedule() -> ScheduleCreateRequest {
    ScheduleCreateRequest {
        business: None,
        name: None,
        cron: "* * * * *".into(),
        timezone: None,
        template: JobSpec {
            command: vec!["true".into()],
            ..JobSpec::default()
        },
        enabled: None,
        overlap: None,
        catch_up: None,
    }
}

#[tokio::test]
async fn a_keyless_write_whose_outcome_is_unknown_is_not_repeated_and_moves_the_endpoint() {
    let first = unavailable_once(outcome_unknown, job_body(5)).await;
    let second = TestServer::start(|_, _| json(StatusCode::OK, 5, job_body(5))).await;
    let client = client(vec![first.url.clone(), second.url.clone()], 3);
    let err = client
        .cancel_job(&JobId::from("job-1"), JobActionRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), "write_outcome_unknown")
    );
    assert_eq!(
        (first.seen().len(), second.seen().len()),
        (1, 0),
        "a cancel that may have happened is the caller's to repeat"
    );
    assert_eq!(
        client.current_endpoint().trim_end_matches('/'),
        second.url,
        "the next call does not start at the replica that could not serve"
    );

    // Nor is a schedule creation, which would create a second schedule.
    let server = unavailable_once(outcome_unknown, serde_json::json!({})).await;
    let err = client_for(&server, 3)
        .create_schedule(schedule())
        .await
        .unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_keyed_write_whose_outcome_is_unknown_is_repeated_under_its_key() {
    let server = unavailable_once(outcome_unknown, job_body(5)).await;
    let keyed = client_for(&server, 3).with_idempotency_key("cancel-7");
    let response = keyed
        .cancel_job(&JobId::from("job-1"), JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(response.index, 5);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "the repeat learns what the first did");
    for request in &seen {
        assert_eq!(request.headers["idempotency-key"], "cancel-7");
    }

    // A submit carries its key in the body: the repeat is the same submission.
    let server = unavailable_once(outcome_unknown, job_body(6)).await;
    let response = client_for(&server, 3).submit_job(submit()).await.unwrap();
    assert_eq!(response.index, 6);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].body["idempotency_key"].is_string());
    assert_eq!(
        seen[0].body["idempotency_key"],
        seen[1].body["idempotency_key"]
    );
}

#[tokio::test]
async fn a_read_answered_outcome_unknown_is_repeated() {
    let server = unavailable_once(outcome_unknown, list_body(5)).await;
    let listed = client_for(&server, 3)
        .list_jobs(JobListRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.index, 5);
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_keyless_write_answered_no_leader_is_still_repeated() {
    // `no_leader` means nothing was proposed: repeating any write is safe.
    let server = unavailable_once(|| no_leader(None), job_body(5)).await;
    client_for(&server, 3)
        .cancel_job(&JobId::from("job-1"), JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn reads_after_a_write_ask_for_its_index() {
    let server = TestServer::start(|_, seen| {
        if seen.path.ends_with("/submit") {
            // The header lags the write's index, as on a forwarding follower.
            json(StatusCode::OK, 40, job_body(42))
        } else {
            json(StatusCode::OK, 40, list_body(40))
        }
    })
    .await;
    let client = client(vec![server.url.clone()], 0);
    client.list_jobs(JobListRequest::default()).await.unwrap();
    client.submit_job(submit()).await.unwrap();
    assert_eq!(client.last_index(), 42);
    client.list_jobs(JobListRequest::default()).await.unwrap();
    client
        .list_jobs(JobListRequest {
            consistency: Consistency::Strict,
            ..JobListRequest::default()
        })
        .await
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].body["consistency"], "stale", "nothing seen yet");
    assert_eq!(
        seen[1].body["consistency"],
        serde_json::Value::Null,
        "a submit is not a read"
    );
    assert!(
        seen[1].body["idempotency_key"].is_null()
            && !seen[1].headers.contains_key("idempotency-key"),
        "no retries, so no key is invented"
    );
    assert_eq!(
        seen[2].body["consistency"],
        serde_json::json!({"min_index": 42})
    );
    assert_eq!(
        seen[3].body["consistency"], "strict",
        "an explicit choice is kept"
    );
}

#[tokio::test]
async fn a_2xx_body_of_the_wrong_shape_is_a_decode_error() {
    let server =
        TestServer::start(|_, _| json(StatusCode::OK, 1, serde_json::json!({"x": 1}))).await;
    let err = client(vec![server.url.clone()], 0)
        .topology()
        .await
        .unwrap_err();
    assert_eq!(err.code(), "decode");
}

#[tokio::test]
async fn post_raw_sends_bytes_once_and_returns_any_status() {
    let server = TestServer::start(|_, _| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("x-tanvrit-index", "7")],
            "busy",
        )
            .into_response()
    })
    .await;
    let client = client(vec![server.url.clone()], 3);
    let raw = client
        .post_raw(
            "/api/compute/jobs/submit",
            b"{not json".to_vec(),
            &[("authorization", "Bearer other")],
        )
        .await
        .unwrap();
    assert_eq!(raw.status, 503);
    assert_eq!(raw.text(), "busy");
    assert_eq!(raw.index(), Some(7));
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "raw calls are never retried");
    assert_eq!(seen[0].headers["authorization"], "Bearer other");
}

// Two workers: the scripted server blocks one while the client's timer runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_calls_use_their_routes_and_the_work_poll_waits_past_the_timeout() {
    let server = TestServer::start(|_, seen| {
        let path = seen.path.as_str();
        let body = if path.ends_with("/heartbeat") {
            serde_json::json!({"interval_ms": 1000, "ttl_ms": 3000, "stop": ["att-9"], "index": 5})
        } else if path.ends_with("/work") {
            // Held longer than the client's 1 s timeout: the poll's wait extends it.
            std::thread::sleep(Duration::from_millis(1500));
            serde_json::json!({"assignments": [], "index": 6})
        } else if path.ends_with("/logs") {
            serde_json::json!({"next_offset": 3, "index": 7})
        } else {
            job_body(8)
        };
        json(StatusCode::OK, 5, body)
    })
    .await;
    let client = Client::new(ClientConfig {
        endpoints: vec![server.url.clone()],
        timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    })
    .unwrap();
    let (node, job, attempt) = (
        NodeId::from("n1"),
        JobId::from("job-1"),
        AttemptId::from("att-1"),
    );
    let beat = client
        .heartbeat_node(
            &node,
            HeartbeatRequest {
                running: vec![attempt.clone()],
            },
        )
        .await
        .unwrap();
    assert_eq!(beat.stop, vec![AttemptId::from("att-9")]);
    let work = client
        .poll_node_work(
            &node,
            WorkRequest {
                after_index: 5,
                wait_ms: Some(2000),
            },
        )
        .await
        .unwrap();
    assert_eq!(work.index, 6);
    client
        .report_attempt_started(&job, &attempt, AttemptStartedRequest::default())
        .await
        .unwrap();
    let logs = client
        .append_attempt_logs(
            &job,
            &attempt,
            LogAppendRequest {
                offset: 0,
                data: "hi\n".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(logs.next_offset, 3);
    client
        .report_attempt_finished(
            &job,
            &attempt,
            AttemptFinishedRequest {
                outcome: AttemptOutcome::Succeeded,
                exit_code: Some(0),
                reason: None,
                finished_at: Some(1),
                usage: None,
            },
        )
        .await
        .unwrap();
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/api/compute/nodes/n1/heartbeat",
            "/api/compute/nodes/n1/work",
            "/api/compute/jobs/job-1/attempts/att-1/started",
            "/api/compute/jobs/job-1/attempts/att-1/logs",
            "/api/compute/jobs/job-1/attempts/att-1/finished",
        ]
    );
    assert_eq!(server.seen()[1].body["after_index"], 5);
}

#[tokio::test]
async fn agent_reports_are_repeated_after_a_hang_up() {
    let (url, count) = hang_up_server().await;
    let client = client(vec![url], 2);
    let (job, attempt) = (JobId::from("job-1"), AttemptId::from("att-1"));
    let err = client
        .append_attempt_logs(
            &job,
            &attempt,
            LogAppendRequest {
                offset: 0,
                data: "x".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "transport");
    assert_eq!(count.load(Ordering::SeqCst), 3, "1 + max_retries sends");
}

#[tokio::test]
async fn a_keyed_handle_sends_its_key_with_every_write_and_nothing_else() {
    // Every answer is `{}`, which no write decodes: the requests are what is checked.
    let server = TestServer::start(|_, _| json(StatusCode::OK, 1, serde_json::json!({}))).await;
    let plain = client(vec![server.url.clone()], 0);
    let keyed = plain.with_idempotency_key("op-42");
    assert_eq!(keyed.idempotency_key(), Some("op-42"));
    assert_eq!(plain.idempotency_key(), None);
    let job = JobId::from("job-1");
    let node = NodeId::from("node-1");
    let schedule = ScheduleId::from("sch-1");
    let template = JobSpec {
        command: vec!["true".into()],
        ..JobSpec::default()
    };
    let results = vec![
        keyed.submit_job(submit()).await.map(drop),
        keyed
            .cancel_job(&job, JobActionRequest::default())
            .await
            .map(drop),
        keyed
            .retry_job(&job, JobActionRequest::default())
            .await
            .map(drop),
        keyed
            .register_node(NodeRegisterRequest {
                id: node.clone(),
                name: "n1".into(),
                resources: Resources::default(),
                drivers: Vec::new(),
                labels: Default::default(),
            })
            .await
            .map(drop),
        keyed
            .drain_node(&node, NodeDrainRequest::default())
            .await
            .map(drop),
        keyed
            .delete_node(&node, NodeDeleteRequest::default())
            .await
            .map(drop),
        keyed
            .create_key(KeyCreateRequest {
                name: None,
                scope: Scope::Agent,
                business: None,
                node: None,
            })
            .await
            .map(drop),
        keyed.revoke_key(&KeyId::from("key-1")).await.map(drop),
        keyed
            .create_credit_entry(CreditEntryCreateRequest {
                business: BusinessId::from("acme"),
                kind: EntryKind::TopUp,
                amount: 5,
                idempotency_key: None,
                note: None,
            })
            .await
            .map(drop),
        keyed
            .create_schedule(ScheduleCreateRequest {
                business: None,
                name: None,
                cron: "* * * * *".into(),
                timezone: None,
                template,
                enabled: None,
                overlap: None,
                catch_up: None,
            })
            .await
            .map(drop),
        keyed
            .update_schedule(&schedule, ScheduleUpdateRequest::default())
            .await
            .map(drop),
        keyed.delete_schedule(&schedule).await.map(drop),
    ];
    assert!(results
        .iter()
        .all(|r| r.as_ref().unwrap_err().code() == "decode"));
    keyed
        .list_jobs(JobListRequest::default())
        .await
        .unwrap_err();
    plain
        .cancel_job(&job, JobActionRequest::default())
        .await
        .unwrap_err();
    let seen = server.seen();
    assert_eq!(seen.len(), 14);
    for write in &seen[..12] {
        assert_eq!(write.headers["idempotency-key"], "op-42", "{}", write.path);
    }
    assert!(
        seen[0].body["idempotency_key"].is_null() && seen[8].body["idempotency_key"].is_null(),
        "the server takes the header for the body's key; none is invented"
    );
    assert!(!seen[12].headers.contains_key("idempotency-key"), "a read");
    assert!(
        !seen[13].headers.contains_key("idempotency-key"),
        "the client the handle came from"
    );
}

#[tokio::test]
async fn a_write_with_an_idempotency_key_is_repeated_after_a_failure_that_may_have_arrived() {
    let (url, count) = hang_up_server().await;
    let client = client(vec![url], 2);
    client
        .with_idempotency_key("cancel-1")
        .cancel_job(&JobId::from("job-1"), JobActionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        count.load(Ordering::SeqCst),
        3,
        "one try and two retries: the server answers a repeat with the first response"
    );
}

#[tokio::test]
async fn a_ledger_export_is_read_as_csv_text() {
    let csv = "seq,id,at,kind,amount,balance_after,job,idempotency_key,note\r\n";
    let server = TestServer::start(move |_, _| {
        (
            StatusCode::OK,
            [("content-type", "text/csv; charset=utf-8")],
            csv,
        )
            .into_response()
    })
    .await;
    let client = client(vec![server.url.clone()], 0);
    let text = client
        .export_credit_entries(CreditExportRequest {
            consistency: Consistency::Stale,
            business: BusinessId::from("acme"),
            from: Some(10),
            to: None,
        })
        .await
        .unwrap();
    assert_eq!(text, csv);
    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/compute/credits/entries/export");
    assert_eq!(seen[0].body["business"], "acme");
    assert_eq!(seen[0].body["from"], 10);
}
