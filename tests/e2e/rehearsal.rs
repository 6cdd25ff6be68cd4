//! Dress rehearsals end to end: `flashsale-operator rehearse` plays a sale's preparation for real
//! on pods that become ready only after a delay, measures time-to-peak as the pods' own
//! conditions say, restores field for field, feeds the sale's preflight, and is refused when it
//! would overlap the sale; the sale created while a rehearsal of it holds takes over at once.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::{path::Path, process::Command, time::Duration};

use crate::{
    TestFn,
    harness::{Cluster, ClusterOptions},
    support::{Env, Operator, as_written, at, block_on_value, client, eventually, flash_sale, namespace, wait_phase},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "rehearsal::a_rehearsal_measures_time_to_peak_restores_exactly_and_warns_the_sale",
        a_rehearsal_measures_time_to_peak_restores_exactly_and_warns_the_sale,
    ),
    (
        "rehearsal::a_peak_that_cannot_be_scheduled_is_named_with_its_reason_and_restored",
        a_peak_that_cannot_be_scheduled_is_named_with_its_reason_and_restored,
    ),
    (
        "rehearsal::the_sale_created_while_its_rehearsal_holds_takes_over_at_once",
        the_sale_created_while_its_rehearsal_holds_takes_over_at_once,
    ),
];

/// `flashsale-operator ARGS...` through `kubeconfig`: (success, stdout, stderr).
fn cli(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A Deployment whose pods become ready `ready_after` after they are bound.
fn slow(name: &str, ready_after: &str) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": {"team": "checkout"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"e2e.flashsale.dev/ready-after": ready_after}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:1",
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10}}]},
            },
        },
    }))?)
}

/// Creates `d` (one replica) and waits until it is ready: the baseline a rehearsal starts from.
async fn ready_deployment(deployments: &Api<Deployment>, d: Deployment) -> anyhow::Result<()> {
    let name = d.metadata.name.clone().unwrap_or_default();
    deployments.create(&PostParams::default(), &d).await?;
    eventually(Duration::from_secs(90), || async {
        Ok(deployments.get(&name).await?.status.and_then(|s| s.ready_replicas) == Some(1))
    })
    .await
    .with_context(|| format!("{name} never became ready"))
}

fn ready_since(p: &Pod) -> Option<jiff::Timestamp> {
    let conditions = p.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    ready.last_transition_time.as_ref().map(|t| t.0)
}

fn a_rehearsal_measures_time_to_peak_restores_exactly_and_warns_the_sale(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let cluster = env.primary()?;
        let client = client(cluster).await?;
        let ns = namespace(&client, "rehearsal").await?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, slow("web", "17s")?).await?;
        let before = as_written(&deployments.get("web").await?)?;

        // The real sale, three days ahead, with a prepareBefore the rehearsal shows to be short.
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        // No probe timings: a rollout would replace the pods and blur what the scale-up took.
        let workloads = serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3, "mode": "Replicas"}}]);
        let day = 86_400;
        let sale = flash_sale("bf", &ns, (&at(3 * day), &at(3 * day + 3600)), ("20s", "5s"), workloads.clone())?;
        sales.create(&PostParams::default(), &sale).await?;

        // A rehearsal inside the sale's span is refused, naming the sale.
        let inside = at(3 * day + 60);
        let (ok, _, err) = cli(&cluster.kubeconfig, &["rehearse", "bf", "-n", &ns, "--at", &inside, "--hold", "10s"])?;
        ensure!(!ok && err.contains("overlaps sale bf"), "an overlapping rehearsal was not refused: {err}");
        ensure!(sales.get_opt("bf-rehearsal").await?.is_none(), "the refused rehearsal was created");

        // Rehearse now, holding peak 10 s.
        let (ok, out, err) = cli(&cluster.kubeconfig, &["rehearse", "bf", "-n", &ns, "--hold", "10s"])?;
        ensure!(ok, "rehearse failed: {err}");
        ensure!(out.contains("rehearsal bf-rehearsal of bf"), "{out}");
        let rehearsal = sales.get("bf-rehearsal").await?;
        let prepare_at = flashsale_operator::timeline::Schedule::from_spec(&rehearsal.spec)?.prepare_at;

        // While it holds, note when each pod of the peak became ready, as the pods say.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let last_ready = std::sync::Arc::new(std::sync::Mutex::new(None::<jiff::Timestamp>));
        let done = eventually(Duration::from_secs(120), || {
            let pods = pods.clone();
            let sales = sales.clone();
            let last_ready = last_ready.clone();
            async move {
                let list = pods.list(&Default::default()).await?.items;
                let ready: Vec<jiff::Timestamp> = list.iter().filter_map(ready_since).collect();
                if ready.len() >= 3 {
                    let mut ready = ready;
                    ready.sort();
                    // The time the third pod (peak) became ready.
                    let third = ready[2];
                    let mut seen = last_ready.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    if seen.is_none_or(|t| t > third) {
                        *seen = Some(third);
                    }
                }
                Ok(sales.get("bf-rehearsal").await?.status.and_then(|s| s.phase) == Some(Phase::Completed))
            }
        })
        .await;
        let status = sales.get("bf-rehearsal").await?.status;
        done.with_context(|| format!("the rehearsal never completed: {status:?}"))?;
        let third_ready = *last_ready.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let pods_say = third_ready.context("the pods never showed 3 ready")?.duration_since(prepare_at).as_secs_f64();

        // The report, as JSON and as text.
        let (ok, json, err) = cli(&cluster.kubeconfig, &["rehearsal", "report", "bf", "-n", &ns, "-o", "json"])?;
        ensure!(ok, "report failed: {err}");
        let report: serde_json::Value = serde_json::from_str(&json)?;
        let measured = report["workloads"][0]["timeToPeakSeconds"].as_f64().context("no time-to-peak in the report")?;
        eprintln!("rehearsal: time-to-peak {measured:.1} s; the pods' conditions say {pods_say:.1} s");
        ensure!((measured - pods_say).abs() <= 1.0, "time-to-peak {measured} s, the pods say {pods_say} s");
        // Conditions carry whole seconds: a 17 s delay reads as 16 s at the least.
        ensure!(pods_say >= 16.0, "the pods were ready after {pods_say} s, before their 17 s delay");
        // prepareBefore 20 s: quarters at 5, 10, 15 s (only the first pod ready) and 20 s (all 3).
        let quarters = &report["workloads"][0]["readyByQuarter"];
        ensure!(*quarters == serde_json::json!([1, 1, 1, 3]), "ready at 25/50/75/100%: {quarters}");
        // The new pods waited out their delay scheduled but not started: the last one seen
        // before peak (one or both, as the passes fell) is what the slowest pods waited for.
        let waited = report["workloads"][0]["waitedFor"].as_str().unwrap_or_default();
        ensure!(
            waited == "1 pod Pending: starting" || waited == "2 pods Pending: starting",
            "why the slowest pods waited: {waited:?}"
        );
        let (_, text, _) = cli(&cluster.kubeconfig, &["rehearsal", "report", "bf", "-n", &ns])?;
        ensure!(
            text.contains("prepareBefore 20s covers the slowest time-to-peak (Deployment")
                && text.contains("READY AT 25/50/75/100%")
                && text.contains("1/1/1/3")
                && text.contains(&format!("slowest pods waited: {waited}")),
            "{text}"
        );

        // Restored field for field.
        let after = as_written(&deployments.get("web").await?)?;
        ensure!(after == before, "the rehearsal's restore differs:\nbefore {before}\nafter  {after}");

        // The real sale's next preflight names the measured figure.
        let poke = serde_json::json!({"metadata": {"annotations": {"e2e/poke": "1"}}});
        sales.patch("bf", &PatchParams::default(), &Patch::Merge(poke)).await?;
        let warned = eventually(Duration::from_secs(20), || async {
            let s = sales.get("bf").await?;
            let ready = s.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            Ok(ready.is_some_and(|c| {
                c.reason == "PreflightWarnings"
                    && c.message.contains(&format!("Deployment {ns}/web: rehearsal bf-rehearsal took"))
                    && c.message.contains("against prepareBefore 20s")
            }))
        })
        .await;
        let status = sales.get("bf").await?.status;
        warned.with_context(|| format!("the sale's preflight does not name the rehearsal's figure: {status:?}"))?;

        // A rehearsal written by hand into the sale's span is refused by the operator too.
        let mut by_hand =
            flash_sale("bf-by-hand", &ns, (&at(3 * day + 60), &at(3 * day + 120)), ("10s", "0s"), workloads)?;
        by_hand.spec.rehearsal = Some(serde_json::from_value(serde_json::json!({"of": "bf"}))?);
        sales.create(&PostParams::default(), &by_hand).await?;
        let refused = eventually(Duration::from_secs(20), || async {
            let s = sales.get("bf-by-hand").await?;
            let ready = s.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            Ok(ready.is_some_and(|c| c.reason == "RehearsalRefused" && c.message.contains("overlaps sale bf")))
        })
        .await;
        let status = sales.get("bf-by-hand").await?.status;
        refused.with_context(|| format!("the hand-written rehearsal was not refused: {status:?}"))?;
        Ok(())
    })
}

/// Fails on the old code: the sale found the workload held by its rehearsal and nothing woke it
/// when the rehearsal let go of it (a released workload names no holder), so it waited for its
/// own next look while the workload sat at its baseline.
fn the_sale_created_while_its_rehearsal_holds_takes_over_at_once(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let cluster = env.primary()?;
        let client = client(cluster).await?;
        let ns = namespace(&client, "takeover").await?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, slow("web", "1s")?).await?;
        let before = as_written(&deployments.get("web").await?)?;
        let holder = async |deployments: &Api<Deployment>| {
            let d = deployments.get("web").await?;
            let annotations = d.metadata.annotations.unwrap_or_default();
            anyhow::Ok((annotations.get("flashsale.dev/sale").cloned(), d.spec.and_then(|s| s.replicas)))
        };
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = |peak: i32| serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": peak, "mode": "Replicas"}}]);

        // A rehearsal of a sale not written yet, holding web at 3 for minutes.
        let mut rehearsal = flash_sale("bf-rehearsal", &ns, (&at(3), &at(600)), ("2s", "0s"), workloads(3))?;
        rehearsal.spec.rehearsal = Some(serde_json::from_value(serde_json::json!({"of": "bf"}))?);
        sales.create(&PostParams::default(), &rehearsal).await?;
        let rehearsing = Some(format!("{ns}/bf-rehearsal"));
        eventually(Duration::from_secs(30), || async {
            Ok(holder(&deployments).await? == (rehearsing.clone(), Some(3)))
        })
        .await
        .context("the rehearsal never held web at 3")?;
        // Settled at peak, the rehearsal looks again only at its next boundary, minutes away.
        eventually(Duration::from_secs(30), || async {
            let r = sales.get("bf-rehearsal").await?;
            let ready = r.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            Ok(ready.is_some_and(|c| c.status == "True"))
        })
        .await
        .context("the rehearsal never became Ready at peak")?;
        tokio::time::sleep(Duration::from_secs(5)).await;

        // The real sale arrives (from Git), its span reaching into the rehearsal's.
        sales
            .create(&PostParams::default(), &flash_sale("bf", &ns, (&at(8), &at(20)), ("5s", "3s"), workloads(4))?)
            .await?;
        let created = std::time::Instant::now();
        let selling = Some(format!("{ns}/bf"));
        let taken = eventually(Duration::from_secs(25), || async {
            Ok(holder(&deployments).await? == (selling.clone(), Some(4)))
        })
        .await;
        let last = holder(&deployments).await?;
        taken
            .with_context(|| format!("the sale never took web over from its rehearsal: (holder, replicas) {last:?}"))?;
        let took = created.elapsed();
        eprintln!("takeover: the sale held web at peak {:.1} s after it was created", took.as_secs_f64());
        let r = sales.get("bf-rehearsal").await?;
        let refused = r.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        ensure!(
            refused.is_some_and(|c| c.reason == "RehearsalRefused" && c.message.contains("overlaps sale bf")),
            "the rehearsal does not say the sale took over: {refused:?}"
        );
        // The sale's record is the original, not the rehearsal's peak: nothing restored twice.
        let s = sales.get("bf").await?;
        let record = s
            .status
            .iter()
            .flat_map(|st| &st.clusters)
            .flat_map(|c| &c.originals)
            .find(|o| o.field == "replicas")
            .map(|o| o.value.clone());
        ensure!(record.as_deref() == Some("1"), "the sale recorded {record:?} as web's original, not 1");

        wait_phase(&sales, "bf", Phase::Completed, 60).await?;
        let after = as_written(&deployments.get("web").await?)?;
        ensure!(
            after == before,
            "after the sale web differs from before the rehearsal:\nbefore {before}\nafter  {after}"
        );
        Ok(())
    })
}

/// Also the flags, when the rehearsal is told to pull them: published, read back, restored.
fn a_peak_that_cannot_be_scheduled_is_named_with_its_reason_and_restored(_env: &Env) -> anyhow::Result<()> {
    // One node of 32 CPUs, pods of 20: the first fits, the peak's two others never do.
    let dir = std::env::temp_dir().join(format!("flashsale-e2e-{}-rehearse-short", std::process::id()));
    let mut cluster =
        Cluster::start(&ClusterOptions { name: "rehearse-short".into(), nodes: 1, spot_nodes: 0 }, &dir, false)?;
    cluster.install_crd(&crate::support::repo().join("crds/flashsale.dev_flashsales.yaml"))?;
    let result = block_on_value(async {
        let client = client(&cluster).await?;
        let ns = namespace(&client, "short").await?;
        let _operator = Operator::operator(&cluster, &["--watch-namespace", &ns])?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ready_deployment(&deployments, crate::support::deployment("big", 1, Some("20"))?).await?;
        let before = as_written(&deployments.get("big").await?)?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{"ref": {"kind": "Deployment", "name": "big"}, "scale": {"peak": 3, "mode": "Replicas"}}]);
        let day = 86_400;
        let mut sale = flash_sale("bf", &ns, (&at(3 * day), &at(3 * day + 3600)), ("10s", "5s"), workloads)?;
        sale.spec.degradation = Some(serde_json::from_value(serde_json::json!({
            "configMapName": "bf-flags",
            "flags": [{"name": "recommendations", "offDuring": ["Active"]}],
        }))?);
        sales.create(&PostParams::default(), &sale).await?;

        // Flags too (not by default): published for the hold, read back, then taken out again.
        let args = ["rehearse", "bf", "-n", &ns, "--hold", "5s", "--levers", "scale,flags"];
        let (ok, _, err) = cli(&cluster.kubeconfig, &args)?;
        ensure!(ok, "rehearse failed: {err}");
        wait_phase(&sales, "bf-rehearsal", Phase::Completed, 60).await?;

        let (ok, json, err) = cli(&cluster.kubeconfig, &["rehearsal", "report", "bf", "-n", &ns, "-o", "json"])?;
        ensure!(ok, "report failed: {err}");
        let report: serde_json::Value = serde_json::from_str(&json)?;
        let big = &report["workloads"][0];
        ensure!(big["timeToPeakSeconds"].is_null(), "an unreachable peak has a time-to-peak: {big}");
        let waited = big["waitedFor"].as_str().unwrap_or_default();
        ensure!(
            waited.starts_with("2 pods Pending: Unschedulable (0/1 nodes are available: 1 Insufficient cpu"),
            "the unschedulable replicas are not named with their reason: {waited:?}"
        );
        let verdict = report["verdict"].as_str().unwrap_or_default();
        ensure!(verdict.contains(&format!("Deployment {ns}/big in local (1/3 ready) never reached peak")), "{verdict}");
        let flag = &report["flags"][0];
        ensure!(
            flag["name"] == "recommendations" && flag["readBackSeconds"].as_f64().is_some_and(|s| s < 10.0),
            "the report does not say the flag was published and read back: {}",
            report["flags"]
        );
        let (_, text, _) = cli(&cluster.kubeconfig, &["rehearsal", "report", "bf", "-n", &ns])?;
        ensure!(text.contains(&format!("slowest pods waited: {waited}")), "{text}");
        ensure!(text.contains("READ BACK") && text.contains("recommendations"), "{text}");
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
        eventually(Duration::from_secs(20), || async { Ok(configmaps.get_opt("bf-flags").await?.is_none()) })
            .await
            .context("the flag ConfigMap the rehearsal created was left behind")?;

        // Everything restored: the workload as it was, the pods that never ran gone.
        let after = as_written(&deployments.get("big").await?)?;
        ensure!(after == before, "the rehearsal's restore differs:\nbefore {before}\nafter  {after}");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        eventually(Duration::from_secs(30), || async { Ok(pods.list(&Default::default()).await?.items.len() == 1) })
            .await
            .context("the unschedulable pods were not removed by the restore")?;
        Ok(())
    });
    cluster.stop();
    result
}
