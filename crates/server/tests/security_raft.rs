//! Issue 16's API rules on a three-replica Raft cluster (testkit's in-process harness):
//! a refused write sent through a follower enters no replica's log, and an agent that
//! enrolled its node through the leader is never refused by a follower that has not
//! applied the binding yet.

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
async fn post(api: &Router, path: &str, key: &str, body: Value) -> (u16, Value) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = post_once(api, path, key, body.clone()).await;
        if answer.0 != 503 || std::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_once(api: &Router, path: &str, key: &str, body: Value) -> (u16, Value) {
    let request = Request::post(format!("/api/compute/{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Creates a key through `api` and returns its secret.
async fn key(api: &Router, body: Value) -> (String, u64) {
    let (status, created) = post(api, "keys/create", ADMIN, body).await;
    assert_eq!(status, 200, "{created}");
    (
        created["secret"].as_str().unwrap().to_string(),
        created["index"].as_u64().unwrap(),
    )
}

/// Three replicas with a leader, the admin key `ADMIN`, and a follower's id.
async fn cluster() -> (TestCluster, u64, u64, tempfile::TempDir) {
    let cluster = TestCluster::start(ClusterOptions::voters(3)).await.unwrap();
    let leader = cluster.leader(WAIT).await;
    let dir = tempfile::tempdir().unwrap();
    ensure_bootstrap_admin(cluster.node(leader).as_ref(), dir.path(), Some(ADMIN))
        .await
        .unwrap();
    let follower = *cluster.running().iter().find(|id| **id != leader).unwrap();
    (cluster, leader, follower, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_refused_through_a_follower_enter_no_replicas_log() {
    let (cluster, leader, follower, _dir) = cluster().await;
    let (user, index) = key(
        &api(cluster.node(leader)),
        json!({ "scope": "user", "business": "acme" }),
    )
    .await;
    // Followers authenticate from their own state: let every replica catch up.
    cluster.applied_everywhere(index, WAIT).await;
    // Jobs cost credits here (the default rates are zero), and acme has none.
    let follower_api = router(
        ServerConfig {
            rates: tanvrit_api::Rates {
                cpu_second: 10,
                memory_gb_second: 0,
                gpu_second: 0,
                attempt_minimum: 0,
                basis: tanvrit_api::BillingBasis::Reserved,
            },
            ..ServerConfig::default()
        },
        cluster.node(follower),
    );
    let spec =
        json!({ "command": ["true"], "resources": { "cpu_millis": 1000 }, "timeout_secs": 60 });
    for _ in 0..20 {
        let (status, body) = post(&follower_api, "jobs/submit", &user, spec.clone()).await;
        assert_eq!(status, 402, "{body}");
        assert_eq!(body["error"]["code"], "insufficient_credits");
    }
    for id in cluster.running() {
        assert_eq!(
            cluster.node(id).reader().applied_index(),
            index,
            "replica {id} applied something"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolled_through_the_leader_is_never_refused_by_a_lagging_follower() {
    let (cluster, leader, follower, _dir) = cluster().await;
    let (agent, index) = key(&api(cluster.node(leader)), json!({ "scope": "agent" })).await;
    cluster.applied_everywhere(index, WAIT).await;
    // The follower hears nothing of the enrollment: it holds the key as unbound.
    cluster.faults().isolate(follower);
    let register = json!({
        "id": "node-a",
        "name": "a",
        "resources": { "cpu_millis": 1000, "memory_mb": 512, "gpus": 0 },
    });
    let (status, body) = post(
        &api(cluster.node(leader)),
        "nodes/register",
        &agent,
        register,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let follower_api = router(
        ServerConfig {
            min_index_wait: Duration::from_millis(300),
            ..ServerConfig::default()
        },
        cluster.node(follower),
    );
    let (status, body) = post_once(&follower_api, "nodes/node-a/work", &agent, json!({})).await;
    assert_eq!(
        status, 503,
        "a follower that cannot confirm the binding says so instead of refusing: {body}"
    );
    cluster.faults().heal();
    let (status, body) = post(&follower_api, "nodes/node-a/work", &agent, json!({})).await;
    assert_eq!(status, 200, "{body}");
}
