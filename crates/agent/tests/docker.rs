//! The `docker` driver against the real Docker engine: a job naming an image runs in a
//! container of an image built here (a `docker import` of a directory holding a static
//! busybox: no registry), with its memory, CPU and pids limits, a non-root user, only its
//! own environment, no network and its output; over its memory it ends `oom_killed`; a
//! cancel and a timeout stop the container, which is gone afterwards.
//!
//! Needs the Docker engine and `/bin/busybox` (Debian's `busybox-static`); elsewhere they
//! fail, saying so; `TANVRIT_SKIP_DOCKER_TESTS=1` skips them knowingly. Images and
//! containers are named `tanvrit-test-*` and removed.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tanvrit_agent::docker::Docker;
use tanvrit_agent::gpus::GpuPool;
use tanvrit_agent::isolation::Isolation;
use tanvrit_agent::process::{self, scratch_dir, RunSpec, StopReason};
use tanvrit_agent::spool::{Next, Spool};
use tanvrit_client::api::{
    AttemptFinishedRequest, AttemptId, AttemptOutcome, JobId, JobSpec, Resources,
};
use tokio::sync::{watch, Notify};

const BUSYBOX: &str = "/bin/busybox";

fn skipped() -> bool {
    if std::env::var("TANVRIT_SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("TANVRIT_SKIP_DOCKER_TESTS=1: not testing the docker driver");
        return true;
    }
    false
}

/// A busybox image imported from a directory, removed on drop.
struct Image(String);

impl Image {
    fn build(tag: &str) -> Image {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is needed to build the test image (apt-get install busybox-static); \
             TANVRIT_SKIP_DOCKER_TESTS=1 skips these tests"
        );
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in [
            "sh", "sleep", "echo", "cat", "id", "ls", "dd", "env", "grep",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let name = format!("tanvrit-test-busybox:{tag}-{}", std::process::id());
        let archive = root.path().join("rootfs.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["--exclude", "./rootfs.tar", "-cf"])
            .arg(&archive)
            .arg(".")
            .status()
            .unwrap();
        assert!(packed.success());
        let imported = Command::new("docker")
            .arg("import")
            .arg(&archive)
            .arg(&name)
            .output()
            .expect("docker runs");
        assert!(
            imported.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        Image(name)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

struct Node {
    _dir: tempfile::TempDir,
    spool: Arc<Spool>,
    isolation: Arc<Isolation>,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let docker = Docker::detect("docker").unwrap_or_else(|e| {
        panic!("these tests need the Docker engine ({e}); TANVRIT_SKIP_DOCKER_TESTS=1 skips them")
    });
    let isolation =
        Isolation::none(dir.path().join("work")).with_devices(Some(docker), GpuPool::new([]));
    let (spool, _) = Spool::open(&dir.path().join("spool"), 1 << 30).unwrap();
    Node {
        _dir: dir,
        spool: Arc::new(spool),
        isolation: Arc::new(isolation),
    }
}

struct Running {
    attempt: AttemptId,
    stop: watch::Sender<Option<StopReason>>,
    task: tokio::task::JoinHandle<AttemptFinishedRequest>,
}

impl Node {
    fn start(&self, name: &str, spec: JobSpec) -> Running {
        let attempt = AttemptId(format!("att-{name}-{}", std::process::id()));
        let job = JobId(format!("job-{name}"));
        self.spool.create(&job, &attempt, 0);
        let run = RunSpec {
            job,
            attempt: attempt.clone(),
            scratch_dir: scratch_dir(self.isolation.work_root(), &attempt),
            spec,
            stop_grace: Duration::from_millis(500),
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

    fn output(&self, attempt: &AttemptId) -> String {
        let mut text = String::new();
        loop {
            match self.spool.next(attempt, 1 << 20) {
                Next::Chunk(chunk) => {
                    text.push_str(&chunk.data);
                    let next = chunk.offset + chunk.data.len() as u64;
                    self.spool.acked(attempt, &chunk, next);
                }
                Next::Started(_) => self.spool.started_delivered(attempt),
                _ => return text,
            }
        }
    }
}

fn in_image(image: &Image, script: &str, cpu_millis: u64, memory_mb: u64) -> JobSpec {
    JobSpec {
        shell: Some(script.into()),
        image: Some(image.0.clone()),
        resources: Resources {
            cpu_millis,
            memory_mb,
            gpus: 0,
        },
        timeout_secs: 60,
        env: [("GREETING".to_string(), "hello from the spec".to_string())].into(),
        ..JobSpec::default()
    }
}

/// No container of `attempt` is left, running or stopped.
fn container_gone(attempt: &AttemptId) -> bool {
    let name = Docker::container_name(attempt);
    let listed = Command::new("docker")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("name=^{name}$"),
        ])
        .output()
        .unwrap();
    listed.stdout.is_empty()
}

#[tokio::test]
async fn a_job_naming_an_image_runs_in_it_with_its_limits_user_environment_and_no_network() {
    if skipped() {
        return;
    }
    let image = Image::build("limits");
    let node = node();
    let running = node.start(
        "limits",
        in_image(
            &image,
            "echo uid=$(id -u); echo greeting=$GREETING; echo job=$TANVRIT_JOB_ID; \
             echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
             echo pids=$(cat /sys/fs/cgroup/pids/pids.max); \
             echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us 2>/dev/null); \
             echo nets=$(ls /sys/class/net); echo err >&2; exit 3",
            500,
            64,
        ),
    );
    let attempt = running.attempt.clone();
    let result = running.task.await.unwrap();
    let text = node.output(&attempt);
    assert_eq!(result.outcome, AttemptOutcome::Failed, "{text}");
    assert_eq!(result.exit_code, Some(3), "{result:?}: {text}");
    assert!(text.contains("uid=65534"), "not root: {text}");
    assert!(text.contains("greeting=hello from the spec"), "{text}");
    assert!(text.contains("job=job-limits"), "{text}");
    assert!(
        text.contains(&format!("memory={}", 64 * 1024 * 1024)),
        "{text}"
    );
    assert!(text.contains("pids=1024"), "{text}");
    assert!(text.contains("quota=50000"), "half a core: {text}");
    assert!(
        text.contains("nets=lo\n"),
        "no network but loopback: {text}"
    );
    assert!(text.contains("err"), "stderr too: {text}");
    assert!(container_gone(&attempt));
}

#[tokio::test]
async fn a_container_over_its_memory_ends_oom_killed() {
    if skipped() {
        return;
    }
    let image = Image::build("oom");
    let node = node();
    let running = node.start(
        "oom",
        in_image(
            &image,
            "dd if=/dev/zero of=/dev/null bs=64M count=1",
            500,
            16,
        ),
    );
    let attempt = running.attempt.clone();
    let result = running.task.await.unwrap();
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    let reason = result.reason.unwrap_or_default();
    assert!(reason.starts_with("oom_killed"), "{reason}");
    assert!(container_gone(&attempt));
}

#[tokio::test]
async fn cancel_and_timeout_stop_the_container() {
    if skipped() {
        return;
    }
    let image = Image::build("stop");
    let node = node();
    let cancelled = node.start(
        "cancel",
        in_image(&image, "echo started; sleep 60", 100, 16),
    );
    let mut timed = in_image(&image, "sleep 60", 100, 16);
    timed.timeout_secs = 1;
    let timed = node.start("timeout", timed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.output(&cancelled.attempt).contains("started") {
        assert!(Instant::now() < deadline, "the container did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let began = Instant::now();
    cancelled.stop.send_replace(Some(StopReason::Cancelled));
    let result = cancelled.task.await.unwrap();
    assert_eq!(result.outcome, AttemptOutcome::Cancelled, "{result:?}");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert!(container_gone(&cancelled.attempt));

    let result = timed.task.await.unwrap();
    assert_eq!(result.outcome, AttemptOutcome::TimedOut, "{result:?}");
    assert!(container_gone(&timed.attempt));
}
