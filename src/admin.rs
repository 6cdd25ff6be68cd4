//! The HTTP endpoints of the operator and of the drain agent: `/metrics`, `/healthz` and
//! `/readyz`.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Metrics that can be served on `/metrics`.
pub trait Exposition: Send + Sync + 'static {
    /// The text exposition format.
    fn render(&self) -> String;
}

impl Exposition for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Shared state of the endpoints.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<dyn Exposition>,
    /// Becomes true once the process can do its work (the controller's caches are synced; the
    /// drain agent has read its node).
    pub ready: watch::Receiver<bool>,
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, admin, shutdown).await
}

/// Serves on an already bound `listener` until `shutdown` resolves (so a caller can report a
/// bind failure itself).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(admin);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], admin.metrics.render())
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if *admin.ready.borrow() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready yet") }
}
