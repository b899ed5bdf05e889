//! Real `tanvrit server` processes with real `tanvrit agent` processes running real
//! commands: outcomes and output, cancellation of a whole process group, placement by
//! labels and resources, queueing, an agent killed mid-job (retried elsewhere after the
//! node TTL), a control plane killed and restarted while a job runs, and the agent's
//! lease: cut off from the control plane (server frozen with SIGSTOP, or heartbeat
//! answers dropped by a proxy), it kills its jobs before the node TTL and starts none;
//! and isolation: a job cannot read the agent's key, environment or data directory, and
//! one over its memory ends `failed` / `oom_killed` while the agent runs on.
//!
//! Every wait polls for a condition with a deadline; the only fixed waits are the outage
//! itself ([`OUTAGE`]) and the bounded windows that check a job is *not* placed (or not
//! started).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tanvrit_api::*;
use tanvrit_client::Client;
use tanvrit_testkit::process::{AgentProcess, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
/// Short, so a killed agent's node is declared down quickly; heartbeats come every
/// third of it.
const NODE_TTL: &str = "3s";
/// [`NODE_TTL`] as a duration.
const NODE_TTL_DURATION: Duration = Duration::from_secs(3);
/// How long the control plane stays dead in the outage test.
const OUTAGE: Duration = Duration::from_secs(20);
/// Longest wait for any condition.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a job is watched to show it is not placed.
const NOT_PLACED_WINDOW: Duration = Duration::from_secs(1);
const BUSINESS: &str = "acme";

/// One server and its admin client (each agent gets a key of its own).
struct Plane {
    dir: tempfile::TempDir,
    server: ServerProcess,
    admin: Client,
}

async fn plane() -> Plane {
    plane_with_ttl(NODE_TTL).await
}

async fn plane_with_ttl(node_ttl: &str) -> Plane {
    // Jobs run as uids of their own, each seeing its own /tmp: files tests leave for them
    // go in a directory others may traverse, outside /tmp.
    let parent = Path::new("/var/lib/tanvrit/test-work");
    std::fs::create_dir_all(parent).unwrap();
    let dir = tempfile::tempdir_in(parent).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServerProcess::start(
        Path::new(BIN),
        &dir.path().join("server"),
        // Work is lost at the TTL (the rule before `lost_after`): these tests pin the
        // lease and the retry of a killed agent's job at that bound; tests/agent_outage.rs
        // pins the longer `lost_after`.
        &[
            ("TANVRIT_NODE_TTL", node_ttl),
            ("TANVRIT_NODE_LOST_AFTER", "0s"),
        ],
    )
    .await
    .expect("the server starts");
    let admin = server.admin_with_credits(BUSINESS, 1_000_000_000).await;
    Plane { dir, server, admin }
}

impl Plane {
    /// Starts an agent named `name` with extra flags; it has registered when this returns.
    async fn agent(&self, name: &str, flags: &[&str]) -> AgentProcess {
        self.agent_via(self.server.url(), name, flags).await
    }

    /// [`Plane::agent`], reaching the control plane at `servers` (a proxy, say).
    async fn agent_via(&self, servers: &str, name: &str, flags: &[&str]) -> AgentProcess {
        let mut args = vec![
            "--name",
            name,
            "--backoff-max",
            "500ms",
            "--stop-grace",
            "2s",
        ];
        args.extend_from_slice(flags);
        // A key of its own: an agent key acts for the one node it registers first.
        let key = self.server.agent_key().await;
        AgentProcess::start(
            Path::new(BIN),
            servers,
            &key,
            &self.dir.path().join(name),
            &args,
        )
        .await
        .expect("the agent starts and registers")
    }

    async fn submit(&self, spec: JobSpec) -> JobId {
        self.admin
            .submit_job(JobSubmitRequest {
                business: Some(BusinessId::from(BUSINESS)),
                spec,
                idempotency_key: None,
            })
            .await
            .unwrap()
            .job
            .id
    }

    async fn job(&self, id: &JobId) -> Job {
        self.admin
            .get_job(id, Consistency::Stale)
            .await
            .unwrap()
            .job
    }

    /// Polls the job until `done` holds; panics with `what` after [`PATIENCE`].
    async fn wait_job(&self, id: &JobId, what: &str, done: impl Fn(&Job) -> bool) -> Job {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not {what} in time; it is {job:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_state(&self, id: &JobId, state: JobState) -> Job {
        self.wait_job(id, state.as_str(), |job| job.state == state)
            .await
    }

    /// All output stored for the job's current attempt (or `attempt`).
    async fn logs(&self, id: &JobId, attempt: Option<&AttemptId>) -> String {
        let mut out = String::new();
        let mut offset = 0;
        loop {
            let page = self
                .admin
                .job_logs(
                    id,
                    JobLogsRequest {
                        attempt: attempt.cloned(),
                        offset,
                        ..JobLogsRequest::default()
                    },
                )
                .await
                .unwrap();
            out.push_str(&page.data);
            if page.next_offset <= offset {
                return out;
            }
            offset = page.next_offset;
        }
    }

    /// Polls the job's output until `done` holds for it.
    async fn wait_output(&self, id: &JobId, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.logs(id, None).await;
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: unexpected output {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Watches the job for [`NOT_PLACED_WINDOW`]: it must stay pending, never placed.
    async fn assert_stays_pending(&self, id: &JobId) {
        let until = Instant::now() + NOT_PLACED_WINDOW;
        while Instant::now() < until {
            let job = self.job(id).await;
            assert!(
                job.state == JobState::Pending && job.attempts.is_empty(),
                "{id} was placed: {job:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn shell(script: &str) -> JobSpec {
    JobSpec {
        shell: Some(script.into()),
        ..JobSpec::default()
    }
}

fn with_cpu(spec: JobSpec, cpu_millis: u64) -> JobSpec {
    JobSpec {
        resources: Resources {
            cpu_millis,
            ..Resources::JOB_DEFAULT
        },
        ..spec
    }
}

fn node_of(job: &Job) -> &str {
    job.current_attempt().expect("placed").node.as_str()
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the `(comm)`, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test]
async fn jobs_end_as_succeeded_failed_or_timed_out_with_their_output_and_exit_code() {
    let plane = plane().await;
    let agent = plane.agent("worker", &[]).await;
    // `ps` on the node shows no secret: the key came from the environment.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid().unwrap())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("agent"), "{cmdline}");
    assert!(
        !cmdline.contains("tvk_"),
        "a secret in the arguments: {cmdline}"
    );

    let ok = plane
        .submit(JobSpec {
            command: vec!["echo".into(), "hello".into()],
            ..JobSpec::default()
        })
        .await;
    let failing = plane.submit(shell("echo to stderr >&2; exit 3")).await;
    let slow = plane
        .submit(JobSpec {
            timeout_secs: 1,
            ..shell("echo started; sleep 60")
        })
        .await;

    let job = plane.wait_state(&ok, JobState::Succeeded).await;
    let attempt = job.current_attempt().unwrap();
    assert_eq!(attempt.exit_code, Some(0));
    assert_eq!(attempt.node.as_str(), agent.node_id());
    assert!(attempt.started_at.is_some() && attempt.finished_at.is_some());
    assert_eq!(plane.logs(&ok, None).await, "hello\n");

    let job = plane.wait_state(&failing, JobState::Failed).await;
    assert_eq!(job.current_attempt().unwrap().exit_code, Some(3));
    assert_eq!(plane.logs(&failing, None).await, "to stderr\n");

    let job = plane.wait_state(&slow, JobState::Failed).await;
    let attempt = job.current_attempt().unwrap();
    assert_eq!(attempt.state, AttemptState::TimedOut);
    assert_eq!(plane.logs(&slow, None).await, "started\n");
}

#[tokio::test]
async fn cancelling_a_running_job_kills_its_whole_process_group() {
    let plane = plane().await;
    let _agent = plane.agent("worker", &[]).await;
    let id = plane
        .submit(shell("echo $$; sleep 300 & echo $!; wait"))
        .await;
    let text = plane.wait_output(&id, |t| pids(t).len() >= 2).await;
    let group = pids(&text);
    assert_eq!(group.len(), 2, "{text:?}");
    assert!(group.iter().all(|pid| alive(*pid)));

    plane
        .admin
        .cancel_job(&id, JobActionRequest::default())
        .await
        .unwrap();
    let job = plane
        .wait_job(&id, "cancelled and reported", |job| {
            job.state == JobState::Cancelled
                && job.current_attempt().map(|a| a.state) == Some(AttemptState::Cancelled)
        })
        .await;
    assert_eq!(job.attempts.len(), 1);
    for pid in group {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_hundred_thousand_lines_arrive_complete_and_in_order() {
    let plane = plane().await;
    let _agent = plane.agent("worker", &[]).await;
    let id = plane
        .submit(JobSpec {
            command: vec!["seq".into(), "1".into(), "100000".into()],
            ..JobSpec::default()
        })
        .await;
    plane.wait_state(&id, JobState::Succeeded).await;
    let expected: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
    let got = plane.logs(&id, None).await;
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the output differs from seq 1 100000");
}

#[tokio::test]
async fn jobs_are_placed_only_on_an_agent_whose_labels_and_resources_fit() {
    let plane = plane().await;
    let small = plane
        .agent("small", &["--labels", "zone=a", "--cpu-millis", "1000"])
        .await;
    let big = plane
        .agent(
            "big",
            &["--labels", "zone=b,disk=ssd", "--cpu-millis", "4000"],
        )
        .await;

    let wants_b = plane
        .submit(JobSpec {
            labels: [("zone".to_string(), "b".to_string())].into(),
            ..with_cpu(shell("echo b"), 100)
        })
        .await;
    let wants_a = plane
        .submit(JobSpec {
            labels: [("zone".to_string(), "a".to_string())].into(),
            ..with_cpu(shell("echo a"), 100)
        })
        .await;
    let needs_big = plane.submit(with_cpu(shell("echo big"), 3000)).await;
    let nowhere = plane
        .submit(JobSpec {
            labels: [("zone".to_string(), "c".to_string())].into(),
            ..shell("echo never")
        })
        .await;

    let job = plane.wait_state(&wants_b, JobState::Succeeded).await;
    assert_eq!(node_of(&job), big.node_id());
    let job = plane.wait_state(&wants_a, JobState::Succeeded).await;
    assert_eq!(node_of(&job), small.node_id());
    let job = plane.wait_state(&needs_big, JobState::Succeeded).await;
    assert_eq!(node_of(&job), big.node_id());
    plane.assert_stays_pending(&nowhere).await;
}

#[tokio::test]
async fn a_job_that_fits_nowhere_waits_until_a_node_frees_up() {
    let plane = plane().await;
    let agent = plane.agent("single", &["--cpu-millis", "1000"]).await;
    let release = plane.dir.path().join("release");
    let holder = plane
        .submit(with_cpu(
            shell(&format!(
                "echo holding; while [ ! -e '{}' ]; do sleep 0.05; done",
                release.display()
            )),
            1000,
        ))
        .await;
    plane.wait_output(&holder, |t| t.contains("holding")).await;

    let queued = plane.submit(with_cpu(shell("echo second"), 1000)).await;
    plane.assert_stays_pending(&queued).await;

    std::fs::write(&release, b"").unwrap();
    plane.wait_state(&holder, JobState::Succeeded).await;
    let job = plane.wait_state(&queued, JobState::Succeeded).await;
    assert_eq!(node_of(&job), agent.node_id());
    assert_eq!(plane.logs(&queued, None).await, "second\n");
}

#[tokio::test]
async fn a_killed_agents_job_is_retried_on_another_agent_after_the_node_ttl() {
    let plane = plane().await;
    let mut first = plane.agent("first", &[]).await;
    let id = plane
        .submit(JobSpec {
            max_retries: 1,
            ..shell("echo $$; sleep 3; echo done")
        })
        .await;
    let text = plane.wait_output(&id, |t| !pids(t).is_empty()).await;
    let job = plane.job(&id).await;
    assert_eq!(node_of(&job), first.node_id());
    let orphan = pids(&text)[0];

    let second = plane.agent("second", &[]).await;
    first.kill9().await;
    // Its process dies with it (parent-death signal), not left running unsupervised.
    wait_gone(orphan).await;

    let job = plane.wait_state(&id, JobState::Succeeded).await;
    assert_eq!(job.attempts.len(), 2, "{job:#?}");
    let (lost, retry) = (&job.attempts[0], &job.attempts[1]);
    assert_eq!(lost.node.as_str(), first.node_id());
    assert_eq!(lost.state, AttemptState::Lost);
    assert_eq!(lost.exit_code, None, "nobody reported the lost attempt");
    assert_eq!(retry.node.as_str(), second.node_id());
    assert_eq!(
        (retry.state, retry.exit_code),
        (AttemptState::Succeeded, Some(0))
    );
    let retry_output = plane.logs(&id, Some(&retry.id)).await;
    assert!(retry_output.ends_with("\ndone\n"), "{retry_output:?}");
    assert_eq!(
        retry_output.lines().count(),
        2,
        "one run's output: {retry_output:?}"
    );

    let node = plane
        .admin
        .get_node(&NodeId::from(first.node_id()), Consistency::Stale)
        .await
        .unwrap()
        .node;
    assert_eq!(node.state, NodeState::Down);
}

#[tokio::test]
async fn an_agent_stopped_with_sigterm_stops_its_jobs_and_reports_them_failed() {
    let plane = plane().await;
    let mut agent = plane.agent("worker", &[]).await;
    let id = plane.submit(shell("echo $$; sleep 300")).await;
    let text = plane.wait_output(&id, |t| !pids(t).is_empty()).await;
    let pid = pids(&text)[0];
    assert_eq!(agent.terminate().await, Some(0), "a clean exit");
    assert!(
        !alive(pid),
        "the job's process was stopped before the agent exited"
    );
    let job = plane.job(&id).await;
    let attempt = job.current_attempt().unwrap();
    assert_eq!(
        (job.state, attempt.state),
        (JobState::Failed, AttemptState::Failed),
        "reported before the agent exited"
    );
    assert!(
        attempt
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("agent stopped"),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn an_agent_restarted_after_a_crash_reports_the_attempt_it_lost() {
    let plane = plane().await;
    let mut agent = plane.agent("worker", &[]).await;
    let node = agent.node_id().to_string();
    let id = plane.submit(shell("echo $$; sleep 300")).await;
    let text = plane.wait_output(&id, |t| !pids(t).is_empty()).await;
    agent.kill9().await;
    wait_gone(pids(&text)[0]).await;
    // Back within the node TTL, on the same data directory: the same node.
    agent.restart().await.unwrap();
    assert_eq!(agent.node_id(), node);
    let job = plane.wait_state(&id, JobState::Failed).await;
    let attempt = job.current_attempt().unwrap();
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(
        attempt.state,
        AttemptState::Failed,
        "reported, not lost: {attempt:?}"
    );
    assert!(
        attempt
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("restarted"),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn a_job_that_ends_during_a_control_plane_outage_is_reported_after_it() {
    // A TTL long enough that the agent's lease (four fifths of it from the last
    // acknowledged heartbeat) outlasts the job: a longer outage stops running jobs.
    let mut plane = plane_with_ttl("10s").await;
    let _agent = plane.agent("worker", &[]).await;
    let id = plane
        .submit(shell(
            "echo before; sleep 2; seq 1 20000; echo after >&2; exit 7",
        ))
        .await;
    plane.wait_output(&id, |t| t.contains("before")).await;
    plane
        .wait_job(&id, "running", |job| job.state == JobState::Running)
        .await;

    plane.server.kill9().await;
    tokio::time::sleep(OUTAGE).await;
    let restarted_at = now_ms();
    plane.server.restart().await.unwrap();

    let job = plane.wait_state(&id, JobState::Failed).await;
    let attempt = job.current_attempt().unwrap();
    assert_eq!(attempt.exit_code, Some(7));
    assert_eq!(job.attempts.len(), 1);
    let finished_at = attempt.finished_at.unwrap();
    assert!(
        finished_at < restarted_at,
        "billed by the agent's clock, not the delivery time: {finished_at} vs {restarted_at}"
    );
    let expected = format!(
        "before\n{}after\n",
        (1..=20_000).map(|n| format!("{n}\n")).collect::<String>()
    );
    assert!(
        plane.logs(&id, None).await == expected,
        "the output is incomplete or out of order"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: a plain syscall on the pid of a child process this test owns.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

#[tokio::test]
async fn an_agent_that_loses_the_control_plane_kills_its_job_before_the_node_ttl() {
    let plane = plane().await;
    let _agent = plane.agent("worker", &[]).await;
    let id = plane
        .submit(JobSpec {
            max_retries: 0,
            ..shell("echo $$; sleep 300")
        })
        .await;
    let text = plane.wait_output(&id, |t| !pids(t).is_empty()).await;
    let pid = pids(&text)[0];
    let server = plane.server.pid().expect("the server runs");

    // Frozen, the server answers nothing. The agent's last acknowledged heartbeat was
    // sent before this instant, and the server (once thawed) counts the TTL from when it
    // received it, so the job must be dead before this instant + the TTL.
    let frozen = Instant::now();
    signal(server, libc::SIGSTOP);
    let deadline = frozen + NODE_TTL_DURATION;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_alive = alive(pid);
    let waited = frozen.elapsed();
    signal(server, libc::SIGCONT);
    assert!(
        !still_alive,
        "the job still ran {waited:?} after the control plane went silent (node TTL {NODE_TTL})"
    );

    // Thawed, the server declares the node down (the attempt is lost) or first hears the
    // agent's report of the stop; either way the job ends, and the agent works again.
    let job = plane
        .wait_job(&id, "ended", |job| {
            matches!(job.state, JobState::Lost | JobState::Failed)
        })
        .await;
    let attempt = job.current_attempt().unwrap();
    assert_eq!(job.attempts.len(), 1, "{job:#?}");
    if attempt.state == AttemptState::Failed {
        assert!(
            attempt.reason.as_deref().unwrap_or("").contains("lease"),
            "{attempt:?}"
        );
    }
    let next = plane.submit(shell("echo back")).await;
    plane.wait_state(&next, JobState::Succeeded).await;
}

/// An HTTP proxy in front of the control plane that can lose the answers to heartbeats:
/// the server still hears them (so it keeps the node ready and places work on it, and
/// the work polls pass), but the agent never learns they were acknowledged.
struct Proxy {
    url: String,
    drop_heartbeat_answers: Arc<AtomicBool>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    drop_heartbeat_answers: Arc<AtomicBool>,
}

async fn proxy(upstream: &str) -> Proxy {
    let drop_heartbeat_answers = Arc::new(AtomicBool::new(false));
    let state = ProxyState {
        upstream: upstream.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
        drop_heartbeat_answers: drop_heartbeat_answers.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Proxy {
        url,
        drop_heartbeat_answers,
    }
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let heartbeat = parts.uri.path().ends_with("/heartbeat");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut headers = parts.headers.clone();
    headers.remove(axum::http::header::HOST);
    let sent = proxy
        .http
        .request(parts.method, format!("{}{path}", proxy.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    if heartbeat && proxy.drop_heartbeat_answers.load(Ordering::SeqCst) {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    }
    let Ok(answer) = sent else {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    headers.remove(axum::http::header::TRANSFER_ENCODING);
    headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = answer.bytes().await.unwrap_or_default();
    (status, headers, body).into_response()
}

#[tokio::test]
async fn an_agent_whose_heartbeats_go_unanswered_stops_its_job_and_starts_none_until_answered() {
    let plane = plane().await;
    let proxy = proxy(plane.server.url()).await;
    let agent = plane.agent_via(&proxy.url, "worker", &[]).await;
    let node = NodeId::from(agent.node_id());
    let first = plane
        .submit(JobSpec {
            max_retries: 0,
            ..shell("echo $$; sleep 300")
        })
        .await;
    let text = plane.wait_output(&first, |t| !pids(t).is_empty()).await;
    let pid = pids(&text)[0];

    proxy.drop_heartbeat_answers.store(true, Ordering::SeqCst);
    wait_gone(pid).await;
    // The control plane kept hearing the heartbeats: the agent stopped the job on its own
    // lease, and reported it (reports still pass).
    let job = plane.wait_state(&first, JobState::Failed).await;
    let attempt = job.current_attempt().unwrap();
    assert!(
        attempt.reason.as_deref().unwrap_or("").contains("lease"),
        "{attempt:?}"
    );

    // Placed on the node (still ready), polled by the agent, but not started.
    let second = plane.submit(shell("echo second")).await;
    let deadline = Instant::now() + 2 * NOT_PLACED_WINDOW;
    while Instant::now() < deadline {
        let job = plane.job(&second).await;
        assert!(
            matches!(job.state, JobState::Pending | JobState::Assigned),
            "{second} started without a lease: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = plane.job(&second).await;
    assert_eq!(job.state, JobState::Assigned, "placed on the live node");
    assert_eq!(node_of(&job), node.as_str());
    let seen = plane
        .admin
        .get_node(&node, Consistency::Stale)
        .await
        .unwrap()
        .node;
    assert_eq!(seen.state, NodeState::Ready, "never declared down");

    proxy.drop_heartbeat_answers.store(false, Ordering::SeqCst);
    let job = plane.wait_state(&second, JobState::Succeeded).await;
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(plane.logs(&second, None).await, "second\n");
}

#[tokio::test]
async fn a_job_cannot_read_the_agents_key_and_one_over_its_memory_ends_oom_killed() {
    let plane = plane().await;
    let agent = plane.agent("isolated", &[]).await;
    let data = agent.data_dir().display().to_string();
    // Placed only on a node that says it isolates: the scheduler can require it.
    let isolated = |spec: JobSpec| JobSpec {
        labels: [("tanvrit.isolation".to_string(), "cgroup".to_string())].into(),
        ..spec
    };
    let snoop = plane
        .submit(isolated(shell(&format!(
            "cat /proc/$PPID/environ; echo \"environ=$?\"; cat /proc/$PPID/cmdline; \
             echo \"cmdline=$?\"; ls {data}; echo \"data_dir=$?\"; cat {data}/node-id; \
             echo \"node_id=$?\"; echo \"uid=$(id -u)\""
        ))))
        .await;
    plane.wait_state(&snoop, JobState::Succeeded).await;
    let text = plane.logs(&snoop, None).await;
    assert!(!text.contains(agent.key()), "the agent key leaked: {text}");
    assert!(text.contains("environ=1"), "{text}");
    assert!(text.contains("cmdline=1"), "not even listed: {text}");
    assert!(text.contains("data_dir=2"), "{text}");
    assert!(text.contains("node_id=1"), "{text}");
    assert!(!text.contains("uid=0"), "{text}");

    let hog = plane
        .submit(JobSpec {
            command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
                .map(String::from)
                .to_vec(),
            resources: Resources {
                cpu_millis: 500,
                memory_mb: 16,
                gpus: 0,
            },
            ..JobSpec::default()
        })
        .await;
    let job = plane.wait_state(&hog, JobState::Failed).await;
    let reason = job.current_attempt().unwrap().reason.clone().unwrap();
    assert!(reason.starts_with("oom_killed"), "{reason}");

    let after = plane.submit(shell("echo still here")).await;
    let job = plane.wait_state(&after, JobState::Succeeded).await;
    assert_eq!(node_of(&job), agent.node_id(), "the same agent runs on");
}

#[tokio::test]
async fn an_agent_with_a_key_made_for_its_node_runs_its_jobs_and_no_other_node_can_use_it() {
    let plane = plane().await;
    let bound = plane
        .admin
        .create_key(KeyCreateRequest {
            name: Some("gpu-1".into()),
            scope: Scope::Agent,
            business: None,
            node: Some(NodeId::from("gpu-1")),
        })
        .await
        .unwrap()
        .secret;
    let start = |name: &'static str, node_id: &'static str| {
        let (url, key, dir) = (
            plane.server.url().to_string(),
            bound.clone(),
            plane.dir.path().join(name),
        );
        async move {
            let flags = ["--name", name, "--node-id", node_id, "--stop-grace", "2s"];
            AgentProcess::start(Path::new(BIN), &url, &key, &dir, &flags).await
        }
    };
    let agent = start("gpu-1", "gpu-1")
        .await
        .expect("its own node registers");
    assert_eq!(agent.node_id(), "gpu-1");
    let id = plane.submit(shell("echo on gpu-1")).await;
    let job = plane.wait_state(&id, JobState::Succeeded).await;
    assert_eq!(node_of(&job), "gpu-1");
    assert!(
        start("impostor", "gpu-2").await.is_err(),
        "the key registers no other node: the agent stops at its first registration"
    );
}
