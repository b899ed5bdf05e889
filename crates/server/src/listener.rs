//! The API's accept loop: each connection served as HTTP/1.1 by hyper with the limits
//! `axum::serve` does not set, and drained gracefully at shutdown.
//!
//! - A request's head (request line and headers) must arrive within
//!   `header_read_timeout`, or the connection is closed (slow-loris: a client that
//!   trickles headers to hold connections open). hyper starts that clock whenever it
//!   waits for a head, so it is also how long an idle keep-alive connection is kept;
//!   clients' pools notice the close and reconnect.
//! - The head must fit in `header_limit_bytes`; a larger one is answered 431.
//! - Every request carries its peer address (`ConnectInfo<SocketAddr>`), so a failed
//!   authentication is logged with where it came from.
//!
//! Bodies are bounded by size (`body_limit_bytes`, 413) in the router.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The smallest head buffer hyper accepts.
const MIN_HEADER_LIMIT: usize = 8192;

/// What each connection is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    /// Longest wait for a request's whole head.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes.
    pub header_limit_bytes: usize,
}

/// Accepts connections on `listener` and serves `router` on each until `shutdown`
/// resolves; then stops accepting, lets each connection finish the request it is
/// answering (idle ones close at once), and returns when all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let router = router.clone();
                    let closed = closed.clone();
                    connections.spawn(serve_connection(stream, peer, router, limits, closed));
                }
                // Out of file descriptors, a connection reset before it was accepted:
                // wait a moment and go on (as axum::serve does).
                Err(error) => {
                    tracing::debug!(%error, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    closing.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut closed: watch::Receiver<bool>,
) {
    // API calls are small request/answer pairs: no Nagle delay on the answers.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on an API connection");
    }
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        tower::ServiceExt::oneshot(router.clone(), request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_limit_bytes.max(MIN_HEADER_LIMIT));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let closing = async move {
        // The sender outlives every connection; an error can only mean it is gone.
        let _ = closed.wait_for(|closed| *closed).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Timeouts, oversized heads, clients that went away: the client's business.
        tracing::debug!(%peer, %error, "API connection ended with an error");
    }
}
