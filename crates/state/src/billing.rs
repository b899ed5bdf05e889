//! Integer billing: micro-credits for resources over time, rounded up, never floating point.

use tanvrit_api::{AttemptUsage, BillingBasis, ChargeDetails, MicroCredits, Rates, Resources};

/// Micro-credits for holding `resources` at `rates` for `millis` milliseconds, rounded up.
///
/// Rates are per cpu-second (1000 millicores), per GB-second (1024 MB) and per GPU-second;
/// one common denominator keeps the sum exact before the single rounding.
pub fn cost(resources: &Resources, rates: &Rates, millis: u64) -> MicroCredits {
    let ms = millis as u128;
    amounts_cost(
        (resources.cpu_millis as u128).saturating_mul(ms),
        (resources.memory_mb as u128).saturating_mul(ms),
        (resources.gpus as u128).saturating_mul(ms),
        rates,
    )
}

/// Micro-credits for millicore-milliseconds of CPU, MB-milliseconds of memory and
/// GPU-milliseconds, rounded up once.
fn amounts_cost(cpu: u128, memory: u128, gpu: u128, rates: &Rates) -> MicroCredits {
    let scaled = |amount: u128, rate: MicroCredits, scale: u128| {
        amount
            .saturating_mul(rate.max(0) as u128)
            .saturating_mul(scale)
    };
    let sum = scaled(cpu, rates.cpu_second, 1024)
        .saturating_add(scaled(memory, rates.memory_gb_second, 1000))
        .saturating_add(scaled(gpu, rates.gpu_second, 1_024_000));
    // sum / 1_024_000 is micro-credit-milliseconds; / 1000 more for micro-credits.
    let denominator: u128 = 1_024_000 * 1000;
    let total = sum.div_ceil(denominator);
    total.min(MicroCredits::MAX as u128) as MicroCredits
}

/// What `usage` costs over `millis` of runtime: the CPU time used, the peak memory for
/// the whole runtime, GPUs as reserved. A figure not measured is taken as reserved.
pub fn used_cost(
    resources: &Resources,
    rates: &Rates,
    millis: u64,
    usage: &AttemptUsage,
) -> MicroCredits {
    let ms = millis as u128;
    let cpu = match usage.cpu_ms {
        Some(cpu_ms) => (cpu_ms as u128).saturating_mul(1000),
        None => (resources.cpu_millis as u128).saturating_mul(ms),
    };
    let memory = match usage.peak_memory_bytes {
        Some(bytes) => (bytes.div_ceil(1024 * 1024) as u128).saturating_mul(ms),
        None => (resources.memory_mb as u128).saturating_mul(ms),
    };
    amounts_cost(
        cpu,
        memory,
        (resources.gpus as u128).saturating_mul(ms),
        rates,
    )
}

/// The charge of an attempt that ran `millis` and reported `usage`, and how it was
/// computed: on the job's basis (`used` needs a measurement, else it is `reserved`), at
/// least the attempt minimum, never more than `held`.
pub fn settle(
    resources: &Resources,
    rates: &Rates,
    millis: u64,
    usage: Option<AttemptUsage>,
    held: MicroCredits,
) -> (MicroCredits, ChargeDetails) {
    let measured = usage.filter(|u| u.cpu_ms.is_some() || u.peak_memory_bytes.is_some());
    let (basis, amount) = match (rates.basis, measured) {
        (BillingBasis::Used, Some(u)) => {
            (BillingBasis::Used, used_cost(resources, rates, millis, &u))
        }
        _ => (BillingBasis::Reserved, cost(resources, rates, millis)),
    };
    let charge = amount.max(rates.attempt_minimum.max(0)).min(held.max(0));
    let details = ChargeDetails {
        basis,
        runtime_ms: millis,
        usage,
    };
    (charge, details)
}

/// The hold a job needs: its reservation for its whole timeout, and never less than the
/// attempt minimum.
pub fn hold_for(resources: &Resources, rates: &Rates, timeout_secs: u64) -> MicroCredits {
    cost(resources, rates, timeout_secs.saturating_mul(1000)).max(rates.attempt_minimum.max(0))
}

/// What an attempt that ran `millis` is charged: its cost, at least the attempt minimum,
/// and never more than `held` (the hold bounds every charge, so no balance goes negative).
pub fn charge(
    resources: &Resources,
    rates: &Rates,
    millis: u64,
    held: MicroCredits,
) -> MicroCredits {
    cost(resources, rates, millis)
        .max(rates.attempt_minimum.max(0))
        .min(held.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_core_for_one_second_costs_the_cpu_rate() {
        let r = Resources {
            cpu_millis: 1000,
            memory_mb: 0,
            gpus: 0,
        };
        let rates = Rates {
            cpu_second: 10,
            memory_gb_second: 3,
            gpu_second: 1000,
            ..Rates::default()
        };
        assert_eq!(cost(&r, &rates, 1000), 10);
        assert_eq!(cost(&r, &rates, 1), 1, "a started unit rounds up");
        assert_eq!(cost(&r, &rates, 0), 0);
    }

    #[test]
    fn memory_and_gpus_add_up_exactly() {
        let r = Resources {
            cpu_millis: 500,
            memory_mb: 2048,
            gpus: 2,
        };
        let rates = Rates {
            cpu_second: 10,
            memory_gb_second: 3,
            gpu_second: 1000,
            ..Rates::default()
        };
        // 5 + 6 + 2000 per second, for 10 seconds.
        assert_eq!(cost(&r, &rates, 10_000), 20_110);
        assert_eq!(hold_for(&r, &rates, 10), 20_110);
    }

    #[test]
    fn every_attempt_is_held_and_charged_at_least_the_minimum_and_never_past_its_hold() {
        let r = Resources {
            cpu_millis: 1000,
            memory_mb: 0,
            gpus: 0,
        };
        let rates = Rates {
            cpu_second: 10,
            attempt_minimum: 500,
            basis: tanvrit_api::BillingBasis::Reserved,
            ..Rates::default()
        };
        assert_eq!(
            hold_for(&r, &rates, 1),
            500,
            "ten for the second, 500 at least"
        );
        assert_eq!(hold_for(&r, &rates, 100), 1000);
        assert_eq!(charge(&r, &rates, 0, 1000), 500);
        assert_eq!(charge(&r, &rates, 80_000, 1000), 800);
        assert_eq!(
            charge(&r, &rates, 200_000, 1000),
            1000,
            "bounded by the hold"
        );
        let free = Rates::default();
        assert_eq!(hold_for(&r, &free, 100), 0);
        assert_eq!(charge(&r, &free, 100, 0), 0);
    }

    #[test]
    fn on_the_used_basis_an_idle_job_pays_for_the_cpu_it_used_not_the_cores_it_held() {
        let two_cores = Resources {
            cpu_millis: 2000,
            memory_mb: 1024,
            gpus: 0,
        };
        let rates = Rates {
            cpu_second: 1000,
            memory_gb_second: 100,
            basis: BillingBasis::Used,
            ..Rates::default()
        };
        let idle = AttemptUsage {
            cpu_ms: Some(3),
            peak_memory_bytes: Some(512 * 1024),
        };
        // 3 s: 2 cores x 3 s x 1000 + 1 GB x 3 s x 100 reserved.
        let (reserved, _) = settle(
            &two_cores,
            &Rates {
                basis: BillingBasis::Reserved,
                ..rates
            },
            3000,
            Some(idle),
            i64::MAX,
        );
        assert_eq!(reserved, 6300);
        let (used, details) = settle(&two_cores, &rates, 3000, Some(idle), i64::MAX);
        // 0.003 cpu-s x 1000 = 3; 1 MB (rounded up) x 3 s x 100 / 1024 = 0.29 -> together 4.
        assert_eq!(used, 4);
        assert_eq!(details.basis, BillingBasis::Used);
        assert_eq!((details.runtime_ms, details.usage), (3000, Some(idle)));
    }

    #[test]
    fn an_attempt_not_measured_is_charged_as_reserved_and_says_so() {
        let r = Resources {
            cpu_millis: 1000,
            memory_mb: 0,
            gpus: 0,
        };
        let rates = Rates {
            cpu_second: 10,
            basis: BillingBasis::Used,
            ..Rates::default()
        };
        let (charge, details) = settle(&r, &rates, 10_000, None, i64::MAX);
        assert_eq!((charge, details.basis), (100, BillingBasis::Reserved));
        let (charge, details) = settle(&r, &rates, 10_000, Some(AttemptUsage::default()), 50);
        assert_eq!(
            (charge, details.basis),
            (50, BillingBasis::Reserved),
            "bounded by the hold"
        );
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let r = Resources {
            cpu_millis: u64::MAX,
            memory_mb: u64::MAX,
            gpus: u32::MAX,
        };
        let rates = Rates {
            cpu_second: i64::MAX,
            memory_gb_second: i64::MAX,
            gpu_second: i64::MAX,
            ..Rates::default()
        };
        assert_eq!(cost(&r, &rates, 1), MicroCredits::MAX);
    }
}
