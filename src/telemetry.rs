//! Logging: text or JSON lines on stderr, filtered by `RUST_LOG`; and, when
//! an OTLP endpoint is configured, traces (`otel.rs`).
//!
//! Lines are handed to a writer thread and written in batches, so a busy
//! gateway neither waits on stderr in its request path nor pays a system
//! call per line. When that thread falls behind, logging blocks rather than
//! dropping lines.

use std::io::{BufWriter, IsTerminal};
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;
use crate::otel;

/// How long the last spans may take to leave at shutdown.
const TRACE_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Keep it alive while logging: dropping it flushes what is left (traces
/// first, then log lines).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    traces: Option<SdkTracerProvider>,
    _writer: Option<WorkerGuard>,
}

impl LogGuard {
    /// Exports the spans still batched (the last calls of a drain) and
    /// stops the exporter; off the async workers, since the SDK blocks.
    pub async fn flush_traces(&mut self) {
        if let Some(provider) = self.traces.take() {
            let flushed =
                tokio::task::spawn_blocking(move || otel::flush(&provider, TRACE_FLUSH_GRACE));
            let _ = flushed.await;
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            otel::flush(&provider, TRACE_FLUSH_GRACE);
        }
    }
}

/// Logs only (the simulator, tests).
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = writer();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber; its writer is idle.
    LogGuard {
        traces: None,
        _writer: installed.ok().map(|()| guard),
    }
}

/// The gateway's: logs, and traces when the environment asks for them
/// (`otel::wanted`). Without an OTLP endpoint this is `init` exactly, so
/// the default pays nothing for traces. Fails when the OTLP settings do not
/// make an exporter.
pub fn init_with_traces(format: LogFormat) -> anyhow::Result<LogGuard> {
    if !otel::wanted(|name| std::env::var(name).ok()) {
        return Ok(init(format));
    }
    let provider = otel::pipeline()?;
    let (writer, guard) = writer();
    // RUST_LOG filters log lines; the gateway's own spans pass whatever it
    // says, so that every line inside a call shows its trace id.
    let ours = || filter_fn(|meta| meta.is_span() && meta.target().starts_with("hailuo_gateway"));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(otel::tracer(&provider))
        .with_threads(false)
        .with_filter(env_filter().or(ours()));
    let installed = Registry::default()
        .with(lines.with_filter(env_filter().or(ours())))
        .with(spans)
        .try_init();
    Ok(LogGuard {
        traces: Some(provider),
        _writer: installed.ok().map(|()| guard),
    })
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn writer() -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()))
}
