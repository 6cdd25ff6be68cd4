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
    printcolumn(name = "Start", type_ = "string", json_path = ".status.windowStart", description = "Window start, UTC"),
    printcolumn(name = "End", type_ = "string", json_path = ".status.windowEnd", description = "Window end, UTC"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the platform is ready for the sale right now"),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextTransitionTime", description = "When the phase changes next, UTC"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Clusters", type_ = "string", json_path = ".status.clustersReady", priority = 1, description = "Clusters ready / clusters"),
    printcolumn(name = "At-Peak", type_ = "string", json_path = ".status.workloadsAtPeak", priority = 1, description = "Workloads with their peak replicas ready / workloads, over every cluster"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "Why the sale is or is not ready"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters (it is used in the names of the objects the sale creates)"),
    validation = Rule::new("!has(self.spec.rehearsal) || self.spec.rehearsal.of != self.metadata.name").message("spec.rehearsal.of names the rehearsed sale: another FlashSale, not this one"),
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
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(x, x.ref.kind == w.ref.kind && x.ref.name == w.ref.name))").message("workloads[].ref must be unique: the same kind and name is listed twice"))]
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

    /// Set on a rehearsal only: the sale (in this namespace) whose preparation this object plays
    /// for real ahead of time, and which levers it pulls. `flashsale-operator rehearse` writes it;
    /// see the README's "Rehearse the sale".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal: Option<Rehearsal>,
}

/// What a rehearsal rehearses.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct Rehearsal {
    /// The rehearsed sale's name, in the rehearsal's namespace.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub of: String,
    /// The levers taking part (the others were left out of this copy of the sale's spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub levers: Vec<RehearsedLever>,
}

/// A lever a rehearsal may pull.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RehearsedLever {
    /// Pre-scaling to peak (always part of a rehearsal: it is what a rehearsal measures).
    Scale,
    /// The probe timings.
    Probes,
    /// The spot-termination drain agents.
    Agents,
    /// The cache pre-warm Jobs.
    Warmup,
    /// The degradation flags (off by default: a rehearsal's flags reach real users).
    Flags,
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
    /// The Secret (in the FlashSale's namespace) holding the cluster's credentials: a
    /// kubeconfig, a Cluster API kubeconfig Secret or an Argo CD cluster Secret.
    pub kubeconfig_secret_ref: SecretKeyRef,
    /// Overrides `spec.cronHPATimeZone` for this cluster.
    #[serde(default, rename = "cronHPATimeZone", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'UTC' || self.matches('^[A-Za-z]+(/[A-Za-z0-9_+-]+){1,2}$')").message("clusters[].cronHPATimeZone must be an IANA time zone name such as Asia/Shanghai or UTC"))]
    #[schemars(length(min = 1, max = 64))]
    pub cron_hpa_time_zone: Option<String>,
}

/// A Secret in the FlashSale's namespace holding a cluster's credentials, and how to read it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.format != 'ArgoCD' || !has(self.key)").message("clusters[].kubeconfigSecretRef.key does not apply to format ArgoCD: an Argo CD cluster Secret is read from its keys server and config"))]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the kubeconfig. Default: `kubeconfig` for format Kubeconfig, `value` for
    /// ClusterAPI; not used for ArgoCD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
    /// What the Secret holds: `Kubeconfig` (a kubeconfig under `key`), `ClusterAPI` (the
    /// `<cluster>-kubeconfig` Secret Cluster API writes, key `value`) or `ArgoCD` (an Argo CD
    /// cluster Secret, keys `server` and `config`). Each is read by the same rules as a
    /// kubeconfig: inline credentials only.
    #[serde(default)]
    pub format: CredentialsFormat,
}

impl SecretKeyRef {
    /// The key the kubeconfig is read from (None for an Argo CD cluster Secret, read whole).
    pub fn kubeconfig_key(&self) -> Option<&str> {
        match self.format {
            CredentialsFormat::Kubeconfig => Some(self.key.as_deref().unwrap_or("kubeconfig")),
            CredentialsFormat::ClusterApi => Some(self.key.as_deref().unwrap_or("value")),
            CredentialsFormat::ArgoCd => None,
        }
    }
}

/// The shape of a cluster's credentials Secret: each is read by the same rules as a
/// kubeconfig (inline credentials only; no files, no commands unless the installer allows exec).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CredentialsFormat {
    /// A kubeconfig under `key` (default `kubeconfig`).
    #[default]
    Kubeconfig,
    /// A Cluster API `<cluster>-kubeconfig` Secret: a kubeconfig under `value`.
    #[serde(rename = "ClusterAPI")]
    ClusterApi,
    /// An Argo CD cluster Secret: `server`, and `config` (JSON: bearerToken, username/password,
    /// tlsClientConfig; execProviderConfig only where the installer allows exec).
    #[serde(rename = "ArgoCD")]
    ArgoCd,
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

/// A reference to a scalable workload in the FlashSale's own namespace.
///
/// A sale acts only where its author may create it: the workload is always looked up in the
/// sale's namespace (in every cluster). `namespace` stays in the schema only so that a sale that
/// sets it is refused with a message for every client; a removed field would be pruned in
/// silence by clients that do not ask for strict field validation, and the sale would then act
/// on a same-named workload of its own namespace instead.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.__namespace__)").message("workloads[].ref.namespace may not be set: a sale acts only on workloads in its own namespace; create the FlashSale in the workload's namespace instead").field_path(".namespace"))]
pub struct WorkloadRef {
    /// API group and version of the workload: apps/v1, the group of the kinds the levers know.
    #[serde(default = "default_workload_api_version")]
    #[schemars(extend("enum" = ["apps/v1"]))]
    pub api_version: String,
    /// Kind of the workload: Deployment or StatefulSet (the kinds whose replicas and pod
    /// template the levers know how to change and put back).
    #[schemars(extend("enum" = ["Deployment", "StatefulSet"]))]
    pub kind: String,
    /// Name of the workload.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Not allowed (refused at admission): the workload is always in the FlashSale's namespace.
    /// Kept in the schema so that setting it is an error rather than silently dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
}

/// The workload kinds the levers know, with their resource plurals (`apps/v1`).
pub const WORKLOAD_KINDS: [(&str, &str); 2] = [("Deployment", "deployments"), ("StatefulSet", "statefulsets")];

/// The `apiVersion` of every workload kind the levers know.
pub const WORKLOAD_API_VERSION: &str = "apps/v1";

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

/// A Prometheus server. The operator queries only URLs its installer allows (by default
/// in-cluster Service names, `http(s)://<service>.<namespace>[.svc[.cluster.local]][:port]`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.caSecretRef) || self.url.startsWith('https://')").message("degradation.prometheus.caSecretRef needs an https:// url").field_path(".caSecretRef"))]
pub struct Prometheus {
    /// Base URL, e.g. http://prometheus.monitoring:9090. Credentials go in `auth`, never in the URL.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^https?://[^\s/@]+(/.*)?$"))]
    pub url: String,
    /// Credentials sent with every query (managed Prometheus services need them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PrometheusAuth>,
    /// A Secret key (in the FlashSale's namespace) holding the PEM CA bundle that signs an https
    /// url's certificate, in place of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<PrometheusSecretKeyRef>,
}

/// How the operator authenticates to Prometheus: exactly one of a bearer token or basic auth,
/// read from a Secret in the FlashSale's namespace (of the cluster the flags are published in).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.bearerTokenSecretRef) != has(self.basicAuthSecretRef)").message("degradation.prometheus.auth sets exactly one of bearerTokenSecretRef or basicAuthSecretRef"))]
pub struct PrometheusAuth {
    /// The Secret key holding a bearer token (sent as `Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<PrometheusSecretKeyRef>,
    /// The Secret holding a username and a password (sent as `Authorization: Basic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret_ref: Option<BasicAuthSecretRef>,
}

/// One key of a Secret in the FlashSale's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct PrometheusSecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// The key in the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A Secret in the FlashSale's namespace holding basic-auth credentials.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// The key holding the username.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub username_key: String,
    /// The key holding the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
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
    /// The Job to run (batch/v1 JobTemplateSpec). Its pods run as plain pods of the sale's
    /// namespace: no host namespaces, `hostPath` volumes, host ports, privileged containers,
    /// added capabilities or unconfined profiles (the Pod Security Standards' baseline profile,
    /// refused at admission), and only a ServiceAccount the installer allows (checked when the
    /// Job is due).
    #[schemars(transform = confine_warmup_template)]
    pub template: JobTemplateSpec,
}

/// Where the pod spec sits in a `JobTemplateSpec` schema.
const POD_SPEC: &str = "/properties/spec/properties/template/properties/spec";

/// Upper bounds put on the lists of the warm-up pod template that the admission rules look
/// into: the API server refuses a CRD whose rules could cost too much on an object as large as
/// a request may be, and an unbounded list counts as that large. They are far above what a
/// warm-up Job needs.
const WARMUP_LIST_BOUNDS: [(&str, u64); 6] = [
    ("/properties/containers", 16),
    ("/properties/initContainers", 16),
    ("/properties/volumes", 64),
    ("/properties/securityContext/properties/sysctls", 32),
    ("/properties/containers/items/properties/ports", 64),
    ("/properties/initContainers/items/properties/ports", 64),
];

/// The sysctls the Pod Security Standards' baseline profile allows (all namespaced and safe).
const SAFE_SYSCTLS: &str = "['kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range', 'net.ipv4.ip_unprivileged_port_start', 'net.ipv4.tcp_syncookies', 'net.ipv4.ping_group_range', 'net.ipv4.ip_local_reserved_ports', 'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout', 'net.ipv4.tcp_keepalive_intvl', 'net.ipv4.tcp_keepalive_probes']";

/// The SELinux types the baseline profile allows.
const SELINUX_TYPES: &str = "['container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']";

/// Adds the admission rules that keep a warm-up pod a plain pod (see [`CacheWarm::template`])
/// to the embedded Kubernetes schema, each rule on the object it checks so that the error names
/// the field and each rule's cost stays small.
fn confine_warmup_template(schema: &mut schemars::Schema) {
    use serde_json::json;
    let rule = |rule: &str, message: &str, field: &str| json!({"rule": rule, "message": message, "fieldPath": field});
    let pod_level = [
        rule(
            "!has(self.hostNetwork) || !self.hostNetwork",
            "a warm-up pod may not use the host's network (hostNetwork)",
            ".hostNetwork",
        ),
        rule(
            "!has(self.hostPID) || !self.hostPID",
            "a warm-up pod may not share the host's process namespace (hostPID)",
            ".hostPID",
        ),
        rule(
            "!has(self.hostIPC) || !self.hostIPC",
            "a warm-up pod may not share the host's IPC namespace (hostIPC)",
            ".hostIPC",
        ),
        rule(
            "!has(self.ephemeralContainers)",
            "a warm-up pod template may not list ephemeralContainers",
            ".ephemeralContainers",
        ),
        rule(
            "!has(self.serviceAccount)",
            "serviceAccount is the deprecated alias of serviceAccountName; use serviceAccountName (which ServiceAccounts a warm-up may use is the installer's choice)",
            ".serviceAccount",
        ),
    ];
    // What the pod-level and the container-level security contexts share.
    let profiles = |what: &str| {
        vec![
            rule(
                &format!(
                    "!has(self.seLinuxOptions) || (!has(self.seLinuxOptions.user) && !has(self.seLinuxOptions.role) && (!has(self.seLinuxOptions.type) || self.seLinuxOptions.type in {SELINUX_TYPES}))"
                ),
                &format!(
                    "a warm-up {what} may not set seLinuxOptions.user or .role, and seLinuxOptions.type only to one of {SELINUX_TYPES}"
                ),
                ".seLinuxOptions",
            ),
            rule(
                "!has(self.seccompProfile) || self.seccompProfile.type != 'Unconfined'",
                &format!("a warm-up {what} may not run without a seccomp profile (seccompProfile.type: Unconfined)"),
                ".seccompProfile.type",
            ),
            rule(
                "!has(self.appArmorProfile) || self.appArmorProfile.type != 'Unconfined'",
                &format!("a warm-up {what} may not run without an AppArmor profile (appArmorProfile.type: Unconfined)"),
                ".appArmorProfile.type",
            ),
            rule(
                "!has(self.windowsOptions) || !has(self.windowsOptions.hostProcess) || !self.windowsOptions.hostProcess",
                &format!("a warm-up {what} may not run as a Windows host process (windowsOptions.hostProcess)"),
                ".windowsOptions.hostProcess",
            ),
        ]
    };
    let mut pod_security = profiles("pod");
    pod_security.push(rule(
        &format!("!has(self.sysctls) || self.sysctls.all(s, s.name in {SAFE_SYSCTLS})"),
        &format!("a warm-up pod may set only the safe sysctls {SAFE_SYSCTLS}"),
        ".sysctls",
    ));
    let mut container_security = profiles("container");
    container_security.extend([
        rule("!has(self.privileged) || !self.privileged", "a warm-up container may not be privileged", ".privileged"),
        rule(
            "!has(self.capabilities) || !has(self.capabilities.add) || self.capabilities.add.size() == 0",
            "a warm-up container may not add capabilities (capabilities.add)",
            ".capabilities.add",
        ),
        rule(
            "!has(self.procMount) || self.procMount == 'Default'",
            "a warm-up container may not unmask /proc (procMount must be Default)",
            ".procMount",
        ),
    ]);
    let add = |schema: &mut schemars::Schema, at: &str, rules: Vec<serde_json::Value>| {
        if let Some(object) = schema.pointer_mut(at).and_then(serde_json::Value::as_object_mut) {
            let list = object.entry("x-kubernetes-validations").or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                list.extend(rules);
            }
        }
    };
    add(
        schema,
        "/properties/spec",
        vec![rule(
            "!has(self.manualSelector) || !self.manualSelector",
            "a warm-up Job may not use manualSelector (its selector could then take over other pods of the namespace)",
            ".manualSelector",
        )],
    );
    add(schema, POD_SPEC, pod_level.to_vec());
    add(schema, &format!("{POD_SPEC}/properties/securityContext"), pod_security);
    add(
        schema,
        &format!("{POD_SPEC}/properties/volumes/items"),
        vec![rule("!has(self.hostPath)", "a warm-up pod may not mount a hostPath volume", ".hostPath")],
    );
    for containers in ["containers", "initContainers"] {
        let container = format!("{POD_SPEC}/properties/{containers}/items/properties");
        add(schema, &format!("{container}/securityContext"), container_security.clone());
        add(
            schema,
            &format!("{container}/ports/items"),
            vec![rule(
                "!has(self.hostPort) || self.hostPort == 0",
                "a warm-up container may not bind a host port (hostPort)",
                ".hostPort",
            )],
        );
    }
    for (list, max) in WARMUP_LIST_BOUNDS {
        if let Some(object) =
            schema.pointer_mut(&format!("{POD_SPEC}{list}")).and_then(serde_json::Value::as_object_mut)
        {
            object.insert("maxItems".into(), json!(max));
        }
    }
}

fn default_cron_hpa_time_zone() -> String {
    "Asia/Shanghai".into()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sale_with(workload_ref: &str, pod: serde_json::Value) -> FlashSale {
        let mut sale: FlashSale = serde_saphyr::from_str(&format!(
            r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {{name: t, namespace: shop}}
spec:
  window: {{start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}}
  workloads:
  - ref: {workload_ref}
    scale: {{peak: 10}}
"#
        ))
        .unwrap();
        let template = serde_json::json!({"spec": {"template": {"spec": pod}}});
        sale.spec.cache_warm = vec![CacheWarm {
            name: "w".into(),
            start_before: default_warm_start_before(),
            required: true,
            template: serde_json::from_value(template).unwrap(),
        }];
        sale
    }

    fn refusal(workload_ref: &str, pod: serde_json::Value) -> Option<String> {
        kube::core::cel::validate_cel(&sale_with(workload_ref, pod)).err().map(|e| e.to_string())
    }

    /// The rules sit deep in an embedded Kubernetes schema, at paths a k8s-openapi upgrade
    /// could move: each must still fire (the client-side validation `plan` uses walks the same
    /// generated schema the CRD carries).
    #[test]
    fn warm_up_pods_that_would_be_more_than_plain_pods_are_refused() {
        let own = "{kind: Deployment, name: web}";
        let plain = serde_json::json!({"containers": [{"name": "w", "image": "w:1",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        assert_eq!(refusal(own, plain.clone()), None);
        let container = |security: serde_json::Value| serde_json::json!({"containers": [{"name": "w", "image": "w:1", "securityContext": security}]});
        let cases = [
            (serde_json::json!({"hostNetwork": true, "containers": plain["containers"]}), "hostNetwork"),
            (serde_json::json!({"hostPID": true, "containers": plain["containers"]}), "hostPID"),
            (serde_json::json!({"hostIPC": true, "containers": plain["containers"]}), "hostIPC"),
            (
                serde_json::json!({"containers": plain["containers"], "volumes": [{"name": "r", "hostPath": {"path": "/"}}]}),
                "hostPath volume",
            ),
            (container(serde_json::json!({"privileged": true})), "may not be privileged"),
            (container(serde_json::json!({"capabilities": {"add": ["NET_ADMIN"]}})), "may not add capabilities"),
            (container(serde_json::json!({"procMount": "Unmasked"})), "procMount must be Default"),
            (container(serde_json::json!({"seccompProfile": {"type": "Unconfined"}})), "seccomp"),
            (
                serde_json::json!({"initContainers": [{"name": "i", "image": "w:1", "securityContext": {"privileged": true}}],
                    "containers": plain["containers"]}),
                "may not be privileged",
            ),
            (
                serde_json::json!({"containers": [{"name": "w", "image": "w:1", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                "host port",
            ),
            (serde_json::json!({"serviceAccount": "x", "containers": plain["containers"]}), "use serviceAccountName"),
            (
                serde_json::json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "containers": plain["containers"]}),
                "safe sysctls",
            ),
        ];
        for (pod, expected) in cases {
            let message = refusal(own, pod.clone()).unwrap_or_else(|| panic!("accepted: {pod}"));
            assert!(message.contains(expected), "{pod}: {message}");
        }
    }

    #[test]
    fn a_workload_in_another_namespace_is_refused() {
        let plain = serde_json::json!({"containers": [{"name": "w", "image": "w:1"}]});
        let message = refusal("{kind: Deployment, name: dns, namespace: victim}", plain).unwrap();
        assert!(message.contains("workloads[].ref.namespace may not be set"), "{message}");
    }
}
