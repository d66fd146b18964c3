//! TLS on the gRPC listener (`GATEWAY_TLS_CERT_FILE`, `GATEWAY_TLS_KEY_FILE`)
//! and, with `GATEWAY_TLS_CLIENT_CA_FILE`, client certificates (mutual TLS).
//!
//! The files are read at start (a bad one stops the start) and polled every
//! `GATEWAY_TLS_RELOAD_INTERVAL`: cert-manager and Kubernetes replace them
//! by renaming or by swapping a symlink, and the contents are what count,
//! so each poll reads them through their paths and compares digests. A
//! change that builds a good configuration is used by every handshake from
//! then on; connections already open keep the session they have. A bad
//! change (a key that does not match, a half-written file) keeps the last
//! good configuration, with one warning per change.
//!
//! Handshakes run on tasks of their own, time boxed and bounded in number,
//! so a slow or silent client cannot hold up the accept loop. The caller's
//! identity is read from its verified certificate once per connection and
//! reaches handlers through the request extensions ([`peer_identity`]).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::TlsSettings;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; past it new connections are closed at
/// once, so a flood of idle sockets costs a bounded amount.
const MAX_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// After a failed accept (out of file descriptors, say) the loop pauses
/// instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

// === The configuration and its reload ===

/// The listener's TLS configuration, swapped whole when the files change.
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// The digest of the files last read (good or bad) or the last read
    /// error: each change is acted on, and warned about, once.
    last_seen: Mutex<Seen>,
}

#[derive(Clone, PartialEq, Eq)]
enum Seen {
    Files([u8; 32]),
    Unreadable(String),
}

/// The files' contents as read in one go.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        Ok(Self {
            cert: read(&settings.cert_file)?,
            key: read(&settings.key_file)?,
            client_ca: settings.client_ca_file.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            // Lengths first, so that bytes moved between files still differ.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

impl ServerTls {
    /// Reads and checks the files: an error here stops the start.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Arc<Self>> {
        let files = Files::read(settings)
            .and_then(|files| server_config(settings, &files).map(|built| (files, built)));
        let (files, (config, leaf)) = files
            .map_err(anyhow::Error::msg)
            .context("TLS on the gRPC listener (GATEWAY_TLS_*)")?;
        log_loaded(settings, &leaf, "TLS on the gRPC listener");
        Ok(Arc::new(Self {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
            last_seen: Mutex::new(Seen::Files(files.digest())),
        }))
    }

    pub fn mutual(&self) -> bool {
        self.settings.client_ca_file.is_some()
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Polls the files until `shutdown`.
    pub fn spawn_reload(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.settings.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let settings = this.settings.clone();
                // Small files, but std::fs blocks: off the runtime's threads.
                let Ok(files) = tokio::task::spawn_blocking(move || Files::read(&settings)).await
                else {
                    continue;
                };
                this.consider(files);
            }
        });
    }

    /// Takes the files if they changed and make a good configuration.
    fn consider(&self, files: Result<Files, String>) {
        let seen = match &files {
            Ok(files) => Seen::Files(files.digest()),
            Err(e) => Seen::Unreadable(e.clone()),
        };
        {
            let mut last = self.last_seen.lock();
            if *last == seen {
                return;
            }
            *last = seen;
        }
        let built = files.and_then(|files| server_config(&self.settings, &files));
        match built {
            Ok((config, leaf)) => {
                *self.current.write() = Arc::new(config);
                log_loaded(&self.settings, &leaf, "TLS certificate reloaded");
            }
            Err(error) => tracing::warn!(
                error,
                "the TLS files changed but cannot be used; new connections keep the last good certificate"
            ),
        }
    }
}

/// A ServerConfig from the files' contents: ring, TLS 1.2 and 1.3, ALPN h2
/// only (gRPC needs HTTP/2), client certificates required when a client CA
/// is set. Errors name the file, never its contents.
fn server_config(
    settings: &TlsSettings,
    files: &Files,
) -> Result<(ServerConfig, CertificateDer<'static>), String> {
    let cert_path = settings.cert_file.display();
    let key_path = settings.key_file.display();
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(format!("{cert_path}: no certificate in it"));
    };
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| format!("{key_path}: not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (&settings.client_ca_file, &files.client_ca) {
        (Some(ca_path), Some(ca)) => {
            let ca_path = ca_path.display();
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert =
                    cert.map_err(|e| format!("{ca_path}: not a PEM certificate bundle: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{ca_path}: not a usable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("{ca_path}: no certificate in it"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{ca_path}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    // with_single_cert also checks that the key is the certificate's.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{cert_path} and {key_path} do not make a pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, leaf))
}

/// One line per certificate taken into use, with its expiry: the line an
/// operator looks for after a rotation.
fn log_loaded(settings: &TlsSettings, leaf: &CertificateDer<'_>, message: &str) {
    let parsed = x509_parser::parse_x509_certificate(leaf).ok();
    let not_after = parsed.as_ref().map(|(_, cert)| cert.validity().not_after);
    let expired = parsed
        .as_ref()
        .is_some_and(|(_, cert)| !cert.validity().is_valid());
    let serial = parsed.as_ref().map(|(_, cert)| cert.raw_serial_as_string());
    let not_after = not_after.map(|t| t.to_string()).unwrap_or_default();
    let serial = serial.unwrap_or_default();
    let cert_file = settings.cert_file.display().to_string();
    let client_certificates = settings.client_ca_file.is_some();
    if expired {
        tracing::warn!(
            cert_file,
            serial,
            not_after,
            client_certificates,
            "{message}: the certificate is outside its validity period"
        );
    } else {
        tracing::info!(
            cert_file,
            serial,
            not_after,
            client_certificates,
            "{message}"
        );
    }
}

// === Connections ===

/// What handlers learn about a TLS connection, in the request extensions.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub tcp: TcpConnectInfo,
    /// From the verified client certificate: its first `spiffe://` URI SAN,
    /// else its first DNS SAN. `None` without mutual TLS.
    pub identity: Option<Arc<str>>,
}

/// The verified client certificate's identity, if the call came over
/// mutual TLS; for the auth layer, logs and handlers alike (an
/// `http::Request`'s or a `tonic::Request`'s extensions).
pub fn peer_identity(extensions: &tonic::codegen::http::Extensions) -> Option<&str> {
    extensions.get::<TlsPeer>()?.identity.as_deref()
}

/// The caller's address over plaintext or TLS (tonic's own
/// `Request::remote_addr` knows only its own TLS type).
pub fn peer_addr(extensions: &tonic::codegen::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsPeer>().map(|peer| &peer.tcp))?
        .remote_addr()
}

/// A connection after its handshake: what tonic serves.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections of `listener` after their handshakes, for tonic's
/// `serve_with_incoming_shutdown`. The accept loop ends on `shutdown` or
/// when the server stops taking connections, and closes the listener.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (accepted, incoming) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(listener, tls, accepted, shutdown));
    ReceiverStream::new(incoming)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    accepted: mpsc::Sender<io::Result<TlsConnection>>,
    shutdown: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            () = accepted.closed() => return,
            next = listener.accept() => match next {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC listener: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(peer = %remote, "TLS handshake refused: {MAX_HANDSHAKES} already under way");
            continue;
        };
        // Small answers must not wait for a delayed ACK (Nagle).
        let _ = tcp.set_nodelay(true);
        let info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(remote),
        };
        let acceptor = tls.acceptor();
        let mutual = tls.mutual();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    return;
                }
            };
            let identity = if mutual {
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(identity_of)
            } else {
                None
            };
            tracing::debug!(
                peer = %remote,
                identity = identity.as_deref().unwrap_or(""),
                "TLS handshake"
            );
            let connection = TlsConnection {
                stream,
                peer: TlsPeer {
                    tcp: info,
                    identity: identity.map(Arc::from),
                },
            };
            let _ = accepted.send(Ok(connection)).await;
        });
    }
}

/// A certificate's first `spiffe://` URI SAN, else its first DNS SAN.
fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let names = cert.subject_alternative_name().ok()??.value;
    let spiffe = names.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
        _ => None,
    });
    let dns = || {
        names.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    };
    spiffe.or_else(dns).map(str::to_owned)
}
