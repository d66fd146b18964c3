//! The bare forwarder: the least a gateway can do, rebuilt in the same run
//! (this executable's `forwarder` mode) as the reference for scenario 1.

use std::process::Stdio;

use hailuo_gateway::pb::video_generation_server::{VideoGeneration, VideoGenerationServer};
use hailuo_gateway::pb::{
    CreateTaskRequest, CreateTaskResponse, GenerateVideoRequest, GetTaskRequest, GetTaskResponse,
    WatchTaskRequest,
};
use hailuo_gateway::task;
use tokio::process::Command;

use crate::API_KEY;
use crate::clients::{CreatedData, KieAnswer, http_client};
use crate::processes::{Proc, Simulator, free_port};

/// Starts this executable as a bare forwarder in front of the simulator.
pub async fn start_bare_forwarder(sim: &Simulator) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["forwarder", &sim.url, &port.to_string()])
        .stderr(Stdio::inherit());
    let (proc, _banner) = Proc::start(&mut command, "bare forwarder").await?;
    Ok((proc, format!("http://127.0.0.1:{port}")))
}

/// The least a gateway can do: receive gRPC, POST upstream, parse, answer.
/// No validation, error details, metrics or logs; tonic's and reqwest's
/// defaults, a pooled client and the URL parsed once.
struct BareForwarder {
    http: reqwest::Client,
    create_url: reqwest::Url,
    auth: reqwest::header::HeaderValue,
}

#[derive(serde::Serialize)]
struct BareBody<'a> {
    model: &'static str,
    input: BareInput<'a>,
}

#[derive(serde::Serialize)]
struct BareInput<'a> {
    prompt: &'a str,
    image_url: &'a str,
    duration: &'static str,
    resolution: &'static str,
}

#[tonic::async_trait]
impl VideoGeneration for BareForwarder {
    async fn create_task(
        &self,
        request: tonic::Request<CreateTaskRequest>,
    ) -> Result<tonic::Response<CreateTaskResponse>, tonic::Status> {
        let request = request.into_inner();
        let body = BareBody {
            model: task::model_id(request.model()),
            input: BareInput {
                prompt: &request.prompt,
                image_url: &request.image_url,
                duration: task::duration_value(request.duration()),
                resolution: task::resolution_value(request.resolution()),
            },
        };
        let body = serde_json::to_vec(&body).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let answer = self
            .http
            .post(self.create_url.clone())
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        match serde_json::from_slice::<KieAnswer<CreatedData>>(&answer) {
            Ok(KieAnswer {
                code: 200,
                data: Some(data),
            }) => Ok(tonic::Response::new(CreateTaskResponse {
                task_id: data.task_id,
            })),
            _ => Err(tonic::Status::internal("bad upstream answer")),
        }
    }

    async fn get_task(
        &self,
        _: tonic::Request<GetTaskRequest>,
    ) -> Result<tonic::Response<GetTaskResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    type WatchTaskStream = hailuo_gateway::grpc::WatchStream;

    async fn watch_task(
        &self,
        _: tonic::Request<WatchTaskRequest>,
    ) -> Result<tonic::Response<Self::WatchTaskStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    async fn get_download_links(
        &self,
        _: tonic::Request<hailuo_gateway::pb::GetDownloadLinksRequest>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::GetDownloadLinksResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    async fn get_credits(
        &self,
        _: tonic::Request<hailuo_gateway::pb::GetCreditsRequest>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::GetCreditsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    async fn get_quota(
        &self,
        _: tonic::Request<hailuo_gateway::pb::GetQuotaRequest>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::GetQuotaResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    async fn upload_image(
        &self,
        _: tonic::Request<tonic::Streaming<hailuo_gateway::pb::UploadImageRequest>>,
    ) -> Result<tonic::Response<hailuo_gateway::pb::UploadImageResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }

    type GenerateVideoStream = hailuo_gateway::grpc::GenerateStream;

    async fn generate_video(
        &self,
        _: tonic::Request<GenerateVideoRequest>,
    ) -> Result<tonic::Response<Self::GenerateVideoStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare forwarder"))
    }
}

/// `loadgen forwarder UPSTREAM_URL PORT`: serves until killed.
pub async fn run_bare_forwarder(upstream: &str, port: &str) -> anyhow::Result<()> {
    let forwarder = BareForwarder {
        http: http_client()?,
        create_url: reqwest::Url::parse(upstream)?.join("api/v1/jobs/createTask")?,
        auth: reqwest::header::HeaderValue::from_str(&format!("Bearer {API_KEY}"))?,
    };
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("bare forwarder listening");
    tonic::transport::Server::builder()
        .add_service(VideoGenerationServer::new(forwarder))
        // TCP_NODELAY as when tonic binds the listener itself (its default;
        // it ignores the builder's setting for a listener of our own).
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}
