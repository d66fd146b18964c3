//! The `hailuo-gateway` binary: the gateway (live or `--sandbox`), the
//! standalone kie.ai simulator, and a command-line client of the gateway.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hailuo_gateway::cli::{self, GenerateArgs, TaskArgs};
use hailuo_gateway::config::{ServeArgs, Settings};
use hailuo_gateway::simulator::{SimulateArgs, run_standalone};
use hailuo_gateway::startup::Application;
use hailuo_gateway::{sandbox, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "hailuo-gateway",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the kie.ai simulator on its own (for tests, benchmarks and local
    /// development against the REST API).
    Simulate(SimulateArgs),
    /// Create a video task on a running gateway and print its id; with
    /// --wait, follow it and print its video URLs.
    Generate(GenerateArgs),
    /// Print a task's current state.
    Get(TaskArgs),
    /// Follow a task until it ends, then print its video URLs.
    Watch(TaskArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Simulate(args)) => {
            let _logs = telemetry::init(Default::default());
            match run_standalone(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hailuo-gateway simulate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Generate(args)) => cli::generate(args).await,
        Some(Command::Get(args)) => cli::get(args).await,
        Some(Command::Watch(args)) => cli::watch(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let _logs = telemetry::init(args.log_format);
    let result = if args.sandbox {
        serve_sandbox(&args).await
    } else {
        match args.live_settings() {
            Ok(settings) => run(settings, None).await,
            Err(e) => {
                eprintln!("hailuo-gateway: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve_sandbox(args: &ServeArgs) -> anyhow::Result<()> {
    let simulator_stop = CancellationToken::new();
    let (simulator, settings) = sandbox::start(args, simulator_stop.clone()).await?;
    let result = run(settings, Some(simulator.base_url())).await;
    // The simulator outlives the gateway's drain, then stops.
    simulator_stop.cancel();
    result
}

async fn run(settings: Settings, sandbox_url: Option<String>) -> anyhow::Result<()> {
    // Listening starts now, before anything can say it is ready.
    let stop = shutdown::signal();
    let app = Application::build(settings).await?;
    if let Some(url) = sandbox_url {
        println!(
            "{}",
            sandbox::banner(app.grpc_addr(), app.http_addr(), &url)
        );
    }
    app.run_until_stopped(async {
        let which = stop.await;
        tracing::info!(signal = which, "stopping: draining calls");
    })
    .await
}
