//! How a replica reaches its peers: the [`RaftTransport`] trait, its HTTP implementation
//! ([`HttpTransport`], reqwest with short timeouts), and openraft's network traits on
//! top of any transport.
//!
//! Error mapping (what openraft does with each): a peer that refused the connection, is
//! not running, or rejected our secret is `Unreachable` (openraft backs off before
//! retrying); a timeout or a broken exchange is `Network` (retried on the next
//! heartbeat); an error the peer's Raft returned is `RemoteError`; a 413 is
//! `PayloadTooLarge` (openraft retries with fewer entries).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use parking_lot::Mutex;

use crate::raft::rpc::{ReplicaStatus, Rpc, RpcKind, RpcReply};
use crate::raft::types::{NodeId, ReplicaNode, TypeConfig};
use crate::ClusterError;

/// The header every replica RPC carries the cluster secret in.
pub const SECRET_HEADER: &str = "x-tanvrit-cluster-secret";
/// The header naming the calling replica (for logs).
pub const FROM_HEADER: &str = "x-tanvrit-from";

/// Why a call to a peer failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (connection refused, not running): the request was
    /// not delivered.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer rejected the cluster secret.
    #[error("peer rejected the cluster secret")]
    Unauthorized,
    /// No answer within the deadline: the request may or may not have been handled.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The exchange broke (or the answer did not decode): the request may have been handled.
    #[error("network error: {0}")]
    Network(String),
    /// The peer refused the body as too large.
    #[error("request too large for the peer")]
    TooLarge,
}

impl TransportError {
    /// True when the request provably never reached the peer's handler.
    pub fn not_delivered(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable(_) | TransportError::Unauthorized
        )
    }
}

/// Carries replica RPCs. Implemented over HTTP here, and in-process (with fault
/// injection) by `tanvrit-testkit`.
#[async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `rpc` from replica `from` to replica `to` at `addr`, waiting at most
    /// `timeout` for the answer.
    async fn call(
        &self,
        from: NodeId,
        to: NodeId,
        addr: &str,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError>;
}

/// Replica RPC over HTTP/1.1 with reqwest: `POST http://<addr>/raft/v1/<kind>`, or
/// `https://` with mutual TLS.
pub struct HttpTransport {
    client: reqwest::Client,
    secret: String,
    scheme: &'static str,
}

impl HttpTransport {
    /// A client that sends `secret` with every request and gives up connecting after
    /// `connect_timeout`.
    pub fn new(
        secret: impl Into<String>,
        connect_timeout: Duration,
    ) -> Result<HttpTransport, ClusterError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            // Replica addresses are direct; an environment proxy must not intercept them.
            .no_proxy()
            .build()
            .map_err(|e| ClusterError::Internal(format!("cannot build the RPC client: {e}")))?;
        Ok(HttpTransport {
            client,
            secret: secret.into(),
            scheme: "http",
        })
    }

    /// A client over mutual TLS (`tls`, for a replica of `cluster`): it presents the
    /// replica's certificate and accepts only member replicas; no secret is sent.
    pub fn mtls(
        tls: &crate::raft::ReplicaTls,
        cluster: &str,
        connect_timeout: Duration,
    ) -> Result<HttpTransport, ClusterError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .use_preconfigured_tls(tls.client(cluster)?)
            .build()
            .map_err(|e| ClusterError::Internal(format!("cannot build the RPC client: {e}")))?;
        Ok(HttpTransport {
            client,
            secret: String::new(),
            scheme: "https",
        })
    }

    /// The transport `config` asks for: mutual TLS when it has `tls`, else the secret.
    pub fn for_config(
        config: &crate::raft::RaftClusterConfig,
    ) -> Result<HttpTransport, ClusterError> {
        match &config.tls {
            Some(tls) => HttpTransport::mtls(tls, &config.cluster_id, config.rpc_timeout),
            None => HttpTransport::new(config.cluster_secret.clone(), config.rpc_timeout),
        }
    }
}

fn classify(err: reqwest::Error, timeout: Duration) -> TransportError {
    if err.is_connect() {
        TransportError::Unreachable(err.to_string())
    } else if err.is_timeout() {
        TransportError::Timeout(timeout)
    } else {
        TransportError::Network(err.to_string())
    }
}

#[async_trait]
impl RaftTransport for HttpTransport {
    async fn call(
        &self,
        from: NodeId,
        _to: NodeId,
        addr: &str,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError> {
        let kind = rpc.kind();
        let body = rpc
            .encode()
            .map_err(|e| TransportError::Network(e.to_string()))?;
        let mut request = self.client.post(format!(
            "{}://{addr}/raft/v1/{}",
            self.scheme,
            kind.segment()
        ));
        if !self.secret.is_empty() {
            request = request.header(SECRET_HEADER, &self.secret);
        }
        let response = request
            .header(FROM_HEADER, from.to_string())
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| classify(e, timeout))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(TransportError::Unauthorized);
        }
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(TransportError::TooLarge);
        }
        let bytes = response.bytes().await.map_err(|e| classify(e, timeout))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(TransportError::Network(format!("HTTP {status}: {text}")));
        }
        RpcReply::decode(kind, &bytes).map_err(|e| TransportError::Network(e.to_string()))
    }
}

/// What this replica last heard from each peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerView {
    /// The last successful exchange of any kind.
    pub last_ok: Option<Instant>,
    /// Whether the latest status probe succeeded.
    pub probe_ok: bool,
    /// The peer's status from the latest successful probe.
    pub status: Option<ReplicaStatus>,
}

/// Per-peer contact records, shared by the network and the prober.
#[derive(Default)]
pub(crate) struct Contacts {
    peers: Mutex<BTreeMap<NodeId, PeerView>>,
}

impl Contacts {
    pub fn heard_from(&self, id: NodeId) {
        self.peers.lock().entry(id).or_default().last_ok = Some(Instant::now());
    }

    pub fn probed(&self, id: NodeId, status: Option<ReplicaStatus>) {
        let mut peers = self.peers.lock();
        let view = peers.entry(id).or_default();
        view.probe_ok = status.is_some();
        if let Some(status) = status {
            view.last_ok = Some(Instant::now());
            view.status = Some(status);
        }
    }

    pub fn get(&self, id: NodeId) -> PeerView {
        self.peers.lock().get(&id).cloned().unwrap_or_default()
    }
}

/// openraft's network factory: one [`PeerNetwork`] per target, all on one transport.
pub(crate) struct NetworkFactory {
    pub from: NodeId,
    pub transport: Arc<dyn RaftTransport>,
    pub contacts: Arc<Contacts>,
    pub backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &ReplicaNode) -> PeerNetwork {
        PeerNetwork {
            from: self.from,
            target,
            addr: node.raft_addr.clone(),
            transport: self.transport.clone(),
            contacts: self.contacts.clone(),
            backoff: self.backoff,
        }
    }
}

/// openraft's client for one peer.
pub(crate) struct PeerNetwork {
    from: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
    contacts: Arc<Contacts>,
    backoff: Duration,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>;

fn transport_error<E: std::error::Error>(err: TransportError, entries: usize) -> RpcErr<E> {
    match err {
        TransportError::Unreachable(_) | TransportError::Unauthorized => {
            RPCError::Unreachable(Unreachable::new(&err))
        }
        TransportError::TooLarge => RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
            (entries as u64 / 2).max(1),
        )),
        TransportError::Timeout(_) | TransportError::Network(_) => {
            RPCError::Network(NetworkError::new(&err))
        }
    }
}

fn wrong_reply<E: std::error::Error>(kind: RpcKind, got: &RpcReply) -> RpcErr<E> {
    let err = TransportError::Network(format!(
        "a {kind:?} call was answered with a {:?} reply",
        got.kind()
    ));
    RPCError::Network(NetworkError::new(&err))
}

impl PeerNetwork {
    async fn call(&self, rpc: Rpc, timeout: Duration) -> Result<RpcReply, TransportError> {
        let reply = self
            .transport
            .call(self.from, self.target, &self.addr, rpc, timeout)
            .await?;
        self.contacts.heard_from(self.target);
        Ok(reply)
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let entries = rpc.entries.len();
        match self.call(Rpc::AppendEntries(rpc), option.hard_ttl()).await {
            Ok(RpcReply::AppendEntries(Ok(resp))) => Ok(resp),
            Ok(RpcReply::AppendEntries(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(wrong_reply(RpcKind::AppendEntries, &other)),
            Err(err) => Err(transport_error(err, entries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .call(Rpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RpcReply::InstallSnapshot(Ok(resp))) => Ok(resp),
            Ok(RpcReply::InstallSnapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(wrong_reply(RpcKind::InstallSnapshot, &other)),
            Err(err) => Err(transport_error(err, 1)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(RpcReply::Vote(Ok(resp))) => Ok(resp),
            Ok(RpcReply::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(wrong_reply(RpcKind::Vote, &other)),
            Err(err) => Err(transport_error(err, 1)),
        }
    }

    /// A down peer is retried every `backoff` (openraft's default is a fixed 500 ms,
    /// too slow for short heartbeats and too fast for nothing).
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
