//! Typed refusals: a command that `apply` rejects changes nothing and says why.

use serde::{Deserialize, Serialize};

/// Why a command was refused. Each variant has a stable [`Rejection::code`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Rejection {
    /// The named thing does not exist.
    #[error("{kind} `{id}` not found")]
    NotFound { kind: String, id: String },
    /// The thing exists but cannot make this move from where it is.
    #[error("{kind} `{id}` is {from}; cannot {action}")]
    IllegalTransition {
        kind: String,
        id: String,
        from: String,
        action: String,
    },
    /// A report for an attempt that is no longer current (fencing).
    #[error("attempt `{attempt}` of job `{job}` is not current ({detail})")]
    StaleAttempt {
        job: String,
        attempt: String,
        detail: String,
    },
    /// The business's available balance cannot cover this.
    #[error("business `{business}` has {available} micro-credits available; {needed} needed")]
    InsufficientCredits {
        business: String,
        needed: i64,
        available: i64,
    },
    /// A value is not acceptable.
    #[error("{message}")]
    Invalid { message: String },
    /// Something with this id already exists.
    #[error("{kind} `{id}` already exists")]
    AlreadyExists { kind: String, id: String },
    /// The idempotency key was used for a different request.
    #[error("idempotency key `{key}` was already used for a different request")]
    IdempotencyConflict { key: String },
    /// The node still has active attempts.
    #[error("node `{node}` has {active} active attempts; drain it first or force")]
    NodeBusy { node: String, active: u32 },
    /// A log chunk does not start where the stored output ends.
    #[error("log chunk at offset {offset} does not continue the output ending at {expected}")]
    LogGap { offset: u64, expected: u64 },
    /// A job (or schedule template) names zero CPU or zero memory: nothing runs with no
    /// reservation (leave the field out to get the default).
    #[error(
        "`resources.{resource}` must be at least 1 (leave it out for the default: \
         1000 millicores, 256 MB)"
    )]
    ZeroResources { resource: String },
}

impl Rejection {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotFound { .. } => "not_found",
            Rejection::IllegalTransition { .. } => "illegal_transition",
            Rejection::StaleAttempt { .. } => "stale_attempt",
            Rejection::InsufficientCredits { .. } => "insufficient_credits",
            Rejection::Invalid { .. } => "invalid",
            Rejection::AlreadyExists { .. } => "already_exists",
            Rejection::IdempotencyConflict { .. } => "idempotency_conflict",
            Rejection::NodeBusy { .. } => "node_busy",
            Rejection::LogGap { .. } => "log_gap",
            Rejection::ZeroResources { .. } => "zero_resources",
        }
    }

    /// The HTTP status this refusal maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            Rejection::NotFound { .. } => 404,
            Rejection::IllegalTransition { .. }
            | Rejection::StaleAttempt { .. }
            | Rejection::AlreadyExists { .. }
            | Rejection::NodeBusy { .. }
            | Rejection::LogGap { .. } => 409,
            Rejection::InsufficientCredits { .. } => 402,
            Rejection::Invalid { .. }
            | Rejection::IdempotencyConflict { .. }
            | Rejection::ZeroResources { .. } => 422,
        }
    }

    pub(crate) fn not_found(kind: &str, id: impl ToString) -> Self {
        Rejection::NotFound {
            kind: kind.to_string(),
            id: id.to_string(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Rejection::Invalid {
            message: message.into(),
        }
    }

    pub(crate) fn illegal(kind: &str, id: impl ToString, from: &str, action: &str) -> Self {
        Rejection::IllegalTransition {
            kind: kind.to_string(),
            id: id.to_string(),
            from: from.to_string(),
            action: action.to_string(),
        }
    }
}
