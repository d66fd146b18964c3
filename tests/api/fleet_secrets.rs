//! Nothing secret in Redis: after a fleet has created tasks with the
//! gateway's key and a caller's key, lost an answer, taken a signed
//! callback and watched a task, no key name or value in Redis holds the
//! kie.ai keys or the webhook HMAC key, whole or in part.

use std::time::Duration;

use hailuo_gateway::config::{Secret, Settings};
use hailuo_gateway::http::callbacks::sign;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::helpers::*;
use crate::redis_server::RedisServer;

const CALLER_KEY: &str = "caller-key-0123456789abcdef";
const HMAC_KEY: &str = "hmac-key-0123456789abcdef";

/// Every key in Redis and everything it holds, as text.
async fn everything_in(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .expect("keys");
    let mut seen = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("type");
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .expect("get"),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .expect("hgetall"),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .expect("zrange"),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut c)
                .await
                .expect("smembers"),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .expect("lrange"),
            // Gone between the listing and the read (a lease handed back or
            // lapsed): its name is still checked below.
            "none" => Vec::new(),
            other => panic!("a Redis type this test does not read: {other} ({key})"),
        };
        seen.push(key);
        seen.extend(
            values
                .into_iter()
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        );
    }
    seen
}

#[tokio::test]
async fn no_kie_key_caller_key_or_hmac_key_is_ever_written_to_redis() {
    let upstream = MockServer::start().await;
    let redis = RedisServer::start().await;
    let fleet_settings = |s: &mut Settings| {
        s.redis = Some(redis.settings());
        s.upstream.key_passthrough = true;
        s.upstream.timeout = Duration::from_millis(300);
        s.callbacks.to_self = true;
        s.callbacks.hmac_key = Some(Secret::new(HMAC_KEY));
    };
    let mut settings = test_settings(&upstream.uri());
    fleet_settings(&mut settings);
    let a = spawn_gateway(settings.clone()).await;
    let b = spawn_gateway(settings).await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(serde_json::json!({"taskId": "t_secret"})))
        .up_to_n_times(2)
        .mount(&upstream)
        .await;
    // Then kie.ai answers too late: a lost answer.
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(
            kie_ok(serde_json::json!({"taskId": "t_lost"})).set_delay(Duration::from_secs(2)),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(kie_ok(record("t_secret", "success")))
        .mount(&upstream)
        .await;

    // The gateway's key, a caller's key, and a lost answer, with request_ids.
    a.create(with_request_id("r-gateway-key"))
        .await
        .expect("created");
    let mut callers = tonic::Request::new(with_request_id("r-caller-key"));
    callers.metadata_mut().insert(
        "authorization",
        format!("Bearer {CALLER_KEY}").parse().expect("ascii"),
    );
    b.create(callers)
        .await
        .expect("created with the caller's key");
    let lost = a
        .create(with_request_id("r-lost"))
        .await
        .expect_err("the answer is lost");
    assert_eq!(error_info(&lost).reason, "CREATE_OUTCOME_UNKNOWN");
    // A signed callback and a watch, on the other replica.
    let ts = now_secs();
    let body = serde_json::json!({"code": 200, "data": {"taskId": "t_secret", "state": "success"}});
    let headers = [
        ("x-webhook-timestamp", ts.to_string()),
        ("x-webhook-signature", sign(HMAC_KEY, "t_secret", ts)),
    ];
    assert_eq!(
        b.post_callback(&b.callback_url(), body.to_string(), &headers)
            .await,
        200
    );
    let (messages, ended) = drain(&mut b.watch("t_secret").await).await;
    assert!(ended.is_ok() && !messages.is_empty(), "{ended:?}");

    // Let background writes (settlements, lost attempts) land.
    let written = wait_for_some(Duration::from_secs(5), || async {
        let seen = everything_in(&redis).await;
        seen.iter().any(|s| s.contains(":attempt:")).then_some(seen)
    })
    .await
    .expect("the lost attempt reaches Redis");
    assert!(written.len() > 3, "the fleet wrote its state: {written:?}");
    for secret in [TEST_KEY, CALLER_KEY, HMAC_KEY] {
        // Any 8-character piece of a secret would do to start guessing it.
        let pieces: Vec<&str> = (0..=secret.len() - 8).map(|i| &secret[i..i + 8]).collect();
        for text in &written {
            for piece in &pieces {
                assert!(
                    !text.contains(piece),
                    "part of a secret ({piece}) is in Redis: {text}"
                );
            }
        }
    }
}
