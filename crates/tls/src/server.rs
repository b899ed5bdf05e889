//! [`ServerTls`]: the rustls configuration of a listener (the API, or replica RPC).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;

use crate::pem::load_roots;
use crate::reload::ReloadingCert;
use crate::verify::{MemberCheck, MemberClientVerifier};
use crate::{TlsError, ALPN_H2, ALPN_HTTP1, PROTOCOL_VERSIONS};

/// Whether clients must present a certificate signed by the client CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client may present one (it then authenticates as that certificate's name) or
    /// not (it then needs an API key). A certificate from another CA fails the handshake.
    #[default]
    Optional,
    /// Every client must present one: only machines holding a certificate of the CA get
    /// as far as HTTP (agents of another CA cannot register).
    Required,
}

/// Where a listener's certificate, key and client CA are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf.
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to; `None`: no client
    /// certificates are asked for.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (only with `client_ca_file`).
    pub client_auth: ClientAuth,
}

/// A listener's TLS: the rustls config and the certificate it serves (to reload it).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// Handed to `tokio_rustls::TlsAcceptor`.
    pub config: Arc<rustls::ServerConfig>,
    /// The served certificate; [`ReloadingCert::reload`] swaps it.
    pub cert: Arc<ReloadingCert>,
}

impl ServerTls {
    /// The public API's TLS: HTTP/2 and HTTP/1.1 by ALPN, client certificates as
    /// `config` says.
    pub fn api(config: &ServerTlsConfig) -> Result<ServerTls, TlsError> {
        let cert = ReloadingCert::load(&config.cert_file, &config.key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &config.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, crate::provider());
                let verifier = match config.client_auth {
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                    ClientAuth::Required => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(ServerTls {
            config: Arc::new(server),
            cert,
        })
    }

    /// Replica RPC's TLS: mutual, with the cluster CA; a client is admitted only if its
    /// certificate names a replica `members` accepts (checked at every handshake, so a
    /// removed replica is refused from its next connection on). HTTP/1.1 only.
    pub fn replica_with(
        cert: Arc<ReloadingCert>,
        ca_file: &std::path::Path,
        members: MemberCheck,
    ) -> Result<ServerTls, TlsError> {
        let roots = Arc::new(load_roots(ca_file)?);
        let inner = WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
            .build()
            .map_err(|e| TlsError::Config(format!("{}: {e}", ca_file.display())))?;
        let verifier = Arc::new(MemberClientVerifier::new(inner, members));
        let mut server = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(ServerTls {
            config: Arc::new(server),
            cert,
        })
    }

    /// A `tokio_rustls` acceptor for this configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}
