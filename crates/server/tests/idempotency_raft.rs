//! Idempotency keys are replicated state: on a three-replica Raft cluster, a retry sent
//! through a follower, or through the leader elected after the first one stopped, gets
//! the first response, same body and `index`; and a write whose outcome a cut-off leader
//! cannot know is answered `write_outcome_unknown`, which its key then resolves.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use serde_json::{json, Value};
use tanvrit_cluster::{ClusterService, RaftCluster};
use tanvrit_server::{ensure_bootstrap_admin, router, ServerConfig};
use tanvrit_testkit::cluster::{ClusterOptions, TestCluster};
use tower::ServiceExt;

const ADMIN: &str = "test-admin-secret-0001";
const WAIT: Duration = Duration::from_secs(10);

fn api(node: Arc<RaftCluster>) -> Router {
    router(ServerConfig::default(), node)
}

/// Posts like a client would: a 503 (an election settling) is retried, boundedly.
async fn post(api: &Router, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let mut answer = post_once(api, path, key, body).await;
    let deadline = std::time::Instant::now() + WAIT;
    while answer.0 == 503 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        answer = post_once(api, path, key, body).await;
    }
    answer
}

async fn post_once(api: &Router, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let (status, _, body) = post_with_headers(api, path, key, body).await;
    (status, body)
}

async fn post_with_headers(
    api: &Router,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, header::HeaderMap, Value) {
    let request = Request::post(format!("/api/compute/{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header("Idempotency-Key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

/// Three replicas with a leader and the admin key `ADMIN` (its file goes to the
/// returned directory).
async fn cluster_with_admin() -> (TestCluster, u64, tempfile::TempDir) {
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let dir = tempfile::tempdir().unwrap();
    ensure_bootstrap_admin(cluster.node(leader).as_ref(), dir.path(), Some(ADMIN))
        .await
        .unwrap();
    (cluster, leader, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_a_follower_or_a_new_leader_gets_the_first_response() {
    let (mut cluster, leader, _dir) = cluster_with_admin().await;
    let leader_node = cluster.node(leader);
    let entry = json!({ "business": "acme", "kind": "top_up", "amount": 1000 });
    let (status, first) = post(&api(leader_node), "credits/entries/create", "pay-1", &entry).await;
    assert_eq!(status, 200, "{first}");
    let index = first["index"].as_u64().unwrap();
    // Followers authenticate from their own state: let every replica catch up.
    cluster.applied_everywhere(index, WAIT).await;

    let follower = *cluster.running().iter().find(|id| **id != leader).unwrap();
    let via_follower = post(
        &api(cluster.node(follower)),
        "credits/entries/create",
        "pay-1",
        &entry,
    )
    .await;
    assert_eq!(via_follower, (200, first.clone()), "forwarded retry");

    cluster.stop(leader).await;
    let survivors: Vec<_> = cluster.running();
    let new_leader = cluster.leader_among(&survivors, WAIT).await;
    assert_ne!(new_leader, leader);
    let via_new_leader = post(
        &api(cluster.node(new_leader)),
        "credits/entries/create",
        "pay-1",
        &entry,
    )
    .await;
    assert_eq!(via_new_leader, (200, first.clone()), "retry after failover");

    let conflict = post(
        &api(cluster.node(new_leader)),
        "credits/entries/create",
        "pay-1",
        &json!({ "business": "acme", "kind": "top_up", "amount": 2000 }),
    )
    .await;
    assert_eq!(conflict.0, 422);
    assert_eq!(conflict.1["error"]["code"], "idempotency_conflict");
    let entries = cluster
        .node(new_leader)
        .reader()
        .read(|state| state.account(&"acme".into()).map_or(0, |a| a.entry_count()));
    assert_eq!(entries, 1, "credited once");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_its_leader_was_cut_off_under_is_503_write_outcome_unknown_until_its_key_is_repeated(
) {
    let (cluster, leader, _dir) = cluster_with_admin().await;
    let leader_node = cluster.node(leader);
    let warm = json!({ "business": "acme", "kind": "top_up", "amount": 1 });
    let (status, first) = post(
        &api(leader_node.clone()),
        "credits/entries/create",
        "warm",
        &warm,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    cluster
        .applied_everywhere(first["index"].as_u64().unwrap(), WAIT)
        .await;

    // The leader appends the entry, then loses its quorum before it commits.
    cluster.faults().isolate(leader);
    let entry = json!({ "business": "acme", "kind": "top_up", "amount": 1000 });
    let (status, headers, body) = post_with_headers(
        &api(leader_node.clone()),
        "credits/entries/create",
        "pay-2",
        &entry,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "write_outcome_unknown", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("may or may not take effect"), "{message}");
    assert!(message.contains("same Idempotency-Key"), "{message}");
    let retry_after: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    // Repeated with its key (through the old leader, now a follower), the write is
    // found or applied, and in either case applied once.
    cluster.faults().heal();
    let (status, repeat) = post(&api(leader_node), "credits/entries/create", "pay-2", &entry).await;
    assert_eq!(status, 200, "{repeat}");
    cluster
        .applied_everywhere(repeat["index"].as_u64().unwrap(), WAIT)
        .await;
    for id in cluster.running() {
        let entries = cluster
            .node(id)
            .reader()
            .read(|state| state.account(&"acme".into()).map_or(0, |a| a.entry_count()));
        assert_eq!(entries, 2, "replica {id}: the warm-up and pay-2, once");
    }
    cluster.shutdown().await;
}
