//! Keeping attempts apart from each other and from the agent: [`IsolationConfig`]
//! (the `--isolation` choice and its settings), [`Isolation`] (what this node enforces,
//! found once at start), and [`Sandbox`] (one attempt's cgroup, uid and private
//! working directory, and the code that puts its process into them between fork and
//! exec).
//!
//! With `cgroup` isolation (the default) each attempt runs in its own cgroup under the
//! agent's (memory = `memory_mb` with no swap beyond it, CPU quota = `cpu_millis`, a pids
//! limit), as a uid of its own from [`IsolationConfig::job_uids`] with a private group
//! and no supplementary groups, with `no_new_privs`, in a directory only it can enter.
//! An agent whose host cannot give that refuses to start; `none` runs jobs as the agent's
//! own user with no limits, and says so.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tanvrit_client::api::{AttemptId, NodeId, Resources};

use crate::cgroup::{self, Cgroup, CgroupVersion, Limits, Usage};
use crate::uids::{UidLease, UidPool, UidRange, DEFAULT_JOB_UIDS, DEFAULT_UID_LOCK_FILE};
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
    /// `/var/lib/tanvrit/work/<node id>` (every parent must be traversable by others:
    /// jobs run as other users); under `none`, `<data_dir>/work`.
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
}

#[derive(Debug)]
struct Enforced {
    /// The node's cgroup: attempts' cgroups are made inside it.
    node: Cgroup,
    uids: UidPool,
    pids_max: u64,
}

impl Isolation {
    /// No isolation: jobs run as the agent's user in `work_root/<attempt>`.
    pub fn none(work_root: impl Into<PathBuf>) -> Self {
        Self {
            work_root: work_root.into(),
            enforced: None,
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
        Ok(Self {
            work_root,
            enforced: Some(Enforced {
                node: node_cgroup,
                uids,
                pids_max: config.pids_max,
            }),
        })
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
        if let Err(e) = private_dir(dir, lease.uid()) {
            cgroup.kill_and_remove();
            return Err(format!(
                "cannot make the working directory {}: {e}",
                dir.display()
            ));
        }
        Ok(Some(Sandbox {
            cgroup,
            limits,
            lease: Some(lease),
        }))
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

/// One attempt's cgroup and uid. [`Sandbox::release`] gives them back.
#[derive(Debug)]
pub struct Sandbox {
    cgroup: Cgroup,
    limits: Limits,
    lease: Option<UidLease>,
}

impl Sandbox {
    /// The uid (and private group) the attempt runs as.
    pub fn uid(&self) -> u32 {
        self.lease.as_ref().map_or(u32::MAX, UidLease::uid)
    }

    /// The attempt's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the attempt used so far, and whether the kernel killed any of it for memory.
    pub fn usage(&self) -> Usage {
        self.cgroup.usage()
    }

    /// SIGKILLs every process of the attempt, wherever it moved in its process tree.
    pub fn kill_all(&self) {
        self.cgroup.kill_all();
    }

    /// Kills what is left, removes the cgroup, and gives the uid back — unless a
    /// process survived: then the uid stays taken (and the cgroup is left) for as long
    /// as this agent runs, so it is never handed to another attempt.
    pub async fn release(mut self) {
        let cgroup = self.cgroup.clone();
        let removed = tokio::task::spawn_blocking(move || cgroup.kill_and_remove())
            .await
            .unwrap_or(false);
        if !removed {
            tracing::error!(
                cgroup = %self.cgroup.memory.display(),
                uid = self.uid(),
                "the attempt's cgroup cannot be emptied; keeping its uid out of use"
            );
            std::mem::forget(self.lease.take());
        }
    }

    /// What the child runs between fork and exec: join the cgroup (before anything can
    /// fork), drop to the attempt's uid and private group, forbid gaining privileges,
    /// die with the agent, and enter `dir` as that user.
    ///
    /// # Safety
    /// Installs a `pre_exec` hook; see [`std::os::unix::process::CommandExt::pre_exec`].
    /// The hook only makes async-signal-safe calls on data prepared here.
    pub unsafe fn install(
        &self,
        command: &mut tokio::process::Command,
        dir: &Path,
    ) -> Result<(), String> {
        let procs = self.cgroup.procs_files();
        let cwd = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| format!("{} holds a NUL byte", dir.display()))?;
        let uid = self.uid();
        let agent = libc::getpid();
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(uid))?;
            check(libc::setuid(uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // After setuid, which clears it. If the agent dies (even by SIGKILL) the job
            // is killed too, rather than left running while the control plane retries it.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if libc::getppid() != agent {
                // The agent died before the death signal was armed.
                libc::_exit(1);
            }
            check(libc::chdir(cwd.as_ptr()))
        });
        Ok(())
    }
}

/// The node's cgroup inside `own`, made and checked usable.
fn node_cgroup(own: &Cgroup, node: &NodeId) -> Result<Cgroup, String> {
    let name = format!("tanvrit-{}", node.as_str());
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

/// Makes the work root (mode 0711: jobs reach their own directory by name but cannot
/// list the others), empties it, and checks that every parent lets others through.
fn prepare_work_root(root: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("work directory {}: {e}", root.display());
    std::fs::create_dir_all(root).map_err(io)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
    for entry in std::fs::read_dir(root).map_err(io)?.flatten() {
        let _ = std::fs::remove_dir_all(entry.path());
    }
    let canonical = root.canonicalize().map_err(io)?;
    for dir in canonical.ancestors().skip(1) {
        let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "jobs run as other users cannot reach {}: its parent {} is mode {:o}; \
                 choose a work directory (`--work-dir`) whose parents others may traverse",
                root.display(),
                dir.display(),
                mode & 0o777
            ));
        }
    }
    Ok(())
}

/// Makes `dir` (mode 0700) owned by `uid` and its private group.
fn private_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
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
    fn a_work_root_behind_a_private_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = prepare_work_root(&dir.path().join("work")).unwrap_err();
        assert!(err.contains("cannot reach"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("work/left-over")).unwrap();
        prepare_work_root(&dir.path().join("work")).unwrap();
        let root = std::fs::metadata(dir.path().join("work")).unwrap();
        assert_eq!(root.permissions().mode() & 0o777, 0o711);
        assert!(!dir.path().join("work/left-over").exists());
    }
}
