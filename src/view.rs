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
    Client, ResourceExt,
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
    collections::HashMap,
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
        let find = || cache.store.get(&wanted);
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
        let pending: Vec<String> = self
            .written
            .lock()
            .map(|w| w.keys().filter(|(s, _)| s == scope).map(|(_, n)| n.clone()).collect())
            .unwrap_or_default();
        for name in pending {
            self.get(scope, &name).await?;
        }
        Ok(cache.store.state())
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
        let task = tokio::spawn(async move {
            // Field ownership is no lever's input and often the larger half of an object.
            let mut events = watcher(api, config)
                .default_backoff()
                .modify(|obj| obj.managed_fields_mut().clear())
                .reflect(writer)
                .boxed();
            while let Some(event) = events.next().await {
                let Some(view) = view.upgrade() else { return };
                match event {
                    Ok(watcher::Event::InitDone) => {
                        health_tx.send_modify(|h| *h = Health { synced: true, failure: None });
                        view.show_health();
                        view.mark_found();
                        view.announce(None);
                    }
                    Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                        if health_tx.borrow().failure.is_some() {
                            health_tx.send_modify(|h| h.failure = None);
                        }
                        health_tx.send_modify(|_| {});
                        view.announce(Some(ChangedObject {
                            kind: kind.clone(),
                            namespace: obj.metadata.namespace.clone(),
                            name: obj.metadata.name.clone().unwrap_or_default(),
                            annotations: obj.metadata.annotations.clone().unwrap_or_default(),
                            labels: obj.metadata.labels.clone().unwrap_or_default(),
                        }));
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
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
        Cache { store, health, task, last_used: Mutex::new(Instant::now()) }
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
