//! Through a real proxy: nginx's `grpc_pass` with an idle timeout
//! (`grpc_read_timeout`) shorter than the old 60 s heartbeat would need but
//! longer than the default heartbeat.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hailuo_gateway::config::defaults;
use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use tokio::process::{Child, Command};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use crate::binary::*;
use crate::helpers::*;

/// nginx cuts a stream whose upstream is quiet this long.
const PROXY_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// nginx, on its own (one process, no daemon) with everything in a temp dir;
/// killed when dropped, its dir removed.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    /// Listens on one free loopback port per upstream gRPC address, in order.
    async fn start(upstreams: &[&str]) -> (Self, Vec<u16>) {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "nginx"]
            .into_iter()
            .find(|candidate| {
                std::process::Command::new(candidate)
                    .arg("-v")
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "nginx is not installed: apt-get install nginx-light (scripts/test.sh does) and run again"
                )
            });
        let ports: Vec<u16> = upstreams.iter().map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "hailuo-gateway-nginx-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let root = dir.display();
        let servers: String = upstreams
            .iter()
            .zip(&ports)
            .map(|(upstream, port)| {
                format!(
                    "server {{ listen 127.0.0.1:{port} http2;
                       location / {{ grpc_pass grpc://{upstream};
                         grpc_read_timeout {idle}s; grpc_send_timeout {idle}s; }} }}\n",
                    idle = PROXY_IDLE_TIMEOUT.as_secs()
                )
            })
            .collect();
        let config = format!(
            "master_process off; daemon off; pid {root}/nginx.pid;
             error_log {root}/error.log info;
             events {{ worker_connections 256; }}
             http {{
               access_log {root}/access.log;
               client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
               fastcgi_temp_path {root}/fastcgi; uwsgi_temp_path {root}/uwsgi;
               scgi_temp_path {root}/scgi;
               {servers}
             }}"
        );
        std::fs::write(dir.join("nginx.conf"), config).expect("write config");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nginx");
        let listening = wait_for(Duration::from_secs(10), || async {
            let mut all = true;
            for port in &ports {
                all &= tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok();
            }
            all
        })
        .await;
        assert!(listening, "nginx did not listen: {}", error_log(&dir));
        (Self { child, dir }, ports)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn error_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
}

#[tokio::test]
async fn a_quiet_watch_through_nginx_outlives_its_idle_timeout_thanks_to_the_default_heartbeat() {
    // The proof needs the default between the two.
    assert!(defaults::WATCH_HEARTBEAT < PROXY_IDLE_TIMEOUT);
    assert!(PROXY_IDLE_TIMEOUT < Duration::from_secs(60));
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(kie_ok(record("t1", "generating")))
        .mount(&upstream)
        .await;
    // The default heartbeat, and the old 60 s one for contrast.
    let with_default = start_gateway_with(&upstream, &[]).await;
    let with_old = start_gateway_with(&upstream, &[("GATEWAY_WATCH_HEARTBEAT", "60s")]).await;
    let behind =
        |gateway: &RunningGateway| gateway.grpc_url.trim_start_matches("http://").to_string();
    let (nginx, ports) = Nginx::start(&[&behind(&with_default), &behind(&with_old)]).await;

    let watch_through = |port: u16| async move {
        let mut client = VideoGenerationClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect through nginx");
        let mut stream = client
            .watch_task(watch_request("t1"))
            .await
            .expect("watch through nginx")
            .into_inner();
        let first = next_message(&mut stream).await;
        assert!(!first.heartbeat, "the current state first");
        // Quiet for longer than the proxy's idle timeout.
        let until = Instant::now() + PROXY_IDLE_TIMEOUT + Duration::from_secs(6);
        let mut heartbeats = 0;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Err(_) => return Ok(heartbeats),
                Ok(Ok(Some(message))) => {
                    assert!(message.heartbeat, "nothing changed: {message:?}");
                    heartbeats += 1;
                }
                Ok(Ok(None)) => return Err("ended without a status".to_string()),
                Ok(Err(status)) => return Err(format!("{status:?}")),
            }
        }
    };
    let (default_watch, old_watch) = tokio::join!(watch_through(ports[0]), watch_through(ports[1]));
    nginx.stop().await;

    let heartbeats = default_watch.expect("the default heartbeat keeps the watch open");
    assert!(heartbeats >= 1, "{heartbeats}");
    // Without it the proxy cuts the quiet stream: the heartbeat is what kept
    // the first one alive.
    let cut = old_watch.expect_err("nginx cuts a stream quiet for longer than its timeout");
    assert!(!cut.is_empty());
}
