//! Scenario 3, fan-out: many watchers of one task, and how long a state
//! change takes to reach them all.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hailuo_gateway::pb::{TaskState, WatchTaskRequest};
use tokio::task::JoinSet;

use crate::PROMPT;
use crate::clients::{Direct, connect, create_via_gateway, wait_for};
use crate::figures::{Figures, quantile};
use crate::plan::Plan;
use crate::processes::{GatewayOptions, Simulator, load_average, start_gateway};

pub async fn fanout(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 3. fan-out");
    let direct = Direct::new(sim)?;
    let gateway = start_gateway(sim, GatewayOptions::CALLBACKS, logs).await?;
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
