//! [`Client`] and the one request loop every call goes through: endpoint choice,
//! retries with backoff, `Retry-After`, and the consistency token.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tanvrit_api::{Consistency, ErrorBody, Index, INDEX_HEADER, LEADER_URL_HEADER};

use crate::{ClientConfig, ClientError};

/// A connection to the control plane. Cheap to clone; clones share the endpoint choice
/// and the consistency token.
///
/// # Retries
/// Every call runs in one loop. An attempt is repeated, up to
/// [`ClientConfig::max_retries`] times with capped exponential backoff and jitter, when:
/// - the server answered **503** `no_leader`, `not_caught_up` or `shutting_down` (or a
///   503 without a code of ours): the server applied nothing, so this holds for writes
///   too. The retry goes to the leader when the answer names its API URL
///   (`X-Tanvrit-Leader-Url`, or the error body's `leader_url`) and that URL is one of
///   the configured endpoints, after the ordinary backoff; otherwise it waits for
///   `Retry-After` (capped at [`ClientConfig::backoff_max`]; without one, the backoff)
///   and, with several endpoints, goes to the next one;
/// - the server answered **429** `rate_limited`: the key is over its rate limit on that
///   replica and nothing was applied, so any call is repeated, on the same endpoint,
///   after `Retry-After` (capped at [`ClientConfig::backoff_max`]);
/// - the server answered **503** `write_outcome_unknown`: the write was proposed, then
///   leadership changed (or the leader's answer was lost) before it committed, so it may
///   or may not take effect. It is repeated, as above, only when repeating is safe: on a
///   read, or on a write the server deduplicates (the list below);
/// - the **connection was refused** (or could not be made at all): the request never left,
///   so this holds for writes too. The call moves to the next endpoint, at once and without
///   using a retry while some endpoint has not been tried in this call;
/// - any other transport failure (timeout, connection reset) happened on a **read**, or on
///   a write the server deduplicates: node registrations, any write made through a
///   [`Client::with_idempotency_key`] handle (sent with the `Idempotency-Key` header, so
///   the server answers a repeat with the first response, same body and `index`), and job
///   submits and credit entries, which carry an idempotency key in their body. Those
///   without one get a fresh one from the SDK (`sdk-<uuid v7>`, body only) whenever
///   `max_retries > 0`, so a repeated submit returns the first job instead of creating a
///   second one.
///
/// Other writes (cancel, retry, drain, delete, key and schedule changes) without a key
/// are not repeated after a transport failure that may have reached the server, nor
/// after a 503 `write_outcome_unknown` ([`ClientError::is_outcome_unknown`]): the caller
/// sees the error and decides, since repeating them could fail with
/// `illegal_transition` or act twice (a second key, a second schedule). To learn what
/// happened, repeat such a write through a [`Client::with_idempotency_key`] handle from
/// the start: the repeat's answer is the first delivery's, if it took effect.
///
/// # Endpoint choice
/// Calls start at the client's current endpoint, shared by its clones. A 503 moves it
/// even when no retry is left, so the next call does not return to a replica that just
/// said it cannot serve: to the named leader's endpoint (as above), else to the next
/// endpoint. A transport failure moves it to the next endpoint. A leader URL matches an
/// endpoint with the same host and port and no path of its own (an endpoint with a path
/// is a route through a proxy, and the URL names the replica behind it); one that
/// matches no endpoint is not followed: the client calls only addresses it was given.
///
/// # Consistency token
/// The client remembers the highest `X-Tanvrit-Index` header and write `index` it has seen.
/// With [`ClientConfig::read_your_writes`], reads that ask for [`Consistency::Stale`] are
/// sent as `{"min_index": N}` with that index, so any replica answers only once it has
/// applied this client's writes.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Sent as `Idempotency-Key` with every write of this handle.
    idempotency_key: Option<Arc<str>>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    config: ClientConfig,
    /// The endpoint calls start at; moved on when one fails.
    current: AtomicUsize,
    /// The consistency token: the highest index seen.
    last_index: AtomicU64,
    auth: Option<HeaderValue>,
}

/// Whether a call may be repeated after a failure that could have reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Safety {
    /// Reads change nothing.
    Read,
    /// A write the server deduplicates (idempotency key, or naturally idempotent).
    IdempotentWrite,
    /// A write that may act twice if repeated.
    Write,
}

/// One logical call, possibly sent several times.
pub(crate) struct Call {
    pub method: Method,
    /// Path segments below the endpoint's base path, each percent-encoded when sent.
    pub segments: Vec<String>,
    pub body: Option<Vec<u8>>,
    pub safety: Safety,
    /// Added to the configured timeout (long polls wait on the server).
    pub extra_timeout: Duration,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Call {
    /// A JSON POST below `/api/compute`.
    pub fn api<B: Serialize>(
        segments: &[&str],
        body: &B,
        safety: Safety,
    ) -> Result<Self, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Config(format!("cannot encode the request: {e}")))?;
        let mut all = vec!["api".to_string(), "compute".to_string()];
        all.extend(segments.iter().map(|s| s.to_string()));
        Ok(Self {
            method: Method::POST,
            segments: all,
            body: Some(body),
            safety,
            extra_timeout: Duration::ZERO,
            headers: Vec::new(),
        })
    }

    /// A GET of a plain path such as `/healthz`.
    pub fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            segments: split_path(path),
            body: None,
            safety: Safety::Read,
            extra_timeout: Duration::ZERO,
            headers: Vec::new(),
        }
    }
}

/// A response as received: status, headers and body bytes.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl RawResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `X-Tanvrit-Index` header, if present and numeric.
    pub fn index(&self) -> Option<Index> {
        header_index(&self.headers)
    }
}

/// What one attempt ended with, before the loop decides what to do.
enum Attempt {
    Answered(RawResponse),
    Failed(ClientError),
}

impl Client {
    /// A client for `config`; fails only on a malformed endpoint or key.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let endpoints = config.parsed_endpoints()?;
        let auth = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    ClientError::Config(
                        "the API key contains characters not allowed in a header".into(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        // A dead endpoint should cost little before failing over, whatever the timeout.
        let connect_timeout = config.timeout.min(Duration::from_secs(3));
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("tanvrit-client/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = config.tls_config()? {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoints,
                config,
                current: AtomicUsize::new(0),
                last_index: AtomicU64::new(0),
                auth,
            }),
            idempotency_key: None,
        })
    }

    /// A handle that sends `key` as the `Idempotency-Key` header with every write it
    /// makes, and so may repeat those writes after any failure: the server answers a
    /// repeat with the first response. Use one key per logical write (the same key with
    /// a different request is refused with 422 `idempotency_conflict`), e.g.
    /// `client.with_idempotency_key("cancel-job-1-2026-01-02").cancel_job(..)`.
    ///
    /// The handle shares this client's endpoints and consistency token. The key must be
    /// 1-256 printable ASCII characters (checked by the server); one that cannot be a
    /// header value fails each write with [`ClientError::Config`].
    pub fn with_idempotency_key(&self, key: impl Into<String>) -> Client {
        Client {
            inner: self.inner.clone(),
            idempotency_key: Some(Arc::from(key.into())),
        }
    }

    /// The key [`Client::with_idempotency_key`] set on this handle.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// A client configured from `TANVRIT_ADDR` and `TANVRIT_API_KEY`.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::new(ClientConfig::from_env())
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// One client per configured endpoint, each pinned to it (same key, timeout and
    /// retries): for spreading load over replicas instead of following failover.
    pub fn per_endpoint(&self) -> Result<Vec<Client>, ClientError> {
        self.config()
            .endpoints
            .iter()
            .map(|endpoint| {
                Client::new(ClientConfig {
                    endpoints: vec![endpoint.clone()],
                    ..self.config().clone()
                })
            })
            .collect()
    }

    /// The base URL calls currently start at.
    pub fn current_endpoint(&self) -> &str {
        let idx = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        self.inner.endpoints[idx].as_str()
    }

    /// The consistency token: the highest index this client has seen.
    pub fn last_index(&self) -> Index {
        self.inner.last_index.load(Ordering::Relaxed)
    }

    /// Raises the consistency token to at least `index` (e.g. an index another process
    /// wrote at, to read its writes).
    pub fn observe_index(&self, index: Index) {
        self.inner.last_index.fetch_max(index, Ordering::Relaxed);
    }

    /// The consistency a read is sent with: `stale` becomes `min_index` of the token
    /// when read-your-writes is on and a write index is known.
    pub fn read_consistency(&self, asked: Consistency) -> Consistency {
        match asked {
            Consistency::Stale if self.inner.config.read_your_writes => match self.last_index() {
                0 => Consistency::Stale,
                index => Consistency::MinIndex(index),
            },
            other => other,
        }
    }

    /// Sends `body` as a POST to `path` (e.g. `/api/compute/jobs/submit`) once, with the
    /// API key unless `headers` carry their own `Authorization`, and returns the answer
    /// whatever its status. No retries: for tests that probe malformed input.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        self.raw(Method::POST, path, Some(body.into()), headers)
            .await
    }

    /// Sends a GET to `path` once and returns the answer whatever its status.
    pub async fn get_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        self.raw(Method::GET, path, None, headers).await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        let mut parsed = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ClientError::Config(format!("header name `{name}`: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| ClientError::Config(format!("header `{name}`: {e}")))?;
            parsed.push((name, value));
        }
        let call = Call {
            method,
            segments: split_path(path),
            body,
            safety: Safety::Write,
            extra_timeout: Duration::ZERO,
            headers: parsed,
        };
        let idx = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        match self.attempt(idx, &call).await {
            Attempt::Answered(response) => Ok(response),
            Attempt::Failed(err) => Err(err),
        }
    }

    /// Runs a call through the retry loop and decodes a 2xx JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let response = self.execute(&call).await?;
        serde_json::from_slice(&response.body).map_err(|e| ClientError::Decode {
            path: format!("/{}", call.segments.join("/")),
            message: e.to_string(),
        })
    }

    /// Runs a call through the retry loop; a non-2xx answer becomes [`ClientError::Api`].
    pub(crate) async fn execute(&self, call: &Call) -> Result<RawResponse, ClientError> {
        let inner = &self.inner;
        let count = inner.endpoints.len();
        let mut retries_used: u32 = 0;
        // Endpoints that refused a connection since the last backoff: while one is left
        // untried, moving on is free (the request never left).
        let mut refused = vec![false; count];
        loop {
            let idx = inner.current.load(Ordering::Relaxed) % count;
            let failure = match self.attempt(idx, call).await {
                Attempt::Answered(response) if is_success(response.status) => {
                    self.observe_body_index(&response);
                    return Ok(response);
                }
                Attempt::Answered(response) => {
                    let retry_after = retry_after(&response.headers);
                    let err =
                        ClientError::from_response(response.status, retry_after, &response.body);
                    if response.status == StatusCode::TOO_MANY_REQUESTS.as_u16() {
                        // Over the key's rate limit on this replica: nothing was applied,
                        // so any call may be repeated, here (another replica would only
                        // dodge the limit), after `Retry-After`.
                        if retries_used >= inner.config.max_retries {
                            return Err(err);
                        }
                        retries_used += 1;
                        let delay = self.delay_after_503(retries_used, false, retry_after);
                        tracing::debug!(?delay, "429 rate_limited; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    if response.status != StatusCode::SERVICE_UNAVAILABLE.as_u16() {
                        return Err(err);
                    }
                    // Moved before the retry check: a client without retries must not
                    // send its next call to the replica that just could not serve.
                    let leader = self.leader_endpoint(idx, &response);
                    match leader {
                        Some(to) => self.move_from(idx, to),
                        None => self.advance_from(idx),
                    }
                    if retries_used >= inner.config.max_retries {
                        return Err(err);
                    }
                    // Every other 503 applied nothing; this one may still take effect.
                    if err.is_outcome_unknown() && call.safety == Safety::Write {
                        return Err(err);
                    }
                    retries_used += 1;
                    let delay = self.delay_after_503(retries_used, leader.is_some(), retry_after);
                    tracing::debug!(code = err.code(), ?leader, ?delay, "503; retrying");
                    tokio::time::sleep(delay).await;
                    refused.fill(false);
                    continue;
                }
                Attempt::Failed(err) => err,
            };
            let not_sent = matches!(failure, ClientError::Transport { not_sent: true, .. });
            if !matches!(failure, ClientError::Transport { .. }) {
                return Err(failure);
            }
            if !not_sent && call.safety == Safety::Write {
                return Err(failure);
            }
            self.advance_from(idx);
            if not_sent {
                refused[idx] = true;
                if refused.iter().any(|tried| !tried) {
                    tracing::debug!(endpoint = %inner.endpoints[idx], "connection refused; next endpoint");
                    continue;
                }
            }
            if retries_used >= inner.config.max_retries {
                return Err(failure);
            }
            retries_used += 1;
            let delay = self.backoff(retries_used);
            tracing::debug!(error = %failure, ?delay, "transport failure; retrying");
            tokio::time::sleep(delay).await;
            refused.fill(false);
        }
    }

    /// Sends a call once to endpoint `idx`.
    async fn attempt(&self, idx: usize, call: &Call) -> Attempt {
        let inner = &self.inner;
        let base = &inner.endpoints[idx];
        let mut url = base.clone();
        match url.path_segments_mut() {
            Ok(mut path) => {
                path.pop_if_empty();
                path.extend(call.segments.iter());
            }
            Err(()) => {
                return Attempt::Failed(ClientError::Config(format!(
                    "endpoint `{base}` cannot take a path"
                )))
            }
        }
        let mut request = inner
            .http
            .request(call.method.clone(), url)
            .timeout(inner.config.timeout + call.extra_timeout);
        let caller_sets_auth = call.headers.iter().any(|(name, _)| name == AUTHORIZATION);
        if let (Some(auth), false) = (&inner.auth, caller_sets_auth) {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = &call.body {
            if !call.headers.iter().any(|(name, _)| name == CONTENT_TYPE) {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            request = request.body(body.clone());
        }
        for (name, value) in &call.headers {
            request = request.header(name.clone(), value.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Attempt::Failed(transport_error(base, &e)),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(index) = header_index(&headers) {
            self.observe_index(index);
        }
        match response.bytes().await {
            Ok(body) => Attempt::Answered(RawResponse {
                status,
                headers,
                body,
            }),
            Err(e) => Attempt::Failed(transport_error(base, &e)),
        }
    }

    /// Opens a long-lived POST on endpoint `idx` (no overall timeout: a stream lasts as
    /// long as it is read) and returns the response whatever its status.
    pub(crate) async fn open_long(
        &self,
        idx: usize,
        segments: &[&str],
        body: Vec<u8>,
    ) -> Result<reqwest::Response, ClientError> {
        let inner = &self.inner;
        let base = &inner.endpoints[idx % inner.endpoints.len()];
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::Config(format!("endpoint `{base}` cannot take a path")))?
            .pop_if_empty()
            .extend(segments.iter());
        let mut request = inner
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &inner.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(base, &e))?;
        if let Some(index) = header_index(response.headers()) {
            self.observe_index(index);
        }
        Ok(response)
    }

    /// How many endpoints this client has.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.inner.endpoints.len()
    }

    /// The index of the endpoint calls currently start at.
    pub(crate) fn current_idx(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    /// Moves the shared endpoint choice past `idx`, unless another call already did.
    pub(crate) fn advance_from(&self, idx: usize) {
        self.move_from(idx, (idx + 1) % self.inner.endpoints.len());
    }

    /// Moves the shared endpoint choice from `idx` to `to`, unless another call already
    /// moved it (its failure is as recent as ours).
    fn move_from(&self, idx: usize, to: usize) {
        let _ = self
            .inner
            .current
            .compare_exchange(idx, to, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The endpoint of the leader a 503 from endpoint `idx` names, if it is one of ours
    /// and not `idx` itself (a leader that cannot serve names itself).
    fn leader_endpoint(&self, idx: usize, response: &RawResponse) -> Option<usize> {
        let url = leader_url(response)?;
        let to = endpoint_at(&self.inner.endpoints, &url)?;
        (to != idx).then_some(to)
    }

    /// Write responses carry the write's `index`, which a forwarding follower's header
    /// may not reach yet; the token must cover it.
    fn observe_body_index(&self, response: &RawResponse) {
        #[derive(Deserialize)]
        struct IndexOnly {
            #[serde(default)]
            index: Option<Index>,
        }
        if let Ok(IndexOnly { index: Some(index) }) = serde_json::from_slice(&response.body) {
            self.observe_index(index);
        }
    }

    /// The wait before retry number `retry` after a 503. `Retry-After` is when the
    /// answering replica expects to serve again; a leader it names can serve now, so a
    /// retry there waits only the backoff.
    fn delay_after_503(
        &self,
        retry: u32,
        to_leader: bool,
        retry_after: Option<Duration>,
    ) -> Duration {
        match retry_after {
            Some(hint) if !to_leader => with_jitter_above(hint.min(self.inner.config.backoff_max)),
            _ => self.backoff(retry),
        }
    }

    /// Backoff before retry number `retry` (from 1): base * 2^(retry-1), capped, then
    /// "equal jitter" (half fixed, half random) so clients that failed together spread out.
    fn backoff(&self, retry: u32) -> Duration {
        let config = &self.inner.config;
        let exp = config
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = exp.min(config.backoff_max);
        let half = capped / 2;
        let spread = capped.saturating_sub(half).as_micros() as u64;
        half + Duration::from_micros(rand::rng().random_range(0..=spread))
    }
}

/// Up to a tenth more than the server's hint, so many clients do not return at once.
fn with_jitter_above(hint: Duration) -> Duration {
    let spread = (hint / 10).as_micros() as u64;
    hint + Duration::from_micros(rand::rng().random_range(0..=spread))
}

/// The leader's API URL a 503 names: the `X-Tanvrit-Leader-Url` header, else the error
/// body's `leader_url` (the server sends both; a proxy may drop either).
fn leader_url(response: &RawResponse) -> Option<Url> {
    let from_header = response
        .headers
        .get(LEADER_URL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let raw = from_header.or_else(|| {
        serde_json::from_slice::<ErrorBody>(&response.body)
            .ok()
            .and_then(|body| body.error.leader_url)
    })?;
    Url::parse(raw.trim()).ok()
}

/// The endpoint serving `url`'s host and port at its root. An endpoint with a path is a
/// route through a proxy, whose address is not the replica's.
fn endpoint_at(endpoints: &[Url], url: &Url) -> Option<usize> {
    endpoints.iter().position(|endpoint| {
        matches!(endpoint.path(), "" | "/")
            && endpoint.host().is_some()
            && endpoint.host() == url.host()
            && endpoint.port_or_known_default() == url.port_or_known_default()
    })
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn split_path(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn header_index(headers: &HeaderMap) -> Option<Index> {
    headers
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Retry-After` in delta-seconds (what the server sends; HTTP dates are not used here).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn transport_error(base: &Url, e: &reqwest::Error) -> ClientError {
    if let Some(message) = tls_failure(e) {
        return ClientError::Tls {
            endpoint: base.as_str().trim_end_matches('/').to_string(),
            message,
        };
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Transport {
        endpoint: base.as_str().trim_end_matches('/').to_string(),
        message,
        not_sent: e.is_connect(),
        timed_out: e.is_timeout(),
    }
}

/// The TLS failure among `e`'s causes, explained. The rustls error itself when a cause
/// is one (or an `std::io::Error` wrapping one: its `source` skips the wrapped error);
/// else rustls's words as the HTTP stack relayed them, matched by text, since layers in
/// between box errors in ways that hide their type.
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    let mut text = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(explain_tls(tls));
        }
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(explain_tls(tls));
        }
        text = current.to_string();
        cause = current.source();
    }
    // The innermost message; rustls's own phrasing of certificate and alert failures.
    const MARKERS: [(&str, &str); 9] = [
        ("UnknownIssuer", UNKNOWN_ISSUER),
        ("BadSignature", UNKNOWN_ISSUER),
        ("NotValidForName", NOT_VALID_FOR_NAME),
        ("received fatal alert: UnknownCA", REFUSED_CERT),
        ("received fatal alert: BadCertificate", REFUSED_CERT),
        ("received fatal alert: CertificateRequired", REFUSED_CERT),
        ("received fatal alert: DecryptError", REFUSED_CERT),
        ("received fatal alert", ""),
        ("invalid peer certificate", ""),
    ];
    MARKERS
        .iter()
        .find(|(marker, _)| text.contains(marker))
        .map(|(_, hint)| {
            if hint.is_empty() {
                text.clone()
            } else {
                format!("{hint} ({text})")
            }
        })
}

const UNKNOWN_ISSUER: &str = "the server's certificate is not signed by the CA in --ca-file / \
     TANVRIT_CA_FILE (or, without one, by a public CA)";
const NOT_VALID_FOR_NAME: &str = "the server's certificate does not name the host in the address";
const REFUSED_CERT: &str = "the server refused this client's certificate (or wants one)";

/// rustls's words, and what they usually mean for someone holding a CA file.
fn explain_tls(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError};
    let hint = match error {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => UNKNOWN_ISSUER,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => NOT_VALID_FOR_NAME,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired",
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError,
        ) => REFUSED_CERT,
        rustls::Error::InvalidMessage(_) => "the address may not be a TLS server (try http://)",
        _ => "",
    };
    if hint.is_empty() {
        error.to_string()
    } else {
        format!("{hint} ({error})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_under_the_cap() {
        let client = Client::new(ClientConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..ClientConfig::default()
        })
        .unwrap();
        for _ in 0..50 {
            let first = client.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = client.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = client.backoff(30);
            assert!(late >= Duration::from_millis(250) && late <= Duration::from_millis(500));
        }
    }

    #[test]
    fn retry_after_reads_delta_seconds_only() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    fn three_endpoints() -> Client {
        Client::new(ClientConfig {
            endpoints: vec![
                "http://10.0.0.1:7070".into(),
                "http://10.0.0.2:7070/".into(),
                "https://replica-3.example:8443".into(),
            ],
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            ..ClientConfig::default()
        })
        .unwrap()
    }

    fn unavailable(header: Option<&'static str>, body: serde_json::Value) -> RawResponse {
        let mut headers = HeaderMap::new();
        if let Some(url) = header {
            headers.insert(LEADER_URL_HEADER, HeaderValue::from_static(url));
        }
        RawResponse {
            status: 503,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    fn no_leader(leader_url: Option<&str>) -> serde_json::Value {
        let mut error = serde_json::json!({"code": "no_leader", "message": "cut off"});
        if let Some(url) = leader_url {
            error["leader_url"] = url.into();
        }
        serde_json::json!({ "error": error })
    }

    #[test]
    fn a_leader_url_in_the_header_or_the_body_picks_the_endpoint_with_its_host_and_port() {
        let client = three_endpoints();
        let by_header = unavailable(Some("http://10.0.0.2:7070"), no_leader(None));
        assert_eq!(client.leader_endpoint(0, &by_header), Some(1));
        // The header wins over the body; a proxy that drops it leaves the body's.
        let both = unavailable(
            Some("http://10.0.0.2:7070"),
            no_leader(Some("http://10.0.0.1:7070")),
        );
        assert_eq!(client.leader_endpoint(2, &both), Some(1));
        let by_body = unavailable(None, no_leader(Some("http://replica-3.example:8443")));
        assert_eq!(
            client.leader_endpoint(0, &by_body),
            Some(2),
            "the server names http://; the endpoint's scheme is the client's business"
        );
    }

    #[test]
    fn a_leader_url_that_is_not_another_endpoint_is_not_followed() {
        let client = three_endpoints();
        for url in [
            "http://10.0.0.9:7070",
            "http://10.0.0.1:7071",
            "http://0.0.0.0:7070",
            "not a url",
        ] {
            let body = no_leader(Some(url));
            assert_eq!(
                client.leader_endpoint(1, &unavailable(None, body)),
                None,
                "{url}"
            );
        }
        let itself = unavailable(Some("http://10.0.0.1:7070"), no_leader(None));
        assert_eq!(
            client.leader_endpoint(0, &itself),
            None,
            "a leader that cannot serve names itself"
        );
        assert_eq!(
            client.leader_endpoint(1, &unavailable(None, no_leader(None))),
            None
        );
        let proxied = Client::new(ClientConfig {
            endpoints: vec!["http://gw:80/r1".into(), "http://gw:80/r2".into()],
            ..ClientConfig::default()
        })
        .unwrap();
        let hint = unavailable(Some("http://gw:80"), no_leader(None));
        assert_eq!(
            proxied.leader_endpoint(0, &hint),
            None,
            "an endpoint with a path is a proxy route, not the replica at that address"
        );
    }

    #[test]
    fn a_retry_to_the_named_leader_does_not_wait_for_the_answering_replicas_retry_after() {
        let client = three_endpoints();
        let hint = Some(Duration::from_secs(60));
        for _ in 0..50 {
            assert!(client.delay_after_503(1, true, hint) <= Duration::from_millis(100));
            let stays = client.delay_after_503(1, false, hint);
            assert!(
                stays >= Duration::from_secs(10) && stays <= Duration::from_secs(11),
                "Retry-After, capped at backoff_max, plus up to a tenth: {stays:?}"
            );
            assert!(client.delay_after_503(1, false, None) <= Duration::from_millis(100));
        }
    }

    #[test]
    fn stale_reads_become_min_index_reads_once_an_index_is_known() {
        let client = Client::new(ClientConfig::default()).unwrap();
        assert_eq!(
            client.read_consistency(Consistency::Stale),
            Consistency::Stale
        );
        client.observe_index(7);
        client.observe_index(3);
        assert_eq!(
            client.read_consistency(Consistency::Stale),
            Consistency::MinIndex(7)
        );
        assert_eq!(
            client.read_consistency(Consistency::Strict),
            Consistency::Strict
        );
        let off = Client::new(ClientConfig {
            read_your_writes: false,
            ..ClientConfig::default()
        })
        .unwrap();
        off.observe_index(7);
        assert_eq!(off.read_consistency(Consistency::Stale), Consistency::Stale);
    }
}
