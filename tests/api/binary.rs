//! Running the real `hailuo-gateway` binary in tests.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedReceiver;
use wiremock::MockServer;

use crate::helpers::Caller;
use crate::helpers::TEST_KEY;

pub const BIN: &str = env!("CARGO_BIN_EXE_hailuo-gateway");

pub struct RunningGateway {
    pub child: Child,
    /// `http://` URL of the gRPC listener.
    pub grpc_url: String,
    /// `http://` URL of the HTTP listener.
    pub http_url: String,
    /// `http://` URL of the admin listener (metrics).
    pub admin_url: String,
    /// stderr lines up to and including the ready line.
    pub startup_logs: Vec<String>,
    /// stderr lines after the ready line.
    pub logs: UnboundedReceiver<String>,
}

impl RunningGateway {
    /// A caller connected to this gateway.
    pub async fn caller(&self) -> Caller {
        Caller::connect(
            self.grpc_url.clone(),
            self.http_url.clone(),
            self.admin_url.clone(),
        )
        .await
    }
}

/// Starts the binary against `upstream` with these extra environment
/// variables; waits for its "gateway ready" log line (text or JSON).
pub async fn start_gateway_with(upstream: &MockServer, env: &[(&str, &str)]) -> RunningGateway {
    start_gateway_at(&upstream.uri(), env).await
}

/// Starts the binary against kie.ai at `base_url`, with `TEST_KEY` unless
/// `env` sets `KIE_API_KEY`.
pub async fn start_gateway_at(base_url: &str, env: &[(&str, &str)]) -> RunningGateway {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("KIE_API_KEY", TEST_KEY)
        .env("KIE_BASE_URL", base_url)
        .env("GATEWAY_GRPC_ADDR", "127.0.0.1:0")
        .env("GATEWAY_HTTP_ADDR", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_ADDR", "127.0.0.1:0")
        .env("GATEWAY_POLL_FAST", "50ms")
        .env("GATEWAY_SHUTDOWN_GRACE", "5s")
        // Tests that stop the binary are not behind a load balancer.
        .env("GATEWAY_DRAIN_DELAY", "0s")
        // Off unless a test turns it on: it would show in upstream counts.
        .env("GATEWAY_CREDITS_REFRESH", "0s");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let field = |line: &str, name: &str| -> Option<String> {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
            return json[name].as_str().map(str::to_string);
        }
        let rest = line.split(&format!("{name}=")).nth(1)?;
        rest.split_whitespace().next().map(str::to_string)
    };
    let mut startup_logs = Vec::new();
    let (grpc, http, admin) = tokio::time::timeout(Duration::from_secs(20), async {
        let mut before = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            startup_logs.push(line.clone());
            if line.contains("gateway ready") {
                return (
                    field(&line, "grpc_addr").expect("grpc_addr"),
                    field(&line, "http_addr").expect("http_addr"),
                    field(&line, "admin_addr").expect("admin_addr"),
                );
            }
            before.push(line);
        }
        panic!("gateway exited before it was ready: {}", before.join("\n"));
    })
    .await
    .expect("gateway ready in time");
    // Keep draining stderr so the child never blocks on a full pipe.
    let (tx, logs) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    RunningGateway {
        child,
        grpc_url: format!("http://{grpc}"),
        http_url: format!("http://{http}"),
        admin_url: format!("http://{admin}"),
        startup_logs,
        logs,
    }
}

/// How `child` exited; it must exit within `timeout` (`what` says why).
pub async fn exit_within(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    tokio::time::timeout(timeout, child.wait())
        .await
        .expect(what)
        .expect("wait")
}

pub fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}
