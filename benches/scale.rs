//! Benchmark of the operator at scale against real control planes (the e2e harness): what it
//! asks of the API servers while sales hold their changes, what a reconcile with nothing to do
//! reads, and how 1,000 sales fare in one operator. It prints numbers and asserts nothing about
//! them.
//!
//! `cargo bench --bench scale` runs every part; `FLASHSALE_BENCH_PARTS` picks some
//! (`remote,clusters,many`). `FLASHSALE_BENCH_OPERATOR=<path>` runs another build of the
//! operator (an older commit's, to compare), `FLASHSALE_BENCH_SALES` changes the 1,000 of the
//! last part. Requests to a cluster are counted in that API server's audit log, by the user the
//! operator's kubeconfig Secret names there, so any build of the operator is measured the
//! same way. See BENCHMARKS.md.

use anyhow::{Context as _, bail};
use flashsale_operator::api::{FlashSale, Phase};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::{SignedDuration, Timestamp, Unit};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Client,
    api::{Api, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[path = "../tests/e2e/harness/mod.rs"]
mod harness;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use harness::{Cluster, ClusterOptions};
use support::{Operator, client, eventually, kubeconfig_secret, namespace_named};

/// How many API requests run at once while the benchmark sets things up.
const SETUP_CONCURRENCY: usize = 16;
/// How long request rates are measured while nothing changes.
const WINDOW: Duration = Duration::from_secs(30);
const NUDGE_ANNOTATION: &str = "bench.flashsale.dev/nudge";

fn main() {
    support::bench_main("scale", run);
}

fn run() -> anyhow::Result<()> {
    let parts = std::env::var("FLASHSALE_BENCH_PARTS").unwrap_or_else(|_| "remote,clusters,many".into());
    let sales: usize = match std::env::var("FLASHSALE_BENCH_SALES") {
        Ok(v) => v.parse().context("FLASHSALE_BENCH_SALES must be a number")?,
        Err(_) => 1000,
    };
    println!("machine: {}", support::machine());
    println!("operator: {}", support::operator_program());
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("flashsale-bench-scale-{}", std::process::id()));
    let start = |name: &str| {
        Cluster::start_audited(&ClusterOptions { name: name.into(), nodes: 3, spot_nodes: 0 }, &root.join(name), false)
    };
    let primary = start("primary")?;
    primary.install_crd(&support::repo().join("crds/flashsale.dev_flashsales.yaml"))?;
    let wants = |part: &str| parts.split(',').any(|p| p.trim() == part);
    let remote_a = if wants("remote") || wants("clusters") { Some(start("remote-a")?) } else { None };
    let remote_b = if wants("clusters") { Some(start("remote-b")?) } else { None };
    println!("control planes up in {:.1} s", started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        if let (true, Some(remote)) = (wants("remote"), &remote_a) {
            one_sale_in_a_remote_cluster(&primary, remote, 100).await?;
        }
        if let (true, Some(a), Some(b)) = (wants("clusters"), &remote_a, &remote_b) {
            let three: usize = std::env::var("FLASHSALE_BENCH_THREE").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
            sales_across_three_clusters(&primary, [a, b], three, 10).await?;
        }
        if wants("many") {
            many_sales_in_one_operator(&primary, sales, 10, 300.min(sales)).await?;
        }
        anyhow::Ok(())
    })?;
    println!("at the end: {}", support::machine());
    Ok(())
}

/// `n` Deployments `<prefix>-<i>` of `replicas` each in `ns` of `client`'s cluster.
async fn deployments(client: &Client, ns: &str, prefix: &str, n: usize, replicas: i32) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let d = support::deployment(&format!("{prefix}-{i:04}"), replicas, None)?;
                api.create(&PostParams::default(), &d).await.context("creating a Deployment")
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A sale of `workloads` (Deployment names) from peak `peak`, across `clusters` (kubeconfig
/// Secret names, also the cluster names; none: the operator's own cluster).
fn sale(
    name: &str,
    ns: &str,
    (start, end): (Timestamp, Timestamp),
    prepare: &str,
    workloads: &[String],
    peak: i32,
    clusters: &[&str],
) -> anyhow::Result<FlashSale> {
    let workloads: Vec<serde_json::Value> = workloads
        .iter()
        .map(|w| serde_json::json!({"ref": {"kind": "Deployment", "name": w}, "scale": {"peak": peak, "mode": "Replicas"}}))
        .collect();
    let clusters: Vec<serde_json::Value> =
        clusters.iter().map(|c| serde_json::json!({"name": c, "kubeconfigSecretRef": {"name": c}})).collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "window": {"start": start.to_string(), "end": end.to_string()},
            "prepareBefore": prepare,
            "cooldownAfter": "10s",
            "workloads": workloads,
            "clusters": clusters,
        }
    }))?)
}

/// Requests the user `user` sent to `cluster` between `from` and `to`, by verb, from the API
/// server's audit log (watches included under `watch`).
fn audited(cluster: &Cluster, user: &str, from: Timestamp, to: Timestamp) -> anyhow::Result<BTreeMap<String, u64>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        verb: String,
        user: User,
        #[serde(rename = "requestReceivedTimestamp")]
        received: Timestamp,
    }
    #[derive(serde::Deserialize)]
    struct User {
        username: String,
    }
    let text = std::fs::read_to_string(cluster.dir.join("audit.log")).context("reading the audit log")?;
    let mut verbs = BTreeMap::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<Entry>(line) else { continue };
        if entry.user.username == user && entry.received >= from && entry.received < to {
            *verbs.entry(entry.verb).or_default() += 1;
        }
    }
    Ok(verbs)
}

/// Requests per second beyond watches, and the verbs.
fn rate(verbs: &BTreeMap<String, u64>, window: Duration) -> (f64, String) {
    let beyond: u64 = verbs.iter().filter(|(v, _)| v.as_str() != "watch").map(|(_, n)| n).sum();
    let shown = verbs.iter().map(|(v, n)| format!("{v} {n}")).collect::<Vec<_>>().join(", ");
    (beyond as f64 / window.as_secs_f64(), if shown.is_empty() { "none".into() } else { shown })
}

/// Waits until every sale named shows `phase` with Ready True.
async fn wait_ready(sales: &Api<FlashSale>, names: &[String], phase: Phase, timeout: Duration) -> anyhow::Result<()> {
    eventually(timeout, || async {
        let list = sales.list(&Default::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|s| names.iter().any(|n| Some(n) == s.metadata.name.as_ref()))
            .filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.phase == Some(phase) && st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        Ok(ready == names.len())
    })
    .await
    .with_context(|| format!("the sales were not all {phase} and Ready"))
}

/// The operator's request counters by verb (every cluster), and its reconciles. A busy machine
/// may leave one scrape unanswered for a while: it is asked again.
fn scrape(operator: &Operator) -> anyhow::Result<(BTreeMap<String, f64>, f64)> {
    let mut tries = 0;
    let text = loop {
        match operator.get("/metrics") {
            Ok((200, text)) => break text,
            // A busy operator may answer late: a benchmark reads on rather than ending there.
            Ok((code, _)) if tries >= 30 => bail!("/metrics answered {code}"),
            Err(err) if tries >= 30 => return Err(err),
            _ => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut verbs = BTreeMap::new();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("flashsale_api_requests_total{") else { continue };
        let Some((_, verb)) = labels.split_once("verb=\"") else { continue };
        let verb = verb.split('"').next().unwrap_or_default().to_owned();
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *verbs.entry(verb).or_insert(0.0) += n;
    }
    let reconciles = text
        .lines()
        .find_map(|l| l.strip_prefix("flashsale_reconcile_duration_seconds_count{lever=\"timeline\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Ok((verbs, reconciles))
}

/// Waits until the operator's reconcile count has been still for `quiet`.
async fn quiesce(operator: &Operator, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let (mut last, mut since) = (scrape(operator)?.1, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = scrape(operator)?.1;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(());
        }
    }
    bail!("the operator never went quiet")
}

/// Nudges every sale (an annotation: a watch event, no new generation) and reports what the
/// reconciles that follow read and wrote.
async fn nudge(sales: &Api<FlashSale>, names: &[String], operator: &Operator, label: &str) -> anyhow::Result<()> {
    if let Err(err) = quiesce(operator, Duration::from_secs(5), Duration::from_secs(240)).await {
        println!("  WARNING: {err:#}; the counts below include other reconciles");
    }
    let (before, reconciles_before) = scrape(operator)?;
    let value = Timestamp::now().to_string();
    stream::iter(names)
        .map(|name| {
            let patch = serde_json::json!({"metadata": {"annotations": {NUDGE_ANNOTATION: value}}});
            let sales = sales.clone();
            async move { sales.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    if let Err(err) = quiesce(operator, Duration::from_secs(3), Duration::from_secs(240)).await {
        println!("  WARNING: {err:#}; the counts below include other reconciles");
    }
    let (after, reconciles_after) = scrape(operator)?;
    let reconciles = reconciles_after - reconciles_before;
    let delta = |verbs: &[&str]| {
        verbs.iter().map(|v| after.get(*v).unwrap_or(&0.0) - before.get(*v).unwrap_or(&0.0)).sum::<f64>()
    };
    let reads = delta(&["get", "review"]);
    let writes = delta(&["create", "update", "patch", "delete"]);
    println!(
        "  no-op reconciles of {} {label} sales: {reconciles:.0} reconciles, {:.2} reads and {:.2} writes per reconcile (reads {reads:.0}, writes {writes:.0})",
        names.len(),
        reads / reconciles.max(1.0),
        writes / reconciles.max(1.0)
    );
    Ok(())
}

/// Part 1: one sale of `n` workloads holding in a remote cluster.
async fn one_sale_in_a_remote_cluster(primary: &Cluster, remote: &Cluster, n: usize) -> anyhow::Result<()> {
    println!("\n## 1 sale x {n} workloads holding in a remote cluster");
    let here = client(primary).await?;
    let there = client(remote).await?;
    let ns = namespace_named(&here, "scale-remote").await?;
    namespace_named(&there, &ns).await?;
    deployments(&there, &ns, "web", n, 1).await?;
    let (user, kubeconfig) = support::remote_identity(remote, &[&ns])?;
    kubeconfig_secret(&here, &ns, "remote", "kubeconfig", &kubeconfig).await?;
    let mut operator = Operator::operator_logging(primary, &["--watch-namespace", &ns], "info")?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let sales: Api<FlashSale> = Api::namespaced(here.clone(), &ns);
    let start = (Timestamp::now() + SignedDuration::from_secs(15)).round(Unit::Second)?;
    let workloads: Vec<String> = (0..n).map(|i| format!("web-{i:04}")).collect();
    let s = sale("hold", &ns, (start, start + SignedDuration::from_hours(1)), "10s", &workloads, 2, &["remote"])?;
    sales.create(&PostParams::default(), &s).await?;
    wait_ready(&sales, &["hold".into()], Phase::Active, Duration::from_secs(300)).await?;
    // An operator that polls never goes quiet; the window is then measured as it is.
    if let Err(err) = quiesce(&operator, Duration::from_secs(5), Duration::from_secs(60)).await {
        println!("  note: {err:#} (it keeps reconciling while nothing changes)");
    }
    let from = Timestamp::now();
    tokio::time::sleep(WINDOW).await;
    let to = Timestamp::now();
    let (per_second, verbs) = rate(&audited(remote, &user, from, to)?, WINDOW);
    println!("  requests to the remote cluster beyond watches: {per_second:.2} per second over {WINDOW:?} ({verbs})");
    nudge(&sales, &["hold".into()], &operator, "Active").await?;
    let (rss, hwm, _, _) = operator.memory()?;
    println!("  operator memory: VmRSS {rss} kB, VmHWM {hwm} kB");
    operator.kill()?;
    Ok(())
}

/// Part 2: `sales` sales of `per_sale` workloads each, every sale in three clusters: the
/// operator's own (reached through a Secret of its own, as a remote one) and two remote ones.
async fn sales_across_three_clusters(
    primary: &Cluster,
    remotes: [&Cluster; 2],
    sales_n: usize,
    per_sale: usize,
) -> anyhow::Result<()> {
    println!("\n## {sales_n} sales x {per_sale} workloads holding across 3 clusters");
    let here = client(primary).await?;
    let ns = namespace_named(&here, "scale-three").await?;
    let clusters: [(&str, &Cluster); 3] = [("home", primary), ("remote-a", remotes[0]), ("remote-b", remotes[1])];
    let mut users = vec![];
    let t = Instant::now();
    for (name, cluster) in clusters {
        let c = client(cluster).await?;
        if name != "home" {
            namespace_named(&c, &ns).await?;
        }
        deployments(&c, &ns, "web", sales_n * per_sale, 1).await?;
        let (user, kubeconfig) = support::remote_identity(cluster, &[&ns])?;
        kubeconfig_secret(&here, &ns, name, "kubeconfig", &kubeconfig).await?;
        users.push((name, cluster, user));
    }
    // The workloads are at their peak already: while the sales hold, nothing changes.
    for (_, cluster, _) in &users {
        let api: Api<Deployment> = Api::namespaced(client(cluster).await?, &ns);
        eventually(Duration::from_secs(900), || async {
            let list = api.list(&Default::default()).await?;
            Ok(list.items.iter().filter(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)).count()
                == sales_n * per_sale)
        })
        .await
        .context("the Deployments never became ready")?;
    }
    println!(
        "  {} Deployments per cluster created and ready in {:.1} s",
        sales_n * per_sale,
        t.elapsed().as_secs_f64()
    );
    let mut operator = Operator::operator_logging(primary, &["--watch-namespace", &ns], "info")?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let sales: Api<FlashSale> = Api::namespaced(here.clone(), &ns);
    let start = (Timestamp::now() + SignedDuration::from_secs(40)).round(Unit::Second)?;
    let names: Vec<String> = (0..sales_n).map(|i| format!("sale-{i:03}")).collect();
    stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let workloads: Vec<String> = (0..per_sale).map(|w| format!("web-{:04}", i * per_sale + w)).collect();
            let s = sale(
                name,
                &ns,
                (start, start + SignedDuration::from_hours(1)),
                "20s",
                &workloads,
                1,
                &["home", "remote-a", "remote-b"],
            );
            let sales = sales.clone();
            async move { sales.create(&PostParams::default(), &s?).await.context("creating a FlashSale") }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    wait_ready(&sales, &names, Phase::Active, Duration::from_secs(600)).await?;
    if let Err(err) = quiesce(&operator, Duration::from_secs(5), Duration::from_secs(120)).await {
        println!("  note: {err:#} (it keeps reconciling while nothing changes)");
    }
    let from = Timestamp::now();
    tokio::time::sleep(WINDOW).await;
    let to = Timestamp::now();
    for (name, cluster, user) in &users {
        let (per_second, verbs) = rate(&audited(cluster, user, from, to)?, WINDOW);
        println!("  requests to cluster {name} beyond watches: {per_second:.2} per second over {WINDOW:?} ({verbs})");
    }
    nudge(&sales, &names, &operator, "Active").await?;
    let (rss, hwm, _, _) = operator.memory()?;
    println!("  operator memory: VmRSS {rss} kB, VmHWM {hwm} kB");
    operator.kill()?;
    Ok(())
}

/// When the benchmark's watch first saw each sale in each phase.
#[derive(Clone, Default)]
struct Phases(Arc<Mutex<HashMap<(String, Phase), Timestamp>>>);

impl Phases {
    fn record(client: Client, ns: &str) -> Phases {
        let phases = Phases::default();
        let sink = phases.0.clone();
        let api: Api<FlashSale> = Api::namespaced(client, ns);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while let Some(item) = stream.next().await {
                let now = Timestamp::now();
                let Ok(sale) = item else { continue };
                if let (Some(name), Some(phase)) = (sale.metadata.name, sale.status.and_then(|s| s.phase)) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).entry((name, phase)).or_insert(now);
                }
            }
        });
        phases
    }

    fn seen(&self, name: &str, phase: Phase) -> Option<Timestamp> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&(name.to_owned(), phase)).copied()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Part 3: `n` sales of `per_sale` workloads each in the operator's own cluster, `shared` of
/// them preparing at one instant.
async fn many_sales_in_one_operator(primary: &Cluster, n: usize, per_sale: usize, shared: usize) -> anyhow::Result<()> {
    println!("\n## {n} sales x {per_sale} workloads in one operator, {shared} sharing one boundary");
    let here = client(primary).await?;
    let ns = namespace_named(&here, "scale-many").await?;
    let t = Instant::now();
    deployments(&here, &ns, "web", n * per_sale, 0).await?;
    println!("  {} Deployments (0 replicas) created in {:.1} s", n * per_sale, t.elapsed().as_secs_f64());
    let sales: Api<FlashSale> = Api::namespaced(here.clone(), &ns);
    let phases = Phases::record(here.clone(), &ns);
    let names: Vec<String> = (0..n).map(|i| format!("sale-{i:04}")).collect();
    // The shared boundary is far enough ahead for every sale to be created and Scheduled.
    let boundary = (Timestamp::now() + SignedDuration::from_secs(240)).round(Unit::Second)?;
    let later = boundary + SignedDuration::from_hours(24);
    let t = Instant::now();
    stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let workloads: Vec<String> = (0..per_sale).map(|w| format!("web-{:04}", i * per_sale + w)).collect();
            let start = if i < shared { boundary + SignedDuration::from_secs(60) } else { later };
            let s = sale(name, &ns, (start, start + SignedDuration::from_hours(1)), "60s", &workloads, 1, &[]);
            let sales = sales.clone();
            async move { sales.create(&PostParams::default(), &s?).await.context("creating a FlashSale") }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    println!("  {n} FlashSales created in {:.1} s", t.elapsed().as_secs_f64());
    let started = Instant::now();
    let mut operator = Operator::operator_logging(primary, &["--watch-namespace", &ns], "info")?;
    operator.wait_ready(Duration::from_secs(120)).await?;
    let scheduled = eventually(Duration::from_secs(600), || async {
        Ok(names.iter().all(|name| phases.seen(name, Phase::Scheduled).is_some()))
    })
    .await;
    match scheduled {
        Ok(()) => {
            println!("  every sale Scheduled {:.1} s after the operator started", started.elapsed().as_secs_f64())
        }
        Err(err) => println!("  WARNING: not every sale was Scheduled: {err:#}"),
    }
    let until = Duration::try_from(boundary.duration_since(Timestamp::now())).unwrap_or_default();
    if until.is_zero() {
        println!("  WARNING: the shared boundary passed before every sale was Scheduled");
    }
    tokio::time::sleep(until + Duration::from_secs(30)).await;
    let mut lags: Vec<f64> = names[..shared]
        .iter()
        .filter_map(|name| phases.seen(name, Phase::Preparing))
        .map(|at| at.duration_since(boundary).as_secs_f64() * 1000.0)
        .collect();
    lags.sort_by(f64::total_cmp);
    println!(
        "  boundary -> Preparing seen, {} of {shared} sales: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lags.len(),
        percentile(&lags, 50.0),
        percentile(&lags, 99.0),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    // The shared sales' pods keep coming up for a while; the memory is read meanwhile.
    let (rss, hwm, _, _) = operator.memory()?;
    println!("  operator memory with {n} sales: VmRSS {rss} kB, VmHWM {hwm} kB");
    // The sales whose workloads nothing changes: a nudge is a reconcile with nothing to do.
    nudge(&sales, &names[shared..], &operator, "Scheduled").await?;

    // A restart: how long until the new operator has reconciled every sale once.
    operator.kill()?;
    let restarted = Instant::now();
    let mut operator = Operator::operator_logging(primary, &["--watch-namespace", &ns], "info")?;
    operator.wait_ready(Duration::from_secs(120)).await?;
    let resynced = eventually(Duration::from_secs(600), || async { Ok(scrape(&operator)?.1 >= n as f64) }).await;
    let (rss_resync, _, _, _) = operator.memory()?;
    println!("  restarted operator memory once every sale was reconciled: VmRSS {rss_resync} kB");
    match resynced {
        Ok(()) => println!(
            "  after a restart: every sale reconciled {:.1} s after the operator started",
            restarted.elapsed().as_secs_f64()
        ),
        Err(err) => println!("  WARNING: the restarted operator did not reconcile every sale: {err:#}"),
    }
    operator.kill()?;
    Ok(())
}
