//! The whole API, driven through the Rust SDK against a real `tanvrit server` process on
//! a temporary data directory — including every class of bad input, each answered with
//! the JSON error body, a stable code and the right status, and none of them writing.

use std::path::Path;

use tanvrit_api::*;
use tanvrit_client::{Client, ClientError};
use tanvrit_testkit::process::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");

fn expect_api_error<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: &str) {
    match result {
        Err(err) => {
            assert_eq!(err.status(), Some(status), "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
        Ok(value) => panic!("expected {status} {code}, got {value:?}"),
    }
}

/// Sends raw bytes and checks status, code and that the body is the JSON error shape.
async fn expect_raw_error(
    client: &Client,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
    status: u16,
    code: &str,
) {
    let reply = client.post_raw(path, body.to_vec(), headers).await.unwrap();
    let text = reply.text();
    assert_eq!(reply.status, status, "{path}: {text}");
    let parsed: ErrorBody = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{path}: not an error body ({e}): {text}"));
    assert_eq!(parsed.error.code, code, "{path}: {text}");
    assert!(!parsed.error.message.is_empty());
    assert!(
        reply.headers.contains_key(INDEX_HEADER),
        "{path}: errors carry {INDEX_HEADER} too"
    );
}

fn echo(business: &str) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(business.into()),
        spec: JobSpec {
            command: vec!["echo".into(), "hello".into()],
            resources: Resources {
                cpu_millis: 1000,
                memory_mb: 1,
                gpus: 0,
            },
            timeout_secs: 60,
            ..JobSpec::default()
        },
        idempotency_key: None,
    }
}

async fn job_count(admin: &Client) -> usize {
    admin
        .list_jobs(JobListRequest {
            limit: Some(1000),
            ..JobListRequest::default()
        })
        .await
        .unwrap()
        .jobs
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_api_through_the_sdk_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        Path::new(BIN),
        &dir.path().join("data"),
        // Memory free: the holds below are CPU alone (a job reserves at least 1 MB).
        &[("TANVRIT_RATE_MEMORY_GB_SECOND", "0")],
    )
    .await
    .unwrap();
    let admin = server.admin_client(0);

    // Probes, metrics and the API description need no key.
    let anonymous = Client::new(tanvrit_client::ClientConfig {
        endpoints: vec![server.url().to_string()],
        api_key: None,
        max_retries: 0,
        ..Default::default()
    })
    .unwrap();
    anonymous.healthz().await.unwrap();
    anonymous.readyz().await.unwrap();
    assert!(anonymous.metrics_text().await.unwrap().contains("# TYPE"));
    let openapi = anonymous.openapi().await.unwrap();
    assert!(openapi["paths"]["/api/compute/jobs/submit"].is_object());

    // Keys: a user key per business and an agent key.
    let acme_key = admin
        .create_key(KeyCreateRequest {
            name: Some("acme ci".into()),
            scope: Scope::User,
            business: Some("acme".into()),
            node: None,
        })
        .await
        .unwrap();
    let globex_key = admin
        .create_key(KeyCreateRequest {
            name: None,
            scope: Scope::User,
            business: Some("globex".into()),
            node: None,
        })
        .await
        .unwrap();
    let agent_key = admin
        .create_key(KeyCreateRequest {
            name: None,
            scope: Scope::Agent,
            business: None,
            node: None,
        })
        .await
        .unwrap();
    let keys = admin.list_keys().await.unwrap().keys;
    assert_eq!(keys.len(), 4, "the bootstrap admin key and three new ones");
    let acme = server.client(&acme_key.secret, 0);
    let globex = server.client(&globex_key.secret, 0);
    let agent = server.client(&agent_key.secret, 0);

    // Credits: a submission the balance cannot cover is refused with 402.
    expect_api_error(
        acme.submit_job(echo("acme")).await,
        402,
        "insufficient_credits",
    );
    let top_up = admin
        .create_credit_entry(CreditEntryCreateRequest {
            business: "acme".into(),
            kind: EntryKind::TopUp,
            amount: 5_000_000,
            idempotency_key: Some("first-top-up".into()),
            note: Some("welcome".into()),
        })
        .await
        .unwrap();
    assert_eq!(top_up.entry.balance_after, 5_000_000);

    // Jobs: submit, read it back at the write's index, list with filters, cancel, retry.
    let submitted = acme.submit_job(echo("acme")).await.unwrap();
    let job_id = submitted.job.id.clone();
    let got = acme
        .get_job(&job_id, Consistency::MinIndex(submitted.index))
        .await
        .unwrap();
    assert_eq!(got.job.state, JobState::Pending);
    let second = acme.submit_job(echo("acme")).await.unwrap();
    let listed = acme
        .list_jobs(JobListRequest {
            state: Some(JobState::Pending),
            limit: Some(1),
            ..JobListRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(listed.jobs[0].id, second.job.id, "newest first");
    assert!(listed.next.is_some(), "a second page exists");
    let balance = acme
        .credit_balance(CreditBalanceRequest::default())
        .await
        .unwrap();
    assert_eq!(balance.held, 2 * 600, "two holds of 1 cpu x 60 s x 10");
    assert_eq!(balance.available, 5_000_000 - 1200);

    let cancelled = acme
        .cancel_job(&job_id, JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(cancelled.job.state, JobState::Cancelled);
    expect_api_error(
        acme.cancel_job(&job_id, JobActionRequest::default()).await,
        409,
        "illegal_transition",
    );
    let retried = acme
        .retry_job(&job_id, JobActionRequest::default())
        .await
        .unwrap();
    assert_eq!(retried.job.state, JobState::Pending);
    let logs = acme
        .job_logs(&job_id, JobLogsRequest::default())
        .await
        .unwrap();
    assert_eq!(logs.data, "", "a job that never ran has no output");
    let entries = acme
        .credit_entries(CreditEntriesRequest::default())
        .await
        .unwrap()
        .entries;
    let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EntryKind::TopUp,
            EntryKind::Hold,
            EntryKind::Hold,
            EntryKind::Release,
            EntryKind::Hold
        ]
    );

    // A user key never sees another business: 404, not 403.
    expect_api_error(
        globex.get_job(&job_id, Consistency::Stale).await,
        404,
        "not_found",
    );
    expect_api_error(
        globex
            .cancel_job(&job_id, JobActionRequest::default())
            .await,
        404,
        "not_found",
    );
    let globex_jobs = globex.list_jobs(JobListRequest::default()).await.unwrap();
    assert!(globex_jobs.jobs.is_empty());

    // Nodes: an agent registers; an admin lists, drains and deletes. The node is too
    // small for the pending jobs, so the scheduler leaves it empty.
    let node = agent
        .register_node(NodeRegisterRequest {
            id: "node-1".into(),
            name: "worker-1".into(),
            resources: Resources {
                cpu_millis: 500,
                memory_mb: 8192,
                gpus: 0,
            },
            drivers: Vec::new(),
            labels: [("zone".to_string(), "eu".to_string())].into(),
        })
        .await
        .unwrap();
    assert_eq!(node.node.state, NodeState::Ready);
    let nodes = admin
        .list_nodes(NodeListRequest::default())
        .await
        .unwrap()
        .nodes;
    assert_eq!(nodes.len(), 1);
    let drained = admin
        .drain_node(
            &"node-1".into(),
            NodeDrainRequest {
                deadline_secs: Some(600),
            },
        )
        .await
        .unwrap();
    assert_eq!(drained.node.state, NodeState::Draining);
    assert!(drained.node.drain_deadline.is_some());
    let deleted = admin
        .delete_node(&"node-1".into(), NodeDeleteRequest { force: false })
        .await
        .unwrap();
    assert_eq!(deleted.node.state, NodeState::Deleted);

    // Schedules: create, list with the next fire time, update, delete; bad cron is 422.
    let template = echo("acme").spec;
    expect_api_error(
        acme.create_schedule(ScheduleCreateRequest {
            business: None,
            name: None,
            cron: "61 * * * *".into(),
            timezone: None,
            template: template.clone(),
            enabled: None,
            overlap: None,
            catch_up: None,
        })
        .await,
        422,
        "invalid",
    );
    let schedule = acme
        .create_schedule(ScheduleCreateRequest {
            business: None,
            name: Some("nightly".into()),
            cron: "0 3 * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            template,
            enabled: None,
            overlap: Some(OverlapPolicy::Forbid),
            catch_up: None,
        })
        .await
        .unwrap();
    let id = schedule.schedule.schedule.id.clone();
    let listed = acme
        .list_schedules(ScheduleListRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.schedules.len(), 1);
    assert!(listed.schedules[0].next_fire_at.is_some());
    let updated = acme
        .update_schedule(
            &id,
            ScheduleUpdateRequest {
                enabled: Some(false),
                ..ScheduleUpdateRequest::default()
            },
        )
        .await
        .unwrap();
    assert!(!updated.schedule.schedule.enabled);
    expect_api_error(
        globex.get_schedule(&id, Consistency::Stale).await,
        404,
        "not_found",
    );
    acme.delete_schedule(&id).await.unwrap();
    expect_api_error(
        acme.get_schedule(&id, Consistency::Stale).await,
        404,
        "not_found",
    );

    // Cluster and metrics.
    let topology = acme.topology().await.unwrap();
    assert_eq!(topology.replicas.len(), 1);
    assert_eq!(topology.replicas[0].role, Role::Leader);
    let summary = admin.metrics_summary().await.unwrap();
    assert_eq!(summary.jobs_by_state.get("pending"), Some(&2));

    // Keys can be revoked; a revoked key is 401 from then on.
    admin.revoke_key(&globex_key.key.id).await.unwrap();
    expect_api_error(
        globex.list_jobs(JobListRequest::default()).await,
        401,
        "unauthorized",
    );

    // Every bad-input class: the JSON error body, the right status, nothing written.
    let jobs_before = job_count(&admin).await;
    let submit = "/api/compute/jobs/submit";
    let json = [("content-type", "application/json")];
    expect_raw_error(
        &acme,
        submit,
        b"{\"command\": [",
        &json,
        400,
        "malformed_json",
    )
    .await;
    expect_raw_error(
        &acme,
        submit,
        br#"{"command": ["true"], "colour": "blue"}"#,
        &json,
        400,
        "invalid_request",
    )
    .await;
    expect_raw_error(
        &acme,
        submit,
        br#"{"command": "not a list"}"#,
        &json,
        400,
        "invalid_request",
    )
    .await;
    expect_raw_error(
        &anonymous,
        submit,
        br#"{"command": ["true"]}"#,
        &json,
        401,
        "unauthorized",
    )
    .await;
    let bogus = server.client("tvk_nobody_0000", 0);
    expect_raw_error(
        &bogus,
        submit,
        br#"{"command": ["true"]}"#,
        &json,
        401,
        "unauthorized",
    )
    .await;
    expect_raw_error(
        &acme,
        "/api/compute/keys/create",
        br#"{"scope": "admin"}"#,
        &json,
        403,
        "forbidden",
    )
    .await;
    expect_raw_error(
        &acme,
        "/api/compute/jobs/job-does-not-exist/get",
        b"{}",
        &json,
        404,
        "not_found",
    )
    .await;
    let huge = format!(
        r#"{{"command": ["echo", "{}"]}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    expect_raw_error(&acme, submit, huge.as_bytes(), &json, 413, "body_too_large").await;
    expect_raw_error(
        &acme,
        submit,
        br#"{"command": ["true"], "timeout_secs": 0}"#,
        &json,
        422,
        "invalid",
    )
    .await;
    expect_raw_error(&acme, submit, br#"{"command": []}"#, &json, 422, "invalid").await;
    expect_raw_error(
        &acme,
        submit,
        br#"{"command": ["true"]}"#,
        &[("content-type", "text/plain")],
        415,
        "unsupported_media_type",
    )
    .await;
    expect_raw_error(
        &acme,
        "/api/compute/no/such/route",
        b"{}",
        &json,
        404,
        "not_found",
    )
    .await;
    assert_eq!(
        job_count(&admin).await,
        jobs_before,
        "bad input wrote nothing"
    );

    // Everything acknowledged survives a clean restart.
    server.terminate().await;
    server.restart().await.unwrap();
    let admin = server.admin_client(3);
    assert_eq!(job_count(&admin).await, jobs_before);
    let acme = server.client(&acme_key.secret, 3);
    let after = acme
        .credit_balance(CreditBalanceRequest::default())
        .await
        .unwrap();
    assert_eq!(after.available, 5_000_000 - 1200);
    server.terminate().await;
}
