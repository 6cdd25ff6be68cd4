//! The drain agent end to end: `flashsale-operator drain-agent` as a process against the real
//! control plane and the project's metadata stand-in (`harness::metadata`).
//!
//! kwok nodes run no containers, so the agent runs beside the cluster with `--node-name` set to
//! a kwok node. A drain evicts every pod on its node, so the tests use two nodes of their own
//! (`agent-node-a`, `agent-node-b`, created here on first use) that carry a NoSchedule taint
//! only this module's pods tolerate: other tests' pods never land there, and these drains never
//! touch them. A test takes its node's lock, and a guard removes the agent's taint and uncordons
//! the node afterwards, pass or fail.

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Node, Pod},
    events::v1::Event,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Client,
    api::{Api, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    TestFn,
    harness::{
        Cluster,
        metadata::{Fault, MetadataServer, Tokens},
    },
    support::{Agent, Env, block_on, client, eventually, is_ready, namespace, node_of},
};
use flashsale_operator::agent::drain::{TAINT_KEY, taint_value};

pub const TESTS: &[(&str, TestFn)] = &[
    ("agent::drains_a_noticed_node_honouring_pdbs", agent_drains_a_noticed_node_honouring_pdbs),
    ("agent::hardened_mode_refreshes_expiring_tokens", agent_hardened_mode_refreshes_expiring_tokens),
    ("agent::survives_a_broken_metadata_service", agent_survives_a_broken_metadata_service),
    ("agent::drains_once_across_repeated_notices_and_restarts", agent_drains_once_across_repeated_notices_and_restarts),
];

const TEST_TAINT: &str = "e2e.flashsale.dev/agent-test";
/// The nodes the agent tests drain, each with its lock.
const NODE_A: &str = "agent-node-a";
const NODE_B: &str = "agent-node-b";
static NODE_A_LOCK: Mutex<()> = Mutex::new(());
static NODE_B_LOCK: Mutex<()> = Mutex::new(());

/// Exclusive use of a spot node; restores it on drop.
struct NodeLease<'a> {
    cluster: &'a Cluster,
    node: &'static str,
    _lock: MutexGuard<'static, ()>,
}

impl<'a> NodeLease<'a> {
    fn take(cluster: &'a Cluster, node: &'static str) -> anyhow::Result<NodeLease<'a>> {
        let lock = match node {
            NODE_A => &NODE_A_LOCK,
            NODE_B => &NODE_B_LOCK,
            other => bail!("no lock for node {other}"),
        };
        let lease = NodeLease { cluster, node, _lock: lock.lock().unwrap_or_else(|e| e.into_inner()) };
        // Created on first use (kwok manages every node), the same as the harness's nodes but
        // tainted for these tests only.
        let manifest = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: {node}\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64\n    type: kwok\nspec:\n  taints:\n  - {{key: {TEST_TAINT}, value: \"true\", effect: NoSchedule}}\nstatus:\n  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n"
        );
        if cluster.kubectl(&["get", "node", node, "-o", "name"]).is_err() {
            cluster.kubectl_stdin(&["create", "-f", "-"], Some(&manifest))?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.kubectl(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])? != "True"
        {
            if Instant::now() > deadline {
                bail!("node {node} not Ready after 60s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        lease.restore();
        // The previous test's namespace is being deleted; its pods must be gone from the node
        // before this test's drain, or they would be in its report.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = cluster.kubectl(&[
                "get",
                "pods",
                "-A",
                "-l",
                "drain-test=yes",
                &format!("--field-selector=spec.nodeName={node}"),
                "-o",
                "name",
            ])?;
            if left.trim().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("pods of an earlier agent test are still on {node}: {left}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(lease)
    }

    fn restore(&self) {
        // Fails when the taint is not there, which is fine.
        let _ = self.cluster.kubectl(&["taint", "nodes", self.node, &format!("{TAINT_KEY}-")]);
        if let Err(err) = self.cluster.kubectl(&["uncordon", self.node]) {
            eprintln!("could not uncordon {}: {err:#}", self.node);
        }
    }
}

impl Drop for NodeLease<'_> {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Deletes a test namespace on drop (without waiting), so its pods leave the shared node.
struct Cleanup<'a> {
    cluster: &'a Cluster,
    namespace: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.cluster.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]) {
            eprintln!("could not delete namespace {}: {err:#}", self.namespace);
        }
    }
}

/// An RFC 3339 UTC time `secs` from now, whole seconds, as ECS writes it.
fn release_in(secs: i64) -> (String, jiff::Timestamp) {
    let t = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs))
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    (t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(), t)
}

/// Whether the node carries the agent's taint for `release` and is cordoned.
async fn node_marked(nodes: &Api<Node>, node: &str, release: jiff::Timestamp) -> anyhow::Result<bool> {
    let n = nodes.get(node).await?;
    let spec = n.spec.unwrap_or_default();
    let want = taint_value(release);
    let tainted = spec
        .taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TAINT_KEY && t.value.as_deref() == Some(want.as_str()) && t.effect == "NoSchedule");
    Ok(tainted && spec.unschedulable == Some(true))
}

/// Events the agent published about `node` for this release time: (reason, note, series count).
async fn node_events(client: &Client, node: &str, release: &str) -> anyhow::Result<Vec<(String, String, i32)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut list: Vec<Event> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node))
        .filter(|e| e.reporting_controller.as_deref() == Some(flashsale_operator::agent::REPORTER))
        .filter(|e| e.note.as_deref().is_some_and(|n| n.contains(release)))
        .collect();
    list.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    Ok(list
        .into_iter()
        .map(|e| {
            let count = e.series.as_ref().map(|s| s.count).unwrap_or(1);
            (e.reason.unwrap_or_default(), e.note.unwrap_or_default(), count)
        })
        .collect())
}

/// A Deployment whose pods prefer `node` (and tolerate the test taint), with no default spread,
/// so they all land there while it is open and elsewhere once it is cordoned.
fn pinned_deployment(name: &str, replicas: i32, grace: i64, node: &str) -> anyhow::Result<Deployment> {
    let other_test_nodes: Vec<&str> = [NODE_A, NODE_B].into_iter().filter(|n| *n != node).collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "drain-test": "yes"}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.example/web:1"}],
                    "terminationGracePeriodSeconds": grace,
                    "tolerations": [{"key": TEST_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "preference": {"matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                            ]}}
                        ],
                        // Never the other test node: a drain test running there at the same time
                        // must not find these pods (or their replacements) to evict.
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": other_test_nodes}
                            ]}
                        ]},
                    }},
                    // An explicit constraint over a single domain replaces the scheduler's default
                    // spreading by hostname, which would otherwise scatter the pods.
                    "topologySpreadConstraints": [{
                        "maxSkew": 1000, "topologyKey": "type", "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": name}}
                    }]
                }
            }
        }
    }))?)
}

fn pdb(name: &str, app: &str, max_unavailable: i32) -> anyhow::Result<PodDisruptionBudget> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": {"app": app}}}
    }))?)
}

fn app_of(p: &Pod) -> &str {
    p.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str).unwrap_or("")
}

/// Creates the Deployments (name, replicas, pod grace period in seconds) and waits until every
/// pod is ready on `node`.
async fn place_pods(client: &Client, ns: &str, node: &str, deployments: &[(&str, i32, i64)]) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for (name, replicas, grace) in deployments {
        api.create(&PostParams::default(), &pinned_deployment(name, *replicas, *grace, node)?).await?;
    }
    let want: i32 = deployments.iter().map(|(_, r, _)| r).sum();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(120), || async {
        let list = pods.list(&ListParams::default().labels("drain-test=yes")).await?;
        let on_node = list.items.iter().filter(|p| node_of(p) == node && is_ready(p)).count();
        let elsewhere: Vec<_> = list.items.iter().filter(|p| !node_of(p).is_empty() && node_of(p) != node).collect();
        if !elsewhere.is_empty() {
            bail!("{} pods were scheduled away from {node}, e.g. on {}", elsewhere.len(), node_of(elsewhere[0]));
        }
        Ok(on_node == want as usize)
    })
    .await
    .with_context(|| format!("the {want} test pods never all became ready on {node}"))
}

/// Notice on a node with 30 pods from four Deployments (one under a PDB allowing one disruption,
/// one under two PDBs) and a DaemonSet pod: the node is tainted and cordoned, every evictable pod
/// is evicted without the PDB ever being violated, the replacements run elsewhere, the DaemonSet
/// pod stays, and the pod under two PDBs is reported once, on the node and on the FlashSale.
fn agent_drains_a_noticed_node_honouring_pdbs(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let node = NODE_A;
    let _lease = NodeLease::take(cluster, node)?;
    block_on(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "agent-drain").await?;
        let _cleanup = Cleanup { cluster, namespace: ns.clone() };
        // More guarded pods than the agent sends requests at once: pods a PDB holds back must not
        // keep the others waiting.
        let deployments = [("guarded", 18, 30), ("plain-a", 6, 30), ("plain-b", 5, 30), ("two-pdbs", 1, 30)];
        let guarded_replicas = 18usize;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        // The guarded PDB allows no disruption at first (as during another rollout), then one.
        pdbs.create(&PostParams::default(), &pdb("guarded", "guarded", 0)?).await?;
        pdbs.create(&PostParams::default(), &pdb("two-pdbs-a", "two-pdbs", 1)?).await?;
        pdbs.create(&PostParams::default(), &pdb("two-pdbs-b", "two-pdbs", 1)?).await?;
        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
        daemonsets
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "node-agent"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "node-agent"}},
                        "template": {
                            "metadata": {"labels": {"app": "node-agent"}},
                            "spec": {
                                "nodeSelector": {"kubernetes.io/hostname": node},
                                "tolerations": [{"operator": "Exists"}],
                                "containers": [{"name": "agent", "image": "registry.example/node-agent:1"}]
                            }
                        }
                    }
                }))?,
            )
            .await?;
        place_pods(&client, &ns, node, &deployments).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let ds_uid = || async {
            let list = pods.list(&ListParams::default().labels("app=node-agent")).await?;
            anyhow::Ok(
                list.items.iter().find(|p| node_of(p) == node && is_ready(p)).and_then(|p| p.metadata.uid.clone()),
            )
        };
        eventually(Duration::from_secs(60), || async { Ok(ds_uid().await?.is_some()) })
            .await
            .context("the DaemonSet pod never became ready")?;
        let ds_pod = ds_uid().await?;
        // PDB status must be observed before evictions can be judged against it.
        eventually(Duration::from_secs(60), || async {
            let p = pdbs.get("guarded").await?;
            Ok(p.status.is_some_and(|s| {
                s.disruptions_allowed == Some(0) && s.current_healthy == Some(guarded_replicas as i32)
            }))
        })
        .await
        .context("the guarded PDB status never showed its 8 healthy pods")?;

        let sales: Api<flashsale_operator::api::FlashSale> = Api::namespaced(client.clone(), &ns);
        let sale = crate::support::flash_sale(
            "spot-sale",
            &ns,
            (crate::support::at(86_400).as_str(), crate::support::at(90_000).as_str()),
            ("5s", "3s"),
            serde_json::json!([{"ref": {"kind": "Deployment", "name": "plain-a"}, "scale": {"peak": 11, "mode": "Replicas"}}]),
        )?;
        sales.create(&PostParams::default(), &sale).await?;

        // Watch the guarded pods throughout: healthy (ready, not terminating) never below 17.
        let min_healthy = Arc::new(Mutex::new(usize::MAX));
        let watch = {
            let min_healthy = min_healthy.clone();
            let (reader, writer) = kube::runtime::reflector::store::<Pod>();
            let stream = watcher(pods.clone(), watcher::Config::default().labels("app=guarded")).reflect(writer);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                let mut listed = false;
                while let Some(event) = stream.next().await {
                    // The store is complete once the initial list is in.
                    listed |= matches!(event, Ok(watcher::Event::InitDone));
                    if !listed {
                        continue;
                    }
                    let healthy = reader
                        .state()
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                        .count();
                    let mut min = min_healthy.lock().unwrap_or_else(|e| e.into_inner());
                    *min = (*min).min(healthy);
                }
            })
        };

        let metadata = MetadataServer::start()?;
        let mut agent = Agent::agent(
            cluster,
            node,
            &metadata.endpoint(),
            &["--poll-interval", "500ms", "--sale", &format!("{ns}/spot-sale")],
        )?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        let (release, release_ts) = release_in(300);
        let noticed = Instant::now();
        metadata.set_notice(Some(&release));

        let nodes: Api<Node> = Api::all(client.clone());
        eventually(Duration::from_secs(10), || node_marked(&nodes, node, release_ts))
            .await
            .context("the node was not tainted and cordoned")?;
        println!("node tainted and cordoned {:?} after the notice", noticed.elapsed());

        // While the PDB allows nothing, every guarded pod is refused (429) and retried with
        // backoff: a few attempts per pod over several seconds, not a loop.
        let blocked = "flashsale_drain_agent_eviction_attempts_total{outcome=\"blocked_pdb\"}";
        eventually(Duration::from_secs(20), || async { Ok(agent.metric(blocked)? >= guarded_replicas as f64) })
            .await
            .with_context(|| format!("the guarded pods were not refused; agent log:\n{}", agent.log_text()))?;
        let (before, t) = (agent.metric(blocked)?, Instant::now());
        tokio::time::sleep(Duration::from_secs(6)).await;
        let retries = agent.metric(blocked)? - before;
        let guarded_left = pods
            .list(&ListParams::default().labels("app=guarded"))
            .await?
            .items
            .iter()
            .filter(|p| node_of(p) == node && p.metadata.deletion_timestamp.is_none())
            .count();
        ensure!(guarded_left == guarded_replicas, "a guarded pod went while its PDB allowed no disruption");
        let plain_left = pods
            .list(&ListParams::default().labels("app in (plain-a,plain-b)"))
            .await?
            .items
            .iter()
            .filter(|p| node_of(p) == node && p.metadata.deletion_timestamp.is_none())
            .count();
        ensure!(plain_left == 0, "{plain_left} unguarded pods still wait while the guarded ones are refused");
        ensure!(
            retries >= guarded_replicas as f64 && retries <= (guarded_replicas * 8) as f64,
            "{retries} retries of {guarded_replicas} blocked pods in {:?}: want a backoff of 0.5 s doubling to 5 s",
            t.elapsed()
        );
        println!("{retries} retries of the blocked pods in {:?}", t.elapsed());
        pdbs.patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"maxUnavailable": 1}})),
        )
        .await?;

        // Every evictable pod is replaced by one on another node, all ready.
        let d_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        eventually(Duration::from_secs(180), || async {
            let list = pods.list(&ListParams::default().labels("drain-test=yes")).await?;
            let moved = list.items.iter().filter(|p| app_of(p) != "two-pdbs").all(|p| node_of(p) != node);
            let ready = list.items.iter().filter(|p| app_of(p) != "two-pdbs" && is_ready(p)).count();
            Ok(moved && ready == 29)
        })
        .await
        .with_context(|| {
            format!("the evicted pods were not all replaced elsewhere; agent log:\n{}", agent.log_text())
        })?;
        eventually(Duration::from_secs(30), || async {
            for (name, replicas, _) in deployments {
                let d = d_api.get(name).await?;
                let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                if ready != replicas {
                    bail!("{name}: {ready}/{replicas} ready after the drain");
                }
            }
            Ok(true)
        })
        .await?;
        eventually(Duration::from_secs(30), || async {
            Ok(agent.metric("flashsale_drain_agent_draining")? == 0.0
                && agent.metric("flashsale_drain_agent_notice_to_drained_seconds_count")? == 1.0)
        })
        .await
        .context("the drain never finished")?;
        agent.ensure_alive()?;
        // The default Optional mode used the tokens this service hands out.
        let counts = metadata.counts();
        ensure!(counts.tokens_issued >= 1 && counts.gets_without_token == 0, "{counts:?}");

        let evicted = agent.metric("flashsale_drain_agent_evictions_total{outcome=\"evicted\"}")?;
        ensure!(evicted == 29.0, "evictions reported: {evicted}, want 29");
        let multiple = agent.metric("flashsale_drain_agent_evictions_total{outcome=\"multiple_pdb\"}")?;
        let multiple_attempts =
            agent.metric("flashsale_drain_agent_eviction_attempts_total{outcome=\"multiple_pdb\"}")?;
        ensure!(
            multiple == 1.0 && multiple_attempts == 1.0,
            "the pod under two PDBs: {multiple} outcome(s) from {multiple_attempts} attempt(s), want 1 from 1"
        );
        let blocked_attempts = agent.metric(blocked)?;
        let blocked_final = agent.metric("flashsale_drain_agent_evictions_total{outcome=\"blocked_pdb\"}")?;
        ensure!(blocked_final == 0.0, "{blocked_final} pods given up on as blocked, with 5 minutes to go");
        println!("evicted {evicted}, 429 answers {blocked_attempts}");

        watch.abort();
        let min = *min_healthy.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(
            min >= guarded_replicas - 1,
            "guarded pods healthy dropped to {min}: the PDB allows 1 of {guarded_replicas} down"
        );
        ensure!(min < guarded_replicas, "the watch never saw a guarded pod go");

        // The DaemonSet pod stays, the same pod; the pod under two PDBs stays too.
        let list = pods.list(&ListParams::default()).await?;
        let ds_now: Vec<_> = list.items.iter().filter(|p| app_of(p) == "node-agent").collect();
        ensure!(
            ds_now.len() == 1 && ds_now[0].metadata.uid == ds_pod && ds_now[0].metadata.deletion_timestamp.is_none(),
            "the DaemonSet pod was touched"
        );
        let two = list.items.iter().filter(|p| app_of(p) == "two-pdbs").collect::<Vec<_>>();
        ensure!(two.len() == 1 && node_of(two[0]) == node, "the pod under two PDBs should still be on {node}");
        let two_name = two[0].metadata.name.clone().unwrap_or_default();

        // The report: one notice event, one incomplete-drain event naming the pod, on the
        // node and on the FlashSale.
        eventually(Duration::from_secs(20), || async {
            let events = node_events(&client, node, &release_ts.to_string()).await?;
            Ok(events.iter().any(|(r, _, _)| r == "SpotDrainIncomplete"))
        })
        .await
        .context("no SpotDrainIncomplete event on the node")?;
        let events = node_events(&client, node, &release_ts.to_string()).await?;
        let reasons: Vec<&str> = events.iter().map(|(r, _, _)| r.as_str()).collect();
        ensure!(reasons == ["SpotTerminationNotice", "SpotDrainIncomplete"], "node events: {events:?}");
        let report = &events[1].1;
        ensure!(
            report.contains(&format!("{ns}/{two_name} (more than one PodDisruptionBudget selects it)"))
                && report.contains("evicted 29 pods"),
            "report: {report}"
        );
        let sale_events = crate::support::events(&client, &ns, "spot-sale").await?;
        let sale_reasons: Vec<&str> = sale_events.iter().map(|(r, _)| r.as_str()).collect();
        ensure!(sale_reasons == ["SpotTerminationNotice", "SpotDrainIncomplete"], "FlashSale events: {sale_events:?}");
        ensure!(sale_events[1].1.contains(&two_name), "FlashSale report: {}", sale_events[1].1);
        Ok(())
    })
}

/// Hardened mode with 2-second tokens: the agent renews its token before it expires (and at once
/// when the service forgets it), never asks without one, and drains when the notice comes.
fn agent_hardened_mode_refreshes_expiring_tokens(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let node = NODE_B;
    let _lease = NodeLease::take(cluster, node)?;
    block_on(async {
        let client = client(cluster).await?;
        let metadata = MetadataServer::start()?;
        metadata.set_tokens(Tokens::Required, Some(Duration::from_secs(2)));
        let mut agent = Agent::agent(
            cluster,
            node,
            &metadata.endpoint(),
            &["--poll-interval", "500ms", "--metadata-token", "Required", "--token-ttl-seconds", "2"],
        )?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        eventually(Duration::from_secs(30), || async { Ok(metadata.counts().tokens_issued >= 4) })
            .await
            .context("the agent did not renew its token")?;
        let counts = metadata.counts();
        ensure!(counts.gets_rejected == 0, "GETs refused for a missing or expired token: {counts:?}");
        ensure!(counts.gets_without_token == 0, "GETs without a token in hardened mode: {counts:?}");
        ensure!(counts.gets_valid_token >= 8, "too few polls with a valid token: {counts:?}");

        // The service forgets its tokens: one 401, a new token, and polling goes on.
        metadata.revoke_tokens();
        let before = metadata.counts();
        eventually(Duration::from_secs(10), || async {
            let now = metadata.counts();
            Ok(now.gets_rejected >= 1 && now.gets_valid_token >= before.gets_valid_token + 4)
        })
        .await
        .with_context(|| format!("polling did not recover after the tokens were revoked: {:?}", metadata.counts()))?;
        agent.ensure_alive()?;
        let token_errors = agent.metric("flashsale_drain_agent_metadata_errors_total{kind=\"token\"}")?;
        ensure!(token_errors == 0.0, "{token_errors} token errors: a rejected token should be renewed within the poll");

        let (release, release_ts) = release_in(300);
        metadata.set_notice(Some(&release));
        let nodes: Api<Node> = Api::all(client.clone());
        eventually(Duration::from_secs(10), || node_marked(&nodes, node, release_ts))
            .await
            .with_context(|| format!("the node was not tainted and cordoned; agent log:\n{}", agent.log_text()))?;
        let counts = metadata.counts();
        ensure!(counts.notices_served >= 1 && counts.gets_without_token == 0, "{counts:?}");
        eventually(Duration::from_secs(20), || async {
            let events = node_events(&client, node, &release_ts.to_string()).await?;
            Ok(events.iter().any(|(r, _, _)| r == "SpotDrained"))
        })
        .await
        .context("no SpotDrained event")?;
        Ok(())
    })
}

/// A metadata service that answers garbage, hangs, fails and goes away: the agent stays up and
/// healthy, counts each kind of error, and drains when a notice finally comes.
fn agent_survives_a_broken_metadata_service(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let node = NODE_B;
    let _lease = NodeLease::take(cluster, node)?;
    block_on(async {
        let client = client(cluster).await?;
        let metadata = MetadataServer::start()?;
        metadata.set_fault(Fault::Garbage);
        let mut agent = Agent::agent(
            cluster,
            node,
            &metadata.endpoint(),
            &["--poll-interval", "500ms", "--metadata-token", "Disabled"],
        )?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        let series = |kind: &str| format!("flashsale_drain_agent_metadata_errors_total{{kind=\"{kind}\"}}");

        let phases = [
            ("garbage", Fault::Garbage, false),
            ("timeout", Fault::Hang, false),
            ("status", Fault::ServerError, false),
            ("connect", Fault::None, true),
        ];
        for (kind, fault, down) in phases {
            metadata.set_fault(fault);
            metadata.set_down(down)?;
            let t = Instant::now();
            eventually(Duration::from_secs(30), || async { Ok(agent.metric(&series(kind))? >= 2.0) })
                .await
                .with_context(|| format!("no {kind} errors counted; agent log:\n{}", agent.log_text()))?;
            agent.ensure_alive()?;
            let (code, _) = agent.get("/healthz")?;
            ensure!(code == 200, "/healthz answered {code} during {kind} errors");
            println!("{kind}: 2 errors counted in {:?}", t.elapsed());
        }
        metadata.set_down(false)?;
        ensure!(metadata.counts().notices_served == 0);

        let (release, release_ts) = release_in(300);
        metadata.set_notice(Some(&release));
        let noticed = Instant::now();
        let nodes: Api<Node> = Api::all(client.clone());
        // The backoff after a run of errors is at most 10 s.
        eventually(Duration::from_secs(20), || node_marked(&nodes, node, release_ts)).await.with_context(|| {
            format!("the node was not drained after the service recovered; agent log:\n{}", agent.log_text())
        })?;
        println!("drained {:?} after the service recovered with a notice", noticed.elapsed());
        agent.ensure_alive()?;
        let log = agent.log_text();
        ensure!(!log.contains("panicked"), "the agent panicked:\n{log}");
        Ok(())
    })
}

/// Grace periods clipped to the time left; then the notice seen again, gone and back, and a
/// restarted agent: one drain, one announcement.
fn agent_drains_once_across_repeated_notices_and_restarts(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let node = NODE_A;
    let _lease = NodeLease::take(cluster, node)?;
    block_on(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "agent-once").await?;
        let _cleanup = Cleanup { cluster, namespace: ns.clone() };
        // `slow` pods ask for 10 minutes to stop; the instance goes in one.
        place_pods(&client, &ns, node, &[("web", 3, 30), ("slow", 2, 600)]).await?;
        let graces = Arc::new(Mutex::new(BTreeMap::<String, (String, i64)>::new()));
        let watch = {
            let graces = graces.clone();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default()));
                while let Some(event) = stream.next().await {
                    if let Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) = event
                        && let Some(grace) = p.metadata.deletion_grace_period_seconds
                        && node_of(&p) == NODE_A
                    {
                        let mut graces = graces.lock().unwrap_or_else(|e| e.into_inner());
                        graces
                            .entry(p.metadata.name.clone().unwrap_or_default())
                            .or_insert((app_of(&p).to_owned(), grace));
                    }
                }
            })
        };
        // A service without tokens: the default Optional mode falls back to plain requests.
        let metadata = MetadataServer::start()?;
        metadata.set_tokens(Tokens::Unsupported, None);
        let args = ["--poll-interval", "300ms"];
        let mut agent = Agent::agent(cluster, node, &metadata.endpoint(), &args)?;
        agent.wait_ready(Duration::from_secs(30)).await?;
        let (release, release_ts) = release_in(60);
        metadata.set_notice(Some(&release));
        let nodes: Api<Node> = Api::all(client.clone());
        eventually(Duration::from_secs(10), || node_marked(&nodes, node, release_ts)).await?;
        eventually(Duration::from_secs(30), || async {
            Ok(agent.metric("flashsale_drain_agent_notice_to_drained_seconds_count")? == 1.0)
        })
        .await
        .context("the drain never finished")?;
        // Each grace period fits before the release: the pods' own 30 s as they are, the
        // 600 s ones clipped to the time left less 2 s.
        eventually(Duration::from_secs(10), || async { Ok(graces.lock().map(|g| g.len()).unwrap_or(0) == 5) })
            .await
            .with_context(|| format!("evictions seen: {:?}", graces.lock().map(|g| g.clone()).unwrap_or_default()))?;
        watch.abort();
        let graces = graces.lock().map(|g| g.clone()).unwrap_or_default();
        for (pod, (app, grace)) in &graces {
            let fits = match app.as_str() {
                "web" => *grace == 30,
                _ => (45..=58).contains(grace),
            };
            ensure!(fits, "{pod} ({app}) was evicted with a {grace} s grace period, release in under 60 s: {graces:?}");
        }

        // The notice keeps being served, goes away and comes back: still one drain.
        let polls = agent.metric("flashsale_drain_agent_metadata_polls_total")?;
        metadata.set_notice(None);
        eventually(Duration::from_secs(10), || async {
            Ok(agent.metric("flashsale_drain_agent_metadata_polls_total")? >= polls + 3.0)
        })
        .await?;
        metadata.set_notice(Some(&release));
        let served = metadata.counts().notices_served;
        eventually(Duration::from_secs(10), || async { Ok(metadata.counts().notices_served >= served + 3) }).await?;
        let counts = metadata.counts();
        ensure!(counts.gets_without_token >= 3 && counts.gets_rejected == 0, "plain polling did not work: {counts:?}");
        ensure!(agent.metric("flashsale_drain_agent_metadata_errors_total{kind=\"token\"}")? == 0.0);
        ensure!(agent.metric("flashsale_drain_agent_drains_total")? == 1.0, "a second drain started");
        ensure!(agent.metric("flashsale_drain_agent_notices_total")? == 1.0, "the same notice was counted twice");

        // A restarted agent finds the node marked for this release time and stays quiet.
        agent.kill()?;
        let mut again = Agent::agent(cluster, node, &metadata.endpoint(), &args)?;
        again.wait_ready(Duration::from_secs(30)).await?;
        eventually(Duration::from_secs(30), || async {
            Ok(again.metric("flashsale_drain_agent_notice_to_drained_seconds_count")? == 1.0)
        })
        .await
        .with_context(|| format!("the restarted agent did not finish; log:\n{}", again.log_text()))?;
        ensure!(again.metric("flashsale_drain_agent_drains_total")? == 0.0, "the restarted agent started a drain");
        ensure!(
            again.log_text().contains("already tainted and cordoned for this release time"),
            "log:\n{}",
            again.log_text()
        );
        // Give a wrongly repeated event time to show.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let events = node_events(&client, node, &release_ts.to_string()).await?;
        let summary: BTreeMap<&str, (usize, i32)> = events.iter().fold(BTreeMap::new(), |mut m, (r, _, c)| {
            let e = m.entry(r.as_str()).or_insert((0, 0));
            e.0 += 1;
            e.1 += c;
            m
        });
        ensure!(
            summary == BTreeMap::from([("SpotDrained", (1, 1)), ("SpotTerminationNotice", (1, 1))]),
            "events (reason → objects, occurrences): {summary:?}"
        );
        Ok(())
    })
}
