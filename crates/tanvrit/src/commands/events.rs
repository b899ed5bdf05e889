//! `tanvrit events` (follow the event stream, filtered) and `tanvrit job watch ID`
//! (a job's state until it ends), both on the SDK's resumable [`EventStream`].

use clap::Args;
use tanvrit_api::{Consistency, Event, EventObject, EventStreamRequest, JobId, Topic};
use tanvrit_client::Client;

use crate::output::Output;

/// `tanvrit events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only these topics (comma-separated or repeated): job, attempt, node, schedule,
    /// credit, key, cluster.
    #[arg(long, value_delimiter = ',')]
    pub topic: Vec<Topic>,
    /// Only this business's events (a user key always sees its own only).
    #[arg(long)]
    pub business: Option<String>,
    /// Only this job's events.
    #[arg(long)]
    pub job: Option<String>,
    /// Only events about this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Start after this log index (default: from now on).
    #[arg(long)]
    pub from_index: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

impl EventsArgs {
    fn request(&self) -> EventStreamRequest {
        EventStreamRequest {
            from_index: self.from_index,
            topic: self.topic.clone(),
            business: self.business.clone().map(Into::into),
            job: self.job.clone().map(Into::into),
            node: self.node.clone().map(Into::into),
            ..EventStreamRequest::default()
        }
    }
}

/// Prints events as they come: one line each, or one JSON object per line (`--json`).
pub async fn run_events(client: &Client, out: Output, args: EventsArgs) -> anyhow::Result<()> {
    let mut stream = client.events(args.request());
    let mut printed = 0u64;
    while args.limit.is_none_or(|limit| printed < limit) {
        let Some(event) = stream.next().await else {
            break;
        };
        print_event(out, &event?)?;
        printed += 1;
    }
    Ok(())
}

/// `tanvrit job watch ID`: the job's state now, then each change until it ends.
pub async fn watch_job(client: &Client, out: Output, id: String) -> anyhow::Result<()> {
    let job = JobId::from(id);
    let now = client.get_job(&job, Consistency::Stale).await?;
    // Everything after the read: the client's token covers the state it was read at.
    let from = now.index.max(client.last_index());
    if out.json {
        out.json_line(&now.job)?;
    } else {
        println!("{}  {}", now.job.id, now.job.state.as_str());
    }
    if now.job.state.is_terminal() {
        return Ok(());
    }
    let mut stream = client.events(EventStreamRequest {
        from_index: Some(from),
        topic: vec![Topic::Job, Topic::Attempt],
        job: Some(job),
        ..EventStreamRequest::default()
    });
    while let Some(event) = stream.next().await {
        let event = event?;
        print_event(out, &event)?;
        if let Some(EventObject::Job(job)) = &event.object {
            if job.state.is_terminal() {
                break;
            }
        }
    }
    Ok(())
}

fn print_event(out: Output, event: &Event) -> anyhow::Result<()> {
    if out.json {
        return out.json_line(event);
    }
    let mut line = format!(
        "{:<10} {:<9} {:<24} {}",
        event.cursor(),
        event.topic.as_str(),
        event.kind,
        event.id
    );
    if let Some(node) = &event.node {
        line.push_str(&format!("  node={node}"));
    }
    if let Some(business) = &event.business {
        line.push_str(&format!("  business={business}"));
    }
    crate::output::line(&line)
}
