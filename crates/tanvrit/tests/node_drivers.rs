//! A node's drivers and devices, end to end with a real `tanvrit server` and real
//! `tanvrit agent` processes: a job naming an image is placed only on the agent started
//! with `--docker` and runs in a container of an image imported here (no registry); two
//! jobs that each asked for one GPU on an agent configured with `--gpus 0,1` see
//! different `CUDA_VISIBLE_DEVICES`.
//!
//! Needs the Docker engine and `/bin/busybox` (`busybox-static`), like the agent's docker
//! tests; `TANVRIT_SKIP_DOCKER_TESTS=1` skips the docker part knowingly.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tanvrit_api::*;
use tanvrit_client::Client;
use tanvrit_testkit::process::{AgentProcess, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tanvrit");
const PATIENCE: Duration = Duration::from_secs(60);
const BUSINESS: &str = "acme";

async fn server(dir: &Path) -> (ServerProcess, Client) {
    let server = ServerProcess::start(Path::new(BIN), &dir.join("server"), &[])
        .await
        .expect("the server starts");
    let admin = server.admin_with_credits(BUSINESS, 1_000_000_000).await;
    (server, admin)
}

async fn agent(server: &ServerProcess, dir: &Path, name: &str, flags: &[&str]) -> AgentProcess {
    let mut args = vec![
        "--name",
        name,
        "--backoff-max",
        "500ms",
        "--isolation",
        "none",
    ];
    args.extend_from_slice(flags);
    let key = server.agent_key().await;
    AgentProcess::start(Path::new(BIN), server.url(), &key, &dir.join(name), &args)
        .await
        .expect("the agent starts and registers")
}

async fn submit(admin: &Client, spec: JobSpec) -> JobId {
    admin
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

async fn ended(admin: &Client, id: &JobId) -> Job {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let job = admin.get_job(id, Consistency::Stale).await.unwrap().job;
        if job.state.is_terminal() {
            return job;
        }
        assert!(Instant::now() < deadline, "{id} did not end: {job:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn output(admin: &Client, id: &JobId) -> String {
    admin
        .job_logs(id, JobLogsRequest::default())
        .await
        .unwrap()
        .data
}

#[tokio::test]
async fn an_image_job_runs_only_on_the_agent_offering_docker() {
    if std::env::var("TANVRIT_SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1") {
        return;
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "needs /bin/busybox (busybox-static); TANVRIT_SKIP_DOCKER_TESTS=1 skips this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/echo")).unwrap();
    let image = format!("tanvrit-test-drivers:{}", std::process::id());
    let archive = dir.path().join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let imported = Command::new("docker")
        .arg("import")
        .arg(&archive)
        .arg(&image)
        .output()
        .expect("docker runs");
    assert!(imported.status.success(), "{imported:?}");

    let (server, admin) = server(dir.path()).await;
    let plain = agent(&server, dir.path(), "plain", &[]).await;
    let docker = agent(&server, dir.path(), "docker", &["--docker"]).await;
    let nodes = admin.list_nodes(NodeListRequest::default()).await.unwrap();
    let drivers = |id: &str| {
        nodes
            .nodes
            .iter()
            .find(|n| n.node.id.as_str() == id)
            .map(|n| n.node.drivers.clone())
    };
    assert_eq!(drivers(plain.node_id()), Some(vec!["exec".to_string()]));
    assert_eq!(
        drivers(docker.node_id()),
        Some(vec!["exec".to_string(), "docker".to_string()])
    );

    let mut placed_on = Vec::new();
    for n in 0..3 {
        let job = submit(
            &admin,
            JobSpec {
                shell: Some(format!("echo in the image {n}")),
                image: Some(image.clone()),
                ..JobSpec::default()
            },
        )
        .await;
        let done = ended(&admin, &job).await;
        assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
        assert_eq!(output(&admin, &job).await, format!("in the image {n}\n"));
        placed_on.push(done.current_attempt().unwrap().node.to_string());
    }
    assert!(
        placed_on.iter().all(|n| n == docker.node_id()),
        "{placed_on:?}"
    );
    let _ = Command::new("docker")
        .args(["rmi", "--force", &image])
        .output();
}

#[tokio::test]
async fn two_jobs_asking_for_one_gpu_each_see_different_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = server(dir.path()).await;
    let _agent = agent(&server, dir.path(), "gpu", &["--gpus", "0,1"]).await;
    let nodes = admin.list_nodes(NodeListRequest::default()).await.unwrap();
    assert_eq!(nodes.nodes[0].node.resources.gpus, 2);
    // Each runs until both have started, so they hold their GPUs at once.
    let gate = dir.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let job = |me: &str, other: &str| JobSpec {
        shell: Some(format!(
            "echo \"$CUDA_VISIBLE_DEVICES\"; touch {g}/{me}; i=0; \
             while [ ! -e {g}/{other} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
            g = gate.display()
        )),
        resources: Resources {
            gpus: 1,
            ..Resources::JOB_DEFAULT
        },
        ..JobSpec::default()
    };
    let a = submit(&admin, job("a", "b")).await;
    let b = submit(&admin, job("b", "a")).await;
    assert_eq!(ended(&admin, &a).await.state, JobState::Succeeded);
    assert_eq!(ended(&admin, &b).await.state, JobState::Succeeded);
    let mut seen = vec![output(&admin, &a).await, output(&admin, &b).await];
    seen.sort();
    assert_eq!(seen, vec!["0\n".to_string(), "1\n".to_string()]);
}
