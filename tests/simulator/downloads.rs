//! `POST /api/v1/common/download-url`: fresh links to result videos only,
//! and the lifetimes of result URLs and of those links.

use std::time::Duration;

use axum::http::StatusCode;
use hailuo_gateway::simulator::{Endpoint, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::*;

/// A successful task's recorded result URL.
async fn finished_video(sim: &TestSim) -> String {
    let task_id = sim.create_ok("a cat").await;
    let task = sim
        .wait_for_state(&task_id, "success", Duration::from_secs(5))
        .await;
    let result: Value =
        serde_json::from_str(task["resultJson"].as_str().expect("string")).expect("parses");
    result["resultUrls"][0].as_str().expect("url").to_owned()
}

async fn download_url(sim: &TestSim, url: &str) -> Answer {
    sim.post(
        "/api/v1/common/download-url",
        Some(KEY),
        &json!({ "url": url }),
    )
    .await
}

async fn status_of(sim: &TestSim, url: &str) -> StatusCode {
    sim.client.get(url).send().await.expect("answered").status()
}

#[tokio::test]
async fn download_url_answers_a_fresh_link_that_serves_the_mp4() {
    let sim = spawn_sim(config()).await;
    let video = finished_video(&sim).await;
    let answer = download_url(&sim, &video).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["code"], 200);
    assert_eq!(answer.json["msg"], "success");
    let fresh = answer.json["data"].as_str().expect("data is a bare URL");
    assert!(fresh.starts_with(&format!("{video}?expires=")), "{fresh}");
    let expires: u64 = fresh
        .split("expires=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .and_then(|n| n.parse().ok())
        .expect("expires is Unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        (now + 19 * 60..=now + 21 * 60).contains(&expires),
        "valid 20 minutes: {expires} vs {now}"
    );

    let response = sim.client.get(fresh).send().await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    let bytes = response.bytes().await.expect("bytes");
    assert_eq!(&bytes[4..8], b"ftyp", "a real MP4");
    assert_eq!(sim.handle.count(Endpoint::Video), 1);

    // A fresh link may itself be refreshed.
    let again = download_url(&sim, fresh).await;
    assert_eq!(again.json["code"], 200, "{}", again.json);
    assert_eq!(sim.handle.count(Endpoint::DownloadUrl), 2);
}

#[tokio::test]
async fn download_url_is_422_for_any_url_it_did_not_produce() {
    let sim = spawn_sim(config()).await;
    let running = sim.create_ok("[sim:never] a cat").await;
    let uploaded = sim.upload_ok("a.png", &png(100)).await;
    for url in [
        "https://example.com/x.mp4".to_owned(),
        format!("{}/sim/videos/task_hailuo_0.mp4", sim.base_url),
        format!("{}/sim/videos/{running}.mp4", sim.base_url),
        uploaded["downloadUrl"].as_str().expect("url").to_owned(),
    ] {
        let answer = download_url(&sim, &url).await;
        assert_eq!(answer.status, StatusCode::OK, "{url}");
        assert_eq!(
            answer.json,
            json!({"code": 422, "msg": "url is not a kie.ai generated file URL", "data": null}),
            "{url}"
        );
    }
    let no_url = sim
        .post("/api/v1/common/download-url", Some(KEY), &json!({}))
        .await;
    assert_eq!(no_url.json["code"], 422);
    let no_key = sim
        .post(
            "/api/v1/common/download-url",
            None,
            &json!({"url": "https://example.com/x.mp4"}),
        )
        .await;
    assert_eq!(no_key.json["code"], 401);
}

#[tokio::test]
async fn result_urls_expire_and_download_url_links_outlive_them_until_their_own_expiry() {
    let sim = spawn_sim(SimulatorConfig {
        result_url_ttl: Duration::from_millis(300),
        download_link_ttl: Duration::from_millis(1500),
        ..config()
    })
    .await;
    let video = finished_video(&sim).await;
    let expired = wait_for(Duration::from_secs(5), || async {
        (status_of(&sim, &video).await == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    assert!(expired.is_some(), "the result URL stops serving");

    let fresh = download_url(&sim, &video).await.json["data"]
        .as_str()
        .expect("url")
        .to_owned();
    assert_eq!(status_of(&sim, &fresh).await, StatusCode::OK);
    let forged = format!(
        "{}0",
        fresh.trim_end_matches(|c: char| c.is_ascii_hexdigit())
    );
    assert_eq!(status_of(&sim, &forged).await, StatusCode::FORBIDDEN);
    let stretched = fresh.replacen("expires=", "expires=9", 1);
    assert_eq!(
        status_of(&sim, &stretched).await,
        StatusCode::FORBIDDEN,
        "the expiry is signed"
    );
    let link_expired = wait_for(Duration::from_secs(10), || async {
        (status_of(&sim, &fresh).await == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    assert!(link_expired.is_some(), "the link expires too");
}
