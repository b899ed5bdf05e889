//! Proof under faults: a Jepsen-style suite for Tanvrit Compute. Concurrent clients
//! submit, cancel and read jobs while a fault schedule kills, partitions, pauses, slows
//! and wipes replicas; every operation is recorded, and a checker judges the history and
//! the replicas' final states.
//!
//! # Layout
//! - [`history`]: the recorded operations and the final states (plain data).
//! - [`checker`]: the guarantees, as pure functions over a history ([`checker::check`]).
//! - [`workload`]: the clients and the [`workload::Recorder`].
//! - [`fabric`]: the [`fabric::Fabric`] trait every fault backend implements.
//! - [`netns`]: the Linux network namespace backend; [`nfq`], the packet delayer.
//! - [`docker`]: the Docker backend (containers of the `tanvrit:dev` image).
//! - [`harness`]: a 3-replica cluster and two agents on a fabric; final states.
//! - [`scenario`]: the fault schedules and the verdict line.

pub mod checker;
pub mod docker;
pub mod fabric;
pub mod harness;
pub mod history;
pub mod netns;
pub mod nfq;
pub mod scenario;
pub mod workload;
