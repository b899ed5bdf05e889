//! `tanvrit key ...`: create (the secret is printed once), list, revoke.

use clap::Subcommand;
use tanvrit_api::{BusinessId, KeyCreateRequest, KeyId, NodeId, Scope};
use tanvrit_client::Client;

use super::keyed;
use crate::output::{or_dash, table, Output};
use crate::parse::{format_opt_time, format_time};

/// API key commands (admin keys only).
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print its secret, which cannot be shown again.
    Create {
        /// What the key may do: admin, user (one business) or agent (a worker).
        #[arg(long)]
        scope: Scope,
        /// The business a user key is bound to (required for user keys).
        #[arg(long)]
        business: Option<String>,
        /// The node an agent key acts for (its agent registers with this id:
        /// `tanvrit agent --node-id NAME`). Without it, an agent key is bound to the
        /// first node it registers.
        #[arg(long, value_name = "NODE_ID")]
        node: Option<String>,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Repeating the command with the same key creates no second key: it fails with
        /// `idempotent_replay_secret_unavailable`, naming the key the first run created
        /// (whose secret cannot be shown again).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List keys, revoked ones included (never their secrets).
    List,
    /// Revoke a key; requests with it are refused from then on.
    Revoke {
        /// The key's id.
        id: String,
        /// Repeating the command with the same key answers with the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

impl KeyCommand {
    /// Runs the command.
    pub async fn run(self, client: &Client, out: Output) -> anyhow::Result<()> {
        match self {
            KeyCommand::Create {
                scope,
                business,
                node,
                name,
                idempotency_key,
            } => {
                let response = keyed(client, idempotency_key.as_deref())
                    .create_key(KeyCreateRequest {
                        name,
                        scope,
                        business: business.map(BusinessId::from),
                        node: node.map(NodeId::from),
                    })
                    .await?;
                if out.json {
                    return out.json(&response);
                }
                let key = &response.key;
                let bound = match (&key.business, &key.node) {
                    (Some(b), _) => format!(" for business {b}"),
                    (None, Some(n)) => format!(" for node {n}"),
                    (None, None) => String::new(),
                };
                println!(
                    "Created {} key {} ({}){bound}.",
                    key.scope.as_str(),
                    key.id,
                    key.name
                );
                println!();
                println!("Secret (shown only this once; store it now):");
                println!();
                println!("    {}", response.secret);
                println!();
                Ok(())
            }
            KeyCommand::List => {
                let response = client.list_keys().await?;
                out.show(&response, |r| {
                    let mut t = table([
                        "ID", "NAME", "SCOPE", "BUSINESS", "NODE", "CREATED", "REVOKED",
                    ]);
                    for key in &r.keys {
                        t.add_row(vec![
                            key.id.to_string(),
                            key.name.clone(),
                            key.scope.as_str().to_string(),
                            or_dash(key.business.as_ref()),
                            or_dash(key.node.as_ref()),
                            format_time(key.created_at),
                            format_opt_time(key.revoked_at),
                        ]);
                    }
                    t
                })
            }
            KeyCommand::Revoke {
                id,
                idempotency_key,
            } => {
                let response = keyed(client, idempotency_key.as_deref())
                    .revoke_key(&KeyId::from(id))
                    .await?;
                if out.json {
                    return out.json(&response);
                }
                println!(
                    "Revoked key {} at {}.",
                    response.key.id,
                    format_opt_time(response.key.revoked_at)
                );
                Ok(())
            }
        }
    }
}
