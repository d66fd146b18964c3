//! The admin listener's /metrics, scraped as Prometheus would, after real
//! calls against the kie.ai simulator: every family with HELP and TYPE,
//! counts that move, and none of it on the public callback listener.

use std::time::Duration;

use hailuo_gateway::config::{PollCadence, Secret};
use hailuo_gateway::pb::CreateTaskRequest;
use hailuo_gateway::simulator::{Simulator, SimulatorConfig, StateTimings};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::helpers::*;

const SIM_KEY: &str = "metrics-key";
const HMAC_KEY: &str = "metrics-hmac-key";

fn request(prompt: &str, request_id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        prompt: prompt.into(),
        request_id: request_id.into(),
        ..valid_request()
    }
}

/// The scrape as Prometheus asks for it (`accept`), with its content type.
async fn scrape(caller: &Caller, accept: &str) -> (String, String) {
    let response = caller
        .http()
        .get(caller.admin_url("/metrics"))
        .header("accept", accept)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    (content_type, response.text().await.expect("text"))
}

async fn value(caller: &Caller, series: &str) -> f64 {
    caller.metric(series).await.unwrap_or(0.0)
}

#[tokio::test]
async fn the_admin_listener_shows_every_family_and_counts_that_move_with_real_calls() {
    let stop = CancellationToken::new();
    let _stop_simulator = stop.clone().drop_guard();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = SimulatorConfig {
        api_key: Some(SIM_KEY.into()),
        hmac_key: Some(HMAC_KEY.into()),
        timings: StateTimings {
            waiting: Duration::from_millis(300),
            queuing: Duration::from_millis(300),
            generating: Duration::from_millis(300),
        },
        slow_create: Duration::from_millis(1500),
        ..SimulatorConfig::default()
    };
    let sim = Simulator::start(config, listener, stop)
        .await
        .expect("simulator");
    let mut settings = test_settings(&sim.base_url());
    settings.upstream.api_key = Some(Secret::new(SIM_KEY));
    settings.watch.cadence = PollCadence::constant(Duration::from_millis(50));
    settings.watch.heartbeat = Duration::from_millis(100);
    settings.callbacks.to_self = true;
    settings.callbacks.hmac_key = Some(Secret::new(HMAC_KEY));
    // One upstream slot and no queue: a second call while one is in
    // flight is the gateway's own shedding.
    settings.upstream.limits.max_in_flight = 1;
    settings.upstream.limits.max_queued = 0;
    let gateway = spawn_gateway(settings).await;

    // Prometheus text by default, with no `# EOF`.
    let (content_type, text) = scrape(&gateway, "*/*").await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"));
    assert!(
        text.contains("hailuo_gateway_build_info{version=\""),
        "{text}"
    );
    assert!(value(&gateway, "process_open_fds").await >= 3.0);
    assert_eq!(
        value(&gateway, "hailuo_gateway_upstream_in_flight_limit").await,
        1.0
    );

    // OpenMetrics only when asked for.
    let (content_type, openmetrics) = scrape(
        &gateway,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

    // A request_id: a miss, then a hit with no second create.
    let task_id = gateway
        .create(request("a cat", "r-metrics"))
        .await
        .expect("created");
    let again = gateway
        .create(request("a cat", "r-metrics"))
        .await
        .expect("the same task");
    assert_eq!(again, task_id);
    let idempotency = r#"hailuo_gateway_idempotency_total{result="#;
    assert_eq!(
        value(&gateway, &format!(r#"{idempotency}"miss"}}"#)).await,
        1.0
    );
    assert_eq!(
        value(&gateway, &format!(r#"{idempotency}"hit"}}"#)).await,
        1.0
    );

    // A watch to the end: heartbeats while nothing changes, a stream
    // duration, and kie.ai's callback accepted on the callback listener.
    let mut stream = gateway.watch(&task_id).await;
    let (_, end) = drain(&mut stream).await;
    end.expect("the watch ends OK");
    assert!(value(&gateway, "hailuo_gateway_watch_heartbeats_total").await >= 1.0);
    assert_eq!(
        value(
            &gateway,
            r#"hailuo_gateway_stream_duration_seconds_count{method="WatchTask"}"#
        )
        .await,
        1.0
    );
    let accepted = r#"hailuo_gateway_callbacks_total{outcome="accepted"}"#;
    assert!(
        wait_for(Duration::from_secs(5), || async {
            value(&gateway, accepted).await >= 1.0
        })
        .await,
        "{}",
        gateway.metrics().await
    );

    // kie.ai's 429: rate limited upstream, not shed.
    let limited = gateway
        .create(request("[sim:429] a cat", ""))
        .await
        .expect_err("429");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&limited).domain, "kie.ai");
    let rate_limited = r#"hailuo_gateway_upstream_rate_limited_total{endpoint="createTask"}"#;
    assert_eq!(value(&gateway, rate_limited).await, 1.0);
    let shed = r#"hailuo_gateway_shed_total{endpoint="createTask",reason="queue_full"}"#;
    assert_eq!(value(&gateway, shed).await, 0.0);

    // The one slot held by a slow create: the next is shed by the gateway.
    let slow = {
        let mut client = gateway.new_client().await;
        tokio::spawn(async move { client.create_task(request("[sim:slow-create] a", "")).await })
    };
    assert!(
        wait_for(Duration::from_secs(5), || async {
            value(&gateway, "hailuo_gateway_upstream_in_flight").await == 1.0
        })
        .await
    );
    let refused = gateway
        .create(request("a dog", ""))
        .await
        .expect_err("shed");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&refused).reason, "GATEWAY_OVERLOADED");
    assert_eq!(value(&gateway, shed).await, 1.0);
    assert_eq!(value(&gateway, rate_limited).await, 1.0, "not kie.ai's");
    slow.await.expect("join").expect("the slow create ends");
    assert_eq!(
        value(&gateway, "hailuo_gateway_upstream_in_flight").await,
        0.0
    );

    // The callback listener (kie.ai's, often public) has no metrics.
    let http = gateway.http();
    let on_callbacks = http
        .get(gateway.http_url("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(on_callbacks.status(), 404);
    for url in [gateway.http_url("/healthz"), gateway.admin_url("/healthz")] {
        let healthz = http.get(&url).send().await.expect("GET /healthz");
        assert_eq!(healthz.status(), 200, "{url}");
    }

    // After that traffic, every family, with HELP and TYPE (a labelled
    // family shows once it has a series).
    let (_, text) = scrape(&gateway, "text/plain").await;
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}:\n{text}"
        );
        let name = family.split(' ').next().expect("name");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
}

const FAMILIES: [&str; 18] = [
    "hailuo_gateway_build_info gauge",
    "hailuo_gateway_rpcs_total counter",
    "hailuo_gateway_rpc_duration_seconds histogram",
    "hailuo_gateway_stream_duration_seconds histogram",
    "hailuo_gateway_upstream_calls_total counter",
    "hailuo_gateway_upstream_duration_seconds histogram",
    "hailuo_gateway_upstream_rate_limited_total counter",
    "hailuo_gateway_upstream_in_flight gauge",
    "hailuo_gateway_upstream_queued gauge",
    "hailuo_gateway_shed_total counter",
    "hailuo_gateway_idempotency_total counter",
    "hailuo_gateway_watch_heartbeats_total counter",
    "hailuo_gateway_callbacks_total counter",
    "process_cpu_seconds_total counter",
    "process_resident_memory_bytes gauge",
    "process_open_fds gauge",
    "process_max_fds gauge",
    "process_start_time_seconds gauge",
];
