//! Settled jobs out of memory: a state with an archive keeps only jobs in flight, loads
//! a settled one back when a command names it, and answers as if it had never left.

mod support;

use std::sync::Arc;

use support::{apply, assign, finished, register, spec, started, submit, top_up};
use tanvrit_api::{JobId, JobState};
use tanvrit_state::{Command, FinishKind, JobFilter, MemoryTables, State};

fn with_archive() -> (State, Arc<MemoryTables>) {
    let tables = Arc::new(MemoryTables::new());
    let mut state = State::new();
    state.set_archive(tables.clone());
    (state, tables)
}

fn id(job: &str) -> JobId {
    JobId::from(job)
}

#[test]
fn a_settled_job_leaves_memory_and_is_still_found_listed_and_counted() {
    let (mut state, tables) = with_archive();
    apply(&mut state, &top_up("acme", 100_000_000, "t1")).unwrap();
    apply(&mut state, &register("n1", 4_000)).unwrap();
    apply(&mut state, &submit("job-1", "acme", spec(1_000, 60))).unwrap();
    apply(&mut state, &submit("job-2", "acme", spec(1_000, 60))).unwrap();
    apply(&mut state, &assign("job-1", "att-1", "n1", 2_000)).unwrap();
    apply(&mut state, &started("job-1", "att-1", 2_001)).unwrap();
    apply(
        &mut state,
        &finished("job-1", "att-1", FinishKind::Succeeded, 2_005),
    )
    .unwrap();
    tables.write_batch(&mut state);

    assert!(
        state.job(&id("job-1")).is_none(),
        "the settled job left memory"
    );
    assert!(state.job(&id("job-2")).is_some(), "the pending job stays");
    let found = state.find_job(&id("job-1")).unwrap().unwrap();
    assert_eq!(found.state, JobState::Succeeded);
    let (page, _) = state
        .list_jobs(&JobFilter {
            limit: 10,
            ..JobFilter::default()
        })
        .unwrap();
    let ids: Vec<_> = page.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids, ["job-2", "job-1"]);
    assert_eq!(state.job_counts().get(&JobState::Succeeded), Some(&1));
    assert_eq!(state.job_total(), 2);
}

#[test]
fn a_command_naming_a_settled_job_sees_it_as_if_it_never_left() {
    let (mut state, tables) = with_archive();
    apply(&mut state, &top_up("acme", 100_000_000, "t1")).unwrap();
    apply(&mut state, &submit("job-1", "acme", spec(1_000, 60))).unwrap();
    let cancel = Command::JobCancel {
        job: id("job-1"),
        reason: None,
        at: 3_000,
    };
    apply(&mut state, &cancel).unwrap();
    tables.write_batch(&mut state);
    assert!(state.job(&id("job-1")).is_none());

    // A second cancel is refused exactly as it would be with the job in memory.
    let again = apply(&mut state, &cancel).unwrap_err();
    assert_eq!(again.code(), "illegal_transition");
    // A retry brings it back into flight: it stays in memory after the batch.
    let retry = Command::JobRetry {
        job: id("job-1"),
        at: 4_000,
    };
    apply(&mut state, &retry).unwrap();
    tables.write_batch(&mut state);
    assert_eq!(state.job(&id("job-1")).unwrap().state, JobState::Pending);
    // Submitting a new job under a settled job's id is refused, not a second job.
    apply(&mut state, &cancel).unwrap();
    tables.write_batch(&mut state);
    let duplicate = apply(&mut state, &submit("job-1", "acme", spec(1_000, 60))).unwrap_err();
    assert_eq!(duplicate.code(), "already_exists");
}

#[test]
fn a_restart_loads_the_working_set_and_collects_settled_jobs_from_the_archive() {
    let (mut state, tables) = with_archive();
    apply(&mut state, &top_up("acme", 100_000_000, "t1")).unwrap();
    for n in 0..5 {
        apply(
            &mut state,
            &submit(&format!("job-{n}"), "acme", spec(1_000, 60)),
        )
        .unwrap();
    }
    for n in 0..3 {
        let cancel = Command::JobCancel {
            job: id(&format!("job-{n}")),
            reason: None,
            at: 3_000,
        };
        apply(&mut state, &cancel).unwrap();
    }
    tables.write_batch(&mut state);
    let mut restarted = tables.load_working_set().unwrap();
    restarted.set_archive(tables.clone());
    assert_eq!(restarted.job_counts(), state.job_counts());
    assert!(restarted.job(&id("job-0")).is_none());
    assert!(restarted.job(&id("job-4")).is_some());

    let collect = Command::JobsCollect {
        cutoff: 10_000,
        limit: 10,
        at: 10_000,
    };
    apply(&mut restarted, &collect).unwrap();
    tables.write_batch(&mut restarted);
    for n in 0..3 {
        assert!(restarted
            .find_job(&id(&format!("job-{n}")))
            .unwrap()
            .is_none());
    }
    assert_eq!(restarted.job_total(), 2);
    // The tables lost the collected jobs' rows too.
    assert_eq!(tables.load().unwrap().job_total(), 2);
}
