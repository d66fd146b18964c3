//! The kie.ai upstream client: one pooled HTTP client, one method per
//! endpoint, every answer classified into a result or an `UpstreamError`.

mod error;
mod gate;
mod multipart;
pub mod wire;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tracing::Instrument;
use url::Url;

pub use error::{CreateOutcome, Endpoint, KeySource, UpstreamError, UpstreamErrorKind};
pub use gate::{CreateSlot, SharedCreateWindow};

use crate::config::{Secret, UpstreamSettings};
use crate::metrics::Metrics;
use crate::otel;
use crate::task::{CreateTaskInput, TaskId};
pub use multipart::Multipart;
use wire::{CreateTaskBody, Created, Envelope, Record, Uploaded};

/// kie.ai sits behind a CDN that refuses requests without a User-Agent.
pub(crate) const USER_AGENT: &str = concat!("hailuo-gateway/", env!("CARGO_PKG_VERSION"));

/// The key an upstream call is made with, and whose it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Credential {
    pub(crate) key: Secret,
    pub(crate) source: KeySource,
    /// `Bearer <key>`, made once; marked sensitive so that it never prints.
    authorization: HeaderValue,
}

impl Credential {
    /// `None` when the key has characters a header cannot carry.
    pub(crate) fn new(key: Secret, source: KeySource) -> Option<Self> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?;
        authorization.set_sensitive(true);
        Some(Self {
            key,
            source,
            authorization,
        })
    }
}

#[derive(Clone)]
pub struct KieClient {
    http: reqwest::Client,
    gate: Arc<gate::Gate>,
    create_url: Url,
    record_url: Url,
    /// On the file API's own host (`KIE_UPLOAD_BASE_URL`).
    upload_url: Url,
    download_url: Url,
    credit_url: Url,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl KieClient {
    pub fn new(settings: &UpstreamSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let http = crate::http_client::builder()?
            .user_agent(USER_AGENT)
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            // An API call is answered, not redirected: a 3xx is an answer to
            // classify, and a POST must never be replayed elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        // Parsed once here rather than per call.
        let create_url = settings.base_url.join("api/v1/jobs/createTask")?;
        let record_url = settings.base_url.join("api/v1/jobs/recordInfo")?;
        let upload_url = settings.upload_base_url.join("api/file-stream-upload")?;
        let download_url = settings.base_url.join("api/v1/common/download-url")?;
        let credit_url = settings.base_url.join("api/v1/chat/credit")?;
        Ok(Self {
            http,
            gate: Arc::new(gate::Gate::new(settings.limits, metrics.clone())),
            create_url,
            record_url,
            upload_url,
            download_url,
            credit_url,
            timeout: settings.timeout,
            metrics,
        })
    }

    /// The registry this client counts its calls in.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Keeps the createTask window fleet-wide (Redis configured).
    pub fn join_fleet(&self, fleet: Arc<dyn SharedCreateWindow>) {
        self.gate.join_fleet(fleet);
    }

    /// Starts a generation; returns kie.ai's task id. Never retried: a retry
    /// could buy a second video. `admit_by` bounds only the wait for the
    /// gateway's own limits (nothing is sent if it passes); once sent, the
    /// call waits for kie.ai's answer up to the upstream timeout, whatever
    /// the caller's deadline, since only that answer says whether a task
    /// exists.
    pub(crate) async fn create_task(
        &self,
        credential: &Credential,
        input: &CreateTaskInput,
        call_back_url: Option<&str>,
        admit_by: Option<Duration>,
    ) -> Result<String, UpstreamError> {
        let endpoint = Endpoint::CreateTask;
        // Serialising borrowed strings and bools cannot fail, and the
        // creator uploads every image first; were either to fail, the
        // request was never sent, and the gateway's shedding says as much.
        let not_sent = |reason| UpstreamError {
            endpoint,
            key_source: credential.source,
            retry_after: None,
            kind: UpstreamErrorKind::Shed { reason },
        };
        let body = CreateTaskBody::new(input, call_back_url)
            .ok_or_else(|| not_sent("an image was not uploaded"))?;
        let body =
            serde_json::to_vec(&body).map_err(|_| not_sent("request body could not be encoded"))?;
        let request = self
            .http
            .request(Method::POST, self.create_url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        let answer: Answer<Created> = self
            .send(endpoint, credential, request, admit_by, None, 1)
            .await?;
        let created = answer
            .data
            .ok_or_else(|| bad_response(endpoint, credential, "code 200 without data".into()))?
            .map_err(|e| bad_response(endpoint, credential, format!("data: {e}")))?;
        created
            .task_id
            .ok_or_else(|| bad_response(endpoint, credential, "data has no taskId".into()))
    }

    /// Uploads a file to kie.ai's storage (free, on its own host) under
    /// `upload_path`/`file_name`: the URL it can be fetched at. Not gated
    /// by kie.ai's API limits (the caller bounds uploads itself); answered
    /// within `deadline`, capped by the upstream timeout.
    pub(crate) async fn upload_file(
        &self,
        credential: &Credential,
        upload: FileUpload<'_>,
        deadline: Option<Duration>,
    ) -> Result<String, UpstreamError> {
        let endpoint = Endpoint::FileUpload;
        let body = Multipart::upload(upload.path, upload.file_name, upload.mime, upload.file);
        let request = self
            .http
            .request(Method::POST, self.upload_url.clone())
            .header(CONTENT_TYPE, body.content_type())
            .header(CONTENT_LENGTH, body.content_length())
            .body(reqwest::Body::wrap(body));
        // Not behind the gate: the uploader's own slots bound uploads.
        let span = otel::upstream_span(endpoint.as_str(), 1);
        let started = Instant::now();
        let answer = self
            .exchange::<Uploaded>(endpoint, credential, request, deadline, &span)
            .instrument(span.clone())
            .await;
        self.count(endpoint, &answer, started, &span);
        let uploaded = answer?
            .data
            .ok_or_else(|| bad_response(endpoint, credential, "code 200 without data".into()))?
            .map_err(|e| bad_response(endpoint, credential, format!("data: {e}")))?;
        let url = uploaded
            .download_url
            .ok_or_else(|| bad_response(endpoint, credential, "data has no downloadUrl".into()))?;
        // It goes to createTask as image_url, which must be a web URL.
        match Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(url),
            _ => Err(bad_response(
                endpoint,
                credential,
                "downloadUrl is not an http(s) URL".into(),
            )),
        }
    }

    /// A fresh link (valid 20 minutes at kie.ai) to `result_url`, a result
    /// URL of a task the gateway read itself. A read: safe to repeat.
    pub(crate) async fn fresh_link(
        &self,
        credential: &Credential,
        result_url: &str,
        deadline: Option<Duration>,
    ) -> Result<String, UpstreamError> {
        let endpoint = Endpoint::DownloadUrl;
        let body = serde_json::json!({ "url": result_url }).to_string();
        let request = self
            .http
            .request(Method::POST, self.download_url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        let answer: Answer<wire::Link> = self
            .send(endpoint, credential, request, deadline, deadline, 1)
            .await?;
        let link = answer
            .data
            .ok_or_else(|| bad_response(endpoint, credential, "code 200 without data".into()))?
            .map_err(|e| bad_response(endpoint, credential, format!("data: {e}")))?;
        match link.url() {
            Some(url) if Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) => {
                Ok(url.to_owned())
            }
            _ => Err(bad_response(
                endpoint,
                credential,
                "data is not an http(s) URL".into(),
            )),
        }
    }

    /// The account's remaining credits.
    pub(crate) async fn credits(
        &self,
        credential: &Credential,
        deadline: Option<Duration>,
    ) -> Result<f64, UpstreamError> {
        let endpoint = Endpoint::Credit;
        let request = self.http.request(Method::GET, self.credit_url.clone());
        let answer: Answer<wire::Credits> = self
            .send(endpoint, credential, request, deadline, deadline, 1)
            .await?;
        answer
            .data
            .ok_or_else(|| bad_response(endpoint, credential, "code 200 without data".into()))?
            .map_err(|e| bad_response(endpoint, credential, format!("data: {e}")))?
            .value()
            .ok_or_else(|| bad_response(endpoint, credential, "data is not a number".into()))
    }

    /// recordInfo's `data` as kie.ai sent it, `param` (the create request
    /// it echoes) and `creditsConsumed` included; `attempt` counts the tries
    /// of this read (1 for the first), for its trace span.
    pub(crate) async fn record(
        &self,
        credential: &Credential,
        task_id: &TaskId,
        deadline: Option<Duration>,
        attempt: u32,
    ) -> Result<Record, UpstreamError> {
        let endpoint = Endpoint::RecordInfo;
        let mut url = self.record_url.clone();
        url.query_pairs_mut()
            .append_pair("taskId", task_id.as_str());
        let request = self.http.request(Method::GET, url);
        let answer: Answer<Record> = match self
            .send(endpoint, credential, request, deadline, deadline, attempt)
            .await
        {
            // kie.ai answers an unknown task with 422 "recordInfo is null"
            // live, 404 in its docs.
            Err(UpstreamError {
                kind: UpstreamErrorKind::Code { code, msg },
                ..
            }) if code == 404 || code == 422 => {
                return Err(not_found(credential, code, msg));
            }
            other => other?,
        };
        let Some(data) = answer.data else {
            return Err(not_found(credential, 200, answer.reason));
        };
        data.map_err(|e| bad_response(endpoint, credential, format!("data: {e}")))
    }

    /// One call: admitted by the gate within `admit_by`, then answered
    /// within `deadline` (both capped by the upstream timeout); `attempt`
    /// is for its trace span.
    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        credential: &Credential,
        request: reqwest::RequestBuilder,
        admit_by: Option<Duration>,
        deadline: Option<Duration>,
        attempt: u32,
    ) -> Result<Answer<T>, UpstreamError> {
        let span = otel::upstream_span(endpoint.as_str(), attempt);
        let started = Instant::now();
        let admitted = self
            .gate
            .admit(endpoint, admit_by)
            .instrument(span.clone())
            .await;
        otel::gate_waited(&span, started.elapsed());
        let _permit = match admitted {
            Ok(permit) => permit,
            Err(shed) => {
                otel::upstream_answered(&span, "shed", false);
                return Err(UpstreamError {
                    endpoint,
                    key_source: credential.source,
                    retry_after: Some(shed.retry_after),
                    kind: UpstreamErrorKind::Shed {
                        reason: shed.reason,
                    },
                });
            }
        };
        // Time spent waiting at the gate comes out of the caller's deadline.
        let deadline = deadline.map(|d| d.saturating_sub(started.elapsed()));
        let answer = self
            .exchange(endpoint, credential, request, deadline, &span)
            .instrument(span.clone())
            .await;
        self.count(endpoint, &answer, started, &span);
        answer
    }

    fn count<T>(
        &self,
        endpoint: Endpoint,
        answer: &Result<T, UpstreamError>,
        started: Instant,
        span: &tracing::Span,
    ) {
        let code = match answer {
            Ok(_) => Cow::Borrowed("200"),
            Err(e) => Cow::Owned(e.code_label()),
        };
        otel::upstream_answered(span, &code, answer.is_ok());
        self.metrics
            .upstream_call(endpoint.as_str(), code, started.elapsed());
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        credential: &Credential,
        request: reqwest::RequestBuilder,
        deadline: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Answer<T>, UpstreamError> {
        let mut request = request;
        for (name, value) in otel::trace_headers(span) {
            request = request.header(name, value);
        }
        let timeout = deadline.map_or(self.timeout, |d| d.min(self.timeout));
        let fail = |kind| UpstreamError {
            endpoint,
            key_source: credential.source,
            retry_after: None,
            kind,
        };
        let response = request
            .header(AUTHORIZATION, credential.authorization.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| fail(transport_failure(&e)))?;
        let status = response.status();
        otel::upstream_status(span, status.as_u16());
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .bytes()
            .await
            .map_err(|e| fail(transport_failure(&e)))?;
        Answer::read(status, &body)
            .map_err(|kind| UpstreamError {
                endpoint,
                key_source: credential.source,
                retry_after,
                kind,
            })
            .map_err(|e| redact(e, &credential.key))
    }
}

/// One file for `upload_file`.
pub(crate) struct FileUpload<'a> {
    /// kie.ai's `uploadPath`: no leading or trailing slash.
    pub(crate) path: &'a str,
    pub(crate) file_name: &'a str,
    pub(crate) mime: &'static str,
    pub(crate) file: Bytes,
}

/// An answer whose code was 200, read once, its `data` parsed as `T`.
struct Answer<T> {
    /// `data`, unless absent or null; a parse failure is kept for the
    /// caller to report (the call itself was answered).
    data: Option<Result<T, serde_json::Error>>,
    /// kie.ai's `msg`, kept only when there is no `data` to explain.
    reason: String,
}

impl<T: DeserializeOwned> Answer<T> {
    /// Classifies an answer: the JSON `code` when the body is JSON, the HTTP
    /// status otherwise.
    fn read(status: StatusCode, body: &[u8]) -> Result<Self, UpstreamErrorKind> {
        let envelope = serde_json::from_slice::<Envelope>(body).ok();
        match envelope.as_ref().and_then(|env| Some((env, env.code()?))) {
            Some((env, 200)) => {
                // Parsed from the envelope's borrowed slice of `body`.
                let data = env.data().map(|raw| serde_json::from_str(raw.get()));
                let reason = if data.is_none() {
                    env.reason()
                } else {
                    String::new()
                };
                Ok(Self { data, reason })
            }
            Some((env, code)) => Err(UpstreamErrorKind::Code {
                code,
                msg: env.reason(),
            }),
            // No usable JSON code: fall back on the HTTP status.
            None if status.is_success() => Err(UpstreamErrorKind::BadResponse {
                detail: format!(
                    "HTTP {} with {} bytes that are not kie.ai's JSON",
                    status.as_u16(),
                    body.len()
                ),
            }),
            None => Err(UpstreamErrorKind::HttpStatus {
                status: status.as_u16(),
            }),
        }
    }
}

/// Whether the request left the gateway decides what a failure means for a
/// createTask: a connect error (refused, connect timeout, TLS) sent nothing;
/// anything later may have reached kie.ai.
fn transport_failure(e: &reqwest::Error) -> UpstreamErrorKind {
    // The innermost cause says what happened ("connection refused",
    // "connection reset"); the URL adds nothing for the caller.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if e.is_connect() {
        UpstreamErrorKind::Unreachable { detail }
    } else if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else {
        UpstreamErrorKind::ConnectionLost { detail }
    }
}

fn bad_response(endpoint: Endpoint, credential: &Credential, detail: String) -> UpstreamError {
    UpstreamError {
        endpoint,
        key_source: credential.source,
        retry_after: None,
        kind: UpstreamErrorKind::BadResponse { detail },
    }
}

fn not_found(credential: &Credential, code: i64, msg: String) -> UpstreamError {
    UpstreamError {
        endpoint: Endpoint::RecordInfo,
        key_source: credential.source,
        retry_after: None,
        kind: UpstreamErrorKind::TaskNotFound { code, msg },
    }
}

/// kie.ai's message goes to callers and logs: make sure it cannot carry the
/// key back.
fn redact(mut e: UpstreamError, key: &Secret) -> UpstreamError {
    if let UpstreamErrorKind::Code { msg, .. } | UpstreamErrorKind::TaskNotFound { msg, .. } =
        &mut e.kind
        && msg.contains(key.expose())
    {
        *msg = msg.replace(key.expose(), "<redacted>");
    }
    e
}
