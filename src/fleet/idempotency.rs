//! Fleet-wide CreateTask idempotency: the [`IdempotencyStore`] of the
//! replicas that share a Redis, with the in-memory store's semantics.
//!
//! One hash per request_id (`<prefix>:idem:{<scope>.<id digest>}`) holds
//! its state; Lua scripts move it, so replicas racing on one key see one
//! order. An attempt in flight holds a lease that its replica renews; a
//! lease that lapses (the replica died mid-attempt) turns the key into an
//! unknown outcome, never a free key: the request may have been sent.
//!
//! Waiters poll the hash with a short back-off (woken at once when their
//! own replica records an outcome): Redis is the truth, and a poll needs no
//! second connection or subscription bookkeeping.
//!
//! Outcomes are recorded by one background writer per replica, in order,
//! retried while Redis is away: `settle` and `resolve` are called where no
//! one can wait for Redis (a dropped lease, a callback).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::script;
use crate::create::idempotency::{
    CALLBACK_WAIT, Fingerprint, IdempotencyKey, IdempotencyStore, Lease, Reservation, Reserve,
    Settlement,
};
use crate::error::{GatewayError, OutcomeUnknown, Prospect, RelayedError};
use crate::redis_client::{FleetError, Redis};

/// How long an attempt's replica may go silent before its attempt counts
/// as lost. Short, so that a dead replica's key is answered soon; renewed
/// every third of it while the attempt waits for kie.ai.
pub const LEASE: Duration = Duration::from_secs(10);
/// A certain failure is kept this long for the attempt's waiters (they
/// poll far more often); the key is free for new callers at once.
const FAILED_KEPT: Duration = Duration::from_secs(60);
/// Waiters poll from this interval, doubling up to the next.
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);
/// Retries of a write while Redis is away.
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(50);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(2);
/// An outcome not recorded after this long is given up (and logged): its
/// lease has long lapsed, so the key already reads as unknown, never free.
const WRITE_GIVE_UP: Duration = Duration::from_secs(600);

struct Scripts {
    reserve: Script,
    settle: Script,
    resolve: Script,
    renew: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            reserve: script(include_str!("lua/reserve.lua")),
            settle: script(include_str!("lua/settle.lua")),
            resolve: script(include_str!("lua/resolve.lua")),
            renew: script(include_str!("lua/renew.lua")),
        }
    }
}

/// An unknown outcome as stored: the request_id is the key's, and whether
/// the callback may still name the task is the `until` field's.
#[derive(Serialize, Deserialize)]
struct StoredUnknown {
    cause: String,
    timed_out: bool,
}

/// What the writer records.
enum Write {
    Settle {
        key: String,
        attempt: String,
        kind: &'static str,
        payload: String,
        learnable: bool,
    },
    Resolve {
        key: String,
        task_id: String,
    },
}

struct Job {
    write: Write,
    give_up: Instant,
}

/// This replica's attempt on a key.
struct Local {
    attempt: String,
    /// Stops the lease renewal when settled, or when the store goes.
    renewal: DropGuard,
}

pub struct RedisIdempotencyStore {
    redis: Redis,
    scripts: Arc<Scripts>,
    ttl: Duration,
    lease: Duration,
    writes: mpsc::UnboundedSender<Job>,
    /// Bumped when this replica records an outcome: its own waiters look
    /// at once instead of at their next poll.
    recorded: Arc<watch::Sender<u64>>,
    local: Mutex<HashMap<IdempotencyKey, Local>>,
    /// The unknown outcome the reserve script records when a lease lapses:
    /// the same for every key, so encoded once.
    lapse: String,
}

impl RedisIdempotencyStore {
    /// Keys are remembered for `ttl`; starts the background writer (so
    /// needs a Tokio runtime).
    pub fn new(redis: Redis, ttl: Duration) -> Arc<Self> {
        Self::with_lease(redis, ttl, LEASE)
    }

    pub fn with_lease(redis: Redis, ttl: Duration, lease: Duration) -> Arc<Self> {
        let (writes, queue) = mpsc::unbounded_channel();
        let recorded = Arc::new(watch::Sender::new(0));
        let scripts = Arc::new(Scripts::new());
        let writer = Writer {
            redis: redis.clone(),
            scripts: scripts.clone(),
            ttl,
            recorded: recorded.clone(),
        };
        // Ends when the store (the only sender) is dropped.
        tokio::spawn(writer.run(queue));
        Arc::new(Self {
            redis,
            scripts,
            ttl,
            lease,
            writes,
            recorded,
            local: Mutex::new(HashMap::new()),
            lapse: serde_json::to_string(&StoredUnknown {
                cause: "the replica making the create attempt stopped before it recorded kie.ai's \
                    answer"
                    .into(),
                timed_out: false,
            })
            .unwrap_or_default(),
        })
    }

    fn local(&self) -> MutexGuard<'_, HashMap<IdempotencyKey, Local>> {
        self.local.lock()
    }

    /// `<prefix>:idem:{<scope>.<digest>}`: the request_id is the caller's
    /// free text (braces included), so only its digest goes in the name.
    fn redis_key(&self, key: &IdempotencyKey) -> String {
        let digest = Sha256::digest(key.request_id.as_bytes());
        let id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.redis
            .keys()
            .key("idem", &format!("{}.{id}", key.scope))
    }

    fn enqueue(&self, write: Write, keep_trying: Duration) {
        let job = Job {
            write,
            give_up: Instant::now() + keep_trying,
        };
        if self.writes.send(job).is_err() {
            // Only when the runtime is going away with the process.
            tracing::error!("idempotency writer gone: an outcome was not recorded in Redis");
        }
    }

    async fn try_reserve(
        &self,
        redis_key: &str,
        fingerprint: &str,
        attempt: &str,
        waited: &str,
    ) -> Result<Vec<String>, FleetError> {
        let lapse = self.lapse.as_str();
        let lease_ms = millis(self.lease);
        let ttl_ms = millis(self.ttl);
        let script = &self.scripts.reserve;
        self.redis
            .call(|mut c| async move {
                script
                    .key(redis_key)
                    .arg(fingerprint)
                    .arg(attempt)
                    .arg(lease_ms)
                    .arg(ttl_ms)
                    .arg(waited)
                    .arg(lapse)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    /// Keeps the lease of this replica's attempt alive until `stop`.
    fn renew(&self, redis_key: String, attempt: String, stop: CancellationToken) {
        let redis = self.redis.clone();
        let scripts = self.scripts.clone();
        let (lease, ttl) = (self.lease, self.ttl);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(lease / 3) => {}
                }
                let renewed = redis
                    .call(|mut c| {
                        let (key, attempt) = (&redis_key, &attempt);
                        let script = &scripts.renew;
                        async move {
                            script
                                .key(key)
                                .arg(attempt)
                                .arg(millis(lease))
                                .arg(millis(ttl))
                                .invoke_async::<i64>(&mut c)
                                .await
                        }
                    })
                    .await;
                match renewed {
                    Ok(1) => {}
                    // Settled (the writer got there first), or lapsed and
                    // read as unknown: nothing left to renew.
                    Ok(_) => return,
                    // Tried again at the next tick; if Redis stays away the
                    // lease lapses and the key reads as unknown, never free.
                    Err(error) => tracing::warn!(%error, "idempotency lease not renewed"),
                }
            }
        });
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl IdempotencyStore for RedisIdempotencyStore {
    fn reserve(self: Arc<Self>, key: IdempotencyKey, fingerprint: Fingerprint) -> Reserve<'static> {
        Box::pin(async move {
            let redis_key = self.redis_key(&key);
            let fingerprint = hex(&fingerprint);
            let attempt = format!("{:032x}", rand::random::<u128>());
            let mut waited = String::new();
            let mut pause = POLL_FIRST;
            let mut recorded = self.recorded.subscribe();
            // A connection whose reconnect failed during an outage fails its
            // first call once Redis is back: one more try (the script knows
            // this attempt's own reservation, so repeating it is safe).
            let mut tried_again = false;
            loop {
                let answer = self
                    .try_reserve(&redis_key, &fingerprint, &attempt, &waited)
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(_) if !tried_again => {
                        tried_again = true;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            create_request_id = key.request_id,
                            "redis unreachable: request_id refused, nothing sent to kie.ai"
                        );
                        // The script may have reserved the key before the
                        // answer was lost: free it (nothing will be sent).
                        let released = RelayedError::of(&GatewayError::CoordinationUnavailable);
                        self.enqueue(
                            Write::Settle {
                                key: redis_key,
                                attempt,
                                kind: "failed",
                                payload: serde_json::to_string(&released).unwrap_or_default(),
                                learnable: false,
                            },
                            self.lease * 2,
                        );
                        return Reservation::Unreachable;
                    }
                };
                let answer: Vec<&str> = answer.iter().map(String::as_str).collect();
                match answer.as_slice() {
                    ["reserved"] => {
                        let renewal = CancellationToken::new();
                        self.renew(redis_key, attempt.clone(), renewal.clone());
                        let renewal = renewal.drop_guard();
                        self.local().insert(key.clone(), Local { attempt, renewal });
                        return Reservation::Reserved(Lease::new(self.clone(), key));
                    }
                    ["done", task_id] => return Reservation::Known((*task_id).to_owned()),
                    ["mismatch"] => return Reservation::Mismatch,
                    ["failed", error] => {
                        return Reservation::Failed(match serde_json::from_str(error) {
                            Ok(relayed) => GatewayError::Relayed(Box::new(relayed)),
                            Err(_) => GatewayError::Internal(
                                "a failed create's error could not be read back from Redis",
                            ),
                        });
                    }
                    ["unknown", stored, learnable] => {
                        let stored: StoredUnknown =
                            serde_json::from_str(stored).unwrap_or(StoredUnknown {
                                cause: "kie.ai's answer was lost".into(),
                                timed_out: false,
                            });
                        return Reservation::Unknown(OutcomeUnknown {
                            request_id: Some(key.request_id.clone()),
                            cause: stored.cause,
                            timed_out: stored.timed_out,
                            prospect: if *learnable == "1" {
                                Prospect::Callback
                            } else {
                                Prospect::Never
                            },
                        });
                    }
                    ["inflight", other] => {
                        waited = (*other).to_owned();
                        // Woken by this replica's own writer, or polling for
                        // another replica's outcome; the caller's deadline
                        // bounds the wait.
                        tokio::select! {
                            _ = recorded.changed() => {}
                            () = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(POLL_MAX);
                    }
                    other => {
                        tracing::error!(answer = ?other, "unexpected answer of the reserve script");
                        return Reservation::Failed(GatewayError::Internal(
                            "unexpected answer from the shared idempotency store",
                        ));
                    }
                }
            }
        })
    }

    fn settle(&self, key: &IdempotencyKey, settlement: Settlement<'_>) {
        let Some(local) = self.local().remove(key) else {
            return;
        };
        // The outcome replaces the lease: no more renewals.
        drop(local.renewal);
        let (kind, payload, learnable) = match settlement {
            Settlement::Created(task_id) => ("created", task_id.to_owned(), false),
            Settlement::NotCreated(error) => (
                "failed",
                serde_json::to_string(&RelayedError::of(error)).unwrap_or_default(),
                false,
            ),
            Settlement::Unknown(unknown) => (
                "unknown",
                serde_json::to_string(&StoredUnknown {
                    cause: unknown.cause.clone(),
                    timed_out: unknown.timed_out,
                })
                .unwrap_or_default(),
                unknown.prospect == Prospect::Callback,
            ),
        };
        self.enqueue(
            Write::Settle {
                key: self.redis_key(key),
                attempt: local.attempt,
                kind,
                payload,
                learnable,
            },
            WRITE_GIVE_UP,
        );
    }

    fn resolve(&self, key: &IdempotencyKey, task_id: &str) -> bool {
        self.enqueue(
            Write::Resolve {
                key: self.redis_key(key),
                task_id: task_id.to_owned(),
            },
            WRITE_GIVE_UP,
        );
        true
    }
}

/// Records outcomes one at a time, in the order they were settled (a
/// resolve never overtakes the settle it follows), retrying while Redis is
/// away.
struct Writer {
    redis: Redis,
    scripts: Arc<Scripts>,
    ttl: Duration,
    recorded: Arc<watch::Sender<u64>>,
}

impl Writer {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Job>) {
        while let Some(job) = queue.recv().await {
            let mut pause = WRITE_RETRY_FIRST;
            let mut warned = false;
            loop {
                match self.apply(&job.write).await {
                    Ok(()) => {
                        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
                        break;
                    }
                    Err(error) if Instant::now() >= job.give_up => {
                        tracing::error!(
                            %error,
                            "gave up recording a create outcome in Redis; its key reads as unknown"
                        );
                        break;
                    }
                    Err(error) => {
                        if !warned {
                            tracing::warn!(%error, "create outcome not yet recorded in Redis; retrying");
                            warned = true;
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(WRITE_RETRY_MAX);
                    }
                }
            }
        }
    }

    async fn apply(&self, write: &Write) -> Result<(), FleetError> {
        let ttl_ms = millis(self.ttl);
        let scripts = &self.scripts;
        // Both scripts are safe to run twice: a repeat finds the state
        // already moved and changes nothing.
        let _changed: i64 = match write {
            Write::Settle {
                key,
                attempt,
                kind,
                payload,
                learnable,
            } => {
                let learn_ms = if *learnable { millis(CALLBACK_WAIT) } else { 0 };
                self.redis
                    .call(|mut c| async move {
                        scripts
                            .settle
                            .key(key)
                            .arg(attempt)
                            .arg(*kind)
                            .arg(payload)
                            .arg(ttl_ms)
                            .arg(learn_ms)
                            .arg(millis(FAILED_KEPT))
                            .invoke_async(&mut c)
                            .await
                    })
                    .await?
            }
            Write::Resolve { key, task_id } => {
                self.redis
                    .call(|mut c| async move {
                        scripts
                            .resolve
                            .key(key)
                            .arg(task_id)
                            .arg(ttl_ms)
                            .invoke_async(&mut c)
                            .await
                    })
                    .await?
            }
        };
        Ok(())
    }
}
