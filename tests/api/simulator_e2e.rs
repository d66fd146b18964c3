//! End to end through the gRPC API against the kie.ai simulator, both
//! in-process and as a separate `hailuo-gateway simulate` process: every
//! scenario and fault the simulator offers.

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use hailuo_gateway::config::{PollCadence, Secret};
use hailuo_gateway::pb::{
    CreateTaskRequest, GetTaskRequest, TaskState, WatchTaskRequest, WatchTaskResponse,
};
use hailuo_gateway::simulator::{SimulateArgs, Simulator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};

use crate::helpers::*;

const SIM_KEY: &str = "e2e-key";
const HMAC_KEY: &str = "e2e-hmac-key";
/// Short states, each outlasting several 50 ms polls.
const TIMINGS: [&str; 6] = [
    "--waiting",
    "300ms",
    "--queuing",
    "300ms",
    "--generating",
    "500ms",
];

#[derive(Clone, Copy, Debug)]
enum Mode {
    InProcess,
    Process,
}

/// The simulator, however it runs.
enum Sim {
    InProcess {
        _sim: Simulator,
        stop: CancellationToken,
    },
    Process {
        _child: Child,
    },
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Sim::InProcess { stop, .. } = self {
            stop.cancel();
        }
    }
}

#[derive(Parser)]
struct SimCli {
    #[command(flatten)]
    args: SimulateArgs,
}

/// Starts a simulator with these `simulate` flags; returns it and its URL.
async fn start_simulator(mode: Mode, extra: &[&str]) -> (Sim, String) {
    let mut flags = vec![
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        SIM_KEY,
        "--hmac-key",
        HMAC_KEY,
    ];
    flags.extend_from_slice(&TIMINGS);
    flags.extend_from_slice(extra);
    match mode {
        Mode::InProcess => {
            let cli = SimCli::parse_from(std::iter::once("simulate").chain(flags.iter().copied()));
            let listener = tokio::net::TcpListener::bind(cli.args.listen)
                .await
                .expect("bind");
            let stop = CancellationToken::new();
            let sim = Simulator::start(cli.args.config(), listener, stop.clone())
                .await
                .expect("start simulator");
            let url = sim.base_url();
            (Sim::InProcess { _sim: sim, stop }, url)
        }
        Mode::Process => {
            let mut child = Command::new(env!("CARGO_BIN_EXE_hailuo-gateway"))
                .arg("simulate")
                .args(&flags)
                .env_clear()
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn simulate");
            let stdout = child.stdout.take().expect("stdout");
            let mut lines = BufReader::new(stdout).lines();
            let url = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(line) = lines.next_line().await.expect("read") {
                    if let Some(url) = line.strip_prefix("kie.ai simulator listening on ") {
                        return url.trim().to_string();
                    }
                }
                panic!("simulate exited before listening");
            })
            .await
            .expect("simulator up in time");
            (Sim::Process { _child: child }, url)
        }
    }
}

struct E2e {
    gateway: Gateway,
    sim_url: String,
    http: reqwest::Client,
    _sim: Sim,
}

impl E2e {
    async fn start(mode: Mode, sim_flags: &[&str]) -> Self {
        let (sim, sim_url) = start_simulator(mode, sim_flags).await;
        let mut settings = test_settings(&sim_url);
        settings.upstream.api_key = Some(Secret::new(SIM_KEY));
        settings.watch.cadence = PollCadence::constant(Duration::from_millis(50));
        settings.watch.heartbeat = Duration::from_millis(300);
        settings.callbacks.to_self = true;
        settings.callbacks.hmac_key = Some(Secret::new(HMAC_KEY));
        let gateway = spawn_gateway(settings).await;
        Self {
            gateway,
            sim_url,
            http: http_client(),
            _sim: sim,
        }
    }

    async fn create(&mut self, prompt: &str) -> Result<String, tonic::Status> {
        let request = CreateTaskRequest {
            prompt: prompt.into(),
            ..valid_request()
        };
        Ok(self
            .gateway
            .client
            .create_task(request)
            .await?
            .into_inner()
            .task_id)
    }

    async fn watch(&mut self, task_id: &str) -> Streaming<WatchTaskResponse> {
        self.gateway
            .client
            .watch_task(WatchTaskRequest {
                task_id: task_id.into(),
            })
            .await
            .expect("watch")
            .into_inner()
    }

    async fn state(&mut self, task_id: &str) -> TaskState {
        let task = self
            .gateway
            .client
            .get_task(GetTaskRequest {
                task_id: task_id.into(),
            })
            .await
            .expect("get")
            .into_inner()
            .task;
        state_of(&task)
    }

    async fn sim_counts(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/sim/counts", self.sim_url))
            .send()
            .await
            .expect("counts")
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).expect("json"))
            .expect("body")
    }
}

/// Every non-heartbeat message until the stream ends, and how it ended.
async fn drain(
    stream: &mut Streaming<WatchTaskResponse>,
) -> (Vec<WatchTaskResponse>, Result<(), tonic::Status>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
            Ok(Ok(Some(m))) if m.heartbeat => {}
            Ok(Ok(Some(m))) => messages.push(m),
            Ok(Ok(None)) => return (messages, Ok(())),
            Ok(Err(status)) => return (messages, Err(status)),
            Err(_) => panic!("watch hung after {} messages", messages.len()),
        }
    }
}

fn states(messages: &[WatchTaskResponse]) -> Vec<TaskState> {
    messages.iter().map(|m| state_of(&m.task)).collect()
}

/// One test function per mode for each scenario.
macro_rules! in_both_modes {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test]
            async fn in_process() {
                super::$scenario(super::Mode::InProcess).await
            }
            #[tokio::test]
            async fn as_a_separate_process() {
                super::$scenario(super::Mode::Process).await
            }
        }
    };
}

in_both_modes!(
    a_task_is_watched_through_every_state_to_a_downloadable_mp4,
    happy_path
);
async fn happy_path(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let task_id = e2e
        .create("a cat surfing a wave at sunset")
        .await
        .expect("created");

    let mut stream = e2e.watch(&task_id).await;
    let (messages, end) = drain(&mut stream).await;

    end.expect("ends OK");
    assert_eq!(
        states(&messages),
        [
            TaskState::Waiting,
            TaskState::Queuing,
            TaskState::Generating,
            TaskState::Succeeded
        ]
    );
    let done = messages
        .last()
        .and_then(|m| m.task.clone())
        .expect("final task");
    assert_eq!(done.task_id, task_id);
    assert!(done.complete_time.is_some() && done.cost_time.is_some());
    let url = done.video_urls.first().expect("a video URL").clone();
    let video = e2e.http.get(&url).send().await.expect("download");
    assert_eq!(video.status(), 200);
    let bytes = video.bytes().await.expect("body");
    assert_eq!(&bytes[4..8], b"ftyp", "an MP4 file");
    // The simulator called the gateway back when the task ended.
    let counts = e2e.sim_counts().await;
    assert!(counts["callbacksDelivered"].as_u64() >= Some(1), "{counts}");
    // A finished task is answered from the cache, with no upstream read.
    let reads = e2e.sim_counts().await["recordInfo"].clone();
    assert_eq!(e2e.state(&task_id).await, TaskState::Succeeded);
    assert_eq!(e2e.sim_counts().await["recordInfo"], reads);
}

in_both_modes!(each_upstream_error_code_maps_to_its_status, error_codes);
async fn error_codes(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let table = [
        ("[sim:401]", Code::Internal, "UPSTREAM_UNAUTHENTICATED"),
        (
            "[sim:402]",
            Code::FailedPrecondition,
            "INSUFFICIENT_CREDITS",
        ),
        (
            "[sim:422]",
            Code::InvalidArgument,
            "UPSTREAM_VALIDATION_FAILED",
        ),
        (
            "[sim:429]",
            Code::ResourceExhausted,
            "UPSTREAM_RATE_LIMITED",
        ),
        ("[sim:455]", Code::Unavailable, "UPSTREAM_MAINTENANCE"),
        ("[sim:500]", Code::Internal, "UPSTREAM_INTERNAL_ERROR"),
        ("[sim:501]", Code::Internal, "GENERATION_FAILED"),
        ("[sim:505]", Code::Unimplemented, "FEATURE_DISABLED"),
    ];
    for (marker, code, reason) in table {
        let status = e2e
            .create(&format!("{marker} a cat"))
            .await
            .expect_err(marker);
        assert_eq!(status.code(), code, "{marker}: {status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, reason, "{marker}");
        assert_eq!(info.domain, "kie.ai");
        assert_eq!(
            info.metadata.get("kie_code").map(String::as_str),
            marker.get(5..8)
        );
    }
    let limited = e2e.create("[sim:429] a cat").await.expect_err("429");
    assert_eq!(
        retry_delay(&limited),
        Some(Duration::from_secs(3)),
        "Retry-After honoured"
    );
    let counts = e2e.sim_counts().await;
    assert_eq!(
        counts["createTask"], 9,
        "each call went upstream once: {counts}"
    );
}

in_both_modes!(
    a_failed_generation_ends_the_watch_with_a_failed_message,
    failed_task
);
async fn failed_task(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let task_id = e2e.create("[sim:fail] a cat").await.expect("created");

    let mut stream = e2e.watch(&task_id).await;
    let (messages, end) = drain(&mut stream).await;

    end.expect("a failed task is not an RPC error");
    let last = messages.last().and_then(|m| m.task.clone()).expect("final");
    assert_eq!(last.state(), TaskState::Failed);
    assert_eq!(last.fail_code, "500");
    assert!(
        last.fail_message.contains("content moderation"),
        "{}",
        last.fail_message
    );
    assert!(last.video_urls.is_empty());
}

in_both_modes!(
    a_slow_task_is_still_waiting_when_a_normal_one_would_be_done,
    slow_task
);
async fn slow_task(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let slow = e2e.create("[sim:slow] a cat").await.expect("created");

    tokio::time::sleep(Duration::from_millis(1300)).await; // a normal task's whole life

    assert_eq!(e2e.state(&slow).await, TaskState::Waiting);
}

in_both_modes!(
    a_task_that_never_finishes_keeps_the_watch_alive_with_heartbeats,
    never_task
);
async fn never_task(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let task_id = e2e.create("[sim:never] a cat").await.expect("created");

    let mut stream = e2e.watch(&task_id).await;
    let mut heartbeats_while_generating = 0;
    while heartbeats_while_generating < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message in time")
            .expect("ok")
            .expect("the stream stays open");
        if m.heartbeat && state_of(&m.task) == TaskState::Generating {
            heartbeats_while_generating += 1;
        }
    }

    assert_eq!(e2e.state(&task_id).await, TaskState::Generating);
}

in_both_modes!(
    a_manual_task_completes_when_the_control_endpoint_says_so,
    manual_task
);
async fn manual_task(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let task_id = e2e.create("[sim:manual] a cat").await.expect("created");
    let mut stream = e2e.watch(&task_id).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&TaskState::Generating) {
        let m = stream.message().await.expect("ok").expect("open");
        seen.push(state_of(&m.task));
    }

    let completed = e2e
        .http
        .post(format!("{}/sim/tasks/{task_id}/complete", e2e.sim_url))
        .send()
        .await
        .expect("complete");
    assert_eq!(completed.status(), 200);

    let (messages, end) = drain(&mut stream).await;
    end.expect("ok");
    assert_eq!(states(&messages), [TaskState::Succeeded]);
}

in_both_modes!(
    reads_that_fail_at_first_are_retried_until_the_watch_completes,
    poll_errors
);
async fn poll_errors(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    for marker in ["[sim:poll-500]", "[sim:poll-429]"] {
        let task_id = e2e
            .create(&format!("{marker} a cat"))
            .await
            .expect("created");
        let mut stream = e2e.watch(&task_id).await;
        let (messages, end) = drain(&mut stream).await;
        end.expect(marker);
        assert_eq!(
            states(&messages).last(),
            Some(&TaskState::Succeeded),
            "{marker}"
        );
    }
}

in_both_modes!(an_unknown_task_is_not_found, unknown_task);
async fn unknown_task(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let status = e2e
        .gateway
        .client
        .get_task(GetTaskRequest {
            task_id: "task_hailuo_404".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_info(&status).reason, "TASK_NOT_FOUND");
}

in_both_modes!(added_latency_slows_calls_but_they_succeed, latency_fault);
async fn latency_fault(mode: Mode) {
    let mut e2e = E2e::start(mode, &["--latency", "300ms"]).await;
    let started = std::time::Instant::now();
    e2e.create("a cat").await.expect("created");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

in_both_modes!(server_errors_are_internal, error_rate_fault);
async fn error_rate_fault(mode: Mode) {
    let mut e2e = E2e::start(mode, &["--error-rate", "1"]).await;
    let status = e2e.create("a cat").await.expect_err("500");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(error_info(&status).reason, "UPSTREAM_INTERNAL_ERROR");
}

in_both_modes!(a_dropped_connection_leaves_a_create_unknown, drop_fault);
async fn drop_fault(mode: Mode) {
    let mut e2e = E2e::start(mode, &["--drop-rate", "1"]).await;
    let status = e2e.create("a cat").await.expect_err("dropped");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
}

in_both_modes!(a_proxys_html_502_leaves_a_create_unknown, html_502_fault);
async fn html_502_fault(mode: Mode) {
    let mut e2e = E2e::start(mode, &["--html-502-rate", "1"]).await;
    let status = e2e.create("a cat").await.expect_err("502");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
}

impl E2e {
    /// CreateTask with a request_id, under a caller deadline.
    async fn create_once(
        &mut self,
        prompt: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<String, tonic::Status> {
        let mut request = tonic::Request::new(CreateTaskRequest {
            prompt: prompt.into(),
            request_id: request_id.into(),
            ..valid_request()
        });
        request.set_timeout(timeout);
        Ok(self
            .gateway
            .client
            .create_task(request)
            .await?
            .into_inner()
            .task_id)
    }

    async fn created_upstream(&self) -> u64 {
        self.sim_counts().await["createTask"]
            .as_u64()
            .expect("count")
    }
}

in_both_modes!(
    a_slow_create_answer_is_waited_for_and_the_retry_gets_the_same_task,
    slow_create
);
async fn slow_create(mode: Mode) {
    let mut e2e = E2e::start(mode, &["--slow-create", "1500ms"]).await;
    let prompt = "a cat [sim:slow-create]";
    let status = e2e
        .create_once(prompt, "r-slow", Duration::from_millis(400))
        .await
        .expect_err("the deadline ends before kie.ai answers");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");

    let task_id = e2e
        .create_once(prompt, "r-slow", Duration::from_secs(10))
        .await
        .expect("the retry waits for the same attempt");
    assert_eq!(e2e.created_upstream().await, 1, "one paid video");
    assert_eq!(e2e.state(&task_id).await, TaskState::Succeeded);
}

in_both_modes!(
    a_dropped_create_answer_is_never_repaid_and_the_callback_names_the_task,
    drop_create
);
async fn drop_create(mode: Mode) {
    let mut e2e = E2e::start(mode, &[]).await;
    let prompt = "a cat [sim:drop-create]";
    let first = e2e
        .create_once(prompt, "r-drop", Duration::from_secs(10))
        .await
        .expect_err("no answer");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert_eq!(error_info(&first).reason, "CREATE_OUTCOME_UNKNOWN");
    assert!(retry_delay(&first).is_some());

    // A client's ordinary retry loop: never a second create; the task id as
    // soon as kie.ai's callback (after ~1.1 s of task life) names it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let task_id = loop {
        match e2e
            .create_once(prompt, "r-drop", Duration::from_secs(10))
            .await
        {
            Ok(task_id) => break task_id,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "never learned");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(e2e.created_upstream().await, 1, "one paid video");
    assert_eq!(e2e.state(&task_id).await, TaskState::Succeeded);

    // Without a request_id the caller is told plainly, and nothing retries.
    let status = e2e.create(prompt).await.expect_err("no answer");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
    assert_eq!(e2e.created_upstream().await, 2);
}
