//! Scenario 4, upstream economy: recordInfo reads per task lifetime with
//! the gateway (polling, callbacks) and with clients polling on their own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use hailuo_gateway::pb::{TaskState, WatchTaskRequest};
use tokio::task::JoinSet;

use crate::PROMPT;
use crate::clients::{Direct, connect, create_via_gateway, direct_body};
use crate::figures::Figures;
use crate::plan::Plan;
use crate::processes::{Gateway, GatewayOptions, Simulator, load_average, start_gateway};

/// `n` watchers of one new task, spread evenly over `gateways` (the
/// replicas of a fleet, or one gateway), the task created through the
/// first; returns the recordInfo reads the simulator saw over the task's
/// lifetime.
pub async fn reads_per_task(
    plan: &Plan,
    direct: &Direct,
    gateways: &[&Gateway],
    n: usize,
) -> anyhow::Result<u64> {
    direct.reset().await?;
    // At most 1,000 streams per connection, as many connections on each
    // gateway.
    let connections = n.div_ceil(1_000).max(1).next_multiple_of(gateways.len());
    let mut clients = Vec::new();
    for c in 0..connections {
        clients.push(connect(&gateways[c % gateways.len()].grpc_url).await?);
    }
    let task_id = create_via_gateway(gateways[0], PROMPT).await?;
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

pub async fn economy(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 4. upstream economy");
    let direct = Arc::new(Direct::new(sim)?);
    let polling = start_gateway(sim, GatewayOptions::POLLING.scaled(plan.scale), logs).await?;
    let callbacks = start_gateway(sim, GatewayOptions::CALLBACKS.scaled(plan.scale), logs).await?;
    for _ in 0..plan.reps {
        figures.push("load/economy", load_average());
        for &n in &plan.economy_watchers {
            let reads = reads_per_task(plan, &direct, &[&polling], n).await?;
            figures.push(format!("economy/polling/{n}"), reads as f64);
            let reads = reads_per_task(plan, &direct, &[&callbacks], n).await?;
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
