//! `nodes/register` (agents and admins), `nodes/list`, `nodes/{id}/get`,
//! `nodes/{id}/drain`, `nodes/{id}/delete` (admins). The agent protocol's node routes
//! (`heartbeat`, `work`) are in `agents`.

use axum::extract::State;
use axum::Json;
use tanvrit_api::{
    ErrorBody, Millis, Node, NodeDeleteRequest, NodeDrainRequest, NodeId, NodeListRequest,
    NodeListResponse, NodeRegisterRequest, NodeResponse, NodeState, ReadRequest, Scope,
};
use tanvrit_state::{validate, Command, Effect, State as DomainState};

use super::{ApiErrors, IdempotencyHeader};
use crate::app::{now_ms, unexpected, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, IdempotencyKey};
use crate::identity;

/// Agents register their node; admins do everything.
const REGISTER_SCOPES: &[Scope] = &[Scope::Admin, Scope::Agent];
/// The longest drain deadline: 30 days.
pub const MAX_DRAIN_SECS: u64 = 30 * 24 * 3600;

/// Registers (or re-registers) a worker node; agents call it at start. An agent key
/// registers only the node it is bound to; an unbound one is bound to this node (403 if
/// another active key already is).
#[utoipa::path(
    post,
    path = "/api/compute/nodes/register",
    tag = "nodes",
    params(IdempotencyHeader),
    request_body = NodeRegisterRequest,
    responses(
        (status = 200, description = "The node", body = NodeResponse),
        (status = 409, description = "`illegal_transition` or `already_exists`: another key enrolled this node at the same moment", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_register_node(
    State(app): State<AppState>,
    principal: Principal,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<NodeRegisterRequest>,
) -> Result<Json<NodeResponse>, ApiError> {
    principal.require(REGISTER_SCOPES)?;
    let idempotency = keyed.bind(&principal, &request)?;
    let command = register_command(request, now_ms())?;
    if let Command::NodeRegister { node, .. } = &command {
        identity::enroll(&app, &principal, node).await?;
    }
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(NodeResponse {
        node: effect_node(written.effect)?,
        index: written.index,
    }))
}

/// Lists nodes with what is placed on them.
#[utoipa::path(
    post,
    path = "/api/compute/nodes/list",
    tag = "nodes",
    request_body = NodeListRequest,
    responses((status = 200, description = "Nodes by id", body = NodeListResponse), ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn handle_list_nodes(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<NodeListRequest>,
) -> Result<Json<NodeListResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    app.barrier(request.consistency).await?;
    Ok(Json(
        app.read(|state| list_nodes(state, request.include_deleted)),
    ))
}

/// Reads one node.
#[utoipa::path(
    post,
    path = "/api/compute/nodes/{id}/get",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's id")),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The node", body = NodeResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_node(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<NodeResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    app.barrier(request.consistency).await?;
    let id = NodeId(id);
    app.read(|state| {
        let node = state
            .node(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("node", &id))?;
        Ok(Json(NodeResponse {
            node,
            index: state.applied_index(),
        }))
    })
}

/// Stops placing work on a node; running work finishes, or is stopped and rescheduled
/// at the deadline.
#[utoipa::path(
    post,
    path = "/api/compute/nodes/{id}/drain",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's id"), IdempotencyHeader),
    request_body = NodeDrainRequest,
    responses(
        (status = 200, description = "The draining node", body = NodeResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`illegal_transition`: the node is down or deleted", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_drain_node(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<NodeDrainRequest>,
) -> Result<Json<NodeResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    let idempotency = keyed.bind(&principal, &request)?;
    let at = now_ms();
    let command = Command::NodeDrain {
        node: NodeId(id),
        deadline: drain_deadline(request.deadline_secs, at)?,
        at,
    };
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(NodeResponse {
        node: effect_node(written.effect)?,
        index: written.index,
    }))
}

/// Removes a node; with `force`, its active attempts are declared lost and retried.
#[utoipa::path(
    post,
    path = "/api/compute/nodes/{id}/delete",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's id"), IdempotencyHeader),
    request_body = NodeDeleteRequest,
    responses(
        (status = 200, description = "The deleted node", body = NodeResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`node_busy` (active attempts, no `force`) or `illegal_transition`", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_delete_node(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<NodeDeleteRequest>,
) -> Result<Json<NodeResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    let idempotency = keyed.bind(&principal, &request)?;
    let command = Command::NodeDelete {
        node: NodeId(id),
        force: request.force,
        at: now_ms(),
    };
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(NodeResponse {
        node: effect_node(written.effect)?,
        index: written.index,
    }))
}

// ---- logic, testable on a bare `State` ------------------------------------------------

/// Builds `NodeRegister` from an agent's request, checked first.
pub(crate) fn register_command(
    request: NodeRegisterRequest,
    at: Millis,
) -> Result<Command, ApiError> {
    validate::identifier("node id", request.id.as_str())?;
    if request.name.is_empty() || request.name.len() > 256 {
        return Err(ApiError::Invalid("node names are 1-256 bytes".into()));
    }
    if request.labels.len() > validate::MAX_ITEMS || request.labels.keys().any(String::is_empty) {
        return Err(ApiError::Invalid(format!(
            "labels need non-empty names (at most {})",
            validate::MAX_ITEMS
        )));
    }
    Ok(Command::NodeRegister {
        node: request.id,
        name: request.name,
        resources: request.resources,
        labels: request.labels,
        drivers: request.drivers,
        at,
    })
}

/// The absolute drain deadline for `deadline_secs` from `at`.
pub(crate) fn drain_deadline(
    deadline_secs: Option<u64>,
    at: Millis,
) -> Result<Option<Millis>, ApiError> {
    match deadline_secs {
        None => Ok(None),
        Some(secs) if secs > MAX_DRAIN_SECS => Err(ApiError::Invalid(format!(
            "`deadline_secs` must be at most {MAX_DRAIN_SECS} (30 days)"
        ))),
        // Bounded above, so the product fits comfortably in i64.
        Some(secs) => Ok(Some(at + secs as Millis * 1000)),
    }
}

/// Every node by id, deleted ones only when asked for.
pub(crate) fn list_nodes(state: &DomainState, include_deleted: bool) -> NodeListResponse {
    NodeListResponse {
        nodes: state
            .nodes()
            .filter(|node| include_deleted || node.state != NodeState::Deleted)
            .map(|node| state.node_view(node))
            .collect(),
        index: state.applied_index(),
    }
}

fn effect_node(effect: Effect) -> Result<Node, ApiError> {
    match effect {
        Effect::Node { node } => Ok(*node),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::Resources;

    fn register(id: &str) -> NodeRegisterRequest {
        NodeRegisterRequest {
            id: NodeId::from(id),
            name: format!("{id}.local"),
            resources: Resources {
                cpu_millis: 2000,
                memory_mb: 1024,
                gpus: 0,
            },
            labels: Default::default(),
            drivers: vec!["exec".into(), "docker".into()],
        }
    }

    #[test]
    fn registration_is_checked_before_it_is_proposed() {
        assert!(matches!(
            register_command(register("node-1"), 5),
            Ok(Command::NodeRegister { at: 5, .. })
        ));
        assert_eq!(
            register_command(register("bad id"), 5).unwrap_err().code(),
            "invalid"
        );
        let mut unnamed = register("node-1");
        unnamed.name.clear();
        assert_eq!(
            register_command(unnamed, 5).unwrap_err().status().as_u16(),
            422
        );
    }

    #[test]
    fn drain_deadlines_are_relative_seconds_up_to_thirty_days() {
        assert_eq!(drain_deadline(None, 1_000).unwrap(), None);
        assert_eq!(drain_deadline(Some(60), 1_000).unwrap(), Some(61_000));
        assert!(drain_deadline(Some(MAX_DRAIN_SECS), 1_000).is_ok());
        assert_eq!(
            drain_deadline(Some(MAX_DRAIN_SECS + 1), 0)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            drain_deadline(Some(u64::MAX), 0).unwrap_err().code(),
            "invalid"
        );
    }

    #[test]
    fn deleted_nodes_are_listed_only_when_asked_for() {
        let mut state = DomainState::new();
        for (index, id) in ["node-a", "node-b"].iter().enumerate() {
            state
                .apply(
                    index as u64 + 1,
                    &register_command(register(id), 1).unwrap(),
                )
                .unwrap();
        }
        state
            .apply(
                3,
                &Command::NodeDelete {
                    node: NodeId::from("node-b"),
                    force: false,
                    at: 2,
                },
            )
            .unwrap();
        let live = list_nodes(&state, false);
        assert_eq!(live.nodes.len(), 1);
        assert_eq!(live.nodes[0].node.id.as_str(), "node-a");
        assert_eq!(live.index, 3);
        assert_eq!(list_nodes(&state, true).nodes.len(), 2);
    }
}
