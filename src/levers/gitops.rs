//! Sharing a workload with GitOps tools and people: who owns the fields the sale changes, when
//! the sale re-applies its probe timings after someone put others back, and when it leaves
//! them as that someone set them.
//!
//! A GitOps controller (Argo CD, Flux, Helm) applies the workload from Git again and again; when
//! Git holds the pre-sale probe timings, every sync puts them back. Re-applying the sale's
//! after every sync is a rollout loop (two rollouts per sync, all night). So the sale re-applies
//! its timings once per distinct change: when the same values come back after that re-apply,
//! or when a person (kubectl) changed them, the sale leaves them, says so, and leaves them at the
//! restore too. `charts/flashsale-operator/docs/gitops.md` tells each tool how to leave the sale's
//! fields alone instead.
//!
//! Field ownership is read from `metadata.managedFields`. The views keep only the part of it
//! under a workload's replicas and probes (what preflight's warning reads at every pass); the
//! decisions while a sale holds read the whole of it from the API server, once per decision.

use crate::api::names;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::probes::ProbePlan;
use crate::view::{Scope, View};

/// A path in a `managedFields` `fieldsV1` tree: `["f:spec", "f:replicas"]`.
pub type FieldPath = Vec<String>;

/// The `fieldsV1` path of `spec.replicas`.
pub fn replicas_path() -> FieldPath {
    vec!["f:spec".into(), "f:replicas".into()]
}

/// The `fieldsV1` paths of the timing fields `plan` sets on its container.
pub fn probe_paths(plan: &ProbePlan) -> Vec<FieldPath> {
    let container = format!("k:{}", serde_json::json!({"name": plan.container}));
    plan.set
        .iter()
        .flat_map(|(probe, fields)| {
            let fields = fields.as_object().map(|f| f.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            let container = container.clone();
            fields.into_iter().map(move |field| {
                [
                    "f:spec",
                    "f:template",
                    "f:spec",
                    "f:containers",
                    &container,
                    &format!("f:{probe}"),
                    &format!("f:{field}"),
                ]
                .map(str::to_owned)
                .to_vec()
            })
        })
        .collect()
}

/// The managers other than the operator that own any of `paths`, in `managedFields` order,
/// each once.
pub fn owners(managed: &[ManagedFieldsEntry], paths: &[FieldPath]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for entry in managed {
        let Some(manager) = entry.manager.as_deref().filter(|m| *m != names::FIELD_MANAGER) else { continue };
        let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else { continue };
        let owns = paths.iter().any(|path| path.iter().try_fold(fields, |node, key| node.get(key)).is_some());
        if owns && !out.iter().any(|m| m == manager) {
            out.push(manager.to_owned());
        }
    }
    out
}

/// The GitOps tool behind a field manager's name, for messages.
pub fn tool(manager: &str) -> Option<&'static str> {
    match manager {
        "argocd-controller" | "argocd-application-controller" => Some("Argo CD"),
        "kustomize-controller" => Some("Flux"),
        "helm-controller" => Some("Flux (helm-controller)"),
        "helm" => Some("Helm"),
        _ => None,
    }
}

/// Whether a field manager is a person at a terminal (kubectl's managers, `kubectl edit` and
/// `kubectl patch` among them) rather than a controller.
pub fn is_person(manager: &str) -> bool {
    manager == "kubectl" || manager.starts_with("kubectl-")
}

/// A manager as a person reads it: `kustomize-controller (Flux)`.
pub fn describe(manager: &str) -> String {
    match tool(manager) {
        Some(tool) => format!("{manager} ({tool})"),
        None => manager.to_owned(),
    }
}

/// The live values of the timing fields `plan` sets, as JSON (`null` for an unset field): what
/// someone else put there, compared across passes.
pub fn live_timings(container: Option<&Value>, plan: &ProbePlan) -> String {
    let mut out = Map::new();
    for (probe, fields) in &plan.set {
        let live: Map<String, Value> = fields
            .as_object()
            .into_iter()
            .flat_map(|f| f.keys())
            .map(|field| {
                let value = container.and_then(|c| c.pointer(&format!("/{probe}/{field}"))).cloned();
                (field.clone(), value.unwrap_or(Value::Null))
            })
            .collect();
        out.insert(probe.clone(), Value::Object(live));
    }
    Value::Object(out).to_string()
}

/// What the sale does when its probe timings are not on a workload it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reapply {
    /// Write the sale's timings, remembering what was there (`names::PROBES_OVERRIDDEN`).
    Apply { overridden: String },
    /// Leave the timings as they are, naming who set them.
    Leave { to: String },
}

/// Decides a re-apply of the sale's probe timings on a workload the sale already changed.
///
/// `changers` own the drifted fields now (not the operator); `overridden` is what the sale
/// replaced at its last re-apply; `live` is what is there now. A person's change wins at once;
/// anyone else's wins when the same values come back after the sale re-applied once.
pub fn reapply(changers: &[String], overridden: Option<&str>, live: &str) -> Reapply {
    let who = || match changers {
        [] => "another writer".to_owned(),
        some => some.iter().map(|m| describe(m)).collect::<Vec<_>>().join(", "),
    };
    if changers.iter().any(|m| is_person(m)) || overridden == Some(live) {
        return Reapply::Leave { to: who() };
    }
    Reapply::Apply { overridden: live.to_owned() }
}

/// The preflight warning for fields the sale will change that a GitOps tool applies: its next
/// sync during the sale puts them back.
pub fn gitops_warning(
    display: &str,
    managed: &[ManagedFieldsEntry],
    fields: &[(&str, Vec<FieldPath>)],
) -> Option<String> {
    let mut held: Vec<String> = vec![];
    for (name, paths) in fields {
        for manager in owners(managed, paths).into_iter().filter(|m| tool(m).is_some()) {
            held.push(format!("{name} by {}", describe(&manager)));
        }
    }
    if held.is_empty() {
        return None;
    }
    Some(format!(
        "{display}: {} applied from Git; a sync during the sale puts them back (the sale re-applies its probe timings once, then leaves them); set the tool to ignore the fields the operator writes, see charts/flashsale-operator/docs/gitops.md",
        held.join(", ")
    ))
}

/// `managedFields` without the operator's entries, or `None` when there is nothing to drop (or
/// only the operator's entries, which the API server would not let go of: an empty list is ignored).
pub fn without_ours(managed: &[ManagedFieldsEntry]) -> Option<Vec<ManagedFieldsEntry>> {
    let others: Vec<ManagedFieldsEntry> =
        managed.iter().filter(|e| e.manager.as_deref() != Some(names::FIELD_MANAGER)).cloned().collect();
    (others.len() < managed.len() && !others.is_empty()).then_some(others)
}

/// Drops the operator's field ownership from an object it has just restored, so a GitOps tool
/// that applies those fields later takes them without a conflict, and ignore rules keyed on the
/// operator's manager no longer hide them. Guarded by the resourceVersion read: if anyone wrote
/// in between, the ownership is read again and the release retried (three tries in all).
pub async fn release<K>(api: &Api<K>, scope: &Scope, view: &View, written: &ObjectMeta)
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = written.name.clone().unwrap_or_default();
    let mut meta = written.clone();
    // A controller writing the object's status just after the restore (the scale-down's
    // rollout) makes the guard fail: read the ownership again and retry, a few times.
    for _ in 0..3 {
        let Some(others) = without_ours(meta.managed_fields.as_deref().unwrap_or_default()) else { return };
        let patch = json!({"metadata": {"resourceVersion": meta.resource_version, "managedFields": others}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(released) => return view.wrote(scope, &name, released.meta().resource_version.as_deref()),
            Err(kube::Error::Api(status)) if status.code == 409 => match api.get_metadata(&name).await {
                Ok(fresh) => meta = fresh.metadata,
                Err(error) => return tracing::info!(object = %name, %error, "field ownership kept after the restore"),
            },
            Err(error) => return tracing::info!(object = %name, %error, "field ownership kept after the restore"),
        }
    }
    tracing::info!(object = %name, "field ownership kept after the restore: the object kept changing");
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    fn entry(manager: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    fn plan() -> ProbePlan {
        let mut set = Map::new();
        set.insert("readinessProbe".into(), json!({"periodSeconds": 2, "failureThreshold": 1}));
        ProbePlan { container: "app".into(), set, ..ProbePlan::default() }
    }

    fn probe_fields(fields: Value) -> Value {
        json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {"f:readinessProbe": fields}}}}}})
    }

    #[test]
    fn owners_are_the_other_managers_of_the_fields() {
        let managed = [
            entry("kube-controller-manager", json!({"f:status": {"f:replicas": {}}})),
            entry(names::FIELD_MANAGER, json!({"f:spec": {"f:replicas": {}}})),
            entry("kustomize-controller", probe_fields(json!({"f:periodSeconds": {}}))),
            entry("kubectl-edit", probe_fields(json!({"f:httpGet": {}}))),
        ];
        let cases: [(&[FieldPath], &[&str]); 3] =
            [(&probe_paths(&plan()), &["kustomize-controller"]), (&[replicas_path()], &[]), (&[], &[])];
        for (paths, want) in cases {
            assert_eq!(owners(&managed, paths), want, "{paths:?}");
        }
    }

    #[test]
    fn probe_paths_name_each_field_of_the_container() {
        let paths = probe_paths(&plan());
        assert_eq!(paths.len(), 2);
        assert!(
            paths.contains(
                &[
                    "f:spec",
                    "f:template",
                    "f:spec",
                    "f:containers",
                    "k:{\"name\":\"app\"}",
                    "f:readinessProbe",
                    "f:periodSeconds"
                ]
                .map(str::to_owned)
                .to_vec()
            )
        );
    }

    #[test]
    fn reapply_once_per_change_and_never_against_a_person() {
        let flux = vec!["kustomize-controller".to_owned()];
        let person = vec!["kubectl-edit".to_owned()];
        let cases = [
            // (changers, overridden, live, leave?)
            (flux.clone(), None, "A", false),
            (flux.clone(), Some("A"), "A", true),
            (flux.clone(), Some("A"), "B", false),
            (person.clone(), None, "A", true),
            (vec![], None, "A", false),
            (vec![], Some("A"), "A", true),
        ];
        for (changers, overridden, live, leave) in cases {
            let got = reapply(&changers, overridden, live);
            assert_eq!(matches!(got, Reapply::Leave { .. }), leave, "{changers:?} {overridden:?} {live}: {got:?}");
            if let Reapply::Apply { overridden } = got {
                assert_eq!(overridden, live);
            }
        }
        assert_eq!(reapply(&flux, Some("A"), "A"), Reapply::Leave { to: "kustomize-controller (Flux)".into() });
    }

    #[test]
    fn ownership_is_dropped_only_when_others_remain() {
        let creator = entry("kubectl-client-side-apply", json!({"f:spec": {}}));
        let ours = entry(names::FIELD_MANAGER, json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(without_ours(&[creator.clone(), ours.clone()]), Some(vec![creator.clone()]));
        assert_eq!(without_ours(std::slice::from_ref(&creator)), None);
        assert_eq!(without_ours(&[ours]), None);
    }

    #[test]
    fn live_timings_show_unset_fields_as_null() {
        let container = json!({"name": "app", "readinessProbe": {"periodSeconds": 10}});
        let got: Value = serde_json::from_str(&live_timings(Some(&container), &plan())).unwrap();
        assert_eq!(got, json!({"readinessProbe": {"periodSeconds": 10, "failureThreshold": null}}));
    }

    #[test]
    fn preflight_warns_only_for_gitops_managers() {
        let probes = probe_paths(&plan());
        let fields = [("spec.replicas", vec![replicas_path()]), ("the probe timings of container app", probes)];
        let gitops = [
            entry("argocd-controller", json!({"f:spec": {"f:replicas": {}}})),
            entry("kubectl-client-side-apply", probe_fields(json!({"f:periodSeconds": {}}))),
        ];
        let warning = gitops_warning("Deployment shop/web", &gitops, &fields).unwrap();
        assert!(warning.contains("spec.replicas by argocd-controller (Argo CD)"), "{warning}");
        assert!(!warning.contains("kubectl"), "{warning}");
        assert!(warning.contains("docs/gitops.md"), "{warning}");
        let people = [entry("kubectl-client-side-apply", json!({"f:spec": {"f:replicas": {}}}))];
        assert_eq!(gitops_warning("Deployment shop/web", &people, &fields), None);
    }
}
