//! Read accessors the server needs to answer a certainly refused write without proposing
//! it (its own checks mirror a subset of `apply`'s).

use std::borrow::Cow;

use tanvrit_api::{BusinessId, Job};

use super::jobs::job_key;
use super::{ArchiveError, State};

impl State {
    /// The job a business submitted with this idempotency key, while it is kept (in
    /// memory, or in the archive once the key's batch was written).
    pub fn job_by_idempotency_key(
        &self,
        business: &BusinessId,
        key: &str,
    ) -> Result<Option<Cow<'_, Job>>, ArchiveError> {
        let key = job_key(business, key);
        let id = match self.data.job_idempotency.get(&key) {
            Some(id) => id.clone(),
            None => match &self.archive {
                Some(archive) => match archive.job_for_key(&key)? {
                    Some(id) => id,
                    None => return Ok(None),
                },
                None => return Ok(None),
            },
        };
        self.find_job(&id)
    }
}
