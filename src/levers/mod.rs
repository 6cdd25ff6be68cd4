//! The levers a sale pulls, one module each, with the same small surface: what the lever does
//! in the current [`Intent`], applied to one cluster, returning a [`Report`].
//!
//! Every lever records the original state on the object it changes, in the same server-side
//! apply that makes the change, so an operator restarted at any moment still knows what to put
//! back; restoring removes that bookkeeping again.

pub mod agents;
pub mod cronhpa;
pub mod flags;
pub mod gitops;
pub mod preflight;
pub mod prescale;
pub mod probes;
pub mod warmup;
pub mod workload;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;

use crate::api::{
    ClusterStatus, DrainAgentsStatus, FlagStatus, FlashSaleSpec, Phase, RecordedOriginal, WarmupStatus, WorkloadStatus,
};

/// What the levers do in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Before Preparing: check the targets, change nothing.
    Preflight,
    /// Preparing, Active, CoolingDown: put the sale's changes in place and keep them there.
    Hold,
    /// After the sale, when suspended, or when the sale is deleted: put everything back.
    Restore,
}

impl Intent {
    /// The intent for the phase the clock says the sale is in.
    pub fn for_phase(phase: Phase) -> Intent {
        match phase {
            Phase::Scheduled => Intent::Preflight,
            Phase::Preparing | Phase::Active | Phase::CoolingDown => Intent::Hold,
            Phase::Restoring | Phase::Completed | Phase::Suspended => Intent::Restore,
        }
    }
}

/// What a lever found and did in one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Everything the intent wants is in place and observed (for Preflight: no blocking problem).
    pub ready: bool,
    /// None of the sale's changes remain in this cluster.
    pub restored: bool,
    /// Whether every workload is at its wanted replicas (the `Prescaled` condition; `ready`
    /// covers every lever).
    pub prescaled: bool,
    /// Whether every workload with probe timings has them applied and rolled out (`None` when
    /// no workload sets probes).
    pub probes_applied: Option<bool>,
    /// Risks that do not block the sale (preflight), each naming the object.
    pub warnings: Vec<String>,
    /// Problems a person should read, each naming the object.
    pub problems: Vec<String>,
    /// Writes sent in this pass (for events).
    pub actions: Vec<Action>,
    /// Per-workload detail for status.
    pub workloads: Vec<WorkloadStatus>,
    /// Drain agents wanted and ready (`None` when the sale has no spot drain).
    pub drain_agents: Option<DrainAgentsStatus>,
    /// Cache warm-up Jobs.
    pub warmups: Vec<WarmupStatus>,
    /// Degradation flag values.
    pub flags: Vec<FlagStatus>,
    /// The flag file was read back (from the cluster's view) with the sale's flags in place.
    pub flags_read_back: bool,
    /// The second record of the originals the sale holds in this cluster (see
    /// [`ClusterStatus::originals`]).
    pub originals: Vec<RecordedOriginal>,
    /// The per-lever conditions this cluster contributes (`DrainAgentsReady`, `CacheWarmed`,
    /// `FlagsPublished`); a lever the sale does not use contributes none.
    pub conditions: Vec<LeverCondition>,
    /// The earliest instant a lever wants to look again, besides the phase boundaries (a Job
    /// due, a breaker to evaluate).
    pub recheck_at: Option<jiff::Timestamp>,
}

impl Report {
    /// Asks for another pass no later than `at`.
    pub fn recheck_at(&mut self, at: jiff::Timestamp) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |t| t.min(at)));
    }
}

/// One lever's state in one cluster, folded over every cluster into the sale's condition of
/// that type.
#[derive(Clone, Debug, PartialEq)]
pub struct LeverCondition {
    /// The condition type, e.g. `CacheWarmed`.
    pub type_: &'static str,
    pub ready: bool,
    /// A CamelCase reason, e.g. `Succeeded` or `WarmupFailed`.
    pub reason: String,
    pub message: String,
    /// When not ready, whether this is a failure a person must act on (it then gives `Ready`
    /// its reason) rather than progress.
    pub blocking: bool,
}

/// One write a lever made, reported as an Event on the sale with the changed object as the
/// related object (so two workloads changed at once make two events, not one series).
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// The Event reason, e.g. `Scaled`.
    pub reason: &'static str,
    /// Published as a Warning event (something a person should look at) rather than Normal.
    pub warning: bool,
    /// A short CamelCase verb, e.g. `ScaleUp` or `Restore`.
    pub verb: &'static str,
    /// The object changed.
    pub object: ObjectReference,
    /// What was done, for a person.
    pub note: String,
}

/// What a lever pass knows of the sale beyond its workloads.
#[derive(Clone, Copy, Debug)]
pub struct Sale<'a> {
    /// The cluster this pass runs in, as the sale names it (`local` for the operator's own).
    pub cluster: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    /// `namespace/name`, as recorded on the objects the sale changes.
    pub holder: &'a str,
    /// The sale's UID: objects it creates are named after it, so a sale re-created under the
    /// same name never adopts what an earlier one left.
    pub uid: &'a str,
    /// The sale's boundaries; `None` when the spec cannot be resolved (only restoring then).
    pub schedule: Option<crate::timeline::Schedule>,
    /// The IANA zone the cluster's CronHPA controller runs in.
    pub cron_zone: &'a str,
    /// The phase the clock gives (levers whose behaviour differs between Preparing and Active,
    /// such as static flags, read it; most only need the [`Intent`]).
    pub phase: Phase,
    pub now: jiff::Timestamp,
    /// What the installer decided: agents' image and placement, allowed addresses.
    pub installer: &'a crate::installer::Installer,
    /// This cluster's warm-ups as the last status showed them, so an outcome is announced once.
    pub warmups: &'a [WarmupStatus],
    /// This cluster as the last status showed it: the second record of the originals, and
    /// what was already reported (a drift is announced once).
    pub shown: Option<&'a ClusterStatus>,
    /// The cluster's watch caches: what the levers read, instead of asking the API server.
    pub view: &'a std::sync::Arc<crate::view::View>,
    /// Where each lever's time and refusals are counted (none in unit tests and `plan`).
    pub metrics: Option<&'a crate::metrics::Metrics>,
}

impl Sale<'_> {
    /// Times one lever's part of the pass, when metrics are kept.
    fn time(&self, lever: &'static str) -> Option<crate::metrics::DurationGuard<'_>> {
        self.metrics.map(|m| m.time(lever))
    }

    /// Counts a lever's refused request.
    fn refused(&self, lever: &'static str) {
        if let Some(metrics) = self.metrics {
            metrics.reconcile_errors.get_or_create(&crate::metrics::ErrorLabels { lever, category: "refused" }).inc();
        }
    }
}

/// Runs every lever of a sale in one cluster. An API refusal in one lever is that lever's
/// problem (reported, the others still run); an unreachable cluster fails the whole pass.
/// `local` is the operator's own cluster, where the sale and the Secrets its author wrote live.
pub async fn run(
    client: &Client,
    local: &Client,
    sale: &Sale<'_>,
    spec: &FlashSaleSpec,
    intent: Intent,
) -> Result<Report, kube::Error> {
    if intent == Intent::Preflight {
        // A missing right would otherwise surface as a bare "forbidden" from whichever lever
        // meets it first; the rights are the problem to show, so the levers wait for them.
        let mut rights = Report::default();
        let checked = {
            let _timer = sale.time("preflight");
            check_rights(sale, spec, &mut rights).await
        };
        contained(sale, &mut rights, ("preflight", "preflight"), checked)?;
        if !rights.problems.is_empty() {
            // The levers did not run: what they recorded still stands.
            rights.originals = sale.shown.map(|c| c.originals.clone()).unwrap_or_default();
            return Ok(rights);
        }
    }
    let mut report = {
        let _timer = sale.time("workload");
        workload::run(client, sale, &spec.workloads, intent).await?
    };
    report.prescaled = report.ready;
    let agents = {
        let _timer = sale.time("drain_agents");
        agents::run(client, sale, spec, intent, &mut report).await
    };
    contained(sale, &mut report, ("drain_agents", "drain agents"), agents)?;
    let warmed = {
        let _timer = sale.time("warmup");
        warmup::run(client, sale, spec, intent, &mut report).await
    };
    contained(sale, &mut report, ("warmup", "cache warm-up"), warmed)?;
    let flagged = {
        let _timer = sale.time("flags");
        flags::run(client, local, sale, spec, intent, &mut report).await
    };
    contained(sale, &mut report, ("flags", "degradation flags"), flagged)?;
    Ok(report)
}

/// [`contain`], counting a refusal under the lever's metric label (`(label, name for people)`).
fn contained(
    sale: &Sale<'_>,
    report: &mut Report,
    (label, lever): (&'static str, &str),
    result: Result<(), kube::Error>,
) -> Result<(), kube::Error> {
    if matches!(result, Err(kube::Error::Api(_))) {
        sale.refused(label);
    }
    contain(report, lever, result)
}

/// Preflight: every right the sale's levers will need in this cluster that the operator's
/// identity here lacks is a problem naming the verb and resource, days ahead of Preparing.
async fn check_rights(sale: &Sale<'_>, spec: &FlashSaleSpec, report: &mut Report) -> Result<(), kube::Error> {
    // Without the right to look the CRD up it counts as absent; that right is reported itself.
    let cronhpa_installed = cronhpa::installed(sale.view).await.unwrap_or(false);
    let facts = preflight::ClusterFacts { cronhpa_installed };
    let wanted = preflight::needed_rights(spec, sale.namespace, &sale.installer.agent_namespace, facts);
    let missing = preflight::missing_rights(sale.view, &wanted).await?;
    report.problems.extend(missing.iter().map(preflight::missing_right_problem));
    Ok(())
}

/// Folds one lever's result into the report: an API refusal (RBAC, a webhook, a conflict)
/// becomes a problem naming the lever; a transport error fails the pass.
pub fn contain(report: &mut Report, lever: &str, result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) => {
            report.ready = false;
            report.restored = false;
            report.problems.push(format!("{lever}: the API server refused: {}", status.message));
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// 64-bit FNV-1a: a hash that stays the same across Rust versions and platforms (std's does not),
/// for names derived from a sale's settings.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `base` (ASCII) cut to fit `max` characters together with the suffix `-<8 hex digits of hash>`,
/// ending in a letter or digit before the suffix: an object name that stays unique when cut.
pub(crate) fn fit_name(base: &str, max: usize, hash: u64) -> String {
    let suffix = format!("-{:08x}", hash as u32);
    let keep = max.saturating_sub(suffix.len()).min(base.len());
    let prefix = base[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() { suffix[1..].to_owned() } else { format!("{prefix}{suffix}") }
}

/// The identity of a sale as recorded on the objects it changes.
pub fn holder(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}
