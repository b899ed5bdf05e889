//! Retention: `Command::JobsCollect` removes old terminal jobs (and only those), oldest
//! finished first in bounded batches, leaves every ledger alone, and records a horizon
//! that tells a collected job from one that never existed.

mod support;

use proptest::prelude::*;
use support::*;
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, Effect, FinishKind, State, MAX_COLLECT_BATCH};

fn submit_at(job: &str, key: Option<&str>, at: Millis) -> Command {
    Command::JobSubmit {
        job: job.into(),
        business: "acme".into(),
        spec: spec(1000, 100),
        idempotency_key: key.map(str::to_string),
        rates: RATES,
        at,
    }
}

fn cancel(job: &str, at: Millis) -> Command {
    Command::JobCancel {
        job: job.into(),
        reason: None,
        at,
    }
}

fn collect(cutoff: Millis, limit: u32, at: Millis) -> Command {
    Command::JobsCollect { cutoff, limit, at }
}

/// Submits, places, starts and ends `job` (attempt `att-<job>`) between `at` and
/// `at + 3`; `end` is `None` to leave it running.
fn run(job: &str, end: Option<FinishKind>, at: Millis) -> Vec<Command> {
    let attempt = format!("att-{job}");
    let mut commands = vec![
        submit_at(job, None, at),
        assign(job, &attempt, "n1", at + 1),
        started(job, &attempt, at + 2),
    ];
    commands.extend(end.map(|kind| finished(job, &attempt, kind, at + 3)));
    commands
}

fn collected(effect: Effect) -> (Vec<String>, bool) {
    match effect {
        Effect::JobsCollected { jobs, more, .. } => (jobs.into_iter().map(|j| j.0).collect(), more),
        other => panic!("a collection answered {other:?}"),
    }
}

/// Jobs in every state: `done-*` finished before 1000, `late` at 2000, the rest not
/// finished (pending, running, or cancelled while its attempt still stops).
fn mixed_state() -> State {
    let mut commands = vec![top_up("acme", 100_000_000, "t1"), register("n1", 64_000)];
    commands.extend(run("done-a", Some(FinishKind::Succeeded), 100));
    commands.extend(run("done-b", Some(FinishKind::Failed), 200));
    commands.push(submit_at("done-c", Some("key-c"), 300));
    commands.push(cancel("done-c", 303));
    commands.extend(run("late", Some(FinishKind::Succeeded), 1997));
    commands.extend(run("running", None, 400));
    commands.push(submit_at("pending", None, 500));
    commands.extend(run("stopping", None, 600));
    commands.push(cancel("stopping", 700));
    applied(&commands)
}

#[test]
fn collection_removes_terminal_jobs_finished_before_the_cutoff_oldest_first_in_batches() {
    let mut state = mixed_state();
    let ledger = state.account(&"acme".into()).cloned();

    let before = state.clone();
    let effect = apply(&mut state, &collect(1000, 2, 5000)).unwrap();
    collection_was_sound(&before, &state, &Ok(effect.clone()), 1000).unwrap();
    assert_eq!(
        collected(effect),
        (vec!["done-a".into(), "done-b".into()], true),
        "the two oldest, and more remain"
    );
    let effect = apply(&mut state, &collect(1000, 2, 5000)).unwrap();
    assert_eq!(collected(effect), (vec!["done-c".into()], false));
    let effect = apply(&mut state, &collect(1000, 2, 5000)).unwrap();
    assert_eq!(
        collected(effect),
        (vec![], false),
        "nothing is left to take"
    );

    for kept in ["late", "running", "pending", "stopping"] {
        assert!(state.job(&kept.into()).is_some(), "{kept} was kept");
    }
    assert_eq!(
        state.account(&"acme".into()).cloned(),
        ledger,
        "the ledger is the billing record: untouched"
    );
    let entries = &state.account(&"acme".into()).unwrap().entries;
    assert!(
        entries
            .iter()
            .any(|e| e.job.as_ref().is_some_and(|j| j.as_str() == "done-a")),
        "entries keep the id of a collected job"
    );
    assert!(state.indexes_consistent());
    invariants::check(&state).unwrap();
}

#[test]
fn a_job_that_finished_at_the_cutoff_or_is_still_stopping_stays() {
    let mut state = mixed_state();
    // `late` finished at 2000; `stopping` was cancelled at 700 but its attempt still runs.
    let effect = apply(&mut state, &collect(2000, 100, 5000)).unwrap();
    let (jobs, more) = collected(effect);
    assert_eq!(jobs, ["done-a", "done-b", "done-c"]);
    assert!(!more);
    assert!(
        state.job(&"late".into()).is_some(),
        "finished at the cutoff"
    );
    assert!(
        state.job(&"stopping".into()).is_some(),
        "its attempt is active"
    );

    // Once its attempt ends, the cancelled job is collectable from that time.
    apply(
        &mut state,
        &finished("stopping", "att-stopping", FinishKind::Cancelled, 3000),
    )
    .unwrap();
    let effect = apply(&mut state, &collect(3000, 100, 5000)).unwrap();
    assert_eq!(collected(effect).0, ["late"]);
    let effect = apply(&mut state, &collect(3001, 100, 5000)).unwrap();
    assert_eq!(collected(effect).0, ["stopping"]);
    assert!(state.indexes_consistent());
    invariants::check(&state).unwrap();
}

#[test]
fn a_retried_job_is_no_longer_collectable() {
    let mut state = mixed_state();
    apply(
        &mut state,
        &Command::JobRetry {
            job: "done-b".into(),
            at: 800,
        },
    )
    .unwrap();
    let effect = apply(&mut state, &collect(1000, 100, 5000)).unwrap();
    assert_eq!(collected(effect).0, ["done-a", "done-c"]);
    assert_eq!(
        state.job(&"done-b".into()).map(|j| j.state),
        Some(JobState::Pending)
    );
    assert!(state.indexes_consistent());
}

#[test]
fn a_collected_jobs_idempotency_key_no_longer_finds_it() {
    let mut state = mixed_state();
    apply(&mut state, &collect(1000, 100, 5000)).unwrap();
    // The key named `done-c`; a submission with it now makes a new job.
    let effect = apply(&mut state, &submit_at("again", Some("key-c"), 6000)).unwrap();
    match effect {
        Effect::Job { job, duplicate } => {
            assert_eq!(job.id.as_str(), "again");
            assert!(!duplicate);
        }
        other => panic!("{other:?}"),
    }
    invariants::check(&state).unwrap();
}

#[test]
fn the_horizon_tells_a_collected_job_from_one_created_after_it() {
    let mut state = mixed_state();
    assert_eq!(state.jobs_collected_before(), 0);
    assert!(
        !state.job_collected(&"done-a".into(), 100),
        "nothing collected yet"
    );
    apply(&mut state, &collect(1000, 100, 5000)).unwrap();
    assert_eq!(state.jobs_collected_before(), 1000);
    assert!(state.job_collected(&"done-a".into(), 100));
    assert!(
        !state.job_collected(&"late".into(), 1997),
        "present, so not collected"
    );
    assert!(
        !state.job_collected(&"never".into(), 1500),
        "created after the horizon: never existed"
    );
    // An earlier cutoff never moves the horizon back.
    apply(&mut state, &collect(10, 1, 5000)).unwrap();
    assert_eq!(state.jobs_collected_before(), 1000);
}

#[test]
fn a_collection_drops_idempotency_records_past_their_window() {
    let mut state = mixed_state();
    let first = keyed("acme", "k1", "f1", top_up("acme", 5, "t2"), 1_000, 4_000);
    apply(&mut state, &first).unwrap();
    assert!(state.idempotency_record("acme", "k1").is_some());
    let effect = apply(&mut state, &collect(0, 10, 4_999)).unwrap();
    assert!(
        matches!(effect, Effect::JobsCollected { records: 0, .. }),
        "still within its window"
    );
    let effect = apply(&mut state, &collect(0, 10, 5_000)).unwrap();
    assert!(matches!(
        effect,
        Effect::JobsCollected {
            records: 1,
            more: false,
            ..
        }
    ));
    assert!(state.idempotency_record("acme", "k1").is_none());
    assert!(state.indexes_consistent());
}

#[test]
fn a_collection_with_no_limit_too_large_a_limit_or_a_future_cutoff_is_refused() {
    let mut state = mixed_state();
    let before = state.clone();
    for command in [
        collect(1000, 0, 5000),
        collect(1000, MAX_COLLECT_BATCH + 1, 5000),
        collect(5001, 10, 5000),
    ] {
        let err = apply(&mut state, &command).unwrap_err();
        assert_eq!(err.code(), "invalid", "{command:?}");
    }
    let mut expected = before;
    expected.set_applied_index(state.applied_index());
    assert_eq!(state, expected, "refusals change nothing");
}

#[test]
fn a_collection_cannot_ride_in_an_idempotency_envelope() {
    let mut state = mixed_state();
    let err = apply(
        &mut state,
        &keyed("acme", "k", "f", collect(1000, 10, 5000), 1_000, 5000),
    )
    .unwrap_err();
    assert_eq!(err.code(), "invalid");
    assert!(state.job(&"done-a".into()).is_some());
}

#[test]
fn a_state_that_collected_survives_its_encoding_and_an_older_encoding_still_decodes() {
    let mut state = mixed_state();
    let untouched = serde_json::to_value(&state).unwrap();
    assert!(
        untouched.get("jobs_collected_before").is_none(),
        "a state that never collected encodes as before"
    );
    let old: State = serde_json::from_value(untouched).unwrap();
    assert_eq!(old.jobs_collected_before(), 0);

    apply(&mut state, &collect(1000, 2, 5000)).unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let loaded: State = serde_json::from_str(&json).unwrap();
    assert_eq!(loaded, state);
    assert_eq!(loaded.jobs_collected_before(), 1000);
    assert!(loaded.indexes_consistent());
    // The loaded replica goes on collecting exactly as the original does.
    let (mut a, mut b) = (state, loaded);
    let next = collect(1000, 2, 5000);
    assert_eq!(apply(&mut a, &next), apply(&mut b, &next));
    assert_eq!(a, b);
}

/// What happens to one job in the generated histories.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Pending,
    Running,
    Succeeded,
    Failed,
    CancelledPending,
    /// Cancelled while running; the attempt has not reported its end.
    CancelledStopping,
    /// Cancelled while running, then the attempt ended.
    CancelledStopped,
    /// Failed, then retried by hand (pending again).
    Retried,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        Just(Fate::Pending),
        Just(Fate::Running),
        Just(Fate::Succeeded),
        Just(Fate::Failed),
        Just(Fate::CancelledPending),
        Just(Fate::CancelledStopping),
        Just(Fate::CancelledStopped),
        Just(Fate::Retried),
    ]
}

/// One job's history from `at` (each command 1 ms after the previous one).
fn history(n: usize, fate: Fate, keyed: bool, at: Millis) -> Vec<Command> {
    let job = format!("job-{n}");
    let key = keyed.then(|| format!("key-{}", n % 3));
    let attempt = format!("att-{n}");
    let mut commands = vec![submit_at(&job, key.as_deref(), at)];
    let place = |commands: &mut Vec<Command>| {
        commands.push(assign(&job, &attempt, "n1", at + 1));
        commands.push(started(&job, &attempt, at + 2));
    };
    match fate {
        Fate::Pending => {}
        Fate::Running => place(&mut commands),
        Fate::Succeeded | Fate::Failed | Fate::Retried => {
            place(&mut commands);
            let kind = match fate {
                Fate::Succeeded => FinishKind::Succeeded,
                _ => FinishKind::Failed,
            };
            commands.push(finished(&job, &attempt, kind, at + 3));
            if matches!(fate, Fate::Retried) {
                commands.push(Command::JobRetry {
                    job: job.as_str().into(),
                    at: at + 4,
                });
            }
        }
        Fate::CancelledPending => commands.push(cancel(&job, at + 1)),
        Fate::CancelledStopping | Fate::CancelledStopped => {
            place(&mut commands);
            commands.push(cancel(&job, at + 3));
            if matches!(fate, Fate::CancelledStopped) {
                commands.push(finished(&job, &attempt, FinishKind::Cancelled, at + 4));
            }
        }
    }
    commands
}

/// A job's history, then maybe a collection: its cutoff as a fraction of the time so
/// far, and its limit.
type Round = (Fate, bool, u64, Option<(u8, u32)>);

fn round() -> impl Strategy<Value = Round> {
    (
        fate(),
        any::<bool>(),
        1..50u64,
        proptest::option::weighted(0.6, (0..=10u8, 1..5u32)),
    )
}

/// Applies the rounds, checking every collection as it goes; returns the state and
/// every outcome.
fn play(rounds: &[Round]) -> (State, Vec<tanvrit_state::Outcome>) {
    let mut state = applied(&[
        top_up("acme", 1_000_000_000, "t1"),
        register("n1", 1_000_000),
    ]);
    let mut outcomes = Vec::new();
    let mut at: Millis = 100;
    for (n, (fate, keyed, gap, collection)) in rounds.iter().enumerate() {
        at += *gap as Millis * 10;
        for command in history(n, *fate, *keyed, at) {
            outcomes.push(apply(&mut state, &command));
        }
        at += 10;
        if let Some((tenths, limit)) = collection {
            let cutoff = at * *tenths as Millis / 10;
            let before = state.clone();
            let outcome = apply(&mut state, &collect(cutoff, *limit, at));
            collection_was_sound(&before, &state, &outcome, cutoff)
                .unwrap_or_else(|e| panic!("round {n}: {e}"));
            outcomes.push(outcome);
        }
        invariants::check(&state).unwrap_or_else(|e| panic!("round {n}: {e}"));
    }
    // Drain: collect everything finished so far, a batch at a time.
    loop {
        let before = state.clone();
        let outcome = apply(&mut state, &collect(at, 3, at));
        collection_was_sound(&before, &state, &outcome, at).unwrap();
        let more = matches!(outcome, Ok(Effect::JobsCollected { more: true, .. }));
        outcomes.push(outcome);
        if !more {
            break;
        }
    }
    assert!(
        state.all_jobs().all(|j| !collectable(j, at)),
        "draining left a collectable job"
    );
    (state, outcomes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn collections_between_random_job_histories_stay_sound_and_deterministic(
        rounds in proptest::collection::vec(round(), 1..30)
    ) {
        let (a, outcomes_a) = play(&rounds);
        let (b, outcomes_b) = play(&rounds);
        prop_assert_eq!(&a, &b, "two replicas applying the same commands agree");
        prop_assert_eq!(outcomes_a, outcomes_b);
        let loaded: State = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        prop_assert!(loaded.indexes_consistent());
        prop_assert_eq!(&loaded, &a);
    }
}
