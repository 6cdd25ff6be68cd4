//! `flashsale-operator status`: the answer at 23:55, one screen per sale, from what the sales'
//! status already says. It reads FlashSales and nothing else, with the caller's own kubeconfig,
//! and writes nothing.
//!
//! [`report`] turns (sales, now) into a [`Document`], the stable structure `-o json|yaml`
//! prints; [`render`] prints the same document as text. Both are pure.

use crate::api::names::ABANDON_ANNOTATION;
use jiff::Timestamp;
use kube::{
    Api, Client, Resource as _,
    api::{DynamicObject, ListParams},
    discovery::ApiResource,
};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use thiserror::Error;

use crate::{
    api::{DrainAgentsStatus, FlagStatus, FlashSale, Phase, WarmupStatus},
    status::{self, at_peak, peak_of},
    timeline::{self, Schedule},
};

/// Which sales to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One sale.
    One { namespace: String, name: String },
    /// Every sale of a namespace.
    Namespace(String),
    /// Every sale the caller may list.
    All,
}

/// Why the sales could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("FlashSale {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("the FlashSale CRD (flashsales.flashsale.dev) is not installed in this cluster")]
    NoCrd,
    #[error("cannot read FlashSales: {0}")]
    Api(#[source] kube::Error),
}

/// A sale as read: the typed object, or why it could not be decoded (one malformed object does
/// not hide the others).
#[derive(Clone, Debug)]
pub enum Read {
    Sale(Box<FlashSale>),
    Undecodable { namespace: String, name: String, error: String },
}

/// Reads the sales in `scope`. Read-only: `get` or `list` of FlashSales, nothing else.
pub async fn read(client: Client, scope: &Scope) -> Result<Vec<Read>, ReadError> {
    let resource = ApiResource::erase::<FlashSale>(&());
    let api = |ns: &str| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
    let objects = match scope {
        Scope::One { namespace, name } => match api(namespace).get_opt(name).await {
            Ok(Some(object)) => vec![object],
            Ok(None) => return Err(ReadError::NotFound { namespace: namespace.clone(), name: name.clone() }),
            Err(err) => return Err(classify(err)),
        },
        Scope::Namespace(ns) => api(ns).list(&ListParams::default()).await.map_err(classify)?.items,
        Scope::All => {
            Api::<DynamicObject>::all_with(client.clone(), &resource)
                .list(&ListParams::default())
                .await
                .map_err(classify)?
                .items
        }
    };
    Ok(objects.into_iter().map(decode).collect())
}

fn classify(err: kube::Error) -> ReadError {
    match &err {
        kube::Error::Api(status) if status.code == 404 => ReadError::NoCrd,
        _ => ReadError::Api(err),
    }
}

fn decode(object: DynamicObject) -> Read {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    match serde_json::to_value(&object).and_then(serde_json::from_value::<FlashSale>) {
        Ok(sale) => Read::Sale(Box::new(sale)),
        Err(err) => Read::Undecodable { namespace, name, error: err.to_string() },
    }
}

/// What `status -o json|yaml` prints: every sale shown, as of `now`. Field names are stable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub now: Timestamp,
    pub sales: Vec<SaleReport>,
}

/// One sale at a glance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaleReport {
    pub namespace: String,
    pub name: String,
    /// The phase the status shows (`None` before the operator first wrote it).
    pub phase: Option<Phase>,
    /// The phase the clock puts the sale in from its spec, when it differs from `phase`
    /// (the operator is behind, stopped, or the spec cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_phase: Option<Phase>,
    /// The phase that follows `phase` at `nextTransitionTime`.
    pub next_phase: Option<Phase>,
    pub next_transition_time: Option<Timestamp>,
    /// Seconds from `now` to `nextTransitionTime`; negative when it has passed.
    pub seconds_to_next_transition: Option<i64>,
    /// The window, UTC.
    pub window_start: Option<Timestamp>,
    pub window_end: Option<Timestamp>,
    pub ready: Verdict,
    /// The Stalled condition's message when the spec cannot be acted on.
    pub stalled: Option<String>,
    /// Whether the status describes the current spec (its observedGeneration is the sale's
    /// generation).
    pub up_to_date: bool,
    /// Clusters ready / clusters, as the status counts them.
    pub clusters_ready: Option<String>,
    /// Workloads at peak / workloads, over every cluster.
    pub workloads_at_peak: Option<String>,
    pub clusters: Vec<ClusterReport>,
    /// What keeps the sale from being Ready, one item each.
    pub blocking: Vec<String>,
    /// What on-call does next, for the Ready reason.
    pub next_action: String,
}

/// The `Ready` condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// `True`, `False`, or `Unknown` when the condition is not written yet.
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// One cluster of a sale.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub name: String,
    pub reachable: bool,
    /// The cluster's problems (or why it cannot be reached), uncapped.
    pub message: Option<String>,
    pub workloads: WorkloadsReport,
    pub drain_agents: Option<DrainAgentsStatus>,
    pub warmups: Vec<WarmupStatus>,
    pub flags: Vec<FlagStatus>,
}

/// The workloads of one cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadsReport {
    pub at_peak: usize,
    pub total: usize,
    /// Workloads below peak while the sale holds it (Preparing, Active, CoolingDown).
    pub short: Vec<ShortWorkload>,
}

/// A workload below its peak.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShortWorkload {
    /// `Kind namespace/name`.
    pub name: String,
    pub ready: i32,
    pub peak: i32,
    /// `peak - ready`.
    pub short: i32,
}

/// The document for `sales` as of `now`.
pub fn report(sales: &[Read], now: Timestamp) -> Document {
    Document { now, sales: sales.iter().map(|s| sale_report(s, now)).collect() }
}

fn sale_report(read: &Read, now: Timestamp) -> SaleReport {
    let sale = match read {
        Read::Sale(sale) => sale,
        Read::Undecodable { namespace, name, error } => return undecodable(namespace, name, error),
    };
    let st = sale.status.clone().unwrap_or_default();
    let condition = |type_: &str| st.conditions.iter().find(|c| c.type_ == type_);
    let ready = match condition(status::READY) {
        Some(c) => Verdict { status: c.status.clone(), reason: c.reason.clone(), message: c.message.clone() },
        None => Verdict {
            status: "Unknown".into(),
            reason: "NoStatus".into(),
            message: "The operator has not written this sale's status yet".into(),
        },
    };
    let stalled = condition(status::STALLED).filter(|c| c.status == "True").map(|c| c.message.clone());
    let schedule = Schedule::from_spec(&sale.spec).ok();
    let clock = schedule.map(|s| timeline::position(&s, sale.spec.suspend, false, now).phase);
    // After the restore boundary the clock cannot tell Restoring from Completed; only the
    // operator's pass can.
    let clock_phase = clock.filter(|c| {
        let behind = st.phase != Some(*c);
        let after_restore = *c == Phase::Restoring && st.phase == Some(Phase::Completed);
        behind && !after_restore
    });
    let next_transition_time = st.next_transition_time.as_ref().map(|t| t.0);
    let holding = st.phase.is_some_and(timeline::holds_changes);
    let clusters: Vec<ClusterReport> = st
        .clusters
        .iter()
        .map(|c| {
            let short = c
                .workloads
                .iter()
                .filter(|_| holding)
                .filter_map(|w| {
                    let peak = peak_of(sale, &w.name)?;
                    let ready = w.ready_replicas.unwrap_or(0);
                    (ready < peak).then(|| ShortWorkload { name: w.name.clone(), ready, peak, short: peak - ready })
                })
                .collect();
            ClusterReport {
                name: c.name.clone(),
                reachable: c.reachable,
                message: c.message.clone(),
                workloads: WorkloadsReport {
                    at_peak: c.workloads.iter().filter(|w| at_peak(sale, c, w)).count(),
                    total: c.workloads.len(),
                    short,
                },
                drain_agents: c.drain_agents.clone(),
                warmups: c.warmups.clone(),
                flags: c.flags.clone(),
            }
        })
        .collect();
    let blocking = blocking(&st, &ready, stalled.as_deref(), &clusters);
    let mut report = SaleReport {
        namespace: sale.meta().namespace.clone().unwrap_or_default(),
        name: sale.meta().name.clone().unwrap_or_default(),
        phase: st.phase,
        clock_phase,
        next_phase: st.phase.and_then(following),
        next_transition_time,
        seconds_to_next_transition: next_transition_time.map(|t| t.duration_since(now).as_secs()),
        window_start: schedule.map(|s| s.start),
        window_end: schedule.map(|s| s.end),
        ready,
        stalled,
        up_to_date: st.observed_generation.is_some() && st.observed_generation == sale.meta().generation,
        clusters_ready: st.clusters_ready.clone(),
        workloads_at_peak: st.workloads_at_peak.clone(),
        clusters,
        blocking,
        next_action: String::new(),
    };
    report.next_action = next_action(&report, schedule);
    report
}

fn undecodable(namespace: &str, name: &str, error: &str) -> SaleReport {
    let message = format!("the stored object does not decode as a FlashSale: {error}");
    SaleReport {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        phase: None,
        clock_phase: None,
        next_phase: None,
        next_transition_time: None,
        seconds_to_next_transition: None,
        window_start: None,
        window_end: None,
        ready: Verdict { status: "Unknown".into(), reason: "Undecodable".into(), message: message.clone() },
        stalled: None,
        up_to_date: false,
        clusters_ready: None,
        workloads_at_peak: None,
        clusters: vec![],
        blocking: vec![message],
        next_action: format!(
            "read it with `kubectl get fs {name} -n {namespace} -o yaml` and fix or re-apply it with the current CRD"
        ),
    }
}

/// The phase after `phase` by the clock.
fn following(phase: Phase) -> Option<Phase> {
    match phase {
        Phase::Scheduled => Some(Phase::Preparing),
        Phase::Preparing => Some(Phase::Active),
        Phase::Active => Some(Phase::CoolingDown),
        Phase::CoolingDown => Some(Phase::Restoring),
        Phase::Restoring => Some(Phase::Completed),
        Phase::Completed | Phase::Suspended => None,
    }
}

/// The lever conditions, in the order on-call reads them.
const LEVERS: [&str; 5] = [
    status::PRESCALED,
    status::PROBES_APPLIED,
    status::DRAIN_AGENTS_READY,
    status::CACHE_WARMED,
    status::FLAGS_PUBLISHED,
];

/// What keeps a not-Ready sale from being Ready: the spec when it is stalled; otherwise every
/// cluster that cannot be reached or reports problems, and, while the sale holds its changes,
/// every lever not yet in place.
fn blocking(
    st: &crate::api::FlashSaleStatus,
    ready: &Verdict,
    stalled: Option<&str>,
    clusters: &[ClusterReport],
) -> Vec<String> {
    if ready.status == "True" {
        return vec![];
    }
    if let Some(message) = stalled {
        return vec![format!("spec: {message}")];
    }
    let mut out = vec![];
    for c in clusters {
        match (&c.message, c.reachable) {
            (Some(message), false) => out.push(format!("cluster {} unreachable: {message}", c.name)),
            (Some(message), true) => out.push(format!("cluster {}: {message}", c.name)),
            (None, _) => {}
        }
    }
    if st.phase.is_some_and(timeline::holds_changes) {
        // The workloads short of peak say more than the Prescaled condition does.
        let mut short = false;
        for c in clusters {
            for w in &c.workloads.short {
                short = true;
                out.push(format!(
                    "cluster {}: {} has {}/{} replicas ready ({} short)",
                    c.name, w.name, w.ready, w.peak, w.short
                ));
            }
        }
        for type_ in LEVERS.iter().filter(|t| !short || **t != status::PRESCALED) {
            if let Some(c) = st.conditions.iter().find(|c| c.type_ == *type_ && c.status == "False") {
                out.push(format!("{type_} ({}): {}", c.reason, c.message));
            }
        }
    }
    if out.is_empty() && ready.status == "False" {
        out.push(format!("{}: {}", ready.reason, ready.message));
    }
    out
}

/// A short next step for on-call, by the Ready reason.
fn next_action(r: &SaleReport, schedule: Option<Schedule>) -> String {
    let fs = format!("kubectl describe fs {} -n {}", r.name, r.namespace);
    if !r.up_to_date && r.ready.reason != "NoStatus" && r.ready.reason != "Undecodable" {
        return format!(
            "the status is for an older spec: check that the operator is running (its logs), then run this again; {fs}"
        );
    }
    let prepare_at = schedule.map(|s| s.prepare_at.to_string()).unwrap_or_else(|| "preparation".into());
    match r.ready.reason.as_str() {
        "NoStatus" => "check that the operator is running and watches this namespace (its logs)".into(),
        "InvalidSpec" => "fix the field the message names and re-apply; nothing is acted on until then".into(),
        "PreflightPassed" => format!("nothing to do; preparation starts at {prepare_at}"),
        "PreflightWarnings" => {
            format!("nothing blocks; review the warnings (PodDisruptionBudgets, capacity) before {prepare_at}")
        }
        "PreflightFailed" => format!(
            "fix each problem listed before {prepare_at} (missing workloads or rights, another sale holding a workload); preflight looks again within 5 minutes and at once when the sale changes"
        ),
        "Prepared" => "nothing to do: everything is in place".into(),
        "Preparing" => format!(
            "wait while the levers converge; a workload that stays short: `kubectl get pods -n {}` (pending pods, capacity)",
            r.namespace
        ),
        "NotReady" => format!(
            "the sale is live and short of peak: look at the workloads named (`kubectl get pods -n {}`: pending pods, node capacity); a manual scale-up is kept",
            r.namespace
        ),
        "Blocked" => "fix the problems listed; the sale carries on by itself once they are gone".into(),
        "WarmupFailed" => "fix the warm-up's template, or delete its failed Job to run it again".into(),
        "NotAllowed" => {
            "spec.spotDrain asks for what the installer does not allow: change it, or ask the installer to allow it (the flag the message names)".into()
        }
        "AgentRbacMissing" => {
            "install the chart (mode: remote) in the cluster named, for the drain agents' identity".into()
        }
        "FeatureFlagCRDMissing" => {
            "install the OpenFeature operator's FeatureFlag CRD in that cluster, or use degradation.target: ConfigMap".into()
        }
        "NotAFlagFile" => {
            "fix the ConfigMap's flags.flagd.json, or choose another degradation.configMapName before the sale".into()
        }
        "RestoreFailed" => "the flags could not be put back: read the message and fix the object it names".into(),
        "HeldByAnotherSale" | "AlreadyExists" => {
            "the flag object belongs to someone else: choose another degradation.configMapName".into()
        }
        "OriginalUnknown" => {
            "the flag file's recorded original is gone: read the message; the operator will not guess it".into()
        }
        "Restoring" | "Suspending" | "Deleting" => format!(
            "wait for the restore; if a cluster is gone for good, annotate the sale with {ABANDON_ANNOTATION}=<names> to release it"
        ),
        "Completed" => "nothing to do: the sale is over and everything is restored".into(),
        "Suspended" => "nothing to do: everything is restored; clear spec.suspend to run the sale again".into(),
        _ => format!("read the Ready message: {fs}"),
    }
}

/// `4m05s`, `2h03m`, `3d04h`: a countdown that fits a line.
fn countdown(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The document as text: one block per sale.
pub fn render(doc: &Document) -> String {
    let mut out = String::new();
    if doc.sales.is_empty() {
        out.push_str("No FlashSales found.\n");
        return out;
    }
    for (i, sale) in doc.sales.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = render_sale(&mut out, sale);
    }
    out
}

fn render_sale(out: &mut String, s: &SaleReport) -> std::fmt::Result {
    let phase = match (s.phase, s.ready.reason.as_str()) {
        (Some(phase), _) => phase.as_str(),
        (None, "NoStatus" | "Undecodable") => "(no status yet)",
        (None, _) => "(no phase)",
    };
    let next = match (s.next_phase, s.next_transition_time, s.seconds_to_next_transition) {
        (Some(next), Some(at), Some(secs)) if secs >= 0 => format!(", {next} in {} (at {at})", countdown(secs)),
        (Some(next), Some(at), Some(secs)) => {
            format!(", {next} was due {} ago (at {at}): is the operator running?", countdown(secs))
        }
        _ => String::new(),
    };
    writeln!(out, "{}/{}: {phase}{next}", s.namespace, s.name)?;
    if let Some(clock) = s.clock_phase {
        writeln!(out, "  clock     says {clock}: the status has not caught up (is the operator running?)")?;
    }
    if let (Some(start), Some(end)) = (s.window_start, s.window_end) {
        writeln!(out, "  window    {start} .. {end} (UTC)")?;
    }
    writeln!(out, "  Ready     {} ({}): {}", s.ready.status, s.ready.reason, s.ready.message)?;
    if let (Some(clusters), Some(workloads)) = (&s.clusters_ready, &s.workloads_at_peak) {
        writeln!(out, "  summary   clusters {clusters} ready, workloads {workloads} at peak")?;
    }
    for c in &s.clusters {
        let reach = if c.reachable { "" } else { " (UNREACHABLE; last known figures)" };
        writeln!(out, "  cluster {}{reach}", c.name)?;
        let short: Vec<String> = c
            .workloads
            .short
            .iter()
            .map(|w| format!("{} {}/{} ready ({} short)", w.name, w.ready, w.peak, w.short))
            .collect();
        let short = match (short.is_empty(), s.phase) {
            (false, _) => format!("; short: {}", short.join(", ")),
            // Before the sale, below peak is as it should be.
            (true, Some(Phase::Scheduled)) if c.workloads.at_peak < c.workloads.total => {
                " (the scale-up starts at Preparing)".to_owned()
            }
            (true, _) => String::new(),
        };
        writeln!(out, "    workloads {}/{} at peak{short}", c.workloads.at_peak, c.workloads.total)?;
        if let Some(agents) = &c.drain_agents {
            writeln!(out, "    agents    {}/{} ready", agents.ready, agents.desired)?;
        }
        if !c.warmups.is_empty() {
            let warmups: Vec<String> = c
                .warmups
                .iter()
                .map(|w| match &w.reason {
                    Some(reason) => format!("{} {} ({reason})", w.name, w.state),
                    None => format!("{} {}", w.name, w.state),
                })
                .collect();
            writeln!(out, "    warm-ups  {}", warmups.join(", "))?;
        }
        if !c.flags.is_empty() {
            let flags: Vec<String> = c
                .flags
                .iter()
                .map(|f| format!("{} {} ({})", f.name, if f.enabled { "on" } else { "off" }, f.reason))
                .collect();
            writeln!(out, "    flags     {}", flags.join(", "))?;
        }
    }
    for (i, b) in s.blocking.iter().enumerate() {
        writeln!(out, "  {:<9} {b}", if i == 0 { "blocks" } else { "" })?;
    }
    writeln!(out, "  next      {}", s.next_action)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClusterStatus, FlashSaleStatus, WorkloadStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sale(status: FlashSaleStatus) -> Read {
        let mut sale: FlashSale = serde_saphyr::from_str(
            r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: double-11, namespace: shop, generation: 2}
spec:
  window: {start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}
  clusters:
  - {name: hangzhou, kubeconfigSecretRef: {name: a}}
  - {name: beijing, kubeconfigSecretRef: {name: b}}
  workloads:
  - ref: {kind: Deployment, name: web}
    scale: {peak: 10}
  - ref: {kind: Deployment, name: cart}
    scale: {peak: 4}
"#,
        )
        .unwrap();
        sale.status = Some(status);
        Read::Sale(Box::new(sale))
    }

    fn workload(name: &str, ready: i32, target: i32) -> WorkloadStatus {
        WorkloadStatus {
            name: format!("Deployment shop/{name}"),
            ready_replicas: Some(ready),
            target_replicas: Some(target),
            ..Default::default()
        }
    }

    fn preparing(web_ready: i32) -> FlashSaleStatus {
        let ready = web_ready >= 10;
        let (reason, message) = if ready {
            ("Prepared", "Everything is in place; the sale starts at 2026-11-10T16:00:00Z".to_owned())
        } else {
            (
                "Preparing",
                format!("hangzhou: Deployment shop/web has {web_ready}/10 replicas ready ({} short)", 10 - web_ready),
            )
        };
        let cond = |t: &str, ok: bool, reason: &str, message: &str| {
            let mut c = status::condition(t, ok, reason, message);
            c.observed_generation = Some(2);
            c
        };
        FlashSaleStatus {
            phase: Some(Phase::Preparing),
            next_transition_time: Some(Time(ts("2026-11-10T16:00:00Z"))),
            observed_generation: Some(2),
            conditions: vec![
                cond(status::READY, ready, reason, &message),
                cond(status::PRESCALED, ready, if ready { "PeakReached" } else { "PeakNotReached" }, &message),
                cond(status::STALLED, false, "AsExpected", "The spec can be acted on"),
            ],
            clusters: vec![
                ClusterStatus {
                    name: "hangzhou".into(),
                    reachable: true,
                    workloads: vec![workload("web", web_ready, 10), workload("cart", 4, 4)],
                    drain_agents: Some(DrainAgentsStatus { desired: 2, ready: 2, ..Default::default() }),
                    warmups: vec![WarmupStatus {
                        name: "product-cache".into(),
                        state: "Succeeded".into(),
                        ..Default::default()
                    }],
                    flags: vec![FlagStatus {
                        name: "recommendations".into(),
                        enabled: false,
                        reason: "PhaseOff".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ClusterStatus {
                    name: "beijing".into(),
                    reachable: true,
                    workloads: vec![workload("web", 10, 10), workload("cart", 4, 4)],
                    ..Default::default()
                },
            ],
            window_start: Some(Time(ts("2026-11-10T16:00:00Z"))),
            window_end: Some(Time(ts("2026-11-10T18:00:00Z"))),
            clusters_ready: Some(if ready { "2/2" } else { "1/2" }.into()),
            workloads_at_peak: Some(if ready { "4/4" } else { "3/4" }.into()),
        }
    }

    #[test]
    fn a_ready_sale_shows_its_countdown_every_lever_and_nothing_to_do() {
        let doc = report(&[sale(preparing(10))], ts("2026-11-10T15:55:55Z"));
        let text = render(&doc);
        assert!(text.starts_with("shop/double-11: Preparing, Active in 4m05s (at 2026-11-10T16:00:00Z)\n"), "{text}");
        assert!(text.contains("  window    2026-11-10T16:00:00Z .. 2026-11-10T18:00:00Z (UTC)\n"), "{text}");
        assert!(text.contains("  Ready     True (Prepared): Everything is in place"), "{text}");
        assert!(text.contains("  summary   clusters 2/2 ready, workloads 4/4 at peak\n"), "{text}");
        assert!(text.contains("  cluster hangzhou\n    workloads 2/2 at peak\n    agents    2/2 ready\n"), "{text}");
        assert!(
            text.contains("    warm-ups  product-cache Succeeded\n    flags     recommendations off (PhaseOff)\n"),
            "{text}"
        );
        assert!(!text.contains("blocks"), "{text}");
        assert!(text.ends_with("  next      nothing to do: everything is in place\n"), "{text}");
        assert!(text.lines().count() <= 24, "one screen: {text}");
    }

    #[test]
    fn a_not_ready_sale_names_the_workload_short_by_how_much_and_what_blocks() {
        let doc = report(&[sale(preparing(3))], ts("2026-11-10T15:30:00Z"));
        let s = &doc.sales[0];
        assert_eq!(
            s.clusters[0].workloads.short,
            [ShortWorkload { name: "Deployment shop/web".into(), ready: 3, peak: 10, short: 7 }]
        );
        assert!(s.clusters[1].workloads.short.is_empty());
        let text = render(&doc);
        assert!(text.contains("Active in 30m00s"), "{text}");
        assert!(
            text.contains("    workloads 1/2 at peak; short: Deployment shop/web 3/10 ready (7 short)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  blocks    cluster hangzhou: Deployment shop/web has 3/10 replicas ready (7 short)\n  next"
            ),
            "{text}"
        );
        assert!(text.contains("  next      wait while the levers converge"), "{text}");
    }

    #[test]
    fn a_stalled_sale_says_which_field_to_fix() {
        let mut st = FlashSaleStatus {
            observed_generation: Some(2),
            conditions: vec![
                status::condition(status::READY, false, "InvalidSpec", "spec.cooldownAfter is out of range"),
                status::condition(status::STALLED, true, "InvalidSpec", "spec.cooldownAfter is out of range"),
            ],
            ..Default::default()
        };
        st.phase = None;
        let doc = report(&[sale(st)], ts("2026-11-10T12:00:00Z"));
        let s = &doc.sales[0];
        assert_eq!(s.stalled.as_deref(), Some("spec.cooldownAfter is out of range"));
        assert_eq!(s.blocking, ["spec: spec.cooldownAfter is out of range"]);
        let text = render(&doc);
        assert!(text.starts_with("shop/double-11: (no phase)\n"), "{text}");
        assert!(text.contains("  Ready     False (InvalidSpec): spec.cooldownAfter is out of range\n"), "{text}");
        assert!(text.contains("  next      fix the field the message names"), "{text}");
    }

    #[test]
    fn a_status_behind_the_clock_or_the_spec_says_so() {
        let mut st = preparing(10);
        st.observed_generation = Some(1);
        let doc = report(&[sale(st)], ts("2026-11-10T16:02:00Z"));
        let s = &doc.sales[0];
        assert_eq!(s.clock_phase, Some(Phase::Active));
        assert_eq!(s.seconds_to_next_transition, Some(-120));
        let text = render(&doc);
        assert!(
            text.contains("Active was due 2m00s ago (at 2026-11-10T16:00:00Z): is the operator running?"),
            "{text}"
        );
        assert!(text.contains("  clock     says Active"), "{text}");
        assert!(text.contains("  next      the status is for an older spec"), "{text}");
    }

    #[test]
    fn the_document_serializes_with_stable_field_names() {
        let doc = report(&[sale(preparing(3))], ts("2026-11-10T15:30:00Z"));
        let json = serde_json::to_value(&doc).unwrap();
        let s = &json["sales"][0];
        assert_eq!(json["now"], "2026-11-10T15:30:00Z");
        assert_eq!(s["phase"], "Preparing");
        assert_eq!(s["nextPhase"], "Active");
        assert_eq!(s["secondsToNextTransition"], 1800);
        assert_eq!(s["ready"]["status"], "False");
        assert_eq!(s["clusters"][0]["workloads"]["short"][0]["short"], 7);
        assert_eq!(s["clusters"][0]["drainAgents"]["ready"], 2);
        let back: Document = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
        let yaml = serde_saphyr::to_string(&doc).unwrap();
        let again: Document = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(again, doc);
    }

    #[test]
    fn a_sale_without_status_or_that_does_not_decode_is_shown_not_dropped() {
        let undecodable =
            Read::Undecodable { namespace: "shop".into(), name: "old".into(), error: "missing field `window`".into() };
        let doc = report(&[sale(FlashSaleStatus::default()), undecodable], ts("2026-11-10T12:00:00Z"));
        let text = render(&doc);
        assert!(text.contains("  Ready     Unknown (NoStatus)"), "{text}");
        assert!(text.contains("  next      check that the operator is running"), "{text}");
        assert!(text.contains("shop/old: (no status yet)\n"), "{text}");
        assert!(text.contains("missing field `window`"), "{text}");
        assert_eq!(render(&report(&[], ts("2026-11-10T12:00:00Z"))), "No FlashSales found.\n");
    }

    /// Every reason the operator gives Ready has its own next step, not the fallback.
    #[test]
    fn every_ready_reason_has_a_next_step() {
        let reasons = [
            "InvalidSpec",
            "PreflightPassed",
            "PreflightWarnings",
            "PreflightFailed",
            "Prepared",
            "Preparing",
            "Blocked",
            "NotReady",
            "Restoring",
            "Completed",
            "Suspended",
            "Suspending",
            "Deleting",
            "WarmupFailed",
            "NotAllowed",
            "AgentRbacMissing",
            "FeatureFlagCRDMissing",
            "NotAFlagFile",
            "HeldByAnotherSale",
            "AlreadyExists",
            "OriginalUnknown",
            "RestoreFailed",
        ];
        let base = report(&[sale(preparing(10))], ts("2026-11-10T15:55:00Z")).sales.remove(0);
        let fallback = {
            let mut r = base.clone();
            r.ready.reason = "SomethingNew".into();
            next_action(&r, None)
        };
        assert!(fallback.starts_with("read the Ready message: kubectl describe fs double-11 -n shop"), "{fallback}");
        let mut seen = std::collections::HashSet::new();
        for reason in reasons {
            let mut r = base.clone();
            r.ready.reason = reason.into();
            let action = next_action(&r, None);
            assert_ne!(action, fallback, "{reason} has no next step of its own");
            seen.insert(action);
        }
        assert!(seen.len() >= reasons.len() - 6, "next steps are specific, not one text for all: {seen:?}");
    }

    #[test]
    fn an_unreachable_cluster_shows_its_last_figures_and_blocks() {
        let mut st = preparing(10);
        st.clusters[1].reachable = false;
        st.clusters[1].message = Some("connection refused".into());
        st.conditions[0] = status::condition(status::READY, false, "NotReady", "cluster beijing: connection refused");
        st.conditions[0].observed_generation = Some(2);
        let doc = report(&[sale(st)], ts("2026-11-10T15:55:00Z"));
        let text = render(&doc);
        assert!(
            text.contains("  cluster beijing (UNREACHABLE; last known figures)\n    workloads 0/2 at peak\n"),
            "{text}"
        );
        assert!(text.contains("  blocks    cluster beijing unreachable: connection refused\n"), "{text}");
        assert!(text.contains("  next      the sale is live and short of peak"), "{text}");
    }

    #[test]
    fn before_the_sale_below_peak_is_not_short() {
        let mut st = preparing(3);
        st.phase = Some(Phase::Scheduled);
        st.conditions[0] =
            status::condition(status::READY, true, "PreflightPassed", "Preparation starts at 2026-11-10T15:30:00Z");
        st.conditions[0].observed_generation = Some(2);
        let doc = report(&[sale(st)], ts("2026-11-10T12:00:00Z"));
        assert!(doc.sales[0].clusters[0].workloads.short.is_empty());
        let text = render(&doc);
        assert!(
            text.contains("  cluster hangzhou\n    workloads 1/2 at peak (the scale-up starts at Preparing)\n"),
            "{text}"
        );
        assert!(text.contains("  next      nothing to do; preparation starts at 2026-11-10T15:30:00Z"), "{text}");
    }

    #[test]
    fn countdowns_fit_a_line() {
        assert_eq!(countdown(45), "45s");
        assert_eq!(countdown(245), "4m05s");
        assert_eq!(countdown(7380), "2h03m");
        assert_eq!(countdown(3 * 86400 + 4 * 3600 + 59), "3d04h");
        assert_eq!(countdown(-120), "2m00s");
    }
}
