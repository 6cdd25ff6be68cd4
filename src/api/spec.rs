//! The `FlashSale` spec: what an SRE writes.
//!
//! Every rule that can be checked without a cluster lives here as schema or CEL, so the API
//! server rejects a bad sale at `kubectl apply` time with a message naming the field.

use k8s_openapi::api::{batch::v1::JobTemplateSpec, core::v1::Toleration};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::status::FlashSaleStatus;

/// One flash sale: a window, the clusters it spans, and the levers pulled around it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "flashsale.dev",
    version = "v1alpha1",
    kind = "FlashSale",
    plural = "flashsales",
    shortname = "fs",
    namespaced,
    status = "FlashSaleStatus",
    derive = "PartialEq",
    doc = "A flash sale: the window, the clusters and workloads it covers, and how each is prepared and restored.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the sale is in its timeline"),
    printcolumn(name = "Start", type_ = "string", json_path = ".spec.window.start", description = "Window start"),
    printcolumn(name = "End", type_ = "string", json_path = ".spec.window.end", description = "Window end"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the platform is ready for the sale right now"),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextTransitionTime", description = "When the phase changes next"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "Why the sale is or is not ready"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters (it is used in the names of the objects the sale creates)"),
)]
#[serde(rename_all = "camelCase")]
pub struct FlashSaleSpec {
    /// When the sale runs. Both ends are RFC 3339 timestamps with an explicit offset.
    pub window: Window,

    /// The IANA time zone the clusters' CronHPA controller runs in (a controller-wide `TZ`; ACK's
    /// add-on uses Asia/Shanghai). CronHPA schedules are rendered in this zone.
    #[serde(default = "default_cron_hpa_time_zone")]
    #[x_kube(validation = Rule::new("self == 'UTC' || self.matches('^[A-Za-z]+(/[A-Za-z0-9_+-]+){1,2}$')").message("cronHPATimeZone must be an IANA time zone name such as Asia/Shanghai or UTC"))]
    #[schemars(length(min = 1, max = 64))]
    #[serde(rename = "cronHPATimeZone")]
    pub cron_hpa_time_zone: String,

    /// How long before the window start preparation begins (Go duration, at most 24h).
    #[serde(default = "default_prepare_before")]
    #[schemars(extend("default" = "30m"))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) <= duration('24h')").message("prepareBefore must be a non-negative duration such as 30m or 1h30m, at most 24h"))]
    #[schemars(length(max = 32))]
    pub prepare_before: Duration,

    /// How long after the window end peak capacity is held before restoring (Go duration, at
    /// most 24h).
    #[serde(default = "default_cooldown_after")]
    #[schemars(extend("default" = "15m"))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) <= duration('24h')").message("cooldownAfter must be a non-negative duration such as 15m, at most 24h"))]
    #[schemars(length(max = 32))]
    pub cooldown_after: Duration,

    /// Abort: restore everything now and act no further while true.
    #[serde(default)]
    pub suspend: bool,

    /// The clusters the sale spans. Empty means the cluster the operator runs in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("clusters[].name must be unique"))]
    pub clusters: Vec<ClusterTarget>,

    /// The workloads to prepare, in every listed cluster.
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(x, x.ref.kind == w.ref.kind && x.ref.name == w.ref.name && (has(x.ref.__namespace__) ? x.ref.__namespace__ : '') == (has(w.ref.__namespace__) ? w.ref.__namespace__ : '')))").message("workloads[].ref must be unique: the same kind, namespace and name is listed twice"))]
    pub workloads: Vec<Workload>,

    /// The spot-termination drain agent on spot nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_drain: Option<SpotDrain>,

    /// Degradation flags published for applications to read through OpenFeature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degradation: Option<Degradation>,

    /// Cache pre-warm Jobs run ahead of the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("cacheWarm[].name must be unique"))]
    pub cache_warm: Vec<CacheWarm>,
}

/// The sale window.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.end > self.start").message("window.end must be after window.start"))]
#[x_kube(validation = Rule::new("self.end - self.start <= duration('168h')").message("the window may be at most 7 days long"))]
pub struct Window {
    /// Start of the sale, RFC 3339 with offset, e.g. 2026-11-11T00:00:00+08:00.
    #[schemars(length(max = 64), extend("format" = "date-time"))]
    pub start: String,
    /// End of the sale, RFC 3339 with offset; after `start`, at most 7 days later.
    #[schemars(length(max = 64), extend("format" = "date-time"))]
    pub end: String,
}

/// A cluster the sale spans, reached through a kubeconfig stored in a Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTarget {
    /// A short name for the cluster, shown in status (a DNS label).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The Secret (in the FlashSale's namespace) holding the kubeconfig.
    pub kubeconfig_secret_ref: SecretKeyRef,
    /// Overrides `spec.cronHPATimeZone` for this cluster.
    #[serde(default, rename = "cronHPATimeZone", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'UTC' || self.matches('^[A-Za-z]+(/[A-Za-z0-9_+-]+){1,2}$')").message("clusters[].cronHPATimeZone must be an IANA time zone name such as Asia/Shanghai or UTC"))]
    #[schemars(length(min = 1, max = 64))]
    pub cron_hpa_time_zone: Option<String>,
}

/// A key of a Secret in the FlashSale's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the kubeconfig.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A workload to prepare for the sale.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Workload {
    /// The workload, reached through its scale subresource.
    #[serde(rename = "ref")]
    pub target: WorkloadRef,
    /// How many replicas the sale needs and how to get there.
    pub scale: Scale,
    /// Probe timings for the sale; only timing fields change, never the handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
}

/// A reference to a scalable workload.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// API group and version of the workload.
    #[serde(default = "default_workload_api_version")]
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    /// Kind of the workload, e.g. Deployment or StatefulSet.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Z][A-Za-z0-9]*$"))]
    pub kind: String,
    /// Name of the workload.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Namespace of the workload; defaults to the FlashSale's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
}

/// Peak capacity and the mechanism that provides it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Scale {
    /// Replicas needed from the start of Preparing until the restore.
    #[schemars(range(min = 1, max = 10000))]
    pub peak: i32,
    /// How the peak is reached.
    #[serde(default)]
    pub mode: ScaleMode,
}

/// How a workload is scaled to peak.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ScaleMode {
    /// CronHPA where its CRD is installed, else the workload's HPA, else the scale subresource.
    #[default]
    Auto,
    /// Alibaba's CronHorizontalPodAutoscaler.
    #[serde(rename = "CronHPA")]
    CronHpa,
    /// Raise the workload's HorizontalPodAutoscaler bounds.
    #[serde(rename = "HPA")]
    Hpa,
    /// Set replicas through the scale subresource.
    Replicas,
}

/// Probe timings for one container.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.liveness) || !has(self.liveness.successThreshold) || self.liveness.successThreshold == 1").message("probes.liveness.successThreshold must be 1 (Kubernetes requires it for liveness probes)").field_path(".liveness"))]
#[x_kube(validation = Rule::new("has(self.liveness) || has(self.readiness)").message("probes must set liveness, readiness or both"))]
pub struct Probes {
    /// The container whose probes change; default the first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub container: Option<String>,
    /// Conservative liveness timings, so busy pods are not killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeTiming>,
    /// Aggressive readiness timings, so a struggling pod sheds load quickly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeTiming>,
}

/// The timing fields of a probe, in Kubernetes' own ranges. Unset fields keep their live value.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTiming {
    /// How often to probe, 1..=3600 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Probe timeout, 1..=3600 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the probe fails, 1..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
    /// Consecutive successes before the probe passes, 1..=100 (liveness: exactly 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
    /// Delay before the first probe, 0..=3600 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
}

/// The spot-termination drain agent.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpotDrain {
    /// Run the agent from Preparing until the restore.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Nodes the agent runs on: must contain one of the selectors the operator's installer
    /// allows (`--agent-node-selector`; by default the spot label).
    #[serde(default = "default_spot_node_selector")]
    #[schemars(extend("maxProperties" = 16))]
    pub node_selector: BTreeMap<String, String>,
    /// How often the agent polls the metadata service (at least 1s, at most 60s).
    #[serde(default = "default_poll_interval")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('60s')").message("spotDrain.pollInterval must be a duration between 1s and 60s, such as 2s"))]
    #[schemars(length(max = 32))]
    pub poll_interval: Duration,
    /// Base URL of the instance metadata service (plain http, as the ECS metadata service is):
    /// one the operator's installer allows (`--agent-metadata-endpoint`; by default the ECS one).
    #[serde(default = "default_metadata_endpoint")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^http://[^\s/]+(/.*)?$"))]
    pub metadata_endpoint: String,
    /// Whether the agent asks the metadata service for a session token (ECS hardened mode).
    #[serde(default)]
    pub metadata_token: MetadataTokenMode,
    /// Tolerations for the agent's pods, each one of those the operator's installer lists
    /// (`--agent-toleration`). Empty means every taint the installer lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(t, (!has(t.operator) || t.operator in ['Exists', 'Equal']) && (!has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']) && (!has(t.operator) || t.operator != 'Exists' || !has(t.value) || t.value == ''))").message("spotDrain.tolerations: each operator must be Exists or Equal, each effect NoSchedule, PreferNoSchedule or NoExecute, and an Exists toleration has no value"))]
    pub tolerations: Vec<Toleration>,
}

/// ECS metadata service access mode.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetadataTokenMode {
    /// Use a token when the service hands one out, plain requests otherwise.
    #[default]
    Optional,
    /// Hardened mode: every request carries a token.
    Required,
    /// Never ask for a token.
    Disabled,
}

/// Degradation flags for applications, in flagd's flag-definition format.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.prometheus) || !self.flags.exists(f, has(f.autoDegrade))").message("degradation.prometheus.url is required when a flag uses autoDegrade").field_path(".prometheus"))]
pub struct Degradation {
    /// The ConfigMap (in the FlashSale's namespace) holding `flags.flagd.json`.
    #[serde(default = "default_flags_config_map")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub config_map_name: String,
    /// Where flags are published.
    #[serde(default)]
    pub target: FlagTarget,
    /// The Prometheus that auto-degrade queries run against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    /// The flags. Each flag is on (true) outside its degradation and off (false) within it.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g.name == f.name))").message("degradation.flags[].name must be unique"))]
    pub flags: Vec<Flag>,
}

/// Where degradation flags are published.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlagTarget {
    /// A ConfigMap with a flagd flag-definition file, read by the flagd provider.
    #[default]
    ConfigMap,
    /// The OpenFeature operator's `FeatureFlag` (core.openfeature.dev/v1beta1).
    FeatureFlag,
}

/// A Prometheus server.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Prometheus {
    /// Base URL, e.g. http://prometheus.monitoring:9090.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub url: String,
}

/// One degradation flag: static by phase, or a circuit breaker over a live signal.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.offDuring) != has(self.autoDegrade)").message("each flag sets exactly one of offDuring or autoDegrade"))]
pub struct Flag {
    /// The flag key apps evaluate.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"))]
    pub name: String,
    /// Off in these phases, on otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub off_during: Option<Vec<FlagPhase>>,
    /// Off while a live signal says the platform is struggling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_degrade: Option<AutoDegrade>,
}

/// Phases a static flag can be off in.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlagPhase {
    Preparing,
    Active,
    CoolingDown,
}

/// A Sentinel-style circuit breaker over a Prometheus instant query.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoDegrade {
    /// PromQL returning one number.
    #[schemars(length(min = 1, max = 2048))]
    pub query: String,
    /// The breaker opens when the value stays above this.
    pub above: f64,
    /// How long the value must stay above the threshold (at least 1s, at most 1h).
    #[serde(rename = "for", default = "default_degrade_for")]
    #[schemars(extend("default" = "30s"))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("autoDegrade.for must be a duration between 1s and 1h, such as 30s"))]
    #[schemars(length(max = 32))]
    pub for_: Duration,
    /// How long the value must stay below the threshold before the flag turns back on (at
    /// least 1s, at most 1h).
    #[serde(default = "default_recover_after")]
    #[schemars(extend("default" = "2m"))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("autoDegrade.recoverAfter must be a duration between 1s and 1h, such as 2m"))]
    #[schemars(length(max = 32))]
    pub recover_after: Duration,
}

/// A cache pre-warm Job.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheWarm {
    /// Name of the warm-up (a DNS label, used in the Job's name).
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// How long before the window start the Job is created (at most 24h).
    #[serde(default = "default_warm_start_before")]
    #[schemars(extend("default" = "20m"))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) <= duration('24h')").message("cacheWarm[].startBefore must be a non-negative duration such as 20m, at most 24h"))]
    #[schemars(length(max = 32))]
    pub start_before: Duration,
    /// A failed required warm-up keeps the sale not Ready.
    #[serde(default = "default_true")]
    pub required: bool,
    /// The Job to run (batch/v1 JobTemplateSpec).
    pub template: JobTemplateSpec,
}

fn default_cron_hpa_time_zone() -> String {
    "Asia/Shanghai".into()
}
fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}
fn default_workload_api_version() -> String {
    "apps/v1".into()
}
fn default_flags_config_map() -> String {
    "flashsale-flags".into()
}
fn default_metadata_endpoint() -> String {
    "http://100.100.100.200".into()
}
fn default_true() -> bool {
    true
}
fn default_spot_node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("node.kubernetes.io/instance-lifecycle".to_owned(), "spot".to_owned())])
}
fn minutes(m: u64) -> Duration {
    std::time::Duration::from_secs(m * 60).into()
}
fn default_prepare_before() -> Duration {
    minutes(30)
}
fn default_cooldown_after() -> Duration {
    minutes(15)
}
fn default_warm_start_before() -> Duration {
    minutes(20)
}
fn default_recover_after() -> Duration {
    minutes(2)
}
fn default_degrade_for() -> Duration {
    std::time::Duration::from_secs(30).into()
}
fn default_poll_interval() -> Duration {
    std::time::Duration::from_secs(2).into()
}
