//! The cache warm-up lever end to end: Jobs at their lead time on kwok's nodes (kwok's
//! pod-complete stage finishes them; the project's stages in `tests/e2e/kwok-stages/` make a
//! pod fail or run for a while on request), failures in `Ready`, and nothing left after the
//! restore or a suspend, in one cluster and in two.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase, WarmupStatus};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{Pod, Secret},
};
use kube::{
    Client,
    api::{Api, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use std::time::Duration;

use crate::{
    TestFn,
    support::{Env, Operator, at, block_on_value, client, condition, events, eventually, namespace, namespace_named},
    timeline::{reconciles, requests},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "warmup::jobs_run_at_their_lead_time_once_across_a_restart_and_are_gone_after_the_restore",
        jobs_run_at_their_lead_time_once_across_a_restart_and_are_gone_after_the_restore,
    ),
    (
        "warmup::a_failed_required_warmup_blocks_ready_until_fixed_and_an_optional_one_only_warns",
        a_failed_required_warmup_blocks_ready_until_fixed_and_an_optional_one_only_warns,
    ),
    (
        "warmup::a_late_sale_warms_up_at_once_and_suspending_it_removes_jobs_and_pods",
        a_late_sale_warms_up_at_once_and_suspending_it_removes_jobs_and_pods,
    ),
    ("warmup::two_clusters_warm_up_and_clean_up_at_once", two_clusters_warm_up_and_clean_up_at_once),
];

/// Pod annotations read by the project's kwok stages.
const FAIL: &str = "e2e.flashsale.dev/fail";
const RUN_FOR: &str = "e2e.flashsale.dev/run-for";

/// A `cacheWarm[]` entry whose pods carry `pod_annotations`; no retries, so a failure is final.
fn warm(name: &str, start_before: &str, required: bool, pod_annotations: Value) -> Value {
    json!({
        "name": name,
        "startBefore": start_before,
        "required": required,
        "template": {
            "metadata": {"labels": {"team": "cache"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"annotations": pod_annotations},
                    "spec": {
                        "containers": [{"name": "warm", "image": "registry.example/cache-warmer:1"}],
                        "restartPolicy": "Never"
                    }
                }
            }
        }
    })
}

fn sale(
    ns: &str,
    (start, end): (&str, &str),
    (prepare, cooldown): (&str, &str),
    warm: Value,
) -> anyhow::Result<FlashSale> {
    let workloads = json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 1, "mode": "Replicas"}}]);
    let mut sale = crate::support::flash_sale("flash", ns, (start, end), (prepare, cooldown), workloads)?;
    sale.spec.cache_warm = serde_json::from_value(warm)?;
    Ok(sale)
}

async fn web(client: &Client, ns: &str) -> anyhow::Result<()> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), &deployment).await?;
    Ok(())
}

async fn setup(env: &Env, name: &str) -> anyhow::Result<(Client, String, Operator)> {
    let cluster = env.primary()?;
    let client = client(cluster).await?;
    let ns = namespace(&client, name).await?;
    web(&client, &ns).await?;
    let operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    Ok((client, ns, operator))
}

fn is_true(sale: &FlashSale, type_: &str) -> bool {
    condition(sale, type_).is_some_and(|(s, _, _)| s == "True")
}

/// The warm-ups the status shows for `cluster`.
fn warmups(sale: &FlashSale, cluster: &str) -> Vec<WarmupStatus> {
    sale.status
        .as_ref()
        .and_then(|s| s.clusters.iter().find(|c| c.name == cluster))
        .map(|c| c.warmups.clone())
        .unwrap_or_default()
}

fn warmup(sale: &FlashSale, cluster: &str, name: &str) -> Option<WarmupStatus> {
    warmups(sale, cluster).into_iter().find(|w| w.name == name)
}

/// The Jobs and pods of the sale `flash` in `ns`, by the labels the operator puts on them.
async fn jobs_and_pods(client: &Client, ns: &str, warm: Option<&str>) -> anyhow::Result<(Vec<Job>, Vec<Pod>)> {
    let mut selector = "flashsale.dev/sale-name=flash".to_owned();
    if let Some(warm) = warm {
        selector.push_str(&format!(",flashsale.dev/warmup={warm}"));
    }
    let params = ListParams::default().labels(&selector);
    let jobs = Api::<Job>::namespaced(client.clone(), ns).list(&params).await?.items;
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&params).await?.items;
    Ok((jobs, pods))
}

async fn wait_gone(client: &Client, ns: &str, what: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), || async {
        let (jobs, pods) = jobs_and_pods(client, ns, None).await?;
        Ok(jobs.is_empty() && pods.is_empty())
    })
    .await
    .with_context(|| format!("warm-up Jobs or pods remain {what}"))
}

async fn wait_phase(sales: &Api<FlashSale>, want: Phase, secs: u64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(secs), || async {
        Ok(sales.get("flash").await?.status.and_then(|s| s.phase) == Some(want))
    })
    .await
    .with_context(|| format!("the sale never reached {want}"))
}

fn jobs_run_at_their_lead_time_once_across_a_restart_and_are_gone_after_the_restore(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, mut operator) = setup(env, "warm-lead").await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let (start, end) = (at(14), at(22));
        // product-cache is due 8 s before the start, before Preparing (4 s before): the sale is
        // still Scheduled then. It runs for 4 s, long enough to restart the operator mid-run.
        let entries =
            json!([warm("product-cache", "8s", true, json!({RUN_FOR: "4s"})), warm("search", "2s", false, json!({})),]);
        sales.create(&PostParams::default(), &sale(&ns, (&start, &end), ("4s", "2s"), entries)?).await?;
        let start_ts: jiff::Timestamp = start.parse()?;
        let due = start_ts - jiff::SignedDuration::from_secs(8);

        eventually(Duration::from_secs(20), || async {
            Ok(!jobs_and_pods(&client, &ns, Some("product-cache")).await?.0.is_empty())
        })
        .await
        .context("the product-cache Job was never created")?;
        let (jobs, _) = jobs_and_pods(&client, &ns, Some("product-cache")).await?;
        let job = jobs.first().context("no Job")?;
        let created = job.metadata.creation_timestamp.as_ref().context("no creationTimestamp")?.0;
        // creationTimestamp has whole seconds (truncated): a Job created before its due time
        // shows a second before it.
        ensure!(created >= due, "created at {created}, before its lead time {due}");
        ensure!(
            created.duration_since(due) <= jiff::SignedDuration::from_secs(2),
            "created at {created}, more than 2 s after its lead time {due}"
        );
        let s = sales.get("flash").await?;
        ensure!(
            s.status.as_ref().and_then(|st| st.phase) == Some(Phase::Scheduled),
            "the Job is due before Preparing, yet the sale is {:?}",
            s.status.as_ref().and_then(|st| st.phase)
        );
        let name = job.metadata.name.clone().context("no name")?;
        ensure!(name.starts_with("flash-warm-product-cache-") && name.len() <= 63, "Job name {name}");
        let labels = job.metadata.labels.clone().unwrap_or_default();
        for (k, v) in [
            ("flashsale.dev/sale-name", "flash"),
            ("flashsale.dev/sale-namespace", ns.as_str()),
            ("flashsale.dev/warmup", "product-cache"),
            ("team", "cache"),
        ] {
            ensure!(labels.get(k).map(String::as_str) == Some(v), "label {k} on {name}: {labels:?}");
        }
        let annotations = job.metadata.annotations.clone().unwrap_or_default();
        ensure!(
            annotations.get("flashsale.dev/sale") == Some(&format!("{ns}/flash")),
            "sale annotation on {name}: {annotations:?}"
        );
        let spec = job.spec.as_ref().context("no Job spec")?;
        let deadline = spec.active_deadline_seconds.context("no activeDeadlineSeconds default")?;
        ensure!(deadline == 60, "a Job due 8 s before the start gets the 60 s minimum, not {deadline}");

        // A crash mid-run and a restart: still exactly one Job per warm-up.
        eventually(Duration::from_secs(10), || async {
            Ok(warmup(&sales.get("flash").await?, "local", "product-cache").is_some_and(|w| w.state == "Running"))
        })
        .await
        .context("product-cache never showed Running")?;
        operator.kill()?;
        let cluster = env.primary()?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;

        eventually(Duration::from_secs(25), || async {
            let s = sales.get("flash").await?;
            Ok(is_true(&s, "CacheWarmed") && is_true(&s, "Ready"))
        })
        .await
        .context("CacheWarmed and Ready never both True")?;
        let s = sales.get("flash").await?;
        for entry in ["product-cache", "search"] {
            let w = warmup(&s, "local", entry).with_context(|| format!("{entry} not in status"))?;
            ensure!(w.state == "Succeeded", "{entry}: {w:?}");
            let (started, completed) = (
                w.start_time.as_ref().with_context(|| format!("{entry}: no start time"))?.0,
                w.completion_time.as_ref().with_context(|| format!("{entry}: no completion time"))?.0,
            );
            ensure!(started <= completed, "{entry}: started {started}, completed {completed}");
            ensure!(w.job.as_deref().is_some_and(|j| j.starts_with(&format!("flash-warm-{entry}-"))), "{w:?}");
            let (jobs, _) = jobs_and_pods(&client, &ns, Some(entry)).await?;
            ensure!(jobs.len() == 1, "{} Jobs for {entry} after a restart", jobs.len());
        }
        let (_, reason, _) = condition(&s, "CacheWarmed").context("no CacheWarmed")?;
        ensure!(reason == "Warmed", "CacheWarmed reason {reason}");
        let (product_run, _) = jobs_and_pods(&client, &ns, Some("product-cache")).await?;
        ensure!(
            product_run.first().and_then(|j| j.metadata.name.clone()) == Some(name.clone()),
            "the product-cache Job was replaced"
        );
        let reasons: Vec<String> = events(&client, &ns, "flash").await?.into_iter().map(|(r, _)| r).collect();
        for wanted in ["WarmupStarted", "WarmupSucceeded"] {
            ensure!(reasons.iter().any(|r| r == wanted), "no {wanted} event: {reasons:?}");
        }

        wait_phase(&sales, Phase::Completed, 30).await?;
        wait_gone(&client, &ns, "after the restore").await?;
        let s = sales.get("flash").await?;
        // The Jobs are gone; what each did stays in status, for the report and the post-mortem.
        let kept: Vec<(String, String)> =
            warmups(&s, "local").iter().map(|w| (w.name.clone(), w.state.clone())).collect();
        ensure!(
            kept.len() == 2 && kept.iter().all(|(_, state)| state == "Succeeded"),
            "Completed does not keep what the warm-ups did: {kept:?}"
        );
        let reasons: Vec<String> = events(&client, &ns, "flash").await?.into_iter().map(|(r, _)| r).collect();
        ensure!(reasons.iter().any(|r| r == "WarmupCleanedUp"), "no WarmupCleanedUp event: {reasons:?}");
        Ok(())
    })
}

fn a_failed_required_warmup_blocks_ready_until_fixed_and_an_optional_one_only_warns(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, operator) = setup(env, "warm-fail").await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let entries =
            json!([warm("must", "3s", true, json!({FAIL: "true"})), warm("nice", "3s", false, json!({FAIL: "true"})),]);
        sales.create(&PostParams::default(), &sale(&ns, (&at(6), &at(40)), ("5s", "2s"), entries)?).await?;

        eventually(Duration::from_secs(25), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "Ready").is_some_and(|(st, r, _)| st == "False" && r == "WarmupFailed"))
        })
        .await
        .context("Ready never showed WarmupFailed")?;
        let s = sales.get("flash").await?;
        let (_, _, message) = condition(&s, "Ready").context("no Ready")?;
        ensure!(
            message.contains("warm-up must") && message.contains("BackoffLimitExceeded"),
            "Ready does not name the failed warm-up and the Job's reason: {message}"
        );
        ensure!(message.contains("delete the Job to run it again"), "Ready does not say how to retry: {message}");
        let (status, reason, message) = condition(&s, "CacheWarmed").context("no CacheWarmed")?;
        ensure!(status == "False" && reason == "WarmupFailed", "CacheWarmed: {status} {reason} {message}");
        ensure!(message.contains("delete the Job to run it again"), "CacheWarmed does not say how to retry: {message}");
        let must = warmup(&s, "local", "must").context("must not in status")?;
        ensure!(must.state == "Failed" && must.reason.as_deref() == Some("BackoffLimitExceeded"), "must: {must:?}");
        ensure!(must.completion_time.is_some(), "a failed Job shows when it failed: {must:?}");
        eventually(Duration::from_secs(10), || async {
            Ok(warmup(&sales.get("flash").await?, "local", "nice").is_some_and(|w| w.state == "Failed"))
        })
        .await
        .context("the optional warm-up never showed Failed")?;
        let list = events(&client, &ns, "flash").await?;
        for entry in ["must", "nice"] {
            ensure!(
                list.iter().any(|(r, note)| r == "WarmupFailed" && note.contains(&format!("warm-up {entry} "))),
                "no WarmupFailed event for {entry}: {list:?}"
            );
        }
        let warnings = warning_events(&client, &ns).await?;
        ensure!(
            warnings.iter().any(|(r, note)| r == "WarmupFailed" && note.contains("BackoffLimitExceeded")),
            "no Warning event with the Job's reason: {warnings:?}"
        );
        let old_job = must.job.clone().context("must has no Job")?;

        // Deleting the failed Job runs it again under the same name (and here fails again).
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let first_uid = jobs.get(&old_job).await?.metadata.uid;
        jobs.delete(&old_job, &kube::api::DeleteParams::background()).await?;
        eventually(Duration::from_secs(15), || async {
            let again = jobs.get_opt(&old_job).await?;
            Ok(again.is_some_and(|j| {
                j.metadata.uid != first_uid
                    && j.status.and_then(|s| s.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Failed"))
            }))
        })
        .await
        .context("the deleted Job was not run again")?;
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "Ready")
                .is_some_and(|(st, r, m)| st == "False" && r == "WarmupFailed" && m.contains("must"))
                && warmup(&s, "local", "must").is_some_and(|w| w.state == "Failed"))
        })
        .await
        .context("Ready does not show the re-run failing too")?;

        // The SRE fixes the template: a new Job runs, the failed one goes, the sale is Ready
        // with the optional failure still named.
        let fixed = json!([warm("must", "3s", true, json!({})), warm("nice", "3s", false, json!({FAIL: "true"})),]);
        sales.patch("flash", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cacheWarm": fixed}}))).await?;
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(is_true(&s, "Ready") && is_true(&s, "CacheWarmed"))
        })
        .await
        .context("fixing the required warm-up did not make the sale Ready")?;
        let s = sales.get("flash").await?;
        let (_, reason, message) = condition(&s, "CacheWarmed").context("no CacheWarmed")?;
        ensure!(
            reason == "OptionalWarmupFailed" && message.contains("nice"),
            "CacheWarmed hides the optional failure: {reason} {message}"
        );
        let must = warmup(&s, "local", "must").context("must not in status")?;
        ensure!(must.state == "Succeeded" && must.job.as_ref() != Some(&old_job), "must after the fix: {must:?}");
        let (jobs, _) = jobs_and_pods(&client, &ns, Some("must")).await?;
        let names: Vec<String> = jobs.iter().filter_map(|j| j.metadata.name.clone()).collect();
        eventually(Duration::from_secs(10), || async {
            let (jobs, _) = jobs_and_pods(&client, &ns, Some("must")).await?;
            Ok(jobs.iter().all(|j| j.metadata.name.as_ref() != Some(&old_job)))
        })
        .await
        .with_context(|| format!("the failed Job {old_job} was not removed: {names:?}"))?;

        // Settled: a reconcile with every warm-up finished writes nothing (no outcome is
        // announced again, no status change).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, before) = operator.get("/metrics")?;
        for i in 0..3 {
            let poke = json!({"metadata": {"annotations": {"e2e/poke": i.to_string()}}});
            sales.patch("flash", &PatchParams::default(), &Patch::Merge(poke)).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let (_, now) = operator.get("/metrics")?;
            if reconciles(&now) >= reconciles(&before) + 3 {
                break now;
            }
            ensure!(std::time::Instant::now() < deadline, "the pokes did not trigger reconciles");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let writes = ["create", "update", "patch", "delete"];
        let sent = requests(&after, &writes) - requests(&before, &writes);
        ensure!(sent == 0, "{sent} write requests while the warm-ups had all finished");

        // Deleting the sale removes its Jobs and their pods before the finalizer lets go.
        sales.delete("flash", &Default::default()).await?;
        eventually(Duration::from_secs(20), || async { Ok(sales.get_opt("flash").await?.is_none()) })
            .await
            .context("the deleted sale was never released")?;
        let (jobs, pods) = jobs_and_pods(&client, &ns, None).await?;
        ensure!(
            jobs.is_empty() && pods.is_empty(),
            "{} Job(s) and {} pod(s) remain after the sale was deleted",
            jobs.len(),
            pods.len()
        );
        Ok(())
    })
}

/// (reason, note) of the Warning events about the sale.
async fn warning_events(client: &Client, ns: &str) -> anyhow::Result<Vec<(String, String)>> {
    use k8s_openapi::api::events::v1::Event;
    let list = Api::<Event>::namespaced(client.clone(), ns).list(&Default::default()).await?.items;
    Ok(list
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("flash"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

fn a_late_sale_warms_up_at_once_and_suspending_it_removes_jobs_and_pods(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "warm-late").await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        // Due 30 s before a start 10 s away: 20 s late at creation. It runs a minute.
        let entries = json!([warm("product-cache", "30s", true, json!({RUN_FOR: "60s"}))]);
        sales.create(&PostParams::default(), &sale(&ns, (&at(10), &at(40)), ("5s", "2s"), entries)?).await?;
        eventually(Duration::from_secs(10), || async {
            let (jobs, pods) = jobs_and_pods(&client, &ns, None).await?;
            Ok(jobs.len() == 1
                && pods.iter().any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        })
        .await
        .context("the late warm-up never ran")?;
        let list = events(&client, &ns, "flash").await?;
        ensure!(
            list.iter().any(|(r, note)| r == "WarmupStarted" && note.contains("late")),
            "the start does not say it is late: {list:?}"
        );
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "CacheWarmed")
                .is_some_and(|(st, r, m)| st == "False" && r == "Warming" && m.contains("started late")))
        })
        .await
        .context("CacheWarmed does not show the late warm-up running")?;

        sales.patch("flash", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await?;
        wait_gone(&client, &ns, "after the suspend").await?;
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            Ok(s.status.as_ref().and_then(|st| st.phase) == Some(Phase::Suspended) && is_true(&s, "Ready"))
        })
        .await
        .context("the suspended sale never reported everything restored")?;
        // Suspended: nothing is started again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (jobs, _) = jobs_and_pods(&client, &ns, None).await?;
        ensure!(jobs.is_empty(), "a suspended sale re-created {} Job(s)", jobs.len());
        Ok(())
    })
}

async fn kubeconfig_secret(client: &Client, ns: &str, name: &str, kubeconfig: &str) -> anyhow::Result<()> {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"kubeconfig": kubeconfig}}))?;
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await?;
    Ok(())
}

fn two_clusters_warm_up_and_clean_up_at_once(env: &Env) -> anyhow::Result<()> {
    let primary = env.primary()?;
    let secondary = env.secondary()?;
    block_on_value(async {
        let client = client(primary).await?;
        let remote = crate::support::client(secondary).await?;
        let ns = namespace(&client, "warm-two").await?;
        namespace_named(&remote, &ns).await?;
        web(&client, &ns).await?;
        web(&remote, &ns).await?;
        kubeconfig_secret(&client, &ns, "here", &std::fs::read_to_string(&primary.kubeconfig)?).await?;
        // The operator is a plain user there, with only the rights the chart's mode remote grants.
        let (_, there) = crate::support::remote_identity(secondary, &[&ns])?;
        kubeconfig_secret(&client, &ns, "there", &there).await?;
        let _operator = Operator::operator(primary, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let entries = json!([warm("product-cache", "4s", true, json!({RUN_FOR: "2s"}))]);
        let mut s = sale(&ns, (&at(8), &at(16)), ("4s", "2s"), entries)?;
        s.spec.clusters = serde_json::from_value(json!([
            {"name": "here", "kubeconfigSecretRef": {"name": "here"}},
            {"name": "there", "kubeconfigSecretRef": {"name": "there"}},
        ]))?;
        sales.create(&PostParams::default(), &s).await?;

        eventually(Duration::from_secs(25), || async {
            let s = sales.get("flash").await?;
            let done = |c: &str| warmup(&s, c, "product-cache").is_some_and(|w| w.state == "Succeeded");
            Ok(done("here") && done("there") && is_true(&s, "CacheWarmed") && is_true(&s, "Ready"))
        })
        .await
        .context("the warm-up did not succeed in both clusters")?;
        let s = sales.get("flash").await?;
        let (here, there) = (
            warmup(&s, "here", "product-cache").and_then(|w| w.job),
            warmup(&s, "there", "product-cache").and_then(|w| w.job),
        );
        ensure!(here.is_some() && here == there, "the same sale names its Job the same everywhere: {here:?} {there:?}");
        for (cluster, c) in [("here", &client), ("there", &remote)] {
            let (jobs, _) = jobs_and_pods(c, &ns, None).await?;
            ensure!(jobs.len() == 1, "{} Jobs in cluster {cluster}", jobs.len());
        }

        wait_phase(&sales, Phase::Completed, 30).await?;
        wait_gone(&client, &ns, "in cluster here after the restore").await?;
        wait_gone(&remote, &ns, "in cluster there after the restore").await?;
        Ok(())
    })
}
