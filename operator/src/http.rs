//! The operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use axum::{Router, extract::State, http::StatusCode, routing::get};
use bulwark_controllers::{metrics::Metrics, readiness::Readiness};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Probes {
    metrics: Metrics,
    readiness: Readiness,
}

pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Probes { metrics, readiness });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics and probes: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn metrics_text(State(probes): State<Probes>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        probes.metrics.render(),
    )
}

async fn ready(State(probes): State<Probes>) -> (StatusCode, String) {
    let pending = probes.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for: {}\n", pending.join(", ")),
        )
    }
}
