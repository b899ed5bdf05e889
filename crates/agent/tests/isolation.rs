//! Real processes under real cgroups (as root, on the host's cgroup v1 or v2): an
//! attempt over its memory ends `failed` / `oom_killed` while its neighbour runs on; a
//! fork bomb stops at the pids limit; half a core is half a core; and a job, by its own
//! commands, cannot read another tenant's directory, files, or environment, the agent's
//! data directory or environment, or `/etc/shadow`, and cannot signal the agent or
//! another job — each beside a check the job *can* do, so a denial is not an accident.
//! A process that left the job's process group still ends with the attempt, and an
//! agent restarted after a crash kills what its last run left in its cgroups.
//!
//! These need root and usable cgroups (CI runs as root). Elsewhere they fail, saying so;
//! set `TANVRIT_SKIP_ISOLATION_TESTS=1` to skip them knowingly.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tanvrit_agent::isolation::{secure_data_dir, Isolation, IsolationConfig};
use tanvrit_agent::process::{self, scratch_dir, RunSpec, StopReason};
use tanvrit_agent::spool::{Next, Spool};
use tanvrit_agent::{Agent, AgentConfig, IsolationMode};
use tanvrit_client::api::{
    AttemptFinishedRequest, AttemptId, AttemptOutcome, JobId, JobSpec, NodeId, Resources,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Longest wait for any condition.
const PATIENCE: Duration = Duration::from_secs(30);

fn skipped() -> bool {
    if std::env::var("TANVRIT_SKIP_ISOLATION_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("TANVRIT_SKIP_ISOLATION_TESTS=1: not testing isolation");
        return true;
    }
    false
}

/// An agent's isolation with its own node cgroup, data directory and work root.
struct Node {
    _dir: tempfile::TempDir,
    _work: tempfile::TempDir,
    data_dir: PathBuf,
    spool: Arc<Spool>,
    isolation: Arc<Isolation>,
}

/// One attempt running on a [`Node`].
struct Running {
    attempt: AttemptId,
    stop: watch::Sender<Option<StopReason>>,
    task: JoinHandle<AttemptFinishedRequest>,
}

/// A directory for a work root: jobs run as other users and must get through to it,
/// and not under `/tmp`, which each job sees replaced by its own directory.
fn work_parent() -> tempfile::TempDir {
    let parent = std::path::Path::new("/var/lib/tanvrit/test-work");
    std::fs::create_dir_all(parent).unwrap();
    let dir = tempfile::tempdir_in(parent).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn node(pids_max: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let work = work_parent();
    let data_dir = dir.path().join("agent");
    secure_data_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("node-id"), "node-secret-id\n").unwrap();
    let config = IsolationConfig {
        work_root: Some(work.path().join("work")),
        pids_max,
        ..IsolationConfig::default()
    };
    let id = NodeId(format!("test-{}", uuid::Uuid::now_v7()));
    let isolation = Isolation::prepare(&config, &id, &data_dir).unwrap_or_else(|e| {
        panic!(
            "these tests need root and usable cgroups ({}: {e}); \
             TANVRIT_SKIP_ISOLATION_TESTS=1 skips them",
            e.code()
        )
    });
    assert!(isolation.cgroup_version().is_some());
    eprintln!("isolation: {}", isolation.describe());
    let (spool, _) = Spool::open(&dir.path().join("spool"), 1 << 30).unwrap();
    Node {
        _dir: dir,
        _work: work,
        data_dir,
        spool: Arc::new(spool),
        isolation: Arc::new(isolation),
    }
}

impl Node {
    fn start(&self, name: &str, spec: JobSpec) -> Running {
        let attempt = AttemptId(format!("att-{name}"));
        let job = JobId(format!("job-{name}"));
        self.spool.create(&job, &attempt, 0);
        let run = RunSpec {
            job,
            attempt: attempt.clone(),
            scratch_dir: scratch_dir(self.isolation.work_root(), &attempt),
            spec,
            stop_grace: Duration::from_millis(200),
            isolation: self.isolation.clone(),
        };
        let (stop, rx) = watch::channel(None);
        let spool = self.spool.clone();
        let task = tokio::spawn(async move {
            let notify = Notify::new();
            process::run(&run, &spool, &notify, rx).await
        });
        Running {
            attempt,
            stop,
            task,
        }
    }

    fn dir_of(&self, running: &Running) -> PathBuf {
        scratch_dir(self.isolation.work_root(), &running.attempt)
    }

    /// All output so far (it stays readable after the attempt finished).
    fn output(&self, running: &Running) -> String {
        let mut out = String::new();
        let mut offset = 0u64;
        loop {
            match self.spool.next(&running.attempt, 1 << 20) {
                Next::Started(_) => self.spool.started_delivered(&running.attempt),
                Next::Chunk(chunk) => {
                    out.push_str(&chunk.data);
                    offset += chunk.data.len() as u64;
                    self.spool.acked(&running.attempt, &chunk, offset);
                }
                _ => return out,
            }
        }
    }

    /// Output collected until `done` holds for all of it; panics after [`PATIENCE`].
    async fn wait_output(&self, running: &Running, text: &mut String, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            text.push_str(&self.output(running));
            if done(text) {
                return;
            }
            assert!(
                !running.task.is_finished(),
                "{} ended early; output: {text}",
                running.attempt
            );
            assert!(Instant::now() < deadline, "waited in vain; output: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn shell(script: &str, cpu_millis: u64, memory_mb: u64) -> JobSpec {
    JobSpec {
        shell: Some(script.into()),
        resources: Resources {
            cpu_millis,
            memory_mb,
            gpus: 0,
        },
        timeout_secs: 60,
        ..JobSpec::default()
    }
}

async fn finish(running: Running) -> AttemptFinishedRequest {
    tokio::time::timeout(PATIENCE, running.task)
        .await
        .expect("the attempt ends in time")
        .unwrap()
}

async fn cancel(running: Running) -> AttemptFinishedRequest {
    running.stop.send(Some(StopReason::Cancelled)).unwrap();
    finish(running).await
}

#[tokio::test]
async fn a_job_over_its_memory_ends_failed_oom_killed_while_its_neighbour_runs_on() {
    if skipped() {
        return;
    }
    let node = node(64);
    let neighbour = node.start(
        "neighbour",
        shell("echo up; while :; do sleep 0.05; done", 500, 32),
    );
    node.wait_output(&neighbour, &mut String::new(), |t| t.contains("up"))
        .await;

    // dd holds a 64 MB buffer it fills from /dev/zero: four times its limit.
    let hog = node.start(
        "hog",
        JobSpec {
            command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
                .map(String::from)
                .to_vec(),
            shell: None,
            ..shell("", 500, 16)
        },
    );
    let result = finish(hog).await;
    assert_eq!(result.outcome, AttemptOutcome::Failed, "{result:?}");
    let reason = result.reason.unwrap_or_default();
    assert!(reason.starts_with("oom_killed"), "{reason}");
    assert!(reason.contains("16 MB"), "{reason}");

    assert!(!neighbour.task.is_finished(), "the neighbour was hit too");
    let mut more = String::new();
    node.wait_output(&neighbour, &mut more, |_| true).await;
    let result = cancel(neighbour).await;
    assert_eq!(result.outcome, AttemptOutcome::Cancelled);
}

#[tokio::test]
async fn a_job_that_ends_by_sigkill_without_an_oom_is_not_called_oom_killed() {
    if skipped() {
        return;
    }
    let node = node(64);
    let result = finish(node.start("self-kill", shell("kill -9 $$", 500, 16))).await;
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    let reason = result.reason.unwrap_or_default();
    assert!(reason.contains("SIGKILL"), "{reason}");
    assert!(!reason.contains("oom_killed"), "{reason}");
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    if skipped() {
        return;
    }
    const PIDS_MAX: u64 = 16;
    let node = node(PIDS_MAX);
    // Bounded, so it cannot hurt the machine even without the limit: a binary tree of
    // depth 7 (255 shells, each with one `sleep`) that lives 10 s at most.
    let bomb = node.start(
        "bomb",
        JobSpec {
            timeout_secs: 10,
            ..shell(
                "b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & fi; sleep 5; }; b 7",
                500,
                64,
            )
        },
    );
    let cgroup = node.isolation.attempt_cgroup(&bomb.attempt).unwrap();
    let read = |file: &str| std::fs::read_to_string(cgroup.pids.join(file)).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    let mut most = 0;
    loop {
        let current: u64 = read("pids.current").trim().parse().unwrap_or(0);
        most = most.max(current);
        assert!(current <= PIDS_MAX, "{current} tasks in the cgroup");
        let refused: u64 = read("pids.events")
            .lines()
            .find_map(|l| l.strip_prefix("max ")?.trim().parse().ok())
            .unwrap_or(0);
        // A bomb whose forks are refused may give up and end before a poll sees the
        // event (its cgroup goes with it); having held exactly the limit and never
        // more shows the same thing.
        if refused > 0 || (bomb.task.is_finished() && most >= PIDS_MAX) {
            break;
        }
        assert!(
            Instant::now() < deadline && !bomb.task.is_finished(),
            "no fork was refused (at most {most} tasks seen)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most > 1, "the bomb forked");
    // Cancelled, or already failed: a shell whose fork is refused may give up.
    let result = cancel(bomb).await;
    assert_ne!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
    assert!(!cgroup.pids.exists(), "its cgroup is removed at the end");
}

#[tokio::test]
async fn a_job_given_half_a_core_gets_about_half_a_core() {
    if skipped() {
        return;
    }
    let node = node(64);
    let spinner = node.start(
        "spinner",
        shell(
            "while :; do :; done & while :; do :; done & echo spinning; wait",
            500,
            32,
        ),
    );
    node.wait_output(&spinner, &mut String::new(), |t| t.contains("spinning"))
        .await;
    let cgroup = node.isolation.attempt_cgroup(&spinner.attempt).unwrap();
    let (cpu0, wall0) = (
        cgroup.usage().cpu_ns.expect("cpu accounted"),
        Instant::now(),
    );
    // A measurement needs a window: 3 s of two busy loops, which unlimited would take
    // up to 2 cores (6 s of CPU) on an idle 2-core machine.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu1, wall1) = (cgroup.usage().cpu_ns.unwrap(), Instant::now());
    let ratio = (cpu1 - cpu0) as f64 / (wall1 - wall0).as_nanos() as f64;
    let throttled = std::fs::read_to_string(cgroup.cpu.join("cpu.stat")).unwrap();
    cancel(spinner).await;
    eprintln!("500 millicores, two busy loops: {ratio:.3} cores; cpu.stat:\n{throttled}");
    // Generous: the quota allows 0.5; other load on a shared machine may give it less.
    assert!(ratio < 0.75, "{ratio:.3} cores used with a quota of 0.5");
    assert!(ratio > 0.05, "{ratio:.3} cores: it hardly ran");
    let throttled_periods: u64 = throttled
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse().ok())
        .unwrap_or(0);
    assert!(throttled_periods > 0, "never throttled:\n{throttled}");
}

#[tokio::test]
async fn a_job_sees_only_its_own_environment_uid_and_private_directory() {
    if skipped() {
        return;
    }
    let node = node(64);
    let env = node.start(
        "env",
        JobSpec {
            command: vec!["env".into()],
            shell: None,
            env: [("MY_VAR".to_string(), "mine".to_string())].into(),
            ..shell("", 500, 32)
        },
    );
    let dir = node.dir_of(&env);
    assert_eq!(finish_ok(&node, env).await, {
        let mut expected = vec![
            // No GPU asked for: none visible (an empty list, not every device).
            "CUDA_VISIBLE_DEVICES=".to_string(),
            "NVIDIA_VISIBLE_DEVICES=void".to_string(),
            format!("HOME={}", dir.display()),
            "MY_VAR=mine".to_string(),
            format!("PATH={}", process::DEFAULT_PATH),
            "TANVRIT_ATTEMPT_ID=att-env".to_string(),
            "TANVRIT_CPU_MILLIS=500".to_string(),
            "TANVRIT_GPUS=0".to_string(),
            "TANVRIT_JOB_ID=job-env".to_string(),
            "TANVRIT_MEMORY_MB=32".to_string(),
            format!("TMPDIR={}", dir.display()),
        ];
        expected.sort();
        expected
    });

    let who = node.start(
        "who",
        shell(
            "echo \"uid $(id -u)\"; echo \"groups $(id -G)\"; \
             echo \"dir $(stat -c '%a %u %g' \"$PWD\")\"; echo \"pwd $PWD\"",
            500,
            32,
        ),
    );
    let dir = node.dir_of(&who);
    let lines = finish_ok(&node, who).await;
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}: {lines:?}"))
            .to_string()
    };
    let uid: u32 = field("uid").parse().unwrap();
    assert!(uid >= 2_000_000_000, "uid {uid} is from the job range");
    assert_eq!(
        field("groups"),
        uid.to_string(),
        "a private group, no others"
    );
    assert_eq!(
        field("dir"),
        format!("700 {uid} {uid}"),
        "a private directory"
    );
    assert_eq!(field("pwd"), dir.display().to_string());
}

/// Runs the attempt to success; its output lines, sorted.
async fn finish_ok(node: &Node, running: Running) -> Vec<String> {
    let mut text = String::new();
    let attempt = running.attempt.clone();
    let result = finish(running).await;
    loop {
        match node.spool.next(&attempt, 1 << 20) {
            Next::Started(_) => node.spool.started_delivered(&attempt),
            Next::Chunk(chunk) => {
                text.push_str(&chunk.data);
                let offset = text.len() as u64;
                node.spool.acked(&attempt, &chunk, offset);
            }
            _ => break,
        }
    }
    assert_eq!(
        result.outcome,
        AttemptOutcome::Succeeded,
        "{result:?}: {text}"
    );
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_job_cannot_reach_another_tenant_the_agents_data_or_secrets_or_signal_them() {
    if skipped() {
        return;
    }
    let node = node(64);
    let tenant_a = node.start(
        "tenant-a",
        JobSpec {
            env: [("SECRET_A".to_string(), "env-secret-a".to_string())].into(),
            ..shell(
                "echo file-secret-a > secret; echo \"pid $$\"; while :; do sleep 0.05; done",
                500,
                32,
            )
        },
    );
    let mut text = String::new();
    node.wait_output(&tenant_a, &mut text, |t| t.contains('\n'))
        .await;
    let a_pid: i32 = text.trim().strip_prefix("pid ").unwrap().parse().unwrap();
    let a_dir = node.dir_of(&tenant_a);
    let agent = std::process::id();
    let data = node.data_dir.display();
    let script = format!(
        "check() {{ name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"$name ok\"; \
                 else echo \"$name denied\"; fi; }}
         check own_dir ls .
         check own_signal kill -0 $$
         check own_cmdline cat /proc/$$/cmdline
         check other_dir ls {a_dir}
         check other_file cat {a_dir}/secret
         check other_environ cat /proc/{a_pid}/environ
         check other_cmdline cat /proc/{a_pid}/cmdline
         check other_signal kill -0 {a_pid}
         check data_dir ls {data}
         check node_id cat {data}/node-id
         check agent_environ cat /proc/{agent}/environ
         check agent_cmdline cat /proc/{agent}/cmdline
         check agent_signal kill -0 {agent}
         check shadow cat /etc/shadow
         cat {a_dir}/secret /proc/{a_pid}/environ {data}/node-id 2>/dev/null; true",
        a_dir = a_dir.display(),
    );
    let lines = finish_ok(&node, node.start("tenant-b", shell(&script, 500, 32))).await;
    assert!(alive(a_pid), "tenant A's process is untouched");
    cancel(tenant_a).await;

    let verdict = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no verdict for {name}: {lines:?}"))
            .to_string()
    };
    assert_eq!(verdict("own_dir"), "ok");
    assert_eq!(verdict("own_signal"), "ok");
    assert_eq!(verdict("own_cmdline"), "ok");
    for name in [
        "other_dir",
        "other_file",
        "other_environ",
        "other_cmdline",
        "other_signal",
        "data_dir",
        "node_id",
        "agent_environ",
        "agent_cmdline",
        "agent_signal",
        "shadow",
    ] {
        assert_eq!(verdict(name), "denied", "{name}: {lines:?}");
    }
    let all = lines.join("\n");
    for secret in ["file-secret-a", "env-secret-a", "node-secret-id"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn an_agent_refuses_to_start_when_it_cannot_isolate_unless_told_none() {
    if skipped() {
        return;
    }
    let dir = work_parent();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let client = tanvrit_client::Client::new(tanvrit_client::ClientConfig {
        endpoints: vec!["http://127.0.0.1:9".into()],
        ..tanvrit_client::ClientConfig::default()
    })
    .unwrap();
    // Jobs running as other users could not reach a work root inside a 0700 directory.
    let mut config = AgentConfig::new(dir.path().join("agent"));
    config.isolation.work_root = Some(dir.path().join("work"));
    let err = Agent::new(client.clone(), config.clone())
        .err()
        .expect("refused");
    assert_eq!(err.code(), "agent_isolation_unavailable");
    assert!(err.to_string().contains("--isolation none"), "{err}");

    config.isolation.mode = IsolationMode::None;
    let agent = Agent::new(client, config).expect("starts without isolation");
    assert_eq!(agent.isolation().describe(), "none");
    let mode = std::fs::metadata(dir.path().join("agent"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the data directory is private");
}

#[tokio::test]
async fn a_process_that_left_the_process_group_ends_with_its_attempt() {
    if skipped() {
        return;
    }
    let node = node(64);
    // `setsid` takes the sleep out of the job's process group (and session): signals to
    // the group miss it, its cgroup does not.
    let escaper = node.start(
        "escaper",
        shell("setsid sleep 300 & echo \"pid $!\"; sleep 0.2", 500, 32),
    );
    let lines = finish_ok(&node, escaper).await;
    let pid: i32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}"));
    let deadline = Instant::now() + PATIENCE;
    while alive_not_zombie(pid) {
        assert!(Instant::now() < deadline, "pid {pid} outlived its attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_agent_restarted_after_a_crash_kills_what_its_last_run_left_in_its_cgroups() {
    if skipped() {
        return;
    }
    let dir = work_parent();
    let config = IsolationConfig {
        work_root: Some(dir.path().join("work")),
        ..IsolationConfig::default()
    };
    let id = NodeId(format!("test-{}", uuid::Uuid::now_v7()));
    let data = dir.path().join("agent");
    let first = Isolation::prepare(&config, &id, &data).expect("isolation");
    let cgroup = first
        .attempt_cgroup(&AttemptId::from("att-orphan"))
        .unwrap();
    cgroup
        .create(&tanvrit_agent::isolation::limits(&Resources::default(), 16))
        .unwrap();
    let mut orphan = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    for dir in cgroup.dirs() {
        std::fs::write(dir.join("cgroup.procs"), orphan.id().to_string()).unwrap();
    }
    // A crash: nothing of the first run is cleaned up.
    std::mem::forget(first);

    let second = Isolation::prepare(&config, &id, &data).expect("isolation");
    let status = orphan.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(!cgroup.memory.exists(), "the old attempt's cgroup is gone");
    drop(second);
}

/// True while `pid` is a live (not zombie) process.
fn alive_not_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

#[tokio::test]
async fn a_file_a_job_leaves_in_tmp_is_seen_by_no_other_job_nor_the_host() {
    if skipped() {
        return;
    }
    let node = node(64);
    let name = format!("tanvrit-test-{}", uuid::Uuid::now_v7());
    let writer = node.start(
        "tmp-writer",
        shell(
            &format!(
                "echo tmp-secret > /tmp/{name}; echo shm-secret > /dev/shm/{name}; \
                 echo ready; while :; do sleep 0.05; done"
            ),
            500,
            32,
        ),
    );
    node.wait_output(&writer, &mut String::new(), |t| t.contains("ready"))
        .await;
    assert!(
        !std::path::Path::new("/tmp").join(&name).exists(),
        "on the host's /tmp"
    );
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
    let lines = finish_ok(
        &node,
        node.start(
            "tmp-reader",
            shell(
                &format!(
                    "cat /tmp/{name} /dev/shm/{name} 2>/dev/null; echo \"cat $?\"; \
                     echo mine > /tmp/own; cat /tmp/own"
                ),
                500,
                32,
            ),
        ),
    )
    .await;
    cancel(writer).await;
    assert_eq!(lines, vec!["cat 1".to_string(), "mine".to_string()]);
}
