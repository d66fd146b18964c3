//! One WatchTask stream: the current task first, then one message per state
//! change, heartbeats while nothing changes, and a clean end on a terminal
//! state, an error, or shutdown.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::GatewayError;
use crate::hub::Observation;
use crate::pb::{self, WatchTaskResponse};
use crate::task::is_terminal;

pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchTaskResponse, Status>> + Send + 'static>>;

/// How a stream ended, for its log line and metrics.
#[derive(Debug)]
pub(crate) enum End<'a> {
    /// The task's terminal state was sent.
    Finished,
    /// The gateway ended the stream with `error`, sent as `status`.
    Failed {
        error: &'a GatewayError,
        status: &'a Status,
    },
    /// The caller left first (cancelled, or its deadline passed).
    CallerLeft,
}

/// Called once when the stream ends, with how it ended.
pub(crate) type OnEnd = Box<dyn for<'a> FnOnce(End<'a>) + Send + 'static>;

/// A task subscription whose first read came back with the task: the only
/// way to make a stream (see `stream`).
pub(crate) struct FirstSeen(watch::Receiver<Observation>);

/// Waits for the first read of the task: an unknown task is refused as the
/// call's status, before any message.
pub(crate) async fn first_observation(
    mut rx: watch::Receiver<Observation>,
    shutdown: &CancellationToken,
) -> Result<FirstSeen, GatewayError> {
    let seen = tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(GatewayError::ShuttingDown),
        seen = rx.wait_for(|o| !matches!(o, Observation::Pending)) => match seen {
            Ok(o) => match &*o {
                Observation::Failed(e) => Err(e.clone()),
                _ => Ok(()),
            },
            // The poller is gone without a word: only at shutdown.
            Err(_) => Err(GatewayError::ShuttingDown),
        },
    };
    seen.map(|()| FirstSeen(rx))
}

struct Watcher {
    rx: watch::Receiver<Observation>,
    last_state: Option<i32>,
    heartbeat: Duration,
    /// Counts each heartbeat sent.
    heartbeats: Counter,
    /// Ends the call after the configured maximum watch duration.
    expires: Pin<Box<Sleep>>,
    shutdown: CancellationToken,
    /// Taken when the stream ends; dropped unsent means the caller left.
    on_end: Option<OnEnd>,
    /// See `stream`.
    no_repeat: Option<String>,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchTaskResponse, Status>> {
        self.on_end.as_ref()?;
        loop {
            let current = self.rx.borrow_and_update().clone();
            match current {
                Observation::Pending => {}
                Observation::Failed(e) => return self.fail(&e),
                Observation::Task(task) if Some(task.state) != self.last_state => {
                    self.last_state = Some(task.state);
                    let message = message(&task, false);
                    if is_terminal(task.state()) {
                        return self.finish(message);
                    }
                    return Some(Ok(message));
                }
                Observation::Task(_) => {}
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    return self.fail(&GatewayError::ShuttingDown);
                }
                () = &mut self.expires => {
                    return self.fail(&GatewayError::WatchExpired);
                }
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The poller ended; whatever it left is final.
                        return self.drain_final();
                    }
                }
                () = tokio::time::sleep(self.heartbeat) => {
                    if let Observation::Task(task) = &*self.rx.borrow() {
                        self.heartbeats.inc();
                        return Some(Ok(message(task, true)));
                    }
                }
            }
        }
    }

    /// The poller is gone: send its last value if unseen, else end.
    fn drain_final(&mut self) -> Option<Result<WatchTaskResponse, Status>> {
        let last = self.rx.borrow().clone();
        match last {
            Observation::Task(task) if Some(task.state) != self.last_state => {
                self.last_state = Some(task.state);
                self.finish(message(&task, false))
            }
            Observation::Failed(e) => self.fail(&e),
            _ => self.fail(&GatewayError::ShuttingDown),
        }
    }

    /// Ends the stream with its terminal message.
    fn finish(&mut self, last: WatchTaskResponse) -> Option<Result<WatchTaskResponse, Status>> {
        if let Some(on_end) = self.on_end.take() {
            on_end(End::Finished);
        }
        Some(Ok(last))
    }

    /// Ends the stream with `error`'s status; the hook gets the error itself
    /// so that its log line can say how bad it is and why.
    fn fail(&mut self, error: &GatewayError) -> Option<Result<WatchTaskResponse, Status>> {
        let error = &for_caller(error.clone(), self.no_repeat.as_deref());
        let status = error.to_status();
        if let Some(on_end) = self.on_end.take() {
            on_end(End::Failed {
                error,
                status: &status,
            });
        }
        Some(Err(status))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(End::CallerLeft);
        }
    }
}

fn message(task: &pb::Task, heartbeat: bool) -> WatchTaskResponse {
    WatchTaskResponse {
        task: Some(task.clone()),
        heartbeat,
    }
}

/// An error that ends a watch, as its caller must see it: with `no_repeat`
/// (the task id of a GenerateVideo without request_id) every error becomes
/// WATCH_INTERRUPTED, since calling that again would buy a second video
/// whatever the first error said.
pub(crate) fn for_caller(error: GatewayError, no_repeat: Option<&str>) -> GatewayError {
    match no_repeat {
        Some(task_id) => GatewayError::WatchInterrupted {
            task_id: task_id.to_owned(),
            cause: Box::new(error),
        },
        None => error,
    }
}

/// The stream a WatchTask call returns, from a subscription whose first
/// read is in: a heartbeat after each quiet period, counted. `no_repeat`:
/// see `for_caller`.
pub(crate) fn stream(
    FirstSeen(rx): FirstSeen,
    (heartbeat, heartbeats): (Duration, Counter),
    max_duration: Duration,
    shutdown: CancellationToken,
    on_end: OnEnd,
    no_repeat: Option<String>,
) -> WatchStream {
    let watcher = Watcher {
        rx,
        last_state: None,
        heartbeat,
        heartbeats,
        expires: Box::pin(tokio::time::sleep(max_duration)),
        shutdown,
        on_end: Some(on_end),
        no_repeat,
    };
    Box::pin(futures_util::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    }))
}
