//! Callbacks: shape, signature (verified independently here), retries.

use std::time::Duration;

use base64::Engine as _;
use hailuo_gateway::simulator::{Completion, Endpoint, SimulatorConfig};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{Receiver, body, closed_port_url, config, spawn_sim, wait_for};

const HMAC_KEY: &str = "whsec-test";

fn with_callback(prompt: &str, url: &str) -> Value {
    let mut request = body(prompt);
    request["callBackUrl"] = json!(url);
    request
}

fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .to_str()
        .expect("ascii header")
}

#[tokio::test]
async fn a_finished_task_is_called_back_with_a_verifiable_signature() {
    let sim = spawn_sim(SimulatorConfig {
        hmac_key: Some(HMAC_KEY.into()),
        ..config()
    })
    .await;
    let receiver = Receiver::spawn(0).await;
    let task_id = sim
        .create_body_ok(&with_callback("a cat", &receiver.url))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let callback = &got[0];

    let timestamp = header(&callback.headers, "x-webhook-timestamp");
    let signature = header(&callback.headers, "x-webhook-signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_KEY.as_bytes()).expect("hmac key");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .expect("signature is base64");
    mac.verify_slice(&decoded).expect("signature verifies");
    let sent: u64 = timestamp.parse().expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now.abs_diff(sent) <= 5, "timestamp {sent} is unix seconds");

    assert_eq!(callback.body["code"], 200);
    assert!(callback.body["msg"].is_string());
    let data = &callback.body["data"];
    assert_eq!(data["taskId"], task_id.as_str());
    assert_eq!(data["state"], "success");
    assert!(data["resultJson"].is_string());
    assert_eq!(data["failCode"], Value::Null);
    // The callback holds what recordInfo shows for the finished task.
    assert_eq!(data, &sim.task(&task_id).await);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1, "exactly one callback");
    assert_eq!(sim.handle.count(Endpoint::CallbackAttempt), 1);
    assert_eq!(sim.handle.count(Endpoint::CallbackDelivered), 1);
}

#[tokio::test]
async fn the_callback_comes_when_the_task_ends_not_before() {
    let sim = spawn_sim(config()).await;
    let receiver = Receiver::spawn(0).await;
    let task_id = sim
        .create_body_ok(&with_callback("a cat", &receiver.url))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let created = sim.task(&task_id).await["createTime"]
        .as_u64()
        .expect("createTime");
    let attempts = sim.handle.callbacks();
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0].sent_ms >= created + 150,
        "sent at {} for a task created at {created}",
        attempts[0].sent_ms
    );
    assert!(!attempts[0].signed);
    assert!(
        got[0].headers.get("x-webhook-signature").is_none(),
        "unsigned without a key"
    );
}

#[tokio::test]
async fn a_failed_task_is_called_back_with_its_reason() {
    let sim = spawn_sim(config()).await;
    let receiver = Receiver::spawn(0).await;
    sim.create_body_ok(&with_callback("[sim:fail]", &receiver.url))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    let data = &got[0].body["data"];
    assert_eq!(got[0].body["code"], 501);
    assert_eq!(data["state"], "fail");
    assert_eq!(data["failCode"], "500");
    assert!(data["failMsg"].is_string());
    assert_eq!(data["resultJson"], Value::Null);
}

#[tokio::test]
async fn a_failing_delivery_is_retried_with_backoff() {
    let sim = spawn_sim(SimulatorConfig {
        hmac_key: Some(HMAC_KEY.into()),
        callback_backoff: Duration::from_millis(100),
        ..config()
    })
    .await;
    let receiver = Receiver::spawn(1).await;
    let task_id = sim
        .create_body_ok(&with_callback("a cat", &receiver.url))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert!(
        got[1].at.duration_since(got[0].at) >= Duration::from_millis(100),
        "waited the backoff"
    );
    assert_eq!(got[0].body, got[1].body, "same body redelivered");
    assert_eq!(got[1].body["data"]["taskId"], task_id.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "no more after a 2xx");
    let attempts = sim.handle.callbacks();
    let statuses: Vec<_> = attempts.iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(statuses, [(1, Some(500)), (2, Some(200))]);
    let counts = sim.handle.counts();
    assert_eq!(
        (counts.callback_attempts, counts.callbacks_delivered),
        (2, 1)
    );
}

#[tokio::test]
async fn an_unreachable_receiver_gets_the_configured_retries_then_nothing() {
    let sim = spawn_sim(SimulatorConfig {
        callback_retries: 2,
        callback_backoff: Duration::from_millis(20),
        ..config()
    })
    .await;
    let url = closed_port_url().await;
    sim.create_body_ok(&with_callback("a cat", &url)).await;
    let attempts = wait_for(Duration::from_secs(5), || async {
        let attempts = sim.handle.callbacks();
        (attempts.len() >= 3).then_some(attempts)
    })
    .await
    .expect("three attempts");
    assert!(
        attempts
            .iter()
            .all(|a| a.status.is_none() && a.error.is_some())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sim.handle.count(Endpoint::CallbackAttempt),
        3,
        "1 + 2 retries"
    );
    assert_eq!(sim.handle.count(Endpoint::CallbackDelivered), 0);
}

#[tokio::test]
async fn a_manual_completion_calls_back_at_once() {
    let sim = spawn_sim(config()).await;
    let receiver = Receiver::spawn(0).await;
    let task_id = sim
        .create_body_ok(&with_callback("[sim:manual]", &receiver.url))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty(), "no callback while held");
    sim.handle
        .complete(&task_id, Completion::success())
        .expect("completes");
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].body["data"]["state"], "success");
}

#[tokio::test]
async fn an_early_manual_completion_is_not_called_back_twice() {
    let sim = spawn_sim(SimulatorConfig {
        timings: crate::helpers::fast(100),
        ..config()
    })
    .await;
    let receiver = Receiver::spawn(0).await;
    let task_id = sim
        .create_body_ok(&with_callback("a cat", &receiver.url))
        .await;
    sim.handle
        .complete(&task_id, Completion::fail("500", "stopped"))
        .expect("completes");
    receiver.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "the timer must not call back again");
    assert_eq!(got[0].body["data"]["failMsg"], "stopped");
}

#[tokio::test]
async fn a_callback_dup_task_is_called_back_twice() {
    let sim = spawn_sim(config()).await;
    let receiver = Receiver::spawn(0).await;
    let task_id = sim
        .create_body_ok(&with_callback("[sim:callback-dup]", &receiver.url))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[0].body["data"]["taskId"], task_id.as_str());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 2);
    assert_eq!(sim.handle.count(Endpoint::CallbackDelivered), 2);
}

#[tokio::test]
async fn a_callback_lost_task_is_never_called_back() {
    let sim = spawn_sim(config()).await;
    let receiver = Receiver::spawn(0).await;
    let lost = sim
        .create_body_ok(&with_callback("[sim:callback-lost]", &receiver.url))
        .await;
    // A normal task created after it ends later and is called back.
    let normal = sim
        .create_body_ok(&with_callback("a cat", &receiver.url))
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].body["data"]["taskId"], normal.as_str());
    assert_eq!(
        sim.state_of(&lost).await,
        "success",
        "the task itself is fine"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(sim.handle.count(Endpoint::CallbackAttempt), 1);
}
