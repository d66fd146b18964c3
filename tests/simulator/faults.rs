//! Whole-simulator faults: latency, 500s, dropped connections, HTML 502s.

use std::time::{Duration, Instant};

use hailuo_gateway::simulator::{Endpoint, Faults, SimulatorConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{KEY, body, config, spawn_sim};

fn with_faults(faults: Faults) -> SimulatorConfig {
    SimulatorConfig { faults, ..config() }
}

#[tokio::test]
async fn latency_delays_every_api_answer_but_not_control() {
    let sim = spawn_sim(with_faults(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    }))
    .await;
    let started = Instant::now();
    let answer = sim.get("/api/v1/chat/credit", Some(KEY)).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(answer.json["code"], 200);
    let started = Instant::now();
    sim.get("/sim/counts", None).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "control is never faulted"
    );
}

#[tokio::test]
async fn an_error_rate_of_one_answers_http_500() {
    let sim = spawn_sim(with_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let answer = sim.create(&body("a cat")).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.json["code"], 500);
    assert_eq!(answer.json["data"], Value::Null);
    assert_eq!(sim.handle.credits(), 1000.0, "no task was created");
    assert_eq!(sim.handle.requests()[0].fault.as_deref(), Some("error500"));
}

#[tokio::test]
async fn a_drop_rate_of_one_closes_connections_unanswered() {
    let sim = spawn_sim(with_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let outcome = sim
        .client
        .get(sim.url("/api/v1/chat/credit"))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await;
    let error = outcome.expect_err("the connection closes without an answer");
    assert!(error.status().is_none(), "{error:?}");
    assert!(!error.is_timeout(), "closed, not stalled: {error:?}");
    // Control routes still answer, and the dropped request was recorded.
    assert_eq!(sim.get("/sim/counts", None).await.json["credit"], 1);
    let requests = sim.get("/sim/requests", None).await.json;
    assert_eq!(requests[0]["fault"], "drop");
    assert_eq!(sim.handle.count(Endpoint::Credit), 1);
}

#[tokio::test]
async fn an_html_502_rate_of_one_answers_a_cdn_page() {
    let sim = spawn_sim(with_faults(Faults {
        html_502_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let response = sim
        .client
        .get(sim.url("/api/v1/jobs/recordInfo?taskId=task_hailuo_1"))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let text = response.text().await.expect("body");
    assert!(text.contains("<h1>502 Bad Gateway</h1>"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "not JSON");
}

#[tokio::test]
async fn partial_rates_fault_some_requests_only() {
    let sim = spawn_sim(with_faults(Faults {
        error_rate: 0.5,
        ..Faults::default()
    }))
    .await;
    let mut codes = Vec::new();
    for _ in 0..60 {
        codes.push(sim.get("/api/v1/chat/credit", Some(KEY)).await.status);
    }
    let failed = codes
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    // 60 fair coin flips: outside 10..=50 has odds below 1e-7.
    assert!((10..=50).contains(&failed), "{failed} of 60 failed");
    let ok = sim.get("/sim/counts", None).await.json;
    assert_eq!(
        ok,
        json!({
            "createTask": 0, "recordInfo": 0, "credit": 60, "downloadUrl": 0,
            "video": 0, "fileStreamUpload": 0, "fileBase64Upload": 0, "fileUrlUpload": 0,
            "file": 0, "callbackAttempts": 0, "callbacksDelivered": 0
        })
    );
}

#[tokio::test]
async fn requests_without_a_user_agent_are_refused_like_the_cdn_does() {
    let sim = spawn_sim(config()).await;
    let bare = hailuo_gateway::http_client::builder()
        .expect("TLS config builds")
        .no_proxy()
        .build()
        .expect("client builds");
    let response = bare
        .get(sim.url("/api/v1/chat/credit"))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.text().await.expect("body"), "error code: 1010");
    assert_eq!(
        sim.handle.requests()[0].fault.as_deref(),
        Some("no-user-agent")
    );
    // The control routes do not care.
    let counts = bare
        .get(sim.url("/sim/counts"))
        .send()
        .await
        .expect("answered");
    assert_eq!(counts.status(), StatusCode::OK);
}
