//! Never pay twice: a createTask whose outcome is unknown is never repeated
//! into a second paid video, and the caller is told exactly what a retry
//! means. Creates are counted at the upstream.

use std::time::Duration;

use hailuo_gateway::pb::CreateTaskRequest;
use tokio::io::AsyncReadExt;
use tonic::Code;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const REASON: &str = "CREATE_OUTCOME_UNKNOWN";

/// An upstream that reads each request and hangs up without answering, as
/// a connection reset after kie.ai made the task looks to the gateway.
async fn hanging_up_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                if matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                drop(socket);
            });
        }
    });
    (url, requests)
}

fn assert_unknown_without_retry(status: &tonic::Status, code: Code) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, REASON);
    assert_eq!(info.domain, "kie.ai");
    assert_eq!(retry_delay(status), None, "no RetryInfo: {status:?}");
    assert!(
        status.message().contains("may have created") && status.message().contains("request_id"),
        "says the task may exist and how to retry safely: {}",
        status.message()
    );
}

/// kie.ai's end-of-task callback for `task_id`, to `url` (unsigned: this
/// gateway has no HMAC key).
async fn post_callback(app: &TestApp, url: &str, task_id: &str) -> u16 {
    let body = serde_json::json!({"code": 200, "msg": "success",
        "data": {"taskId": task_id, "state": "success"}});
    app.post_callback(url, body.to_string(), &[]).await
}

async fn creates_metric(app: &TestApp, outcome: &str) -> u64 {
    let series = format!("hailuo_gateway_creates_total{{outcome=\"{outcome}\"}}");
    app.metric(&series).await.unwrap_or(0.0) as u64
}

#[tokio::test]
async fn a_callers_deadline_shorter_than_kies_answer_gets_the_same_task_on_retry() {
    let app = spawn_app().await;
    mount_create(
        &app,
        kie_ok(serde_json::json!({"taskId": "t_late"})).set_delay(Duration::from_millis(1500)),
    )
    .await;

    let first = app
        .create(with_timeout(
            with_request_id("r-late"),
            Duration::from_millis(400),
        ))
        .await
        .expect_err("the deadline ends first");
    assert_eq!(first.code(), Code::DeadlineExceeded, "{first:?}");
    assert_eq!(error_info(&first).reason, REASON);
    assert_eq!(
        error_info(&first)
            .metadata
            .get("awaiting")
            .map(String::as_str),
        Some("answer")
    );
    assert_eq!(retry_delay(&first), None);

    // The retry comes while the attempt is still in flight and waits for it.
    let retried = app
        .create(with_timeout(
            with_request_id("r-late"),
            Duration::from_secs(5),
        ))
        .await
        .expect("the task kie.ai made");
    assert_eq!(retried, "t_late");
    // And later ones get it at once.
    let again = app.create(with_request_id("r-late")).await.expect("known");
    assert_eq!(again, "t_late");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1, "one paid video");
}

#[tokio::test]
async fn a_caller_that_left_still_has_its_late_answer_recorded() {
    let app = spawn_app().await;
    mount_create(
        &app,
        kie_ok(serde_json::json!({"taskId": "t_gone"})).set_delay(Duration::from_millis(600)),
    )
    .await;
    let _ = app
        .create(with_timeout(
            with_request_id("r-gone"),
            Duration::from_millis(200),
        ))
        .await
        .expect_err("deadline");
    // Long after the caller's deadline, the answer came in and was kept.
    assert!(
        wait_for(Duration::from_secs(5), || async {
            creates_metric(&app, "created").await == 1
        })
        .await
    );
    let retried = app
        .create(with_timeout(
            with_request_id("r-gone"),
            Duration::from_millis(300),
        ))
        .await
        .expect("known");
    assert_eq!(retried, "t_gone");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
}

#[tokio::test]
async fn a_lost_answer_is_never_created_again_and_kies_callback_names_the_task() {
    // kie.ai never answers in time: the request went out, the outcome is
    // unknown. The gateway's own callback URL carries the attempt's token.
    let app = spawn_app_with(|s| {
        s.upstream.timeout = Duration::from_millis(300);
        s.callbacks.to_self = true;
    })
    .await;
    mount_create(
        &app,
        kie_ok(serde_json::json!({"taskId": "t_real"})).set_delay(Duration::from_secs(3)),
    )
    .await;

    let first = app
        .create(with_request_id("r-lost"))
        .await
        .expect_err("no answer");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    let info = error_info(&first);
    assert_eq!(info.reason, REASON);
    assert_eq!(
        info.metadata.get("awaiting").map(String::as_str),
        Some("callback")
    );
    assert_eq!(
        info.metadata.get("request_id").map(String::as_str),
        Some("r-lost")
    );
    assert!(retry_delay(&first).is_some(), "a retry is safe: RetryInfo");

    // Retries, as a mesh would make them, never reach kie.ai.
    for _ in 0..5 {
        let status = app
            .create(with_request_id("r-lost"))
            .await
            .expect_err("still unknown");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(error_info(&status).reason, REASON);
    }
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);

    let sent = app.upstream_requests(CREATE_PATH).await.remove(0);
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json");
    let callback_url = body["callBackUrl"]
        .as_str()
        .expect("our callback URL")
        .to_string();
    assert!(
        callback_url.starts_with(&app.http_url("/callbacks/kie?attempt=")),
        "{callback_url}"
    );
    assert!(!callback_url.contains(TEST_KEY));

    // A callback with the token for some other task is re-read and refused:
    // kie.ai's record of that task does not carry this attempt's URL.
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .and(query_param("taskId", "t_other"))
        .respond_with(kie_ok(serde_json::json!({
            "taskId": "t_other", "state": "success",
            "param": serde_json::json!({"callBackUrl": app.http_url("/callbacks/kie")}).to_string(),
        })))
        .mount(&app.upstream)
        .await;
    let posted = post_callback(&app, &callback_url, "t_other").await;
    assert_eq!(posted, 200);
    assert!(
        wait_for(Duration::from_secs(5), || async {
            app.upstream_count(RECORD_PATH).await >= 1
        })
        .await
    );
    let status = app
        .create(with_request_id("r-lost"))
        .await
        .expect_err("a forged callback settles nothing");
    assert_eq!(error_info(&status).reason, REASON);

    // kie.ai's own callback for the real task: its record echoes the create
    // request, this attempt's URL included.
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .and(query_param("taskId", "t_real"))
        .respond_with(kie_ok(serde_json::json!({
            "taskId": "t_real", "state": "success",
            "param": String::from_utf8(sent.body.clone()).expect("utf-8"),
        })))
        .mount(&app.upstream)
        .await;
    assert_eq!(post_callback(&app, &callback_url, "t_real").await, 200);
    // Retried as a client would, until the callback has named the task.
    let learned = wait_for_some(Duration::from_secs(5), || async {
        let retried = app.create(with_request_id("r-lost")).await;
        if let Err(status) = &retried {
            assert_eq!(error_info(status).reason, REASON, "{status:?}");
        }
        retried.ok()
    })
    .await
    .expect("never learned");
    assert_eq!(learned, "t_real");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1, "one paid video");
    assert_eq!(creates_metric(&app, "maybe_created").await, 1);
    assert_eq!(creates_metric(&app, "resolved_later").await, 1);
}

#[tokio::test]
async fn without_the_gateways_callback_url_a_lost_answer_is_a_failed_precondition() {
    let (url, requests) = hanging_up_upstream().await;
    let app = spawn_app_with(|s| s.upstream.base_url = url.parse().expect("url")).await;

    for _ in 0..3 {
        let status = app
            .create(with_request_id("r-blind"))
            .await
            .expect_err("unknown for good");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(error_info(&status).reason, REASON);
        assert_eq!(retry_delay(&status), None);
        assert!(
            status.message().contains("new request_id"),
            "{}",
            status.message()
        );
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The caller's own callback_url: the gateway cannot learn it either.
    let own = CreateTaskRequest {
        callback_url: "https://caller.example/hook".into(),
        ..with_request_id("r-own")
    };
    let status = app.create(own).await.expect_err("unknown");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_request_id_a_dropped_answer_is_unknown_with_no_retry_info() {
    let (url, requests) = hanging_up_upstream().await;
    let app = spawn_app_with(|s| s.upstream.base_url = url.parse().expect("url")).await;

    let status = app
        .create(valid_request())
        .await
        .expect_err("reset after sending");

    assert_unknown_without_retry(&status, Code::Unknown);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_request_id_a_proxys_5xx_page_is_unknown_and_a_504_deadline_exceeded() {
    for (http, code) in [
        (502, Code::Unknown),
        (503, Code::Unknown),
        (500, Code::Unknown),
        (504, Code::DeadlineExceeded),
    ] {
        let app = spawn_app().await;
        mount_create(
            &app,
            ResponseTemplate::new(http).set_body_raw(
                "<html><body><h1>Bad Gateway</h1></body></html>",
                "text/html",
            ),
        )
        .await;
        let status = app.create(valid_request()).await.expect_err("5xx page");
        assert_unknown_without_retry(&status, code);
        assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
    }
}

#[tokio::test]
async fn without_request_id_kies_silence_past_the_upstream_timeout_is_deadline_exceeded() {
    let app = spawn_app_with(|s| s.upstream.timeout = Duration::from_millis(300)).await;
    mount_create(
        &app,
        kie_ok(serde_json::json!({"taskId": "t"})).set_delay(Duration::from_secs(3)),
    )
    .await;
    let status = app.create(valid_request()).await.expect_err("timeout");
    assert_unknown_without_retry(&status, Code::DeadlineExceeded);
}

#[tokio::test]
async fn a_non_json_4xx_from_a_cdn_made_no_task_and_frees_the_request_id() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(ResponseTemplate::new(403).set_body_string("error code: 1010"))
        .up_to_n_times(1)
        .mount(&app.upstream)
        .await;
    mount_create_ok(&app, "t_second_try").await;

    let status = app
        .create(with_request_id("r-cdn"))
        .await
        .expect_err("refused by the CDN");
    assert_ne!(error_info(&status).reason, REASON, "{status:?}");
    let created = app
        .create(with_request_id("r-cdn"))
        .await
        .expect("nothing was made: the retry creates");
    assert_eq!(created, "t_second_try");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 2);
}

#[tokio::test]
async fn a_refused_connection_sent_nothing_and_is_unavailable_with_retry_info() {
    let port = free_port();
    let app = spawn_app_with(|s| {
        s.upstream.base_url = format!("http://127.0.0.1:{port}").parse().expect("url");
    })
    .await;
    for request in [valid_request(), with_request_id("r-refused")] {
        let status = app.create(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(error_info(&status).reason, "UPSTREAM_UNAVAILABLE");
        assert!(retry_delay(&status).is_some());
    }
    // Nothing was sent, so the request_id is free for the retry.
    let again = app
        .create(with_request_id("r-refused"))
        .await
        .expect_err("still refused");
    assert_eq!(error_info(&again).reason, "UPSTREAM_UNAVAILABLE");
}
