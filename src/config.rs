//! Settings: the command line (each flag also an environment variable) and the
//! typed settings tree the application is built from.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use url::Url;

/// Defaults, in one place for the flags and for `Settings::default`.
pub mod defaults {
    use std::time::Duration;

    pub const KIE_BASE_URL: &str = "https://api.kie.ai";
    pub const GRPC_ADDR: &str = "0.0.0.0:50051";
    pub const HTTP_ADDR: &str = "0.0.0.0:8080";
    /// Metrics stay off the public callback listener, and on loopback
    /// unless the operator opens them (a pod sets 0.0.0.0:9464 for its
    /// scraper). Not 9090: that is Prometheus's own port.
    pub const ADMIN_ADDR: &str = "127.0.0.1:9464";
    /// kie.ai's guidance: every 2-3 s for the first 30 s, 5-10 s until 2 min,
    /// 15-30 s after.
    pub const POLL_FAST: Duration = Duration::from_secs(2);
    pub const POLL_FAST_UNTIL: Duration = Duration::from_secs(30);
    pub const POLL_MEDIUM: Duration = Duration::from_secs(5);
    pub const POLL_MEDIUM_UNTIL: Duration = Duration::from_secs(120);
    pub const POLL_SLOW: Duration = Duration::from_secs(15);
    /// Well inside the shortest common idle timeout of a proxy in front:
    /// nginx's `grpc_read_timeout` and AWS's and Google's load balancers
    /// cut a stream quiet for 60 s (Envoy after 5 min). At 60 s a watch
    /// behind nginx lived or died by a race, and lost as INTERNAL.
    pub const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);
    pub const WATCH_RETRY_BUDGET: u32 = 10;
    pub const RETRY_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
    pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    /// NOT_SERVING for this long before the listeners close: a readiness
    /// probe with a 1 s period sees it about five times.
    pub const DRAIN_DELAY: Duration = Duration::from_secs(5);
    /// With callbacks on, polling is only a safety net for lost callbacks.
    pub const CALLBACK_SAFETY_POLL: Duration = Duration::from_secs(30);
    /// kie.ai's documented status-query limit per key.
    pub const READ_BUDGET_PER_SECOND: u32 = 10;
    pub const TASK_CACHE_SIZE: usize = 10_000;
    pub const TASK_CACHE_TTL: Duration = Duration::from_secs(3600);
    pub const WATCH_MAX_DURATION: Duration = Duration::from_secs(3600);
    pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
    pub const IDEMPOTENCY_KEYS: usize = 100_000;
    pub const MAX_IN_FLIGHT: usize = 64;
    pub const MAX_QUEUED: usize = 256;
    /// kie.ai: at most 20 new generation requests per 10 s per account.
    pub const CREATE_LIMIT: usize = 20;
    pub const CREATE_WINDOW: Duration = Duration::from_secs(10);
    pub const REDIS_PREFIX: &str = "hailuo-gateway";

    // Image uploads (issue 13).
    /// kie.ai's file API lives on its own host.
    pub const KIE_UPLOAD_BASE_URL: &str = "https://kieai.redpandaai.co";
    pub const UPLOAD_PATH: &str = "hailuo-gateway";
    /// Each upload holds its image (at most 10 MiB) in memory.
    pub const MAX_CONCURRENT_UPLOADS: usize = 8;

    // Credits (issue 13).
    pub const CREDITS_REFRESH: Duration = Duration::from_secs(300);
    pub const CREDITS_WARN_BELOW: f64 = 100.0;

    // TLS on the gRPC listener (issue 17).
    /// How often the certificate, key and client CA files are read again:
    /// cert-manager renews well before expiry, so seconds are plenty.
    pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
}

/// A secret: a kie.ai API key, or the key kie.ai signs its callbacks with.
/// Debug and Display never show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into().into())
    }

    /// The secret itself, for the Authorization header or the callback
    /// signature, and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim();
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        Ok(Self::new(key))
    }
}

/// A Redis URL. It may carry a password, so Debug and Display show it
/// without one.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(Url);

impl RedisUrl {
    /// The URL itself, password included, for the Redis client and nothing
    /// else.
    pub fn expose(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Only fails for URLs that cannot have a password at all.
            let _ = shown.set_password(Some("REDACTED"));
        }
        write!(f, "{shown}")
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The parse error never quotes the input: it may hold a password.
        let url = Url::parse(s.trim()).map_err(|e| format!("not a URL: {e}"))?;
        match url.scheme() {
            "redis" | "rediss" => Ok(Self(url)),
            other => Err(format!(
                "scheme {other:?}: use redis://host:port/db (or rediss:// for TLS)"
            )),
        }
    }
}

/// kie.ai's `uploadPath`: segments of letters, digits, `_`, `-` and `.`,
/// no leading or trailing slash.
fn upload_path(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("must be path segments of A-Z, a-z, 0-9, '_', '-', '.', without a leading or trailing slash".into())
    }
}

/// A key prefix: no braces, which would change the keys' hash tags (Redis
/// Cluster hashes only what the first `{...}` holds).
fn redis_prefix(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.contains(['{', '}']) || raw.chars().any(char::is_whitespace) {
        return Err("must be non-empty, without braces or spaces".into());
    }
    Ok(raw.to_owned())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn at_least_one(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

fn human(d: Duration) -> humantime::Duration {
    d.into()
}

/// Flags of the gateway server. Each flag is also an environment variable.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// kie.ai API key used for every upstream call (required in live mode
    /// unless --key-passthrough is on).
    #[arg(long, env = "KIE_API_KEY", hide_env_values = true)]
    pub kie_api_key: Option<Secret>,

    /// Use the caller's `authorization: Bearer …` metadata as the kie.ai key
    /// for that call, so each team spends its own credits.
    #[arg(long, env = "GATEWAY_KEY_PASSTHROUGH")]
    pub key_passthrough: bool,

    /// Base URL of kie.ai's API.
    #[arg(long, env = "KIE_BASE_URL", default_value = defaults::KIE_BASE_URL)]
    pub kie_base_url: Url,

    /// TOML file of the callers allowed to call (`[[caller]]` with name,
    /// token_sha256 and optional quotas): when set, every VideoGeneration
    /// call needs `authorization: Bearer <caller token>`, and a
    /// pass-through kie.ai key goes in `x-kie-api-key`. Read again when it
    /// changes; a bad version is a warning and the last good one stays.
    #[arg(long, env = "GATEWAY_CALLERS_FILE")]
    pub callers_file: Option<PathBuf>,

    /// Address of the gRPC listener.
    #[arg(long, env = "GATEWAY_GRPC_ADDR", default_value = defaults::GRPC_ADDR)]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener kie.ai's callbacks reach (often public).
    #[arg(long, env = "GATEWAY_HTTP_ADDR", default_value = defaults::HTTP_ADDR)]
    pub http_addr: SocketAddr,

    /// Address of the admin listener: Prometheus metrics (GET /metrics) and
    /// GET /healthz, apart from the callback listener.
    #[arg(long, env = "GATEWAY_ADMIN_ADDR", default_value = defaults::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Poll interval while a task is young.
    #[arg(long, env = "GATEWAY_POLL_FAST", default_value_t = human(defaults::POLL_FAST))]
    pub poll_fast: humantime::Duration,

    /// Task age until which the fast interval applies.
    #[arg(long, env = "GATEWAY_POLL_FAST_UNTIL", default_value_t = human(defaults::POLL_FAST_UNTIL))]
    pub poll_fast_until: humantime::Duration,

    /// Poll interval after the fast phase.
    #[arg(long, env = "GATEWAY_POLL_MEDIUM", default_value_t = human(defaults::POLL_MEDIUM))]
    pub poll_medium: humantime::Duration,

    /// Task age until which the medium interval applies.
    #[arg(long, env = "GATEWAY_POLL_MEDIUM_UNTIL", default_value_t = human(defaults::POLL_MEDIUM_UNTIL))]
    pub poll_medium_until: humantime::Duration,

    /// Poll interval for old tasks.
    #[arg(long, env = "GATEWAY_POLL_SLOW", default_value_t = human(defaults::POLL_SLOW))]
    pub poll_slow: humantime::Duration,

    /// Quiet period after which WatchTask sends a heartbeat message.
    #[arg(long, env = "GATEWAY_WATCH_HEARTBEAT", default_value_t = human(defaults::WATCH_HEARTBEAT))]
    pub watch_heartbeat: humantime::Duration,

    /// Consecutive failed upstream reads a watch survives before it ends
    /// with UNAVAILABLE.
    #[arg(long, env = "GATEWAY_WATCH_RETRY_BUDGET", default_value_t = defaults::WATCH_RETRY_BUDGET)]
    pub watch_retry_budget: u32,

    /// First back-off delay after a failed upstream read (doubles, with
    /// jitter).
    #[arg(long, env = "GATEWAY_RETRY_BACKOFF_INITIAL", default_value_t = human(defaults::RETRY_BACKOFF_INITIAL))]
    pub retry_backoff_initial: humantime::Duration,

    /// Longest back-off delay between failed upstream reads.
    #[arg(long, env = "GATEWAY_RETRY_BACKOFF_MAX", default_value_t = human(defaults::RETRY_BACKOFF_MAX))]
    pub retry_backoff_max: humantime::Duration,

    /// Connect timeout of upstream calls.
    #[arg(long, env = "KIE_CONNECT_TIMEOUT", default_value_t = human(defaults::UPSTREAM_CONNECT_TIMEOUT))]
    pub kie_connect_timeout: humantime::Duration,

    /// Timeout of one upstream call (the caller's deadline caps it further).
    #[arg(long, env = "KIE_TIMEOUT", default_value_t = human(defaults::UPSTREAM_TIMEOUT))]
    pub kie_timeout: humantime::Duration,

    /// Time in-flight calls get to finish once the listeners close.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value_t = human(defaults::SHUTDOWN_GRACE))]
    pub shutdown_grace: humantime::Duration,

    /// After SIGTERM/SIGINT, how long health says NOT_SERVING while calls
    /// are still taken, so load balancers stop sending before the
    /// listeners close.
    #[arg(long, env = "GATEWAY_DRAIN_DELAY", default_value_t = human(defaults::DRAIN_DELAY))]
    pub drain_delay: humantime::Duration,

    /// Public URL of this gateway's `POST /callbacks/kie`. When set, tasks
    /// created without a caller callback_url ask kie.ai to call back here,
    /// which wakes their watchers at once; polling then only backs it up.
    #[arg(long, env = "GATEWAY_PUBLIC_CALLBACK_URL")]
    pub public_callback_url: Option<Url>,

    /// kie.ai webhook HMAC key: when set, callbacks must carry a valid
    /// X-Webhook-Signature no older than 5 minutes.
    #[arg(long, env = "KIE_WEBHOOK_HMAC_KEY", hide_env_values = true)]
    pub kie_webhook_hmac_key: Option<Secret>,

    /// Poll interval of tasks that kie.ai will call back about.
    #[arg(long, env = "GATEWAY_CALLBACK_SAFETY_POLL", default_value_t = human(defaults::CALLBACK_SAFETY_POLL))]
    pub callback_safety_poll: humantime::Duration,

    /// Most recordInfo reads per second, all watched tasks together.
    #[arg(long, env = "GATEWAY_READ_BUDGET", default_value_t = defaults::READ_BUDGET_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_budget: u32,

    /// Finished tasks kept in memory (answered without an upstream call).
    #[arg(long, env = "GATEWAY_TASK_CACHE_SIZE", default_value_t = defaults::TASK_CACHE_SIZE)]
    pub task_cache_size: usize,

    /// How long a finished task is kept.
    #[arg(long, env = "GATEWAY_TASK_CACHE_TTL", default_value_t = human(defaults::TASK_CACHE_TTL))]
    pub task_cache_ttl: humantime::Duration,

    /// Longest a single WatchTask call may last (then DEADLINE_EXCEEDED;
    /// call again to go on watching).
    #[arg(long, env = "GATEWAY_WATCH_MAX_DURATION", default_value_t = human(defaults::WATCH_MAX_DURATION))]
    pub watch_max_duration: humantime::Duration,

    /// How long a request_id makes CreateTask idempotent.
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_TTL", default_value_t = human(defaults::IDEMPOTENCY_TTL))]
    pub idempotency_ttl: humantime::Duration,

    /// Most request_ids remembered at once (the oldest are forgotten first).
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_KEYS", default_value_t = defaults::IDEMPOTENCY_KEYS)]
    pub idempotency_keys: usize,

    /// Most upstream requests in flight at once.
    #[arg(long, env = "KIE_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT, value_parser = at_least_one)]
    pub kie_max_in_flight: usize,

    /// Most callers waiting for an upstream slot; beyond it calls are shed
    /// at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "KIE_MAX_QUEUED", default_value_t = defaults::MAX_QUEUED)]
    pub kie_max_queued: usize,

    /// Most createTask calls per --kie-create-window (kie.ai allows 20 per
    /// 10 s per account); 0 turns the limit off.
    #[arg(long, env = "KIE_CREATE_LIMIT", default_value_t = defaults::CREATE_LIMIT)]
    pub kie_create_limit: usize,

    /// The window of --kie-create-limit.
    #[arg(long, env = "KIE_CREATE_WINDOW", default_value_t = human(defaults::CREATE_WINDOW))]
    pub kie_create_window: humantime::Duration,

    /// Redis shared by the replicas of one gateway (`redis://host:6379/0`,
    /// `rediss://` for TLS; a password goes in the URL and is never
    /// printed). Unset, the gateway keeps its state in this process only.
    #[arg(long, env = "GATEWAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,

    /// PEM file of the CA(s) that sign Redis's certificate (rediss://),
    /// trusted instead of the system's roots.
    #[arg(long, env = "GATEWAY_REDIS_CA_FILE", requires = "redis_url")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM certificate chain this gateway presents to Redis (mutual TLS,
    /// Redis's `tls-auth-clients yes`); with --redis-client-key-file.
    #[arg(long, env = "GATEWAY_REDIS_CLIENT_CERT_FILE", requires = "redis_url")]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM private key of --redis-client-cert-file.
    #[arg(long, env = "GATEWAY_REDIS_CLIENT_KEY_FILE", requires = "redis_url")]
    pub redis_client_key_file: Option<PathBuf>,

    /// Namespace of this gateway's keys in Redis, so that several gateways
    /// (several kie.ai accounts) can share one Redis.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = defaults::REDIS_PREFIX, value_parser = redis_prefix)]
    pub redis_prefix: String,

    // === TLS on the gRPC listener ===
    /// PEM certificate chain of the gRPC listener (leaf first); with
    /// --tls-key-file it turns TLS on. Re-read when it changes.
    #[arg(long, env = "GATEWAY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "GATEWAY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM bundle of the CA(s) whose client certificates are accepted:
    /// turns client-certificate verification (mutual TLS) on, and a call
    /// without a valid certificate fails its handshake.
    #[arg(long, env = "GATEWAY_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// How often the TLS files are checked for a change.
    #[arg(long, env = "GATEWAY_TLS_RELOAD_INTERVAL", default_value_t = human(defaults::TLS_RELOAD_INTERVAL))]
    pub tls_reload_interval: humantime::Duration,

    // === Image uploads ===
    /// Base URL of kie.ai's file upload API (another host than its API).
    #[arg(long, env = "KIE_UPLOAD_BASE_URL", default_value = defaults::KIE_UPLOAD_BASE_URL)]
    pub kie_upload_base_url: Url,

    /// kie.ai `uploadPath` the gateway's uploads go under (no leading or
    /// trailing slash); files get random names within it.
    #[arg(long, env = "KIE_UPLOAD_PATH", default_value = defaults::UPLOAD_PATH, value_parser = upload_path)]
    pub kie_upload_path: String,

    /// Most image uploads at once (UploadImage streams and CreateTask's
    /// image bytes); each holds up to 10 MiB. Beyond it calls wait, then get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENT_UPLOADS", default_value_t = defaults::MAX_CONCURRENT_UPLOADS, value_parser = at_least_one)]
    pub max_concurrent_uploads: usize,

    // === Credits ===
    /// How often the gateway reads its kie.ai account's credits into the
    /// hailuo_gateway_kie_credits gauge; 0 turns it off (it is always off
    /// with key pass-through).
    #[arg(long, env = "GATEWAY_CREDITS_REFRESH", default_value_t = human(defaults::CREDITS_REFRESH))]
    pub credits_refresh: humantime::Duration,

    /// Below this balance each refresh logs a warning, before kie.ai starts
    /// refusing creates with 402.
    #[arg(long, env = "GATEWAY_CREDITS_WARN_BELOW", default_value_t = defaults::CREDITS_WARN_BELOW)]
    pub credits_warn_below: f64,

    /// Run against a built-in kie.ai simulator: no key, no credits spent.
    #[cfg(feature = "sandbox")]
    #[arg(long, env = "GATEWAY_SANDBOX")]
    pub sandbox: bool,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where upstream calls go and with which key.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub base_url: Url,
    /// kie.ai's file upload API (`KIE_UPLOAD_BASE_URL`).
    pub upload_base_url: Url,
    /// The gateway's own key; `None` only with key pass-through.
    pub api_key: Option<Secret>,
    pub key_passthrough: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub limits: UpstreamLimits,
}

/// What protects kie.ai (and the gateway's key) from a burst of callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamLimits {
    pub max_in_flight: usize,
    pub max_queued: usize,
    /// createTask calls per window; 0 means no limit.
    pub create_limit: usize,
    pub create_window: Duration,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            max_in_flight: defaults::MAX_IN_FLIGHT,
            max_queued: defaults::MAX_QUEUED,
            create_limit: defaults::CREATE_LIMIT,
            create_window: defaults::CREATE_WINDOW,
        }
    }
}

/// CreateTask idempotency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotencySettings {
    pub ttl: Duration,
    pub max_keys: usize,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl: defaults::IDEMPOTENCY_TTL,
            max_keys: defaults::IDEMPOTENCY_KEYS,
        }
    }
}

/// How often a watched task is read, by its age (applied in
/// `hub::cadence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollCadence {
    pub fast: Duration,
    pub fast_until: Duration,
    pub medium: Duration,
    pub medium_until: Duration,
    pub slow: Duration,
}

impl PollCadence {
    /// One interval for every age: handy in tests.
    pub fn constant(every: Duration) -> Self {
        Self {
            fast: every,
            fast_until: Duration::ZERO,
            medium: every,
            medium_until: Duration::ZERO,
            slow: every,
        }
    }
}

impl Default for PollCadence {
    fn default() -> Self {
        Self {
            fast: defaults::POLL_FAST,
            fast_until: defaults::POLL_FAST_UNTIL,
            medium: defaults::POLL_MEDIUM,
            medium_until: defaults::POLL_MEDIUM_UNTIL,
            slow: defaults::POLL_SLOW,
        }
    }
}

/// Exponential back-off with jitter for failed upstream reads (the delays
/// are computed in `hub::cadence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchSettings {
    pub cadence: PollCadence,
    /// Interval of tasks kie.ai will call back about.
    pub callback_safety_poll: Duration,
    pub heartbeat: Duration,
    /// Consecutive failed reads a watch survives.
    pub retry_budget: u32,
    pub backoff: Backoff,
    /// recordInfo reads per second, all pollers together.
    pub read_budget: u32,
    pub cache_size: usize,
    pub cache_ttl: Duration,
    pub max_duration: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            cadence: PollCadence::default(),
            callback_safety_poll: defaults::CALLBACK_SAFETY_POLL,
            heartbeat: defaults::WATCH_HEARTBEAT,
            retry_budget: defaults::WATCH_RETRY_BUDGET,
            backoff: Backoff {
                initial: defaults::RETRY_BACKOFF_INITIAL,
                max: defaults::RETRY_BACKOFF_MAX,
            },
            read_budget: defaults::READ_BUDGET_PER_SECOND,
            cache_size: defaults::TASK_CACHE_SIZE,
            cache_ttl: defaults::TASK_CACHE_TTL,
            max_duration: defaults::WATCH_MAX_DURATION,
        }
    }
}

/// kie.ai callbacks to this gateway.
#[derive(Clone, Debug, Default)]
pub struct CallbackSettings {
    /// Sent as `callBackUrl` for tasks created without a caller callback.
    pub public_url: Option<Url>,
    /// Use this gateway's own HTTP listener on loopback as `public_url`
    /// (the sandbox, whose simulator runs in the same process).
    pub to_self: bool,
    /// Verify X-Webhook-Signature with this key when set.
    pub hmac_key: Option<Secret>,
}

/// The Redis that the replicas of one gateway share.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: RedisUrl,
    /// Every key starts with `<prefix>:`.
    pub prefix: String,
    /// What TLS trusts and presents (rediss:// only).
    pub tls: RedisTlsFiles,
}

/// PEM files for TLS to Redis, read when the gateway starts. All unset, a
/// rediss:// URL trusts the system's roots and presents no certificate.
#[derive(Clone, Debug, Default)]
pub struct RedisTlsFiles {
    /// The CA(s) trusted instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// The certificate chain and key presented for mutual TLS: both or
    /// neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// TLS on the gRPC listener: PEM files, read at start (a bad one stops the
/// start) and again whenever they change (a bad change keeps the last good
/// ones).
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Set: every caller must present a certificate signed by one of these.
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval: Duration,
}

impl TlsSettings {
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            reload_interval: defaults::TLS_RELOAD_INTERVAL,
        }
    }
}

/// Image uploads to kie.ai's file storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSettings {
    /// kie.ai's `uploadPath`.
    pub path: String,
    /// Uploads at once, each holding up to 10 MiB.
    pub max_concurrent: usize,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            path: defaults::UPLOAD_PATH.into(),
            max_concurrent: defaults::MAX_CONCURRENT_UPLOADS,
        }
    }
}

/// The credits gauge and its low-balance warning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CreditSettings {
    /// Zero: no refresh, no gauge.
    pub refresh: Duration,
    pub warn_below: f64,
}

impl Default for CreditSettings {
    fn default() -> Self {
        Self {
            refresh: defaults::CREDITS_REFRESH,
            warn_below: defaults::CREDITS_WARN_BELOW,
        }
    }
}

/// Everything the application is built from.
#[derive(Clone, Debug)]
pub struct Settings {
    pub upstream: UpstreamSettings,
    /// Set: replicas coordinate through this Redis. Unset: one process.
    pub redis: Option<RedisSettings>,
    pub idempotency: IdempotencySettings,
    pub callbacks: CallbackSettings,
    /// Set: callers need a token from this file (see `callers/`).
    pub callers_file: Option<PathBuf>,
    pub grpc_addr: SocketAddr,
    /// Set: the gRPC listener speaks TLS only. The HTTP listener never does
    /// (kie.ai's callbacks; TLS ends at the ingress in front of it).
    pub grpc_tls: Option<TlsSettings>,
    pub http_addr: SocketAddr,
    /// Metrics and a liveness probe, apart from the callback listener.
    pub admin_addr: SocketAddr,
    pub watch: WatchSettings,
    pub shutdown_grace: Duration,
    /// NOT_SERVING while still serving, before the listeners close.
    pub drain_delay: Duration,
    pub uploads: UploadSettings,
    pub credits: CreditSettings,
}

impl Settings {
    /// Defaults for everything but where kie.ai is (its file API on the
    /// same host), with listeners on ephemeral loopback ports: the starting
    /// point of tests and the sandbox.
    pub fn local(base_url: Url, api_key: Option<Secret>) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            upstream: UpstreamSettings {
                upload_base_url: base_url.clone(),
                base_url,
                api_key,
                key_passthrough: false,
                connect_timeout: defaults::UPSTREAM_CONNECT_TIMEOUT,
                timeout: defaults::UPSTREAM_TIMEOUT,
                limits: UpstreamLimits::default(),
            },
            redis: None,
            idempotency: IdempotencySettings::default(),
            callbacks: CallbackSettings::default(),
            callers_file: None,
            grpc_addr: loopback,
            grpc_tls: None,
            http_addr: loopback,
            admin_addr: loopback,
            watch: WatchSettings::default(),
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            // No load balancer waits on a test's gateway.
            drain_delay: Duration::ZERO,
            uploads: UploadSettings::default(),
            credits: CreditSettings::default(),
        }
    }
}

/// Why the flags do not make a runnable configuration.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ServeArgs {
    /// Settings for live mode: kie.ai at `--kie-base-url`.
    pub fn live_settings(&self) -> Result<Settings, ConfigError> {
        if self.kie_api_key.is_none() && !self.key_passthrough {
            // Only a build with the simulator has a --sandbox to suggest.
            let hint = if cfg!(feature = "sandbox") {
                ", or run with --sandbox to try the gateway without a kie.ai account"
            } else {
                ""
            };
            return Err(ConfigError(format!(
                "KIE_API_KEY is not set: set it (or --kie-api-key){hint}"
            )));
        }
        Ok(self.settings(self.kie_base_url.clone(), self.kie_api_key.clone()))
    }

    /// Refuses settings that make no sense (every one named in the message):
    /// a poll interval or heartbeat of zero would read kie.ai or send
    /// messages in a busy loop, and a heartbeat longer than the longest
    /// watch would never be sent (one as long turns heartbeats off, as the
    /// benchmark does).
    pub fn check(&self) -> Result<(), ConfigError> {
        let intervals = [
            ("GATEWAY_POLL_FAST", self.poll_fast),
            ("GATEWAY_POLL_MEDIUM", self.poll_medium),
            ("GATEWAY_POLL_SLOW", self.poll_slow),
            ("GATEWAY_CALLBACK_SAFETY_POLL", self.callback_safety_poll),
            ("GATEWAY_WATCH_HEARTBEAT", self.watch_heartbeat),
            ("GATEWAY_WATCH_MAX_DURATION", self.watch_max_duration),
            ("GATEWAY_TLS_RELOAD_INTERVAL", self.tls_reload_interval),
        ];
        let zero: Vec<&str> = intervals
            .iter()
            .filter(|(_, value)| value.is_zero())
            .map(|(name, _)| *name)
            .collect();
        if !zero.is_empty() {
            return Err(ConfigError(format!(
                "{} must be longer than 0s",
                zero.join(", ")
            )));
        }
        if *self.watch_heartbeat > *self.watch_max_duration {
            return Err(ConfigError(format!(
                "GATEWAY_WATCH_HEARTBEAT ({}) must not be longer than GATEWAY_WATCH_MAX_DURATION ({})",
                self.watch_heartbeat, self.watch_max_duration
            )));
        }
        self.check_tls()
    }

    /// Half a TLS configuration is refused rather than served in plaintext.
    fn check_tls(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err(ConfigError(
                "GATEWAY_TLS_CERT_FILE is set without GATEWAY_TLS_KEY_FILE: set both (or --tls-cert-file and --tls-key-file) to turn TLS on, or neither".into(),
            )),
            (None, Some(_)) => Err(ConfigError(
                "GATEWAY_TLS_KEY_FILE is set without GATEWAY_TLS_CERT_FILE: set both (or --tls-cert-file and --tls-key-file) to turn TLS on, or neither".into(),
            )),
            (None, None) if self.tls_client_ca_file.is_some() => Err(ConfigError(
                "GATEWAY_TLS_CLIENT_CA_FILE needs GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE: client certificates are only asked for over TLS".into(),
            )),
            _ => Ok(()),
        }
    }

    /// TLS on the gRPC listener, when both files are named (`check` refuses
    /// one without the other).
    fn grpc_tls(&self) -> Option<TlsSettings> {
        let (Some(cert_file), Some(key_file)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return None;
        };
        Some(TlsSettings {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: self.tls_client_ca_file.clone(),
            reload_interval: self.tls_reload_interval.into(),
        })
    }

    /// Settings with the flags applied, pointing at `base_url` with `api_key`.
    pub fn settings(&self, base_url: Url, api_key: Option<Secret>) -> Settings {
        Settings {
            upstream: UpstreamSettings {
                base_url,
                upload_base_url: self.kie_upload_base_url.clone(),
                api_key,
                key_passthrough: self.key_passthrough,
                connect_timeout: self.kie_connect_timeout.into(),
                timeout: self.kie_timeout.into(),
                limits: UpstreamLimits {
                    max_in_flight: self.kie_max_in_flight,
                    max_queued: self.kie_max_queued,
                    create_limit: self.kie_create_limit,
                    create_window: self.kie_create_window.into(),
                },
            },
            redis: self.redis_url.clone().map(|url| RedisSettings {
                url,
                prefix: self.redis_prefix.clone(),
                tls: RedisTlsFiles {
                    ca: self.redis_ca_file.clone(),
                    client_cert: self.redis_client_cert_file.clone(),
                    client_key: self.redis_client_key_file.clone(),
                },
            }),
            idempotency: IdempotencySettings {
                ttl: self.idempotency_ttl.into(),
                max_keys: self.idempotency_keys,
            },
            callbacks: CallbackSettings {
                public_url: self.public_callback_url.clone(),
                to_self: false,
                hmac_key: self.kie_webhook_hmac_key.clone(),
            },
            callers_file: self.callers_file.clone(),
            grpc_addr: self.grpc_addr,
            grpc_tls: self.grpc_tls(),
            http_addr: self.http_addr,
            admin_addr: self.admin_addr,
            watch: WatchSettings {
                cadence: PollCadence {
                    fast: self.poll_fast.into(),
                    fast_until: self.poll_fast_until.into(),
                    medium: self.poll_medium.into(),
                    medium_until: self.poll_medium_until.into(),
                    slow: self.poll_slow.into(),
                },
                callback_safety_poll: self.callback_safety_poll.into(),
                heartbeat: self.watch_heartbeat.into(),
                retry_budget: self.watch_retry_budget,
                backoff: Backoff {
                    initial: self.retry_backoff_initial.into(),
                    max: self.retry_backoff_max.into(),
                },
                read_budget: self.read_budget,
                cache_size: self.task_cache_size,
                cache_ttl: self.task_cache_ttl.into(),
                max_duration: self.watch_max_duration.into(),
            },
            shutdown_grace: self.shutdown_grace.into(),
            drain_delay: self.drain_delay.into(),
            uploads: UploadSettings {
                path: self.kie_upload_path.clone(),
                max_concurrent: self.max_concurrent_uploads,
            },
            credits: CreditSettings {
                refresh: self.credits_refresh.into(),
                warn_below: self.credits_warn_below,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_redacted_in_debug_and_display() {
        let key = Secret::new("sk-very-secret");
        assert!(!format!("{key:?}").contains("secret"));
        assert!(!format!("{key}").contains("secret"));
    }

    #[test]
    fn a_redis_password_is_never_shown() {
        let url: RedisUrl = "redis://user:hunter2@redis.internal:6379/0"
            .parse()
            .expect("valid");
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("redis.internal:6379"), "{shown}");
        }
        assert_eq!(url.expose().password(), Some("hunter2"));
        assert!("http://x".parse::<RedisUrl>().is_err());
        assert!(redis_prefix("a{b}").is_err());
        assert!(redis_prefix("team-a").is_ok());
    }

    #[test]
    fn an_upload_path_has_no_outer_slashes_or_dot_segments() {
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a b", "a?b"] {
            assert!(upload_path(bad).is_err(), "{bad:?}");
        }
        for good in ["images", "team-a/hailuo_in", "v1.2/x"] {
            assert!(upload_path(good).is_ok(), "{good:?}");
        }
    }
}
