//! Serves connections with hyper-util directly rather than `axum::serve`:
//! dropping a connection without any HTTP answer (a fault kie.ai's CDN
//! produces) needs control over the connection, which `axum::serve` hides.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::api;
use super::config::Faults;
use super::faults::{self, Fault};
use super::handle::{Endpoint, RecordedRequest, SimHandle};
use super::tasks;
use super::uploads::RecordedBody;

/// kie.ai bodies are small; anything bigger is refused before parsing.
const MAX_BODY: usize = 1024 * 1024;
/// How long open connections may finish their request after shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated dropped connection")
    }
}

impl std::error::Error for DropConnection {}

/// Which of kie.ai's two hosts a listener plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// `api.kie.ai`: small JSON bodies, buffered and recorded on arrival.
    Api,
    /// `kieai.redpandaai.co`: uploads stream to their handler, which says
    /// what to record (`uploads::RecordedBody`).
    Upload,
}

/// Accepts until `shutdown` is cancelled; each connection then gets
/// `DRAIN_GRACE` to finish.
pub async fn serve(
    listener: TcpListener,
    host: Host,
    app: Router,
    sim: SimHandle,
    shutdown: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => {
                tracing::debug!("simulator accept loop stopped");
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Best effort: small JSON answers stall without it.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let app = app.clone();
        let sim = sim.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(request, host, app.clone(), sim.clone())
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                // Errors here are clients going away or our own drops.
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_GRACE, connection).await;
                }
            }
        });
    }
}

/// Records kie.ai API requests and applies the whole-simulator faults before
/// the router sees them; other routes (`/sim/`, `/files/`) pass straight
/// through.
async fn handle(
    request: Request<Incoming>,
    host: Host,
    app: Router,
    sim: SimHandle,
) -> Result<Response, DropConnection> {
    let path = request.uri().path().to_owned();
    if !path.starts_with("/api/") {
        return Ok(route(app, request.map(Body::new)).await);
    }
    let (parts, body) = request.into_parts();
    let faults = sim.config().faults;
    let fault = if parts.headers.contains_key(axum::http::header::USER_AGENT) {
        Fault::pick(&faults)
    } else {
        Some(Fault::NoUserAgent)
    };
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default();
    let mut recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        query,
        body: serde_json::Value::Null,
        bearer: api::bearer(&parts.headers).is_some(),
        fault: fault.map(|f| f.as_str().to_owned()),
        received_ms: tasks::now_ms(),
        traceparent: parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let endpoint = endpoint(host, &path);
    let body = match (host, fault) {
        (Host::Api, _) => {
            let Ok(bytes) = axum::body::to_bytes(Body::new(body), MAX_BODY).await else {
                return Ok(
                    (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response()
                );
            };
            recorded.body = json_or_text(&bytes);
            sim.record_request(endpoint, recorded);
            Body::from(bytes)
        }
        // A faulted upload is recorded now, without its body; the others once
        // their handler has read it.
        (Host::Upload, Some(fault)) => {
            sim.record_request(endpoint, recorded);
            return faulted(fault, &faults).await;
        }
        (Host::Upload, None) => {
            if !faults.latency.is_zero() {
                tokio::time::sleep(faults.latency).await;
            }
            let mut response = route(app, Request::from_parts(parts, Body::new(body))).await;
            if let Some(RecordedBody(seen)) = response.extensions_mut().remove::<RecordedBody>() {
                recorded.body = seen;
            }
            sim.record_request(endpoint, recorded);
            return Ok(response);
        }
    };
    if let Some(fault) = fault {
        return faulted(fault, &faults).await;
    }
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let response = route(app, Request::from_parts(parts, body)).await;
    if response
        .extensions()
        .get::<api::DropInsteadOfAnswer>()
        .is_some()
    {
        return Err(DropConnection);
    }
    Ok(response)
}

/// A fault's answer, after the configured latency.
async fn faulted(fault: Fault, faults: &Faults) -> Result<Response, DropConnection> {
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    match fault {
        Fault::Drop => Err(DropConnection),
        Fault::Html502 => Ok(faults::html_502()),
        Fault::Error500 => Ok(faults::error_500()),
        Fault::NoUserAgent => Ok(faults::no_user_agent()),
    }
}

fn json_or_text(bytes: &[u8]) -> serde_json::Value {
    if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into()))
    }
}

async fn route(app: Router, request: Request<Body>) -> Response {
    app.oneshot(request)
        .await
        .unwrap_or_else(|never: Infallible| match never {})
}

fn endpoint(host: Host, path: &str) -> Option<Endpoint> {
    match (host, path) {
        (Host::Api, "/api/v1/jobs/createTask") => Some(Endpoint::CreateTask),
        (Host::Api, "/api/v1/jobs/recordInfo") => Some(Endpoint::RecordInfo),
        (Host::Api, "/api/v1/chat/credit") => Some(Endpoint::Credit),
        (Host::Api, "/api/v1/common/download-url") => Some(Endpoint::DownloadUrl),
        (Host::Upload, "/api/file-stream-upload") => Some(Endpoint::FileStreamUpload),
        (Host::Upload, "/api/file-base64-upload") => Some(Endpoint::FileBase64Upload),
        (Host::Upload, "/api/file-url-upload") => Some(Endpoint::FileUrlUpload),
        _ => None,
    }
}
