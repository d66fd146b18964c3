//! Black-box tests: the real gateway on 127.0.0.1:0, a scripted kie.ai
//! (wiremock), and the generated tonic client.

mod binary;
mod helpers;
mod redis_server;

#[cfg(feature = "sandbox")]
mod callers;
mod create_outcome;
mod create_task;
mod credits;
mod download_links;
#[cfg(feature = "sandbox")]
mod fleet_crash;
#[cfg(feature = "sandbox")]
mod fleet_failover;
mod fleet_idempotency;
mod fleet_limits;
#[cfg(feature = "sandbox")]
mod fleet_redis_empty;
mod fleet_secrets;
mod fleet_tls;
mod fleet_watch;
mod generate_video;
mod get_task;
#[cfg(feature = "sandbox")]
mod metrics;
mod proxy;
#[cfg(feature = "sandbox")]
mod quotas;
mod reliability;
mod rpc_logs;
mod secrets;
mod shutdown;
#[cfg(feature = "sandbox")]
mod simulator_e2e;
mod status_mapping;
mod supervision;
mod tls;
#[cfg(feature = "sandbox")]
mod tracing;
mod transport;
mod uploads;
mod validation;
mod watch_at_scale;
mod watch_task;
