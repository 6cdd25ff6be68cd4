//! The names the operator writes on objects: its field manager, the FlashSale's finalizer and
//! annotations, and the vocabulary every lever shares for "held by this sale" and for the records
//! of what was there before. One place, below the controller and the levers, so that neither
//! imports the other for a name.

// The operator's name on what it writes.

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "flashsale-operator";

/// Label on every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "flashsale-operator";

// On a FlashSale.

/// The finalizer that makes deletion wait for the restore.
pub const FINALIZER: &str = "flashsale.dev/restore";

/// Annotation freezing a sale (on the FlashSale) or one workload of it (on the Deployment or
/// StatefulSet): no writes, every change left in place, until it is removed. Its value is a note
/// for the status (who, why); any value freezes.
pub const FREEZE_ANNOTATION: &str = "flashsale.dev/freeze";

/// Annotation listing clusters whose restore a deletion may skip.
pub const ABANDON_ANNOTATION: &str = "flashsale.dev/abandon-clusters";

/// Label on a rehearsal naming the rehearsed sale, for `kubectl get fs -l`.
pub const REHEARSAL_OF: &str = "flashsale.dev/rehearsal-of";

// Held by this sale: which sale holds an object the levers changed or created.

/// Annotation naming the sale (`namespace/name`) that holds an object changed by a lever.
pub const SALE_ANNOTATION: &str = "flashsale.dev/sale";

/// Label carrying the sale's name (the annotation of the same key carries `namespace/name`).
pub const SALE_LABEL: &str = "flashsale.dev/sale";

/// Label with the name of the sale a warm-up Job belongs to (label values cannot hold the
/// `namespace/name` of [`SALE_ANNOTATION`], so the namespace has its own label).
pub const SALE_NAME_LABEL: &str = "flashsale.dev/sale-name";

/// Label with the namespace of the sale a warm-up Job belongs to.
pub const SALE_NAMESPACE_LABEL: &str = "flashsale.dev/sale-namespace";

/// Prefix of the per-sale holder annotations on an agent DaemonSet.
pub const HOLDER_PREFIX: &str = "holders.flashsale.dev/";

/// Label with the `cacheWarm[].name` a Job runs.
pub const WARMUP_LABEL: &str = "flashsale.dev/warmup";

/// Annotation carrying the instants the object's jobs act at (`<prepare_at>/<restore_at>`,
/// RFC 3339), so another sale can tell whether its window overlaps without parsing schedules
/// in the controller's zone.
pub const CRON_WINDOW: &str = "flashsale.dev/window";

// The records of what was there before the sale, and of what the sale last asked for, written in the same apply as the change they record.

/// Annotation recording the replicas a workload had before the sale scaled it.
pub const ORIGINAL_REPLICAS: &str = "flashsale.dev/original-replicas";

/// Annotation recording the replicas the sale itself last asked for: live replicas that differ
/// from it were set by a person (or another tool), whose change the sale keeps.
pub const HELD_REPLICAS: &str = "flashsale.dev/held-replicas";

/// Annotation on an HPA recording its bounds (and the workload's replicas) before the sale.
pub const ORIGINAL_HPA: &str = "flashsale.dev/original-hpa";

/// Annotation on an HPA recording the bounds the sale itself last asked for.
pub const HELD_HPA: &str = "flashsale.dev/held-hpa";

/// Annotation recording the probe timing fields as they were before the sale (JSON; `null`
/// for a field that was unset).
pub const ORIGINAL_PROBES: &str = "flashsale.dev/original-probes";

/// Annotation recording what the published object was before the sale (`levers::flags::ownership::Record`):
/// JSON `{"created": bool, "flagsFile": <the original flags.flagd.json or null>, "flags": {name:
/// <the definition the sale's flag replaced, or null>}}`.
pub const ORIGINAL_FLAGS: &str = "flashsale.dev/original-flags";

/// Annotation holding each auto-degrade flag's breaker (JSON object by flag name).
pub const FLAG_BREAKERS: &str = "flashsale.dev/flag-breakers";

// Sharing a workload's probes with GitOps tools and people.

/// Annotation on a workload: the probe timings (JSON) that someone else had put on it when the
/// sale last re-applied its own. The same timings coming back mean a loop: the sale then leaves them.
pub const PROBES_OVERRIDDEN: &str = "flashsale.dev/probes-overridden";

/// Annotation on a workload: who put other probe timings on it, so the sale leaves them (through
/// the hold and at the restore).
pub const PROBES_LEFT: &str = "flashsale.dev/probes-left-to";
