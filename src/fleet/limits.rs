//! kie.ai's per-account limits, kept by the whole fleet through Redis.
//!
//! - createTask: the single-process gate's reserving sliding window, as one
//!   sorted set of reserved start times (`<prefix>:creates:{limits}`) in
//!   Redis's clock; a Lua script reserves the earliest start that keeps at
//!   most `limit` starts in any window. One round trip per create.
//! - recordInfo: a sorted set of held read slots (`<prefix>:reads:{limits}`),
//!   the local budget's rule made fleet-wide: a slot is held from its grant
//!   until 1 s after its answer (or a lease, if the answer is never
//!   reported), so no second at kie.ai sees more than the budget. Two round
//!   trips per read (take, release), plus polls while the budget is full.
//!
//! While Redis is away (the membership heartbeat, or a failed call, says
//! so), each replica keeps to its share, floor(limit / replicas last seen),
//! and goes back to the fleet-wide window on the first good heartbeat.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;

use super::membership::Membership;
use crate::hub::{SharedReadBudget, SharedSlot};
use crate::kie::{CreateSlot, SharedCreateWindow};
use crate::redis_client::{FleetError, Redis};

/// Longest pause between two looks at a full read budget: answered slots
/// free at a known time, but one out at kie.ai frees whenever its answer
/// comes.
const READ_POLL_MAX: Duration = Duration::from_millis(100);
const READ_POLL_MIN: Duration = Duration::from_millis(5);
/// A read slot whose release never lands (Redis away, replica killed) is
/// held this much past the upstream timeout, then frees by itself.
const READ_LEASE_MARGIN: Duration = Duration::from_secs(5);

pub struct FleetLimits {
    redis: Redis,
    membership: Arc<Membership>,
    creates_key: String,
    reads_key: String,
    create: Script,
    read_acquire: Script,
    read_release: Script,
    read_lease: Duration,
    /// Makes each sorted-set member unique within this replica.
    seq: AtomicU64,
    /// This replica's reads wait for a fleet slot one at a time, in the
    /// order the local budget granted them (its priority order), and only
    /// one of them polls Redis.
    read_queue: tokio::sync::Mutex<()>,
}

impl FleetLimits {
    /// `upstream_timeout` bounds a read, so bounds how long a slot whose
    /// release is lost stays held.
    pub fn new(redis: Redis, membership: Arc<Membership>, upstream_timeout: Duration) -> Arc<Self> {
        let keys = redis.keys().clone();
        Arc::new(Self {
            redis,
            membership,
            creates_key: keys.key("creates", "limits"),
            reads_key: keys.key("reads", "limits"),
            create: super::script(include_str!("lua/create_reserve.lua")),
            read_acquire: super::script(include_str!("lua/read_acquire.lua")),
            read_release: super::script(include_str!("lua/read_release.lua")),
            read_lease: upstream_timeout + READ_LEASE_MARGIN,
            seq: AtomicU64::new(0),
            read_queue: tokio::sync::Mutex::new(()),
        })
    }

    /// The limit this replica keeps to locally: the whole of it while Redis
    /// keeps the fleet-wide one, its share while Redis is away.
    pub fn local_limit(&self, limit: usize) -> usize {
        if self.membership.is_up() {
            limit
        } else {
            self.membership.share(limit)
        }
    }

    fn member(&self) -> String {
        format!(
            "{}:{}",
            self.membership.id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn failed(&self, error: &FleetError) {
        self.membership.report(false, Some(error));
    }

    /// Reserves a createTask start in the fleet's window of `limit` per
    /// `window`, unless it is more than `longest` away.
    pub async fn reserve_create(
        &self,
        limit: usize,
        window: Duration,
        longest: Duration,
    ) -> CreateSlot {
        if !self.membership.is_up() {
            return CreateSlot::Share(self.membership.share(limit));
        }
        let answer = self
            .redis
            .run_script::<(u8, u64)>(
                self.create
                    .key(&self.creates_key)
                    .arg(limit)
                    .arg(crate::redis_client::millis(window))
                    .arg(crate::redis_client::millis(longest))
                    .arg(self.member()),
            )
            .await;
        match answer {
            Ok((1, wait)) => CreateSlot::After(Duration::from_millis(wait)),
            Ok((_, wait)) => CreateSlot::TooLate(Duration::from_millis(wait)),
            Err(e) => {
                // A call cut by the time box may have reserved a slot: it
                // only stays unused, which errs on the safe side.
                self.failed(&e);
                CreateSlot::Share(self.membership.share(limit))
            }
        }
    }

    /// Waits for one of the fleet's `limit` read slots; `None` when Redis is
    /// away (the caller keeps to its local share instead).
    pub async fn read_slot(self: &Arc<Self>, limit: usize) -> Option<ReadSlot> {
        let _turn = self.read_queue.lock().await;
        let member = self.member();
        let lease_ms = crate::redis_client::millis(self.read_lease);
        loop {
            if !self.membership.is_up() {
                return None;
            }
            let answer = self
                .redis
                .run_script::<(u8, i64)>(
                    self.read_acquire
                        .key(&self.reads_key)
                        .arg(limit)
                        .arg(lease_ms)
                        .arg(&member),
                )
                .await;
            match answer {
                Ok((1, _)) => {
                    return Some(ReadSlot {
                        limits: self.clone(),
                        member: member.clone(),
                    });
                }
                Ok((_, wait_ms)) => {
                    let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
                    tokio::time::sleep(wait.clamp(READ_POLL_MIN, READ_POLL_MAX)).await;
                }
                Err(e) => {
                    // A slot taken by a call cut by the time box lapses
                    // with its lease.
                    self.failed(&e);
                    return None;
                }
            }
        }
    }

    async fn release_read(&self, member: String) {
        let lease_ms = crate::redis_client::millis(self.read_lease);
        let released = self
            .redis
            .run_script::<i64>(
                self.read_release
                    .key(&self.reads_key)
                    .arg(member)
                    .arg(lease_ms),
            )
            .await;
        // Not retried: a slot whose release is lost is held until its lease
        // lapses, which only costs budget.
        if let Err(e) = released {
            self.failed(&e);
        }
    }
}

impl SharedCreateWindow for FleetLimits {
    fn reserve_create(
        &self,
        limit: usize,
        window: Duration,
        longest: Duration,
    ) -> Pin<Box<dyn Future<Output = CreateSlot> + Send + '_>> {
        Box::pin(FleetLimits::reserve_create(self, limit, window, longest))
    }
}

impl SharedReadBudget for FleetLimits {
    fn local_limit(&self, limit: usize) -> usize {
        FleetLimits::local_limit(self, limit)
    }

    fn read_slot(self: Arc<Self>, limit: usize) -> SharedSlot {
        Box::pin(async move {
            let slot = FleetLimits::read_slot(&self, limit).await?;
            Some(Box::new(slot) as Box<dyn Send + Sync>)
        })
    }
}

/// A fleet read slot; dropping it (the answer is in) starts its last second.
pub struct ReadSlot {
    limits: Arc<FleetLimits>,
    member: String,
}

impl Drop for ReadSlot {
    fn drop(&mut self) {
        let limits = self.limits.clone();
        let member = std::mem::take(&mut self.member);
        // Releasing late only holds the slot longer: safe. Outside a
        // runtime (never, in the gateway) the lease frees it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { limits.release_read(member).await });
        }
    }
}
