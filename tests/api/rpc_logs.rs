//! Every call leaves one log line and one count, however it ends: a watch
//! ended by an operator-severity error is logged at ERROR with its reason and
//! message, and calls the caller left or tonic refused are counted too.

use std::time::Duration;

use hailuo_gateway::pb::CreateTaskRequest;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::binary::*;
use crate::helpers::*;

/// The next JSON log line that `wanted` accepts.
async fn log_line(logs: &mut UnboundedReceiver<String>, wanted: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = logs.recv().await {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && wanted(&entry)
            {
                return entry;
            }
        }
        panic!("the gateway exited without the log line");
    })
    .await
    .expect("the log line in time")
}

fn rpc_line(entry: &Value, method: &str) -> bool {
    entry["method"] == method && entry["latency_ms"].is_number()
}

#[tokio::test]
async fn a_watch_ended_by_kie_refusing_the_gateways_key_is_logged_at_error_with_reason_and_message()
{
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(Sequence::new(vec![
            kie_ok(record("t_key", "generating")),
            kie_error(401, "You do not have access permissions"),
        ]))
        .mount(&upstream)
        .await;
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("GATEWAY_LOG_FORMAT", "json"),
            // The record's createTime is long past: the slow cadence applies.
            ("GATEWAY_POLL_SLOW", "50ms"),
        ],
    )
    .await;
    let caller = gateway.caller().await;
    let mut request = tonic::Request::new(watch_request("t_key"));
    request
        .metadata_mut()
        .insert("x-request-id", "req-watch-401".parse().expect("ascii"));

    let mut stream = caller.try_watch(request).await.expect("watch");
    next_message(&mut stream).await;
    let ended = stream.message().await.expect_err("ends with the refusal");
    assert_eq!(ended.code(), Code::Internal, "{ended:?}");

    let entry = log_line(&mut gateway.logs, |e| rpc_line(e, "WatchTask")).await;
    assert_eq!(entry["level"], "ERROR", "{entry}");
    assert_eq!(entry["message"], "rpc", "{entry}");
    assert_eq!(entry["request_id"], "req-watch-401", "{entry}");
    assert_eq!(entry["task_id"], "t_key", "{entry}");
    assert_eq!(entry["code"], "Internal", "{entry}");
    assert_eq!(entry["reason"], "UPSTREAM_UNAUTHENTICATED", "{entry}");
    let message = entry["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("refused the gateway's API key")
            && message.contains("You do not have access permissions"),
        "{entry}"
    );
    assert!(
        !entry.to_string().contains(TEST_KEY),
        "the key is never logged"
    );
}

#[tokio::test]
async fn a_create_task_the_caller_cancelled_is_logged_and_counted() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "t_late"})).set_delay(Duration::from_secs(30)))
        .mount(&upstream)
        .await;
    let mut gateway = start_gateway_with(&upstream, &[("GATEWAY_LOG_FORMAT", "json")]).await;
    let caller = gateway.caller().await;
    let mut client = caller.client.clone();
    let call = tokio::spawn(async move { client.create_task(valid_request()).await });
    let upstream_called = wait_for(Duration::from_secs(5), || async {
        received(&upstream, CREATE_PATH).await > 0
    })
    .await;
    assert!(upstream_called, "the call reached kie.ai");

    // Dropping the call's future resets its stream: the caller cancelled.
    call.abort();

    let entry = log_line(&mut gateway.logs, |e| rpc_line(e, "CreateTask")).await;
    assert_eq!(entry["code"], "Cancelled", "{entry}");
    assert_eq!(entry["level"], "INFO", "the caller's doing: {entry}");
    let metrics = caller.metrics().await;
    assert!(
        metrics.contains(r#"hailuo_gateway_rpcs_total{method="CreateTask",code="CANCELLED"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_watch_whose_deadline_passes_before_its_first_message_is_counted() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::new(vec![
            kie_ok(record("t_slow", "generating")).set_delay(Duration::from_secs(30)),
        ]),
    )
    .await;
    let request = with_timeout(watch_request("t_slow"), Duration::from_millis(300));

    let refused = app
        .new_client()
        .await
        .watch_task(request)
        .await
        .expect_err("no first message in time");
    assert_eq!(
        refused.code(),
        Code::Cancelled,
        "tonic's timer: {refused:?}"
    );

    let counted = wait_for(Duration::from_secs(5), || async {
        app.metrics()
            .await
            .contains(r#"hailuo_gateway_rpcs_total{method="WatchTask",code="CANCELLED"} 1"#)
    })
    .await;
    assert!(counted, "{}", app.metrics().await);
}

#[tokio::test]
async fn a_request_tonic_cannot_decode_is_counted() {
    let app = spawn_app().await;
    let too_large = CreateTaskRequest {
        // Above the 21 MiB limit (room for two 10 MiB images).
        prompt: "x".repeat(22 * 1024 * 1024),
        ..valid_request()
    };

    let refused = app
        .new_client()
        .await
        .create_task(too_large)
        .await
        .expect_err("above the message size limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");

    let counted = wait_for(Duration::from_secs(5), || async {
        app.metrics()
            .await
            .contains(r#"hailuo_gateway_rpcs_total{method="CreateTask",code="OUT_OF_RANGE"} 1"#)
    })
    .await;
    assert!(counted, "{}", app.metrics().await);
}
