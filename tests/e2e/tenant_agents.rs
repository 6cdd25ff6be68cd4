//! Drain agents are the operator's, not the tenant's: acting as a sale author (`tenant`), a
//! sale may ask only for the agents the installer allows, the agents run in the agent
//! namespace under the installer's RBAC, nothing in the tenant's namespace gains node rights,
//! and an agent's token may change only the node its pod is bound to.

use anyhow::{Context as _, bail, ensure};
use flashsale_operator::api::names;
use flashsale_operator::{
    api::FlashSale,
    levers::agents::{AGENT, AGENT_SELECTOR},
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    authentication::v1::TokenRequest,
    core::v1::{Node, Pod, ServiceAccount},
};
use kube::{
    Client, Config, ResourceExt as _,
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use std::time::Duration;

use crate::{
    TestFn,
    harness::Cluster,
    support::{
        AGENT_NAMESPACE, Env, Operator, at, block_on, client, events, eventually, flash_sale, install_agent_rbac,
        namespace,
    },
    tenant::{tenant, widened_service_accounts},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "tenant_agents::every_node_a_foreign_endpoint_and_every_taint_are_refused",
        every_node_a_foreign_endpoint_and_every_taint_are_refused,
    ),
    (
        "tenant_agents::allowed_agents_run_in_the_agent_namespace_and_lend_nothing",
        allowed_agents_run_in_the_agent_namespace_and_lend_nothing,
    ),
    ("tenant_agents::an_agent_token_patches_its_own_node_only", an_agent_token_patches_its_own_node_only),
    ("tenant_agents::missing_agent_rbac_is_named_in_preflight", missing_agent_rbac_is_named_in_preflight),
];

const IMAGE: &str = "e2e.local/flashsale-operator:test";
/// The test's metadata address, allowed besides the ECS one by the operator of these tests.
const TEST_ENDPOINT: &str = "http://127.0.0.1:9";

/// A sale of the one-replica Deployment `web`, with `spotDrain` as given.
fn sale(name: &str, ns: &str, start_in: i64, spot_drain: serde_json::Value) -> anyhow::Result<FlashSale> {
    let mut sale = flash_sale(
        name,
        ns,
        (&at(start_in), &at(start_in + 600)),
        ("3s", "1s"),
        json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 1, "mode": "Replicas"}}]),
    )?;
    sale.spec.spot_drain = Some(serde_json::from_value(spot_drain)?);
    Ok(sale)
}

/// The namespace's workload (its owners made it; the tenant only writes the sale).
async fn web(admin: &Client, ns: &str) -> anyhow::Result<()> {
    let d = crate::support::deployment("web", 1, None)?;
    Api::<Deployment>::namespaced(admin.clone(), ns).create(&PostParams::default(), &d).await?;
    Ok(())
}

/// Every agent DaemonSet in any namespace that a sale of `ns` holds, and every DaemonSet in `ns`.
async fn daemonsets_of(admin: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let all = Api::<DaemonSet>::all(admin.clone()).list(&ListParams::default()).await?;
    let ours = format!("{ns}/");
    Ok(all
        .items
        .iter()
        .filter(|d| {
            d.namespace().as_deref() == Some(ns)
                || d.annotations().iter().any(|(k, v)| k.starts_with(names::HOLDER_PREFIX) && v.starts_with(&ours))
        })
        .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
        .collect())
}

/// The DrainAgentsReady and Ready conditions of a sale, as the tenant reads them.
async fn conditions(sales: &Api<FlashSale>, name: &str) -> anyhow::Result<Vec<(String, String, String, String)>> {
    Ok(sales
        .get(name)
        .await?
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .filter(|c| c.type_ == "DrainAgentsReady" || c.type_ == "Ready")
        .map(|c| (c.type_, c.status, c.reason, c.message))
        .collect())
}

/// Waits until the tenant sees DrainAgentsReady False with reason `reason` and a message
/// containing every one of `words`, Ready False, and a Warning event saying the same.
async fn refused(tenant: &Client, ns: &str, name: &str, reason: &str, words: &[&str]) -> anyhow::Result<()> {
    let sales: Api<FlashSale> = Api::namespaced(tenant.clone(), ns);
    let says = |m: &str| words.iter().all(|w| m.contains(w));
    let seen = eventually(Duration::from_secs(30), || async {
        let c = conditions(&sales, name).await?;
        let agents = c.iter().any(|(t, s, r, m)| t == "DrainAgentsReady" && s == "False" && r == reason && says(m));
        let ready = c.iter().any(|(t, s, _, m)| t == "Ready" && s == "False" && says(m));
        let warned = events(tenant, ns, name).await?.iter().any(|(_, note)| says(note));
        Ok(agents && ready && warned)
    })
    .await;
    seen.with_context(|| {
        let c = futures::executor::block_on(conditions(&sales, name));
        let e = futures::executor::block_on(events(tenant, ns, name));
        format!("sale {name} not refused with {words:?}: conditions {c:?}, events {e:?}")
    })
}

/// `spotDrain: {nodeSelector: {}}` (every node), a metadata endpoint the installer does not
/// list and a toleration of every taint are refused in what the tenant reads, through Preparing, and no DaemonSet appears
/// anywhere for them.
fn every_node_a_foreign_endpoint_and_every_taint_are_refused(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "tenant-agents-refused").await?;
        web(&admin, &ns).await?;
        install_agent_rbac(cluster, AGENT_NAMESPACE)?;
        let tenant = tenant(cluster, &admin, &ns).await?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns, "--agent-image", IMAGE])?;
        let sales: Api<FlashSale> = Api::namespaced(tenant.clone(), &ns);
        // Both prepare within seconds: the refusal holds in Preparing, not only in preflight.
        sales.create(&PostParams::default(), &sale("every-node", &ns, 5, json!({"nodeSelector": {}}))?).await?;
        sales
            .create(&PostParams::default(), &sale("elsewhere", &ns, 5, json!({"metadataEndpoint": "http://10.9.8.7"}))?)
            .await?;
        // Well-formed, so admission takes it; tolerating every taint is the installer's call.
        let everything = json!({"tolerations": [{"operator": "Exists"}]});
        sales.create(&PostParams::default(), &sale("tolerate-all", &ns, 5, everything)?).await?;
        refused(
            &tenant,
            &ns,
            "every-node",
            "NotAllowed",
            &["spotDrain.nodeSelector {} (every node) is not allowed", "--agent-node-selector"],
        )
        .await?;
        refused(
            &tenant,
            &ns,
            "elsewhere",
            "NotAllowed",
            &["spotDrain.metadataEndpoint \"http://10.9.8.7\" is not allowed", "--agent-metadata-endpoint"],
        )
        .await?;
        refused(
            &tenant,
            &ns,
            "tolerate-all",
            "NotAllowed",
            &["spotDrain.tolerations[0] is not allowed", "--agent-toleration"],
        )
        .await?;
        // Past the sales' Preparing: still nothing deployed for them, in any namespace.
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("every-node").await?.status.unwrap_or_default();
            Ok(s.phase.is_some_and(|p| p != flashsale_operator::api::Phase::Scheduled))
        })
        .await
        .context("the refused sale never left Scheduled")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let found = daemonsets_of(&admin, &ns).await?;
        ensure!(found.is_empty(), "DaemonSets deployed for refused sales: {found:?}");
        refused(&tenant, &ns, "every-node", "NotAllowed", &["spotDrain.nodeSelector {} (every node)"]).await?;
        Ok(())
    })
}

/// A sale asking for what the installer allows gets its agents in the agent namespace, with
/// the installer's tolerations and priority class, and nothing in the tenant's namespace may
/// patch nodes, list every pod or evict elsewhere.
fn allowed_agents_run_in_the_agent_namespace_and_lend_nothing(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "tenant-agents-allowed").await?;
        let other = namespace(&admin, "tenant-agents-other").await?;
        web(&admin, &ns).await?;
        install_agent_rbac(cluster, AGENT_NAMESPACE)?;
        let tenant = tenant(cluster, &admin, &ns).await?;
        let _operator = Operator::operator(
            cluster,
            &["--watch-namespace", &ns, "--agent-image", IMAGE, "--agent-metadata-endpoint", TEST_ENDPOINT],
        )?;
        let sales: Api<FlashSale> = Api::namespaced(tenant.clone(), &ns);
        sales
            .create(&PostParams::default(), &sale("allowed", &ns, 4, json!({"metadataEndpoint": TEST_ENDPOINT}))?)
            .await?;
        let agents = Api::<DaemonSet>::namespaced(admin.clone(), AGENT_NAMESPACE);
        let holder = format!("{ns}/allowed");
        let held = || async {
            let list = agents.list(&ListParams::default().labels(AGENT_SELECTOR)).await?;
            anyhow::Ok(list.items.into_iter().find(|d| d.annotations().values().any(|v| *v == holder)))
        };
        eventually(Duration::from_secs(30), || async { Ok(held().await?.is_some()) })
            .await
            .context("the allowed sale's agents never appeared in the agent namespace")?;
        let ds = held().await?.context("agents gone")?;
        let pod = ds.spec.and_then(|s| s.template.spec).context("DaemonSet without a pod spec")?;
        ensure!(pod.service_account_name.as_deref() == Some(AGENT), "agents run as {:?}", pod.service_account_name);
        ensure!(pod.priority_class_name.as_deref() == Some("system-node-critical"), "{:?}", pod.priority_class_name);
        let tolerations = serde_json::to_value(pod.tolerations.unwrap_or_default())?;
        ensure!(
            tolerations
                == json!([
                    {"key": "flashsale.dev/spot-termination", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
                ]),
            "agents tolerate {tolerations}, not only the installer's taints"
        );
        // The agents' pods are admitted with their critical priority outside kube-system.
        let ds_name = ds.metadata.name.clone().unwrap_or_default();
        eventually(Duration::from_secs(30), || async {
            let s = agents.get(&ds_name).await?.status.context("no status")?;
            Ok(s.desired_number_scheduled == 2 && s.number_ready == 2)
        })
        .await
        .context("the agents never ran on the two spot nodes")?;
        let found = Api::<DaemonSet>::namespaced(admin.clone(), &ns).list(&ListParams::default()).await?;
        ensure!(found.items.is_empty(), "a DaemonSet in the tenant's namespace");
        ensure!(
            Api::<ServiceAccount>::namespaced(admin.clone(), &ns).get_opt(AGENT).await?.is_none(),
            "the agents' ServiceAccount is in the tenant's namespace"
        );
        let widened = widened_service_accounts(&admin, &ns, &other).await?;
        ensure!(widened.is_empty(), "the tenant's namespace gained rights: {widened:?}");
        Ok(())
    })
}

/// A client of `cluster` authenticated only by `token`.
async fn with_token(cluster: &Cluster, token: String) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
    Ok(Client::try_from(config)?)
}

/// A real agent token (TokenRequest bound to a pod on spot-0) may patch spot-0 and no other
/// node: the installer's ValidatingAdmissionPolicy refuses, with its message.
fn an_agent_token_patches_its_own_node_only(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        install_agent_rbac(cluster, AGENT_NAMESPACE)?;
        let (own, other) = ("spot-0", "node-0");
        let pods = Api::<Pod>::namespaced(admin.clone(), AGENT_NAMESPACE);
        let name = format!("own-node-{}", std::process::id());
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": AGENT,
                "nodeName": own,
                "containers": [{"name": "agent", "image": IMAGE}],
            },
        }))?;
        let pod = pods.create(&PostParams::default(), &pod).await?;
        let result = async {
            let request: TokenRequest = serde_json::from_value(json!({
                "spec": {
                    "audiences": [],
                    "expirationSeconds": 600,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": pod.uid()},
                },
            }))?;
            let token = Api::<ServiceAccount>::namespaced(admin.clone(), AGENT_NAMESPACE)
                .create_token_request(AGENT, &PostParams::default(), &request)
                .await?
                .status
                .and_then(|s| s.token)
                .context("TokenRequest without a token")?;
            let agent = with_token(cluster, token).await?;
            let nodes = Api::<Node>::all(agent.clone());
            let label = |v: serde_json::Value| json!({"metadata": {"labels": {"e2e.flashsale.dev/own-node": v}}});
            // The policy is enforced once the API server has loaded it: retry the refusal a while.
            let last = std::sync::Mutex::new(None::<String>);
            let refused = eventually(Duration::from_secs(20), || {
                let (nodes, label) = (nodes.clone(), label(json!("agent")));
                let last = &last;
                async move {
                    match nodes.patch(other, &PatchParams::default(), &Patch::Merge(&label)).await {
                        Err(kube::Error::Api(s)) => {
                            let done = s.message.contains(
                                "the drain agent may change only the node its token is bound to (spot-0), not node-0",
                            );
                            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.message);
                            Ok(done)
                        }
                        Ok(_) => {
                            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some("allowed".into());
                            Ok(false)
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            })
            .await;
            refused.with_context(|| {
                format!("patching {other} with a token bound to {own}: {:?}", last.lock().map(|l| l.clone()))
            })?;
            nodes
                .patch(own, &PatchParams::default(), &Patch::Merge(&label(json!("agent"))))
                .await
                .context("the agent's token may not patch its own node")?;
            let labelled = Api::<Node>::all(admin.clone()).get(own).await?;
            ensure!(labelled.labels().get("e2e.flashsale.dev/own-node").map(String::as_str) == Some("agent"));
            let untouched = Api::<Node>::all(admin.clone()).get(other).await?;
            if untouched.labels().contains_key("e2e.flashsale.dev/own-node") {
                bail!("{other} was changed through the agent's token");
            }
            anyhow::Ok(())
        }
        .await;
        let nodes = Api::<Node>::all(admin.clone());
        for node in [own, other] {
            let clear = json!({"metadata": {"labels": {"e2e.flashsale.dev/own-node": null}}});
            nodes.patch(node, &PatchParams::default(), &Patch::Merge(&clear)).await?;
        }
        pods.delete(&name, &DeleteParams::default().grace_period(0)).await?;
        result
    })
}

/// A cluster without the agents' pre-installed RBAC says so in preflight, naming the cluster,
/// the namespace and what to install, days ahead, and deploys nothing.
fn missing_agent_rbac_is_named_in_preflight(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "tenant-agents-norbac").await?;
        // An agent namespace where the installer put nothing.
        let bare = namespace(&admin, "agents-bare").await?;
        web(&admin, &ns).await?;
        let tenant = tenant(cluster, &admin, &ns).await?;
        let _operator = Operator::operator(
            cluster,
            &["--watch-namespace", &ns, "--agent-image", IMAGE, "--agent-namespace", &bare],
        )?;
        let sales: Api<FlashSale> = Api::namespaced(tenant.clone(), &ns);
        sales.create(&PostParams::default(), &sale("days-ahead", &ns, 3 * 86_400, json!({}))?).await?;
        let want = format!(
            "drain-agent RBAC is not installed in cluster local (namespace {bare}): install the chart there (mode: remote)"
        );
        refused(&tenant, &ns, "days-ahead", "AgentRbacMissing", &[&want]).await?;
        let found = Api::<DaemonSet>::namespaced(admin.clone(), &bare).list(&ListParams::default()).await?;
        ensure!(found.items.is_empty(), "agents deployed without their RBAC");
        Ok(())
    })
}
