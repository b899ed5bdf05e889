//! Nothing runs free: the attempt minimum is held at admission and charged for every
//! attempt that ran, whatever the job reserved, and schedule templates stored with zero
//! resources fire with the job defaults.

mod support;

use support::*;
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, Effect, Fire, Rejection};

/// Free resources, but every attempt costs at least 500.
const MINIMUM_ONLY: Rates = Rates {
    cpu_second: 0,
    memory_gb_second: 0,
    gpu_second: 0,
    attempt_minimum: 500,
    basis: tanvrit_api::BillingBasis::Reserved,
};

fn submit_at(job: &str, spec: JobSpec, rates: Rates) -> Command {
    Command::JobSubmit {
        job: job.into(),
        business: "acme".into(),
        spec,
        idempotency_key: None,
        rates,
        at: 10,
    }
}

#[test]
fn a_business_with_no_credits_cannot_start_a_job_with_or_without_resources() {
    let mut state = applied(&[register("n1", 4000)]);
    let defaults = JobSpec {
        command: vec!["sleep".into(), "15".into()],
        ..JobSpec::default()
    };
    assert_eq!(defaults.resources, Resources::JOB_DEFAULT);
    for (job, spec) in [("with-defaults", defaults), ("no-resources", spec(0, 60))] {
        for rates in [
            MINIMUM_ONLY,
            Rates {
                attempt_minimum: 1,
                ..RATES
            },
        ] {
            let refused = apply(&mut state, &submit_at(job, spec.clone(), rates)).unwrap_err();
            assert!(
                matches!(refused, Rejection::InsufficientCredits { available: 0, .. }),
                "{job}: {refused:?}"
            );
        }
    }
    assert!(state.job(&"no-resources".into()).is_none());
}

#[test]
fn an_attempt_that_ran_pays_at_least_the_minimum_and_gets_the_rest_of_its_hold_back() {
    let mut state = applied(&[
        top_up("acme", 10_000, "t1"),
        register("n1", 4000),
        submit_at("job-1", spec(1000, 60), MINIMUM_ONLY),
        assign("job-1", "att-1", "n1", 20),
    ]);
    assert_eq!(state.account(&"acme".into()).unwrap().held, 500);
    apply(&mut state, &started("job-1", "att-1", 100)).unwrap();
    apply(
        &mut state,
        &finished("job-1", "att-1", tanvrit_state::FinishKind::Succeeded, 150),
    )
    .unwrap();
    let job = state.job(&"job-1".into()).unwrap();
    assert_eq!(job.attempts[0].charged, 500);
    let account = state.account(&"acme".into()).unwrap();
    assert_eq!((account.available, account.held), (9_500, 0));
    invariants::check(&state).unwrap();
}

#[test]
fn an_attempt_lost_before_its_start_pays_nothing() {
    let state = applied(&[
        top_up("acme", 10_000, "t1"),
        register("n1", 4000),
        submit_at("job-1", spec(1000, 60), MINIMUM_ONLY),
        assign("job-1", "att-1", "n1", 20),
        Command::NodeLost {
            node: "n1".into(),
            at: 30,
        },
    ]);
    let job = state.job(&"job-1".into()).unwrap();
    assert_eq!(job.attempts[0].charged, 0);
    assert_eq!(state.account(&"acme".into()).unwrap().available, 10_000);
    invariants::check(&state).unwrap();
}

fn zero_template_schedule() -> Command {
    Command::ScheduleCreate {
        schedule: "sch-1".into(),
        business: "acme".into(),
        name: None,
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        template: spec(0, 60),
        enabled: true,
        overlap: OverlapPolicy::Allow,
        catch_up: CatchUpPolicy::LatestOnly,
        at: 1,
    }
}

fn fire(job: &str, template_defaults: Option<Resources>) -> Command {
    Command::SchedulesFire {
        fires: vec![Fire {
            schedule: "sch-1".into(),
            due_at: 60_000,
            job: job.into(),
            skip_reason: None,
        }],
        rates: RATES,
        template_defaults,
        at: 60_005,
    }
}

#[test]
fn a_template_stored_with_zero_resources_fires_jobs_that_reserve_the_defaults() {
    let mut state = applied(&[top_up("acme", 10_000_000, "t1"), zero_template_schedule()]);
    let Effect::FiredMany { fires } =
        apply(&mut state, &fire("job-a", Some(Resources::JOB_DEFAULT))).unwrap()
    else {
        panic!("a SchedulesFire answers FiredMany");
    };
    assert!(fires[0].is_ok());
    let job = state.job(&"job-a".into()).unwrap();
    assert_eq!(job.spec.resources, Resources::JOB_DEFAULT);
    // 1 cpu x 60 s x 10, and 0.25 GB x 60 s x 2.
    assert_eq!(job.held, 600 + 30);
}

#[test]
fn a_fire_written_before_template_defaults_fires_the_template_as_it_is() {
    let mut state = applied(&[top_up("acme", 10_000_000, "t1"), zero_template_schedule()]);
    apply(&mut state, &fire("job-a", None)).unwrap();
    let job = state.job(&"job-a".into()).unwrap();
    assert_eq!(job.spec.resources.cpu_millis, 0);
    assert_eq!(job.held, 0);
}
