//! Pre-scaling: peak replicas from Preparing until the restore, then the recorded baseline.
//!
//! This version drives `spec.replicas` directly (mode `Replicas`, and `Auto` where neither an
//! HPA nor CronHPA governs the workload). A workload under an HPA is reported and left alone
//! rather than fought over.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde_json::json;

use k8s_openapi::api::core::v1::ObjectReference;

use super::{Action, Intent, Report, SALE_ANNOTATION};
use crate::{
    api::{ScaleMode, Workload, WorkloadStatus},
    controller::FIELD_MANAGER,
};

/// Annotation recording the replicas a workload had before the sale scaled it.
pub const ORIGINAL_REPLICAS: &str = "flashsale.dev/original-replicas";

/// A workload resolved against the sale's namespace.
pub struct Target<'a> {
    pub workload: &'a Workload,
    pub namespace: String,
}

impl Target<'_> {
    fn display(&self) -> String {
        format!("{} {}/{}", self.workload.target.kind, self.namespace, self.workload.target.name)
    }

    fn action(&self, verb: &'static str, note: String) -> Action {
        let object = ObjectReference {
            api_version: Some(self.workload.target.api_version.clone()),
            kind: Some(self.workload.target.kind.clone()),
            name: Some(self.workload.target.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..ObjectReference::default()
        };
        Action { verb, object, note }
    }
}

/// Runs the lever for every workload in one cluster.
pub async fn run(
    client: &Client,
    sale_ns: &str,
    holder: &str,
    workloads: &[Workload],
    intent: Intent,
) -> Result<Report, kube::Error> {
    let mut report = Report { ready: true, restored: true, ..Report::default() };
    for workload in workloads {
        let target =
            Target { workload, namespace: workload.target.namespace.clone().unwrap_or_else(|| sale_ns.to_owned()) };
        let one = workload_pass(client, &target, holder, intent).await?;
        report.ready &= one.ready;
        report.restored &= one.restored;
        report.problems.extend(one.problem.clone());
        report.actions.extend(one.action.clone());
        report.workloads.push(one.status);
    }
    Ok(report)
}

struct WorkloadOutcome {
    ready: bool,
    restored: bool,
    problem: Option<String>,
    action: Option<Action>,
    status: WorkloadStatus,
}

fn api_resource(workload: &Workload) -> ApiResource {
    let (group, version) = match workload.target.api_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), workload.target.api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &workload.target.kind);
    // Kubernetes' plural for every scalable kind in practice: lower-case kind plus "s".
    ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", workload.target.kind.to_ascii_lowercase()))
}

async fn workload_pass(
    client: &Client,
    target: &Target<'_>,
    holder: &str,
    intent: Intent,
) -> Result<WorkloadOutcome, kube::Error> {
    let workload = target.workload;
    let peak = workload.scale.peak;
    let resource = api_resource(workload);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &target.namespace, &resource);
    let mut status = WorkloadStatus { name: target.display(), ..WorkloadStatus::default() };
    let outcome = |ready, restored, problem: Option<String>, action: Option<Action>, status: WorkloadStatus| {
        WorkloadOutcome { ready, restored, problem, action, status }
    };

    let Some(live) = api.get_opt(&workload.target.name).await? else {
        let problem = format!("{} not found", target.display());
        status.message = Some(problem.clone());
        // Nothing of ours can be on an object that does not exist.
        return Ok(outcome(false, true, Some(problem), None, status));
    };
    let annotations = live.metadata.annotations.clone().unwrap_or_default();
    let held_by = annotations.get(SALE_ANNOTATION).cloned();
    let ours = held_by.as_deref() == Some(holder);
    let replicas = live.data.pointer("/spec/replicas").and_then(|r| r.as_i64()).unwrap_or(1) as i32;
    let ready_replicas = live.data.pointer("/status/readyReplicas").and_then(|r| r.as_i64()).unwrap_or(0) as i32;
    status.ready_replicas = Some(ready_replicas);

    if let Some(other) = held_by.as_deref().filter(|h| *h != holder) {
        let problem = format!("{} is held by sale {other}; it is left unchanged", target.display());
        status.message = Some(problem.clone());
        return Ok(outcome(false, true, Some(problem), None, status));
    }

    // A sale moved back to Scheduled after preparing puts the workload back until it prepares again.
    let intent = if intent == Intent::Preflight && ours { Intent::Restore } else { intent };
    let recorded: Option<i32> = annotations.get(ORIGINAL_REPLICAS).and_then(|v| v.parse().ok());
    let baseline = if ours { recorded.unwrap_or(replicas) } else { replicas };
    status.baseline_replicas = Some(baseline);

    let unsupported =
        if intent != Intent::Restore && !ours { unsupported_mode(client, target, &resource).await? } else { None };
    if let Some(problem) = unsupported {
        status.message = Some(problem.clone());
        return Ok(outcome(intent == Intent::Preflight, true, Some(problem), None, status));
    }
    status.mode = Some("Replicas".into());

    match intent {
        Intent::Preflight => {
            status.target_replicas = Some(replicas);
            Ok(outcome(true, !ours, None, None, status))
        }
        Intent::Hold => {
            status.target_replicas = Some(peak);
            let mut action = None;
            if !ours || replicas != peak || recorded.is_none() {
                let patch = json!({
                    "apiVersion": resource.api_version,
                    "kind": resource.kind,
                    "metadata": {
                        "name": workload.target.name,
                        "namespace": target.namespace,
                        "annotations": {SALE_ANNOTATION: holder, ORIGINAL_REPLICAS: baseline.to_string()},
                    },
                    "spec": {"replicas": peak},
                });
                api.patch(&workload.target.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                    .await?;
                action = Some(
                    target.action("ScaleUp", format!("scaled {} from {baseline} to {peak} replicas", target.display())),
                );
            }
            let ready = ready_replicas >= peak;
            if !ready {
                status.message = Some(format!("{ready_replicas}/{peak} replicas ready"));
            }
            Ok(outcome(ready, false, None, action, status))
        }
        Intent::Restore => {
            status.target_replicas = Some(baseline);
            if !ours {
                return Ok(outcome(true, true, None, None, status));
            }
            // Applying only spec.replicas drops the bookkeeping annotations this manager owns.
            let patch = json!({
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": {"name": workload.target.name, "namespace": target.namespace},
                "spec": {"replicas": baseline},
            });
            api.patch(&workload.target.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
            let action =
                Some(target.action("Restore", format!("restored {} to {baseline} replicas", target.display())));
            Ok(outcome(true, true, None, action, status))
        }
    }
}

/// The replicas a sale would record for `workload` now: the recorded original where a sale
/// already holds it, else its current replicas; `None` when it does not exist. Read-only.
pub async fn baseline(client: &Client, namespace: &str, workload: &Workload) -> Result<Option<i32>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource(workload));
    let Some(live) = api.get_opt(&workload.target.name).await? else {
        return Ok(None);
    };
    let recorded = live.annotations().get(ORIGINAL_REPLICAS).and_then(|v| v.parse().ok());
    let current = live.data.pointer("/spec/replicas").and_then(|r| r.as_i64()).unwrap_or(1) as i32;
    Ok(Some(recorded.unwrap_or(current)))
}

/// Modes this version cannot drive yet, said plainly instead of half-done.
async fn unsupported_mode(
    client: &Client,
    target: &Target<'_>,
    resource: &ApiResource,
) -> Result<Option<String>, kube::Error> {
    let mode = target.workload.scale.mode;
    if matches!(mode, ScaleMode::Hpa | ScaleMode::CronHpa) {
        return Ok(Some(format!(
            "{}: scale mode {mode:?} is not supported by this version; use Replicas",
            target.display()
        )));
    }
    if mode == ScaleMode::Auto {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &target.namespace);
        let governed = hpas.list(&Default::default()).await?.items.into_iter().any(|hpa| {
            hpa.spec.scale_target_ref.kind == resource.kind
                && hpa.spec.scale_target_ref.name == target.workload.target.name
        });
        if governed {
            return Ok(Some(format!(
                "{} is governed by a HorizontalPodAutoscaler; HPA mode is not supported by this version, so it is left unchanged",
                target.display()
            )));
        }
    }
    Ok(None)
}
