//! [`DockerFabric`]: hosts as Docker containers of the `tanvrit:dev` image, on Docker
//! networks of the run's own.
//!
//! Each host is two containers, as a Kubernetes pod is: `<run>-<host>-net` holds the
//! host's network namespace (a `sleep` on both networks, with fixed addresses) and
//! `<run>-<host>` runs `tanvrit` in it (`--network container:...`, `--init`). So a
//! `docker kill` crashes the process and its jobs while the host's network, and any
//! fault set on it, stays, as a crashed process leaves its machine's network; and a
//! restart is `docker start` of the same container.
//!
//! Two networks, both `--internal` (no route off the machine): `<run>-peers`, where the
//! replicas and agents reach each other, and `<run>-clients` (inter-container traffic
//! off), where the workload's clients on this machine reach every host's API. Faults:
//! - kill: `docker kill` (SIGKILL to the container's init: the whole container dies);
//!   stop: `docker stop` (SIGTERM, 20 s, then SIGKILL); restart: `docker start`;
//!   pause: `docker pause` (the cgroup freezer); wipe: the data directory, a bind mount
//!   under the work directory, deleted on this machine.
//! - partition: a group of one host against every other host is `docker network
//!   disconnect` of its pod from the peers network (`connect` with the same address
//!   heals it); the host keeps its client address, so the clients still reach it. Any
//!   other split (an agent against the replicas while the other agent stays whole) is
//!   nftables INPUT drops inside the pods' namespaces, as the netns backend does.
//! - loss: an nftables `numgen random` drop on the pod's interfaces' egress hook (what
//!   the host sends is lost on the wire; the sender sees no error).
//! - delay: NFQUEUE on INPUT inside the pods (every packet arriving at the delayed host,
//!   and what it sends, where it arrives) to [`crate::nfq`], run in each pod's network
//!   namespace with `nsenter`.
//!
//! Every container and network carries the label `tanvrit-chaos.owner=<pid>:<start>`;
//! whatever is left by a run that is gone (SIGKILL) is removed by the next run or by
//! `tanvrit-chaos --backend docker --cleanup`. Needs root (`nsenter`, `nft`,
//! `iptables`) and the image built from this repository; nothing is ever pulled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::fabric::{Fabric, FabricError, Launch};

/// The image every host runs unless told otherwise.
pub const DEFAULT_IMAGE: &str = "tanvrit:dev";
/// The label naming the process (and its start time) that owns a container or network.
pub const OWNER_LABEL: &str = "tanvrit-chaos.owner";
/// Every container and network name starts with this.
pub const NAME_PREFIX: &str = "tanvrit-chaos-";
/// How long a process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any one `docker`, `nsenter`, `nft` or `iptables` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// `docker stop`'s grace before SIGKILL, as the netns backend waits.
const STOP_GRACE_SECS: u32 = 20;
/// The NFQUEUE number each pod's delayer reads (queues are per network namespace).
const QUEUE: u16 = 0;
/// The first octets of the two networks' subnets: `10.210.N.0/24` (peers) and
/// `10.211.N.0/24` (clients), N picked free at creation.
const PEERS_NET: &str = "10.210";
const CLIENTS_NET: &str = "10.211";

static SWEPT: AtomicBool = AtomicBool::new(false);
static RUNS: AtomicU32 = AtomicU32::new(0);

/// One host: its pod (network namespace) and its process container.
struct Host {
    peer_ip: String,
    client_ip: String,
    /// The pod container, which owns the network namespace.
    pod: String,
    /// Its process id, for `nsenter` (the pod never restarts).
    pod_pid: u32,
    /// The container running `tanvrit`.
    proc: String,
    data_dir: PathBuf,
    log: PathBuf,
    /// The launch the process container was created with.
    created: Option<Launch>,
    launch: Option<Launch>,
    /// `docker start --attach`, while the container runs: its output is the process's.
    attach: Option<Child>,
    running: bool,
    paused: bool,
    /// Taken off the peers network by a partition.
    disconnected: bool,
    /// Has an nftables partition table.
    cut: bool,
    /// Has NFQUEUE rules in its INPUT chain.
    delayed_input: bool,
}

/// Hosts as Docker containers on the run's own networks (see the module docs).
pub struct DockerFabric {
    run: String,
    owner: String,
    image: String,
    work_dir: PathBuf,
    peers_net: String,
    clients_net: String,
    networks: Vec<String>,
    exe: PathBuf,
    hosts: BTreeMap<String, Host>,
    loss: BTreeMap<String, u8>,
    delay: BTreeMap<String, (u32, u32)>,
    delayers: BTreeMap<String, Child>,
    torn_down: bool,
}

/// What a command printed.
struct Output {
    stdout: String,
}

fn failed(command_line: &str, message: impl Into<String>) -> FabricError {
    FabricError::Command {
        command: command_line.to_string(),
        message: message.into(),
    }
}

/// Runs `program args` (bounded) and fails with its stderr unless it exits 0.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, FabricError> {
    let command_line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(&command_line, e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| failed(&command_line, e.to_string()))?;
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(&command_line, format!("no answer in {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| failed(&command_line, e.to_string()))?;
    if output.status.success() {
        Ok(Output {
            stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        })
    } else {
        Err(failed(
            &command_line,
            String::from_utf8_lossy(&output.stderr).trim(),
        ))
    }
}

async fn docker(args: &[&str]) -> Result<Output, FabricError> {
    run("docker", args, None).await
}

/// Runs `program args` inside the network namespace of process `pid`.
async fn in_netns(
    pid: u32,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, FabricError> {
    let target = pid.to_string();
    let mut all = vec!["-t", &target, "-n", program];
    all.extend_from_slice(args);
    run("nsenter", &all, stdin).await
}

/// Children that die with this process, so a SIGKILLed run leaves no delayer or
/// attached client behind (its containers are swept by the next run).
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The start time (clock ticks since boot) of process `pid`, from `/proc/<pid>/stat`:
/// with the pid, it names one process even after the pid is reused.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_from_stat(&stat)
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line, unless the process is a zombie
/// (dead, not yet reaped). The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
pub fn start_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// This process as an owner label value: `<pid>:<start>`.
fn owner() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", process_start(pid).unwrap_or(0))
}

/// Whether the owner a label names is still running.
pub fn owner_alive(label: &str) -> bool {
    let Some((pid, start)) = label.split_once(':') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => process_start(pid) == Some(start),
        _ => false,
    }
}

/// How a partition is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionPlan {
    /// No cut at all (fewer than two non-empty groups).
    Nothing,
    /// One host against every other host: take it off the peers network.
    Disconnect(String),
    /// Anything else: for each host, the hosts whose packets it drops.
    Drops(BTreeMap<String, BTreeSet<String>>),
}

/// Chooses how to cut `groups` among `hosts` (see [`Fabric::partition`]): `docker
/// network disconnect` only where it cuts exactly that, one host from all the others.
pub fn plan_partition(hosts: &BTreeSet<String>, groups: &[Vec<String>]) -> PartitionPlan {
    let groups: Vec<BTreeSet<String>> = groups
        .iter()
        .map(|g| g.iter().cloned().collect::<BTreeSet<_>>())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() < 2 {
        return PartitionPlan::Nothing;
    }
    if groups.len() == 2 {
        for (alone, rest) in [(&groups[0], &groups[1]), (&groups[1], &groups[0])] {
            if alone.len() == 1 {
                let host = alone.iter().next().cloned().unwrap_or_default();
                let everyone_else: BTreeSet<String> =
                    hosts.iter().filter(|h| **h != host).cloned().collect();
                if *rest == everyone_else {
                    return PartitionPlan::Disconnect(host);
                }
            }
        }
    }
    let mut drops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (g, group) in groups.iter().enumerate() {
        let others: BTreeSet<String> = groups
            .iter()
            .enumerate()
            .filter(|(o, _)| *o != g)
            .flat_map(|(_, hosts)| hosts.iter().cloned())
            .collect();
        for host in group {
            drops
                .entry(host.clone())
                .or_default()
                .extend(others.clone());
        }
    }
    PartitionPlan::Drops(drops)
}

/// The interfaces in `ip -o link` output, but `lo` (`2: eth0@if14: <...` -> `eth0`).
pub fn interfaces(ip_link: &str) -> Vec<String> {
    ip_link
        .lines()
        .filter_map(|line| {
            let name = line.split(':').nth(1)?.trim();
            let name = name.split('@').next()?.trim();
            (!name.is_empty() && name != "lo").then(|| name.to_string())
        })
        .collect()
}

/// The nftables script that sets `host`'s send loss on `devices` (0: none).
pub fn loss_script(devices: &[String], percent: u8) -> String {
    let mut script = String::from("add table netdev chaos_loss\ndelete table netdev chaos_loss\n");
    if percent > 0 && !devices.is_empty() {
        let list = devices
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // `mod 100 < 100` is out of nft's range: everything is plain `drop`.
        let rule = if percent >= 100 {
            "drop".to_string()
        } else {
            format!("numgen random mod 100 < {percent} drop")
        };
        script.push_str(&format!(
            "table netdev chaos_loss {{\n  chain e {{\n    type filter hook egress devices = {{ {list} }} priority 0;\n    {rule}\n  }}\n}}\n"
        ));
    }
    script
}

/// Removes every container and network of this suite whose owning process is gone;
/// returns their names. A live run's are left alone.
pub async fn cleanup_stale() -> Result<Vec<String>, FabricError> {
    let filter = format!("label={OWNER_LABEL}");
    let format = |name: &str| format!("{{{{.{name}}}}}\t{{{{.Label \"{OWNER_LABEL}\"}}}}");
    let containers = docker(&[
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        &format("Names"),
    ])
    .await?;
    let stale = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(name, owner)| name.starts_with(NAME_PREFIX) && !owner_alive(owner))
            .map(|(name, _)| name.to_string())
            .collect()
    };
    let mut removed = stale(&containers.stdout);
    // Process containers before the pods whose namespaces they use.
    removed.sort_by_key(|name| name.ends_with("-net"));
    for name in &removed {
        docker(&["rm", "-f", name]).await?;
    }
    let networks = docker(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        &format("Name"),
    ])
    .await?;
    for name in stale(&networks.stdout) {
        docker(&["network", "rm", &name]).await?;
        removed.push(name);
    }
    Ok(removed)
}

impl DockerFabric {
    /// Creates the run's two networks and one pod per host (`hosts[i]` gets
    /// `10.210.N.(i+2)` and `10.211.N.(i+2)`); data directories and logs go under
    /// `work_dir`, which every container sees at the same path. First removes what dead
    /// runs left behind.
    pub async fn create(
        image: &str,
        work_dir: &Path,
        hosts: &[String],
    ) -> Result<Self, FabricError> {
        // SAFETY: a plain syscall with no arguments.
        if unsafe { libc::geteuid() } != 0 {
            return Err(FabricError::Unsafe(
                "the docker backend needs root (nsenter, nft, iptables in the containers' \
                 network namespaces)"
                    .into(),
            ));
        }
        if hosts.len() > 250 {
            return Err(FabricError::Unsafe("at most 250 hosts".into()));
        }
        let work = work_dir.display().to_string();
        if work.contains(',') || !work_dir.is_absolute() {
            return Err(FabricError::Unsafe(format!(
                "the work directory must be an absolute path without commas (a bind mount): {work}"
            )));
        }
        docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .await
            .map_err(|e| {
                FabricError::Unsafe(format!(
                    "no image `{image}` here ({e}); build it with deploy/image/build.sh \
                     (nothing is pulled)"
                ))
            })?;
        if !SWEPT.swap(true, Ordering::SeqCst) {
            let removed = cleanup_stale().await?;
            if !removed.is_empty() {
                tracing::warn!(?removed, "removed what dead chaos runs left behind");
            }
        }
        std::fs::create_dir_all(work_dir)?;
        let run = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        let mut fabric = DockerFabric {
            peers_net: format!("{run}-peers"),
            clients_net: format!("{run}-clients"),
            run,
            owner: owner(),
            image: image.to_string(),
            work_dir: work_dir.to_path_buf(),
            networks: Vec::new(),
            exe: std::env::current_exe()?,
            hosts: BTreeMap::new(),
            loss: BTreeMap::new(),
            delay: BTreeMap::new(),
            delayers: BTreeMap::new(),
            torn_down: false,
        };
        if let Err(e) = fabric.build(hosts).await {
            fabric.teardown().await;
            return Err(e);
        }
        Ok(fabric)
    }

    fn owner_label(&self) -> String {
        format!("{OWNER_LABEL}={}", self.owner)
    }

    /// Creates both networks on the first free `N` (another run, or anything else on
    /// this machine, may hold a subnet).
    async fn create_networks(&mut self) -> Result<u32, FabricError> {
        let label = self.owner_label();
        let first = std::process::id() % 200;
        let mut last = None;
        for attempt in 0..200 {
            let n = 20 + (first + attempt) % 200;
            if route_taken(&format!("{PEERS_NET}.{n}.1")).await
                || route_taken(&format!("{CLIENTS_NET}.{n}.1")).await
            {
                continue;
            }
            let mut made = Vec::new();
            let mut clash = None;
            for (name, net, icc) in [
                (self.peers_net.clone(), PEERS_NET, "true"),
                (self.clients_net.clone(), CLIENTS_NET, "false"),
            ] {
                let subnet = format!("{net}.{n}.0/24");
                let icc = format!("com.docker.network.bridge.enable_icc={icc}");
                let made_one = docker(&[
                    "network",
                    "create",
                    "--internal",
                    "--subnet",
                    &subnet,
                    "--label",
                    &label,
                    "-o",
                    &icc,
                    &name,
                ])
                .await;
                match made_one {
                    Ok(_) => made.push(name),
                    Err(e) => {
                        clash = Some(e);
                        break;
                    }
                }
            }
            match clash {
                None => {
                    self.networks = made;
                    return Ok(n);
                }
                Some(FabricError::Command { command, message }) if message.contains("overlap") => {
                    for name in made {
                        let _ = docker(&["network", "rm", &name]).await;
                    }
                    last = Some(FabricError::Command { command, message });
                }
                Some(e) => {
                    self.networks = made;
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            FabricError::Unsafe(format!(
                "no free subnet in {PEERS_NET}.20-219.0/24 and {CLIENTS_NET}.20-219.0/24"
            ))
        }))
    }

    async fn build(&mut self, hosts: &[String]) -> Result<(), FabricError> {
        let n = self.create_networks().await?;
        let label = self.owner_label();
        for (i, name) in hosts.iter().enumerate() {
            let peer_ip = format!("{PEERS_NET}.{n}.{}", i + 2);
            let client_ip = format!("{CLIENTS_NET}.{n}.{}", i + 2);
            let pod = format!("{}-{name}-net", self.run);
            let proc = format!("{}-{name}", self.run);
            docker(&[
                "create",
                "--pull",
                "never",
                "--name",
                &pod,
                "--hostname",
                name,
                "--label",
                &label,
                "--network",
                &self.peers_net,
                "--ip",
                &peer_ip,
                "--entrypoint",
                "/bin/sleep",
                &self.image,
                "2147483647",
            ])
            .await?;
            // Registered before anything else can fail, so teardown removes it.
            self.hosts.insert(
                name.clone(),
                Host {
                    peer_ip: peer_ip.clone(),
                    client_ip: client_ip.clone(),
                    pod: pod.clone(),
                    pod_pid: 0,
                    proc,
                    data_dir: self.work_dir.join(name),
                    log: self.work_dir.join(format!("{name}.log")),
                    created: None,
                    launch: None,
                    attach: None,
                    running: false,
                    paused: false,
                    disconnected: false,
                    cut: false,
                    delayed_input: false,
                },
            );
            docker(&[
                "network",
                "connect",
                "--ip",
                &client_ip,
                &self.clients_net,
                &pod,
            ])
            .await?;
            docker(&["start", &pod]).await?;
            let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &pod]).await?;
            let pid: u32 = pid.stdout.trim().parse().unwrap_or(0);
            if pid == 0 {
                return Err(failed(
                    &format!("docker inspect {pod}"),
                    "the pod has no process",
                ));
            }
            if let Some(host) = self.hosts.get_mut(name) {
                host.pod_pid = pid;
            }
            std::fs::create_dir_all(self.work_dir.join(name))?;
        }
        Ok(())
    }

    fn host(&self, name: &str) -> Result<&Host, FabricError> {
        self.hosts
            .get(name)
            .ok_or_else(|| FabricError::UnknownHost(name.to_string()))
    }

    fn host_mut(&mut self, name: &str) -> Result<&mut Host, FabricError> {
        self.hosts
            .get_mut(name)
            .ok_or_else(|| FabricError::UnknownHost(name.to_string()))
    }

    /// Runs the packet delayer as `<exe> nfq-delay` [default: this program, which is
    /// `tanvrit-chaos` except in tests].
    pub fn set_delayer(&mut self, exe: PathBuf) {
        self.exe = exe;
    }

    /// The process container's name (for `docker exec` in tests).
    pub fn container(&self, host: &str) -> Result<String, FabricError> {
        Ok(self.host(host)?.proc.clone())
    }

    /// The run's network names (peers, clients).
    pub fn network_names(&self) -> (String, String) {
        (self.peers_net.clone(), self.clients_net.clone())
    }

    /// Creates the process container for the host's launch (again, if it changed).
    async fn ensure_created(&mut self, name: &str) -> Result<(), FabricError> {
        let label = self.owner_label();
        let image = self.image.clone();
        let work = self.work_dir.display().to_string();
        let host = self.host(name)?;
        let launch = host
            .launch
            .clone()
            .ok_or_else(|| FabricError::UnknownHost(format!("{name} was never started")))?;
        if host.created.as_ref() == Some(&launch) {
            return Ok(());
        }
        let (proc, pod) = (host.proc.clone(), host.pod.clone());
        if host.created.is_some() {
            docker(&["rm", "-f", &proc]).await?;
        }
        let network = format!("container:{pod}");
        let mount = format!("type=bind,source={work},target={work}");
        let grace = STOP_GRACE_SECS.to_string();
        let mut args: Vec<&str> = vec![
            "create",
            "--pull",
            "never",
            "--name",
            &proc,
            "--label",
            &label,
            "--network",
            &network,
            // An init as PID 1: it reaps the jobs' orphans and passes SIGTERM on; its
            // SIGKILL takes the whole container down.
            "--init",
            "--mount",
            &mount,
            "--stop-timeout",
            &grace,
        ];
        let env: Vec<String> = launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for pair in &env {
            args.push("--env");
            args.push(pair);
        }
        args.push(&image);
        args.extend(launch.args.iter().map(String::as_str));
        docker(&args).await?;
        self.host_mut(name)?.created = Some(launch);
        Ok(())
    }

    /// Waits (bounded) for the attached client to see the container exit.
    async fn reap(&mut self, name: &str) -> Result<(), FabricError> {
        let host = self.host_mut(name)?;
        if let Some(mut attach) = host.attach.take() {
            if tokio::time::timeout(Duration::from_secs(10), attach.wait())
                .await
                .is_err()
            {
                let _ = attach.kill().await;
            }
        }
        host.running = false;
        host.paused = false;
        Ok(())
    }

    /// Rewrites `host`'s send loss on its current interfaces (a reconnect makes a new
    /// one).
    async fn apply_loss(&self, name: &str) -> Result<(), FabricError> {
        let host = self.host(name)?;
        let percent = self.loss.get(name).copied().unwrap_or(0);
        let links = in_netns(host.pod_pid, "ip", &["-o", "link", "show"], None).await?;
        let script = loss_script(&interfaces(&links.stdout), percent);
        in_netns(host.pod_pid, "nft", &["-f", "-"], Some(&script)).await?;
        Ok(())
    }

    /// Rewrites every pod's NFQUEUE rules from `self.delay` and (re)starts the
    /// delayers. A delayed host queues everything arriving at it; every other host
    /// queues what arrives from a delayed host's peer address. Delaying on arrival, not
    /// on sending, keeps TCP's small-queue limit from throttling the sender.
    async fn apply_delay(&mut self) -> Result<(), FabricError> {
        for (_, mut delayer) in std::mem::take(&mut self.delayers) {
            let _ = delayer.kill().await;
        }
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in &names {
            let host = self.host(name)?;
            if host.delayed_input {
                in_netns(host.pod_pid, "iptables", &["-w", "5", "-F", "INPUT"], None).await?;
                self.host_mut(name)?.delayed_input = false;
            }
        }
        let active: BTreeMap<String, (u32, u32)> = self
            .delay
            .iter()
            .filter(|(_, (_, max))| *max > 0)
            .map(|(name, range)| (name.clone(), *range))
            .collect();
        if active.is_empty() {
            return Ok(());
        }
        // Every delayer draws from the widest range asked (scenarios delay whole regions
        // alike), as the netns backend's one delayer does.
        let min = active.values().map(|(min, _)| *min).min().unwrap_or(0);
        let max = active.values().map(|(_, max)| *max).max().unwrap_or(0);
        for name in &names {
            let sources: Vec<Option<String>> = if active.contains_key(name) {
                vec![None]
            } else {
                active
                    .keys()
                    .map(|far| self.host(far).map(|h| Some(h.peer_ip.clone())))
                    .collect::<Result<_, _>>()?
            };
            if sources.is_empty() {
                continue;
            }
            let pid = self.host(name)?.pod_pid;
            let delayer = self.start_delayer(pid, min, max).await?;
            self.delayers.insert(name.clone(), delayer);
            self.host_mut(name)?.delayed_input = true;
            let queue = QUEUE.to_string();
            for source in sources {
                let mut args = vec!["-w", "5", "-A", "INPUT", "!", "-i", "lo"];
                if let Some(ip) = &source {
                    args.extend(["-s", ip.as_str()]);
                }
                args.extend(["-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"]);
                in_netns(pid, "iptables", &args, None).await?;
            }
        }
        Ok(())
    }

    /// Runs our delayer in the network namespace of `pid` and waits until it has bound
    /// the queue.
    async fn start_delayer(&self, pid: u32, min: u32, max: u32) -> Result<Child, FabricError> {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &pid.to_string(), "-n"])
            .arg(&self.exe)
            .args(["nfq-delay", "--queue", &QUEUE.to_string()])
            .args(["--min-ms", &min.to_string(), "--max-ms", &max.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut delayer = command.spawn()?;
        let stdout = delayer.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        if !matches!(ready, Ok(Ok(Some(ref line))) if line.starts_with("nfq-delay ready")) {
            let _ = delayer.kill().await;
            return Err(FabricError::NotReady {
                host: format!("nfq-delay in pid {pid}'s namespace"),
                message: format!("{ready:?}"),
            });
        }
        Ok(delayer)
    }

    /// Removes the named containers, then the networks (the blocking form, for Drop).
    fn remove_blocking(containers: &[String], networks: &[String]) {
        if !containers.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(containers)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if !networks.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm"])
                .args(networks)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Every container of this fabric, process containers before pods.
    fn containers(&self) -> Vec<String> {
        let procs = self.hosts.values().map(|h| h.proc.clone());
        let pods = self.hosts.values().map(|h| h.pod.clone());
        procs.chain(pods).collect()
    }
}

/// Whether this machine already routes `addr` somewhere other than its default route
/// (a real network there must not be shadowed by a test bridge).
async fn route_taken(addr: &str) -> bool {
    match run("ip", &["-4", "route", "show", "match", addr], None).await {
        Ok(out) => out
            .stdout
            .lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with("default")),
        Err(_) => false,
    }
}

#[async_trait]
impl Fabric for DockerFabric {
    fn address(&self, host: &str) -> Result<String, FabricError> {
        Ok(self.host(host)?.peer_ip.clone())
    }

    fn client_address(&self, host: &str) -> Result<String, FabricError> {
        Ok(self.host(host)?.client_ip.clone())
    }

    fn listen_address(&self, host: &str) -> Result<String, FabricError> {
        self.host(host)?;
        Ok("0.0.0.0".into())
    }

    fn data_dir(&self, host: &str) -> Result<PathBuf, FabricError> {
        Ok(self.host(host)?.data_dir.clone())
    }

    /// `docker start --attach`: the process's stdout comes back through the client,
    /// which attaches before the process starts, so no line is missed. Waits for the
    /// ready line; the rest of the output goes to the host's log.
    async fn spawn(&mut self, name: &str) -> Result<String, FabricError> {
        self.ensure_created(name).await?;
        let host = self.host_mut(name)?;
        let prefix = host
            .launch
            .as_ref()
            .map(|l| l.ready_prefix.clone())
            .unwrap_or_default();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)?;
        let mut command = Command::new("docker");
        command
            .args(["start", "--attach", &host.proc])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix(&prefix) {
                    return Some(rest.to_string());
                }
            }
            None
        })
        .await;
        let rest = match found {
            Ok(Some(rest)) => rest,
            other => {
                let proc = host.proc.clone();
                let log = host.log.clone();
                let _ = docker(&["kill", &proc]).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                return Err(FabricError::NotReady {
                    host: name.to_string(),
                    message: match other {
                        Ok(_) => format!("exited first (see {})", log.display()),
                        Err(_) => format!("no `{prefix}` line in {READY_TIMEOUT:?}"),
                    },
                });
            }
        };
        let mut log = tokio::fs::File::from_std(log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        host.attach = Some(child);
        host.running = true;
        host.paused = false;
        Ok(rest)
    }

    async fn start(&mut self, host: &str, launch: Launch) -> Result<String, FabricError> {
        self.host_mut(host)?.launch = Some(launch);
        self.spawn(host).await
    }

    async fn kill(&mut self, host: &str) -> Result<(), FabricError> {
        let h = self.host(host)?;
        if !h.running {
            return Ok(());
        }
        let proc = h.proc.clone();
        if let Err(e) = docker(&["kill", &proc]).await {
            // It may have exited by itself; anything else is a harness failure.
            if !matches!(&e, FabricError::Command { message, .. } if message.contains("is not running"))
            {
                return Err(e);
            }
        }
        self.reap(host).await
    }

    async fn stop(&mut self, host: &str) -> Result<(), FabricError> {
        let h = self.host(host)?;
        if !h.running {
            return Ok(());
        }
        let proc = h.proc.clone();
        if h.paused {
            docker(&["unpause", &proc]).await?;
        }
        docker(&["stop", "--time", &STOP_GRACE_SECS.to_string(), &proc]).await?;
        self.reap(host).await
    }

    async fn pause(&mut self, host: &str) -> Result<(), FabricError> {
        let h = self.host(host)?;
        if h.running && !h.paused {
            let proc = h.proc.clone();
            docker(&["pause", &proc]).await?;
            self.host_mut(host)?.paused = true;
        }
        Ok(())
    }

    async fn resume(&mut self, host: &str) -> Result<(), FabricError> {
        let h = self.host(host)?;
        if h.paused {
            let proc = h.proc.clone();
            docker(&["unpause", &proc]).await?;
            self.host_mut(host)?.paused = false;
        }
        Ok(())
    }

    fn is_running(&self, host: &str) -> bool {
        self.hosts.get(host).is_some_and(|h| h.running)
    }

    async fn partition(&mut self, groups: &[Vec<String>]) -> Result<(), FabricError> {
        self.heal().await?;
        for host in groups.iter().flatten() {
            self.host(host)?;
        }
        let all: BTreeSet<String> = self.hosts.keys().cloned().collect();
        match plan_partition(&all, groups) {
            PartitionPlan::Nothing => {}
            PartitionPlan::Disconnect(name) => {
                let pod = self.host(&name)?.pod.clone();
                docker(&["network", "disconnect", &self.peers_net, &pod]).await?;
                self.host_mut(&name)?.disconnected = true;
            }
            PartitionPlan::Drops(drops) => {
                for (name, from) in drops {
                    let set = from
                        .iter()
                        .map(|h| self.address(h))
                        .collect::<Result<Vec<_>, _>>()?
                        .join(", ");
                    // Each side drops what arrives from the other: a two-way cut in
                    // which every sender sees silence, as on a real network.
                    let script = format!(
                        "table inet chaos_part {{\n  chain i {{\n    type filter hook input priority 0;\n    ip saddr {{ {set} }} drop\n  }}\n}}\n"
                    );
                    let pid = self.host(&name)?.pod_pid;
                    self.host_mut(&name)?.cut = true;
                    in_netns(pid, "nft", &["-f", "-"], Some(&script)).await?;
                }
            }
        }
        Ok(())
    }

    async fn heal(&mut self) -> Result<(), FabricError> {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in &names {
            let host = self.host(name)?;
            let (pod, ip, pid) = (host.pod.clone(), host.peer_ip.clone(), host.pod_pid);
            if host.disconnected {
                docker(&["network", "connect", "--ip", &ip, &self.peers_net, &pod]).await?;
                self.host_mut(name)?.disconnected = false;
                // The reconnected interface is a new one: its loss rule must name it.
                if self.loss.get(name).is_some_and(|p| *p > 0) {
                    self.apply_loss(name).await?;
                }
            }
            if self.host(name)?.cut {
                let script = "add table inet chaos_part\ndelete table inet chaos_part\n";
                in_netns(pid, "nft", &["-f", "-"], Some(script)).await?;
                self.host_mut(name)?.cut = false;
            }
        }
        Ok(())
    }

    async fn set_loss(&mut self, host: &str, percent: u8) -> Result<(), FabricError> {
        self.host(host)?;
        let before = self.loss.insert(host.to_string(), percent.min(100));
        if before.unwrap_or(0) == 0 && percent == 0 {
            return Ok(());
        }
        self.apply_loss(host).await
    }

    async fn set_delay(&mut self, host: &str, min_ms: u32, max_ms: u32) -> Result<(), FabricError> {
        self.host(host)?;
        let range = (min_ms.min(max_ms), max_ms);
        let before = self.delay.insert(host.to_string(), range);
        if before.unwrap_or((0, 0)).1 == 0 && max_ms == 0 {
            return Ok(());
        }
        self.apply_delay().await
    }

    async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for (_, mut delayer) in std::mem::take(&mut self.delayers) {
            let _ = delayer.kill().await;
        }
        let containers = self.containers();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            let _ = docker(&args).await;
        }
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in &names {
            let _ = self.reap(name).await;
        }
        let networks = std::mem::take(&mut self.networks);
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            let _ = docker(&args).await;
        }
    }
}

impl Drop for DockerFabric {
    /// A run stopped half-way (an error, Ctrl-C) still removes its containers and
    /// networks: they would outlive this process, unlike the netns sandbox.
    fn drop(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            DockerFabric::remove_blocking(&self.containers(), &self.networks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn group(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_host_against_all_others_is_a_network_disconnect() {
        let hosts = set(&["r1", "r2", "r3", "a1", "a2"]);
        let plan = plan_partition(&hosts, &[group(&["r2"]), group(&["r1", "r3", "a1", "a2"])]);
        assert_eq!(plan, PartitionPlan::Disconnect("r2".into()));
        let reversed = plan_partition(&hosts, &[group(&["r1", "r3", "a1", "a2"]), group(&["r2"])]);
        assert_eq!(reversed, PartitionPlan::Disconnect("r2".into()));
    }

    #[test]
    fn a_split_that_leaves_a_host_whole_is_made_of_drops() {
        // An agent cut off from the replicas while the other agent reaches everyone: a
        // disconnect would cut a1 from a2 too.
        let hosts = set(&["r1", "r2", "r3", "a1", "a2"]);
        let plan = plan_partition(&hosts, &[group(&["a1"]), group(&["r1", "r2", "r3"])]);
        let PartitionPlan::Drops(drops) = plan else {
            panic!("expected drops, got {plan:?}");
        };
        assert_eq!(drops["a1"], set(&["r1", "r2", "r3"]));
        assert_eq!(drops["r2"], set(&["a1"]));
        assert!(!drops.contains_key("a2"));
    }

    #[test]
    fn fewer_than_two_groups_cut_nothing() {
        let hosts = set(&["r1", "r2"]);
        assert_eq!(
            plan_partition(&hosts, &[group(&["r1"]), group(&[])]),
            PartitionPlan::Nothing
        );
    }

    #[test]
    fn interfaces_are_read_from_ip_link_without_lo() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n\
                    14: eth0@if15: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n\
                    20: eth2@if21: <BROADCAST> mtu 1500\n";
        assert_eq!(
            interfaces(text),
            vec!["eth0".to_string(), "eth2".to_string()]
        );
    }

    #[test]
    fn loss_script_drops_on_every_interface_or_only_clears() {
        let devices = vec!["eth0".to_string(), "eth1".to_string()];
        let script = loss_script(&devices, 10);
        assert!(script.contains("devices = { \"eth0\", \"eth1\" }"));
        assert!(script.contains("numgen random mod 100 < 10 drop"));
        assert!(loss_script(&devices, 100).contains("    drop\n"));
        let cleared = loss_script(&devices, 0);
        assert!(cleared.contains("delete table netdev chaos_loss"));
        assert!(!cleared.contains("drop"));
    }

    #[test]
    fn process_start_names_this_process_and_no_dead_one() {
        let me = std::process::id();
        let start = process_start(me).expect("this process has a stat");
        assert!(owner_alive(&format!("{me}:{start}")));
        assert!(!owner_alive(&format!("{me}:{}", start + 1)));
        assert!(!owner_alive("garbage"));
        let stat = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19";
        assert_eq!(start_from_stat(stat), Some(777));
        let zombie = stat.replace(") S ", ") Z ");
        assert_eq!(
            start_from_stat(&zombie),
            None,
            "a dead process owns nothing"
        );
    }
}
