use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hailuo_gateway::config::{Backoff, PollCadence, Secret, Settings};
use hailuo_gateway::hub::TaskHub;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{CreateTaskRequest, Task};
use hailuo_gateway::startup::Application;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_types::{ErrorDetails, StatusExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const TEST_KEY: &str = "test-key-1234567890";
pub const CREATE_PATH: &str = "/api/v1/jobs/createTask";
pub const RECORD_PATH: &str = "/api/v1/jobs/recordInfo";

/// A running gateway and a client connected to it.
pub struct Gateway {
    pub client: VideoGenerationClient<Channel>,
    pub hub: TaskHub,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Gateway {
    pub async fn new_client(&self) -> VideoGenerationClient<Channel> {
        VideoGenerationClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
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
    let hub = app.hub();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let client = VideoGenerationClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect to gateway");
    Gateway {
        client,
        hub,
        grpc_addr,
        http_addr,
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

pub async fn mount_create_ok(app: &TestApp, task_id: &str) {
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": task_id})))
        .mount(&app.upstream)
        .await;
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
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain reqwest client for posting to the gateway's HTTP listener.
pub fn http_client() -> reqwest::Client {
    hailuo_gateway::http_client::builder()
        .expect("TLS config builds")
        .build()
        .expect("client builds")
}
