//! Tanvrit Compute's transport security: the rustls configurations every side uses, the
//! names certificates carry, reloading a served certificate, and making certificates.
//!
//! One crypto provider everywhere: rustls's `ring`, TLS 1.3 and 1.2 only, and only its
//! AEAD suites with ephemeral key exchange (no CBC, no RSA key exchange, no SHA-1 MACs).
//!
//! # Layout
//! - [`error`]: [`TlsError`], each variant with a stable `code`.
//! - [`pem`]: reading certificates, keys and CA bundles; SHA-256 fingerprints.
//! - [`names`]: what a certificate's DNS name says about its holder ([`PeerName`]):
//!   `replica-<id>.<cluster>.tanvrit`, `agent-<node>.<cluster>.tanvrit`,
//!   `client-<name>.<cluster>.tanvrit`.
//! - [`reload`]: [`ReloadingCert`], the served certificate behind a lock, swapped on
//!   SIGHUP or when its files change; connections already open keep theirs.
//! - [`server`]: [`ServerTls`], the API's and the replica listener's rustls configs.
//! - [`client`]: [`client_config`] for the CLI, SDK and agents; [`replica_client_config`]
//!   for replica-to-replica calls.
//! - [`verify`]: the verifiers that admit only current members as replica peers.
//! - [`issue`]: the CA and the certificates `tanvrit tls` makes (rcgen).

pub mod client;
pub mod error;
pub mod issue;
pub mod names;
pub mod pem;
pub mod reload;
pub mod server;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use client::{client_config, replica_client_config, ClientIdentity};
pub use error::TlsError;
pub use names::PeerName;
pub use reload::ReloadingCert;
pub use server::{ClientAuth, ServerTls, ServerTlsConfig};
pub use verify::MemberCheck;

/// The ALPN names the API offers, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1's ALPN name.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The one crypto provider: ring, with its default suites (all AEAD with ECDHE: TLS 1.3's
/// AES-GCM and ChaCha20-Poly1305, TLS 1.2's ECDHE-ECDSA/RSA with the same ciphers).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2: nothing older is offered or accepted.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
