//! Membership administration: `cluster/init` forms a Raft cluster from its configured
//! voters, `cluster/replicas/add` and `cluster/replicas/remove` change its members. Any
//! replica takes them; membership changes run on the leader (the cluster forwards them).
//! A replica without Raft answers 409 `membership_refused`.
//!
//! They are authorized by an admin key, or by the cluster secret in
//! `X-Tanvrit-Cluster-Secret` (the replica's `ServerConfig::cluster_secret`): a cluster
//! formed with `init` has no key yet, since the first admin key is a replicated write.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use subtle::ConstantTimeEq;
use tanvrit_api::{
    ClusterInitResponse, MembershipResponse, ReplicaAddRequest, ReplicaRemoveRequest, Scope,
};
use tanvrit_cluster::{MembershipView, ReplicaNode};
use tanvrit_state::validate;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiErrors, EmptyRequest};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// Who may change the membership: an admin key, or a caller presenting the cluster
/// secret.
pub(crate) struct ClusterOperator;

impl FromRequestParts<AppState> for ClusterOperator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(presented) = parts.headers.get(tanvrit_api::CLUSTER_SECRET_HEADER) else {
            let principal = Principal::from_request_parts(parts, app).await?;
            principal.require(&[Scope::Admin])?;
            return Ok(ClusterOperator);
        };
        let Some(secret) = &app.config().cluster_secret else {
            return Err(ApiError::Unauthorized(
                "this replica has no cluster secret; use an admin key".into(),
            ));
        };
        // `ct_eq` compares every byte whatever the first difference.
        if bool::from(presented.as_bytes().ct_eq(secret.0.as_bytes())) {
            Ok(ClusterOperator)
        } else {
            Err(ApiError::Unauthorized("wrong cluster secret".into()))
        }
    }
}

/// The routes of this file, merged into the API by `routes::api`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handle_init_cluster))
        .routes(routes!(handle_add_replica))
        .routes(routes!(handle_remove_replica))
}

fn membership(view: MembershipView) -> MembershipResponse {
    MembershipResponse {
        voters: view.voters,
        learners: view.learners,
        index: view.index,
    }
}

/// Forms the cluster from the voters this replica is configured with (`TANVRIT_PEERS`).
/// Once only: on a formed cluster it changes nothing and says so. Replicas started with
/// `raft_auto_bootstrap` (the default) form it themselves once every peer answers.
#[utoipa::path(
    post,
    path = "/api/compute/cluster/init",
    tag = "cluster",
    request_body = EmptyRequest,
    responses(
        (status = 200, description = "Formed now (`initialized: true`) or before", body = ClusterInitResponse),
        (status = 409, description = "`membership_refused`: not in Raft mode", body = tanvrit_api::ErrorBody),
        ApiErrors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_init_cluster(
    State(app): State<AppState>,
    _operator: ClusterOperator,
    ApiJson(_request): ApiJson<EmptyRequest>,
) -> Result<Json<ClusterInitResponse>, ApiError> {
    let initialized = app.cluster().initialize().await?;
    Ok(Json(ClusterInitResponse {
        initialized,
        topology: app.cluster().topology(),
    }))
}

/// Adds a replica: a learner first, then a voter once it caught up with the leader.
/// The new replica must be running (started with `TANVRIT_RAFT_NODE_ID` = `id`). Adding
/// a voter again changes nothing.
#[utoipa::path(
    post,
    path = "/api/compute/cluster/replicas/add",
    tag = "cluster",
    request_body = ReplicaAddRequest,
    responses(
        (status = 200, description = "The members after the change", body = MembershipResponse),
        (status = 409, description = "`membership_refused`: not in Raft mode, or the change was refused (e.g. the replica did not catch up)", body = tanvrit_api::ErrorBody),
        ApiErrors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_add_replica(
    State(app): State<AppState>,
    _operator: ClusterOperator,
    ApiJson(request): ApiJson<ReplicaAddRequest>,
) -> Result<Json<MembershipResponse>, ApiError> {
    if request.id == 0 {
        return Err(ApiError::Invalid("id must be non-zero".into()));
    }
    validate::identifier("replica name", &request.name)
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    if request.raft_addr.trim().is_empty() {
        return Err(ApiError::Invalid("raft_addr must be host:port".into()));
    }
    let node = ReplicaNode {
        name: request.name,
        region: request.region,
        raft_addr: request.raft_addr.trim().to_string(),
        api_addr: request.api_addr.trim().to_string(),
    };
    let view = app.cluster().add_replica(request.id, node).await?;
    Ok(Json(membership(view)))
}

/// Removes a replica (voter or learner) from the members.
#[utoipa::path(
    post,
    path = "/api/compute/cluster/replicas/remove",
    tag = "cluster",
    request_body = ReplicaRemoveRequest,
    responses(
        (status = 200, description = "The members after the change", body = MembershipResponse),
        (status = 409, description = "`membership_refused`", body = tanvrit_api::ErrorBody),
        ApiErrors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_remove_replica(
    State(app): State<AppState>,
    _operator: ClusterOperator,
    ApiJson(request): ApiJson<ReplicaRemoveRequest>,
) -> Result<Json<MembershipResponse>, ApiError> {
    let view = app.cluster().remove_replica(request.id).await?;
    Ok(Json(membership(view)))
}
