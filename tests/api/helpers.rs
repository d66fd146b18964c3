use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hailuo_gateway::config::{Backoff, PollCadence, Secret, Settings};
use hailuo_gateway::hub::TaskHub;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{CreateTaskRequest, Task};
use hailuo_gateway::pb::{GetTaskRequest, TaskState, WatchTaskRequest, WatchTaskResponse};
use hailuo_gateway::startup::Application;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{IntoRequest, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

// === The gateway, as its callers see it ===

pub const TEST_KEY: &str = "test-key-1234567890";
pub const CREATE_PATH: &str = "/api/v1/jobs/createTask";
pub const RECORD_PATH: &str = "/api/v1/jobs/recordInfo";

/// How long a watch may go without a message before a test calls it hung:
/// above the binary's default slow cadence (15 s), which applies to a
/// record created long ago.
const STREAM_HANG: Duration = Duration::from_secs(30);

/// A caller of one gateway: a client of its gRPC API and the addresses of
/// its HTTP listeners (callbacks; admin, for metrics), with one typed helper
/// for each thing a test does to it.
pub struct Caller {
    pub client: VideoGenerationClient<Channel>,
    grpc_url: String,
    http_url: String,
    admin_url: String,
    http: OnceLock<reqwest::Client>,
}

impl Caller {
    /// Connects to the gateway whose listeners (gRPC, callbacks, admin) are
    /// at these `http://` URLs.
    pub async fn connect(grpc_url: String, http_url: String, admin_url: String) -> Self {
        let client = VideoGenerationClient::connect(grpc_url.clone())
            .await
            .expect("connect to gateway");
        Self {
            client,
            grpc_url,
            http_url,
            admin_url,
            http: OnceLock::new(),
        }
    }

    /// The gateway's gRPC URL.
    pub fn grpc_url(&self) -> String {
        self.grpc_url.clone()
    }

    /// A client on a connection of its own.
    pub async fn new_client(&self) -> VideoGenerationClient<Channel> {
        VideoGenerationClient::connect(self.grpc_url.clone())
            .await
            .expect("connect")
    }

    /// CreateTask: kie.ai's task id, or the status the caller got.
    pub async fn create(
        &self,
        request: impl IntoRequest<CreateTaskRequest>,
    ) -> Result<String, Status> {
        let created = self.client.clone().create_task(request).await?;
        Ok(created.into_inner().task_id)
    }

    /// GetTask: the task, or the status the caller got.
    pub async fn get(&self, task_id: &str) -> Result<Task, Status> {
        let got = self.client.clone().get_task(get_request(task_id)).await?;
        Ok(got.into_inner().task.expect("a task in the answer"))
    }

    /// WatchTask of a task the test expects to be watched: its stream.
    pub async fn watch(&self, task_id: &str) -> Streaming<WatchTaskResponse> {
        self.try_watch(watch_request(task_id)).await.expect("watch")
    }

    /// WatchTask: the stream, or the status it was refused with.
    pub async fn try_watch(
        &self,
        request: impl IntoRequest<WatchTaskRequest>,
    ) -> Result<Streaming<WatchTaskResponse>, Status> {
        let watching = self.client.clone().watch_task(request).await?;
        Ok(watching.into_inner())
    }

    /// `path` on the gateway's HTTP listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("{}{path}", self.http_url)
    }

    /// `path` on the gateway's admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin_url)
    }

    /// The URL the gateway takes kie.ai's callbacks on.
    pub fn callback_url(&self) -> String {
        self.http_url("/callbacks/kie")
    }

    /// One HTTP client per gateway: building one loads the platform's TLS
    /// roots (tens of ms), so a test that times a request calls this first.
    pub fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(http_client)
    }

    /// POSTs a kie.ai callback (a JSON `body`) to `url` with `headers`: the
    /// HTTP status, or 0 when the gateway closed the connection first.
    pub async fn post_callback(
        &self,
        url: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, String)],
    ) -> u16 {
        let mut request = self
            .http()
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// POSTs `body` to the gateway's callback URL as kie.ai signs it at
    /// `timestamp`: the HTTP status.
    pub async fn post_signed_callback(&self, body: &Value, timestamp: u64, signature: &str) -> u16 {
        let headers = [
            ("x-webhook-timestamp", timestamp.to_string()),
            ("x-webhook-signature", signature.to_string()),
        ];
        self.post_callback(&self.callback_url(), body.to_string(), &headers)
            .await
    }

    /// The gateway's /metrics text (on the admin listener).
    pub async fn metrics(&self) -> String {
        self.http()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of one series (`name` or `name{labels}`) in /metrics, if
    /// the gateway shows it.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.trim().parse().expect("a number"))
    }
}

pub fn get_request(task_id: &str) -> GetTaskRequest {
    GetTaskRequest {
        task_id: task_id.into(),
    }
}

pub fn watch_request(task_id: &str) -> WatchTaskRequest {
    WatchTaskRequest {
        task_id: task_id.into(),
    }
}

/// `message` under the caller's deadline `timeout`.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The next message of an open stream.
pub async fn next_message(stream: &mut Streaming<WatchTaskResponse>) -> WatchTaskResponse {
    tokio::time::timeout(STREAM_HANG, stream.message())
        .await
        .expect("a message in time")
        .expect("ok")
        .expect("the stream stays open")
}

/// Reads the stream to its end: every message (heartbeats too) and how it
/// ended.
pub async fn drain(
    stream: &mut Streaming<WatchTaskResponse>,
) -> (Vec<WatchTaskResponse>, Result<(), Status>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(STREAM_HANG, stream.message()).await {
            Ok(Ok(Some(m))) => messages.push(m),
            Ok(Ok(None)) => return (messages, Ok(())),
            Ok(Err(status)) => return (messages, Err(status)),
            Err(_) => panic!("watch hung after {} messages", messages.len()),
        }
    }
}

/// The states the messages reported, heartbeats left out.
pub fn states(messages: &[WatchTaskResponse]) -> Vec<TaskState> {
    messages
        .iter()
        .filter(|m| !m.heartbeat)
        .map(|m| state_of(&m.task))
        .collect()
}

/// The task of the last message.
pub fn last_task(messages: &[WatchTaskResponse]) -> Task {
    messages
        .last()
        .and_then(|m| m.task.clone())
        .expect("a final message")
}

/// A running gateway and a caller connected to it.
pub struct Gateway {
    pub caller: Caller,
    pub hub: TaskHub,
    stop: Option<oneshot::Sender<()>>,
}

impl std::ops::Deref for Gateway {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Caller {
        &mut self.caller
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_gateway(settings: Settings) -> Gateway {
    if std::env::var_os("TEST_LOG").is_some() {
        // The first test's writer serves the whole test binary.
        std::mem::forget(hailuo_gateway::telemetry::init(Default::default()));
    }
    let app = Application::build(settings).await.expect("build app");
    let grpc_addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let admin_addr = app.admin_addr();
    let hub = app.hub();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let caller = Caller::connect(
        format!("http://{grpc_addr}"),
        format!("http://{http_addr}"),
        format!("http://{admin_addr}"),
    )
    .await;
    Gateway {
        caller,
        hub,
        stop: Some(stop),
    }
}

/// A gateway in front of a scripted kie.ai.
pub struct TestApp {
    pub upstream: MockServer,
    pub gateway: Gateway,
}

impl std::ops::Deref for TestApp {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut Gateway {
        &mut self.gateway
    }
}

impl TestApp {
    /// Requests the scripted kie.ai received on `path`.
    pub async fn upstream_requests(&self, on_path: &str) -> Vec<Request> {
        self.upstream
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == on_path)
            .collect()
    }

    pub async fn upstream_count(&self, on_path: &str) -> usize {
        self.upstream_requests(on_path).await.len()
    }

    /// The JSON body of the first createTask kie.ai received.
    pub async fn first_create_body(&self) -> Value {
        let sent = &self.upstream_requests(CREATE_PATH).await[0];
        serde_json::from_slice(&sent.body).expect("json body")
    }
}

/// How many requests `upstream` received on `path`.
pub async fn received(upstream: &MockServer, on_path: &str) -> usize {
    upstream
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == on_path)
        .count()
}

/// Fast cadences so that watch tests take milliseconds.
pub fn test_settings(base_url: &str) -> Settings {
    let mut settings = Settings::local(
        base_url.parse().expect("base url"),
        Some(Secret::new(TEST_KEY)),
    );
    settings.watch.cadence = PollCadence::constant(Duration::from_millis(30));
    settings.watch.backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
    };
    // Far above what the tests read: the budget has tests of its own.
    settings.watch.read_budget = 1000;
    settings.shutdown_grace = Duration::from_secs(2);
    // Off: a background credits read would show up in the upstream counts.
    settings.credits.refresh = Duration::ZERO;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    configure(&mut settings);
    let gateway = spawn_gateway(settings).await;
    TestApp { upstream, gateway }
}

/// A request that passes validation.
pub fn valid_request() -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: "a cat surfing a wave at sunset".into(),
        image_url: "https://example.com/cat.png".into(),
        ..Default::default()
    }
}

/// A valid request carrying the caller's idempotency key.
pub fn with_request_id(id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        request_id: id.into(),
        ..valid_request()
    }
}

/// kie.ai's success envelope (HTTP 200).
pub fn kie_ok(data: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"code": 200, "msg": "success", "data": data}))
}

/// kie.ai's error answer as seen live: HTTP 200, the real code in the JSON.
pub fn kie_error(code: i64, msg: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"code": code, "msg": msg, "data": null}))
}

/// A recordInfo `data` for `task_id` in `state`.
pub fn record(task_id: &str, state: &str) -> Value {
    let success = state == "success";
    let fail = state == "fail";
    json!({
        "taskId": task_id,
        "model": "hailuo/02-image-to-video-standard",
        "state": state,
        "param": "{\"model\":\"hailuo/02-image-to-video-standard\"}",
        "resultJson": if success { json!("{\"resultUrls\":[\"https://cdn.example/video.mp4\"]}") } else { json!("") },
        "failCode": if fail { json!("500") } else { Value::Null },
        "failMsg": if fail { json!("content moderation rejected the image") } else { Value::Null },
        "costTime": if success { json!(65000) } else { Value::Null },
        "completeTime": if success || fail { json!(1765185405785_i64) } else { Value::Null },
        "createTime": 1765185334551_i64,
        "updateTime": 1765185405785_i64,
        "progress": 42
    })
}

pub async fn mount_create(app: &TestApp, responder: impl Respond + 'static) {
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(responder)
        .mount(&app.upstream)
        .await;
}

pub async fn mount_create_ok(app: &TestApp, task_id: &str) {
    mount_create(app, kie_ok(json!({"taskId": task_id}))).await;
}

/// Answers recordInfo with each response in turn, repeating the last.
pub struct Sequence {
    responses: Vec<ResponseTemplate>,
    next: AtomicUsize,
}

impl Sequence {
    pub fn new(responses: Vec<ResponseTemplate>) -> Self {
        Self {
            responses,
            next: AtomicUsize::new(0),
        }
    }

    pub fn states(task_id: &str, states: &[&str]) -> Self {
        Self::new(states.iter().map(|s| kie_ok(record(task_id, s))).collect())
    }
}

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        self.responses[i.min(self.responses.len() - 1)].clone()
    }
}

pub async fn mount_record(app: &TestApp, responder: impl Respond + 'static) {
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(responder)
        .mount(&app.upstream)
        .await;
}

/// The ErrorInfo every error must carry.
pub fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    let details: ErrorDetails = status.get_error_details();
    details
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    let details = status.get_error_details();
    let mut fields: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    fields.sort();
    fields
}

pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

pub fn state_of(task: &Option<Task>) -> hailuo_gateway::pb::TaskState {
    task.as_ref().expect("task").state()
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for_some(timeout, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `check` until it gives a value or `timeout` passes.
pub async fn wait_for_some<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain reqwest client for the gateway's (or the simulator's) HTTP
/// listener.
pub fn http_client() -> reqwest::Client {
    hailuo_gateway::http_client::builder()
        .expect("TLS config builds")
        .build()
        .expect("client builds")
}

/// A port on 127.0.0.1 that was just free: nothing listens there.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The wall clock in Unix seconds, as callback timestamps carry it.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `hailuo-gateway simulate` started as a process of its own (kie.ai for a
/// real gateway binary): the child, killed on drop, and the URL it printed
/// once listening. Its stdout stays open and drained.
pub async fn spawn_simulate(args: &[&str]) -> (tokio::process::Child, String) {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(crate::binary::BIN)
        .arg("simulate")
        .args(args)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn simulate");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(url) = line.strip_prefix("kie.ai simulator listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("simulate exited before listening");
    })
    .await
    .expect("simulator up in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}
