//! The HTTP listener beside gRPC: liveness now; kie.ai callbacks and
//! metrics join it.

use axum::Router;
use axum::routing::get;

pub fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}
