//! The instance manager's command API: HTTPS, answering only clients with a certificate from the
//! cluster's CA (the operator's). `GET /status`; `POST /commands` with a JSON command
//! (`{"command": "promote", "epoch": 4}`, `fence`, `follow` with `primary`): 200 with the new
//! state, 409 with the refusal (a stale epoch names both epochs), 500 when accepted but not
//! carried out. `GET /faults` and `POST /faults` (`{"fault": "freeze", "seconds": 30}`,
//! `thaw`, `partition` with `seconds`, `heal`, `crash`) are a DR drill's: while frozen or
//! partitioned, status and commands wait for the thaw or heal, as a hung or cut-off machine's
//! would, and only the fault API answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use bulwark_chaos::instance::InstanceFault;

use super::instance::Command;
use super::manager::{CommandError, Manager};
use crate::tls::{MutualTlsListener, TlsFiles};

pub async fn serve(
    manager: Arc<Manager>,
    tcp: tokio::net::TcpListener,
    files: &TlsFiles,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listener = MutualTlsListener::new(tcp, files)?;
    let router = axum::Router::new()
        .route("/status", axum::routing::get(status))
        .route("/commands", axum::routing::post(command))
        .route("/faults", axum::routing::get(faults).post(inject))
        .with_state(manager);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn status(Shared(manager): Shared<Arc<Manager>>) -> Response {
    manager.until_answering().await;
    Json(manager.status().await).into_response()
}

async fn faults(Shared(manager): Shared<Arc<Manager>>) -> Response {
    Json(manager.faults()).into_response()
}

async fn inject(
    Shared(manager): Shared<Arc<Manager>>,
    Json(fault): Json<InstanceFault>,
) -> Response {
    match manager.inject(fault).await {
        Ok(faults) => Json(faults).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": format!("{error:#}")})),
        )
            .into_response(),
    }
}

async fn command(Shared(manager): Shared<Arc<Manager>>, Json(command): Json<Command>) -> Response {
    manager.until_answering().await;
    match manager.command(command).await {
        Ok(state) => Json(state).into_response(),
        Err(error @ CommandError::Refused(_)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": error.to_string()})),
        )
            .into_response(),
        Err(error @ CommandError::Failed(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": error.to_string()})),
        )
            .into_response(),
    }
}
