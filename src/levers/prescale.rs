//! Pre-scaling: peak replicas from Preparing until the restore, then the recorded baseline.
//!
//! Mode `Replicas` sets the workload's `spec.replicas`; mode `HPA` raises the bounds of the
//! HorizontalPodAutoscaler that governs it (min to peak, max to at least peak); `Auto` picks
//! the HPA when one targets the workload, else the replicas. Originals are recorded on the
//! object changed, in the same write.

use crate::api::names;
use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::ObjectReference};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Action, Intent, Sale, cronhpa};
use crate::api::RecordedOriginal;
use crate::{
    api::{ScaleMode, Workload},
    view::Scope,
};

/// A workload resolved against the sale's namespace: the only namespace a lever acts in.
pub struct Target<'a> {
    pub workload: &'a Workload,
    /// Always the sale's namespace (see [`Target::confined`]).
    pub namespace: String,
}

impl<'a> Target<'a> {
    /// The workload `spec.workloads[index]` of a sale in `sale_namespace`, or why the levers
    /// leave it alone: a reference to another namespace, or a kind the levers do not know.
    ///
    /// Admission refuses both; this is the defence behind it, for a sale stored before those
    /// rules existed (an update that leaves a field unchanged passes CRD validation ratcheting)
    /// or written by a client that went around them. Nothing is read or written for a refused
    /// workload, in any cluster.
    pub fn confined(workload: &'a Workload, index: usize, sale_namespace: &str) -> Result<Target<'a>, String> {
        let target = &workload.target;
        if let Some(other) = target.namespace.as_deref().filter(|ns| *ns != sale_namespace) {
            return Err(format!(
                "spec.workloads[{index}].ref.namespace: {} {other}/{} is outside the sale's namespace {sale_namespace}; a sale acts only on workloads in its own namespace, so it is left unchanged",
                target.kind, target.name
            ));
        }
        if target.api_version != crate::api::WORKLOAD_API_VERSION || plural(&target.kind).is_none() {
            let known: Vec<&str> = crate::api::WORKLOAD_KINDS.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "spec.workloads[{index}].ref: {} {} is not a kind the levers know ({} of {}); it is left unchanged",
                target.api_version,
                target.kind,
                known.join(" or "),
                crate::api::WORKLOAD_API_VERSION
            ));
        }
        Ok(Target { workload, namespace: sale_namespace.to_owned() })
    }

    pub fn display(&self) -> String {
        format!("{} {}/{}", self.workload.target.kind, self.namespace, self.workload.target.name)
    }

    pub fn action(&self, verb: &'static str, note: String) -> Action {
        let object = ObjectReference {
            api_version: Some(self.workload.target.api_version.clone()),
            kind: Some(self.workload.target.kind.clone()),
            name: Some(self.workload.target.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..ObjectReference::default()
        };
        Action { reason: "Scaled", warning: false, verb, object, note }
    }
}

/// The resource plural of a workload kind the levers know.
fn plural(kind: &str) -> Option<&'static str> {
    crate::api::WORKLOAD_KINDS.iter().find(|(k, _)| *k == kind).map(|(_, p)| *p)
}

/// The API resource of a workload reference (`apps/v1`; a kind outside
/// [`crate::api::WORKLOAD_KINDS`] never gets this far, see [`Target::confined`]).
pub fn api_resource(workload: &Workload) -> ApiResource {
    let kind = &workload.target.kind;
    let gvk = GroupVersionKind::gvk("apps", "v1", kind);
    let fallback = format!("{}s", kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&gvk, plural(kind).unwrap_or(&fallback))
}

/// What pre-scaling wants for one workload in this pass.
#[derive(Debug, Default)]
pub struct ScalePlan {
    /// The mechanism in use, for status.
    pub mode: Option<String>,
    pub baseline: Option<i32>,
    pub target: Option<i32>,
    /// `spec.replicas` to put in the workload's apply (Replicas mode), if any.
    pub workload_replicas: Option<i32>,
    /// The original replicas to record on the workload while holding.
    pub record_original: Option<i32>,
    pub problems: Vec<String>,
    /// Writes made to other objects (the HPA, the scale subresource).
    pub actions: Vec<Action>,
    /// Nothing of the sale's is left on the HPA (the workload's own bookkeeping is checked by
    /// the caller).
    pub restored: bool,
    /// The sale holds this workload's scaling now (the workload is marked with the sale).
    pub holds: bool,
    /// The replicas the sale itself asked for, to record on the workload ([`names::HELD_REPLICAS`]).
    pub held_replicas: Option<i32>,
    /// A person's change to what the sale holds, kept and reported.
    pub drift: Option<String>,
    /// Things a person should know that block nothing (a record repaired, a change kept).
    pub notes: Vec<String>,
    /// Why nothing may be written to this workload in this pass: no trusted original is left.
    pub refused: Option<String>,
    /// The second record of the originals held (see [`crate::api::ClusterStatus::originals`]).
    pub originals: Vec<RecordedOriginal>,
    /// Events to publish once: a record repaired from the other, a person's change kept.
    pub notices: Vec<Action>,
}

/// The `field` of the second record for a workload's replicas.
pub const RECORD_REPLICAS: &str = "replicas";

/// What the sale holds a workload at in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// `spec.replicas` to apply.
    pub replicas: i32,
    /// What the sale asked for itself, recorded as [`names::HELD_REPLICAS`].
    pub held: i32,
    /// The live replicas are a person's, not the sale's.
    pub drift: bool,
}

/// Peak is a floor, never a ceiling: while holding, the replicas are `max(peak, live)`. The
/// sale asks for `max(peak, original)` itself; a live count that differs from what it last asked
/// for (`held`) is a person's change, kept (and floored at peak) with `held` left as it was, so
/// the restore can tell. While `scale_up_now` is false (the sale's probe change is rolling out)
/// the workload stays at its live count. Pure.
pub fn hold_replicas(original: i32, live: i32, peak: i32, held: Option<i32>, scale_up_now: bool) -> Hold {
    let wanted = peak.max(original);
    match held {
        Some(held) if live != held => Hold { replicas: peak.max(live), held, drift: true },
        // The record of what the sale asked for was lost: a count above what it wants now is
        // not the sale's, so it is kept and reported from the next pass on.
        None if live > wanted => Hold { replicas: live, held: wanted, drift: false },
        _ if !scale_up_now => Hold { replicas: live, held: live, drift: false },
        _ => Hold { replicas: wanted, held: wanted, drift: false },
    }
}

/// What the restore does with a workload's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restore {
    /// Put the recorded original back.
    Original(i32),
    /// A person changed the replicas during the sale (`live` differs from `held`, what the sale
    /// last asked for): theirs stay.
    Keep { live: i32, held: i32 },
}

/// The restore goes back to the recorded original unless a person changed the replicas after
/// Preparing. Pure.
pub fn restore_replicas(original: i32, live: i32, held: Option<i32>) -> Restore {
    match held {
        Some(held) if live != held => Restore::Keep { live, held },
        _ => Restore::Original(original),
    }
}

/// A recorded replica count: a whole number, never negative.
pub fn parse_replicas(value: &str) -> Result<i32, String> {
    match value.trim().parse::<i32>() {
        Ok(n) if n >= 0 => Ok(n),
        Ok(n) => Err(format!("{n} is below 0")),
        Err(_) => Err(format!("{value:?} is not a replica count")),
    }
}

/// The CronHPA mode's baseline from its records.
#[derive(Debug, PartialEq, Eq)]
pub struct CronBaseline {
    /// `None`: nothing recorded yet, the CronHPA object decides.
    pub baseline: Option<i32>,
    /// The two records could not be trusted, and the object's scale-down target settled it
    /// by agreeing with one of them: why they could not.
    pub settled_by_object: Option<String>,
}

/// The CronHPA mode's baseline from the annotation and the status record, trusted as in the
/// Replicas mode; when they cannot be, the CronHPA object's scale-down target (a third record,
/// the controller's) settles it only by agreeing with one that is sound. `Err`: nothing can be
/// trusted, and why. Pure.
pub fn cron_baseline(
    annotation: Option<&str>,
    record: Option<&str>,
    object_target: Option<i32>,
) -> Result<CronBaseline, String> {
    match super::workload::trust(annotation, record, parse_replicas) {
        Ok((baseline, _)) => Ok(CronBaseline { baseline: Some(baseline), settled_by_object: None }),
        Err(_) if annotation.is_none() && record.is_none() => {
            Ok(CronBaseline { baseline: None, settled_by_object: None })
        }
        Err(why) => {
            let sound: Vec<i32> =
                [annotation, record].into_iter().flatten().filter_map(|v| parse_replicas(v).ok()).collect();
            match object_target.filter(|t| sound.contains(t)) {
                Some(agreed) => Ok(CronBaseline { baseline: Some(agreed), settled_by_object: Some(why) }),
                None => Err(match object_target {
                    Some(t) => format!("{why}; the CronHPA's scale-down target ({t}) agrees with neither"),
                    None => format!("{why}; no CronHPA of the sale is left to settle it"),
                }),
            }
        }
    }
}

/// The original replicas to trust, from the annotation and the second record (see
/// [`super::workload::trust`]); a lone record of 0 is refused too: putting it back would take
/// the workload down, and only two records agreeing show it really was at 0.
pub fn trusted_replicas(
    annotation: Option<&str>,
    record: Option<&str>,
) -> Result<(i32, Option<super::workload::Lost>), String> {
    match super::workload::trust(annotation, record, parse_replicas)? {
        (0, Some(lost)) => Err(format!("only one record says 0 replicas ({lost})")),
        trusted => Ok(trusted),
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HpaOriginal {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// The workload's replicas when the sale raised the bounds.
    pub replicas: i32,
}

/// A recorded HPA original: JSON with `1 <= minReplicas <= maxReplicas` and `replicas >= 0`.
pub fn parse_hpa(value: &str) -> Result<HpaOriginal, String> {
    let o: HpaOriginal = serde_json::from_str(value).map_err(|e| format!("unreadable ({e})"))?;
    if o.min_replicas < 1 || o.max_replicas < o.min_replicas || o.replicas < 0 {
        return Err(format!(
            "out of range (minReplicas {}, maxReplicas {}, replicas {})",
            o.min_replicas, o.max_replicas, o.replicas
        ));
    }
    Ok(o)
}

/// HPA bounds `(minReplicas, maxReplicas)`.
pub type Bounds = (i32, i32);

/// What the sale holds an HPA's bounds at in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldBounds {
    pub bounds: Bounds,
    /// What the sale asked for itself, recorded as [`names::HELD_HPA`].
    pub held: Bounds,
    /// A bound is a person's, not the sale's.
    pub drift: bool,
}

/// HPA bounds while holding: the sale asks for at least peak for both (never lowering an
/// original above it); a bound a person changed (it differs from what the sale last asked for)
/// is kept, floored at peak. Pure.
pub fn hold_bounds(original: Bounds, live: Bounds, peak: i32, held: Option<Bounds>) -> HoldBounds {
    let wanted = (original.0.max(peak), original.1.max(peak));
    let (min, held_min, min_drift) = match held {
        Some((h, _)) if live.0 != h => (live.0.max(peak), h, true),
        _ => (wanted.0, wanted.0, false),
    };
    let (max, held_max, max_drift) = match held {
        Some((_, h)) if live.1 != h => (live.1.max(peak), h, true),
        _ => (wanted.1, wanted.1, false),
    };
    HoldBounds { bounds: (min, max.max(min)), held: (held_min, held_max), drift: min_drift || max_drift }
}

/// HPA bounds at the restore: each bound back to its original unless a person changed it
/// during the sale; `maxReplicas` never below `minReplicas`. Pure.
pub fn restore_bounds(original: Bounds, live: Bounds, held: Option<Bounds>) -> Bounds {
    let min = match held {
        Some((h, _)) if live.0 != h => live.0,
        _ => original.0,
    };
    let max = match held {
        Some((_, h)) if live.1 != h => live.1,
        _ => original.1,
    };
    (min, max.max(min))
}

/// Plans pre-scaling for one workload. `may_scale_up` is false while the sale's probe timings
/// are still rolling out: scaling waits so the rollout runs on baseline replicas.
pub async fn plan(
    client: &Client,
    target: &Target<'_>,
    live: &Value,
    sale: &Sale<'_>,
    intent: Intent,
    may_scale_up: bool,
) -> Result<ScalePlan, kube::Error> {
    let holder = sale.holder;
    let workload = target.workload;
    let replicas = live.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1) as i32;
    let annotation =
        |key: &str| live.pointer(&format!("/metadata/annotations/{}", key.replace('/', "~1"))).and_then(Value::as_str);
    let display = target.display();
    let record = |field: &str| {
        sale.shown
            .into_iter()
            .flat_map(|c| &c.originals)
            .find(|o| o.object == display && o.field == field)
            .map(|o| o.value.as_str())
    };
    let original_annotation = annotation(names::ORIGINAL_REPLICAS);
    let original_record = record(RECORD_REPLICAS);
    let held = annotation(names::HELD_REPLICAS).and_then(|v| parse_replicas(v).ok());
    // Any trace of an earlier pass: the Replicas mode is in use and its original must be trusted.
    let recorded = (original_annotation.is_some() || original_record.is_some() || held.is_some()).then_some(());
    let view = sale.view;
    let hpa = view.list_as::<HorizontalPodAutoscaler>(&hpa_scope(&target.namespace)).await?.into_iter().find(|h| {
        h.spec.scale_target_ref.kind == workload.target.kind && h.spec.scale_target_ref.name == workload.target.name
    });
    let hpa_ours =
        hpa.as_ref().is_some_and(|h| h.annotations().get(names::SALE_ANNOTATION).map(String::as_str) == Some(holder));
    let mut plan = ScalePlan { restored: true, ..ScalePlan::default() };

    // A CronHPA object of this sale for the workload means the CronHPA mode is (or was) in use.
    let cron_name = cronhpa::name(sale.name, workload);
    let crons: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &cronhpa::api_resource());
    let cron_installed = cronhpa::installed(view).await?;
    let cron_live = match cron_installed {
        true => view.get(&cronhpa::scope(&target.namespace), &cron_name).await?.map(|c| (*c).clone()),
        false => None,
    };
    let cron_ours = cron_live
        .as_ref()
        .is_some_and(|c| c.annotations().get(names::SALE_ANNOTATION).map(String::as_str) == Some(holder));
    if cron_ours || (!hpa_ours && recorded.is_none() && wants_cron(workload.scale.mode, hpa.is_some(), cron_installed))
    {
        if let Some(h) = hpa.as_ref().filter(|_| !cron_ours) {
            plan.problems.push(format!(
                "{}: scale mode CronHPA, but HorizontalPodAutoscaler {} governs it; use mode HPA or Auto (the operator then raises the HPA's bounds itself)",
                target.display(),
                h.name_any()
            ));
            return Ok(plan);
        }
        if workload.scale.mode == ScaleMode::CronHpa && !cron_installed {
            plan.problems.push(format!(
                "{}: scale mode CronHPA, but the CronHorizontalPodAutoscaler CRD ({}) is not installed in this cluster",
                target.display(),
                cronhpa::CRD_NAME
            ));
            return Ok(plan);
        }
        // The baseline the workload records (annotation and status record, as trusted as in
        // the Replicas mode). None yet: the CronHPA object decides. Records that cannot be
        // trusted: the object's scale-down target (a third record, the controller's) settles it
        // only when it agrees with one of them; otherwise nothing is guessed.
        let object_target = cron_live.as_ref().and_then(cronhpa::scale_down_target);
        let baseline = match cron_baseline(original_annotation, original_record, object_target) {
            Ok(CronBaseline { baseline, settled_by_object: Some(why) }) => {
                if intent == Intent::Hold {
                    plan.notices.push(notice(
                        target,
                        "Recorded",
                        format!("original replicas of {display}: {why}; the CronHPA's scale-down target agrees with {}, which is used", baseline.unwrap_or_default()),
                    ));
                }
                baseline
            }
            Ok(CronBaseline { baseline, settled_by_object: None }) => baseline,
            Err(why) => {
                let message = untrusted(&display, RECORD_REPLICAS, names::ORIGINAL_REPLICAS, &why);
                if intent == Intent::Restore {
                    plan.refused = Some(format!("{message}; nothing is written to it"));
                    plan.restored = false;
                } else {
                    plan.problems.push(format!("{message}; the restore will leave its replicas as they are"));
                    plan.holds = true;
                }
                plan.mode = Some(format!("CronHPA ({cron_name})"));
                plan.target = Some(workload.scale.peak.max(replicas));
                return Ok(plan);
            }
        };
        return cron_plan(client, target, sale, &crons, cron_live, cron_name, replicas, baseline, intent, plan).await;
    }

    let use_hpa = if hpa_ours {
        true
    } else if recorded.is_some() {
        false
    } else {
        match workload.scale.mode {
            ScaleMode::Hpa => {
                if hpa.is_none() {
                    plan.problems.push(format!(
                        "{}: scale mode HPA, but no HorizontalPodAutoscaler targets it",
                        target.display()
                    ));
                    return Ok(plan);
                }
                true
            }
            ScaleMode::Auto => hpa.is_some(),
            ScaleMode::Replicas => {
                if let Some(h) = &hpa {
                    plan.problems.push(format!(
                        "{}: scale mode Replicas, but HorizontalPodAutoscaler {} governs it and would undo the scale-up; use mode HPA or Auto",
                        target.display(),
                        h.name_any()
                    ));
                    return Ok(plan);
                }
                false
            }
            // Handled above: only reached when CronHPA cannot be used and was reported.
            ScaleMode::CronHpa => return Ok(plan),
        }
    };

    match (use_hpa, hpa) {
        (true, Some(hpa)) => hpa_plan(client, view, target, hpa, sale, replicas, intent, may_scale_up, plan).await,
        (true, None) => {
            plan.problems.push(format!("{}: its HorizontalPodAutoscaler is gone", target.display()));
            Ok(plan)
        }
        (false, _) => {
            plan.mode = Some("Replicas".into());
            let trusted = match recorded {
                // First pass: the live count is the original.
                None => Ok((replicas, None)),
                Some(()) => trusted_replicas(original_annotation, original_record),
            };
            replicas_plan(target, intent, replicas, held, trusted, may_scale_up, &mut plan);
            Ok(plan)
        }
    }
}

/// Mode `Replicas`: the floor while holding, the original (or a person's count) at the
/// restore, and a refusal when no trusted original is left.
fn replicas_plan(
    target: &Target<'_>,
    intent: Intent,
    replicas: i32,
    held: Option<i32>,
    trusted: Result<(i32, Option<super::workload::Lost>), String>,
    may_scale_up: bool,
    plan: &mut ScalePlan,
) {
    let peak = target.workload.scale.peak;
    let display = target.display();
    let (original, lost) = match (intent, trusted) {
        (Intent::Preflight, _) => {
            plan.baseline = Some(replicas);
            plan.target = Some(replicas);
            plan.notes.extend(above_peak(&display, replicas, peak));
            return;
        }
        (_, Ok(trusted)) => trusted,
        (Intent::Hold, Err(why)) => {
            // Keep holding the floor, but record no new original: it would be a guess.
            let message = untrusted(&display, RECORD_REPLICAS, names::ORIGINAL_REPLICAS, &why);
            plan.problems.push(format!("{message}; the restore will leave its replicas as they are"));
            plan.target = Some(peak.max(replicas));
            plan.workload_replicas = Some(peak.max(replicas));
            plan.held_replicas = held;
            plan.holds = true;
            return;
        }
        (Intent::Restore, Err(why)) => {
            plan.refused = Some(format!(
                "{}; nothing is written to it",
                untrusted(&display, RECORD_REPLICAS, names::ORIGINAL_REPLICAS, &why)
            ));
            plan.target = Some(replicas);
            plan.restored = false;
            return;
        }
    };
    plan.baseline = Some(original);
    // A lost annotation is someone's edit, said once; a lost status record (the operator stopped
    // before writing it) is simply written again.
    if let Some(lost) = lost.filter(|l| l.annotation) {
        plan.notices.push(notice(
            target,
            "Recorded",
            format!("original replicas of {display}: {lost}; the other record ({original}) is used"),
        ));
    }
    match intent {
        Intent::Hold => {
            let hold = hold_replicas(original, replicas, peak, held, may_scale_up);
            plan.target = Some(hold.replicas);
            plan.workload_replicas = Some(hold.replicas);
            plan.record_original = Some(original);
            plan.held_replicas = Some(hold.held);
            plan.holds = true;
            plan.originals.push(RecordedOriginal {
                object: display.clone(),
                field: RECORD_REPLICAS.into(),
                value: original.to_string(),
            });
            plan.drift = match hold.drift {
                false => None,
                true if replicas < peak => Some(format!(
                    "replicas lowered to {replicas} by someone else during the sale; held at the peak {peak} (peak is a floor)"
                )),
                true => Some(format!(
                    "replicas set to {replicas} by someone else during the sale (the sale asked for {}); kept, and kept after the restore",
                    hold.held
                )),
            };
        }
        _ => match restore_replicas(original, replicas, held) {
            Restore::Original(original) => {
                plan.target = Some(original);
                plan.workload_replicas = Some(original);
            }
            Restore::Keep { live, held } => {
                plan.target = Some(live);
                plan.workload_replicas = Some(live);
                let note = format!(
                    "{display}: its replicas were changed to {live} during the sale (the sale asked for {held}); they stay at {live} instead of the original {original}"
                );
                // Its own action: the recorder folds events of one reason, action and object into one.
                plan.notices.push(Action { reason: "Drift", ..notice(target, "Restore", note.clone()) });
                plan.notes.push(note);
            }
        },
    }
}

/// Why an original cannot be trusted, naming the object, the field and both records.
fn untrusted(display: &str, field: &str, annotation: &str, why: &str) -> String {
    format!("{display}: no trusted original of {field} (annotation {annotation}, status.clusters[].originals): {why}")
}

/// A one-off Warning event about a workload.
fn notice(target: &Target<'_>, verb: &'static str, note: String) -> Action {
    Action { reason: "Recorded", warning: true, ..target.action(verb, note) }
}

/// Whether the CronHPA mechanism should scale this workload: mode CronHPA, or Auto on a
/// cluster with the CronHPA CRD and a workload no HPA governs.
fn wants_cron(mode: ScaleMode, has_hpa: bool, cron_installed: bool) -> bool {
    match mode {
        ScaleMode::CronHpa => true,
        ScaleMode::Auto => !has_hpa && cron_installed,
        ScaleMode::Hpa | ScaleMode::Replicas => false,
    }
}

/// The HPAs of a namespace, as the view watches them.
fn hpa_scope(namespace: &str) -> Scope {
    Scope::typed::<HorizontalPodAutoscaler>(Some(namespace))
}

/// The workloads of `workload`'s kind in a namespace, as the view watches them.
pub fn workload_scope(workload: &Workload, namespace: &str) -> Scope {
    Scope::of(&api_resource(workload), Some(namespace))
}

/// The preflight note for a workload already above the sale's peak, in every mode: the sale
/// keeps what it has (peak is a floor, never a ceiling).
fn above_peak(display: &str, replicas: i32, peak: i32) -> Option<String> {
    (replicas > peak).then(|| {
        format!(
            "{display} has {replicas} replicas, more than the sale's peak {peak}: the sale keeps {replicas} (peak is a floor, never a ceiling)"
        )
    })
}

/// CronHPA mode: one object per workload with a run-once scale-up at the Preparing boundary
/// and a run-once scale-down to the baseline at the restore boundary, created while the sale
/// is Scheduled so the scale-up fires even if the operator is down then. The decisions (the
/// baseline taken at Preparing, the operator's own scaling at the boundaries, when the object
/// may go) are [`cronhpa::decide`]'s; this reads what it needs and carries them out.
///
/// A workload another sale's CronHPA already scales in an overlapping window is refused
/// ([`cronhpa::first_claim`]: the first created wins), so two sales' jobs never fight.
#[allow(clippy::too_many_arguments)]
async fn cron_plan(
    client: &Client,
    target: &Target<'_>,
    sale: &Sale<'_>,
    crons: &Api<DynamicObject>,
    live_cron: Option<DynamicObject>,
    cron_name: String,
    replicas: i32,
    recorded: Option<i32>,
    intent: Intent,
    mut plan: ScalePlan,
) -> Result<ScalePlan, kube::Error> {
    let workload = target.workload;
    let peak = workload.scale.peak;
    plan.mode = Some(format!("CronHPA ({cron_name})"));
    let scale_down_target = live_cron.as_ref().and_then(cronhpa::scale_down_target);
    let scale_up_target = live_cron.as_ref().and_then(cronhpa::scale_up_target);
    let states = match live_cron {
        Some(_) => cronhpa::job_states(sale.view, &target.namespace, &cron_name).await?,
        None => vec![],
    };
    let window = sale.schedule.map(|s| (s.prepare_at, s.restore_at));
    let facts = cronhpa::Facts {
        intent,
        now: sale.now,
        window,
        peak,
        replicas,
        recorded,
        object: live_cron.is_some(),
        scale_down_target,
        scale_up_target,
        scale_up_settled: cronhpa::settled(&states, cronhpa::SCALE_UP_JOB),
        scale_down_settled: cronhpa::settled(&states, cronhpa::SCALE_DOWN_JOB),
    };
    let decision = cronhpa::decide(&facts);
    if intent == Intent::Preflight {
        plan.notes.extend(above_peak(&target.display(), replicas, peak));
    }
    plan.baseline = Some(decision.baseline);
    plan.target = Some(decision.target);
    let scale_to = |n: i32| {
        let workloads: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &target.namespace, &api_resource(workload));
        let name = workload.target.name.clone();
        let scope = workload_scope(workload, &target.namespace);
        async move {
            let scale = workloads
                .patch_scale(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": n}})))
                .await?;
            sale.view.wrote(&scope, &name, scale.metadata.resource_version.as_deref());
            Ok::<_, kube::Error>(scale)
        }
    };
    let name = cron_name.as_str();
    let remove = |why: &'static str| async move {
        crons.delete(name, &Default::default()).await?;
        sale.view.deleted(&cronhpa::scope(&target.namespace), name);
        Ok::<_, kube::Error>(cron_action(target, name, format!("removed CronHPA {}/{name}{why}", target.namespace)))
    };

    if let (true, Some((prepare_at, restore_at))) = (decision.render, window) {
        let claims = cronhpa::claims(sale.view, &target.namespace, workload).await?;
        let ours = claims.iter().find(|c| c.name == cron_name && c.holder == sale.holder);
        if let Some(first) = cronhpa::first_claim(sale.holder, (prepare_at, restore_at), ours, &claims) {
            plan.problems.push(format!(
                "{}: sale {} already scales it with CronHPA {}/{} in an overlapping window; this sale creates no CronHPA for it (the first sale to schedule a workload keeps it)",
                target.display(),
                first.holder,
                target.namespace,
                first.name
            ));
            // Both sales created theirs at once: the later one takes its own away again.
            if live_cron.is_some() {
                plan.actions.push(remove(": another sale scales the workload in an overlapping window").await?);
            }
            plan.target = None;
            return Ok(plan);
        }
        let object = match cronhpa::render(
            sale.namespace,
            sale.name,
            sale.holder,
            workload,
            cronhpa::ScaleTarget::workload(workload),
            (decision.scale_up, decision.baseline),
            prepare_at,
            restore_at,
            sale.cron_zone,
        ) {
            Ok(object) => object,
            Err(err) => {
                plan.problems.push(format!("{}: cannot render its CronHPA: {err}", target.display()));
                return Ok(plan);
            }
        };
        if cronhpa::apply(sale.view, &object).await? {
            let (baseline, scale_up) = (decision.baseline, decision.scale_up);
            plan.actions.push(cron_action(target, &cron_name, format!(
                "scheduled CronHPA {}/{cron_name}: {baseline} -> {scale_up} replicas at {prepare_at}, back to {baseline} at {restore_at} ({})",
                target.namespace, sale.cron_zone
            )));
        }
    }
    plan.holds = decision.holds;
    plan.record_original = decision.record_original;
    // The second record of the baseline, as in the Replicas mode (the CronHPA object is the
    // controller's record, gone after the restore).
    if let Some(original) = decision.record_original {
        plan.originals.push(RecordedOriginal {
            object: target.display(),
            field: RECORD_REPLICAS.into(),
            value: original.to_string(),
        });
    }
    if let Some(n) = decision.scale_to {
        scale_to(n).await?;
        let action = if intent == Intent::Hold {
            target.action(
                "ScaleUp",
                format!("scaled {} from {replicas} to {n} replicas at the boundary", target.display()),
            )
        } else {
            target.action("Restore", format!("restored {} to {n} replicas", target.display()))
        };
        plan.actions.push(action);
    }
    if decision.remove {
        plan.actions.push(remove("").await?);
    }
    // The object, or a scale-down not yet seen, is still the sale's.
    if intent != Intent::Hold && (live_cron.is_some() || decision.scale_to.is_some()) {
        plan.restored = false;
    }
    Ok(plan)
}

fn cron_action(target: &Target<'_>, name: &str, note: String) -> Action {
    Action {
        reason: "Scaled",
        warning: false,
        verb: "Schedule",
        object: ObjectReference {
            api_version: Some(cronhpa::API_VERSION.into()),
            kind: Some(cronhpa::KIND.into()),
            name: Some(name.to_owned()),
            namespace: Some(target.namespace.clone()),
            ..ObjectReference::default()
        },
        note,
    }
}

#[allow(clippy::too_many_arguments)]
async fn hpa_plan(
    client: &Client,
    view: &std::sync::Arc<crate::view::View>,
    target: &Target<'_>,
    hpa: HorizontalPodAutoscaler,
    sale: &Sale<'_>,
    replicas: i32,
    intent: Intent,
    may_scale_up: bool,
    mut plan: ScalePlan,
) -> Result<ScalePlan, kube::Error> {
    let holder = sale.holder;
    let peak = target.workload.scale.peak;
    let name = hpa.name_any();
    let display = target.display();
    let ours = hpa.annotations().get(names::SALE_ANNOTATION).map(String::as_str) == Some(holder);
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &target.namespace);
    let live_min = hpa.spec.min_replicas.unwrap_or(1);
    let live_max = hpa.spec.max_replicas;
    let field = format!("hpa/{name}");
    let record = sale
        .shown
        .into_iter()
        .flat_map(|c| &c.originals)
        .find(|o| o.object == display && o.field == field)
        .map(|o| o.value.as_str());
    let annotation = hpa.annotations().get(names::ORIGINAL_HPA).map(String::as_str).filter(|_| ours);
    let held: Option<Bounds> = hpa
        .annotations()
        .get(names::HELD_HPA)
        .filter(|_| ours)
        .and_then(|v| serde_json::from_str::<HeldBounds>(v).ok())
        .map(|h| (h.min_replicas, h.max_replicas));
    plan.mode = Some(format!("HPA ({name})"));
    let hpa_ref = |verb: &'static str, note: String| Action {
        reason: "Scaled",
        warning: false,
        verb,
        object: ObjectReference {
            api_version: Some("autoscaling/v2".into()),
            kind: Some("HorizontalPodAutoscaler".into()),
            name: Some(name.clone()),
            namespace: Some(target.namespace.clone()),
            ..ObjectReference::default()
        },
        note,
    };
    let trusted = match (ours || record.is_some(), intent) {
        (false, _) | (true, Intent::Preflight) => {
            Ok((HpaOriginal { min_replicas: live_min, max_replicas: live_max, replicas }, None))
        }
        (true, _) => super::workload::trust(annotation, record, parse_hpa),
    };
    let (original, lost) = match trusted {
        Ok(trusted) => trusted,
        Err(why) => {
            let message = untrusted(&display, &field, names::ORIGINAL_HPA, &why);
            if intent == Intent::Restore {
                plan.refused = Some(format!("{message}; nothing is written to it"));
                plan.restored = false;
            } else {
                // Still held at the floor; the bounds stay as they are, and so does the record.
                plan.problems.push(format!("{message}; the restore will leave its bounds as they are"));
                plan.holds = true;
            }
            plan.target = Some(peak.max(replicas));
            return Ok(plan);
        }
    };
    if let Some(lost) = lost.filter(|l| l.annotation) {
        plan.notices.push(notice(
            target,
            "Recorded",
            format!(
                "original bounds of HorizontalPodAutoscaler {}/{name}: {lost}; the other record is used",
                target.namespace
            ),
        ));
    }
    plan.baseline = Some(original.replicas);
    let original_json = serde_json::to_string(&original).unwrap_or_default();
    let apply = |doc: Value| {
        let api = api.clone();
        let name = name.clone();
        let scope = hpa_scope(&target.namespace);
        async move {
            let written =
                api.patch(&name, &PatchParams::apply(names::FIELD_MANAGER).force(), &Patch::Apply(&doc)).await?;
            view.wrote(&scope, &name, written.metadata.resource_version.as_deref());
            Ok::<_, kube::Error>(written)
        }
    };
    match intent {
        Intent::Preflight => plan.notes.extend(above_peak(&display, replicas, peak)),
        Intent::Hold => {
            plan.target = Some(peak);
            if !(may_scale_up || ours) {
                return Ok(plan);
            }
            plan.holds = true;
            plan.originals.push(RecordedOriginal { object: display.clone(), field, value: original_json.clone() });
            let hold = hold_bounds((original.min_replicas, original.max_replicas), (live_min, live_max), peak, held);
            let (want_min, want_max) = hold.bounds;
            plan.target = Some(want_min);
            if hold.drift {
                plan.drift = Some(format!(
                    "HorizontalPodAutoscaler {name} bounds set to {live_min}..{live_max} by someone else during the sale (the sale asked for {}..{}); kept",
                    hold.held.0, hold.held.1
                ));
            }
            let held_json = serde_json::to_string(&HeldBounds { min_replicas: hold.held.0, max_replicas: hold.held.1 })
                .unwrap_or_default();
            let annotations_match = annotation == Some(original_json.as_str())
                && hpa.annotations().get(names::HELD_HPA) == Some(&held_json);
            if !ours || !annotations_match || live_min != want_min || live_max != want_max {
                apply(json!({
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": target.namespace, "annotations": {
                        names::SALE_ANNOTATION: holder,
                        names::ORIGINAL_HPA: original_json,
                        names::HELD_HPA: held_json,
                    }},
                    "spec": {"minReplicas": want_min, "maxReplicas": want_max},
                }))
                .await?;
                if live_min != want_min || live_max != want_max {
                    plan.actions.push(hpa_ref(
                        "ScaleUp",
                        format!(
                            "raised HorizontalPodAutoscaler {}/{name} minReplicas {live_min} -> {want_min}, maxReplicas {live_max} -> {want_max}",
                            target.namespace
                        ),
                    ));
                }
            }
        }
        Intent::Restore => {
            let (min, max) = restore_bounds((original.min_replicas, original.max_replicas), (live_min, live_max), held);
            if (min, max) != (original.min_replicas, original.max_replicas) {
                let note = format!(
                    "HorizontalPodAutoscaler {}/{name}: its bounds were changed during the sale; they stay at {min}..{max} instead of the original {}..{}",
                    target.namespace, original.min_replicas, original.max_replicas
                );
                if ours {
                    // Said once: in the pass that lets go of the HPA.
                    plan.notices.push(Action { reason: "Drift", ..hpa_ref("Restore", note.clone()) });
                }
                plan.notes.push(note);
            }
            let floor = original.replicas.clamp(min, max);
            plan.target = Some(floor);
            if ours {
                let written = apply(json!({
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": target.namespace},
                    "spec": {"minReplicas": min, "maxReplicas": max},
                }))
                .await?;
                // Restored: the bounds put back are no longer the operator's to own.
                super::gitops::release(&api, &hpa_scope(&target.namespace), view, &written.metadata).await;
                plan.actions.push(hpa_ref(
                    "Restore",
                    format!(
                        "restored HorizontalPodAutoscaler {}/{name} to minReplicas {min}, maxReplicas {max}",
                        target.namespace
                    ),
                ));
                plan.restored = false;
            }
            // The HPA does not scale down by itself without load metrics; the recorded
            // replicas (within the restored bounds) are put back through the scale subresource.
            if ours && replicas > floor {
                let workloads: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &target.namespace, &api_resource(target.workload));
                let scale = workloads
                    .patch_scale(
                        &target.workload.target.name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": floor}})),
                    )
                    .await?;
                let scope = workload_scope(target.workload, &target.namespace);
                view.wrote(&scope, &target.workload.target.name, scale.metadata.resource_version.as_deref());
                plan.actions
                    .push(target.action("Restore", format!("scaled {} back to {floor} replicas", target.display())));
                plan.restored = false;
            }
        }
    }
    Ok(plan)
}

/// The bounds the sale last asked for, as [`names::HELD_HPA`] records them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct HeldBounds {
    min_replicas: i32,
    max_replicas: i32,
}

/// The replicas a sale would record for `workload` now: the recorded original where a sale
/// already holds it, else its current replicas; `None` when it does not exist. Read-only.
pub async fn baseline(client: &Client, target: &Target<'_>) -> Result<Option<i32>, kube::Error> {
    let workload = target.workload;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &api_resource(workload));
    let Some(live) = api.get_opt(&workload.target.name).await? else {
        return Ok(None);
    };
    let recorded = live.annotations().get(names::ORIGINAL_REPLICAS).and_then(|v| v.parse().ok());
    let current = live.data.pointer("/spec/replicas").and_then(|r| r.as_i64()).unwrap_or(1) as i32;
    Ok(Some(recorded.unwrap_or(current)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(reference: serde_json::Value) -> Workload {
        serde_json::from_value(json!({"ref": reference, "scale": {"peak": 3}})).unwrap()
    }

    #[test]
    fn peak_is_a_floor_never_a_ceiling_while_holding() {
        // (original, live, peak, held by the sale, scale up now) -> (replicas, held, drift)
        let table = [
            // First pass: scale up to peak, record what the sale asks for.
            ((2, 2, 4, None, true), (4, 4, false)),
            // A workload above peak stays above it.
            ((6, 6, 4, None, true), (6, 6, false)),
            // The sale's own scale-up, seen again: nothing changes.
            ((2, 4, 4, Some(4), true), (4, 4, false)),
            // On-call scaled up to 9 during the sale: kept, reported, the sale's ask kept.
            ((2, 9, 4, Some(4), true), (9, 4, true)),
            // Someone scaled below peak: back to the floor, still a person's change.
            ((2, 3, 4, Some(4), true), (4, 4, true)),
            // The peak raised in the spec: the sale asks for the new peak.
            ((2, 4, 6, Some(4), true), (6, 6, false)),
            // The peak lowered in the spec, nobody else touched it: down to the new peak.
            ((2, 6, 4, Some(6), true), (4, 4, false)),
            // The probe change still rolling out: stay at the live count for now.
            ((2, 2, 4, None, false), (2, 2, false)),
            ((2, 2, 4, Some(2), true), (4, 4, false)),
            // What the sale asked for was lost and the count is above it: kept, not guessed.
            ((2, 9, 4, None, true), (9, 4, false)),
        ];
        for ((original, live, peak, held, now), (replicas, want_held, drift)) in table {
            let got = hold_replicas(original, live, peak, held, now);
            assert_eq!(
                got,
                Hold { replicas, held: want_held, drift },
                "original {original}, live {live}, peak {peak}, held {held:?}, scale up now {now}"
            );
        }
    }

    #[test]
    fn the_restore_keeps_a_persons_replicas() {
        // (original, live, held by the sale) -> decision
        let table = [
            ((2, 4, Some(4)), Restore::Original(2)),
            ((6, 6, Some(6)), Restore::Original(6)),
            ((2, 9, Some(4)), Restore::Keep { live: 9, held: 4 }),
            ((2, 3, Some(4)), Restore::Keep { live: 3, held: 4 }),
            // Nothing says what the sale asked for: the original goes back.
            ((2, 4, None), Restore::Original(2)),
        ];
        for ((original, live, held), want) in table {
            assert_eq!(restore_replicas(original, live, held), want, "original {original}, live {live}, held {held:?}");
        }
    }

    #[test]
    fn the_cronhpa_settles_disagreeing_records_only_by_agreeing_with_one() {
        let got = |a, r, t| cron_baseline(a, r, t).map(|b| (b.baseline, b.settled_by_object.is_some()));
        // (annotation, status record, object's target) -> (baseline, settled by the object), or refused
        assert_eq!(got(None, None, Some(5)), Ok((None, false)));
        assert_eq!(got(Some("2"), Some("2"), Some(7)), Ok((Some(2), false)));
        assert_eq!(got(None, Some("2"), None), Ok((Some(2), false)));
        assert_eq!(got(Some("3"), Some("2"), Some(2)), Ok((Some(2), true)));
        for (a, r, t, why) in [
            (Some("3"), Some("2"), Some(4), "agrees with neither"),
            (Some("3"), Some("2"), None, "no CronHPA of the sale is left"),
            (Some("x"), Some("-1"), Some(2), "agrees with neither"),
            (Some("-1"), None, Some(2), "agrees with neither"),
        ] {
            let refused = cron_baseline(a, r, t).expect_err("refused");
            assert!(refused.contains(why), "{a:?} {r:?} {t:?}: {refused}");
        }
    }

    #[test]
    fn replica_originals_are_trusted_only_when_sound() {
        // (annotation, status record) -> trusted value, or refused
        type Row<'a> = ((Option<&'a str>, Option<&'a str>), Option<i32>);
        let table: [Row; 11] = [
            ((Some("2"), Some("2")), Some(2)),
            ((None, Some("2")), Some(2)),
            ((Some("2"), None), Some(2)),
            ((Some("garbage"), Some("2")), Some(2)),
            ((Some("-1"), Some("2")), Some(2)),
            ((Some("2"), Some("7")), None),
            ((None, None), None),
            ((Some("-1"), None), None),
            ((Some("garbage"), Some("x")), None),
            // 0 only when both records say so.
            ((Some("0"), Some("0")), Some(0)),
            ((Some("0"), None), None),
        ];
        for ((annotation, record), want) in table {
            let got = trusted_replicas(annotation, record).ok().map(|(v, _)| v);
            assert_eq!(got, want, "annotation {annotation:?}, record {record:?}");
        }
        let (_, lost) = trusted_replicas(Some("x"), Some("2")).unwrap();
        assert!(lost.is_some_and(|l| l.annotation && l.why.contains("annotation is unsound")));
    }

    #[test]
    fn hpa_bounds_are_raised_to_peak_and_never_lowered_below_a_persons() {
        // (original, live, peak, held) -> (bounds, held, drift)
        let table = [
            (((2, 5), (2, 5), 8, None), ((8, 8), (8, 8), false)),
            (((10, 20), (10, 20), 8, None), ((10, 20), (10, 20), false)),
            (((2, 5), (8, 8), 8, Some((8, 8))), ((8, 8), (8, 8), false)),
            // A person raised both bounds: kept.
            (((2, 5), (10, 30), 8, Some((8, 8))), ((10, 30), (8, 8), true)),
            // A person lowered min below peak: floored at peak.
            (((2, 5), (3, 8), 8, Some((8, 8))), ((8, 8), (8, 8), true)),
        ];
        for ((original, live, peak, held), (bounds, want_held, drift)) in table {
            assert_eq!(
                hold_bounds(original, live, peak, held),
                HoldBounds { bounds, held: want_held, drift },
                "original {original:?}, live {live:?}, peak {peak}, held {held:?}"
            );
        }
        // The restore: originals back unless a person changed a bound; max never below min.
        let restores = [
            (((2, 5), (8, 8), Some((8, 8))), (2, 5)),
            (((2, 5), (8, 30), Some((8, 8))), (2, 30)),
            (((2, 5), (10, 10), Some((8, 10))), (10, 10)),
            (((2, 5), (8, 8), None), (2, 5)),
        ];
        for ((original, live, held), want) in restores {
            assert_eq!(restore_bounds(original, live, held), want, "{original:?} {live:?} {held:?}");
        }
        assert!(parse_hpa(r#"{"minReplicas":0,"maxReplicas":5,"replicas":2}"#).is_err());
        assert!(parse_hpa(r#"{"minReplicas":6,"maxReplicas":5,"replicas":2}"#).is_err());
        assert!(parse_hpa("{").is_err());
        assert_eq!(
            parse_hpa(r#"{"minReplicas":2,"maxReplicas":5,"replicas":2}"#),
            Ok(HpaOriginal { min_replicas: 2, max_replicas: 5, replicas: 2 })
        );
    }

    #[test]
    fn a_target_is_always_in_the_sales_namespace() {
        let own = workload(json!({"kind": "Deployment", "name": "web"}));
        let target = Target::confined(&own, 0, "shop").unwrap();
        assert_eq!((target.namespace.as_str(), target.display()), ("shop", "Deployment shop/web".to_owned()));
        let explicit = workload(json!({"kind": "StatefulSet", "name": "db", "namespace": "shop"}));
        assert_eq!(Target::confined(&explicit, 0, "shop").unwrap().namespace, "shop");
        assert_eq!(api_resource(&explicit).plural, "statefulsets");
    }

    #[test]
    fn a_reference_elsewhere_or_of_an_unknown_kind_is_refused_naming_the_field() {
        let elsewhere = workload(json!({"kind": "Deployment", "name": "dns", "namespace": "kube-system"}));
        let refusal = Target::confined(&elsewhere, 2, "shop").err().unwrap();
        assert!(
            refusal.starts_with("spec.workloads[2].ref.namespace: Deployment kube-system/dns is outside"),
            "{refusal}"
        );
        let daemonset = workload(json!({"kind": "DaemonSet", "name": "agent"}));
        let refusal = Target::confined(&daemonset, 0, "shop").err().unwrap();
        assert!(refusal.starts_with("spec.workloads[0].ref: apps/v1 DaemonSet is not a kind"), "{refusal}");
        let other_group = workload(json!({"apiVersion": "example.com/v1", "kind": "Deployment", "name": "web"}));
        assert!(Target::confined(&other_group, 0, "shop").is_err());
    }
}
