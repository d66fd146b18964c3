use hailuo_gateway::pb::TaskState;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

#[tokio::test]
async fn get_task_reads_a_realistic_success_record() {
    let app = spawn_app().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .and(query_param("taskId", "task_hailuo_1"))
        .respond_with(kie_ok(record("task_hailuo_1", "success")))
        .mount(&app.upstream)
        .await;

    let task = app.get("task_hailuo_1").await.expect("task");

    assert_eq!(task.task_id, "task_hailuo_1");
    assert_eq!(task.model, "hailuo/02-image-to-video-standard");
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.video_urls, ["https://cdn.example/video.mp4"]);
    assert_eq!(task.fail_code, "");
    let created = task.create_time.expect("create_time");
    assert_eq!((created.seconds, created.nanos), (1765185334, 551_000_000));
    assert!(task.complete_time.is_some());
    let cost = task.cost_time.expect("cost_time");
    assert_eq!((cost.seconds, cost.nanos), (65, 0));
}

#[tokio::test]
async fn get_task_reads_a_failed_record_as_data_not_an_error() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("t1", &["fail"])).await;

    let task = app.get("t1").await.expect("task");

    assert_eq!(task.state(), TaskState::Failed);
    assert_eq!(task.fail_code, "500");
    assert_eq!(task.fail_message, "content moderation rejected the image");
    assert!(task.video_urls.is_empty());
}

#[tokio::test]
async fn get_task_tolerates_message_instead_of_msg_and_unknown_fields() {
    let app = spawn_app().await;
    let body = json!({"code": 200, "message": "success", "extra": [1, 2], "data": {
        "taskId": "t1", "state": "generating", "resultJson": null, "failCode": "",
        "createTime": "1765185334551", "somethingNew": {"a": 1}
    }});
    mount_record(
        &app,
        Sequence::new(vec![ResponseTemplate::new(200).set_body_json(body)]),
    )
    .await;

    let task = app.get("t1").await.expect("task");

    assert_eq!(task.state(), TaskState::Generating);
    assert_eq!(task.fail_code, "");
    assert!(task.create_time.is_some());
    assert!(task.update_time.is_none());
}

#[tokio::test]
async fn an_unknown_task_is_not_found_in_each_way_kie_says_so() {
    let answers = [
        kie_error(422, "recordInfo is null"),
        kie_error(404, "task not found"),
        kie_ok(serde_json::Value::Null),
    ];
    for answer in answers {
        let app = spawn_app().await;
        mount_record(&app, Sequence::new(vec![answer])).await;

        let status = app.get("t_missing").await.expect_err("not found");

        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "TASK_NOT_FOUND");
        assert_eq!(info.domain, "kie.ai");
    }
}
