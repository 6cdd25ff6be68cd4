//! One pass over a sale's workloads in one cluster: the pre-scaling and probe levers both change
//! the workload object, so their changes are composed into a single server-side apply (one
//! field manager owns both sets of fields; applying them separately would drop each other's).

use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Map, Value, json};

use super::{Action, Intent, Report, SALE_ANNOTATION, Sale, gitops, preflight, prescale, probes};
use crate::{
    api::{Workload, WorkloadStatus},
    controller::FIELD_MANAGER,
};

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
            Err(kube::Error::Api(status)) => refused(&target, intent, &status.message),
            Err(other) => return Err(other),
        };
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
        match preflight::allocatable(client).await {
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
fn refused(target: &prescale::Target<'_>, intent: Intent, message: &str) -> Outcome {
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
        status: WorkloadStatus { name: target.display(), message: Some(problem), ..WorkloadStatus::default() },
    }
}

/// `WorkloadStatus.probes` values.
pub const PROBES_APPLIED: &str = "Applied";
const PROBES_PENDING: &str = "RollingOut";
const PROBES_RESTORED: &str = "Restored";
/// Someone else's timings are on the workload and the sale leaves them.
const PROBES_LEFT: &str = "LeftAsSet";

struct Outcome {
    ready: bool,
    restored: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    /// One pod's resource requests, gathered for the preflight capacity check.
    requests: Option<preflight::Resources>,
    actions: Vec<Action>,
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
        status: WorkloadStatus { name: target.display(), ..WorkloadStatus::default() },
    };
    let scope = prescale::workload_scope(workload, &target.namespace);
    let Some(live) = sale.view.get(&scope, &workload.target.name).await? else {
        out.problems.push(format!("{} not found", target.display()));
        out.status.message = out.problems.first().cloned();
        return Ok(out);
    };
    let live_json = serde_json::to_value(live.as_ref()).unwrap_or(Value::Null);
    let annotations = live.metadata.annotations.clone().unwrap_or_default();
    let held_by = annotations.get(SALE_ANNOTATION).cloned();
    if let Some(other) = held_by.as_deref().filter(|h| *h != holder) {
        out.problems.push(format!("{} is held by sale {other}; it is left unchanged", target.display()));
        out.status.message = out.problems.first().cloned();
        return Ok(out);
    }
    let ours = held_by.is_some();
    // Frozen by a person: nothing is written to it, whatever the intent; what the sale changed
    // stays, and its restore waits for the annotation to go.
    if annotations.contains_key(crate::controller::FREEZE_ANNOTATION) {
        out.status.ready_replicas =
            live_json.pointer("/status/readyReplicas").and_then(Value::as_i64).map(|r| r as i32);
        out.status.message = Some(crate::status::WORKLOAD_FROZEN.to_owned());
        out.ready = true;
        out.restored = !ours;
        if intent == Intent::Restore && ours {
            out.problems.push(format!(
                "{} is frozen: its restore waits until the annotation {} is removed",
                target.display(),
                crate::controller::FREEZE_ANNOTATION
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

    // Probe timings first: a template change rolls the pods, cheaper on baseline replicas.
    let probe_plan = match &workload.probes {
        Some(p) => {
            match probes::plan(&live_json, p, intent, annotations.get(probes::ORIGINAL_PROBES).map(String::as_str)) {
                Ok(plan) => {
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

    let scale = prescale::plan(client, target, &live_json, sale, intent, probes_in_place && rolled_out).await?;
    if intent == Intent::Preflight && !ours {
        out.warnings.extend(gitops_owned(&api, target, probe_plan.as_ref(), scale.mode.as_deref()).await?);
    }
    out.problems.extend(scale.problems.clone());
    out.status.mode = scale.mode.clone();
    out.status.baseline_replicas = scale.baseline;
    out.status.target_replicas = scale.target;
    out.status.ready_replicas =
        live_json.pointer("/status/readyReplicas").and_then(Value::as_i64).map(|r| r as i32).or(Some(0));

    // Compose and apply the workload's part.
    let holding = intent == Intent::Hold;
    let mut annotations_wanted = Map::new();
    if holding && (scale.holds || probe_plan.as_ref().is_some_and(|p| p.original.is_some())) {
        annotations_wanted.insert(SALE_ANNOTATION.into(), Value::String(holder.into()));
    }
    if holding {
        if let Some(original) = &scale.record_original {
            annotations_wanted.insert(prescale::ORIGINAL_REPLICAS.into(), Value::String(original.to_string()));
        }
        if let Some(original) = probe_plan.as_ref().and_then(|p| p.original.clone()) {
            annotations_wanted.insert(probes::ORIGINAL_PROBES.into(), Value::String(original));
        }
        annotations_wanted.extend(probes_left.annotations.clone());
    }
    let mut spec = Map::new();
    if let Some(replicas) = scale.workload_replicas {
        spec.insert("replicas".into(), json!(replicas));
    }
    if let Some(fragment) = probe_plan.as_ref().and_then(|p| p.container_fragment()) {
        spec.insert("template".into(), json!({"spec": {"containers": [fragment]}}));
    }
    let bookkeeping = [
        SALE_ANNOTATION,
        prescale::ORIGINAL_REPLICAS,
        probes::ORIGINAL_PROBES,
        gitops::PROBES_OVERRIDDEN,
        gitops::PROBES_LEFT,
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
        let written =
            api.patch(&workload.target.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&doc)).await?;
        sale.view.wrote(&scope, &workload.target.name, written.metadata.resource_version.as_deref());
        if !holding && annotations_wanted.is_empty() {
            // Restored: the fields put back are no longer the operator's to own.
            gitops::release(&api, &scope, sale, &written).await;
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
            PROBES_LEFT.to_owned()
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
    let left_to = annotations.get(gitops::PROBES_LEFT).cloned();
    let recorded = annotations.contains_key(probes::ORIGINAL_PROBES);
    let left_to = match (intent, left_to) {
        (Intent::Preflight, _) => return Ok(shared),
        (_, Some(to)) => to,
        // Restoring timings the sale set, or the first apply: nothing is shared yet.
        (Intent::Restore, None) => return Ok(shared),
        (Intent::Hold, None) if !recorded || plan.in_place(live) => {
            if let Some(overridden) = annotations.get(gitops::PROBES_OVERRIDDEN) {
                shared.annotations.insert(gitops::PROBES_OVERRIDDEN.into(), Value::String(overridden.clone()));
            }
            return Ok(shared);
        }
        (Intent::Hold, None) => {
            let now = gitops::live_timings(container, plan);
            // Field ownership is read only here, when the timings differ from the sale's.
            let managed = api.get_metadata(&target.workload.target.name).await?.metadata.managed_fields;
            let changers = gitops::owners(&managed.unwrap_or_default(), &gitops::probe_paths(plan));
            match gitops::reapply(&changers, annotations.get(gitops::PROBES_OVERRIDDEN).map(String::as_str), &now) {
                gitops::Reapply::Apply { overridden } => {
                    shared.annotations.insert(gitops::PROBES_OVERRIDDEN.into(), Value::String(overridden));
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
        shared.annotations.insert(gitops::PROBES_LEFT.into(), Value::String(left_to));
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
async fn gitops_owned(
    api: &Api<DynamicObject>,
    target: &prescale::Target<'_>,
    probe_plan: Option<&probes::ProbePlan>,
    mode: Option<&str>,
) -> Result<Option<String>, kube::Error> {
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
        return Ok(None);
    }
    let managed = api.get_metadata(&target.workload.target.name).await?.metadata.managed_fields;
    Ok(gitops::gitops_warning(&target.display(), &managed.unwrap_or_default(), &fields))
}
