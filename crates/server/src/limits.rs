//! Per-key request rate limits: a token bucket per API key, sized by the key's scope;
//! and a cap on the long polls (streams) each key holds open at once.
//!
//! Each key may make a scope's requests a second on average and up to its `burst` at
//! once; a request over it is answered 429 `rate_limited` with `Retry-After` (the
//! seconds until a token is back). The buckets live in this replica's memory, so a
//! client spread over several replicas gets the limit from each: a limit protects a
//! replica, not a global quota. Time is passed in, so tests need no clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tanvrit_api::{KeyId, Scope};

/// One scope's limit: a bucket of `burst` tokens, one token back every `refill`.
/// `refill == Duration::ZERO` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Time for one token to come back: `1 s / requests a second`.
    pub refill: Duration,
    /// Requests a key may make at once (the bucket's size); at least 1.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const UNLIMITED: RateLimit = RateLimit {
        refill: Duration::ZERO,
        burst: 1,
    };

    /// `per_second` requests a second on average, `burst` at once; 0 a second is
    /// unlimited.
    pub fn per_second(per_second: u32, burst: u32) -> Self {
        if per_second == 0 {
            return Self::UNLIMITED;
        }
        Self {
            refill: Duration::from_secs(1) / per_second,
            burst: burst.max(1),
        }
    }

    fn limited(&self) -> bool {
        !self.refill.is_zero()
    }
}

/// The limit of each scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Admin keys. Default: unlimited (operators' tools and benchmarks use them).
    pub admin: RateLimit,
    /// User keys. Default: 100 a second, bursts of 200.
    pub user: RateLimit,
    /// Agent keys. Default: 1000 a second, bursts of 2000 (an agent ships the output of
    /// every attempt it runs, a chunk each per flush interval).
    pub agent: RateLimit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            admin: RateLimit::UNLIMITED,
            user: RateLimit::per_second(100, 200),
            agent: RateLimit::per_second(1000, 2000),
        }
    }
}

impl RateLimits {
    /// No limit for any scope.
    pub fn unlimited() -> Self {
        Self {
            admin: RateLimit::UNLIMITED,
            user: RateLimit::UNLIMITED,
            agent: RateLimit::UNLIMITED,
        }
    }

    fn of(&self, scope: Scope) -> RateLimit {
        match scope {
            Scope::Admin => self.admin,
            Scope::User => self.user,
            Scope::Agent => self.agent,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The buckets of every key seen on this replica (keys are few: an admin makes them).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<KeyId, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `key`'s bucket at `now`; `Err(wait)` when it is empty, with
    /// how long until the next token.
    pub(crate) fn take(&self, key: &KeyId, scope: Scope, now: Instant) -> Result<(), Duration> {
        let limit = self.limits.of(scope);
        if !limit.limited() {
            return Ok(());
        }
        let burst = f64::from(limit.burst.max(1));
        let per_token = limit.refill.as_secs_f64();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed / per_token).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) * per_token;
            Err(Duration::from_secs_f64(wait.min(86_400.0)))
        }
    }
}

/// Long polls (`nodes/{id}/work`, `jobs/{id}/logs` with `wait_ms`) each key holds open
/// on this replica; past `max` a new one is refused (429 `too_many_streams`).
#[derive(Debug)]
pub(crate) struct StreamLimiter {
    /// 0: unlimited.
    max: u32,
    open: Arc<Mutex<HashMap<KeyId, u32>>>,
}

/// One open stream; closing it (dropping the guard, also when the client goes away and
/// the request's future is dropped) frees its place.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    key: KeyId,
    open: Arc<Mutex<HashMap<KeyId, u32>>>,
}

impl StreamLimiter {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The most streams a key may hold open (0: unlimited).
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// Opens a stream for `key`; `None` when it already holds `max`.
    pub(crate) fn open(&self, key: &KeyId) -> Option<StreamGuard> {
        let mut open = self.open.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(StreamGuard {
            key: key.clone(),
            open: self.open.clone(),
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimits {
            user: RateLimit::per_second(per_second, burst),
            ..RateLimits::unlimited()
        })
    }

    #[test]
    fn a_key_gets_its_burst_at_once_then_waits_for_the_refill() {
        let limiter = limiter(2, 3);
        let key = KeyId::from("key-1");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(&key, Scope::User, t0).is_ok());
        }
        let wait = limiter.take(&key, Scope::User, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.take(&key, Scope::User, later).is_ok());
        assert!(limiter.take(&key, Scope::User, later).is_err());
        // A long pause refills to the burst, not beyond.
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.take(&key, Scope::User, much_later).is_ok());
        }
        assert!(limiter.take(&key, Scope::User, much_later).is_err());
    }

    #[test]
    fn keys_have_buckets_of_their_own_and_unlimited_scopes_are_never_refused() {
        let limiter = limiter(1, 1);
        let t0 = Instant::now();
        let (a, b) = (KeyId::from("key-a"), KeyId::from("key-b"));
        assert!(limiter.take(&a, Scope::User, t0).is_ok());
        assert!(limiter.take(&a, Scope::User, t0).is_err());
        assert!(limiter.take(&b, Scope::User, t0).is_ok(), "another key");
        for _ in 0..1000 {
            assert!(limiter.take(&a, Scope::Admin, t0).is_ok());
        }
    }

    #[test]
    fn a_key_holds_at_most_its_streams_and_a_closed_one_frees_its_place() {
        let streams = StreamLimiter::new(2);
        let (a, b) = (KeyId::from("key-a"), KeyId::from("key-b"));
        let first = streams.open(&a).unwrap();
        let _second = streams.open(&a).unwrap();
        assert!(streams.open(&a).is_none(), "a third stream");
        assert!(streams.open(&b).is_some(), "another key");
        drop(first);
        assert!(streams.open(&a).is_some(), "a place was freed");
        let unlimited = StreamLimiter::new(0);
        let held: Vec<_> = (0..100).map(|_| unlimited.open(&a).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }
}
