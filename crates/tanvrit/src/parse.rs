//! Value parsers for flags (durations, `k=v` pairs, credit amounts, times) and the
//! matching formatters for output. Parsers return `String` errors so clap reports them
//! as usage errors (exit code 2).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tanvrit_api::{CatchUpPolicy, MicroCredits, Millis};

/// Micro-credits in one credit.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;

/// A duration with a unit: `90s`, `10m`, `2h`, `1h 30m`, `500ms`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 90s, 10m or 2h ({e})"))
}

/// A duration in whole seconds, at least one.
pub fn duration_secs(s: &str) -> Result<u64, String> {
    let d = duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}` is shorter than one second"));
    }
    // A started second counts: 1500ms is two seconds, never one.
    Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The most fires `all` catches up on (the API's limit).
pub const CATCH_UP_MAX: u32 = 1000;

/// A schedule's catch-up policy: `skip`, `latest-only`, `all` (up to 1000 missed fires)
/// or `all:N` (up to N, 1-1000).
pub fn catch_up(s: &str) -> Result<CatchUpPolicy, String> {
    let bad = || {
        format!(
            "`{s}` is not a catch-up policy: skip, latest-only, all or all:N (1-{CATCH_UP_MAX})"
        )
    };
    match s.trim() {
        "skip" => Ok(CatchUpPolicy::Skip),
        "latest-only" | "latest_only" => Ok(CatchUpPolicy::LatestOnly),
        "all" => Ok(CatchUpPolicy::All(CATCH_UP_MAX)),
        other => {
            let limit = other.strip_prefix("all:").ok_or_else(bad)?;
            match limit.parse::<u32>() {
                Ok(n) if (1..=CATCH_UP_MAX).contains(&n) => Ok(CatchUpPolicy::All(n)),
                _ => Err(bad()),
            }
        }
    }
}

/// A catch-up policy as the `--catch-up` flag takes it.
pub fn format_catch_up(policy: &CatchUpPolicy) -> String {
    match policy {
        CatchUpPolicy::Skip => "skip".into(),
        CatchUpPolicy::LatestOnly => "latest-only".into(),
        CatchUpPolicy::All(n) => format!("all:{n}"),
    }
}

/// A `key=value` pair; the value may contain `=` and may be empty.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// A decimal amount of credits, converted exactly to micro-credits: `1000`, `0.25`,
/// `-3.5`. More than six decimals (other than zeros) cannot be exact and are refused.
pub fn credits(s: &str) -> Result<MicroCredits, String> {
    let text = s.trim();
    let bad = || format!("`{s}` is not an amount of credits like 100, 0.5 or -2.25");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 6 {
        return Err(format!(
            "`{s}` has more than six decimals; one micro-credit (0.000001) is the smallest unit"
        ));
    }
    let too_big = || format!("`{s}` is too large");
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_big())?
    };
    let frac_micros: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    let micros = whole
        .checked_mul(MICROS_PER_CREDIT)
        .and_then(|w| w.checked_add(frac_micros))
        .ok_or_else(too_big)?;
    Ok(if negative { -micros } else { micros })
}

/// A point in time: RFC 3339 (`2026-01-02T03:04:05Z`), a date (`2026-01-02`, midnight
/// UTC), or milliseconds since the Unix epoch.
pub fn time(s: &str) -> Result<Millis, String> {
    let text = s.trim();
    if let Ok(millis) = text.parse::<Millis>() {
        return Ok(millis);
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let at = humantime::parse_rfc3339_weak(&full).map_err(|_| {
        format!("`{s}` is not a time like 2026-01-02, 2026-01-02T03:04:05Z or epoch milliseconds")
    })?;
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before 1970"))?
        .as_millis();
    Millis::try_from(millis).map_err(|_| format!("`{s}` is too far in the future"))
}

/// Micro-credits as credits, exact, without trailing zeros: `1000`, `0.036`, `-2.5`.
pub fn format_credits(micros: MicroCredits) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS_PER_CREDIT as u64;
    let frac = abs % MICROS_PER_CREDIT as u64;
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let frac = format!("{frac:06}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// The last millisecond RFC 3339 can show (9999-12-31T23:59:59.999Z): the format has
/// four-digit years, and humantime's formatter fails (a panic in `to_string`) past it.
const MAX_RFC3339_MILLIS: Millis = 253_402_300_799_999;

/// Epoch milliseconds as RFC 3339 UTC to the second; a time RFC 3339 cannot show
/// (before 1970 or after 9999) as its plain millisecond number, which [`time`] reads back.
pub fn format_time(millis: Millis) -> String {
    match u64::try_from(millis) {
        Ok(ms) if millis <= MAX_RFC3339_MILLIS => {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        _ => millis.to_string(),
    }
}

/// An optional time, `-` when absent.
pub fn format_opt_time(millis: Option<Millis>) -> String {
    millis.map(format_time).unwrap_or_else(|| "-".into())
}

/// Seconds as a short human duration: `1h`, `10m`, `90s` -> `1m 30s`.
pub fn format_secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_round_partial_seconds_up() {
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(duration("90").is_err());
        assert_eq!(duration_secs("1500ms").unwrap(), 2);
        assert!(duration_secs("10ms").is_err());
    }

    #[test]
    fn catch_up_policies_parse_from_their_flag_form_and_show_as_it() {
        assert_eq!(catch_up("skip"), Ok(CatchUpPolicy::Skip));
        assert_eq!(catch_up("latest-only"), Ok(CatchUpPolicy::LatestOnly));
        assert_eq!(catch_up("latest_only"), Ok(CatchUpPolicy::LatestOnly));
        assert_eq!(catch_up("all"), Ok(CatchUpPolicy::All(1000)));
        assert_eq!(catch_up("all:5"), Ok(CatchUpPolicy::All(5)));
        for bad in [
            "", "all:0", "all:1001", "all:", "all:-1", "every", "all:5x", "Skip",
        ] {
            assert!(catch_up(bad).is_err(), "{bad:?} was accepted");
        }
        for policy in [
            CatchUpPolicy::Skip,
            CatchUpPolicy::LatestOnly,
            CatchUpPolicy::All(1),
            CatchUpPolicy::All(1000),
        ] {
            assert_eq!(catch_up(&format_catch_up(&policy)), Ok(policy));
        }
    }

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(key_value("EMPTY=").unwrap(), ("EMPTY".into(), "".into()));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
    }

    #[test]
    fn credit_amounts_convert_exactly_to_micro_credits() {
        assert_eq!(credits("1000").unwrap(), 1_000_000_000);
        assert_eq!(credits("0.25").unwrap(), 250_000);
        assert_eq!(credits(".5").unwrap(), 500_000);
        assert_eq!(credits("-3.5").unwrap(), -3_500_000);
        assert_eq!(credits("0.000001").unwrap(), 1);
        assert_eq!(
            credits("1.2500000000").unwrap(),
            1_250_000,
            "trailing zeros are exact"
        );
        // 0.1 has no exact binary float; the decimal parse must not drift.
        assert_eq!(credits("0.1").unwrap(), 100_000);
        assert!(credits("0.0000001").is_err());
        assert!(credits("1e3").is_err());
        assert!(credits("").is_err());
        assert!(credits(".").is_err());
        assert!(credits("99999999999999999999").is_err());
    }

    #[test]
    fn credits_format_back_without_trailing_zeros() {
        assert_eq!(format_credits(1_000_000_000), "1000");
        assert_eq!(format_credits(36_000), "0.036");
        assert_eq!(format_credits(-2_500_000), "-2.5");
        assert_eq!(format_credits(i64::MIN), "-9223372036854.775808");
        for text in ["12.345678", "-0.000001", "7"] {
            assert_eq!(format_credits(credits(text).unwrap()), text);
        }
    }

    #[test]
    fn times_accept_rfc3339_dates_and_epoch_millis() {
        assert_eq!(time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(time("1234").unwrap(), 1234);
        assert!(time("yesterday").is_err());
        assert_eq!(format_time(86_400_000), "1970-01-02T00:00:00Z");
    }

    #[test]
    fn times_past_year_9999_format_as_millis_instead_of_panicking() {
        // Found by fuzz/cli_values: humantime cannot format a five-digit year.
        assert_eq!(format_time(MAX_RFC3339_MILLIS), "9999-12-31T23:59:59Z");
        assert_eq!(format_time(MAX_RFC3339_MILLIS + 1), "253402300800000");
        assert_eq!(format_time(54_544_454_444_444_444), "54544454444444444");
        assert_eq!(format_time(Millis::MAX), Millis::MAX.to_string());
        assert_eq!(
            time(&format_time(54_544_454_444_444_444)),
            Ok(54_544_454_444_444_444)
        );
        assert_eq!(format_time(-5), "-5");
    }
}
