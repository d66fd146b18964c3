//! A poller's side of the fleet (Redis configured): whether it reads kie.ai
//! for the whole fleet (it holds the task's lease) or follows the shared
//! state that the holder writes, and the writes themselves.
//!
//! Redis away is not an error here: the poller then reads kie.ai on its
//! own, as a single process does, within this replica's share of the read
//! budget (`budget.rs`), and goes back to the lease when Redis answers.

use std::sync::Arc;

use prost::Message;

use super::fleet_tasks::{FleetTasks, Lease, TaskKeys, key_digest};
use super::wakeups::{self, Wake};
use crate::pb;
use crate::task::is_terminal;

/// What a poller does next.
pub(super) enum Step {
    /// Read kie.ai: this replica holds the lease, or Redis is away.
    Read,
    /// Another replica reads; this is the shared state, if any yet.
    Follow(Option<Arc<pb::Task>>),
    /// The task is over, as the shared state says: no read needed.
    Finished(Arc<pb::Task>),
}

pub(super) struct Shared {
    tasks: Arc<FleetTasks>,
    keys: TaskKeys,
    task_id: String,
    lease: Option<Lease>,
}

impl Shared {
    pub(super) fn new(tasks: Arc<FleetTasks>, task_id: &str, key: &str) -> Self {
        let keys = tasks.keys(task_id, &key_digest(key));
        Self {
            tasks,
            keys,
            task_id: task_id.to_owned(),
            lease: None,
        }
    }

    /// Before each read: lead if the lease is (or becomes) this replica's,
    /// else follow the shared state.
    pub(super) async fn step(&mut self) -> Step {
        if self.lease.as_ref().is_some_and(Lease::held) {
            return Step::Read;
        }
        // Lost (or never held): dropping it stops its renewals.
        self.lease = None;
        let seen = match self.tasks.read(&self.keys).await {
            Ok(bytes) => bytes.and_then(|b| decode(&b)),
            Err(_) => return Step::Read,
        };
        if let Some(task) = &seen
            && is_terminal(task.state())
        {
            return Step::Finished(task.clone());
        }
        match self.tasks.try_lead(&self.keys).await {
            Ok(Some(lease)) => {
                tracing::debug!(task_id = %self.task_id, "polling the task for the fleet");
                self.lease = Some(lease);
                Step::Read
            }
            Ok(None) => Step::Follow(seen),
            Err(_) => Step::Read,
        }
    }

    /// After a read from kie.ai: writes it for the fleet (only forward) and
    /// wakes the other replicas when the state moved on. Returns what
    /// watchers should see: the stored task if this read was stale.
    pub(super) async fn record(&self, task: Arc<pb::Task>) -> Arc<pb::Task> {
        record(&self.tasks, &self.keys, &self.task_id, task).await
    }
}

/// A finished task from the shared state, for GetTask: no upstream read.
pub(super) async fn finished(
    tasks: &FleetTasks,
    task_id: &str,
    key: &str,
) -> Option<Arc<pb::Task>> {
    let keys = tasks.keys(task_id, &key_digest(key));
    let task = decode(&tasks.read(&keys).await.ok()??)?;
    is_terminal(task.state()).then_some(task)
}

/// Shares a task a GetTask read, as a poller would.
pub(super) async fn share(
    tasks: &FleetTasks,
    task_id: &str,
    key: &str,
    task: Arc<pb::Task>,
) -> Arc<pb::Task> {
    let keys = tasks.keys(task_id, &key_digest(key));
    record(tasks, &keys, task_id, task).await
}

async fn record(
    tasks: &FleetTasks,
    keys: &TaskKeys,
    task_id: &str,
    task: Arc<pb::Task>,
) -> Arc<pb::Task> {
    match tasks
        .write(keys, rank(task.state()), &task.encode_to_vec())
        .await
    {
        Ok(written) if written.refused => decode(&written.task).unwrap_or(task),
        Ok(written) => {
            if written.moved {
                wakeups::announce(tasks, Wake::State, task_id).await;
            }
            task
        }
        // Redis away: this replica's watchers still get what it read.
        Err(_) => task,
    }
}

/// The order states come in; the terminal ones rank above every other.
fn rank(state: pb::TaskState) -> i32 {
    match state {
        pb::TaskState::Unspecified => 0,
        pb::TaskState::Waiting => 1,
        pb::TaskState::Queuing => 2,
        pb::TaskState::Generating => 3,
        pb::TaskState::Succeeded => 4,
        pb::TaskState::Failed => 5,
    }
}

fn decode(bytes: &[u8]) -> Option<Arc<pb::Task>> {
    pb::Task::decode(bytes).ok().map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_lifecycle() {
        use pb::TaskState::*;
        let order = [Unspecified, Waiting, Queuing, Generating, Succeeded];
        assert!(order.windows(2).all(|w| rank(w[0]) < rank(w[1])));
        assert!(rank(Failed) > rank(Generating));
    }
}
