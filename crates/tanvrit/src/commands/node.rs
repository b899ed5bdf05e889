//! `tanvrit node ...`: list, get, drain, delete.

use clap::Subcommand;
use tanvrit_api::{
    Consistency, EventObject, EventStreamRequest, Node, NodeDeleteRequest, NodeDrainRequest,
    NodeId, NodeListRequest, Topic,
};
use tanvrit_client::Client;

use super::keyed;
use crate::output::{fields, line, or_dash, pairs, table, Output};
use crate::parse::{self, format_opt_time, format_time};

/// Node commands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with what is placed on them (`--watch` follows their changes).
    List {
        /// Include deleted nodes.
        #[arg(long)]
        all: bool,
        /// After the list, print each node change as it happens (Ctrl-C stops).
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one node.
    Get {
        /// The node's id.
        id: String,
    },
    /// Stop placing work on a node; running work finishes, or is stopped at the deadline.
    Drain {
        /// The node's id.
        id: String,
        /// Stop running work after this long (e.g. 10m) and reschedule it.
        #[arg(long, value_parser = parse::duration_secs)]
        deadline: Option<u64>,
        /// Repeating the command with the same key answers with the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Remove a node.
    Delete {
        /// The node's id.
        id: String,
        /// Delete even with active attempts (they are declared lost and retried).
        #[arg(long)]
        force: bool,
        /// Repeating the command with the same key answers with the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

impl NodeCommand {
    /// Runs the command.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        match self {
            NodeCommand::List { all, watch } => {
                let response = client
                    .list_nodes(NodeListRequest {
                        consistency: Consistency::Stale,
                        include_deleted: all,
                    })
                    .await?;
                out.show(&response, |r| {
                    let mut t = table([
                        "ID",
                        "NAME",
                        "STATE",
                        "CPU (m)",
                        "MEMORY (MB)",
                        "GPUS",
                        "ACTIVE",
                        "LABELS",
                    ]);
                    for view in &r.nodes {
                        let n = &view.node;
                        t.add_row(vec![
                            n.id.to_string(),
                            n.name.clone(),
                            n.state.as_str().to_string(),
                            format!("{}/{}", view.allocated.cpu_millis, n.resources.cpu_millis),
                            format!("{}/{}", view.allocated.memory_mb, n.resources.memory_mb),
                            format!("{}/{}", view.allocated.gpus, n.resources.gpus),
                            view.active_attempts.to_string(),
                            pairs(&n.labels),
                        ]);
                    }
                    t
                })?;
                if watch {
                    watch_nodes(client, out, response.index).await?;
                }
                Ok(())
            }
            NodeCommand::Get { id } => {
                let response = client
                    .get_node(&NodeId::from(id), Consistency::Stale)
                    .await?;
                out.show(&response, |r| node_details(&r.node))
            }
            NodeCommand::Drain {
                id,
                deadline,
                idempotency_key,
            } => {
                let response = keyed(client, idempotency_key.as_deref())
                    .drain_node(
                        &NodeId::from(id),
                        NodeDrainRequest {
                            deadline_secs: deadline,
                        },
                    )
                    .await?;
                out.show(&response, |r| node_details(&r.node))
            }
            NodeCommand::Delete {
                id,
                force,
                idempotency_key,
            } => {
                let response = keyed(client, idempotency_key.as_deref())
                    .delete_node(&NodeId::from(id), NodeDeleteRequest { force })
                    .await?;
                out.show(&response, |r| node_details(&r.node))
            }
        }
    }
}

fn node_details(node: &Node) -> comfy_table::Table {
    fields([
        ("id", node.id.to_string()),
        ("name", node.name.clone()),
        ("state", node.state.as_str().to_string()),
        (
            "resources",
            format!(
                "{} millicores, {} MB, {} GPUs",
                node.resources.cpu_millis, node.resources.memory_mb, node.resources.gpus
            ),
        ),
        ("labels", pairs(&node.labels)),
        ("registered", format_time(node.registered_at)),
        ("updated", format_time(node.updated_at)),
        ("drain deadline", format_opt_time(node.drain_deadline)),
        ("modify index", or_dash(Some(node.modify_index))),
    ])
}

/// Prints each node change after `from`: a line (id, name, state) or the node as JSON.
async fn watch_nodes(client: &Client, out: Output, from: u64) -> anyhow::Result<()> {
    let mut stream = client.events(EventStreamRequest {
        from_index: Some(from),
        topic: vec![Topic::Node],
        ..EventStreamRequest::default()
    });
    while let Some(event) = stream.next().await {
        let Some(EventObject::Node(node)) = event?.object else {
            continue;
        };
        if out.json {
            out.json_line(&node)?;
        } else {
            line(&format!(
                "{}  {}  {}",
                node.id,
                node.name,
                node.state.as_str()
            ))?;
        }
    }
    Ok(())
}
