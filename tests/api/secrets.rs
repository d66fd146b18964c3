//! The API key never shows: not in any log line (at trace level), error
//! message, response metadata or metric.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::binary::*;
use crate::helpers::*;

#[tokio::test]
async fn the_api_key_appears_in_no_log_line_status_or_metric() {
    let upstream = MockServer::start().await;
    // kie.ai echoing the key back in its message must not leak it either.
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(Sequence::new(vec![
            kie_ok(json!({"taskId": "t_ok"})),
            kie_error(401, &format!("invalid key {TEST_KEY}")),
            kie_error(402, "Credits insufficient"),
            ResponseTemplate::new(502).set_body_raw("<html>502</html>", "text/html"),
            ResponseTemplate::new(200).set_body_string("{not json"),
        ]))
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(Sequence::new(vec![
            kie_error(500, "Server error"),
            kie_ok(record("t_ok", "generating")),
            kie_ok(record("t_ok", "success")),
        ]))
        .mount(&upstream)
        .await;
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("RUST_LOG", "trace"),
            ("GATEWAY_LOG_FORMAT", "json"),
            ("GATEWAY_RETRY_BACKOFF_INITIAL", "10ms"),
            ("KIE_WEBHOOK_HMAC_KEY", "hmac-secret-value"),
        ],
    )
    .await;
    let mut caller = gateway.caller().await;
    let mut seen = Vec::new();

    for _ in 0..5 {
        match caller.client.create_task(valid_request()).await {
            Ok(r) => seen.push(format!("{:?}", r.metadata())),
            Err(s) => seen.push(format!("{s:?} {:?}", s.metadata())),
        }
    }
    let mut invalid = valid_request();
    invalid.prompt.clear();
    seen.push(format!(
        "{:?}",
        caller.create(invalid).await.expect_err("invalid")
    ));
    let mut watch = caller.watch("t_ok").await;
    let (messages, end) = drain(&mut watch).await;
    end.expect("ok");
    seen.extend(messages.iter().map(|m| format!("{m:?}")));
    seen.push(format!("{:?}", caller.get("../x").await));
    let refused = caller
        .http()
        .post(caller.callback_url())
        .header("x-webhook-timestamp", "1")
        .header("x-webhook-signature", "AAAA")
        .body(r#"{"data":{"taskId":"t_ok"}}"#)
        .send()
        .await
        .expect("callback");
    seen.push(refused.text().await.expect("body"));
    seen.push(caller.metrics().await);

    sigterm(&gateway.child);
    let _ = tokio::time::timeout(Duration::from_secs(7), gateway.child.wait()).await;
    let mut logs = Vec::new();
    while let Ok(line) = gateway.logs.try_recv() {
        logs.push(line);
    }

    assert!(
        logs.len() > 20,
        "trace logging produced {} lines",
        logs.len()
    );
    for secret in [TEST_KEY, "hmac-secret-value"] {
        for line in logs.iter().chain(seen.iter()) {
            assert!(!line.contains(secret), "{secret:?} leaked in: {line}");
        }
    }
}

/// Caller tokens (GATEWAY_CALLERS_FILE) never show either: not the good
/// one, not a wrong one, in no log line, status, metadata or metric.
#[tokio::test]
async fn caller_tokens_appear_in_no_log_line_status_or_metric() {
    const GOOD: &str = "tok-good-51f0c3a9d7e24b68";
    const WRONG: &str = "tok-wrong-0a9e7d3c5b1f4862";
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "t_ok"})))
        .mount(&upstream)
        .await;
    let dir = std::env::temp_dir().join(format!("secrets-callers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("callers.toml");
    std::fs::write(
        &file,
        format!(
            "[[caller]]\nname = \"team-a\"\ntoken_sha256 = \"{}\"\ncreates_per_minute = 100\n",
            hailuo_gateway::callers::token_sha256_hex(GOOD)
        ),
    )
    .expect("write");
    let file_path = file.to_string_lossy().into_owned();
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("RUST_LOG", "trace"),
            ("GATEWAY_LOG_FORMAT", "json"),
            ("GATEWAY_CALLERS_FILE", &file_path),
        ],
    )
    .await;
    let caller = gateway.caller().await;
    let mut seen = Vec::new();
    for token in [GOOD, WRONG, GOOD] {
        let mut request = tonic::Request::new(valid_request());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        match caller.client.clone().create_task(request).await {
            Ok(r) => seen.push(format!("{:?} {:?}", r.metadata(), r.get_ref())),
            Err(s) => seen.push(format!("{s:?} {:?}", s.metadata())),
        }
    }
    assert!(
        seen[0].contains("t_ok") && seen[1].contains("Unauthenticated"),
        "{seen:?}"
    );
    seen.push(caller.metrics().await);
    sigterm(&gateway.child);
    let _ = tokio::time::timeout(Duration::from_secs(7), gateway.child.wait()).await;
    let mut logs = gateway.startup_logs.clone();
    while let Ok(line) = gateway.logs.try_recv() {
        logs.push(line);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        logs.iter().any(|l| l.contains("\"caller\":\"team-a\"")),
        "the caller's name is on its RPC lines"
    );
    for secret in [GOOD, WRONG] {
        for line in logs.iter().chain(seen.iter()) {
            assert!(!line.contains(secret), "{secret:?} leaked in: {line}");
        }
    }
}
