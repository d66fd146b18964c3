//! The caller check: a tower layer on the gRPC server that resolves each
//! VideoGeneration call's caller before tonic routes it, so a refused call
//! reaches no handler, no store and no upstream. Health and reflection
//! paths pass untouched (probes and `grpcurl describe` need no token).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http;
use futures_util::future::Either;
use parking_lot::Mutex;

use super::{Caller, Callers};
use crate::error::GatewayError;

/// How long a refused token waits for its answer, at least. A timer, not
/// a thread: the refused call holds no worker while it waits.
pub const REFUSAL_DELAY: Duration = Duration::from_millis(200);
/// Refusals one peer address gets answered at most at this pace (500 a
/// second) after a burst of `REFUSAL_BURST`; the rest wait their turn. A
/// peer that waits for its answers (any client does, within its streams)
/// is held to that pace, so its flood costs the gateway little CPU and its
/// guesses against 128-bit-or-more tokens go nowhere; calls with a good
/// token, from that address too, never wait in this queue.
const REFUSAL_INTERVAL: Duration = Duration::from_millis(2);
const REFUSAL_BURST: Duration = Duration::from_secs(1);
/// Peers remembered at once; past it, those with no queue are forgotten.
const PEERS_REMEMBERED: usize = 10_000;

/// Filled by the caller check with the call's caller, for a layer outside
/// it (the refusal log) that writes the line of a call no handler saw.
#[derive(Clone, Default)]
pub struct CallerSlot(Arc<OnceLock<Caller>>);

impl CallerSlot {
    pub fn name(&self) -> Arc<str> {
        self.0
            .get()
            .map_or_else(|| super::ANONYMOUS.into(), |c| c.name.clone())
    }
}

/// The one place a certificate identity enters: the verified client
/// certificate's SPIFFE URI or DNS name (mTLS only).
fn cert_identity(extensions: &http::Extensions) -> Option<&str> {
    crate::tls::peer_identity(extensions)
}

#[derive(Clone)]
pub struct CallerAuthLayer {
    /// `None`: caller tokens are off and every call is `anonymous`.
    callers: Option<Callers>,
    /// `/<package>.<Service>/`: the paths checked.
    prefix: Arc<str>,
    /// Per peer address (`None`: unknown), when its next refusal may go.
    refusals: Arc<Mutex<HashMap<Option<IpAddr>, Instant>>>,
}

impl CallerAuthLayer {
    pub fn new(callers: Option<Callers>, service_name: &str) -> Self {
        Self {
            callers,
            prefix: format!("/{service_name}/").into(),
            refusals: Arc::default(),
        }
    }

    /// When a refusal to `peer` may be answered: after the base delay, and
    /// in the peer's turn.
    fn refusal_at(&self, peer: Option<IpAddr>) -> Instant {
        let now = Instant::now();
        let floor = now.checked_sub(REFUSAL_BURST).unwrap_or(now);
        let mut refusals = self.refusals.lock();
        if refusals.len() >= PEERS_REMEMBERED {
            refusals.retain(|_, next| *next > now);
        }
        let next = refusals.entry(peer).or_insert(floor);
        let turn = (*next).max(floor) + REFUSAL_INTERVAL;
        *next = turn;
        turn.max(now) + REFUSAL_DELAY
    }
}

/// The peer's address, as tonic's listener records it.
/// The peer's address over plaintext or TLS.
fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    crate::tls::peer_addr(extensions).map(|addr| addr.ip())
}

impl<S> tower::Layer<S> for CallerAuthLayer {
    type Service = CallerAuth<S>;

    fn layer(&self, inner: S) -> CallerAuth<S> {
        CallerAuth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CallerAuth<S> {
    inner: S,
    layer: CallerAuthLayer,
}

type Refusal<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for CallerAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Refusal<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(&*self.layer.prefix) {
            return Either::Left(self.inner.call(request));
        }
        let caller = match &self.layer.callers {
            None => Some(Caller::anonymous()),
            Some(callers) => {
                let token = bearer(request.headers());
                callers.resolve(cert_identity(request.extensions()), token)
            }
        };
        let Some(caller) = caller else {
            let at = self.layer.refusal_at(peer_ip(request.extensions()));
            return Either::Right(Box::pin(async move {
                tokio::time::sleep_until(at.into()).await;
                Ok(GatewayError::CallerUnauthenticated.to_status().into_http())
            }));
        };
        if self.layer.callers.is_some() {
            // The token has done its work: no handler sees it, so none can
            // log it or send it on.
            request.headers_mut().remove(http::header::AUTHORIZATION);
        }
        if let Some(slot) = request.extensions().get::<CallerSlot>() {
            let _ = slot.0.set(caller.clone());
        }
        request.extensions_mut().insert(caller);
        Either::Left(self.inner.call(request))
    }
}

/// The token of `authorization: Bearer <token>`, if that is what was sent.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
