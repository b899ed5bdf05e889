//! Cron schedules: create, update, delete, and fire (the fired job's id comes with the
//! command, so a tick fires once even across leader failover).

use tanvrit_api::{
    CatchUpPolicy, Index, JobId, Millis, OverlapPolicy, Rates, Resources, Schedule, ScheduleId,
    ScheduleUpdateRequest,
};

use super::State;
use crate::{validate, Effect, Outcome, Rejection};

impl State {
    pub(super) fn check_schedule(schedule: &Schedule) -> Result<(), Rejection> {
        validate::identifier("schedule id", schedule.id.as_str())?;
        validate::identifier("business", schedule.business.as_str())?;
        validate::job_spec(&schedule.template)?;
        if schedule.cron.trim().is_empty() || schedule.cron.len() > 256 {
            return Err(Rejection::invalid("cron expressions are 1-256 bytes"));
        }
        if schedule.timezone.is_empty() || schedule.timezone.len() > 64 {
            return Err(Rejection::invalid("time zones are 1-64 bytes"));
        }
        if let CatchUpPolicy::All(n) = schedule.catch_up {
            if n == 0 || n > 1000 {
                return Err(Rejection::invalid("catch-up `all` takes 1 to 1000"));
            }
        }
        Ok(())
    }

    pub(super) fn schedule_effect(&self, id: &ScheduleId) -> Outcome {
        Ok(Effect::Schedule {
            schedule: Box::new(self.data.schedules[id].clone()),
        })
    }

    pub(super) fn schedule_create(&mut self, _index: Index, schedule: Schedule) -> Outcome {
        Self::check_schedule(&schedule)?;
        if self.data.schedules.contains_key(&schedule.id) {
            return Err(Rejection::AlreadyExists {
                kind: "schedule".into(),
                id: schedule.id.to_string(),
            });
        }
        let id = schedule.id.clone();
        self.data.schedules.insert(id.clone(), schedule);
        self.schedule_effect(&id)
    }

    pub(super) fn schedule_update(
        &mut self,
        index: Index,
        id: &ScheduleId,
        patch: &ScheduleUpdateRequest,
        at: Millis,
    ) -> Outcome {
        let current = self
            .data
            .schedules
            .get(id)
            .ok_or_else(|| Rejection::not_found("schedule", id))?;
        let mut next = current.clone();
        if let Some(name) = &patch.name {
            next.name = Some(name.clone());
        }
        if let Some(cron) = &patch.cron {
            next.cron = cron.clone();
        }
        if let Some(timezone) = &patch.timezone {
            next.timezone = timezone.clone();
        }
        if let Some(template) = &patch.template {
            next.template = template.clone();
        }
        if let Some(enabled) = patch.enabled {
            next.enabled = enabled;
        }
        if let Some(overlap) = patch.overlap {
            next.overlap = overlap;
        }
        if let Some(catch_up) = patch.catch_up {
            next.catch_up = catch_up;
        }
        Self::check_schedule(&next)?;
        next.updated_at = at;
        next.modify_index = index;
        self.data.schedules.insert(id.clone(), next);
        self.schedule_effect(id)
    }

    pub(super) fn schedule_delete(&mut self, id: &ScheduleId) -> Outcome {
        self.data
            .schedules
            .remove(id)
            .ok_or_else(|| Rejection::not_found("schedule", id))?;
        Ok(Effect::ScheduleDeleted)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn schedule_fire(
        &mut self,
        index: Index,
        id: &ScheduleId,
        due_at: Millis,
        job_id: &JobId,
        rates: &Rates,
        template_defaults: Option<Resources>,
        skip_reason: &Option<String>,
        at: Millis,
    ) -> Outcome {
        let schedule = self
            .data
            .schedules
            .get(id)
            .ok_or_else(|| Rejection::not_found("schedule", id))?;
        if schedule.last_fire_at.is_some_and(|last| last >= due_at) {
            return Ok(Effect::Fired {
                job: None,
                skipped: None,
                duplicate: true,
            });
        }
        let active_previous = schedule
            .last_job
            .as_ref()
            .and_then(|j| self.data.jobs.get(j))
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id.clone());
        let mut skip = skip_reason.clone();
        if skip.is_none() && !schedule.enabled {
            skip = Some("disabled".into());
        }
        if skip.is_none() && active_previous.is_some() && schedule.overlap == OverlapPolicy::Forbid
        {
            skip = Some("overlap".into());
        }
        let business = schedule.business.clone();
        let mut template = schedule.template.clone();
        if let Some(defaults) = template_defaults {
            let r = template.resources;
            template.resources.cpu_millis = match r.cpu_millis {
                0 => defaults.cpu_millis,
                millis => millis,
            };
            template.resources.memory_mb = match r.memory_mb {
                0 => defaults.memory_mb,
                mb => mb,
            };
        }
        let replace = schedule.overlap == OverlapPolicy::Replace;
        let hold = if skip.is_none() {
            match self.check_new_job(job_id, &business, &template, rates) {
                Ok(hold) => Some(hold),
                Err(Rejection::InsufficientCredits { .. }) => {
                    skip = Some("insufficient_credits".into());
                    None
                }
                Err(other) => return Err(other),
            }
        } else {
            None
        };
        let job = match (skip.as_ref(), hold) {
            (None, Some(hold)) => {
                if let (true, Some(previous)) = (replace, active_previous.as_ref()) {
                    self.job_cancel(
                        index,
                        previous,
                        Some(format!("replaced by a newer fire of schedule {id}")),
                        at,
                    )?;
                }
                Some(self.insert_job(
                    index,
                    job_id,
                    &business,
                    &template,
                    None,
                    Some(id),
                    rates,
                    hold,
                    at,
                ))
            }
            _ => None,
        };
        let schedule = self.data.schedules.get_mut(id).expect("checked");
        schedule.last_fire_at = Some(due_at);
        schedule.modify_index = index;
        if let Some(job) = &job {
            schedule.fired += 1;
            schedule.last_job = Some(job.id.clone());
        } else {
            schedule.skipped += 1;
        }
        Ok(Effect::Fired {
            job: job.map(Box::new),
            skipped: skip,
            duplicate: false,
        })
    }
}
