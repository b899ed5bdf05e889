//! Counters of what the abuse limits refused: writes answered without a proposal, failed
//! authentications, requests over a key's rate limit.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

/// Handles into the server's registry. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct AbuseMetrics {
    refused_early: Family<CommandLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    rate_limited: Family<ScopeLabels, Counter>,
}

impl AbuseMetrics {
    /// Registers the counters in `registry` (prefix `tanvrit_`).
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "writes_refused_early",
            "Writes answered with the state's refusal without being proposed, by command",
            metrics.refused_early.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused 401, by reason (missing, unknown or revoked key)",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused 429 for going over their key's rate limit, by scope",
            metrics.rate_limited.clone(),
        );
        metrics
    }

    /// One write refused before it was proposed.
    pub(crate) fn refused_early(&self, command: &'static str) {
        self.refused_early
            .get_or_create(&CommandLabels { command })
            .inc();
    }

    /// One failed authentication.
    pub(crate) fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// One request over its key's rate limit.
    pub(crate) fn rate_limited(&self, scope: &'static str) {
        self.rate_limited
            .get_or_create(&ScopeLabels { scope })
            .inc();
    }
}
