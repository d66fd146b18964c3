use std::time::Duration;

use hailuo_gateway::pb::{TaskState, WatchTaskResponse};
use tonic::{Code, Streaming};
use wiremock::ResponseTemplate;

use crate::helpers::*;

/// Reads the stream to its end: the states it carried and how it ended.
async fn collect(
    mut stream: Streaming<WatchTaskResponse>,
) -> (Vec<TaskState>, Result<(), tonic::Status>) {
    let (messages, end) = drain(&mut stream).await;
    assert!(
        messages.iter().all(|m| !m.heartbeat),
        "no heartbeat expected here"
    );
    (states(&messages), end)
}

#[tokio::test]
async fn a_watch_streams_each_state_once_and_ends_ok_after_success() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::states(
            "t1",
            &[
                "waiting",
                "waiting",
                "queuing",
                "queuing",
                "generating",
                "generating",
                "success",
            ],
        ),
    )
    .await;

    let stream = app.watch("t1").await;
    let (states, end) = collect(stream).await;

    assert_eq!(
        states,
        [
            TaskState::Waiting,
            TaskState::Queuing,
            TaskState::Generating,
            TaskState::Succeeded
        ]
    );
    end.expect("ends with OK");
    assert_eq!(
        app.upstream_count(RECORD_PATH).await,
        7,
        "stops reading after success"
    );
}

#[tokio::test]
async fn a_failed_generation_is_a_failed_message_not_an_rpc_error() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::states("t1", &["waiting", "generating", "fail"]),
    )
    .await;

    let mut stream = app.watch("t1").await;
    let (messages, end) = drain(&mut stream).await;

    end.expect("no rpc error");
    let last = last_task(&messages);
    assert_eq!(last.state(), TaskState::Failed);
    assert_eq!(last.fail_code, "500");
    assert_eq!(last.fail_message, "content moderation rejected the image");
}

#[tokio::test]
async fn watching_an_unknown_task_is_not_found() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::new(vec![kie_error(422, "recordInfo is null")]),
    )
    .await;

    let status = app
        .try_watch(watch_request("t_missing"))
        .await
        .expect_err("not found");

    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_info(&status).reason, "TASK_NOT_FOUND");
}

#[tokio::test]
async fn transient_upstream_errors_mid_watch_are_retried_without_ending_the_stream() {
    let app = spawn_app().await;
    let html_502 =
        ResponseTemplate::new(502).set_body_raw("<html>502 Bad Gateway</html>", "text/html");
    mount_record(
        &app,
        Sequence::new(vec![
            kie_ok(record("t1", "waiting")),
            kie_error(500, "Server error"),
            html_502,
            kie_error(429, "rate limited"),
            kie_ok(record("t1", "generating")),
            kie_error(455, "maintenance"),
            kie_ok(record("t1", "success")),
        ]),
    )
    .await;

    let stream = app.watch("t1").await;
    let (states, end) = collect(stream).await;

    assert_eq!(
        states,
        [
            TaskState::Waiting,
            TaskState::Generating,
            TaskState::Succeeded
        ]
    );
    end.expect("ends with OK");
}

#[tokio::test]
async fn a_watch_gives_up_with_unavailable_when_the_retry_budget_is_spent() {
    let app = spawn_app_with(|s| s.watch.retry_budget = 3).await;
    mount_record(
        &app,
        Sequence::new(vec![
            kie_ok(record("t1", "waiting")),
            kie_error(500, "Server error"),
        ]),
    )
    .await;

    let stream = app.watch("t1").await;
    let (states, end) = collect(stream).await;

    assert_eq!(states, [TaskState::Waiting]);
    let status = end.expect_err("gives up");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).reason, "UPSTREAM_RETRIES_EXHAUSTED");
    assert_eq!(app.upstream_count(RECORD_PATH).await, 1 + 3);
}

#[tokio::test]
async fn a_quiet_watch_sends_heartbeats_repeating_the_task() {
    let app = spawn_app_with(|s| s.watch.heartbeat = Duration::from_millis(150)).await;
    mount_record(&app, Sequence::states("t1", &["generating"])).await;

    let mut stream = app.watch("t1").await;
    let first = next_message(&mut stream).await;
    let second = next_message(&mut stream).await;

    assert!(!first.heartbeat);
    assert!(second.heartbeat);
    assert_eq!(state_of(&second.task), TaskState::Generating);
    assert_eq!(second.task.expect("task").task_id, "t1");
}

#[tokio::test]
async fn polling_stops_when_the_last_watcher_leaves() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("t1", &["generating"])).await;

    let mut stream = app.watch("t1").await;
    next_message(&mut stream).await;
    assert_eq!(app.hub.active_pollers(), 1);
    drop(stream);

    let hub = app.hub.clone();
    assert!(
        wait_for(Duration::from_secs(2), || {
            let hub = hub.clone();
            async move { hub.active_pollers() == 0 }
        })
        .await,
        "poller stops"
    );
    let reads = app.upstream_count(RECORD_PATH).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // several poll intervals
    assert!(
        app.upstream_count(RECORD_PATH).await <= reads + 1,
        "no more reads"
    );
}

#[tokio::test]
async fn two_watchers_of_one_task_share_one_poller() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::states(
            "t1",
            &["waiting", "queuing", "generating", "generating", "success"],
        ),
    )
    .await;
    let mut other = app.new_client().await;

    let a = app.watch("t1").await;
    let b = other
        .watch_task(watch_request("t1"))
        .await
        .expect("watch")
        .into_inner();
    let ((states_a, end_a), (states_b, end_b)) = tokio::join!(collect(a), collect(b));

    end_a.expect("ok");
    end_b.expect("ok");
    assert_eq!(states_a.last(), Some(&TaskState::Succeeded));
    assert_eq!(states_b.last(), Some(&TaskState::Succeeded));
    assert_eq!(
        app.upstream_count(RECORD_PATH).await,
        5,
        "one poller for both"
    );
}

/// WatchTask as raw bytes: each message's encoding as the gateway sent it.
async fn watch_raw(app: &TestApp, task_id: &str) -> Streaming<bytes::Bytes> {
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/hailuo.v1.VideoGeneration/WatchTask",
    );
    grpc.server_streaming(tonic::Request::new(watch_request(task_id)), path, RawCodec)
        .await
        .expect("watch")
        .into_inner()
}

/// Encodes requests with prost; hands answers over undecoded.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = hailuo_gateway::pb::WatchTaskRequest;
    type Decode = bytes::Bytes;
    type Encoder = tonic_prost::ProstEncoder<hailuo_gateway::pb::WatchTaskRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

struct RawDecoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[tokio::test]
async fn two_watchers_receive_byte_identical_encodings_of_each_state_change() {
    use prost::Message;

    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::states("t1", &["generating", "generating", "generating", "success"]),
    )
    .await;

    let (mut a, mut b) = tokio::join!(watch_raw(&app, "t1"), watch_raw(&app, "t1"));
    let read_all = async |stream: &mut Streaming<bytes::Bytes>| {
        let mut frames = Vec::new();
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message in time")
            .expect("ok")
        {
            frames.push(frame);
        }
        frames
    };
    let frames_a = read_all(&mut a).await;
    let frames_b = read_all(&mut b).await;

    assert_eq!(frames_a.len(), 2, "GENERATING, then SUCCEEDED");
    assert_eq!(frames_a, frames_b, "the same bytes for both watchers");
    let decoded: Vec<WatchTaskResponse> = frames_a
        .iter()
        .map(|f| WatchTaskResponse::decode(f.clone()).expect("a WatchTaskResponse"))
        .collect();
    assert_eq!(state_of(&decoded[0].task), TaskState::Generating);
    assert_eq!(state_of(&decoded[1].task), TaskState::Succeeded);
    for (frame, message) in frames_a.iter().zip(&decoded) {
        assert!(!message.heartbeat);
        assert_eq!(
            frame[..],
            message.encode_to_vec()[..],
            "prost's own encoding of the message, byte for byte"
        );
    }
}
