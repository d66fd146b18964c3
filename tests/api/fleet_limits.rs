//! Three replicas sharing one Redis keep kie.ai's per-account limits as one
//! gateway: at most KIE_CREATE_LIMIT createTask per window and at most
//! GATEWAY_READ_BUDGET recordInfo per second reach kie.ai from the whole
//! fleet, counted by when the scripted kie.ai received them. With Redis
//! stopped each replica keeps to its share (health still SERVING), and the
//! fleet-wide limits come back with Redis, without a restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hailuo_gateway::config::Settings;
use hailuo_gateway::startup::Application;
use tokio::sync::oneshot;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::redis_server::RedisServer;

/// One replica: its caller, and its gRPC address for the health check.
struct Replica {
    caller: Caller,
    grpc_url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Replica {
    async fn start(settings: Settings) -> Self {
        let app = Application::build(settings).await.expect("build app");
        let grpc_url = format!("http://{}", app.grpc_addr());
        let http_url = format!("http://{}", app.http_addr());
        let admin_url = format!("http://{}", app.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let caller = Caller::connect(grpc_url.clone(), http_url, admin_url).await;
        Self {
            caller,
            grpc_url,
            stop: Some(stop),
        }
    }

    async fn serving(&self) -> bool {
        let channel = tonic::transport::Endpoint::from_shared(self.grpc_url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest {
                service: "hailuo.v1.VideoGeneration".into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        status == 1
    }

    /// One create with this deadline: Ok(task id) or the status.
    async fn create(&self, deadline: Duration) -> Result<String, tonic::Status> {
        let mut client = self.caller.client.clone();
        client
            .create_task(with_timeout(valid_request(), deadline))
            .await
            .map(|r| r.into_inner().task_id)
    }
}

/// When each request reached the scripted kie.ai, with its task id (empty
/// for a create).
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(Instant, String)>>>);

impl Arrivals {
    fn push(&self, task_id: String) {
        self.0.lock().expect("lock").push((Instant::now(), task_id));
    }

    fn times(&self) -> Vec<Instant> {
        self.times_of("")
    }

    /// Arrivals for tasks whose id starts with `prefix`, in order.
    fn times_of(&self, prefix: &str) -> Vec<Instant> {
        let mut times: Vec<Instant> = self
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, id)| id.starts_with(prefix))
            .map(|(t, _)| *t)
            .collect();
        times.sort();
        times
    }

    /// The most arrivals within any `window`.
    fn most_within(&self, window: Duration) -> usize {
        most_within(&self.times(), window)
    }
}

/// The most of `times` (in order) within any `window`.
fn most_within(times: &[Instant], window: Duration) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(times[i]) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

struct CreateOk(Arrivals, std::sync::atomic::AtomicUsize);

impl Respond for CreateOk {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.push(String::new());
        let n = self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        kie_ok(serde_json::json!({"taskId": format!("t_{n}")}))
    }
}

/// Every task is queuing for ever: watchers keep polling.
struct Queuing(Arrivals);

impl Respond for Queuing {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let task_id = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "taskId")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        self.0.push(task_id.clone());
        kie_ok(record(&task_id, "queuing"))
    }
}

struct Fleet {
    upstream: MockServer,
    redis: RedisServer,
    creates: Arrivals,
    reads: Arrivals,
}

const CREATE_LIMIT: usize = 20;
const CREATE_WINDOW: Duration = Duration::from_secs(2);
const READ_BUDGET: u32 = 5;

impl Fleet {
    async fn start() -> Self {
        let fleet = Self {
            upstream: MockServer::start().await,
            redis: RedisServer::start().await,
            creates: Arrivals::default(),
            reads: Arrivals::default(),
        };
        Mock::given(method("POST"))
            .and(path(CREATE_PATH))
            .respond_with(CreateOk(fleet.creates.clone(), Default::default()))
            .mount(&fleet.upstream)
            .await;
        Mock::given(method("GET"))
            .and(path(RECORD_PATH))
            .respond_with(Queuing(fleet.reads.clone()))
            .mount(&fleet.upstream)
            .await;
        fleet
    }

    /// Three replicas, each having seen the other two in Redis.
    async fn replicas(&self) -> [Replica; 3] {
        let mut settings = test_settings(&self.upstream.uri());
        settings.redis = Some(self.redis.settings());
        settings.upstream.limits.create_limit = CREATE_LIMIT;
        settings.upstream.limits.create_window = CREATE_WINDOW;
        settings.watch.read_budget = READ_BUDGET;
        let replicas = [
            Replica::start(settings.clone()).await,
            Replica::start(settings.clone()).await,
            Replica::start(settings).await,
        ];
        for replica in &replicas {
            let seen = wait_for(Duration::from_secs(5), || async {
                replica.caller.metric("hailuo_gateway_fleet_replicas").await == Some(3.0)
            })
            .await;
            assert!(seen, "every replica sees a fleet of three");
        }
        replicas
    }
}

/// `count` creates with `deadline`, spread over the replicas (or all on
/// one), concurrently; the answers in order.
async fn creates(
    replicas: &[&Replica],
    count: usize,
    deadline: Duration,
) -> Vec<Result<String, tonic::Status>> {
    let calls = (0..count).map(|i| replicas[i % replicas.len()].create(deadline));
    futures_util::future::join_all(calls).await
}

fn assert_shed(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(status).reason, "GATEWAY_OVERLOADED");
    assert!(retry_delay(status).is_some(), "RetryInfo says when");
}

#[tokio::test]
async fn creates_over_three_replicas_keep_one_window_fleet_wide() {
    let fleet = Fleet::start().await;
    let [a, b, c] = fleet.replicas().await;

    // Deadlines long enough to wait for the next window (2 s × 1.05).
    let answers = creates(&[&a, &b, &c], 30, Duration::from_secs(4)).await;
    let created = answers.iter().filter(|a| a.is_ok()).count();
    for answer in &answers {
        if let Err(status) = answer {
            assert_shed(status);
        }
    }
    // Every create that reached kie.ai was answered to its caller.
    assert_eq!(created, fleet.creates.times().len());
    assert_eq!(created, 30, "the last ten waited for the next window");

    // The first twenty have left the window, the last ten have not: room
    // for ten more. Deadlines too short to wait: the rest are shed at once,
    // nothing sent.
    let answers = creates(&[&a, &b, &c], 16, Duration::from_millis(500)).await;
    let created = answers.iter().filter(|a| a.is_ok()).count();
    for answer in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_shed(answer);
    }
    assert_eq!(created, 10, "the sliding window's room, fleet-wide");
    assert_eq!(fleet.creates.times().len(), 40);

    let most = fleet.creates.most_within(CREATE_WINDOW);
    assert!(
        most <= CREATE_LIMIT,
        "{most} createTask reached kie.ai within {CREATE_WINDOW:?}"
    );
}

#[tokio::test]
async fn watchers_on_three_replicas_share_one_read_budget() {
    let fleet = Fleet::start().await;
    let replicas = fleet.replicas().await;

    // Three tasks watched on each replica, each wanting a read every 30 ms.
    let mut watches = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for t in 0..3 {
            watches.push(replica.caller.watch(&format!("t_{r}_{t}")).await);
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(watches);

    let reads = fleet.reads.times().len();
    assert!(reads >= 12, "the budget is used ({reads} reads in 4 s)");
    let most = fleet.reads.most_within(Duration::from_secs(1));
    assert!(
        most <= READ_BUDGET as usize,
        "{most} recordInfo reached kie.ai within a second"
    );
}

#[tokio::test]
async fn without_redis_each_replica_keeps_its_share_until_redis_returns() {
    let mut fleet = Fleet::start().await;
    let replicas = fleet.replicas().await;

    fleet.redis.stop();
    for replica in &replicas {
        let down = wait_for(Duration::from_secs(5), || async {
            replica.caller.metric("hailuo_gateway_fleet_redis_up").await == Some(0.0)
        })
        .await;
        assert!(down, "fleet_redis_up 0");
        assert!(replica.serving().await, "degraded, not down: SERVING");
    }

    // Each replica: floor(20 / 3) = 6 creates in its window, the rest shed.
    for replica in &replicas {
        let answers = creates(&[replica], 10, Duration::from_millis(500)).await;
        let created = answers.iter().filter(|a| a.is_ok()).count();
        assert_eq!(created, 6, "a replica keeps to its share");
        for answer in answers.iter().filter_map(|a| a.as_ref().err()) {
            assert_shed(answer);
        }
    }
    assert_eq!(fleet.creates.times().len(), 18);
    let local_windows_over = Instant::now() + CREATE_WINDOW.mul_f64(1.1);

    // Reads: floor(5 / 3) = 1 a second on each replica.
    let read_from = fleet.reads.times().len();
    let mut watches = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for t in 0..3 {
            watches.push(replica.caller.watch(&format!("down_{r}_{t}")).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(watches);
    assert!(fleet.reads.times().len() > read_from, "reads go on");
    for r in 0..3 {
        let most = most_within(
            &fleet.reads.times_of(&format!("down_{r}_")),
            Duration::from_secs(1),
        );
        assert!(most <= 1, "replica {r}: {most} reads within a second");
    }

    // Redis back (empty): one fleet-wide window of 20 again, no restart.
    // Past the local windows first, so that only the fleet's counts.
    fleet.redis.restart().await;
    tokio::time::sleep_until(local_windows_over.into()).await;
    for replica in &replicas {
        let up = wait_for(Duration::from_secs(5), || async {
            replica.caller.metric("hailuo_gateway_fleet_redis_up").await == Some(1.0)
        })
        .await;
        assert!(up, "fleet_redis_up 1");
    }
    // The restarted Redis is empty: until every replica has beaten again,
    // a replica may count fewer members there. The size it divides by must
    // not drop for that (were Redis to go again now, the shares would be
    // too big).
    for replica in &replicas {
        let seen = replica.caller.metric("hailuo_gateway_fleet_replicas").await;
        assert_eq!(seen, Some(3.0), "the fleet did not shrink");
    }
    let answers = creates(
        &[&replicas[0], &replicas[1], &replicas[2]],
        24,
        Duration::from_millis(500),
    )
    .await;
    let created = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(
        created, CREATE_LIMIT,
        "the fleet's window, not three shares"
    );
}
