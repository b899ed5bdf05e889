//! Tanvrit Compute storage: one embedded redb database per replica, the file
//! `<data_dir>/tanvrit.redb`.
//!
//! # Layout
//! - this file: [`Store`] (cheap to clone), [`StoreOptions`], opening and the format check.
//! - [`error`]: [`StoreError`], with stable codes.
//! - [`faults`]: [`DiskFaults`], a disk that fails writes or fsyncs when a test says so.
//! - [`encoding`]: versioned record envelopes (`{"v": 1, ...}`) and their decoder.
//! - [`log`]: the replicated log (`index -> command`): append, read, purge, truncate.
//! - [`snapshot`]: the single-node snapshot record of earlier versions (read to migrate).
//! - [`snapshot_file`]: snapshots as files beside the database, streamed in and out.
//! - [`snapshot_records`]: a snapshot file's records and their encodings.
//! - [`job_log`]: attempts' output, keyed `(job, attempt, offset)`, bounded per job.
//! - [`meta`]: small named values (cluster id, ...).
//! - [`state_tables`]: the state machine as tables per group, written with each applied
//!   batch, loaded at start, streamed into snapshots.
//! - [`archive`]: [`TableArchive`], settled jobs read back from the state tables, and
//!   job pages listed from them.
//! - [`raft`]: the Raft replica's log, vote/committed/purged values and snapshot, over
//!   caller-chosen serde types (openraft's traits live in `tanvrit-cluster`).
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | bytes; `format_version` and `log_purged` are the store's own |
//! | `log` | `u64` index | versioned JSON `{"v":1,"command":...}` |
//! | `snapshot` | `"current"` | versioned JSON `{"v":1,"index":N,"state":...}` |
//! | `job_logs` | `(job, attempt, offset)` | raw bytes |
//! | `job_log_sizes` | job | bytes stored for the job |
//! | `raft_log` | `u64` index | versioned JSON `{"v":1,"entry":...}` (an openraft entry) |
//! | `raft_meta` | `&str` (`vote`, `committed`, `purged`) | versioned JSON `{"v":1,"value":...}` |
//! | `raft_snapshot` | `"current"` | versioned JSON `{"v":1,"meta":...,"state":...}` |
//!
//! | `<group>.<table>` | text key | [`state_tables`]: version byte + MessagePack state rows |
//!
//! `log` and `snapshot` belong to the single-node mode; a Raft replica keeps `raft_log`
//! and `raft_meta` in a file of their own, `raft-log.redb`, and shares
//! `job_logs`, `job_log_sizes` and `meta`.
//!
//! Every write is one redb transaction: it commits whole or not at all, and unless a
//! method says otherwise it is durable (fsynced) before the method returns.

pub mod archive;
pub mod encoding;
pub mod error;
pub mod faults;
pub mod job_log;
pub mod log;
pub mod meta;
pub mod raft;
mod raft_log_db;
pub mod snapshot;
pub mod snapshot_file;
pub mod snapshot_records;
pub mod state_tables;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::ReadableDatabase;
use redb::{Database, ReadableTable, TableDefinition};

pub use archive::TableArchive;
pub use error::StoreError;
pub use faults::DiskFaults;
pub use job_log::{JobLogChunk, JobLogRead};
pub use raft_log_db::RAFT_LOG_FILE_NAME;
pub use snapshot_file::{SnapshotDir, SnapshotFile, SnapshotWriter};
pub use snapshot_records::SnapshotItem;
pub use state_tables::{StateView, StateWrite};

/// The database file's name inside the data directory.
pub const DB_FILE_NAME: &str = "tanvrit.redb";
/// The on-disk format this binary writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// Default bound on stored log bytes per job (64 MiB).
pub const DEFAULT_RETENTION_BYTES_PER_JOB: u64 = 64 * 1024 * 1024;
/// Default size of the database's page cache (64 MiB). redb's own default (1 GiB)
/// would let the cache, not the working set, decide how much memory a replica holds as
/// its tables grow; reads past it come from the OS page cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
pub(crate) const JOB_LOGS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("job_logs");
pub(crate) const JOB_LOG_SIZES: TableDefinition<&str, u64> = TableDefinition::new("job_log_sizes");
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const RAFT_SNAPSHOT: TableDefinition<&str, &[u8]> =
    TableDefinition::new("raft_snapshot");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_LOG_PURGED: &str = "log_purged";

/// Settings fixed when the store is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Job-log bytes kept per job (all attempts together); past it the oldest chunks
    /// are deleted. Default 64 MiB.
    pub retention_bytes_per_job: u64,
    /// The database's page cache. Default 64 MiB.
    pub cache_bytes: usize,
    /// Tests only: the database file fails writes or fsyncs while these are armed.
    pub disk_faults: Option<DiskFaults>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retention_bytes_per_job: DEFAULT_RETENTION_BYTES_PER_JOB,
            cache_bytes: DEFAULT_CACHE_BYTES,
            disk_faults: None,
        }
    }
}

struct Inner {
    db: Database,
    path: PathBuf,
    options: StoreOptions,
    /// Groups whose state tables are being rewritten (a snapshot install), each with a
    /// read transaction taken just before: readers see the state as it was meanwhile.
    rewriting: std::sync::Mutex<Rewrites>,
    /// The Raft log's own database, opened by the first Raft call.
    raft_log: raft_log_db::RaftLogDb,
}

/// One replica's database. Cheap to clone (an `Arc` inside); the file stays open (and
/// locked against other openers) until the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish()
    }
}

/// A handle that does not keep the database open (see [`Store::downgrade`]).
#[derive(Clone, Debug)]
pub struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    /// The store, while some [`Store`] still holds it open.
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").field("path", &self.path).finish()
    }
}

impl Store {
    /// A handle that does not keep the database open: something that only reads
    /// through the store (a state's archive) must not hold its file after the engine
    /// that owns it closed.
    pub fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }

    /// Opens (or creates) `<data_dir>/tanvrit.redb` with default options.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// Opens (or creates) `<data_dir>/tanvrit.redb`. Creates the directory (mode 0700,
    /// the file is 0600) and the tables;
    /// refuses a file whose format version is not one this binary reads.
    pub fn open_with(data_dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        // Owner only: the store holds job environments (secrets) in plain text.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(data_dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join(DB_FILE_NAME);
        let db = open_database(&path, options.cache_bytes, options.disk_faults.as_ref())?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(META_FORMAT_VERSION)?
                .map(|v| parse_u64("meta", v.value()));
            match found {
                // Returning drops (aborts) the transaction: a newer file is left untouched.
                Some(Err(err)) => return Err(err),
                Some(Ok(version)) if version != FORMAT_VERSION => {
                    return Err(StoreError::UnsupportedFormat {
                        found: version,
                        supported: FORMAT_VERSION,
                    })
                }
                Some(Ok(_)) => {}
                None => {
                    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_string().as_bytes())?;
                }
            }
            txn.open_table(LOG)?;
            txn.open_table(SNAPSHOT)?;
            txn.open_table(JOB_LOGS)?;
            txn.open_table(JOB_LOG_SIZES)?;
            txn.open_table(RAFT_SNAPSHOT)?;
        }
        txn.commit()?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path,
                options,
                rewriting: Default::default(),
                raft_log: Default::default(),
            }),
        })
    }

    /// Marks `group`'s state tables as being rewritten (or done): meanwhile readers of
    /// them ([`TableArchive`]) are served from a read transaction taken just before,
    /// the whole state as it was, instead of half a new one.
    pub fn set_rewriting(&self, group: &str, rewriting: bool) -> Result<(), StoreError> {
        let before = if rewriting {
            Some(Arc::new(self.db().begin_read()?))
        } else {
            None
        };
        let mut rewrites = self.rewrites();
        rewrites.generation += 1;
        match before {
            Some(view) => {
                rewrites.groups.insert(group.to_string(), view);
            }
            None => {
                rewrites.groups.remove(group);
            }
        }
        Ok(())
    }

    /// Whether `group`'s state tables are being rewritten.
    pub fn is_rewriting(&self, group: &str) -> bool {
        self.rewrites().groups.contains_key(group)
    }

    /// A read transaction over `group`'s whole state: a fresh one, or while the group is
    /// rewritten the one taken before the rewrite began.
    pub(crate) fn read_state_tables(
        &self,
        group: &str,
    ) -> Result<Arc<redb::ReadTransaction>, StoreError> {
        loop {
            let (generation, pinned) = {
                let rewrites = self.rewrites();
                (rewrites.generation, rewrites.groups.get(group).cloned())
            };
            if let Some(view) = pinned {
                return Ok(view);
            }
            let txn = self.db().begin_read()?;
            // Begun with no rewrite under way and none started or ended since: it sees
            // a whole state. Otherwise look again.
            if self.rewrites().generation == generation {
                return Ok(Arc::new(txn));
            }
        }
    }

    fn rewrites(&self) -> std::sync::MutexGuard<'_, Rewrites> {
        self.inner
            .rewriting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The data directory the database lives in.
    pub fn data_dir(&self) -> &Path {
        self.inner.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// The snapshot files of one group (`<data_dir>/snapshots/<group>`).
    pub fn snapshot_dir(&self, group: &str) -> Result<SnapshotDir, StoreError> {
        SnapshotDir::open(self.data_dir(), group)
    }

    /// Makes every earlier non-durable commit durable (an empty durable commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db().begin_write()?.commit()?;
        Ok(())
    }

    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }
}

/// Groups being rewritten, with the view readers get meanwhile.
#[derive(Default)]
struct Rewrites {
    groups: std::collections::BTreeMap<String, Arc<redb::ReadTransaction>>,
    /// Bumped when a rewrite starts or ends.
    generation: u64,
}

/// Opens (or creates) a redb file, owner-only, on the disk `faults` controls if given.
pub(crate) fn open_database(
    path: &Path,
    cache_bytes: usize,
    faults: Option<&DiskFaults>,
) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    let db = match faults {
        None => builder.create(path)?,
        Some(faults) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            builder.create_with_backend(faults::FaultyFile::new(file, faults.clone())?)?
        }
    };
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    Ok(db)
}

/// Meta numbers are stored as decimal text so a person can read them with any redb tool.
pub(crate) fn parse_u64(what: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            what,
            detail: format!("expected a decimal number, found {bytes:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_the_directory_and_records_the_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested/data");
        let store = Store::open(&data_dir).unwrap();
        assert_eq!(store.path(), data_dir.join(DB_FILE_NAME));
        let txn = store.db().begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let version = meta.get(META_FORMAT_VERSION).unwrap().unwrap();
        assert_eq!(version.value(), b"1");
    }

    #[test]
    fn open_refuses_a_newer_format_version_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let txn = store.db().begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_FORMAT_VERSION, b"2".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedFormat {
                    found: 2,
                    supported: 1
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), "store_format_unsupported");
        assert!(err.to_string().contains("format version 2"), "{err}");
        // Refusing twice proves the first refusal did not rewrite the version.
        assert!(matches!(
            Store::open(dir.path()).unwrap_err(),
            StoreError::UnsupportedFormat { found: 2, .. }
        ));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert_eq!(err.code(), "store_locked");
        drop(first);
        Store::open(dir.path()).unwrap();
    }
}
