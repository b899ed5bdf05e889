//! The client commands, one file per resource; each talks to the API through the SDK.

pub mod bench;
pub mod cluster;
pub mod credit;
pub mod failover;
pub mod job;
pub mod key;
pub mod node;
pub mod schedule;
