//! The thin tonic adapter: request → domain call → response or status, and
//! one log line per RPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::config::{ApiKey, WatchSettings};
use crate::create::Creator;
use crate::error::{GatewayError, Severity};
use crate::hub::TaskHub;
use crate::kie::{Credential, KeySource};
use crate::metrics::Metrics;
use crate::pb::video_generation_server::VideoGeneration;
use crate::pb::{
    CreateTaskRequest, CreateTaskResponse, GetTaskRequest, GetTaskResponse, WatchTaskRequest,
};
use crate::task::{CreateTaskInput, TaskId};
use crate::watch::{self, WatchStream};

/// Which kie.ai key a call uses.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The gateway's own key.
    pub gateway: Option<Credential>,
    /// Take the caller's `authorization: Bearer` key when present.
    pub passthrough: bool,
}

impl Credentials {
    fn for_call(&self, metadata: &MetadataMap) -> Result<Credential, GatewayError> {
        if self.passthrough
            && let Some(value) = metadata.get("authorization")
        {
            let not_bearer =
                GatewayError::MissingCallerKey("the authorization metadata is not `Bearer <key>`");
            let key = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| not_bearer.clone())?;
            return Credential::new(ApiKey::new(key), KeySource::Caller).ok_or(not_bearer);
        }
        self.gateway.clone().ok_or(GatewayError::MissingCallerKey(
            "this gateway has no kie.ai key of its own",
        ))
    }
}

pub struct VideoGenerationService {
    pub creator: Arc<Creator>,
    pub hub: TaskHub,
    pub metrics: Arc<Metrics>,
    pub credentials: Credentials,
    pub watch: WatchSettings,
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl VideoGeneration for VideoGenerationService {
    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let call = Call::start("CreateTask", request.metadata());
        let (metadata, _, message) = request.into_parts();
        let result = async {
            let input = CreateTaskInput::try_from(message)?;
            let credential = self.credentials.for_call(&metadata)?;
            let call_id = call.request_id.to_str().unwrap_or_default();
            self.creator
                .create(credential, input, call.deadline, call_id)
                .await
        }
        .await;
        match result {
            Ok(task_id) => {
                self.succeeded(&call, &task_id);
                Ok(call.respond(CreateTaskResponse { task_id }))
            }
            Err(e) => Err(self.failed(&call, "", &e)),
        }
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let call = Call::start("GetTask", request.metadata());
        let (metadata, _, message) = request.into_parts();
        let raw_id = message.task_id;
        let shown_id = loggable_id(&raw_id);
        let result = async {
            let task_id = TaskId::parse(raw_id)?;
            let credential = self.credentials.for_call(&metadata)?;
            self.hub.get(credential, task_id, call.deadline).await
        }
        .await;
        match result {
            Ok(task) => {
                self.succeeded(&call, &shown_id);
                let task = Some(Arc::unwrap_or_clone(task));
                Ok(call.respond(GetTaskResponse { task }))
            }
            Err(e) => Err(self.failed(&call, &shown_id, &e)),
        }
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let call = Call::start("WatchTask", request.metadata());
        let (metadata, _, message) = request.into_parts();
        let raw_id = message.task_id;
        let shown_id = loggable_id(&raw_id);
        let subscribed = async {
            let task_id = TaskId::parse(raw_id)?;
            let credential = self.credentials.for_call(&metadata)?;
            let mut rx = self.hub.subscribe(credential, task_id);
            watch::first_observation(&mut rx, &self.shutdown).await?;
            Ok::<_, GatewayError>(rx)
        }
        .await;
        let rx = match subscribed {
            Ok(rx) => rx,
            Err(e) => return Err(self.failed(&call, &shown_id, &e)),
        };
        let metrics = self.metrics.clone();
        metrics.active_watchers.inc();
        let request_id = call.request_id.clone();
        let started = call.started;
        // The RPC's log line is written when the stream ends.
        let on_end = Box::new(move |code: Code| {
            metrics.active_watchers.dec();
            let latency = started.elapsed();
            metrics.rpc("WatchTask", code, latency);
            tracing::info!(
                method = "WatchTask",
                task_id = %shown_id,
                request_id = request_id.to_str().unwrap_or_default(),
                code = ?code,
                latency_ms = latency.as_secs_f64() * 1e3,
                "rpc"
            );
        });
        let stream = watch::stream(
            rx,
            self.watch.heartbeat,
            self.watch.max_duration,
            self.shutdown.clone(),
            on_end,
        );
        Ok(call.respond(stream))
    }
}

/// One RPC in flight: what its log line and response metadata need.
struct Call {
    method: &'static str,
    started: Instant,
    /// The caller's `x-request-id`, or one made up; returned in the
    /// response metadata either way.
    request_id: MetadataValue<Ascii>,
    /// The caller's deadline, which caps upstream calls.
    deadline: Option<Duration>,
}

impl Call {
    fn start(method: &'static str, metadata: &MetadataMap) -> Self {
        let request_id = metadata
            .get(REQUEST_ID)
            .filter(|v| {
                let v = v.as_bytes();
                !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
            })
            .cloned()
            .unwrap_or_else(new_request_id);
        Self {
            method,
            started: Instant::now(),
            request_id,
            deadline: caller_deadline(metadata),
        }
    }

    fn respond<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        response
            .metadata_mut()
            .insert(REQUEST_ID, self.request_id.clone());
        response
    }
}

const REQUEST_ID: &str = "x-request-id";

fn new_request_id() -> MetadataValue<Ascii> {
    let id = format!("{:016x}", rand::random::<u64>());
    MetadataValue::try_from(id).expect("hex digits are valid metadata")
}

impl VideoGenerationService {
    /// Metrics and the RPC's log line.
    fn succeeded(&self, call: &Call, task_id: &str) {
        let latency = call.started.elapsed();
        self.metrics.rpc(call.method, Code::Ok, latency);
        tracing::info!(
            method = call.method,
            task_id,
            request_id = call.request_id.to_str().unwrap_or_default(),
            code = ?Code::Ok,
            latency_ms = latency.as_secs_f64() * 1e3,
            "rpc"
        );
    }

    /// Metrics and the RPC's log line, at a level that fits who must act on
    /// it; returns the caller's status.
    fn failed(&self, call: &Call, task_id: &str, error: &GatewayError) -> Status {
        let latency = call.started.elapsed();
        let latency_ms = latency.as_secs_f64() * 1e3;
        let method = call.method;
        let request_id = call.request_id.to_str().unwrap_or_default();
        let mut status = error.to_status();
        let code = status.code();
        self.metrics.rpc(method, code, latency);
        let message = status.message();
        match error.severity() {
            Severity::Caller => {
                tracing::info!(
                    method,
                    task_id,
                    request_id,
                    ?code,
                    latency_ms,
                    message,
                    "rpc"
                )
            }
            Severity::Transient => {
                tracing::warn!(
                    method,
                    task_id,
                    request_id,
                    ?code,
                    latency_ms,
                    message,
                    "rpc"
                )
            }
            Severity::Operator => {
                tracing::error!(
                    method,
                    task_id,
                    request_id,
                    ?code,
                    latency_ms,
                    message,
                    "rpc"
                )
            }
        }
        status
            .metadata_mut()
            .insert(REQUEST_ID, call.request_id.clone());
        status
    }
}

/// The task id as it may appear in a log line: a caller's garbage is cut
/// short and stripped of control characters.
fn loggable_id(raw: &str) -> String {
    raw.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// The caller's deadline from the `grpc-timeout` header, less a margin so
/// that our DEADLINE_EXCEEDED, with its details, is ready before tonic's own
/// timer (started when the request arrived, a little before this handler)
/// answers a bare CANCELLED "Timeout expired".
fn caller_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let budget = grpc_timeout(metadata)?;
    let margin = (budget / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
    Some(budget.saturating_sub(margin))
}

fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_read() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "250m".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        assert_eq!(caller_deadline(&m), Some(Duration::from_millis(2900)));
        m.insert("grpc-timeout", "x".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), None);
    }
}
