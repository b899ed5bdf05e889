//! Raft mode of `tanvrit server` and `tanvrit dev`: the replica's [`RaftCluster`] on its
//! replica RPC address, and the first admin key, written once the cluster has a leader.
//!
//! A replica in Raft mode serves its API at once (it answers 503 `no_leader` until a
//! cluster is formed), because its peers may not be up yet: waiting for a leader before
//! listening would deadlock replicas started one after another.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tanvrit_api::{Consistency, Scope};
use tanvrit_cluster::raft::HttpTransport;
use tanvrit_cluster::{ClusterService, RaftCluster};
use tanvrit_server::{BootstrapOutcome, ServerError};
use tokio::net::TcpListener;

use crate::config::Config;

/// Pause between two looks at whether the admin key exists or this replica leads.
const BOOTSTRAP_POLL: Duration = Duration::from_millis(200);

/// Starts this replica's `RaftCluster`: binds the replica RPC address and joins (or,
/// per `raft_auto_bootstrap`, forms) the cluster. `api_addr` is the bound API address,
/// told to peers unless `advertise_api_addr` is set.
pub async fn open(config: &Config, api_addr: SocketAddr) -> anyhow::Result<Arc<RaftCluster>> {
    let settings = config.raft_settings(&api_addr.to_string())?;
    let listener = TcpListener::bind(&settings.listen_addr)
        .await
        .with_context(|| format!("cannot listen for replica RPC on {}", settings.listen_addr))?;
    if settings.cluster.tls.is_some() {
        tracing::info!("replica RPC is mutual TLS with the cluster CA (compute.tls.ca_file)");
    } else {
        // Loud on purpose: across regions this is every replica's traffic in the clear.
        tracing::warn!(
            "REPLICA RPC IS NOT ENCRYPTED: replicas authenticate each other with the shared \
             cluster secret only, sent in plain text with every call; set compute.tls \
             cert_file, key_file and ca_file (tanvrit tls cert create --replica N) for \
             mutual TLS"
        );
    }
    let transport = HttpTransport::for_config(&settings.cluster)?;
    let cluster =
        RaftCluster::start_with(settings.cluster, Some(listener), Arc::new(transport)).await?;
    Ok(cluster)
}

fn has_active_admin(cluster: &dyn ClusterService) -> bool {
    cluster.reader().read(|state| {
        state
            .keys()
            .any(|k| k.info.scope == Scope::Admin && k.info.revoked_at.is_none())
    })
}

/// Makes sure the cluster holds an admin key, in the background: only the leader writes
/// it, after a strict read shows there is none yet, so replicas that start together
/// create one key (a generated one lands in the leader's `<data-dir>/admin.key`).
/// Returns once a key exists, or when writing it failed for good.
pub async fn bootstrap_admin_when_led(
    cluster: Arc<dyn ClusterService>,
    data_dir: PathBuf,
    bootstrap_key: Option<String>,
) {
    let mut leadership = cluster.leadership();
    loop {
        if has_active_admin(&*cluster) {
            tracing::debug!("an admin key exists");
            return;
        }
        let leads = *leadership.borrow_and_update();
        if leads && cluster.read_barrier(Consistency::Strict).await.is_ok() {
            match tanvrit_server::ensure_bootstrap_admin(
                &*cluster,
                &data_dir,
                bootstrap_key.as_deref(),
            )
            .await
            {
                Ok(outcome) => {
                    log_outcome(&outcome);
                    return;
                }
                // Leadership moved or the replica is stopping: look again.
                Err(ServerError::Cluster(error)) if error.retry_after().is_some() => {
                    tracing::debug!(%error, "admin key not written yet; retrying");
                }
                Err(error) => {
                    tracing::error!(code = error.code(), %error, "cannot create the admin key");
                    return;
                }
            }
        }
        // Wake early when this replica becomes leader; followers see the key applied.
        let _ = tokio::time::timeout(BOOTSTRAP_POLL, leadership.changed()).await;
        tokio::time::sleep(BOOTSTRAP_POLL / 4).await;
    }
}

/// Logs what the admin bootstrap did (never the secret itself).
pub fn log_outcome(outcome: &BootstrapOutcome) {
    match outcome {
        BootstrapOutcome::AlreadyPresent => tracing::info!("an admin key exists"),
        BootstrapOutcome::FromEnv { key, .. } => {
            tracing::info!(%key, "created the admin key from TANVRIT_BOOTSTRAP_KEY")
        }
        BootstrapOutcome::Generated { key, path, .. } => tracing::info!(
            %key,
            path = %path.display(),
            "generated the admin key; its secret is in the file"
        ),
    }
}
