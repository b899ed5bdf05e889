//! Every route, one file per resource. Handlers are `handle_<verb>_<noun>`: extract,
//! authorize, call the cluster or read the state, map the result. Whatever needs more
//! than that lives in plain functions over `&State` beside them, tested without a server.
//!
//! Routes are registered through `utoipa-axum`, so the router and `/api/openapi.json`
//! are built from the same list and cannot drift apart.

pub(crate) mod agents;
pub(crate) mod cluster;
pub(crate) mod cluster_admin;
pub(crate) mod credits;
pub(crate) mod events;
pub(crate) mod jobs;
pub(crate) mod keys;
pub(crate) mod nodes;
pub(crate) mod probes;
pub(crate) mod schedules;
pub(crate) mod ui;

use serde::{Deserialize, Serialize};
use tanvrit_api::{ErrorBody, ErrorDetail};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// The base document: metadata, the bearer scheme, the error schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tanvrit Compute API",
        description = "Control plane of Tanvrit Compute: jobs, nodes, API keys, credits and \
                       schedules. JSON over POST under /api/compute; every response carries \
                       X-Tanvrit-Index, this replica's applied log index."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Submit and follow jobs"),
        (name = "nodes", description = "Worker nodes"),
        (name = "agents", description = "The agent protocol: heartbeats, work, attempt reports (agent or admin keys)"),
        (name = "keys", description = "API keys (admin)"),
        (name = "credits", description = "The credit ledger"),
        (name = "schedules", description = "Cron schedules"),
        (name = "cluster", description = "Replicas and aggregate counts"),
        (name = "events", description = "The event stream: every change, by log index, resumable on any replica"),
        (name = "probes", description = "Unauthenticated health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The errors any authenticated route can answer with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its derived description is used.
pub(crate) enum ApiErrors {
    /// `malformed_json` (not JSON) or `invalid_request` (unknown, missing or mistyped fields).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`: no key, an unknown key, or a revoked key.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the key's scope does not allow this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `body_timeout`: the body did not arrive in time; the connection is closed.
    #[response(status = 408)]
    BodyTimeout(ErrorBody),
    /// `body_too_large`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `unsupported_media_type`: a body that is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// `invalid`: a value is not acceptable; `zero_resources`: a job or schedule template
    /// names zero CPU or memory; `idempotency_conflict`: the `Idempotency-Key` was used for
    /// another request.
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// `rate_limited`: the key is over its scope's request rate; `too_many_streams`: it
    /// already holds as many long polls open as it may. Retry after `Retry-After` seconds.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `no_leader`, `not_caught_up`, `shutting_down`: nothing was done; retry after
    /// `Retry-After` seconds. `write_outcome_unknown` (writes only): the write was
    /// proposed but leadership changed, or the leader's answer was lost, before it
    /// committed, so it may or may not take effect; repeat it with the same
    /// `Idempotency-Key` (or body key) to learn which, and do not repeat it without
    /// one. `leader` and `leader_url` (also header `X-Tanvrit-Leader-Url`) name the
    /// leader when known.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// `storage_error`, `internal`.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// The `Idempotency-Key` header every client write accepts, as the OpenAPI document
/// describes it (the handlers read it with [`crate::extract::IdempotencyKey`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its derived description is used.
pub(crate) struct IdempotencyHeader {
    /// 1-256 printable ASCII characters. A retry with the same key (from the same tenant:
    /// a user key's business, or an admin key) gets the first response back, same body
    /// and `index`, while the server keeps it (24 h by default); the same key with
    /// another request (method, path or body) is 422 `idempotency_conflict`.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// A body for writes that take no parameters (`{}` or empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// Every route with its OpenAPI description.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::handle_submit_job))
        .routes(routes!(jobs::handle_list_jobs))
        .routes(routes!(jobs::handle_get_job))
        .routes(routes!(jobs::handle_cancel_job))
        .routes(routes!(jobs::handle_retry_job))
        .routes(routes!(jobs::handle_get_job_logs))
        .routes(routes!(nodes::handle_register_node))
        .routes(routes!(nodes::handle_list_nodes))
        .routes(routes!(nodes::handle_get_node))
        .routes(routes!(nodes::handle_drain_node))
        .routes(routes!(nodes::handle_delete_node))
        .routes(routes!(agents::handle_heartbeat_node))
        .routes(routes!(agents::handle_poll_node_work))
        .routes(routes!(agents::handle_report_attempt_started))
        .routes(routes!(agents::handle_report_attempt_finished))
        .routes(routes!(agents::handle_append_attempt_logs))
        .routes(routes!(keys::handle_create_key))
        .routes(routes!(keys::handle_list_keys))
        .routes(routes!(keys::handle_revoke_key))
        .routes(routes!(credits::handle_create_credit_entry))
        .routes(routes!(credits::handle_get_credit_balance))
        .routes(routes!(credits::handle_list_credit_entries))
        .routes(routes!(
            events::handle_stream_events,
            events::handle_stream_events_get
        ))
        .routes(routes!(credits::handle_export_credit_entries))
        .routes(routes!(schedules::handle_create_schedule))
        .routes(routes!(schedules::handle_list_schedules))
        .routes(routes!(schedules::handle_get_schedule))
        .routes(routes!(schedules::handle_update_schedule))
        .routes(routes!(schedules::handle_delete_schedule))
        .routes(routes!(cluster::handle_get_topology))
        .routes(routes!(cluster::handle_get_metrics_summary))
        .routes(routes!(probes::handle_get_health))
        .routes(routes!(probes::handle_get_readiness))
        .routes(routes!(probes::handle_get_prometheus_metrics))
        .routes(routes!(probes::handle_get_openapi))
        .merge(cluster_admin::router())
}
