//! The shared read budget: every poller asks it before each recordInfo read,
//! so that all polling together stays under kie.ai's per-key limit. When more
//! reads are wanted than the budget allows, the waiting pollers are served
//! by priority (callback wake-ups first, then the youngest tasks, whose state
//! changes fastest) and their intervals stretch instead of drawing 429s.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The budget counts reads in any window this long, with a margin over one
/// second so that network jitter cannot push 11 reads into kie.ai's second.
const WINDOW: Duration = Duration::from_millis(1050);

/// Who gets the next read first: smaller is sooner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// A callback said the task changed.
    Woken,
    /// A routine poll of a task this old.
    Age(Duration),
}

#[derive(Clone)]
pub struct ReadBudget {
    inner: Arc<Inner>,
}

struct Inner {
    per_window: usize,
    state: Mutex<State>,
    changed: Notify,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    /// When each read of the current window was granted, oldest first.
    granted: VecDeque<Instant>,
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
            .granted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.granted.pop_front();
        }
        self.granted.len() < per_window
    }
}

impl ReadBudget {
    /// A budget of `per_second` reads; its scheduler runs until `shutdown`.
    pub fn new(per_second: u32, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            per_window: per_second.max(1) as usize,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            metrics,
        });
        tokio::spawn(schedule(inner.clone(), shutdown));
        Self { inner }
    }

    /// Waits for permission to make one read. Dropping the future gives the
    /// place up without spending a read.
    pub async fn acquire(&self, priority: Priority) {
        let started = Instant::now();
        let granted = {
            let mut state = self.inner.state();
            if state.waiting.is_empty() && state.has_room(started, self.inner.per_window) {
                state.granted.push_back(started);
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
        if let Some(granted) = granted {
            self.inner.metrics.read_budget_waiting.inc();
            let _waiting = scopeguard(|| {
                self.inner.metrics.read_budget_waiting.dec();
            });
            self.inner.changed.notify_one();
            // The scheduler only drops a sender at shutdown; then read anyway
            // and let the shutdown path end the poller.
            let _ = granted.await;
        }
        self.inner.metrics.read_budget_grants.inc();
        self.inner.metrics.budget_waited(started.elapsed());
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Grants waiting reads as room opens in the window, best priority first.
async fn schedule(inner: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        let next_room = {
            let mut state = inner.state();
            loop {
                if state.waiting.is_empty() {
                    break None;
                }
                let now = Instant::now();
                if !state.has_room(now, inner.per_window) {
                    break state.granted.front().map(|t| *t + WINDOW);
                }
                if let Some(waiter) = state.waiting.pop()
                    && waiter.grant.send(()).is_ok()
                {
                    state.granted.push_back(now);
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

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_reads_than_the_budget() {
        let budget = ReadBudget::new(5, Arc::new(Metrics::new()), CancellationToken::new());
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let budget = budget.clone();
            let times = times.clone();
            tasks.push(tokio::spawn(async move {
                budget.acquire(Priority::Age(Duration::from_secs(i))).await;
                times.lock().expect("lock").push(Instant::now());
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        let times = times.lock().expect("lock").clone();
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
        budget.acquire(Priority::Age(Duration::ZERO)).await; // fills the window
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
                budget.acquire(priority).await;
                order.lock().expect("lock").push(name);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(*order.lock().expect("lock"), ["woken", "young", "old"]);
    }
}
