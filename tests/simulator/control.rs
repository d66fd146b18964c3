//! Inspection, reset, isolation between instances, and the CLI arguments.

use std::time::Duration;

use clap::Parser;
use hailuo_gateway::simulator::{Endpoint, SimulateArgs, SimulatorConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{KEY, Receiver, body, config, spawn_sim};

#[tokio::test]
async fn requests_are_recorded_without_the_key() {
    let sim = spawn_sim(config()).await;
    let request = body("a cat");
    let task_id = sim.create_body_ok(&request).await;
    sim.record_info(&task_id).await;
    sim.get("/api/v1/chat/credit", None).await;

    let answer = sim.get("/sim/requests", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let log = answer.json.as_array().expect("a list").clone();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["method"], "POST");
    assert_eq!(log[0]["path"], "/api/v1/jobs/createTask");
    assert_eq!(log[0]["body"], request);
    assert_eq!(log[0]["bearer"], true);
    assert_eq!(log[0]["fault"], Value::Null);
    assert_eq!(log[1]["method"], "GET");
    assert_eq!(log[1]["query"], json!({"taskId": task_id}));
    assert_eq!(log[1]["body"], Value::Null);
    assert_eq!(log[2]["bearer"], false);
    assert!(
        !answer.json.to_string().contains(KEY),
        "the key is never echoed"
    );
    assert_eq!(sim.handle.requests().len(), 3, "same log in process");
}

#[tokio::test]
async fn counts_are_kept_per_endpoint() {
    let sim = spawn_sim(config()).await;
    let task_id = sim.create_ok("a").await;
    sim.create(&body("[sim:500]")).await;
    for _ in 0..3 {
        sim.record_info(&task_id).await;
    }
    sim.get("/api/v1/chat/credit", Some(KEY)).await;
    let counts = sim.get("/sim/counts", None).await.json;
    assert_eq!(
        counts,
        json!({
            "createTask": 2, "recordInfo": 3, "credit": 1, "downloadUrl": 0,
            "video": 0, "fileStreamUpload": 0, "fileBase64Upload": 0, "fileUrlUpload": 0,
            "file": 0, "callbackAttempts": 0, "callbacksDelivered": 0
        })
    );
    assert_eq!(sim.handle.count(Endpoint::RecordInfo), 3);
}

#[tokio::test]
async fn reset_forgets_everything_and_restores_credits() {
    let sim = spawn_sim(SimulatorConfig {
        timings: crate::helpers::fast(200),
        ..config()
    })
    .await;
    let receiver = Receiver::spawn(0).await;
    let mut request = body("a cat");
    request["callBackUrl"] = json!(receiver.url);
    let task_id = sim.create_body_ok(&request).await;
    assert!(sim.handle.credits() < 1000.0);

    let reset = sim
        .client
        .post(sim.url("/sim/reset"))
        .send()
        .await
        .expect("answered");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sim.record_info(&task_id).await.json,
        json!({"code": 422, "msg": "recordInfo is null", "data": null})
    );
    assert_eq!(
        sim.get("/api/v1/chat/credit", Some(KEY)).await.json["data"],
        1000
    );
    // Only the two requests made after the reset remain.
    assert_eq!(sim.handle.requests().len(), 2);
    assert_eq!(sim.handle.count(Endpoint::CreateTask), 0);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        receiver.received().is_empty(),
        "a forgotten task is not called back"
    );

    sim.handle.reset();
    assert!(sim.handle.requests().is_empty());
    assert_eq!(sim.handle.counts(), Default::default());
}

#[tokio::test]
async fn two_simulators_share_nothing() {
    let a = spawn_sim(config()).await;
    let b = spawn_sim(SimulatorConfig {
        starting_credits: 500.0,
        ..config()
    })
    .await;
    let task_id = a.create_ok("a cat").await;
    assert_eq!(a.record_info(&task_id).await.json["code"], 200);
    assert_eq!(
        b.record_info(&task_id).await.json,
        json!({"code": 422, "msg": "recordInfo is null", "data": null})
    );
    assert_eq!(a.handle.credits(), 970.0);
    assert_eq!(b.handle.credits(), 500.0);
    assert_eq!(a.handle.count(Endpoint::CreateTask), 1);
    assert_eq!(b.handle.count(Endpoint::CreateTask), 0);
    b.handle.reset();
    assert_eq!(a.handle.requests().len(), 2, "b's reset leaves a alone");
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let sim = spawn_sim(config()).await;
    let answer = sim.get("/api/v1/jobs/nothing", Some(KEY)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json["code"], 404);
}

#[tokio::test]
async fn shutdown_stops_the_simulator() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sim = hailuo_gateway::simulator::Simulator::start(config(), listener, shutdown.clone())
        .await
        .expect("starts");
    let addr = sim.local_addr();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), sim.stopped())
        .await
        .expect("stops promptly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[test]
fn simulate_args_build_the_config() {
    let cli = Cli::try_parse_from([
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        "k",
        "--credits",
        "5",
        "--waiting",
        "250ms",
        "--generating",
        "2s",
        "--latency",
        "10ms",
        "--error-rate",
        "0.5",
        "--html-502-rate",
        "0.25",
        "--callback-backoff",
        "1s",
    ])
    .expect("parses");
    let config = cli.args.config();
    assert_eq!(cli.args.listen.port(), 0);
    assert_eq!(config.api_key.as_deref(), Some("k"));
    assert_eq!(config.starting_credits, 5.0);
    assert_eq!(config.timings.waiting, Duration::from_millis(250));
    assert_eq!(config.timings.queuing, Duration::from_secs(1), "default");
    assert_eq!(config.timings.generating, Duration::from_secs(2));
    assert_eq!(config.faults.latency, Duration::from_millis(10));
    assert_eq!(config.faults.error_rate, 0.5);
    assert_eq!(config.faults.html_502_rate, 0.25);
    assert_eq!(config.faults.drop_rate, 0.0);
    assert_eq!(config.callback_retries, 3);
    assert_eq!(config.callback_backoff, Duration::from_secs(1));
    assert!(!format!("{:?}", cli.args).contains("\"k\""), "key redacted");
    assert!(Cli::try_parse_from(["simulate", "--error-rate", "2"]).is_err());
    assert!(Cli::try_parse_from(["simulate", "--waiting", "soon"]).is_err());
}

#[test]
fn simulate_args_defaults() {
    let cli = Cli::try_parse_from(["simulate"]).expect("parses");
    assert_eq!(cli.args.listen.to_string(), "127.0.0.1:8090");
    let config = cli.args.config();
    let default = SimulatorConfig::default();
    assert_eq!(config.timings, default.timings);
    assert_eq!(config.faults, default.faults);
    assert_eq!(config.starting_credits, default.starting_credits);
    assert_eq!(config.api_key, None);
}

#[test]
fn simulate_args_set_the_upload_host_and_its_limits() {
    let cli = Cli::try_parse_from([
        "simulate",
        "--upload-listen",
        "127.0.0.1:0",
        "--credits",
        "100.5",
        "--upload-max-bytes",
        "2048",
        "--file-retention",
        "3d",
        "--file-storage-bytes",
        "4096",
        "--result-url-ttl",
        "1h",
        "--download-link-ttl",
        "5m",
    ])
    .expect("parses");
    let config = cli.args.config();
    assert_eq!(cli.args.upload_addr().port(), 0);
    assert_eq!(config.starting_credits, 100.5);
    assert_eq!(config.files.max_bytes, 2048);
    assert_eq!(config.files.retention, Duration::from_secs(3 * 86_400));
    assert_eq!(config.files.storage_bytes, 4096);
    assert_eq!(
        config.files.url_timeout,
        Duration::from_secs(30),
        "kie.ai's"
    );
    assert_eq!(config.result_url_ttl, Duration::from_secs(3600));
    assert_eq!(config.download_link_ttl, Duration::from_secs(300));
    let defaults = Cli::try_parse_from(["simulate"]).expect("parses");
    assert_eq!(defaults.args.upload_addr().to_string(), "127.0.0.1:8091");
    let beside = |listen: &str| {
        Cli::try_parse_from(["simulate", "--listen", listen])
            .expect("parses")
            .args
            .upload_addr()
            .to_string()
    };
    assert_eq!(beside("0.0.0.0:9000"), "0.0.0.0:9001");
    assert_eq!(beside("127.0.0.1:0"), "127.0.0.1:0", "a free port");
    let config = defaults.args.config();
    let default = SimulatorConfig::default();
    assert_eq!(config.files, default.files);
    assert_eq!(config.files.max_bytes, 100 * 1024 * 1024);
    assert_eq!(config.files.retention, Duration::from_secs(86_400));
    assert_eq!(config.result_url_ttl, default.result_url_ttl);
    assert_eq!(config.download_link_ttl, Duration::from_secs(20 * 60));
    assert!(Cli::try_parse_from(["simulate", "--credits", "-5"]).is_err());
}

/// The standalone simulator names both hosts, in one write, and the upload
/// host works; with `--listen`'s port 0 the upload host's is free too, so
/// simulators side by side never collide.
#[tokio::test]
async fn the_standalone_simulator_prints_both_hosts() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hailuo-gateway"))
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn simulate");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("in time")
            .expect("readable")
            .expect("a line")
    };
    let api = next().await;
    let upload = next().await;
    let api = api
        .strip_prefix("kie.ai simulator listening on ")
        .expect("the API host first");
    let upload = upload
        .strip_prefix("kie.ai upload API listening on http://127.0.0.1:")
        .expect("then the upload host");
    assert_ne!(api, format!("http://127.0.0.1:{upload}"));
    let form = crate::helpers::Form::new()
        .text("uploadPath", "images")
        .file("file", Some("a.png"), None, &crate::helpers::png(100));
    let client = crate::helpers::client();
    let answer = client
        .post(format!("http://127.0.0.1:{upload}/api/file-stream-upload"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", form.content_type())
        .body(form.body())
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), StatusCode::OK);
    let data = crate::helpers::json_of(answer).await["data"].clone();
    let file = client
        .get(data["downloadUrl"].as_str().expect("url"))
        .send()
        .await
        .expect("answered");
    assert_eq!(file.status(), StatusCode::OK);
    child.kill().await.expect("stopped");
}
