//! Job wire types: what a submission that leaves resources out reserves, that stored
//! specs decode exactly, and the rates' defaults for jobs recorded before a field existed.

use tanvrit_api::*;

fn spec(json: &str) -> JobSpec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_spec_naming_no_resources_reserves_the_job_defaults() {
    let none = spec(r#"{"command": ["true"]}"#);
    assert_eq!(none.resources, Resources::JOB_DEFAULT);
    assert_eq!(none.resources.cpu_millis, 1000);
    assert_eq!(none.resources.memory_mb, 256);
    assert_eq!(JobSpec::default().resources, Resources::JOB_DEFAULT);
}

#[test]
fn a_field_left_out_of_resources_is_its_default_and_an_explicit_zero_stays_zero() {
    let cpu_only = spec(r#"{"command": ["true"], "resources": {"cpu_millis": 500}}"#);
    assert_eq!(
        cpu_only.resources,
        Resources {
            cpu_millis: 500,
            memory_mb: 256,
            gpus: 0
        }
    );
    let zero = spec(r#"{"command": ["true"], "resources": {"cpu_millis": 0, "memory_mb": 0}}"#);
    assert_eq!(
        (zero.resources.cpu_millis, zero.resources.memory_mb),
        (0, 0)
    );
    let unknown: Result<JobSpec, _> =
        serde_json::from_str(r#"{"command": ["x"], "resources": {"cpus": 1}}"#);
    assert!(unknown.is_err());
}

#[test]
fn a_stored_spec_decodes_to_exactly_what_was_stored() {
    let stored = JobSpec {
        command: vec!["true".into()],
        resources: Resources::default(),
        ..JobSpec::default()
    };
    let text = serde_json::to_string(&stored).unwrap();
    assert_eq!(spec(&text), stored);
}

#[test]
fn zero_cpu_or_memory_is_replaced_by_the_job_defaults_and_the_rest_kept() {
    let old = Resources {
        cpu_millis: 0,
        memory_mb: 64,
        gpus: 1,
    };
    assert_eq!(
        old.or_job_defaults(),
        Resources {
            cpu_millis: 1000,
            memory_mb: 64,
            gpus: 1
        }
    );
}

#[test]
fn rates_recorded_before_the_attempt_minimum_have_none() {
    let old: Rates =
        serde_json::from_str(r#"{"cpu_second": 1, "memory_gb_second": 2, "gpu_second": 3}"#)
            .unwrap();
    assert_eq!(old.attempt_minimum, 0);
    assert_eq!(old.basis, BillingBasis::Reserved);
    let used: Rates = serde_json::from_str(
        r#"{"cpu_second": 1, "memory_gb_second": 2, "gpu_second": 3, "basis": "used"}"#,
    )
    .unwrap();
    assert_eq!(used.basis, BillingBasis::Used);
    assert_eq!("used".parse(), Ok(BillingBasis::Used));
    assert!("measured".parse::<BillingBasis>().is_err());
}
