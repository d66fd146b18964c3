//! Watching as one gateway across replicas that share a Redis (issue 12,
//! items 3-5): one poller per task for the whole fleet, a callback to any
//! replica wakes every watcher, a replica's death hands its tasks over, and
//! with Redis away each replica watches on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hailuo_gateway::config::{PollCadence, Settings};
use hailuo_gateway::hub::fleet_tasks::{FOLLOW_MAX, LEASE, key_digest};
use hailuo_gateway::pb::{TaskState, WatchTaskResponse};
use serde_json::json;
use tonic::Streaming;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::redis_server::RedisServer;

/// A scripted kie.ai whose tasks are in the state the test sets, and which
/// counts the recordInfo reads of each.
#[derive(Clone, Default)]
struct Board {
    states: Arc<Mutex<HashMap<String, &'static str>>>,
    reads: Arc<Mutex<HashMap<String, usize>>>,
}

impl Board {
    async fn mount(&self, upstream: &MockServer) {
        Mock::given(method("GET"))
            .and(path(RECORD_PATH))
            .respond_with(self.clone())
            .mount(upstream)
            .await;
    }

    fn set(&self, task_id: &str, state: &'static str) {
        self.states
            .lock()
            .expect("lock")
            .insert(task_id.into(), state);
    }

    fn reads(&self, task_id: &str) -> usize {
        self.reads
            .lock()
            .expect("lock")
            .get(task_id)
            .copied()
            .unwrap_or(0)
    }
}

impl Respond for Board {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let task_id = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "taskId")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        *self
            .reads
            .lock()
            .expect("lock")
            .entry(task_id.clone())
            .or_default() += 1;
        let state = self.states.lock().expect("lock").get(&task_id).copied();
        match state {
            Some(state) => kie_ok(record(&task_id, state)),
            None => kie_error(404, "task not found"),
        }
    }
}

/// Settings of one replica of the fleet.
fn replica_settings(upstream: &MockServer, redis: &RedisServer) -> Settings {
    let mut settings = test_settings(&upstream.uri());
    settings.redis = Some(redis.settings());
    settings
}

/// Watches until the terminal state; every state seen.
async fn watch_to_end(gateway: &Gateway, task_id: &str) -> Vec<TaskState> {
    let stream = gateway.watch(task_id).await;
    let messages = drain_to_end(stream).await;
    states(&messages)
}

async fn drain_to_end(mut stream: Streaming<WatchTaskResponse>) -> Vec<WatchTaskResponse> {
    let mut messages = Vec::new();
    while let Ok(Some(message)) = stream.message().await {
        messages.push(message);
    }
    messages
}

fn ends_in_success(states: &[TaskState]) -> bool {
    states.last() == Some(&TaskState::Succeeded)
}

/// Which of `replicas` holds a lease (reads kie.ai for the fleet).
async fn holder(replicas: &[Gateway]) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        if r.metric("hailuo_gateway_fleet_leases_held").await == Some(1.0) {
            return Some(i);
        }
    }
    None
}

#[tokio::test]
async fn watchers_on_three_replicas_cost_the_reads_of_one() {
    let redis = RedisServer::start().await;
    let upstream = MockServer::start().await;
    let board = Board::default();
    board.mount(&upstream).await;

    // The same 1.5 s task life, watched by five callers on one replica,
    // then by five on each of three.
    async fn run(board: &Board, replicas: &[Gateway], task_id: &'static str) -> usize {
        board.set(task_id, "waiting");
        let mut watches = Vec::new();
        for r in replicas {
            for _ in 0..5 {
                watches.push(r.watch(task_id).await);
            }
        }
        let script = {
            let board = board.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                board.set(task_id, "generating");
                tokio::time::sleep(Duration::from_millis(1000)).await;
                board.set(task_id, "success");
            })
        };
        for watch in watches {
            let seen = states(&drain_to_end(watch).await);
            assert!(ends_in_success(&seen), "{task_id}: {seen:?}");
        }
        script.await.expect("script");
        board.reads(task_id)
    }

    let one = vec![spawn_gateway(replica_settings(&upstream, &redis)).await];
    let alone = run(&board, &one, "task_one_replica").await;
    let fleet = vec![
        spawn_gateway(replica_settings(&upstream, &redis)).await,
        spawn_gateway(replica_settings(&upstream, &redis)).await,
        spawn_gateway(replica_settings(&upstream, &redis)).await,
    ];
    let three = run(&board, &fleet, "task_three_replicas").await;
    println!("recordInfo reads for one task: 1 replica {alone}, 3 replicas {three}");
    // One poller for the fleet: about one replica's reads (the cadence is
    // 30 ms, so a few reads of slack), not three times as many.
    assert!(
        three <= alone + alone / 4 + 3,
        "3 replicas read {three} times, 1 replica {alone}"
    );

    // A finished task is answered from the shared state by any replica,
    // even one that never saw it, with no upstream read.
    let before = board.reads("task_three_replicas");
    let late = spawn_gateway(replica_settings(&upstream, &redis)).await;
    let task = late.get("task_three_replicas").await.expect("get");
    assert_eq!(task.state(), TaskState::Succeeded);
    assert!(ends_in_success(
        &watch_to_end(&late, "task_three_replicas").await
    ));
    assert_eq!(
        board.reads("task_three_replicas"),
        before,
        "no upstream read"
    );

    // The shared state is named by a digest of the key, and nothing in
    // Redis holds the key itself.
    let client = redis::Client::open(redis.settings().url.expose().as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let task_key = format!(
        "test-gateway:task:{{task_three_replicas.{}}}",
        key_digest(TEST_KEY)
    );
    assert!(names.contains(&task_key), "{names:?}");
    for name in names {
        assert!(!name.contains(TEST_KEY), "{name}");
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .expect("DUMP");
        let dump = dump.unwrap_or_default();
        assert!(
            !dump
                .windows(TEST_KEY.len())
                .any(|w| w == TEST_KEY.as_bytes()),
            "{name} holds the key"
        );
    }
}

#[tokio::test]
async fn a_callback_to_any_replica_wakes_the_watchers_of_every_replica() {
    let redis = RedisServer::start().await;
    let upstream = MockServer::start().await;
    let board = Board::default();
    board.mount(&upstream).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut settings = replica_settings(&upstream, &redis);
        // Polls far apart: only a wake-up can show the end in time.
        settings.watch.cadence = PollCadence::constant(Duration::from_secs(20));
        settings.watch.callback_safety_poll = Duration::from_secs(20);
        replicas.push(spawn_gateway(settings).await);
    }
    let mut latencies = Vec::new();
    for n in 0..30 {
        let task_id = format!("task_cb_{n}");
        board.set(&task_id, "generating");
        // Watchers on two replicas; kie.ai calls back the third.
        let (a, b, called) = (n % 3, (n + 1) % 3, (n + 2) % 3);
        let mut watches = Vec::new();
        for r in [a, b] {
            let mut watch = replicas[r].watch(&task_id).await;
            let first = next_message(&mut watch).await;
            assert_eq!(states(&[first]), vec![TaskState::Generating]);
            watches.push(watch);
        }
        board.set(&task_id, "success");
        let body = json!({"code": 200, "data": {"taskId": task_id}}).to_string();
        let url = replicas[called].callback_url();
        let started = Instant::now();
        assert_eq!(replicas[called].post_callback(&url, body, &[]).await, 200);
        let ends: Vec<_> = watches
            .into_iter()
            .map(|w| {
                tokio::spawn(async move {
                    // Far below the 20 s polls: only a wake-up ends it in time.
                    let seen = tokio::time::timeout(Duration::from_secs(3), drain_to_end(w))
                        .await
                        .map(|m| states(&m))
                        .unwrap_or_default();
                    (seen, started.elapsed())
                })
            })
            .collect();
        for end in ends {
            let (seen, took) = end.await.expect("watch");
            assert!(ends_in_success(&seen), "{task_id}: {seen:?}");
            latencies.push(took);
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let (p50, p99) = (at(0.50), at(0.99));
    println!(
        "cross-replica callback-to-watcher latency over {} watchers: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() - 1]
    );
    assert!(p99 <= Duration::from_millis(250), "p99 {p99:?}");
}

#[tokio::test]
async fn when_the_replica_polling_a_task_stops_another_takes_over() {
    let redis = RedisServer::start().await;
    let upstream = MockServer::start().await;
    let board = Board::default();
    board.mount(&upstream).await;
    let task_id = "task_takeover";
    board.set(task_id, "queuing");
    let mut replicas = vec![
        spawn_gateway(replica_settings(&upstream, &redis)).await,
        spawn_gateway(replica_settings(&upstream, &redis)).await,
        spawn_gateway(replica_settings(&upstream, &redis)).await,
    ];
    let mut watches = Vec::new();
    for r in &replicas {
        let mut watch = r.watch(task_id).await;
        next_message(&mut watch).await;
        watches.push(watch);
    }
    let dead = wait_for_some(Duration::from_secs(5), || holder(&replicas))
        .await
        .expect("a replica polls the task");
    // The holder goes away mid-task, with its watchers; the task moves on.
    watches.remove(dead);
    drop(replicas.remove(dead));
    board.set(task_id, "generating");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    board.set(task_id, "success");
    for watch in watches {
        let seen = tokio::time::timeout(LEASE + Duration::from_secs(2), drain_to_end(watch))
            .await
            .map(|m| states(&m))
            .unwrap_or_default();
        assert_eq!(
            seen,
            vec![TaskState::Generating, TaskState::Succeeded],
            "a survivor's watcher sees every later state"
        );
    }
    let took = stopped.elapsed();
    println!("takeover after a replica stopped: SUCCEEDED on the survivors after {took:?}");
    assert!(took <= LEASE + Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn a_dead_holder_s_lease_lapses_and_a_survivor_polls_on() {
    let redis = RedisServer::start().await;
    let upstream = MockServer::start().await;
    let board = Board::default();
    board.mount(&upstream).await;
    let task_id = "task_dead_holder";
    board.set(task_id, "success");
    // A replica that died (no release, no renewals) holding the lease.
    let client = redis::Client::open(redis.settings().url.expose().as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let lease = format!("test-gateway:lease:{{{task_id}.{}}}", key_digest(TEST_KEY));
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("a-dead-replica")
        .arg("PX")
        .arg(LEASE.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let planted = Instant::now();
    let replicas = [
        spawn_gateway(replica_settings(&upstream, &redis)).await,
        spawn_gateway(replica_settings(&upstream, &redis)).await,
    ];
    let ends: Vec<_> = replicas
        .iter()
        .map(|r| tokio::time::timeout(LEASE + FOLLOW_MAX + FOLLOW_MAX, watch_to_end(r, task_id)))
        .collect();
    let mut all = Vec::new();
    for end in ends {
        all.push(end.await.unwrap_or_default());
    }
    let took = planted.elapsed();
    for seen in &all {
        assert_eq!(seen, &vec![TaskState::Succeeded]);
    }
    println!("takeover of a dead holder's lease: SUCCEEDED after {took:?} (lease {LEASE:?})");
    // Nobody read while the dead holder's lease stood, then one read ended it.
    assert!(took >= LEASE - Duration::from_millis(200), "took {took:?}");
    assert!(took <= LEASE + FOLLOW_MAX, "took {took:?}");
    assert_eq!(board.reads(task_id), 1);
}

#[tokio::test]
async fn with_redis_away_each_replica_watches_on_its_own() {
    let mut redis = RedisServer::start().await;
    let upstream = MockServer::start().await;
    let board = Board::default();
    board.mount(&upstream).await;
    let replicas = [
        spawn_gateway(replica_settings(&upstream, &redis)).await,
        spawn_gateway(replica_settings(&upstream, &redis)).await,
    ];
    redis.stop();
    let task_id = "task_no_redis";
    board.set(task_id, "generating");
    let mut watches = Vec::new();
    for r in &replicas {
        let first = tokio::time::timeout(Duration::from_secs(10), async {
            let mut watch = r.watch(task_id).await;
            let first = next_message(&mut watch).await;
            (watch, first)
        });
        let (watch, first) = first.await.expect("the watch starts without Redis");
        assert_eq!(states(&[first]), vec![TaskState::Generating]);
        watches.push(watch);
    }
    board.set(task_id, "success");
    for watch in watches {
        let seen = tokio::time::timeout(Duration::from_secs(10), drain_to_end(watch))
            .await
            .expect("the watch ends without Redis");
        assert_eq!(states(&seen), vec![TaskState::Succeeded]);
    }
    // Each replica polled for itself.
    assert!(board.reads(task_id) >= 4, "reads {}", board.reads(task_id));
}

#[tokio::test]
async fn the_shared_state_never_moves_back() {
    use hailuo_gateway::hub::fleet_tasks::FleetTasks;
    use hailuo_gateway::metrics::Metrics;
    use hailuo_gateway::redis_client::Redis;

    let redis = RedisServer::start().await;
    let tasks = FleetTasks::new(
        Redis::new(&redis.settings()).expect("redis"),
        Duration::from_secs(60),
        Arc::new(Metrics::new()),
    );
    let keys = tasks.keys("task_forward", &key_digest(TEST_KEY));
    let write = |rank: i32, bytes: &'static [u8]| {
        let (tasks, keys) = (tasks.clone(), keys.clone());
        async move { tasks.write(&keys, rank, bytes).await.expect("write") }
    };
    assert!(write(1, b"waiting").await.moved);
    assert!(write(3, b"generating").await.moved);
    // A stale writer (a lease holder that lost its lease) is refused.
    let stale = write(2, b"queuing").await;
    assert!(stale.refused && stale.task == b"generating");
    let same = write(3, b"generating 50%").await;
    assert!(!same.refused && !same.moved);
    assert!(write(4, b"succeeded").await.moved);
    // Nothing after a terminal state, not even the other terminal one.
    let after = write(5, b"failed").await;
    assert!(after.refused && after.task == b"succeeded");
    assert_eq!(
        tasks.read(&keys).await.expect("read").as_deref(),
        Some(&b"succeeded"[..])
    );
}
