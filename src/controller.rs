//! The reconcile loop: fetch → decide (pure) → apply → report status.

use crate::api::names::{self, ABANDON_ANNOTATION, FREEZE_ANNOTATION};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::Secret,
};
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
        watcher,
    },
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{Instrument as _, info, instrument, warn};

use crate::{
    api::{FlashSale, FlashSaleSpec, FlashSaleStatus, Phase},
    clusters::{ClusterError, Clusters},
    levers::{self, Intent},
    metrics::{ClusterLabels, ConditionLabels, ErrorLabels, FlagLabels, Metrics, PhaseLabels, SaleLabels},
    status::{self, ClusterObservation, ConditionSet},
    timeline::{self, Schedule},
};

/// Everything a reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    pub clusters: Clusters,
    /// Events to publish, in order, off the reconcile path (see [`publish_events`]).
    events: tokio::sync::mpsc::Sender<(Event, k8s_openapi::api::core::v1::ObjectReference)>,
    pub metrics: Arc<Metrics>,
    /// What the installer decided (agents' image and placement, allowed addresses).
    pub installer: crate::installer::Installer,
    /// Consecutive failures per sale, for exponential backoff (kube-runtime has none built in).
    failures: Mutex<HashMap<ObjectRef<DeserializeGuard<FlashSale>>, u32>>,
    /// The freeze last announced per sale (`namespace/name`): a pass that reads a status older
    /// than its own last write does not announce it again.
    freezes: Mutex<HashMap<String, Option<String>>>,
    /// The status each sale's last write left, by `namespace/name`. The copy of a sale the
    /// controller hands a reconcile can lag behind that write; a pass reading the older status
    /// would act on records it had already dropped (a workload restored a second time, from a
    /// record of its original that the first restore was done with).
    written: Mutex<HashMap<String, Written>>,
    /// Every sale's next phase change: lever passes let the announcements of a boundary that
    /// just passed go first.
    boundaries: crate::boundaries::Boundaries,
    /// The controller's store of FlashSales, for reads of one sale about another.
    sales: std::sync::OnceLock<kube::runtime::reflector::Store<DeserializeGuard<FlashSale>>>,
}

/// A sale's status as the operator last wrote it.
struct Written {
    uid: Option<String>,
    resource_version: u64,
    status: FlashSaleStatus,
}

impl Written {
    /// Whether this write is newer than `sale`'s copy: the same object (uid), a later version.
    fn newer_than(&self, sale: &FlashSale) -> bool {
        let seen = sale.resource_version().and_then(|v| v.parse::<u64>().ok());
        self.uid == sale.uid() && seen.is_some_and(|seen| self.resource_version > seen)
    }
}

impl Context {
    /// `sale` with the status the operator last wrote, when that write is newer than the copy
    /// (resourceVersions compared as the integers every etcd-backed API server gives; a copy
    /// whose version is not one is taken as it is).
    fn freshest(&self, sale: Arc<FlashSale>) -> Arc<FlashSale> {
        let key = levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any());
        let Ok(mut written) = self.written.lock() else { return sale };
        match written.get(&key) {
            Some(w) if w.newer_than(&sale) => {
                let mut fresher = sale.as_ref().clone();
                fresher.status = Some(w.status.clone());
                Arc::new(fresher)
            }
            Some(_) => {
                // The copy has caught up (or is another object of the same name).
                written.remove(&key);
                sale
            }
            None => sale,
        }
    }

    fn wrote(&self, sale: &FlashSale, version: Option<&str>, status: &FlashSaleStatus) {
        let key = levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any());
        let Some(version) = version.and_then(|v| v.parse::<u64>().ok()) else { return };
        if let Ok(mut map) = self.written.lock() {
            map.insert(key, Written { uid: sale.uid(), resource_version: version, status: status.clone() });
        }
    }

    fn forget_written(&self, sale: &FlashSale) {
        let key = levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any());
        if let Ok(mut map) = self.written.lock() {
            map.remove(&key);
        }
    }
}

/// Why a reconcile failed. Each variant maps to a bounded metrics category.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the object has no namespace")]
    NoNamespace,
    #[error("{0}")]
    RestorePending(String),
}

impl Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.category()
                }
                _ => "finalizer",
            },
            Error::NoNamespace => "spec",
            Error::RestorePending(_) => "restore_pending",
        }
    }
}

/// How much the controller may ask of the API servers at once.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The request budget of each cluster a sale names.
    pub budget: crate::client::Budget,
    /// Reconciles running at once, at most.
    pub concurrency: u16,
}

/// Runs the controller (over one namespace, or all) until `shutdown` resolves. `ready` turns
/// true once caches are synced.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    installer: crate::installer::Installer,
    options: Options,
    ready: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sales = match &namespace {
        Some(ns) => Api::<DeserializeGuard<FlashSale>>::namespaced(client.clone(), ns),
        None => Api::<DeserializeGuard<FlashSale>>::all(client.clone()),
    };
    let reporter = Reporter { controller: names::FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    // What the clusters' views see change, mapped to the sales that care below.
    let (changes, changed) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        events: publish_events(Recorder::new(client.clone(), reporter)),
        clusters: Clusters::new(
            client.clone(),
            metrics.clone(),
            installer.allow_kubeconfig_exec,
            Some(changes),
            options.budget,
        ),
        client,
        metrics,
        installer,
        failures: Mutex::new(HashMap::new()),
        freezes: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        boundaries: Default::default(),
        sales: Default::default(),
    });
    // Workloads held by a sale carry its name: a change in their replicas or rollout (peak
    // reached, pods lost) reconciles the sale at once instead of at the next recheck.
    // A namespaced operator watches only its namespace: its chart grants Roles there, and no
    // cluster-wide read of workloads or Secrets.
    let deployments = scoped::<PartialObjectMeta<Deployment>>(&ctx.client, namespace.as_deref());
    let statefulsets = scoped::<PartialObjectMeta<StatefulSet>>(&ctx.client, namespace.as_deref());
    // Drain agent DaemonSets name their holders: agents becoming ready reconcile those sales.
    // They live in the agent namespace only.
    let agents = Api::<PartialObjectMeta<DaemonSet>>::namespaced(ctx.client.clone(), &ctx.installer.agent_namespace);
    // Warm-up Jobs carry the same annotation: a Job finishing reconciles its sale at once. They
    // live in their sale's namespace, so a namespaced operator watches only that one.
    let jobs = match &namespace {
        Some(ns) => Api::<PartialObjectMeta<Job>>::namespaced(ctx.client.clone(), ns),
        None => Api::<PartialObjectMeta<Job>>::all(ctx.client.clone()),
    };
    let every = || watcher::Config::default().any_semantic();
    // The store keeps each sale without its field ownership (most of a sale with a long status:
    // a tree mirroring every status field, by manager), which no reconcile reads.
    let (store, writer) = kube::runtime::reflector::store();
    use kube::runtime::WatchStreamExt as _;
    let sales = watcher(sales, every())
        .default_backoff()
        .modify(|sale| sale.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(sales, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency));
    let _ = ctx.sales.set(store.clone());
    // A changed kubeconfig Secret rebuilds its cluster's client at once (metadata only: the
    // contents are read when the sale is reconciled, never cached in a watch).
    let referencing = store.clone();
    let fresh = ctx.clusters.fresh_secrets();
    let secret_mapper = move |secret: PartialObjectMeta<Secret>| {
        fresh.changed(&secret.namespace().unwrap_or_default(), &secret.name_any());
        sales_using_secret(&referencing, &secret)
    };
    // A sale and its rehearsals wake each other (metadata only: any change, status included).
    let partners = store.clone();
    let sales_meta = scoped::<PartialObjectMeta<FlashSale>>(&ctx.client, namespace.as_deref());
    let mut controller = controller
        .watches(sales_meta, every(), move |meta| rehearsal_partners(&partners, &meta))
        .watches(deployments, every(), |d| holding_sale(d.annotations()))
        .watches(statefulsets, every(), |s| holding_sale(s.annotations()))
        .watches(agents, watcher::Config::default().labels(levers::agents::AGENT_SELECTOR).any_semantic(), |d| {
            levers::agents::holders(d.annotations())
                .filter_map(|h| h.split_once('/').map(|(ns, name)| ObjectRef::new(name).within(ns)))
                .collect::<Vec<_>>()
        })
        .watches(jobs, every(), |j| holding_sale(j.annotations()));
    // Secrets are watched only where the operator may read them (one watch per namespace when
    // the installer lists them).
    for secrets in secret_watches(&ctx.client, namespace.as_deref(), &ctx.installer.secret_namespaces) {
        controller = controller.watches(secrets, every(), secret_mapper.clone());
    }
    let caring = store.clone();
    let view_changes = futures::stream::unfold(changed, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
        .flat_map(move |change| futures::stream::iter(sales_that_care(&caring, &change)));
    let controller = controller.reconcile_on(view_changes).graceful_shutdown_on(shutdown);
    tokio::spawn(async move {
        // The store's readiness future wakes only one waiter (the controller's own), so poll it
        // again periodically rather than waiting on it once.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    let _ = ready.send(true);
                    info!("caches synced; ready");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });
    controller
        .run(reconcile_guarded, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                warn!(error = %err, "reconcile failed");
            }
        })
        .await;
}

/// An Api over `namespace`, or over every namespace when there is none.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Secret watches: the watched namespace's, else each namespace the installer lists, else
/// every namespace's.
fn secret_watches(
    client: &Client,
    namespace: Option<&str>,
    secret_namespaces: &[String],
) -> Vec<Api<PartialObjectMeta<Secret>>> {
    match (namespace, secret_namespaces) {
        (Some(ns), _) => vec![Api::namespaced(client.clone(), ns)],
        (None, []) => vec![Api::all(client.clone())],
        (None, listed) => listed.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect(),
    }
}

/// The sales whose `spec.clusters[]` name this Secret.
fn sales_using_secret(
    sales: &kube::runtime::reflector::Store<DeserializeGuard<FlashSale>>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DeserializeGuard<FlashSale>>> {
    let (ns, name) = (secret.namespace(), secret.name_any());
    sales
        .state()
        .iter()
        .filter(|guard| {
            guard.0.as_ref().is_ok_and(|sale| {
                sale.namespace() == ns && sale.spec.clusters.iter().any(|c| c.kubeconfig_secret_ref.name == name)
            })
        })
        .map(|guard| ObjectRef::from_obj(guard.as_ref()))
        .collect()
}

/// The sales a change of `changed` concerns besides itself: the rehearsals of it, and the sale
/// it rehearses. A sale created (or moved) while a rehearsal of it holds makes that rehearsal
/// restore at once, not at its next boundary; the rehearsal's restore done, the sale takes the
/// workloads it released without waiting for a pass of its own.
fn rehearsal_partners(
    sales: &kube::runtime::reflector::Store<DeserializeGuard<FlashSale>>,
    changed: &PartialObjectMeta<FlashSale>,
) -> Vec<ObjectRef<DeserializeGuard<FlashSale>>> {
    let (ns, name) = (changed.namespace(), changed.name_any());
    sales
        .state()
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|sale| sale.namespace() == ns)
        .filter_map(|sale| {
            let of = sale.spec.rehearsal.as_ref().map(|r| r.of.as_str());
            match (of == Some(name.as_str()), sale.name_any() == name) {
                (true, _) => Some(ObjectRef::new(&sale.name_any()).within(ns.as_deref().unwrap_or_default())),
                (false, true) => of.map(|of| ObjectRef::new(of).within(ns.as_deref().unwrap_or_default())),
                (false, false) => None,
            }
        })
        .collect()
}

/// The sales a change seen in a cluster's view concerns: the sales an object names as its
/// holders, else the sales using that view that name the object (a workload, a flag
/// ConfigMap); a change of the view's health, or of an object no sale names (an HPA, a CRD),
/// concerns every sale using the view.
fn sales_that_care(
    sales: &kube::runtime::reflector::Store<DeserializeGuard<FlashSale>>,
    change: &crate::view::Changed,
) -> Vec<ObjectRef<DeserializeGuard<FlashSale>>> {
    use crate::view::ViewId;
    if let Some(object) = &change.object {
        let mut held: Vec<ObjectRef<DeserializeGuard<FlashSale>>> = holding_sale(&object.annotations)
            .into_iter()
            .chain(
                levers::agents::holders(&object.annotations)
                    .filter_map(|h| h.split_once('/').map(|(ns, name)| ObjectRef::new(name).within(ns))),
            )
            .chain(levers::warmup::labelled_sale(&object.labels))
            .collect();
        if !held.is_empty() {
            held.dedup();
            return held;
        }
    }
    sales
        .state()
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|sale| match &change.view {
            ViewId::Local => sale.spec.clusters.is_empty(),
            ViewId::Remote { namespace, secret } => {
                sale.namespace().as_deref() == Some(namespace.as_str())
                    && sale.spec.clusters.iter().any(|c| &c.kubeconfig_secret_ref.name == secret)
            }
        })
        .filter(|sale| match &change.object {
            None => true,
            Some(object) => {
                let same_namespace = object.namespace.is_none() || object.namespace == sale.namespace();
                let names = |kind: &str, name: &str| {
                    sale.spec.workloads.iter().any(|w| w.target.kind == kind && w.target.name == name)
                };
                let names_it = names(&object.kind, &object.name)
                    || object.scales.as_ref().is_some_and(|(kind, name)| names(kind, name))
                    || sale.spec.degradation.as_ref().is_some_and(|d| d.config_map_name == object.name);
                // An autoscaler concerns the sales naming what it scales.
                let unnamed_kind = object.scales.is_none()
                    && !matches!(
                        object.kind.as_str(),
                        "Deployment" | "StatefulSet" | "ConfigMap" | "Job" | "DaemonSet"
                    );
                same_namespace && (names_it || unnamed_kind)
            }
        })
        .map(|sale| ObjectRef::new(&sale.name_any()).within(&sale.namespace().unwrap_or_default()))
        .collect()
}

/// The sale named in a workload's `flashsale.dev/sale` annotation.
fn holding_sale(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<ObjectRef<DeserializeGuard<FlashSale>>> {
    let (ns, name) = annotations.get(names::SALE_ANNOTATION)?.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

async fn reconcile_guarded(obj: Arc<DeserializeGuard<FlashSale>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(obj.as_ref());
    let result = match &obj.0 {
        Ok(sale) => reconcile(Arc::new(sale.clone()), ctx.clone()).await,
        Err(invalid) => reconcile_unreadable(invalid, ctx.clone()).await,
    };
    if let (true, Ok(mut failures)) = (result.is_ok(), ctx.failures.lock()) {
        failures.remove(&key);
    }
    result
}

/// Exponential backoff per sale: 1s, 2s, 4s ... capped at 60s, each stretched by up to a
/// quarter so sales that failed together (a cluster lost) do not retry together; reset by a
/// successful reconcile.
fn error_policy(obj: Arc<DeserializeGuard<FlashSale>>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.get_or_create(&ErrorLabels { lever: "timeline", category: err.category() }).inc();
    let attempt = match ctx.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(ObjectRef::from_obj(obj.as_ref())).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let key = ObjectRef::from_obj(obj.as_ref()).to_string();
    Action::requeue(jittered(backoff(attempt), &format!("{key}#{attempt}")))
}

/// `delay` stretched by 0 to 25 %, the same for the same `seed` (no random source needed: the
/// sale's name and attempt spread sales apart).
fn jittered(delay: Duration, seed: &str) -> Duration {
    let quarter = delay / 4;
    let spread = (levers::fnv1a(seed) % 1024) as u32;
    delay + quarter * spread / 1023
}

/// The delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

#[instrument(skip(sale, ctx), fields(namespace = %sale.namespace().unwrap_or_default(), name = %sale.name_any()))]
async fn reconcile(sale: Arc<FlashSale>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time("timeline");
    let ns = sale.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<FlashSale> = Api::namespaced(ctx.client.clone(), &ns);
    let sale = ctx.freshest(sale);
    finalizer(&api, names::FINALIZER, sale, |event| async {
        match event {
            Finalizer::Apply(sale) => apply(&sale, &ctx, &api, None).await,
            Finalizer::Cleanup(sale) => cleanup(&sale, &ctx, None).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// A FlashSale this operator's types cannot read whole (a value only a newer chart knows, a
/// status written by hand): what can be read of it is salvaged and each part left out is named
/// in status. It holds still (nothing new is written) until its restore is due; the restore,
/// and a deletion, still put back what its records say.
async fn reconcile_unreadable(
    invalid: &kube::core::error_boundary::InvalidObject,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = invalid.metadata.namespace.clone().ok_or(Error::NoNamespace)?;
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &kube::api::ApiResource::erase::<FlashSale>(&()));
    let Some(raw) = raw.get_opt(&name).await? else { return Ok(Action::await_change()) };
    let salvaged = match crate::salvage::salvage(serde_json::to_value(&raw).unwrap_or_default()) {
        Ok(salvaged) => salvaged,
        Err(why) => {
            // Not even its window reads: there is no sale to act on, and no finalizer is added.
            warn!(namespace = %ns, %name, error = %why, "cannot read FlashSale");
            return Ok(Action::await_change());
        }
    };
    let unreadable = Unreadable { left_out: salvaged.left_out, whole: salvaged.whole };
    let sale = salvaged.sale;
    let api: Api<FlashSale> = Api::namespaced(ctx.client.clone(), &ns);
    // The finalizer is handled on the object's metadata alone, which always reads.
    let metadata: Api<PartialObjectMeta<FlashSale>> = Api::namespaced(ctx.client.clone(), &ns);
    let obj = Arc::new(raw.metadata.clone().into_request_partial::<FlashSale>());
    let (sale, api, unreadable) = (&sale, &api, &unreadable);
    finalizer(&metadata, names::FINALIZER, obj, |event| {
        let ctx = ctx.clone();
        async move {
            match event {
                Finalizer::Apply(_) => apply(sale, &ctx, api, Some(unreadable)).await,
                Finalizer::Cleanup(_) => cleanup(sale, &ctx, Some(unreadable)).await,
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The parts of a FlashSale its reading left out (see [`crate::salvage`]).
struct Unreadable {
    left_out: Vec<String>,
    whole: Vec<String>,
}

impl Unreadable {
    fn message(&self) -> String {
        format!(
            "This operator cannot read every part of the FlashSale (written for a newer version, or edited by hand?): {}. It holds still: nothing new is written until its restore, which puts back what the records say; fix or remove those parts (kubectl edit) to resume",
            self.left_out.join("; ")
        )
    }

    /// What the parts left out whole leave undone, and how to go on.
    fn unrestored(&self) -> String {
        format!(
            "{} of the FlashSale cannot be read, so what they changed is still in place; everything else is restored. Fix them (kubectl edit works on a FlashSale being deleted too) and the restore goes on: {}",
            self.whole.join(", "),
            self.left_out.join("; ")
        )
    }
}

async fn apply(
    sale: &FlashSale,
    ctx: &Context,
    api: &Api<FlashSale>,
    unreadable: Option<&Unreadable>,
) -> Result<Action, Error> {
    // A rehearsal its sale refuses (their spans overlap: the sale was moved, or the rehearsal
    // was written by hand) restores at once, as a suspended sale does, and says why.
    let refused = rehearsal_refused(sale, api).await?;
    let suspended;
    let sale = match refused {
        Some(_) => {
            suspended = FlashSale { spec: FlashSaleSpec { suspend: true, ..sale.spec.clone() }, ..sale.clone() };
            &suspended
        }
        None => sale,
    };
    let now = Timestamp::now();
    let previous = sale.status.clone().unwrap_or_default();
    let schedule = match Schedule::from_spec(&sale.spec) {
        Ok(schedule) => schedule,
        Err(err) => {
            let was_stalled = previous.conditions.iter().any(|c| c.type_ == status::STALLED && c.status == "True");
            if !was_stalled {
                publish(ctx, sale, EventType::Warning, "InvalidSpec", err.to_string(), "Validate").await;
            }
            write_status(ctx, sale, &previous, status::stalled(sale, &err), now).await?;
            return Ok(Action::await_change());
        }
    };
    // Levers act on the phase the clock gives; whether Restoring has become Completed depends on
    // what they report.
    let clock = timeline::position(&schedule, sale.spec.suspend, false, now);
    // A boundary passed: say so first (one small status write) and end this reconcile there;
    // the levers run in the next one, which that write's watch event starts at once. Hundreds of
    // sales sharing a boundary then all announce it before any of them pulls its levers, so each
    // phase change lands on time however long the lever passes take.
    if let Some(announced) = announce_phase(ctx, sale, &previous, clock, refused.as_deref(), now).await? {
        report_events(ctx, sale, &previous, &announced, &[]).await;
        return Ok(Action::requeue(ANNOUNCED_RECHECK));
    }
    // Frozen by a person: no lever runs, so nothing is written in any cluster and every change
    // stays as it is (the restore too waits); only the status says so, and since when.
    if let Some(note) = sale.annotations().get(names::FREEZE_ANNOTATION) {
        let frozen = status::frozen(sale, &previous, clock, note, now);
        report_freeze(ctx, sale, &previous, &frozen).await;
        write_status(ctx, sale, &previous, frozen, now).await?;
        return Ok(clock.next.map_or_else(Action::await_change, |at| Action::requeue(until(Timestamp::now(), at))));
    }
    // Unreadable in part: nothing is pulled until the restore is due.
    if let Some(unreadable) = unreadable.filter(|_| Intent::for_phase(clock.phase) != Intent::Restore) {
        let message = unreadable.message();
        let mut held = previous.clone();
        held.conditions.retain(|c| ![status::READY, status::STALLED, status::RECONCILING].contains(&c.type_.as_str()));
        held.conditions.push(status::condition(status::READY, false, "Unreadable", &message));
        held.conditions.push(status::condition(status::STALLED, true, "Unreadable", &message));
        held.conditions.push(status::condition(
            status::RECONCILING,
            false,
            "Unreadable",
            "waiting for the FlashSale to be readable",
        ));
        if !previous.conditions.iter().any(|c| c.type_ == status::STALLED && c.message == message) {
            publish(ctx, sale, EventType::Warning, "Unreadable", message.clone(), "Validate").await;
        }
        write_status(ctx, sale, &previous, held, now).await?;
        return Ok(clock.next.map_or_else(Action::await_change, |at| Action::requeue(until(Timestamp::now(), at))));
    }
    // The sales sharing a boundary that just passed announce it before this pass's writes.
    let key = levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any());
    ctx.boundaries.announced_first(&key, ANNOUNCEMENTS_FIRST).await;
    let mut observations = observe(sale, ctx, Some(schedule), clock.phase).await;
    if clock.phase == Phase::Scheduled {
        rehearsed_warnings(sale, ctx, api, &schedule, &mut observations).await?;
    }
    record_cluster_metrics(ctx, sale, &observations);
    if Intent::for_phase(clock.phase) == Intent::Restore {
        forget_flag_metrics(ctx, sale);
    } else {
        record_flag_metrics(ctx, sale, &observations);
    }
    let restored = observations.iter().all(|o| o.report.as_ref().is_ok_and(|r| r.restored));
    let position = timeline::position(&schedule, sale.spec.suspend, restored, now);
    let mut decided = status::decide(sale, &schedule, position, &observations, now);
    if let Some(why) = &refused {
        status::set_ready(&mut decided, false, "RehearsalRefused", why);
    }
    if let Some(unreadable) = unreadable {
        // Restoring from what can be read: still said, as the parts left out stay left out.
        decided.conditions.retain(|c| c.type_ != status::STALLED);
        decided.conditions.push(status::condition(status::STALLED, true, "Unreadable", &unreadable.message()));
        // A part left out whole was not restored: the sale is not done, whatever the rest says.
        if !unreadable.whole.is_empty() && matches!(decided.phase, Some(Phase::Completed | Phase::Suspended)) {
            if decided.phase == Some(Phase::Completed) {
                decided.phase = Some(Phase::Restoring);
            }
            status::set_ready(&mut decided, false, "Unreadable", &format!("Not restored: {}", unreadable.unrestored()));
        }
    }

    report_events(ctx, sale, &previous, &decided, &observations).await;
    report_freeze(ctx, sale, &previous, &decided).await;
    record_phase_metrics(ctx, sale, &decided);
    ctx.metrics.record_sale_status(sale, &decided);
    // Every cluster's view announces drift and a lost cluster as it happens, so a sale that
    // holds its changes is not polled; a cluster that could not be read is looked at again soon.
    let unreachable = observations.iter().any(|o| o.report.is_err());
    // After a restore the workloads' pods take a few seconds to go; keep looking until the
    // status shows them gone, so a Completed sale does not keep a stale ready count.
    let draining = Intent::for_phase(position.phase) == Intent::Restore
        && decided.clusters.iter().flat_map(|c| &c.workloads).any(|w| w.ready_replicas > w.target_replicas);
    let settled = !unreachable
        && !draining
        && !decided.conditions.iter().any(|c| c.type_ == status::RECONCILING && c.status == "True");
    write_status(ctx, sale, &previous, decided.clone(), now).await?;
    // The requeue delay counts from when this reconcile returns, not from when it started.
    let next = decided.next_transition_time.as_ref().map(|t| until(Timestamp::now(), t.0));
    // Preflight looks again now and then: a risk found (or fixed) days ahead should show.
    let next = match position.phase {
        Phase::Scheduled => next.map(|n| n.min(PREFLIGHT_RECHECK)),
        _ => next,
    };
    // A lever may want to look again between boundaries (a warm-up Job due, a breaker to evaluate).
    let recheck = observations.iter().filter_map(|o| o.report.as_ref().ok()?.recheck_at).min();
    let next = match (next, recheck.map(|at| until(Timestamp::now(), at))) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match (next, settled) {
        // Something is still converging: look again soon, but never past the next boundary.
        (Some(next), false) => Action::requeue(next.min(PENDING_RECHECK)),
        (None, false) => Action::requeue(PENDING_RECHECK),
        (Some(next), true) => Action::requeue(next),
        (None, true) => Action::await_change(),
    })
}

/// Writes just the new phase and next boundary when the clock has moved the sale into another
/// phase, returning the status as written. Restoring is announced as the clock reaches it (at
/// that instant nothing is restored yet); Completed only ever follows a lever pass.
async fn announce_phase(
    ctx: &Context,
    sale: &FlashSale,
    previous: &FlashSaleStatus,
    clock: timeline::Position,
    refused: Option<&str>,
    now: Timestamp,
) -> Result<Option<FlashSaleStatus>, Error> {
    let moved = previous.phase.is_some_and(|p| p != clock.phase);
    // The clock says Restoring for a restored sale too; only a sale arriving from an earlier
    // phase is announced (a Completed one must not flip back and forth).
    let arriving_after_restore =
        clock.phase == Phase::Restoring && matches!(previous.phase, Some(Phase::Restoring | Phase::Completed));
    if !moved || arriving_after_restore {
        return Ok(None);
    }
    let mut announced = previous.clone();
    announced.phase = Some(clock.phase);
    announced.next_transition_time = clock.next.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    // Entering a phase that starts work: Ready from the phase before no longer holds.
    let starting = match (clock.phase, refused) {
        (Phase::Preparing, _) => Some(("Preparing", "Preparation has started")),
        // A rehearsal its sale refuses is restored as a suspended sale is, for its own reason.
        (Phase::Suspended, Some(why)) => Some(("RehearsalRefused", why)),
        (Phase::Suspended, None) => Some(("Suspending", "spec.suspend is set; restoring")),
        (Phase::Restoring, _) => Some(("Restoring", "The sale is over; putting every recorded original back")),
        _ => None,
    };
    if let Some((reason, message)) = starting {
        announced.conditions.retain(|c| c.type_ != status::READY && c.type_ != status::RECONCILING);
        announced.conditions.push(status::condition(status::READY, false, reason, message));
        announced.conditions.push(status::condition(status::RECONCILING, true, reason, message));
    }
    Ok(Some(write_status(ctx, sale, previous, announced, now).await?))
}

/// After a phase change is announced, the reconcile that pulls the levers follows at once on the
/// status write's watch event; this is only the fallback if that event is slow.
const ANNOUNCED_RECHECK: Duration = Duration::from_secs(1);

/// The longest a lever pass waits for other sales to announce a boundary that just passed.
const ANNOUNCEMENTS_FIRST: Duration = Duration::from_secs(1);

/// How often a Scheduled sale's preflight runs again.
const PREFLIGHT_RECHECK: Duration = Duration::from_secs(300);

/// How often a sale whose levers are still converging (or one of whose clusters could not be
/// read) is looked at again.
const PENDING_RECHECK: Duration = Duration::from_secs(3);

/// Runs the levers in every cluster of the sale, concurrently; one slow or unreachable cluster
/// delays none of the others beyond its client timeouts.
async fn observe(sale: &FlashSale, ctx: &Context, schedule: Option<Schedule>, phase: Phase) -> Vec<ClusterObservation> {
    let intent = Intent::for_phase(phase);
    let ns = sale.namespace().unwrap_or_default();
    let holder = levers::holder(&ns, &sale.name_any());
    let targets = ctx.clusters.targets(sale, &ns).await;
    let deadline = pass_deadline(sale, schedule, Timestamp::now());
    let passes = targets.into_iter().map(|target| {
        let (ns, holder) = (ns.clone(), holder.clone());
        // Inside the reconcile's span (the sale): one span per cluster's pass.
        let span = tracing::info_span!("pass", cluster = %target.name, intent = ?intent);
        async move {
            let shown = sale.status.as_ref().and_then(|s| s.clusters.iter().find(|c| c.name == target.name));
            let report = match (target.client, target.view) {
                (Ok(client), Some(view)) => {
                    let _timer = ctx.metrics.time("cluster");
                    let name = sale.name_any();
                    let uid = sale.uid().unwrap_or_default();
                    let pass = levers::Sale {
                        cluster: &target.name,
                        name: &name,
                        namespace: &ns,
                        holder: &holder,
                        uid: &uid,
                        schedule,
                        cron_zone: &target.cron_hpa_time_zone,
                        phase,
                        now: Timestamp::now(),
                        installer: &ctx.installer,
                        warmups: shown.map(|c| c.warmups.as_slice()).unwrap_or_default(),
                        shown,
                        view: &view,
                        metrics: Some(&ctx.metrics),
                    };
                    let run = levers::run(&client, &ctx.client, &pass, &sale.spec, intent);
                    match tokio::time::timeout(deadline, run).await {
                        Ok(result) => result.map_err(|err| {
                            ctx.metrics
                                .reconcile_errors
                                .get_or_create(&ErrorLabels { lever: "cluster", category: kube_category(&err) })
                                .inc();
                            describe(&err)
                        }),
                        Err(_) => {
                            ctx.metrics
                                .reconcile_errors
                                .get_or_create(&ErrorLabels { lever: "cluster", category: "deadline" })
                                .inc();
                            Err(format!(
                                "cannot reach the API server: it did not answer within {deadline:?} (the pass was cut so that the sale's other clusters and its timeline go on)"
                            ))
                        }
                    }
                }
                (Ok(_), None) => Err("no view of the cluster".to_owned()),
                (Err(err), _) => {
                    let message = err.to_string();
                    // Once per refusal: while the status already shows it, the sale was told.
                    if matches!(err, ClusterError::Refused(_))
                        && shown.and_then(|c| c.message.as_deref()) != Some(message.as_str())
                    {
                        let note = format!("cluster {}: {message}", target.name);
                        let secret = cluster_secret(sale, &target.name);
                        publish_with(ctx, sale, EventType::Warning, "KubeconfigRefused", note, "Connect", secret).await;
                    }
                    Err(message)
                }
            };
            ClusterObservation { name: target.name, report }
        }
        .instrument(span)
    });
    futures::future::join_all(passes).await
}

/// The longest one cluster's lever pass may take. A server that accepts connections and then
/// answers slowly or not at all (overloaded, paused, trickling bytes) holds a pass only this
/// long: each request's own timeouts bound one request, not the many a pass sends.
const PASS_DEADLINE: Duration = Duration::from_secs(5);

/// The least time a pass gets when a phase boundary is near.
const PASS_FLOOR: Duration = Duration::from_millis(750);

/// How long this reconcile's cluster passes may run: [`PASS_DEADLINE`], cut short so that the
/// reconcile ends by the sale's next boundary (the controller runs one reconcile of a sale at
/// a time, so a pass held open across a boundary would delay the phase change behind it), but
/// never below [`PASS_FLOOR`], which a healthy cluster's pass fits in.
fn pass_deadline(sale: &FlashSale, schedule: Option<Schedule>, now: Timestamp) -> Duration {
    let next = schedule.and_then(|s| timeline::position(&s, sale.spec.suspend, false, now).next);
    match next {
        Some(at) => until(now, at).clamp(PASS_FLOOR, PASS_DEADLINE),
        None => PASS_DEADLINE,
    }
}

/// Why the sale a rehearsal rehearses refuses it now, if it does (see [`crate::rehearsal`]). A
/// rehearsal whose sale is gone plays on: it is a sale of its own.
async fn rehearsal_refused(sale: &FlashSale, api: &Api<FlashSale>) -> Result<Option<String>, Error> {
    let Some(of) = &sale.spec.rehearsal else { return Ok(None) };
    let Some(real) = api.get_opt(&of.of).await? else { return Ok(None) };
    let (Ok(real_schedule), Ok(schedule)) = (Schedule::from_spec(&real.spec), Schedule::from_spec(&sale.spec)) else {
        return Ok(None);
    };
    Ok(crate::rehearsal::refusal(&of.of, &real_schedule, &schedule))
}

/// Adds to a Scheduled sale's preflight what its last finished rehearsal measured: workloads
/// that took most of `prepareBefore` to reach peak, or never did.
async fn rehearsed_warnings(
    sale: &FlashSale,
    ctx: &Context,
    api: &Api<FlashSale>,
    schedule: &Schedule,
    observations: &mut [ClusterObservation],
) -> Result<(), Error> {
    if sale.spec.rehearsal.is_some() {
        return Ok(());
    }
    let name = sale.name_any();
    let rehearsal_name = crate::rehearsal::name(&name);
    // From the controller's store: a Scheduled sale's pass reads nothing from the API server.
    let rehearsal = match ctx.sales.get() {
        Some(store) => {
            let key = ObjectRef::new(&rehearsal_name).within(&sale.namespace().unwrap_or_default());
            store.get(&key).and_then(|guard| guard.0.as_ref().ok().cloned())
        }
        None => api.get_opt(&rehearsal_name).await?,
    };
    let Some(rehearsal) = rehearsal else { return Ok(()) };
    if rehearsal.spec.rehearsal.as_ref().map(|r| r.of.as_str()) != Some(name.as_str()) {
        return Ok(());
    }
    let Ok(report) = crate::rehearsal::report(&rehearsal) else { return Ok(()) };
    let prepare_before = schedule.start.duration_since(schedule.prepare_at).as_secs_f64();
    for (cluster, warning) in crate::rehearsal::preflight_warnings(&report, prepare_before) {
        let target = observations.iter_mut().find(|o| o.name == cluster).and_then(|o| o.report.as_mut().ok());
        if let Some(report) = target {
            report.warnings.push(warning);
        }
    }
    Ok(())
}

/// Announces a freeze once as it starts or changes (the `Frozen` condition's message names what
/// and since when), and once as it is lifted.
async fn report_freeze(ctx: &Context, sale: &FlashSale, previous: &FlashSaleStatus, decided: &FlashSaleStatus) {
    let frozen = |s: &FlashSaleStatus| {
        s.conditions.iter().find(|c| c.type_ == status::FROZEN && c.status == "True").map(|c| c.message.clone())
    };
    let key = levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any());
    let now = frozen(decided);
    let before = match ctx.freezes.lock() {
        Ok(mut announced) => announced.insert(key, now.clone()).unwrap_or_else(|| frozen(previous)),
        Err(_) => frozen(previous),
    };
    match (before, now) {
        (before, Some(now)) if before.as_ref() != Some(&now) => {
            publish(ctx, sale, EventType::Normal, "Frozen", now, "Freeze").await;
        }
        (Some(_), None) => {
            let note = format!("The annotation {FREEZE_ANNOTATION} is gone; the sale holds its changes again");
            publish(ctx, sale, EventType::Normal, "Unfrozen", note, "Freeze").await;
        }
        _ => {}
    }
}

/// Restores every cluster before the finalizer is released. Clusters named in the
/// `flashsale.dev/abandon-clusters` annotation (comma-separated) are skipped: the escape hatch
/// for a cluster that is gone for good.
async fn cleanup(sale: &FlashSale, ctx: &Context, unreadable: Option<&Unreadable>) -> Result<Action, Error> {
    let now = Timestamp::now();
    let previous = sale.status.clone().unwrap_or_default();
    let abandoned: Vec<String> = sale
        .annotations()
        .get(names::ABANDON_ANNOTATION)
        .map(|v| v.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default();
    // A frozen sale is not restored, deleted or not: the deletion waits for the freeze to go.
    if sale.annotations().contains_key(names::FREEZE_ANNOTATION) {
        let message = format!(
            "Deletion waits: the sale is frozen (annotation {FREEZE_ANNOTATION}), so nothing is restored; remove the annotation to restore everything and release it"
        );
        let mut blocked = previous.clone();
        blocked.conditions.retain(|c| c.type_ != status::READY && c.type_ != status::RECONCILING);
        blocked.conditions.push(status::condition(status::READY, false, "Deleting", &message));
        blocked.conditions.push(status::condition(status::RECONCILING, false, "Deleting", &message));
        if !previous.conditions.iter().any(|c| c.type_ == status::READY && c.message == message) {
            publish(ctx, sale, EventType::Warning, "RestorePending", message.clone(), "Restore").await;
        }
        write_status(ctx, sale, &previous, blocked, now).await?;
        return Err(Error::RestorePending(message));
    }
    let observations: Vec<ClusterObservation> =
        observe(sale, ctx, Schedule::from_spec(&sale.spec).ok(), Phase::Restoring)
            .await
            .into_iter()
            .filter(|o| !abandoned.contains(&o.name))
            .collect();
    for obs in &observations {
        for action in obs.report.iter().flat_map(|r| r.actions.iter()) {
            publish_action(ctx, sale, &obs.name, action).await;
        }
    }
    let pending: Vec<String> = observations
        .iter()
        .filter_map(|o| match &o.report {
            Ok(r) if r.restored => None,
            Ok(r) => Some(format!("{}: {}", o.name, r.problems.join("; "))),
            Err(message) => Some(format!("{}: {message}", o.name)),
        })
        .collect();
    // Parts left out whole (a workload, a cluster): what they changed is not known, so not
    // restored; the deletion waits for them to be fixed rather than forget them.
    if let (true, Some(unreadable)) = (pending.is_empty(), unreadable.filter(|u| !u.whole.is_empty())) {
        let message = format!("Deletion waits: {}", unreadable.unrestored());
        let mut blocked = previous.clone();
        blocked.conditions = vec![
            status::condition(status::READY, false, "Deleting", &message),
            status::condition(status::RECONCILING, false, "Deleting", &message),
            status::condition(status::STALLED, true, "Unreadable", &message),
        ];
        if !previous.conditions.iter().any(|c| c.type_ == status::READY && c.message == message) {
            publish(ctx, sale, EventType::Warning, "RestorePending", message.clone(), "Restore").await;
        }
        write_status(ctx, sale, &previous, blocked, now).await?;
        return Err(Error::RestorePending(message));
    }
    if pending.is_empty() {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "Deleted",
            "Everything is restored; releasing the finalizer".into(),
            "Restore",
        )
        .await;
        forget_metrics(ctx, sale);
        ctx.forget_written(sale);
        ctx.boundaries.forget(&levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any()));
        return Ok(Action::await_change());
    }
    let message = format!(
        "Deletion waits for the restore of cluster {}. If a cluster is gone for good, annotate the FlashSale with {ABANDON_ANNOTATION}=<names> to release it",
        pending.join("; ")
    );
    let mut blocked = previous.clone();
    // A cluster this pass restored (in part) keeps only the records still held: the next pass
    // must not restore a workload again from a record its restore was done with.
    for cluster in &mut blocked.clusters {
        if let Some(Ok(report)) = observations.iter().find(|o| o.name == cluster.name).map(|o| &o.report) {
            cluster.originals = report.originals.clone();
        }
    }
    blocked.conditions = vec![
        status::condition(status::READY, false, "Deleting", &message),
        status::condition(status::RECONCILING, true, "Deleting", &message),
        status::condition(status::STALLED, false, "AsExpected", "The spec can be acted on"),
    ];
    if !previous.conditions.iter().any(|c| c.type_ == status::READY && c.reason == "Deleting" && c.message == message) {
        publish(ctx, sale, EventType::Warning, "RestorePending", message.clone(), "Restore").await;
    }
    write_status(ctx, sale, &previous, blocked, now).await?;
    Err(Error::RestorePending(message))
}

async fn report_events(
    ctx: &Context,
    sale: &FlashSale,
    previous: &FlashSaleStatus,
    decided: &FlashSaleStatus,
    observations: &[ClusterObservation],
) {
    if let Some(phase) = decided.phase.filter(|p| Some(*p) != previous.phase) {
        // The action names the phase: events with the same reason and action fold into one series.
        let note = format!("Phase is now {phase}");
        publish_with(ctx, sale, EventType::Normal, "PhaseChanged", note, phase.as_str(), None).await;
    }
    for obs in observations {
        let was_reachable = previous.clusters.iter().find(|c| c.name == obs.name).map(|c| c.reachable);
        match &obs.report {
            Ok(report) => {
                for action in &report.actions {
                    publish_action(ctx, sale, &obs.name, action).await;
                }
                if was_reachable == Some(false) {
                    let note = format!("cluster {} is reachable again", obs.name);
                    let secret = cluster_secret(sale, &obs.name);
                    publish_with(ctx, sale, EventType::Normal, "ClusterReachable", note, "Connect", secret).await;
                }
            }
            Err(message) if was_reachable != Some(false) => {
                let note = format!("cluster {}: {message}", obs.name);
                let secret = cluster_secret(sale, &obs.name);
                publish_with(ctx, sale, EventType::Warning, "ClusterUnreachable", note, "Connect", secret).await;
            }
            Err(_) => {}
        }
    }
    // A warning each time Ready turns False for a reason a person must act on (the message
    // names what is wrong); progress while preparing is not a warning.
    let ready = |s: &FlashSaleStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let changed = |a: &Option<(String, String, String)>, b: &Option<(String, String, String)>| {
        a.as_ref().map(|(s, r, _)| (s, r)) != b.as_ref().map(|(s, r, _)| (s, r))
    };
    let (now, before) = (ready(decided), ready(previous));
    if let Some((_, reason, message)) = now.clone().filter(|(state, reason, _)| {
        changed(&now, &before)
            && ((state == "False"
                && !matches!(reason.as_str(), "Preparing" | "Restoring" | "Suspending" | "Deleting" | "InvalidSpec"))
                || reason == "PreflightWarnings")
    }) {
        publish(ctx, sale, EventType::Warning, &reason, message, "Check").await;
    }
}

fn kube_category(err: &kube::Error) -> &'static str {
    match err {
        kube::Error::Api(status) if status.code == 404 => "not_found",
        kube::Error::Api(status) if status.code == 403 => "forbidden",
        kube::Error::Api(status) if status.code == 409 => "conflict",
        kube::Error::Api(_) => "api",
        _ => "unreachable",
    }
}

/// A message for a person: what failed, without repeating kube's source chain.
fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("the API server refused: {}", status.message),
        // Refreshing a credential can run an exec plugin; what it printed stays out of status.
        kube::Error::Auth(_) => "cannot reach the API server: its credentials could not be refreshed".to_owned(),
        other => format!("cannot reach the API server: {other}"),
    }
}

fn forget_metrics(ctx: &Context, sale: &FlashSale) {
    let (namespace, name) = (sale.namespace().unwrap_or_default(), sale.name_any());
    for phase in Phase::ALL {
        ctx.metrics.phase.remove(&PhaseLabels {
            sale_namespace: namespace.clone(),
            sale: name.clone(),
            phase: phase.as_str(),
        });
    }
    for condition in [
        status::READY,
        status::PRESCALED,
        status::PROBES_APPLIED,
        status::DRAIN_AGENTS_READY,
        status::CACHE_WARMED,
        status::FLAGS_PUBLISHED,
    ] {
        let labels =
            ConditionLabels { sale_namespace: namespace.clone(), sale: name.clone(), condition: condition.into() };
        ctx.metrics.condition.remove(&labels);
    }
    for cluster in sale_clusters(sale) {
        let labels = ClusterLabels { sale_namespace: namespace.clone(), sale: name.clone(), cluster };
        ctx.metrics.cluster_reachable.remove(&labels);
    }
    ctx.metrics.next_transition_timestamp.remove(&SaleLabels { sale_namespace: namespace, sale: name });
    forget_flag_metrics(ctx, sale);
    ctx.metrics.forget_sale_status(sale);
}

/// The names the sale's clusters appear under in status and metrics.
fn sale_clusters(sale: &FlashSale) -> Vec<String> {
    match sale.spec.clusters.as_slice() {
        [] => vec![crate::clusters::LOCAL.to_owned()],
        listed => listed.iter().map(|c| c.name.clone()).collect(),
    }
}

/// Drops a sale's flag series (after its restore nothing of its flags is published any more).
fn forget_flag_metrics(ctx: &Context, sale: &FlashSale) {
    let (namespace, name) = (sale.namespace().unwrap_or_default(), sale.name_any());
    let flags = sale.spec.degradation.iter().flat_map(|d| d.flags.iter().map(|f| f.name.clone()));
    let clusters = sale_clusters(sale);
    for flag in flags {
        for cluster in &clusters {
            let labels = FlagLabels {
                sale_namespace: namespace.clone(),
                sale: name.clone(),
                cluster: cluster.clone(),
                flag: flag.clone(),
            };
            ctx.metrics.flag_enabled.remove(&labels);
            ctx.metrics.flag_query_errors.remove(&labels);
        }
    }
}

/// Whether each cluster was reached in this pass.
fn record_cluster_metrics(ctx: &Context, sale: &FlashSale, observations: &[ClusterObservation]) {
    let (namespace, name) = (sale.namespace().unwrap_or_default(), sale.name_any());
    for obs in observations {
        let labels = ClusterLabels { sale_namespace: namespace.clone(), sale: name.clone(), cluster: obs.name.clone() };
        ctx.metrics.cluster_reachable.get_or_create(&labels).set(i64::from(obs.report.is_ok()));
    }
}

/// Each flag's value per cluster, and every auto-degrade query that failed in this pass.
fn record_flag_metrics(ctx: &Context, sale: &FlashSale, observations: &[ClusterObservation]) {
    let (namespace, name) = (sale.namespace().unwrap_or_default(), sale.name_any());
    for obs in observations {
        for flag in obs.report.iter().flat_map(|r| r.flags.iter()) {
            let labels = FlagLabels {
                sale_namespace: namespace.clone(),
                sale: name.clone(),
                cluster: obs.name.clone(),
                flag: flag.name.clone(),
            };
            ctx.metrics.flag_enabled.get_or_create(&labels).set(i64::from(flag.enabled));
            if levers::flags::query_failed(flag) {
                ctx.metrics.flag_query_errors.get_or_create(&labels).inc();
            }
        }
    }
}

/// Writes the status with server-side apply, unless it already says the same thing.
async fn write_status(
    ctx: &Context,
    sale: &FlashSale,
    previous: &FlashSaleStatus,
    mut next: FlashSaleStatus,
    now: Timestamp,
) -> Result<FlashSaleStatus, Error> {
    next.conditions =
        ConditionSet::from(previous.conditions.clone()).merge(next.conditions, sale.meta().generation, now);
    let key = levers::holder(&sale.namespace().unwrap_or_default(), &sale.name_any());
    ctx.boundaries.expect(&key, next.next_transition_time.as_ref().map(|t| t.0));
    if &next == previous {
        return Ok(next);
    }
    let patch = serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "status": next,
    });
    // Read back as a guard: a sale read in part (see `reconcile_unreadable`) is written too.
    let guarded: Api<DeserializeGuard<FlashSale>> =
        Api::namespaced(ctx.client.clone(), &sale.namespace().unwrap_or_default());
    let written = guarded
        .patch_status(&sale.name_any(), &PatchParams::apply(names::FIELD_MANAGER).force(), &Patch::Apply(patch))
        .await?;
    ctx.wrote(sale, written.meta().resource_version.as_deref(), &next);
    Ok(next)
}

async fn publish(ctx: &Context, sale: &FlashSale, type_: EventType, reason: &str, note: String, action: &str) {
    publish_with(ctx, sale, type_, reason, note, action, None).await;
}

/// A lever's write as an Event, related to the object it changed.
async fn publish_action(ctx: &Context, sale: &FlashSale, cluster: &str, action: &levers::Action) {
    let note = format!("cluster {cluster}: {}", action.note);
    let type_ = if action.warning { EventType::Warning } else { EventType::Normal };
    publish_with(ctx, sale, type_, action.reason, note, action.verb, Some(action.object.clone())).await;
}

async fn publish_with(
    ctx: &Context,
    sale: &FlashSale,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
    related: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: related };
    // Waits only while the queue is full: every event is published, none is dropped.
    if ctx.events.send((event, sale.object_ref(&()))).await.is_err() {
        warn!(reason, "could not publish event: the publisher has stopped");
    }
}

/// The kubeconfig Secret a sale reaches `cluster` through, as an event's related object: events
/// of the same reason about two clusters are two events, not one series under the first's note.
fn cluster_secret(sale: &FlashSale, cluster: &str) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let entry = sale.spec.clusters.iter().find(|c| c.name == cluster)?;
    Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        namespace: sale.namespace(),
        name: Some(entry.kubeconfig_secret_ref.name.clone()),
        ..Default::default()
    })
}

/// How many events may wait to be published before a reconcile waits for room.
const EVENTS_QUEUED: usize = 4096;

/// Publishes events one at a time, in the order the reconciles sent them, on a task of its own:
/// a reconcile hands its events over and goes on. Three hundred sales sharing a boundary send
/// thousands of events (one per workload scaled); published inside the reconcile, each would
/// hold the sale's pass for a round trip to a busy API server, ahead of its status write.
fn publish_events(
    recorder: Recorder,
) -> tokio::sync::mpsc::Sender<(Event, k8s_openapi::api::core::v1::ObjectReference)> {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(Event, k8s_openapi::api::core::v1::ObjectReference)>(EVENTS_QUEUED);
    tokio::spawn(async move {
        while let Some((event, reference)) = rx.recv().await {
            if let Err(err) = recorder.publish(&event, &reference).await {
                warn!(error = %err, reason = %event.reason, "could not publish event");
            }
        }
    });
    tx
}

fn record_phase_metrics(ctx: &Context, sale: &FlashSale, status: &FlashSaleStatus) {
    let (namespace, name) = (sale.namespace().unwrap_or_default(), sale.name_any());
    for phase in Phase::ALL {
        let on = status.phase == Some(phase);
        ctx.metrics
            .phase
            .get_or_create(&PhaseLabels {
                sale_namespace: namespace.clone(),
                sale: name.clone(),
                phase: phase.as_str(),
            })
            .set(i64::from(on));
    }
    for c in status.conditions.iter().filter(|c| c.type_ != status::RECONCILING && c.type_ != status::STALLED) {
        let labels =
            ConditionLabels { sale_namespace: namespace.clone(), sale: name.clone(), condition: c.type_.clone() };
        ctx.metrics.condition.get_or_create(&labels).set(i64::from(c.status == "True"));
    }
    let labels = SaleLabels { sale_namespace: namespace, sale: name };
    match &status.next_transition_time {
        Some(next) => {
            let at = next.0.as_millisecond() as f64 / 1000.0;
            ctx.metrics.next_transition_timestamp.get_or_create(&labels).set(at);
        }
        // Nothing scheduled any more (Completed, Suspended): no countdown to show.
        None => {
            ctx.metrics.next_transition_timestamp.remove(&labels);
        }
    }
}

/// How long to wait from `now` until `at`, never negative.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Changed, ChangedObject, ViewId};

    /// A store of sales: `(namespace, name, workloads, clusters' Secrets)`.
    fn store(sales: &[(&str, &str, &[&str], &[&str])]) -> kube::runtime::reflector::Store<DeserializeGuard<FlashSale>> {
        let mut writer = kube::runtime::reflector::store::Writer::<DeserializeGuard<FlashSale>>::default();
        for (ns, name, workloads, clusters) in sales {
            let workloads: Vec<_> = workloads
                .iter()
                .map(|w| serde_json::json!({"ref": {"kind": "Deployment", "name": w}, "scale": {"peak": 2}}))
                .collect();
            let clusters: Vec<_> =
                clusters.iter().map(|c| serde_json::json!({"name": c, "kubeconfigSecretRef": {"name": c}})).collect();
            let sale: FlashSale = serde_json::from_value(serde_json::json!({
                "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"window": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-11T02:00:00Z"},
                         "workloads": workloads, "clusters": clusters},
            }))
            .unwrap();
            writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(sale))));
        }
        writer.as_reader()
    }

    fn changed(view: ViewId, kind: &str, ns: &str, name: &str, annotations: &[(&str, &str)]) -> Changed {
        let annotations = annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let object = ChangedObject {
            kind: kind.into(),
            namespace: Some(ns.into()),
            name: name.into(),
            annotations,
            labels: Default::default(),
            scales: None,
        };
        Changed { view, object: Some(object) }
    }

    fn autoscaler(kind: &str, name: &str, scales: &str) -> Changed {
        let mut change = changed(ViewId::Local, kind, "shop", name, &[]);
        if let Some(object) = change.object.as_mut() {
            object.scales = Some(("Deployment".into(), scales.into()));
        }
        change
    }

    fn names(refs: Vec<ObjectRef<DeserializeGuard<FlashSale>>>) -> Vec<String> {
        let mut names: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_change_reconciles_only_the_sales_it_concerns() {
        let sales = store(&[
            ("shop", "local-web", &["web"], &[]),
            ("shop", "local-api", &["api"], &[]),
            ("shop", "remote-web", &["web"], &["hangzhou"]),
            ("other", "elsewhere", &["web"], &[]),
        ]);
        let remote = ViewId::Remote { namespace: "shop".into(), secret: "hangzhou".into() };
        // (what changed, the sales reconciled)
        let table: Vec<(Changed, Vec<&str>)> = vec![
            // An object naming its holder: that sale only, whatever else names it.
            (
                changed(ViewId::Local, "Deployment", "shop", "web", &[("flashsale.dev/sale", "shop/local-web")]),
                vec!["FlashSale.v1alpha1.flashsale.dev/local-web.shop"],
            ),
            // Unheld: the local sales of its namespace that name it.
            (
                changed(ViewId::Local, "Deployment", "shop", "web", &[]),
                vec!["FlashSale.v1alpha1.flashsale.dev/local-web.shop"],
            ),
            // The same workload in the remote cluster: the sale reaching it through that Secret.
            (
                changed(remote.clone(), "Deployment", "shop", "web", &[]),
                vec!["FlashSale.v1alpha1.flashsale.dev/remote-web.shop"],
            ),
            // A kind no sale names (a PodDisruptionBudget): every sale of the view in that namespace.
            (
                changed(ViewId::Local, "PodDisruptionBudget", "shop", "web", &[]),
                vec![
                    "FlashSale.v1alpha1.flashsale.dev/local-api.shop",
                    "FlashSale.v1alpha1.flashsale.dev/local-web.shop",
                ],
            ),
            // An autoscaler: the sales naming what it scales, whatever it is called.
            (
                autoscaler("HorizontalPodAutoscaler", "web-hpa", "api"),
                vec!["FlashSale.v1alpha1.flashsale.dev/local-api.shop"],
            ),
            (
                autoscaler("CronHorizontalPodAutoscaler", "web-cron", "web"),
                vec!["FlashSale.v1alpha1.flashsale.dev/local-web.shop"],
            ),
            (autoscaler("HorizontalPodAutoscaler", "cart", "cart"), vec![]),
            // A workload nobody names: nobody.
            (changed(ViewId::Local, "Deployment", "shop", "cart", &[]), vec![]),
        ];
        for (change, want) in table {
            assert_eq!(names(sales_that_care(&sales, &change)), want, "{change:?}");
        }
        // The view's own health: every sale using it.
        let lost = Changed { view: remote, object: None };
        assert_eq!(names(sales_that_care(&sales, &lost)), ["FlashSale.v1alpha1.flashsale.dev/remote-web.shop"]);
    }

    #[test]
    fn jitter_stretches_by_at_most_a_quarter_and_spreads_sales() {
        let delay = Duration::from_secs(8);
        let delays: std::collections::BTreeSet<Duration> =
            (0..50).map(|i| jittered(delay, &format!("shop/sale-{i}#1"))).collect();
        assert!(delays.iter().all(|d| *d >= delay && *d <= delay + delay / 4), "{delays:?}");
        assert!(delays.len() > 40, "sales retry at the same instant: {delays:?}");
        assert_eq!(jittered(delay, "shop/a#1"), jittered(delay, "shop/a#1"));
    }

    #[test]
    fn backoff_doubles_and_caps_at_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn a_status_written_after_the_copy_replaces_it_only_for_the_same_sale() {
        let sale = |uid: &str, version: &str| -> FlashSale {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "flashsale.dev/v1alpha1", "kind": "FlashSale",
                "metadata": {"name": "flash", "namespace": "shop", "uid": uid, "resourceVersion": version},
                "spec": {"window": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-11T02:00:00Z"}, "workloads": []},
            }))
            .unwrap()
        };
        let written = Written { uid: Some("a".into()), resource_version: 120, status: FlashSaleStatus::default() };
        let cases = [
            // (the copy's uid, its resourceVersion, the write is newer?)
            ("a", "119", true),
            ("a", "120", false),
            ("a", "121", false),
            // Deleted and created again under the same name: never the old object's status.
            ("b", "119", false),
            // A version that is not an integer: the copy is taken as it is.
            ("a", "x19", false),
        ];
        for (uid, version, newer) in cases {
            assert_eq!(written.newer_than(&sale(uid, version)), newer, "{uid} {version}");
        }
    }
}
