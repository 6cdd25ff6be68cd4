//! One pass over a sale's workloads in one cluster: the pre-scaling and probe levers both change
//! the workload object, so their changes are composed into a single server-side apply (one
//! field manager owns both sets of fields; applying them separately would drop each other's).

use crate::api::names;
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Map, Value, json};

use super::{Action, Intent, Report, Sale, gitops, preflight, prescale, probes};
use crate::{
    api::{RecordedOriginal, Workload, WorkloadStatus},
    view::Scope,
};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta};

/// Runs the workload levers for every workload of a sale in one cluster.
pub async fn run(
    client: &Client,
    sale: &Sale<'_>,
    workloads: &[Workload],
    intent: Intent,
) -> Result<Report, kube::Error> {
    let sale_ns = sale.namespace;
    let mut report = Report { ready: true, restored: true, ..Report::default() };
    let mut at_peak = vec![];
    for (index, workload) in workloads.iter().enumerate() {
        let target = match prescale::Target::confined(workload, index, sale_ns) {
            Ok(target) => target,
            Err(refusal) => {
                // Never read nor written, so there is nothing of the sale's on it to restore.
                report.ready = false;
                report.problems.push(refusal.clone());
                report.workloads.push(WorkloadStatus {
                    name: format!("{} {}", workload.target.kind, workload.target.name),
                    message: Some(refusal),
                    ..WorkloadStatus::default()
                });
                continue;
            }
        };
        // A refused request (RBAC, an admission policy, a conflict) is this workload's problem:
        // the sale's other workloads and levers go on. Only a transport failure fails the pass.
        let one = match pass(client, &target, sale, intent).await {
            Ok(one) => one,
            Err(kube::Error::Api(status)) => refused(&target, sale, intent, &status.message),
            Err(other) => return Err(other),
        };
        report.originals.extend(one.originals.iter().cloned());
        report.ready &= one.ready;
        report.restored &= one.restored;
        if workload.probes.is_some() {
            let applied = one.status.probes.as_deref() == Some(PROBES_APPLIED);
            report.probes_applied = Some(report.probes_applied.unwrap_or(true) && applied);
        }
        report.problems.extend(one.problems);
        report.warnings.extend(one.warnings);
        report.actions.extend(one.actions);
        report.workloads.push(one.status);
        at_peak.extend(one.requests.map(|r| (r, workload.scale.peak)));
    }
    if intent == Intent::Preflight && !at_peak.is_empty() {
        match preflight::allocatable(sale.view).await {
            Ok(allocatable) => report.warnings.extend(preflight::capacity_warning(&at_peak, allocatable)),
            // Node capacity is a warning's input; without the right to read nodes it is skipped.
            Err(kube::Error::Api(status)) => {
                report.warnings.push(format!("node capacity not checked: the API server refused: {}", status.message))
            }
            Err(other) => return Err(other),
        }
    }
    Ok(report)
}

/// The outcome for a workload whose read or write the API server refused: not ready, and not
/// known to be restored (an earlier pass may have changed it), with the refusal named on it.
fn refused(target: &prescale::Target<'_>, sale: &Sale<'_>, intent: Intent, message: &str) -> Outcome {
    let what = match intent {
        Intent::Preflight => "checking",
        Intent::Hold => "changing",
        Intent::Restore => "restoring",
    };
    let problem = format!("{}: the API server refused {what} it: {message}", target.display());
    Outcome {
        ready: false,
        restored: false,
        problems: vec![problem.clone()],
        warnings: vec![],
        requests: None,
        actions: vec![],
        // Nothing was written: what was recorded still stands.
        originals: shown_records(sale, &target.display()),
        status: WorkloadStatus { name: target.display(), message: Some(problem), ..WorkloadStatus::default() },
    }
}

/// The second record of a workload's originals as the last status showed it.
fn shown_records(sale: &Sale<'_>, display: &str) -> Vec<RecordedOriginal> {
    sale.shown.into_iter().flat_map(|c| &c.originals).filter(|o| o.object == display).cloned().collect()
}

/// The `field` of the second record for a workload's probe timings.
pub const RECORD_PROBES: &str = "probes";

/// Which of an original's two records was lost (missing or unsound), and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The annotation on the object (a person's edit, worth an event) rather than the status
    /// record (an operator stopped between the object's write and the status write).
    pub annotation: bool,
    pub why: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// The original to trust from its two records: the annotation on the object and the second
/// record in the sale's status. Both sound and equal: that value. One missing or unsound (it
/// does not parse, or is out of range) and the other sound: the sound one, with a note saying
/// what was lost. Both sound but different, or neither sound: no original can be trusted, and
/// `Err` says why. Pure.
pub fn trust<T: PartialEq>(
    annotation: Option<&str>,
    record: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, Option<Lost>), String> {
    let lost = |annotation: bool, why: String| Some(Lost { annotation, why });
    let a = annotation.map(&parse);
    let r = record.map(&parse);
    match (a, r) {
        (Some(Ok(a)), Some(Ok(r))) if a == r => Ok((a, None)),
        (Some(Ok(_)), Some(Ok(_))) => Err(format!(
            "the records disagree (annotation {:?}, status record {:?})",
            annotation.unwrap_or_default(),
            record.unwrap_or_default()
        )),
        (Some(Ok(a)), None) => Ok((a, lost(false, "the status record is missing".into()))),
        (Some(Ok(a)), Some(Err(why))) => Ok((a, lost(false, format!("the status record is unsound: {why}")))),
        (None, Some(Ok(r))) => Ok((r, lost(true, "the annotation is missing".into()))),
        (Some(Err(why)), Some(Ok(r))) => Ok((r, lost(true, format!("the annotation is unsound: {why}")))),
        (None, None) => Err("both records are missing".into()),
        (Some(Err(why)), None) => Err(format!("the status record is missing and the annotation is unsound: {why}")),
        (None, Some(Err(why))) => Err(format!("the annotation is missing and the status record is unsound: {why}")),
        (Some(Err(a)), Some(Err(r))) => Err(format!("both records are unsound: annotation {a}; status record {r}")),
    }
}

/// How long, from the Preparing boundary, the scale-up may wait for the sale's probe change to
/// roll out (on baseline replicas, the cheaper rollout): half of `prepareBefore`. After that, or
/// when the sale changes no probe, the scale-up is written at once, whatever the rollout state.
pub fn probe_wait_deadline(schedule: &crate::timeline::Schedule) -> jiff::Timestamp {
    let half = schedule.start.duration_since(schedule.prepare_at) / 2;
    schedule.prepare_at.checked_add(half).unwrap_or(schedule.prepare_at)
}

/// Why a workload's pods are not ready, when they are stuck rather than starting: the count of
/// pods per reason, with the first message of each (`2 Pending (Unschedulable: 0/1 nodes are
/// available ...)`). `None` while pods are merely starting. Pure.
pub fn stuck_pods(pods: &[Pod]) -> Option<String> {
    grouped(pods.iter().filter_map(waiting).filter(|w| w.stuck))
}

/// Why each pod not ready yet waits, stuck or starting (`1 pod Pending: Unschedulable (...), 2
/// pods Running, not ready`): what a rehearsal keeps of the slowest pods. Pure.
pub fn waiting_pods(pods: &[Pod]) -> Option<String> {
    grouped(pods.iter().filter_map(waiting))
}

/// Why one pod is not ready, read from its conditions and container states.
struct Waiting {
    reason: String,
    message: String,
    /// It does not clear by itself.
    stuck: bool,
}

fn waiting(pod: &Pod) -> Option<Waiting> {
    let status = pod.status.as_ref()?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let condition = |type_: &str| status.conditions.iter().flatten().find(|c| c.type_ == type_);
    if condition("Ready").is_some_and(|c| c.status == "True") {
        return None;
    }
    let scheduled = condition("PodScheduled");
    if let Some(c) = scheduled.filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable")) {
        let message = c.message.clone().unwrap_or_default();
        return Some(Waiting { reason: "Pending: Unschedulable".into(), message, stuck: true });
    }
    let container = status.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        Some((waiting.reason.clone()?, waiting.message.clone().unwrap_or_default()))
    });
    if let Some((reason, message)) = container {
        let stuck = STUCK_REASONS.contains(&reason.as_str());
        return Some(Waiting { reason, message, stuck });
    }
    let reason = match (status.phase.as_deref(), scheduled.is_some_and(|c| c.status == "True")) {
        (Some("Running"), _) => "Running, not ready",
        (_, true) => "Pending: starting",
        _ => "Pending: not scheduled yet",
    };
    Some(Waiting { reason: reason.into(), message: String::new(), stuck: false })
}

/// Pods counted per reason, with the first message of each, in the order first seen.
fn grouped(waiting: impl Iterator<Item = Waiting>) -> Option<String> {
    let mut reasons: Vec<(String, usize, String)> = vec![];
    for Waiting { reason, message, .. } in waiting {
        match reasons.iter_mut().find(|(r, _, _)| *r == reason) {
            Some(entry) => entry.1 += 1,
            None => reasons.push((reason, 1, message)),
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let parts: Vec<String> = reasons
        .iter()
        .map(|(reason, n, message)| {
            let pods = if *n == 1 { "pod" } else { "pods" };
            if message.is_empty() { format!("{n} {pods} {reason}") } else { format!("{n} {pods} {reason} ({message})") }
        })
        .collect();
    Some(parts.join(", "))
}

/// Container waiting reasons that do not clear by themselves.
const STUCK_REASONS: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
];

/// The label selector of a workload's pods (`spec.selector`), when it selects anything less
/// than every pod.
fn pod_selector(live: &Value) -> Option<&Value> {
    let selector = live.pointer("/spec/selector")?;
    let any = |field: &str| {
        selector.get(field).and_then(|v| v.as_object().map(|o| !o.is_empty()).or(v.as_array().map(|a| !a.is_empty())))
    };
    (any("matchLabels") == Some(true) || any("matchExpressions") == Some(true)).then_some(selector)
}

/// Whether a pod is one of the workload's.
fn selected(selector: &Value, pod: &ObjectMeta) -> bool {
    preflight::selects(selector, pod.labels.as_ref().unwrap_or(&Default::default()))
}

/// `WorkloadStatus.probes` values.
pub const PROBES_APPLIED: &str = "Applied";
const PROBES_PENDING: &str = "RollingOut";
const PROBES_RESTORED: &str = "Restored";
/// Someone else's timings are on the workload and the sale leaves them.
const PROBES_LEFT_AS_SET: &str = "LeftAsSet";

struct Outcome {
    ready: bool,
    restored: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    /// One pod's resource requests, gathered for the preflight capacity check.
    requests: Option<preflight::Resources>,
    actions: Vec<Action>,
    /// The second record of the originals this workload holds after the pass.
    originals: Vec<RecordedOriginal>,
    status: WorkloadStatus,
}

async fn pass(
    client: &Client,
    target: &prescale::Target<'_>,
    sale: &Sale<'_>,
    intent: Intent,
) -> Result<Outcome, kube::Error> {
    let holder = sale.holder;
    let workload = target.workload;
    let resource = prescale::api_resource(workload);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &resource);
    let mut out = Outcome {
        ready: false,
        restored: true,
        problems: vec![],
        warnings: vec![],
        requests: None,
        actions: vec![],
        originals: vec![],
        status: WorkloadStatus { name: target.display(), ..WorkloadStatus::default() },
    };
    let display = target.display();
    let shown = sale.shown.and_then(|c| c.workloads.iter().find(|w| w.name == display));
    let scope = prescale::workload_scope(workload, &target.namespace);
    let Some(live) = sale.view.get(&scope, &workload.target.name).await? else {
        out.problems.push(format!("{} not found", target.display()));
        out.status.message = out.problems.first().cloned();
        return Ok(out);
    };
    let live_json = serde_json::to_value(live.as_ref()).unwrap_or(Value::Null);
    let annotations = live.metadata.annotations.clone().unwrap_or_default();
    let held_by = annotations.get(names::SALE_ANNOTATION).cloned();
    if let Some(other) = held_by.as_deref().filter(|h| *h != holder) {
        let rehearsal = format!("{}/{}", sale.namespace, crate::rehearsal::name(sale.name));
        out.problems.push(match other == rehearsal {
            true => format!(
                "{display} is held by this sale's rehearsal {other}, which restores it first; the sale takes it over then"
            ),
            false => format!("{display} is held by sale {other}; it is left unchanged"),
        });
        out.status.message = out.problems.first().cloned();
        return Ok(out);
    }
    let ours = held_by.is_some();
    // Frozen by a person: nothing is written to it, whatever the intent; what the sale changed
    // stays, and its restore waits for the annotation to go.
    if annotations.contains_key(names::FREEZE_ANNOTATION) {
        out.status.ready_replicas =
            live_json.pointer("/status/readyReplicas").and_then(Value::as_i64).map(|r| r as i32);
        out.status.message = Some(crate::status::WORKLOAD_FROZEN.to_owned());
        out.ready = true;
        out.restored = !ours;
        if intent == Intent::Restore && ours {
            out.problems.push(format!(
                "{} is frozen: its restore waits until the annotation {} is removed",
                target.display(),
                names::FREEZE_ANNOTATION
            ));
        }
        return Ok(out);
    }
    if intent == Intent::Preflight && !ours {
        out.requests = Some(preflight::pod_requests(&live_json));
        if !preflight::has_pdb(sale.view, &target.namespace, &live_json).await? {
            out.warnings.push(format!(
                "{} has no PodDisruptionBudget: a drain or a lost node can take many of its replicas at once",
                target.display()
            ));
        }
    }
    // A sale moved back to Scheduled after preparing puts the workload back until it prepares again.
    let intent = if intent == Intent::Preflight && ours { Intent::Restore } else { intent };

    // The probes' original from its two records; none yet before the first change.
    let probes_annotation = annotations.get(names::ORIGINAL_PROBES).map(String::as_str);
    let probes_record = sale
        .shown
        .into_iter()
        .flat_map(|c| &c.originals)
        .find(|o| o.object == display && o.field == RECORD_PROBES)
        .map(|o| o.value.as_str());
    let probes_trusted = match (probes_annotation, probes_record) {
        (None, None) if !ours => Ok((None, None)),
        _ => {
            trust(probes_annotation, probes_record, probes::parse_original).map(|(v, lost)| (Some(v.to_string()), lost))
        }
    };
    let mut probes_refused = None;
    let probes_original = match (&workload.probes, probes_trusted) {
        (None, _) => None,
        (Some(_), Ok((original, lost))) => {
            if let Some(lost) = lost.filter(|l| l.annotation) {
                out.actions.push(Action {
                    reason: "Recorded",
                    warning: true,
                    ..target.action(
                        "Record",
                        format!("original probe timings of {display}: {lost}; the other record is used"),
                    )
                });
            }
            original
        }
        (Some(p), Err(why)) => {
            // Only a loss when the sale would have recorded something (the probes exist).
            let would_record = probes::plan(&live_json, p, Intent::Hold, None).is_ok_and(|p| p.original.is_some());
            if would_record {
                probes_refused = Some(format!(
                    "{display}: no trusted original of probes (annotation {}, status.clusters[].originals): {why}",
                    names::ORIGINAL_PROBES
                ));
            }
            None
        }
    };

    // Probe timings first: a template change rolls the pods, cheaper on baseline replicas.
    let probe_plan = match &workload.probes {
        Some(p) => {
            match probes::plan(&live_json, p, intent, probes_original.as_deref()) {
                Ok(mut plan) => {
                    if probes_refused.is_some() {
                        // The live timings are the sale's own: never record them as the original.
                        plan.original = None;
                    }
                    // A probe the container does not have is left alone and said so; it blocks nothing.
                    out.warnings.extend(plan.problems.iter().map(|p| format!("{}: {p}", target.display())));
                    Some(plan)
                }
                Err(problem) => {
                    out.problems.push(format!("{}: {problem}; nothing is changed on it", target.display()));
                    out.status.message = Some(out.problems.join("; "));
                    out.status.probes = Some("NotApplicable".into());
                    return Ok(out);
                }
            }
        }
        None => None,
    };
    // Timings someone else put back on a workload the sale holds: re-applied once, else left.
    let mut probe_plan = probe_plan;
    let probes_left = match probe_plan.as_mut() {
        Some(plan) => share_probes(&api, target, &live_json, &annotations, plan, intent).await?,
        None => Shared::default(),
    };
    let probes_in_place = probe_plan.as_ref().is_none_or(|p| p.in_place(&live_json));
    let rolled_out = probes::rolled_out(&live_json);
    // Only the sale's own probe change may hold the scale-up back, and only until the deadline.
    let probe_change = probe_plan.as_ref().is_some_and(|p| !p.set.is_empty() || !p.unset.is_empty());
    let past_deadline = sale.schedule.is_some_and(|s| sale.now >= probe_wait_deadline(&s));
    let may_scale_up = !probe_change || (probes_in_place && rolled_out) || past_deadline;

    let scale = prescale::plan(client, target, &live_json, sale, intent, may_scale_up).await?;
    if intent == Intent::Preflight && !ours {
        out.warnings.extend(gitops_owned(&live, target, probe_plan.as_ref(), scale.mode.as_deref()));
    }
    out.problems.extend(scale.problems.clone());
    out.warnings.extend(scale.notes.clone());
    out.actions.extend(scale.notices.clone());
    out.status.drift = scale.drift.clone();
    if let Some(drift) = &scale.drift
        && shown.and_then(|w| w.drift.as_ref()) != Some(drift)
    {
        out.actions.push(Action {
            reason: "Drift",
            warning: true,
            ..target.action("Keep", format!("{display}: {drift}"))
        });
    }
    if intent != Intent::Hold && out.status.drift.is_none() {
        // What a person changed during the sale stays said after the restore.
        out.status.drift = shown.and_then(|w| w.drift.clone());
    }
    out.status.mode = scale.mode.clone();
    out.status.baseline_replicas = scale.baseline;
    out.status.target_replicas = scale.target;
    out.status.ready_replicas =
        live_json.pointer("/status/readyReplicas").and_then(Value::as_i64).map(|r| r as i32).or(Some(0));
    // No trusted original at the restore: nothing is written to this workload, it keeps what
    // the sale put there, and both records stay as they are for a person to repair.
    let refusal = match intent {
        Intent::Hold => {
            out.problems.extend(probes_refused.map(|r| format!("{r}; the restore will leave its probes as they are")));
            None
        }
        _ => scale.refused.clone().or(probes_refused.map(|r| format!("{r}; nothing is written to it"))),
    };
    if let Some(refusal) = refusal {
        if shown.and_then(|w| w.message.as_deref()).is_none_or(|m| !m.contains(&refusal)) {
            out.actions.push(Action {
                reason: "RestoreRefused",
                warning: true,
                ..target.action("Restore", refusal.clone())
            });
        }
        out.problems.push(refusal);
        out.restored = false;
        out.ready = false;
        out.originals = shown_records(sale, &display);
        out.status.probes = probe_plan.as_ref().map(|_| PROBES_PENDING.to_owned());
        out.status.message = Some(out.problems.iter().chain(&out.warnings).cloned().collect::<Vec<_>>().join("; "));
        return Ok(out);
    }
    out.originals.extend(scale.originals.iter().cloned());
    if intent == Intent::Hold
        && let Some(original) = probe_plan.as_ref().and_then(|p| p.original.clone())
    {
        out.originals.push(RecordedOriginal { object: display.clone(), field: RECORD_PROBES.into(), value: original });
    }
    if intent == Intent::Hold {
        // The same for the second records: one this pass did not write again stays as it was.
        for shown in shown_records(sale, &display) {
            if !out.originals.iter().any(|o| o.field == shown.field) {
                out.originals.push(shown);
            }
        }
    }

    // Compose and apply the workload's part.
    let holding = intent == Intent::Hold;
    let mut annotations_wanted = Map::new();
    if holding && (scale.holds || probe_plan.as_ref().is_some_and(|p| p.original.is_some())) {
        annotations_wanted.insert(names::SALE_ANNOTATION.into(), Value::String(holder.into()));
    }
    if holding {
        if let Some(original) = &scale.record_original {
            annotations_wanted.insert(names::ORIGINAL_REPLICAS.into(), Value::String(original.to_string()));
        }
        if let Some(held) = &scale.held_replicas {
            annotations_wanted.insert(names::HELD_REPLICAS.into(), Value::String(held.to_string()));
        }
        if let Some(original) = probe_plan.as_ref().and_then(|p| p.original.clone()) {
            annotations_wanted.insert(names::ORIGINAL_PROBES.into(), Value::String(original));
        }
        annotations_wanted.extend(probes_left.annotations.clone());
        // An original this pass did not record again (it could not be trusted) stays as found,
        // for the restore to judge, or a person to repair: never dropped while the sale holds.
        for key in [names::ORIGINAL_REPLICAS, names::ORIGINAL_PROBES] {
            if let Some(found) = annotations.get(key) {
                annotations_wanted.entry(key.to_owned()).or_insert_with(|| Value::String(found.clone()));
            }
        }
    }
    let mut spec = Map::new();
    if let Some(replicas) = scale.workload_replicas {
        spec.insert("replicas".into(), json!(replicas));
    }
    if let Some(fragment) = probe_plan.as_ref().and_then(|p| p.container_fragment()) {
        spec.insert("template".into(), json!({"spec": {"containers": [fragment]}}));
    }
    let bookkeeping = [
        names::SALE_ANNOTATION,
        names::ORIGINAL_REPLICAS,
        names::HELD_REPLICAS,
        names::ORIGINAL_PROBES,
        names::PROBES_OVERRIDDEN,
        names::PROBES_LEFT,
    ];
    let stale_annotation =
        bookkeeping.iter().any(|k| annotations.contains_key(*k) && !annotations_wanted.contains_key(*k));
    let annotations_match =
        annotations_wanted.iter().all(|(k, v)| annotations.get(k).map(|a| Value::String(a.clone())) == Some(v.clone()));
    let replicas_match = scale
        .workload_replicas
        .is_none_or(|r| live_json.pointer("/spec/replicas").and_then(Value::as_i64) == Some(i64::from(r)));
    if stale_annotation || !annotations_match || !replicas_match || !probes_in_place {
        let mut metadata = json!({"name": workload.target.name, "namespace": target.namespace});
        if !annotations_wanted.is_empty() {
            metadata["annotations"] = Value::Object(annotations_wanted.clone());
        }
        let doc =
            json!({"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata, "spec": spec});
        let written = api
            .patch(&workload.target.name, &PatchParams::apply(names::FIELD_MANAGER).force(), &Patch::Apply(&doc))
            .await?;
        sale.view.wrote(&scope, &workload.target.name, written.metadata.resource_version.as_deref());
        if !holding && annotations_wanted.is_empty() {
            // Restored: the fields put back are no longer the operator's to own.
            gitops::release(&api, &scope, sale.view, &written.metadata).await;
        }
        if !probes_in_place {
            let verb = if holding { "ApplyProbes" } else { "RestoreProbes" };
            let what = if holding { "applied the sale's probe timings to" } else { "restored the probe timings of" };
            out.actions.push(target.action(
                verb,
                format!(
                    "{what} {} (container {})",
                    target.display(),
                    probe_plan.as_ref().map(|p| p.container.as_str()).unwrap_or("")
                ),
            ));
        }
        if let (false, Some(replicas)) = (replicas_match, scale.workload_replicas) {
            let from = live_json.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let note = if holding {
                format!("scaled {} from {from} to {replicas} replicas", target.display())
            } else {
                format!("restored {} to {replicas} replicas", target.display())
            };
            out.actions.push(target.action(if holding { "ScaleUp" } else { "Restore" }, note));
        }
    }
    out.actions.extend(scale.actions);
    out.actions.extend(probes_left.action.map(|note| {
        let mut action = target.action("ProbesLeft", note);
        action.reason = "ProbesLeft";
        action.warning = true;
        action
    }));
    out.warnings.extend(probes_left.warning.clone());

    out.status.probes = probe_plan.as_ref().map(|p| {
        if probes_left.warning.is_some() {
            PROBES_LEFT_AS_SET.to_owned()
        } else if p.set.is_empty() && p.unset.is_empty() {
            "NotApplicable".to_owned()
        } else if !holding {
            PROBES_RESTORED.to_owned()
        } else if probes_in_place && rolled_out {
            PROBES_APPLIED.to_owned()
        } else {
            PROBES_PENDING.to_owned()
        }
    });
    let ready_replicas = out.status.ready_replicas.unwrap_or(0);
    out.ready = match intent {
        Intent::Preflight => scale.problems.is_empty(),
        Intent::Hold => scale.target.is_some_and(|t| ready_replicas >= t) && scale.problems.is_empty(),
        Intent::Restore => true,
    };
    out.restored = match intent {
        Intent::Hold => false,
        _ => scale.restored && !stale_annotation,
    };
    if intent == Intent::Hold && !out.ready && scale.problems.is_empty() {
        let target_replicas = scale.target.unwrap_or(0);
        out.status.message = Some(format!("{ready_replicas}/{target_replicas} replicas ready"));
        // Pods that cannot start are a problem from Preparing on, not only once the sale is live.
        // Not in the pass that changes the replicas: the new pods do not exist yet, and starting
        // the pods' watch would only delay that pass's status and events.
        if let Some(selector) = pod_selector(&live_json).filter(|_| replicas_match) {
            // One watch of the namespace's pods serves every workload in it.
            let scope = Scope::typed::<Pod>(Some(&target.namespace));
            let labels: Option<std::collections::BTreeMap<String, String>> =
                selector.get("matchLabels").and_then(|l| serde_json::from_value(l.clone()).ok());
            match sale.view.list_where::<Pod>(&scope, labels.as_ref(), |pod| selected(selector, pod)).await {
                Ok(pods) => {
                    out.status.waited_for = waiting_pods(&pods);
                    if let Some(stuck) = stuck_pods(&pods) {
                        out.problems
                            .push(format!("{display}: {ready_replicas}/{target_replicas} replicas ready; {stuck}"));
                    }
                }
                // Without the right to read pods the counts still say it; the reason is extra.
                Err(kube::Error::Api(status)) => {
                    out.warnings.push(format!("{display}: pods not read: {}", status.message))
                }
                Err(other) => return Err(other),
            }
        }
    }
    if !out.problems.is_empty() || !out.warnings.is_empty() {
        let notes: Vec<&str> = out.problems.iter().chain(&out.warnings).map(String::as_str).collect();
        out.status.message = Some(notes.join("; "));
    }
    Ok(out)
}

/// What sharing the probe fields decided for one workload.
#[derive(Default)]
struct Shared {
    /// Bookkeeping annotations to keep on the workload while the sale holds it.
    annotations: Map<String, Value>,
    /// The Event to send, once: the sale now leaves the timings.
    action: Option<String>,
    /// What status says while the timings are left.
    warning: Option<String>,
}

/// Adjusts `plan` for probe timings that someone else changed on a workload the sale already
/// changed: the sale's are re-applied once per distinct change; a person's change, or the
/// same values put back again (a GitOps sync), is left in place, through the restore.
async fn share_probes(
    api: &Api<DynamicObject>,
    target: &prescale::Target<'_>,
    live: &Value,
    annotations: &std::collections::BTreeMap<String, String>,
    plan: &mut probes::ProbePlan,
    intent: Intent,
) -> Result<Shared, kube::Error> {
    let mut shared = Shared::default();
    let container = live
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(plan.container.as_str())));
    let left_to = annotations.get(names::PROBES_LEFT).cloned();
    let recorded = annotations.contains_key(names::ORIGINAL_PROBES);
    let left_to = match (intent, left_to) {
        (Intent::Preflight, _) => return Ok(shared),
        (_, Some(to)) => to,
        // Restoring timings the sale set, or the first apply: nothing is shared yet.
        (Intent::Restore, None) => return Ok(shared),
        (Intent::Hold, None) if !recorded || plan.in_place(live) => {
            if let Some(overridden) = annotations.get(names::PROBES_OVERRIDDEN) {
                shared.annotations.insert(names::PROBES_OVERRIDDEN.into(), Value::String(overridden.clone()));
            }
            return Ok(shared);
        }
        (Intent::Hold, None) => {
            let now = gitops::live_timings(container, plan);
            // Field ownership is read only here, when the timings differ from the sale's.
            let managed = api.get_metadata(&target.workload.target.name).await?.metadata.managed_fields;
            let changers = gitops::owners(&managed.unwrap_or_default(), &gitops::probe_paths(plan));
            match gitops::reapply(&changers, annotations.get(names::PROBES_OVERRIDDEN).map(String::as_str), &now) {
                gitops::Reapply::Apply { overridden } => {
                    shared.annotations.insert(names::PROBES_OVERRIDDEN.into(), Value::String(overridden));
                    return Ok(shared);
                }
                gitops::Reapply::Leave { to } => {
                    shared.action = Some(format!(
                        "left the probe timings {to} put on {} (container {}): re-applying the sale's would roll its pods again; they stay after the sale",
                        target.display(),
                        plan.container
                    ));
                    to
                }
            }
        }
    };
    shared.warning = Some(format!(
        "{}: the probe timings of container {} are left as {left_to} set them (see charts/flashsale-operator/docs/gitops.md)",
        target.display(),
        plan.container
    ));
    if intent == Intent::Hold {
        shared.annotations.insert(names::PROBES_LEFT.into(), Value::String(left_to));
        // The sale's fields follow what is there: nothing changes, nothing is dropped.
        let mut set = Map::new();
        let mut unset = vec![];
        for (probe, fields) in &plan.set {
            let mut now = Map::new();
            for field in fields.as_object().into_iter().flat_map(|f| f.keys()) {
                match container.and_then(|c| c.pointer(&format!("/{probe}/{field}"))) {
                    Some(value) => {
                        now.insert(field.clone(), value.clone());
                    }
                    None => unset.push((probe.clone(), field.clone())),
                }
            }
            set.insert(probe.clone(), Value::Object(now));
        }
        plan.set = set;
        plan.unset = unset;
    } else {
        // The restore leaves what someone else set; a field still at the sale's value is theirs
        // to get back (a person who changed one field did not take the others).
        let sales = target.workload.probes.as_ref().and_then(|p| probes::plan(live, p, Intent::Hold, None).ok());
        let at_sale = |probe: &str, field: &str| {
            let wanted = sales.as_ref().and_then(|s| s.set.get(probe)).and_then(|f| f.get(field));
            wanted.is_some() && container.and_then(|c| c.pointer(&format!("/{probe}/{field}"))) == wanted
        };
        for (probe, fields) in plan.set.iter_mut() {
            if let Some(fields) = fields.as_object_mut() {
                fields.retain(|field, _| at_sale(probe, field));
            }
        }
        plan.set.retain(|_, fields| fields.as_object().is_some_and(|f| !f.is_empty()));
        plan.unset.retain(|(probe, field)| at_sale(probe, field));
    }
    Ok(shared)
}

/// The preflight warnings for fields this sale will change that a GitOps tool applies.
fn gitops_owned(
    live: &DynamicObject,
    target: &prescale::Target<'_>,
    probe_plan: Option<&probes::ProbePlan>,
    mode: Option<&str>,
) -> Option<String> {
    let mut fields: Vec<(&str, Vec<gitops::FieldPath>)> = vec![];
    if mode == Some("Replicas") {
        fields.push(("spec.replicas", vec![gitops::replicas_path()]));
    }
    let probe_fields = probe_plan.map(|p| (format!("the probe timings of container {}", p.container), p));
    if let Some((name, plan)) = &probe_fields {
        // Preflight plans the restore values; the paths are the same fields.
        fields.push((name.as_str(), gitops::probe_paths(plan)));
    }
    if fields.iter().all(|(_, paths)| paths.is_empty()) {
        return None;
    }
    // The view keeps exactly this part of the field ownership (see `view::Fields`).
    let managed = live.metadata.managed_fields.as_deref().unwrap_or_default();
    gitops::gitops_warning(&target.display(), managed, &fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_original_is_trusted_from_two_records_or_refused() {
        let parse = |v: &str| v.parse::<i32>().map_err(|e| e.to_string());
        // (annotation, status record) -> value, or refused
        type Row<'a> = ((Option<&'a str>, Option<&'a str>), Option<i32>);
        let table: [Row; 9] = [
            ((Some("3"), Some("3")), Some(3)),
            ((None, Some("3")), Some(3)),
            ((Some("3"), None), Some(3)),
            ((Some("x"), Some("3")), Some(3)),
            ((Some("3"), Some("x")), Some(3)),
            ((Some("3"), Some("4")), None),
            ((None, None), None),
            ((Some("x"), None), None),
            ((Some("x"), Some("y")), None),
        ];
        for ((annotation, record), want) in table {
            let got = trust(annotation, record, parse);
            assert_eq!(got.as_ref().ok().map(|(v, _)| *v), want, "{annotation:?} {record:?}: {got:?}");
            // A value from one record says which one was lost.
            if let Ok((_, lost)) = got {
                assert_eq!(lost.is_some(), annotation != record, "{annotation:?} {record:?}");
            }
        }
        let disagree = trust(Some("3"), Some("4"), parse).unwrap_err();
        assert!(disagree.contains("disagree"), "{disagree}");
    }

    #[test]
    fn stuck_pods_are_named_with_their_reason() {
        let pod = |status: serde_json::Value| -> Pod { serde_json::from_value(json!({"status": status})).unwrap() };
        let unschedulable = pod(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/1 nodes are available"}]}));
        let crashing =
            pod(json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "a", "imageID": "",
            "ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}));
        let starting = pod(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}));
        assert_eq!(stuck_pods(std::slice::from_ref(&starting)), None);
        let running = pod(json!({"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False"}]}));
        let ready = pod(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}));
        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": "a",
            "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        let all = [unschedulable.clone(), unschedulable, crashing, starting, running, ready.clone(), pulling];
        assert_eq!(
            stuck_pods(&all),
            Some("2 pods Pending: Unschedulable (0/1 nodes are available), 1 pod CrashLoopBackOff".into())
        );
        assert_eq!(
            waiting_pods(&all),
            Some(
                "2 pods Pending: Unschedulable (0/1 nodes are available), 1 pod CrashLoopBackOff, 1 pod Pending: starting, 1 pod Running, not ready, 1 pod ContainerCreating"
                    .into()
            )
        );
        assert_eq!(waiting_pods(std::slice::from_ref(&ready)), None, "a ready pod waits for nothing");
    }

    #[test]
    fn the_probe_rollout_may_hold_the_scale_up_for_half_of_prepare_before() {
        let ts = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let schedule = crate::timeline::Schedule {
            prepare_at: ts("2026-11-10T15:30:00Z"),
            start: ts("2026-11-10T16:00:00Z"),
            end: ts("2026-11-10T18:00:00Z"),
            restore_at: ts("2026-11-10T18:15:00Z"),
        };
        assert_eq!(probe_wait_deadline(&schedule), ts("2026-11-10T15:45:00Z"));
    }

    #[test]
    fn pods_are_selected_by_the_workloads_selector() {
        let pod = |name: &str, labels: &[(&str, &str)]| {
            let mut pod = Pod::default();
            pod.metadata.name = Some(name.into());
            pod.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
            pod
        };
        let pods = || {
            vec![
                pod("web-1", &[("app", "web"), ("tier", "front"), ("pod-template-hash", "abc")]),
                pod("web-canary", &[("app", "web"), ("tier", "canary")]),
                pod("api-1", &[("app", "api"), ("tier", "front")]),
                pod("bare", &[]),
            ]
        };
        let names = |pods: Vec<Pod>| pods.into_iter().filter_map(|p| p.metadata.name).collect::<Vec<_>>();
        let cases = [
            (json!({"spec": {"selector": {"matchLabels": {"app": "web", "tier": "front"}}}}), Some(vec!["web-1"])),
            (
                json!({"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}}}),
                Some(vec!["web-1", "web-canary"]),
            ),
            // A selector that selects every pod, or none given: the pods are not read.
            (json!({"spec": {"selector": {}}}), None),
            (json!({"spec": {}}), None),
        ];
        for (live, want) in cases {
            let got =
                pod_selector(&live).map(|s| names(pods().into_iter().filter(|p| selected(s, &p.metadata)).collect()));
            assert_eq!(got, want.map(|w| w.into_iter().map(String::from).collect()), "{live}");
        }
    }
}
