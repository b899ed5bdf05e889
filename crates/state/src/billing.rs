//! Integer billing: micro-credits for resources over time, rounded up, never floating point.

use tanvrit_api::{MicroCredits, Rates, Resources};

/// Micro-credits for holding `resources` at `rates` for `millis` milliseconds, rounded up.
///
/// Rates are per cpu-second (1000 millicores), per GB-second (1024 MB) and per GPU-second;
/// one common denominator keeps the sum exact before the single rounding.
pub fn cost(resources: &Resources, rates: &Rates, millis: u64) -> MicroCredits {
    let scaled = |amount: u128, rate: MicroCredits, scale: u128| {
        amount
            .saturating_mul(rate.max(0) as u128)
            .saturating_mul(scale)
    };
    let per_ms_scaled = scaled(resources.cpu_millis as u128, rates.cpu_second, 1024)
        .saturating_add(scaled(
            resources.memory_mb as u128,
            rates.memory_gb_second,
            1000,
        ))
        .saturating_add(scaled(resources.gpus as u128, rates.gpu_second, 1_024_000));
    // per_ms_scaled / 1_024_000 is micro-credits per second; / 1000 more for milliseconds.
    let denominator: u128 = 1_024_000 * 1000;
    let total = per_ms_scaled
        .saturating_mul(millis as u128)
        .div_ceil(denominator);
    total.min(MicroCredits::MAX as u128) as MicroCredits
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
