//! The caller check: a tower layer on the gRPC server that resolves each
//! VideoGeneration call's caller before tonic routes it, so a refused call
//! reaches no handler, no store and no upstream. Health and reflection
//! paths pass untouched (probes and `grpcurl describe` need no token).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http;
use futures_util::future::Either;

use super::{Caller, Callers};
use crate::error::GatewayError;

/// How long a refused token waits for its answer. A timer, not a thread:
/// a guessing peer gets at most one answer per stream per this delay, while
/// other callers' calls run as before. Tokens are meant to be random
/// (128 bits or more), so the delay is about making a flood cheap for the
/// gateway and slow for the peer, not about making guessing hard.
pub const REFUSAL_DELAY: Duration = Duration::from_millis(200);

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

/// The identity a verified client certificate gives the call.
/// COORDINATOR: wire `crate::tls::peer_identity(extensions)` here once the
/// TLS room exists; it is the one place a certificate identity enters.
fn cert_identity(_extensions: &http::Extensions) -> Option<&str> {
    None
}

#[derive(Clone)]
pub struct CallerAuthLayer {
    /// `None`: caller tokens are off and every call is `anonymous`.
    callers: Option<Callers>,
    /// `/<package>.<Service>/`: the paths checked.
    prefix: Arc<str>,
}

impl CallerAuthLayer {
    pub fn new(callers: Option<Callers>, service_name: &str) -> Self {
        Self {
            callers,
            prefix: format!("/{service_name}/").into(),
        }
    }
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
            return Either::Right(Box::pin(async {
                tokio::time::sleep(REFUSAL_DELAY).await;
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
