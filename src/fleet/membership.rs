//! Who is in the fleet: each replica heartbeats its random id into one
//! sorted set in Redis (`<prefix>:members:{fleet}`, scored by when the
//! membership lapses) and learns the fleet size from it. The size it last
//! saw is what it divides kie.ai's limits by while Redis is away.
//!
//! The heartbeat is also this replica's view of Redis's health: the
//! `fleet_redis_up` gauge, one warning when Redis goes away and one info
//! line when it is back. Health stays SERVING either way: without Redis the
//! gateway is degraded (shares of the limits, no request_ids), not down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::redis_client::{FleetError, Redis};

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica silent this long is out of the fleet: a few heartbeats, so
/// one slow beat does not shrink the fleet (and grow everyone's share).
pub const LAPSE: Duration = Duration::from_secs(4);

pub struct Membership {
    redis: Redis,
    id: String,
    key: String,
    heartbeat: Script,
    up: AtomicBool,
    /// The fleet size this replica divides limits by: the largest seen in
    /// Redis within the last [`LAPSE`], this replica included.
    replicas: AtomicUsize,
    /// Sizes seen within the last [`LAPSE`]. A count can drop for a moment
    /// without anyone leaving (a restarted Redis is empty until every
    /// replica has beaten once): using it would grow the shares by mistake.
    recent: Mutex<VecDeque<(Instant, usize)>>,
    metrics: Arc<Metrics>,
}

impl Membership {
    /// Registers this replica (one time-boxed attempt, so that it starts
    /// knowing the fleet's size when Redis is there) and heartbeats until
    /// `shutdown`, when it leaves the fleet.
    pub async fn start(
        redis: Redis,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let key = redis.keys().key("members", "fleet");
        let membership = Arc::new(Self {
            redis,
            // Random: a restarted replica is a new member, and the old id
            // lapses by itself.
            id: format!("{:032x}", rand::random::<u128>()),
            key,
            heartbeat: super::script(include_str!("lua/heartbeat.lua")),
            // Assumed up until the first beat says otherwise, so that a
            // replica starting without Redis logs the loss once.
            up: AtomicBool::new(true),
            replicas: AtomicUsize::new(1),
            recent: Mutex::new(VecDeque::new()),
            metrics,
        });
        membership.metrics.fleet_replicas.set(1);
        membership.beat().await;
        tokio::spawn(membership.clone().run(shutdown));
        membership
    }

    /// This replica's id in the fleet: random, nothing secret.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// This replica's share of a fleet-wide `limit` while Redis is away:
    /// floor(limit / replicas last seen), at least 1.
    pub fn share(&self, limit: usize) -> usize {
        (limit / self.replicas()).max(1)
    }

    /// Records whether Redis answered; logs only the changes.
    pub fn report(&self, answered: bool, error: Option<&FleetError>) {
        let was = self.up.swap(answered, Ordering::Relaxed);
        self.metrics.fleet_redis_up.set(i64::from(answered));
        match (was, answered) {
            (true, false) => tracing::warn!(
                error = error.map(ToString::to_string),
                replicas = self.replicas(),
                "Redis is unreachable: each replica keeps to its share of kie.ai's limits, \
                 request_ids are refused"
            ),
            (false, true) => tracing::info!(
                replicas = self.replicas(),
                "Redis is back: kie.ai's limits and request_ids are fleet-wide again"
            ),
            _ => {}
        }
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            self.beat().await;
        }
        // Leaving at once lets the others' shares grow now rather than when
        // the membership lapses; if this fails, it lapses.
        let (key, id) = (&self.key, &self.id);
        let _ = self
            .redis
            .call(|mut c| async move {
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(id)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    /// Records a size seen now; returns the largest of the last [`LAPSE`]
    /// (a replica that left drops out of it as its own membership would).
    /// `back`: the first size after Redis was away, when the sizes seen
    /// before the outage are the best known for one more [`LAPSE`].
    fn remember(&self, seen: usize, back: bool) -> usize {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        if back {
            for (at, _) in recent.iter_mut() {
                *at = now;
            }
        }
        while recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= LAPSE)
        {
            recent.pop_front();
        }
        recent.push_back((now, seen));
        recent.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1)
    }

    async fn beat(&self) {
        let back = !self.is_up();
        let lapse_ms = crate::redis_client::millis(LAPSE);
        let seen = self
            .redis
            .run_script::<usize>(self.heartbeat.key(&self.key).arg(&self.id).arg(lapse_ms))
            .await;
        match seen {
            Ok(seen) => {
                let replicas = self.remember(seen, back);
                self.replicas.store(replicas, Ordering::Relaxed);
                self.metrics
                    .fleet_replicas
                    .set(i64::try_from(replicas).unwrap_or(i64::MAX));
                self.report(true, None);
            }
            Err(e) => self.report(false, Some(&e)),
        }
    }
}
