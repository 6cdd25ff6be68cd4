//! `flashsale-operator plan`: the timeline and what each phase does, per cluster and lever, for
//! change review. Writes nothing; with a kubeconfig it reads live workloads to show baselines.

use anyhow::Context as _;
use jiff::{Timestamp, tz::TimeZone};
use kube::Client;
use std::{fmt::Write as _, io::Read, path::Path};

use crate::{
    api::{FlashSale, Phase, ScaleMode},
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
#[derive(Clone, Debug, PartialEq)]
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
    let clusters = Clusters::new(client, std::sync::Arc::new(crate::metrics::Metrics::default()), false, None);
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

/// The plan for `sale` as seen from `now`: the timeline, then every phase's actions.
pub fn render(sale: &FlashSale, now: Timestamp, live: &Live) -> anyhow::Result<String> {
    let schedule = Schedule::from_spec(&sale.spec)?;
    let zone_name = &sale.spec.cron_hpa_time_zone;
    let zone = TimeZone::get(zone_name).with_context(|| format!("unknown time zone {zone_name:?}"))?;
    let position = timeline::position(&schedule, sale.spec.suspend, false, now);
    let mut out = String::new();
    let ns = sale.metadata.namespace.as_deref().unwrap_or("default");
    let name = sale.metadata.name.as_deref().unwrap_or("<unnamed>");
    writeln!(out, "FlashSale {ns}/{name}: now {now} ({})", position.phase)?;
    writeln!(out)?;
    writeln!(out, "{:<12} {:<22} FROM ({zone_name})", "PHASE", "FROM (UTC)")?;
    let rows = [
        (Phase::Scheduled, None),
        (Phase::Preparing, Some(schedule.prepare_at)),
        (Phase::Active, Some(schedule.start)),
        (Phase::CoolingDown, Some(schedule.end)),
        (Phase::Restoring, Some(schedule.restore_at)),
    ];
    for (phase, from) in rows {
        let (utc, local) = match from {
            Some(t) => (
                t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                t.to_zoned(zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
            ),
            None => ("-".into(), "-".into()),
        };
        let marker = if phase == position.phase { "*" } else { " " };
        writeln!(out, "{marker}{:<11} {:<22} {}", phase, utc, local)?;
    }
    writeln!(out)?;
    let cluster_names: Vec<String> = if sale.spec.clusters.is_empty() {
        vec![clusters::LOCAL.to_owned()]
    } else {
        sale.spec.clusters.iter().map(|c| c.name.clone()).collect()
    };
    for cluster in &cluster_names {
        let baselines = live.iter().find(|(n, _)| n == cluster).map(|(_, b)| b.as_slice());
        let note = if baselines.is_none() { " (baselines not read; pass --kubeconfig to read them)" } else { "" };
        writeln!(out, "cluster {cluster}:{note}")?;
        for (wi, w) in sale.spec.workloads.iter().enumerate() {
            let what = match prescale::Target::confined(w, wi, ns) {
                Ok(target) => target.display(),
                Err(refusal) => {
                    writeln!(
                        out,
                        "  {} {}: refused, left unchanged in every phase: {refusal}",
                        w.target.kind, w.target.name
                    )?;
                    continue;
                }
            };
            let baseline = baselines.and_then(|b| b.get(wi)).cloned().unwrap_or(Baseline::Unknown);
            let from = match &baseline {
                Baseline::Replicas(r) => r.to_string(),
                Baseline::Unknown => "current".to_owned(),
                Baseline::Unavailable(_) => "?".to_owned(),
            };
            let mode = match w.scale.mode {
                ScaleMode::Replicas => "Replicas",
                ScaleMode::Auto => {
                    "Auto: its HPA's bounds if one targets it, else CronHPA where installed, else replicas"
                }
                ScaleMode::Hpa => "HPA: minReplicas to peak, maxReplicas at least peak",
                ScaleMode::CronHpa => "CronHPA: run-once jobs at the Preparing and restore boundaries",
            };
            writeln!(out, "  {what}")?;
            if let Baseline::Unavailable(why) = &baseline {
                writeln!(out, "    preflight:  {why}")?;
            }
            if let Some(probes) = &w.probes {
                let container = probes.container.as_deref().unwrap_or("the first container");
                writeln!(
                    out,
                    "    Preparing:  probe timings of {container} first; scale-up once that rollout completes"
                )?;
            }
            writeln!(out, "    Preparing:  replicas {from} -> {} ({mode})", w.scale.peak)?;
            writeln!(out, "    Active:     hold {} replicas", w.scale.peak)?;
            writeln!(
                out,
                "    Restoring:  replicas (or HPA bounds) back to {from}, probe timings back, bookkeeping removed"
            )?;
        }
        spot_drain(&mut out, sale)?;
        for warm in &sale.spec.cache_warm {
            let due = warmup::due_at(&schedule, warm);
            let during = timeline::position(&schedule, false, false, due).phase;
            let kind = if warm.required { "required: the sale is not Ready until it succeeds" } else { "optional" };
            writeln!(out, "  cache warm-up {} ({kind})", warm.name)?;
            writeln!(
                out,
                "    {during}:{:<w$}Job {ns}/{name}-warm-{}-<hash> created at {due} ({} before the start)",
                "",
                warm.name,
                warmup::lead(warm),
                w = 11usize.saturating_sub(during.as_str().len()),
            )?;
            writeln!(out, "    Restoring:  the Job and its pods deleted")?;
        }
    }
    if let Some(degradation) = &sale.spec.degradation {
        writeln!(out)?;
        for line in levers::flags::plan(degradation, ns, &schedule) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(out)
}

/// The spot drain lever of one cluster.
fn spot_drain(out: &mut String, sale: &FlashSale) -> std::fmt::Result {
    if let Some(drain) = sale.spec.spot_drain.as_ref().filter(|d| d.enabled) {
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
    Ok(())
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
