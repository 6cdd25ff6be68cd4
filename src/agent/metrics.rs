//! The drain agent's Prometheus metrics (prefix `flashsale_drain_agent_`), bounded labels only.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Every eviction outcome label, created at zero so a panel or `increase()` sees the first one.
const OUTCOMES: [&str; 5] = ["evicted", "blocked_pdb", "multiple_pdb", "not_found", "error"];
/// Every metadata error kind label, created at zero for the same reason.
const KINDS: [&str; 5] = ["timeout", "connect", "status", "garbage", "token"];

/// An eviction outcome: evicted, blocked_pdb, multiple_pdb, not_found, error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A metadata error kind: timeout, connect, status, garbage, token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    pub polls: Counter,
    pub metadata_errors: Family<KindLabels, Counter>,
    pub notices: Counter,
    pub drains: Counter,
    pub evictions: Family<OutcomeLabels, Counter>,
    pub eviction_attempts: Family<OutcomeLabels, Counter>,
    pub notice_to_cordon: Histogram,
    pub notice_to_drained: Histogram,
    pub draining: Gauge,
    /// Unix time the cloud reclaims the node at, from the notice being acted on; 0 while none.
    pub termination_timestamp: Gauge,
}

/// The agent's version (one series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flashsale_drain_agent");
        let polls = Counter::default();
        registry.register("metadata_polls", "Termination-time requests to the metadata service", polls.clone());
        let metadata_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "metadata_errors",
            "Metadata polls that told nothing, by kind (timeout, connect, status, garbage, token)",
            metadata_errors.clone(),
        );
        let notices = Counter::default();
        registry.register("notices", "Distinct spot termination times seen", notices.clone());
        let drains = Counter::default();
        registry.register(
            "drains",
            "Drains started (a node marked for a release time it did not carry yet)",
            drains.clone(),
        );
        let evictions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "evictions",
            "Pods the agent tried to evict, by final outcome (evicted, blocked_pdb, multiple_pdb, not_found, error)",
            evictions.clone(),
        );
        let eviction_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "eviction_attempts",
            "Eviction API requests, by answer (evicted, blocked_pdb for 429, multiple_pdb, not_found, error)",
            eviction_attempts.clone(),
        );
        let buckets = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
        let notice_to_cordon = Histogram::new(buckets);
        registry.register(
            "notice_to_cordon_seconds",
            "From the poll that saw a notice to the node tainted and cordoned",
            notice_to_cordon.clone(),
        );
        let notice_to_drained = Histogram::new(buckets);
        registry.register(
            "notice_to_drained_seconds",
            "From the poll that saw a notice to every eviction decided (evicted or given up)",
            notice_to_drained.clone(),
        );
        let draining = Gauge::default();
        registry.register("draining", "1 while a drain is running", draining.clone());
        let termination_timestamp = Gauge::default();
        registry.register(
            "termination_timestamp_seconds",
            "Unix time the spot instance is reclaimed at, from the notice being drained for; 0 while no notice",
            termination_timestamp.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "Always 1; the version of the running agent", build_info);
        for outcome in OUTCOMES {
            drop(evictions.get_or_create(&OutcomeLabels { outcome }));
            drop(eviction_attempts.get_or_create(&OutcomeLabels { outcome }));
        }
        for kind in KINDS {
            drop(metadata_errors.get_or_create(&KindLabels { kind }));
        }
        AgentMetrics {
            registry,
            termination_timestamp,
            polls,
            metadata_errors,
            notices,
            drains,
            evictions,
            eviction_attempts,
            notice_to_cordon,
            notice_to_drained,
            draining,
        }
    }
}

impl crate::admin::Exposition for AgentMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
