//! The task state machine. A task's state is computed from the time elapsed
//! since its creation, so nothing has to run in the background to move it;
//! only a manual completion is stored.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::config::StateTimings;
use super::scenarios::{CallbackMode, Outcome, POLL_FAULT_READS, Scenario};

/// The only model this simulator accepts.
pub const MODEL: &str = "hailuo/02-image-to-video-standard";

/// failCode / failMsg of a `[sim:fail]` task and the default manual failure.
pub const DEFAULT_FAIL_CODE: &str = "500";
pub const DEFAULT_FAIL_MSG: &str =
    "Your image was rejected by content moderation. Please try a different image.";

/// kie.ai task states, spelled as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Waiting,
    Queuing,
    Generating,
    Success,
    Fail,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queuing => "queuing",
            Self::Generating => "generating",
            Self::Success => "success",
            Self::Fail => "fail",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Fail)
    }
}

/// Credits one task costs, by duration and resolution (roughly kie.ai's
/// price ratios for Hailuo 02 standard): 512P 6 s = 12, 512P 10 s = 20,
/// 768P 6 s = 30, 768P 10 s = 50.
pub fn cost(duration: &str, resolution: &str) -> f64 {
    match (duration, resolution) {
        ("6", "512P") => 12.0,
        ("10", "512P") => 20.0,
        ("6", _) => 30.0,
        _ => 50.0,
    }
}

/// How a task ended when something other than the clock ended it.
#[derive(Clone, Debug)]
pub struct Ending {
    pub state: TaskState,
    pub fail_code: Option<String>,
    pub fail_msg: Option<String>,
    pub at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    /// The createTask body, re-serialised: recordInfo's `param`.
    pub param: String,
    pub callback_url: Option<String>,
    pub callback_mode: CallbackMode,
    pub outcome: Outcome,
    pub timings: StateTimings,
    pub created: Instant,
    pub create_ms: u64,
    /// Live, `creditsConsumed` is a float.
    pub credits: f64,
    pub ending: Option<Ending>,
    pub poll_fault: Option<u16>,
    pub poll_faults_left: u32,
    /// Set once the end-of-task callback has been handed to delivery, so a
    /// manual completion and the timer never both send it.
    pub callback_sent: bool,
}

/// A task's state at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: TaskState,
    pub update_ms: u64,
    pub complete_ms: Option<u64>,
    pub fail_code: Option<String>,
    pub fail_msg: Option<String>,
    pub progress: u8,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        param: String,
        callback_url: Option<String>,
        scenario: Scenario,
        timings: StateTimings,
        created: Instant,
        create_ms: u64,
        credits: f64,
    ) -> Self {
        let timings = if scenario.slow {
            timings.scaled(10)
        } else {
            timings
        };
        Self {
            id,
            param,
            callback_url,
            callback_mode: scenario.callback,
            outcome: scenario.outcome,
            timings,
            created,
            create_ms,
            credits,
            ending: None,
            poll_fault: scenario.poll_fault,
            poll_faults_left: if scenario.poll_fault.is_some() {
                POLL_FAULT_READS
            } else {
                0
            },
            callback_sent: false,
        }
    }

    /// When the clock alone ends this task, counted from its creation.
    pub fn natural_end(&self) -> Option<std::time::Duration> {
        match self.outcome {
            Outcome::Success | Outcome::Fail => Some(self.timings.total()),
            Outcome::Never | Outcome::Manual => None,
        }
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        if let Some(ending) = &self.ending {
            return Snapshot {
                state: ending.state,
                update_ms: ending.at_ms,
                complete_ms: Some(ending.at_ms),
                fail_code: ending.fail_code.clone(),
                fail_msg: ending.fail_msg.clone(),
                progress: 100,
            };
        }
        let elapsed = now.saturating_duration_since(self.created);
        let t = self.timings;
        let queuing_at = t.waiting;
        let generating_at = queuing_at + t.queuing;
        let end_at = generating_at + t.generating;
        let ms = |d: std::time::Duration| self.create_ms + millis(d);
        let (state, since) = if elapsed < queuing_at {
            (TaskState::Waiting, std::time::Duration::ZERO)
        } else if elapsed < generating_at {
            (TaskState::Queuing, queuing_at)
        } else if elapsed < end_at || self.natural_end().is_none() {
            (TaskState::Generating, generating_at)
        } else if self.outcome == Outcome::Fail {
            (TaskState::Fail, end_at)
        } else {
            (TaskState::Success, end_at)
        };
        let progress = match state {
            TaskState::Waiting | TaskState::Queuing => 0,
            TaskState::Generating => {
                let done = elapsed.saturating_sub(generating_at).as_secs_f64();
                let whole = t.generating.as_secs_f64().max(f64::EPSILON);
                // Never 100 before the end: a task held in generating sits at 99.
                ((done / whole * 100.0) as u8).min(99)
            }
            TaskState::Success | TaskState::Fail => 100,
        };
        let failed = state == TaskState::Fail;
        Snapshot {
            state,
            update_ms: ms(since),
            complete_ms: state.is_terminal().then(|| ms(end_at)),
            fail_code: failed.then(|| DEFAULT_FAIL_CODE.to_owned()),
            fail_msg: failed.then(|| DEFAULT_FAIL_MSG.to_owned()),
            progress,
        }
    }

    /// recordInfo's `data` object at `now`.
    pub fn record(&self, now: Instant, base_url: &str) -> Value {
        let snap = self.snapshot(now);
        let success = snap.state == TaskState::Success;
        let result_json =
            success.then(|| json!({ "resultUrls": [video_url(base_url, &self.id)] }).to_string());
        let cost_time = match (success, snap.complete_ms) {
            (true, Some(done)) => Some(done.saturating_sub(self.create_ms)),
            _ => None,
        };
        json!({
            "taskId": self.id,
            "model": MODEL,
            "state": snap.state.as_str(),
            "param": self.param,
            "resultJson": result_json,
            "failCode": snap.fail_code,
            "failMsg": snap.fail_msg,
            "costTime": cost_time,
            "completeTime": snap.complete_ms,
            "createTime": self.create_ms,
            "updateTime": snap.update_ms,
            // Not in kie.ai's docs but seen live: clients must tolerate extras.
            "progress": snap.progress,
            // kie.ai charges a task that succeeds, not one that fails.
            "creditsConsumed": if snap.state == TaskState::Fail { 0.0 } else { self.credits },
        })
    }
}

/// Where a finished task's video is served: the simulator itself.
pub fn video_url(base_url: &str, task_id: &str) -> String {
    format!("{base_url}/sim/videos/{task_id}.mp4")
}

pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn task(scenario: Scenario, created: Instant) -> Task {
        let timings = StateTimings {
            waiting: Duration::from_millis(100),
            queuing: Duration::from_millis(200),
            generating: Duration::from_millis(1000),
        };
        Task::new(
            "task_hailuo_1".into(),
            "{}".into(),
            None,
            scenario,
            timings,
            created,
            1_000_000,
            30.0,
        )
    }

    #[test]
    fn states_follow_the_clock() {
        let t0 = Instant::now();
        let task = task(Scenario::default(), t0);
        let at = |ms| task.snapshot(t0 + Duration::from_millis(ms));
        assert_eq!(at(0).state, TaskState::Waiting);
        assert_eq!(at(150).state, TaskState::Queuing);
        assert_eq!(at(150).update_ms, 1_000_100);
        let generating = at(800);
        assert_eq!(generating.state, TaskState::Generating);
        assert_eq!(generating.progress, 50);
        assert_eq!(generating.complete_ms, None);
        let done = at(1300);
        assert_eq!(done.state, TaskState::Success);
        assert_eq!(done.complete_ms, Some(1_001_300));
        assert_eq!(done.fail_code, None);
    }

    #[test]
    fn slow_tasks_take_ten_times_longer_and_held_tasks_never_end() {
        let t0 = Instant::now();
        let slow = task(
            Scenario {
                slow: true,
                ..Scenario::default()
            },
            t0,
        );
        assert_eq!(
            slow.snapshot(t0 + Duration::from_millis(1300)).state,
            TaskState::Queuing
        );
        for outcome in [Outcome::Never, Outcome::Manual] {
            let held = task(
                Scenario {
                    outcome,
                    ..Scenario::default()
                },
                t0,
            );
            let snap = held.snapshot(t0 + Duration::from_secs(3600));
            assert_eq!(snap.state, TaskState::Generating);
            assert_eq!(snap.progress, 99);
        }
    }

    #[test]
    fn failing_tasks_carry_a_reason_and_no_result() {
        let t0 = Instant::now();
        let failing = task(
            Scenario {
                outcome: Outcome::Fail,
                ..Scenario::default()
            },
            t0,
        );
        let record = failing.record(t0 + Duration::from_secs(2), "http://sim");
        assert_eq!(record["state"], "fail");
        assert_eq!(record["failCode"], DEFAULT_FAIL_CODE);
        assert_eq!(record["resultJson"], Value::Null);
        assert_eq!(record["costTime"], Value::Null);
    }

    #[test]
    fn prices_follow_duration_and_resolution() {
        assert_eq!(cost("6", "512P"), 12.0);
        assert_eq!(cost("10", "512P"), 20.0);
        assert_eq!(cost("6", "768P"), 30.0);
        assert_eq!(cost("10", "768P"), 50.0);
    }
}
