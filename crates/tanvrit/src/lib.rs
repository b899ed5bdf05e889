//! The `tanvrit` binary's commands, as a library so tests can drive them.
//!
//! # Layout
//! - [`agent`]: `tanvrit agent` (a worker agent) and the in-process agent of `dev`.
//! - [`cli`]: the command line (clap), global flags, exit codes and error reporting.
//! - [`commands`]: the client commands (`job`, `node`, `key`, `credit`, `schedule`,
//!   `cluster`), each calling the API through `tanvrit-client`.
//! - [`config`]: the replica configuration (TOML < `TANVRIT_*` env < flags).
//! - [`output`]: tables for people, JSON for scripts.
//! - [`parse`]: flag value parsers (durations, `k=v`, exact credit amounts, times).
//! - [`server`]: `tanvrit server` and `tanvrit dev` (a single-node replica).
//!
//! `anyhow` is used here and nowhere else in the workspace: the binary only reports errors.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod output;
pub mod parse;
pub mod server;
