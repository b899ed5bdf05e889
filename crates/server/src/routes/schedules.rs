//! `schedules/create`, `schedules/list`, `schedules/{id}/get`, `schedules/{id}/update`,
//! `schedules/{id}/delete`. Cron expressions and zones are checked here ([`crate::cron`]),
//! since `apply` knows no calendar; `next_fire_at` is computed when read.

use axum::extract::State;
use axum::Json;
use tanvrit_api::{
    BusinessId, CatchUpPolicy, ErrorBody, Millis, ReadRequest, Schedule, ScheduleCreateRequest,
    ScheduleId, ScheduleListRequest, ScheduleListResponse, ScheduleResponse, ScheduleUpdateRequest,
    ScheduleView, Scope, WriteResponse,
};
use tanvrit_state::{validate, Command, Effect, State as DomainState};

use super::{ApiErrors, EmptyRequest, IdempotencyHeader};
use crate::app::{new_id, now_ms, unexpected, AppState};
use crate::auth::Principal;
use crate::cron::{parse_firing_expression, parse_zone, CronSchedule};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, IdempotencyKey};

const SCHEDULE_SCOPES: &[Scope] = &[Scope::Admin, Scope::User];
/// The zone of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Creates a schedule for a business.
#[utoipa::path(
    post,
    path = "/api/compute/schedules/create",
    tag = "schedules",
    params(IdempotencyHeader),
    request_body = ScheduleCreateRequest,
    responses(
        (status = 200, description = "The schedule", body = ScheduleResponse),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_create_schedule(
    State(app): State<AppState>,
    principal: Principal,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<ScheduleCreateRequest>,
) -> Result<Json<ScheduleResponse>, ApiError> {
    principal.require(SCHEDULE_SCOPES)?;
    let idempotency = keyed.bind(&principal, &request)?;
    let command = create_command(&principal, request, now_ms())?;
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(ScheduleResponse {
        schedule: written_view(written.effect)?,
        index: written.index,
    }))
}

/// Lists schedules with their next due time.
#[utoipa::path(
    post,
    path = "/api/compute/schedules/list",
    tag = "schedules",
    request_body = ScheduleListRequest,
    responses(
        (status = 200, description = "Schedules by id", body = ScheduleListResponse),
        (status = 404, description = "`not_found`: a user key named another business", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_list_schedules(
    State(app): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<ScheduleListRequest>,
) -> Result<Json<ScheduleListResponse>, ApiError> {
    principal.require(SCHEDULE_SCOPES)?;
    let business = principal.business_filter(request.business.as_ref())?;
    app.barrier(request.consistency).await?;
    Ok(Json(app.read(|state| {
        list_schedules(state, business.as_ref(), now_ms())
    })))
}

/// Reads one schedule.
#[utoipa::path(
    post,
    path = "/api/compute/schedules/{id}/get",
    tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The schedule", body = ScheduleResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_get_schedule(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    ApiJson(request): ApiJson<ReadRequest>,
) -> Result<Json<ScheduleResponse>, ApiError> {
    principal.require(SCHEDULE_SCOPES)?;
    app.barrier(request.consistency).await?;
    let id = ScheduleId(id);
    app.read(|state| {
        let schedule = visible_schedule(state, &principal, &id)?.clone();
        Ok(Json(ScheduleResponse {
            schedule: view(schedule, now_ms()),
            index: state.applied_index(),
        }))
    })
}

/// Changes the given fields of a schedule.
#[utoipa::path(
    post,
    path = "/api/compute/schedules/{id}/update",
    tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id"), IdempotencyHeader),
    request_body = ScheduleUpdateRequest,
    responses(
        (status = 200, description = "The changed schedule", body = ScheduleResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_update_schedule(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(patch): ApiJson<ScheduleUpdateRequest>,
) -> Result<Json<ScheduleResponse>, ApiError> {
    principal.require(SCHEDULE_SCOPES)?;
    let schedule = ScheduleId(id);
    check_patch(&patch)?;
    app.ensure_visible(&principal, "schedule", schedule.as_str(), |s| {
        owner(s, &schedule)
    })
    .await?;
    let idempotency = keyed.bind(&principal, &patch)?;
    let command = Command::ScheduleUpdate {
        schedule,
        patch,
        at: now_ms(),
    };
    let written = app.write_keyed(command, idempotency).await?;
    Ok(Json(ScheduleResponse {
        schedule: written_view(written.effect)?,
        index: written.index,
    }))
}

/// Deletes a schedule; jobs it fired stay.
#[utoipa::path(
    post,
    path = "/api/compute/schedules/{id}/delete",
    tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id"), IdempotencyHeader),
    request_body = EmptyRequest,
    responses(
        (status = 200, description = "Deleted", body = WriteResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        ApiErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn handle_delete_schedule(
    State(app): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath,
    keyed: IdempotencyKey,
    ApiJson(request): ApiJson<EmptyRequest>,
) -> Result<Json<WriteResponse>, ApiError> {
    principal.require(SCHEDULE_SCOPES)?;
    let schedule = ScheduleId(id);
    app.ensure_visible(&principal, "schedule", schedule.as_str(), |s| {
        owner(s, &schedule)
    })
    .await?;
    let idempotency = keyed.bind(&principal, &request)?;
    let command = Command::ScheduleDelete {
        schedule,
        at: now_ms(),
    };
    let written = app.write_keyed(command, idempotency).await?;
    match written.effect {
        Effect::ScheduleDeleted => Ok(Json(WriteResponse {
            index: written.index,
        })),
        other => Err(unexpected(other)),
    }
}

// ---- logic, testable on a bare `State` ------------------------------------------------

fn invalid(error: crate::cron::CronError) -> ApiError {
    ApiError::Invalid(error.to_string())
}

/// Builds `ScheduleCreate` after checking the cron expression, zone and template.
pub(crate) fn create_command(
    principal: &Principal,
    request: ScheduleCreateRequest,
    at: Millis,
) -> Result<Command, ApiError> {
    let business = principal.required_business(request.business.as_ref())?;
    validate::identifier("business", business.as_str())?;
    let timezone = request
        .timezone
        .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string());
    check_cron_length(&request.cron)?;
    parse_firing_expression(&request.cron).map_err(invalid)?;
    parse_zone(&timezone).map_err(invalid)?;
    validate::job_spec(&request.template)?;
    validate::admission_resources(&request.template.resources)?;
    check_catch_up(request.catch_up)?;
    Ok(Command::ScheduleCreate {
        schedule: ScheduleId(new_id("sch")),
        business,
        name: request.name,
        cron: request.cron.trim().to_string(),
        timezone,
        template: request.template,
        enabled: request.enabled.unwrap_or(true),
        overlap: request.overlap.unwrap_or_default(),
        catch_up: request.catch_up.unwrap_or_default(),
        at,
    })
}

/// Checks the fields a patch changes.
pub(crate) fn check_patch(patch: &ScheduleUpdateRequest) -> Result<(), ApiError> {
    if let Some(cron) = &patch.cron {
        check_cron_length(cron)?;
        parse_firing_expression(cron).map_err(invalid)?;
    }
    check_catch_up(patch.catch_up)?;
    if let Some(zone) = &patch.timezone {
        parse_zone(zone).map_err(invalid)?;
    }
    if let Some(template) = &patch.template {
        validate::job_spec(template)?;
        validate::admission_resources(&template.resources)?;
    }
    Ok(())
}

/// `apply` keeps expressions to 256 bytes.
fn check_cron_length(cron: &str) -> Result<(), ApiError> {
    if cron.len() > 256 {
        return Err(ApiError::Invalid(
            "cron expressions are at most 256 bytes".into(),
        ));
    }
    Ok(())
}

/// `all` catch-up takes 1 to 1000 fires, as `apply` allows.
fn check_catch_up(catch_up: Option<CatchUpPolicy>) -> Result<(), ApiError> {
    match catch_up {
        Some(CatchUpPolicy::All(n)) if n == 0 || n > 1000 => {
            Err(ApiError::Invalid("catch-up `all` takes 1 to 1000".into()))
        }
        _ => Ok(()),
    }
}

/// A written schedule with its next due time after the write (`updated_at` is the
/// write's time), so a replayed write answers exactly as the first one did.
fn written_view(effect: Effect) -> Result<ScheduleView, ApiError> {
    let schedule = effect_schedule(effect)?;
    let at = schedule.updated_at;
    Ok(view(schedule, at))
}

/// A schedule with its next due time after `now` (none while disabled).
pub(crate) fn view(schedule: Schedule, now: Millis) -> ScheduleView {
    let next_fire_at = if schedule.enabled {
        CronSchedule::parse(&schedule.cron, &schedule.timezone)
            .ok()
            .and_then(|cron| cron.next_after(now))
    } else {
        None
    };
    ScheduleView {
        schedule,
        next_fire_at,
    }
}

fn owner(state: &DomainState, schedule: &ScheduleId) -> Option<BusinessId> {
    state.schedule(schedule).map(|s| s.business.clone())
}

/// A schedule this principal may see, or 404.
pub(crate) fn visible_schedule<'s>(
    state: &'s DomainState,
    principal: &Principal,
    id: &ScheduleId,
) -> Result<&'s Schedule, ApiError> {
    state
        .schedule(id)
        .filter(|s| principal.sees(&s.business))
        .ok_or_else(|| ApiError::not_found("schedule", id))
}

/// Schedules, narrowed to one business when given.
pub(crate) fn list_schedules(
    state: &DomainState,
    business: Option<&BusinessId>,
    now: Millis,
) -> ScheduleListResponse {
    ScheduleListResponse {
        schedules: state
            .schedules()
            .filter(|s| business.is_none_or(|b| &s.business == b))
            .map(|s| view(s.clone(), now))
            .collect(),
        index: state.applied_index(),
    }
}

fn effect_schedule(effect: Effect) -> Result<Schedule, ApiError> {
    match effect {
        Effect::Schedule { schedule } => Ok(*schedule),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tanvrit_api::{JobSpec, KeyId};

    fn user(business: &str) -> Principal {
        Principal {
            key: KeyId::from("key-u"),
            scope: Scope::User,
            business: Some(BusinessId::from(business)),
            node: None,
        }
    }

    fn request(cron: &str, timezone: Option<&str>) -> ScheduleCreateRequest {
        ScheduleCreateRequest {
            business: None,
            name: Some("nightly".into()),
            cron: cron.into(),
            timezone: timezone.map(str::to_string),
            template: JobSpec {
                command: vec!["backup".into()],
                ..JobSpec::default()
            },
            enabled: None,
            overlap: None,
            catch_up: None,
        }
    }

    // 2026-01-10T08:00:00Z
    const NOW: Millis = 1_768_032_000_000;

    #[test]
    fn a_schedule_defaults_to_utc_enabled_and_computes_its_next_fire_when_read() {
        let command = create_command(&user("acme"), request("0 9 * * *", None), NOW).unwrap();
        let mut state = DomainState::new();
        let effect = state.apply(1, &command).unwrap();
        let schedule = effect_schedule(effect).unwrap();
        assert_eq!(schedule.timezone, "UTC");
        assert!(schedule.enabled);
        assert!(schedule.id.as_str().starts_with("sch-"));
        let shown = view(schedule.clone(), NOW);
        assert_eq!(shown.next_fire_at, Some(NOW + 3600 * 1000), "09:00 UTC");
        let disabled = Schedule {
            enabled: false,
            ..schedule
        };
        assert_eq!(view(disabled, NOW).next_fire_at, None);
    }

    #[test]
    fn invalid_cron_expressions_and_zones_are_refused_before_proposing() {
        for (cron, zone) in [
            ("61 * * * *", None),
            ("* * *", None),
            ("0 9 * * *", Some("Nowhere/City")),
        ] {
            let error = create_command(&user("acme"), request(cron, zone), NOW).unwrap_err();
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (422, "invalid"),
                "{cron} {zone:?}"
            );
        }
        let mut bad_template = request("@daily", Some("Europe/Berlin"));
        bad_template.template.command.clear();
        assert_eq!(
            create_command(&user("acme"), bad_template, NOW)
                .unwrap_err()
                .code(),
            "invalid"
        );
    }

    #[test]
    fn patches_are_checked_field_by_field() {
        assert!(check_patch(&ScheduleUpdateRequest::default()).is_ok());
        let cron = ScheduleUpdateRequest {
            cron: Some("not cron".into()),
            ..Default::default()
        };
        assert_eq!(check_patch(&cron).unwrap_err().code(), "invalid");
        let zone = ScheduleUpdateRequest {
            timezone: Some("Europe/Atlantis".into()),
            ..Default::default()
        };
        assert_eq!(check_patch(&zone).unwrap_err().code(), "invalid");
        let catch_up = ScheduleUpdateRequest {
            catch_up: Some(CatchUpPolicy::All(0)),
            ..Default::default()
        };
        assert_eq!(check_patch(&catch_up).unwrap_err().code(), "invalid");
        let ok = ScheduleUpdateRequest {
            cron: Some("*/15 * * * *".into()),
            timezone: Some("Asia/Tokyo".into()),
            ..Default::default()
        };
        assert!(check_patch(&ok).is_ok());
    }

    #[test]
    fn user_keys_list_and_see_only_their_own_schedules() {
        let mut state = DomainState::new();
        for (index, business) in ["acme", "globex"].iter().enumerate() {
            let command = create_command(&user(business), request("@hourly", None), NOW).unwrap();
            state.apply(index as u64 + 1, &command).unwrap();
        }
        let all = list_schedules(&state, None, NOW);
        assert_eq!(all.schedules.len(), 2);
        let acme = list_schedules(&state, Some(&BusinessId::from("acme")), NOW);
        assert_eq!(acme.schedules.len(), 1);
        let id = acme.schedules[0].schedule.id.clone();
        assert!(visible_schedule(&state, &user("acme"), &id).is_ok());
        assert_eq!(
            visible_schedule(&state, &user("globex"), &id)
                .unwrap_err()
                .status()
                .as_u16(),
            404
        );
    }
}
