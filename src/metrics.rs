//! Prometheus metrics, served as text at `GET /metrics` on the HTTP
//! listener.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    endpoint: &'static str,
    kie_code: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
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

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    upstream_calls: Family<UpstreamLabels, Counter>,
    upstream_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub(crate) active_watchers: Gauge,
    pub(crate) active_pollers: Gauge,
    pub(crate) callbacks_received: Counter,
    pub(crate) callbacks_accepted: Counter,
    callbacks_rejected: Family<ReasonLabels, Counter>,
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
        let mut registry = Registry::with_prefix("hailuo_gateway");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register("rpcs", "gRPC calls by method and status code", rpcs.clone());
        let rpc_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency (WatchTask: the whole stream)",
            rpc_latency.clone(),
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
            "kie.ai call latency by endpoint",
            upstream_latency.clone(),
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
        let callbacks_received = Counter::default();
        registry.register(
            "callbacks_received",
            "kie.ai callbacks received",
            callbacks_received.clone(),
        );
        let callbacks_accepted = Counter::default();
        registry.register(
            "callbacks_accepted",
            "kie.ai callbacks accepted (their task re-read)",
            callbacks_accepted.clone(),
        );
        let callbacks_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "callbacks_rejected",
            "kie.ai callbacks rejected, by reason",
            callbacks_rejected.clone(),
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
            kie_credits,
            fleet_redis_up,
            fleet_replicas,
            fleet_leases_held,
            fleet_wakeups,
            creates,
            registry,
            rpcs,
            rpc_latency,
            upstream_calls,
            upstream_latency,
            active_watchers,
            active_pollers,
            callbacks_received,
            callbacks_accepted,
            callbacks_rejected,
            read_budget_grants,
            read_budget_waiting,
            read_budget_wait,
            cache_hits,
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
        self.rpc_latency
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
        self.upstream_calls
            .get_or_create(&UpstreamLabels { endpoint, kie_code })
            .inc();
        self.upstream_latency
            .get_or_create(&MethodLabels { method: endpoint })
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn callback_rejected(&self, reason: &'static str) {
        self.callbacks_rejected
            .get_or_create(&ReasonLabels { reason })
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

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
