//! Who wins, for flags and freezes: the sale owns its flag names and nothing else in a shared
//! flag file (an on-call edit to another flag, another team's key in a ConfigMap the sale
//! created), and a person can freeze a sale or one workload of it (no writes, changes left in
//! place, status saying since when) and unfreeze it (the hold resumes, the restore happens).

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    Client,
    api::{Api, Patch, PatchParams, PostParams},
};
use std::time::Duration;

use crate::{
    TestFn,
    support::{self, Env, Operator, at, block_on_value, client, condition, eventually, namespace},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "who_flags::an_on_call_edit_of_another_flag_is_kept_through_the_sale_and_the_restore",
        an_on_call_edit_of_another_flag_is_kept_through_the_sale_and_the_restore,
    ),
    (
        "who_flags::another_teams_key_in_a_configmap_the_sale_created_is_kept",
        another_teams_key_in_a_configmap_the_sale_created_is_kept,
    ),
    (
        "who_flags::a_frozen_sale_leaves_a_manual_change_alone_and_unfreezing_resumes_the_hold",
        a_frozen_sale_leaves_a_manual_change_alone_and_unfreezing_resumes_the_hold,
    ),
    (
        "who_flags::one_frozen_workload_is_left_alone_while_the_other_is_held",
        one_frozen_workload_is_left_alone_while_the_other_is_held,
    ),
];

const FLAGS_KEY: &str = "flags.flagd.json";
const FREEZE: &str = "flashsale.dev/freeze";

fn flag(variant: &str) -> serde_json::Value {
    serde_json::json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": variant})
}

/// Each flag's defaultVariant in a flag file.
fn variants(file: &str) -> anyhow::Result<Vec<(String, String)>> {
    let doc: serde_json::Value = serde_json::from_str(file).context("the flag file is not JSON")?;
    let flags = doc.get("flags").and_then(|f| f.as_object()).context("the flag file has no flags")?;
    Ok(flags.iter().map(|(n, f)| (n.clone(), f["defaultVariant"].as_str().unwrap_or("?").to_owned())).collect())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

async fn flags_file(cms: &Api<ConfigMap>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(cms.get_opt(name).await?.and_then(|c| c.data).and_then(|d| d.get(FLAGS_KEY).cloned()))
}

/// A person's edit of the flag file, as `kubectl edit` sends it.
async fn edit_file(cms: &Api<ConfigMap>, name: &str, edit: impl Fn(&mut serde_json::Value)) -> anyhow::Result<()> {
    let text = flags_file(cms, name).await?.context("no flag file to edit")?;
    let mut doc: serde_json::Value = serde_json::from_str(&text)?;
    edit(&mut doc);
    let patch = serde_json::json!({"data": {FLAGS_KEY: serde_json::to_string_pretty(&doc)?}});
    cms.patch(
        name,
        &PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() },
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn phase(sales: &Api<FlashSale>) -> anyhow::Result<Option<Phase>> {
    Ok(sales.get("flash").await?.status.and_then(|s| s.phase))
}

async fn wait_phase(sales: &Api<FlashSale>, want: Phase, secs: u64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(secs), || async { Ok(phase(sales).await? == Some(want)) })
        .await
        .with_context(|| format!("the sale never reached {want}"))
}

async fn setup(env: &Env, name: &str) -> anyhow::Result<(Client, String, Operator)> {
    let cluster = env.primary()?;
    let client = client(cluster).await?;
    let ns = namespace(&client, name).await?;
    let operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    Ok((client, ns, operator))
}

fn flag_sale(ns: &str, start: &str, end: &str, config_map: &str) -> anyhow::Result<FlashSale> {
    let workloads =
        serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 1, "mode": "Replicas"}}]);
    let mut s = support::flash_sale("flash", ns, (start, end), ("3s", "3s"), workloads)?;
    s.spec.degradation = Some(serde_json::from_value(serde_json::json!({
        "configMapName": config_map,
        "flags": [{"name": "recommendations", "offDuring": ["Active"]}]
    }))?);
    Ok(s)
}

fn an_on_call_edit_of_another_flag_is_kept_through_the_sale_and_the_restore(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "who-flags-edit").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &support::deployment("web", 1, None)?).await?;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let owners = serde_json::to_string_pretty(&serde_json::json!({
            "flags": {"dark-mode": flag("on"), "checkout-v2": flag("on")}
        }))?;
        let theirs: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-flags"},
            "data": {FLAGS_KEY: owners, "other.txt": "untouched"},
        }))?;
        cms.create(&PostParams::default(), &theirs).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        sales.create(&PostParams::default(), &flag_sale(&ns, &at(10), &at(22), "shop-flags")?).await?;

        wait_phase(&sales, Phase::Active, 30).await?;
        eventually(Duration::from_secs(10), || async {
            let file = flags_file(&cms, "shop-flags").await?.unwrap_or_default();
            Ok(variants(&file).is_ok_and(|v| v.contains(&("recommendations".into(), "off".into()))))
        })
        .await
        .context("the sale's flag never went off in the shared file during Active")?;

        // On-call switches another flag off during the sale.
        edit_file(&cms, "shop-flags", |doc| doc["flags"]["checkout-v2"]["defaultVariant"] = "off".into()).await?;

        // CoolingDown: the operator writes the file again (the sale's flag back on) and keeps the edit.
        wait_phase(&sales, Phase::CoolingDown, 30).await?;
        eventually(Duration::from_secs(10), || async {
            let file = flags_file(&cms, "shop-flags").await?.unwrap_or_default();
            Ok(variants(&file).is_ok_and(|v| v.contains(&("recommendations".into(), "on".into()))))
        })
        .await
        .context("the sale's flag never came back on after Active")?;
        let held = variants(&flags_file(&cms, "shop-flags").await?.context("the flag file is gone")?)?;
        ensure!(
            held == pairs(&[("checkout-v2", "off"), ("dark-mode", "on"), ("recommendations", "on")]),
            "while the sale held the file, the on-call edit was not kept: {held:?}"
        );

        wait_phase(&sales, Phase::Completed, 40).await?;
        let cm = cms.get("shop-flags").await?;
        let data = cm.data.clone().unwrap_or_default();
        let after = variants(data.get(FLAGS_KEY).context("the restore removed the owner's flag file")?)?;
        ensure!(
            after == pairs(&[("checkout-v2", "off"), ("dark-mode", "on")]),
            "after the restore the flag file should hold the owner's flags with the on-call edit and not the sale's: {after:?}"
        );
        ensure!(data.get("other.txt").map(String::as_str) == Some("untouched"), "another key changed: {data:?}");
        let annotations = cm.metadata.annotations.unwrap_or_default();
        ensure!(
            !annotations.keys().any(|k| k.starts_with("flashsale.dev/")),
            "the sale's bookkeeping is still on the ConfigMap: {annotations:?}"
        );
        let managers: Vec<String> =
            cm.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
        ensure!(
            !managers.iter().any(|m| m == "flashsale-operator"),
            "the operator still owns fields of the ConfigMap it only put back: {managers:?}"
        );
        Ok(())
    })
}

fn another_teams_key_in_a_configmap_the_sale_created_is_kept(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "who-flags-created").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &support::deployment("web", 1, None)?).await?;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        sales.create(&PostParams::default(), &flag_sale(&ns, &at(10), &at(18), "sale-flags")?).await?;

        eventually(Duration::from_secs(15), || async { Ok(flags_file(&cms, "sale-flags").await?.is_some()) })
            .await
            .context("the sale never created its flag ConfigMap")?;
        wait_phase(&sales, Phase::Active, 30).await?;
        // Another team puts a key of its own and a flag of its own into the sale's ConfigMap.
        let key = serde_json::json!({"data": {"team-b.json": "{\"limit\": 3}"}});
        cms.patch(
            "sale-flags",
            &PatchParams { field_manager: Some("team-b".into()), ..Default::default() },
            &Patch::Merge(&key),
        )
        .await?;
        edit_file(&cms, "sale-flags", |doc| doc["flags"]["team-b-banner"] = flag("on")).await?;

        wait_phase(&sales, Phase::Completed, 40).await?;
        let cm = cms.get_opt("sale-flags").await?.context("the ConfigMap was deleted with another team's key in it")?;
        let data = cm.data.clone().unwrap_or_default();
        ensure!(
            data.get("team-b.json").map(String::as_str) == Some("{\"limit\": 3}"),
            "team b's key changed: {data:?}"
        );
        let file = data.get(FLAGS_KEY).context("the flag file holding team b's flag was removed")?;
        ensure!(variants(file)? == pairs(&[("team-b-banner", "on")]), "only the sale's flag should be gone: {file}");
        let annotations = cm.metadata.annotations.unwrap_or_default();
        ensure!(
            !annotations.keys().any(|k| k.starts_with("flashsale.dev/")),
            "the sale's bookkeeping is still on the ConfigMap: {annotations:?}"
        );
        Ok(())
    })
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> anyhow::Result<Option<i32>> {
    Ok(deployments.get(name).await?.spec.and_then(|s| s.replicas))
}

/// Scales a workload by hand, as `kubectl scale` does.
async fn scale(deployments: &Api<Deployment>, name: &str, to: i32) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": to}});
    let params = PatchParams { field_manager: Some("kubectl".into()), ..Default::default() };
    deployments.patch_scale(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn annotate<K>(api: &Api<K>, name: &str, value: Option<&str>) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {"annotations": {FREEZE: value}}});
    let params = PatchParams { field_manager: Some("kubectl-annotate".into()), ..Default::default() };
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Fails if `name`'s replicas move away from `want` within `secs` (what an operator that
/// ignores the freeze does within a second of the change).
async fn stays(deployments: &Api<Deployment>, name: &str, want: i32, secs: u64) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        let now = replicas(deployments, name).await?;
        ensure!(now == Some(want), "{name} was changed while frozen: {now:?} replicas, {want} set by hand");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// How many times an Event of `reason` about the sale was published (a repeat is a series).
async fn count(client: &Client, ns: &str, reason: &str) -> anyhow::Result<i32> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("flash"))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)))
        .sum())
}

fn a_frozen_sale_leaves_a_manual_change_alone_and_unfreezing_resumes_the_hold(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "who-freeze-sale").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &support::deployment("web", 1, None)?).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3, "mode": "Replicas"}}]);
        let (start, end) = (at(8), at(45));
        sales
            .create(
                &PostParams::default(),
                &support::flash_sale("flash", &ns, (&start, &end), ("4s", "3s"), workloads)?,
            )
            .await?;

        wait_phase(&sales, Phase::Active, 30).await?;
        eventually(Duration::from_secs(15), || async { Ok(replicas(&deployments, "web").await? == Some(3)) })
            .await
            .context("web never reached its peak of 3")?;

        annotate(&sales, "flash", Some("incident 42")).await?;
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "Frozen").is_some_and(|(st, r, m)| {
                st == "True" && r == "SaleFrozen" && m.starts_with("Frozen since 20") && m.contains("incident 42")
            }))
        })
        .await
        .context("the status never said the sale is frozen and since when")?;
        let frozen_at = condition(&sales.get("flash").await?, "Frozen").map(|(_, _, m)| m).unwrap_or_default();

        // On-call scales below the sale's peak: a frozen sale leaves it there.
        scale(&deployments, "web", 1).await?;
        stays(&deployments, "web", 1, 8).await?;
        let s = sales.get("flash").await?;
        ensure!(
            condition(&s, "Frozen").map(|(_, _, m)| m) == Some(frozen_at.clone()),
            "the freeze's since moved or went: {:?}",
            condition(&s, "Frozen")
        );
        ensure!(count(&client, &ns, "Frozen").await? == 1, "the freeze is not announced exactly once");

        // Unfrozen: the hold resumes (peak again), the condition goes, and it is announced.
        annotate(&sales, "flash", None).await?;
        eventually(Duration::from_secs(10), || async { Ok(replicas(&deployments, "web").await? == Some(3)) })
            .await
            .context("unfreezing did not resume the hold (web not back at peak)")?;
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "Frozen").is_none() && count(&client, &ns, "Unfrozen").await? == 1)
        })
        .await
        .context("the status or events do not show the freeze lifted")?;

        // The restore happens at its time.
        wait_phase(&sales, Phase::Completed, 60).await?;
        ensure!(replicas(&deployments, "web").await? == Some(1), "web not restored to its 1 replica");
        ensure!(count(&client, &ns, "Frozen").await? == 1, "the freeze was announced again");
        Ok(())
    })
}

fn one_frozen_workload_is_left_alone_while_the_other_is_held(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "who-freeze-one").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        for name in ["web", "api"] {
            deployments.create(&PostParams::default(), &support::deployment(name, 1, None)?).await?;
        }
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([
            {"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3, "mode": "Replicas"}},
            {"ref": {"kind": "Deployment", "name": "api"}, "scale": {"peak": 3, "mode": "Replicas"}},
        ]);
        let (start, end) = (at(8), at(30));
        sales
            .create(
                &PostParams::default(),
                &support::flash_sale("flash", &ns, (&start, &end), ("4s", "2s"), workloads)?,
            )
            .await?;
        wait_phase(&sales, Phase::Active, 30).await?;
        eventually(Duration::from_secs(15), || async {
            Ok(replicas(&deployments, "web").await? == Some(3) && replicas(&deployments, "api").await? == Some(3))
        })
        .await
        .context("the workloads never reached their peak of 3")?;

        annotate(&deployments, "web", Some("on-call")).await?;
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            let web =
                s.status.as_ref().and_then(|st| st.clusters.first()).and_then(|c| {
                    c.workloads.iter().find(|w| w.name.ends_with("/web")).and_then(|w| w.message.clone())
                });
            Ok(web.is_some_and(|m| m.starts_with("Frozen since 20"))
                && condition(&s, "Frozen")
                    .is_some_and(|(st, r, m)| st == "True" && r == "WorkloadsFrozen" && m.contains("/web"))
                && count(&client, &ns, "Frozen").await? == 1)
        })
        .await
        .context("the status never said web is frozen and since when")?;

        // Both scaled down by hand: the held one goes back to peak, the frozen one stays.
        scale(&deployments, "web", 2).await?;
        scale(&deployments, "api", 1).await?;
        eventually(Duration::from_secs(10), || async { Ok(replicas(&deployments, "api").await? == Some(3)) })
            .await
            .context("the workload that is not frozen was not held at peak")?;
        stays(&deployments, "web", 2, 5).await?;

        // Still frozen at the end: its restore waits, the other is restored.
        wait_phase(&sales, Phase::Restoring, 40).await?;
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            Ok(replicas(&deployments, "api").await? == Some(1)
                && condition(&s, "Ready").is_some_and(|(_, _, m)| m.contains("web is frozen")))
        })
        .await
        .context("the other workload was not restored, or Ready does not say the frozen one's restore waits")?;
        stays(&deployments, "web", 2, 4).await?;
        ensure!(phase(&sales).await? == Some(Phase::Restoring), "the sale completed with a frozen workload unrestored");

        // Unfrozen: its restore happens at once.
        annotate(&deployments, "web", None).await?;
        wait_phase(&sales, Phase::Completed, 20).await?;
        // Restored once unfrozen: the sale's bookkeeping is gone, and the replicas are its original
        // or, since a person changed them mid-sale, theirs (which of the two is the restore rule's).
        let web = deployments.get("web").await?;
        let annotations = web.metadata.annotations.clone().unwrap_or_default();
        ensure!(
            !annotations.keys().any(|k| k.starts_with("flashsale.dev/") && k != FREEZE),
            "the sale's bookkeeping is still on web after unfreezing: {annotations:?}"
        );
        let restored = web.spec.and_then(|s| s.replicas);
        ensure!(
            matches!(restored, Some(1 | 2)),
            "web is at {restored:?} replicas, neither its original 1 nor the person's 2"
        );
        ensure!(count(&client, &ns, "Unfrozen").await? == 1, "lifting the freeze was not announced once");
        Ok(())
    })
}
