//! GPUs assigned, not just counted: on a node configured with two devices, two attempts
//! running at once that each asked for one see different ones in `CUDA_VISIBLE_DEVICES`
//! (and `NVIDIA_VISIBLE_DEVICES`), one that asked for none sees none, and one asking for
//! more than are free runs nothing. No real GPU is needed: the devices are configured.

use std::sync::Arc;
use std::time::Duration;

use tanvrit_agent::gpus::GpuPool;
use tanvrit_agent::isolation::Isolation;
use tanvrit_agent::process::{self, scratch_dir, RunSpec};
use tanvrit_agent::spool::{Next, Spool};
use tanvrit_client::api::{
    AttemptFinishedRequest, AttemptId, AttemptOutcome, JobId, JobSpec, Resources,
};
use tokio::sync::{watch, Notify};

struct Node {
    _dir: tempfile::TempDir,
    spool: Arc<Spool>,
    isolation: Arc<Isolation>,
}

fn node(devices: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let gpus = GpuPool::new(devices.iter().map(|d| d.to_string()));
    let isolation = Isolation::none(dir.path().join("work")).with_devices(None, gpus);
    let (spool, _) = Spool::open(&dir.path().join("spool"), 1 << 30).unwrap();
    Node {
        _dir: dir,
        spool: Arc::new(spool),
        isolation: Arc::new(isolation),
    }
}

impl Node {
    fn start(
        &self,
        name: &str,
        gpus: u32,
        script: &str,
    ) -> (AttemptId, tokio::task::JoinHandle<AttemptFinishedRequest>) {
        let attempt = AttemptId(format!("att-{name}"));
        let job = JobId(format!("job-{name}"));
        self.spool.create(&job, &attempt, 0);
        let run = RunSpec {
            job,
            attempt: attempt.clone(),
            scratch_dir: scratch_dir(self.isolation.work_root(), &attempt),
            spec: JobSpec {
                shell: Some(script.into()),
                resources: Resources {
                    gpus,
                    ..Resources::JOB_DEFAULT
                },
                ..JobSpec::default()
            },
            stop_grace: Duration::from_millis(200),
            isolation: self.isolation.clone(),
        };
        let (_stop, rx) = watch::channel(None);
        let spool = self.spool.clone();
        let task = tokio::spawn(async move {
            let _stop = _stop;
            let notify = Notify::new();
            process::run(&run, &spool, &notify, rx).await
        });
        (attempt, task)
    }

    fn output(&self, attempt: &AttemptId) -> String {
        let mut text = String::new();
        loop {
            match self.spool.next(attempt, 1 << 20) {
                Next::Chunk(chunk) => {
                    text.push_str(&chunk.data);
                    let next = chunk.offset + chunk.data.len() as u64;
                    self.spool.acked(attempt, &chunk, next);
                }
                Next::Started(_) => self.spool.started_delivered(attempt),
                _ => return text,
            }
        }
    }
}

const SHOW: &str = "echo \"cuda=[$CUDA_VISIBLE_DEVICES] nvidia=[$NVIDIA_VISIBLE_DEVICES]\"";

#[tokio::test]
async fn two_attempts_that_each_asked_for_one_gpu_see_different_devices() {
    let node = node(&["0", "1"]);
    // Both hold their GPU at once: each waits until the other has started too.
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().display();
    let script = |me: &str, other: &str| {
        format!(
            "{SHOW}; touch {gate}/{me}; i=0; while [ ! -e {gate}/{other} ] && [ $i -lt 200 ]; \
             do sleep 0.05; i=$((i+1)); done"
        )
    };
    let (a, first) = node.start("a", 1, &script("a", "b"));
    let (b, second) = node.start("b", 1, &script("b", "a"));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.outcome, AttemptOutcome::Succeeded, "{first:?}");
    assert_eq!(second.outcome, AttemptOutcome::Succeeded, "{second:?}");
    let mut seen = vec![node.output(&a), node.output(&b)];
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "cuda=[0] nvidia=[0]\n".to_string(),
            "cuda=[1] nvidia=[1]\n".to_string()
        ]
    );
}

#[tokio::test]
async fn an_attempt_asking_for_no_gpu_sees_none_and_one_asking_for_more_runs_nothing() {
    let node = node(&["GPU-a", "GPU-b"]);
    let (none, task) = node.start("none", 0, SHOW);
    assert_eq!(task.await.unwrap().outcome, AttemptOutcome::Succeeded);
    assert_eq!(node.output(&none), "cuda=[] nvidia=[void]\n");

    let (both, task) = node.start("both", 2, SHOW);
    assert_eq!(task.await.unwrap().outcome, AttemptOutcome::Succeeded);
    assert_eq!(
        node.output(&both),
        "cuda=[GPU-a,GPU-b] nvidia=[GPU-a,GPU-b]\n"
    );

    let (greedy, task) = node.start("greedy", 3, SHOW);
    let result = task.await.unwrap();
    assert_eq!(result.outcome, AttemptOutcome::Failed);
    assert!(
        result
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("asks for 3 GPUs"),
        "{result:?}"
    );
    assert_eq!(node.output(&greedy), "", "nothing ran");
}
