//! Generate a video with the generated Rust client: one GenerateVideo call,
//! from prompt to video URL.
//!
//! ```sh
//! cargo run -- --sandbox &          # a gateway on localhost:50051
//! cargo run --example watch -- http://localhost:50051
//! ```

use std::process::ExitCode;

use hailuo_gateway::pb::video_generation_client::VideoGenerationClient;
use hailuo_gateway::pb::{
    CreateTaskRequest, GenerateVideoRequest, Resolution, TaskState, VideoDuration,
};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:50051".into());
    let mut client = VideoGenerationClient::connect(addr).await?;

    // request_id makes the call safe to repeat: calling again with the
    // same request (after a broken connection, say) follows the same task
    // instead of paying for a second video.
    let request_id = format!("example-{:016x}", rand::random::<u64>());
    let request = GenerateVideoRequest {
        create: Some(CreateTaskRequest {
            prompt: "a cat surfing a wave at sunset".into(),
            image_url: "https://example.com/cat.png".into(),
            duration: VideoDuration::VideoDuration6Seconds as i32,
            resolution: Resolution::Resolution768p as i32,
            request_id,
            ..Default::default()
        }),
    };

    // One call from prompt to video: the first message carries the new
    // task's id, then one message per state change; the stream ends after
    // SUCCEEDED or FAILED.
    let mut stream = client.generate_video(request).await?.into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        let Some(task) = message.task else {
            println!("task {}", message.task_id);
            continue;
        };
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
