//! Upstream protection: a cap on requests in flight, a sliding-window limit
//! on createTask (kie.ai drops, not queues, what exceeds 20 per 10 s), and a
//! bounded queue. Callers wait within their deadline; when waiting cannot
//! end in time, or the queue is full, they are shed at once, so memory stays
//! bounded and the gateway's key never draws kie.ai's 429s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::UpstreamLimits;
use crate::metrics::Metrics;
use std::future::Future;
use std::pin::Pin;

use super::error::Endpoint;

/// The createTask window is counted with this margin so that network jitter
/// cannot push one call too many into kie.ai's window.
const WINDOW_MARGIN: f64 = 1.05;
/// How long a caller without a deadline may wait for a createTask slot.
const MAX_CREATE_WAIT: Duration = Duration::from_secs(30);
/// What a shed caller is told to wait when no better figure is known.
const SHED_RETRY: Duration = Duration::from_secs(1);

/// Why a call was not let through, and when to try again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shed {
    pub(crate) reason: &'static str,
    pub(crate) retry_after: Duration,
}

/// What a create window kept beyond this process said.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateSlot {
    /// Reserved: send after this wait.
    After(Duration),
    /// The earliest slot is further off than the caller may wait; nothing
    /// reserved.
    TooLate(Duration),
    /// The shared window is away: keep to this share of the limit locally.
    Share(usize),
}

/// A createTask window shared by several replicas (the fleet's, in Redis:
/// `fleet::limits`). The gate asks it first and keeps its own window for
/// the in-flight cap, the queue and the share.
pub trait SharedCreateWindow: Send + Sync + 'static {
    /// Reserves a start in a window of `limit` per `window`, unless it is
    /// more than `longest` away.
    fn reserve_create(
        &self,
        limit: usize,
        window: Duration,
        longest: Duration,
    ) -> Pin<Box<dyn Future<Output = CreateSlot> + Send + '_>>;
}

pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
    creates: Option<Mutex<Window>>,
    /// Set when Redis is configured: its window replaces the local one
    /// while Redis is up (the in-flight cap and the queue stay local).
    fleet: OnceLock<Arc<dyn SharedCreateWindow>>,
    /// In flight and queued, as gauges; sheds, by reason.
    metrics: Arc<Metrics>,
}

/// The right to send one request, held until its answer is read; counted
/// in `upstream_in_flight` while held.
pub(crate) struct Permit {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.upstream_in_flight.dec();
    }
}

/// Start times of the createTask calls in the current window, including
/// ones reserved in the near future; oldest first.
struct Window {
    limit: usize,
    length: Duration,
    starts: VecDeque<Instant>,
}

impl Window {
    /// Reserves the earliest start at or after `now` that keeps at most
    /// `limit` starts in any window, unless that is later than `latest`.
    /// `limit` is this replica's share while the fleet's Redis is away.
    fn reserve(
        &mut self,
        now: Instant,
        latest: Duration,
        limit: Option<usize>,
    ) -> Result<Instant, Duration> {
        let limit = limit.unwrap_or(self.limit).max(1);
        while self
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.length)
        {
            self.starts.pop_front();
        }
        let start = if self.starts.len() < limit {
            now
        } else {
            let bound = self.starts[self.starts.len() - limit] + self.length;
            bound.max(now)
        };
        let wait = start - now;
        if wait > latest {
            return Err(wait);
        }
        self.starts.push_back(start);
        Ok(start)
    }
}

impl Window {
    /// A start reserved elsewhere (the fleet's window), kept in order.
    fn record(&mut self, start: Instant) {
        let at = self.starts.partition_point(|t| *t <= start);
        self.starts.insert(at, start);
        // Bounded like the window itself: only the last `limit` starts
        // can decide a reservation.
        while self.starts.len() > self.limit {
            self.starts.pop_front();
        }
    }
}

/// Keeps the queue count (and its gauge) right however the wait ends.
struct Queued<'a>(&'a AtomicUsize, &'a Metrics);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.upstream_queued.dec();
    }
}

impl Gate {
    pub(crate) fn new(limits: UpstreamLimits, metrics: Arc<Metrics>) -> Self {
        let creates = (limits.create_limit > 0).then(|| {
            Mutex::new(Window {
                limit: limits.create_limit,
                length: limits.create_window.mul_f64(WINDOW_MARGIN),
                starts: VecDeque::new(),
            })
        });
        let max_in_flight = limits.max_in_flight.max(1);
        metrics
            .upstream_in_flight_limit
            .set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
        metrics
            .upstream_queued_limit
            .set(i64::try_from(limits.max_queued).unwrap_or(i64::MAX));
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            queued: AtomicUsize::new(0),
            max_queued: limits.max_queued,
            creates,
            fleet: OnceLock::new(),
            metrics,
        }
    }

    /// Keeps the createTask window fleet-wide from now on.
    pub fn join_fleet(&self, fleet: Arc<dyn SharedCreateWindow>) {
        let _ = self.fleet.set(fleet);
    }

    /// The start reserved for one createTask, fleet-wide when Redis is up.
    async fn reserve_create(
        &self,
        window: &Mutex<Window>,
        arrived: Instant,
        latest: Duration,
    ) -> Result<Instant, Shed> {
        let shed = |wait| Shed {
            reason: "create_rate",
            retry_after: wait,
        };
        let lock = || window.lock();
        let mut share = None;
        if let Some(fleet) = self.fleet.get() {
            let (limit, length) = {
                let window = lock();
                (window.limit, window.length)
            };
            match fleet.reserve_create(limit, length, latest).await {
                CreateSlot::After(wait) => {
                    // Kept locally too: should Redis go away, this
                    // replica's share counts its own recent creates.
                    let start = Instant::now() + wait;
                    lock().record(start);
                    return Ok(start);
                }
                CreateSlot::TooLate(wait) => return Err(shed(wait)),
                CreateSlot::Share(limit) => share = Some(limit),
            }
        }
        let latest = latest.saturating_sub(arrived.elapsed());
        lock().reserve(Instant::now(), latest, share).map_err(shed)
    }

    /// Waits for the right to send one request to `endpoint`; the permit is
    /// held until the answer is read. A shed call is counted by reason.
    pub(crate) async fn admit(
        &self,
        endpoint: Endpoint,
        deadline: Option<Duration>,
    ) -> Result<Permit, Shed> {
        match self.wait_for_slot(endpoint, deadline).await {
            Ok(slot) => {
                self.metrics.upstream_in_flight.inc();
                Ok(Permit {
                    _slot: slot,
                    metrics: self.metrics.clone(),
                })
            }
            Err(shed) => {
                self.metrics.shed(endpoint.as_str(), shed.reason);
                Err(shed)
            }
        }
    }

    async fn wait_for_slot(
        &self,
        endpoint: Endpoint,
        deadline: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, Shed> {
        let arrived = Instant::now();
        let start = match (&self.creates, endpoint) {
            (Some(window), Endpoint::CreateTask) => {
                let latest = deadline.unwrap_or(MAX_CREATE_WAIT);
                Some(self.reserve_create(window, arrived, latest).await?)
            }
            _ => None,
        };
        if start.is_none_or(|s| s <= Instant::now())
            && let Ok(permit) = self.slots.clone().try_acquire_owned()
        {
            return Ok(permit);
        }

        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Shed {
                reason: "queue_full",
                retry_after: SHED_RETRY,
            });
        }
        self.metrics.upstream_queued.inc();
        let _queued = Queued(&self.queued, &self.metrics);
        if let Some(start) = start {
            tokio::time::sleep_until(start).await;
        }
        let acquire = self.slots.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => {
                let left = d.saturating_sub(arrived.elapsed());
                tokio::time::timeout(left, acquire)
                    .await
                    .map_err(|_| Shed {
                        reason: "no_slot_in_time",
                        retry_after: SHED_RETRY,
                    })?
            }
            None => acquire.await,
        };
        // The semaphore is never closed.
        permit.map_err(|_| Shed {
            reason: "closed",
            retry_after: SHED_RETRY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_in_flight: usize, max_queued: usize, create_limit: usize) -> UpstreamLimits {
        UpstreamLimits {
            max_in_flight,
            max_queued,
            create_limit,
            create_window: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn creates_beyond_the_window_wait_or_are_shed_past_their_deadline() {
        let gate = Gate::new(limits(100, 100, 2), Arc::new(Metrics::new()));
        let t0 = Instant::now();
        drop(gate.admit(Endpoint::CreateTask, None).await.expect("1st"));
        drop(gate.admit(Endpoint::CreateTask, None).await.expect("2nd"));
        assert_eq!(t0.elapsed(), Duration::ZERO);

        let shed = gate
            .admit(Endpoint::CreateTask, Some(Duration::from_secs(1)))
            .await
            .expect_err("cannot start within 1 s");
        assert_eq!(shed.reason, "create_rate");
        assert_eq!(shed.retry_after, Duration::from_millis(10_500));

        drop(
            gate.admit(Endpoint::CreateTask, None)
                .await
                .expect("3rd waits"),
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(10_500));
        // Reads are not rate limited.
        drop(
            gate.admit(Endpoint::RecordInfo, Some(Duration::ZERO))
                .await
                .expect("read"),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_counts_the_creates_reserved_in_the_fleets_window() {
        let mut window = Window {
            limit: 20,
            length: Duration::from_secs(10),
            starts: VecDeque::new(),
        };
        let t0 = Instant::now();
        for _ in 0..5 {
            window.record(t0);
        }
        // Redis away: a share of 6 leaves room for one more now.
        assert_eq!(window.reserve(t0, Duration::ZERO, Some(6)), Ok(t0));
        assert_eq!(
            window.reserve(t0, Duration::ZERO, Some(6)),
            Err(Duration::from_secs(10))
        );
    }

    #[tokio::test]
    async fn a_full_queue_sheds_at_once() {
        let metrics = Arc::new(Metrics::new());
        let gate = Arc::new(Gate::new(limits(1, 1, 0), metrics.clone()));
        let held = gate.admit(Endpoint::RecordInfo, None).await.expect("slot");
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(Endpoint::RecordInfo, None).await.map(drop) })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;

        let shed = gate
            .admit(Endpoint::RecordInfo, None)
            .await
            .expect_err("queue full");
        assert_eq!(shed.reason, "queue_full");
        assert_eq!(metrics.upstream_in_flight.get(), 1);
        assert_eq!(metrics.upstream_queued.get(), 1);
        assert!(metrics.encode(false).contains(
            "hailuo_gateway_shed_total{endpoint=\"recordInfo\",reason=\"queue_full\"} 1"
        ));

        drop(held);
        waiting
            .await
            .expect("join")
            .expect("the queued caller gets the slot");
        assert_eq!(metrics.upstream_in_flight.get(), 0);
        assert_eq!(metrics.upstream_queued.get(), 0);
    }
}
