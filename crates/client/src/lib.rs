//! The Tanvrit Compute Rust SDK: one typed method per API route, several endpoints with
//! failover, retries with backoff that stay safe for writes, and read-your-writes tokens.
//!
//! # Layout
//! - [`config`]: [`ClientConfig`], including `TANVRIT_ADDR` / `TANVRIT_API_KEY`.
//! - [`client`]: [`Client`] and the request loop (retries, `Retry-After`, failover,
//!   the consistency token), handles that send an `Idempotency-Key` with every write
//!   ([`Client::with_idempotency_key`]), plus raw calls for tests.
//! - [`endpoints`]: the typed methods, one per route.
//! - [`events`]: [`EventStream`], the event stream, resumed across replicas.
//! - [`error`]: [`ClientError`], with a stable `code()`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tanvrit_client::ClientError> {
//! use tanvrit_client::{api, Client};
//!
//! let client = Client::from_env()?;
//! let submitted = client
//!     .submit_job(api::JobSubmitRequest {
//!         business: Some("acme".into()),
//!         spec: api::JobSpec {
//!             command: vec!["echo".into(), "hello".into()],
//!             ..Default::default()
//!         },
//!         idempotency_key: None,
//!     })
//!     .await?;
//! // Read-your-writes: this read waits for the submit's index on whichever replica answers.
//! let job = client.get_job(&submitted.job.id, api::Consistency::Stale).await?;
//! println!("{} is {}", job.job.id, job.job.state.as_str());
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod endpoints;
pub mod error;
pub mod events;

pub use client::{Client, RawResponse};
pub use config::{ClientConfig, DEFAULT_ADDR, ENV_ADDR, ENV_API_KEY};
pub use endpoints::log_gap_expected;
pub use error::ClientError;
pub use events::EventStream;

/// The wire types, re-exported so SDK users need no second dependency.
pub use tanvrit_api as api;
