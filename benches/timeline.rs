//! Benchmark of the timeline controller against a real control plane (the e2e harness): how late
//! each phase change shows in a FlashSale's status with 100 sales live, and how many writes a
//! reconcile that has nothing to do sends. It prints numbers and asserts nothing about timing.
//!
//! `cargo bench --bench timeline` (the run itself takes about 3 minutes on two cores with the peer column; see
//! BENCHMARKS.md).
//! `FLASHSALE_BENCH_SALES` changes the number of sales per batch (default 100);
//! `FLASHSALE_E2E_KEEP=1` keeps the cluster's directory (with the operator's log) afterwards.
//!
//! The peer column then measures boundary -> scale request for the same whole-second boundaries
//! three ways in the same cluster: the operator's Replicas mode, its CronHPA mode through Alibaba's
//! real CronHPA controller, and that controller alone with an equivalent hand-written CronHPA.
//! `FLASHSALE_BENCH_TIMELINE_PEER=skip` leaves it out; `=only` runs nothing else;
//! `FLASHSALE_BENCH_PEER_BOUNDARIES` sets the number of boundaries (default 20).

use anyhow::{Context as _, bail};
use flashsale_operator::api::{FlashSale, Phase};
use futures::{StreamExt, TryStreamExt, stream};
use jiff::{SignedDuration, Timestamp, Unit};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Client,
    api::{Api, ListParams, Patch, PatchParams, PostParams},
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
use support::{Operator, client, eventually, namespace_named as namespace};

/// The first sale's window opens this long after the sales are created.
const LEAD: SignedDuration = SignedDuration::from_secs(15);
/// Sale `i` starts `i` times this much after the first.
const STAGGER_MS: i64 = 37;
const WINDOW: SignedDuration = SignedDuration::from_secs(8);
const PREPARE_BEFORE: &str = "4s";
const PREPARE: SignedDuration = SignedDuration::from_secs(4);
const COOLDOWN_AFTER: &str = "3s";
const COOLDOWN: SignedDuration = SignedDuration::from_secs(3);
/// How many API requests run at once while the benchmark sets things up.
const SETUP_CONCURRENCY: usize = 8;
const NUDGE_ANNOTATION: &str = "bench.flashsale.dev/nudge";

fn main() {
    support::bench_main("timeline", run);
}

/// Which parts `FLASHSALE_BENCH_TIMELINE_PEER` selects: (the operator's own figures, the peer
/// column).
fn parts() -> anyhow::Result<(bool, bool)> {
    match std::env::var("FLASHSALE_BENCH_TIMELINE_PEER").as_deref() {
        Err(_) | Ok("") => Ok((true, true)),
        Ok("skip") => Ok((true, false)),
        Ok("only") => Ok((false, true)),
        Ok(other) => bail!("FLASHSALE_BENCH_TIMELINE_PEER must be skip or only, not {other:?}"),
    }
}

fn run() -> anyhow::Result<()> {
    let sales: usize = match std::env::var("FLASHSALE_BENCH_SALES") {
        Ok(v) => v.parse().context("FLASHSALE_BENCH_SALES must be a number")?,
        Err(_) => 100,
    };
    let boundaries: usize = match std::env::var("FLASHSALE_BENCH_PEER_BOUNDARIES") {
        Ok(v) => v.parse().context("FLASHSALE_BENCH_PEER_BOUNDARIES must be a number")?,
        Err(_) => 20,
    };
    let (own, peers) = parts()?;
    println!("machine: {}", support::machine());
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("flashsale-bench-{}", std::process::id()));
    let cluster = Cluster::start(&ClusterOptions { name: "bench".into(), ..ClusterOptions::default() }, &dir, false)?;
    cluster.install_crd(&support::repo().join("crds/flashsale.dev_flashsales.yaml"))?;
    println!("control plane up with the CRD in {:.1} s", started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(bench(&cluster, sales, own, peers.then_some(boundaries)));
    if std::env::var_os("FLASHSALE_E2E_KEEP").is_some() {
        println!("cluster directory kept: {}", cluster.dir.display());
    }
    result
}

async fn bench(cluster: &Cluster, n: usize, own: bool, peer_boundaries: Option<usize>) -> anyhow::Result<()> {
    let client = client(cluster).await?;
    let ns = namespace(&client, "bench").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
    if !own {
        let operator = Operator::operator_logging(cluster, &["--watch-namespace", &ns], "info")?;
        return match peer_boundaries {
            Some(k) => peer_column(cluster, &client, &ns, operator, k).await,
            None => Ok(()),
        };
    }

    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = deployments.clone();
            async move { api.create(&PostParams::default(), &deployment(i)?).await.context("creating a Deployment") }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    eventually(Duration::from_secs(300), || async {
        let list = deployments.list(&ListParams::default()).await?;
        Ok(list.items.iter().filter(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)).count() == n)
    })
    .await
    .context("the Deployments never became ready")?;
    println!("{n} Deployments at 1/1 ready in {:.1} s", t.elapsed().as_secs_f64());

    let mut operator = Operator::operator_logging(cluster, &["--watch-namespace", &ns], "info")?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let recorder = Recorder::start(client.clone(), &ns);
    let scaled = ScaleRecorder::start(client.clone(), &ns);

    // Part 1: 100 sales through every phase.
    let before_run = operator.scrape()?;
    let t0 = Timestamp::now();
    let schedules: Vec<(String, Schedule)> = (0..n).map(|i| (format!("sale-{i:03}"), Schedule::new(t0, i))).collect();
    let t = Instant::now();
    let created: HashMap<String, Timestamp> = stream::iter(schedules.iter().enumerate())
        .map(|(i, (name, s))| {
            let api = sales.clone();
            let sale = sale(name, &ns, i, &s.start, &s.end, PREPARE_BEFORE, COOLDOWN_AFTER);
            async move {
                api.create(&PostParams::default(), &sale?).await.context("creating a FlashSale")?;
                anyhow::Ok((name.clone(), Timestamp::now()))
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    println!(
        "{n} FlashSales created in {:.1} s; windows open from T0+{}s, staggered by {STAGGER_MS} ms",
        t.elapsed().as_secs_f64(),
        LEAD.as_secs()
    );
    let last_restore = schedules.iter().map(|(_, s)| s.restore_at).max().unwrap_or(t0);
    let timeout = Duration::try_from(last_restore.duration_since(Timestamp::now())).unwrap_or_default()
        + Duration::from_secs(120);
    let names: Vec<String> = schedules.iter().map(|(name, _)| name.clone()).collect();
    let completed = eventually(timeout, || async { Ok(recorder.all_in(&names, Phase::Completed)) }).await;
    let done_at = Timestamp::now();
    let after_run = operator.scrape()?;
    if let Err(err) = completed {
        println!("WARNING: not every sale reached Completed: {err:#}");
    }
    println!(
        "all sales Completed {:.1} s after the last restore boundary",
        done_at.duration_since(last_restore).as_secs_f64()
    );
    println!("Deployments (spec replicas, ready) after the run: {}", replica_tally(&deployments).await?);
    let lags = phase_lags(&recorder, &schedules);
    print_lags(&lags, n);
    print_breakdown(&recorder, &scaled, &schedules, &created);
    let run_delta = delta(&before_run, &after_run);
    println!(
        "\nduring the sale run: {:.0} reconciles; requests by verb: {}",
        reconciles(&after_run) - reconciles(&before_run),
        verbs(&run_delta)
    );
    println!("timeline reconcile durations during the sale run: {}", durations(&before_run, &after_run));

    // Part 2: writes per reconcile that has nothing to do. The Deployments settle first, so the
    // new sales see them as they stay.
    let t = Instant::now();
    let settled = eventually(Duration::from_secs(120), || async {
        let list = deployments.list(&ListParams::default()).await?;
        Ok(list.items.iter().all(|d| {
            d.spec.as_ref().and_then(|s| s.replicas) == Some(1)
                && d.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)
        }))
    })
    .await;
    match settled {
        Ok(()) => {
            println!("Deployments back at 1/1 ready {:.1} s after the sales completed", t.elapsed().as_secs_f64())
        }
        Err(err) => println!("WARNING: Deployments not all back at 1/1 ready: {err:#}"),
    }
    let later: Vec<String> = (0..n).map(|i| format!("later-{i:03}")).collect();
    let start = (Timestamp::now() + SignedDuration::from_hours(24)).round(Unit::Second)?;
    let end = start + SignedDuration::from_hours(2);
    stream::iter(later.iter().enumerate())
        .map(|(i, name)| {
            let api = sales.clone();
            let sale = sale(name, &ns, i, &start, &end, "30m", "15m");
            async move { api.create(&PostParams::default(), &sale?).await.context("creating a FlashSale") }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    eventually(Duration::from_secs(120), || async { Ok(recorder.all_ready_in(&later, Phase::Scheduled)) })
        .await
        .context("the second batch never became Scheduled and Ready")?;
    println!("\n{n} more FlashSales (window in 24h) Scheduled and Ready; {} sales live", 2 * n);

    println!("Deployments (spec replicas, ready) before the rounds: {}", replica_tally(&deployments).await?);
    let mut rounds = vec![];
    for (label, names) in [("Scheduled (window in 24h)", &later), ("Completed", &names)] {
        // The first nudge may find something that changed since the sale's last reconcile (the
        // operator does not watch workloads it does not hold); the second has nothing left.
        for nudge in 1..=2 {
            rounds.push(nudge_round(&sales, &operator, label, nudge, names).await?);
        }
    }
    print_rounds(&rounds);
    println!("Deployments (spec replicas, ready) after the rounds: {}", replica_tally(&deployments).await?);

    let (rss, hwm, _, _) = operator.memory()?;
    println!("\noperator memory with {} sales live: VmRSS {rss} kB, VmHWM {hwm} kB", 2 * n);
    let log = operator.log_text();
    let failed = log.lines().filter(|l| l.contains("reconcile failed")).count();
    let events = log.lines().filter(|l| l.contains("could not publish event")).count();
    println!("operator log: {failed} 'reconcile failed' lines, {events} 'could not publish event' lines");
    println!("at the end: {}", support::machine());
    match peer_boundaries {
        Some(k) => peer_column(cluster, &client, &ns, operator, k).await,
        None => Ok(()),
    }
}

/// The three ways of scaling at a boundary the peer column compares.
const ARMS: [(&str, &str); 3] = [
    ("r", "operator, mode Replicas"),
    ("c", "operator, mode CronHPA (via the CronHPA controller)"),
    ("h", "CronHPA controller alone, hand-written CronHPA"),
];

/// Boundary -> scale request (the Deployment's new `spec.replicas` seen by a watch) for `k`
/// whole-second boundaries, each shared by one workload of every arm: a sale in Replicas mode,
/// a sale in CronHPA mode, and a hand-written CronHPA with the same two run-once jobs the
/// operator renders. The CronHPA controller runs in UTC, as the sales say.
async fn peer_column(cluster: &Cluster, client: &Client, ns: &str, operator: Operator, k: usize) -> anyhow::Result<()> {
    let mut operator = operator;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let controller = harness::cronhpa::CronHpaController::start(cluster, "UTC")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let sales: Api<FlashSale> = Api::namespaced(client.clone(), ns);
    let crons: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &flashsale_operator::levers::cronhpa::api_resource());
    let scaled = ScaleRecorder::start(client.clone(), ns);
    let name = |arm: &str, i: usize| format!("peer-{arm}-{i:02}");
    let all: Vec<String> = ARMS.iter().flat_map(|(arm, _)| (0..k).map(move |i| name(arm, i))).collect();
    let t = Instant::now();
    stream::iter(all.iter())
        .map(|n| {
            let api = deployments.clone();
            async move { api.create(&PostParams::default(), &named_deployment(n)?).await.context("creating a Deployment") }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    eventually(Duration::from_secs(300), || async {
        let list = deployments.list(&ListParams::default()).await?;
        Ok(all.iter().all(|n| {
            list.items.iter().any(|d| {
                d.metadata.name.as_ref() == Some(n) && d.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)
            })
        }))
    })
    .await
    .context("the peer Deployments never became ready")?;
    println!("\n## peer column: {} Deployments at 1/1 ready in {:.1} s", all.len(), t.elapsed().as_secs_f64());

    // Boundary i is T0 + i s for the scale-up (the Preparing boundary) and that + window +
    // cooldown for the scale-down (the restore boundary): whole seconds, as CronHPA schedules are.
    let whole = jiff::TimestampRound::new().smallest(Unit::Second).mode(jiff::RoundMode::Ceil);
    // Far enough ahead for every sale to be Scheduled (and its CronHPA registered by the
    // controller) before the first boundary, even on a loaded machine.
    let t0 = (Timestamp::now() + SignedDuration::from_secs(45)).round(whole)?;
    let schedules: Vec<Schedule> = (0..k)
        .map(|i| {
            let prepare_at = t0 + SignedDuration::from_secs(i as i64);
            let start = prepare_at + PREPARE;
            let end = start + WINDOW;
            Schedule { prepare_at, start, end, restore_at: end + COOLDOWN }
        })
        .collect();
    let objects = schedules.iter().enumerate().flat_map(|(i, s)| [("r", i, s), ("c", i, s), ("h", i, s)]);
    stream::iter(objects)
        .map(|(arm, i, s)| {
            let (sales, crons) = (sales.clone(), crons.clone());
            let n = name(arm, i);
            async move {
                match arm {
                    "h" => {
                        let cron: kube::api::DynamicObject = serde_json::from_value(hand_written_cronhpa(&n, s))?;
                        crons.create(&PostParams::default(), &cron).await.context("creating a CronHPA")?;
                    }
                    _ => {
                        let mode = if arm == "r" { "Replicas" } else { "CronHPA" };
                        let sale = peer_sale(&n, ns, &n, mode, s)?;
                        sales.create(&PostParams::default(), &sale).await.context("creating a FlashSale")?;
                    }
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "{k} boundaries from T0 = now + {:.1} s, one a second; per boundary one sale of each mode and one hand-written CronHPA",
        t0.duration_since(Timestamp::now()).as_secs_f64()
    );
    let last = schedules.iter().map(|s| s.restore_at).max().unwrap_or(t0);
    let timeout =
        Duration::try_from(last.duration_since(Timestamp::now())).unwrap_or_default() + Duration::from_secs(60);
    let done = eventually(timeout, || async { Ok(all.iter().all(|n| scaled.get(n).1.is_some())) }).await;
    if let Err(err) = done {
        println!("WARNING: not every peer Deployment was seen scaled up and down again: {err:#}");
    }
    let ms = |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64() * 1000.0;
    println!("\nboundary -> scale request seen (the Deployment's new spec.replicas, through a watch), ms:");
    println!("| {:<52} | boundary  | count | min    | p50    | p90    | max    |", "scaled by");
    println!("|{}|-----------|-------|--------|--------|--------|--------|", "-".repeat(54));
    for (arm, label) in ARMS {
        let (mut up, mut down) = (vec![], vec![]);
        for (i, s) in schedules.iter().enumerate() {
            let (u, d, _) = scaled.get(&name(arm, i));
            up.extend(u.map(|u| ms(s.prepare_at, u)));
            down.extend(d.map(|d| ms(s.restore_at, d)));
        }
        for (boundary, values) in [("scale-up", &mut up), ("scale-down", &mut down)] {
            values.sort_by(f64::total_cmp);
            let at = |q: f64| percentile(values, q);
            println!(
                "| {label:<52} | {boundary:<9} | {:>5} | {:>6.0} | {:>6.0} | {:>6.0} | {:>6.0} |",
                values.len(),
                values.first().copied().unwrap_or(f64::NAN),
                at(50.0),
                at(90.0),
                values.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    // A job whose scale update lost a race (the Deployment changed between the controller's
    // read and its write) is logged as "Failed to scale"; count them per arm.
    let log = controller.log_text();
    for (arm, label) in &ARMS[1..] {
        let failed =
            log.lines().filter(|l| l.contains("Failed to scale") && l.contains(&format!("peer-{arm}-"))).count();
        let conflicts = log
            .lines()
            .filter(|l| {
                l.contains("Failed to scale") && l.contains(&format!("peer-{arm}-")) && l.contains("has been modified")
            })
            .count();
        println!("CronHPA controller, {label}: {failed} failed scale jobs ({conflicts} of them update conflicts)");
    }
    println!("at the end: {}", support::machine());
    drop(operator);
    Ok(())
}

fn named_deployment(name: &str) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}
            }
        }
    }))?)
}

/// A sale scaling Deployment `workload` from 1 to 2 replicas in `mode`, on `schedule`.
fn peer_sale(name: &str, ns: &str, workload: &str, mode: &str, schedule: &Schedule) -> anyhow::Result<FlashSale> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "window": {"start": schedule.start.to_string(), "end": schedule.end.to_string()},
            "prepareBefore": PREPARE_BEFORE,
            "cooldownAfter": COOLDOWN_AFTER,
            "cronHPATimeZone": "UTC",
            "workloads": [{"ref": {"kind": "Deployment", "name": workload}, "scale": {"peak": 2, "mode": mode}}],
        }
    }))?)
}

/// What a person would write for the same two boundaries: a run-once scale-up to 2 at the
/// Preparing boundary and a run-once scale-down to 1 at the restore boundary, in UTC.
fn hand_written_cronhpa(name: &str, schedule: &Schedule) -> serde_json::Value {
    let at = |t: Timestamp| t.strftime("@date %Y-%m-%d %H:%M:%S").to_string();
    serde_json::json!({
        "apiVersion": flashsale_operator::levers::cronhpa::API_VERSION,
        "kind": flashsale_operator::levers::cronhpa::KIND,
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "jobs": [
                {"name": "scale-up", "schedule": at(schedule.prepare_at), "targetSize": 2, "runOnce": true},
                {"name": "scale-down", "schedule": at(schedule.restore_at), "targetSize": 1, "runOnce": true},
            ]
        }
    })
}

/// How many Deployments have each (spec.replicas, status.readyReplicas).
async fn replica_tally(deployments: &Api<Deployment>) -> anyhow::Result<String> {
    let mut tally: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for d in deployments.list(&ListParams::default()).await?.items {
        let spec = d.spec.and_then(|s| s.replicas).unwrap_or(1);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        *tally.entry((spec, ready)).or_default() += 1;
    }
    Ok(tally.iter().map(|((s, r), n)| format!("{n} x ({s}, {r})")).collect::<Vec<_>>().join(", "))
}

/// The scheduled instants of one sale.
struct Schedule {
    prepare_at: Timestamp,
    start: Timestamp,
    end: Timestamp,
    restore_at: Timestamp,
}

impl Schedule {
    fn new(t0: Timestamp, i: usize) -> Schedule {
        let offset = SignedDuration::from_millis(STAGGER_MS * i as i64);
        let start = (t0 + LEAD + offset).round(Unit::Millisecond).unwrap_or(t0 + LEAD + offset);
        let end = start + WINDOW;
        Schedule { prepare_at: start - PREPARE, start, end, restore_at: end + COOLDOWN }
    }

    /// Each boundary with the phases that show it has been crossed.
    fn boundaries(&self) -> [(&'static str, Timestamp, &'static [Phase]); 4] {
        [
            ("Preparing", self.prepare_at, &[Phase::Preparing]),
            ("Active", self.start, &[Phase::Active]),
            ("CoolingDown", self.end, &[Phase::CoolingDown]),
            ("Restoring/Completed", self.restore_at, &[Phase::Restoring, Phase::Completed]),
        ]
    }
}

fn deployment(i: usize) -> anyhow::Result<Deployment> {
    let name = format!("web-{i:03}");
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/web:1"}]}
            }
        }
    }))?)
}

/// Sale `name` scaling Deployment `web-<i>` from 1 to 2 replicas.
fn sale(
    name: &str,
    ns: &str,
    i: usize,
    start: &Timestamp,
    end: &Timestamp,
    prepare: &str,
    cooldown: &str,
) -> anyhow::Result<FlashSale> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "window": {"start": start.to_string(), "end": end.to_string()},
            "prepareBefore": prepare,
            "cooldownAfter": cooldown,
            "workloads": [{"ref": {"kind": "Deployment", "name": format!("web-{i:03}")}, "scale": {"peak": 2, "mode": "Replicas"}}],
        }
    }))?)
}

/// What the benchmark's own watch on FlashSales has seen.
#[derive(Default)]
struct Seen {
    /// When each (sale, phase) was first seen.
    first: HashMap<(String, Phase), Timestamp>,
    /// The latest phase and whether Ready is True, per sale.
    latest: HashMap<String, (Option<Phase>, bool)>,
    /// When each sale was first seen with `Prescaled=True`.
    prescaled: HashMap<String, Timestamp>,
}

#[derive(Clone)]
struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    fn start(client: Client, ns: &str) -> Recorder {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let api: Api<FlashSale> = Api::namespaced(client, ns);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while let Some(item) = stream.next().await {
                let now = Timestamp::now();
                let Ok(sale) = item else { continue };
                let name = sale.metadata.name.clone().unwrap_or_default();
                let status = sale.status.unwrap_or_default();
                let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
                let prescaled = status.conditions.iter().any(|c| c.type_ == "Prescaled" && c.status == "True");
                let mut seen = sink.lock().unwrap_or_else(|p| p.into_inner());
                if prescaled {
                    seen.prescaled.entry(name.clone()).or_insert(now);
                }
                if let Some(phase) = status.phase {
                    seen.first.entry((name.clone(), phase)).or_insert(now);
                }
                seen.latest.insert(name, (status.phase, ready));
            }
        });
        Recorder(seen)
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn all_in(&self, names: &[String], phase: Phase) -> bool {
        self.with(|s| names.iter().all(|n| s.latest.get(n).is_some_and(|(p, _)| *p == Some(phase))))
    }

    fn all_ready_in(&self, names: &[String], phase: Phase) -> bool {
        self.with(|s| names.iter().all(|n| s.latest.get(n).is_some_and(|(p, r)| *p == Some(phase) && *r)))
    }
}

/// When the benchmark's watch on Deployments first saw each one scaled up (spec.replicas 2) and
/// back down (spec.replicas 1 after 2): the lever's write, seen from outside.
#[derive(Clone)]
struct ScaleRecorder(Arc<Mutex<HashMap<String, UpDown>>>);

/// When a Deployment was first seen scaled up, when back down, and when its peak (2 ready
/// replicas) was first ready.
type UpDown = (Option<Timestamp>, Option<Timestamp>, Option<Timestamp>);

impl ScaleRecorder {
    fn start(client: Client, ns: &str) -> ScaleRecorder {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let sink = seen.clone();
        let api: Api<Deployment> = Api::namespaced(client, ns);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while let Some(item) = stream.next().await {
                let now = Timestamp::now();
                let Ok(d) = item else { continue };
                let replicas = d.spec.and_then(|s| s.replicas);
                let ready = d.status.and_then(|s| s.ready_replicas);
                let mut seen = sink.lock().unwrap_or_else(|p| p.into_inner());
                let entry: &mut UpDown = seen.entry(d.metadata.name.unwrap_or_default()).or_default();
                if ready == Some(2) && entry.2.is_none() {
                    entry.2 = Some(now);
                }
                match (replicas, entry.0, entry.1) {
                    (Some(2), None, _) => entry.0 = Some(now),
                    (Some(1), Some(_), None) => entry.1 = Some(now),
                    _ => {}
                }
            }
        });
        ScaleRecorder(seen)
    }

    fn get(&self, deployment: &str) -> UpDown {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(deployment).copied().unwrap_or_default()
    }
}

/// Where the time of the two boundaries with a lever write goes: boundary -> the Deployment's
/// change seen, and that -> the phase seen.
fn print_breakdown(
    recorder: &Recorder,
    scaled: &ScaleRecorder,
    schedules: &[(String, Schedule)],
    created: &HashMap<String, Timestamp>,
) {
    let ms = |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64() * 1000.0;
    let mut rows: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    recorder.with(|seen| {
        for (i, (name, schedule)) in schedules.iter().enumerate() {
            // The first reconcile's duration, roughly: it ends with the status write.
            if let (Some(at), Some(scheduled)) = (created.get(name), seen.first.get(&(name.clone(), Phase::Scheduled)))
            {
                rows.entry("Created -> Scheduled status seen").or_default().push(ms(*at, *scheduled));
            }
            let (up, down, peak_ready) = scaled.get(&format!("web-{i:03}"));
            if let (Some(ready), Some(prescaled)) = (peak_ready, seen.prescaled.get(name)) {
                rows.entry("Peak ready -> Prescaled=True seen").or_default().push(ms(ready, *prescaled));
            }
            let first =
                |phases: &[Phase]| phases.iter().filter_map(|p| seen.first.get(&(name.clone(), *p))).min().copied();
            if let (Some(up), Some(phase)) = (up, first(&[Phase::Preparing])) {
                rows.entry("Preparing: boundary -> scaled up").or_default().push(ms(schedule.prepare_at, up));
                rows.entry("Preparing: scaled up -> phase").or_default().push(ms(up, phase));
            }
            if let (Some(down), Some(phase)) = (down, first(&[Phase::Restoring, Phase::Completed])) {
                rows.entry("Restore: boundary -> scaled down").or_default().push(ms(schedule.restore_at, down));
                rows.entry("Restore: scaled down -> phase").or_default().push(ms(down, phase));
            }
        }
    });
    println!("\nwhere the time goes (a new sale's first status; the boundaries with a Deployment write), ms:");
    println!("| {:<33} | count | p50      | p90      | p99      | max      |", "step");
    println!("|{}|-------|----------|----------|----------|----------|", "-".repeat(35));
    for (label, values) in &rows {
        println!("{}", stats_row(label, 33, values));
    }
}

struct Lags {
    /// Per boundary kind: lag in ms of every sale whose new phase was seen.
    by_boundary: BTreeMap<&'static str, Vec<f64>>,
    /// Boundaries whose phase was never seen (skipped or never reached).
    missed: Vec<(String, &'static str)>,
    /// Sales not seen in Scheduled before their first boundary.
    late_start: usize,
    worst: Vec<(f64, String, &'static str)>,
}

fn phase_lags(recorder: &Recorder, schedules: &[(String, Schedule)]) -> Lags {
    recorder.with(|seen| {
        let mut lags = Lags { by_boundary: BTreeMap::new(), missed: vec![], late_start: 0, worst: vec![] };
        for (name, schedule) in schedules {
            let scheduled = seen.first.get(&(name.clone(), Phase::Scheduled));
            if scheduled.is_none_or(|t| *t >= schedule.prepare_at) {
                lags.late_start += 1;
            }
            for (label, at, phases) in schedule.boundaries() {
                let observed = phases.iter().filter_map(|p| seen.first.get(&(name.clone(), *p))).min();
                match observed {
                    Some(t) => {
                        let ms = t.duration_since(at).as_secs_f64() * 1000.0;
                        lags.by_boundary.entry(label).or_default().push(ms);
                        lags.worst.push((ms, name.clone(), label));
                    }
                    None => lags.missed.push((name.clone(), label)),
                }
            }
        }
        lags.worst.sort_by(|a, b| b.0.total_cmp(&a.0));
        lags.worst.truncate(5);
        lags
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats_row(label: &str, width: usize, values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    format!(
        "| {label:<width$} | {:>5} | {:>8.0} | {:>8.0} | {:>8.0} | {:>8.0} |",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

fn print_lags(lags: &Lags, n: usize) {
    println!("\nphase transition lag with {n} sales live (boundary instant -> phase seen through a watch), ms:");
    println!("| boundary              | count | p50      | p90      | p99      | max      |");
    println!("|-----------------------|-------|----------|----------|----------|----------|");
    let mut all = vec![];
    for (label, values) in &lags.by_boundary {
        println!("{}", stats_row(label, 21, values));
        all.extend_from_slice(values);
    }
    println!("{}", stats_row("all", 21, &all));
    println!("missed boundaries (new phase never seen): {}", lags.missed.len());
    for (name, label) in lags.missed.iter().take(10) {
        println!("  {name}: {label}");
    }
    println!("sales not seen Scheduled before their Preparing boundary: {}", lags.late_start);
    println!("worst:");
    for (ms, name, label) in &lags.worst {
        println!("  {ms:>8.0} ms  {name} {label}");
    }
}

struct Round {
    label: &'static str,
    nudge: u32,
    sales: usize,
    reconciles: f64,
    writes: f64,
    reads: f64,
    by_verb: BTreeMap<String, f64>,
    seconds: f64,
    /// Sales whose status differs after the round.
    changed: usize,
    /// Status fields that changed: path to (how many sales, one example "old -> new").
    fields: BTreeMap<String, (usize, String)>,
}

/// Changes an annotation on every sale in `names` (a watch event, no new generation) and counts
/// what the operator does about it.
async fn nudge_round(
    sales: &Api<FlashSale>,
    operator: &Operator,
    label: &'static str,
    nudge: u32,
    names: &[String],
) -> anyhow::Result<Round> {
    operator.quiesce(Duration::from_secs(5), Duration::from_secs(120)).await?;
    let statuses_before = statuses(sales).await?;
    let before = operator.scrape()?;
    let t = Instant::now();
    let stamp = Timestamp::now().as_nanosecond().to_string();
    let stamp = &stamp;
    stream::iter(names)
        .map(|name| async move {
            let patch = serde_json::json!({"metadata": {"annotations": {NUDGE_ANNOTATION: stamp}}});
            sales.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.context("annotating a FlashSale")
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let want = reconciles(&before) + names.len() as f64;
    eventually(Duration::from_secs(120), || async { Ok(reconciles(&operator.scrape()?) >= want) })
        .await
        .with_context(|| format!("{label}: fewer than {} reconciles after the annotation", names.len()))?;
    // Count whatever the reconciles set off (a status write would trigger one more) too.
    operator.quiesce(Duration::from_secs(3), Duration::from_secs(60)).await?;
    let after = operator.scrape()?;
    let statuses_after = statuses(sales).await?;
    let mut fields: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut changed = 0;
    let null = serde_json::Value::Null;
    for name in names {
        let mut diffs = vec![];
        let (old, new) = (statuses_before.get(name).unwrap_or(&null), statuses_after.get(name).unwrap_or(&null));
        json_diff("status", old, new, &mut diffs);
        changed += usize::from(!diffs.is_empty());
        for (path, example) in diffs {
            fields.entry(path).or_insert((0, example)).0 += 1;
        }
    }
    let by_verb = delta(&before, &after);
    let writes = by_verb.iter().filter(|(v, _)| flashsale_operator::client::is_write(v)).map(|(_, n)| n).sum();
    let reads = by_verb.get("get").copied().unwrap_or(0.0);
    Ok(Round {
        label,
        nudge,
        sales: names.len(),
        reconciles: reconciles(&after) - reconciles(&before),
        writes,
        reads,
        by_verb,
        seconds: t.elapsed().as_secs_f64(),
        changed,
        fields,
    })
}

/// Every sale's status, by name.
async fn statuses(sales: &Api<FlashSale>) -> anyhow::Result<HashMap<String, serde_json::Value>> {
    let list = sales.list(&ListParams::default()).await?;
    list.items.into_iter().map(|s| Ok((s.metadata.name.unwrap_or_default(), serde_json::to_value(s.status)?))).collect()
}

/// The leaves that differ between `a` and `b`, as (path, "old -> new").
fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let (p, q) = (x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null));
                json_diff(&format!("{path}.{key}"), p, q, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                // Conditions are a map keyed by type: name them so.
                let key = p.get("type").and_then(Value::as_str).map_or_else(|| i.to_string(), str::to_owned);
                json_diff(&format!("{path}[{key}]"), p, q, out);
            }
        }
        _ if a != b => {
            let short = |v: &Value| v.to_string().chars().take(80).collect::<String>();
            out.push((path.to_owned(), format!("{} -> {}", short(a), short(b))));
        }
        _ => {}
    }
}

fn print_rounds(rounds: &[Round]) {
    println!("\nno-op reconciles (annotation changed on every sale, spec unchanged):");
    println!(
        "| sales in phase            | nudge | annotated | reconciles | writes | writes/reconcile | reads/reconcile |"
    );
    println!(
        "|---------------------------|-------|-----------|------------|--------|------------------|-----------------|"
    );
    for r in rounds {
        println!(
            "| {:<25} | {:>5} | {:>9} | {:>10.0} | {:>6.0} | {:>16.2} | {:>15.2} |",
            r.label,
            r.nudge,
            r.sales,
            r.reconciles,
            r.writes,
            r.writes / r.reconciles.max(1.0),
            r.reads / r.reconciles.max(1.0)
        );
    }
    for r in rounds {
        println!(
            "{} nudge {}: requests by verb {} (round took {:.1} s)",
            r.label,
            r.nudge,
            verbs(&r.by_verb),
            r.seconds
        );
        println!("  sales whose status changed: {}", r.changed);
        for (path, (count, example)) in &r.fields {
            println!("  {count:>4} x {path}: e.g. {example}");
        }
    }
}

fn verbs(by_verb: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = by_verb.iter().filter(|(_, n)| **n != 0.0).map(|(v, n)| format!("{v}={n:.0}")).collect();
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

/// The operator's metrics: series (name with labels) to value.
type Scrape = HashMap<String, f64>;

fn parse_metrics(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn reconciles(scrape: &Scrape) -> f64 {
    scrape.get("flashsale_reconcile_duration_seconds_count{lever=\"timeline\"}").copied().unwrap_or(0.0)
}

/// Mean timeline reconcile duration between two scrapes, and the share under a few bounds.
fn durations(before: &Scrape, after: &Scrape) -> String {
    let d = |series: &str| after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0);
    let count = d("flashsale_reconcile_duration_seconds_count{lever=\"timeline\"}");
    let sum = d("flashsale_reconcile_duration_seconds_sum{lever=\"timeline\"}");
    let mut out = format!("mean {:.0} ms over {count:.0}", 1000.0 * sum / count.max(1.0));
    for le in ["0.05", "0.1", "0.25", "0.5"] {
        let within = d(&format!("flashsale_reconcile_duration_seconds_bucket{{le=\"{le}\",lever=\"timeline\"}}"))
            .max(d(&format!("flashsale_reconcile_duration_seconds_bucket{{lever=\"timeline\",le=\"{le}\"}}")));
        out.push_str(&format!(", {:.0}% <= {le} s", 100.0 * within / count.max(1.0)));
    }
    out
}

/// Requests by verb, summed over clusters.
fn requests(scrape: &Scrape) -> BTreeMap<String, f64> {
    let mut by_verb = BTreeMap::new();
    for (series, n) in scrape {
        let Some(labels) = series.strip_prefix("flashsale_api_requests_total{") else { continue };
        let Some((_, verb)) = labels.split_once("verb=\"") else { continue };
        let verb = verb.split('"').next().unwrap_or_default();
        *by_verb.entry(verb.to_owned()).or_insert(0.0) += n;
    }
    by_verb
}

fn delta(before: &Scrape, after: &Scrape) -> BTreeMap<String, f64> {
    let before = requests(before);
    requests(after).into_iter().map(|(verb, n)| (verb.clone(), n - before.get(&verb).copied().unwrap_or(0.0))).collect()
}

/// The benchmark's view of the operator: its metrics and memory.
trait Observed {
    fn scrape(&self) -> anyhow::Result<Scrape>;
    async fn quiesce(&self, quiet: Duration, timeout: Duration) -> anyhow::Result<()>;
}

impl Observed for Operator {
    fn scrape(&self) -> anyhow::Result<Scrape> {
        match self.get("/metrics")? {
            (200, body) => Ok(parse_metrics(&body)),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// Waits until the reconcile count has not moved for `quiet`.
    async fn quiesce(&self, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = reconciles(&self.scrape()?);
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            if Instant::now() > deadline {
                bail!("the operator kept reconciling for {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = reconciles(&self.scrape()?);
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        Ok(())
    }
}
