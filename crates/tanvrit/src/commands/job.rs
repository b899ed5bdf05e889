//! `tanvrit job ...`: submit, list, get, cancel, retry, logs.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tanvrit_api::{
    AttemptId, BusinessId, Consistency, Job, JobActionRequest, JobId, JobLogsRequest, JobSpec,
    JobSubmitRequest, Resources,
};
use tanvrit_client::Client;

use super::{keyed, needs_business, DEFAULT_BUSINESS};
use crate::output::{fields, or_dash, pairs, table, wire_name, Output};
use crate::parse::{self, format_credits, format_opt_time, format_time};

/// The business jobs and schedules go to when `--business` is not given.
pub const ENV_BUSINESS: &str = "TANVRIT_BUSINESS";

/// Job commands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job: `tanvrit job submit [FLAGS] -- CMD ARGS...` or `--shell "STR"`.
    Submit(SubmitArgs),
    /// List jobs, newest first (`--all` pages through every one; `--watch` follows).
    List(super::job_list::ListArgs),
    /// Show one job and its attempts.
    Get {
        /// The job's id.
        id: String,
    },
    /// Cancel a job; a running attempt is told to stop.
    Cancel {
        /// The job's id.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        /// Repeating the command with the same key answers with the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Requeue a failed, cancelled or lost job.
    Retry {
        /// The job's id.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        /// Repeating the command with the same key answers with the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print a job's output.
    Logs(LogsArgs),
    /// Follow a job's state changes (from the event stream) until it ends.
    Watch {
        /// The job's id.
        id: String,
    },
}

/// What to run and with what: shared by `job submit` and `schedule create`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// A name for people.
    #[arg(long)]
    pub name: Option<String>,
    /// CPU to reserve, in millicores (1000 = one core).
    #[arg(long, default_value_t = 1000)]
    pub cpu_millis: u64,
    /// Memory to reserve, in MB.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: u64,
    /// Whole GPUs to reserve.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Higher runs first (-1000..=1000).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Retries after a failed or lost attempt.
    #[arg(long, default_value_t = 0)]
    pub max_retries: u32,
    /// Stop an attempt after this long, e.g. 90s, 10m, 2h.
    #[arg(long, default_value = "1h", value_parser = parse::duration_secs)]
    pub timeout: u64,
    /// A node label the job requires, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,
    /// An environment variable for the process, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,
    /// Working directory on the node.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Run in a container of this image (from the node's local store; placed only on
    /// nodes offering the `docker` driver).
    #[arg(long)]
    pub image: Option<String>,
    /// With --image: give the container a network (default: none).
    #[arg(long, requires = "image")]
    pub network: bool,
    /// Run this string with `/bin/sh -c` instead of a command after `--`.
    #[arg(long, conflicts_with = "command")]
    pub shell: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", required_unless_present = "shell")]
    pub command: Vec<String>,
}

impl TemplateArgs {
    /// The job spec these flags describe.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            name: self.name.clone(),
            command: self.command.clone(),
            shell: self.shell.clone(),
            env: self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            working_dir: self.workdir.clone(),
            resources: Resources {
                cpu_millis: self.cpu_millis,
                memory_mb: self.memory_mb,
                gpus: self.gpus,
            },
            priority: self.priority,
            max_retries: self.max_retries,
            timeout_secs: self.timeout,
            labels: self.labels.iter().cloned().collect(),
            image: self.image.clone(),
            network: self.network,
        }
    }
}

/// `job submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The business to bill (default: a user key's own; `default` for an admin key).
    #[arg(long, env = ENV_BUSINESS)]
    pub business: Option<String>,
    /// A retried submit with the same key returns the first job instead of a new one
    /// (sent as the `Idempotency-Key` header and as the job's own key).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
}

/// `job logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id.
    pub id: String,
    /// Which attempt (default: the current one).
    #[arg(long)]
    pub attempt: Option<String>,
    /// Keep printing output as it arrives until the attempt ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// How long one follow poll asks the server to wait for new output.
const FOLLOW_WAIT_MS: u64 = 20_000;
/// A poll that returns sooner than this with nothing new (e.g. a job not placed yet,
/// which the server answers at once) waits out the rest before asking again.
const FOLLOW_MIN_INTERVAL: Duration = Duration::from_millis(500);

impl JobCommand {
    /// Runs the command.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        match self {
            JobCommand::Submit(args) => {
                let client = keyed(client, args.idempotency_key.as_deref());
                let request = |business: Option<&str>| JobSubmitRequest {
                    business: business.map(BusinessId::from),
                    spec: args.template.spec(),
                    idempotency_key: args.idempotency_key.clone(),
                };
                let response = match client.submit_job(request(args.business.as_deref())).await {
                    Err(err) if args.business.is_none() && needs_business(&err) => {
                        client.submit_job(request(Some(DEFAULT_BUSINESS))).await?
                    }
                    answer => answer?,
                };
                out.show(&response, |r| job_summary(&r.job, r.index))
            }
            JobCommand::List(args) => super::job_list::list(client, out, args).await,
            JobCommand::Get { id } => {
                let response = client.get_job(&JobId::from(id), Consistency::Stale).await?;
                if out.json {
                    return out.json(&response);
                }
                println!("{}", job_details(&response.job));
                if !response.job.attempts.is_empty() {
                    let mut t = table([
                        "#", "ATTEMPT", "NODE", "STATE", "STARTED", "FINISHED", "EXIT", "CPU",
                        "PEAK MEM", "CHARGED", "REASON",
                    ]);
                    for a in &response.job.attempts {
                        t.add_row(vec![
                            a.number.to_string(),
                            a.id.to_string(),
                            a.node.to_string(),
                            wire_name(&a.state),
                            format_opt_time(a.started_at),
                            format_opt_time(a.finished_at),
                            or_dash(a.exit_code),
                            or_dash(a.usage.and_then(|u| u.cpu_ms).map(|ms| format!("{ms} ms"))),
                            or_dash(
                                a.usage
                                    .and_then(|u| u.peak_memory_bytes)
                                    .map(|b| format!("{:.1} MB", b as f64 / (1024.0 * 1024.0))),
                            ),
                            format_credits(a.charged),
                            or_dash(a.reason.as_ref()),
                        ]);
                    }
                    println!("{t}");
                }
                Ok(())
            }
            JobCommand::Cancel {
                id,
                reason,
                idempotency_key,
            } => {
                let response = keyed(client, idempotency_key.as_deref())
                    .cancel_job(&JobId::from(id), JobActionRequest { reason })
                    .await?;
                out.show(&response, |r| job_summary(&r.job, r.index))
            }
            JobCommand::Retry {
                id,
                reason,
                idempotency_key,
            } => {
                let response = keyed(client, idempotency_key.as_deref())
                    .retry_job(&JobId::from(id), JobActionRequest { reason })
                    .await?;
                out.show(&response, |r| job_summary(&r.job, r.index))
            }
            JobCommand::Logs(args) => logs(client, out, args).await,
            JobCommand::Watch { id } => crate::commands::events::watch_job(client, out, id).await,
        }
    }
}

/// Prints an attempt's output: what is there now, or with `--follow` everything until
/// the attempt ends. The attempt is pinned after the first answer, so a retry starting
/// meanwhile cannot splice another attempt's bytes into this stream.
async fn logs(client: &Client, out: Output, args: LogsArgs) -> anyhow::Result<()> {
    let job = JobId::from(args.id);
    let mut attempt = args.attempt.map(AttemptId::from);
    let mut offset = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let asked = Instant::now();
        let response = client
            .job_logs(
                &job,
                JobLogsRequest {
                    consistency: Consistency::Stale,
                    attempt: attempt.clone(),
                    offset,
                    max_bytes: None,
                    wait_ms: args.follow.then_some(FOLLOW_WAIT_MS),
                },
            )
            .await?;
        if out.json {
            out.json_line(&response)?;
        } else if !response.data.is_empty() {
            stdout.write_all(response.data.as_bytes())?;
            stdout.flush()?;
        }
        if attempt.is_none() {
            attempt = response.attempt.clone();
        }
        let progressed = response.next_offset > offset;
        offset = response.next_offset.max(offset);
        if response.complete {
            return Ok(());
        }
        if !args.follow {
            if !progressed {
                return Ok(());
            }
            continue;
        }
        if !progressed {
            let elapsed = asked.elapsed();
            if elapsed < FOLLOW_MIN_INTERVAL {
                tokio::time::sleep(FOLLOW_MIN_INTERVAL - elapsed).await;
            }
        }
    }
}

/// The command as one line, shortened to `max` characters.
pub(crate) fn command_text(spec: &JobSpec, max: usize) -> String {
    let text = match &spec.shell {
        Some(shell) => format!("sh -c {shell:?}"),
        None => spec.command.join(" "),
    };
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// The short table shown after a job write.
fn job_summary(job: &Job, index: u64) -> comfy_table::Table {
    fields([
        ("id", job.id.to_string()),
        ("state", job.state.as_str().to_string()),
        ("business", job.business.to_string()),
        ("command", command_text(&job.spec, 60)),
        ("held", format_credits(job.held)),
        ("index", index.to_string()),
    ])
}

/// Every field of a job, for `job get`.
fn job_details(job: &Job) -> comfy_table::Table {
    let spec = &job.spec;
    fields([
        ("id", job.id.to_string()),
        ("name", or_dash(spec.name.as_ref())),
        ("business", job.business.to_string()),
        ("state", job.state.as_str().to_string()),
        ("blocked", or_dash(job.blocked.as_ref())),
        ("command", command_text(spec, usize::MAX)),
        ("workdir", or_dash(spec.working_dir.as_ref())),
        ("env", pairs(&spec.env)),
        ("labels", pairs(&spec.labels)),
        (
            "resources",
            format!(
                "{} millicores, {} MB, {} GPUs",
                spec.resources.cpu_millis, spec.resources.memory_mb, spec.resources.gpus
            ),
        ),
        ("priority", spec.priority.to_string()),
        (
            "retries",
            format!("{} of {}", job.retries, spec.max_retries),
        ),
        ("timeout", parse::format_secs(spec.timeout_secs)),
        ("held", format_credits(job.held)),
        ("idempotency key", or_dash(job.idempotency_key.as_ref())),
        ("schedule", or_dash(job.schedule.as_ref())),
        ("created", format_time(job.created_at)),
        ("updated", format_time(job.updated_at)),
        ("not before", format_opt_time(job.not_before)),
        ("modify index", job.modify_index.to_string()),
    ])
}
