//! The spot-termination drain agent: one per spot node (the DaemonSet runs the
//! `flashsale-drain-agent` binary; `flashsale-operator drain-agent` is the same code). It polls the ECS metadata service and, on a termination notice,
//! taints and cordons its node and evicts the node's pods before the instance is released.
//!
//! Metadata errors of any kind are logged, counted and retried with backoff; the agent never
//! exits because of them. A notice starts one drain per process, and a node already marked for
//! the same release time (by an earlier run of the agent) is finished quietly, without
//! announcing the drain again.

pub mod drain;
pub mod metadata;
pub mod metrics;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::{
    Api, Client, Resource as _,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;

use crate::{
    admin,
    api::{FlashSale, MetadataTokenMode},
};
use drain::{Marked, Report};
use metadata::{Answer, MetadataClient};
use metrics::{AgentMetrics, KindLabels};

/// The name the agent reports events as.
pub const REPORTER: &str = "flashsale-drain-agent";
/// Event reasons.
pub const REASON_NOTICE: &str = "SpotTerminationNotice";
pub const REASON_DRAINED: &str = "SpotDrained";
pub const REASON_DRAIN_INCOMPLETE: &str = "SpotDrainIncomplete";
/// The longest a metadata request may take, whatever the poll interval.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// An Event note holds at most 1 kB.
const NOTE_LIMIT: usize = 1000;

/// Flags of `flashsale-operator drain-agent`; each can come from the environment instead, so
/// the DaemonSet can pass either.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The node this agent drains (the DaemonSet passes `spec.nodeName` through the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Base URL of the instance metadata service.
    #[arg(long, env = "FLASHSALE_METADATA_ENDPOINT", default_value = "http://100.100.100.200")]
    pub metadata_endpoint: String,
    /// How often to ask for a termination notice (Go duration, e.g. 2s, 500ms).
    #[arg(long, env = "FLASHSALE_POLL_INTERVAL", default_value = "2s", value_parser = parse_interval)]
    pub poll_interval: Duration,
    /// Session tokens: Optional (use one when the service hands it out), Required (hardened
    /// mode), Disabled (plain requests).
    #[arg(long, env = "FLASHSALE_METADATA_TOKEN", default_value = "Optional", value_parser = parse_token_mode)]
    pub metadata_token: MetadataTokenMode,
    /// Lifetime to ask for when requesting a token, in seconds.
    #[arg(long, env = "FLASHSALE_METADATA_TOKEN_TTL_SECONDS", default_value_t = 21600, value_parser = clap::value_parser!(u64).range(1..=21600))]
    pub token_ttl_seconds: u64,
    /// The FlashSale (`namespace/name`) that runs this agent; drain events go to it too.
    #[arg(long, env = "FLASHSALE_SALE", value_parser = parse_sale)]
    pub sale: Option<SaleRef>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "FLASHSALE_AGENT_METRICS_ADDR", default_value = "0.0.0.0:9102")]
    pub metrics_addr: SocketAddr,
}

/// A FlashSale's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleRef {
    pub namespace: String,
    pub name: String,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = text.parse().map_err(|e| format!("{e} (use a Go duration such as 2s or 500ms)"))?;
    if d.is_negative() {
        return Err("the poll interval cannot be negative".into());
    }
    let d = Duration::from(d);
    if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
        return Err("the poll interval must be between 100ms and 60s".into());
    }
    Ok(d)
}

fn parse_token_mode(text: &str) -> Result<MetadataTokenMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "optional" => Ok(MetadataTokenMode::Optional),
        "required" => Ok(MetadataTokenMode::Required),
        "disabled" => Ok(MetadataTokenMode::Disabled),
        _ => Err(format!("{text:?} is not a token mode: use Optional, Required or Disabled")),
    }
}

fn parse_sale(text: &str) -> Result<SaleRef, String> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(SaleRef { namespace: namespace.to_owned(), name: name.to_owned() })
        }
        _ => Err(format!("{text:?} is not namespace/name")),
    }
}

/// Errors that stop the agent: only configuration that can never work.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: std::io::Error },
    #[error("the metadata endpoint {0:?} is not an http:// URL")]
    Endpoint(String),
}

/// Where the agent is with its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Watching,
    /// A drain for this release time has started (and may have finished).
    Draining(Timestamp),
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    args: Args,
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    if !args.metadata_endpoint.starts_with("http://") {
        return Err(AgentError::Endpoint(args.metadata_endpoint));
    }
    let metrics = Arc::new(AgentMetrics::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| AgentError::Metrics { addr: args.metrics_addr, source })?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let admin_state = admin::Admin { metrics: metrics.clone(), ready: ready_rx };
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(admin::serve_on(listener, admin_state, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let timeout = args.poll_interval.min(MAX_REQUEST_TIMEOUT);
    let mut metadata = MetadataClient::new(
        &args.metadata_endpoint,
        args.metadata_token,
        Duration::from_secs(args.token_ttl_seconds),
        timeout,
    );
    tracing::info!(
        node = %args.node_name,
        endpoint = %args.metadata_endpoint,
        poll_interval = ?args.poll_interval,
        token = ?args.metadata_token,
        "drain agent watching for spot termination notices"
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: Api::all(client.clone()),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: REPORTER.into(), instance: Some(args.node_name.clone()) },
        ),
        node: args.node_name.clone(),
        sale: args.sale.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(become_ready(ctx.clone(), ready_tx));

    let mut state = State::Watching;
    let mut errors: u32 = 0;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = tokio::time::Instant::now();
        metrics.polls.inc();
        let delay = match metadata.poll().await {
            Ok(Answer::Nothing) => {
                errors = 0;
                args.poll_interval
            }
            Ok(Answer::Notice(release)) => {
                errors = 0;
                match state {
                    State::Watching => {
                        metrics.notices.inc();
                        metrics.termination_timestamp.set(release.as_second());
                        tracing::warn!(node = %ctx.node, %release, "spot termination notice: draining the node");
                        state = State::Draining(release);
                        tokio::spawn(drain(ctx.clone(), release, Instant::now()));
                    }
                    State::Draining(current) if current != release => {
                        metrics.notices.inc();
                        metrics.termination_timestamp.set(release.as_second());
                        tracing::warn!(node = %ctx.node, %release, started_for = %current, "the termination time changed; the drain already started goes on");
                        state = State::Draining(release);
                    }
                    State::Draining(_) => {}
                }
                args.poll_interval
            }
            Err(err) => {
                errors = errors.saturating_add(1);
                metrics.metadata_errors.get_or_create(&KindLabels { kind: err.kind() }).inc();
                let delay = metadata::backoff(args.poll_interval, errors);
                tracing::warn!(error = %err, consecutive = errors, retry_in = ?delay, "metadata poll failed");
                delay
            }
        };
        next = started + delay;
    }
    tracing::info!("drain agent stopping");
    let _ = server.await;
    Ok(())
}

/// What a drain needs.
struct Context {
    client: Client,
    nodes: Api<Node>,
    recorder: Recorder,
    node: String,
    sale: Option<SaleRef>,
    metrics: Arc<AgentMetrics>,
}

/// Marks the agent ready once it can read its node (the credentials and RBAC work).
async fn become_ready(ctx: Arc<Context>, ready: watch::Sender<bool>) {
    let mut wait = Duration::from_millis(500);
    loop {
        match ctx.nodes.get(&ctx.node).await {
            Ok(_) => {
                let _ = ready.send(true);
                return;
            }
            Err(err) => tracing::warn!(node = %ctx.node, error = %err, retry_in = ?wait, "cannot read the node"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Taints and cordons the node, evicts its pods and reports. API errors while marking the node
/// are retried until the release time: without the cordon, evicted pods could come back.
async fn drain(ctx: Arc<Context>, release: Timestamp, seen: Instant) {
    ctx.metrics.draining.set(1);
    let mut wait = Duration::from_millis(200);
    let (node, marked) = loop {
        match drain::mark_node(&ctx.nodes, &ctx.node, release).await {
            Ok(done) => break done,
            Err(err) if Timestamp::now() < release => {
                tracing::error!(node = %ctx.node, error = %err, retry_in = ?wait, "cannot taint and cordon the node");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(node = %ctx.node, error = %err, "cannot taint and cordon the node, and the release time has passed");
                ctx.metrics.draining.set(0);
                return;
            }
        }
    };
    let node_ref = node.object_ref(&());
    if marked == Marked::Now {
        ctx.metrics.drains.inc();
        ctx.metrics.notice_to_cordon.observe(seen.elapsed().as_secs_f64());
        tracing::info!(node = %ctx.node, %release, elapsed = ?seen.elapsed(), "node tainted and cordoned");
        let note = format!(
            "Spot instance is released at {release}; node tainted {}={}:NoSchedule and cordoned, evicting its pods",
            drain::TAINT_KEY,
            drain::taint_value(release)
        );
        ctx.publish(&node_ref, EventType::Warning, REASON_NOTICE, "Cordon", note).await;
    } else {
        tracing::info!(node = %ctx.node, %release, "node already tainted and cordoned for this release time by an earlier run; finishing the drain");
    }

    let mut wait = Duration::from_millis(200);
    let report = loop {
        match drain::evict_pods(&ctx.client, &ctx.node, release, &ctx.metrics).await {
            Ok(report) => break report,
            Err(err) if Timestamp::now() < release => {
                tracing::error!(node = %ctx.node, error = %err, retry_in = ?wait, "cannot list the node's pods");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(node = %ctx.node, error = %err, "cannot list the node's pods, and the release time has passed");
                ctx.metrics.draining.set(0);
                return;
            }
        }
    };
    ctx.metrics.notice_to_drained.observe(seen.elapsed().as_secs_f64());
    ctx.metrics.draining.set(0);
    report_drain(&ctx, &node_ref, release, &report, marked, seen).await;
}

async fn report_drain(
    ctx: &Context,
    node_ref: &ObjectReference,
    release: Timestamp,
    report: &Report,
    marked: Marked,
    seen: Instant,
) {
    let summary = report.summary(release, NOTE_LIMIT);
    let blocked: Vec<String> = report.blocked.iter().map(|(pod, o)| format!("{pod}:{}", o.label())).collect();
    if report.complete() {
        tracing::info!(node = %ctx.node, evicted = report.evicted.len(), elapsed = ?seen.elapsed(), %summary, "drain complete");
    } else {
        tracing::warn!(node = %ctx.node, evicted = report.evicted.len(), blocked = ?blocked, elapsed = ?seen.elapsed(), %summary, "drain incomplete");
    }
    // A restarted agent announces only what it evicted itself; pods still blocked were reported
    // by the run that started the drain.
    if marked == Marked::Already && report.evicted.is_empty() {
        return;
    }
    let (type_, reason) = if report.complete() {
        (EventType::Normal, REASON_DRAINED)
    } else {
        (EventType::Warning, REASON_DRAIN_INCOMPLETE)
    };
    ctx.publish(node_ref, type_, reason, "Drain", summary.clone()).await;
}

impl Context {
    /// Publishes an event on the node and, when the agent serves a sale, on the FlashSale too
    /// (with the node as the related object). Failures are logged: events are a report, not a
    /// step of the drain.
    async fn publish(&self, node_ref: &ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
        let on_node =
            Event { type_, reason: reason.into(), note: Some(note.clone()), action: action.into(), secondary: None };
        if let Err(err) = self.recorder.publish(&on_node, node_ref).await {
            tracing::warn!(node = %self.node, reason, error = %err, "cannot publish an event on the node");
        }
        let Some(sale) = &self.sale else { return };
        let sales: Api<FlashSale> = Api::namespaced(self.client.clone(), &sale.namespace);
        let sale_ref = match sales.get(&sale.name).await {
            Ok(fs) => fs.object_ref(&()),
            Err(err) => {
                tracing::warn!(sale = %format!("{}/{}", sale.namespace, sale.name), error = %err, "cannot read the FlashSale to report on it");
                return;
            }
        };
        let on_sale = Event {
            type_,
            reason: reason.into(),
            note: Some(format!("node {}: {note}", self.node).chars().take(NOTE_LIMIT).collect()),
            action: action.into(),
            secondary: Some(node_ref.clone()),
        };
        if let Err(err) = self.recorder.publish(&on_sale, &sale_ref).await {
            tracing::warn!(sale = %sale.name, reason, error = %err, "cannot publish an event on the FlashSale");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_interval("2").is_err());
        assert!(parse_interval("-2s").is_err());
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("2m").is_err());
        assert_eq!(parse_token_mode("Required"), Ok(MetadataTokenMode::Required));
        assert_eq!(parse_token_mode("disabled"), Ok(MetadataTokenMode::Disabled));
        assert!(parse_token_mode("on").is_err());
        assert_eq!(parse_sale("shop/double-11"), Ok(SaleRef { namespace: "shop".into(), name: "double-11".into() }));
        assert!(parse_sale("double-11").is_err());
        assert!(parse_sale("a/b/c").is_err());
        assert!(parse_sale("/b").is_err());
    }
}
