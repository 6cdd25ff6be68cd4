//! The reconcile loop: fetch → decide (pure) → apply → report status.

use futures::StreamExt;
use jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        watcher,
    },
};
use std::{sync::Arc, time::Duration};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::{
    api::{FlashSale, FlashSaleStatus, Phase},
    metrics::{ErrorLabels, Metrics, PhaseLabels, SaleLabels},
    status::{self, ConditionSet},
    timeline::Schedule,
};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "flashsale-operator";
/// The finalizer that makes deletion wait for the restore.
pub const FINALIZER: &str = "flashsale.dev/restore";

/// Everything a reconcile needs besides the object.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
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
}

impl Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "spec",
        }
    }
}

/// Runs the controller until `shutdown` resolves. `ready` turns true once caches are synced.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let sales = Api::<DeserializeGuard<FlashSale>>::all(client.clone());
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
    });
    let controller = Controller::new(sales, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown);
    let store = controller.store();
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

async fn reconcile_guarded(
    obj: Arc<DeserializeGuard<FlashSale>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &obj.0 {
        Ok(sale) => reconcile(Arc::new(sale.clone()), ctx).await,
        Err(invalid) => {
            // The API server's schema normally prevents this; report it instead of wedging.
            warn!(name = %invalid.metadata.name.as_deref().unwrap_or(""), error = %invalid.error, "cannot read FlashSale");
            Ok(Action::await_change())
        }
    }
}

fn error_policy(_obj: Arc<DeserializeGuard<FlashSale>>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            lever: "timeline",
            category: err.category(),
        })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip(sale, ctx), fields(namespace = %sale.namespace().unwrap_or_default(), name = %sale.name_any()))]
async fn reconcile(sale: Arc<FlashSale>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time("timeline");
    let ns = sale.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<FlashSale> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, sale, |event| async {
        match event {
            Finalizer::Apply(sale) => apply(&sale, &ctx, &api).await,
            Finalizer::Cleanup(sale) => cleanup(&sale, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(sale: &FlashSale, ctx: &Context, api: &Api<FlashSale>) -> Result<Action, Error> {
    let now = Timestamp::now();
    let previous = sale.status.clone().unwrap_or_default();
    let schedule = Schedule::from_spec(&sale.spec);
    let decided = status::decide(sale, &schedule, now);
    if let Some(phase) = decided.phase.filter(|p| Some(*p) != previous.phase) {
        publish(
            ctx,
            sale,
            EventType::Normal,
            "PhaseChanged",
            format!("Phase is now {phase}"),
            "Transition",
        )
        .await;
    }
    let was_stalled = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Stalled" && c.status == "True");
    if let (Err(err), false) = (&schedule, was_stalled) {
        publish(
            ctx,
            sale,
            EventType::Warning,
            "InvalidSpec",
            err.to_string(),
            "Validate",
        )
        .await;
    }
    record_phase_metrics(ctx, sale, &decided, now);
    write_status(api, sale, &previous, decided.clone(), now).await?;
    Ok(match decided.next_transition_time.as_ref() {
        Some(next) => Action::requeue(until(now, next.0)),
        None => Action::await_change(),
    })
}

async fn cleanup(sale: &FlashSale, ctx: &Context) -> Result<Action, Error> {
    publish(
        ctx,
        sale,
        EventType::Normal,
        "Deleted",
        "Restored; releasing the finalizer".into(),
        "Restore",
    )
    .await;
    for phase in Phase::ALL {
        ctx.metrics.phase.remove(&PhaseLabels {
            namespace: sale.namespace().unwrap_or_default(),
            name: sale.name_any(),
            phase: phase.as_str(),
        });
    }
    Ok(Action::await_change())
}

/// Writes the status with server-side apply, unless it already says the same thing.
async fn write_status(
    api: &Api<FlashSale>,
    sale: &FlashSale,
    previous: &FlashSaleStatus,
    mut next: FlashSaleStatus,
    now: Timestamp,
) -> Result<(), Error> {
    next.conditions = ConditionSet::from(previous.conditions.clone()).merge(
        next.conditions,
        sale.meta().generation,
        now,
    );
    if &next == previous {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "status": next,
    });
    api.patch_status(
        &sale.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    sale: &FlashSale,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &sale.object_ref(&())).await {
        warn!(error = %err, reason, "could not publish event");
    }
}

fn record_phase_metrics(ctx: &Context, sale: &FlashSale, status: &FlashSaleStatus, now: Timestamp) {
    let (namespace, name) = (sale.namespace().unwrap_or_default(), sale.name_any());
    for phase in Phase::ALL {
        let on = status.phase == Some(phase);
        ctx.metrics
            .phase
            .get_or_create(&PhaseLabels {
                namespace: namespace.clone(),
                name: name.clone(),
                phase: phase.as_str(),
            })
            .set(i64::from(on));
    }
    if let Some(next) = &status.next_transition_time {
        let secs = next.0.duration_since(now).as_secs_f64();
        ctx.metrics
            .seconds_to_next_transition
            .get_or_create(&SaleLabels { namespace, name })
            .set(secs);
    }
}

/// How long to wait from `now` until `at`, never negative.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}
