//! Prometheus metrics of the operator, with bounded labels only: lever, error category, phase.
//!
//! A sale is named by `sale_namespace` and `sale`, never `namespace` / `name`: those are target
//! labels Prometheus sets on every scraped series (they would come out as `exported_*`).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::time::Instant;

/// Labels naming a lever (`timeline` for the controller core).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeverLabels {
    pub lever: &'static str,
}

/// Labels of a failed reconcile step: which lever and what kind of failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub lever: &'static str,
    pub category: &'static str,
}

/// Labels of a sale's phase (one series per sale and phase, 1 for the current phase).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub sale_namespace: String,
    pub sale: String,
    pub phase: &'static str,
}

/// Labels of one sale.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaleLabels {
    pub sale_namespace: String,
    pub sale: String,
}

/// Labels of one of a sale's lever conditions (`Ready`, `Prescaled`, `DrainAgentsReady`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub sale_namespace: String,
    pub sale: String,
    pub condition: String,
}

/// Labels of one degradation flag of one sale in one cluster (flags are at most 50 per sale,
/// named in the spec, so the series stay bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagLabels {
    pub sale_namespace: String,
    pub sale: String,
    pub cluster: String,
    pub flag: String,
}

/// Labels of one cluster of one sale (clusters are at most 20 per sale, named in the spec).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub sale_namespace: String,
    pub sale: String,
    pub cluster: String,
}

/// Labels of API requests the operator sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: Family<LeverLabels, Histogram>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub phase: Family<PhaseLabels, Gauge>,
    /// Unix time of the sale's next scheduled phase change: a countdown is `... - time()` in
    /// PromQL, right between reconciles (a "seconds until" gauge would freeze between them).
    pub next_transition_timestamp: Family<SaleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub condition: Family<ConditionLabels, Gauge>,
    pub flag_enabled: Family<FlagLabels, Gauge>,
    /// 1 while the sale's last pass reached the cluster, 0 when it could not.
    pub cluster_reachable: Family<ClusterLabels, Gauge>,
    pub flag_query_errors: Family<FlagLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flashsale");
        let reconcile_duration = Family::<LeverLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by lever",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconcile steps, by lever and error category",
            reconcile_errors.clone(),
        );
        let phase = Family::<PhaseLabels, Gauge>::default();
        registry.register("sale_phase", "1 for the phase each sale is in, 0 for the others", phase.clone());
        let next_transition_timestamp = Family::default();
        registry.register(
            "sale_next_transition_timestamp_seconds",
            "Unix time of the sale's next scheduled phase change (countdown: this - time())",
            next_transition_timestamp.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Kubernetes API requests sent by the controller, by verb",
            api_requests.clone(),
        );
        let condition = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "sale_condition",
            "1 when the sale's condition (Ready and one per lever) is True, 0 otherwise",
            condition.clone(),
        );
        let flag_enabled = Family::<FlagLabels, Gauge>::default();
        registry.register(
            "flag_enabled",
            "1 while a degradation flag is on (feature enabled), 0 while it is off (degraded)",
            flag_enabled.clone(),
        );
        let flag_query_errors = Family::<FlagLabels, Counter>::default();
        registry.register(
            "flag_query_errors",
            "Auto-degrade queries that failed or returned no number (the flag kept its value)",
            flag_query_errors.clone(),
        );
        let cluster_reachable = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_reachable",
            "1 when the sale's last pass reached the cluster, 0 when it could not (transport, credentials)",
            cluster_reachable.clone(),
        );
        Metrics {
            registry,
            cluster_reachable,
            reconcile_duration,
            reconcile_errors,
            phase,
            next_transition_timestamp,
            api_requests,
            condition,
            flag_enabled,
            flag_query_errors,
        }
    }
}

impl Metrics {
    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Records the time until the returned guard is dropped, whichever way the reconcile ends.
    pub fn time(&self, lever: &'static str) -> DurationGuard<'_> {
        DurationGuard { metrics: self, lever, start: Instant::now() }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct DurationGuard<'a> {
    metrics: &'a Metrics,
    lever: &'static str,
    start: Instant,
}

impl Drop for DurationGuard<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&LeverLabels { lever: self.lever })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No series carries a label Prometheus sets itself on scraped targets (`namespace`, `name`,
    /// `job`, `instance`, `pod`, `service`, `container`): a dashboard would see `exported_*`.
    #[test]
    fn sale_series_do_not_collide_with_target_labels() {
        let metrics = Metrics::default();
        let (sale_namespace, sale) = ("shop".to_owned(), "double-11".to_owned());
        metrics
            .phase
            .get_or_create(&PhaseLabels { sale_namespace: sale_namespace.clone(), sale: sale.clone(), phase: "Active" })
            .set(1);
        metrics
            .next_transition_timestamp
            .get_or_create(&SaleLabels { sale_namespace: sale_namespace.clone(), sale: sale.clone() })
            .set(1.0);
        let condition =
            ConditionLabels { sale_namespace: sale_namespace.clone(), sale: sale.clone(), condition: "Ready".into() };
        metrics.condition.get_or_create(&condition).set(1);
        let flag = FlagLabels { sale_namespace, sale, cluster: "local".into(), flag: "reviews".into() };
        metrics.flag_enabled.get_or_create(&flag).set(1);
        let text = metrics.render();
        assert!(
            text.contains(r#"flashsale_sale_phase{sale_namespace="shop",sale="double-11",phase="Active"} 1"#),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, labels)) = line.split_once('{') else { continue };
            for reserved in ["namespace", "name", "job", "instance", "pod", "service", "container"] {
                let starts = labels.starts_with(&format!("{reserved}="));
                let inside = labels.contains(&format!(",{reserved}="));
                assert!(!starts && !inside, "{reserved} label in {line}");
            }
        }
    }
}
