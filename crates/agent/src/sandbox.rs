//! [`Sandbox`]: one attempt's cgroup, uid and private directory, and the code that puts
//! its process into them between fork and exec (cgroup, mount namespace with a private
//! `/tmp` and a `/proc` listing only its own processes, uid and group, `no_new_privs`,
//! death with the agent, working directory).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::cgroup::{Cgroup, Limits, Usage};
use crate::uids::UidLease;

/// One attempt's cgroup and uid. [`Sandbox::release`] gives them back.
#[derive(Debug)]
pub struct Sandbox {
    cgroup: Cgroup,
    limits: Limits,
    lease: Option<UidLease>,
    private_proc: bool,
}

impl Sandbox {
    /// The sandbox of an attempt whose cgroup (with `limits`) and private directory were
    /// made for the uid `lease` holds; with `private_proc`, it gets a `/proc` showing only
    /// its own processes.
    pub(crate) fn new(cgroup: Cgroup, limits: Limits, lease: UidLease, private_proc: bool) -> Self {
        Self {
            cgroup,
            limits,
            lease: Some(lease),
            private_proc,
        }
    }

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
    /// fork), take a mount namespace of its own in which the private directory `private`
    /// is also `/tmp`, `/var/tmp` and `/dev/shm` (so jobs share no scratch space) and
    /// `/proc` lists only the processes of the job's uid, drop to the attempt's uid and
    /// private group, forbid gaining privileges, die with the agent, and enter `dir` as
    /// that user.
    ///
    /// # Safety
    /// Installs a `pre_exec` hook; see [`std::os::unix::process::CommandExt::pre_exec`].
    /// The hook only makes async-signal-safe calls on data prepared here.
    pub unsafe fn install(
        &self,
        command: &mut tokio::process::Command,
        dir: &Path,
        private: &Path,
    ) -> Result<(), String> {
        let procs = self.cgroup.procs_files();
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .map_err(|_| format!("{} holds a NUL byte", path.display()))
        };
        // In the private directory unless the job names another.
        let cwd = (dir != private).then(|| c_path(dir)).transpose()?;
        let private = c_path(private)?;
        let uid = self.uid();
        let private_proc = self.private_proc;
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
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Private first: a bind below must not propagate back to the host's mounts.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // Held by descriptor, opened in the new namespace (a bind's source must be in
            // it): once `/tmp` is replaced, a path below it is gone.
            let home = libc::open(
                private.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if home < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut source = [0u8; 32];
            fd_path(home, &mut source);
            // PRIVATE_SCRATCH, as C strings.
            for shared in [c"/tmp", c"/var/tmp", c"/dev/shm"] {
                let rc = libc::mount(
                    source.as_ptr().cast(),
                    shared.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                if rc != 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::ENOENT) {
                        return Err(err);
                    }
                }
            }
            if private_proc {
                // Other users' processes (the agent's, other jobs') are not even listed:
                // their command lines, like the agent's if given `--key`, stay unread.
                check(libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"hidepid=2".as_ptr().cast(),
                ))?;
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
            // As the job's user: it enters only what that user may.
            match &cwd {
                Some(cwd) => check(libc::chdir(cwd.as_ptr())),
                None => check(libc::fchdir(home)),
            }
        });
        Ok(())
    }
}

/// Writes `/proc/self/fd/<fd>` and a NUL into `buf` without allocating (it runs between
/// fork and exec).
fn fd_path(fd: libc::c_int, buf: &mut [u8; 32]) {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
}

/// Makes `dir` (mode 0700) owned by `uid` and its private group.
pub(crate) fn private_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_path_is_written_without_allocating() {
        let mut buf = [0xffu8; 32];
        fd_path(1234, &mut buf);
        assert_eq!(&buf[..19], b"/proc/self/fd/1234\0");
        fd_path(0, &mut buf);
        assert_eq!(&buf[..16], b"/proc/self/fd/0\0");
    }
}
