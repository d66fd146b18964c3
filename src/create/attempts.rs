//! Create attempts whose answer may be lost, and how kie.ai's callback
//! names their task.
//!
//! When the gateway's own callback URL is used, each createTask carries a
//! fresh random token in its `callBackUrl` (`?attempt=<token>`). Should the
//! answer be lost (a reset, a timeout after sending), kie.ai still calls
//! back when the task ends, to that URL: the token ties the callback to the
//! attempt, and so to its `request_id`. The token says nothing about the
//! caller or the key, and a callback is never trusted as it is: the task is
//! re-read from kie.ai, whose `param` must echo this very URL.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use url::Url;

use super::idempotency::{IdempotencyKey, IdempotencyStore};
use crate::kie::{Credential, KieClient, UpstreamError};
use crate::metrics::{CreateTally, Metrics};
use crate::task::TaskId;

/// The query parameter of the callback URL that carries the token.
pub(crate) const TOKEN_PARAM: &str = "attempt";
/// Re-reads of a task named by a callback, before giving up on it.
const VERIFY_READS: u32 = 3;
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// One attempt's callback URL, while its outcome may still be needed.
#[derive(Debug)]
pub(crate) struct Ticket {
    token: String,
    /// The `callBackUrl` to send, token included.
    pub(crate) url: String,
}

struct Entry {
    key: Option<IdempotencyKey>,
    /// The call's x-request-id, for the log line that names the task.
    call_id: String,
    credential: Credential,
    url: String,
    state: State,
    since: Instant,
}

enum State {
    /// The attempt waits for kie.ai's answer; a callback that comes first
    /// leaves the task id here for it.
    InFlight { learned: Option<String> },
    /// The answer was lost: the callback settles the key.
    Lost,
}

/// Where a learned task id goes.
struct Learned {
    key: Option<IdempotencyKey>,
    call_id: String,
}

pub struct Attempts {
    kie: KieClient,
    idempotency: Arc<dyn IdempotencyStore>,
    metrics: Arc<Metrics>,
    /// The gateway's `POST /callbacks/kie`, reachable by kie.ai; without it
    /// a lost answer can never be learned.
    public_url: Option<Url>,
    /// Lost attempts are kept this long (the idempotency TTL) and at most
    /// this many.
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// With several replicas, lost attempts are also written to Redis, so
    /// that a callback reaching another replica settles them.
    fleet: Option<FleetLedger>,
}

/// The fleet's record of lost attempts, and the key a replica re-reads a
/// task with when the attempt was another replica's (it never sees the
/// credential that replica used).
pub(crate) struct FleetLedger {
    pub(crate) attempts: Arc<dyn SharedAttempts>,
    pub(crate) credential: Option<Credential>,
}

/// A lost attempt as the replicas share it: nothing secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostAttempt {
    pub key: IdempotencyKey,
    /// The `callBackUrl` the attempt sent, token included.
    pub url: String,
}

/// A future a [`SharedAttempts`] call returns.
pub type Shared<T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send>>;

/// Lost attempts shared by several replicas (the fleet's, in Redis:
/// `fleet::attempts`), so that kie.ai's callback settles one whichever
/// replica it reaches.
pub trait SharedAttempts: Send + Sync + 'static {
    /// Records a lost attempt under its token.
    fn record(&self, token: String, lost: LostAttempt) -> Shared<()>;
    /// The lost attempt of `token`, if a replica recorded one.
    fn lookup(&self, token: String) -> Shared<Option<LostAttempt>>;
    /// The attempt's task is known: its token is done.
    fn forget(&self, token: String) -> Shared<()>;
}

impl Attempts {
    pub fn new(
        kie: KieClient,
        idempotency: Arc<dyn IdempotencyStore>,
        metrics: Arc<Metrics>,
        public_url: Option<Url>,
        ttl: Duration,
        capacity: usize,
    ) -> Arc<Self> {
        Self::in_fleet(kie, idempotency, metrics, public_url, ttl, capacity, None)
    }

    /// The same, with lost attempts shared through Redis when `fleet` is
    /// given.
    pub(crate) fn in_fleet(
        kie: KieClient,
        idempotency: Arc<dyn IdempotencyStore>,
        metrics: Arc<Metrics>,
        public_url: Option<Url>,
        ttl: Duration,
        capacity: usize,
        fleet: Option<FleetLedger>,
    ) -> Arc<Self> {
        Arc::new(Self {
            kie,
            idempotency,
            metrics,
            public_url,
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
            fleet,
        })
    }

    /// A callback URL with a fresh token for an attempt about to be sent,
    /// or `None` when the gateway has no public callback URL (or holds as
    /// many lost attempts as it may: the attempt then goes without one).
    pub(crate) fn begin(
        &self,
        key: Option<IdempotencyKey>,
        credential: &Credential,
        call_id: &str,
    ) -> Option<Ticket> {
        let mut url = self.public_url.clone()?;
        let token = format!("{:032x}", rand::random::<u128>());
        url.query_pairs_mut().append_pair(TOKEN_PARAM, &token);
        let url = url.to_string();
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, e| e.since.elapsed() < ttl);
            if entries.len() >= self.capacity {
                return None;
            }
        }
        entries.insert(
            token.clone(),
            Entry {
                key,
                call_id: call_id.to_owned(),
                credential: credential.clone(),
                url: url.clone(),
                state: State::InFlight { learned: None },
                since: Instant::now(),
            },
        );
        Some(Ticket { token, url })
    }

    /// kie.ai answered (with a task or a refusal): the token is done.
    pub(crate) fn answered(&self, ticket: &Ticket) {
        self.entries.lock().remove(&ticket.token);
    }

    /// The task id a callback delivered while the attempt still waited for
    /// its answer, if any; the token is then done.
    pub(crate) fn take_learned(&self, ticket: &Ticket) -> Option<String> {
        let mut entries = self.entries.lock();
        let learned = match &entries.get(&ticket.token)?.state {
            State::InFlight { learned } => learned.clone()?,
            State::Lost => return None,
        };
        entries.remove(&ticket.token);
        Some(learned)
    }

    /// The answer is lost, and the key (if any) is already settled as
    /// unknown: from now on the callback resolves it. A callback that came
    /// in between resolves it at once.
    pub(crate) fn lost(&self, ticket: Ticket) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&ticket.token) else {
            return;
        };
        match &entry.state {
            State::InFlight {
                learned: Some(task_id),
            } => {
                let task_id = task_id.clone();
                let learned = Learned {
                    key: entry.key.clone(),
                    call_id: entry.call_id.clone(),
                };
                entries.remove(&ticket.token);
                drop(entries);
                self.resolve(learned, &task_id);
            }
            _ => {
                entry.state = State::Lost;
                entry.since = Instant::now();
                let shared = self.fleet.is_some().then(|| {
                    entry.key.clone().map(|key| LostAttempt {
                        key,
                        url: entry.url.clone(),
                    })
                });
                drop(entries);
                if let Some(Some(lost)) = shared {
                    self.share(ticket.token, lost);
                }
            }
        }
    }

    /// Writes a lost attempt to Redis, in the background: the caller has its
    /// answer already, and a replica that cannot reach Redis still settles
    /// the attempt from a callback to itself.
    fn share(&self, token: String, lost: LostAttempt) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let recorded = fleet.attempts.record(token, lost);
        tokio::spawn(async move {
            if let Err(error) = recorded.await {
                tracing::warn!(
                    %error,
                    "a lost create attempt could not be shared: only a callback to this replica can settle it"
                );
            }
        });
    }

    /// kie.ai called back with `token` for `task_id`: if the token is an
    /// attempt's, re-read the task and, once kie.ai confirms it was created
    /// with that attempt's URL, record its id. Returns at once.
    pub(crate) fn callback(self: &Arc<Self>, token: &str, task_id: &TaskId) {
        let Some((credential, url)) = self
            .entries
            .lock()
            .get(token)
            .map(|e| (e.credential.clone(), e.url.clone()))
        else {
            self.fleet_callback(token, task_id);
            return;
        };
        let this = self.clone();
        let token = token.to_owned();
        let task_id = task_id.clone();
        tokio::spawn(async move {
            if this.confirms(&credential, &task_id, &url).await {
                this.learned(&token, &task_id);
            }
        });
    }

    /// A token this replica does not know may be another replica's lost
    /// attempt: look it up in Redis and settle it here.
    fn fleet_callback(self: &Arc<Self>, token: &str, task_id: &TaskId) {
        let Some(FleetLedger {
            credential: Some(credential),
            ..
        }) = &self.fleet
        else {
            return;
        };
        let credential = credential.clone();
        let this = self.clone();
        let token = token.to_owned();
        let task_id = task_id.clone();
        tokio::spawn(async move {
            let Some(fleet) = &this.fleet else {
                return;
            };
            let lost = match fleet.attempts.lookup(token.clone()).await {
                Ok(Some(lost)) => lost,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%task_id, %error, "callback's attempt could not be looked up in Redis");
                    return;
                }
            };
            if this.confirms(&credential, &task_id, &lost.url).await {
                if let Err(error) = fleet.attempts.forget(token).await {
                    tracing::debug!(%error, "a settled attempt stays in Redis until its TTL");
                }
                let learned = Learned {
                    key: Some(lost.key),
                    call_id: String::new(),
                };
                this.resolve(learned, task_id.as_str());
            }
        });
    }

    /// Whether a callback's task is the attempt's own: kie.ai's record
    /// echoes the attempt's callback `url`. Either way it cannot be shown
    /// is logged; the attempt then stays unknown.
    async fn confirms(&self, credential: &Credential, task_id: &TaskId, url: &str) -> bool {
        match self.created_with(credential, task_id, url).await {
            Ok(confirmed) => {
                if !confirmed {
                    tracing::warn!(
                        %task_id,
                        "callback ignored: kie.ai's record of the task does not carry the attempt's callback URL"
                    );
                }
                confirmed
            }
            Err(error) => {
                tracing::warn!(
                    %task_id,
                    %error,
                    "callback's task could not be re-read: its create attempt stays unknown"
                );
                false
            }
        }
    }

    /// Whether kie.ai's record of the task echoes `url` as its callBackUrl.
    async fn created_with(
        &self,
        credential: &Credential,
        task_id: &TaskId,
        url: &str,
    ) -> Result<bool, UpstreamError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .kie
                .record(credential, task_id, Some(VERIFY_TIMEOUT), 1)
                .await
            {
                Ok(record) => return Ok(record.call_back_url().as_deref() == Some(url)),
                Err(e) if e.is_transient() && attempt < VERIFY_READS => {
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn learned(&self, token: &str, task_id: &TaskId) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(token) else {
            return;
        };
        match entry.state {
            State::InFlight { ref mut learned } => {
                *learned = Some(task_id.as_str().to_owned());
            }
            State::Lost => {
                let learned = Learned {
                    key: entry.key.clone(),
                    call_id: entry.call_id.clone(),
                };
                entries.remove(token);
                drop(entries);
                self.resolve(learned, task_id.as_str());
            }
        }
    }

    fn resolve(&self, learned: Learned, task_id: &str) {
        if let Some(key) = &learned.key {
            self.idempotency.resolve(key, task_id);
        }
        self.metrics.create_attempt(CreateTally::ResolvedLater);
        // `request_id` is the call's x-request-id, as on the RPC's own line.
        tracing::warn!(
            request_id = learned.call_id,
            create_request_id = learned.key.as_ref().map(|k| k.request_id.as_str()),
            task_id,
            "createTask outcome resolved: kie.ai's callback named the task"
        );
    }
}
