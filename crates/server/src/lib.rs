//! The Tanvrit Compute HTTP API: JSON over POST under `/api/compute`, bearer-key auth,
//! read consistency, Prometheus metrics and an OpenAPI document, on axum.
//!
//! Every write a handler makes is one `Command` through `ClusterService::submit_write`
//! (ids and `at` chosen here, before proposing); every read names its consistency and
//! passes `ClusterService::read_barrier` first. Every response, errors included, carries
//! `X-Tanvrit-Index`, the replica's applied index.
//!
//! # Layout
//! - this file: the public entry points, [`serve`], [`router`], [`ensure_bootstrap_admin`].
//! - [`config`] holds [`ServerConfig`].
//! - [`error`] holds [`ApiError`] (one `IntoResponse` for every failure) and [`ServerError`].
//! - [`extract`] holds the JSON body and path extractors that answer with [`ApiError`]s.
//! - [`auth`] holds key secrets and hashes, [`Principal`] and its scope checks.
//! - [`cron`] checks cron expressions and time zones and computes next due times.
//! - [`bootstrap`] creates the first admin key.
//! - `app`: the router, shared state, consistency and write helpers, middleware.
//! - `routes`: one file per resource (`jobs`, `nodes`, `keys`, `credits`, `schedules`,
//!   `cluster`, `probes`), each handler named `handle_<verb>_<noun>`.
//! - `metrics`: the Prometheus registry behind `GET /metrics`.

mod app;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod cron;
pub mod error;
pub mod extract;
mod metrics;
mod routes;

use std::future::Future;
use std::sync::Arc;

use tanvrit_cluster::ClusterService;
use tokio::net::TcpListener;

pub use auth::Principal;
pub use bootstrap::{ensure_bootstrap_admin, BootstrapOutcome, ADMIN_KEY_FILE};
pub use config::ServerConfig;
pub use error::{ApiError, ServerError};
pub use metrics::openmetrics_to_prometheus_text;
pub use routes::probes::{Health, Readiness};
pub use routes::EmptyRequest;

/// The whole API as an axum router, for in-process tests (`tower::ServiceExt::oneshot`)
/// or embedding. Long polls in it end at their own deadline; use [`serve`] for a
/// shutdown that also ends them early.
pub fn router(config: ServerConfig, cluster: Arc<dyn ClusterService>) -> axum::Router {
    app::build(config, cluster).0
}

/// Serves the API on `listener` until `shutdown` resolves; then stops accepting
/// connections, answers long polls at once, and returns when requests in flight are done.
/// Tests bind `127.0.0.1:0` and pass the listener in.
pub async fn serve(
    config: ServerConfig,
    cluster: Arc<dyn ClusterService>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    app::serve(config, cluster, listener, shutdown).await
}
