//! The one Redis client of the replicas of one gateway
//! (`GATEWAY_REDIS_URL`): the connection, its time box and the key names,
//! shared by the rooms that keep state in Redis (`fleet/`, and the hub's
//! fleet-wide pollers).
//!
//! Every call to Redis is time boxed: a replica whose Redis is away must
//! say so at once (callers get UNAVAILABLE and retry elsewhere or later)
//! rather than hang on a reconnect. The connection manager reconnects by
//! itself on the next call, so nothing needs a restart when Redis returns.
//!
//! rediss:// is TLS through redis-rs's rustls (ring, the one provider built
//! in). The CA and client certificate files are read when the client is
//! made; whether Redis's certificate verifies is only known on connecting,
//! so a Redis that fails it is a Redis that is away.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::RedisSettings;

/// The longest one Redis call may take. Redis answers in well under a
/// millisecond; this is long enough for a busy one across a zone and
/// short enough that a caller is told at once when it is away.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Connecting is bounded below the call's own time box, so that a
/// reconnect that cannot succeed ends before the next call's.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
/// Reconnect attempts inside one connection attempt: few, as every call
/// that finds the connection broken starts a new one anyway.
const CONNECT_RETRIES: usize = 1;

/// Why a Redis call failed; never holds the URL (it may carry a password).
#[derive(Debug)]
pub enum FleetError {
    /// No answer within [`CALL_TIMEOUT`].
    TimedOut,
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut => write!(f, "no answer from Redis within {CALL_TIMEOUT:?}"),
            Self::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

impl std::error::Error for FleetError {}

/// A handle on the shared Redis: cheap to clone (one multiplexed
/// connection for every caller of the process).
#[derive(Clone)]
pub struct Redis {
    /// Kept for the dedicated pub/sub connection (`wakeups`).
    client: redis::Client,
    connection: ConnectionManager,
    keys: Keys,
}

impl Redis {
    /// Does no I/O: the connection is made on first use, so the gateway
    /// starts (degraded) while Redis is away and catches up when it comes.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        // redis-rs's errors never quote the URL; the context keeps it out.
        let unusable = |e: redis::RedisError| {
            anyhow::anyhow!("GATEWAY_REDIS_URL ({}) cannot be used: {e}", settings.url)
        };
        let info = settings
            .url
            .expose()
            .as_str()
            .into_connection_info()
            .map_err(unusable)?
            // redis-rs leaves Nagle on: small commands on the one
            // multiplexed connection then wait for a delayed ACK (~40 ms).
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        // Both connections (commands and pub/sub) come from this client, so
        // both use TLS with a rediss:// URL.
        let client = match tls_certificates(settings)? {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
        .map_err(unusable)?;
        // No response timeout of redis-rs's own: every call is already in
        // [`Redis::call`]'s time box, which also covers a reconnect, and a
        // second timer per call is CPU for nothing (neither timeout makes
        // the manager reconnect: a time-out is not a dropped connection).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(CONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        Ok(Self {
            client,
            connection,
            keys: Keys::new(&settings.prefix),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A new connection of its own for pub/sub, within [`CALL_TIMEOUT`]:
    /// a subscribed connection can carry nothing else.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, FleetError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(FleetError::Redis(e)),
            Err(_elapsed) => Err(FleetError::TimedOut),
        }
    }

    /// Runs one Redis call within [`CALL_TIMEOUT`]. A call cut by the time
    /// box may still have run in Redis: callers whose call changes state
    /// must make it safe to repeat or to undo.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, call(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(FleetError::Redis(e)),
            Err(_elapsed) => Err(FleetError::TimedOut),
        }
    }

    /// Runs one Lua script (EVALSHA, loading it on NOSCRIPT) within the
    /// same time box as [`Redis::call`], with the same caveat.
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, FleetError> {
        self.call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }
}

/// The CA and client certificate for a rediss:// URL, read and checked
/// now so that a bad file stops the start rather than every connection.
/// `None`: plain redis://, or rediss:// with the system's roots (which
/// redis-rs reads through rustls-native-certs at each connect).
fn tls_certificates(settings: &RedisSettings) -> anyhow::Result<Option<TlsCertificates>> {
    let files = &settings.tls;
    let any_file = files.ca.is_some() || files.client_cert.is_some() || files.client_key.is_some();
    if settings.url.expose().scheme() != "rediss" {
        anyhow::ensure!(
            !any_file,
            "GATEWAY_REDIS_CA_FILE and GATEWAY_REDIS_CLIENT_*_FILE are for TLS: \
             GATEWAY_REDIS_URL must then be rediss://"
        );
        return Ok(None);
    }
    // redis-rs reads `#insecure` as "verify nothing" and then, built
    // without that feature, fails every connect: say so once, now.
    anyhow::ensure!(
        settings.url.expose().fragment() != Some("insecure"),
        "GATEWAY_REDIS_URL ends in #insecure: Redis's certificate is always checked; \
         trust its CA with GATEWAY_REDIS_CA_FILE"
    );
    if !any_file {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    let root_cert = match &files.ca {
        Some(path) => {
            let pem = read_file(path, "GATEWAY_REDIS_CA_FILE")?;
            for cert in certificates(&pem, path, "GATEWAY_REDIS_CA_FILE")? {
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!(
                        "GATEWAY_REDIS_CA_FILE ({}) holds a certificate that cannot be a CA: {e}",
                        path.display()
                    )
                })?;
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&files.client_cert, &files.client_key) {
        (None, None) => None,
        (Some(cert_path), Some(key_path)) => {
            let client_cert = read_file(cert_path, "GATEWAY_REDIS_CLIENT_CERT_FILE")?;
            let client_key = read_file(key_path, "GATEWAY_REDIS_CLIENT_KEY_FILE")?;
            let chain = certificates(&client_cert, cert_path, "GATEWAY_REDIS_CLIENT_CERT_FILE")?;
            // The parser's error is not quoted: it could echo part of the key.
            let key = PrivateKeyDer::from_pem_slice(&client_key).map_err(|_| {
                anyhow::anyhow!(
                    "GATEWAY_REDIS_CLIENT_KEY_FILE ({}) holds no PEM private key \
                     (PKCS#8, PKCS#1 or SEC1)",
                    key_path.display()
                )
            })?;
            // What redis-rs does at each connect, done once now: rustls
            // checks that the key is the certificate's.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .and_then(|config| {
                config
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "GATEWAY_REDIS_CLIENT_CERT_FILE ({}) and GATEWAY_REDIS_CLIENT_KEY_FILE ({}) \
                     do not make a client certificate: {e}",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        _ => anyhow::bail!(
            "mutual TLS to Redis needs both GATEWAY_REDIS_CLIENT_CERT_FILE and \
             GATEWAY_REDIS_CLIENT_KEY_FILE"
        ),
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read_file(path: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{name} ({}) cannot be read: {e}", path.display()))
}

/// The PEM certificates in `pem`: at least one.
fn certificates(
    pem: &[u8],
    path: &Path,
    name: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let not_pem = || anyhow::anyhow!("{name} ({}) holds no PEM certificate", path.display());
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| not_pem())?;
    if certs.is_empty() {
        return Err(not_pem());
    }
    Ok(certs)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Key names: `<prefix>:<kind>:{<group>}`. The braces are a hash tag:
/// Redis Cluster places every key of one group (one request_id, later one
/// task) in the same slot, so one script can touch all of them.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// `prefix` has no braces (the settings refuse them), so the only hash
    /// tag is the group's.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// A key of `kind` in `group`. `group` must be free of braces: it is
    /// made of hex digests and dots.
    pub fn key(&self, kind: &str, group: &str) -> String {
        format!("{}:{kind}:{{{group}}}", self.prefix)
    }

    /// A pub/sub channel: channels are not keys (Redis Cluster broadcasts
    /// them), so no hash tag.
    pub fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_finds_its_one_crypto_provider_by_itself() {
        // redis-rs builds its TLS config with `ClientConfig::builder()`,
        // which panics unless rustls is built with exactly one provider
        // (ring): a second one in the tree (aws-lc-rs) breaks rediss://.
        let _ = rustls::ClientConfig::builder();
    }

    #[test]
    fn keys_carry_the_prefix_and_one_hash_tag() {
        let keys = Keys::new("team-a");
        assert_eq!(keys.key("idem", "ab.cd"), "team-a:idem:{ab.cd}");
    }
}
