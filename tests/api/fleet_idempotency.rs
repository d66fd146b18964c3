//! Replicas sharing one Redis behave as one gateway for request_ids: one
//! upstream create per request_id whichever replica the duplicates reach,
//! also after the replica that answered is gone; and with Redis away, a
//! request_id is refused rather than risked. Creates are counted at the
//! upstream.

use std::time::Duration;

use hailuo_gateway::config::Settings;
use hailuo_gateway::create::attempts::SharedAttempts;
use hailuo_gateway::create::idempotency::{
    IdempotencyKey, IdempotencyStore, Reservation, Settlement,
};
use hailuo_gateway::error::{GatewayError, Prospect};
use hailuo_gateway::fleet::attempts::FleetAttempts;
use hailuo_gateway::fleet::idempotency::{LEASE, RedisIdempotencyStore};
use hailuo_gateway::pb::CreateTaskRequest;
use hailuo_gateway::redis_client::Redis;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::helpers::*;
use crate::redis_server::RedisServer;

/// One scripted kie.ai, one Redis, and replicas in front of them.
struct Fleet {
    upstream: MockServer,
    redis: RedisServer,
}

impl Fleet {
    async fn start() -> Self {
        Self {
            upstream: MockServer::start().await,
            redis: RedisServer::start().await,
        }
    }

    fn settings(&self) -> Settings {
        let mut settings = test_settings(&self.upstream.uri());
        settings.redis = Some(self.redis.settings());
        settings
    }

    async fn replica(&self) -> Gateway {
        self.replica_with(|_| {}).await
    }

    async fn replica_with(&self, configure: impl FnOnce(&mut Settings)) -> Gateway {
        let mut settings = self.settings();
        configure(&mut settings);
        spawn_gateway(settings).await
    }

    async fn creates(&self) -> usize {
        self.upstream
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == CREATE_PATH)
            .count()
    }

    async fn answer_creates(&self, task_id: &str, delay: Duration) {
        Mock::given(method("POST"))
            .and(path(CREATE_PATH))
            .respond_with(kie_ok(serde_json::json!({"taskId": task_id})).set_delay(delay))
            .mount(&self.upstream)
            .await;
    }
}

/// How long an outcome waits for a reserve to carry it, in the stores
/// these tests make themselves.
const LINGER: Duration = Duration::from_millis(2);

fn with_request_id(id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        request_id: id.into(),
        ..valid_request()
    }
}

#[tokio::test]
async fn concurrent_duplicates_over_two_replicas_make_one_create_and_share_its_task() {
    let fleet = Fleet::start().await;
    // Slow enough that every duplicate arrives while the attempt is out.
    fleet
        .answer_creates("t_fleet", Duration::from_millis(400))
        .await;
    let (a, b) = (fleet.replica().await, fleet.replica().await);

    let calls = (0..30).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        let mut client = replica.client.clone();
        async move { client.create_task(with_request_id("r-fleet")).await }
    });
    let answers = futures_util::future::join_all(calls).await;

    for answer in answers {
        let task = answer.expect("every duplicate gets the task").into_inner();
        assert_eq!(task.task_id, "t_fleet");
    }
    assert_eq!(fleet.creates().await, 1, "one paid video for the fleet");
}

#[tokio::test]
async fn a_request_id_outlives_the_replica_that_answered_it() {
    let fleet = Fleet::start().await;
    fleet.answer_creates("t_kept", Duration::ZERO).await;
    let mut a = fleet.replica().await;
    let first = a
        .client
        .create_task(with_request_id("r-kept"))
        .await
        .expect("created")
        .into_inner();
    assert_eq!(first.task_id, "t_kept");
    // A rolling upgrade: A goes, a new A comes, B never saw the request.
    drop(a);
    let mut b = fleet.replica().await;
    let mut a_again = fleet.replica().await;

    // The outcome is recorded in the background: a retry that races it
    // waits for it, and never creates.
    for replica in [&mut b.client, &mut a_again.client] {
        let again = replica
            .create_task(with_request_id("r-kept"))
            .await
            .expect("known")
            .into_inner();
        assert_eq!(again.task_id, "t_kept");
    }
    assert_eq!(fleet.creates().await, 1);
}

#[tokio::test]
async fn an_unknown_outcome_on_one_replica_is_never_created_again_by_another() {
    let fleet = Fleet::start().await;
    // kie.ai answers after the gateway's upstream timeout: sent, unanswered.
    fleet
        .answer_creates("t_lost", Duration::from_millis(2000))
        .await;
    let short_timeout = |s: &mut Settings| s.upstream.timeout = Duration::from_millis(300);
    let mut a = fleet.replica_with(short_timeout).await;
    let mut b = fleet.replica_with(short_timeout).await;

    let lost = a
        .client
        .create_task(with_request_id("r-lost"))
        .await
        .expect_err("the answer is lost");
    assert_eq!(
        error_info(&lost).reason,
        "CREATE_OUTCOME_UNKNOWN",
        "{lost:?}"
    );

    for _ in 0..3 {
        let retried = b
            .client
            .create_task(with_request_id("r-lost"))
            .await
            .expect_err("never a second create");
        assert_eq!(
            error_info(&retried).reason,
            "CREATE_OUTCOME_UNKNOWN",
            "{retried:?}"
        );
        // No public callback URL: the gateway can never learn the task.
        assert_eq!(retried.code(), Code::FailedPrecondition, "{retried:?}");
    }
    assert_eq!(fleet.creates().await, 1, "one create, never repeated");
}

#[tokio::test]
async fn with_redis_away_a_request_id_is_refused_at_once_and_works_again_when_it_returns() {
    let mut fleet = Fleet::start().await;
    fleet.answer_creates("t_back", Duration::ZERO).await;
    let mut a = fleet.replica().await;
    let mut b = fleet.replica().await;
    fleet.redis.stop();

    let started = std::time::Instant::now();
    let refused = a
        .client
        .create_task(with_request_id("r-away"))
        .await
        .expect_err("refused without Redis");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once: {:?}",
        started.elapsed()
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let info = error_info(&refused);
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("COORDINATION_UNAVAILABLE", "hailuo-gateway")
    );
    assert!(retry_delay(&refused).is_some(), "RetryInfo: {refused:?}");
    assert_eq!(fleet.creates().await, 0, "nothing sent upstream");

    // Without a request_id there is nothing to coordinate.
    let plain = a
        .client
        .create_task(valid_request())
        .await
        .expect("a create without request_id goes on")
        .into_inner();
    assert_eq!(plain.task_id, "t_back");
    assert_eq!(fleet.creates().await, 1);

    // An outage of a few seconds, with callers: the connection's own
    // reconnects fail meanwhile.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = a.create(with_request_id("r-away")).await.expect_err("away");
        assert_eq!(error_info(&status).reason, "COORDINATION_UNAVAILABLE");
    }
    // Redis comes back, empty; the replicas reconnect by themselves, and
    // the very first request_id call after it works (no blip).
    fleet.redis.restart().await;
    let answered = a
        .client
        .create_task(with_request_id("r-away"))
        .await
        .expect("request_id calls work again at once, without a restart")
        .into_inner()
        .task_id;
    assert_eq!(answered, "t_back");
    let again = b
        .client
        .create_task(with_request_id("r-away"))
        .await
        .expect("known fleet-wide")
        .into_inner();
    assert_eq!(again.task_id, "t_back");
    assert_eq!(fleet.creates().await, 2, "one for each call that created");
}

#[tokio::test]
async fn an_attempt_whose_replica_died_reads_as_unknown_once_its_lease_lapses_never_free() {
    let redis = RedisServer::start().await;
    let ttl = Duration::from_secs(60);
    let lease = Duration::from_millis(300);
    let key = IdempotencyKey {
        scope: "scope".into(),
        request_id: "r-dead".into(),
    };
    // The dying replica runs on a runtime of its own, shut down mid-attempt:
    // no settlement, no more lease renewals, as with a SIGKILL.
    let settings = redis.settings();
    let held_key = key.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let dying = RedisIdempotencyStore::with_timings(
                Redis::new(&settings).expect("redis"),
                ttl,
                lease,
                LINGER,
            );
            let Reservation::Reserved(held) = dying.reserve(held_key, [7; 32]).await else {
                panic!("reserves");
            };
            std::mem::forget(held);
        });
        drop(runtime);
    })
    .join()
    .expect("the dying replica reserved");

    let survivor = RedisIdempotencyStore::with_timings(
        Redis::new(&redis.settings()).expect("redis"),
        ttl,
        lease,
        LINGER,
    );
    // While the lease runs, the survivor waits for the attempt; then it is
    // told the outcome is unknown for good.
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        survivor.clone().reserve(key.clone(), [7; 32]),
    )
    .await
    .expect("the lapse ends the wait");
    assert!(
        matches!(&seen, Reservation::Unknown(u) if u.prospect == Prospect::Never),
        "unknown, never free"
    );
    assert!(matches!(
        survivor.clone().reserve(key.clone(), [7; 32]).await,
        Reservation::Unknown(_)
    ));
}

#[tokio::test]
async fn waiters_on_another_replica_share_a_certain_failure_and_the_key_is_free_again() {
    let redis = RedisServer::start().await;
    let store = |redis: &RedisServer| {
        RedisIdempotencyStore::with_timings(
            Redis::new(&redis.settings()).expect("redis"),
            Duration::from_secs(60),
            LEASE,
            LINGER,
        )
    };
    let (a, b) = (store(&redis), store(&redis));
    let key = IdempotencyKey {
        scope: "scope".into(),
        request_id: "r-refused".into(),
    };
    let Reservation::Reserved(lease) = a.clone().reserve(key.clone(), [1; 32]).await else {
        panic!("reserves");
    };
    let waiter = tokio::spawn(b.clone().reserve(key.clone(), [1; 32]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    lease.settle(Settlement::NotCreated(&GatewayError::ShuttingDown));
    let seen = waiter.await.expect("waiter");
    let Reservation::Failed(error) = seen else {
        panic!("the waiter learns the failure");
    };
    let status = error.to_status();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).reason, "SHUTTING_DOWN");
    // A new caller (not a waiter) may try again.
    assert!(matches!(
        b.clone().reserve(key.clone(), [1; 32]).await,
        Reservation::Reserved(_)
    ));
}

#[tokio::test]
async fn a_callback_to_another_replica_settles_a_create_whose_answer_was_lost() {
    let fleet = Fleet::start().await;
    // kie.ai makes the task but answers after the gateway's upstream timeout.
    fleet.answer_creates("t_lost", Duration::from_secs(3)).await;
    let losing = |s: &mut Settings| {
        s.upstream.timeout = Duration::from_millis(300);
        s.callbacks.to_self = true;
    };
    let a = fleet.replica_with(losing).await;
    let b = fleet.replica_with(losing).await;

    let status = a
        .create(with_request_id("r-cross"))
        .await
        .expect_err("the answer is lost");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");

    let sent = fleet
        .upstream
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.url.path() == CREATE_PATH)
        .expect("the create kie.ai received");
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json");
    let sent_url = body["callBackUrl"].as_str().expect("callBackUrl");
    let token = sent_url
        .split_once("attempt=")
        .map(|(_, token)| token.to_string())
        .expect("the attempt's token");
    // A's lost attempt reaches Redis in the background.
    let shared = FleetAttempts::new(
        Redis::new(&fleet.redis.settings()).expect("redis"),
        Duration::from_secs(60),
    );
    assert!(
        wait_for(Duration::from_secs(5), || async {
            matches!(shared.lookup(token.clone()).await, Ok(Some(_)))
        })
        .await,
        "the lost attempt is in Redis"
    );
    // kie.ai's record echoes the create request, A's URL and token included.
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(kie_ok(serde_json::json!({
            "taskId": "t_lost", "state": "success",
            "param": String::from_utf8(sent.body.clone()).expect("utf-8"),
        })))
        .mount(&fleet.upstream)
        .await;

    // The load balancer gives kie.ai's callback to B.
    let callback = serde_json::json!({"code": 200, "msg": "success",
        "data": {"taskId": "t_lost", "state": "success"}});
    let to_b = b.http_url(&format!("/callbacks/kie?attempt={token}"));
    assert_eq!(b.post_callback(&to_b, callback.to_string(), &[]).await, 200);

    let learned = wait_for_some(Duration::from_secs(5), || async {
        a.create(with_request_id("r-cross")).await.ok()
    })
    .await;
    assert_eq!(
        learned.as_deref(),
        Some("t_lost"),
        "A's retry gets the task"
    );
    assert_eq!(
        b.create(with_request_id("r-cross")).await.ok().as_deref(),
        Some("t_lost")
    );
    assert_eq!(fleet.creates().await, 1, "one paid video for the fleet");
    assert!(
        wait_for(Duration::from_secs(5), || async {
            matches!(shared.lookup(token.clone()).await, Ok(None))
        })
        .await,
        "a settled token is forgotten"
    );
}

fn key(request_id: &str) -> IdempotencyKey {
    IdempotencyKey {
        scope: "scope".into(),
        request_id: request_id.into(),
    }
}

#[tokio::test]
async fn an_outcome_rides_to_redis_with_the_next_reserve() {
    let redis = RedisServer::start().await;
    let store = |linger| {
        RedisIdempotencyStore::with_timings(
            Redis::new(&redis.settings()).expect("redis"),
            Duration::from_secs(60),
            LEASE,
            linger,
        )
    };
    // The writer would wait an hour: only a reserve can carry the outcome.
    let (a, observer) = (store(Duration::from_secs(3600)), store(LINGER));
    let Reservation::Reserved(lease) = a.clone().reserve(key("r-first"), [1; 32]).await else {
        panic!("reserves");
    };
    lease.settle(Settlement::Created("t_first"));
    let Reservation::Reserved(_next) = a.clone().reserve(key("r-next"), [1; 32]).await else {
        panic!("reserves");
    };
    // The next reserve's pipeline wrote it: another replica knows the task.
    let seen = tokio::time::timeout(
        Duration::from_secs(2),
        observer.clone().reserve(key("r-first"), [1; 32]),
    )
    .await
    .expect("settled in Redis, not in flight");
    assert!(matches!(seen, Reservation::Known(t) if t == "t_first"));
}

#[tokio::test]
async fn an_attempt_in_flight_keeps_its_key_over_many_leases() {
    let redis = RedisServer::start().await;
    let lease = Duration::from_millis(300);
    let store = || {
        RedisIdempotencyStore::with_timings(
            Redis::new(&redis.settings()).expect("redis"),
            Duration::from_secs(60),
            lease,
            LINGER,
        )
    };
    let (a, b) = (store(), store());
    let Reservation::Reserved(held) = a.clone().reserve(key("r-long"), [1; 32]).await else {
        panic!("reserves");
    };
    // Five leases long: the renewals keep it this attempt's.
    tokio::time::sleep(lease * 5).await;
    let waiter = tokio::spawn(b.clone().reserve(key("r-long"), [1; 32]));
    tokio::time::sleep(lease * 2).await;
    assert!(!waiter.is_finished(), "a duplicate waits for the attempt");
    held.settle(Settlement::Created("t_long"));
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the outcome ends the wait")
        .expect("waiter");
    assert!(matches!(seen, Reservation::Known(t) if t == "t_long"));
}

#[tokio::test]
async fn replicas_with_different_ttls_agree_on_whose_lease_runs() {
    // The lease is the key's expiry past the attempt's own TTL: a replica
    // that remembers request_ids for less (a settings change rolling out)
    // must still see the attempt in flight, and see it lapse on time.
    let redis = RedisServer::start().await;
    let lease = Duration::from_millis(300);
    let store = |ttl| {
        RedisIdempotencyStore::with_timings(
            Redis::new(&redis.settings()).expect("redis"),
            ttl,
            lease,
            LINGER,
        )
    };
    let (long, short) = (
        store(Duration::from_secs(3600)),
        store(Duration::from_secs(60)),
    );
    let Reservation::Reserved(held) = short.clone().reserve(key("r-ttls"), [1; 32]).await else {
        panic!("reserves");
    };
    let waiter = tokio::spawn(long.clone().reserve(key("r-ttls"), [1; 32]));
    tokio::time::sleep(lease * 3).await;
    assert!(!waiter.is_finished(), "the duplicate waits for the attempt");
    held.settle(Settlement::Created("t_ttls"));
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the outcome ends the wait")
        .expect("waiter");
    assert!(matches!(seen, Reservation::Known(t) if t == "t_ttls"));

    // The other way round: the long-TTL replica's attempt dies (its own
    // runtime shut down mid-attempt, as with a SIGKILL); the short-TTL
    // replica sees its lease lapse, not an hour later.
    let settings = redis.settings();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let dying = RedisIdempotencyStore::with_timings(
                Redis::new(&settings).expect("redis"),
                Duration::from_secs(3600),
                lease,
                LINGER,
            );
            let Reservation::Reserved(held) = dying.reserve(key("r-ttls-2"), [2; 32]).await else {
                panic!("reserves");
            };
            std::mem::forget(held);
        });
        drop(runtime);
    })
    .join()
    .expect("the dying replica reserved");
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        short.clone().reserve(key("r-ttls-2"), [2; 32]),
    )
    .await
    .expect("the lapse ends the wait");
    assert!(
        matches!(seen, Reservation::Unknown(_)),
        "a lapsed attempt reads as unknown, never free"
    );
}
