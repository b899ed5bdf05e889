//! The Docker backend's faults do what `Fabric` promises, on real containers of the
//! `tanvrit:dev` image (three single-node `tanvrit server`s): a one-host partition
//! (`docker network disconnect`) cuts it from its peers but not from the clients; a
//! split that leaves a host whole (nftables drops) cuts only across groups; heal
//! restores both; pause freezes, kill and stop take the host down, wipe empties its
//! data directory on this machine, restart brings it back; loss drops what the host
//! sends; delay slows what reaches it; teardown and a dropped fabric leave no container
//! or network behind.
//!
//! Needs root, Docker and the image (deploy/image/build.sh; CI builds it before the
//! tests). Without a `docker` command, or not as root, it is skipped with a loud
//! message.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tanvrit_chaos::docker::{DockerFabric, DEFAULT_IMAGE, OWNER_LABEL};
use tanvrit_chaos::fabric::{Fabric, Launch};
use tanvrit_client::{Client, ClientConfig};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn can_run() -> bool {
    if Command::new("docker").arg("--version").output().is_err() {
        eprintln!("SKIPPED docker_fabric: no `docker` command");
        return false;
    }
    // SAFETY: a plain syscall with no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED docker_fabric: needs root (nsenter, nft, iptables)");
        return false;
    }
    let image = Command::new("docker")
        .args(["image", "inspect", DEFAULT_IMAGE])
        .output()
        .expect("docker runs");
    assert!(
        image.status.success(),
        "no image {DEFAULT_IMAGE}: build it with deploy/image/build.sh"
    );
    true
}

fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

fn launch(fabric: &DockerFabric, host: &str) -> Launch {
    Launch {
        args: vec![
            "server".into(),
            "--data-dir".into(),
            fabric.data_dir(host).unwrap().display().to_string(),
            "--api-addr".into(),
            format!("{}:7070", fabric.listen_address(host).unwrap()),
        ],
        env: vec![("RUST_LOG".into(), "warn".into())],
        ready_prefix: "listening on ".into(),
    }
}

/// Whether the clients (this machine) get an answer from `host` within `timeout`.
async fn client_reaches(fabric: &DockerFabric, host: &str, timeout: Duration) -> bool {
    let client = Client::new(ClientConfig {
        endpoints: vec![format!(
            "http://{}:7070",
            fabric.client_address(host).unwrap()
        )],
        timeout,
        max_retries: 0,
        ..ClientConfig::default()
    })
    .unwrap();
    client.healthz().await.is_ok()
}

/// Whether `from`'s container gets an HTTP answer from `to`'s peer address within 2 s.
/// (`nc`, not busybox-static's `wget`, which crashes on this machine even on loopback;
/// its input stays open a second, or busybox `nc` may quit before the answer comes.)
fn peer_reaches(fabric: &DockerFabric, from: &str, to: &str) -> bool {
    let probe = format!(
        "(printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc -w 2 {} 7070",
        fabric.address(to).unwrap()
    );
    let out = Command::new("docker")
        .args(["exec", &fabric.container(from).unwrap()])
        .args(["sh", "-c", &probe])
        .output()
        .expect("docker exec runs");
    String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.")
}

/// What is left of a fabric's containers and networks, by its owner label.
fn leftovers(names: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for args in [
        vec!["ps", "-a", "--format", "{{.Names}}"],
        vec!["network", "ls", "--format", "{{.Name}}"],
    ] {
        let filter = format!("label={OWNER_LABEL}");
        let out = Command::new("docker")
            .args(&args)
            .args(["--filter", &filter])
            .output()
            .unwrap();
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| names.iter().any(|n| l.starts_with(&format!("{n}-"))))
                .map(String::from),
        );
    }
    left
}

fn run_prefix(fabric: &DockerFabric) -> String {
    let (peers, _) = fabric.network_names();
    peers.trim_end_matches("-peers").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_faults_cut_freeze_crash_wipe_lose_and_delay_as_the_fabric_promises() {
    if !can_run() {
        return;
    }
    let dir = work_dir("docker-fabric");
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let mut fabric = DockerFabric::create(DEFAULT_IMAGE, &dir, &hosts)
        .await
        .expect("the fabric is created");
    fabric.set_delayer(PathBuf::from(env!("CARGO_BIN_EXE_tanvrit-chaos")));
    let prefix = run_prefix(&fabric);
    for host in HOSTS {
        let launch = launch(&fabric, host);
        fabric.start(host, launch).await.expect("the host starts");
    }
    let second = Duration::from_secs(1);
    assert!(peer_reaches(&fabric, "h1", "h2"));
    assert!(client_reaches(&fabric, "h1", second).await);

    // One host against all: taken off the peers network, still on the clients'.
    let all_but_h1 = vec!["h2".to_string(), "h3".to_string()];
    fabric
        .partition(&[vec!["h1".into()], all_but_h1])
        .await
        .unwrap();
    assert!(!peer_reaches(&fabric, "h1", "h2"), "h1 is cut off");
    assert!(!peer_reaches(&fabric, "h3", "h1"), "both ways");
    assert!(peer_reaches(&fabric, "h2", "h3"), "the others are whole");
    assert!(
        client_reaches(&fabric, "h1", second).await,
        "the clients still reach a cut-off host"
    );
    fabric.heal().await.unwrap();
    assert!(peer_reaches(&fabric, "h1", "h2"), "healed");

    // h1 against h2 while h3 stays whole: drops, not a disconnect.
    fabric
        .partition(&[vec!["h1".into()], vec!["h2".into()]])
        .await
        .unwrap();
    assert!(!peer_reaches(&fabric, "h1", "h2"));
    assert!(!peer_reaches(&fabric, "h2", "h1"));
    assert!(peer_reaches(&fabric, "h3", "h1"), "h3 is in no group");
    assert!(peer_reaches(&fabric, "h2", "h3"));
    fabric.heal().await.unwrap();
    assert!(peer_reaches(&fabric, "h2", "h1"), "healed");

    // Paused: connections are accepted by the kernel, nothing answers.
    fabric.pause("h2").await.unwrap();
    assert!(fabric.is_running("h2"));
    assert!(
        !client_reaches(&fabric, "h2", second).await,
        "a frozen host"
    );
    fabric.resume("h2").await.unwrap();
    assert!(client_reaches(&fabric, "h2", Duration::from_secs(5)).await);

    // Killed, wiped on this machine, restarted empty.
    fabric.kill("h3").await.unwrap();
    assert!(!fabric.is_running("h3"));
    assert!(!client_reaches(&fabric, "h3", second).await);
    let data = fabric.data_dir("h3").unwrap();
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_some(),
        "h3 wrote its data"
    );
    fabric.wipe("h3").await.unwrap();
    assert!(std::fs::read_dir(&data).unwrap().next().is_none(), "wiped");
    fabric.restart("h3").await.unwrap();
    assert!(client_reaches(&fabric, "h3", second).await);
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_some(),
        "h3 writes again"
    );
    fabric.stop("h3").await.unwrap();
    assert!(!client_reaches(&fabric, "h3", second).await);
    fabric.restart("h3").await.unwrap();
    assert!(client_reaches(&fabric, "h3", second).await);

    // Everything h1 sends is lost (its answers too), then nothing.
    fabric.set_loss("h1", 100).await.unwrap();
    assert!(!client_reaches(&fabric, "h1", second).await);
    assert!(!peer_reaches(&fabric, "h1", "h2"));
    fabric.set_loss("h1", 0).await.unwrap();
    assert!(client_reaches(&fabric, "h1", second).await);

    // Every packet reaching h1 waits 300 ms: a request (handshake, then the request
    // itself) takes at least two of those.
    fabric.set_delay("h1", 300, 300).await.unwrap();
    let started = Instant::now();
    assert!(client_reaches(&fabric, "h1", Duration::from_secs(10)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "took only {took:?}");
    assert!(peer_reaches(&fabric, "h2", "h1"), "delayed, not cut");
    fabric.set_delay("h1", 0, 0).await.unwrap();

    fabric.teardown().await;
    assert_eq!(leftovers(&[prefix]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_docker_fabric_removes_its_containers_and_networks() {
    if !can_run() {
        return;
    }
    let dir = work_dir("docker-fabric-drop");
    let hosts = vec!["h1".to_string()];
    let mut fabric = DockerFabric::create(DEFAULT_IMAGE, &dir, &hosts)
        .await
        .expect("the fabric is created");
    let prefix = run_prefix(&fabric);
    let launch = launch(&fabric, "h1");
    fabric.start("h1", launch).await.unwrap();
    assert!(!leftovers(std::slice::from_ref(&prefix)).is_empty());
    // What an error or Ctrl-C half-way through a scenario does: no teardown, a drop.
    drop(fabric);
    assert_eq!(leftovers(&[prefix]), Vec::<String>::new());
}
