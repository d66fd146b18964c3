//! A replica killed with an outcome still queued in its outbox (issue 12):
//! the settle of a request_id's create, queued in `src/fleet/outbox.rs`
//! and not yet in Redis, dies with the process. A retry of that request_id
//! on another replica must never buy a second video. Real processes: a
//! `redis-server` of the test's own, `hailuo-gateway` replicas and a
//! `hailuo-gateway simulate` as kie.ai, whose createTask calls are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hailuo_gateway::pb::CreateTaskRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use crate::binary::{RunningGateway, exit_within, start_gateway_at};
use crate::helpers::*;
use crate::redis_server::RedisServer;

const SIM_KEY: &str = "crash-key";
const PREFIX: &str = "crash";
/// How late the simulator answers a `[sim:slow-create]` createTask: the
/// time the test has to cut the dying replica off Redis once the task is
/// made.
const SLOW_CREATE: &str = "2s";

/// A TCP relay between one replica and Redis that the test can cut: from
/// then on every byte either way is swallowed and new connections hang,
/// as in a network partition. The replica's writes to Redis then wait in
/// its outbox, retried, until it dies.
struct Partition {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Partition {
    async fn to(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_relays = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let cut = cut_relays.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                        return;
                    };
                    let (from_replica, to_replica) = inbound.into_split();
                    let (from_redis, to_redis) = outbound.into_split();
                    tokio::join!(
                        relay(from_replica, to_redis, cut.clone()),
                        relay(from_redis, to_replica, cut)
                    );
                });
            }
        });
        Self { port, cut }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn replica(sim_url: &str, redis_url: &str) -> RunningGateway {
    start_gateway_at(
        sim_url,
        &[
            ("KIE_API_KEY", SIM_KEY),
            ("GATEWAY_REDIS_URL", redis_url),
            ("GATEWAY_REDIS_PREFIX", PREFIX),
        ],
    )
    .await
}

/// The createTask calls the simulator took (each one a paid video).
pub async fn sim_creates(http: &reqwest::Client, sim_url: &str) -> u64 {
    let body = http
        .get(format!("{sim_url}/sim/counts"))
        .send()
        .await
        .expect("sim counts")
        .bytes()
        .await
        .expect("body");
    let counts: serde_json::Value = serde_json::from_slice(&body).expect("json");
    counts["createTask"].as_u64().expect("a count")
}

/// The state field (`st`) of every request_id hash under `prefix`, as
/// Redis holds them now (none while it is away).
pub async fn idempotency_states(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port));
    let Ok(mut conn) = client
        .expect("client")
        .get_multiplexed_async_connection()
        .await
    else {
        return Vec::new();
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:idem:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let mut states = Vec::new();
    for key in keys {
        let st: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("st")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        states.extend(st);
    }
    states
}

fn request(request_id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: "[sim:slow-create] a cat surfing".into(),
        request_id: request_id.into(),
        ..valid_request()
    }
}

#[tokio::test]
async fn a_replica_killed_before_its_settle_reached_redis_never_causes_a_second_create() {
    let redis = RedisServer::start().await;
    let (_sim, sim_url) = spawn_simulate(&[
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        SIM_KEY,
        "--slow-create",
        SLOW_CREATE,
    ])
    .await;
    let http = http_client();
    let partition = Partition::to(redis.port).await;
    let mut dying = replica(&sim_url, &partition.url()).await;
    let direct = format!("redis://127.0.0.1:{}/0", redis.port);
    let survivor = replica(&sim_url, &direct).await;
    let other = replica(&sim_url, &direct).await;

    // The create reaches kie.ai (the key reserved in Redis before it goes);
    // kie.ai makes the task and answers 2 s later.
    let dying_caller = dying.caller().await;
    let first = tokio::spawn(async move {
        dying_caller
            .client
            .clone()
            .create_task(with_timeout(request("r-crash"), Duration::from_secs(20)))
            .await
    });
    assert!(
        wait_for(Duration::from_secs(10), || async {
            sim_creates(&http, &sim_url).await == 1
        })
        .await,
        "the create reached kie.ai"
    );
    // Cut off from Redis before the answer: the settle that records the
    // task id can only wait in the replica's outbox.
    partition.cut();
    let task_id = first
        .await
        .expect("joined")
        .expect("the dying replica got kie.ai's answer")
        .into_inner()
        .task_id;
    assert_eq!(
        idempotency_states(&redis, PREFIX).await,
        ["inflight"],
        "the settle is still queued, not in Redis"
    );
    // SIGKILL: the queue dies with the process. (Its caller's answer may
    // as well have been lost on the way back: the caller retries.)
    dying.child.start_kill().expect("SIGKILL");
    exit_within(&mut dying.child, Duration::from_secs(5), "dies at once").await;

    // The retry on a survivor waits out the dead replica's lease, then is
    // told the outcome is unknown for good: a deliberate error, never a
    // second create, and never UNAVAILABLE (a mesh would retry it).
    let survivor = survivor.caller().await;
    let retried = survivor
        .client
        .clone()
        .create_task(with_timeout(request("r-crash"), Duration::from_secs(30)))
        .await;
    match &retried {
        Ok(answer) => assert_eq!(answer.get_ref().task_id, task_id, "the same task"),
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(error_info(status).reason, "CREATE_OUTCOME_UNKNOWN");
            assert!(retry_delay(status).is_none(), "no RetryInfo: {status:?}");
        }
    }
    assert_eq!(sim_creates(&http, &sim_url).await, 1, "one paid video");
    assert_eq!(idempotency_states(&redis, PREFIX).await, ["unknown"]);

    // The key keeps that answer on every replica, however often retried.
    let other = other.caller().await;
    for caller in [&survivor, &other, &survivor] {
        let again = caller
            .client
            .clone()
            .create_task(with_timeout(request("r-crash"), Duration::from_secs(5)))
            .await;
        match (&retried, again) {
            (Ok(first), Ok(again)) => assert_eq!(again.get_ref().task_id, first.get_ref().task_id),
            (Err(first), Err(again)) => {
                assert_eq!(again.code(), first.code(), "{again:?}");
                assert_eq!(error_info(&again).reason, "CREATE_OUTCOME_UNKNOWN");
            }
            (first, again) => panic!("the answer changed: {first:?} then {again:?}"),
        }
    }
    assert_eq!(
        sim_creates(&http, &sim_url).await,
        1,
        "still one paid video"
    );
}
