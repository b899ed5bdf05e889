//! Billing on measured usage: the hold stays the reservation, the charge follows what the
//! node measured, and the charge's ledger entry records the basis and the figures.

mod support;

use support::*;
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, FinishKind};

fn used_rates() -> Rates {
    Rates {
        cpu_second: 1000,
        memory_gb_second: 0,
        gpu_second: 0,
        attempt_minimum: 0,
        basis: BillingBasis::Used,
    }
}

fn run_and_finish(usage: Option<AttemptUsage>) -> tanvrit_state::State {
    let spec = JobSpec {
        command: vec!["sleep".into(), "10".into()],
        resources: Resources {
            cpu_millis: 2000,
            memory_mb: 64,
            gpus: 0,
        },
        timeout_secs: 60,
        ..JobSpec::default()
    };
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        Command::JobSubmit {
            job: "job-1".into(),
            business: "acme".into(),
            spec,
            idempotency_key: None,
            rates: used_rates(),
            at: 10,
        },
    ]);
    let held = state.job(&"job-1".into()).unwrap().held;
    assert_eq!(
        held,
        2 * 60 * 1000,
        "the hold is the reservation: 2 cores x 60 s"
    );
    apply(&mut state, &assign("job-1", "att-1", "n1", 20)).unwrap();
    apply(&mut state, &started("job-1", "att-1", 1_000)).unwrap();
    apply(
        &mut state,
        &Command::AttemptFinished {
            job: "job-1".into(),
            attempt: "att-1".into(),
            kind: FinishKind::Succeeded,
            exit_code: Some(0),
            reason: None,
            usage,
            at: 11_000,
        },
    )
    .unwrap();
    invariants::check(&state).unwrap();
    state
}

fn charge_entry(state: &tanvrit_state::State) -> LedgerEntry {
    state
        .account(&"acme".into())
        .unwrap()
        .entries
        .iter()
        .find(|e| e.kind == EntryKind::Charge)
        .cloned()
        .expect("a charge")
}

#[test]
fn a_job_that_slept_ten_seconds_on_two_cores_pays_for_the_cpu_it_used() {
    let usage = AttemptUsage {
        cpu_ms: Some(4),
        peak_memory_bytes: Some(700_000),
    };
    let state = run_and_finish(Some(usage));
    let attempt = &state.job(&"job-1".into()).unwrap().attempts[0];
    assert_eq!(
        attempt.charged, 4,
        "4 ms of CPU at 1000 a cpu-second; not 20,000"
    );
    assert_eq!(attempt.usage, Some(usage));
    let entry = charge_entry(&state);
    assert_eq!(entry.amount, -4);
    let details = entry.charge.expect("the entry says how it was computed");
    assert_eq!(details.basis, BillingBasis::Used);
    assert_eq!((details.runtime_ms, details.usage), (10_000, Some(usage)));
    assert!(entry.note.unwrap().contains("cpu 4 ms"));
    let account = state.account(&"acme".into()).unwrap();
    assert_eq!((account.available, account.held), (1_000_000 - 4, 0));
}

#[test]
fn an_attempt_its_node_did_not_measure_is_charged_its_reservation_and_says_so() {
    let state = run_and_finish(None);
    let entry = charge_entry(&state);
    assert_eq!(entry.amount, -20_000, "2 cores x 10 s x 1000");
    let details = entry.charge.unwrap();
    assert_eq!(
        (details.basis, details.usage),
        (BillingBasis::Reserved, None)
    );
}
