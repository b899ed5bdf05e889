//! Exactly once under failover, on a 3-replica Raft cluster of real `tanvrit server`
//! processes on loopback (LAN timings: heartbeat 100 ms, election 250/400 ms):
//! - a schedule firing every second, through repeated `kill -9`s of the leader (every
//!   other one with a follower, for an outage without quorum), creates
//!   one job per tick (catch-up `all`: none missing; `skip`: gaps only where a skip was
//!   recorded), each with the id derived from (schedule, due time), the same on every
//!   replica;
//! - a job submit replayed with one `Idempotency-Key` through every replica while the
//!   leader is killed makes one job and every answer names it; the same key with another
//!   body is refused with 422.
//!
//! The tests run one at a time (a lock): two clusters at once on two cores would measure
//! the machine, not the cluster. Figures are printed (`--nocapture`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use tanvrit_api::{
    BusinessId, CatchUpPolicy, Consistency, Index, Job, JobId, JobListRequest, JobSpec,
    JobSubmitRequest, Millis, Resources, Schedule, ScheduleCreateRequest, ScheduleId,
    ScheduleUpdateRequest,
};
use tanvrit_client::{Client, ClientConfig, ClientError};
use tanvrit_server::cron::{fire_due_at, fire_job_id};
use tanvrit_testkit::process::{ProcessCluster, TEST_ADMIN_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const BUSINESS: &str = "acme";
/// Generous: the machine has two cores shared with other work.
const PATIENCE: Duration = Duration::from_secs(30);
/// Leader kills while the schedules fire.
const KILLS: usize = 5;
/// The schedules fire at least this long (30 ticks and more).
const MIN_FIRING: Duration = Duration::from_secs(33);
/// How long every other kill leaves the cluster without a quorum (several ticks).
const OUTAGE: Duration = Duration::from_millis(3500);
const SECOND: Millis = 1000;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client of one replica that does not retry: the tests choose where a retry goes.
fn single(url: &str) -> Client {
    Client::new(ClientConfig {
        endpoints: vec![url.to_string()],
        api_key: Some(TEST_ADMIN_KEY.to_string()),
        timeout: Duration::from_secs(5),
        max_retries: 0,
        read_your_writes: false,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// Whether a failed call may be sent again: a 503 (no leader, not caught up, or a write
/// of unknown outcome) or no answer on the wire. Safe for the writes here because each
/// is keyed or sets a value (repeating it changes nothing more).
fn retryable(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Api { status: 503, .. } | ClientError::Transport { .. }
    )
}

/// Calls `op` until it succeeds, retrying only [`retryable`] failures (for `PATIENCE`).
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) if retryable(&err) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

/// Starts a cluster, waits for a leader and tops the business up.
async fn start_cluster(root: &Path) -> ProcessCluster {
    ProcessCluster::start_funded(Path::new(BIN), root, 3, BUSINESS, PATIENCE).await
}

async fn stop_cluster(cluster: &mut ProcessCluster) {
    for i in 0..cluster.len() {
        cluster.replica_mut(i).terminate().await;
    }
}

// ---- schedules ---------------------------------------------------------------------

fn every_second(catch_up: CatchUpPolicy) -> ScheduleCreateRequest {
    ScheduleCreateRequest {
        business: Some(BusinessId::from(BUSINESS)),
        name: Some(format!("every second, catch-up {catch_up:?}")),
        cron: "* * * * * *".into(),
        timezone: Some("UTC".into()),
        template: JobSpec {
            command: vec!["true".into()],
            resources: Resources {
                cpu_millis: 10,
                memory_mb: 1,
                gpus: 0,
            },
            ..JobSpec::default()
        },
        enabled: None,
        overlap: None,
        catch_up: Some(catch_up),
    }
}

/// The schedule as the cluster's leader confirms it (any replica answers).
async fn schedule_now(urls: &[String], id: &ScheduleId) -> Schedule {
    let mut at = 0;
    until_ok("reading the schedule", || {
        at += 1;
        let client = single(&urls[at % urls.len()]);
        let id = id.clone();
        async move { client.get_schedule(&id, Consistency::Strict).await }
    })
    .await
    .schedule
    .schedule
}

/// Waits until `id` has fired `count` jobs in all.
async fn until_fired(urls: &[String], id: &ScheduleId, count: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let fired = schedule_now(urls, id).await.fired;
        if fired >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{id} fired {fired}, not {count}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job of the business on replica `url`, read at `consistency`, oldest first.
async fn all_jobs(url: &str, consistency: Consistency) -> Vec<Job> {
    let client = single(url);
    let mut jobs = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list_jobs(JobListRequest {
                consistency,
                business: Some(BUSINESS.into()),
                limit: Some(1000),
                after: after.clone(),
                ..JobListRequest::default()
            })
            .await
            .unwrap_or_else(|e| panic!("listing jobs on {url}: {e}"));
        jobs.extend(page.jobs);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    jobs.reverse();
    jobs
}

/// The due times of the jobs `schedule` fired, ascending, after checking each job: its
/// id is the one derived from (schedule, due time), the due time is a whole second after
/// the schedule's creation, the job was created at or after it, and no due time has two
/// jobs.
fn fired_due_times(replica: usize, schedule: &Schedule, jobs: &[Job]) -> Vec<Millis> {
    let mut dues: BTreeMap<Millis, Vec<&JobId>> = BTreeMap::new();
    for job in jobs
        .iter()
        .filter(|j| j.schedule.as_ref() == Some(&schedule.id))
    {
        let due = fire_due_at(&job.id)
            .unwrap_or_else(|| panic!("replica {replica}: {} is not a fire's id", job.id));
        assert_eq!(
            job.id,
            fire_job_id(&schedule.id, due),
            "replica {replica}: the id of the fire at {due} is not derived from it"
        );
        assert_eq!(
            due % SECOND,
            0,
            "replica {replica}: {} not on a second",
            job.id
        );
        assert!(
            due > schedule.created_at,
            "replica {replica}: fired before creation"
        );
        assert!(
            job.created_at >= due,
            "replica {replica}: {} created early",
            job.id
        );
        dues.entry(due).or_default().push(&job.id);
    }
    let twice: Vec<_> = dues.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "replica {replica}: ticks fired twice: {twice:?}"
    );
    dues.into_keys().collect()
}

/// The seconds after the schedule's creation up to `last` that have no fire, as runs of
/// consecutive seconds (first, length).
fn missing_runs(schedule: &Schedule, dues: &[Millis], last: Millis) -> Vec<(Millis, u64)> {
    let first = schedule.created_at.div_euclid(SECOND) * SECOND + SECOND;
    let mut runs = Vec::new();
    let mut expected = first;
    for &due in dues.iter().chain(std::iter::once(&(last + SECOND))) {
        if due > expected {
            runs.push((expected, ((due - expected) / SECOND) as u64));
        }
        expected = due + SECOND;
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_fires_each_tick_once_across_leader_kills() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await;
    let urls = cluster.urls();
    let admin = cluster.admin_client(10);
    // `all` with a limit far above any outage here: every tick must fire. `skip`: a tick
    // a new leader reaches late is skipped (and recorded), never fired twice.
    // Keyed: a creation of unknown outcome, repeated, must not make a second schedule.
    let (create_all, create_skip) = (
        admin.with_idempotency_key("create-all"),
        admin.with_idempotency_key("create-skip"),
    );
    let all = until_ok("creating a schedule", || {
        create_all.create_schedule(every_second(CatchUpPolicy::All(1000)))
    })
    .await
    .schedule
    .schedule;
    let skip = until_ok("creating a schedule", || {
        create_skip.create_schedule(every_second(CatchUpPolicy::Skip))
    })
    .await
    .schedule
    .schedule;
    let firing_since = Instant::now();

    let mut kills = Vec::new();
    loop {
        let leader = cluster.leader(PATIENCE).await.expect("a leader");
        // This leader fires: two more ticks under it.
        let fired = schedule_now(&urls, &all.id).await.fired;
        until_fired(&urls, &all.id, fired + 2).await;
        if kills.len() >= KILLS {
            if firing_since.elapsed() >= MIN_FIRING {
                break;
            }
            continue;
        }
        cluster.replica_mut(leader).kill9().await;
        let killed_at = Instant::now();
        // Every other round a follower dies with the leader: no quorum, so no tick can
        // fire until it is back, and the next leader has missed ticks to catch up on.
        let follower = (leader + 1) % cluster.len();
        if kills.len() % 2 == 1 {
            cluster.replica_mut(follower).kill9().await;
            // The outage's length, not a wait for something to happen.
            tokio::time::sleep(OUTAGE).await;
            cluster
                .replica_mut(follower)
                .restart()
                .await
                .expect("the killed follower restarts");
        }
        let elected = cluster.leader(PATIENCE).await.expect("a new leader");
        assert_ne!(elected, leader);
        kills.push((leader, killed_at.elapsed()));
        cluster
            .replica_mut(leader)
            .restart()
            .await
            .expect("the killed leader restarts");
    }

    // Stop firing; read everything at (at least) the index of the last disable.
    let mut last_write: Index = 0;
    for id in [&all.id, &skip.id] {
        let disabled = until_ok("disabling a schedule", || {
            admin.update_schedule(
                id,
                ScheduleUpdateRequest {
                    enabled: Some(false),
                    ..ScheduleUpdateRequest::default()
                },
            )
        })
        .await;
        last_write = last_write.max(disabled.index);
    }
    let read_at = Consistency::MinIndex(last_write);
    let mut seen: Option<(Vec<Millis>, Vec<Millis>)> = None;
    for (replica, url) in urls.iter().enumerate() {
        let client = single(url);
        let all_now = client.get_schedule(&all.id, read_at).await.unwrap();
        let skip_now = client.get_schedule(&skip.id, read_at).await.unwrap();
        let (all_now, skip_now) = (all_now.schedule.schedule, skip_now.schedule.schedule);
        let jobs = all_jobs(url, read_at).await;

        // catch-up `all`: every second from creation to the last fire, once.
        let all_dues = fired_due_times(replica, &all_now, &jobs);
        let last = *all_dues.last().expect("fires");
        assert_eq!(
            missing_runs(&all_now, &all_dues, last),
            vec![],
            "replica {replica}: ticks missing under catch-up `all`"
        );
        assert!(
            last - all_dues[0] >= 30 * SECOND,
            "replica {replica}: only {} ticks",
            all_dues.len()
        );
        assert_eq!(all_now.fired, all_dues.len() as u64, "replica {replica}");
        // The outages left ticks to catch up on: fired a second or more after their time.
        let caught_up = jobs
            .iter()
            .filter(|j| j.schedule.as_ref() == Some(&all.id))
            .filter(|j| fire_due_at(&j.id).is_some_and(|due| j.created_at - due >= SECOND))
            .count();
        assert!(caught_up > 0, "replica {replica}: no tick was caught up on");
        // A skip only for ticks whose fire met the disable: the ones after the last job.
        let after_last = all_now.last_fire_at.expect("fired") - last;
        assert_eq!(
            all_now.skipped as i64,
            after_last / SECOND,
            "replica {replica}: skips under catch-up `all`"
        );

        // catch-up `skip`: each gap in the fires is recorded by at least one skip.
        let skip_dues = fired_due_times(replica, &skip_now, &jobs);
        let skip_last = skip_now.last_fire_at.expect("fired");
        let gaps = missing_runs(&skip_now, &skip_dues, skip_last);
        assert_eq!(skip_now.fired, skip_dues.len() as u64, "replica {replica}");
        assert!(
            gaps.len() as u64 <= skip_now.skipped,
            "replica {replica}: gaps {gaps:?} but {} skips recorded",
            skip_now.skipped
        );
        assert!(
            !gaps.is_empty(),
            "replica {replica}: `skip` skipped nothing"
        );
        assert!(
            skip_dues.len() >= 20,
            "replica {replica}: `skip` fired only {} times",
            skip_dues.len()
        );
        eprintln!(
            "replica-{}: catch-up all fired {} ticks ({caught_up} caught up late, {} \
             skipped after the disable); catch-up skip fired {}, skipped {} in {} gaps \
             {gaps:?}",
            replica + 1,
            all_dues.len(),
            all_now.skipped,
            skip_dues.len(),
            skip_now.skipped,
            gaps.len()
        );
        // Every replica holds the same fires.
        match &seen {
            None => seen = Some((all_dues, skip_dues)),
            Some(first) => assert_eq!(first, &(all_dues, skip_dues), "replica {replica}"),
        }
    }
    eprintln!(
        "{} leader kills (replica, time to a new leader): {kills:?}",
        kills.len()
    );
    stop_cluster(&mut cluster).await;
}

// ---- idempotent submits ------------------------------------------------------------

fn echo(word: &str) -> JobSubmitRequest {
    JobSubmitRequest {
        business: Some(BusinessId::from(BUSINESS)),
        spec: JobSpec {
            command: vec!["echo".into(), word.into()],
            ..JobSpec::default()
        },
        // No body key: the `Idempotency-Key` header alone must deduplicate.
        idempotency_key: None,
    }
}

/// Sends the submit with `key` to replica `url` until it is answered (503s and transport
/// failures retried on the same replica); the job id it names and the write's index.
async fn replay(url: String, key: String, request: JobSubmitRequest) -> (JobId, Index) {
    let client = single(&url).with_idempotency_key(key);
    let response = until_ok("a replayed submit", || client.submit_job(request.clone())).await;
    (response.job.id, response.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_submit_replayed_through_every_replica_across_a_leader_kill_makes_one_job() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_cluster(dir.path()).await;
    let urls = cluster.urls();
    let mut last_write: Index = 0;
    let mut answered: Vec<(String, JobId)> = Vec::new();
    for round in 0..3u64 {
        let key = format!("replay-{round}");
        let word = format!("round-{round}");
        let a = cluster.leader(PATIENCE).await.expect("a leader");
        // Round 0: replica A answers before it dies. Later rounds: A is killed with the
        // request in flight, so its answer may never come, or the write never commit.
        let mut first = Some(tokio::spawn(replay(
            urls[a].clone(),
            key.clone(),
            echo(&word),
        )));
        let mut ids = Vec::new();
        if round == 0 {
            ids.push(first.take().unwrap().await.unwrap());
        } else {
            // Only picks the moment of the kill; nothing waits on it to be correct.
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
        }
        cluster.replica_mut(a).kill9().await;
        // B and C replay while the survivors elect a leader.
        let others: Vec<_> = (0..urls.len())
            .filter(|i| *i != a)
            .map(|i| tokio::spawn(replay(urls[i].clone(), key.clone(), echo(&word))))
            .collect();
        for other in others {
            ids.push(other.await.unwrap());
        }
        // A comes back: the request cut short there is answered (it kept retrying), and
        // A is asked once more.
        cluster.replica_mut(a).restart().await.expect("restart");
        if let Some(first) = first {
            ids.push(first.await.unwrap());
        }
        ids.push(replay(urls[a].clone(), key.clone(), echo(&word)).await);
        let job = ids[0].0.clone();
        for (id, index) in &ids {
            assert_eq!(
                id, &job,
                "round {round}: answers name different jobs: {ids:?}"
            );
            last_write = last_write.max(*index);
        }
        eprintln!(
            "round {round}: leader replica-{} killed; {} answers, all naming {job}",
            a + 1,
            ids.len()
        );
        answered.push((word, job));

        // The same key with another body is refused, on any replica.
        let b = (a + 1) % urls.len();
        let conflicting = single(&urls[b]).with_idempotency_key(key.clone());
        let deadline = Instant::now() + PATIENCE;
        let refused = loop {
            match conflicting.submit_job(echo("something else")).await {
                Err(err) if retryable(&err) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        match refused {
            Err(ClientError::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (422, "idempotency_conflict"));
            }
            other => panic!("round {round}: another body with the same key: {other:?}"),
        }
    }

    // Exactly one job per round on every replica: the one every answer named.
    for (replica, url) in urls.iter().enumerate() {
        let jobs = all_jobs(url, Consistency::MinIndex(last_write)).await;
        for (word, job) in &answered {
            let made: Vec<&JobId> = jobs
                .iter()
                .filter(|j| j.spec.command.get(1) == Some(word))
                .map(|j| &j.id)
                .collect();
            assert_eq!(made, vec![job], "replica {replica}: jobs for {word}");
        }
        assert!(
            !jobs
                .iter()
                .any(|j| j.spec.command.get(1).map(String::as_str) == Some("something else")),
            "replica {replica}: a refused submit made a job"
        );
    }
    stop_cluster(&mut cluster).await;
}
