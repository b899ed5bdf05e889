//! `tanvrit job list`: one page, every page (`--all`, or a `--limit` above a page), in
//! a table (`-o wide` adds columns) or as one response, and `--watch` (the list, then
//! each job change from the event stream as a row).

use clap::Args;
use tanvrit_api::{
    BusinessId, Consistency, EventObject, EventStreamRequest, Job, JobId, JobListRequest,
    JobListResponse, JobState, Topic,
};
use tanvrit_client::Client;

use super::job::command_text;
use crate::output::{line, or_dash, table, Output};
use crate::parse::format_time;

/// The most jobs the server returns in one page.
pub const PAGE_MAX: u32 = 1000;

/// `job list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (pending, assigned, running, succeeded, failed, cancelled, lost).
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only this business's jobs.
    #[arg(long)]
    pub business: Option<String>,
    /// Most jobs to show (above a page of 1,000, pages are fetched one after another).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue after this job id (the `next` of the previous page).
    #[arg(long)]
    pub after: Option<String>,
    /// Every job, page after page.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// After the list, print a row for each job change as it happens (Ctrl-C stops).
    #[arg(short, long)]
    pub watch: bool,
}

/// Runs `job list`.
pub async fn list(client: &Client, out: Output, args: ListArgs) -> anyhow::Result<()> {
    let response = fetch(client, &args).await?;
    if out.json {
        out.json(&response)?;
    } else {
        let mut t = table(header(out));
        for job in &response.jobs {
            t.add_row(row(out, job));
        }
        line(&t.to_string())?;
        if let Some(next) = &response.next {
            line(&format!("more: --after {next}"))?;
        }
    }
    if args.watch {
        watch(client, out, &args, response.index).await?;
    }
    Ok(())
}

/// The pages asked for, as one response (`next` from the last page read).
async fn fetch(client: &Client, args: &ListArgs) -> anyhow::Result<JobListResponse> {
    let wanted = if args.all { None } else { args.limit };
    let mut request = JobListRequest {
        consistency: Consistency::Stale,
        state: args.state,
        business: args.business.clone().map(BusinessId::from),
        limit: args.limit.map(|l| l.min(PAGE_MAX)),
        after: args.after.clone().map(JobId::from),
    };
    if args.all {
        request.limit = Some(PAGE_MAX);
    }
    let mut all = client.list_jobs(request.clone()).await?;
    let paging = args.all || wanted.is_some_and(|l| l > PAGE_MAX);
    while let (true, Some(next)) = (paging, all.next.clone()) {
        let left = match wanted {
            Some(limit) => limit.saturating_sub(all.jobs.len() as u32),
            None => PAGE_MAX,
        };
        if left == 0 {
            break;
        }
        request.after = Some(next);
        request.limit = Some(left.min(PAGE_MAX));
        // Later pages read at least the first page's index: one consistent walk.
        request.consistency = Consistency::MinIndex(all.index);
        let page = client.list_jobs(request.clone()).await?;
        all.jobs.extend(page.jobs);
        all.next = page.next;
        all.index = all.index.max(page.index);
    }
    Ok(all)
}

/// Prints each job change after `from` that the list's filters pass, as a row (or a
/// JSON line), until interrupted.
async fn watch(client: &Client, out: Output, args: &ListArgs, from: u64) -> anyhow::Result<()> {
    let mut stream = client.events(EventStreamRequest {
        from_index: Some(from),
        topic: vec![Topic::Job],
        business: args.business.clone().map(BusinessId::from),
        ..EventStreamRequest::default()
    });
    while let Some(event) = stream.next().await {
        let Some(EventObject::Job(job)) = event?.object else {
            continue;
        };
        if args.state.is_some_and(|state| state != job.state) {
            continue;
        }
        if out.json {
            out.json_line(&job)?;
        } else {
            let mut t = table(header(out));
            t.force_no_tty();
            t.add_row(row(out, &job));
            // The row alone: the header was printed with the list.
            let text = t.to_string();
            line(text.lines().last().unwrap_or_default())?;
        }
    }
    Ok(())
}

fn header(out: Output) -> Vec<&'static str> {
    let mut header = vec![
        "ID", "STATE", "BUSINESS", "NAME", "COMMAND", "ATTEMPTS", "CREATED",
    ];
    if out.wide() {
        header.extend(["NODE", "CPU", "MEM MB", "GPUS", "PRIORITY", "UPDATED"]);
    }
    header
}

fn row(out: Output, job: &Job) -> Vec<String> {
    let mut row = vec![
        job.id.to_string(),
        job.state.as_str().to_string(),
        job.business.to_string(),
        or_dash(job.spec.name.as_ref()),
        command_text(&job.spec, 40),
        job.attempts.len().to_string(),
        format_time(job.created_at),
    ];
    if out.wide() {
        let resources = &job.spec.resources;
        row.extend([
            or_dash(job.attempts.last().map(|a| &a.node)),
            resources.cpu_millis.to_string(),
            resources.memory_mb.to_string(),
            resources.gpus.to_string(),
            job.spec.priority.to_string(),
            format_time(job.updated_at),
        ]);
    }
    row
}
