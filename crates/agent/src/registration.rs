//! Registering the node: the request (resources, labels, the drivers it offers), retried
//! with backoff, and which refusals end the agent or make it register again; and the
//! node's devices (the Docker engine behind the `docker` driver, its GPUs), set up once.

use tanvrit_client::api::{Node, NodeRegisterRequest};
use tanvrit_client::ClientError;

use crate::agent::Shared;
use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::docker::Docker;
use crate::gpus::GpuPool;
use crate::isolation::Isolation;
use crate::AgentError;

/// `isolation` with the node's devices from `config`: the Docker engine when the
/// `docker` driver is asked for (failing when it does not answer), and the GPU devices,
/// which the node then offers as its GPUs.
pub(crate) fn with_devices(
    isolation: Isolation,
    config: &mut AgentConfig,
) -> Result<Isolation, AgentError> {
    let docker = config
        .docker
        .as_ref()
        .map(Docker::detect)
        .transpose()
        .map_err(|e| AgentError::Config(format!("the docker driver cannot be offered: {e}")))?;
    if !config.gpus.is_empty() {
        config.resources.gpus = config.gpus.len() as u32;
    }
    Ok(isolation.with_devices(docker, GpuPool::new(config.gpus.clone())))
}

/// True for answers that mean the node must register again: unknown (404), or down or
/// deleted (409 `illegal_transition`).
pub(crate) fn needs_registration(err: &ClientError) -> bool {
    node_unknown(err)
        || matches!(err, ClientError::Api { code, .. } if code == "illegal_transition")
}

/// True when the control plane does not know the node at all (404): nothing the agent
/// runs can be its own any more. A node that is only down (409) may still own its
/// attempts: it went down after the TTL, but they are lost only after `lost_after`.
pub(crate) fn node_unknown(err: &ClientError) -> bool {
    matches!(err, ClientError::Api { status: 404, .. })
}

/// True for refusals that no retry can change (only on the first registration do they
/// end the agent: later, an operator may fix the key while the agent keeps its work).
pub(crate) fn refused_for_good(err: &ClientError) -> bool {
    match err {
        ClientError::Api { status, .. } => {
            (400..500).contains(status) && !matches!(status, 408 | 429)
        }
        // The control plane's certificate is not trusted, or it refused ours: a CA file
        // or certificate to fix, not a network blip.
        ClientError::Config(_) | ClientError::Tls { .. } => true,
        _ => false,
    }
}

/// Registers the node, retrying with backoff while the control plane is unreachable.
pub(crate) async fn register(shared: &Shared, first: bool) -> Result<Node, AgentError> {
    let config = &shared.config;
    let request = NodeRegisterRequest {
        id: shared.node.clone(),
        name: config.name.clone(),
        resources: config.resources,
        labels: config.labels.clone(),
        drivers: shared.isolation.drivers(),
    };
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    loop {
        match shared.client.register_node(request.clone()).await {
            Ok(response) => {
                tracing::info!(node = %response.node.id, index = response.index, "registered");
                shared
                    .lease
                    .send_modify(|lease| lease.registered(response.index));
                return Ok(response.node);
            }
            Err(err) if first && refused_for_good(&err) => return Err(AgentError::Refused(err)),
            Err(err) => {
                let delay = backoff.next_delay();
                if backoff.failures() == 1 || refused_for_good(&err) {
                    tracing::warn!(error = %err, "cannot register the node; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
