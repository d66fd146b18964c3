//! The transport's edges: compressed requests and answers (gzip, zstd), and
//! a message above the size limit answered RESOURCE_EXHAUSTED, as gRPC's
//! status codes say, with details and nothing sent upstream.

use hailuo_gateway::pb::CreateTaskRequest;
use tonic::Code;
use tonic::codec::CompressionEncoding;

use crate::helpers::*;

/// Above the 21 MiB limit (room for two 10 MiB images).
const TOO_LARGE: usize = 22 * 1024 * 1024;

fn grpc_encoding<T>(response: &tonic::Response<T>) -> Option<&str> {
    response
        .metadata()
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn compressed_requests_are_accepted_and_answers_compressed_when_asked() {
    for (encoding, name) in [
        (CompressionEncoding::Gzip, "gzip"),
        (CompressionEncoding::Zstd, "zstd"),
    ] {
        let app = spawn_app().await;
        mount_create_ok(&app, "t1").await;
        mount_record(&app, Sequence::states("t1", &["success"])).await;
        let mut client = app
            .new_client()
            .await
            .send_compressed(encoding)
            .accept_compressed(encoding);

        let created = client
            .create_task(valid_request())
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}: {e:?}"));
        assert_eq!(created.get_ref().task_id, "t1");
        assert_eq!(grpc_encoding(&created), Some(name));
        let body = app.first_create_body().await;
        assert_eq!(body["input"]["prompt"], valid_request().prompt);

        let watched = client.watch_task(watch_request("t1")).await.expect("watch");
        assert_eq!(grpc_encoding(&watched), Some(name));
        let mut stream = watched.into_inner();
        let first = next_message(&mut stream).await;
        assert_eq!(first.task.expect("a task").task_id, "t1");
    }
}

#[tokio::test]
async fn answers_stay_plain_for_a_caller_that_does_not_ask() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut client = app
        .new_client()
        .await
        .send_compressed(CompressionEncoding::Gzip);

    let created = client.create_task(valid_request()).await.expect("created");

    assert_eq!(grpc_encoding(&created), None);
}

async fn assert_too_large(client_encoding: Option<CompressionEncoding>) {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut client = app.new_client().await;
    if let Some(encoding) = client_encoding {
        client = client.send_compressed(encoding);
    }
    let too_large = CreateTaskRequest {
        prompt: "x".repeat(TOO_LARGE),
        ..valid_request()
    };

    let refused = client
        .create_task(too_large)
        .await
        .expect_err("above the message size limit");

    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let info = error_info(&refused);
    assert_eq!(info.reason, "MESSAGE_TOO_LARGE", "{refused:?}");
    assert_eq!(info.domain, "hailuo-gateway");
    assert_eq!(info.metadata["limit_bytes"], (21 * 1024 * 1024).to_string());
    assert!(
        refused.message().contains("22020096 bytes (21 MiB)"),
        "{refused:?}"
    );
    assert_eq!(retry_delay(&refused), None, "the same message fails again");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0, "no upstream call");
}

#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted_with_details() {
    assert_too_large(None).await;
}

#[tokio::test]
async fn a_compressed_message_that_decompresses_over_the_limit_is_resource_exhausted_too() {
    assert_too_large(Some(CompressionEncoding::Gzip)).await;
}
