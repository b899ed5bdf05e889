//! API keys: scopes, and the key endpoints' bodies. Secrets are shown once and stored hashed.

use serde::{Deserialize, Serialize};

use crate::{BusinessId, Index, KeyId, Millis, NodeId};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything.
    Admin,
    /// One business's jobs, ledger and schedules.
    User,
    /// A worker agent: register, heartbeat, poll, report.
    Agent,
}

impl Scope {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::User => "user",
            Scope::Agent => "agent",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Scope::Admin),
            "user" => Ok(Scope::User),
            "agent" => Ok(Scope::Agent),
            other => Err(format!("unknown scope `{other}` (admin, user, agent)")),
        }
    }
}

/// A key as listed: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// Public id; the secret starts with it.
    pub id: KeyId,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The business a user key is bound to.
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// The one node an agent key acts for (see `docs/security.md`): created bound with
    /// `node`, or bound by its first node registration. Absent for every other key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// When it was created.
    pub created_at: Millis,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_at: Option<Millis>,
}

/// `POST /api/compute/keys/create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyCreateRequest {
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// What it may do.
    pub scope: Scope,
    /// Required for `user` keys, refused for others.
    #[serde(default)]
    pub business: Option<BusinessId>,
    /// For `agent` keys: the node it acts for (refused for others). Without it, the key
    /// is bound to the first node it registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// The new key: `secret` is shown this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyCreateResponse {
    /// The key's public data.
    pub key: ApiKeyInfo,
    /// The bearer secret. It is not stored and cannot be shown again.
    pub secret: String,
    /// Log index of the write.
    pub index: Index,
}

/// `POST /api/compute/keys/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyListResponse {
    /// Every key, revoked ones included.
    pub keys: Vec<ApiKeyInfo>,
    /// The replica's applied index this read reflects.
    pub index: Index,
}

/// `POST /api/compute/keys/{id}/revoke` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyResponse {
    /// The key.
    pub key: ApiKeyInfo,
    /// Log index of the write.
    pub index: Index,
}
