//! API keys: create (stored hashed), revoke, and bind an agent key to its node.

use tanvrit_api::{ApiKeyInfo, BusinessId, KeyId, Millis, NodeId, Scope};

use super::{State, StoredKey};
use crate::{validate, Effect, Outcome, Rejection};

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn key_create(
        &mut self,
        id: &KeyId,
        name: &str,
        scope: Scope,
        business: Option<&BusinessId>,
        node: Option<&NodeId>,
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
        match (scope, node) {
            (Scope::Agent, Some(node)) => validate::identifier("node id", node.as_str())?,
            (_, Some(_)) => return Err(Rejection::invalid("only agent keys are bound to a node")),
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
            node: node.cloned(),
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

    /// Enrollment: binds an active, unbound agent key to `node`. Binding it again to the
    /// same node changes nothing; another node, or a node another active key is bound
    /// to, is refused.
    pub(super) fn key_bind(&mut self, id: &KeyId, node: &NodeId) -> Outcome {
        validate::identifier("node id", node.as_str())?;
        let key = self
            .data
            .keys
            .get(id)
            .ok_or_else(|| Rejection::not_found("key", id))?;
        if key.info.scope != Scope::Agent || key.info.revoked_at.is_some() {
            let from = if key.info.revoked_at.is_some() {
                "revoked"
            } else {
                key.info.scope.as_str()
            };
            return Err(Rejection::illegal("key", id, from, "be bound to a node"));
        }
        match &key.info.node {
            Some(bound) if bound == node => {
                return Ok(Effect::Key {
                    key: key.info.clone(),
                })
            }
            Some(bound) => {
                return Err(Rejection::illegal(
                    "key",
                    id,
                    &format!("bound to node `{}`", validate::short(bound.as_str())),
                    "be bound to another node",
                ))
            }
            None => {}
        }
        if let Some(other) = self.node_key(node) {
            return Err(Rejection::AlreadyExists {
                kind: "node binding".into(),
                id: format!("{node} (key {})", other.info.id),
            });
        }
        let key = self
            .data
            .keys
            .get_mut(id)
            .ok_or_else(|| Rejection::not_found("key", id))?;
        key.info.node = Some(node.clone());
        Ok(Effect::Key {
            key: key.info.clone(),
        })
    }

    /// An active key bound to `node`, if there is one (the oldest by id). Keys are few
    /// and this runs only when a node enrolls, so a scan is enough.
    pub fn node_key(&self, node: &NodeId) -> Option<&StoredKey> {
        self.data
            .keys
            .values()
            .find(|key| key.info.revoked_at.is_none() && key.info.node.as_ref() == Some(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn agent_key(state: &mut State, id: &str, node: Option<&str>) {
        let index = state.applied_index() + 1;
        let command = Command::KeyCreate {
            key: KeyId::from(id),
            name: id.into(),
            scope: Scope::Agent,
            business: None,
            secret_hash: format!("{id:0>64}"),
            node: node.map(NodeId::from),
            at: 1,
        };
        state.apply(index, &command).expect("created");
    }

    fn bind(state: &mut State, key: &str, node: &str) -> Outcome {
        let index = state.applied_index() + 1;
        let command = Command::KeyBind {
            key: KeyId::from(key),
            node: NodeId::from(node),
            at: 2,
        };
        state.apply(index, &command)
    }

    #[test]
    fn of_two_keys_enrolling_one_node_only_the_first_is_bound() {
        let mut state = State::new();
        agent_key(&mut state, "key-1", None);
        agent_key(&mut state, "key-2", None);
        assert!(bind(&mut state, "key-1", "node-a").is_ok());
        let before: Vec<StoredKey> = state.keys().cloned().collect();
        let refused = bind(&mut state, "key-2", "node-a").unwrap_err();
        assert_eq!(refused.code(), "already_exists");
        let after: Vec<StoredKey> = state.keys().cloned().collect();
        assert_eq!(after, before, "a refused bind changes nothing");
        assert_eq!(
            state
                .node_key(&NodeId::from("node-a"))
                .map(|k| k.info.id.as_str()),
            Some("key-1")
        );
        // Binding again to the same node is a no-op; to another node, refused.
        assert!(bind(&mut state, "key-1", "node-a").is_ok());
        assert_eq!(
            bind(&mut state, "key-1", "node-b").unwrap_err().code(),
            "illegal_transition"
        );
    }

    #[test]
    fn a_revoked_binding_frees_the_node_and_revoked_or_other_keys_never_bind() {
        let mut state = State::new();
        agent_key(&mut state, "key-1", Some("node-a"));
        agent_key(&mut state, "key-2", None);
        assert!(bind(&mut state, "key-2", "node-a").is_err());
        state
            .apply(
                9,
                &Command::KeyRevoke {
                    key: KeyId::from("key-1"),
                    at: 3,
                },
            )
            .unwrap();
        assert!(state.node_key(&NodeId::from("node-a")).is_none());
        assert_eq!(
            bind(&mut state, "key-1", "node-a").unwrap_err().code(),
            "illegal_transition",
            "a revoked key"
        );
        assert!(bind(&mut state, "key-2", "node-a").is_ok());
        assert_eq!(
            bind(&mut state, "key-9", "node-a").unwrap_err().code(),
            "not_found"
        );
    }

    #[test]
    fn only_agent_keys_are_created_bound_to_a_node() {
        let mut state = State::new();
        let admin = Command::KeyCreate {
            key: KeyId::from("key-a"),
            name: "a".into(),
            scope: Scope::Admin,
            business: None,
            secret_hash: "a".repeat(64),
            node: Some(NodeId::from("node-a")),
            at: 1,
        };
        assert_eq!(state.apply(1, &admin).unwrap_err().code(), "invalid");
    }
}
