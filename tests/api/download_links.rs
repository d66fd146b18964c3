//! GetDownloadLinks: fresh links for a finished task's own videos, from
//! kie.ai's download-url, and nothing asked for a task without one.

use std::time::{Duration, SystemTime};

use hailuo_gateway::pb::{GetDownloadLinksRequest, GetDownloadLinksResponse};
use serde_json::{Value, json};
use tonic::{Code, Status};
use wiremock::Mock;
use wiremock::matchers::{method, path};

use crate::helpers::*;

const DOWNLOAD_PATH: &str = "/api/v1/common/download-url";

async fn links(app: &TestApp, task_id: &str) -> Result<GetDownloadLinksResponse, Status> {
    let answer = app
        .client
        .clone()
        .get_download_links(GetDownloadLinksRequest {
            task_id: task_id.into(),
        })
        .await?;
    Ok(answer.into_inner())
}

async fn answer_download_url(app: &TestApp, data: Value) {
    Mock::given(method("POST"))
        .and(path(DOWNLOAD_PATH))
        .respond_with(kie_ok(data))
        .mount(&app.upstream)
        .await;
}

#[tokio::test]
async fn a_succeeded_task_gets_a_fresh_link_for_its_own_video() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("task_done", &["success"])).await;
    let fresh = "https://tempfile.redpandaai.co/fresh/video.mp4?sig=abc";
    answer_download_url(&app, json!(fresh)).await;
    let before = SystemTime::now();

    let answer = links(&app, "task_done").await.expect("links");

    assert_eq!(answer.links.len(), 1);
    let link = &answer.links[0];
    assert_eq!(link.url, fresh);
    assert_eq!(link.video_url, "https://cdn.example/video.mp4");
    let expires: SystemTime = link
        .expire_time
        .expect("expire_time")
        .try_into()
        .expect("a time");
    let after = SystemTime::now();
    // 20 minutes from the moment the gateway asked, within this call.
    assert!(
        expires >= before + Duration::from_secs(20 * 60)
            && expires <= after + Duration::from_secs(20 * 60),
        "{expires:?} not 20 min after the ask"
    );
    let asked = app.upstream_requests(DOWNLOAD_PATH).await;
    assert_eq!(asked.len(), 1);
    let body: Value = serde_json::from_slice(&asked[0].body).expect("json");
    assert_eq!(body, json!({"url": "https://cdn.example/video.mp4"}));
    assert_eq!(
        asked[0].headers.get("authorization").expect("auth"),
        &format!("Bearer {TEST_KEY}")
    );
}

#[tokio::test]
async fn a_link_given_as_an_object_is_read_too_and_a_non_url_is_a_bad_answer() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("task_done", &["success"])).await;
    answer_download_url(&app, json!({"url": "https://f.example/v.mp4"})).await;
    let answer = links(&app, "task_done").await.expect("links");
    assert_eq!(answer.links[0].url, "https://f.example/v.mp4");

    let app = spawn_app().await;
    mount_record(&app, Sequence::states("task_done", &["success"])).await;
    answer_download_url(&app, json!("javascript:alert(1)")).await;
    let status = links(&app, "task_done").await.expect_err("not a link");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "UPSTREAM_BAD_RESPONSE");
    assert_eq!(info.metadata["endpoint"], "downloadUrl");
}

#[tokio::test]
async fn a_task_without_a_video_is_failed_precondition_and_nothing_is_asked() {
    for state in ["generating", "fail"] {
        let app = spawn_app().await;
        mount_record(&app, Sequence::states("task_x", &[state])).await;
        answer_download_url(&app, json!("https://f.example/v.mp4")).await;

        let status = links(&app, "task_x").await.expect_err("no video");

        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{state}: {status:?}"
        );
        let info = error_info(&status);
        assert_eq!(info.reason, "TASK_NOT_SUCCEEDED");
        assert_eq!(info.domain, "hailuo-gateway");
        assert_eq!(app.upstream_count(DOWNLOAD_PATH).await, 0, "{state}");
    }
}

#[tokio::test]
async fn an_unknown_or_malformed_task_id_asks_kie_for_no_link() {
    let app = spawn_app().await;
    mount_record(&app, kie_error(422, "recordInfo is null")).await;
    answer_download_url(&app, json!("https://f.example/v.mp4")).await;

    let status = links(&app, "task_nobody").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = links(&app, "../etc?url=https://evil.example/x.mp4")
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["task_id"]);
    assert_eq!(app.upstream_count(DOWNLOAD_PATH).await, 0);
    assert_eq!(
        app.upstream_count(RECORD_PATH).await,
        1,
        "only the unknown task"
    );
}
