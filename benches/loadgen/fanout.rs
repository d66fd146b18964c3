//! Scenario 3, fan-out: many watchers of one task, and how long a state
//! change takes to reach them all, through the gateway and through the bare
//! broadcast in the same run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{GetTaskRequest, TaskState, WatchTaskRequest};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::PROMPT;
use crate::broadcast::start_bare_broadcast;
use crate::clients::{Direct, connect, create_via_gateway, wait_for};
use crate::figures::{Figures, quantile};
use crate::plan::Plan;
use crate::processes::{
    GatewayOptions, Proc, Simulator, load_average, start_gateway, start_gateway_with,
};

/// The spread fan-out's tasks all change within this.
pub const SPREAD_OVER: Duration = Duration::from_secs(1);

/// The two fan-out paths, measured with the same clients and clock.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FanoutPath {
    Gateway,
    Bare,
}

impl FanoutPath {
    pub const ALL: [Self; 2] = [Self::Gateway, Self::Bare];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Bare => "bare",
        }
    }
}

/// One fan-out's figures.
pub struct Delivery {
    /// ms from just before the trigger to each SUCCEEDED, sorted.
    pub latencies: Vec<f64>,
    /// The server's CPU from the trigger to the last delivery.
    pub server_cpu: Duration,
}

/// Opens `watchers` WatchTask streams over `task_ids` (round robin) and
/// `clients`, waits until all hold GENERATING, runs `trigger` and times
/// each SUCCEEDED on this tool's clock, from just before the trigger or,
/// when it returns one instant per task, from just before its task's
/// change; `server`'s CPU is read around it.
pub async fn deliver<F: std::future::Future<Output = anyhow::Result<Vec<Instant>>>>(
    clients: &[VideoGenerationClient<Channel>],
    task_ids: &[String],
    watchers: usize,
    server: &Proc,
    trigger: impl FnOnce() -> F,
) -> anyhow::Result<Delivery> {
    let generating = Arc::new(AtomicUsize::new(0));
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut streams = JoinSet::new();
    for i in 0..watchers {
        let mut client = clients[i % clients.len()].clone();
        let task = i % task_ids.len();
        let task_id = task_ids[task].clone();
        let generating = generating.clone();
        let arrived_tx = arrived_tx.clone();
        streams.spawn(async move {
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
                        let _ = arrived_tx.send((task, Instant::now()));
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
        || generating.load(Ordering::Relaxed) >= watchers,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_before = server.cpu_precise()?;
    let changed = Instant::now();
    let starts = trigger().await?;
    let mut latencies = Vec::with_capacity(watchers);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while latencies.len() < watchers {
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some((task, at))) => {
                let from = starts.get(task).copied().unwrap_or(changed);
                latencies.push(at.saturating_duration_since(from).as_secs_f64() * 1e3);
            }
            _ => break,
        }
    }
    let server_cpu = server.cpu_precise()?.saturating_sub(cpu_before);
    streams.shutdown().await;
    latencies.sort_by(f64::total_cmp);
    Ok(Delivery {
        latencies,
        server_cpu,
    })
}

pub async fn fanout(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 3. fan-out");
    let direct = Direct::new(sim)?;
    let gateway = start_gateway(sim, GatewayOptions::CALLBACKS, logs).await?;
    let (bare, bare_url) = start_bare_broadcast().await?;
    let mut gateway_clients = Vec::new();
    let mut bare_clients = Vec::new();
    for _ in 0..plan.fanout_connections {
        gateway_clients.push(connect(&gateway.grpc_url).await?);
        bare_clients.push(connect(&bare_url).await?);
    }
    for rep in 0..plan.reps {
        figures.push("load/fanout", load_average());
        // Which path goes first alternates, so that neither always runs
        // on the machine the other just warmed or loaded.
        let mut order = FanoutPath::ALL;
        if rep % 2 == 1 {
            order.reverse();
        }
        for path in order {
            let delivery = match path {
                FanoutPath::Gateway => {
                    let task_id =
                        create_via_gateway(&gateway, &format!("{PROMPT} [sim:manual]")).await?;
                    let ids = [task_id.clone()];
                    deliver(
                        &gateway_clients,
                        &ids,
                        plan.fanout,
                        &gateway.proc,
                        || async {
                            direct.complete(&task_id).await?;
                            Ok(Vec::new())
                        },
                    )
                    .await?
                }
                FanoutPath::Bare => {
                    let mut trigger = bare_clients[0].clone();
                    deliver(
                        &bare_clients,
                        &["bare".to_owned()],
                        plan.fanout,
                        &bare,
                        || async move {
                            trigger.get_task(GetTaskRequest::default()).await?;
                            Ok(Vec::new())
                        },
                    )
                    .await?
                }
            };
            push_delivery(figures, &format!("fanout/{}", path.name()), &delivery);
            let l = &delivery.latencies;
            eprintln!(
                "  {}: {} of {} watchers got SUCCEEDED: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, server CPU {:.2} µs per message",
                path.name(),
                l.len(),
                plan.fanout,
                quantile(l, 0.5),
                quantile(l, 0.99),
                quantile(l, 1.0),
                per_message_us(&delivery),
            );
        }
        for what in ["p50", "p99", "max", "cpu_us"] {
            let [g, b] = FanoutPath::ALL.map(|p| {
                figures
                    .get(&format!("fanout/{}/{what}", p.name()))
                    .last()
                    .copied()
                    .unwrap_or(f64::NAN)
            });
            figures.push(format!("fanout/ratio/{what}"), g / b);
        }
    }
    gateway.proc.stop().await;
    bare.stop().await;
    spread(plan, figures, sim, logs).await
}

fn per_message_us(delivery: &Delivery) -> f64 {
    delivery.server_cpu.as_secs_f64() * 1e6 / delivery.latencies.len().max(1) as f64
}

fn push_delivery(figures: &mut Figures, prefix: &str, delivery: &Delivery) {
    let l = &delivery.latencies;
    figures.push(format!("{prefix}/delivered"), l.len() as f64);
    figures.push(format!("{prefix}/p50"), quantile(l, 0.5));
    figures.push(format!("{prefix}/p99"), quantile(l, 0.99));
    figures.push(format!("{prefix}/max"), quantile(l, 1.0));
    figures.push(format!("{prefix}/cpu_us"), per_message_us(delivery));
}

/// Item 5 of issue 15: `plan.fanout` watchers spread evenly over
/// `plan.spread_tasks` tasks, the tasks finished one after the other over
/// one second; each watcher is timed from its own task's change. A gateway
/// of its own, whose read budget (1,000/s) lets the tasks' first reads in
/// without queueing: what is measured is the delivery, not the budget.
async fn spread(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    let direct = Direct::new(sim)?;
    let gateway = start_gateway_with(
        sim,
        GatewayOptions::CALLBACKS,
        logs,
        &[("GATEWAY_READ_BUDGET", "1000")],
    )
    .await?;
    let mut clients = Vec::new();
    for _ in 0..plan.fanout_connections {
        clients.push(connect(&gateway.grpc_url).await?);
    }
    for _ in 0..plan.reps {
        figures.push("load/fanout_spread", load_average());
        let mut ids = Vec::with_capacity(plan.spread_tasks);
        for _ in 0..plan.spread_tasks {
            ids.push(create_via_gateway(&gateway, &format!("{PROMPT} [sim:manual]")).await?);
        }
        let gap = SPREAD_OVER / plan.spread_tasks as u32;
        let delivery = deliver(&clients, &ids, plan.fanout, &gateway.proc, || async {
            let first = tokio::time::Instant::now();
            let completions = ids.iter().enumerate().map(|(i, id)| {
                let direct = &direct;
                async move {
                    tokio::time::sleep_until(first + gap * i as u32).await;
                    let at = Instant::now();
                    direct.complete(id).await?;
                    Ok::<_, anyhow::Error>(at)
                }
            });
            futures_util::future::try_join_all(completions).await
        })
        .await?;
        push_delivery(figures, "fanout/spread", &delivery);
        figures.push(
            "fanout/spread/cpu_ms",
            delivery.server_cpu.as_secs_f64() * 1e3,
        );
        let l = &delivery.latencies;
        eprintln!(
            "  spread over {} tasks: {} of {} watchers got SUCCEEDED: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, gateway CPU {:.1} ms",
            plan.spread_tasks,
            l.len(),
            plan.fanout,
            quantile(l, 0.5),
            quantile(l, 0.99),
            quantile(l, 1.0),
            delivery.server_cpu.as_secs_f64() * 1e3,
        );
    }
    gateway.proc.stop().await;
    Ok(())
}
