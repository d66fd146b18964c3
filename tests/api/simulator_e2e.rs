//! End to end through the gRPC API against the kie.ai simulator, both
//! in-process and as a separate `hailuo-gateway simulate` process: every
//! scenario and fault the simulator offers.

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use hailuo_gateway::config::{PollCadence, Secret};
use hailuo_gateway::pb::{CreateTaskRequest, TaskState};
use hailuo_gateway::simulator::{SimulateArgs, Simulator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::Code;

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

/// A gateway in front of a simulator, calling back to itself.
struct E2e {
    gateway: Gateway,
    sim_url: String,
    _sim: Sim,
}

impl std::ops::Deref for E2e {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gateway
    }
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
            _sim: sim,
        }
    }

    async fn state(&self, task_id: &str) -> TaskState {
        self.get(task_id).await.expect("get").state()
    }

    async fn sim_counts(&self) -> serde_json::Value {
        sim_counts(self, &self.sim_url).await
    }

    async fn created_upstream(&self) -> u64 {
        created_upstream(self, &self.sim_url).await
    }
}

/// The simulator's count of createTask calls, asked over `caller`'s HTTP
/// client.
async fn created_upstream(caller: &Caller, sim_url: &str) -> u64 {
    sim_counts(caller, sim_url).await["createTask"]
        .as_u64()
        .expect("count")
}

/// The simulator's counts of the calls it answered.
async fn sim_counts(caller: &Caller, sim_url: &str) -> serde_json::Value {
    let body = caller
        .http()
        .get(format!("{sim_url}/sim/counts"))
        .send()
        .await
        .expect("counts")
        .bytes()
        .await
        .expect("body");
    serde_json::from_slice(&body).expect("json")
}

/// A valid request with this prompt, whose markers the simulator reads.
fn with_prompt(prompt: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.into(),
        ..valid_request()
    }
}

/// A client's ordinary retry loop: `request_id` retried, each answer
/// UNAVAILABLE, until kie.ai's callback has named the task.
async fn retried_until_learned(caller: &Caller, prompt: &str, request_id: &str) -> String {
    wait_for_some(Duration::from_secs(15), || async {
        let retried = caller
            .create(attempt(prompt, request_id, Duration::from_secs(10)))
            .await;
        if let Err(status) = &retried {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        retried.ok()
    })
    .await
    .expect("never learned")
}

/// A CreateTask with a request_id, under a caller deadline.
fn attempt(prompt: &str, request_id: &str, timeout: Duration) -> tonic::Request<CreateTaskRequest> {
    let request = CreateTaskRequest {
        request_id: request_id.into(),
        ..with_prompt(prompt)
    };
    with_timeout(request, timeout)
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
    let e2e = E2e::start(mode, &[]).await;
    let task_id = e2e.create(valid_request()).await.expect("created");

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
    let done = last_task(&messages);
    assert_eq!(done.task_id, task_id);
    assert!(done.complete_time.is_some() && done.cost_time.is_some());
    let url = done.video_urls.first().expect("a video URL").clone();
    let video = e2e.http().get(&url).send().await.expect("download");
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
    let e2e = E2e::start(mode, &[]).await;
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
            .create(with_prompt(&format!("{marker} a cat")))
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
    let limited = e2e
        .create(with_prompt("[sim:429] a cat"))
        .await
        .expect_err("429");
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
    let e2e = E2e::start(mode, &[]).await;
    let task_id = e2e
        .create(with_prompt("[sim:fail] a cat"))
        .await
        .expect("created");

    let mut stream = e2e.watch(&task_id).await;
    let (messages, end) = drain(&mut stream).await;

    end.expect("a failed task is not an RPC error");
    let last = last_task(&messages);
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
    let e2e = E2e::start(mode, &[]).await;
    let slow = e2e
        .create(with_prompt("[sim:slow] a cat"))
        .await
        .expect("created");

    tokio::time::sleep(Duration::from_millis(1300)).await; // a normal task's whole life

    assert_eq!(e2e.state(&slow).await, TaskState::Waiting);
}

in_both_modes!(
    a_task_that_never_finishes_keeps_the_watch_alive_with_heartbeats,
    never_task
);
async fn never_task(mode: Mode) {
    let e2e = E2e::start(mode, &[]).await;
    let task_id = e2e
        .create(with_prompt("[sim:never] a cat"))
        .await
        .expect("created");

    let mut stream = e2e.watch(&task_id).await;
    let mut heartbeats_while_generating = 0;
    while heartbeats_while_generating < 2 {
        // Heartbeats come every 300 ms: 5 s without a message is a failure.
        let m = tokio::time::timeout(Duration::from_secs(5), next_message(&mut stream))
            .await
            .expect("a message in time");
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
    let e2e = E2e::start(mode, &[]).await;
    let task_id = e2e
        .create(with_prompt("[sim:manual] a cat"))
        .await
        .expect("created");
    let mut stream = e2e.watch(&task_id).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&TaskState::Generating) {
        let m = next_message(&mut stream).await;
        seen.push(state_of(&m.task));
    }

    let completed = e2e
        .http()
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
    let e2e = E2e::start(mode, &[]).await;
    for marker in ["[sim:poll-500]", "[sim:poll-429]"] {
        let task_id = e2e
            .create(with_prompt(&format!("{marker} a cat")))
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
    let e2e = E2e::start(mode, &[]).await;
    let status = e2e.get("task_hailuo_404").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(error_info(&status).reason, "TASK_NOT_FOUND");
}

in_both_modes!(added_latency_slows_calls_but_they_succeed, latency_fault);
async fn latency_fault(mode: Mode) {
    let e2e = E2e::start(mode, &["--latency", "300ms"]).await;
    let started = std::time::Instant::now();
    e2e.create(with_prompt("a cat")).await.expect("created");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

in_both_modes!(server_errors_are_internal, error_rate_fault);
async fn error_rate_fault(mode: Mode) {
    let e2e = E2e::start(mode, &["--error-rate", "1"]).await;
    let status = e2e.create(with_prompt("a cat")).await.expect_err("500");
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(error_info(&status).reason, "UPSTREAM_INTERNAL_ERROR");
}

in_both_modes!(a_dropped_connection_leaves_a_create_unknown, drop_fault);
async fn drop_fault(mode: Mode) {
    let e2e = E2e::start(mode, &["--drop-rate", "1"]).await;
    let status = e2e.create(with_prompt("a cat")).await.expect_err("dropped");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
}

in_both_modes!(a_proxys_html_502_leaves_a_create_unknown, html_502_fault);
async fn html_502_fault(mode: Mode) {
    let e2e = E2e::start(mode, &["--html-502-rate", "1"]).await;
    let status = e2e.create(with_prompt("a cat")).await.expect_err("502");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
}

in_both_modes!(
    a_slow_create_answer_is_waited_for_and_the_retry_gets_the_same_task,
    slow_create
);
async fn slow_create(mode: Mode) {
    let e2e = E2e::start(mode, &["--slow-create", "1500ms"]).await;
    let prompt = "a cat [sim:slow-create]";
    let status = e2e
        .create(attempt(prompt, "r-slow", Duration::from_millis(400)))
        .await
        .expect_err("the deadline ends before kie.ai answers");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");

    let task_id = e2e
        .create(attempt(prompt, "r-slow", Duration::from_secs(10)))
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
    let e2e = E2e::start(mode, &[]).await;
    let prompt = "a cat [sim:drop-create]";
    let first = e2e
        .create(attempt(prompt, "r-drop", Duration::from_secs(10)))
        .await
        .expect_err("no answer");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert_eq!(error_info(&first).reason, "CREATE_OUTCOME_UNKNOWN");
    assert!(retry_delay(&first).is_some());

    // A client's ordinary retry loop: never a second create; the task id as
    // soon as kie.ai's callback (after ~1.1 s of task life) names it.
    let task_id = retried_until_learned(&e2e, prompt, "r-drop").await;
    assert_eq!(e2e.created_upstream().await, 1, "one paid video");
    assert_eq!(e2e.state(&task_id).await, TaskState::Succeeded);

    // Without a request_id the caller is told plainly, and nothing retries.
    let status = e2e
        .create(with_prompt(prompt))
        .await
        .expect_err("no answer");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
    assert_eq!(e2e.created_upstream().await, 2);
}

/// The real gateway binary against a `simulate` process, its own callback
/// URL public: every "never pay twice" case, counted at the simulator.
#[tokio::test]
async fn the_real_binary_never_pays_twice_against_simulate() {
    let (_sim, sim_url) = start_simulator(Mode::Process, &["--slow-create", "1500ms"]).await;
    let http_port = free_port();
    let http_addr = format!("127.0.0.1:{http_port}");
    let callback_url = format!("http://{http_addr}/callbacks/kie");
    let mut gateway = crate::binary::start_gateway_at(
        &sim_url,
        &[
            ("KIE_API_KEY", SIM_KEY),
            ("KIE_WEBHOOK_HMAC_KEY", HMAC_KEY),
            ("GATEWAY_HTTP_ADDR", &http_addr),
            ("GATEWAY_PUBLIC_CALLBACK_URL", &callback_url),
            ("GATEWAY_LOG_FORMAT", "json"),
        ],
    )
    .await;
    let caller = gateway.caller().await;
    let creates = || created_upstream(&caller, &sim_url);

    // A deadline shorter than kie.ai's answer: the retry gets that task.
    let status = caller
        .create(attempt(
            "[sim:slow-create] a",
            "r-slow",
            Duration::from_millis(400),
        ))
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    caller
        .create(attempt(
            "[sim:slow-create] a",
            "r-slow",
            Duration::from_secs(10),
        ))
        .await
        .expect("the same task");
    assert_eq!(creates().await, 1);

    // A dropped answer: retries never create again; the callback names it.
    let status = caller
        .create(attempt(
            "[sim:drop-create] b",
            "r-drop",
            Duration::from_secs(10),
        ))
        .await
        .expect_err("dropped");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert!(retry_delay(&status).is_some());
    let task_id = retried_until_learned(&caller, "[sim:drop-create] b", "r-drop").await;
    assert!(task_id.starts_with("task_hailuo_"), "{task_id}");
    assert_eq!(creates().await, 2, "one create per request_id");

    // Without request_id: UNKNOWN, no RetryInfo.
    let status = caller
        .create(attempt("[sim:drop-create] c", "", Duration::from_secs(10)))
        .await
        .expect_err("dropped");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "CREATE_OUTCOME_UNKNOWN");
    assert_eq!(retry_delay(&status), None);
    assert_eq!(creates().await, 3);

    // One warning per maybe-created attempt, and one when its task is known.
    let mut unknown = 0;
    let mut resolved = Vec::new();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_millis(500), gateway.logs.recv()).await
    {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let message = entry["message"].as_str().unwrap_or_default();
        if message.starts_with("createTask outcome unknown") {
            assert_eq!(entry["level"], "WARN", "{line}");
            unknown += 1;
        }
        if message.starts_with("createTask outcome resolved") {
            resolved.push(entry["task_id"].clone());
        }
    }
    assert_eq!(
        unknown, 2,
        "the dropped answers, with and without request_id"
    );
    assert!(
        resolved.contains(&serde_json::json!(task_id)),
        "{resolved:?}"
    );

    let metrics = caller.metrics().await;
    assert!(metrics.contains("hailuo_gateway_creates_total{outcome=\"maybe_created\"} 2"));
}
