//! `tanvrit schedule ...`: create, list, get, update, delete.

use clap::{ArgGroup, Args, Subcommand};
use tanvrit_api::{
    BusinessId, CatchUpPolicy, Consistency, OverlapPolicy, ScheduleCreateRequest, ScheduleId,
    ScheduleListRequest, ScheduleUpdateRequest, ScheduleView,
};
use tanvrit_client::Client;

use super::job::{TemplateArgs, ENV_BUSINESS};
use super::{keyed, needs_business, DEFAULT_BUSINESS};
use crate::output::{fields, or_dash, table, wire_name, Output};
use crate::parse::{self, format_catch_up, format_opt_time, format_time};

/// Cron schedule commands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: `tanvrit schedule create --cron "0 * * * *" -- CMD ARGS...`.
    Create(CreateArgs),
    /// List schedules with their next fire time.
    List {
        /// Only this business's schedules.
        #[arg(long)]
        business: Option<String>,
    },
    /// Show one schedule.
    Get {
        /// The schedule's id.
        id: String,
    },
    /// Change a schedule; only the given fields change.
    Update(UpdateArgs),
    /// Delete a schedule (jobs it already fired are kept).
    Delete {
        /// The schedule's id.
        id: String,
        /// Repeating the command with the same key answers with the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

/// `schedule create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Cron expression: 5 fields, an optional leading seconds field, or `@hourly` style.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone, e.g. Europe/Berlin (default UTC).
    #[arg(long)]
    pub tz: Option<String>,
    /// When a fire is due while the last fired job is active: allow, forbid or replace.
    #[arg(long)]
    pub overlap: Option<OverlapPolicy>,
    /// Fires missed while no leader could fire them: skip, latest-only (the default),
    /// all (up to 1000) or all:N.
    #[arg(long, value_parser = parse::catch_up)]
    pub catch_up: Option<CatchUpPolicy>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
    /// The business to bill (default: a user key's own; `default` for an admin key).
    #[arg(long, env = ENV_BUSINESS)]
    pub business: Option<String>,
    /// Repeating the command with the same key creates no second schedule: it answers
    /// with the first result.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The job each fire submits (`--name` names the schedule and its jobs).
    #[command(flatten)]
    pub template: TemplateArgs,
}

/// `schedule update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("switch").args(["enable", "disable"])))]
pub struct UpdateArgs {
    /// The schedule's id.
    pub id: String,
    /// New cron expression.
    #[arg(long)]
    pub cron: Option<String>,
    /// New time zone.
    #[arg(long)]
    pub tz: Option<String>,
    /// New overlap policy: allow, forbid or replace.
    #[arg(long)]
    pub overlap: Option<OverlapPolicy>,
    /// New catch-up policy: skip, latest-only, all (up to 1000) or all:N.
    #[arg(long, value_parser = parse::catch_up)]
    pub catch_up: Option<CatchUpPolicy>,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Resume firing.
    #[arg(long)]
    pub enable: bool,
    /// Stop firing (the schedule is kept).
    #[arg(long)]
    pub disable: bool,
    /// Repeating the command with the same key answers with the first result.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

impl ScheduleCommand {
    /// Runs the command.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        match self {
            ScheduleCommand::Create(args) => {
                let client = keyed(client, args.idempotency_key.as_deref());
                let request = |business: Option<&str>| ScheduleCreateRequest {
                    business: business.map(BusinessId::from),
                    name: args.template.name.clone(),
                    cron: args.cron.clone(),
                    timezone: args.tz.clone(),
                    template: args.template.spec(),
                    enabled: Some(!args.disabled),
                    overlap: args.overlap,
                    catch_up: args.catch_up,
                };
                let response = match client
                    .create_schedule(request(args.business.as_deref()))
                    .await
                {
                    Err(err) if args.business.is_none() && needs_business(&err) => {
                        client
                            .create_schedule(request(Some(DEFAULT_BUSINESS)))
                            .await?
                    }
                    answer => answer?,
                };
                out.show(&response, |r| schedule_details(&r.schedule))
            }
            ScheduleCommand::List { business } => {
                let response = client
                    .list_schedules(ScheduleListRequest {
                        consistency: Consistency::Stale,
                        business: business.map(BusinessId::from),
                    })
                    .await?;
                out.show(&response, |r| {
                    let mut t = table([
                        "ID",
                        "NAME",
                        "BUSINESS",
                        "CRON",
                        "TZ",
                        "ENABLED",
                        "OVERLAP",
                        "NEXT FIRE",
                        "FIRED",
                        "SKIPPED",
                    ]);
                    for view in &r.schedules {
                        let s = &view.schedule;
                        t.add_row(vec![
                            s.id.to_string(),
                            or_dash(s.name.as_ref()),
                            s.business.to_string(),
                            s.cron.clone(),
                            s.timezone.clone(),
                            s.enabled.to_string(),
                            wire_name(&s.overlap),
                            format_opt_time(view.next_fire_at),
                            s.fired.to_string(),
                            s.skipped.to_string(),
                        ]);
                    }
                    t
                })
            }
            ScheduleCommand::Get { id } => {
                let response = client
                    .get_schedule(&ScheduleId::from(id), Consistency::Stale)
                    .await?;
                out.show(&response, |r| schedule_details(&r.schedule))
            }
            ScheduleCommand::Update(args) => {
                let enabled = match (args.enable, args.disable) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                };
                let response = keyed(client, args.idempotency_key.as_deref())
                    .update_schedule(
                        &ScheduleId::from(args.id),
                        ScheduleUpdateRequest {
                            name: args.name,
                            cron: args.cron,
                            timezone: args.tz,
                            template: None,
                            enabled,
                            overlap: args.overlap,
                            catch_up: args.catch_up,
                        },
                    )
                    .await?;
                out.show(&response, |r| schedule_details(&r.schedule))
            }
            ScheduleCommand::Delete {
                id,
                idempotency_key,
            } => {
                let id = ScheduleId::from(id);
                let response = keyed(client, idempotency_key.as_deref())
                    .delete_schedule(&id)
                    .await?;
                if out.json {
                    return out.json(&response);
                }
                println!("Deleted schedule {id} (index {}).", response.index);
                Ok(())
            }
        }
    }
}

fn schedule_details(view: &ScheduleView) -> comfy_table::Table {
    let s = &view.schedule;
    let command = match &s.template.shell {
        Some(shell) => format!("sh -c {shell:?}"),
        None => s.template.command.join(" "),
    };
    fields([
        ("id", s.id.to_string()),
        ("name", or_dash(s.name.as_ref())),
        ("business", s.business.to_string()),
        ("cron", s.cron.clone()),
        ("time zone", s.timezone.clone()),
        ("enabled", s.enabled.to_string()),
        ("overlap", wire_name(&s.overlap)),
        ("catch-up", format_catch_up(&s.catch_up)),
        ("command", command),
        ("next fire", format_opt_time(view.next_fire_at)),
        ("last fire", format_opt_time(s.last_fire_at)),
        ("last job", or_dash(s.last_job.as_ref())),
        ("fired / skipped", format!("{} / {}", s.fired, s.skipped)),
        ("created", format_time(s.created_at)),
        ("updated", format_time(s.updated_at)),
    ])
}
