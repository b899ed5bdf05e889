//! Events derived from applied commands: what each change yields, that repeats and
//! refusals yield nothing, and that the derivation is the same on every replica.

mod support;

use support::*;
use tanvrit_api::{EventObject, Topic};
use tanvrit_state::events::{events_of, EventFilter};
use tanvrit_state::{Command, FinishKind, State};

/// Applies `commands` in order and returns every event, as one replica would derive them.
fn derive(commands: &[Command]) -> Vec<tanvrit_api::Event> {
    let mut state = State::new();
    let mut events = Vec::new();
    for command in commands {
        let index = next(&state);
        let outcome = state.apply(index, command);
        events.extend(events_of(index, command, &outcome, &state));
    }
    events
}

fn lifecycle() -> Vec<Command> {
    vec![
        top_up("acme", 1_000_000_000, "t1"),
        register("n1", 4000),
        submit("j1", "acme", spec(1000, 60)),
        assign("j1", "a1", "n1", 10),
        started("j1", "a1", 11),
        finished("j1", "a1", FinishKind::Succeeded, 12),
    ]
}

#[test]
fn a_job_lifecycle_yields_its_job_and_attempt_events_in_log_order() {
    let events = derive(&lifecycle());
    let kinds: Vec<(u64, u32, &str)> = events
        .iter()
        .map(|e| (e.index, e.seq, e.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, 0, "credit_entry_created"),
            (2, 0, "node_ready"),
            (3, 0, "job_pending"),
            (4, 0, "attempt_assigned"),
            (4, 1, "job_assigned"),
            (5, 0, "attempt_running"),
            (5, 1, "job_running"),
            (6, 0, "attempt_succeeded"),
            (6, 1, "job_succeeded"),
        ]
    );
    let placed = &events[3];
    assert_eq!(placed.topic, Topic::Attempt);
    assert_eq!(placed.business.as_ref().unwrap().as_str(), "acme");
    assert_eq!(placed.node.as_ref().unwrap().as_str(), "n1");
    assert_eq!(placed.job.as_ref().unwrap().as_str(), "j1");
    let Some(EventObject::Job(done)) = &events[8].object else {
        panic!("a job event carries the job: {:?}", events[8]);
    };
    assert_eq!(done.state.as_str(), "succeeded");
}

#[test]
fn two_replicas_derive_the_same_events() {
    assert_eq!(derive(&lifecycle()), derive(&lifecycle()));
}

#[test]
fn refused_and_repeated_commands_yield_no_event() {
    let mut commands = lifecycle();
    // A second report of the same end is a duplicate; a cancel of a finished job is refused.
    commands.push(finished("j1", "a1", FinishKind::Succeeded, 13));
    commands.push(Command::JobCancel {
        job: "j1".into(),
        reason: None,
        at: 14,
    });
    let events = derive(&commands);
    assert!(events.iter().all(|e| e.index <= 6), "{events:?}");
}

#[test]
fn a_tenant_filter_passes_only_its_business_and_its_topics() {
    let mut commands = lifecycle();
    commands.push(top_up("rival", 1_000_000_000, "t2"));
    commands.push(submit("j2", "rival", spec(1000, 60)));
    let events = derive(&commands);
    let acme = EventFilter {
        business: Some("acme".into()),
        tenant: true,
        ..EventFilter::default()
    };
    let passed: Vec<_> = events.iter().filter(|e| acme.matches(e)).collect();
    assert!(!passed.is_empty());
    assert!(passed
        .iter()
        .all(|e| e.business.as_ref().unwrap().as_str() == "acme" && e.topic != Topic::Node));
    // A tenant filter without a business passes nothing (never everything).
    let broken = EventFilter {
        tenant: true,
        ..EventFilter::default()
    };
    assert!(events.iter().all(|e| !broken.matches(e)));
    let only_node = EventFilter {
        node: Some("n1".into()),
        topics: vec![Topic::Node],
        ..EventFilter::default()
    };
    assert_eq!(events.iter().filter(|e| only_node.matches(e)).count(), 1);
}

#[test]
fn a_lost_node_yields_its_attempts_and_their_jobs_too() {
    let mut commands = lifecycle();
    commands.truncate(5); // j1 runs on n1
    commands.push(Command::NodeLost {
        node: "n1".into(),
        at: 20,
    });
    let events = derive(&commands);
    let last: Vec<&str> = events
        .iter()
        .filter(|e| e.index == 6)
        .map(|e| e.kind.as_str())
        .collect();
    // Requeued (no retries left means lost; the default spec has none).
    assert_eq!(last[0], "node_down");
    assert_eq!(last[1], "attempt_lost");
    assert!(
        last[2] == "job_pending" || last[2] == "job_lost",
        "{last:?}"
    );
    assert_eq!(last.len(), 3);
}
