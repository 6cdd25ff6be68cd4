//! Benchmark of the spot drain agent against a real control plane (the e2e harness) and the
//! project's metadata stand-in: notice → node tainted and cordoned with the default 2 s poll,
//! notice → 100 pods evicted with no PDB in the way, and the agent's memory idle and after a
//! drain. It prints numbers and asserts nothing about timing.
//!
//! `cargo bench --bench drain` (about 2 minutes once built; see BENCHMARKS.md).
//! `FLASHSALE_BENCH_DRAIN_RUNS` changes the number of cordon runs (default 10);
//! `FLASHSALE_BENCH_DRAIN_PODS` the number of pods drained (default 100);
//! `FLASHSALE_E2E_KEEP=1` keeps the cluster's directory (with the agents' logs) afterwards.

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod},
};
use kube::{
    Client,
    api::{Api, ListParams, PostParams},
    runtime::watcher,
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[path = "../tests/e2e/harness/mod.rs"]
mod harness;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code)]
mod support;

use flashsale_operator::agent::drain::{TAINT_KEY, taint_value};
use harness::{Cluster, ClusterOptions, metadata::MetadataServer};
use support::{Agent, client, eventually, is_ready, namespace_named as namespace, node_of};

const NODE: &str = "spot-0";
const POLL: Duration = Duration::from_secs(2);

fn main() {
    support::bench_main("drain", run);
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name} must be a number")),
        Err(_) => Ok(default),
    }
}

fn run() -> anyhow::Result<()> {
    let runs = env_number("FLASHSALE_BENCH_DRAIN_RUNS", 10)?;
    let pods = env_number("FLASHSALE_BENCH_DRAIN_PODS", 100)?;
    println!("machine: {}", support::machine());
    println!("agent binary: {}", env!("CARGO_BIN_EXE_flashsale-drain-agent"));
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("flashsale-bench-drain-{}", std::process::id()));
    let cluster =
        Cluster::start(&ClusterOptions { name: "bench-drain".into(), ..ClusterOptions::default() }, &dir, false)?;
    println!("control plane up in {:.1} s", started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(bench(&cluster, runs, pods));
    if std::env::var_os("FLASHSALE_E2E_KEEP").is_some() {
        println!("cluster directory kept: {}", cluster.dir.display());
    }
    result
}

async fn bench(cluster: &Cluster, runs: usize, pods: usize) -> anyhow::Result<()> {
    let client = client(cluster).await?;
    let metadata = MetadataServer::start()?;
    let marks = NodeMarks::start(client.clone());

    // Part 1: notice → tainted and cordoned, default poll interval, notices at every phase of
    // the poll cycle.
    println!("\n## notice → node tainted and cordoned (poll interval {POLL:?}, {runs} runs)\n");
    println!(
        "| run | extra wait before the notice (ms) | notice set → marked seen by a watch (ms) | agent: its poll → marked (ms) |"
    );
    println!("|-----|------|------|------|");
    let mut lags = vec![];
    for run in 0..runs {
        restore(cluster)?;
        metadata.set_notice(None);
        let mut agent = Agent::agent(cluster, NODE, &metadata.endpoint(), &[])?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        // Let the agent settle into its cycle, then spread the notices over it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let offset = POLL.mul_f64(run as f64 / runs as f64);
        tokio::time::sleep(offset).await;
        let release = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(300)).round(jiff::Unit::Second)?;
        let value = taint_value(release);
        let noticed = Instant::now();
        metadata.set_notice(Some(&release.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
        let seen = marks
            .wait_for(&value, Duration::from_secs(15))
            .await
            .with_context(|| format!("run {run}: the node was never marked; agent log:\n{}", agent.log_text()))?;
        let lag = seen.duration_since(noticed);
        // The agent records its own figure just after the write the watch saw.
        eventually(Duration::from_secs(5), || async {
            Ok(agent.metric("flashsale_drain_agent_notice_to_cordon_seconds_count")? >= 1.0)
        })
        .await?;
        let own = agent.metric("flashsale_drain_agent_notice_to_cordon_seconds_sum")?;
        println!("| {run} | {} | {} | {:.0} |", offset.as_millis(), lag.as_millis(), own * 1000.0);
        lags.push(lag);
        agent.ensure_alive()?;
    }
    lags.sort();
    println!(
        "\nnotice → marked: min {} ms, median {} ms, p90 {} ms, max {} ms (target ≤ {} ms)",
        lags[0].as_millis(),
        percentile(&lags, 0.5).as_millis(),
        percentile(&lags, 0.9).as_millis(),
        lags[lags.len() - 1].as_millis(),
        (POLL + Duration::from_millis(500)).as_millis()
    );

    // Part 2: notice → N pods evicted, no PDB.
    restore(cluster)?;
    metadata.set_notice(None);
    let ns = namespace(&client, "bench-drain").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let per = 10;
    let t = Instant::now();
    for i in 0..pods.div_ceil(per) {
        let replicas = per.min(pods - i * per);
        deployments.create(&PostParams::default(), &pinned(&format!("web-{i:02}"), replicas)?).await?;
    }
    eventually(Duration::from_secs(300), || async {
        let list = pod_api.list(&ListParams::default()).await?;
        let elsewhere = list.items.iter().filter(|p| node_of(p) != NODE && !node_of(p).is_empty()).count();
        if elsewhere > 0 {
            bail!("{elsewhere} pods were scheduled away from {NODE}");
        }
        Ok(list.items.iter().filter(|p| node_of(p) == NODE && is_ready(p)).count() == pods)
    })
    .await
    .context("the pods never all became ready on the spot node")?;
    println!("\n## notice → {pods} pods evicted (no PDB)\n");
    println!("{pods} pods ready on {NODE} in {:.1} s", t.elapsed().as_secs_f64());

    let watch = PodWatch::start(pod_api.clone());
    let mut agent = Agent::agent(cluster, NODE, &metadata.endpoint(), &[])?;
    agent.wait_ready(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = agent.memory()?;
    let release = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(300)).round(jiff::Unit::Second)?;
    let noticed = Instant::now();
    metadata.set_notice(Some(&release.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
    let marked = marks.wait_for(&taint_value(release), Duration::from_secs(15)).await?;
    eventually(Duration::from_secs(120), || async { Ok(watch.evicted() >= pods) })
        .await
        .context("not every pod was evicted")?;
    let all_evicted = watch.last_eviction().context("no eviction seen")?;
    eventually(Duration::from_secs(120), || async {
        let list = pod_api.list(&ListParams::default()).await?;
        Ok(list.items.iter().filter(|p| node_of(p) == NODE).count() == 0)
    })
    .await
    .context("pods stayed on the node")?;
    let gone = Instant::now();
    eventually(Duration::from_secs(300), || async {
        let list = pod_api.list(&ListParams::default()).await?;
        Ok(list.items.iter().filter(|p| node_of(p) != NODE && is_ready(p)).count() == pods)
    })
    .await
    .context("the replacements never became ready")?;
    let replaced = Instant::now();
    let drained_own = agent.metric("flashsale_drain_agent_notice_to_drained_seconds_sum")?;
    let evicted_metric = agent.metric("flashsale_drain_agent_evictions_total{outcome=\"evicted\"}")?;
    let after = agent.memory()?;
    agent.ensure_alive()?;

    let ms = |i: Instant| i.duration_since(noticed).as_millis();
    println!("| step | ms after the notice was set |");
    println!("|------|------|");
    println!("| node tainted and cordoned (seen) | {} |", ms(marked));
    println!(
        "| agent: every eviction answered (its metric, from its poll) | {:.0} (+ poll wait) |",
        drained_own * 1000.0
    );
    println!("| all {pods} pods evicted (deletionTimestamp seen) | {} |", ms(all_evicted));
    println!("| all {pods} pods gone from the node | {} |", ms(gone));
    println!("| all {pods} replacements ready on other nodes | {} |", ms(replaced));
    println!("agent's evictions_total{{outcome=\"evicted\"}}: {evicted_metric}");

    println!("\n## agent memory ({})\n", env!("CARGO_BIN_EXE_flashsale-drain-agent"));
    println!("| when | VmRSS kB | VmHWM kB | RssAnon kB | RssFile kB |");
    println!("|------|------|------|------|------|");
    let row = |when: &str, (rss, hwm, anon, file): (u64, u64, u64, u64)| {
        println!("| {when} | {rss} | {hwm} | {anon} | {file} |");
    };
    row("idle, 10 s of polling", idle);
    row(&format!("after draining {pods} pods"), after);
    restore(cluster)?;
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Removes the agent's taint and uncordons the node.
fn restore(cluster: &Cluster) -> anyhow::Result<()> {
    let _ = cluster.kubectl(&["taint", "nodes", NODE, &format!("{TAINT_KEY}-")]);
    cluster.kubectl(&["uncordon", NODE])?;
    Ok(())
}

/// When the bench first saw the node with each taint value and cordoned (from a watch).
struct NodeMarks {
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl NodeMarks {
    fn start(client: Client) -> NodeMarks {
        let seen = Arc::new(Mutex::new(vec![]));
        let record = seen.clone();
        let nodes: Api<Node> = Api::all(client);
        let stream = watcher(nodes, watcher::Config::default().fields(&format!("metadata.name={NODE}")));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                let node = match event {
                    Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
                    _ => continue,
                };
                let spec = node.spec.unwrap_or_default();
                if spec.unschedulable != Some(true) {
                    continue;
                }
                for t in spec.taints.unwrap_or_default() {
                    if t.key == TAINT_KEY
                        && let Some(v) = t.value
                    {
                        let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                        if !seen.iter().any(|(s, _)| *s == v) {
                            seen.push((v, now));
                        }
                    }
                }
            }
        });
        NodeMarks { seen }
    }

    async fn wait_for(&self, value: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, at)) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(v, _)| v == value)
            {
                return Ok(*at);
            }
            if Instant::now() > deadline {
                bail!("node not marked {value} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// When the bench saw each pod get its deletionTimestamp.
struct PodWatch {
    evicted: Arc<Mutex<Vec<Instant>>>,
}

impl PodWatch {
    fn start(pods: Api<Pod>) -> PodWatch {
        let evicted = Arc::new(Mutex::new(vec![]));
        let record = evicted.clone();
        tokio::spawn(async move {
            let mut names = std::collections::HashSet::new();
            let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default()));
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                let pod = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => p,
                    _ => continue,
                };
                if node_of(&pod) == NODE
                    && pod.metadata.deletion_timestamp.is_some()
                    && names.insert(pod.metadata.name.clone().unwrap_or_default())
                {
                    record.lock().unwrap_or_else(|e| e.into_inner()).push(now);
                }
            }
        });
        PodWatch { evicted }
    }

    fn evicted(&self) -> usize {
        self.evicted.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn last_eviction(&self) -> Option<Instant> {
        self.evicted.lock().unwrap_or_else(|e| e.into_inner()).iter().max().copied()
    }
}

fn pinned(name: &str, replicas: usize) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.example/web:1"}],
                    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "preference": {"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}
                        ]}}
                    ]}},
                    "topologySpreadConstraints": [{
                        "maxSkew": 1000, "topologyKey": "type", "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": name}}
                    }]
                }
            }
        }
    }))?)
}
