//! Node-bound agent identity on the request path: which node an agent key acts for, and
//! enrollment (the first registration of an unbound agent key binds it to that node).
//!
//! The rules, each a 403 `forbidden` that writes nothing:
//! - an agent key bound to node A polls, heartbeats and registers node A only;
//! - it reports (started, finished, log chunks) only attempts placed on node A;
//! - an unbound agent key (made before keys were bound, or without `node`) does nothing
//!   but register a node; that registration binds it (`Command::KeyBind`), unless
//!   another active key is already bound to that node;
//! - agent keys read no job through the user API (`jobs/{id}/get` is admin and user).
//!
//! Admin keys act for every node. `apply` keeps the binding race-safe: two unbound keys
//! enrolling one node at once cannot both be bound to it.

use tanvrit_api::{AttemptId, Consistency, JobId, NodeId, Scope};
use tanvrit_state::{validate, Command, State as DomainState};

use crate::app::{now_ms, AppState};
use crate::auth::Principal;
use crate::error::ApiError;

/// `principal` as the cluster knows it now, when it is an agent key this replica holds
/// as unbound: its binding may have been applied through the leader and not here yet
/// (an agent registers, then polls another replica), so it is read again after a strict
/// barrier instead of being refused at once.
pub(crate) async fn current(app: &AppState, principal: Principal) -> Result<Principal, ApiError> {
    if principal.scope != Scope::Agent || principal.node.is_some() {
        return Ok(principal);
    }
    app.barrier(Consistency::Strict).await?;
    let node = app.read(|state| state.key(&principal.key).and_then(|k| k.info.node.clone()));
    Ok(Principal { node, ..principal })
}

/// Refuses with 403 unless `principal` may act for `node` ([`Principal::require_node`],
/// with an unbound agent key's binding read again first).
pub(crate) async fn require_node(
    app: &AppState,
    principal: Principal,
    node: &NodeId,
) -> Result<(), ApiError> {
    current(app, principal).await?.require_node(node)
}

/// The node an attempt of `job` was placed on, if this replica holds it.
fn attempt_node(state: &DomainState, job: &JobId, attempt: &AttemptId) -> Option<NodeId> {
    state.find_attempt(job, attempt).map(|a| a.node)
}

/// Refuses with 403 an agent's report of an attempt placed on another node. An attempt
/// this replica does not hold yet (placed through the leader, not applied here) is looked
/// up again after a strict barrier; one still unknown is refused as it is for any key
/// (404, or 409 `stale_attempt`; see `precheck`).
pub(crate) async fn ensure_own_attempt(
    app: &AppState,
    principal: &Principal,
    job: &JobId,
    attempt: &AttemptId,
) -> Result<(), ApiError> {
    if principal.scope != Scope::Agent {
        return Ok(());
    }
    let principal = current(app, principal.clone()).await?;
    let own = principal.bound_node()?;
    let mut node = app.read(|state| attempt_node(state, job, attempt));
    if node.is_none() {
        app.barrier(Consistency::Strict).await?;
        node = app.read(|state| attempt_node(state, job, attempt));
    }
    match node {
        Some(node) if node != *own => Err(ApiError::Forbidden(format!(
            "attempt `{}` runs on another node than agent key `{}` acts for",
            validate::short(attempt.as_str()),
            principal.key
        ))),
        _ => Ok(()),
    }
}

/// Before an agent registers `node`: a bound key must name its own node; an unbound
/// key is bound to `node` first (enrollment), unless another active key already is
/// (403). Admin keys register any node.
pub(crate) async fn enroll(
    app: &AppState,
    principal: &Principal,
    node: &NodeId,
) -> Result<(), ApiError> {
    let principal = current(app, principal.clone()).await?;
    match (principal.scope, &principal.node) {
        (Scope::Agent, None) => {}
        _ => return principal.require_node(node),
    }
    let taken = app.read(|state| state.node_key(node).map(|key| key.info.id.clone()));
    if let Some(other) = taken {
        return Err(ApiError::Forbidden(format!(
            "node `{node}` is enrolled with another agent key (`{other}`); register it with \
             that key, or revoke it first"
        )));
    }
    let command = Command::KeyBind {
        key: principal.key.clone(),
        node: node.clone(),
        at: now_ms(),
    };
    app.write(command).await?;
    tracing::info!(key = %principal.key, node = %node, "agent key enrolled its node");
    Ok(())
}
