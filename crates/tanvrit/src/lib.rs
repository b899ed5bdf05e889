//! The `tanvrit` binary's commands, as a library so tests can drive them.
//!
//! # Layout
//! - [`agent`]: `tanvrit agent` (a worker agent) and the in-process agent of `dev`.
//! - [`cli`]: the command line (clap), global flags, exit codes and error reporting.
//! - [`commands`]: the client commands (`job`, `node`, `key`, `credit`, `schedule`,
//!   `cluster`), each calling the API through `tanvrit-client`; and `tls`, which makes
//!   certificates locally.
//! - [`config`]: the replica configuration (TOML < `TANVRIT_*` env < flags).
//! - [`dev_cluster`]: `tanvrit dev --replicas N`, a Raft cluster in one process.
//! - [`dev_tls`]: the throwaway CA and certificates `dev` runs TLS with.
//! - [`output`]: tables for people, JSON for scripts.
//! - [`parse`]: flag value parsers (durations, `k=v`, exact credit amounts, times).
//! - [`raft`]: Raft mode of a replica (its `RaftCluster`, the admin key once led).
//! - [`server`]: `tanvrit server` and `tanvrit dev` (one replica).
//!
//! `anyhow` is used here and nowhere else in the workspace: the binary only reports errors.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dev_cluster;
pub mod dev_tls;
pub mod output;
pub mod parse;
pub mod raft;
pub mod server;
