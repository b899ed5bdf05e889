//! Mutual TLS for replica RPC: [`ReplicaTls`] (this replica's certificate, the cluster
//! CA, and who counts as a member), and the listener that serves replica RPC over it.
//!
//! Each replica presents its `replica-<id>.<cluster>.tanvrit` certificate both when it
//! serves and when it calls. Both sides admit the other only if the certificate chains
//! to the cluster CA and names a replica of the current membership (voters and
//! learners, as this replica last applied it); before any membership exists, the
//! configured peers. An agent's or a client's certificate of the same CA, another
//! cluster's, or a self-signed one fails the handshake, and the refusing replica logs
//! why. The check runs at each handshake: a removed replica is refused from its next
//! connection on (kept-alive ones live until they close).

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tanvrit_tls::{MemberCheck, ReloadingCert, ServerTls};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::raft::types::{NodeId, RaftMetrics};
use crate::ClusterError;

/// How long a peer has to finish its handshake, and to send a request's head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is a member: the applied membership once there is one, else the configured peers.
#[derive(Clone, Default)]
struct Members {
    configured: Arc<BTreeSet<NodeId>>,
    metrics: Arc<OnceLock<watch::Receiver<RaftMetrics>>>,
}

impl Members {
    fn contains(&self, id: NodeId) -> bool {
        if let Some(metrics) = self.metrics.get() {
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            if membership.nodes().next().is_some() {
                return membership.nodes().any(|(member, _)| *member == id);
            }
        }
        self.configured.contains(&id)
    }
}

/// Replica RPC over mutual TLS: where this replica's certificate, key and the cluster CA
/// are.
#[derive(Clone)]
pub struct ReplicaTls {
    /// This replica's certificate chain (PEM), naming `replica-<id>.<cluster>.tanvrit`.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The cluster CA (PEM).
    pub ca_file: PathBuf,
    members: Members,
    /// Loaded once, shared by the listener and the client so a reload changes both.
    cert: Arc<OnceLock<Arc<ReloadingCert>>>,
}

impl fmt::Debug for ReplicaTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

fn tls_err(e: tanvrit_tls::TlsError) -> ClusterError {
    ClusterError::Config(format!("replica TLS: {e}"))
}

impl ReplicaTls {
    /// Mutual TLS with these files; `peers` are the members until a membership is applied.
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        ca_file: PathBuf,
        peers: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        ReplicaTls {
            cert_file,
            key_file,
            ca_file,
            members: Members {
                configured: Arc::new(peers.into_iter().collect()),
                metrics: Arc::default(),
            },
            cert: Arc::default(),
        }
    }

    /// From now on, membership is what `metrics` reports.
    pub(crate) fn follow(&self, metrics: watch::Receiver<RaftMetrics>) {
        let _ = self.members.metrics.set(metrics);
    }

    fn check(&self, cluster: &str) -> MemberCheck {
        let members = self.members.clone();
        MemberCheck::new(cluster, move |id| members.contains(id))
    }

    /// This replica's certificate, loaded at the first call.
    pub fn cert(&self) -> Result<Arc<ReloadingCert>, ClusterError> {
        if let Some(cert) = self.cert.get() {
            return Ok(cert.clone());
        }
        let cert = ReloadingCert::load(&self.cert_file, &self.key_file).map_err(tls_err)?;
        Ok(self.cert.get_or_init(|| cert).clone())
    }

    /// The listener's rustls configuration.
    pub(crate) fn server(&self, cluster: &str) -> Result<ServerTls, ClusterError> {
        ServerTls::replica_with(self.cert()?, &self.ca_file, self.check(cluster)).map_err(tls_err)
    }

    /// The client's rustls configuration (for [`crate::raft::HttpTransport::mtls`]).
    pub fn client(&self, cluster: &str) -> Result<rustls::ClientConfig, ClusterError> {
        tanvrit_tls::client::replica_client_config(&self.ca_file, self.cert()?, self.check(cluster))
            .map_err(tls_err)
    }
}

/// Serves `router` over mutual TLS on `listener` until `shutdown` resolves; then stops
/// accepting and lets each connection finish the request it is answering.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: ServerTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.acceptor();
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        acceptor.clone(),
                        stream,
                        peer,
                        router.clone(),
                        closed.clone(),
                    ));
                }
                Err(error) => {
                    tracing::debug!(%error, "accepting a replica connection failed");
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
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    mut closed: watch::Receiver<bool>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on a replica connection");
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // The one line an operator needs when a peer cannot join: who, and why.
            tracing::warn!(
                %peer,
                %error,
                "refused a replica RPC connection: its certificate is not a member replica's \
                 of this cluster's CA"
            );
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "refused a replica RPC connection: no TLS handshake within 5 s");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        tower::ServiceExt::oneshot(router.clone(), request)
    });
    // hyper's defaults otherwise, as `axum::serve` has them for plain replica RPC.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // The sender outlives every connection; an error can only mean it is gone. (The
    // guard `wait_for` returns is dropped here: it must not live across an await.)
    let closing = async move {
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
        tracing::debug!(%peer, %error, "replica connection ended with an error");
    }
}
