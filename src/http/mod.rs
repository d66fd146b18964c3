//! The HTTP listeners beside gRPC: the callback listener (kie.ai's
//! callbacks, often reachable from the internet) and the admin listener
//! (Prometheus metrics), each with a liveness probe.

pub mod callbacks;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use callbacks::CallbackState;

use crate::metrics::{self, Metrics};

/// The callback listener's routes. No metrics here: this listener faces
/// kie.ai, so the internet.
pub fn router(callbacks: CallbackState) -> Router {
    Router::new()
        .route(
            "/callbacks/kie",
            post(callbacks::receive).with_state(callbacks),
        )
        .route("/healthz", get(healthz))
}

/// The admin listener's routes (`GATEWAY_ADMIN_ADDR`).
pub fn admin_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text).with_state(metrics))
        .route("/healthz", get(healthz))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus text 0.0.4 unless the scraper's `Accept` prefers OpenMetrics.
async fn metrics_text(
    State(metrics): State<Arc<Metrics>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    // Several Accept headers are one list.
    let accept: Vec<&str> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let openmetrics = metrics::wants_openmetrics(&accept.join(","));
    let content_type = if openmetrics {
        metrics::OPENMETRICS_TEXT
    } else {
        metrics::PROMETHEUS_TEXT
    };
    ([(CONTENT_TYPE, content_type)], metrics.encode(openmetrics))
}
