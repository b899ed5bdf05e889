//! Invariants that hold after every command; property tests and the store's recovery
//! checks call [`check`].

use tanvrit_api::{AttemptState, EntryKind, JobState, MicroCredits};

use crate::State;

/// Returns the first broken invariant, if any.
pub fn check(state: &State) -> Result<(), String> {
    for (business, account) in state.accounts() {
        let sum: MicroCredits = account.entries.iter().map(|e| e.amount).sum();
        if sum != account.available {
            return Err(format!(
                "{business}: available {} != sum of entries {sum}",
                account.available
            ));
        }
        if account.available < 0 {
            return Err(format!(
                "{business}: negative balance {}",
                account.available
            ));
        }
        let held: MicroCredits = account
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Hold | EntryKind::Release))
            .map(|e| -e.amount)
            .sum();
        if held != account.held {
            return Err(format!(
                "{business}: held {} != holds - releases {held}",
                account.held
            ));
        }
        let job_held: MicroCredits = state
            .all_jobs()
            .filter(|j| &j.business == business)
            .map(|j| j.held)
            .sum();
        if job_held != account.held {
            return Err(format!(
                "{business}: held {} != jobs' holds {job_held}",
                account.held
            ));
        }
        let mut running = 0;
        for (position, entry) in account.entries.iter().enumerate() {
            running += entry.amount;
            if entry.seq != position as u64 + 1 || entry.balance_after != running {
                return Err(format!("{business}: entry {} out of sequence", entry.id));
            }
        }
    }
    for job in state.all_jobs() {
        let active: Vec<_> = job
            .attempts
            .iter()
            .filter(|a| a.state.is_active())
            .collect();
        if active.len() > 1 {
            return Err(format!(
                "job {} has {} active attempts",
                job.id,
                active.len()
            ));
        }
        if let Some(attempt) = active.first() {
            if job.current_attempt().map(|a| &a.id) != Some(&attempt.id) {
                return Err(format!("job {}: an old attempt is still active", job.id));
            }
        }
        let current = job.current_attempt().map(|a| a.state);
        let consistent = match job.state {
            JobState::Pending => !current.is_some_and(AttemptState::is_active),
            JobState::Assigned => current == Some(AttemptState::Assigned),
            JobState::Running => current == Some(AttemptState::Running),
            JobState::Cancelled => !current
                .is_some_and(|s| matches!(s, AttemptState::Assigned | AttemptState::Running)),
            JobState::Succeeded | JobState::Failed | JobState::Lost => {
                !current.is_some_and(AttemptState::is_active)
            }
        };
        if !consistent {
            return Err(format!(
                "job {} is {:?} but its current attempt is {current:?}",
                job.id, job.state
            ));
        }
        if current == Some(AttemptState::Cancelling) && job.state != JobState::Cancelled {
            return Err(format!(
                "job {} has a cancelling attempt but is {:?}",
                job.id, job.state
            ));
        }
        if job.state.is_terminal() && job.held != 0 && !current.is_some_and(AttemptState::is_active)
        {
            return Err(format!(
                "job {} is {:?} but still holds {}",
                job.id, job.state, job.held
            ));
        }
        if job.held < 0 {
            return Err(format!("job {} holds a negative amount", job.id));
        }
    }
    for node in state.nodes() {
        let view = state.node_view(node);
        if !node.resources.fits(&view.allocated) && view.active_attempts > 0 {
            // Allowed only when a node re-registered smaller while work was running.
            continue;
        }
    }
    for (scope, key, record) in state.idempotency_records() {
        if record.index > state.applied_index() || record.expires_at <= record.at {
            return Err(format!(
                "idempotency record {scope}/{key} has index {} (applied {}) and lives {}..{}",
                record.index,
                state.applied_index(),
                record.at,
                record.expires_at
            ));
        }
    }
    if !state.indexes_consistent() {
        return Err("secondary indexes drifted from the data".into());
    }
    Ok(())
}
