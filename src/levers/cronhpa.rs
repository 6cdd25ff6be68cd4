//! Alibaba's CronHorizontalPodAutoscaler (`autoscaling.alibabacloud.com/v1beta1`): one object per
//! workload holding two run-once jobs, `scale-up` at the start of Preparing and `scale-down` at
//! the restore, so the cluster's own CronHPA controller moves the replicas at those seconds even
//! when the operator is down.
//!
//! How the controller (kubernetes-cronhpa-controller v1.3.0) reads what is rendered here:
//! - `@date YYYY-MM-DD hh:mm:ss` fires at that wall-clock second in the controller's `TZ` (one
//!   zone per controller, given to the sale as `cronHPATimeZone`); the year is ignored, so the
//!   date recurs yearly and every job is `runOnce` (retired after its first run, succeeded or
//!   failed). A date already past when the job is registered therefore fires next year, not now.
//! - A wall-clock time that a DST change repeats fires at its first occurrence; the second one
//!   cannot be expressed and is refused by [`render`].
//! - `scaleTargetRef.apiVersion` must be `group/version`: a core (`v1`) target is refused.
//! - It writes `.status` (per-job `conditions[]` with `state` Submitted, Succeed or Failed) with
//!   plain updates of the whole object; [`apply`] compares specs so that those writes never make
//!   the operator write back.

use crate::api::names;
use std::collections::BTreeMap;

use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::{
    api::Workload,
    view::{Scope, View},
};
use std::sync::Arc;

/// The CronHPA API group.
pub const GROUP: &str = "autoscaling.alibabacloud.com";
/// The CronHPA API version (without the group).
pub const VERSION: &str = "v1beta1";
/// `apiVersion` of a CronHPA object.
pub const API_VERSION: &str = "autoscaling.alibabacloud.com/v1beta1";
/// Kind of a CronHPA object.
pub const KIND: &str = "CronHorizontalPodAutoscaler";
/// Plural resource name of the CronHPA kind.
pub const PLURAL: &str = "cronhorizontalpodautoscalers";
/// Name of the CronHPA CustomResourceDefinition.
pub const CRD_NAME: &str = "cronhorizontalpodautoscalers.autoscaling.alibabacloud.com";

/// The job that raises the workload to its peak at the start of Preparing.
pub const SCALE_UP_JOB: &str = "scale-up";
/// The job that puts the baseline back at the restore.
pub const SCALE_DOWN_JOB: &str = "scale-down";

/// Object names are kept this short so that the controller's Events (named
/// `<object>.<16 hex digits>`) are still valid names.
const MAX_NAME: usize = 253 - 17;
const MAX_LABEL_VALUE: usize = 63;
/// The `@date` layout the controller parses (Go's `2006-01-02 15:04:05`).
const DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// What a CronHPA scales.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScaleTarget {
    /// The workload's scale subresource (no HPA governs it).
    Workload { api_version: String, kind: String, name: String },
    /// The HorizontalPodAutoscaler governing the workload (`autoscaling/v2`).
    Hpa { name: String },
}

impl ScaleTarget {
    /// The workload itself.
    pub fn workload(workload: &Workload) -> ScaleTarget {
        ScaleTarget::Workload {
            api_version: workload.target.api_version.clone(),
            kind: workload.target.kind.clone(),
            name: workload.target.name.clone(),
        }
    }

    fn to_ref(&self) -> TargetRef {
        match self {
            ScaleTarget::Workload { api_version, kind, name } => {
                TargetRef { api_version: api_version.clone(), kind: kind.clone(), name: name.clone() }
            }
            ScaleTarget::Hpa { name } => TargetRef {
                api_version: "autoscaling/v2".into(),
                kind: "HorizontalPodAutoscaler".into(),
                name: name.clone(),
            },
        }
    }
}

/// A CronHPA that cannot be rendered so that the controller does what the sale means.
#[derive(Debug, Error)]
pub enum RenderError {
    #[error("unknown time zone {zone:?} for CronHPA schedules: {source}")]
    UnknownZone {
        zone: String,
        #[source]
        source: jiff::Error,
    },
    #[error(
        "CronHPA cannot target apiVersion {api_version:?}: it needs group/version (core kinds such as v1 are not supported)"
    )]
    CoreApiVersion { api_version: String },
    #[error(
        "the CronHPA job {job} is due at {at}, which is {local} in {zone}; that wall-clock time occurs twice there and the controller would act at its first occurrence"
    )]
    RepeatedLocalTime { job: &'static str, at: Timestamp, local: String, zone: String },
}

/// `spec.scaleTargetRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct TargetRef {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

/// One entry of `spec.jobs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Job {
    #[serde(default)]
    name: String,
    #[serde(default)]
    schedule: String,
    #[serde(default)]
    target_size: i32,
    #[serde(default)]
    run_once: Option<bool>,
}

/// `spec`, tolerant of the controller's way of writing it back: unset lists as `null` (which the
/// API server prunes) and `runOnce: false` written out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    scale_target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude_dates: Option<Vec<String>>,
    #[serde(default)]
    jobs: Option<Vec<Job>>,
}

impl Spec {
    /// The same spec with every default spelled out, for comparing what was rendered with what
    /// the controller wrote back.
    fn normalized(mut self) -> Spec {
        self.exclude_dates = Some(self.exclude_dates.unwrap_or_default());
        let jobs = self.jobs.unwrap_or_default();
        self.jobs = Some(jobs.into_iter().map(|j| Job { run_once: Some(j.run_once.unwrap_or(false)), ..j }).collect());
        self
    }

    fn from_value(value: Option<&Value>) -> Option<Spec> {
        let value = value?;
        serde_json::from_value::<Spec>(value.clone()).ok().map(Spec::normalized)
    }
}

/// The name of the CronHPA a sale creates for a workload: `fs-<sale>-<kind>-<workload>`, cut
/// short with a hash of the full name where it would be too long.
pub fn name(sale_name: &str, workload: &Workload) -> String {
    let full = format!("fs-{}-{}-{}", sale_name, workload.target.kind, workload.target.name);
    let full = dns_safe(&full);
    if full.len() <= MAX_NAME {
        return full;
    }
    shorten(&full, MAX_NAME)
}

/// Lower-cases and replaces anything a DNS subdomain cannot hold, so the name is valid even for
/// a workload reference the schema did not check.
fn dns_safe(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' { c } else { '-' })
        .collect();
    // Every dot-separated part must start and end with a letter or digit.
    mapped.split('.').map(|part| part.trim_matches('-')).filter(|part| !part.is_empty()).collect::<Vec<_>>().join(".")
}

/// `s` (ASCII) cut to at most `max` characters, ending in `-<8 hex digits of a hash of s>`.
fn shorten(s: &str, max: usize) -> String {
    super::fit_name(s, max, super::fnv1a(s))
}

/// A valid label value (at most 63 characters, alphanumerics at both ends).
fn label_value(s: &str) -> String {
    let cleaned: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_LABEL_VALUE {
        return trimmed.to_owned();
    }
    shorten(trimmed, MAX_LABEL_VALUE)
}

/// `@date <local time>` for `at` in `zone`, refusing a local time the controller would read as
/// another instant.
fn date_schedule(job: &'static str, at: Timestamp, zone: &TimeZone, zone_name: &str) -> Result<String, RenderError> {
    let local = at.to_zoned(zone.clone());
    let text = local.strftime(DATE_FORMAT).to_string();
    // The controller acts at whole seconds, at the first instant that shows this wall-clock time.
    let civil = local.datetime().with().subsec_nanosecond(0).build();
    let first = civil.ok().and_then(|dt| zone.to_ambiguous_timestamp(dt).earlier().ok());
    let whole_second = Timestamp::from_second(at.as_second()).ok();
    if first.is_none() || first != whole_second {
        return Err(RenderError::RepeatedLocalTime { job, at, local: text, zone: zone_name.to_owned() });
    }
    Ok(format!("@date {text}"))
}

/// The CronHPA for one workload, as a whole object for server-side apply. Pure.
///
/// `holder` is the sale's `namespace/name`; `target` is what the CronHPA scales (the workload,
/// or the HPA that governs it); the scale-up job sets `scale_up` at `prepare_at` (the peak, or
/// more when the workload already has more: the controller sets the count, it never compares);
/// `baseline` is what the workload goes back to at `restore_at`; `zone` is the controller's `TZ`.
#[allow(clippy::too_many_arguments)]
pub fn render(
    sale_ns: &str,
    sale_name: &str,
    holder: &str,
    workload: &Workload,
    target: ScaleTarget,
    (scale_up, baseline): (i32, i32),
    prepare_at: Timestamp,
    restore_at: Timestamp,
    zone: &str,
) -> Result<Value, RenderError> {
    let tz = TimeZone::get(zone).map_err(|source| RenderError::UnknownZone { zone: zone.to_owned(), source })?;
    let scale_target_ref = target.to_ref();
    match scale_target_ref.api_version.split_once('/') {
        Some((group, version)) if !group.is_empty() && !version.is_empty() => {}
        _ => return Err(RenderError::CoreApiVersion { api_version: scale_target_ref.api_version }),
    }
    let jobs = vec![
        Job {
            name: SCALE_UP_JOB.into(),
            schedule: date_schedule(SCALE_UP_JOB, prepare_at, &tz, zone)?,
            target_size: scale_up,
            run_once: Some(true),
        },
        Job {
            name: SCALE_DOWN_JOB.into(),
            schedule: date_schedule(SCALE_DOWN_JOB, restore_at, &tz, zone)?,
            target_size: baseline,
            run_once: Some(true),
        },
    ];
    let spec = Spec { scale_target_ref, exclude_dates: None, jobs: Some(jobs) };
    // The sale's own namespace, never the reference's: a lever creates objects only there.
    let namespace = sale_ns;
    let labels = BTreeMap::from([
        (names::MANAGED_BY_LABEL, names::MANAGED_BY.to_owned()),
        (names::SALE_LABEL, label_value(sale_name)),
    ]);
    Ok(json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name(sale_name, workload),
            "namespace": namespace,
            "labels": labels,
            "annotations": {names::SALE_ANNOTATION: holder, names::CRON_WINDOW: format!("{prepare_at}/{restore_at}")},
        },
        "spec": spec,
    }))
}

/// The CronHPA resource, for dynamic API access.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// Whether the CronHPA CRD exists in the cluster (watched by name: a CRD installed or removed
/// mid-sale shows at once).
pub async fn installed(view: &Arc<View>) -> Result<bool, kube::Error> {
    let scope = Scope::typed::<CustomResourceDefinition>(None).named(CRD_NAME);
    Ok(view.get(&scope, CRD_NAME).await?.is_some())
}

/// The CronHPA objects of a namespace, as the view watches them.
pub fn scope(namespace: &str) -> Scope {
    Scope::of(&api_resource(), Some(namespace))
}

/// The metadata a rendered object must have to be applied.
#[derive(Deserialize)]
struct Identity {
    metadata: IdentityMeta,
}

#[derive(Deserialize)]
struct IdentityMeta {
    name: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Server-side applies a rendered CronHPA (forcing ownership), unless the live object already
/// has the same spec and carries the rendered labels and annotations. Returns whether a write
/// was sent.
pub async fn apply(view: &Arc<View>, object: &Value) -> Result<bool, kube::Error> {
    let identity: Identity = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    let meta = identity.metadata;
    let api: Api<DynamicObject> = Api::namespaced_with(view.client().clone(), &meta.namespace, &api_resource());
    if let Some(live) = view.get(&scope(&meta.namespace), &meta.name).await? {
        let same_spec = Spec::from_value(live.data.get("spec")) == Spec::from_value(object.get("spec"));
        let live_labels = live.metadata.labels.clone().unwrap_or_default();
        let live_annotations = live.metadata.annotations.clone().unwrap_or_default();
        let carries = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
            want.iter().all(|(k, v)| have.get(k) == Some(v))
        };
        if same_spec && carries(&meta.labels, &live_labels) && carries(&meta.annotations, &live_annotations) {
            return Ok(false);
        }
    }
    let written =
        api.patch(&meta.name, &PatchParams::apply(names::FIELD_MANAGER).force(), &Patch::Apply(object)).await?;
    view.wrote(&scope(&meta.namespace), &meta.name, written.metadata.resource_version.as_deref());
    Ok(true)
}

/// Deletes a CronHPA. Returns whether it existed.
pub async fn remove(client: &Client, namespace: &str, name: &str) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err),
    }
}

/// The controller's state of each job, as `(job name, state)` sorted by job name: `Submitted`
/// (registered, not run yet), `Succeed` or `Failed` (run). Empty when the object does not exist
/// or the controller has not seen it yet.
pub async fn job_states(view: &Arc<View>, namespace: &str, name: &str) -> Result<Vec<(String, String)>, kube::Error> {
    let Some(live) = view.get(&scope(namespace), name).await? else {
        return Ok(vec![]);
    };
    Ok(states_of(&live.data))
}

fn states_of(data: &Value) -> Vec<(String, String)> {
    let conditions = data.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut states: Vec<(String, String)> = conditions
        .iter()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?.to_owned();
            let state = c.get("state").and_then(Value::as_str).unwrap_or_default().to_owned();
            Some((name, state))
        })
        .collect();
    states.sort();
    states
}

/// A job the controller has run (`Succeed` or `Failed`): a run-once job is then retired from
/// its engine, so deleting the object afterwards removes nothing from the engine.
pub fn settled(states: &[(String, String)], job: &str) -> bool {
    states.iter().any(|(name, state)| name == job && matches!(state.as_str(), "Succeed" | "Failed"))
}

/// A sale's CronHPA on a workload, as another sale sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The sale's `namespace/name`.
    pub holder: String,
    /// The CronHPA object's name.
    pub name: String,
    pub created: Option<Timestamp>,
    /// `(prepare_at, restore_at)`; `None` when the object does not say (then it counts as
    /// overlapping every window: a schedule that cannot be read is not assumed harmless).
    pub window: Option<(Timestamp, Timestamp)>,
}

impl Claim {
    fn overlaps(&self, window: (Timestamp, Timestamp)) -> bool {
        // Touching windows conflict too: a scale-down and a scale-up due in the same second
        // run in no defined order.
        self.window.is_none_or(|(prepare, restore)| prepare <= window.1 && window.0 <= restore)
    }

    /// Earlier created wins; the same second is broken by object name, so both sales agree.
    fn key(&self) -> (Option<Timestamp>, &str) {
        (self.created, self.name.as_str())
    }
}

/// The other sale whose CronHPA on the same workload wins over this sale's: one whose window
/// overlaps `window` and whose object came first (`ours`, this sale's own object if it exists,
/// loses to any overlapping claim created before it). Pure.
///
/// First created wins because that sale has held the workload's schedule longest: its
/// scale-up may already be registered in the controller, possibly with the operator down,
/// and a sale never takes a workload from another that got there first.
pub fn first_claim<'a>(
    holder: &str,
    window: (Timestamp, Timestamp),
    ours: Option<&Claim>,
    claims: &'a [Claim],
) -> Option<&'a Claim> {
    claims
        .iter()
        .filter(|c| c.holder != holder && c.overlaps(window))
        .filter(|c| ours.is_none_or(|o| c.key() < o.key()))
        .min_by(|a, b| a.key().cmp(&b.key()))
}

/// Every CronHPA the operator created in `namespace` that scales `workload`, read from the view.
pub async fn claims(view: &Arc<View>, namespace: &str, workload: &Workload) -> Result<Vec<Claim>, kube::Error> {
    let objects = view.list(&scope(namespace)).await?;
    Ok(objects.iter().filter_map(|o| claim_of(o, workload)).collect())
}

fn claim_of(object: &DynamicObject, workload: &Workload) -> Option<Claim> {
    let labels = object.metadata.labels.as_ref()?;
    if labels.get(names::MANAGED_BY_LABEL).map(String::as_str) != Some(names::MANAGED_BY) {
        return None;
    }
    let target: TargetRef = serde_json::from_value(object.data.pointer("/spec/scaleTargetRef")?.clone()).ok()?;
    if target.kind != workload.target.kind || target.name != workload.target.name {
        return None;
    }
    let annotations = object.metadata.annotations.as_ref()?;
    let window = annotations.get(names::CRON_WINDOW).and_then(|w| {
        let (prepare, restore) = w.split_once('/')?;
        Some((prepare.parse().ok()?, restore.parse().ok()?))
    });
    Some(Claim {
        holder: annotations.get(names::SALE_ANNOTATION)?.clone(),
        name: object.metadata.name.clone()?,
        created: object.metadata.creation_timestamp.as_ref().map(|t| t.0),
        window,
    })
}

/// The scale-down target on a live CronHPA of the sale: the baseline it puts back.
pub fn scale_down_target(cron: &DynamicObject) -> Option<i32> {
    job_target(cron, SCALE_DOWN_JOB)
}

/// The scale-up target on a live CronHPA of the sale.
pub fn scale_up_target(cron: &DynamicObject) -> Option<i32> {
    job_target(cron, SCALE_UP_JOB)
}

fn job_target(cron: &DynamicObject, job: &str) -> Option<i32> {
    cron.data
        .pointer("/spec/jobs")?
        .as_array()?
        .iter()
        .find(|j| j.get("name").and_then(Value::as_str) == Some(job))?
        .get("targetSize")?
        .as_i64()
        .and_then(|v| i32::try_from(v).ok())
}

/// What CronHPA mode knows of one workload in one pass, read before any write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Facts {
    pub intent: super::Intent,
    pub now: Timestamp,
    /// `(prepare_at, restore_at)`; `None` when the spec cannot be resolved (restore only).
    pub window: Option<(Timestamp, Timestamp)>,
    pub peak: i32,
    /// The workload's `spec.replicas`, as the view shows it.
    pub replicas: i32,
    /// The baseline recorded on the workload (`flashsale.dev/original-replicas`).
    pub recorded: Option<i32>,
    /// The sale's CronHPA exists.
    pub object: bool,
    /// The scale-down target on the sale's live CronHPA.
    pub scale_down_target: Option<i32>,
    /// The scale-up target on the sale's live CronHPA.
    pub scale_up_target: Option<i32>,
    pub scale_up_settled: bool,
    pub scale_down_settled: bool,
}

/// What CronHPA mode does for one workload in one pass. Pure: [`decide`] returns it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub baseline: i32,
    /// The replicas the sale wants now, for status.
    pub target: i32,
    /// Put the CronHPA in place with `scale_up` as its scale-up target and `baseline` as its
    /// scale-down target.
    pub render: bool,
    pub scale_up: i32,
    /// The baseline to record on the workload (from Preparing on).
    pub record_original: Option<i32>,
    /// The operator scales the workload itself to this count now.
    pub scale_to: Option<i32>,
    /// Delete the sale's CronHPA now.
    pub remove: bool,
    /// The sale holds the workload.
    pub holds: bool,
}

/// How long after the scale-down instant the operator waits for the controller to run the
/// scale-down job before deleting the object with the job still registered.
pub const SCALE_DOWN_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// The CronHPA mode's rules, one pass at a time. Pure.
///
/// - Baseline: until Preparing it follows the live replicas (the object's scale-down target is
///   rewritten as they change, so it holds the count the workload had when the scale-up
///   fired); from Preparing it is what the workload records, else the object's target if the
///   scale-up has already run (the live count is then the peak), else the live count. That
///   baseline is recorded on the workload in the same pass.
/// - Peak is a floor: the scale-up job sets `max(peak, live)` until it has run (the controller
///   sets its target whatever the workload has, so a job of the bare peak would scale a
///   workload above peak down at Preparing, or a person's scale-up back down when it is late).
/// - The operator's own safety net acts at the boundary itself, not after a grace: the
///   controller (v1.3.0, its go-cron engine) re-arms its timer after removing a job from the
///   time it last added or fired one, so every removal (another sale's object deleted, a job
///   changed, a run-once job retired) makes its other pending jobs late by the time the engine
///   had been idle, which is unbounded (weeks, for objects created weeks ahead) and invisible
///   from outside. The operator therefore scales at Preparing and at the restore itself when
///   the workload is not there yet; the CronHPA is what scales when the operator is down.
/// - The object, the controller-side record of the baseline, is deleted only once the workload
///   is seen at or below the baseline, and only after its scale-down job has run (the
///   controller has then retired it, so the deletion removes nothing from the engine and
///   delays no other sale's job), or [`SCALE_DOWN_GRACE`] after its instant, or at once when
///   the sale ends before its restore instant (suspended, deleted).
pub fn decide(f: &Facts) -> Decision {
    use super::Intent;
    match (f.intent, f.window) {
        (Intent::Preflight, Some(_)) => Decision {
            baseline: f.replicas,
            target: f.replicas,
            render: true,
            scale_up: f.peak.max(f.replicas),
            ..Decision::default()
        },
        (Intent::Hold, Some((prepare_at, _))) => {
            let scaled_up = f.scale_up_settled || f.replicas == f.peak;
            let baseline = f.recorded.or(f.scale_down_target.filter(|_| scaled_up)).unwrap_or(f.replicas);
            // A job that has run is left as it ran: changing it would register it again.
            let scale_up = match f.scale_up_settled {
                true => f.scale_up_target.unwrap_or(f.peak),
                false => f.peak.max(f.replicas),
            };
            Decision {
                baseline,
                target: f.peak,
                render: true,
                scale_up,
                record_original: Some(baseline),
                scale_to: (f.replicas < f.peak && f.now >= prepare_at).then_some(f.peak),
                remove: false,
                holds: true,
            }
        }
        (_, window) => {
            let baseline = f.recorded.or(f.scale_down_target).unwrap_or(f.replicas);
            let early = window.is_none_or(|(_, restore_at)| f.now < restore_at);
            let overdue = window.is_some_and(|(_, restore_at)| f.now >= restore_at + SCALE_DOWN_GRACE);
            let job_done = f.scale_down_settled || early || overdue;
            Decision {
                baseline,
                target: baseline,
                scale_up: f.scale_up_target.unwrap_or(f.peak),
                scale_to: (f.replicas > baseline).then_some(baseline),
                remove: f.object && f.replicas <= baseline && job_done,
                ..Decision::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(kind: &str, name: &str, namespace: Option<&str>, peak: i32) -> Workload {
        let mut target = json!({"kind": kind, "name": name});
        if let Some(ns) = namespace {
            target["namespace"] = json!(ns);
        }
        serde_json::from_value(json!({"ref": target, "scale": {"peak": peak}})).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn schedules(object: &Value) -> Vec<(String, String, i64, bool)> {
        object["spec"]["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["name"].as_str().unwrap().to_owned(),
                    j["schedule"].as_str().unwrap().to_owned(),
                    j["targetSize"].as_i64().unwrap(),
                    j["runOnce"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    fn double_eleven(zone: &str) -> Result<Value, RenderError> {
        let w = workload("Deployment", "web", None, 20);
        render(
            "shop",
            "double-11",
            "shop/double-11",
            &w,
            ScaleTarget::workload(&w),
            (w.scale.peak, 3),
            ts("2026-11-10T15:30:00Z"),
            ts("2026-11-10T18:15:00Z"),
            zone,
        )
    }

    #[test]
    fn renders_the_whole_object_in_shanghai() {
        let object = double_eleven("Asia/Shanghai").unwrap();
        assert_eq!(
            object,
            json!({
                "apiVersion": "autoscaling.alibabacloud.com/v1beta1",
                "kind": "CronHorizontalPodAutoscaler",
                "metadata": {
                    "name": "fs-double-11-deployment-web",
                    "namespace": "shop",
                    "labels": {"app.kubernetes.io/managed-by": "flashsale-operator", "flashsale.dev/sale": "double-11"},
                    "annotations": {
                        "flashsale.dev/sale": "shop/double-11",
                        "flashsale.dev/window": "2026-11-10T15:30:00Z/2026-11-10T18:15:00Z",
                    },
                },
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "jobs": [
                        {"name": "scale-up", "schedule": "@date 2026-11-10 23:30:00", "targetSize": 20, "runOnce": true},
                        {"name": "scale-down", "schedule": "@date 2026-11-11 02:15:00", "targetSize": 3, "runOnce": true},
                    ],
                },
            })
        );
    }

    #[test]
    fn the_same_instants_in_utc() {
        let object = double_eleven("UTC").unwrap();
        assert_eq!(
            schedules(&object),
            vec![
                ("scale-up".into(), "@date 2026-11-10 15:30:00".into(), 20, true),
                ("scale-down".into(), "@date 2026-11-10 18:15:00".into(), 3, true),
            ]
        );
    }

    #[test]
    fn an_unknown_zone_is_an_error() {
        let err = double_eleven("Mars/Olympus_Mons").unwrap_err();
        assert!(matches!(err, RenderError::UnknownZone { ref zone, .. } if zone == "Mars/Olympus_Mons"), "{err}");
        assert!(err.to_string().contains("Mars/Olympus_Mons"));
    }

    #[test]
    fn new_york_across_the_end_of_daylight_saving_time() {
        // 2026-11-01 02:00 EDT falls back to 01:00 EST.
        let w = workload("Deployment", "web", None, 10);
        let render_ny = |prepare: &str, restore: &str| {
            render(
                "shop",
                "bf",
                "shop/bf",
                &w,
                ScaleTarget::workload(&w),
                (w.scale.peak, 2),
                ts(prepare),
                ts(restore),
                "America/New_York",
            )
        };
        // Noon on either side: UTC-4 before, UTC-5 after.
        let object = render_ny("2026-10-31T16:00:00Z", "2026-11-01T17:00:00Z").unwrap();
        assert_eq!(
            schedules(&object),
            vec![
                ("scale-up".into(), "@date 2026-10-31 12:00:00".into(), 10, true),
                ("scale-down".into(), "@date 2026-11-01 12:00:00".into(), 2, true),
            ]
        );
        // 01:30 happens twice. The first (EDT) is what the controller acts on, so it renders...
        let object = render_ny("2026-11-01T05:30:00Z", "2026-11-01T07:00:00Z").unwrap();
        assert_eq!(object["spec"]["jobs"][0]["schedule"], "@date 2026-11-01 01:30:00");
        assert_eq!(object["spec"]["jobs"][1]["schedule"], "@date 2026-11-01 02:00:00");
        // ...the second (EST) would be acted on an hour early, so it is refused, naming the job.
        let err = render_ny("2026-11-01T04:00:00Z", "2026-11-01T06:30:00Z").unwrap_err();
        match err {
            RenderError::RepeatedLocalTime { job, ref local, .. } => {
                assert_eq!(job, "scale-down");
                assert_eq!(local, "2026-11-01 01:30:00");
            }
            other => panic!("unexpected {other}"),
        }
        // Spring forward (2026-03-08 02:00 EST -> 03:00 EDT) loses an hour but repeats none.
        let object = render_ny("2026-03-08T06:59:59Z", "2026-03-08T07:00:00Z").unwrap();
        assert_eq!(object["spec"]["jobs"][0]["schedule"], "@date 2026-03-08 01:59:59");
        assert_eq!(object["spec"]["jobs"][1]["schedule"], "@date 2026-03-08 03:00:00");
    }

    #[test]
    fn fractional_seconds_fire_at_the_whole_second() {
        let w = workload("Deployment", "web", None, 4);
        let object = render(
            "shop",
            "s",
            "shop/s",
            &w,
            ScaleTarget::workload(&w),
            (w.scale.peak, 1),
            ts("2026-11-10T15:30:00.750Z"),
            ts("2026-11-10T18:15:00.001Z"),
            "Asia/Shanghai",
        )
        .unwrap();
        assert_eq!(object["spec"]["jobs"][0]["schedule"], "@date 2026-11-10 23:30:00");
        assert_eq!(object["spec"]["jobs"][1]["schedule"], "@date 2026-11-11 02:15:00");
    }

    #[test]
    fn an_hpa_target_and_a_workload_target() {
        let w = workload("StatefulSet", "cart", Some("checkout"), 12);
        let at = ts("2026-11-10T15:30:00Z");
        let end = ts("2026-11-10T18:15:00Z");
        let hpa = render(
            "shop",
            "bf",
            "shop/bf",
            &w,
            ScaleTarget::Hpa { name: "cart-hpa".into() },
            (w.scale.peak, 4),
            at,
            end,
            "UTC",
        )
        .unwrap();
        assert_eq!(
            hpa["spec"]["scaleTargetRef"],
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "cart-hpa"})
        );
        let direct =
            render("shop", "bf", "shop/bf", &w, ScaleTarget::workload(&w), (w.scale.peak, 4), at, end, "UTC").unwrap();
        assert_eq!(
            direct["spec"]["scaleTargetRef"],
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "cart"})
        );
        // Both live in the sale's namespace, under the same name, whatever they target; a
        // reference naming another namespace (refused before render) never moves them there.
        for object in [&hpa, &direct] {
            assert_eq!(object["metadata"]["namespace"], "shop");
            assert_eq!(object["metadata"]["name"], "fs-bf-statefulset-cart");
            assert_eq!(object["metadata"]["annotations"]["flashsale.dev/sale"], "shop/bf");
        }
    }

    #[test]
    fn a_core_api_version_is_refused() {
        let w = workload("ReplicationController", "legacy", None, 2);
        let target = ScaleTarget::Workload {
            api_version: "v1".into(),
            kind: "ReplicationController".into(),
            name: "legacy".into(),
        };
        let err = render(
            "shop",
            "s",
            "shop/s",
            &w,
            target,
            (w.scale.peak, 1),
            ts("2026-11-10T15:30:00Z"),
            ts("2026-11-10T18:15:00Z"),
            "UTC",
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::CoreApiVersion { .. }), "{err}");
    }

    fn valid_subdomain(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && part.as_bytes()[0].is_ascii_alphanumeric()
                    && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
            })
    }

    #[test]
    fn long_names_are_cut_with_a_hash() {
        let long = format!("{}.{}", "a".repeat(120), "b-".repeat(60) + "c");
        assert!(long.len() > 240 && long.len() <= 253);
        let w1 = workload("Deployment", &long, None, 2);
        let n1 = name("double-11", &w1);
        assert!(n1.len() <= MAX_NAME, "{} chars", n1.len());
        assert!(valid_subdomain(&n1), "{n1}");
        assert!(n1.starts_with("fs-double-11-deployment-aaaa"), "{n1}");
        let hash = n1.rsplit('-').next().unwrap();
        assert_eq!(hash.len(), 8);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        // Deterministic, and different for names that share the kept prefix.
        assert_eq!(n1, name("double-11", &w1));
        let w2 = workload("Deployment", &format!("{long}d"), None, 2);
        let n2 = name("double-11", &w2);
        assert_ne!(n1, n2);
        assert!(n2.len() <= MAX_NAME && valid_subdomain(&n2), "{n2}");
        // Short names are left alone.
        assert_eq!(name("s", &workload("Deployment", "web", None, 1)), "fs-s-deployment-web");
    }

    #[test]
    fn the_sale_label_is_a_valid_label_value() {
        assert_eq!(label_value("double-11"), "double-11");
        let long = "x".repeat(100);
        let value = label_value(&long);
        assert_eq!(value.len(), 63);
        assert!(value.starts_with("xxxx"));
        assert_ne!(label_value(&long), label_value(&"x".repeat(101)));
        let w = workload("Deployment", "web", None, 2);
        let object = render(
            "shop",
            &long,
            "shop/long",
            &w,
            ScaleTarget::workload(&w),
            (w.scale.peak, 1),
            ts("2026-11-10T15:30:00Z"),
            ts("2026-11-10T18:15:00Z"),
            "UTC",
        )
        .unwrap();
        assert_eq!(object["metadata"]["labels"]["flashsale.dev/sale"], value);
    }

    #[test]
    fn specs_compare_equal_after_the_controller_writes_them_back() {
        let rendered = double_eleven("Asia/Shanghai").unwrap();
        // What the controller's plain update leaves: explicit runOnce, excludeDates pruned or [].
        let mut written_back = rendered["spec"].clone();
        written_back["excludeDates"] = json!([]);
        assert_eq!(Spec::from_value(Some(&written_back)), Spec::from_value(rendered.get("spec")));
        let mut edited = rendered["spec"].clone();
        edited["jobs"][1]["targetSize"] = json!(4);
        assert_ne!(Spec::from_value(Some(&edited)), Spec::from_value(rendered.get("spec")));
        let without_run_once = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "excludeDates": null,
            "jobs": [{"name": "a", "schedule": "@date 2026-01-01 00:00:00", "targetSize": 1}],
        });
        let explicit = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "jobs": [{"name": "a", "schedule": "@date 2026-01-01 00:00:00", "targetSize": 1, "runOnce": false}],
        });
        assert_eq!(Spec::from_value(Some(&without_run_once)), Spec::from_value(Some(&explicit)));
    }

    #[test]
    fn job_states_come_from_status_conditions() {
        let data = json!({"status": {"conditions": [
            {"name": "scale-up", "jobId": "1", "state": "Succeed", "message": "ok"},
            {"name": "scale-down", "jobId": "2", "state": "Submitted"},
        ]}});
        assert_eq!(
            states_of(&data),
            vec![("scale-down".into(), "Submitted".into()), ("scale-up".into(), "Succeed".into())]
        );
        assert!(states_of(&json!({"spec": {}})).is_empty());
    }

    fn facts(intent: crate::levers::Intent, now: &str) -> Facts {
        Facts {
            intent,
            now: ts(now),
            window: Some((ts("2026-11-10T15:30:00Z"), ts("2026-11-10T18:15:00Z"))),
            peak: 4,
            replicas: 2,
            recorded: None,
            object: true,
            scale_down_target: Some(2),
            scale_up_target: Some(4),
            scale_up_settled: false,
            scale_down_settled: false,
        }
    }

    #[test]
    fn the_baseline_is_the_count_at_preparing() {
        use crate::levers::Intent::{Hold, Preflight};
        let before = "2026-11-10T15:00:00Z";
        let at = "2026-11-10T15:30:00Z";
        // (case, facts, baseline, scale_to)
        let table: Vec<(&str, Facts, i32, Option<i32>)> = vec![
            (
                "scheduled: follows the live count, not the object",
                Facts { replicas: 3, ..facts(Preflight, before) },
                3,
                None,
            ),
            (
                "scheduled: no object yet",
                Facts { object: false, scale_down_target: None, ..facts(Preflight, before) },
                2,
                None,
            ),
            (
                "preparing, the scale-up not run yet: the live count",
                Facts { replicas: 3, ..facts(Hold, at) },
                3,
                Some(4),
            ),
            (
                "preparing, the scale-up ran: the object's target, set while Scheduled",
                Facts { replicas: 4, scale_down_target: Some(3), scale_up_settled: true, ..facts(Hold, at) },
                3,
                None,
            ),
            (
                "preparing, at peak before its status says so: the object's target",
                Facts { replicas: 4, scale_down_target: Some(3), ..facts(Hold, at) },
                3,
                None,
            ),
            (
                "recorded on the workload: that, whatever the object says",
                Facts {
                    replicas: 9,
                    recorded: Some(3),
                    scale_down_target: Some(2),
                    scale_up_settled: true,
                    ..facts(Hold, at)
                },
                3,
                None,
            ),
            (
                "the operator was down and is back at peak: the object's target",
                Facts { replicas: 4, scale_up_settled: true, ..facts(Hold, "2026-11-10T16:00:00Z") },
                2,
                None,
            ),
        ];
        for (case, f, baseline, scale_to) in table {
            let d = decide(&f);
            assert_eq!((d.baseline, d.scale_to), (baseline, scale_to), "{case}");
            assert!(d.render, "{case}: the object is put in place");
            assert!(!d.remove, "{case}");
            match f.intent {
                Hold => assert_eq!((d.record_original, d.holds), (Some(baseline), true), "{case}"),
                _ => assert_eq!((d.record_original, d.holds), (None, false), "{case}"),
            }
        }
    }

    #[test]
    fn the_scale_up_job_never_sets_less_than_the_workload_has() {
        use crate::levers::Intent::{Hold, Preflight};
        let (before, at) = ("2026-11-10T15:00:00Z", "2026-11-10T15:30:00Z");
        // (case, facts, the scale-up job's target)
        let table: Vec<(&str, Facts, i32)> = vec![
            ("scheduled, below peak: the peak", facts(Preflight, before), 4),
            ("scheduled, above peak: what it has", Facts { replicas: 6, ..facts(Preflight, before) }, 6),
            ("preparing, above peak, the job not run: what it has", Facts { replicas: 6, ..facts(Hold, at) }, 6),
            (
                "on-call scaled up while the job is late: theirs",
                Facts { replicas: 9, ..facts(Hold, "2026-11-10T15:30:20Z") },
                9,
            ),
            (
                "the job has run: left as it ran, whatever the count now",
                Facts { replicas: 9, scale_up_settled: true, ..facts(Hold, "2026-11-10T16:00:00Z") },
                4,
            ),
        ];
        for (case, f, scale_up) in table {
            let d = decide(&f);
            assert_eq!(d.scale_up, scale_up, "{case}");
            assert!(d.scale_to.is_none_or(|n| n >= f.replicas), "{case}: never scaled down while held");
        }
    }

    #[test]
    fn the_operator_scales_up_at_the_boundary_not_after_a_grace() {
        use crate::levers::Intent::Hold;
        // The controller's job may be late by as long as its engine was idle before a removal.
        assert_eq!(decide(&facts(Hold, "2026-11-10T15:30:00Z")).scale_to, Some(4));
        assert_eq!(decide(&facts(Hold, "2026-11-10T15:30:00.400Z")).scale_to, Some(4));
        assert_eq!(decide(&Facts { replicas: 4, ..facts(Hold, "2026-11-10T15:30:00Z") }).scale_to, None);
        assert_eq!(decide(&Facts { replicas: 6, ..facts(Hold, "2026-11-10T15:30:00Z") }).scale_to, None);
    }

    #[test]
    fn the_object_goes_only_after_the_scale_down_is_seen() {
        use crate::levers::Intent::Restore;
        let at = "2026-11-10T18:15:00Z";
        let late = "2026-11-10T18:15:10Z";
        let early = "2026-11-10T16:00:00Z";
        // (case, facts, baseline, scale_to, remove)
        let table: Vec<(&str, Facts, i32, Option<i32>, bool)> = vec![
            (
                "at the boundary, at peak: scale down, keep the object",
                Facts { replicas: 4, ..facts(Restore, at) },
                2,
                Some(2),
                false,
            ),
            (
                "scale-down seen, its job still registered: wait for it",
                Facts { replicas: 2, ..facts(Restore, at) },
                2,
                None,
                false,
            ),
            (
                "scale-down seen and its job ran: remove",
                Facts { replicas: 2, scale_down_settled: true, ..facts(Restore, at) },
                2,
                None,
                true,
            ),
            ("scale-down seen, its job overdue: remove", Facts { replicas: 2, ..facts(Restore, late) }, 2, None, true),
            (
                "its job ran but the workload is still above: keep the record",
                Facts { replicas: 4, scale_down_settled: true, ..facts(Restore, late) },
                2,
                Some(2),
                false,
            ),
            (
                "the scale-down refused long past the boundary: keep the record",
                Facts { replicas: 4, ..facts(Restore, "2026-11-10T19:00:00Z") },
                2,
                Some(2),
                false,
            ),
            (
                "suspended before the restore, at peak: scale down first",
                Facts { replicas: 4, recorded: Some(3), ..facts(Restore, early) },
                3,
                Some(3),
                false,
            ),
            (
                "suspended before the restore, seen at the baseline: remove",
                Facts { replicas: 2, ..facts(Restore, early) },
                2,
                None,
                true,
            ),
            (
                "below the baseline (a person scaled down): nothing left to scale down",
                Facts { replicas: 1, scale_down_settled: true, ..facts(Restore, at) },
                2,
                None,
                true,
            ),
            (
                "no object: nothing to remove",
                Facts {
                    replicas: 2,
                    object: false,
                    scale_down_target: None,
                    recorded: Some(2),
                    ..facts(Restore, late)
                },
                2,
                None,
                false,
            ),
            (
                "a spec that cannot be resolved restores at once",
                Facts { replicas: 4, window: None, ..facts(Restore, at) },
                2,
                Some(2),
                false,
            ),
        ];
        for (case, f, baseline, scale_to, remove) in table {
            let d = decide(&f);
            assert_eq!((d.baseline, d.scale_to, d.remove), (baseline, scale_to, remove), "{case}");
            assert!(!d.render && !d.holds && d.record_original.is_none(), "{case}");
        }
    }

    fn claim(holder: &str, name: &str, created: &str, window: Option<(&str, &str)>) -> Claim {
        Claim {
            holder: holder.into(),
            name: name.into(),
            created: Some(ts(created)),
            window: window.map(|(a, b)| (ts(a), ts(b))),
        }
    }

    #[test]
    fn the_first_sale_to_schedule_a_workload_keeps_it() {
        let window = (ts("2026-11-10T15:30:00Z"), ts("2026-11-10T18:15:00Z"));
        let first = claim(
            "shop/a",
            "fs-a-deployment-web",
            "2026-11-01T00:00:00Z",
            Some(("2026-11-10T15:00:00Z", "2026-11-10T16:00:00Z")),
        );
        let disjoint = claim(
            "shop/c",
            "fs-c-deployment-web",
            "2026-10-01T00:00:00Z",
            Some(("2026-11-11T15:00:00Z", "2026-11-11T16:00:00Z")),
        );
        let touching = claim(
            "shop/d",
            "fs-d-deployment-web",
            "2026-10-01T00:00:00Z",
            Some(("2026-11-10T18:15:00Z", "2026-11-10T19:00:00Z")),
        );
        let unreadable = claim("shop/e", "fs-e-deployment-web", "2026-10-01T00:00:00Z", None);
        let mine_later = claim(
            "shop/b",
            "fs-b-deployment-web",
            "2026-11-02T00:00:00Z",
            Some(("2026-11-10T15:30:00Z", "2026-11-10T18:15:00Z")),
        );
        let mine_earlier = claim(
            "shop/b",
            "fs-b-deployment-web",
            "2026-10-31T00:00:00Z",
            Some(("2026-11-10T15:30:00Z", "2026-11-10T18:15:00Z")),
        );
        let same_second = claim("shop/b", "fs-b-deployment-web", "2026-11-01T00:00:00Z", None);
        // (case, ours, claims, winner)
        type Row<'a> = (&'a str, Option<&'a Claim>, Vec<Claim>, Option<&'a str>);
        let table: Vec<Row> = vec![
            ("no other sale", None, vec![], None),
            ("an overlapping sale, ours not created yet", None, vec![first.clone()], Some("shop/a")),
            (
                "an overlapping sale created before ours",
                Some(&mine_later),
                vec![first.clone(), mine_later.clone()],
                Some("shop/a"),
            ),
            ("ours created first", Some(&mine_earlier), vec![first.clone(), mine_earlier.clone()], None),
            (
                "the same second: the name decides",
                Some(&same_second),
                vec![first.clone(), same_second.clone()],
                Some("shop/a"),
            ),
            ("another window entirely", None, vec![disjoint.clone()], None),
            ("a window that ends as ours starts", None, vec![touching.clone()], Some("shop/d")),
            ("a window that cannot be read counts as overlapping", None, vec![unreadable.clone()], Some("shop/e")),
            ("the oldest of several wins", None, vec![first.clone(), touching.clone()], Some("shop/d")),
        ];
        for (case, ours, claims, winner) in table {
            let got = first_claim("shop/b", window, ours, &claims).map(|c| c.holder.as_str());
            assert_eq!(got, winner, "{case}");
        }
    }

    #[test]
    fn claims_are_read_from_the_objects_the_operator_rendered() {
        let w = workload("Deployment", "web", None, 4);
        let rendered = render(
            "shop",
            "a",
            "shop/a",
            &w,
            ScaleTarget::workload(&w),
            (w.scale.peak, 2),
            ts("2026-11-10T15:30:00Z"),
            ts("2026-11-10T18:15:00Z"),
            "UTC",
        )
        .unwrap();
        let mut object: DynamicObject = serde_json::from_value(rendered).unwrap();
        let got = claim_of(&object, &w).unwrap();
        assert_eq!(got.holder, "shop/a");
        assert_eq!(got.window, Some((ts("2026-11-10T15:30:00Z"), ts("2026-11-10T18:15:00Z"))));
        assert!(claim_of(&object, &workload("Deployment", "cart", None, 4)).is_none(), "another workload");
        object.metadata.labels = None;
        assert!(claim_of(&object, &w).is_none(), "not the operator's");
    }

    #[test]
    fn settled_means_run_either_way() {
        let states =
            vec![("scale-down".to_owned(), "Submitted".to_owned()), ("scale-up".to_owned(), "Failed".to_owned())];
        assert!(settled(&states, SCALE_UP_JOB));
        assert!(!settled(&states, SCALE_DOWN_JOB));
        assert!(!settled(&[], SCALE_DOWN_JOB));
    }
}
