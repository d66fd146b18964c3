//! The task hub: one upstream poller per watched task, however many callers
//! watch it. Each task has a `watch` channel; the poller writes, watchers
//! only read, and the poller stops when the last watcher leaves. Finished
//! tasks are kept in a bounded cache; a kie.ai callback wakes a task's
//! poller to re-read it at once.

mod budget;
mod cadence;
pub mod fleet_tasks;
mod shared;
mod wakeups;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::callers::quota::QuotaBook;
use crate::config::WatchSettings;
use crate::error::GatewayError;
use crate::expiring_map::{ExpiringMap, Retention};
use crate::kie::{Credential, KieClient, UpstreamError, UpstreamErrorKind};
use crate::metrics::Metrics;
use crate::pb;
use crate::task::{TaskId, is_terminal};
use budget::{Priority, ReadBudget};
pub use budget::{SharedReadBudget, SharedSlot};
use fleet_tasks::{FOLLOW_MAX, FleetTasks};
use shared::{Shared, Step};
use wakeups::{Event, Wake};

/// A finished task never changes again: any may make room, and each
/// expires.
impl Retention for Arc<pb::Task> {}

/// How many tasks created with the gateway's callback URL are remembered,
/// and for how long (kie.ai keeps tasks 14 days, but a watch that old is
/// polled at the slow cadence anyway).
const CALLBACK_TASKS: usize = 100_000;
const CALLBACK_TASKS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Retries of a caller's direct read (GetTask with no poller running).
const READ_RETRIES: u32 = 2;

/// What watchers of a task see.
#[derive(Clone, Debug)]
pub(crate) enum Observation {
    /// The first read has not come back yet.
    Pending,
    /// The task as last read.
    Task(Snapshot),
    /// Watching ended with an error (unknown task, refused key, retry
    /// budget spent).
    Failed(GatewayError),
}

/// A task as published to its watchers, with room for its encoding: made
/// once per state change by the first watcher that sends it, and shared by
/// every other (a fan-out costs one encoding, not one per watcher).
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) task: Arc<pb::Task>,
    encoded: Arc<OnceLock<Bytes>>,
}

impl Snapshot {
    pub(crate) fn new(task: Arc<pb::Task>) -> Self {
        Self {
            task,
            encoded: Arc::default(),
        }
    }

    /// The task's encoding for watchers: `encode`'s, run by the first
    /// caller only.
    pub(crate) fn encoded(&self, encode: impl FnOnce(&pb::Task) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.task)).clone()
    }
}

/// Pollers and cached tasks are per task *and* key: with key pass-through,
/// one team's key never reads a task for another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TaskKey {
    task_id: TaskId,
    credential: Credential,
}

struct Poller {
    credential: Credential,
    channel: Arc<watch::Sender<Observation>>,
    wake: Arc<Notify>,
}

/// Every running poller, by task.
type Pollers = Mutex<HashMap<TaskId, Vec<Poller>>>;

/// Set once when Redis is configured: the shared task state and leases.
type Fleet = Arc<OnceLock<Arc<FleetTasks>>>;

/// Wakes a task's pollers: all that a kie.ai callback may do to the hub.
/// One made with `default()` belongs to no hub and wakes nothing (for
/// driving the HTTP router on its own).
#[derive(Clone, Default)]
pub struct TaskWaker {
    pollers: Arc<Pollers>,
    fleet: Fleet,
}

impl TaskWaker {
    /// A callback named this task: its pollers re-read it now, and so do
    /// the other replicas' (kie.ai calls back only the replica its load
    /// balancer picks). Returns how many local pollers were woken (0 for a
    /// task nobody here watches).
    pub(crate) fn wake(&self, task_id: &TaskId) -> usize {
        if let Some(tasks) = self.fleet.get() {
            let (tasks, task_id) = (tasks.clone(), task_id.as_str().to_owned());
            tokio::spawn(async move { wakeups::announce(&tasks, Wake::Callback, &task_id).await });
        }
        self.wake_local(task_id)
    }

    /// Wakes this replica's pollers of the task only.
    fn wake_local(&self, task_id: &TaskId) -> usize {
        let pollers = self.pollers.lock();
        let Some(entries) = pollers.get(task_id) else {
            return 0;
        };
        for poller in entries {
            poller.wake.notify_one();
        }
        entries.len()
    }

    /// Wakes every poller here: wake-ups may have been missed.
    fn wake_all(&self) {
        for poller in self.pollers.lock().values().flatten() {
            poller.wake.notify_one();
        }
    }
}

#[derive(Clone)]
pub struct TaskHub {
    inner: Arc<Inner>,
}

struct Inner {
    kie: KieClient,
    settings: WatchSettings,
    budget: ReadBudget,
    metrics: Arc<Metrics>,
    /// Shared with the `TaskWaker`s handed out.
    pollers: Arc<Pollers>,
    fleet: Fleet,
    finished: Mutex<ExpiringMap<TaskKey, Arc<pb::Task>>>,
    /// Tasks kie.ai will call back about: polled only as a safety net.
    called_back: Mutex<ExpiringMap<TaskId, ()>>,
    /// Settles callers' quota holds when a read finds a task ended.
    quotas: OnceLock<Arc<QuotaBook>>,
    shutdown: CancellationToken,
}

impl TaskHub {
    pub(crate) fn new(
        kie: KieClient,
        settings: WatchSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let budget = ReadBudget::new(settings.read_budget, metrics.clone(), shutdown.clone());
        Self {
            inner: Arc::new(Inner {
                kie,
                settings,
                budget,
                metrics,
                pollers: Arc::default(),
                fleet: Arc::default(),
                finished: Mutex::new(ExpiringMap::new(settings.cache_size, settings.cache_ttl)),
                called_back: Mutex::new(ExpiringMap::new(CALLBACK_TASKS, CALLBACK_TASKS_TTL)),
                quotas: OnceLock::new(),
                shutdown,
            }),
        }
    }

    /// Joins the task's poller, starting one if none runs; a finished task
    /// comes from the cache with no poller at all. Dropping the receiver is
    /// how a watcher leaves.
    pub(crate) fn subscribe(
        &self,
        credential: Credential,
        task_id: TaskId,
    ) -> watch::Receiver<Observation> {
        let key = TaskKey {
            task_id,
            credential,
        };
        if let Some(task) = self.inner.cached(&key) {
            self.inner.metrics.cache_hits.inc();
            // A closed channel holding the final value: the watcher sends it
            // and ends.
            let (_, rx) = watch::channel(Observation::Task(Snapshot::new(task)));
            return rx;
        }
        let mut pollers = self.inner.pollers.lock();
        let entries = pollers.entry(key.task_id.clone()).or_default();
        if let Some(poller) = entries.iter().find(|p| p.credential == key.credential) {
            return poller.channel.subscribe();
        }
        let (tx, rx) = watch::channel(Observation::Pending);
        let channel = Arc::new(tx);
        let wake = Arc::new(Notify::new());
        entries.push(Poller {
            credential: key.credential.clone(),
            channel: channel.clone(),
            wake: wake.clone(),
        });
        drop(pollers);
        self.inner.metrics.active_pollers.inc();
        // Its reads are traced beneath the call that started it.
        let poller =
            poll(self.inner.clone(), key, channel, wake).instrument(crate::otel::current());
        tokio::spawn(poller);
        rx
    }

    /// The task now: from the cache, from a live poller, or read upstream.
    pub(crate) async fn get(
        &self,
        credential: Credential,
        task_id: TaskId,
        deadline: Option<Duration>,
    ) -> Result<Arc<pb::Task>, GatewayError> {
        let key = TaskKey {
            task_id,
            credential,
        };
        if let Some(task) = self.inner.cached(&key) {
            self.inner.metrics.cache_hits.inc();
            return Ok(task);
        }
        if let Some(task) = self.inner.live_value(&key) {
            return Ok(task);
        }
        let fleet = self.inner.fleet.get();
        if let Some(tasks) = fleet
            && let Some(task) =
                shared::finished(tasks, key.task_id.as_str(), key.credential.key.expose()).await
        {
            self.inner.metrics.cache_hits.inc();
            self.inner.finished.lock().insert(key, task.clone());
            return Ok(task);
        }
        let mut task = Arc::new(self.inner.read_with_retries(&key, deadline).await?);
        if let Some(tasks) = fleet {
            task = shared::share(
                tasks,
                key.task_id.as_str(),
                key.credential.key.expose(),
                task,
            )
            .await;
        }
        if is_terminal(task.state()) {
            self.inner.finished.lock().insert(key, task.clone());
        }
        Ok(task)
    }

    /// kie.ai will call back when this task ends: poll it only as a safety
    /// net.
    pub(crate) fn expect_callback(&self, task_id: TaskId) {
        self.inner.called_back.lock().insert(task_id, ());
    }

    /// The handle kie.ai's callbacks wake this hub's pollers with.
    pub(crate) fn waker(&self) -> TaskWaker {
        TaskWaker {
            pollers: self.inner.pollers.clone(),
            fleet: self.inner.fleet.clone(),
        }
    }

    /// One poller per task for the whole fleet (Redis configured): pollers
    /// lead or follow through `tasks`, and other replicas' wake-ups reach
    /// this replica's pollers.
    pub fn join_fleet_tasks(&self, tasks: Arc<FleetTasks>) {
        if self.inner.fleet.set(tasks.clone()).is_err() {
            return;
        }
        let waker = self.waker();
        let on_event = move |event: Event<'_>| match event {
            Event::Wake(task_id) => {
                if let Ok(task_id) = TaskId::parse(task_id.to_owned()) {
                    waker.wake_local(&task_id);
                }
            }
            Event::Resubscribed => waker.wake_all(),
        };
        wakeups::subscribe(tasks, on_event, self.inner.shutdown.clone());
    }

    /// Once the gateway stops: waits until the task leases this replica
    /// held are handed back, so that another replica polls on at its next
    /// look rather than when the leases lapse.
    pub async fn hand_back_leases(&self) {
        if let Some(tasks) = self.inner.fleet.get() {
            tasks.handed_back().await;
        }
    }

    /// Each read of kie.ai that finds a task ended settles the quota hold
    /// bound to it, if any (`QuotaBook::settle`, once per task).
    pub(crate) fn settle_quotas_with(&self, quotas: Arc<QuotaBook>) {
        let _ = self.inner.quotas.set(quotas);
    }

    /// Keeps the read budget fleet-wide (Redis configured).
    pub fn join_fleet(&self, fleet: Arc<dyn SharedReadBudget>) {
        self.inner.budget.join_fleet(fleet);
    }

    /// Number of tasks being polled now.
    pub fn active_pollers(&self) -> usize {
        self.inner.pollers.lock().values().map(Vec::len).sum()
    }
}

impl Inner {
    /// One recordInfo read. Every read of kie.ai goes through here, so a
    /// task's end is seen here first, with what kie.ai charged for it.
    async fn record_info(
        &self,
        key: &TaskKey,
        deadline: Option<Duration>,
        attempt: u32,
    ) -> Result<pb::Task, UpstreamError> {
        let record = self
            .kie
            .record(&key.credential, &key.task_id, deadline, attempt)
            .await?;
        let consumed = record.credits_consumed;
        let task = record.into_task(key.task_id.as_str());
        if let Some(quotas) = self.quotas.get()
            && is_terminal(task.state())
        {
            // Off the read's path: a slow Redis must not hold a watcher.
            let (quotas, task_id) = (quotas.clone(), key.task_id.clone());
            let failed = task.state() == pb::TaskState::Failed;
            tokio::spawn(async move {
                quotas.settle(task_id.as_str(), failed, consumed).await;
            });
        }
        Ok(task)
    }

    /// One read for a caller: transient failures are retried with back-off
    /// (honouring Retry-After) while the caller's deadline allows; timeouts
    /// are not, as a second wait would outlast the first.
    async fn read_with_retries(
        &self,
        key: &TaskKey,
        deadline: Option<Duration>,
    ) -> Result<pb::Task, GatewayError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
            let error = match self.record_info(key, left, attempt + 1).await {
                Ok(task) => return Ok(task),
                Err(e) => e,
            };
            let retryable = error.is_transient()
                && !matches!(error.kind, UpstreamErrorKind::Timeout)
                && attempt < READ_RETRIES;
            attempt += 1;
            let delay = self
                .settings
                .backoff
                .delay(attempt)
                .max(error.retry_after.unwrap_or_default());
            let in_time = left.is_none_or(|left| delay < left);
            if !retryable || !in_time {
                return Err(error.into());
            }
            tracing::debug!(task_id = %key.task_id, attempt, error = %error, "read failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The task from the cache of finished tasks.
    fn cached(&self, key: &TaskKey) -> Option<Arc<pb::Task>> {
        self.finished.lock().live(key).cloned()
    }

    fn live_value(&self, key: &TaskKey) -> Option<Arc<pb::Task>> {
        let pollers = self.pollers.lock();
        let poller = pollers
            .get(&key.task_id)?
            .iter()
            .find(|p| p.credential == key.credential)?;
        match &*poller.channel.borrow() {
            Observation::Task(snapshot) => Some(snapshot.task.clone()),
            _ => None,
        }
    }

    /// Removes the poller, unless a watcher joined since it was last seen
    /// empty (`force` when the task is over). True when the poller must
    /// stop.
    fn retire(
        &self,
        key: &TaskKey,
        channel: &Arc<watch::Sender<Observation>>,
        force: bool,
    ) -> bool {
        let mut pollers = self.pollers.lock();
        let Some(entries) = pollers.get_mut(&key.task_id) else {
            return true;
        };
        let Some(at) = entries
            .iter()
            .position(|p| Arc::ptr_eq(&p.channel, channel))
        else {
            return true;
        };
        if !force && channel.receiver_count() > 0 {
            return false;
        }
        entries.swap_remove(at);
        if entries.is_empty() {
            pollers.remove(&key.task_id);
        }
        true
    }
}

/// Reads the task until it ends, every watcher leaves, or the gateway shuts
/// down.
async fn poll(
    inner: Arc<Inner>,
    key: TaskKey,
    channel: Arc<watch::Sender<Observation>>,
    wake: Arc<Notify>,
) {
    let started = Instant::now();
    let settings = inner.settings;
    let mut failures: u32 = 0;
    let mut age = Duration::ZERO;
    let mut woken = false;
    let mut shared = inner.fleet.get().map(|tasks| {
        Shared::new(
            tasks.clone(),
            key.task_id.as_str(),
            key.credential.key.expose(),
        )
    });
    loop {
        if let Some(shared) = shared.as_mut() {
            match shared.step().await {
                Step::Read => {}
                Step::Finished(task) => {
                    inner.finished.lock().insert(key.clone(), task.clone());
                    publish(&channel, task);
                    break;
                }
                Step::Follow(seen) => {
                    if let Some(task) = seen {
                        age = task_age(&task).unwrap_or_else(|| started.elapsed());
                        publish(&channel, task);
                    }
                    // Another replica reads kie.ai: look again at the task's
                    // cadence (sooner when woken), and at least every
                    // FOLLOW_MAX, to take over if the holder died.
                    let wait = settings.cadence.interval_at(age).min(FOLLOW_MAX);
                    match pause(&inner, &key, &channel, &wake, wait).await {
                        Some(was_woken) => woken = was_woken,
                        None => break,
                    }
                    continue;
                }
            }
        }
        let priority = if woken {
            Priority::Woken
        } else {
            Priority::Age(age)
        };
        let permit = tokio::select! {
            permit = inner.budget.acquire(priority) => permit,
            () = channel.closed() => {
                if inner.retire(&key, &channel, false) {
                    break;
                }
                continue;
            }
            () = inner.shutdown.cancelled() => break,
        };
        let read = inner.record_info(&key, None, failures + 1).await;
        // The budget counts the read until its answer is in.
        drop(permit);
        let wait = match read {
            Ok(task) => {
                failures = 0;
                age = task_age(&task).unwrap_or_else(|| started.elapsed());
                let mut task = Arc::new(task);
                if let Some(shared) = &shared {
                    task = shared.record(task).await;
                }
                if is_terminal(task.state()) {
                    inner.finished.lock().insert(key.clone(), task.clone());
                    publish(&channel, task);
                    break;
                }
                // kie.ai calls back only when a task ends: once it is
                // generating, the next change is the end and the callback
                // announces it, so polling is only a safety net. Before that,
                // polling is what shows the progress.
                let next_is_the_end = task.state() == pb::TaskState::Generating;
                publish(&channel, task);
                if next_is_the_end && inner.called_back.lock().live(&key.task_id).is_some() {
                    settings.callback_safety_poll
                } else {
                    settings.cadence.interval_at(age)
                }
            }
            Err(e) if e.is_transient() && failures + 1 < settings.retry_budget => {
                failures += 1;
                tracing::warn!(task_id = %key.task_id, attempt = failures, error = %e, "reading task failed; retrying");
                let backoff = settings.backoff.delay(failures);
                e.retry_after.map_or(backoff, |ra| ra.max(backoff))
            }
            Err(e) => {
                let error = if e.is_transient() {
                    GatewayError::WatchRetriesExhausted {
                        attempts: failures + 1,
                        last: e,
                    }
                } else {
                    GatewayError::Upstream(e)
                };
                channel.send_replace(Observation::Failed(error));
                break;
            }
        };
        match pause(&inner, &key, &channel, &wake, wait).await {
            Some(was_woken) => woken = was_woken,
            None => break,
        }
    }
    // Whatever the way out (the task ended, failed, lost its watchers, or
    // the gateway stops), the poller leaves the map; watchers that joined in
    // the meantime still see the last value.
    inner.retire(&key, &channel, true);
    inner.metrics.active_pollers.dec();
}

/// Waits `wait` or until woken. `Some(woken)` to go on; `None` when the
/// poller must stop (its last watcher left, or shutdown).
async fn pause(
    inner: &Inner,
    key: &TaskKey,
    channel: &Arc<watch::Sender<Observation>>,
    wake: &Notify,
    wait: Duration,
) -> Option<bool> {
    tokio::select! {
        () = tokio::time::sleep(wait) => Some(false),
        () = wake.notified() => Some(true),
        () = channel.closed() => (!inner.retire(key, channel, false)).then_some(false),
        () = inner.shutdown.cancelled() => None,
    }
}

/// Updates watchers; they are woken only when the state changes.
fn publish(channel: &watch::Sender<Observation>, task: Arc<pb::Task>) {
    channel.send_if_modified(|current| {
        let changed = match current {
            Observation::Task(old) => old.task.state != task.state,
            _ => true,
        };
        *current = Observation::Task(Snapshot::new(task));
        changed
    });
}

/// How long ago kie.ai accepted the task, when it says.
fn task_age(task: &pb::Task) -> Option<Duration> {
    let created = task.create_time.as_ref()?;
    let created = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(created.seconds).ok()?,
            u32::try_from(created.nanos).ok()?,
        );
    SystemTime::now().duration_since(created).ok()
}
