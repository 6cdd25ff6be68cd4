//! The operator's side of spot drain: the agents' DaemonSet follows the sale's timeline in the
//! agent namespace of every cluster (where the installer pre-installed the agents' RBAC), is
//! shared by sales that want the same agents, and is gone when no sale needs it. (kwok runs no containers, so the agent pods are kwok's; the agent process
//! itself is tested in `agent`.)

use anyhow::{Context as _, ensure};
use flashsale_operator::api::names;
use flashsale_operator::{
    api::{FlashSale, Phase},
    levers::agents::{AGENT, AGENT_SELECTOR},
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::ServiceAccount,
};
use kube::{
    Client,
    api::{Api, ListParams, PostParams},
};
use std::time::Duration;

use crate::{
    TestFn,
    harness::Cluster,
    support::{
        AGENT_NAMESPACE, Env, Operator, at, block_on_value, client, event_notes, eventually, flash_sale,
        install_agent_rbac, kubeconfig_secret, namespace, namespace_named,
    },
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "drain_agents::follow_the_timeline_shared_by_two_sales_in_two_clusters",
        follow_the_timeline_shared_by_two_sales_in_two_clusters,
    ),
    ("drain_agents::move_with_the_settings_and_go_on_suspend", move_with_the_settings_and_go_on_suspend),
];

const IMAGE: &str = "e2e.local/flashsale-operator:test";

/// The agent namespace is shared by the whole cluster: these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The operator of these tests: the sales' namespace, the test image, and the test's metadata
/// address allowed besides the ECS one.
fn operator_flags(ns: &str) -> [&str; 6] {
    ["--watch-namespace", ns, "--agent-image", IMAGE, "--agent-metadata-endpoint", "http://127.0.0.1:9"]
}

/// A one-replica Deployment the sale holds at one replica: spot drain is the lever under test.
async fn deployment(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let d = crate::support::deployment(name, 1, None)?;
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), &d).await?;
    Ok(())
}

fn sale(name: &str, ns: &str, workload: &str, (start, end): (&str, &str)) -> anyhow::Result<FlashSale> {
    let mut sale = flash_sale(
        name,
        ns,
        (start, end),
        ("5s", "1s"),
        serde_json::json!([{"ref": {"kind": "Deployment", "name": workload}, "scale": {"peak": 1, "mode": "Replicas"}}]),
    )?;
    sale.spec.clusters = serde_json::from_value(serde_json::json!([
        {"name": "here", "kubeconfigSecretRef": {"name": "here"}},
        {"name": "there", "kubeconfigSecretRef": {"name": "there"}},
    ]))?;
    sale.spec.spot_drain = Some(serde_json::from_value(serde_json::json!({
        "metadataEndpoint": "http://127.0.0.1:9",
        "pollInterval": "2s",
    }))?);
    Ok(sale)
}

/// The agent DaemonSets (in the agent namespace) held by sales of `ns`, with the sales holding
/// each.
async fn agents(client: &Client, ns: &str) -> anyhow::Result<Vec<(String, Vec<String>, DaemonSet)>> {
    let list = Api::<DaemonSet>::namespaced(client.clone(), AGENT_NAMESPACE)
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await?;
    let ours = format!("{ns}/");
    Ok(list
        .items
        .into_iter()
        .map(|d| {
            let mut holders: Vec<String> = d
                .metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k.starts_with(names::HOLDER_PREFIX))
                .map(|(_, v)| v)
                .collect();
            holders.sort();
            (d.metadata.name.clone().unwrap_or_default(), holders, d)
        })
        .filter(|(_, holders, _)| holders.iter().any(|h| h.starts_with(&ours)))
        .collect())
}

/// Waits until `ns` has exactly one agent DaemonSet, held by exactly `want`.
async fn wait_holders(client: &Client, ns: &str, want: &[String], cluster: &str) -> anyhow::Result<DaemonSet> {
    let waited = eventually(Duration::from_secs(20), || async {
        let found = agents(client, ns).await?;
        Ok(found.len() == 1 && found[0].1 == want)
    })
    .await;
    let mut found = agents(client, ns).await?;
    if let Err(err) = waited {
        let seen: Vec<_> = found.into_iter().map(|(n, h, _)| (n, h)).collect();
        return Err(err.context(format!("cluster {cluster}: agents never held by exactly {want:?}; seen {seen:?}")));
    }
    Ok(found.remove(0).2)
}

/// Whether the agents' ServiceAccount may `verb` `resource` (kubectl auth can-i).
fn agent_can(cluster: &Cluster, verb: &str, resource: &str) -> anyhow::Result<bool> {
    let who = format!("--as=system:serviceaccount:{AGENT_NAMESPACE}:{AGENT}");
    let mut args = vec!["auth", "can-i", verb, resource, &who];
    let sub;
    if let Some((resource, subresource)) = resource.split_once('/') {
        sub = format!("--subresource={subresource}");
        args[3] = resource;
        args.push(&sub);
    }
    let out = cluster.kubectl(&args).unwrap_or_else(|e| format!("{e:#}"));
    Ok(out.trim_end().ends_with("yes"))
}

fn follow_the_timeline_shared_by_two_sales_in_two_clusters(env: &Env) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (primary, secondary) = (env.primary()?, env.secondary()?);
    block_on_value(async {
        let here = client(primary).await?;
        let there = client(secondary).await?;
        let ns = namespace(&here, "agents").await?;
        namespace_named(&there, &ns).await?;
        // The installer's part, in both clusters: the agents' RBAC from the chart.
        install_agent_rbac(primary, AGENT_NAMESPACE)?;
        install_agent_rbac(secondary, AGENT_NAMESPACE)?;
        for c in [&here, &there] {
            deployment(c, &ns, "web").await?;
            deployment(c, &ns, "api").await?;
        }
        kubeconfig_secret(&here, &ns, "here", "kubeconfig", &std::fs::read_to_string(&primary.kubeconfig)?).await?;
        // The operator is a plain user there, with only the rights the chart's mode remote grants.
        let (_, there_kubeconfig) = crate::support::remote_identity(secondary, &[&ns])?;
        kubeconfig_secret(&here, &ns, "there", "kubeconfig", &there_kubeconfig).await?;
        let operator = Operator::operator(primary, &operator_flags(&ns))?;
        let sales: Api<FlashSale> = Api::namespaced(here.clone(), &ns);
        // first: Preparing at +6 s, restoring at +19 s; second: Preparing at +11 s, restoring at +29 s.
        sales.create(&PostParams::default(), &sale("first", &ns, "web", (&at(11), &at(18)))?).await?;
        sales.create(&PostParams::default(), &sale("second", &ns, "api", (&at(16), &at(28)))?).await?;
        let (first, second) = (format!("{ns}/first"), format!("{ns}/second"));

        // Scheduled: nothing deployed yet, and the condition says when.
        eventually(Duration::from_secs(5), || async {
            let s = sales.get("first").await?;
            Ok(s.status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.type_ == "DrainAgentsReady" && c.reason == "NotYet"))
        })
        .await
        .context("a Scheduled sale does not say when drain agents start")?;
        for (c, name) in [(&here, "here"), (&there, "there")] {
            ensure!(agents(c, &ns).await?.is_empty(), "cluster {name}: agents deployed before Preparing");
        }

        // The first sale prepares: agents in the agent namespace of both clusters.
        let mut names = vec![];
        for (c, name, spot_nodes) in [(&here, "here", 2), (&there, "there", 1)] {
            let ds = wait_holders(c, &ns, std::slice::from_ref(&first), name).await?;
            let spec = ds.spec.clone().context("DaemonSet without spec")?;
            let pod = spec.template.spec.context("DaemonSet without pod spec")?;
            ensure!(
                pod.node_selector.unwrap_or_default().get("node.kubernetes.io/instance-lifecycle").map(String::as_str)
                    == Some("spot"),
                "cluster {name}: agents not restricted to spot nodes"
            );
            let container = &pod.containers[0];
            ensure!(container.image.as_deref() == Some(IMAGE), "cluster {name}: agents run {:?}", container.image);
            let args = container.args.clone().unwrap_or_default();
            ensure!(
                container.command == Some(vec!["flashsale-drain-agent".to_owned()])
                    && args.iter().any(|a| a == "--metadata-endpoint=http://127.0.0.1:9")
                    && args.iter().any(|a| a == "--poll-interval=2s"),
                "cluster {name}: agent arguments {args:?}"
            );
            ensure!(pod.service_account_name.as_deref() == Some(AGENT), "cluster {name}: agents' ServiceAccount");
            ensure!(
                ds.metadata.namespace.as_deref() == Some(AGENT_NAMESPACE),
                "cluster {name}: agents in {:?}, not the agent namespace",
                ds.metadata.namespace
            );
            ensure!(
                pod.priority_class_name.as_deref() == Some("system-node-critical"),
                "cluster {name}: agents' priority class {:?}",
                pod.priority_class_name
            );
            // Nothing of the agents lands in the sale's namespace.
            ensure!(
                Api::<ServiceAccount>::namespaced(c.clone(), &ns).get_opt(AGENT).await?.is_none()
                    && Api::<DaemonSet>::namespaced(c.clone(), &ns)
                        .list(&ListParams::default())
                        .await?
                        .items
                        .is_empty(),
                "cluster {name}: the operator put agent objects in the sale's namespace"
            );
            // kwok runs the agent pods on the spot nodes (critical priority outside kube-system
            // is admitted): the DaemonSet reports them ready.
            let dss: Api<DaemonSet> = Api::namespaced(c.clone(), AGENT_NAMESPACE);
            let ds_name = ds.metadata.name.clone().unwrap_or_default();
            eventually(Duration::from_secs(20), || async {
                let s = dss.get(&ds_name).await?.status.context("no status")?;
                Ok(s.desired_number_scheduled == spot_nodes && s.number_ready == spot_nodes)
            })
            .await
            .with_context(|| format!("cluster {name}: agents never ready on its {spot_nodes} spot nodes"))?;
            names.push(ds_name);
        }
        ensure!(names[0] == names[1], "the same settings gave different DaemonSets: {names:?}");

        // Least privilege: what draining needs, nothing more.
        for (verb, resource, allowed) in [
            ("patch", "nodes", true),
            ("list", "pods", true),
            ("create", "pods/eviction", true),
            ("list", "poddisruptionbudgets.policy", true),
            ("create", "events.events.k8s.io", true),
            ("delete", "pods", false),
            ("get", "secrets", false),
            ("delete", "nodes", false),
            ("patch", "deployments.apps", false),
        ] {
            let can = agent_can(primary, verb, resource)?;
            ensure!(can == allowed, "the drain agent {} {verb} {resource}", if can { "may" } else { "may not" });
        }

        // Status: desired and ready per cluster, the condition, and Ready.
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("first").await?.status.unwrap_or_default();
            let counts: Vec<_> = s
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.drain_agents.clone().map(|d| (d.desired, d.ready))))
                .collect();
            let agents_ready = s.conditions.iter().any(|c| c.type_ == "DrainAgentsReady" && c.status == "True");
            let ready = s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(counts == [("here".to_owned(), Some((2, 2))), ("there".to_owned(), Some((1, 1)))]
                && agents_ready
                && ready)
        })
        .await
        .with_context(|| {
            format!("first sale's status never showed 2/2 and 1/1 agents ready: {:?}", {
                futures::executor::block_on(sales.get("first")).ok().and_then(|s| s.status)
            })
        })?;
        let (_, metrics) = operator.get("/metrics")?;
        let series = format!(
            "flashsale_sale_condition{{sale_namespace=\"{ns}\",sale=\"first\",condition=\"DrainAgentsReady\"}} 1"
        );
        ensure!(metrics.contains(&series), "/metrics has no {series}");
        let notes = event_notes(&here, &ns, "first").await?;
        ensure!(
            notes.iter().any(|n| n.starts_with("cluster there: drain agents deployed")),
            "no event says the agents were deployed: {notes:?}"
        );

        // The second sale prepares: it joins the same DaemonSet in both clusters.
        for (c, name) in [(&here, "here"), (&there, "there")] {
            wait_holders(c, &ns, &[first.clone(), second.clone()], name).await?;
        }
        // The first sale completes: the agents stay for the second.
        eventually(Duration::from_secs(20), || async {
            Ok(sales.get("first").await?.status.and_then(|s| s.phase) == Some(Phase::Completed))
        })
        .await
        .context("the first sale never completed")?;
        for (c, name) in [(&here, "here"), (&there, "there")] {
            let ds = wait_holders(c, &ns, std::slice::from_ref(&second), name).await?;
            ensure!(ds.metadata.deletion_timestamp.is_none(), "cluster {name}: agents deleted while a sale holds them");
        }
        // The second completes: agents are gone from both clusters; the installer's RBAC stays.
        eventually(Duration::from_secs(25), || async {
            Ok(sales.get("second").await?.status.and_then(|s| s.phase) == Some(Phase::Completed))
        })
        .await
        .context("the second sale never completed")?;
        for (c, name) in [(&here, "here"), (&there, "there")] {
            eventually(Duration::from_secs(10), || async {
                Ok(agents(c, &ns).await?.is_empty()
                    && Api::<ServiceAccount>::namespaced(c.clone(), AGENT_NAMESPACE).get_opt(AGENT).await?.is_some())
            })
            .await
            .with_context(|| format!("cluster {name}: agents left behind after both sales (or the agent RBAC gone)"))?;
        }
        Ok(())
    })
}

/// Changing the agents' settings mid-sale moves the sale to a DaemonSet with the new settings
/// and removes the old one; suspending the sale removes the agents.
fn move_with_the_settings_and_go_on_suspend(env: &Env) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = env.primary()?;
    block_on_value(async {
        let c = client(cluster).await?;
        let ns = namespace(&c, "agents-move").await?;
        deployment(&c, &ns, "web").await?;
        install_agent_rbac(cluster, AGENT_NAMESPACE)?;
        let _operator = Operator::operator(cluster, &operator_flags(&ns))?;
        let sales: Api<FlashSale> = Api::namespaced(c.clone(), &ns);
        let mut s = sale("moving", &ns, "web", (&at(4), &at(600)))?;
        s.spec.clusters = vec![];
        sales.create(&PostParams::default(), &s).await?;
        let holder = vec![format!("{ns}/moving")];
        let first = wait_holders(&c, &ns, &holder, "local").await?.metadata.name.unwrap_or_default();

        let patch = serde_json::json!({"spec": {"spotDrain": {"pollInterval": "5s"}}});
        sales.patch("moving", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        // Exactly one agent DaemonSet again, held by the sale, and not the old one.
        eventually(Duration::from_secs(15), || async {
            let found = agents(&c, &ns).await?;
            Ok(found.len() == 1 && found[0].0 != first && found[0].1 == holder)
        })
        .await
        .with_context(|| format!("new settings did not move the sale off DaemonSet {first}"))?;
        let second = agents(&c, &ns).await?.remove(0).2;
        let args = second.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].args.clone().unwrap_or_default());
        ensure!(
            args.as_ref().is_some_and(|a| a.iter().any(|x| x == "--poll-interval=5s")),
            "the new DaemonSet does not poll every 5s: {args:?}"
        );

        let patch = serde_json::json!({"spec": {"suspend": true}});
        sales.patch("moving", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        eventually(Duration::from_secs(20), || async { Ok(agents(&c, &ns).await?.is_empty()) })
            .await
            .context("suspending the sale left agents behind")?;
        // The status follows the pass that removed them.
        let removed = eventually(Duration::from_secs(10), || async {
            let status = sales.get("moving").await?.status.unwrap_or_default();
            Ok(status.phase == Some(Phase::Suspended)
                && status.conditions.iter().any(|c| c.type_ == "DrainAgentsReady" && c.reason == "Removed"))
        })
        .await;
        let status = sales.get("moving").await?.status.unwrap_or_default();
        removed.with_context(|| {
            format!("a suspended sale does not say its agents are removed: {:?} {:?}", status.phase, status.conditions)
        })?;
        Ok(())
    })
}
