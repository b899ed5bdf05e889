//! `[compute.limits]`: abuse limits of the public API (per-key request rates by scope,
//! and what a connection's request head may take).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tanvrit_server::{RateLimit, RateLimits};

/// `[compute.limits]`. A `*_per_second` of 0 means unlimited; a burst is how many
/// requests a key may make at once (at least 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Requests a second per admin key (`TANVRIT_LIMITS_ADMIN_PER_SECOND`). Default 0:
    /// unlimited (operators' tools and benchmarks use admin keys).
    pub admin_per_second: u32,
    /// Burst of an admin key (`TANVRIT_LIMITS_ADMIN_BURST`).
    pub admin_burst: u32,
    /// Requests a second per user key (`TANVRIT_LIMITS_USER_PER_SECOND`). Default 100.
    pub user_per_second: u32,
    /// Burst of a user key (`TANVRIT_LIMITS_USER_BURST`). Default 200.
    pub user_burst: u32,
    /// Requests a second per agent key (`TANVRIT_LIMITS_AGENT_PER_SECOND`). Default 1000:
    /// an agent ships the output of every attempt it runs, a chunk each per flush.
    pub agent_per_second: u32,
    /// Burst of an agent key (`TANVRIT_LIMITS_AGENT_BURST`). Default 2000.
    pub agent_burst: u32,
    /// Long polls (agent work polls, log follows) one key may hold open on a replica at
    /// once, 429 `too_many_streams` beyond (`TANVRIT_LIMITS_STREAMS_PER_KEY`). Default
    /// 64; 0 is unlimited.
    pub streams_per_key: u32,
    /// A connection must send a request's whole head within this, or it is closed
    /// (`TANVRIT_LIMITS_HEADER_READ_TIMEOUT`). Default `10s`.
    #[serde(with = "super::human_duration")]
    pub header_read_timeout: Duration,
    /// A request's body must have arrived this long after the request started, or it is
    /// answered 408 `body_timeout` (`TANVRIT_LIMITS_BODY_READ_TIMEOUT`). Default `30s`.
    #[serde(with = "super::human_duration")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), answered 431 beyond it
    /// (`TANVRIT_LIMITS_HEADER_BYTES`). Default 64 KiB; at least 8 KiB is used.
    pub header_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            admin_per_second: 0,
            admin_burst: 0,
            user_per_second: 100,
            user_burst: 200,
            agent_per_second: 1000,
            agent_burst: 2000,
            streams_per_key: 64,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            header_bytes: 64 * 1024,
        }
    }
}

impl LimitsSection {
    /// The server's per-scope rate limits.
    pub fn rate_limits(&self) -> RateLimits {
        RateLimits {
            admin: RateLimit::per_second(self.admin_per_second, self.admin_burst),
            user: RateLimit::per_second(self.user_per_second, self.user_burst),
            agent: RateLimit::per_second(self.agent_per_second, self.agent_burst),
        }
    }
}

/// `TANVRIT_LIMITS_*` variables with number values, lowercased, and their keys.
pub(super) const ENV_TYPED: &[(&str, &str)] = &[
    ("limits_admin_per_second", "compute.limits.admin_per_second"),
    ("limits_admin_burst", "compute.limits.admin_burst"),
    ("limits_user_per_second", "compute.limits.user_per_second"),
    ("limits_user_burst", "compute.limits.user_burst"),
    ("limits_agent_per_second", "compute.limits.agent_per_second"),
    ("limits_agent_burst", "compute.limits.agent_burst"),
    ("limits_header_bytes", "compute.limits.header_bytes"),
    ("limits_streams_per_key", "compute.limits.streams_per_key"),
];

#[cfg(test)]
// figment's Jail closures return its large error type; tests only.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::{Config, ConfigFlags};
    use super::*;
    use figment::Jail;

    #[test]
    fn limits_come_from_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            let config = Config::load(&ConfigFlags::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.compute.limits, LimitsSection::default());
            assert_eq!(
                config.compute.limits.rate_limits(),
                tanvrit_server::RateLimits::default(),
                "the server's defaults"
            );
            jail.create_file(
                "l.toml",
                "[compute.limits]\nuser_per_second = 5\nuser_burst = 10\nheader_read_timeout = \"3s\"\n",
            )?;
            jail.set_env("TANVRIT_CONFIG", "l.toml");
            jail.set_env("TANVRIT_LIMITS_AGENT_PER_SECOND", "0");
            jail.set_env("TANVRIT_LIMITS_HEADER_READ_TIMEOUT", "2s");
            let config = Config::load(&ConfigFlags {
                config: Some("l.toml".into()),
                ..ConfigFlags::default()
            })
            .map_err(|e| e.to_string())?;
            let limits = config.compute.limits.rate_limits();
            assert_eq!(limits.user, RateLimit::per_second(5, 10));
            assert_eq!(limits.agent, RateLimit::UNLIMITED);
            assert_eq!(
                config.compute.limits.header_read_timeout,
                Duration::from_secs(2),
                "env over file"
            );
            Ok(())
        });
    }
}
