//! Preflight: risks an SRE wants to know days ahead, reported while the sale is Scheduled.
//! Warnings, not blockers: a workload with no PodDisruptionBudget, or a peak whose resource
//! requests exceed what the cluster's nodes can allocate (a cluster autoscaler may add nodes).
//! One blocker: a right the sale's levers will need in a cluster that the operator's identity
//! there does not hold, found days ahead instead of as "forbidden" at Preparing.

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Node,
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, api::PostParams};
use serde_json::Value;
use std::{collections::BTreeMap, sync::Arc};

use crate::view::{Scope, View};

/// CPU in millicores and memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
    }
}

impl Resources {
    fn times(self, n: i64) -> Resources {
        Resources { cpu_millis: self.cpu_millis * n, memory_bytes: self.memory_bytes * n }
    }
}

/// Parses a Kubernetes quantity into its value times `scale` (1000 for CPU millicores, 1 for
/// bytes), rounding up. `None` for a malformed quantity.
pub fn quantity(q: &str, scale: i64) -> Option<i64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    Some((value * factor * scale as f64).ceil() as i64)
}

/// The requests of one pod of a workload (sum over its containers).
pub fn pod_requests(workload: &Value) -> Resources {
    let mut total = Resources::default();
    let containers = workload.pointer("/spec/template/spec/containers").and_then(Value::as_array);
    for c in containers.into_iter().flatten() {
        let req = |name: &str, scale| {
            c.pointer(&format!("/resources/requests/{name}")).and_then(Value::as_str).and_then(|q| quantity(q, scale))
        };
        total += Resources { cpu_millis: req("cpu", 1000).unwrap_or(0), memory_bytes: req("memory", 1).unwrap_or(0) };
    }
    total
}

/// Whether a label selector (matchLabels and matchExpressions) selects `labels`. An empty
/// selector selects everything, as it does for a policy/v1 PodDisruptionBudget.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let labels_ok = match_labels.into_iter().flatten().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    let expressions_ok = expressions.into_iter().flatten().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> =
            e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let value = labels.get(key).map(String::as_str);
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether any PodDisruptionBudget in `namespace` covers the workload's pods.
pub async fn has_pdb(view: &Arc<View>, namespace: &str, workload: &Value) -> Result<bool, kube::Error> {
    let labels: BTreeMap<String, String> = workload
        .pointer("/spec/template/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let pdbs = view.list_as::<PodDisruptionBudget>(&Scope::typed::<PodDisruptionBudget>(Some(namespace))).await?;
    Ok(pdbs.iter().any(|pdb| {
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(|s| serde_json::to_value(s).ok());
        selector.is_some_and(|s| selects(&s, &labels))
    }))
}

/// The cluster's nodes, from the view's one watch of them (trimmed to labels, taints,
/// schedulability and capacity).
pub async fn nodes(view: &Arc<View>) -> Result<Vec<Node>, kube::Error> {
    view.list_as::<Node>(&Scope::typed::<Node>(None)).await
}

/// What the cluster's schedulable nodes can allocate in total.
pub async fn allocatable(view: &Arc<View>) -> Result<Resources, kube::Error> {
    let mut total = Resources::default();
    for node in nodes(view).await? {
        if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
            continue;
        }
        let alloc = node.status.and_then(|s| s.allocatable).unwrap_or_default();
        let get = |name: &str, scale| alloc.get(name).and_then(|q| quantity(&q.0, scale)).unwrap_or(0);
        total += Resources { cpu_millis: get("cpu", 1000), memory_bytes: get("memory", 1) };
    }
    Ok(total)
}

/// A warning when `peak` pods of every workload together request more than the nodes can
/// allocate. `per_workload` holds each workload's (pod requests, peak).
pub fn capacity_warning(per_workload: &[(Resources, i32)], allocatable: Resources) -> Option<String> {
    let mut need = Resources::default();
    for (pod, peak) in per_workload {
        need += pod.times(i64::from(*peak));
    }
    let cpu_short = need.cpu_millis > allocatable.cpu_millis;
    let mem_short = need.memory_bytes > allocatable.memory_bytes;
    if !cpu_short && !mem_short {
        return None;
    }
    let mut parts = vec![];
    if cpu_short {
        parts.push(format!(
            "{} CPU requested against {} allocatable",
            need.cpu_millis as f64 / 1000.0,
            allocatable.cpu_millis as f64 / 1000.0
        ));
    }
    if mem_short {
        let gib = |b: i64| b as f64 / 1024f64.powi(3);
        parts.push(format!(
            "{:.1} GiB memory requested against {:.1} GiB allocatable",
            gib(need.memory_bytes),
            gib(allocatable.memory_bytes)
        ));
    }
    Some(format!(
        "at peak the sale's workloads need more than the nodes can allocate ({}); a cluster autoscaler must add nodes in time",
        parts.join(", ")
    ))
}

/// One API right: a verb on a resource (with its group and subresource), in a namespace or
/// cluster-wide, optionally limited to one object name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Right {
    pub verb: &'static str,
    /// The API group ("" for the core group).
    pub group: &'static str,
    pub resource: String,
    pub subresource: Option<&'static str>,
    /// `None` for a cluster-scoped resource.
    pub namespace: Option<String>,
    pub name: Option<&'static str>,
}

impl std::fmt::Display for Right {
    /// `patch apps/deployments/scale in namespace shop`, `list nodes (cluster-wide)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.verb)?;
        if !self.group.is_empty() {
            write!(f, "{}/", self.group)?;
        }
        write!(f, "{}", self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        if let Some(name) = self.name {
            write!(f, " {name}")?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}"),
            None => write!(f, " (cluster-wide)"),
        }
    }
}

/// Facts about a cluster that decide which rights a sale needs there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Alibaba's CronHPA CRD is installed (`Auto` then renders CronHPA objects).
    pub cronhpa_installed: bool,
}

/// The CRDs the levers look up by name (nothing else of `customresourcedefinitions` is read).
const CRONHPA_CRD: &str = super::cronhpa::CRD_NAME;
const FEATURE_FLAG_CRD: &str = super::flags::FEATURE_FLAG_CRD;
/// The drain agents' ServiceAccount the installer pre-installs in the agent namespace.
pub const AGENT_SERVICE_ACCOUNT: &str = "flashsale-drain-agent";

/// Every right the levers of `spec` use in one cluster, for a sale in `namespace` whose drain
/// agents live in `agent_namespace`: what the operator's identity there must hold. Sorted and
/// without duplicates. Pure, so the table of what each lever needs is tested without a cluster.
pub fn needed_rights(
    spec: &crate::api::FlashSaleSpec,
    namespace: &str,
    agent_namespace: &str,
    facts: ClusterFacts,
) -> Vec<Right> {
    use crate::api::{FlagTarget, ScaleMode};
    let mut rights = vec![];
    let mut add = |verbs: &[&'static str],
                   group: &'static str,
                   resource: &str,
                   subresource: Option<&'static str>,
                   ns: Option<&str>,
                   name: Option<&'static str>| {
        for verb in verbs {
            rights.push(Right {
                verb,
                group,
                resource: resource.to_owned(),
                subresource,
                namespace: ns.map(str::to_owned),
                name,
            });
        }
    };
    let ns = Some(namespace);
    if !spec.workloads.is_empty() {
        // Preflight: PodDisruptionBudgets covering the workloads, and the nodes' capacity.
        add(&["list", "watch"], "policy", "poddisruptionbudgets", None, ns, None);
        add(&["list", "watch"], "", "nodes", None, None, None);
        // Every workload pass looks up the HPA governing it and whether CronHPA is installed,
        // in the cluster's watch caches (list and watch; the CRD by name).
        add(&["list", "watch"], "autoscaling", "horizontalpodautoscalers", None, ns, None);
        // A workload short of peak names its pods' reason, read from a watch of its pods.
        add(&["list", "watch"], "", "pods", None, ns, None);
        add(
            &["get", "list", "watch"],
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            None,
            Some(CRONHPA_CRD),
        );
    }
    for workload in &spec.workloads {
        let group = match workload.target.api_version.split_once('/') {
            Some(("apps", _)) => "apps",
            // Admission allows only apps/v1 kinds; anything else needs no right we can name.
            _ => continue,
        };
        let plural = format!("{}s", workload.target.kind.to_ascii_lowercase());
        // Watch the workload; replicas, probe timings and bookkeeping annotations in one apply.
        add(&["get", "list", "watch", "patch"], group, &plural, None, ns, None);
        // CronHPA mode and the HPA restore set replicas through the scale subresource.
        add(&["patch"], group, &plural, Some("scale"), ns, None);
        let mode = workload.scale.mode;
        if matches!(mode, ScaleMode::Auto | ScaleMode::Hpa) {
            add(&["patch"], "autoscaling", "horizontalpodautoscalers", None, ns, None);
        }
        if mode == ScaleMode::CronHpa || (mode == ScaleMode::Auto && facts.cronhpa_installed) {
            add(
                &["get", "list", "watch", "create", "patch", "delete"],
                "autoscaling.alibabacloud.com",
                "cronhorizontalpodautoscalers",
                None,
                ns,
                None,
            );
        }
    }
    if spec.spot_drain.as_ref().is_some_and(|d| d.enabled) {
        // Which nodes match the selector, and the agents' DaemonSet in the agent namespace,
        // run as the ServiceAccount the installer pre-installed there.
        add(&["list", "watch"], "", "nodes", None, None, None);
        add(&["list", "watch", "create", "patch", "delete"], "apps", "daemonsets", None, Some(agent_namespace), None);
        add(&["get", "list", "watch"], "", "serviceaccounts", None, Some(agent_namespace), Some(AGENT_SERVICE_ACCOUNT));
    }
    if !spec.cache_warm.is_empty() {
        add(&["list", "watch", "create", "delete"], "batch", "jobs", None, ns, None);
    }
    if let Some(degradation) = &spec.degradation {
        match degradation.target {
            // The flag object is watched by name (list and watch with a name field selector).
            FlagTarget::ConfigMap => {
                add(&["get", "list", "watch", "create", "patch", "delete"], "", "configmaps", None, ns, None)
            }
            FlagTarget::FeatureFlag => {
                let crd = Some(FEATURE_FLAG_CRD);
                add(&["get", "list", "watch"], "apiextensions.k8s.io", "customresourcedefinitions", None, None, crd);
                let verbs = ["get", "list", "watch", "create", "patch", "delete"];
                add(&verbs, "core.openfeature.dev", "featureflags", None, ns, None);
            }
        }
    }
    rights.sort();
    rights.dedup();
    rights
}

/// The rights of `wanted` that the client's own identity lacks, asked of the cluster's
/// authorizer with one SelfSubjectAccessReview each (the authorizer's own answer, whatever
/// authorizers the cluster runs, rather than RBAC rules re-evaluated here).
///
/// A yes is remembered in the cluster's view for a while ([`View::allowed`]), so the preflight
/// passes of many sales, and of one sale over days, ask once; a no is asked again each pass.
pub async fn missing_rights(view: &View, wanted: &[Right]) -> Result<Vec<Right>, kube::Error> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(view.client().clone());
    let asks = wanted.iter().map(|right| {
        let reviews = reviews.clone();
        async move {
            let key = right.to_string();
            if view.allowed(&key) {
                return Ok((right, true));
            }
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(right.verb.to_owned()),
                        group: Some(right.group.to_owned()),
                        resource: Some(right.resource.clone()),
                        subresource: right.subresource.map(str::to_owned),
                        namespace: right.namespace.clone(),
                        name: right.name.map(str::to_owned),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await?;
            let allowed = answer.status.is_some_and(|s| s.allowed);
            view.answered(&key, allowed);
            Ok::<_, kube::Error>((right, allowed))
        }
    });
    let answers = futures::future::try_join_all(asks).await?;
    Ok(answers.into_iter().filter(|(_, allowed)| !allowed).map(|(right, _)| right.clone()).collect())
}

/// The preflight problem for a missing right, naming the verb and resource.
pub fn missing_right_problem(right: &Right) -> String {
    format!("missing right: {right}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_in_kubernetes_units() {
        assert_eq!(quantity("100m", 1000), Some(100));
        assert_eq!(quantity("2", 1000), Some(2000));
        assert_eq!(quantity("1.5", 1000), Some(1500));
        assert_eq!(quantity("256Mi", 1), Some(256 * 1024 * 1024));
        assert_eq!(quantity("1G", 1), Some(1_000_000_000));
        assert_eq!(quantity("lots", 1), None);
    }

    #[test]
    fn pod_requests_sum_over_containers() {
        let w = json!({"spec": {"template": {"spec": {"containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}},
            {"resources": {"requests": {"cpu": "1"}}},
            {}
        ]}}}});
        assert_eq!(pod_requests(&w), Resources { cpu_millis: 1250, memory_bytes: 128 * 1024 * 1024 });
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned()), ("tier".to_owned(), "front".to_owned())]);
        assert!(selects(&json!({"matchLabels": {"app": "web"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"app": "api"}}), &labels));
        assert!(selects(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}),
            &labels
        ));
        assert!(!selects(&json!({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}), &labels));
        assert!(selects(&json!({}), &labels));
    }

    #[test]
    fn capacity_is_checked_across_workloads() {
        let alloc = Resources { cpu_millis: 64_000, memory_bytes: 512 * 1024i64.pow(3) };
        let small = Resources { cpu_millis: 500, memory_bytes: 1024i64.pow(3) };
        assert_eq!(capacity_warning(&[(small, 100)], alloc), None);
        let warning =
            capacity_warning(&[(small, 100), (Resources { cpu_millis: 1000, memory_bytes: 0 }, 20)], alloc).unwrap();
        assert!(warning.contains("70 CPU requested against 64 allocatable"), "{warning}");
    }

    fn sale(extra: serde_json::Value) -> crate::api::FlashSaleSpec {
        let mut spec = json!({
            "window": {"start": "2026-11-11T00:00:00+08:00", "end": "2026-11-11T02:00:00+08:00"},
            "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 10}}],
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(spec).unwrap()
    }

    fn shown(rights: &[Right]) -> Vec<String> {
        let mut shown: Vec<String> = rights.iter().map(ToString::to_string).collect();
        shown.sort();
        shown
    }

    #[test]
    fn rights_are_named_by_verb_resource_and_namespace() {
        let scale = Right {
            verb: "patch",
            group: "apps",
            resource: "deployments".into(),
            subresource: Some("scale"),
            namespace: Some("shop".into()),
            name: None,
        };
        assert_eq!(missing_right_problem(&scale), "missing right: patch apps/deployments/scale in namespace shop");
        let nodes =
            Right { verb: "list", group: "", resource: "nodes".into(), subresource: None, namespace: None, name: None };
        assert_eq!(nodes.to_string(), "list nodes (cluster-wide)");
    }

    #[test]
    fn needed_rights_follow_the_levers_a_sale_uses() {
        let base = [
            "get apiextensions.k8s.io/customresourcedefinitions cronhorizontalpodautoscalers.autoscaling.alibabacloud.com (cluster-wide)",
            "get apps/deployments in namespace shop",
            "list apiextensions.k8s.io/customresourcedefinitions cronhorizontalpodautoscalers.autoscaling.alibabacloud.com (cluster-wide)",
            "list apps/deployments in namespace shop",
            "list autoscaling/horizontalpodautoscalers in namespace shop",
            "list nodes (cluster-wide)",
            "watch nodes (cluster-wide)",
            "list pods in namespace shop",
            "list policy/poddisruptionbudgets in namespace shop",
            "watch policy/poddisruptionbudgets in namespace shop",
            "patch apps/deployments in namespace shop",
            "patch apps/deployments/scale in namespace shop",
            "watch apiextensions.k8s.io/customresourcedefinitions cronhorizontalpodautoscalers.autoscaling.alibabacloud.com (cluster-wide)",
            "watch apps/deployments in namespace shop",
            "watch autoscaling/horizontalpodautoscalers in namespace shop",
            "watch pods in namespace shop",
        ];
        let no_cron = ClusterFacts { cronhpa_installed: false };
        let cron = ClusterFacts { cronhpa_installed: true };
        let hpa_patch = "patch autoscaling/horizontalpodautoscalers in namespace shop";
        let cron_rights = [
            "create autoscaling.alibabacloud.com/cronhorizontalpodautoscalers in namespace shop",
            "delete autoscaling.alibabacloud.com/cronhorizontalpodautoscalers in namespace shop",
            "get autoscaling.alibabacloud.com/cronhorizontalpodautoscalers in namespace shop",
            "list autoscaling.alibabacloud.com/cronhorizontalpodautoscalers in namespace shop",
            "patch autoscaling.alibabacloud.com/cronhorizontalpodautoscalers in namespace shop",
            "watch autoscaling.alibabacloud.com/cronhorizontalpodautoscalers in namespace shop",
        ];
        let replicas = json!({"workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 10, "mode": "Replicas"}}]});
        let cron_mode = json!({"workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 10, "mode": "CronHPA"}}]});
        let statefulset = json!({"workloads": [{"ref": {"kind": "StatefulSet", "name": "db"}, "scale": {"peak": 3, "mode": "Replicas"}}]});
        // (what the sale uses, cluster facts, rights beyond `base` it needs, rights it must not ask for)
        type Row<'a> = (&'a str, serde_json::Value, ClusterFacts, Vec<&'a str>, Vec<&'a str>);
        let table: Vec<Row> = vec![
            ("Auto without CronHPA: HPA bounds", json!({}), no_cron, vec![hpa_patch], cron_rights.to_vec()),
            ("Auto with CronHPA installed", json!({}), cron, [&[hpa_patch][..], &cron_rights].concat(), vec![]),
            ("Replicas: no HPA writes", replicas.clone(), cron, vec![], [&[hpa_patch][..], &cron_rights].concat()),
            ("CronHPA mode, even before the CRD exists", cron_mode, no_cron, cron_rights.to_vec(), vec![hpa_patch]),
            (
                "spot drain: DaemonSets and the agents' ServiceAccount in the agent namespace only",
                json!({"spotDrain": {"enabled": true}}),
                no_cron,
                vec![
                    hpa_patch,
                    "create apps/daemonsets in namespace flashsale-system",
                    "delete apps/daemonsets in namespace flashsale-system",
                    "get serviceaccounts flashsale-drain-agent in namespace flashsale-system",
                    "list apps/daemonsets in namespace flashsale-system",
                    "list serviceaccounts flashsale-drain-agent in namespace flashsale-system",
                    "patch apps/daemonsets in namespace flashsale-system",
                    "watch apps/daemonsets in namespace flashsale-system",
                    "watch serviceaccounts flashsale-drain-agent in namespace flashsale-system",
                ],
                vec!["create apps/daemonsets in namespace shop", "patch nodes (cluster-wide)"],
            ),
            (
                "spot drain switched off: nothing for agents",
                json!({"spotDrain": {"enabled": false}}),
                no_cron,
                vec![hpa_patch],
                vec!["list apps/daemonsets in namespace flashsale-system"],
            ),
            (
                "warm-up Jobs",
                json!({"cacheWarm": [{"name": "c", "startBefore": "5m", "template": {"spec": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}], "restartPolicy": "Never"}}}}}]}),
                no_cron,
                vec![
                    hpa_patch,
                    "create batch/jobs in namespace shop",
                    "delete batch/jobs in namespace shop",
                    "list batch/jobs in namespace shop",
                    "watch batch/jobs in namespace shop",
                ],
                vec!["create pods in namespace shop"],
            ),
            (
                "flags in a ConfigMap",
                json!({"degradation": {"flags": [{"name": "reviews", "offDuring": ["Active"]}]}}),
                no_cron,
                vec![
                    hpa_patch,
                    "create configmaps in namespace shop",
                    "delete configmaps in namespace shop",
                    "get configmaps in namespace shop",
                    "list configmaps in namespace shop",
                    "patch configmaps in namespace shop",
                    "watch configmaps in namespace shop",
                ],
                vec!["get core.openfeature.dev/featureflags in namespace shop"],
            ),
            (
                "flags as a FeatureFlag",
                json!({"degradation": {"target": "FeatureFlag", "flags": [{"name": "reviews", "offDuring": ["Active"]}]}}),
                no_cron,
                vec![
                    hpa_patch,
                    "create core.openfeature.dev/featureflags in namespace shop",
                    "delete core.openfeature.dev/featureflags in namespace shop",
                    "get apiextensions.k8s.io/customresourcedefinitions featureflags.core.openfeature.dev (cluster-wide)",
                    "get core.openfeature.dev/featureflags in namespace shop",
                    "list apiextensions.k8s.io/customresourcedefinitions featureflags.core.openfeature.dev (cluster-wide)",
                    "list core.openfeature.dev/featureflags in namespace shop",
                    "patch core.openfeature.dev/featureflags in namespace shop",
                    "watch apiextensions.k8s.io/customresourcedefinitions featureflags.core.openfeature.dev (cluster-wide)",
                    "watch core.openfeature.dev/featureflags in namespace shop",
                ],
                vec!["get configmaps in namespace shop"],
            ),
        ];
        for (what, extra, facts, more, never) in table {
            let got = shown(&needed_rights(&sale(extra), "shop", "flashsale-system", facts));
            let mut want: Vec<String> = base.iter().chain(&more).map(|s| (*s).to_owned()).collect();
            want.sort();
            want.dedup();
            assert_eq!(got, want, "{what}");
            for right in never {
                assert!(!got.iter().any(|g| g == right), "{what}: asks for {right}");
            }
        }
        // A StatefulSet's rights name statefulsets, not deployments.
        let got = shown(&needed_rights(&sale(statefulset), "db", "flashsale-system", no_cron));
        assert!(got.contains(&"patch apps/statefulsets/scale in namespace db".to_owned()), "{got:?}");
        assert!(!got.iter().any(|g| g.contains("deployments")), "{got:?}");
    }
}
