//! Per-attempt cgroups: finds the agent's own cgroup (v2 where the host's unified
//! hierarchy offers `memory`, `cpu` and `pids`, else v1 with one hierarchy per
//! controller), makes `tanvrit-<node>/<attempt>` under it with the attempt's memory, CPU
//! and pids limits, tells an OOM kill from any other death, reads the CPU time and peak
//! memory used, and kills and removes what is left.
//!
//! The v1 path is the one tested on real kernels here (this project's machines have v1
//! with an empty v2 mount); the v2 path follows the kernel's `cgroup-v2.rst`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// CFS period the CPU quota is expressed in (the kernel's default), in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup interface the host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/memory`, `.../cpu`, ...).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// `v1` or `v2`, as the node's `tanvrit.cgroup` label says it.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// One cgroup, seen through each hierarchy that holds a controller it uses (on v2, the
/// same directory four times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// The interface.
    pub version: CgroupVersion,
    /// Where `memory` is controlled.
    pub memory: PathBuf,
    /// Where `cpu` (the CFS quota) is controlled.
    pub cpu: PathBuf,
    /// Where CPU time is accounted (`cpuacct` on v1; absent when not mounted).
    pub cpuacct: Option<PathBuf>,
    /// Where `pids` is controlled.
    pub pids: PathBuf,
}

/// What an attempt may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory (and memory plus swap: no swap beyond it), in bytes.
    pub memory_bytes: u64,
    /// CPU, in millicores: a CFS quota of `cpu_millis / 1000` of [`CPU_PERIOD_US`].
    pub cpu_millis: u64,
    /// Processes and threads at once.
    pub pids_max: u64,
}

/// What an attempt used, as its cgroup accounted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// The most memory it held at once, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Processes the kernel killed for going over the memory limit.
    pub oom_kills: u64,
}

impl Cgroup {
    /// Every directory to write a process into (a process joins each hierarchy).
    pub fn dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = vec![&self.memory, &self.cpu, &self.pids];
        dirs.extend(self.cpuacct.as_deref());
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The child cgroup `name` (not created).
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup {
            version: self.version,
            memory: self.memory.join(name),
            cpu: self.cpu.join(name),
            cpuacct: self.cpuacct.as_ref().map(|dir| dir.join(name)),
            pids: self.pids.join(name),
        }
    }

    /// The `cgroup.procs` files a child process writes `0` into to join this cgroup, as
    /// C strings (the child may not allocate between fork and exec).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs()
            .into_iter()
            .filter_map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Creates the cgroup (and its parents) and sets `limits`.
    pub fn create(&self, limits: &Limits) -> std::io::Result<()> {
        for dir in self.dirs() {
            std::fs::create_dir_all(dir).map_err(|e| annotate(dir, e))?;
        }
        let memory = limits.memory_bytes.to_string();
        let quota = (limits.cpu_millis * CPU_PERIOD_US / 1000).max(1000);
        let pids = limits.pids_max.to_string();
        match self.version {
            CgroupVersion::V1 => {
                write(&self.memory, "memory.limit_in_bytes", &memory)?;
                // Only with swap accounting; without it, keep the cgroup's pages in RAM.
                if self.memory.join("memory.memsw.limit_in_bytes").exists() {
                    write(&self.memory, "memory.memsw.limit_in_bytes", &memory)?;
                } else {
                    let _ = write(&self.memory, "memory.swappiness", "0");
                }
                write(&self.cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                write(&self.cpu, "cpu.cfs_quota_us", &quota.to_string())?;
                let shares = (limits.cpu_millis * 1024 / 1000).max(2);
                let _ = write(&self.cpu, "cpu.shares", &shares.to_string());
                write(&self.pids, "pids.max", &pids)?;
            }
            CgroupVersion::V2 => {
                write(&self.memory, "memory.max", &memory)?;
                if self.memory.join("memory.swap.max").exists() {
                    write(&self.memory, "memory.swap.max", "0")?;
                }
                write(&self.cpu, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&self.pids, "pids.max", &pids)?;
            }
        }
        Ok(())
    }

    /// What the cgroup's processes used so far.
    pub fn usage(&self) -> Usage {
        match self.version {
            CgroupVersion::V1 => Usage {
                cpu_ns: self
                    .cpuacct
                    .as_ref()
                    .and_then(|dir| read_u64(&dir.join("cpuacct.usage"))),
                peak_memory_bytes: read_u64(&self.memory.join("memory.max_usage_in_bytes")),
                oom_kills: keyed(&self.memory.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            },
            CgroupVersion::V2 => Usage {
                cpu_ns: keyed(&self.cpu.join("cpu.stat"), "usage_usec").map(|us| us * 1000),
                peak_memory_bytes: read_u64(&self.memory.join("memory.peak")),
                oom_kills: keyed(&self.memory.join("memory.events"), "oom_kill").unwrap_or(0),
            },
        }
    }

    /// The processes in the cgroup (in any of its hierarchies).
    pub fn processes(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs()
            .into_iter()
            .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the cgroup until none is left (processes forking as
    /// they are killed are caught by the next round; the pids limit bounds each round).
    /// True once it is empty.
    pub fn kill_all(&self) -> bool {
        if self.version == CgroupVersion::V2 && self.memory.join("cgroup.kill").exists() {
            let _ = write(&self.memory, "cgroup.kill", "1");
        }
        for _ in 0..200 {
            let pids = self.processes();
            if pids.is_empty() {
                return true;
            }
            for pid in pids {
                // SAFETY: a plain syscall on a pid read from the cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.processes().is_empty()
    }

    /// Kills what is left and removes the cgroup; true when it is gone. A killed
    /// process leaves its cgroup only once the kernel has torn it down, so `rmdir` is
    /// retried for a while (blocking: call it off the async threads).
    pub fn kill_and_remove(&self) -> bool {
        for _ in 0..100 {
            self.kill_all();
            let mut left = false;
            for dir in self.dirs() {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => left = true,
                }
            }
            if !left {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills and removes every child cgroup (an earlier run's attempts, whose processes
    /// may have outlived it); false if one could not be removed.
    pub fn remove_children(&self) -> bool {
        let mut names: Vec<String> = Vec::new();
        for dir in self.dirs() {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        // Every child is tried, even after one fails.
        let failed = names
            .iter()
            .filter(|name| !self.child(name).kill_and_remove())
            .count();
        failed == 0
    }
}

/// The agent's own cgroup, found from `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn own_cgroup() -> Result<Cgroup, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let membership = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    find_cgroup(&mountinfo, &membership, &|dir| {
        std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
    })
}

/// The cgroup the process is in, from the text of `mountinfo` and `/proc/self/cgroup`:
/// v2 when a cgroup2 mount offers `memory`, `cpu` and `pids` (`controllers` reads a
/// directory's `cgroup.controllers`), else v1 when `memory`, `cpu` and `pids` are each
/// mounted.
pub fn find_cgroup(
    mountinfo: &str,
    membership: &str,
    controllers: &dyn Fn(&Path) -> Option<String>,
) -> Result<Cgroup, String> {
    let mounts = parse_mounts(mountinfo);
    let members = parse_membership(membership);
    let unified = mounts.iter().find(|m| m.fstype == "cgroup2");
    let v2_path = members.iter().find(|m| m.hierarchy == 0).map(|m| &m.path);
    if let (Some(mount), Some(path)) = (unified, v2_path) {
        let dir = mount.dir_of(path);
        let offered = controllers(&dir).or_else(|| controllers(&mount.point));
        let has = |c: &str| {
            offered
                .as_deref()
                .is_some_and(|text| text.split_whitespace().any(|w| w == c))
        };
        if has("memory") && has("cpu") && has("pids") {
            return Ok(Cgroup {
                version: CgroupVersion::V2,
                memory: dir.clone(),
                cpu: dir.clone(),
                cpuacct: Some(dir.clone()),
                pids: dir,
            });
        }
    }
    let v1 = |controller: &str| -> Option<PathBuf> {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == controller))?;
        let member = members
            .iter()
            .find(|m| m.hierarchy != 0 && m.controllers.iter().any(|c| c == controller))?;
        Some(mount.dir_of(&member.path))
    };
    match (v1("memory"), v1("cpu"), v1("pids")) {
        (Some(memory), Some(cpu), Some(pids)) => Ok(Cgroup {
            version: CgroupVersion::V1,
            memory,
            cpu,
            cpuacct: v1("cpuacct"),
            pids,
        }),
        _ => Err(
            "no cgroup hierarchy offers memory, cpu and pids (neither a cgroup2 mount \
                  with those controllers nor v1 mounts of each)"
                .into(),
        ),
    }
}

/// One line of `/proc/self/mountinfo`, the fields used here.
#[derive(Debug)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

impl Mount {
    /// The directory of cgroup `path` under this mount (whose root may be a cgroup
    /// itself, as in a container).
    fn dir_of(&self, path: &str) -> PathBuf {
        let relative = path
            .strip_prefix(self.root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        if relative.is_empty() {
            self.point.clone()
        } else {
            self.point.join(relative)
        }
    }
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let before: Vec<&str> = before.split_whitespace().collect();
            let mut after = after.split_whitespace();
            let fstype = after.next()?.to_string();
            let _source = after.next()?;
            let super_opts = after
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect();
            Some(Mount {
                root: unescape(before.get(3)?),
                point: PathBuf::from(unescape(before.get(4)?)),
                fstype,
                super_opts,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && octal.is_some_and(|o| o.iter().all(|b| (b'0'..=b'7').contains(b))) {
            if let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controller,list:/path`.
#[derive(Debug)]
struct Member {
    hierarchy: u32,
    controllers: Vec<String>,
    path: String,
}

fn parse_membership(text: &str) -> Vec<Member> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.to_string();
            Some(Member {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

fn annotate(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| annotate(&path, e))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (`memory.oom_control`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V1_MEMBERSHIP: &str = "\
8:pids:/
4:memory:/process_api/e11f
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn a_v1_host_with_an_empty_unified_mount_uses_v1_under_the_processes_own_cgroups() {
        let found =
            find_cgroup(V1_MOUNTINFO, V1_MEMBERSHIP, &|_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(found.version, CgroupVersion::V1);
        assert_eq!(
            found.memory,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/e11f")
        );
        assert_eq!(found.cpu, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(found.cpuacct, Some(PathBuf::from("/sys/fs/cgroup/cpuacct")));
        assert_eq!(found.pids, PathBuf::from("/sys/fs/cgroup/pids"));
        let child = found.child("tanvrit-n1");
        assert_eq!(child.dirs().len(), 4);
        assert_eq!(
            child.procs_files()[2].to_str().unwrap(),
            "/sys/fs/cgroup/memory/process_api/e11f/tanvrit-n1/cgroup.procs"
        );
    }

    #[test]
    fn a_unified_hierarchy_with_memory_cpu_and_pids_is_v2() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let membership = "0::/system.slice/tanvrit.service\n";
        let found = find_cgroup(mountinfo, membership, &|dir| {
            (dir == Path::new("/sys/fs/cgroup/system.slice/tanvrit.service"))
                .then(|| "cpuset cpu io memory pids\n".to_string())
        })
        .unwrap();
        assert_eq!(found.version, CgroupVersion::V2);
        assert_eq!(
            found.memory,
            PathBuf::from("/sys/fs/cgroup/system.slice/tanvrit.service")
        );
        assert_eq!(found.dirs().len(), 1);
    }

    #[test]
    fn a_container_mount_rooted_at_its_own_cgroup_maps_paths_below_that_root() {
        let mountinfo = "\
40 31 0:36 /docker/abc /sys/fs/cgroup/pids ro - cgroup cgroup rw,pids
41 31 0:37 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
42 31 0:38 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct
";
        let membership = "5:pids:/docker/abc\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n";
        let found = find_cgroup(mountinfo, membership, &|_| None).unwrap();
        assert_eq!(found.memory, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(found.cpu, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(found.cpuacct, Some(found.cpu.clone()));
        assert_eq!(found.dirs().len(), 3, "cpu and cpuacct share a directory");
    }

    #[test]
    fn a_host_without_the_controllers_has_no_usable_cgroup() {
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let err = find_cgroup(mountinfo, "0::/\n", &|_| Some("hugetlb\n".into())).unwrap_err();
        assert!(err.contains("memory, cpu and pids"), "{err}");
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
