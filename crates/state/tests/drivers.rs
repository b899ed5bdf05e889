//! Placement by driver: a job naming an image goes only to a node that offers the
//! `docker` driver; a host command goes anywhere (every node offers `exec`).

mod support;

use support::*;
use tanvrit_api::*;
use tanvrit_state::scheduler::{plan, Strategy};
use tanvrit_state::{Command, Rejection};

fn register_with(node: &str, drivers: &[&str]) -> Command {
    let Command::NodeRegister {
        node,
        name,
        resources,
        labels,
        at,
        ..
    } = register(node, 4000)
    else {
        unreachable!("register builds a NodeRegister")
    };
    Command::NodeRegister {
        node,
        name,
        resources,
        labels,
        drivers: drivers.iter().map(|d| d.to_string()).collect(),
        at,
    }
}

fn in_image(cpu: u64) -> JobSpec {
    JobSpec {
        image: Some("tanvrit-test-busybox:1".into()),
        ..spec(cpu, 10)
    }
}

#[test]
fn a_job_naming_an_image_is_placed_only_on_a_node_offering_docker() {
    let state = applied(&[
        top_up("acme", 1_000_000, "t"),
        register_with("exec-only", &["exec"]),
        register_with("legacy", &[]),
        register_with("docker", &["exec", "docker"]),
        submit("job-image", "acme", in_image(1000)),
        submit("job-host", "acme", spec(1000, 10)),
    ]);
    let (planned, _) = plan(&state, 100, Strategy::BinPack, 10);
    let node_of = |job: &str| {
        planned
            .iter()
            .find(|p| p.job == JobId::from(job))
            .map(|p| p.node.to_string())
    };
    assert_eq!(node_of("job-image"), Some("docker".into()));
    assert!(node_of("job-host").is_some());
}

#[test]
fn with_no_docker_node_an_image_job_waits_and_a_forced_placement_is_refused() {
    let mut state = applied(&[
        top_up("acme", 1_000_000, "t"),
        register_with("exec-only", &["exec"]),
        submit("job-image", "acme", in_image(1000)),
    ]);
    let (planned, report) = plan(&state, 100, Strategy::BinPack, 10);
    assert!(planned.is_empty());
    assert_eq!(report.no_capacity, 1);
    let Ok(tanvrit_state::Effect::Placements { placed, refused }) =
        apply(&mut state, &assign("job-image", "att-1", "exec-only", 20))
    else {
        panic!("a JobsAssign answers Placements");
    };
    assert!(placed.is_empty());
    assert!(
        matches!(&refused[0].1, Rejection::Invalid { message } if message.contains("docker")),
        "{refused:?}"
    );
}
