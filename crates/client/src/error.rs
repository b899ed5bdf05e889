//! [`ClientError`]: everything a call can fail with, each with a stable [`ClientError::code`].

use std::time::Duration;

use tanvrit_api::ErrorBody;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status. `code` comes from the JSON error body
    /// (`{"error": {"code", "message"}}`); when the body is not that shape (a proxy, an
    /// unknown route) it is derived from the status, e.g. `http_404`.
    #[error("{code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable error code, e.g. `not_found`, `insufficient_credits`.
        code: String,
        /// The server's explanation.
        message: String,
        /// The `Retry-After` hint, on 503s.
        retry_after: Option<Duration>,
        /// The leader the answering replica knows of, on leadership errors.
        leader: Option<String>,
    },
    /// No answer: the connection could not be made, broke, or timed out.
    #[error("{endpoint}: {message}")]
    Transport {
        /// The base URL that was being called.
        endpoint: String,
        /// What went wrong, with its causes.
        message: String,
        /// True when the request provably never reached the server (connection refused).
        not_sent: bool,
        /// True when the request timed out.
        timed_out: bool,
    },
    /// The TLS handshake failed: the server's certificate is not signed by a trusted CA
    /// or not valid for the address, or the server refused this client's certificate.
    /// Not retried: another attempt meets the same certificates.
    #[error("{endpoint}: TLS handshake failed: {message}")]
    Tls {
        /// The base URL that was being called.
        endpoint: String,
        /// What rustls said, with what it likely means.
        message: String,
    },
    /// A 2xx answer whose body is not the expected JSON.
    #[error("cannot decode the response of {path}: {message}")]
    Decode {
        /// The request path.
        path: String,
        /// The decoder's complaint.
        message: String,
    },
    /// The client was configured wrongly (no endpoint, a malformed URL or header value).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The stable code: the server's for [`ClientError::Api`], else `transport`,
    /// `timeout`, `tls`, `decode` or `config`.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } => code,
            ClientError::Transport {
                timed_out: true, ..
            } => "timeout",
            ClientError::Transport { .. } => "transport",
            ClientError::Tls { .. } => "tls",
            ClientError::Decode { .. } => "decode",
            ClientError::Config(_) => "config",
        }
    }

    /// True for a 503 `write_outcome_unknown`: the write was proposed, but leadership
    /// changed or the leader's answer was lost before it committed, so it may or may not
    /// take effect. Repeating it under the same idempotency key is safe and tells which;
    /// repeating it without one may act twice.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Api { status: 503, code, .. } if code == tanvrit_api::WRITE_OUTCOME_UNKNOWN
        )
    }

    /// The HTTP status, for [`ClientError::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The human-readable message without the code.
    pub fn message(&self) -> String {
        match self {
            ClientError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Builds an [`ClientError::Api`] from a non-2xx answer.
    pub(crate) fn from_response(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(parsed) => ClientError::Api {
                status,
                code: parsed.error.code,
                message: parsed.error.message,
                retry_after,
                leader: parsed.error.leader,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    status_reason(status).to_string()
                } else {
                    // A proxy's HTML page can be long; the first line says enough.
                    let line = text.lines().next().unwrap_or_default();
                    line.chars().take(300).collect()
                };
                ClientError::Api {
                    status,
                    code: status_code_name(status),
                    message,
                    retry_after,
                    leader: None,
                }
            }
        }
    }
}

/// The code used when an error body is missing: the names the server itself uses for
/// these statuses, so callers can match one code whichever layer answered.
fn status_code_name(status: u16) -> String {
    match status {
        400 => "bad_request".into(),
        401 => "unauthorized".into(),
        403 => "forbidden".into(),
        404 => "not_found".into(),
        405 => "method_not_allowed".into(),
        413 => "payload_too_large".into(),
        415 => "unsupported_media_type".into(),
        503 => "unavailable".into(),
        other => format!("http_{other}"),
    }
}

fn status_reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("unexpected status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_body_gives_its_code_message_and_leader() {
        let body = br#"{"error":{"code":"no_leader","message":"election","leader":"replica-2"}}"#;
        let err = ClientError::from_response(503, Some(Duration::from_secs(2)), body);
        assert_eq!(err.code(), "no_leader");
        assert_eq!(err.message(), "election");
        assert_eq!(err.status(), Some(503));
        match err {
            ClientError::Api {
                leader,
                retry_after,
                ..
            } => {
                assert_eq!(leader.as_deref(), Some("replica-2"));
                assert_eq!(retry_after, Some(Duration::from_secs(2)));
            }
            other => panic!("expected Api, got {other:?}"),
        }
    }

    #[test]
    fn a_body_that_is_not_the_error_shape_falls_back_to_the_status() {
        let err = ClientError::from_response(413, None, b"length limit exceeded\nmore");
        assert_eq!(err.code(), "payload_too_large");
        assert_eq!(err.message(), "length limit exceeded");
        let err = ClientError::from_response(418, None, b"");
        assert_eq!(err.code(), "http_418");
        assert_eq!(err.message(), "I'm a teapot");
    }
}
