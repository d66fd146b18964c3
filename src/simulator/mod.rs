//! An in-process simulator of kie.ai's Hailuo image-to-video REST API, faithful
//! enough that code written against it works unchanged against kie.ai.
//!
//! - kie.ai routes (`api`): `POST /api/v1/jobs/createTask`,
//!   `GET /api/v1/jobs/recordInfo`, `GET /api/v1/chat/credit`,
//!   `POST /api/v1/common/download-url`. Errors are HTTP 200 with the code in
//!   the JSON body, as live.
//! - Tasks (`tasks`) move waiting → queuing → generating → success/fail,
//!   computed from elapsed time; a per-task timer sends the callback
//!   (`callbacks`) at the moment the task ends.
//! - Per-request scenarios by prompt marker (`scenarios`), whole-simulator
//!   faults (`faults`); both are listed below.
//! - Control and inspection under `/sim/` (`control`), also in-process
//!   through [`SimHandle`]. Result videos are served from
//!   `/sim/videos/{task_id}.mp4`.
//!
//! Like kie.ai's CDN, API requests without a `User-Agent` get HTTP 403
//! (`error code: 1010`): reqwest sends none unless told to.
//!
//! Every instance owns its state: two simulators in one process never share.
//!
//! Built only with the `sandbox` feature (on by default).
//!
// The reference below is also what the README links to: one copy of the
// scenario table, rendered here by rustdoc.
#![doc = include_str!("SCENARIOS.md")]

mod api;
mod callbacks;
mod config;
mod control;
mod faults;
mod handle;
mod scenarios;
mod server;
mod tasks;
mod validate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Faults, SimulateArgs, SimulatorConfig, StateTimings};
pub use handle::{
    CallbackAttempt, CompleteError, Completion, CompletionState, Counts, Endpoint, RecordedRequest,
    SimHandle,
};

/// A running simulator.
pub struct Simulator {
    local_addr: SocketAddr,
    handle: SimHandle,
    server: JoinHandle<()>,
}

impl Simulator {
    /// Serves on an already bound listener until `shutdown` is cancelled.
    pub async fn start(
        config: SimulatorConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<Simulator> {
        let local_addr = listener.local_addr()?;
        let base_url = format!("http://{}", reachable(local_addr));
        let handle = SimHandle::new(config, base_url, callback_client()?, shutdown.clone());
        tracing::debug!(base_url = handle.base_url(), "kie.ai simulator started");
        let server = tokio::spawn(server::serve(
            listener,
            router(handle.clone()),
            handle.clone(),
            shutdown,
        ));
        Ok(Simulator {
            local_addr,
            handle,
            server,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT` (an unspecified bind address is replaced by
    /// loopback so the URL can be dialled).
    pub fn base_url(&self) -> String {
        self.handle.base_url().to_owned()
    }

    /// A cheap clone of the state handle, for in-process tests.
    pub fn state(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Waits until the accept loop has stopped (after `shutdown` is cancelled).
    pub async fn stopped(self) {
        let _ = self.server.await;
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.handle.base_url())
            .finish_non_exhaustive()
    }
}

/// The simulator's routes over one instance's state.
fn router(sim: SimHandle) -> Router {
    Router::new()
        .route("/api/v1/jobs/createTask", post(api::create_task))
        .route("/api/v1/jobs/recordInfo", get(api::record_info))
        .route("/api/v1/chat/credit", get(api::credit))
        .route("/api/v1/common/download-url", post(api::download_url))
        .route("/sim/videos/{file}", get(api::video))
        .route("/sim/requests", get(control::requests))
        .route("/sim/counts", get(control::counts))
        .route("/sim/callbacks", get(control::callbacks))
        .route("/sim/reset", post(control::reset))
        .route("/sim/tasks/{task_id}/complete", post(control::complete))
        .fallback(api::not_found)
        .with_state(sim)
}

fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// No proxies: the callback receivers are usually on loopback.
fn callback_client() -> std::io::Result<reqwest::Client> {
    crate::http_client::builder()
        .map_err(std::io::Error::other)?
        .no_proxy()
        .user_agent(concat!("kie-simulator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(std::io::Error::other)
}

/// Runs the standalone simulator until SIGINT or SIGTERM. Prints exactly one
/// line to stdout, `kie.ai simulator listening on http://127.0.0.1:PORT`, for
/// a parent process to parse.
pub async fn run_standalone(
    args: SimulateArgs,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Listening starts before the ready line, so a parent that signals as
    // soon as it reads the line is never lost to the default handler.
    let stop = crate::shutdown::signal();
    let listener = TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    let simulator = Simulator::start(args.config(), listener, shutdown.clone()).await?;
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "kie.ai simulator listening on {}",
            simulator.base_url()
        )?;
        stdout.flush()?;
    }
    let signal = stop.await;
    tracing::info!(signal, "kie.ai simulator shutting down");
    shutdown.cancel();
    simulator.stopped().await;
    tracing::debug!("kie.ai simulator stopped");
    Ok(())
}
