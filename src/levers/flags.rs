//! Degradation flags: a flag file in flagd's format that apps read through OpenFeature.
//!
//! Published (by default) as the key `flags.flagd.json` of the ConfigMap
//! `degradation.configMapName` in the sale's namespace, for the flagd provider's file or
//! in-process mode (or a flagd sidecar); with `target: FeatureFlag`, as the OpenFeature
//! operator's `FeatureFlag` (core.openfeature.dev/v1beta1) of that name instead.
//!
//! - The flags are published from [`PUBLISH_LEAD`] before Preparing (checked, not written, while
//!   the sale is Scheduled before that), with every static flag's off-window encoded in its
//!   `targeting` on `$flagd.timestamp`, so apps flip at the boundary second even if the operator
//!   is down then; `defaultVariant` follows the phase as well.
//! - Auto-degrade flags are circuit breakers ([`breaker`]) over a Prometheus instant query,
//!   evaluated every few seconds while the sale is Preparing, Active or CoolingDown. Their state
//!   lives in an annotation on the published object, never in operator memory, so a restarted
//!   operator carries on where the last one stopped. A failing or empty query never flips a flag.
//! - The sale owns its flag names and nothing else ([`ownership`]): each write merges its flags
//!   into the file as it is live, so another flag or key changed by a person during the sale is
//!   kept; the definitions its names replaced are recorded in the first write that replaces
//!   them. A file that is not a flagd flag file is refused and left alone. A pre-existing
//!   FeatureFlag is always refused (merging into another owner's object is not worth the
//!   surprise); flags others add to the sale's own FeatureFlag are kept like in a file.
//! - The restore puts the sale's names back as they were (or removes them), keeps everything
//!   else, drops the bookkeeping, and deletes the object only if the sale created it and nothing
//!   else was added to it.

pub mod breaker;
pub mod flagd;
pub mod ownership;
pub mod prometheus;

use crate::api::names::{self, FLAG_BREAKERS, ORIGINAL_FLAGS, SALE_ANNOTATION};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::core::v1::{ConfigMap, ObjectReference},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use self::breaker::{Breaker, Change, Rule, Sample, State};
use self::ownership::Record;
use super::{Action, Intent, LeverCondition, Report, Sale};
use crate::{
    api::{AutoDegrade, Degradation, Flag, FlagPhase, FlagStatus, FlagTarget, FlashSaleSpec, Phase},
    status::FLAGS_PUBLISHED,
    timeline::{Schedule, signed},
    view::Scope,
};

/// The OpenFeature operator's FeatureFlag.
pub(crate) const FEATURE_FLAG_CRD: &str = "featureflags.core.openfeature.dev";

/// `FlagStatus.reason` prefix of a flag whose query failed in this pass.
pub const QUERY_FAILED: &str = "QueryFailed";

/// Whether this flag's signal query failed in the pass that reported it.
pub fn query_failed(flag: &FlagStatus) -> bool {
    flag.reason.starts_with(QUERY_FAILED)
}

/// Runs the flags lever for one cluster. A sale without `degradation` is left alone entirely.
pub async fn run(
    client: &Client,
    local: &Client,
    sale: &Sale<'_>,
    spec: &FlashSaleSpec,
    intent: Intent,
    report: &mut Report,
) -> Result<(), kube::Error> {
    let Some(degradation) = &spec.degradation else {
        return Ok(());
    };
    let target = Target::new(degradation, sale.namespace);
    if degradation.target == FlagTarget::FeatureFlag {
        let crds = Scope::typed::<CustomResourceDefinition>(None).named(FEATURE_FLAG_CRD);
        if sale.view.get(&crds, FEATURE_FLAG_CRD).await?.is_none() {
            let message = format!(
                "degradation.target is FeatureFlag, but the FeatureFlag CRD ({FEATURE_FLAG_CRD}) is not installed in this cluster; install the OpenFeature operator or use target ConfigMap"
            );
            refuse(report, intent, "FeatureFlagCRDMissing", message);
            return Ok(());
        }
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), sale.namespace, &target.resource);
    // The one object the sale publishes in: watched by name, never the namespace's every ConfigMap.
    let live = sale.view.get(&target.scope(), &target.name).await?.map(|o| (*o).clone());
    let annotations = live.as_ref().map(|l| l.annotations().clone()).unwrap_or_default();
    if let Some(other) = annotations.get(names::SALE_ANNOTATION).filter(|h| *h != sale.holder) {
        let message = format!("{} is held by sale {other}; it is left unchanged", target.display());
        refuse(report, intent, "HeldByAnotherSale", message);
        return Ok(());
    }
    let ours = live.is_some() && annotations.contains_key(names::SALE_ANNOTATION);
    match (intent, sale.schedule) {
        (Intent::Restore, _) | (_, None) => {
            restore(&api, sale.view, &target, live.as_ref(), ours, degradation, report).await
        }
        (_, Some(schedule)) => {
            publish(&api, local, &target, live.as_ref(), ours, degradation, sale, &schedule, intent, report).await
        }
    }
}

/// The object flags are published to.
struct Target {
    kind: FlagTarget,
    name: String,
    namespace: String,
    resource: ApiResource,
}

impl Target {
    /// The object, as the view watches it: by name, never the namespace's every ConfigMap.
    fn scope(&self) -> Scope {
        Scope::of(&self.resource, Some(&self.namespace)).named(&self.name)
    }

    fn new(degradation: &Degradation, namespace: &str) -> Target {
        let resource = match degradation.target {
            FlagTarget::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            FlagTarget::FeatureFlag => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("core.openfeature.dev", "v1beta1", "FeatureFlag"),
                "featureflags",
            ),
        };
        Target {
            kind: degradation.target,
            name: degradation.config_map_name.clone(),
            namespace: namespace.to_owned(),
            resource,
        }
    }

    fn display(&self) -> String {
        format!("{} {}/{}", self.resource.kind, self.namespace, self.name)
    }

    fn action(&self, reason: &'static str, verb: &'static str, note: String) -> Action {
        let object = ObjectReference {
            api_version: Some(self.resource.api_version.clone()),
            kind: Some(self.resource.kind.clone()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..ObjectReference::default()
        };
        Action { reason, warning: false, verb, object, note }
    }

    /// The flag file a live ConfigMap holds (none for a FeatureFlag).
    fn live_file<'a>(&self, live: &'a DynamicObject) -> Option<&'a str> {
        match self.kind {
            FlagTarget::ConfigMap => {
                live.data.pointer("/data").and_then(|d| d.get(flagd::FLAGS_KEY)).and_then(Value::as_str)
            }
            FlagTarget::FeatureFlag => None,
        }
    }

    /// The published flags as the live object holds them.
    fn live_flags(&self, live: &DynamicObject) -> Map<String, Value> {
        match self.kind {
            FlagTarget::ConfigMap => live
                .data
                .pointer("/data")
                .and_then(|d| d.get(flagd::FLAGS_KEY))
                .and_then(Value::as_str)
                .map(flagd::flags_of),
            FlagTarget::FeatureFlag => live.data.pointer("/spec/flagSpec/flags").and_then(Value::as_object).cloned(),
        }
        .unwrap_or_default()
    }
}

/// The breakers recorded on the published object. An entry that cannot be read (edited by hand,
/// or written by another version) resumes from the flag as published, so an open breaker stays
/// open rather than switching the feature back on mid-incident; the second value says so.
fn stored_breakers(
    annotation: Option<&str>,
    auto_flags: &[&str],
    live_flags: &Map<String, Value>,
    now: Timestamp,
) -> (BTreeMap<String, Breaker>, Option<String>) {
    let Some(text) = annotation else { return (BTreeMap::new(), None) };
    let entries: Option<BTreeMap<String, Value>> = serde_json::from_str(text).ok();
    let mut unreadable = vec![];
    let mut breakers = BTreeMap::new();
    for name in auto_flags {
        let stored = match &entries {
            Some(entries) => match entries.get(*name) {
                Some(v) => serde_json::from_value::<Breaker>(v.clone()).ok(),
                // Not recorded yet (a flag added to the spec): it starts closed.
                None => continue,
            },
            None => None,
        };
        let breaker = stored.unwrap_or_else(|| {
            unreadable.push(*name);
            resumed(live_flags.get(*name), now)
        });
        breakers.insert((*name).to_owned(), breaker);
    }
    let problem = (!unreadable.is_empty()).then(|| {
        format!(
            "the breaker state in annotation {FLAG_BREAKERS} could not be read for {}; each resumes from its published value (off stays open)",
            unreadable.join(", ")
        )
    });
    (breakers, problem)
}

/// A breaker resumed from a published flag: open while the flag is off.
fn resumed(flag: Option<&Value>, now: Timestamp) -> Breaker {
    let off = flag.and_then(|f| f.get("defaultVariant")).and_then(Value::as_str) == Some("off");
    Breaker { state: if off { State::Open } else { State::Closed }, ..Breaker::new(now) }
}

/// Reports a refusal: nothing is changed, and a person must act.
fn refuse(report: &mut Report, intent: Intent, reason: &str, message: String) {
    report.problems.push(message.clone());
    if intent != Intent::Restore {
        report.ready = false;
    }
    report.conditions.push(LeverCondition {
        type_: FLAGS_PUBLISHED,
        ready: false,
        reason: reason.to_owned(),
        message,
        blocking: intent != Intent::Restore,
    });
}

/// One flag's wanted value in this pass.
struct Wanted {
    status: FlagStatus,
    flag: Value,
    /// For events: why it has this value.
    why: String,
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    api: &Api<DynamicObject>,
    local: &Client,
    target: &Target,
    live: Option<&DynamicObject>,
    ours: bool,
    degradation: &Degradation,
    sale: &Sale<'_>,
    schedule: &Schedule,
    intent: Intent,
    report: &mut Report,
) -> Result<(), kube::Error> {
    let now = sale.now;
    let live_annotations = live.map(|l| l.annotations().clone()).unwrap_or_default();
    let live_flags = live.map(|l| target.live_flags(l)).unwrap_or_default();
    let auto_flags: Vec<&str> =
        degradation.flags.iter().filter(|f| f.auto_degrade.is_some()).map(|f| f.name.as_str()).collect();
    let (previous_breakers, unreadable) = if ours {
        let annotation = live_annotations.get(names::FLAG_BREAKERS).map(String::as_str);
        stored_breakers(annotation, &auto_flags, &live_flags, now)
    } else {
        (BTreeMap::new(), None)
    };
    if let Some(problem) = unreadable {
        // Announced once: this pass writes the breakers back readable.
        let mut action = target.action("FlagBreakerReset", "Resume", problem);
        action.warning = true;
        report.actions.push(action);
    }
    let evaluating = intent == Intent::Hold;
    // Checked (and its Secrets read) once per pass, and only while breakers are evaluated: a URL
    // the installer does not allow is never queried.
    let access = match (&degradation.prometheus, evaluating && !auto_flags.is_empty()) {
        // The credentials are Secrets the sale's author wrote next to the sale, in the
        // operator's own cluster, whichever cluster the flags are published in.
        (Some(p), true) => {
            Some(prometheus::Access::load(local, sale.namespace, p, &sale.installer.prometheus_url_allow).await)
        }
        (None, true) => Some(Err("degradation.prometheus.url is not set".to_owned())),
        (_, false) => None,
    };
    // Every breaker's query at once: a slow Prometheus costs one timeout per pass, not one per flag.
    let queries = degradation.flags.iter().filter(|_| evaluating).filter_map(|flag| {
        let auto = flag.auto_degrade.as_ref()?;
        let access = access.as_ref();
        Some(async move {
            let sample = match access {
                Some(Ok(access)) => prometheus::query(access, &auto.query).await,
                Some(Err(message)) => Sample::Failed(message.clone()),
                None => Sample::Failed("not queried".into()),
            };
            (flag.name.as_str(), sample)
        })
    });
    let samples: BTreeMap<&str, Sample> = futures::future::join_all(queries).await.into_iter().collect();

    let mut wanted: Vec<Wanted> = vec![];
    let mut breakers: BTreeMap<String, Breaker> = BTreeMap::new();
    let mut changes: Vec<(String, Change, bool, Breaker, String)> = vec![];
    let mut failing: Vec<String> = vec![];
    let mut recheck: Option<Timestamp> = None;
    for flag in &degradation.flags {
        match (&flag.off_during, &flag.auto_degrade) {
            (Some(phases), _) => wanted.push(static_flag(flag, phases, schedule, sale.phase)),
            (None, Some(auto)) if evaluating => {
                let rule = rule(auto);
                let before = previous_breakers.get(&flag.name).cloned().unwrap_or_else(|| Breaker::new(now));
                let sample =
                    samples.get(flag.name.as_str()).cloned().unwrap_or_else(|| Sample::Failed("not queried".into()));
                let (after, change) = before.step(&sample, &rule, now);
                let mut w = auto_flag(flag, auto, &after, &sample);
                if let Sample::Failed(message) = &sample {
                    w.status.reason = format!("{QUERY_FAILED}: {message}");
                    failing.push(format!("flag {}: {message}", flag.name));
                }
                let every = poll_interval(&rule);
                let next = after.due(&rule).map_or(now + every, |due| due.min(now + every));
                recheck = Some(recheck.map_or(next, |r: Timestamp| r.min(next)));
                if change != Change::None || before.failing != after.failing {
                    let detail = match &sample {
                        Sample::Failed(m) => m.clone(),
                        Sample::Value(v) => format!("{v}"),
                    };
                    changes.push((flag.name.clone(), change, before.failing, after.clone(), detail));
                }
                breakers.insert(flag.name.clone(), after);
                wanted.push(w);
            }
            (None, Some(_)) => wanted.push(Wanted {
                status: FlagStatus {
                    name: flag.name.clone(),
                    enabled: true,
                    reason: "NotArmed".into(),
                    value: None,
                    since: None,
                },
                flag: flagd::flag(true, None),
                why: "the breaker is evaluated from Preparing on".into(),
            }),
            (None, None) => {}
        }
    }
    let flags: BTreeMap<String, Value> = wanted.iter().map(|w| (w.status.name.clone(), w.flag.clone())).collect();

    // What the object holds, and what it held before the sale.
    let recorded = match live_annotations.get(names::ORIGINAL_FLAGS).filter(|_| ours) {
        Some(text) => match serde_json::from_str::<Record>(text) {
            Ok(record) => record,
            Err(_) => {
                let message = format!(
                    "{}: the annotation {ORIGINAL_FLAGS} is unreadable, so its original cannot be known; it is left unchanged",
                    target.display()
                );
                refuse(report, intent, "OriginalUnknown", message);
                report.restored = false;
                return Ok(());
            }
        },
        None if ours => {
            let message = format!(
                "{}: the annotation {ORIGINAL_FLAGS} is missing, so its original cannot be known; it is left unchanged",
                target.display()
            );
            refuse(report, intent, "OriginalUnknown", message);
            report.restored = false;
            return Ok(());
        }
        None => Record::before_first_write(live.is_some(), live.and_then(|l| target.live_file(l))),
    };
    let (record, content) = match target.kind {
        FlagTarget::ConfigMap => {
            let held = match ownership::hold_file(live.and_then(|l| target.live_file(l)), &recorded, &flags) {
                Ok(held) => held,
                Err(why) => {
                    let message = format!(
                        "{} already has a {} that the sale's flags cannot be merged into: {why}. It is left unchanged; make it a flagd flag file or choose another degradation.configMapName",
                        target.display(),
                        flagd::FLAGS_KEY
                    );
                    refuse(report, intent, "NotAFlagFile", message);
                    report.restored &= !ours;
                    return Ok(());
                }
            };
            (held.record, (json!({ "data": { flagd::FLAGS_KEY: held.file } }), held.in_place))
        }
        FlagTarget::FeatureFlag => {
            if live.is_some() && !ours {
                let message = format!(
                    "{} already exists and was not created by this sale; it is left unchanged. Choose another degradation.configMapName, or use target ConfigMap to merge into an existing flag file",
                    target.display()
                );
                refuse(report, intent, "AlreadyExists", message);
                return Ok(());
            }
            // Flags others added to the sale's FeatureFlag are kept, as in a shared file.
            let mut merged = live_flags.clone();
            let mut originals = recorded.originals(flags.keys().map(String::as_str));
            ownership::hold_flags(&mut merged, &mut originals, &flags);
            let in_place = live.is_some() && merged == live_flags;
            (
                Record { flags: Some(originals), ..recorded },
                (json!({ "spec": { "flagSpec": { "flags": merged } } }), in_place),
            )
        }
    };
    let (body, content_in_place) = content;

    // Before the lead time nothing is written: the checks above have run (a file that cannot be
    // merged into is said days ahead), and the shared file carries nothing of the sale yet.
    let publish_at = publish_at(schedule);
    if !ours && now < publish_at {
        report.flags.extend(wanted.iter().map(|w| w.status.clone()));
        report.recheck_at(publish_at);
        report.conditions.push(LeverCondition {
            type_: FLAGS_PUBLISHED,
            ready: false,
            reason: "NotYetPublished".into(),
            message: format!(
                "{} flags are published to {} at {publish_at}, {} before Preparing",
                wanted.len(),
                target.display(),
                PUBLISH_LEAD_TEXT
            ),
            blocking: false,
        });
        return Ok(());
    }
    // The record keeps every original from the write that first replaced it; a pass that adds
    // nothing new writes the same text, so it compares equal and sends nothing.
    let mut annotations_wanted: BTreeMap<String, String> = BTreeMap::from([
        (names::SALE_ANNOTATION.to_owned(), sale.holder.to_owned()),
        (names::ORIGINAL_FLAGS.to_owned(), serde_json::to_string(&record).unwrap_or_default()),
    ]);
    if !breakers.is_empty() {
        annotations_wanted
            .insert(names::FLAG_BREAKERS.to_owned(), serde_json::to_string(&breakers).unwrap_or_default());
    }
    let stale =
        live_annotations.contains_key(names::FLAG_BREAKERS) && !annotations_wanted.contains_key(names::FLAG_BREAKERS);
    let annotations_match = annotations_wanted.iter().all(|(k, v)| live_annotations.get(k) == Some(v));
    // Nothing to write: the file as the view reads it back carries the sale's flags.
    let read_back = content_in_place && annotations_match && !stale;
    if !read_back {
        let mut doc = json!({
            "apiVersion": target.resource.api_version,
            "kind": target.resource.kind,
            "metadata": {"name": target.name, "namespace": target.namespace, "annotations": annotations_wanted},
        });
        // The merge was made from this version of the object: a person's edit since then fails
        // the write (and the next pass merges into it) rather than being overwritten.
        if let Some(version) = live.and_then(|l| l.metadata.resource_version.clone()) {
            doc["metadata"]["resourceVersion"] = Value::String(version);
        }
        if let (Some(doc), Some(body)) = (doc.as_object_mut(), body.as_object()) {
            doc.extend(body.clone());
        }
        let written = match api
            .patch(&target.name, &PatchParams::apply(names::FIELD_MANAGER).force(), &Patch::Apply(&doc))
            .await
        {
            Ok(written) => written,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                report.flags.extend(wanted.iter().map(|w| w.status.clone()));
                report.restored = false;
                report.recheck_at(now + SignedDuration::from_secs(1));
                report.conditions.push(LeverCondition {
                    type_: FLAGS_PUBLISHED,
                    ready: false,
                    reason: "Publishing".into(),
                    message: format!("{} changed while the flags were merged into it; merging again", target.display()),
                    blocking: false,
                });
                return Ok(());
            }
            Err(other) => return Err(other),
        };
        sale.view.wrote(&target.scope(), &target.name, written.metadata.resource_version.as_deref());
        if !ours {
            let how = match (live.is_some(), target.kind) {
                (true, _) => format!("merged into the existing {} of", flagd::FLAGS_KEY),
                (false, FlagTarget::ConfigMap) => "created".to_owned(),
                (false, FlagTarget::FeatureFlag) => "created".to_owned(),
            };
            let names: Vec<String> =
                wanted.iter().map(|w| format!("{}={}", w.status.name, on_off(w.status.enabled))).collect();
            report.actions.push(target.action(
                "FlagsPublished",
                "Publish",
                format!("{how} {} with flags {}", target.display(), names.join(", ")),
            ));
        } else if !content_in_place {
            for w in &wanted {
                let before =
                    live_flags.get(&w.status.name).and_then(|f| f.get("defaultVariant")).and_then(Value::as_str);
                let now_variant = on_off(w.status.enabled);
                if before.is_some_and(|b| b != now_variant) {
                    let verb = if w.status.enabled { "FlipOn" } else { "FlipOff" };
                    report.actions.push(target.action(
                        "FlagFlipped",
                        verb,
                        format!("flag {} is now {now_variant} in {}: {}", w.status.name, target.display(), w.why),
                    ));
                }
            }
        }
        for (name, change, was_failing, b, detail) in &changes {
            // The query's health and the breaker's moves are separate news: a query that works
            // again may move the breaker in the same pass.
            let health = match (was_failing, b.failing) {
                (false, true) => Some((
                    "FlagQueryFailed",
                    true,
                    format!(
                        "flag {name}: the query failed ({detail}); the flag keeps its value ({})",
                        on_off(b.state.enabled())
                    ),
                )),
                (true, false) => {
                    Some(("FlagQueryRecovered", false, format!("flag {name}: the query works again (value {detail})")))
                }
                _ => None,
            };
            let moved = (*change == Change::Moved).then(|| {
                (
                    "FlagBreaker",
                    false,
                    format!("flag {name}: breaker {} (value {detail}); the flag stays off", b.state.as_str()),
                )
            });
            for (reason, warning, note) in health.into_iter().chain(moved) {
                let mut action = target.action(reason, "Evaluate", note);
                action.warning = warning;
                report.actions.push(action);
            }
        }
    }

    report.restored = false;
    report.flags.extend(wanted.iter().map(|w| w.status.clone()));
    report.flags_read_back = read_back;
    if let Some(at) = recheck {
        report.recheck_at(at);
    }
    let off: Vec<&str> = wanted.iter().filter(|w| !w.status.enabled).map(|w| w.status.name.as_str()).collect();
    let off = if off.is_empty() { "none".to_owned() } else { off.join(", ") };
    let condition = if failing.is_empty() {
        LeverCondition {
            type_: FLAGS_PUBLISHED,
            ready: true,
            reason: "Published".into(),
            message: format!("{} flags published to {}; off now: {off}", wanted.len(), target.display()),
            blocking: false,
        }
    } else {
        // The flags are in place, but what the signal wants is unknown: said, not blocking.
        let message = format!("{}; those flags keep their values", failing.join("; "));
        report.problems.push(message.clone());
        LeverCondition { type_: FLAGS_PUBLISHED, ready: false, reason: "QueryFailing".into(), message, blocking: false }
    };
    report.conditions.push(condition);
    Ok(())
}

async fn restore(
    api: &Api<DynamicObject>,
    view: &std::sync::Arc<crate::view::View>,
    target: &Target,
    live: Option<&DynamicObject>,
    ours: bool,
    degradation: &Degradation,
    report: &mut Report,
) -> Result<(), kube::Error> {
    let done = |report: &mut Report, message: String| {
        report.conditions.push(LeverCondition {
            type_: FLAGS_PUBLISHED,
            ready: false,
            reason: "Restored".into(),
            message,
            blocking: false,
        });
    };
    let Some(live) = live.filter(|_| ours) else {
        done(report, format!("No flags of the sale remain in {}", target.display()));
        return Ok(());
    };
    let record = live.annotations().get(names::ORIGINAL_FLAGS).and_then(|o| serde_json::from_str::<Record>(o).ok());
    let Some(record) = record else {
        let message = format!(
            "{}: the annotation {ORIGINAL_FLAGS} is missing or unreadable, so it cannot be restored; restore it by hand and remove the annotation {SALE_ANNOTATION}",
            target.display()
        );
        restore_failed(report, message);
        return Ok(());
    };
    let names = degradation.flags.iter().map(|f| f.name.as_str());
    // What stays: every flag and key as people left it, the sale's names as they were.
    let (data, delete) = match target.kind {
        FlagTarget::ConfigMap => {
            let other_content = live
                .data
                .pointer("/data")
                .and_then(Value::as_object)
                .is_some_and(|d| d.keys().any(|k| k != flagd::FLAGS_KEY))
                || live.data.pointer("/binaryData").and_then(Value::as_object).is_some_and(|b| !b.is_empty());
            match ownership::restore_file(target.live_file(live), &record, names, other_content) {
                Ok(restored) => {
                    let file = restored.file.map_or(Value::Null, Value::String);
                    (json!({ "data": { flagd::FLAGS_KEY: file } }), restored.delete)
                }
                Err(why) => {
                    let message = format!(
                        "{}: its {} is no longer a flagd flag file ({why}), so the sale's flags cannot be taken out of it; fix the file and the restore goes on",
                        target.display(),
                        flagd::FLAGS_KEY
                    );
                    restore_failed(report, message);
                    return Ok(());
                }
            }
        }
        FlagTarget::FeatureFlag => {
            let (patch, delete) = ownership::restore_feature_flag(&target.live_flags(live), &record, names);
            (json!({ "spec": { "flagSpec": { "flags": patch } } }), delete)
        }
    };
    let version = live.metadata.resource_version.clone();
    if delete {
        // Deleted only as seen: something added since then is looked at again first.
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions { resource_version: version, uid: None }),
            ..DeleteParams::default()
        };
        match api.delete(&target.name, &params).await {
            Ok(answer) => view.after_delete(&target.scope(), &target.name, &answer),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                retry_restore(report, target);
                return Ok(());
            }
            Err(other) => return Err(other),
        }
        report.actions.push(target.action(
            "FlagsRestored",
            "Delete",
            format!("deleted {}, which the sale had created and nothing else uses", target.display()),
        ));
        done(report, format!("{} is removed", target.display()));
        return Ok(());
    }
    // One merge patch, made from this version of the object (a person's edit since fails it and
    // the next pass looks again): the sale's flags put back, its annotations gone.
    let bookkeeping: Map<String, Value> = [names::SALE_ANNOTATION, names::ORIGINAL_FLAGS, names::FLAG_BREAKERS]
        .iter()
        .map(|k| ((*k).to_owned(), Value::Null))
        .collect();
    let mut doc = json!({"metadata": {"resourceVersion": version, "annotations": bookkeeping}});
    if let (Some(doc), Some(data)) = (doc.as_object_mut(), data.as_object()) {
        doc.extend(data.clone());
    }
    let restored = match api
        .patch(
            &target.name,
            &PatchParams { field_manager: Some(names::FIELD_MANAGER.into()), ..PatchParams::default() },
            &Patch::Merge(&doc),
        )
        .await
    {
        Ok(restored) => restored,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            retry_restore(report, target);
            return Ok(());
        }
        Err(other) => return Err(other),
    };
    view.wrote(&target.scope(), &target.name, restored.metadata.resource_version.as_deref());
    if !restored.annotations().contains_key(names::SALE_ANNOTATION) {
        // Put back: the flag file is no longer the operator's to own.
        super::gitops::release(api, &target.scope(), view, &restored.metadata).await;
    }
    report.actions.push(target.action(
        "FlagsRestored",
        "Restore",
        format!("took the sale's flags out of {}; every other flag and key is as people left it", target.display()),
    ));
    if restored.annotations().contains_key(names::SALE_ANNOTATION) {
        report.restored = false;
        report.problems.push(format!("{}: the sale's annotations are still on it after the restore", target.display()));
    } else {
        done(report, format!("{}: the sale's flags are taken out", target.display()));
    }
    Ok(())
}

/// The object changed between the read and the restore: not restored yet, looked at again soon.
fn retry_restore(report: &mut Report, target: &Target) {
    report.restored = false;
    report.recheck_at(jiff::Timestamp::now() + SignedDuration::from_secs(1));
    report.conditions.push(LeverCondition {
        type_: FLAGS_PUBLISHED,
        ready: false,
        reason: "Restoring".into(),
        message: format!("{} changed while the sale's flags were taken out; looking again", target.display()),
        blocking: false,
    });
}

/// How long before Preparing the flags are published. Static flags carry their windows in
/// `targeting`, so the file must be in place before Preparing begins, with time for kubelet to
/// bring a changed ConfigMap into the apps' volumes (about a minute) and for an operator
/// restart, upgrade or failover; before that, the shared file carries nothing of the sale and a
/// ConfigMap the sale would create does not exist yet.
pub const PUBLISH_LEAD: SignedDuration = SignedDuration::from_hours(1);
const PUBLISH_LEAD_TEXT: &str = "1h";

/// When a sale's flags are first published.
pub fn publish_at(schedule: &Schedule) -> Timestamp {
    schedule.prepare_at - PUBLISH_LEAD
}

/// A static flag: off in its phases, on otherwise, with the window in its targeting.
fn static_flag(flag: &Flag, phases: &[FlagPhase], schedule: &Schedule, phase: Phase) -> Wanted {
    let off_in = |p: Phase| phases.iter().any(|f| flag_phase(*f) == p);
    let enabled = !off_in(phase);
    let targeting = flagd::targeting(&flagd::off_windows(schedule, phases));
    let names: Vec<&str> = phases.iter().map(|p| flag_phase(*p).as_str()).collect();
    let (reason, why) = if enabled {
        ("PhaseOn", format!("the sale is {phase}, outside offDuring [{}]", names.join(", ")))
    } else {
        ("PhaseOff", format!("the sale is {phase}, in offDuring [{}]", names.join(", ")))
    };
    Wanted {
        status: FlagStatus {
            name: flag.name.clone(),
            enabled,
            reason: reason.into(),
            value: None,
            since: static_since(schedule, &off_in, phase).map(Time),
        },
        flag: flagd::flag(enabled, targeting),
        why,
    }
}

/// When a static flag got its current value: the last phase boundary at which it changed.
fn static_since(schedule: &Schedule, off_in: &dyn Fn(Phase) -> bool, phase: Phase) -> Option<Timestamp> {
    let segments = [
        (Phase::Scheduled, None),
        (Phase::Preparing, Some(schedule.prepare_at)),
        (Phase::Active, Some(schedule.start)),
        (Phase::CoolingDown, Some(schedule.end)),
    ];
    let current = segments.iter().position(|(p, _)| *p == phase)?;
    let value = off_in(phase);
    let mut since = None;
    for i in (1..=current).rev() {
        if off_in(segments[i - 1].0) != value {
            since = segments[i].1;
            break;
        }
    }
    since
}

fn flag_phase(p: FlagPhase) -> Phase {
    match p {
        FlagPhase::Preparing => Phase::Preparing,
        FlagPhase::Active => Phase::Active,
        FlagPhase::CoolingDown => Phase::CoolingDown,
    }
}

/// An auto-degrade flag from its breaker.
fn auto_flag(flag: &Flag, auto: &AutoDegrade, b: &Breaker, sample: &Sample) -> Wanted {
    let enabled = b.state.enabled();
    let current = match sample {
        Sample::Value(v) => format!("value {v}"),
        Sample::Failed(_) => "no value".into(),
    };
    let why = match b.state {
        State::Open => format!(
            "the breaker opened: {} stayed above {} for {} (value {})",
            auto.query,
            auto.above,
            auto.for_,
            b.value.map(|v| v.to_string()).unwrap_or_default()
        ),
        State::HalfOpen => format!("the breaker is half-open ({current}, threshold {})", auto.above),
        State::Closed => format!(
            "the breaker closed: the value stayed at or below {} for {} ({current})",
            auto.above, auto.recover_after
        ),
    };
    Wanted {
        status: FlagStatus {
            name: flag.name.clone(),
            enabled,
            reason: format!("Breaker{}", b.state.as_str()),
            value: b.value,
            since: Some(Time(b.since)),
        },
        flag: flagd::flag(enabled, None),
        why,
    }
}

fn rule(auto: &AutoDegrade) -> Rule {
    // The CRD bounds both to 1s..1h; a spec that slipped past it still gets a sane breaker.
    let second = SignedDuration::from_secs(1);
    Rule {
        above: auto.above,
        for_: signed("for", &auto.for_).unwrap_or(second).max(second),
        recover_after: signed("recoverAfter", &auto.recover_after).unwrap_or(second).max(second),
    }
}

/// How often a breaker is evaluated: a quarter of its shorter stretch, 1..15 s, so `for` and
/// `recoverAfter` are honoured to within a few seconds.
pub fn poll_interval(rule: &Rule) -> SignedDuration {
    let quarter = rule.for_.min(rule.recover_after) / 4;
    quarter.clamp(SignedDuration::from_secs(1), SignedDuration::from_secs(15))
}

/// What the lever will do, for `flashsale-operator plan` (pure).
pub fn plan(degradation: &Degradation, namespace: &str, schedule: &Schedule) -> Vec<String> {
    let target = Target::new(degradation, namespace);
    let place = match degradation.target {
        FlagTarget::ConfigMap => {
            format!("{} (key {}), merged into its flag file if it exists", target.display(), flagd::FLAGS_KEY)
        }
        FlagTarget::FeatureFlag => target.display(),
    };
    let mut lines = vec![format!("degradation flags, in every cluster: {place}")];
    lines.push(format!(
        "  published at {} ({PUBLISH_LEAD_TEXT} before Preparing), every flag on until its window",
        publish_at(schedule)
    ));
    for flag in &degradation.flags {
        match (&flag.off_during, &flag.auto_degrade) {
            (Some(phases), _) => {
                let windows: Vec<String> = flagd::off_windows(schedule, phases)
                    .iter()
                    .map(|(from, to)| {
                        let at = |s: i64| Timestamp::from_second(s).map(|t| t.to_string()).unwrap_or_default();
                        format!("{} .. {}", at(*from), at(*to))
                    })
                    .collect();
                let names: Vec<&str> = phases.iter().map(|p| flag_phase(*p).as_str()).collect();
                lines.push(format!(
                    "  {}: off during {} ({}; in its targeting, so apps flip on time without the operator)",
                    flag.name,
                    names.join(", "),
                    windows.join(", ")
                ));
            }
            (None, Some(auto)) => lines.push(format!(
                "  {}: off while {} stays above {} for {}, on again after {} at or below (evaluated Preparing..CoolingDown)",
                flag.name, auto.query, auto.above, auto.for_, auto.recover_after
            )),
            (None, None) => {}
        }
    }
    lines.push(
        "  Restoring:  the sale's flags put back as they were (or removed); every other flag and key kept; an object the sale created deleted if nothing else is in it"
            .into(),
    );
    lines
}

fn on_off(enabled: bool) -> &'static str {
    if enabled { "on" } else { "off" }
}

/// A restore of the flag file that cannot go on: the sale is not restored, and `FlagsPublished`
/// says why (blocking).
fn restore_failed(report: &mut Report, message: String) {
    report.problems.push(message.clone());
    report.restored = false;
    report.conditions.push(LeverCondition {
        type_: FLAGS_PUBLISHED,
        ready: false,
        reason: "RestoreFailed".into(),
        message,
        blocking: true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH);
        Schedule { prepare_at: at(0), start: at(100), end: at(200), restore_at: at(300) }
    }

    fn flag(phases: &[FlagPhase]) -> Flag {
        Flag { name: "recommendations".into(), off_during: Some(phases.to_vec()), auto_degrade: None }
    }

    #[test]
    fn static_flags_follow_the_phase_with_their_window_in_targeting() {
        let s = schedule();
        let phases = [FlagPhase::Preparing, FlagPhase::Active];
        let table = [
            (Phase::Scheduled, true, None),
            (Phase::Preparing, false, Some(s.prepare_at)),
            (Phase::Active, false, Some(s.prepare_at)),
            (Phase::CoolingDown, true, Some(s.end)),
        ];
        for (phase, enabled, since) in table {
            let w = static_flag(&flag(&phases), &phases, &s, phase);
            assert_eq!(w.status.enabled, enabled, "{phase}");
            assert_eq!(w.status.since.map(|t| t.0), since, "{phase}");
            assert_eq!(w.flag["defaultVariant"], on_off(enabled), "{phase}");
            assert!(w.flag["targeting"]["if"].is_array(), "{phase}: the window is in the targeting");
        }
    }

    #[test]
    fn since_is_the_last_boundary_where_the_value_changed() {
        let s = schedule();
        let split = [FlagPhase::Preparing, FlagPhase::CoolingDown];
        let table = [
            (Phase::Scheduled, true, None),
            (Phase::Preparing, false, Some(s.prepare_at)),
            (Phase::Active, true, Some(s.start)),
            (Phase::CoolingDown, false, Some(s.end)),
        ];
        for (phase, enabled, since) in table {
            let w = static_flag(&flag(&split), &split, &s, phase);
            assert_eq!((w.status.enabled, w.status.since.map(|t| t.0)), (enabled, since), "{phase}");
        }
        let only_cooling = [FlagPhase::CoolingDown];
        let w = static_flag(&flag(&only_cooling), &only_cooling, &s, Phase::Active);
        assert_eq!((w.status.enabled, w.status.since), (true, None), "on all along");
    }

    #[test]
    fn plan_names_the_object_the_windows_and_the_breakers() -> Result<(), serde_json::Error> {
        let degradation: Degradation = serde_json::from_value(json!({
            "prometheus": {"url": "http://prometheus:9090"},
            "flags": [
                {"name": "recommendations", "offDuring": ["Preparing", "Active"]},
                {"name": "reviews", "autoDegrade": {"query": "p99", "above": 0.5, "for": "30s", "recoverAfter": "2m"}},
            ]
        }))?;
        let text = plan(&degradation, "shop", &schedule()).join("\n");
        assert!(text.contains("ConfigMap shop/flashsale-flags (key flags.flagd.json)"), "{text}");
        assert!(
            text.contains(
                "recommendations: off during Preparing, Active (2027-01-15T08:00:00Z .. 2027-01-15T08:03:20Z"
            ),
            "{text}"
        );
        assert!(text.contains("reviews: off while p99 stays above 0.5 for 30s"), "{text}");
        Ok(())
    }

    #[test]
    fn poll_interval_is_a_quarter_of_the_shorter_stretch_within_1_to_15_seconds() {
        let r = |f: i64, r: i64| Rule {
            above: 1.0,
            for_: SignedDuration::from_secs(f),
            recover_after: SignedDuration::from_secs(r),
        };
        assert_eq!(poll_interval(&r(30, 120)), SignedDuration::from_millis(7500));
        assert_eq!(poll_interval(&r(2, 120)), SignedDuration::from_secs(1));
        assert_eq!(poll_interval(&r(3600, 3600)), SignedDuration::from_secs(15));
    }

    #[test]
    fn unreadable_breakers_resume_from_the_published_flags() {
        let now: Timestamp = "2026-11-11T00:10:00Z".parse().unwrap();
        let live: Map<String, Value> = serde_json::from_value(json!({
            "reviews": {"defaultVariant": "off"},
            "search": {"defaultVariant": "on"},
        }))
        .unwrap();
        let auto = ["reviews", "search", "new-flag"];
        // Garbage: every auto flag resumes from what is published, the open one stays open.
        let (b, problem) = stored_breakers(Some("{not json"), &auto, &live, now);
        assert_eq!(b["reviews"].state, State::Open);
        assert_eq!(b["search"].state, State::Closed);
        assert_eq!(b["new-flag"].state, State::Closed);
        assert!(problem.unwrap().contains("reviews, search, new-flag"));
        // One bad entry: only that flag resumes; a flag not recorded yet is left to start closed.
        let open = serde_json::to_value(Breaker { state: State::Open, ..Breaker::new(now) }).unwrap();
        let text = json!({"search": open, "reviews": {"state": "Sideways"}}).to_string();
        let (b, problem) = stored_breakers(Some(&text), &auto, &live, now);
        assert_eq!(b["reviews"].state, State::Open, "resumed from its published off");
        assert_eq!(b["search"].state, State::Open, "read as recorded");
        assert!(!b.contains_key("new-flag"));
        assert!(problem.unwrap().contains("for reviews;"));
        // Readable: no problem.
        let (_, problem) = stored_breakers(Some(&json!({"search": open}).to_string()), &auto, &live, now);
        assert_eq!(problem, None);
        assert_eq!(stored_breakers(None, &auto, &live, now), (BTreeMap::new(), None));
    }

    fn auto(for_: &str, recover_after: &str) -> AutoDegrade {
        serde_json::from_value(json!({"query": "p99", "above": 0.5, "for": for_, "recoverAfter": recover_after}))
            .unwrap()
    }

    /// An auto-degrade flag as its breaker leaves it: on only while closed, the breaker's state as
    /// the reason, the value and time of the last flip, and why for the event.
    #[test]
    fn an_auto_flag_is_on_only_while_its_breaker_is_closed() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let a = auto("30s", "2m");
        let flag = Flag { name: "reviews".into(), off_during: None, auto_degrade: Some(a.clone()) };
        let breaker = |state: State, value: Option<f64>| Breaker { state, since: at(10), value, ..Breaker::default() };
        // (case, breaker, sample, enabled, reason, value, why starts with)
        let table = [
            (
                "closed from the start",
                breaker(State::Closed, None),
                Sample::Value(0.1),
                true,
                "BreakerClosed",
                None,
                "the breaker closed: the value stayed at or below 0.5 for 120s (value 0.1)",
            ),
            (
                "closed again",
                breaker(State::Closed, Some(0.2)),
                Sample::Value(0.2),
                true,
                "BreakerClosed",
                Some(0.2),
                "the breaker closed:",
            ),
            (
                "open",
                breaker(State::Open, Some(0.9)),
                Sample::Value(0.95),
                false,
                "BreakerOpen",
                Some(0.9),
                "the breaker opened: p99 stayed above 0.5 for 30s (value 0.9)",
            ),
            (
                "half-open",
                breaker(State::HalfOpen, Some(0.9)),
                Sample::Value(0.3),
                false,
                "BreakerHalfOpen",
                Some(0.9),
                "the breaker is half-open (value 0.3, threshold 0.5)",
            ),
            (
                "half-open, the query failing",
                breaker(State::HalfOpen, Some(0.9)),
                Sample::Failed("timeout".into()),
                false,
                "BreakerHalfOpen",
                Some(0.9),
                "the breaker is half-open (no value, threshold 0.5)",
            ),
            (
                "closed, the query failing",
                breaker(State::Closed, None),
                Sample::Failed("timeout".into()),
                true,
                "BreakerClosed",
                None,
                "the breaker closed: the value stayed at or below 0.5 for 120s (no value)",
            ),
        ];
        for (case, b, sample, enabled, reason, value, why) in table {
            let w = auto_flag(&flag, &a, &b, &sample);
            let got = (w.status.enabled, w.status.reason.as_str(), w.status.value, w.status.since.map(|t| t.0));
            assert_eq!(got, (enabled, reason, value, Some(at(10))), "{case}");
            assert_eq!(w.flag, flagd::flag(enabled, None), "{case}: an auto flag has no targeting");
            assert!(w.why.starts_with(why), "{case}: {:?}", w.why);
        }
    }

    /// The breaker's rule from the spec: a stretch shorter than a second (or unusable) is one
    /// second; and how often it is evaluated.
    #[test]
    fn a_breaker_rule_is_at_least_a_second_each_way_and_evaluated_a_few_times_per_stretch() {
        let secs = SignedDuration::from_secs;
        // (case, for, recoverAfter, rule's for, rule's recoverAfter, poll interval)
        let table = [
            ("as written", "30s", "2m", secs(30), secs(120), SignedDuration::from_millis(7500)),
            ("zero is one second", "0s", "0s", secs(1), secs(1), secs(1)),
            ("negative is one second", "-30s", "1m", secs(1), secs(60), secs(1)),
            ("sub-second is one second", "500ms", "1m", secs(1), secs(60), secs(1)),
            ("the shorter stretch decides", "10m", "8s", secs(600), secs(8), secs(2)),
            ("long stretches poll every 15s", "1h", "1h", secs(3600), secs(3600), secs(15)),
        ];
        for (case, for_, recover_after, want_for, want_recover, every) in table {
            let r = rule(&auto(for_, recover_after));
            assert_eq!((r.above, r.for_, r.recover_after), (0.5, want_for, want_recover), "{case}");
            assert_eq!(poll_interval(&r), every, "{case}");
        }
    }

    /// A breaker resumed from what is published: open when the flag is off, closed otherwise;
    /// and which reasons say the query failed.
    #[test]
    fn a_resumed_breaker_is_open_only_when_the_published_flag_is_off() {
        let now: Timestamp = "2026-11-11T00:10:00Z".parse().unwrap();
        // (case, published flag, state)
        let table = [
            ("published off", Some(json!({"defaultVariant": "off"})), State::Open),
            ("published on", Some(json!({"defaultVariant": "on"})), State::Closed),
            ("not published", None, State::Closed),
            ("no default variant", Some(json!({"state": "ENABLED"})), State::Closed),
            ("a variant of another name", Some(json!({"defaultVariant": "OFF"})), State::Closed),
        ];
        for (case, flag, state) in table {
            let b = resumed(flag.as_ref(), now);
            assert_eq!(b, Breaker { state, ..Breaker::new(now) }, "{case}");
        }
        let status =
            |reason: &str| FlagStatus { name: "reviews".into(), reason: reason.into(), ..FlagStatus::default() };
        // (reason, the query failed)
        let reasons = [
            ("QueryFailed: connection refused", true),
            ("QueryFailed", true),
            ("BreakerOpen", false),
            ("NotArmed", false),
            ("PhaseOff", false),
        ];
        for (reason, failed) in reasons {
            assert_eq!(query_failed(&status(reason)), failed, "{reason}");
        }
    }

    /// A static flag's reason and why, in each phase it is published in, for every choice of
    /// offDuring.
    #[test]
    fn a_static_flag_says_whether_the_phase_is_in_its_off_during() {
        let s = schedule();
        use FlagPhase as F;
        // (case, offDuring, per phase Scheduled..CoolingDown: enabled)
        let table: [(&str, &[FlagPhase], [bool; 4]); 6] = [
            ("Preparing", &[F::Preparing], [true, false, true, true]),
            ("Active", &[F::Active], [true, true, false, true]),
            ("CoolingDown", &[F::CoolingDown], [true, true, true, false]),
            ("the whole hold", &[F::CoolingDown, F::Preparing, F::Active], [true, false, false, false]),
            ("listed twice", &[F::Active, F::Active], [true, true, false, true]),
            ("none", &[], [true, true, true, true]),
        ];
        let phases = [Phase::Scheduled, Phase::Preparing, Phase::Active, Phase::CoolingDown];
        for (what, off, enabled) in table {
            for (phase, enabled) in phases.into_iter().zip(enabled) {
                let case = format!("offDuring {what}, {phase}");
                let w = static_flag(&flag(off), off, &s, phase);
                let (reason, why) = if enabled { ("PhaseOn", "outside") } else { ("PhaseOff", "in") };
                assert_eq!((w.status.enabled, w.status.reason.as_str()), (enabled, reason), "{case}");
                assert!(w.why.starts_with(&format!("the sale is {phase}, {why} offDuring [")), "{case}: {}", w.why);
                assert_eq!(w.flag["targeting"].is_null(), off.is_empty(), "{case}: a window, if any, in targeting");
            }
        }
    }
}
