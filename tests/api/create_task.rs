use hailuo_gateway::pb::{Resolution, VideoDuration};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn create_task_returns_kies_task_id() {
    let app = spawn_app().await;
    mount_create_ok(&app, "task_hailuo_1765185334551").await;

    let task_id = app.create(valid_request()).await.expect("created");

    assert_eq!(task_id, "task_hailuo_1765185334551");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
}

#[tokio::test]
async fn create_task_sends_the_documented_body_with_defaults_and_no_empty_optionals() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;

    app.create(valid_request()).await.expect("created");

    let body = app.first_create_body().await;
    assert_eq!(
        body,
        json!({
            "model": "hailuo/02-image-to-video-standard",
            "input": {
                "prompt": "a cat surfing a wave at sunset",
                "image_url": "https://example.com/cat.png",
                "duration": "10",
                "resolution": "768P"
            }
        })
    );
}

#[tokio::test]
async fn create_task_sends_every_optional_field_the_caller_set() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut request = valid_request();
    request.end_image_url = "https://example.com/last.webp".into();
    request.duration = VideoDuration::VideoDuration6Seconds as i32;
    request.resolution = Resolution::Resolution512p as i32;
    request.prompt_optimizer = Some(false);
    request.callback_url = "https://hooks.example.com/kie".into();
    request.request_id = "order-42".into();

    app.create(request).await.expect("created");

    let body = app.first_create_body().await;
    assert_eq!(
        body,
        json!({
            "model": "hailuo/02-image-to-video-standard",
            "callBackUrl": "https://hooks.example.com/kie",
            "input": {
                "prompt": "a cat surfing a wave at sunset",
                "image_url": "https://example.com/cat.png",
                "end_image_url": "https://example.com/last.webp",
                "duration": "6",
                "resolution": "512P",
                "prompt_optimizer": false
            }
        })
    );
}

#[tokio::test]
async fn create_task_authenticates_with_bearer_key_user_agent_and_json() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;

    app.create(valid_request()).await.expect("created");

    let request = &app.upstream_requests(CREATE_PATH).await[0];
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("authorization"), format!("Bearer {TEST_KEY}"));
    assert!(
        header("user-agent").starts_with("hailuo-gateway/"),
        "{}",
        header("user-agent")
    );
    assert_eq!(header("content-type"), "application/json");
}

#[tokio::test]
async fn with_key_passthrough_the_callers_bearer_key_is_used() {
    let app = spawn_app_with(|s| s.upstream.key_passthrough = true).await;
    mount_create_ok(&app, "t1").await;
    let mut request = tonic::Request::new(valid_request());
    request
        .metadata_mut()
        .insert("authorization", "Bearer team-a-key".parse().expect("ascii"));

    app.create(request).await.expect("created");
    app.create(valid_request())
        .await
        .expect("created with the gateway key");

    let requests = app.upstream_requests(CREATE_PATH).await;
    let auth: Vec<_> = requests
        .iter()
        .map(|r| {
            r.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        auth,
        [
            "Bearer team-a-key".to_string(),
            format!("Bearer {TEST_KEY}")
        ]
    );
}

#[tokio::test]
async fn without_key_passthrough_the_callers_key_is_ignored() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut request = tonic::Request::new(valid_request());
    request
        .metadata_mut()
        .insert("authorization", "Bearer team-a-key".parse().expect("ascii"));

    app.create(request).await.expect("created");

    let sent = &app.upstream_requests(CREATE_PATH).await[0];
    assert_eq!(
        sent.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
}

#[tokio::test]
async fn the_callers_request_id_comes_back_in_response_and_error_metadata() {
    let mut app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut request = tonic::Request::new(valid_request());
    request
        .metadata_mut()
        .insert("x-request-id", "req-abc-123".parse().expect("ascii"));
    let ok = app.client.create_task(request).await.expect("created");
    assert_eq!(
        ok.metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-abc-123")
    );

    let mut bad = tonic::Request::new(hailuo_gateway::pb::CreateTaskRequest::default());
    bad.metadata_mut()
        .insert("x-request-id", "req-bad-1".parse().expect("ascii"));
    let status = app.client.create_task(bad).await.expect_err("invalid");
    assert_eq!(
        status
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-bad-1")
    );
}

#[tokio::test]
async fn a_request_id_is_made_up_when_the_caller_sends_none() {
    let mut app = spawn_app().await;
    mount_create_ok(&app, "t1").await;

    let ok = app
        .client
        .create_task(valid_request())
        .await
        .expect("created");

    let id = ok
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id")
        .to_string();
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
}
