//! Scenario 1, unary overhead: CreateTask through the gateway, through the
//! bare forwarder and straight to the simulator, closed loop, side by side.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use hailuo_gateway::pb::CreateTaskRequest;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::PROMPT;
use crate::clients::{Direct, connect, create_request, direct_body};
use crate::figures::{Figures, quantile};
use crate::forwarder::start_bare_forwarder;
use crate::plan::Plan;
use crate::processes::{
    Gateway, GatewayOptions, Proc, Simulator, cpu_of, load_average, start_gateway,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the gateway.
    Gateway,
    /// Through the bare forwarder: receive gRPC, POST upstream, parse,
    /// answer; nothing else (the reference, rebuilt in this run).
    Bare,
    /// Straight to the simulator with reqwest.
    Direct,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Gateway, Route::Bare, Route::Direct];

    pub fn name(self) -> &'static str {
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

pub async fn unary(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 1. unary overhead");
    let gateway = start_gateway(sim, GatewayOptions::POLLING, logs).await?;
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
