//! The levers a sale pulls, one module each, with the same small surface: what the lever does
//! in the current [`Intent`], applied to one cluster, returning a [`Report`].
//!
//! Every lever records the original state on the object it changes, in the same server-side
//! apply that makes the change, so an operator restarted at any moment still knows what to put
//! back; restoring removes that bookkeeping again.

pub mod cronhpa;
pub mod preflight;
pub mod prescale;
pub mod probes;
pub mod workload;

use k8s_openapi::api::core::v1::ObjectReference;

use crate::api::{Phase, WorkloadStatus};

/// Annotation naming the sale (`namespace/name`) that holds an object changed by a lever.
pub const SALE_ANNOTATION: &str = "flashsale.dev/sale";

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
}

/// One write a lever made, reported as an Event on the sale with the changed object as the
/// related object (so two workloads changed at once make two events, not one series).
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
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
    pub name: &'a str,
    pub namespace: &'a str,
    /// `namespace/name`, as recorded on the objects the sale changes.
    pub holder: &'a str,
    /// The sale's boundaries; `None` when the spec cannot be resolved (only restoring then).
    pub schedule: Option<crate::timeline::Schedule>,
    /// The IANA zone the cluster's CronHPA controller runs in.
    pub cron_zone: &'a str,
    pub now: jiff::Timestamp,
}

/// The identity of a sale as recorded on the objects it changes.
pub fn holder(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}
