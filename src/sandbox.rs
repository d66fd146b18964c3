//! `--sandbox`: the real gateway in front of the built-in kie.ai simulator,
//! so a first run needs no account and spends no credits.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Secret, ServeArgs, Settings};
use crate::simulator::{Simulator, SimulatorConfig, StateTimings};

/// The key the sandbox's simulator accepts and its gateway sends.
const SANDBOX_KEY: &str = "sandbox-key";

/// The sandbox's balance: enough for 20 million of the dearest task (50
/// credits), about four months at kie.ai's 20 creates per 10 s, so it never
/// runs out in ordinary use; a whole number plus a half, since kie.ai's need
/// not be whole. `POST /sim/credits` still sets it to 0 for a 402.
pub const SANDBOX_CREDITS: f64 = 1_000_000_000.5;

/// Starts the simulator on two loopback ports (kie.ai's API host and its
/// upload host, `Simulator::upload_base_url`) and returns the gateway
/// settings that point at it. Callbacks are on: the simulator signs them with a fresh
/// HMAC key and sends them to this gateway's own HTTP listener.
pub async fn start(
    args: &ServeArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<(Simulator, Settings)> {
    let hmac_key = format!("{:032x}", rand::random::<u128>());
    let config = SimulatorConfig {
        api_key: Some(SANDBOX_KEY.into()),
        hmac_key: Some(hmac_key.clone()),
        starting_credits: SANDBOX_CREDITS,
        // Each state outlasts the default 2 s poll interval, so a watch
        // shows every one of them.
        timings: StateTimings {
            waiting: Duration::from_secs(3),
            queuing: Duration::from_secs(4),
            generating: Duration::from_secs(6),
        },
        ..SimulatorConfig::default()
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let simulator = Simulator::start(config, listener, shutdown).await?;
    let mut settings = args.settings(
        simulator.base_url().parse()?,
        Some(Secret::new(SANDBOX_KEY)),
    );
    // kie.ai's file API is another host; the simulator serves it on its own port.
    settings.upstream.upload_base_url = simulator.upload_base_url().parse()?;
    if settings.callbacks.public_url.is_none() {
        settings.callbacks.to_self = true;
    }
    settings.callbacks.hmac_key = Some(Secret::new(hmac_key));
    Ok((simulator, settings))
}

/// What a new user sees first: where things are and what to paste (from
/// the repository's root, for the sample image in assets/).
pub fn banner(
    grpc: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    simulator_url: &str,
    upload_url: &str,
) -> String {
    let host = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            format!("localhost:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let g = host(grpc);
    format!(
        r#"
  hailuo-gateway SANDBOX: kie.ai is simulated at {simulator_url}
  (its file upload host at {upload_url})
  No kie.ai key is used and no credits are spent. Tasks finish in about 13 s.

  gRPC     {g}   (reflection on: no proto files needed)
  HTTP     http://{http}   (/callbacks/kie, /healthz)
  Admin    http://{admin}   (/metrics, /healthz)

  Try it: one call from prompt to video (the task id first, then each state, then the video URL)
    grpcurl -plaintext -d '{{"create": {{"prompt": "a cat surfing a wave at sunset", "image_url": "https://example.com/cat.png", "request_id": "try-1"}}}}' {g} hailuo.v1.VideoGeneration/GenerateVideo
  Or step by step:
    grpcurl -plaintext {g} describe hailuo.v1.VideoGeneration
    grpcurl -plaintext -d '{{"prompt": "a cat surfing a wave at sunset", "image_url": "https://example.com/cat.png"}}' {g} hailuo.v1.VideoGeneration/CreateTask
    grpcurl -plaintext -d '{{"task_id": "TASK_ID"}}' {g} hailuo.v1.VideoGeneration/WatchTask
    grpcurl -plaintext -d '{{"task_id": "TASK_ID"}}' {g} hailuo.v1.VideoGeneration/GetTask
    grpcurl -plaintext -d '{{"prompt": "[sim:402] a cat", "image_url": "https://example.com/cat.png"}}' {g} hailuo.v1.VideoGeneration/CreateTask

  Send a local image: upload it, then pass the answer's url as image_url (grpcurl takes bytes as base64)
    {{ printf '{{"chunk": "'; base64 < assets/first.png | tr -d '\n'; printf '"}}'; }} | grpcurl -plaintext -d @ {g} hailuo.v1.VideoGeneration/UploadImage
  Or let the built-in client send the file and wait for the video, then save it (a fresh link, also days later):
    cargo run --release -- generate --addr http://{g} --image assets/first.png --prompt "a cat surfing" --wait
    cargo run --release -- download --addr http://{g} TASK_ID -o video.mp4

  Scenario markers in the prompt ([sim:fail], [sim:429], [sim:slow], ...) are listed in src/simulator/SCENARIOS.md.
"#,
        http = host(http),
        admin = host(admin),
    )
}
