//! Proof under faults: a Jepsen-style suite for Tanvrit Compute. Concurrent clients
//! submit, cancel and read jobs while a fault schedule kills, partitions, pauses and
//! wipes replicas; every operation is recorded, and a checker judges the history and
//! the replicas' final states.
//!
//! # Layout
//! - [`history`]: the recorded operations and the final states (plain data).
//! - [`checker`]: the guarantees, as pure functions over a history ([`checker::check`]).
pub mod checker;
pub mod history;
