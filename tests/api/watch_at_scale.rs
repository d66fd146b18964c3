//! Many watchers, one poller; callbacks that wake watchers at once; clean
//! cancellation; the terminal cache; the shared read budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hailuo_gateway::config::{PollCadence, Secret};
use hailuo_gateway::http::callbacks::sign;
use hailuo_gateway::pb::{TaskState, WatchTaskResponse};
use serde_json::json;
use tonic::Streaming;
use wiremock::{Request, Respond, ResponseTemplate};

use crate::helpers::*;

const STATES: [&str; 4] = ["waiting", "queuing", "generating", "success"];
const HMAC_KEY: &str = "callback-hmac-key";

/// recordInfo answers the state the test has moved the task to.
#[derive(Clone)]
struct Phased {
    task_id: &'static str,
    phase: Arc<AtomicUsize>,
}

impl Phased {
    fn new(task_id: &'static str) -> Self {
        Self {
            task_id,
            phase: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn advance(&self) {
        self.phase.fetch_add(1, Ordering::SeqCst);
    }

    fn set(&self, state: &str) {
        let at = STATES.iter().position(|s| *s == state).expect("a state");
        self.phase.store(at, Ordering::SeqCst);
    }
}

impl Respond for Phased {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let at = self.phase.load(Ordering::SeqCst).min(STATES.len() - 1);
        kie_ok(record(self.task_id, STATES[at]))
    }
}

/// The value of an unlabelled gauge in the gateway's /metrics text.
async fn gauge(gateway: &Gateway, name: &str) -> f64 {
    gateway
        .metric(name)
        .await
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// A task watched by `watchers` streams over 8 connections while the test
/// moves it through every state on a fixed timeline. Returns the upstream
/// reads made from the moment every watcher had its first message, and
/// every watcher's states.
async fn watched_lifetime(watchers: usize) -> (usize, Vec<Vec<TaskState>>) {
    let app = spawn_app_with(|s| {
        s.watch.cadence = PollCadence::constant(Duration::from_millis(200));
    })
    .await;
    let task = Phased::new("t_many");
    mount_record(&app, task.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(app.new_client().await);
    }

    let mut streams = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut client = clients[i % clients.len()].clone();
        streams.push(tokio::spawn(async move {
            client
                .watch_task(watch_request("t_many"))
                .await
                .expect("watch")
                .into_inner()
        }));
    }
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut collectors = Vec::with_capacity(watchers);
    for stream in streams {
        let mut stream: Streaming<WatchTaskResponse> = stream.await.expect("join");
        let seen = seen_tx.clone();
        collectors.push(tokio::spawn(async move {
            let mut states = Vec::new();
            while let Some(m) = stream.message().await.expect("no error") {
                states.push(state_of(&m.task));
                let _ = seen.send(());
            }
            states
        }));
    }
    for _ in 0..watchers {
        seen_rx.recv().await.expect("first message");
    }
    let reads_before = app.upstream_count(RECORD_PATH).await;

    for _ in 1..STATES.len() {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        task.advance();
    }
    let mut all = Vec::with_capacity(watchers);
    for c in collectors {
        all.push(
            tokio::time::timeout(Duration::from_secs(10), c)
                .await
                .expect("ends")
                .expect("join"),
        );
    }
    let reads = app.upstream_count(RECORD_PATH).await - reads_before;
    (reads, all)
}

#[tokio::test]
async fn a_thousand_watchers_of_one_task_cost_the_reads_of_one_and_all_see_every_state() {
    let (one_reads, one_states) = watched_lifetime(1).await;
    let (many_reads, many_states) = watched_lifetime(1000).await;
    eprintln!(
        "recordInfo reads over the lifetime: 1 watcher {one_reads}, 1000 watchers {many_reads}"
    );

    let every_state = [
        TaskState::Waiting,
        TaskState::Queuing,
        TaskState::Generating,
        TaskState::Succeeded,
    ];
    assert_eq!(one_states, [every_state.to_vec()]);
    assert_eq!(many_states.len(), 1000);
    assert!(
        many_states.iter().all(|s| s == &every_state),
        "every watcher saw every state"
    );
    assert!(
        one_reads.abs_diff(many_reads) <= 2,
        "1 watcher: {one_reads} reads, 1000 watchers: {many_reads} reads"
    );
}

/// A gateway whose tasks kie.ai calls back about, with polling far slower
/// than the test.
async fn spawn_with_callbacks() -> TestApp {
    spawn_app_with(|s| {
        s.watch.cadence = PollCadence::constant(Duration::from_secs(5));
        s.watch.callback_safety_poll = Duration::from_secs(10);
        s.callbacks.to_self = true;
        s.callbacks.hmac_key = Some(Secret::new(HMAC_KEY));
    })
    .await
}

fn callback_body(task_id: &str, state: &str, url: &str) -> serde_json::Value {
    json!({"code": 200, "msg": "success", "data": {
        "taskId": task_id, "state": state,
        "resultJson": json!({"resultUrls": [url]}).to_string()
    }})
}

/// Creates `t_cb` through the gateway (so it carries the gateway's callback
/// URL) and watches it into GENERATING.
async fn watch_generating_task(app: &TestApp, task: &Phased) -> Streaming<WatchTaskResponse> {
    mount_create_ok(app, "t_cb").await;
    mount_record(app, task.clone()).await;
    task.set("generating");
    app.create(valid_request()).await.expect("created");
    let body = app.first_create_body().await;
    let url = body["callBackUrl"].as_str().expect("callBackUrl");
    assert!(
        url.starts_with(&app.http_url("/callbacks/kie?attempt=")),
        "the gateway's own callback URL, with the attempt's token: {url}"
    );
    let mut stream = app.watch("t_cb").await;
    let first = next_message(&mut stream).await;
    assert_eq!(state_of(&first.task), TaskState::Generating);
    stream
}

#[tokio::test]
async fn with_callbacks_a_watcher_learns_of_completion_within_100ms_of_the_callback() {
    let app = spawn_with_callbacks().await;
    let task = Phased::new("t_cb");
    let mut stream = watch_generating_task(&app, &task).await;
    task.set("success");
    app.http(); // built before the clock starts

    let ts = now_secs();
    let arrived = Instant::now();
    let status = app
        .post_signed_callback(
            &callback_body("t_cb", "success", "https://cdn.example/video.mp4"),
            ts,
            &sign(HMAC_KEY, "t_cb", ts),
        )
        .await;
    let done = next_message(&mut stream).await;
    let latency = arrived.elapsed();
    eprintln!("callback to watcher: {latency:?}");

    assert_eq!(status, 200);
    assert_eq!(state_of(&done.task), TaskState::Succeeded);
    assert!(
        latency < Duration::from_millis(100),
        "woken after {latency:?}"
    );
    assert!(
        stream.message().await.expect("ok").is_none(),
        "ends after success"
    );
}

#[tokio::test]
async fn forged_or_stale_callbacks_are_rejected_and_change_nothing() {
    let app = spawn_with_callbacks().await;
    let task = Phased::new("t_cb");
    let mut stream = watch_generating_task(&app, &task).await;
    let reads = app.upstream_count(RECORD_PATH).await;
    let evil = "https://evil.example/injected.mp4";
    let body = callback_body("t_cb", "success", evil);
    let ts = now_secs();
    let stale = ts - 6 * 60;

    let forged = app
        .post_signed_callback(&body, ts, &sign("not-the-key", "t_cb", ts))
        .await;
    let stale = app
        .post_signed_callback(&body, stale, &sign(HMAC_KEY, "t_cb", stale))
        .await;
    let other_task = app
        .post_signed_callback(&body, ts, &sign(HMAC_KEY, "t_other", ts))
        .await;
    let garbage = app
        .post_signed_callback(&body, ts, "bm90IGEgc2lnbmF0dXJl")
        .await;

    assert_eq!([forged, stale, other_task, garbage], [401; 4]);
    assert_eq!(app.upstream_count(RECORD_PATH).await, reads, "no re-read");
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "nothing sent to the watcher: {quiet:?}");

    // Even a correctly signed body cannot inject a URL: it only wakes a
    // re-read, and kie.ai still says generating.
    let signed = app
        .post_signed_callback(&body, ts, &sign(HMAC_KEY, "t_cb", ts))
        .await;
    assert_eq!(signed, 200);
    assert!(
        wait_for(Duration::from_secs(2), || async {
            app.upstream_count(RECORD_PATH).await == reads + 1
        })
        .await,
        "one re-read"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "no state change to report: {quiet:?}");
    let task = app.get("t_cb").await.expect("get");
    assert_eq!(task.state(), TaskState::Generating);
    assert!(!task.video_urls.iter().any(|u| u == evil));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("hailuo_gateway_callbacks_total{outcome=\"bad_signature\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hailuo_gateway_callbacks_total{outcome=\"stale_timestamp\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hailuo_gateway_callbacks_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn after_a_thousand_open_and_cancel_cycles_gauges_return_to_zero_and_reads_stop() {
    let app = spawn_app().await;
    let tasks: Vec<Phased> = ["t0", "t1", "t2", "t3", "t4"]
        .into_iter()
        .map(Phased::new)
        .collect();
    for task in &tasks {
        wiremock::Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path(RECORD_PATH))
            .and(wiremock::matchers::query_param("taskId", task.task_id))
            .respond_with(task.clone())
            .mount(&app.upstream)
            .await;
    }

    for i in 0..1000 {
        let task_id = tasks[i % tasks.len()].task_id;
        let mut stream = app.watch(task_id).await;
        next_message(&mut stream).await;
        drop(stream);
    }

    assert!(
        wait_for(Duration::from_secs(5), || async {
            gauge(&app, "hailuo_gateway_active_watchers").await == 0.0
                && gauge(&app, "hailuo_gateway_active_pollers").await == 0.0
        })
        .await,
        "watchers {} pollers {}",
        gauge(&app, "hailuo_gateway_active_watchers").await,
        gauge(&app, "hailuo_gateway_active_pollers").await
    );
    assert_eq!(app.hub.active_pollers(), 0);
    let reads = app.upstream_count(RECORD_PATH).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // ten poll intervals
    assert_eq!(
        app.upstream_count(RECORD_PATH).await,
        reads,
        "reads stopped"
    );
}

#[tokio::test]
async fn a_finished_task_is_answered_from_the_cache_without_an_upstream_call() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("t_done", &["generating", "success"])).await;
    let mut stream = app.watch("t_done").await;
    let (_, end) = drain(&mut stream).await;
    end.expect("ok");
    let reads = app.upstream_count(RECORD_PATH).await;

    let got = app.get("t_done").await.expect("get");
    let mut again = app.watch("t_done").await;
    let only = next_message(&mut again).await;

    assert_eq!(got.state(), TaskState::Succeeded);
    assert_eq!(state_of(&only.task), TaskState::Succeeded);
    assert!(again.message().await.expect("ok").is_none(), "ends at once");
    assert_eq!(
        app.upstream_count(RECORD_PATH).await,
        reads,
        "no upstream call"
    );
}

/// recordInfo for many tasks: each answers generating, then success, and
/// every read's arrival time is kept.
#[derive(Clone, Default)]
struct Reads {
    per_task: Arc<Mutex<HashMap<String, usize>>>,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for Reads {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.times.lock().expect("lock").push(Instant::now());
        let task_id = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "taskId")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let mut per_task = self.per_task.lock().expect("lock");
        let n = per_task.entry(task_id.clone()).or_default();
        *n += 1;
        let state = if *n >= 2 { "success" } else { "generating" };
        kie_ok(record(&task_id, state))
    }
}

#[tokio::test]
async fn two_hundred_tasks_on_a_budget_of_ten_reads_a_second_never_exceed_it_and_all_finish() {
    let app = spawn_app_with(|s| {
        s.watch.read_budget = 10;
        s.watch.cadence = PollCadence::constant(Duration::from_millis(100));
    })
    .await;
    let reads = Reads::default();
    mount_record(&app, reads.clone()).await;

    let mut watchers = Vec::new();
    for i in 0..200 {
        let mut client = app.client.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = client
                .watch_task(watch_request(&format!("t_budget_{i}")))
                .await
                .expect("watch")
                .into_inner();
            let mut last = TaskState::Unspecified;
            while let Some(m) = stream.message().await.expect("ok") {
                last = state_of(&m.task);
            }
            last
        }));
    }
    for w in watchers {
        let last = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("finishes")
            .expect("join");
        assert_eq!(last, TaskState::Succeeded);
    }

    let times = reads.times.lock().expect("lock").clone();
    assert_eq!(times.len(), 400, "two reads per task");
    let busiest = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 10, "{busiest} reads within one second");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("hailuo_gateway_read_budget_grants_total 400"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_show_rpcs_upstream_calls_watchers_pollers_and_callbacks() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    app.create(valid_request()).await.expect("created");
    let mut bad = valid_request();
    bad.prompt.clear();
    app.create(bad).await.expect_err("invalid");

    let text = app.metrics().await;

    for expected in [
        "hailuo_gateway_rpcs_total{method=\"CreateTask\",caller=\"anonymous\",code=\"OK\"} 1",
        "hailuo_gateway_rpcs_total{method=\"CreateTask\",caller=\"anonymous\",code=\"INVALID_ARGUMENT\"} 1",
        "hailuo_gateway_rpc_duration_seconds_count{method=\"CreateTask\"} 2",
        "hailuo_gateway_upstream_calls_total{endpoint=\"createTask\",kie_code=\"200\"} 1",
        "hailuo_gateway_active_watchers 0",
        "hailuo_gateway_active_pollers 0",
        "hailuo_gateway_read_budget_waiting 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[tokio::test]
async fn a_watch_ends_with_deadline_exceeded_after_the_maximum_watch_duration() {
    let app = spawn_app_with(|s| s.watch.max_duration = Duration::from_millis(300)).await;
    mount_record(&app, Sequence::states("t1", &["generating"])).await;

    let mut stream = app.watch("t1").await;
    next_message(&mut stream).await;
    let status = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("ends")
        .expect_err("deadline");

    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(error_info(&status).reason, "WATCH_DURATION_EXCEEDED");
}
