//! A server that ends on its own stops the whole gateway: health turns
//! NOT_SERVING, the other server drains, and `run_until_stopped` fails (so
//! the binary exits non-zero) instead of running on with a dead listener.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use hailuo_gateway::startup::Application;
use tokio::net::{TcpListener, TcpStream};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wiremock::MockServer;

use crate::helpers::*;

/// The real HTTP listener behind an accept loop that breaks on its first
/// connection, as a faulty acceptor of one's own (TLS, PROXY protocol)
/// would: axum's accept loop, and so the HTTP server task, dies with it.
struct BreaksOnFirstConnection(TcpListener);

impl Listener for BreaksOnFirstConnection {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let accepted = self.0.accept().await;
        panic!("the acceptor broke on its first connection ({accepted:?})");
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[tokio::test]
async fn when_the_http_server_dies_health_turns_not_serving_grpc_drains_and_the_run_fails() {
    let upstream = MockServer::start().await;
    let app = Application::build(test_settings(&upstream.uri()))
        .await
        .expect("build app");
    let grpc_addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let running =
        tokio::spawn(app.run_until_stopped_with(BreaksOnFirstConnection, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: "hailuo.v1.VideoGeneration".into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = statuses.message().await.expect("ok").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Any HTTP client (a kie.ai callback, a metrics scrape) breaks it.
    let _ = TcpStream::connect(http_addr).await;

    let next = tokio::time::timeout(Duration::from_secs(5), statuses.message())
        .await
        .expect("health changes promptly")
        .expect("ok")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The health watch is the last open call: once it goes, gRPC has
    // drained.
    drop(statuses);
    drop(health);
    let ended = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the run ends within the grace period")
        .expect("no panic escapes the run");
    let error = format!("{:#}", ended.expect_err("an early server end is an error"));
    assert!(error.contains("HTTP server"), "{error}");
    assert!(error.contains("panicked"), "{error}");
    assert!(error.contains("the acceptor broke"), "{error}");
    assert!(
        TcpStream::connect(grpc_addr).await.is_err(),
        "the gRPC listener is closed"
    );
}
