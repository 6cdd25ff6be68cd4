//! The operator's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Shared state of the endpoints.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Becomes true once the controller's caches are synced.
    pub ready: watch::Receiver<bool>,
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
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
    if *admin.ready.borrow() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}
