//! The one way this crate builds a reqwest client: with ring as its TLS
//! crypto, handed to reqwest explicitly.
//!
//! reqwest is built with `rustls-no-provider`: it carries no crypto of its
//! own and otherwise falls back on a process-wide default that someone must
//! have installed first (it panics without one). A ready `ClientConfig`
//! makes every client independent of start-up order and of whatever else in
//! the process installed a provider.

use std::sync::Arc;

use rustls_platform_verifier::BuilderVerifierExt as _;

/// A reqwest builder whose TLS uses ring and the platform's certificate
/// verifier, as reqwest's own rustls set-up would. Callers add timeouts,
/// pooling and their user agent.
pub fn builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    // reqwest offers HTTP/2 by ALPN only on configs it builds itself; without
    // this an HTTPS upstream would be spoken to over HTTP/1.1 only.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}
