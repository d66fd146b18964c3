//! One WatchTask stream: the current task first, then one message per state
//! change, heartbeats while nothing changes, and a clean end on a terminal
//! state, an error, or shutdown.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::error::GatewayError;
use crate::hub::Observation;
use crate::pb::{self, WatchTaskResponse};
use crate::task::is_terminal;

pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchTaskResponse, Status>> + Send + 'static>>;

/// Called once when the stream ends, with the code the caller saw
/// (`Cancelled` when the caller left first).
pub type OnEnd = Box<dyn FnOnce(Code) + Send + 'static>;

/// Waits for the first read of the task: an unknown task is refused as the
/// call's status, before any message.
pub async fn first_observation(
    rx: &mut watch::Receiver<Observation>,
    shutdown: &CancellationToken,
) -> Result<(), GatewayError> {
    tokio::select! {
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
    }
}

struct Watcher {
    rx: watch::Receiver<Observation>,
    last_state: Option<i32>,
    heartbeat: Duration,
    /// Ends the call after the configured maximum watch duration.
    expires: Pin<Box<Sleep>>,
    shutdown: CancellationToken,
    /// Taken when the stream ends; dropped unsent means the caller left.
    on_end: Option<OnEnd>,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchTaskResponse, Status>> {
        self.on_end.as_ref()?;
        loop {
            let current = self.rx.borrow_and_update().clone();
            match current {
                Observation::Pending => {}
                Observation::Failed(e) => {
                    let status = e.to_status();
                    return self.finish(Err(status));
                }
                Observation::Task(task) if Some(task.state) != self.last_state => {
                    self.last_state = Some(task.state);
                    let message = Ok(message(&task, false));
                    if is_terminal(task.state()) {
                        return self.finish(message);
                    }
                    return Some(message);
                }
                Observation::Task(_) => {}
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    return self.finish(Err(GatewayError::ShuttingDown.to_status()));
                }
                () = &mut self.expires => {
                    return self.finish(Err(GatewayError::WatchExpired.to_status()));
                }
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The poller ended; whatever it left is final.
                        return self.drain_final();
                    }
                }
                () = tokio::time::sleep(self.heartbeat) => {
                    if let Observation::Task(task) = &*self.rx.borrow() {
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
                self.finish(Ok(message(&task, false)))
            }
            Observation::Failed(e) => self.finish(Err(e.to_status())),
            _ => self.finish(Err(GatewayError::ShuttingDown.to_status())),
        }
    }

    fn finish(
        &mut self,
        item: Result<WatchTaskResponse, Status>,
    ) -> Option<Result<WatchTaskResponse, Status>> {
        let code = match &item {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
        Some(item)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Code::Cancelled);
        }
    }
}

fn message(task: &pb::Task, heartbeat: bool) -> WatchTaskResponse {
    WatchTaskResponse {
        task: Some(task.clone()),
        heartbeat,
    }
}

/// The stream a WatchTask call returns. `rx` must have seen its first
/// observation (see `first_observation`).
pub fn stream(
    rx: watch::Receiver<Observation>,
    heartbeat: Duration,
    max_duration: Duration,
    shutdown: CancellationToken,
    on_end: OnEnd,
) -> WatchStream {
    let watcher = Watcher {
        rx,
        last_state: None,
        heartbeat,
        expires: Box::pin(tokio::time::sleep(max_duration)),
        shutdown,
        on_end: Some(on_end),
    };
    Box::pin(futures_util::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    }))
}
