//! Probe policies: aggressive readiness and conservative liveness timings for the sale, on one
//! container per workload. Only timing fields change, never the handler (path, port, command).
//!
//! Pure: the plan is computed from the live workload; `levers::workload` applies it together
//! with the other levers' changes to the same object.

use serde_json::{Map, Value};

use super::Intent;
use crate::api::{ProbeTiming, Probes};

/// The timing fields this lever may change.
pub const TIMING_FIELDS: [&str; 5] =
    ["periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold", "initialDelaySeconds"];

/// What the lever wants on one workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbePlan {
    /// The container whose probes change.
    pub container: String,
    /// Per probe (`livenessProbe`, `readinessProbe`), the timing fields to set.
    pub set: Map<String, Value>,
    /// Per probe, the timing fields that must be unset (restoring a field that had no value).
    pub unset: Vec<(String, String)>,
    /// The original to record on the workload while the sale holds it.
    pub original: Option<String>,
    /// Things a person should know (a probe the container does not have).
    pub problems: Vec<String>,
}

impl ProbePlan {
    /// Whether the live workload already shows this plan.
    pub fn in_place(&self, live: &Value) -> bool {
        let Some(container) = container(live, &self.container) else { return false };
        let set_ok = self.set.iter().all(|(probe, fields)| {
            fields.as_object().is_some_and(|fields| {
                fields.iter().all(|(field, want)| container.pointer(&format!("/{probe}/{field}")) == Some(want))
            })
        });
        let unset_ok =
            self.unset.iter().all(|(probe, field)| container.pointer(&format!("/{probe}/{field}")).is_none());
        set_ok && unset_ok
    }

    /// The container fragment for a server-side apply, or `None` when nothing is set.
    pub fn container_fragment(&self) -> Option<Value> {
        if self.set.is_empty() {
            return None;
        }
        let mut fragment = Map::new();
        fragment.insert("name".into(), Value::String(self.container.clone()));
        for (probe, fields) in &self.set {
            fragment.insert(probe.clone(), fields.clone());
        }
        Some(Value::Object(fragment))
    }
}

/// The containers of a workload's pod template.
fn containers(live: &Value) -> Option<&Vec<Value>> {
    live.pointer("/spec/template/spec/containers")?.as_array()
}

fn container<'a>(live: &'a Value, name: &str) -> Option<&'a Value> {
    containers(live)?.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn timing_json(timing: &ProbeTiming) -> Map<String, Value> {
    let mut out = Map::new();
    let fields = [
        ("periodSeconds", timing.period_seconds),
        ("timeoutSeconds", timing.timeout_seconds),
        ("failureThreshold", timing.failure_threshold),
        ("successThreshold", timing.success_threshold),
        ("initialDelaySeconds", timing.initial_delay_seconds),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            out.insert(name.into(), Value::from(v));
        }
    }
    out
}

/// The plan for `probes` on the live workload.
///
/// `recorded` is the workload's `flashsale.dev/original-probes` annotation when the sale
/// already holds it. `Err` is a problem that blocks the lever (the named container does not
/// exist); a missing probe on an existing container is only reported.
pub fn plan(live: &Value, probes: &Probes, intent: Intent, recorded: Option<&str>) -> Result<ProbePlan, String> {
    let name = match &probes.container {
        Some(name) => name.clone(),
        None => containers(live)
            .and_then(|c| c.first())
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or("the pod template has no containers")?,
    };
    let live_container = container(live, &name).ok_or_else(|| format!("container {name:?} not found"))?;
    let mut plan = ProbePlan { container: name.clone(), ..ProbePlan::default() };
    let recorded: Option<Map<String, Value>> =
        recorded.and_then(|r| serde_json::from_str::<Value>(r).ok()).and_then(|v| v.as_object().cloned());
    let mut original = Map::new();
    for (probe, wanted) in [("livenessProbe", &probes.liveness), ("readinessProbe", &probes.readiness)] {
        let Some(wanted) = wanted else { continue };
        let Some(live_probe) = live_container.get(probe) else {
            plan.problems.push(format!("container {name:?} has no {probe}; its timings are left alone"));
            continue;
        };
        let wanted = timing_json(wanted);
        // What to put back: the recorded original, or (first time) the live values. A field the
        // spec sets since the record was made has never been the sale's: its live value is the
        // original, recorded with the others.
        let mut before: Map<String, Value> =
            recorded.as_ref().and_then(|r| r.get(probe)).and_then(Value::as_object).cloned().unwrap_or_default();
        for field in wanted.keys() {
            before.entry(field.clone()).or_insert_with(|| live_probe.get(field).cloned().unwrap_or(Value::Null));
        }
        match intent {
            Intent::Hold => {
                plan.set.insert(probe.into(), Value::Object(wanted));
                original.insert(probe.into(), Value::Object(before));
            }
            Intent::Restore | Intent::Preflight => {
                let restore: Map<String, Value> =
                    before.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
                plan.unset
                    .extend(before.iter().filter(|(_, v)| v.is_null()).map(|(k, _)| (probe.to_owned(), k.clone())));
                if !restore.is_empty() {
                    plan.set.insert(probe.into(), Value::Object(restore));
                }
            }
        }
    }
    if intent == Intent::Hold && !original.is_empty() {
        plan.original = Some(Value::Object(original).to_string());
    }
    Ok(plan)
}

/// A recorded probe original: a JSON object of `livenessProbe` / `readinessProbe`, each an
/// object of timing fields, each a whole number of at least 0 (1 for the periods, thresholds
/// and timeouts, as the API requires) or `null` for a field that was unset.
pub fn parse_original(value: &str) -> Result<Value, String> {
    let parsed: Value = serde_json::from_str(value).map_err(|e| format!("unreadable ({e})"))?;
    let probes = parsed.as_object().ok_or("not a JSON object")?;
    for (probe, fields) in probes {
        if probe != "livenessProbe" && probe != "readinessProbe" {
            return Err(format!("{probe} is not a probe the sale changes"));
        }
        let fields = fields.as_object().ok_or_else(|| format!("{probe} is not an object"))?;
        for (field, v) in fields {
            if !TIMING_FIELDS.contains(&field.as_str()) {
                return Err(format!("{probe}.{field} is not a timing field"));
            }
            let least = if field == "initialDelaySeconds" { 0 } else { 1 };
            match v {
                Value::Null => {}
                v if v.as_i64().is_some_and(|n| (least..=i64::from(i32::MAX)).contains(&n)) => {}
                other => return Err(format!("{probe}.{field} is out of range ({other})")),
            }
        }
    }
    Ok(parsed)
}

/// Whether a workload's latest pod template has fully rolled out (`kubectl rollout status`).
pub fn rolled_out(live: &Value) -> bool {
    let int = |p: &str| live.pointer(p).and_then(Value::as_i64);
    let generation = int("/metadata/generation").unwrap_or(0);
    let observed = int("/status/observedGeneration").unwrap_or(0);
    let replicas = int("/spec/replicas").unwrap_or(1);
    let updated = int("/status/updatedReplicas").unwrap_or(0);
    let total = int("/status/replicas").unwrap_or(0);
    let available = int("/status/availableReplicas").or(int("/status/readyReplicas")).unwrap_or(0);
    observed >= generation && updated >= replicas && total <= updated && available >= replicas
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "sidecar", "image": "s"},
                {"name": "app", "image": "a",
                 "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3},
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10, "failureThreshold": 3}}
            ]}}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        })
    }

    fn probes() -> Probes {
        serde_json::from_value(json!({
            "container": "app",
            "liveness": {"periodSeconds": 20, "failureThreshold": 6},
            "readiness": {"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 1}
        }))
        .unwrap()
    }

    #[test]
    fn hold_sets_only_timings_and_records_what_was_there() {
        let live = deployment();
        let plan = plan(&live, &probes(), Intent::Hold, None).unwrap();
        assert_eq!(plan.container, "app");
        assert_eq!(plan.set["readinessProbe"], json!({"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 1}));
        assert_eq!(plan.set["livenessProbe"], json!({"periodSeconds": 20, "failureThreshold": 6}));
        let original: Value = serde_json::from_str(plan.original.as_deref().unwrap()).unwrap();
        assert_eq!(
            original["readinessProbe"],
            json!({"periodSeconds": 10, "timeoutSeconds": null, "failureThreshold": 3})
        );
        assert!(!plan.in_place(&live));
        let fragment = plan.container_fragment().unwrap();
        assert!(fragment["readinessProbe"].get("httpGet").is_none(), "the handler is never part of the change");
    }

    #[test]
    fn restore_puts_values_back_and_unsets_what_was_unset() {
        let mut live = deployment();
        let held = plan(&live, &probes(), Intent::Hold, None).unwrap();
        let recorded = held.original.clone().unwrap();
        // The sale's timings are live now.
        let app = &mut live["spec"]["template"]["spec"]["containers"][1];
        app["readinessProbe"]["periodSeconds"] = json!(2);
        app["readinessProbe"]["timeoutSeconds"] = json!(1);
        app["readinessProbe"]["failureThreshold"] = json!(1);
        let restore = plan(&live, &probes(), Intent::Restore, Some(&recorded)).unwrap();
        assert_eq!(restore.set["readinessProbe"], json!({"periodSeconds": 10, "failureThreshold": 3}));
        assert_eq!(restore.unset, vec![("readinessProbe".to_owned(), "timeoutSeconds".to_owned())]);
        assert!(!restore.in_place(&live));
        let app = &mut live["spec"]["template"]["spec"]["containers"][1];
        app["readinessProbe"]["periodSeconds"] = json!(10);
        app["readinessProbe"]["failureThreshold"] = json!(3);
        app["readinessProbe"].as_object_mut().unwrap().remove("timeoutSeconds");
        app["livenessProbe"]["periodSeconds"] = json!(10);
        app["livenessProbe"]["failureThreshold"] = json!(3);
        assert!(restore.in_place(&live));
    }

    #[test]
    fn missing_container_blocks_and_missing_probe_is_reported() {
        let live = deployment();
        let mut wrong = probes();
        wrong.container = Some("nginx".into());
        assert_eq!(plan(&live, &wrong, Intent::Hold, None).unwrap_err(), "container \"nginx\" not found");
        let mut first = probes();
        first.container = None;
        let p = plan(&live, &first, Intent::Hold, None).unwrap();
        assert_eq!(p.container, "sidecar");
        assert!(p.set.is_empty());
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
    }

    #[test]
    fn recorded_probe_originals_are_range_checked() {
        let sound = r#"{"readinessProbe":{"periodSeconds":10,"timeoutSeconds":null},"livenessProbe":{"initialDelaySeconds":0}}"#;
        assert!(parse_original(sound).is_ok());
        for unsound in [
            "garbage",
            "[]",
            r#"{"readinessProbe":{"periodSeconds":0}}"#,
            r#"{"readinessProbe":{"periodSeconds":-1}}"#,
            r#"{"readinessProbe":{"periodSeconds":"10"}}"#,
            r#"{"readinessProbe":{"httpGet":{}}}"#,
            r#"{"startupProbe":{"periodSeconds":10}}"#,
        ] {
            assert!(parse_original(unsound).is_err(), "{unsound}");
        }
        // What the lever records is what it accepts back.
        let recorded = plan(&deployment(), &probes(), Intent::Hold, None).unwrap().original.unwrap();
        assert!(parse_original(&recorded).is_ok(), "{recorded}");
    }

    #[test]
    fn rollout_is_complete_only_when_every_replica_is_updated_and_available() {
        let mut live = deployment();
        assert!(rolled_out(&live));
        live["metadata"]["generation"] = json!(3);
        assert!(!rolled_out(&live), "new generation not observed yet");
        live["status"]["observedGeneration"] = json!(3);
        live["status"]["updatedReplicas"] = json!(1);
        live["status"]["replicas"] = json!(3);
        assert!(!rolled_out(&live), "old pods still running");
    }

    /// A workload with the containers given, as the lever reads it.
    fn with_containers(containers: Value) -> Value {
        json!({"spec": {"replicas": 2, "template": {"spec": {"containers": containers}}}})
    }

    /// What a plan says, in one JSON value: the container, the fields set and unset, the original
    /// recorded (parsed) and the problems; or the error.
    fn summary(plan: Result<ProbePlan, String>) -> Value {
        match plan {
            Ok(p) => json!({
                "container": p.container,
                "set": p.set,
                "unset": p.unset,
                "original": p.original.map(|o| serde_json::from_str::<Value>(&o).unwrap()),
                "problems": p.problems,
            }),
            Err(e) => json!({"error": e}),
        }
    }

    /// The plan for each kind of workload, intent and recorded original.
    #[test]
    fn the_plan_sets_restores_or_refuses_by_workload_intent_and_record() {
        let app = |liveness: Value, readiness: Value| {
            let mut c = json!({"name": "app", "image": "a"});
            if !liveness.is_null() {
                c["livenessProbe"] = liveness;
            }
            if !readiness.is_null() {
                c["readinessProbe"] = readiness;
            }
            c
        };
        let http = |fields: Value| {
            let mut p = json!({"httpGet": {"path": "/ready", "port": 8080}});
            p.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            p
        };
        let probes = |v: Value| -> Probes { serde_json::from_value(v).unwrap() };
        let both = probes(json!({
            "liveness": {"periodSeconds": 20},
            "readiness": {"periodSeconds": 2, "timeoutSeconds": 1}
        }));
        let readiness_only = probes(json!({"readiness": {"periodSeconds": 2, "failureThreshold": 1}}));
        let live = with_containers(json!([app(
            http(json!({"periodSeconds": 10})),
            http(json!({"periodSeconds": 10, "failureThreshold": 3}))
        )]));
        // The sale's timings live, as they are while the sale holds the workload.
        let held = with_containers(json!([app(
            http(json!({"periodSeconds": 20})),
            http(json!({"periodSeconds": 2, "timeoutSeconds": 1}))
        )]));
        let recorded =
            r#"{"livenessProbe":{"periodSeconds":10},"readinessProbe":{"periodSeconds":10,"timeoutSeconds":null}}"#;
        // (case, live workload, probes, intent, recorded original, plan)
        type Row = (&'static str, Value, Probes, Intent, Option<&'static str>, Value);
        let table: Vec<Row> = vec![
            (
                "hold over a recorded original keeps that original, not the live timings",
                held.clone(),
                both.clone(),
                Intent::Hold,
                Some(recorded),
                json!({"container": "app",
                       "set": {"livenessProbe": {"periodSeconds": 20}, "readinessProbe": {"periodSeconds": 2, "timeoutSeconds": 1}},
                       "unset": [], "original": serde_json::from_str::<Value>(recorded).unwrap(), "problems": []}),
            ),
            (
                "hold with an unreadable record records the live timings",
                live.clone(),
                readiness_only.clone(),
                Intent::Hold,
                Some("{not json"),
                json!({"container": "app", "set": {"readinessProbe": {"periodSeconds": 2, "failureThreshold": 1}},
                       "unset": [], "original": {"readinessProbe": {"periodSeconds": 10, "failureThreshold": 3}}, "problems": []}),
            ),
            (
                "hold of readiness only leaves liveness alone",
                live.clone(),
                readiness_only.clone(),
                Intent::Hold,
                None,
                json!({"container": "app", "set": {"readinessProbe": {"periodSeconds": 2, "failureThreshold": 1}},
                       "unset": [], "original": {"readinessProbe": {"periodSeconds": 10, "failureThreshold": 3}}, "problems": []}),
            ),
            (
                "hold without a container named uses the first container",
                with_containers(json!([app(Value::Null, http(json!({}))), {"name": "sidecar", "image": "s"}])),
                readiness_only.clone(),
                Intent::Hold,
                None,
                json!({"container": "app", "set": {"readinessProbe": {"periodSeconds": 2, "failureThreshold": 1}},
                       "unset": [], "original": {"readinessProbe": {"periodSeconds": null, "failureThreshold": null}}, "problems": []}),
            ),
            (
                "hold on a container without liveness sets readiness and reports the missing probe",
                with_containers(json!([app(Value::Null, http(json!({"periodSeconds": 10})))])),
                both.clone(),
                Intent::Hold,
                None,
                json!({"container": "app", "set": {"readinessProbe": {"periodSeconds": 2, "timeoutSeconds": 1}},
                       "unset": [], "original": {"readinessProbe": {"periodSeconds": 10, "timeoutSeconds": null}},
                       "problems": ["container \"app\" has no livenessProbe; its timings are left alone"]}),
            ),
            (
                "hold on a container with no probe at all changes and records nothing",
                with_containers(json!([{"name": "app", "image": "a"}])),
                readiness_only.clone(),
                Intent::Hold,
                None,
                json!({"container": "app", "set": {}, "unset": [], "original": null,
                       "problems": ["container \"app\" has no readinessProbe; its timings are left alone"]}),
            ),
            (
                "restore puts recorded values back and unsets what was unset",
                held.clone(),
                both.clone(),
                Intent::Restore,
                Some(recorded),
                json!({"container": "app",
                       "set": {"livenessProbe": {"periodSeconds": 10}, "readinessProbe": {"periodSeconds": 10}},
                       "unset": [["readinessProbe", "timeoutSeconds"]], "original": null, "problems": []}),
            ),
            (
                "preflight over a recorded original restores like the restore",
                held.clone(),
                both.clone(),
                Intent::Preflight,
                Some(recorded),
                json!({"container": "app",
                       "set": {"livenessProbe": {"periodSeconds": 10}, "readinessProbe": {"periodSeconds": 10}},
                       "unset": [["readinessProbe", "timeoutSeconds"]], "original": null, "problems": []}),
            ),
            (
                "restore without a record keeps the live timings",
                live.clone(),
                both.clone(),
                Intent::Restore,
                None,
                json!({"container": "app",
                       "set": {"livenessProbe": {"periodSeconds": 10}, "readinessProbe": {"periodSeconds": 10}},
                       "unset": [["readinessProbe", "timeoutSeconds"]], "original": null, "problems": []}),
            ),
            (
                "restore of a probe whose every field was unset only unsets",
                held.clone(),
                readiness_only.clone(),
                Intent::Restore,
                Some(r#"{"readinessProbe":{"periodSeconds":null,"failureThreshold":null}}"#),
                json!({"container": "app", "set": {},
                       "unset": [["readinessProbe", "failureThreshold"], ["readinessProbe", "periodSeconds"]],
                       "original": null, "problems": []}),
            ),
            (
                "a container named that does not exist blocks",
                live.clone(),
                probes(json!({"container": "nginx", "readiness": {"periodSeconds": 2}})),
                Intent::Hold,
                None,
                json!({"error": "container \"nginx\" not found"}),
            ),
            (
                "a pod template without containers blocks",
                with_containers(json!([])),
                readiness_only.clone(),
                Intent::Hold,
                None,
                json!({"error": "the pod template has no containers"}),
            ),
            (
                "an object without a pod template blocks",
                json!({"spec": {"replicas": 1}}),
                readiness_only.clone(),
                Intent::Restore,
                None,
                json!({"error": "the pod template has no containers"}),
            ),
        ];
        for (case, live, probes, intent, recorded, want) in table {
            let got = summary(plan(&live, &probes, intent, recorded));
            assert_eq!(got, want, "{case}");
        }
    }

    /// Whether the live workload already shows a plan: every field set has the value wanted and
    /// every field unset is absent, in the plan's container.
    #[test]
    fn a_plan_is_in_place_only_when_every_set_and_unset_field_shows() {
        let plan = ProbePlan {
            container: "app".into(),
            set: serde_json::from_value(json!({"readinessProbe": {"periodSeconds": 2, "failureThreshold": 1}}))
                .unwrap(),
            unset: vec![("readinessProbe".into(), "timeoutSeconds".into())],
            ..ProbePlan::default()
        };
        let app = |name: &str, readiness: Value| json!([{"name": name, "image": "a", "readinessProbe": readiness}]);
        let handler = json!({"httpGet": {"path": "/ready", "port": 8080}});
        // (case, live containers, in place)
        let table = [
            ("every field as wanted", app("app", json!({"periodSeconds": 2, "failureThreshold": 1})), true),
            (
                "the handler and other fields do not matter",
                app(
                    "app",
                    json!({"httpGet": handler["httpGet"], "periodSeconds": 2, "failureThreshold": 1, "successThreshold": 1}),
                ),
                true,
            ),
            ("one field still the original", app("app", json!({"periodSeconds": 10, "failureThreshold": 1})), false),
            ("one field missing", app("app", json!({"periodSeconds": 2})), false),
            (
                "a field to unset still there",
                app("app", json!({"periodSeconds": 2, "failureThreshold": 1, "timeoutSeconds": 5})),
                false,
            ),
            (
                "a number as a string is not the number",
                app("app", json!({"periodSeconds": "2", "failureThreshold": 1})),
                false,
            ),
            ("the probe gone", json!([{"name": "app", "image": "a"}]), false),
            ("the container gone", app("web", json!({"periodSeconds": 2, "failureThreshold": 1})), false),
        ];
        for (case, containers, want) in table {
            assert_eq!(plan.in_place(&with_containers(containers)), want, "{case}");
        }
        // A plan that changes nothing is in place on any container of that name, and sends nothing.
        let nothing = ProbePlan { container: "app".into(), ..ProbePlan::default() };
        assert!(nothing.in_place(&with_containers(app("app", json!({})))));
        assert_eq!(nothing.container_fragment(), None);
        assert_eq!(
            plan.container_fragment(),
            Some(json!({"name": "app", "readinessProbe": {"periodSeconds": 2, "failureThreshold": 1}}))
        );
    }

    /// When a workload's latest pod template counts as rolled out, as `kubectl rollout status`
    /// tells it.
    #[test]
    fn a_rollout_is_complete_only_when_the_generation_is_observed_and_every_replica_is_new_and_available() {
        let workload = |generation: Value, replicas: Value, status: Value| {
            let mut w = json!({"metadata": {}, "spec": {}, "status": status});
            if !generation.is_null() {
                w["metadata"]["generation"] = generation;
            }
            if !replicas.is_null() {
                w["spec"]["replicas"] = replicas;
            }
            w
        };
        let status = |observed: i64, total: i64, updated: i64, available: i64| json!({"observedGeneration": observed, "replicas": total, "updatedReplicas": updated, "availableReplicas": available});
        let n = Value::Null;
        // (case, metadata.generation, spec.replicas, status, rolled out)
        let table = [
            ("every replica updated and available", json!(3), json!(2), status(3, 2, 2, 2), true),
            ("the new generation not observed yet", json!(4), json!(2), status(3, 2, 2, 2), false),
            ("the controller is ahead of the generation", json!(3), json!(2), status(4, 2, 2, 2), true),
            ("one replica not updated", json!(3), json!(2), status(3, 2, 1, 2), false),
            ("an old pod still running", json!(3), json!(2), status(3, 3, 2, 2), false),
            ("an updated pod not available yet", json!(3), json!(2), status(3, 2, 2, 1), false),
            ("scaled up, not every new replica there yet", json!(3), json!(10), status(3, 4, 4, 4), false),
            (
                "readyReplicas counts when availableReplicas is absent",
                json!(3),
                json!(2),
                json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
                true,
            ),
            ("no spec.replicas is one replica", json!(1), n.clone(), status(1, 1, 1, 1), true),
            ("no spec.replicas and no pod", json!(1), n.clone(), status(1, 0, 0, 0), false),
            ("scaled to zero", json!(2), json!(0), json!({"observedGeneration": 2}), true),
            ("no status at all", json!(1), json!(2), json!({}), false),
        ];
        for (case, generation, replicas, status, want) in table {
            assert_eq!(rolled_out(&workload(generation, replicas, status)), want, "{case}");
        }
    }

    /// A timing field added to the spec while the sale holds the workload has its live value
    /// (still the owner's: the sale never set it) recorded too, so the restore puts it back.
    #[test]
    fn a_timing_added_to_the_spec_mid_sale_is_recorded_and_restored() {
        let live = with_containers(json!([{"name": "app", "image": "a",
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 20, "timeoutSeconds": 1}}]));
        let recorded = r#"{"livenessProbe":{"periodSeconds":10}}"#;
        let wider: Probes =
            serde_json::from_value(json!({"liveness": {"periodSeconds": 20, "timeoutSeconds": 5}})).unwrap();
        let held = plan(&live, &wider, Intent::Hold, Some(recorded)).unwrap();
        let original: Value = serde_json::from_str(held.original.as_deref().unwrap()).unwrap();
        assert_eq!(original, json!({"livenessProbe": {"periodSeconds": 10, "timeoutSeconds": 1}}));
    }
}
