//! Trust boundaries, as a tenant (a sale author's rights only, see `tenant`): a sale acts only on
//! workloads of its own namespace, of the kinds the levers know, and its warm-up pods are plain
//! pods of that namespace (no borrowed ServiceAccount, no host access, no API token by default).

use anyhow::{Context as _, bail, ensure};
use flashsale_operator::api::{FlashSale, Phase, WarmupStatus};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{Pod, ServiceAccount},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use std::time::Duration;

use crate::{
    TestFn,
    support::{Env, Operator, at, block_on, client, events, eventually, flash_sale, namespace},
    tenant::{can, tenant, user, widened_service_accounts},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "tenant_confine::a_workload_in_another_namespace_or_of_another_kind_is_refused_and_left_alone",
        a_workload_in_another_namespace_or_of_another_kind_is_refused_and_left_alone,
    ),
    (
        "tenant_confine::warm_up_pods_cannot_borrow_a_service_account_or_the_host",
        warm_up_pods_cannot_borrow_a_service_account_or_the_host,
    ),
    (
        "tenant_confine::a_service_account_the_installer_allows_runs_the_warm_up",
        a_service_account_the_installer_allows_runs_the_warm_up,
    ),
];

/// The victim's Deployment: 3 replicas with a liveness probe, as its owner wrote it.
fn dns() -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "dns", "labels": {"app": "dns"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "dns"}},
            "template": {
                "metadata": {"labels": {"app": "dns"}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.example/dns:1",
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                        "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
                }]},
            },
        },
    }))?)
}

/// What of a Deployment a sale could change: replicas, pod template (so any spec change, which
/// the generation counts too) and the operator's bookkeeping annotations.
fn changeable(d: &Deployment) -> Value {
    let spec = d.spec.as_ref();
    let ours: Vec<&String> =
        d.metadata.annotations.iter().flatten().map(|(k, _)| k).filter(|k| k.starts_with("flashsale.dev/")).collect();
    json!({
        "generation": d.metadata.generation,
        "replicas": spec.and_then(|s| s.replicas),
        "template": spec.map(|s| &s.template),
        "flashsale annotations": ours,
    })
}

/// The API server's refusal of `sale` created through `api`: HTTP 422 and its message.
async fn refused(api: &Api<FlashSale>, sale: &FlashSale) -> anyhow::Result<String> {
    match api.create(&PostParams::default(), sale).await {
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(status.message),
        Err(other) => bail!("the sale was refused, but not as invalid: {other}"),
        Ok(_) => bail!("the sale was accepted"),
    }
}

fn workload(reference: Value) -> Value {
    json!([{
        "ref": reference,
        "scale": {"peak": 1, "mode": "Replicas"},
        "probes": {"liveness": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}},
    }])
}

/// The attack (a sale in the tenant's namespace aimed at `victim/dns`, peak 1 and
/// hair-trigger liveness probes) and its variant on a DaemonSet are refused at admission, naming
/// the field; a sale naming `dns` without a namespace finds no `dns` of its own and says so,
/// while the victim's Deployment keeps its replicas, probes and annotations throughout.
fn a_workload_in_another_namespace_or_of_another_kind_is_refused_and_left_alone(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "confine-refs").await?;
        let victim = namespace(&admin, "confine-victim").await?;
        let victim_deployments: Api<Deployment> = Api::namespaced(admin.clone(), &victim);
        victim_deployments.create(&PostParams::default(), &dns()?).await?;
        let before = changeable(&victim_deployments.get("dns").await?);
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let as_tenant = tenant(cluster, &admin, &ns).await?;
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        let (start, end) = (at(4), at(120));
        let window = (start.as_str(), end.as_str());

        let elsewhere = flash_sale(
            "elsewhere",
            &ns,
            window,
            ("2s", "10s"),
            workload(json!({"kind": "Deployment", "name": "dns", "namespace": victim})),
        )?;
        let message = refused(&sales, &elsewhere).await?;
        for expected in ["spec.workloads[0].ref.namespace", "a sale acts only on workloads in its own namespace"] {
            ensure!(message.contains(expected), "the refusal does not say {expected:?}: {message}");
        }
        let daemonset =
            flash_sale("daemonset", &ns, window, ("2s", "10s"), workload(json!({"kind": "DaemonSet", "name": "dns"})))?;
        let message = refused(&sales, &daemonset).await?;
        for expected in
            ["spec.workloads[0].ref.kind", "Unsupported value: \"DaemonSet\"", "\"Deployment\", \"StatefulSet\""]
        {
            ensure!(message.contains(expected), "the refusal does not say {expected:?}: {message}");
        }
        ensure!(sales.list(&ListParams::default()).await?.items.is_empty(), "a refused sale was stored");

        // The same attack without the namespace: the name resolves in the sale's namespace only.
        let own =
            flash_sale("own", &ns, window, ("2s", "10s"), workload(json!({"kind": "Deployment", "name": "dns"})))?;
        sales.create(&PostParams::default(), &own).await.context("the tenant creates a sale in its namespace")?;
        let expected = format!("Deployment {ns}/dns not found");
        eventually(Duration::from_secs(30), || async {
            let sale = sales.get("own").await?;
            let status = sale.status.unwrap_or_default();
            let live = matches!(status.phase, Some(Phase::Preparing | Phase::Active));
            let said = status
                .clusters
                .iter()
                .flat_map(|c| &c.workloads)
                .any(|w| w.message.as_deref().is_some_and(|m| m.contains(&expected)));
            Ok(live && said)
        })
        .await
        .with_context(|| format!("the live sale's status never said {expected:?}"))?;
        let notes: Vec<String> = events(&as_tenant, &ns, "own").await?.into_iter().map(|(_, n)| n).collect();
        ensure!(
            notes.iter().any(|n| n.contains(&expected)),
            "no event the tenant can read says {expected:?}: {notes:?}"
        );
        // A few passes later, still nothing of the victim's has changed.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = changeable(&victim_deployments.get("dns").await?);
        ensure!(after == before, "the victim's Deployment changed:\nbefore {before}\nafter  {after}");

        let widened = widened_service_accounts(&admin, &ns, &victim).await?;
        ensure!(widened.is_empty(), "rights beyond the namespace: {widened:?}");
        Ok(())
    })
}

/// A `cacheWarm[]` entry running `pod` (a pod spec), due at once.
fn warm(name: &str, required: bool, pod: Value) -> Value {
    json!({
        "name": name,
        "startBefore": "1h",
        "required": required,
        "template": {"spec": {"backoffLimit": 0, "template": {"spec": pod}}},
    })
}

fn container() -> Value {
    json!({"name": "warm", "image": "registry.example/cache-warmer:1"})
}

/// The Jobs and pods of warm-up `warm` of any sale in `ns`, by the labels the operator puts on them.
async fn jobs_and_pods(client: &Client, ns: &str, warm: &str) -> anyhow::Result<(Vec<Job>, Vec<Pod>)> {
    let params = ListParams::default().labels(&format!("flashsale.dev/warmup={warm}"));
    let jobs = Api::<Job>::namespaced(client.clone(), ns).list(&params).await?.items;
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&params).await?.items;
    Ok((jobs, pods))
}

fn warmup(sale: &FlashSale, name: &str) -> Option<WarmupStatus> {
    sale.status.as_ref()?.clusters.iter().flat_map(|c| &c.warmups).find(|w| w.name == name).cloned()
}

fn condition(sale: &FlashSale, type_: &str) -> Option<(String, String)> {
    let c = sale.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.message.clone()))
}

/// A ServiceAccount of the tenant's namespace with far more rights there than the tenant (the
/// built-in `edit` role: pods, Secrets, Deployments) is not lent to a warm-up: no Job, the
/// warm-up failed naming `serviceAccountName`, `CacheWarmed` and `Ready` False, a Warning
/// event. Host access (hostPath, privileged, hostNetwork, added capabilities) is refused at
/// admission. A plain warm-up beside them runs as `default` with no API token mounted.
fn warm_up_pods_cannot_borrow_a_service_account_or_the_host(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "confine-warm").await?;
        let elsewhere = namespace(&admin, "confine-warm-other").await?;
        let deployer: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "deployer"}}))?;
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &deployer).await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "deployer-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": ns}],
        }))?;
        Api::<RoleBinding>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &binding).await?;
        let deployer_user = format!("system:serviceaccount:{ns}:deployer");
        eventually(Duration::from_secs(10), || can(&admin, &deployer_user, "create", "pods", Some(&ns)))
            .await
            .context("the borrowed ServiceAccount should be able to create pods (the edit role is aggregated)")?;
        ensure!(!can(&admin, &user(&ns), "create", "pods", Some(&ns)).await?, "the tenant may create pods itself");
        Api::<Deployment>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &crate::support::deployment("web", 1, None)?)
            .await?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let as_tenant = tenant(cluster, &admin, &ns).await?;
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        let workloads =
            json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 1, "mode": "Replicas"}}]);
        let (start, end) = (at(600), at(1200));
        let sale = |name: &str, warm_ups: Value| -> anyhow::Result<FlashSale> {
            let mut sale = flash_sale(name, &ns, (&start, &end), ("1m", "1m"), workloads.clone())?;
            sale.spec.cache_warm = serde_json::from_value(warm_ups)?;
            Ok(sale)
        };

        // Host access: refused at admission, each naming the field.
        let field = "spec.cacheWarm[0].template.spec.template.spec";
        let host_access = [
            (
                "hostpath",
                json!({"containers": [container()], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                format!("{field}.volumes[0].hostPath"),
                "may not mount a hostPath volume",
            ),
            (
                "privileged",
                json!({"containers": [{"name": "warm", "image": "w:1", "securityContext": {"privileged": true}}]}),
                format!("{field}.containers[0].securityContext.privileged"),
                "may not be privileged",
            ),
            (
                "hostnetwork",
                json!({"hostNetwork": true, "containers": [container()]}),
                format!("{field}.hostNetwork"),
                "may not use the host's network",
            ),
            (
                "capabilities",
                json!({"containers": [{"name": "warm", "image": "w:1",
                    "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}),
                format!("{field}.containers[0].securityContext.capabilities.add"),
                "may not add capabilities",
            ),
        ];
        for (name, pod, path, why) in &host_access {
            let message = refused(&sales, &sale(name, json!([warm(name, true, pod.clone())]))?).await?;
            ensure!(
                message.contains(path) && message.contains(why),
                "{name}: the refusal does not say {path}: {why}: {message}"
            );
        }

        // A borrowed ServiceAccount: accepted (only the installer's flags say which are allowed),
        // refused by the operator; a plain warm-up in the same sale runs.
        let warm_ups = json!([
            warm("borrow", true, json!({"serviceAccountName": "deployer", "containers": [container()]})),
            warm("plain", false, json!({"containers": [container()]})),
        ]);
        sales.create(&PostParams::default(), &sale("flash", warm_ups)?).await.context("the tenant creates the sale")?;
        let path = format!("{field}.serviceAccountName");
        eventually(Duration::from_secs(30), || async {
            let s = sales.get("flash").await?;
            let refused = warmup(&s, "borrow").is_some_and(|w| {
                w.state == "Failed" && w.reason.as_deref() == Some("TemplateRefused") && w.job.is_none()
            });
            let cache_warmed = condition(&s, "CacheWarmed").is_some_and(|(st, m)| {
                st == "False" && m.contains(&path) && m.contains("ServiceAccount deployer is not one")
            });
            let ready = condition(&s, "Ready").is_some_and(|(st, _)| st == "False");
            let plain_created = warmup(&s, "plain").is_some_and(|w| w.job.is_some());
            Ok(refused && cache_warmed && ready && plain_created)
        })
        .await
        .with_context(|| {
            format!(
                "status never showed the borrowed ServiceAccount refused naming {path} with the plain warm-up created"
            )
        })?;
        let warnings: Vec<(String, String)> = events(&as_tenant, &ns, "flash").await?;
        ensure!(
            warnings.iter().any(|(reason, note)| reason == "WarmupFailed" && note.contains(&path)),
            "no WarmupFailed event the tenant can read names {path}: {warnings:?}"
        );
        for (name, _, _, _) in &host_access {
            let (jobs, pods) = jobs_and_pods(&admin, &ns, name).await?;
            ensure!(jobs.is_empty() && pods.is_empty(), "{name}: Jobs or pods exist for a refused sale");
        }
        let (jobs, pods) = jobs_and_pods(&admin, &ns, "borrow").await?;
        ensure!(jobs.is_empty() && pods.is_empty(), "a Job or pod runs as the borrowed ServiceAccount");
        let every_pod = Api::<Pod>::namespaced(admin.clone(), &ns).list(&ListParams::default()).await?.items;
        let borrowed: Vec<String> = every_pod
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.service_account_name.as_deref()) == Some("deployer"))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        ensure!(borrowed.is_empty(), "pods run as deployer: {borrowed:?}");

        let (jobs, _) = jobs_and_pods(&admin, &ns, "plain").await?;
        let [job] = jobs.as_slice() else { bail!("want one plain warm-up Job, found {}", jobs.len()) };
        let pod_spec = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("the Job has no pod spec")?;
        ensure!(
            pod_spec.automount_service_account_token == Some(false),
            "the plain warm-up's pod spec mounts an API token: automountServiceAccountToken {:?}",
            pod_spec.automount_service_account_token
        );
        ensure!(
            pod_spec.service_account_name.as_deref().is_none_or(|sa| sa == "default"),
            "the plain warm-up runs as {:?}",
            pod_spec.service_account_name
        );

        let widened = widened_service_accounts(&admin, &ns, &elsewhere).await?;
        ensure!(widened.is_empty(), "rights beyond the namespace: {widened:?}");
        Ok(())
    })
}

/// The installer widens what a warm-up may run as with `--warmup-service-account`: the same
/// template the default operator refuses then runs as that account (and only that one).
fn a_service_account_the_installer_allows_runs_the_warm_up(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "confine-allowed").await?;
        for name in ["cache-reader", "other"] {
            let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            Api::<ServiceAccount>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &sa).await?;
        }
        Api::<Deployment>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &crate::support::deployment("web", 1, None)?)
            .await?;
        let _operator =
            Operator::operator(cluster, &["--watch-namespace", &ns, "--warmup-service-account", "cache-reader"])?;
        let as_tenant = tenant(cluster, &admin, &ns).await?;
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        let workloads =
            json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 1, "mode": "Replicas"}}]);
        let mut sale = flash_sale("flash", &ns, (&at(600), &at(1200)), ("1m", "1m"), workloads)?;
        sale.spec.cache_warm = serde_json::from_value(json!([
            warm("reader", true, json!({"serviceAccountName": "cache-reader", "containers": [container()]})),
            warm("other", false, json!({"serviceAccountName": "other", "containers": [container()]})),
        ]))?;
        sales.create(&PostParams::default(), &sale).await?;
        eventually(Duration::from_secs(30), || async {
            let s = sales.get("flash").await?;
            let reader = warmup(&s, "reader").is_some_and(|w| w.job.is_some());
            let other = warmup(&s, "other").is_some_and(|w| w.reason.as_deref() == Some("TemplateRefused"));
            Ok(reader && other)
        })
        .await
        .context("the allowed account's warm-up never got a Job, or the other account's was not refused")?;
        let (jobs, _) = jobs_and_pods(&admin, &ns, "reader").await?;
        let [job] = jobs.as_slice() else { bail!("want one Job for the allowed account, found {}", jobs.len()) };
        let pod_spec = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("the Job has no pod spec")?;
        ensure!(
            pod_spec.service_account_name.as_deref() == Some("cache-reader"),
            "runs as {:?}",
            pod_spec.service_account_name
        );
        ensure!(pod_spec.automount_service_account_token == Some(false), "an API token is mounted");
        let (jobs, pods) = jobs_and_pods(&admin, &ns, "other").await?;
        ensure!(jobs.is_empty() && pods.is_empty(), "a Job or pod runs as a ServiceAccount the installer did not list");
        Ok(())
    })
}
