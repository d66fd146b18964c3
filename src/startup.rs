//! All wiring in one place: `Application::build` binds the listeners (port 0
//! allowed: gRPC, the callback listener and the admin listener) and `run_until_stopped` serves until the stop signal, then
//! drains under a grace timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::{Listener, ListenerExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::callers::Callers;
use crate::callers::layer::CallerAuthLayer;
use crate::callers::quota::QuotaBook;
use crate::config::Settings;
use crate::create::Creator;
use crate::create::attempts::{Attempts, FleetLedger};
use crate::create::idempotency::{IdempotencyStore, InMemoryStore};
use crate::fleet::attempts::FleetAttempts;
use crate::fleet::idempotency::RedisIdempotencyStore;
use crate::fleet::limits::FleetLimits;
use crate::fleet::membership::Membership;
use crate::grpc::watch_route::VideoGenerationRoutes;
use crate::grpc::{Credentials, MAX_MESSAGE_SIZE, RefusalLogLayer, VideoGenerationService};
use crate::health::HealthSwitch;
use crate::http::CallbackState;
use crate::hub::TaskHub;
use crate::hub::fleet_tasks::FleetTasks;
use crate::kie::{Credential, KeySource, KieClient};
use crate::metrics::Metrics;
use crate::pb;
use crate::redis_client::Redis;
use crate::tls::ServerTls;
use crate::uploads::Uploader;

/// Streams one HTTP/2 connection may carry at once; high enough for a
/// burst of 10,000 watchers on one connection.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 20_000;
/// A burst of thousands of new streams on one connection needs more than
/// the default 1 MiB window, or h2 answers GOAWAY "too_many_data_frames".
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Server pings keep idle connections through NATs and find dead peers.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped gateway waits for its task leases to be handed back
/// to the fleet: one time-boxed Redis call each, in parallel.
const HAND_BACK_WITHIN: Duration = Duration::from_secs(1);

pub struct Application {
    grpc_listener: TcpListener,
    /// Set: the gRPC listener speaks TLS only.
    grpc_tls: Option<Arc<ServerTls>>,
    http_listener: TcpListener,
    /// Metrics, apart from the (public) callback listener.
    admin_listener: TcpListener,
    service: VideoGenerationService,
    callbacks: CallbackState,
    hub: TaskHub,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    drain: Drain,
    /// `None`: no caller tokens, every call is `anonymous`.
    callers: Option<Callers>,
}

/// How the gateway stops: NOT_SERVING for `delay` while still serving,
/// then the listeners close and open calls get `grace` to finish.
#[derive(Clone, Copy, Debug)]
struct Drain {
    delay: Duration,
    grace: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let grpc_listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {}", settings.grpc_addr))?;
        // Read now: a bad certificate or key stops the start.
        let grpc_tls = settings
            .grpc_tls
            .as_ref()
            .map(ServerTls::load)
            .transpose()?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", settings.http_addr))?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for metrics on {} (GATEWAY_ADMIN_ADDR)",
                    settings.admin_addr
                )
            })?;
        let shutdown = CancellationToken::new();
        // First: a bad callers file stops the start before anything else.
        let callers = settings
            .callers_file
            .as_deref()
            .map(Callers::load)
            .transpose()?;
        if let Some(callers) = &callers {
            callers.spawn_reload(shutdown.clone());
        }
        // Verified client certificates also authenticate callers.
        let mtls = settings
            .grpc_tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        warn_if_open(&grpc_listener, callers.is_some() || mtls);
        let metrics = Arc::new(Metrics::new());
        let kie = KieClient::new(&settings.upstream, metrics.clone())?;
        let hub = TaskHub::new(
            kie.clone(),
            settings.watch,
            metrics.clone(),
            shutdown.clone(),
        );
        let gateway_credential = settings
            .upstream
            .api_key
            .clone()
            .map(|key| {
                Credential::new(key, KeySource::Gateway)
                    .context("KIE_API_KEY has characters an HTTP header cannot carry")
            })
            .transpose()?;
        let redis = settings.redis.as_ref().map(Redis::new).transpose()?;
        let idempotency: Arc<dyn IdempotencyStore> = match (&redis, &settings.redis) {
            (Some(redis), Some(redis_settings)) => {
                tracing::info!(url = %redis_settings.url, prefix = redis_settings.prefix, "request_ids and kie.ai's limits are fleet-wide, in Redis");
                // A connection of its own for the heartbeat and the limits:
                // the heartbeat keeps calling while Redis is away, and a
                // connection whose last reconnect failed fails its next call
                // once; request_ids should not pay for that.
                let shared = Redis::new(redis_settings)?;
                let membership =
                    Membership::start(shared.clone(), metrics.clone(), shutdown.clone()).await;
                let limits = FleetLimits::new(shared, membership, settings.upstream.timeout);
                kie.join_fleet(limits.clone());
                hub.join_fleet(limits);
                // Pollers on a connection of their own too: they keep
                // calling while Redis is away, as the heartbeat does.
                hub.join_fleet_tasks(FleetTasks::new(
                    Redis::new(redis_settings)?,
                    settings.watch.cache_ttl,
                    metrics.clone(),
                ));
                RedisIdempotencyStore::new(redis.clone(), settings.idempotency)
            }
            _ => InMemoryStore::new(settings.idempotency),
        };
        let attempts = Attempts::in_fleet(
            kie.clone(),
            idempotency.clone(),
            metrics.clone(),
            callback_url(&settings, &http_listener)?,
            settings.idempotency.ttl,
            settings.idempotency.max_keys,
            redis.map(|redis| FleetLedger {
                attempts: Arc::new(FleetAttempts::new(redis, settings.idempotency.ttl)),
                credential: gateway_credential.clone(),
            }),
        );
        let uploads = Arc::new(Uploader::new(kie.clone(), &settings.uploads));
        // Whose balance would a pass-through gateway show? Nobody's.
        if let (Some(credential), false) = (&gateway_credential, settings.upstream.key_passthrough)
        {
            crate::credits::spawn_refresh(
                kie.clone(),
                credential.clone(),
                settings.credits,
                metrics.clone(),
                shutdown.clone(),
            );
        }
        // Counters on a connection of their own, like the limits': a quota
        // check is on every create's path.
        let quotas = QuotaBook::new(settings.redis.as_ref().map(Redis::new).transpose()?);
        hub.settle_quotas_with(quotas.clone());
        let creator = Arc::new(Creator {
            quotas: quotas.clone(),
            kie: kie.clone(),
            uploads: uploads.clone(),
            hub: hub.clone(),
            idempotency,
            attempts: attempts.clone(),
            metrics: metrics.clone(),
        });
        let service = VideoGenerationService {
            creator,
            hub: hub.clone(),
            metrics: metrics.clone(),
            credentials: Credentials {
                gateway: gateway_credential,
                passthrough: settings.upstream.key_passthrough,
                caller_tokens: callers.is_some(),
            },
            quotas,
            watch: settings.watch,
            shutdown: shutdown.clone(),
            uploads,
            kie,
        };
        let callbacks = CallbackState {
            waker: hub.waker(),
            attempts,
            metrics: metrics.clone(),
            hmac_key: settings.callbacks.hmac_key.clone(),
        };
        Ok(Self {
            grpc_listener,
            grpc_tls,
            http_listener,
            admin_listener,
            service,
            callbacks,
            hub,
            metrics,
            shutdown,
            drain: Drain {
                delay: settings.drain_delay,
                grace: settings.shutdown_grace,
            },
            callers,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's address (metrics).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn hub(&self) -> TaskHub {
        self.hub.clone()
    }

    /// Serves until `stop` resolves, then: health NOT_SERVING while calls
    /// are still taken for the drain delay, then no new calls, open watches
    /// (WatchTask and health) end with UNAVAILABLE, in-flight unary calls
    /// finish, all within the grace period. If any server ends first (a serve error,
    /// a panic), the gateway stops the same way and returns the error.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_until_stopped_with(|listener| listener, stop).await
    }

    /// `run_until_stopped` with the HTTP listener wrapped by `wrap` first:
    /// an accept loop of one's own (a TLS or PROXY-protocol acceptor), or in
    /// tests one that fails.
    pub async fn run_until_stopped_with<L>(
        self,
        wrap: impl FnOnce(TcpListener) -> L,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        L: Listener<Io = TcpStream>,
        L::Addr: std::fmt::Debug,
    {
        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let admin_addr = self.admin_addr();
        let grpc_tls = self.grpc_tls.is_some();
        let (health, health_service) = HealthSwitch::serving(self.shutdown.clone()).await;

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let router = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            // Outermost first: the refusal log sees the caller check's
            // refusals too.
            .layer(RefusalLogLayer::new(self.metrics.clone()))
            .layer(CallerAuthLayer::new(
                self.callers,
                <VideoGenerationRoutes as tonic::server::NamedService>::NAME,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                VideoGenerationRoutes::new(self.service)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    // Requests in either; answers compressed only when the
                    // caller's grpc-accept-encoding asks for it.
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
                    .send_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Zstd),
            );
        let stopping = self.shutdown.clone().cancelled_owned();
        // Health and reflection are on the same listener, TLS or not.
        let grpc: ServerTask = match self.grpc_tls.clone() {
            None => tokio::spawn(async move {
                // tonic ignores the builder's `tcp_nodelay` for a listener
                // of our own: without it, a stream's next message waited
                // for the client's delayed ACK (~40 ms) behind the last one.
                let incoming = TcpIncoming::from(self.grpc_listener).with_nodelay(Some(true));
                Ok(router
                    .serve_with_incoming_shutdown(incoming, stopping)
                    .await?)
            }),
            Some(tls) => {
                tls.spawn_reload(self.shutdown.clone());
                let incoming = crate::tls::incoming(self.grpc_listener, tls, self.shutdown.clone());
                tokio::spawn(async move {
                    Ok(router
                        .serve_with_incoming_shutdown(incoming, stopping)
                        .await?)
                })
            }
        };
        // Small answers must not wait for a delayed ACK (Nagle).
        let http_listener = wrap(self.http_listener).tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let http = axum::serve(http_listener, crate::http::router(self.callbacks))
            .with_graceful_shutdown(self.shutdown.clone().cancelled_owned());
        let admin_listener = self.admin_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let admin = axum::serve(
            admin_listener,
            crate::http::admin_router(self.metrics.clone()),
        )
        .with_graceful_shutdown(self.shutdown.clone().cancelled_owned());

        let servers = Servers {
            grpc: Some(grpc),
            http: Some(tokio::spawn(async move { Ok(http.await?) })),
            admin: Some(tokio::spawn(async move { Ok(admin.await?) })),
        };
        tracing::info!(%grpc_addr, %http_addr, %admin_addr, grpc_tls, "gateway ready");
        let not_serving = health.not_serving();
        let stopped = supervise(servers, stop, not_serving, &self.shutdown, self.drain).await;
        // The pollers stopped with the servers. Without the hand-back, the
        // process would exit first and the fleet would not poll this
        // replica's tasks until their leases lapse.
        if tokio::time::timeout(HAND_BACK_WITHIN, self.hub.hand_back_leases())
            .await
            .is_err()
        {
            tracing::warn!("task leases not all handed back; they lapse by themselves");
        }
        stopped
    }
}

/// One warning when anyone who reaches the gRPC port beyond this host can
/// spend the account's credits.
fn warn_if_open(listener: &TcpListener, authenticated: bool) {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_loopback()
        && !authenticated
    {
        tracing::warn!(
            %addr,
            "the gRPC listener is reachable beyond loopback with no caller authentication: \
             anyone who reaches it spends this gateway's kie.ai credits; set \
             GATEWAY_CALLERS_FILE (or client certificates)"
        );
    }
}

type ServerTask = JoinHandle<anyhow::Result<()>>;

/// The server tasks; each is taken out once it has ended.
struct Servers {
    grpc: Option<ServerTask>,
    http: Option<ServerTask>,
    admin: Option<ServerTask>,
}

/// Waits for `stop` or for a server to end, whichever comes first; then
/// health NOT_SERVING, the drain delay (after `stop` only: a broken server
/// should not be advertised any longer than it takes to say so), every
/// server told to stop, and a drain under the grace period.
/// A server that ended on its own (neither serve function returns before
/// its shutdown future unless something broke) makes this an error, so the
/// process exits non-zero instead of running on with a dead listener.
async fn supervise(
    mut servers: Servers,
    stop: impl Future<Output = ()>,
    not_serving: impl Future<Output = ()>,
    shutdown: &CancellationToken,
    drain: Drain,
) -> anyhow::Result<()> {
    let Drain { delay, grace } = drain;
    let early = tokio::select! {
        () = stop => None,
        ended = join(&mut servers.grpc) => Some(("gRPC", ended)),
        ended = join(&mut servers.http) => Some(("HTTP", ended)),
        ended = join(&mut servers.admin) => Some(("admin", ended)),
    };
    let early = early.map(|(server, ended)| {
        let why = match ended {
            Ok(()) => anyhow::anyhow!("it stopped accepting connections"),
            Err(e) => e,
        };
        tracing::error!(
            server,
            error = format!("{why:#}"),
            "a server ended on its own; stopping the gateway"
        );
        why.context(format!("the {server} server ended on its own"))
    });
    not_serving.await;
    if early.is_none() && !delay.is_zero() {
        tracing::info!(
            ?delay,
            "health NOT_SERVING; still serving for the drain delay"
        );
        tokio::time::sleep(delay).await;
    }
    shutdown.cancel();
    let drained = tokio::time::timeout(grace, async {
        let grpc = join(&mut servers.grpc).await;
        let http = join(&mut servers.http).await;
        let admin = join(&mut servers.admin).await;
        grpc.and(http).and(admin)
    })
    .await;
    let Ok(drained) = drained else {
        tracing::warn!(
            ?grace,
            "grace period over with calls still open; stopping anyway"
        );
        return early.map_or(Ok(()), Err);
    };
    if let Some(why) = early {
        return Err(why);
    }
    drained?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The end of a server task, a panic included; a task already taken has
/// nothing left to wait for.
async fn join(task: &mut Option<ServerTask>) -> anyhow::Result<()> {
    let Some(handle) = task.as_mut() else {
        return Ok(());
    };
    let ended = handle.await;
    // Taken only once it has ended: a `select!` may drop this future first.
    *task = None;
    match ended {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(anyhow::anyhow!("it panicked: {}", panic_message(e))),
        Err(e) => Err(anyhow::anyhow!("its task was cancelled: {e}")),
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The `callBackUrl` sent with tasks created without the caller's own.
fn callback_url(settings: &Settings, http: &TcpListener) -> anyhow::Result<Option<url::Url>> {
    if settings.callbacks.to_self {
        let port = http.local_addr()?.port();
        return Ok(Some(
            format!("http://127.0.0.1:{port}/callbacks/kie").parse()?,
        ));
    }
    Ok(settings.callbacks.public_url.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_server_that_returns_before_shutdown_stops_the_other_and_fails_the_run() {
        let shutdown = CancellationToken::new();
        let told_to_stop = shutdown.clone();
        let servers = Servers {
            // tonic's serve returns `Ok` when its connection stream ends.
            grpc: Some(tokio::spawn(async { Ok(()) })),
            http: Some(tokio::spawn({
                let told_to_stop = told_to_stop.clone();
                async move {
                    told_to_stop.cancelled().await;
                    Ok(())
                }
            })),
            admin: Some(tokio::spawn(async move {
                told_to_stop.cancelled().await;
                Ok(())
            })),
        };
        let not_serving = AtomicBool::new(false);

        let ended = supervise(
            servers,
            std::future::pending(),
            async { not_serving.store(true, Ordering::SeqCst) },
            &shutdown,
            Drain {
                delay: Duration::from_secs(60),
                grace: Duration::from_secs(5),
            },
        )
        .await;

        let error = format!("{:#}", ended.expect_err("an early end is an error"));
        assert_eq!(
            error,
            "the gRPC server ended on its own: it stopped accepting connections"
        );
        assert!(not_serving.load(Ordering::SeqCst));
        assert!(shutdown.is_cancelled(), "the HTTP server was told to stop");
    }
}
