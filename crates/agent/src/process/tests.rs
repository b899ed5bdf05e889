//! Tests of [`super`]: real child processes, their output, exit classification, stops
//! and timeouts, without isolation (`crates/agent/tests/isolation.rs` has those with it).

use super::*;
use crate::spool::Next;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spool: Spool,
    notify: Notify,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (spool, _) = Spool::open(&root.join("spool"), 1 << 30).unwrap();
    Fixture {
        _dir: dir,
        root,
        spool,
        notify: Notify::new(),
    }
}

impl Fixture {
    fn run_spec(&self, spec: JobSpec) -> RunSpec {
        let attempt = AttemptId::from("att-1");
        self.spool.create(&JobId::from("job-1"), &attempt, 0);
        RunSpec {
            job: JobId::from("job-1"),
            scratch_dir: scratch_dir(&self.root.join("work"), &attempt),
            attempt,
            spec,
            stop_grace: Duration::from_millis(500),
            isolation: Arc::new(Isolation::none(self.root.join("work"))),
        }
    }

    /// Everything spooled so far, as the server would store it.
    fn output(&self) -> String {
        let attempt = AttemptId::from("att-1");
        let mut out = String::new();
        loop {
            match self.spool.next(&attempt, 1 << 20) {
                Next::Started(_) => self.spool.started_delivered(&attempt),
                Next::Chunk(chunk) => {
                    out.push_str(&chunk.data);
                    self.spool.acked(&attempt, &chunk, out.len() as u64);
                }
                _ => return out,
            }
        }
    }
}

fn shell(script: &str) -> JobSpec {
    JobSpec {
        shell: Some(script.into()),
        ..JobSpec::default()
    }
}

async fn run_to_end(f: &Fixture, spec: JobSpec) -> AttemptFinishedRequest {
    let run_spec = f.run_spec(spec);
    let (_tx, rx) = watch::channel(None);
    run(&run_spec, &f.spool, &f.notify, rx).await
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn stdout_and_stderr_arrive_interleaved_as_written_and_exit_zero_succeeds() {
    let f = fixture();
    let result = run_to_end(&f, shell("echo one; echo two >&2; echo three")).await;
    assert_eq!(result.outcome, AttemptOutcome::Succeeded);
    assert_eq!(result.exit_code, Some(0));
    assert!(result.finished_at.is_some());
    assert_eq!(f.output(), "one\ntwo\nthree\n");
    assert!(f.spool.is_finished(&AttemptId::from("att-1")));
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_its_code() {
    let f = fixture();
    let result = run_to_end(&f, shell("exit 3")).await;
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    assert_eq!(result.exit_code, Some(3));
}

#[tokio::test]
async fn death_by_a_signal_fails_and_names_it() {
    let f = fixture();
    let result = run_to_end(&f, shell("kill -9 $$")).await;
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    assert_eq!(result.exit_code, None);
    assert!(result.reason.unwrap().contains("SIGKILL"));
}

#[tokio::test]
async fn a_command_that_cannot_start_fails_without_starting() {
    let f = fixture();
    let result = run_to_end(
        &f,
        JobSpec {
            command: vec!["/nonexistent/program".into()],
            ..JobSpec::default()
        },
    )
    .await;
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    assert!(result.reason.unwrap().contains("cannot start"));
    match f.spool.next(&AttemptId::from("att-1"), 100) {
        Next::Finished(_) => {}
        other => panic!("no start should be reported, got {other:?}"),
    }
}

#[tokio::test]
async fn argv_env_and_the_scratch_directory_are_the_jobs() {
    let f = fixture();
    let spec = JobSpec {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$1 $FOO\"; env | grep ^TANVRIT_ | sort; pwd".into(),
            "sh".into(),
            "arg-one".into(),
        ],
        env: [("FOO".to_string(), "bar".to_string())].into(),
        ..JobSpec::default()
    };
    let result = run_to_end(&f, spec).await;
    assert_eq!(result.outcome, AttemptOutcome::Succeeded);
    let scratch = scratch_dir(&f.root.join("work"), &AttemptId::from("att-1"));
    assert_eq!(
        f.output(),
        format!(
            "arg-one bar\nTANVRIT_ATTEMPT_ID=att-1\nTANVRIT_CPU_MILLIS=1000\nTANVRIT_GPUS=0\n\
             TANVRIT_JOB_ID=job-1\nTANVRIT_MEMORY_MB=256\n{}\n",
            scratch.display()
        )
    );
    assert!(
        !scratch.exists(),
        "the scratch directory is removed at the end"
    );
}

#[tokio::test]
async fn the_timeout_stops_the_process_as_timed_out() {
    let f = fixture();
    let started = Instant::now();
    let result = run_to_end(
        &f,
        JobSpec {
            timeout_secs: 1,
            ..shell("sleep 30")
        },
    )
    .await;
    assert_eq!(result.outcome, AttemptOutcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_stop_terminates_the_whole_process_group() {
    let f = fixture();
    let run_spec = f.run_spec(shell("sleep 300 & echo $!; echo $$; wait"));
    let (tx, rx) = watch::channel(None);
    let runner = run(&run_spec, &f.spool, &f.notify, rx);
    tokio::pin!(runner);
    // Wait until both pids were printed.
    let mut text = String::new();
    while text.lines().count() < 2 {
        tokio::select! {
            _ = &mut runner => panic!("ended before it was stopped"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => text.push_str(&f.output()),
        }
    }
    let pids: Vec<i32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(pids.iter().all(|pid| alive(*pid)));
    tx.send(Some(StopReason::Cancelled)).unwrap();
    let result = runner.await;
    assert_eq!(result.outcome, AttemptOutcome::Cancelled);
    for pid in pids {
        // Reaped by now, or about to be (the background sleep's parent is gone).
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "pid {pid} survived the stop");
    }
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let f = fixture();
    let run_spec = f.run_spec(shell(
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    ));
    let (tx, rx) = watch::channel(None);
    let runner = run(&run_spec, &f.spool, &f.notify, rx);
    tokio::pin!(runner);
    let mut text = String::new();
    while !text.contains("ready") {
        tokio::select! {
            _ = &mut runner => panic!("ended before it was stopped"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => text.push_str(&f.output()),
        }
    }
    let stopped = Instant::now();
    tx.send(Some(StopReason::AgentStopped)).unwrap();
    let result = runner.await;
    assert!(
        stopped.elapsed() >= run_spec.stop_grace,
        "SIGKILL only after the grace"
    );
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    assert!(result.reason.unwrap().starts_with("agent stopped"));
}

/// Runs a job that ignores SIGTERM until it printed `ready`; returns its runner.
async fn wait_ready<'a>(
    f: &'a Fixture,
    run_spec: &'a RunSpec,
    rx: watch::Receiver<Option<StopReason>>,
) -> std::pin::Pin<Box<impl std::future::Future<Output = AttemptFinishedRequest> + 'a>> {
    let mut runner = Box::pin(run(run_spec, &f.spool, &f.notify, rx));
    let mut text = String::new();
    while !text.contains("ready") {
        tokio::select! {
            _ = &mut runner => panic!("ended before it was stopped"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => text.push_str(&f.output()),
        }
    }
    runner
}

const IGNORES_SIGTERM: &str = "trap '' TERM; echo ready; while :; do sleep 0.05; done";

#[tokio::test]
async fn a_lease_stop_kills_after_its_own_grace_and_reports_the_lease() {
    let f = fixture();
    let mut run_spec = f.run_spec(shell(IGNORES_SIGTERM));
    run_spec.stop_grace = Duration::from_secs(600);
    let (tx, rx) = watch::channel(None);
    let runner = wait_ready(&f, &run_spec, rx).await;
    let grace = Duration::from_millis(100);
    tx.send(Some(StopReason::LeaseExpired { grace })).unwrap();
    // Bounded far below the configured grace: only the lease's grace ends it in time.
    let result = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("killed after the lease's grace, not the configured 600 s");
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    assert_eq!(result.reason.as_deref(), Some(REASON_LEASE_EXPIRED));
}

#[tokio::test]
async fn a_lease_stop_cuts_short_the_grace_of_a_stop_already_under_way() {
    let f = fixture();
    let mut run_spec = f.run_spec(shell(IGNORES_SIGTERM));
    run_spec.stop_grace = Duration::from_secs(600);
    let (tx, rx) = watch::channel(None);
    let mut runner = wait_ready(&f, &run_spec, rx).await;
    tx.send(Some(StopReason::Cancelled)).unwrap();
    // The cancel's SIGTERM is ignored; the process runs on into its 600 s grace.
    let still_running = tokio::time::timeout(Duration::from_millis(300), &mut runner).await;
    assert!(still_running.is_err(), "ended before its grace");
    tx.send(Some(StopReason::LeaseExpired {
        grace: Duration::from_millis(100),
    }))
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("the lease's grace replaced the cancel's");
    assert_eq!(
        result.outcome,
        AttemptOutcome::Cancelled,
        "reported for the first cause"
    );
}
