//! How an upstream call failed, classified once where the answer is read.

use std::fmt;
use std::time::Duration;

/// The kie.ai endpoint a call went to; a metrics label and ErrorInfo field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateTask,
    RecordInfo,
    /// kie.ai's file-stream upload, on its own host.
    FileUpload,
    /// A fresh link to a result URL (`common/download-url`).
    DownloadUrl,
    /// The account's credits (`chat/credit`).
    Credit,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTask => "createTask",
            Self::RecordInfo => "recordInfo",
            Self::FileUpload => "fileStreamUpload",
            Self::DownloadUrl => "downloadUrl",
            Self::Credit => "credit",
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

/// What a failed createTask means for the caller's money.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// No task exists: calling again is safe.
    NotCreated,
    /// kie.ai may have made (and charged) a task whose id was lost.
    MaybeCreated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// kie.ai answered a code other than 200: the JSON `code` when the body
    /// is JSON, the HTTP status otherwise.
    Code { code: i64, msg: String },
    /// recordInfo for a task kie.ai does not know (404, 422 "recordInfo is
    /// null", or `data: null`).
    TaskNotFound { code: i64, msg: String },
    /// Nothing was sent: the connection could not be made (refused, the
    /// connect timed out, the name did not resolve, TLS failed).
    Unreachable { detail: String },
    /// The request was sent, in whole or in part, and the connection failed
    /// (reset, closed) before an answer could be read.
    ConnectionLost { detail: String },
    /// An answer that is not kie.ai's JSON, such as a CDN's or proxy's error
    /// page: only its HTTP status (never 2xx: that is `BadResponse`) says
    /// anything.
    HttpStatus { status: u16 },
    /// The request was sent and no answer came within the upstream timeout
    /// or the caller's deadline.
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
    pub(crate) fn is_transient(&self) -> bool {
        match &self.kind {
            UpstreamErrorKind::Unreachable { .. }
            | UpstreamErrorKind::ConnectionLost { .. }
            | UpstreamErrorKind::Timeout
            | UpstreamErrorKind::BadResponse { .. }
            | UpstreamErrorKind::Shed { .. } => true,
            UpstreamErrorKind::Code { code, .. } => matches!(code, 429 | 433 | 455 | 500..=599),
            UpstreamErrorKind::HttpStatus { status } => matches!(status, 429 | 500..=599),
            UpstreamErrorKind::TaskNotFound { .. } => false,
        }
    }

    /// Whether a failed createTask may have made a task at kie.ai. The one
    /// place that decides it: a maybe-created failure must never be repeated
    /// into a second paid video.
    pub fn create_outcome(&self) -> CreateOutcome {
        match &self.kind {
            // kie.ai read the request and said no.
            UpstreamErrorKind::Code { .. } | UpstreamErrorKind::TaskNotFound { .. } => {
                CreateOutcome::NotCreated
            }
            // Nothing left the gateway.
            UpstreamErrorKind::Unreachable { .. } | UpstreamErrorKind::Shed { .. } => {
                CreateOutcome::NotCreated
            }
            // A CDN or proxy refused or redirected the request: it never
            // reached kie.ai's API.
            UpstreamErrorKind::HttpStatus { status } if *status < 500 => CreateOutcome::NotCreated,
            // A 5xx page (502/503/504...) comes from a proxy that may well
            // have passed the request on; a lost connection, a timeout after
            // sending or an unreadable 2xx all leave kie.ai's answer unknown.
            UpstreamErrorKind::HttpStatus { .. }
            | UpstreamErrorKind::ConnectionLost { .. }
            | UpstreamErrorKind::Timeout
            | UpstreamErrorKind::BadResponse { .. } => CreateOutcome::MaybeCreated,
        }
    }

    /// A timeout, the gateway's own or a proxy's 504.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            UpstreamErrorKind::Timeout | UpstreamErrorKind::HttpStatus { status: 504 }
        )
    }

    /// The kie code for metrics: the code kie.ai (or HTTP) answered, or a
    /// word for answers without one.
    pub(crate) fn code_label(&self) -> String {
        match &self.kind {
            UpstreamErrorKind::Code { code, .. } | UpstreamErrorKind::TaskNotFound { code, .. } => {
                code.to_string()
            }
            UpstreamErrorKind::HttpStatus { status } => format!("http_{status}"),
            UpstreamErrorKind::Unreachable { .. } => "unreachable".into(),
            UpstreamErrorKind::ConnectionLost { .. } => "connection_lost".into(),
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
            UpstreamErrorKind::Unreachable { detail } => {
                write!(f, "{} unreachable: {detail}", self.endpoint)
            }
            UpstreamErrorKind::ConnectionLost { detail } => {
                write!(
                    f,
                    "{} connection lost after sending: {detail}",
                    self.endpoint
                )
            }
            UpstreamErrorKind::HttpStatus { status } => {
                write!(
                    f,
                    "{} answered HTTP {status} without kie.ai's JSON",
                    self.endpoint
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: UpstreamErrorKind) -> CreateOutcome {
        UpstreamError {
            endpoint: Endpoint::CreateTask,
            key_source: KeySource::Gateway,
            retry_after: None,
            kind,
        }
        .create_outcome()
    }

    fn detail() -> String {
        "d".into()
    }

    use CreateOutcome::{MaybeCreated, NotCreated};

    #[test]
    fn a_json_code_from_kie_means_not_created() {
        for code in [401, 402, 422, 429, 455, 500, 501, 505] {
            let msg = detail();
            assert_eq!(outcome(UpstreamErrorKind::Code { code, msg }), NotCreated);
        }
    }

    #[test]
    fn a_refused_or_timed_out_connect_means_not_created() {
        let kind = UpstreamErrorKind::Unreachable { detail: detail() };
        assert_eq!(outcome(kind), NotCreated);
    }

    #[test]
    fn the_gateways_own_shedding_means_not_created() {
        let kind = UpstreamErrorKind::Shed { reason: "queue" };
        assert_eq!(outcome(kind), NotCreated);
    }

    #[test]
    fn a_non_json_4xx_or_3xx_from_a_cdn_means_not_created() {
        for status in [301, 400, 403, 404, 413, 429] {
            assert_eq!(
                outcome(UpstreamErrorKind::HttpStatus { status }),
                NotCreated
            );
        }
    }

    #[test]
    fn a_timeout_after_sending_means_maybe_created() {
        assert_eq!(outcome(UpstreamErrorKind::Timeout), MaybeCreated);
    }

    #[test]
    fn a_reset_or_close_after_sending_means_maybe_created() {
        let kind = UpstreamErrorKind::ConnectionLost { detail: detail() };
        assert_eq!(outcome(kind), MaybeCreated);
    }

    #[test]
    fn any_non_json_5xx_page_means_maybe_created() {
        for status in [500, 502, 503, 504, 520, 599] {
            assert_eq!(
                outcome(UpstreamErrorKind::HttpStatus { status }),
                MaybeCreated
            );
        }
    }

    #[test]
    fn an_unparseable_2xx_means_maybe_created() {
        let kind = UpstreamErrorKind::BadResponse { detail: detail() };
        assert_eq!(outcome(kind), MaybeCreated);
    }
}
