//! The container deployment (deploy/compose.yaml on the `tanvrit:dev` image from
//! deploy/image/build.sh), brought up with docker-compose under a project name of its
//! own: three Raft replicas in three regions form a cluster by themselves over mutual
//! TLS, both agents register over TLS with certificates of the cluster CA, a job
//! submitted through a follower (forwarded over replica mTLS) runs on an agent (its
//! output names the agent's host), and after `docker kill` of the leader's container
//! another replica leads and a second job still runs. The test's clients reach the API
//! over TLS with the CA the `pki` service made.
//!
//! The image is (re)built first with deploy/image/build.sh, so the test always runs the
//! code being tested (a no-op rebuild takes seconds). Without a `docker` command the
//! test is skipped with a loud message; CI has Docker, so there it always runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tanvrit_api::{
    BusinessId, Consistency, CreditEntryCreateRequest, EntryKind, Job, JobId, JobLogsRequest,
    JobSpec, JobState, JobSubmitRequest, NodeListRequest, NodeState, Role,
};
use tanvrit_client::{Client, ClientConfig};
use tanvrit_testkit::process::ProcessCluster;

const ADMIN_KEY: &str = "tvk-compose-test-admin-0123456789abcdef";
const BUSINESS: &str = "acme";
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
const AGENTS: [&str; 2] = ["agent-eu", "agent-us"];
/// Generous: containers start on a 2-core machine shared with other work.
const PATIENCE: Duration = Duration::from_secs(60);
/// The compose file's replicas use the LAN profile (election timeout 250-400 ms).
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(15);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn docker_present() -> bool {
    Command::new("docker").arg("--version").output().is_ok()
}

/// deploy/image/build.sh, without the variables `cargo test` gives this process: with
/// them the nested cargo would see a changed environment and rebuild everything.
fn image_build() -> Command {
    let mut command = Command::new(repo_root().join("deploy/image/build.sh"));
    command.current_dir(repo_root());
    for (name, _) in std::env::vars() {
        let from_cargo_test = name == "CARGO"
            || name == "LD_LIBRARY_PATH"
            || name == "RUST_RECURSION_COUNT"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_EXE_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if from_cargo_test {
            command.env_remove(name);
        }
    }
    command
}

/// Runs a command to completion; panics with its output when it fails.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One docker-compose project; `down -v` (containers, network, volumes) when dropped,
/// after printing the containers' logs if the test is failing.
struct Project {
    name: String,
    ports: Vec<u16>,
    /// The cluster CA, copied out of the `pki` volume once the project is up.
    ca: Option<PathBuf>,
}

impl Project {
    fn compose(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(repo_root())
            .args(["-f", "deploy/compose.yaml", "-p", &self.name])
            .env("TANVRIT_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn");
        for (i, port) in self.ports.iter().enumerate() {
            command.env(format!("TANVRIT_R{}_PORT", i + 1), port.to_string());
        }
        command
    }

    fn url(&self, replica: usize) -> String {
        format!("https://127.0.0.1:{}", self.ports[replica])
    }

    /// Copies the cluster CA out of replica r1 into `dir`.
    fn fetch_ca(&mut self, dir: &Path) {
        let output = run(self
            .compose()
            .args(["exec", "-T", "r1", "cat", "/pki/ca.pem"]));
        let path = dir.join("ca.pem");
        std::fs::write(&path, &output.stdout).unwrap();
        self.ca = Some(path);
    }

    fn client(&self, replicas: &[usize]) -> Client {
        Client::new(ClientConfig {
            endpoints: replicas.iter().map(|&i| self.url(i)).collect(),
            api_key: Some(ADMIN_KEY.to_string()),
            timeout: Duration::from_secs(10),
            max_retries: 5,
            ca_file: self.ca.clone(),
            ..ClientConfig::default()
        })
        .expect("client config is valid")
    }

    /// Replica `i`'s role as its `/readyz` says; `None` while unreachable.
    async fn role(&self, i: usize) -> Option<Role> {
        let client = Client::new(ClientConfig {
            endpoints: vec![self.url(i)],
            timeout: Duration::from_secs(2),
            max_retries: 0,
            ca_file: self.ca.clone(),
            ..ClientConfig::default()
        })
        .ok()?;
        let answer = client.get_raw("/readyz", &[]).await.ok()?;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
        serde_json::from_value(body.get("role")?.clone()).ok()
    }

    /// Polls `among` until one says it leads; its index.
    async fn leader(&self, among: &[usize], within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for &i in among {
                if self.role(i).await == Some(Role::Leader) {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(logs) = self
                .compose()
                .args(["logs", "--no-color", "--tail", "40"])
                .output()
            {
                eprintln!("{}", String::from_utf8_lossy(&logs.stdout));
            }
        }
        let _ = self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
    }
}

async fn wait_job(client: &Client, id: &JobId) -> Job {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let job = client.get_job(id, Consistency::Stale).await.unwrap().job;
        if matches!(
            job.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        ) {
            return job;
        }
        assert!(Instant::now() < deadline, "{id} did not finish: {job:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits a job printing its host name through `client`; waits until it succeeded and
/// returns the host it printed.
async fn run_job(client: &Client, key: &str) -> String {
    let id = client
        .submit_job(JobSubmitRequest {
            business: Some(BusinessId::from(BUSINESS)),
            spec: JobSpec {
                command: vec!["sh".into(), "-c".into(), "echo ran-on $(hostname)".into()],
                ..JobSpec::default()
            },
            idempotency_key: Some(key.into()),
        })
        .await
        .expect("the job is accepted")
        .job
        .id;
    let job = wait_job(client, &id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let logs = client
        .job_logs(&id, JobLogsRequest::default())
        .await
        .unwrap();
    let host = logs
        .data
        .trim()
        .strip_prefix("ran-on ")
        .unwrap_or_else(|| panic!("unexpected output {:?}", logs.data))
        .to_string();
    assert!(AGENTS.contains(&host.as_str()), "ran on {host:?}");
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_forms_runs_jobs_on_agents_and_survives_a_killed_leader() {
    if !docker_present() {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! SKIPPED docker_compose: no `docker` command on this machine.   !!\n\
             !! The container deployment (deploy/compose.yaml) is NOT tested. !!\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }
    let started = Instant::now();
    run(&mut image_build());
    eprintln!("image built in {:?}", started.elapsed());

    let mut project = Project {
        name: format!("tanvrit-test-{}", std::process::id()),
        ports: (0..3)
            .map(|_| ProcessCluster::free_port().unwrap())
            .collect(),
        ca: None,
    };
    let up = Instant::now();
    // `up` returns once the certificates are made, the replicas are healthy and the
    // agents started.
    run(project.compose().args(["up", "-d"]));
    let scratch = tempfile::tempdir().unwrap();
    project.fetch_ca(scratch.path());
    let all = [0, 1, 2];
    let leader = project
        .leader(&all, PATIENCE)
        .await
        .expect("the replicas form a cluster and elect a leader");
    eprintln!("{} leads, {:?} after `up`", REPLICAS[leader], up.elapsed());

    let admin = project.client(&all);
    let topology = admin.topology().await.unwrap();
    let regions: Vec<_> = topology
        .replicas
        .iter()
        .map(|r| (r.name.clone(), r.region.clone()))
        .collect();
    assert_eq!(
        regions,
        [("r1", "eu-west"), ("r2", "us-east"), ("r3", "ap-south")]
            .map(|(n, r)| (n.to_string(), r.to_string()))
    );

    let deadline = Instant::now() + PATIENCE;
    loop {
        let nodes = admin
            .list_nodes(NodeListRequest::default())
            .await
            .unwrap()
            .nodes;
        let mut ready: Vec<_> = nodes
            .iter()
            .filter(|n| n.node.state == NodeState::Ready)
            .map(|n| n.node.name.clone())
            .collect();
        ready.sort();
        if ready == AGENTS {
            break;
        }
        assert!(Instant::now() < deadline, "agents not ready: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin
        .create_credit_entry(CreditEntryCreateRequest {
            business: BusinessId::from(BUSINESS),
            kind: EntryKind::TopUp,
            amount: 1_000_000_000,
            idempotency_key: Some("compose-top-up".into()),
            note: None,
        })
        .await
        .unwrap();

    // Through a follower only: the write is forwarded to the leader.
    let follower = (leader + 1) % 3;
    let host = run_job(&project.client(&[follower]), "before-kill").await;
    eprintln!("job through {} ran on {host}", REPLICAS[follower]);

    let killed = Instant::now();
    run(project
        .compose()
        .args(["kill", "-s", "KILL", REPLICAS[leader]]));
    let survivors: Vec<usize> = all.into_iter().filter(|&i| i != leader).collect();
    let new_leader = project
        .leader(&survivors, NEW_LEADER_WITHIN)
        .await
        .expect("a surviving replica takes over");
    eprintln!(
        "killed {}; {} leads {:?} later",
        REPLICAS[leader],
        REPLICAS[new_leader],
        killed.elapsed()
    );
    let host = run_job(&project.client(&survivors), "after-kill").await;
    eprintln!("job after the kill ran on {host}");
}
