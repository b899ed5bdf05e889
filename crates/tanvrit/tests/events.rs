//! The event stream against real `tanvrit server` processes on loopback:
//! - a 3-replica cluster, a stream opened on a follower through the SDK, 1,000 jobs submitted
//!   and run by an agent while the leader is killed and later the stream's own replica
//!   is: the SDK resumes on another replica from its last position, and what it received
//!   is exactly the events a never-restarted replica holds, in log order, once each;
//! - a resume from before a replica's restart is 410 `events_compacted` with the oldest
//!   index held;
//! - a user key's stream carries nothing of another business, and it cannot ask for one;
//!   a key revoked while its stream is open gets nothing more;
//! - Server-Sent Events frames carry `id: index.seq`, and `Last-Event-ID` resumes;
//! - 50 idle streams and one that never reads do not hold submissions up (p99 with and
//!   without them is printed; the bound checked is only that none waits seconds).
//!
//! The tests run one at a time (a lock): clusters at once on two cores would measure the
//! machine.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tanvrit_api::{
    BusinessId, CreditEntryCreateRequest, EntryKind, Event, EventStreamRequest, JobSpec,
    JobSubmitRequest, KeyCreateRequest, Scope, Topic,
};
use tanvrit_client::{Client, ClientConfig, EventStream};
use tanvrit_testkit::process::{AgentProcess, ProcessCluster, ServerProcess, TEST_ADMIN_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const BUSINESS: &str = "acme";
const PATIENCE: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn client(urls: Vec<String>, key: &str) -> Client {
    Client::new(ClientConfig {
        endpoints: urls,
        api_key: Some(key.to_string()),
        timeout: Duration::from_secs(10),
        max_retries: 20,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn job(business: &str, key: String) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(BusinessId::from(business)),
        spec: JobSpec {
            command: vec!["true".into()],
            ..JobSpec::default()
        },
        idempotency_key: Some(key),
    }
}

fn job_stream(from_index: Option<u64>) -> EventStreamRequest {
    EventStreamRequest {
        from_index,
        topic: vec![Topic::Job, Topic::Attempt],
        business: Some(BUSINESS.into()),
        heartbeat_ms: Some(500),
        ..EventStreamRequest::default()
    }
}

/// Reads events until `done` says the list is complete, or panics after `within`.
async fn collect_until(
    stream: &mut EventStream,
    events: &mut Vec<Event>,
    within: Duration,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(error))) => panic!("the stream failed: {error}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => panic!(
                "timed out with {} events; position {:?}",
                events.len(),
                stream.position()
            ),
        }
    }
}

fn succeeded(events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e.kind == "job_succeeded")
        .map(|e| e.id.clone())
        .collect()
}

async fn submit_all(admin: &Client, from: usize, to: usize) {
    for n in from..to {
        admin
            .submit_job(job(BUSINESS, format!("events-{n}")))
            .await
            .unwrap_or_else(|e| panic!("submission {n}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_stream_resumed_on_another_replica_gets_every_event_once_in_log_order() {
    let _serial = SERIAL.lock().await;
    let jobs: usize = std::env::var("EVENTS_TEST_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        ProcessCluster::start_funded(Path::new(BIN), dir.path(), 3, BUSINESS, PATIENCE).await;
    let admin = cluster.admin_client(30);
    let agent_key = cluster.replica(0).agent_key().await;
    let _agent = AgentProcess::start(
        Path::new(BIN),
        &cluster.urls().join(","),
        &agent_key,
        &dir.path().join("agent"),
        &[
            "--name",
            "worker",
            "--isolation",
            "none",
            "--backoff-max",
            "300ms",
        ],
    )
    .await
    .expect("the agent starts");

    let leader = cluster.leader(PATIENCE).await.expect("a leader");
    let follower = (leader + 1) % 3;
    let witness = (leader + 2) % 3;
    // The stream starts on the follower; on failure the SDK moves through the others.
    let urls = cluster.urls();
    let ordered = vec![
        urls[follower].clone(),
        urls[leader].clone(),
        urls[witness].clone(),
    ];
    let mut stream = client(ordered, TEST_ADMIN_KEY).events(job_stream(Some(0)));
    let mut received = Vec::new();

    let third = jobs / 3;
    submit_all(&admin, 0, third).await;
    collect_until(&mut stream, &mut received, PATIENCE, |e| {
        succeeded(e).len() >= third
    })
    .await;

    // The leader dies; the stream's replica stays and sees the new term's entries.
    cluster.replica_mut(leader).kill9().await;
    submit_all(&admin, third, 2 * third).await;
    cluster.replica_mut(leader).restart().await.unwrap();
    collect_until(&mut stream, &mut received, PATIENCE, |e| {
        succeeded(e).len() >= 2 * third
    })
    .await;

    // Now the stream's own replica dies: the SDK resumes elsewhere from its position.
    cluster.replica_mut(follower).kill9().await;
    submit_all(&admin, 2 * third, jobs).await;
    collect_until(&mut stream, &mut received, PATIENCE, |e| {
        succeeded(e).len() >= jobs
    })
    .await;

    // In log order, none twice.
    for pair in received.windows(2) {
        assert!(
            (pair[0].index, pair[0].seq) < (pair[1].index, pair[1].seq),
            "out of order or repeated: {}.{} then {}.{}",
            pair[0].index,
            pair[0].seq,
            pair[1].index,
            pair[1].seq
        );
    }
    // None missing: the witness never restarted, so it holds every event from index 0.
    let last = received.last().map(|e| (e.index, e.seq)).unwrap();
    let mut reference = Vec::new();
    let mut full = client(vec![urls[witness].clone()], TEST_ADMIN_KEY).events(job_stream(Some(0)));
    collect_until(&mut full, &mut reference, PATIENCE, |e| {
        e.last().is_some_and(|e| (e.index, e.seq) >= last)
    })
    .await;
    let positions = |events: &[Event]| -> Vec<(u64, u32, String)> {
        events
            .iter()
            .map(|e| (e.index, e.seq, e.kind.clone()))
            .collect()
    };
    assert_eq!(positions(&received), positions(&reference));
    let submitted: BTreeSet<_> = received
        .iter()
        .filter(|e| e.topic == Topic::Job && e.kind == "job_pending")
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(submitted.len(), jobs, "every job's submission, once");
    assert_eq!(succeeded(&received).len(), jobs);
    println!(
        "{} events for {jobs} jobs across a leader kill and a stream replica kill",
        received.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_a_restart_is_410_events_compacted_with_the_oldest_index() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(Path::new(BIN), &dir.path().join("data"), &[])
        .await
        .unwrap();
    let admin = server.admin_client(3);
    top_up(&admin, BUSINESS).await;
    admin
        .submit_job(job(BUSINESS, "before-restart".into()))
        .await
        .unwrap();
    server.restart().await.unwrap();
    let admin = server.admin_client(3);

    let answer = admin
        .post_raw(
            "/api/compute/events/stream",
            r#"{"from_index": 1}"#,
            &[("content-type", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 410, "{}", answer.text());
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"]["code"], "events_compacted");
    let oldest = body["error"]["oldest_index"]
        .as_u64()
        .expect("oldest_index");
    assert!(
        oldest >= 2,
        "the restart's floor is the applied index: {body}"
    );

    // The SDK reports it and ends; from the oldest index the stream serves.
    let mut stale = admin.events(EventStreamRequest {
        from_index: Some(1),
        ..EventStreamRequest::default()
    });
    let error = stale.next().await.unwrap().unwrap_err();
    assert_eq!(error.code(), "events_compacted");
    assert!(stale.next().await.is_none());
    let mut fresh = admin.events(job_stream(Some(oldest)));
    admin
        .submit_job(job(BUSINESS, "after-restart".into()))
        .await
        .unwrap();
    let event = tokio::time::timeout(PATIENCE, fresh.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind, "job_pending");
    assert!(event.index > oldest);
}

async fn top_up(admin: &Client, business: &str) {
    admin
        .create_credit_entry(CreditEntryCreateRequest {
            business: business.into(),
            kind: EntryKind::TopUp,
            amount: 1_000_000_000,
            idempotency_key: Some(format!("top-up-{business}")),
            note: None,
        })
        .await
        .unwrap();
}

async fn user_key(admin: &Client, business: &str) -> String {
    admin
        .create_key(KeyCreateRequest {
            name: Some(format!("{business} user")),
            scope: Scope::User,
            business: Some(business.into()),
            node: None,
        })
        .await
        .unwrap()
        .secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_key_stream_holds_nothing_of_another_business() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(BIN), &dir.path().join("data"), &[])
        .await
        .unwrap();
    let admin = server.admin_client(3);
    top_up(&admin, BUSINESS).await;
    top_up(&admin, "rival").await;
    let rival = server.client(&user_key(&admin, "rival").await, 3);
    let acme = server.client(&user_key(&admin, BUSINESS).await, 3);

    // The attacker asks for everything from the start, and for acme by name.
    let asked = rival
        .post_raw(
            "/api/compute/events/stream",
            r#"{"business": "acme", "from_index": 0}"#,
            &[("content-type", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(asked.status, 404, "{}", asked.text());
    let mut everything = rival.events(EventStreamRequest {
        from_index: Some(0),
        heartbeat_ms: Some(200),
        ..EventStreamRequest::default()
    });

    for n in 0..5 {
        acme.submit_job(job(BUSINESS, format!("acme-{n}")))
            .await
            .unwrap();
    }
    let theirs = rival
        .submit_job(JobSubmitRequest {
            business: None,
            ..job("rival", "rival-0".into())
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    collect_until(&mut everything, &mut seen, PATIENCE, |events| {
        events.iter().any(|e| e.id == theirs.job.id.as_str())
    })
    .await;
    // Whatever else arrives before a quiet heartbeat must still be rival's.
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(1500), everything.next()).await
    {
        seen.push(event);
    }
    for event in &seen {
        assert_eq!(event.business.as_ref().map(|b| b.as_str()), Some("rival"));
        assert!(
            matches!(
                event.topic,
                Topic::Job | Topic::Attempt | Topic::Schedule | Topic::Credit
            ),
            "{event:?}"
        );
    }

    // A key revoked while its stream is open stops receiving: the stream ends.
    let watcher = admin
        .create_key(KeyCreateRequest {
            name: Some("watcher".into()),
            scope: Scope::User,
            business: Some("rival".into()),
            node: None,
        })
        .await
        .unwrap();
    let mut watching = server
        .client(&watcher.secret, 0)
        .events(EventStreamRequest {
            heartbeat_ms: Some(200),
            ..EventStreamRequest::default()
        });
    let opened = tokio::time::timeout(Duration::from_millis(500), watching.next()).await;
    assert!(opened.is_err(), "nothing to see yet: {opened:?}");
    admin.revoke_key(&watcher.key.id).await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, watching.next())
        .await
        .expect("the stream ends")
        .expect("with an error")
        .unwrap_err();
    assert_eq!(ended.code(), "unauthorized");

    // An agent key may not open a stream at all.
    let agent = server.client(&server.agent_key().await, 0);
    let refused = agent
        .post_raw("/api/compute/events/stream", "", &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_the_position_and_last_event_id_resumes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(BIN), &dir.path().join("data"), &[])
        .await
        .unwrap();
    let admin = server.admin_client(3);
    top_up(&admin, BUSINESS).await;
    admin
        .submit_job(job(BUSINESS, "sse-0".into()))
        .await
        .unwrap();
    admin
        .submit_job(job(BUSINESS, "sse-1".into()))
        .await
        .unwrap();

    let base = format!(
        "{}/api/compute/events/stream?topic=job&business={BUSINESS}",
        server.url()
    );
    let http = reqwest::Client::new();
    let read = |last_event_id: Option<String>| {
        // `from_index` wins over `Last-Event-ID`; a reconnect sends only the header.
        let url = match &last_event_id {
            Some(_) => base.clone(),
            None => format!("{base}&from_index=0"),
        };
        let mut request = http
            .get(url)
            .bearer_auth(TEST_ADMIN_KEY)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        async move {
            let mut response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut text = String::new();
            while text.matches("event: event\n").count() < 1 {
                let chunk = tokio::time::timeout(PATIENCE, response.chunk())
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("more frames");
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        }
    };
    let first = read(None).await;
    let id = first
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("an id line")
        .to_string();
    let data: Event = serde_json::from_str(
        first
            .lines()
            .find_map(|line| {
                line.strip_prefix("data: ")
                    .filter(|d| d.contains("\"topic\""))
            })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(id, format!("{}.{}", data.index, data.seq));
    // A reconnect naming that id gets the next job's submission, not the first again.
    let resumed = read(Some(id)).await;
    let next: Event = serde_json::from_str(
        resumed
            .lines()
            .find_map(|line| {
                line.strip_prefix("data: ")
                    .filter(|d| d.contains("\"topic\""))
            })
            .unwrap(),
    )
    .unwrap();
    assert!((next.index, next.seq) > (data.index, data.seq));
    assert_ne!(next.id, data.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_and_one_that_never_reads_do_not_hold_up_submissions() {
    use tokio::io::AsyncWriteExt;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(Path::new(BIN), &dir.path().join("data"), &[])
        .await
        .unwrap();
    let admin = server.admin_client(3);
    top_up(&admin, BUSINESS).await;
    let submit_many = |from: usize, count: usize| {
        let admin = admin.clone();
        async move {
            let mut took = Vec::with_capacity(count);
            for n in from..from + count {
                let started = Instant::now();
                admin
                    .submit_job(job(BUSINESS, format!("busy-{n}")))
                    .await
                    .unwrap();
                took.push(started.elapsed());
            }
            took.sort();
            took
        }
    };
    let without = submit_many(0, 200).await;

    // 50 idle streams (nothing matches their filter, heartbeats every 100 ms) and one
    // that asks for everything from the start and never reads a byte.
    let http = reqwest::Client::new();
    let mut idle = Vec::new();
    for _ in 0..50 {
        let response = http
            .get(format!(
                "{}/api/compute/events/stream?topic=cluster&heartbeat_ms=100",
                server.url()
            ))
            .bearer_auth(TEST_ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        idle.push(response);
    }
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = r#"{"from_index": 0}"#;
    let request = format!(
        "POST /api/compute/events/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer \
         {TEST_ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stuck.write_all(request.as_bytes()).await.unwrap();

    let with = submit_many(200, 400).await;
    let p99 = |took: &[Duration]| took[took.len() * 99 / 100 - 1];
    println!(
        "submit p99 without streams {:?}, with 50 idle and one stuck {:?}",
        p99(&without),
        p99(&with)
    );
    // Not a benchmark: a writer held by a stream would stop submissions outright.
    assert!(
        with.last().unwrap() < &Duration::from_secs(5),
        "a submission waited {:?}",
        with.last().unwrap()
    );
    drop(stuck);
    drop(idle);
}
