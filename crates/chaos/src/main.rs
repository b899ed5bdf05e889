//! `tanvrit-chaos`: runs fault scenarios against real `tanvrit` processes in Linux
//! network namespaces (or, with `--backend docker`, in containers) and prints one
//! verdict line per scenario.
//!
//! On the netns backend, unless told `--no-sandbox`, it first re-runs itself under
//! `unshare --user --map-root-user --net --mount --pid --fork --kill-child` with a
//! private `/run`: every namespace, replica, agent and client then lives in a network
//! namespace of its own with no route off the machine, and killing this process frees
//! everything. The Docker backend cannot live in such a sandbox (the daemon and the
//! containers are outside it); it removes its containers and networks itself, and what
//! a killed run leaves is swept by the next one (or `--cleanup`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tanvrit_chaos::netns::SANDBOX_ENV;
use tanvrit_chaos::scenario::{self, Backend, RunOptions, Scenario};

#[derive(Debug, Parser)]
#[command(
    name = "tanvrit-chaos",
    about = "Proof under faults: recorded workload, faults, history check"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenario(s) to run, comma-separated, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Run each scenario's fault schedule for minutes instead of one short cycle.
    #[arg(long)]
    long: bool,
    /// The fault backend: `netns` (processes in network namespaces) or `docker`
    /// (containers of --image).
    #[arg(long, default_value = "netns")]
    backend: String,
    /// The `tanvrit` binary [default: next to this one] (netns backend).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The image the docker backend runs (built by deploy/image/build.sh; never pulled).
    #[arg(long, default_value = tanvrit_chaos::docker::DEFAULT_IMAGE)]
    image: String,
    /// Docker backend: remove the containers and networks of runs that are gone, then
    /// exit.
    #[arg(long)]
    cleanup: bool,
    /// Where data directories, process logs and histories go.
    #[arg(long, default_value = "./chaos-data")]
    work_dir: PathBuf,
    /// How long each runnable job's process runs, in seconds [default: 0.2; 5 in
    /// agent-partition, so work is running when the agent is cut off and outlives its
    /// node's TTL].
    #[arg(long)]
    job_secs: Option<f64>,
    /// `TANVRIT_NODE_TTL` of the replicas, in ms.
    #[arg(long, default_value_t = 3000)]
    node_ttl_ms: u64,
    /// `TANVRIT_SNAPSHOT_EVERY` of the replicas: log entries between snapshots. Small,
    /// so that a replica a fault held back for even a second catches up by installing a
    /// snapshot (a short scenario writes some 450-1,500 entries; docs/chaos.md).
    #[arg(long, default_value_t = 30)]
    snapshot_every: u64,
    /// `TANVRIT_SNAPSHOT_LOGS_KEPT` of the replicas: log entries kept behind a snapshot
    /// (0: everything a snapshot covers is purged, unless being sent to a follower).
    #[arg(long, default_value_t = 0)]
    snapshot_logs_kept: u64,
    /// Run in this machine's own network namespace (needs root; adds and removes a
    /// blackhole route for the test subnet there).
    #[arg(long)]
    no_sandbox: bool,
    /// Succeed only if some scenario finds a violation (for a deliberately broken build).
    #[arg(long)]
    expect_violation: bool,
    /// Also write every report as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: the NFQUEUE packet delayer the netns backend runs in its bridge namespace.
    #[command(hide = true)]
    NfqDelay {
        #[arg(long, default_value_t = 0)]
        queue: u16,
        #[arg(long)]
        min_ms: u32,
        #[arg(long)]
        max_ms: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::NfqDelay {
        queue,
        min_ms,
        max_ms,
    }) = cli.command
    {
        return match tanvrit_chaos::nfq::run(queue, min_ms, max_ms) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nfq-delay: {e}");
                ExitCode::from(2)
            }
        };
    }
    let sandboxed = std::env::var(SANDBOX_ENV).is_ok_and(|v| v == "1");
    if cli.backend == "netns" && !sandboxed && !cli.no_sandbox {
        return match enter_sandbox() {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tanvrit-chaos: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tanvrit-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_until_signalled(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tanvrit-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Re-runs this program in a private user, network, mount and PID namespace. A SIGINT
/// or SIGTERM here SIGKILLs `unshare`, whose `--kill-child` then takes the whole
/// namespace down (unshare itself does not pass those signals on).
fn enter_sandbox() -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let exe = std::env::current_exe().context("cannot find this program")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut child = tokio::process::Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                // A private /run: `ip netns` keeps its mounts there.
                "mount -t tmpfs tmpfs /run && exec \"$@\"",
                "sh",
            ])
            .arg(&exe)
            .args(std::env::args_os().skip(1))
            .env(SANDBOX_ENV, "1")
            .spawn()
            .context("cannot run `unshare` (util-linux); or pass --no-sandbox as root")?;
        let stopped = tokio::select! {
            status = child.wait() => {
                let status = status?;
                return Ok(match status.code() {
                    Some(0) => ExitCode::SUCCESS,
                    Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
                    None => ExitCode::from(2),
                });
            }
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        let _ = child.kill().await;
        eprintln!("tanvrit-chaos: stopped; the sandbox and everything in it are gone");
        Ok(ExitCode::from(stopped))
    })
}

/// Runs the scenarios, or stops at SIGINT/SIGTERM. Inside the sandbox this process is
/// PID 1 of its PID namespace, which ignores every signal it has no handler for; and
/// when it exits the kernel kills every replica, agent and job in the namespace.
async fn run_until_signalled(cli: Cli) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = run(cli) => result,
        _ = interrupt.recv() => {
            eprintln!("tanvrit-chaos: interrupted");
            Ok(ExitCode::from(130))
        }
        _ = terminate.recv() => {
            eprintln!("tanvrit-chaos: terminated");
            Ok(ExitCode::from(143))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let backend = match cli.backend.as_str() {
        "netns" => Backend::Netns,
        "docker" => Backend::Docker {
            image: cli.image.clone(),
        },
        other => bail!("unknown backend `{other}` (`netns` or `docker`)"),
    };
    if cli.cleanup {
        if backend == Backend::Netns {
            bail!("--cleanup is for --backend docker (the netns sandbox frees everything)");
        }
        let removed = tanvrit_chaos::docker::cleanup_stale().await?;
        for name in &removed {
            println!("removed {name}");
        }
        println!("cleanup: {} left by dead runs removed", removed.len());
        return Ok(ExitCode::SUCCESS);
    }
    if backend != Backend::Netns && cli.bin.is_some() {
        bail!("--bin is for the netns backend; containers run their image's `tanvrit` (--image)");
    }
    let scenarios: Vec<Scenario> = if cli.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        cli.scenario
            .split(',')
            .map(|name| {
                Scenario::parse(name.trim()).with_context(|| {
                    let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown scenario `{name}` (known: {})", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let bin = match cli.bin {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .join("tanvrit"),
    };
    if backend == Backend::Netns && !bin.exists() {
        bail!(
            "no tanvrit binary at {} (build it, or pass --bin)",
            bin.display()
        );
    }
    std::fs::create_dir_all(&cli.work_dir)?;
    let options = RunOptions {
        backend,
        bin: std::fs::canonicalize(&bin).unwrap_or(bin),
        work_dir: std::fs::canonicalize(&cli.work_dir)?,
        long: cli.long,
        no_sandbox: cli.no_sandbox,
        job_secs: cli.job_secs,
        node_ttl: Duration::from_millis(cli.node_ttl_ms),
        snapshot_every: cli.snapshot_every,
        snapshot_logs_kept: cli.snapshot_logs_kept,
    };
    let mut json = match &cli.json {
        Some(path) => Some(std::fs::File::create(path)?),
        None => None,
    };
    let mut violations = 0;
    let mut errors = 0;
    for scenario in scenarios {
        match scenario::run(scenario, &options).await {
            Ok(report) => {
                println!("{}", report.line());
                for note in &report.notes {
                    println!("    note: {note}");
                }
                for violation in &report.verdict.violations {
                    println!("    {}: {}", violation.kind, violation.detail);
                }
                if !report.verdict.ok() {
                    violations += 1;
                }
                if let Some(file) = json.as_mut() {
                    use std::io::Write;
                    serde_json::to_writer(&mut *file, &report)?;
                    writeln!(file)?;
                }
            }
            Err(e) => {
                errors += 1;
                println!("{:<19} ERROR {} ({})", scenario.name(), e, e.code());
            }
        }
    }
    println!("summary: {violations} scenario(s) with violations, {errors} harness error(s)");
    Ok(if errors > 0 {
        ExitCode::from(2)
    } else if cli.expect_violation {
        if violations > 0 {
            ExitCode::SUCCESS
        } else {
            println!("expected a violation (a deliberately broken build), found none");
            ExitCode::FAILURE
        }
    } else if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
