//! The thin tonic adapter: request → domain call → response or status, and
//! one log line per RPC.

mod generate;
mod image_stream;
mod message_size;
mod task_stream;
pub(crate) mod watch_route;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::StatusExt;
use tracing::Instrument;

use crate::callers::Caller;
use crate::callers::layer::CallerSlot;
use crate::callers::quota::QuotaBook;
use crate::config::{Secret, WatchSettings};
use crate::create::Creator;
use crate::error::{GatewayError, Severity, code_name};
use crate::hub::TaskHub;
use crate::kie::{Credential, KeySource, KieClient};
use crate::metrics::Metrics;
use crate::pb::video_generation_server::{VideoGeneration, VideoGenerationServer};
use crate::pb::{
    CreateTaskRequest, CreateTaskResponse, GenerateVideoRequest, GetCreditsRequest,
    GetCreditsResponse, GetDownloadLinksRequest, GetDownloadLinksResponse, GetQuotaRequest,
    GetQuotaResponse, GetTaskRequest, GetTaskResponse, Quota, UploadImageRequest,
    UploadImageResponse, WatchTaskRequest,
};
use crate::task::{CreateTaskInput, TaskId};
use crate::uploads::Uploader;
pub use generate::GenerateStream;
pub(crate) use message_size::MAX_MESSAGE_SIZE;
use message_size::too_large;
pub use task_stream::WatchStream;
use task_stream::{FirstSeen, FrameStream};

/// Which kie.ai key a call uses.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    /// The gateway's own key.
    pub(crate) gateway: Option<Credential>,
    /// Take the caller's `authorization: Bearer` key when present.
    pub(crate) passthrough: bool,
    /// Caller tokens are on: `authorization` carries the caller's token,
    /// so a pass-through key comes in `x-kie-api-key` instead.
    pub(crate) caller_tokens: bool,
}

/// The metadata key of a pass-through kie.ai key when caller tokens are on.
pub const KIE_KEY_METADATA: &str = "x-kie-api-key";

impl Credentials {
    fn for_call(
        &self,
        metadata: &MetadataMap,
        caller: &Caller,
    ) -> Result<Credential, GatewayError> {
        // A key the callers file gives this caller comes first: the
        // operator chose it.
        if let Some(key) = &caller.kie_key {
            return Credential::new(key.clone(), KeySource::Gateway).ok_or(GatewayError::Internal(
                "a caller's kie.ai key is not a valid header",
            ));
        }
        let header = if self.caller_tokens {
            KIE_KEY_METADATA
        } else {
            "authorization"
        };
        if self.passthrough
            && let Some(value) = metadata.get(header)
        {
            let not_bearer =
                GatewayError::MissingCallerKey("the authorization metadata is not `Bearer <key>`");
            let key = value
                .to_str()
                .ok()
                .and_then(|v| {
                    let bearer = v
                        .strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "));
                    // x-kie-api-key takes the bare key, or Bearer <key>.
                    if self.caller_tokens {
                        Some(bearer.unwrap_or(v))
                    } else {
                        bearer
                    }
                })
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| not_bearer.clone())?;
            return Credential::new(Secret::new(key), KeySource::Caller).ok_or(not_bearer);
        }
        self.gateway.clone().ok_or(GatewayError::MissingCallerKey(
            "this gateway has no kie.ai key of its own",
        ))
    }
}

pub(crate) struct VideoGenerationService {
    pub(crate) creator: Arc<Creator>,
    pub(crate) hub: TaskHub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) credentials: Credentials,
    pub(crate) watch: WatchSettings,
    pub(crate) shutdown: CancellationToken,
    pub(crate) uploads: Arc<Uploader>,
    /// For the calls that are one kie.ai read: download links, credits.
    pub(crate) kie: KieClient,
    pub(crate) quotas: Arc<QuotaBook>,
}

#[tonic::async_trait]
impl VideoGeneration for VideoGenerationService {
    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let mut call = Call::start("CreateTask", &request, &self.metrics);
        let (metadata, _, message) = request.into_parts();
        let result = async {
            let input = CreateTaskInput::try_from(message)?;
            let credential = self.credentials.for_call(&metadata, &call.caller)?;
            let call_id = call.request_id.to_str().unwrap_or_default();
            self.creator
                .create(
                    call.caller.clone(),
                    credential,
                    input,
                    call.deadline,
                    call_id,
                )
                .await
        }
        .instrument(call.span.clone())
        .await;
        match result {
            Ok(task_id) => {
                call.task_id.clone_from(&task_id);
                call.end(Outcome::Ok);
                Ok(respond(&call.request_id, CreateTaskResponse { task_id }))
            }
            Err(e) => Err(call.fail(&e)),
        }
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let mut call = Call::start("GetTask", &request, &self.metrics);
        let (metadata, _, message) = request.into_parts();
        let raw_id = message.task_id;
        call.task_id = loggable_id(&raw_id);
        let result = async {
            let task_id = TaskId::parse(raw_id)?;
            let credential = self.credentials.for_call(&metadata, &call.caller)?;
            self.hub.get(credential, task_id, call.deadline).await
        }
        .instrument(call.span.clone())
        .await;
        match result {
            Ok(task) => {
                call.end(Outcome::Ok);
                let task = Some(Arc::unwrap_or_clone(task));
                Ok(respond(&call.request_id, GetTaskResponse { task }))
            }
            Err(e) => Err(call.fail(&e)),
        }
    }

    type WatchTaskStream = WatchStream;

    /// Reached only without `VideoGenerationRoutes`, which serves WatchTask
    /// with the shared encoding (the same bytes).
    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let response = self.watch(request).await?;
        Ok(response.map(task_stream::messages))
    }

    type GenerateVideoStream = GenerateStream;

    async fn generate_video(
        &self,
        request: Request<GenerateVideoRequest>,
    ) -> Result<Response<Self::GenerateVideoStream>, Status> {
        self.generate(request).await
    }

    async fn upload_image(
        &self,
        request: Request<Streaming<UploadImageRequest>>,
    ) -> Result<Response<UploadImageResponse>, Status> {
        let mut call = Call::start("UploadImage", &request, &self.metrics);
        let (metadata, _, stream) = request.into_parts();
        let result = async {
            let credential = self.credentials.for_call(&metadata, &call.caller)?;
            // Taken before the stream is read: the slots bound how many
            // images are held in memory at once.
            let slot = self.uploads.slot(&credential, call.deadline).await?;
            let image = image_stream::read_image(stream).await?;
            let left = call
                .deadline
                .map(|d| d.saturating_sub(call.started.elapsed()));
            Ok::<_, GatewayError>(
                self.uploads
                    .upload(&slot, &credential, &image, left)
                    .await?,
            )
        }
        .instrument(call.span.clone())
        .await;
        match result {
            Ok(uploaded) => {
                call.end(Outcome::Ok);
                let response = UploadImageResponse {
                    url: uploaded.url,
                    expire_time: Some(uploaded.expire_time.into()),
                    size_bytes: i64::try_from(uploaded.size_bytes).unwrap_or(i64::MAX),
                    content_type: uploaded.format.mime_type().into(),
                };
                Ok(respond(&call.request_id, response))
            }
            Err(e) => Err(call.fail(&e)),
        }
    }

    async fn get_download_links(
        &self,
        request: Request<GetDownloadLinksRequest>,
    ) -> Result<Response<GetDownloadLinksResponse>, Status> {
        let mut call = Call::start("GetDownloadLinks", &request, &self.metrics);
        let (metadata, _, message) = request.into_parts();
        let raw_id = message.task_id;
        call.task_id = loggable_id(&raw_id);
        let result = async {
            let task_id = TaskId::parse(raw_id)?;
            let credential = self.credentials.for_call(&metadata, &call.caller)?;
            crate::downloads::fresh_links(&self.hub, &self.kie, credential, task_id, call.deadline)
                .await
        }
        .instrument(call.span.clone())
        .await;
        match result {
            Ok(links) => {
                call.end(Outcome::Ok);
                Ok(respond(
                    &call.request_id,
                    GetDownloadLinksResponse { links },
                ))
            }
            Err(e) => Err(call.fail(&e)),
        }
    }

    async fn get_credits(
        &self,
        request: Request<GetCreditsRequest>,
    ) -> Result<Response<GetCreditsResponse>, Status> {
        let mut call = Call::start("GetCredits", &request, &self.metrics);
        let result = async {
            let credential = self
                .credentials
                .for_call(request.metadata(), &call.caller)?;
            Ok::<_, GatewayError>(self.kie.credits(&credential, call.deadline).await?)
        }
        .instrument(call.span.clone())
        .await;
        match result {
            Ok(credits) => {
                call.end(Outcome::Ok);
                Ok(respond(&call.request_id, GetCreditsResponse { credits }))
            }
            Err(e) => Err(call.fail(&e)),
        }
    }

    async fn get_quota(
        &self,
        request: Request<GetQuotaRequest>,
    ) -> Result<Response<GetQuotaResponse>, Status> {
        let mut call = Call::start("GetQuota", &request, &self.metrics);
        match self.quotas.standing(&call.caller).await {
            Ok(standing) => {
                call.end(Outcome::Ok);
                let q = call.caller.quotas;
                let minute = timestamp(standing.minute_resets_ms());
                let day = timestamp(standing.day_resets_ms());
                #[allow(clippy::cast_precision_loss)]
                let rows = [
                    (
                        "creates_per_minute",
                        q.creates_per_minute.map(|l| l as f64),
                        standing.creates_minute as f64,
                        minute,
                    ),
                    (
                        "creates_per_day",
                        q.creates_per_day.map(|l| l as f64),
                        standing.creates_day as f64,
                        day,
                    ),
                    (
                        "credits_per_day",
                        q.credits_per_day,
                        standing.credits_day,
                        day,
                    ),
                ];
                let quotas = rows
                    .into_iter()
                    .filter_map(|(name, limit, used, reset)| {
                        let limit = limit?;
                        Some(Quota {
                            name: name.into(),
                            limit,
                            used,
                            remaining: (limit - used).max(0.0),
                            reset_time: Some(reset),
                        })
                    })
                    .collect();
                let caller = call.caller.name.to_string();
                Ok(respond(
                    &call.request_id,
                    GetQuotaResponse { caller, quotas },
                ))
            }
            Err(e) => Err(call.fail(&e)),
        }
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

impl VideoGenerationService {
    /// WatchTask, its messages still unencoded.
    async fn watch(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<FrameStream>, Status> {
        let mut call = Call::start("WatchTask", &request, &self.metrics);
        let (metadata, _, message) = request.into_parts();
        let raw_id = message.task_id;
        call.task_id = loggable_id(&raw_id);
        let subscribed = async {
            let task_id = TaskId::parse(raw_id)?;
            let credential = self.credentials.for_call(&metadata, &call.caller)?;
            let rx = self.hub.subscribe(credential, task_id);
            task_stream::first_observation(rx, &self.shutdown).await
        }
        .instrument(call.span.clone())
        .await;
        let first_seen = match subscribed {
            Ok(first_seen) => first_seen,
            Err(e) => return Err(call.fail(&e)),
        };
        let request_id = call.request_id.clone();
        let stream = self.watch_streamer().stream(call, first_seen, None);
        Ok(respond(&request_id, stream))
    }

    fn watch_streamer(&self) -> WatchStreamer {
        WatchStreamer {
            metrics: self.metrics.clone(),
            watch: self.watch,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// What turns a task subscription into a WatchTask stream, apart from the
/// service: GenerateVideo makes its stream after its handler has returned
/// (after the first message).
struct WatchStreamer {
    metrics: Arc<Metrics>,
    watch: WatchSettings,
    shutdown: CancellationToken,
}

impl WatchStreamer {
    /// The stream of `call`, which lives on in it: its log line is written
    /// when the stream ends, with how it ended. `no_repeat`: see
    /// `task_stream::for_caller`.
    fn stream(
        self,
        mut call: Call,
        first_seen: FirstSeen,
        no_repeat: Option<String>,
    ) -> FrameStream {
        let metrics = self.metrics;
        metrics.active_watchers.inc();
        let heartbeats = metrics.heartbeats.clone();
        let on_end = Box::new(move |end: task_stream::End<'_>| {
            metrics.active_watchers.dec();
            call.end(match end {
                task_stream::End::Finished => Outcome::Ok,
                task_stream::End::Failed { error, status } => Outcome::Failed { error, status },
                task_stream::End::CallerLeft => Outcome::CallerLeft,
            });
        });
        task_stream::stream(
            first_seen,
            (self.watch.heartbeat, heartbeats),
            self.watch.max_duration,
            self.shutdown,
            on_end,
            no_repeat,
        )
    }
}

/// How an RPC ended: what its one log line and its metrics say.
enum Outcome<'a> {
    Ok,
    /// The gateway answered `error`, sent as `status`.
    Failed {
        error: &'a GatewayError,
        status: &'a Status,
    },
    /// tonic answered `status` before any handler ran: the request could
    /// not be decoded.
    Refused(&'a Status),
    /// The caller left before the answer: it cancelled, or its deadline
    /// passed and tonic dropped the handler.
    CallerLeft,
}

/// One RPC in flight: what its log line and response metadata need. A call
/// dropped before it was logged (its handler future dropped because the
/// caller left) logs itself as `CallerLeft`, so every call has a line and
/// a count.
struct Call {
    method: &'static str,
    started: Instant,
    /// The caller's `x-request-id`, or one made up; returned in the
    /// response metadata either way.
    request_id: MetadataValue<Ascii>,
    /// The caller's deadline, which caps upstream calls.
    deadline: Option<Duration>,
    /// The task id for the log line, once known.
    task_id: String,
    /// Who called (the caller check put it in the request's extensions).
    caller: Caller,
    metrics: Arc<Metrics>,
    logged: bool,
    /// The call's trace span (`Span::none()` while traces are off); its
    /// log line is written inside it.
    span: tracing::Span,
}

impl Call {
    fn start<T>(method: &'static str, request: &Request<T>, metrics: &Arc<Metrics>) -> Self {
        // Tells the refusal layer that this call reached its handler and
        // will log itself.
        if let Some(reached) = request.extensions().get::<HandlerReached>() {
            reached.0.store(true, Ordering::Relaxed);
        }
        let metadata = request.metadata();
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
            task_id: String::new(),
            caller: request
                .extensions()
                .get::<Caller>()
                .cloned()
                .unwrap_or_else(Caller::anonymous),
            metrics: metrics.clone(),
            logged: false,
            span: crate::otel::rpc_span(method, metadata),
        }
    }

    /// Logs `error` and returns the caller's status, which carries the
    /// request id.
    fn fail(&mut self, error: &GatewayError) -> Status {
        let mut status = error.to_status();
        self.end(Outcome::Failed {
            error,
            status: &status,
        });
        status
            .metadata_mut()
            .insert(REQUEST_ID, self.request_id.clone());
        status
    }

    /// The call's one log line and its metrics; later calls do nothing.
    fn end(&mut self, outcome: Outcome<'_>) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        let outcome = match outcome {
            // Our own margin ends upstream calls before the caller's
            // deadline, so a handler dropped after it was dropped by
            // tonic's deadline timer, not by a cancel.
            Outcome::CallerLeft if self.deadline.is_some_and(|d| self.started.elapsed() >= d) => {
                Ended::deadline_passed()
            }
            outcome => Ended::from(outcome),
        };
        crate::otel::rpc_ended(&self.span, outcome.code, &self.task_id);
        let _inside = self.span.enter();
        log_rpc(
            &self.metrics,
            Line {
                method: self.method,
                caller: &self.caller.name,
                task_id: &self.task_id,
                request_id: self.request_id.to_str().unwrap_or_default(),
                latency: self.started.elapsed(),
            },
            &outcome,
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(Outcome::CallerLeft);
    }
}

/// What identifies an RPC in its log line.
struct Line<'a> {
    method: &'static str,
    /// A name from the callers file or `anonymous`: bounded.
    caller: &'a str,
    task_id: &'a str,
    request_id: &'a str,
    latency: Duration,
}

/// An outcome reduced to what the log line shows.
struct Ended<'a> {
    code: Code,
    severity: Severity,
    /// The ErrorInfo reason, when the status has one.
    reason: Option<String>,
    error: Option<std::borrow::Cow<'a, str>>,
}

impl Ended<'_> {
    fn deadline_passed() -> Self {
        Self {
            code: Code::Cancelled,
            severity: Severity::Caller,
            reason: None,
            error: Some("the caller's deadline passed before the answer".into()),
        }
    }
}

impl<'a> From<Outcome<'a>> for Ended<'a> {
    fn from(outcome: Outcome<'a>) -> Self {
        let from_status = |status: &'a Status, severity| Self {
            code: status.code(),
            severity,
            reason: status.get_details_error_info().map(|info| info.reason),
            error: Some(status.message().into()),
        };
        match outcome {
            Outcome::Ok => Self {
                code: Code::Ok,
                severity: Severity::Caller,
                reason: None,
                error: None,
            },
            Outcome::Failed { error, status } => from_status(status, error.severity()),
            // Only a malformed request gets here: the caller's doing.
            Outcome::Refused(status) => from_status(status, Severity::Caller),
            Outcome::CallerLeft => Self {
                code: Code::Cancelled,
                severity: Severity::Caller,
                reason: None,
                error: Some("the caller cancelled the call".into()),
            },
        }
    }
}

/// The one place an RPC is counted and logged: unary calls, streams when
/// they end, calls the caller left, and requests tonic refused. The level
/// says who must act: the caller (info), nobody yet (warn), the operator
/// (error).
fn log_rpc(metrics: &Metrics, line: Line<'_>, ended: &Ended<'_>) {
    metrics.rpc(
        line.method,
        line.caller,
        code_name(ended.code),
        line.latency,
    );
    // `tracing` needs a level known where the event is written: one arm per
    // level, the same fields in each.
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                $level,
                method = line.method,
                caller = line.caller,
                task_id = line.task_id,
                request_id = line.request_id,
                code = ?ended.code,
                latency_ms = line.latency.as_secs_f64() * 1e3,
                reason = ended.reason.as_deref(),
                // Not `message`: in JSON lines that would replace the
                // event's own message ("rpc").
                error = ended.error.as_deref(),
                "rpc"
            )
        };
    }
    match ended.severity {
        Severity::Caller => event!(tracing::Level::INFO),
        Severity::Transient => event!(tracing::Level::WARN),
        Severity::Operator => event!(tracing::Level::ERROR),
    }
}

fn respond<T>(request_id: &MetadataValue<Ascii>, message: T) -> Response<T> {
    let mut response = Response::new(message);
    response
        .metadata_mut()
        .insert(REQUEST_ID, request_id.clone());
    response
}

const REQUEST_ID: &str = "x-request-id";

fn new_request_id() -> MetadataValue<Ascii> {
    let id = format!("{:016x}", rand::random::<u64>());
    MetadataValue::try_from(id).expect("hex digits are valid metadata")
}

// === impl RefusalLog ===

/// Set on a request by `RefusalLog`, flipped by the handler when it runs.
#[derive(Clone, Default)]
struct HandlerReached(Arc<AtomicBool>);

/// A tower layer for the gRPC server that logs and counts the calls tonic
/// answers itself before any handler runs (a message it cannot decode, one
/// above the size limit): the handlers never see those, and tonic reports
/// them only in the response.
#[derive(Clone)]
pub(crate) struct RefusalLogLayer {
    metrics: Arc<Metrics>,
}

impl RefusalLogLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RefusalLogLayer {
    type Service = RefusalLog<S>;

    fn layer(&self, inner: S) -> RefusalLog<S> {
        RefusalLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RefusalLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RefusalLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Health and reflection calls pass through untouched.
        let Some(method) = our_method(request.uri().path()) else {
            return futures_util::future::Either::Left(self.inner.call(request));
        };
        let reached = HandlerReached::default();
        request.extensions_mut().insert(reached.clone());
        let caller = CallerSlot::default();
        request.extensions_mut().insert(caller.clone());
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(loggable_id)
            .unwrap_or_default();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let answered = self.inner.call(request);
        futures_util::future::Either::Right(Box::pin(async move {
            let mut response = answered.await?;
            if !reached.0.load(Ordering::Relaxed)
                && let Some(status) = Status::from_header_map(response.headers())
                && status.code() != Code::Ok
            {
                let caller = caller.name();
                let line = Line {
                    method,
                    caller: &caller,
                    task_id: "",
                    request_id: &request_id,
                    latency: started.elapsed(),
                };
                match too_large(&status) {
                    Some(error) => {
                        // A trailers-only answer: its status is all in the
                        // headers, which are replaced whole.
                        let status = error.to_status();
                        let headers = response.headers_mut();
                        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                            headers.remove(name);
                        }
                        if status.add_header(headers).is_err() {
                            tracing::error!("the message-too-large status did not fit in headers");
                        }
                        let ended = Outcome::Failed {
                            error: &error,
                            status: &status,
                        };
                        log_rpc(&metrics, line, &Ended::from(ended));
                    }
                    None => log_rpc(&metrics, line, &Ended::from(Outcome::Refused(&status))),
                }
            }
            Ok(response)
        }))
    }
}

/// The method name of a path of this service, as the metrics name it.
fn our_method(path: &str) -> Option<&'static str> {
    let service = <VideoGenerationServer<VideoGenerationService> as NamedService>::NAME;
    let method = path
        .strip_prefix('/')?
        .strip_prefix(service)?
        .strip_prefix('/')?;
    match method {
        "CreateTask" => Some("CreateTask"),
        "GetTask" => Some("GetTask"),
        "WatchTask" => Some("WatchTask"),
        "UploadImage" => Some("UploadImage"),
        "GetDownloadLinks" => Some("GetDownloadLinks"),
        "GetCredits" => Some("GetCredits"),
        "GenerateVideo" => Some("GenerateVideo"),
        "GetQuota" => Some("GetQuota"),
        _ => None,
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
