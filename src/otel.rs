//! Traces (OpenTelemetry): an RPC span continued from the caller's W3C
//! `traceparent`, a span per kie.ai call beneath it, `traceparent` sent on
//! to kie.ai, and OTLP export over gRPC.
//!
//! All of it is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Otherwise every helper
//! here returns `Span::none()` or does nothing after one relaxed load: no
//! exporter, no span, no header parsed or written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const SERVICE: &str = "hailuo.v1.VideoGeneration";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are on (set once, at start).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The variables that switch export on: the SDK's own names.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether the environment asks for traces: an OTLP endpoint is set, and
/// neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says
/// otherwise.
pub(crate) fn wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    ENDPOINT_VARS.iter().any(|name| set(name)) && !disabled && !no_exporter
}

/// The exporting pipeline. The SDK reads the other standard variables
/// itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the resource),
/// OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* (batching),
/// OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT, _HEADERS, _COMPRESSION. Needs a
/// Tokio runtime (the exporter is a tonic client).
pub(crate) fn pipeline() -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    // The SDK's default is "unknown_service"; a name set by the operator wins.
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("hailuo-gateway");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// The tracer the tracing layer records into.
pub(crate) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("hailuo-gateway")
}

/// Sends what is left and stops the exporter, within `grace`; run off the
/// async workers (the SDK blocks on its batch thread, whose export needs the
/// runtime).
pub(crate) fn flush(provider: &SdkTracerProvider, grace: Duration) {
    if let Err(e) = provider.shutdown_with_timeout(grace) {
        eprintln!("hailuo-gateway: traces not all exported at shutdown: {e}");
    }
}

// === spans ===

/// The span of one RPC, a child of the caller's span when its metadata
/// carries a valid `traceparent` (and `tracestate`). Its `trace_id` field
/// is what log lines written inside it show.
pub(crate) fn rpc_span(method: &'static str, metadata: &MetadataMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    // Fields show in every log line written inside the span: only the name,
    // the kind and the trace id; the rest are OpenTelemetry attributes.
    let span = tracing::info_span!(
        "rpc",
        otel.name = format_args!("{SERVICE}/{method}"),
        otel.kind = "server",
        trace_id = Empty,
    );
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", SERVICE);
    span.set_attribute("rpc.method", method);
    let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
    if parent.span().span_context().is_valid() {
        // Only fails when the span is disabled, and then it has no trace.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
    span
}

/// The end of an RPC on its span: the gRPC code, and an error status for
/// the codes OpenTelemetry's gRPC conventions count as a server's error.
pub(crate) fn rpc_ended(span: &Span, code: tonic::Code, task_id: &str) {
    if span.is_none() {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if !task_id.is_empty() {
        span.set_attribute("hailuo.task_id", task_id.to_owned());
    }
    use tonic::Code::*;
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.set_status(Status::error(format!("{code:?}")));
    }
}

/// The span of one kie.ai call: `attempt` counts the tries of one read (a
/// createTask is never repeated: always 1).
pub(crate) fn upstream_span(endpoint: &'static str, attempt: u32) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "kie",
        otel.name = format_args!("kie.ai {endpoint}"),
        otel.kind = "client",
    );
    span.set_attribute("kie.endpoint", endpoint);
    span.set_attribute("kie.attempt", i64::from(attempt));
    span
}

/// The time the call waited at the gateway's gate before it was sent.
pub(crate) fn gate_waited(span: &Span, waited: Duration) {
    if !span.is_none() {
        span.set_attribute("kie.gate_wait_ms", waited.as_secs_f64() * 1e3);
    }
}

/// kie.ai's answer: its JSON code ("200", "429", ...) or what stood in for
/// one ("http_502", "timeout", "shed", ...).
pub(crate) fn upstream_answered(span: &Span, code: &str, ok: bool) {
    if span.is_none() {
        return;
    }
    span.set_attribute("kie.code", code.to_owned());
    if !ok {
        span.set_status(Status::error(code.to_owned()));
    }
}

/// The HTTP status of kie.ai's answer.
pub(crate) fn upstream_status(span: &Span, status: u16) {
    if !span.is_none() {
        span.set_attribute("http.response.status_code", i64::from(status));
    }
}

/// `traceparent` (and `tracestate`) for `span`'s context, to send to kie.ai;
/// nothing when traces are off.
pub(crate) fn trace_headers(span: &Span) -> Vec<(&'static str, String)> {
    let mut headers = Headers(Vec::new());
    if !span.is_none() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    }
    headers.0
}

/// The span a spawned task continues: the current one when traces are on.
pub(crate) fn current() -> Span {
    if enabled() {
        Span::current()
    } else {
        Span::none()
    }
}

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct Headers(Vec<(&'static str, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes only these two.
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_on_only_with_an_endpoint_and_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!wanted(env(&[])));
        assert!(!wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(!wanted(env(&[("OTEL_SERVICE_NAME", "gw")])));
        assert!(wanted(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(wanted(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(!wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn spans_are_none_while_traces_are_off() {
        assert!(!enabled());
        assert!(rpc_span("CreateTask", &MetadataMap::new()).is_none());
        assert!(upstream_span("createTask", 1).is_none());
        assert!(trace_headers(&Span::none()).is_empty());
    }
}
