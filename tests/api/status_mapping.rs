//! Every row of the README's status mapping table, through CreateTask.

use std::time::Duration;

use tonic::Code;
use wiremock::ResponseTemplate;

use crate::helpers::*;

async fn create_with_upstream(answer: ResponseTemplate) -> tonic::Status {
    let app = spawn_app().await;
    mount_create(&app, answer).await;
    let status = app.create(valid_request()).await.expect_err("must fail");
    assert_eq!(
        app.upstream_count(CREATE_PATH).await,
        1,
        "createTask is never retried"
    );
    status
}

#[tokio::test]
async fn each_kie_code_maps_to_its_grpc_status_reason_and_details() {
    let table = [
        (401, Code::Internal, "UPSTREAM_UNAUTHENTICATED", None),
        (402, Code::FailedPrecondition, "INSUFFICIENT_CREDITS", None),
        (404, Code::NotFound, "TASK_NOT_FOUND", None),
        (
            422,
            Code::InvalidArgument,
            "UPSTREAM_VALIDATION_FAILED",
            None,
        ),
        (
            429,
            Code::ResourceExhausted,
            "UPSTREAM_RATE_LIMITED",
            Some(Duration::from_secs(10)),
        ),
        (
            433,
            Code::ResourceExhausted,
            "UPSTREAM_RATE_LIMITED",
            Some(Duration::from_secs(10)),
        ),
        (
            455,
            Code::Unavailable,
            "UPSTREAM_MAINTENANCE",
            Some(Duration::from_secs(30)),
        ),
        (500, Code::Internal, "UPSTREAM_INTERNAL_ERROR", None),
        (501, Code::Internal, "GENERATION_FAILED", None),
        (505, Code::Unimplemented, "FEATURE_DISABLED", None),
        (299, Code::Unknown, "UPSTREAM_UNKNOWN_CODE", None),
    ];
    for (kie_code, grpc_code, reason, retry) in table {
        let msg = format!("kie says {kie_code}");
        let status = create_with_upstream(kie_error(kie_code, &msg)).await;

        assert_eq!(status.code(), grpc_code, "kie {kie_code}: {status:?}");
        assert!(
            status.message().contains(&msg),
            "message carries kie's msg: {status:?}"
        );
        let info = error_info(&status);
        assert_eq!(info.reason, reason, "kie {kie_code}");
        assert_eq!(info.domain, "kie.ai");
        assert_eq!(info.metadata.get("kie_code"), Some(&kie_code.to_string()));
        assert_eq!(info.metadata.get("kie_msg"), Some(&msg));
        assert_eq!(retry_delay(&status), retry, "kie {kie_code}");
    }
}

#[tokio::test]
async fn the_json_code_wins_over_the_http_status() {
    let answer = ResponseTemplate::new(500)
        .set_body_json(serde_json::json!({"code": 402, "msg": "Credits insufficient"}));
    let status = create_with_upstream(answer).await;
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_non_json_error_uses_the_http_status() {
    let status =
        create_with_upstream(ResponseTemplate::new(429).set_body_string("slow down")).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(10)));
}

#[tokio::test]
async fn retry_info_uses_the_upstream_retry_after() {
    let answer = kie_error(429, "rate limited").insert_header("Retry-After", "7");
    let status = create_with_upstream(answer).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_proxys_html_502_503_or_504_is_unavailable_for_a_read() {
    for http in [502, 503, 504] {
        let app = spawn_app().await;
        mount_record(
            &app,
            Sequence::new(vec![ResponseTemplate::new(http).set_body_raw(
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
                "text/html",
            )]),
        )
        .await;
        let status = app.get("t1").await.expect_err("proxy page");
        assert_eq!(status.code(), Code::Unavailable, "HTTP {http}");
        assert_eq!(error_info(&status).reason, "UPSTREAM_UNAVAILABLE");
        assert!(retry_delay(&status).is_some());
    }
}

#[tokio::test]
async fn a_proxys_5xx_page_leaves_a_create_unknown() {
    for (http, code) in [(502, Code::Unknown), (504, Code::DeadlineExceeded)] {
        let answer = ResponseTemplate::new(http).set_body_raw(
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            "text/html",
        );
        let status = create_with_upstream(answer).await;
        assert_eq!(status.code(), code, "HTTP {http}");
        assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
        assert_eq!(retry_delay(&status), None);
    }
}

#[tokio::test]
async fn an_unparseable_success_body_leaves_a_create_unknown() {
    for body in [
        "{not json",
        "[]",
        r#"{"code":200,"msg":"success","data":{"nothing":1}}"#,
    ] {
        let status = create_with_upstream(ResponseTemplate::new(200).set_body_string(body)).await;
        assert_eq!(status.code(), Code::Unknown, "{body}");
        assert_eq!(
            error_info(&status).reason,
            "CREATE_OUTCOME_UNKNOWN",
            "{body}"
        );
        assert!(
            error_info(&status).metadata["cause"].contains("unreadable answer"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn an_unparseable_record_is_internal() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::new(vec![
            ResponseTemplate::new(200).set_body_string("{not json"),
        ]),
    )
    .await;
    let status = app.get("t1").await.expect_err("unreadable");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(error_info(&status).reason, "UPSTREAM_BAD_RESPONSE");
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = free_port();
    let app = spawn_app_with(|s| {
        s.upstream.base_url = format!("http://127.0.0.1:{port}").parse().expect("url");
    })
    .await;

    let status = app.create(valid_request()).await.expect_err("unreachable");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(info.domain, "kie.ai");
    // Nothing was sent: a retry is safe, and says when.
    assert!(retry_delay(&status).is_some());
}

#[tokio::test]
async fn an_upstream_slower_than_the_callers_deadline_is_deadline_exceeded() {
    let app = spawn_app().await;
    mount_create(
        &app,
        kie_ok(serde_json::json!({"taskId": "late"})).set_delay(Duration::from_secs(3)),
    )
    .await;
    let mut request = tonic::Request::new(valid_request());
    request.set_timeout(Duration::from_secs(1));

    let started = std::time::Instant::now();
    let status = app.create(request).await.expect_err("too slow");

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The gateway's own answer (with details) beats the caller's timer, and
    // says the task may exist.
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
}

#[tokio::test]
async fn the_configured_upstream_timeout_applies_without_a_caller_deadline() {
    let app = spawn_app_with(|s| s.upstream.timeout = Duration::from_millis(200)).await;
    mount_record(
        &app,
        Sequence::new(vec![
            kie_ok(record("t1", "waiting")).set_delay(Duration::from_secs(3)),
        ]),
    )
    .await;

    let status = app.get("t1").await.expect_err("timeout");

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(error_info(&status).reason, "UPSTREAM_TIMEOUT");
}

#[tokio::test]
async fn a_refused_key_is_the_callers_problem_only_when_it_is_the_callers_key() {
    let app = spawn_app_with(|s| s.upstream.key_passthrough = true).await;
    mount_create(&app, kie_error(401, "You do not have access permissions")).await;

    let mut request = tonic::Request::new(valid_request());
    request
        .metadata_mut()
        .insert("authorization", "Bearer wrong-key".parse().expect("ascii"));
    let callers = app.create(request).await.expect_err("refused");
    let gateways = app.create(valid_request()).await.expect_err("refused");

    assert_eq!(callers.code(), Code::Unauthenticated);
    assert_eq!(gateways.code(), Code::Internal);
    for status in [&callers, &gateways] {
        assert_eq!(error_info(status).reason, "UPSTREAM_UNAUTHENTICATED");
        assert!(!status.message().contains(TEST_KEY));
        assert!(!status.message().contains("wrong-key"));
    }
}

#[tokio::test]
async fn a_malformed_caller_key_is_unauthenticated_before_any_upstream_call() {
    let app = spawn_app_with(|s| s.upstream.key_passthrough = true).await;
    mount_create_ok(&app, "t1").await;
    let mut request = tonic::Request::new(valid_request());
    request.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwYXNz".parse().expect("ascii"),
    );

    let status = app.create(request).await.expect_err("refused");

    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).reason, "MISSING_API_KEY");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0);
}
