//! `kill -9` of a real `tanvrit server` during a stream of concurrent writes: after a
//! restart every acknowledged write is there, exactly once, and the ledger still adds up.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tanvrit_api::*;
use tanvrit_client::Client;
use tanvrit_testkit::process::ServerProcess;
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const WRITERS: usize = 8;

/// Acknowledged writes, recorded by the writers.
#[derive(Default)]
struct Acked {
    jobs: BTreeSet<JobId>,
    top_ups: BTreeSet<String>,
}

fn job_request(writer: usize, n: usize) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(BusinessId::from("acme")),
        spec: JobSpec {
            command: vec!["echo".into(), format!("{writer}-{n}")],
            ..JobSpec::default()
        },
        idempotency_key: Some(format!("w{writer}-{n}")),
    }
}

/// Writes until the server dies (first error), recording only what was acknowledged.
async fn writer(client: Client, writer: usize, acked: Arc<Mutex<Acked>>) -> usize {
    let mut n = 0;
    loop {
        // Alternate jobs and ledger entries so both tables are written when the kill lands.
        let result = if n % 2 == 0 {
            client
                .submit_job(job_request(writer, n))
                .await
                .map(|r| Ack::Job(r.job.id))
        } else {
            let key = format!("topup-w{writer}-{n}");
            client
                .create_credit_entry(CreditEntryCreateRequest {
                    business: "acme".into(),
                    kind: EntryKind::TopUp,
                    amount: 1,
                    idempotency_key: Some(key.clone()),
                    note: None,
                })
                .await
                .map(|_| Ack::TopUp(key))
        };
        match result {
            Ok(Ack::Job(id)) => {
                acked.lock().await.jobs.insert(id);
            }
            Ok(Ack::TopUp(key)) => {
                acked.lock().await.top_ups.insert(key);
            }
            Err(_) => return n,
        }
        n += 1;
        if n > 20_000 {
            return n;
        }
    }
}

enum Ack {
    Job(JobId),
    TopUp(String),
}

async fn check_everything_acked_is_there(client: &Client, acked: &Acked) {
    let mut found = BTreeSet::new();
    let mut after = None;
    loop {
        let page = client
            .list_jobs(JobListRequest {
                business: Some("acme".into()),
                limit: Some(1000),
                after: after.clone(),
                ..JobListRequest::default()
            })
            .await
            .expect("list jobs after restart");
        for job in &page.jobs {
            assert!(found.insert(job.id.clone()), "job {} listed twice", job.id);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let missing: Vec<_> = acked.jobs.difference(&found).collect();
    assert!(missing.is_empty(), "acknowledged jobs lost: {missing:?}");

    let entries = client
        .credit_entries(CreditEntriesRequest {
            business: Some("acme".into()),
            limit: Some(10_000),
            ..CreditEntriesRequest::default()
        })
        .await
        .expect("ledger after restart")
        .entries;
    let keys: BTreeSet<_> = entries.iter().map(|e| e.idempotency_key.clone()).collect();
    let lost: Vec<_> = acked.top_ups.difference(&keys).collect();
    assert!(
        lost.is_empty(),
        "acknowledged ledger entries lost: {lost:?}"
    );
    assert_eq!(
        keys.len(),
        entries.len(),
        "a ledger entry was written twice"
    );
    let sum: i64 = entries.iter().map(|e| e.amount).sum();
    let balance = client
        .credit_balance(CreditBalanceRequest {
            business: Some("acme".into()),
            ..CreditBalanceRequest::default()
        })
        .await
        .expect("balance after restart");
    assert_eq!(
        balance.available, sum,
        "balance is not the sum of the entries"
    );
}

/// Runs `rounds` of: writers stream writes, `kill -9` once `per_round` more jobs are
/// acknowledged, restart, check every acknowledged write is there exactly once.
async fn crash_and_recover(data_dir: &Path, rounds: usize, per_round: usize, env: &[(&str, &str)]) {
    std::fs::create_dir_all(data_dir).unwrap();
    let mut server = ServerProcess::start(Path::new(BIN), data_dir, env)
        .await
        .expect("server starts");
    // Jobs reserve the default resources, so the business must be able to pay for them.
    server.admin_with_credits("acme", 1_000_000_000_000).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..rounds {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                // No retries: an error means "not acknowledged", nothing else.
                let client = server.admin_client(0);
                tokio::spawn(writer(client, round * WRITERS + w, acked.clone()))
            })
            .collect();
        // Let the stream get going, then crash the server mid-write.
        let started = tokio::time::Instant::now();
        while acked.lock().await.jobs.len() < (round + 1) * per_round
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill9().await;
        let written: usize = futures::future::join_all(writers)
            .await
            .into_iter()
            .map(|r| r.expect("writer task"))
            .sum();
        assert!(
            written > 0,
            "round {round}: nothing was written before the kill"
        );
        {
            let acked = acked.lock().await;
            eprintln!(
                "round {round}: {written} writes acknowledged, {} jobs and {} ledger entries in all",
                acked.jobs.len(),
                acked.top_ups.len()
            );
        }
        server.restart().await.expect("server restarts");
        check_everything_acked_is_there(&server.admin_client(3), &*acked.lock().await).await;
    }
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    crash_and_recover(&dir.path().join("data"), 3, 100, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_across_snapshots_loses_nothing() {
    // A small snapshot interval makes the kills land around snapshot writes and log purges.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tanvrit.toml");
    std::fs::write(&config, "snapshot_every = 50\n").unwrap();
    let env = [("TANVRIT_CONFIG", config.to_str().unwrap())];
    crash_and_recover(&dir.path().join("data"), 2, 300, &env).await;
}
