//! The `FlashSale` status: what on-call engineers and GitOps tools read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Observed state of a sale, written only by the operator.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlashSaleStatus {
    /// Where the sale is in its timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// When the phase changes next, if it will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_transition_time: Option<Time>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` and one condition per lever.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Per-cluster detail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
    /// The window start in UTC, so `kubectl get` shows every time in one zone whatever offset
    /// the spec was written in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// The window end in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Time>,
    /// Clusters whose levers are all in place for the phase, over clusters, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters_ready: Option<String>,
    /// Workloads with their peak replicas ready, over workloads, counted in every cluster, e.g. `9/10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads_at_peak: Option<String>,
}

/// The phases of a sale's timeline.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Before `start - prepareBefore`: preflight checks only.
    Scheduled,
    /// From `start - prepareBefore` to `start`: everything is put in place.
    Preparing,
    /// The sale window itself.
    Active,
    /// From `end` to `end + cooldownAfter`: peak is still held.
    CoolingDown,
    /// Everything is being put back.
    Restoring,
    /// Everything is back as it was.
    Completed,
    /// `spec.suspend` is set: everything is restored and nothing further is done.
    Suspended,
}

impl Phase {
    /// Every phase, in timeline order.
    pub const ALL: [Phase; 7] = [
        Phase::Scheduled,
        Phase::Preparing,
        Phase::Active,
        Phase::CoolingDown,
        Phase::Restoring,
        Phase::Completed,
        Phase::Suspended,
    ];

    /// The name used in the API and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scheduled => "Scheduled",
            Phase::Preparing => "Preparing",
            Phase::Active => "Active",
            Phase::CoolingDown => "CoolingDown",
            Phase::Restoring => "Restoring",
            Phase::Completed => "Completed",
            Phase::Suspended => "Suspended",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the operator sees of one cluster.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The cluster's name from `spec.clusters`, or `local` for the operator's own cluster.
    pub name: String,
    /// Whether the last attempt to reach the cluster succeeded.
    pub reachable: bool,
    /// What went wrong, or a summary when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator last completed a pass over this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Per-workload scaling and probe state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadStatus>,
    /// Drain agents wanted and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_agents: Option<DrainAgentsStatus>,
    /// Cache warm-up Jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warmups: Vec<WarmupStatus>,
    /// Degradation flag values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<FlagStatus>,
    /// When the flag file was first read back with the sale's flags in place in the last hold;
    /// kept after the restore, with `flags` as they were then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags_read_back_time: Option<Time>,
    /// The second record of every original the sale changed in this cluster (the first is the
    /// annotation on the object): the restore trusts a value only when the two agree, or when
    /// one is missing or unreadable and the other is sound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub originals: Vec<RecordedOriginal>,
}

/// One original value as the sale found it before changing it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordedOriginal {
    /// The workload it belongs to, `Kind namespace/name` as `workloads[].name` shows it.
    pub object: String,
    /// What was recorded: `replicas`, `probes`, or `hpa/<name>` (the bounds of that HPA).
    pub field: String,
    /// The value, exactly as in the object's annotation (a number, or JSON).
    pub value: String,
}

/// Scaling and probe state of one workload in one cluster.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// `Kind/namespace/name`.
    pub name: String,
    /// The mechanism in use (Auto resolved to CronHPA, HPA or Replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Replicas (or HPA minReplicas) recorded before the sale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_replicas: Option<i32>,
    /// Replicas wanted in the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<i32>,
    /// Ready replicas observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// When ready replicas first reached peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_reached_time: Option<Time>,
    /// Seconds from Preparing (the scale-up request) to peak replicas ready in the last hold;
    /// kept after the restore, so a rehearsal and next year's sale compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_peak_seconds: Option<i64>,
    /// Ready replicas at each quarter of `prepareBefore` (25, 50, 75, 100%) in the last hold, as
    /// far as it has come; kept after the restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_by_quarter: Vec<i32>,
    /// Why the last pods short of peak waited (`1 pod Pending: Unschedulable (...)`, `2 pods
    /// Running, not ready`), as last seen before peak was reached; kept after the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_for: Option<String>,
    /// Whether the sale's probe timings are in place (Applied, Pending, Restored, NotApplicable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<String>,
    /// Anything the SRE should know about this workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A change a person made to what the sale holds, which the sale keeps rather than undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

/// Drain agents in one cluster.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainAgentsStatus {
    /// Nodes matching the selector.
    pub desired: i32,
    /// Agents ready.
    pub ready: i32,
    /// When every agent was first ready in the current hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_time: Option<Time>,
    /// Seconds from Preparing to every agent ready in the last hold; kept after the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_seconds: Option<i64>,
}

/// One cache warm-up Job in one cluster.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupStatus {
    /// The `cacheWarm[].name`.
    pub name: String,
    /// The Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Pending, Running, Succeeded or Failed; Skipped when the window ended before it was due.
    pub state: String,
    /// The Job's failure reason, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// One degradation flag's value in one cluster.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlagStatus {
    /// The flag key.
    pub name: String,
    /// Whether the feature is enabled (true) or degraded (false).
    pub enabled: bool,
    /// Why it has this value (phase, breaker open, breaker closed, query failing).
    pub reason: String,
    /// The signal value behind the last flip, for auto-degrade flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Since when the flag has this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}
