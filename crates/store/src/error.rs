//! [`StoreError`]: every way the store can fail, each with a stable code.

/// A storage failure. Codes are stable; messages are for people.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory or database file could not be created or read.
    #[error("data directory i/o failed: {0}")]
    Io(String),
    /// Another process (or another `Store` in this process) has the database open.
    #[error("the database is already open elsewhere")]
    Locked,
    /// The file was written by a newer (or unknown) format version than this binary reads.
    #[error(
        "the database has format version {found}, this binary reads up to {supported}; \
         upgrade the binary or restore a matching data directory"
    )]
    UnsupportedFormat {
        /// The version recorded in the file.
        found: u64,
        /// The newest version this binary understands.
        supported: u64,
    },
    /// A stored record carries a version this binary does not know.
    #[error("a stored {what} record has version {found}, this binary reads up to {supported}")]
    UnsupportedRecord {
        /// What kind of record (`log entry`, `snapshot`).
        what: &'static str,
        /// The version found.
        found: u64,
        /// The newest version this binary understands.
        supported: u64,
    },
    /// A stored record could not be decoded.
    #[error("a stored {what} record is corrupt: {detail}")]
    Corrupt {
        /// What kind of record.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A value could not be encoded.
    #[error("could not encode a {what} record: {detail}")]
    Encode {
        /// What kind of record.
        what: &'static str,
        /// The encoder's complaint.
        detail: String,
    },
    /// Log entries must extend the log one index at a time.
    #[error("log append out of order: expected index {expected}, got {got}")]
    LogOutOfOrder {
        /// The index the next entry must have.
        expected: u64,
        /// The index it had.
        got: u64,
    },
    /// A log truncation would cut into entries already purged (covered by a snapshot).
    #[error("cannot truncate the log from {index}: entries through {purged} are already purged")]
    TruncatePurged {
        /// The requested first index to remove.
        index: u64,
        /// The last purged index.
        purged: u64,
    },
    /// The key is used by the store itself.
    #[error("meta key `{0}` is reserved by the store")]
    ReservedKey(String),
    /// redb reported a failure (i/o, corruption, transaction).
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    /// The stable code clients and metrics match on.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Io(_) => "store_io",
            StoreError::Locked => "store_locked",
            StoreError::UnsupportedFormat { .. } => "store_format_unsupported",
            StoreError::UnsupportedRecord { .. } => "store_record_unsupported",
            StoreError::Corrupt { .. } => "store_corrupt",
            StoreError::Encode { .. } => "store_encode",
            StoreError::LogOutOfOrder { .. } => "store_log_out_of_order",
            StoreError::TruncatePurged { .. } => "store_truncate_purged",
            StoreError::ReservedKey(_) => "store_reserved_key",
            StoreError::Database(_) => "store_database",
        }
    }
}

impl From<redb::Error> for StoreError {
    fn from(err: redb::Error) -> Self {
        match err {
            redb::Error::DatabaseAlreadyOpen => StoreError::Locked,
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// Every redb error type converts through `redb::Error`, so `?` works on all of them.
macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                redb::Error::from(err).into()
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
