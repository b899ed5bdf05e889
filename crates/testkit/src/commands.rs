//! Small, always-accepted commands for tests that need writes, and a way to recognise
//! them in a replica's state.

use tanvrit_api::{BusinessId, EntryId, EntryKind};
use tanvrit_state::{Command, State};

/// The business the helpers write to.
pub fn business() -> BusinessId {
    BusinessId::from("biz-test")
}

/// A top-up of 1 credit with a unique id and idempotency key derived from `n`.
pub fn top_up(n: u64) -> Command {
    Command::LedgerEntryCreate {
        entry: EntryId(format!("ent-{n}")),
        business: business(),
        kind: EntryKind::TopUp,
        amount: 1_000_000,
        idempotency_key: format!("top-up-{n}"),
        note: None,
        at: 1_000 + n as i64,
    }
}

/// How many ledger entries the test business has in `state`.
pub fn ledger_len(state: &State) -> usize {
    state.account(&business()).map_or(0, |a| a.entries.len())
}

/// Whether the top-up `n` is in `state`.
pub fn has_top_up(state: &State, n: u64) -> bool {
    state
        .account(&business())
        .is_some_and(|a| a.by_key.contains_key(&format!("top-up-{n}")))
}
