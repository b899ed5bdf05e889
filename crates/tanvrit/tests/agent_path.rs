//! The agent path with real `tanvrit server` and `tanvrit agent` processes. Dispatch:
//! a job is running as soon as its process starts, whatever the agent's output flush
//! interval. Outages: a job keeps running while the whole control plane is killed and
//! restarted, and is reported and charged once; an agent silent past the node TTL (its
//! node declared down) but back within `lost_after` keeps its job; and an agent cut off
//! for longer stops its job before `lost_after`, when the control plane may retry it.
//!
//! Every wait polls for a condition with a deadline; the only fixed waits are the
//! outages themselves.

use std::path::Path;
use std::time::{Duration, Instant};

use tanvrit_api::*;
use tanvrit_client::Client;
use tanvrit_testkit::poll::eventually;
use tanvrit_testkit::process::{AgentProcess, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const NODE_TTL: Duration = Duration::from_secs(1);
const PATIENCE: Duration = Duration::from_secs(60);
const BUSINESS: &str = "acme";

struct Plane {
    dir: tempfile::TempDir,
    server: ServerProcess,
    admin: Client,
}

async fn plane(lost_after: &str) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        Path::new(BIN),
        &dir.path().join("server"),
        &[
            ("TANVRIT_NODE_TTL", "1s"),
            ("TANVRIT_NODE_LOST_AFTER", lost_after),
        ],
    )
    .await
    .expect("the server starts");
    let admin = server.admin_with_credits(BUSINESS, 1_000_000_000).await;
    Plane { dir, server, admin }
}

impl Plane {
    async fn agent(&self, name: &str) -> AgentProcess {
        self.agent_with(name, &[]).await
    }

    async fn agent_with(&self, name: &str, flags: &[&str]) -> AgentProcess {
        let key = self.server.agent_key().await;
        let mut args = vec![
            "--name",
            name,
            "--backoff-max",
            "300ms",
            "--stop-grace",
            "2s",
            "--isolation",
            "none",
        ];
        args.extend_from_slice(flags);
        AgentProcess::start(
            Path::new(BIN),
            self.server.url(),
            &key,
            &self.dir.path().join(name),
            &args,
        )
        .await
        .expect("the agent starts and registers")
    }

    async fn submit(&self, script: &str) -> JobId {
        let spec = JobSpec {
            shell: Some(script.into()),
            max_retries: 0,
            // Billed by the CPU it reserves: a job reserving nothing is charged nothing.
            resources: Resources {
                cpu_millis: 1000,
                memory_mb: 64,
                gpus: 0,
            },
            ..JobSpec::default()
        };
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

    /// Polls the job (riding out a restarting server) until `done` holds.
    async fn wait_job(&self, id: &JobId, what: &str, done: impl Fn(&Job) -> bool) -> Job {
        eventually(PATIENCE, what, || async {
            let job = self.admin.get_job(id, Consistency::Stale).await.ok()?.job;
            done(&job).then_some(job)
        })
        .await
    }

    /// The pid the job's shell printed first, once it is running.
    async fn running_pid(&self, id: &JobId) -> i32 {
        self.wait_job(id, "running", |job| job.state == JobState::Running)
            .await;
        eventually(PATIENCE, "the job's pid in its output", || async {
            let page = self
                .admin
                .job_logs(id, JobLogsRequest::default())
                .await
                .ok()?;
            page.data.lines().next()?.trim().parse().ok()
        })
        .await
    }

    async fn output(&self, id: &JobId) -> String {
        self.admin
            .job_logs(id, JobLogsRequest::default())
            .await
            .unwrap()
            .data
    }

    /// The charges the ledger holds for `job`.
    async fn charges(&self, job: &JobId) -> Vec<LedgerEntry> {
        let entries = self
            .admin
            .credit_entries(CreditEntriesRequest {
                business: Some(BusinessId::from(BUSINESS)),
                limit: Some(10_000),
                ..CreditEntriesRequest::default()
            })
            .await
            .unwrap()
            .entries;
        entries
            .into_iter()
            .filter(|entry| entry.kind == EntryKind::Charge && entry.job.as_ref() == Some(job))
            .collect()
    }

    async fn node_state(&self, node: &str) -> NodeState {
        self.admin
            .get_node(&NodeId::from(node), Consistency::Stale)
            .await
            .unwrap()
            .node
            .state
    }
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: a plain syscall on the pid of a child process this test owns.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// A job succeeded with one attempt, its whole output, and one charge for it.
async fn assert_ran_once(plane: &Plane, id: &JobId, pid: i32) {
    let job = plane
        .wait_job(id, "succeeded", |job| job.state == JobState::Succeeded)
        .await;
    assert_eq!(job.attempts.len(), 1, "{job:#?}");
    let attempt = &job.attempts[0];
    assert_eq!(
        (attempt.state, attempt.exit_code),
        (AttemptState::Succeeded, Some(0))
    );
    assert_eq!(plane.output(id).await, format!("{pid}\ndone\n"));
    let charges = plane.charges(id).await;
    assert_eq!(charges.len(), 1, "charged once: {charges:#?}");
    assert_eq!(-charges[0].amount, attempt.charged);
    assert!(attempt.charged > 0);
}

#[tokio::test]
async fn a_job_is_running_as_its_process_starts_without_waiting_for_the_output_flush() {
    let plane = plane("60s").await;
    // Far longer than the test's patience: only output may wait for it.
    let _agent = plane
        .agent_with("worker", &["--log-flush-interval", "1h"])
        .await;
    let id = plane.submit("sleep 300").await;
    let job = plane
        .wait_job(&id, "running", |job| job.state == JobState::Running)
        .await;
    assert_eq!(job.attempts.len(), 1);
}

#[tokio::test]
async fn a_running_job_outlives_a_killed_and_restarted_control_plane_and_is_charged_once() {
    let mut plane = plane("60s").await;
    let agent = plane.agent("worker").await;
    let id = plane.submit("echo $$; sleep 8; echo done").await;
    let pid = plane.running_pid(&id).await;

    // Dead for five TTLs: under the old rule the agent stopped its job after 0.8 TTL.
    plane.server.kill9().await;
    let outage = Instant::now() + 5 * NODE_TTL;
    while Instant::now() < outage {
        assert!(alive(pid), "the job was stopped during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    plane.server.restart().await.unwrap();

    assert_ran_once(&plane, &id, pid).await;
    assert_eq!(plane.node_state(agent.node_id()).await, NodeState::Ready);
}

#[tokio::test]
async fn an_agent_silent_past_the_node_ttl_but_back_within_lost_after_keeps_its_job() {
    let plane = plane("60s").await;
    let agent = plane.agent("worker").await;
    let id = plane.submit("echo $$; sleep 6; echo done").await;
    let pid = plane.running_pid(&id).await;

    // The agent alone falls silent (its job's process runs on): its node goes down.
    let agent_pid = agent.pid().expect("the agent runs");
    signal(agent_pid, libc::SIGSTOP);
    eventually(PATIENCE, "the node declared down", || async {
        let node = plane
            .admin
            .get_node(&NodeId::from(agent.node_id()), Consistency::Stale)
            .await
            .ok()?
            .node;
        (node.state == NodeState::Down).then_some(())
    })
    .await;
    let job = plane
        .admin
        .get_job(&id, Consistency::Stale)
        .await
        .unwrap()
        .job;
    assert_eq!(job.state, JobState::Running, "down is not lost: {job:#?}");
    signal(agent_pid, libc::SIGCONT);

    // Back: it registers again, carries on, and reports the one attempt.
    assert_ran_once(&plane, &id, pid).await;
    assert_eq!(plane.node_state(agent.node_id()).await, NodeState::Ready);
}

#[tokio::test]
async fn an_agent_cut_off_past_lost_after_stops_its_job_before_the_control_plane_may_retry_it() {
    let lost_after = Duration::from_secs(4);
    let plane = plane("4s").await;
    let _agent = plane.agent("worker").await;
    let id = plane.submit("echo $$; sleep 300").await;
    let pid = plane.running_pid(&id).await;
    let server = plane.server.pid().expect("the server runs");

    // Frozen, the server answers nothing; thawed, it counts lost_after from when it
    // received the agent's last heartbeat, which the agent sent before this instant.
    let frozen = Instant::now();
    signal(server, libc::SIGSTOP);
    let past_ttl = frozen + 2 * NODE_TTL;
    while Instant::now() < past_ttl {
        assert!(alive(pid), "stopped before lost_after");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = frozen + lost_after;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_alive = alive(pid);
    let waited = frozen.elapsed();
    signal(server, libc::SIGCONT);
    assert!(
        !still_alive,
        "the job still ran {waited:?} after the control plane went silent (lost_after {lost_after:?})"
    );
    let job = plane
        .wait_job(&id, "ended", |job| {
            matches!(job.state, JobState::Lost | JobState::Failed)
        })
        .await;
    assert_eq!(job.attempts.len(), 1, "{job:#?}");
}
