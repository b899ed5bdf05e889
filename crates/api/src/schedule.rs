//! Cron schedules: a job template fired by the leader at each due time.

use serde::{Deserialize, Serialize};

use crate::{BusinessId, Consistency, Index, JobId, JobSpec, Millis, ScheduleId};

/// What to do when a fire is due while the previous fired job is still active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Fire anyway.
    #[default]
    Allow,
    /// Skip this fire.
    Forbid,
    /// Cancel the active job, then fire.
    Replace,
}

impl std::str::FromStr for OverlapPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(OverlapPolicy::Allow),
            "forbid" => Ok(OverlapPolicy::Forbid),
            "replace" => Ok(OverlapPolicy::Replace),
            other => Err(format!(
                "unknown overlap policy `{other}` (allow, forbid, replace)"
            )),
        }
    }
}

/// What to do with fires missed while no leader was firing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CatchUpPolicy {
    /// Fire none of them.
    Skip,
    /// Fire only the most recent one.
    #[default]
    LatestOnly,
    /// Fire each, up to this many.
    All(u32),
}

/// A schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Schedule {
    /// The schedule's id.
    pub id: ScheduleId,
    /// The owning business.
    pub business: BusinessId,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Cron expression: 5 fields, an optional leading seconds field, or `@hourly` style.
    pub cron: String,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// The job each fire submits.
    pub template: JobSpec,
    /// Fires only while enabled.
    pub enabled: bool,
    /// Overlap policy.
    pub overlap: OverlapPolicy,
    /// Catch-up policy after downtime.
    pub catch_up: CatchUpPolicy,
    /// When it was created.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// The last due time handled (fired or skipped).
    #[serde(default)]
    pub last_fire_at: Option<Millis>,
    /// The job the last fire created.
    #[serde(default)]
    pub last_job: Option<JobId>,
    /// Fires that created a job.
    #[serde(default)]
    pub fired: u64,
    /// Fires skipped (overlap, credits, catch-up).
    #[serde(default)]
    pub skipped: u64,
    /// The index of the write that last changed it.
    #[serde(default)]
    pub modify_index: Index,
}

/// A schedule with its next due time, computed at read time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Next due time after now, if any.
    #[serde(default)]
    pub next_fire_at: Option<Millis>,
}

/// `POST /api/compute/schedules/create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreateRequest {
    /// The business (user keys: their own).
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The job each fire submits.
    pub template: JobSpec,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Default `allow`.
    #[serde(default)]
    pub overlap: Option<OverlapPolicy>,
    /// Default `latest_only`.
    #[serde(default)]
    pub catch_up: Option<CatchUpPolicy>,
}

/// `POST /api/compute/schedules/{id}/update`: only the given fields change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleUpdateRequest {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New cron expression.
    #[serde(default)]
    pub cron: Option<String>,
    /// New time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// New template.
    #[serde(default)]
    pub template: Option<JobSpec>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// New overlap policy.
    #[serde(default)]
    pub overlap: Option<OverlapPolicy>,
    /// New catch-up policy.
    #[serde(default)]
    pub catch_up: Option<CatchUpPolicy>,
}

/// The schedule a write produced or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleResponse {
    /// The schedule.
    pub schedule: ScheduleView,
    /// Log index of the write.
    pub index: Index,
}

/// `POST /api/compute/schedules/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleListRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// Only this business's schedules (user keys: always their own).
    #[serde(default)]
    pub business: Option<BusinessId>,
}

/// Schedules, by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleListResponse {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
    /// The replica's applied index this read reflects.
    pub index: Index,
}

/// A write that returns nothing but its index (deletes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResponse {
    /// Log index of the write.
    pub index: Index,
}
