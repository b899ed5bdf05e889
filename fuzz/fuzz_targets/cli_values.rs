//! The CLI's flag value parsers (`tanvrit_cli::parse`) and the cron and zone parsers take any
//! text without panicking, and the parsers agree with their formatters: a parsed
//! credit amount or a time formats to text that parses back to the same value
//! (a time to its whole second).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tanvrit_cli::parse;
use tanvrit_server::cron;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = parse::duration(text) {
        // `duration_secs` rounds a started second up; it must never round below it.
        if let Ok(secs) = parse::duration_secs(text) {
            assert!(u128::from(secs) * 1000 >= duration.as_millis());
        }
    }
    if let Ok(policy) = parse::catch_up(text) {
        assert_eq!(
            parse::catch_up(&parse::format_catch_up(&policy)),
            Ok(policy)
        );
    }
    if let Ok((key, value)) = parse::key_value(text) {
        assert!(!key.is_empty());
        assert_eq!(format!("{key}={value}"), text);
    }
    if let Ok(amount) = parse::credits(text) {
        let shown = parse::format_credits(amount);
        assert_eq!(
            parse::credits(&shown),
            Ok(amount),
            "{text:?} showed as {shown:?}"
        );
    }
    if let Ok(millis) = parse::time(text) {
        // Output shows whole seconds, and what it shows reads back as that second; a
        // time RFC 3339 cannot show (before 1970, after 9999) shows as itself.
        let shown = parse::format_time(millis);
        let rfc3339 = (0..=253_402_300_799_999).contains(&millis);
        let expected = if rfc3339 {
            millis - millis % 1000
        } else {
            millis
        };
        assert_eq!(
            parse::time(&shown),
            Ok(expected),
            "{text:?} showed as {shown:?}"
        );
    }
    // Parsing only: due-time searches are fuzzed through schedule bodies (api_requests),
    // where a never-firing expression is refused before any search.
    let _ = cron::parse_expression(text);
    let _ = cron::parse_zone(text);
});
