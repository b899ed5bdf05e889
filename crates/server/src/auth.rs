//! API keys on the request path: secrets, their hashes, and who a request acts as.
//!
//! A secret is `tvk_<key id>_<64 hex digits>` (256 random bits). Only its SHA-256 is
//! replicated: a plain hash is enough for a secret with that much entropy (no password
//! stretching needed), and it lets every replica look a key up without a shared salt.
//! Secrets are never logged.
//!
//! An agent key acts for one node ([`Principal::node`]): created bound (`keys/create`
//! with `node`), or bound by the first node it registers (enrollment, `Command::KeyBind`).
//! With it an agent reaches only its own node's work and attempts; `docs/security.md`
//! tells the whole model.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, HeaderValue};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tanvrit_api::{BusinessId, KeyId, NodeId, Scope};
use tanvrit_state::State;

use crate::app::AppState;
use crate::error::ApiError;
use crate::listener::PeerCertificate;

/// Every secret this server generates starts with this.
pub const SECRET_PREFIX: &str = "tvk_";

/// Hex SHA-256 of a secret: what `State::key_by_hash` is keyed by.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh key id, `key-<uuid v7>`.
pub fn new_key_id() -> KeyId {
    KeyId(format!("key-{}", uuid::Uuid::now_v7()))
}

/// A fresh secret for `key`: `tvk_<key id>_<64 hex>` from 256 bits of a CSPRNG.
pub fn generate_secret(key: &KeyId) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{key}_{}", hex::encode(bytes))
}

/// The key id inside a secret this server generated, if it is one.
pub fn key_id_of_secret(secret: &str) -> Option<KeyId> {
    let (key, random) = secret.strip_prefix(SECRET_PREFIX)?.rsplit_once('_')?;
    let well_formed = !key.is_empty()
        && random.len() == 64
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && tanvrit_state::validate::identifier("key id", key).is_ok();
    well_formed.then(|| KeyId(key.to_string()))
}

/// Who a request acts as: the key that authenticated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's id.
    pub key: KeyId,
    /// What it may do.
    pub scope: Scope,
    /// For `user` keys: the one business it sees and touches.
    pub business: Option<BusinessId>,
    /// For `agent` keys: the one node it acts for, once bound.
    pub node: Option<NodeId>,
}

/// Why a request could not be authenticated (the `reason` label of
/// `tanvrit_auth_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No `Authorization: Bearer` header, or a malformed one.
    Missing,
    /// No key has this secret.
    Unknown,
    /// The key was revoked.
    Revoked,
}

impl AuthFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
        }
    }
}

/// Finds the active key for an `Authorization: Bearer <secret>` header.
pub fn authenticate(
    state: &State,
    authorization: Option<&HeaderValue>,
) -> Result<Principal, ApiError> {
    identify(state, authorization).map_err(|(_, error)| error)
}

/// [`authenticate`], saying why it failed.
pub(crate) fn identify(
    state: &State,
    authorization: Option<&HeaderValue>,
) -> Result<Principal, (AuthFailure, ApiError)> {
    let secret = bearer(authorization).map_err(|e| (AuthFailure::Missing, e))?;
    let stored = state.key_by_hash(&hash_secret(secret)).ok_or_else(|| {
        (
            AuthFailure::Unknown,
            ApiError::Unauthorized("unknown API key".into()),
        )
    })?;
    if stored.info.revoked_at.is_some() {
        return Err((
            AuthFailure::Revoked,
            ApiError::Unauthorized(format!("API key `{}` was revoked", stored.info.id)),
        ));
    }
    Ok(Principal {
        key: stored.info.id.clone(),
        scope: stored.info.scope,
        business: stored.info.business.clone(),
        node: stored.info.node.clone(),
    })
}

fn bearer(authorization: Option<&HeaderValue>) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized("send `Authorization: Bearer <API key>`".into());
    let value = authorization
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, secret) = value.trim().split_once(' ').ok_or_else(missing)?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
        return Err(missing());
    }
    Ok(secret)
}

impl Principal {
    /// Refuses with 403 unless the key's scope is one of `allowed`.
    pub fn require(&self, allowed: &[Scope]) -> Result<(), ApiError> {
        if allowed.contains(&self.scope) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            Err(ApiError::Forbidden(format!(
                "a {} key cannot do this (needs {})",
                self.scope.as_str(),
                names.join(" or ")
            )))
        }
    }

    /// True when this key may see what `owner` owns: admin keys see everything, user keys
    /// their own business. Callers answer 404 (not 403) otherwise, so a user key learns
    /// nothing about other businesses.
    pub fn sees(&self, owner: &BusinessId) -> bool {
        match self.scope {
            Scope::Admin => true,
            Scope::User => self.business.as_ref() == Some(owner),
            Scope::Agent => false,
        }
    }

    /// Refuses with 403 unless this key may act for `node`: admin keys act for every
    /// node, an agent key for the node it is bound to only.
    pub fn require_node(&self, node: &NodeId) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin => Ok(()),
            Scope::Agent if self.bound_node()? == node => Ok(()),
            Scope::Agent => Err(ApiError::Forbidden(format!(
                "agent key `{}` acts for node `{}` only",
                self.key,
                tanvrit_state::validate::short(self.bound_node()?.as_str())
            ))),
            Scope::User => self.require(&[Scope::Agent, Scope::Admin]),
        }
    }

    /// The node an agent key is bound to; 403 for one not bound yet, which acts for no
    /// node until it registers one (that binds it).
    pub fn bound_node(&self) -> Result<&NodeId, ApiError> {
        self.node.as_ref().ok_or_else(|| {
            ApiError::Forbidden(format!(
                "agent key `{}` is not bound to a node yet: register the node first",
                self.key
            ))
        })
    }

    /// The one business a request acts on (a submission, a balance): a user key's own
    /// (naming another is 404), or the one an admin key names (422 without it).
    pub fn required_business(&self, named: Option<&BusinessId>) -> Result<BusinessId, ApiError> {
        match self.business_filter(named)? {
            Some(business) => Ok(business),
            None => Err(ApiError::Invalid(
                "admin keys must name the `business` to act on".into(),
            )),
        }
    }

    /// The business a list or read is narrowed to: always a user key's own (naming
    /// another is 404); for admin keys, whatever they named (maybe none).
    pub fn business_filter(
        &self,
        named: Option<&BusinessId>,
    ) -> Result<Option<BusinessId>, ApiError> {
        match self.scope {
            Scope::User => {
                let own = self.business.clone().ok_or_else(|| {
                    ApiError::Internal(format!("user key `{}` has no business", self.key))
                })?;
                match named {
                    Some(other) if *other != own => Err(ApiError::not_found("business", other)),
                    _ => Ok(Some(own)),
                }
            }
            Scope::Admin | Scope::Agent => Ok(named.cloned()),
        }
    }
}

/// Who a verified client certificate acts as: `client-<name>.<cluster>.tanvrit` is an
/// `admin`, or a `user` of the business its `tanvrit:business:<id>` URI name gives. Its
/// key id (rate limits, idempotency scope) is `cert-<name>`. Replica and agent
/// certificates, and other clusters' names, authenticate nobody.
pub(crate) fn certificate_principal(
    certificate: &PeerCertificate,
    cluster: &str,
) -> Option<Principal> {
    let name = certificate
        .dns_names
        .iter()
        .find_map(|dns| match tanvrit_tls::PeerName::parse(dns, cluster)? {
            tanvrit_tls::PeerName::Client(name) => Some(name),
            _ => None,
        })?;
    let business = certificate.uri_names.iter().find_map(|uri| {
        uri.strip_prefix(tanvrit_tls::names::BUSINESS_URI_PREFIX)
            .filter(|b| !b.is_empty())
            .map(BusinessId::from)
    });
    Some(Principal {
        key: KeyId(format!("cert-{name}")),
        scope: if business.is_some() {
            Scope::User
        } else {
            Scope::Admin
        },
        business,
        node: None,
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let authorization = parts.headers.get(header::AUTHORIZATION);
        // A key, when sent, decides; without one a verified client certificate may.
        if authorization.is_none() {
            let certified = parts
                .extensions
                .get::<std::sync::Arc<PeerCertificate>>()
                .zip(app.config().client_cert_cluster.as_deref())
                .and_then(|(certificate, cluster)| certificate_principal(certificate, cluster));
            if let Some(principal) = certified {
                app.rate_limit(&principal)?;
                return Ok(principal);
            }
        }
        let identified = app.reader().read(|state| identify(state, authorization));
        match identified {
            Ok(principal) => {
                app.rate_limit(&principal)?;
                Ok(principal)
            }
            Err((failure, error)) => {
                let source = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| addr.to_string());
                // Never the secret: the reason, where it came from, and where to.
                tracing::warn!(
                    reason = failure.as_str(),
                    source = source.as_deref().unwrap_or("unknown"),
                    path = parts.uri.path(),
                    "authentication failed"
                );
                app.metrics().abuse().auth_failed(failure.as_str());
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_state::{Command, Effect};

    #[test]
    fn client_certificates_of_the_cluster_map_to_admin_or_their_business() {
        let cert = |dns: &str, uri: Option<&str>| PeerCertificate {
            dns_names: vec!["localhost".into(), dns.into()],
            uri_names: uri.into_iter().map(str::to_string).collect(),
        };
        let admin = certificate_principal(&cert("client-ops.prod.tanvrit", None), "prod").unwrap();
        assert_eq!(admin.scope, Scope::Admin);
        assert_eq!(admin.key, KeyId("cert-ops".into()));
        assert_eq!(admin.business, None);
        let user = certificate_principal(
            &cert("client-app.prod.tanvrit", Some("tanvrit:business:acme")),
            "prod",
        )
        .unwrap();
        assert_eq!(user.scope, Scope::User);
        assert_eq!(user.business, Some(BusinessId::from("acme")));
        for (dns, cluster) in [
            ("client-ops.prod.tanvrit", "staging"),
            ("agent-n1.prod.tanvrit", "prod"),
            ("replica-1.prod.tanvrit", "prod"),
        ] {
            assert_eq!(
                certificate_principal(&cert(dns, None), cluster),
                None,
                "{dns}"
            );
        }
    }

    fn state_with(keys: &[(&str, Scope, Option<&str>, &str)]) -> State {
        let mut state = State::new();
        for (i, (id, scope, business, secret)) in keys.iter().enumerate() {
            let outcome = state.apply(
                i as u64 + 1,
                &Command::KeyCreate {
                    key: KeyId::from(*id),
                    name: id.to_string(),
                    scope: *scope,
                    business: business.map(BusinessId::from),
                    secret_hash: hash_secret(secret),
                    node: None,
                    at: 1,
                },
            );
            assert!(matches!(outcome, Ok(Effect::Key { .. })), "{outcome:?}");
        }
        state
    }

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn the_hash_is_hex_sha256_of_the_whole_secret() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_secret("abc"), hash_secret("abd"));
    }

    #[test]
    fn generated_secrets_carry_their_key_id_and_256_random_bits() {
        let key = new_key_id();
        let a = generate_secret(&key);
        let b = generate_secret(&key);
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("tvk_{key}_")));
        assert_eq!(a.len(), "tvk_".len() + key.as_str().len() + 1 + 64);
        assert_eq!(key_id_of_secret(&a), Some(key));
        assert_eq!(key_id_of_secret("tvk_key-1_short"), None);
        assert_eq!(key_id_of_secret("not a secret"), None);
    }

    #[test]
    fn a_known_active_key_authenticates_as_its_scope_and_business() {
        let state = state_with(&[("key-u", Scope::User, Some("acme"), "secret-user-0001")]);
        let principal = authenticate(&state, Some(&header("Bearer secret-user-0001"))).unwrap();
        assert_eq!(principal.key.as_str(), "key-u");
        assert_eq!(principal.scope, Scope::User);
        assert_eq!(principal.business, Some(BusinessId::from("acme")));
        // The scheme is case-insensitive.
        assert!(authenticate(&state, Some(&header("bearer secret-user-0001"))).is_ok());
    }

    #[test]
    fn missing_malformed_unknown_and_revoked_keys_are_unauthorized() {
        let mut state = state_with(&[("key-a", Scope::Admin, None, "secret-admin-001")]);
        for value in [
            None,
            Some("secret-admin-001"),
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer nope"),
        ] {
            let error = authenticate(&state, value.map(header).as_ref()).unwrap_err();
            assert_eq!(error.code(), "unauthorized", "{value:?}");
        }
        state
            .apply(
                9,
                &Command::KeyRevoke {
                    key: KeyId::from("key-a"),
                    at: 2,
                },
            )
            .unwrap();
        let error = authenticate(&state, Some(&header("Bearer secret-admin-001"))).unwrap_err();
        assert_eq!(error.code(), "unauthorized");
        assert!(error.to_string().contains("revoked"));
    }

    fn principal(scope: Scope, business: Option<&str>) -> Principal {
        Principal {
            key: KeyId::from("key-x"),
            scope,
            business: business.map(BusinessId::from),
            node: None,
        }
    }

    #[test]
    fn scopes_outside_the_allowed_set_are_forbidden() {
        let agent = principal(Scope::Agent, None);
        assert!(agent.require(&[Scope::Agent, Scope::Admin]).is_ok());
        let error = agent.require(&[Scope::Admin]).unwrap_err();
        assert_eq!(error.code(), "forbidden");
        assert_eq!(error.status().as_u16(), 403);
    }

    #[test]
    fn user_keys_see_only_their_business_and_others_are_not_found() {
        let user = principal(Scope::User, Some("acme"));
        let acme = BusinessId::from("acme");
        let globex = BusinessId::from("globex");
        assert!(user.sees(&acme));
        assert!(!user.sees(&globex));
        assert_eq!(user.required_business(None).unwrap(), acme);
        assert_eq!(user.required_business(Some(&acme)).unwrap(), acme);
        assert_eq!(
            user.required_business(Some(&globex)).unwrap_err().code(),
            "not_found"
        );
        assert_eq!(user.business_filter(None).unwrap(), Some(acme.clone()));
        assert_eq!(
            user.business_filter(Some(&globex))
                .unwrap_err()
                .status()
                .as_u16(),
            404
        );
    }

    #[test]
    fn admin_keys_see_everything_but_must_name_a_business_to_create() {
        let admin = principal(Scope::Admin, None);
        let globex = BusinessId::from("globex");
        assert!(admin.sees(&globex));
        assert_eq!(admin.business_filter(None).unwrap(), None);
        assert_eq!(admin.required_business(Some(&globex)).unwrap(), globex);
        let error = admin.required_business(None).unwrap_err();
        assert_eq!((error.code(), error.status().as_u16()), ("invalid", 422));
        assert!(!principal(Scope::Agent, None).sees(&globex));
    }

    #[test]
    fn agent_keys_act_for_their_own_node_only() {
        let (a, b) = (NodeId::from("node-a"), NodeId::from("node-b"));
        let bound = Principal {
            node: Some(a.clone()),
            ..principal(Scope::Agent, None)
        };
        assert!(bound.require_node(&a).is_ok());
        let other = bound.require_node(&b).unwrap_err();
        assert_eq!((other.status().as_u16(), other.code()), (403, "forbidden"));
        let unbound = principal(Scope::Agent, None).require_node(&a).unwrap_err();
        assert!(
            unbound.to_string().contains("register the node first"),
            "{unbound}"
        );
        assert!(principal(Scope::Admin, None).require_node(&b).is_ok());
        assert_eq!(
            principal(Scope::User, Some("acme"))
                .require_node(&a)
                .unwrap_err()
                .code(),
            "forbidden"
        );
        assert!(!bound.sees(&BusinessId::from("globex")));
    }
}
