//! What applying a command writes outside the domain state, the same on both write
//! engines (the single node and a Raft replica): the output chunk an accepted
//! `LogAppend` stores, and the jobs whose output an accepted `JobsCollect` deletes. Also
//! the `meta` mark saying which engine owns a data directory.
//!
//! Both engines use this module and neither imports the other for it.

use tanvrit_api::JobId;
use tanvrit_state::{Command, Effect, Outcome};
use tanvrit_store::JobLogChunk;

/// The meta key naming the engine that owns the data directory.
pub const META_MODE: &str = "mode";
/// [`META_MODE`]'s value for a Raft replica.
pub const MODE_RAFT: &[u8] = b"raft";

/// The chunk an accepted, new `LogAppend` carries (duplicates and rejections carry none).
pub(crate) fn chunk_of(command: &Command, outcome: &Outcome) -> Option<JobLogChunk> {
    match (command, outcome) {
        (
            Command::LogAppend {
                job,
                attempt,
                offset,
                data,
                ..
            },
            Ok(Effect::LogAppended {
                duplicate: false, ..
            }),
        ) if !data.is_empty() => Some(JobLogChunk {
            job: job.clone(),
            attempt: attempt.clone(),
            offset: *offset,
            data: data.as_bytes().to_vec(),
        }),
        _ => None,
    }
}

/// The jobs an accepted `JobsCollect` removed: their output is deleted with them, on
/// every replica, at the same index.
pub(crate) fn collected_of(outcome: &Outcome) -> &[JobId] {
    match outcome {
        Ok(Effect::JobsCollected { jobs, .. }) => jobs,
        _ => &[],
    }
}
