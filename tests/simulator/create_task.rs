//! createTask and credit: auth, validation, codes in HTTP 200, credits.

use hailuo_gateway::simulator::{Endpoint, SimulatorConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{KEY, body, config, spawn_sim};

const CREATE: &str = "/api/v1/jobs/createTask";

/// One way to break a valid createTask body.
type Edit = Box<dyn Fn(&mut Value)>;

#[tokio::test]
async fn create_task_answers_a_hailuo_task_id() {
    let sim = spawn_sim(config()).await;
    let answer = sim.create(&body("a cat surfing")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["code"], 200);
    assert_eq!(answer.json["msg"], "success");
    let task_id = answer.json["data"]["taskId"].as_str().expect("taskId");
    let digits = task_id
        .strip_prefix("task_hailuo_")
        .expect("kie.ai id prefix");
    assert!(
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()),
        "{task_id}"
    );
    assert_eq!(answer.json["data"].as_object().map(|d| d.len()), Some(1));
}

#[tokio::test]
async fn task_ids_are_unique() {
    let sim = spawn_sim(config()).await;
    let first = sim.create_ok("one").await;
    let second = sim.create_ok("two").await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn a_missing_or_empty_bearer_is_401_inside_http_200() {
    let sim = spawn_sim(config()).await;
    let expected = json!({"code": 401, "msg": "You do not have access permissions", "data": null});
    let no_header = sim.post(CREATE, None, &body("x")).await;
    assert_eq!(no_header.status, StatusCode::OK);
    assert_eq!(no_header.json, expected);
    let empty = sim.post(CREATE, Some(""), &body("x")).await;
    assert_eq!(empty.json, expected);
    let basic = sim
        .client
        .post(sim.url(CREATE))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .body(body("x").to_string())
        .send()
        .await
        .expect("answered");
    let basic = crate::helpers::json_of(basic).await;
    assert_eq!(basic, expected);
    assert_eq!(sim.get("/api/v1/chat/credit", None).await.json, expected);
    assert_eq!(
        sim.get("/api/v1/jobs/recordInfo?taskId=task_hailuo_1", None)
            .await
            .json,
        expected
    );
    assert_eq!(sim.handle.credits(), 1000.0, "nothing charged");
}

#[tokio::test]
async fn without_a_configured_key_any_bearer_is_accepted() {
    let sim = spawn_sim(config()).await;
    let answer = sim.post(CREATE, Some("whatever"), &body("x")).await;
    assert_eq!(answer.json["code"], 200);
}

#[tokio::test]
async fn with_a_configured_key_only_that_key_is_accepted() {
    let sim = spawn_sim(SimulatorConfig {
        api_key: Some(KEY.into()),
        ..config()
    })
    .await;
    let wrong = sim.post(CREATE, Some("sk-wrong"), &body("x")).await;
    assert_eq!(wrong.json["code"], 401);
    assert_eq!(wrong.json["data"], Value::Null);
    assert_eq!(
        sim.get("/api/v1/chat/credit", Some("sk-wrong")).await.json["code"],
        401
    );
    let right = sim.post(CREATE, Some(KEY), &body("x")).await;
    assert_eq!(right.json["code"], 200);
    assert_eq!(
        sim.get("/api/v1/chat/credit", Some(KEY)).await.json["code"],
        200
    );
}

#[tokio::test]
async fn an_unknown_model_is_422() {
    let sim = spawn_sim(config()).await;
    let mut request = body("x");
    request["model"] = json!("hailuo/02-text-to-video-pro");
    let answer = sim.create(&request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json,
        json!({"code": 422, "msg": "model hailuo/02-text-to-video-pro is not supported", "data": null})
    );
}

#[tokio::test]
async fn each_invalid_field_is_422_naming_the_field() {
    let sim = spawn_sim(config()).await;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "no prompt",
            Box::new(|b| {
                b["input"].as_object_mut().map(|i| i.remove("prompt"));
            }),
            "input.prompt is required",
        ),
        (
            "empty prompt",
            Box::new(|b| b["input"]["prompt"] = json!("")),
            "input.prompt is required",
        ),
        (
            "long prompt",
            Box::new(|b| b["input"]["prompt"] = json!("ü".repeat(1501))),
            "input.prompt must be at most 1500 characters",
        ),
        (
            "no image",
            Box::new(|b| {
                b["input"].as_object_mut().map(|i| i.remove("image_url"));
            }),
            "input.image_url is required",
        ),
        (
            "file image",
            Box::new(|b| b["input"]["image_url"] = json!("file:///etc/passwd")),
            "input.image_url must be an http or https URL",
        ),
        (
            "bad end image",
            Box::new(|b| b["input"]["end_image_url"] = json!("ftp://x.org/a.png")),
            "input.end_image_url must be an http or https URL",
        ),
        (
            "duration 7",
            Box::new(|b| b["input"]["duration"] = json!("7")),
            "input.duration must be one of \"6\", \"10\"",
        ),
        (
            "duration number",
            Box::new(|b| b["input"]["duration"] = json!(6)),
            "input.duration must be one of \"6\", \"10\"",
        ),
        (
            "resolution 1080P",
            Box::new(|b| b["input"]["resolution"] = json!("1080P")),
            "input.resolution must be one of \"512P\", \"768P\"",
        ),
        (
            "optimizer string",
            Box::new(|b| b["input"]["prompt_optimizer"] = json!("yes")),
            "input.prompt_optimizer must be a boolean",
        ),
        (
            "bad callback",
            Box::new(|b| b["callBackUrl"] = json!("mailto:x@y.z")),
            "callBackUrl must be an http or https URL",
        ),
        (
            "no input",
            Box::new(|b| {
                b.as_object_mut().map(|o| o.remove("input"));
            }),
            "input is required",
        ),
        (
            "no model",
            Box::new(|b| {
                b.as_object_mut().map(|o| o.remove("model"));
            }),
            "model is required",
        ),
    ];
    for (name, edit, msg) in cases {
        let mut request = body("x");
        edit(&mut request);
        let answer = sim.create(&request).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}");
        assert_eq!(
            answer.json,
            json!({"code": 422, "msg": msg, "data": null}),
            "{name}"
        );
    }
    assert_eq!(
        sim.handle.credits(),
        1000.0,
        "rejected requests cost nothing"
    );
}

#[tokio::test]
async fn prompts_are_limited_in_characters_not_bytes() {
    let sim = spawn_sim(config()).await;
    // 1500 two-byte characters: 3000 bytes, still allowed.
    let answer = sim.create(&body(&"ü".repeat(1500))).await;
    assert_eq!(answer.json["code"], 200, "{}", answer.json);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_422() {
    let sim = spawn_sim(config()).await;
    let response = sim
        .client
        .post(sim.url(CREATE))
        .header("authorization", format!("Bearer {KEY}"))
        .body("{not json")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let json = crate::helpers::json_of(response).await;
    assert_eq!(json["code"], 422);
}

#[tokio::test]
async fn credit_reports_the_balance() {
    let sim = spawn_sim(SimulatorConfig {
        starting_credits: 777.0,
        ..config()
    })
    .await;
    let answer = sim.get("/api/v1/chat/credit", Some(KEY)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json,
        json!({"code": 200, "msg": "success", "data": 777})
    );
}

#[tokio::test]
async fn tasks_consume_credits_and_402_when_spent() {
    let sim = spawn_sim(SimulatorConfig {
        starting_credits: 62.0,
        ..config()
    })
    .await;
    let mut ten_768 = body("x");
    ten_768["input"]["duration"] = json!("10");
    ten_768["input"]["resolution"] = json!("768P");
    sim.create_body_ok(&ten_768).await; // 50
    let credit = sim.get("/api/v1/chat/credit", Some(KEY)).await;
    assert_eq!(credit.json["data"], 12);

    let refused = sim.create(&ten_768).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(
        refused.json,
        json!({"code": 402, "msg": "The current credits are insufficient. Please top up.", "data": null})
    );

    let mut six_512 = body("x");
    six_512["input"]["resolution"] = json!("512P");
    sim.create_body_ok(&six_512).await; // 12: exactly the rest
    assert_eq!(
        sim.get("/api/v1/chat/credit", Some(KEY)).await.json["data"],
        0
    );
    assert_eq!(sim.create(&six_512).await.json["code"], 402);
    assert_eq!(sim.handle.count(Endpoint::CreateTask), 4);
}
