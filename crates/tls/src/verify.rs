//! Verifiers for replica RPC: a peer is admitted only if its certificate chains to the
//! cluster CA *and* names a replica of the current membership.
//!
//! A certificate of the same CA that names an agent or a client, or a replica that is no
//! longer (or not yet) a member, is refused during the handshake with an error that says
//! which names it carried, so the refusing replica's log tells an operator why.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::names::PeerName;
use crate::pem::dns_names;

/// Which replica ids are members now, in which cluster.
#[derive(Clone)]
pub struct MemberCheck {
    cluster: String,
    is_member: Arc<dyn Fn(u64) -> bool + Send + Sync>,
}

impl fmt::Debug for MemberCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberCheck")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl MemberCheck {
    /// Members of `cluster` are the ids `is_member` accepts (asked at every handshake).
    pub fn new(
        cluster: impl Into<String>,
        is_member: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> Self {
        MemberCheck {
            cluster: cluster.into(),
            is_member: Arc::new(is_member),
        }
    }

    /// The member replica `cert` names (its DNS name), or why it is refused.
    pub fn admit(&self, cert: &CertificateDer<'_>) -> Result<(u64, String), rustls::Error> {
        let names = dns_names(cert);
        for name in &names {
            if let Some(PeerName::Replica(id)) = PeerName::parse(name, &self.cluster) {
                if (self.is_member)(id) {
                    return Ok((id, name.clone()));
                }
                return Err(rustls::Error::General(format!(
                    "the certificate names replica {id} ({name}), which is not a member of \
                     cluster `{}`",
                    self.cluster
                )));
            }
        }
        Err(rustls::Error::General(format!(
            "the certificate names {}, not a replica of cluster `{}` \
             (replica-<id>.{}.tanvrit)",
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            },
            self.cluster,
            self.cluster
        )))
    }
}

/// The replica listener's verifier: the cluster CA's chain check, then [`MemberCheck`].
#[derive(Debug)]
pub(crate) struct MemberClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    members: MemberCheck,
}

impl MemberClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, members: MemberCheck) -> Self {
        MemberClientVerifier { inner, members }
    }
}

impl ClientCertVerifier for MemberClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.members.admit(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The replica client's verifier: replicas are dialled by address, so the address is
/// not what is checked; the certificate must chain to the cluster CA and be valid for
/// the member replica name it carries (Nomad's `verify_server_hostname`).
#[derive(Debug)]
pub(crate) struct MemberServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    members: MemberCheck,
}

impl MemberServerVerifier {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>, members: MemberCheck) -> Self {
        MemberServerVerifier { inner, members }
    }
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, name) = self.members.admit(end_entity)?;
        let name = ServerName::try_from(name)
            .map_err(|e| rustls::Error::General(format!("bad replica name: {e}")))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
