//! Create outcomes on their way to Redis (a settle, a resolve), written in
//! the order they were recorded and retried while Redis is away.
//!
//! A write rides along with this replica's next reserve: one pipeline, one
//! round trip and one answer carry both, where a write of its own costs
//! Redis and the gateway a wake-up each, the main cost of a fleet
//! CreateTask at low load. A background writer sends what waited
//! [`LINGER`] with no reserve to carry it, so an outcome reaches Redis
//! within about twice that plus a round trip.
//!
//! At most one batch is out at a time, so that no write overtakes an
//! earlier one (a resolve the settle it follows). Every write is safe to
//! repeat, so a batch whose answer is lost is sent again. A crash loses
//! what is queued, as it always did: the attempt's lease then lapses and
//! its key reads as unknown, never free.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Pipeline, RedisResult, Script, Value};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{evalsha, run_scripts, script};
use crate::create::idempotency::CALLBACK_WAIT;
use crate::redis_client::{Redis, millis};

/// How long a write waits for a reserve to carry it before the writer
/// sends it alone: short next to the waiters' polls (20 ms and up).
pub(super) const LINGER: Duration = Duration::from_millis(2);
/// Writes per pipeline, so that a backlog (Redis was away) does not make
/// one reserve wait for hundreds of scripts.
const MAX_BATCH: usize = 64;
/// A certain failure is kept this long for the attempt's waiters (they
/// poll far more often); the key is free for new callers at once.
const FAILED_KEPT: Duration = Duration::from_secs(60);
/// Retries of a write while Redis is away.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What is recorded: the arguments of `settle.lua` or `resolve.lua`.
pub(super) enum Write {
    Settle {
        key: String,
        attempt: String,
        kind: &'static str,
        payload: String,
        learnable: bool,
        /// The request's, to record the outcome again should Redis have
        /// lost the key meanwhile.
        fingerprint: String,
    },
    Resolve {
        key: String,
        task_id: String,
    },
}

struct Job {
    write: Write,
    queued: Instant,
    give_up: Instant,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// A batch is on its way to Redis.
    out: bool,
    /// The writer waits for a push to wake it.
    idle: bool,
    /// Something was pushed since the writer last looked: it keeps ticking
    /// while writes come, instead of being woken by each.
    pushed: bool,
    /// After a failed batch the writer waits until then.
    retry_at: Option<Instant>,
    pause: Duration,
    warned: bool,
    closed: bool,
}

pub(super) struct Outbox {
    redis: Redis,
    settle: Script,
    resolve: Script,
    ttl: Duration,
    linger: Duration,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Bumped when writes land: this replica's waiters look at once.
    recorded: watch::Sender<u64>,
}

impl Outbox {
    /// Starts the writer (so needs a Tokio runtime); it ends once
    /// [`Outbox::close`] was called and everything queued is written or
    /// given up.
    pub(super) fn start(redis: Redis, ttl: Duration, linger: Duration) -> Arc<Self> {
        let outbox = Arc::new(Self {
            redis,
            settle: script(include_str!("lua/settle.lua")),
            resolve: script(include_str!("lua/resolve.lua")),
            ttl,
            linger,
            queue: Mutex::new(Queue {
                pause: RETRY_FIRST,
                ..Queue::default()
            }),
            wake: Notify::new(),
            recorded: watch::Sender::new(0),
        });
        tokio::spawn(outbox.clone().write());
        outbox
    }

    /// The scripts a batch may run, to load them should Redis have
    /// forgotten them.
    pub(super) fn scripts(&self) -> [&Script; 2] {
        [&self.settle, &self.resolve]
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.recorded.subscribe()
    }

    /// Queues `write`, to be tried for `keep_trying`.
    pub(super) fn push(&self, write: Write, keep_trying: Duration) {
        let now = Instant::now();
        let mut queue = self.queue.lock();
        queue.jobs.push_back(Job {
            write,
            queued: now,
            give_up: now + keep_trying,
        });
        queue.pushed = true;
        let wake = std::mem::take(&mut queue.idle);
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The writes queued now, unless a batch is already out (this one would
    /// overtake it).
    pub(super) fn take(&self) -> Option<Batch<'_>> {
        let mut queue = self.queue.lock();
        if queue.out || queue.jobs.is_empty() {
            return None;
        }
        queue.out = true;
        let n = queue.jobs.len().min(MAX_BATCH);
        let jobs = queue.jobs.drain(..n).collect();
        Some(Batch { outbox: self, jobs })
    }

    /// No more writes will come: the writer ends once the queue is empty.
    pub(super) fn close(&self) {
        let mut queue = self.queue.lock();
        queue.closed = true;
        let wake = std::mem::take(&mut queue.idle);
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
    }

    fn command(&self, write: &Write) -> redis::Cmd {
        let ttl_ms = millis(self.ttl);
        match write {
            Write::Settle {
                key,
                attempt,
                kind,
                payload,
                learnable,
                fingerprint,
            } => {
                let learn_ms = if *learnable { millis(CALLBACK_WAIT) } else { 0 };
                let mut cmd = evalsha(&self.settle, key);
                cmd.arg(attempt)
                    .arg(*kind)
                    .arg(payload)
                    .arg(ttl_ms)
                    .arg(learn_ms)
                    .arg(millis(FAILED_KEPT))
                    .arg(fingerprint);
                cmd
            }
            Write::Resolve { key, task_id } => {
                let mut cmd = evalsha(&self.resolve, key);
                cmd.arg(task_id).arg(ttl_ms);
                cmd
            }
        }
    }

    /// A batch is back: what failed goes back to the front of the queue, in
    /// order, unless its time is up.
    fn finish(&self, jobs: Vec<Job>, answers: Option<&[RedisResult<Value>]>) {
        let now = Instant::now();
        let mut written = 0;
        let mut failed = Vec::new();
        let mut error = None;
        for (i, job) in jobs.into_iter().enumerate() {
            match answers.and_then(|a| a.get(i)) {
                Some(Ok(_)) => written += 1,
                Some(Err(e)) => {
                    error.get_or_insert_with(|| e.to_string());
                    failed.push(job);
                }
                None => failed.push(job),
            }
        }
        let mut queue = self.queue.lock();
        queue.out = false;
        let mut kept = 0;
        for job in failed.into_iter().rev() {
            if now >= job.give_up {
                tracing::error!(
                    error,
                    "gave up recording a create outcome in Redis; its key reads as unknown"
                );
            } else {
                queue.jobs.push_front(job);
                kept += 1;
            }
        }
        if kept > 0 {
            queue.retry_at = Some(now + queue.pause);
            queue.pause = (queue.pause * 2).min(RETRY_MAX);
            if !std::mem::replace(&mut queue.warned, true) {
                tracing::warn!(error, "create outcome not yet recorded in Redis; retrying");
            }
        } else if written > 0 {
            queue.retry_at = None;
            queue.pause = RETRY_FIRST;
            queue.warned = false;
        }
        let wake = !queue.jobs.is_empty() && std::mem::take(&mut queue.idle);
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
        if written > 0 {
            self.recorded.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The writer: sends what no reserve carried within the linger.
    async fn write(self: Arc<Self>) {
        enum Next {
            Send,
            Sleep(Instant),
            Idle,
        }
        loop {
            let next = {
                let mut queue = self.queue.lock();
                let now = Instant::now();
                let busy = std::mem::take(&mut queue.pushed);
                if queue.out {
                    Next::Sleep(now + self.linger)
                } else if let Some(oldest) = queue.jobs.front() {
                    let due = (oldest.queued + self.linger).max(queue.retry_at.unwrap_or(now));
                    if due <= now {
                        Next::Send
                    } else {
                        Next::Sleep(due)
                    }
                } else if queue.closed {
                    return;
                } else if busy {
                    Next::Sleep(now + self.linger)
                } else {
                    queue.idle = true;
                    Next::Idle
                }
            };
            match next {
                Next::Send => {
                    let Some(batch) = self.take() else { continue };
                    let mut pipe = redis::pipe();
                    batch.add_to(&mut pipe);
                    match run_scripts(&self.redis, &mut pipe, &self.scripts()).await {
                        Ok(answers) => batch.answered(&answers),
                        // Dropped unanswered: back to the queue.
                        Err(_) => drop(batch),
                    }
                }
                Next::Sleep(until) => tokio::time::sleep_until(until).await,
                Next::Idle => self.wake.notified().await,
            }
        }
    }
}

/// Writes taken from the queue to send in one pipeline. Dropped without an
/// answer (Redis away, or the reserve carrying it cut by its caller's
/// deadline), they go back to the front of the queue.
pub(super) struct Batch<'a> {
    outbox: &'a Outbox,
    jobs: Vec<Job>,
}

impl Batch<'_> {
    /// Adds the writes to `pipe`, before anything else it carries.
    pub(super) fn add_to(&self, pipe: &mut Pipeline) {
        for job in &self.jobs {
            pipe.add_command(self.outbox.command(&job.write));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// The pipeline's answers, the batch's first.
    pub(super) fn answered(mut self, answers: &[RedisResult<Value>]) {
        let jobs = std::mem::take(&mut self.jobs);
        self.outbox.finish(jobs, Some(answers));
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let jobs = std::mem::take(&mut self.jobs);
        if !jobs.is_empty() {
            self.outbox.finish(jobs, None);
        }
    }
}
