//! The client commands, one file per resource; each talks to the API through the SDK.

pub mod bench;
pub mod bench_process;
pub mod cluster;
pub mod credit;
pub mod events;
pub mod failover;
pub mod job;
pub mod key;
pub mod ledger_bench;
pub mod node;
pub mod scale;
pub mod schedule;
pub mod schedule_bench;

use tanvrit_client::Client;

/// The client a write command uses: one that sends `--idempotency-key` as the
/// `Idempotency-Key` header when it was given, so running the same command again with
/// the same key answers with the first result instead of acting twice.
pub(crate) fn keyed(client: &Client, idempotency_key: Option<&str>) -> Client {
    match idempotency_key {
        Some(key) => client.with_idempotency_key(key),
        None => client.clone(),
    }
}
