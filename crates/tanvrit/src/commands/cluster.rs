//! `tanvrit cluster ...`: topology, a metrics summary, and membership (Raft mode):
//! `init`, `add-replica`, `remove-replica`.

use std::time::Duration;

use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tanvrit_api::{
    ClusterInitResponse, ErrorBody, MembershipResponse, ReplicaAddRequest, ReplicaRemoveRequest,
    Topology,
};
use tanvrit_client::{Client, ClientConfig, ClientError};

use crate::output::{fields, or_dash, table, Output};
use crate::parse::format_time;

/// Cluster introspection.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every replica as the answering one sees it: role, indexes, lag, reachability.
    Topology,
    /// Counts of jobs and nodes per state, keys, schedules, businesses.
    Metrics,
    /// Form the Raft cluster from the voters the answering replica is configured with
    /// (TANVRIT_PEERS), at once. Needed only with raft_auto_bootstrap = false, or when a
    /// peer is down at formation; never after a restart. A formed cluster is left as is.
    Init {
        /// Authorize with the cluster secret instead of an admin key (needed before the
        /// cluster is formed: the first admin key is written through it).
        #[arg(long, env = "TANVRIT_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
    /// Add a running replica (started with TANVRIT_RAFT_NODE_ID=<id>): a learner first,
    /// then a voter once it has caught up.
    AddReplica {
        /// Its Raft id (unused by any other replica).
        #[arg(long)]
        id: u64,
        /// Its name (its TANVRIT_REPLICA_ID).
        #[arg(long)]
        name: String,
        /// Its replica RPC address.
        #[arg(long, value_name = "HOST:PORT")]
        raft_addr: String,
        /// Its public API address.
        #[arg(long, value_name = "HOST:PORT", default_value = "")]
        api_addr: String,
        /// Its region (default: what the replica says of itself).
        #[arg(long, default_value = "")]
        region: String,
        /// Authorize with the cluster secret instead of an admin key.
        #[arg(long, env = "TANVRIT_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
    /// Remove a replica (voter or learner) from the cluster.
    RemoveReplica {
        /// Its Raft id.
        #[arg(long)]
        id: u64,
        /// Authorize with the cluster secret instead of an admin key.
        #[arg(long, env = "TANVRIT_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
}

/// Longest a membership call may take: adding waits for the new replica to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Posts an admin membership call to each configured endpoint in turn until one
/// answers with something other than a transport failure or a 503. Every membership
/// call may be repeated: forming a formed cluster, adding a voter twice or removing a
/// removed replica changes nothing.
pub(crate) async fn membership_call<B: Serialize, T: DeserializeOwned>(
    client: &Client,
    cluster_secret: Option<&str>,
    path: &str,
    body: &B,
) -> Result<T, ClientError> {
    let headers: Vec<(&str, &str)> = cluster_secret
        .filter(|s| !s.is_empty())
        .map(|secret| (tanvrit_api::CLUSTER_SECRET_HEADER, secret))
        .into_iter()
        .collect();
    let body = serde_json::to_vec(body)
        .map_err(|e| ClientError::Config(format!("cannot encode the request: {e}")))?;
    let mut last = ClientError::Config("no endpoint given".into());
    for endpoint in &client.config().endpoints {
        let one = Client::new(ClientConfig {
            endpoints: vec![endpoint.clone()],
            timeout: client.config().timeout.max(MEMBERSHIP_TIMEOUT),
            ..client.config().clone()
        })?;
        let response = match one.post_raw(path, body.clone(), &headers).await {
            Ok(response) => response,
            Err(err @ ClientError::Transport { .. }) => {
                last = err;
                continue;
            }
            Err(err) => return Err(err),
        };
        if (200..300).contains(&response.status) {
            return serde_json::from_slice(&response.body).map_err(|e| ClientError::Decode {
                path: path.to_string(),
                message: e.to_string(),
            });
        }
        let (code, message, leader) = match serde_json::from_slice::<ErrorBody>(&response.body) {
            Ok(body) => (body.error.code, body.error.message, body.error.leader),
            Err(_) => (format!("http_{}", response.status), response.text(), None),
        };
        last = ClientError::Api {
            status: response.status,
            code,
            message,
            retry_after: None,
            leader,
        };
        if response.status != 503 {
            return Err(last);
        }
    }
    Err(last)
}

fn print_topology(topology: &Topology) {
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
        "RAFT ADDRESS",
        "API ADDRESS",
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
            or_dash(r.api_address.as_ref()),
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
}

fn show_membership(out: Output, view: &MembershipResponse) -> anyhow::Result<()> {
    let ids = |ids: &[u64]| {
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
        }
    };
    out.show(view, |v| {
        fields([
            ("voters", ids(&v.voters)),
            ("learners", ids(&v.learners)),
            ("index", v.index.to_string()),
        ])
    })
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
                print_topology(&topology);
                Ok(())
            }
            ClusterCommand::Init { cluster_secret } => {
                let answer: ClusterInitResponse = membership_call(
                    client,
                    cluster_secret.as_deref(),
                    "/api/compute/cluster/init",
                    &serde_json::json!({}),
                )
                .await?;
                if out.json {
                    return out.json(&answer);
                }
                if answer.initialized {
                    println!("formed the cluster; a leader is elected within a few seconds");
                } else {
                    println!("the cluster was already formed; nothing changed");
                }
                print_topology(&answer.topology);
                Ok(())
            }
            ClusterCommand::AddReplica {
                id,
                name,
                raft_addr,
                api_addr,
                region,
                cluster_secret,
            } => {
                let request = ReplicaAddRequest {
                    id,
                    name,
                    raft_addr,
                    api_addr,
                    region,
                };
                let view: MembershipResponse = membership_call(
                    client,
                    cluster_secret.as_deref(),
                    "/api/compute/cluster/replicas/add",
                    &request,
                )
                .await?;
                show_membership(out, &view)
            }
            ClusterCommand::RemoveReplica { id, cluster_secret } => {
                let request = ReplicaRemoveRequest { id };
                let view: MembershipResponse = membership_call(
                    client,
                    cluster_secret.as_deref(),
                    "/api/compute/cluster/replicas/remove",
                    &request,
                )
                .await?;
                show_membership(out, &view)
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ClusterCommand;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tanvrit").chain(args.iter().copied()))
    }

    #[test]
    fn add_replica_needs_an_id_a_name_and_a_raft_address() {
        let cli = parse(&[
            "cluster",
            "add-replica",
            "--id",
            "4",
            "--name",
            "r4",
            "--raft-addr",
            "10.0.0.4:7071",
            "--api-addr",
            "10.0.0.4:7070",
        ])
        .unwrap();
        let Command::Cluster(ClusterCommand::AddReplica {
            id,
            name,
            raft_addr,
            api_addr,
            region,
            ..
        }) = cli.command
        else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(
            (
                id,
                name.as_str(),
                raft_addr.as_str(),
                api_addr.as_str(),
                region.as_str()
            ),
            (4, "r4", "10.0.0.4:7071", "10.0.0.4:7070", "")
        );
        for missing in [
            &[
                "cluster",
                "add-replica",
                "--name",
                "r4",
                "--raft-addr",
                "h:1",
            ][..],
            &["cluster", "add-replica", "--id", "4", "--raft-addr", "h:1"][..],
            &["cluster", "add-replica", "--id", "4", "--name", "r4"][..],
            &["cluster", "remove-replica"][..],
        ] {
            assert_eq!(
                parse(missing).unwrap_err().kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{missing:?}"
            );
        }
        assert!(parse(&["cluster", "init", "--cluster-secret", "s"]).is_ok());
    }
}
