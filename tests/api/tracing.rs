//! Traces: the real binary exporting over OTLP to a receiver started here
//! (opentelemetry-proto's TraceService on 127.0.0.1:0), in front of a
//! `simulate` process that records the `traceparent` it receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;
use tokio::process::Child;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::binary::{exit_within, sigterm, start_gateway_at};
use crate::helpers::*;
use crate::rpc_logs::strict_json;

const SIM_KEY: &str = "trace-key";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

// === the OTLP receiver ===

/// Every span it received, with its resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Received {
    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().expect("lock").clone()
    }
}

/// Starts the receiver; its `http://` URL.
async fn start_receiver(stop: CancellationToken) -> (Received, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
            .await
            .expect("receiver serves");
    });
    (received, url)
}

fn text(value: &Any) -> Option<String> {
    match value {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attributes(span: &Span) -> HashMap<String, Any> {
    span.attributes
        .iter()
        .filter_map(|a| Some((a.key.clone(), a.value.clone()?.value?)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === the simulator ===

struct Sim {
    _child: Child,
    url: String,
}

async fn start_simulator() -> Sim {
    let (child, url) =
        crate::helpers::spawn_simulate(&["--listen", "127.0.0.1:0", "--api-key", SIM_KEY]).await;
    Sim { _child: child, url }
}

async fn sim_requests(sim: &Sim) -> Vec<Value> {
    let body = http_client()
        .get(format!("{}/sim/requests", sim.url))
        .send()
        .await
        .expect("sim requests")
        .bytes()
        .await
        .expect("body");
    serde_json::from_slice(&body).expect("json")
}

// === the test ===

/// The batch delay is longer than the test: every span the receiver gets
/// was sent by the flush at shutdown.
#[tokio::test]
async fn a_callers_trace_continues_through_the_gateway_to_kie_and_is_flushed_at_shutdown() {
    let stop = CancellationToken::new();
    let (received, otlp_url) = start_receiver(stop.clone()).await;
    let sim = start_simulator().await;
    let mut gateway = start_gateway_at(
        &sim.url,
        &[
            ("KIE_API_KEY", SIM_KEY),
            ("GATEWAY_LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp_url),
            ("OTEL_SERVICE_NAME", "gateway-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let caller = gateway.caller().await;

    let mut request = tonic::Request::new(valid_request());
    let metadata = request.metadata_mut();
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    metadata.insert("traceparent", traceparent.parse().expect("ascii"));
    metadata.insert("tracestate", "vendor=abc".parse().expect("ascii"));
    let task_id = caller.create(request).await.expect("created");
    // A call without a trace of its own starts one.
    caller.get(&task_id).await.expect("read");

    sigterm(&gateway.child);
    let exit = exit_within(&mut gateway.child, Duration::from_secs(15), "exits").await;
    assert!(exit.success(), "{exit:?}");
    let spans = received.spans();
    stop.cancel();
    let named = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == name)
            .collect()
    };
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "gateway-under-test"),
        "OTEL_SERVICE_NAME is honoured"
    );

    // The RPC span is the caller's span's child, in the caller's trace.
    let rpcs = named("hailuo.v1.VideoGeneration/CreateTask");
    assert_eq!(rpcs.len(), 1, "{spans:#?}");
    let rpc = rpcs[0];
    assert_eq!(hex(&rpc.trace_id), CALLER_TRACE);
    assert_eq!(hex(&rpc.parent_span_id), CALLER_SPAN);
    assert_eq!(rpc.trace_state, "vendor=abc");
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    let rpc_attributes = attributes(rpc);
    assert_eq!(
        rpc_attributes["rpc.method"],
        Any::StringValue("CreateTask".into())
    );
    assert_eq!(rpc_attributes["rpc.grpc.status_code"], Any::IntValue(0));

    // kie.ai's createTask beneath it, with its attempt, code and gate wait.
    let creates = named("kie.ai createTask");
    assert_eq!(creates.len(), 1, "{spans:#?}");
    let create = creates[0];
    assert_eq!(hex(&create.trace_id), CALLER_TRACE);
    assert_eq!(create.parent_span_id, rpc.span_id, "beneath the RPC span");
    assert_eq!(create.kind, SpanKind::Client as i32);
    let create_attributes = attributes(create);
    assert_eq!(create_attributes["kie.attempt"], Any::IntValue(1));
    assert_eq!(
        create_attributes["kie.code"],
        Any::StringValue("200".into())
    );
    assert!(
        matches!(create_attributes["kie.gate_wait_ms"], Any::DoubleValue(ms) if ms >= 0.0),
        "{create_attributes:?}"
    );

    // kie.ai received the createTask span's context.
    let requests = sim_requests(&sim).await;
    let sent: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"] == "/api/v1/jobs/createTask")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["traceparent"],
        format!("00-{CALLER_TRACE}-{}-01", hex(&create.span_id)),
    );

    // GetTask: a trace of its own, its recordInfo beneath it.
    let gets = named("hailuo.v1.VideoGeneration/GetTask");
    assert_eq!(gets.len(), 1, "{spans:#?}");
    let get = gets[0];
    assert!(get.parent_span_id.is_empty(), "a root span");
    assert_ne!(hex(&get.trace_id), CALLER_TRACE);
    let reads = named("kie.ai recordInfo");
    assert!(
        reads
            .iter()
            .any(|r| r.parent_span_id == get.span_id && r.trace_id == get.trace_id),
        "{spans:#?}"
    );
    let read_sent = requests
        .iter()
        .find(|r| r["path"] == "/api/v1/jobs/recordInfo")
        .expect("a read");
    assert!(
        read_sent["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("00-{}-", hex(&get.trace_id)))),
        "{read_sent}"
    );

    // The RPC's log line carries the trace id.
    let mut lines = gateway.startup_logs.clone();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(5), gateway.logs.recv()).await
    {
        lines.push(line);
    }
    // With spans in them, JSON lines stay strict JSON.
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| strict_json(l).unwrap_or_else(|e| panic!("not strict JSON: {e}")))
        .collect();
    let create_line = entries
        .iter()
        .find(|l| l["message"] == "rpc" && l["method"] == "CreateTask")
        .unwrap_or_else(|| panic!("no CreateTask line in {lines:#?}"));
    assert_eq!(
        create_line["span"]["trace_id"], CALLER_TRACE,
        "{create_line}"
    );
}
