//! The Grafana dashboard against real data: a real Prometheus scrapes the operator (leader
//! elected), a drain agent and the shop's latency exporter while a sale with every lever runs
//! (a workload, spot drain agents, a warm-up, a breaker and a static flag) and a spot notice
//! drains the agent's node. Every panel's queries, read from the dashboard JSON with its
//! variables filled in, must return at least one series: no dead panels.

use anyhow::{Context as _, bail, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, PostParams};
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    TestFn,
    flags::Exporter,
    harness::{Cluster, metadata::MetadataServer},
    support::{
        AGENT_NAMESPACE, Agent, Env, Operator, at, block_on_value, client, eventually, flash_sale, http_get,
        install_agent_rbac, namespace, repo,
    },
};

pub const TESTS: &[(&str, TestFn)] = &[(
    "dashboard::every_panel_shows_data_during_a_sale_with_every_lever",
    every_panel_shows_data_during_a_sale_with_every_lever,
)];

/// The node the agent of this test drains: its own, with a taint only this test's pod
/// tolerates, so the drain touches nothing of other tests.
const NODE: &str = "dashboard-node";
const TEST_TAINT: &str = "e2e.flashsale.dev/dashboard-test";
const IMAGE: &str = "e2e.local/flashsale-operator:test";

/// Grafana's built-in range variables, as a dashboard over the last few minutes fills them.
const BUILTINS: [(&str, &str); 3] = [("$__rate_interval", "15s"), ("$__range", "5m"), ("$__interval", "15s")];

/// A real Prometheus scraping the given jobs every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, port: u16, jobs: &[(&str, u16)]) -> anyhow::Result<Prometheus> {
        std::fs::create_dir_all(dir)?;
        let mut config = "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n".to_owned();
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus (installed by tests/e2e/toolchain/build.sh)")?;
        Ok(Prometheus { child, port })
    }

    /// An instant query: the result series, or Prometheus' error.
    fn query(&self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let encoded = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let (code, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"))?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("prometheus answered {code}: {body}"))?;
        if answer["status"] != "success" {
            bail!("prometheus refused the query ({code}): {}", answer["error"]);
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of the single series `expr` returns, if it returns exactly one.
    fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(expr)?;
        Ok(match result.as_slice() {
            [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => None,
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test's node, created for it and deleted afterwards (with the agent identity's
/// DaemonSet that [`Agent::agent`] put on it), pass or fail.
struct OwnNode<'a> {
    cluster: &'a Cluster,
}

impl<'a> OwnNode<'a> {
    fn create(cluster: &'a Cluster) -> anyhow::Result<OwnNode<'a>> {
        let manifest = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: {NODE}\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64\n    type: kwok\nspec:\n  taints:\n  - {{key: {TEST_TAINT}, value: \"true\", effect: NoSchedule}}\nstatus:\n  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n"
        );
        // Left by an earlier run that was killed: start clean.
        let _ = cluster.kubectl(&["delete", "node", NODE, "--ignore-not-found"]);
        cluster.kubectl_stdin(&["create", "-f", "-"], Some(&manifest))?;
        Ok(OwnNode { cluster })
    }
}

impl Drop for OwnNode<'_> {
    fn drop(&mut self) {
        let identity = format!("agent-identity-{NODE}");
        let _ = self.cluster.kubectl(&["delete", "daemonset", "-n", AGENT_NAMESPACE, &identity, "--ignore-not-found"]);
        if let Err(err) = self.cluster.kubectl(&["delete", "node", NODE, "--ignore-not-found"]) {
            eprintln!("could not delete node {NODE}: {err:#}");
        }
    }
}

/// One query of one panel of the dashboard, with the dashboard's variables filled in.
struct PanelQuery {
    panel: String,
    expr: String,
}

/// Every panel's queries from the dashboard JSON, each `$variable` of the dashboard replaced by
/// its value here and Grafana's range variables by fixed durations.
fn panel_queries(path: &Path, values: &[(&str, &str)]) -> anyhow::Result<Vec<PanelQuery>> {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .context("no templating.list")?
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut substitutions: Vec<(String, &str)> = vec![];
    for name in variables.iter().filter(|n| **n != "datasource") {
        let value = values.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        substitutions.push((format!("${name}"), value.with_context(|| format!("no value for variable {name}"))?));
    }
    substitutions.extend(BUILTINS.iter().map(|(n, v)| ((*n).to_owned(), *v)));
    // The longest name first: `$sale_namespace` before `$sale`.
    substitutions.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let mut queries = vec![];
    for panel in dashboard["panels"].as_array().context("no panels")? {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr =
                target["expr"].as_str().with_context(|| format!("panel {title:?}: a target without expr"))?.to_owned();
            for (name, value) in &substitutions {
                expr = expr.replace(name, value);
            }
            ensure!(!expr.contains('$'), "panel {title:?}: a variable the dashboard does not define in {expr}");
            queries.push(PanelQuery { panel: title.clone(), expr });
        }
    }
    ensure!(!queries.is_empty(), "the dashboard has no queries");
    Ok(queries)
}

/// The panels whose query returns no series or fails, each named with its query.
fn dead_panels(prometheus: &Prometheus, queries: &[PanelQuery]) -> Vec<String> {
    queries
        .iter()
        .filter_map(|q| match prometheus.query(&q.expr) {
            Ok(series) if !series.is_empty() => None,
            Ok(_) => Some(format!("{:?}: no series for {}", q.panel, q.expr)),
            Err(err) => Some(format!("{:?}: {err:#} for {}", q.panel, q.expr)),
        })
        .collect()
}

fn every_panel_shows_data_during_a_sale_with_every_lever(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let dashboard = repo().join("charts/flashsale-operator/dashboards/flashsale-operator.json");
    let scratch = tempfile::tempdir()?;
    let exporter = Exporter::start(0.9)?;
    let metadata = MetadataServer::start()?;
    let _node = OwnNode::create(cluster)?;
    install_agent_rbac(cluster, AGENT_NAMESPACE)?;
    block_on_value(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "dashboard").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &crate::support::deployment("web", 1, None)?).await?;
        // The pod the spot notice will evict, on this test's node only.
        let mut pinned = crate::support::deployment("pinned", 1, None)?;
        if let Some(pod) = pinned.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            pod.node_selector = Some([("kubernetes.io/hostname".to_owned(), NODE.to_owned())].into());
            pod.tolerations = Some(vec![serde_json::from_value(
                serde_json::json!({"key": TEST_TAINT, "operator": "Exists", "effect": "NoSchedule"}),
            )?]);
        }
        deployments.create(&PostParams::default(), &pinned).await?;

        let mut agent = Agent::agent(cluster, NODE, &metadata.endpoint(), &["--poll-interval", "1s"])?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        // The operator must allow the Prometheus its breaker queries, which scrapes the
        // operator in turn: its address is chosen first.
        let prometheus_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("http://127.0.0.1:{prometheus_port}");
        let mut operator = Operator::operator(
            cluster,
            &[
                "--watch-namespace",
                &ns,
                "--leader-elect",
                "--leader-election-namespace",
                &ns,
                "--agent-image",
                IMAGE,
                "--agent-metadata-endpoint",
                "http://127.0.0.1:9",
                "--prometheus-url-allow",
                &url,
            ],
        )?;
        let prometheus = Prometheus::start(
            &scratch.path().join("prometheus"),
            prometheus_port,
            &[("flashsale-operator", operator.port), ("flashsale-drain-agent", agent.port), ("shop", exporter.port)],
        )?;

        // Preparing at +4 s, live from +10 s to +100 s: long enough to look at every panel.
        let mut sale = flash_sale(
            "flash",
            &ns,
            (&at(10), &at(100)),
            ("6s", "5s"),
            serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2, "mode": "Replicas"}}]),
        )?;
        // A poll interval no other test uses: these agents get a DaemonSet of their own.
        sale.spec.spot_drain = Some(serde_json::from_value(
            serde_json::json!({"metadataEndpoint": "http://127.0.0.1:9", "pollInterval": "7s"}),
        )?);
        sale.spec.degradation = Some(serde_json::from_value(serde_json::json!({
            "prometheus": {"url": url},
            "flags": [
                {"name": "reviews", "autoDegrade": {"query": "shop_latency_seconds", "above": 0.5, "for": "2s", "recoverAfter": "1h"}},
                {"name": "banner", "offDuring": ["Active"]},
            ],
        }))?);
        sale.spec.cache_warm = serde_json::from_value(serde_json::json!([{
            "name": "catalog",
            "startBefore": "5s",
            "template": {"spec": {"backoffLimit": 0, "template": {"spec": {
                "containers": [{"name": "warm", "image": "registry.example/cache-warmer:1"}],
                "restartPolicy": "Never",
            }}}},
        }]))?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        sales.create(&PostParams::default(), &sale).await?;

        // Live, with every lever in place: peak reached, agents ready, the warm-up done, the
        // breaker open on the exporter's high latency.
        let live = eventually(Duration::from_secs(60), || async {
            let s = sales.get("flash").await?.status.unwrap_or_default();
            let local = s.clusters.iter().find(|c| c.name == "local");
            Ok(s.phase == Some(Phase::Active)
                && local.is_some_and(|c| {
                    c.workloads.iter().any(|w| w.ready_replicas == Some(2) && w.target_replicas == Some(2))
                        && c.drain_agents.as_ref().is_some_and(|d| d.desired > 0 && d.ready == d.desired)
                        && c.warmups.iter().any(|w| w.state == "Succeeded")
                        && c.flags.iter().any(|f| f.name == "reviews" && f.reason == "BreakerOpen")
                }))
        })
        .await;
        let status = sales.get("flash").await?.status;
        operator.ensure_alive()?;
        live.with_context(|| format!("the sale never showed every lever in place: {status:?}"))?;

        // The spot notice: the agent drains its node and evicts the pinned pod.
        metadata.set_notice(Some(&at(120)));
        let evicted = eventually(Duration::from_secs(30), || async {
            Ok(agent.metric("flashsale_drain_agent_evictions_total{outcome=\"evicted\"}")? >= 1.0)
        })
        .await;
        agent.ensure_alive()?;
        evicted.with_context(|| format!("the agent never evicted the pinned pod; log:\n{}", agent.log_text()))?;

        // Every panel, as Grafana would ask for it, returns at least one series.
        let queries = panel_queries(&dashboard, &[("sale_namespace", ns.as_str()), ("sale", "flash")])?;
        let shown =
            eventually(Duration::from_secs(30), || async { Ok(dead_panels(&prometheus, &queries).is_empty()) }).await;
        shown.with_context(|| format!("dead panels:\n{}", dead_panels(&prometheus, &queries).join("\n")))?;

        // And they show what happened, not just something, once Prometheus has scraped it (a
        // scrape every second, later on a busy machine).
        let sel = format!("sale_namespace=\"{ns}\",sale=\"flash\",cluster=\"local\"");
        let expected: Vec<(String, f64)> = vec![
            (format!("flashsale_workload_ready_replicas{{{sel},workload=\"Deployment/{ns}/web\"}}"), 2.0),
            (format!("flashsale_workload_wanted_replicas{{{sel},workload=\"Deployment/{ns}/web\"}}"), 2.0),
            (format!("flashsale_warmup_state{{{sel},warmup=\"catalog\",state=\"Succeeded\"}}"), 1.0),
            (format!("flashsale_flag_breaker_open{{{sel},flag=\"reviews\"}}"), 1.0),
            (format!("flashsale_drain_agents_ready{{{sel}}} - flashsale_drain_agents_desired{{{sel}}}"), 0.0),
            (format!("flashsale_sale_phase{{sale_namespace=\"{ns}\",sale=\"flash\",phase=\"Active\"}}"), 1.0),
            ("max(flashsale_leader{job=\"flashsale-operator\"})".into(), 1.0),
            ("sum(flashsale_drain_agent_evictions_total{outcome=\"evicted\"})".into(), 1.0),
            // The breaker was seen closed before Preparing's first evaluations opened it: one trip.
            (format!("flashsale_flag_breaker_trips_total{{{sel},flag=\"reviews\"}}"), 1.0),
        ];
        let wrong = || -> Vec<String> {
            expected
                .iter()
                .filter_map(|(expr, want)| match prometheus.value(expr) {
                    Ok(got) if got == Some(*want) => None,
                    got => Some(format!("{expr} is {got:?}, not {want}")),
                })
                .collect()
        };
        let seen = eventually(Duration::from_secs(15), || async { Ok(wrong().is_empty()) }).await;
        seen.with_context(|| wrong().join("\n"))?;
        let countdown = prometheus
            .value(&format!("flashsale_sale_next_transition_timestamp_seconds{{sale_namespace=\"{ns}\"}} - time()"))?;
        ensure!(countdown.is_some_and(|s| s > 0.0 && s < 100.0), "the countdown to the window's end is {countdown:?}");
        let reclaim = prometheus.value("max(flashsale_drain_agent_termination_timestamp_seconds) - time()")?;
        ensure!(reclaim.is_some_and(|s| s > 60.0 && s <= 120.0), "the reclaim countdown is {reclaim:?}");

        // A second replica waits for the Lease: it says it is not leading, the first that it is.
        let mut standby = Operator::operator(
            cluster,
            &["--watch-namespace", &ns, "--leader-elect", "--leader-election-namespace", &ns],
        )?;
        standby.wait_ready(Duration::from_secs(30)).await?;
        let (_, standby_metrics) = standby.get("/metrics")?;
        ensure!(
            standby_metrics.lines().any(|l| l == "flashsale_leader 0"),
            "the standby does not say it waits:\n{standby_metrics}"
        );
        ensure!(operator.metric("flashsale_leader")? == 1.0, "the leader says it does not lead");
        drop(standby);

        // A deleted sale leaves no series behind on the operator.
        sales.delete("flash", &DeleteParams::default()).await?;
        let gone = eventually(Duration::from_secs(30), || async {
            let (_, body) = operator.get("/metrics")?;
            Ok(sales.get_opt("flash").await?.is_none() && !body.contains(&format!("sale_namespace=\"{ns}\"")))
        })
        .await;
        let (_, body) = operator.get("/metrics")?;
        let left: Vec<&str> = body.lines().filter(|l| l.contains(&format!("sale_namespace=\"{ns}\""))).collect();
        gone.with_context(|| format!("series of the deleted sale are left: {left:?}"))?;
        let _ = cluster.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
        Ok(())
    })
}
