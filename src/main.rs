//! The `hailuo-gateway` binary: the gateway (live or `--sandbox`), the
//! standalone kie.ai simulator, and a command-line client of the gateway.
//! `--sandbox` and `simulate` exist only with the `sandbox` feature (on by
//! default).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hailuo_gateway::cli::{self, DownloadArgs, GenerateArgs, TaskArgs};
use hailuo_gateway::config::{ServeArgs, Settings};
#[cfg(feature = "sandbox")]
use hailuo_gateway::sandbox;
#[cfg(feature = "sandbox")]
use hailuo_gateway::simulator::{SimulateArgs, run_standalone};
use hailuo_gateway::startup::Application;
use hailuo_gateway::{shutdown, telemetry};
#[cfg(feature = "sandbox")]
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
    #[cfg(feature = "sandbox")]
    Simulate(Box<SimulateArgs>),
    /// Create a video task on a running gateway and print its id; with
    /// --wait, follow it and print its video URLs.
    Generate(GenerateArgs),
    /// Print a task's current state.
    Get(TaskArgs),
    /// Follow a task until it ends, then print its video URLs.
    Watch(TaskArgs),
    /// Save a finished task's video (through a fresh link, so also after
    /// its recorded URL expired) and print the file's path.
    Download(DownloadArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "sandbox")]
        Some(Command::Simulate(args)) => {
            let _logs = telemetry::init(Default::default());
            match run_standalone(*args).await {
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
        Some(Command::Download(args)) => cli::download(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let mut logs = match telemetry::init_with_traces(args.log_format) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("hailuo-gateway: OTLP trace export: {e:#}");
            return ExitCode::from(2);
        }
    };
    let exit = serve_with(args).await;
    // The drain's last spans leave before the process does.
    logs.flush_traces().await;
    exit
}

async fn serve_with(args: ServeArgs) -> ExitCode {
    if let Err(e) = args.check() {
        eprintln!("hailuo-gateway: {e}");
        return ExitCode::from(2);
    }
    #[cfg(feature = "sandbox")]
    if args.sandbox {
        return exit_code(serve_sandbox(&args).await);
    }
    match args.live_settings() {
        Ok(settings) => exit_code(run(settings, |_| {}).await),
        Err(e) => {
            eprintln!("hailuo-gateway: {e}");
            ExitCode::from(2)
        }
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "sandbox")]
async fn serve_sandbox(args: &ServeArgs) -> anyhow::Result<()> {
    let simulator_stop = CancellationToken::new();
    let (simulator, settings) = sandbox::start(args, simulator_stop.clone()).await?;
    let simulator_url = simulator.base_url();
    let upload_url = simulator.upload_base_url();
    let result = run(settings, |app| {
        println!(
            "{}",
            sandbox::banner(
                app.grpc_addr(),
                app.http_addr(),
                app.admin_addr(),
                &simulator_url,
                &upload_url
            )
        );
    })
    .await;
    // The simulator outlives the gateway's drain, then stops.
    simulator_stop.cancel();
    result
}

/// Builds and runs the gateway until a stop signal; `ready` runs once its
/// listeners are bound.
async fn run(settings: Settings, ready: impl FnOnce(&Application)) -> anyhow::Result<()> {
    // Listening starts now, before anything can say it is ready.
    let stop = shutdown::signal();
    let app = Application::build(settings).await?;
    ready(&app);
    app.run_until_stopped(async {
        let which = stop.await;
        tracing::info!(signal = which, "stopping: draining calls");
    })
    .await
}
