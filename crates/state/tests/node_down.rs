//! A node that goes down keeps its attempts until it comes back (they carry on) or is
//! declared lost (they are retried, and the old attempt's reports are fenced off).

mod support;

use support::*;
use tanvrit_api::{AttemptState, Job, JobId, JobState, NodeState};
use tanvrit_state::{invariants, Command, Effect, FinishKind};

fn job<'a>(state: &'a tanvrit_state::State, id: &str) -> &'a Job {
    state.job(&JobId::from(id)).expect("job exists")
}

fn down(node: &str, at: i64) -> Command {
    Command::NodeDown {
        node: node.into(),
        at,
    }
}

fn lost(node: &str, at: i64) -> Command {
    Command::NodeLost {
        node: node.into(),
        at,
    }
}

#[test]
fn a_down_node_keeps_its_running_attempt_and_takes_no_new_work() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
        submit("job-2", "acme", spec(1000, 100)),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 30),
        down("n1", 40),
    ]);
    assert_eq!(state.node(&"n1".into()).unwrap().state, NodeState::Down);
    let kept = job(&state, "job-1");
    assert_eq!(kept.state, JobState::Running);
    assert_eq!(kept.attempts.len(), 1);
    let Effect::Placements { placed, refused } =
        apply(&mut state, &assign("job-2", "att-2", "n1", 50)).unwrap()
    else {
        panic!("a JobsAssign answers with placements")
    };
    assert!(placed.is_empty(), "placed on a down node");
    assert_eq!(refused.len(), 1);
    invariants::check(&state).unwrap();
}

#[test]
fn a_down_node_that_registers_again_reports_its_attempt_and_is_charged_once() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        submit("job-1", "acme", spec(1000, 100)),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 30),
        down("n1", 40),
        register("n1", 4000),
        finished("job-1", "att-1", FinishKind::Succeeded, 60_030),
    ]);
    assert_eq!(state.node(&"n1".into()).unwrap().state, NodeState::Ready);
    let done = job(&state, "job-1");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].charged, 600, "60 s x 1 cpu x 10");
    let charged_again = apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 60_030),
    );
    assert!(charged_again.is_ok(), "a repeated report changes nothing");
    assert_eq!(job(&state, "job-1").attempts[0].charged, 600);
    invariants::check(&state).unwrap();
}

#[test]
fn losing_a_down_node_retries_its_work_and_fences_the_old_attempt() {
    let mut job_spec = spec(1000, 100);
    job_spec.max_retries = 1;
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t1"),
        register("n1", 4000),
        register("n2", 4000),
        submit("job-1", "acme", job_spec),
        assign("job-1", "att-1", "n1", 20),
        started("job-1", "att-1", 30),
        down("n1", 40),
        lost("n1", 300_040),
    ]);
    let retried = job(&state, "job-1");
    assert_eq!(retried.state, JobState::Pending);
    assert_eq!(retried.attempts[0].state, AttemptState::Lost);
    let err = apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 300_050),
    )
    .unwrap_err();
    assert_eq!(err.code(), "stale_attempt");
    invariants::check(&state).unwrap();
}

#[test]
fn down_and_lost_on_an_idle_or_deleted_node_change_nothing_or_are_refused() {
    let mut state = applied(&[register("n1", 4000), down("n1", 10), down("n1", 11)]);
    let before = domain(&state);
    apply(&mut state, &lost("n1", 12)).unwrap();
    assert_eq!(
        domain(&state)["nodes"],
        before["nodes"],
        "an idle down node stays as it was"
    );
    apply(
        &mut state,
        &Command::NodeDelete {
            node: "n1".into(),
            force: false,
            at: 13,
        },
    )
    .unwrap();
    assert_eq!(
        apply(&mut state, &down("n1", 14)).unwrap_err().code(),
        "illegal_transition"
    );
}
