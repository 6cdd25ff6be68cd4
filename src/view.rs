//! What the operator sees of one cluster: watch caches (kube-runtime reflectors) of exactly
//! what the levers read, started the first time a lever asks for a kind in a namespace and
//! kept while sales use them.
//!
//! A lever pass reads from these caches instead of the API server, so a sale that holds its
//! changes costs its clusters nothing between changes: a pass with nothing to do sends no
//! request at all. A change seen by any cache is announced on the view's channel, and the
//! controller reconciles the sales that care at once (a drift shows in well under a second).
//!
//! Two things a cache alone cannot give, and how the view gives them:
//! - *Read your own writes.* After a lever writes an object, the next pass may start before the
//!   watch has delivered the write (the sale's own status write triggers it). A write records
//!   the object's new resourceVersion ([`View::wrote`]); a read of that object waits (briefly)
//!   until the cache has caught up, so a pass never acts twice on a state it already changed.
//! - *A silent server.* A paused or overloaded API server keeps its watch connections open and
//!   sends nothing; a cache would go on answering from memory. Each view asks the server for
//!   its version every [`PROBE_INTERVAL`] while it is in use; two probes in a row that fail or
//!   take longer than [`PROBE_TIMEOUT`] mark the view lost (every read then fails as a
//!   transport error, so the cluster shows as unreachable), as does a watch that fails. A
//!   pass that has to write to a silent server is cut by its own deadline sooner.

use futures::StreamExt;
use kube::{
    Client,
    api::{Api, DynamicObject, ListParams},
    core::{GroupVersionKind, Status},
    discovery::ApiResource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// How often a view in use checks that its API server still answers.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long that check may take before the view counts as lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the first read of a new cache waits for its initial list.
const SYNC_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a read waits for the cache to show the operator's own last write of an object.
const CATCH_UP: Duration = Duration::from_secs(2);
/// The recorded "version" of an object the operator deleted: caught up once it is gone.
const DELETED: u64 = u64::MAX;
/// A cache no pass has read for this long is stopped (its sales are gone or moved on).
const IDLE_AFTER: Duration = Duration::from_secs(600);

/// Which cluster a view watches, as the controller maps its changes back to sales.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum ViewId {
    /// The operator's own cluster.
    Local,
    /// A cluster reached through the kubeconfig Secret `secret` in the sales' `namespace`.
    Remote { namespace: String, secret: String },
}

/// Something a view saw change: an object (what it takes to find the sales it concerns), or
/// the view's own health (`object` is `None`).
#[derive(Clone, Debug)]
pub struct Changed {
    pub view: ViewId,
    pub object: Option<ChangedObject>,
}

/// The parts of a changed object that name the sales it concerns.
#[derive(Clone, Debug)]
pub struct ChangedObject {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// Holders are named in annotations (`flashsale.dev/sale`, the agents' holder keys).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Warm-up Jobs name their sale in labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The workload an autoscaler (HPA, CronHPA) scales, as `(kind, name)`: its changes concern
    /// the sales naming that workload only.
    pub scales: Option<(String, String)>,
}

/// The `spec.scaleTargetRef` of an autoscaler, as `(kind, name)`.
fn scale_target(obj: &DynamicObject) -> Option<(String, String)> {
    let target = obj.data.pointer("/spec/scaleTargetRef")?;
    Some((target.get("kind")?.as_str()?.to_owned(), target.get("name")?.as_str()?.to_owned()))
}

/// What a cache keeps of the objects of one kind: exactly what the levers read, so that a
/// namespace of thousands of workloads costs the operator a few hundred bytes each. Field
/// ownership and `kubectl apply`'s copy of the whole object are no lever's input and often
/// most of an object; a workload's pod template keeps its selector labels and, per container,
/// the name, the probes and the resource requests; a pod its conditions and container states; a
/// node its labels, taints, schedulability and allocatable capacity; a CRD no schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fields {
    Whole,
    Workload,
    Pod,
    Node,
    Crd,
}

impl Fields {
    fn of(group: &str, kind: &str) -> Fields {
        match (group, kind) {
            ("apps", "Deployment" | "StatefulSet") => Fields::Workload,
            ("", "Pod") => Fields::Pod,
            ("", "Node") => Fields::Node,
            ("apiextensions.k8s.io", "CustomResourceDefinition") => Fields::Crd,
            _ => Fields::Whole,
        }
    }

    /// Whether a change of such an object is announced. Pods and nodes change all the time and
    /// name no sale: a workload short of peak is looked at again every few seconds anyway, and
    /// its ready count (what a pod becoming ready changes) is announced by the workload itself;
    /// node capacity is preflight's, which runs again every few minutes.
    fn announced(self) -> bool {
        !matches!(self, Fields::Pod | Fields::Node)
    }

    fn trim(self, obj: &mut DynamicObject) {
        obj.metadata.managed_fields = match self {
            // Who owns the replicas and the probes: what preflight's GitOps check reads.
            Fields::Workload => obj.metadata.managed_fields.take().and_then(|entries| {
                let kept: Vec<_> = entries
                    .into_iter()
                    .filter_map(|mut entry| {
                        let owned = entry.fields_v1.as_ref().and_then(|f| lever_fields(&f.0))?;
                        entry.fields_v1 = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(owned));
                        Some(entry)
                    })
                    .collect();
                (!kept.is_empty()).then_some(kept)
            }),
            _ => None,
        };
        if let Some(annotations) = obj.metadata.annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
        let data = &mut obj.data;
        match self {
            Fields::Whole => {}
            Fields::Workload => {
                keep(data.get_mut("spec"), &["replicas", "selector", "template"]);
                let template = data.pointer_mut("/spec/template");
                keep(template, &["metadata", "spec"]);
                keep(data.pointer_mut("/spec/template/metadata"), &["labels"]);
                keep(data.pointer_mut("/spec/template/spec"), &["containers"]);
                for container in containers(data.pointer_mut("/spec/template/spec/containers")) {
                    keep(Some(container), &["name", "livenessProbe", "readinessProbe", "startupProbe", "resources"]);
                    keep(container.get_mut("resources"), &["requests"]);
                }
            }
            Fields::Pod => {
                // A pod's spec must keep its containers' names to read as a Pod.
                keep(data.get_mut("spec"), &["containers", "nodeName"]);
                for container in containers(data.pointer_mut("/spec/containers")) {
                    keep(Some(container), &["name"]);
                }
                keep(data.get_mut("status"), &["phase", "conditions", "containerStatuses", "initContainerStatuses"]);
                obj.metadata.annotations = None;
            }
            Fields::Node => {
                keep(data.get_mut("spec"), &["unschedulable", "taints"]);
                keep(data.get_mut("status"), &["allocatable", "capacity"]);
                obj.metadata.annotations = None;
            }
            Fields::Crd => {
                for version in containers(data.pointer_mut("/spec/versions")) {
                    keep(Some(version), &["name", "served", "storage"]);
                }
            }
        }
        // Kinds a view may hold thousands of keep their fields as compact JSON text: a few
        // hundred bytes instead of a tree of maps many times that size.
        if matches!(self, Fields::Workload | Fields::Pod | Fields::Node) {
            obj.data = serde_json::Value::String(obj.data.to_string());
        }
    }
}

/// A cached object as the levers read it, its fields unpacked from their compact JSON text.
fn unpack(obj: Arc<DynamicObject>) -> Arc<DynamicObject> {
    let serde_json::Value::String(text) = &obj.data else { return obj };
    let data = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    Arc::new(DynamicObject { types: obj.types.clone(), metadata: obj.metadata.clone(), data })
}

/// The part of a workload's `fieldsV1` tree under the fields the levers change (`spec.replicas`
/// and each container's probes), if the manager owns any of them.
fn lever_fields(tree: &serde_json::Value) -> Option<serde_json::Value> {
    let spec = tree.get("f:spec")?;
    let mut kept = serde_json::Map::new();
    if let Some(replicas) = spec.get("f:replicas") {
        kept.insert("f:replicas".into(), replicas.clone());
    }
    let containers = spec.pointer("/f:template/f:spec/f:containers").and_then(serde_json::Value::as_object);
    let probes: serde_json::Map<String, serde_json::Value> = containers
        .into_iter()
        .flatten()
        .filter_map(|(key, container)| {
            let owned: serde_json::Map<String, serde_json::Value> =
                ["f:livenessProbe", "f:readinessProbe", "f:startupProbe"]
                    .into_iter()
                    .filter_map(|probe| Some((probe.to_owned(), container.get(probe)?.clone())))
                    .collect();
            (!owned.is_empty()).then(|| (key.clone(), serde_json::Value::Object(owned)))
        })
        .collect();
    if !probes.is_empty() {
        kept.insert("f:template".into(), serde_json::json!({"f:spec": {"f:containers": probes}}));
    }
    (!kept.is_empty()).then(|| serde_json::json!({"f:spec": kept}))
}

/// The annotation `kubectl apply` keeps the whole last applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Removes every field of `object` but `fields`.
fn keep(object: Option<&mut serde_json::Value>, fields: &[&str]) {
    if let Some(map) = object.and_then(serde_json::Value::as_object_mut) {
        map.retain(|k, _| fields.contains(&k.as_str()));
    }
}

/// The items of a list field, if it is one.
fn containers(list: Option<&mut serde_json::Value>) -> impl Iterator<Item = &mut serde_json::Value> {
    list.and_then(serde_json::Value::as_array_mut).into_iter().flatten()
}

/// One kind of object in one namespace (or cluster-wide), optionally narrowed by a label or
/// field selector: one watch.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Scope {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

impl Scope {
    /// Every object of `resource` in `namespace` (`None`: cluster-scoped).
    pub fn of(resource: &ApiResource, namespace: Option<&str>) -> Scope {
        Scope {
            group: resource.group.clone(),
            version: resource.version.clone(),
            kind: resource.kind.clone(),
            plural: resource.plural.clone(),
            namespace: namespace.map(str::to_owned),
            labels: None,
            fields: None,
        }
    }

    /// The objects of a typed kind in `namespace`.
    pub fn typed<K>(namespace: Option<&str>) -> Scope
    where
        K: kube::Resource<DynamicType = ()>,
    {
        Scope::of(&ApiResource::erase::<K>(&()), namespace)
    }

    /// Only the objects with these labels (a label selector).
    pub fn labelled(mut self, selector: &str) -> Scope {
        self.labels = Some(selector.to_owned());
        self
    }

    /// Only the object of this name (a cluster-scoped look-up such as one CRD, which RBAC may
    /// grant by name).
    pub fn named(mut self, name: &str) -> Scope {
        self.fields = Some(format!("metadata.name={name}"));
        self
    }

    fn resource(&self) -> ApiResource {
        let gvk = GroupVersionKind::gvk(&self.group, &self.version, &self.kind);
        ApiResource::from_gvk_with_plural(&gvk, &self.plural)
    }

    fn describe(&self) -> String {
        let what = if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) };
        match &self.namespace {
            Some(ns) => format!("{what} in namespace {ns}"),
            None => what,
        }
    }
}

/// A cache's state, as its watch reports it.
#[derive(Clone, Debug, Default)]
struct Health {
    synced: bool,
    /// The last failure of the watch, while it lasts: a refusal (RBAC) or a transport error.
    failure: Option<Failure>,
}

#[derive(Clone, Debug)]
enum Failure {
    Refused(Box<Status>),
    Transport(String),
}

impl Failure {
    fn of(err: &watcher::Error) -> Failure {
        let refused = |err: &kube::Error| match err {
            kube::Error::Api(status) => Some(Failure::Refused(status.clone())),
            _ => None,
        };
        match err {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => refused(e).unwrap_or_else(|| Failure::Transport(e.to_string())),
            watcher::Error::WatchError(status) => Failure::Refused(status.clone()),
            watcher::Error::NoResourceVersion => Failure::Transport("the watch returned no resourceVersion".into()),
        }
    }

    fn error(&self, scope: &Scope) -> kube::Error {
        match self {
            Failure::Refused(response) => kube::Error::Api(response.clone()),
            Failure::Transport(message) => lost(format!("watching {} failed: {message}", scope.describe())),
        }
    }
}

/// A transport-class error (the cluster is not reachable), never a refusal.
fn lost(message: String) -> kube::Error {
    kube::Error::Service(message.into())
}

struct Cache {
    store: Store<DynamicObject>,
    health: watch::Receiver<Health>,
    task: tokio::task::JoinHandle<()>,
    last_used: Mutex<Instant>,
    /// For pods: who has which label, so one workload's pods are found without reading the
    /// namespace's thousands.
    labels: Option<Arc<Mutex<LabelIndex>>>,
}

/// The objects of a cache by each of their labels (`key=value` → `namespace/name`).
#[derive(Debug, Default)]
struct LabelIndex {
    by_label: HashMap<(String, String), std::collections::HashSet<(String, String)>>,
    of: HashMap<(String, String), Vec<(String, String)>>,
}

impl LabelIndex {
    fn key(obj: &DynamicObject) -> (String, String) {
        (obj.metadata.namespace.clone().unwrap_or_default(), obj.metadata.name.clone().unwrap_or_default())
    }

    fn remove(&mut self, key: &(String, String)) {
        for label in self.of.remove(key).unwrap_or_default() {
            if let Some(objects) = self.by_label.get_mut(&label) {
                objects.remove(key);
                if objects.is_empty() {
                    self.by_label.remove(&label);
                }
            }
        }
    }

    fn apply(&mut self, obj: &DynamicObject) {
        let key = LabelIndex::key(obj);
        self.remove(&key);
        let labels: Vec<(String, String)> =
            obj.metadata.labels.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        for label in &labels {
            self.by_label.entry(label.clone()).or_default().insert(key.clone());
        }
        self.of.insert(key, labels);
    }

    /// The objects carrying every one of `labels` (`None`: no label to narrow by).
    fn carrying(&self, labels: &BTreeMap<String, String>) -> Option<Vec<(String, String)>> {
        let mut sets = labels.iter().map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())));
        let first = sets.next()?;
        let sets: Vec<_> = std::iter::once(first).chain(sets).collect();
        let smallest = sets.iter().min_by_key(|s| s.map_or(0, |s| s.len()))?;
        let Some(smallest) = smallest else { return Some(vec![]) };
        Some(smallest.iter().filter(|key| sets.iter().all(|s| s.is_some_and(|s| s.contains(*key)))).cloned().collect())
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The caches of one cluster.
pub struct View {
    id: ViewId,
    client: Client,
    caches: Mutex<HashMap<Scope, Arc<Cache>>>,
    /// Objects the operator wrote, with the resourceVersion its write returned.
    written: Mutex<HashMap<(Scope, String), u64>>,
    /// Since when the API server has not answered (`None` while it does).
    lost_since: watch::Sender<Option<jiff::Timestamp>>,
    changes: Option<mpsc::UnboundedSender<Changed>>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the view's health is shown, under its cluster label.
    metrics: Option<(Arc<crate::metrics::Metrics>, String)>,
    /// The rights the authorizer recently said this client has (see [`View::allowed`]).
    answers: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long an authorizer's yes is taken as still true: a right taken away in between shows as
/// a refused write, which the levers report anyway. A no is never remembered: a missing right an
/// administrator grants shows as fixed at the next pass.
const ALLOWED_FOR: Duration = Duration::from_secs(300);

impl Drop for View {
    fn drop(&mut self) {
        if let Ok(mut probe) = self.probe.lock()
            && let Some(task) = probe.take()
        {
            task.abort();
        }
    }
}

impl View {
    /// A view of the cluster `client` reaches; changes go to `changes` (none: nobody listens).
    pub fn new(id: ViewId, client: Client, changes: Option<mpsc::UnboundedSender<Changed>>) -> Arc<View> {
        View::with_metrics(id, client, changes, None)
    }

    /// A view that shows its health in `metrics` under the cluster label `cluster`.
    pub fn with_metrics(
        id: ViewId,
        client: Client,
        changes: Option<mpsc::UnboundedSender<Changed>>,
        metrics: Option<(Arc<crate::metrics::Metrics>, String)>,
    ) -> Arc<View> {
        let (lost_since, _) = watch::channel(None);
        Arc::new(View {
            id,
            client,
            caches: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            lost_since,
            changes,
            probe: Mutex::new(None),
            metrics,
            answers: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the authorizer said recently that this client may do `right` (any key naming the
    /// right): preflight asks about 8 to 15 rights per cluster at each of its passes.
    pub fn allowed(&self, right: &str) -> bool {
        let Ok(answers) = self.answers.lock() else { return false };
        answers.get(right).is_some_and(|at| at.elapsed() < ALLOWED_FOR)
    }

    /// Remembers the authorizer's answer about `right` (a no forgets an earlier yes).
    pub fn answered(&self, right: &str, allowed: bool) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.retain(|_, at| at.elapsed() < ALLOWED_FOR);
            match allowed {
                true => answers.insert(right.to_owned(), std::time::Instant::now()),
                false => answers.remove(right),
            };
        }
    }

    /// The client of the cluster (for writes, and the reads no cache serves).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Since when the cluster has not answered, if it has not.
    pub fn lost_since(&self) -> Option<jiff::Timestamp> {
        *self.lost_since.borrow()
    }

    /// How many watches the view holds, and how many of them have synced.
    pub fn caches(&self) -> (usize, usize) {
        let caches = self.caches.lock().map(|c| c.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        (caches.len(), caches.iter().filter(|c| c.health.borrow().synced).count())
    }

    /// The object `name` in `scope`, as the cluster has it (after the operator's own last write
    /// of it, when it made one).
    pub async fn get(self: &Arc<Self>, scope: &Scope, name: &str) -> Result<Option<Arc<DynamicObject>>, kube::Error> {
        let cache = self.ready(scope).await?;
        let key = (scope.clone(), name.to_owned());
        let wrote = self.written.lock().ok().and_then(|w| w.get(&key).copied());
        let mut wanted = reflector::ObjectRef::<DynamicObject>::new_with(name, scope.resource());
        if let Some(ns) = &scope.namespace {
            wanted = wanted.within(ns);
        }
        let find = || cache.store.get(&wanted).map(unpack);
        if let Some(wrote) = wrote {
            let deadline = Instant::now() + CATCH_UP;
            let mut health = cache.health.clone();
            loop {
                let seen = find();
                let caught_up = match (&seen, wrote) {
                    (None, DELETED) => true,
                    (seen, _) => seen.as_ref().is_some_and(|o| version(o).is_some_and(|v| v >= wrote)),
                };
                if caught_up || Instant::now() >= deadline {
                    if let Ok(mut written) = self.written.lock() {
                        written.remove(&key);
                    }
                    return Ok(seen);
                }
                // Every event reaches the store before the watch loop notes it; poll briefly.
                let _ = tokio::time::timeout(Duration::from_millis(20), health.changed()).await;
            }
        }
        Ok(find())
    }

    /// Every object in `scope`.
    pub async fn list(self: &Arc<Self>, scope: &Scope) -> Result<Vec<Arc<DynamicObject>>, kube::Error> {
        let cache = self.ready(scope).await?;
        self.caught_up(scope).await?;
        Ok(cache.store.state().into_iter().map(unpack).collect())
    }

    /// Waits until the cache shows the operator's own pending writes in `scope`.
    async fn caught_up(self: &Arc<Self>, scope: &Scope) -> Result<(), kube::Error> {
        let pending: Vec<String> = self
            .written
            .lock()
            .map(|w| w.keys().filter(|(s, _)| s == scope).map(|(_, n)| n.clone()).collect())
            .unwrap_or_default();
        for name in pending {
            self.get(scope, &name).await?;
        }
        Ok(())
    }

    /// The typed object `name` in `scope`.
    pub async fn get_as<K>(self: &Arc<Self>, scope: &Scope, name: &str) -> Result<Option<K>, kube::Error>
    where
        K: serde::de::DeserializeOwned,
    {
        self.get(scope, name).await?.map(|o| convert(&o)).transpose()
    }

    /// Every typed object in `scope`.
    pub async fn list_as<K>(self: &Arc<Self>, scope: &Scope) -> Result<Vec<K>, kube::Error>
    where
        K: serde::de::DeserializeOwned,
    {
        self.list(scope).await?.iter().map(|o| convert(o)).collect()
    }

    /// The objects in `scope` whose metadata `keep` selects, typed: only those are unpacked and
    /// converted (a namespace of thousands of pods, read for one workload's few).
    /// `labels`, when given, are labels every object kept carries: a cache indexed by label
    /// (pods) reads only the objects carrying them.
    pub async fn list_where<K>(
        self: &Arc<Self>,
        scope: &Scope,
        labels: Option<&BTreeMap<String, String>>,
        keep: impl Fn(&kube::core::ObjectMeta) -> bool,
    ) -> Result<Vec<K>, kube::Error>
    where
        K: serde::de::DeserializeOwned,
    {
        let cache = self.ready(scope).await?;
        self.caught_up(scope).await?;
        let carrying = match (&cache.labels, labels) {
            (Some(index), Some(labels)) => index.lock().ok().and_then(|index| index.carrying(labels)),
            _ => None,
        };
        let objects = match carrying {
            Some(keys) => keys
                .into_iter()
                .filter_map(|(ns, name)| {
                    let mut wanted = reflector::ObjectRef::<DynamicObject>::new_with(&name, scope.resource());
                    if !ns.is_empty() {
                        wanted = wanted.within(&ns);
                    }
                    cache.store.get(&wanted)
                })
                .collect(),
            None => cache.store.state(),
        };
        objects.into_iter().filter(|o| keep(&o.metadata)).map(|o| convert(&unpack(o))).collect()
    }

    /// Notes that the operator wrote `name` in `scope` and the server answered with
    /// `resource_version`: reads of it wait until the cache shows that version.
    pub fn wrote(&self, scope: &Scope, name: &str, resource_version: Option<&str>) {
        if let (Some(v), Ok(mut written)) = (resource_version.and_then(|v| v.parse().ok()), self.written.lock()) {
            written.insert((scope.clone(), name.to_owned()), v);
        }
    }

    /// Notes that the operator deleted `name` in `scope`: reads wait until the cache no longer
    /// shows it (or the catch-up time passes).
    pub fn deleted(&self, scope: &Scope, name: &str) {
        if let Ok(mut written) = self.written.lock() {
            written.insert((scope.clone(), name.to_owned()), DELETED);
        }
    }

    /// Notes the answer to a delete of `name` in `scope`: the object as it is while its
    /// deletion runs (finalizers, foreground propagation), or gone.
    pub fn after_delete<K: kube::Resource>(&self, scope: &Scope, name: &str, answer: &either::Either<K, Status>) {
        match answer {
            either::Either::Left(still) => self.wrote(scope, name, still.meta().resource_version.as_deref()),
            either::Either::Right(_) => self.deleted(scope, name),
        }
    }

    /// Stops the caches no pass has read for [`IDLE_AFTER`].
    pub fn forget_idle(&self) {
        if let Ok(mut caches) = self.caches.lock() {
            caches.retain(|scope, cache| {
                let used = cache.last_used.lock().map(|t| t.elapsed() < IDLE_AFTER).unwrap_or(true);
                if !used {
                    debug!(scope = %scope.describe(), "stopping an idle watch");
                }
                used
            });
        }
    }

    /// The cache of `scope`, started if needed, once it has synced; or why it cannot serve.
    async fn ready(self: &Arc<Self>, scope: &Scope) -> Result<Arc<Cache>, kube::Error> {
        if let Some(since) = self.lost_since() {
            return Err(lost(format!("the API server has not answered since {since}")));
        }
        let cache = self.cache(scope)?;
        if let Ok(mut used) = cache.last_used.lock() {
            *used = Instant::now();
        }
        let mut health = cache.health.clone();
        let settled = tokio::time::timeout(SYNC_TIMEOUT, health.wait_for(|h| h.synced || h.failure.is_some())).await;
        let state = cache.health.borrow().clone();
        match (settled, state) {
            (_, Health { synced: true, failure: None }) => Ok(cache),
            // A watch that failed after its list keeps serving only if the failure is a
            // refusal (the objects seen stay valid); a transport failure means the cluster is gone.
            (_, Health { synced: true, failure: Some(Failure::Refused(_)) }) => Ok(cache),
            (_, Health { failure: Some(failure), .. }) => Err(failure.error(scope)),
            (_, Health { synced: false, failure: None }) => {
                Err(lost(format!("listing {} took longer than {SYNC_TIMEOUT:?}", scope.describe())))
            }
        }
    }

    fn cache(self: &Arc<Self>, scope: &Scope) -> Result<Arc<Cache>, kube::Error> {
        let mut caches = self.caches.lock().map_err(|_| lost("the view's lock is poisoned".into()))?;
        if let Some(cache) = caches.get(scope) {
            return Ok(cache.clone());
        }
        let cache = Arc::new(self.start(scope));
        caches.insert(scope.clone(), cache.clone());
        drop(caches);
        self.ensure_probe();
        Ok(cache)
    }

    fn start(self: &Arc<Self>, scope: &Scope) -> Cache {
        let resource = scope.resource();
        let api: Api<DynamicObject> = match &scope.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let mut config = watcher::Config::default().any_semantic();
        if let Some(labels) = &scope.labels {
            config = config.labels(labels);
        }
        if let Some(fields) = &scope.fields {
            config = config.fields(fields);
        }
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let (health_tx, health) = watch::channel(Health::default());
        let view = Arc::downgrade(self);
        let described = scope.describe();
        let kind = scope.kind.clone();
        let fields = Fields::of(&scope.group, &scope.kind);
        let labels = (fields == Fields::Pod).then(|| Arc::new(Mutex::new(LabelIndex::default())));
        let index = labels.clone();
        let indexed = move |f: &dyn Fn(&mut LabelIndex)| {
            if let Some(Ok(mut index)) = index.as_ref().map(|i| i.lock()) {
                f(&mut index);
            }
        };
        let task = tokio::spawn(async move {
            let mut events =
                watcher(api, config).default_backoff().modify(move |obj| fields.trim(obj)).reflect(writer).boxed();
            while let Some(event) = events.next().await {
                let Some(view) = view.upgrade() else { return };
                match event {
                    Ok(watcher::Event::InitDone) => {
                        health_tx.send_modify(|h| *h = Health { synced: true, failure: None });
                        view.show_health();
                        view.mark_found();
                        view.announce(None);
                    }
                    Ok(ref event @ (watcher::Event::Apply(ref obj) | watcher::Event::Delete(ref obj))) => {
                        match event {
                            watcher::Event::Delete(_) => indexed(&|index| index.remove(&LabelIndex::key(obj))),
                            _ => indexed(&|index| index.apply(obj)),
                        }
                        if health_tx.borrow().failure.is_some() {
                            health_tx.send_modify(|h| h.failure = None);
                        }
                        health_tx.send_modify(|_| {});
                        if fields.announced() {
                            view.announce(Some(ChangedObject {
                                kind: kind.clone(),
                                namespace: obj.metadata.namespace.clone(),
                                name: obj.metadata.name.clone().unwrap_or_default(),
                                annotations: obj.metadata.annotations.clone().unwrap_or_default(),
                                labels: obj.metadata.labels.clone().unwrap_or_default(),
                                scales: scale_target(obj),
                            }));
                        }
                    }
                    Ok(watcher::Event::Init) => indexed(&|index| *index = LabelIndex::default()),
                    Ok(watcher::Event::InitApply(obj)) => indexed(&|index| index.apply(&obj)),
                    Err(err) => {
                        let failure = Failure::of(&err);
                        warn!(cluster = ?view.id, watch = %described, error = %err, "watch failed");
                        let transport = matches!(failure, Failure::Transport(_));
                        health_tx.send_modify(|h| h.failure = Some(failure));
                        if transport {
                            view.mark_lost();
                        }
                    }
                }
            }
        });
        Cache { store, health, task, last_used: Mutex::new(Instant::now()), labels }
    }

    /// Shows the view's watches and whether its cluster counts as lost.
    fn show_health(&self) {
        let Some((metrics, cluster)) = &self.metrics else { return };
        let labels = crate::metrics::ClusterOnlyLabels { cluster: cluster.clone() };
        let (watches, synced) = self.caches();
        metrics.view_watches.get_or_create(&labels).set(watches as i64);
        metrics.view_watches_synced.get_or_create(&labels).set(synced as i64);
        metrics.view_lost.get_or_create(&labels).set(i64::from(self.lost_since().is_some()));
    }

    /// Tells the controller something changed.
    fn announce(&self, object: Option<ChangedObject>) {
        if let Some(changes) = &self.changes {
            let _ = changes.send(Changed { view: self.id.clone(), object });
        }
    }

    fn mark_lost(&self) {
        let newly = self.lost_since.send_if_modified(|since| {
            let newly = since.is_none();
            since.get_or_insert_with(jiff::Timestamp::now);
            newly
        });
        if newly {
            self.show_health();
            self.announce(None);
        }
    }

    fn mark_found(&self) {
        if self.lost_since.send_if_modified(|since| since.take().is_some()) {
            self.show_health();
            self.announce(None);
        }
    }

    /// Starts the liveness probe once the view has a cache.
    fn ensure_probe(self: &Arc<Self>) {
        let Ok(mut probe) = self.probe.lock() else { return };
        if probe.is_some() {
            return;
        }
        let view = Arc::downgrade(self);
        *probe = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(view) = view.upgrade() else { return };
                view.forget_idle();
                view.show_health();
                // No watch left: nothing reads from this view, so nothing needs to know.
                if view.caches().0 == 0 {
                    continue;
                }
                // One slow answer on a busy machine is not a lost cluster: a failed probe is
                // asked again at once, and only a second failure marks the view lost.
                let client = view.client.clone();
                let probe = || async {
                    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
                        Ok(Ok(_)) => true,
                        Ok(Err(err)) => {
                            debug!(cluster = ?view.id, error = %err, "the API server did not answer its probe");
                            false
                        }
                        Err(_) => false,
                    }
                };
                if probe().await || probe().await {
                    view.mark_found();
                } else {
                    view.mark_lost();
                }
            }
        }));
    }
}

/// The resourceVersion of an object as a number (etcd's revision; `None` when opaque).
fn version(obj: &DynamicObject) -> Option<u64> {
    obj.metadata.resource_version.as_deref()?.parse().ok()
}

/// A cached object as a typed one.
fn convert<K: serde::de::DeserializeOwned>(obj: &DynamicObject) -> Result<K, kube::Error> {
    serde_json::to_value(obj).and_then(serde_json::from_value).map_err(kube::Error::SerdeError)
}

/// A list request for reads that no cache serves.
pub fn list_params(scope: &Scope) -> ListParams {
    let mut params = ListParams::default();
    if let Some(labels) = &scope.labels {
        params = params.labels(labels);
    }
    if let Some(fields) = &scope.fields {
        params = params.fields(fields);
    }
    params
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (caches, synced) = self.caches();
        f.debug_struct("View").field("id", &self.id).field("caches", &caches).field("synced", &synced).finish()
    }
}

/// A view of no cluster, for unit tests of what levers decide: every request fails.
#[cfg(test)]
pub fn offline() -> &'static Arc<View> {
    static VIEW: std::sync::OnceLock<Arc<View>> = std::sync::OnceLock::new();
    VIEW.get_or_init(|| {
        let runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for tests"),
        ));
        let _entered = runtime.enter();
        let service = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, tower::BoxError>("offline".into())
        });
        View::new(ViewId::Local, Client::new(service, "default"), None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn trimmed(group: &str, kind: &str, object: serde_json::Value) -> serde_json::Value {
        let mut object: DynamicObject = serde_json::from_value(object).expect("an object");
        let fields = Fields::of(group, kind);
        fields.trim(&mut object);
        // The kinds a view holds by the thousand are kept as text, and read back whole.
        let packed = matches!(fields, Fields::Workload | Fields::Pod | Fields::Node);
        assert_eq!(object.data.is_string(), packed, "{kind} kept as text");
        serde_json::to_value(unpack(Arc::new(object)).as_ref()).expect("JSON")
    }

    #[test]
    fn caches_keep_what_the_levers_read_and_nothing_else() {
        let meta = |extra: serde_json::Value| {
            let mut meta = json!({
                "name": "web", "namespace": "shop", "resourceVersion": "7", "generation": 3,
                "labels": {"app": "web"},
                "annotations": {
                    "flashsale.dev/sale": "shop/sale",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"the whole\": \"object\"}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            });
            meta.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            meta
        };
        let probe = json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 2});
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(json!({})),
            "spec": {
                "replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "strategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "annotations": {"checksum": "abc"}},
                    "spec": {
                        "serviceAccountName": "web", "volumes": [{"name": "config", "configMap": {"name": "web"}}],
                        "containers": [{
                            "name": "app", "image": "shop/web:1", "env": [{"name": "A", "value": "1"}],
                            "readinessProbe": probe, "livenessProbe": probe,
                            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}
                        }]
                    }
                }
            },
            "status": {"replicas": 2, "readyReplicas": 2, "observedGeneration": 3}
        });
        let want = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": "7", "generation": 3,
                "labels": {"app": "web"}, "annotations": {"flashsale.dev/sale": "shop/sale"}
            },
            "spec": {
                "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "app", "readinessProbe": probe, "livenessProbe": probe,
                        "resources": {"requests": {"cpu": "250m"}}
                    }]}
                }
            },
            "status": {"replicas": 2, "readyReplicas": 2, "observedGeneration": 3}
        });
        assert_eq!(trimmed("apps", "Deployment", deployment.clone()), want);
        // A workload keeps who owns its replicas and probes, and only that.
        let mut owned = deployment.clone();
        let app = r#"k:{"name":"app"}"#;
        owned["metadata"]["managedFields"] = json!([
            {"manager": "argocd-controller", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {
                "f:replicas": {}, "f:strategy": {},
                "f:template": {"f:spec": {"f:containers": {app: {
                    ".": {}, "f:image": {}, "f:readinessProbe": {"f:periodSeconds": {}}
                }}}}
            }}},
            {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}}
        ]);
        let got = trimmed("apps", "Deployment", owned);
        assert_eq!(
            got["metadata"]["managedFields"],
            json!([{"manager": "argocd-controller", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {app: {"f:readinessProbe": {"f:periodSeconds": {}}}}}}
            }}}])
        );
        let mut statefulset = deployment.clone();
        statefulset["kind"] = json!("StatefulSet");
        statefulset["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"}}]);
        let mut want_statefulset = want.clone();
        want_statefulset["kind"] = json!("StatefulSet");
        assert_eq!(trimmed("apps", "StatefulSet", statefulset), want_statefulset);

        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta(json!({"ownerReferences": []})),
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "shop/web:1", "env": []}]},
            "status": {
                "phase": "Pending", "podIP": "10.0.0.1", "qosClass": "Burstable",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 0}]
            }
        });
        let got = trimmed("", "Pod", pod);
        assert_eq!(got["spec"], json!({"nodeName": "n1", "containers": [{"name": "app"}]}));
        assert_eq!(got["metadata"].get("annotations"), None);
        assert_eq!(got["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(got["status"]["conditions"][0]["reason"], "Unschedulable");
        assert_eq!(got["status"].get("podIP"), None);
        let pod: Pod = serde_json::from_value(got).expect("a trimmed pod still reads as a Pod");
        assert_eq!(pod.status.and_then(|s| s.container_statuses).map(|c| c.len()), Some(1));

        let node = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": meta(json!({})),
            "spec": {"unschedulable": true, "podCIDR": "10.0.0.0/24", "taints": [{"key": "spot", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "4"}, "capacity": {"cpu": "4"},
                "images": [{"names": ["shop/web:1"], "sizeBytes": 1}], "nodeInfo": {"kernelVersion": "6"}
            }
        });
        let got = trimmed("", "Node", node);
        assert_eq!(got["spec"], json!({"unschedulable": true, "taints": [{"key": "spot", "effect": "NoSchedule"}]}));
        assert_eq!(got["status"], json!({"allocatable": {"cpu": "4"}, "capacity": {"cpu": "4"}}));
        assert_eq!(got["metadata"]["labels"], json!({"app": "web"}));

        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": meta(json!({})),
            "spec": {"group": "g", "names": {"kind": "K"}, "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}
            ]}
        });
        let got = trimmed("apiextensions.k8s.io", "CustomResourceDefinition", crd);
        assert_eq!(got["spec"]["versions"], json!([{"name": "v1", "served": true, "storage": true}]));
        assert_eq!(got["spec"]["group"], "g");

        // Any other kind keeps every field but field ownership and kubectl's copy.
        let hpa = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(json!({})),
            "spec": {"minReplicas": 1, "maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "web"}}
        });
        let got = trimmed("autoscaling", "HorizontalPodAutoscaler", hpa.clone());
        assert_eq!(got["spec"], hpa["spec"]);
        assert_eq!(got["metadata"].get("managedFields"), None);
        assert_eq!(got["metadata"]["annotations"], json!({"flashsale.dev/sale": "shop/sale"}));
        let object: DynamicObject = serde_json::from_value(got).unwrap();
        assert_eq!(scale_target(&object), Some(("Deployment".into(), "web".into())));
        assert!(!Fields::of("", "Pod").announced() && !Fields::of("", "Node").announced());
        assert!(
            Fields::of("apps", "Deployment").announced()
                && Fields::of("autoscaling", "HorizontalPodAutoscaler").announced()
        );
    }

    #[test]
    fn a_label_index_finds_the_objects_carrying_every_label_and_follows_changes() {
        let pod = |name: &str, labels: &[(&str, &str)]| -> DynamicObject {
            let labels: serde_json::Map<String, serde_json::Value> =
                labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "shop", "labels": labels}}))
            .unwrap()
        };
        let mut index = LabelIndex::default();
        index.apply(&pod("web-1", &[("app", "web"), ("tier", "front")]));
        index.apply(&pod("web-2", &[("app", "web"), ("tier", "canary")]));
        index.apply(&pod("api-1", &[("app", "api"), ("tier", "front")]));
        let find = |index: &LabelIndex, labels: &[(&str, &str)]| {
            let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            index.carrying(&labels).map(|mut keys| {
                keys.sort();
                keys.into_iter().map(|(_, name)| name).collect::<Vec<_>>()
            })
        };
        assert_eq!(find(&index, &[("app", "web")]), Some(vec!["web-1".to_owned(), "web-2".to_owned()]));
        assert_eq!(find(&index, &[("app", "web"), ("tier", "front")]), Some(vec!["web-1".to_owned()]));
        assert_eq!(find(&index, &[("app", "cart")]), Some(vec![]));
        assert_eq!(find(&index, &[]), None, "no label: every object is a candidate");
        // A pod relabelled leaves its old labels; a deleted one leaves the index.
        index.apply(&pod("web-2", &[("app", "api")]));
        assert_eq!(find(&index, &[("app", "web")]), Some(vec!["web-1".to_owned()]));
        index.remove(&("shop".into(), "web-1".into()));
        assert_eq!(find(&index, &[("app", "web")]), Some(vec![]));
        assert_eq!(index.by_label.get(&("tier".into(), "front".into())).map(|s| s.len()), Some(1));
    }

    #[test]
    fn the_authorizers_answers_are_remembered_by_right() {
        let view = offline();
        let right = "get apps/deployments in namespace remembered";
        assert!(!view.allowed(right));
        view.answered(right, true);
        view.answered("list nodes (remembered)", false);
        assert!(view.allowed(right));
        assert!(!view.allowed("list nodes (remembered)"));
        assert!(!view.allowed("patch apps/deployments in namespace remembered"));
        // A no (the right was taken away) forgets the yes.
        view.answered(right, false);
        assert!(!view.allowed(right));
    }
}
