//! The credit ledger: balances, posting entries (holds, charges and releases come from
//! the job handlers), and hand-written entries (top-ups, refunds, adjustments).

use tanvrit_api::{
    BusinessId, ChargeDetails, EntryId, EntryKind, JobId, LedgerEntry, MicroCredits, Millis,
};

use super::State;
use crate::{validate, Effect, Outcome, Rejection};

impl State {
    pub(super) fn available(&self, business: &BusinessId) -> MicroCredits {
        self.data
            .accounts
            .get(business)
            .map_or(0, |account| account.available)
    }

    /// Appends a ledger entry; the caller has checked that `available` stays >= 0.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn post(
        &mut self,
        business: &BusinessId,
        kind: EntryKind,
        amount: MicroCredits,
        job: Option<&JobId>,
        idempotency_key: String,
        note: Option<String>,
        entry_id: Option<EntryId>,
        at: Millis,
    ) -> LedgerEntry {
        self.post_entry(
            business,
            kind,
            amount,
            job,
            idempotency_key,
            note,
            entry_id,
            None,
            at,
        )
    }

    /// [`State::post`], with how a charge was computed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn post_entry(
        &mut self,
        business: &BusinessId,
        kind: EntryKind,
        amount: MicroCredits,
        job: Option<&JobId>,
        idempotency_key: String,
        note: Option<String>,
        entry_id: Option<EntryId>,
        charge: Option<ChargeDetails>,
        at: Millis,
    ) -> LedgerEntry {
        let account = self.data.accounts.entry(business.clone()).or_default();
        account.available += amount;
        // A hold (negative) moves credits into `held`; a release (positive) moves them back.
        if matches!(kind, EntryKind::Hold | EntryKind::Release) {
            account.held -= amount;
        }
        let seq = account.entry_count() + 1;
        let entry = LedgerEntry {
            id: entry_id.unwrap_or_else(|| EntryId(format!("ent-{business}-{seq}"))),
            seq,
            business: business.clone(),
            kind,
            amount,
            balance_after: account.available,
            job: job.cloned(),
            idempotency_key: idempotency_key.clone(),
            note,
            at,
            charge,
        };
        account.by_key.insert(idempotency_key, seq);
        account.entries.push_back(entry.clone());
        self.mark_ledger(business, seq);
        entry
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn ledger_entry_create(
        &mut self,
        entry: &EntryId,
        business: &BusinessId,
        kind: EntryKind,
        amount: MicroCredits,
        idempotency_key: &str,
        note: Option<String>,
        at: Millis,
    ) -> Outcome {
        validate::identifier("business", business.as_str())?;
        if idempotency_key.is_empty() || idempotency_key.len() > 256 {
            return Err(Rejection::invalid("idempotency keys are 1-256 bytes"));
        }
        match kind {
            EntryKind::TopUp | EntryKind::Refund if amount <= 0 => {
                return Err(Rejection::invalid(format!(
                    "a {} must be a positive amount",
                    kind.as_str()
                )))
            }
            EntryKind::Adjustment if amount == 0 => {
                return Err(Rejection::invalid("an adjustment must not be zero"))
            }
            EntryKind::Hold | EntryKind::Charge | EntryKind::Release => {
                return Err(Rejection::invalid(
                    "holds, charges and releases are written by the system, not by hand",
                ))
            }
            _ => {}
        }
        if note.as_ref().is_some_and(|n| n.len() > 4096) {
            return Err(Rejection::invalid("notes are at most 4096 bytes"));
        }
        if let Some(existing) = self.ledger_entry_by_key(business, idempotency_key) {
            {
                return if existing.kind == kind && existing.amount == amount {
                    Ok(Effect::Entry {
                        entry: Box::new(existing),
                        duplicate: true,
                    })
                } else {
                    Err(Rejection::IdempotencyConflict {
                        key: idempotency_key.to_string(),
                    })
                };
            }
        }
        let available = self.available(business);
        let after = available
            .checked_add(amount)
            .ok_or_else(|| Rejection::invalid("amount would overflow the balance"))?;
        if after < 0 {
            return Err(Rejection::InsufficientCredits {
                business: business.to_string(),
                needed: -amount,
                available,
            });
        }
        let entry = self.post(
            business,
            kind,
            amount,
            None,
            idempotency_key.to_string(),
            note,
            Some(entry.clone()),
            at,
        );
        Ok(Effect::Entry {
            entry: Box::new(entry),
            duplicate: false,
        })
    }
}
