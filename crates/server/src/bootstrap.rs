//! The first admin key: from `TANVRIT_BOOTSTRAP_KEY`, or generated into
//! `<data-dir>/admin.key`. Idempotent: once the state holds an active admin key,
//! nothing happens.

use std::io::Write;
use std::path::{Path, PathBuf};

use tanvrit_api::{Index, KeyId, Scope};
use tanvrit_cluster::ClusterService;
use tanvrit_state::{Command, Effect, Rejection};

use crate::app::now_ms;
use crate::auth::{generate_secret, hash_secret, key_id_of_secret, new_key_id};
use crate::error::ServerError;

/// The file a generated admin secret is written to, inside the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The shortest `TANVRIT_BOOTSTRAP_KEY` accepted.
pub const MIN_BOOTSTRAP_KEY_CHARS: usize = 16;

/// What [`ensure_bootstrap_admin`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// An active admin key already existed; nothing was written.
    AlreadyPresent,
    /// The admin key given in `TANVRIT_BOOTSTRAP_KEY` was created.
    FromEnv {
        /// Its id.
        key: KeyId,
        /// Log index of the write.
        index: Index,
    },
    /// A generated admin key was created; its secret is in `path` (mode 0600).
    Generated {
        /// Its id.
        key: KeyId,
        /// Where the secret is.
        path: PathBuf,
        /// Log index of the write.
        index: Index,
    },
}

/// Makes sure the state holds an active admin key. With `bootstrap_key` (16+ visible
/// characters) that secret becomes the admin key; without it a secret is generated and
/// written to `<data_dir>/admin.key`, or the one already there (from a run that stopped
/// before its write was applied) is used. The secret itself is never logged or returned.
pub async fn ensure_bootstrap_admin(
    cluster: &dyn ClusterService,
    data_dir: &Path,
    bootstrap_key: Option<&str>,
) -> Result<BootstrapOutcome, ServerError> {
    if has_active_admin(cluster) {
        return Ok(BootstrapOutcome::AlreadyPresent);
    }
    match bootstrap_key {
        Some(secret) => {
            let secret = check_bootstrap_key(secret)?;
            let key = new_key_id();
            match create_admin(cluster, &key, secret).await? {
                Some(index) => Ok(BootstrapOutcome::FromEnv { key, index }),
                None => Ok(BootstrapOutcome::AlreadyPresent),
            }
        }
        None => {
            let path = data_dir.join(ADMIN_KEY_FILE);
            let secret = read_or_generate(data_dir, &path)?;
            let key = key_id_of_secret(&secret)
                .ok_or_else(|| ServerError::AdminKeyFileMalformed { path: path.clone() })?;
            match create_admin(cluster, &key, &secret).await? {
                Some(index) => Ok(BootstrapOutcome::Generated { key, path, index }),
                None => Ok(BootstrapOutcome::AlreadyPresent),
            }
        }
    }
}

fn has_active_admin(cluster: &dyn ClusterService) -> bool {
    cluster.reader().read(|state| {
        state
            .keys()
            .any(|k| k.info.scope == Scope::Admin && k.info.revoked_at.is_none())
    })
}

/// The bootstrap secret as clients will send it (surrounding whitespace dropped).
fn check_bootstrap_key(secret: &str) -> Result<&str, ServerError> {
    let secret = secret.trim();
    if secret.chars().count() < MIN_BOOTSTRAP_KEY_CHARS {
        return Err(ServerError::BootstrapKeyInvalid(format!(
            "it must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters"
        )));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServerError::BootstrapKeyInvalid(
            "it must be visible ASCII without spaces, to travel in an HTTP header".into(),
        ));
    }
    Ok(secret)
}

/// Creates the admin key. `None` when a concurrent bootstrap (another replica starting
/// with the same secret) created it first.
async fn create_admin(
    cluster: &dyn ClusterService,
    key: &KeyId,
    secret: &str,
) -> Result<Option<Index>, ServerError> {
    let secret_hash = hash_secret(secret);
    let existing = cluster
        .reader()
        .read(|state| state.key_by_hash(&secret_hash).map(|k| k.info.clone()));
    if let Some(existing) = existing {
        let why = if existing.scope != Scope::Admin {
            "it is not an admin key"
        } else {
            "it was revoked"
        };
        return Err(ServerError::BootstrapKeyUnusable {
            key: existing.id.to_string(),
            why,
        });
    }
    let receipt = cluster
        .submit_write(Command::KeyCreate {
            key: key.clone(),
            name: "bootstrap admin".into(),
            scope: Scope::Admin,
            business: None,
            secret_hash,
            node: None,
            at: now_ms(),
        })
        .await?;
    match receipt.outcome {
        Ok(Effect::Key { .. }) => {
            tracing::info!(key = %key, index = receipt.index, "bootstrap admin key created");
            Ok(Some(receipt.index))
        }
        Ok(other) => Err(ServerError::Cluster(
            tanvrit_cluster::ClusterError::Internal(format!(
                "unexpected effect for a key: {other:?}"
            )),
        )),
        Err(Rejection::AlreadyExists { .. }) if has_active_admin(cluster) => Ok(None),
        Err(rejection) => Err(ServerError::Rejected(rejection)),
    }
}

/// The secret in `path`, or a new one written there first (through a temporary file
/// and a rename, so a crash never leaves half a secret behind).
fn read_or_generate(data_dir: &Path, path: &Path) -> Result<String, ServerError> {
    let io = |source| ServerError::AdminKeyFile {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    // Owner only, like the store it sits beside.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(data_dir)
        .map_err(io)?;
    let secret = generate_secret(&new_key_id());
    let temporary = path.with_extension("key.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(io)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io)?;
    // Make the rename itself durable; a failure here only weakens crash safety.
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_keys_must_be_long_visible_ascii() {
        assert_eq!(
            check_bootstrap_key("  0123456789abcdef\n").unwrap(),
            "0123456789abcdef"
        );
        for bad in [
            "short",
            "0123456789abcde",
            "0123456789 abcdef",
            "0123456789abcdéf",
        ] {
            let error = check_bootstrap_key(bad).unwrap_err();
            assert_eq!(error.code(), "bootstrap_key_invalid", "{bad}");
        }
    }

    #[test]
    fn a_generated_admin_secret_is_written_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let path = data_dir.join(ADMIN_KEY_FILE);
        let first = read_or_generate(&data_dir, &path).unwrap();
        assert!(key_id_of_secret(&first).is_some());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = read_or_generate(&data_dir, &path).unwrap();
        assert_eq!(again, first, "an existing file is reused, not replaced");
        assert!(!path.with_extension("key.tmp").exists());
    }
}
