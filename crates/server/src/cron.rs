//! Cron expressions and time zones of schedules: checked before a schedule is written
//! (so `apply`, which knows no calendar, only ever sees valid ones), the next due time
//! computed at read time, the due times the leader's cron loop fires, and the job id of
//! each fire, derived from (schedule, due time) and read back by [`fire_due_at`].
//!
//! Accepted: 5 fields (`min hour dom month dow`), 6 fields with a leading seconds field,
//! and the `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly` nicknames. Zones are IANA
//! names (`Europe/Berlin`, `UTC`); due times follow the zone's DST rules.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use sha2::{Digest, Sha256};
use tanvrit_api::{JobId, Millis, ScheduleId};

/// A parsed cron expression bound to its time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

/// Why a cron expression or zone was refused (a 422 `invalid` on the API).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression does not parse.
    #[error("invalid cron expression `{expression}`: {reason}")]
    Expression {
        /// What was given.
        expression: String,
        /// What the parser said.
        reason: String,
    },
    /// Not an IANA zone name.
    #[error("unknown time zone `{0}` (use an IANA name such as `Europe/Berlin` or `UTC`)")]
    Zone(String),
}

impl CronError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        "invalid"
    }
}

fn parser() -> CronParser {
    // Years stay out: a 7th field is refused, as DESIGN.md promises 5 or 6 fields.
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Checks a cron expression alone.
pub fn parse_expression(expression: &str) -> Result<Cron, CronError> {
    let refuse = |reason: String| CronError::Expression {
        expression: expression.to_string(),
        reason,
    };
    let trimmed = expression.trim();
    let fields = trimmed.split_whitespace().count();
    if trimmed.starts_with('@') {
        if fields != 1 {
            return Err(refuse("a nickname such as `@hourly` stands alone".into()));
        }
    } else if !(5..=6).contains(&fields) {
        return Err(refuse(format!(
            "{fields} fields; use 5 (min hour dom month dow) or 6 (with leading seconds)"
        )));
    }
    parser().parse(trimmed).map_err(|e| refuse(e.to_string()))
}

/// Checks a cron expression as a write must: it parses, and it fires at all. croner
/// accepts a date no year has (`0 0 30 2 *`, `0 0 31 4 *`) and then searches years
/// ahead on every lookup before giving up (a fifth of a second in a release build); the
/// leader's cron loop would spend that on every pass for every such schedule, so one is
/// refused when written instead. Run this on writes only: it costs that search itself.
pub fn parse_firing_expression(expression: &str) -> Result<Cron, CronError> {
    let cron = parse_expression(expression)?;
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(CronError::Expression {
            expression: expression.to_string(),
            reason: "it never fires: no date matches its day and month fields".into(),
        });
    }
    Ok(cron)
}

/// Checks an IANA zone name.
pub fn parse_zone(zone: &str) -> Result<Tz, CronError> {
    zone.parse::<Tz>()
        .map_err(|_| CronError::Zone(zone.to_string()))
}

impl CronSchedule {
    /// Parses an expression and a zone.
    pub fn parse(expression: &str, zone: &str) -> Result<Self, CronError> {
        Ok(Self {
            cron: parse_expression(expression)?,
            zone: parse_zone(zone)?,
        })
    }

    /// The first due time strictly after `after` (ms since the epoch), if there is one.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        // Cron works in whole seconds, and croner carries the start's fraction of a
        // second into what it finds; start from the whole second instead (still
        // strictly after: a due time in that second is not after `after`).
        let whole_second = after.div_euclid(1000) * 1000;
        let start: DateTime<Utc> = Utc.timestamp_millis_opt(whole_second).single()?;
        let local = start.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|due| due.timestamp_millis())
    }

    /// The last due time strictly before `before` (ms since the epoch), if there is one.
    /// `previous_before(now + 1)` is the latest due time at or before `now`.
    ///
    /// Due times are the ones [`CronSchedule::next_after`] gives, so the cron loop fires
    /// what `schedules/get` announces. croner's backward search disagrees inside a DST
    /// gap: it puts a time that does not exist (02:30 on a spring-forward night) at the
    /// gap's last second (01:59:59), where the forward search puts it at the first
    /// instant after the jump (03:00). A backward candidate is therefore checked with
    /// the forward search, which also finds such a shifted due time the backward one
    /// stepped over.
    pub fn previous_before(&self, before: Millis) -> Option<Millis> {
        let mut bound = before;
        // A mismatch happens at most once per gap, so two rounds suffice; the bound only
        // keeps a misbehaving calendar from looping.
        for _ in 0..MAX_GAP_ROUNDS {
            let candidate = self.backward_before(bound)?;
            // The first forward due time at or after the candidate.
            let due = self.next_after(candidate - 1)?;
            if due < before {
                return Some(self.last_forward_before(due, before));
            }
            bound = candidate;
        }
        None
    }

    /// croner's own previous occurrence strictly before `before`.
    fn backward_before(&self, before: Millis) -> Option<Millis> {
        // Due times are whole seconds: one in the second `before` falls in counts only
        // when `before` is past that second's start.
        let whole_second = before.div_euclid(1000) * 1000;
        let inclusive = whole_second < before;
        let start: DateTime<Utc> = Utc.timestamp_millis_opt(whole_second).single()?;
        let local = start.with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&local, inclusive)
            .ok()
            .map(|due| due.timestamp_millis())
    }

    /// The last forward due time before `before`, walking on from `due` (itself one).
    fn last_forward_before(&self, mut due: Millis, before: Millis) -> Millis {
        for _ in 0..MAX_GAP_ROUNDS {
            match self.next_after(due) {
                Some(next) if next < before => due = next,
                _ => break,
            }
        }
        due
    }
}

/// The job id of a schedule's fire at `due_at`: `job-<uuid v7>` with the due time as its
/// timestamp and hash bytes of the schedule id as the rest, so the same tick gives the
/// same id on every replica and every leader, and ids still sort by due time.
pub fn fire_job_id(schedule: &ScheduleId, due_at: Millis) -> JobId {
    let digest = Sha256::digest(schedule.as_str().as_bytes());
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(due_at).unwrap_or(0);
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid();
    JobId(format!("job-{uuid}"))
}

/// The due time a fired job was created for, read back from its id (see
/// [`fire_job_id`]); `None` for an id that is not `job-<uuid v7>`. Only meaningful for a
/// job whose `schedule` is set: the id of any v7 job carries a timestamp.
pub fn fire_due_at(job: &JobId) -> Option<Millis> {
    crate::app::job_id_time(job)
}

/// Rounds of [`CronSchedule::previous_before`]'s reconciliation of croner's backward and
/// forward searches (one is needed per DST gap in the way).
const MAX_GAP_ROUNDS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-01-10T08:00:00Z
    const TEN_JAN: Millis = 1_768_032_000_000;

    #[test]
    fn fire_job_ids_derive_from_the_schedule_and_due_time_only() {
        let a = ScheduleId::from("sch-a");
        let b = ScheduleId::from("sch-b");
        assert_eq!(fire_job_id(&a, TEN_JAN), fire_job_id(&a, TEN_JAN));
        assert_ne!(fire_job_id(&a, TEN_JAN), fire_job_id(&b, TEN_JAN));
        assert_ne!(fire_job_id(&a, TEN_JAN), fire_job_id(&a, TEN_JAN + 1000));
        assert!(fire_job_id(&a, TEN_JAN) < fire_job_id(&a, TEN_JAN + 1000));
        let id = fire_job_id(&a, TEN_JAN);
        assert_eq!(
            fire_due_at(&id),
            Some(TEN_JAN),
            "the uuid's timestamp is the due time"
        );
        assert_eq!(fire_due_at(&JobId::from("job-1")), None);
        assert!(tanvrit_state::validate::identifier("job id", id.as_str()).is_ok());
    }

    fn at(rfc3339: &str) -> Millis {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn five_and_six_field_expressions_and_nicknames_are_accepted() {
        for expression in [
            "*/5 * * * *",
            "0 9 * * mon-fri",
            "30 */10 * * * *",
            "@hourly",
            "@daily",
            " 0 0 1 * * ",
        ] {
            assert!(parse_expression(expression).is_ok(), "{expression}");
        }
    }

    #[test]
    fn malformed_expressions_are_invalid() {
        for expression in [
            "",
            "* * * *",
            "0 0 0 1 1 * 2030",
            "61 * * * *",
            "* 25 * * *",
            "@sometimes",
            "@hourly *",
            "every minute",
        ] {
            let error = parse_expression(expression).unwrap_err();
            assert_eq!(error.code(), "invalid", "{expression}");
        }
    }

    #[test]
    fn zones_are_iana_names() {
        assert!(parse_zone("UTC").is_ok());
        assert!(parse_zone("Europe/Berlin").is_ok());
        assert!(parse_zone("America/Argentina/Buenos_Aires").is_ok());
        assert_eq!(
            parse_zone("Mars/Olympus").unwrap_err(),
            CronError::Zone("Mars/Olympus".into())
        );
        assert!(parse_zone("").is_err());
    }

    #[test]
    fn the_next_due_time_is_strictly_after_and_in_the_schedules_zone() {
        let utc = CronSchedule::parse("0 9 * * *", "UTC").unwrap();
        assert_eq!(
            utc.next_after(at("2026-01-10T08:00:00Z")),
            Some(at("2026-01-10T09:00:00Z"))
        );
        assert_eq!(
            utc.next_after(at("2026-01-10T09:00:00Z")),
            Some(at("2026-01-11T09:00:00Z")),
            "a due time equal to `after` is not next"
        );
        // 09:00 in Berlin is 08:00 UTC in winter.
        let berlin = CronSchedule::parse("0 9 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            berlin.next_after(at("2026-01-10T07:00:00Z")),
            Some(at("2026-01-10T08:00:00Z"))
        );
        // ... and 07:00 UTC in summer (DST).
        assert_eq!(
            berlin.next_after(at("2026-07-10T06:00:00Z")),
            Some(at("2026-07-10T07:00:00Z"))
        );
    }

    #[test]
    fn due_times_are_whole_seconds_whatever_the_millisecond_of_the_start() {
        let every_five = CronSchedule::parse("*/5 * * * *", "UTC").unwrap();
        let start = at("2026-01-10T08:03:00Z") + 606;
        assert_eq!(
            every_five.next_after(start),
            Some(at("2026-01-10T08:05:00Z"))
        );
        let every_second = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let half_past = at("2026-01-10T08:00:00Z") + 500;
        assert_eq!(
            every_second.next_after(half_past),
            Some(at("2026-01-10T08:00:01Z"))
        );
    }

    #[test]
    fn a_leading_seconds_field_fires_within_the_minute() {
        let every_ten = CronSchedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            every_ten.next_after(at("2026-01-10T08:00:01Z")),
            Some(at("2026-01-10T08:00:10Z"))
        );
    }

    #[test]
    fn the_previous_due_time_is_strictly_before_and_whole_seconds_count_when_passed() {
        let every_second = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let eight = at("2026-01-10T08:00:00Z");
        assert_eq!(every_second.previous_before(eight), Some(eight - 1000));
        assert_eq!(
            every_second.previous_before(eight + 1),
            Some(eight),
            "a due time at `before - 1 ms` counts"
        );
        assert_eq!(every_second.previous_before(eight + 999), Some(eight));
        let nine_daily = CronSchedule::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter.
        assert_eq!(
            nine_daily.previous_before(at("2026-01-10T07:59:59Z")),
            Some(at("2026-01-09T08:00:00Z"))
        );
        assert_eq!(
            nine_daily.previous_before(at("2026-01-10T08:00:00.001Z")),
            Some(at("2026-01-10T08:00:00Z"))
        );
    }
}
