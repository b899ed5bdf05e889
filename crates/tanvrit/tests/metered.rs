//! Usage metered from the kernel: a real `tanvrit server` billing on measured usage
//! (`TANVRIT_BILLING_BASIS=used`) and a real `tanvrit agent` under cgroup isolation. A job
//! that holds two cores but only sleeps is charged for the CPU it used, not the cores it
//! held, and its attempt and ledger entry show the measured figures; the hold at
//! submission is still the whole reservation.
//!
//! Needs root and usable cgroups, like the agent's isolation tests.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tanvrit_api::*;
use tanvrit_testkit::process::{AgentProcess, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const PATIENCE: Duration = Duration::from_secs(60);
const BUSINESS: &str = "acme";

#[tokio::test]
async fn on_the_used_basis_a_sleeping_job_pays_for_near_zero_cpu_and_the_ledger_shows_it() {
    // Jobs run as uids of their own: their work root must be reachable, outside /tmp.
    let parent = Path::new("/var/lib/tanvrit/test-work");
    std::fs::create_dir_all(parent).unwrap();
    let dir = tempfile::tempdir_in(parent).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServerProcess::start(
        Path::new(BIN),
        &dir.path().join("server"),
        &[
            ("TANVRIT_BILLING_BASIS", "used"),
            ("TANVRIT_RATE_CPU_SECOND", "1000"),
            ("TANVRIT_RATE_MEMORY_GB_SECOND", "1024"),
            ("TANVRIT_RATE_ATTEMPT_MINIMUM", "0"),
        ],
    )
    .await
    .expect("the server starts");
    let admin = server.admin_with_credits(BUSINESS, 1_000_000_000).await;
    let key = server.agent_key().await;
    let _agent = AgentProcess::start(
        Path::new(BIN),
        server.url(),
        &key,
        &dir.path().join("agent"),
        &["--name", "metered", "--backoff-max", "500ms"],
    )
    .await
    .expect("the agent starts with cgroup isolation (needs root and usable cgroups)");

    let job = admin
        .submit_job(JobSubmitRequest {
            business: Some(BusinessId::from(BUSINESS)),
            spec: JobSpec {
                command: vec!["sleep".into(), "3".into()],
                resources: Resources {
                    cpu_millis: 2000,
                    memory_mb: 64,
                    gpus: 0,
                },
                timeout_secs: 60,
                labels: [("tanvrit.isolation".to_string(), "cgroup".to_string())].into(),
                ..JobSpec::default()
            },
            idempotency_key: None,
        })
        .await
        .unwrap()
        .job;
    assert_eq!(job.rates.basis, BillingBasis::Used);
    // 2 cores x 60 s x 1000, and 64 MB x 60 s at 1024 a GB-second.
    assert_eq!(
        job.held,
        2 * 60 * 1000 + 64 * 60,
        "the hold is the whole reservation"
    );

    let deadline = Instant::now() + PATIENCE;
    let done = loop {
        let job = admin
            .get_job(&job.id, Consistency::Stale)
            .await
            .unwrap()
            .job;
        if job.state.is_terminal() {
            break job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let attempt = done.current_attempt().unwrap();
    let runtime = (attempt.finished_at.unwrap() - attempt.started_at.unwrap()) as u64;
    assert!(runtime >= 2_900, "it slept 3 s: {runtime} ms");
    let usage = attempt
        .usage
        .expect("the agent reports what the cgroup measured");
    let cpu_ms = usage.cpu_ms.expect("CPU time measured");
    assert!(cpu_ms < 300, "sleep uses next to no CPU: {cpu_ms} ms");
    assert!(usage.peak_memory_bytes.is_some_and(|b| b > 0), "{usage:?}");
    // Reserved, it would have been 2 cores x ~3 s x 1000 + 64 MB x ~3 s = ~6200.
    let reserved = runtime * 2 + 64 * runtime / 1000;
    assert!(
        (attempt.charged as u64) * 10 < reserved,
        "charged {} for {cpu_ms} ms of CPU (reserved would be {reserved})",
        attempt.charged
    );
    // 1 per CPU-millisecond, and 1 per MB (rounded up) held for a second, rounded up once.
    let peak_mb = usage.peak_memory_bytes.unwrap().div_ceil(1024 * 1024);
    let expected = (cpu_ms * 1000 + peak_mb * runtime).div_ceil(1000);
    assert_eq!(
        attempt.charged, expected as i64,
        "{usage:?} over {runtime} ms"
    );

    let entries = admin
        .credit_entries(CreditEntriesRequest {
            business: Some(BusinessId::from(BUSINESS)),
            ..CreditEntriesRequest::default()
        })
        .await
        .unwrap()
        .entries;
    let charge = entries
        .iter()
        .find(|e| e.kind == EntryKind::Charge && e.job.as_ref() == Some(&done.id))
        .expect("the attempt's charge is in the ledger");
    assert_eq!(charge.amount, -attempt.charged);
    let details = charge.charge.expect("the charge says how it was computed");
    assert_eq!(details.basis, BillingBasis::Used);
    assert_eq!(details.runtime_ms, runtime);
    assert_eq!(details.usage, Some(usage));
    let balance = admin
        .credit_balance(CreditBalanceRequest {
            business: Some(BusinessId::from(BUSINESS)),
            ..CreditBalanceRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(balance.held, 0, "the rest of the hold went back");
    assert_eq!(balance.available, 1_000_000_000 - attempt.charged);
}
