//! Per-caller quotas: refused before anything goes upstream, with a
//! QuotaFailure and a RetryInfo; counted fleet-wide in Redis; refused
//! (UNAVAILABLE) rather than let through when Redis is away; credits
//! settled against kie.ai's creditsConsumed when a task ends, once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hailuo_gateway::callers::quota::QuotaBook;
use hailuo_gateway::pb::{GetQuotaRequest, GetQuotaResponse, TaskState};
use hailuo_gateway::redis_client::Redis;
use hailuo_gateway::simulator::Completion;
use tonic::Code;
use tonic_types::StatusExt;

use crate::callers::*;
use crate::helpers::*;
use crate::redis_server::RedisServer;

/// Fixed minute windows: a test counting creates per minute starts early
/// in a minute, so that its creates share one window.
async fn early_in_a_minute() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 60_000;
    if into > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - into as u64)).await;
    }
}

fn assert_over(status: &tonic::Status, quota: &str, at_most: Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    let failure = details.quota_failure().expect("QuotaFailure");
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].subject, "render-farm");
    assert!(
        failure.violations[0].description.contains(quota),
        "{failure:?}"
    );
    let info = error_info(status);
    assert_eq!(info.reason, "QUOTA_EXCEEDED");
    assert_eq!(info.metadata.get("quota").map(String::as_str), Some(quota));
    let retry = retry_delay(status).expect("RetryInfo");
    assert!(retry > Duration::ZERO && retry <= at_most, "{retry:?}");
}

async fn standing(gateway: &Caller, token: &str) -> GetQuotaResponse {
    gateway
        .client
        .clone()
        .get_quota(with_token(GetQuotaRequest {}, token))
        .await
        .expect("quota")
        .into_inner()
}

fn used(quota: &GetQuotaResponse, name: &str) -> (f64, f64, f64) {
    let q = quota
        .quotas
        .iter()
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("{name} in {quota:?}"));
    (q.limit, q.used, q.remaining)
}

#[tokio::test]
async fn over_its_quota_a_caller_is_refused_before_kie_ai_with_quota_failure_and_retry_info() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&format!(
        "{}{}",
        caller_entry(
            "render-farm",
            RENDER_TOKEN,
            "creates_per_minute = 2\ncreates_per_day = 100\ncredits_per_day = 1000.0"
        ),
        caller_entry("editorial", EDIT_TOKEN, "")
    ));
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;
    early_in_a_minute().await;

    for i in 0..2 {
        gateway
            .create(with_token(sim_request(&format!("cat {i}")), RENDER_TOKEN))
            .await
            .expect("within quota");
    }
    let refused = gateway
        .create(with_token(sim_request("cat 3"), RENDER_TOKEN))
        .await
        .expect_err("over the minute's quota");
    assert_over(&refused, "creates_per_minute", Duration::from_secs(60));
    assert_eq!(sim.creates(), 2, "the refused create never reached kie.ai");
    // Another caller is not held by render-farm's quota.
    gateway
        .create(with_token(sim_request("dog"), EDIT_TOKEN))
        .await
        .expect("editorial has no quota");

    let quota = standing(&gateway, RENDER_TOKEN).await;
    assert_eq!(quota.caller, "render-farm");
    assert_eq!(used(&quota, "creates_per_minute"), (2.0, 2.0, 0.0));
    assert_eq!(used(&quota, "creates_per_day"), (100.0, 2.0, 98.0));
    // Two creates at the default 768P, 10 s price (50 credits).
    assert_eq!(used(&quota, "credits_per_day"), (1000.0, 100.0, 900.0));
    let reset = quota.quotas[0].reset_time.expect("reset time");
    let now = now_secs() as i64;
    assert!(
        reset.seconds > now - 1 && reset.seconds <= now + 60,
        "{reset:?}"
    );
}

#[tokio::test]
async fn credits_count_the_price_and_a_create_kie_ai_refused_is_handed_back() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&caller_entry(
        "render-farm",
        RENDER_TOKEN,
        "credits_per_day = 100.0",
    ));
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;

    // kie.ai refuses (no credits): nothing was charged, nothing counted.
    sim.state().set_credits(0.0);
    let refused = gateway
        .create(with_token(sim_request("cat"), RENDER_TOKEN))
        .await
        .expect_err("kie.ai out of credits");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let quota = standing(&gateway, RENDER_TOKEN).await;
    assert_eq!(used(&quota, "credits_per_day"), (100.0, 0.0, 100.0));

    sim.state().set_credits(1000.0);
    for i in 0..2 {
        gateway
            .create(with_token(sim_request(&format!("cat {i}")), RENDER_TOKEN))
            .await
            .expect("within the day's credits");
    }
    let over = gateway
        .create(with_token(sim_request("cat 3"), RENDER_TOKEN))
        .await
        .expect_err("over the day's credits");
    assert_over(&over, "credits_per_day", Duration::from_secs(86_400));
    assert_eq!(sim.creates(), 3, "the refused one never reached kie.ai");
}

#[tokio::test]
async fn two_replicas_share_a_callers_quota_in_redis_and_refuse_when_it_is_away() {
    let mut redis = RedisServer::start().await;
    let sim = Sim::start().await;
    let file = CallersFile::new(&format!(
        "{}{}",
        caller_entry("render-farm", RENDER_TOKEN, "creates_per_minute = 3"),
        caller_entry("editorial", EDIT_TOKEN, "")
    ));
    let replica = || {
        let mut settings = sim.settings(Some(file.path.clone()));
        settings.redis = Some(redis.settings());
        spawn_gateway(settings)
    };
    let a = replica().await;
    let b = replica().await;
    early_in_a_minute().await;

    for (gateway, prompt) in [(&a, "one"), (&a, "two"), (&b, "three")] {
        gateway
            .create(with_token(sim_request(prompt), RENDER_TOKEN))
            .await
            .expect("within the fleet's quota");
    }
    for gateway in [&a, &b] {
        let refused = gateway
            .create(with_token(sim_request("four"), RENDER_TOKEN))
            .await
            .expect_err("the fleet's quota is used up");
        assert_over(&refused, "creates_per_minute", Duration::from_secs(60));
    }
    assert_eq!(sim.creates(), 3);
    let quota = standing(&b, RENDER_TOKEN).await;
    assert_eq!(used(&quota, "creates_per_minute"), (3.0, 3.0, 0.0));

    // Redis away: a caller with quotas is refused, never let through.
    redis.stop();
    let refused = a
        .create(with_token(sim_request("five"), RENDER_TOKEN))
        .await
        .expect_err("quota store away");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(error_info(&refused).reason, "QUOTA_UNAVAILABLE");
    assert!(retry_delay(&refused).is_some());
    assert_eq!(sim.creates(), 3, "nothing reached kie.ai");
}

/// Watches `task_id` on each gateway until it ends, after the simulator
/// ended it with `completion`.
async fn end_watched(
    sim: &Sim,
    on: &[&Caller],
    task_id: &str,
    completion: Completion,
) -> TaskState {
    let mut streams = Vec::new();
    for gateway in on {
        let mut stream = gateway
            .try_watch(with_token(watch_request(task_id), RENDER_TOKEN))
            .await
            .expect("watch");
        next_message(&mut stream).await;
        streams.push(stream);
    }
    sim.state().complete(task_id, completion).expect("complete");
    let mut end = TaskState::Unspecified;
    for mut stream in streams {
        let (messages, ended) = drain(&mut stream).await;
        ended.expect("ends cleanly");
        end = state_of(&last_task(&messages).into());
    }
    end
}

async fn credits_used(gateway: &Caller) -> f64 {
    used(&standing(gateway, RENDER_TOKEN).await, "credits_per_day").1
}

/// Two creates hold 100 credits; the one that fails (kie.ai's
/// creditsConsumed 0) hands its 50 back, once however many replicas and
/// watchers see it end; the one that succeeds keeps its price.
async fn settles_against_credits_consumed(redis: Option<&RedisServer>) {
    let sim = Sim::start().await;
    let file = CallersFile::new(&caller_entry(
        "render-farm",
        RENDER_TOKEN,
        "credits_per_day = 1000.0",
    ));
    let replica = || {
        let mut settings = sim.settings(Some(file.path.clone()));
        settings.redis = redis.map(RedisServer::settings);
        spawn_gateway(settings)
    };
    let a = replica().await;
    let b = match redis {
        Some(_) => Some(replica().await),
        None => None,
    };
    let everyone: Vec<&Caller> = std::iter::once(&a.caller)
        .chain(b.as_ref().map(|b| &b.caller))
        .collect();

    let ok = a
        .create(with_token(sim_request("cat"), RENDER_TOKEN))
        .await
        .expect("created");
    let failing = a
        .create(with_token(sim_request("dog"), RENDER_TOKEN))
        .await
        .expect("created");
    assert_eq!(credits_used(&a).await, 100.0);

    let end = end_watched(
        &sim,
        &everyone,
        &failing,
        Completion::fail("500", "moderation"),
    )
    .await;
    assert_eq!(end, TaskState::Failed);
    // Read again once ended, from every replica: still settled once.
    for gateway in &everyone {
        gateway
            .client
            .clone()
            .get_task(with_token(get_request(&failing), RENDER_TOKEN))
            .await
            .expect("get");
    }
    assert!(
        wait_for(Duration::from_secs(5), || async {
            credits_used(&a).await == 50.0
        })
        .await,
        "the failure's credits handed back: {}",
        credits_used(&a).await
    );
    if let Some(redis) = redis {
        // A third replica that also saw the task end finds nothing left to
        // settle: the binding was taken out by the first.
        let late = QuotaBook::new(Some(Redis::new(&redis.settings()).expect("redis")));
        late.settle(&failing, true, Some(0.0)).await;
        assert_eq!(credits_used(&a).await, 50.0, "settled once fleet-wide");
    }
    let end = end_watched(&sim, &everyone, &ok, Completion::success()).await;
    assert_eq!(end, TaskState::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gateway in &everyone {
        assert_eq!(credits_used(gateway).await, 50.0, "settled exactly once");
    }
}

#[tokio::test]
async fn a_failure_kie_ai_did_not_charge_hands_its_credits_back_when_it_ends() {
    settles_against_credits_consumed(None).await;
}

#[tokio::test]
async fn two_replicas_settle_a_tasks_credits_once_through_redis() {
    let redis = RedisServer::start().await;
    settles_against_credits_consumed(Some(&redis)).await;
}
