//! `Command::Idempotent`: a keyed write is applied once, replayed with its first outcome
//! and index afterwards, refused for a different request, and forgotten after its window.

mod support;

use support::*;
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, Effect, Rejection, State, IDEMPOTENCY_PRUNE_BATCH};

const HOUR: Millis = 3_600_000;

fn funded() -> State {
    applied(&[top_up("acme", 1_000_000, "t1"), register("n1", 4000)])
}

#[test]
fn a_first_delivery_applies_the_command_and_records_its_outcome_and_index() {
    let mut state = funded();
    let bare = {
        let mut copy = state.clone();
        copy.apply(3, &submit("job-1", "acme", spec(1000, 100)))
            .unwrap()
    };
    let envelope = keyed(
        "acme",
        "k1",
        "fp-a",
        submit("job-1", "acme", spec(1000, 100)),
        HOUR,
        10,
    );
    let effect = state.apply(3, &envelope).unwrap();
    assert_eq!(
        effect, bare,
        "the first delivery answers like the bare command"
    );
    let record = state.idempotency_record("acme", "k1").expect("recorded");
    assert_eq!(record.index, 3);
    assert_eq!(record.outcome, Ok(bare));
    assert_eq!((record.at, record.expires_at), (10, 10 + HOUR));
    invariants::check(&state).unwrap();
}

#[test]
fn a_retry_with_a_fresh_command_gets_the_first_job_and_index_and_changes_nothing() {
    let mut state = funded();
    let first = state
        .apply(
            3,
            &keyed(
                "acme",
                "k1",
                "fp-a",
                submit("job-1", "acme", spec(1000, 100)),
                HOUR,
                10,
            ),
        )
        .unwrap();
    let before = domain(&state);
    // The server builds a new command for a retried request: a new job id, a new time.
    let retry = keyed(
        "acme",
        "k1",
        "fp-a",
        submit("job-2", "acme", spec(1000, 100)),
        HOUR,
        20,
    );
    let replayed = state.apply(4, &retry).unwrap();
    assert_eq!(
        replayed,
        Effect::Replayed {
            effect: Box::new(first),
            index: 3
        }
    );
    assert_eq!(domain(&state), before, "a replay changes nothing");
    assert!(state.job(&"job-2".into()).is_none());
    assert_eq!(state.applied_index(), 4);
    invariants::check(&state).unwrap();
}

#[test]
fn the_same_key_for_a_different_request_is_an_idempotency_conflict() {
    let mut state = funded();
    state
        .apply(
            3,
            &keyed(
                "acme",
                "k1",
                "fp-a",
                submit("job-1", "acme", spec(1000, 100)),
                HOUR,
                10,
            ),
        )
        .unwrap();
    let before = state.clone();
    let other = keyed(
        "acme",
        "k1",
        "fp-b",
        submit("job-2", "acme", spec(2000, 100)),
        HOUR,
        20,
    );
    let refused = state.apply(4, &other).unwrap_err();
    assert_eq!(refused, Rejection::IdempotencyConflict { key: "k1".into() });
    assert_eq!(
        (refused.code(), refused.http_status()),
        ("idempotency_conflict", 422)
    );
    let mut expected = before;
    expected.set_applied_index(4);
    assert_eq!(
        state, expected,
        "a conflict changes nothing, records included"
    );
}

#[test]
fn keys_of_different_scopes_never_meet() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        top_up("globex", 1_000_000, "t2"),
    ]);
    state
        .apply(
            3,
            &keyed(
                "acme",
                "k1",
                "fp-a",
                submit("job-1", "acme", spec(1000, 100)),
                HOUR,
                10,
            ),
        )
        .unwrap();
    let effect = state
        .apply(
            4,
            &keyed(
                "globex",
                "k1",
                "fp-b",
                submit("job-2", "globex", spec(1000, 100)),
                HOUR,
                11,
            ),
        )
        .unwrap();
    assert!(matches!(
        effect,
        Effect::Job {
            duplicate: false,
            ..
        }
    ));
    assert!(state.job(&"job-1".into()).is_some() && state.job(&"job-2".into()).is_some());
}

#[test]
fn a_rejected_first_delivery_is_recorded_and_replayed_even_after_the_state_moved_on() {
    let mut state = applied(&[top_up("acme", 500, "t1")]);
    let poor = keyed(
        "acme",
        "k1",
        "fp-a",
        submit("job-1", "acme", spec(1000, 100)),
        HOUR,
        10,
    );
    let refused = state.apply(2, &poor).unwrap_err();
    assert_eq!(refused.code(), "insufficient_credits");
    assert!(state.job(&"job-1".into()).is_none());
    // A top-up would let the bare command through now; the keyed retry still gets the
    // first answer.
    state.apply(3, &top_up("acme", 1_000_000, "t2")).unwrap();
    let before = domain(&state);
    let again = keyed(
        "acme",
        "k1",
        "fp-a",
        submit("job-9", "acme", spec(1000, 100)),
        HOUR,
        20,
    );
    assert_eq!(state.apply(4, &again).unwrap_err(), refused);
    assert_eq!(domain(&state), before);
    assert!(state.job(&"job-9".into()).is_none());
}

#[test]
fn a_record_expires_at_its_window_judged_by_the_commands_own_time() {
    let mut state = funded();
    state
        .apply(
            3,
            &keyed(
                "acme",
                "k1",
                "fp-a",
                submit("job-1", "acme", spec(1000, 100)),
                1_000,
                10,
            ),
        )
        .unwrap();
    // At 1009 the record is live: a replay.
    let live = state
        .apply(
            4,
            &keyed(
                "acme",
                "k1",
                "fp-a",
                submit("job-2", "acme", spec(1000, 100)),
                1_000,
                1_009,
            ),
        )
        .unwrap();
    assert!(matches!(live, Effect::Replayed { index: 3, .. }));
    // At 1010 (= at + retain) it is gone: the key is free, even for another request.
    let fresh = state
        .apply(
            5,
            &keyed(
                "acme",
                "k1",
                "fp-b",
                submit("job-3", "acme", spec(500, 100)),
                1_000,
                1_010,
            ),
        )
        .unwrap();
    assert!(matches!(
        fresh,
        Effect::Job {
            duplicate: false,
            ..
        }
    ));
    let record = state.idempotency_record("acme", "k1").unwrap();
    assert_eq!((record.index, record.fingerprint.as_str()), (5, "fp-b"));
    invariants::check(&state).unwrap();
}

#[test]
fn expired_records_are_pruned_by_later_envelopes_in_bounded_batches() {
    let mut state = State::new();
    let count = IDEMPOTENCY_PRUNE_BATCH + 10;
    for i in 0..count {
        let command = keyed(
            "acme",
            &format!("k{i}"),
            "fp",
            top_up("acme", 1, &format!("t{i}")),
            HOUR,
            i as Millis,
        );
        state.apply(i as u64 + 1, &command).unwrap();
    }
    assert_eq!(state.idempotency_records().count(), count);
    // Bare commands never prune (they have no envelope to answer to).
    state
        .apply(count as u64 + 1, &top_up("acme", 1, "bare"))
        .unwrap();
    assert_eq!(state.idempotency_records().count(), count);
    let late = |n: u64, key: &str| {
        keyed(
            "acme",
            key,
            "fp",
            top_up("acme", 1, key),
            HOUR,
            2 * HOUR + n as Millis,
        )
    };
    state.apply(count as u64 + 2, &late(0, "late-0")).unwrap();
    assert_eq!(
        state.idempotency_records().count(),
        count - IDEMPOTENCY_PRUNE_BATCH + 1,
        "one batch pruned, the new record kept"
    );
    state.apply(count as u64 + 3, &late(1, "late-1")).unwrap();
    assert_eq!(state.idempotency_records().count(), 2, "the rest pruned");
    invariants::check(&state).unwrap();
}

#[test]
fn expiry_is_deterministic_and_survives_a_snapshot_round_trip() {
    let commands: Vec<Command> = (0..50)
        .map(|i| {
            keyed(
                if i % 2 == 0 { "acme" } else { "globex" },
                &format!("k{}", i % 7),
                &format!("fp{}", i % 3),
                top_up(
                    if i % 2 == 0 { "acme" } else { "globex" },
                    10,
                    &format!("t{i}"),
                ),
                250,
                i * 40,
            )
        })
        .collect();
    let run = |commands: &[Command]| {
        let mut state = State::new();
        let outcomes: Vec<_> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| state.apply(i as u64 + 1, c))
            .collect();
        (state, outcomes)
    };
    let (a, outcomes_a) = run(&commands);
    let (b, outcomes_b) = run(&commands);
    assert_eq!(a, b);
    assert_eq!(outcomes_a, outcomes_b);
    // A replica restored from a snapshot halfway continues exactly like one that never
    // stopped: the expiry index is rebuilt from the records.
    let (half, _) = run(&commands[..25]);
    let mut restored: State = serde_json::from_str(&serde_json::to_string(&half).unwrap()).unwrap();
    assert!(restored.indexes_consistent());
    for (i, command) in commands.iter().enumerate().skip(25) {
        assert_eq!(restored.apply(i as u64 + 1, command), outcomes_a[i]);
    }
    assert_eq!(restored, a);
}

#[test]
fn a_state_saved_before_envelopes_existed_still_loads() {
    let state = funded();
    let mut json = serde_json::to_value(&state).unwrap();
    json.as_object_mut().unwrap().remove("idempotency");
    let loaded: State = serde_json::from_value(json).unwrap();
    assert_eq!(loaded, state);
}

#[test]
fn envelopes_refuse_bad_keys_nesting_and_log_chunks_without_changing_anything() {
    let mut state = funded();
    let inner = || top_up("acme", 5, "t9");
    let cases = [
        keyed("acme", "", "fp", inner(), HOUR, 1),
        keyed("acme", "caf\u{e9}", "fp", inner(), HOUR, 1),
        keyed("acme", &"k".repeat(257), "fp", inner(), HOUR, 1),
        keyed("", "k", "fp", inner(), HOUR, 1),
        keyed("acme", "k", "", inner(), HOUR, 1),
        keyed("acme", "k", "fp", inner(), 0, 1),
        keyed(
            "acme",
            "k",
            "fp",
            keyed("acme", "k2", "fp", inner(), HOUR, 1),
            HOUR,
            1,
        ),
        keyed(
            "acme",
            "k",
            "fp",
            Command::LogAppend {
                job: "job-1".into(),
                attempt: "att-1".into(),
                offset: 0,
                data: "x".into(),
                at: 1,
            },
            HOUR,
            1,
        ),
    ];
    for command in cases {
        let before = state.clone();
        let refused = state.apply(next(&state), &command).unwrap_err();
        assert_eq!(refused.code(), "invalid", "{command:?}");
        let mut expected = before;
        expected.set_applied_index(state.applied_index());
        assert_eq!(state, expected, "{command:?}");
    }
    assert_eq!(state.idempotency_records().count(), 0);
}

#[test]
fn the_envelope_names_itself_and_exposes_its_payload() {
    let command = keyed("acme", "k", "fp", top_up("acme", 5, "t"), HOUR, 77);
    assert_eq!(command.name(), "idempotent");
    assert_eq!(command.payload().name(), "ledger_entry_create");
    assert_eq!(command.at(), 77);
    let json = serde_json::to_string(&command).unwrap();
    let back: Command = serde_json::from_str(&json).unwrap();
    assert_eq!(back, command);
}
