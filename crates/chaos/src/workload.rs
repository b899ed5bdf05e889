//! The recorded workload: concurrent clients against the cluster's public API, every
//! logical operation recorded with when it was invoked and when it completed.
//!
//! - Writers submit jobs, each with an idempotency key of its own, retried with that
//!   key (on any replica) until acknowledged, refused (4xx: a definite failure) or the
//!   run ends: definite if no attempt can have applied anything (each was refused, met
//!   a refused connection or a 503 `no_leader`), else indeterminate. Now and then a writer cancels one of its parked jobs
//!   (with an `Idempotency-Key`) or reads its own writes back (`min_index` of its last
//!   acknowledged index, on a random replica).
//! - One reader per replica, pinned to it, reads the whole job set in turn `strict`,
//!   `min_index` (the highest index acknowledged to anyone so far) and `stale`.
//!
//! A quarter of the jobs are runnable (placed on the agents; the process appends a
//! start and an end line to the run log); the rest are parked (a label no node has), so
//! the set grows without loading the agents, and they are what cancels hit.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tanvrit_api::{
    BusinessId, Consistency, Index, JobActionRequest, JobId, JobListRequest, JobSpec,
    JobSubmitRequest, Resources,
};
use tanvrit_client::{Client, ClientConfig, ClientError};
use tokio::sync::watch;

use crate::history::{Event, FailedRequest, History, Micros, Op, Outcome, ReadLevel};

/// The business every workload job is billed to.
pub const BUSINESS: &str = "chaos";
/// The label runnable jobs carry (the agents offer it).
pub const POOL_LABEL: (&str, &str) = ("pool", "chaos");

/// How hard the workload pushes.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Replica names and base URLs.
    pub replicas: Vec<(String, String)>,
    /// The admin key.
    pub api_key: String,
    /// Concurrent writers.
    pub writers: u32,
    /// Pause between a writer's operations.
    pub write_pause: Duration,
    /// Pause between a reader's reads.
    pub read_pause: Duration,
    /// One job in this many is runnable.
    pub runnable_every: u32,
    /// How long a runnable job's process runs.
    pub job_secs: f64,
    /// The file runnable jobs append their start and end lines to.
    pub run_log: PathBuf,
    /// Per-request HTTP timeout.
    pub request_timeout: Duration,
}

/// The shared clock and the events recorded so far.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    failed: Arc<Mutex<Vec<FailedRequest>>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
            failed: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Microseconds since the recorder started.
    pub fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// The instant `micros` after the start.
    pub fn instant(&self, micros: Micros) -> Instant {
        self.start + Duration::from_micros(micros)
    }

    fn record(&self, event: Event) {
        self.events.lock().push(event);
    }

    /// One request of `client`'s operation `op` failed (it may be retried).
    fn failed_request(&self, client: u32, op: &str, err: &ClientError) {
        let failed = FailedRequest {
            client,
            op: op.to_string(),
            at: self.now(),
            status: err.status(),
            code: err.code().to_string(),
        };
        self.failed.lock().push(failed);
    }

    /// Everything recorded.
    pub fn history(&self) -> History {
        History {
            events: self.events.lock().clone(),
            failed_requests: self.failed.lock().clone(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a failed call certainly changed nothing and is final: the server refused it
/// (4xx). Retrying stops here.
pub fn is_definite(err: &ClientError) -> bool {
    matches!(err.status(), Some(status) if (400..500).contains(&status) && status != 408 && status != 429)
}

/// Whether one failed attempt of a write certainly applied nothing, though a repeat may
/// succeed: a refusal, a connection that was refused (the request never left), or a
/// 503 `no_leader` (the server never proposed it). Not a 503 `write_outcome_unknown`
/// (proposed, may still commit), another 503, a 5xx or a lost answer.
pub fn applied_nothing(err: &ClientError) -> bool {
    is_definite(err)
        || matches!(err, ClientError::Transport { not_sent: true, .. })
        || matches!(err, ClientError::Api { status: 503, code, .. } if code == "no_leader")
}

/// How a persisted operation failed: its last error, and whether every attempt of it
/// applied nothing (then the operation certainly did not happen).
#[derive(Debug)]
struct Failure {
    err: ClientError,
    definite: bool,
}

fn client(endpoints: Vec<String>, key: &str, timeout: Duration) -> Client {
    Client::new(ClientConfig {
        endpoints,
        api_key: Some(key.to_string()),
        timeout,
        // The workload retries by hand so each logical operation is one event.
        max_retries: 0,
        read_your_writes: false,
        ..ClientConfig::default()
    })
    .expect("workload client config is valid")
}

/// A shell function `now`: nanoseconds since the epoch. GNU `date` has `%N`; busybox's
/// (the container image's only `date`) prints it literally, and there `adjtimex` reads
/// the clock in microseconds. Containers share the machine's clock, so the agents' runs
/// stay comparable across backends.
const NOW_NS: &str = "now() { t=$(date +%s%N); case $t in *N) adjtimex | \
    awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf \"%d%06d000\\n\", s, u}';; \
    *) echo $t;; esac; };";

fn job_spec(config: &WorkloadConfig, runnable: bool) -> JobSpec {
    let mut spec = JobSpec {
        resources: Resources {
            cpu_millis: 50,
            memory_mb: 8,
            gpus: 0,
        },
        timeout_secs: 60,
        max_retries: 5,
        ..JobSpec::default()
    };
    if runnable {
        let log = config.run_log.display();
        // The end line is written by a watcher outside the job's process group (`setsid`,
        // so a stop's SIGTERM or SIGKILL to the group does not reach it) once the pipe
        // from the job's processes reaches EOF, i.e. once the last of them is gone: every
        // run records its end, even a SIGKILLed one, and never before it really ended
        // (an end recorded late only makes the checker stricter). The start line waits
        // for the watcher's word through a FIFO, sent once it is out of the group, so no
        // run records a start whose end nobody is left to record (a group killed sooner
        // records nothing, or a lone end line, which the parser ignores). Both shells get the
        // clock function from the environment: busybox `date` (in the container image) has
        // no `%N`, and the agent deletes the run's directory once its process is gone, so
        // the watcher must not need a file there.
        spec.shell = Some(format!(
            "NOWFN=$(cat <<'NOW'\n{NOW_NS}\nNOW\n); export NOWFN; eval \"$NOWFN\"; \
             mkfifo ready && \
             {{ read _ < ready; \
             echo start $TANVRIT_JOB_ID $TANVRIT_ATTEMPT_ID $(now) >> {log}; \
             sleep {}; }} | setsid sh -c 'eval \"$NOWFN\"; exec 3<> ready; echo >&3; \
             cat > /dev/null; echo end $TANVRIT_JOB_ID $TANVRIT_ATTEMPT_ID $(now) >> {log}' \
             > /dev/null 2>&1",
            config.job_secs
        ));
        spec.labels
            .insert(POOL_LABEL.0.to_string(), POOL_LABEL.1.to_string());
    } else {
        spec.command = vec!["true".into()];
        spec.labels.insert("pool".into(), "parked".into());
    }
    spec
}

/// Runs the workload until `stop` turns true; operations still retrying then get
/// `grace` to finish before they are recorded as indeterminate.
pub async fn run(
    config: WorkloadConfig,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let max_acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 0..config.writers {
        tasks.push(tokio::spawn(write_loop(
            writer,
            config.clone(),
            recorder.clone(),
            stop.clone(),
            grace,
            max_acked.clone(),
        )));
    }
    for (i, (name, url)) in config.replicas.iter().enumerate() {
        tasks.push(tokio::spawn(read_loop(
            100 + i as u32,
            name.clone(),
            url.clone(),
            config.clone(),
            recorder.clone(),
            stop.clone(),
            max_acked.clone(),
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One single-endpoint client per replica, tried in turn: after any failure the next
/// attempt goes to the next replica.
struct Rotation {
    clients: Vec<Client>,
    next: usize,
}

impl Rotation {
    fn new(config: &WorkloadConfig, first: usize) -> Self {
        Rotation {
            clients: config
                .replicas
                .iter()
                .map(|(_, url)| client(vec![url.clone()], &config.api_key, config.request_timeout))
                .collect(),
            next: first,
        }
    }

    fn current(&self) -> &Client {
        &self.clients[self.next % self.clients.len()]
    }

    fn advance(&mut self) {
        self.next = (self.next + 1) % self.clients.len();
    }
}

/// Retries `call` (on the next replica each time) until it succeeds, fails definitely,
/// or the run is over and `grace` has passed. Each failed request is recorded as
/// `client`'s operation `op`.
async fn persist<T, F, Fut>(
    rotation: &mut Rotation,
    give_up: &watch::Receiver<bool>,
    grace: Duration,
    (recorder, client, op): (&Recorder, u32, &str),
    mut call: F,
) -> Result<T, Failure>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut stopped_at: Option<Instant> = None;
    // One attempt that may have been applied makes the whole operation indeterminate,
    // whatever the later attempts answer (a `no_leader` says nothing of an earlier try).
    let mut all_applied_nothing = true;
    loop {
        let answer = call(rotation.current().clone()).await;
        if let Err(err) = &answer {
            recorder.failed_request(client, op, err);
        }
        let err = match answer {
            Ok(value) => return Ok(value),
            // A refusal is final, and definite even after attempts of unknown outcome:
            // had one of them taken effect, the key would have replayed its answer.
            Err(err) if is_definite(&err) => {
                return Err(Failure {
                    err,
                    definite: true,
                })
            }
            Err(err) => err,
        };
        all_applied_nothing &= applied_nothing(&err);
        rotation.advance();
        if *give_up.borrow() {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                return Err(Failure {
                    err,
                    definite: all_applied_nothing,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fail(failure: &Failure) -> Outcome {
    Outcome::Failed {
        definite: failure.definite,
        code: failure.err.code().to_string(),
    }
}

async fn write_loop(
    writer: u32,
    config: WorkloadConfig,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
    grace: Duration,
    max_acked: Arc<AtomicU64>,
) {
    let mut rotation = Rotation::new(&config, writer as usize);
    let mut parked: Vec<(String, JobId)> = Vec::new();
    let mut last_index: Index = 0;
    let mut n: u64 = 0;
    while !*stop.borrow() {
        n += 1;
        let roll: u32 = rand::rng().random_range(0..100);
        if roll < 8 && !parked.is_empty() {
            let pick = rand::rng().random_range(0..parked.len());
            let (key, job) = parked.swap_remove(pick);
            cancel(writer, &mut rotation, &key, &job, &recorder, &stop, grace).await;
        } else if roll < 20 && last_index > 0 {
            let (name, url) = &config.replicas[rand::rng().random_range(0..config.replicas.len())];
            let reader = client(vec![url.clone()], &config.api_key, config.request_timeout);
            read_set(
                writer,
                name,
                &reader,
                ReadLevel::MinIndex(last_index),
                &recorder,
            )
            .await;
        } else {
            let key = format!("w{writer}-{n}");
            let runnable = n.checked_rem(u64::from(config.runnable_every.max(1))) == Some(0);
            let request = JobSubmitRequest {
                business: Some(BusinessId::from(BUSINESS)),
                spec: job_spec(&config, runnable),
                idempotency_key: Some(key.clone()),
            };
            let invoked = recorder.now();
            let result = persist(
                &mut rotation,
                &stop,
                grace,
                (&recorder, writer, "submit"),
                |api| {
                    let request = request.clone();
                    async move { api.submit_job(request).await }
                },
            )
            .await;
            let outcome = match &result {
                Ok(response) => {
                    last_index = last_index.max(response.index);
                    max_acked.fetch_max(response.index, Ordering::Relaxed);
                    if !runnable {
                        parked.push((key.clone(), response.job.id.clone()));
                    }
                    Outcome::Submitted {
                        job: response.job.id.to_string(),
                        index: response.index,
                    }
                }
                Err(err) => fail(err),
            };
            recorder.record(Event {
                client: writer,
                op: Op::Submit { key },
                invoked,
                completed: recorder.now(),
                outcome,
            });
        }
        tokio::time::sleep(config.write_pause).await;
    }
}

async fn cancel(
    writer: u32,
    rotation: &mut Rotation,
    key: &str,
    job: &JobId,
    recorder: &Recorder,
    stop: &watch::Receiver<bool>,
    grace: Duration,
) {
    let idempotency_key = format!("cancel-{key}");
    let invoked = recorder.now();
    let result = persist(rotation, stop, grace, (recorder, writer, "cancel"), |api| {
        let handle = api.with_idempotency_key(idempotency_key.clone());
        let job = job.clone();
        async move {
            handle
                .cancel_job(
                    &job,
                    JobActionRequest {
                        reason: Some("chaos".into()),
                    },
                )
                .await
        }
    })
    .await;
    recorder.record(Event {
        client: writer,
        op: Op::Cancel {
            key: key.to_string(),
            job: job.to_string(),
        },
        invoked,
        completed: recorder.now(),
        outcome: match &result {
            Ok(response) => Outcome::Cancelled {
                index: response.index,
            },
            Err(err) => fail(err),
        },
    });
}

/// Reads every job of the business from one replica at `level`, page by page (each
/// page at the same level, so each page alone satisfies it; jobs only ever join the
/// set, so the union of the pages does too). One attempt: a failed read is recorded
/// and not retried.
async fn read_set(
    client_id: u32,
    replica: &str,
    api: &Client,
    level: ReadLevel,
    recorder: &Recorder,
) {
    let consistency = match level {
        ReadLevel::Stale => Consistency::Stale,
        ReadLevel::MinIndex(i) => Consistency::MinIndex(i),
        ReadLevel::Strict => Consistency::Strict,
    };
    let invoked = recorder.now();
    let mut keys = BTreeSet::new();
    let mut index: Index = 0;
    let mut after: Option<JobId> = None;
    let outcome = loop {
        let page = api
            .list_jobs(JobListRequest {
                consistency,
                business: Some(BusinessId::from(BUSINESS)),
                limit: Some(1000),
                after: after.clone(),
                ..JobListRequest::default()
            })
            .await;
        match page {
            Ok(page) => {
                // The first page's index is the one the whole read is at least at.
                if index == 0 {
                    index = page.index;
                }
                keys.extend(page.jobs.iter().filter_map(|j| j.idempotency_key.clone()));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break Outcome::Read { keys, index },
                }
            }
            // A read changes nothing: definite or not does not matter to the checker.
            Err(err) => {
                recorder.failed_request(client_id, "read", &err);
                break Outcome::Failed {
                    definite: is_definite(&err),
                    code: err.code().to_string(),
                };
            }
        }
    };
    recorder.record(Event {
        client: client_id,
        op: Op::Read {
            level,
            replica: replica.to_string(),
        },
        invoked,
        completed: recorder.now(),
        outcome,
    });
}

async fn read_loop(
    client_id: u32,
    replica: String,
    url: String,
    config: WorkloadConfig,
    recorder: Recorder,
    stop: watch::Receiver<bool>,
    max_acked: Arc<AtomicU64>,
) {
    let api = client(vec![url], &config.api_key, config.request_timeout);
    let mut turn: u64 = 0;
    while !*stop.borrow() {
        turn += 1;
        let level = match turn % 3 {
            0 => ReadLevel::Strict,
            1 => match max_acked.load(Ordering::Relaxed) {
                0 => ReadLevel::Stale,
                index => ReadLevel::MinIndex(index),
            },
            _ => ReadLevel::Stale,
        };
        read_set(client_id, &replica, &api, level, &recorder).await;
        tokio::time::sleep(config.read_pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `now` in `shell` with `path` as its PATH; what it printed.
    fn now_with(shell: &str, path: &str) -> String {
        let out = std::process::Command::new(shell)
            .args(["-c", &format!("{NOW_NS} now")])
            .env("PATH", path)
            .output()
            .expect("the shell runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn is_epoch_ns(text: &str) -> bool {
        text.len() >= 19 && text.bytes().all(|b| b.is_ascii_digit())
    }

    #[test]
    fn job_clock_prints_epoch_nanoseconds_with_gnu_date_and_with_busybox() {
        let gnu = now_with("sh", &std::env::var("PATH").unwrap_or_default());
        assert!(is_epoch_ns(&gnu), "{gnu:?}");
        // The image has only busybox: its `date` has no %N, so `now` must fall back.
        let busybox = std::path::Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("no /bin/busybox: the image's clock is not checked here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("chaos-now-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for applet in ["sh", "date", "adjtimex", "awk"] {
            let _ = std::os::unix::fs::symlink(busybox, dir.join(applet));
        }
        let shell = dir.join("sh").display().to_string();
        let from_busybox = now_with(&shell, &dir.display().to_string());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(is_epoch_ns(&from_busybox), "{from_busybox:?}");
        let (a, b): (u128, u128) = (gnu.parse().unwrap(), from_busybox.parse().unwrap());
        assert!(b >= a, "one clock: {a} then {b}");
    }

    #[test]
    fn only_refusals_are_definite_failures() {
        let api = |status: u16| ClientError::Api {
            status,
            code: "x".into(),
            message: String::new(),
            retry_after: None,
            leader: None,
        };
        assert!(is_definite(&api(402)));
        assert!(is_definite(&api(409)));
        assert!(!is_definite(&api(503)));
        assert!(!is_definite(&api(500)));
        assert!(!is_definite(&ClientError::Transport {
            endpoint: "http://x".into(),
            message: "reset".into(),
            not_sent: false,
            timed_out: true,
        }));
    }

    #[test]
    fn no_leader_and_a_refused_connection_applied_nothing_but_an_unknown_outcome_may_have() {
        let api = |status: u16, code: &str| ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: None,
            leader: None,
        };
        let transport = |not_sent: bool| ClientError::Transport {
            endpoint: "http://x".into(),
            message: "x".into(),
            not_sent,
            timed_out: false,
        };
        assert!(applied_nothing(&api(503, "no_leader")));
        assert!(applied_nothing(&api(409, "illegal_transition")));
        assert!(applied_nothing(&transport(true)));
        assert!(!applied_nothing(&api(503, "write_outcome_unknown")));
        assert!(!applied_nothing(&api(503, "shutting_down")));
        assert!(!applied_nothing(&api(503, "unavailable")));
        assert!(!applied_nothing(&api(500, "internal")));
        assert!(!applied_nothing(&transport(false)));
    }

    /// Runs `persist` with the run already over: `first` answers in turn, then `rest`
    /// until `grace` has passed.
    async fn persisted(first: Vec<ClientError>, rest: ClientError, grace: Duration) -> Failure {
        let config = WorkloadConfig {
            replicas: vec![("r1".into(), "http://127.0.0.1:9".into())],
            api_key: "k".into(),
            writers: 1,
            write_pause: Duration::ZERO,
            read_pause: Duration::ZERO,
            runnable_every: 1,
            job_secs: 0.0,
            run_log: PathBuf::new(),
            request_timeout: Duration::from_secs(1),
        };
        let mut rotation = Rotation::new(&config, 0);
        let (_stop, give_up) = watch::channel(true);
        let answers = Mutex::new(first.into_iter());
        let recorder = Recorder::new();
        persist(
            &mut rotation,
            &give_up,
            grace,
            (&recorder, 0, "submit"),
            |_| {
                let next = answers.lock().next().unwrap_or_else(|| rest.clone());
                async move { Err::<(), _>(next) }
            },
        )
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn every_failed_request_is_recorded_even_when_a_retry_succeeds() {
        let config = WorkloadConfig {
            replicas: vec![("r1".into(), "http://127.0.0.1:9".into())],
            api_key: "k".into(),
            writers: 1,
            write_pause: Duration::ZERO,
            read_pause: Duration::ZERO,
            runnable_every: 1,
            job_secs: 0.0,
            run_log: PathBuf::new(),
            request_timeout: Duration::from_secs(1),
        };
        let mut rotation = Rotation::new(&config, 0);
        let (_stop, give_up) = watch::channel(false);
        let recorder = Recorder::new();
        let mut answers = vec![
            Err(ClientError::Api {
                status: 503,
                code: "no_leader".into(),
                message: String::new(),
                retry_after: None,
                leader: None,
            }),
            Ok(7),
        ]
        .into_iter();
        let answer = persist(
            &mut rotation,
            &give_up,
            Duration::ZERO,
            (&recorder, 3, "submit"),
            |_| {
                let next = answers.next().unwrap();
                async move { next }
            },
        )
        .await;
        assert_eq!(answer.unwrap(), 7);
        let failed = recorder.history().failed_requests;
        assert_eq!(failed.len(), 1);
        assert_eq!(
            (failed[0].client, failed[0].op.as_str(), failed[0].status),
            (3, "submit", Some(503))
        );
        assert_eq!(failed[0].code, "no_leader");
    }

    #[tokio::test]
    async fn a_write_is_a_definite_failure_only_if_every_attempt_applied_nothing() {
        let api = |code: &str| ClientError::Api {
            status: 503,
            code: code.into(),
            message: String::new(),
            retry_after: None,
            leader: None,
        };
        let (no_leader, unknown) = (api("no_leader"), api("write_outcome_unknown"));
        let once = Duration::ZERO;
        assert!(persisted(vec![], no_leader.clone(), once).await.definite);
        assert!(!persisted(vec![], unknown.clone(), once).await.definite);
        // An earlier attempt that may have been applied is not undone by later ones.
        let failure = persisted(vec![unknown], no_leader, Duration::from_millis(150)).await;
        assert_eq!(failure.err.code(), "no_leader");
        assert!(!failure.definite);
    }
}
