//! The chart as a platform team installs it, in a cluster of its own: the CRD upgraded from an
//! older release by the documented step, `helm install` with the monitors, the PrometheusRule
//! and the dashboard against the real prometheus-operator CRDs, `helm upgrade` to a changed
//! value, and the two revisions' operators run side by side (kwok runs no containers) with
//! exactly the installed pods' arguments, environment and identity, one Lease holder throughout.

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    TestFn,
    harness::{Cluster, ClusterOptions, built},
    support::{Env, Operator, at, block_on_value, client, eventually, namespace_named, repo},
};

pub const TESTS: &[(&str, TestFn)] = &[(
    "chart::upgrade_crd_install_monitors_upgrade_with_one_leader",
    upgrade_crd_install_monitors_upgrade_with_one_leader,
)];

/// The release, its namespace (also the agents' and the Lease's) and the sales' namespace.
const RELEASE: &str = "fso";
const RELEASE_NS: &str = "flashsale-system";
const SALES_NS: &str = "shop";
/// An older FlashSale CRD, as a release before this one installed it.
const OLD_CRD_COMMIT: &str = "d0438da";
const CRD_NAME: &str = "flashsales.flashsale.dev";

fn upgrade_crd_install_monitors_upgrade_with_one_leader(_env: &Env) -> anyhow::Result<()> {
    // Its own cluster: the CRD goes back to an older version here and the prometheus-operator
    // CRDs are installed, neither of which the shared clusters' other tests expect.
    let dir = std::env::temp_dir().join(format!("flashsale-e2e-{}", std::process::id())).join("chart");
    let cluster = Cluster::start(&ClusterOptions { name: "chart".into(), nodes: 1, spot_nodes: 1 }, &dir, false)?;
    let cluster = &cluster;
    let chart = repo().join("charts/flashsale-operator");
    let chart_crd = chart.join("crds/flashsale.dev_flashsales.yaml");

    let survivor = upgrade_the_crd(cluster, &chart_crd)?;

    // The prometheus-operator's own CRDs, from its Go module (tests/e2e/toolchain).
    let crds = built("tests/e2e/toolchain/prometheus-operator/fetch.sh")?;
    for kind in ["servicemonitors", "podmonitors", "prometheusrules"] {
        cluster.install_crd(&crds.join(format!("monitoring.coreos.com_{kind}.yaml")))?;
    }
    block_on_value(async {
        let client = client(cluster).await?;
        namespace_named(&client, RELEASE_NS).await?;
        install_upgrade_and_lead(cluster, &client, &chart).await
    })?;

    // The sale stored under the old CRD is still there, unchanged, read through the new one.
    let after = json_of(&cluster.kubectl(&["get", "flashsale", "kept", "-n", SALES_NS, "-o", "json"])?)?;
    ensure!(after["metadata"]["uid"] == survivor["metadata"]["uid"], "the FlashSale was recreated: {after}");
    // Read through the new schema a stored object gains its new defaults, never loses a field.
    ensure!(
        kept_in(&survivor["spec"], &after["spec"]),
        "the FlashSale's spec lost or changed a field: {} -> {}",
        survivor["spec"],
        after["spec"]
    );
    Ok(())
}

/// Installs the CRD of an older release the way `helm install` does (a plain create), stores a
/// sale under it, then runs the step the chart docs give before `helm upgrade`, and checks the
/// served CRD is the chart's. Returns the stored sale.
fn upgrade_the_crd(cluster: &Cluster, chart_crd: &Path) -> anyhow::Result<Value> {
    let old = std::process::Command::new("git")
        .args(["show", &format!("{OLD_CRD_COMMIT}:crds/flashsale.dev_flashsales.yaml")])
        .current_dir(repo())
        .output()?;
    ensure!(old.status.success(), "git show {OLD_CRD_COMMIT}: {}", String::from_utf8_lossy(&old.stderr));
    let old_crd = cluster.dir.join("old-crd.yaml");
    std::fs::write(&old_crd, &old.stdout)?;
    cluster.kubectl(&["create", "-f", &old_crd.display().to_string()])?;
    wait_established(cluster)?;
    let old_spec = json_of(&cluster.kubectl(&["get", "crd", CRD_NAME, "-o", "json"])?)?["spec"].clone();
    let want: Value = serde_saphyr::from_str(&std::fs::read_to_string(chart_crd)?)?;
    ensure!(!same_crd(&old_spec, &want["spec"]), "the old CRD is already the chart's: nothing to upgrade");

    cluster.kubectl_stdin(&["create", "namespace", SALES_NS], None)?;
    let sale = json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": "kept", "namespace": SALES_NS},
        "spec": {
            "window": {"start": "2027-11-11T00:00:00Z", "end": "2027-11-11T02:00:00Z"},
            "workloads": [{"ref": {"kind": "Deployment", "name": "storefront"}, "scale": {"peak": 4}}],
        },
    });
    cluster.kubectl_stdin(&["create", "-f", "-"], Some(&sale.to_string()))?;
    let stored = json_of(&cluster.kubectl(&["get", "flashsale", "kept", "-n", SALES_NS, "-o", "json"])?)?;

    // The documented step (docs/upgrading.md): the chart's CRD by server-side apply, taking its
    // fields over from whoever created it (helm's crds/ install is a plain create).
    cluster.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=flashsale-crd",
        "-f",
        &chart_crd.display().to_string(),
    ])?;
    wait_established(cluster)?;
    let served = json_of(&cluster.kubectl(&["get", "crd", CRD_NAME, "-o", "json"])?)?;
    ensure!(
        same_crd(&served["spec"], &want["spec"]),
        "the served CRD differs from the chart's after the upgrade step:\n{}",
        first_difference(
            &numbers_as_floats(&defaults_dropped(&served["spec"], &want["spec"])),
            &numbers_as_floats(&want["spec"]),
            "spec"
        )
    );
    Ok(stored)
}

/// Whether a served CRD spec is the file's: equal once the fields the API server defaults and
/// the file leaves out are dropped.
fn same_crd(served: &Value, file: &Value) -> bool {
    numbers_as_floats(&defaults_dropped(served, file)) == numbers_as_floats(file)
}

/// The API server answers `100` for the file's `100.0`: compare numbers by value.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| v.clone(), |f| json!(f)),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), numbers_as_floats(v))).collect()),
        _ => v.clone(),
    }
}

/// `served` with every object key absent from `file` removed when the API server defaults it.
fn defaults_dropped(served: &Value, file: &Value) -> Value {
    // Defaulted by the API server on every CRD (conversion, names.singular/listKind).
    const DEFAULTED: [&str; 3] = ["conversion", "singular", "listKind"];
    match (served, file) {
        (Value::Object(s), Value::Object(f)) => Value::Object(
            s.iter()
                .filter(|(k, _)| f.contains_key(*k) || !DEFAULTED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), f.get(k).map_or_else(|| v.clone(), |fv| defaults_dropped(v, fv))))
                .collect(),
        ),
        (Value::Array(s), Value::Array(f)) if s.len() == f.len() => {
            Value::Array(s.iter().zip(f).map(|(sv, fv)| defaults_dropped(sv, fv)).collect())
        }
        _ => served.clone(),
    }
}

/// Whether every field of `old` is in `new` with the same value (`new` may hold more).
fn kept_in(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => o.iter().all(|(k, v)| n.get(k).is_some_and(|nv| kept_in(v, nv))),
        (Value::Array(o), Value::Array(n)) => o.len() == n.len() && o.iter().zip(n).all(|(ov, nv)| kept_in(ov, nv)),
        _ => old == new,
    }
}

/// The path and values of the first place two JSON values differ, for failure messages.
fn first_difference(a: &Value, b: &Value, path: &str) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let (xv, yv) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                if xv != yv {
                    return first_difference(xv, yv, &format!("{path}.{k}"));
                }
            }
            String::new()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (xv, yv))| xv != yv)
            .map(|(i, (xv, yv))| first_difference(xv, yv, &format!("{path}[{i}]")))
            .unwrap_or_default(),
        _ => format!("{path}: served {a} / chart {b}"),
    }
}

fn wait_established(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster
            .kubectl(&[
                "get",
                "crd",
                CRD_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .unwrap_or_default();
        if status == "True" {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "CRD {CRD_NAME} not Established after 60s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json_of(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// `helm install` with every optional object on, their selection checked, `helm upgrade` to a
/// changed value, and the old and new revisions' operators overlapping as a rolling update runs
/// them.
async fn install_upgrade_and_lead(cluster: &Cluster, client: &Client, chart: &Path) -> anyhow::Result<()> {
    let chart_path = chart.display().to_string();
    let watch = format!("watchNamespace={SALES_NS}");
    let install = [
        "install",
        RELEASE,
        chart_path.as_str(),
        "--namespace",
        RELEASE_NS,
        "--set",
        watch.as_str(),
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=monitoring",
        "--set",
        "podMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.folder=Flash sales",
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--wait",
        "--timeout=120s",
    ];
    let kubeconfig = format!("--kubeconfig={}", cluster.kubeconfig.display());
    let mut install = install.to_vec();
    install.push(&kubeconfig);
    // 0.1.0's operator created the agents' ClusterRole itself (removed with the cluster's last
    // agents); one left behind blocks the chart, which installs it now, until the documented
    // clean-up removes it.
    let leftover = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "flashsale-drain-agent", "labels": {
            "app.kubernetes.io/name": "flashsale-drain-agent",
            "app.kubernetes.io/managed-by": "flashsale-operator",
            "app.kubernetes.io/component": "drain-agent",
        }},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
    });
    cluster.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=flashsale-operator", "-f", "-"],
        Some(&leftover.to_string()),
    )?;
    let blocked = cluster.helm(&install);
    ensure!(
        blocked
            .as_ref()
            .is_err_and(|e| e.to_string().contains("flashsale-drain-agent") && e.to_string().contains("exists")),
        "helm install over 0.1.0's leftover agent ClusterRole: {blocked:?}"
    );
    cluster.kubectl(&[
        "delete",
        "clusterroles,clusterrolebindings",
        "-l",
        "app.kubernetes.io/name=flashsale-drain-agent,app.kubernetes.io/managed-by=flashsale-operator",
    ])?;
    cluster.helm(&install)?;
    let revision1 = available(cluster, 1)?;
    check_monitors(cluster, chart, &kubeconfig)?;
    // helm install leaves an existing CRD alone: still the chart's, as the upgrade step left it.
    let served = json_of(&cluster.kubectl(&["get", "crd", CRD_NAME, "-o", "json"])?)?;
    let want: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("crds/flashsale.dev_flashsales.yaml"))?)?;
    ensure!(same_crd(&served["spec"], &want["spec"]), "helm install changed the CRD");

    // A workload and a sale for the operators to act on: Preparing while the first revision
    // leads, Active after the second took over.
    let web = crate::support::deployment("web", 1, None)?;
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), SALES_NS)
        .create(&Default::default(), &web)
        .await?;
    let holders = Polls::default();
    let polling = Arc::new(AtomicBool::new(true));
    let poller = tokio::spawn(poll_lease(client.clone(), holders.clone(), polling.clone()));

    let mut old = operator_of(cluster, &revision1)?;
    eventually(Duration::from_secs(30), || async { Ok(old.log_text().contains("became the leader")) })
        .await
        .with_context(|| format!("the first revision never led:\n{}", old.log_text()))?;
    let sales: Api<flashsale_operator::api::FlashSale> = Api::namespaced(client.clone(), SALES_NS);
    let sale = serde_json::from_value(json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": "drop", "namespace": SALES_NS},
        "spec": {
            "window": {"start": at(40), "end": at(50)},
            "prepareBefore": "25s",
            "cooldownAfter": "4s",
            "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2, "mode": "Replicas"}}],
            "spotDrain": {},
        },
    }))?;
    sales.create(&Default::default(), &sale).await?;

    // The agents the first leader deployed at Preparing are what the PodMonitor selects.
    wait_phase(&sales, "drop", "Preparing", Duration::from_secs(40)).await?;
    check_pod_monitor_selects_agents(cluster).await?;

    // helm upgrade to a changed value. The rolling update as the kubelet would play it: the new
    // pod's operator starts (a standby) once that pod exists; the old one gets SIGTERM once the
    // new one is ready and its own pod is being deleted, and releases the Lease.
    let mut upgrade = vec!["upgrade", RELEASE, chart_path.as_str(), "--namespace", RELEASE_NS, "--reuse-values"];
    upgrade.extend(["--set", "logLevel=info\\,flashsale_operator=debug", "--set-string", "podAnnotations.rollout=2"]);
    upgrade.extend(["--wait", "--timeout=120s", &kubeconfig]);
    let upgrade: Vec<String> = upgrade.into_iter().map(str::to_owned).collect();
    let helm = {
        let (helm, dir) = (cluster.tool("helm"), cluster.dir.clone());
        std::thread::spawn(move || {
            std::process::Command::new(helm)
                .args(&upgrade)
                .env("HELM_CACHE_HOME", dir.join("helm/cache"))
                .env("HELM_CONFIG_HOME", dir.join("helm/config"))
                .env("HELM_DATA_HOME", dir.join("helm/data"))
                .output()
        })
    };
    let mut new: Option<Operator> = None;
    let mut old_stopped = false;
    let (mut new_started, mut old_signalled) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(150);
    while new.is_none() || !old_stopped || !helm.is_finished() {
        ensure!(Instant::now() < deadline, "the rolling update did not finish");
        if new.is_none()
            && let Some(pod) = live_pod(cluster, 2)?
        {
            new = Some(operator_of(cluster, &revision_of(&pod)?)?);
            new_started = Some(Instant::now());
        }
        // The kubelet stops the old pod once the new one is ready (maxUnavailable 0): here
        // kwok fakes that readiness at once, so wait for the new operator's own /readyz.
        let new_ready = new.as_ref().is_some_and(|n| matches!(n.get("/readyz"), Ok((200, _))));
        if !old_stopped && new_ready && live_pod(cluster, 1)?.is_none() {
            if let Some(new) = new.as_ref() {
                ensure!(!new.log_text().contains("became the leader"), "two leaders at once:\n{}", new.log_text());
            }
            old.ensure_alive()?;
            old.terminate()?;
            old_stopped = true;
            old_signalled = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = helm.join().map_err(|_| anyhow::anyhow!("helm upgrade panicked"))??;
    ensure!(out.status.success(), "helm upgrade failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut new = new.context("no new pod")?;
    let status = old.wait_exit(Duration::from_secs(20))?;
    ensure!(status.success(), "the old revision did not stop cleanly ({status}):\n{}", old.log_text());
    let revision2 = available(cluster, 2)?;
    ensure!(revision2.pod != revision1.pod, "the upgrade did not roll the pod");
    ensure!(
        revision2.env.iter().any(|(k, v)| k == "RUST_LOG" && v == "info,flashsale_operator=debug"),
        "the upgraded pod template lacks the changed logLevel: {:?}",
        revision2.env
    );
    eventually(Duration::from_secs(30), || async { Ok(new.log_text().contains("became the leader")) })
        .await
        .with_context(|| format!("the new revision never took over:\n{}", new.log_text()))?;
    wait_phase(&sales, "drop", "Completed", Duration::from_secs(60)).await?;
    new.ensure_alive()?;
    polling.store(false, Ordering::SeqCst);
    poller.await??;

    // One holder at every poll, never anyone else: the first revision until its SIGTERM, then,
    // after the handover, the second to the end; unheld only before the first and during the
    // handover.
    let polls = holders.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    ensure!(polls.len() > 100, "only {} Lease polls", polls.len());
    let signalled = old_signalled.context("the old revision was never stopped")?;
    let held_by = |pod: &str| polls.iter().find(|(_, h)| h.as_deref() == Some(pod)).map(|(t, _)| *t);
    let first_old = held_by(&revision1.pod).context("the old revision never held the Lease")?;
    let first_new = held_by(&revision2.pod).context("the new revision never held the Lease")?;
    for (t, holder) in &polls {
        let want = if *t < first_old {
            None
        } else if *t < signalled {
            Some(revision1.pod.as_str())
        } else if *t < first_new {
            // Between the SIGTERM and the release the old one may still be seen holding it.
            holder.as_deref().filter(|h| *h == revision1.pod)
        } else {
            Some(revision2.pod.as_str())
        };
        ensure!(
            holder.as_deref() == want,
            "the Lease was held by {holder:?} {:?} into the test, want {want:?} (SIGTERM at {:?})",
            t.saturating_duration_since(polls[0].0),
            signalled.saturating_duration_since(polls[0].0)
        );
    }
    let handover = first_new.saturating_duration_since(signalled);
    let overlap = new_started.map(|t| signalled.saturating_duration_since(t)).unwrap_or_default();
    ensure!(!overlap.is_zero(), "the two revisions never ran at once");
    // A standby sleeps until the Lease it saw would expire, so a release does not wake it: the
    // handover takes at most the lease duration (the chart's default, 15 s).
    ensure!(handover <= Duration::from_secs(15 + 3), "the new revision took over {handover:?} after the SIGTERM");
    eprintln!(
        "chart: {} Lease polls; both revisions ran for {overlap:?}; the new one held the Lease {handover:?} after the old one's SIGTERM",
        polls.len()
    );

    // Each phase change announced once, by the process that led then.
    let events: Vec<Event> = Api::<Event>::namespaced(client.clone(), SALES_NS)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("drop"))
        .filter(|e| e.reason.as_deref() == Some("PhaseChanged"))
        .collect();
    let by = |phase: &str| -> Vec<(String, i32)> {
        events
            .iter()
            .filter(|e| e.action.as_deref() == Some(phase))
            .map(|e| (e.reporting_instance.clone().unwrap_or_default(), e.series.as_ref().map_or(1, |s| s.count)))
            .collect()
    };
    ensure!(by("Preparing") == [(revision1.pod.clone(), 1)], "Preparing announced as {:?}", by("Preparing"));
    for phase in ["Active", "CoolingDown", "Completed"] {
        ensure!(by(phase) == [(revision2.pod.clone(), 1)], "{phase} announced as {:?}", by(phase));
    }
    new.terminate()?;
    new.wait_exit(Duration::from_secs(20))?;
    Ok(())
}

async fn wait_phase(
    sales: &Api<flashsale_operator::api::FlashSale>,
    name: &str,
    phase: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(timeout, || async {
        let sale = sales.get(name).await?;
        Ok(sale.status.and_then(|s| s.phase).map(|p| p.as_str().to_owned()).as_deref() == Some(phase))
    })
    .await
    .with_context(|| format!("{name} never reached {phase}"))
}

/// Records the Lease's holder every 50 ms until told to stop.
async fn poll_lease(client: Client, holders: Polls, polling: Arc<AtomicBool>) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client, RELEASE_NS);
    while polling.load(Ordering::SeqCst) {
        let holder = leases.get_opt("flashsale-operator").await?.and_then(|l| l.spec?.holder_identity);
        holders.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((Instant::now(), holder));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The Lease's holder at each poll, with when it was read.
type Polls = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// What the installed Deployment runs, from the API: one revision's pod and its container.
struct Revision {
    pod: String,
    service_account: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Waits for the Deployment to be Available at `revision` (helm's) with its one pod of that
/// template ready on kwok, and returns what that pod runs.
fn available(cluster: &Cluster, revision: u32) -> anyhow::Result<Revision> {
    let name = format!("{RELEASE}-flashsale-operator");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = json_of(&cluster.kubectl(&["get", "deployment", &name, "-n", RELEASE_NS, "-o", "json"])?)?;
        let available = d["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Available" && c["status"] == "True"));
        let rolled = d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["updatedReplicas"] == 1
            && d["status"]["replicas"] == 1
            && d["status"]["availableReplicas"] == 1;
        let rs_revision =
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str() == Some(&revision.to_string());
        if available && rolled && rs_revision {
            let hash = template_hash(cluster, revision)?.context("no ReplicaSet at the Deployment's revision")?;
            let pods = json_of(&cluster.kubectl(&[
                "get",
                "pods",
                "-n",
                RELEASE_NS,
                "-l",
                &format!("app.kubernetes.io/instance={RELEASE},pod-template-hash={hash}"),
                "-o",
                "json",
            ])?)?;
            let ready: Vec<&Value> = pods["items"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                        .filter(|p| {
                            p["status"]["conditions"]
                                .as_array()
                                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let [pod] = ready.as_slice() {
                return revision_of(pod);
            }
        }
        ensure!(Instant::now() < deadline, "the Deployment is not Available at revision {revision}: {}", d["status"]);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The pod of the Deployment's ReplicaSet at `revision`, while it exists and is not being
/// deleted.
fn live_pod(cluster: &Cluster, revision: u32) -> anyhow::Result<Option<Value>> {
    let Some(hash) = template_hash(cluster, revision)? else { return Ok(None) };
    let pods = json_of(&cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        RELEASE_NS,
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE},pod-template-hash={hash}"),
        "-o",
        "json",
    ])?)?;
    Ok(pods["items"].as_array().into_iter().flatten().find(|p| p["metadata"]["deletionTimestamp"].is_null()).cloned())
}

/// The pod-template-hash of the Deployment's ReplicaSet at `revision`.
fn template_hash(cluster: &Cluster, revision: u32) -> anyhow::Result<Option<String>> {
    let sets = json_of(&cluster.kubectl(&[
        "get",
        "replicasets",
        "-n",
        RELEASE_NS,
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "json",
    ])?)?;
    Ok(sets["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|rs| {
            rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str() == Some(&revision.to_string())
        })
        .and_then(|rs| rs["metadata"]["labels"]["pod-template-hash"].as_str())
        .map(str::to_owned))
}

/// The pod's operator container: its args and env, fieldRefs resolved as the kubelet does.
fn revision_of(pod: &Value) -> anyhow::Result<Revision> {
    let container = pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "operator"))
        .context("no operator container")?;
    ensure!(container["command"].is_null(), "the container overrides the image's entrypoint");
    let args = container["args"]
        .as_array()
        .context("no args")?
        .iter()
        .map(|a| a.as_str().map(str::to_owned).context("an arg is not a string"))
        .collect::<anyhow::Result<_>>()?;
    let mut env = vec![];
    for e in container["env"].as_array().context("no env")? {
        let name = e["name"].as_str().context("env without a name")?.to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().with_context(|| format!("env {name}: {e}"))?;
            match path {
                "metadata.name" => pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                "metadata.namespace" => pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                other => bail!("env {name}: fieldRef {other} not resolved here"),
            }
        };
        env.push((name, value));
    }
    Ok(Revision {
        pod: pod["metadata"]["name"].as_str().context("pod without a name")?.to_owned(),
        service_account: pod["spec"]["serviceAccountName"].as_str().context("no serviceAccountName")?.to_owned(),
        args,
        env,
    })
}

/// The operator binary run as the pod would: its args and env, and as the pod's ServiceAccount,
/// so it has only the chart's RBAC. The token is not bound to the pod: kwok removes a deleted pod
/// at once, where a kubelet keeps it (and its token valid) until the container has exited.
fn operator_of(cluster: &Cluster, revision: &Revision) -> anyhow::Result<Operator> {
    let token = cluster.kubectl(&["create", "token", &revision.service_account, "-n", RELEASE_NS, "--duration=1h"])?;
    let kubeconfig = token_kubeconfig(cluster, &revision.pod, token.trim())?;
    let mut args: Vec<&str> = revision.args.iter().map(String::as_str).collect();
    ensure!(args.first() == Some(&"run"), "the pod does not run the operator: {args:?}");
    args.remove(0);
    Operator::operator_as_pod(cluster, &args, &revision.env, &kubeconfig)
}

fn token_kubeconfig(cluster: &Cluster, pod: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = cluster.dir.join(format!("{pod}.kubeconfig"));
    std::fs::copy(&cluster.kubeconfig, &path)?;
    for args in [
        vec!["config".to_owned(), "set-credentials".into(), "pod".into(), format!("--token={token}")],
        vec!["config".into(), "set-context".into(), "--current".into(), "--user=pod".into()],
    ] {
        let out = std::process::Command::new(cluster.tool("kubectl"))
            .arg(format!("--kubeconfig={}", path.display()))
            .args(&args)
            .output()?;
        ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(path)
}

/// The objects as the API server stored them: accepted by the real CRDs with nothing pruned
/// (the stored spec is the rendered one), selecting the metrics Service, with the rules file
/// and the dashboard file as they are.
fn check_monitors(cluster: &Cluster, chart: &Path, kubeconfig: &str) -> anyhow::Result<()> {
    let manifest = cluster.helm(&["get", "manifest", RELEASE, "--namespace", RELEASE_NS, kubeconfig])?;
    let rendered: Vec<Value> =
        serde_saphyr::from_multiple::<Value>(&manifest)?.into_iter().filter(|v| !v.is_null()).collect();
    let rendered_of = |kind: &str| -> anyhow::Result<&Value> {
        rendered.iter().find(|v| v["kind"] == kind).with_context(|| format!("helm installed no {kind}"))
    };
    let stored_of = |resource: &str, name: &str| -> anyhow::Result<Value> {
        json_of(&cluster.kubectl(&["get", resource, name, "-n", RELEASE_NS, "-o", "json"])?)
    };
    let full = format!("{RELEASE}-flashsale-operator");
    for (kind, resource, name) in [
        ("ServiceMonitor", "servicemonitors.monitoring.coreos.com", full.clone()),
        ("PodMonitor", "podmonitors.monitoring.coreos.com", format!("{full}-drain-agent")),
        ("PrometheusRule", "prometheusrules.monitoring.coreos.com", full.clone()),
    ] {
        let stored = stored_of(resource, &name)?;
        let want = rendered_of(kind)?;
        ensure!(
            stored["spec"] == want["spec"],
            "the API server did not keep the {kind} as rendered (a field its CRD does not know?):\n{}",
            first_difference(&stored["spec"], &want["spec"], "spec")
        );
    }

    // The ServiceMonitor selects exactly the metrics Service, by a port it names, and that
    // Service has the operator's ready pod behind it.
    let monitor = stored_of("servicemonitors.monitoring.coreos.com", &full)?;
    ensure!(monitor["metadata"]["labels"]["release"] == "monitoring", "the ServiceMonitor lacks its extra label");
    ensure!(monitor["spec"]["namespaceSelector"]["matchNames"] == json!([RELEASE_NS]), "{}", monitor["spec"]);
    let services = json_of(&cluster.kubectl(&[
        "get",
        "services",
        "-n",
        RELEASE_NS,
        "-l",
        &selector(&monitor["spec"]["selector"]["matchLabels"])?,
        "-o",
        "json",
    ])?)?;
    let names: Vec<&str> =
        services["items"].as_array().into_iter().flatten().filter_map(|s| s["metadata"]["name"].as_str()).collect();
    ensure!(names == [format!("{full}-metrics")], "the ServiceMonitor selects the Services {names:?}");
    let service = &services["items"][0];
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().context("no endpoint port")?;
    ensure!(
        service["spec"]["ports"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == port)),
        "the metrics Service has no port {port}"
    );
    ensure!(monitor["spec"]["jobLabel"] == "app.kubernetes.io/name", "job label: {}", monitor["spec"]["jobLabel"]);
    let job = &service["metadata"]["labels"]["app.kubernetes.io/name"];
    ensure!(job == "flashsale-operator", "the scrape job would be {job}, not the alerts' flashsale-operator");
    let slices = json_of(&cluster.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        RELEASE_NS,
        "-l",
        &format!("kubernetes.io/service-name={full}-metrics"),
        "-o",
        "json",
    ])?)?;
    let ready = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .count();
    ensure!(ready == 1, "the metrics Service has {ready} ready endpoints");

    // The PrometheusRule holds the rules file promtool tests; the dashboard ConfigMap the file.
    let rule = stored_of("prometheusrules.monitoring.coreos.com", &full)?;
    let file: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("alerts/flashsale-operator.rules.yaml"))?)?;
    ensure!(rule["spec"]["groups"] == file["groups"], "the PrometheusRule's groups are not the rules file's");
    let dashboard = stored_of("configmap", &format!("{full}-dashboard"))?;
    let json_file = std::fs::read_to_string(chart.join("dashboards/flashsale-operator.json"))?;
    ensure!(
        dashboard["data"]["flashsale-operator.json"] == json_file.as_str(),
        "the dashboard ConfigMap is not the file"
    );
    ensure!(dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", "no sidecar label: {}", dashboard["metadata"]);
    ensure!(
        dashboard["metadata"]["annotations"]["grafana_folder"] == "Flash sales",
        "no folder: {}",
        dashboard["metadata"]
    );
    Ok(())
}

/// The PodMonitor's selector, in its namespace, picks exactly the operator's agent pods, each
/// with the port it scrapes and the chart's pull secrets.
async fn check_pod_monitor_selects_agents(cluster: &Cluster) -> anyhow::Result<()> {
    let name = format!("{RELEASE}-flashsale-operator-drain-agent");
    let monitor = json_of(&cluster.kubectl(&[
        "get",
        "podmonitors.monitoring.coreos.com",
        &name,
        "-n",
        RELEASE_NS,
        "-o",
        "json",
    ])?)?;
    let namespaces = monitor["spec"]["namespaceSelector"]["matchNames"].clone();
    ensure!(namespaces == json!([RELEASE_NS]), "the PodMonitor looks in {namespaces}");
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"].as_str().context("no port")?.to_owned();
    let by_monitor = selector(&monitor["spec"]["selector"]["matchLabels"])?;
    let pods_of = |labels: &str| -> anyhow::Result<Vec<Value>> {
        let list = json_of(&cluster.kubectl(&["get", "pods", "-n", RELEASE_NS, "-l", labels, "-o", "json"])?)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    };
    // The agents' DaemonSet the operator deployed for the sale, and its running pod.
    eventually(Duration::from_secs(60), || async {
        let agents = pods_of(flashsale_operator::levers::agents::AGENT_SELECTOR)?;
        Ok(!agents.is_empty() && agents.iter().all(|p| p["status"]["phase"] == "Running"))
    })
    .await
    .context("no drain agent pod ran")?;
    let agents = pods_of(flashsale_operator::levers::agents::AGENT_SELECTOR)?;
    let selected = pods_of(&by_monitor)?;
    let names = |ps: &[Value]| -> Vec<String> {
        let mut n: Vec<String> = ps.iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned)).collect();
        n.sort();
        n
    };
    ensure!(
        names(&selected) == names(&agents),
        "the PodMonitor selects {:?}, the agents are {:?}",
        names(&selected),
        names(&agents)
    );
    for pod in &selected {
        let ports = pod["spec"]["containers"][0]["ports"].as_array().cloned().unwrap_or_default();
        ensure!(ports.iter().any(|p| p["name"] == port.as_str()), "agent pod without port {port}: {ports:?}");
    }
    ensure!(
        selected.iter().all(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "flashsale-drain-agent"),
        "the scrape job (jobLabel app.kubernetes.io/name) is not flashsale-drain-agent"
    );
    // The agents run the operator's image, pulled with the operator's pull secrets.
    for pod in &selected {
        let pull = &pod["spec"]["imagePullSecrets"];
        ensure!(*pull == json!([{"name": "regcred"}]), "agent pod pull secrets: {pull}");
    }
    Ok(())
}

fn selector(match_labels: &Value) -> anyhow::Result<String> {
    let labels = match_labels.as_object().context("no matchLabels")?;
    ensure!(!labels.is_empty(), "an empty selector selects everything");
    Ok(labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
}
