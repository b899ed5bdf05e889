//! The replica RPC listener: axum on `raft_addr`, separate from the public API.
//!
//! One route, `POST /raft/v1/{kind}`. Over mutual TLS ([`crate::raft::tls`]) the
//! handshake has admitted a member replica already; without TLS the secret is checked
//! (in constant time). Then the body
//! is decoded as the message its path names, and the replica's handler answers. A wrong
//! or missing secret is a 401 with the usual error body; an unknown kind a 404; a body
//! that does not decode a 400; a body over the limit a 413.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::raft::node::Node;
use crate::raft::rpc::{Rpc, RpcKind};
use crate::raft::transport::{FROM_HEADER, SECRET_HEADER};

/// Largest accepted body: a snapshot chunk (3 MiB by default) or a batch of entries.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
struct Served {
    node: Arc<Node>,
    /// `None` over mutual TLS.
    secret: Option<Arc<[u8]>>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(served): State<Served>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let presented = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // `ct_eq` compares every byte whatever the first difference (lengths may differ).
    let refused = served
        .secret
        .as_ref()
        .is_some_and(|secret| !bool::from(presented.ct_eq(secret)));
    if refused {
        return error(
            StatusCode::UNAUTHORIZED,
            "cluster_secret_invalid",
            "missing or wrong cluster secret".into(),
        );
    }
    let Some(kind) = RpcKind::from_segment(&segment) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no replica RPC `{segment}`"),
        );
    };
    let rpc = match Rpc::decode(kind, &body) {
        Ok(rpc) => rpc,
        Err(err) => return error(StatusCode::BAD_REQUEST, "malformed", err.to_string()),
    };
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let reply = served.node.handle_rpc(from, rpc).await;
    match reply.encode() {
        Ok(bytes) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
        ),
    }
}

/// Serves replica RPC on `listener` until `shutdown` resolves: over mutual TLS with
/// `tls`, else in plain HTTP checking `secret`.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    secret: &str,
    tls: Option<tanvrit_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = Served {
        node,
        secret: tls.is_none().then(|| Arc::from(secret.as_bytes())),
    };
    let app = Router::new()
        .route("/raft/v1/{kind}", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(served);
    if let Some(tls) = tls {
        return crate::raft::tls::serve(listener, app, tls, shutdown).await;
    }
    // Replica RPC is small request/answer pairs on kept-alive connections: no Nagle
    // delay on the answers (axum 0.8 leaves TCP_NODELAY off; the client sets it).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on a replica connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
