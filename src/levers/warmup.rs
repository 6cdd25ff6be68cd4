//! Cache warm-up: one `batch/v1` Job per `cacheWarm[]` entry in every cluster, created
//! `startBefore` the window start, tracked to completion, and deleted (with its pods) at the
//! restore.
//!
//! The lever keeps no memory of its own: the Jobs' deterministic names and labels say what
//! exists, the Jobs' status says how far each warm-up got, and the sale's last status says
//! which outcomes were already announced. A restarted operator therefore neither creates a Job
//! twice nor announces an outcome twice.
//!
//! A finished Job is never re-created while the sale holds: a failed required warm-up stays
//! failed until a person acts, either by deleting the Job (the operator then creates it again,
//! as long as the window has not ended) or by fixing the template in the spec (the Job's name
//! follows the template, so a new Job runs and the old one is removed).

use crate::api::names;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams, PropagationPolicy},
};
use std::collections::BTreeMap;

use super::{Action, Intent, LeverCondition, Report, Sale};
use crate::{
    api::{CacheWarm, FlashSaleSpec, WarmupStatus},
    status::CACHE_WARMED,
    timeline,
    view::Scope,
};

/// The warm-up Jobs of every sale in a namespace, as the view watches them: one watch per
/// namespace (a watch per sale would be a connection per sale to the API server).
fn jobs_scope(namespace: &str) -> Scope {
    Scope::typed::<Job>(Some(namespace)).labelled(names::SALE_NAME_LABEL)
}

/// This sale's warm-up Jobs.
async fn sale_jobs(
    view: &std::sync::Arc<crate::view::View>,
    scope: &Scope,
    sale: &Sale<'_>,
) -> Result<Vec<Job>, kube::Error> {
    let jobs: Vec<Job> = view.list_as(scope).await?;
    Ok(jobs
        .into_iter()
        .filter(|j| {
            let labels = j.labels();
            labels.get(names::SALE_NAME_LABEL).map(String::as_str) == Some(sale.name)
                && labels.get(names::SALE_NAMESPACE_LABEL).map(String::as_str) == Some(sale.namespace)
        })
        .collect())
}

/// The sale a warm-up Job's labels name, if they do.
pub fn labelled_sale<K>(
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<kube::runtime::reflector::ObjectRef<K>>
where
    K: kube::Resource,
    K::DynamicType: Default,
{
    let (name, namespace) = (labels.get(names::SALE_NAME_LABEL)?, labels.get(names::SALE_NAMESPACE_LABEL)?);
    Some(kube::runtime::reflector::ObjectRef::new(name).within(namespace))
}

/// The shortest `activeDeadlineSeconds` the operator gives a Job whose template sets none.
pub const MIN_DEADLINE_SECS: i64 = 60;

/// A Job created more than this after its due time is reported as started late (the operator
/// was down, or the sale was created after the lead time had begun).
const LATE_AFTER: SignedDuration = SignedDuration::from_secs(10);

/// How soon to look again while a Job runs. The operator's own cluster has a watch on Jobs;
/// remote clusters do not, and a Scheduled sale is otherwise only looked at every few minutes.
const RUNNING_RECHECK: SignedDuration = SignedDuration::from_secs(5);

/// How a person runs a failed warm-up again (the operator never re-runs a finished Job itself).
const RETRY: &str = "fix the template in the spec, or delete the Job to run it again";

/// Kubernetes' limit for a Job's name (it becomes a label value on the Job's pods).
const MAX_JOB_NAME: usize = 63;

/// The `WarmupStatus.state` values.
pub const PENDING: &str = "Pending";
pub const RUNNING: &str = "Running";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
/// The window ended before the Job was due to be created: it is not run at all.
pub const SKIPPED: &str = "Skipped";

/// The Job name for a warm-up: `<sale>-warm-<entry>-<hash>`, the prefix cut so the whole fits
/// in 63 characters (the sale name is at most 40 and the entry at most 20 by the CRD's rules).
///
/// The hash covers the sale's UID, the window start and the Job template, so a sale re-created
/// under the same name, a moved window or a fixed template gets a fresh Job instead of
/// adopting a finished one; the same sale and spec always give the same name, so a restart
/// never creates a duplicate.
pub fn job_name(sale: &str, uid: &str, start: Timestamp, warm: &CacheWarm) -> String {
    let template = serde_json::to_string(&warm.template).unwrap_or_default();
    let hash = super::fnv1a(&format!("{uid}\n{}\n{}\n{template}", start.as_second(), warm.name));
    super::fit_name(&format!("{sale}-warm-{}", warm.name), MAX_JOB_NAME, hash)
}

/// When a warm-up's Job is due: `startBefore` the window start (never after the start).
pub fn due_at(schedule: &timeline::Schedule, warm: &CacheWarm) -> Timestamp {
    // The CRD bounds startBefore to 0..24h; an unusable value counts as zero (due at the start).
    let lead = timeline::signed("cacheWarm[].startBefore", &warm.start_before).unwrap_or(SignedDuration::ZERO);
    schedule.before_start(lead)
}

/// A warm-up's lead time for people, e.g. `1h 30m` (the spec's duration shows as seconds).
pub fn lead(warm: &CacheWarm) -> String {
    timeline::signed("cacheWarm[].startBefore", &warm.start_before)
        .map(|d| format!("{d:#}"))
        .unwrap_or_else(|_| warm.start_before.to_string())
}

/// `activeDeadlineSeconds` for a Job created at `now`: the template's own value, else the time
/// left until the window start. A hung warm-up then fails (with reason `DeadlineExceeded`)
/// before the sale starts, where on-call sees it in `Ready`, instead of running into the sale
/// unnoticed. A Job started late (a sale created late, a window moved) still gets its whole
/// `startBefore` lead, and never less than [`MIN_DEADLINE_SECS`].
pub fn active_deadline(template: Option<i64>, now: Timestamp, start: Timestamp, lead: SignedDuration) -> i64 {
    template.unwrap_or_else(|| start.duration_since(now).as_secs().max(lead.as_secs()).max(MIN_DEADLINE_SECS))
}

/// What to do about a warm-up whose Job does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Not yet: look again at this instant.
    At(Timestamp),
    /// Create it now; `late` when it was due more than a few seconds ago.
    Now { late: bool },
    /// The window has ended: a warm-up would be pointless.
    Missed,
}

/// Whether a missing Job should be created at `now`, given when it is due and the window end.
pub fn due(now: Timestamp, due_at: Timestamp, end: Timestamp) -> Due {
    if now < due_at {
        Due::At(due_at)
    } else if now >= end {
        Due::Missed
    } else {
        Due::Now { late: now.duration_since(due_at) > LATE_AFTER }
    }
}

/// What a Job's status says about its warm-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// One of [`PENDING`], [`RUNNING`], [`SUCCEEDED`], [`FAILED`].
    pub state: &'static str,
    /// The Job's failure reason (`BackoffLimitExceeded`, `DeadlineExceeded`, ...).
    pub reason: Option<String>,
    /// The Job's failure message.
    pub message: Option<String>,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

/// Reads a Job's state: its `Complete`/`SuccessCriteriaMet` condition means Succeeded, its
/// `Failed` (or `FailureTarget`, set as soon as the failure is decided) condition means Failed
/// with that condition's reason; otherwise Running while it has active pods, else Pending.
pub fn observe(job: &Job) -> Observed {
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let holds = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "True");
    let mut observed = Observed { start_time: status.start_time, ..Observed::default() };
    if let Some(failed) = holds("Failed").or_else(|| holds("FailureTarget")) {
        observed.state = FAILED;
        observed.reason = Some(failed.reason.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| "Failed".into()));
        observed.message = failed.message.clone().filter(|m| !m.is_empty());
        observed.completion_time = failed.last_transition_time.clone();
    } else if let Some(done) = holds("Complete").or_else(|| holds("SuccessCriteriaMet")) {
        observed.state = SUCCEEDED;
        observed.completion_time = status.completion_time.or_else(|| done.last_transition_time.clone());
    } else if status.active.unwrap_or(0) > 0 {
        observed.state = RUNNING;
    } else {
        observed.state = PENDING;
    }
    observed
}

/// The labels that mark a Job (and its pods) as a sale's warm-up.
fn labels(sale: &Sale<'_>, warm: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::SALE_NAME_LABEL.to_owned(), sale.name.to_owned()),
        (names::SALE_NAMESPACE_LABEL.to_owned(), sale.namespace.to_owned()),
        (names::WARMUP_LABEL.to_owned(), warm.to_owned()),
    ])
}

/// The Job for a warm-up, from its template, in the sale's namespace.
///
/// Beyond the template: the sale's labels (on the Job and its pods) and annotation, an
/// `activeDeadlineSeconds` when the template sets none (see [`active_deadline`]),
/// `restartPolicy: Never` when the pod template sets none (the Pod default, Always, is not
/// allowed in a Job), `automountServiceAccountToken: false` when it sets none, and no `ttlSecondsAfterFinished`: a finished Job is what says the
/// warm-up is done, so it stays until the restore removes it (were it deleted earlier, the
/// operator would run it again).
pub fn build_job(sale: &Sale<'_>, warm: &CacheWarm, name: &str, deadline: i64) -> Job {
    let ours = labels(sale, &warm.name);
    let template_meta = warm.template.metadata.clone().unwrap_or_default();
    let mut job_labels = template_meta.labels.unwrap_or_default();
    job_labels.extend(ours.clone());
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(names::SALE_ANNOTATION.to_owned(), sale.holder.to_owned());
    let mut spec: JobSpec = warm.template.spec.clone().unwrap_or_default();
    spec.active_deadline_seconds = Some(deadline);
    spec.ttl_seconds_after_finished = None;
    let pod_meta = spec.template.metadata.get_or_insert_with(ObjectMeta::default);
    pod_meta.labels.get_or_insert_with(BTreeMap::new).extend(ours);
    if let Some(pod) = spec.template.spec.as_mut() {
        if pod.restart_policy.is_none() {
            pod.restart_policy = Some("Never".to_owned());
        }
        // A warm-up reads caches, not the API: its pod gets no API token unless the template
        // asks for one.
        pod.automount_service_account_token.get_or_insert(false);
    }
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(sale.namespace.to_owned()),
            labels: Some(job_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The `WarmupStatus.reason` of a warm-up whose template the operator refuses to run.
pub const TEMPLATE_REFUSED: &str = "TemplateRefused";

/// Why the template of `spec.cacheWarm[index]` may not run, naming the field, or `None` when
/// its pods would be plain pods of the sale's namespace.
///
/// The ServiceAccount check lives only here, because the accounts allowed are the installer's
/// choice (`--warmup-service-account`): the namespace's `default` (or none named) always, others
/// only when listed. The host-access checks repeat the admission rules (the Pod Security
/// Standards' baseline profile, see [`CacheWarm::template`]) for a sale stored before those
/// rules existed, which CRD validation ratcheting lets keep its template unchanged; they also
/// cover the AppArmor annotations, which admission cannot check at a reasonable cost.
pub fn refusal(warm: &CacheWarm, index: usize, installer: &crate::installer::Installer) -> Option<String> {
    let job = format!("spec.cacheWarm[{index}].template.spec");
    let at = format!("{job}.template.spec");
    let job_spec = warm.template.spec.as_ref()?;
    if job_spec.manual_selector == Some(true) {
        return Some(format!("{job}.manualSelector: a warm-up Job may not choose its own selector"));
    }
    let pod = job_spec.template.spec.as_ref()?;
    for (field, account) in
        [("serviceAccountName", &pod.service_account_name), ("serviceAccount", &pod.service_account)]
    {
        let Some(account) = account.as_deref().filter(|a| !a.is_empty() && *a != "default") else {
            continue;
        };
        if !installer.warmup_service_accounts.iter().any(|allowed| allowed == account) {
            let allowed = if installer.warmup_service_accounts.is_empty() {
                "only the namespace's default".to_owned()
            } else {
                format!("default and {}", installer.warmup_service_accounts.join(", "))
            };
            return Some(format!(
                "{at}.{field}: ServiceAccount {account} is not one the operator's installer allows warm-up pods to run as (allowed: {allowed}); the Job is not created"
            ));
        }
    }
    let flag = |set: Option<bool>, field: &str, what: &str| {
        (set == Some(true)).then(|| format!("{at}.{field}: a warm-up pod may not {what}"))
    };
    let host = [
        flag(pod.host_network, "hostNetwork", "use the host's network"),
        flag(pod.host_pid, "hostPID", "share the host's process namespace"),
        flag(pod.host_ipc, "hostIPC", "share the host's IPC namespace"),
    ];
    if let Some(refused) = host.into_iter().flatten().next() {
        return Some(refused);
    }
    if pod.ephemeral_containers.as_ref().is_some_and(|e| !e.is_empty()) {
        return Some(format!("{at}.ephemeralContainers: a warm-up pod template may not list ephemeral containers"));
    }
    for (i, volume) in pod.volumes.iter().flatten().enumerate() {
        if volume.host_path.is_some() {
            return Some(format!("{at}.volumes[{i}].hostPath: a warm-up pod may not mount a host path"));
        }
    }
    if let Some(security) = &pod.security_context {
        if let Some(refused) = profiles!(security) {
            return Some(format!("{at}.securityContext.{refused}"));
        }
        for (i, sysctl) in security.sysctls.iter().flatten().enumerate() {
            if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
                return Some(format!(
                    "{at}.securityContext.sysctls[{i}]: {} is not one of the safe sysctls a warm-up pod may set",
                    sysctl.name
                ));
            }
        }
    }
    let annotations = job_spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    for (key, value) in annotations.into_iter().flatten() {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/") && value == "unconfined" {
            return Some(format!(
                "{job}.template.metadata.annotations[{key}]: a warm-up container may not run without an AppArmor profile"
            ));
        }
    }
    let containers = [("containers", Some(&pod.containers)), ("initContainers", pod.init_containers.as_ref())];
    for (list, containers) in containers {
        for (i, container) in containers.into_iter().flatten().enumerate() {
            let here = format!("{at}.{list}[{i}]");
            for (p, port) in container.ports.iter().flatten().enumerate() {
                if port.host_port.is_some_and(|h| h != 0) {
                    return Some(format!("{here}.ports[{p}].hostPort: a warm-up container may not bind a host port"));
                }
            }
            let Some(security) = &container.security_context else {
                continue;
            };
            if security.privileged == Some(true) {
                return Some(format!("{here}.securityContext.privileged: a warm-up container may not be privileged"));
            }
            if security.capabilities.as_ref().and_then(|c| c.add.as_ref()).is_some_and(|a| !a.is_empty()) {
                return Some(format!(
                    "{here}.securityContext.capabilities.add: a warm-up container may not add capabilities"
                ));
            }
            if security.proc_mount.as_deref().is_some_and(|m| m != "Default") {
                return Some(format!("{here}.securityContext.procMount: a warm-up container may not unmask /proc"));
            }
            if let Some(refused) = profiles!(security) {
                return Some(format!("{here}.securityContext.{refused}"));
            }
        }
    }
    None
}

/// The sysctls the Pod Security Standards' baseline profile allows.
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// The SELinux types the baseline profile allows.
const SELINUX_TYPES: [&str; 4] = ["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// [`profile_refusal`] of a pod's or a container's security context (two k8s types with the same
/// profile fields).
macro_rules! profiles {
    ($security:expr) => {
        profile_refusal(
            $security.se_linux_options.as_ref(),
            $security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            $security.app_armor_profile.as_ref().map(|p| p.type_.as_str()),
            $security.windows_options.as_ref().and_then(|w| w.host_process),
        )
    };
}
use profiles;

/// The baseline profile's checks shared by pod and container security contexts: the field
/// (relative to the security context) and why, when one fails.
fn profile_refusal(
    se_linux: Option<&k8s_openapi::api::core::v1::SELinuxOptions>,
    seccomp: Option<&str>,
    app_armor: Option<&str>,
    host_process: Option<bool>,
) -> Option<String> {
    if let Some(options) = se_linux {
        if options.user.is_some() || options.role.is_some() {
            return Some("seLinuxOptions: a warm-up pod may not set an SELinux user or role".to_owned());
        }
        if let Some(type_) = options.type_.as_deref().filter(|t| !SELINUX_TYPES.contains(t)) {
            return Some(format!("seLinuxOptions.type: {type_} is not one of {}", SELINUX_TYPES.join(", ")));
        }
    }
    if seccomp == Some("Unconfined") {
        return Some("seccompProfile.type: a warm-up pod may not run without a seccomp profile".to_owned());
    }
    if app_armor == Some("Unconfined") {
        return Some("appArmorProfile.type: a warm-up pod may not run without an AppArmor profile".to_owned());
    }
    if host_process == Some(true) {
        return Some("windowsOptions.hostProcess: a warm-up pod may not run as a Windows host process".to_owned());
    }
    None
}

/// One warm-up's state in this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub required: bool,
    pub status: WarmupStatus,
    /// The Job's failure message, or why it could not be created.
    pub message: Option<String>,
    /// When the Job is due, while it does not exist yet.
    pub due_at: Option<Timestamp>,
    /// The Job was created late (see [`LATE_AFTER`]).
    pub late: bool,
}

impl Entry {
    fn state(&self) -> &str {
        &self.status.state
    }

    fn finished(&self) -> bool {
        matches!(self.state(), SUCCEEDED | FAILED | SKIPPED)
    }

    /// `warm-up <name> (Job <job>) failed: <reason>[: <message>]`, for conditions and events.
    fn failure(&self) -> String {
        let job = self.status.job.as_deref().map(|j| format!(" (Job {j})")).unwrap_or_default();
        let reason = self.status.reason.as_deref().unwrap_or("Failed");
        match &self.message {
            Some(message) => format!("warm-up {}{job} failed: {reason}: {message}", self.name),
            None => format!("warm-up {}{job} failed: {reason}", self.name),
        }
    }
}

/// The `CacheWarmed` state of one cluster while the sale wants its warm-ups (Preflight, Hold).
///
/// True once every warm-up has finished and every required one succeeded; a failed optional
/// warm-up is named in the message but does not make the condition (or `Ready`) False, as
/// `required: false` asks. A failed required warm-up is a blocking `WarmupFailed` (it gives
/// `Ready` its reason); anything still to run or running is `Warming`, which is progress.
pub fn condition(entries: &[Entry]) -> LeverCondition {
    let failed_required: Vec<&Entry> = entries.iter().filter(|e| e.required && e.state() == FAILED).collect();
    let failed_optional: Vec<String> =
        entries.iter().filter(|e| !e.required && e.state() == FAILED).map(Entry::failure).collect();
    let lever = |ready: bool, reason: &str, message: String, blocking: bool| LeverCondition {
        type_: CACHE_WARMED,
        ready,
        reason: reason.to_owned(),
        message,
        blocking,
    };
    if !failed_required.is_empty() {
        let failures: Vec<String> = failed_required.iter().map(|e| e.failure()).collect();
        return lever(
            false,
            "WarmupFailed",
            format!("{}; the sale is not Ready until it succeeds: {RETRY}", failures.join("; ")),
            true,
        );
    }
    let unfinished: Vec<String> = entries
        .iter()
        .filter(|e| !e.finished())
        .map(|e| match (e.due_at, e.state()) {
            (Some(at), _) => format!("{} starts at {at}", e.name),
            (None, state) if e.late => format!("{} is {} (started late)", e.name, state.to_ascii_lowercase()),
            (None, state) => format!("{} is {}", e.name, state.to_ascii_lowercase()),
        })
        .collect();
    if !unfinished.is_empty() {
        // Nothing started yet is not warming yet: say when it starts.
        let started = entries.iter().any(|e| e.due_at.is_none());
        let reason = if started { "Warming" } else { "NotYet" };
        return lever(false, reason, format!("Cache warm-up: {}", unfinished.join(", ")), false);
    }
    let skipped: Vec<&str> = entries.iter().filter(|e| e.state() == SKIPPED).map(|e| e.name.as_str()).collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; not run because the window had ended before it was due: {}", skipped.join(", "))
    };
    if !failed_optional.is_empty() {
        return lever(
            true,
            "OptionalWarmupFailed",
            format!("Every required warm-up succeeded; optional {}{skipped}", failed_optional.join("; ")),
            false,
        );
    }
    lever(true, "Warmed", format!("Every cache warm-up Job succeeded{skipped}"), false)
}

/// Runs the warm-up lever for a sale in one cluster. A sale without `cacheWarm` is untouched.
pub async fn run(
    client: &Client,
    sale: &Sale<'_>,
    spec: &FlashSaleSpec,
    intent: Intent,
    report: &mut Report,
) -> Result<(), kube::Error> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), sale.namespace);
    let scope = jobs_scope(sale.namespace);
    let view = sale.view;
    if spec.cache_warm.is_empty() {
        // Jobs left by entries since removed from the spec still go at the restore.
        if intent == Intent::Restore {
            let live = sale_jobs(view, &scope, sale).await?;
            report.restored &= clean_up(&jobs, view, &scope, &live, &[], report).await?;
        }
        return Ok(());
    }
    let live = sale_jobs(view, &scope, sale).await?;

    if intent == Intent::Restore {
        let gone = clean_up(&jobs, view, &scope, &live, &[], report).await?;
        report.restored &= gone;
        report.warmups = live
            .iter()
            .map(|job| {
                let observed = observe(job);
                WarmupStatus {
                    name: job.labels().get(names::WARMUP_LABEL).cloned().unwrap_or_default(),
                    job: Some(job.name_any()),
                    state: observed.state.to_owned(),
                    reason: observed.reason,
                    start_time: observed.start_time,
                    completion_time: observed.completion_time,
                }
            })
            .collect();
        let (reason, message) = if gone {
            ("Restored", "The warm-up Jobs and their pods are removed".to_owned())
        } else {
            ("CleaningUp", format!("Removing {} warm-up Job(s) and their pods", live.len()))
        };
        report.conditions.push(LeverCondition {
            type_: CACHE_WARMED,
            ready: false,
            reason: reason.to_owned(),
            message,
            blocking: false,
        });
        return Ok(());
    }

    let Some(schedule) = sale.schedule else {
        return Ok(());
    };
    let wanted: Vec<(String, &CacheWarm, Option<String>)> = spec
        .cache_warm
        .iter()
        .enumerate()
        .map(|(i, w)| (job_name(sale.name, sale.uid, schedule.start, w), w, refusal(w, i, sale.installer)))
        .collect();
    // A refused template's Job is not kept either (one left from before the rules existed).
    let wanted_names: Vec<&str> = wanted.iter().filter(|w| w.2.is_none()).map(|(n, _, _)| n.as_str()).collect();
    // Jobs of this sale under another name: an entry removed, a template fixed, the window moved.
    clean_up(&jobs, view, &scope, &live, &wanted_names, report).await?;

    let mut entries = vec![];
    for (name, warm, refused) in &wanted {
        let existing = live.iter().find(|j| j.name_any() == *name);
        let entry = match (refused, existing) {
            (Some(why), _) => refused_entry(warm, why),
            (None, Some(job)) => tracked(warm, name, job, schedule),
            (None, None) => start(&jobs, sale, warm, name, schedule, report).await?,
        };
        announce(sale, &entry, name, report);
        if entry.state() == FAILED {
            let failure = entry.failure();
            if entry.required {
                report.problems.push(format!("{failure} ({RETRY})"));
            } else {
                report.warnings.push(format!("{failure} (optional: the sale can be Ready without it)"));
            }
        }
        if let Some(at) = entry.due_at {
            report.recheck_at(at);
        } else if !entry.finished() {
            report.recheck_at(sale.now + RUNNING_RECHECK);
        }
        entries.push(entry);
    }
    let required_done = entries.iter().filter(|e| e.required).all(|e| matches!(e.state(), SUCCEEDED | SKIPPED));
    let required_failed = entries.iter().any(|e| e.required && e.state() == FAILED);
    report.ready &= match intent {
        // Before Preparing only a failure counts against readiness.
        Intent::Preflight => !required_failed,
        _ => required_done,
    };
    // Restored when no Job of the sale existed at the start of this pass and none was created.
    report.restored &= live.is_empty() && entries.iter().all(|e| e.status.job.is_none());
    report.conditions.push(condition(&entries));
    report.warmups = entries.into_iter().map(|e| e.status).collect();
    Ok(())
}

/// A warm-up whose template is refused: no Job, failed from the start (so a required one keeps
/// the sale not Ready), with the refusal as its message. It is announced once, like any failure.
fn refused_entry(warm: &CacheWarm, why: &str) -> Entry {
    Entry {
        name: warm.name.clone(),
        required: warm.required,
        status: WarmupStatus {
            name: warm.name.clone(),
            state: FAILED.to_owned(),
            reason: Some(TEMPLATE_REFUSED.to_owned()),
            ..WarmupStatus::default()
        },
        message: Some(why.to_owned()),
        due_at: None,
        late: false,
    }
}

/// A warm-up whose Job exists.
fn tracked(warm: &CacheWarm, name: &str, job: &Job, schedule: timeline::Schedule) -> Entry {
    let observed = observe(job);
    let due = due_at(&schedule, warm);
    let late = job.creation_timestamp().is_some_and(|t| t.0.duration_since(due) > LATE_AFTER);
    Entry {
        name: warm.name.clone(),
        required: warm.required,
        status: WarmupStatus {
            name: warm.name.clone(),
            job: Some(name.to_owned()),
            state: observed.state.to_owned(),
            reason: observed.reason,
            start_time: observed.start_time,
            completion_time: observed.completion_time,
        },
        message: observed.message,
        due_at: None,
        late,
    }
}

/// A warm-up whose Job does not exist: created when due.
async fn start(
    jobs: &Api<Job>,
    sale: &Sale<'_>,
    warm: &CacheWarm,
    name: &str,
    schedule: timeline::Schedule,
    report: &mut Report,
) -> Result<Entry, kube::Error> {
    let due_at = due_at(&schedule, warm);
    let mut entry = Entry {
        name: warm.name.clone(),
        required: warm.required,
        status: WarmupStatus { name: warm.name.clone(), state: PENDING.to_owned(), ..WarmupStatus::default() },
        message: None,
        due_at: None,
        late: false,
    };
    let late = match due(sale.now, due_at, schedule.end) {
        Due::At(at) => {
            entry.due_at = Some(at);
            return Ok(entry);
        }
        Due::Missed => {
            entry.status.state = SKIPPED.to_owned();
            entry.status.reason = Some("WindowEnded".to_owned());
            return Ok(entry);
        }
        Due::Now { late } => late,
    };
    let lead_time = timeline::signed("cacheWarm[].startBefore", &warm.start_before).unwrap_or(SignedDuration::ZERO);
    let own = warm.template.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    let deadline = active_deadline(own, sale.now, schedule.start, lead_time);
    let job = build_job(sale, warm, name, deadline);
    let params = PostParams { field_manager: Some(names::FIELD_MANAGER.to_owned()), ..PostParams::default() };
    entry.status.job = Some(name.to_owned());
    entry.late = late;
    match jobs.create(&params, &job).await {
        Ok(created) => {
            sale.view.wrote(&jobs_scope(sale.namespace), name, created.metadata.resource_version.as_deref());
            let when = if late {
                format!("late: it was due at {due_at} ({} before the window start)", lead(warm))
            } else {
                format!("{} before the window start", lead(warm))
            };
            report.actions.push(action(
                sale,
                name,
                "WarmupStarted",
                false,
                "Create",
                format!("started warm-up {} as Job {}/{name}, {when}", warm.name, sale.namespace),
            ));
        }
        // Created by an earlier pass whose answer was lost: it is tracked from the next pass.
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        // Refused (an invalid template, a missing namespace, RBAC): said plainly and tried
        // again at the next pass; it counts as a failed warm-up until then.
        Err(kube::Error::Api(status)) => {
            entry.status.job = None;
            entry.status.state = FAILED.to_owned();
            entry.status.reason = Some("CreateRefused".to_owned());
            entry.message = Some(format!("the API server refused to create Job {name}: {}", status.message));
        }
        Err(other) => return Err(other),
    }
    Ok(entry)
}

/// Announces a warm-up's outcome once: when the last status of this cluster did not show it
/// (a restarted operator may repeat an announcement whose status write it did not get to).
fn announce(sale: &Sale<'_>, entry: &Entry, name: &str, report: &mut Report) {
    let before = sale.warmups.iter().find(|w| w.name == entry.name && w.job == entry.status.job);
    if before.is_some_and(|b| b.state == entry.status.state && b.reason == entry.status.reason) {
        return;
    }
    match entry.state() {
        SUCCEEDED => report.actions.push(action(
            sale,
            name,
            "WarmupSucceeded",
            false,
            "Complete",
            format!("warm-up {} (Job {}/{name}) succeeded", entry.name, sale.namespace),
        )),
        FAILED => {
            let consequence = if entry.required {
                format!("it is required: the sale is not Ready until it succeeds ({RETRY})")
            } else {
                "it is optional: the sale can be Ready without it".to_owned()
            };
            report.actions.push(action(
                sale,
                name,
                "WarmupFailed",
                true,
                "Fail",
                format!("{}; {consequence}", entry.failure()),
            ));
        }
        _ => {}
    }
}

/// Deletes this sale's Jobs not named in `keep`, with their pods (foreground propagation: the
/// Job stays, marked for deletion, until its pods are gone, so "no Job left" means no pod
/// left either). Returns whether none of those Jobs remain.
async fn clean_up(
    jobs: &Api<Job>,
    view: &std::sync::Arc<crate::view::View>,
    scope: &Scope,
    live: &[Job],
    keep: &[&str],
    report: &mut Report,
) -> Result<bool, kube::Error> {
    let mut gone = true;
    for job in live.iter().filter(|j| !keep.contains(&j.name_any().as_str())) {
        gone = false;
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = job.name_any();
        let params =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..DeleteParams::default() };
        match jobs.delete(&name, &params).await {
            Ok(answer) => view.after_delete(scope, &name, &answer),
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(err) => return Err(err),
        }
        let state = observe(job).state.to_ascii_lowercase();
        let warm = job.labels().get(names::WARMUP_LABEL).cloned().unwrap_or_default();
        let namespace = job.namespace().unwrap_or_default();
        report.actions.push(Action {
            reason: "WarmupCleanedUp",
            warning: false,
            verb: "Delete",
            object: job_ref(&namespace, &name),
            note: format!("deleted {state} warm-up Job {namespace}/{name} ({warm}) and its pods"),
        });
    }
    Ok(gone)
}

fn job_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_owned()),
        kind: Some("Job".to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    }
}

fn action(sale: &Sale<'_>, job: &str, reason: &'static str, warning: bool, verb: &'static str, note: String) -> Action {
    Action { reason, warning, verb, object: job_ref(sale.namespace, job), note }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn warm(name: &str, start_before: &str, required: bool) -> CacheWarm {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "startBefore": start_before,
            "required": required,
            "template": {"spec": {"template": {"spec": {"containers": [{"name": "warm", "image": "warm:1"}]}}}},
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn schedule() -> timeline::Schedule {
        timeline::Schedule {
            prepare_at: ts("2026-11-10T15:30:00Z"),
            start: ts("2026-11-10T16:00:00Z"),
            end: ts("2026-11-10T18:00:00Z"),
            restore_at: ts("2026-11-10T18:15:00Z"),
        }
    }

    fn sale<'a>(warmups: &'a [WarmupStatus]) -> Sale<'a> {
        Sale {
            cluster: "local",
            name: "double-11",
            namespace: "shop",
            holder: "shop/double-11",
            uid: "0b7c",
            schedule: Some(schedule()),
            cron_zone: "Asia/Shanghai",
            phase: crate::api::Phase::Preparing,
            now: ts("2026-11-10T15:40:00Z"),
            installer: Box::leak(Box::new(crate::installer::Installer::defaults())),
            warmups,
            shown: None,
            view: crate::view::offline(),
            metrics: None,
        }
    }

    fn job(conditions: &[(&str, &str)], active: i32) -> Job {
        Job {
            status: Some(JobStatus {
                active: Some(active),
                start_time: Some(Time(ts("2026-11-10T15:40:01Z"))),
                completion_time: conditions
                    .iter()
                    .any(|(t, _)| *t == "Complete")
                    .then(|| Time(ts("2026-11-10T15:42:00Z"))),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, reason)| JobCondition {
                            type_: (*type_).to_owned(),
                            status: "True".to_owned(),
                            reason: Some((*reason).to_owned()),
                            message: Some(format!("because {reason}")),
                            last_transition_time: Some(Time(ts("2026-11-10T15:43:00Z"))),
                            ..JobCondition::default()
                        })
                        .collect(),
                ),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn names_are_deterministic_bounded_and_change_with_what_the_job_runs() {
        let w = warm("product-cache", "20m", true);
        let start = schedule().start;
        let a = job_name("double-11", "uid-1", start, &w);
        assert_eq!(a, job_name("double-11", "uid-1", start, &w));
        assert!(a.starts_with("double-11-warm-product-cache-"), "{a}");
        assert_eq!(a.len(), "double-11-warm-product-cache-".len() + 8);
        // Pinned: an upgraded operator finds the Jobs an older one created (no re-run mid-sale).
        assert_eq!(a, "double-11-warm-product-cache-4046a500");
        // A re-created sale, a moved window, a changed template: another Job.
        assert_ne!(a, job_name("double-11", "uid-2", start, &w));
        assert_ne!(a, job_name("double-11", "uid-1", ts("2026-11-11T16:00:00Z"), &w));
        let mut fixed = w.clone();
        fixed.template.spec.as_mut().unwrap().backoff_limit = Some(2);
        assert_ne!(a, job_name("double-11", "uid-1", start, &fixed));
        // The longest names the CRD allows still fit, cut before the hash, ending alphanumeric.
        let long_sale = "s".repeat(40);
        let long = job_name(&long_sale, "uid-1", start, &warm(&"w".repeat(20), "20m", true));
        assert_eq!(long.len(), 63, "{long}");
        assert!(long.starts_with(&format!("{long_sale}-warm-www")), "{long}");
        let other = job_name(&long_sale, "uid-1", start, &warm(&format!("{}x", "w".repeat(19)), "20m", true));
        assert_ne!(long, other, "entries differing only past the cut still get distinct names");
        let cut_at_dash = job_name(&"a".repeat(40), "u", start, &warm("b-c-d-e-f-g-h-i-j-k", "1m", true));
        assert!(cut_at_dash.len() <= 63 && !cut_at_dash.contains("--"), "{cut_at_dash}");
    }

    #[test]
    fn due_at_the_lead_time_even_before_preparing() {
        let s = schedule();
        assert_eq!(due_at(&s, &warm("a", "20m", true)), ts("2026-11-10T15:40:00Z"));
        // Larger than prepareBefore (30m): due while the sale is still Scheduled.
        assert_eq!(due_at(&s, &warm("a", "2h", true)), ts("2026-11-10T14:00:00Z"));
        assert_eq!(due_at(&s, &warm("a", "0s", true)), s.start);
        assert_eq!(lead(&warm("a", "1h30m", true)), "1h 30m");
    }

    #[test]
    fn due_now_later_late_or_missed() {
        let (at, end) = (ts("2026-11-10T15:40:00Z"), ts("2026-11-10T18:00:00Z"));
        assert_eq!(due(ts("2026-11-10T15:39:59Z"), at, end), Due::At(at));
        assert_eq!(due(at, at, end), Due::Now { late: false });
        assert_eq!(due(ts("2026-11-10T15:40:10Z"), at, end), Due::Now { late: false });
        assert_eq!(due(ts("2026-11-10T15:40:11Z"), at, end), Due::Now { late: true });
        assert_eq!(due(ts("2026-11-10T17:59:59Z"), at, end), Due::Now { late: true });
        assert_eq!(due(end, at, end), Due::Missed);
    }

    #[test]
    fn the_deadline_ends_at_the_window_start_unless_the_template_says_otherwise() {
        let start = ts("2026-11-10T16:00:00Z");
        let (lead, short) = (SignedDuration::from_mins(20), SignedDuration::from_secs(10));
        assert_eq!(active_deadline(None, ts("2026-11-10T15:40:00Z"), start, lead), 1200);
        assert_eq!(active_deadline(None, ts("2026-11-10T15:59:30Z"), start, short), MIN_DEADLINE_SECS);
        // A late start gets its whole lead (a warm-up that takes 20 minutes still can), bounded.
        assert_eq!(active_deadline(None, ts("2026-11-10T15:59:30Z"), start, lead), 1200);
        assert_eq!(active_deadline(None, ts("2026-11-10T16:30:00Z"), start, lead), 1200);
        assert_eq!(active_deadline(None, ts("2026-11-10T16:30:00Z"), start, short), MIN_DEADLINE_SECS);
        assert_eq!(active_deadline(Some(7200), ts("2026-11-10T15:40:00Z"), start, lead), 7200);
    }

    #[test]
    fn job_states_from_conditions_and_active_pods() {
        let pending = observe(&job(&[], 0));
        assert_eq!((pending.state, pending.completion_time), (PENDING, None));
        assert_eq!(observe(&Job::default()).state, PENDING);
        assert_eq!(observe(&job(&[], 1)).state, RUNNING);
        let done = observe(&job(&[("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "")], 0));
        assert_eq!(done.state, SUCCEEDED);
        assert_eq!(done.start_time, Some(Time(ts("2026-11-10T15:40:01Z"))));
        assert_eq!(done.completion_time, Some(Time(ts("2026-11-10T15:42:00Z"))));
        assert_eq!(done.reason, None);
        let criteria = observe(&job(&[("SuccessCriteriaMet", "CompletionsReached")], 1));
        assert_eq!(criteria.state, SUCCEEDED);
        let failed = observe(&job(&[("FailureTarget", "BackoffLimitExceeded"), ("Failed", "BackoffLimitExceeded")], 0));
        assert_eq!(failed.state, FAILED);
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(failed.message.as_deref(), Some("because BackoffLimitExceeded"));
        assert_eq!(failed.completion_time, Some(Time(ts("2026-11-10T15:43:00Z"))));
        let deciding = observe(&job(&[("FailureTarget", "DeadlineExceeded")], 1));
        assert_eq!((deciding.state, deciding.reason.as_deref()), (FAILED, Some("DeadlineExceeded")));
    }

    #[test]
    fn the_job_carries_the_sale_and_a_deadline_but_no_ttl() {
        let mut w = warm("product-cache", "20m", true);
        w.template.metadata = Some(ObjectMeta {
            labels: Some(BTreeMap::from([("team".to_owned(), "cache".to_owned())])),
            ..ObjectMeta::default()
        });
        w.template.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(0);
        let job = build_job(&sale(&[]), &w, "double-11-warm-product-cache-0000", 1200);
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("cache"));
        assert_eq!(labels.get(names::SALE_NAME_LABEL).map(String::as_str), Some("double-11"));
        assert_eq!(labels.get(names::SALE_NAMESPACE_LABEL).map(String::as_str), Some("shop"));
        assert_eq!(labels.get(names::WARMUP_LABEL).map(String::as_str), Some("product-cache"));
        assert_eq!(job.annotations().get(names::SALE_ANNOTATION).map(String::as_str), Some("shop/double-11"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("shop"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(1200));
        assert_eq!(spec.ttl_seconds_after_finished, None);
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(pod_labels.get(names::WARMUP_LABEL).map(String::as_str), Some("product-cache"));
        assert_eq!(spec.template.spec.unwrap().restart_policy.as_deref(), Some("Never"));
    }

    fn entry(name: &str, required: bool, state: &str) -> Entry {
        Entry {
            name: name.to_owned(),
            required,
            status: WarmupStatus {
                name: name.to_owned(),
                job: Some(format!("j-{name}")),
                state: state.to_owned(),
                reason: (state == FAILED).then(|| "BackoffLimitExceeded".to_owned()),
                ..WarmupStatus::default()
            },
            message: (state == FAILED).then(|| "Job has reached the specified backoff limit".to_owned()),
            due_at: None,
            late: false,
        }
    }

    #[test]
    fn cache_warmed_waits_for_every_job_and_blocks_only_on_required_failures() {
        let c = condition(&[entry("a", true, SUCCEEDED), entry("b", false, SUCCEEDED)]);
        assert_eq!((c.ready, c.reason.as_str(), c.blocking), (true, "Warmed", false));

        let c = condition(&[entry("a", true, SUCCEEDED), entry("b", false, RUNNING)]);
        assert_eq!((c.ready, c.reason.as_str(), c.blocking), (false, "Warming", false));
        assert!(c.message.contains("b is running"), "{}", c.message);

        let mut later = entry("a", true, PENDING);
        later.status.job = None;
        later.due_at = Some(ts("2026-11-10T15:40:00Z"));
        let c = condition(std::slice::from_ref(&later));
        assert_eq!((c.ready, c.reason.as_str()), (false, "NotYet"));
        assert!(c.message.contains("a starts at 2026-11-10T15:40:00Z"), "{}", c.message);
        let c = condition(&[later, entry("b", false, SUCCEEDED)]);
        assert_eq!((c.ready, c.reason.as_str()), (false, "Warming"));

        let c = condition(&[entry("a", true, SUCCEEDED), entry("b", false, FAILED)]);
        assert_eq!((c.ready, c.reason.as_str(), c.blocking), (true, "OptionalWarmupFailed", false));
        assert!(c.message.contains("b (Job j-b) failed: BackoffLimitExceeded"), "{}", c.message);

        let c = condition(&[entry("a", true, FAILED), entry("b", false, RUNNING)]);
        assert_eq!((c.ready, c.reason.as_str(), c.blocking), (false, "WarmupFailed", true));
        assert!(
            c.message.contains(
                "warm-up a (Job j-a) failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
            ),
            "{}",
            c.message
        );
        assert!(c.message.contains("delete the Job to run it again"), "{}", c.message);

        // A sale that reaches the clusters only after its window ended runs no warm-up.
        let mut skipped = entry("a", true, SKIPPED);
        skipped.status.job = None;
        let c = condition(&[entry("b", true, SUCCEEDED), skipped]);
        assert_eq!((c.ready, c.reason.as_str()), (true, "Warmed"));
        assert!(c.message.contains("window had ended before it was due: a"), "{}", c.message);
    }

    #[test]
    fn outcomes_are_announced_once() {
        let failed = entry("a", true, FAILED);
        let mut report = Report::default();
        announce(&sale(&[]), &failed, "j-a", &mut report);
        assert_eq!(report.actions.len(), 1);
        let a = &report.actions[0];
        assert_eq!((a.reason, a.warning), ("WarmupFailed", true));
        assert!(a.note.contains("BackoffLimitExceeded") && a.note.contains("required"), "{}", a.note);

        let shown = [failed.status.clone()];
        let mut again = Report::default();
        announce(&sale(&shown), &failed, "j-a", &mut again);
        assert!(again.actions.is_empty(), "announced twice: {:?}", again.actions);

        let mut running = shown[0].clone();
        running.state = RUNNING.to_owned();
        let mut done = Report::default();
        announce(&sale(&[running]), &entry("a", false, SUCCEEDED), "j-a", &mut done);
        assert_eq!(
            done.actions.iter().map(|a| (a.reason, a.warning)).collect::<Vec<_>>(),
            [("WarmupSucceeded", false)]
        );
    }

    fn warm_with_pod(pod: serde_json::Value) -> CacheWarm {
        let mut w = warm("product-cache", "20m", true);
        w.template.spec.as_mut().unwrap().template.spec = Some(serde_json::from_value(pod).unwrap());
        w
    }

    fn installer(allowed: &[&str]) -> crate::installer::Installer {
        let mut installer = crate::installer::Installer::defaults();
        installer.warmup_service_accounts = allowed.iter().map(|a| (*a).to_owned()).collect();
        installer
    }

    #[test]
    fn only_default_or_an_installer_allowed_service_account_runs_a_warm_up() {
        let as_account = |field: &str, account: &str| {
            warm_with_pod(serde_json::json!({field: account, "containers": [{"name": "w", "image": "w:1"}]}))
        };
        let none = installer(&[]);
        assert_eq!(refusal(&warm("plain", "20m", true), 0, &none), None);
        assert_eq!(refusal(&as_account("serviceAccountName", "default"), 0, &none), None);
        let refused = refusal(&as_account("serviceAccountName", "flashsale-drain-agent"), 3, &none).unwrap();
        assert!(
            refused.starts_with("spec.cacheWarm[3].template.spec.template.spec.serviceAccountName: ServiceAccount flashsale-drain-agent is not one"),
            "{refused}"
        );
        assert!(refused.contains("allowed: only the namespace's default"), "{refused}");
        // The deprecated alias is the same account by another field.
        let alias = refusal(&as_account("serviceAccount", "flashsale-drain-agent"), 0, &none).unwrap();
        assert!(alias.contains(".spec.serviceAccount: ServiceAccount flashsale-drain-agent"), "{alias}");
        let cache_reader = installer(&["cache-reader"]);
        assert_eq!(refusal(&as_account("serviceAccountName", "cache-reader"), 0, &cache_reader), None);
        let other = refusal(&as_account("serviceAccountName", "admin"), 0, &cache_reader).unwrap();
        assert!(other.contains("allowed: default and cache-reader"), "{other}");
    }

    #[test]
    fn host_access_is_refused_at_reconcile_too_naming_the_field() {
        let none = installer(&[]);
        let plain = serde_json::json!([{"name": "w", "image": "w:1"}]);
        let with_security = |security: serde_json::Value| {
            warm_with_pod(
                serde_json::json!({"containers": [{"name": "w", "image": "w:1", "securityContext": security}]}),
            )
        };
        let cases = [
            (warm_with_pod(serde_json::json!({"hostNetwork": true, "containers": plain})), ".spec.hostNetwork:"),
            (warm_with_pod(serde_json::json!({"hostPID": true, "containers": plain})), ".spec.hostPID:"),
            (
                warm_with_pod(
                    serde_json::json!({"containers": plain, "volumes": [{"name": "r", "hostPath": {"path": "/"}}]}),
                ),
                ".spec.volumes[0].hostPath:",
            ),
            (with_security(serde_json::json!({"privileged": true})), ".containers[0].securityContext.privileged:"),
            (
                with_security(serde_json::json!({"capabilities": {"add": ["SYS_ADMIN"]}})),
                ".containers[0].securityContext.capabilities.add:",
            ),
            (with_security(serde_json::json!({"procMount": "Unmasked"})), ".securityContext.procMount:"),
            (with_security(serde_json::json!({"seccompProfile": {"type": "Unconfined"}})), ".seccompProfile.type:"),
            (with_security(serde_json::json!({"seLinuxOptions": {"type": "spc_t"}})), ".seLinuxOptions.type: spc_t"),
            (
                warm_with_pod(serde_json::json!({"containers": plain,
                    "initContainers": [{"name": "i", "image": "w:1", "securityContext": {"privileged": true}}]})),
                ".initContainers[0].securityContext.privileged:",
            ),
            (
                warm_with_pod(
                    serde_json::json!({"containers": [{"name": "w", "image": "w:1", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                ),
                ".containers[0].ports[0].hostPort:",
            ),
            (
                warm_with_pod(serde_json::json!({"containers": plain,
                    "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}})),
                ".securityContext.sysctls[0]: kernel.msgmax",
            ),
        ];
        for (w, field) in cases {
            let refused = refusal(&w, 0, &none).unwrap_or_else(|| panic!("accepted {field}"));
            assert!(refused.contains(field), "{field}: {refused}");
        }
        let mut unconfined = warm("product-cache", "20m", true);
        unconfined.template.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                "container.apparmor.security.beta.kubernetes.io/w".to_owned(),
                "unconfined".to_owned(),
            )])),
            ..ObjectMeta::default()
        });
        assert!(refusal(&unconfined, 0, &none).unwrap().contains("template.metadata.annotations["));
        // What the baseline profile allows passes: dropped capabilities, a safe sysctl, RuntimeDefault.
        let allowed = warm_with_pod(serde_json::json!({
            "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}], "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "w", "image": "w:1", "securityContext": {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": false}}],
        }));
        assert_eq!(refusal(&allowed, 0, &none), None);
    }

    #[test]
    fn a_warm_up_pod_gets_no_api_token_unless_its_template_asks_for_one() {
        let job = build_job(&sale(&[]), &warm("product-cache", "20m", true), "j", 1200);
        assert_eq!(job.spec.unwrap().template.spec.unwrap().automount_service_account_token, Some(false));
        let asks = warm_with_pod(
            serde_json::json!({"automountServiceAccountToken": true, "containers": [{"name": "w", "image": "w:1"}]}),
        );
        let job = build_job(&sale(&[]), &asks, "j", 1200);
        assert_eq!(job.spec.unwrap().template.spec.unwrap().automount_service_account_token, Some(true));
    }

    #[test]
    fn a_refused_template_fails_the_warm_up_and_blocks_ready_when_required() {
        let refused = refused_entry(
            &warm("product-cache", "20m", true),
            "spec.cacheWarm[0].template.spec.template.spec.serviceAccountName: no",
        );
        assert_eq!(
            (refused.state(), refused.status.reason.as_deref(), refused.status.job.as_deref()),
            (FAILED, Some(TEMPLATE_REFUSED), None)
        );
        let condition = condition(&[refused]);
        assert!(!condition.ready && condition.blocking, "{condition:?}");
        assert!(condition.message.contains("serviceAccountName: no"), "{}", condition.message);
    }

    /// The rest of what a warm-up template may not do (the fields the other refusal tests leave
    /// out), and what it may: each case names the field refused, or `None` for a template that runs.
    #[test]
    fn every_host_access_a_template_asks_for_is_refused_by_name_and_the_baseline_runs() {
        let none = installer(&[]);
        let plain = serde_json::json!([{"name": "w", "image": "w:1"}]);
        let pod = |fields: serde_json::Value| {
            let mut pod = serde_json::json!({"containers": plain});
            pod.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            warm_with_pod(pod)
        };
        let container = |security: serde_json::Value| {
            warm_with_pod(
                serde_json::json!({"containers": [{"name": "w", "image": "w:1", "securityContext": security}]}),
            )
        };
        let mut manual = warm("product-cache", "20m", true);
        manual.template.spec.as_mut().unwrap().manual_selector = Some(true);
        let mut chosen = warm("product-cache", "20m", true);
        chosen.template.spec.as_mut().unwrap().manual_selector = Some(false);
        let annotated = |key: &str, value: &str| {
            let mut w = warm("product-cache", "20m", true);
            w.template.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta {
                annotations: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
                ..ObjectMeta::default()
            });
            w
        };
        let apparmor = "container.apparmor.security.beta.kubernetes.io/w";
        let at = "spec.cacheWarm[0].template.spec.template.spec";
        // (case, template, the refusal's start, or None when it runs)
        let table: Vec<(&str, CacheWarm, Option<String>)> = vec![
            ("a manual selector", manual, Some("spec.cacheWarm[0].template.spec.manualSelector:".into())),
            ("manualSelector false", chosen, None),
            ("host IPC", pod(serde_json::json!({"hostIPC": true})), Some(format!("{at}.hostIPC:"))),
            ("host network false", pod(serde_json::json!({"hostNetwork": false, "hostPID": false})), None),
            (
                "ephemeral containers",
                pod(serde_json::json!({"ephemeralContainers": [{"name": "debug", "image": "busybox"}]})),
                Some(format!("{at}.ephemeralContainers:")),
            ),
            ("no ephemeral container", pod(serde_json::json!({"ephemeralContainers": []})), None),
            (
                "an SELinux user",
                pod(serde_json::json!({"securityContext": {"seLinuxOptions": {"user": "system_u"}}})),
                Some(format!("{at}.securityContext.seLinuxOptions: a warm-up pod may not set an SELinux user or role")),
            ),
            (
                "an SELinux role on a container",
                container(serde_json::json!({"seLinuxOptions": {"role": "sysadm_r"}})),
                Some(format!("{at}.containers[0].securityContext.seLinuxOptions:")),
            ),
            (
                "an allowed SELinux type",
                container(serde_json::json!({"seLinuxOptions": {"type": "container_init_t"}})),
                None,
            ),
            (
                "a pod without a seccomp profile",
                pod(serde_json::json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
                Some(format!("{at}.securityContext.seccompProfile.type:")),
            ),
            (
                "a localhost seccomp profile",
                container(serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}})),
                None,
            ),
            (
                "a container without an AppArmor profile",
                container(serde_json::json!({"appArmorProfile": {"type": "Unconfined"}})),
                Some(format!("{at}.containers[0].securityContext.appArmorProfile.type:")),
            ),
            (
                "a pod without an AppArmor profile",
                pod(serde_json::json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}})),
                Some(format!("{at}.securityContext.appArmorProfile.type:")),
            ),
            (
                "the runtime's AppArmor profile",
                container(serde_json::json!({"appArmorProfile": {"type": "RuntimeDefault"}})),
                None,
            ),
            (
                "a Windows host process",
                container(serde_json::json!({"windowsOptions": {"hostProcess": true}})),
                Some(format!("{at}.containers[0].securityContext.windowsOptions.hostProcess:")),
            ),
            ("privileged false", container(serde_json::json!({"privileged": false})), None),
            ("no capability added", container(serde_json::json!({"capabilities": {"add": []}})), None),
            ("the default proc mount", container(serde_json::json!({"procMount": "Default"})), None),
            (
                "host port zero is no host port",
                warm_with_pod(
                    serde_json::json!({"containers": [{"name": "w", "image": "w:1", "ports": [{"containerPort": 80, "hostPort": 0}]}]}),
                ),
                None,
            ),
            (
                "a privileged second init container",
                pod(
                    serde_json::json!({"initContainers": [{"name": "a", "image": "w:1"}, {"name": "b", "image": "w:1", "securityContext": {"privileged": true}}]}),
                ),
                Some(format!("{at}.initContainers[1].securityContext.privileged:")),
            ),
            (
                "a safe sysctl then an unsafe one",
                pod(
                    serde_json::json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_fin_timeout", "value": "30"}, {"name": "vm.swappiness", "value": "1"}]}}),
                ),
                Some(format!("{at}.securityContext.sysctls[1]: vm.swappiness")),
            ),
            ("an AppArmor annotation naming a profile", annotated(apparmor, "localhost/warm"), None),
            ("another annotation set to unconfined", annotated("example.com/mode", "unconfined"), None),
        ];
        for (case, w, want) in table {
            let got = refusal(&w, 0, &none);
            match (&got, &want) {
                (None, None) => {}
                (Some(got), Some(want)) => assert!(got.starts_with(want.as_str()), "{case}: {got:?} is not {want:?}"),
                _ => panic!("{case}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    /// A Job that exists, as the warm-up it tracks: its state from the Job, and whether it was
    /// created late (more than ten seconds after it was due).
    #[test]
    fn a_tracked_job_gives_its_state_and_whether_it_started_late() {
        let w = warm("product-cache", "20m", false);
        let created = |at: Option<&str>, conditions: &[(&str, &str)], active: i32| {
            let mut j = job(conditions, active);
            j.metadata.creation_timestamp = at.map(|t| Time(ts(t)));
            j
        };
        // (case, Job, state, reason, message, late); the warm-up is due at 15:40:00.
        let table = [
            ("created when due, running", created(Some("2026-11-10T15:40:00Z"), &[], 1), RUNNING, None, None, false),
            ("created ten seconds after", created(Some("2026-11-10T15:40:10Z"), &[], 1), RUNNING, None, None, false),
            ("created eleven seconds after", created(Some("2026-11-10T15:40:11Z"), &[], 0), PENDING, None, None, true),
            (
                "created early",
                created(Some("2026-11-10T15:00:00Z"), &[("Complete", "")], 0),
                SUCCEEDED,
                None,
                None,
                false,
            ),
            ("no creation time", created(None, &[], 1), RUNNING, None, None, false),
            (
                "failed late",
                created(Some("2026-11-10T15:50:00Z"), &[("Failed", "DeadlineExceeded")], 0),
                FAILED,
                Some("DeadlineExceeded"),
                Some("because DeadlineExceeded"),
                true,
            ),
        ];
        for (case, j, state, reason, message, late) in table {
            let e = tracked(&w, "j-product-cache", &j, schedule());
            let got = (
                e.status.state.as_str(),
                e.status.reason.as_deref(),
                e.message.as_deref(),
                e.late,
                e.status.job.as_deref(),
                e.due_at,
                e.required,
            );
            assert_eq!(got, (state, reason, message, late, Some("j-product-cache"), None, false), "{case}");
        }
    }

    /// What CacheWarmed says of warm-ups still to finish, and how a failure reads.
    #[test]
    fn cache_warmed_says_what_each_unfinished_warm_up_does_and_how_each_failed() {
        let mut late = entry("search", true, RUNNING);
        late.late = true;
        let mut due = entry("product", true, PENDING);
        due.status.job = None;
        due.due_at = Some(ts("2026-11-10T15:40:00Z"));
        let mut bare = entry("product", true, FAILED);
        bare.message = None;
        bare.status.job = None;
        bare.status.reason = None;
        let mut refused_create = entry("product", false, FAILED);
        refused_create.status.reason = Some("CreateRefused".into());
        // (case, entries, ready, reason, blocking, message)
        let table = [
            (
                "running late",
                vec![late.clone()],
                false,
                "Warming",
                false,
                "Cache warm-up: search is running (started late)".to_owned(),
            ),
            (
                "pending, and one due later",
                vec![entry("search", true, PENDING), due.clone()],
                false,
                "Warming",
                false,
                "Cache warm-up: search is pending, product starts at 2026-11-10T15:40:00Z".to_owned(),
            ),
            (
                "only due later",
                vec![due.clone()],
                false,
                "NotYet",
                false,
                "Cache warm-up: product starts at 2026-11-10T15:40:00Z".to_owned(),
            ),
            ("no warm-up at all", vec![], true, "Warmed", false, "Every cache warm-up Job succeeded".to_owned()),
            (
                "a required failure without Job, reason or message",
                vec![bare],
                false,
                "WarmupFailed",
                true,
                format!("warm-up product failed: Failed; the sale is not Ready until it succeeds: {RETRY}"),
            ),
            (
                "an optional failure outweighs nothing and is named with the skipped",
                vec![refused_create, entry("search", true, SKIPPED)],
                true,
                "OptionalWarmupFailed",
                false,
                "Every required warm-up succeeded; optional warm-up product (Job j-product) failed: CreateRefused: \
                 Job has reached the specified backoff limit; not run because the window had ended before it was \
                 due: search"
                    .to_owned(),
            ),
            (
                "a required failure outweighs one still running",
                vec![entry("a", true, FAILED), late],
                false,
                "WarmupFailed",
                true,
                format!(
                    "warm-up a (Job j-a) failed: BackoffLimitExceeded: Job has reached the specified backoff limit; \
                     the sale is not Ready until it succeeds: {RETRY}"
                ),
            ),
        ];
        for (case, entries, ready, reason, blocking, message) in table {
            let c = condition(&entries);
            assert_eq!(
                (c.ready, c.reason.as_str(), c.blocking, c.message.as_str()),
                (ready, reason, blocking, message.as_str()),
                "{case}"
            );
        }
    }
}
