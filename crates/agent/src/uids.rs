//! The users attempts run as: each running attempt holds a uid of its own from a
//! configured range (and the group of the same number, with no supplementary groups),
//! so no two attempts — of one business or of two — can read each other's files or
//! `/proc/<pid>/environ`, or signal each other.
//!
//! A uid is held through an open-file-description lock on byte `uid` of a lock file
//! shared by every agent of the host (`/run/tanvrit/job-uids.lock` by default): two
//! agents on one host never hand out the same uid at once, and a crashed agent's locks
//! go with its file descriptors.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

/// A range of uids, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid.
    pub first: u32,
    /// The last uid.
    pub last: u32,
}

/// The default range: 65,536 uids far above the ones distributions give to people,
/// services and the usual `/etc/subuid` ranges.
pub const DEFAULT_JOB_UIDS: UidRange = UidRange {
    first: 2_000_000_000,
    last: 2_000_065_535,
};

/// The default lock file.
pub const DEFAULT_UID_LOCK_FILE: &str = "/run/tanvrit/job-uids.lock";

impl UidRange {
    /// How many uids it holds.
    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Never: a range holds at least one uid.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = String;

    /// `FIRST-LAST`; neither may be 0 (root) or 4294967295 (the invalid uid).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (first, last) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not a uid range FIRST-LAST"))?;
        let parse = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{s}` is not a uid"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if first == 0 || last == u32::MAX || first > last {
            return Err(format!(
                "`{text}`: the range must be FIRST-LAST with 0 < FIRST <= LAST < 4294967295"
            ));
        }
        Ok(UidRange { first, last })
    }
}

/// Hands out uids of a range, one per running attempt.
#[derive(Debug)]
pub struct UidPool {
    range: UidRange,
    lock_file: PathBuf,
    /// Where the next search starts: uids are used round the range rather than the
    /// lowest again at once, so files a finished attempt left in shared places (`/tmp`)
    /// are not handed to the next attempt.
    cursor: AtomicU32,
}

/// A uid held by one attempt until dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

impl UidLease {
    /// The uid (and the number of its private group).
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl UidPool {
    /// A pool over `range`, locking through `lock_file` (created, with its directory,
    /// readable by root only).
    pub fn new(range: UidRange, lock_file: &Path) -> std::io::Result<Self> {
        if let Some(dir) = lock_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        open_lock(lock_file)?;
        let start = rand::random::<u32>() % range.len();
        Ok(Self {
            range,
            lock_file: lock_file.to_path_buf(),
            cursor: AtomicU32::new(start),
        })
    }

    /// The range.
    pub fn range(&self) -> UidRange {
        self.range
    }

    /// A uid no other attempt on this host holds; `None` when all are taken.
    pub fn take(&self) -> std::io::Result<Option<UidLease>> {
        let len = self.range.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        for step in 0..len {
            let uid = self.range.first + (start + step) % len;
            let file = open_lock(&self.lock_file)?;
            if try_lock_byte(&file, uid)? {
                self.cursor
                    .store((start + step + 1) % len, Ordering::Relaxed);
                return Ok(Some(UidLease { uid, _lock: file }));
            }
        }
        Ok(None)
    }
}

fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Takes an open-file-description write lock on byte `offset` of `file` without
/// waiting; false when someone else holds it.
fn try_lock_byte(file: &std::fs::File, offset: u32) -> std::io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value for every field.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = offset as libc::off_t;
    lock.l_len = 1;
    // SAFETY: a valid descriptor and a valid flock for the duration of the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root_and_backwards_ends() {
        let range: UidRange = "1000-1009".parse().unwrap();
        assert_eq!(
            range,
            UidRange {
                first: 1000,
                last: 1009
            }
        );
        assert_eq!(range.len(), 10);
        assert_eq!(range.to_string(), "1000-1009");
        assert!("0-10".parse::<UidRange>().is_err());
        assert!("10-5".parse::<UidRange>().is_err());
        assert!("10".parse::<UidRange>().is_err());
        assert!("1-4294967295".parse::<UidRange>().is_err());
    }

    #[test]
    fn each_lease_holds_its_own_uid_until_dropped_even_across_pools() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("uids.lock");
        let range = UidRange {
            first: 5000,
            last: 5002,
        };
        let one = UidPool::new(range, &lock).unwrap();
        // A second pool on the same file plays a second agent on the host.
        let two = UidPool::new(range, &lock).unwrap();
        let a = one.take().unwrap().unwrap();
        let b = two.take().unwrap().unwrap();
        let c = one.take().unwrap().unwrap();
        let mut uids = vec![a.uid(), b.uid(), c.uid()];
        uids.sort();
        assert_eq!(uids, vec![5000, 5001, 5002]);
        assert!(two.take().unwrap().is_none(), "every uid is held");
        let freed = b.uid();
        drop(b);
        assert_eq!(one.take().unwrap().unwrap().uid(), freed);
    }
}
