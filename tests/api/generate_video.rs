//! GenerateVideo: CreateTask's path, then WatchTask's, in one stream.

use std::time::Duration;

use hailuo_gateway::pb::{
    CreateTaskRequest, GenerateVideoRequest, GenerateVideoResponse, TaskState,
};
use tonic::{Code, Status, Streaming};
use wiremock::ResponseTemplate;

use crate::helpers::*;

const HANG: Duration = Duration::from_secs(30);

fn generate_request(create: CreateTaskRequest) -> GenerateVideoRequest {
    GenerateVideoRequest {
        create: Some(create),
    }
}

/// Opens a GenerateVideo stream, or the status the call ended with before
/// any message.
async fn generate(
    app: &TestApp,
    create: CreateTaskRequest,
) -> Result<Streaming<GenerateVideoResponse>, Status> {
    let mut client = app.new_client().await;
    client
        .generate_video(generate_request(create))
        .await
        .map(tonic::Response::into_inner)
}

async fn next(stream: &mut Streaming<GenerateVideoResponse>) -> GenerateVideoResponse {
    tokio::time::timeout(HANG, stream.message())
        .await
        .expect("a message in time")
        .expect("ok")
        .expect("the stream stays open")
}

/// Every message to the end of the stream, and how it ended.
async fn drain_generate(
    stream: &mut Streaming<GenerateVideoResponse>,
) -> (Vec<GenerateVideoResponse>, Result<(), Status>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(HANG, stream.message()).await {
            Ok(Ok(Some(m))) => messages.push(m),
            Ok(Ok(None)) => return (messages, Ok(())),
            Ok(Err(status)) => return (messages, Err(status)),
            Err(_) => panic!("stream hung after {} messages", messages.len()),
        }
    }
}

fn task_states(messages: &[GenerateVideoResponse]) -> Vec<TaskState> {
    messages
        .iter()
        .filter(|m| !m.heartbeat)
        .filter_map(|m| m.task.as_ref().map(|t| t.state()))
        .collect()
}

#[tokio::test]
async fn generate_video_sends_the_task_id_first_then_each_state_and_ends_ok_after_success() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    mount_record(
        &app,
        Sequence::states("t1", &["waiting", "queuing", "generating", "success"]),
    )
    .await;

    let mut stream = generate(&app, valid_request()).await.expect("stream");
    let first = next(&mut stream).await;
    assert_eq!(first.task_id, "t1");
    assert!(
        first.task.is_none(),
        "the first message comes before any read"
    );
    let (rest, end) = drain_generate(&mut stream).await;

    end.expect("ends with OK");
    assert!(rest.iter().all(|m| m.task_id == "t1"));
    assert_eq!(
        task_states(&rest),
        [
            TaskState::Waiting,
            TaskState::Queuing,
            TaskState::Generating,
            TaskState::Succeeded
        ]
    );
    let last = rest.last().and_then(|m| m.task.clone()).expect("last task");
    assert_eq!(last.video_urls, ["https://cdn.example/video.mp4"]);
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
    let body = app.first_create_body().await;
    assert_eq!(body["input"]["prompt"], "a cat surfing a wave at sunset");
    let count = app
        .metric(r#"hailuo_gateway_rpcs_total{method="GenerateVideo",caller="anonymous",code="OK"}"#)
        .await;
    assert_eq!(count, Some(1.0), "counted once, under its own method");
}

#[tokio::test]
async fn a_failed_generation_is_the_last_message_and_the_stream_ends_ok() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    mount_record(
        &app,
        Sequence::states("t1", &["waiting", "generating", "fail"]),
    )
    .await;

    let mut stream = generate(&app, valid_request()).await.expect("stream");
    let (messages, end) = drain_generate(&mut stream).await;

    end.expect("a failed generation is not an rpc error");
    assert_eq!(messages[0].task_id, "t1");
    let last = messages.last().and_then(|m| m.task.clone()).expect("last");
    assert_eq!(last.state(), TaskState::Failed);
    assert_eq!(last.fail_code, "500");
    assert_eq!(last.fail_message, "content moderation rejected the image");
}

#[tokio::test]
async fn an_invalid_request_is_the_status_before_any_message_and_nothing_is_sent() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;

    let missing = generate(&app, CreateTaskRequest::default())
        .await
        .expect_err("refused");
    let mut client = app.new_client().await;
    let no_create = client
        .generate_video(GenerateVideoRequest { create: None })
        .await
        .expect_err("refused");

    for status in [missing, no_create] {
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(error_info(&status).reason, "INVALID_REQUEST");
        assert_eq!(bad_fields(&status), ["image_url", "prompt"]);
    }
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0);
}

#[tokio::test]
async fn no_credits_is_the_status_before_any_message_as_create_task_answers_it() {
    let app = spawn_app().await;
    mount_create(&app, kie_error(402, "Credits insufficient")).await;

    let status = generate(&app, valid_request()).await.expect_err("refused");
    let via_create = app.create(valid_request()).await.expect_err("refused");

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).reason, "INSUFFICIENT_CREDITS");
    assert_eq!(status.code(), via_create.code());
    assert_eq!(status.message(), via_create.message());
    let (ours, theirs) = (error_info(&status), error_info(&via_create));
    assert_eq!((ours.reason, ours.domain), (theirs.reason, theirs.domain));
    assert_eq!(ours.metadata, theirs.metadata);
}

#[tokio::test]
async fn a_stream_cancelled_midway_is_resumed_by_the_same_request_id_with_one_create() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut states = vec!["waiting"];
    states.extend(["generating"; 20]);
    states.push("success");
    mount_record(&app, Sequence::states("t1", &states)).await;
    let request = with_request_id("gen-1");

    let mut first = generate(&app, request.clone()).await.expect("stream");
    assert_eq!(next(&mut first).await.task_id, "t1");
    let seen = next(&mut first).await;
    assert_eq!(seen.task.expect("task").state(), TaskState::Waiting);
    drop(first);
    let cancelled =
        r#"hailuo_gateway_rpcs_total{method="GenerateVideo",caller="anonymous",code="CANCELLED"}"#;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            app.metric(cancelled).await == Some(1.0)
        })
        .await,
        "the cancelled call is counted once"
    );

    let mut again = generate(&app, request).await.expect("stream");
    let (messages, end) = drain_generate(&mut again).await;

    end.expect("ends with OK");
    assert!(messages.iter().all(|m| m.task_id == "t1"), "the same task");
    assert_eq!(task_states(&messages).last(), Some(&TaskState::Succeeded));
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1, "one create");
}

#[tokio::test]
async fn an_unknown_create_outcome_is_answered_as_create_task_answers_it_and_never_created_again() {
    let app = spawn_app().await;
    // A proxy's HTML page after the request went out: kie.ai may have made
    // the task.
    mount_create(
        &app,
        ResponseTemplate::new(502).set_body_string("<html>bad gateway</html>"),
    )
    .await;

    let anonymous = generate(&app, valid_request()).await.expect_err("unknown");
    assert_eq!(anonymous.code(), Code::Unknown);
    assert_eq!(error_info(&anonymous).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&anonymous), None, "no invitation to retry");

    let request = with_request_id("gen-unknown");
    let status = generate(&app, request.clone()).await.expect_err("unknown");
    let again = generate(&app, request.clone()).await.expect_err("unknown");
    let via_create = app.create(request).await.expect_err("unknown");

    // No callback URL of the gateway's: the id can never be learned.
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(retry_delay(&status), None);
    for other in [&again, &via_create] {
        assert_eq!(other.code(), status.code());
        assert_eq!(error_info(other).reason, "CREATE_OUTCOME_UNKNOWN");
    }
    assert_eq!(
        app.upstream_count(CREATE_PATH).await,
        2,
        "one create without request_id, one for the request_id"
    );
}

#[tokio::test]
async fn at_shutdown_a_request_id_stream_says_call_again_and_one_without_names_its_task() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    mount_record(&app, Sequence::states("t1", &["generating"])).await;

    let mut keyed = generate(&app, with_request_id("gen-2"))
        .await
        .expect("stream");
    let mut anonymous = generate(&app, valid_request()).await.expect("stream");
    for stream in [&mut keyed, &mut anonymous] {
        next(stream).await;
        assert_eq!(
            next(stream).await.task.expect("task").state(),
            TaskState::Generating
        );
    }
    let TestApp { gateway, upstream } = app;
    drop(gateway);

    let (_, keyed_end) = drain_generate(&mut keyed).await;
    let keyed_end = keyed_end.expect_err("unavailable");
    assert_eq!(keyed_end.code(), Code::Unavailable);
    assert_eq!(error_info(&keyed_end).reason, "SHUTTING_DOWN");

    let (_, anonymous_end) = drain_generate(&mut anonymous).await;
    let anonymous_end = anonymous_end.expect_err("interrupted");
    assert_eq!(anonymous_end.code(), Code::FailedPrecondition);
    let info = error_info(&anonymous_end);
    assert_eq!(info.reason, "WATCH_INTERRUPTED");
    assert_eq!(info.metadata["task_id"], "t1");
    assert_eq!(info.metadata["cause"], "SHUTTING_DOWN");
    assert_eq!(retry_delay(&anonymous_end), None, "no invitation to retry");
    assert!(anonymous_end.message().contains("WatchTask"));
    drop(upstream);
}

#[tokio::test]
async fn across_a_fleet_a_request_id_re_attaches_after_a_client_crash_and_a_replica_restart() {
    let upstream = wiremock::MockServer::start().await;
    let redis = crate::redis_server::RedisServer::start().await;
    // A slow answer, so that the first caller is gone before it comes.
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path(CREATE_PATH))
        .respond_with(kie_ok(serde_json::json!({"taskId": "t1"})).set_delay(Duration::from_secs(1)))
        .mount(&upstream)
        .await;
    let mut states = vec!["waiting"];
    states.extend(["generating"; 10]);
    states.push("success");
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path(RECORD_PATH))
        .respond_with(Sequence::states("t1", &states))
        .mount(&upstream)
        .await;
    let replica = || {
        let mut settings = test_settings(&upstream.uri());
        settings.redis = Some(redis.settings());
        spawn_gateway(settings)
    };
    let (a, b) = (replica().await, replica().await);
    let request = generate_request(with_request_id("gen-fleet"));

    // The caller crashes while the create is on its way to kie.ai.
    let mut client_a = a.new_client().await;
    let crashed = tokio::time::timeout(
        Duration::from_millis(300),
        client_a.generate_video(request.clone()),
    )
    .await;
    assert!(crashed.is_err(), "the create was still in flight");
    drop(client_a);

    // It comes back through the other replica: the same attempt's task.
    let mut client_b = b.new_client().await;
    let mut stream = client_b
        .generate_video(request.clone())
        .await
        .expect("stream")
        .into_inner();
    let (messages, end) = drain_generate(&mut stream).await;
    end.expect("ends with OK");
    assert_eq!(messages[0].task_id, "t1");
    assert_eq!(task_states(&messages).last(), Some(&TaskState::Succeeded));

    // The replica that made the task restarts; the call again gets the
    // finished task from a new replica.
    drop(a);
    let c = replica().await;
    let mut client_c = c.new_client().await;
    let mut stream = client_c
        .generate_video(request)
        .await
        .expect("stream")
        .into_inner();
    let (messages, end) = drain_generate(&mut stream).await;
    end.expect("ends with OK");
    assert!(messages.iter().all(|m| m.task_id == "t1"));
    assert_eq!(task_states(&messages), [TaskState::Succeeded]);

    assert_eq!(received(&upstream, CREATE_PATH).await, 1, "one create");
}
