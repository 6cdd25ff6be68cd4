//! Who wins over replicas and originals, as on-call meets it: a manual scale-up during the sale
//! is kept and reported, a workload above peak is never scaled down, the pre-scale happens at
//! Preparing even with pods that cannot be scheduled, and the restore trusts an original only
//! from a sound record (the annotation on the workload, or the second one in the sale's status).

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler};
use kube::{
    Client,
    api::{Api, Patch, PatchParams, PostParams},
};
use std::time::Duration;

use crate::{
    TestFn,
    support::{Env, Operator, at, block_on_value, client, events, eventually, namespace, wait_phase},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "who_replicas::an_on_call_scale_up_is_kept_reported_once_and_kept_after_the_restore",
        an_on_call_scale_up_is_kept_reported_once_and_kept_after_the_restore,
    ),
    ("who_replicas::a_workload_above_peak_is_never_scaled_down", a_workload_above_peak_is_never_scaled_down),
    (
        "who_replicas::the_pre_scale_is_written_at_preparing_with_unschedulable_pods",
        the_pre_scale_is_written_at_preparing_with_unschedulable_pods,
    ),
    (
        "who_replicas::a_removed_or_garbled_annotation_is_restored_from_the_status_record",
        a_removed_or_garbled_annotation_is_restored_from_the_status_record,
    ),
    (
        "who_replicas::no_trusted_original_refuses_the_restore_and_writes_nothing",
        no_trusted_original_refuses_the_restore_and_writes_nothing,
    ),
    (
        "who_replicas::disagreeing_records_are_kept_through_the_hold_and_refuse_the_restore",
        disagreeing_records_are_kept_through_the_hold_and_refuse_the_restore,
    ),
    (
        "who_replicas::hpa_bounds_raised_by_hand_are_kept_through_the_restore",
        hpa_bounds_raised_by_hand_are_kept_through_the_restore,
    ),
    (
        "who_replicas::a_removed_probe_original_is_restored_from_the_status_record",
        a_removed_probe_original_is_restored_from_the_status_record,
    ),
];

async fn setup(env: &Env, name: &str) -> anyhow::Result<(Client, String, Operator)> {
    let cluster = env.primary()?;
    let client = client(cluster).await?;
    let ns = namespace(&client, name).await?;
    let operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    Ok((client, ns, operator))
}

/// A Deployment `name` of `replicas` pods, ready before the test goes on.
async fn ready_deployment(deployments: &Api<Deployment>, name: &str, replicas: i32) -> anyhow::Result<()> {
    deployments.create(&PostParams::default(), &crate::support::deployment(name, replicas, None)?).await?;
    eventually(Duration::from_secs(60), || async {
        Ok(deployments.get(name).await?.status.and_then(|s| s.ready_replicas) == Some(replicas))
    })
    .await
    .with_context(|| format!("{name} never had {replicas} ready replicas"))
}

fn replicas_mode(names_and_peaks: &[(&str, i32)]) -> serde_json::Value {
    names_and_peaks
        .iter()
        .map(|(name, peak)| serde_json::json!({"ref": {"kind": "Deployment", "name": name}, "scale": {"peak": peak, "mode": "Replicas"}}))
        .collect()
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> anyhow::Result<Option<i32>> {
    Ok(deployments.get(name).await?.spec.and_then(|s| s.replicas))
}

async fn phase(sales: &Api<FlashSale>, name: &str) -> anyhow::Result<Option<Phase>> {
    Ok(sales.get(name).await?.status.and_then(|s| s.phase))
}

fn ready(sale: &FlashSale) -> Option<(String, String, String)> {
    let c = sale.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The annotations of the operator's own (`flashsale.dev/`) left on a Deployment.
async fn bookkeeping(deployments: &Api<Deployment>, name: &str) -> anyhow::Result<Vec<String>> {
    let d = deployments.get(name).await?;
    Ok(d.metadata.annotations.unwrap_or_default().into_keys().filter(|k| k.starts_with("flashsale.dev/")).collect())
}

/// Scales like `kubectl scale`: through the scale subresource, as another field manager.
async fn scale_by_hand(deployments: &Api<Deployment>, name: &str, replicas: i32) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    deployments.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

fn an_on_call_scale_up_is_kept_reported_once_and_kept_after_the_restore(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "oncall").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, "web", 2).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let sale =
            crate::support::flash_sale("flash", &ns, (&at(6), &at(30)), ("5s", "3s"), replicas_mode(&[("web", 4)]))?;
        sales.create(&PostParams::default(), &sale).await?;
        wait_phase(&sales, "flash", Phase::Active, 30).await?;
        eventually(Duration::from_secs(20), || async { Ok(replicas(&deployments, "web").await? == Some(4)) })
            .await
            .context("web never pre-scaled to 4")?;

        scale_by_hand(&deployments, "web", 9).await?;
        // Several passes (each pod becoming ready is a change the sale reacts to): still 9.
        for _ in 0..8 {
            ensure!(replicas(&deployments, "web").await? == Some(9), "the manual scale-up was undone");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            let drift = s
                .status
                .as_ref()
                .and_then(|st| st.clusters.first())
                .and_then(|c| c.workloads.first())
                .and_then(|w| w.drift.clone());
            Ok(drift.is_some_and(|d| d.contains("replicas set to 9")))
        })
        .await
        .context("status never reported the manual scale-up as drift")?;
        let drifts = |all: Vec<(String, String)>| all.into_iter().filter(|(r, _)| r == "Drift").count();
        ensure!(drifts(events(&client, &ns, "flash").await?) == 1, "the drift was not reported exactly once");

        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        ensure!(replicas(&deployments, "web").await? == Some(9), "the restore undid the manual scale-up");
        ensure!(bookkeeping(&deployments, "web").await?.is_empty(), "bookkeeping left on web");
        let all = events(&client, &ns, "flash").await?;
        ensure!(
            all.iter().any(|(r, n)| r == "Drift" && n.contains("they stay at 9 instead of the original 2")),
            "the restore did not say it left the manual replicas: {all:?}"
        );
        let s = sales.get("flash").await?;
        let drift = s
            .status
            .as_ref()
            .and_then(|st| st.clusters.first())
            .and_then(|c| c.workloads.first())
            .and_then(|w| w.drift.clone());
        ensure!(drift.is_some(), "the completed sale no longer says what a person changed");
        Ok(())
    })
}

fn a_workload_above_peak_is_never_scaled_down(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "abovepeak").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, "web", 6).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let sale =
            crate::support::flash_sale("flash", &ns, (&at(15), &at(25)), ("5s", "3s"), replicas_mode(&[("web", 4)]))?;
        sales.create(&PostParams::default(), &sale).await?;
        // Preflight, days (here: seconds) ahead, says the sale will keep 6.
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s).is_some_and(|(st, r, m)| {
                st == "True" && r == "PreflightWarnings" && m.contains("more than the sale's peak 4")
            }))
        })
        .await
        .context("preflight did not warn that the peak is below the live replicas")?;
        // Through Preparing, Active and the restore it never goes below 6.
        let mut seen = vec![];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = replicas(&deployments, "web").await?;
            seen.push(r);
            ensure!(r == Some(6), "web was scaled to {r:?} (phase {:?})", phase(&sales, "flash").await?);
            if phase(&sales, "flash").await? == Some(Phase::Completed) {
                break;
            }
            ensure!(std::time::Instant::now() < deadline, "the sale never completed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(seen.len() > 10, "too few samples: {seen:?}");
        let s = sales.get("flash").await?;
        ensure!(
            s.status
                .as_ref()
                .and_then(|st| st.clusters.first())
                .and_then(|c| c.workloads.first())
                .and_then(|w| w.target_replicas)
                == Some(6),
            "status does not show 6 as what the restore wanted"
        );
        ensure!(bookkeeping(&deployments, "web").await?.is_empty(), "bookkeeping left on web");
        Ok(())
    })
}

fn the_pre_scale_is_written_at_preparing_with_unschedulable_pods(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "unschedulable").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let mut d = crate::support::deployment("web", 2, None)?;
        if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            pod.node_selector = Some([("flashsale.dev/test-pool".to_owned(), "none".to_owned())].into());
        }
        deployments.create(&PostParams::default(), &d).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let sale =
            crate::support::flash_sale("flash", &ns, (&at(30), &at(40)), ("25s", "3s"), replicas_mode(&[("web", 4)]))?;
        sales.create(&PostParams::default(), &sale).await?;
        wait_phase(&sales, "flash", Phase::Preparing, 20).await?;
        eventually(Duration::from_secs(15), || async { Ok(replicas(&deployments, "web").await? == Some(4)) })
            .await
            .context("the pre-scale was not written while pods cannot be scheduled")?;
        let expected = format!("Deployment {ns}/web: 0/4 replicas ready; 4 pods Pending: Unschedulable");
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s).is_some_and(|(st, r, m)| st == "False" && r == "Blocked" && m.contains(&expected)))
        })
        .await
        .with_context(|| format!("Ready does not say {expected:?}"))?;
        ensure!(phase(&sales, "flash").await? == Some(Phase::Preparing), "only seen after Preparing");
        let all = events(&client, &ns, "flash").await?;
        ensure!(
            all.iter().any(|(r, n)| r == "Blocked" && n.contains("Unschedulable")),
            "no Warning event names the unschedulable pods: {all:?}"
        );
        Ok(())
    })
}

fn a_removed_or_garbled_annotation_is_restored_from_the_status_record(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "secondrecord").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, "removed", 2).await?;
        ready_deployment(&deployments, "garbled", 3).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = replicas_mode(&[("removed", 4), ("garbled", 5)]);
        let sale = crate::support::flash_sale("flash", &ns, (&at(6), &at(25)), ("5s", "3s"), workloads)?;
        sales.create(&PostParams::default(), &sale).await?;
        wait_phase(&sales, "flash", Phase::Active, 30).await?;
        // Both records in place: the annotation and the status.
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            let originals =
                s.status.and_then(|st| st.clusters.into_iter().next()).map(|c| c.originals).unwrap_or_default();
            let recorded = |name: &str, value: &str| {
                originals
                    .iter()
                    .any(|o| o.object == format!("Deployment {ns}/{name}") && o.field == "replicas" && o.value == value)
            };
            Ok(recorded("removed", "2")
                && recorded("garbled", "3")
                && replicas(&deployments, "removed").await? == Some(4)
                && replicas(&deployments, "garbled").await? == Some(5))
        })
        .await
        .context("the originals were never recorded in status, or peak never written")?;

        let annotation = |value: serde_json::Value| serde_json::json!({"metadata": {"annotations": {"flashsale.dev/original-replicas": value}}});
        deployments
            .patch("removed", &PatchParams::default(), &Patch::Merge(&annotation(serde_json::Value::Null)))
            .await?;
        deployments.patch("garbled", &PatchParams::default(), &Patch::Merge(&annotation("lots".into()))).await?;

        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        ensure!(replicas(&deployments, "removed").await? == Some(2), "removed not restored to 2");
        ensure!(replicas(&deployments, "garbled").await? == Some(3), "garbled not restored to 3");
        for name in ["removed", "garbled"] {
            ensure!(bookkeeping(&deployments, name).await?.is_empty(), "bookkeeping left on {name}");
        }
        let all = events(&client, &ns, "flash").await?;
        ensure!(
            all.iter().any(|(r, n)| r == "Recorded"
                && n.contains(&format!("{ns}/removed"))
                && n.contains("the annotation is missing")),
            "no event says the removed annotation was replaced from the status record: {all:?}"
        );
        ensure!(
            all.iter().any(|(r, n)| r == "Recorded"
                && n.contains(&format!("{ns}/garbled"))
                && n.contains("the annotation is unsound")),
            "no event says the garbled annotation was replaced from the status record: {all:?}"
        );
        Ok(())
    })
}

fn no_trusted_original_refuses_the_restore_and_writes_nothing(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, mut operator) = setup(env, "norecord").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, "web", 2).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let sale =
            crate::support::flash_sale("flash", &ns, (&at(6), &at(30)), ("5s", "3s"), replicas_mode(&[("web", 4)]))?;
        sales.create(&PostParams::default(), &sale).await?;
        wait_phase(&sales, "flash", Phase::Active, 30).await?;
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            let recorded =
                s.status.and_then(|st| st.clusters.into_iter().next()).is_some_and(|c| !c.originals.is_empty());
            Ok(recorded && replicas(&deployments, "web").await? == Some(4))
        })
        .await
        .context("peak and the status record never in place")?;

        // With the operator down (so neither record is rewritten from the other in between),
        // both records of the original go.
        operator.kill()?;
        let mut s = sales.get("flash").await?;
        let status = s.status.as_mut().context("no status")?;
        for cluster in &mut status.clusters {
            cluster.originals.clear();
        }
        let patch = serde_json::json!({"status": {"clusters": status.clusters}});
        sales.patch_status("flash", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let removal = serde_json::json!({"metadata": {"annotations": {"flashsale.dev/original-replicas": null}}});
        deployments.patch("web", &PatchParams::default(), &Patch::Merge(&removal)).await?;
        let left = deployments.get("web").await?;
        let _operator = Operator::operator(env.primary()?, &["--watch-namespace", &ns])?;

        wait_phase(&sales, "flash", Phase::Restoring, 60).await?;
        let expected = format!("Deployment {ns}/web: no trusted original of replicas");
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s).is_some_and(|(st, _, m)| {
                st == "False" && m.contains(&expected) && m.contains("both records are missing")
            }))
        })
        .await
        .with_context(|| format!("Ready does not say {expected:?}"))?;
        eventually(Duration::from_secs(10), || async {
            let all = events(&client, &ns, "flash").await?;
            Ok(all.iter().any(|(r, n)| r == "RestoreRefused" && n.contains(&expected)))
        })
        .await
        .context("no RestoreRefused event names the workload and the field")?;
        // A few passes later: still refused, and the workload is as the sale and on-call left it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure!(phase(&sales, "flash").await? == Some(Phase::Restoring), "the refused restore was called complete");
        let now = deployments.get("web").await?;
        ensure!(
            now.metadata.generation == left.metadata.generation
                && now.metadata.annotations == left.metadata.annotations
                && now.spec.as_ref().and_then(|s| s.replicas) == Some(4),
            "the operator wrote to web although no original could be trusted"
        );
        let refusals = events(&client, &ns, "flash").await?.into_iter().filter(|(r, _)| r == "RestoreRefused").count();
        ensure!(refusals == 1, "the refusal was announced {refusals} times");
        Ok(())
    })
}

fn disagreeing_records_are_kept_through_the_hold_and_refuse_the_restore(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "disagree").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, "web", 2).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let sale =
            crate::support::flash_sale("flash", &ns, (&at(6), &at(24)), ("5s", "3s"), replicas_mode(&[("web", 4)]))?;
        sales.create(&PostParams::default(), &sale).await?;
        wait_phase(&sales, "flash", Phase::Active, 30).await?;
        let record = |s: &FlashSale| {
            s.status
                .iter()
                .flat_map(|st| &st.clusters)
                .flat_map(|c| &c.originals)
                .find(|o| o.field == "replicas")
                .map(|o| o.value.clone())
        };
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(record(&s).as_deref() == Some("2") && replicas(&deployments, "web").await? == Some(4))
        })
        .await
        .context("peak and the status record never in place")?;

        // One write makes the records disagree: the annotation says 3, the status record 2.
        let edit = serde_json::json!({"metadata": {"annotations": {"flashsale.dev/original-replicas": "3"}}});
        deployments.patch("web", &PatchParams::default(), &Patch::Merge(&edit)).await?;
        let expected = format!("Deployment {ns}/web: no trusted original of replicas");
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s).is_some_and(|(_, _, m)| m.contains(&expected) && m.contains("the records disagree")))
        })
        .await
        .with_context(|| format!("Ready never said {expected:?} during the hold"))?;
        // Passes go on through the hold: neither record is dropped or rewritten from the other.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let s = sales.get("flash").await?;
        let web = deployments.get("web").await?;
        let annotation = web.metadata.annotations.as_ref().and_then(|a| a.get("flashsale.dev/original-replicas"));
        ensure!(
            record(&s).as_deref() == Some("2") && annotation.map(String::as_str) == Some("3"),
            "the hold changed a record it could not trust: status record {:?}, annotation {annotation:?}",
            record(&s)
        );

        // The restore is refused: nothing is guessed, web stays at peak, both records stay.
        wait_phase(&sales, "flash", Phase::Restoring, 40).await?;
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s)
                .is_some_and(|(st, _, m)| st == "False" && m.contains(&expected) && m.contains("nothing is written")))
        })
        .await
        .with_context(|| format!("Ready does not say {expected:?} at the restore"))?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure!(phase(&sales, "flash").await? == Some(Phase::Restoring), "the refused restore was called complete");
        ensure!(
            replicas(&deployments, "web").await? == Some(4),
            "web was scaled although no original could be trusted"
        );
        let s = sales.get("flash").await?;
        ensure!(record(&s).as_deref() == Some("2"), "the status record is gone after the refusal: {:?}", record(&s));
        Ok(())
    })
}

fn hpa_bounds_raised_by_hand_are_kept_through_the_restore(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "hpahand").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, "web", 2).await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2, "maxReplicas": 5,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
            }
        }))?;
        hpas.create(&PostParams::default(), &hpa).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads =
            serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 4, "mode": "HPA"}}]);
        let sale = crate::support::flash_sale("flash", &ns, (&at(6), &at(25)), ("5s", "3s"), workloads)?;
        sales.create(&PostParams::default(), &sale).await?;
        let bounds = || async {
            let h = hpas.get("web").await?;
            anyhow::Ok((h.spec.min_replicas, h.spec.max_replicas))
        };
        wait_phase(&sales, "flash", Phase::Active, 30).await?;
        eventually(Duration::from_secs(20), || async { Ok(bounds().await? == (Some(4), 5)) })
            .await
            .context("the HPA was never raised to minReplicas 4")?;

        // On-call raises both bounds by hand (another field manager, as kubectl edit would).
        let by_hand = serde_json::json!({"spec": {"minReplicas": 6, "maxReplicas": 9}});
        hpas.patch("web", &PatchParams::default(), &Patch::Merge(&by_hand)).await?;
        for _ in 0..8 {
            ensure!(bounds().await? == (Some(6), 9), "the bounds set by hand were undone: {:?}", bounds().await?);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eventually(Duration::from_secs(10), || async {
            Ok(events(&client, &ns, "flash")
                .await?
                .iter()
                .any(|(r, n)| r == "Drift" && n.contains("bounds set to 6..9")))
        })
        .await
        .context("no Drift event reports the bounds set by hand")?;

        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        ensure!(bounds().await? == (Some(6), 9), "the restore undid the bounds set by hand: {:?}", bounds().await?);
        let h = hpas.get("web").await?;
        ensure!(
            !h.metadata.annotations.clone().unwrap_or_default().keys().any(|k| k.starts_with("flashsale.dev/")),
            "bookkeeping left on the HPA"
        );
        let managers: Vec<String> =
            h.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
        ensure!(
            !managers.iter().any(|m| m == "flashsale-operator"),
            "the operator still owns fields of the HPA it only put back: {managers:?}"
        );
        let all = events(&client, &ns, "flash").await?;
        ensure!(
            all.iter().any(|(r, n)| r == "Drift" && n.contains("they stay at 6..9 instead of the original 2..5")),
            "the restore did not say it left the bounds set by hand: {all:?}"
        );
        Ok(())
    })
}

fn a_removed_probe_original_is_restored_from_the_status_record(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "proberecord").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let mut d = crate::support::deployment("web", 1, None)?;
        if let Some(app) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()).and_then(|p| p.containers.first_mut())
        {
            app.readiness_probe = Some(serde_json::from_value(
                serde_json::json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10, "failureThreshold": 3}),
            )?);
        }
        deployments.create(&PostParams::default(), &d).await?;
        let probe = || async {
            let d = deployments.get("web").await?;
            let app = d.spec.and_then(|s| s.template.spec).and_then(|p| p.containers.into_iter().next());
            let r = app.and_then(|c| c.readiness_probe).context("no readiness probe")?;
            anyhow::Ok((r.period_seconds, r.timeout_seconds, r.failure_threshold))
        };
        let before = probe().await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{
            "ref": {"kind": "Deployment", "name": "web"},
            "scale": {"peak": 1, "mode": "Replicas"},
            "probes": {"container": "app", "readiness": {"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 1}}
        }]);
        let sale = crate::support::flash_sale("flash", &ns, (&at(6), &at(25)), ("5s", "3s"), workloads)?;
        sales.create(&PostParams::default(), &sale).await?;
        wait_phase(&sales, "flash", Phase::Active, 30).await?;
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            let recorded = s
                .status
                .and_then(|st| st.clusters.into_iter().next())
                .is_some_and(|c| c.originals.iter().any(|o| o.field == "probes"));
            Ok(recorded && probe().await? == (Some(2), Some(1), Some(1)))
        })
        .await
        .context("the sale's probe timings or the status record of their original never in place")?;

        let removal = serde_json::json!({"metadata": {"annotations": {"flashsale.dev/original-probes": null}}});
        deployments.patch("web", &PatchParams::default(), &Patch::Merge(&removal)).await?;

        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        ensure!(probe().await? == before, "probe timings not restored: {:?}, were {before:?}", probe().await?);
        ensure!(bookkeeping(&deployments, "web").await?.is_empty(), "bookkeeping left on web");
        Ok(())
    })
}
