//! The HTTP listener beside gRPC: kie.ai callbacks, Prometheus metrics and
//! a liveness probe.

use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};

use crate::config::ApiKey;
use crate::hub::TaskHub;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub hub: TaskHub,
    pub metrics: Arc<Metrics>,
    pub hmac_key: Option<ApiKey>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/callbacks/kie", post(crate::callbacks::receive))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<HttpState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
