//! [`ReloadingCert`]: the certificate a listener serves, swapped without a restart.
//!
//! rustls asks the resolver for a certificate at every handshake, so replacing the one
//! behind the lock changes what *new* connections get; a connection already open keeps
//! the session it negotiated. A reload that fails (a half-written file, a key that does
//! not match) keeps serving the previous certificate and says why in the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::pem::{fingerprint, load_certs, load_key};
use crate::TlsError;

/// When and how large the certificate and key files were at the last (re)load.
type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

/// A certificate and key read from two PEM files, re-read on demand.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Stamp>,
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let meta = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let (cm, cl) = meta(cert_file)?;
    let (km, kl) = meta(key_file)?;
    Some((cm, cl, km, kl))
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    CertifiedKey::from_der(chain, key, &crate::provider()).map_err(|e| {
        TlsError::Config(format!(
            "{} and {}: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })
}

impl ReloadingCert {
    /// Reads the certificate chain (leaf first) and its key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let stamped = stamp(cert_file, key_file);
        let key = load(cert_file, key_file)?;
        Ok(Arc::new(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(stamped),
        }))
    }

    /// Re-reads both files and serves them to new connections. On error the previous
    /// certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamped = stamp(&self.cert_file, &self.key_file);
        let key = load(&self.cert_file, &self.key_file)?;
        let fingerprint = key.cert.first().map(fingerprint).unwrap_or_default();
        *self.current.write() = Arc::new(key);
        *self.stamp.lock() = stamped;
        tracing::info!(
            cert_file = %self.cert_file.display(),
            sha256 = %fingerprint,
            "serving a reloaded TLS certificate to new connections"
        );
        Ok(())
    }

    /// [`reload`](Self::reload)s when either file's time or size changed since the last
    /// load; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert_file, &self.key_file);
        {
            let mut seen = self.stamp.lock();
            if now.is_none() || now == *seen {
                return Ok(false);
            }
            // Remembered even if the load below fails: a broken pair is reported once,
            // and tried again when either file changes.
            *seen = now;
        }
        self.reload().map(|()| true)
    }

    /// Checks the files every `interval` until the returned task is aborted (or the
    /// runtime stops), reloading when they change. A rotation tool writes the two files
    /// one after the other: a check between them fails on mismatched keys and keeps the
    /// old pair; the second write changes the files again and is picked up.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = this.reload_if_changed() {
                    tracing::warn!(
                        code = error.code(),
                        %error,
                        "the TLS certificate changed on disk but cannot be loaded; still \
                         serving the previous one"
                    );
                }
            }
        })
    }

    /// The SHA-256 fingerprint of the certificate served now.
    pub fn fingerprint(&self) -> String {
        self.current
            .read()
            .cert
            .first()
            .map(fingerprint)
            .unwrap_or_default()
    }
}

/// A replica presents the same certificate when it calls its peers.
impl ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}
