//! The `docker` driver: a job naming an `image` runs in a container of the Docker engine,
//! started through the `docker` CLI (`docker run`, attached, so its output and exit code
//! come back as a host command's would). The container gets the attempt's limits as
//! Docker flags (`--memory` with no swap beyond it, `--cpus`, `--pids-limit`), a non-root
//! user (the attempt's uid under `cgroup` isolation, else `nobody`), no capabilities,
//! `no-new-privileges`, only the job's environment and the documented `TANVRIT_*`
//! variables (passed by name, their values in the CLI's environment, so no value shows in
//! a command line), and no network unless the job asks for one. Images come from the node's
//! local store only (`--pull never`): no registry is ever contacted.
//!
//! Stops: SIGTERM goes to the `docker run` process, which passes it to the container;
//! the SIGKILL after the grace period is `docker kill`, and the container is removed when
//! the attempt ends, so nothing of it outlives the attempt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tanvrit_client::api::{AttemptId, JobSpec};

use crate::cgroup::{Limits, Usage};
use crate::isolation::safe_name;
use crate::process::{RunSpec, Spawned};
use crate::sandbox::Sandbox;

/// The `docker` CLI used unless configured.
pub const DEFAULT_DOCKER_BIN: &str = "docker";
/// The user a container runs as when the agent has no uid of its own for the attempt
/// (`--isolation none`): `nobody`.
pub const NOBODY: u32 = 65534;
/// The agent's environment variables the `docker` CLI keeps: how it finds the engine.
const CLI_ENV: [&str; 7] = [
    "PATH",
    "HOME",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
];
/// Prefix of the containers the agent starts: `tanvrit-<attempt>`.
pub const CONTAINER_PREFIX: &str = "tanvrit-";

/// The Docker engine, reached through its CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Docker {
    bin: PathBuf,
}

impl Docker {
    /// The engine behind `bin`, checked by asking it for its version (blocking: call it
    /// at start). Fails, saying why, when the CLI or the engine does not answer.
    pub fn detect(bin: impl Into<PathBuf>) -> Result<Self, String> {
        let bin = bin.into();
        let output = std::process::Command::new(&bin)
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !output.status.success() {
            return Err(format!(
                "the Docker engine does not answer `{} version`: {}",
                bin.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        tracing::info!(
            version = String::from_utf8_lossy(&output.stdout).trim(),
            "docker driver enabled"
        );
        Ok(Self { bin })
    }

    /// The CLI's path.
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// The container name of `attempt`.
    pub fn container_name(attempt: &AttemptId) -> String {
        format!("{CONTAINER_PREFIX}{}", safe_name(attempt))
    }

    /// The arguments of `docker run` for one attempt: attached, limited, as `uid`, with
    /// exactly `env`, in `image`, running the job's argv (or `/bin/sh -c` its shell
    /// string).
    pub fn run_args(
        name: &str,
        image: &str,
        spec: &JobSpec,
        limits: &Limits,
        uid: u32,
        env: &[(String, String)],
    ) -> Vec<String> {
        let memory = limits.memory_bytes.to_string();
        let mut args: Vec<String> = vec![
            "run".into(),
            // A real init as PID 1: signals reach the job, and zombies are reaped.
            "--init".into(),
            "--name".into(),
            name.into(),
            "--pull".into(),
            "never".into(),
            "--memory".into(),
            memory.clone(),
            // Memory plus swap = memory: no swap beyond the limit.
            "--memory-swap".into(),
            memory,
            "--cpus".into(),
            format!(
                "{}.{:03}",
                limits.cpu_millis / 1000,
                limits.cpu_millis % 1000
            ),
            "--pids-limit".into(),
            limits.pids_max.to_string(),
            "--user".into(),
            format!("{uid}:{uid}"),
            "--cap-drop".into(),
            "ALL".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "--network".into(),
            if spec.network {
                "bridge".into()
            } else {
                "none".into()
            },
            "--label".into(),
            "tanvrit.attempt=true".into(),
        ];
        if let Some(dir) = &spec.working_dir {
            args.extend(["--workdir".into(), dir.clone()]);
        }
        // Names only: the values travel in the CLI's environment (see `run_command`),
        // never in its command line, which every user of the host can read.
        for (key, _) in env {
            args.extend(["--env".into(), key.clone()]);
        }
        args.push(image.into());
        match &spec.shell {
            Some(shell) => args.extend(["/bin/sh".into(), "-c".into(), shell.clone()]),
            None => args.extend(spec.command.iter().cloned()),
        }
        args
    }

    /// `docker run` for one attempt, its output to `stdout`/`stderr`, in a process group
    /// of its own (signals to the group reach the CLI, which passes them on). The CLI's
    /// environment is the job's `env` (whose names `args` pass on with `--env`) and, of the
    /// agent's, only what the CLI itself needs to reach the engine: never the agent's key.
    pub fn run_command(
        &self,
        args: &[String],
        env: &[(String, String)],
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        command.args(args).env_clear();
        for name in CLI_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        command
    }

    /// Kills the container now (the SIGKILL of a stop), without waiting for the CLI.
    pub fn kill(&self, name: &str) {
        let spawned = tokio::process::Command::new(&self.bin)
            .args(["kill", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            tracing::warn!(container = name, error = %e, "cannot run docker kill");
        }
    }

    /// What the engine recorded of the ended container: whether the kernel killed it for
    /// memory. CPU time and peak memory are not measured for containers (they are billed
    /// on their reservation).
    pub async fn usage(&self, name: &str) -> Usage {
        let output = tokio::process::Command::new(&self.bin)
            .args(["inspect", "--format", "{{.State.OOMKilled}}", name])
            .stdin(Stdio::null())
            .output()
            .await;
        let oom = output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true");
        Usage {
            cpu_ns: None,
            peak_memory_bytes: None,
            oom_kills: u64::from(oom),
        }
    }

    /// Removes the container, killing it if it still runs; true once it is gone.
    pub async fn remove(&self, name: &str) -> bool {
        let output = tokio::process::Command::new(&self.bin)
            .args(["rm", "--force", name])
            .stdin(Stdio::null())
            .output()
            .await;
        match output {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stderr);
                // Already gone (never created, say): nothing to remove.
                text.contains("No such container")
            }
            Err(_) => false,
        }
    }
}

/// A container the attempt runs in.
pub(crate) struct Container {
    pub(crate) docker: Docker,
    pub(crate) name: String,
    pub(crate) memory_mb: u64,
}

/// Starts `docker run` for a job naming `image`: the attempt's limits (the sandbox's, or
/// the defaults for its resources), its uid (or `nobody`), output to the pipe.
pub(crate) fn spawn_container(
    run: &RunSpec,
    image: &str,
    sandbox: Option<&Sandbox>,
    env: &BTreeMap<String, String>,
    stdout: Stdio,
    stderr: Stdio,
    output: tokio::net::unix::pipe::Receiver,
) -> Result<Spawned, String> {
    let docker = run
        .isolation
        .docker()
        .ok_or("this node offers no docker driver (start the agent with --docker)")?;
    let limits = sandbox.map_or_else(
        || crate::isolation::limits(&run.spec.resources, run.isolation.pids_max()),
        Sandbox::limits,
    );
    let uid = sandbox.map_or(crate::docker::NOBODY, Sandbox::uid);
    let name = Docker::container_name(&run.attempt);
    // A container of this attempt left by an agent that died mid-run.
    let _ = std::process::Command::new(docker.bin())
        .args(["rm", "--force", &name])
        .stdin(Stdio::null())
        .output();
    let env: Vec<(String, String)> = env.clone().into_iter().collect();
    let args = Docker::run_args(&name, image, &run.spec, &limits, uid, &env);
    let mut command = docker.run_command(&args, &env);
    command.stdout(stdout).stderr(stderr);
    // SAFETY: runs in the forked child before exec; see `die_with_the_agent`.
    unsafe { crate::process::die_with_the_agent(&mut command) };
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", docker.bin().display()))?;
    drop(command);
    let pgid = child.id().map(|pid| pid as i32).unwrap_or(0);
    Ok(Spawned {
        child,
        pgid,
        output,
        container: Some(Container {
            docker: docker.clone(),
            name,
            memory_mb: limits.memory_bytes / (1024 * 1024),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_bytes: 64 * 1024 * 1024,
            cpu_millis: 500,
            pids_max: 32,
        }
    }

    fn pair<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn a_container_gets_the_attempts_limits_a_plain_user_and_no_network() {
        let spec = JobSpec {
            command: vec!["echo".into(), "hi".into()],
            ..JobSpec::default()
        };
        let env = vec![("FOO".to_string(), "bar".to_string())];
        let args = Docker::run_args("tanvrit-a1", "img:1", &spec, &limits(), 2000000001, &env);
        assert_eq!(pair(&args, "--memory"), Some("67108864"));
        assert_eq!(pair(&args, "--memory-swap"), Some("67108864"));
        assert_eq!(pair(&args, "--cpus"), Some("0.500"));
        assert_eq!(pair(&args, "--pids-limit"), Some("32"));
        assert_eq!(pair(&args, "--user"), Some("2000000001:2000000001"));
        assert_eq!(pair(&args, "--network"), Some("none"));
        assert_eq!(pair(&args, "--pull"), Some("never"));
        assert_eq!(
            pair(&args, "--env"),
            Some("FOO"),
            "the value is not in argv"
        );
        assert!(!args.iter().any(|a| a.contains("bar")));
        assert_eq!(pair(&args, "--cap-drop"), Some("ALL"));
        assert_eq!(&args[args.len() - 3..], ["img:1", "echo", "hi"]);
    }

    #[test]
    fn a_shell_string_runs_with_the_images_sh_and_a_network_only_when_asked() {
        let spec = JobSpec {
            shell: Some("echo $FOO".into()),
            network: true,
            working_dir: Some("/work".into()),
            ..JobSpec::default()
        };
        let args = Docker::run_args("n", "img", &spec, &limits(), NOBODY, &[]);
        assert_eq!(pair(&args, "--network"), Some("bridge"));
        assert_eq!(pair(&args, "--workdir"), Some("/work"));
        assert_eq!(pair(&args, "--user"), Some("65534:65534"));
        assert_eq!(
            &args[args.len() - 4..],
            ["img", "/bin/sh", "-c", "echo $FOO"]
        );
    }

    #[test]
    fn container_names_carry_the_attempt_as_a_safe_name() {
        assert_eq!(
            Docker::container_name(&AttemptId::from("att-1/x")),
            "tanvrit-att-1_x"
        );
    }
}
