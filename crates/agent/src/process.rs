//! Running one attempt's process: spawned in its own process group (and, with
//! isolation, its own cgroup, uid and private directory: see [`crate::isolation`]; a job
//! naming an `image` runs in a container instead: see [`crate::docker`]) with
//! the job's argv (or `/bin/sh -c`), a clean environment (the job's variables plus the
//! documented `TANVRIT_*` ones) and working directory; stdout and stderr share one pipe
//! so their interleaving is kept; output decoded and spooled as it arrives; stopped with
//! SIGTERM to the whole group, then SIGKILL (to the whole cgroup too) after the grace
//! period, on a timeout, a cancel or an agent shutdown.
//!
//! The job ends when its main process exits: anything it left running in its process
//! group (or cgroup) is killed then, and output still arriving from processes outside the
//! group is read for at most [`DRAIN_AFTER_EXIT`]. A job the kernel killed for going over
//! its memory ends `failed` with a reason starting [`REASON_OOM_KILLED`].

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tanvrit_client::api::{
    AttemptFinishedRequest, AttemptId, AttemptOutcome, AttemptUsage, JobId, JobSpec,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::cgroup::{Limits, Usage};
use crate::docker::Container;
use crate::gpus::{GpuLease, ENV_CUDA_VISIBLE_DEVICES, ENV_NVIDIA_VISIBLE_DEVICES};
use crate::isolation::{safe_name, Isolation};
use crate::sandbox::Sandbox;
use crate::spool::Spool;
use crate::utf8::Utf8Stream;

/// After the main process exited, how long output from processes that escaped its group
/// (and still hold the pipe) is waited for.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Environment variable naming the job, set for every process.
pub const ENV_JOB_ID: &str = "TANVRIT_JOB_ID";
/// Environment variable naming the attempt, set for every process.
pub const ENV_ATTEMPT_ID: &str = "TANVRIT_ATTEMPT_ID";
/// Environment variable: the CPU the attempt was given, in millicores.
pub const ENV_CPU_MILLIS: &str = "TANVRIT_CPU_MILLIS";
/// Environment variable: the memory the attempt was given, in MB.
pub const ENV_MEMORY_MB: &str = "TANVRIT_MEMORY_MB";
/// Environment variable: the GPUs the attempt was given.
pub const ENV_GPUS: &str = "TANVRIT_GPUS";
/// `PATH` of a job that sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How the reason of an attempt the kernel killed for memory begins (the outcome is
/// `failed`); programs may match on it.
pub const REASON_OOM_KILLED: &str = "oom_killed";
/// Reason recorded for an attempt stopped because the agent's lease ran out.
pub const REASON_LEASE_EXPIRED: &str = "the agent lost contact with the control plane for \
     nearly the node TTL (its lease ran out) and stopped the process, as the control plane \
     may retry the job elsewhere";

/// Why the agent stops a running process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The control plane said so (cancel, lost, no longer current): reported `cancelled`.
    Cancelled,
    /// The agent itself is shutting down: reported `failed` with reason `agent stopped`.
    AgentStopped,
    /// The agent's lease ran out (it has not heard from the control plane for nearly a
    /// node TTL): reported `failed` with reason [`REASON_LEASE_EXPIRED`]. The process gets
    /// at most `grace` (not the configured one) between SIGTERM and SIGKILL, and this
    /// shortens the grace of a stop already under way, so it is gone before the control
    /// plane may retry its job elsewhere.
    LeaseExpired {
        /// Between SIGTERM and SIGKILL.
        grace: Duration,
    },
}

impl StopReason {
    /// The grace between SIGTERM and SIGKILL for this stop, given the configured one.
    fn grace(self, configured: Duration) -> Duration {
        match self {
            StopReason::LeaseExpired { grace } => grace.min(configured),
            StopReason::Cancelled | StopReason::AgentStopped => configured,
        }
    }
}

/// What [`run`] needs besides the spool.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: AttemptId,
    /// What to run.
    pub spec: JobSpec,
    /// The working directory when the spec names none; created before the start and
    /// removed after the end.
    pub scratch_dir: PathBuf,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How the process is kept apart (cgroup, uid, private directory), or not.
    pub isolation: Arc<Isolation>,
}

/// Why the process ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Timeout,
    Told(StopReason),
}

/// Runs the attempt to its end: marks it started, spools its output (waking `notify`),
/// obeys `stop`, and returns (and records in the spool) its result.
pub async fn run(
    run: &RunSpec,
    spool: &Spool,
    notify: &Notify,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> AttemptFinishedRequest {
    // Its GPUs first (given back when this returns): an attempt that cannot have the
    // ones it was placed for runs nothing.
    let gpus = run.isolation.gpus().take(run.spec.resources.gpus);
    let sandbox = match &gpus {
        None => Err(format!(
            "the job asks for {} GPUs; this node has {} and not that many free",
            run.spec.resources.gpus,
            run.isolation.gpus().len()
        )),
        Some(_) => run
            .isolation
            .sandbox(&run.attempt, &run.spec.resources, &run.scratch_dir),
    };
    let devices = gpus
        .as_ref()
        .map(GpuLease::visible_devices)
        .unwrap_or_default();
    let result = match sandbox {
        Err(message) => finished(AttemptOutcome::Failed, None, Some(message)),
        Ok(sandbox) => {
            let result = match spawn(run, sandbox.as_ref(), &devices) {
                Ok(spawned) => {
                    supervise(run, spawned, sandbox.as_ref(), spool, notify, &mut stop).await
                }
                Err(message) => finished(AttemptOutcome::Failed, None, Some(message)),
            };
            if let Some(sandbox) = sandbox {
                sandbox.release().await;
            }
            result
        }
    };
    let _ = std::fs::remove_dir_all(&run.scratch_dir);
    spool.finish(&run.attempt, result.clone());
    notify.notify_one();
    result
}

pub(crate) struct Spawned {
    pub(crate) child: tokio::process::Child,
    pub(crate) pgid: i32,
    pub(crate) output: tokio::net::unix::pipe::Receiver,
    /// The attempt's container, for a job naming an image.
    pub(crate) container: Option<Container>,
}

fn spawn(run: &RunSpec, sandbox: Option<&Sandbox>, gpus: &str) -> Result<Spawned, String> {
    let spec = &run.spec;
    let (program, args): (&str, Vec<&str>) = match (&spec.shell, spec.command.split_first()) {
        (Some(shell), _) => ("/bin/sh", vec!["-c", shell.as_str()]),
        (None, Some((first, rest))) => (first.as_str(), rest.iter().map(String::as_str).collect()),
        (None, None) => return Err("the job has neither a command nor a shell string".into()),
    };
    if sandbox.is_none() {
        // With a sandbox, the private directory was made for the attempt's uid.
        std::fs::create_dir_all(&run.scratch_dir).map_err(|e| {
            format!(
                "cannot create the working directory {}: {e}",
                run.scratch_dir.display()
            )
        })?;
    }
    let dir: PathBuf = match &spec.working_dir {
        Some(dir) => PathBuf::from(dir),
        None => run.scratch_dir.clone(),
    };
    let resources = sandbox.map(Sandbox::limits);
    let pipe_error = |e: std::io::Error| format!("cannot create the output pipe: {e}");
    let (writer, reader) = tokio::net::unix::pipe::pipe().map_err(pipe_error)?;
    let stdout = writer.into_blocking_fd().map_err(pipe_error)?;
    let stderr = stdout.try_clone().map_err(pipe_error)?;
    let env = job_env(run, resources, gpus);
    if let Some(image) = &spec.image {
        return crate::docker::spawn_container(
            run,
            image,
            sandbox,
            &env,
            stdout.into(),
            stderr.into(),
            reader,
        );
    }

    let mut command = tokio::process::Command::new(program);
    command
        .args(&args)
        // Nothing of the agent's environment (its key above all) reaches the job.
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        // Its own group: signals reach everything it starts, and a terminal's Ctrl-C
        // aimed at the agent does not reach it.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(sandbox) = sandbox {
        // SAFETY: the hook makes only async-signal-safe calls (see `Sandbox::install`).
        unsafe { sandbox.install(&mut command, &dir, &run.scratch_dir)? };
    } else {
        command.current_dir(&dir);
        // SAFETY: runs in the forked child before exec; prctl and getppid are
        // async-signal-safe and touch no memory of the parent.
        unsafe { die_with_the_agent(&mut command) };
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    // The command holds the pipe's write ends; without dropping them, EOF never comes.
    drop(command);
    let pgid = child.id().map(|pid| pid as i32).unwrap_or(0);
    Ok(Spawned {
        child,
        pgid,
        output: reader,
        container: None,
    })
}

/// The job's environment: for a host command a PATH, HOME and TMPDIR it may replace
/// (a container keeps its image's), its own variables, then the documented ones, which
/// it may not, the GPU devices it holds (`gpus`, comma-separated) among them.
fn job_env(run: &RunSpec, limits: Option<Limits>, gpus: &str) -> BTreeMap<String, String> {
    let spec = &run.spec;
    let mut env = BTreeMap::new();
    if spec.image.is_none() {
        let scratch = run.scratch_dir.display().to_string();
        env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        env.insert("HOME".to_string(), scratch.clone());
        env.insert("TMPDIR".to_string(), scratch);
    }
    env.extend(spec.env.clone());
    let cpu = limits.map_or(spec.resources.cpu_millis, |l| l.cpu_millis);
    let memory = limits.map_or(spec.resources.memory_mb, |l| l.memory_bytes / (1024 * 1024));
    for (key, value) in [
        (ENV_JOB_ID, run.job.to_string()),
        (ENV_ATTEMPT_ID, run.attempt.to_string()),
        (ENV_CPU_MILLIS, cpu.to_string()),
        (ENV_MEMORY_MB, memory.to_string()),
        (ENV_GPUS, spec.resources.gpus.to_string()),
        // Only its own devices; none for a job that asked for none (an empty list, not
        // an unset variable, which would mean every device).
        (ENV_CUDA_VISIBLE_DEVICES, gpus.to_string()),
        (
            ENV_NVIDIA_VISIBLE_DEVICES,
            if gpus.is_empty() { "void" } else { gpus }.to_string(),
        ),
    ] {
        env.insert(key.to_string(), value);
    }
    env
}

/// Without a sandbox: the job is killed when the agent dies.
///
/// # Safety
/// Installs a `pre_exec` hook that makes only async-signal-safe calls.
pub(crate) unsafe fn die_with_the_agent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let agent = libc::getpid();
        command.pre_exec(move || {
            // If the agent dies (even by SIGKILL) the job is killed too, rather than left
            // running unsupervised while the control plane retries it elsewhere.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != agent {
                // The agent died between fork and prctl.
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

async fn supervise(
    run: &RunSpec,
    spawned: Spawned,
    sandbox: Option<&Sandbox>,
    spool: &Spool,
    notify: &Notify,
    stop: &mut watch::Receiver<Option<StopReason>>,
) -> AttemptFinishedRequest {
    let Spawned {
        mut child,
        pgid,
        mut output,
        container,
    } = spawned;
    spool.mark_started(&run.attempt, now_ms());
    notify.notify_one();
    let timeout = (run.spec.timeout_secs > 0).then(|| Duration::from_secs(run.spec.timeout_secs));
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = timeout.map_or(far, |t| Instant::now() + t);

    let mut decoder = Utf8Stream::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cause: Option<Cause> = None;
    let mut kill_at: Option<Instant> = None;
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut eof = false;
    let mut drain_until: Option<Instant> = None;
    let mut stop_open = true;
    if let Some(reason) = *stop.borrow_and_update() {
        cause = Some(Cause::Told(reason));
        signal_group(pgid, libc::SIGTERM);
        kill_at = Some(Instant::now() + reason.grace(run.stop_grace));
    }
    while !(status.is_some() && eof) {
        tokio::select! {
            read = output.read(&mut buf), if !eof => match read {
                Ok(0) => eof = true,
                Ok(n) => {
                    spool.append(&run.attempt, &decoder.push(&buf[..n]));
                    notify.notify_one();
                }
                Err(e) => {
                    tracing::warn!(attempt = %run.attempt, error = %e, "cannot read the job's output");
                    eof = true;
                }
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                // Whatever the main process left behind in its group (or cgroup) goes
                // with it.
                signal_group(pgid, libc::SIGKILL);
                if let Some(sandbox) = sandbox {
                    sandbox.kill_all();
                }
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = tokio::time::sleep_until(deadline), if cause.is_none() && status.is_none() => {
                cause = Some(Cause::Timeout);
                signal_group(pgid, libc::SIGTERM);
                kill_at = Some(Instant::now() + run.stop_grace);
            }
            changed = stop.changed(), if stop_open && status.is_none() => {
                match changed {
                    Ok(()) => match (*stop.borrow_and_update(), cause) {
                        (None, _) => {}
                        (Some(reason), None) => {
                            cause = Some(Cause::Told(reason));
                            signal_group(pgid, libc::SIGTERM);
                            kill_at = Some(Instant::now() + reason.grace(run.stop_grace));
                        }
                        // Already stopping (timeout, cancel): only a shorter grace
                        // changes anything; the cause reported stays the first one.
                        (Some(reason), Some(_)) => {
                            let sooner = Instant::now() + reason.grace(run.stop_grace);
                            kill_at = kill_at.map(|at| at.min(sooner));
                        }
                    },
                    Err(_) => stop_open = false,
                }
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() && status.is_none() => {
                signal_group(pgid, libc::SIGKILL);
                if let Some(sandbox) = sandbox {
                    sandbox.kill_all();
                }
                if let Some(c) = &container {
                    c.docker.kill(&c.name);
                }
                kill_at = None;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                tracing::warn!(attempt = %run.attempt, "output still open after the process exited; not waiting for it");
                break;
            }
        }
    }
    let tail = decoder.finish();
    if !tail.is_empty() {
        spool.append(&run.attempt, &tail);
    }
    // A container: what the engine recorded (an OOM kill), then it goes.
    let container_usage = match &container {
        Some(c) => {
            let usage = c.docker.usage(&c.name).await;
            if !c.docker.remove(&c.name).await {
                tracing::error!(container = c.name, "cannot remove the attempt's container");
            }
            Some(usage)
        }
        None => None,
    };
    let status = match status {
        Some(Ok(status)) => status,
        Some(Err(e)) => {
            return finished(
                AttemptOutcome::Failed,
                None,
                Some(format!("cannot wait for the process: {e}")),
            )
        }
        None => unreachable!("the loop ends only after the process exited"),
    };
    let usage = match &container_usage {
        Some(usage) => Some(*usage),
        None => sandbox.map(Sandbox::usage),
    };
    if let (Some(usage), Some(sandbox)) = (usage, sandbox) {
        tracing::info!(
            attempt = %run.attempt,
            uid = sandbox.uid(),
            cpu_ms = usage.cpu_ns.map(|ns| ns / 1_000_000),
            peak_memory_mb = usage.peak_memory_bytes.map(|b| b / (1024 * 1024)),
            oom_kills = usage.oom_kills,
            "usage measured by the attempt's cgroup"
        );
    }
    let memory_mb = match &container {
        Some(c) => c.memory_mb,
        None => sandbox.map_or(0, |s| s.limits().memory_bytes / (1024 * 1024)),
    };
    let mut result = classify(cause, status, run.spec.timeout_secs, usage, memory_mb);
    result.usage = usage
        .filter(|u| u.cpu_ns.is_some() || u.peak_memory_bytes.is_some())
        .map(|u| AttemptUsage {
            cpu_ms: u.cpu_ns.map(|ns| ns / 1_000_000),
            peak_memory_bytes: u.peak_memory_bytes,
        });
    result
}

/// The result for how the process ended, why the agent ended it (if it did), and
/// whether the kernel killed part of it for memory.
fn classify(
    cause: Option<Cause>,
    status: ExitStatus,
    timeout_secs: u64,
    usage: Option<Usage>,
    memory_mb: u64,
) -> AttemptFinishedRequest {
    let code = status.code();
    let oom_kills = usage.map_or(0, |u| u.oom_kills);
    if cause.is_none() && !status.success() && oom_kills > 0 {
        return finished(
            AttemptOutcome::Failed,
            code,
            Some(format!(
                "{REASON_OOM_KILLED}: the kernel killed {} for going over the {memory_mb} MB \
                 memory limit",
                if oom_kills == 1 {
                    "a process".to_string()
                } else {
                    format!("{oom_kills} processes")
                }
            )),
        );
    }
    match cause {
        Some(Cause::Timeout) => finished(
            AttemptOutcome::TimedOut,
            code,
            Some(format!("timed out after {timeout_secs}s")),
        ),
        Some(Cause::Told(StopReason::Cancelled)) => {
            finished(AttemptOutcome::Cancelled, code, Some("cancelled".into()))
        }
        Some(Cause::Told(StopReason::AgentStopped)) => finished(
            AttemptOutcome::Failed,
            code,
            Some("agent stopped: the process was stopped with it".into()),
        ),
        Some(Cause::Told(StopReason::LeaseExpired { .. })) => finished(
            AttemptOutcome::Failed,
            code,
            Some(REASON_LEASE_EXPIRED.into()),
        ),
        None => match (code, status.signal()) {
            (Some(0), _) => finished(AttemptOutcome::Succeeded, Some(0), None),
            (Some(code), _) => finished(
                AttemptOutcome::Failed,
                Some(code),
                Some(format!("exited with code {code}")),
            ),
            (None, Some(signal)) => finished(
                AttemptOutcome::Failed,
                None,
                Some(format!(
                    "killed by signal {signal} ({})",
                    signal_name(signal)
                )),
            ),
            (None, None) => finished(
                AttemptOutcome::Failed,
                None,
                Some("ended without an exit code".into()),
            ),
        },
    }
}

fn finished(
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> AttemptFinishedRequest {
    AttemptFinishedRequest {
        outcome,
        exit_code,
        reason,
        finished_at: Some(now_ms()),
        usage: None,
    }
}

/// Sends `signal` to every process of the group `pgid` (no-op for an empty group).
fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: a plain syscall; a negative pid addresses the process group we created.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// The conventional name of a signal number.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The scratch directory of an attempt under `work_root`.
pub fn scratch_dir(work_root: &Path, attempt: &AttemptId) -> PathBuf {
    work_root.join(safe_name(attempt))
}

#[cfg(test)]
mod tests;
