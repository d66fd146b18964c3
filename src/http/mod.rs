//! The HTTP listener beside gRPC: kie.ai callbacks, Prometheus metrics and
//! a liveness probe.

pub mod callbacks;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use callbacks::CallbackState;

use crate::metrics::Metrics;

/// The HTTP listener's routes; each gets only the state it uses.
pub fn router(callbacks: CallbackState, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/callbacks/kie",
            post(callbacks::receive).with_state(callbacks),
        )
        .route("/metrics", get(metrics_text).with_state(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
