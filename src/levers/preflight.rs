//! Preflight: risks an SRE wants to know days ahead, reported while the sale is Scheduled.
//! Warnings, not blockers: a workload with no PodDisruptionBudget, or a peak whose resource
//! requests exceed what the cluster's nodes can allocate (a cluster autoscaler may add nodes).

use k8s_openapi::api::{core::v1::Node, policy::v1::PodDisruptionBudget};
use kube::{Api, Client};
use serde_json::Value;
use std::collections::BTreeMap;

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
pub async fn has_pdb(client: &Client, namespace: &str, workload: &Value) -> Result<bool, kube::Error> {
    let labels: BTreeMap<String, String> = workload
        .pointer("/spec/template/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    Ok(pdbs.list(&Default::default()).await?.items.iter().any(|pdb| {
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(|s| serde_json::to_value(s).ok());
        selector.is_some_and(|s| selects(&s, &labels))
    }))
}

/// What the cluster's schedulable nodes can allocate in total.
pub async fn allocatable(client: &Client) -> Result<Resources, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut total = Resources::default();
    for node in nodes.list(&Default::default()).await?.items {
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
}
