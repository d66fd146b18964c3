//! CreateTask idempotency: a `request_id` seen again with the same
//! parameters returns the first task instead of buying a second video, also
//! when the duplicates arrive together (they wait for the one attempt). A
//! failed attempt is not remembered. The store is a small trait so that a
//! shared store can replace the in-memory one when the gateway runs as
//! several replicas.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::IdempotencySettings;
use crate::error::GatewayError;
use crate::task::CreateTaskInput;

/// A digest of every parameter that shapes the upstream request.
pub type Fingerprint = [u8; 32];

/// A request_id, scoped to whose kie.ai key the call uses (with key
/// pass-through, two teams' ids never meet).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub scope: String,
    pub request_id: String,
}

/// What a store knows of a key.
pub enum Reservation {
    /// Nothing: the caller makes the attempt and settles the lease.
    Reserved(Lease),
    /// An earlier attempt with the same parameters created this task.
    Known(String),
    /// The concurrent attempt this caller waited for failed like this.
    Failed(GatewayError),
    /// The key was used with different parameters.
    Mismatch,
}

pub type Reserve<'a> = Pin<Box<dyn Future<Output = Reservation> + Send + 'a>>;

pub trait IdempotencyStore: Send + Sync + 'static {
    /// Reserves `key` for a new attempt, or says what is known of it;
    /// waits while another attempt with the same key is in flight.
    fn reserve(self: Arc<Self>, key: IdempotencyKey, fingerprint: Fingerprint) -> Reserve<'static>;

    /// Records the outcome of a reserved attempt: a task id is remembered
    /// until the TTL, a failure frees the key; waiters learn either.
    fn settle(&self, key: &IdempotencyKey, outcome: Result<&str, &GatewayError>);

    /// The attempt ended without an outcome (it panicked): free the key so
    /// that a waiter can try.
    fn abandon(&self, key: &IdempotencyKey);
}

/// The right, and duty, to settle one attempt. Dropped unsettled, it
/// abandons the key.
pub struct Lease {
    store: Arc<dyn IdempotencyStore>,
    key: IdempotencyKey,
    settled: bool,
}

impl Lease {
    pub fn settle(mut self, outcome: Result<&str, &GatewayError>) {
        self.settled = true;
        self.store.settle(&self.key, outcome);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            self.store.abandon(&self.key);
        }
    }
}

/// The fingerprint of a CreateTask: every input field but the request_id
/// itself, each length-prefixed so that no two inputs share a digest by
/// concatenation.
pub fn fingerprint(input: &CreateTaskInput) -> Fingerprint {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(input.model.as_bytes());
    field(input.prompt.as_bytes());
    field(input.image_url.as_bytes());
    field(
        input
            .end_image_url
            .as_deref()
            .unwrap_or("\0none")
            .as_bytes(),
    );
    field(input.duration.as_bytes());
    field(input.resolution.as_bytes());
    field(match input.prompt_optimizer {
        None => b"unset",
        Some(true) => b"true",
        Some(false) => b"false",
    });
    field(input.callback_url.as_deref().unwrap_or("\0none").as_bytes());
    hash.finalize().into()
}

/// The scope of a kie.ai key: a digest, so that the map never holds keys.
pub fn scope_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

type Outcome = Option<Result<String, GatewayError>>;

enum State {
    InFlight(watch::Sender<Outcome>),
    Done(String),
}

struct Entry {
    fingerprint: Fingerprint,
    state: State,
    since: Instant,
}

/// The in-memory store: bounded in keys, each remembered for the TTL.
pub struct InMemoryStore {
    settings: IdempotencySettings,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<IdempotencyKey, Entry>,
    /// Insertion order, to forget the oldest keys first when full.
    order: VecDeque<(IdempotencyKey, Instant)>,
}

impl InMemoryStore {
    pub fn new(settings: IdempotencySettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn evict(&mut self, max: usize) {
        while self.entries.len() > max || self.order.len() > 2 * max.max(1) {
            let Some((key, since)) = self.order.pop_front() else {
                return;
            };
            // Only the entry this slot was written for, and never one in
            // flight: its owner will settle it.
            let stale = self
                .entries
                .get(&key)
                .is_some_and(|e| e.since == since && matches!(e.state, State::Done(_)));
            if stale {
                self.entries.remove(&key);
            }
        }
    }
}

impl IdempotencyStore for InMemoryStore {
    fn reserve(self: Arc<Self>, key: IdempotencyKey, fingerprint: Fingerprint) -> Reserve<'static> {
        Box::pin(async move {
            loop {
                let mut waiting = {
                    let mut inner = self.inner();
                    let now = Instant::now();
                    let expired = inner.entries.get(&key).is_some_and(|e| {
                        matches!(e.state, State::Done(_))
                            && now.duration_since(e.since) >= self.settings.ttl
                    });
                    if expired {
                        inner.entries.remove(&key);
                    }
                    match inner.entries.get(&key) {
                        Some(e) if e.fingerprint != fingerprint => return Reservation::Mismatch,
                        Some(Entry {
                            state: State::Done(task_id),
                            ..
                        }) => return Reservation::Known(task_id.clone()),
                        Some(Entry {
                            state: State::InFlight(outcome),
                            ..
                        }) => outcome.subscribe(),
                        None => {
                            let (outcome, _) = watch::channel(None);
                            inner.entries.insert(
                                key.clone(),
                                Entry {
                                    fingerprint,
                                    state: State::InFlight(outcome),
                                    since: now,
                                },
                            );
                            inner.order.push_back((key.clone(), now));
                            inner.evict(self.settings.max_keys);
                            return Reservation::Reserved(Lease {
                                store: self.clone(),
                                key,
                                settled: false,
                            });
                        }
                    }
                };
                let outcome = waiting.wait_for(Option::is_some).await.map(|o| o.clone());
                match outcome {
                    Ok(Some(Ok(task_id))) => return Reservation::Known(task_id),
                    Ok(Some(Err(e))) => return Reservation::Failed(e),
                    // Abandoned: try to reserve it ourselves.
                    _ => continue,
                }
            }
        })
    }

    fn settle(&self, key: &IdempotencyKey, outcome: Result<&str, &GatewayError>) {
        let mut inner = self.inner();
        let Some(entry) = inner.entries.get_mut(key) else {
            return;
        };
        let State::InFlight(waiters) = &entry.state else {
            return;
        };
        match outcome {
            Ok(task_id) => {
                waiters.send_replace(Some(Ok(task_id.to_string())));
                entry.state = State::Done(task_id.to_string());
                entry.since = Instant::now();
                let since = entry.since;
                inner.order.push_back((key.clone(), since));
                inner.evict(self.settings.max_keys);
            }
            Err(e) => {
                waiters.send_replace(Some(Err(e.clone())));
                inner.entries.remove(key);
            }
        }
    }

    fn abandon(&self, key: &IdempotencyKey) {
        let mut inner = self.inner();
        if matches!(
            inner.entries.get(key).map(|e| &e.state),
            Some(State::InFlight(_))
        ) {
            // Dropping the sender wakes the waiters to try again.
            inner.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(id: &str) -> IdempotencyKey {
        IdempotencyKey {
            scope: "s".into(),
            request_id: id.into(),
        }
    }

    fn store(ttl_secs: u64) -> Arc<InMemoryStore> {
        InMemoryStore::new(IdempotencySettings {
            ttl: Duration::from_secs(ttl_secs),
            max_keys: 3,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_success_is_known_until_the_ttl() {
        let store = store(60);
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("first use reserves");
        };
        lease.settle(Ok("task-1"));
        assert!(
            matches!(store.clone().reserve(key("a"), [1; 32]).await, Reservation::Known(t) if t == "task-1")
        );
        assert!(matches!(
            store.clone().reserve(key("a"), [2; 32]).await,
            Reservation::Mismatch
        ));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(
            store.clone().reserve(key("a"), [2; 32]).await,
            Reservation::Reserved(_)
        ));
    }

    #[tokio::test]
    async fn a_failure_is_not_remembered_and_an_abandoned_key_is_free() {
        let store = store(60);
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("reserves");
        };
        lease.settle(Err(&GatewayError::ShuttingDown));
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("free again after a failure");
        };
        drop(lease);
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Reserved(_)
        ));
    }

    #[tokio::test]
    async fn at_most_max_keys_finished_keys_are_kept() {
        let store = store(60);
        for id in ["a", "b", "c", "d"] {
            let Reservation::Reserved(lease) = store.clone().reserve(key(id), [1; 32]).await else {
                panic!("reserves");
            };
            lease.settle(Ok(id));
        }
        assert_eq!(store.len(), 3);
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Reserved(_)
        ));
    }

    #[test]
    fn the_fingerprint_covers_every_parameter_but_the_request_id() {
        let base = CreateTaskInput::try_from(crate::pb::CreateTaskRequest {
            prompt: "p".into(),
            image_url: "https://x/y.png".into(),
            request_id: "r1".into(),
            ..Default::default()
        })
        .expect("valid");
        let mut other_id = base.clone();
        other_id.request_id = Some("r2".into());
        assert_eq!(fingerprint(&base), fingerprint(&other_id));
        let mut other_prompt = base.clone();
        other_prompt.prompt = "q".into();
        assert_ne!(fingerprint(&base), fingerprint(&other_prompt));
        let mut optimizer = base.clone();
        optimizer.prompt_optimizer = Some(false);
        assert_ne!(fingerprint(&base), fingerprint(&optimizer));
    }
}
