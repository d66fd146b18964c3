//! The thin tonic adapter: request → domain call → response or status, and
//! one log line per RPC.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::config::ApiKey;
use crate::error::{GatewayError, Severity};
use crate::hub::TaskHub;
use crate::kie::{Credential, KeySource, KieClient};
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
    pub gateway: Option<ApiKey>,
    /// Take the caller's `authorization: Bearer` key when present.
    pub passthrough: bool,
}

impl Credentials {
    fn for_call(&self, metadata: &MetadataMap) -> Result<Credential, GatewayError> {
        if self.passthrough
            && let Some(value) = metadata.get("authorization")
        {
            let key = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or(GatewayError::MissingCallerKey(
                    "the authorization metadata is not `Bearer <key>`",
                ))?;
            return Ok(Credential {
                key: ApiKey::new(key),
                source: KeySource::Caller,
            });
        }
        match &self.gateway {
            Some(key) => Ok(Credential {
                key: key.clone(),
                source: KeySource::Gateway,
            }),
            None => Err(GatewayError::MissingCallerKey(
                "this gateway has no kie.ai key of its own",
            )),
        }
    }
}

pub struct VideoGenerationService {
    kie: KieClient,
    hub: TaskHub,
    credentials: Credentials,
    heartbeat: Duration,
    shutdown: CancellationToken,
}

impl VideoGenerationService {
    pub fn new(
        kie: KieClient,
        hub: TaskHub,
        credentials: Credentials,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            kie,
            hub,
            credentials,
            heartbeat,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl VideoGeneration for VideoGenerationService {
    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let started = Instant::now();
        let deadline = caller_deadline(request.metadata());
        let (metadata, _, message) = request.into_parts();
        let result = async {
            let input = CreateTaskInput::try_from(message)?;
            let credential = self.credentials.for_call(&metadata)?;
            let task_id = self
                .kie
                .create_task(&credential, &input, input.callback_url.as_deref(), deadline)
                .await?;
            Ok::<_, GatewayError>(task_id)
        }
        .await;
        let task_id = result.as_deref().unwrap_or_default();
        log_rpc("CreateTask", task_id, started, result.as_ref().err());
        result
            .map(|task_id| Response::new(CreateTaskResponse { task_id }))
            .map_err(|e| e.to_status())
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let started = Instant::now();
        let deadline = caller_deadline(request.metadata());
        let (metadata, _, message) = request.into_parts();
        let raw_id = message.task_id;
        let shown_id = loggable_id(&raw_id);
        let result = async {
            let task_id = TaskId::parse(raw_id)?;
            let credential = self.credentials.for_call(&metadata)?;
            Ok::<_, GatewayError>(
                self.kie
                    .record_info(&credential, &task_id, deadline)
                    .await?,
            )
        }
        .await;
        log_rpc("GetTask", &shown_id, started, result.as_ref().err());
        result
            .map(|task| Response::new(GetTaskResponse { task: Some(task) }))
            .map_err(|e| e.to_status())
    }

    type WatchTaskStream = WatchStream;

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let started = Instant::now();
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
        match subscribed {
            Ok(rx) => {
                let on_end = Box::new(move |code: Code| {
                    tracing::info!(
                        method = "WatchTask",
                        task_id = %shown_id,
                        code = ?code,
                        latency_ms = started.elapsed().as_secs_f64() * 1e3,
                        "rpc"
                    );
                });
                let stream = watch::stream(rx, self.heartbeat, self.shutdown.clone(), on_end);
                Ok(Response::new(stream))
            }
            Err(e) => {
                log_rpc("WatchTask", &shown_id, started, Some(&e));
                Err(e.to_status())
            }
        }
    }
}

/// The task id as it may appear in a log line: a caller's garbage is cut
/// short and stripped of control characters.
fn loggable_id(raw: &str) -> String {
    raw.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// One line per RPC, at a level that fits who must act on it.
fn log_rpc(method: &'static str, task_id: &str, started: Instant, error: Option<&GatewayError>) {
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    match error {
        None => tracing::info!(method, task_id, code = ?Code::Ok, latency_ms, "rpc"),
        Some(e) => {
            let status = e.to_status();
            let code = status.code();
            let message = status.message();
            match e.severity() {
                Severity::Caller => {
                    tracing::info!(method, task_id, ?code, latency_ms, message, "rpc")
                }
                Severity::Transient => {
                    tracing::warn!(method, task_id, ?code, latency_ms, message, "rpc")
                }
                Severity::Operator => {
                    tracing::error!(method, task_id, ?code, latency_ms, message, "rpc")
                }
            }
        }
    }
}

/// The caller's deadline from the `grpc-timeout` header, less a small margin
/// so that our DEADLINE_EXCEEDED, with its details, reaches the caller
/// before its own timer fires.
fn caller_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let budget = grpc_timeout(metadata)?;
    Some(budget.saturating_sub((budget / 20).min(Duration::from_millis(50))))
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
        assert_eq!(caller_deadline(&m), Some(Duration::from_millis(2950)));
        m.insert("grpc-timeout", "x".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), None);
    }
}
