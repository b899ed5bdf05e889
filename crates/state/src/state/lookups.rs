//! Read accessors the server needs to answer a certainly refused write without proposing
//! it (its own checks mirror a subset of `apply`'s).

use tanvrit_api::{BusinessId, Job};

use super::jobs::job_key;
use super::State;

impl State {
    /// The job a business submitted with this idempotency key, while it is kept.
    pub fn job_by_idempotency_key(&self, business: &BusinessId, key: &str) -> Option<&Job> {
        let id = self.data.job_idempotency.get(&job_key(business, key))?;
        self.data.jobs.get(id)
    }
}
