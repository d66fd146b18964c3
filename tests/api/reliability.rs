//! Idempotency, upstream protection, faults and hostile input.

use std::time::{Duration, Instant};

use hailuo_gateway::config::{PollCadence, Secret};
use hailuo_gateway::http::callbacks::sign;
use hailuo_gateway::pb::TaskState;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn fifty_concurrent_creates_with_one_request_id_make_one_upstream_call() {
    let app = spawn_app().await;
    mount_create(
        &app,
        kie_ok(json!({"taskId": "t_once"})).set_delay(Duration::from_millis(300)),
    )
    .await;

    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            client.create_task(with_request_id("order-1")).await
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        ids.push(
            call.await
                .expect("join")
                .expect("created")
                .into_inner()
                .task_id,
        );
    }

    assert_eq!(ids, vec!["t_once".to_string(); 50]);
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_task_and_different_parameters_are_refused() {
    let app = spawn_app().await;
    mount_create(&app, kie_ok(json!({"taskId": "t_first"}))).await;

    let first = app
        .create(with_request_id("order-2"))
        .await
        .expect("created");
    let again = app
        .create(with_request_id("order-2"))
        .await
        .expect("replayed");
    let mut changed = with_request_id("order-2");
    changed.prompt = "a different prompt".into();
    let refused = app.create(changed).await.expect_err("reused");

    assert_eq!(first, "t_first");
    assert_eq!(again, "t_first");
    assert_eq!(refused.code(), Code::AlreadyExists);
    let info = error_info(&refused);
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        info.metadata.get("request_id").map(String::as_str),
        Some("order-2")
    );
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
    // Without a request_id every call is a new task.
    app.create(valid_request()).await.expect("created");
    app.create(valid_request()).await.expect("created");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 3);
}

#[tokio::test]
async fn a_failed_first_attempt_is_not_remembered() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("unused", &["waiting"])).await;
    mount_create(
        &app,
        Sequence::new(vec![
            kie_error(500, "Server internal error"),
            kie_ok(json!({"taskId": "t_second_try"})),
        ]),
    )
    .await;

    let failed = app
        .create(with_request_id("order-3"))
        .await
        .expect_err("500");
    let retried = app
        .create(with_request_id("order-3"))
        .await
        .expect("created");

    assert_eq!(failed.code(), Code::Internal);
    assert_eq!(retried, "t_second_try");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 2);
}

#[tokio::test]
async fn a_task_created_after_the_caller_left_goes_to_its_retry() {
    let app = spawn_app().await;
    mount_create(
        &app,
        kie_ok(json!({"taskId": "t_orphan"})).set_delay(Duration::from_millis(400)),
    )
    .await;

    let mut client = app.client.clone();
    let leaving = tokio::spawn(async move { client.create_task(with_request_id("order-4")).await });
    assert!(
        wait_for(Duration::from_secs(5), || async {
            app.upstream_count(CREATE_PATH).await == 1
        })
        .await,
        "the call reached kie.ai"
    );
    leaving.abort(); // the caller goes away mid-call
    assert!(
        wait_for(Duration::from_secs(5), || async {
            app.metric(r#"hailuo_gateway_creates_total{outcome="created"}"#)
                .await
                == Some(1.0)
        })
        .await,
        "kie.ai's late answer came in"
    );

    let retried = app
        .create(with_request_id("order-4"))
        .await
        .expect("created");
    assert_eq!(retried, "t_orphan");
    assert_eq!(
        app.upstream_count(CREATE_PATH).await,
        1,
        "no second video bought"
    );
}

/// An upstream that reads a request and never answers; says when the
/// gateway hung up.
async fn silent_upstream() -> (String, tokio::sync::oneshot::Receiver<Instant>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let _ = closed_tx.send(Instant::now());
                    return;
                }
                Ok(Ok(_)) => {}
                Err(_) => return,
            }
        }
    });
    (url, closed_rx)
}

#[tokio::test]
async fn a_create_outlives_the_callers_deadline_until_the_upstream_timeout() {
    // The caller gives up at 1 s; the attempt is the gateway's and waits
    // for kie.ai's answer up to the upstream timeout (here 2 s), since only
    // that answer says whether a video is being paid for.
    let (url, closed) = silent_upstream().await;
    let app = spawn_app_with(|s| {
        s.upstream.base_url = url.parse().expect("url");
        s.upstream.timeout = Duration::from_secs(2);
    })
    .await;
    let request = with_timeout(valid_request(), Duration::from_secs(1));

    let started = Instant::now();
    let status = app.create(request).await.expect_err("too slow");

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert!(started.elapsed() < Duration::from_millis(1300));
    let hung_up = tokio::time::timeout(Duration::from_secs(4), closed)
        .await
        .expect("the gateway drops the upstream request at its own timeout")
        .expect("closed");
    let held = hung_up.duration_since(started);
    assert!(
        held >= Duration::from_millis(1900) && held < Duration::from_millis(2600),
        "held {held:?}"
    );
    assert_eq!(app.hub.active_pollers(), 0);
}

#[tokio::test]
async fn a_read_past_the_callers_deadline_is_deadline_exceeded_and_the_request_is_dropped() {
    let (url, closed) = silent_upstream().await;
    let mut app = spawn_app_with(|s| s.upstream.base_url = url.parse().expect("url")).await;
    let request = with_timeout(get_request("t1"), Duration::from_secs(1));

    let started = Instant::now();
    let status = app.client.get_task(request).await.expect_err("too slow");

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(error_info(&status).reason, "UPSTREAM_TIMEOUT");
    let hung_up = tokio::time::timeout(Duration::from_secs(2), closed)
        .await
        .expect("the gateway drops the upstream request")
        .expect("closed");
    assert!(hung_up.duration_since(started) < Duration::from_millis(1300));
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_unavailable_for_a_read_and_unknown_for_a_create()
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            drop(socket); // hang up mid-exchange
        }
    });
    let app = spawn_app_with(|s| s.upstream.base_url = url.parse().expect("url")).await;

    let status = app.create(valid_request()).await.expect_err("reset");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");

    let status = app.get("t1").await.expect_err("reset");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).reason, "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn a_429_storm_is_resource_exhausted_with_retry_info_and_no_retry_amplification() {
    let app = spawn_app_with(|s| s.upstream.limits.create_limit = 0).await;
    mount_create(&app, kie_error(429, "The request frequency is too high")).await;

    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            client.create_task(valid_request()).await
        }));
    }
    for call in calls {
        let status = call.await.expect("join").expect_err("429");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_delay(&status), Some(Duration::from_secs(10)));
    }

    assert_eq!(
        app.upstream_count(CREATE_PATH).await,
        50,
        "one upstream call per RPC"
    );
    assert_eq!(app.hub.active_pollers(), 0);
}

#[tokio::test]
async fn creates_beyond_kies_window_are_shed_at_once_when_they_cannot_start_in_time() {
    let app = spawn_app_with(|s| {
        s.upstream.limits.create_limit = 3;
        s.upstream.limits.create_window = Duration::from_secs(10);
    })
    .await;
    mount_create(&app, kie_ok(json!({"taskId": "t"}))).await;

    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let request = with_timeout(valid_request(), Duration::from_secs(2));
        let started = Instant::now();
        let result = app.create(request).await;
        outcomes.push((result, started.elapsed()));
    }

    let (ok, shed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(r, _)| r.is_ok());
    assert_eq!(ok.len(), 3);
    for (result, took) in shed {
        let status = result.expect_err("shed");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = error_info(&status);
        assert_eq!(info.reason, "GATEWAY_OVERLOADED");
        assert_eq!(info.domain, "hailuo-gateway");
        let retry = retry_delay(&status).expect("RetryInfo");
        assert!(
            retry > Duration::from_secs(9),
            "when the window has room: {retry:?}"
        );
        assert!(
            took < Duration::from_millis(500),
            "shed at once, took {took:?}"
        );
    }
    assert_eq!(app.upstream_count(CREATE_PATH).await, 3);
}

#[tokio::test]
async fn a_full_queue_sheds_callers_at_once_and_the_rest_are_served() {
    let app = spawn_app_with(|s| {
        s.upstream.limits.max_in_flight = 1;
        s.upstream.limits.max_queued = 1;
    })
    .await;
    mount_create(
        &app,
        kie_ok(json!({"taskId": "t"})).set_delay(Duration::from_millis(400)),
    )
    .await;

    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            (client.create_task(valid_request()).await, started.elapsed())
        }));
        // Spaced, not awaited: the calls arrive in order while the first
        // is still upstream.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut served = 0;
    let mut shed = 0;
    for call in calls {
        match call.await.expect("join") {
            (Ok(_), _) => served += 1,
            (Err(status), took) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(error_info(&status).reason, "GATEWAY_OVERLOADED");
                assert!(retry_delay(&status).is_some());
                assert!(
                    took < Duration::from_millis(200),
                    "shed at once, took {took:?}"
                );
                shed += 1;
            }
        }
    }
    assert_eq!(
        (served, shed),
        (2, 4),
        "one in flight, one queued, the rest shed"
    );
}

#[tokio::test]
async fn a_two_mib_prompt_is_a_clear_invalid_argument() {
    let app = spawn_app().await;
    let mut request = valid_request();
    request.prompt = "x".repeat(2 * 1024 * 1024);

    let status = app.create(request).await.expect_err("too long");

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["prompt"]);
    assert!(
        status.message().len() < 200,
        "the message does not echo the prompt"
    );
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0);
}

#[tokio::test]
async fn a_ten_mib_callback_body_is_refused_without_reading_it_all() {
    let app = spawn_app().await;
    let status = app
        .post_callback(&app.callback_url(), vec![b'{'; 10 * 1024 * 1024], &[])
        .await;
    // 413, or the connection closed on the sender mid-body (0).
    assert!(status == 413 || status == 0, "got {status}");
    let ok = app
        .post_callback(
            &app.callback_url(),
            br#"{"data":{"taskId":"t_unknown"}}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(ok, 200, "the listener still serves");
}

#[tokio::test]
async fn ten_thousand_bad_signature_callbacks_are_refused_and_change_nothing() {
    let app = spawn_app_with(|s| {
        s.callbacks.hmac_key = Some(Secret::new("the-real-key"));
        s.watch.cadence = PollCadence::constant(Duration::from_secs(30));
    })
    .await;
    mount_record(&app, Sequence::states("t_target", &["generating"])).await;
    let mut stream = app.watch("t_target").await;
    let first = next_message(&mut stream).await;
    assert_eq!(state_of(&first.task), TaskState::Generating);
    let reads = app.upstream_count(RECORD_PATH).await;

    let url = app.callback_url();
    let ts = now_secs();
    let forged = sign("a-guessed-key", "t_target", ts);
    let body = json!({"code": 200, "data": {"taskId": "t_target", "state": "success",
        "resultJson": "{\"resultUrls\":[\"https://evil.example/x.mp4\"]}"}})
    .to_string();
    let http = app.http();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (http, url, body, forged) = (http.clone(), url.clone(), body.clone(), forged.clone());
        senders.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..1250 {
                let status = http
                    .post(&url)
                    .header("x-webhook-timestamp", ts.to_string())
                    .header("x-webhook-signature", &forged)
                    .body(body.clone())
                    .send()
                    .await
                    .expect("send")
                    .status();
                if status == 401 {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for s in senders {
        refused += s.await.expect("join");
    }

    assert_eq!(refused, 10_000);
    assert_eq!(
        app.upstream_count(RECORD_PATH).await,
        reads,
        "not one re-read"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
    assert!(quiet.is_err(), "the watcher saw nothing");
}
