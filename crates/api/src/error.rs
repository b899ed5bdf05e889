//! The JSON error body: `{"error": {"code": "...", "message": "..."}}`.

use serde::{Deserialize, Serialize};

/// The code of a 503 for a write whose outcome is unknown: it was proposed, then the
/// leader changed (or its answer was lost) before it committed, so it may or may not take
/// effect. Unlike every other 503, repeating such a write is safe only when the server
/// deduplicates it (the same `Idempotency-Key`, or the same key in the body); the
/// repeat's answer then says what happened.
pub const WRITE_OUTCOME_UNKNOWN: &str = "write_outcome_unknown";

/// Every non-2xx response carries this body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable code, e.g. `not_found`, `illegal_transition`, `insufficient_credits`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The current leader, when the error is about leadership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader's API base URL (`http://host:port`), when the error is about
    /// leadership and the answering replica knows it: retry there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_url: Option<String>,
    /// The id of the resource the error is about, when the client needs it to act (the
    /// key an `idempotent_replay_secret_unavailable` refers to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For `events_compacted` (410): the oldest log index the answering replica can
    /// resume an event stream from (`from_index`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_index: Option<u64>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                leader: None,
                leader_url: None,
                id: None,
                oldest_index: None,
            },
        }
    }
}
