//! GitOps re-applies and people during the sale: a Flux-style server-side apply of the pre-sale
//! manifest every 10 s costs one re-apply of the sale's probe timings, never a rollout loop; a
//! person's change to them is left at once; after the restore the operator owns nothing it only
//! put back. A sale the operator cannot read whole (a value only a newer CRD allows) holds
//! still, says which part, and its deletion still restores what its records say.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use std::time::Duration;

use crate::{
    TestFn,
    harness::{Cluster, ClusterOptions},
    support::{
        Env, Operator, at, block_on_value, client, events, eventually, flash_sale, flashsale_resource, namespace,
    },
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "who_gitops::a_flux_reapply_every_10s_costs_one_reapply_and_a_person_wins_at_once",
        a_flux_reapply_every_10s_costs_one_reapply_and_a_person_wins_at_once,
    ),
    (
        "who_gitops::a_sale_the_operator_cannot_read_holds_still_and_its_deletion_restores",
        a_sale_the_operator_cannot_read_holds_still_and_its_deletion_restores,
    ),
];

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

/// The CRD of a newer operator: scale modes this one does not know, a peak that may be a string
/// (`"auto"`), and none of this version's CEL rules.
fn newer_crd(value: &mut serde_json::Value) {
    crate::gitops::strip_cel(value);
    widen(value);
}

fn widen(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let modes = map.get("enum").and_then(|e| e.as_array()).is_some_and(|e| e.iter().any(|v| v == "CronHPA"));
            if modes {
                map.remove("enum");
            }
            if let Some(peak) = map.get_mut("properties").and_then(|p| p.get_mut("peak")) {
                *peak = serde_json::json!({"x-kubernetes-int-or-string": true});
            }
            map.values_mut().for_each(widen);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(widen),
        _ => {}
    }
}

/// The condition `type_` of a FlashSale read as a plain object: (status, reason, message).
fn condition(sale: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let conditions = sale.data.get("status")?.get("conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    let text = |key: &str| c[key].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

fn a_sale_the_operator_cannot_read_holds_still_and_its_deletion_restores(_env: &Env) -> anyhow::Result<()> {
    // The CRD is cluster-wide: a cluster of the test's own gets the newer one.
    let dir = std::env::temp_dir().join(format!("flashsale-e2e-{}-unreadable", std::process::id()));
    let mut cluster =
        Cluster::start(&ClusterOptions { name: "unreadable".into(), nodes: 1, spot_nodes: 0 }, &dir, false)?;
    crate::support::install_edited_crd(&cluster, newer_crd)?;
    let result = block_on_value(async {
        let client = client(&cluster).await?;
        let ns = namespace(&client, "unreadable").await?;
        let _operator = Operator::operator(&cluster, &["--watch-namespace", &ns])?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        for name in ["web", "api"] {
            deployments.create(&PostParams::default(), &crate::support::deployment(name, 1, None)?).await?;
        }
        let replicas = async |name: &str| anyhow::Ok(deployments.get(name).await?.spec.and_then(|s| s.replicas));
        let bookkeeping = async |name: &str| {
            let d = deployments.get(name).await?;
            let keys = d.metadata.annotations.unwrap_or_default().into_keys();
            anyhow::Ok(keys.filter(|k| k.starts_with("flashsale.dev/")).collect::<Vec<_>>())
        };
        let workload = |name: &str, scale: serde_json::Value| serde_json::json!({"ref": {"kind": "Deployment", "name": name}, "scale": scale});
        let readable = serde_json::json!([
            workload("web", serde_json::json!({"peak": 3, "mode": "Replicas"})),
            workload("api", serde_json::json!({"peak": 3, "mode": "Replicas"})),
        ]);
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        sales
            .create(
                &PostParams::default(),
                &flash_sale("flash", &ns, (&at(4), &at(900)), ("3s", "3s"), readable.clone())?,
            )
            .await?;
        eventually(Duration::from_secs(30), || async {
            Ok(replicas("web").await? == Some(3) && replicas("api").await? == Some(3))
        })
        .await
        .context("web and api never pre-scaled to 3")?;

        // What a newer chart's operator would accept, this one cannot read: web's mode (left out,
        // web stays), api's peak (the workload cannot be read without it: left out whole).
        let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &flashsale_resource());
        let newer = serde_json::json!({"spec": {"workloads": [
            workload("web", serde_json::json!({"peak": 5, "mode": "KEDA"})),
            workload("api", serde_json::json!({"peak": "auto", "mode": "Replicas"})),
        ]}});
        raw.patch("flash", &PatchParams::default(), &Patch::Merge(&newer)).await?;
        eventually(Duration::from_secs(20), || async {
            let sale = raw.get("flash").await?;
            Ok(condition(&sale, "Stalled").is_some_and(|(status, reason, message)| {
                status == "True"
                    && reason == "Unreadable"
                    && message.contains("spec.workloads[0].scale.mode")
                    && message.contains("spec.workloads[1].scale.peak")
            }))
        })
        .await
        .context("Stalled never named the parts the operator cannot read")?;
        let sale = raw.get("flash").await?;
        ensure!(
            condition(&sale, "Ready").is_some_and(|(status, reason, _)| status == "False" && reason == "Unreadable"),
            "an unreadable sale is not said to be not ready: {:?}",
            condition(&sale, "Ready")
        );
        let warnings = events(&client, &ns, "flash").await?;
        ensure!(
            warnings.iter().filter(|(reason, _)| reason == "Unreadable").count() == 1,
            "the unreadable parts were not reported exactly once: {warnings:?}"
        );
        // Holding still: the peak of 5 it cannot be sure of is not written, nor the old one undone.
        for _ in 0..6 {
            ensure!(
                replicas("web").await? == Some(3) && replicas("api").await? == Some(3),
                "an unreadable sale changed a workload"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // Deleted as is (as a rollback to the older CRD would leave it): web is restored; api,
        // which the operator cannot read, is left as it is and the deletion waits, saying why.
        raw.delete("flash", &DeleteParams::default()).await?;
        eventually(Duration::from_secs(30), || async { Ok(replicas("web").await? == Some(1)) })
            .await
            .context("web was not restored on the unreadable sale's deletion")?;
        ensure!(bookkeeping("web").await?.is_empty(), "bookkeeping left on web: {:?}", bookkeeping("web").await?);
        eventually(Duration::from_secs(20), || async {
            let sale = raw.get("flash").await?;
            Ok(condition(&sale, "Ready").is_some_and(|(_, _, message)| {
                message.starts_with("Deletion waits: spec.workloads[1] of the FlashSale cannot be read")
            }))
        })
        .await
        .context("the deletion does not say it waits for the part it cannot read")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(raw.get_opt("flash").await?.is_some(), "the sale was deleted with api not restored");
        ensure!(replicas("api").await? == Some(3), "api was changed though the operator cannot read it");
        ensure!(!bookkeeping("api").await?.is_empty(), "api's records were dropped before its restore");

        // A person fixes the part (kubectl edit on the sale being deleted): the restore goes on.
        let fixed = serde_json::json!({"spec": {"workloads": readable}});
        raw.patch("flash", &PatchParams::default(), &Patch::Merge(&fixed)).await?;
        eventually(Duration::from_secs(30), || async { Ok(raw.get_opt("flash").await?.is_none()) })
            .await
            .context("the deletion never finished once the sale was readable")?;
        ensure!(replicas("api").await? == Some(1), "api not restored to 1: {:?}", replicas("api").await?);
        ensure!(bookkeeping("api").await?.is_empty(), "bookkeeping left on api: {:?}", bookkeeping("api").await?);
        Ok(())
    });
    cluster.stop();
    result
}
