//! Prometheus metrics of the operator, with bounded labels only: lever, error category, phase,
//! and the names a sale's spec bounds (clusters, workloads, warm-ups, flags).
//!
//! A sale is named by `sale_namespace` and `sale`, never `namespace` / `name`: those are target
//! labels Prometheus sets on every scraped series (they would come out as `exported_*`).

use crate::api::{FlashSale, FlashSaleStatus, WorkloadStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Instant,
};

/// Labels naming a step of a reconcile: `timeline` (the whole reconcile), `cluster` (one
/// cluster's pass), and within it each lever: `preflight` (the rights check), `workload`
/// (scale and probes), `drain_agents`, `warmup`, `flags`.
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

/// Labels of one workload of one sale in one cluster: `workload` is `Kind/namespace/name` (the
/// status shows `Kind namespace/name`). Bounded by the schema: at most 100 workloads times 20
/// clusters per sale.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub sale_namespace: String,
    pub sale: String,
    pub cluster: String,
    pub workload: String,
}

/// Labels of one warm-up's state (one series per state, 1 for the current one): at most 20
/// warm-ups times 20 clusters times the 5 states per sale.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarmupLabels {
    pub sale_namespace: String,
    pub sale: String,
    pub cluster: String,
    pub warmup: String,
    pub state: &'static str,
}

/// Labels of the build the process runs (one series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// Labels of API requests the operator sent: the cluster (see [`cluster_label`]) and verb.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cluster: String,
    pub verb: &'static str,
}

/// Labels of one cluster the operator reaches, whatever sales use it (see [`cluster_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterOnlyLabels {
    pub cluster: String,
}

/// How many distinct clusters get a series of their own in the per-cluster request and view
/// metrics; the ones after that share the series `cluster="other"`.
pub const CLUSTER_LABELS: usize = 64;

/// The `cluster` label of a client: `local` for the operator's own cluster, else the kubeconfig
/// Secret that reaches it (`namespace/name`: sales write cluster names, but one Secret is one
/// client). Bounded: past [`CLUSTER_LABELS`] distinct values every new one is `other`, so a
/// tenant creating Secrets cannot grow the series without end.
pub fn cluster_label(cluster: &str) -> String {
    static SEEN: std::sync::OnceLock<Mutex<HashSet<String>>> = std::sync::OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(|| Mutex::new(HashSet::new())).lock() else { return "other".into() };
    if seen.contains(cluster) || seen.len() < CLUSTER_LABELS {
        seen.insert(cluster.to_owned());
        cluster.to_owned()
    } else {
        "other".into()
    }
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Time in one reconcile, one series per lever.
    pub reconcile_duration: Family<LeverLabels, Histogram>,
    /// Failed reconcile steps: levers × error categories.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// 1 for each sale's current phase: 7 series per sale.
    pub phase: Family<PhaseLabels, Gauge>,
    /// Unix time of the sale's next scheduled phase change: a countdown is `... - time()` in
    /// PromQL, right between reconciles (a "seconds until" gauge would freeze between them).
    /// One series per sale.
    pub next_transition_timestamp: Family<SaleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// API requests sent: clusters (at most [`CLUSTER_LABELS`] + 1) × verbs.
    pub api_requests: Family<RequestLabels, Counter>,
    /// Requests that waited for the cluster's budget (`--cluster-qps`): one series per cluster.
    pub api_throttled: Family<ClusterOnlyLabels, Counter>,
    /// Watches each cluster's view holds, and how many of them have synced: one series per cluster.
    pub view_watches: Family<ClusterOnlyLabels, Gauge>,
    pub view_watches_synced: Family<ClusterOnlyLabels, Gauge>,
    /// 1 while a cluster's view counts its API server as lost (a failed watch or liveness
    /// probe), else 0: one series per cluster.
    pub view_lost: Family<ClusterOnlyLabels, Gauge>,
    /// 1 per True condition (`Ready` and one per lever): at most 6 per sale.
    pub condition: Family<ConditionLabels, Gauge>,
    /// Each flag on (1) or off (0): at most 50 flags × 20 clusters per sale.
    pub flag_enabled: Family<FlagLabels, Gauge>,
    /// 1 while the sale's last pass reached the cluster, 0 when it could not: at most 20 per sale.
    pub cluster_reachable: Family<ClusterLabels, Gauge>,
    /// Failed auto-degrade queries: at most 50 flags × 20 clusters per sale.
    pub flag_query_errors: Family<FlagLabels, Counter>,
    /// Replicas each workload should have in the current phase (`targetReplicas`); at most 100
    /// workloads × 20 clusters per sale.
    pub workload_wanted_replicas: Family<WorkloadLabels, Gauge>,
    /// Ready replicas each workload has (`readyReplicas`); at most 100 workloads × 20 clusters
    /// per sale.
    pub workload_ready_replicas: Family<WorkloadLabels, Gauge>,
    /// Seconds from Preparing (the scale-up request) to peak replicas ready, once reached, for
    /// sales and their rehearsals alike (`sale="<name>-rehearsal"`); at most 100 workloads × 20
    /// clusters per sale.
    pub workload_time_to_peak_seconds: Family<WorkloadLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Nodes the cluster's drain agents should run on; at most 20 clusters per sale.
    pub drain_agents_desired: Family<ClusterLabels, Gauge>,
    /// Drain agents ready in the cluster; at most 20 clusters per sale.
    pub drain_agents_ready: Family<ClusterLabels, Gauge>,
    /// 1 for the state each warm-up Job is in, 0 for the others; at most 20 warm-ups × 20
    /// clusters × 5 states per sale.
    pub warmup_state: Family<WarmupLabels, Gauge>,
    /// 1 while an auto-degrade flag's breaker holds the flag off (open or half-open), 0 while
    /// closed; at most 50 flags × 20 clusters per sale.
    pub flag_breaker_open: Family<FlagLabels, Gauge>,
    /// Times an auto-degrade breaker opened (turned its flag off), as seen by this process; at
    /// most 50 flags × 20 clusters per sale.
    pub flag_breaker_trips: Family<FlagLabels, Counter>,
    /// 1 while this process acts on sales: it holds the leader Lease, or runs without election.
    /// One series.
    pub leader: Gauge,
    /// What each sale's last status put in the per-object families, so the next one drops the
    /// series of workloads, clusters, warm-ups and flags the sale no longer has.
    recorded: Mutex<HashMap<SaleLabels, Recorded>>,
}

/// The per-object series one sale has.
#[derive(Default)]
struct Recorded {
    workloads: HashSet<WorkloadLabels>,
    agents: HashSet<ClusterLabels>,
    warmups: HashSet<WarmupLabels>,
    /// Each breaker's `since` while it held its flag off (`None` while closed): a new `since`
    /// is a new trip.
    breakers: HashMap<FlagLabels, Option<Time>>,
}

/// `Kind/namespace/name` from the status's `Kind namespace/name`: one token, as a label value
/// is easiest to match in PromQL.
fn workload_label(status_name: &str) -> String {
    status_name.replacen(' ', "/", 1)
}

/// The `status.clusters[].warmups[].state` values, each a `warmup_state` series.
const WARMUP_STATES: [&str; 5] = [
    crate::levers::warmup::PENDING,
    crate::levers::warmup::RUNNING,
    crate::levers::warmup::SUCCEEDED,
    crate::levers::warmup::FAILED,
    crate::levers::warmup::SKIPPED,
];

/// `metric` registered under `name` with its help text, handed back to be recorded into.
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flashsale");
        let reconcile_duration = registered(
            &mut registry,
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by lever",
            Family::<LeverLabels, Histogram>::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
        );
        let reconcile_errors = registered(
            &mut registry,
            "reconcile_errors",
            "Failed reconcile steps, by lever and error category",
            Family::<ErrorLabels, Counter>::default(),
        );
        let phase = registered(
            &mut registry,
            "sale_phase",
            "1 for the phase each sale is in, 0 for the others",
            Family::<PhaseLabels, Gauge>::default(),
        );
        let next_transition_timestamp = registered(
            &mut registry,
            "sale_next_transition_timestamp_seconds",
            "Unix time of the sale's next scheduled phase change (countdown: this - time())",
            Family::default(),
        );
        let api_throttled = registered(
            &mut registry,
            "api_throttled",
            "Kubernetes API requests that waited for the cluster's request budget (--cluster-qps, --cluster-burst)",
            Family::<ClusterOnlyLabels, Counter>::default(),
        );
        let view_watches = registered(
            &mut registry,
            "view_watches",
            "Watches the cluster's view holds",
            Family::<ClusterOnlyLabels, Gauge>::default(),
        );
        let view_watches_synced = registered(
            &mut registry,
            "view_watches_synced",
            "Watches of the cluster's view that have listed their objects",
            Family::<ClusterOnlyLabels, Gauge>::default(),
        );
        let view_lost = registered(
            &mut registry,
            "view_lost",
            "1 while the cluster's view counts its API server as lost (a failed watch or liveness probe)",
            Family::<ClusterOnlyLabels, Gauge>::default(),
        );
        let api_requests = registered(
            &mut registry,
            "api_requests",
            "Kubernetes API requests sent by the controller, by cluster and verb",
            Family::<RequestLabels, Counter>::default(),
        );
        let condition = registered(
            &mut registry,
            "sale_condition",
            "1 when the sale's condition (Ready and one per lever) is True, 0 otherwise",
            Family::<ConditionLabels, Gauge>::default(),
        );
        let flag_enabled = registered(
            &mut registry,
            "flag_enabled",
            "1 while a degradation flag is on (feature enabled), 0 while it is off (degraded)",
            Family::<FlagLabels, Gauge>::default(),
        );
        let flag_query_errors = registered(
            &mut registry,
            "flag_query_errors",
            "Auto-degrade queries that failed or returned no number (the flag kept its value)",
            Family::<FlagLabels, Counter>::default(),
        );
        let cluster_reachable = registered(
            &mut registry,
            "cluster_reachable",
            "1 when the sale's last pass reached the cluster, 0 when it could not (transport, credentials)",
            Family::<ClusterLabels, Gauge>::default(),
        );
        let workload_wanted_replicas = registered(
            &mut registry,
            "workload_wanted_replicas",
            "Replicas the sale wants of each workload in the current phase (status targetReplicas)",
            Family::<WorkloadLabels, Gauge>::default(),
        );
        let workload_ready_replicas = registered(
            &mut registry,
            "workload_ready_replicas",
            "Ready replicas of each workload the sale prepares",
            Family::<WorkloadLabels, Gauge>::default(),
        );
        let workload_time_to_peak_seconds = registered(
            &mut registry,
            "workload_time_to_peak_seconds",
            "Seconds from the sale's Preparing boundary to the workload's peak replicas ready (set once reached)",
            Family::<WorkloadLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default(),
        );
        let drain_agents_desired = registered(
            &mut registry,
            "drain_agents_desired",
            "Nodes matching the sale's spot drain selector in the cluster (agents wanted)",
            Family::<ClusterLabels, Gauge>::default(),
        );
        let drain_agents_ready = registered(
            &mut registry,
            "drain_agents_ready",
            "Drain agents ready in the cluster",
            Family::<ClusterLabels, Gauge>::default(),
        );
        let warmup_state = registered(
            &mut registry,
            "warmup_state",
            "1 for the state each cache warm-up Job is in (Pending, Running, Succeeded, Failed, Skipped), 0 for the others",
            Family::<WarmupLabels, Gauge>::default(),
        );
        let flag_breaker_open = registered(
            &mut registry,
            "flag_breaker_open",
            "1 while an auto-degrade breaker holds its flag off (open or half-open), 0 while closed",
            Family::<FlagLabels, Gauge>::default(),
        );
        let flag_breaker_trips = registered(
            &mut registry,
            "flag_breaker_trips",
            "Times an auto-degrade breaker opened and turned its flag off",
            Family::<FlagLabels, Counter>::default(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process acts on sales (holds the leader Lease, or runs without leader election), 0 on standby",
            leader.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "Always 1; the version of the running operator", build_info);
        Metrics {
            registry,
            workload_wanted_replicas,
            workload_ready_replicas,
            workload_time_to_peak_seconds,
            drain_agents_desired,
            drain_agents_ready,
            warmup_state,
            flag_breaker_open,
            flag_breaker_trips,
            leader,
            recorded: Mutex::new(HashMap::new()),
            cluster_reachable,
            reconcile_duration,
            reconcile_errors,
            phase,
            next_transition_timestamp,
            api_requests,
            api_throttled,
            view_watches,
            view_watches_synced,
            view_lost,
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

    /// Records what a sale's status says of each cluster after a pass: workloads' wanted and
    /// ready replicas, drain agents, warm-up states and breakers; series of workloads,
    /// clusters, warm-ups and flags the status no longer lists are dropped.
    pub fn record_sale_status(&self, sale: &FlashSale, status: &FlashSaleStatus) {
        let sale_labels = SaleLabels { sale_namespace: sale.namespace().unwrap_or_default(), sale: sale.name_any() };
        let auto_flags: HashSet<&str> = sale
            .spec
            .degradation
            .iter()
            .flat_map(|d| &d.flags)
            .filter(|f| f.auto_degrade.is_some())
            .map(|f| f.name.as_str())
            .collect();
        let prepare_at = crate::timeline::Schedule::from_spec(&sale.spec).ok().map(|s| s.prepare_at);
        let mut recorded = self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = recorded.remove(&sale_labels).unwrap_or_default();
        let mut now = Recorded::default();
        let over = matches!(status.phase, Some(crate::api::Phase::Completed | crate::api::Phase::Suspended));
        for cluster in &status.clusters {
            let (sale_namespace, sale) = (sale_labels.sale_namespace.clone(), sale_labels.sale.clone());
            let cluster_labels = ClusterLabels {
                sale_namespace: sale_namespace.clone(),
                sale: sale.clone(),
                cluster: cluster.name.clone(),
            };
            for w in &cluster.workloads {
                let labels = WorkloadLabels {
                    sale_namespace: sale_namespace.clone(),
                    sale: sale.clone(),
                    cluster: cluster.name.clone(),
                    workload: workload_label(&w.name),
                };
                self.record_workload(&labels, w);
                // While it holds, to the millisecond; after the restore, the whole seconds status keeps.
                let peak_after = prepare_at
                    .zip(w.peak_reached_time.as_ref())
                    .map(|(p, t)| t.0.duration_since(p).as_secs_f64().max(0.0))
                    .or(w.time_to_peak_seconds.map(|s| s as f64));
                if let Some(took) = peak_after {
                    self.workload_time_to_peak_seconds.get_or_create(&labels).set(took);
                } else {
                    self.workload_time_to_peak_seconds.remove(&labels);
                }
                now.workloads.insert(labels);
            }
            // A sale over keeps what its agents, warm-ups and flags did in status, as a record:
            // not as live series (a breaker open at the restore would alert forever).
            if over {
                continue;
            }
            if let Some(agents) = &cluster.drain_agents {
                self.drain_agents_desired.get_or_create(&cluster_labels).set(i64::from(agents.desired));
                self.drain_agents_ready.get_or_create(&cluster_labels).set(i64::from(agents.ready));
                now.agents.insert(cluster_labels);
            }
            for warmup in &cluster.warmups {
                for state in WARMUP_STATES {
                    let labels = WarmupLabels {
                        sale_namespace: sale_namespace.clone(),
                        sale: sale.clone(),
                        cluster: cluster.name.clone(),
                        warmup: warmup.name.clone(),
                        state,
                    };
                    self.warmup_state.get_or_create(&labels).set(i64::from(warmup.state == state));
                    now.warmups.insert(labels);
                }
            }
            for flag in cluster.flags.iter().filter(|f| auto_flags.contains(f.name.as_str())) {
                let labels = FlagLabels {
                    sale_namespace: sale_namespace.clone(),
                    sale: sale.clone(),
                    cluster: cluster.name.clone(),
                    flag: flag.name.clone(),
                };
                // Off means the breaker holds it off; its `since` is when it opened (half-open
                // keeps it), so a `since` not seen before is one more trip.
                let open_since = (!flag.enabled).then(|| flag.since.clone()).flatten();
                let trip = match (before.breakers.get(&labels), &open_since) {
                    (Some(seen), Some(since)) => seen.as_ref() != Some(since),
                    _ => false,
                };
                // Created at zero with the breaker, so `increase()` sees the first trip.
                let trips = self.flag_breaker_trips.get_or_create(&labels);
                if trip {
                    trips.inc();
                }
                drop(trips);
                // The controller counts failing queries; starting at zero lets `increase()` see
                // the first failure.
                drop(self.flag_query_errors.get_or_create(&labels));
                self.flag_breaker_open.get_or_create(&labels).set(i64::from(!flag.enabled));
                now.breakers.insert(labels, open_since);
            }
        }
        self.forget_recorded(&before, &now);
        recorded.insert(sale_labels, now);
    }

    /// Drops every series [`Metrics::record_sale_status`] made for a sale that is gone.
    pub fn forget_sale_status(&self, sale: &FlashSale) {
        let sale_labels = SaleLabels { sale_namespace: sale.namespace().unwrap_or_default(), sale: sale.name_any() };
        let mut recorded = self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(before) = recorded.remove(&sale_labels) {
            self.forget_recorded(&before, &Recorded::default());
        }
    }

    fn record_workload(&self, labels: &WorkloadLabels, w: &WorkloadStatus) {
        // A workload the operator could not read yet has no counts: its series say 0, which is
        // what a dashboard asking "short of peak?" should see.
        self.workload_wanted_replicas.get_or_create(labels).set(i64::from(w.target_replicas.unwrap_or(0)));
        self.workload_ready_replicas.get_or_create(labels).set(i64::from(w.ready_replicas.unwrap_or(0)));
    }

    /// Removes the series in `before` that `now` does not have.
    fn forget_recorded(&self, before: &Recorded, now: &Recorded) {
        for labels in before.workloads.difference(&now.workloads) {
            self.workload_wanted_replicas.remove(labels);
            self.workload_ready_replicas.remove(labels);
            self.workload_time_to_peak_seconds.remove(labels);
        }
        for labels in before.agents.difference(&now.agents) {
            self.drain_agents_desired.remove(labels);
            self.drain_agents_ready.remove(labels);
        }
        for labels in before.warmups.difference(&now.warmups) {
            self.warmup_state.remove(labels);
        }
        for labels in before.breakers.keys().filter(|l| !now.breakers.contains_key(*l)) {
            self.flag_breaker_open.remove(labels);
            self.flag_breaker_trips.remove(labels);
            self.flag_query_errors.remove(labels);
        }
    }

    /// Records the time until the returned guard is dropped, whichever way the reconcile ends.
    pub fn time(&self, lever: &'static str) -> DurationGuard<'_> {
        DurationGuard { metrics: self, lever, start: Instant::now() }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
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
        metrics.record_sale_status(
            &self::sale(),
            &status(serde_json::json!({"clusters": [{"name": "local", "reachable": true,
                "workloads": [{"name": "Deployment shop/web", "targetReplicas": 1, "timeToPeakSeconds": 12}],
                "drainAgents": {"desired": 1, "ready": 1},
                "warmups": [{"name": "catalog", "state": "Pending"}],
                "flags": [{"name": "reviews", "enabled": true, "reason": "BreakerClosed"}]}]})),
        );
        let text = metrics.render();
        assert!(text.contains("flashsale_workload_ready_replicas{") && text.contains("flashsale_warmup_state{"));
        // Peak no longer held (no peakReachedTime), the figure status keeps is still exported.
        let took = r#"flashsale_workload_time_to_peak_seconds{sale_namespace="shop",sale="double-11",cluster="local",workload="Deployment/shop/web"}"#;
        assert_eq!(value(&text, took), Some(12.0), "{text}");
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

    fn sale() -> FlashSale {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "flashsale.dev/v1alpha1",
            "kind": "FlashSale",
            "metadata": {"name": "double-11", "namespace": "shop"},
            "spec": {
                "window": {"start": "2026-11-11T00:00:00+08:00", "end": "2026-11-11T02:00:00+08:00"},
                "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 10}}],
                "degradation": {"flags": [
                    {"name": "reviews", "autoDegrade": {"query": "latency", "above": 0.5}},
                    {"name": "banner", "offDuring": ["Active"]},
                ]},
            }
        }))
        .unwrap()
    }

    fn status(value: serde_json::Value) -> FlashSaleStatus {
        serde_json::from_value(value).unwrap()
    }

    /// The value of one series in the exposition, if present.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    const LABELS: &str = r#"sale_namespace="shop",sale="double-11""#;

    #[test]
    fn a_sale_status_becomes_per_workload_agent_warmup_and_breaker_series() {
        let metrics = Metrics::default();
        let sale = sale();
        metrics.record_sale_status(
            &sale,
            &status(serde_json::json!({"clusters": [
                {"name": "hangzhou", "reachable": true,
                 "workloads": [
                     {"name": "Deployment shop/web", "targetReplicas": 10, "readyReplicas": 7},
                     {"name": "Deployment shop/api"},
                 ],
                 "drainAgents": {"desired": 3, "ready": 2},
                 "warmups": [{"name": "catalog", "state": "Running"}],
                 "flags": [
                     {"name": "reviews", "enabled": true, "reason": "BreakerClosed"},
                     {"name": "banner", "enabled": false, "reason": "PhaseOff"},
                 ]},
            ]})),
        );
        let text = metrics.render();
        let web = format!(r#"{{{LABELS},cluster="hangzhou",workload="Deployment/shop/web"}}"#);
        let api = format!(r#"{{{LABELS},cluster="hangzhou",workload="Deployment/shop/api"}}"#);
        assert_eq!(value(&text, &format!("flashsale_workload_wanted_replicas{web}")), Some(10.0), "{text}");
        assert_eq!(value(&text, &format!("flashsale_workload_ready_replicas{web}")), Some(7.0));
        assert_eq!(value(&text, &format!("flashsale_workload_wanted_replicas{api}")), Some(0.0), "unread workload");
        let cluster = format!(r#"{{{LABELS},cluster="hangzhou"}}"#);
        assert_eq!(value(&text, &format!("flashsale_drain_agents_desired{cluster}")), Some(3.0));
        assert_eq!(value(&text, &format!("flashsale_drain_agents_ready{cluster}")), Some(2.0));
        for (state, want) in [("Pending", 0.0), ("Running", 1.0), ("Succeeded", 0.0), ("Failed", 0.0), ("Skipped", 0.0)]
        {
            let series =
                format!(r#"flashsale_warmup_state{{{LABELS},cluster="hangzhou",warmup="catalog",state="{state}"}}"#);
            assert_eq!(value(&text, &series), Some(want), "{series}");
        }
        let reviews = format!(r#"{{{LABELS},cluster="hangzhou",flag="reviews"}}"#);
        assert_eq!(value(&text, &format!("flashsale_flag_breaker_open{reviews}")), Some(0.0));
        assert_eq!(value(&text, &format!("flashsale_flag_breaker_trips_total{reviews}")), Some(0.0));
        // A static flag has no breaker.
        assert!(
            !text.contains(
                r#"flag_breaker_open{sale_namespace="shop",sale="double-11",cluster="hangzhou",flag="banner"}"#
            )
        );

        // Completed, the status keeps what the agents, warm-ups and breakers did, as a record:
        // their series go (an open breaker must not alert after the sale), time-to-peak stays.
        metrics.record_sale_status(
            &sale,
            &status(serde_json::json!({"phase": "Completed", "clusters": [
                {"name": "hangzhou", "reachable": true,
                 "workloads": [{"name": "Deployment shop/web", "targetReplicas": 2, "timeToPeakSeconds": 40}],
                 "drainAgents": {"desired": 3, "ready": 3, "readySeconds": 12},
                 "warmups": [{"name": "catalog", "state": "Succeeded"}],
                 "flags": [{"name": "reviews", "enabled": false, "reason": "BreakerOpen"}]},
            ]})),
        );
        let text = metrics.render();
        assert_eq!(value(&text, &format!("flashsale_workload_time_to_peak_seconds{web}")), Some(40.0), "{text}");
        for gone in ["flashsale_drain_agents_desired{", "flashsale_warmup_state{", "flashsale_flag_breaker_open{"] {
            assert!(!text.contains(gone), "a Completed sale still exports {gone}: {text}");
        }
    }

    #[test]
    fn each_opening_of_a_breaker_is_one_trip_and_half_open_is_none() {
        let metrics = Metrics::default();
        let sale = sale();
        let pass = |enabled: bool, reason: &str, since: &str| {
            metrics.record_sale_status(
                &sale,
                &status(serde_json::json!({"clusters": [{"name": "local", "reachable": true, "flags": [
                    {"name": "reviews", "enabled": enabled, "reason": reason, "since": since},
                ]}]})),
            );
            let text = metrics.render();
            let reviews = format!(r#"{{{LABELS},cluster="local",flag="reviews"}}"#);
            (
                value(&text, &format!("flashsale_flag_breaker_open{reviews}")),
                value(&text, &format!("flashsale_flag_breaker_trips_total{reviews}")),
            )
        };
        assert_eq!(pass(true, "BreakerClosed", "2026-11-10T16:00:00Z"), (Some(0.0), Some(0.0)));
        assert_eq!(pass(false, "BreakerOpen", "2026-11-10T16:05:00Z"), (Some(1.0), Some(1.0)));
        assert_eq!(pass(false, "BreakerOpen", "2026-11-10T16:05:00Z"), (Some(1.0), Some(1.0)), "the same opening");
        assert_eq!(pass(false, "BreakerHalfOpen", "2026-11-10T16:05:00Z"), (Some(1.0), Some(1.0)));
        assert_eq!(pass(true, "BreakerClosed", "2026-11-10T16:09:00Z"), (Some(0.0), Some(1.0)));
        assert_eq!(pass(false, "BreakerOpen", "2026-11-10T16:12:00Z"), (Some(1.0), Some(2.0)));

        // An operator that starts while a breaker is open counts no trip it did not see.
        let restarted = Metrics::default();
        let open = status(serde_json::json!({"clusters": [{"name": "local", "reachable": true, "flags": [
            {"name": "reviews", "enabled": false, "reason": "BreakerOpen", "since": "2026-11-10T16:12:00Z"},
        ]}]}));
        restarted.record_sale_status(&sale, &open);
        let text = restarted.render();
        assert_eq!(
            value(&text, &format!(r#"flashsale_flag_breaker_trips_total{{{LABELS},cluster="local",flag="reviews"}}"#)),
            Some(0.0)
        );
    }

    #[test]
    fn series_of_removed_workloads_clusters_and_sales_are_forgotten() {
        let metrics = Metrics::default();
        let sale = sale();
        let cluster = |name: &str, workloads: &[&str]| {
            serde_json::json!({
                "name": name, "reachable": true,
                "workloads": workloads.iter().map(|w| serde_json::json!({"name": w, "targetReplicas": 2, "readyReplicas": 2})).collect::<Vec<_>>(),
                "drainAgents": {"desired": 1, "ready": 1},
                "warmups": [{"name": "catalog", "state": "Succeeded"}],
                "flags": [{"name": "reviews", "enabled": true, "reason": "BreakerClosed"}],
            })
        };
        metrics.record_sale_status(
            &sale,
            &status(serde_json::json!({"clusters": [
                cluster("hangzhou", &["Deployment shop/web", "Deployment shop/api"]),
                cluster("beijing", &["Deployment shop/web"]),
            ]})),
        );
        let text = metrics.render();
        assert!(text.contains(r#"cluster="beijing""#) && text.contains("Deployment/shop/api"), "{text}");

        metrics.record_sale_status(
            &sale,
            &status(serde_json::json!({"clusters": [cluster("hangzhou", &["Deployment shop/web"])]})),
        );
        let text = metrics.render();
        assert!(!text.contains(r#"cluster="beijing""#), "a removed cluster kept series:\n{text}");
        assert!(!text.contains("Deployment/shop/api"), "a removed workload kept series:\n{text}");
        assert!(text.contains(r#"cluster="hangzhou",workload="Deployment/shop/web""#), "{text}");

        metrics.forget_sale_status(&sale);
        let text = metrics.render();
        assert!(!text.contains(r#"sale="double-11""#), "a deleted sale kept series:\n{text}");
    }

    #[test]
    fn leader_starts_at_zero_and_build_info_names_the_version() {
        let metrics = Metrics::default();
        let text = metrics.render();
        assert_eq!(value(&text, "flashsale_leader"), Some(0.0), "{text}");
        let build = format!(r#"flashsale_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
        assert_eq!(value(&text, &build), Some(1.0), "{text}");
    }

    /// The metric names a PromQL expression reads (`flashsale_*`), suffixes of counters and
    /// histograms folded into their family's name.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = vec![];
        let mut rest = expr;
        while let Some(at) = rest.find("flashsale_") {
            let tail = &rest[at..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.push(family_name(&tail[..end]).to_owned());
            rest = &tail[end..];
        }
        names
    }

    fn family_name(series: &str) -> &str {
        ["_total", "_bucket", "_count", "_sum"].iter().find_map(|s| series.strip_suffix(s)).unwrap_or(series)
    }

    /// The dashboard shipped with the chart parses, opens with the "are we ready" row, takes
    /// its data source and the sale from variables, and every panel queries metrics the
    /// operator or the drain agent exports.
    #[test]
    fn the_dashboard_queries_only_exported_metrics_through_its_datasource_variable() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/flashsale-operator/dashboards/flashsale-operator.json");
        let text = std::fs::read_to_string(path).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
        assert_eq!(variable("datasource").map(|v| &v["type"]), Some(&serde_json::json!("datasource")));
        assert_eq!(variable("datasource").map(|v| &v["query"]), Some(&serde_json::json!("prometheus")));
        for name in ["sale_namespace", "sale"] {
            let v = variable(name).unwrap_or_else(|| panic!("no {name} variable"));
            assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}");
        }

        // Every family of the operator with one series (empty families are not exposed).
        let metrics = Metrics::default();
        let (sale_namespace, sale) = ("shop".to_owned(), "double-11".to_owned());
        let sale_labels = SaleLabels { sale_namespace: sale_namespace.clone(), sale: sale.clone() };
        metrics
            .phase
            .get_or_create(&PhaseLabels { sale_namespace: sale_namespace.clone(), sale: sale.clone(), phase: "Active" })
            .set(1);
        metrics.next_transition_timestamp.get_or_create(&sale_labels).set(1.0);
        metrics
            .condition
            .get_or_create(&ConditionLabels {
                sale_namespace: sale_namespace.clone(),
                sale: sale.clone(),
                condition: "Ready".into(),
            })
            .set(1);
        metrics
            .cluster_reachable
            .get_or_create(&ClusterLabels {
                sale_namespace: sale_namespace.clone(),
                sale: sale.clone(),
                cluster: "local".into(),
            })
            .set(1);
        metrics
            .flag_enabled
            .get_or_create(&FlagLabels { sale_namespace, sale, cluster: "local".into(), flag: "reviews".into() })
            .set(1);
        metrics.api_requests.get_or_create(&RequestLabels { cluster: "local".into(), verb: "get" }).inc();
        metrics.reconcile_errors.get_or_create(&ErrorLabels { lever: "timeline", category: "api" }).inc();
        drop(metrics.time("timeline"));
        metrics.record_sale_status(
            &self::sale(),
            &status(serde_json::json!({"clusters": [{"name": "local", "reachable": true,
                "workloads": [{"name": "Deployment shop/web", "targetReplicas": 1, "timeToPeakSeconds": 12}],
                "drainAgents": {"desired": 1, "ready": 1},
                "warmups": [{"name": "catalog", "state": "Pending"}],
                "flags": [{"name": "reviews", "enabled": true, "reason": "BreakerClosed"}]}]})),
        );
        let exported: HashSet<String> =
            [metrics.render(), crate::admin::Exposition::render(&crate::agent::metrics::AgentMetrics::default())]
                .iter()
                .flat_map(|t| {
                    t.lines()
                        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
                        .map(|n| family_name(n).to_owned())
                        .collect::<Vec<_>>()
                })
                .collect();

        let panels = dashboard["panels"].as_array().unwrap();
        assert_eq!(panels[0]["type"], "row");
        assert_eq!(panels[0]["title"], "Are we ready");
        let first_row: Vec<&str> =
            panels[1..].iter().take_while(|p| p["type"] != "row").map(|p| p["title"].as_str().unwrap()).collect();
        for wanted in [
            "Phase",
            "Next phase change in",
            "Ready",
            "Workloads short of peak, by cluster",
            "Drain agents ready / desired, by cluster",
            "Warm-ups",
            "Flags",
        ] {
            assert!(first_row.contains(&wanted), "the first row has no {wanted:?} panel: {first_row:?}");
        }
        let rows: Vec<&str> =
            panels.iter().filter(|p| p["type"] == "row").map(|p| p["title"].as_str().unwrap()).collect();
        assert_eq!(rows, ["Are we ready", "Drain", "Breakers and flags", "API requests and reconciles"]);
        let mut ids = HashSet::new();
        let mut read = HashSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default();
            assert!(ids.insert(p["id"].as_i64().unwrap()), "panel id of {title:?} repeats");
            assert!(p["gridPos"]["w"].as_i64().is_some_and(|w| w > 0), "{title:?} has no gridPos");
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title:?} does not use the datasource variable");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("panel {title:?} has no query"));
            for t in targets {
                let expr = t["expr"].as_str().filter(|e| !e.trim().is_empty());
                let expr = expr.unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
                assert_eq!(t["datasource"]["uid"], "${datasource}", "a query of {title:?}");
                let names = metric_names(expr);
                assert!(!names.is_empty(), "panel {title:?} reads no flashsale metric: {expr}");
                for name in names {
                    assert!(exported.contains(&name), "panel {title:?} reads {name}, which nothing exports");
                    read.insert(name);
                }
            }
        }
        // The families a dashboard needs are all shown somewhere.
        for name in [
            "flashsale_workload_wanted_replicas",
            "flashsale_drain_agents_ready",
            "flashsale_warmup_state",
            "flashsale_flag_breaker_open",
            "flashsale_flag_breaker_trips",
            "flashsale_leader",
            "flashsale_api_requests",
            "flashsale_reconcile_duration_seconds",
            "flashsale_drain_agent_evictions",
        ] {
            assert!(read.contains(name), "no panel shows {name}");
        }
    }
}
