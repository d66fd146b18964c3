//! Scenario 2, watch capacity: idle WatchTask streams, a burst on one
//! connection and then the rest, and what they cost the gateway in RSS.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hailuo_gateway::pb::{WatchTaskRequest, WatchTaskResponse};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::clients::{connect_streams, create_via_gateway, gauge, http_client, wait_for};
use crate::figures::Figures;
use crate::plan::Plan;
use crate::processes::{GatewayOptions, Simulator, load_average, start_gateway};
use crate::{PROMPT, STREAMS_PER_CONNECTION};

#[derive(Default)]
pub struct StreamCounters {
    pub opened: AtomicUsize,
    pub failed: AtomicUsize,
    /// Streams that ended or broke after their first message.
    pub ended: AtomicUsize,
    pub first_error: Mutex<Option<String>>,
    /// Streams lost, by connection, phase and status (code and message):
    /// a whole connection lost at once reads differently from a gateway
    /// ending streams one by one.
    pub losses: Mutex<BTreeMap<String, usize>>,
}

impl StreamCounters {
    fn error(&self, e: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }

    fn lost(&self, connection: usize, phase: &str, why: String) {
        let mut losses = self.losses.lock().unwrap_or_else(|p| p.into_inner());
        *losses
            .entry(format!("connection {connection}, {phase}: {why}"))
            .or_default() += 1;
    }

    /// The losses tallied, one line each (`count × reason`).
    pub fn loss_lines(&self) -> Vec<String> {
        let losses = self.losses.lock().unwrap_or_else(|p| p.into_inner());
        losses
            .iter()
            .map(|(why, n)| format!("{n} × {why}"))
            .collect()
    }
}

/// Why a stream ended: its status's code and message, or a clean end.
fn why(result: &Result<Option<WatchTaskResponse>, Status>) -> String {
    match result {
        Ok(Some(_)) => "a message".to_owned(),
        Ok(None) => "ended with OK".to_owned(),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Idle WatchTask streams of one task, each held until `close`.
pub struct IdleStreams {
    grpc_url: String,
    task_id: String,
    pub counters: Arc<StreamCounters>,
    stop: CancellationToken,
    streams: JoinSet<()>,
    /// Connections opened so far, to name each in `losses`.
    connections: usize,
}

impl IdleStreams {
    pub fn new(grpc_url: &str, task_id: &str) -> Self {
        Self {
            grpc_url: grpc_url.to_owned(),
            task_id: task_id.to_owned(),
            counters: Arc::new(StreamCounters::default()),
            stop: CancellationToken::new(),
            streams: JoinSet::new(),
            connections: 0,
        }
    }

    /// Opens `count` more streams at once on a new connection.
    pub async fn open(&mut self, count: usize) -> anyhow::Result<()> {
        let client = connect_streams(&self.grpc_url).await?;
        self.connections += 1;
        let connection = self.connections;
        for _ in 0..count {
            let mut client = client.clone();
            let counters = self.counters.clone();
            let stop = self.stop.clone();
            let task_id = self.task_id.clone();
            self.streams.spawn(async move {
                let mut stream = match client.watch_task(WatchTaskRequest { task_id }).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        counters.lost(connection, "open", why(&Err(status.clone())));
                        counters.error(format!("open: {status}"));
                        return;
                    }
                };
                match stream.message().await {
                    Ok(Some(_)) => counters.opened.fetch_add(1, Ordering::Relaxed),
                    other => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        counters.lost(connection, "first message", why(&other));
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
                                counters.lost(connection, "held", why(&other));
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

    /// Streams that got their first message or failed to.
    pub fn settled(&self) -> usize {
        self.counters.opened.load(Ordering::Relaxed) + self.counters.failed.load(Ordering::Relaxed)
    }

    pub async fn close(mut self) {
        self.stop.cancel();
        self.streams.shutdown().await;
    }
}

pub async fn capacity(
    plan: &Plan,
    figures: &mut Figures,
    sim: &Simulator,
    logs: &Path,
) -> anyhow::Result<()> {
    eprintln!("== 2. watch capacity");
    let http = http_client()?;
    for _ in 0..plan.reps {
        figures.push("load/capacity", load_average());
        let gateway = start_gateway(sim, GatewayOptions::POLLING, logs).await?;
        let task_id = create_via_gateway(&gateway, &format!("{PROMPT} [sim:never]")).await?;
        let mut held = IdleStreams::new(&gateway.grpc_url, &task_id);
        let counters = held.counters.clone();
        // One stream first: the task's poller and its first read exist
        // before the baseline is taken.
        held.open(1).await?;
        wait_for("the first stream", Duration::from_secs(20), || {
            held.settled() >= 1
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base_kib = gateway.proc.rss_kib()?;

        // The burst: all at once on one connection.
        let started = Instant::now();
        held.open(plan.burst).await?;
        let target = 1 + plan.burst;
        wait_for("the burst to open", Duration::from_secs(120), || {
            held.settled() >= target
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
            held.open(n).await?;
            left -= n;
        }
        let target = 1 + plan.capacity;
        wait_for("all streams to open", Duration::from_secs(300), || {
            held.settled() >= target
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
        held.close().await;
    }
    Ok(())
}
