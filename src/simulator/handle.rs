//! One simulator's state and the cheap handle every part of it (and in-process
//! tests) reaches it through. No globals: two simulators never share anything.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::callbacks::{self, Callback};
use super::config::SimulatorConfig;
use super::files::FileStore;
use super::scenarios::CallbackMode;
use super::scenarios::Scenario;
use super::tasks::{self, DEFAULT_FAIL_CODE, DEFAULT_FAIL_MSG, Ending, Task, TaskState};

/// The endpoints (and callback events) the simulator counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateTask,
    RecordInfo,
    Credit,
    DownloadUrl,
    /// Result video downloads from `/sim/videos/...`.
    Video,
    /// The upload host's three upload endpoints.
    FileStreamUpload,
    FileBase64Upload,
    FileUrlUpload,
    /// Uploaded files served from the upload host's `/files/...`.
    File,
    /// Every callback POST tried, failed or not.
    CallbackAttempt,
    /// Callback POSTs answered 2xx.
    CallbackDelivered,
}

/// Per-endpoint counters, as `GET /sim/counts` shows them. API requests are
/// counted on arrival, faulted ones included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub create_task: u64,
    pub record_info: u64,
    pub credit: u64,
    pub download_url: u64,
    pub video: u64,
    pub file_stream_upload: u64,
    pub file_base64_upload: u64,
    pub file_url_upload: u64,
    pub file: u64,
    pub callback_attempts: u64,
    pub callbacks_delivered: u64,
}

impl Counts {
    pub fn get(&self, endpoint: Endpoint) -> u64 {
        *self.slot(endpoint)
    }

    fn bump(&mut self, endpoint: Endpoint) {
        *self.slot_mut(endpoint) += 1;
    }

    fn slot(&self, endpoint: Endpoint) -> &u64 {
        match endpoint {
            Endpoint::CreateTask => &self.create_task,
            Endpoint::RecordInfo => &self.record_info,
            Endpoint::Credit => &self.credit,
            Endpoint::DownloadUrl => &self.download_url,
            Endpoint::Video => &self.video,
            Endpoint::FileStreamUpload => &self.file_stream_upload,
            Endpoint::FileBase64Upload => &self.file_base64_upload,
            Endpoint::FileUrlUpload => &self.file_url_upload,
            Endpoint::File => &self.file,
            Endpoint::CallbackAttempt => &self.callback_attempts,
            Endpoint::CallbackDelivered => &self.callbacks_delivered,
        }
    }

    fn slot_mut(&mut self, endpoint: Endpoint) -> &mut u64 {
        match endpoint {
            Endpoint::CreateTask => &mut self.create_task,
            Endpoint::RecordInfo => &mut self.record_info,
            Endpoint::Credit => &mut self.credit,
            Endpoint::DownloadUrl => &mut self.download_url,
            Endpoint::Video => &mut self.video,
            Endpoint::FileStreamUpload => &mut self.file_stream_upload,
            Endpoint::FileBase64Upload => &mut self.file_base64_upload,
            Endpoint::FileUrlUpload => &mut self.file_url_upload,
            Endpoint::File => &mut self.file,
            Endpoint::CallbackAttempt => &mut self.callback_attempts,
            Endpoint::CallbackDelivered => &mut self.callbacks_delivered,
        }
    }
}

/// One request received on a kie.ai route. The key itself is never kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// The body parsed as JSON; a non-JSON body is kept as a string, an empty one as null.
    /// An upload's file is shown by its name, type and size, never its bytes
    /// (multipart: `{"uploadPath","fileName","file":{"fileName","contentType","size"}}`;
    /// base64: `base64Data` as `{"chars": N}`).
    pub body: Value,
    /// Whether an `Authorization: Bearer <non-empty>` header came with it.
    pub bearer: bool,
    /// The whole-simulator fault applied to it, if any (`drop`, `html502`, `error500`).
    pub fault: Option<String>,
    pub received_ms: u64,
    /// The W3C `traceparent` header, as sent (a traced gateway sends it on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One callback POST tried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAttempt {
    pub task_id: String,
    pub url: String,
    /// 1 for the first delivery, 2 for the first retry, ...
    pub attempt: u32,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why no answer came, if none did.
    pub error: Option<String>,
    pub signed: bool,
    pub sent_ms: u64,
}

/// How to end a task by hand (`POST /sim/tasks/{id}/complete` takes the same
/// JSON: `{"state":"success"|"fail","failCode":..,"failMsg":..}`, all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Completion {
    #[serde(default)]
    pub state: CompletionState,
    /// Defaults to `"500"` for a failure.
    pub fail_code: Option<String>,
    /// Defaults to a content-moderation message for a failure.
    pub fail_msg: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompletionState {
    #[default]
    Success,
    Fail,
}

impl Completion {
    pub fn success() -> Self {
        Self::default()
    }

    pub fn fail(code: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            state: CompletionState::Fail,
            fail_code: Some(code.into()),
            fail_msg: Some(msg.into()),
        }
    }
}

/// Why a manual completion was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompleteError {
    UnknownTask(String),
    AlreadyEnded { task_id: String, state: String },
}

impl std::fmt::Display for CompleteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownTask(id) => write!(f, "unknown task {id}"),
            Self::AlreadyEnded { task_id, state } => {
                write!(f, "task {task_id} already ended in state {state}")
            }
        }
    }
}

impl std::error::Error for CompleteError {}

/// What a recordInfo read finds.
pub(crate) enum Lookup {
    Found(Value),
    /// A `[sim:poll-*]` task answering its fault code for this read.
    Fault(u16),
    Unknown,
}

/// createTask refused for lack of credits.
pub(crate) struct InsufficientCredits;

/// A cheap, cloneable handle on one simulator's state.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: SimulatorConfig,
    base_url: String,
    upload_base_url: url::Url,
    /// Signs download-url's links; per instance, never shown.
    link_key: [u8; 32],
    /// Uploaded files, apart from the task state: big copies never hold up
    /// task reads.
    files: Mutex<FileStore>,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    state: Mutex<SimState>,
}

/// The request and callback logs keep only this many newest entries, so a
/// long-running sandbox does not grow without bound.
pub const LOG_LIMIT: usize = 10_000;

struct SimState {
    tasks: HashMap<String, Task>,
    requests: VecDeque<RecordedRequest>,
    callbacks: VecDeque<CallbackAttempt>,
    counts: Counts,
    credits: f64,
    next_seq: u64,
    /// Cancelled by a reset (and by shutdown, as its parent): stops the
    /// timers and deliveries of the tasks it forgets.
    epoch: CancellationToken,
}

impl SimHandle {
    pub(crate) fn new(
        config: SimulatorConfig,
        base_url: String,
        upload_base_url: url::Url,
        http: reqwest::Client,
        shutdown: CancellationToken,
    ) -> Self {
        let state = SimState {
            tasks: HashMap::new(),
            requests: VecDeque::new(),
            callbacks: VecDeque::new(),
            counts: Counts::default(),
            credits: config.starting_credits,
            next_seq: 0,
            epoch: shutdown.child_token(),
        };
        Self {
            shared: Arc::new(Shared {
                config,
                base_url,
                upload_base_url,
                link_key: rand::random(),
                files: Mutex::new(FileStore::default()),
                http,
                runtime: tokio::runtime::Handle::current(),
                shutdown,
                state: Mutex::new(state),
            }),
        }
    }

    // === inspection ===

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The upload host, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn upload_base_url(&self) -> String {
        self.shared
            .upload_base_url
            .as_str()
            .trim_end_matches('/')
            .to_owned()
    }

    pub fn config(&self) -> &SimulatorConfig {
        &self.shared.config
    }

    /// The kie.ai API requests received since start or the last reset, oldest
    /// first (the newest `LOG_LIMIT`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.iter().cloned().collect()
    }

    pub fn count(&self, endpoint: Endpoint) -> u64 {
        self.shared.state.lock().counts.get(endpoint)
    }

    pub fn counts(&self) -> Counts {
        self.shared.state.lock().counts
    }

    /// The callback POSTs tried, oldest first (the newest `LOG_LIMIT`).
    pub fn callbacks(&self) -> Vec<CallbackAttempt> {
        self.shared.state.lock().callbacks.iter().cloned().collect()
    }

    /// The balance `GET /api/v1/chat/credit` shows.
    pub fn credits(&self) -> f64 {
        self.shared.state.lock().credits
    }

    /// The task as recordInfo's `data` would show it now (no fault, not counted).
    pub fn task(&self, task_id: &str) -> Option<Value> {
        let state = self.shared.state.lock();
        let task = state.tasks.get(task_id)?;
        Some(task.record(Instant::now(), self.base_url()))
    }

    // === control ===

    /// Sets the balance, e.g. to 0 to see createTask answer 402.
    pub fn set_credits(&self, credits: f64) {
        self.shared.state.lock().credits = credits;
    }

    /// Forgets tasks, uploaded files, requests, callbacks and counts, restores
    /// the credits and cancels pending callbacks.
    pub fn reset(&self) {
        self.shared.files.lock().clear();
        let mut state = self.shared.state.lock();
        state.tasks.clear();
        state.requests.clear();
        state.callbacks.clear();
        state.counts = Counts::default();
        state.credits = self.shared.config.starting_credits;
        state.epoch.cancel();
        state.epoch = self.shared.shutdown.child_token();
    }

    /// Ends a task that has not ended yet and sends its callback at once.
    /// Returns the task as recordInfo now shows it.
    pub fn complete(&self, task_id: &str, completion: Completion) -> Result<Value, CompleteError> {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        let epoch = state.epoch.clone();
        let task = state
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| CompleteError::UnknownTask(task_id.to_owned()))?;
        let current = task.snapshot(now).state;
        if current.is_terminal() {
            return Err(CompleteError::AlreadyEnded {
                task_id: task_id.to_owned(),
                state: current.as_str().to_owned(),
            });
        }
        task.ending = Some(match completion.state {
            CompletionState::Success => Ending {
                state: TaskState::Success,
                fail_code: None,
                fail_msg: None,
                at_ms: tasks::now_ms(),
            },
            CompletionState::Fail => Ending {
                state: TaskState::Fail,
                fail_code: Some(
                    completion
                        .fail_code
                        .unwrap_or_else(|| DEFAULT_FAIL_CODE.to_owned()),
                ),
                fail_msg: Some(
                    completion
                        .fail_msg
                        .unwrap_or_else(|| DEFAULT_FAIL_MSG.to_owned()),
                ),
                at_ms: tasks::now_ms(),
            },
        });
        let record = task.record(now, &self.shared.base_url);
        let callback = take_callback(task, now, &self.shared.base_url);
        drop(state);
        if let Some(callback) = callback {
            callbacks::spawn_delivery(self.clone(), task_id.to_owned(), callback, epoch);
        }
        Ok(record)
    }

    // === used by the API handlers ===

    pub(crate) fn create_task(
        &self,
        body: &Value,
        callback_url: Option<String>,
        scenario: Scenario,
        cost: f64,
    ) -> Result<String, InsufficientCredits> {
        let mut state = self.shared.state.lock();
        if state.credits < cost {
            return Err(InsufficientCredits);
        }
        state.credits -= cost;
        state.next_seq += 1;
        let create_ms = tasks::now_ms();
        // kie.ai ids are `task_hailuo_` + a ms timestamp; the sequence keeps
        // ids unique within an instance, resets included.
        let id = format!("task_hailuo_{create_ms}{:03}", state.next_seq % 1000);
        let created = Instant::now();
        let task = Task::new(
            id.clone(),
            body.to_string(),
            callback_url,
            scenario,
            self.shared.config.timings,
            created,
            create_ms,
            cost,
        );
        let timer = match (&task.callback_url, task.natural_end()) {
            (Some(_), Some(after)) => Some(created + after),
            _ => None,
        };
        state.tasks.insert(id.clone(), task);
        let epoch = state.epoch.clone();
        drop(state);
        if let Some(deadline) = timer {
            callbacks::spawn_timer(self.clone(), id.clone(), deadline, epoch);
        }
        Ok(id)
    }

    pub(crate) fn lookup(&self, task_id: &str) -> Lookup {
        let mut state = self.shared.state.lock();
        let Some(task) = state.tasks.get_mut(task_id) else {
            return Lookup::Unknown;
        };
        if let (Some(code), true) = (task.poll_fault, task.poll_faults_left > 0) {
            task.poll_faults_left -= 1;
            return Lookup::Fault(code);
        }
        Lookup::Found(task.record(Instant::now(), &self.shared.base_url))
    }

    /// When a task's video was made (Unix ms): only a successful task has one.
    pub(crate) fn video_made_ms(&self, task_id: &str) -> Option<u64> {
        let state = self.shared.state.lock();
        let snapshot = state.tasks.get(task_id)?.snapshot(Instant::now());
        (snapshot.state == TaskState::Success)
            .then_some(snapshot.complete_ms)
            .flatten()
    }

    /// Counts a download of something the simulator serves outside `/api/`.
    pub(crate) fn count_download(&self, endpoint: Endpoint) {
        self.shared.state.lock().counts.bump(endpoint);
    }

    pub(crate) fn files(&self) -> parking_lot::MutexGuard<'_, FileStore> {
        self.shared.files.lock()
    }

    pub(crate) fn upload_base(&self) -> &url::Url {
        &self.shared.upload_base_url
    }

    pub(crate) fn link_key(&self) -> &[u8; 32] {
        &self.shared.link_key
    }

    pub(crate) fn record_request(&self, endpoint: Option<Endpoint>, request: RecordedRequest) {
        let mut state = self.shared.state.lock();
        if let Some(endpoint) = endpoint {
            state.counts.bump(endpoint);
        }
        push_bounded(&mut state.requests, request);
    }

    /// Called by the timer when a task ends on its own: the callback to send, once.
    pub(crate) fn take_ended_callback(&self, task_id: &str) -> Option<Callback> {
        let mut state = self.shared.state.lock();
        let task = state.tasks.get_mut(task_id)?;
        take_callback(task, Instant::now(), &self.shared.base_url)
    }

    pub(crate) fn record_callback(&self, attempt: CallbackAttempt, delivered: bool) {
        let mut state = self.shared.state.lock();
        state.counts.bump(Endpoint::CallbackAttempt);
        if delivered {
            state.counts.bump(Endpoint::CallbackDelivered);
        }
        push_bounded(&mut state.callbacks, attempt);
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.runtime
    }
}

fn push_bounded<T>(log: &mut VecDeque<T>, entry: T) {
    if log.len() >= LOG_LIMIT {
        log.pop_front();
    }
    log.push_back(entry);
}

/// The callback for a task that has ended, unless already sent or not wanted.
fn take_callback(task: &mut Task, now: Instant, base_url: &str) -> Option<Callback> {
    if task.callback_sent || !task.snapshot(now).state.is_terminal() {
        return None;
    }
    let url = task.callback_url.clone()?;
    task.callback_sent = true;
    let copies = match task.callback_mode {
        CallbackMode::Once => 1,
        CallbackMode::Duplicate => 2,
        CallbackMode::Lost => return None,
    };
    Some(Callback {
        url,
        body: callbacks::body(task.record(now, base_url)),
        copies,
    })
}
