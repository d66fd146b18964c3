//! The `hailuo-gateway` binary: parse flags, start logging, run until a
//! signal.

use std::process::ExitCode;

use clap::Parser;
use hailuo_gateway::config::ServeArgs;
use hailuo_gateway::startup::Application;
use hailuo_gateway::{shutdown, telemetry};

#[derive(Parser)]
#[command(name = "hailuo-gateway", version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.serve.log_format);
    let settings = match cli.serve.live_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hailuo-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: hailuo_gateway::config::Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    app.run_until_stopped(async {
        let which = shutdown::signal().await;
        tracing::info!(signal = which, "stopping: draining calls");
    })
    .await
}
