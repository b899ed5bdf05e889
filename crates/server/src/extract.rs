//! Request extractors whose failures are [`ApiError`]s, so every refusal carries the JSON
//! error body: [`ApiJson`] for bodies, [`ApiPath`] for the `{id}` path segment and
//! [`ApiAttemptPath`] for `jobs/{id}/attempts/{attempt}/...`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
}
