//! The credit ledger: append-only entries per business in integer micro-credits.
//!
//! Each entry's `amount` is its signed effect on the business's *available* balance:
//! a hold is negative, its release positive. So available = the sum of all entries,
//! held = holds minus releases, and available never goes below zero.

use serde::{Deserialize, Serialize};

use crate::{
    AttemptUsage, BillingBasis, BusinessId, Consistency, EntryId, Index, JobId, MicroCredits,
    Millis,
};

/// How a charge was computed: on which basis, over what runtime, from which measured
/// figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChargeDetails {
    /// The basis the charge was computed on: `used` only when the node measured the
    /// attempt (the job's basis was `used`), else `reserved`.
    pub basis: BillingBasis,
    /// The attempt's runtime, in milliseconds.
    pub runtime_ms: u64,
    /// What the node measured, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AttemptUsage>,
}

/// What a ledger entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits bought (positive).
    TopUp,
    /// Reserved for a job at submission (negative).
    Hold,
    /// A finished attempt's runtime (negative).
    Charge,
    /// What a hold did not need (positive).
    Release,
    /// Credits given back (positive).
    Refund,
    /// An admin correction (either sign).
    Adjustment,
}

impl EntryKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TopUp => "top_up",
            EntryKind::Hold => "hold",
            EntryKind::Charge => "charge",
            EntryKind::Release => "release",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
        }
    }
}

impl std::str::FromStr for EntryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "top_up" | "topup" | "top-up" => Ok(EntryKind::TopUp),
            "hold" => Ok(EntryKind::Hold),
            "charge" => Ok(EntryKind::Charge),
            "release" => Ok(EntryKind::Release),
            "refund" => Ok(EntryKind::Refund),
            "adjustment" => Ok(EntryKind::Adjustment),
            other => Err(format!("unknown entry kind `{other}`")),
        }
    }
}

/// One ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntry {
    /// The entry's id.
    pub id: EntryId,
    /// Position in the business's ledger, from 1.
    pub seq: u64,
    /// The business.
    pub business: BusinessId,
    /// What it records.
    pub kind: EntryKind,
    /// Signed effect on the available balance.
    pub amount: MicroCredits,
    /// Available balance after this entry.
    pub balance_after: MicroCredits,
    /// The job it concerns, for holds, charges and releases.
    #[serde(default)]
    pub job: Option<JobId>,
    /// Deduplicates retried entries.
    pub idempotency_key: String,
    /// A note for people.
    #[serde(default)]
    pub note: Option<String>,
    /// When it was written.
    pub at: Millis,
    /// For charges: how the amount was computed (basis, runtime, measured usage).
    /// Absent from entries written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<ChargeDetails>,
}

/// `POST /api/compute/credits/entries/create` (admin): a top-up, refund or adjustment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreditEntryCreateRequest {
    /// The business.
    pub business: BusinessId,
    /// `top_up`, `refund` or `adjustment`.
    pub kind: EntryKind,
    /// Micro-credits: positive for top-ups and refunds; either sign for adjustments.
    pub amount: MicroCredits,
    /// A retried request with the same key writes nothing new.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// A note for people.
    #[serde(default)]
    pub note: Option<String>,
}

/// The entry written (or found, for a retried key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditEntryResponse {
    /// The entry.
    pub entry: LedgerEntry,
    /// Log index of the write.
    pub index: Index,
}

/// `POST /api/compute/credits/balance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreditBalanceRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// The business (user keys: their own, the default).
    #[serde(default)]
    pub business: Option<BusinessId>,
}

/// A business's balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditBalanceResponse {
    /// The business.
    pub business: BusinessId,
    /// Spendable micro-credits (the sum of all entries).
    pub available: MicroCredits,
    /// Micro-credits held for pending and running jobs.
    pub held: MicroCredits,
    /// Number of ledger entries.
    pub entries: u64,
    /// The replica's applied index this read reflects.
    pub index: Index,
}

/// `POST /api/compute/credits/entries/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreditEntriesRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// The business (user keys: their own, the default).
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// Only entries at or after this time.
    #[serde(default)]
    pub from: Option<Millis>,
    /// Only entries before this time.
    #[serde(default)]
    pub to: Option<Millis>,
    /// Start after this sequence number.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// Most entries (default 100, at most 10,000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Ledger entries, oldest first, with running balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditEntriesResponse {
    /// The business.
    pub business: BusinessId,
    /// The entries.
    pub entries: Vec<LedgerEntry>,
    /// The replica's applied index this read reflects.
    pub index: Index,
}

/// `POST /api/compute/credits/entries/export` (admin): a business's ledger as CSV
/// (`text/csv`), oldest first, with the running balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreditExportRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// The business.
    pub business: BusinessId,
    /// Only entries at or after this time.
    #[serde(default)]
    pub from: Option<Millis>,
    /// Only entries before this time.
    #[serde(default)]
    pub to: Option<Millis>,
}
