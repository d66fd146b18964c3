//! recordInfo: shapes per state, timings, unknown tasks, the result video.

use std::time::Duration;

use hailuo_gateway::simulator::SimulatorConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{KEY, body, config, fast, spawn_sim};

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

#[tokio::test]
async fn an_unknown_task_is_422_record_info_is_null() {
    let sim = spawn_sim(config()).await;
    let answer = sim.record_info("task_hailuo_123").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json,
        json!({"code": 422, "msg": "recordInfo is null", "data": null})
    );
}

#[tokio::test]
async fn a_missing_task_id_is_422() {
    let sim = spawn_sim(config()).await;
    let answer = sim.get("/api/v1/jobs/recordInfo", Some(KEY)).await;
    assert_eq!(answer.json["code"], 422);
    assert_eq!(answer.json["data"], Value::Null);
}

#[tokio::test]
async fn states_advance_waiting_queuing_generating_success() {
    let sim = spawn_sim(SimulatorConfig {
        timings: fast(150),
        ..config()
    })
    .await;
    let task_id = sim.create_ok("a cat").await;
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.last().map(String::as_str) != Some("success") {
        assert!(
            std::time::Instant::now() < deadline,
            "never succeeded: {seen:?}"
        );
        let state = sim.state_of(&task_id).await;
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["waiting", "queuing", "generating", "success"]);
}

#[tokio::test]
async fn a_running_task_has_no_result_and_null_end_fields() {
    let sim = spawn_sim(SimulatorConfig {
        timings: fast(10_000),
        ..config()
    })
    .await;
    let before = now_ms();
    let request = body("a dog");
    let task_id = sim.create_body_ok(&request).await;
    let answer = sim.record_info(&task_id).await;
    assert_eq!(answer.json["code"], 200);
    assert_eq!(answer.json["msg"], "success");
    let task = &answer.json["data"];
    assert_eq!(task["taskId"], task_id.as_str());
    assert_eq!(task["model"], "hailuo/02-image-to-video-standard");
    assert_eq!(task["state"], "waiting");
    let param: Value =
        serde_json::from_str(task["param"].as_str().expect("param is a JSON string"))
            .expect("param parses");
    assert_eq!(param, request, "param echoes the createTask body");
    for field in [
        "resultJson",
        "failCode",
        "failMsg",
        "costTime",
        "completeTime",
    ] {
        assert_eq!(task[field], Value::Null, "{field}");
    }
    let created = task["createTime"].as_u64().expect("createTime in ms");
    assert!(created >= before && created <= now_ms(), "{created}");
    assert_eq!(task["updateTime"], created);
    assert!(
        task.get("progress").is_some(),
        "undocumented extras present"
    );
}

#[tokio::test]
async fn a_successful_task_carries_its_result_as_a_json_string() {
    let sim = spawn_sim(config()).await;
    let task_id = sim.create_ok("a cat").await;
    let task = sim
        .wait_for_state(&task_id, "success", Duration::from_secs(5))
        .await;
    let result: Value = serde_json::from_str(
        task["resultJson"]
            .as_str()
            .expect("resultJson is a JSON string"),
    )
    .expect("resultJson parses");
    let video_url = format!("{}/sim/videos/{task_id}.mp4", sim.base_url);
    assert_eq!(result, json!({"resultUrls": [video_url]}));
    assert_eq!(task["failCode"], Value::Null);
    assert_eq!(task["failMsg"], Value::Null);
    let created = task["createTime"].as_u64().expect("createTime");
    let completed = task["completeTime"].as_u64().expect("completeTime");
    let cost = task["costTime"].as_u64().expect("costTime on success");
    assert_eq!(completed, created + cost);
    assert_eq!(cost, 150, "three states of 50 ms");
    assert_eq!(task["updateTime"], completed);
    assert_eq!(task["progress"], 100);
}

#[tokio::test]
async fn the_result_url_serves_a_real_mp4() {
    let sim = spawn_sim(config()).await;
    let task_id = sim.create_ok("a cat").await;
    let early = sim
        .client
        .get(sim.url(&format!("/sim/videos/{task_id}.mp4")))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        early.status(),
        StatusCode::NOT_FOUND,
        "no video before success"
    );
    let task = sim
        .wait_for_state(&task_id, "success", Duration::from_secs(5))
        .await;
    let result: Value =
        serde_json::from_str(task["resultJson"].as_str().expect("string")).expect("parses");
    let url = result["resultUrls"][0].as_str().expect("url");
    let response = sim.client.get(url).send().await.expect("video answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    let bytes = response.bytes().await.expect("video bytes");
    assert!(
        bytes.len() > 1000 && bytes.len() < 64 * 1024,
        "{}",
        bytes.len()
    );
    assert_eq!(&bytes[4..8], b"ftyp", "an ISO media file");
}
