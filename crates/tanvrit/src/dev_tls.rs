//! `tanvrit dev`'s TLS: a throwaway CA and replica certificates in
//! `<data-dir>/tls/`, made at the first start and reused after, so `dev` (and
//! `dev --replicas N`) runs the API over TLS and replica RPC over mutual TLS like a
//! real cluster. `--insecure` turns it off.

use std::path::{Path, PathBuf};

use tanvrit_tls::issue::LeafRole;

use crate::commands::tls::{create_ca, create_cert};
use crate::config::Config;

/// The directory, inside the data directory, that holds the dev CA and certificates.
pub const DEV_TLS_DIR: &str = "tls";

/// The dev CA's certificate file for a data directory.
pub fn dev_ca_file(data_dir: &Path) -> PathBuf {
    data_dir.join(DEV_TLS_DIR).join("ca.pem")
}

/// Gives `config` (replica `id`) the dev CA's TLS, making the CA and the certificate
/// under `base_dir/tls` if they are not there yet. A configuration that names its own
/// certificate is left alone.
pub fn apply(config: &mut Config, base_dir: &Path, id: u64) -> anyhow::Result<()> {
    if config.compute.tls.cert_file.is_some() {
        return Ok(());
    }
    let dir = base_dir.join(DEV_TLS_DIR);
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    if !ca.exists() {
        create_ca(&dir, &config.cluster_id, 365)?;
    }
    let cert = dir.join(format!("replica-{id}.pem"));
    let key = dir.join(format!("replica-{id}-key.pem"));
    if !cert.exists() {
        create_cert(
            &dir,
            &ca,
            &ca_key,
            &config.cluster_id,
            &LeafRole::Replica(id),
            &[],
            365,
        )?;
    }
    config.compute.tls.cert_file = Some(cert);
    config.compute.tls.key_file = Some(key);
    config.compute.tls.ca_file = Some(ca);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_ca_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        apply(&mut config, dir.path(), 1).unwrap();
        let ca = std::fs::read(dev_ca_file(dir.path())).unwrap();
        assert!(config.compute.tls.replica_mtls());
        let mut again = Config::default();
        apply(&mut again, dir.path(), 1).unwrap();
        apply(&mut again.clone(), dir.path(), 2).unwrap();
        assert_eq!(std::fs::read(dev_ca_file(dir.path())).unwrap(), ca);
        assert_eq!(again.compute.tls, config.compute.tls);
    }
}
