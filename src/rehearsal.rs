//! Dress rehearsals: a sale's preparation played for real, days ahead, to learn how long peak
//! takes.
//!
//! A rehearsal is a second FlashSale, a copy of the rehearsed sale's spec with its own window
//! (Preparing at the chosen time, peak held for the chosen time, restored at once) and
//! `spec.rehearsal.of` naming the sale. Being a FlashSale, it runs through the same levers,
//! status, events, metrics and restore as the sale itself. Being a separate object, it leaves the
//! sale untouched: a GitOps user runs one with one command and nothing to change in Git (the copy
//! carries none of the sale's labels or annotations, so no GitOps tool tracks or prunes it).
//!
//! The sale wins: a rehearsal whose span (Preparing to restored) would overlap the sale's is
//! refused, and one the sale's span reaches while it holds (the sale was moved earlier) restores
//! at once.

use crate::api::names;
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::{
    api::{FlashSale, FlashSaleSpec, Phase, Rehearsal, RehearsedLever},
    timeline::Schedule,
};

/// The levers a rehearsal pulls unless told otherwise: everything but the degradation flags,
/// which switch features off for real shoppers (a rehearsal at 02:00 is still production).
pub const DEFAULT_LEVERS: [RehearsedLever; 4] =
    [RehearsedLever::Scale, RehearsedLever::Probes, RehearsedLever::Agents, RehearsedLever::Warmup];

/// The rehearsal's name: the sale's, suffixed (and cut to the 40 characters a sale's name may
/// have).
pub fn name(sale: &str) -> String {
    let wanted = format!("{sale}-rehearsal");
    if wanted.len() <= 40 { wanted } else { crate::levers::fit_name(&wanted, 40, crate::levers::fnv1a(&wanted)) }
}

/// Whether two spans, Preparing to restored, share an instant.
pub fn overlaps(a: &Schedule, b: &Schedule) -> bool {
    a.prepare_at < b.restore_at && b.prepare_at < a.restore_at
}

fn span(schedule: &Schedule) -> String {
    format!("{} to {}", schedule.prepare_at, schedule.restore_at)
}

/// Why the rehearsed sale's schedule refuses a rehearsal with `rehearsal`'s schedule, if it does.
pub fn refusal(sale_name: &str, sale: &Schedule, rehearsal: &Schedule) -> Option<String> {
    overlaps(sale, rehearsal).then(|| {
        format!(
            "the rehearsal ({}) overlaps sale {sale_name} ({}, from Preparing to the restore); the sale always comes first: rehearse before {} or after {}",
            span(rehearsal),
            span(sale),
            sale.prepare_at,
            sale.restore_at
        )
    })
}

/// A rehearsal of `sale` preparing at `at`, holding peak for `hold`, with `levers`.
pub fn rehearsal(
    sale: &FlashSale,
    at: Timestamp,
    hold: SignedDuration,
    levers: &[RehearsedLever],
) -> Result<FlashSale, String> {
    let name = sale.name_any();
    if let Some(of) = &sale.spec.rehearsal {
        return Err(format!("{name} is itself a rehearsal (of {}): rehearse the sale", of.of));
    }
    if hold <= SignedDuration::ZERO {
        return Err(format!("--hold must be positive, not {hold}"));
    }
    let sale_schedule = Schedule::from_spec(&sale.spec).map_err(|e| format!("sale {name}: {e}"))?;
    let prepare = sale_schedule.start.duration_since(sale_schedule.prepare_at);
    let start = at + prepare;
    let end = start + hold;
    let mut spec: FlashSaleSpec = sale.spec.clone();
    spec.window.start = start.to_string();
    spec.window.end = end.to_string();
    spec.cooldown_after = kube::core::Duration::from(std::time::Duration::ZERO);
    spec.suspend = false;
    let mut levers: Vec<RehearsedLever> = levers.to_vec();
    levers.push(RehearsedLever::Scale);
    levers.sort();
    levers.dedup();
    if !levers.contains(&RehearsedLever::Probes) {
        spec.workloads.iter_mut().for_each(|w| w.probes = None);
    }
    if !levers.contains(&RehearsedLever::Agents) {
        spec.spot_drain = None;
    }
    if !levers.contains(&RehearsedLever::Warmup) {
        spec.cache_warm.clear();
    }
    if !levers.contains(&RehearsedLever::Flags) {
        spec.degradation = None;
    }
    spec.rehearsal = Some(Rehearsal { of: name.clone(), levers });
    let schedule = Schedule::from_spec(&spec).map_err(|e| format!("the rehearsal: {e}"))?;
    if let Some(refused) = refusal(&name, &sale_schedule, &schedule) {
        return Err(refused);
    }
    let mut copy = FlashSale::new(&self::name(&name), spec);
    copy.metadata.namespace = sale.namespace();
    copy.metadata.labels = Some(BTreeMap::from([(names::REHEARSAL_OF.to_owned(), name)]));
    Ok(copy)
}

/// One workload's figures in a rehearsal report.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    pub cluster: String,
    pub workload: String,
    pub peak: Option<i32>,
    pub ready: Option<i32>,
    /// From Preparing (the scale-up request) to peak replicas ready, in seconds; `None` while
    /// (or if never) reached.
    pub time_to_peak_seconds: Option<f64>,
    /// Ready replicas at 25, 50, 75 and 100% of `prepareBefore`, as far as the hold came.
    pub ready_by_quarter: Vec<i32>,
    /// Why the slowest pods waited, as last seen before peak.
    pub waited_for: Option<String>,
    pub message: Option<String>,
}

/// One cluster's drain agents in a rehearsal report.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentsMeasured {
    pub cluster: String,
    pub desired: i32,
    /// From Preparing to every agent ready, in seconds.
    pub ready_seconds: Option<f64>,
}

/// One warm-up Job in a rehearsal report.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupMeasured {
    pub cluster: String,
    pub name: String,
    pub state: String,
    /// From the Job's start to its completion, in seconds.
    pub duration_seconds: Option<f64>,
    pub reason: Option<String>,
}

/// One degradation flag in a rehearsal report, as the hold published it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlagMeasured {
    pub cluster: String,
    pub name: String,
    pub enabled: bool,
    pub reason: String,
    /// From Preparing to the flag file read back with the sale's flags in place, in seconds;
    /// `None` if it never was.
    pub read_back_seconds: Option<f64>,
}

/// What a rehearsal learned, and the verdict for its sale.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub rehearsal: String,
    pub of: String,
    pub phase: Option<String>,
    pub prepare_before_seconds: f64,
    pub workloads: Vec<Measured>,
    pub agents: Vec<AgentsMeasured>,
    pub warmups: Vec<WarmupMeasured>,
    pub flags: Vec<FlagMeasured>,
    pub verdict: String,
}

/// The report of `rehearsal` from its status.
pub fn report(rehearsal: &FlashSale) -> Result<Report, String> {
    let name = rehearsal.name_any();
    let Some(of) = &rehearsal.spec.rehearsal else {
        return Err(format!("{name} is not a rehearsal (it has no spec.rehearsal)"));
    };
    let schedule = Schedule::from_spec(&rehearsal.spec).map_err(|e| format!("{name}: {e}"))?;
    let prepare_before = schedule.start.duration_since(schedule.prepare_at).as_secs_f64();
    let status = rehearsal.status.clone().unwrap_or_default();
    let mut workloads = vec![];
    for cluster in &status.clusters {
        for w in &cluster.workloads {
            // Peak from the spec: after the restore the status wants the baseline again.
            let namespace = rehearsal.namespace().unwrap_or_default();
            let peak = rehearsal
                .spec
                .workloads
                .iter()
                .find(|s| w.name == format!("{} {namespace}/{}", s.target.kind, s.target.name))
                .map(|s| s.scale.peak);
            let time_to_peak = w.time_to_peak_seconds.map(|s| s as f64);
            workloads.push(Measured {
                cluster: cluster.name.clone(),
                workload: w.name.clone(),
                peak: peak.or(w.target_replicas),
                ready: w.ready_replicas,
                time_to_peak_seconds: time_to_peak,
                ready_by_quarter: w.ready_by_quarter.clone(),
                waited_for: w.waited_for.clone(),
                message: w.message.clone(),
            });
        }
    }
    let agents = status
        .clusters
        .iter()
        .filter_map(|c| {
            let agents = c.drain_agents.as_ref()?;
            Some(AgentsMeasured {
                cluster: c.name.clone(),
                desired: agents.desired,
                ready_seconds: agents.ready_seconds.map(|s| s as f64),
            })
        })
        .collect();
    let warmups = status
        .clusters
        .iter()
        .flat_map(|c| c.warmups.iter().map(move |w| (c, w)))
        .map(|(c, w)| WarmupMeasured {
            cluster: c.name.clone(),
            name: w.name.clone(),
            state: w.state.clone(),
            duration_seconds: match (&w.start_time, &w.completion_time) {
                (Some(start), Some(end)) => Some(end.0.duration_since(start.0).as_secs_f64().max(0.0)),
                _ => None,
            },
            reason: w.reason.clone(),
        })
        .collect();
    let flags = status
        .clusters
        .iter()
        .flat_map(|c| c.flags.iter().map(move |f| (c, f)))
        .map(|(c, f)| FlagMeasured {
            cluster: c.name.clone(),
            name: f.name.clone(),
            enabled: f.enabled,
            reason: f.reason.clone(),
            read_back_seconds: c
                .flags_read_back_time
                .as_ref()
                .map(|t| t.0.duration_since(schedule.prepare_at).as_secs_f64().max(0.0)),
        })
        .collect();
    let verdict = verdict(&of.of, prepare_before, &workloads, status.phase);
    Ok(Report {
        rehearsal: name,
        of: of.of.clone(),
        phase: status.phase.map(|p| p.as_str().to_owned()),
        prepare_before_seconds: prepare_before,
        workloads,
        agents,
        warmups,
        flags,
        verdict,
    })
}

/// The share of `prepareBefore` a rehearsed time-to-peak may take before preflight warns: a
/// quarter is kept for what a rehearsal does not show (the night's contention for new nodes,
/// images pulled while everyone scales at once).
pub const MARGIN: f64 = 0.75;

/// Preflight warnings for a sale from its last finished rehearsal, per cluster: each workload
/// whose measured time-to-peak leaves less than a quarter of `prepare_before` (the sale's, in
/// seconds), or that never reached peak.
pub fn preflight_warnings(report: &Report, prepare_before: f64) -> Vec<(String, String)> {
    if report.phase.as_deref() != Some(Phase::Completed.as_str()) {
        return vec![];
    }
    let before = human(prepare_before);
    report
        .workloads
        .iter()
        .filter_map(|w| {
            let warning = match w.time_to_peak_seconds {
                Some(took) if took > prepare_before * MARGIN => format!(
                    "{}: rehearsal {} took {} to reach peak, against prepareBefore {before} (warned above {:.0}%)",
                    w.workload,
                    report.rehearsal,
                    human(took),
                    MARGIN * 100.0
                ),
                Some(_) => return None,
                None => format!(
                    "{}: rehearsal {} never reached peak ({}/{} ready): {}",
                    w.workload,
                    report.rehearsal,
                    w.ready.unwrap_or(0),
                    w.peak.unwrap_or(0),
                    w.message.as_deref().unwrap_or("no reason recorded")
                ),
            };
            Some((w.cluster.clone(), warning))
        })
        .collect()
}

/// A duration as a person reads it: `12m40s`, `45s`, `1h2m`.
pub fn human(seconds: f64) -> String {
    let total = seconds.round() as i64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// "prepareBefore 30m covers the slowest time-to-peak (...) with 2.4x margin", or why not.
pub fn verdict(sale: &str, prepare_before: f64, workloads: &[Measured], phase: Option<Phase>) -> String {
    let unreached: Vec<&Measured> = workloads.iter().filter(|w| w.time_to_peak_seconds.is_none()).collect();
    let before = human(prepare_before);
    if workloads.is_empty() {
        return "nothing measured yet".to_owned();
    }
    if !unreached.is_empty() {
        let names: Vec<String> = unreached
            .iter()
            .map(|w| {
                format!("{} in {} ({}/{} ready)", w.workload, w.cluster, w.ready.unwrap_or(0), w.peak.unwrap_or(0))
            })
            .collect();
        let live = matches!(phase, Some(Phase::Scheduled | Phase::Preparing | Phase::Active));
        return match live {
            true => format!("not at peak yet: {}", names.join(", ")),
            false => format!(
                "prepareBefore {before} of sale {sale} is not shown to be enough: {} never reached peak",
                names.join(", ")
            ),
        };
    }
    let slowest = workloads.iter().max_by(|a, b| {
        a.time_to_peak_seconds.partial_cmp(&b.time_to_peak_seconds).unwrap_or(std::cmp::Ordering::Equal)
    });
    let Some(slowest) = slowest else { return "nothing measured yet".to_owned() };
    let took = slowest.time_to_peak_seconds.unwrap_or(0.0);
    let which = format!("{} in {}, {}", slowest.workload, slowest.cluster, human(took));
    if took <= prepare_before {
        let margin =
            if took > 0.0 { format!("{:.1}x margin", prepare_before / took) } else { "room to spare".to_owned() };
        format!("prepareBefore {before} covers the slowest time-to-peak ({which}) with {margin}")
    } else {
        format!(
            "prepareBefore {before} does not cover the slowest time-to-peak ({which}): raise it above {}",
            human(took)
        )
    }
}

/// The report as text.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "Rehearsal {} of sale {} ({})\nprepareBefore {}\n\n",
        report.rehearsal,
        report.of,
        report.phase.as_deref().unwrap_or("not started"),
        human(report.prepare_before_seconds)
    );
    // Ready replicas only while peak is not reached: after the restore they are the baseline's.
    let rows: Vec<Vec<String>> = report
        .workloads
        .iter()
        .map(|w| {
            let peak = w.peak.unwrap_or(0);
            let took = match w.time_to_peak_seconds {
                Some(s) => human(s),
                None => format!("not reached ({}/{peak} ready)", w.ready.unwrap_or(0)),
            };
            let quarters: Vec<String> =
                (0..4).map(|q| w.ready_by_quarter.get(q).map_or("-".to_owned(), i32::to_string)).collect();
            vec![w.cluster.clone(), w.workload.clone(), peak.to_string(), took, quarters.join("/")]
        })
        .collect();
    table(&mut out, &["CLUSTER", "WORKLOAD", "PEAK", "TIME-TO-PEAK", "READY AT 25/50/75/100%"], &rows);
    for w in &report.workloads {
        let why = match w.time_to_peak_seconds {
            None => w.waited_for.as_ref().or(w.message.as_ref()),
            Some(_) => w.waited_for.as_ref(),
        };
        if let Some(why) = why {
            out.push_str(&format!("  {} in {}: slowest pods waited: {why}\n", w.workload, w.cluster));
        }
    }
    if !report.agents.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .agents
            .iter()
            .map(|a| {
                let ready = a.ready_seconds.map_or("not all ready".to_owned(), human);
                vec![a.cluster.clone(), a.desired.to_string(), ready]
            })
            .collect();
        table(&mut out, &["CLUSTER", "DRAIN AGENTS", "ALL READY AFTER"], &rows);
    }
    if !report.warmups.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .warmups
            .iter()
            .map(|w| {
                let took = w.duration_seconds.map_or("-".to_owned(), human);
                let state = match &w.reason {
                    Some(reason) => format!("{} ({reason})", w.state),
                    None => w.state.clone(),
                };
                vec![w.cluster.clone(), w.name.clone(), state, took]
            })
            .collect();
        table(&mut out, &["CLUSTER", "WARM-UP", "RESULT", "TOOK"], &rows);
    }
    if !report.flags.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .flags
            .iter()
            .map(|f| {
                let value = format!("{} ({})", if f.enabled { "on" } else { "off" }, f.reason);
                let read = f.read_back_seconds.map_or("never".to_owned(), |s| format!("after {}", human(s)));
                vec![f.cluster.clone(), f.name.clone(), value, read]
            })
            .collect();
        table(&mut out, &["CLUSTER", "FLAG", "PUBLISHED", "READ BACK"], &rows);
    }
    out.push_str(&format!("\n{}\n", report.verdict));
    out
}

/// Rows under a header, in columns as wide as their widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sale(start: &str, end: &str) -> FlashSale {
        serde_json::from_value(json!({
            "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
            "metadata": {"name": "singles-day", "namespace": "shop",
                         "labels": {"app.kubernetes.io/instance": "shop"},
                         "annotations": {"argocd.argoproj.io/tracking-id": "shop:flashsale.dev/FlashSale:shop/singles-day"}},
            "spec": {
                "window": {"start": start, "end": end}, "prepareBefore": "30m", "cooldownAfter": "15m",
                "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 10},
                               "probes": {"readiness": {"periodSeconds": 2}}}],
                "spotDrain": {"metadataEndpoint": "http://100.100.100.200"},
                "degradation": {"flags": [{"name": "reviews", "offDuring": ["Active"]}]},
                "cacheWarm": [{"name": "catalog", "template": {"spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}}}}],
            }
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_rehearsal_copies_the_spec_with_its_own_window_and_levers() {
        let sale = sale("2026-11-11T00:00:00+08:00", "2026-11-12T00:00:00+08:00");
        let r = rehearsal(&sale, ts("2026-11-04T02:00:00Z"), SignedDuration::from_mins(10), &DEFAULT_LEVERS).unwrap();
        assert_eq!(r.name_any(), "singles-day-rehearsal");
        assert_eq!(r.namespace().as_deref(), Some("shop"));
        // Nothing of the sale's labels or annotations: no GitOps tool tracks (or prunes) it.
        assert_eq!(r.labels(), &BTreeMap::from([(names::REHEARSAL_OF.to_owned(), "singles-day".to_owned())]));
        assert!(r.annotations().is_empty());
        let schedule = Schedule::from_spec(&r.spec).unwrap();
        assert_eq!(schedule.prepare_at, ts("2026-11-04T02:00:00Z"));
        assert_eq!(schedule.start, ts("2026-11-04T02:30:00Z"));
        assert_eq!(schedule.end, ts("2026-11-04T02:40:00Z"));
        assert_eq!(schedule.restore_at, schedule.end);
        assert!(r.spec.workloads[0].probes.is_some() && r.spec.spot_drain.is_some() && !r.spec.cache_warm.is_empty());
        assert!(r.spec.degradation.is_none(), "flags are off by default");
        assert_eq!(r.spec.rehearsal.as_ref().unwrap().of, "singles-day");

        // Only scaling (always in) and flags.
        let r = rehearsal(&sale, ts("2026-11-04T02:00:00Z"), SignedDuration::from_mins(10), &[RehearsedLever::Flags])
            .unwrap();
        assert_eq!(r.spec.rehearsal.unwrap().levers, vec![RehearsedLever::Scale, RehearsedLever::Flags]);
        assert!(r.spec.workloads[0].probes.is_none() && r.spec.spot_drain.is_none() && r.spec.cache_warm.is_empty());
        assert!(r.spec.degradation.is_some());
    }

    #[test]
    fn the_sale_comes_first() {
        // The sale spans 2026-11-10T15:30Z (Preparing) to 2026-11-11T16:15Z (restored).
        let sale = sale("2026-11-11T00:00:00+08:00", "2026-11-12T00:00:00+08:00");
        let cases = [
            // (Preparing at, hold, refused)
            ("2026-11-10T14:00:00Z", 50, false), // restored 15:20, before the sale prepares
            ("2026-11-10T14:30:00Z", 40, true),  // restored 15:40, into the sale's Preparing
            ("2026-11-11T12:00:00Z", 10, true),  // inside the window
            ("2026-11-11T16:15:00Z", 10, false), // right after the sale's restore
            ("2026-11-11T16:14:00Z", 10, true),
        ];
        for (at, hold, refused) in cases {
            let got = rehearsal(&sale, ts(at), SignedDuration::from_mins(hold), &DEFAULT_LEVERS);
            assert_eq!(got.is_err(), refused, "{at} +{hold}m: {:?}", got.as_ref().err());
            if let Err(message) = got {
                assert!(
                    message.contains("overlaps sale singles-day") && message.contains("rehearse before"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn a_rehearsal_is_not_rehearsed_and_holds_a_while() {
        let sale = sale("2026-11-11T00:00:00+08:00", "2026-11-12T00:00:00+08:00");
        let at = ts("2026-11-01T02:00:00Z");
        let r = rehearsal(&sale, at, SignedDuration::from_mins(10), &DEFAULT_LEVERS).unwrap();
        assert!(
            rehearsal(&r, at, SignedDuration::from_mins(10), &DEFAULT_LEVERS)
                .unwrap_err()
                .contains("itself a rehearsal")
        );
        assert!(rehearsal(&sale, at, SignedDuration::ZERO, &DEFAULT_LEVERS).unwrap_err().contains("--hold"));
    }

    #[test]
    fn long_names_are_cut_to_what_a_sale_may_have() {
        assert_eq!(name("bf"), "bf-rehearsal");
        let long = name("black-friday-2026-europe-checkout-api");
        assert!(long.len() <= 40 && long.starts_with("black-friday"), "{long}");
    }

    fn measured(workload: &str, seconds: Option<f64>) -> Measured {
        Measured {
            cluster: "hangzhou".into(),
            workload: workload.into(),
            peak: Some(10),
            ready: Some(if seconds.is_some() { 10 } else { 4 }),
            time_to_peak_seconds: seconds,
            ready_by_quarter: vec![],
            waited_for: None,
            message: None,
        }
    }

    #[test]
    fn the_verdict_names_the_slowest_workload_and_the_margin() {
        let cases = [
            (
                vec![measured("web", Some(60.0)), measured("order-service", Some(760.0))],
                Some(Phase::Completed),
                "prepareBefore 30m covers the slowest time-to-peak (order-service in hangzhou, 12m40s) with 2.4x margin",
            ),
            (
                vec![measured("order-service", Some(2400.0))],
                Some(Phase::Completed),
                "prepareBefore 30m does not cover the slowest time-to-peak (order-service in hangzhou, 40m): raise it above 40m",
            ),
            (
                vec![measured("web", Some(60.0)), measured("cart", None)],
                Some(Phase::Completed),
                "prepareBefore 30m of sale bf is not shown to be enough: cart in hangzhou (4/10 ready) never reached peak",
            ),
            (vec![measured("cart", None)], Some(Phase::Preparing), "not at peak yet: cart in hangzhou (4/10 ready)"),
            (vec![], None, "nothing measured yet"),
        ];
        for (workloads, phase, want) in cases {
            assert_eq!(verdict("bf", 1800.0, &workloads, phase), want);
        }
    }

    #[test]
    fn the_sale_is_warned_from_its_last_finished_rehearsal() {
        let report = |phase: &str, workloads: Vec<Measured>| Report {
            rehearsal: "bf-rehearsal".into(),
            of: "bf".into(),
            phase: Some(phase.into()),
            prepare_before_seconds: 600.0,
            workloads,
            agents: vec![],
            warmups: vec![],
            flags: vec![],
            verdict: String::new(),
        };
        let fast = measured("web", Some(600.0));
        let slow = measured("order-service", Some(1500.0));
        let never = measured("cart", None);
        let warned = preflight_warnings(&report("Completed", vec![fast.clone(), slow.clone(), never.clone()]), 1800.0);
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert_eq!(warned[0].0, "hangzhou");
        assert!(
            warned[0]
                .1
                .starts_with("order-service: rehearsal bf-rehearsal took 25m to reach peak, against prepareBefore 30m"),
            "{warned:?}"
        );
        assert!(warned[1].1.starts_with("cart: rehearsal bf-rehearsal never reached peak (4/10 ready)"), "{warned:?}");
        // Only a finished rehearsal counts.
        assert!(preflight_warnings(&report("Active", vec![slow.clone()]), 1800.0).is_empty());
        // Within the margin: nothing.
        assert!(preflight_warnings(&report("Completed", vec![measured("web", Some(1350.0))]), 1800.0).is_empty());
    }

    #[test]
    fn the_report_shows_the_quarters_why_pods_waited_agents_and_warmups() {
        let web = Measured {
            ready_by_quarter: vec![2, 6, 10],
            waited_for: Some("1 pod Pending: Unschedulable (0/3 nodes are available)".into()),
            ..measured("web", Some(1350.0))
        };
        let report = Report {
            rehearsal: "bf-rehearsal".into(),
            of: "bf".into(),
            phase: Some("Completed".into()),
            prepare_before_seconds: 1800.0,
            workloads: vec![web],
            agents: vec![AgentsMeasured { cluster: "hangzhou".into(), desired: 3, ready_seconds: Some(42.0) }],
            warmups: vec![WarmupMeasured {
                cluster: "hangzhou".into(),
                name: "catalog".into(),
                state: "Failed".into(),
                duration_seconds: Some(95.0),
                reason: Some("BackoffLimitExceeded".into()),
            }],
            flags: vec![FlagMeasured {
                cluster: "hangzhou".into(),
                name: "recommendations".into(),
                enabled: false,
                reason: "PhaseOff".into(),
                read_back_seconds: Some(2.0),
            }],
            verdict: "prepareBefore 30m covers ...".into(),
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"CLUSTER   WORKLOAD  PEAK  TIME-TO-PEAK  READY AT 25/50/75/100%"), "{text}");
        assert!(lines.contains(&"hangzhou  web       10    22m30s        2/6/10/-"), "{text}");
        assert!(
            lines.contains(
                &"  web in hangzhou: slowest pods waited: 1 pod Pending: Unschedulable (0/3 nodes are available)"
            ),
            "{text}"
        );
        assert!(lines.contains(&"hangzhou  3             42s"), "{text}");
        assert!(lines.contains(&"hangzhou  catalog  Failed (BackoffLimitExceeded)  1m35s"), "{text}");
        assert!(lines.contains(&"hangzhou  recommendations  off (PhaseOff)  after 2s"), "{text}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        for (s, want) in [(45.0, "45s"), (60.0, "1m"), (760.0, "12m40s"), (3720.0, "1h2m"), (0.4, "0s")] {
            assert_eq!(human(s), want);
        }
    }
}
