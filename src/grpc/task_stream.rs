//! One WatchTask stream: the current task first, then one message per state
//! change, heartbeats while nothing changes, and a clean end on a terminal
//! state, an error, or shutdown.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::error::GatewayError;
use crate::hub::{Observation, Snapshot};
use crate::pb::{self, WatchTaskResponse};
use crate::task::is_terminal;

pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchTaskResponse, Status>> + Send + 'static>>;

/// A watch's messages before they are encoded (see `Frame`).
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send + 'static>>;

/// One message of a watch: the task's current state, as a change or as a
/// heartbeat. A change's encoding is made once and shared by every watcher
/// of the task (`encode`); a heartbeat, per stream on its own timer, is
/// encoded by its stream.
pub(crate) struct Frame {
    snapshot: Snapshot,
    heartbeat: bool,
}

impl Frame {
    pub(crate) fn task(&self) -> &pb::Task {
        &self.snapshot.task
    }

    pub(crate) fn heartbeat(&self) -> bool {
        self.heartbeat
    }

    /// The `WatchTaskResponse` as prost encodes it, byte for byte.
    pub(crate) fn encode(&self) -> Bytes {
        if self.heartbeat {
            return message(self.task(), true).encode_to_vec().into();
        }
        self.snapshot
            .encoded(|task| message(task, false).encode_to_vec().into())
    }

    fn into_message(self) -> WatchTaskResponse {
        message(self.task(), self.heartbeat)
    }
}

/// The frames as prost messages, for a server without the shared encoding
/// (the generated `VideoGenerationServer` alone).
pub(crate) fn messages(frames: FrameStream) -> WatchStream {
    Box::pin(frames.map(|frame| frame.map(Frame::into_message)))
}

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
    /// When the configured maximum watch duration ends the call.
    expires_at: Instant,
    /// The stream's one timer, for the next heartbeat or the expiry,
    /// whichever comes first: re-armed with `reset` (a later deadline is
    /// one atomic swap), never re-created, so a stream keeps one entry in
    /// the timer wheel and a fan-out removes one per stream, not two.
    timer: Pin<Box<Sleep>>,
    /// Registered once with the token, not at every wait.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Taken when the stream ends; dropped unsent means the caller left.
    on_end: Option<OnEnd>,
    /// See `stream`.
    no_repeat: Option<String>,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<Frame, Status>> {
        self.on_end.as_ref()?;
        loop {
            let current = self.rx.borrow_and_update().clone();
            match current {
                Observation::Pending => {}
                Observation::Failed(e) => return self.fail(&e),
                Observation::Task(snapshot) if Some(snapshot.task.state) != self.last_state => {
                    self.last_state = Some(snapshot.task.state);
                    let terminal = is_terminal(snapshot.task.state());
                    let frame = Frame {
                        snapshot,
                        heartbeat: false,
                    };
                    if terminal {
                        return self.finish(frame);
                    }
                    return Some(Ok(frame));
                }
                Observation::Task(_) => {}
            }
            // A quiet period starts with each wait, as it did when the
            // heartbeat was a new `sleep` per wait.
            let beat = Instant::now()
                .checked_add(self.heartbeat)
                .unwrap_or(self.expires_at);
            self.timer.as_mut().reset(beat.min(self.expires_at));
            tokio::select! {
                biased;
                () = self.shutdown.as_mut() => {
                    return self.fail(&GatewayError::ShuttingDown);
                }
                () = self.timer.as_mut() => {
                    if self.timer.deadline() >= self.expires_at {
                        return self.fail(&GatewayError::WatchExpired);
                    }
                    // A change that came with the beat goes first.
                    match self.rx.has_changed() {
                        Ok(true) => continue,
                        Err(_) => return self.drain_final(),
                        Ok(false) => {}
                    }
                    if let Observation::Task(snapshot) = &*self.rx.borrow() {
                        self.heartbeats.inc();
                        return Some(Ok(Frame {
                            snapshot: snapshot.clone(),
                            heartbeat: true,
                        }));
                    }
                }
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The poller ended; whatever it left is final.
                        return self.drain_final();
                    }
                }
            }
        }
    }

    /// The poller is gone: send its last value if unseen, else end.
    fn drain_final(&mut self) -> Option<Result<Frame, Status>> {
        let last = self.rx.borrow().clone();
        match last {
            Observation::Task(snapshot) if Some(snapshot.task.state) != self.last_state => {
                self.last_state = Some(snapshot.task.state);
                self.finish(Frame {
                    snapshot,
                    heartbeat: false,
                })
            }
            Observation::Failed(e) => self.fail(&e),
            _ => self.fail(&GatewayError::ShuttingDown),
        }
    }

    /// Ends the stream with its terminal message.
    fn finish(&mut self, last: Frame) -> Option<Result<Frame, Status>> {
        if let Some(on_end) = self.on_end.take() {
            on_end(End::Finished);
        }
        Some(Ok(last))
    }

    /// Ends the stream with `error`'s status; the hook gets the error itself
    /// so that its log line can say how bad it is and why.
    fn fail(&mut self, error: &GatewayError) -> Option<Result<Frame, Status>> {
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

/// A deadline for a maximum duration too long to add to now (tokio's own
/// far future: 30 years).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
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
) -> FrameStream {
    let expires_at = Instant::now()
        .checked_add(max_duration)
        .unwrap_or_else(far_future);
    let watcher = Watcher {
        rx,
        last_state: None,
        heartbeat,
        heartbeats,
        expires_at,
        timer: Box::pin(tokio::time::sleep_until(expires_at)),
        shutdown: Box::pin(shutdown.cancelled_owned()),
        on_end: Some(on_end),
        no_repeat,
    };
    Box::pin(futures_util::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;

    use super::*;

    fn frames(rx: &watch::Receiver<Observation>) -> FrameStream {
        let first_seen = FirstSeen(rx.clone());
        stream(
            first_seen,
            (Duration::from_secs(3600), Counter::default()),
            Duration::from_secs(3600),
            CancellationToken::new(),
            Box::new(|_| {}),
            None,
        )
    }

    #[tokio::test]
    async fn watchers_of_one_state_change_share_one_encoding() {
        let mut task = pb::Task {
            task_id: "t1".into(),
            ..pb::Task::default()
        };
        task.set_state(pb::TaskState::Succeeded);
        let (_tx, rx) = watch::channel(Observation::Task(Snapshot::new(Arc::new(task.clone()))));
        let mut a = frames(&rx);
        let mut b = frames(&rx);

        let a = a.next().await.expect("a frame").expect("ok").encode();
        let b = b.next().await.expect("a frame").expect("ok").encode();

        assert_eq!(a.as_ptr(), b.as_ptr(), "one encoding, shared");
        let expected = WatchTaskResponse {
            task: Some(task),
            heartbeat: false,
        };
        assert_eq!(a[..], expected.encode_to_vec()[..]);
    }

    fn task_in(state: pb::TaskState) -> Observation {
        let mut task = pb::Task {
            task_id: "t1".into(),
            ..pb::Task::default()
        };
        task.set_state(state);
        Observation::Task(Snapshot::new(Arc::new(task)))
    }

    /// One timer serves both deadlines: a quiet period restarts with each
    /// message, and the maximum duration wins a tie with a heartbeat.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_follow_each_quiet_period_until_the_maximum_duration_ends_the_watch() {
        let (tx, rx) = watch::channel(task_in(pb::TaskState::Queuing));
        let beats = Counter::default();
        let mut frames = stream(
            FirstSeen(rx),
            (Duration::from_secs(10), beats.clone()),
            Duration::from_secs(35),
            CancellationToken::new(),
            Box::new(|_| {}),
            None,
        );
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send_replace(task_in(pb::TaskState::Generating));
            std::future::pending::<()>().await;
        });

        let mut seen = Vec::new();
        // Bounded: a stream that never expires fails here, not by hanging.
        let mut frames = frames.by_ref().take(6);
        while let Some(item) = frames.next().await {
            let at = start.elapsed().as_secs();
            seen.push(match item {
                Ok(frame) => (at, frame.task().state(), frame.heartbeat()),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
                    (at, pb::TaskState::Unspecified, false)
                }
            });
        }

        use pb::TaskState::{Generating, Queuing, Unspecified};
        assert_eq!(
            seen,
            [
                (0, Queuing, false),
                (5, Generating, false),
                (15, Generating, true),
                (25, Generating, true),
                (35, Unspecified, false),
            ]
        );
        assert_eq!(beats.get(), 2);
    }
}
