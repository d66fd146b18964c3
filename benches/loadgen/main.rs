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
//!
//! One file per part: the [`plan`] of a run; the child [`processes`] and the
//! [`clients`] that talk to them; the seven scenarios ([`unary`] overhead
//! against the bare [`forwarder`], watch [`capacity`], [`fanout`] against
//! the bare [`broadcast`], upstream
//! [`economy`], the [`fleet`]'s cost on a CreateTask, watching across
//! replicas, [`fleet_watch`], and image [`uploads`]) filling
//! [`figures`]; the [`report`] written from them and the
//! [`smoke`] checks. This file holds the shared constants and `main`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::broadcast::run_bare_broadcast;
use crate::capacity::capacity;
use crate::economy::economy;
use crate::fanout::fanout;
use crate::figures::Figures;
use crate::fleet::fleet;
use crate::fleet_watch::fleet_watch;
use crate::forwarder::run_bare_forwarder;
use crate::plan::{Mode, Plan};
use crate::processes::{load_average, start_simulator};
use crate::report::{report, targets};
use crate::smoke::smoke_checks;
use crate::unary::unary;
use crate::uploads::uploads;

mod broadcast;
mod capacity;
mod clients;
mod economy;
mod fanout;
mod figures;
mod fleet;
mod fleet_watch;
mod forwarder;
mod plan;
mod processes;
mod report;
mod smoke;
mod unary;
mod uploads;

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

fn raise_file_limit() {
    // Tens of thousands of sockets (the direct pollers' connections, the
    // simulator's side of them) need more than the usual 1,024 descriptors;
    // the children inherit the limit. As root the hard limit can rise too.
    const WANT: u64 = 1 << 20;
    if rlimit::Resource::NOFILE.set(WANT, WANT).is_err() {
        let _ = rlimit::increase_nofile_limit(WANT);
    }
}

const SCENARIOS: [&str; 7] = [
    "unary",
    "capacity",
    "fanout",
    "economy",
    "fleet",
    "fleet_watch",
    "uploads",
];

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
    if wanted("fleet") {
        fleet(plan, &mut figures, &sim, &logs).await?;
    }
    if wanted("fleet_watch") {
        fleet_watch(plan, &mut figures, &logs).await?;
    }
    if wanted("uploads") {
        uploads(plan, &mut figures, &logs).await?;
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
    if !matches!(mode.as_deref(), Some("forwarder" | "broadcast"))
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
    if mode.as_deref() == Some("broadcast") {
        let Some(port) = only.first() else {
            eprintln!("loadgen broadcast: PORT");
            return ExitCode::from(2);
        };
        let result = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run_bare_broadcast(port)));
        if let Err(e) = result {
            eprintln!("loadgen broadcast: {e:#}");
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
