//! CreateTask idempotency: a `request_id` seen again with the same
//! parameters returns the first task instead of buying a second video, also
//! when the duplicates arrive together (they wait for the one attempt). An
//! attempt that certainly made no task frees the key; one that may have made
//! a task (its answer was lost) binds the key for the TTL, until the task id
//! is learned, and never lets it create again. The store is a small trait so
//! that a shared store can replace the in-memory one when the gateway runs
//! as several replicas.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::IdempotencySettings;
use crate::error::{GatewayError, OutcomeUnknown, Prospect};
use crate::expiring_map::{ExpiringMap, Retention};
use crate::task::{CreateTaskInput, ImageSource};

/// A digest of every parameter that shapes the upstream request.
pub(crate) type Fingerprint = [u8; 32];

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
    /// An earlier attempt may have made a task whose id is not known (yet).
    Unknown(OutcomeUnknown),
    /// The key was used with different parameters.
    Mismatch,
    /// The store cannot be reached (a shared store whose server is away):
    /// nothing is known of the key, so nothing may be sent.
    Unreachable,
}

pub(crate) type Reserve<'a> = Pin<Box<dyn Future<Output = Reservation> + Send + 'a>>;

pub trait IdempotencyStore: Send + Sync + 'static {
    /// Reserves `key` for a new attempt, or says what is known of it;
    /// waits while another attempt with the same key is in flight.
    fn reserve(self: Arc<Self>, key: IdempotencyKey, fingerprint: Fingerprint) -> Reserve<'static>;

    /// Records the outcome of a reserved attempt; waiters learn it.
    fn settle(&self, key: &IdempotencyKey, settlement: Settlement<'_>);

    /// The task id of an attempt whose outcome was unknown has been learned
    /// (from kie.ai's callback): later retries get it. Whether the key was
    /// waiting for it (a shared store, which records it in the background,
    /// says whether it took it).
    fn resolve(&self, key: &IdempotencyKey, task_id: &str) -> bool;
}

/// The right, and duty, to settle one attempt. Dropped unsettled (the
/// attempt panicked or was cut), it settles the key as unknown for good: the
/// request may have been sent, so the key must never create again.
pub struct Lease {
    store: Arc<dyn IdempotencyStore>,
    key: IdempotencyKey,
    settled: bool,
}

/// How a reserved attempt ended.
#[derive(Clone, Copy, Debug)]
pub enum Settlement<'a> {
    /// kie.ai made this task: remembered until the TTL.
    Created(&'a str),
    /// Certainly no task: the key is free again.
    NotCreated(&'a GatewayError),
    /// Maybe a task: the key stays bound for the TTL and never creates
    /// again.
    Unknown(&'a OutcomeUnknown),
}

/// How long after a lost answer the gateway still expects kie.ai's callback
/// to name the task (kie.ai advises giving up on a task after 10-15 minutes;
/// its callback comes when the task ends). Later, a retry is told that
/// waiting no longer helps; a callback that still comes resolves the key.
pub(crate) const CALLBACK_WAIT: Duration = Duration::from_secs(3600);

impl Lease {
    /// The lease of a key `store` has just reserved.
    pub fn new(store: Arc<dyn IdempotencyStore>, key: IdempotencyKey) -> Self {
        Self {
            store,
            key,
            settled: false,
        }
    }

    pub(crate) fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    pub fn settle(mut self, settlement: Settlement<'_>) {
        self.settled = true;
        self.store.settle(&self.key, settlement);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            let unknown = OutcomeUnknown {
                request_id: Some(self.key.request_id.clone()),
                cause: "the gateway's create attempt ended without kie.ai's answer".into(),
                timed_out: false,
                prospect: Prospect::Never,
            };
            self.store.settle(&self.key, Settlement::Unknown(&unknown));
        }
    }
}

/// The fingerprint of a CreateTask: every input field but the request_id
/// itself, each length-prefixed so that no two inputs share a digest by
/// concatenation.
pub(crate) fn fingerprint(input: &CreateTaskInput) -> Fingerprint {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(input.model.as_bytes());
    field(input.prompt.as_bytes());
    image(&mut field, Some(&input.image));
    image(&mut field, input.end_image.as_ref());
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

/// A frame in a fingerprint: its URL, or a SHA-256 digest of its bytes
/// (never the bytes), each tagged so that neither can pass for the other.
fn image(field: &mut impl FnMut(&[u8]), source: Option<&ImageSource>) {
    match source {
        None => field(b"\0none"),
        Some(ImageSource::Url(url)) => {
            field(b"url");
            field(url.as_bytes());
        }
        Some(ImageSource::Data(data)) => {
            field(b"sha256");
            field(&Sha256::digest(data.bytes()));
        }
    }
}

/// The scope of a caller's request_ids: its kie.ai key and, when caller
/// tokens are on, its name, so that two callers sharing the gateway's key
/// never meet. Anonymous calls keep the key's scope alone.
pub(crate) fn scope_for(caller: &crate::callers::Caller, key: &str) -> String {
    if caller.is_anonymous() {
        return scope_of(key);
    }
    let mut hasher = Sha256::new();
    for part in [caller.name.as_bytes(), key.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The scope of a kie.ai key: a digest, so that the map never holds keys.
pub(crate) fn scope_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

type Outcome = Option<Result<String, GatewayError>>;

enum State {
    InFlight(watch::Sender<Outcome>),
    Done(String),
    Unknown {
        unknown: OutcomeUnknown,
        /// While the callback may still name the task.
        learnable_until: Option<Instant>,
    },
}

struct Entry {
    fingerprint: Fingerprint,
    state: State,
}

impl Retention for Entry {
    /// Only a created task's key may be forgotten to make room: one in
    /// flight will be settled by its owner, and forgetting an unknown
    /// outcome could buy a second video.
    fn evictable(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// A settled key is held until the TTL; one in flight until settled.
    fn expires(&self) -> bool {
        !matches!(self.state, State::InFlight(_))
    }
}

/// The in-memory store: bounded in keys, each remembered for the TTL
/// from when it was last settled.
pub struct InMemoryStore {
    keys: Mutex<ExpiringMap<IdempotencyKey, Entry>>,
}

impl InMemoryStore {
    pub fn new(settings: IdempotencySettings) -> Arc<Self> {
        Arc::new(Self {
            keys: Mutex::new(ExpiringMap::new(settings.max_keys, settings.ttl)),
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().len()
    }
}

impl IdempotencyStore for InMemoryStore {
    fn reserve(self: Arc<Self>, key: IdempotencyKey, fingerprint: Fingerprint) -> Reserve<'static> {
        Box::pin(async move {
            loop {
                let mut waiting = {
                    let mut keys = self.keys.lock();
                    let now = Instant::now();
                    match keys.live(&key) {
                        Some(e) if e.fingerprint != fingerprint => return Reservation::Mismatch,
                        Some(Entry {
                            state: State::Done(task_id),
                            ..
                        }) => return Reservation::Known(task_id.clone()),
                        Some(Entry {
                            state:
                                State::Unknown {
                                    unknown,
                                    learnable_until,
                                },
                            ..
                        }) => {
                            let mut unknown = unknown.clone();
                            if learnable_until.is_none_or(|until| now >= until) {
                                unknown.prospect = Prospect::Never;
                            }
                            return Reservation::Unknown(unknown);
                        }
                        Some(Entry {
                            state: State::InFlight(outcome),
                            ..
                        }) => outcome.subscribe(),
                        None => {
                            let (outcome, _) = watch::channel(None);
                            keys.insert(
                                key.clone(),
                                Entry {
                                    fingerprint,
                                    state: State::InFlight(outcome),
                                },
                            );
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

    fn settle(&self, key: &IdempotencyKey, settlement: Settlement<'_>) {
        let mut keys = self.keys.lock();
        let Some(entry) = keys.get_mut(key) else {
            return;
        };
        let State::InFlight(waiters) = &entry.state else {
            return;
        };
        let now = Instant::now();
        match settlement {
            Settlement::Created(task_id) => {
                waiters.send_replace(Some(Ok(task_id.to_string())));
                entry.state = State::Done(task_id.to_string());
            }
            Settlement::NotCreated(e) => {
                waiters.send_replace(Some(Err(e.clone())));
                keys.remove(key);
                return;
            }
            Settlement::Unknown(unknown) => {
                waiters.send_replace(Some(Err(GatewayError::CreateOutcomeUnknown(
                    unknown.clone(),
                ))));
                let learnable_until =
                    (unknown.prospect == Prospect::Callback).then(|| now + CALLBACK_WAIT);
                entry.state = State::Unknown {
                    unknown: unknown.clone(),
                    learnable_until,
                };
            }
        }
        keys.touch(key);
    }

    fn resolve(&self, key: &IdempotencyKey, task_id: &str) -> bool {
        let mut keys = self.keys.lock();
        let Some(entry) = keys.get_mut(key) else {
            return false;
        };
        if !matches!(entry.state, State::Unknown { .. }) {
            return false;
        }
        entry.state = State::Done(task_id.to_string());
        // Remembered for the TTL from when the task became known.
        keys.touch(key);
        true
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
        lease.settle(Settlement::Created("task-1"));
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
    async fn a_failure_is_not_remembered_and_an_abandoned_key_is_bound_for_good() {
        let store = store(60);
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("reserves");
        };
        lease.settle(Settlement::NotCreated(&GatewayError::ShuttingDown));
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("free again after a failure");
        };
        // An attempt that dies unsettled may have sent its request.
        drop(lease);
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Unknown(u) if u.prospect == Prospect::Never
        ));
    }

    #[tokio::test]
    async fn at_most_max_keys_finished_keys_are_kept() {
        let store = store(60);
        for id in ["a", "b", "c", "d"] {
            let Reservation::Reserved(lease) = store.clone().reserve(key(id), [1; 32]).await else {
                panic!("reserves");
            };
            lease.settle(Settlement::Created(id));
        }
        assert_eq!(store.len(), 3);
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Reserved(_)
        ));
    }

    fn unknown(prospect: Prospect) -> OutcomeUnknown {
        OutcomeUnknown {
            request_id: Some("a".into()),
            cause: "connection lost".into(),
            timed_out: false,
            prospect,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_outcome_binds_the_key_for_the_ttl_and_is_never_evicted() {
        let store = store(60);
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("reserves");
        };
        lease.settle(Settlement::Unknown(&unknown(Prospect::Never)));
        // Three more keys than the store holds: "a" must stay.
        for id in ["b", "c", "d", "e"] {
            let Reservation::Reserved(lease) = store.clone().reserve(key(id), [1; 32]).await else {
                panic!("reserves");
            };
            lease.settle(Settlement::Created(id));
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Unknown(u) if u.prospect == Prospect::Never
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Reserved(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_outcome_awaits_the_callback_then_resolves_to_the_task() {
        let store = InMemoryStore::new(IdempotencySettings {
            ttl: CALLBACK_WAIT * 2,
            max_keys: 3,
        });
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("reserves");
        };
        lease.settle(Settlement::Unknown(&unknown(Prospect::Callback)));
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Unknown(u) if u.prospect == Prospect::Callback
        ));
        assert!(!store.resolve(&key("other"), "t"));
        tokio::time::advance(CALLBACK_WAIT).await;
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Unknown(u) if u.prospect == Prospect::Never
        ));
        // A late callback still resolves it.
        assert!(store.resolve(&key("a"), "task-late"));
        assert!(matches!(
            store.clone().reserve(key("a"), [1; 32]).await,
            Reservation::Known(t) if t == "task-late"
        ));
        assert!(!store.resolve(&key("a"), "task-late"), "only once");
    }

    #[tokio::test]
    async fn waiters_on_an_attempt_that_ends_unknown_learn_it() {
        let store = store(60);
        let Reservation::Reserved(lease) = store.clone().reserve(key("a"), [1; 32]).await else {
            panic!("reserves");
        };
        let waiter = tokio::spawn(store.clone().reserve(key("a"), [1; 32]));
        tokio::task::yield_now().await;
        lease.settle(Settlement::Unknown(&unknown(Prospect::Callback)));
        let seen = waiter.await.expect("waiter");
        assert!(matches!(
            seen,
            Reservation::Failed(GatewayError::CreateOutcomeUnknown(_))
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

    #[test]
    fn the_fingerprint_covers_image_bytes_by_their_digest() {
        let png = |tail: u8| {
            let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
            bytes.push(tail);
            let data = crate::image::ImageData::parse("image_data", bytes.into()).expect("png");
            ImageSource::Data(data)
        };
        let base = CreateTaskInput::try_from(crate::pb::CreateTaskRequest {
            prompt: "p".into(),
            image_url: "https://x/y.png".into(),
            ..Default::default()
        })
        .expect("valid");
        let with = |image: ImageSource, end: Option<ImageSource>| CreateTaskInput {
            image,
            end_image: end,
            ..base.clone()
        };
        assert_eq!(
            fingerprint(&with(png(1), None)),
            fingerprint(&with(png(1), None))
        );
        assert_ne!(
            fingerprint(&with(png(1), None)),
            fingerprint(&with(png(2), None))
        );
        assert_ne!(
            fingerprint(&with(png(1), None)),
            fingerprint(&with(png(1), Some(png(1))))
        );
        assert_ne!(fingerprint(&base), fingerprint(&with(png(1), None)));
    }
}
