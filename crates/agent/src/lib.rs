//! The Tanvrit Compute worker agent: registers its node, heartbeats, long-polls the
//! node's work, runs each attempt as a child process in its own process group (and,
//! unless started with `--isolation none`, its own cgroup, uid and private directory), ships
//! the output as ordered log chunks, reports starts and results, and keeps all of that
//! in an on-disk spool while the control plane cannot be reached. Its processes run only
//! while it holds a lease that acknowledged heartbeats renew: cut off from the control
//! plane for nearly a node TTL, it stops them.
//!
//! # Layout
//! - [`agent`]: [`Agent`]: registration, the heartbeat and work loops, the table of
//!   attempts, shutdown.
//! - `registration`: registering the node (resources, labels, drivers) and setting up
//!   its devices (the Docker engine, GPUs).
//! - [`lease`]: [`lease::Lease`], how long the agent may run and start attempts without
//!   an acknowledged heartbeat (it stops them before the control plane retries them
//!   elsewhere).
//! - `attempt`: one attempt's task: its process and the ordered delivery of its start,
//!   output and result, with backoff.
//! - [`process`]: spawning a job (argv or `/bin/sh -c`, env, working dir, process group),
//!   timeouts, SIGTERM/SIGKILL stops, exit classification.
//! - [`isolation`]: `--isolation cgroup|none`, what the node enforces, and each
//!   attempt's sandbox.
//! - [`sandbox`]: one attempt's cgroup, uid and private directory (also its `/tmp`), and
//!   the code run between fork and exec that puts its process in them.
//! - [`cgroup`]: finding the agent's cgroup (v1 or v2), attempt cgroups, limits, usage,
//!   OOM kills.
//! - [`docker`]: the `docker` driver: jobs naming an image run in containers with the
//!   same limits, a non-root user and no network.
//! - [`gpus`]: the node's GPU devices, shared out so no two attempts hold one.
//! - [`uids`]: the range of uids attempts run as, shared out between the host's agents.
//! - [`spool`]: undelivered output and results on disk, bounded, with offsets that match
//!   the control plane's stored output.
//! - [`config`]: [`AgentConfig`], machine resources, the stable node id.
//! - [`backoff`]: capped exponential backoff with jitter.
//! - [`utf8`]: streaming UTF-8 decoding of process output.
//! - [`error`]: the [`AgentError`] enum.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tanvrit_agent::AgentError> {
//! use tanvrit_agent::{Agent, AgentConfig};
//! use tanvrit_client::{Client, ClientConfig};
//!
//! let client = Client::new(ClientConfig {
//!     endpoints: vec!["http://127.0.0.1:7070".into()],
//!     api_key: Some("tvk-agent-key".into()),
//!     ..ClientConfig::default()
//! })
//! .expect("valid client configuration");
//! let agent = Agent::new(client, AgentConfig::new("./tanvrit-agent-data"))?;
//! agent
//!     .run(async { let _ = tokio::signal::ctrl_c().await; }, |node| {
//!         println!("registered node {}", node.id)
//!     })
//!     .await
//! # }
//! ```

pub mod agent;
mod attempt;
pub mod backoff;
pub mod cgroup;
pub mod config;
pub mod docker;
pub mod error;
pub mod gpus;
pub mod isolation;
pub mod lease;
pub mod process;
mod registration;
pub mod sandbox;
pub mod spool;
pub mod uids;
pub mod utf8;

pub use agent::Agent;
pub use config::{AgentConfig, NODE_ID_FILE};
pub use error::AgentError;
pub use isolation::{IsolationConfig, IsolationMode};
