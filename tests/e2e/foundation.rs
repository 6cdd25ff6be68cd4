//! The ground everything stands on: the control plane itself, the CRD and its admission rules,
//! the operator binary, and the Helm chart.

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use std::time::Duration;

use crate::{
    TestFn,
    harness::KUBERNETES_VERSION,
    support::{self, Env, Operator, block_on, block_on_value, client, eventually, flashsale_resource, namespace, repo},
};

pub const TESTS: &[(&str, TestFn)] = &[
    ("foundation::control_plane_serves_the_pinned_version", control_plane_serves_the_pinned_version),
    ("foundation::deployment_becomes_ready_on_kwok_nodes", deployment_becomes_ready_on_kwok_nodes),
    ("foundation::every_example_is_accepted", every_example_is_accepted),
    ("foundation::invalid_flashsales_are_rejected_naming_the_field", invalid_flashsales_are_rejected_naming_the_field),
    ("foundation::kubectl_get_shows_the_printer_columns", kubectl_get_shows_the_printer_columns),
    ("foundation::operator_becomes_ready_and_stops_on_sigterm", operator_becomes_ready_and_stops_on_sigterm),
    ("foundation::operator_refuses_a_cluster_without_the_crd", operator_refuses_a_cluster_without_the_crd),
    ("foundation::chart_lints_renders_and_is_accepted", chart_lints_renders_and_is_accepted),
    ("foundation::plan_reads_live_baselines_and_writes_nothing", plan_reads_live_baselines_and_writes_nothing),
];

fn control_plane_serves_the_pinned_version(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let version = client(cluster).await?.apiserver_version().await?;
        ensure!(
            version.git_version == KUBERNETES_VERSION,
            "server reports {}, want {KUBERNETES_VERSION}",
            version.git_version
        );
        Ok(())
    })
}

fn deployment_becomes_ready_on_kwok_nodes(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "deploy").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}
                }
            }
        }))?;
        deployments.create(&PostParams::default(), &deployment).await?;
        eventually(Duration::from_secs(90), || async {
            let d = deployments.get("web").await?;
            Ok(d.status.and_then(|s| s.ready_replicas) == Some(3))
        })
        .await
        .context("web never reached 3/3 ready replicas")?;
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let nodes: Vec<String> = pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .into_iter()
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
        ensure!(nodes.len() == 3, "expected 3 scheduled pods, found {nodes:?}");
        ensure!(
            nodes.iter().all(|n| n.starts_with("node-") || n.starts_with("spot-")),
            "pods landed on unexpected nodes: {nodes:?}"
        );
        Ok(())
    })
}

fn every_example_is_accepted(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "examples").await?;
        let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &flashsale_resource());
        let mut checked = 0;
        for entry in std::fs::read_dir(repo().join("examples"))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let mut obj = support::read_object(&path)?;
            obj.metadata.namespace = Some(ns.clone());
            support::apply(&api, &obj, true).await.with_context(|| format!("{} was rejected", path.display()))?;
            checked += 1;
        }
        ensure!(checked >= 3, "expected at least 3 examples, found {checked}");
        Ok(())
    })
}

/// Each file under `tests/e2e/invalid/` starts with one or more `# expect: TEXT` lines; the API
/// server must reject the object with a message containing every TEXT.
fn invalid_flashsales_are_rejected_naming_the_field(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "invalid").await?;
        let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &flashsale_resource());
        let mut files: Vec<_> = std::fs::read_dir(repo().join("tests/e2e/invalid"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        ensure!(files.len() >= 25, "the invalid corpus has only {} files", files.len());
        let mut failures = vec![];
        for path in &files {
            let text = std::fs::read_to_string(path)?;
            let expects: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
            ensure!(!expects.is_empty(), "{} has no `# expect:` line", path.display());
            let mut obj = support::read_object(path)?;
            obj.metadata.namespace = Some(ns.clone());
            match support::apply(&api, &obj, true).await {
                Ok(_) => failures.push(format!("{}: accepted", path.display())),
                Err(kube::Error::Api(status)) => {
                    let missing: Vec<_> = expects.iter().filter(|e| !status.message.contains(**e)).collect();
                    if status.code != 422 || !missing.is_empty() {
                        failures.push(format!(
                            "{}: HTTP {} without {missing:?} in: {}",
                            path.display(),
                            status.code,
                            status.message
                        ));
                    }
                }
                Err(other) => failures.push(format!("{}: {other}", path.display())),
            }
        }
        if !failures.is_empty() {
            bail!(
                "{} of {} invalid FlashSales were not rejected as expected:\n{}",
                failures.len(),
                files.len(),
                failures.join("\n")
            );
        }
        Ok(())
    })
}

fn kubectl_get_shows_the_printer_columns(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let ns = block_on_value(async {
        let client = client(cluster).await?;
        namespace(&client, "columns").await
    })?;
    // Written at +08:00; the table shows it (from status) in UTC like every other time.
    let sale = std::fs::read_to_string(repo().join("examples/product-drop.yaml"))?
        .replace("namespace: shop", "")
        .replace("2026-12-05T10:00:00Z", "2026-12-05T18:00:00+08:00");
    let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    cluster.kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], Some(&sale))?;
    block_on(async {
        let api: Api<DynamicObject> = Api::namespaced_with(client(cluster).await?, &ns, &flashsale_resource());
        eventually(Duration::from_secs(30), || async {
            Ok(api.get("sneaker-drop").await?.data.pointer("/status/windowStart").is_some())
        })
        .await
        .context("the operator never wrote the window to status")
    })?;
    let table = cluster.kubectl(&["get", "fs", "-n", &ns])?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(header == ["NAME", "PHASE", "START", "END", "READY", "NEXT", "AGE"], "kubectl get fs header is {header:?}");
    let wide = cluster.kubectl(&["get", "flashsale", "-n", &ns, "-o", "wide"])?;
    let wide_header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(wide_header.last() == Some(&"REASON"), "-o wide header is {wide_header:?}");
    let row = table.lines().nth(1).unwrap_or_default();
    ensure!(row.contains("sneaker-drop") && row.contains("2026-12-05T10:00:00Z"), "row: {row}");
    Ok(())
}

fn operator_becomes_ready_and_stops_on_sigterm(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let ns = block_on_value(async { namespace(&client(cluster).await?, "lifecycle").await })?;
    let mut operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, body)) = operator.get("/readyz") {
            ensure!(body == "ok", "/readyz body {body:?}");
            break;
        }
        if let Some(status) = operator.child.try_wait()? {
            bail!("operator exited early with {status}:\n{}", operator.log_text());
        }
        ensure!(std::time::Instant::now() < deadline, "operator not ready after 60s:\n{}", operator.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = operator.get("/healthz")?;
    ensure!(code == 200, "/healthz answered {code}");
    let (code, metrics) = operator.get("/metrics")?;
    ensure!(
        code == 200 && metrics.contains("flashsale_api_requests_total{cluster=\"local\",verb=\"watch\"}"),
        "/metrics answered {code}: {metrics}"
    );
    drop(body);
    operator.terminate()?;
    let status = operator.wait_exit(Duration::from_secs(20))?;
    ensure!(status.success(), "operator exited with {status} on SIGTERM:\n{}", operator.log_text());
    ensure!(operator.log_text().contains("stopped"), "no clean-stop log line:\n{}", operator.log_text());
    Ok(())
}

fn operator_refuses_a_cluster_without_the_crd(env: &Env) -> anyhow::Result<()> {
    let cluster = env.secondary()?;
    let mut operator = Operator::operator(cluster, &[])?;
    let status = operator.wait_exit(Duration::from_secs(30))?;
    ensure!(!status.success(), "operator started on a cluster without the CRD");
    let log = operator.log_text();
    ensure!(
        log.contains("FlashSale CRD (flashsales.flashsale.dev) is not installed")
            && log.contains("flashsale-operator crd"),
        "the refusal does not say how to install the CRD:\n{log}"
    );
    Ok(())
}

fn chart_lints_renders_and_is_accepted(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let chart = repo().join("charts/flashsale-operator");
    let helm = cluster.tool("helm");
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(&helm)
            .args(args)
            .env("HELM_CACHE_HOME", cluster.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", cluster.dir.join("helm/config"))
            .env("HELM_DATA_HOME", cluster.dir.join("helm/data"))
            .output()?;
        ensure!(
            out.status.success(),
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let chart_path = chart.display().to_string();
    run(&["lint", "--strict", &chart_path])?;
    let monitors = ["serviceMonitor.enabled=true", "podMonitor.enabled=true", "prometheusRule.enabled=true"];
    run(&["lint", "--strict", &chart_path, "--set", &monitors.join(",")])?;
    let rendered = run(&["template", "flashsale", &chart_path, "--namespace", "flashsale-system", "--include-crds"])?;
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "PodDisruptionBudget",
    ] {
        ensure!(rendered.contains(&format!("kind: {kind}")), "the chart renders no {kind}");
    }
    // One replica too is elected, and an upgrade starts the new pod (a standby) before the old
    // one stops: two pods for a moment, one leader always.
    ensure!(rendered.contains("- --leader-elect\n"), "the default install does not elect a leader");
    ensure!(
        rendered.contains("maxSurge: 1\n      maxUnavailable: 0\n"),
        "the update strategy can stop the leader first"
    );
    // values.schema.json: helm refuses a wrong value, naming it, before anything is rendered.
    for (how, set, says) in [
        ("--set", "replicaCount=two", "/replicaCount"),
        ("--set", "replicas=2", "additional properties 'replicas' not allowed"),
        ("--set", "image.digest=latest", "/image/digest"),
        ("--set", "agents.metadataEndpoints={https://169.254.169.254}", "/agents/metadataEndpoints/0"),
        ("--set", "logFormat=xml", "/logFormat"),
        // No allowed selector at all is not "none allowed": say so instead of guessing.
        ("--set-json", "agents.nodeSelectors=[]", "/agents/nodeSelectors': minItems"),
        ("--set", "serviceMonitor.interval=30", "/serviceMonitor/interval"),
        ("--set", "serviceMonitor.interval=30sec", "/serviceMonitor/interval"),
        ("--set", "podMonitor.port=9102", "additional properties 'port' not allowed"),
        ("--set-json", "podMonitor.relabelings={\"action\":\"drop\"}", "/podMonitor/relabelings"),
        ("--set", "grafanaDashboard.label=grafana dashboard", "/grafanaDashboard/label"),
        ("--set", "grafanaDashboard.namespace=Monitoring", "/grafanaDashboard/namespace"),
    ] {
        let refused = run(&["template", "flashsale", &chart_path, how, set]);
        ensure!(
            refused.as_ref().is_err_and(|e| e.to_string().contains(says)),
            "helm template {how} {set}: want a schema error naming {says}, got {refused:?}"
        );
    }
    // A list removed from the values leaves the operator's default, never an empty selector.
    let unset = run(&["template", "flashsale", &chart_path, "--set", "agents.nodeSelectors=null"])?;
    ensure!(!unset.contains("FLASHSALE_AGENT_NODE_SELECTORS"), "an unset agents.nodeSelectors reaches the operator");
    let extra = run(&[
        "template",
        "flashsale",
        &chart_path,
        "--set",
        "extraArgs={--lease-duration-seconds=30}",
        "--set",
        "podLabels.team=sre",
        "--set",
        "image.registry=registry.example.com",
        "--set",
        "image.digest=sha256:4587139eea952fad39a519013ba04248f003a9bf4322c20772b6b27933aa68f0",
    ])?;
    for want in [
        "- \"--lease-duration-seconds=30\"",
        "team: sre",
        "image: \"registry.example.com/flashsale-operator@sha256:4587139eea952fad39a519013ba04248f003a9bf4322c20772b6b27933aa68f0\"",
    ] {
        ensure!(extra.contains(want), "the chart does not render {want}");
    }
    // The drain agents run the operator's image: its pull secrets, unless theirs are set.
    let pull = |sets: &[&str]| -> anyhow::Result<Option<String>> {
        let mut args = vec!["template", "flashsale", &chart_path, "--show-only", "templates/deployment.yaml"];
        for set in sets {
            args.extend(["--set", set]);
        }
        let deployment: serde_json::Value = serde_saphyr::from_str(&run(&args)?)?;
        let env =
            deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().cloned().unwrap_or_default();
        Ok(env
            .iter()
            .find(|e| e["name"] == "FLASHSALE_AGENT_IMAGE_PULL_SECRETS")
            .and_then(|e| e["value"].as_str().map(str::to_owned)))
    };
    ensure!(pull(&[])?.is_none(), "agent pull secrets without any set");
    let operators = ["imagePullSecrets[0].name=regcred", "imagePullSecrets[1].name=mirror"];
    ensure!(
        pull(&operators)?.as_deref() == Some("regcred,mirror"),
        "the agents do not get the operator's pull secrets"
    );
    let own = [operators[0], "agents.imagePullSecrets={agents-only}"];
    ensure!(pull(&own)?.as_deref() == Some("agents-only"), "agents.imagePullSecrets does not win");
    // Monitors and the dashboard are off by default; the PodMonitor comes with mode remote too,
    // where agents run as well.
    for kind in ["ServiceMonitor", "PodMonitor", "ConfigMap"] {
        ensure!(!rendered.contains(&format!("kind: {kind}\n")), "the chart renders a {kind} by default");
    }
    let remote = run(&[
        "template",
        "flashsale",
        &chart_path,
        "--set",
        "mode=remote",
        "--set",
        "remote.subjects[0].kind=User",
        "--set",
        "remote.subjects[0].name=fso",
        "--set",
        "podMonitor.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "agents.namespace=agents",
    ])?;
    ensure!(!remote.contains("kind: ServiceMonitor"), "mode remote renders the operator's ServiceMonitor");
    let monitor = serde_saphyr::from_multiple::<serde_json::Value>(&remote)?
        .into_iter()
        .find(|o| o["kind"] == "PodMonitor")
        .context("mode remote renders no PodMonitor")?;
    ensure!(
        monitor["metadata"]["namespace"] == "agents"
            && monitor["spec"]["namespaceSelector"]["matchNames"][0] == "agents",
        "the PodMonitor is not in the agent namespace: {monitor}"
    );
    // The dashboard ConfigMap holds the chart's file as it is, and says so when it is missing.
    dashboard_renders_the_file_or_refuses(cluster, &chart, &run)?;
    // The PrometheusRule carries exactly the rules file promtool tests, with the chart's job name.
    ensure!(!rendered.contains("kind: PrometheusRule"), "the PrometheusRule is not off by default");
    let rule = run(&[
        "template",
        "flashsale",
        &chart_path,
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.operatorJob=fso",
        "--show-only",
        "templates/prometheusrule.yaml",
    ])?;
    let rule: serde_json::Value = serde_saphyr::from_str(&rule)?;
    let file = std::fs::read_to_string(chart.join("alerts/flashsale-operator.rules.yaml"))?
        .replace(r#"job="flashsale-operator""#, r#"job="fso""#);
    let file: serde_json::Value = serde_saphyr::from_str(&file)?;
    ensure!(rule["kind"] == "PrometheusRule", "not a PrometheusRule: {}", rule["kind"]);
    ensure!(rule["spec"]["groups"] == file["groups"], "the PrometheusRule's groups differ from the rules file");
    cluster.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: flashsale-system\n"),
    )?;
    // Server-side dry run: every rendered object passes the real API server's validation.
    cluster
        .kubectl_stdin(
            // Other tests own the shared agent RBAC objects (as the e2e field manager).
            &["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-n", "flashsale-system", "-f", "-"],
            Some(&rendered),
        )
        .context("the API server rejected the rendered chart")?;
    Ok(())
}

/// Renders the dashboard template from a copy of the chart (the dashboard JSON is its own
/// piece): refused, naming the value and the file, without the file; the file byte for byte,
/// with the sidecar label, folder annotation and namespace asked for, with one.
fn dashboard_renders_the_file_or_refuses(
    cluster: &crate::harness::Cluster,
    chart: &std::path::Path,
    run: &dyn Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let copy = cluster.dir.join("chart-dashboard").join("flashsale-operator");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy)?;
    let status = std::process::Command::new("cp").arg("-a").arg(chart.join(".")).arg(&copy).status()?;
    ensure!(status.success(), "copying the chart failed");
    let _ = std::fs::remove_dir_all(copy.join("dashboards"));
    let copy_path = copy.display().to_string();
    let on = [
        "template",
        "flashsale",
        &copy_path,
        "--show-only",
        "templates/dashboard.yaml",
        "--set",
        "grafanaDashboard.enabled=true",
    ];
    let refused = run(&on);
    ensure!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("grafanaDashboard.enabled")
            && e.to_string().contains("dashboards/flashsale-operator.json")),
        "a chart without its dashboard file: {refused:?}"
    );
    std::fs::create_dir_all(copy.join("dashboards"))?;
    let file = "{\"title\": \"flash <sale> & \\\"quotes\\\"\",\n\t\"panels\": []}\n";
    std::fs::write(copy.join("dashboards/flashsale-operator.json"), file)?;
    let mut args = on.to_vec();
    args.extend(["--set", "grafanaDashboard.namespace=monitoring", "--set", "grafanaDashboard.folder=Sales"]);
    args.extend(["--set", "grafanaDashboard.label=dashboards", "--set", "grafanaDashboard.labelValue=flashsale"]);
    let map: serde_json::Value = serde_saphyr::from_str(&run(&args)?)?;
    ensure!(map["kind"] == "ConfigMap", "not a ConfigMap: {map}");
    ensure!(
        map["data"]["flashsale-operator.json"] == file,
        "the ConfigMap's dashboard is not the file: {}",
        map["data"]
    );
    ensure!(map["metadata"]["namespace"] == "monitoring", "namespace {}", map["metadata"]["namespace"]);
    ensure!(map["metadata"]["labels"]["dashboards"] == "flashsale", "labels {}", map["metadata"]["labels"]);
    ensure!(
        map["metadata"]["annotations"]["grafana_folder"] == "Sales",
        "annotations {}",
        map["metadata"]["annotations"]
    );
    let default_label: serde_json::Value = serde_saphyr::from_str(&run(&on)?)?;
    ensure!(default_label["metadata"]["labels"]["grafana_dashboard"] == "1", "no sidecar label by default");
    ensure!(default_label["metadata"]["annotations"].is_null(), "a folder annotation without a folder");
    Ok(())
}

fn plan_reads_live_baselines_and_writes_nothing(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let ns = block_on_value(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "plan").await?;
        let deployments: Api<Deployment> = Api::namespaced(client, &ns);
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "storefront"},
            "spec": {
                "replicas": 7,
                "selector": {"matchLabels": {"app": "storefront"}},
                "template": {"metadata": {"labels": {"app": "storefront"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}}
            }
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
        Ok(ns)
    })?;
    // The deployment controller keeps updating status; what plan must not touch is spec and metadata.
    let state = "jsonpath={.metadata.generation} {.metadata.annotations} {.metadata.managedFields[*].manager}";
    let before = cluster.kubectl(&["get", "deployment", "storefront", "-n", &ns, "-o", state])?;
    let sale = std::fs::read_to_string(repo().join("examples/product-drop.yaml"))?
        .replace("namespace: shop", &format!("namespace: {ns}"));
    let file = cluster.dir.join(format!("plan-{ns}.yaml"));
    std::fs::write(&file, sale)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .args(["plan", "-f", &file.display().to_string(), "--now", "2026-12-05T09:50:00Z", "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "plan failed: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(text.contains("(Preparing)") && text.contains("replicas 7 -> 30 (Replicas)"), "plan output:\n{text}");
    ensure!(text.contains("back to 7"), "plan output:\n{text}");
    let after = cluster.kubectl(&["get", "deployment", "storefront", "-n", &ns, "-o", state])?;
    ensure!(before == after, "plan changed the Deployment ({before} -> {after})");
    ensure!(cluster.kubectl(&["get", "fs", "-n", &ns, "-o", "name"])?.trim().is_empty(), "plan created the FlashSale");
    Ok(())
}
