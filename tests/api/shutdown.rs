//! The real binary: start-up errors, SIGTERM draining, exit code.

use std::process::Stdio;
use std::time::Duration;

use hailuo_gateway::pb::WatchTaskRequest;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_hailuo-gateway");

/// Starts the binary against `upstream`; returns it with its gRPC address,
/// read from the "gateway ready" log line.
async fn start_gateway(upstream: &MockServer) -> (Child, String) {
    let (child, url, _) = start_gateway_logging(upstream, "text").await;
    (child, url)
}

/// As `start_gateway`, with a log format; also returns the log lines that
/// follow the ready line.
async fn start_gateway_logging(
    upstream: &MockServer,
    log_format: &str,
) -> (Child, String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("GATEWAY_LOG_FORMAT", log_format)
        .env("KIE_API_KEY", TEST_KEY)
        .env("KIE_BASE_URL", upstream.uri())
        .env("GATEWAY_GRPC_ADDR", "127.0.0.1:0")
        .env("GATEWAY_HTTP_ADDR", "127.0.0.1:0")
        .env("GATEWAY_POLL_FAST", "50ms")
        .env("GATEWAY_SHUTDOWN_GRACE", "5s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if !line.contains("gateway ready") {
                continue;
            }
            if let Some(rest) = line.split("grpc_addr=").nth(1) {
                return rest.split_whitespace().next().expect("addr").to_string();
            }
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                return json["grpc_addr"].as_str().expect("grpc_addr").to_string();
            }
        }
        panic!("gateway exited before it was ready");
    })
    .await
    .expect("gateway ready in time");
    // Keep draining stderr so the child never blocks on a full pipe.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    (child, format!("http://{addr}"), rx)
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[tokio::test]
async fn without_a_key_the_binary_exits_non_zero_naming_the_key_and_the_sandbox() {
    let output = Command::new(BIN).env_clear().output().await.expect("run");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KIE_API_KEY"), "{stderr}");
    assert!(stderr.contains("--sandbox"), "{stderr}");
}

#[tokio::test]
async fn sigterm_ends_open_watches_with_unavailable_finishes_unary_calls_and_exits_zero() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(kie_ok(record("t1", "generating")))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "slow"})).set_delay(Duration::from_millis(800)))
        .mount(&upstream)
        .await;
    let (mut child, url) = start_gateway(&upstream).await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = VideoGenerationClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let serving = health
        .check(HealthCheckRequest {
            service: "hailuo.v1.VideoGeneration".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");

    let mut watch = client
        .watch_task(WatchTaskRequest {
            task_id: "t1".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("ok").expect("first message");
    let mut unary_client = client.clone();
    let in_flight = tokio::spawn(async move { unary_client.create_task(valid_request()).await });
    tokio::time::sleep(Duration::from_millis(200)).await; // the call is upstream now

    sigterm(&child);

    let ended = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("stream ends promptly");
    let status = ended.expect_err("UNAVAILABLE, not OK");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let created = in_flight
        .await
        .expect("join")
        .expect("in-flight call finishes");
    assert_eq!(created.into_inner().task_id, "slow");
    let exit = tokio::time::timeout(Duration::from_secs(7), child.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn sigterm_with_nothing_open_exits_zero_at_once() {
    let upstream = MockServer::start().await;
    let (mut child, _) = start_gateway(&upstream).await;

    sigterm(&child);

    let exit = tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .expect("exits promptly")
        .expect("wait");
    assert!(exit.success());
}

#[tokio::test]
async fn json_logs_carry_one_line_per_rpc_with_its_request_id() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "t_json"})))
        .mount(&upstream)
        .await;
    let (_child, url, mut logs) = start_gateway_logging(&upstream, "json").await;
    let mut client = VideoGenerationClient::connect(url).await.expect("connect");
    let mut request = tonic::Request::new(valid_request());
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-7".parse().expect("ascii"));
    client.create_task(request).await.expect("created");

    let line = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = logs.recv().await {
            if line.contains("req-json-7") {
                return line;
            }
        }
        panic!("no log line for the RPC");
    })
    .await
    .expect("logged in time");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(entry["method"], "CreateTask");
    assert_eq!(entry["task_id"], "t_json");
    assert_eq!(entry["request_id"], "req-json-7");
    assert_eq!(entry["code"], "Ok");
    assert!(entry["latency_ms"].is_number());
    assert!(!line.contains(TEST_KEY), "the key is never logged");
}
