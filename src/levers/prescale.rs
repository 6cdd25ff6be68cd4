//! Pre-scaling: peak replicas from Preparing until the restore, then the recorded baseline.
//!
//! Mode `Replicas` sets the workload's `spec.replicas`; mode `HPA` raises the bounds of the
//! HorizontalPodAutoscaler that governs it (min to peak, max to at least peak); `Auto` picks
//! the HPA when one targets the workload, else the replicas. Originals are recorded on the
//! object changed, in the same write.

use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::ObjectReference};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Action, Intent, SALE_ANNOTATION, Sale, cronhpa};
use crate::{
    api::{ScaleMode, Workload},
    controller::FIELD_MANAGER,
    view::Scope,
};

/// Annotation recording the replicas a workload had before the sale scaled it.
pub const ORIGINAL_REPLICAS: &str = "flashsale.dev/original-replicas";

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

/// Annotation on an HPA recording its bounds (and the workload's replicas) before the sale.
pub const ORIGINAL_HPA: &str = "flashsale.dev/original-hpa";

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
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct HpaOriginal {
    min_replicas: i32,
    max_replicas: i32,
    /// The workload's replicas when the sale raised the bounds.
    replicas: i32,
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
    let peak = workload.scale.peak;
    let replicas = live.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1) as i32;
    let recorded: Option<i32> = live
        .pointer(&format!("/metadata/annotations/{}", ORIGINAL_REPLICAS.replace('/', "~1")))
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok());
    let view = sale.view;
    let hpa = view.list_as::<HorizontalPodAutoscaler>(&hpa_scope(&target.namespace)).await?.into_iter().find(|h| {
        h.spec.scale_target_ref.kind == workload.target.kind && h.spec.scale_target_ref.name == workload.target.name
    });
    let hpa_ours =
        hpa.as_ref().is_some_and(|h| h.annotations().get(SALE_ANNOTATION).map(String::as_str) == Some(holder));
    let mut plan = ScalePlan { restored: true, ..ScalePlan::default() };

    // A CronHPA object of this sale for the workload means the CronHPA mode is (or was) in use.
    let cron_name = cronhpa::name(sale.name, workload);
    let crons: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &cronhpa::api_resource());
    let cron_installed = cronhpa::installed(view).await?;
    let cron_live = match cron_installed {
        true => view.get(&cronhpa::scope(&target.namespace), &cron_name).await?.map(|c| (*c).clone()),
        false => None,
    };
    let cron_ours =
        cron_live.as_ref().is_some_and(|c| c.annotations().get(SALE_ANNOTATION).map(String::as_str) == Some(holder));
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
        return cron_plan(client, target, sale, &crons, cron_live, cron_name, replicas, recorded, intent, plan).await;
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
        (true, Some(hpa)) => hpa_plan(client, view, target, hpa, holder, replicas, intent, may_scale_up, plan).await,
        (true, None) => {
            plan.problems.push(format!("{}: its HorizontalPodAutoscaler is gone", target.display()));
            Ok(plan)
        }
        (false, _) => {
            plan.mode = Some("Replicas".into());
            match intent {
                Intent::Preflight => {
                    plan.baseline = Some(replicas);
                }
                Intent::Hold => {
                    let baseline = recorded.unwrap_or(replicas);
                    plan.baseline = Some(baseline);
                    plan.target = Some(peak);
                    if may_scale_up || recorded.is_some() {
                        plan.workload_replicas = Some(peak);
                        plan.record_original = Some(baseline);
                        plan.holds = true;
                    }
                }
                Intent::Restore => {
                    plan.baseline = recorded.or(Some(replicas));
                    plan.target = plan.baseline;
                    plan.workload_replicas = recorded;
                }
            }
            Ok(plan)
        }
    }
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
    let scale_down_target: Option<i32> = live_cron.as_ref().and_then(|c| {
        c.data
            .pointer("/spec/jobs")?
            .as_array()?
            .iter()
            .find(|j| j.get("name").and_then(Value::as_str) == Some(cronhpa::SCALE_DOWN_JOB))?
            .get("targetSize")?
            .as_i64()
            .map(|v| v as i32)
    });
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
        scale_up_settled: cronhpa::settled(&states, cronhpa::SCALE_UP_JOB),
        scale_down_settled: cronhpa::settled(&states, cronhpa::SCALE_DOWN_JOB),
    };
    let decision = cronhpa::decide(&facts);
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
            decision.baseline,
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
            let baseline = decision.baseline;
            plan.actions.push(cron_action(target, &cron_name, format!(
                "scheduled CronHPA {}/{cron_name}: {baseline} -> {peak} replicas at {prepare_at}, back to {baseline} at {restore_at} ({})",
                target.namespace, sale.cron_zone
            )));
        }
    }
    plan.holds = decision.holds;
    plan.record_original = decision.record_original;
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
    holder: &str,
    replicas: i32,
    intent: Intent,
    may_scale_up: bool,
    mut plan: ScalePlan,
) -> Result<ScalePlan, kube::Error> {
    let peak = target.workload.scale.peak;
    let name = hpa.name_any();
    let ours = hpa.annotations().get(SALE_ANNOTATION).map(String::as_str) == Some(holder);
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &target.namespace);
    let live_min = hpa.spec.min_replicas.unwrap_or(1);
    let live_max = hpa.spec.max_replicas;
    let recorded: Option<HpaOriginal> =
        hpa.annotations().get(ORIGINAL_HPA).and_then(|v| serde_json::from_str(v).ok()).filter(|_| ours);
    let original = recorded.unwrap_or(HpaOriginal { min_replicas: live_min, max_replicas: live_max, replicas });
    plan.mode = Some(format!("HPA ({name})"));
    plan.baseline = Some(original.replicas);
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
    let apply = |doc: Value| {
        let api = api.clone();
        let name = name.clone();
        let scope = hpa_scope(&target.namespace);
        async move {
            let written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&doc)).await?;
            view.wrote(&scope, &name, written.metadata.resource_version.as_deref());
            Ok::<_, kube::Error>(written)
        }
    };
    match intent {
        Intent::Preflight => {}
        Intent::Hold => {
            plan.target = Some(peak);
            let want_max = original.max_replicas.max(peak);
            if !(may_scale_up || ours) {
                return Ok(plan);
            }
            plan.holds = true;
            if !ours || live_min != peak || live_max != want_max {
                apply(json!({
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": target.namespace, "annotations": {
                        SALE_ANNOTATION: holder,
                        ORIGINAL_HPA: serde_json::to_string(&original).unwrap_or_default(),
                    }},
                    "spec": {"minReplicas": peak, "maxReplicas": want_max},
                }))
                .await?;
                plan.actions.push(hpa_ref(
                    "ScaleUp",
                    format!(
                        "raised HorizontalPodAutoscaler {}/{name} minReplicas {} -> {peak}, maxReplicas {} -> {want_max}",
                        target.namespace, original.min_replicas, original.max_replicas
                    ),
                ));
            }
        }
        Intent::Restore => {
            let floor = original.replicas.clamp(original.min_replicas, original.max_replicas);
            plan.target = Some(floor);
            if ours {
                apply(json!({
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": target.namespace},
                    "spec": {"minReplicas": original.min_replicas, "maxReplicas": original.max_replicas},
                }))
                .await?;
                plan.actions.push(hpa_ref(
                    "Restore",
                    format!(
                        "restored HorizontalPodAutoscaler {}/{name} to minReplicas {}, maxReplicas {}",
                        target.namespace, original.min_replicas, original.max_replicas
                    ),
                ));
                plan.restored = false;
            }
            // The HPA does not scale down by itself without load metrics; the recorded
            // replicas (within the restored bounds) are put back through the scale subresource.
            if recorded.is_some() && replicas > floor {
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

/// The replicas a sale would record for `workload` now: the recorded original where a sale
/// already holds it, else its current replicas; `None` when it does not exist. Read-only.
pub async fn baseline(client: &Client, target: &Target<'_>) -> Result<Option<i32>, kube::Error> {
    let workload = target.workload;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &api_resource(workload));
    let Some(live) = api.get_opt(&workload.target.name).await? else {
        return Ok(None);
    };
    let recorded = live.annotations().get(ORIGINAL_REPLICAS).and_then(|v| v.parse().ok());
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
