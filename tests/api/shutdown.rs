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

#[tokio::test]
async fn nonsensical_cadences_are_refused_at_start_with_one_line_naming_the_setting() {
    for (env, named) in [
        (
            vec![("GATEWAY_WATCH_HEARTBEAT", "0s")],
            "GATEWAY_WATCH_HEARTBEAT",
        ),
        (vec![("GATEWAY_POLL_FAST", "0s")], "GATEWAY_POLL_FAST"),
        (vec![("GATEWAY_POLL_SLOW", "0ms")], "GATEWAY_POLL_SLOW"),
        (
            vec![
                ("GATEWAY_WATCH_HEARTBEAT", "2m"),
                ("GATEWAY_WATCH_MAX_DURATION", "1m"),
            ],
            "GATEWAY_WATCH_MAX_DURATION",
        ),
    ] {
        let run = Command::new(BIN)
            .env_clear()
            .env("KIE_API_KEY", TEST_KEY)
            .env("GATEWAY_GRPC_ADDR", "127.0.0.1:0")
            .env("GATEWAY_HTTP_ADDR", "127.0.0.1:0")
            .env("GATEWAY_ADMIN_ADDR", "127.0.0.1:0")
            .envs(env.clone())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("{env:?} was not refused: the gateway kept running"))
            .expect("run");

        assert_eq!(output.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
    }
}

/// What a probe opening a fresh connection every ~100 ms saw, in the order
/// a drain goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Serving,
    NotServing,
    Refused,
}

async fn probe(url: &str) -> Probe {
    let connected = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    let Ok(channel) = connected else {
        return Probe::Refused;
    };
    let mut health = HealthClient::new(channel);
    let mut seen = Vec::new();
    for service in ["", "hailuo.v1.VideoGeneration"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        seen.push(match answer {
            Ok(answer) if answer.get_ref().status == 1 => Probe::Serving,
            Ok(answer) if answer.get_ref().status == 2 => Probe::NotServing,
            Ok(answer) => panic!("unexpected health status {:?}", answer.get_ref()),
            // Connected just before the listener closed.
            Err(_) => Probe::Refused,
        });
    }
    // The two Checks are two calls: the drain may begin between them, so the
    // second may be a step further on, never a step back.
    let step = |p: Probe| p as u8;
    assert!(
        step(seen[0]) <= step(seen[1]),
        "\"\" and the service: {seen:?}"
    );
    seen[1]
}

#[tokio::test]
async fn on_sigterm_a_polling_probe_sees_not_serving_for_the_drain_delay_before_any_refusal() {
    let upstream = MockServer::start().await;
    let RunningGateway {
        mut child,
        grpc_url: url,
        mut logs,
        ..
    } = start_gateway_with(&upstream, &[("GATEWAY_DRAIN_DELAY", "2s")]).await;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health_watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = health_watch.message().await.expect("ok").expect("a status");
    assert_eq!(first.status, 1, "SERVING");
    let poller_url = url.clone();
    let poller = tokio::spawn(async move {
        let mut seen = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < until {
            let now = probe(&poller_url).await;
            seen.push(now);
            if now == Probe::Refused {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    let polled_before_sigterm = wait_for(Duration::from_secs(5), || async {
        probe(&url).await == Probe::Serving
    })
    .await;
    assert!(polled_before_sigterm);

    let signalled = std::time::Instant::now();
    sigterm(&child);

    let changed = tokio::time::timeout(Duration::from_secs(2), health_watch.message())
        .await
        .expect("NOT_SERVING at once")
        .expect("ok")
        .expect("a status");
    assert_eq!(changed.status, 2, "NOT_SERVING");
    let ended = tokio::time::timeout(Duration::from_secs(6), health_watch.message())
        .await
        .expect("the health watch ends once the drain delay is over");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1900),
        "not before the drain delay: {:?}",
        signalled.elapsed()
    );
    let exit = exit_within(&mut child, Duration::from_secs(5), "exits soon after").await;
    assert!(exit.success(), "{exit:?}");
    // Well within the grace period (5 s) after the delay: nothing held it.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );

    let seen = poller.await.expect("join");
    let first_not_serving = seen
        .iter()
        .position(|p| *p == Probe::NotServing)
        .unwrap_or_else(|| panic!("NOT_SERVING never seen: {seen:?}"));
    let first_refused = seen
        .iter()
        .position(|p| *p == Probe::Refused)
        .unwrap_or_else(|| panic!("never refused: {seen:?}"));
    assert!(
        seen[..first_not_serving]
            .iter()
            .all(|p| *p == Probe::Serving),
        "{seen:?}"
    );
    let draining = &seen[first_not_serving..first_refused];
    assert!(draining.iter().all(|p| *p == Probe::NotServing), "{seen:?}");
    // 2 s at one probe per ~100 ms: generous for a loaded machine.
    assert!(draining.len() >= 5, "{seen:?}");
    let mut after_ready = Vec::new();
    // Every line up to the process's end (its stderr closed).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(line) = logs.recv().await {
            after_ready.push(line);
        }
    })
    .await;
    assert!(
        after_ready
            .iter()
            .any(|line| line.contains("gateway stopped")),
        "{after_ready:#?}"
    );
    assert!(
        !after_ready.iter().any(|line| line.contains("WARN")),
        "no warning when nothing was left open: {after_ready:#?}"
    );
}
