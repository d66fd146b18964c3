//! An in-process simulator of kie.ai's Hailuo image-to-video REST API, faithful
//! enough that code written against it works unchanged against kie.ai.
//!
//! - kie.ai routes (`api`): `POST /api/v1/jobs/createTask`,
//!   `GET /api/v1/jobs/recordInfo`, `GET /api/v1/chat/credit`,
//!   `POST /api/v1/common/download-url`. Errors are HTTP 200 with the code in
//!   the JSON body, as live.
//! - The upload host (`uploads`) on a listener of its own, as kie.ai's file
//!   API is on a host of its own: `POST /api/file-stream-upload`,
//!   `/api/file-base64-upload`, `/api/file-url-upload`, and the uploaded
//!   files (`files`) at their `downloadUrl`s under `/files/`.
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
mod files;
mod handle;
mod links;
mod scenarios;
mod server;
mod tasks;
mod uploads;
mod validate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Faults, FileSettings, SimulateArgs, SimulatorConfig, StateTimings};
pub use files::IMAGE_MAX_BYTES;
pub use handle::{
    CallbackAttempt, CompleteError, Completion, CompletionState, Counts, Endpoint, RecordedRequest,
    SimHandle,
};

/// A running simulator.
pub struct Simulator {
    local_addr: SocketAddr,
    upload_addr: SocketAddr,
    handle: SimHandle,
    servers: [JoinHandle<()>; 2],
}

impl Simulator {
    /// Serves kie.ai's API on an already bound listener, and its upload host
    /// on a new port of the same address, until `shutdown` is cancelled.
    pub async fn start(
        config: SimulatorConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<Simulator> {
        let upload_listener = TcpListener::bind((listener.local_addr()?.ip(), 0)).await?;
        Self::start_with_upload(config, listener, upload_listener, shutdown).await
    }

    /// Serves kie.ai's API on `listener` and its upload host (the file API
    /// and the files' storage) on `upload_listener`.
    pub async fn start_with_upload(
        config: SimulatorConfig,
        listener: TcpListener,
        upload_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<Simulator> {
        let local_addr = listener.local_addr()?;
        let upload_addr = upload_listener.local_addr()?;
        let base_url = format!("http://{}", reachable(local_addr));
        let upload_base_url = url::Url::parse(&format!("http://{}", reachable(upload_addr)))
            .map_err(std::io::Error::other)?;
        let handle = SimHandle::new(
            config,
            base_url,
            upload_base_url,
            callback_client()?,
            shutdown.clone(),
        );
        tracing::debug!(
            base_url = handle.base_url(),
            upload_base_url = handle.upload_base_url(),
            "kie.ai simulator started"
        );
        let api = tokio::spawn(server::serve(
            listener,
            server::Host::Api,
            router(handle.clone()),
            handle.clone(),
            shutdown.clone(),
        ));
        let upload = tokio::spawn(server::serve(
            upload_listener,
            server::Host::Upload,
            upload_router(handle.clone()),
            handle.clone(),
            shutdown,
        ));
        Ok(Simulator {
            local_addr,
            upload_addr,
            handle,
            servers: [api, upload],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn upload_addr(&self) -> SocketAddr {
        self.upload_addr
    }

    /// The upload host, `http://127.0.0.1:PORT`: what the gateway's upload
    /// base URL points at (kie.ai: `https://kieai.redpandaai.co`).
    pub fn upload_base_url(&self) -> String {
        self.handle.upload_base_url()
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

    /// Waits until both accept loops have stopped (after `shutdown` is cancelled).
    pub async fn stopped(self) {
        for server in self.servers {
            let _ = server.await;
        }
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.handle.base_url())
            .field("upload_base_url", &self.handle.upload_base_url())
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
        .route("/sim/credits", post(control::set_credits))
        .route("/sim/tasks/{task_id}/complete", post(control::complete))
        .fallback(api::not_found)
        .with_state(sim)
}

/// The upload host's routes. Uploads are read by their handlers under their
/// own limit (`FileSettings::max_bytes`), so axum's default one is off.
fn upload_router(sim: SimHandle) -> Router {
    let only_post = uploads::method_not_allowed;
    Router::new()
        .route(
            "/api/file-stream-upload",
            post(uploads::stream).fallback(only_post),
        )
        .route(
            "/api/file-base64-upload",
            post(uploads::base64).fallback(only_post),
        )
        .route(
            "/api/file-url-upload",
            post(uploads::from_url).fallback(only_post),
        )
        .route("/files/{*path}", get(uploads::file))
        .fallback(uploads::not_found)
        .layer(DefaultBodyLimit::disable())
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

/// Runs the standalone simulator until SIGINT or SIGTERM. Prints two lines
/// to stdout in one write, for a parent process to parse:
/// `kie.ai simulator listening on http://127.0.0.1:PORT`, then
/// `kie.ai upload API listening on http://127.0.0.1:PORT`.
pub async fn run_standalone(
    args: SimulateArgs,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Listening starts before the ready line, so a parent that signals as
    // soon as it reads the line is never lost to the default handler.
    let stop = crate::shutdown::signal();
    let listener = TcpListener::bind(args.listen).await?;
    let upload_listener = TcpListener::bind(args.upload_addr()).await?;
    let shutdown = CancellationToken::new();
    let simulator =
        Simulator::start_with_upload(args.config(), listener, upload_listener, shutdown.clone())
            .await?;
    {
        use std::io::Write as _;
        // One write: a parent that reads the first line and closes the pipe
        // must not make a second write fail.
        let ready = format!(
            "kie.ai simulator listening on {}\nkie.ai upload API listening on {}\n",
            simulator.base_url(),
            simulator.upload_base_url()
        );
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(ready.as_bytes())?;
        stdout.flush()?;
    }
    let signal = stop.await;
    tracing::info!(signal, "kie.ai simulator shutting down");
    shutdown.cancel();
    simulator.stopped().await;
    tracing::debug!("kie.ai simulator stopped");
    Ok(())
}
