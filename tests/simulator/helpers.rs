//! Spawning simulators and callback receivers on 127.0.0.1:0, typed calls,
//! and bounded waits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use hailuo_gateway::simulator::{SimHandle, Simulator, SimulatorConfig, StateTimings};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "sk-test-key";
pub const MODEL: &str = "hailuo/02-image-to-video-standard";

/// Timings short enough for tests, long enough to observe each state.
pub fn fast(ms: u64) -> StateTimings {
    StateTimings {
        waiting: Duration::from_millis(ms),
        queuing: Duration::from_millis(ms),
        generating: Duration::from_millis(ms),
    }
}

pub fn config() -> SimulatorConfig {
    SimulatorConfig {
        timings: fast(50),
        callback_backoff: Duration::from_millis(50),
        ..SimulatorConfig::default()
    }
}

pub struct TestSim {
    pub base_url: String,
    /// The upload host, a listener of its own.
    pub upload_base_url: String,
    pub handle: SimHandle,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn client() -> reqwest::Client {
    hailuo_gateway::http_client::builder()
        .expect("TLS config builds")
        .no_proxy()
        // kie.ai's CDN (and so the simulator) refuses requests without one.
        .user_agent("simulator-tests/1")
        .timeout(Duration::from_secs(10))
        .build()
        .expect("test client builds")
}

pub async fn spawn_sim(config: SimulatorConfig) -> TestSim {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let shutdown = CancellationToken::new();
    let sim = Simulator::start(config, listener, shutdown.clone())
        .await
        .expect("simulator starts");
    assert_eq!(
        sim.base_url(),
        format!("http://127.0.0.1:{}", sim.local_addr().port())
    );
    assert_eq!(
        sim.upload_base_url(),
        format!("http://127.0.0.1:{}", sim.upload_addr().port())
    );
    assert_ne!(sim.upload_addr(), sim.local_addr());
    TestSim {
        base_url: sim.base_url(),
        upload_base_url: sim.upload_base_url(),
        handle: sim.state(),
        client: client(),
        shutdown,
    }
}

/// A valid createTask body with this prompt.
pub fn body(prompt: &str) -> Value {
    json!({
        "model": MODEL,
        "input": {
            "prompt": prompt,
            "image_url": "https://example.com/first.png",
            "duration": "6",
            "resolution": "768P",
            "prompt_optimizer": true
        }
    })
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl TestSim {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Answer {
        let mut request = self.client.post(self.url(path)).body(body.to_string());
        request = request.header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        answer(request.send().await.expect("request answered")).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        let mut request = self.client.get(self.url(path));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        answer(request.send().await.expect("request answered")).await
    }

    /// A JSON POST to the upload host.
    pub async fn upload_json(&self, path: &str, key: Option<&str>, body: &Value) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.upload_base_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        answer(request.send().await.expect("request answered")).await
    }

    /// `POST /api/file-stream-upload` with this multipart form.
    pub async fn upload_form(&self, key: Option<&str>, form: &Form) -> Answer {
        let mut request = self
            .client
            .post(format!("{}/api/file-stream-upload", self.upload_base_url))
            .header("content-type", form.content_type())
            .body(form.body());
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        answer(request.send().await.expect("request answered")).await
    }

    /// Uploads `bytes` as `file` under `images/tests` and returns `data`.
    pub async fn upload_ok(&self, file_name: &str, bytes: &[u8]) -> Value {
        let form = Form::new()
            .file("file", Some(file_name), None, bytes)
            .text("uploadPath", "images/tests");
        let answer = self.upload_form(Some(KEY), &form).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        answer.json["data"].clone()
    }

    pub async fn create(&self, body: &Value) -> Answer {
        self.post("/api/v1/jobs/createTask", Some(KEY), body).await
    }

    /// Creates a task that must succeed and returns its id.
    pub async fn create_ok(&self, prompt: &str) -> String {
        self.create_body_ok(&body(prompt)).await
    }

    pub async fn create_body_ok(&self, body: &Value) -> String {
        let answer = self.create(body).await;
        assert_eq!(answer.json["code"], 200, "{}", answer.json);
        answer.json["data"]["taskId"]
            .as_str()
            .expect("taskId is a string")
            .to_owned()
    }

    pub async fn record_info(&self, task_id: &str) -> Answer {
        self.get(
            &format!("/api/v1/jobs/recordInfo?taskId={task_id}"),
            Some(KEY),
        )
        .await
    }

    /// recordInfo's `data` for a task that must exist.
    pub async fn task(&self, task_id: &str) -> Value {
        let answer = self.record_info(task_id).await;
        assert_eq!(answer.json["code"], 200, "{}", answer.json);
        answer.json["data"].clone()
    }

    pub async fn state_of(&self, task_id: &str) -> String {
        self.task(task_id).await["state"]
            .as_str()
            .expect("state is a string")
            .to_owned()
    }

    /// Polls until the task reaches `state`; panics after `within`.
    pub async fn wait_for_state(&self, task_id: &str, state: &str, within: Duration) -> Value {
        wait_for(within, || async {
            let task = self.task(task_id).await;
            (task["state"] == state).then_some(task)
        })
        .await
        .unwrap_or_else(|| panic!("task {task_id} never reached {state}"))
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body readable");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        json,
    }
}

/// Polls `probe` every 10 ms until it yields something or `within` runs out.
pub async fn wait_for<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One callback as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

/// A callback receiver on 127.0.0.1:0 that answers 500 to its first
/// `fail_first` deliveries, then 200.
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    shutdown: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Receiver {
    pub async fn spawn(fail_first: usize) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let app = axum::Router::new().route(
            "/callback",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let mut log = log.lock().expect("receiver log");
                    log.push(Received {
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        at: Instant::now(),
                    });
                    if log.len() <= fail_first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr: SocketAddr = listener.local_addr().expect("receiver addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .expect("receiver serves");
        });
        Self {
            url: format!("http://{addr}/callback"),
            received,
            shutdown,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver log").clone()
    }

    /// Waits until `n` callbacks arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        wait_for(within, || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
        .unwrap_or_else(|| panic!("expected {n} callbacks, got {:?}", self.received()))
    }
}

/// A loopback port with nothing listening on it.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/callback")
}

/// A response body as JSON (reqwest's `json` feature is not enabled here).
pub async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body readable");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// A multipart/form-data body, built by hand so that tests control every
/// byte (reqwest's multipart feature is not enabled).
#[derive(Default)]
pub struct Form {
    parts: Vec<u8>,
}

pub const BOUNDARY: &str = "sim-test-boundary-7MA4YWxkTrZu0gW";

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text(self, name: &str, value: &str) -> Self {
        self.part(
            &format!("Content-Disposition: form-data; name=\"{name}\""),
            value.as_bytes(),
        )
    }

    pub fn file(
        self,
        name: &str,
        file_name: Option<&str>,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Self {
        let mut headers = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(file_name) = file_name {
            headers.push_str(&format!("; filename=\"{file_name}\""));
        }
        if let Some(content_type) = content_type {
            headers.push_str(&format!("\r\nContent-Type: {content_type}"));
        }
        self.part(&headers, bytes)
    }

    fn part(mut self, headers: &str, bytes: &[u8]) -> Self {
        self.parts
            .extend_from_slice(format!("--{BOUNDARY}\r\n{headers}\r\n\r\n").as_bytes());
        self.parts.extend_from_slice(bytes);
        self.parts.extend_from_slice(b"\r\n");
        self
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }

    pub fn body(&self) -> Vec<u8> {
        let mut body = self.parts.clone();
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }
}

/// `len` bytes that start like a PNG (the simulator, like kie.ai, knows a
/// type by its first bytes).
pub fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.resize(len.max(8), 7);
    bytes
}

pub fn jpeg(len: usize) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.resize(len.max(4), 3);
    bytes
}

pub fn webp(len: usize) -> Vec<u8> {
    let mut bytes = b"RIFF\0\0\0\0WEBPVP8 ".to_vec();
    bytes.resize(len.max(16), 5);
    bytes
}
