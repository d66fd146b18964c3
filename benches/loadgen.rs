//! loadgen: what the gateway costs, how far it scales and what it saves
//! upstream, measured side by side with the bare paths in the same run.
//!
//! `cargo bench --bench loadgen -- full` runs everything against the
//! standalone simulator (`hailuo-gateway simulate`, zero latency) on
//! loopback and writes BENCHMARKS.md; `cargo bench --bench loadgen -- smoke`
//! runs the same scenarios with tiny numbers in seconds, asserts that they
//! work, and exits non-zero when they do not.
//!
//! The machine is shared and noisy, so every figure is taken over several
//! repetitions, interleaved (gateway c1, direct c1, gateway c16, ...), and
//! reported as min / median / max; the 1-minute load average at the start of
//! each repetition is recorded beside it.
//!
//! The tool spawns the release binaries itself (cargo builds
//! `hailuo-gateway` for this target and names it in `CARGO_BIN_EXE_*`),
//! reads CPU time from `/proc/<pid>/stat` (utime + stime) before and after
//! each measured phase and RSS from `/proc/<pid>/status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use hailuo_gateway::kie::wire::CreateTaskBody;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::video_generation_server::{VideoGeneration, VideoGenerationServer};
use hailuo_gateway::pb::{
    CreateTaskRequest, CreateTaskResponse, GetTaskRequest, GetTaskResponse, Resolution, TaskState,
    VideoDuration, WatchTaskRequest,
};
use hailuo_gateway::simulator::Counts;
use hailuo_gateway::task::{self, CreateTaskInput};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The binary under test: cargo's build for this target, or
/// `LOADGEN_GATEWAY_BIN` (e.g. a plain `cargo build --release` binary: the
/// bench build unifies dev-dependency features, adding tokio's `test-util`,
/// whose clock costs one atomic load per read while never paused).
fn bin() -> String {
    std::env::var("LOADGEN_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hailuo-gateway").to_owned())
}
const API_KEY: &str = "loadgen-key";
const PROMPT: &str = "a cat surfing a wave at sunset";
const IMAGE_URL: &str = "https://example.com/cat.png";
/// Streams per connection in the capacity scenario (the server allows
/// 20,000).
const STREAMS_PER_CONNECTION: usize = 10_000;
/// The states a normal simulated task goes through after it is created:
/// waiting → queuing → generating → success is 3 changes.
const STATE_CHANGES: u64 = 3;

// === plan ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Smoke,
}

/// Sizes and durations of one run.
struct Plan {
    mode: Mode,
    reps: usize,
    warmup: Duration,
    phase: Duration,
    concurrency: Vec<usize>,
    /// Streams opened at once on one connection.
    burst: usize,
    /// Streams held open in all.
    capacity: usize,
    hold: Duration,
    fanout: usize,
    fanout_connections: usize,
    economy_watchers: Vec<usize>,
    /// Time scale of the economy scenario: simulator state timings, the
    /// gateway's poll cadence and the clients' 3 s interval are all
    /// multiplied by it, so the ratios do not depend on it.
    scale: f64,
}

impl Plan {
    fn full() -> Self {
        Self {
            mode: Mode::Full,
            reps: 3,
            warmup: Duration::from_secs(1),
            phase: Duration::from_secs(4),
            concurrency: vec![1, 16, 64],
            burst: 10_000,
            capacity: 100_000,
            hold: Duration::from_secs(5),
            fanout: 10_000,
            fanout_connections: 10,
            economy_watchers: vec![1, 10_000],
            scale: 1.0,
        }
    }

    fn smoke() -> Self {
        Self {
            mode: Mode::Smoke,
            reps: 1,
            warmup: Duration::from_millis(200),
            phase: Duration::from_millis(500),
            concurrency: vec![1, 8],
            burst: 500,
            capacity: 1_000,
            hold: Duration::from_millis(500),
            fanout: 200,
            fanout_connections: 2,
            economy_watchers: vec![1, 50],
            scale: 0.1,
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale)
    }

    /// What a task's states last in the simulator (1 s / 1 s / 3 s at
    /// scale 1, the simulator's defaults).
    fn sim_timings(&self) -> [Duration; 3] {
        [
            self.scaled(Duration::from_secs(1)),
            self.scaled(Duration::from_secs(1)),
            self.scaled(Duration::from_secs(3)),
        ]
    }

    /// How often a client without the gateway polls recordInfo.
    fn client_interval(&self) -> Duration {
        self.scaled(Duration::from_secs(3))
    }
}

// === processes ===

/// A child process of this tool, killed when dropped.
struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(&self.pid.to_string())
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS line")?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .context("empty VmRSS line")?
            .parse()?;
        Ok(kib)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// utime + stime of a process (`self` or a pid), from `/proc/<pid>/stat`.
fn cpu_of(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let after = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks() as f64,
    ))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Simulator {
    proc: Proc,
    url: String,
}

async fn start_simulator(plan: &Plan) -> anyhow::Result<Simulator> {
    let [waiting, queuing, generating] = plan.sim_timings();
    let mut child = Command::new(bin())
        .arg("simulate")
        .args(["--listen", "127.0.0.1:0", "--latency", "0ms"])
        // Every createTask costs credits; the benchmark creates millions.
        .args(["--credits", "1000000000000000"])
        .args(["--waiting", &format!("{}ms", waiting.as_millis())])
        .args(["--queuing", &format!("{}ms", queuing.as_millis())])
        .args(["--generating", &format!("{}ms", generating.as_millis())])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn the simulator")?;
    let stdout = child.stdout.take().context("simulator stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("simulator did not start in 20 s")??
        .context("simulator exited before it was ready")?;
    let url = line
        .strip_prefix("kie.ai simulator listening on ")
        .context("unexpected simulator banner")?
        .trim()
        .to_owned();
    let pid = child.id().context("simulator pid")?;
    Ok(Simulator {
        proc: Proc { child, pid },
        url,
    })
}

struct Gateway {
    proc: Proc,
    grpc_url: String,
    http_url: String,
}

struct GatewayOptions {
    callbacks: bool,
    /// Poll cadence and safety poll, scaled like the simulator.
    scale: f64,
}

async fn start_gateway(
    sim: &Simulator,
    options: GatewayOptions,
    logs: &Path,
) -> anyhow::Result<Gateway> {
    let grpc_port = free_port()?;
    let http_port = free_port()?;
    let http_url = format!("http://127.0.0.1:{http_port}");
    let log_path = logs.join(format!("gateway-{grpc_port}.log"));
    let log = std::fs::File::create(&log_path)?;
    let scaled = |secs: f64| format!("{}ms", (secs * 1000.0 * options.scale).round() as u64);
    let mut command = Command::new(bin());
    command
        .env_clear()
        .env("KIE_API_KEY", API_KEY)
        .env("KIE_BASE_URL", &sim.url)
        .env("GATEWAY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        // Benchmarks create far more than kie.ai's 20 tasks per 10 s.
        .env("KIE_CREATE_LIMIT", "0")
        // Idle streams stay idle.
        .env("GATEWAY_WATCH_HEARTBEAT", "1h")
        .env("GATEWAY_POLL_FAST", scaled(2.0))
        .env("GATEWAY_POLL_FAST_UNTIL", scaled(30.0))
        .env("GATEWAY_POLL_MEDIUM", scaled(5.0))
        .env("GATEWAY_POLL_MEDIUM_UNTIL", scaled(120.0))
        .env("GATEWAY_POLL_SLOW", scaled(15.0))
        .env("GATEWAY_CALLBACK_SAFETY_POLL", scaled(30.0))
        .env("GATEWAY_SHUTDOWN_GRACE", "1s");
    // Extra settings for experiments, e.g. `TOKIO_WORKER_THREADS=1`.
    if let Ok(extra) = std::env::var("LOADGEN_GATEWAY_ENV") {
        for pair in extra.split(',').filter(|p| !p.is_empty()) {
            if let Some((name, value)) = pair.split_once('=') {
                command.env(name, value);
            }
        }
    }
    if options.callbacks {
        command.env(
            "GATEWAY_PUBLIC_CALLBACK_URL",
            format!("{http_url}/callbacks/kie"),
        );
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawn the gateway")?;
    let pid = child.id().context("gateway pid")?;
    let proc = Proc { child, pid };
    // For profiling: `perf record -g -p PID`.
    eprintln!("  (gateway pid {pid}, log {})", log_path.display());
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("gateway ready") {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "gateway not ready in 20 s; its log ({}):\n{text}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Gateway {
        proc,
        grpc_url: format!("http://127.0.0.1:{grpc_port}"),
        http_url,
    })
}

async fn connect(url: &str) -> anyhow::Result<VideoGenerationClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(VideoGenerationClient::new(channel))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(hailuo_gateway::http_client::builder()?
        // Like kie.ai's CDN, the simulator refuses requests without one.
        .user_agent("hailuo-loadgen/0.1")
        .tcp_nodelay(true)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .build()?)
}

fn create_request(prompt: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.to_owned(),
        image_url: IMAGE_URL.to_owned(),
        duration: VideoDuration::VideoDuration6Seconds as i32,
        resolution: Resolution::Resolution768p as i32,
        ..Default::default()
    }
}

/// The createTask body the gateway sends for `create_request(prompt)`,
/// built by the gateway's own code so both paths send the same bytes.
fn direct_body(prompt: &str) -> anyhow::Result<Bytes> {
    let input = CreateTaskInput::try_from(create_request(prompt))
        .map_err(|e| anyhow!("invalid benchmark request: {e:?}"))?;
    Ok(serde_json::to_vec(&CreateTaskBody::new(&input, None))?.into())
}

#[derive(Deserialize)]
struct KieAnswer<T> {
    code: i64,
    data: Option<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatedData {
    task_id: String,
}

#[derive(Deserialize)]
struct RecordData {
    state: String,
}

/// Upstream paths and a pooled client for the bare path.
struct Direct {
    http: reqwest::Client,
    create_url: reqwest::Url,
    record_url: reqwest::Url,
    sim_url: String,
    auth: reqwest::header::HeaderValue,
}

impl Direct {
    fn new(sim: &Simulator) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&sim.url)?;
        Ok(Self {
            http: http_client()?,
            create_url: base.join("api/v1/jobs/createTask")?,
            record_url: base.join("api/v1/jobs/recordInfo")?,
            sim_url: sim.url.clone(),
            auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {API_KEY}"))?,
        })
    }

    /// The bare path of a CreateTask: one POST, its JSON parsed.
    async fn create(&self, body: Bytes) -> anyhow::Result<String> {
        let request = self
            .http
            .post(self.create_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let data: CreatedData = self.kie(request, "createTask").await?;
        Ok(data.task_id)
    }

    async fn state(&self, task_id: &str) -> anyhow::Result<String> {
        let mut url = self.record_url.clone();
        url.query_pairs_mut().append_pair("taskId", task_id);
        let data: RecordData = self.kie(self.http.get(url), "recordInfo").await?;
        Ok(data.state)
    }

    /// Sends a kie.ai request with the key; `data` of a code-200 answer.
    async fn kie<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> anyhow::Result<T> {
        let answer = request
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .send()
            .await?
            .bytes()
            .await?;
        match serde_json::from_slice::<KieAnswer<T>>(&answer)? {
            KieAnswer {
                code: 200,
                data: Some(data),
            } => Ok(data),
            KieAnswer { code, .. } => bail!("{endpoint} answered code {code}"),
        }
    }

    async fn reset(&self) -> anyhow::Result<()> {
        let status = self
            .http
            .post(format!("{}/sim/reset", self.sim_url))
            .send()
            .await?
            .status();
        ensure!(status.is_success(), "/sim/reset answered {status}");
        Ok(())
    }

    async fn counts(&self) -> anyhow::Result<Counts> {
        let body = self
            .http
            .get(format!("{}/sim/counts", self.sim_url))
            .send()
            .await?
            .bytes()
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn complete(&self, task_id: &str) -> anyhow::Result<()> {
        let status = self
            .http
            .post(format!("{}/sim/tasks/{task_id}/complete", self.sim_url))
            .send()
            .await?
            .status();
        ensure!(status.is_success(), "complete answered {status}");
        Ok(())
    }
}

async fn gauge(http: &reqwest::Client, gateway: &Gateway, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{}/metrics", gateway.http_url))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .with_context(|| format!("{name} missing from /metrics"))?;
    Ok(line[name.len()..].trim().parse()?)
}

// === figures ===

/// Every figure of the run, one value per repetition, in insertion order.
#[derive(Default)]
struct Figures {
    order: Vec<String>,
    values: BTreeMap<String, Vec<f64>>,
}

impl Figures {
    fn push(&mut self, key: impl Into<String>, value: f64) {
        let key = key.into();
        if !self.values.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.values.entry(key).or_default().push(value);
    }

    fn get(&self, key: &str) -> &[f64] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    fn median(&self, key: &str) -> f64 {
        mmm(self.get(key)).1
    }

    /// "min / median / max" with `digits` decimals.
    fn show(&self, key: &str, digits: usize) -> String {
        let values = self.get(key);
        if values.is_empty() {
            return "n/a".into();
        }
        let (min, med, max) = mmm(values);
        format!("{min:.digits$} / **{med:.digits$}** / {max:.digits$}")
    }
}

fn mmm(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (sorted[0], median, sorted[n - 1])
}

/// The `p` quantile (0..=1) of sorted values.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// === 1. unary overhead ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through the gateway.
    Gateway,
    /// Through the bare forwarder: receive gRPC, POST upstream, parse,
    /// answer; nothing else (the issue's reference, rebuilt in this run).
    Bare,
    /// Straight to the simulator with reqwest.
    Direct,
}

impl Route {
    const ALL: [Route; 3] = [Route::Gateway, Route::Bare, Route::Direct];

    fn name(self) -> &'static str {
        match self {
            Route::Gateway => "gateway",
            Route::Bare => "bare",
            Route::Direct => "direct",
        }
    }
}

struct WorkerResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

struct UnaryTarget {
    grpc: VideoGenerationClient<Channel>,
    bare: VideoGenerationClient<Channel>,
    request: CreateTaskRequest,
    direct: Arc<Direct>,
    body: Bytes,
}

/// `concurrency` closed-loop workers calling until `until`.
async fn closed_loop(
    target: &UnaryTarget,
    route: Route,
    concurrency: usize,
    until: Instant,
) -> anyhow::Result<Vec<WorkerResult>> {
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let mut grpc = match route {
            Route::Bare => target.bare.clone(),
            _ => target.grpc.clone(),
        };
        let request = target.request.clone();
        let direct = target.direct.clone();
        let body = target.body.clone();
        workers.spawn(async move {
            let mut result = WorkerResult {
                latencies_ns: Vec::with_capacity(100_000),
                errors: 0,
                first_error: None,
            };
            while Instant::now() < until {
                let started = Instant::now();
                let outcome = match route {
                    Route::Gateway | Route::Bare => grpc
                        .create_task(request.clone())
                        .await
                        .map(|_| ())
                        .map_err(|s| anyhow!("{}: {}", s.code(), s.message())),
                    Route::Direct => direct.create(body.clone()).await.map(|_| ()),
                };
                let took = started.elapsed();
                match outcome {
                    Ok(()) => result.latencies_ns.push(took.as_nanos() as u64),
                    Err(e) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            result
        });
    }
    let mut results = Vec::with_capacity(concurrency);
    while let Some(result) = workers.join_next().await {
        results.push(result?);
    }
    Ok(results)
}

async fn unary_phase(
    plan: &Plan,
    figures: &mut Figures,
    target: &UnaryTarget,
    (sim, gateway, bare): (&Simulator, &Gateway, &Proc),
    route: Route,
    concurrency: usize,
) -> anyhow::Result<()> {
    closed_loop(target, route, concurrency, Instant::now() + plan.warmup).await?;
    let (gw0, bare0) = (gateway.proc.cpu()?, bare.cpu()?);
    let (sim0, me0) = (sim.proc.cpu()?, cpu_of("self")?);
    let started = Instant::now();
    let results = closed_loop(target, route, concurrency, started + plan.phase).await?;
    let elapsed = started.elapsed();
    let (gw1, bare1) = (gateway.proc.cpu()?, bare.cpu()?);
    let (sim1, me1) = (sim.proc.cpu()?, cpu_of("self")?);
    // Forget the created tasks so the simulator does not grow run by run.
    target.direct.reset().await?;

    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let first_error = results.iter().find_map(|r| r.first_error.clone());
    let mut latencies: Vec<f64> = results
        .iter()
        .flat_map(|r| r.latencies_ns.iter().map(|ns| *ns as f64 / 1e3))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let calls = latencies.len() as f64;
    let key = |what: &str| format!("unary/{}/c{concurrency}/{what}", route.name());
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls.max(1.0);
    figures.push(key("rps"), calls / elapsed.as_secs_f64());
    figures.push(key("p50"), quantile(&latencies, 0.50));
    figures.push(key("p99"), quantile(&latencies, 0.99));
    figures.push(key("p999"), quantile(&latencies, 0.999));
    figures.push(key("cpu_gateway"), per_call(gw1 - gw0));
    figures.push(key("cpu_bare"), per_call(bare1 - bare0));
    figures.push(key("cpu_sim"), per_call(sim1 - sim0));
    figures.push(key("cpu_loadgen"), per_call(me1 - me0));
    figures.push(key("errors"), errors as f64);
    eprintln!(
        "  {:7} c{concurrency:<3} {:>8.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  gateway {:>5.1} µs/call  bare forwarder {:>5.1} µs/call  errors {errors}",
        route.name(),
        calls / elapsed.as_secs_f64(),
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        per_call(gw1 - gw0),
        per_call(bare1 - bare0),
    );
    if let Some(e) = first_error {
        eprintln!("    first error: {e}");
    }
    Ok(())
}

async fn unary(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 1. unary overhead");
    let gateway = start_gateway(
        sim,
        GatewayOptions {
            callbacks: false,
            scale: 1.0,
        },
        logs,
    )
    .await?;
    let (bare, bare_url) = start_bare_forwarder(sim).await?;
    let target = UnaryTarget {
        grpc: connect(&gateway.grpc_url).await?,
        bare: connect(&bare_url).await?,
        request: create_request(PROMPT),
        direct: Arc::new(Direct::new(sim)?),
        body: direct_body(PROMPT)?,
    };
    for rep in 0..plan.reps {
        figures.push("load/unary", load_average());
        for &c in &plan.concurrency {
            // Rotate which path goes first, so drift favours none.
            let mut order = Route::ALL;
            order.rotate_left(rep % Route::ALL.len());
            for route in order {
                let procs = (sim, &gateway, &bare);
                unary_phase(plan, figures, &target, procs, route, c).await?;
            }
            let p50 = |route: &str| figures.get(&format!("unary/{route}/c{c}/p50"))[rep];
            let added = p50("gateway") - p50("direct");
            let bare_added = p50("bare") - p50("direct");
            figures.push(format!("unary/added/c{c}/p50"), added);
            figures.push(format!("unary/bare_added/c{c}/p50"), bare_added);
            let k =
                |route: &str, what: &str| figures.get(&format!("unary/{route}/c{c}/{what}"))[rep];
            let ratio = k("gateway", "cpu_gateway") / k("bare", "cpu_bare");
            figures.push(format!("unary/cpu_ratio/c{c}"), ratio);
        }
    }
    gateway.proc.stop().await;
    bare.stop().await;
    Ok(())
}

// === the bare forwarder ===

/// Starts this executable as a bare forwarder in front of the simulator.
async fn start_bare_forwarder(sim: &Simulator) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["forwarder", &sim.url, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn the bare forwarder")?;
    let stdout = child.stdout.take().context("forwarder stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("bare forwarder did not start in 20 s")??
        .context("bare forwarder exited before it was ready")?;
    let pid = child.id().context("forwarder pid")?;
    Ok((Proc { child, pid }, format!("http://127.0.0.1:{port}")))
}

/// The least a gateway can do: receive gRPC, POST upstream, parse, answer.
/// No validation, error details, metrics or logs; tonic's and reqwest's
/// defaults, a pooled client and the URL parsed once.
struct BareForwarder {
    http: reqwest::Client,
    create_url: reqwest::Url,
    auth: reqwest::header::HeaderValue,
}

#[derive(serde::Serialize)]
struct BareBody<'a> {
    model: &'static str,
    input: BareInput<'a>,
}

#[derive(serde::Serialize)]
struct BareInput<'a> {
    prompt: &'a str,
    image_url: &'a str,
    duration: &'static str,
    resolution: &'static str,
}

#[tonic::async_trait]
impl VideoGeneration for BareForwarder {
    async fn create_task(
        &self,
        request: tonic::Request<CreateTaskRequest>,
    ) -> Result<tonic::Response<CreateTaskResponse>, tonic::Status> {
        let request = request.into_inner();
        let body = BareBody {
            model: task::model_id(request.model()),
            input: BareInput {
                prompt: &request.prompt,
                image_url: &request.image_url,
                duration: task::duration_value(request.duration()),
                resolution: task::resolution_value(request.resolution()),
            },
        };
        let body = serde_json::to_vec(&body).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let answer = self
            .http
            .post(self.create_url.clone())
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        match serde_json::from_slice::<KieAnswer<CreatedData>>(&answer) {
            Ok(KieAnswer {
                code: 200,
                data: Some(data),
            }) => Ok(tonic::Response::new(CreateTaskResponse {
                task_id: data.task_id,
            })),
            _ => Err(tonic::Status::internal("bad upstream answer")),
        }
    }

    async fn get_task(
        &self,
        _: tonic::Request<GetTaskRequest>,
    ) -> Result<tonic::Response<GetTaskResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    type WatchTaskStream = hailuo_gateway::watch::WatchStream;

    async fn watch_task(
        &self,
        _: tonic::Request<WatchTaskRequest>,
    ) -> Result<tonic::Response<Self::WatchTaskStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }
}

/// `loadgen forwarder UPSTREAM_URL PORT`: serves until killed.
async fn run_bare_forwarder(upstream: &str, port: &str) -> anyhow::Result<()> {
    let forwarder = BareForwarder {
        http: http_client()?,
        create_url: reqwest::Url::parse(upstream)?.join("api/v1/jobs/createTask")?,
        auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {API_KEY}"))?,
    };
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("bare forwarder listening");
    tonic::transport::Server::builder()
        .add_service(VideoGenerationServer::new(forwarder))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

// === 2. watch capacity ===

#[derive(Default)]
struct StreamCounters {
    opened: AtomicUsize,
    failed: AtomicUsize,
    /// Streams that ended or broke after their first message.
    ended: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl StreamCounters {
    fn error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }
}

/// Opens `count` WatchTask streams at once on a new connection; each holds
/// its stream until `stop`.
async fn open_idle_streams(
    grpc_url: &str,
    task_id: &str,
    count: usize,
    counters: &Arc<StreamCounters>,
    stop: &CancellationToken,
    streams: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let client = connect(grpc_url).await?;
    for _ in 0..count {
        let mut client = client.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        let task_id = task_id.to_owned();
        streams.spawn(async move {
            let mut stream = match client.watch_task(WatchTaskRequest { task_id }).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!("open: {status}"));
                    return;
                }
            };
            match stream.message().await {
                Ok(Some(_)) => counters.opened.fetch_add(1, Ordering::Relaxed),
                other => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    counters.error(format!("first message: {other:?}"));
                    return;
                }
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    message = stream.message() => match message {
                        Ok(Some(_)) => {}
                        other => {
                            counters.ended.fetch_add(1, Ordering::Relaxed);
                            counters.error(format!("held stream ended: {other:?}"));
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        ensure!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn create_via_gateway(gateway: &Gateway, prompt: &str) -> anyhow::Result<String> {
    let mut client = connect(&gateway.grpc_url).await?;
    Ok(client
        .create_task(create_request(prompt))
        .await?
        .into_inner()
        .task_id)
}

async fn capacity(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 2. watch capacity");
    let http = http_client()?;
    for _ in 0..plan.reps {
        figures.push("load/capacity", load_average());
        let gateway = start_gateway(
            sim,
            GatewayOptions {
                callbacks: false,
                scale: 1.0,
            },
            logs,
        )
        .await?;
        let task_id = create_via_gateway(&gateway, &format!("{PROMPT} [sim:never]")).await?;
        let counters = Arc::new(StreamCounters::default());
        let stop = CancellationToken::new();
        let mut streams = JoinSet::new();
        // One stream first: the task's poller and its first read exist
        // before the baseline is taken.
        open_idle_streams(
            &gateway.grpc_url,
            &task_id,
            1,
            &counters,
            &stop,
            &mut streams,
        )
        .await?;
        wait_for("the first stream", Duration::from_secs(20), || {
            counters.opened.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed) >= 1
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base_kib = gateway.proc.rss_kib()?;

        // The burst: all at once on one connection.
        let started = Instant::now();
        open_idle_streams(
            &gateway.grpc_url,
            &task_id,
            plan.burst,
            &counters,
            &stop,
            &mut streams,
        )
        .await?;
        let target = 1 + plan.burst;
        wait_for("the burst to open", Duration::from_secs(120), || {
            counters.opened.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
                >= target
        })
        .await?;
        let burst_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(plan.hold).await;
        let burst_kib = gateway.proc.rss_kib()?;
        figures.push(
            "capacity/burst/opened",
            (counters.opened.load(Ordering::Relaxed) - 1) as f64,
        );
        figures.push(
            "capacity/burst/failed",
            counters.failed.load(Ordering::Relaxed) as f64,
        );
        figures.push(
            "capacity/burst/dropped",
            counters.ended.load(Ordering::Relaxed) as f64,
        );
        figures.push("capacity/burst/open_secs", burst_secs);
        figures.push(
            "capacity/burst/kib_per_stream",
            (burst_kib.saturating_sub(base_kib)) as f64 / plan.burst as f64,
        );

        // The rest, one burst per further connection.
        let mut left = plan.capacity.saturating_sub(plan.burst);
        let per_connection = STREAMS_PER_CONNECTION.min(plan.burst.max(1));
        let started = Instant::now();
        while left > 0 {
            let n = left.min(per_connection);
            open_idle_streams(
                &gateway.grpc_url,
                &task_id,
                n,
                &counters,
                &stop,
                &mut streams,
            )
            .await?;
            left -= n;
        }
        let target = 1 + plan.capacity;
        wait_for("all streams to open", Duration::from_secs(300), || {
            counters.opened.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
                >= target
        })
        .await?;
        let open_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(plan.hold).await;
        let all_kib = gateway.proc.rss_kib()?;
        let watchers = gauge(&http, &gateway, "hailuo_gateway_active_watchers").await?;
        let opened = counters.opened.load(Ordering::Relaxed) - 1;
        let failed = counters.failed.load(Ordering::Relaxed);
        let dropped = counters.ended.load(Ordering::Relaxed);
        figures.push("capacity/all/opened", opened as f64);
        figures.push("capacity/all/failed", failed as f64);
        figures.push("capacity/all/dropped", dropped as f64);
        figures.push("capacity/all/gateway_watchers", watchers - 1.0);
        figures.push("capacity/all/open_secs", open_secs);
        figures.push("capacity/all/rss_mib", all_kib as f64 / 1024.0);
        figures.push("capacity/base_rss_mib", base_kib as f64 / 1024.0);
        figures.push(
            "capacity/all/kib_per_stream",
            (all_kib.saturating_sub(base_kib)) as f64 / plan.capacity as f64,
        );
        eprintln!(
            "  burst {} on one connection: {} opened, {} failed in {burst_secs:.2} s; \
             {opened} of {} open ({failed} failed, {dropped} dropped), gateway RSS {:.0} MiB ({:.2} KiB/stream)",
            plan.burst,
            figures
                .get("capacity/burst/opened")
                .last()
                .copied()
                .unwrap_or_default(),
            figures
                .get("capacity/burst/failed")
                .last()
                .copied()
                .unwrap_or_default(),
            plan.capacity,
            all_kib as f64 / 1024.0,
            (all_kib.saturating_sub(base_kib)) as f64 / plan.capacity as f64,
        );
        if let Some(e) = counters
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            eprintln!("    first error: {e}");
        }
        // The gateway goes first so that closing 100,000 streams costs the
        // run nothing.
        gateway.proc.stop().await;
        stop.cancel();
        streams.shutdown().await;
    }
    Ok(())
}

// === 3. fan-out ===

async fn fanout(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 3. fan-out");
    let direct = Direct::new(sim)?;
    let gateway = start_gateway(
        sim,
        GatewayOptions {
            callbacks: true,
            scale: 1.0,
        },
        logs,
    )
    .await?;
    let mut clients = Vec::new();
    for _ in 0..plan.fanout_connections {
        clients.push(connect(&gateway.grpc_url).await?);
    }
    for _ in 0..plan.reps {
        figures.push("load/fanout", load_average());
        let task_id = create_via_gateway(&gateway, &format!("{PROMPT} [sim:manual]")).await?;
        let generating = Arc::new(AtomicUsize::new(0));
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut watchers = JoinSet::new();
        for i in 0..plan.fanout {
            let mut client = clients[i % clients.len()].clone();
            let task_id = task_id.clone();
            let generating = generating.clone();
            let arrived_tx = arrived_tx.clone();
            watchers.spawn(async move {
                let Ok(response) = client.watch_task(WatchTaskRequest { task_id }).await else {
                    return;
                };
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    match message.task.map(|t| t.state()) {
                        Some(TaskState::Generating) => {
                            generating.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(TaskState::Succeeded) => {
                            let _ = arrived_tx.send(Instant::now());
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
        drop(arrived_tx);
        wait_for(
            "every watcher to hold GENERATING",
            Duration::from_secs(120),
            || generating.load(Ordering::Relaxed) >= plan.fanout,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let changed = Instant::now();
        direct.complete(&task_id).await?;
        let mut latencies = Vec::with_capacity(plan.fanout);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while latencies.len() < plan.fanout {
            match tokio::time::timeout_at(deadline, arrived.recv()).await {
                Ok(Some(at)) => latencies.push((at - changed).as_secs_f64() * 1e3),
                _ => break,
            }
        }
        watchers.shutdown().await;
        latencies.sort_by(f64::total_cmp);
        figures.push("fanout/delivered", latencies.len() as f64);
        figures.push("fanout/p50", quantile(&latencies, 0.5));
        figures.push("fanout/p99", quantile(&latencies, 0.99));
        figures.push("fanout/max", quantile(&latencies, 1.0));
        eprintln!(
            "  {} of {} watchers got SUCCEEDED: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            plan.fanout,
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99),
            quantile(&latencies, 1.0),
        );
    }
    gateway.proc.stop().await;
    Ok(())
}

// === 4. upstream economy ===

/// `n` watchers of one new task through `gateway`; returns the recordInfo
/// reads the simulator saw over the task's lifetime.
async fn economy_gateway(
    plan: &Plan,
    direct: &Direct,
    gateway: &Gateway,
    n: usize,
) -> anyhow::Result<u64> {
    direct.reset().await?;
    let connections = n.div_ceil(1_000).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(connect(&gateway.grpc_url).await?);
    }
    let task_id = create_via_gateway(gateway, PROMPT).await?;
    let succeeded = Arc::new(AtomicUsize::new(0));
    let mut watchers = JoinSet::new();
    for i in 0..n {
        let mut client = clients[i % connections].clone();
        let task_id = task_id.clone();
        let succeeded = succeeded.clone();
        watchers.spawn(async move {
            let Ok(response) = client.watch_task(WatchTaskRequest { task_id }).await else {
                return;
            };
            let mut stream = response.into_inner();
            while let Ok(Some(message)) = stream.message().await {
                if message.task.map(|t| t.state()) == Some(TaskState::Succeeded) {
                    succeeded.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let lifetime: Duration = plan.sim_timings().iter().sum();
    tokio::time::timeout(lifetime * 4 + Duration::from_secs(60), async {
        while watchers.join_next().await.is_some() {}
    })
    .await
    .context("watchers did not finish")?;
    let seen = succeeded.load(Ordering::Relaxed);
    ensure!(seen == n, "only {seen} of {n} watchers saw SUCCEEDED");
    Ok(direct.counts().await?.record_info)
}

/// "Without the gateway": `n` clients each polling recordInfo every
/// `interval` until the task ends, their phases spread over one interval.
async fn economy_direct(plan: &Plan, direct: &Arc<Direct>, n: usize) -> anyhow::Result<u64> {
    direct.reset().await?;
    let task_id = direct.create(direct_body(PROMPT)?).await?;
    let interval = plan.client_interval();
    let started = tokio::time::Instant::now();
    let mut clients = JoinSet::new();
    for i in 0..n {
        let direct = direct.clone();
        let task_id = task_id.clone();
        let first = started + interval.mul_f64(i as f64 / n as f64);
        clients.spawn(async move {
            let mut ticks = tokio::time::interval_at(first, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match direct.state(&task_id).await {
                    Ok(state) if state == "success" || state == "fail" => return true,
                    Ok(_) => {}
                    // A real client would try again at its next tick.
                    Err(_) => {}
                }
            }
        });
    }
    let lifetime: Duration = plan.sim_timings().iter().sum();
    let mut done = 0;
    tokio::time::timeout(lifetime * 4 + Duration::from_secs(60), async {
        while let Some(ok) = clients.join_next().await {
            done += usize::from(ok.unwrap_or(false));
        }
    })
    .await
    .context("polling clients did not finish")?;
    ensure!(done == n, "only {done} of {n} polling clients saw the end");
    Ok(direct.counts().await?.record_info)
}

async fn economy(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 4. upstream economy");
    let direct = Arc::new(Direct::new(sim)?);
    let polling = start_gateway(
        sim,
        GatewayOptions {
            callbacks: false,
            scale: plan.scale,
        },
        logs,
    )
    .await?;
    let callbacks = start_gateway(
        sim,
        GatewayOptions {
            callbacks: true,
            scale: plan.scale,
        },
        logs,
    )
    .await?;
    for _ in 0..plan.reps {
        figures.push("load/economy", load_average());
        for &n in &plan.economy_watchers {
            let reads = economy_gateway(plan, &direct, &polling, n).await?;
            figures.push(format!("economy/polling/{n}"), reads as f64);
            let reads = economy_gateway(plan, &direct, &callbacks, n).await?;
            figures.push(format!("economy/callbacks/{n}"), reads as f64);
            let reads = economy_direct(plan, &direct, n).await?;
            figures.push(format!("economy/direct/{n}"), reads as f64);
            let last = |k: &str| figures.get(k).last().copied().unwrap_or(f64::NAN);
            eprintln!(
                "  {n} watchers: gateway polling {} reads, with callbacks {}, clients without the gateway {}",
                last(&format!("economy/polling/{n}")),
                last(&format!("economy/callbacks/{n}")),
                last(&format!("economy/direct/{n}")),
            );
        }
    }
    polling.proc.stop().await;
    callbacks.proc.stop().await;
    Ok(())
}

// === report ===

struct Target {
    what: &'static str,
    figure: String,
    met: bool,
}

fn targets(plan: &Plan, f: &Figures) -> Vec<Target> {
    let mut out = Vec::new();
    let c16 = plan
        .concurrency
        .iter()
        .copied()
        .find(|c| *c >= 16)
        .unwrap_or(1);
    let cpu = f.median(&format!("unary/gateway/c{c16}/cpu_gateway"));
    out.push(Target {
        what: "gateway CPU per CreateTask at concurrency 16 ≤ 30 µs",
        figure: format!(
            "{cpu:.1} µs (median of {})",
            f.get(&format!("unary/gateway/c{c16}/cpu_gateway")).len()
        ),
        met: cpu <= 30.0,
    });
    let added = f.median("unary/added/c1/p50");
    out.push(Target {
        what: "added latency at concurrency 1 (p50, gateway − direct) ≤ 100 µs",
        figure: format!("{added:.1} µs"),
        met: added <= 100.0,
    });
    let rss = mmm(f.get("capacity/all/rss_mib")).2;
    let dropped: f64 = f.get("capacity/all/dropped").iter().sum::<f64>()
        + f.get("capacity/all/failed").iter().sum::<f64>();
    let opened = mmm(f.get("capacity/all/opened")).0;
    out.push(Target {
        what: "100,000 idle WatchTask streams in ≤ 1 GiB RSS, none dropped",
        figure: format!(
            "{} streams: worst gateway RSS {rss:.0} MiB, {dropped} failed or dropped",
            plan.capacity
        ),
        met: rss <= 1024.0 && dropped == 0.0 && opened >= plan.capacity as f64,
    });
    let burst_bad: f64 = f.get("capacity/burst/failed").iter().sum::<f64>()
        + f.get("capacity/burst/dropped").iter().sum::<f64>();
    let burst_opened = mmm(f.get("capacity/burst/opened")).0;
    out.push(Target {
        what: "a burst of 10,000 new streams on one connection survives",
        figure: format!(
            "{} streams at once: fewest opened {burst_opened}, {burst_bad} failed or dropped",
            plan.burst
        ),
        met: burst_bad == 0.0 && burst_opened >= plan.burst as f64,
    });
    let p99 = mmm(f.get("fanout/p99")).1;
    let delivered = mmm(f.get("fanout/delivered")).0;
    out.push(Target {
        what: "10,000 watchers of one task notified within p99 ≤ 50 ms",
        figure: format!("p99 {p99:.1} ms (median), fewest delivered {delivered}"),
        met: p99 <= 50.0 && delivered >= plan.fanout as f64,
    });
    let big = plan.economy_watchers.iter().copied().max().unwrap_or(1);
    for mode in ["polling", "callbacks"] {
        let one = f.get(&format!("economy/{mode}/1"));
        let many = f.get(&format!("economy/{mode}/{big}"));
        let same = one.iter().zip(many).all(|(a, b)| a == b);
        out.push(Target {
            what: if mode == "polling" {
                "reads for 10,000 watchers = reads for 1 watcher (polling only)"
            } else {
                "reads for 10,000 watchers = reads for 1 watcher (callbacks)"
            },
            figure: format!("1 watcher: {one:?}; {big} watchers: {many:?} (per repetition)"),
            met: same,
        });
    }
    let cb_max = f
        .values
        .iter()
        .filter(|(k, _)| k.starts_with("economy/callbacks/"))
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max);
    out.push(Target {
        what: "with callbacks, reads per task ≤ state changes + 2 (= 5)",
        figure: format!("worst {cb_max} reads per task"),
        met: cb_max <= (STATE_CHANGES + 2) as f64,
    });
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {kernel}")
}

fn shell(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn report(plan: &Plan, f: &Figures, started_load: f64, took: Duration) -> String {
    let mut md = String::new();
    let commit = shell("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !shell("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let loads = |key: &str| {
        f.get(key)
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "What the gateway costs per call, how far it scales, and what it saves upstream, \
         measured against the bare paths in the same run. Written by the load tool \
         (`benches/loadgen.rs`); do not edit by hand, run it again:\n"
    );
    let _ = writeln!(md, "```sh\ncargo bench --bench loadgen -- full\n```\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| machine | {} |", machine());
    let _ = writeln!(
        md,
        "| date | {} |",
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        md,
        "| commit | `{commit}`{} |",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "| command | `cargo bench --bench loadgen -- full` ({:.0} s) |",
        took.as_secs_f64()
    );
    let _ = writeln!(md, "| binary under test | `{}` |", bin());
    let _ = writeln!(
        md,
        "| 1-min load average at start | {started_load:.2} (unary reps: {}; capacity reps: {}; fan-out reps: {}; economy reps: {}) |",
        loads("load/unary"),
        loads("load/capacity"),
        loads("load/fanout"),
        loads("load/economy")
    );
    let _ = writeln!(
        md,
        "| repetitions | {}, interleaved; every figure is **min / median / max** over them |\n",
        plan.reps
    );
    let _ = writeln!(
        md,
        "Everything runs on this machine over loopback: the standalone simulator \
         (`hailuo-gateway simulate --latency 0ms`), the gateway (release build, logging one \
         line per RPC to a file as in production, `KIE_CREATE_LIMIT=0`), and this tool. They \
         share the cores, so the load tool's own CPU is part of every figure's noise; the \
         machine is shared with other work too (see the load averages).\n"
    );

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | figure | met? |\n|---|---|---|");
    for t in targets(plan, f) {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            t.what,
            t.figure,
            if t.met { "**met**" } else { "**missed**" }
        );
    }

    let _ = writeln!(
        md,
        "\n## 1. Unary overhead: CreateTask through the gateway vs the same createTask POST direct\n"
    );
    let _ = writeln!(
        md,
        "Closed loop, {:?} warm-up then {:?} measured per phase, the three paths rotated \
         within each repetition. `gateway`: one HTTP/2 connection from a tonic client to the \
         gateway. `bare`: the same client to a bare forwarder in its own process (this tool's \
         `forwarder` mode: tonic server defaults, receive, POST upstream with a pooled reqwest \
         client, parse, answer; no validation, errors, metrics or logs): the issue's reference \
         \"bare forwarder\" rebuilt in the same run, so the gateway's CPU can be judged against \
         it under the same noise. `direct`: a pooled reqwest client POSTing the byte-identical \
         JSON body to the simulator and parsing the answer with serde. CPU is \
         utime + stime from `/proc/<pid>/stat` (tick {} ms) over the measured phase, divided \
         by the calls made. Latencies in µs.\n",
        plan.warmup,
        plan.phase,
        1000 / clock_ticks().max(1)
    );
    let _ = writeln!(
        md,
        "| path | conc. | requests/s | p50 µs | p99 µs | p99.9 µs | gateway CPU µs/call | bare forwarder CPU µs/call | simulator CPU µs/call | load tool CPU µs/call | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for &c in &plan.concurrency {
        for route in Route::ALL {
            let k = |w: &str| format!("unary/{}/c{c}/{w}", route.name());
            let _ = writeln!(
                md,
                "| {} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                route.name(),
                f.show(&k("rps"), 0),
                f.show(&k("p50"), 0),
                f.show(&k("p99"), 0),
                f.show(&k("p999"), 0),
                f.show(&k("cpu_gateway"), 1),
                f.show(&k("cpu_bare"), 1),
                f.show(&k("cpu_sim"), 1),
                f.show(&k("cpu_loadgen"), 1),
                f.get(&k("errors")).iter().sum::<f64>(),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| conc. | added latency p50, gateway − direct µs | added latency p50, bare forwarder − direct µs | gateway CPU per call µs | bare forwarder CPU per call µs | gateway CPU / bare forwarder CPU |\n|---|---|---|---|---|---|"
    );
    for &c in &plan.concurrency {
        let _ = writeln!(
            md,
            "| {c} | {} | {} | {} | {} | {} |",
            f.show(&format!("unary/added/c{c}/p50"), 0),
            f.show(&format!("unary/bare_added/c{c}/p50"), 0),
            f.show(&format!("unary/gateway/c{c}/cpu_gateway"), 1),
            f.show(&format!("unary/bare/c{c}/cpu_bare"), 1),
            f.show(&format!("unary/cpu_ratio/c{c}"), 2),
        );
    }

    let _ = writeln!(md, "\n## 2. Watch capacity: idle WatchTask streams\n");
    let _ = writeln!(
        md,
        "A `[sim:never]` task (stays generating), heartbeat 1 h so streams stay idle. \
         First a burst of {} streams opened at once on **one** connection, then the rest up to \
         {} in bursts of {} per further connection. Each stream's first message is awaited; \
         then all are held {:?} and every stream that ends or breaks counts as dropped. RSS \
         per stream = (gateway VmRSS with the streams − VmRSS with one stream) / streams.\n",
        plan.burst,
        plan.capacity,
        STREAMS_PER_CONNECTION.min(plan.burst),
        plan.hold
    );
    let _ = writeln!(md, "| figure | min / median / max |\n|---|---|");
    for (label, key, digits) in [
        (
            "burst: streams opened (one connection)",
            "capacity/burst/opened",
            0,
        ),
        ("burst: failed to open", "capacity/burst/failed", 0),
        ("burst: dropped while held", "capacity/burst/dropped", 0),
        ("burst: seconds to open all", "capacity/burst/open_secs", 2),
        (
            "burst: gateway KiB per stream",
            "capacity/burst/kib_per_stream",
            2,
        ),
        ("all: streams opened", "capacity/all/opened", 0),
        ("all: failed to open", "capacity/all/failed", 0),
        ("all: dropped while held", "capacity/all/dropped", 0),
        (
            "all: gateway's active_watchers gauge",
            "capacity/all/gateway_watchers",
            0,
        ),
        ("all: seconds to open the rest", "capacity/all/open_secs", 2),
        (
            "gateway RSS before (one stream), MiB",
            "capacity/base_rss_mib",
            1,
        ),
        ("all: gateway RSS, MiB", "capacity/all/rss_mib", 1),
        (
            "all: gateway KiB per stream",
            "capacity/all/kib_per_stream",
            2,
        ),
    ] {
        let _ = writeln!(md, "| {label} | {} |", f.show(key, digits));
    }

    let _ = writeln!(
        md,
        "\n## 3. Fan-out: {} watchers of one task\n",
        plan.fanout
    );
    let _ = writeln!(
        md,
        "A `[sim:manual]` task created through a gateway with callbacks on \
         (`GATEWAY_PUBLIC_CALLBACK_URL` = its own `/callbacks/kie`); {} watchers over {} \
         connections all hold GENERATING; then the tool calls the simulator's \
         `POST /sim/tasks/{{id}}/complete` (which fires the callback at once) and measures, on \
         its own clock, from just before that call until each watcher receives SUCCEEDED. The \
         path is: callback → gateway wakes the task's poller → one recordInfo read → one \
         watch-channel update → {} stream writes.\n",
        plan.fanout, plan.fanout_connections, plan.fanout
    );
    let _ = writeln!(md, "| figure | min / median / max |\n|---|---|");
    for (label, key, digits) in [
        ("watchers that got SUCCEEDED", "fanout/delivered", 0),
        ("p50 ms", "fanout/p50", 1),
        ("p99 ms", "fanout/p99", 1),
        ("max ms", "fanout/max", 1),
    ] {
        let _ = writeln!(md, "| {label} | {} |", f.show(key, digits));
    }

    let [w, q, g] = plan.sim_timings();
    let _ = writeln!(
        md,
        "\n## 4. Upstream economy: recordInfo reads per task lifetime\n"
    );
    let _ = writeln!(
        md,
        "One task (waiting {w:?}, queuing {q:?}, generating {g:?}: {STATE_CHANGES} state \
         changes), counted with the simulator's `/sim/counts` (reset before each scenario). \
         Through the gateway: N WatchTask streams opened as the task is created, held until \
         SUCCEEDED; the gateway polls at its default cadence (2 s while the task is young), \
         with callbacks on it polls until GENERATING and then relies on the callback (30 s \
         safety poll). Without the gateway: N clients each polling recordInfo every {:?}, their \
         phases spread evenly over one interval, until the task ends. Nothing is scaled: the \
         simulated task is shorter than a real one, which makes both sides read less; a real \
         task of minutes multiplies the clients' reads by its length, while the gateway with \
         callbacks reads the same few times.\n",
        plan.client_interval()
    );
    let _ = writeln!(
        md,
        "| watchers | gateway, polling only | gateway, callbacks | without the gateway (clients polling every {:?}) | ratio without / with gateway (polling) | ratio without / with gateway (callbacks) |",
        plan.client_interval()
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for &n in &plan.economy_watchers {
        let ratio = |mode: &str| {
            let direct = f.get(&format!("economy/direct/{n}"));
            let via = f.get(&format!("economy/{mode}/{n}"));
            let ratios: Vec<f64> = direct.iter().zip(via).map(|(d, v)| d / v).collect();
            let (a, b, c) = mmm(&ratios);
            format!("{a:.1} / **{b:.1}** / {c:.1}")
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} |",
            f.show(&format!("economy/polling/{n}"), 0),
            f.show(&format!("economy/callbacks/{n}"), 0),
            f.show(&format!("economy/direct/{n}"), 0),
            ratio("polling"),
            ratio("callbacks"),
        );
    }
    // The analysis is written by people, kept beside the tool and carried
    // into every new report.
    let notes = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/BENCHMARKS-notes.md");
    if let Ok(text) = std::fs::read_to_string(notes) {
        let _ = writeln!(md, "\n{}", text.trim_end());
    }
    md
}

// === smoke checks ===

fn smoke_checks(plan: &Plan, f: &Figures) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    for &c in &plan.concurrency {
        for route in Route::ALL {
            let k = |w: &str| format!("unary/{}/c{c}/{w}", route.name());
            check(
                f.get(&k("rps")).iter().all(|r| *r > 0.0),
                format!("{} c{c}: no requests completed", route.name()),
            );
            check(
                f.get(&k("errors")).iter().all(|e| *e == 0.0),
                format!("{} c{c}: errors", route.name()),
            );
        }
        check(
            f.get(&format!("unary/gateway/c{c}/cpu_gateway"))
                .iter()
                .all(|c| c.is_finite()),
            format!("c{c}: gateway CPU not measured"),
        );
    }
    let all =
        |key: &str, want: f64| f.get(key).iter().all(|v| *v == want) && !f.get(key).is_empty();
    check(
        all("capacity/burst/opened", plan.burst as f64),
        "not every burst stream opened".into(),
    );
    check(
        all("capacity/burst/dropped", 0.0),
        "burst streams dropped".into(),
    );
    check(
        all("capacity/all/opened", plan.capacity as f64),
        "not every stream opened".into(),
    );
    check(all("capacity/all/dropped", 0.0), "streams dropped".into());
    check(
        all("capacity/all/gateway_watchers", plan.capacity as f64),
        "the gateway's active_watchers gauge disagrees".into(),
    );
    check(
        all("fanout/delivered", plan.fanout as f64),
        "fan-out did not reach every watcher".into(),
    );
    let big = plan.economy_watchers.iter().copied().max().unwrap_or(1);
    for mode in ["polling", "callbacks"] {
        let one = f.get(&format!("economy/{mode}/1"));
        let many = f.get(&format!("economy/{mode}/{big}"));
        // Timing may shift one read either way on a busy machine.
        check(
            !one.is_empty() && one.iter().zip(many).all(|(a, b)| (a - b).abs() <= 1.0),
            format!("{mode}: {big} watchers read {many:?}, 1 watcher {one:?}"),
        );
        let direct = f.get(&format!("economy/direct/{big}"));
        check(
            direct.iter().zip(many).all(|(d, g)| d > g),
            format!("{mode}: the gateway read no less than {big} polling clients"),
        );
    }
    failures
}

// === main ===

fn raise_file_limit() {
    // Tens of thousands of sockets (the direct pollers' connections, the
    // simulator's side of them) need more than the usual 1,024 descriptors;
    // the children inherit the limit. As root the hard limit can rise too.
    const WANT: u64 = 1 << 20;
    if rlimit::Resource::NOFILE.set(WANT, WANT).is_err() {
        let _ = rlimit::increase_nofile_limit(WANT);
    }
}

const SCENARIOS: [&str; 4] = ["unary", "capacity", "fanout", "economy"];

async fn run(plan: &Plan, only: &[String]) -> anyhow::Result<Figures> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let logs = std::env::temp_dir().join(format!("hailuo-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let sim = start_simulator(plan).await?;
    let mut figures = Figures::default();
    if wanted("unary") {
        unary(plan, &mut figures, &sim, &logs).await?;
    }
    if wanted("capacity") {
        capacity(plan, &mut figures, &sim, &logs).await?;
    }
    if wanted("fanout") {
        fanout(plan, &mut figures, &sim, &logs).await?;
    }
    if wanted("economy") {
        economy(plan, &mut figures, &sim, &logs).await?;
    }
    sim.proc.stop().await;
    let _ = std::fs::remove_dir_all(&logs);
    Ok(figures)
}

fn output_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md")
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; `cargo test --benches` runs the
    // target with no mode: nothing to do then.
    let mut words = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let mode = words.next();
    // Optional scenario names after the mode run only those (for work on
    // one of them); BENCHMARKS.md is written only by a whole run.
    let only: Vec<String> = words.collect();
    if mode.as_deref() != Some("forwarder")
        && let Some(unknown) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str()))
    {
        eprintln!("loadgen: unknown scenario `{unknown}`; choose from {SCENARIOS:?}");
        return ExitCode::from(2);
    }
    if mode.as_deref() == Some("forwarder") {
        let [upstream, port] = [only.first(), only.get(1)];
        let (Some(upstream), Some(port)) = (upstream, port) else {
            eprintln!("loadgen forwarder: UPSTREAM_URL PORT");
            return ExitCode::from(2);
        };
        let result = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run_bare_forwarder(upstream, port)));
        if let Err(e) = result {
            eprintln!("loadgen forwarder: {e:#}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let plan = match mode.as_deref() {
        Some("full") => Plan::full(),
        Some("smoke") => Plan::smoke(),
        None => {
            eprintln!("loadgen: pass `full` (writes BENCHMARKS.md) or `smoke`");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("loadgen: unknown mode `{other}`; use `full` or `smoke`");
            return ExitCode::from(2);
        }
    };
    raise_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started_load = load_average();
    let started = Instant::now();
    let mode = plan.mode;
    let result = runtime.block_on(run(&plan, &only));
    let figures = match result {
        Ok(figures) => figures,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let markdown = report(&plan, &figures, started_load, started.elapsed());
    match mode {
        Mode::Full if !only.is_empty() => {
            println!("{markdown}");
            ExitCode::SUCCESS
        }
        Mode::Full => {
            let path = output_path();
            if let Err(e) = std::fs::write(&path, &markdown) {
                eprintln!("loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("loadgen: wrote {}", path.display());
            for t in targets(&plan, &figures) {
                eprintln!(
                    "  {} {}: {}",
                    if t.met { "met   " } else { "MISSED" },
                    t.what,
                    t.figure
                );
            }
            ExitCode::SUCCESS
        }
        Mode::Smoke => {
            let failures = if only.is_empty() {
                smoke_checks(&plan, &figures)
            } else {
                Vec::new()
            };
            if failures.is_empty() {
                eprintln!(
                    "loadgen smoke: ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                ExitCode::SUCCESS
            } else {
                for failure in &failures {
                    eprintln!("loadgen smoke: FAILED: {failure}");
                }
                ExitCode::FAILURE
            }
        }
    }
}
