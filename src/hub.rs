//! The task hub: one upstream poller per watched task, however many callers
//! watch it. Each task has a `watch` channel; the poller writes, watchers
//! only read, and the poller stops when the last watcher leaves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::WatchSettings;
use crate::error::GatewayError;
use crate::kie::{Credential, KieClient};
use crate::pb;
use crate::task::{TaskId, is_terminal};

/// What watchers of a task see.
#[derive(Clone, Debug)]
pub enum Observation {
    /// The first read has not come back yet.
    Pending,
    /// The task as last read.
    Task(Arc<pb::Task>),
    /// Watching ended with an error (unknown task, refused key, retry
    /// budget spent).
    Failed(GatewayError),
}

/// Pollers are shared per task *and* key: with key pass-through, one team's
/// key never reads a task for another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WatchKey {
    task_id: TaskId,
    credential: Credential,
}

type Channel = Arc<watch::Sender<Observation>>;

#[derive(Clone)]
pub struct TaskHub {
    inner: Arc<Inner>,
}

struct Inner {
    kie: KieClient,
    settings: WatchSettings,
    pollers: Mutex<HashMap<WatchKey, Channel>>,
    shutdown: CancellationToken,
}

impl TaskHub {
    pub fn new(kie: KieClient, settings: WatchSettings, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                kie,
                settings,
                pollers: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// Joins the task's poller, starting one if none runs. Dropping the
    /// receiver is how a watcher leaves.
    pub fn subscribe(
        &self,
        credential: Credential,
        task_id: TaskId,
    ) -> watch::Receiver<Observation> {
        let key = WatchKey {
            task_id,
            credential,
        };
        let mut pollers = self.inner.pollers();
        if let Some(channel) = pollers.get(&key) {
            return channel.subscribe();
        }
        let (tx, rx) = watch::channel(Observation::Pending);
        let channel = Arc::new(tx);
        pollers.insert(key.clone(), channel.clone());
        drop(pollers);
        tokio::spawn(poll(self.inner.clone(), key, channel));
        rx
    }

    /// Number of tasks being polled now.
    pub fn active_pollers(&self) -> usize {
        self.inner.pollers().len()
    }
}

impl Inner {
    fn pollers(&self) -> MutexGuard<'_, HashMap<WatchKey, Channel>> {
        // A panic while holding this lock cannot leave the map half-written
        // (every critical section is a single insert, get or remove).
        self.pollers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the poller's channel, but only if no watcher joined since it
    /// was last seen empty (or `force`, when the task is over).
    fn retire(&self, key: &WatchKey, channel: &Channel, force: bool) -> bool {
        let mut pollers = self.pollers();
        let ours = pollers.get(key).is_some_and(|c| Arc::ptr_eq(c, channel));
        if ours && (force || channel.receiver_count() == 0) {
            pollers.remove(key);
            return true;
        }
        !ours
    }
}

/// Reads the task until it ends, every watcher leaves, or the gateway shuts
/// down.
async fn poll(inner: Arc<Inner>, key: WatchKey, channel: Channel) {
    let started = Instant::now();
    let settings = inner.settings;
    let mut failures: u32 = 0;
    loop {
        let read = inner
            .kie
            .record_info(&key.credential, &key.task_id, None)
            .await;
        let wait = match read {
            Ok(task) => {
                failures = 0;
                let terminal = is_terminal(task.state());
                let age = task_age(&task).unwrap_or_else(|| started.elapsed());
                publish(&channel, task);
                if terminal {
                    break;
                }
                settings.cadence.interval_at(age)
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
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = channel.closed() => {
                if inner.retire(&key, &channel, false) {
                    return;
                }
            }
            () = inner.shutdown.cancelled() => break,
        }
    }
    inner.retire(&key, &channel, true);
}

/// Updates watchers; they are woken only when the state changes.
fn publish(channel: &Channel, task: pb::Task) {
    channel.send_if_modified(|current| {
        let changed = match current {
            Observation::Task(old) => old.state != task.state,
            _ => true,
        };
        *current = Observation::Task(Arc::new(task));
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
