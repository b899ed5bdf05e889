//! Test-only harness shared by every test crate: nothing here ships in the binary.
//!
//! # Layout
//! - [`process`]: the real `tanvrit` binary as a child process: start on a free port,
//!   `kill -9`, restart on the same address and data directory.

pub mod process;
