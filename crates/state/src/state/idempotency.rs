//! `Command::Idempotent`: a client write under an idempotency key, answered once and
//! replayed from a record afterwards.
//!
//! The record lives in the replicated state (so a retry through another replica, or
//! after a leader change, finds the first answer) and holds the fingerprint of the
//! request, the outcome and the log index it was applied at. Rejected outcomes are
//! recorded too: a retried bad request gets the same refusal, even if the state has
//! moved on since. A record expires at `at + retain_ms` of the command that wrote it;
//! expiry is judged against each later command's own `at`, never a clock, and expired
//! records are pruned a bounded batch at a time by later envelopes (an expired record
//! not pruned yet already counts as absent).
//!
//! Invariant: a replay or a conflict changes nothing. A first delivery changes the
//! state exactly as the bare command would, plus its record (even when the command is
//! rejected — the one exception to "a rejected command changes nothing").

use serde::{Deserialize, Serialize};
use tanvrit_api::{Index, Millis};

use super::State;
use crate::{validate, Command, Effect, Outcome, Rejection, NOT_WRAPPABLE};

/// Most expired records one envelope prunes, so no single `apply` stalls on a backlog
/// (say, after a long quiet spell); every envelope prunes, so the backlog drains at
/// this many times the rate of keyed writes.
pub const IDEMPOTENCY_PRUNE_BATCH: usize = 256;
/// Longest scope.
pub const MAX_SCOPE_BYTES: usize = 256;
/// Longest fingerprint (a hex SHA-256 is 64).
pub const MAX_FINGERPRINT_BYTES: usize = 128;

/// The first answer to an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The fingerprint of the request that used the key first.
    pub fingerprint: String,
    /// What applying it gave, accepted or rejected.
    pub outcome: Outcome,
    /// The log index it was applied at.
    pub index: Index,
    /// The `at` of the command that wrote the record.
    pub at: Millis,
    /// Commands with `at` at or after this no longer see the record.
    pub expires_at: Millis,
}

impl IdempotencyRecord {
    /// Whether a command at `at` still sees this record.
    pub fn live_at(&self, at: Millis) -> bool {
        at < self.expires_at
    }

    /// What a repeated delivery answers: the recorded effect wrapped in
    /// [`Effect::Replayed`] with its original index, or the recorded rejection.
    pub fn replay(&self) -> Outcome {
        match &self.outcome {
            Ok(effect) => Ok(Effect::Replayed {
                effect: Box::new(effect.clone()),
                index: self.index,
            }),
            Err(rejection) => Err(rejection.clone()),
        }
    }
}

impl State {
    /// Applies an envelope (see the module doc).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn idempotent(
        &mut self,
        index: Index,
        key: &str,
        scope: &str,
        fingerprint: &str,
        command: &Command,
        retain_ms: Millis,
        at: Millis,
    ) -> Outcome {
        validate::idempotency_key(key)?;
        if scope.is_empty() || scope.len() > MAX_SCOPE_BYTES {
            return Err(Rejection::invalid(format!(
                "idempotency scopes are 1-{MAX_SCOPE_BYTES} bytes"
            )));
        }
        if fingerprint.is_empty() || fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(Rejection::invalid(format!(
                "fingerprints are 1-{MAX_FINGERPRINT_BYTES} bytes"
            )));
        }
        if retain_ms <= 0 {
            return Err(Rejection::invalid(
                "idempotency records must be kept for a positive time",
            ));
        }
        if NOT_WRAPPABLE.contains(&command.name()) {
            return Err(Rejection::invalid(format!(
                "a {} cannot carry an idempotency key",
                command.name()
            )));
        }
        if let Some(record) = self
            .idempotency_record(scope, key)
            .filter(|r| r.live_at(at))
        {
            return if record.fingerprint == fingerprint {
                record.replay()
            } else {
                Err(Rejection::IdempotencyConflict {
                    key: key.to_string(),
                })
            };
        }
        self.prune_idempotency(at, IDEMPOTENCY_PRUNE_BATCH);
        let outcome = self.dispatch(index, command);
        self.record_idempotency(
            scope,
            key,
            IdempotencyRecord {
                fingerprint: fingerprint.to_string(),
                outcome: outcome.clone(),
                index,
                at,
                expires_at: at.saturating_add(retain_ms),
            },
        );
        outcome
    }

    /// Drops up to `limit` records expired at `at`, oldest first; returns how many.
    pub(super) fn prune_idempotency(&mut self, at: Millis, limit: usize) -> usize {
        for pruned in 0..limit {
            if !self.idempotency_expired_at(at) {
                return pruned;
            }
            let Some((_, scope, key)) = self.idx.idempotency_expiry.pop_first() else {
                return pruned;
            };
            self.remove_idempotency(&scope, &key);
        }
        limit
    }

    /// Whether some record is expired at `at` (and not pruned yet).
    pub(super) fn idempotency_expired_at(&self, at: Millis) -> bool {
        self.idx
            .idempotency_expiry
            .first()
            .is_some_and(|(expires_at, _, _)| *expires_at <= at)
    }

    fn remove_idempotency(&mut self, scope: &str, key: &str) {
        self.mark_idempotency(scope, key);
        if let Some(keys) = self.data.idempotency.get_mut(scope) {
            keys.remove(key);
            // No empty scopes left behind: the data stays canonical, so states that saw
            // the same records come and go compare equal to ones that never saw them.
            if keys.is_empty() {
                self.data.idempotency.remove(scope);
            }
        }
    }

    fn record_idempotency(&mut self, scope: &str, key: &str, record: IdempotencyRecord) {
        self.mark_idempotency(scope, key);
        // An expired record under the same key that was not pruned yet is replaced.
        if let Some(old) = self.idempotency_record(scope, key) {
            let stale = (old.expires_at, scope.to_string(), key.to_string());
            self.idx.idempotency_expiry.remove(&stale);
        }
        self.idx
            .idempotency_expiry
            .insert((record.expires_at, scope.to_string(), key.to_string()));
        self.data
            .idempotency
            .entry(scope.to_string())
            .or_default()
            .insert(key.to_string(), record);
    }

    /// The record of (`scope`, `key`), expired or not (expiry is judged against a
    /// command's `at`: see [`IdempotencyRecord::live_at`]).
    pub fn idempotency_record(&self, scope: &str, key: &str) -> Option<&IdempotencyRecord> {
        self.data
            .idempotency
            .get(scope)
            .and_then(|keys| keys.get(key))
    }

    /// Every idempotency record as (scope, key, record), by scope then key.
    pub fn idempotency_records(
        &self,
    ) -> impl Iterator<Item = (&str, &str, &IdempotencyRecord)> + '_ {
        self.data.idempotency.iter().flat_map(|(scope, keys)| {
            keys.iter()
                .map(move |(key, record)| (scope.as_str(), key.as_str(), record))
        })
    }
}
