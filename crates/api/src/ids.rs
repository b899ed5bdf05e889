//! Identifiers and time: plain strings and integers chosen by the server before a write is proposed.

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A job's id (`job-<uuid v7>`, or derived from a schedule fire).
    JobId
);
string_id!(
    /// One run of a job; reports for an attempt that is no longer current are refused.
    AttemptId
);
string_id!(
    /// A worker node's id, chosen by its agent and kept across agent restarts.
    NodeId
);
string_id!(
    /// An API key's public id (the secret is never stored).
    KeyId
);
string_id!(
    /// A business: the tenant that owns jobs, a ledger and schedules.
    BusinessId
);
string_id!(
    /// A schedule's id.
    ScheduleId
);
string_id!(
    /// A credit ledger entry's id.
    EntryId
);

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// A position in the replicated log; every write returns the index it was applied at.
pub type Index = u64;

/// Integer micro-credits (1 credit = 1,000,000).
pub type MicroCredits = i64;
