//! [`NetnsFabric`]: hosts as Linux network namespaces on a private bridge, no Docker.
//!
//! The bridge lives in a namespace of its own (a DROP policy in the root namespace's
//! FORWARD chain would otherwise eat bridged traffic); each host gets a namespace with
//! one veth (`eth0`, 10.201.0.N/24) into it, and the namespace the harness runs in gets
//! one too (10.201.0.254), so the workload's clients reach every host. Faults:
//! partitions are nftables INPUT rules inside the cut-off hosts (INPUT, not OUTPUT: an
//! OUTPUT drop fails `connect` at once with EPERM, which no real network does); loss is
//! an nftables `numgen random` drop on the host's bridge port; delay sends the host's
//! bridge port through NFQUEUE to [`crate::nfq`], our delayer (the kernel here has no
//! netem). A blackhole route for 10.201.0.0/16 in the harness's namespace guards the
//! machine's real network from a stray packet.
//!
//! Meant to run inside `unshare --user --map-root-user --net --mount --pid --fork
//! --kill-child` (see `main.rs`), so killing the harness frees every namespace and
//! process and nothing can leave the machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::fabric::{Fabric, FabricError, Launch};

/// The test subnet: hosts are 10.201.0.1-253, the harness 10.201.0.254.
pub const SUBNET: &str = "10.201.0.0/16";
/// The harness's own address on the bridge.
pub const CLIENT_ADDR: &str = "10.201.0.254";
/// Set by the sandbox runner: this process has a network namespace of its own.
pub const SANDBOX_ENV: &str = "TANVRIT_CHAOS_SANDBOX";
/// How long a process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The NFQUEUE number the delayer reads.
const QUEUE: u16 = 0;

/// One host of the fabric.
struct Host {
    ip: String,
    ns: String,
    /// The host's port on the bridge.
    port: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    launch: Option<Launch>,
}

/// Hosts in network namespaces on a private bridge (see the module docs).
pub struct NetnsFabric {
    prefix: String,
    bridge_ns: String,
    client_link: String,
    bin: PathBuf,
    hosts: BTreeMap<String, Host>,
    loss: BTreeMap<String, u8>,
    delay: BTreeMap<String, (u32, u32)>,
    delayer: Option<Child>,
    guard_added: bool,
    torn_down: bool,
}

/// Runs `program args` and fails with its stderr unless it exits 0.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), FabricError> {
    let command_line = format!("{program} {}", args.join(" "));
    let failed = |message: String| FabricError::Command {
        command: command_line.clone(),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

async fn ip(args: &[&str]) -> Result<(), FabricError> {
    run("ip", args, None).await
}

/// Sends a signal to a child we own.
fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: a plain syscall on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

impl NetnsFabric {
    /// Creates the bridge, the harness's link and one namespace per host (`hosts[i]`
    /// gets 10.201.0.(i+1)); data directories and logs go under `work_dir`. Refuses to
    /// run outside the sandbox unless `allow_host_netns` (then the blackhole guard is
    /// added to, and removed from, the machine's own routing table).
    pub async fn create(
        bin: &Path,
        work_dir: &Path,
        hosts: &[String],
        allow_host_netns: bool,
    ) -> Result<Self, FabricError> {
        let sandboxed = std::env::var(SANDBOX_ENV).is_ok_and(|v| v == "1");
        if !sandboxed && !allow_host_netns {
            return Err(FabricError::Unsafe(format!(
                "not inside the sandbox ({SANDBOX_ENV}=1); run through `tanvrit-chaos` \
                 without --no-sandbox, or pass --no-sandbox deliberately"
            )));
        }
        if hosts.len() > 250 {
            return Err(FabricError::Unsafe("at most 250 hosts".into()));
        }
        let prefix = format!("tc{}", std::process::id() % 100_000);
        let mut fabric = NetnsFabric {
            bridge_ns: format!("{prefix}br"),
            client_link: format!("{prefix}c"),
            prefix,
            bin: bin.to_path_buf(),
            hosts: BTreeMap::new(),
            loss: BTreeMap::new(),
            delay: BTreeMap::new(),
            delayer: None,
            guard_added: false,
            torn_down: false,
        };
        std::fs::create_dir_all(work_dir)?;
        // The guard first: from here on a stray packet to the subnet stays on this box.
        match ip(&["route", "add", "blackhole", SUBNET]).await {
            Ok(()) => fabric.guard_added = true,
            Err(FabricError::Command { message, .. }) if message.contains("File exists") => {}
            Err(e) => return Err(e),
        }
        if let Err(e) = fabric.build(work_dir, hosts).await {
            fabric.teardown().await;
            return Err(e);
        }
        Ok(fabric)
    }

    async fn build(&mut self, work_dir: &Path, hosts: &[String]) -> Result<(), FabricError> {
        let br = self.bridge_ns.clone();
        ip(&["link", "set", "lo", "up"]).await?;
        ip(&["netns", "add", &br]).await?;
        ip(&["-n", &br, "link", "set", "lo", "up"]).await?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]).await?;
        ip(&["-n", &br, "link", "set", "br0", "up"]).await?;
        // The harness's own leg.
        let client = self.client_link.clone();
        ip(&[
            "link", "add", &client, "type", "veth", "peer", "name", "hc", "netns", &br,
        ])
        .await?;
        ip(&["-n", &br, "link", "set", "hc", "master", "br0", "up"]).await?;
        ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", &client]).await?;
        ip(&["link", "set", &client, "up"]).await?;
        for (i, name) in hosts.iter().enumerate() {
            let ns = format!("{}{name}", self.prefix);
            let port = format!("h{name}");
            let address = format!("10.201.0.{}", i + 1);
            ip(&["netns", "add", &ns]).await?;
            let host = Host {
                ip: address.clone(),
                ns: ns.clone(),
                port: port.clone(),
                data_dir: work_dir.join(name),
                log: work_dir.join(format!("{name}.log")),
                child: None,
                launch: None,
            };
            self.hosts.insert(name.clone(), host);
            ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
            ip(&[
                "link", "add", &port, "netns", &br, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])
            .await?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]).await?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])
            .await?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
            std::fs::create_dir_all(work_dir.join(name))?;
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

    /// Rewrites the bridge's loss table from `self.loss`.
    async fn apply_loss(&self) -> Result<(), FabricError> {
        let mut rules = String::new();
        for (name, percent) in self.loss.iter().filter(|(_, p)| **p > 0) {
            let port = &self.host(name)?.port;
            // `mod 100 < 100` is out of nft's range: everything is plain `drop`.
            let draw = if *percent >= 100 {
                String::new()
            } else {
                format!("numgen random mod 100 < {percent} ")
            };
            rules.push_str(&format!("    iifname \"{port}\" {draw}drop\n"));
        }
        let script = format!(
            "add table bridge chaos_loss\ndelete table bridge chaos_loss\n\
             table bridge chaos_loss {{\n  chain c {{\n    type filter hook forward priority 0;\n{rules}  }}\n}}\n"
        );
        run(
            "ip",
            &["netns", "exec", &self.bridge_ns, "nft", "-f", "-"],
            Some(&script),
        )
        .await
    }

    /// Rewrites the bridge's NFQUEUE rules from `self.delay` and (re)starts the delayer.
    async fn apply_delay(&mut self) -> Result<(), FabricError> {
        if let Some(mut delayer) = self.delayer.take() {
            signal(&delayer, libc::SIGKILL);
            let _ = delayer.wait().await;
        }
        let br = self.bridge_ns.clone();
        run(
            "ip",
            &["netns", "exec", &br, "iptables", "-F", "FORWARD"],
            None,
        )
        .await?;
        let active: Vec<(String, (u32, u32))> = self
            .delay
            .iter()
            .filter(|(_, (_, max))| *max > 0)
            .map(|(name, range)| (name.clone(), *range))
            .collect();
        if active.is_empty() {
            return Ok(());
        }
        // One delayer for every delayed port; it draws each packet's delay from the
        // widest range asked (scenarios delay whole regions alike).
        let min = active.iter().map(|(_, (min, _))| *min).min().unwrap_or(0);
        let max = active.iter().map(|(_, (_, max))| *max).max().unwrap_or(0);
        let exe = std::env::current_exe()?;
        let exe = exe.to_string_lossy().to_string();
        let mut delayer = Command::new("ip")
            .args(["netns", "exec", &br, &exe, "nfq-delay"])
            .args(["--queue", &QUEUE.to_string()])
            .args(["--min-ms", &min.to_string(), "--max-ms", &max.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        // Wait for it to bind the queue before packets are sent to it.
        let stdout = delayer.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        if !matches!(ready, Ok(Ok(Some(ref line))) if line.starts_with("nfq-delay ready")) {
            signal(&delayer, libc::SIGKILL);
            let _ = delayer.wait().await;
            return Err(FabricError::NotReady {
                host: "nfq-delay".into(),
                message: format!("{ready:?}"),
            });
        }
        self.delayer = Some(delayer);
        for (name, _) in &active {
            let port = self.host(name)?.port.clone();
            // Both directions through the host's port: its round trip to anyone grows
            // by two delays. A packet is queued once (an accept verdict ends the chain).
            for direction in ["--physdev-in", "--physdev-out"] {
                let queue = QUEUE.to_string();
                let args = [
                    "netns",
                    "exec",
                    &br,
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-m",
                    "physdev",
                    direction,
                    &port,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                    "--queue-bypass",
                ];
                run("ip", &args, None).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Fabric for NetnsFabric {
    fn address(&self, host: &str) -> Result<String, FabricError> {
        Ok(self.host(host)?.ip.clone())
    }

    fn data_dir(&self, host: &str) -> Result<PathBuf, FabricError> {
        Ok(self.host(host)?.data_dir.clone())
    }

    async fn spawn(&mut self, name: &str) -> Result<String, FabricError> {
        let bin = self.bin.clone();
        let host = self.host_mut(name)?;
        let launch = host
            .launch
            .clone()
            .ok_or_else(|| FabricError::UnknownHost(format!("{name} was never started")))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)?;
        let mut command = Command::new("ip");
        for (var, _) in std::env::vars() {
            if var.starts_with("TANVRIT_") {
                command.env_remove(var);
            }
        }
        command
            .args(["netns", "exec", &host.ns])
            .arg(&bin)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let prefix = launch.ready_prefix.clone();
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
                signal(&child, libc::SIGKILL);
                let _ = child.wait().await;
                return Err(FabricError::NotReady {
                    host: name.to_string(),
                    message: match other {
                        Ok(_) => format!("exited first (see {})", host.log.display()),
                        Err(_) => format!("no `{prefix}` line in {READY_TIMEOUT:?}"),
                    },
                });
            }
        };
        // Keep draining stdout into the log so the process never blocks on a full pipe.
        let mut log = tokio::fs::File::from_std(log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        host.child = Some(child);
        Ok(rest)
    }

    async fn start(&mut self, host: &str, launch: Launch) -> Result<String, FabricError> {
        self.host_mut(host)?.launch = Some(launch);
        self.spawn(host).await
    }

    async fn kill(&mut self, host: &str) -> Result<(), FabricError> {
        if let Some(mut child) = self.host_mut(host)?.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait().await;
        }
        Ok(())
    }

    async fn stop(&mut self, host: &str) -> Result<(), FabricError> {
        if let Some(mut child) = self.host_mut(host)?.child.take() {
            signal(&child, libc::SIGCONT);
            signal(&child, libc::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                signal(&child, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
        Ok(())
    }

    async fn pause(&mut self, host: &str) -> Result<(), FabricError> {
        if let Some(child) = &self.host(host)?.child {
            signal(child, libc::SIGSTOP);
        }
        Ok(())
    }

    async fn resume(&mut self, host: &str) -> Result<(), FabricError> {
        if let Some(child) = &self.host(host)?.child {
            signal(child, libc::SIGCONT);
        }
        Ok(())
    }

    fn is_running(&self, host: &str) -> bool {
        self.hosts.get(host).is_some_and(|h| h.child.is_some())
    }

    async fn partition(&mut self, groups: &[Vec<String>]) -> Result<(), FabricError> {
        self.heal().await?;
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != g)
                .flat_map(|(_, hosts)| hosts.iter())
                .map(|h| self.address(h))
                .collect::<Result<_, _>>()?;
            if others.is_empty() {
                continue;
            }
            let set = others.join(", ");
            for name in group {
                let ns = self.host(name)?.ns.clone();
                // Each side drops what arrives from the other: a two-way cut, and every
                // sender sees silence (not an error), as on a real network.
                let script = format!(
                    "table inet chaos_part {{\n  chain i {{\n    type filter hook input priority 0;\n    ip saddr {{ {set} }} drop\n  }}\n}}\n"
                );
                run(
                    "ip",
                    &["netns", "exec", &ns, "nft", "-f", "-"],
                    Some(&script),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn heal(&mut self) -> Result<(), FabricError> {
        for host in self.hosts.values() {
            let script = "add table inet chaos_part\ndelete table inet chaos_part\n";
            run(
                "ip",
                &["netns", "exec", &host.ns, "nft", "-f", "-"],
                Some(script),
            )
            .await?;
        }
        Ok(())
    }

    async fn set_loss(&mut self, host: &str, percent: u8) -> Result<(), FabricError> {
        self.host(host)?;
        self.loss.insert(host.to_string(), percent.min(100));
        self.apply_loss().await
    }

    async fn set_delay(&mut self, host: &str, min_ms: u32, max_ms: u32) -> Result<(), FabricError> {
        self.host(host)?;
        self.delay
            .insert(host.to_string(), (min_ms.min(max_ms), max_ms));
        self.apply_delay().await
    }

    async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // Processes first: a namespace with a process inside only loses its name.
        if let Some(mut delayer) = self.delayer.take() {
            signal(&delayer, libc::SIGKILL);
            let _ = delayer.wait().await;
        }
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in &names {
            let _ = self.kill(name).await;
        }
        for host in self.hosts.values() {
            let _ = ip(&["netns", "del", &host.ns]).await;
        }
        let _ = ip(&["netns", "del", &self.bridge_ns]).await;
        let _ = ip(&["link", "del", &self.client_link]).await;
        if self.guard_added {
            let _ = ip(&["route", "del", "blackhole", SUBNET]).await;
        }
    }
}
