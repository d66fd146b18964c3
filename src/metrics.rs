//! Prometheus metrics, served at `GET /metrics` on the admin listener
//! (`GATEWAY_ADMIN_ADDR`): Prometheus text 0.0.4 by default, OpenMetrics
//! when the scraper asks for it. Plain labels in, so it depends on no room.

mod process;

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The `Content-Type` of each exposition format.
pub(crate) const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub(crate) const OPENMETRICS_TEXT: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The RPCs whose duration is a stream's whole life (up to
/// GATEWAY_WATCH_MAX_DURATION), not an answer's latency.
const STREAMS: [&str; 2] = ["WatchTask", "GenerateVideo"];

/// The commit the binary was built from (build.rs), or "unknown".
const GIT_COMMIT: &str = env!("HAILUO_GATEWAY_GIT_COMMIT");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    /// Bounded: names from the callers file, or "anonymous".
    caller: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// One dimension, one name: the kie.ai endpoint is `endpoint` on every
/// upstream family (and `method` is only ever the gateway's RPC).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    endpoint: &'static str,
    kie_code: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    endpoint: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    /// Whose key: the gateway's own (pass-through keys are never read).
    account: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// What became of a createTask attempt, for the `creates` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CreateTally {
    /// kie.ai answered with the task id.
    Created,
    /// Certainly no task (kie.ai said no, nothing was sent, the gateway shed it).
    NotCreated,
    /// Sent, and no readable answer: kie.ai may have made a task.
    MaybeCreated,
    /// A maybe-created attempt whose task id was learned afterwards.
    ResolvedLater,
}

impl CreateTally {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::NotCreated => "not_created",
            Self::MaybeCreated => "maybe_created",
            Self::ResolvedLater => "resolved_later",
        }
    }
}

/// What a request_id's reservation found, for the `idempotency` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdempotencyTally {
    /// New: this call makes the attempt.
    Miss,
    /// An earlier attempt's task id, answered with no upstream call.
    Hit,
    /// The concurrent attempt this call waited for failed; its error is
    /// the answer.
    HitFailed,
    /// An earlier attempt may have made a task whose id is not known (yet).
    HitUnknown,
    /// The request_id came back with different parameters.
    Mismatch,
    /// The shared store (Redis) is away: refused, nothing sent.
    Unavailable,
}

impl IdempotencyTally {
    fn as_str(self) -> &'static str {
        match self {
            Self::Miss => "miss",
            Self::Hit => "hit",
            Self::HitFailed => "hit_failed",
            Self::HitUnknown => "hit_unknown",
            Self::Mismatch => "mismatch",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Unary calls and upstream calls: 100 µs to ~52 s (a createTask may wait
/// at the gate and then up to KIE_TIMEOUT, 30 s, for its answer).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Streams live up to GATEWAY_WATCH_MAX_DURATION (1 h by default): buckets
/// up to 4 h, so that even a raised maximum lands below +Inf.
fn stream_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
        7200.0, 14400.0,
    ])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_latency: HistogramFamily<MethodLabels>,
    stream_latency: HistogramFamily<MethodLabels>,
    upstream_calls: Family<UpstreamLabels, Counter>,
    upstream_latency: HistogramFamily<EndpointLabels>,
    upstream_rate_limited: Family<EndpointLabels, Counter>,
    /// Upstream requests holding one of the gate's KIE_MAX_IN_FLIGHT slots.
    pub(crate) upstream_in_flight: Gauge,
    /// Callers waiting at the gate (at most KIE_MAX_QUEUED).
    pub(crate) upstream_queued: Gauge,
    pub(crate) upstream_in_flight_limit: Gauge,
    pub(crate) upstream_queued_limit: Gauge,
    shed: Family<ShedLabels, Counter>,
    idempotency: Family<ResultLabels, Counter>,
    pub(crate) heartbeats: Counter,
    pub(crate) active_watchers: Gauge,
    pub(crate) active_pollers: Gauge,
    callbacks: Family<OutcomeLabels, Counter>,
    pub(crate) read_budget_grants: Counter,
    pub(crate) read_budget_waiting: Gauge,
    read_budget_wait: Histogram,
    pub(crate) cache_hits: Counter,
    creates: Family<OutcomeLabels, Counter>,
    pub fleet_redis_up: Gauge,
    pub fleet_replicas: Gauge,
    pub fleet_leases_held: Gauge,
    pub fleet_wakeups: Counter,
    /// The kie.ai account's credits, as last read: absent until then, so
    /// that no one reads an unknown balance as zero.
    kie_credits: Family<AccountLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // process_*: the standard names, without the gateway's prefix.
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("hailuo_gateway");
        registry.register(
            "build",
            "the gateway's version and the git commit it was built from; always 1",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: GIT_COMMIT,
            }),
        );
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpcs",
            "gRPC calls by method and status code (streams counted when they end)",
            rpcs.clone(),
        );
        let rpc_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency by method, for all but the WatchTask and GenerateVideo streams",
            rpc_latency.clone(),
        );
        let stream_latency = Family::new_with_constructor(stream_histogram as fn() -> Histogram);
        registry.register(
            "stream_duration_seconds",
            "how long WatchTask and GenerateVideo streams lasted, by method (up to hours)",
            stream_latency.clone(),
        );
        let upstream_calls = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_calls",
            "kie.ai calls by endpoint and answered code",
            upstream_calls.clone(),
        );
        let upstream_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "upstream_duration_seconds",
            "kie.ai call latency by endpoint, from the gate's admission to the answer",
            upstream_latency.clone(),
        );
        let upstream_rate_limited = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "upstream_rate_limited",
            "kie.ai calls answered 429 (its rate limit), by endpoint",
            upstream_rate_limited.clone(),
        );
        let upstream_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "kie.ai requests in flight (each holds one of KIE_MAX_IN_FLIGHT slots)",
            upstream_in_flight.clone(),
        );
        let upstream_queued = Gauge::default();
        registry.register(
            "upstream_queued",
            "calls waiting at the gate for an upstream slot or a createTask start",
            upstream_queued.clone(),
        );
        let upstream_in_flight_limit = Gauge::default();
        registry.register(
            "upstream_in_flight_limit",
            "KIE_MAX_IN_FLIGHT: the most kie.ai requests in flight at once",
            upstream_in_flight_limit.clone(),
        );
        let upstream_queued_limit = Gauge::default();
        registry.register(
            "upstream_queued_limit",
            "KIE_MAX_QUEUED: the most calls waiting at the gate; beyond it calls are shed",
            upstream_queued_limit.clone(),
        );
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "shed",
            "calls the gateway turned away itself before anything reached kie.ai \
             (RESOURCE_EXHAUSTED GATEWAY_OVERLOADED), by endpoint and limit",
            shed.clone(),
        );
        let idempotency = Family::<ResultLabels, Counter>::default();
        registry.register(
            "idempotency",
            "CreateTask calls with a request_id, by what the reservation found \
             (miss, hit, hit_failed, hit_unknown, mismatch, unavailable)",
            idempotency.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "watch_heartbeats",
            "heartbeat messages sent on WatchTask and GenerateVideo streams",
            heartbeats.clone(),
        );
        let active_watchers = Gauge::default();
        registry.register(
            "active_watchers",
            "open WatchTask streams",
            active_watchers.clone(),
        );
        let active_pollers = Gauge::default();
        registry.register(
            "active_pollers",
            "tasks being polled upstream",
            active_pollers.clone(),
        );
        let callbacks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "callbacks",
            "kie.ai callbacks received, by outcome (accepted, or why refused)",
            callbacks.clone(),
        );
        let read_budget_grants = Counter::default();
        registry.register(
            "read_budget_grants",
            "recordInfo reads granted by the shared read budget",
            read_budget_grants.clone(),
        );
        let read_budget_waiting = Gauge::default();
        registry.register(
            "read_budget_waiting",
            "pollers waiting for the read budget",
            read_budget_waiting.clone(),
        );
        let read_budget_wait = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "read_budget_wait_seconds",
            "how long a poller waited for the read budget",
            read_budget_wait.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "task_cache_hits",
            "finished tasks answered from the cache",
            cache_hits.clone(),
        );
        let creates = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "creates",
            "createTask attempts by outcome (created, not_created, maybe_created, resolved_later)",
            creates.clone(),
        );
        let fleet_redis_up = Gauge::default();
        registry.register(
            "fleet_redis_up",
            "1 while this replica reaches the fleet's Redis, 0 while it keeps to its share of the limits",
            fleet_redis_up.clone(),
        );
        let fleet_replicas = Gauge::default();
        registry.register(
            "fleet_replicas",
            "replicas in the fleet as this replica saw it in Redis (the largest count of the last few seconds: what its shares of the limits divide by while Redis is away)",
            fleet_replicas.clone(),
        );
        let fleet_leases_held = Gauge::default();
        registry.register(
            "fleet_leases_held",
            "tasks this replica polls kie.ai for on the fleet's behalf (it holds their poller lease)",
            fleet_leases_held.clone(),
        );
        let fleet_wakeups = Counter::default();
        registry.register(
            "fleet_wakeups",
            "wake-ups received from other replicas (a callback they got, a state their poller wrote)",
            fleet_wakeups.clone(),
        );
        let kie_credits = Family::<AccountLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "kie_credits",
            "the kie.ai account's remaining credits, read every GATEWAY_CREDITS_REFRESH",
            kie_credits.clone(),
        );
        Self {
            registry: root,
            rpcs,
            rpc_latency,
            stream_latency,
            upstream_calls,
            upstream_latency,
            upstream_rate_limited,
            upstream_in_flight,
            upstream_queued,
            upstream_in_flight_limit,
            upstream_queued_limit,
            shed,
            idempotency,
            heartbeats,
            active_watchers,
            active_pollers,
            callbacks,
            read_budget_grants,
            read_budget_waiting,
            read_budget_wait,
            cache_hits,
            creates,
            fleet_redis_up,
            fleet_replicas,
            fleet_leases_held,
            fleet_wakeups,
            kie_credits,
        }
    }

    /// One finished gRPC call; `code` is the status code's canonical name.
    pub(crate) fn rpc(
        &self,
        method: &'static str,
        caller: &str,
        code: &'static str,
        latency: Duration,
    ) {
        let labels = RpcLabels {
            method,
            caller: caller.to_owned(),
            code,
        };
        self.rpcs.get_or_create(&labels).inc();
        let histogram = if STREAMS.contains(&method) {
            &self.stream_latency
        } else {
            &self.rpc_latency
        };
        histogram
            .get_or_create(&MethodLabels { method })
            .observe(latency.as_secs_f64());
    }

    /// One kie.ai call, by endpoint name and the code it answered.
    pub(crate) fn upstream_call(
        &self,
        endpoint: &'static str,
        kie_code: Cow<'static, str>,
        latency: Duration,
    ) {
        // kie.ai's 429 comes as its JSON code or, from a proxy in front of
        // it, as the HTTP status.
        if matches!(kie_code.as_ref(), "429" | "http_429") {
            self.upstream_rate_limited
                .get_or_create(&EndpointLabels { endpoint })
                .inc();
        }
        self.upstream_calls
            .get_or_create(&UpstreamLabels { endpoint, kie_code })
            .inc();
        self.upstream_latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(latency.as_secs_f64());
    }

    /// A call to `endpoint` the gateway turned away itself (`reason`: the
    /// limit that was full).
    pub(crate) fn shed(&self, endpoint: &'static str, reason: &'static str) {
        self.shed
            .get_or_create(&ShedLabels { endpoint, reason })
            .inc();
    }

    pub(crate) fn idempotency(&self, tally: IdempotencyTally) {
        self.idempotency
            .get_or_create(&ResultLabels {
                result: tally.as_str(),
            })
            .inc();
    }

    /// One kie.ai callback: `accepted`, or the reason it was refused.
    pub(crate) fn callback(&self, outcome: &'static str) {
        self.callbacks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn credits(&self, credits: f64) {
        self.kie_credits
            .get_or_create(&AccountLabels { account: "gateway" })
            .set(credits);
    }

    pub(crate) fn create_attempt(&self, tally: CreateTally) {
        self.creates
            .get_or_create(&OutcomeLabels {
                outcome: tally.as_str(),
            })
            .inc();
    }

    pub(crate) fn budget_waited(&self, wait: Duration) {
        self.read_budget_wait.observe(wait.as_secs_f64());
    }

    /// The exposition: OpenMetrics, or Prometheus text 0.0.4 (HELP and
    /// TYPE for every family, counters named `_total`, no `# EOF`).
    pub(crate) fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        out
    }
}

/// Whether a scraper's `Accept` header prefers OpenMetrics: only when it
/// names `application/openmetrics-text` with a weight at least that of
/// the plain text format (`text/plain`, `text/*` or `*/*`).
pub(crate) fn wants_openmetrics(accept: &str) -> bool {
    let mut openmetrics = 0.0_f32;
    let mut text = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_the_scraper_prefers_it() {
        // Prometheus 2.x's own Accept header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(wants_openmetrics("application/openmetrics-text"));
        for plain in [
            "",
            "*/*",
            "text/plain",
            "text/plain;version=0.0.4",
            "application/openmetrics-text;q=0",
            "text/plain, application/openmetrics-text;q=0.5",
        ] {
            assert!(!wants_openmetrics(plain), "{plain:?}");
        }
    }

    #[test]
    fn every_family_has_help_and_type_in_both_formats() {
        let metrics = Metrics::new();
        metrics.rpc("WatchTask", "anonymous", "OK", Duration::from_secs(1800));
        metrics.rpc("GetTask", "anonymous", "OK", Duration::from_millis(3));
        let text = metrics.encode(false);
        assert!(!text.contains("# EOF"), "{text}");
        for family in [
            "hailuo_gateway_rpcs_total",
            "hailuo_gateway_build_info",
            "hailuo_gateway_stream_duration_seconds",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
        // A half-hour watch lands in its own bucket, not in +Inf.
        assert!(
            text.contains(
                "hailuo_gateway_stream_duration_seconds_bucket{method=\"WatchTask\",le=\"1800\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("rpc_duration_seconds_count{method=\"WatchTask\"}"));
        let openmetrics = metrics.encode(true);
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        assert!(openmetrics.contains("# TYPE hailuo_gateway_build info\n"));
    }
}
