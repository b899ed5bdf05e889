//! The agent protocol and the leader loops, driven over the API (`router_with_leader_loops`)
//! against a real `SingleNode` in a temporary directory: placement without a poke, node
//! liveness, drain deadlines, stop lists, the work long poll, attempt reports with
//! fencing, cron fires, retention, and loops that stop when leadership is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tanvrit_api::{Consistency, Index, Rates, Role, Topology};
use tanvrit_cluster::{
    ClusterError, ClusterService, Reader, Receipt, SingleNode, SingleNodeConfig,
};
use tanvrit_server::{
    ensure_bootstrap_admin, router_with_leader_loops, serve, LeaderLoops, ServerConfig,
};
use tanvrit_state::Command;
use tempfile::TempDir;
use tokio::sync::watch;
use tower::ServiceExt;

const ADMIN_SECRET: &str = "test-admin-secret-0001";
/// Conditions polled for are expected well within this.
const PATIENCE: Duration = Duration::from_secs(15);

struct Api {
    router: Router,
    /// Taken by a test that stops the loops itself.
    loops: Option<LeaderLoops>,
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

async fn open_cluster() -> (Arc<SingleNode>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = SingleNode::open(SingleNodeConfig::new(dir.path().join("data"))).unwrap();
    ensure_bootstrap_admin(cluster.as_ref(), dir.path(), Some(ADMIN_SECRET))
        .await
        .unwrap();
    (cluster, dir)
}

/// The API with its leader loops on a fresh single node.
async fn start(config: ServerConfig) -> Api {
    let (cluster, dir) = open_cluster().await;
    let (router, loops) = router_with_leader_loops(config, cluster);
    Api {
        router,
        loops: Some(loops),
        _dir: dir,
    }
}

impl Api {
    fn loops(&self) -> &LeaderLoops {
        self.loops.as_ref().expect("the loops were taken")
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

    async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        let request = Request::post(format!("/api/compute/{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    async fn admin(&self, path: &str, body: Value) -> Reply {
        self.post(path, ADMIN_SECRET, body).await
    }

    /// `post`, expecting 200.
    async fn ok(&self, path: &str, key: &str, body: Value) -> Value {
        let reply = self.post(path, key, body).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.body
    }

    /// Repeats an admin read until `condition` holds for its body.
    async fn admin_until(&self, path: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let reply = self.admin(path, json!({})).await;
            if reply.status == 200 && condition(&reply.body) {
                return reply.body;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{path} never reached the condition; last answer {} {}",
                reply.status,
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates a key and returns its secret.
    async fn key(&self, scope: &str, business: Option<&str>) -> String {
        let body = self
            .ok(
                "keys/create",
                ADMIN_SECRET,
                json!({ "scope": scope, "business": business }),
            )
            .await;
        body["secret"].as_str().unwrap().to_string()
    }

    async fn top_up(&self, business: &str) {
        self.ok(
            "credits/entries/create",
            ADMIN_SECRET,
            json!({ "business": business, "kind": "top_up", "amount": 100_000_000 }),
        )
        .await;
    }

    async fn register(&self, agent: &str, node: &str) -> Value {
        self.ok(
            "nodes/register",
            agent,
            json!({ "id": node, "name": node, "resources": { "cpu_millis": 4000, "memory_mb": 4096 } }),
        )
        .await
    }

    /// Submits a job for `acme`; returns its id.
    async fn submit(&self, max_retries: u32) -> String {
        let mut spec = job_spec();
        spec["business"] = json!("acme");
        spec["max_retries"] = json!(max_retries);
        let body = self.ok("jobs/submit", ADMIN_SECRET, spec).await;
        body["job"]["id"].as_str().unwrap().to_string()
    }

    /// Waits until the job is assigned with `attempts` attempts; returns the job.
    async fn assigned(&self, job: &str, attempts: usize) -> Value {
        let body = self
            .admin_until(&format!("jobs/{job}/get"), |body| {
                body["job"]["state"] == "assigned"
                    && body["job"]["attempts"].as_array().map(Vec::len) == Some(attempts)
            })
            .await;
        body["job"].clone()
    }

    async fn metrics(&self) -> String {
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        self.send(request).await.body.as_str().unwrap().to_string()
    }

    /// Waits until the unlabelled sample `name` satisfies `condition`. (A loop counts
    /// what it did just after its write is applied, so the count may trail the state.)
    async fn metric_until(&self, name: &str, condition: impl Fn(f64) -> bool) {
        let started = Instant::now();
        loop {
            let metrics = self.metrics().await;
            if sample(&metrics, name).is_some_and(&condition) {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{name} never reached the condition:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn job_spec() -> Value {
    json!({ "command": ["sleep", "1"], "resources": { "cpu_millis": 1000 }, "timeout_secs": 10 })
}

fn current_attempt(job: &Value) -> Value {
    job["attempts"].as_array().unwrap().last().unwrap().clone()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn a_registered_node_and_a_submitted_job_are_placed_without_a_poke() {
    let api = start(config()).await;
    assert!(api.loops().wait_running(true, PATIENCE).await);
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-1").await;
    api.top_up("acme").await;
    let job = api.submit(0).await;

    let placed = api.assigned(&job, 1).await;
    let attempt = current_attempt(&placed);
    assert_eq!(attempt["node"], "node-1");
    assert_eq!(attempt["state"], "assigned");
    assert!(attempt["id"].as_str().unwrap().starts_with("att-"));

    api.metric_until("tanvrit_scheduler_placements_total", |n| n == 1.0)
        .await;
    let metrics = api.metrics().await;
    assert!(sample(&metrics, "tanvrit_scheduler_rounds_total").unwrap() >= 1.0);
    assert_eq!(sample(&metrics, "tanvrit_leader_loops_running"), Some(4.0));
}

/// Heartbeats for `node` every 50 ms until aborted.
fn keep_alive(api: &Arc<Api>, agent: &str, node: &str) -> tokio::task::JoinHandle<()> {
    let (api, agent, path) = (
        api.clone(),
        agent.to_string(),
        format!("nodes/{node}/heartbeat"),
    );
    tokio::spawn(async move {
        loop {
            api.post(&path, &agent, json!({})).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test]
async fn a_silent_node_goes_down_after_its_ttl_and_its_job_is_retried_elsewhere_after_lost_after() {
    let api = Arc::new(
        start(ServerConfig {
            node_ttl: Duration::from_millis(300),
            node_lost_after: Duration::from_millis(1500),
            ..config()
        })
        .await,
    );
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-a").await;
    let beat = api
        .ok("nodes/node-a/heartbeat", &agent, json!({ "running": [] }))
        .await;
    assert_eq!(
        (
            beat["ttl_ms"].as_u64(),
            beat["interval_ms"].as_u64(),
            beat["lost_after_ms"].as_u64()
        ),
        (Some(300), Some(100), Some(1500))
    );
    let node_a = keep_alive(&api, &agent, "node-a");
    api.top_up("acme").await;
    let job = api.submit(1).await;
    let first = current_attempt(&api.assigned(&job, 1).await);
    assert_eq!(first["node"], "node-a");
    let started = api
        .ok(
            &format!(
                "jobs/{job}/attempts/{}/started",
                first["id"].as_str().unwrap()
            ),
            &agent,
            json!({}),
        )
        .await;
    assert_eq!(started["job"]["state"], "running");

    // node-b joins (with a key of its own) and keeps heartbeating; node-a falls silent.
    let agent_b = api.key("agent", None).await;
    api.register(&agent_b, "node-b").await;
    let node_b = keep_alive(&api, &agent_b, "node-b");
    node_a.abort();
    api.admin_until("nodes/node-a/get", |body| body["node"]["state"] == "down")
        .await;
    // Down, but its work is still its own (and not placed elsewhere) until lost_after.
    let kept = api.admin(&format!("jobs/{job}/get"), json!({})).await;
    assert_eq!(kept.body["job"]["state"], "running", "{}", kept.body);
    assert_eq!(kept.body["job"]["attempts"].as_array().unwrap().len(), 1);
    let retried = api.assigned(&job, 2).await;
    node_b.abort();
    let attempts = retried["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[1]["node"], "node-b");
    assert_eq!(retried["retries"], 1);

    let node_b = api.admin("nodes/node-b/get", json!({})).await;
    assert_eq!(
        node_b.body["node"]["state"], "ready",
        "it kept heartbeating"
    );
    let late = api.post("nodes/node-a/heartbeat", &agent, json!({})).await;
    assert_eq!(
        (late.status.as_u16(), late.code()),
        (409, "illegal_transition"),
        "a down node registers again: {}",
        late.body
    );
    api.metric_until("tanvrit_nodes_lost_total", |n| n == 1.0)
        .await;
    // Registering again brings it back.
    assert_eq!(
        api.register(&agent, "node-a").await["node"]["state"],
        "ready"
    );
}

#[tokio::test]
async fn the_heartbeat_tells_the_agent_to_stop_cancelled_and_unknown_attempts() {
    let api = start(config()).await;
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-1").await;
    api.top_up("acme").await;
    let job = api.submit(0).await;
    let attempt = current_attempt(&api.assigned(&job, 1).await)["id"]
        .as_str()
        .unwrap()
        .to_string();

    let beat = api
        .ok(
            "nodes/node-1/heartbeat",
            &agent,
            json!({ "running": [attempt, "att-ghost"] }),
        )
        .await;
    assert_eq!(beat["stop"], json!(["att-ghost"]));
    assert_eq!(
        (beat["ttl_ms"].as_u64(), beat["interval_ms"].as_u64()),
        (Some(15_000), Some(5_000))
    );
    assert!(beat["index"].is_u64());

    api.ok(
        &format!("jobs/{job}/attempts/{attempt}/started"),
        &agent,
        json!({}),
    )
    .await;
    let cancelled = api.admin(&format!("jobs/{job}/cancel"), json!({})).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let beat = api
        .ok(
            "nodes/node-1/heartbeat",
            &agent,
            json!({ "running": [attempt] }),
        )
        .await;
    assert_eq!(beat["stop"], json!([attempt]), "cancelling: stop it");
    let work = api.ok("nodes/node-1/work", &agent, json!({})).await;
    assert_eq!(work["assignments"][0]["state"], "cancelling");

    let finished = api
        .ok(
            &format!("jobs/{job}/attempts/{attempt}/finished"),
            &agent,
            json!({ "outcome": "cancelled", "reason": "told to stop" }),
        )
        .await;
    assert_eq!(finished["job"]["state"], "cancelled");
    assert_eq!(current_attempt(&finished["job"])["state"], "cancelled");
    let beat = api
        .ok(
            "nodes/node-1/heartbeat",
            &agent,
            json!({ "running": [attempt] }),
        )
        .await;
    assert_eq!(beat["stop"], json!([attempt]), "ended: still not to run");
    let work = api.ok("nodes/node-1/work", &agent, json!({})).await;
    assert_eq!(work["assignments"], json!([]));

    // (An agent key acts for its own node only: an admin asks about another.)
    let unknown = api.admin("nodes/node-9/heartbeat", json!({})).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.code()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn the_work_long_poll_answers_when_an_assignment_appears_and_times_out_empty() {
    let api = Arc::new(start(config()).await);
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-1").await;
    api.top_up("acme").await;

    let behind = api
        .ok(
            "nodes/node-1/work",
            &agent,
            json!({ "after_index": 0, "wait_ms": 10_000 }),
        )
        .await;
    assert_eq!(
        behind["assignments"],
        json!([]),
        "an agent behind is answered at once"
    );
    let index = behind["index"].as_u64().unwrap();

    // Polls as an agent does, passing on the index of each answer, until work comes.
    let poll = {
        let (api, agent) = (api.clone(), agent.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut after = index;
            loop {
                let reply = api
                    .ok(
                        "nodes/node-1/work",
                        &agent,
                        json!({ "after_index": after, "wait_ms": 10_000 }),
                    )
                    .await;
                if reply["assignments"] != json!([]) {
                    return (reply, started.elapsed());
                }
                after = reply["index"].as_u64().unwrap();
            }
        })
    };
    let job = api.submit(0).await;
    let (work, waited) = poll.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "answered at the assignment, not the deadline"
    );
    let assignments = work["assignments"].as_array().unwrap();
    assert_eq!(assignments.len(), 1, "{work}");
    assert_eq!(assignments[0]["job"], job.as_str());
    assert_eq!(assignments[0]["state"], "assigned");
    assert_eq!(assignments[0]["log_offset"], 0);
    assert_eq!(assignments[0]["spec"]["command"], json!(["sleep", "1"]));
    assert!(work["index"].as_u64().unwrap() > index);

    let agent = api.key("agent", None).await;
    api.register(&agent, "node-2").await;
    let now = api.ok("nodes/node-2/work", &agent, json!({})).await["index"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let idle = api
        .ok(
            "nodes/node-2/work",
            &agent,
            json!({ "after_index": now, "wait_ms": 300 }),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(idle["assignments"], json!([]));
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");

    let unknown = api.admin("nodes/node-9/work", json!({})).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn attempt_reports_flow_through_and_stale_attempts_are_refused() {
    let api = start(config()).await;
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-1").await;
    api.top_up("acme").await;
    let job = api.submit(1).await;
    let first = current_attempt(&api.assigned(&job, 1).await);
    let att1 = first["id"].as_str().unwrap().to_string();
    let assigned_at = first["assigned_at"].as_i64().unwrap();
    let reports = format!("jobs/{job}/attempts/{att1}");

    // A start time before the placement is clamped to it.
    let started = api
        .ok(
            &format!("{reports}/started"),
            &agent,
            json!({ "started_at": 1 }),
        )
        .await;
    assert_eq!(started["job"]["state"], "running");
    assert_eq!(current_attempt(&started["job"])["started_at"], assigned_at);
    let again = api
        .ok(&format!("{reports}/started"), &agent, json!({}))
        .await;
    assert_eq!(
        again["job"]["state"], "running",
        "a repeated report is fine"
    );

    let chunk = api
        .ok(
            &format!("{reports}/logs"),
            &agent,
            json!({ "offset": 0, "data": "hello\n" }),
        )
        .await;
    assert_eq!(chunk["next_offset"], 6);
    for (offset, data) in [(0, "hello\n"), (3, "lo\n")] {
        let repeat = api
            .ok(
                &format!("{reports}/logs"),
                &agent,
                json!({ "offset": offset, "data": data }),
            )
            .await;
        assert_eq!(repeat["next_offset"], 6, "a stored chunk is accepted again");
    }
    let gap = api
        .post(
            &format!("{reports}/logs"),
            &agent,
            json!({ "offset": 10, "data": "x" }),
        )
        .await;
    assert_eq!((gap.status.as_u16(), gap.code()), (409, "log_gap"));
    let message = gap.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ending at 6"),
        "names the expected offset: {message}"
    );
    let logs = api.admin(&format!("jobs/{job}/logs"), json!({})).await;
    assert_eq!(logs.body["data"], "hello\n");

    // A finish time in the future is clamped to now; the failure is retried.
    let before = now_ms();
    let failed = api
        .ok(
            &format!("{reports}/finished"),
            &agent,
            json!({ "outcome": "failed", "exit_code": 3, "finished_at": before + 3_600_000 }),
        )
        .await;
    let ended = current_attempt(&failed["job"]);
    assert_eq!(ended["state"], "failed");
    assert_eq!(ended["exit_code"], 3);
    let finished_at = ended["finished_at"].as_i64().unwrap();
    assert!((before..=now_ms()).contains(&finished_at), "{finished_at}");
    assert_eq!(failed["job"]["state"], "pending");

    let restart = api
        .post(&format!("{reports}/started"), &agent, json!({}))
        .await;
    assert_eq!(
        (restart.status.as_u16(), restart.code()),
        (409, "stale_attempt"),
        "{}",
        restart.body
    );
    // After the retry backoff the scheduler places a second attempt.
    let second = current_attempt(&api.assigned(&job, 2).await);
    let att2 = second["id"].as_str().unwrap().to_string();
    assert_ne!(att2, att1);
    let late = api
        .post(
            &format!("{reports}/finished"),
            &agent,
            json!({ "outcome": "succeeded" }),
        )
        .await;
    assert_eq!((late.status.as_u16(), late.code()), (409, "stale_attempt"));
    let ghost = api
        .post(
            &format!("jobs/{job}/attempts/att-ghost/logs"),
            &agent,
            json!({ "offset": 0, "data": "boo" }),
        )
        .await;
    assert_eq!(
        (ghost.status.as_u16(), ghost.code()),
        (409, "stale_attempt")
    );
    let missing = api
        .post("jobs/job-nope/attempts/att-1/started", &agent, json!({}))
        .await;
    assert_eq!(missing.status, 404);

    let current = format!("jobs/{job}/attempts/{att2}");
    api.ok(&format!("{current}/started"), &agent, json!({}))
        .await;
    let done = api
        .ok(
            &format!("{current}/finished"),
            &agent,
            json!({ "outcome": "succeeded", "exit_code": 0 }),
        )
        .await;
    assert_eq!(done["job"]["state"], "succeeded");
    let read = api
        .ok(&format!("jobs/{job}/get"), ADMIN_SECRET, json!({}))
        .await;
    assert_eq!(read["job"]["state"], "succeeded");
}

#[tokio::test]
async fn a_drained_node_past_its_deadline_has_its_work_stopped_and_requeued() {
    let api = start(config()).await;
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-1").await;
    api.top_up("acme").await;
    let job = api.submit(0).await;
    let attempt = current_attempt(&api.assigned(&job, 1).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(
        &format!("jobs/{job}/attempts/{attempt}/started"),
        &agent,
        json!({}),
    )
    .await;
    let drained = api
        .admin("nodes/node-1/drain", json!({ "deadline_secs": 0 }))
        .await;
    assert_eq!(drained.status, 200, "{}", drained.body);

    let requeued = api
        .admin_until(&format!("jobs/{job}/get"), |body| {
            body["job"]["state"] == "pending"
        })
        .await;
    let lost = current_attempt(&requeued["job"]);
    assert_eq!(lost["state"], "lost");
    assert_eq!(lost["reason"], "drain deadline");
    assert_eq!(requeued["job"]["retries"], 0, "an eviction uses no retry");
    let beat = api
        .ok(
            "nodes/node-1/heartbeat",
            &agent,
            json!({ "running": [attempt] }),
        )
        .await;
    assert_eq!(beat["stop"], json!([attempt]));
    api.metric_until("tanvrit_node_evictions_total", |n| n == 1.0)
        .await;
}

/// Due times of a schedule's jobs, from their ids (uuid v7 timestamps), sorted.
fn due_times(jobs: &[Value], schedule: &str) -> Vec<i64> {
    let mut due: Vec<i64> = jobs
        .iter()
        .filter(|job| job["schedule"] == schedule)
        .map(|job| {
            let id = job["id"].as_str().unwrap();
            let uuid = uuid::Uuid::parse_str(id.strip_prefix("job-").unwrap()).unwrap();
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .collect();
    due.sort_unstable();
    due
}

async fn create_schedule(api: &Api, overlap: &str) -> String {
    api.top_up("acme").await;
    let user = api.key("user", Some("acme")).await;
    let created = api
        .ok(
            "schedules/create",
            &user,
            json!({ "cron": "* * * * * *", "template": job_spec(), "overlap": overlap }),
        )
        .await;
    created["schedule"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_schedule_every_second_fires_each_second_exactly_once() {
    let api = start(config()).await;
    let schedule = create_schedule(&api, "allow").await;
    api.admin_until(&format!("schedules/{schedule}/get"), |body| {
        body["schedule"]["fired"].as_u64() >= Some(3)
    })
    .await;
    let jobs = api
        .ok("jobs/list", ADMIN_SECRET, json!({ "business": "acme" }))
        .await;
    let jobs = jobs["jobs"].as_array().unwrap();
    let after = api
        .admin(&format!("schedules/{schedule}/get"), json!({}))
        .await;
    let fired = after.body["schedule"]["fired"].as_u64().unwrap();
    assert_eq!(after.body["schedule"]["skipped"], 0);

    let due = due_times(jobs, &schedule);
    assert!(due.len() >= 3, "{due:?}");
    assert!(due.len() as u64 <= fired, "every job listed was counted");
    for pair in due.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "consecutive seconds, none twice: {due:?}"
        );
    }
    assert!(due.iter().all(|t| t % 1000 == 0), "whole seconds: {due:?}");
    let mut ids: Vec<&str> = jobs.iter().filter_map(|j| j["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), jobs.len());
    assert!(jobs
        .iter()
        .filter(|job| job["schedule"] == schedule.as_str())
        .all(|job| job["state"] == "pending"));
    api.metric_until("tanvrit_schedule_fires_total", |n| n >= 3.0)
        .await;
}

#[tokio::test]
async fn a_forbid_schedule_skips_while_its_previous_job_is_active() {
    let api = start(config()).await;
    let schedule = create_schedule(&api, "forbid").await;
    let body = api
        .admin_until(&format!("schedules/{schedule}/get"), |body| {
            body["schedule"]["skipped"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(
        body["schedule"]["fired"], 1,
        "the first job never ends: no node runs it"
    );
    let jobs = api
        .ok("jobs/list", ADMIN_SECRET, json!({ "business": "acme" }))
        .await;
    assert_eq!(
        due_times(jobs["jobs"].as_array().unwrap(), &schedule).len(),
        1
    );
    api.metric_until("tanvrit_schedule_skips_total", |n| n >= 2.0)
        .await;
}

#[tokio::test]
async fn serve_runs_the_leader_loops_until_shutdown() {
    let (cluster, _dir) = open_cluster().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config(), cluster.clone(), listener, async {
        let _ = stopped.await;
    }));
    // Written straight through the cluster: the loops act on the replicated state,
    // whoever wrote it.
    let job = tanvrit_api::JobId::from("job-direct");
    for command in [
        Command::NodeRegister {
            node: "node-1".into(),
            name: "n1".into(),
            resources: tanvrit_api::Resources {
                cpu_millis: 1000,
                memory_mb: 1024,
                gpus: 0,
            },
            labels: Default::default(),
            drivers: Vec::new(),
            at: now_ms(),
        },
        Command::JobSubmit {
            job: job.clone(),
            business: "acme".into(),
            spec: tanvrit_api::JobSpec {
                command: vec!["true".into()],
                ..Default::default()
            },
            idempotency_key: None,
            rates: Rates::default(),
            at: now_ms(),
        },
    ] {
        let receipt = cluster.submit_write(command).await.unwrap();
        assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
    }
    let started = Instant::now();
    while cluster
        .reader()
        .read(|state| state.job(&job).unwrap().state)
        != tanvrit_api::JobState::Assigned
    {
        assert!(started.elapsed() < PATIENCE, "the job was never placed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

/// A `SingleNode` whose leadership the test switches.
struct Switchable {
    inner: Arc<SingleNode>,
    leading: watch::Sender<bool>,
}

#[async_trait]
impl ClusterService for Switchable {
    fn role(&self) -> Role {
        if *self.leading.borrow() {
            Role::Leader
        } else {
            Role::Follower
        }
    }

    fn leader_id(&self) -> Option<String> {
        Some(if *self.leading.borrow() {
            "replica-1".into()
        } else {
            "replica-2".into()
        })
    }

    fn topology(&self) -> Topology {
        self.inner.topology()
    }

    async fn submit_write(&self, command: Command) -> Result<Receipt, ClusterError> {
        self.inner.submit_write(command).await
    }

    async fn read_barrier(&self, consistency: Consistency) -> Result<Index, ClusterError> {
        self.inner.read_barrier(consistency).await
    }

    fn reader(&self) -> &Reader {
        self.inner.reader()
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

#[tokio::test]
async fn the_loops_stop_when_leadership_is_lost_and_resume_when_it_returns() {
    let (inner, dir) = open_cluster().await;
    let cluster = Arc::new(Switchable {
        inner,
        leading: watch::channel(true).0,
    });
    let (router, loops) = router_with_leader_loops(config(), cluster.clone());
    let mut api = Api {
        router,
        loops: Some(loops),
        _dir: dir,
    };
    let agent = api.key("agent", None).await;
    api.register(&agent, "node-1").await;
    api.top_up("acme").await;
    let first = api.submit(0).await;
    api.assigned(&first, 1).await;

    cluster.leading.send_replace(false);
    assert!(
        api.loops().wait_running(false, PATIENCE).await,
        "the loops stopped"
    );
    let metrics = api.metrics().await;
    assert_eq!(sample(&metrics, "tanvrit_leader_loops_running"), Some(0.0));
    let rounds = sample(&metrics, "tanvrit_scheduler_rounds_total");

    let beat = api.post("nodes/node-1/heartbeat", &agent, json!({})).await;
    assert_eq!((beat.status.as_u16(), beat.code()), (503, "no_leader"));
    assert!(beat.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(beat.body["error"]["leader"], "replica-2");
    let work = api.post("nodes/node-1/work", &agent, json!({})).await;
    assert_eq!(work.status, 200, "any replica serves work");

    let second = api.submit(0).await;
    // A leader places a job within milliseconds; with no loop running nothing may
    // happen at all, so a short look is enough to see that nothing does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = api.admin(&format!("jobs/{second}/get"), json!({})).await;
    assert_eq!(waiting.body["job"]["state"], "pending");
    assert_eq!(
        sample(&api.metrics().await, "tanvrit_scheduler_rounds_total"),
        rounds,
        "no scheduler round ran"
    );

    cluster.leading.send_replace(true);
    assert!(api.loops().wait_running(true, PATIENCE).await);
    api.assigned(&second, 1).await;
    let beat = api.post("nodes/node-1/heartbeat", &agent, json!({})).await;
    assert_eq!(beat.status, 200, "{}", beat.body);

    api.loops.take().unwrap().stop().await;
    assert_eq!(
        sample(&api.metrics().await, "tanvrit_leader_loops_running"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_job_past_retention_answers_410_job_expired_while_its_ledger_stays() {
    let api = Arc::new(
        start(ServerConfig {
            job_retention: Duration::from_secs(1),
            retention_interval: Duration::from_millis(20),
            ..config()
        })
        .await,
    );
    let agent = api.key("agent", None).await;
    let user = api.key("user", Some("acme")).await;
    api.register(&agent, "node-1").await;
    let beat = keep_alive(&api, &agent, "node-1");
    api.top_up("acme").await;
    let job = api.submit(0).await;
    let attempt = current_attempt(&api.assigned(&job, 1).await);
    let reports = format!("jobs/{job}/attempts/{}", attempt["id"].as_str().unwrap());
    api.ok(&format!("{reports}/started"), &agent, json!({}))
        .await;
    api.ok(
        &format!("{reports}/logs"),
        &agent,
        json!({ "offset": 0, "data": "done\n" }),
    )
    .await;
    let done = api
        .ok(
            &format!("{reports}/finished"),
            &agent,
            json!({ "outcome": "succeeded", "exit_code": 0 }),
        )
        .await;
    assert_eq!(done["job"]["state"], "succeeded");
    beat.abort();
    let ledger = json!({ "business": "acme" });
    let entries = api
        .ok("credits/entries/list", ADMIN_SECRET, ledger.clone())
        .await;
    let balance = api
        .ok("credits/balance", ADMIN_SECRET, ledger.clone())
        .await;
    let present = api.admin(&format!("jobs/{job}/get"), json!({})).await;
    assert_eq!(present.status, 200, "read the ledger before the collection");

    // The loop collects the job once it ended more than a second ago.
    let started = Instant::now();
    loop {
        let reply = api.admin(&format!("jobs/{job}/get"), json!({})).await;
        if reply.status == 410 {
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(started.elapsed() < PATIENCE, "the job was never collected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (path, key) in [
        ("get", ADMIN_SECRET),
        ("get", user.as_str()),
        ("logs", user.as_str()),
        ("cancel", ADMIN_SECRET),
        ("cancel", user.as_str()),
        ("retry", ADMIN_SECRET),
        ("retry", user.as_str()),
    ] {
        let reply = api
            .post(&format!("jobs/{job}/{path}"), key, json!({}))
            .await;
        assert_eq!(
            (reply.status.as_u16(), reply.code()),
            (410, "job_expired"),
            "{path}: {}",
            reply.body
        );
        assert_eq!(reply.body["error"]["id"], job.as_str());
    }

    let after = api
        .ok("credits/entries/list", ADMIN_SECRET, ledger.clone())
        .await;
    assert_eq!(
        after["entries"], entries["entries"],
        "the billing record stays"
    );
    assert!(
        after["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["job"] == job.as_str()),
        "entries keep the collected job's id: {after}"
    );
    let now = api.ok("credits/balance", ADMIN_SECRET, ledger).await;
    assert_eq!(
        (&now["available"], &now["held"], &now["entries"]),
        (&balance["available"], &balance["held"], &balance["entries"])
    );

    // An id made now never existed, and is newer than anything collected: 404.
    let fresh = format!("job-{}", uuid::Uuid::now_v7());
    let reply = api.admin(&format!("jobs/{fresh}/get"), json!({})).await;
    assert_eq!((reply.status.as_u16(), reply.code()), (404, "not_found"));
    api.metric_until("tanvrit_jobs_collected_total", |n| n == 1.0)
        .await;
}
