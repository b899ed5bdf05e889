//! Pure checks of user input, shared by the API (to answer 422 early) and `apply`.

use tanvrit_api::{JobSpec, Resources};

use crate::Rejection;

/// The longest job timeout: seven days.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Longest argv, env, label or name strings we accept.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Most argv items, env entries or labels.
pub const MAX_ITEMS: usize = 1024;

/// Checks a job spec (also used for schedule templates).
pub fn job_spec(spec: &JobSpec) -> Result<(), Rejection> {
    let invalid = |m: String| Err(Rejection::Invalid { message: m });
    match (&spec.shell, spec.command.is_empty()) {
        (Some(_), false) => return invalid("give either `command` or `shell`, not both".into()),
        (None, true) => return invalid("`command` (argv) or `shell` is required".into()),
        (Some(shell), true) if shell.trim().is_empty() => {
            return invalid("`shell` must not be empty".into())
        }
        _ => {}
    }
    if spec.command.first().is_some_and(|a| a.is_empty()) {
        return invalid("`command[0]` must not be empty".into());
    }
    if spec.command.len() > MAX_ITEMS || spec.env.len() > MAX_ITEMS || spec.labels.len() > MAX_ITEMS
    {
        return invalid(format!(
            "at most {MAX_ITEMS} argv items, env entries and labels"
        ));
    }
    let strings = spec
        .command
        .iter()
        .chain(spec.shell.iter())
        .chain(spec.name.iter())
        .chain(spec.working_dir.iter())
        .chain(spec.image.iter())
        .chain(spec.env.iter().flat_map(|(k, v)| [k, v]))
        .chain(spec.labels.iter().flat_map(|(k, v)| [k, v]));
    for s in strings {
        if s.len() > MAX_STRING_BYTES {
            return invalid(format!("strings are limited to {MAX_STRING_BYTES} bytes"));
        }
        if s.contains('\0') {
            return invalid("strings must not contain NUL bytes".into());
        }
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') {
            return invalid(format!(
                "env name `{}` must be non-empty and contain no `=`",
                short(key)
            ));
        }
    }
    for key in spec.labels.keys() {
        if key.is_empty() {
            return invalid("label names must not be empty".into());
        }
    }
    if spec.timeout_secs == 0 || spec.timeout_secs > MAX_TIMEOUT_SECS {
        return invalid(format!(
            "`timeout_secs` must be between 1 and {MAX_TIMEOUT_SECS}"
        ));
    }
    if let Some(image) = &spec.image {
        let ok = !image.is_empty()
            && image.len() <= 256
            && !image.starts_with('-')
            && image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c));
        if !ok {
            return invalid(format!(
                "image `{}` must be 1-256 characters of letters, digits, `-_.:/@`",
                short(image)
            ));
        }
    }
    if spec.network && spec.image.is_none() {
        return invalid("`network` applies to jobs with an `image`".into());
    }
    if spec.max_retries > 100 {
        return invalid("`max_retries` must be at most 100".into());
    }
    if !(-1000..=1000).contains(&spec.priority) {
        return invalid("`priority` must be between -1000 and 1000".into());
    }
    let r = &spec.resources;
    if r.cpu_millis > 1_000_000 || r.memory_mb > 64 * 1024 * 1024 || r.gpus > 1024 {
        return invalid(
            "resources exceed any node (cpu_millis <= 1e6, memory_mb <= 64 TiB, gpus <= 1024)"
                .into(),
        );
    }
    Ok(())
}

/// Checks the resources a new job (or a schedule's template) reserves: zero CPU or zero
/// memory is refused, so nothing runs with no reservation, no limit and no charge.
///
/// Called at admission (the API, before a submission or template is proposed), not by
/// `apply`: log entries written before the rule replay exactly as they applied.
pub fn admission_resources(resources: &Resources) -> Result<(), Rejection> {
    let zero = if resources.cpu_millis == 0 {
        "cpu_millis"
    } else if resources.memory_mb == 0 {
        "memory_mb"
    } else {
        return Ok(());
    };
    Err(Rejection::ZeroResources {
        resource: zero.into(),
    })
}

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Checks an `Idempotency-Key`: 1-256 bytes of printable ASCII (space to `~`), not
/// starting or ending with a space (HTTP would trim it, so it could never match again).
pub fn idempotency_key(key: &str) -> Result<(), Rejection> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES
        && key.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !key.starts_with(' ')
        && !key.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(Rejection::Invalid {
            message: format!(
                "idempotency keys are 1-{MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters, \
                 without leading or trailing spaces"
            ),
        })
    }
}

/// Most characters of a caller's value an error message quotes.
pub const QUOTE_MAX_CHARS: usize = 64;

/// `value` as an error message may quote it: whole when short, else its first
/// [`QUOTE_MAX_CHARS`] characters and `…`, so an oversized id never comes back whole.
pub fn short(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(QUOTE_MAX_CHARS) {
        None => std::borrow::Cow::Borrowed(value),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &value[..end])),
    }
}

/// Checks a business id, node id or other name-like identifier.
pub fn identifier(what: &str, value: &str) -> Result<(), Rejection> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::Invalid {
            message: format!(
                "{what} `{}` must be 1-128 characters of letters, digits, `-`, `_`, `.`, `:`",
                short(value)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> JobSpec {
        JobSpec {
            command: a.iter().map(|s| s.to_string()).collect(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_spec_needs_exactly_one_of_command_and_shell() {
        assert!(job_spec(&argv(&["echo", "hi"])).is_ok());
        assert!(job_spec(&argv(&[])).is_err());
        let mut both = argv(&["echo"]);
        both.shell = Some("echo".into());
        assert!(job_spec(&both).is_err());
        let shell = JobSpec {
            shell: Some("echo hi | wc -c".into()),
            ..JobSpec::default()
        };
        assert!(job_spec(&shell).is_ok());
    }

    #[test]
    fn timeouts_outside_one_second_to_a_week_are_invalid() {
        let mut spec = argv(&["true"]);
        spec.timeout_secs = 0;
        assert!(job_spec(&spec).is_err());
        spec.timeout_secs = MAX_TIMEOUT_SECS + 1;
        assert!(job_spec(&spec).is_err());
    }

    #[test]
    fn zero_cpu_or_memory_is_refused_at_admission_with_its_own_code() {
        assert!(admission_resources(&Resources::JOB_DEFAULT).is_ok());
        for (cpu_millis, memory_mb, named) in [(0, 256, "cpu_millis"), (1000, 0, "memory_mb")] {
            let err = admission_resources(&Resources {
                cpu_millis,
                memory_mb,
                gpus: 0,
            })
            .unwrap_err();
            assert_eq!((err.code(), err.http_status()), ("zero_resources", 422));
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn images_are_plain_references_and_a_network_needs_an_image() {
        let with = |image: &str| JobSpec {
            image: Some(image.into()),
            ..argv(&["true"])
        };
        assert!(job_spec(&with("tanvrit-test-busybox:1")).is_ok());
        assert!(job_spec(&with("registry.local/team/app@sha256:abc")).is_ok());
        for bad in ["", "--privileged", "img name", "img;rm", &"i".repeat(257)] {
            assert!(job_spec(&with(bad)).is_err(), "{bad:?}");
        }
        let network_only = JobSpec {
            network: true,
            ..argv(&["true"])
        };
        assert!(job_spec(&network_only).is_err());
        assert!(job_spec(&JobSpec {
            network: true,
            ..with("img")
        })
        .is_ok());
    }

    #[test]
    fn idempotency_keys_are_short_printable_ascii() {
        assert!(idempotency_key("retry-42").is_ok());
        assert!(idempotency_key("a b~!").is_ok());
        assert!(idempotency_key(&"k".repeat(256)).is_ok());
        for bad in ["", " a", "a ", "caf\u{e9}", "tab\there", &"k".repeat(257)] {
            assert!(idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identifiers_are_short_and_plain() {
        assert!(identifier("business", "acme-corp_1").is_ok());
        assert!(identifier("business", "").is_err());
        assert!(identifier("business", "a b").is_err());
        assert!(identifier("business", &"x".repeat(129)).is_err());
    }

    #[test]
    fn messages_quote_a_short_prefix_of_long_values() {
        assert_eq!(short("node-1"), "node-1");
        let long = "é".repeat(60_000);
        let quoted = short(&long);
        assert_eq!(quoted.chars().count(), QUOTE_MAX_CHARS + 1);
        assert!(quoted.ends_with('…'));
        let Err(Rejection::Invalid { message }) = identifier("job id", &"x".repeat(60_000)) else {
            panic!("a 60 KB id is invalid");
        };
        assert!(message.len() < 300, "{} bytes", message.len());
    }
}
