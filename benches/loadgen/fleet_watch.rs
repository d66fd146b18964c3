//! Scenario 6, watching as a fleet (issue 12): the same work against the
//! single-process gateway and against three replicas sharing this run's own
//! `redis-server`, in one run.
//! - Reads: recordInfo reads over one task's life with N watchers on one
//!   gateway, spread over three replicas, and spread over three gateways
//!   without Redis (what a fleet costs kie.ai without coordination).
//! - Callbacks: from kie.ai's signed callback to each watcher's SUCCEEDED,
//!   with the watchers on the gateway called back (one process, or one
//!   replica of the fleet) and on the two replicas it did not reach.
//! - Idle streams: RSS per idle WatchTask stream, one process against each
//!   of three replicas holding as many.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{TaskState, WatchTaskRequest};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::capacity::IdleStreams;
use crate::clients::{
    Direct, connect, create_request, create_via_gateway, gauge, http_client, wait_for,
};
use crate::economy::reads_per_task;
use crate::figures::{Figures, quantile};
use crate::fleet::{Redis, start_redis};
use crate::plan::Plan;
use crate::processes::{
    Gateway, GatewayOptions, Simulator, load_average, start_gateway_with, start_simulator_with,
};
use crate::{PROMPT, STREAMS_PER_CONNECTION};

/// The key the simulator signs its callbacks with and the gateways check.
const WEBHOOK_KEY: &str = "loadgen-webhook-key";
pub const REPLICAS: usize = 3;

/// Where a callback's watchers are, against where it lands.
#[derive(Clone, Copy)]
pub enum Placement {
    /// The single-process gateway: watchers and callback on it.
    Single,
    /// A replica of the fleet called back, its own watchers.
    SameReplica,
    /// Watchers on two replicas, the callback to the third.
    CrossReplica,
}

impl Placement {
    pub const ALL: [Placement; 3] = [
        Placement::Single,
        Placement::SameReplica,
        Placement::CrossReplica,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Single => "single_process",
            Placement::SameReplica => "same_replica",
            Placement::CrossReplica => "cross_replica",
        }
    }
}

/// Where the reads figure's watchers are.
pub const READ_SETUPS: [&str; 3] = ["single_process", "fleet", "unshared"];

pub async fn fleet_watch(plan: &Plan, figures: &mut Figures, logs: &Path) -> anyhow::Result<()> {
    eprintln!("== 6. fleet: watching across replicas");
    let redis = start_redis()
        .await
        .context("the fleet scenario needs redis-server on PATH (scripts/test.sh installs it)")?;
    // A simulator of its own that signs its callbacks, as kie.ai does when a
    // webhook key is set; the gateways check them.
    let sim = start_simulator_with(plan, &[("SIM_HMAC_KEY", WEBHOOK_KEY)]).await?;
    let direct = Direct::new(&sim)?;
    // `LOADGEN_FLEET_WATCH_PARTS=idle` (a comma list of reads, callbacks,
    // idle) runs only those parts: to repeat one figure, e.g. in a loop
    // hunting a rare loss. All of them by default.
    let parts = std::env::var("LOADGEN_FLEET_WATCH_PARTS").unwrap_or_default();
    let wanted = |part: &str| parts.is_empty() || parts.split(',').any(|p| p.trim() == part);
    if wanted("reads") {
        reads(plan, figures, &sim, &direct, &redis, logs).await?;
    }
    if wanted("callbacks") {
        callbacks(plan, figures, &sim, &direct, &redis, logs).await?;
    }
    if wanted("idle") {
        idle_streams(plan, figures, &sim, &redis, logs).await?;
    }
    sim.proc.stop().await;
    redis.proc.stop().await;
    Ok(())
}

/// Three gateways sharing `redis` under `prefix`: one fleet.
async fn start_replicas(
    sim: &Simulator,
    options: GatewayOptions,
    logs: &Path,
    redis: &Redis,
    prefix: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Gateway>> {
    let mut env = env.to_vec();
    env.extend([
        ("GATEWAY_REDIS_URL", redis.url.as_str()),
        ("GATEWAY_REDIS_PREFIX", prefix),
    ]);
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(start_gateway_with(sim, options, logs, &env).await?);
    }
    Ok(replicas)
}

async fn stop_all(gateways: Vec<Gateway>) {
    for gateway in gateways {
        gateway.proc.stop().await;
    }
}

/// The reads figure: the economy scenario's task life and polling cadence
/// (scaled alike), watched from each setup in turn.
async fn reads(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    direct: &Direct,
    redis: &Redis,
    logs: &Path,
) -> anyhow::Result<()> {
    let options = GatewayOptions::POLLING.scaled(plan.scale);
    let single = start_gateway_with(sim, options, logs, &[]).await?;
    let fleet = start_replicas(sim, options, logs, redis, "loadgen-reads", &[]).await?;
    let mut unshared = Vec::new();
    for _ in 0..REPLICAS {
        unshared.push(start_gateway_with(sim, options, logs, &[]).await?);
    }
    for _ in 0..plan.reps {
        figures.push("load/fleet_watch", load_average());
        for setup in READ_SETUPS {
            let gateways: Vec<&Gateway> = match setup {
                "single_process" => vec![&single],
                "fleet" => fleet.iter().collect(),
                _ => unshared.iter().collect(),
            };
            let reads = reads_per_task(plan, direct, &gateways, plan.fleet_watchers).await?;
            figures.push(format!("fleet_watch/reads/{setup}"), reads as f64);
        }
        let last = |s: &str| {
            figures
                .get(&format!("fleet_watch/reads/{s}"))
                .last()
                .copied()
                .unwrap_or(f64::NAN)
        };
        eprintln!(
            "  reads for one task, {} watchers: one process {}, three replicas {}, three gateways without Redis {}",
            plan.fleet_watchers,
            last("single_process"),
            last("fleet"),
            last("unshared"),
        );
    }
    single.proc.stop().await;
    stop_all(fleet).await;
    stop_all(unshared).await;
    Ok(())
}

/// The callback figure: per task, two watchers hold the task's first state,
/// then the simulator completes it and sends its signed callback at once;
/// timed on this tool's clock from just before that call to each watcher's
/// SUCCEEDED.
async fn callbacks(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    direct: &Direct,
    redis: &Redis,
    logs: &Path,
) -> anyhow::Result<()> {
    // Polls 10× the default cadence apart (20 s, longer than any wait
    // here): only the callback's wake-up ends a watch in time. The read
    // budget is raised so that the tasks' first reads, one task after the
    // other, do not wait on kie.ai's 10 reads/s.
    let options = GatewayOptions::CALLBACKS.scaled(10.0);
    let env = [
        ("KIE_WEBHOOK_HMAC_KEY", WEBHOOK_KEY),
        ("GATEWAY_READ_BUDGET", "1000"),
    ];
    let single = start_gateway_with(sim, options, logs, &env).await?;
    let fleet = start_replicas(sim, options, logs, redis, "loadgen-callbacks", &env).await?;
    let single_client = connect(&single.grpc_url).await?;
    let mut fleet_clients = Vec::new();
    for replica in &fleet {
        fleet_clients.push(connect(&replica.grpc_url).await?);
    }
    for rep in 0..plan.reps {
        let mut order = Placement::ALL;
        order.rotate_left(rep % Placement::ALL.len());
        for placement in order {
            let mut latencies = Vec::new();
            let mut missed = 0;
            for n in 0..plan.fleet_callback_tasks {
                // Rotate the roles over the replicas.
                let (called, watched) = match placement {
                    Placement::Single => (&single_client, [&single_client, &single_client]),
                    Placement::SameReplica => {
                        let r = &fleet_clients[n % REPLICAS];
                        (r, [r, r])
                    }
                    Placement::CrossReplica => (
                        &fleet_clients[(n + 2) % REPLICAS],
                        [
                            &fleet_clients[n % REPLICAS],
                            &fleet_clients[(n + 1) % REPLICAS],
                        ],
                    ),
                };
                let arrivals = one_callback(direct, called, watched).await?;
                missed += arrivals.iter().filter(|a| a.is_none()).count();
                latencies.extend(arrivals.into_iter().flatten());
            }
            latencies.sort_by(f64::total_cmp);
            let key = |what: &str| format!("fleet_watch/callback/{}/{what}", placement.name());
            let samples = plan.fleet_callback_tasks * 2;
            figures.push(key("samples"), samples as f64);
            figures.push(key("delivered"), latencies.len() as f64);
            figures.push(key("p50"), quantile(&latencies, 0.50));
            figures.push(key("p99"), quantile(&latencies, 0.99));
            figures.push(key("max"), quantile(&latencies, 1.0));
            eprintln!(
                "  callback to watcher, {:14}: {} of {samples} watchers got SUCCEEDED ({missed} did not in 10 s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                placement.name(),
                latencies.len(),
                quantile(&latencies, 0.50),
                quantile(&latencies, 0.99),
                quantile(&latencies, 1.0),
            );
        }
        let p99 = |p: Placement| {
            figures
                .get(&format!("fleet_watch/callback/{}/p99", p.name()))
                .last()
                .copied()
                .unwrap_or(f64::NAN)
        };
        figures.push(
            "fleet_watch/callback/p99_ratio_cross_vs_single",
            p99(Placement::CrossReplica) / p99(Placement::Single),
        );
    }
    single.proc.stop().await;
    stop_all(fleet).await;
    Ok(())
}

/// One `[sim:manual]` task created through `called` (so kie.ai calls that
/// gateway back), watched through `watched`; each watcher's milliseconds
/// from the completion to its SUCCEEDED, `None` for one that did not get it
/// within 10 s.
async fn one_callback(
    direct: &Direct,
    called: &VideoGenerationClient<Channel>,
    watched: [&VideoGenerationClient<Channel>; 2],
) -> anyhow::Result<Vec<Option<f64>>> {
    let task_id = called
        .clone()
        .create_task(create_request(&format!("{PROMPT} [sim:manual]")))
        .await?
        .into_inner()
        .task_id;
    let mut streams = Vec::new();
    for client in watched {
        let mut stream = client
            .clone()
            .watch_task(WatchTaskRequest {
                task_id: task_id.clone(),
            })
            .await?
            .into_inner();
        // The first message: the watch is live and the task not over.
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("no first message in 10 s")??
            .and_then(|m| m.task)
            .context("the watch ended before its first state")?;
        ensure!(
            !matches!(first.state(), TaskState::Succeeded | TaskState::Failed),
            "task {task_id} ended before its completion"
        );
        streams.push(stream);
    }
    let changed = Instant::now();
    direct.complete(&task_id).await?;
    let mut ends = JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        ends.spawn(async move {
            let end = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(Some(message)) = stream.message().await {
                    if message.task.map(|t| t.state()) == Some(TaskState::Succeeded) {
                        return Some(changed.elapsed().as_secs_f64() * 1e3);
                    }
                }
                None
            });
            (i, end.await.ok().flatten())
        });
    }
    let mut arrivals = vec![None; 2];
    while let Some(joined) = ends.join_next().await {
        let (i, at) = joined?;
        arrivals[i] = at;
    }
    Ok(arrivals)
}

/// The memory figure: per repetition, a fresh single process and a fresh
/// fleet each hold `fleet_idle_streams` idle streams per process of one
/// `[sim:never]` task (the fleet's on three replicas: one polls, two
/// follow).
async fn idle_streams(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    redis: &Redis,
    logs: &Path,
) -> anyhow::Result<()> {
    let options = GatewayOptions::POLLING;
    for rep in 0..plan.reps {
        let single = vec![start_gateway_with(sim, options, logs, &[]).await?];
        let one = hold_idle_streams(plan, single).await?;
        let prefix = format!("loadgen-idle-{rep}");
        let fleet = start_replicas(sim, options, logs, redis, &prefix, &[]).await?;
        let three = hold_idle_streams(plan, fleet).await?;
        for (setup, held) in [("single_process", &one), ("fleet", &three)] {
            let key = |what: &str| format!("fleet_watch/idle/{setup}/{what}");
            figures.push(key("opened"), held.opened as f64);
            figures.push(key("lost"), held.lost as f64);
            figures.push(key("gauge"), held.gauge);
            figures.push(key("kib_per_stream"), held.kib_per_stream);
            figures.push(key("worst_kib_per_stream"), held.worst_kib_per_stream);
        }
        figures.push(
            "fleet_watch/idle/ratio",
            three.kib_per_stream / one.kib_per_stream,
        );
        eprintln!(
            "  idle streams, {} per process: one process {:.2} KiB/stream, three replicas {:.2} KiB/stream (worst replica {:.2}), {} + {} lost",
            plan.fleet_idle_streams,
            one.kib_per_stream,
            three.kib_per_stream,
            three.worst_kib_per_stream,
            one.lost,
            three.lost,
        );
        for (setup, held) in [("one process", &one), ("three replicas", &three)] {
            for line in &held.losses {
                eprintln!("    lost on {setup}: {line}");
            }
        }
    }
    Ok(())
}

/// What holding the idle streams cost.
struct Held {
    /// Streams that got their first message, over every process.
    opened: usize,
    /// Streams that failed to open or ended while held.
    lost: usize,
    /// The processes' `active_watchers` gauges added up, less the baseline
    /// streams.
    gauge: f64,
    /// ΔRSS over every process / streams over every process.
    kib_per_stream: f64,
    /// The same for the process that grew most.
    worst_kib_per_stream: f64,
    /// Why streams were lost: `gRPC URL (count × connection, phase: status)`.
    losses: Vec<String>,
}

/// Opens `fleet_idle_streams` idle streams of one `[sim:never]` task on
/// each of `gateways`, holds them, measures, and stops the gateways.
async fn hold_idle_streams(plan: &Plan, gateways: Vec<Gateway>) -> anyhow::Result<Held> {
    let per_process = plan.fleet_idle_streams;
    let http = http_client()?;
    let task_id = create_via_gateway(&gateways[0], &format!("{PROMPT} [sim:never]")).await?;
    let mut held: Vec<IdleStreams> = gateways
        .iter()
        .map(|g| IdleStreams::new(&g.grpc_url, &task_id))
        .collect();
    // One stream each first: every process's poller (the fleet's lease
    // holder and its followers) exists before the baseline is taken.
    for streams in &mut held {
        streams.open(1).await?;
    }
    settle(&held, 1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base: Vec<u64> = gateways
        .iter()
        .map(|g| g.proc.rss_kib())
        .collect::<Result<_, _>>()?;
    for streams in &mut held {
        let mut left = per_process;
        while left > 0 {
            let n = left.min(STREAMS_PER_CONNECTION);
            streams.open(n).await?;
            left -= n;
        }
    }
    settle(&held, 1 + per_process).await?;
    tokio::time::sleep(plan.hold).await;
    let mut grown = Vec::new();
    let mut gauges = 0.0;
    for (gateway, base) in gateways.iter().zip(&base) {
        grown.push(gateway.proc.rss_kib()?.saturating_sub(*base) as f64);
        gauges += gauge(&http, gateway, "hailuo_gateway_active_watchers").await? - 1.0;
    }
    let count = |f: fn(&IdleStreams) -> usize| held.iter().map(f).sum::<usize>();
    let result = Held {
        opened: count(|s| s.counters.opened.load(Ordering::Relaxed)) - held.len(),
        lost: count(|s| {
            s.counters.failed.load(Ordering::Relaxed) + s.counters.ended.load(Ordering::Relaxed)
        }),
        gauge: gauges,
        kib_per_stream: grown.iter().sum::<f64>() / (per_process * gateways.len()) as f64,
        worst_kib_per_stream: grown.iter().copied().fold(0.0, f64::max) / per_process as f64,
        losses: held
            .iter()
            .zip(&gateways)
            .flat_map(|(streams, gateway)| {
                // The log is `gateway-<port>.log`.
                let process = gateway.grpc_url.clone();
                streams
                    .counters
                    .loss_lines()
                    .into_iter()
                    .map(move |line| format!("{process} ({line})"))
            })
            .collect(),
    };
    // The gateways go first, so that closing the streams costs the run
    // nothing (as in the capacity scenario).
    stop_all(gateways).await;
    for streams in held {
        streams.close().await;
    }
    Ok(result)
}

/// Waits until every process's streams got their first message or failed.
async fn settle(held: &[IdleStreams], each: usize) -> anyhow::Result<()> {
    wait_for("the idle streams to open", Duration::from_secs(120), || {
        held.iter().all(|s| s.settled() >= each)
    })
    .await
}
