//! The router and what every handler shares ([`AppState`]): the cluster, the config,
//! the metrics, the heartbeat record, and the helpers that give reads their consistency
//! and turn a write's receipt into an effect or an error.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tanvrit_api::{BusinessId, Consistency, Index, JobId, Millis};
use tanvrit_cluster::{ClusterError, ClusterService, Reader};
use tanvrit_state::{Command, Effect, State as DomainState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Principal;
use crate::config::ServerConfig;
use crate::error::{ApiError, BodyTimedOut, ServerError};
use crate::extract::Idempotency;
use crate::leader::{self, LeaderContext, LeaderLoops, Liveness};
use crate::limits::{RateLimiter, StreamGuard, StreamLimiter};
use crate::listener::{self, ConnectionLimits};
use crate::metrics::Metrics;
use crate::precheck;
use crate::routes;

/// What an accepted write gave a handler to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// The effect: of this delivery, or the first delivery's for a replay.
    pub effect: Effect,
    /// The log index the effect was applied at (the first delivery's, for a replay).
    pub index: Index,
    /// True when an `Idempotency-Key` repeated an earlier write: nothing was applied now.
    pub replayed: bool,
}

/// Shared by every handler. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    cluster: Arc<dyn ClusterService>,
    metrics: Metrics,
    openapi_json: String,
    /// Last heartbeat per node, shared with the leader's liveness loop.
    liveness: Liveness,
    /// True while this replica leads (heartbeats are answered by the leader only).
    leadership: watch::Receiver<bool>,
    /// Per-key token buckets (`config.rate_limits`).
    limiter: RateLimiter,
    /// Long polls open per key (`config.max_streams_per_key`).
    streams: StreamLimiter,
    /// Flips to true when graceful shutdown starts, so long polls answer at once
    /// instead of holding the shutdown for up to `long_poll_max`.
    shutdown: watch::Sender<bool>,
}

impl AppState {
    pub(crate) fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn cluster(&self) -> &dyn ClusterService {
        self.inner.cluster.as_ref()
    }

    pub(crate) fn reader(&self) -> &Reader {
        self.inner.cluster.reader()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn openapi_json(&self) -> &str {
        &self.inner.openapi_json
    }

    /// Takes a request from `principal`'s rate limit: 429 `rate_limited` when it has
    /// none left.
    pub(crate) fn rate_limit(&self, principal: &Principal) -> Result<(), ApiError> {
        self.inner
            .limiter
            .take(&principal.key, principal.scope, Instant::now())
            .map_err(|retry_after| {
                self.metrics()
                    .abuse()
                    .rate_limited(principal.scope.as_str());
                ApiError::RateLimited { retry_after }
            })
    }

    /// Holds a place among `principal`'s open long polls while the guard lives, when the
    /// request will wait (`wait_ms` above 0): 429 `too_many_streams` when it has none.
    pub(crate) fn open_stream(
        &self,
        principal: &Principal,
        wait_ms: Option<u64>,
    ) -> Result<Option<StreamGuard>, ApiError> {
        if wait_ms.unwrap_or(0) == 0 {
            return Ok(None);
        }
        match self.inner.streams.open(&principal.key) {
            Some(guard) => Ok(Some(guard)),
            None => Err(ApiError::TooManyStreams {
                limit: self.inner.streams.max(),
                retry_after: self.config().retry_after,
            }),
        }
    }

    pub(crate) fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }

    /// True while this replica leads.
    pub(crate) fn is_leader(&self) -> bool {
        *self.inner.leadership.borrow()
    }

    /// The leader loops for this API: they share its heartbeat record and metrics.
    pub(crate) fn spawn_leader_loops(&self) -> LeaderLoops {
        leader::spawn(LeaderContext {
            config: self.inner.config.clone(),
            cluster: self.inner.cluster.clone(),
            liveness: self.inner.liveness.clone(),
            metrics: self.inner.metrics.leader_loops().clone(),
        })
    }

    /// Runs `f` on this replica's applied state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&DomainState) -> R) -> R {
        self.reader().read(f)
    }

    /// Waits until a read at `consistency` may be served here, bounded by
    /// `min_index_wait` (then 503, so a lagging replica never hangs a client).
    pub(crate) async fn barrier(&self, consistency: Consistency) -> Result<Index, ApiError> {
        let wait = self.config().min_index_wait;
        match tokio::time::timeout(wait, self.cluster().read_barrier(consistency)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ApiError::Cluster(match consistency {
                Consistency::MinIndex(wanted) => ClusterError::NotCaughtUp {
                    wanted,
                    applied: self.reader().applied_index(),
                    retry_after: self.config().retry_after,
                },
                Consistency::Stale | Consistency::Strict => ClusterError::NoLeader {
                    retry_after: self.config().retry_after,
                    leader: self.cluster().leader_id(),
                },
            })),
        }
    }

    /// Proposes a command; an accepted one gives its effect and index, a refused one
    /// becomes the rejection's error.
    pub(crate) async fn write(&self, command: Command) -> Result<(Effect, Index), ApiError> {
        let written = self.write_keyed(command, None).await?;
        Ok((written.effect, written.index))
    }

    /// Proposes a command, wrapped in a `Command::Idempotent` envelope when the request
    /// carried an `Idempotency-Key` (kept for `idempotency_window`). A repeated key gives
    /// the first delivery's effect and index back, so the handler answers exactly as it
    /// did then; a recorded refusal comes back as the same error.
    pub(crate) async fn write_keyed(
        &self,
        command: Command,
        idempotency: Option<Idempotency>,
    ) -> Result<Written, ApiError> {
        let command = match idempotency {
            Some(Idempotency {
                key,
                scope,
                fingerprint,
            }) => Command::Idempotent {
                key,
                scope,
                fingerprint,
                at: command.at(),
                command: Box::new(command),
                // `apply` wants a positive window; a zero setting keeps records a moment.
                retain_ms: Millis::try_from(self.config().idempotency_window.as_millis())
                    .unwrap_or(Millis::MAX)
                    .max(1),
            },
            None => command,
        };
        self.refuse_early(&command).await?;
        let name = command.payload().name();
        let keyed = matches!(command, Command::Idempotent { .. });
        let receipt = self.cluster().submit_write(command).await?;
        tracing::debug!(
            command = name,
            keyed,
            index = receipt.index,
            accepted = receipt.outcome.is_ok(),
            "write"
        );
        Ok(match receipt.outcome? {
            Effect::Replayed { effect, index } => Written {
                effect: *effect,
                index,
                replayed: true,
            },
            effect => Written {
                effect,
                index: receipt.index,
                replayed: false,
            },
        })
    }

    /// Answers a write this replica's state certainly refuses without proposing it
    /// (see [`precheck`]). A refusal seen on local state is checked again after a strict
    /// barrier, so a write the client saw acknowledged elsewhere is never missed.
    async fn refuse_early(&self, command: &Command) -> Result<(), ApiError> {
        if self
            .read(|state| precheck::refusal(state, command))
            .is_none()
        {
            return Ok(());
        }
        self.barrier(Consistency::Strict).await?;
        match self.read(|state| precheck::refusal(state, command)) {
            Some(refusal) => {
                self.metrics()
                    .abuse()
                    .refused_early(command.payload().name());
                Err(refusal)
            }
            None => Ok(()),
        }
    }

    /// Answers 404 unless `principal` may see the resource `owner_of` finds. Admin keys
    /// skip the check (`apply` answers for missing resources). A resource missing
    /// locally may be a write this replica has not applied yet, so the lookup is
    /// repeated once after a strict barrier before it is called missing.
    pub(crate) async fn ensure_visible(
        &self,
        principal: &Principal,
        kind: &str,
        id: &str,
        owner_of: impl Fn(&DomainState) -> Option<BusinessId>,
    ) -> Result<(), ApiError> {
        if principal.scope == tanvrit_api::Scope::Admin {
            return Ok(());
        }
        let owner = match self.read(&owner_of) {
            Some(owner) => Some(owner),
            None => {
                self.barrier(Consistency::Strict).await?;
                self.read(&owner_of)
            }
        };
        match owner {
            Some(owner) if principal.sees(&owner) => Ok(()),
            _ => Err(ApiError::not_found(kind, id)),
        }
    }

    /// Resolves when graceful shutdown begins.
    pub(crate) fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown.subscribe();
        async move {
            // The sender lives as long as the state, so an error cannot happen while a
            // request is being served; treat it as shutdown all the same.
            let _ = rx.wait_for(|down| *down).await;
        }
    }
}

/// Now, in milliseconds since the epoch: the `at` of every command this server builds.
pub(crate) fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// A fresh id, `<prefix>-<uuid v7>` (time-ordered, so ids sort by creation).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7())
}

/// The time a `job-<uuid v7>` id carries: when [`new_id`] made it, or the due time of a
/// fired job (`cron::fire_job_id`). `None` for an id of another shape.
pub(crate) fn job_id_time(job: &JobId) -> Option<Millis> {
    let uuid = uuid::Uuid::parse_str(job.as_str().strip_prefix("job-")?).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(i64::try_from(secs).ok()? * 1000 + i64::from(nanos / 1_000_000))
}

/// The error for an effect that does not match the command that produced it.
pub(crate) fn unexpected(effect: Effect) -> ApiError {
    ApiError::Internal(format!(
        "unexpected effect from the state machine: {effect:?}"
    ))
}

/// Builds the router and the state behind it.
pub(crate) fn build(config: ServerConfig, cluster: Arc<dyn ClusterService>) -> (Router, AppState) {
    let body_limit = config.body_limit_bytes;
    let (routes, openapi) = routes::api().split_for_parts();
    // Serializing plain data cannot fail; should it, the route says so in the usual shape.
    let openapi_json = openapi.to_pretty_json().unwrap_or_else(|error| {
        serde_json::to_string(&ApiError::Internal(error.to_string()).body()).unwrap_or_default()
    });
    let (shutdown, _) = watch::channel(false);
    let leadership = cluster.leadership();
    let limiter = RateLimiter::new(config.rate_limits);
    let streams = StreamLimiter::new(config.max_streams_per_key);
    let app = AppState {
        inner: Arc::new(Inner {
            limiter,
            streams,
            config,
            cluster,
            metrics: Metrics::new(),
            openapi_json,
            liveness: Liveness::new(),
            leadership,
            shutdown,
        }),
    };
    let router = routes
        .merge(routes::ui::router())
        .fallback(handle_unknown_route)
        .method_not_allowed_fallback(handle_wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            refuse_oversized_body,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), bound_body_time))
        .layer(CatchPanicLayer::custom(answer_panic))
        .layer(middleware::from_fn_with_state(app.clone(), track_request))
        .layer(middleware::map_response_with_state(
            app.clone(),
            add_index_header,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(app.clone());
    (router, app)
}

/// Unknown paths: 404 with the JSON error body.
async fn handle_unknown_route(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// Known paths with the wrong method: 405 with the JSON error body.
async fn handle_wrong_method(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
    }
}

/// A handler that panicked still answers: 500 `internal` with the JSON body (and the
/// index header and metrics of the layers around it), and the panic is logged.
fn answer_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a handler panicked");
    tracing::error!(panic = message, "request handler panicked");
    ApiError::Internal("the server failed while answering; see its log".into()).into_response()
}

/// Most bytes of an oversized body read (and discarded) before answering 413.
const OVERSIZED_DRAIN_MAX: usize = 64 * 1024 * 1024;

/// A body whose declared length is over the limit is answered 413 — after reading and
/// discarding it (up to a cap). Answering before the client finished sending makes the
/// connection close under it, and the client then sees a reset instead of the JSON error.
async fn refuse_oversized_body(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = app.inner.config.body_limit_bytes;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(length) if length > limit => {
            if length <= OVERSIZED_DRAIN_MAX {
                let mut body = request.into_body().into_data_stream();
                let mut read = 0usize;
                while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                    read += chunk.len();
                    if read > OVERSIZED_DRAIN_MAX {
                        break;
                    }
                }
            }
            ApiError::BodyTooLarge.into_response()
        }
        _ => next.run(request).await,
    }
}

/// A request's body must arrive within `body_read_timeout` of the request's start: past
/// it, reading the body fails with [`BodyTimedOut`] (408 `body_timeout`, and the oversized
/// body drain above stops), so a client trickling a body cannot hold a handler forever.
async fn bound_body_time(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let limit = app.config().body_read_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let (parts, body) = request.into_parts();
    let chunks = body.into_data_stream();
    let bounded = futures::stream::unfold(Some(chunks), move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut chunks)).await {
            Ok(Some(chunk)) => Some((chunk.map_err(axum::BoxError::from), Some(chunks))),
            Ok(None) => None,
            Err(_) => Some((Err(BodyTimedOut(limit).into()), None)),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(bounded)))
        .await
}

/// Counts the request by its route template (never the raw path, which would give
/// every job id its own series).
async fn track_request(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let started = Instant::now();
    let _in_flight = app.metrics().start_request();
    let response = next.run(request).await;
    app.metrics()
        .observe(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Every response, errors included, carries this replica's applied index.
/// 503s also name the leader's API URL, where this replica knows it (body field
/// `leader_url` and header `X-Tanvrit-Leader-Url`), so a client can retry there.
async fn add_index_header(State(app): State<AppState>, mut response: Response) -> Response {
    let index = app.reader().applied_index();
    response
        .headers_mut()
        .insert(INDEX_HEADER_NAME, HeaderValue::from(index));
    if let Some(mut body) = response.extensions_mut().remove::<tanvrit_api::ErrorBody>() {
        if let Some(addr) = app.cluster().leader_api_addr() {
            let scheme = if app.config().api_https {
                "https"
            } else {
                "http"
            };
            let url = format!("{scheme}://{addr}");
            if let Ok(value) = HeaderValue::from_str(&url) {
                response.headers_mut().insert(LEADER_URL_HEADER_NAME, value);
            }
            body.error.leader_url = Some(url);
            if let Ok(bytes) = serde_json::to_vec(&body) {
                *response.body_mut() = axum::body::Body::from(bytes);
            }
        }
    }
    response
}

/// `X-Tanvrit-Leader-Url` (`tanvrit_api::LEADER_URL_HEADER`) in lower case.
const LEADER_URL_HEADER_NAME: HeaderName = HeaderName::from_static("x-tanvrit-leader-url");

/// `X-Tanvrit-Index` (`tanvrit_api::INDEX_HEADER`) in the lower case header names use.
const INDEX_HEADER_NAME: HeaderName = HeaderName::from_static("x-tanvrit-index");

/// Serves the API on `listener`, with the leader loops running while this replica
/// leads, until `shutdown` resolves; then stops the loops, stops taking connections and
/// lets requests in flight finish (long polls answer at once).
pub(crate) async fn serve(
    config: ServerConfig,
    cluster: Arc<dyn ClusterService>,
    listener: TcpListener,
    tls: Option<tanvrit_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let limits = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        header_limit_bytes: config.header_limit_bytes,
    };
    let config = ServerConfig {
        api_https: tls.is_some(),
        ..config
    };
    let (router, app) = build(config, cluster);
    let loops = app.spawn_leader_loops();
    let signal = async move {
        shutdown.await;
        // No placements or fires while the API drains.
        loops.stop().await;
        app.inner.shutdown.send_replace(true);
    };
    listener::serve(listener, router, limits, tls, signal)
        .await
        .map_err(ServerError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_header_constant_matches_the_wire_name() {
        assert!(tanvrit_api::INDEX_HEADER.eq_ignore_ascii_case(INDEX_HEADER_NAME.as_str()));
        assert!(
            tanvrit_api::LEADER_URL_HEADER.eq_ignore_ascii_case(LEADER_URL_HEADER_NAME.as_str())
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_internal_as_json() {
        let response = answer_panic(Box::new("boom".to_string()));
        assert_eq!(response.status().as_u16(), 500);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "internal");
    }

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = new_id("job");
        let b = new_id("job");
        assert!(a.starts_with("job-"));
        assert!(a < b, "uuid v7 ids are time-ordered");
        assert!(tanvrit_state::validate::identifier("job id", &a).is_ok());
    }
}
