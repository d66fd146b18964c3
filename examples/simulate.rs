//! Runs the kie.ai simulator standalone until ctrl-c or SIGTERM, like
//! `hailuo-gateway simulate` will: `cargo run --example simulate -- --help`.

use clap::Parser;
use hailuo_gateway::simulator::{SimulateArgs, run_standalone};

#[derive(Parser)]
#[command(about = "kie.ai simulator")]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    run_standalone(Cli::parse().args).await
}
