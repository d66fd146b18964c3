//! Every failure a caller can see, and the one conversion into a gRPC status
//! with `google.rpc` details (ErrorInfo always; BadRequest, RetryInfo where
//! they apply).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::kie::{Endpoint, KeySource, UpstreamError, UpstreamErrorKind};
use crate::task::{FieldViolation, InvalidRequest};

/// ErrorInfo domain of failures reported by kie.ai.
pub(crate) const UPSTREAM_DOMAIN: &str = "kie.ai";
/// ErrorInfo domain of failures the gateway decides itself.
pub(crate) const GATEWAY_DOMAIN: &str = "hailuo-gateway";

/// kie.ai's rate limit window; it sends no Retry-After.
const RATE_LIMIT_RETRY: Duration = Duration::from_secs(10);
const MAINTENANCE_RETRY: Duration = Duration::from_secs(30);
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);
/// kie.ai calls back when a task ends, minutes after it was created: a
/// retry sooner than this only finds the same answer.
const CALLBACK_RETRY: Duration = Duration::from_secs(5);

/// Everything that can make a gateway call fail.
#[derive(Clone, Debug)]
pub enum GatewayError {
    /// The request is malformed; nothing was sent upstream.
    InvalidArgument(Vec<FieldViolation>),
    /// Key pass-through is on and the caller sent no usable bearer key.
    MissingCallerKey(&'static str),
    /// Caller tokens are on and the call's token (or certificate) names no
    /// caller; the same answer for a missing and a wrong one.
    CallerUnauthenticated,
    /// A caller's quota is used up; nothing was sent upstream.
    QuotaExceeded(QuotaExceeded),
    /// The caller has quotas and the store that counts them (Redis) cannot
    /// be reached: refused rather than let through; nothing was sent.
    QuotaUnavailable,
    /// kie.ai (or the way to it) failed.
    Upstream(UpstreamError),
    /// A watch gave up after its retry budget of failed upstream reads.
    WatchRetriesExhausted { attempts: u32, last: UpstreamError },
    /// The gateway is draining; the caller should re-attach elsewhere.
    ShuttingDown,
    /// The watch reached the gateway's maximum watch duration.
    WatchExpired,
    /// A request_id came back with different parameters.
    IdempotencyKeyReused { request_id: String },
    /// A createTask may have made a task whose id the gateway does not know.
    CreateOutcomeUnknown(OutcomeUnknown),
    /// A bug: the attempt died without an answer.
    Internal(&'static str),
    /// The store the replicas share (Redis) cannot be reached, so a
    /// request_id cannot be checked fleet-wide; nothing was sent upstream.
    CoordinationUnavailable,
    /// A failure another replica's attempt met, as its caller saw it.
    Relayed(Box<RelayedError>),
    /// Download links were asked for a task that has no video (yet).
    TaskNotSucceeded { state: crate::pb::TaskState },
    /// The caller's request stream broke off or carried a message that
    /// could not be read (tonic's status says which).
    RequestStream { code: Code, message: String },
    /// A request message above the server's decoding limit of `limit`
    /// bytes, refused before it was read.
    MessageTooLarge { limit: usize },
    /// A GenerateVideo stream without request_id ended with `cause` after
    /// its task was made: a repeat of the call would buy a second video, so
    /// the caller is pointed at WatchTask instead of told to retry.
    WatchInterrupted {
        task_id: String,
        cause: Box<GatewayError>,
    },
}

/// A failure as a caller sees it, in a form that can travel between
/// replicas: the status code, message, ErrorInfo and RetryInfo.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayedError {
    #[serde(rename = "c")]
    pub code: i32,
    #[serde(rename = "m")]
    pub message: String,
    #[serde(rename = "r")]
    pub reason: String,
    #[serde(rename = "d")]
    pub domain: String,
    #[serde(rename = "md", default)]
    pub metadata: HashMap<String, String>,
    /// RetryInfo's delay in milliseconds.
    #[serde(rename = "ry", default, skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<u64>,
}

impl RelayedError {
    pub fn of(error: &GatewayError) -> Self {
        let status = error.to_status();
        let details = status.get_error_details();
        let info = details.error_info();
        Self {
            code: status.code() as i32,
            message: status.message().to_owned(),
            reason: info.map(|i| i.reason.clone()).unwrap_or_default(),
            domain: info.map(|i| i.domain.clone()).unwrap_or_default(),
            metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
            retry_ms: details
                .retry_info()
                .and_then(|r| r.retry_delay)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn code(&self) -> Code {
        Code::from_i32(self.code)
    }
}

/// A quota a create would go over (from `callers::quota`).
#[derive(Clone, Debug)]
pub struct QuotaExceeded {
    pub caller: std::sync::Arc<str>,
    /// `creates_per_minute`, `creates_per_day` or `credits_per_day`: the
    /// callers file's own name for it.
    pub quota: &'static str,
    pub limit: String,
    /// Until the window that is full ends.
    pub frees_in: Duration,
}

/// A createTask that was sent and got no answer that can be read: kie.ai
/// may have made (and charged) the task.
#[derive(Clone, Debug)]
pub struct OutcomeUnknown {
    /// The caller's request_id, when it sent one.
    pub request_id: Option<String>,
    /// What went wrong, for the message (never the key).
    pub cause: String,
    /// A timeout (the gateway's, a proxy's 504, the caller's deadline).
    pub timed_out: bool,
    pub prospect: Prospect,
}

/// Whether, and how, the gateway may still learn the task id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prospect {
    /// No request_id: nothing ties a retry to this attempt.
    NoRequestId,
    /// The caller's deadline ended while the gateway still waits for
    /// kie.ai's answer.
    Answer,
    /// kie.ai's callback to the gateway will name the task.
    Callback,
    /// The gateway cannot learn it: the task calls back to the caller's own
    /// callback_url, or the gateway has no public callback URL.
    Never,
}

impl Prospect {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoRequestId => "none",
            Self::Answer => "answer",
            Self::Callback => "callback",
            Self::Never => "never",
        }
    }
}

impl From<InvalidRequest> for GatewayError {
    fn from(e: InvalidRequest) -> Self {
        Self::InvalidArgument(e.0)
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> Self {
        Self::Upstream(e)
    }
}

/// How bad an error is from the operator's point of view: what level to log
/// it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The caller's doing (bad input, unknown task, no credits).
    Caller,
    /// Transient trouble upstream.
    Transient,
    /// Needs an operator (the gateway's own key refused, kie.ai broken).
    Operator,
}

impl GatewayError {
    pub fn severity(&self) -> Severity {
        match self {
            Self::InvalidArgument(_) | Self::MissingCallerKey(_) => Severity::Caller,
            Self::CallerUnauthenticated | Self::QuotaExceeded(_) => Severity::Caller,
            Self::QuotaUnavailable => Severity::Transient,
            Self::RequestStream { .. } | Self::TaskNotSucceeded { .. } => Severity::Caller,
            Self::MessageTooLarge { .. } => Severity::Caller,
            Self::ShuttingDown | Self::WatchRetriesExhausted { .. } => Severity::Transient,
            Self::WatchExpired | Self::IdempotencyKeyReused { .. } => Severity::Caller,
            Self::Internal(_) => Severity::Operator,
            Self::WatchInterrupted { cause, .. } => cause.severity(),
            Self::CreateOutcomeUnknown(_) => Severity::Transient,
            // Degraded, not down: the operator sees Redis's own alerts.
            Self::CoordinationUnavailable => Severity::Transient,
            Self::Relayed(e) => match e.code() {
                Code::Internal | Code::Unknown => Severity::Operator,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                    Severity::Transient
                }
                _ => Severity::Caller,
            },
            Self::Upstream(e) => match classify(e).code {
                Code::Internal | Code::Unknown => Severity::Operator,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                    Severity::Transient
                }
                _ => Severity::Caller,
            },
        }
    }

    /// The gRPC status a caller sees.
    pub fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        match self {
            Self::InvalidArgument(violations) => {
                let names: Vec<&str> = violations.iter().map(|v| v.field).collect();
                details.set_bad_request(
                    violations
                        .iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description.clone()))
                        .collect::<Vec<_>>(),
                );
                details.set_error_info(
                    "INVALID_REQUEST",
                    GATEWAY_DOMAIN,
                    HashMap::from([("fields".to_string(), names.join(","))]),
                );
                let message = violations
                    .iter()
                    .map(|v| v.description.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {message}"),
                    details,
                )
            }
            Self::CallerUnauthenticated => {
                details.set_error_info(CALLER_UNAUTHENTICATED, GATEWAY_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::Unauthenticated,
                    "this gateway takes calls from known callers only: send \
                     `authorization: Bearer <caller token>` metadata",
                    details,
                )
            }
            Self::QuotaExceeded(exceeded) => {
                details.set_error_info(
                    QUOTA_EXCEEDED,
                    GATEWAY_DOMAIN,
                    HashMap::from([
                        ("caller".to_string(), exceeded.caller.to_string()),
                        ("quota".to_string(), exceeded.quota.to_string()),
                        ("limit".to_string(), exceeded.limit.clone()),
                    ]),
                );
                details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                    exceeded.caller.to_string(),
                    format!("{} quota of {} used up", exceeded.quota, exceeded.limit),
                )]);
                details.set_retry_info(Some(exceeded.frees_in));
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "caller {} has used its {} quota ({}); nothing was sent to kie.ai: \
                         it frees in {} s",
                        exceeded.caller,
                        exceeded.quota,
                        exceeded.limit,
                        exceeded.frees_in.as_secs().max(1)
                    ),
                    details,
                )
            }
            Self::QuotaUnavailable => {
                details.set_error_info(QUOTA_UNAVAILABLE, GATEWAY_DOMAIN, HashMap::new());
                details.set_retry_info(Some(UNAVAILABLE_RETRY));
                Status::with_error_details(
                    Code::Unavailable,
                    "the gateway cannot reach the store that counts this caller's quotas, so \
                     it refuses the create rather than let it through; nothing was sent to \
                     kie.ai: retry (safe)",
                    details,
                )
            }
            Self::MissingCallerKey(why) => {
                details.set_error_info("MISSING_API_KEY", GATEWAY_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::Unauthenticated,
                    format!("{why}: send `authorization: Bearer <kie.ai key>` metadata"),
                    details,
                )
            }
            Self::ShuttingDown => {
                details.set_error_info("SHUTTING_DOWN", GATEWAY_DOMAIN, HashMap::new());
                details.set_retry_info(Some(Duration::ZERO));
                Status::with_error_details(
                    Code::Unavailable,
                    "the gateway is shutting down: call again to re-attach to another instance",
                    details,
                )
            }
            Self::IdempotencyKeyReused { request_id } => {
                details.set_error_info(
                    "IDEMPOTENCY_KEY_REUSED",
                    GATEWAY_DOMAIN,
                    HashMap::from([("request_id".to_string(), request_id.clone())]),
                );
                Status::with_error_details(
                    Code::AlreadyExists,
                    format!(
                        "request_id {request_id:?} was already used with different parameters: use a new request_id for a new task"
                    ),
                    details,
                )
            }
            Self::CreateOutcomeUnknown(unknown) => unknown.to_status(),
            Self::CoordinationUnavailable => {
                details.set_error_info(COORDINATION_UNAVAILABLE, GATEWAY_DOMAIN, HashMap::new());
                details.set_retry_info(Some(UNAVAILABLE_RETRY));
                Status::with_error_details(
                    Code::Unavailable,
                    "the gateway cannot reach the store its replicas share, so it cannot make \
                     sure a request_id buys one video; nothing was sent to kie.ai: retry with \
                     the same request_id (safe)",
                    details,
                )
            }
            Self::Relayed(e) => {
                details.set_error_info(e.reason.clone(), e.domain.clone(), e.metadata.clone());
                if let Some(ms) = e.retry_ms {
                    details.set_retry_info(Some(Duration::from_millis(ms)));
                }
                Status::with_error_details(e.code(), e.message.clone(), details)
            }
            Self::TaskNotSucceeded { state } => {
                let state = state.as_str_name();
                details.set_error_info(
                    "TASK_NOT_SUCCEEDED",
                    GATEWAY_DOMAIN,
                    HashMap::from([("state".to_string(), state.to_string())]),
                );
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!(
                        "the task has no video to link to: it is {state}, and links exist only \
                         for TASK_STATE_SUCCEEDED"
                    ),
                    details,
                )
            }
            // RESOURCE_EXHAUSTED, as gRPC's status codes say for a message
            // above the limit (tonic itself answers OUT_OF_RANGE). No
            // RetryInfo: the same message would be refused again.
            Self::MessageTooLarge { limit } => {
                details.set_error_info(
                    "MESSAGE_TOO_LARGE",
                    GATEWAY_DOMAIN,
                    HashMap::from([("limit_bytes".to_string(), limit.to_string())]),
                );
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "the request message is larger than the gateway's limit of {limit} bytes \
                         ({} MiB); an image may be at most 10 MiB",
                        limit / (1024 * 1024)
                    ),
                    details,
                )
            }
            Self::RequestStream { code, message } => {
                details.set_error_info("REQUEST_STREAM_FAILED", GATEWAY_DOMAIN, HashMap::new());
                Status::with_error_details(
                    *code,
                    format!("the request stream failed: {message}"),
                    details,
                )
            }
            Self::Internal(what) => {
                details.set_error_info("INTERNAL_ERROR", GATEWAY_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::Internal,
                    format!("the gateway failed: {what}"),
                    details,
                )
            }
            Self::WatchExpired => {
                details.set_error_info("WATCH_DURATION_EXCEEDED", GATEWAY_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::DeadlineExceeded,
                    "the watch reached the gateway's maximum watch duration: call WatchTask again to go on",
                    details,
                )
            }
            Self::WatchInterrupted { task_id, cause } => {
                let cause = cause.to_status();
                let cause_reason = cause
                    .get_details_error_info()
                    .map(|info| info.reason)
                    .unwrap_or_default();
                details.set_error_info(
                    "WATCH_INTERRUPTED",
                    GATEWAY_DOMAIN,
                    HashMap::from([
                        ("task_id".to_string(), task_id.clone()),
                        ("cause".to_string(), cause_reason),
                    ]),
                );
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!(
                        "the stream ended before task {task_id} did ({}): the task exists, \
                         follow it with WatchTask; calling GenerateVideo again without a \
                         request_id would buy a second video",
                        cause.message()
                    ),
                    details,
                )
            }
            Self::WatchRetriesExhausted { attempts, last } => {
                let mapped = classify(last);
                let mut metadata = upstream_metadata(last);
                metadata.insert("attempts".into(), attempts.to_string());
                details.set_error_info("UPSTREAM_RETRIES_EXHAUSTED", UPSTREAM_DOMAIN, metadata);
                details.set_retry_info(Some(last.retry_after.unwrap_or(UNAVAILABLE_RETRY)));
                Status::with_error_details(
                    Code::Unavailable,
                    format!(
                        "gave up watching after {attempts} failed reads of kie.ai; last: {}",
                        mapped.message
                    ),
                    details,
                )
            }
            Self::Upstream(e) => {
                let mapped = classify(e);
                details.set_error_info(mapped.reason, mapped.domain, upstream_metadata(e));
                if let Some(default) = mapped.retry {
                    details.set_retry_info(Some(e.retry_after.unwrap_or(default)));
                }
                Status::with_error_details(mapped.code, mapped.message, details)
            }
        }
    }
}

impl OutcomeUnknown {
    /// The code tells the caller whether a retry can help, and none is
    /// UNAVAILABLE unless a retry is safe (the same request_id): meshes
    /// retry UNAVAILABLE on their own.
    fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::from([
            ("endpoint".to_string(), "createTask".to_string()),
            ("cause".to_string(), self.cause.clone()),
            ("awaiting".to_string(), self.prospect.as_str().to_string()),
        ]);
        if let Some(id) = &self.request_id {
            metadata.insert("request_id".into(), id.clone());
        }
        details.set_error_info(CREATE_OUTCOME_UNKNOWN, UPSTREAM_DOMAIN, metadata);
        let cause = &self.cause;
        let (code, message) = match (&self.request_id, self.prospect) {
            (None, _) => (
                if self.timed_out {
                    Code::DeadlineExceeded
                } else {
                    Code::Unknown
                },
                format!(
                    "kie.ai may have created the task, but no answer came back ({cause}): \
                     calling again may create and charge a second video; \
                     set request_id to make retries safe"
                ),
            ),
            (Some(id), Prospect::Answer) => (
                Code::DeadlineExceeded,
                format!(
                    "the deadline ended before kie.ai answered the create for request_id {id:?} \
                     ({cause}); the gateway still waits for that answer: call again with the \
                     same request_id to get the task (it never creates a second one)"
                ),
            ),
            (Some(id), Prospect::Callback | Prospect::NoRequestId) => {
                details.set_retry_info(Some(CALLBACK_RETRY));
                (
                    Code::Unavailable,
                    format!(
                        "kie.ai may have created the task for request_id {id:?}, but its \
                         answer was lost ({cause}); the gateway will learn the task id from \
                         kie.ai's callback: retry with the same request_id (safe: it never \
                         creates a second task)"
                    ),
                )
            }
            (Some(id), Prospect::Never) => (
                Code::FailedPrecondition,
                format!(
                    "kie.ai may have created the task for request_id {id:?}, but its answer \
                     was lost ({cause}) and the gateway cannot learn the task id (kie.ai calls \
                     back to the caller's callback_url, or the gateway has none of its own); \
                     this request_id keeps this answer, and a new request_id may pay for a \
                     second video"
                ),
            ),
        };
        Status::with_error_details(code, message, details)
    }
}

/// ErrorInfo reason of a create that may have made a task.
pub(crate) const CREATE_OUTCOME_UNKNOWN: &str = "CREATE_OUTCOME_UNKNOWN";
/// ErrorInfo reasons of the caller check and the quotas.
pub const CALLER_UNAUTHENTICATED: &str = "CALLER_UNAUTHENTICATED";
pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
pub const QUOTA_UNAVAILABLE: &str = "QUOTA_UNAVAILABLE";
/// ErrorInfo reason of a request_id call refused because Redis is away.
pub const COORDINATION_UNAVAILABLE: &str = "COORDINATION_UNAVAILABLE";

fn upstream_metadata(e: &UpstreamError) -> HashMap<String, String> {
    let mut m = HashMap::with_capacity(3);
    m.insert("endpoint".into(), e.endpoint.to_string());
    match &e.kind {
        UpstreamErrorKind::Code { code, msg } => {
            m.insert("kie_code".into(), code.to_string());
            m.insert("kie_msg".into(), msg.clone());
        }
        UpstreamErrorKind::TaskNotFound { code, msg } => {
            m.insert("kie_code".into(), code.to_string());
            m.insert("kie_msg".into(), msg.clone());
        }
        UpstreamErrorKind::Unreachable { detail }
        | UpstreamErrorKind::ConnectionLost { detail }
        | UpstreamErrorKind::BadResponse { detail } => {
            m.insert("detail".into(), detail.clone());
        }
        UpstreamErrorKind::HttpStatus { status } => {
            m.insert("http_status".into(), status.to_string());
        }
        UpstreamErrorKind::Shed { reason } => {
            m.insert("limit".into(), (*reason).into());
        }
        UpstreamErrorKind::Timeout => {}
    }
    m
}

/// The gRPC face of an upstream failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapped {
    pub code: Code,
    pub reason: &'static str,
    /// `kie.ai`, or `hailuo-gateway` when the gateway turned the call away.
    pub domain: &'static str,
    /// Default RetryInfo delay when the failure is worth retrying; an
    /// upstream Retry-After replaces it.
    pub retry: Option<Duration>,
    pub message: String,
}

/// A mapping of a failure kie.ai (or the way to it) reported.
fn upstream(code: Code, reason: &'static str, retry: Option<Duration>, message: String) -> Mapped {
    Mapped {
        code,
        reason,
        domain: UPSTREAM_DOMAIN,
        retry,
        message,
    }
}

/// kie.ai's codes to gRPC: the table in the README.
pub fn classify(e: &UpstreamError) -> Mapped {
    match &e.kind {
        UpstreamErrorKind::Shed { reason } => Mapped {
            code: Code::ResourceExhausted,
            reason: "GATEWAY_OVERLOADED",
            domain: GATEWAY_DOMAIN,
            retry: Some(UNAVAILABLE_RETRY),
            message: format!(
                "the gateway is at its limit of upstream calls ({reason}): retry later"
            ),
        },
        UpstreamErrorKind::TaskNotFound { code, msg } => upstream(
            Code::NotFound,
            "TASK_NOT_FOUND",
            None,
            format!("task not found (kie.ai {code}: {msg})"),
        ),
        UpstreamErrorKind::Unreachable { detail } => upstream(
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            Some(UNAVAILABLE_RETRY),
            format!("kie.ai is unreachable: {detail}"),
        ),
        // For a read, which is safe to repeat; a createTask that ends this
        // way never gets here (see `CreateOutcome`).
        UpstreamErrorKind::ConnectionLost { detail } => upstream(
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            Some(UNAVAILABLE_RETRY),
            format!("the connection to kie.ai was lost: {detail}"),
        ),
        UpstreamErrorKind::HttpStatus { status } if (502..=504).contains(status) => upstream(
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            Some(UNAVAILABLE_RETRY),
            format!("kie.ai is unavailable: HTTP {status} from a proxy in front of it"),
        ),
        UpstreamErrorKind::HttpStatus { status } => {
            let reason = axum::http::StatusCode::from_u16(*status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no reason");
            let said = format!("(HTTP {status} {reason}, not kie.ai's JSON)");
            by_code(i64::from(*status), said, e)
        }
        UpstreamErrorKind::Timeout => upstream(
            Code::DeadlineExceeded,
            "UPSTREAM_TIMEOUT",
            None,
            "kie.ai did not answer in time".into(),
        ),
        UpstreamErrorKind::BadResponse { detail } => upstream(
            Code::Internal,
            "UPSTREAM_BAD_RESPONSE",
            None,
            format!("kie.ai sent an answer the gateway cannot read: {detail}"),
        ),
        UpstreamErrorKind::Code { code, msg } => {
            by_code(*code, format!("(kie.ai {code}: {msg})"), e)
        }
    }
}

/// The table of kie.ai's codes; `said` quotes what kie.ai (or the HTTP
/// status) said.
fn by_code(code: i64, said: String, e: &UpstreamError) -> Mapped {
    let upload = e.endpoint == Endpoint::FileUpload;
    match code {
        // The file API names the request bad; the gateway sent only an
        // image it had checked, so kie.ai refused that image.
        400 if upload => upstream(
            Code::InvalidArgument,
            "UPSTREAM_VALIDATION_FAILED",
            None,
            format!("kie.ai rejected the request {said}"),
        ),
        // The upload API not found where configured: the operator's to fix.
        404 | 405 if upload => upstream(
            Code::Internal,
            "UPSTREAM_MISCONFIGURED",
            None,
            format!(
                "kie.ai's file upload API is not at the configured address {said}; \
                 the gateway's operator must fix KIE_UPLOAD_BASE_URL"
            ),
        ),
        401 => match e.key_source {
            KeySource::Gateway => upstream(
                Code::Internal,
                "UPSTREAM_UNAUTHENTICATED",
                None,
                format!(
                    "kie.ai refused the gateway's API key {said}; the gateway's operator must fix KIE_API_KEY"
                ),
            ),
            KeySource::Caller => upstream(
                Code::Unauthenticated,
                "UPSTREAM_UNAUTHENTICATED",
                None,
                format!("kie.ai refused the API key from the authorization metadata {said}"),
            ),
        },
        402 => upstream(
            Code::FailedPrecondition,
            "INSUFFICIENT_CREDITS",
            None,
            format!("not enough kie.ai credits {said}"),
        ),
        404 => upstream(
            Code::NotFound,
            "TASK_NOT_FOUND",
            None,
            format!("not found {said}"),
        ),
        422 => upstream(
            Code::InvalidArgument,
            "UPSTREAM_VALIDATION_FAILED",
            None,
            format!("kie.ai rejected the request {said}"),
        ),
        429 | 433 => upstream(
            Code::ResourceExhausted,
            "UPSTREAM_RATE_LIMITED",
            Some(RATE_LIMIT_RETRY),
            format!("kie.ai rate limit reached {said}"),
        ),
        455 => upstream(
            Code::Unavailable,
            "UPSTREAM_MAINTENANCE",
            Some(MAINTENANCE_RETRY),
            format!("kie.ai is under maintenance {said}"),
        ),
        500 => upstream(
            Code::Internal,
            "UPSTREAM_INTERNAL_ERROR",
            None,
            format!("kie.ai had an internal error {said}"),
        ),
        501 => upstream(
            Code::Internal,
            "GENERATION_FAILED",
            None,
            format!("kie.ai could not generate {said}"),
        ),
        505 => upstream(
            Code::Unimplemented,
            "FEATURE_DISABLED",
            None,
            format!("kie.ai has this feature disabled {said}"),
        ),
        _ => upstream(
            Code::Unknown,
            "UPSTREAM_UNKNOWN_CODE",
            None,
            format!("kie.ai answered an unexpected code {said}"),
        ),
    }
}

/// gRPC's canonical code names, as in the spec.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kie::Endpoint;

    fn code(code: i64, key_source: KeySource) -> UpstreamError {
        UpstreamError {
            endpoint: Endpoint::CreateTask,
            key_source,
            retry_after: None,
            kind: UpstreamErrorKind::Code {
                code,
                msg: "m".into(),
            },
        }
    }

    #[test]
    fn kie_codes_map_to_grpc_codes_and_reasons() {
        let table = [
            (
                401,
                KeySource::Gateway,
                Code::Internal,
                "UPSTREAM_UNAUTHENTICATED",
            ),
            (
                401,
                KeySource::Caller,
                Code::Unauthenticated,
                "UPSTREAM_UNAUTHENTICATED",
            ),
            (
                402,
                KeySource::Gateway,
                Code::FailedPrecondition,
                "INSUFFICIENT_CREDITS",
            ),
            (404, KeySource::Gateway, Code::NotFound, "TASK_NOT_FOUND"),
            (
                422,
                KeySource::Gateway,
                Code::InvalidArgument,
                "UPSTREAM_VALIDATION_FAILED",
            ),
            (
                429,
                KeySource::Gateway,
                Code::ResourceExhausted,
                "UPSTREAM_RATE_LIMITED",
            ),
            (
                433,
                KeySource::Gateway,
                Code::ResourceExhausted,
                "UPSTREAM_RATE_LIMITED",
            ),
            (
                455,
                KeySource::Gateway,
                Code::Unavailable,
                "UPSTREAM_MAINTENANCE",
            ),
            (
                500,
                KeySource::Gateway,
                Code::Internal,
                "UPSTREAM_INTERNAL_ERROR",
            ),
            (501, KeySource::Gateway, Code::Internal, "GENERATION_FAILED"),
            (
                505,
                KeySource::Gateway,
                Code::Unimplemented,
                "FEATURE_DISABLED",
            ),
            (
                418,
                KeySource::Gateway,
                Code::Unknown,
                "UPSTREAM_UNKNOWN_CODE",
            ),
        ];
        for (kie, source, grpc, reason) in table {
            let mapped = classify(&code(kie, source));
            assert_eq!((mapped.code, mapped.reason), (grpc, reason), "kie {kie}");
            assert!(mapped.message.contains(&format!("kie.ai {kie}: m")));
        }
    }

    #[test]
    fn a_relayed_error_shows_as_the_original() {
        let error = GatewayError::Upstream(code(429, KeySource::Gateway));
        let original = error.to_status();
        let relayed = RelayedError::of(&error);
        let json = serde_json::to_string(&relayed).expect("serialises");
        let back: RelayedError = serde_json::from_str(&json).expect("parses");
        let shown = GatewayError::Relayed(Box::new(back)).to_status();
        assert_eq!(shown.code(), original.code());
        assert_eq!(shown.message(), original.message());
        let info = |s: &Status| {
            s.get_error_details()
                .error_info()
                .map(|i| (i.reason.clone(), i.domain.clone(), i.metadata.clone()))
        };
        assert_eq!(info(&shown), info(&original));
        assert_eq!(
            shown
                .get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay),
            Some(RATE_LIMIT_RETRY)
        );
    }

    #[test]
    fn rate_limits_carry_retry_info_honouring_retry_after() {
        let mut e = code(429, KeySource::Gateway);
        let status = GatewayError::Upstream(e.clone()).to_status();
        let retry = status.get_error_details().retry_info().cloned();
        assert_eq!(retry.and_then(|r| r.retry_delay), Some(RATE_LIMIT_RETRY));

        e.retry_after = Some(Duration::from_secs(3));
        let status = GatewayError::Upstream(e).to_status();
        let retry = status.get_error_details().retry_info().cloned();
        assert_eq!(
            retry.and_then(|r| r.retry_delay),
            Some(Duration::from_secs(3))
        );
    }
}
