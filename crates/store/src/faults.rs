//! Disk faults on demand: a redb storage backend over the real file that fails writes
//! (a full disk) or syncs (a failed fsync) while a test has armed it, so the engines'
//! answers to a failing disk are tried against the real database code, not a mock.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// The switches of one store's disk, shared between the store and the test that arms
/// them. Cloning shares the switches.
#[derive(Clone, Default)]
pub struct DiskFaults(Arc<Switches>);

#[derive(Default)]
struct Switches {
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
    failed: AtomicU64,
}

impl DiskFaults {
    /// A disk that works until armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every write fails with "no space left on device" (or works again).
    pub fn fail_writes(&self, on: bool) {
        self.0.fail_writes.store(on, Ordering::SeqCst);
    }

    /// From now on every fsync fails with an i/o error (or works again).
    pub fn fail_syncs(&self, on: bool) {
        self.0.fail_syncs.store(on, Ordering::SeqCst);
    }

    /// Writes and syncs work again.
    pub fn heal(&self) {
        self.fail_writes(false);
        self.fail_syncs(false);
    }

    /// Operations failed on purpose so far.
    pub fn failures(&self) -> u64 {
        self.0.failed.load(Ordering::SeqCst)
    }

    fn check(&self, switch: &AtomicBool, error: impl FnOnce() -> io::Error) -> io::Result<()> {
        if switch.load(Ordering::SeqCst) {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            return Err(error());
        }
        Ok(())
    }
}

impl fmt::Debug for DiskFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskFaults")
            .field("fail_writes", &self.0.fail_writes.load(Ordering::SeqCst))
            .field("fail_syncs", &self.0.fail_syncs.load(Ordering::SeqCst))
            .field("failed", &self.failures())
            .finish()
    }
}

/// Two handles are equal when they share their switches.
impl PartialEq for DiskFaults {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DiskFaults {}

/// The database file behind [`DiskFaults`].
#[derive(Debug)]
pub(crate) struct FaultyFile {
    file: FileBackend,
    faults: DiskFaults,
}

impl FaultyFile {
    pub(crate) fn new(file: File, faults: DiskFaults) -> Result<Self, DatabaseError> {
        Ok(Self {
            file: FileBackend::new(file)?,
            faults,
        })
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check(&self.faults.0.fail_writes, disk_full)?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.check(&self.faults.0.fail_syncs, || {
            io::Error::other("fsync failed (injected)")
        })?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check(&self.faults.0.fail_writes, disk_full)?;
        self.file.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

fn disk_full() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}
