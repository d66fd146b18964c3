//! Create a video task and watch it until it ends, with the generated Rust
//! client.
//!
//! ```sh
//! cargo run -- --sandbox &          # a gateway on localhost:50051
//! cargo run --example watch -- http://localhost:50051
//! ```

use std::process::ExitCode;

use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{
    CreateTaskRequest, Resolution, TaskState, VideoDuration, WatchTaskRequest,
};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:50051".into());
    let mut client = VideoGenerationClient::connect(addr).await?;

    let task_id = client
        .create_task(CreateTaskRequest {
            prompt: "a cat surfing a wave at sunset".into(),
            image_url: "https://example.com/cat.png".into(),
            duration: VideoDuration::VideoDuration6Seconds as i32,
            resolution: Resolution::Resolution768p as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .task_id;
    println!("task {task_id}");

    // The first message is the current state, then one per change; the
    // stream ends after SUCCEEDED or FAILED.
    let mut stream = client
        .watch_task(WatchTaskRequest { task_id })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        let Some(task) = message.task else { continue };
        if message.heartbeat {
            continue;
        }
        println!("state {}", task.state().as_str_name());
        last = Some(task);
    }

    match last {
        Some(task) if task.state() == TaskState::Succeeded => {
            for url in &task.video_urls {
                println!("video {url}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(task) => {
            eprintln!(
                "task ended {}: {} {}",
                task.state().as_str_name(),
                task.fail_code,
                task.fail_message
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            eprintln!("the stream ended without a task");
            Ok(ExitCode::FAILURE)
        }
    }
}
