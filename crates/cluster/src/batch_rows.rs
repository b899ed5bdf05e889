//! What an applied batch changed, taken from the state and encoded for the state
//! tables; both engines write it in the transaction that ends the batch.

use parking_lot::RwLockWriteGuard;
use tanvrit_state::{Changes, State};
use tanvrit_store::state_tables::{encode_rows, EncodedRow};
use tanvrit_store::StoreError;

/// Takes the batch's changes and encodes their rows under the read lock the write lock
/// becomes (readers go on meanwhile). An apply that could not read a settled job from
/// the archive makes the batch an error: its outcome cannot be trusted, and nothing of
/// it may be written.
pub(crate) fn take_batch_rows(
    mut state: RwLockWriteGuard<'_, State>,
) -> (Changes, Result<Vec<EncodedRow>, StoreError>) {
    let fault = state.take_archive_fault();
    let changes = state.take_changes();
    let state = RwLockWriteGuard::downgrade(state);
    let rows = match fault {
        Some(fault) => Err(StoreError::Io(fault.to_string())),
        None => encode_rows(&state.changed_rows(&changes)),
    };
    (changes, rows)
}
