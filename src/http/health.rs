//! Liveness, readiness and metrics.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, ErrorBody, ErrorKind};

#[derive(Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` from `/healthz`, `ready` from `/readyz`.
    #[schema(example = "ok")]
    status: &'static str,
    /// Cluster mode only, from `/readyz`: `up`, or `down` while the Redis bridge is
    /// reconnecting (the node still serves its own users and catches them up afterwards).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "up")]
    redis: Option<&'static str>,
}

/// How long `/readyz` waits for the store: a database that hangs makes the node unready at
/// once for a proxy's health check, not after the request deadline.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Alive", body = HealthStatus,
        example = json!({"status": "ok"})))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthStatus {
        status: "ok",
        redis: None,
    })
}

/// Readiness: the store answers, for reads and for writes (its writer task runs and the
/// writer's connection answers). In cluster mode it also says whether the Redis bridge is up,
/// and stays 200 while it is down: the node still serves its users from the store and its own
/// events, and taking every node out of a proxy when Redis fails would turn a degraded cluster
/// into an outage.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready; `redis` only in cluster mode", body = HealthStatus,
            example = json!({"status": "ready", "redis": "up"})),
        (status = 503, body = ErrorBody, description = "`unavailable`: the store cannot be read \
            or written"),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pinged = match tokio::time::timeout(READY_WAIT, state.store.ping()).await {
        Ok(pinged) => pinged,
        Err(_) => Err(anyhow::anyhow!("no answer within {READY_WAIT:?}")),
    };
    pinged.map_err(|e| {
        tracing::warn!(error = ?e, "store is not ready");
        ApiError::new(
            ErrorKind::Unavailable,
            "the store cannot be read or written",
        )
        .retry_after(std::time::Duration::from_secs(1))
    })?;
    let redis = state.cluster.as_ref().map(|_| {
        let up = state
            .metrics
            .cluster
            .bridge_up
            .load(std::sync::atomic::Ordering::Relaxed);
        if up == 1 { "up" } else { "down" }
    });
    Ok(HttpResponse::Ok().json(HealthStatus {
        status: "ready",
        redis,
    }))
}

/// Prometheus counters and gauges of this node.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "The Prometheus text format",
        content_type = "text/plain; version=0.0.4", body = String))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
