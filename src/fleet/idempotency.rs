//! Fleet-wide CreateTask idempotency: the [`IdempotencyStore`] of the
//! replicas that share a Redis, with the in-memory store's semantics.
//!
//! One hash per request_id (`<prefix>:idem:{<scope>.<id digest>}`) holds
//! its state; Lua scripts move it, so replicas racing on one key see one
//! order. An attempt in flight holds a lease that its replica renews (the
//! key's own expiry, lease + TTL while in flight: no clock read on a
//! reserve's path); a lease that lapses (the replica died mid-attempt)
//! turns the key into an unknown outcome, never a free key: the request
//! may have been sent.
//!
//! Waiters poll the hash with a short back-off (woken at once when their
//! own replica records an outcome): Redis is the truth, and a poll needs no
//! second connection or subscription bookkeeping.
//!
//! Outcomes go through the [`Outbox`], in order, retried while Redis is
//! away: `settle` and `resolve` are called where no one can wait for Redis
//! (a dropped lease, a callback). They ride along with this replica's next
//! reserve, so a CreateTask costs about one round trip to Redis, not two.
//!
//! One task renews the leases of all of this replica's attempts in flight,
//! in one pipeline, rather than a task and a timer per attempt.
//!
//! Redis may lose its data (restarted empty). A renewal or a settle that
//! finds its key gone writes it again, so an attempt out at kie.ai then is
//! still recorded; and the created outcomes this replica saw are kept in
//! its memory too, so a retry that reaches it is answered whatever Redis
//! forgot. A retry that reaches a replica with no memory of the key cannot
//! be helped: that is the limit the README states.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::outbox::{LINGER, Outbox, Write};
use super::{evalsha, run_scripts, script};
use crate::config::IdempotencySettings;
use crate::create::idempotency::{
    Fingerprint, IdempotencyKey, IdempotencyStore, Lease, Reservation, Reserve, Settlement,
};
use crate::error::{GatewayError, OutcomeUnknown, Prospect, RelayedError};
use crate::expiring_map::{ExpiringMap, Retention};
use crate::redis_client::{FleetError, Redis, millis};

/// How long an attempt's replica may go silent before its attempt counts
/// as lost. Short, so that a dead replica's key is answered soon; renewed
/// every third of it while the attempt waits for kie.ai.
pub const LEASE: Duration = Duration::from_secs(10);
/// Waiters poll from this interval, doubling up to the next.
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);
/// An outcome not recorded after this long is given up (and logged): its
/// lease has long lapsed, so the key already reads as unknown, never free.
const WRITE_GIVE_UP: Duration = Duration::from_secs(600);

/// An unknown outcome as stored: the request_id is the key's, and whether
/// the callback may still name the task is the `until` field's.
#[derive(Serialize, Deserialize)]
struct StoredUnknown {
    cause: String,
    timed_out: bool,
}

/// This replica's attempt on a key, its lease renewed until settled.
struct Local {
    redis_key: String,
    attempt: String,
    fingerprint: String,
}

/// A created outcome this replica recorded or read.
struct Remembered {
    fingerprint: String,
    task_id: String,
}

impl Retention for Remembered {}

pub struct RedisIdempotencyStore {
    redis: Redis,
    reserve: Script,
    renew: Script,
    ttl: Duration,
    lease: Duration,
    outbox: Arc<Outbox>,
    local: Mutex<HashMap<IdempotencyKey, Local>>,
    /// Created outcomes seen here, for the TTL: answered without Redis, so
    /// a retry that reaches this replica is still answered after Redis lost
    /// its data (restarted empty). A created outcome never changes, so this
    /// is never stale.
    remembered: Mutex<ExpiringMap<IdempotencyKey, Remembered>>,
    /// The unknown outcome the reserve script records when a lease lapses:
    /// the same for every key, so encoded once.
    lapse: String,
}

impl RedisIdempotencyStore {
    /// Keys are remembered for `settings.ttl` (and up to `max_keys` of
    /// them in this process too); starts the outcome writer and the lease
    /// renewal (so needs a Tokio runtime).
    pub fn new(redis: Redis, settings: IdempotencySettings) -> Arc<Self> {
        Self::build(redis, settings, LEASE, LINGER)
    }

    /// With a lease of its own, and how long an outcome waits for a
    /// reserve to carry it (tests).
    pub fn with_timings(
        redis: Redis,
        ttl: Duration,
        lease: Duration,
        linger: Duration,
    ) -> Arc<Self> {
        let settings = IdempotencySettings {
            ttl,
            ..IdempotencySettings::default()
        };
        Self::build(redis, settings, lease, linger)
    }

    fn build(
        redis: Redis,
        settings: IdempotencySettings,
        lease: Duration,
        linger: Duration,
    ) -> Arc<Self> {
        let ttl = settings.ttl;
        let store = Arc::new(Self {
            outbox: Outbox::start(redis.clone(), ttl, linger),
            redis,
            reserve: script(include_str!("lua/reserve.lua")),
            renew: script(include_str!("lua/renew.lua")),
            ttl,
            lease,
            local: Mutex::new(HashMap::new()),
            remembered: Mutex::new(ExpiringMap::new(settings.max_keys, ttl)),
            lapse: serde_json::to_string(&StoredUnknown {
                cause: "the replica making the create attempt stopped before it recorded kie.ai's \
                    answer"
                    .into(),
                timed_out: false,
            })
            .unwrap_or_default(),
        });
        // Ends when the store is gone.
        tokio::spawn(renew_leases(Arc::downgrade(&store), lease / 3));
        store
    }

    fn local(&self) -> MutexGuard<'_, HashMap<IdempotencyKey, Local>> {
        self.local.lock()
    }

    fn remember(&self, key: IdempotencyKey, fingerprint: String, task_id: &str) {
        let task_id = task_id.to_owned();
        self.remembered.lock().insert(
            key,
            Remembered {
                fingerprint,
                task_id,
            },
        );
    }

    /// `<prefix>:idem:{<scope>.<digest>}`: the request_id is the caller's
    /// free text (braces included), so only its digest goes in the name.
    fn redis_key(&self, key: &IdempotencyKey) -> String {
        let digest = Sha256::digest(key.request_id.as_bytes());
        self.redis
            .keys()
            .key("idem", &format!("{}.{}", key.scope, hex(&digest[..16])))
    }

    /// One reserve script, with the outcomes queued so far ahead of it in
    /// the same pipeline.
    async fn try_reserve(
        &self,
        redis_key: &str,
        fingerprint: &str,
        attempt: &str,
        waited: &str,
    ) -> Result<Vec<String>, FleetError> {
        let mut pipe = redis::pipe();
        let batch = self.outbox.take();
        if let Some(batch) = &batch {
            batch.add_to(&mut pipe);
        }
        let mut reserve = evalsha(&self.reserve, redis_key);
        reserve
            .arg(fingerprint)
            .arg(attempt)
            .arg(millis(self.lease + self.ttl))
            .arg(millis(self.ttl))
            .arg(waited)
            .arg(&self.lapse);
        pipe.add_command(reserve);
        let [settle, resolve] = self.outbox.scripts();
        // Unanswered, the batch goes back to the outbox when dropped.
        let mut answers =
            run_scripts(&self.redis, &mut pipe, &[&self.reserve, settle, resolve]).await?;
        let carried = batch.as_ref().map_or(0, |b| b.len());
        if answers.len() != carried + 1 {
            return Err(FleetError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline answer of the wrong length",
            ))));
        }
        let answer = answers.pop().expect("checked length");
        if let Some(batch) = batch {
            batch.answered(&answers);
        }
        answer
            .and_then(|a| Ok(redis::from_redis_value(a)?))
            .map_err(FleetError::Redis)
    }
}

impl Drop for RedisIdempotencyStore {
    fn drop(&mut self) {
        self.outbox.close();
    }
}

/// Pushes on the leases of this replica's attempts in flight every
/// `every`, all in one pipeline; an attempt's first renewal comes within
/// `every` of its reservation. A renewal that fails is tried at the next
/// tick; if Redis stays away the lease lapses and the key reads as unknown,
/// never free. A key already settled (or lapsed) is left as it is.
async fn renew_leases(store: Weak<RedisIdempotencyStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let expiry_ms = millis(store.lease + store.ttl);
        let mut pipe = redis::pipe();
        for held in store.local().values() {
            let mut renew = evalsha(&store.renew, &held.redis_key);
            renew
                .arg(&held.attempt)
                .arg(expiry_ms)
                .arg(&held.fingerprint)
                .arg(millis(store.ttl));
            pipe.add_command(renew);
        }
        if pipe.is_empty() {
            continue;
        }
        if let Err(error) = run_scripts(&store.redis, &mut pipe, &[&store.renew]).await {
            tracing::warn!(%error, "idempotency leases not renewed");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    hex
}

impl IdempotencyStore for RedisIdempotencyStore {
    fn reserve(self: Arc<Self>, key: IdempotencyKey, fingerprint: Fingerprint) -> Reserve<'static> {
        Box::pin(async move {
            let fingerprint = hex(&fingerprint);
            if let Some(seen) = self.remembered.lock().live(&key) {
                return if seen.fingerprint == fingerprint {
                    Reservation::Known(seen.task_id.clone())
                } else {
                    Reservation::Mismatch
                };
            }
            let redis_key = self.redis_key(&key);
            let attempt = format!("{:032x}", rand::random::<u128>());
            let mut waited = String::new();
            let mut pause = POLL_FIRST;
            let mut recorded = self.outbox.subscribe();
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
                        self.outbox.push(
                            Write::Settle {
                                key: redis_key,
                                attempt,
                                kind: "failed",
                                payload: serde_json::to_string(&released).unwrap_or_default(),
                                learnable: false,
                                fingerprint,
                            },
                            self.lease * 2,
                        );
                        return Reservation::Unreachable;
                    }
                };
                let answer: Vec<&str> = answer.iter().map(String::as_str).collect();
                match answer.as_slice() {
                    ["reserved"] => {
                        self.local().insert(
                            key.clone(),
                            Local {
                                redis_key,
                                attempt,
                                fingerprint,
                            },
                        );
                        return Reservation::Reserved(Lease::new(self.clone(), key));
                    }
                    ["done", task_id] => {
                        self.remember(key, fingerprint, task_id);
                        return Reservation::Known((*task_id).to_owned());
                    }
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
        // The outcome replaces the lease: no more renewals.
        let Some(local) = self.local().remove(key) else {
            return;
        };
        let (kind, payload, learnable) = match settlement {
            Settlement::Created(task_id) => {
                self.remember(key.clone(), local.fingerprint.clone(), task_id);
                ("created", task_id.to_owned(), false)
            }
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
        self.outbox.push(
            Write::Settle {
                key: local.redis_key,
                attempt: local.attempt,
                kind,
                payload,
                learnable,
                fingerprint: local.fingerprint,
            },
            WRITE_GIVE_UP,
        );
    }

    fn resolve(&self, key: &IdempotencyKey, task_id: &str) -> bool {
        self.outbox.push(
            Write::Resolve {
                key: self.redis_key(key),
                task_id: task_id.to_owned(),
            },
            WRITE_GIVE_UP,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_per_byte_as_every_replica_names_keys() {
        assert_eq!(hex(&[0x0f, 0xa0, 0x00, 0xff]), "0fa000ff");
    }
}
