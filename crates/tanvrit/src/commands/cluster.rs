//! `tanvrit cluster ...`: topology and a metrics summary.

use clap::Subcommand;
use tanvrit_client::Client;

use crate::output::{fields, or_dash, table, Output};
use crate::parse::format_time;

/// Cluster introspection.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every replica as the answering one sees it: role, indexes, lag, reachability.
    Topology,
    /// Counts of jobs and nodes per state, keys, schedules, businesses.
    Metrics,
}

impl ClusterCommand {
    /// Runs the command.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        match self {
            ClusterCommand::Topology => {
                let topology = client.topology().await?;
                if out.json {
                    return out.json(&topology);
                }
                println!(
                    "cluster {} ({}), answered by {}, leader {}, index {}",
                    topology.cluster_id,
                    topology.mode,
                    topology.this_replica,
                    or_dash(topology.leader.as_ref()),
                    topology.index
                );
                let mut t = table([
                    "NAME",
                    "ID",
                    "REGION",
                    "ADDRESS",
                    "ROLE",
                    "TERM",
                    "COMMIT",
                    "APPLIED",
                    "LAG",
                    "LAST CONTACT",
                    "REACHABLE",
                ]);
                for r in &topology.replicas {
                    t.add_row(vec![
                        r.name.clone(),
                        r.id.to_string(),
                        r.region.clone(),
                        r.address.clone(),
                        r.role.as_str().to_string(),
                        r.term.to_string(),
                        r.commit_index.to_string(),
                        r.applied_index.to_string(),
                        or_dash(r.lag),
                        r.last_contact_ms
                            .map(|ms| format!("{ms} ms"))
                            .unwrap_or_else(|| "-".into()),
                        r.reachable.to_string(),
                    ]);
                }
                println!("{t}");
                Ok(())
            }
            ClusterCommand::Metrics => {
                let summary = client.metrics_summary().await?;
                out.show(&summary, |s| {
                    let per_state = |map: &std::collections::BTreeMap<String, u64>| {
                        if map.is_empty() {
                            "-".to_string()
                        } else {
                            map.iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        }
                    };
                    fields([
                        ("jobs", per_state(&s.jobs_by_state)),
                        ("nodes", per_state(&s.nodes_by_state)),
                        ("active keys", s.active_keys.to_string()),
                        ("schedules", s.schedules.to_string()),
                        ("businesses", s.businesses.to_string()),
                        ("applied index", s.applied_index.to_string()),
                        ("role", or_dash(s.role.map(|r| r.as_str()))),
                        ("at", format_time(s.at)),
                    ])
                })
            }
        }
    }
}
