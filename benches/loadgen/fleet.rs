//! Scenario 5, the fleet's cost on a CreateTask: the single-process gateway
//! without and with a `request_id`, and a gateway whose request_ids live in
//! Redis (`GATEWAY_REDIS_URL`, a `redis-server` of this run's own), closed
//! loop, interleaved. Every request_id is new, so each call reserves and
//! settles a key (the settle rides to Redis with a later call's reserve).
//! Redis's own CPU is counted beside the gateway's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hailuo_gateway::pb::CreateTaskRequest;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use tokio::process::Command;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::PROMPT;
use crate::clients::{Direct, connect, create_request};
use crate::figures::{Figures, quantile};
use crate::plan::Plan;
use crate::processes::{
    GatewayOptions, Proc, Simulator, free_port, load_average, start_gateway_with,
};

/// The paths measured, in the order of the first repetition.
#[derive(Clone, Copy)]
pub enum Path5 {
    /// One process, no request_id.
    Plain,
    /// One process, a new request_id per call (the in-memory store).
    Idempotent,
    /// A new request_id per call, kept in Redis.
    Fleet,
}

impl Path5 {
    pub const ALL: [Path5; 3] = [Path5::Plain, Path5::Idempotent, Path5::Fleet];

    pub fn name(self) -> &'static str {
        match self {
            Path5::Plain => "plain",
            Path5::Idempotent => "request_id",
            Path5::Fleet => "fleet_request_id",
        }
    }
}

/// This run's own `redis-server` (scenarios 5 and 6).
pub struct Redis {
    pub proc: Proc,
    pub url: String,
}

pub async fn start_redis() -> anyhow::Result<Redis> {
    let port = free_port()?;
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile", "/dev/null"]);
    let proc = Proc::spawn(&mut command, "redis-server")?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(anyhow!("redis-server did not listen on {port} in 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Redis {
        proc,
        url: format!("redis://127.0.0.1:{port}/0"),
    })
}

/// `concurrency` workers calling until `until`; each call a new
/// request_id when `unique`. Latencies in µs, and the errors.
async fn closed_loop(
    client: &VideoGenerationClient<Channel>,
    unique: bool,
    concurrency: usize,
    until: Instant,
    run: &str,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let mut client = client.clone();
        let base = create_request(PROMPT);
        let run = run.to_owned();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(50_000);
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let request = CreateTaskRequest {
                    request_id: if unique {
                        format!("{run}-{worker}-{n}")
                    } else {
                        String::new()
                    },
                    ..base.clone()
                };
                let started = Instant::now();
                match client.create_task(request).await {
                    Ok(_) => latencies.push(started.elapsed().as_secs_f64() * 1e6),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(joined) = workers.join_next().await {
        let (latencies, e) = joined?;
        all.extend(latencies);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    Ok((all, errors))
}

pub async fn fleet(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 5. fleet: CreateTask with request_ids in Redis");
    let redis = start_redis()
        .await
        .context("the fleet scenario needs redis-server on PATH (scripts/test.sh installs it)")?;
    let single = start_gateway_with(sim, GatewayOptions::POLLING, logs, &[]).await?;
    let fleet = start_gateway_with(
        sim,
        GatewayOptions::POLLING,
        logs,
        &[("GATEWAY_REDIS_URL", redis.url.as_str())],
    )
    .await?;
    let direct = Direct::new(sim)?;
    let clients = (
        connect(&single.grpc_url).await?,
        connect(&fleet.grpc_url).await?,
    );
    for rep in 0..plan.reps {
        figures.push("load/fleet", load_average());
        for &c in &plan.concurrency {
            let mut order = Path5::ALL;
            order.rotate_left(rep % Path5::ALL.len());
            for path in order {
                let (client, gateway) = match path {
                    Path5::Plain | Path5::Idempotent => (&clients.0, &single),
                    Path5::Fleet => (&clients.1, &fleet),
                };
                let unique = !matches!(path, Path5::Plain);
                let run = format!("r{rep}c{c}{}", path.name());
                let warm = Instant::now() + plan.warmup;
                closed_loop(client, unique, c, warm, &format!("{run}w")).await?;
                let (gw0, redis0) = (gateway.proc.cpu()?, redis.proc.cpu()?);
                let started = Instant::now();
                let (latencies, errors) =
                    closed_loop(client, unique, c, started + plan.phase, &run).await?;
                let (gw1, redis1) = (gateway.proc.cpu()?, redis.proc.cpu()?);
                direct.reset().await?;
                phase_figures(
                    figures,
                    path,
                    c,
                    &latencies,
                    errors,
                    started.elapsed(),
                    (gw1 - gw0, redis1 - redis0),
                );
            }
            let k = |p: &str, what: &str| figures.get(&format!("fleet/{p}/c{c}/{what}"))[rep];
            let fleet_cpu =
                k("fleet_request_id", "cpu_gateway") + k("fleet_request_id", "cpu_redis");
            let vs_request_id = fleet_cpu / k("request_id", "cpu_gateway");
            let vs_plain = fleet_cpu / k("plain", "cpu_gateway");
            // The gateway alone, beside: what moved into Redis's scripts is
            // still paid for, so the target is read on the sum.
            let gateway_only =
                k("fleet_request_id", "cpu_gateway") / k("request_id", "cpu_gateway");
            figures.push(format!("fleet/cpu_ratio_vs_request_id/c{c}"), vs_request_id);
            figures.push(
                format!("fleet/cpu_ratio_gateway_only_vs_request_id/c{c}"),
                gateway_only,
            );
            figures.push(format!("fleet/cpu_ratio_vs_plain/c{c}"), vs_plain);
        }
    }
    single.proc.stop().await;
    fleet.proc.stop().await;
    redis.proc.stop().await;
    Ok(())
}

fn phase_figures(
    figures: &mut Figures,
    path: Path5,
    c: usize,
    latencies: &[f64],
    errors: u64,
    elapsed: Duration,
    (gateway_cpu, redis_cpu): (Duration, Duration),
) {
    let calls = latencies.len() as f64;
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls.max(1.0);
    let key = |what: &str| format!("fleet/{}/c{c}/{what}", path.name());
    figures.push(key("rps"), calls / elapsed.as_secs_f64());
    figures.push(key("p50"), quantile(latencies, 0.50));
    figures.push(key("p99"), quantile(latencies, 0.99));
    figures.push(key("cpu_gateway"), per_call(gateway_cpu));
    figures.push(key("cpu_redis"), per_call(redis_cpu));
    figures.push(key("errors"), errors as f64);
    eprintln!(
        "  {:17} c{c:<3} {:>7.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  gateway {:>6.1} µs/call  redis {:>5.1} µs/call  errors {errors}",
        path.name(),
        calls / elapsed.as_secs_f64(),
        quantile(latencies, 0.50),
        quantile(latencies, 0.99),
        per_call(gateway_cpu),
        per_call(redis_cpu),
    );
}
