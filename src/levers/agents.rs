//! The spot-drain lever: from Preparing until the restore, a DaemonSet of the operator's own
//! image runs the drain agent (`flashsale-drain-agent`, the agent alone) on every node matching
//! `spotDrain.nodeSelector`.
//!
//! The agents are the operator's, not the sale author's: they run in the installer's agent
//! namespace (`--agent-namespace`, the same in every cluster) under the ServiceAccount the
//! installer pre-installed there with the chart (`templates/agent-rbac.yaml`: the ClusterRole,
//! its binding, and a ValidatingAdmissionPolicy that lets an agent change only the node its
//! token is bound to). The operator creates only the DaemonSet. What a sale may ask for (node
//! selector, metadata endpoint, tolerations) is checked against the installer's lists before
//! anything is deployed; a sale asking for more is refused in status, naming the field and
//! the flag that would allow it.
//!
//! Sharing: the DaemonSet is named after a hash of its configuration (selector, endpoint, poll
//! interval, token mode, tolerations, image, priority class, pull secrets), so sales of any
//! namespace that ask for the same agents share one DaemonSet and sales that ask for different
//! ones never rewrite each other's. Each sale holding a DaemonSet has its own annotation on it
//! (`holders.flashsale.dev/<hash>: namespace/name`, added and removed with merge patches that
//! touch nothing else); the last holder to let go deletes it, with a resourceVersion
//! precondition so a sale that joined in the meantime is never left without agents.
//!
//! Two DaemonSets asking for agents on the same nodes put two agents there; the agent's drain
//! is idempotent per node (the taint records the notice), so they do not fight.

use crate::api::names::{self, HOLDER_PREFIX};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ObjectReference, ServiceAccount, Toleration},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::{Value, json};
use std::{collections::BTreeMap, sync::Arc};

use super::{Action, Intent, LeverCondition, Report, Sale, fnv1a, preflight};
use crate::{
    api::{DrainAgentsStatus, FlashSaleSpec, MetadataTokenMode, SpotDrain},
    installer::Installer,
    status::DRAIN_AGENTS_READY,
    view::{Scope, View},
};

/// Name of the agents' ServiceAccount, ClusterRole and binding (pre-installed by the chart),
/// and prefix of the DaemonSets.
pub const AGENT: &str = "flashsale-drain-agent";
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
    let installer = sale.installer;
    let wanted = spec.spot_drain.as_ref().filter(|d| d.enabled);
    // A sale that never asked for agents has nothing to hold or release, except after its
    // spec dropped them: the restore looks anyway.
    if wanted.is_none() && intent != Intent::Restore {
        return Ok(());
    }
    let agent_ns = installer.agent_namespace.as_str();
    let ours: Vec<DaemonSet> = sale.view.list_as(&agents_scope(agent_ns)).await?;
    let key = holder_key(sale.holder);
    let held = || ours.iter().filter(|d| d.annotations().contains_key(&key));
    if let (Intent::Hold | Intent::Preflight, Some(drain)) = (intent, wanted) {
        // Checked before anything is deployed, in every phase: the installer may have narrowed
        // its lists since the sale started, and agents it no longer allows must go.
        let refused = match refusal(drain, installer) {
            Some(why) => Some(("NotAllowed", why)),
            None if !agent_rbac_installed(sale.view, agent_ns).await? => Some((
                "AgentRbacMissing",
                format!(
                    "drain-agent RBAC is not installed in cluster {} (namespace {agent_ns}): install the chart there (mode: remote)",
                    sale.cluster
                ),
            )),
            None => None,
        };
        if let Some((reason, message)) = refused {
            for ds in held() {
                release(client, sale, ds, &key, report).await?;
            }
            report.ready = false;
            report.problems.push(message.clone());
            report.conditions.push(LeverCondition {
                type_: DRAIN_AGENTS_READY,
                ready: false,
                reason: reason.into(),
                message,
                blocking: true,
            });
            return Ok(());
        }
    }
    match (intent, wanted) {
        (Intent::Hold, Some(drain)) => {
            let name = daemonset_name(drain, installer);
            let live = ours.iter().find(|d| d.name_any() == name);
            let live = hold(client, sale, drain, &name, &key, live, report).await?;
            // Only DaemonSets this sale holds: the others belong to other sales' settings.
            for other in held().filter(|d| d.name_any() != name) {
                release(client, sale, other, &key, report).await?;
            }
            observe(live.as_ref(), drain, report);
        }
        (Intent::Preflight, Some(drain)) => {
            for ds in held() {
                // Moved back before Preparing: agents go until the sale prepares again.
                release(client, sale, ds, &key, report).await?;
            }
            let selector = labels_selector(&drain.node_selector);
            let matching = preflight::nodes(sale.view)
                .await?
                .into_iter()
                .filter(|n| {
                    let labels = n.metadata.labels.as_ref();
                    drain.node_selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                })
                .count();
            if matching == 0 {
                report.warnings.push(format!(
                    "no node matches spotDrain.nodeSelector {selector}: no drain agent will run (check the spot node labels)"
                ));
            }
            report.conditions.push(LeverCondition {
                type_: DRAIN_AGENTS_READY,
                ready: false,
                reason: "NotYet".into(),
                message: format!(
                    "Drain agents start when the sale prepares, on {matching} node(s) matching {selector}"
                ),
                blocking: false,
            });
        }
        _ => {
            let mut released = true;
            for ds in held() {
                released &= release(client, sale, ds, &key, report).await?;
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

/// Why the installer does not allow a sale's spot-drain settings, naming the field, what is
/// allowed and the flag that would allow more; `None` when it does.
pub fn refusal(drain: &SpotDrain, installer: &Installer) -> Option<String> {
    let selectors: Vec<BTreeMap<String, String>> =
        installer.agent_node_selectors.iter().filter_map(|s| parse_selector(s).ok()).collect();
    // Containing an allowed selector only narrows it: the agents run on fewer of those nodes.
    let contained =
        |allowed: &BTreeMap<String, String>| allowed.iter().all(|(k, v)| drain.node_selector.get(k) == Some(v));
    if !selectors.iter().any(contained) {
        return Some(format!(
            "spotDrain.nodeSelector {} is not allowed: it must contain one of the selectors the installer allows ({}); the operator flag --agent-node-selector allows more",
            show_selector(&drain.node_selector),
            list(selectors.iter().map(show_selector)),
        ));
    }
    let endpoint = drain.metadata_endpoint.trim_end_matches('/');
    if !installer.agent_metadata_endpoints.iter().any(|e| e.trim_end_matches('/') == endpoint) {
        return Some(format!(
            "spotDrain.metadataEndpoint {:?} is not allowed: the installer allows {}; the operator flag --agent-metadata-endpoint allows more",
            drain.metadata_endpoint,
            list(installer.agent_metadata_endpoints.iter().map(|e| format!("{e:?}"))),
        ));
    }
    let allowed = installer_tolerations(installer);
    if let Some((i, _)) =
        drain.tolerations.iter().enumerate().find(|(_, t)| !allowed.iter().any(|a| same_toleration(a, t)))
    {
        return Some(format!(
            "spotDrain.tolerations[{i}] is not allowed: agents may tolerate only the taints the installer lists ({}); the operator flag --agent-toleration allows more",
            list(installer.agent_tolerations.iter().cloned()),
        ));
    }
    None
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

fn show_selector(selector: &BTreeMap<String, String>) -> String {
    if selector.is_empty() { "{} (every node)".to_owned() } else { labels_selector(selector) }
}

/// Parses a `--agent-node-selector` value, `k=v,k2=v2` (empty: the empty selector).
pub fn parse_selector(value: &str) -> Result<BTreeMap<String, String>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("{pair:?} is not key=value (a node selector is k=v,k2=v2)")),
        })
        .collect()
}

/// Parses a `--agent-toleration` value: `*` (every taint), or `key[=value][:Effect]`.
pub fn parse_toleration(value: &str) -> Result<Toleration, String> {
    let value = value.trim();
    if value == "*" {
        return Ok(Toleration { operator: Some("Exists".into()), ..Toleration::default() });
    }
    let (rest, effect) = match value.rsplit_once(':') {
        Some((rest, effect)) => (rest, Some(effect)),
        None => (value, None),
    };
    if let Some(effect) = effect.filter(|e| !matches!(*e, "NoSchedule" | "PreferNoSchedule" | "NoExecute")) {
        return Err(format!("{value:?}: the effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, val) = match rest.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (rest, None),
    };
    if key.is_empty() {
        return Err(format!("{value:?} has no taint key (key[=value][:Effect], or * for every taint)"));
    }
    Ok(Toleration {
        key: Some(key.to_owned()),
        operator: Some(if val.is_some() { "Equal" } else { "Exists" }.into()),
        value: val.map(str::to_owned),
        effect: effect.map(str::to_owned),
        toleration_seconds: None,
    })
}

/// The tolerations the installer lists (flags are checked when the operator starts).
pub fn installer_tolerations(installer: &Installer) -> Vec<Toleration> {
    installer.agent_tolerations.iter().filter_map(|t| parse_toleration(t).ok()).collect()
}

/// Whether `asked` tolerates no more than `allowed` (a missing operator is `Equal`; the
/// seconds only shorten a NoExecute toleration).
fn same_toleration(allowed: &Toleration, asked: &Toleration) -> bool {
    let operator = |t: &Toleration| t.operator.clone().unwrap_or_else(|| "Equal".into());
    let blank = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    blank(&allowed.key) == blank(&asked.key)
        && operator(allowed) == operator(asked)
        && blank(&allowed.value) == blank(&asked.value)
        && blank(&allowed.effect) == blank(&asked.effect)
}

/// The tolerations the agents get: the sale's when it lists some (each one the installer
/// allows), else every one the installer lists.
fn tolerations(drain: &SpotDrain, installer: &Installer) -> Vec<Toleration> {
    if drain.tolerations.is_empty() { installer_tolerations(installer) } else { drain.tolerations.clone() }
}

/// Whether the installer pre-installed the agents' ServiceAccount in the agent namespace (its
/// ClusterRole and binding come with it from the same chart template).
async fn agent_rbac_installed(view: &Arc<View>, namespace: &str) -> Result<bool, kube::Error> {
    let scope = Scope::typed::<ServiceAccount>(Some(namespace)).named(AGENT);
    Ok(view.get(&scope, AGENT).await?.is_some())
}

/// The agent DaemonSets of the agent namespace, as the view watches them.
fn agents_scope(namespace: &str) -> Scope {
    Scope::typed::<DaemonSet>(Some(namespace)).labelled(AGENT_SELECTOR)
}

/// Puts the DaemonSet in place and marks this sale as a holder. Returns the DaemonSet as last
/// seen.
async fn hold(
    client: &Client,
    sale: &Sale<'_>,
    drain: &SpotDrain,
    name: &str,
    key: &str,
    live: Option<&DaemonSet>,
    report: &mut Report,
) -> Result<Option<DaemonSet>, kube::Error> {
    let ns = sale.installer.agent_namespace.as_str();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let apply = PatchParams::apply(names::FIELD_MANAGER).force();
    let live = match live {
        Some(ds) => ds.clone(),
        None => {
            // Created with this sale as its holder, so no other sale's release can see it unheld.
            let ds = daemonsets
                .patch(name, &apply, &Patch::Apply(daemonset(name, drain, sale.installer, sale.holder)))
                .await?;
            report.actions.push(action(&ds, "Deploy", format!("drain agents deployed as DaemonSet {ns}/{name}")));
            sale.view.wrote(&agents_scope(ns), name, ds.metadata.resource_version.as_deref());
            ds
        }
    };
    if live.annotations().contains_key(key) {
        return Ok(Some(live));
    }
    let patch = json!({"metadata": {"annotations": {key: sale.holder}}});
    let ds = daemonsets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    sale.view.wrote(&agents_scope(ns), name, ds.metadata.resource_version.as_deref());
    Ok(Some(ds))
}

/// Removes this sale's hold on an agent DaemonSet, deleting it when no sale holds it any more.
/// Returns whether the sale's hold is gone.
async fn release(
    client: &Client,
    sale: &Sale<'_>,
    ds: &DaemonSet,
    key: &str,
    report: &mut Report,
) -> Result<bool, kube::Error> {
    let ns = sale.installer.agent_namespace.as_str();
    let name = ds.name_any();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let others = ds.annotations().keys().filter(|k| k.starts_with(names::HOLDER_PREFIX) && *k != key).count();
    if others > 0 {
        let patch = json!({"metadata": {"annotations": {key: Value::Null}}});
        let released = daemonsets.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        sale.view.wrote(&agents_scope(ns), &name, released.metadata.resource_version.as_deref());
        return Ok(true);
    }
    // The last holder: delete, unless another sale joined since this DaemonSet was read.
    let params = DeleteParams {
        preconditions: Some(Preconditions { resource_version: ds.resource_version(), uid: ds.uid() }),
        ..DeleteParams::background()
    };
    match daemonsets.delete(&name, &params).await {
        Ok(_) => sale.view.deleted(&agents_scope(ns), &name),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        // Changed since read (a sale joined): the next pass looks again.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
        Err(e) => return Err(e),
    }
    report.actions.push(action(ds, "Remove", format!("drain agents removed (DaemonSet {ns}/{name})")));
    Ok(true)
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
        report.drain_agents = Some(DrainAgentsStatus { desired, ready: ready_count, ..DrainAgentsStatus::default() });
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
    annotations.iter().filter(|(k, _)| k.starts_with(names::HOLDER_PREFIX)).map(|(_, v)| v.as_str())
}

/// The DaemonSet for a configuration: the same settings give the same name.
pub fn daemonset_name(drain: &SpotDrain, installer: &Installer) -> String {
    let config = json!({
        "nodeSelector": drain.node_selector,
        "pollInterval": drain.poll_interval,
        "metadataEndpoint": drain.metadata_endpoint,
        "metadataToken": drain.metadata_token,
        "tolerations": tolerations(drain, installer),
        "image": installer.agent_image,
        "priorityClass": installer.agent_priority_class,
        "imagePullSecrets": installer.agent_image_pull_secrets,
    });
    format!("{AGENT}-{:010x}", fnv1a(&config.to_string()) & 0xff_ffff_ffff)
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

/// The agent DaemonSet in the installer's agent namespace, held by `sale` from its creation;
/// `sale` is also where the agents post their events (the first holder: the pod template is not
/// rewritten when others join).
pub fn daemonset(name: &str, drain: &SpotDrain, installer: &Installer, sale: &str) -> Value {
    let token = match drain.metadata_token {
        MetadataTokenMode::Optional => "Optional",
        MetadataTokenMode::Required => "Required",
        MetadataTokenMode::Disabled => "Disabled",
    };
    let mut labels = common_labels();
    labels["flashsale.dev/agent"] = json!(name);
    let mut pod = json!({
        "serviceAccountName": AGENT,
        "nodeSelector": drain.node_selector,
        "tolerations": tolerations(drain, installer),
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "drain-agent",
            "image": installer.agent_image,
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
    });
    // A spot node full of sale pods still runs its agent: it preempts them if it must.
    if !installer.agent_priority_class.is_empty() {
        pod["priorityClassName"] = json!(installer.agent_priority_class);
    }
    // The chart's empty list arrives as one empty value.
    let pull: Vec<Value> =
        installer.agent_image_pull_secrets.iter().filter(|n| !n.is_empty()).map(|name| json!({"name": name})).collect();
    if !pull.is_empty() {
        pod["imagePullSecrets"] = json!(pull);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": name,
            "namespace": installer.agent_namespace,
            "labels": labels,
            "annotations": {holder_key(sale): sale},
        },
        "spec": {
            "selector": {"matchLabels": {"flashsale.dev/agent": name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() -> SpotDrain {
        serde_json::from_value(json!({})).unwrap()
    }

    fn installer() -> Installer {
        Installer { agent_image: "img:1".into(), agent_namespace: "flashsale-system".into(), ..Installer::defaults() }
    }

    #[test]
    fn the_same_settings_share_a_daemonset_and_different_ones_do_not() {
        let a = daemonset_name(&drain(), &installer());
        assert_eq!(a, daemonset_name(&drain(), &installer()));
        assert!(a.starts_with("flashsale-drain-agent-") && a.len() == AGENT.len() + 11, "{a}");
        let mut slower = drain();
        slower.poll_interval = "5s".parse().unwrap();
        assert_ne!(a, daemonset_name(&slower, &installer()));
        let other_image = Installer { agent_image: "img:2".into(), ..installer() };
        assert_ne!(a, daemonset_name(&drain(), &other_image));
        let other_class = Installer { agent_priority_class: String::new(), ..installer() };
        assert_ne!(a, daemonset_name(&drain(), &other_class));
        let pull = Installer { agent_image_pull_secrets: vec!["regcred".into()], ..installer() };
        assert_ne!(a, daemonset_name(&drain(), &pull));
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

    /// Which spot-drain settings the installer's lists allow, and what a refused sale is told.
    #[test]
    fn the_installer_decides_selectors_endpoints_and_tolerations() {
        let spot = "node.kubernetes.io/instance-lifecycle=spot";
        let with = |patch: Value| -> SpotDrain {
            let mut d = serde_json::to_value(drain()).unwrap();
            for (k, v) in patch.as_object().unwrap() {
                d[k] = v.clone();
            }
            serde_json::from_value(d).unwrap()
        };
        let lists = |selectors: &[&str], endpoints: &[&str], tolerations: &[&str]| Installer {
            agent_node_selectors: selectors.iter().map(|s| s.to_string()).collect(),
            agent_metadata_endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            agent_tolerations: tolerations.iter().map(|s| s.to_string()).collect(),
            ..installer()
        };
        let defaults = installer();
        let ecs = "http://100.100.100.200";
        // (installer, sale's settings, refused naming this field and flag)
        type Row = (Installer, SpotDrain, Option<(&'static str, &'static str)>);
        let table: Vec<Row> = vec![
            (defaults.clone(), drain(), None),
            (defaults.clone(), with(json!({"metadataEndpoint": "http://100.100.100.200/"})), None),
            // A superset of an allowed selector only narrows it.
            (
                defaults.clone(),
                with(json!({"nodeSelector": {"node.kubernetes.io/instance-lifecycle": "spot", "pool": "a"}})),
                None,
            ),
            (
                defaults.clone(),
                with(json!({"nodeSelector": {}})),
                Some(("spotDrain.nodeSelector {} (every node)", "--agent-node-selector")),
            ),
            (
                defaults.clone(),
                with(json!({"nodeSelector": {"pool": "a"}})),
                Some(("spotDrain.nodeSelector pool=a", "--agent-node-selector")),
            ),
            (
                defaults.clone(),
                with(json!({"nodeSelector": {"node.kubernetes.io/instance-lifecycle": "on-demand"}})),
                Some(("spotDrain.nodeSelector", "--agent-node-selector")),
            ),
            // The empty selector only when the installer lists it.
            (lists(&["", spot], &[ecs], &[]), with(json!({"nodeSelector": {}})), None),
            (
                lists(&["pool=a,zone=b"], &[ecs], &[]),
                with(json!({"nodeSelector": {"pool": "a"}})),
                Some(("spotDrain.nodeSelector", "pool=a,zone=b")),
            ),
            (lists(&["pool=a,zone=b"], &[ecs], &[]), with(json!({"nodeSelector": {"pool": "a", "zone": "b"}})), None),
            (lists(&[], &[ecs], &[]), drain(), Some(("spotDrain.nodeSelector", "(none)"))),
            (
                defaults.clone(),
                with(json!({"metadataEndpoint": "http://10.0.0.1"})),
                Some(("spotDrain.metadataEndpoint \"http://10.0.0.1\"", "--agent-metadata-endpoint")),
            ),
            (
                defaults.clone(),
                with(json!({"metadataEndpoint": "http://100.100.100.200/latest"})),
                Some(("spotDrain.metadataEndpoint", "--agent-metadata-endpoint")),
            ),
            (
                lists(&[spot], &[ecs, "http://127.0.0.1:9"], &[]),
                with(json!({"metadataEndpoint": "http://127.0.0.1:9"})),
                None,
            ),
            (
                defaults.clone(),
                with(
                    json!({"tolerations": [{"key": "flashsale.dev/spot-termination", "operator": "Exists", "effect": "NoSchedule"}]}),
                ),
                None,
            ),
            (
                defaults.clone(),
                with(json!({"tolerations": [{"operator": "Exists"}]})),
                Some(("spotDrain.tolerations[0]", "--agent-toleration")),
            ),
            (
                defaults.clone(),
                with(json!({"tolerations": [{"key": "flashsale.dev/spot-termination", "operator": "Exists"}]})),
                Some(("spotDrain.tolerations[0]", "--agent-toleration")),
            ),
            (lists(&[spot], &[ecs], &["*"]), with(json!({"tolerations": [{"operator": "Exists"}]})), None),
            (
                lists(&[spot], &[ecs], &["dedicated=spot:NoSchedule"]),
                with(json!({"tolerations": [{"key": "dedicated", "value": "spot", "effect": "NoSchedule"}]})),
                None,
            ),
            (
                lists(&[spot], &[ecs], &["dedicated=spot:NoSchedule"]),
                with(json!({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]})),
                Some(("spotDrain.tolerations[0]", "dedicated=spot:NoSchedule")),
            ),
        ];
        for (i, (installer, drain, want)) in table.into_iter().enumerate() {
            let got = refusal(&drain, &installer);
            match (want, &got) {
                (None, None) => {}
                (Some((field, flag)), Some(message)) => {
                    assert!(message.starts_with(field), "row {i}: {message:?} does not start with {field:?}");
                    assert!(message.contains(flag), "row {i}: {message:?} does not name {flag:?}");
                }
                _ => panic!("row {i}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn flag_values_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_selector("a=1, b=2").unwrap(),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert!(parse_selector("").unwrap().is_empty());
        assert!(parse_selector("a").unwrap_err().contains("key=value"));
        let t = |s: &str| serde_json::to_value(parse_toleration(s).unwrap()).unwrap();
        assert_eq!(t("*"), json!({"operator": "Exists"}));
        assert_eq!(t("k"), json!({"key": "k", "operator": "Exists"}));
        assert_eq!(t("k:NoExecute"), json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}));
        assert_eq!(t("k=v:NoSchedule"), json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}));
        assert!(parse_toleration("k:Sometimes").unwrap_err().contains("Sometimes"));
        assert!(parse_toleration("=v").is_err());
    }

    /// The rendered DaemonSet for each installer setting: where it lives, what it tolerates,
    /// its priority class and pull secrets, and the agent's arguments.
    #[test]
    fn the_daemonset_runs_in_the_agent_namespace_with_the_installers_settings() {
        let mut d = drain();
        d.metadata_token = MetadataTokenMode::Required;
        let pulls = Installer {
            agent_image_pull_secrets: vec!["regcred".into(), "mirror".into()],
            agent_priority_class: "spot-agents".into(),
            agent_namespace: "ops".into(),
            ..installer()
        };
        let no_class = Installer { agent_priority_class: String::new(), ..installer() };
        let mut own = drain();
        own.tolerations = serde_json::from_value(
            json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]),
        )
        .unwrap();
        let defaults_tolerations = json!([
            {"key": "flashsale.dev/spot-termination", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
        ]);
        // (installer, sale, namespace, tolerations, priority class, pull secrets)
        let table = [
            (
                installer(),
                d.clone(),
                "flashsale-system",
                defaults_tolerations.clone(),
                json!("system-node-critical"),
                Value::Null,
            ),
            (
                pulls,
                d.clone(),
                "ops",
                defaults_tolerations,
                json!("spot-agents"),
                json!([{"name": "regcred"}, {"name": "mirror"}]),
            ),
            (
                no_class,
                own.clone(),
                "flashsale-system",
                serde_json::to_value(&own.tolerations).unwrap(),
                Value::Null,
                Value::Null,
            ),
        ];
        for (i, (installer, drain, ns, tolerations, class, pulls)) in table.into_iter().enumerate() {
            let ds = daemonset("flashsale-drain-agent-x", &drain, &installer, "shop/sale");
            let pod = &ds["spec"]["template"]["spec"];
            assert_eq!(ds["metadata"]["namespace"], ns, "row {i}");
            assert_eq!(pod["tolerations"], tolerations, "row {i}");
            assert_eq!(pod["priorityClassName"], class, "row {i}");
            assert_eq!(pod["imagePullSecrets"], pulls, "row {i}");
            assert_eq!(pod["serviceAccountName"], AGENT, "row {i}");
            assert_eq!(ds["metadata"]["annotations"][holder_key("shop/sale")], "shop/sale", "held from its creation");
            let container = &pod["containers"][0];
            assert_eq!(container["image"], "img:1");
            let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            assert_eq!(container["command"], json!(["flashsale-drain-agent"]));
            assert!(args.contains(&"--poll-interval=2s"), "{args:?}");
            assert!(args.contains(&"--metadata-endpoint=http://100.100.100.200"), "{args:?}");
            assert_eq!(pod["nodeSelector"]["node.kubernetes.io/instance-lifecycle"], "spot");
            assert_eq!(container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
        }
        let ds = daemonset("x", &d, &installer(), "shop/sale");
        let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--metadata-token=Required"), "{args}");
    }

    /// The drain agents' readiness from the DaemonSet as last seen: (ready, reason, message) and
    /// the counts status shows.
    #[test]
    fn the_agents_are_ready_when_every_scheduled_agent_is_ready_and_up_to_date() {
        use k8s_openapi::api::apps::v1::DaemonSetStatus;
        let ds = |generation: i64, status: Option<(Option<i64>, i32, i32, Option<i32>)>| DaemonSet {
            metadata: kube::api::ObjectMeta { generation: Some(generation), ..Default::default() },
            status: status.map(|(observed, desired, ready, updated)| DaemonSetStatus {
                observed_generation: observed,
                desired_number_scheduled: desired,
                number_ready: ready,
                updated_number_scheduled: updated,
                ..Default::default()
            }),
            ..Default::default()
        };
        // (case, DaemonSet, ready, reason, message, (desired, ready) shown)
        type Row = (&'static str, Option<DaemonSet>, bool, &'static str, &'static str, Option<(i32, i32)>);
        let table: Vec<Row> = vec![
            (
                "not created yet",
                None,
                false,
                "Starting",
                "Waiting for the DaemonSet controller to schedule the drain agents",
                None,
            ),
            (
                "no status yet",
                Some(ds(1, None)),
                false,
                "Starting",
                "Waiting for the DaemonSet controller to schedule the drain agents",
                None,
            ),
            (
                "a new generation not observed yet",
                Some(ds(2, Some((Some(1), 3, 3, Some(3))))),
                false,
                "Starting",
                "Waiting for the DaemonSet controller to schedule the drain agents",
                None,
            ),
            (
                "no observed generation at all",
                Some(ds(1, Some((None, 3, 3, Some(3))))),
                false,
                "Starting",
                "Waiting for the DaemonSet controller to schedule the drain agents",
                None,
            ),
            (
                "every agent ready",
                Some(ds(2, Some((Some(2), 3, 3, Some(3))))),
                true,
                "AgentsReady",
                "3/3 drain agents ready",
                Some((3, 3)),
            ),
            (
                "one agent starting",
                Some(ds(2, Some((Some(2), 3, 2, Some(3))))),
                false,
                "AgentsStarting",
                "2/3 drain agents ready",
                Some((3, 2)),
            ),
            (
                "ready but one still the old template",
                Some(ds(2, Some((Some(2), 3, 3, Some(2))))),
                false,
                "AgentsStarting",
                "3/3 drain agents ready",
                Some((3, 3)),
            ),
            (
                "no updated count is none updated",
                Some(ds(2, Some((Some(2), 3, 3, None)))),
                false,
                "AgentsStarting",
                "3/3 drain agents ready",
                Some((3, 3)),
            ),
            (
                "no node matches: nothing to watch, ready",
                Some(ds(2, Some((Some(2), 0, 0, None)))),
                true,
                "NoMatchingNodes",
                "No node matches node.kubernetes.io/instance-lifecycle=spot; there is nothing for drain agents to watch",
                Some((0, 0)),
            ),
        ];
        for (case, ds, ready, reason, message, shown) in table {
            let mut report = Report { ready: true, ..Report::default() };
            observe(ds.as_ref(), &drain(), &mut report);
            let c = &report.conditions[0];
            assert_eq!(
                (c.type_, c.ready, c.reason.as_str(), c.message.as_str(), c.blocking),
                (DRAIN_AGENTS_READY, ready, reason, message, false),
                "{case}"
            );
            assert_eq!(report.ready, ready, "{case}: the report is ready only with the agents");
            assert_eq!(report.drain_agents.map(|a| (a.desired, a.ready)), shown, "{case}");
        }
    }

    /// Which settings share one DaemonSet: the name follows what the agents run, not how the
    /// sale spelled it.
    #[test]
    fn sales_asking_for_the_same_agents_share_a_daemonset_however_they_spell_it() {
        let base = daemonset_name(&drain(), &installer());
        let with = |patch: Value| -> SpotDrain {
            let mut d = serde_json::to_value(drain()).unwrap();
            d.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            serde_json::from_value(d).unwrap()
        };
        let defaults = serde_json::to_value(installer_tolerations(&installer())).unwrap();
        // (case, the sale's settings, the same DaemonSet as the defaults)
        let table = [
            ("the defaults", drain(), true),
            ("the installer's tolerations listed explicitly", with(json!({"tolerations": defaults})), true),
            (
                "the same selector with a narrower one",
                with(json!({"nodeSelector": {"node.kubernetes.io/instance-lifecycle": "spot", "pool": "a"}})),
                false,
            ),
            ("another poll interval", with(json!({"pollInterval": "10s"})), false),
            ("a required metadata token", with(json!({"metadataToken": "Required"})), false),
            (
                "only one of the installer's tolerations",
                with(
                    json!({"tolerations": [{"key": "flashsale.dev/spot-termination", "operator": "Exists", "effect": "NoSchedule"}]}),
                ),
                false,
            ),
        ];
        for (case, drain, same) in table {
            assert_eq!(daemonset_name(&drain, &installer()) == base, same, "{case}");
        }
    }

    /// Whether a toleration the sale asks for is one the installer lists (no wider, no other).
    #[test]
    fn a_toleration_is_allowed_only_when_it_matches_an_installer_one_field_for_field() {
        let t = |v: Value| -> Toleration { serde_json::from_value(v).unwrap() };
        let exists = t(json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}));
        let equal = t(json!({"key": "dedicated", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}));
        // (case, allowed, asked, allowed)
        let table = [
            ("the same", exists.clone(), exists.clone(), true),
            (
                "a missing operator is Equal",
                equal.clone(),
                t(json!({"key": "dedicated", "value": "spot", "effect": "NoSchedule"})),
                true,
            ),
            (
                "seconds only shorten it",
                exists.clone(),
                t(json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30})),
                true,
            ),
            (
                "an empty value is no value",
                exists.clone(),
                t(json!({"key": "dedicated", "operator": "Exists", "value": "", "effect": "NoSchedule"})),
                true,
            ),
            ("Exists where Equal is allowed", equal.clone(), exists.clone(), false),
            (
                "another value",
                equal.clone(),
                t(json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"})),
                false,
            ),
            (
                "every effect where one is allowed",
                exists.clone(),
                t(json!({"key": "dedicated", "operator": "Exists"})),
                false,
            ),
            (
                "another key",
                exists.clone(),
                t(json!({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"})),
                false,
            ),
            ("every taint where one key is allowed", exists.clone(), t(json!({"operator": "Exists"})), false),
            (
                "every taint where every taint is allowed",
                t(json!({"operator": "Exists"})),
                t(json!({"operator": "Exists"})),
                true,
            ),
        ];
        for (case, allowed, asked, want) in table {
            assert_eq!(same_toleration(&allowed, &asked), want, "{case}");
        }
    }

    /// `--agent-node-selector` and `--agent-toleration` values beyond the basic forms.
    #[test]
    fn flag_values_with_spaces_blanks_and_odd_separators() {
        // (case, --agent-node-selector value, selector or error)
        let selectors = [
            ("spaces around keys and values", " pool = a , zone=b ", Ok(vec![("pool", "a"), ("zone", "b")])),
            ("empty pairs are skipped", "pool=a,,", Ok(vec![("pool", "a")])),
            ("an empty value", "pool=", Ok(vec![("pool", "")])),
            ("an = in the value", "k=a=b", Ok(vec![("k", "a=b")])),
            ("no key", "=a", Err("\"=a\" is not key=value")),
            ("a blank key", " =a", Err("\"=a\" is not key=value")),
        ];
        for (case, value, want) in selectors {
            let want = want
                .map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<BTreeMap<_, _>>());
            match (parse_selector(value), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{case}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{case}: {got}"),
                (got, want) => panic!("{case}: got {got:?}, wanted {want:?}"),
            }
        }
        // (case, --agent-toleration value, toleration or what the error names)
        let tolerations = [
            ("an empty value", "k=", Ok(json!({"key": "k", "operator": "Equal", "value": ""}))),
            ("no effect", "k=v", Ok(json!({"key": "k", "operator": "Equal", "value": "v"}))),
            (
                "surrounding spaces",
                "  k:NoSchedule ",
                Ok(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
            ),
            (
                "PreferNoSchedule",
                "k:PreferNoSchedule",
                Ok(json!({"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"})),
            ),
            ("an empty effect", "k:", Err("the effect \"\"")),
            ("only an effect", ":NoSchedule", Err("has no taint key")),
            ("a lower-case effect", "k:noschedule", Err("the effect \"noschedule\"")),
        ];
        for (case, value, want) in tolerations {
            match (parse_toleration(value), want) {
                (Ok(got), Ok(want)) => assert_eq!(serde_json::to_value(got).unwrap(), want, "{case}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{case}: {got}"),
                (got, want) => panic!("{case}: got {got:?}, wanted {want:?}"),
            }
        }
    }
}
