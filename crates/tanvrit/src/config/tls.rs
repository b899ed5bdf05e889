//! `[compute.tls]`: the API over TLS, optional client certificates, and mutual TLS
//! between replicas.
//!
//! ```toml
//! [compute.tls]
//! cert_file = "/etc/tanvrit/replica-1.pem"       # TANVRIT_TLS_CERT_FILE
//! key_file = "/etc/tanvrit/replica-1-key.pem"    # TANVRIT_TLS_KEY_FILE
//! ca_file = "/etc/tanvrit/ca.pem"                # TANVRIT_TLS_CA_FILE: replica mTLS
//! client_ca_file = "/etc/tanvrit/ca.pem"         # TANVRIT_TLS_CLIENT_CA_FILE
//! client_auth = "optional"                       # TANVRIT_TLS_CLIENT_AUTH: or "required"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tanvrit_tls::{ClientAuth, ServerTlsConfig};

/// `[compute.tls]`. With `cert_file` and `key_file` the API is served over TLS only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The replica's certificate chain, PEM, leaf first (`TANVRIT_TLS_CERT_FILE`);
    /// re-read on SIGHUP and when the file changes.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (`TANVRIT_TLS_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// The cluster CA (`TANVRIT_TLS_CA_FILE`). In Raft mode, with `cert_file` and
    /// `key_file`, replica RPC is mutual TLS: each side presents its
    /// `replica-<id>.<cluster_id>.tanvrit` certificate and admits only members' ones;
    /// no cluster secret is needed.
    pub ca_file: Option<PathBuf>,
    /// CA whose client certificates the API accepts (`TANVRIT_TLS_CLIENT_CA_FILE`):
    /// `client-<name>.<cluster_id>.tanvrit` acts as admin, or as user of the business its
    /// `tanvrit:business:<id>` URI name gives; API keys keep working alongside.
    pub client_ca_file: Option<PathBuf>,
    /// `optional` (default) or `required` (`TANVRIT_TLS_CLIENT_AUTH`): with `required`
    /// every API client, agents included, must present a certificate of
    /// `client_ca_file`, and the handshake fails for anyone else.
    pub client_auth: ClientAuthSetting,
}

/// `client_auth`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthSetting {
    /// Certificates are optional.
    #[default]
    Optional,
    /// Certificates are required.
    Required,
}

impl TlsSection {
    /// The API listener's TLS, when a certificate is configured; an error when only one
    /// of the certificate and key is.
    pub fn api(&self) -> Result<Option<ServerTlsConfig>, String> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => {
                if self.client_ca_file.is_some() {
                    return Err("compute.tls.client_ca_file needs cert_file and key_file".into());
                }
                Ok(None)
            }
            (Some(cert_file), Some(key_file)) => Ok(Some(ServerTlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: self.client_ca_file.clone(),
                client_auth: match self.client_auth {
                    ClientAuthSetting::Optional => ClientAuth::Optional,
                    ClientAuthSetting::Required => ClientAuth::Required,
                },
            })),
            _ => Err(
                "compute.tls needs both cert_file (TANVRIT_TLS_CERT_FILE) and key_file \
                 (TANVRIT_TLS_KEY_FILE)"
                    .into(),
            ),
        }
    }

    /// Whether replica RPC runs over mutual TLS.
    pub fn replica_mtls(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some() && self.ca_file.is_some()
    }
}

/// `TANVRIT_TLS_*` variables (text, taken verbatim) and their keys.
pub(super) const ENV_TEXT: &[(&str, &str)] = &[
    ("TLS_CERT_FILE", "compute.tls.cert_file"),
    ("TLS_KEY_FILE", "compute.tls.key_file"),
    ("TLS_CA_FILE", "compute.tls.ca_file"),
    ("TLS_CLIENT_CA_FILE", "compute.tls.client_ca_file"),
    ("TLS_CLIENT_AUTH", "compute.tls.client_auth"),
];

#[cfg(test)]
// figment's Jail closures return its large error type; tests only.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::{Config, ConfigFlags};
    use super::*;
    use figment::Jail;

    #[test]
    fn tls_comes_from_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.compute.tls.api(), Ok(None), "plain HTTP by default");
            jail.create_file(
                "t.toml",
                "[compute.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_auth = \"required\"\n",
            )?;
            jail.set_env("TANVRIT_TLS_CLIENT_CA_FILE", "ca.pem");
            let config = Config::load(&ConfigFlags {
                config: Some("t.toml".into()),
                ..ConfigFlags::default()
            })
            .map_err(|e| e.to_string())?;
            let api = config.compute.tls.api().unwrap().unwrap();
            assert_eq!(api.cert_file, PathBuf::from("c.pem"));
            assert_eq!(api.client_ca_file, Some(PathBuf::from("ca.pem")));
            assert_eq!(api.client_auth, ClientAuth::Required);
            assert!(!config.compute.tls.replica_mtls(), "no cluster CA");
            Ok(())
        });
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let half = TlsSection {
            cert_file: Some("c.pem".into()),
            ..TlsSection::default()
        };
        assert!(half.api().unwrap_err().contains("both cert_file"));
    }
}
