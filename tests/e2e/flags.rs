//! Degradation flags end to end: what an app reads through a real OpenFeature client (the
//! OpenFeature SDK with the flagd provider in file mode) before, during and after the window,
//! with the operator stopped across boundaries; breakers over a real Prometheus; a pre-existing
//! ConfigMap back byte for byte; two clusters; the FeatureFlag target.

use anyhow::{Context as _, bail, ensure};
use flashsale_operator::api::{FlagStatus, FlashSale, Phase};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Client,
    api::{Api, DeleteParams, DynamicObject, PostParams},
    discovery::ApiResource,
};
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    TestFn, harness,
    support::{self, Env, Operator, at, block_on_value, client, condition, eventually, namespace},
};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "flags::static_flags_flip_on_time_for_an_openfeature_client_even_with_the_operator_down",
        static_flags_flip_on_time_for_an_openfeature_client_even_with_the_operator_down,
    ),
    (
        "flags::auto_degrade_opens_closes_and_holds_while_prometheus_is_down",
        auto_degrade_opens_closes_and_holds_while_prometheus_is_down,
    ),
    (
        "flags::pre_existing_configmap_is_merged_and_back_byte_for_byte_in_two_clusters",
        pre_existing_configmap_is_merged_and_back_byte_for_byte_in_two_clusters,
    ),
    (
        "flags::featureflag_target_is_written_where_its_crd_exists_and_refused_where_not",
        featureflag_target_is_written_where_its_crd_exists_and_refused_where_not,
    ),
    (
        "flags::a_configmap_that_is_not_a_flag_file_is_refused_and_left_alone",
        a_configmap_that_is_not_a_flag_file_is_refused_and_left_alone,
    ),
];

/// The operator's count of passes over sales.
const RECONCILES: &str = "flashsale_reconcile_duration_seconds_count{lever=\"timeline\"}";

const FLAGS_KEY: &str = "flags.flagd.json";

/// The OpenFeature clients, installed and cached by the toolchain script.
fn openfeature() -> anyhow::Result<PathBuf> {
    harness::built("tests/e2e/toolchain/openfeature/build.sh")
}

fn script(name: &str) -> PathBuf {
    support::repo().join("tests/e2e/toolchain/openfeature").join(name)
}

/// Evaluates `flags` from the flag file `text` as an app would (OpenFeature SDK + flagd provider
/// in file mode, at the current time): each flag's value, `None` when it cannot be evaluated.
fn evaluate(text: &str, flags: &[&str]) -> anyhow::Result<BTreeMap<String, Option<bool>>> {
    let dir = openfeature()?;
    let file = tempfile::Builder::new().suffix(".flagd.json").tempfile()?;
    std::fs::write(file.path(), text)?;
    let out =
        Command::new(dir.join("venv/bin/python")).arg(script("evaluate.py")).arg(file.path()).args(flags).output()?;
    ensure!(out.status.success(), "evaluate.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut values = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let flag = v["flag"].as_str().context("no flag in evaluate.py output")?.to_owned();
        if v["value"].as_bool().is_none() {
            eprintln!("evaluate.py could not evaluate {flag}: {line}\nfile:\n{text}");
        }
        values.insert(flag, v["value"].as_bool());
    }
    Ok(values)
}

/// Checks `text` against flagd's published flag and targeting schemas (flagd-core's strict mode).
fn validate(text: &str) -> anyhow::Result<()> {
    let dir = openfeature()?;
    let file = tempfile::Builder::new().suffix(".flagd.json").tempfile()?;
    std::fs::write(file.path(), text)?;
    let out = Command::new("node")
        .arg(script("validate.cjs"))
        .arg(file.path())
        .env("NODE_PATH", dir.join("node_modules"))
        .output()?;
    ensure!(
        out.status.success(),
        "the flag file is not valid against flagd's schema: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn expect(values: &BTreeMap<String, Option<bool>>, want: &[(&str, bool)], when: &str) -> anyhow::Result<()> {
    for (flag, value) in want {
        let got = values.get(*flag).copied().flatten();
        ensure!(
            got == Some(*value),
            "{when}: the OpenFeature client read {flag}={got:?}, want {value} (all: {values:?})"
        );
    }
    Ok(())
}

async fn flags_file(client: &Client, ns: &str, name: &str) -> anyhow::Result<Option<String>> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(cms.get_opt(name).await?.and_then(|c| c.data).and_then(|d| d.get(FLAGS_KEY).cloned()))
}

fn default_variant(file: &str, flag: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(file).ok()?;
    v["flags"][flag]["defaultVariant"].as_str().map(str::to_owned)
}

pub(crate) async fn web(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}}
        }
    }))?;
    api.create(&PostParams::default(), &d).await?;
    Ok(())
}

fn sale(
    ns: &str,
    (start, end): (&str, &str),
    leads: (&str, &str),
    degradation: serde_json::Value,
) -> anyhow::Result<FlashSale> {
    let workloads =
        serde_json::json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 1, "mode": "Replicas"}}]);
    let mut s = support::flash_sale("flash", ns, (start, end), leads, workloads)?;
    s.spec.degradation = Some(serde_json::from_value(degradation)?);
    Ok(s)
}

pub(crate) fn flag_status(sale: &FlashSale, cluster: &str, flag: &str) -> Option<FlagStatus> {
    sale.status.as_ref()?.clusters.iter().find(|c| c.name == cluster)?.flags.iter().find(|f| f.name == flag).cloned()
}

async fn wait_phase(sales: &Api<FlashSale>, want: Phase, secs: u64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(secs), || async {
        Ok(sales.get("flash").await?.status.and_then(|s| s.phase) == Some(want))
    })
    .await
    .with_context(|| format!("the sale never reached {want}"))
}

/// Sleeps until `at` plus a little slack.
async fn until(at: Timestamp, slack_ms: i64) {
    let wait = at.duration_since(Timestamp::now()) + SignedDuration::from_millis(slack_ms);
    if let Ok(d) = Duration::try_from(wait) {
        tokio::time::sleep(d).await;
    }
}

fn static_flags_flip_on_time_for_an_openfeature_client_even_with_the_operator_down(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    openfeature()?;
    block_on_value(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "flags-static").await?;
        web(&client, &ns).await?;
        let mut operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let (start, end) = (at(20), at(30));
        let degradation = serde_json::json!({
            "configMapName": "shop-flags",
            "flags": [
                {"name": "recommendations", "offDuring": ["Preparing", "Active"]},
                {"name": "banner", "offDuring": ["CoolingDown"]},
            ]
        });
        sales.create(&PostParams::default(), &sale(&ns, (&start, &end), ("6s", "4s"), degradation)?).await?;
        let start: Timestamp = start.parse()?;
        let end: Timestamp = end.parse()?;
        let prepare_at = start - SignedDuration::from_secs(6);

        // Published while Scheduled, with the windows in targeting.
        eventually(Duration::from_secs(10), || async { Ok(flags_file(&client, &ns, "shop-flags").await?.is_some()) })
            .await
            .context("the flags ConfigMap was never published while Scheduled")?;
        let published = flags_file(&client, &ns, "shop-flags").await?.context("flags gone")?;
        ensure!(Timestamp::now() < prepare_at, "too slow: Preparing began before the flags could be read");
        validate(&published)?;
        expect(
            &evaluate(&published, &["recommendations", "banner"])?,
            &[("recommendations", true), ("banner", true)],
            "before the sale",
        )?;
        eventually(Duration::from_secs(5), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "FlagsPublished").is_some_and(|(st, r, _)| st == "True" && r == "Published")
                && flag_status(&s, "local", "recommendations").is_some_and(|f| f.enabled && f.reason == "PhaseOn"))
        })
        .await
        .context("FlagsPublished/flag status not shown while Scheduled")?;

        // The operator dies before Preparing; the app still flips on the second.
        operator.kill()?;
        until(prepare_at, -1500).await;
        expect(&evaluate(&published, &["recommendations"])?, &[("recommendations", true)], "just before Preparing")?;
        until(prepare_at, 300).await;
        let unchanged = flags_file(&client, &ns, "shop-flags").await?.context("flags gone")?;
        ensure!(unchanged == published, "something rewrote the flags while the operator was down");
        expect(
            &evaluate(&published, &["recommendations", "banner"])?,
            &[("recommendations", false), ("banner", true)],
            "Preparing, operator down",
        )?;

        // Back during Active: the operator moves defaultVariant to the phase's value too.
        until(start, 300).await;
        expect(&evaluate(&published, &["recommendations"])?, &[("recommendations", false)], "Active, operator down")?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        eventually(Duration::from_secs(6), || async {
            let file = flags_file(&client, &ns, "shop-flags").await?.unwrap_or_default();
            Ok(default_variant(&file, "recommendations").as_deref() == Some("off"))
        })
        .await
        .context("the restarted operator did not set recommendations' defaultVariant to off during Active")?;
        let active = flags_file(&client, &ns, "shop-flags").await?.context("flags gone")?;
        validate(&active)?;
        expect(
            &evaluate(&active, &["recommendations", "banner"])?,
            &[("recommendations", false), ("banner", true)],
            "Active",
        )?;
        let s = sales.get("flash").await?;
        let rec = flag_status(&s, "local", "recommendations").context("no status for recommendations")?;
        ensure!(
            !rec.enabled && rec.reason == "PhaseOff" && rec.since.as_ref().map(|t| t.0) == Some(prepare_at),
            "status of recommendations during Active: {rec:?}"
        );
        let events = support::events(&client, &ns, "flash").await?;
        ensure!(
            events.iter().any(|(r, n)| r == "FlagFlipped" && n.contains("recommendations is now off")),
            "no FlagFlipped event for recommendations: {events:?}"
        );

        // After the window: on again for the live file and for the file left while the operator was down.
        until(end, 300).await;
        expect(
            &evaluate(&published, &["recommendations", "banner"])?,
            &[("recommendations", true), ("banner", false)],
            "CoolingDown, file from before the sale",
        )?;
        let cooling = flags_file(&client, &ns, "shop-flags").await?.context("flags gone during CoolingDown")?;
        expect(
            &evaluate(&cooling, &["recommendations", "banner"])?,
            &[("recommendations", true), ("banner", false)],
            "CoolingDown",
        )?;

        wait_phase(&sales, Phase::Completed, 20).await?;
        ensure!(
            flags_file(&client, &ns, "shop-flags").await?.is_none(),
            "the ConfigMap the sale created is still there after Completed"
        );
        let s = sales.get("flash").await?;
        ensure!(
            condition(&s, "FlagsPublished").is_some_and(|(st, r, _)| st == "False" && r == "Restored"),
            "FlagsPublished after the sale: {:?}",
            condition(&s, "FlagsPublished")
        );
        Ok(())
    })
}

/// A tiny exporter the test controls: `/metrics` answers `shop_latency_seconds <value>`.
pub(crate) struct Exporter {
    pub(crate) port: u16,
    value: Arc<Mutex<f64>>,
}

impl Exporter {
    pub(crate) fn start(value: f64) -> anyhow::Result<Exporter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let value = Arc::new(Mutex::new(value));
        let shared = value.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let v = *shared.lock().unwrap_or_else(|p| p.into_inner());
                let body = format!("# TYPE shop_latency_seconds gauge\nshop_latency_seconds {v}\n");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Exporter { port, value })
    }

    pub(crate) fn set(&self, v: f64) {
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// A real Prometheus process scraping the exporter every second, killed on drop.
pub(crate) struct Prometheus {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    exporter_port: u16,
    starts: u32,
    /// Prometheus' `--web.config.file` (TLS and basic auth), if any.
    web_config: Option<PathBuf>,
}

impl Prometheus {
    pub(crate) fn start(dir: &Path, exporter_port: u16) -> anyhow::Result<Prometheus> {
        Self::start_with(dir, exporter_port, None)
    }

    /// [`Prometheus::start`] behind a web config (its `tls_server_config` makes the URL https).
    pub(crate) fn start_with(
        dir: &Path,
        exporter_port: u16,
        web_config: Option<PathBuf>,
    ) -> anyhow::Result<Prometheus> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut p = Prometheus { child: None, port, dir: dir.to_owned(), exporter_port, starts: 0, web_config };
        p.restart()?;
        Ok(p)
    }

    pub(crate) fn url(&self) -> String {
        let tls = self
            .web_config
            .as_ref()
            .and_then(|c| std::fs::read_to_string(c).ok())
            .is_some_and(|c| c.contains("tls_server_config"));
        format!("{}://127.0.0.1:{}", if tls { "https" } else { "http" }, self.port)
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let config = self.dir.join("prometheus.yml");
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: shop\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
                self.exporter_port
            ),
        )?;
        let log = std::fs::File::create(self.dir.join(format!("prometheus-{}.log", self.starts)))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.join(format!("data-{}", self.starts)).display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .args(self.web_config.iter().map(|c| format!("--web.config.file={}", c.display())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus (installed by tests/e2e/toolchain/build.sh)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until a query for the exporter's series answers a number (plain http only).
    pub(crate) async fn wait_scraping(&self) -> anyhow::Result<()> {
        let port = self.port;
        eventually(Duration::from_secs(20), || async move {
            let (code, body) = support::http_get(port, "/api/v1/query?query=shop_latency_seconds")?;
            Ok(code == 200 && body.contains("\"value\""))
        })
        .await
        .context("prometheus never scraped the exporter")
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn auto_degrade_opens_closes_and_holds_while_prometheus_is_down(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    openfeature()?;
    let exporter = Exporter::start(0.1)?;
    let scratch = tempfile::tempdir()?;
    let mut prometheus = Prometheus::start(scratch.path(), exporter.port)?;
    block_on_value(async {
        prometheus.wait_scraping().await?;
        let client = client(cluster).await?;
        let ns = namespace(&client, "flags-breaker").await?;
        web(&client, &ns).await?;
        let mut operator =
            Operator::operator(cluster, &["--watch-namespace", &ns, "--prometheus-url-allow", &prometheus.url()])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let degradation = serde_json::json!({
            "prometheus": {"url": prometheus.url()},
            "flags": [{"name": "reviews", "autoDegrade": {"query": "shop_latency_seconds", "above": 0.5, "for": "4s", "recoverAfter": "5s"}}]
        });
        sales.create(&PostParams::default(), &sale(&ns, (&at(3), &at(120)), ("2s", "5s"), degradation)?).await?;
        let reviews = |s: &FlashSale| flag_status(s, "local", "reviews");
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            Ok(s.status.as_ref().and_then(|st| st.phase) == Some(Phase::Active)
                && reviews(&s).is_some_and(|f| f.enabled && f.reason == "BreakerClosed"))
        })
        .await
        .context("the breaker never showed closed in Active")?;
        let file = || async { flags_file(&client, &ns, "flashsale-flags").await.map(|f| f.unwrap_or_default()) };
        expect(&evaluate(&file().await?, &["reviews"])?, &[("reviews", true)], "healthy signal")?;
        // The breaker is evaluated every second; a steady signal writes nothing.
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let version = cms.get("flashsale-flags").await?.metadata.resource_version;
        let passes = operator.metric(RECONCILES)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(operator.metric(RECONCILES)? >= passes + 2.0, "the breaker was not evaluated in 3 s");
        ensure!(
            cms.get("flashsale-flags").await?.metadata.resource_version == version,
            "the flags ConfigMap was rewritten while nothing changed"
        );

        // The signal goes bad: the flag turns off once it has stayed above 0.5 for 4s.
        exporter.set(0.93);
        let raised = Timestamp::now();
        eventually(Duration::from_secs(15), || async {
            Ok(default_variant(&file().await?, "reviews").as_deref() == Some("off"))
        })
        .await
        .context("the breaker never opened")?;
        let opened_after = Timestamp::now().duration_since(raised);
        ensure!(opened_after >= SignedDuration::from_secs(4), "opened after only {opened_after}: `for` not honoured");
        expect(&evaluate(&file().await?, &["reviews"])?, &[("reviews", false)], "breaker open")?;
        validate(&file().await?)?;
        let s = sales.get("flash").await?;
        let f = reviews(&s).context("no status for reviews")?;
        ensure!(!f.enabled && f.reason == "BreakerOpen" && f.value == Some(0.93), "status when open: {f:?}");
        let events = support::events(&client, &ns, "flash").await?;
        ensure!(
            events.iter().any(|(r, n)| r == "FlagFlipped"
                && n.contains("reviews is now off")
                && n.contains("0.93")
                && n.contains("0.5")),
            "no FlagFlipped event naming the value and threshold: {events:?}"
        );

        // Prometheus goes away and the signal recovers unseen: the flag holds, and says why.
        prometheus.stop();
        exporter.set(0.1);
        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "FlagsPublished").is_some_and(|(st, r, _)| st == "False" && r == "QueryFailing")
                && reviews(&s).is_some_and(|f| f.reason.starts_with("QueryFailed")))
        })
        .await
        .context("a failing query is not shown in FlagsPublished and the flag's reason")?;
        let passes = operator.metric(RECONCILES)?;
        tokio::time::sleep(Duration::from_secs(7)).await;
        ensure!(
            operator.metric(RECONCILES)? >= passes + 2.0,
            "the breaker was not evaluated while Prometheus was down"
        );
        ensure!(
            default_variant(&file().await?, "reviews").as_deref() == Some("off"),
            "the flag moved while Prometheus was down"
        );
        let s = sales.get("flash").await?;
        let f = reviews(&s).context("no status for reviews")?;
        ensure!(!f.enabled, "status shows reviews on while Prometheus is down: {f:?}");
        let events = support::events(&client, &ns, "flash").await?;
        let failures = events.iter().filter(|(r, _)| r == "FlagQueryFailed").count();
        ensure!(failures >= 1, "no FlagQueryFailed event: {events:?}");
        let (_, metrics) = operator.get("/metrics")?;
        let errors = metrics
            .lines()
            .find(|l| l.starts_with("flashsale_flag_query_errors_total{") && l.contains("flag=\"reviews\""))
            .context("no flashsale_flag_query_errors_total for reviews")?;
        ensure!(errors.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 2.0), "{errors}");
        ensure!(metrics.contains("flashsale_flag_enabled{"), "no flashsale_flag_enabled gauge");

        // A restarted operator takes the open breaker from the cluster, not from memory: with the
        // query still failing it must not start over as closed (on).
        operator.kill()?;
        let operator =
            Operator::operator(cluster, &["--watch-namespace", &ns, "--prometheus-url-allow", &prometheus.url()])?;
        // Two passes of the new operator, each evaluating the breaker with the query failing.
        eventually(Duration::from_secs(20), || async { Ok(operator.metric(RECONCILES)? >= 2.0) })
            .await
            .context("the restarted operator did not evaluate the sale")?;
        ensure!(
            default_variant(&file().await?, "reviews").as_deref() == Some("off"),
            "the restarted operator turned reviews back on while Prometheus was down"
        );
        let s = sales.get("flash").await?;
        let f = reviews(&s).context("no status for reviews")?;
        ensure!(!f.enabled && f.reason.starts_with("QueryFailed"), "status after the restart: {f:?}");

        // Prometheus is back: half-open first, closed after 5s below the threshold.
        prometheus.restart()?;
        prometheus.wait_scraping().await?;
        let back = Timestamp::now();
        eventually(Duration::from_secs(15), || async {
            Ok(default_variant(&file().await?, "reviews").as_deref() == Some("on"))
        })
        .await
        .context("the breaker never closed after Prometheus came back")?;
        let closed_after = Timestamp::now().duration_since(back);
        ensure!(
            closed_after >= SignedDuration::from_secs(4),
            "closed after only {closed_after}: recoverAfter not honoured"
        );
        expect(&evaluate(&file().await?, &["reviews"])?, &[("reviews", true)], "breaker closed")?;
        let events = support::events(&client, &ns, "flash").await?;
        ensure!(
            events.iter().any(|(r, n)| r == "FlagBreaker" && n.contains("HalfOpen")),
            "no half-open event: {events:?}"
        );
        ensure!(
            events.iter().any(|(r, n)| r == "FlagQueryRecovered" && n.contains("reviews")),
            "no event saying the query works again: {events:?}"
        );
        ensure!(
            events.iter().filter(|(r, _)| r == "FlagQueryFailed").count() == failures,
            "the failing query was announced more than once: {events:?}"
        );
        ensure!(
            events.iter().any(|(r, n)| r == "FlagFlipped" && n.contains("reviews is now on")),
            "no FlagFlipped event for closing: {events:?}"
        );

        // Deleting the sale removes the ConfigMap it created.
        sales.delete("flash", &DeleteParams::default()).await?;
        eventually(Duration::from_secs(15), || async { Ok(sales.get_opt("flash").await?.is_none()) }).await?;
        ensure!(flags_file(&client, &ns, "flashsale-flags").await?.is_none(), "the ConfigMap outlived the sale");
        drop(operator);
        Ok(())
    })
}

/// A kubeconfig Secret `name` holding `kubeconfig`.
async fn kubeconfig_secret(client: &Client, ns: &str, name: &str, kubeconfig: &str) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"kubeconfig": kubeconfig},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// Everything of a ConfigMap its owner wrote.
fn as_written(cm: &ConfigMap) -> serde_json::Value {
    serde_json::json!({
        "labels": cm.metadata.labels,
        "annotations": cm.metadata.annotations,
        "data": cm.data,
        "binaryData": cm.binary_data,
    })
}

fn pre_existing_configmap_is_merged_and_back_byte_for_byte_in_two_clusters(env: &Env) -> anyhow::Result<()> {
    let primary = env.primary()?;
    let secondary = env.secondary()?;
    openfeature()?;
    block_on_value(async {
        let client = client(primary).await?;
        let remote = support::client(secondary).await?;
        let ns = namespace(&client, "flags-merge").await?;
        support::namespace_named(&remote, &ns).await?;
        web(&client, &ns).await?;
        web(&remote, &ns).await?;
        kubeconfig_secret(&client, &ns, "here", &std::fs::read_to_string(&primary.kubeconfig)?).await?;
        // The operator is a plain user there, with only the rights the chart's mode remote grants.
        kubeconfig_secret(&client, &ns, "there", &support::remote_identity(secondary, &[&ns])?.1).await?;

        // The app team's own flag file, with odd spacing and a flag of the same name as ours.
        let owners_file = "{\n  \"flags\": {\n    \"dark-mode\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true, \"off\": false}, \"defaultVariant\": \"on\"},\n    \"recommendations\": {\"state\": \"ENABLED\", \"variants\": {\"on\": true, \"off\": false}, \"defaultVariant\": \"on\"}\n  }\n}\n";
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let original: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-flags", "labels": {"team": "shop"}, "annotations": {"owner": "shop-team"}},
            "data": {FLAGS_KEY: owners_file, "other.txt": "untouched"},
        }))?;
        cms.create(&PostParams::default(), &original).await?;
        let before = as_written(&cms.get("shop-flags").await?);

        let _operator = Operator::operator(primary, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let degradation = serde_json::json!({
            "configMapName": "shop-flags",
            "flags": [{"name": "recommendations", "offDuring": ["Active"]}]
        });
        let mut s = sale(&ns, (&at(8), &at(14)), ("3s", "2s"), degradation)?;
        s.spec.clusters = serde_json::from_value(serde_json::json!([
            {"name": "here", "kubeconfigSecretRef": {"name": "here"}},
            {"name": "there", "kubeconfigSecretRef": {"name": "there"}},
        ]))?;
        sales.create(&PostParams::default(), &s).await?;

        wait_phase(&sales, Phase::Active, 20).await?;
        let remote_file = || async { flags_file(&remote, &ns, "shop-flags").await };
        eventually(Duration::from_secs(8), || async {
            let here = flags_file(&client, &ns, "shop-flags").await?.unwrap_or_default();
            let there = remote_file().await?.unwrap_or_default();
            Ok(default_variant(&here, "recommendations").as_deref() == Some("off")
                && default_variant(&there, "recommendations").as_deref() == Some("off"))
        })
        .await
        .context("recommendations not off in both clusters during Active")?;
        let here = flags_file(&client, &ns, "shop-flags").await?.context("flags gone")?;
        validate(&here)?;
        expect(
            &evaluate(&here, &["dark-mode", "recommendations"])?,
            &[("dark-mode", true), ("recommendations", false)],
            "Active, merged file",
        )?;
        let there = remote_file().await?.context("no flags in the second cluster")?;
        validate(&there)?;
        expect(&evaluate(&there, &["recommendations"])?, &[("recommendations", false)], "Active, second cluster")?;
        let live = cms.get("shop-flags").await?;
        ensure!(
            live.data.as_ref().and_then(|d| d.get("other.txt")).map(String::as_str) == Some("untouched"),
            "another key of the ConfigMap changed"
        );
        let s = sales.get("flash").await?;
        ensure!(
            condition(&s, "FlagsPublished").is_some_and(|(st, _, _)| st == "True"),
            "FlagsPublished: {:?}",
            condition(&s, "FlagsPublished")
        );
        for cluster in ["here", "there"] {
            ensure!(
                flag_status(&s, cluster, "recommendations").is_some_and(|f| !f.enabled),
                "cluster {cluster} does not show recommendations off"
            );
        }

        wait_phase(&sales, Phase::Completed, 25).await?;
        let after = as_written(&cms.get("shop-flags").await?);
        ensure!(after == before, "the pre-existing ConfigMap is not back as it was:\nbefore {before}\nafter  {after}");
        ensure!(remote_file().await?.is_none(), "the ConfigMap the sale created in the second cluster is still there");
        Ok(())
    })
}

fn featureflag_resource() -> ApiResource {
    ApiResource {
        group: "core.openfeature.dev".into(),
        version: "v1beta1".into(),
        api_version: "core.openfeature.dev/v1beta1".into(),
        kind: "FeatureFlag".into(),
        plural: "featureflags".into(),
    }
}

fn featureflag_target_is_written_where_its_crd_exists_and_refused_where_not(env: &Env) -> anyhow::Result<()> {
    let primary = env.primary()?;
    let secondary = env.secondary()?;
    openfeature()?;
    primary.install_crd(&support::repo().join("tests/e2e/toolchain/openfeature/featureflag-crd.yaml"))?;
    block_on_value(async {
        let client = client(primary).await?;
        let remote = support::client(secondary).await?;
        let ns = namespace(&client, "flags-ff").await?;
        support::namespace_named(&remote, &ns).await?;
        web(&client, &ns).await?;
        web(&remote, &ns).await?;
        kubeconfig_secret(&client, &ns, "here", &std::fs::read_to_string(&primary.kubeconfig)?).await?;
        // The operator is a plain user there, with only the rights the chart's mode remote grants.
        kubeconfig_secret(&client, &ns, "there", &support::remote_identity(secondary, &[&ns])?.1).await?;
        let _operator = Operator::operator(primary, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let degradation = serde_json::json!({
            "target": "FeatureFlag",
            "configMapName": "shop",
            "flags": [{"name": "recommendations", "offDuring": ["Preparing", "Active"]}]
        });
        let mut s = sale(&ns, (&at(30), &at(60)), ("20s", "5s"), degradation)?;
        s.spec.clusters = serde_json::from_value(serde_json::json!([
            {"name": "here", "kubeconfigSecretRef": {"name": "here"}},
            {"name": "there", "kubeconfigSecretRef": {"name": "there"}},
        ]))?;
        sales.create(&PostParams::default(), &s).await?;

        let ffs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &featureflag_resource());
        eventually(Duration::from_secs(20), || async {
            let ff = ffs.get_opt("shop").await?;
            Ok(ff.is_some_and(|f| {
                f.data.pointer("/spec/flagSpec/flags/recommendations/defaultVariant").and_then(|v| v.as_str())
                    == Some("off")
            }))
        })
        .await
        .context("no FeatureFlag with recommendations off while Preparing")?;
        let ff = ffs.get("shop").await?;
        let file = serde_json::json!({"flags": ff.data.pointer("/spec/flagSpec/flags").cloned().unwrap_or_default()})
            .to_string();
        validate(&file)?;
        expect(&evaluate(&file, &["recommendations"])?, &[("recommendations", false)], "Preparing, FeatureFlag")?;

        eventually(Duration::from_secs(10), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "FlagsPublished").is_some_and(|(st, r, m)| {
                st == "False"
                    && r == "FeatureFlagCRDMissing"
                    && m.contains("cluster there")
                    && m.contains("featureflags.core.openfeature.dev")
            }) && condition(&s, "Ready").is_some_and(|(st, r, _)| st == "False" && r == "FeatureFlagCRDMissing"))
        })
        .await
        .with_context(|| "the cluster without the FeatureFlag CRD is not named as blocking")?;

        sales.delete("flash", &DeleteParams::default()).await?;
        eventually(Duration::from_secs(20), || async { Ok(sales.get_opt("flash").await?.is_none()) })
            .await
            .context("the sale was not released after its restore")?;
        if ffs.get_opt("shop").await?.is_some() {
            bail!("the FeatureFlag the sale created outlived it");
        }
        Ok(())
    })
}

fn a_configmap_that_is_not_a_flag_file_is_refused_and_left_alone(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on_value(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "flags-refuse").await?;
        web(&client, &ns).await?;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let theirs: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "flashsale-flags"},
            "data": {FLAGS_KEY: "recommendations=on\n"},
        }))?;
        cms.create(&PostParams::default(), &theirs).await?;
        let before = as_written(&cms.get("flashsale-flags").await?);
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let degradation = serde_json::json!({"flags": [{"name": "recommendations", "offDuring": ["Active"]}]});
        sales.create(&PostParams::default(), &sale(&ns, (&at(3600), &at(7200)), ("30m", "5m"), degradation)?).await?;
        eventually(Duration::from_secs(15), || async {
            let s = sales.get("flash").await?;
            Ok(condition(&s, "FlagsPublished").is_some_and(|(st, r, m)| {
                st == "False" && r == "NotAFlagFile" && m.contains("it is not JSON") && m.contains("left unchanged")
            }) && condition(&s, "Ready").is_some_and(|(st, r, _)| st == "False" && r == "PreflightFailed"))
        })
        .await
        .context("the refusal is not explained in FlagsPublished and Ready")?;
        ensure!(as_written(&cms.get("flashsale-flags").await?) == before, "the refused ConfigMap was changed");
        sales.delete("flash", &DeleteParams::default()).await?;
        eventually(Duration::from_secs(15), || async { Ok(sales.get_opt("flash").await?.is_none()) })
            .await
            .context("the sale was not released")?;
        ensure!(
            as_written(&cms.get("flashsale-flags").await?) == before,
            "deleting the sale changed a ConfigMap it never held"
        );
        Ok(())
    })
}
