//! Prompt markers: forced createTask codes, failing, slow, held and manual
//! tasks, faulty first polls.

use std::time::Duration;

use hailuo_gateway::simulator::{Completion, Endpoint, SimulatorConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{body, config, fast, spawn_sim};

#[tokio::test]
async fn code_markers_answer_that_kie_code_in_http_200() {
    let sim = spawn_sim(config()).await;
    let expected = [
        (401, "You do not have access permissions"),
        (402, "The current credits are insufficient. Please top up."),
        (422, "Validation failed: the request parameters are invalid"),
        (
            429,
            "The request frequency is too high. Please try again later.",
        ),
        (
            455,
            "The service is under maintenance. Please try again later.",
        ),
        (
            500,
            "Server internal error, please try again in a few minutes",
        ),
        (501, "Generation failed"),
        (505, "This feature is currently disabled"),
    ];
    for (code, msg) in expected {
        let answer = sim.create(&body(&format!("a cat [sim:{code}]"))).await;
        assert_eq!(answer.status, StatusCode::OK, "{code}");
        assert_eq!(answer.json, json!({"code": code, "msg": msg, "data": null}));
        let retry_after = answer.headers.get("retry-after").map(|v| v.as_bytes());
        if code == 429 {
            assert_eq!(retry_after, Some(&b"3"[..]));
        } else {
            assert_eq!(retry_after, None, "{code}");
        }
    }
    assert_eq!(sim.handle.credits(), 1000.0, "refused tasks cost nothing");
}

#[tokio::test]
async fn an_unknown_marker_is_rejected_rather_than_ignored() {
    let sim = spawn_sim(config()).await;
    let answer = sim.create(&body("a cat [sim:fial]")).await;
    assert_eq!(
        answer.json,
        json!({"code": 422, "msg": "input.prompt has an unknown simulator marker [sim:fial]", "data": null})
    );
}

#[tokio::test]
async fn a_fail_task_ends_in_fail_with_a_reason() {
    let sim = spawn_sim(config()).await;
    let task_id = sim.create_ok("a cat [sim:fail]").await;
    let task = sim
        .wait_for_state(&task_id, "fail", Duration::from_secs(5))
        .await;
    assert_eq!(task["failCode"], "500");
    assert_eq!(
        task["failMsg"],
        "Your image was rejected by content moderation. Please try a different image."
    );
    assert_eq!(task["resultJson"], Value::Null);
    assert_eq!(task["costTime"], Value::Null);
    assert!(task["completeTime"].is_u64());
}

#[tokio::test]
async fn slow_tasks_take_ten_times_longer() {
    let sim = spawn_sim(SimulatorConfig {
        timings: fast(100),
        ..config()
    })
    .await;
    let slow = sim.create_ok("[sim:slow] a cat").await;
    let normal = sim.create_ok("a cat").await;
    sim.wait_for_state(&normal, "success", Duration::from_secs(5))
        .await;
    // 300 ms in: the slow task (1 s per state) is still waiting.
    assert_eq!(sim.state_of(&slow).await, "waiting");
}

#[tokio::test]
async fn never_tasks_stay_generating() {
    let sim = spawn_sim(config()).await;
    let never = sim.create_ok("[sim:never]").await;
    let normal = sim.create_ok("a cat").await;
    sim.wait_for_state(&never, "generating", Duration::from_secs(5))
        .await;
    sim.wait_for_state(&normal, "success", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let task = sim.task(&never).await;
    assert_eq!(task["state"], "generating");
    assert_eq!(task["completeTime"], Value::Null);
}

#[tokio::test]
async fn manual_tasks_wait_for_the_control_endpoint() {
    let sim = spawn_sim(config()).await;
    let task_id = sim.create_ok("[sim:manual] a cat").await;
    sim.wait_for_state(&task_id, "generating", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.state_of(&task_id).await, "generating");

    let done = sim
        .client
        .post(sim.url(&format!("/sim/tasks/{task_id}/complete")))
        .send()
        .await
        .expect("answered");
    assert_eq!(done.status(), StatusCode::OK);
    let shown = crate::helpers::json_of(done).await;
    assert_eq!(shown["state"], "success");
    let task = sim.task(&task_id).await;
    assert_eq!(task["state"], "success");
    assert!(task["resultJson"].is_string());

    let again = sim
        .client
        .post(sim.url(&format!("/sim/tasks/{task_id}/complete")))
        .send()
        .await
        .expect("answered");
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let unknown = sim
        .client
        .post(sim.url("/sim/tasks/task_hailuo_1/complete"))
        .send()
        .await
        .expect("answered");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn manual_tasks_can_be_failed_over_http_and_in_process() {
    let sim = spawn_sim(config()).await;
    let over_http = sim.create_ok("[sim:manual]").await;
    let answer = sim
        .client
        .post(sim.url(&format!("/sim/tasks/{over_http}/complete")))
        .body(r#"{"state":"fail","failCode":"422","failMsg":"image too small"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), StatusCode::OK);
    let task = sim.task(&over_http).await;
    assert_eq!(
        (&task["state"], &task["failCode"], &task["failMsg"]),
        (&json!("fail"), &json!("422"), &json!("image too small"))
    );

    let in_process = sim.create_ok("[sim:manual]").await;
    sim.handle
        .complete(&in_process, Completion::fail("501", "generation failed"))
        .expect("completes");
    let task = sim.task(&in_process).await;
    assert_eq!(task["state"], "fail");
    assert_eq!(task["failCode"], "501");

    let bad = sim
        .client
        .post(sim.url(&format!("/sim/tasks/{in_process}/complete")))
        .body(r#"{"state":"exploded"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn poll_markers_fault_the_first_two_reads_then_recover() {
    let sim = spawn_sim(SimulatorConfig {
        timings: fast(10_000),
        ..config()
    })
    .await;
    for (marker, code) in [("[sim:poll-500]", 500), ("[sim:poll-429]", 429)] {
        let task_id = sim.create_ok(marker).await;
        for read in 1..=2 {
            let answer = sim.record_info(&task_id).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.json["code"], code, "{marker} read {read}");
            assert_eq!(answer.json["data"], Value::Null);
        }
        let answer = sim.record_info(&task_id).await;
        assert_eq!(answer.json["code"], 200, "{marker} recovers");
        assert_eq!(answer.json["data"]["state"], "waiting");
    }
    assert_eq!(sim.handle.count(Endpoint::RecordInfo), 6);
}
