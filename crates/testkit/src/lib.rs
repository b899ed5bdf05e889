//! Test-only harness shared by every Tanvrit test crate: in-process Raft clusters on
//! temporary directories, and a transport that drops, delays and partitions messages.
//!
//! # Layout
//! - `browser` (feature `browser`): a headless Chromium over WebDriver, for the web
//!   console's tests.
//! - [`faults`]: [`Faults`], the switches (isolate, partition, loss, delay).
//! - [`transport`]: [`InProcess`] (replicas in one process, messages through the real
//!   wire encoding) and [`FaultyTransport`] (faults in front of any transport).
//! - [`cluster`]: [`TestCluster`], N replicas with stop, crash, restart and add.
//! - [`commands`]: small commands for tests that just need writes.
//! - [`poll`]: [`eventually`], waiting for a condition instead of sleeping.
//! - [`process`]: the real `tanvrit` binary as a child process: start on a free port,
//!   `kill -9`, restart on the same address and data directory; [`ProcessCluster`],
//!   several of them as one Raft cluster (over mutual TLS with [`TestPki`]).
//! - [`tls`]: [`TestPki`], a throwaway CA and certificates for replicas and agents.
//!
//! Tests poll for conditions; nothing here sleeps a fixed time except to emulate the
//! network (a dropped message costs its caller the whole timeout, as on a real one).

#[cfg(feature = "browser")]
pub mod browser;
pub mod cluster;
pub mod commands;
pub mod faults;
pub mod poll;
pub mod process;
pub mod tls;
pub mod transport;

pub use cluster::{ClusterOptions, TestCluster};
pub use faults::Faults;
pub use poll::eventually;
pub use process::{ProcessCluster, ServerProcess};
pub use tls::TestPki;
pub use transport::{FaultyTransport, InProcess};

/// Sends `tracing` output to the test's captured output, filtered by `RUST_LOG`
/// (default: warnings). Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
