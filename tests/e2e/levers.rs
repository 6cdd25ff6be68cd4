//! The workload levers end to end: probe timings before the scale-up, HPA bounds, clear
//! refusals that change nothing, and a peak that is not reached in time.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler};
use kube::{
    Client,
    api::{Api, PostParams},
};
use std::time::Duration;

use crate::{
    TestFn,
    support::{
        Env, Operator, as_written, at, block_on_value, client, condition, event_notes, eventually, namespace,
        wait_phase,
    },
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "levers::probes_change_before_the_scale_up_and_come_back_field_for_field",
        probes_change_before_the_scale_up_and_come_back_field_for_field,
    ),
    ("levers::hpa_bounds_are_raised_and_restored_exactly", hpa_bounds_are_raised_and_restored_exactly),
    ("levers::bad_targets_are_explained_and_nothing_changes", bad_targets_are_explained_and_nothing_changes),
    ("levers::peak_not_reached_in_time_is_a_warning", peak_not_reached_in_time_is_a_warning),
    ("levers::preflight_warns_days_ahead", preflight_warns_days_ahead),
    ("levers::cronhpa_scales_on_time_even_with_the_operator_down", cronhpa_scales_on_time_even_with_the_operator_down),
    ("levers::statefulsets_scale_and_restore_too", statefulsets_scale_and_restore_too),
];

fn web(name: &str, replicas: i32, cpu: &str) -> anyhow::Result<Deployment> {
    let probe = |path: &str| serde_json::json!({"httpGet": {"path": path, "port": 8080}, "periodSeconds": 10, "failureThreshold": 3});
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": {"team": "checkout"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "app", "image": "registry.example/web:1", "resources": {"requests": {"cpu": cpu}},
                     "livenessProbe": probe("/healthz"), "readinessProbe": probe("/ready")},
                    {"name": "proxy", "image": "registry.example/proxy:1"}
                ]}
            }
        }
    }))?)
}

fn sale(name: &str, ns: &str, start: &str, end: &str, workloads: serde_json::Value) -> anyhow::Result<FlashSale> {
    crate::support::flash_sale(name, ns, (start, end), ("5s", "3s"), workloads)
}

async fn phase(sales: &Api<FlashSale>, name: &str) -> anyhow::Result<Option<Phase>> {
    Ok(sales.get(name).await?.status.and_then(|s| s.phase))
}

async fn setup(env: &Env, name: &str) -> anyhow::Result<(Client, String, Operator)> {
    let cluster = env.primary()?;
    let client = client(cluster).await?;
    let ns = namespace(&client, name).await?;
    let operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    Ok((client, ns, operator))
}

fn probes_change_before_the_scale_up_and_come_back_field_for_field(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "probes").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &web("web", 2, "100m")?).await?;
        eventually(Duration::from_secs(60), || async {
            Ok(deployments.get("web").await?.status.and_then(|s| s.ready_replicas) == Some(2))
        })
        .await?;
        let before = as_written(&deployments.get("web").await?)?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{
            "ref": {"kind": "Deployment", "name": "web"},
            "scale": {"peak": 4, "mode": "Replicas"},
            "probes": {"container": "app",
                       "liveness": {"periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 6},
                       "readiness": {"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 1}}
        }]);
        sales.create(&PostParams::default(), &sale("flash", &ns, &at(7), &at(20), workloads)?).await?;

        eventually(Duration::from_secs(30), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "ProbesApplied").is_some_and(|(st, _, _)| st == "True")
                && condition(&s, "Ready").is_some_and(|(st, _, _)| st == "True"))
        })
        .await
        .context("probes never applied and peak never ready")?;
        let during = deployments.get("web").await?;
        let spec = during.spec.as_ref().context("no spec")?;
        ensure!(spec.replicas == Some(4), "not at peak: {:?}", spec.replicas);
        let app = spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.containers.iter().find(|c| c.name == "app"))
            .context("no app")?;
        let readiness = app.readiness_probe.as_ref().context("readiness probe gone")?;
        let liveness = app.liveness_probe.as_ref().context("liveness probe gone")?;
        ensure!(
            (readiness.period_seconds, readiness.timeout_seconds, readiness.failure_threshold)
                == (Some(2), Some(1), Some(1)),
            "readiness timings: {readiness:?}"
        );
        ensure!(
            (liveness.period_seconds, liveness.timeout_seconds, liveness.failure_threshold)
                == (Some(20), Some(5), Some(6)),
            "liveness timings: {liveness:?}"
        );
        ensure!(
            readiness.http_get.as_ref().map(|h| h.path.as_deref()) == Some(Some("/ready")),
            "the readiness handler changed: {readiness:?}"
        );
        // Ordering: the probe change is an event before the scale-up.
        let notes = event_notes(&client, &ns, "flash").await?;
        let probes_at =
            notes.iter().position(|n| n.contains("applied the sale's probe timings")).context("no probe event")?;
        let scale_at = notes.iter().position(|n| n.contains("scaled Deployment")).context("no scale event")?;
        ensure!(probes_at < scale_at, "scaled before the probes rolled out: {notes:?}");

        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        eventually(Duration::from_secs(20), || async { Ok(as_written(&deployments.get("web").await?)? == before) })
            .await
            .context("web is not field-for-field what it was before the sale")?;
        Ok(())
    })
}

fn hpa_bounds_are_raised_and_restored_exactly(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "hpa").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &web("web", 2, "100m")?).await?;
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
        let hpa_before = hpas.get("web").await?.spec;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 8}}]);
        sales.create(&PostParams::default(), &sale("flash", &ns, &at(6), &at(18), workloads)?).await?;

        eventually(Duration::from_secs(30), || async {
            let h = hpas.get("web").await?;
            let d = deployments.get("web").await?;
            Ok(h.spec.min_replicas == Some(8)
                && h.spec.max_replicas == 8
                && d.status.and_then(|s| s.ready_replicas) >= Some(8))
        })
        .await
        .context("the HPA never raised web to 8 ready replicas")?;
        let s = sales.get("flash").await?;
        let mode = s
            .status
            .as_ref()
            .and_then(|st| st.clusters.first())
            .and_then(|c| c.workloads.first())
            .and_then(|w| w.mode.clone());
        ensure!(mode.as_deref() == Some("HPA (web)"), "Auto picked {mode:?}");
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            let w = s.status.and_then(|st| st.clusters.into_iter().next()).and_then(|c| c.workloads.into_iter().next());
            Ok(w.is_some_and(|w| {
                w.peak_reached_time.is_some() && w.baseline_replicas == Some(2) && w.target_replicas == Some(8)
            }))
        })
        .await
        .context("status does not show baseline, target and when peak was reached")?;

        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        let h = hpas.get("web").await?;
        ensure!(h.spec == hpa_before, "HPA bounds not restored: {:?} vs {:?}", h.spec, hpa_before);
        ensure!(
            !h.metadata.annotations.unwrap_or_default().keys().any(|k| k.starts_with("flashsale.dev/")),
            "bookkeeping left on the HPA"
        );
        // The bounds put back are nobody's: the operator no longer owns them.
        let managers: Vec<String> =
            h.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
        ensure!(
            !managers.iter().any(|m| m == "flashsale-operator"),
            "the operator still owns HPA fields: {managers:?}"
        );
        eventually(Duration::from_secs(20), || async {
            Ok(deployments.get("web").await?.spec.and_then(|s| s.replicas) == Some(2))
        })
        .await
        .context("web never came back to 2 replicas")?;
        Ok(())
    })
}

fn bad_targets_are_explained_and_nothing_changes(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "refusals").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &web("web", 1, "100m")?).await?;
        deployments.create(&PostParams::default(), &web("scaled", 1, "100m")?).await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "scaled"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"}, "minReplicas": 1, "maxReplicas": 3}
        }))?;
        hpas.create(&PostParams::default(), &hpa).await?;
        let before_web = as_written(&deployments.get("web").await?)?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let cases = [
            (
                "missing",
                serde_json::json!([{"ref": {"kind": "Deployment", "name": "nope"}, "scale": {"peak": 3}}]),
                "Deployment {ns}/nope not found",
            ),
            (
                "container",
                serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3},
                "probes": {"container": "nginx", "readiness": {"periodSeconds": 2}}}]),
                "container \"nginx\" not found",
            ),
            (
                "fight",
                serde_json::json!([{"ref": {"kind": "Deployment", "name": "scaled"}, "scale": {"peak": 5, "mode": "Replicas"}}]),
                "HorizontalPodAutoscaler scaled governs it",
            ),
            (
                "nohpa",
                serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 5, "mode": "HPA"}}]),
                "no HorizontalPodAutoscaler targets it",
            ),
        ];
        // Active right away: each would act now if it could.
        for (name, workloads, _) in &cases {
            sales.create(&PostParams::default(), &sale(name, &ns, &at(1), &at(600), workloads.clone())?).await?;
        }
        for (name, _, expected) in &cases {
            let expected = expected.replace("{ns}", &ns);
            eventually(Duration::from_secs(20), || async {
                let s = sales.get(name).await?;
                Ok(condition(&s, "Ready").is_some_and(|(st, _, m)| st == "False" && m.contains(&expected)))
            })
            .await
            .with_context(|| format!("sale {name}: Ready does not say {expected:?}"))?;
            // Events are published just after the status that says the same.
            let said = eventually(Duration::from_secs(10), || async {
                Ok(event_notes(&client, &ns, name).await?.iter().any(|n| n.contains(&expected)))
            })
            .await;
            if said.is_err() {
                let notes = event_notes(&client, &ns, name).await?;
                anyhow::bail!("sale {name}: no event says {expected:?}: {notes:?}");
            }
        }
        ensure!(as_written(&deployments.get("web").await?)? == before_web, "web was changed by a refused sale");
        ensure!(deployments.get("scaled").await?.spec.and_then(|s| s.replicas) == Some(1), "scaled was changed");
        ensure!(hpas.get("scaled").await?.spec.max_replicas == 3, "the HPA was changed");
        Ok(())
    })
}

fn peak_not_reached_in_time_is_a_warning(env: &Env) -> anyhow::Result<()> {
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "short").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        // 20 CPUs each: at most one per 32-CPU node fits, far fewer than 40.
        deployments.create(&PostParams::default(), &web("huge", 1, "20")?).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{"ref": {"kind": "Deployment", "name": "huge"}, "scale": {"peak": 40}}]);
        sales.create(&PostParams::default(), &sale("flash", &ns, &at(4), &at(600), workloads)?).await?;
        wait_phase(&sales, "flash", Phase::Active, 20).await?;
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "Ready").is_some_and(|(st, r, m)| {
                st == "False"
                    && r == "NotReady"
                    && m.contains(&format!("Deployment {ns}/huge has"))
                    && m.contains("/40 replicas ready")
                    && m.contains("short")
            }))
        })
        .await
        .context("Ready does not name the short workload")?;
        let notes = event_notes(&client, &ns, "flash").await?;
        ensure!(notes.iter().any(|n| n.contains("/40 replicas ready")), "no warning event: {notes:?}");
        Ok(())
    })
}

fn preflight_warns_days_ahead(env: &Env) -> anyhow::Result<()> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Patch, PatchParams};
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "preflight").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &web("web", 1, "1")?).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        // Three days ahead; 500 pods of 1 CPU cannot fit on the test nodes.
        let workloads = serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 500}}]);
        sales
            .create(&PostParams::default(), &sale("flash", &ns, &at(3 * 86400), &at(3 * 86400 + 3600), workloads)?)
            .await?;
        let warned = |pdb: bool| {
            let sales = sales.clone();
            let ns = ns.clone();
            async move {
                let s = sales.get("flash").await?;
                Ok::<bool, anyhow::Error>(condition(&s, "Ready").is_some_and(|(st, r, m)| {
                    st == "True"
                        && r == "PreflightWarnings"
                        && m.contains("500 CPU requested against")
                        && m.contains(&format!("Deployment {ns}/web has no PodDisruptionBudget")) == pdb
                }))
            }
        };
        eventually(Duration::from_secs(20), || warned(true)).await.context("no preflight warnings")?;
        let notes = event_notes(&client, &ns, "flash").await?;
        ensure!(notes.iter().any(|n| n.contains("no PodDisruptionBudget")), "no warning event: {notes:?}");
        let deployment = deployments.get("web").await?;
        ensure!(deployment.spec.and_then(|s| s.replicas) == Some(1), "preflight changed the workload");

        // Fix one risk; the next preflight pass (here forced by touching the sale) drops it.
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}
        }))?;
        pdbs.create(&PostParams::default(), &pdb).await?;
        let poke = serde_json::json!({"metadata": {"annotations": {"e2e/poke": "1"}}});
        sales.patch("flash", &PatchParams::default(), &Patch::Merge(poke)).await?;
        eventually(Duration::from_secs(20), || warned(false)).await.context("the PDB warning stayed")?;
        Ok(())
    })
}

fn cronhpa_scales_on_time_even_with_the_operator_down(_env: &Env) -> anyhow::Result<()> {
    use crate::harness::{Cluster, ClusterOptions, cronhpa::CronHpaController};
    use kube::{api::DynamicObject, discovery::ApiResource};
    // A cluster of its own with Alibaba's CronHPA controller running in Asia/Shanghai, as on ACK.
    let dir = std::env::temp_dir().join(format!("flashsale-e2e-{}-cron", std::process::id()));
    let mut cluster = Cluster::start(&ClusterOptions { name: "cron".into(), nodes: 2, spot_nodes: 0 }, &dir, false)?;
    cluster.install_crd(&crate::support::repo().join("crds/flashsale.dev_flashsales.yaml"))?;
    let _cron = CronHpaController::start(&cluster, "Asia/Shanghai")?;
    block_on_value(async {
        let client = client(&cluster).await?;
        let ns = namespace(&client, "cron").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &web("web", 2, "100m")?).await?;
        let before = as_written(&deployments.get("web").await?)?;
        let mut operator = Operator::operator(&cluster, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        // The preparation boundary is 25 s away: room for the checks below on a loaded machine
        // (preflight first asks the API server for every right the sale needs).
        let (start, end) = (at(30), at(40));
        let mut s = sale(
            "flash",
            &ns,
            &start,
            &end,
            serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 4}}]),
        )?;
        s.spec.cron_hpa_time_zone = "Asia/Shanghai".into();
        sales.create(&PostParams::default(), &s).await?;

        // Scheduled: Auto picked CronHPA and rendered run-once jobs in the controller's zone.
        let resource = ApiResource {
            group: "autoscaling.alibabacloud.com".into(),
            version: "v1beta1".into(),
            api_version: "autoscaling.alibabacloud.com/v1beta1".into(),
            kind: "CronHorizontalPodAutoscaler".into(),
            plural: "cronhorizontalpodautoscalers".into(),
        };
        let crons: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        let name = "fs-flash-deployment-web";
        eventually(Duration::from_secs(15), || async { Ok(crons.get_opt(name).await?.is_some()) })
            .await
            .context("no CronHPA object while Scheduled")?;
        let cron = crons.get(name).await?;
        let prepare_at: jiff::Timestamp = start.parse::<jiff::Timestamp>()? - jiff::SignedDuration::from_secs(5);
        let shanghai = prepare_at
            .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai")?)
            .strftime("@date %Y-%m-%d %H:%M:%S")
            .to_string();
        let jobs = cron.data.pointer("/spec/jobs").cloned().unwrap_or_default();
        ensure!(
            jobs.as_array().is_some_and(|j| j.iter().any(|job| job["name"] == "scale-up"
                && job["schedule"] == shanghai.as_str()
                && job["targetSize"] == 4
                && job["runOnce"] == true)),
            "scale-up job is not `{shanghai}` to 4: {jobs}"
        );
        // The status write follows the pass that created the CronHPA.
        wait_phase(&sales, "flash", Phase::Scheduled, 10).await.context("not Scheduled any more")?;

        // The operator goes down before the boundary; the real CronHPA controller scales anyway.
        operator.kill()?;
        eventually(Duration::from_secs(35), || async {
            Ok(deployments.get("web").await?.spec.and_then(|s| s.replicas) == Some(4))
        })
        .await
        .context("the CronHPA controller did not scale up at the Preparing boundary")?;
        ensure!(phase(&sales, "flash").await? == Some(Phase::Scheduled), "status moved without an operator");
        let _operator = Operator::operator(&cluster, &["--watch-namespace", &ns])?;
        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        eventually(Duration::from_secs(20), || async { Ok(as_written(&deployments.get("web").await?)? == before) })
            .await
            .context("web is not back to what it was")?;
        ensure!(crons.get_opt(name).await?.is_none(), "the CronHPA object is left behind");
        let s = sales.get("flash").await?;
        let mode = s
            .status
            .as_ref()
            .and_then(|st| st.clusters.first())
            .and_then(|c| c.workloads.first())
            .and_then(|w| w.mode.clone());
        ensure!(mode.as_deref().is_some_and(|m| m.starts_with("CronHPA")), "mode in status: {mode:?}");
        Ok(())
    })?;
    cluster.stop();
    Ok(())
}

fn statefulsets_scale_and_restore_too(env: &Env) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    block_on_value(async {
        let (client, ns, _operator) = setup(env, "sts").await?;
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        let set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "inventory"},
            "spec": {
                "replicas": 1,
                "serviceName": "inventory",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "inventory"}},
                "template": {"metadata": {"labels": {"app": "inventory"}}, "spec": {"containers": [{"name": "db", "image": "registry.example/db:1"}]}}
            }
        }))?;
        sets.create(&PostParams::default(), &set).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let workloads = serde_json::json!([{"ref": {"kind": "StatefulSet", "name": "inventory"}, "scale": {"peak": 3, "mode": "Replicas"}}]);
        sales.create(&PostParams::default(), &sale("flash", &ns, &at(6), &at(16), workloads)?).await?;
        eventually(Duration::from_secs(30), || async {
            let s = sets.get("inventory").await?;
            Ok(s.spec.and_then(|s| s.replicas) == Some(3) && s.status.and_then(|s| s.ready_replicas) >= Some(3))
        })
        .await
        .context("the StatefulSet never reached 3 ready replicas")?;
        wait_phase(&sales, "flash", Phase::Completed, 60).await?;
        let s = sets.get("inventory").await?;
        ensure!(s.spec.as_ref().and_then(|s| s.replicas) == Some(1), "not restored: {:?}", s.spec.map(|s| s.replicas));
        ensure!(
            !s.metadata.annotations.unwrap_or_default().keys().any(|k| k.starts_with("flashsale.dev/")),
            "bookkeeping left on the StatefulSet"
        );
        Ok(())
    })
}
