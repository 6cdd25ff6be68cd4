//! The middle of the operator under an imperfect cluster: a refused write is a problem on that
//! object alone, and every other lever of the sale goes on.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::names;
use flashsale_operator::{
    api::{FlashSale, Phase},
    levers::agents::AGENT_SELECTOR,
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    batch::v1::Job,
    core::v1::ConfigMap,
};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::time::Duration;

use crate::{
    TestFn,
    support::{
        AGENT_NAMESPACE, Env, Operator, apply_manifests, at, block_on_value, client, eventually, flash_sale,
        install_agent_rbac, kubeconfig_secret, namespace, namespace_named,
    },
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "core::a_refused_workload_write_leaves_every_other_lever_applied_and_restored",
        a_refused_workload_write_leaves_every_other_lever_applied_and_restored,
    ),
    ("core::a_remote_drift_is_acted_on_within_a_second", a_remote_drift_is_acted_on_within_a_second),
    (
        "core::a_cluster_budget_spreads_the_writes_and_counts_the_wait",
        a_cluster_budget_spreads_the_writes_and_counts_the_wait,
    ),
];

/// An admission policy of the platform team: nobody changes `frozen`'s replicas.
const FROZEN_MESSAGE: &str = "Deployment frozen: replicas are frozen by the platform team";

fn frozen_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {ns}-frozen
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["apps"]
      apiVersions: ["v1"]
      operations: ["UPDATE"]
      resources: ["deployments", "deployments/scale"]
  validations:
  - expression: "object.metadata.name != 'frozen' || object.spec.replicas == oldObject.spec.replicas"
    message: "{FROZEN_MESSAGE}"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {ns}-frozen
spec:
  policyName: {ns}-frozen
  validationActions: ["Deny"]
  matchResources:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {ns}
"#
    )
}

fn a_refused_workload_write_leaves_every_other_lever_applied_and_restored(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    install_agent_rbac(cluster, AGENT_NAMESPACE)?;
    block_on_value(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "refused").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        for name in ["web", "frozen"] {
            deployments.create(&PostParams::default(), &crate::support::deployment(name, 1, None)?).await?;
        }
        apply_manifests(cluster, &frozen_policy(&ns))?;
        // The policy is enforced once the API server has loaded it: probe with a dry run.
        eventually(Duration::from_secs(20), || async {
            let probe = json!({"spec": {"replicas": 3}});
            let dry = kube::api::PatchParams { dry_run: true, ..Default::default() };
            Ok(deployments.patch("frozen", &dry, &kube::api::Patch::Merge(&probe)).await.is_err())
        })
        .await
        .context("the admission policy never took effect")?;

        let _operator = Operator::operator(
            cluster,
            &[
                "--watch-namespace",
                &ns,
                "--agent-image",
                "e2e.local/flashsale-operator:test",
                "--agent-metadata-endpoint",
                "http://127.0.0.1:9",
            ],
        )?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = json!([
            {"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2, "mode": "Replicas"}},
            {"ref": {"kind": "Deployment", "name": "frozen"}, "scale": {"peak": 2, "mode": "Replicas"}},
        ]);
        let mut sale = flash_sale("flash", &ns, (&at(10), &at(18)), ("6s", "2s"), workloads)?;
        // A poll interval of its own: these agents are not shared with other tests' sales.
        sale.spec.spot_drain =
            Some(serde_json::from_value(json!({"metadataEndpoint": "http://127.0.0.1:9", "pollInterval": "3s"}))?);
        sale.spec.degradation = Some(serde_json::from_value(json!({
            "configMapName": "shop-flags",
            "flags": [{"name": "recommendations", "offDuring": ["Preparing", "Active"]}],
        }))?);
        sale.spec.cache_warm = serde_json::from_value(json!([{
            "name": "product-cache",
            "startBefore": "5s",
            "template": {"spec": {"backoffLimit": 0, "template": {"spec": {
                "containers": [{"name": "warm", "image": "registry.example/cache-warmer:1"}],
                "restartPolicy": "Never"
            }}}}
        }]))?;
        sales.create(&PostParams::default(), &sale).await?;
        let holder = format!("{ns}/flash");
        let held_agents = || async {
            let list = Api::<DaemonSet>::namespaced(client.clone(), AGENT_NAMESPACE)
                .list(&ListParams::default().labels(AGENT_SELECTOR))
                .await?;
            anyhow::Ok(
                list.items
                    .into_iter()
                    .filter(|d| {
                        d.metadata
                            .annotations
                            .iter()
                            .flatten()
                            .any(|(k, v)| k.starts_with(names::HOLDER_PREFIX) && *v == holder)
                    })
                    .count(),
            )
        };

        // While the sale holds: every other lever in place, the refusal named on `frozen`.
        let seen = std::sync::Mutex::new(String::new());
        let held = eventually(Duration::from_secs(30), || async {
            let s = sales.get("flash").await?;
            let status = s.status.clone().unwrap_or_default();
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = format!("{status:?}");
            let Some(here) = status.clusters.first() else { return Ok(false) };
            let web = deployments.get("web").await?;
            let flags = Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt("shop-flags").await?;
            let refusal = here
                .workloads
                .iter()
                .find(|w| w.name.ends_with("/frozen"))
                .and_then(|w| w.message.clone())
                .unwrap_or_default();
            Ok(matches!(status.phase, Some(Phase::Preparing | Phase::Active))
                && here.reachable
                && web.spec.and_then(|s| s.replicas) == Some(2)
                && refusal.contains(FROZEN_MESSAGE)
                && here.drain_agents.as_ref().is_some_and(|a| a.desired > 0 && a.ready == a.desired)
                && here.warmups.iter().any(|w| w.name == "product-cache" && w.state == "Succeeded")
                && here.flags.iter().any(|f| f.name == "recommendations" && !f.enabled)
                && flags.is_some_and(|cm| cm.data.is_some_and(|d| d.contains_key("flags.flagd.json")))
                && held_agents().await? == 1)
        })
        .await;
        held.with_context(|| {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            format!("the other levers were not all in place beside the refusal; status {seen}")
        })?;
        let s = sales.get("flash").await?;
        let ready = s.status.as_ref().and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
        ensure!(
            ready.as_ref().is_some_and(|c| c.status == "False" && c.message.contains("frozen")),
            "Ready does not name the refused workload: {ready:?}"
        );
        let frozen = deployments.get("frozen").await?;
        ensure!(frozen.spec.as_ref().and_then(|s| s.replicas) == Some(1), "frozen was scaled: {:?}", frozen.spec);
        ensure!(
            frozen.metadata.annotations.iter().flatten().all(|(k, _)| !k.starts_with("flashsale.dev/")),
            "frozen carries the sale's bookkeeping: {:?}",
            frozen.metadata.annotations
        );

        // After the window: everything the sale changed is put back, and the sale completes.
        eventually(Duration::from_secs(40), || async {
            let s = sales.get("flash").await?;
            let web = deployments.get("web").await?;
            let flags = Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt("shop-flags").await?;
            let jobs = Api::<Job>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?;
            Ok(s.status.and_then(|st| st.phase) == Some(Phase::Completed)
                && web.spec.and_then(|s| s.replicas) == Some(1)
                && flags.is_none()
                && jobs.items.is_empty()
                && held_agents().await? == 0)
        })
        .await
        .context("the other levers were not restored, or the sale never completed")?;
        Ok(())
    })
}

/// A remote cluster is watched, not polled: replicas lowered there by hand below the sale's
/// peak are put back within a second, and while nothing changes the operator sends that
/// cluster no request beyond its watches and a liveness probe.
fn a_remote_drift_is_acted_on_within_a_second(env: &Env) -> anyhow::Result<()> {
    let (primary, secondary) = (env.primary()?, env.secondary()?);
    block_on_value(async {
        let here = client(primary).await?;
        let there = client(secondary).await?;
        let ns = namespace(&here, "drift").await?;
        namespace_named(&there, &ns).await?;
        let remote: Api<Deployment> = Api::namespaced(there.clone(), &ns);
        remote.create(&PostParams::default(), &crate::support::deployment("web", 1, None)?).await?;
        let (_, kubeconfig) = crate::support::remote_identity(secondary, &[&ns])?;
        kubeconfig_secret(&here, &ns, "there", "kubeconfig", &kubeconfig).await?;
        let operator = Operator::operator(primary, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(here.clone(), &ns);
        let workloads =
            json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3, "mode": "Replicas"}}]);
        let mut sale = flash_sale("flash", &ns, (&at(4), &at(120)), ("2s", "2s"), workloads)?;
        sale.spec.clusters =
            serde_json::from_value(json!([{"name": "there", "kubeconfigSecretRef": {"name": "there"}}]))?;
        sales.create(&PostParams::default(), &sale).await?;
        eventually(Duration::from_secs(30), || async {
            let s = sales.get("flash").await?;
            let ready = s.status.as_ref().and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready")).cloned();
            Ok(ready.is_some_and(|c| c.status == "True") && s.status.and_then(|st| st.phase) == Some(Phase::Active))
        })
        .await
        .context("the sale never became Ready in the remote cluster")?;

        // Quiet: the operator's requests to that cluster, beyond its watches, stay near zero.
        let verbs = ["get", "create", "update", "patch", "delete", "review"];
        let requests = || anyhow::Ok(crate::timeline::requests(&operator.get("/metrics")?.1, &verbs));
        let quiet_from = requests()?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let quiet = requests()? - quiet_from;
        ensure!(quiet <= 3, "{quiet} API requests in 10 s while nothing changed");
        // The view's health, per cluster (the Secret that reaches it).
        let cluster = format!("{ns}/there");
        let gauge = |name: &str| operator.metric(&format!("flashsale_{name}{{cluster=\"{cluster}\"}}"));
        let (watches, synced, lost) = (gauge("view_watches")?, gauge("view_watches_synced")?, gauge("view_lost")?);
        ensure!(
            watches >= 2.0 && synced == watches && lost == 0.0,
            "view of {cluster}: {watches} watches, {synced} synced, lost {lost}"
        );

        // Drift by hand: replicas lowered to 1 in the remote cluster.
        let scale = json!({"spec": {"replicas": 1}});
        remote.patch_scale("web", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&scale)).await?;
        let changed = std::time::Instant::now();
        eventually(Duration::from_secs(10), || async {
            Ok(remote.get("web").await?.spec.and_then(|s| s.replicas) == Some(3))
        })
        .await
        .context("the remote drift was never put back")?;
        let took = changed.elapsed();
        ensure!(took <= Duration::from_secs(1), "the remote drift was put back only after {took:?}");
        sales.delete("flash", &Default::default()).await?;
        eventually(Duration::from_secs(20), || async { Ok(sales.get_opt("flash").await?.is_none()) }).await?;
        ensure!(remote.get("web").await?.spec.and_then(|s| s.replicas) == Some(1), "not restored");
        Ok(())
    })
}

/// `--cluster-qps` / `--cluster-burst` keep the operator to a budget per remote cluster: a
/// Preparing boundary that scales eight workloads there goes at the budget's pace (the wait
/// counted per cluster), and every workload still reaches its peak.
fn a_cluster_budget_spreads_the_writes_and_counts_the_wait(env: &Env) -> anyhow::Result<()> {
    const WORKLOADS: usize = 8;
    let (primary, secondary) = (env.primary()?, env.secondary()?);
    block_on_value(async {
        let here = client(primary).await?;
        let there = client(secondary).await?;
        let ns = namespace(&here, "budget").await?;
        namespace_named(&there, &ns).await?;
        let remote: Api<Deployment> = Api::namespaced(there.clone(), &ns);
        let mut workloads = vec![];
        for i in 0..WORKLOADS {
            let name = format!("web-{i}");
            remote.create(&PostParams::default(), &crate::support::deployment(&name, 1, None)?).await?;
            workloads
                .push(json!({"ref": {"kind": "Deployment", "name": name}, "scale": {"peak": 2, "mode": "Replicas"}}));
        }
        let (_, kubeconfig) = crate::support::remote_identity(secondary, &[&ns])?;
        kubeconfig_secret(&here, &ns, "there", "kubeconfig", &kubeconfig).await?;
        let args = ["--watch-namespace", &ns, "--cluster-qps", "4", "--cluster-burst", "2"];
        let operator = Operator::operator(primary, &args)?;
        let sales: Api<FlashSale> = Api::namespaced(here.clone(), &ns);
        let mut sale = flash_sale("flash", &ns, (&at(8), &at(120)), ("4s", "2s"), json!(workloads))?;
        sale.spec.clusters =
            serde_json::from_value(json!([{"name": "there", "kubeconfigSecretRef": {"name": "there"}}]))?;
        sales.create(&PostParams::default(), &sale).await?;
        eventually(Duration::from_secs(60), || async {
            let list = remote.list(&ListParams::default()).await?;
            Ok(list.items.iter().filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(2)).count() == WORKLOADS)
        })
        .await
        .context("the workloads never all reached their peak under the budget")?;
        let throttled = operator.metric(&format!("flashsale_api_throttled_total{{cluster=\"{ns}/there\"}}"))?;
        ensure!(throttled >= 1.0, "no request waited for the budget of 4 per second");
        let local = operator.metric("flashsale_api_throttled_total{cluster=\"local\"}")?;
        ensure!(local == 0.0, "the operator's own cluster is throttled ({local})");
        Ok(())
    })
}
