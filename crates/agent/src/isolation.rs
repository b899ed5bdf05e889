//! Keeping attempts apart from each other and from the agent: [`IsolationConfig`]
//! (the `--isolation` choice and its settings) and [`Isolation`] (what this node
//! enforces, found once at start, and the maker of each attempt's
//! [`crate::sandbox::Sandbox`]).
//!
//! With `cgroup` isolation (the default) each attempt runs in its own cgroup under the
//! agent's (memory = `memory_mb` with no swap beyond it, CPU quota = `cpu_millis`, a pids
//! limit), as a uid of its own from [`IsolationConfig::job_uids`] with a private group
//! and no supplementary groups, with `no_new_privs`, in a directory only it can enter,
//! which is also its `/tmp`, `/var/tmp` and `/dev/shm` (a mount namespace of its own).
//! An agent whose host cannot give that refuses to start; `none` runs jobs as the agent's
//! own user with no limits, and says so.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tanvrit_client::api::{AttemptId, NodeId, Resources};

use crate::cgroup::{self, Cgroup, CgroupVersion, Limits};
use crate::docker::Docker;
use crate::gpus::GpuPool;
use crate::sandbox::Sandbox;
use crate::uids::{UidPool, UidRange, DEFAULT_JOB_UIDS, DEFAULT_UID_LOCK_FILE};
use crate::AgentError;

/// Memory an attempt gets when its job names none, in MB (the CLI's default).
pub const DEFAULT_MEMORY_MB: u64 = 256;
/// CPU an attempt gets when its job names none, in millicores (the CLI's default).
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
/// Processes and threads an attempt may have at once, unless configured.
pub const DEFAULT_PIDS_MAX: u64 = 1024;
/// Where attempts' private directories live under `cgroup` isolation, unless
/// configured: `<this>/<node id>/<attempt>`.
pub const DEFAULT_WORK_ROOT: &str = "/var/lib/tanvrit/work";
/// Node label saying how the node isolates jobs: `cgroup` or `none`.
pub const LABEL_ISOLATION: &str = "tanvrit.isolation";
/// Node label naming the cgroup interface that enforces limits: `v1` or `v2`.
pub const LABEL_CGROUP: &str = "tanvrit.cgroup";

/// How the agent isolates jobs (`--isolation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IsolationMode {
    /// Per-attempt cgroups and uids; the agent refuses to start without them.
    #[default]
    Cgroup,
    /// None: jobs run as the agent's user with no limits (development, or a host whose
    /// cgroups the agent cannot use, such as an unprivileged container).
    None,
}

impl fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IsolationMode::Cgroup => "cgroup",
            IsolationMode::None => "none",
        })
    }
}

impl FromStr for IsolationMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cgroup" => Ok(IsolationMode::Cgroup),
            "none" => Ok(IsolationMode::None),
            _ => Err(format!("`{text}` is not an isolation: `cgroup` or `none`")),
        }
    }
}

/// The isolation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolationConfig {
    /// `cgroup` (default) or `none`.
    pub mode: IsolationMode,
    /// The uids attempts run as, one per running attempt. Default [`DEFAULT_JOB_UIDS`].
    /// Give two agents of one host the same range only with the same `uid_lock_file`.
    pub job_uids: UidRange,
    /// The lock file through which the agents of a host share out uids. Default
    /// [`DEFAULT_UID_LOCK_FILE`].
    pub uid_lock_file: PathBuf,
    /// Processes and threads per attempt. Default [`DEFAULT_PIDS_MAX`].
    pub pids_max: u64,
    /// The parent of the attempts' private directories. Default: under `cgroup`,
    /// `/var/lib/tanvrit/work/<node id>` (every parent must be traversable by others, as
    /// jobs run as other users, and none may be `/tmp`, `/var/tmp` or `/dev/shm`, which
    /// each job sees replaced by its own directory); under `none`, `<data_dir>/work`.
    pub work_root: Option<PathBuf>,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            mode: IsolationMode::Cgroup,
            job_uids: DEFAULT_JOB_UIDS,
            uid_lock_file: PathBuf::from(DEFAULT_UID_LOCK_FILE),
            pids_max: DEFAULT_PIDS_MAX,
            work_root: None,
        }
    }
}

/// What this node enforces, found at start.
#[derive(Debug)]
pub struct Isolation {
    work_root: PathBuf,
    enforced: Option<Enforced>,
    /// The Docker engine, when the node offers the `docker` driver.
    docker: Option<Docker>,
    /// The node's GPU devices, shared out to attempts.
    gpus: Arc<GpuPool>,
}

#[derive(Debug)]
struct Enforced {
    /// The node's cgroup: attempts' cgroups are made inside it.
    node: Cgroup,
    uids: UidPool,
    pids_max: u64,
    /// Whether each attempt gets a `/proc` of its own that shows only its uid's processes
    /// (`hidepid`, per mount only since Linux 5.8: before, it would change the host's).
    private_proc: bool,
}

impl Isolation {
    /// No isolation: jobs run as the agent's user in `work_root/<attempt>`.
    pub fn none(work_root: impl Into<PathBuf>) -> Self {
        Self {
            work_root: work_root.into(),
            enforced: None,
            docker: None,
            gpus: GpuPool::new([]),
        }
    }

    /// Sets up what `config` asks for on this host: under `cgroup`, the node's cgroup
    /// `tanvrit-<node>` inside the agent's own (killing and removing what an earlier
    /// run left in it), the uid pool and the work root (mode 0711, emptied). Fails,
    /// with what to do, when the host cannot give it.
    pub fn prepare(
        config: &IsolationConfig,
        node: &NodeId,
        data_dir: &Path,
    ) -> Result<Self, AgentError> {
        if config.mode == IsolationMode::None {
            let root = config
                .work_root
                .clone()
                .unwrap_or_else(|| data_dir.join("work"));
            return Ok(Self::none(root));
        }
        let fail = |what: String| {
            AgentError::Isolation(format!(
                "{what}; run the agent as root on a host whose cgroups it may write, or \
                 start it with `--isolation none` to run jobs without limits or separate users"
            ))
        };
        // SAFETY: a plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err(fail(
                "cgroup isolation needs root (to make cgroups and run jobs as other users)".into(),
            ));
        }
        let work_root = config
            .work_root
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_WORK_ROOT).join(node.as_str()));
        prepare_work_root(&work_root).map_err(&fail)?;
        let uids = UidPool::new(config.job_uids, &config.uid_lock_file).map_err(|e| {
            fail(format!(
                "cannot open the uid lock file {}: {e}",
                config.uid_lock_file.display()
            ))
        })?;
        let own = cgroup::own_cgroup().map_err(&fail)?;
        let node_cgroup = node_cgroup(&own, node).map_err(&fail)?;
        if !node_cgroup.remove_children() {
            tracing::warn!("an earlier run's attempt cgroup could not be removed");
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let private_proc = kernel_at_least(&release, 5, 8);
        if !private_proc {
            tracing::warn!(
                kernel = release.trim(),
                "before Linux 5.8 a job cannot have a /proc of its own: jobs can see every \
                 process's command line"
            );
        }
        Ok(Self {
            work_root,
            docker: None,
            gpus: GpuPool::new([]),
            enforced: Some(Enforced {
                node: node_cgroup,
                uids,
                pids_max: config.pids_max,
                private_proc,
            }),
        })
    }

    /// This isolation with the `docker` driver (when `docker` is given) and the node's
    /// GPU devices.
    pub fn with_devices(mut self, docker: Option<Docker>, gpus: Arc<GpuPool>) -> Self {
        self.docker = docker;
        self.gpus = gpus;
        self
    }

    /// The Docker engine, when the node offers the `docker` driver.
    pub fn docker(&self) -> Option<&Docker> {
        self.docker.as_ref()
    }

    /// The node's GPU devices.
    pub fn gpus(&self) -> &Arc<GpuPool> {
        &self.gpus
    }

    /// The drivers the node offers: `exec`, and `docker` when enabled.
    pub fn drivers(&self) -> Vec<String> {
        let mut drivers = vec![tanvrit_client::api::DRIVER_EXEC.to_string()];
        if self.docker.is_some() {
            drivers.push(tanvrit_client::api::DRIVER_DOCKER.to_string());
        }
        drivers
    }

    /// Processes and threads per attempt (containers too).
    pub fn pids_max(&self) -> u64 {
        self.enforced
            .as_ref()
            .map_or(DEFAULT_PIDS_MAX, |e| e.pids_max)
    }

    /// The cgroup interface enforcing limits; `None` without isolation.
    pub fn cgroup_version(&self) -> Option<CgroupVersion> {
        self.enforced.as_ref().map(|e| e.node.version)
    }

    /// `cgroup v1`, `cgroup v2` or `none`, for people.
    pub fn describe(&self) -> String {
        match self.cgroup_version() {
            Some(version) => format!("cgroup {}", version.as_str()),
            None => "none".into(),
        }
    }

    /// The labels the node advertises, so jobs can require isolation:
    /// [`LABEL_ISOLATION`] and, with cgroups, [`LABEL_CGROUP`].
    pub fn labels(&self) -> Vec<(String, String)> {
        match self.cgroup_version() {
            Some(version) => vec![
                (LABEL_ISOLATION.into(), "cgroup".into()),
                (LABEL_CGROUP.into(), version.as_str().into()),
            ],
            None => vec![(LABEL_ISOLATION.into(), "none".into())],
        }
    }

    /// The parent of the attempts' working directories.
    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    /// The cgroup an attempt runs in (made by [`Isolation::sandbox`]); `None` without
    /// isolation.
    pub fn attempt_cgroup(&self, attempt: &AttemptId) -> Option<Cgroup> {
        let enforced = self.enforced.as_ref()?;
        Some(enforced.node.child(&safe_name(attempt)))
    }

    /// Makes an attempt's sandbox: takes a uid, makes its cgroup with `resources` as
    /// limits (a job naming no CPU or memory gets [`DEFAULT_CPU_MILLIS`] and
    /// [`DEFAULT_MEMORY_MB`]), and makes `dir` its private directory. `Ok(None)`
    /// without isolation.
    pub fn sandbox(
        &self,
        attempt: &AttemptId,
        resources: &Resources,
        dir: &Path,
    ) -> Result<Option<Sandbox>, String> {
        let Some(enforced) = &self.enforced else {
            return Ok(None);
        };
        let lease = enforced
            .uids
            .take()
            .map_err(|e| format!("cannot take a job uid: {e}"))?
            .ok_or_else(|| {
                format!(
                    "every job uid of {} is in use on this host",
                    enforced.uids.range()
                )
            })?;
        let limits = limits(resources, enforced.pids_max);
        let cgroup = enforced.node.child(&safe_name(attempt));
        if let Err(e) = cgroup.create(&limits) {
            cgroup.kill_and_remove();
            return Err(format!("cannot make the attempt's cgroup: {e}"));
        }
        if let Err(e) = crate::sandbox::private_dir(dir, lease.uid()) {
            cgroup.kill_and_remove();
            return Err(format!(
                "cannot make the working directory {}: {e}",
                dir.display()
            ));
        }
        Ok(Some(Sandbox::new(
            cgroup,
            limits,
            lease,
            enforced.private_proc,
        )))
    }
}

/// Whether the kernel `release` (`6.1.0-13-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// The limits for `resources`: documented defaults stand in for zero CPU or memory, so
/// nothing runs unlimited.
pub fn limits(resources: &Resources, pids_max: u64) -> Limits {
    let memory_mb = match resources.memory_mb {
        0 => DEFAULT_MEMORY_MB,
        mb => mb,
    };
    let cpu_millis = match resources.cpu_millis {
        0 => DEFAULT_CPU_MILLIS,
        millis => millis,
    };
    Limits {
        memory_bytes: memory_mb.saturating_mul(1024 * 1024),
        cpu_millis,
        pids_max,
    }
}

impl Drop for Isolation {
    /// Removes the node's cgroup, killing whatever is still in it.
    fn drop(&mut self) {
        if let Some(enforced) = &self.enforced {
            enforced.node.remove_children();
            enforced.node.kill_and_remove();
        }
    }
}

/// The name of the node's cgroup inside the agent's own: `tanvrit-<node id>`.
pub fn node_cgroup_name(node: &NodeId) -> String {
    format!("tanvrit-{}", node.as_str())
}

/// The node's cgroup inside `own`, made and checked usable.
fn node_cgroup(own: &Cgroup, node: &NodeId) -> Result<Cgroup, String> {
    let name = node_cgroup_name(node);
    if own.version == CgroupVersion::V2 {
        return v2_node_cgroup(own, &name);
    }
    let node_cgroup = own.child(&name);
    for dir in node_cgroup.dirs() {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot make the cgroup {}: {e} (is /sys/fs/cgroup read-only, as in a container?)",
                dir.display()
            )
        })?;
    }
    for (dir, file) in [
        (&node_cgroup.memory, "memory.limit_in_bytes"),
        (&node_cgroup.cpu, "cpu.cfs_quota_us"),
        (&node_cgroup.pids, "pids.max"),
    ] {
        if !dir.join(file).exists() {
            node_cgroup.kill_and_remove();
            return Err(format!(
                "{} has no {file}: the kernel cannot enforce that limit",
                dir.display()
            ));
        }
    }
    Ok(node_cgroup)
}

/// v2: controllers reach a child only through its parent's `cgroup.subtree_control`,
/// which a cgroup holding processes cannot set (the root aside). So the agent first
/// moves itself into a leaf of its own, `tanvrit-agent`, then enables memory, cpu and
/// pids for `tanvrit-<node>` and below.
fn v2_node_cgroup(own: &Cgroup, name: &str) -> Result<Cgroup, String> {
    let dir = &own.memory;
    let enable = |dir: &Path| {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids")
            .map_err(|e| format!("cannot enable controllers in {}: {e}", dir.display()))
    };
    if enable(dir).is_err() {
        let leaf = dir.join("tanvrit-agent");
        std::fs::create_dir_all(&leaf)
            .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), "0"))
            .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))?;
        enable(dir)?;
    }
    let node = own.child(name);
    std::fs::create_dir_all(&node.memory)
        .map_err(|e| format!("cannot make the cgroup {}: {e}", node.memory.display()))?;
    enable(&node.memory)?;
    Ok(node)
}

/// The directories each job gets its private directory mounted over.
const PRIVATE_SCRATCH: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// Makes the work root (mode 0711: jobs reach their own directory by name but cannot
/// list the others), empties it, and checks that jobs can reach it: every parent lets
/// others through, and it is not inside a directory jobs see their own copy of.
fn prepare_work_root(root: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("work directory {}: {e}", root.display());
    std::fs::create_dir_all(root).map_err(io)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
    for entry in std::fs::read_dir(root).map_err(io)?.flatten() {
        let _ = std::fs::remove_dir_all(entry.path());
    }
    let canonical = root.canonicalize().map_err(io)?;
    check_reachable(&canonical, &|dir| {
        Ok(std::fs::metadata(dir)?.permissions().mode())
    })
    .map_err(|e| format!("{e}; choose another work directory (`--work-dir`)"))
}

/// Whether jobs running as other users reach `root` (canonical) by its path: each
/// parent's mode (from `mode_of`) lets others through, and no parent is one of
/// [`PRIVATE_SCRATCH`], which jobs see replaced by their own directory.
fn check_reachable(
    root: &Path,
    mode_of: &dyn Fn(&Path) -> std::io::Result<u32>,
) -> Result<(), String> {
    for dir in root.ancestors().skip(1) {
        if PRIVATE_SCRATCH.iter().any(|p| Path::new(p) == dir) {
            return Err(format!(
                "{} is inside {}, which each job sees replaced by its own directory",
                root.display(),
                dir.display()
            ));
        }
        let mode = mode_of(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if mode & 0o001 == 0 {
            return Err(format!(
                "jobs run as other users cannot reach {}: its parent {} is mode {:o}",
                root.display(),
                dir.display(),
                mode & 0o777
            ));
        }
    }
    Ok(())
}

/// Makes the agent's data directory readable by the agent's user only.
pub fn secure_data_dir(data_dir: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(data_dir).map_err(|e| AgentError::io(data_dir, e))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| AgentError::io(data_dir, e))
}

/// An attempt id as a file name.
pub fn safe_name(attempt: &AttemptId) -> String {
    attempt
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_naming_no_cpu_or_memory_gets_the_defaults_not_unlimited() {
        let none = limits(&Resources::default(), 64);
        assert_eq!(none.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(none.cpu_millis, 1000);
        assert_eq!(none.pids_max, 64);
        let named = limits(
            &Resources {
                cpu_millis: 500,
                memory_mb: 32,
                gpus: 0,
            },
            64,
        );
        assert_eq!(named.memory_bytes, 32 * 1024 * 1024);
        assert_eq!(named.cpu_millis, 500);
    }

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert!(kernel_at_least("6.18.44-fc-v1300\n", 5, 8));
        assert!(kernel_at_least("5.8.0", 5, 8));
        assert!(!kernel_at_least("5.4.0-150-generic", 5, 8));
        assert!(!kernel_at_least("4.19.0", 5, 8));
        assert!(!kernel_at_least("", 5, 8));
    }

    #[test]
    fn isolation_modes_parse_and_print() {
        assert_eq!("cgroup".parse(), Ok(IsolationMode::Cgroup));
        assert_eq!("none".parse(), Ok(IsolationMode::None));
        assert!("docker".parse::<IsolationMode>().is_err());
        assert_eq!(IsolationMode::None.to_string(), "none");
    }

    #[test]
    fn a_node_without_isolation_says_so_in_its_labels() {
        let none = Isolation::none("/tmp/w");
        assert_eq!(none.describe(), "none");
        assert_eq!(
            none.labels(),
            vec![(LABEL_ISOLATION.to_string(), "none".to_string())]
        );
        assert!(none.attempt_cgroup(&AttemptId::from("a")).is_none());
    }

    #[test]
    fn a_work_root_behind_a_private_parent_or_in_tmp_is_refused() {
        let modes = |private: &'static str| {
            move |dir: &Path| {
                Ok(if dir == Path::new(private) {
                    0o700
                } else {
                    0o755
                })
            }
        };
        let root = Path::new("/srv/tanvrit/work");
        assert_eq!(check_reachable(root, &modes("/nowhere")), Ok(()));
        let err = check_reachable(root, &modes("/srv")).unwrap_err();
        assert!(
            err.contains("cannot reach") && err.contains("/srv is mode 700"),
            "{err}"
        );
        let err = check_reachable(Path::new("/tmp/x/work"), &modes("/nowhere")).unwrap_err();
        assert!(err.contains("inside /tmp"), "{err}");
        assert!(check_reachable(Path::new("/dev/shm/w"), &modes("/nowhere")).is_err());
    }
}
