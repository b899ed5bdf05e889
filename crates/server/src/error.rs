//! The one place errors become HTTP: [`ApiError`] (every failure a request can meet, each
//! with a status and a stable `code`) and its `IntoResponse`; [`ServerError`] for what
//! fails outside a request (binding, bootstrap).
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}` ([`ErrorBody`]).

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tanvrit_api::ErrorBody;
use tanvrit_cluster::ClusterError;
use tanvrit_state::Rejection;

/// Why a request failed. Each variant maps to one status and one stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (syntax error, truncated). 400 `malformed_json`.
    #[error("{0}")]
    MalformedJson(String),
    /// The JSON does not fit the request type: unknown field, wrong type, missing field,
    /// or a path parameter that cannot be read. 400 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// No key, an unknown key, or a revoked key. 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
    /// The key's scope does not allow this route. 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// No such route, or no such resource visible to this key. 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, but not for this method. 405 `method_not_allowed`.
    #[error("method {method} is not allowed on this route")]
    MethodNotAllowed {
        /// The method the client used.
        method: String,
    },
    /// The body is larger than `ServerConfig::body_limit_bytes`. 413 `body_too_large`.
    #[error("request body is larger than this server accepts")]
    BodyTooLarge,
    /// The request body did not arrive within `ServerConfig::body_read_timeout` of the
    /// request's start (a slow-loris body). 408 `body_timeout`; the connection closes.
    #[error("the request body did not arrive within {} s", retry_after_secs(*limit))]
    BodyTimeout {
        /// The deadline the body missed.
        limit: Duration,
    },
    /// A body with a content type other than JSON. 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The key made more requests than its scope's rate limit allows. 429
    /// `rate_limited`, with `Retry-After`.
    #[error("this API key is over its rate limit; retry after {} s", retry_after_secs(*retry_after))]
    RateLimited {
        /// Until the key's next request is allowed.
        retry_after: Duration,
    },
    /// The key already holds as many long polls open as it may. 429 `too_many_streams`,
    /// with `Retry-After`.
    #[error("this API key already holds {limit} long polls open on this replica; close one first")]
    TooManyStreams {
        /// The most a key may hold.
        limit: u32,
        /// When to try again.
        retry_after: Duration,
    },
    /// The request is well-formed but a value is not acceptable. 422 `invalid`.
    #[error("{0}")]
    Invalid(String),
    /// A `keys/create` repeated with its `Idempotency-Key`: the key exists, but its
    /// secret was shown once and only its hash is kept, so it cannot be shown again.
    /// 409 `idempotent_replay_secret_unavailable`; the body's `id` names the key (revoke
    /// it if the first answer was lost, and create another).
    #[error(
        "this idempotency key already created key `{key}`; its secret was shown once and \
         cannot be shown again (revoke the key if the secret was lost, and create another)"
    )]
    ReplaySecretUnavailable {
        /// The key the first request created.
        key: String,
    },
    /// Revoking the only active admin key would leave nobody able to administer the
    /// cluster. 409 `last_admin_key`; the body's `id` names the key.
    #[error(
        "key `{key}` is the only active admin key; create another admin key before \
         revoking this one"
    )]
    LastAdminKey {
        /// The key the request would have revoked.
        key: String,
    },
    /// The job finished longer ago than `compute.retention.jobs` and was collected (its
    /// ledger entries remain). 410 `job_expired`.
    #[error(
        "job `{job}` ended longer ago than this cluster keeps jobs (compute.retention.jobs) \
         and was removed with its attempts and logs; its ledger entries remain"
    )]
    JobExpired {
        /// The job's id.
        job: String,
    },
    /// An event stream asked to resume from an index older than the events this replica
    /// holds. 410 `events_compacted`; the body's `oldest_index` is the oldest it can
    /// resume from (re-list, then stream from there).
    #[error(
        "events after index {asked} are no longer held by this replica; re-read the \
         current state and resume from index {oldest} or later"
    )]
    EventsCompacted {
        /// The index the client asked to resume after.
        asked: u64,
        /// The oldest index it may resume after.
        oldest: u64,
    },
    /// `apply` refused the command; status and code come from the rejection.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The cluster could not take the write or serve the read: 503 with `Retry-After`
    /// (no leader, not caught up, shutting down; or `write_outcome_unknown`, a write that
    /// may or may not take effect) or 500 (storage, internal).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A bug or an impossible state on this side. 500 `internal`.
    #[error("{0}")]
    Internal(String),
}

impl From<tanvrit_cluster::EventsError> for ApiError {
    fn from(error: tanvrit_cluster::EventsError) -> Self {
        match error {
            tanvrit_cluster::EventsError::Compacted { asked, oldest } => {
                ApiError::EventsCompacted { asked, oldest }
            }
        }
    }
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Invalid(_) => "invalid",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManyStreams { .. } => "too_many_streams",
            ApiError::ReplaySecretUnavailable { .. } => "idempotent_replay_secret_unavailable",
            ApiError::LastAdminKey { .. } => "last_admin_key",
            ApiError::JobExpired { .. } => "job_expired",
            ApiError::EventsCompacted { .. } => tanvrit_api::EVENTS_COMPACTED,
            ApiError::Rejected(rejection) => rejection.code(),
            ApiError::Cluster(error) => error.code(),
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } | ApiError::TooManyStreams { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::ReplaySecretUnavailable { .. } | ApiError::LastAdminKey { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::JobExpired { .. } | ApiError::EventsCompacted { .. } => StatusCode::GONE,
            ApiError::Rejected(rejection) => StatusCode::from_u16(rejection.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            ApiError::Cluster(error) => match error {
                ClusterError::Membership(_) => StatusCode::CONFLICT,
                ClusterError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ if error.retry_after().is_some() => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A `not_found` for a kind of resource and its id.
    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> Self {
        let id = id.to_string();
        ApiError::NotFound(format!(
            "{kind} `{}` not found",
            tanvrit_state::validate::short(&id)
        ))
    }

    /// The body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code(), capped(self.to_string()));
        match self {
            ApiError::Cluster(
                ClusterError::NoLeader { leader, .. } | ClusterError::OutcomeUnknown { leader, .. },
            ) => {
                body.error.leader = leader.clone();
            }
            ApiError::ReplaySecretUnavailable { key } | ApiError::LastAdminKey { key } => {
                body.error.id = Some(key.clone())
            }
            ApiError::JobExpired { job } => body.error.id = Some(job.clone()),
            ApiError::EventsCompacted { oldest, .. } => body.error.oldest_index = Some(*oldest),
            _ => {}
        }
        body
    }
}

/// Longest error message sent, in bytes: messages quote short prefixes of what they
/// echo (`validate::short`); this cap catches any that does not.
pub(crate) const MESSAGE_MAX_BYTES: usize = 1024;

/// `message`, cut at a character boundary to at most [`MESSAGE_MAX_BYTES`] (with `…`).
fn capped(mut message: String) -> String {
    if message.len() > MESSAGE_MAX_BYTES {
        let mut end = MESSAGE_MAX_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Seconds for a `Retry-After` header: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        let wait = match &self {
            ApiError::Cluster(error) => error.retry_after(),
            ApiError::RateLimited { retry_after }
            | ApiError::TooManyStreams { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        if let Some(wait) = wait {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // The app's response layer adds the leader's address, which only it knows.
            response.extensions_mut().insert(self.body());
        }
        response
    }
}

/// What a request body yields once its read deadline has passed; found again in the
/// body rejection's error chain to answer [`ApiError::BodyTimeout`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimedOut(pub Duration);

impl BodyTimedOut {
    /// The deadline, when `error` or one of its sources is a [`BodyTimedOut`].
    pub(crate) fn find(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(BodyTimedOut(limit)) = error.downcast_ref::<BodyTimedOut>() {
                return Some(*limit);
            }
            current = error.source();
        }
        None
    }
}

/// What can fail outside a request: serving, and creating the first admin key.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener failed.
    #[error("serving the API failed: {0}")]
    Serve(#[source] std::io::Error),
    /// `TANVRIT_BOOTSTRAP_KEY` cannot serve as a secret.
    #[error("TANVRIT_BOOTSTRAP_KEY is not usable: {0}")]
    BootstrapKeyInvalid(String),
    /// The bootstrap secret is already a key that cannot serve as the admin key
    /// (revoked, or of another scope).
    #[error(
        "the bootstrap secret is already key `{key}` ({why}); set another \
         TANVRIT_BOOTSTRAP_KEY, or remove <data-dir>/admin.key to generate a new one"
    )]
    BootstrapKeyUnusable {
        /// The existing key's id.
        key: String,
        /// Why it cannot be used.
        why: &'static str,
    },
    /// `<data-dir>/admin.key` could not be read or written.
    #[error("admin key file {path}: {source}")]
    AdminKeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `<data-dir>/admin.key` holds something that is not a key this server generated.
    #[error("admin key file {path} does not hold a tanvrit key; remove it to generate a new one")]
    AdminKeyFileMalformed {
        /// The file.
        path: PathBuf,
    },
    /// The cluster could not take the write.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// `apply` refused the key.
    #[error("creating the admin key was refused: {0}")]
    Rejected(#[from] Rejection),
}

impl ServerError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ServerError::Serve(_) => "serve_failed",
            ServerError::BootstrapKeyInvalid(_) => "bootstrap_key_invalid",
            ServerError::BootstrapKeyUnusable { .. } => "bootstrap_key_unusable",
            ServerError::AdminKeyFile { .. } => "admin_key_file",
            ServerError::AdminKeyFileMalformed { .. } => "admin_key_file_malformed",
            ServerError::Cluster(error) => error.code(),
            ServerError::Rejected(rejection) => rejection.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(error: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).expect("json"),
        )
    }

    #[tokio::test]
    async fn a_rate_limited_request_is_429_with_retry_after() {
        let (status, headers, body) = parts(ApiError::RateLimited {
            retry_after: Duration::from_millis(1500),
        })
        .await;
        assert_eq!(status.as_u16(), 429);
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(headers[header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn messages_echo_short_prefixes_and_are_capped() {
        let id = "x".repeat(60_000);
        let (_, _, body) = parts(ApiError::not_found("job", &id)).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.len() < 200, "{} bytes", message.len());
        let (_, _, body) = parts(ApiError::Invalid("é".repeat(5000))).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.len() <= MESSAGE_MAX_BYTES && message.ends_with('…'));
    }

    #[tokio::test]
    async fn every_request_error_class_has_its_status_code_and_json_body() {
        let cases = [
            (ApiError::MalformedJson("eof".into()), 400, "malformed_json"),
            (ApiError::InvalidRequest("x".into()), 400, "invalid_request"),
            (ApiError::Unauthorized("no key".into()), 401, "unauthorized"),
            (ApiError::Forbidden("scope".into()), 403, "forbidden"),
            (ApiError::not_found("job", "job-1"), 404, "not_found"),
            (
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                },
                405,
                "method_not_allowed",
            ),
            (ApiError::BodyTooLarge, 413, "body_too_large"),
            (
                ApiError::BodyTimeout {
                    limit: Duration::from_secs(30),
                },
                408,
                "body_timeout",
            ),
            (
                ApiError::UnsupportedMediaType("text/plain".into()),
                415,
                "unsupported_media_type",
            ),
            (ApiError::Invalid("bad cron".into()), 422, "invalid"),
            (ApiError::Internal("bug".into()), 500, "internal"),
        ];
        for (error, status, code) in cases {
            let message = error.to_string();
            let (got_status, _, body) = parts(error).await;
            assert_eq!(got_status.as_u16(), status, "{code}");
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["message"], message.as_str());
            assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only `error`");
        }
    }

    #[tokio::test]
    async fn rejections_keep_their_own_status_and_code() {
        let cases = [
            (
                Rejection::InsufficientCredits {
                    business: "acme".into(),
                    needed: 10,
                    available: 1,
                },
                402,
                "insufficient_credits",
            ),
            (
                Rejection::IllegalTransition {
                    kind: "job".into(),
                    id: "j".into(),
                    from: "succeeded".into(),
                    action: "cancel".into(),
                },
                409,
                "illegal_transition",
            ),
            (
                Rejection::NotFound {
                    kind: "job".into(),
                    id: "j".into(),
                },
                404,
                "not_found",
            ),
            (
                Rejection::IdempotencyConflict { key: "k".into() },
                422,
                "idempotency_conflict",
            ),
        ];
        for (rejection, status, code) in cases {
            let (got, _, body) = parts(ApiError::Rejected(rejection)).await;
            assert_eq!(got.as_u16(), status);
            assert_eq!(body["error"]["code"], code);
        }
    }

    #[tokio::test]
    async fn unavailable_cluster_answers_503_with_retry_after_and_the_leader() {
        let (status, headers, body) = parts(ApiError::Cluster(ClusterError::NoLeader {
            retry_after: Duration::from_millis(1500),
            leader: Some("replica-2".into()),
        }))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(body["error"]["code"], "no_leader");
        assert_eq!(body["error"]["leader"], "replica-2");

        let (status, headers, body) = parts(ApiError::Cluster(ClusterError::NotCaughtUp {
            wanted: 9,
            applied: 3,
            retry_after: Duration::from_millis(10),
        }))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1", "rounded up to a second");
        assert_eq!(body["error"]["code"], "not_caught_up");

        let (status, headers, _) = parts(ApiError::Cluster(ClusterError::ShuttingDown)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_write_of_unknown_outcome_is_a_503_that_says_so_and_names_the_leader() {
        let (status, headers, body) = parts(ApiError::Cluster(ClusterError::OutcomeUnknown {
            retry_after: Duration::from_millis(1500),
            leader: Some("replica-3".into()),
        }))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(body["error"]["code"], "write_outcome_unknown");
        assert_eq!(body["error"]["leader"], "replica-3");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("may or may not take effect")
                && message.contains("same Idempotency-Key"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn storage_and_internal_cluster_failures_are_500_without_retry_after() {
        for (error, code) in [
            (ClusterError::Storage("disk".into()), "storage_error"),
            (ClusterError::Internal("oops".into()), "internal"),
        ] {
            let (status, headers, body) = parts(ApiError::Cluster(error)).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!headers.contains_key(header::RETRY_AFTER));
            assert_eq!(body["error"]["code"], code);
        }
    }

    #[tokio::test]
    async fn a_replayed_key_creation_is_a_conflict_naming_the_key() {
        let (status, _, body) = parts(ApiError::ReplaySecretUnavailable {
            key: "key-1".into(),
        })
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body["error"]["code"],
            "idempotent_replay_secret_unavailable"
        );
        assert_eq!(body["error"]["id"], "key-1");
        assert!(body["error"]["message"].as_str().unwrap().contains("key-1"));
    }

    #[tokio::test]
    async fn a_collected_job_is_gone_with_its_own_code_naming_the_job() {
        let (status, _, body) = parts(ApiError::JobExpired {
            job: "job-1".into(),
        })
        .await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(body["error"]["code"], "job_expired");
        assert_eq!(body["error"]["id"], "job-1");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("job-1") && message.contains("compute.retention.jobs"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn unauthorized_names_the_bearer_scheme() {
        let (_, headers, _) = parts(ApiError::Unauthorized("missing".into())).await;
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
}
