//! The real binary: start-up errors, SIGTERM draining, exit code.

use std::time::Duration;

use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use serde_json::json;
use tokio::process::Command;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::helpers::*;

use crate::binary::*;

#[tokio::test]
async fn without_a_key_the_binary_exits_non_zero_naming_the_key_and_the_sandbox() {
    let output = Command::new(BIN).env_clear().output().await.expect("run");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KIE_API_KEY"), "{stderr}");
    // A lean build (no `sandbox` feature) has no --sandbox to suggest.
    assert_eq!(
        stderr.contains("--sandbox"),
        cfg!(feature = "sandbox"),
        "{stderr}"
    );
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
    let RunningGateway {
        mut child,
        grpc_url: url,
        ..
    } = start_gateway_with(&upstream, &[]).await;
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
        .watch_task(watch_request("t1"))
        .await
        .expect("watch")
        .into_inner();
    next_message(&mut watch).await;
    let mut unary_client = client.clone();
    let in_flight = tokio::spawn(async move { unary_client.create_task(valid_request()).await });
    let upstream_called = wait_for(Duration::from_secs(5), || async {
        received(&upstream, CREATE_PATH).await > 0
    })
    .await;
    assert!(upstream_called, "the call is upstream now");

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
    let exit = exit_within(
        &mut child,
        Duration::from_secs(7),
        "exits within the grace period",
    )
    .await;
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn sigterm_with_nothing_open_exits_zero_at_once() {
    let upstream = MockServer::start().await;
    let mut child = start_gateway_with(&upstream, &[]).await.child;

    sigterm(&child);

    let exit = exit_within(&mut child, Duration::from_secs(3), "exits promptly").await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn json_logs_carry_one_line_per_rpc_with_its_request_id() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "t_json"})))
        .mount(&upstream)
        .await;
    let RunningGateway {
        child: _child,
        grpc_url: url,
        mut logs,
        ..
    } = start_gateway_with(&upstream, &[("GATEWAY_LOG_FORMAT", "json")]).await;
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

#[tokio::test]
async fn a_thousand_open_watches_all_get_a_status_on_sigterm_and_the_process_exits_zero() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(kie_ok(record("t1", "generating")))
        .mount(&upstream)
        .await;
    let gateway = start_gateway_with(&upstream, &[("GATEWAY_SHUTDOWN_GRACE", "5s")]).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            VideoGenerationClient::connect(gateway.grpc_url.clone())
                .await
                .expect("connect"),
        );
    }
    let mut watches = Vec::new();
    for i in 0..1000 {
        let mut client = clients[i % clients.len()].clone();
        watches.push(tokio::spawn(async move {
            let mut stream = client
                .watch_task(watch_request(&format!("t{}", i % 50)))
                .await
                .expect("watch")
                .into_inner();
            next_message(&mut stream).await;
            stream
        }));
    }
    let mut streams = Vec::new();
    for w in watches {
        streams.push(w.await.expect("join"));
    }
    let mut child = gateway.child;

    let signalled = std::time::Instant::now();
    sigterm(&child);

    let mut endings = Vec::new();
    for mut stream in streams {
        endings.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(6), stream.message()).await
        }));
    }
    for e in endings {
        let status = e
            .await
            .expect("join")
            .expect("every stream ends in time")
            .expect_err("with a status, not OK");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let exit = exit_within(
        &mut child,
        Duration::from_secs(7),
        "exits within the grace period",
    )
    .await;
    assert!(exit.success(), "{exit:?}");
    assert!(signalled.elapsed() < Duration::from_secs(6));
}
