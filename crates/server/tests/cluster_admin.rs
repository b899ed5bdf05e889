//! The membership routes (`cluster/init`, `cluster/replicas/add|remove`) and the leader
//! hint on 503s, driven in process against a `SingleNode` (which has no membership) and
//! a wrapper that has lost its leader.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tanvrit_api::{Consistency, Index, Role, Topology};
use tanvrit_cluster::{
    ClusterError, ClusterService, Reader, Receipt, SingleNode, SingleNodeConfig,
};
use tanvrit_server::{ensure_bootstrap_admin, router, ServerConfig};
use tanvrit_state::Command;
use tempfile::TempDir;
use tokio::sync::watch;
use tower::ServiceExt;

const ADMIN_SECRET: &str = "test-admin-secret-0001";

/// A `SingleNode` that behaves like a follower whose leader cannot take writes.
struct LeaderElsewhere {
    inner: Arc<SingleNode>,
    leader_addr: Option<String>,
    leadership: watch::Sender<bool>,
}

#[async_trait]
impl ClusterService for LeaderElsewhere {
    fn role(&self) -> Role {
        Role::Follower
    }

    fn leader_id(&self) -> Option<String> {
        Some("replica-2".into())
    }

    fn topology(&self) -> Topology {
        self.inner.topology()
    }

    async fn submit_write(&self, _command: Command) -> Result<Receipt, ClusterError> {
        Err(ClusterError::NoLeader {
            retry_after: Duration::from_millis(400),
            leader: Some("replica-2".into()),
        })
    }

    async fn read_barrier(&self, consistency: Consistency) -> Result<Index, ClusterError> {
        self.inner.read_barrier(consistency).await
    }

    fn reader(&self) -> &Reader {
        self.inner.reader()
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.subscribe()
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }

    fn leader_api_addr(&self) -> Option<String> {
        self.leader_addr.clone()
    }
}

async fn single_node() -> (Arc<SingleNode>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SingleNode::open(SingleNodeConfig::new(dir.path().join("data"))).unwrap();
    ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some(ADMIN_SECRET))
        .await
        .unwrap();
    (cluster, dir)
}

async fn post(router: &Router, path: &str, body: Value) -> (StatusCode, Value, Option<String>) {
    let request = Request::post(format!("/api/compute/{path}"))
        .header("authorization", format!("Bearer {ADMIN_SECRET}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let hint = response
        .headers()
        .get(tanvrit_api::LEADER_URL_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap(), hint)
}

#[tokio::test]
async fn membership_routes_are_refused_without_raft_and_check_their_input() {
    let (cluster, _dir) = single_node().await;
    let api = router(ServerConfig::default(), cluster);
    let (status, body, _) = post(&api, "cluster/init", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "membership_refused");
    let add = json!({"id": 4, "name": "r4", "raft_addr": "127.0.0.1:1", "api_addr": ""});
    let (status, body, _) = post(&api, "cluster/replicas/add", add).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("membership_refused"))
    );
    let (status, body, _) = post(
        &api,
        "cluster/replicas/add",
        json!({"id": 0, "name": "r0", "raft_addr": "127.0.0.1:1"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid"))
    );
    let (status, body, _) = post(&api, "cluster/replicas/remove", json!({"id": 2, "x": 1})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}

#[tokio::test]
async fn a_503_names_the_leaders_api_url_when_it_is_known() {
    let (inner, _dir) = single_node().await;
    let submit = json!({"business": "acme", "command": ["true"]});
    let cluster = Arc::new(LeaderElsewhere {
        inner: inner.clone(),
        leader_addr: Some("127.0.0.1:7072".into()),
        leadership: watch::channel(false).0,
    });
    let api = router(ServerConfig::default(), cluster);
    let (status, body, hint) = post(&api, "jobs/submit", submit.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_leader");
    assert_eq!(body["error"]["leader"], "replica-2");
    assert_eq!(body["error"]["leader_url"], "http://127.0.0.1:7072");
    assert_eq!(hint.as_deref(), Some("http://127.0.0.1:7072"));

    let unknown = Arc::new(LeaderElsewhere {
        inner,
        leader_addr: None,
        leadership: watch::channel(false).0,
    });
    let api = router(ServerConfig::default(), unknown);
    let (status, body, hint) = post(&api, "jobs/submit", submit).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].get("leader_url").is_none(), "{body}");
    assert_eq!(hint, None);
}

#[tokio::test]
async fn the_cluster_secret_authorizes_membership_calls_like_an_admin_key() {
    let (cluster, _dir) = single_node().await;
    let config = ServerConfig {
        cluster_secret: Some(tanvrit_server::ClusterSecret(
            "the-cluster-secret-0123".into(),
        )),
        ..ServerConfig::default()
    };
    let api = router(config, cluster.clone());
    let call = |secret: &'static str| {
        let api = api.clone();
        async move {
            let request = Request::post("/api/compute/cluster/init")
                .header(tanvrit_api::CLUSTER_SECRET_HEADER, secret)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            api.oneshot(request).await.unwrap().status()
        }
    };
    // Authorized (then refused: a single node has no membership to form).
    assert_eq!(call("the-cluster-secret-0123").await, StatusCode::CONFLICT);
    assert_eq!(
        call("the-cluster-secret-0124").await,
        StatusCode::UNAUTHORIZED
    );
    let without = router(ServerConfig::default(), cluster);
    let request = Request::post("/api/compute/cluster/init")
        .header(
            tanvrit_api::CLUSTER_SECRET_HEADER,
            "the-cluster-secret-0123",
        )
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(
        without.oneshot(request).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "no secret configured: only admin keys"
    );
}
