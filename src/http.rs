//! The HTTP listener beside gRPC: kie.ai callbacks, Prometheus metrics and
//! a liveness probe.

use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};

use tokio_util::sync::CancellationToken;

use crate::attempts::Attempts;
use crate::config::{ApiKey, Settings};
use crate::hub::TaskHub;
use crate::idempotency::InMemoryStore;
use crate::kie::KieClient;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub hub: TaskHub,
    /// Create attempts a callback may name the task of.
    pub attempts: Arc<Attempts>,
    pub metrics: Arc<Metrics>,
    pub hmac_key: Option<ApiKey>,
}

impl HttpState {
    /// A state whose hub has no reachable upstream: for driving the router
    /// on its own (property tests, fuzzing), where a callback only ever
    /// wakes pollers that do not exist. Call it inside a tokio runtime.
    pub fn detached(hmac_key: Option<ApiKey>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        // Port 9 (discard): nothing answers there, and nothing is sent.
        let settings = Settings::local("http://127.0.0.1:9/".parse()?, None);
        let kie = KieClient::new(&settings.upstream, metrics.clone())?;
        let attempts = Attempts::new(
            kie.clone(),
            InMemoryStore::new(settings.idempotency),
            metrics.clone(),
            None,
            settings.idempotency.ttl,
            settings.idempotency.max_keys,
        );
        let hub = TaskHub::new(
            kie,
            settings.watch,
            metrics.clone(),
            CancellationToken::new(),
        );
        Ok(Self {
            hub,
            attempts,
            metrics,
            hmac_key,
        })
    }
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
