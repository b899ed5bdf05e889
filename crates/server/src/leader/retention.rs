//! The retention loop: every `retention_interval` it proposes a `JobsCollect` with the
//! cutoff `now - job_retention` when something is due (a terminal job that ended before
//! the cutoff, or an idempotency record past its window), and again at once while a
//! batch leaves more behind.
//!
//! The cutoff is chosen here, on the leader's clock, and travels in the command: every
//! replica removes the same jobs at the same index, and deletes their logs as it applies
//! it. A batch is at most [`COLLECT_BATCH`] jobs, so no entry takes long to apply.

use std::time::Duration;

use tanvrit_api::Millis;
use tanvrit_state::{Command, Effect};

use super::{LeaderContext, ProposeError};
use crate::app::now_ms;

/// Most jobs one `JobsCollect` removes.
pub(crate) const COLLECT_BATCH: u32 = 1000;

/// One pass at `now`: proposes a collection if anything is due; returns whether the
/// collection left more behind (then the caller collects again at once).
pub(crate) async fn collect(
    context: &LeaderContext,
    retention: Duration,
    now: Millis,
) -> Result<bool, ProposeError> {
    let retention_ms = Millis::try_from(retention.as_millis()).unwrap_or(Millis::MAX);
    let cutoff = now.saturating_sub(retention_ms);
    if !context
        .reader()
        .read(|state| state.collection_due(cutoff, now))
    {
        return Ok(false);
    }
    let command = Command::JobsCollect {
        cutoff,
        limit: COLLECT_BATCH,
        at: now,
    };
    match context.propose(command).await? {
        (
            Ok(Effect::JobsCollected {
                jobs,
                records,
                more,
            }),
            index,
        ) => {
            context.metrics.jobs_collected.inc_by(jobs.len() as u64);
            tracing::info!(
                jobs = jobs.len(),
                records,
                more,
                cutoff,
                index,
                "collected jobs past retention"
            );
            Ok(more)
        }
        (outcome, _) => {
            tracing::warn!(?outcome, "unexpected outcome of a JobsCollect");
            Ok(false)
        }
    }
}

/// The retention loop; returns only when the replica shuts down. Not started when
/// `job_retention` is zero.
pub(crate) async fn run(context: &LeaderContext) {
    let retention = context.config.job_retention;
    loop {
        match collect(context, retention, now_ms()).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(ProposeError::ShuttingDown) => return,
            // Logged by `propose`; the next pass tries again.
            Err(ProposeError::Failed) => {}
        }
        tokio::time::sleep(context.config.retention_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tanvrit_api::{BusinessId, JobId, JobSpec, Rates};
    use tanvrit_cluster::{ClusterService, SingleNode, SingleNodeConfig};

    use super::*;
    use crate::config::ServerConfig;
    use crate::leader::Liveness;
    use crate::metrics::LeaderMetrics;

    const HOUR: Duration = Duration::from_secs(3600);
    const HOUR_MS: Millis = 3_600_000;

    async fn write(cluster: &SingleNode, command: Command) {
        let receipt = cluster.submit_write(command).await.unwrap();
        assert!(receipt.outcome.is_ok(), "{:?}", receipt.outcome);
    }

    /// A job submitted and cancelled (so ended) at `at`.
    async fn ended_job(cluster: &SingleNode, job: &str, at: Millis) {
        let job = JobId::from(job);
        write(
            cluster,
            Command::JobSubmit {
                job: job.clone(),
                business: BusinessId::from("acme"),
                spec: JobSpec {
                    command: vec!["true".into()],
                    ..JobSpec::default()
                },
                idempotency_key: None,
                rates: Rates::default(),
                at,
            },
        )
        .await;
        write(
            cluster,
            Command::JobCancel {
                job,
                reason: None,
                at,
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_pass_collects_jobs_ended_before_now_minus_retention_and_proposes_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = SingleNode::open(SingleNodeConfig::new(dir.path())).unwrap();
        let context = LeaderContext {
            config: ServerConfig::default(),
            cluster: cluster.clone() as Arc<dyn ClusterService>,
            liveness: Liveness::new(),
            metrics: LeaderMetrics::default(),
        };
        let now = 100 * HOUR_MS;
        ended_job(&cluster, "job-old", now - 2 * HOUR_MS).await;
        ended_job(&cluster, "job-recent", now - HOUR_MS / 2).await;

        let applied = cluster.reader().applied_index();
        let pass = collect(&context, HOUR, now - HOUR_MS).await;
        assert!(matches!(pass, Ok(false)));
        assert_eq!(
            cluster.reader().applied_index(),
            applied,
            "nothing due: nothing proposed"
        );

        let pass = collect(&context, HOUR, now).await;
        assert!(matches!(pass, Ok(false)), "one batch took all that was due");
        cluster.reader().read(|state| {
            assert!(state.find_job(&JobId::from("job-old")).unwrap().is_none());
            assert!(state
                .find_job(&JobId::from("job-recent"))
                .unwrap()
                .is_some());
            assert_eq!(state.jobs_collected_before(), now - HOUR_MS);
        });
        assert_eq!(context.metrics.jobs_collected.get(), 1);
        cluster.shutdown().await;
    }
}
