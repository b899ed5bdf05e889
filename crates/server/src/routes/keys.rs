//! `keys/create`, `keys/list`, `keys/{id}/revoke`: admin only. A new key's secret is
//! in the create response and nowhere else.
//!
//! A `keys/create` repeated with its `Idempotency-Key` cannot give the secret again:
//! only its hash is replicated, and keeping the secret in the idempotency record would
//! replicate and snapshot it on every replica. The repeat is answered 409
//! `idempotent_replay_secret_unavailable` with the key's id instead, so a client that
//! lost the first answer can revoke that key and create another.
//!
//! The only active admin key cannot be revoked (409 `last_admin_key`): nobody could
//! create keys, register agents' keys or change the membership afterwards. The check
//! reads this replica's state before the write, so two revocations racing on different
//! replicas can still both pass; it guards against the common mistake, not a race.

use axum::extract::State;
use axum::Json;
use tanvrit_api::{
    ApiKeyInfo, ErrorBody, KeyCreateRequest, KeyCreateResponse, KeyId, KeyListResponse,
    KeyResponse, Millis, ReadRequest, Scope,
};
use tanvrit_state::{validate, Command, Effect, State as DomainState};

use super::{ApiErrors, EmptyRequest, IdempotencyHeader};
use crate::app::{now_ms, unexpected, AppState};
use crate::auth::{generate_secret, hash_secret, new_key_id, Principal};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, IdempotencyKey};

/// Creates an API key. The response holds its secret; it is not stored and cannot be
/// shown again.
#[utoipa::path(
    post,
    path = "/api/compute/keys/create",
    tag = "keys",
    params(IdempotencyHeader),
    request_body = KeyCreateRequest,
    responses(
        (status = 200, description = "The key and its secret", body = KeyCreateResponse),
        (status = 409, description = "`idempotent_replay_secret_unavailable`: the `Idempotency-Key` already created key `error.id`, whose secret cannot be shown again", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_create_key(
    State(app): State<AppState>,
    principal: Principal,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<KeyCreateRequest>,
) -> Result<Json<KeyCreateResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    let idempotency = keyed.bind(&principal, &request)?;
    let (command, secret) = create_command(request, now_ms())?;
    let written = app.write_keyed(command, idempotency).await?;
    let key = effect_key(written.effect)?;
    if written.replayed {
        // `secret` belongs to this request's command, which was not applied.
        return Err(ApiError::ReplaySecretUnavailable {
            key: key.id.to_string(),
        });
    }
    Ok(Json(KeyCreateResponse {
        key,
        secret,
        index: written.index,
    }))
}

/// Lists every key, revoked ones included; never a secret.
#[utoipa::path(
    post,
    path = "/api/compute/keys/list",
    tag = "keys",
    request_body = ReadRequest,
    responses((status = 200, description = "Every key", body = KeyListResponse), ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn handle_list_keys(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<KeyListResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    app.barrier(request.consistency).await?;
    Ok(Json(app.read(list_keys)))
}

/// Revokes a key; requests with it are refused from then on.
#[utoipa::path(
    post,
    path = "/api/compute/keys/{id}/revoke",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id"), IdempotencyHeader),
    request_body = EmptyRequest,
    responses(
        (status = 200, description = "The revoked key", body = KeyResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`last_admin_key`: the only active admin key", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_revoke_key(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<EmptyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(&[Scope::Admin])?;
    let idempotency = keyed.bind(&principal, &request)?;
    let key = KeyId(id);
    app.reader()
        .read(|state| not_the_last_admin_key(state, &key))?;
    let command = Command::KeyRevoke { key, at: now_ms() };
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(KeyResponse {
        key: effect_key(written.effect)?,
        index: written.index,
    }))
}

// ---- logic, testable on a bare `State` ------------------------------------------------

/// Builds `KeyCreate` with a new id and secret; returns the secret beside it.
pub(crate) fn create_command(
    request: KeyCreateRequest,
    at: Millis,
) -> Result<(Command, String), ApiError> {
    match (request.scope, &request.business) {
        (Scope::User, None) => return Err(ApiError::Invalid("user keys need a `business`".into())),
        (Scope::User, Some(business)) => validate::identifier("business", business.as_str())?,
        (Scope::Admin | Scope::Agent, Some(_)) => {
            return Err(ApiError::Invalid(
                "only user keys are bound to a `business`".into(),
            ))
        }
        (Scope::Admin | Scope::Agent, None) => {}
    }
    match (request.scope, &request.node) {
        (Scope::Agent, Some(node)) => validate::identifier("node id", node.as_str())?,
        (Scope::Admin | Scope::User, Some(_)) => {
            return Err(ApiError::Invalid(
                "only agent keys are bound to a `node`".into(),
            ))
        }
        (_, None) => {}
    }
    let name = request
        .name
        .unwrap_or_else(|| format!("{} key", request.scope.as_str()));
    if name.len() > 256 {
        return Err(ApiError::Invalid("key names are at most 256 bytes".into()));
    }
    let key = new_key_id();
    let secret = generate_secret(&key);
    let command = Command::KeyCreate {
        key,
        name,
        scope: request.scope,
        business: request.business,
        secret_hash: hash_secret(&secret),
        node: request.node,
        at,
    };
    Ok((command, secret))
}

/// Every key's public data.
pub(crate) fn list_keys(state: &DomainState) -> KeyListResponse {
    KeyListResponse {
        keys: state.keys().map(|key| key.info.clone()).collect(),
        index: state.applied_index(),
    }
}

/// Refuses to revoke `key` when it is the only admin key not yet revoked.
pub(crate) fn not_the_last_admin_key(state: &DomainState, key: &KeyId) -> Result<(), ApiError> {
    let active_admin =
        |k: &tanvrit_state::StoredKey| k.info.scope == Scope::Admin && k.info.revoked_at.is_none();
    let Some(target) = state.key(key).filter(|k| active_admin(k)) else {
        return Ok(());
    };
    if state
        .keys()
        .any(|k| k.info.id != target.info.id && active_admin(k))
    {
        return Ok(());
    }
    Err(ApiError::LastAdminKey {
        key: key.to_string(),
    })
}

fn effect_key(effect: Effect) -> Result<ApiKeyInfo, ApiError> {
    match effect {
        Effect::Key { key } => Ok(key),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authenticate;
    use axum::http::HeaderValue;
    use tanvrit_api::BusinessId;

    fn request(scope: Scope, business: Option<&str>) -> KeyCreateRequest {
        KeyCreateRequest {
            name: None,
            scope,
            business: business.map(BusinessId::from),
            node: None,
        }
    }

    #[test]
    fn a_created_key_authenticates_with_its_secret_and_only_its_hash_is_replicated() {
        let (command, secret) = create_command(request(Scope::User, Some("acme")), 7).unwrap();
        let Command::KeyCreate {
            secret_hash, name, ..
        } = &command
        else {
            panic!("{command:?}");
        };
        assert_eq!(secret_hash, &hash_secret(&secret));
        assert!(
            !format!("{command:?}").contains(&secret),
            "the command never holds the secret"
        );
        assert_eq!(name, "user key");
        let mut state = DomainState::new();
        state.apply(1, &command).unwrap();
        let header = HeaderValue::from_str(&format!("Bearer {secret}")).unwrap();
        let principal = authenticate(&state, Some(&header)).unwrap();
        assert_eq!(principal.scope, Scope::User);
        assert_eq!(list_keys(&state).keys.len(), 1);
    }

    #[test]
    fn the_only_active_admin_key_cannot_be_revoked_but_any_other_can() {
        fn create(
            state: &mut DomainState,
            index: u64,
            scope: Scope,
            business: Option<&str>,
        ) -> KeyId {
            let (command, _) = create_command(request(scope, business), 1).unwrap();
            let Command::KeyCreate { key, .. } = &command else {
                panic!("{command:?}");
            };
            let key = key.clone();
            state.apply(index, &command).unwrap();
            key
        }
        let mut state = DomainState::new();
        let admin = create(&mut state, 1, Scope::Admin, None);
        let user = create(&mut state, 2, Scope::User, Some("acme"));
        let agent = create(&mut state, 3, Scope::Agent, None);
        let err = not_the_last_admin_key(&state, &admin).unwrap_err();
        assert_eq!(err.code(), "last_admin_key");
        assert_eq!(err.status(), axum::http::StatusCode::CONFLICT);
        assert_eq!(err.body().error.id.as_deref(), Some(admin.as_str()));
        // Other scopes, unknown ids (apply answers `not_found`): not this check's business.
        for key in [&user, &agent, &KeyId::from("key-none")] {
            assert!(not_the_last_admin_key(&state, key).is_ok());
        }
        // With a second admin key, either may go, and then the other is the last.
        let second = create(&mut state, 4, Scope::Admin, None);
        assert!(not_the_last_admin_key(&state, &admin).is_ok());
        state
            .apply(
                5,
                &Command::KeyRevoke {
                    key: admin.clone(),
                    at: 2,
                },
            )
            .unwrap();
        // Repeating the revoke of an already revoked key is fine (idempotent replays).
        assert!(not_the_last_admin_key(&state, &admin).is_ok());
        assert_eq!(
            not_the_last_admin_key(&state, &second).unwrap_err().code(),
            "last_admin_key"
        );
    }

    #[test]
    fn only_user_keys_are_bound_to_a_business() {
        assert_eq!(
            create_command(request(Scope::User, None), 1)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            create_command(request(Scope::Admin, Some("acme")), 1)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            create_command(request(Scope::User, Some("a b")), 1)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert!(create_command(request(Scope::Agent, None), 1).is_ok());
    }

    #[test]
    fn only_agent_keys_are_bound_to_a_node() {
        let bound = |scope, node: &str| {
            let mut request = request(scope, (scope == Scope::User).then_some("acme"));
            request.node = Some(node.into());
            create_command(request, 1).map(|(command, _)| command)
        };
        let Ok(Command::KeyCreate { node, .. }) = bound(Scope::Agent, "node-a") else {
            panic!("an agent key bound to node-a");
        };
        assert_eq!(node.as_ref().map(|n| n.as_str()), Some("node-a"));
        for scope in [Scope::Admin, Scope::User] {
            assert_eq!(bound(scope, "node-a").unwrap_err().code(), "invalid");
        }
        assert_eq!(bound(Scope::Agent, "bad id").unwrap_err().code(), "invalid");
    }
}
