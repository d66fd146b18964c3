//! How an upstream call failed, classified once where the answer is read.

use std::fmt;
use std::time::Duration;

/// The kie.ai endpoint a call went to; a metrics label and ErrorInfo field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateTask,
    RecordInfo,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTask => "createTask",
            Self::RecordInfo => "recordInfo",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose key an upstream call used: decides whether a 401 is the caller's
/// problem or the operator's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySource {
    Gateway,
    Caller,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// kie.ai answered a code other than 200: the JSON `code` when the body
    /// is JSON, the HTTP status otherwise.
    Code { code: i64, msg: String },
    /// recordInfo for a task kie.ai does not know (404, 422 "recordInfo is
    /// null", or `data: null`).
    TaskNotFound { code: i64, msg: String },
    /// No answer: connect error, reset, or a proxy's non-JSON 502/503/504.
    Unavailable { detail: String },
    /// No answer within the upstream timeout or the caller's deadline.
    Timeout,
    /// A success status with a body that cannot be read.
    BadResponse { detail: String },
    /// Never sent: the gateway's own upstream protection turned it away
    /// (see `gate`).
    Shed { reason: &'static str },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamError {
    pub endpoint: Endpoint,
    pub key_source: KeySource,
    /// From the upstream `Retry-After` header, when it sent one.
    pub retry_after: Option<Duration>,
    pub kind: UpstreamErrorKind,
}

impl UpstreamError {
    /// Worth another read: the same call may well succeed later.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            UpstreamErrorKind::Unavailable { .. }
            | UpstreamErrorKind::Timeout
            | UpstreamErrorKind::BadResponse { .. }
            | UpstreamErrorKind::Shed { .. } => true,
            UpstreamErrorKind::Code { code, .. } => matches!(code, 429 | 433 | 455 | 500..=599),
            UpstreamErrorKind::TaskNotFound { .. } => false,
        }
    }

    /// The kie code for metrics: the code kie.ai (or HTTP) answered, or a
    /// word for answers without one.
    pub fn code_label(&self) -> String {
        match &self.kind {
            UpstreamErrorKind::Code { code, .. } | UpstreamErrorKind::TaskNotFound { code, .. } => {
                code.to_string()
            }
            UpstreamErrorKind::Unavailable { .. } => "unavailable".into(),
            UpstreamErrorKind::Timeout => "timeout".into(),
            UpstreamErrorKind::BadResponse { .. } => "bad_response".into(),
            UpstreamErrorKind::Shed { .. } => "shed".into(),
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            UpstreamErrorKind::Code { code, msg } => {
                write!(f, "{} answered code {code}: {msg}", self.endpoint)
            }
            UpstreamErrorKind::TaskNotFound { code, msg } => {
                write!(
                    f,
                    "{} found no such task (code {code}: {msg})",
                    self.endpoint
                )
            }
            UpstreamErrorKind::Unavailable { detail } => {
                write!(f, "{} unreachable: {detail}", self.endpoint)
            }
            UpstreamErrorKind::Timeout => write!(f, "{} timed out", self.endpoint),
            UpstreamErrorKind::BadResponse { detail } => {
                write!(f, "{} sent an unreadable answer: {detail}", self.endpoint)
            }
            UpstreamErrorKind::Shed { reason } => {
                write!(
                    f,
                    "{} not sent: gateway overloaded ({reason})",
                    self.endpoint
                )
            }
        }
    }
}

impl std::error::Error for UpstreamError {}
