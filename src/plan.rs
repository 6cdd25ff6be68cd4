//! `flashsale-operator plan`: the timeline and what each phase does, per cluster and lever, for
//! change review. Writes nothing; with a kubeconfig it reads live workloads to show baselines.

use anyhow::Context as _;
use jiff::{Timestamp, tz::TimeZone};
use kube::Client;
use std::{fmt::Write as _, io::Read, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    api::{FlashSale, MetadataTokenMode, Phase, ScaleMode},
    clusters::{self, Clusters},
    levers::{self, prescale, warmup},
    timeline::{self, Schedule},
};

/// Reads a FlashSale from a YAML file (`-` for standard input) and checks it against the same
/// schema rules the API server applies.
pub fn read(path: &Path) -> anyhow::Result<FlashSale> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let sale: FlashSale =
        serde_json::from_value(value).with_context(|| format!("{} is not a valid FlashSale", path.display()))?;
    if let Err(errors) = kube::core::cel::validate_cel(&sale) {
        anyhow::bail!("{} would be rejected by the API server: {errors}", path.display());
    }
    Ok(sale)
}

/// What is known of one workload in one cluster: its replicas now, if a cluster was read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Baseline {
    /// No cluster was read.
    Unknown,
    /// The replicas the sale will record (the recorded original if the sale already holds it).
    Replicas(i32),
    /// The workload or its cluster could not be read.
    Unavailable(String),
}

/// Live facts for the plan: per cluster name, the baseline of each workload (in spec order).
pub type Live = Vec<(String, Vec<Baseline>)>;

/// Reads baselines from every cluster of the sale through `client` (the cluster holding the
/// sale and its kubeconfig Secrets). Read-only.
///
/// `client` is the reviewer's own (their kubeconfig may use exec plugins); the sale's Secrets are
/// the sale author's, so they get the operator's rules: no exec plugins, token files or paths.
pub async fn read_live(sale: &FlashSale, client: Client) -> Live {
    let ns = sale.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let clusters =
        Clusters::new(client, std::sync::Arc::new(crate::metrics::Metrics::default()), false, None, Default::default());
    let mut live = vec![];
    for target in clusters.targets(sale, &ns).await {
        let baselines = match &target.client {
            Ok(client) => {
                let mut out = vec![];
                for (i, w) in sale.spec.workloads.iter().enumerate() {
                    // The same confinement the levers apply: nothing outside the sale's
                    // namespace is read, not even for a plan.
                    let target = match prescale::Target::confined(w, i, &ns) {
                        Ok(target) => target,
                        Err(refusal) => {
                            out.push(Baseline::Unavailable(refusal));
                            continue;
                        }
                    };
                    out.push(match prescale::baseline(client, &target).await {
                        Ok(Some(replicas)) => Baseline::Replicas(replicas),
                        Ok(None) => Baseline::Unavailable(format!("{} not found", target.display())),
                        Err(err) => Baseline::Unavailable(err.to_string()),
                    });
                }
                out
            }
            Err(err) => vec![Baseline::Unavailable(err.to_string()); sale.spec.workloads.len()],
        };
        live.push((target.name, baselines));
    }
    live
}

/// The plan for `sale` as seen from `now`: what `plan -o json|yaml` prints, and what the text
/// is rendered from. Field names are stable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub namespace: String,
    pub name: String,
    pub now: Timestamp,
    /// The phase the clock puts the sale in at `now`.
    pub phase: Phase,
    /// The zone of the second clock (the sale's `cronHPATimeZone`).
    pub time_zone: String,
    pub timeline: Vec<PlanPhase>,
    pub clusters: Vec<PlanCluster>,
    /// The degradation flags' windows and breakers, one line each (the same in every cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// One phase of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPhase {
    pub phase: Phase,
    /// When it begins (none for Scheduled, which has no start).
    pub from: Option<Timestamp>,
    /// The same instant in `timeZone`.
    pub from_local: Option<String>,
    /// Whether the sale is in this phase at `now`.
    pub current: bool,
}

/// What the sale does in one cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanCluster {
    pub name: String,
    /// Whether live baselines were read for this cluster (`--kubeconfig`).
    pub baselines_read: bool,
    pub workloads: Vec<PlanWorkload>,
    pub spot_drain: Option<PlanDrain>,
    pub warmups: Vec<PlanWarmup>,
}

/// One workload's changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanWorkload {
    pub kind: String,
    pub name: String,
    /// `Kind namespace/name` as the levers name it; none when the levers refuse it.
    pub target: Option<String>,
    /// Why the levers leave it unchanged in every phase.
    pub refused: Option<String>,
    pub baseline: Baseline,
    pub peak: i32,
    pub mode: ScaleMode,
    /// The container whose probe timings change first, when the sale sets probes.
    pub probes_container: Option<String>,
}

/// The spot drain agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDrain {
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub metadata_endpoint: String,
    pub poll_interval: kube::core::Duration,
    pub metadata_token: MetadataTokenMode,
}

/// One cache warm-up Job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanWarmup {
    pub name: String,
    pub required: bool,
    /// The phase the sale is in when the Job is created.
    pub phase: Phase,
    /// The Job's name (its hash is computed when it is created).
    pub job: String,
    pub due_at: Timestamp,
    /// How long before the window start, for people (`1h 30m`).
    pub lead: String,
}

/// The plan for `sale` as seen from `now`: the timeline, then every cluster's actions.
pub fn build(sale: &FlashSale, now: Timestamp, live: &Live) -> anyhow::Result<Plan> {
    let schedule = Schedule::from_spec(&sale.spec)?;
    let zone_name = &sale.spec.cron_hpa_time_zone;
    let zone = TimeZone::get(zone_name).with_context(|| format!("unknown time zone {zone_name:?}"))?;
    let position = timeline::position(&schedule, sale.spec.suspend, false, now);
    let ns = sale.metadata.namespace.as_deref().unwrap_or("default");
    let name = sale.metadata.name.as_deref().unwrap_or("<unnamed>");
    let rows = [
        (Phase::Scheduled, None),
        (Phase::Preparing, Some(schedule.prepare_at)),
        (Phase::Active, Some(schedule.start)),
        (Phase::CoolingDown, Some(schedule.end)),
        (Phase::Restoring, Some(schedule.restore_at)),
    ];
    let timeline = rows
        .into_iter()
        .map(|(phase, from)| PlanPhase {
            phase,
            from,
            from_local: from.map(|t| t.to_zoned(zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string()),
            current: phase == position.phase,
        })
        .collect();
    let cluster_names: Vec<String> = if sale.spec.clusters.is_empty() {
        vec![clusters::LOCAL.to_owned()]
    } else {
        sale.spec.clusters.iter().map(|c| c.name.clone()).collect()
    };
    let spot_drain = sale.spec.spot_drain.as_ref().filter(|d| d.enabled).map(|d| PlanDrain {
        node_selector: d.node_selector.clone(),
        metadata_endpoint: d.metadata_endpoint.clone(),
        poll_interval: d.poll_interval,
        metadata_token: d.metadata_token,
    });
    let warmups: Vec<PlanWarmup> = sale
        .spec
        .cache_warm
        .iter()
        .map(|warm| {
            let due_at = warmup::due_at(&schedule, warm);
            PlanWarmup {
                name: warm.name.clone(),
                required: warm.required,
                phase: timeline::position(&schedule, false, false, due_at).phase,
                job: format!("{ns}/{name}-warm-{}-<hash>", warm.name),
                due_at,
                lead: warmup::lead(warm),
            }
        })
        .collect();
    let clusters = cluster_names
        .into_iter()
        .map(|cluster| {
            let baselines = live.iter().find(|(n, _)| *n == cluster).map(|(_, b)| b.as_slice());
            let workloads = sale
                .spec
                .workloads
                .iter()
                .enumerate()
                .map(|(wi, w)| {
                    let (target, refused) = match prescale::Target::confined(w, wi, ns) {
                        Ok(target) => (Some(target.display()), None),
                        Err(refusal) => (None, Some(refusal)),
                    };
                    PlanWorkload {
                        kind: w.target.kind.clone(),
                        name: w.target.name.clone(),
                        target,
                        refused,
                        baseline: baselines.and_then(|b| b.get(wi)).cloned().unwrap_or(Baseline::Unknown),
                        peak: w.scale.peak,
                        mode: w.scale.mode,
                        probes_container: w
                            .probes
                            .as_ref()
                            .map(|p| p.container.clone().unwrap_or_else(|| "the first container".into())),
                    }
                })
                .collect();
            PlanCluster {
                name: cluster,
                baselines_read: baselines.is_some(),
                workloads,
                spot_drain: spot_drain.clone(),
                warmups: warmups.clone(),
            }
        })
        .collect();
    let flags = match &sale.spec.degradation {
        Some(degradation) => levers::flags::plan(degradation, ns, &schedule),
        None => vec![],
    };
    Ok(Plan {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        now,
        phase: position.phase,
        time_zone: zone_name.clone(),
        timeline,
        clusters,
        flags,
    })
}

/// The plan for `sale` as seen from `now`, as text.
pub fn render(sale: &FlashSale, now: Timestamp, live: &Live) -> anyhow::Result<String> {
    Ok(render_text(&build(sale, now, live)?)?)
}

/// A plan as text: the timeline in UTC and in the sale's zone, then every phase's actions.
pub fn render_text(plan: &Plan) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    let (ns, zone_name) = (&plan.namespace, &plan.time_zone);
    writeln!(out, "FlashSale {ns}/{}: now {} ({})", plan.name, plan.now, plan.phase)?;
    writeln!(out)?;
    writeln!(out, "{:<12} {:<22} FROM ({zone_name})", "PHASE", "FROM (UTC)")?;
    for row in &plan.timeline {
        let utc = row.from.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_else(|| "-".into());
        let local = row.from_local.as_deref().unwrap_or("-");
        let marker = if row.current { "*" } else { " " };
        writeln!(out, "{marker}{:<11} {:<22} {}", row.phase, utc, local)?;
    }
    writeln!(out)?;
    for cluster in &plan.clusters {
        let note = if cluster.baselines_read { "" } else { " (baselines not read; pass --kubeconfig to read them)" };
        writeln!(out, "cluster {}:{note}", cluster.name)?;
        for w in &cluster.workloads {
            let what = match (&w.target, &w.refused) {
                (Some(target), None) => target,
                (_, refusal) => {
                    let refusal = refusal.as_deref().unwrap_or_default();
                    writeln!(out, "  {} {}: refused, left unchanged in every phase: {refusal}", w.kind, w.name)?;
                    continue;
                }
            };
            let from = match &w.baseline {
                Baseline::Replicas(r) => r.to_string(),
                Baseline::Unknown => "current".to_owned(),
                Baseline::Unavailable(_) => "?".to_owned(),
            };
            let mode = match w.mode {
                ScaleMode::Replicas => "Replicas",
                ScaleMode::Auto => {
                    "Auto: its HPA's bounds if one targets it, else CronHPA where installed, else replicas"
                }
                ScaleMode::Hpa => "HPA: minReplicas to peak, maxReplicas at least peak",
                ScaleMode::CronHpa => "CronHPA: run-once jobs at the Preparing and restore boundaries",
            };
            writeln!(out, "  {what}")?;
            if let Baseline::Unavailable(why) = &w.baseline {
                writeln!(out, "    preflight:  {why}")?;
            }
            if let Some(container) = &w.probes_container {
                writeln!(
                    out,
                    "    Preparing:  probe timings of {container} first; scale-up once that rollout completes"
                )?;
            }
            writeln!(out, "    Preparing:  replicas {from} -> {} ({mode})", w.peak)?;
            writeln!(out, "    Active:     hold {} replicas", w.peak)?;
            writeln!(
                out,
                "    Restoring:  replicas (or HPA bounds) back to {from}, probe timings back, bookkeeping removed"
            )?;
        }
        if let Some(drain) = &cluster.spot_drain {
            let selector: Vec<String> = drain.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(out, "  spot drain")?;
            writeln!(
                out,
                "    Preparing:  drain agents on nodes matching {} (poll {} every {}, token {:?})",
                selector.join(","),
                drain.metadata_endpoint,
                drain.poll_interval,
                drain.metadata_token
            )?;
            writeln!(out, "    Restoring:  agents removed (unless another sale still uses them)")?;
        }
        for warm in &cluster.warmups {
            let kind = if warm.required { "required: the sale is not Ready until it succeeds" } else { "optional" };
            writeln!(out, "  cache warm-up {} ({kind})", warm.name)?;
            writeln!(
                out,
                "    {}:{:<w$}Job {} created at {} ({} before the start)",
                warm.phase,
                "",
                warm.job,
                warm.due_at,
                warm.lead,
                w = 11usize.saturating_sub(warm.phase.as_str().len()),
            )?;
            writeln!(out, "    Restoring:  the Job and its pods deleted")?;
        }
    }
    if !plan.flags.is_empty() {
        writeln!(out)?;
        for line in &plan.flags {
            writeln!(out, "{line}")?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_shows_both_clocks_every_cluster_and_live_baselines() {
        let sale: FlashSale = serde_saphyr::from_str(
            r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: double-11, namespace: shop}
spec:
  window: {start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}
  clusters:
  - {name: hangzhou, kubeconfigSecretRef: {name: a}}
  - {name: beijing, kubeconfigSecretRef: {name: b}}
  workloads:
  - ref: {kind: Deployment, name: web}
    scale: {peak: 100}
"#,
        )
        .unwrap();
        let live = vec![
            ("hangzhou".to_owned(), vec![Baseline::Replicas(3)]),
            ("beijing".to_owned(), vec![Baseline::Unavailable("cluster unreachable".into())]),
        ];
        let text = render(&sale, "2026-11-10T15:45:00Z".parse().unwrap(), &live).unwrap();
        assert!(text.contains("now 2026-11-10T15:45:00Z (Preparing)"), "{text}");
        assert!(text.contains("*Preparing   2026-11-10T15:30:00Z   2026-11-10 23:30:00 CST"), "{text}");
        assert!(
            text.contains("cluster hangzhou:\n  Deployment shop/web\n    Preparing:  replicas 3 -> 100 (Auto: "),
            "{text}"
        );
        assert!(text.contains("cluster beijing:") && text.contains("preflight:  cluster unreachable"), "{text}");
        assert!(!text.contains("spot drain") && !text.contains("warm-up"), "{text}");
    }

    /// A sale stored before the admission rules (or read from a file `read` did not check) shows
    /// the levers' own refusal: a workload elsewhere or of another kind is never acted on.
    #[test]
    fn plan_shows_a_target_outside_the_namespace_or_of_another_kind_as_refused() {
        let sale: FlashSale = serde_saphyr::from_str(
            r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: t, namespace: shop}
spec:
  window: {start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}
  workloads:
  - ref: {kind: Deployment, name: dns, namespace: kube-system}
    scale: {peak: 1}
  - ref: {kind: DaemonSet, name: agent}
    scale: {peak: 1}
  - ref: {kind: Deployment, name: web, namespace: shop}
    scale: {peak: 4}
"#,
        )
        .unwrap();
        let text = render(&sale, "2026-11-10T12:00:00Z".parse().unwrap(), &vec![]).unwrap();
        assert!(
            text.contains("  Deployment dns: refused, left unchanged in every phase: spec.workloads[0].ref.namespace: Deployment kube-system/dns is outside the sale's namespace shop"),
            "{text}"
        );
        assert!(text.contains("  DaemonSet agent: refused, left unchanged in every phase: spec.workloads[1].ref: apps/v1 DaemonSet is not a kind"), "{text}");
        assert!(text.contains("  Deployment shop/web\n"), "{text}");
        assert!(!text.contains("kube-system/dns\n"), "{text}");
    }

    #[test]
    fn plan_lists_drain_agents_and_flags_with_their_times() {
        let sale: FlashSale = serde_saphyr::from_str(include_str!("../examples/double-11.yaml")).unwrap();
        let text = render(&sale, "2026-11-10T12:00:00Z".parse().unwrap(), &vec![]).unwrap();
        assert!(
            text.contains("drain agents on nodes matching node.kubernetes.io/instance-lifecycle=spot (poll http://100.100.100.200 every 2s"),
            "{text}"
        );
        assert!(text.contains("recommendations: off during Preparing, Active (2026-11-10T15:30:00Z"), "{text}");
        assert!(text.contains("reviews: off while histogram_quantile(0.99"), "{text}");
    }

    /// `plan -o json|yaml` is the same plan as the text, as a structure with stable names.
    #[test]
    fn plan_as_a_document_carries_what_the_text_shows() {
        let sale: FlashSale = serde_saphyr::from_str(include_str!("../examples/double-11.yaml")).unwrap();
        let live = vec![(clusters::LOCAL.to_owned(), vec![Baseline::Replicas(3), Baseline::Unknown])];
        let plan = build(&sale, "2026-11-10T15:45:00Z".parse().unwrap(), &live).unwrap();
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["phase"], "Preparing");
        assert_eq!(json["timeline"][1]["phase"], "Preparing");
        assert_eq!(json["timeline"][1]["from"], "2026-11-10T15:30:00Z");
        assert_eq!(json["timeline"][1]["current"], true);
        let cluster = &json["clusters"][0];
        assert_eq!(cluster["workloads"][0]["baseline"], serde_json::json!({"replicas": 3}));
        assert!(cluster["workloads"][0]["peak"].as_i64().unwrap() > 0);
        assert_eq!(cluster["spotDrain"]["pollInterval"], "2s");
        assert!(json["flags"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("recommendations")));
        let back: Plan = serde_saphyr::from_str(&serde_saphyr::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        assert_eq!(render_text(&back).unwrap(), render(&sale, plan.now, &live).unwrap());
    }

    #[test]
    fn plan_shows_when_each_warm_up_runs() {
        let sale: FlashSale = serde_saphyr::from_str(
            r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: double-11, namespace: shop}
spec:
  window: {start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}
  workloads:
  - ref: {kind: Deployment, name: web}
    scale: {peak: 100}
  cacheWarm:
  - name: product-cache
    startBefore: 1h
    template: {spec: {template: {spec: {containers: [{name: warm, image: warm}]}}}}
"#,
        )
        .unwrap();
        let text = render(&sale, "2026-11-10T12:00:00Z".parse().unwrap(), &vec![]).unwrap();
        assert!(
            text.contains("  cache warm-up product-cache (required: the sale is not Ready until it succeeds)\n    Scheduled:  Job shop/double-11-warm-product-cache-<hash> created at 2026-11-10T15:00:00Z (1h before the start)"),
            "{text}"
        );
        assert!(!text.contains("cacheWarm"), "{text}");
    }
}
