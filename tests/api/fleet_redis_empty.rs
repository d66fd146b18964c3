//! Redis restarted empty under a running fleet (issue 12): everything the
//! replicas shared is gone at once, and nobody restarts a replica. Real
//! processes: a `redis-server` of the test's own (it keeps nothing on disk),
//! three `hailuo-gateway` replicas and a `hailuo-gateway simulate` as
//! kie.ai, whose createTask calls are counted.

use std::time::Duration;

use hailuo_gateway::pb::{CreateTaskRequest, TaskState};
use tonic::Streaming;

use crate::binary::{RunningGateway, start_gateway_at};
use crate::fleet_crash::{idempotency_states, sim_creates};
use crate::helpers::*;
use crate::redis_server::RedisServer;

const SIM_KEY: &str = "empty-key";
const PREFIX: &str = "empty";

async fn replica(sim_url: &str, redis: &RedisServer) -> RunningGateway {
    let redis_url = format!("redis://127.0.0.1:{}/0", redis.port);
    start_gateway_at(
        sim_url,
        &[
            ("KIE_API_KEY", SIM_KEY),
            ("GATEWAY_REDIS_URL", &redis_url),
            ("GATEWAY_REDIS_PREFIX", PREFIX),
            ("GATEWAY_POLL_FAST", "250ms"),
        ],
    )
    .await
}

fn request(prompt: &str, request_id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.into(),
        request_id: request_id.into(),
        ..valid_request()
    }
}

async fn create(caller: &Caller, prompt: &str, request_id: &str) -> String {
    caller
        .client
        .clone()
        .create_task(with_timeout(
            request(prompt, request_id),
            Duration::from_secs(10),
        ))
        .await
        .unwrap_or_else(|status| panic!("{request_id:?} created: {status:?}"))
        .into_inner()
        .task_id
}

/// Reads `stream` until SUCCEEDED; false if it ends or breaks first.
async fn sees_success(mut stream: Streaming<hailuo_gateway::pb::WatchTaskResponse>) -> bool {
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(message)) = stream.message().await {
            if state_of(&message.task) == TaskState::Succeeded {
                return true;
            }
        }
        false
    });
    ended.await.unwrap_or(false)
}

#[tokio::test]
async fn redis_restarted_empty_loses_no_watcher_and_no_request_id_a_replica_remembers() {
    let mut redis = RedisServer::start().await;
    let (_sim, sim_url) = spawn_simulate(&[
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        SIM_KEY,
        "--slow-create",
        "3s",
    ])
    .await;
    let http = http_client();
    let replicas = [
        replica(&sim_url, &redis).await,
        replica(&sim_url, &redis).await,
        replica(&sim_url, &redis).await,
    ];
    let mut callers = Vec::new();
    for r in &replicas {
        callers.push(r.caller().await);
    }
    let [a, b, c] = [&callers[0], &callers[1], &callers[2]];

    // Before: a request_id answered by A; a task watched on every replica;
    // a create with a request_id out at kie.ai from B when Redis goes.
    let answered = create(a, "a cat surfing", "r-before").await;
    let watched = create(a, "[sim:manual] a cat watched", "").await;
    let mut watches = Vec::new();
    for caller in [a, b, c] {
        let mut stream = caller.watch(&watched).await;
        let first = next_message(&mut stream).await;
        assert_ne!(state_of(&first.task), TaskState::Succeeded);
        watches.push(stream);
    }
    let in_flight = {
        let b = b.client.clone();
        tokio::spawn(async move {
            b.clone()
                .create_task(with_timeout(
                    request("[sim:slow-create] a cat in flight", "r-in-flight"),
                    Duration::from_secs(20),
                ))
                .await
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || async {
            sim_creates(&http, &sim_url).await == 3
        })
        .await,
        "the third create reached kie.ai"
    );

    // Redis loses everything: stopped, and started empty on its port.
    redis.stop();
    redis.restart().await;
    assert!(idempotency_states(&redis, PREFIX).await.is_empty(), "empty");

    // The create that was out when Redis went is recorded all the same
    // (its replica claims the key again and settles it), so a retry on a
    // replica that never saw it gets its task.
    let in_flight = in_flight
        .await
        .expect("joined")
        .expect("the create out at kie.ai is answered")
        .into_inner()
        .task_id;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            idempotency_states(&redis, PREFIX).await == ["done"]
        })
        .await,
        "the create's outcome is back in Redis: {:?}",
        idempotency_states(&redis, PREFIX).await
    );
    assert_eq!(
        create(c, "[sim:slow-create] a cat in flight", "r-in-flight").await,
        in_flight
    );
    // The request_id answered before the restart, retried where it was
    // answered: that replica remembers it, no second create.
    assert_eq!(create(a, "a cat surfing", "r-before").await, answered);
    assert_eq!(sim_creates(&http, &sim_url).await, 3, "no create repeated");

    // request_id calls work again with no replica restarted, fleet-wide.
    let after = create(a, "a cat after", "r-after").await;
    assert_eq!(create(b, "a cat after", "r-after").await, after);
    assert_eq!(create(c, "a cat after", "r-after").await, after);
    assert_eq!(
        sim_creates(&http, &sim_url).await,
        4,
        "one create for r-after"
    );

    // The watched task ends: every replica's watcher gets its final state.
    let done = http
        .post(format!("{sim_url}/sim/tasks/{watched}/complete"))
        .send()
        .await
        .expect("complete");
    assert_eq!(done.status(), 200);
    let mut seen = Vec::new();
    for stream in watches {
        seen.push(tokio::spawn(sees_success(stream)));
    }
    for (i, seen) in seen.into_iter().enumerate() {
        assert!(
            seen.await.expect("joined"),
            "watcher on replica {i} saw SUCCEEDED"
        );
    }
}
