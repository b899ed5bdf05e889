//! API keys: create (stored hashed) and revoke.

use tanvrit_api::{ApiKeyInfo, BusinessId, KeyId, Millis, Scope};

use super::{State, StoredKey};
use crate::{validate, Effect, Outcome, Rejection};

impl State {
    pub(super) fn key_create(
        &mut self,
        id: &KeyId,
        name: &str,
        scope: Scope,
        business: Option<&BusinessId>,
        secret_hash: &str,
        at: Millis,
    ) -> Outcome {
        validate::identifier("key id", id.as_str())?;
        match (scope, business) {
            (Scope::User, None) => return Err(Rejection::invalid("user keys need a business")),
            (Scope::User, Some(b)) => validate::identifier("business", b.as_str())?,
            (_, Some(_)) => {
                return Err(Rejection::invalid("only user keys are bound to a business"))
            }
            _ => {}
        }
        if name.len() > 256 {
            return Err(Rejection::invalid("key names are at most 256 bytes"));
        }
        if secret_hash.len() < 32 {
            return Err(Rejection::invalid("secret hash too short"));
        }
        if self.data.keys.contains_key(id) || self.idx.keys_by_hash.contains_key(secret_hash) {
            return Err(Rejection::AlreadyExists {
                kind: "key".into(),
                id: id.to_string(),
            });
        }
        let info = ApiKeyInfo {
            id: id.clone(),
            name: name.to_string(),
            scope,
            business: business.cloned(),
            created_at: at,
            revoked_at: None,
        };
        self.idx
            .keys_by_hash
            .insert(secret_hash.to_string(), id.clone());
        self.data.keys.insert(
            id.clone(),
            StoredKey {
                info: info.clone(),
                secret_hash: secret_hash.to_string(),
            },
        );
        Ok(Effect::Key { key: info })
    }

    pub(super) fn key_revoke(&mut self, id: &KeyId, at: Millis) -> Outcome {
        let key = self
            .data
            .keys
            .get_mut(id)
            .ok_or_else(|| Rejection::not_found("key", id))?;
        if key.info.revoked_at.is_none() {
            key.info.revoked_at = Some(at);
        }
        Ok(Effect::Key {
            key: key.info.clone(),
        })
    }
}
