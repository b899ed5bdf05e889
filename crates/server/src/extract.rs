//! Request extractors whose failures are [`ApiError`]s, so every refusal carries the JSON
//! error body: [`ApiJson`] for bodies, [`ApiPath`] for the `{id}` path segment,
//! [`ApiAttemptPath`] for `jobs/{id}/attempts/{attempt}/...`, and [`IdempotencyKey`] for
//! the `Idempotency-Key` header of writes (with the scope and fingerprint it is bound to).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tanvrit_api::{Scope, IDEMPOTENCY_HEADER};
use tanvrit_state::validate;

use crate::auth::Principal;
use crate::error::{ApiError, BodyTimedOut};

/// A JSON request body.
///
/// * an empty body reads as `{}` (read routes need no body at all);
/// * a non-empty body must be `application/json` (or `application/*+json`), else 415;
/// * a body over the router's `DefaultBodyLimit` is 413;
/// * invalid JSON is 400 `malformed_json`; JSON of the wrong shape (unknown or missing
///   fields, wrong types) is 400 `invalid_request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type_ok = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge
            } else if let Some(limit) = BodyTimedOut::find(&rejection) {
                ApiError::BodyTimeout { limit }
            } else {
                ApiError::InvalidRequest(format!("could not read the body: {rejection}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return parse(b"{}").map(ApiJson);
        }
        content_type_ok?;
        parse(&bytes).map(ApiJson)
    }
}

/// Checks the content type of a request that has a body.
fn is_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "a request body needs `Content-Type: application/json`".into(),
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "content type `{essence}` is not supported; send `application/json`"
        )))
    }
}

/// Parses a JSON object, telling broken JSON apart from JSON of the wrong shape.
/// Public so the fuzz targets (fuzz/) parse bodies exactly as the handlers do.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = serde_json::from_slice(bytes).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::InvalidRequest(format!("invalid request body: {error}")),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(format!("malformed JSON: {error}"))
            }
        }
    })?;
    // serde also reads a struct from an array of its fields; the API speaks objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

/// The single `{id}` segment of a route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidRequest(format!("bad path: {rejection}")))?;
        Ok(ApiPath(id))
    }
}

/// The `{id}` and `{attempt}` segments of `jobs/{id}/attempts/{attempt}/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAttemptPath {
    /// The job's id.
    pub job: String,
    /// The attempt's id.
    pub attempt: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ApiAttemptPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((job, attempt)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidRequest(format!("bad path: {rejection}")))?;
        Ok(ApiAttemptPath { job, attempt })
    }
}

/// The `Idempotency-Key` header of a write, if sent, with the method and path the
/// request's fingerprint covers.
///
/// * absent: the write is proposed bare, as before;
/// * not readable as visible ASCII, or sent twice: 400 `invalid_request`;
/// * empty, longer than 256 bytes, or with spaces at either end: 422 `invalid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotencyKey(Option<KeyedRequest>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyedRequest {
    key: String,
    method: String,
    path: String,
}

/// What makes one write idempotent: the fields of its `Command::Idempotent` envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The client's key.
    pub key: String,
    /// Whose key it is: [`idempotency_scope`].
    pub scope: String,
    /// Hex SHA-256 of the method, path and canonical body: [`fingerprint`].
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// The key, if the header was sent.
    pub fn key(&self) -> Option<&str> {
        self.0.as_ref().map(|keyed| keyed.key.as_str())
    }

    /// Binds the key to who sends it and what the request says. `body` is the parsed
    /// request, so fields left out and fields sent as `null` fingerprint alike.
    pub fn bind<B: Serialize>(
        &self,
        principal: &Principal,
        body: &B,
    ) -> Result<Option<Idempotency>, ApiError> {
        let Some(keyed) = &self.0 else {
            return Ok(None);
        };
        let body = serde_json::to_value(body)
            .map_err(|e| ApiError::Internal(format!("cannot fingerprint the request: {e}")))?;
        Ok(Some(Idempotency {
            key: keyed.key.clone(),
            scope: idempotency_scope(principal),
            fingerprint: fingerprint(&keyed.method, &keyed.path, &body),
        }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        if values.next().is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "send one `{IDEMPOTENCY_HEADER}` header, not several"
            )));
        }
        let key = value.to_str().map_err(|_| {
            ApiError::InvalidRequest(format!("`{IDEMPOTENCY_HEADER}` must be visible ASCII"))
        })?;
        validate::idempotency_key(key).map_err(|r| ApiError::Invalid(r.to_string()))?;
        Ok(IdempotencyKey(Some(KeyedRequest {
            key: key.to_string(),
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
        })))
    }
}

/// Whose idempotency keys a principal shares: a user key's business (the tenant: every
/// key of one business sees the same keys, so a retry through a rotated key still finds
/// the first answer), else the key itself (admin and agent keys act for many
/// businesses; two operators' keys never meet). Two tenants' keys never collide.
pub fn idempotency_scope(principal: &Principal) -> String {
    match (principal.scope, &principal.business) {
        (Scope::User, Some(business)) => format!("business:{business}"),
        _ => format!("key:{}", principal.key),
    }
}

/// Hex SHA-256 of `METHOD\nPATH\n<canonical JSON of the body>`.
///
/// Canonical JSON: object members sorted by name, `null` members left out (a field
/// added later with a `null` default does not change the fingerprint of an older
/// client's retry), arrays in order, no whitespace.
pub fn fingerprint(method: &str, path: &str, body: &Value) -> String {
    let mut text = format!("{method}\n{path}\n");
    canonical_json(body, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(members) => {
            let mut names: Vec<&String> = members
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(name, _)| name)
                .collect();
            names.sort();
            out.push('{');
            for (i, name) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                canonical_json(&members[name], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use axum::{Json, Router};
    use tanvrit_api::{JobListRequest, JobState, KeyCreateRequest};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route(
                "/list",
                post(|ApiJson(req): ApiJson<JobListRequest>| async move {
                    Json(serde_json::json!({ "limit": req.limit, "state": req.state }))
                }),
            )
            .route(
                "/keys",
                post(|ApiJson(req): ApiJson<KeyCreateRequest>| async move {
                    Json(serde_json::json!({ "scope": req.scope.as_str() }))
                }),
            )
            .layer(DefaultBodyLimit::max(64))
    }

    async fn call(path: &str, content_type: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let mut request = Request::post(path);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = app()
            .oneshot(
                request
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn a_well_formed_body_is_parsed() {
        let (status, body) = call("/list", JSON, r#"{"limit": 5, "state": "running"}"#).await;
        assert_eq!(status, 200);
        assert_eq!(body["limit"], 5);
        assert_eq!(body["state"], JobState::Running.as_str());
        let (status, _) = call("/list", Some("application/json; charset=utf-8"), "{}").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn an_empty_body_reads_as_an_empty_object_without_a_content_type() {
        let (status, body) = call("/list", None, "").await;
        assert_eq!(status, 200);
        assert!(body["limit"].is_null());
    }

    #[tokio::test]
    async fn an_empty_body_is_missing_fields_where_fields_are_required() {
        let (status, body) = call("/keys", None, "").await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    #[tokio::test]
    async fn broken_json_is_malformed_json() {
        for text in [r#"{"limit": "#, "{limit: 1}", "[1,"] {
            let (status, body) = call("/list", JSON, text).await;
            assert_eq!(status, 400, "{text}");
            assert_eq!(body["error"]["code"], "malformed_json", "{text}");
        }
    }

    #[tokio::test]
    async fn unknown_fields_and_wrong_types_are_invalid_requests() {
        for text in [
            r#"{"limit": 1, "colour": "red"}"#,
            r#"{"limit": "many"}"#,
            "[]",
        ] {
            let (status, body) = call("/list", JSON, text).await;
            assert_eq!(status, 400, "{text}");
            assert_eq!(body["error"]["code"], "invalid_request", "{text}");
        }
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_unsupported_media_type() {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let (status, body) = call("/list", content_type, r#"{"limit": 1}"#).await;
            assert_eq!(status, 415, "{content_type:?}");
            assert_eq!(body["error"]["code"], "unsupported_media_type");
        }
        let (status, _) = call("/list", Some("application/merge-patch+json"), "{}").await;
        assert_eq!(status, 200, "structured +json types are JSON");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large() {
        let big = format!(r#"{{"after": "{}"}}"#, "x".repeat(100));
        let (status, body) = call("/list", JSON, &big).await;
        assert_eq!(status, 413);
        assert_eq!(body["error"]["code"], "body_too_large");
    }

    fn keyed_app() -> Router {
        Router::new().route(
            "/jobs/{id}/cancel",
            post(|keyed: IdempotencyKey| async move {
                let principal = crate::auth::Principal {
                    key: tanvrit_api::KeyId::from("key-a"),
                    scope: Scope::Admin,
                    business: None,
                    node: None,
                };
                let bound = keyed.bind(&principal, &serde_json::json!({"reason": "r"}));
                Json(serde_json::json!({
                    "key": keyed.key(),
                    "fingerprint": bound.unwrap().map(|b| b.fingerprint),
                }))
            }),
        )
    }

    async fn keyed_call(values: &[&[u8]]) -> (u16, serde_json::Value) {
        let mut request = Request::post("/jobs/job-1/cancel");
        for value in values {
            request = request.header(
                IDEMPOTENCY_HEADER,
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let response = keyed_app()
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_idempotency_header_is_optional_and_bound_to_method_path_and_body() {
        let (status, body) = keyed_call(&[]).await;
        assert_eq!(status, 200);
        assert!(body["key"].is_null() && body["fingerprint"].is_null());
        let (status, body) = keyed_call(&[b"order-17"]).await;
        assert_eq!(status, 200);
        assert_eq!(body["key"], "order-17");
        let expected = fingerprint(
            "POST",
            "/jobs/job-1/cancel",
            &serde_json::json!({"reason": "r"}),
        );
        assert_eq!(body["fingerprint"], expected.as_str());
        assert_eq!(expected.len(), 64);
    }

    #[tokio::test]
    async fn a_malformed_idempotency_header_is_refused() {
        let long = "k".repeat(257);
        for (values, status, code) in [
            (vec![&b""[..]], 422, "invalid"),
            (vec![long.as_bytes()], 422, "invalid"),
            (vec![&b"caf\xc3\xa9"[..]], 400, "invalid_request"),
            (vec![&b"a"[..], &b"b"[..]], 400, "invalid_request"),
        ] {
            let (got, body) = keyed_call(&values).await;
            assert_eq!(got, status, "{values:?}");
            assert_eq!(body["error"]["code"], code, "{values:?}");
        }
    }

    #[test]
    fn fingerprints_ignore_member_order_and_null_members_but_nothing_else() {
        let a = serde_json::json!({"b": 1, "a": [1, {"y": null, "x": "s"}], "c": null});
        let b = serde_json::json!({"a": [1, {"x": "s"}], "b": 1});
        assert_eq!(fingerprint("POST", "/p", &a), fingerprint("POST", "/p", &b));
        let mut canonical = String::new();
        canonical_json(&a, &mut canonical);
        assert_eq!(canonical, r#"{"a":[1,{"x":"s"}],"b":1}"#);
        for (method, path, body) in [
            ("PUT", "/p", b.clone()),
            ("POST", "/q", b.clone()),
            (
                "POST",
                "/p",
                serde_json::json!({"a": [{"x": "s"}, 1], "b": 1}),
            ),
            (
                "POST",
                "/p",
                serde_json::json!({"a": [1, {"x": "s"}], "b": "1"}),
            ),
        ] {
            assert_ne!(
                fingerprint(method, path, &body),
                fingerprint("POST", "/p", &b),
                "{method} {path} {body}"
            );
        }
    }

    #[test]
    fn user_keys_share_their_business_scope_and_other_keys_are_their_own() {
        use tanvrit_api::{BusinessId, KeyId};
        let principal = |key: &str, scope: Scope, business: Option<&str>| Principal {
            key: KeyId::from(key),
            scope,
            business: business.map(BusinessId::from),
            node: None,
        };
        assert_eq!(
            idempotency_scope(&principal("key-1", Scope::User, Some("acme"))),
            idempotency_scope(&principal("key-2", Scope::User, Some("acme")))
        );
        assert_ne!(
            idempotency_scope(&principal("key-1", Scope::User, Some("acme"))),
            idempotency_scope(&principal("key-1", Scope::User, Some("globex")))
        );
        assert_eq!(
            idempotency_scope(&principal("key-9", Scope::Admin, None)),
            "key:key-9"
        );
    }
}
