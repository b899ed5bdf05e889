//! What `bench scale` reads off a replica from the outside: its memory from
//! `/proc/<pid>/status` (`VmRSS`, `VmHWM`), its data directory's size on disk, one value
//! of its Prometheus text at `/metrics`, and the timed steps it logs (`built a snapshot`,
//! `installed a snapshot from the leader`: a timestamp, `index=`, `bytes=`, `ms=`).
//! The parsers are pure, so they are tested on text.

use std::path::Path;
use std::time::SystemTime;

/// A process's memory, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident since the process started (`VmHWM`).
    pub hwm_kib: u64,
}

/// One `Name:   123 kB` field of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut words = value.split_whitespace();
        let number = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") | None => Some(number),
            Some(_) => None,
        }
    })
}

/// `VmRSS` and `VmHWM` of a `/proc/<pid>/status` text.
pub fn memory_of_status(status: &str) -> Option<Memory> {
    Some(Memory {
        rss_kib: status_kib(status, "VmRSS")?,
        hwm_kib: status_kib(status, "VmHWM")?,
    })
}

/// The memory of a running process (none once it is gone).
pub fn memory(pid: u32) -> Option<Memory> {
    memory_of_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts them).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The value of the unlabelled sample `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == name).then_some(())?;
        words.next()?.parse().ok()
    })
}

/// A timed step a replica logged: when the line was written and its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedStep {
    /// The line's timestamp (the end of the step).
    pub at: SystemTime,
    /// `index=`: the log index the snapshot covers.
    pub index: u64,
    /// `bytes=`: the snapshot's size (0 when not logged).
    pub bytes: u64,
    /// `ms=`: how long the step took.
    pub ms: u64,
}

/// The steps of `message` in a log (the `tracing` fmt layout: an RFC 3339 timestamp
/// first, `key=value` fields anywhere after it). Lines that do not parse are skipped.
pub fn logged_steps(log: &str, message: &str) -> Vec<LoggedStep> {
    log.lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let at = humantime::parse_rfc3339_weak(words.next()?).ok()?;
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            };
            Some(LoggedStep {
                at,
                index: field("index").unwrap_or(0),
                bytes: field("bytes").unwrap_or(0),
                ms: field("ms")?,
            })
        })
        .collect()
}

/// The message a replica logs when it finished writing a snapshot of its own.
pub const SNAPSHOT_BUILT: &str = "built a snapshot";
/// The message a replica logs when it installed a snapshot the leader sent.
pub const SNAPSHOT_INSTALLED: &str = "installed a snapshot from the leader";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const STATUS: &str = "Name:\ttanvrit\nVmPeak:\t 2000000 kB\nVmHWM:\t  412345 kB\n\
                          VmRSS:\t  398765 kB\nThreads:\t9\n";

    #[test]
    fn memory_is_read_from_vmrss_and_vmhwm_in_kib() {
        assert_eq!(
            memory_of_status(STATUS),
            Some(Memory {
                rss_kib: 398_765,
                hwm_kib: 412_345
            })
        );
        assert_eq!(status_kib(STATUS, "Threads"), Some(9));
        assert_eq!(status_kib(STATUS, "VmSwap"), None);
        // A kernel thread has no VmRSS line.
        assert_eq!(memory_of_status("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn a_metric_is_the_unlabelled_sample_of_that_exact_name() {
        let text = "# TYPE tanvrit_raft_applied_index gauge\n\
                    tanvrit_raft_applied_index 1234\n\
                    tanvrit_raft_applied_index_other 9\n\
                    tanvrit_jobs{state=\"pending\"} 3\n";
        assert_eq!(metric(text, "tanvrit_raft_applied_index"), Some(1234.0));
        assert_eq!(metric(text, "tanvrit_jobs"), None);
        assert_eq!(metric(text, "missing"), None);
    }

    #[test]
    fn snapshot_lines_give_their_end_time_index_size_and_duration() {
        let log = "2026-12-07T17:05:01.500000Z  INFO tanvrit_cluster::raft::storage: \
                   built a snapshot index=19999 bytes=123456 ms=4200\n\
                   2026-12-07T17:05:02.000000Z  WARN tanvrit_cluster::raft::storage: \
                   slow apply ms=25 items=3\n\
                   garbage built a snapshot ms=1\n\
                   2026-12-07T17:06:00Z  INFO tanvrit_cluster::single_node: built a snapshot \
                   index=5 ms=7\n";
        let steps = logged_steps(log, SNAPSHOT_BUILT);
        assert_eq!(steps.len(), 2);
        let expected = humantime::parse_rfc3339("2026-12-07T17:05:01.500000Z").unwrap();
        assert_eq!(
            steps[0],
            LoggedStep {
                at: expected,
                index: 19_999,
                bytes: 123_456,
                ms: 4_200
            }
        );
        assert_eq!((steps[1].index, steps[1].bytes, steps[1].ms), (5, 0, 7));
        assert_eq!(
            steps[1].at.duration_since(steps[0].at).unwrap(),
            Duration::from_millis(58_500)
        );
    }

    #[test]
    fn disk_usage_counts_files_in_subdirectories() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.join("sub/b"), vec![1u8; 10_000]).unwrap();
        let used = disk_usage(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(used >= 20_000, "{used}");
        assert_eq!(disk_usage(&dir), 0);
    }
}
