//! GitOps re-applies and people during the sale: a Flux-style server-side apply of the pre-sale
//! manifest every 10 s costs one re-apply of the sale's probe timings, never a rollout loop; a
//! person's change to them is left at once; after the restore the operator owns nothing it only
//! put back.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use std::time::Duration;

use crate::{
    TestFn,
    support::{Env, Operator, at, block_on_value, client, events, eventually, flash_sale, namespace},
};

pub const TESTS: &[(&str, TestFn)] = &[(
    "who_gitops::a_flux_reapply_every_10s_costs_one_reapply_and_a_person_wins_at_once",
    a_flux_reapply_every_10s_costs_one_reapply_and_a_person_wins_at_once,
)];

/// The manifest "in Git": no replicas (an HPA or the sale owns them), the pre-sale probe timings.
fn manifest(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.example/web:1",
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10, "failureThreshold": 3},
                }]},
            },
        },
    })
    .to_string()
}

fn readiness_period(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.readiness_probe.as_ref()?.period_seconds
}

fn readiness_failures(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.readiness_probe.as_ref()?.failure_threshold
}

/// The Deployment's rollout count: it grows each time its pod template changes (annotation
/// writes bump the generation, never this).
fn revision(d: &Deployment) -> i64 {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision"))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn probes_state(sale: &FlashSale, workload: &str) -> Option<String> {
    let local = sale.status.as_ref()?.clusters.iter().find(|c| c.name == "local")?;
    local.workloads.iter().find(|w| w.name.ends_with(&format!("/{workload}")))?.probes.clone()
}

fn a_flux_reapply_every_10s_costs_one_reapply_and_a_person_wins_at_once(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let cluster = env.primary()?;
        let client = client(cluster).await?;
        let ns = namespace(&client, "gitops-reapply").await?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let flux_apply = |name: &str| {
            cluster.kubectl_stdin(
                &[
                    "apply",
                    "-n",
                    &ns,
                    "--server-side",
                    "--field-manager=kustomize-controller",
                    "--force-conflicts",
                    "-f",
                    "-",
                ],
                Some(&manifest(name)),
            )
        };
        // `web` comes from Git (Flux's field manager); `api` was created by a person's tool.
        flux_apply("web")?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let api_doc: Deployment = serde_json::from_str(&manifest("api"))?;
        deployments.create(&PostParams::default(), &api_doc).await?;

        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let probes = serde_json::json!({"container": "app", "readiness": {"periodSeconds": 2, "failureThreshold": 1}});
        let workloads = serde_json::json!([
            {"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2, "mode": "Replicas"}, "probes": probes},
            {"ref": {"kind": "Deployment", "name": "api"}, "scale": {"peak": 2, "mode": "Replicas"}, "probes": probes},
        ]);
        // Preparing at +14 s, live from +20 s to +100 s.
        let sale = flash_sale("flash", &ns, (&at(20), &at(100)), ("6s", "3s"), workloads)?;
        sales.create(&PostParams::default(), &sale).await?;

        // Days ahead (here: while Scheduled), preflight names the fields Git holds.
        let warned = eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            let ready = s.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            Ok(ready.is_some_and(|c| {
                c.reason == "PreflightWarnings"
                    && c.message.contains(&format!(
                        "Deployment {ns}/web: the probe timings of container app by kustomize-controller (Flux)"
                    ))
                    && c.message.contains("docs/gitops.md")
                    && !c.message.contains(&format!("Deployment {ns}/api:"))
            }))
        })
        .await;
        let status = sales.get("flash").await?.status;
        warned.with_context(|| format!("no preflight warning naming Flux: {status:?}"))?;

        // Live, with the sale's timings on both workloads.
        let applied = eventually(Duration::from_secs(60), || async {
            let s = sales.get("flash").await?;
            Ok(s.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active)
                && probes_state(&s, "web").as_deref() == Some("Applied")
                && probes_state(&s, "api").as_deref() == Some("Applied"))
        })
        .await;
        let status = sales.get("flash").await?.status;
        applied.with_context(|| format!("the sale's probe timings never applied: {status:?}"))?;
        let start = deployments.get("web").await?;
        let replica_sets = || async {
            let all: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), &ns);
            let list = all.list(&Default::default()).await?.items;
            Ok::<usize, anyhow::Error>(
                list.iter().filter(|r| r.metadata.name.as_deref().is_some_and(|n| n.starts_with("web-"))).count(),
            )
        };
        let sets_before = replica_sets().await?;
        ensure!(readiness_period(&start) == Some(2), "web's readiness period is {:?}", readiness_period(&start));

        // A person sets another period on `api` (kubectl patch): it stays, at once.
        let api_before = revision(&deployments.get("api").await?);
        cluster.kubectl(&[
            "patch",
            "-n",
            &ns,
            "deployment",
            "api",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","readinessProbe":{"periodSeconds":5}}]}}}}"#,
        ])?;

        // Flux syncs `web` every 10 s with the pre-sale timings. The first sync puts them back
        // and the sale re-applies its own once; the second puts them back again and the sale
        // leaves them; the later syncs change nothing.
        let mut periods = vec![];
        for sync in 1..=4 {
            flux_apply("web")?;
            tokio::time::sleep(Duration::from_secs(if sync == 1 { 5 } else { 8 })).await;
            let d = deployments.get("web").await?;
            periods.push((sync, readiness_period(&d), readiness_failures(&d), revision(&d) - revision(&start)));
            if sync < 4 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        let web = deployments.get("web").await?;
        let s = sales.get("flash").await?;
        let changes = revision(&web) - revision(&start);
        let sets_after = replica_sets().await?;
        let seen = events(&client, &ns, "flash").await?;
        ensure!(
            changes == 3,
            "web rolled out {changes} times over 4 syncs (want 3: sync, one re-apply, sync): {periods:?}; events {seen:?}"
        );
        ensure!(
            sets_after <= sets_before + 2,
            "{} new ReplicaSets for 2 syncs that changed the probes",
            sets_after - sets_before
        );
        ensure!(periods[0].1 == Some(2), "the first sync was not re-applied: {periods:?}");
        ensure!(readiness_period(&web) == Some(10), "the later syncs' timings are not left: {periods:?}");
        ensure!(
            probes_state(&s, "web").as_deref() == Some("LeftAsSet"),
            "web's probes say {:?}",
            probes_state(&s, "web")
        );

        let api = deployments.get("api").await?;
        ensure!(readiness_period(&api) == Some(5), "the person's period on api is {:?}", readiness_period(&api));
        ensure!(revision(&api) - api_before == 1, "api rolled out {} times", revision(&api) - api_before);
        ensure!(
            probes_state(&s, "api").as_deref() == Some("LeftAsSet"),
            "api's probes say {:?}",
            probes_state(&s, "api")
        );

        let left: Vec<&String> = seen.iter().filter(|(r, _)| r == "ProbesLeft").map(|(_, n)| n).collect();
        ensure!(left.len() == 2, "want one ProbesLeft event per workload: {left:?}");
        ensure!(
            left.iter()
                .any(|n| n.contains("kustomize-controller (Flux)") && n.contains(&format!("Deployment {ns}/web"))),
            "no event names Flux on web: {left:?}"
        );
        ensure!(
            left.iter().any(|n| n.contains("kubectl-patch") && n.contains("/api")),
            "no event names kubectl on api: {left:?}"
        );

        // After the sale: replicas back, the timings as Git and the person left them, no
        // bookkeeping, and no field owned by the operator any more.
        let done = eventually(Duration::from_secs(90), || async {
            Ok(sales.get("flash").await?.status.and_then(|s| s.phase) == Some(Phase::Completed))
        })
        .await;
        let status = sales.get("flash").await?.status;
        done.with_context(|| format!("the sale never completed: {status:?}"))?;
        for (name, period) in [("web", 10), ("api", 5)] {
            let d = deployments.get(name).await?;
            ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(1), "{name} replicas not restored: {:?}", d.spec);
            ensure!(readiness_period(&d) == Some(period), "{name} period is {:?}", readiness_period(&d));
            // The field nobody else changed is back at its original.
            ensure!(readiness_failures(&d) == Some(3), "{name} failure threshold is {:?}", readiness_failures(&d));
            let notes: Vec<&String> = d
                .metadata
                .annotations
                .iter()
                .flatten()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("flashsale.dev/"))
                .collect();
            ensure!(notes.is_empty(), "{name} keeps bookkeeping: {notes:?}");
            let managers: Vec<String> =
                d.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
            ensure!(
                !managers.iter().any(|m| m == "flashsale-operator"),
                "{name} still has fields owned by the operator: {managers:?}"
            );
        }
        Ok(())
    })
}
