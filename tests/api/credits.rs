//! GetCredits, and the credits gauge with its low-balance warning.

use std::time::Duration;

use hailuo_gateway::pb::GetCreditsRequest;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Respond};

use crate::helpers::*;

const CREDIT_PATH: &str = "/api/v1/chat/credit";

async fn answer_credits(upstream: &MockServer, responder: impl Respond + 'static) {
    Mock::given(method("GET"))
        .and(path(CREDIT_PATH))
        .respond_with(responder)
        .mount(upstream)
        .await;
}

#[tokio::test]
async fn get_credits_reads_a_fractional_balance_in_either_spelling() {
    for (data, want) in [
        (json!(1234.5), 1234.5),
        (json!("87"), 87.0),
        (json!(0), 0.0),
    ] {
        let app = spawn_app().await;
        answer_credits(&app.upstream, kie_ok(data.clone())).await;

        let answer = app
            .client
            .clone()
            .get_credits(GetCreditsRequest {})
            .await
            .expect("credits");

        assert_eq!(answer.into_inner().credits, want, "{data}");
        let asked = app.upstream_requests(CREDIT_PATH).await;
        assert_eq!(
            asked[0].headers.get("authorization").expect("auth"),
            &format!("Bearer {TEST_KEY}")
        );
    }
}

#[tokio::test]
async fn get_credits_maps_kies_refusals_and_bad_answers() {
    let app = spawn_app().await;
    answer_credits(&app.upstream, kie_error(401, "bad key")).await;
    let status = app
        .client
        .clone()
        .get_credits(GetCreditsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(error_info(&status).reason, "UPSTREAM_UNAUTHENTICATED");
    assert_eq!(error_info(&status).metadata["endpoint"], "credit");

    let app = spawn_app().await;
    answer_credits(&app.upstream, kie_ok(json!("lots"))).await;
    let status = app
        .client
        .clone()
        .get_credits(GetCreditsRequest {})
        .await
        .expect_err("not a number");
    assert_eq!(error_info(&status).reason, "UPSTREAM_BAD_RESPONSE");
}

#[tokio::test]
async fn the_gauge_follows_the_balance_and_stays_off_with_key_passthrough() {
    let refresh = |s: &mut hailuo_gateway::config::Settings| {
        s.credits.refresh = Duration::from_millis(50);
    };
    let app = spawn_app_with(refresh).await;
    answer_credits(
        &app.upstream,
        Sequence::new(vec![kie_ok(json!(50.5)), kie_ok(json!(20.25))]),
    )
    .await;
    let passthrough = spawn_app_with(|s| {
        refresh(s);
        s.upstream.key_passthrough = true;
    })
    .await;
    answer_credits(&passthrough.upstream, kie_ok(json!(1))).await;

    let series = r#"hailuo_gateway_kie_credits{account="gateway"}"#;
    let followed = wait_for(Duration::from_secs(10), || async {
        app.metric(series).await == Some(20.25)
    })
    .await;
    assert!(followed, "{}", app.metrics().await);
    // By now the other gateway has had several refresh periods.
    assert!(app.upstream_count(CREDIT_PATH).await >= 2);
    assert_eq!(passthrough.upstream_count(CREDIT_PATH).await, 0);
    assert_eq!(passthrough.metric(series).await, None);
}

#[tokio::test]
async fn a_low_balance_is_logged_as_a_warning_without_the_key() {
    let upstream = MockServer::start().await;
    answer_credits(&upstream, kie_ok(json!(12.5))).await;
    let mut gateway = crate::binary::start_gateway_with(
        &upstream,
        &[
            ("GATEWAY_CREDITS_REFRESH", "100ms"),
            ("GATEWAY_CREDITS_WARN_BELOW", "50"),
        ],
    )
    .await;

    let warned = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = gateway.logs.recv().await {
            if line.contains("credits are low") {
                return line;
            }
        }
        panic!("the gateway's log ended");
    })
    .await
    .expect("a warning in time");

    assert!(warned.contains("WARN"), "{warned}");
    assert!(warned.contains("12.5"), "{warned}");
    assert!(!warned.contains(TEST_KEY), "{warned}");
}
