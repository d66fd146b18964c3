//! `GET /api/v1/chat/credit`: a balance that need not be whole, set by hand
//! for the 402 path, and a sandbox that does not run out.

use axum::http::StatusCode;
use clap::Parser;
use hailuo_gateway::simulator::{Endpoint, SimulatorConfig};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_balance_may_be_fractional() {
    let sim = spawn_sim(SimulatorConfig {
        starting_credits: 100.5,
        ..config()
    })
    .await;
    let credit = sim.get("/api/v1/chat/credit", Some(KEY)).await;
    assert_eq!(
        credit.json,
        json!({"code": 200, "msg": "success", "data": 100.5})
    );
    sim.create_ok("a cat").await; // 30
    let credit = sim.get("/api/v1/chat/credit", Some(KEY)).await;
    assert_eq!(credit.json["data"], 70.5);
    assert_eq!(sim.handle.credits(), 70.5);
    let no_key = sim.get("/api/v1/chat/credit", None).await;
    assert_eq!(no_key.json["code"], 401);
    assert_eq!(sim.handle.count(Endpoint::Credit), 3);
}

#[tokio::test]
async fn the_balance_can_be_set_to_zero_for_the_402_path_and_a_reset_restores_it() {
    let sim = spawn_sim(config()).await;
    let set = sim.post("/sim/credits", None, &json!({"credits": 0})).await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(set.json, json!({"credits": 0.0}));
    assert_eq!(
        sim.get("/api/v1/chat/credit", Some(KEY)).await.json["data"],
        0
    );
    assert_eq!(sim.create(&body("a cat")).await.json["code"], 402);

    for bad in [json!({"credits": -1}), json!({"credit": 5}), json!("x")] {
        let refused = sim.post("/sim/credits", None, &bad).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    sim.handle.set_credits(29.5);
    assert_eq!(
        sim.create(&body("a cat")).await.json["code"],
        402,
        "30 > 29.5"
    );
    sim.handle.reset();
    assert_eq!(sim.handle.credits(), 1000.0);
}

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: hailuo_gateway::config::ServeArgs,
}

/// Until this was fixed, the sandbox's 21st task of the default kind (768P,
/// 10 s, 50 credits) was refused with 402.
#[tokio::test]
async fn the_sandbox_does_not_run_out_of_credits() {
    let serve = Serve::parse_from(["serve", "--sandbox"]);
    let stop = tokio_util::sync::CancellationToken::new();
    let (simulator, settings) = hailuo_gateway::sandbox::start(&serve.args, stop.clone())
        .await
        .expect("sandbox starts");
    let key = settings
        .upstream
        .api_key
        .as_ref()
        .expect("the sandbox's key")
        .expose()
        .to_owned();
    let client = client();
    let mut dearest = body("a cat");
    dearest["input"]["duration"] = json!("10");
    dearest["input"]["resolution"] = json!("768P");
    for n in 1..=25 {
        let answer = client
            .post(format!("{}/api/v1/jobs/createTask", simulator.base_url()))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(dearest.to_string())
            .send()
            .await
            .expect("answered");
        let json = json_of(answer).await;
        assert_eq!(json["code"], 200, "task {n}: {json}");
    }
    let credits = simulator.state().credits();
    assert!(credits >= 1e9 - 25.0 * 50.0, "{credits}");
    stop.cancel();
}
