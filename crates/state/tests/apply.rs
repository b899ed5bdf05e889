//! Scenario tests of `State::apply`: lifecycles, fencing, billing and refusals.

mod support;

use support::*;
use tanvrit_api::*;
use tanvrit_state::{invariants, Command, Effect, FinishKind, Fire, Rejection};

fn job<'a>(state: &'a tanvrit_state::State, id: &str) -> &'a Job {
    state.job(&JobId::from(id)).expect("job exists")
}

#[test]
fn a_job_runs_from_pending_to_succeeded_and_pays_only_its_runtime() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
    ]);
    let account = state.account(&"acme".into()).unwrap();
    assert_eq!(
        account.available,
        1_000_000 - 1000,
        "hold = 1 cpu x 100 s x 10"
    );
    assert_eq!(account.held, 1000);

    apply(&mut state, &assign("job-1", "att-1", "n1", 20)).unwrap();
    assert_eq!(job(&state, "job-1").state, JobState::Assigned);
    apply(&mut state, &started("job-1", "att-1", 1_000)).unwrap();
    assert_eq!(job(&state, "job-1").state, JobState::Running);
    apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 31_000),
    )
    .unwrap();

    let done = job(&state, "job-1");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempts[0].charged, 300, "30 s x 1 cpu x 10");
    let account = state.account(&"acme".into()).unwrap();
    assert_eq!(account.available, 1_000_000 - 300);
    assert_eq!(account.held, 0);
    invariants::check(&state).unwrap();
}

#[test]
fn a_submission_the_balance_cannot_cover_is_refused_and_writes_nothing() {
    let mut state = applied(&[top_up("acme", 500, "t1")]);
    let before = state.clone();
    let err = apply(&mut state, &submit("job-1", "acme", spec(1000, 100))).unwrap_err();
    assert_eq!(err.code(), "insufficient_credits");
    assert_eq!(err.http_status(), 402);
    assert!(state.job(&"job-1".into()).is_none());
    assert_eq!(
        state.account(&"acme".into()),
        before.account(&"acme".into())
    );
}

#[test]
fn a_finish_report_delivered_twice_charges_once() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 1_000),
        finished("job-1", "att-1", FinishKind::Succeeded, 11_000),
    ]);
    let entries = state.account(&"acme".into()).unwrap().entries.len();
    let effect = apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 99_000),
    )
    .unwrap();
    assert!(matches!(
        effect,
        Effect::Job {
            duplicate: true,
            ..
        }
    ));
    assert_eq!(
        state.account(&"acme".into()).unwrap().entries.len(),
        entries
    );
    invariants::check(&state).unwrap();
}

#[test]
fn a_report_for_a_replaced_attempt_is_refused() {
    let mut spec = spec(1000, 100);
    spec.max_retries = 1;
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        register("n2", 4000),
        submit("job-1", "acme", spec),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 30),
        Command::NodeLost {
            node: "n1".into(),
            at: 40,
        },
    ]);
    let retried = job(&state, "job-1");
    assert_eq!(retried.state, JobState::Pending);
    assert_eq!(retried.attempts[0].state, AttemptState::Lost);
    let backoff = retried.not_before.unwrap();
    apply(&mut state, &assign("job-1", "att-2", "n2", backoff)).unwrap();

    // The old node comes back and reports its stale attempt: fenced.
    let err = apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 50),
    )
    .unwrap_err();
    assert_eq!(err.code(), "stale_attempt");
    let err = apply(&mut state, &started("job-1", "att-1", 50)).unwrap_err();
    assert_eq!(err.code(), "stale_attempt");
    assert_eq!(job(&state, "job-1").state, JobState::Assigned);
    invariants::check(&state).unwrap();
}

#[test]
fn a_job_in_backoff_is_not_placed_early() {
    let mut spec = spec(1000, 100);
    spec.max_retries = 3;
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 30),
        finished("job-1", "att-1", FinishKind::Failed, 40),
    ]);
    let not_before = job(&state, "job-1").not_before.unwrap();
    assert_eq!(not_before, 40 + 1_000);
    let effect = apply(&mut state, &assign("job-1", "att-2", "n1", not_before - 1)).unwrap();
    let Effect::Placements { placed, refused } = effect else {
        panic!("placements expected")
    };
    assert!(placed.is_empty());
    assert_eq!(refused.len(), 1);
}

#[test]
fn failures_are_retried_up_to_max_retries_then_the_job_fails() {
    let mut spec = spec(1000, 100);
    spec.max_retries = 2;
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec),
    ]);
    let mut at = 100;
    for n in 1..=3 {
        let attempt = format!("att-{n}");
        at = job(&state, "job-1").not_before.unwrap_or(at).max(at) + 1;
        apply(&mut state, &assign("job-1", &attempt, "n1", at)).unwrap();
        apply(&mut state, &started("job-1", &attempt, at + 1)).unwrap();
        apply(
            &mut state,
            &finished("job-1", &attempt, FinishKind::Failed, at + 2),
        )
        .unwrap();
        at += 3;
    }
    let failed = job(&state, "job-1");
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.attempts.len(), 3);
    assert_eq!(failed.held, 0);
    invariants::check(&state).unwrap();
}

#[test]
fn cancelling_a_running_job_stops_its_attempt_and_settles_on_the_report() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 1_000),
        Command::JobCancel {
            job: "job-1".into(),
            reason: None,
            at: 2_000,
        },
    ]);
    let cancelled = job(&state, "job-1");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.attempts[0].state, AttemptState::Cancelling);
    assert_eq!(
        state.node_allocated(&"n1".into()).cpu_millis,
        1000,
        "resources stay reserved until the agent confirms"
    );
    apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Cancelled, 3_000),
    )
    .unwrap();
    let cancelled = job(&state, "job-1");
    assert_eq!(cancelled.attempts[0].state, AttemptState::Cancelled);
    assert_eq!(cancelled.attempts[0].charged, 20);
    assert_eq!(state.node_allocated(&"n1".into()).cpu_millis, 0);
    let err = apply(
        &mut state,
        &Command::JobCancel {
            job: "job-1".into(),
            reason: None,
            at: 4_000,
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), "illegal_transition");
    assert_eq!(err.http_status(), 409);
    invariants::check(&state).unwrap();
}

#[test]
fn a_succeeded_job_cannot_be_retried_but_a_failed_one_can() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 30),
        finished("job-1", "att-1", FinishKind::Succeeded, 40),
        submit("job-2", "acme", spec(1000, 100)),
        assign("job-2", "att-2", "n1", 50),
        started("job-2", "att-2", 60),
        finished("job-2", "att-2", FinishKind::Failed, 70),
    ]);
    let retry = |job: &str| Command::JobRetry {
        job: job.into(),
        at: 100,
    };
    assert_eq!(
        apply(&mut state, &retry("job-1")).unwrap_err().code(),
        "illegal_transition"
    );
    apply(&mut state, &retry("job-2")).unwrap();
    assert_eq!(job(&state, "job-2").state, JobState::Pending);
    assert_eq!(job(&state, "job-2").held, 1000);
    invariants::check(&state).unwrap();
}

#[test]
fn placement_respects_resources_labels_and_node_state() {
    let mut labelled = spec(1000, 100);
    labelled.labels.insert("gpu".into(), "a100".into());
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("small", 1000),
        submit("job-1", "acme", spec(1000, 100)),
        submit("job-2", "acme", spec(1000, 100)),
        submit("job-3", "acme", labelled),
        assign("job-1", "att-1", "small", 20),
    ]);
    let Effect::Placements { refused, .. } =
        apply(&mut state, &assign("job-2", "att-2", "small", 30)).unwrap()
    else {
        panic!()
    };
    assert_eq!(refused.len(), 1, "the node is full");
    let Effect::Placements { refused, .. } =
        apply(&mut state, &assign("job-3", "att-3", "small", 30)).unwrap()
    else {
        panic!()
    };
    assert_eq!(refused.len(), 1, "the node lacks the label");
    apply(
        &mut state,
        &Command::NodeDrain {
            node: "small".into(),
            deadline: None,
            at: 40,
        },
    )
    .unwrap();
    apply(&mut state, &started("job-1", "att-1", 50)).unwrap();
    apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 60),
    )
    .unwrap();
    let Effect::Placements { refused, .. } =
        apply(&mut state, &assign("job-2", "att-2", "small", 70)).unwrap()
    else {
        panic!()
    };
    assert_eq!(refused.len(), 1, "a draining node takes no new work");
    invariants::check(&state).unwrap();
}

#[test]
fn deleting_a_busy_node_needs_force_and_then_requeues_its_work() {
    let mut spec = spec(1000, 100);
    spec.max_retries = 1;
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec),
        assign("job-1", "att-1", "n1", 20),
    ]);
    let delete = |force| Command::NodeDelete {
        node: "n1".into(),
        force,
        at: 30,
    };
    let err = apply(&mut state, &delete(false)).unwrap_err();
    assert_eq!(err.code(), "node_busy");
    apply(&mut state, &delete(true)).unwrap();
    assert_eq!(state.node(&"n1".into()).unwrap().state, NodeState::Deleted);
    assert_eq!(job(&state, "job-1").state, JobState::Pending);
    invariants::check(&state).unwrap();
}

#[test]
fn idempotent_submission_returns_the_first_job_and_conflicts_on_a_different_body() {
    let with_key = |job: &str, spec| Command::JobSubmit {
        job: job.into(),
        business: "acme".into(),
        spec,
        idempotency_key: Some("k1".into()),
        rates: RATES,
        at: 10,
    };
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        with_key("job-1", spec(1000, 100)),
    ]);
    let effect = apply(&mut state, &with_key("job-2", spec(1000, 100))).unwrap();
    let Effect::Job { job, duplicate } = effect else {
        panic!()
    };
    assert!(duplicate);
    assert_eq!(job.id, JobId::from("job-1"));
    assert!(state.job(&"job-2".into()).is_none());
    let err = apply(&mut state, &with_key("job-3", spec(2000, 100))).unwrap_err();
    assert_eq!(err, Rejection::IdempotencyConflict { key: "k1".into() });
    assert_eq!(err.http_status(), 422);
}

#[test]
fn log_chunks_must_continue_the_output_and_duplicates_are_ignored() {
    let mut state = applied(&[
        register("n1", 4000),
        submit("job-1", "acme", spec(0, 100)),
        assign("job-1", "att-1", "n1", 20),
    ]);
    let chunk = |offset, data: &str| Command::LogAppend {
        job: "job-1".into(),
        attempt: "att-1".into(),
        offset,
        data: data.into(),
        at: 30,
    };
    apply(&mut state, &chunk(0, "hello ")).unwrap();
    apply(&mut state, &chunk(6, "world\n")).unwrap();
    let dup = apply(&mut state, &chunk(0, "hello ")).unwrap();
    assert!(matches!(
        dup,
        Effect::LogAppended {
            duplicate: true,
            ..
        }
    ));
    let gap = apply(&mut state, &chunk(100, "x")).unwrap_err();
    assert_eq!(
        gap,
        Rejection::LogGap {
            offset: 100,
            expected: 12
        }
    );
    assert_eq!(job(&state, "job-1").attempts[0].log_bytes, 12);
}

#[test]
fn user_ledger_entries_cannot_overdraw_or_forge_system_kinds() {
    let mut state = applied(&[top_up("acme", 100, "t1")]);
    let adjust = |amount, kind, key: &str| Command::LedgerEntryCreate {
        entry: EntryId(format!("ent-{key}")),
        business: "acme".into(),
        kind,
        amount,
        idempotency_key: key.into(),
        note: None,
        at: 2,
    };
    assert_eq!(
        apply(&mut state, &adjust(-101, EntryKind::Adjustment, "a1"))
            .unwrap_err()
            .code(),
        "insufficient_credits"
    );
    assert_eq!(
        apply(&mut state, &adjust(-10, EntryKind::Charge, "a2"))
            .unwrap_err()
            .code(),
        "invalid"
    );
    assert_eq!(
        apply(&mut state, &adjust(0, EntryKind::TopUp, "a3"))
            .unwrap_err()
            .code(),
        "invalid"
    );
    apply(&mut state, &adjust(-100, EntryKind::Adjustment, "a4")).unwrap();
    assert_eq!(state.account(&"acme".into()).unwrap().available, 0);
    invariants::check(&state).unwrap();
}

#[test]
fn a_schedule_fires_each_due_time_once() {
    let create = Command::ScheduleCreate {
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
    };
    let fire = |job: &str, due_at| Command::ScheduleFire {
        schedule: "sch-1".into(),
        due_at,
        job: job.into(),
        rates: RATES,
        skip_reason: None,
        at: due_at + 5,
    };
    let mut state = applied(&[create, fire("job-a", 60_000)]);
    let again = apply(&mut state, &fire("job-b", 60_000)).unwrap();
    assert!(matches!(
        again,
        Effect::Fired {
            duplicate: true,
            ..
        }
    ));
    assert!(state.job(&"job-b".into()).is_none());
    apply(&mut state, &fire("job-c", 120_000)).unwrap();
    let schedule = state.schedule(&"sch-1".into()).unwrap();
    assert_eq!(schedule.fired, 2);
    assert_eq!(schedule.last_job, Some("job-c".into()));
    assert_eq!(
        state.job(&"job-a".into()).unwrap().schedule,
        Some("sch-1".into())
    );
}

#[test]
fn fires_in_one_entry_apply_as_the_same_fires_one_by_one() {
    let create = |id: &str| Command::ScheduleCreate {
        schedule: id.into(),
        business: "acme".into(),
        name: None,
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        template: spec(100, 60),
        enabled: true,
        overlap: OverlapPolicy::Allow,
        catch_up: CatchUpPolicy::All(10),
        at: 1,
    };
    let fire = |schedule: &str, due_at, job: &str, skip: Option<&str>| Fire {
        schedule: schedule.into(),
        due_at,
        job: job.into(),
        skip_reason: skip.map(str::to_string),
    };
    let fires = vec![
        fire("sch-1", 60_000, "job-1a", None),
        fire("sch-2", 60_000, "job-2a", None),
        // The same due time again (another leader's copy): a duplicate.
        fire("sch-1", 60_000, "job-1x", None),
        fire("sch-gone", 60_000, "job-ga", None),
        fire("sch-2", 120_000, "job-2b", Some("missed")),
        fire("sch-1", 120_000, "job-1b", None),
    ];
    let start = applied(&[
        top_up("acme", 1_000_000, "t1"),
        create("sch-1"),
        create("sch-2"),
    ]);
    let mut batched = start.clone();
    let Effect::FiredMany { fires: outcomes } = batched
        .apply(
            4,
            &Command::SchedulesFire {
                fires: fires.clone(),
                rates: RATES,
                template_defaults: None,
                at: 130_000,
            },
        )
        .unwrap()
    else {
        panic!("not FiredMany")
    };
    let mut one_by_one = start;
    for (fire, batched_outcome) in fires.into_iter().zip(&outcomes) {
        let alone = one_by_one.apply(
            4,
            &Command::ScheduleFire {
                schedule: fire.schedule,
                due_at: fire.due_at,
                job: fire.job,
                rates: RATES,
                skip_reason: fire.skip_reason,
                at: 130_000,
            },
        );
        assert_eq!(&alone, batched_outcome);
    }
    assert_eq!(batched, one_by_one);
    assert_eq!(outcomes[3].as_ref().unwrap_err().code(), "not_found");
    assert!(matches!(
        outcomes[2],
        Ok(Effect::Fired {
            duplicate: true,
            ..
        })
    ));
    assert!(batched.job(&"job-1x".into()).is_none());
    assert_eq!(batched.schedule(&"sch-1".into()).unwrap().fired, 2);
    assert_eq!(batched.schedule(&"sch-2".into()).unwrap().skipped, 1);
    invariants::check(&batched).unwrap();
}

#[test]
fn forbid_overlap_skips_a_fire_while_the_previous_job_is_active() {
    let create = Command::ScheduleCreate {
        schedule: "sch-1".into(),
        business: "acme".into(),
        name: None,
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        template: spec(0, 60),
        enabled: true,
        overlap: OverlapPolicy::Forbid,
        catch_up: CatchUpPolicy::LatestOnly,
        at: 1,
    };
    let fire = |job: &str, due_at| Command::ScheduleFire {
        schedule: "sch-1".into(),
        due_at,
        job: job.into(),
        rates: RATES,
        skip_reason: None,
        at: due_at,
    };
    let mut state = applied(&[create, fire("job-a", 60_000)]);
    let Effect::Fired { job, skipped, .. } = apply(&mut state, &fire("job-b", 120_000)).unwrap()
    else {
        panic!()
    };
    assert!(job.is_none());
    assert_eq!(skipped.as_deref(), Some("overlap"));
    assert_eq!(state.schedule(&"sch-1".into()).unwrap().skipped, 1);
}

#[test]
fn state_survives_a_serde_round_trip_with_its_indexes() {
    let state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
        submit("job-2", "acme", spec(1000, 100)),
        assign("job-1", "att-1", "n1", 20),
    ]);
    let json = serde_json::to_string(&state).unwrap();
    let back: tanvrit_state::State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert_eq!(back.pending_jobs().count(), 1);
    assert_eq!(back.node_allocated(&"n1".into()).cpu_millis, 1000);
}
