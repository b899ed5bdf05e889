//! Jobs: what a business submits, the attempts that run it, and the job endpoints' bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{AttemptId, BusinessId, Consistency, Index, JobId, MicroCredits, Millis, NodeId};

/// What a job needs from a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    #[serde(default)]
    pub cpu_millis: u64,
    /// Memory in MB.
    #[serde(default)]
    pub memory_mb: u64,
    /// Whole GPUs.
    #[serde(default)]
    pub gpus: u32,
}

/// CPU a job reserves when it names none, in millicores (one core).
pub const DEFAULT_JOB_CPU_MILLIS: u64 = 1000;
/// Memory a job reserves when it names none, in MB.
pub const DEFAULT_JOB_MEMORY_MB: u64 = 256;

impl Resources {
    /// What a job that names no resources reserves: [`DEFAULT_JOB_CPU_MILLIS`],
    /// [`DEFAULT_JOB_MEMORY_MB`] and no GPU. Nothing runs free or unlimited.
    pub const JOB_DEFAULT: Resources = Resources {
        cpu_millis: DEFAULT_JOB_CPU_MILLIS,
        memory_mb: DEFAULT_JOB_MEMORY_MB,
        gpus: 0,
    };

    /// [`Resources::JOB_DEFAULT`], as a serde default.
    pub fn job_default() -> Self {
        Self::JOB_DEFAULT
    }

    /// These resources with zero CPU or memory replaced by the job defaults (for
    /// templates stored before the defaults existed).
    pub fn or_job_defaults(self) -> Self {
        Resources {
            cpu_millis: match self.cpu_millis {
                0 => DEFAULT_JOB_CPU_MILLIS,
                millis => millis,
            },
            memory_mb: match self.memory_mb {
                0 => DEFAULT_JOB_MEMORY_MB,
                mb => mb,
            },
            gpus: self.gpus,
        }
    }

    /// True when `other` fits inside `self`.
    pub fn fits(&self, other: &Resources) -> bool {
        other.cpu_millis <= self.cpu_millis
            && other.memory_mb <= self.memory_mb
            && other.gpus <= self.gpus
    }
}

/// What a finished attempt is charged for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BillingBasis {
    /// What it reserved (CPU, memory, GPUs) for as long as it ran.
    #[default]
    Reserved,
    /// What its node measured: CPU time used, and its peak memory for as long as it ran
    /// (GPUs as reserved). An attempt its node did not measure is charged as reserved.
    Used,
}

impl BillingBasis {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingBasis::Reserved => "reserved",
            BillingBasis::Used => "used",
        }
    }
}

impl std::str::FromStr for BillingBasis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reserved" => Ok(BillingBasis::Reserved),
            "used" => Ok(BillingBasis::Used),
            other => Err(format!(
                "`{other}` is not a billing basis: `reserved` or `used`"
            )),
        }
    }
}

/// What an attempt used, as its node's kernel measured it (the attempt's cgroup). A
/// figure the node could not measure is absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AttemptUsage {
    /// CPU time of all its processes (user and system), in milliseconds.
    #[serde(default)]
    pub cpu_ms: Option<u64>,
    /// The most memory it held at once, in bytes.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
}

/// Credit rates recorded on a job at submission, so a rate change never re-prices it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Micro-credits per cpu-second (1000 millicores for one second).
    pub cpu_second: MicroCredits,
    /// Micro-credits per GB-second of memory (1024 MB for one second).
    pub memory_gb_second: MicroCredits,
    /// Micro-credits per GPU-second.
    pub gpu_second: MicroCredits,
    /// Micro-credits every attempt is charged at least, however short its run, and held
    /// at least at admission: no job runs free, so a business with no credits starts
    /// nothing. 0 in jobs recorded before it existed.
    #[serde(default)]
    pub attempt_minimum: MicroCredits,
    /// What attempts are charged for: `reserved` (the default, and what jobs recorded
    /// before it existed use) or `used`. The hold is the reservation either way.
    #[serde(default)]
    pub basis: BillingBasis,
}

/// What to run: the job template shared by submissions and schedules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people; not unique.
    #[serde(default)]
    pub name: Option<String>,
    /// The argv to execute. Exactly one of `command` and `shell` is set.
    #[serde(default)]
    pub command: Vec<String>,
    /// A shell string run with `/bin/sh -c`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory on the node.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Resources reserved on the node for the job's run, and enforced there. A job that
    /// names none, or leaves out `cpu_millis` or `memory_mb`, gets 1000 millicores and
    /// 256 MB; zero CPU or memory is refused (422 `zero_resources`).
    #[serde(default = "Resources::job_default", deserialize_with = "job_resources")]
    pub resources: Resources,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// How many times a failed or lost attempt is retried.
    #[serde(default)]
    pub max_retries: u32,
    /// The attempt is stopped after this many seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Node labels the job requires (every pair must match).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Run in a container of this image, taken from the node's local image store (never
    /// pulled), on a node offering the `docker` driver. Absent: a host command (`exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// With `image`: give the container a network (Docker's default bridge). Default:
    /// none at all (`--network none`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub network: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A job's `resources` as sent: what it leaves out is the job default, not zero.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobResources {
    #[serde(default = "default_cpu_millis")]
    cpu_millis: u64,
    #[serde(default = "default_memory_mb")]
    memory_mb: u64,
    #[serde(default)]
    gpus: u32,
}

fn default_cpu_millis() -> u64 {
    DEFAULT_JOB_CPU_MILLIS
}

fn default_memory_mb() -> u64 {
    DEFAULT_JOB_MEMORY_MB
}

fn job_resources<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Resources, D::Error> {
    let sent = JobResources::deserialize(deserializer)?;
    Ok(Resources {
        cpu_millis: sent.cpu_millis,
        memory_mb: sent.memory_mb,
        gpus: sent.gpus,
    })
}

/// One hour: the timeout of a job that names none.
pub fn default_timeout_secs() -> u64 {
    3600
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            name: None,
            command: Vec::new(),
            shell: None,
            env: BTreeMap::new(),
            working_dir: None,
            resources: Resources::JOB_DEFAULT,
            priority: 0,
            max_retries: 0,
            timeout_secs: default_timeout_secs(),
            labels: BTreeMap::new(),
            image: None,
            network: false,
        }
    }
}

/// A job's lifecycle: pending -> assigned -> running -> succeeded | failed | cancelled | lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a node (or for its retry backoff, or for credits).
    Pending,
    /// Placed on a node; the agent has not started it yet.
    Assigned,
    /// The agent reported the process started.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero or timed out, with no retries left.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Its node died, with no retries left.
    Lost,
}

impl JobState {
    /// True for the states a job never leaves by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Lost
        )
    }

    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Lost,
    ];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// How one attempt ended, or where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Placed on a node, not started.
    Assigned,
    /// Running on its node.
    Running,
    /// The job was cancelled; the agent must stop the process and report.
    Cancelling,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero or could not start.
    Failed,
    /// Stopped at the job's timeout.
    TimedOut,
    /// Stopped because the job was cancelled.
    Cancelled,
    /// Its node was declared down, drained past its deadline, or deleted.
    Lost,
}

impl AttemptState {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Assigned => "assigned",
            AttemptState::Running => "running",
            AttemptState::Cancelling => "cancelling",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::TimedOut => "timed_out",
            AttemptState::Cancelled => "cancelled",
            AttemptState::Lost => "lost",
        }
    }

    /// True while the attempt may still hold a process on its node.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AttemptState::Assigned | AttemptState::Running | AttemptState::Cancelling
        )
    }
}

/// One run of a job on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// The attempt's id; agent reports carry it (fencing).
    pub id: AttemptId,
    /// 1 for the first run, 2 for the first retry, ...
    pub number: u32,
    /// The node it was placed on.
    pub node: NodeId,
    /// Where it is.
    pub state: AttemptState,
    /// When it was placed.
    pub assigned_at: Millis,
    /// When the agent started the process.
    #[serde(default)]
    pub started_at: Option<Millis>,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<Millis>,
    /// The process exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it ended, for people.
    #[serde(default)]
    pub reason: Option<String>,
    /// Bytes of output stored for this attempt.
    #[serde(default)]
    pub log_bytes: u64,
    /// Micro-credits charged for this attempt's runtime.
    #[serde(default)]
    pub charged: MicroCredits,
    /// What it used, as its node measured it (reported with its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AttemptUsage>,
}

/// A job, as every replica stores and returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The owning business.
    pub business: BusinessId,
    /// What to run.
    pub spec: JobSpec,
    /// Where it is in its lifecycle.
    pub state: JobState,
    /// Every attempt so far, oldest first; the last one is current.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// When it was submitted.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// A retried job waits until this time before it is placed again.
    #[serde(default)]
    pub not_before: Option<Millis>,
    /// The client's idempotency key, if it gave one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The schedule that fired it, if any.
    #[serde(default)]
    pub schedule: Option<crate::ScheduleId>,
    /// Rates recorded at submission.
    #[serde(default)]
    pub rates: Rates,
    /// Micro-credits currently held for this job's next or current attempt.
    #[serde(default)]
    pub held: MicroCredits,
    /// Automatic retries used since submission (or since the last manual retry).
    #[serde(default)]
    pub retries: u32,
    /// Why a pending job is not being placed, e.g. `insufficient_credits`.
    #[serde(default)]
    pub blocked: Option<String>,
    /// The index of the write that last changed it.
    #[serde(default)]
    pub modify_index: Index,
}

impl Job {
    /// The current attempt, if the job was ever placed.
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

/// `POST /api/compute/jobs/submit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSubmitRequest {
    /// The business to bill; admin keys must name one, user keys may only name their own.
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// What to run.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// A retried submission with the same key returns the first job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The job a write produced or changed, and the index it was applied at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobResponse {
    /// The job.
    pub job: Job,
    /// Log index of the write (pass it as `min_index` to read your write).
    pub index: Index,
}

/// `POST /api/compute/jobs/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobListRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// Only jobs in this state.
    #[serde(default)]
    pub state: Option<JobState>,
    /// Only this business's jobs (user keys always see only their own).
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// Most jobs to return (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Continue after this job id (from the previous page's `next`).
    #[serde(default)]
    pub after: Option<JobId>,
}

/// Jobs, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobListResponse {
    /// The page.
    pub jobs: Vec<Job>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default)]
    pub next: Option<JobId>,
    /// The replica's applied index this read reflects.
    pub index: Index,
}

/// A read of one resource: `jobs/{id}/get`, `nodes/{id}/get`, ...
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
}

/// `jobs/{id}/cancel` and `jobs/{id}/retry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobActionRequest {
    /// Why, for the record.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/compute/jobs/{id}/logs`: a window of an attempt's output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobLogsRequest {
    /// Read consistency.
    #[serde(default)]
    pub consistency: Consistency,
    /// Which attempt (default: the current one).
    #[serde(default)]
    pub attempt: Option<AttemptId>,
    /// Byte offset to read from.
    #[serde(default)]
    pub offset: u64,
    /// Most bytes to return (default 1 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Wait up to this many milliseconds for new output when there is none yet.
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// A window of output. `data` is UTF-8 with invalid bytes replaced; offsets count raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobLogsResponse {
    /// The attempt read (absent if the job never ran).
    #[serde(default)]
    pub attempt: Option<AttemptId>,
    /// Offset of the first byte of `data`.
    pub offset: u64,
    /// The output.
    pub data: String,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// True when the attempt has ended and every byte was returned.
    pub complete: bool,
    /// The replica's applied index this read reflects.
    pub index: Index,
}
