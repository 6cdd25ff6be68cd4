//! The spot-drain lever: from Preparing until the restore, a DaemonSet of the operator's own
//! image runs the drain agent (`flashsale-drain-agent`, the agent alone) on every node matching
//! `spotDrain.nodeSelector`, with the least RBAC draining needs.
//!
//! Sharing: the DaemonSet is named after a hash of its configuration (selector, endpoint, poll
//! interval, token mode, tolerations, image), so sales of one namespace that ask for the same
//! agents share one DaemonSet and sales that ask for different ones never rewrite each other's.
//! Each sale holding a DaemonSet has its own annotation on it (`holders.flashsale.dev/<hash>:
//! namespace/name`, added and removed with merge patches that touch nothing else); the last
//! holder to let go deletes it, with a resourceVersion precondition so a sale that joined in
//! the meantime is never left without agents. The ServiceAccount and ClusterRoleBinding of a
//! namespace go with its last agent DaemonSet, the ClusterRole with the cluster's last one.
//!
//! Two namespaces asking for agents on the same nodes get one DaemonSet each; the agent's drain
//! is idempotent per node (the taint records the notice), so two agents on a node do not fight.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, ObjectReference, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::{Action, Intent, LeverCondition, Report, Sale, fnv1a};
use crate::{
    api::{DrainAgentsStatus, FlashSaleSpec, MetadataTokenMode, SpotDrain},
    controller::FIELD_MANAGER,
    status::DRAIN_AGENTS_READY,
};

/// Name of the ServiceAccount and ClusterRole, and prefix of the DaemonSets and bindings.
pub const AGENT: &str = "flashsale-drain-agent";
/// Prefix of the per-sale holder annotations on an agent DaemonSet.
pub const HOLDER_PREFIX: &str = "holders.flashsale.dev/";
/// Label selecting every agent DaemonSet the operator manages.
pub const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=flashsale-drain-agent,app.kubernetes.io/managed-by=flashsale-operator";
/// The agent binary in the operator's image (`flashsale-operator drain-agent` without the
/// controller linked in).
pub const AGENT_BINARY: &str = "flashsale-drain-agent";
/// Port of the agent's `/healthz` and `/metrics`.
pub const AGENT_METRICS_PORT: i32 = 9102;

/// Runs the spot-drain lever for one sale in one cluster.
pub async fn run(
    client: &Client,
    sale: &Sale<'_>,
    spec: &FlashSaleSpec,
    intent: Intent,
    report: &mut Report,
) -> Result<(), kube::Error> {
    let agent_image = sale.installer.agent_image.as_str();
    let wanted = spec.spot_drain.as_ref().filter(|d| d.enabled);
    // A sale that never asked for agents has nothing to hold or release, except after its
    // spec dropped them: the restore looks anyway.
    if wanted.is_none() && intent != Intent::Restore {
        return Ok(());
    }
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), sale.namespace);
    let ours = daemonsets.list(&ListParams::default().labels(AGENT_SELECTOR)).await?.items;
    let key = holder_key(sale.holder);
    match (intent, wanted) {
        (Intent::Hold, Some(drain)) => {
            let name = daemonset_name(drain, agent_image);
            let live = ours.iter().find(|d| d.name_any() == name);
            let live = hold(client, sale, drain, agent_image, &name, &key, live, report).await?;
            // Only DaemonSets this sale holds: the others belong to other sales' settings.
            for other in ours.iter().filter(|d| d.name_any() != name && d.annotations().contains_key(&key)) {
                release(client, sale, other, &key, report).await?;
            }
            observe(live.as_ref(), drain, report);
        }
        (Intent::Preflight, Some(drain)) => {
            for held in ours.iter().filter(|d| d.annotations().contains_key(&key)) {
                // Moved back before Preparing: agents go until the sale prepares again.
                release(client, sale, held, &key, report).await?;
            }
            let selector = labels_selector(&drain.node_selector);
            let nodes =
                Api::<Node>::all(client.clone()).list_metadata(&ListParams::default().labels(&selector)).await?;
            if nodes.items.is_empty() {
                report.warnings.push(format!(
                    "no node matches spotDrain.nodeSelector {selector}: no drain agent will run (check the spot node labels)"
                ));
            }
            report.conditions.push(LeverCondition {
                type_: DRAIN_AGENTS_READY,
                ready: false,
                reason: "NotYet".into(),
                message: format!(
                    "Drain agents start when the sale prepares, on {} node(s) matching {selector}",
                    nodes.items.len()
                ),
                blocking: false,
            });
        }
        _ => {
            let mut released = true;
            for held in ours.iter().filter(|d| d.annotations().contains_key(&key)) {
                released &= release(client, sale, held, &key, report).await?;
            }
            if wanted.is_some() || !released {
                report.restored &= released;
                report.conditions.push(LeverCondition {
                    type_: DRAIN_AGENTS_READY,
                    ready: false,
                    reason: if released { "Removed" } else { "Removing" }.into(),
                    message: if released {
                        "The sale holds no drain agents".into()
                    } else {
                        "Releasing the drain agents".into()
                    },
                    blocking: false,
                });
            }
        }
    }
    Ok(())
}

/// Puts the agents' RBAC and DaemonSet in place and marks this sale as a holder. Returns the
/// DaemonSet as last seen.
#[allow(clippy::too_many_arguments)]
async fn hold(
    client: &Client,
    sale: &Sale<'_>,
    drain: &SpotDrain,
    image: &str,
    name: &str,
    key: &str,
    live: Option<&DaemonSet>,
    report: &mut Report,
) -> Result<Option<DaemonSet>, kube::Error> {
    let ns = sale.namespace;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    // The RBAC is shared (the ClusterRole by every namespace's agents, the ServiceAccount and
    // binding by this namespace's): a sale letting go of the last agents at the same moment may
    // have just deleted some of it. Re-applying it never touches the DaemonSet.
    if live.is_none() || !rbac_in_place(client, ns).await? {
        // RBAC first: agents that start before their binding exists fail their first drain.
        Api::<ClusterRole>::all(client.clone()).patch(AGENT, &apply, &Patch::Apply(cluster_role())).await?;
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .patch(AGENT, &apply, &Patch::Apply(service_account(ns)))
            .await?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .patch(&binding_name(ns), &apply, &Patch::Apply(cluster_role_binding(ns)))
            .await?;
    }
    let live = match live {
        Some(ds) => ds.clone(),
        None => {
            // Created with this sale as its holder, so no other sale's release can see it unheld.
            let ds =
                daemonsets.patch(name, &apply, &Patch::Apply(daemonset(name, ns, drain, image, sale.holder))).await?;
            report.actions.push(action(&ds, "Deploy", format!("drain agents deployed as DaemonSet {ns}/{name}")));
            ds
        }
    };
    if live.annotations().contains_key(key) {
        return Ok(Some(live));
    }
    let patch = json!({"metadata": {"annotations": {key: sale.holder}}});
    let ds = daemonsets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(Some(ds))
}

/// Removes this sale's hold on an agent DaemonSet, deleting it (and, with the last one, the
/// RBAC) when no sale holds it any more. Returns whether the sale's hold is gone.
async fn release(
    client: &Client,
    sale: &Sale<'_>,
    ds: &DaemonSet,
    key: &str,
    report: &mut Report,
) -> Result<bool, kube::Error> {
    let ns = sale.namespace;
    let name = ds.name_any();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let others = ds.annotations().keys().filter(|k| k.starts_with(HOLDER_PREFIX) && *k != key).count();
    if others > 0 {
        let patch = json!({"metadata": {"annotations": {key: Value::Null}}});
        daemonsets.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(true);
    }
    // The last holder: delete, unless another sale joined since this DaemonSet was read.
    let params = DeleteParams {
        preconditions: Some(Preconditions { resource_version: ds.resource_version(), uid: ds.uid() }),
        ..DeleteParams::background()
    };
    match daemonsets.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        // Changed since read (a sale joined): the next pass looks again.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
        Err(e) => return Err(e),
    }
    report.actions.push(action(ds, "Remove", format!("drain agents removed (DaemonSet {ns}/{name})")));
    let left_here = daemonsets.list_metadata(&ListParams::default().labels(AGENT_SELECTOR)).await?;
    if left_here.items.iter().all(|d| d.name_any() == name) {
        ignore_missing(
            Api::<ClusterRoleBinding>::all(client.clone()).delete(&binding_name(ns), &DeleteParams::default()).await,
        )?;
        ignore_missing(
            Api::<ServiceAccount>::namespaced(client.clone(), ns).delete(AGENT, &DeleteParams::default()).await,
        )?;
        let left_anywhere =
            Api::<DaemonSet>::all(client.clone()).list_metadata(&ListParams::default().labels(AGENT_SELECTOR)).await?;
        if left_anywhere.items.iter().all(|d| d.name_any() == name && d.namespace().as_deref() == Some(ns)) {
            ignore_missing(Api::<ClusterRole>::all(client.clone()).delete(AGENT, &DeleteParams::default()).await)?;
        }
    }
    Ok(true)
}

/// Whether the agents' ClusterRole, and this namespace's ServiceAccount and binding, exist.
async fn rbac_in_place(client: &Client, ns: &str) -> Result<bool, kube::Error> {
    Ok(Api::<ClusterRole>::all(client.clone()).get_opt(AGENT).await?.is_some()
        && Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(AGENT).await?.is_some()
        && Api::<ClusterRoleBinding>::all(client.clone()).get_opt(&binding_name(ns)).await?.is_some())
}

fn ignore_missing<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reports the DaemonSet's agents: ready when every node the DaemonSet controller schedules an
/// agent on has a ready, up-to-date one.
fn observe(ds: Option<&DaemonSet>, drain: &SpotDrain, report: &mut Report) {
    let counts = ds.and_then(|ds| {
        let status = ds.status.as_ref()?;
        let observed = status.observed_generation.unwrap_or(0) >= ds.metadata.generation.unwrap_or(0);
        observed.then_some((
            status.desired_number_scheduled,
            status.number_ready,
            status.updated_number_scheduled.unwrap_or(0),
        ))
    });
    let selector = labels_selector(&drain.node_selector);
    let (ready, reason, message) = match counts {
        None => (false, "Starting", "Waiting for the DaemonSet controller to schedule the drain agents".to_owned()),
        Some((0, _, _)) => {
            (true, "NoMatchingNodes", format!("No node matches {selector}; there is nothing for drain agents to watch"))
        }
        Some((desired, ready, updated)) if ready >= desired && updated >= desired => {
            (true, "AgentsReady", format!("{ready}/{desired} drain agents ready"))
        }
        Some((desired, ready, _)) => (false, "AgentsStarting", format!("{ready}/{desired} drain agents ready")),
    };
    if let Some((desired, ready_count, _)) = counts {
        report.drain_agents = Some(DrainAgentsStatus { desired, ready: ready_count });
    }
    // Agents starting is progress, not a problem: the condition (and Ready's message) says it.
    report.ready &= ready;
    report.conditions.push(LeverCondition {
        type_: DRAIN_AGENTS_READY,
        ready,
        reason: reason.into(),
        message,
        blocking: false,
    });
}

fn action(ds: &DaemonSet, verb: &'static str, note: String) -> Action {
    let object = ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("DaemonSet".into()),
        name: ds.meta().name.clone(),
        namespace: ds.meta().namespace.clone(),
        uid: ds.meta().uid.clone(),
        ..ObjectReference::default()
    };
    Action { reason: "DrainAgents", warning: false, verb, object, note }
}

/// The annotation key marking `holder` (`namespace/name`) as a holder of a DaemonSet.
pub fn holder_key(holder: &str) -> String {
    format!("{HOLDER_PREFIX}{:016x}", fnv1a(holder))
}

/// The sales holding an agent DaemonSet, from its annotations.
pub fn holders(annotations: &BTreeMap<String, String>) -> impl Iterator<Item = &str> {
    annotations.iter().filter(|(k, _)| k.starts_with(HOLDER_PREFIX)).map(|(_, v)| v.as_str())
}

/// The DaemonSet for a configuration: the same settings give the same name.
pub fn daemonset_name(drain: &SpotDrain, image: &str) -> String {
    let config = json!({
        "nodeSelector": drain.node_selector,
        "pollInterval": drain.poll_interval,
        "metadataEndpoint": drain.metadata_endpoint,
        "metadataToken": drain.metadata_token,
        "tolerations": drain.tolerations,
        "image": image,
    });
    format!("{AGENT}-{:010x}", fnv1a(&config.to_string()) & 0xff_ffff_ffff)
}

fn binding_name(namespace: &str) -> String {
    format!("{AGENT}-{namespace}")
}

fn labels_selector(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn common_labels() -> Value {
    json!({
        "app.kubernetes.io/name": AGENT,
        "app.kubernetes.io/managed-by": "flashsale-operator",
        "app.kubernetes.io/component": "drain-agent",
    })
}

/// Exactly what draining needs, each rule with its reason.
pub fn cluster_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": AGENT,
            "labels": common_labels(),
            "annotations": {
                "flashsale.dev/rules": "nodes get/patch: taint and cordon the agent's own node; pods list: find what runs on it; pods/eviction create: evict through the Eviction API so PodDisruptionBudgets hold; poddisruptionbudgets get/list: explain a blocked eviction; events create/patch: report each step; flashsales get: relate events to the sale"
            }
        },
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
            {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "list"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["flashsale.dev"], "resources": ["flashsales"], "verbs": ["get"]},
        ],
    })
}

fn service_account(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": AGENT, "namespace": namespace, "labels": common_labels()},
    })
}

fn cluster_role_binding(namespace: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name(namespace), "labels": common_labels()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT},
        "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": namespace}],
    })
}

/// The agent DaemonSet, held by `sale` from its creation; `sale` is also where the agents post
/// their events (the first holder: the pod template is not rewritten when others join).
pub fn daemonset(name: &str, namespace: &str, drain: &SpotDrain, image: &str, sale: &str) -> Value {
    let token = match drain.metadata_token {
        MetadataTokenMode::Optional => "Optional",
        MetadataTokenMode::Required => "Required",
        MetadataTokenMode::Disabled => "Disabled",
    };
    let tolerations = if drain.tolerations.is_empty() {
        json!([{"operator": "Exists"}])
    } else {
        serde_json::to_value(&drain.tolerations).unwrap_or_else(|_| json!([]))
    };
    let mut labels = common_labels();
    labels["flashsale.dev/agent"] = json!(name);
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {holder_key(sale): sale},
        },
        "spec": {
            "selector": {"matchLabels": {"flashsale.dev/agent": name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": AGENT,
                    "nodeSelector": drain.node_selector,
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "drain-agent",
                        "image": image,
                        // The image carries both binaries; this one is the agent alone.
                        "command": [AGENT_BINARY],
                        "args": [
                            format!("--metadata-endpoint={}", drain.metadata_endpoint),
                            format!("--poll-interval={}", drain.poll_interval),
                            format!("--metadata-token={token}"),
                            format!("--metrics-addr=0.0.0.0:{AGENT_METRICS_PORT}"),
                        ],
                        "env": [
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "FLASHSALE_SALE", "value": sale},
                        ],
                        "ports": [{"name": "metrics", "containerPort": AGENT_METRICS_PORT}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 10},
                        "livenessProbe": {
                            "httpGet": {"path": "/healthz", "port": "metrics"},
                            "periodSeconds": 20,
                            "failureThreshold": 3,
                        },
                        "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() -> SpotDrain {
        serde_json::from_value(json!({})).unwrap()
    }

    #[test]
    fn the_same_settings_share_a_daemonset_and_different_ones_do_not() {
        let a = daemonset_name(&drain(), "img:1");
        assert_eq!(a, daemonset_name(&drain(), "img:1"));
        assert!(a.starts_with("flashsale-drain-agent-") && a.len() == AGENT.len() + 11, "{a}");
        let mut slower = drain();
        slower.poll_interval = "5s".parse().unwrap();
        assert_ne!(a, daemonset_name(&slower, "img:1"));
        assert_ne!(a, daemonset_name(&drain(), "img:2"));
    }

    #[test]
    fn holder_keys_are_valid_annotation_keys_and_distinct() {
        let a = holder_key("shop/double-11");
        let b = holder_key("shop/black-friday");
        assert_ne!(a, b);
        let (prefix, name) = a.split_once('/').unwrap();
        assert_eq!(prefix, "holders.flashsale.dev");
        assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_hexdigit()));
        let annotations = BTreeMap::from([(a, "shop/double-11".to_owned()), ("other".into(), "x".into())]);
        assert_eq!(holders(&annotations).collect::<Vec<_>>(), ["shop/double-11"]);
    }

    #[test]
    fn the_daemonset_passes_the_settings_to_the_agent() {
        let mut d = drain();
        d.metadata_token = MetadataTokenMode::Required;
        let ds = daemonset("flashsale-drain-agent-x", "shop", &d, "img:1", "shop/sale");
        assert_eq!(ds["metadata"]["annotations"][holder_key("shop/sale")], "shop/sale", "held from its creation");
        let container = &ds["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(container["command"], json!(["flashsale-drain-agent"]));
        assert!(args.contains(&"--metadata-token=Required"), "{args:?}");
        assert!(args.contains(&"--poll-interval=2s"), "{args:?}");
        assert!(args.contains(&"--metadata-endpoint=http://100.100.100.200"), "{args:?}");
        assert_eq!(ds["spec"]["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-lifecycle"], "spot");
        assert_eq!(ds["spec"]["template"]["spec"]["tolerations"], json!([{"operator": "Exists"}]));
        assert_eq!(container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    }
}
