//! The bare broadcast: the least a server can do to fan one message out to
//! many streams (this executable's `broadcast` mode), the reference for
//! scenario 3 as the bare forwarder is for scenario 1.

use std::pin::Pin;
use std::process::Stdio;

use futures_util::Stream;
use hailuo_gateway::pb::video_generation_server::{VideoGeneration, VideoGenerationServer};
use hailuo_gateway::pb::{
    CreateTaskRequest, CreateTaskResponse, GenerateVideoRequest, GetTaskRequest, GetTaskResponse,
    Task, TaskState, WatchTaskRequest, WatchTaskResponse,
};
use tokio::process::Command;
use tokio::sync::watch;

use crate::processes::{Proc, free_port};

/// The gateway's connection window (`src/startup.rs`): tonic's default
/// 1 MiB makes h2 refuse a burst of thousands of streams.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Starts this executable as a bare broadcast server.
pub async fn start_bare_broadcast() -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["broadcast", &port.to_string()])
        .stderr(Stdio::inherit());
    let (proc, _banner) = Proc::start(&mut command, "bare broadcast").await?;
    Ok((proc, format!("http://127.0.0.1:{port}")))
}

/// WatchTask sends GENERATING at once and holds the stream; GetTask sends
/// one pre-built SUCCEEDED message to every stream held and ends them. No
/// validation, logs or metrics: tonic's defaults (each stream encodes its
/// own copy, as any tonic server does).
struct BareBroadcast {
    /// The number of broadcasts so far; a stream ends at the first one
    /// after it opened.
    sent: watch::Sender<u64>,
    holding: WatchTaskResponse,
    done: WatchTaskResponse,
}

type Messages = Pin<Box<dyn Stream<Item = Result<WatchTaskResponse, tonic::Status>> + Send>>;

fn unimplemented<T>() -> Result<T, tonic::Status> {
    Err(tonic::Status::unimplemented("bare broadcast"))
}

#[tonic::async_trait]
impl VideoGeneration for BareBroadcast {
    async fn create_task(
        &self,
        _: tonic::Request<CreateTaskRequest>,
    ) -> Result<tonic::Response<CreateTaskResponse>, tonic::Status> {
        unimplemented()
    }

    /// The trigger: one broadcast to every stream held.
    async fn get_task(
        &self,
        _: tonic::Request<GetTaskRequest>,
    ) -> Result<tonic::Response<GetTaskResponse>, tonic::Status> {
        self.sent.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(GetTaskResponse::default()))
    }

    type WatchTaskStream = Messages;

    async fn watch_task(
        &self,
        _: tonic::Request<WatchTaskRequest>,
    ) -> Result<tonic::Response<Self::WatchTaskStream>, tonic::Status> {
        let mut rx = self.sent.subscribe();
        let opened = *rx.borrow_and_update();
        let holding = self.holding.clone();
        let done = self.done.clone();
        let rest = futures_util::stream::once(async move {
            let _ = rx.wait_for(|n| *n > opened).await;
            Ok(done)
        });
        let first = futures_util::stream::once(std::future::ready(Ok(holding)));
        Ok(tonic::Response::new(Box::pin(
            futures_util::StreamExt::chain(first, rest),
        )))
    }

    async fn get_download_links(
        &self,
        _: tonic::Request<hailuo_gateway::pb::GetDownloadLinksRequest>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::GetDownloadLinksResponse>, tonic::Status> {
        unimplemented()
    }

    async fn get_credits(
        &self,
        _: tonic::Request<hailuo_gateway::pb::GetCreditsRequest>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::GetCreditsResponse>, tonic::Status> {
        unimplemented()
    }

    async fn get_quota(
        &self,
        _: tonic::Request<hailuo_gateway::pb::GetQuotaRequest>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::GetQuotaResponse>, tonic::Status> {
        unimplemented()
    }

    async fn upload_image(
        &self,
        _: tonic::Request<tonic::Streaming<hailuo_gateway::pb::UploadImageRequest>>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::UploadImageResponse>, tonic::Status> {
        unimplemented()
    }

    type GenerateVideoStream = hailuo_gateway::grpc::GenerateStream;

    async fn generate_video(
        &self,
        _: tonic::Request<GenerateVideoRequest>,
    ) -> Result<tonic::Response<Self::GenerateVideoStream>, tonic::Status> {
        unimplemented()
    }
}

/// A task as the gateway would send it (the same fields a simulated task
/// has), so both servers send messages of about the same size.
fn task(state: TaskState) -> Task {
    let mut task = Task {
        task_id: "bare0000000000000000000000000000".to_owned(),
        model: "hailuo/02-image-to-video-pro".to_owned(),
        create_time: Some(at(0)),
        update_time: Some(at(10)),
        ..Task::default()
    };
    task.set_state(state);
    if state == TaskState::Succeeded {
        task.video_urls = vec!["https://example.com/videos/bare.mp4".to_owned()];
        task.complete_time = Some(at(10));
        task.cost_time = Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        });
    }
    task
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_800_000_000 + seconds,
        nanos: 0,
    }
}

/// `loadgen broadcast PORT`: serves until killed.
pub async fn run_bare_broadcast(port: &str) -> anyhow::Result<()> {
    let server = BareBroadcast {
        sent: watch::channel(0).0,
        holding: WatchTaskResponse {
            task: Some(task(TaskState::Generating)),
            heartbeat: false,
        },
        done: WatchTaskResponse {
            task: Some(task(TaskState::Succeeded)),
            heartbeat: false,
        },
    };
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("bare broadcast listening");
    tonic::transport::Server::builder()
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(VideoGenerationServer::new(server))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}
