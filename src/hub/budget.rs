//! The shared read budget: every poller asks it before each recordInfo read,
//! so that all polling together stays under kie.ai's per-key limit. When more
//! reads are wanted than the budget allows, the waiting pollers are served
//! by priority (callback wake-ups first, then the youngest tasks, whose state
//! changes fastest) and their intervals stretch instead of drawing 429s.
//!
//! A read occupies the budget from its grant until one window after its
//! answer. Whenever kie.ai sees a read arrive, it lies between those two
//! moments, so no window of kie.ai's can hold more reads than the budget,
//! however late a starved process sends them.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// kie.ai's window: the limit is per second.
const WINDOW: Duration = Duration::from_secs(1);

/// Who gets the next read first: smaller is sooner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Priority {
    /// A callback said the task changed.
    Woken,
    /// A routine poll of a task this old.
    Age(Duration),
}

#[derive(Clone)]
pub(crate) struct ReadBudget {
    inner: Arc<Inner>,
}

/// A read budget shared by several replicas (the fleet's, in Redis:
/// `fleet::limits`): each granted read also takes one of its slots.
pub trait SharedReadBudget: Send + Sync + 'static {
    /// The reads this replica may make per window on its own: all of
    /// `limit` while the shared budget holds, its share while it is away.
    fn local_limit(&self, limit: usize) -> usize;

    /// Waits for one of the shared `limit` slots, held until the returned
    /// value drops (the answer is in); `None` when the shared budget is
    /// away (the local share applies instead).
    fn read_slot(self: Arc<Self>, limit: usize) -> SharedSlot;
}

/// A pending shared read slot: see [`SharedReadBudget::read_slot`].
pub type SharedSlot = Pin<Box<dyn Future<Output = Option<Box<dyn Send + Sync>>> + Send>>;

struct Inner {
    per_window: usize,
    state: Mutex<State>,
    changed: Notify,
    metrics: Arc<Metrics>,
    /// Set when Redis is configured: each read also takes a fleet-wide
    /// slot, and while Redis is away this replica keeps to its share.
    fleet: OnceLock<Arc<dyn SharedReadBudget>>,
}

#[derive(Default)]
struct State {
    /// Reads granted and not yet answered.
    in_flight: usize,
    /// When each read of the last window was answered, oldest first.
    answered: VecDeque<Instant>,
    waiting: BinaryHeap<Waiter>,
    seq: u64,
}

struct Waiter {
    priority: Priority,
    seq: u64,
    grant: oneshot::Sender<()>,
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: reverse so the smallest priority
        // (then the earliest arrival) comes out first.
        (other.priority, other.seq).cmp(&(self.priority, self.seq))
    }
}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiter {}

impl State {
    fn has_room(&mut self, now: Instant, per_window: usize) -> bool {
        while self
            .answered
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.answered.pop_front();
        }
        self.in_flight + self.answered.len() < per_window
    }
}

impl ReadBudget {
    /// A budget of `per_second` reads; its scheduler runs until `shutdown`.
    pub(crate) fn new(per_second: u32, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            per_window: per_second.max(1) as usize,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            metrics,
            fleet: OnceLock::new(),
        });
        tokio::spawn(schedule(inner.clone(), shutdown));
        Self { inner }
    }

    /// Waits for permission to make one read; hold the permit until the
    /// answer is in. Dropping the future gives the place up without
    /// spending a read.
    pub(crate) async fn acquire(&self, priority: Priority) -> ReadPermit {
        let started = Instant::now();
        let grant = {
            let mut state = self.inner.state.lock();
            if state.waiting.is_empty() && state.has_room(started, self.inner.limit()) {
                state.in_flight += 1;
                None
            } else {
                let (grant, granted) = oneshot::channel();
                state.seq += 1;
                let seq = state.seq;
                state.waiting.push(Waiter {
                    priority,
                    seq,
                    grant,
                });
                Some(granted)
            }
        };
        if let Some(granted) = grant {
            self.inner.metrics.read_budget_waiting.inc();
            let mut pending = Pending {
                granted,
                inner: self.inner.clone(),
                done: false,
            };
            self.inner.changed.notify_one();
            if (&mut pending.granted).await.is_err() {
                // The scheduler is gone (shutdown): read anyway, counted,
                // and let the shutdown path end the poller.
                self.inner.state.lock().in_flight += 1;
            }
            pending.done = true;
        }
        let mut permit = ReadPermit {
            inner: self.inner.clone(),
            _fleet: None,
        };
        if let Some(fleet) = self.inner.fleet.get() {
            permit._fleet = fleet.clone().read_slot(self.inner.per_window).await;
        }
        self.inner.metrics.read_budget_grants.inc();
        self.inner.metrics.budget_waited(started.elapsed());
        permit
    }

    /// Keeps the budget fleet-wide from now on.
    pub fn join_fleet(&self, fleet: Arc<dyn SharedReadBudget>) {
        let _ = self.inner.fleet.set(fleet);
    }
}

/// One granted read; dropping it says the answer is in.
pub(crate) struct ReadPermit {
    inner: Arc<Inner>,
    /// Released (its last second starts) when the permit drops.
    _fleet: Option<Box<dyn Send + Sync>>,
}

impl Drop for ReadPermit {
    fn drop(&mut self) {
        self.inner.release(true);
    }
}

/// A poller waiting for its turn. If it leaves just as its grant arrives,
/// the grant is handed back unspent.
struct Pending {
    granted: oneshot::Receiver<()>,
    inner: Arc<Inner>,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.inner.metrics.read_budget_waiting.dec();
        if self.done {
            return;
        }
        // No grant can arrive after close(): what try_recv finds is all.
        self.granted.close();
        if self.granted.try_recv().is_ok() {
            self.inner.release(false);
        }
    }
}

impl Inner {
    /// The reads this replica may make per window on its own: all of them,
    /// or its share while the fleet's Redis is away.
    fn limit(&self) -> usize {
        self.fleet
            .get()
            .map_or(self.per_window, |f| f.local_limit(self.per_window))
    }

    /// A granted read is over; `answered` when it was actually made.
    fn release(&self, answered: bool) {
        {
            let mut state = self.state.lock();
            state.in_flight -= 1;
            if answered {
                state.answered.push_back(Instant::now());
            }
        }
        self.changed.notify_one();
    }
}

/// Grants waiting reads as room opens in the window, best priority first.
async fn schedule(inner: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        let next_room = {
            let mut state = inner.state.lock();
            loop {
                if state.waiting.is_empty() {
                    break None;
                }
                let now = Instant::now();
                if !state.has_room(now, inner.limit()) {
                    // Room opens when the oldest answer leaves the window; a
                    // read in flight wakes the scheduler when it is answered.
                    break Some(state.answered.front().map_or(now + WINDOW, |t| *t + WINDOW));
                }
                if let Some(waiter) = state.waiting.pop()
                    && waiter.grant.send(()).is_ok()
                {
                    state.in_flight += 1;
                }
            }
        };
        let room = async {
            match next_room {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inner.changed.notified() => {}
            () = room => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_window_of_arrivals_ever_holds_more_reads_than_the_budget() {
        let budget = ReadBudget::new(5, Arc::new(Metrics::new()), CancellationToken::new());
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let budget = budget.clone();
            let times = times.clone();
            tasks.push(tokio::spawn(async move {
                let permit = budget.acquire(Priority::Age(Duration::from_secs(i))).await;
                // The read reaches kie.ai late, and its answer comes back
                // later still, by varying amounts (a starved process).
                let late = Duration::from_millis(rand::random::<u64>() % 400);
                tokio::time::sleep(late).await;
                times.lock().push(Instant::now());
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 400)).await;
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        let mut times = times.lock().clone();
        times.sort();
        assert_eq!(times.len(), 40);
        for (i, start) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count();
            assert!(in_window <= 5, "{in_window} reads within a second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wake_ups_and_young_tasks_go_first() {
        let budget = ReadBudget::new(1, Arc::new(Metrics::new()), CancellationToken::new());
        drop(budget.acquire(Priority::Age(Duration::ZERO)).await); // fills the window
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [
            ("old", Priority::Age(Duration::from_secs(300))),
            ("young", Priority::Age(Duration::from_secs(5))),
            ("woken", Priority::Woken),
        ] {
            let budget = budget.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _read = budget.acquire(priority).await;
                order.lock().push(name);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(*order.lock(), ["woken", "young", "old"]);
    }
}
