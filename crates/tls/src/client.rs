//! Client-side rustls configurations: the CLI, SDK and agents (the server's name checked
//! against the URL, as browsers do), and replica-to-replica calls (checked against the
//! membership).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;

use crate::pem::{load_certs, load_key, load_roots};
use crate::reload::ReloadingCert;
use crate::verify::{MemberCheck, MemberServerVerifier};
use crate::{TlsError, ALPN_HTTP1, PROTOCOL_VERSIONS};

/// A certificate a client presents, and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

fn with_identity(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = load_certs(&identity.cert_file)?;
            let key = load_key(&identity.key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError::Config(format!(
                    "{} and {}: {e}",
                    identity.cert_file.display(),
                    identity.key_file.display()
                ))
            })?
        }
    };
    // The SDK's HTTP client speaks HTTP/1.1 only.
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A client that trusts only the CAs in `ca_file` and checks the server's certificate
/// against the host of the URL it dials; presents `identity` when the server asks.
pub fn client_config(
    ca_file: &Path,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = Arc::new(load_roots(ca_file)?);
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    with_identity(builder, identity)
}

/// A replica's client for replica RPC: presents the replica's own certificate and
/// accepts only a server whose certificate chains to `ca_file` and names a member.
pub fn replica_client_config(
    ca_file: &Path,
    cert: Arc<ReloadingCert>,
    members: MemberCheck,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = Arc::new(load_roots(ca_file)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, crate::provider())
        .build()
        .map_err(|e| TlsError::Config(format!("{}: {e}", ca_file.display())))?;
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MemberServerVerifier::new(inner, members)));
    // The same reloading certificate the replica serves: a rotation covers both sides.
    let mut config = builder.with_client_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A client that trusts the usual public CAs (Mozilla's list) and presents `identity`:
/// for a server with a public certificate that asks for client certificates.
pub fn public_roots_config(identity: &ClientIdentity) -> Result<rustls::ClientConfig, TlsError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    with_identity(builder, Some(identity))
}
