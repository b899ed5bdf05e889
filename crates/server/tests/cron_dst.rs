//! Schedules across daylight-saving transitions, in zones that have them: each local
//! wall-clock tick fires once; a time inside the spring-forward gap fires once, right
//! after the jump (not twice, not at a time that is no due time); the repeated hour of
//! the fall-back fires once.
//!
//! The leader's cron loop fires the latest due time `previous_before(now + 1)` that is
//! newer than the last one it fired, waking at least every second and at `next_after`;
//! [`fires`] replays that rule with a simulated clock (looking every 5 s: what fires does
//! not depend on how often it looks while that is shorter than the gap between ticks).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use tanvrit_api::Millis;
use tanvrit_server::cron::CronSchedule;

fn at(rfc3339: &str) -> Millis {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn local(millis: Millis, zone: &str) -> String {
    let zone: Tz = zone.parse().unwrap();
    Utc.timestamp_millis_opt(millis)
        .unwrap()
        .with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// The due times the cron loop fires between `from` and `to` if it looks every
/// `step_ms`, in local time.
fn fires(expression: &str, zone: &str, from: &str, to: &str, step_ms: Millis) -> Vec<String> {
    let cron = CronSchedule::parse(expression, zone).unwrap();
    let (mut now, end) = (at(from), at(to));
    let mut last = now;
    let mut fired = Vec::new();
    while now <= end {
        if let Some(due) = cron.previous_before(now + 1).filter(|due| *due > last) {
            fired.push(local(due, zone));
            last = due;
        }
        now += step_ms;
    }
    fired
}

/// Every due time `next_after` gives from `from` on, up to `to`.
fn forward(cron: &CronSchedule, from: Millis, to: Millis) -> Vec<Millis> {
    let mut due = Vec::new();
    let mut cursor = from;
    while let Some(next) = cron.next_after(cursor).filter(|next| *next <= to) {
        due.push(next);
        cursor = next;
    }
    due
}

#[test]
fn a_daily_time_inside_the_spring_forward_gap_fires_once_right_after_the_jump() {
    // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 never happens.
    let fired = fires(
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T23:00:00Z",
        "2026-03-29T03:00:00Z",
        5_000,
    );
    assert_eq!(fired, vec!["2026-03-29 03:00:00 CEST"]);
    let cron = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
    assert_eq!(
        forward(
            &cron,
            at("2026-03-27T12:00:00Z"),
            at("2026-03-31T12:00:00Z")
        )
        .into_iter()
        .map(|due| local(due, "Europe/Berlin"))
        .collect::<Vec<_>>(),
        vec![
            "2026-03-28 02:30:00 CET",
            "2026-03-29 03:00:00 CEST",
            "2026-03-30 02:30:00 CEST",
            "2026-03-31 02:30:00 CEST",
        ],
        "the days around the jump keep their 02:30"
    );
}

#[test]
fn an_hourly_schedule_skips_the_missing_local_hour_and_fires_the_next_one_once() {
    let fired = fires(
        "0 * * * *",
        "Europe/Berlin",
        "2026-03-28T23:30:00Z",
        "2026-03-29T02:30:00Z",
        5_000,
    );
    assert_eq!(
        fired,
        vec![
            "2026-03-29 01:00:00 CET",
            "2026-03-29 03:00:00 CEST",
            "2026-03-29 04:00:00 CEST",
        ]
    );
}

#[test]
fn the_repeated_hour_of_the_fall_back_fires_each_wall_clock_tick_once() {
    // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice.
    let daily = fires(
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T22:00:00Z",
        "2026-10-25T03:00:00Z",
        5_000,
    );
    assert_eq!(
        daily,
        vec!["2026-10-25 02:30:00 CEST"],
        "not again at 02:30 CET"
    );
    let half_hourly = fires(
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-24T23:50:00Z",
        "2026-10-25T02:40:00Z",
        5_000,
    );
    assert_eq!(
        half_hourly,
        vec![
            "2026-10-25 02:00:00 CEST",
            "2026-10-25 02:30:00 CEST",
            "2026-10-25 03:00:00 CET",
            "2026-10-25 03:30:00 CET",
        ]
    );
}

#[test]
fn new_york_transitions_behave_the_same_way() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT.
    let spring = fires(
        "30 2 * * *",
        "America/New_York",
        "2026-03-08T05:00:00Z",
        "2026-03-08T09:00:00Z",
        5_000,
    );
    assert_eq!(spring, vec!["2026-03-08 03:00:00 EDT"]);
    // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    let fall = fires(
        "30 1 * * *",
        "America/New_York",
        "2026-11-01T04:00:00Z",
        "2026-11-01T08:00:00Z",
        5_000,
    );
    assert_eq!(fall, vec!["2026-11-01 01:30:00 EDT"]);
}

#[test]
fn a_seconds_schedule_runs_straight_through_both_transitions() {
    let cron = CronSchedule::parse("*/20 * * * * *", "Europe/Berlin").unwrap();
    for (from, to) in [
        ("2026-03-29T00:55:00Z", "2026-03-29T01:05:00Z"),
        ("2026-10-25T00:55:00Z", "2026-10-25T01:05:00Z"),
    ] {
        let due = forward(&cron, at(from), at(to));
        assert!(!due.is_empty());
        assert!(
            due.windows(2).all(|pair| pair[1] > pair[0]),
            "strictly increasing through {from}"
        );
        assert!(due.iter().all(|d| d % 20_000 == 0), "every 20 s of UTC too");
    }
}

#[test]
fn previous_and_next_agree_on_every_due_time_across_the_transitions() {
    for zone in ["Europe/Berlin", "America/New_York"] {
        for expression in [
            "30 2 * * *",
            "30 1 * * *",
            "0 * * * *",
            "*/30 * * * *",
            "15 2 * * 0",
        ] {
            let cron = CronSchedule::parse(expression, zone).unwrap();
            for (from, to) in [
                ("2026-03-06T00:00:00Z", "2026-03-11T00:00:00Z"),
                ("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
                ("2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"),
                ("2026-10-30T00:00:00Z", "2026-11-03T00:00:00Z"),
            ] {
                let due = forward(&cron, at(from), at(to));
                for pair in due.windows(2) {
                    assert_eq!(
                        cron.previous_before(pair[1]),
                        Some(pair[0]),
                        "{expression} {zone}: the one before {}",
                        local(pair[1], zone)
                    );
                    assert_eq!(cron.previous_before(pair[1] + 1), Some(pair[1]));
                    assert_eq!(pair[1] % 60_000, 0, "{expression} {zone}: whole minutes");
                }
            }
        }
    }
}
