//! Benchmark of the spot drain agent against a real control plane (the e2e harness) and the
//! project's metadata stand-in: notice → node tainted and cordoned with the default 2 s poll,
//! notice → 100 pods evicted with no PDB in the way, and the agent's memory idle and after a
//! drain. It prints numbers and asserts nothing about timing.
//!
//! `cargo bench --bench drain` (about 2 minutes once built, 8 with the peer run; see BENCHMARKS.md).
//! `FLASHSALE_BENCH_DRAIN_RUNS` changes the number of cordon runs (default 10);
//! `FLASHSALE_BENCH_DRAIN_PODS` the number of pods drained (default 100);
//! `FLASHSALE_E2E_KEEP=1` keeps the cluster's directory (with the agents' logs) afterwards.
//!
//! The peer run then drains the same node's 100 pods alternately with this agent and with
//! aws-node-termination-handler (NTH, fed by amazon-ec2-metadata-mock), same notice lead time and
//! poll interval, `FLASHSALE_BENCH_DRAIN_PEER_RUNS` times each (default 5). Both peers are built
//! (once, cached) by `tests/e2e/toolchain/nth/build.sh`, never by `make test`.
//! `FLASHSALE_BENCH_DRAIN_PEER=skip` leaves the peer run out; `=only` runs nothing else.

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
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
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

/// Which parts `FLASHSALE_BENCH_DRAIN_PEER` selects: (the agent's own figures, the peer run).
fn parts() -> anyhow::Result<(bool, bool)> {
    match std::env::var("FLASHSALE_BENCH_DRAIN_PEER").as_deref() {
        Err(_) | Ok("") => Ok((true, true)),
        Ok("skip") => Ok((true, false)),
        Ok("only") => Ok((false, true)),
        Ok(other) => bail!("FLASHSALE_BENCH_DRAIN_PEER must be skip or only, not {other:?}"),
    }
}

fn run() -> anyhow::Result<()> {
    let runs = env_number("FLASHSALE_BENCH_DRAIN_RUNS", 10)?;
    let pods = env_number("FLASHSALE_BENCH_DRAIN_PODS", 100)?;
    let peer_runs = env_number("FLASHSALE_BENCH_DRAIN_PEER_RUNS", 5)?;
    let (own, peers) = parts()?;
    println!("machine: {}", support::machine());
    println!("agent binary: {}", env!("CARGO_BIN_EXE_flashsale-drain-agent"));
    // Built before the cluster starts, so a cold build does not hold a running control plane.
    let peer_bin = if peers { Some(harness::built("tests/e2e/toolchain/nth/build.sh")?) } else { None };
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("flashsale-bench-drain-{}", std::process::id()));
    let cluster =
        Cluster::start(&ClusterOptions { name: "bench-drain".into(), ..ClusterOptions::default() }, &dir, false)?;
    println!("control plane up in {:.1} s", started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(async {
        if own {
            bench(&cluster, runs, pods).await?;
        }
        if let Some(bin) = &peer_bin {
            peer_bench(&cluster, bin, peer_runs, pods).await?;
        }
        anyhow::Ok(())
    });
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

/// Notice → release time in the peer run, for both drainers. NTH drains at the release time
/// minus `NODE_TERMINATION_GRACE_PERIOD` (default 120 s), so with this lead and that default it
/// drains as soon as it sees the notice, like the agent.
const PEER_LEAD: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);
/// How long each drainer polls before the notice (its idle memory is read just before).
const PEER_SETTLE: Duration = Duration::from_secs(10);
/// The taint NTH puts on a node it drains for a spot notice (`TAINT_NODE=true`).
const NTH_TAINT: &str = "aws-node-termination-handler/spot-itn";
/// The labels NTH may leave on a node it acted on.
const NTH_LABELS: [&str; 3] = [
    "aws-node-termination-handler/action",
    "aws-node-termination-handler/action-time",
    "aws-node-termination-handler/event-id",
];
/// NTH's settings in the peer run (its environment; everything else is its default). Printed
/// with the results.
const NTH_SETTINGS: &[(&str, &str)] = &[
    ("ENABLE_SPOT_INTERRUPTION_DRAINING", "true"),
    // Off: the metadata mock's spot mode does not answer the scheduled-events path, and NTH
    // panics after three equal monitor errors.
    ("ENABLE_SCHEDULED_EVENT_DRAINING", "false"),
    ("ENABLE_REBALANCE_MONITORING", "false"),
    ("ENABLE_REBALANCE_DRAINING", "false"),
    // The agent taints as well as cordons; NTH only does so when asked.
    ("TAINT_NODE", "true"),
    ("TAINT_EFFECT", "NoSchedule"),
    ("NODE_TERMINATION_GRACE_PERIOD", "120"),
    ("POD_TERMINATION_GRACE_PERIOD", "-1"),
    ("IGNORE_DAEMON_SETS", "true"),
    ("DELETE_LOCAL_DATA", "true"),
    ("METADATA_TRIES", "3"),
    ("WORKERS", "10"),
    ("EMIT_KUBERNETES_EVENTS", "false"),
    ("ENABLE_PROMETHEUS_SERVER", "false"),
    ("ENABLE_PROBES_SERVER", "false"),
    ("LOG_LEVEL", "info"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Drainer {
    Agent,
    Nth,
}

impl Drainer {
    fn name(self) -> &'static str {
        match self {
            Drainer::Agent => "flashsale-drain-agent",
            Drainer::Nth => "aws-node-termination-handler",
        }
    }
}

/// Reads one figure of a round.
type Figure = fn(&PeerRound) -> f64;

/// One peer round's figures: ms after the notice, and kB.
struct PeerRound {
    marked: f64,
    evicted: f64,
    gone: f64,
    replaced: f64,
    idle_rss: u64,
    after_rss: u64,
}

/// The peer run: the agent and NTH alternated, each draining the same 100 pods from the same
/// node after the same notice.
async fn peer_bench(cluster: &Cluster, bin: &Path, runs: usize, pods: usize) -> anyhow::Result<()> {
    let client = client(cluster).await?;
    let ns = namespace(&client, "bench-peers").await?;
    let nth_run = nth_identity(cluster)?;
    let nth_bin = bin.join("node-termination-handler");
    let aemm_bin = bin.join("ec2-metadata-mock");
    let agent_bin = PathBuf::from(env!("CARGO_BIN_EXE_flashsale-drain-agent"));
    let metadata = MetadataServer::start()?;
    println!("\n## peer run: {pods} pods drained from {NODE}, agent and NTH alternated, {runs} runs each\n");
    println!("NTH: {}", nth_bin.display());
    println!("NTH settings: {}", NTH_SETTINGS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    println!("notice lead (release time - notice): {} s for both; poll interval 2 s for both", PEER_LEAD.as_secs());
    println!(
        "| round | drainer | notice → tainted+cordoned | → all evicted | → all gone | → replacements ready | idle RSS kB | after RSS kB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut figures: Vec<(Drainer, PeerRound)> = vec![];
    for round in 0..2 * runs {
        let drainer = if round % 2 == 0 { Drainer::Agent } else { Drainer::Nth };
        // Spread the notices over the 2 s poll cycle, the same offsets for both drainers.
        let offset = Duration::from_secs(2).mul_f64((round / 2) as f64 / runs as f64);
        let figure = peer_round(cluster, &client, &ns, drainer, &metadata, &nth_run, &nth_bin, &aemm_bin, pods, offset)
            .await
            .with_context(|| format!("peer round {round} ({})", drainer.name()))?;
        println!(
            "| {round} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            drainer.name(),
            figure.marked,
            figure.evicted,
            figure.gone,
            figure.replaced,
            figure.idle_rss,
            figure.after_rss
        );
        figures.push((drainer, figure));
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN);
    println!("\nside by side ({runs} runs each; min / median / max; ratio of the medians):\n");
    println!("| figure | agent | NTH | agent/NTH |");
    println!("|---|---|---|---|");
    let rows: [(&str, Figure); 6] = [
        ("notice → tainted and cordoned (ms)", |r| r.marked),
        ("notice → all pods evicted (ms)", |r| r.evicted),
        ("notice → all pods gone from the node (ms)", |r| r.gone),
        ("notice → replacements ready elsewhere (ms)", |r| r.replaced),
        ("idle RSS, 10 s of polling (kB)", |r| r.idle_rss as f64),
        ("RSS after the drain (kB)", |r| r.after_rss as f64),
    ];
    for (label, get) in rows {
        let of = |d: Drainer| {
            let mut v: Vec<f64> = figures.iter().filter(|(x, _)| *x == d).map(|(_, r)| get(r)).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (a, n) = (of(Drainer::Agent), of(Drainer::Nth));
        let med = |v: &[f64]| v[v.len() / 2];
        let show = |v: &[f64]| format!("{:.0} / {:.0} / {:.0}", v[0], med(v), v[v.len() - 1]);
        println!("| {label} | {} | {} | {:.2} |", show(&a), show(&n), med(&a) / med(&n));
    }
    let (a, n) = (size(&agent_bin), size(&nth_bin));
    println!("| binary size (MB) | {a:.1} | {n:.1} | {:.2} |", a / n);
    println!("metadata mock binary: {:.1} MB (not counted)", size(&aemm_bin));
    println!("at the end: {}", support::machine());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn peer_round(
    cluster: &Cluster,
    client: &Client,
    ns: &str,
    drainer: Drainer,
    metadata: &MetadataServer,
    nth_run: &Path,
    nth_bin: &Path,
    aemm_bin: &Path,
    pods: usize,
    offset: Duration,
) -> anyhow::Result<PeerRound> {
    restore_peers(cluster)?;
    metadata.set_notice(None);
    place_pods(client, ns, pods).await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let taint = if drainer == Drainer::Agent { TAINT_KEY } else { NTH_TAINT };
    let marks = FirstMark::start(client.clone(), taint);
    let watch = PodWatch::start(pod_api.clone());
    // The notice instant, a whole second (the metadata mock's trigger time has no fraction):
    // far enough ahead for the drainer to start and then poll for PEER_SETTLE.
    let whole_second = jiff::TimestampRound::new().smallest(jiff::Unit::Second).mode(jiff::RoundMode::Ceil);
    let notice =
        (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(8) + PEER_SETTLE + offset).round(whole_second)?;
    let release = notice + PEER_LEAD;
    let stamp = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut process = match drainer {
        Drainer::Agent => Running::Agent(Agent::agent(cluster, NODE, &metadata.endpoint(), &[])?),
        Drainer::Nth => {
            let mock = Mock::start(cluster, aemm_bin, &stamp(notice), &stamp(release))?;
            let nth = Nth::start(cluster, nth_bin, nth_run, &mock.url())?;
            Running::Nth(nth, mock)
        }
    };
    process.wait_ready(Duration::from_secs(30)).await?;
    let until = |t: jiff::Timestamp| Duration::try_from(t.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    if until(notice) < PEER_SETTLE.saturating_sub(Duration::from_secs(3)) {
        bail!("{} took too long to start: the notice is due in {:?}", drainer.name(), until(notice));
    }
    tokio::time::sleep(until(notice).saturating_sub(Duration::from_millis(300))).await;
    let idle = process.memory()?;
    tokio::time::sleep(until(notice)).await;
    // Anchored at the notice instant itself: the mock answers from then on; the stand-in is
    // told now (a few ms later at most).
    let behind = Duration::try_from(jiff::Timestamp::now().duration_since(notice)).unwrap_or_default();
    let noticed = Instant::now() - behind;
    if drainer == Drainer::Agent {
        metadata.set_notice(Some(&stamp(release)));
    }
    let marked = marks.wait(Duration::from_secs(30)).await.with_context(|| process.log_text())?;
    eventually(Duration::from_secs(300), || async { Ok(watch.evicted() >= pods) }).await.with_context(|| {
        format!("not every pod was evicted: {} of {pods}; log:\n{}", watch.evicted(), process.log_text())
    })?;
    let all_evicted = watch.last_eviction().context("no eviction seen")?;
    eventually(Duration::from_secs(300), || async {
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
    let after = process.memory()?;
    process.ensure_alive()?;
    let ms = |i: Instant| i.duration_since(noticed).as_secs_f64() * 1000.0;
    Ok(PeerRound {
        marked: ms(marked),
        evicted: ms(all_evicted),
        gone: ms(gone),
        replaced: ms(replaced),
        idle_rss: idle.0,
        after_rss: after.0,
    })
}

/// The drainer of one round, with what it needs alive.
enum Running {
    Agent(Agent),
    Nth(Nth, Mock),
}

impl Running {
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Running::Agent(a) => a.wait_ready(timeout).await,
            Running::Nth(n, _) => n.wait_ready(timeout).await,
        }
    }

    fn memory(&self) -> anyhow::Result<(u64, u64, u64, u64)> {
        match self {
            Running::Agent(a) => a.memory(),
            Running::Nth(n, _) => memory_of(n.child.id()),
        }
    }

    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Running::Agent(a) => a.ensure_alive(),
            Running::Nth(n, m) => {
                if let Some(status) = n.child.try_wait()? {
                    bail!("NTH exited with {status}; log:\n{}", n.log_text());
                }
                if let Some(status) = m.child.try_wait()? {
                    bail!("the metadata mock exited with {status}");
                }
                Ok(())
            }
        }
    }

    fn log_text(&self) -> String {
        match self {
            Running::Agent(a) => a.log_text(),
            Running::Nth(n, _) => n.log_text(),
        }
    }
}

fn memory_of(pid: u32) -> anyhow::Result<(u64, u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?, field("RssAnon:")?, field("RssFile:")?))
}

/// Uncordons the node and removes what either drainer left on it.
fn restore_peers(cluster: &Cluster) -> anyhow::Result<()> {
    let _ = cluster.kubectl(&["taint", "nodes", NODE, &format!("{TAINT_KEY}-")]);
    let _ = cluster.kubectl(&["taint", "nodes", NODE, &format!("{NTH_TAINT}-")]);
    for label in NTH_LABELS {
        let _ = cluster.kubectl(&["label", "nodes", NODE, &format!("{label}-")]);
    }
    cluster.kubectl(&["uncordon", NODE])?;
    Ok(())
}

/// Deletes the namespace's Deployments, waits for their pods to go, and places `pods` new ones
/// on the spot node.
async fn place_pods(client: &Client, ns: &str, pods: usize) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    deployments.delete_collection(&Default::default(), &ListParams::default()).await?;
    eventually(Duration::from_secs(300), || async {
        Ok(deployments.list(&ListParams::default()).await?.items.is_empty()
            && pod_api.list(&ListParams::default()).await?.items.is_empty())
    })
    .await
    .context("the previous round's pods never went")?;
    let per = 10;
    for i in 0..pods.div_ceil(per) {
        deployments.create(&PostParams::default(), &pinned(&format!("web-{i:02}"), per.min(pods - i * per))?).await?;
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
    .context("the pods never all became ready on the spot node")
}

/// When a watch first saw the node cordoned with a taint of `key` (any value).
struct FirstMark {
    seen: Arc<Mutex<Option<Instant>>>,
}

impl FirstMark {
    fn start(client: Client, key: &'static str) -> FirstMark {
        let seen = Arc::new(Mutex::new(None));
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
                if spec.unschedulable == Some(true) && spec.taints.unwrap_or_default().iter().any(|t| t.key == key) {
                    record.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(now);
                }
            }
        });
        FirstMark { seen }
    }

    async fn wait(&self, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) {
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!("node not tainted and cordoned within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// NTH's identity in the cluster: a ServiceAccount with the rights of NTH's own chart
/// (ClusterRole `aws-node-termination-handler`), and the directory that is mounted as NTH's
/// `/run`, holding `secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}` as a pod's
/// would (NTH's client is in-cluster only).
fn nth_identity(cluster: &Cluster) -> anyhow::Result<PathBuf> {
    let rbac = r#"
apiVersion: v1
kind: Namespace
metadata: {name: nth}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: aws-node-termination-handler, namespace: nth}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: aws-node-termination-handler}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, patch, update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, get]
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
- apiGroups: [extensions]
  resources: [daemonsets]
  verbs: [get]
- apiGroups: [apps]
  resources: [daemonsets]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: aws-node-termination-handler}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: aws-node-termination-handler}
subjects:
- {kind: ServiceAccount, name: aws-node-termination-handler, namespace: nth}
"#;
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(rbac))?;
    let token = cluster.kubectl(&["create", "token", "aws-node-termination-handler", "-n", "nth", "--duration=2h"])?;
    let run = cluster.dir.join("nth-run");
    let sa = run.join("secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&sa)?;
    std::fs::write(sa.join("token"), token.trim())?;
    std::fs::copy(cluster.dir.join("pki/ca.crt"), sa.join("ca.crt")).context("copying the cluster's CA")?;
    std::fs::write(sa.join("namespace"), "nth")?;
    Ok(run)
}

/// aws-node-termination-handler in IMDS mode for `NODE`, in a private mount namespace whose
/// `/run` (and so `/var/run`) is the identity directory: nothing on the machine changes.
/// Killed on drop (it ignores SIGTERM).
struct Nth {
    child: Child,
    log: PathBuf,
}

impl Nth {
    fn start(cluster: &Cluster, bin: &Path, run: &Path, metadata_url: &str) -> anyhow::Result<Nth> {
        let (host, port) = cluster
            .server
            .trim_start_matches("https://")
            .rsplit_once(':')
            .context("the API server address has no port")?;
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cluster.dir.join(format!("nth-{n}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", r#"mount --bind "$1" /run && exec "$2""#, "sh"])
            .arg(run)
            .arg(bin)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NODE_NAME", NODE)
            .env("INSTANCE_METADATA_URL", metadata_url)
            .env("KUBERNETES_SERVICE_HOST", host)
            .env("KUBERNETES_SERVICE_PORT", port)
            .envs(NTH_SETTINGS.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting NTH through unshare")?;
        Ok(Nth { child, log })
    }

    /// Waits for the line NTH logs once its monitors run.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains("has started successfully") {
            if let Some(status) = self.child.try_wait()? {
                bail!("NTH exited with {status}; log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("NTH not started after {timeout:?}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// amazon-ec2-metadata-mock in spot mode on a free loopback port: 404 on the spot paths until
/// `trigger`, then a `terminate` instance action for `release`.
struct Mock {
    child: Child,
    port: u16,
}

impl Mock {
    fn start(cluster: &Cluster, bin: &Path, trigger: &str, release: &str) -> anyhow::Result<Mock> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(cluster.dir.join(format!("ec2-metadata-mock-{port}.log")))?;
        let child = Command::new(bin)
            .args(["spot", "-n", "127.0.0.1", "-p", &port.to_string(), "--mock-trigger-time", trigger])
            .args(["-t", release, "-a", "terminate"])
            // It looks for a config file in $HOME: give it an empty one of its own.
            .env("HOME", &cluster.dir)
            .current_dir(&cluster.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ec2-metadata-mock")?;
        let mut mock = Mock { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = mock.child.try_wait()? {
                bail!("ec2-metadata-mock exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("ec2-metadata-mock not listening after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(mock)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
