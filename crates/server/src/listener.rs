//! The API's accept loop: each connection served by hyper with the limits `axum::serve`
//! does not set, over TLS when configured, and drained gracefully at shutdown.
//!
//! - With TLS, the handshake must finish within `header_read_timeout` too; HTTP/2 is
//!   served when the client chose `h2` by ALPN, HTTP/1.1 otherwise. A client
//!   certificate the handshake verified travels with every request of the connection
//!   ([`PeerCertificate`]), for `auth` to map to an identity.
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
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tanvrit_tls::ServerTls;
use tokio::io::{AsyncRead, AsyncWrite};
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

/// The names of the certificate a TLS client presented and the handshake verified
/// against the client CA (a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerCertificate {
    /// Its DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Its URI subject alternative names.
    pub uri_names: Vec<String>,
}

/// Accepts connections on `listener` and serves `router` on each until `shutdown`
/// resolves; then stops accepting, lets each connection finish the request it is
/// answering (idle ones close at once), and returns when all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.as_ref().map(ServerTls::acceptor);
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
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        match acceptor {
                            None => serve_connection(stream, peer, None, router, limits, closed).await,
                            Some(acceptor) => {
                                accept_tls(acceptor, stream, peer, router, limits, closed).await;
                            }
                        }
                    });
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

/// Runs the TLS handshake (bounded like a request head: a client that never finishes
/// it holds nothing for long), then serves the connection with the protocol ALPN chose.
async fn accept_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    closed: watch::Receiver<bool>,
) {
    set_nodelay(&stream);
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // Scanners, wrong CAs, plain HTTP on the TLS port: the client's business, but
            // an operator chasing a refused client wants to see why.
            tracing::info!(%peer, %error, "TLS handshake on the API failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake on the API timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let http2 = session.alpn_protocol() == Some(tanvrit_tls::ALPN_H2);
    let certificate = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| {
            Arc::new(PeerCertificate {
                dns_names: tanvrit_tls::pem::dns_names(leaf),
                uri_names: tanvrit_tls::pem::uri_names(leaf),
            })
        });
    if http2 {
        serve_http2(stream, peer, certificate, router, limits, closed).await;
    } else {
        serve_connection(stream, peer, certificate, router, limits, closed).await;
    }
}

fn set_nodelay(stream: &TcpStream) {
    // API calls are small request/answer pairs: no Nagle delay on the answers.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on an API connection");
    }
}

/// The router as a hyper service, each request tagged with its peer address and
/// client certificate.
fn service(
    peer: SocketAddr,
    certificate: Option<Arc<PeerCertificate>>,
    router: Router,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        tower::ServiceExt::oneshot(router.clone(), request)
    })
}

async fn closing(mut closed: watch::Receiver<bool>) {
    // The sender outlives every connection; an error can only mean it is gone.
    let _ = closed.wait_for(|closed| *closed).await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    certificate: Option<Arc<PeerCertificate>>,
    router: Router,
    limits: ConnectionLimits,
    closed: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static + Nodelay,
{
    stream.nodelay();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_limit_bytes.max(MIN_HEADER_LIMIT));
    let connection =
        builder.serve_connection(TokioIo::new(stream), service(peer, certificate, router));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing(closed) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Timeouts, oversized heads, clients that went away: the client's business.
        tracing::debug!(%peer, %error, "API connection ended with an error");
    }
}

/// HTTP/2 (only over TLS, by ALPN). Its frames carry no slow-loris head: hyper bounds
/// the header list, and an idle connection is closed by keep-alive pings unanswered.
async fn serve_http2<S>(
    stream: S,
    peer: SocketAddr,
    certificate: Option<Arc<PeerCertificate>>,
    router: Router,
    limits: ConnectionLimits,
    closed: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_limit_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let connection =
        builder.serve_connection(TokioIo::new(stream), service(peer, certificate, router));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing(closed) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "API connection (HTTP/2) ended with an error");
    }
}

/// Turns Nagle off on plain TCP connections (TLS ones had it done before the handshake).
trait Nodelay {
    fn nodelay(&self);
}

impl Nodelay for TcpStream {
    fn nodelay(&self) {
        set_nodelay(self);
    }
}

impl Nodelay for tokio_rustls::server::TlsStream<TcpStream> {
    fn nodelay(&self) {}
}
