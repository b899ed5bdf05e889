//! Wire types of the Tanvrit Compute API: what travels between clients, agents and replicas.
//!
//! # Layout
//! - [`ids`]: identifiers and timestamps.
//! - [`job`], [`node`], [`key`], [`credit`], [`schedule`]: the resources, with their
//!   `<Noun><Verb>Request` / `Response` types.
//! - [`event`]: the event stream's events, frames and request.
//! - [`agent`]: the agent protocol (heartbeat, work, attempt reports).
//! - [`cluster`]: topology and read consistency.
//! - [`error`]: the JSON error body every non-2xx response carries.
//!
//! This crate depends on serde only (plus `utoipa` behind the `openapi` feature, so the
//! server can describe these types in `/api/openapi.json` without the SDK paying for it).

pub mod agent;
pub mod cluster;
pub mod credit;
pub mod error;
pub mod event;
pub mod ids;
pub mod job;
pub mod key;
pub mod node;
pub mod schedule;

pub use agent::*;
pub use cluster::*;
pub use credit::*;
pub use error::*;
pub use event::*;
pub use ids::*;
pub use job::*;
pub use key::*;
pub use node::*;
pub use schedule::*;

/// Response header carrying the responding replica's applied index.
pub const INDEX_HEADER: &str = "X-Tanvrit-Index";
/// Response header on a 503 naming the leader's API base URL, when the answering replica
/// knows it (the same value as the error body's `leader_url`).
pub const LEADER_URL_HEADER: &str = "X-Tanvrit-Leader-Url";
/// Request header carrying the cluster secret, which authorizes the membership routes
/// (`cluster/init`, `cluster/replicas/...`) like an admin key does: before a cluster is
/// formed no key exists yet.
pub const CLUSTER_SECRET_HEADER: &str = "X-Tanvrit-Cluster-Secret";
/// Request header naming an idempotency key for a mutating call.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Path prefix of every API route.
pub const API_PREFIX: &str = "/api/compute";
