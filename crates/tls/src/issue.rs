//! Making certificates (rcgen): the cluster CA, and leaf certificates for replicas,
//! agents and API clients, all ECDSA P-256.
//!
//! The CA's subject is derived from the cluster id and the CA's own public key, so a leaf
//! can be signed from the CA's key without parsing the CA certificate, and two CAs never
//! share a subject (a verifier then tells "another CA" from "a forged signature"). The
//! leaf's issuer is checked against the CA certificate's subject, which catches a CA
//! made for another cluster id or a certificate and key that do not belong together.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::names::{check_cluster, check_label, PeerName, BUSINESS_URI_PREFIX};
use crate::pem::fingerprint;
use crate::TlsError;

/// Default lifetime of a CA: 5 years.
pub const CA_DAYS: u32 = 5 * 365;
/// Default lifetime of a replica's, agent's or client's certificate: 1 year.
pub const CERT_DAYS: u32 = 365;

/// What a leaf certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafRole {
    /// A replica (Raft id): serves the API and replica RPC, and calls its peers.
    Replica(u64),
    /// An agent (node name): a client of the API.
    Agent(String),
    /// An API client; with a business it acts as that business's `user`, else `admin`.
    Client {
        /// Its name.
        name: String,
        /// The business it acts for.
        business: Option<String>,
    },
}

/// A certificate and key, in PEM, with what to print about it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// SHA-256 of the certificate's DER.
    pub fingerprint: String,
    /// The DNS and IP names it carries.
    pub names: Vec<String>,
    /// When it expires.
    pub not_after: OffsetDateTime,
}

fn issue_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Issue(e.to_string())
}

fn ca_params(cluster: &str, key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let id: String = Sha256::digest(key.public_key_raw())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    dn.push(DnType::OrganizationName, "Tanvrit Compute");
    dn.push(
        DnType::CommonName,
        format!("Tanvrit Compute CA {cluster} {id}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, days: u32) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind the one that made it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    params.not_after
}

/// A new CA for `cluster`, valid `days`.
pub fn create_ca(cluster: &str, days: u32) -> Result<Issued, TlsError> {
    check_cluster(cluster)?;
    let key = KeyPair::generate().map_err(issue_err)?;
    let mut params = ca_params(cluster, &key);
    let not_after = validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(issue_err)?;
    Ok(Issued {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        names: Vec::new(),
        not_after,
    })
}

/// A leaf certificate for `role` in `cluster`, signed by the CA (`ca_cert_pem`,
/// `ca_key_pem`), valid `days`. `extra_names` (host names or IP addresses) are added so
/// clients dialling the holder by them can check it: a replica's API address, say.
pub fn create_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cluster: &str,
    role: &LeafRole,
    extra_names: &[String],
    days: u32,
) -> Result<Issued, TlsError> {
    check_cluster(cluster)?;
    let (peer, usages) = match role {
        LeafRole::Replica(id) => (
            PeerName::Replica(*id),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ),
        LeafRole::Agent(node) => {
            check_label("node", node)?;
            (
                PeerName::Agent(node.clone()),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            )
        }
        LeafRole::Client { name, .. } => {
            check_label("client name", name)?;
            (
                PeerName::Client(name.clone()),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            )
        }
    };
    let dns = peer.dns_name(cluster);
    let mut names = vec![dns.clone()];
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names.clone()).map_err(issue_err)?;
    if let LeafRole::Client {
        business: Some(business),
        ..
    } = role
    {
        let uri = format!("{BUSINESS_URI_PREFIX}{business}");
        params.subject_alt_names.push(SanType::URI(
            uri.as_str().try_into().map_err(|_| {
                TlsError::InvalidName(format!("business `{business}` is not ASCII"))
            })?,
        ));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let not_after = validity(&mut params, days);

    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| TlsError::Issue(format!("the CA key does not read: {e}")))?;
    let issuer = Issuer::new(ca_params(cluster, &ca_key), ca_key);
    let key = KeyPair::generate().map_err(issue_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
    check_issuer(ca_cert_pem, cert.der(), cluster)?;
    Ok(Issued {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        names,
        not_after,
    })
}

/// The new leaf must name the given CA certificate as its issuer.
fn check_issuer(
    ca_cert_pem: &str,
    leaf: &CertificateDer<'_>,
    cluster: &str,
) -> Result<(), TlsError> {
    let ca = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| TlsError::Issue(format!("the CA certificate does not read: {e}")))?;
    let ca = webpki::EndEntityCert::try_from(&ca)
        .map_err(|e| TlsError::Issue(format!("the CA certificate does not parse: {e}")))?;
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(issue_err)?;
    if ca.subject() != leaf.issuer() {
        return Err(TlsError::Issue(format!(
            "the CA was not made for cluster `{cluster}` (give the cluster id it was \
             made with), or its certificate and key do not belong together"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_carries_its_role_name_and_extra_names_and_chains_to_its_ca() {
        let ca = create_ca("prod", 30).unwrap();
        let leaf = create_cert(
            &ca.cert_pem,
            &ca.key_pem,
            "prod",
            &LeafRole::Replica(2),
            &["localhost".into(), "127.0.0.1".into()],
            10,
        )
        .unwrap();
        assert_eq!(leaf.names[0], "replica-2.prod.tanvrit");
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(
            crate::pem::dns_names(&der),
            vec!["replica-2.prod.tanvrit", "localhost"]
        );
        assert_eq!(leaf.fingerprint, fingerprint(&der));
        assert_eq!(leaf.fingerprint.len(), 32 * 3 - 1);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls_pki_types::UnixTime::now();
        for name in ["replica-2.prod.tanvrit", "localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&der, &[], &name, &[], now)
                .unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("replica-3.prod.tanvrit").unwrap();
        assert!(verifier
            .verify_server_cert(&der, &[], &other, &[], now)
            .is_err());
    }

    #[test]
    fn a_client_of_a_business_carries_it_as_a_uri_name() {
        let ca = create_ca("prod", 30).unwrap();
        let role = LeafRole::Client {
            name: "billing".into(),
            business: Some("acme".into()),
        };
        let leaf = create_cert(&ca.cert_pem, &ca.key_pem, "prod", &role, &[], 10).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(crate::pem::uri_names(&der), vec!["tanvrit:business:acme"]);
    }

    #[test]
    fn two_cas_of_one_cluster_have_different_subjects() {
        let subject = |ca: &Issued| {
            let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
            webpki::EndEntityCert::try_from(&der)
                .unwrap()
                .subject()
                .to_vec()
        };
        let (a, b) = (
            create_ca("prod", 30).unwrap(),
            create_ca("prod", 30).unwrap(),
        );
        assert_ne!(subject(&a), subject(&b));
        // A leaf of one is refused by a verifier that trusts the other as "unknown
        // issuer", not as a bad signature.
        let leaf = create_cert(
            &a.cert_pem,
            &a.key_pem,
            "prod",
            &LeafRole::Replica(1),
            &[],
            1,
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(b.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls_pki_types::ServerName::try_from("replica-1.prod.tanvrit").unwrap();
        let err = verifier
            .verify_server_cert(&der, &[], &name, &[], rustls_pki_types::UnixTime::now())
            .unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn a_ca_made_for_another_cluster_is_refused() {
        let ca = create_ca("prod", 30).unwrap();
        let err = create_cert(
            &ca.cert_pem,
            &ca.key_pem,
            "staging",
            &LeafRole::Agent("n1".into()),
            &[],
            10,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not made for cluster `staging`"),
            "{err}"
        );
    }
}
