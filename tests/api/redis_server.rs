//! A `redis-server` of the test's own on a free loopback port, with no
//! persistence, that a test can stop and start again. Never the shared one
//! on 6379: every test owns its Redis.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hailuo_gateway::config::RedisSettings;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        // A port the kernel just handed out, free again once dropped.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { port, child: None };
        server.restart().await;
        server
    }

    /// Starts it (again, empty) on the same port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        let up = crate::helpers::wait_for(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "redis-server did not listen on {}", self.port);
    }

    /// Stops it (SIGKILL: as abrupt as a crash) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: format!("redis://127.0.0.1:{}/0", self.port)
                .parse()
                .expect("url"),
            prefix: "test-gateway".into(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
