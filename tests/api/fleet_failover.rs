//! A replica's death loses nothing (issue 12, item 5), with the real thing:
//! three `hailuo-gateway` processes sharing a `redis-server` of the test's
//! own, in front of a `hailuo-gateway simulate` process as kie.ai. No
//! replica has a public callback URL, so the lease holder's polls alone move
//! a task on: what is measured is the takeover, not a callback's wake-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hailuo_gateway::hub::fleet_tasks::{LEASE, RENEW_EVERY, key_digest};
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{CreateTaskRequest, TaskState};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::process::Child;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::binary::{RunningGateway, exit_within, sigterm, start_gateway_at};
use crate::helpers::*;
use crate::redis_server::RedisServer;

const SIM_KEY: &str = "failover-key";
const PREFIX: &str = "failover";
/// The replicas' poll interval (`GATEWAY_POLL_FAST`): a lease holder reads
/// a young task this often, and a follower looks at the shared state (and
/// tries the lease) this often.
const POLL: Duration = Duration::from_millis(250);

// === The fleet ===

/// `hailuo-gateway simulate` as kie.ai.
struct Simulator {
    _child: Child,
    url: String,
    http: reqwest::Client,
}

impl Simulator {
    /// Starts it with these state timings (`--waiting 1s ...`).
    async fn start(timings: &[&str]) -> Self {
        let mut args = vec!["--listen", "127.0.0.1:0", "--api-key", SIM_KEY];
        args.extend_from_slice(timings);
        let (child, url) = crate::helpers::spawn_simulate(&args).await;
        Self {
            _child: child,
            url,
            http: http_client(),
        }
    }

    async fn get(&self, path: &str) -> Value {
        let body = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("sim control")
            .bytes()
            .await
            .expect("body");
        serde_json::from_slice(&body).expect("json")
    }

    /// The createTask calls it answered, by prompt.
    async fn creates_of(&self, prompt: &str) -> usize {
        self.requests("/api/v1/jobs/createTask")
            .await
            .iter()
            .filter(|r| r["body"]["input"]["prompt"] == prompt)
            .count()
    }

    async fn creates(&self) -> u64 {
        self.get("/sim/counts").await["createTask"]
            .as_u64()
            .expect("count")
    }

    /// When (Unix ms) each recordInfo read of `task_id` reached it.
    async fn reads_of(&self, task_id: &str) -> Vec<u64> {
        self.requests("/api/v1/jobs/recordInfo")
            .await
            .iter()
            .filter(|r| r["query"]["taskId"] == task_id)
            .map(|r| r["received_ms"].as_u64().expect("received_ms"))
            .collect()
    }

    async fn requests(&self, on_path: &str) -> Vec<Value> {
        let all = self.get("/sim/requests").await;
        all.as_array()
            .expect("a list")
            .iter()
            .filter(|r| r["path"] == on_path)
            .cloned()
            .collect()
    }

    /// Ends a `[sim:manual]` task with success.
    async fn complete(&self, task_id: &str) {
        let done = self
            .http
            .post(format!("{}/sim/tasks/{task_id}/complete", self.url))
            .send()
            .await
            .expect("complete");
        assert_eq!(done.status(), 200);
    }
}

/// One replica on fixed ports, so that it restarts where its callers (and
/// a load balancer) expect it.
struct Replica {
    grpc_port: u16,
    http_port: u16,
    process: Option<RunningGateway>,
    caller: Option<Caller>,
}

impl Replica {
    async fn start(sim: &Simulator, redis: &RedisServer) -> Self {
        let mut replica = Self {
            grpc_port: listening_port(),
            http_port: listening_port(),
            process: None,
            caller: None,
        };
        replica.restart(sim, redis).await;
        replica
    }

    /// Starts the binary (again) on this replica's ports.
    async fn restart(&mut self, sim: &Simulator, redis: &RedisServer) {
        assert!(self.process.is_none(), "already running");
        let grpc_addr = format!("127.0.0.1:{}", self.grpc_port);
        let http_addr = format!("127.0.0.1:{}", self.http_port);
        let redis_url = format!("redis://127.0.0.1:{}/0", redis.port);
        let poll = format!("{}ms", POLL.as_millis());
        let process = start_gateway_at(
            &sim.url,
            &[
                ("KIE_API_KEY", SIM_KEY),
                ("GATEWAY_GRPC_ADDR", &grpc_addr),
                ("GATEWAY_HTTP_ADDR", &http_addr),
                ("GATEWAY_REDIS_URL", &redis_url),
                ("GATEWAY_REDIS_PREFIX", PREFIX),
                ("GATEWAY_POLL_FAST", &poll),
            ],
        )
        .await;
        self.caller = Some(process.caller().await);
        self.process = Some(process);
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn caller(&self) -> &Caller {
        self.caller.as_ref().expect("running")
    }

    fn child(&mut self) -> &mut Child {
        &mut self.process.as_mut().expect("running").child
    }

    /// Kills it (SIGKILL: no drain, no lease handed back) and waits for it.
    async fn kill(&mut self) {
        self.child().start_kill().expect("SIGKILL");
        exit_within(self.child(), Duration::from_secs(5), "dies at once").await;
        self.caller = None;
        self.process = None;
    }

    /// SIGTERM, and the clean exit (0) within the drain.
    async fn stop(&mut self) {
        sigterm(self.child());
        let exit = exit_within(self.child(), Duration::from_secs(8), "drains in time").await;
        assert!(exit.success(), "exit status {exit:?}");
        self.caller = None;
        self.process = None;
    }

    async fn leases_held(&self) -> Option<f64> {
        self.caller()
            .metric("hailuo_gateway_fleet_leases_held")
            .await
    }
}

/// A free port below the kernel's ephemeral range, never handed out
/// before in this test binary: a restarted replica binds it again, and an
/// outgoing connection (there are many in these tests) never takes it in
/// between, as it may take a port that `bind(0)` handed out.
fn listening_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
    let ephemeral_from = range
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(10_001);
    for _ in 0..1000 {
        let port = rand::random_range(10_000..ephemeral_from);
        let mut handed_out = HANDED_OUT.lock();
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port below {ephemeral_from}");
}

async fn start_fleet(sim: &Simulator, redis: &RedisServer) -> Vec<Replica> {
    let (a, b, c) = tokio::join!(
        Replica::start(sim, redis),
        Replica::start(sim, redis),
        Replica::start(sim, redis)
    );
    vec![a, b, c]
}

/// A connection to this test's Redis, to look at the leases.
async fn redis_connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// The id of the replica that holds `task_id`'s poller lease, if any.
async fn lease_holder(
    conn: &mut redis::aio::MultiplexedConnection,
    task_id: &str,
) -> Option<String> {
    let lease = format!("{PREFIX}:lease:{{{task_id}.{}}}", key_digest(SIM_KEY));
    redis::cmd("GET")
        .arg(lease)
        .query_async(conn)
        .await
        .expect("GET")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn request(prompt: &str, request_id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.into(),
        request_id: request_id.into(),
        ..valid_request()
    }
}

/// The states a watcher saw, and when.
type Seen = Arc<Mutex<Vec<(TaskState, Instant)>>>;

fn has_seen(seen: &Seen, state: TaskState) -> bool {
    seen.lock().iter().any(|(s, _)| *s == state)
}

// === SIGKILL of the lease holder ===

#[tokio::test]
async fn when_the_replica_polling_a_task_is_killed_a_survivor_polls_on_and_loses_nothing() {
    let redis = RedisServer::start().await;
    // WAITING 1 s, QUEUING 6 s (the kill comes in it), then GENERATING until
    // the test completes the task: no later state can pass unseen while the
    // lease lapses, however slow the machine.
    let sim = Simulator::start(&["--waiting", "1s", "--queuing", "6s", "--generating", "1s"]).await;
    let mut replicas = start_fleet(&sim, &redis).await;
    let mut redis_conn = redis_connection(&redis).await;

    let prompt = "[sim:manual] a cat surfing";
    let task_id = replicas[0]
        .caller()
        .create(request(prompt, "r-failover"))
        .await
        .expect("created");
    // The first watcher's replica takes the lease; the others follow.
    let mut watches = Vec::new();
    for r in &replicas {
        watches.push(r.caller().watch(&task_id).await);
    }
    let holder = wait_for_some(Duration::from_secs(5), || async {
        let mut holders = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if r.leases_held().await == Some(1.0) {
                holders.push(i);
            }
        }
        (holders.len() == 1).then(|| holders[0])
    })
    .await
    .expect("one replica polls the task");
    assert_eq!(holder, 0, "the first watcher's replica polls the task");
    let dead_lease = lease_holder(&mut redis_conn, &task_id)
        .await
        .expect("a lease in Redis");

    // The survivors' watchers, each recording what it sees until the end.
    let mut survivors = Vec::new();
    // Open until its replica dies: its leaving would hand the lease back.
    let mut on_the_holder = None;
    for (i, mut stream) in watches.into_iter().enumerate() {
        if i == holder {
            on_the_holder = Some(stream);
            continue;
        }
        let seen = Seen::default();
        let record = seen.clone();
        let ended = tokio::spawn(async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                    Ok(Ok(Some(m))) if !m.heartbeat => {
                        record.lock().push((state_of(&m.task), Instant::now()))
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Err(status)) => return Err(status),
                    Err(_) => panic!("watch hung"),
                }
            }
        });
        survivors.push((seen, ended));
    }
    let queuing = wait_for(Duration::from_secs(10), || async {
        survivors
            .iter()
            .all(|(s, _)| has_seen(s, TaskState::Queuing))
    })
    .await;
    assert!(queuing, "the task is queuing");

    // Mid-task, the holder dies without a word.
    let killed_ms = unix_ms();
    let killed = Instant::now();
    replicas[holder].kill().await;
    drop(on_the_holder);

    let new_lease = wait_for_some(LEASE + Duration::from_secs(10), || async {
        lease_holder(&mut redis_conn.clone(), &task_id)
            .await
            .filter(|id| *id != dead_lease)
    })
    .await
    .expect("a survivor takes the lease");
    let took = killed.elapsed();
    let took_over_ms = unix_ms();
    assert!(!new_lease.is_empty());
    println!(
        "takeover after SIGKILL of the lease holder: {took:?} (lease {LEASE:?}, renewed every {RENEW_EVERY:?}, poll {POLL:?})"
    );
    // The dead holder's lease stood until it lapsed (renewed at most
    // RENEW_EVERY before the kill), then a follower took it at its next look.
    assert!(
        took >= LEASE - RENEW_EVERY - Duration::from_millis(300),
        "took {took:?}: the lease lapsed early"
    );
    assert!(
        took <= LEASE + POLL + Duration::from_secs(1),
        "took {took:?}"
    );
    let mut new_holders = 0;
    for (i, r) in replicas.iter().enumerate() {
        if i != holder && r.leases_held().await == Some(1.0) {
            new_holders += 1;
        }
    }
    assert_eq!(new_holders, 1, "one survivor polls the task");

    // The task moves on under the new holder: GENERATING, then done.
    let generating = wait_for(Duration::from_secs(10), || async {
        survivors
            .iter()
            .all(|(s, _)| has_seen(s, TaskState::Generating))
    })
    .await;
    assert!(generating, "the survivors' watchers see GENERATING");
    sim.complete(&task_id).await;
    let completed = Instant::now();
    for (seen, ended) in survivors {
        let end = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("the watch ends")
            .expect("join");
        end.expect("the watch ends OK");
        let seen = seen.lock().clone();
        let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
        let every = [
            TaskState::Waiting,
            TaskState::Queuing,
            TaskState::Generating,
            TaskState::Succeeded,
        ];
        assert!(
            states == every || states == every[1..],
            "a survivor's watcher sees every state: {states:?}"
        );
        let (_, at) = seen.last().expect("a state");
        assert!(
            at.duration_since(completed) <= POLL + Duration::from_secs(1),
            "SUCCEEDED after {:?}",
            at.duration_since(completed)
        );
    }

    // One poller's reads: none while the dead lease stood (a read the dead
    // holder sent just before the kill may land just after it), then one
    // read per poll interval (the new holder's first read may land before
    // the test saw the lease change).
    let reads = sim.reads_of(&task_id).await;
    let during_lapse = reads
        .iter()
        .filter(|&&at| at > killed_ms + 100 && at + 200 < took_over_ms)
        .count();
    assert_eq!(during_lapse, 0, "nobody read while the dead lease stood");
    let after: Vec<_> = reads
        .iter()
        .filter(|&&at| at + 200 >= took_over_ms)
        .collect();
    let span = Duration::from_millis(*after.last().expect("reads") - *after[0]);
    let one_poller = (span.as_millis() / POLL.as_millis()) as usize + 3;
    println!(
        "recordInfo reads: {} in all, {} by the new holder over {span:?} (one poller: at most {one_poller})",
        reads.len(),
        after.len()
    );
    assert!(after.len() <= one_poller, "{} reads", after.len());

    // The dead replica's request_id answers from the survivors: the same
    // task, still one createTask.
    for (i, r) in replicas.iter().enumerate() {
        if i == holder {
            continue;
        }
        let again = r
            .caller()
            .create(request(prompt, "r-failover"))
            .await
            .expect("the request_id answers");
        assert_eq!(again, task_id);
    }
    assert_eq!(sim.creates().await, 1, "one paid video");
}

// === A rolling restart ===

/// How one WatchTask stream (or an attempt to open one) ended early.
#[derive(Debug)]
struct Interrupted {
    replica: usize,
    code: Code,
    reason: Option<String>,
    /// The stream had sent messages: the replica ended it, it did not
    /// refuse it.
    streamed: bool,
}

/// What every watcher shares: the replicas' addresses, the streams open on
/// each, and how streams ended early.
struct Watchers {
    urls: Vec<String>,
    open: Vec<AtomicUsize>,
    interrupted: Mutex<Vec<Interrupted>>,
}

/// Watches `task_id` to its end as a client following the proto would:
/// whenever a stream ends with UNAVAILABLE it calls WatchTask again, on
/// the next replica that answers. Every state seen, in order.
async fn watch_through_restarts(
    watchers: Arc<Watchers>,
    task_id: String,
    mut at: usize,
) -> Vec<(TaskState, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "{task_id}: never ended");
        let next = (at + 1) % watchers.urls.len();
        let connected = Endpoint::from_shared(watchers.urls[at].clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await;
        let Ok(channel) = connected else {
            // Down between its SIGTERM and its restart: another replica.
            at = next;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut client = VideoGenerationClient::new(channel);
        let mut stream = match client.watch_task(watch_request(&task_id)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                watchers.interrupted.lock().push(Interrupted {
                    replica: at,
                    code: status.code(),
                    reason: reason(&status),
                    streamed: false,
                });
                at = next;
                continue;
            }
        };
        let mut counted = false;
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(m))) => {
                    if !counted {
                        watchers.open[at].fetch_add(1, Ordering::SeqCst);
                        counted = true;
                    }
                    if !m.heartbeat {
                        seen.push((state_of(&m.task), Instant::now()));
                    }
                }
                Ok(Ok(None)) => break Ok(()),
                Ok(Err(status)) => break Err(status),
                Err(_) => panic!("{task_id}: watch hung"),
            }
        };
        if counted {
            watchers.open[at].fetch_sub(1, Ordering::SeqCst);
        }
        let ended = seen
            .last()
            .is_some_and(|(s, _)| rank(*s) == rank(TaskState::Succeeded));
        let (code, reason) = match end {
            Ok(()) if ended => return seen,
            // Before the task's end, an OK end is a bug: a client would
            // not know to re-attach. Recorded, and re-attached anyway.
            Ok(()) => (Code::Ok, None),
            Err(status) => (status.code(), reason(&status)),
        };
        watchers.interrupted.lock().push(Interrupted {
            replica: at,
            code,
            reason,
            streamed: counted,
        });
        at = next;
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// Where a state stands in a task's life: a watcher may see one again on
/// re-attaching, never an earlier one.
fn rank(state: TaskState) -> u8 {
    match state {
        TaskState::Unspecified => 0,
        TaskState::Waiting => 1,
        TaskState::Queuing => 2,
        TaskState::Generating => 3,
        TaskState::Succeeded | TaskState::Failed => 4,
    }
}

/// How many task leases these replicas hold between them.
async fn leases_held(replicas: &[Replica], which: &[usize]) -> f64 {
    let mut held = 0.0;
    for &i in which {
        held += replicas[i].leases_held().await.unwrap_or(0.0);
    }
    held
}

#[tokio::test]
async fn a_rolling_restart_of_every_replica_loses_no_task_request_id_or_final_state() {
    let redis = RedisServer::start().await;
    // Tasks of 9 s: each lives through the whole rolling restart.
    let sim = Simulator::start(&["--waiting", "2s", "--queuing", "3s", "--generating", "4s"]).await;
    let mut replicas = start_fleet(&sim, &redis).await;

    // Four tasks, each created with a request_id on one replica (one of
    // them fails), watched from every replica.
    let tasks: Vec<(String, String, TaskState)> = (0..4)
        .map(|n| {
            let marker = if n == 3 { "[sim:fail] " } else { "" };
            let end = if n == 3 {
                TaskState::Failed
            } else {
                TaskState::Succeeded
            };
            (format!("{marker}rolling {n}"), format!("r-roll-{n}"), end)
        })
        .collect();
    let mut task_ids = Vec::new();
    for (n, (prompt, request_id, _)) in tasks.iter().enumerate() {
        let task_id = replicas[n % 3]
            .caller()
            .create(request(prompt, request_id))
            .await
            .expect("created");
        task_ids.push(task_id);
    }
    let watchers = Arc::new(Watchers {
        urls: replicas.iter().map(Replica::grpc_url).collect(),
        open: (0..3).map(|_| AtomicUsize::new(0)).collect(),
        interrupted: Mutex::default(),
    });
    let mut watching = Vec::new();
    for (n, task_id) in task_ids.iter().enumerate() {
        for start in 0..3 {
            let watcher = tokio::spawn(watch_through_restarts(
                watchers.clone(),
                task_id.clone(),
                start,
            ));
            watching.push((n, watcher));
        }
    }

    // One replica at a time: SIGTERM, a clean exit, back on its ports. A
    // replica that stops cleanly hands its tasks' leases back: the others
    // poll on at their next look, not when the leases lapse.
    let every_task = task_ids.len() as f64;
    let mut ended_on = Vec::new();
    for i in 0..replicas.len() {
        let watched = wait_for(Duration::from_secs(10), || async {
            watchers.open[i].load(Ordering::SeqCst) > 0
        })
        .await;
        assert!(watched, "replica {i} has open watches before its SIGTERM");
        let polled = wait_for(Duration::from_secs(10), || async {
            leases_held(&replicas, &[0, 1, 2]).await == every_task
        })
        .await;
        assert!(polled, "every task has its poller");
        let before = watchers.interrupted.lock().len();
        let restarting = Instant::now();
        replicas[i].stop().await;
        let stopped = Instant::now();
        let others: Vec<_> = (0..3).filter(|&j| j != i).collect();
        let taken = wait_for(LEASE + Duration::from_secs(5), || async {
            leases_held(&replicas, &others).await == every_task
        })
        .await;
        let held = leases_held(&replicas, &others).await;
        assert!(
            taken,
            "the other replicas poll {held} of {every_task} tasks"
        );
        let handed_over = stopped.elapsed();
        replicas[i].restart(&sim, &redis).await;
        println!(
            "replica {i}: exited {:?} after SIGTERM, its leases taken over {handed_over:?} later, back after {:?}",
            stopped.duration_since(restarting),
            restarting.elapsed()
        );
        assert!(
            handed_over <= POLL + Duration::from_secs(1),
            "replica {i}'s leases were not handed back: taken over after {handed_over:?}"
        );
        ended_on.push(watchers.interrupted.lock().len() - before);
    }
    let restarted = Instant::now();

    for (n, watcher) in watching {
        let seen = tokio::time::timeout(Duration::from_secs(40), watcher)
            .await
            .expect("every watcher ends")
            .expect("join");
        let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
        let (_, _, end) = &tasks[n];
        assert_eq!(states.last(), Some(end), "task {n}: {states:?}");
        assert!(
            states.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
            "task {n} never moves back: {states:?}"
        );
        let (_, finished) = seen.last().expect("a state");
        assert!(
            *finished > restarted,
            "task {n} lived through the rolling restart"
        );
    }

    // Each SIGTERM ended its replica's streams with UNAVAILABLE and
    // SHUTTING_DOWN; nothing ended with another code.
    let interrupted = std::mem::take(&mut *watchers.interrupted.lock());
    println!("streams interrupted per SIGTERM: {ended_on:?}");
    for end in interrupted.iter() {
        assert_eq!(end.code, Code::Unavailable, "{end:?}");
    }
    for i in 0..3 {
        let ends = interrupted
            .iter()
            .filter(|e| e.replica == i && e.streamed)
            .collect::<Vec<_>>();
        assert!(!ends.is_empty(), "replica {i}'s SIGTERM ended no stream");
        for end in ends {
            assert_eq!(end.reason.as_deref(), Some("SHUTTING_DOWN"), "{end:?}");
        }
    }

    // Every request_id made before the restarts, retried on every replica
    // after them: the same task, and one createTask each.
    for ((prompt, request_id, _), task_id) in tasks.iter().zip(&task_ids) {
        for r in &replicas {
            let again = r
                .caller()
                .create(request(prompt, request_id))
                .await
                .expect("the request_id answers");
            assert_eq!(&again, task_id, "{request_id}");
        }
        assert_eq!(sim.creates_of(prompt).await, 1, "{request_id}: one video");
    }
    assert_eq!(sim.creates().await, tasks.len() as u64);
}
