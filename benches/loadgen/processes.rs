//! The child processes of a run (simulator, gateway), their CPU time and
//! RSS, and the machine's load.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::plan::Plan;
use crate::{API_KEY, bin};

/// A child process of this tool, killed when dropped.
pub struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    /// Spawns a child that prints one line to stdout once it is ready, and
    /// waits for that line.
    pub async fn start(command: &mut Command, what: &str) -> anyhow::Result<(Self, String)> {
        let (proc, mut lines) = Self::start_lines(command, what, 1).await?;
        Ok((proc, lines.remove(0)))
    }

    /// The same for a child whose ready banner is `count` lines.
    pub async fn start_lines(
        command: &mut Command,
        what: &str,
        count: usize,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn the {what}"))?;
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("{what} stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        while banner.len() < count {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .with_context(|| format!("{what} did not start in 20 s"))??
                .with_context(|| format!("{what} exited before it was ready"))?;
            banner.push(line);
        }
        let pid = child.id().with_context(|| format!("{what} pid"))?;
        Ok((Self { child, pid }, banner))
    }

    /// Starts a child that says nothing when ready (its caller checks).
    pub fn spawn(command: &mut Command, what: &str) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn the {what}"))?;
        let pid = child.id().with_context(|| format!("{what} pid"))?;
        Ok(Self { child, pid })
    }

    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(&self.pid.to_string())
    }

    /// CPU time to the nanosecond: the sum of the live threads' run time
    /// (`/proc/<pid>/task/*/schedstat`). For short phases, where the 10 ms
    /// tick of `cpu` is too coarse; a thread that exited in between is
    /// missed (tokio's workers do not).
    pub fn cpu_precise(&self) -> anyhow::Result<Duration> {
        let mut ns = 0u64;
        for thread in std::fs::read_dir(format!("/proc/{}/task", self.pid))? {
            let Ok(stat) = std::fs::read_to_string(thread?.path().join("schedstat")) else {
                continue;
            };
            ns += stat
                .split_whitespace()
                .next()
                .context("empty schedstat")?
                .parse::<u64>()?;
        }
        Ok(Duration::from_nanos(ns))
    }

    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The largest RSS the process has had (VmHWM).
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// A KiB figure of `/proc/<pid>/status`.
    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} line"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("empty {field} line"))?
            .parse()?;
        Ok(kib)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// utime + stime of a process (`self` or a pid), from `/proc/<pid>/stat`.
pub fn cpu_of(pid: &str) -> anyhow::Result<Duration> {
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

pub fn clock_ticks() -> u64 {
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

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Simulator {
    pub proc: Proc,
    /// kie.ai's API host.
    pub url: String,
    /// The upload host (kie.ai's file API and its storage).
    pub upload_url: String,
}

pub async fn start_simulator(plan: &Plan) -> anyhow::Result<Simulator> {
    start_simulator_with(plan, &[]).await
}

/// The same, with extra environment variables (e.g. `SIM_HMAC_KEY`).
pub async fn start_simulator_with(plan: &Plan, env: &[(&str, &str)]) -> anyhow::Result<Simulator> {
    let [waiting, queuing, generating] = plan.sim_timings();
    let mut command = Command::new(bin());
    command
        .arg("simulate")
        .args(["--listen", "127.0.0.1:0", "--latency", "0ms"])
        // Every createTask costs credits; the benchmark creates millions.
        .args(["--credits", "1000000000000000"])
        .args(["--waiting", &format!("{}ms", waiting.as_millis())])
        .args(["--queuing", &format!("{}ms", queuing.as_millis())])
        .args(["--generating", &format!("{}ms", generating.as_millis())])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stderr(Stdio::null());
    let (proc, banner) = Proc::start_lines(&mut command, "simulator", 2).await?;
    let url_after = |line: &str, prefix: &str| {
        line.strip_prefix(prefix)
            .map(|url| url.trim().to_owned())
            .with_context(|| format!("unexpected simulator banner line `{line}`"))
    };
    let url = url_after(&banner[0], "kie.ai simulator listening on ")?;
    let upload_url = url_after(&banner[1], "kie.ai upload API listening on ")?;
    Ok(Simulator {
        proc,
        url,
        upload_url,
    })
}

pub struct Gateway {
    pub proc: Proc,
    pub grpc_url: String,
    /// The admin listener: metrics.
    pub admin_url: String,
}

#[derive(Clone, Copy)]
pub struct GatewayOptions {
    callbacks: bool,
    /// Poll cadence and safety poll, scaled like the simulator.
    scale: f64,
}

impl GatewayOptions {
    /// Polling only, at the gateway's own cadence.
    pub const POLLING: Self = Self {
        callbacks: false,
        scale: 1.0,
    };
    /// Callbacks on (to its own `/callbacks/kie`), at its own cadence.
    pub const CALLBACKS: Self = Self {
        callbacks: true,
        scale: 1.0,
    };

    /// The same with the poll cadence and safety poll scaled by `scale`.
    pub fn scaled(self, scale: f64) -> Self {
        Self { scale, ..self }
    }
}

pub async fn start_gateway(
    sim: &Simulator,
    options: GatewayOptions,
    logs: &Path,
) -> anyhow::Result<Gateway> {
    start_gateway_with(sim, options, logs, &[]).await
}

/// The same, with extra environment variables (e.g. `GATEWAY_REDIS_URL`).
pub async fn start_gateway_with(
    sim: &Simulator,
    options: GatewayOptions,
    logs: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<Gateway> {
    let grpc_port = free_port()?;
    let http_port = free_port()?;
    let http_url = format!("http://127.0.0.1:{http_port}");
    let admin_port = free_port()?;
    let log_path = logs.join(format!("gateway-{grpc_port}.log"));
    let log = std::fs::File::create(&log_path)?;
    let scaled = |secs: f64| format!("{}ms", (secs * 1000.0 * options.scale).round() as u64);
    let mut command = Command::new(bin());
    command
        .env_clear()
        .env("KIE_API_KEY", API_KEY)
        .env("KIE_BASE_URL", &sim.url)
        .env("KIE_UPLOAD_BASE_URL", &sim.upload_url)
        .env("GATEWAY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
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
        .env("GATEWAY_SHUTDOWN_GRACE", "1s")
        // No load balancer in front to wait for.
        .env("GATEWAY_DRAIN_DELAY", "0s");
    // Extra settings for experiments, e.g. `TOKIO_WORKER_THREADS=1`.
    if let Ok(extra) = std::env::var("LOADGEN_GATEWAY_ENV") {
        for pair in extra.split(',').filter(|p| !p.is_empty()) {
            if let Some((name, value)) = pair.split_once('=') {
                command.env(name, value);
            }
        }
    }
    command.envs(env.iter().copied());
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
        admin_url: format!("http://127.0.0.1:{admin_port}"),
    })
}
