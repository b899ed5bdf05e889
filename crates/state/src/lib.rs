//! The Tanvrit Compute domain: every replicated write is one [`Command`], and
//! [`State::apply`] is a deterministic `match` over it.
//!
//! # Layout
//! - [`command`]: the `Command` enum (variants and their encodings only grow).
//! - [`state`]: `State`, its secondary indexes, and `apply`; its `idempotency` part holds
//!   the `Idempotent` envelope (keyed writes answered once, replayed afterwards).
//! - [`rejection`]: typed refusals of a command (`Rejection`) with stable codes.
//! - [`events`]: the events each applied command yields, and stream filters (pure).
//! - [`effect`]: what an accepted command produced (`Effect`).
//! - [`scheduler`]: placement planning (pure; the leader's loop proposes the result).
//! - [`billing`]: the integer cost function.
//! - [`validate`]: pure checks of user input shared by the API and `apply`.
//! - [`invariants`]: checks that must hold after every command (used by tests).
//!
//! Nothing here reads a clock, a random source, the network or the disk: ids and
//! timestamps travel inside each command, so every replica computes the same state.

pub mod billing;
pub mod command;
pub mod effect;
pub mod events;
pub mod invariants;
pub mod rejection;
pub mod scheduler;
pub mod state;
pub mod validate;

pub use command::*;
pub use effect::*;
pub use rejection::*;
pub use state::*;

/// The outcome of applying one command.
pub type Outcome = Result<Effect, Rejection>;
