//! Unauthenticated `GET`s: `/healthz`, `/readyz`, `/metrics`, `/api/openapi.json`.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tanvrit_api::{ErrorBody, Index, Role};
use tanvrit_cluster::ClusterError;

use crate::app::AppState;
use crate::error::ApiError;
use crate::metrics::{wants_openmetrics, OPENMETRICS_TEXT, PROMETHEUS_TEXT};

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// `GET /readyz` when this replica can serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// This replica's role.
    pub role: Role,
    /// The leader it knows.
    pub leader: String,
    /// Its applied index.
    pub applied_index: Index,
}

/// 200 while the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub(crate) async fn handle_get_health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// 200 when this replica can serve requests: a leader is known, so writes can be
/// forwarded and strict reads confirmed; 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "`no_leader`: no leader is known yet", body = ErrorBody),
    )
)]
pub(crate) async fn handle_get_readiness(
    State(app): State<AppState>,
) -> Result<Json<Readiness>, ApiError> {
    let cluster = app.cluster();
    match cluster.leader_id() {
        Some(leader) => Ok(Json(Readiness {
            status: "ready".into(),
            role: cluster.role(),
            leader,
            applied_index: app.reader().applied_index(),
        })),
        None => Err(ApiError::Cluster(ClusterError::NoLeader {
            retry_after: app.config().retry_after,
            leader: None,
        })),
    }
}

/// Prometheus metrics: classic text format, or OpenMetrics when the `Accept` header
/// asks for it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub(crate) async fn handle_get_prometheus_metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Response {
    let openmetrics = wants_openmetrics(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    let text = app.metrics().render(app.cluster(), openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS_TEXT
    } else {
        PROMETHEUS_TEXT
    };
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// This API's OpenAPI 3.1 document, generated from the Rust types.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "probes",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub(crate) async fn handle_get_openapi(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi_json().to_string(),
    )
        .into_response()
}
