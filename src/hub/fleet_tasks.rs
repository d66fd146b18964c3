//! One poller per task for the whole fleet, and the task's state where
//! every replica sees it.
//!
//! - `<prefix>:lease:{<task id>.<key digest>}`: the poller lease, the
//!   holder's random id, `SET NX PX` [`LEASE`]; its holder renews it every
//!   [`RENEW_EVERY`] with a compare-and-extend script and deletes it (only
//!   if still its own) when its last watcher leaves, the task ends or the
//!   gateway stops (which waits for it: [`FleetTasks::handed_back`]). Only
//!   the holder reads kie.ai; a holder that dies stops renewing, and the
//!   lease lapses within [`LEASE`] for a follower to take.
//! - `<prefix>:task:{<task id>.<key digest>}`: a hash with the task as the
//!   hub encodes it and its state's rank; a Lua write refuses to move it
//!   back. Kept for the task cache TTL after each write, so a finished task
//!   is answered from it by any replica with no upstream read.
//!
//! The key digest keeps pass-through keys apart as the hub does in one
//! process (one team never sees a task through another's key) without ever
//! writing a key to Redis. Both keys of a task share one hash tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::redis_client::{FleetError, Redis};

/// How long a poller lease lasts unrenewed: how long a dead holder's tasks
/// go unpolled at most. Short, as a renewal is one cheap script call.
pub const LEASE: Duration = Duration::from_secs(4);
/// Renewed every third of the lease, so that two renewals can be lost (a
/// slow Redis, a busy process) before it lapses.
pub const RENEW_EVERY: Duration = Duration::from_millis(1333);
/// A follower looks at the shared state (and tries the lease) at least this
/// often, whatever the task's cadence: with [`LEASE`] this bounds a
/// takeover to `LEASE + FOLLOW_MAX` after the holder's last renewal.
pub const FOLLOW_MAX: Duration = Duration::from_secs(2);

/// The digest that stands for a kie.ai key in key names: never the key.
pub fn key_digest(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// A task's two keys in Redis.
#[derive(Clone, Debug)]
pub struct TaskKeys {
    state: String,
    lease: String,
}

/// What a write left in Redis.
#[derive(Debug)]
pub struct Written {
    /// The state moved on (watchers elsewhere should be told).
    pub moved: bool,
    /// Refused as a step back: `task` is the stored one.
    pub refused: bool,
    /// The task as Redis now holds it.
    pub task: Vec<u8>,
}

pub struct FleetTasks {
    redis: Redis,
    /// This replica's id as a lease holder and as a wake-up's sender.
    id: String,
    write: Script,
    renew: Script,
    release: Script,
    ttl: Duration,
    metrics: Arc<Metrics>,
    /// The renewal tasks of the leases held, each of which hands its lease
    /// back when dropped.
    keepers: TaskTracker,
}

impl FleetTasks {
    /// `ttl`: how long a task's shared state outlives its last write (the
    /// task cache's TTL).
    pub fn new(redis: Redis, ttl: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            redis,
            id: format!("{:032x}", rand::random::<u128>()),
            write: Script::new(include_str!("lua/task_write.lua")),
            renew: Script::new(include_str!("lua/lease_renew.lua")),
            release: Script::new(include_str!("lua/lease_release.lua")),
            ttl,
            metrics,
            keepers: TaskTracker::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `task_id` is `[A-Za-z0-9_-]` (parsed at the edge) and the digest
    /// hex: no braces, so the group is the only hash tag.
    pub fn keys(&self, task_id: &str, key_digest: &str) -> TaskKeys {
        let group = format!("{task_id}.{key_digest}");
        let keys = self.redis.keys();
        TaskKeys {
            state: keys.key("task", &group),
            lease: keys.key("lease", &group),
        }
    }

    /// The task as last written by any replica.
    pub async fn read(&self, keys: &TaskKeys) -> Result<Option<Vec<u8>>, FleetError> {
        let key = &keys.state;
        self.redis
            .call(|mut c| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("task")
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await
    }

    /// Writes the task if it does not move the state back. `rank` orders
    /// the states (1 WAITING .. 3 GENERATING, 4 and 5 the terminal ones).
    /// Safe to repeat: the same write again is a refresh.
    pub async fn write(
        &self,
        keys: &TaskKeys,
        rank: i32,
        task: &[u8],
    ) -> Result<Written, FleetError> {
        let ttl_ms = crate::redis_client::millis(self.ttl);
        let (outcome, stored): (i64, Vec<u8>) = self
            .redis
            .run_script(self.write.key(&keys.state).arg(rank).arg(task).arg(ttl_ms))
            .await?;
        Ok(Written {
            moved: outcome == 2,
            refused: outcome == 0,
            task: stored,
        })
    }

    /// Takes the task's lease if nobody holds it. `Ok(Some)`: this replica
    /// polls the task for the fleet until the lease is dropped or lost.
    pub async fn try_lead(self: &Arc<Self>, keys: &TaskKeys) -> Result<Option<Lease>, FleetError> {
        let (key, id) = (&keys.lease, &self.id);
        let lease_ms = crate::redis_client::millis(LEASE);
        let taken = self
            .redis
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(id)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease_ms)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        let held = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        self.metrics.fleet_leases_held.inc();
        self.keepers.spawn(
            self.clone()
                .keep(keys.lease.clone(), held.clone(), stop.clone()),
        );
        Ok(Some(Lease { held, stop }))
    }

    /// Waits until every lease this replica holds is handed back (or
    /// lost): once the gateway stops, its pollers drop their leases, and
    /// the process must not exit before the hand-backs reach Redis, or the
    /// other replicas wait for the leases to lapse.
    pub async fn handed_back(&self) {
        self.keepers.close();
        self.keepers.wait().await;
    }

    /// Renews the lease until told to stop (then hands it back) or until it
    /// is lost: taken over, or unrenewed for a whole [`LEASE`] (Redis away;
    /// another replica may have it by now).
    async fn keep(self: Arc<Self>, key: String, held: Arc<AtomicBool>, stop: CancellationToken) {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
            let lease_ms = crate::redis_client::millis(LEASE);
            let renewal = self
                .redis
                .run_script::<i64>(self.renew.key(&key).arg(&self.id).arg(lease_ms))
                .await;
            match renewal {
                Ok(1) => renewed = Instant::now(),
                Ok(_) => {
                    held.store(false, Ordering::Relaxed);
                    break;
                }
                Err(_) if renewed.elapsed() >= LEASE => {
                    held.store(false, Ordering::Relaxed);
                    break;
                }
                Err(_) => {}
            }
        }
        self.metrics.fleet_leases_held.dec();
        if held.swap(false, Ordering::Relaxed) {
            // Handing it back lets a follower take over at its next look
            // instead of after the lease; if this fails, the lease lapses.
            let _ = self
                .redis
                .run_script::<i64>(self.release.key(&key).arg(&self.id))
                .await;
        }
    }
}

/// This replica polls a task for the fleet while this is held; dropping it
/// stops the renewals and hands the lease back.
pub struct Lease {
    held: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Lease {
    /// False once the lease was lost: the holder must stop reading kie.ai.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_digest_is_short_hex_and_not_the_key() {
        let d = key_digest("sk-secret");
        assert_eq!(d.len(), 24);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!d.contains("secret"));
    }
}
