//! Wake-ups across the fleet, on Redis pub/sub (`<prefix>:wake`): a
//! callback reached some replica, or a lease holder wrote a new state.
//! Every replica subscribes on a connection of its own and wakes its local
//! pollers of the task: followers re-read the shared state, the lease
//! holder re-reads kie.ai at once.
//!
//! Pub/sub is at-most-once, so it is only a wake-up, never the state: a
//! replica that misses a message converges when its pollers next look at
//! the shared state (on a timer), and every (re)subscription wakes all its
//! pollers, as messages may have been lost while it was away.
//!
//! A message is `<kind> <sender id> <task id>`: nothing secret, and the
//! sender skips its own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::fleet_tasks::FleetTasks;
use crate::redis_client::Redis;

/// Pause before subscribing again after the connection was lost.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);

/// What a wake-up says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// kie.ai called back about the task: its lease holder re-reads it now.
    Callback,
    /// The shared state moved on: followers re-read it.
    State,
}

impl Wake {
    fn as_str(self) -> &'static str {
        match self {
            Self::Callback => "cb",
            Self::State => "st",
        }
    }
}

/// What the subscriber hands the hub.
pub enum Event<'a> {
    /// Another replica woke this task (a callback and a new state wake its
    /// pollers alike; the kind on the wire is for whoever reads the channel).
    Wake(&'a str),
    /// (Re)subscribed: messages may have been missed, look at everything.
    Resubscribed,
}

/// Tells every replica (this one skips it) to wake the task's pollers.
/// Best effort: a lost wake-up is caught up by the timers.
pub async fn announce(tasks: &FleetTasks, kind: Wake, task_id: &str) {
    let channel = tasks.redis().keys().channel("wake");
    let message = format!("{} {} {task_id}", kind.as_str(), tasks.id());
    let (channel, message) = (&channel, &message);
    let sent = tasks
        .redis()
        .call(|mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "wake-up not published; the others' timers catch up");
    }
}

/// Subscribes until `shutdown`, resubscribing whenever the connection is
/// lost, and hands each other replica's wake-up to `on_event`.
pub fn subscribe(
    tasks: Arc<FleetTasks>,
    on_event: impl Fn(Event<'_>) + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let redis: Redis = tasks.redis().clone();
        let channel = redis.keys().channel("wake");
        while !shutdown.is_cancelled() {
            if let Err(e) = listen(&redis, &channel, &tasks, &on_event, &shutdown).await {
                tracing::debug!(error = %e, "wake-up subscription lost; subscribing again");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
            }
        }
    });
}

async fn listen(
    redis: &Redis,
    channel: &str,
    tasks: &FleetTasks,
    on_event: &(impl Fn(Event<'_>) + Send + Sync),
    shutdown: &CancellationToken,
) -> Result<(), crate::redis_client::FleetError> {
    let mut pubsub = redis.pubsub().await?;
    tokio::time::timeout(crate::redis_client::CALL_TIMEOUT, pubsub.subscribe(channel))
        .await
        .map_err(|_| crate::redis_client::FleetError::TimedOut)?
        .map_err(crate::redis_client::FleetError::Redis)?;
    on_event(Event::Resubscribed);
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        // The stream ends when the connection does.
        let Some(message) = message else {
            return Ok(());
        };
        let Ok(text) = message.get_payload::<String>() else {
            continue;
        };
        let mut parts = text.splitn(3, ' ');
        let (Some(kind), Some(sender), Some(task_id)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if sender == tasks.id() {
            continue;
        }
        if kind != Wake::Callback.as_str() && kind != Wake::State.as_str() {
            continue;
        }
        tasks.metrics().fleet_wakeups.inc();
        on_event(Event::Wake(task_id));
    }
}
