//! Request bodies: the server's body parser (`tanvrit_server::extract::parse`) takes
//! arbitrary bytes for every request type without panicking; an accepted body
//! re-serializes to one that parses to the same request; and the checks the handlers
//! run next (the state crate's validators, cron expressions and zones) never panic.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tanvrit_api::*;
use tanvrit_server::cron::{parse_firing_expression, CronSchedule};
use tanvrit_server::extract::parse;
use tanvrit_state::validate;

/// Parses `data` as `T`; an accepted body must survive a round trip unchanged.
fn accepted<T: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let request: T = parse(data).ok()?;
    let bytes = serde_json::to_vec(&request).expect("a parsed request serializes");
    let again: T = parse(&bytes).expect("a re-serialized request parses");
    assert_eq!(request, again, "the request changed on a round trip");
    Some(request)
}

fn job_spec(spec: &JobSpec) {
    let _ = validate::job_spec(spec);
}

/// As the schedule routes check a cron expression on a write, then as the cron loop
/// and reads use a stored one.
fn schedule(cron: &str, zone: Option<&str>, now: Millis) {
    if parse_firing_expression(cron).is_err() {
        return;
    }
    if let Ok(schedule) = CronSchedule::parse(cron, zone.unwrap_or("UTC")) {
        // The leader's cron loop asks for the due times of every schedule.
        let _ = schedule.next_after(now);
        let _ = schedule.previous_before(now);
    }
}

fuzz_target!(|data: &[u8]| {
    // A time for cron searches taken from the input, within a few centuries of 1970.
    let now = data
        .iter()
        .fold(0i64, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(i64::from(*b))
        })
        .rem_euclid(10_000_000_000_000);
    if let Some(request) = accepted::<JobSubmitRequest>(data) {
        job_spec(&request.spec);
        if let Some(key) = &request.idempotency_key {
            let _ = validate::idempotency_key(key);
        }
        if let Some(business) = &request.business {
            let _ = validate::identifier("business", business.as_str());
        }
    }
    accepted::<JobListRequest>(data);
    accepted::<JobActionRequest>(data);
    accepted::<JobLogsRequest>(data);
    accepted::<ReadRequest>(data);
    if let Some(request) = accepted::<NodeRegisterRequest>(data) {
        let _ = validate::identifier("node id", request.id.as_str());
    }
    accepted::<NodeListRequest>(data);
    accepted::<NodeDrainRequest>(data);
    accepted::<NodeDeleteRequest>(data);
    accepted::<HeartbeatRequest>(data);
    accepted::<WorkRequest>(data);
    accepted::<AttemptStartedRequest>(data);
    accepted::<AttemptFinishedRequest>(data);
    accepted::<LogAppendRequest>(data);
    accepted::<KeyCreateRequest>(data);
    if let Some(request) = accepted::<ReplicaAddRequest>(data) {
        let _ = validate::identifier("replica name", &request.name);
    }
    accepted::<ReplicaRemoveRequest>(data);
    if let Some(request) = accepted::<CreditEntryCreateRequest>(data) {
        let _ = validate::identifier("business", request.business.as_str());
    }
    accepted::<CreditBalanceRequest>(data);
    accepted::<CreditEntriesRequest>(data);
    accepted::<CreditExportRequest>(data);
    if let Some(request) = accepted::<ScheduleCreateRequest>(data) {
        job_spec(&request.template);
        schedule(&request.cron, request.timezone.as_deref(), now);
    }
    if let Some(request) = accepted::<ScheduleUpdateRequest>(data) {
        if let Some(template) = &request.template {
            job_spec(template);
        }
        if let Some(cron) = &request.cron {
            schedule(cron, request.timezone.as_deref(), now);
        }
    }
    accepted::<ScheduleListRequest>(data);
});
