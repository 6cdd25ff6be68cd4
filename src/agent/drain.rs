//! Draining a node before its spot instance is released: taint and cordon it in one write, then
//! evict its pods through the Eviction API so PodDisruptionBudgets are honoured.
//!
//! The deadline is the release time itself. Every pod's grace period is clipped to the time
//! left, a PDB that allows no disruption now (HTTP 429) is retried with backoff until shortly
//! before the deadline, and a pod under several PDBs (HTTP 500, which the API never resolves on
//! its own) is reported once.

use futures::{StreamExt as _, stream};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        core::v1::{Node, Pod, Taint},
        policy::v1::Eviction,
    },
    apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta},
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use std::{fmt, time::Duration};
use tokio::sync::Semaphore;

use super::metrics::AgentMetrics;

/// The taint key put on a node whose instance is about to be released. Its value is the release
/// time in UTC with `.` for `:` (a taint value must be a valid label value), e.g.
/// `2026-11-11T00.05.00Z`.
pub const TAINT_KEY: &str = "flashsale.dev/spot-termination";
/// The annotation the kubelet puts on mirror pods (static pods), which cannot be evicted.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Evictions in flight at once.
pub const CONCURRENCY: usize = 16;
/// A blocked eviction is not retried when less than this is left before the deadline.
const STOP_RETRYING_BEFORE: SignedDuration = SignedDuration::from_secs(5);
/// Clipped grace periods end this long before the deadline.
const GRACE_SAFETY_SECS: i64 = 2;
/// Attempts for errors other than a PDB block (API hiccups, timeouts).
const MAX_ERROR_ATTEMPTS: u32 = 3;
/// Backoff of a blocked eviction: first wait and cap.
const BLOCKED_BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BLOCKED_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The taint value for a release time (see [`TAINT_KEY`]).
pub fn taint_value(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H.%M.%SZ").to_string()
}

/// What the agent does with a pod it finds on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodAction {
    Evict,
    /// A DaemonSet's pod: it belongs on the node and its controller would recreate it there.
    SkipDaemonSet,
    /// A static pod's mirror: the API cannot evict it.
    SkipMirror,
    /// Already being deleted.
    SkipTerminating,
    /// Succeeded or Failed: holds nothing.
    SkipFinished,
}

/// Decides what to do with one pod.
pub fn pod_action(pod: &Pod) -> PodAction {
    if pod.annotations().contains_key(MIRROR_ANNOTATION) {
        return PodAction::SkipMirror;
    }
    let daemon = pod
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "DaemonSet" && o.api_version.starts_with("apps/"));
    if daemon {
        return PodAction::SkipDaemonSet;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodAction::SkipTerminating;
    }
    if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return PodAction::SkipFinished;
    }
    PodAction::Evict
}

/// The grace period to ask for so a pod can finish before the deadline: `None` keeps the pod's
/// own when it fits in the time left (less a small safety margin), else the time left, at least
/// one second.
pub fn clip_grace(pod_grace_seconds: Option<i64>, left: SignedDuration) -> Option<i64> {
    let own = pod_grace_seconds.unwrap_or(30);
    let budget = left.as_secs() - GRACE_SAFETY_SECS;
    if own <= budget || own <= 1 { None } else { Some(budget.max(1)) }
}

/// The wait before retry `attempt` (1-based) of a blocked eviction: doubling from 0.5 s up to
/// 5 s, spread by ±25 % (`jitter` in [0, 1)) so concurrent evictions under one PDB do not retry
/// in lockstep.
pub fn blocked_backoff(attempt: u32, jitter: f64) -> Duration {
    let base = BLOCKED_BACKOFF_FIRST.saturating_mul(1u32 << attempt.saturating_sub(1).min(8)).min(BLOCKED_BACKOFF_MAX);
    base.mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// How one eviction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Evicted,
    /// A PodDisruptionBudget allowed no disruption until the agent stopped retrying.
    BlockedPdb(String),
    /// The pod is under more than one PDB; the Eviction API refuses such pods.
    MultiplePdb,
    /// The pod was already gone.
    NotFound,
    Error(String),
}

impl Outcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Evicted => "evicted",
            Outcome::BlockedPdb(_) => "blocked_pdb",
            Outcome::MultiplePdb => "multiple_pdb",
            Outcome::NotFound => "not_found",
            Outcome::Error(_) => "error",
        }
    }
}

/// What one Eviction API answer means for the next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Done(Outcome),
    /// 429: retry after a backoff (a PDB allows no disruption now, or the API is throttling).
    Blocked(String),
    /// Something transient; retry a few times.
    Failed(String),
}

/// Reads an Eviction API result.
pub fn attempt_result(result: &Result<(), kube::Error>) -> Attempt {
    match result {
        Ok(()) => Attempt::Done(Outcome::Evicted),
        Err(kube::Error::Api(status)) => match status.code {
            404 => Attempt::Done(Outcome::NotFound),
            429 => Attempt::Blocked(status.message.clone()),
            500 if status.message.contains("more than one PodDisruptionBudget") => Attempt::Done(Outcome::MultiplePdb),
            _ => Attempt::Failed(format!("HTTP {}: {}", status.code, status.message)),
        },
        Err(other) => Attempt::Failed(other.to_string()),
    }
}

/// A pod on the node, as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub evicted: Vec<PodName>,
    pub not_found: Vec<PodName>,
    /// Pods left on the node, with why.
    pub blocked: Vec<(PodName, Outcome)>,
    pub skipped_daemonset: usize,
    pub skipped_mirror: usize,
    pub skipped_terminating: usize,
    pub skipped_finished: usize,
}

impl Report {
    /// Whether every pod that needed to go was evicted.
    pub fn complete(&self) -> bool {
        self.blocked.is_empty()
    }

    /// One line for logs and Event notes (at most `limit` bytes; an Event note holds 1 kB).
    pub fn summary(&self, release: Timestamp, limit: usize) -> String {
        let mut text = format!(
            "release at {release}: evicted {} pods, {} already gone, {} left on the node; not evicted: {} DaemonSet, {} mirror, {} terminating, {} finished",
            self.evicted.len(),
            self.not_found.len(),
            self.blocked.len(),
            self.skipped_daemonset,
            self.skipped_mirror,
            self.skipped_terminating,
            self.skipped_finished,
        );
        if !self.blocked.is_empty() {
            text.push_str("; blocked:");
        }
        for (i, (pod, outcome)) in self.blocked.iter().enumerate() {
            let why = match outcome {
                Outcome::BlockedPdb(_) => {
                    "its PodDisruptionBudget allowed no disruption before the deadline".to_owned()
                }
                Outcome::MultiplePdb => "more than one PodDisruptionBudget selects it".to_owned(),
                Outcome::Error(e) => e.chars().take(120).collect(),
                Outcome::Evicted | Outcome::NotFound => continue,
            };
            let item = format!(" {pod} ({why});");
            let rest = self.blocked.len() - i;
            if text.len() + item.len() + 24 > limit {
                text.push_str(&format!(" and {rest} more"));
                break;
            }
            text.push_str(&item);
        }
        text.truncate(limit.min(text.len()));
        text
    }
}

/// Whether the node was already marked for this release time (by an earlier run of the agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    Now,
    Already,
}

/// The taints a node should have for `release`: ours replaced or added, every other one kept.
pub fn taints_with_notice(existing: &[Taint], release: Timestamp) -> Vec<Taint> {
    let mut taints: Vec<Taint> = existing.iter().filter(|t| t.key != TAINT_KEY).cloned().collect();
    taints.push(Taint {
        key: TAINT_KEY.to_owned(),
        value: Some(taint_value(release)),
        effect: "NoSchedule".to_owned(),
        time_added: None,
    });
    taints
}

/// Whether `node` already carries the notice for `release` and is cordoned.
pub fn is_marked(node: &Node, release: Timestamp) -> bool {
    let spec = node.spec.as_ref();
    let want = taint_value(release);
    let tainted = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == TAINT_KEY && t.value.as_deref() == Some(want.as_str())));
    tainted && spec.and_then(|s| s.unschedulable) == Some(true)
}

/// Taints and cordons the node in one write (optimistic concurrency on its resourceVersion).
/// Returns the node as written and whether it was already marked.
pub async fn mark_node(nodes: &Api<Node>, name: &str, release: Timestamp) -> Result<(Node, Marked), kube::Error> {
    let mut conflicts = 0;
    loop {
        let node = nodes.get(name).await?;
        if is_marked(&node, release) {
            return Ok((node, Marked::Already));
        }
        let existing = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"unschedulable": true, "taints": taints_with_notice(&existing, release)},
        });
        match nodes.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(node) => return Ok((node, Marked::Now)),
            Err(kube::Error::Api(status)) if status.code == 409 && conflicts < 10 => conflicts += 1,
            Err(err) => return Err(err),
        }
    }
}

/// Lists the node's pods and evicts those that need to go, at most [`CONCURRENCY`] requests at a time.
pub async fn evict_pods(
    client: &Client,
    node: &str,
    deadline: Timestamp,
    metrics: &AgentMetrics,
) -> Result<Report, kube::Error> {
    let pods =
        Api::<Pod>::all(client.clone()).list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await?;
    let mut report = Report::default();
    let mut to_evict = vec![];
    for pod in pods.items {
        match pod_action(&pod) {
            PodAction::Evict => to_evict.push(pod),
            PodAction::SkipDaemonSet => report.skipped_daemonset += 1,
            PodAction::SkipMirror => report.skipped_mirror += 1,
            PodAction::SkipTerminating => report.skipped_terminating += 1,
            PodAction::SkipFinished => report.skipped_finished += 1,
        }
    }
    tracing::info!(node, pods = to_evict.len(), "evicting pods");
    // Every pod has its own retry loop; only the requests themselves share the permits, so pods a
    // PodDisruptionBudget holds back (sleeping between retries) never delay the others.
    let permits = Semaphore::new(CONCURRENCY);
    let outcomes: Vec<(PodName, Outcome)> = stream::iter(to_evict)
        .map(|pod| {
            let permits = &permits;
            async move {
                let name = PodName { namespace: pod.namespace().unwrap_or_default(), name: pod.name_any() };
                let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
                let outcome = evict_one(client, &name, grace, deadline, metrics, permits).await;
                metrics.evictions.get_or_create(&outcome_labels(&outcome)).inc();
                (name, outcome)
            }
        })
        .buffer_unordered(usize::MAX)
        .collect()
        .await;
    for (pod, outcome) in outcomes {
        match outcome {
            Outcome::Evicted => report.evicted.push(pod),
            Outcome::NotFound => report.not_found.push(pod),
            blocked => report.blocked.push((pod, blocked)),
        }
    }
    report.evicted.sort();
    report.not_found.sort();
    report.blocked.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(report)
}

fn outcome_labels(outcome: &Outcome) -> super::metrics::OutcomeLabels {
    super::metrics::OutcomeLabels { outcome: outcome.label() }
}

/// Evicts one pod, retrying what may pass later until shortly before the deadline.
async fn evict_one(
    client: &Client,
    pod: &PodName,
    grace: Option<i64>,
    deadline: Timestamp,
    metrics: &AgentMetrics,
    permits: &Semaphore,
) -> Outcome {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let mut blocked_attempts = 0;
    let mut failed_attempts = 0;
    loop {
        let result = {
            // Held for the request only, never across a retry's sleep. The semaphore is never
            // closed, so acquiring cannot fail.
            let _permit = permits.acquire().await.ok();
            let left = deadline.duration_since(Timestamp::now());
            api.create_subresource::<_, kube::core::Status>(
                "eviction",
                &pod.name,
                &PostParams::default(),
                &eviction(pod, clip_grace(grace, left)),
            )
            .await
            .map(|_| ())
        };
        let attempt = attempt_result(&result);
        let label = match &attempt {
            Attempt::Done(outcome) => outcome.label(),
            Attempt::Blocked(_) => "blocked_pdb",
            Attempt::Failed(_) => "error",
        };
        metrics.eviction_attempts.get_or_create(&super::metrics::OutcomeLabels { outcome: label }).inc();
        let wait = match attempt {
            Attempt::Done(outcome) => {
                match &outcome {
                    Outcome::Evicted => tracing::debug!(%pod, "evicted"),
                    Outcome::NotFound => tracing::debug!(%pod, "already gone"),
                    Outcome::MultiplePdb => {
                        tracing::warn!(%pod, "not evicted: more than one PodDisruptionBudget selects it")
                    }
                    Outcome::BlockedPdb(_) | Outcome::Error(_) => {}
                }
                return outcome;
            }
            Attempt::Blocked(message) => {
                blocked_attempts += 1;
                let wait = blocked_backoff(blocked_attempts, jitter());
                let left = deadline.duration_since(Timestamp::now());
                if left - SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX) < STOP_RETRYING_BEFORE {
                    tracing::warn!(%pod, attempts = blocked_attempts, %message, "not evicted before the deadline: a PodDisruptionBudget allows no disruption");
                    return Outcome::BlockedPdb(message);
                }
                tracing::debug!(%pod, attempt = blocked_attempts, retry_in = ?wait, %message, "eviction blocked; retrying");
                wait
            }
            Attempt::Failed(message) => {
                failed_attempts += 1;
                let left = deadline.duration_since(Timestamp::now());
                if failed_attempts >= MAX_ERROR_ATTEMPTS || left < STOP_RETRYING_BEFORE {
                    tracing::warn!(%pod, attempts = failed_attempts, %message, "eviction failed");
                    return Outcome::Error(message);
                }
                tracing::debug!(%pod, attempt = failed_attempts, %message, "eviction failed; retrying");
                blocked_backoff(failed_attempts, jitter())
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The policy/v1 Eviction for `pod`, with a grace period when one is given. (kube's `Api::evict`
/// sends its delete options as `delete_options`, a field the API server does not know, so a grace
/// period given there is silently dropped.)
pub fn eviction(pod: &PodName, grace_seconds: Option<i64>) -> Eviction {
    Eviction {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        delete_options: grace_seconds
            .map(|secs| DeleteOptions { grace_period_seconds: Some(secs), ..DeleteOptions::default() }),
    }
}

/// A number in [0, 1) that differs between calls, for backoff spread (not for anything secure).
fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn taint_value_is_a_label_value() {
        assert_eq!(taint_value(ts("2026-11-11T00:05:00Z")), "2026-11-11T00.05.00Z");
        assert_eq!(taint_value(ts("2026-11-11T08:05:00.5+08:00")), "2026-11-11T00.05.00Z");
        let value = taint_value(ts("2026-11-11T00:05:00Z"));
        assert!(value.len() <= 63);
        assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }

    #[test]
    fn which_pods_are_evicted() {
        let cases = [
            (serde_json::json!({"metadata": {"name": "web"}, "status": {"phase": "Running"}}), PodAction::Evict),
            (serde_json::json!({"metadata": {"name": "web"}}), PodAction::Evict),
            (
                serde_json::json!({"metadata": {"name": "rs", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "1", "controller": true}]}}),
                PodAction::Evict,
            ),
            (
                serde_json::json!({"metadata": {"name": "ds", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "1", "controller": true}]}}),
                PodAction::SkipDaemonSet,
            ),
            (
                serde_json::json!({"metadata": {"name": "not-controller", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "x", "uid": "1"}]}}),
                PodAction::Evict,
            ),
            (
                serde_json::json!({"metadata": {"name": "static", "annotations": {"kubernetes.io/config.mirror": "abc"}}}),
                PodAction::SkipMirror,
            ),
            (
                serde_json::json!({"metadata": {"name": "going", "deletionTimestamp": "2026-11-11T00:00:00Z"}}),
                PodAction::SkipTerminating,
            ),
            (
                serde_json::json!({"metadata": {"name": "done"}, "status": {"phase": "Succeeded"}}),
                PodAction::SkipFinished,
            ),
            (
                serde_json::json!({"metadata": {"name": "failed"}, "status": {"phase": "Failed"}}),
                PodAction::SkipFinished,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(pod_action(&pod(p.clone())), want, "{p}");
        }
    }

    #[test]
    fn grace_periods_fit_before_the_deadline() {
        let s = SignedDuration::from_secs;
        assert_eq!(clip_grace(Some(30), s(300)), None, "fits: keep the pod's own");
        assert_eq!(clip_grace(None, s(300)), None, "default 30 s fits");
        assert_eq!(clip_grace(Some(30), s(32)), None);
        assert_eq!(clip_grace(Some(30), s(31)), Some(29));
        assert_eq!(clip_grace(Some(600), s(120)), Some(118));
        assert_eq!(clip_grace(None, s(10)), Some(8));
        assert_eq!(clip_grace(Some(30), s(2)), Some(1), "never zero (that would force-delete)");
        assert_eq!(clip_grace(Some(30), s(-5)), Some(1), "past the deadline");
        assert_eq!(clip_grace(Some(0), s(-5)), None, "a pod asking for 0 keeps it");
    }

    #[test]
    fn eviction_body_carries_the_grace_period() {
        let pod = PodName { namespace: "shop".into(), name: "web-1".into() };
        let body = serde_json::to_value(eviction(&pod, Some(58))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": "web-1", "namespace": "shop"},
                "deleteOptions": {"gracePeriodSeconds": 58}
            })
        );
        let body = serde_json::to_value(eviction(&pod, None)).unwrap();
        assert!(body.get("deleteOptions").is_none(), "{body}");
    }

    #[test]
    fn blocked_backoff_doubles_with_spread() {
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(blocked_backoff(1, 0.5)), 500);
        assert_eq!(ms(blocked_backoff(2, 0.5)), 1000);
        assert_eq!(ms(blocked_backoff(4, 0.5)), 4000);
        assert_eq!(ms(blocked_backoff(5, 0.5)), 5000);
        assert_eq!(ms(blocked_backoff(u32::MAX, 0.5)), 5000);
        assert_eq!(ms(blocked_backoff(1, 0.0)), 375);
        assert!(ms(blocked_backoff(1, 0.999)) < 625);
        assert!(blocked_backoff(1, 0.0) > Duration::ZERO, "never a busy loop");
    }

    fn api_error(code: u16, message: &str) -> Result<(), kube::Error> {
        Err(kube::Error::Api(Box::new(kube::core::Status { code, message: message.into(), ..Default::default() })))
    }

    #[test]
    fn eviction_answers() {
        assert_eq!(attempt_result(&Ok(())), Attempt::Done(Outcome::Evicted));
        assert_eq!(attempt_result(&api_error(404, "pods \"x\" not found")), Attempt::Done(Outcome::NotFound));
        let pdb = "Cannot evict pod as it would violate the pod's disruption budget.";
        assert_eq!(attempt_result(&api_error(429, pdb)), Attempt::Blocked(pdb.into()));
        let many = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";
        assert_eq!(attempt_result(&api_error(500, many)), Attempt::Done(Outcome::MultiplePdb));
        assert!(matches!(attempt_result(&api_error(500, "etcdserver: timeout")), Attempt::Failed(_)));
        assert!(matches!(attempt_result(&api_error(403, "forbidden")), Attempt::Failed(_)));
    }

    #[test]
    fn notice_taint_replaces_ours_and_keeps_others() {
        let other =
            Taint { key: "dedicated".into(), value: Some("db".into()), effect: "NoSchedule".into(), time_added: None };
        let old = Taint {
            key: TAINT_KEY.into(),
            value: Some("2026-01-01T00.00.00Z".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let got = taints_with_notice(&[other.clone(), old], ts("2026-11-11T00:05:00Z"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], other);
        assert_eq!(got[1].key, TAINT_KEY);
        assert_eq!(got[1].value.as_deref(), Some("2026-11-11T00.05.00Z"));

        let mut node = Node::default();
        let release = ts("2026-11-11T00:05:00Z");
        assert!(!is_marked(&node, release));
        node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(got),
            unschedulable: Some(true),
            ..Default::default()
        });
        assert!(is_marked(&node, release));
        assert!(!is_marked(&node, ts("2026-11-11T00:06:00Z")), "another release time is a new notice");
        node.spec.as_mut().unwrap().unschedulable = None;
        assert!(!is_marked(&node, release), "uncordoned by someone: mark again");
    }

    #[test]
    fn report_names_what_stayed_and_why() {
        let p = |n: &str| PodName { namespace: "shop".into(), name: n.into() };
        let report = Report {
            evicted: vec![p("a"), p("b")],
            blocked: vec![(p("c"), Outcome::MultiplePdb), (p("d"), Outcome::BlockedPdb("429".into()))],
            skipped_daemonset: 1,
            ..Default::default()
        };
        let text = report.summary(ts("2026-11-11T00:05:00Z"), 1024);
        assert!(
            text.starts_with("release at 2026-11-11T00:05:00Z: evicted 2 pods, 0 already gone, 2 left on the node")
        );
        assert!(text.contains("shop/c (more than one PodDisruptionBudget selects it)"), "{text}");
        assert!(text.contains("shop/d (its PodDisruptionBudget allowed no disruption"), "{text}");
        assert!(!report.complete());

        let many = Report {
            blocked: (0..100).map(|i| (p(&format!("pod-{i:03}")), Outcome::MultiplePdb)).collect(),
            ..Default::default()
        };
        let text = many.summary(ts("2026-11-11T00:05:00Z"), 1024);
        assert!(text.len() <= 1024);
        assert!(text.contains("more"), "{text}");
    }
}
