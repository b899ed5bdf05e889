//! Placement planning: priority, fit, labels, strategies, credits and backoff.

mod support;

use support::*;
use tanvrit_api::*;
use tanvrit_state::scheduler::{plan, Planned, Strategy};
use tanvrit_state::{Command, Placement};

fn placements(planned: &[Planned]) -> Vec<(String, String)> {
    planned
        .iter()
        .map(|p| (p.job.to_string(), p.node.to_string()))
        .collect()
}

#[test]
fn higher_priority_is_placed_first_then_older_jobs() {
    let mut urgent = spec(1000, 10);
    urgent.priority = 5;
    let state = applied(&[
        top_up("acme", 1_000_000, "t"),
        register("n1", 2000),
        submit("job-a-old", "acme", spec(1000, 10)),
        submit("job-b-newer", "acme", spec(1000, 10)),
        Command::JobSubmit {
            job: "job-urgent".into(),
            business: "acme".into(),
            spec: urgent,
            idempotency_key: None,
            rates: RATES,
            at: 50,
        },
    ]);
    let (planned, report) = plan(&state, 100, Strategy::BinPack, 100);
    assert_eq!(
        placements(&planned),
        vec![
            ("job-urgent".into(), "n1".into()),
            ("job-a-old".into(), "n1".into())
        ]
    );
    assert_eq!(report.no_capacity, 1, "the third job waits for room");
}

#[test]
fn bin_pack_fills_the_fullest_node_and_spread_the_emptiest() {
    let state = applied(&[
        top_up("acme", 1_000_000, "t"),
        register("big", 8000),
        register("small", 2000),
        submit("job-1", "acme", spec(1000, 10)),
    ]);
    let (packed, _) = plan(&state, 100, Strategy::BinPack, 10);
    assert_eq!(packed[0].node, NodeId::from("small"));
    let (spread, _) = plan(&state, 100, Strategy::Spread, 10);
    assert_eq!(spread[0].node, NodeId::from("big"));
}

#[test]
fn labels_and_node_state_restrict_placement() {
    let mut gpu_job = spec(1000, 10);
    gpu_job.labels.insert("zone".into(), "eu".into());
    let state = applied(&[
        top_up("acme", 1_000_000, "t"),
        register("n1", 4000),
        Command::NodeRegister {
            node: "eu1".into(),
            name: "eu1".into(),
            resources: Resources {
                cpu_millis: 4000,
                memory_mb: 1024,
                gpus: 0,
            },
            labels: [("zone".to_string(), "eu".to_string())].into(),
            drivers: Vec::new(),
            at: 5,
        },
        Command::NodeDrain {
            node: "eu1".into(),
            deadline: None,
            at: 6,
        },
        Command::JobSubmit {
            job: "job-eu".into(),
            business: "acme".into(),
            spec: gpu_job,
            idempotency_key: None,
            rates: RATES,
            at: 10,
        },
    ]);
    let (planned, report) = plan(&state, 100, Strategy::BinPack, 10);
    assert!(planned.is_empty(), "the only eu node is draining");
    assert_eq!(report.no_capacity, 1);
}

#[test]
fn a_plan_applies_cleanly_and_the_next_plan_is_empty() {
    let mut commands = vec![top_up("acme", 10_000_000, "t")];
    for n in 0..5 {
        commands.push(register(&format!("n{n}"), 4000));
    }
    for j in 0..30 {
        commands.push(submit(&format!("job-{j:02}"), "acme", spec(1000, 10)));
    }
    let mut state = applied(&commands);
    let (planned, _) = plan(&state, 100, Strategy::BinPack, 1000);
    assert_eq!(planned.len(), 20, "5 nodes x 4 cores");
    let assign = Command::JobsAssign {
        placements: planned
            .iter()
            .enumerate()
            .map(|(i, p)| Placement {
                job: p.job.clone(),
                attempt: AttemptId(format!("att-{i}")),
                node: p.node.clone(),
            })
            .collect(),
        at: 100,
    };
    let tanvrit_state::Effect::Placements { placed, refused } = apply(&mut state, &assign).unwrap()
    else {
        panic!()
    };
    assert_eq!(placed.len(), 20);
    assert!(refused.is_empty());
    let (again, report) = plan(&state, 200, Strategy::BinPack, 1000);
    assert!(again.is_empty());
    assert_eq!(report.no_capacity, 10);
    tanvrit_state::invariants::check(&state).unwrap();
}

#[test]
fn jobs_backing_off_or_short_of_credits_wait() {
    let mut retrying = spec(1000, 10);
    retrying.max_retries = 1;
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t"),
        register("n1", 4000),
        Command::JobSubmit {
            job: "job-r".into(),
            business: "acme".into(),
            spec: retrying,
            idempotency_key: None,
            rates: RATES,
            at: 10,
        },
        assign("job-r", "att-1", "n1", 20),
        started("job-r", "att-1", 30),
        finished("job-r", "att-1", tanvrit_state::FinishKind::Failed, 40),
    ]);
    let (planned, report) = plan(&state, 41, Strategy::BinPack, 10);
    assert!(planned.is_empty());
    assert_eq!(report.backing_off, 1);
    assert_eq!(report.next_wake, Some(1040));
    let (planned, _) = plan(&state, 1040, Strategy::BinPack, 10);
    assert_eq!(planned.len(), 1);

    // Drain the balance: the retry can no longer renew its hold.
    let available = state.account(&"acme".into()).unwrap().available;
    apply(
        &mut state,
        &Command::LedgerEntryCreate {
            entry: EntryId("ent-x".into()),
            business: "acme".into(),
            kind: EntryKind::Adjustment,
            amount: -available,
            idempotency_key: "drain".into(),
            note: None,
            at: 50,
        },
    )
    .unwrap();
    let (planned, report) = plan(&state, 2000, Strategy::BinPack, 10);
    assert!(planned.is_empty());
    assert_eq!(report.waiting_for_credits, 1);
}
