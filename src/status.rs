//! Deciding the status from the spec, the clock and what the levers observed (pure), and
//! merging conditions so an unchanged status compares equal and writes nothing.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use crate::{
    api::{ClusterStatus, DrainAgentsStatus, FlashSale, FlashSaleStatus, Phase, WorkloadStatus},
    levers::Report,
    timeline::{Position, Schedule, ScheduleError},
};

/// Condition types.
pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Lever condition types.
pub const PRESCALED: &str = "Prescaled";
pub const PROBES_APPLIED: &str = "ProbesApplied";
pub const DRAIN_AGENTS_READY: &str = "DrainAgentsReady";
pub const CACHE_WARMED: &str = "CacheWarmed";
pub const FLAGS_PUBLISHED: &str = "FlagsPublished";
/// A person froze the sale or some of its workloads (annotation `flashsale.dev/freeze`).
pub const FROZEN: &str = "Frozen";
/// The `WorkloadStatus.message` the workload lever gives a frozen workload; [`decide`] turns it
/// into one saying since when.
pub const WORKLOAD_FROZEN: &str = "frozen by annotation flashsale.dev/freeze";
/// The conditions levers contribute through [`crate::levers::LeverCondition`], in status order.
const LEVER_CONDITIONS: [&str; 3] = [DRAIN_AGENTS_READY, CACHE_WARMED, FLAGS_PUBLISHED];

/// Every reason the operator can put on the `Ready` condition: the ones [`decide`] and
/// [`stalled`] give, the ones the controller writes as a phase begins or a deletion waits, and
/// the reasons of lever conditions that block `Ready` by name. The on-call runbook
/// (`docs/runbook.md`) explains each; `tests/runbook.rs` fails when one is missing there or when
/// the code can set a reason this list lacks.
pub const READY_REASONS: &[&str] = &[
    "PreflightPassed",
    "PreflightWarnings",
    "PreflightFailed",
    "Preparing",
    "Blocked",
    "Prepared",
    "NotReady",
    "Restoring",
    "Completed",
    "Suspending",
    "Suspended",
    "Deleting",
    "InvalidSpec",
    "Unreadable",
    "RehearsalRefused",
    // Blocking lever conditions (DrainAgentsReady, CacheWarmed, FlagsPublished).
    "NotAllowed",
    "AgentRbacMissing",
    "WarmupFailed",
    "RestoreFailed",
];

/// What the controller observed of one cluster in this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterObservation {
    pub name: String,
    /// `Err` with a message when the cluster could not be reached or its client not built.
    pub report: Result<Report, String>,
}

/// The status for an invalid spec: Stalled with the reason, everything else untouched.
pub fn stalled(sale: &FlashSale, error: &ScheduleError) -> FlashSaleStatus {
    let message = error.to_string();
    let previous = sale.status.clone().unwrap_or_default();
    FlashSaleStatus {
        phase: previous.phase,
        next_transition_time: None,
        observed_generation: sale.meta().generation,
        conditions: vec![
            condition(READY, false, "InvalidSpec", &message),
            condition(STALLED, true, "InvalidSpec", &message),
            condition(RECONCILING, false, "InvalidSpec", "waiting for the spec to be fixed"),
        ],
        clusters: previous.clusters,
        // The window cannot be read: showing the last one would mislead.
        window_start: None,
        window_end: None,
        ..previous
    }
}

/// The status a sale shows given where the clock puts it and what each cluster reported.
pub fn decide(
    sale: &FlashSale,
    schedule: &Schedule,
    position: Position,
    observations: &[ClusterObservation],
    now: Timestamp,
) -> FlashSaleStatus {
    let previous = sale.status.clone().unwrap_or_default();
    let mut problems: Vec<String> = vec![];
    let mut warnings: Vec<String> = vec![];
    let mut clusters = vec![];
    let mut clusters_ready = 0;
    let (mut all_ready, mut all_restored, mut all_prescaled) = (true, true, true);
    let mut probes_applied: Option<bool> = None;
    let mut frozen_workloads: Vec<String> = vec![];
    let mut unreachable = false;
    for obs in observations {
        let prev = previous.clusters.iter().find(|c| c.name == obs.name);
        match &obs.report {
            Ok(report) => {
                all_ready &= report.ready;
                clusters_ready += usize::from(report.ready);
                all_restored &= report.restored;
                all_prescaled &= report.prescaled;
                if let Some(applied) = report.probes_applied {
                    probes_applied = Some(probes_applied.unwrap_or(true) && applied);
                }
                problems.extend(report.problems.iter().map(|p| qualify(observations, &obs.name, p)));
                warnings.extend(report.warnings.iter().map(|w| qualify(observations, &obs.name, w)));
                let message = if report.problems.is_empty() { None } else { Some(report.problems.join("; ")) };
                let holding = phase_holds(position.phase);
                let workloads = with_peak_times(
                    &report.workloads,
                    prev.map(|p| p.workloads.as_slice()),
                    holding,
                    &peaks(sale),
                    (schedule.prepare_at, schedule.start),
                    now,
                );
                let workloads = with_frozen_since(workloads, prev.map(|p| p.workloads.as_slice()), now);
                frozen_workloads.extend(
                    workloads
                        .iter()
                        .filter_map(|w| Some(format!("{} since {}", w.name, frozen_since_of(w)?)))
                        .map(|w| qualify(observations, &obs.name, &w)),
                );
                let mut cluster = ClusterStatus {
                    name: obs.name.clone(),
                    reachable: true,
                    message,
                    last_sync_time: None,
                    workloads,
                    drain_agents: with_agents_ready_time(
                        report.drain_agents.clone(),
                        prev.and_then(|p| p.drain_agents.as_ref()),
                        holding,
                        schedule.prepare_at,
                        now,
                    ),
                    // What the warm-ups did outlives their Jobs, which go at the restore.
                    warmups: kept_after_the_hold(&report.warmups, prev.map(|p| p.warmups.as_slice()), holding, |w| {
                        &w.name
                    }),
                    // The flags as the hold left them outlive the restore, like the warm-ups.
                    flags: kept_after_the_hold(&report.flags, prev.map(|p| p.flags.as_slice()), holding, |f| &f.name),
                    flags_read_back_time: flags_read_back_time(
                        report.flags_read_back,
                        prev.and_then(|p| p.flags_read_back_time.clone()),
                        holding,
                        previous.phase.is_some_and(phase_holds),
                        now,
                    ),
                    originals: report.originals.clone(),
                };
                // The sync time moves only when something else did, so a quiet pass writes nothing.
                cluster.last_sync_time = match prev {
                    Some(p) if p == &ClusterStatus { last_sync_time: p.last_sync_time.clone(), ..cluster.clone() } => {
                        p.last_sync_time.clone()
                    }
                    _ => Some(Time(now)),
                };
                clusters.push(cluster);
            }
            Err(message) => {
                // Whether its workloads are at peak, or its probe timings rolled out, cannot be known.
                all_ready = false;
                all_restored = false;
                all_prescaled = false;
                unreachable = true;
                problems.push(format!("cluster {}: {message}", obs.name));
                clusters.push(ClusterStatus {
                    name: obs.name.clone(),
                    reachable: false,
                    message: Some(message.clone()),
                    last_sync_time: prev.and_then(|p| p.last_sync_time.clone()),
                    // Keep the last known detail: on-call still wants to see it.
                    workloads: prev.map(|p| p.workloads.clone()).unwrap_or_default(),
                    drain_agents: prev.and_then(|p| p.drain_agents.clone()),
                    warmups: prev.map(|p| p.warmups.clone()).unwrap_or_default(),
                    flags: prev.map(|p| p.flags.clone()).unwrap_or_default(),
                    flags_read_back_time: prev.and_then(|p| p.flags_read_back_time.clone()),
                    // Unread, the cluster still holds what the sale changed: keep the record.
                    originals: prev.map(|p| p.originals.clone()).unwrap_or_default(),
                });
            }
        }
    }
    let problem_text = join_capped(&problems);
    let phase = position.phase;
    let levers = lever_conditions(observations);
    // A lever that failed in a way a person must fix names Ready's reason (e.g. WarmupFailed).
    let blocked_by =
        levers.iter().find(|(c, blocking)| c.status == "False" && *blocking).map(|(c, _)| c.reason.clone());
    let (ready, reason, message) = match phase {
        Phase::Scheduled if problems.is_empty() && !warnings.is_empty() => (
            true,
            "PreflightWarnings",
            format!("Preparation starts at {}; warnings: {}", schedule.prepare_at, join_capped(&warnings)),
        ),
        Phase::Scheduled if problems.is_empty() => {
            (true, "PreflightPassed", format!("Preparation starts at {}", schedule.prepare_at))
        }
        Phase::Scheduled => (false, "PreflightFailed", problem_text.clone()),
        Phase::Preparing | Phase::Active | Phase::CoolingDown if all_ready => {
            (true, "Prepared", format!("Everything is in place; {}", next_step(phase, schedule)))
        }
        Phase::Preparing | Phase::Active | Phase::CoolingDown if blocked_by.is_some() => {
            (false, blocked_by.as_deref().unwrap_or("Blocked"), not_ready_message(&problem_text, observations))
        }
        Phase::Preparing if problems.is_empty() => (false, "Preparing", not_ready_message(&problem_text, observations)),
        Phase::Preparing => (false, "Blocked", not_ready_message(&problem_text, observations)),
        Phase::Active | Phase::CoolingDown => (false, "NotReady", not_ready_message(&problem_text, observations)),
        Phase::Restoring => (false, "Restoring", restoring_message(&problem_text)),
        Phase::Completed => (true, "Completed", "The sale is over and everything is restored".to_owned()),
        Phase::Suspended if all_restored => {
            (true, "Suspended", "spec.suspend is set; everything is restored".to_owned())
        }
        Phase::Suspended => (false, "Suspending", restoring_message(&problem_text)),
    };
    let reconciling = match phase {
        Phase::Scheduled | Phase::Completed => false,
        Phase::Preparing | Phase::Active | Phase::CoolingDown => !all_ready,
        Phase::Restoring => true,
        Phase::Suspended => !all_restored,
    };
    let prescaled = prescaled_condition(phase, all_prescaled, all_restored, &problem_text);
    // A sale with probe timings cannot have them all rolled out while a cluster is not seen.
    let uses_probes = probes_applied.is_some() || sale.spec.workloads.iter().any(|w| w.probes.is_some());
    let probes_applied = match unreachable && uses_probes {
        true => Some(false),
        false => probes_applied,
    };
    let probes = probes_applied.map(|applied| match phase {
        Phase::Preparing | Phase::Active | Phase::CoolingDown if applied => {
            condition(PROBES_APPLIED, true, "RolledOut", "The sale's probe timings are in place and rolled out")
        }
        Phase::Preparing | Phase::Active | Phase::CoolingDown => condition(
            PROBES_APPLIED,
            false,
            "RollingOut",
            "Probe timings are being applied; the scale-up waits for the rollout until half of prepareBefore has passed",
        ),
        Phase::Scheduled => condition(PROBES_APPLIED, false, "NotYet", "Probe timings change when the sale prepares"),
        _ => condition(PROBES_APPLIED, false, "Restored", "Probe timings are back to their originals"),
    });
    FlashSaleStatus {
        phase: Some(phase),
        next_transition_time: position.next.map(Time),
        observed_generation: sale.meta().generation,
        conditions: vec![
            condition(READY, ready, reason, &message),
            condition(RECONCILING, reconciling, reason, &message),
            condition(STALLED, false, "AsExpected", "The spec can be acted on"),
            prescaled,
        ]
        .into_iter()
        .chain(probes)
        .chain(levers.into_iter().map(|(c, _)| c))
        .chain((!frozen_workloads.is_empty()).then(|| {
            let message = format!(
                "Frozen by annotation flashsale.dev/freeze, nothing is written to them: {}",
                join_capped(&frozen_workloads)
            );
            condition(FROZEN, true, "WorkloadsFrozen", &message)
        }))
        .collect(),
        window_start: Some(Time(schedule.start)),
        window_end: Some(Time(schedule.end)),
        clusters_ready: Some(format!("{clusters_ready}/{}", observations.len())),
        workloads_at_peak: Some(workloads_at_peak(sale, &clusters)),
        clusters,
    }
}

/// Folds each lever's per-cluster state into one condition per type: True when every cluster
/// that reported it is ready; otherwise the first cluster that is not names the reason. The
/// flag says whether that reason is a failure (it then blocks Ready by name).
fn lever_conditions(observations: &[ClusterObservation]) -> Vec<(Condition, bool)> {
    LEVER_CONDITIONS
        .iter()
        .filter_map(|type_| {
            let states: Vec<(&str, &crate::levers::LeverCondition)> = observations
                .iter()
                .filter_map(|o| o.report.as_ref().ok().map(|r| (o.name.as_str(), r)))
                .flat_map(|(name, r)| r.conditions.iter().filter(|c| c.type_ == *type_).map(move |c| (name, c)))
                .collect();
            let unready = states.iter().find(|(_, c)| !c.ready);
            let (cluster, chosen) = unready.or(states.first())?;
            let message = if observations.len() > 1 && unready.is_some() {
                format!("cluster {cluster}: {}", chosen.message)
            } else {
                chosen.message.clone()
            };
            Some((condition(type_, chosen.ready, &chosen.reason, &message), !chosen.ready && chosen.blocking))
        })
        .collect()
}

/// The status of a sale a person froze: what was last observed stays, the phase follows the
/// clock (announced as usual), and `Frozen` says since when; while the clock says the sale should
/// restore, `Ready` says the restore waits for the freeze to go.
pub fn frozen(
    sale: &FlashSale,
    previous: &FlashSaleStatus,
    clock: Position,
    note: &str,
    now: Timestamp,
) -> FlashSaleStatus {
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == FROZEN && c.status == "True" && c.reason == "SaleFrozen")
        // Read back from the message (not the condition's time, which a workload freeze before
        // may have set), so later passes say the same; whole seconds, as status times are.
        .and_then(|c| since_in(&c.message))
        .unwrap_or_else(|| Timestamp::from_second(now.as_second()).unwrap_or(now));
    let note = note.trim();
    let note = if note.is_empty() { String::new() } else { format!(" ({note})") };
    let message = format!(
        "Frozen since {since} by annotation flashsale.dev/freeze{note}: nothing is written in any cluster and every change is left as it is; remove the annotation to resume"
    );
    let phase = previous.phase.unwrap_or(clock.phase);
    let mut conditions: Vec<Condition> =
        previous.conditions.iter().filter(|c| c.type_ != FROZEN && c.type_ != RECONCILING).cloned().collect();
    if matches!(phase, Phase::Restoring | Phase::Suspended) {
        let waiting = format!("{message}; the restore waits until then");
        conditions.retain(|c| c.type_ != READY);
        let reason = if phase == Phase::Suspended { "Suspending" } else { "Restoring" };
        conditions.push(condition(READY, false, reason, &waiting));
    }
    conditions.push(condition(RECONCILING, false, FROZEN, &message));
    conditions.push(condition(FROZEN, true, "SaleFrozen", &message));
    FlashSaleStatus {
        phase: Some(phase),
        next_transition_time: clock.next.map(Time),
        observed_generation: sale.meta().generation,
        conditions,
        ..previous.clone()
    }
}

/// Since when a workload is frozen, from the message [`with_frozen_since`] gave it.
fn frozen_since_of(w: &WorkloadStatus) -> Option<&str> {
    let rest = w.message.as_deref()?.strip_prefix("Frozen since ")?;
    rest.split_once(' ').map(|(since, _)| since)
}

/// The time in a `Frozen since <time> ...` message.
fn since_in(message: &str) -> Option<Timestamp> {
    message.strip_prefix("Frozen since ")?.split_once(' ')?.0.parse().ok()
}

/// Stamps each workload the lever found frozen with since when: the time its previous status
/// gave, or `now` the first time.
fn with_frozen_since(
    current: Vec<WorkloadStatus>,
    previous: Option<&[WorkloadStatus]>,
    now: Timestamp,
) -> Vec<WorkloadStatus> {
    current
        .into_iter()
        .map(|mut w| {
            if w.message.as_deref() == Some(WORKLOAD_FROZEN) {
                let before = previous
                    .and_then(|p| p.iter().find(|p| p.name == w.name))
                    .and_then(frozen_since_of)
                    .and_then(|t| t.parse::<Timestamp>().ok());
                let since = before.unwrap_or_else(|| Timestamp::from_second(now.as_second()).unwrap_or(now));
                w.message = Some(format!(
                    "Frozen since {since} by annotation flashsale.dev/freeze: the sale writes nothing to it until the annotation is removed"
                ));
            }
            w
        })
        .collect()
}

fn phase_holds(phase: Phase) -> bool {
    matches!(phase, Phase::Preparing | Phase::Active | Phase::CoolingDown)
}

/// Carries each workload's "peak reached" time over from the previous status, and stamps it
/// `now` the first time ready replicas reach the target while the sale holds its changes; the
/// time-to-peak (from Preparing, `prepare_at`) it gives outlives the restore, for rehearsals and
/// next year's sale to compare.
/// Each workload's peak from the spec, by its status name (`Kind namespace/name`).
fn peaks(sale: &FlashSale) -> std::collections::BTreeMap<String, i32> {
    let namespace = kube::ResourceExt::namespace(sale).unwrap_or_default();
    sale.spec
        .workloads
        .iter()
        .map(|w| (format!("{} {namespace}/{}", w.target.kind, w.target.name), w.scale.peak))
        .collect()
}

fn with_peak_times(
    current: &[WorkloadStatus],
    previous: Option<&[WorkloadStatus]>,
    holding: bool,
    peaks: &std::collections::BTreeMap<String, i32>,
    (prepare_at, start): (Timestamp, Timestamp),
    now: Timestamp,
) -> Vec<WorkloadStatus> {
    current
        .iter()
        .map(|w| {
            let mut w = w.clone();
            let before = previous.and_then(|p| p.iter().find(|p| p.name == w.name));
            let reached = before.and_then(|p| p.peak_reached_time.clone());
            // The target follows the live count while the scale-up waits (a probe rollout):
            // peak is reached only when the target is at least the spec's peak too.
            let peak = peaks.get(&w.name).copied().unwrap_or(0);
            let at_peak = matches!((w.ready_replicas, w.target_replicas), (Some(r), Some(t)) if r >= t && t >= peak);
            w.peak_reached_time = match (holding, reached) {
                (false, _) => None,
                (true, Some(t)) => Some(t),
                (true, None) if at_peak => Some(Time(now)),
                (true, None) => None,
            };
            w.time_to_peak_seconds = match (&w.peak_reached_time, holding) {
                (Some(t), _) => Some(t.0.duration_since(prepare_at).as_secs().max(0)),
                // A new hold that has not reached peak yet has no figure of its own.
                (None, true) => None,
                (None, false) => before.and_then(|p| p.time_to_peak_seconds),
            };
            w.ready_by_quarter = ready_by_quarter(before, w.ready_replicas, holding, (prepare_at, start), now);
            // The lever says why pods wait now; the last reason before peak is what is kept.
            let reached_before = before.is_some_and(|p| p.peak_reached_time.is_some());
            let waiting_now = w.waited_for.take();
            w.waited_for = match (holding && !reached_before, waiting_now) {
                (true, Some(now)) => Some(now),
                _ => before.and_then(|p| p.waited_for.clone()),
            };
            w
        })
        .collect()
}

/// Ready replicas at each quarter of `prepareBefore` that has passed: the count last observed
/// before each instant (the previous status's: a change in between would have written one),
/// kept from the previous status once taken. Outside a hold, what the last one took is kept.
fn ready_by_quarter(
    before: Option<&WorkloadStatus>,
    ready: Option<i32>,
    holding: bool,
    (prepare_at, start): (Timestamp, Timestamp),
    now: Timestamp,
) -> Vec<i32> {
    let kept = before.map(|p| p.ready_by_quarter.clone()).unwrap_or_default();
    let prepare_before = start.duration_since(prepare_at);
    let passed = (1..=4).filter(|q| now >= prepare_at + prepare_before * *q / 4).count();
    if !holding {
        return kept;
    }
    let mut taken = kept;
    taken.truncate(passed);
    let last_seen = before.and_then(|p| p.ready_replicas).or(ready).unwrap_or(0);
    taken.resize(passed, last_seen);
    taken
}

/// Outside a hold, each entry a pass no longer reports (its Job deleted, its flag taken out) is
/// kept as last seen, so the status still says what the hold did; in a hold, what the pass saw.
fn kept_after_the_hold<T: Clone>(
    current: &[T],
    previous: Option<&[T]>,
    holding: bool,
    name: impl Fn(&T) -> &String,
) -> Vec<T> {
    let mut out = current.to_vec();
    if !holding {
        let gone = previous.into_iter().flatten().filter(|p| !current.iter().any(|c| name(c) == name(p)));
        out.extend(gone.cloned());
    }
    out
}

/// When the flag file was first read back with the sale's flags in place: stamped once in a
/// hold, forgotten when a new hold begins, kept after the restore.
fn flags_read_back_time(
    read_back: bool,
    before: Option<Time>,
    holding: bool,
    held_before: bool,
    now: Timestamp,
) -> Option<Time> {
    match (holding, held_before, before) {
        (true, true, Some(t)) => Some(t),
        (true, _, _) => read_back.then_some(Time(now)),
        (false, _, before) => before,
    }
}

/// Stamps when every drain agent was first ready in this hold, and the seconds from Preparing
/// it took; the figure outlives the restore (the agents go, the status keeps it).
fn with_agents_ready_time(
    current: Option<DrainAgentsStatus>,
    previous: Option<&DrainAgentsStatus>,
    holding: bool,
    prepare_at: Timestamp,
    now: Timestamp,
) -> Option<DrainAgentsStatus> {
    let Some(mut agents) = current else {
        // Gone at the restore: keep what the hold measured.
        return previous
            .filter(|p| !holding && p.ready_seconds.is_some())
            .map(|p| DrainAgentsStatus { ready_time: None, ..p.clone() });
    };
    let all_ready = agents.desired > 0 && agents.ready >= agents.desired;
    agents.ready_time = match (holding, previous.and_then(|p| p.ready_time.clone())) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => all_ready.then_some(Time(now)),
    };
    agents.ready_seconds = match (&agents.ready_time, holding) {
        (Some(t), _) => Some(t.0.duration_since(prepare_at).as_secs().max(0)),
        (None, true) => None,
        (None, false) => previous.and_then(|p| p.ready_seconds),
    };
    Some(agents)
}

fn prescaled_condition(phase: Phase, all_ready: bool, all_restored: bool, problems: &str) -> Condition {
    match phase {
        Phase::Scheduled => condition(PRESCALED, false, "NotYet", "Scale-up starts when the sale prepares"),
        Phase::Preparing | Phase::Active | Phase::CoolingDown if all_ready => {
            condition(PRESCALED, true, "PeakReached", "Every workload has its peak replicas ready")
        }
        Phase::Preparing | Phase::Active | Phase::CoolingDown => {
            condition(PRESCALED, false, "PeakNotReached", problems_or(problems, "Waiting for replicas"))
        }
        _ if all_restored => condition(PRESCALED, false, "Restored", "Every workload is back at its baseline"),
        _ => condition(PRESCALED, false, "Restoring", problems_or(problems, "Restoring baselines")),
    }
}

fn problems_or<'a>(problems: &'a str, fallback: &'a str) -> &'a str {
    if problems.is_empty() { fallback } else { problems }
}

fn next_step(phase: Phase, schedule: &Schedule) -> String {
    match phase {
        Phase::Preparing => format!("the sale starts at {}", schedule.start),
        Phase::Active => format!("the sale ends at {}", schedule.end),
        _ => format!("restore starts at {}", schedule.restore_at),
    }
}

fn not_ready_message(problems: &str, observations: &[ClusterObservation]) -> String {
    let mut waiting: Vec<String> = vec![];
    for obs in observations {
        if let Ok(report) = &obs.report {
            for w in &report.workloads {
                if let (Some(ready), Some(target)) = (w.ready_replicas, w.target_replicas)
                    && ready < target
                {
                    let prefix = if observations.len() > 1 { format!("{}: ", obs.name) } else { String::new() };
                    waiting.push(format!(
                        "{prefix}{} has {ready}/{target} replicas ready ({} short)",
                        w.name,
                        target - ready
                    ));
                }
            }
        }
    }
    // Levers still converging (agents starting, warm-ups running) say what they wait for.
    for obs in observations {
        if let Ok(report) = &obs.report {
            for c in report.conditions.iter().filter(|c| !c.ready && !c.blocking) {
                let prefix = if observations.len() > 1 { format!("{}: ", obs.name) } else { String::new() };
                waiting.push(format!("{prefix}{}", c.message));
            }
        }
    }
    if waiting.is_empty() && problems.is_empty() {
        return "Waiting for the levers to report".to_owned();
    }
    // The problems arrive already capped; the replicas still short are capped here.
    match (waiting.is_empty(), problems.is_empty()) {
        (false, false) => format!("{}; {problems}", join_capped(&waiting)),
        (false, true) => join_capped(&waiting),
        _ => problems.to_owned(),
    }
}

fn restoring_message(problems: &str) -> String {
    if problems.is_empty() {
        "Putting every recorded original back".to_owned()
    } else {
        format!("Putting every recorded original back; blocked: {problems}")
    }
}

/// Prefixes a problem with its cluster's name when the sale spans several.
fn qualify(observations: &[ClusterObservation], cluster: &str, problem: &str) -> String {
    if observations.len() > 1 { format!("cluster {cluster}: {problem}") } else { problem.to_owned() }
}

/// How many items of a list a condition message names before it ends with "and N more":
/// `kubectl describe` prints each message whole, and on-call needs the first few, not a
/// screenful. `status.clusters[]` (and `flashsale-operator status`) keep every item.
pub const MESSAGE_ITEMS: usize = 5;

/// `items` joined with "; ", the first [`MESSAGE_ITEMS`] of them and then how many more.
pub fn join_capped(items: &[String]) -> String {
    if items.len() <= MESSAGE_ITEMS {
        return items.join("; ");
    }
    format!("{}; and {} more", items[..MESSAGE_ITEMS].join("; "), items.len() - MESSAGE_ITEMS)
}

/// The peak the spec asks of the workload that status names `workload` (`Kind namespace/name`,
/// as the levers name it).
pub fn peak_of(sale: &FlashSale, workload: &str) -> Option<i32> {
    let ns = sale.meta().namespace.as_deref().unwrap_or("default");
    sale.spec.workloads.iter().enumerate().find_map(|(i, w)| {
        let target = crate::levers::prescale::Target::confined(w, i, ns).ok()?;
        (target.display() == workload).then_some(w.scale.peak)
    })
}

/// Whether a workload of a cluster has its peak replicas ready (an unreachable cluster's last
/// known figures do not count: nobody can tell).
pub fn at_peak(sale: &FlashSale, cluster: &ClusterStatus, workload: &WorkloadStatus) -> bool {
    let peak = peak_of(sale, &workload.name);
    cluster.reachable && matches!((workload.ready_replicas, peak), (Some(ready), Some(peak)) if ready >= peak)
}

/// Workloads with their peak replicas ready over workloads, in every cluster: `3/4`.
fn workloads_at_peak(sale: &FlashSale, clusters: &[ClusterStatus]) -> String {
    let all = clusters.iter().flat_map(|c| c.workloads.iter().map(move |w| (c, w)));
    let total = all.clone().count();
    let at = all.filter(|(c, w)| at_peak(sale, c, w)).count();
    format!("{at}/{total}")
}

/// A condition with no timestamps or generation yet; [`ConditionSet::merge`] fills them in.
pub fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Replaces the Ready condition of a decided status (and Reconciling, which follows it while
/// Ready is False and the operator still acts).
pub fn set_ready(status: &mut FlashSaleStatus, ready: bool, reason: &str, message: &str) {
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, condition(READY, ready, reason, message));
}

/// The conditions currently on an object, to merge new ones into.
pub struct ConditionSet(Vec<Condition>);

impl From<Vec<Condition>> for ConditionSet {
    fn from(conditions: Vec<Condition>) -> Self {
        ConditionSet(conditions)
    }
}

impl ConditionSet {
    /// The wanted conditions, keeping each existing condition's transition time when its status
    /// did not change, so that a status that says the same thing compares equal. Conditions
    /// not wanted any more are dropped; the result is `Ready` first (`kubectl describe` lists
    /// conditions in this order, and Ready is the headline), then the others by type, a stable
    /// order that compares equal pass after pass.
    pub fn merge(self, wanted: Vec<Condition>, generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
        let mut merged: Vec<Condition> = wanted
            .into_iter()
            .map(|mut c| {
                c.observed_generation = generation;
                c.last_transition_time = match self.0.iter().find(|old| old.type_ == c.type_) {
                    Some(old) if old.status == c.status => old.last_transition_time.clone(),
                    _ => Time(now),
                };
                c
            })
            .collect();
        merged.sort_by(|a, b| (a.type_ != READY, &a.type_).cmp(&(b.type_ != READY, &b.type_)));
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn peak_time_is_stamped_once_and_kept_while_holding() {
        let w = |ready| WorkloadStatus {
            name: "Deployment shop/web".into(),
            ready_replicas: Some(ready),
            target_replicas: Some(10),
            ..Default::default()
        };
        let peaks = std::collections::BTreeMap::from([("Deployment shop/web".to_owned(), 10)]);
        let t0 = ts("2026-11-10T15:30:00Z");
        let t1 = ts("2026-11-10T15:31:00Z");
        let start = ts("2026-11-10T16:00:00Z");
        // Waiting for a probe rollout, the target is the live count: not peak.
        let waiting = WorkloadStatus { target_replicas: Some(2), ..w(2) };
        assert_eq!(with_peak_times(&[waiting], None, true, &peaks, (t0, start), t0)[0].peak_reached_time, None);
        let short = with_peak_times(&[w(4)], None, true, &peaks, (t0, start), t0);
        assert_eq!(short[0].peak_reached_time, None);
        assert_eq!(short[0].time_to_peak_seconds, None);
        let reached = with_peak_times(&[w(10)], Some(&short), true, &peaks, (t0, start), t1);
        assert_eq!(reached[0].peak_reached_time, Some(Time(t1)));
        assert_eq!(reached[0].time_to_peak_seconds, Some(60));
        let later = with_peak_times(&[w(9)], Some(&reached), true, &peaks, (t0, start), ts("2026-11-10T15:40:00Z"));
        assert_eq!(later[0].peak_reached_time, Some(Time(t1)), "a dip does not move when peak was first reached");
        let restored = with_peak_times(&[w(10)], Some(&later), false, &peaks, (t0, start), t1);
        assert_eq!(restored[0].peak_reached_time, None);
        assert_eq!(restored[0].time_to_peak_seconds, Some(60), "the figure outlives the restore");
        // Held again (the sale moved): a figure of the new hold only.
        assert_eq!(
            with_peak_times(&[w(4)], Some(&restored), true, &peaks, (t1, start), t1)[0].time_to_peak_seconds,
            None
        );
    }

    #[test]
    fn ready_counts_are_taken_at_each_quarter_and_the_last_wait_is_kept() {
        let peaks = std::collections::BTreeMap::from([("Deployment shop/web".to_owned(), 4)]);
        let w = |ready, waited: Option<&str>| WorkloadStatus {
            name: "Deployment shop/web".into(),
            ready_replicas: Some(ready),
            target_replicas: Some(4),
            waited_for: waited.map(str::to_owned),
            ..Default::default()
        };
        // prepareBefore 40 min: quarters at 15:40, 15:50, 16:00, 16:10.
        let window = (ts("2026-11-10T15:30:00Z"), ts("2026-11-10T16:10:00Z"));
        let pass = |current: WorkloadStatus, before: Option<&WorkloadStatus>, holding: bool, now: &str| {
            with_peak_times(&[current], before.map(std::slice::from_ref), holding, &peaks, window, ts(now)).remove(0)
        };
        let first = pass(w(1, Some("3 pods Pending: Unschedulable (0/1 nodes)")), None, true, "2026-11-10T15:31:00Z");
        assert!(first.ready_by_quarter.is_empty(), "no quarter has passed yet");
        // Nothing changed until after 50%: both quarters take the count seen before them.
        let second = pass(w(2, Some("2 pods Running, not ready")), Some(&first), true, "2026-11-10T15:52:00Z");
        assert_eq!(second.ready_by_quarter, vec![1, 1]);
        assert_eq!(second.waited_for.as_deref(), Some("2 pods Running, not ready"));
        let at_peak = pass(w(4, None), Some(&second), true, "2026-11-10T15:58:00Z");
        assert_eq!(at_peak.ready_by_quarter, vec![1, 1], "taken once, never moved");
        assert_eq!(at_peak.waited_for.as_deref(), Some("2 pods Running, not ready"), "the last wait before peak");
        // A dip after peak is not what the slowest pods waited for.
        let dip = pass(w(3, Some("1 pod CrashLoopBackOff")), Some(&at_peak), true, "2026-11-10T16:05:00Z");
        assert_eq!(dip.ready_by_quarter, vec![1, 1, 4]);
        assert_eq!(dip.waited_for.as_deref(), Some("2 pods Running, not ready"));
        let full = pass(w(3, None), Some(&dip), true, "2026-11-10T16:10:00Z");
        assert_eq!(full.ready_by_quarter, vec![1, 1, 4, 3]);
        let restored = pass(w(2, None), Some(&full), false, "2026-11-10T18:00:00Z");
        assert_eq!(restored.ready_by_quarter, vec![1, 1, 4, 3], "the figures outlive the restore");
        assert_eq!(restored.waited_for.as_deref(), Some("2 pods Running, not ready"));
    }

    #[test]
    fn warmups_and_flags_gone_at_the_restore_are_kept_as_last_seen() {
        let w = |name: &str, state: &str| crate::api::WarmupStatus {
            name: name.into(),
            state: state.into(),
            ..Default::default()
        };
        fn name(w: &crate::api::WarmupStatus) -> &String {
            &w.name
        }
        let held = [w("product", "Succeeded"), w("search", "Succeeded")];
        // The restore deletes one Job, then the other: both stay, as last seen.
        let first = kept_after_the_hold(&[w("search", "Succeeded")], Some(&held), false, name);
        let second = kept_after_the_hold(&[], Some(&first), false, name);
        let mut names: Vec<&str> = second.iter().map(|w| w.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["product", "search"]);
        // In a hold an entry removed from the spec goes at once.
        assert_eq!(kept_after_the_hold(&[w("search", "Running")], Some(&held), true, name), [w("search", "Running")]);
    }

    #[test]
    fn the_flags_read_back_time_is_stamped_once_per_hold_and_outlives_it() {
        let (t0, t1) = (ts("2026-11-10T15:30:00Z"), ts("2026-11-10T15:30:02Z"));
        // (case, read back now, before, holding, held before, expected)
        let table = [
            ("published, not read back yet", false, None, true, true, None),
            ("read back: stamped", true, None, true, true, Some(t1)),
            ("read back again: kept", true, Some(t0), true, true, Some(t0)),
            ("a new hold: stamped anew", true, Some(t0), true, false, Some(t1)),
            ("a new hold, not read back: none yet", false, Some(t0), true, false, None),
            ("restored: kept", false, Some(t0), false, true, Some(t0)),
        ];
        for (case, read_back, before, holding, held_before, want) in table {
            let got = flags_read_back_time(read_back, before.map(Time), holding, held_before, t1);
            assert_eq!(got, want.map(Time), "{case}");
        }
    }

    #[test]
    fn agents_time_to_ready_is_stamped_once_and_outlives_the_agents() {
        let t0 = ts("2026-11-10T15:30:00Z");
        let agents = |ready| Some(DrainAgentsStatus { desired: 3, ready, ..Default::default() });
        let starting = with_agents_ready_time(agents(1), None, true, t0, ts("2026-11-10T15:30:20Z"));
        assert_eq!(starting.as_ref().and_then(|a| a.ready_seconds), None);
        let ready = with_agents_ready_time(agents(3), starting.as_ref(), true, t0, ts("2026-11-10T15:31:05Z"));
        assert_eq!(ready.as_ref().and_then(|a| a.ready_seconds), Some(65));
        let later = with_agents_ready_time(agents(2), ready.as_ref(), true, t0, ts("2026-11-10T15:40:00Z"));
        assert_eq!(later.as_ref().and_then(|a| a.ready_seconds), Some(65), "a node lost later does not move it");
        let restoring = with_agents_ready_time(agents(3), later.as_ref(), false, t0, ts("2026-11-10T18:00:00Z"));
        let gone = with_agents_ready_time(None, restoring.as_ref(), false, t0, ts("2026-11-10T18:00:05Z"));
        assert_eq!(gone.as_ref().and_then(|a| a.ready_seconds), Some(65), "kept after the agents are gone");
        assert_eq!(gone.and_then(|a| a.ready_time), None);
        assert_eq!(with_agents_ready_time(None, None, false, t0, t0), None, "no agents, nothing to say");
    }

    #[test]
    fn a_frozen_workload_keeps_the_time_it_was_first_seen_frozen() {
        let w = |message: Option<&str>| WorkloadStatus {
            name: "Deployment shop/web".into(),
            message: message.map(str::to_owned),
            ..Default::default()
        };
        let (t0, t1) = (ts("2026-11-10T15:30:00Z"), ts("2026-11-10T15:31:00Z"));
        // (previous message, current message from the lever) -> since when
        let table = [
            (None, Some(WORKLOAD_FROZEN), Some("2026-11-10T15:31:00Z")),
            (Some("3/4 replicas ready"), Some(WORKLOAD_FROZEN), Some("2026-11-10T15:31:00Z")),
            (
                Some("Frozen since 2026-11-10T15:30:00Z by annotation"),
                Some(WORKLOAD_FROZEN),
                Some("2026-11-10T15:30:00Z"),
            ),
            (Some("Frozen since 2026-11-10T15:30:00Z by annotation"), None, None),
            (None, Some("3/4 replicas ready"), None),
        ];
        for (before, now, since) in table {
            let out = with_frozen_since(vec![w(now)], Some(&[w(before)]), t1);
            assert_eq!(frozen_since_of(&out[0]), since, "{before:?} -> {now:?}");
        }
        assert!(t0 < t1);
    }

    #[test]
    fn a_frozen_sale_keeps_its_status_and_says_since_when() {
        let sale: FlashSale = serde_json::from_value(serde_json::json!({
            "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
            "metadata": {"name": "s", "namespace": "shop", "generation": 3},
            "spec": {"window": {"start": "2026-11-10T16:00:00Z", "end": "2026-11-10T18:00:00Z"},
                     "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 4}}]}
        }))
        .unwrap();
        let t0 = ts("2026-11-10T16:10:00Z");
        let t1 = ts("2026-11-10T16:20:00Z");
        let mut ready = condition(READY, true, "Prepared", "Everything is in place");
        ready.last_transition_time = Time(t0);
        let active =
            FlashSaleStatus { phase: Some(Phase::Active), conditions: vec![ready.clone()], ..Default::default() };
        let clock = Position { phase: Phase::Active, next: Some(ts("2026-11-10T18:00:00Z")) };
        // (previous status, clock phase, since) -> Frozen message has since, Ready kept or waiting
        let first = frozen(&sale, &active, clock, "incident 42", t0);
        let frozen_cond = first.conditions.iter().find(|c| c.type_ == FROZEN).unwrap();
        assert!(frozen_cond.message.starts_with("Frozen since 2026-11-10T16:10:00Z"), "{}", frozen_cond.message);
        assert!(frozen_cond.message.contains("(incident 42)"));
        assert_eq!(first.conditions.iter().find(|c| c.type_ == READY), Some(&ready), "Ready as last observed");
        // Later passes: the condition's transition time (kept by the merge) is the since.
        let mut merged = first.clone();
        merged.conditions = ConditionSet::from(vec![]).merge(first.conditions.clone(), Some(3), t0);
        let later = frozen(&sale, &merged, clock, "incident 42", t1);
        let later_cond = later.conditions.iter().find(|c| c.type_ == FROZEN).unwrap();
        assert_eq!(later_cond.message, frozen_cond.message, "since stays the first time");
        // A workload was frozen first: the sale's freeze still counts from when it began.
        let mut workloads_first = condition(FROZEN, true, "WorkloadsFrozen", "Frozen by annotation ...: web since x");
        workloads_first.last_transition_time = Time(ts("2026-11-10T16:00:00Z"));
        let before = FlashSaleStatus { conditions: vec![workloads_first.clone()], ..active.clone() };
        let one = frozen(&sale, &before, clock, "", t1);
        let mut carried = one.clone();
        carried.conditions = ConditionSet::from(vec![workloads_first]).merge(one.conditions.clone(), Some(3), t1);
        let two = frozen(&sale, &carried, clock, "", ts("2026-11-10T16:30:00Z"));
        let msg = |s: &FlashSaleStatus| s.conditions.iter().find(|c| c.type_ == FROZEN).map(|c| c.message.clone());
        assert_eq!(msg(&one), msg(&two), "the message stays, so the freeze is announced once");
        assert!(msg(&two).is_some_and(|m| m.starts_with("Frozen since 2026-11-10T16:20:00Z")));
        // Still frozen when the clock says restore: Ready says the restore waits.
        let restoring = FlashSaleStatus { phase: Some(Phase::Restoring), ..merged };
        let clock = Position { phase: Phase::Restoring, next: None };
        let waiting = frozen(&sale, &restoring, clock, "", t1);
        let ready = waiting.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Restoring"));
        assert!(ready.message.contains("the restore waits"), "{}", ready.message);
        assert_eq!(waiting.phase, Some(Phase::Restoring));
    }

    #[test]
    fn merge_keeps_transition_time_when_status_is_unchanged() {
        let t0 = ts("2026-11-10T00:00:00Z");
        let first = ConditionSet::from(vec![]).merge(vec![condition(READY, true, "A", "a")], Some(1), t0);
        assert_eq!(first[0].last_transition_time, Time(t0));
        let t1 = ts("2026-11-10T01:00:00Z");
        let same = ConditionSet::from(first.clone()).merge(vec![condition(READY, true, "B", "b")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0), "status unchanged: time kept");
        assert_eq!(same[0].reason, "B");
        let flipped = ConditionSet::from(same).merge(vec![condition(READY, false, "C", "c")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
    }

    #[test]
    fn merging_the_same_conditions_is_a_fixed_point() {
        let t0 = ts("2026-11-10T00:00:00Z");
        let wanted = || vec![condition(STALLED, false, "X", "x"), condition(READY, true, "Y", "y")];
        let once = ConditionSet::from(vec![]).merge(wanted(), Some(3), t0);
        let twice = ConditionSet::from(once.clone()).merge(wanted(), Some(3), ts("2026-11-10T05:00:00Z"));
        assert_eq!(once, twice);
        assert_eq!(once.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Ready", "Stalled"]);
    }

    #[test]
    fn lever_conditions_fold_clusters_and_name_the_first_that_is_not_ready() {
        use crate::levers::{LeverCondition, Report};
        let state = |ready: bool, reason: &str, blocking: bool| LeverCondition {
            type_: CACHE_WARMED,
            ready,
            reason: reason.into(),
            message: format!("{reason} here"),
            blocking,
        };
        let obs = |name: &str, conditions: Vec<LeverCondition>| ClusterObservation {
            name: name.into(),
            report: Ok(Report { conditions, ..Report::default() }),
        };
        assert!(lever_conditions(&[obs("a", vec![]), obs("b", vec![])]).is_empty(), "no lever, no condition");
        let all_ready = lever_conditions(&[obs("a", vec![state(true, "Succeeded", false)])]);
        assert_eq!(all_ready.len(), 1);
        assert_eq!((all_ready[0].0.status.as_str(), all_ready[0].1), ("True", false));
        let failed = lever_conditions(&[
            obs("a", vec![state(true, "Succeeded", false)]),
            obs("b", vec![state(false, "WarmupFailed", true)]),
        ]);
        assert_eq!(failed[0].0.status, "False");
        assert_eq!(failed[0].0.reason, "WarmupFailed");
        assert_eq!(failed[0].0.message, "cluster b: WarmupFailed here");
        assert!(failed[0].1, "a blocking failure is marked as such");
    }

    #[test]
    fn ready_comes_first_and_the_rest_follow_by_type() {
        let t0 = ts("2026-11-10T00:00:00Z");
        let wanted = vec![
            condition(STALLED, false, "AsExpected", "x"),
            condition(CACHE_WARMED, true, "Succeeded", "x"),
            condition(READY, true, "Prepared", "x"),
            condition(PRESCALED, true, "PeakReached", "x"),
        ];
        let merged = ConditionSet::from(vec![]).merge(wanted, Some(1), t0);
        let types: Vec<&str> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, CACHE_WARMED, PRESCALED, STALLED]);
    }

    #[test]
    fn a_long_list_of_problems_ends_with_how_many_more() {
        let items: Vec<String> = (1..=8).map(|i| format!("Deployment shop/w{i} not found")).collect();
        let capped = join_capped(&items);
        assert_eq!(
            capped,
            "Deployment shop/w1 not found; Deployment shop/w2 not found; Deployment shop/w3 not found; \
             Deployment shop/w4 not found; Deployment shop/w5 not found; and 3 more"
        );
        assert_eq!(join_capped(&items[..MESSAGE_ITEMS]).matches("; ").count(), MESSAGE_ITEMS - 1);
        assert_eq!(join_capped(&[]), "");
    }

    /// The summary `kubectl get fs -o wide` shows: clusters ready, workloads at the sale's
    /// peak (not merely at their target), the window in UTC, and a capped Ready message.
    #[test]
    fn decide_counts_clusters_ready_and_workloads_at_peak_and_caps_the_message() {
        use crate::levers::Report;
        let sale: FlashSale = serde_saphyr::from_str(
            r#"
apiVersion: flashsale.dev/v1alpha1
kind: FlashSale
metadata: {name: s, namespace: shop}
spec:
  window: {start: "2026-11-11T00:00:00+08:00", end: "2026-11-11T02:00:00+08:00"}
  clusters:
  - {name: a, kubeconfigSecretRef: {name: a}}
  - {name: b, kubeconfigSecretRef: {name: b}}
  - {name: c, kubeconfigSecretRef: {name: c}}
  workloads:
  - ref: {kind: Deployment, name: web}
    scale: {peak: 10}
  - ref: {kind: Deployment, name: cart}
    scale: {peak: 4}
"#,
        )
        .unwrap();
        let w = |name: &str, ready: i32, target: i32| WorkloadStatus {
            name: format!("Deployment shop/{name}"),
            ready_replicas: Some(ready),
            target_replicas: Some(target),
            ..Default::default()
        };
        let problems: Vec<String> = (1..=7).map(|i| format!("problem {i}")).collect();
        let observations = [
            ClusterObservation {
                name: "a".into(),
                report: Ok(Report {
                    ready: true,
                    workloads: vec![w("web", 10, 10), w("cart", 4, 4)],
                    ..Report::default()
                }),
            },
            ClusterObservation {
                name: "b".into(),
                report: Ok(Report {
                    ready: false,
                    workloads: vec![w("web", 3, 10), w("cart", 5, 4)],
                    problems,
                    ..Report::default()
                }),
            },
            ClusterObservation { name: "c".into(), report: Err("connection refused".into()) },
        ];
        let schedule = Schedule::from_spec(&sale.spec).unwrap();
        let now = ts("2026-11-10T15:45:00Z");
        let position = crate::timeline::position(&schedule, false, false, now);
        let decided = decide(&sale, &schedule, position, &observations, now);
        assert_eq!(decided.clusters_ready.as_deref(), Some("1/3"));
        assert_eq!(decided.workloads_at_peak.as_deref(), Some("3/4"));
        assert_eq!(decided.window_start, Some(Time(ts("2026-11-10T16:00:00Z"))));
        assert_eq!(decided.window_end, Some(Time(ts("2026-11-10T18:00:00Z"))));
        let ready = decided.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert!(ready.message.ends_with("; and 3 more"), "{}", ready.message);
        assert!(
            ready.message.starts_with("b: Deployment shop/web has 3/10 replicas ready (7 short); "),
            "{}",
            ready.message
        );
        // The cluster keeps every problem.
        assert_eq!(decided.clusters[1].message.as_deref().map(|m| m.matches("problem").count()), Some(7));
        // Before preparing, a workload at its baseline is not at peak.
        let early = ts("2026-11-09T00:00:00Z");
        let scheduled = decide(
            &sale,
            &schedule,
            crate::timeline::position(&schedule, false, false, early),
            &observations[..1],
            early,
        );
        let baseline = [ClusterObservation {
            name: "a".into(),
            report: Ok(Report { ready: true, workloads: vec![w("web", 2, 2), w("cart", 4, 4)], ..Report::default() }),
        }];
        let at_baseline =
            decide(&sale, &schedule, crate::timeline::position(&schedule, false, false, early), &baseline, early);
        assert_eq!(scheduled.workloads_at_peak.as_deref(), Some("2/2"));
        assert_eq!(at_baseline.workloads_at_peak.as_deref(), Some("1/2"));
    }

    #[test]
    fn levers_still_converging_say_what_they_wait_for_without_being_problems() {
        use crate::levers::{LeverCondition, Report};
        let starting = LeverCondition {
            type_: DRAIN_AGENTS_READY,
            ready: false,
            reason: "AgentsStarting".into(),
            message: "1/2 drain agents ready".into(),
            blocking: false,
        };
        let obs = [ClusterObservation {
            name: "local".into(),
            report: Ok(Report { conditions: vec![starting], ..Report::default() }),
        }];
        assert_eq!(not_ready_message("", &obs), "1/2 drain agents ready");
        assert_eq!(not_ready_message("web not found", &obs), "1/2 drain agents ready; web not found");
    }

    #[test]
    fn every_ready_reason_decide_and_stalled_give_is_listed() {
        use crate::levers::{LeverCondition, Report};
        let sale: FlashSale = serde_json::from_value(serde_json::json!({
            "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
            "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"window": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-11T02:00:00Z"},
                     "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2}}]}
        }))
        .unwrap();
        let schedule = Schedule::from_spec(&sale.spec).unwrap();
        let report = |ready: bool, problems: &[&str], warnings: &[&str], conditions: Vec<LeverCondition>| Report {
            ready,
            restored: ready,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            warnings: warnings.iter().map(|w| (*w).to_owned()).collect(),
            conditions,
            ..Report::default()
        };
        let blocking = |reason: &str| LeverCondition {
            type_: CACHE_WARMED,
            ready: false,
            reason: reason.into(),
            message: "m".into(),
            blocking: true,
        };
        let situations: Vec<Vec<Result<Report, String>>> = vec![
            vec![Ok(report(true, &[], &[], vec![]))],
            vec![Ok(report(false, &[], &[], vec![]))],
            vec![Ok(report(false, &["web not found"], &[], vec![]))],
            vec![Ok(report(true, &[], &["no PDB"], vec![]))],
            vec![Ok(report(false, &["x"], &[], vec![blocking("WarmupFailed")]))],
            vec![Err("unreachable".into())],
        ];
        let now: Timestamp = "2026-11-10T00:00:00Z".parse().unwrap();
        let mut given = std::collections::BTreeSet::new();
        for phase in Phase::ALL {
            for situation in &situations {
                let observations: Vec<ClusterObservation> = situation
                    .iter()
                    .map(|report| ClusterObservation { name: crate::clusters::LOCAL.into(), report: report.clone() })
                    .collect();
                let status = decide(&sale, &schedule, Position { phase, next: None }, &observations, now);
                let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
                given.insert(ready.reason.clone());
            }
        }
        let mut invalid = sale.clone();
        invalid.spec.window.end = invalid.spec.window.start.clone();
        let error = Schedule::from_spec(&invalid.spec).unwrap_err();
        given.extend(stalled(&invalid, &error).conditions.into_iter().filter(|c| c.type_ == READY).map(|c| c.reason));
        let unlisted: Vec<&String> = given.iter().filter(|r| !READY_REASONS.contains(&r.as_str())).collect();
        assert!(unlisted.is_empty(), "Ready reasons missing from READY_REASONS: {unlisted:?}");
        // Every reason of decide's own is reached by some situation above (so the list is not
        // padded with a reason decide lost).
        for own in ["PreflightPassed", "PreflightWarnings", "PreflightFailed", "Preparing", "Blocked", "Prepared"] {
            assert!(given.contains(own), "{own} was not reached: {given:?}");
        }
        for own in ["NotReady", "Restoring", "Completed", "Suspending", "Suspended", "InvalidSpec", "WarmupFailed"] {
            assert!(given.contains(own), "{own} was not reached: {given:?}");
        }
    }

    /// A sale over clusters `a` and `b` (generation 4), its schedule, and for each phase an
    /// instant and clock position that put the sale in it.
    fn two_cluster_sale() -> (FlashSale, Schedule, impl Fn(Phase) -> (Position, Timestamp)) {
        let sale: FlashSale = serde_json::from_value(serde_json::json!({
            "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
            "metadata": {"name": "s", "namespace": "shop", "generation": 4},
            "spec": {"window": {"start": "2026-11-10T16:00:00Z", "end": "2026-11-10T18:00:00Z"},
                     "prepareBefore": "30m", "cooldownAfter": "15m",
                     "clusters": [{"name": "a", "kubeconfigSecretRef": {"name": "a"}},
                                  {"name": "b", "kubeconfigSecretRef": {"name": "b"}}],
                     "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 4}}]}
        }))
        .unwrap();
        let schedule = Schedule::from_spec(&sale.spec).unwrap();
        let clock = move |phase: Phase| {
            let (suspend, restored, now) = match phase {
                Phase::Scheduled => (false, false, "2026-11-10T12:00:00Z"),
                Phase::Preparing => (false, false, "2026-11-10T15:40:00Z"),
                Phase::Active => (false, false, "2026-11-10T17:00:00Z"),
                Phase::CoolingDown => (false, false, "2026-11-10T18:05:00Z"),
                Phase::Restoring => (false, false, "2026-11-10T18:20:00Z"),
                Phase::Completed => (false, true, "2026-11-10T18:20:00Z"),
                Phase::Suspended => (true, false, "2026-11-10T17:00:00Z"),
            };
            let now = ts(now);
            let position = crate::timeline::position(&schedule, suspend, restored, now);
            assert_eq!(position.phase, phase, "the clock puts the sale in {phase}");
            (position, now)
        };
        (sale, schedule, clock)
    }

    fn observed(name: &str, report: Result<Report, String>) -> ClusterObservation {
        ClusterObservation { name: name.into(), report }
    }

    fn find<'a>(status: &'a FlashSaleStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"))
    }

    /// Ready's status and reason and Reconciling's status for every phase (in the order of
    /// `Phase::ALL`) and what the two clusters reported; whenever Ready is False its message
    /// names the problem a cluster reported, if one did.
    #[test]
    fn ready_and_reconciling_follow_the_phase_and_every_cluster_outcome() {
        use crate::levers::LeverCondition;
        let (sale, schedule, clock) = two_cluster_sale();
        let ready = || Report { ready: true, prescaled: true, ..Report::default() };
        let restored = || Report { ready: true, restored: true, prescaled: true, ..Report::default() };
        let lever = |type_: &'static str, reason: &str, blocking: bool| LeverCondition {
            type_,
            ready: false,
            reason: reason.into(),
            message: format!("{reason} here"),
            blocking,
        };
        // Ready status, Ready reason, Reconciling status.
        type Want = (bool, &'static str, bool);
        const PASSED: Want = (true, "PreflightPassed", false);
        const FAILED: Want = (false, "PreflightFailed", false);
        const PREPARED: Want = (true, "Prepared", false);
        const NOT_READY: Want = (false, "NotReady", true);
        const RESTORING: Want = (false, "Restoring", true);
        const COMPLETED: Want = (true, "Completed", false);
        const SUSPENDING: Want = (false, "Suspending", true);
        const SUSPENDED: Want = (true, "Suspended", false);
        // (case, what b reported (a reported `ready` or `restored`), clusters ready, problem named, per phase)
        type Row = (&'static str, Vec<ClusterObservation>, &'static str, Option<&'static str>, [Want; 7]);
        let table: Vec<Row> = vec![
            (
                "every cluster ready",
                vec![observed("a", Ok(ready())), observed("b", Ok(ready()))],
                "2/2",
                None,
                [PASSED, PREPARED, PREPARED, PREPARED, RESTORING, COMPLETED, SUSPENDING],
            ),
            (
                "b not ready with a problem",
                vec![
                    observed("a", Ok(ready())),
                    observed(
                        "b",
                        Ok(Report { problems: vec!["Deployment shop/web not found".into()], ..Report::default() }),
                    ),
                ],
                "1/2",
                Some("cluster b: Deployment shop/web not found"),
                [FAILED, (false, "Blocked", true), NOT_READY, NOT_READY, RESTORING, COMPLETED, SUSPENDING],
            ),
            (
                "b unreachable",
                vec![observed("a", Ok(ready())), observed("b", Err("connection refused".into()))],
                "1/2",
                Some("cluster b: connection refused"),
                [FAILED, (false, "Blocked", true), NOT_READY, NOT_READY, RESTORING, COMPLETED, SUSPENDING],
            ),
            (
                "b still starting its drain agents, no problem",
                vec![
                    observed("a", Ok(ready())),
                    observed(
                        "b",
                        Ok(Report {
                            prescaled: true,
                            conditions: vec![lever(DRAIN_AGENTS_READY, "AgentsStarting", false)],
                            ..Report::default()
                        }),
                    ),
                ],
                "1/2",
                None,
                [PASSED, (false, "Preparing", true), NOT_READY, NOT_READY, RESTORING, COMPLETED, SUSPENDING],
            ),
            (
                "b's required warm-up failed",
                vec![
                    observed("a", Ok(ready())),
                    observed(
                        "b",
                        Ok(Report {
                            prescaled: true,
                            problems: vec!["warm-up product failed: BackoffLimitExceeded".into()],
                            conditions: vec![lever(CACHE_WARMED, "WarmupFailed", true)],
                            ..Report::default()
                        }),
                    ),
                ],
                "1/2",
                Some("cluster b: warm-up product failed: BackoffLimitExceeded"),
                [
                    FAILED,
                    (false, "WarmupFailed", true),
                    (false, "WarmupFailed", true),
                    (false, "WarmupFailed", true),
                    RESTORING,
                    COMPLETED,
                    SUSPENDING,
                ],
            ),
            (
                "b ready with a preflight warning",
                vec![
                    observed("a", Ok(ready())),
                    observed("b", Ok(Report { warnings: vec!["no PodDisruptionBudget".into()], ..ready() })),
                ],
                "2/2",
                None,
                [(true, "PreflightWarnings", false), PREPARED, PREPARED, PREPARED, RESTORING, COMPLETED, SUSPENDING],
            ),
            (
                "every cluster restored",
                vec![observed("a", Ok(restored())), observed("b", Ok(restored()))],
                "2/2",
                None,
                [PASSED, PREPARED, PREPARED, PREPARED, RESTORING, COMPLETED, SUSPENDED],
            ),
            (
                "b not restored yet",
                vec![
                    observed("a", Ok(restored())),
                    observed(
                        "b",
                        Ok(Report {
                            problems: vec!["Deployment shop/web: replicas not put back".into()],
                            ..Report::default()
                        }),
                    ),
                ],
                "1/2",
                Some("cluster b: Deployment shop/web: replicas not put back"),
                [FAILED, (false, "Blocked", true), NOT_READY, NOT_READY, RESTORING, COMPLETED, SUSPENDING],
            ),
        ];
        let mut cases = 0;
        for (what, observations, clusters_ready, problem, per_phase) in &table {
            for (phase, want) in Phase::ALL.into_iter().zip(per_phase) {
                let case = format!("{phase}, {what}");
                let (position, now) = clock(phase);
                let status = decide(&sale, &schedule, position, observations, now);
                let (ready, reconciling) = (find(&status, READY), find(&status, RECONCILING));
                let got = (ready.status == "True", ready.reason.as_str(), reconciling.status == "True");
                assert_eq!(got, *want, "{case}");
                assert_eq!(reconciling.reason, ready.reason, "{case}: Reconciling gives Ready's reason");
                let stalled = find(&status, STALLED);
                assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("False", "AsExpected"), "{case}");
                if let (false, Some(problem)) = (want.0, problem) {
                    assert!(ready.message.contains(problem), "{case}: {:?} does not name {problem:?}", ready.message);
                }
                assert_eq!(status.phase, Some(phase), "{case}");
                assert_eq!(status.next_transition_time, position.next.map(Time), "{case}");
                assert_eq!(status.observed_generation, Some(4), "{case}");
                assert_eq!(status.clusters_ready.as_deref(), Some(*clusters_ready), "{case}");
                let reachable: Vec<(&str, bool)> =
                    status.clusters.iter().map(|c| (c.name.as_str(), c.reachable)).collect();
                let unreachable = observations.iter().any(|o| o.report.is_err());
                assert_eq!(reachable, [("a", true), ("b", !unreachable)], "{case}");
                cases += 1;
            }
        }
        assert_eq!(cases, 56);
    }

    /// Prescaled and ProbesApplied for every phase and what the clusters reported.
    #[test]
    fn prescaled_and_probes_applied_follow_the_phase_and_every_cluster_outcome() {
        let (sale, schedule, clock) = two_cluster_sale();
        let report = |prescaled: bool, restored: bool, probes: Option<bool>, problems: &[&str]| Report {
            ready: prescaled && problems.is_empty(),
            restored,
            prescaled,
            probes_applied: probes,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            ..Report::default()
        };
        // (Prescaled status, reason), then ProbesApplied's (None: no condition).
        type Want = ((bool, &'static str), Option<(bool, &'static str)>);
        let hold = |at_peak: bool, rolled_out: Option<bool>| -> Want {
            (
                if at_peak { (true, "PeakReached") } else { (false, "PeakNotReached") },
                rolled_out.map(|r| if r { (true, "RolledOut") } else { (false, "RollingOut") }),
            )
        };
        let after = |restored: bool, probes: bool| -> Want {
            (if restored { (false, "Restored") } else { (false, "Restoring") }, probes.then_some((false, "Restored")))
        };
        let before = |probes: bool| -> Want { ((false, "NotYet"), probes.then_some((false, "NotYet"))) };
        // (case, a's and b's reports, per phase in the order of Phase::ALL)
        type Row = (&'static str, [Report; 2], [Want; 7]);
        let table: Vec<Row> = vec![
            (
                "at peak, no workload sets probes",
                [report(true, false, None, &[]), report(true, false, None, &[])],
                [
                    before(false),
                    hold(true, None),
                    hold(true, None),
                    hold(true, None),
                    after(false, false),
                    after(false, false),
                    after(false, false),
                ],
            ),
            (
                "at peak, probes rolled out in both",
                [report(true, false, Some(true), &[]), report(true, false, Some(true), &[])],
                [
                    before(true),
                    hold(true, Some(true)),
                    hold(true, Some(true)),
                    hold(true, Some(true)),
                    after(false, true),
                    after(false, true),
                    after(false, true),
                ],
            ),
            (
                "b short of peak, its probes rolling out",
                [
                    report(true, false, Some(true), &[]),
                    report(false, false, Some(false), &["web has 2/4 replicas ready"]),
                ],
                [
                    before(true),
                    hold(false, Some(false)),
                    hold(false, Some(false)),
                    hold(false, Some(false)),
                    after(false, true),
                    after(false, true),
                    after(false, true),
                ],
            ),
            (
                "probes only in b, rolled out",
                [report(true, false, None, &[]), report(true, false, Some(true), &[])],
                [
                    before(true),
                    hold(true, Some(true)),
                    hold(true, Some(true)),
                    hold(true, Some(true)),
                    after(false, true),
                    after(false, true),
                    after(false, true),
                ],
            ),
            (
                "every cluster restored",
                [report(true, true, Some(false), &[]), report(true, true, Some(false), &[])],
                [
                    before(true),
                    hold(true, Some(false)),
                    hold(true, Some(false)),
                    hold(true, Some(false)),
                    after(true, true),
                    after(true, true),
                    after(true, true),
                ],
            ),
            (
                "b not restored yet",
                [report(true, true, None, &[]), report(false, false, None, &["web still at 10 replicas"])],
                [
                    before(false),
                    hold(false, None),
                    hold(false, None),
                    hold(false, None),
                    after(false, false),
                    after(false, false),
                    after(false, false),
                ],
            ),
        ];
        for (what, [a, b], per_phase) in &table {
            let observations = [observed("a", Ok(a.clone())), observed("b", Ok(b.clone()))];
            for (phase, want) in Phase::ALL.into_iter().zip(per_phase) {
                let case = format!("{phase}, {what}");
                let (position, now) = clock(phase);
                let status = decide(&sale, &schedule, position, &observations, now);
                let prescaled = find(&status, PRESCALED);
                let probes = status.conditions.iter().find(|c| c.type_ == PROBES_APPLIED);
                let got = (
                    (prescaled.status == "True", prescaled.reason.as_str()),
                    probes.map(|c| (c.status == "True", c.reason.as_str())),
                );
                assert_eq!(got, *want, "{case}");
            }
        }
    }

    /// What decide keeps of a cluster from the last status: an unreachable cluster keeps its last
    /// known detail and sync time (and its figures no longer count at peak); a reachable one's
    /// sync time moves only when something else in its status did.
    #[test]
    fn an_unreachable_cluster_keeps_what_was_last_seen_and_a_quiet_pass_keeps_the_sync_time() {
        let (sale, schedule, clock) = two_cluster_sale();
        let (position, now) = clock(Phase::Active);
        let earlier = ts("2026-11-10T16:50:00Z");
        let web = |ready: i32| Report {
            ready: ready >= 4,
            prescaled: ready >= 4,
            workloads: vec![WorkloadStatus {
                name: "Deployment shop/web".into(),
                ready_replicas: Some(ready),
                target_replicas: Some(4),
                ..Default::default()
            }],
            ..Report::default()
        };
        // The status a pass at `at` leaves, given b's report then (None: b not in the status yet).
        let pass = |before: Option<&FlashSaleStatus>, b: Result<Report, String>, at: Timestamp| {
            let mut sale = sale.clone();
            sale.status = before.cloned();
            let observations = [observed("a", Ok(web(4))), observed("b", b)];
            decide(&sale, &schedule, position, &observations, at)
        };
        let seen = |b: Result<Report, String>| Some(pass(None, b, earlier));
        // (case, the last status, what b reported now) -> (reachable, sync time, b's ready replicas, at peak)
        type Row = (
            &'static str,
            Option<FlashSaleStatus>,
            Result<Report, String>,
            (bool, Option<Timestamp>, Option<i32>, &'static str),
        );
        let table: Vec<Row> = vec![
            ("unchanged: the sync time stays", seen(Ok(web(4))), Ok(web(4)), (true, Some(earlier), Some(4), "2/2")),
            (
                "more replicas ready: the sync time moves",
                seen(Ok(web(3))),
                Ok(web(4)),
                (true, Some(now), Some(4), "2/2"),
            ),
            ("first seen: stamped now", None, Ok(web(4)), (true, Some(now), Some(4), "2/2")),
            (
                "unreachable: last detail and sync time kept, not counted at peak",
                seen(Ok(web(4))),
                Err("connection refused".into()),
                (false, Some(earlier), Some(4), "1/2"),
            ),
            (
                "unreachable, never seen: nothing known",
                None,
                Err("connection refused".into()),
                (false, None, None, "1/1"),
            ),
        ];
        for (case, before, b_now, want) in table {
            let status = pass(before.as_ref(), b_now, now);
            let b = status.clusters.iter().find(|c| c.name == "b").unwrap();
            let got = (
                b.reachable,
                b.last_sync_time.as_ref().map(|t| t.0),
                b.workloads.first().and_then(|w| w.ready_replicas),
                status.workloads_at_peak.as_deref().unwrap_or(""),
            );
            assert_eq!(got, want, "{case}");
            if !b.reachable {
                assert_eq!(b.message.as_deref(), Some("connection refused"), "{case}");
            }
        }
    }

    /// Which workload counts at its peak: one the spec names in the sale's namespace, with at
    /// least its peak replicas ready, in a cluster that answered.
    #[test]
    fn a_workload_is_at_peak_with_its_peak_ready_in_a_reachable_cluster() {
        let sale: FlashSale = serde_json::from_value(serde_json::json!({
            "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
            "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"window": {"start": "2026-11-10T16:00:00Z", "end": "2026-11-10T18:00:00Z"},
                     "workloads": [
                         {"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 10}},
                         {"ref": {"kind": "StatefulSet", "name": "cart", "namespace": "shop"}, "scale": {"peak": 3}},
                         {"ref": {"kind": "Deployment", "name": "elsewhere", "namespace": "other"}, "scale": {"peak": 2}},
                         {"ref": {"apiVersion": "batch/v1", "kind": "Job", "name": "batch"}, "scale": {"peak": 2}}]}
        }))
        .unwrap();
        let cluster = |reachable: bool| ClusterStatus { name: "a".into(), reachable, ..Default::default() };
        let w = |name: &str, ready: Option<i32>| WorkloadStatus {
            name: name.into(),
            ready_replicas: ready,
            ..Default::default()
        };
        // (case, status name, ready replicas, cluster reachable, peak, at peak)
        let table = [
            ("at its peak", "Deployment shop/web", Some(10), true, Some(10), true),
            ("above its peak", "Deployment shop/web", Some(12), true, Some(10), true),
            ("one short", "Deployment shop/web", Some(9), true, Some(10), false),
            ("no ready count", "Deployment shop/web", None, true, Some(10), false),
            ("an unreachable cluster's last count", "Deployment shop/web", Some(10), false, Some(10), false),
            ("its namespace written out", "StatefulSet shop/cart", Some(3), true, Some(3), true),
            ("the same name as another kind", "StatefulSet shop/web", Some(10), true, None, false),
            ("outside the sale's namespace", "Deployment other/elsewhere", Some(2), true, None, false),
            ("a kind the levers do not know", "Job shop/batch", Some(2), true, None, false),
            ("not in the spec", "Deployment shop/api", Some(2), true, None, false),
        ];
        for (case, name, ready, reachable, peak, want) in table {
            assert_eq!(peak_of(&sale, name), peak, "{case}");
            assert_eq!(at_peak(&sale, &cluster(reachable), &w(name, ready)), want, "{case}");
        }
    }

    /// An unusable spec stalls the sale: Ready False and Stalled True with the error,
    /// Reconciling False, the phase and clusters as last shown, and no window.
    #[test]
    fn an_unusable_spec_stalls_the_sale_and_keeps_what_was_shown() {
        let (sale, _, _) = two_cluster_sale();
        let shown = FlashSaleStatus {
            phase: Some(Phase::Active),
            next_transition_time: Some(Time(ts("2026-11-10T18:00:00Z"))),
            clusters: vec![ClusterStatus { name: "a".into(), reachable: true, ..Default::default() }],
            window_start: Some(Time(ts("2026-11-10T16:00:00Z"))),
            window_end: Some(Time(ts("2026-11-10T18:00:00Z"))),
            clusters_ready: Some("1/1".into()),
            ..Default::default()
        };
        let error = ScheduleError::NegativeDuration { field: "prepareBefore" };
        // (case, status shown before, phase kept, clusters kept, clusters ready kept)
        let table =
            [("never decided", None, None, 0, None), ("mid-sale", Some(shown), Some(Phase::Active), 1, Some("1/1"))];
        for (case, before, phase, clusters, clusters_ready) in table {
            let mut sale = sale.clone();
            sale.status = before;
            let status = stalled(&sale, &error);
            let conditions: Vec<(&str, &str, &str)> =
                status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
            assert_eq!(
                conditions,
                [
                    (READY, "False", "InvalidSpec"),
                    (STALLED, "True", "InvalidSpec"),
                    (RECONCILING, "False", "InvalidSpec")
                ],
                "{case}"
            );
            assert_eq!(find(&status, STALLED).message, "spec.prepareBefore must not be negative", "{case}");
            assert_eq!(status.phase, phase, "{case}");
            assert_eq!(status.clusters.len(), clusters, "{case}");
            assert_eq!(status.clusters_ready.as_deref(), clusters_ready, "{case}");
            assert_eq!(status.observed_generation, Some(4), "{case}");
            let nothing_timed = (&status.next_transition_time, &status.window_start, &status.window_end);
            assert_eq!(nothing_timed, (&None, &None, &None), "{case}: the window cannot be read");
        }
    }

    /// Nobody can tell whether an unreachable cluster's workloads are at peak (nor whether its
    /// probe timings rolled out), so a sale holding its changes with one is not Prescaled.
    #[test]
    fn a_sale_with_an_unreachable_cluster_is_not_prescaled() {
        let (sale, schedule, clock) = two_cluster_sale();
        let at_peak = Report { ready: true, prescaled: true, probes_applied: Some(true), ..Report::default() };
        let observations = [observed("a", Ok(at_peak)), observed("b", Err("connection refused".into()))];
        for phase in [Phase::Preparing, Phase::Active, Phase::CoolingDown] {
            let (position, now) = clock(phase);
            let status = decide(&sale, &schedule, position, &observations, now);
            for type_ in [PRESCALED, PROBES_APPLIED] {
                let c = find(&status, type_);
                assert_eq!(c.status, "False", "{phase}: {type_} is {} ({})", c.status, c.reason);
            }
        }
    }
}
