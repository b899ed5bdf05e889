//! The client commands, one file per resource; each talks to the API through the SDK
//! (but `tls`, which makes certificates locally).

pub mod bench;
pub mod bench_process;
pub mod cluster;
pub mod credit;
pub mod events;
pub mod failover;
pub mod job;
pub mod job_list;
pub mod key;
pub mod ledger_bench;
pub mod node;
pub mod scale;
pub mod schedule;
pub mod schedule_bench;
pub mod tls;

use tanvrit_client::{Client, ClientError};

/// The business an admin key's jobs and schedules go to when no `--business` is given;
/// a user key's go to its own business (the server fills it in).
pub const DEFAULT_BUSINESS: &str = "default";

/// Whether the server refused a write only because an admin key named no business: the
/// command then repeats it for [`DEFAULT_BUSINESS`].
pub(crate) fn needs_business(err: &ClientError) -> bool {
    err.code() == "invalid" && err.message().contains("must name the `business`")
}

/// The client a write command uses: one that sends `--idempotency-key` as the
/// `Idempotency-Key` header when it was given, so running the same command again with
/// the same key answers with the first result instead of acting twice.
pub(crate) fn keyed(client: &Client, idempotency_key: Option<&str>) -> Client {
    match idempotency_key {
        Some(key) => client.with_idempotency_key(key),
        None => client.clone(),
    }
}
