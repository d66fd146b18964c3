//! Caller tokens (GATEWAY_CALLERS_FILE): who may call, who they are in logs,
//! metrics and request_id scopes, and what a flood of wrong tokens costs.
//! The real gateway in front of the in-process kie.ai simulator.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hailuo_gateway::callers::token_sha256_hex;
use hailuo_gateway::config::{Secret, Settings};
use hailuo_gateway::pb::{CreateTaskRequest, GetQuotaRequest};
use hailuo_gateway::simulator::{Endpoint, SimHandle, Simulator, SimulatorConfig};
use hailuo_gateway::startup::Application;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

pub const SIM_KEY: &str = "sim-key-callers";
pub const RENDER_TOKEN: &str = "tok-render-farm-8c1d0e8a5b2f4e7d9a61";
pub const EDIT_TOKEN: &str = "tok-editorial-3f9b77c2a1d04e58b6c0";

/// A kie.ai simulator for one test; stopped when dropped.
pub struct Sim {
    pub sim: Simulator,
    stop: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sim {
    pub async fn start() -> Self {
        let config = SimulatorConfig {
            api_key: Some(SIM_KEY.into()),
            ..SimulatorConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stop = CancellationToken::new();
        let sim = Simulator::start(config, listener, stop.clone())
            .await
            .expect("simulator");
        Self { sim, stop }
    }

    pub fn state(&self) -> SimHandle {
        self.sim.state()
    }

    pub fn creates(&self) -> u64 {
        self.state().count(Endpoint::CreateTask)
    }

    pub fn settings(&self, callers_file: Option<PathBuf>) -> Settings {
        let base = self.sim.base_url().parse().expect("url");
        let mut settings = Settings::local(base, Some(Secret::new(SIM_KEY)));
        settings.upstream.upload_base_url = self.sim.upload_base_url().parse().expect("url");
        settings.callers_file = callers_file;
        settings
    }
}

/// A callers file in a temporary directory of its own.
pub struct CallersFile {
    pub path: PathBuf,
}

impl CallersFile {
    pub fn new(text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("callers-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("callers.toml");
        std::fs::write(&path, text).expect("write");
        Self { path }
    }

    pub fn write(&self, text: &str) {
        // Written beside and renamed, as config management does: the
        // gateway never reads half a file.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.path).expect("rename");
    }
}

impl Drop for CallersFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    now_secs() * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

pub fn caller_entry(name: &str, token: &str, extra: &str) -> String {
    format!(
        "[[caller]]\nname = {name:?}\ntoken_sha256 = {:?}\n{extra}\n",
        token_sha256_hex(token)
    )
}

pub fn two_callers() -> String {
    format!(
        "{}{}",
        caller_entry("render-farm", RENDER_TOKEN, ""),
        caller_entry("editorial", EDIT_TOKEN, "")
    )
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    request
}

pub fn sim_request(prompt: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.into(),
        ..valid_request()
    }
}

fn assert_unauthenticated(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, "CALLER_UNAUTHENTICATED");
    assert_eq!(info.domain, "hailuo-gateway");
    assert!(info.metadata.is_empty(), "{info:?}");
    for name in ["render-farm", "editorial"] {
        assert!(!status.message().contains(name), "{status:?}");
    }
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthenticated_and_health_needs_none() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&two_callers());
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;

    let missing = gateway
        .create(sim_request("a cat"))
        .await
        .expect_err("no token");
    assert_unauthenticated(&missing);
    let wrong = gateway
        .create(with_token(sim_request("a cat"), "tok-guess"))
        .await
        .expect_err("wrong token");
    assert_unauthenticated(&wrong);
    // A caller's token in another scheme is no token.
    let mut basic = tonic::Request::new(sim_request("a cat"));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {RENDER_TOKEN}").parse().expect("ascii"),
    );
    assert_unauthenticated(&gateway.create(basic).await.expect_err("basic"));
    // Same answer, whichever the call.
    let get = gateway
        .client
        .clone()
        .get_quota(GetQuotaRequest {})
        .await
        .expect_err("no token");
    assert_unauthenticated(&get);
    assert_eq!(sim.creates(), 0, "nothing reached kie.ai");

    // Probes need no token.
    let channel = tonic::transport::Channel::from_shared(gateway.grpc_url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // The right token: the call goes through, as its caller.
    let task = gateway
        .create(with_token(sim_request("a cat"), RENDER_TOKEN))
        .await
        .expect("created");
    assert!(!task.is_empty());
    let quota = gateway
        .client
        .clone()
        .get_quota(with_token(GetQuotaRequest {}, EDIT_TOKEN))
        .await
        .expect("quota")
        .into_inner();
    assert_eq!(quota.caller, "editorial");
    assert!(quota.quotas.is_empty(), "no quotas in the file");
}

#[tokio::test]
async fn the_callers_name_is_a_metric_label_and_request_ids_are_scoped_by_caller() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&two_callers());
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;

    // One gateway key, two callers, the same request_id: two tasks.
    let request = || with_request_id("shared-id");
    let a = gateway
        .create(with_token(request(), RENDER_TOKEN))
        .await
        .expect("render-farm");
    let b = gateway
        .create(with_token(request(), EDIT_TOKEN))
        .await
        .expect("editorial");
    assert_ne!(a, b, "request_ids of different callers never meet");
    // The same caller again: its first task, no second create.
    let again = gateway
        .create(with_token(request(), RENDER_TOKEN))
        .await
        .expect("repeat");
    assert_eq!(again, a);
    assert_eq!(sim.creates(), 2);

    let _ = gateway.create(sim_request("x")).await;
    let metrics = gateway.metrics().await;
    for series in [
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="render-farm",code="OK"} 2"#,
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="editorial",code="OK"} 1"#,
        r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="anonymous",code="UNAUTHENTICATED"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }
    for token in [RENDER_TOKEN, EDIT_TOKEN] {
        assert!(!metrics.contains(token));
    }
}

#[tokio::test]
async fn with_caller_tokens_a_pass_through_key_comes_in_x_kie_api_key() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&two_callers());
    let mut settings = sim.settings(Some(file.path.clone()));
    settings.upstream.api_key = None;
    settings.upstream.key_passthrough = true;
    let gateway = spawn_gateway(settings).await;

    let mut request = with_token(sim_request("a cat"), RENDER_TOKEN);
    request
        .metadata_mut()
        .insert("x-kie-api-key", SIM_KEY.parse().expect("ascii"));
    gateway
        .create(request)
        .await
        .expect("created with the caller's key");
    // The token is not taken for a kie.ai key.
    let no_key = gateway
        .create(with_token(sim_request("a cat"), RENDER_TOKEN))
        .await
        .expect_err("no kie.ai key");
    assert_eq!(no_key.code(), Code::Unauthenticated);
    assert_eq!(error_info(&no_key).reason, "MISSING_API_KEY");
    assert_eq!(sim.creates(), 1);
    let sent = sim.state().requests();
    assert!(
        sent.iter()
            .all(|r| !format!("{r:?}").contains(RENDER_TOKEN)),
        "the caller token never goes to kie.ai"
    );
}

#[tokio::test]
async fn a_bad_callers_file_stops_the_start_in_one_line() {
    let sim = Sim::start().await;
    for (text, expected) in [
        ("[[caller]\nname = 'x'", "line 1"),
        (
            &format!(
                "{}{}",
                caller_entry("a", RENDER_TOKEN, ""),
                caller_entry("a", EDIT_TOKEN, "")
            ),
            "used twice",
        ),
        (
            &format!(
                "{}{}",
                caller_entry("a", RENDER_TOKEN, ""),
                caller_entry("b", RENDER_TOKEN, "")
            ),
            "share a token",
        ),
    ] {
        let file = CallersFile::new(text);
        let Err(e) = Application::build(sim.settings(Some(file.path.clone()))).await else {
            panic!("{text:?} started");
        };
        let shown = format!("{e:#}");
        assert!(shown.contains(expected), "{shown}");
        assert!(shown.contains("callers file"), "{shown}");
        assert!(!shown.contains('\n'), "one line: {shown}");
    }
}

#[tokio::test]
async fn a_bad_reload_keeps_the_last_good_callers_and_a_good_one_applies() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&caller_entry("render-farm", RENDER_TOKEN, ""));
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;
    let quota = |token: &'static str| {
        let mut client = gateway.client.clone();
        async move {
            client
                .get_quota(with_token(GetQuotaRequest {}, token))
                .await
        }
    };
    quota(RENDER_TOKEN).await.expect("render-farm");
    quota(EDIT_TOKEN).await.expect_err("not yet a caller");

    // A broken version: the last good one stays.
    file.write("[[caller]]\nname = \"editorial\"\ntoken_sha256 = \"nothex\"\n");
    tokio::time::sleep(Duration::from_secs(5)).await;
    quota(RENDER_TOKEN).await.expect("still render-farm");
    quota(EDIT_TOKEN)
        .await
        .expect_err("the bad version did not apply");

    // A good version replaces it: render-farm out, editorial in.
    file.write(&caller_entry("editorial", EDIT_TOKEN, ""));
    let applied = wait_for(Duration::from_secs(10), || async {
        quota(EDIT_TOKEN).await.is_ok()
    })
    .await;
    assert!(applied, "the new callers file applies");
    let revoked = quota(RENDER_TOKEN).await.expect_err("revoked");
    assert_unauthenticated(&revoked);
}

/// 10,000 calls with wrong tokens: no upstream call, no state, each answer
/// held back by the refusal delay, while a good caller's calls on their
/// own connection keep their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_wrong_tokens_cost_nothing_and_do_not_slow_a_good_caller() {
    const FLOOD: usize = 10_000;
    const CONNECTIONS: usize = 8;
    const IN_FLIGHT_PER_CONNECTION: usize = 50;
    let sim = Sim::start().await;
    let file = CallersFile::new(&two_callers());
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;
    let good = gateway.new_client().await;
    let good_call = || {
        let mut client = good.clone();
        async move {
            let started = Instant::now();
            client
                .get_quota(with_token(GetQuotaRequest {}, RENDER_TOKEN))
                .await
                .expect("good caller");
            started.elapsed()
        }
    };
    // The good caller alone first.
    let mut quiet = Vec::new();
    for _ in 0..200 {
        quiet.push(good_call().await);
    }

    // The flood runs on a runtime (a thread) of its own, as a peer on
    // another machine would: the test's runtime serves the gateway and the
    // good caller only.
    let flood_started = Instant::now();
    let grpc_url = gateway.grpc_url();
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            use futures_util::StreamExt;
            let mut clients = Vec::new();
            for _ in 0..CONNECTIONS {
                clients.push(
                    hailuo_gateway::pb::video_generation_client::VideoGenerationClient::connect(
                        grpc_url.clone(),
                    )
                    .await
                    .expect("connect"),
                );
            }
            futures_util::stream::iter(0..FLOOD)
                .map(|i| {
                    let mut client = clients[i % CONNECTIONS].clone();
                    async move {
                        let started = Instant::now();
                        let token = format!("guess-{i}");
                        let refused = client
                            .create_task(with_token(sim_request("a cat"), &token))
                            .await
                            .expect_err("refused");
                        (refused.code(), started.elapsed())
                    }
                })
                .buffer_unordered(CONNECTIONS * IN_FLIGHT_PER_CONNECTION)
                .collect::<Vec<_>>()
                .await
        })
    });
    let mut during = Vec::new();
    while !flood.is_finished() {
        during.push(good_call().await);
    }
    let refusals = flood.join().expect("flood");
    let flood_time = flood_started.elapsed();

    assert_eq!(refusals.len(), FLOOD);
    assert!(
        refusals
            .iter()
            .all(|(code, _)| *code == Code::Unauthenticated)
    );
    let fastest_refusal = refusals.iter().map(|(_, d)| *d).min().expect("some");
    assert!(
        fastest_refusal >= Duration::from_millis(190),
        "every refusal waits out the delay: {fastest_refusal:?}"
    );
    // 500 refusals a second per peer after a 1 s burst: the flood is held
    // to that pace.
    assert!(
        flood_time >= Duration::from_secs(17),
        "the guessing peer is slowed: {flood_time:?}"
    );
    assert_eq!(sim.creates(), 0, "no upstream call");
    assert_eq!(sim.state().counts().record_info, 0);
    let quota = good
        .clone()
        .get_quota(with_token(GetQuotaRequest {}, RENDER_TOKEN))
        .await
        .expect("quota")
        .into_inner();
    assert_eq!(quota.caller, "render-farm");

    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * q) as usize]
    };
    let (q50, q99) = (p(&mut quiet, 0.5), p(&mut quiet, 0.99));
    let (d50, d99) = (p(&mut during, 0.5), p(&mut during, 0.99));
    eprintln!(
        "flood of {FLOOD} wrong tokens ({CONNECTIONS} connections x {IN_FLIGHT_PER_CONNECTION} in flight) took {flood_time:?}; \
         good caller GetQuota: quiet p50 {q50:?} p99 {q99:?} ({} calls), during p50 {d50:?} p99 {d99:?} ({} calls)",
        quiet.len(),
        during.len()
    );
    assert!(during.len() >= 10, "the good caller got calls through");
    assert!(
        d50 < Duration::from_millis(100),
        "the good caller is not held up by the flood: p50 {d50:?}"
    );
}

/// Every service reflection lists, through one reflection version's client.
macro_rules! listed_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection without a token")
            .into_inner();
        let answer = answers.message().await.expect("ok").expect("an answer");
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("not a list: {other:?}"),
        }
    }};
}

#[tokio::test]
async fn health_and_reflection_stay_open_without_a_token_when_caller_tokens_are_on() {
    let sim = Sim::start().await;
    let file = CallersFile::new(&two_callers());
    let gateway = spawn_gateway(sim.settings(Some(file.path.clone()))).await;
    let channel = tonic::transport::Channel::from_shared(gateway.grpc_url())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "hailuo.v1.VideoGeneration".into(),
        })
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, 1, "SERVING");
    for services in [
        listed_services!(v1alpha, channel.clone()),
        listed_services!(v1, channel.clone()),
    ] {
        for wanted in ["hailuo.v1.VideoGeneration", "grpc.health.v1.Health"] {
            assert!(
                services.iter().any(|s| s == wanted),
                "{wanted} in {services:?}"
            );
        }
    }
    // While the service itself still wants a token.
    let refused = gateway
        .create(sim_request("a cat"))
        .await
        .expect_err("no token");
    assert_unauthenticated(&refused);
}
