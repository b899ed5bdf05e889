//! The Tanvrit Compute HTTP API: JSON over POST under `/api/compute`, bearer-key auth,
//! read consistency, Prometheus metrics and an OpenAPI document, on axum.
//!
//! Every write a handler makes is one `Command` through `ClusterService::submit_write`
//! (ids and `at` chosen here, before proposing); every read names its consistency and
//! passes `ClusterService::read_barrier` first. Every response, errors included, carries
//! `X-Tanvrit-Index`, the replica's applied index.
//!
//! # Layout
//! - this file: the public entry points, [`serve`], [`router`],
//!   [`router_with_leader_loops`], [`ensure_bootstrap_admin`].
//! - [`config`] holds [`ServerConfig`].
//! - [`error`] holds [`ApiError`] (one `IntoResponse` for every failure) and [`ServerError`].
//! - [`extract`] holds the JSON body and path extractors that answer with [`ApiError`]s,
//!   and the `Idempotency-Key` extractor: with the key, a client write is proposed in a
//!   `Command::Idempotent` envelope scoped to its tenant and fingerprinted by method,
//!   path and canonical body, so a retry is answered with the first response.
//! - [`auth`] holds key secrets and hashes, [`Principal`] and its scope checks.
//! - [`limits`]: per-key request rate limits (token buckets by scope).
//! - `identity`: node-bound agent keys (which node a request may act for; enrollment).
//! - [`cron`] checks cron expressions and time zones and computes next due times.
//! - [`bootstrap`] creates the first admin key.
//! - [`leader`]: the leader-only loops (scheduler, node liveness and drain deadlines,
//!   cron) and their supervisor, which runs them only while this replica leads.
//! - `listener`: the accept loop (TLS with HTTP/2 or HTTP/1.1 by ALPN, or plain
//!   HTTP/1.1; handshake and header read timeouts, head size limit).
//! - `app`: the router, shared state, consistency and write helpers, middleware.
//! - `routes`: one file per resource (`jobs`, `nodes`, `agents` (the agent protocol),
//!   `keys`, `credits`, `schedules`, `cluster`, `cluster_admin` (membership), `probes`),
//!   each handler named `handle_<verb>_<noun>`.
//! - `metrics`: the Prometheus registry behind `GET /metrics`.
//! - `precheck`: writes the state certainly refuses are answered without a proposal.

mod app;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod cron;
pub mod error;
pub mod extract;
mod identity;
pub mod leader;
pub mod limits;
mod listener;
mod metrics;
mod precheck;
mod routes;

use std::future::Future;
use std::sync::Arc;

use tanvrit_cluster::ClusterService;
use tokio::net::TcpListener;

pub use auth::Principal;
pub use bootstrap::{ensure_bootstrap_admin, BootstrapOutcome, ADMIN_KEY_FILE};
pub use config::{ClusterSecret, ServerConfig};
pub use error::{ApiError, ServerError};
pub use leader::{LeaderLoops, Liveness};
pub use limits::{RateLimit, RateLimits};
pub use metrics::openmetrics_to_prometheus_text;
pub use routes::probes::{Health, Readiness};
pub use routes::EmptyRequest;

/// The whole API as an axum router, for in-process tests (`tower::ServiceExt::oneshot`)
/// or embedding, without the leader loops (nothing is scheduled, no node is declared
/// lost, no schedule fires). Long polls in it end at their own deadline; use [`serve`]
/// for a shutdown that also ends them early.
pub fn router(config: ServerConfig, cluster: Arc<dyn ClusterService>) -> axum::Router {
    app::build(config, cluster).0
}

/// The API router together with the leader loops (scheduler, node liveness, cron),
/// which share its heartbeat record and metrics and run while `cluster` reports this
/// replica as leader. Must be called inside a tokio runtime. Dropping the handle (or
/// [`LeaderLoops::stop`]) stops the loops.
pub fn router_with_leader_loops(
    config: ServerConfig,
    cluster: Arc<dyn ClusterService>,
) -> (axum::Router, LeaderLoops) {
    let (router, app) = app::build(config, cluster);
    let loops = app.spawn_leader_loops();
    (router, loops)
}

/// Serves the API on `listener`, with the leader loops running while this replica leads,
/// until `shutdown` resolves; then stops the loops and accepting connections, answers
/// long polls at once, and returns when requests in flight are done. Tests bind
/// `127.0.0.1:0` and pass the listener in.
pub async fn serve(
    config: ServerConfig,
    cluster: Arc<dyn ClusterService>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    app::serve(config, cluster, listener, None, shutdown).await
}

/// [`serve`] over TLS (`tls`; `None` is plain HTTP): the API answers HTTP/2 and HTTP/1.1
/// by ALPN, and a client certificate verified against `tls`'s client CA authenticates a
/// request that carries no API key ([`ServerConfig::client_cert_cluster`]).
pub async fn serve_tls(
    config: ServerConfig,
    cluster: Arc<dyn ClusterService>,
    listener: TcpListener,
    tls: Option<tanvrit_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    app::serve(config, cluster, listener, tls, shutdown).await
}
