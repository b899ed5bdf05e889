//! `cluster/topology` (any key) and `metrics` (admin: aggregate counts as JSON).

use axum::extract::State;
use axum::Json;
use tanvrit_api::{MetricsSummary, Millis, NodeState, ReadRequest, Role, Scope, Topology};
use tanvrit_state::State as DomainState;

use super::ApiErrors;
use crate::app::{now_ms, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// Every replica as the answering one sees it: roles, indexes, the leader.
#[utoipa::path(
    post,
    path = "/api/compute/cluster/topology",
    tag = "cluster",
    request_body = ReadRequest,
    responses((status = 200, description = "The replicas", body = Topology), ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_topology(
    State(app): State<AppState>,
    _principal: Principal,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<Topology>, ApiError> {
    // Any valid key may look: clients and agents use it to find the leader.
    app.barrier(request.consistency).await?;
    Ok(Json(app.cluster().topology()))
}

/// Aggregate counts: jobs and nodes by state, keys, schedules, businesses.
#[utoipa::path(
    post,
    path = "/api/compute/metrics",
    tag = "cluster",
    request_body = ReadRequest,
    responses((status = 200, description = "Counts", body = MetricsSummary), ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_metrics_summary(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<MetricsSummary>, ApiError> {
    principal.require(&[Scope::Admin])?;
    app.barrier(request.consistency).await?;
    let role = app.cluster().role();
    Ok(Json(app.read(|state| summary(state, Some(role), now_ms()))))
}

/// Counts over the whole state. Every job state is present, zero or not, so dashboards
/// see a stable set of keys.
pub(crate) fn summary(state: &DomainState, role: Option<Role>, at: Millis) -> MetricsSummary {
    let counts = state.job_counts();
    let jobs_by_state = tanvrit_api::JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), counts.get(s).copied().unwrap_or(0)))
        .collect();
    let mut nodes_by_state = std::collections::BTreeMap::new();
    for s in [
        NodeState::Ready,
        NodeState::Draining,
        NodeState::Down,
        NodeState::Deleted,
    ] {
        nodes_by_state.insert(s.as_str().to_string(), 0);
    }
    for node in state.nodes() {
        *nodes_by_state
            .entry(node.state.as_str().to_string())
            .or_insert(0) += 1;
    }
    MetricsSummary {
        jobs_by_state,
        nodes_by_state,
        active_keys: state.keys().filter(|k| k.info.revoked_at.is_none()).count() as u64,
        schedules: state.schedules().count() as u64,
        businesses: state.accounts().count() as u64,
        applied_index: state.applied_index(),
        role,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{KeyId, NodeId, Resources};
    use tanvrit_state::Command;

    #[test]
    fn the_summary_counts_every_state_and_only_active_keys() {
        let mut state = DomainState::new();
        let commands = [
            Command::KeyCreate {
                key: KeyId::from("key-1"),
                name: "a".into(),
                scope: Scope::Admin,
                business: None,
                secret_hash: crate::auth::hash_secret("one secret value"),
                node: None,
                at: 1,
            },
            Command::KeyCreate {
                key: KeyId::from("key-2"),
                name: "b".into(),
                scope: Scope::Agent,
                business: None,
                secret_hash: crate::auth::hash_secret("another secret value"),
                node: None,
                at: 1,
            },
            Command::KeyRevoke {
                key: KeyId::from("key-2"),
                at: 2,
            },
            Command::NodeRegister {
                node: NodeId::from("node-1"),
                name: "n".into(),
                resources: Resources::default(),
                labels: Default::default(),
                drivers: Vec::new(),
                at: 3,
            },
        ];
        for (i, command) in commands.iter().enumerate() {
            state.apply(i as u64 + 1, command).unwrap();
        }
        let summary = summary(&state, Some(Role::Leader), 99);
        assert_eq!(summary.active_keys, 1);
        assert_eq!(summary.jobs_by_state.len(), 7);
        assert_eq!(summary.jobs_by_state["pending"], 0);
        assert_eq!(summary.nodes_by_state["ready"], 1);
        assert_eq!(summary.nodes_by_state["deleted"], 0);
        assert_eq!((summary.applied_index, summary.at), (4, 99));
    }
}
