//! TLS to Redis (rediss://, issue 12): replicas that reach Redis over TLS
//! act as one gateway, on both their connections (commands and pub/sub);
//! a Redis whose certificate they cannot verify, or that wants a client
//! certificate they lack, is a Redis they cannot reach; a bad certificate
//! file stops the start. Every Redis here is a real `redis-server` serving
//! TLS only, on certificates made by the test.

use std::time::{Duration, Instant};

use hailuo_gateway::config::{PollCadence, RedisSettings, Settings};
use hailuo_gateway::pb::TaskState;
use hailuo_gateway::startup::Application;
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::binary::*;
use crate::helpers::*;
use crate::redis_server::{Pki, RedisServer};

fn replica_settings(upstream: &MockServer, redis: RedisSettings) -> Settings {
    let mut settings = test_settings(&upstream.uri());
    settings.redis = Some(redis);
    settings
}

async fn answer_creates(upstream: &MockServer, task_id: &str, delay: Duration) {
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": task_id})).set_delay(delay))
        .mount(upstream)
        .await;
}

/// A CreateTask with a request_id is refused as Redis being away: nothing
/// sent to kie.ai, retry safe.
fn assert_coordination_unavailable(answer: Result<String, tonic::Status>) {
    let status = answer.expect_err("Redis cannot be used");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).reason, "COORDINATION_UNAVAILABLE");
}

#[tokio::test]
async fn two_replicas_over_rediss_share_one_request_id() {
    let redis = RedisServer::start_tls(false, None).await;
    let upstream = MockServer::start().await;
    // Slow enough that every duplicate arrives while the attempt is out.
    answer_creates(&upstream, "t_tls", Duration::from_millis(400)).await;
    let a = spawn_gateway(replica_settings(&upstream, redis.settings())).await;
    let b = spawn_gateway(replica_settings(&upstream, redis.settings())).await;

    let calls = (0..10).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.create(with_request_id("r-tls"))
    });
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.expect("every duplicate gets the task"), "t_tls");
    }
    assert_eq!(received(&upstream, CREATE_PATH).await, 1, "one paid video");
    assert_eq!(a.metric("hailuo_gateway_fleet_redis_up").await, Some(1.0));
}

#[tokio::test]
async fn a_callback_to_one_replica_wakes_a_watcher_on_another_over_rediss() {
    // The wake-up travels on each replica's pub/sub connection: over TLS too.
    let redis = RedisServer::start_tls(false, None).await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(Sequence::states("task_tls_cb", &["generating", "success"]))
        .mount(&upstream)
        .await;
    let replica = || {
        let mut settings = replica_settings(&upstream, redis.settings());
        // Polls far apart: only a wake-up can show the end in time.
        settings.watch.cadence = PollCadence::constant(Duration::from_secs(20));
        settings.watch.callback_safety_poll = Duration::from_secs(20);
        settings
    };
    let watched = spawn_gateway(replica()).await;
    let called = spawn_gateway(replica()).await;
    let mut watch = watched.watch("task_tls_cb").await;
    assert_eq!(
        states(&[next_message(&mut watch).await]),
        vec![TaskState::Generating]
    );

    assert_eq!(
        received(&upstream, RECORD_PATH).await,
        1,
        "not ended by a read"
    );
    let body = json!({"code": 200, "data": {"taskId": "task_tls_cb"}}).to_string();
    let started = Instant::now();
    assert_eq!(
        called
            .post_callback(&called.callback_url(), body, &[])
            .await,
        200
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), drain(&mut watch))
        .await
        .expect("the watch ends long before the next poll");
    assert_eq!(
        states(&seen.0),
        vec![TaskState::Succeeded],
        "woken across replicas after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_redis_certificate_from_another_ca_is_redis_unreachable_not_a_paid_risk() {
    // Chosen behaviour: the gateway starts (degraded), as with any Redis it
    // cannot reach; request_ids are refused, nothing is sent to kie.ai,
    // fleet_redis_up is 0 and the warning names the certificate.
    let redis = RedisServer::start_tls(false, None).await;
    let stranger = Pki::generate();
    let upstream = MockServer::start().await;
    answer_creates(&upstream, "t_never", Duration::ZERO).await;
    let mut settings = redis.settings();
    settings.tls.ca = Some(stranger.ca.clone());
    let gateway = spawn_gateway(replica_settings(&upstream, settings)).await;

    assert_coordination_unavailable(gateway.create(with_request_id("r-wrong-ca")).await);
    assert_eq!(received(&upstream, CREATE_PATH).await, 0, "nothing sent");
    let down = wait_for(Duration::from_secs(5), || async {
        gateway.metric("hailuo_gateway_fleet_redis_up").await == Some(0.0)
    })
    .await;
    assert!(down, "fleet_redis_up stays 1");
    // Without a request_id nothing needs Redis: still served.
    assert_eq!(
        gateway.create(valid_request()).await.expect("created"),
        "t_never"
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_and_redis_refuses_a_replica_without_one() {
    let redis = RedisServer::start_tls(true, None).await;
    let upstream = MockServer::start().await;
    answer_creates(&upstream, "t_mtls", Duration::ZERO).await;
    let with_cert = spawn_gateway(replica_settings(&upstream, redis.settings())).await;
    let mut no_cert = redis.settings();
    no_cert.tls.client_cert = None;
    no_cert.tls.client_key = None;
    let without_cert = spawn_gateway(replica_settings(&upstream, no_cert)).await;

    assert_eq!(
        with_cert
            .create(with_request_id("r-mtls"))
            .await
            .expect("created"),
        "t_mtls"
    );
    assert_coordination_unavailable(without_cert.create(with_request_id("r-mtls-none")).await);
    assert_eq!(received(&upstream, CREATE_PATH).await, 1);
}

#[tokio::test]
async fn a_bad_tls_file_stops_the_start_with_a_message_naming_it() {
    let redis = RedisServer::start_tls(true, None).await;
    let pki = redis.pki();
    let not_pem = pki.ca.with_file_name("not-pem.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let key_text = std::fs::read_to_string(&pki.client_key).expect("key");
    let plain = format!("redis://127.0.0.1:{}/0", redis.port);
    let insecure = format!("rediss://127.0.0.1:{}/0#insecure", redis.port);
    type Breaks<'a> = Box<dyn Fn(&mut RedisSettings) + 'a>;
    let cases: Vec<(&str, Breaks)> = vec![
        (
            "GATEWAY_REDIS_CA_FILE (/nonexistent/ca.pem) cannot be read",
            Box::new(|s| s.tls.ca = Some("/nonexistent/ca.pem".into())),
        ),
        (
            "GATEWAY_REDIS_CA_FILE",
            Box::new(|s| s.tls.ca = Some(not_pem.clone())),
        ),
        (
            "needs both GATEWAY_REDIS_CLIENT_CERT_FILE and GATEWAY_REDIS_CLIENT_KEY_FILE",
            Box::new(|s| s.tls.client_key = None),
        ),
        (
            "GATEWAY_REDIS_CLIENT_KEY_FILE",
            Box::new(|s| s.tls.client_key = Some(not_pem.clone())),
        ),
        (
            // Redis's key with the client's certificate.
            "do not make a client certificate",
            Box::new(|s| s.tls.client_key = Some(pki.server_key.clone())),
        ),
        (
            "must then be rediss://",
            Box::new(|s| s.url = plain.parse().expect("url")),
        ),
        (
            "Redis's certificate is always checked",
            Box::new(|s| s.url = insecure.parse().expect("url")),
        ),
    ];
    let upstream = MockServer::start().await;
    for (expected, break_it) in cases {
        let mut redis_settings = redis.settings();
        break_it(&mut redis_settings);
        let error = match Application::build(replica_settings(&upstream, redis_settings)).await {
            Ok(_) => panic!("started despite: {expected}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(expected), "{expected:?} not in: {error}");
        assert!(!error.contains(key_text.trim()), "the key leaked: {error}");
    }
}

#[tokio::test]
async fn the_binary_serves_over_rediss_with_a_ca_file_and_never_logs_the_password() {
    const PASSWORD: &str = "redis-pass-never-logged";
    let redis = RedisServer::start_tls(false, Some(PASSWORD)).await;
    let upstream = MockServer::start().await;
    answer_creates(&upstream, "t_bin_tls", Duration::ZERO).await;
    let ca = redis.pki().ca.to_str().expect("utf-8 path").to_owned();
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("RUST_LOG", "trace"),
            ("GATEWAY_REDIS_URL", &redis.url()),
            ("GATEWAY_REDIS_CA_FILE", &ca),
        ],
    )
    .await;
    let caller = gateway.caller().await;
    // A request_id needs Redis: created means TLS, AUTH and the scripts work.
    for _ in 0..2 {
        assert_eq!(
            caller
                .create(with_request_id("r-bin-tls"))
                .await
                .expect("created"),
            "t_bin_tls"
        );
    }
    assert_eq!(received(&upstream, CREATE_PATH).await, 1);
    assert_eq!(
        caller.metric("hailuo_gateway_fleet_redis_up").await,
        Some(1.0)
    );

    sigterm(&gateway.child);
    let _ = tokio::time::timeout(Duration::from_secs(7), gateway.child.wait()).await;
    let mut logs = gateway.startup_logs.clone();
    while let Ok(line) = gateway.logs.try_recv() {
        logs.push(line);
    }
    assert!(
        logs.iter()
            .any(|l| l.contains("rediss://:REDACTED@127.0.0.1")),
        "the URL is logged, redacted: {logs:#?}"
    );
    for line in &logs {
        assert!(!line.contains(PASSWORD), "the password leaked in: {line}");
    }
}

#[tokio::test]
async fn the_binary_with_a_ca_that_did_not_sign_redis_starts_degraded_and_says_why() {
    let redis = RedisServer::start_tls(false, None).await;
    let stranger = Pki::generate();
    let upstream = MockServer::start().await;
    let ca = stranger.ca.to_str().expect("utf-8 path").to_owned();
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("GATEWAY_REDIS_URL", &redis.url()),
            ("GATEWAY_REDIS_CA_FILE", &ca),
        ],
    )
    .await;
    let caller = gateway.caller().await;
    assert_coordination_unavailable(caller.create(with_request_id("r-bin-wrong-ca")).await);

    sigterm(&gateway.child);
    let _ = tokio::time::timeout(Duration::from_secs(7), gateway.child.wait()).await;
    let mut logs = gateway.startup_logs.clone();
    while let Ok(line) = gateway.logs.try_recv() {
        logs.push(line);
    }
    let warning = logs
        .iter()
        .find(|l| l.contains("Redis is unreachable"))
        .unwrap_or_else(|| panic!("no warning in {logs:#?}"));
    println!("{warning}");
    assert!(warning.contains("certificate"), "{warning}");
}

#[tokio::test]
async fn the_binary_trusts_the_system_roots_when_no_ca_file_is_given() {
    // rustls-native-certs reads the system's roots, which SSL_CERT_FILE
    // replaces: here, the test's CA.
    let redis = RedisServer::start_tls(false, None).await;
    let upstream = MockServer::start().await;
    answer_creates(&upstream, "t_system_roots", Duration::ZERO).await;
    let ca = redis.pki().ca.to_str().expect("utf-8 path").to_owned();
    let gateway = start_gateway_with(
        &upstream,
        &[("GATEWAY_REDIS_URL", &redis.url()), ("SSL_CERT_FILE", &ca)],
    )
    .await;
    let created = gateway
        .caller()
        .await
        .create(with_request_id("r-system-roots"))
        .await;
    assert_eq!(created.expect("created"), "t_system_roots");
}
