//! The human command-line client: `generate`, `get`, `watch` and
//! `download` against a running gateway, with the gateway's errors spelled
//! out (code, message, ErrorInfo reason, BadRequest field violations,
//! RetryInfo delay).
//!
//! Exit codes: 0 success, 1 an RPC, connection or download error, 2 a usage
//! error (clap's, or an `--image` file that cannot be read or is over
//! 10 MiB), 3 a task that ended FAILED (also `download` of a FAILED task),
//! 130 a watch stopped with Ctrl-C. A watch that ends before its task does
//! (Ctrl-C, the gateway shutting down, a broken connection) prints the
//! command that follows the task again.

mod image_arg;
mod video_file;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, ValueEnum};
use futures_util::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use tonic_types::StatusExt;

use crate::error::code_name;
use crate::pb::GetDownloadLinksRequest;
use crate::pb::video_generation_client::VideoGenerationClient;
use crate::pb::{
    CreateTaskRequest, GenerateVideoRequest, GetTaskRequest, Resolution, Task, TaskState,
    VideoDuration, WatchTaskRequest,
};
use image_arg::Frame;

/// Exit code of a task that ended FAILED.
const EXIT_TASK_FAILED: u8 = 3;
/// Exit code of a usage error, as clap's own.
const EXIT_USAGE: u8 = 2;
/// Exit code of a watch stopped with Ctrl-C, as a shell's for SIGINT.
const EXIT_INTERRUPTED: u8 = 130;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of unary calls; a watch has none (generation takes minutes).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the gateway is.
#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    /// The gateway's gRPC address [default: $HAILUO_GATEWAY_ADDR, else
    /// http://localhost:50051]
    // Not clap's `env`: clap lists an argument set from the environment in
    // the usage line of a missing-argument error, as if it were required.
    #[arg(long, value_name = "URL")]
    addr: Option<String>,

    /// PEM CA bundle that signs the gateway's certificate, for an
    /// https:// address (trusted beside the system's roots).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate for a gateway that asks for one (mutual
    /// TLS); with --key-file.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,

    /// PEM private key of --cert-file.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    /// `--addr`, else a non-empty `HAILUO_GATEWAY_ADDR`, else the default.
    pub(crate) fn addr(&self) -> String {
        self.addr
            .clone()
            .or_else(|| std::env::var(ADDR_VAR).ok().filter(|a| !a.is_empty()))
            .unwrap_or_else(|| DEFAULT_ADDR.to_owned())
    }

    /// TLS for an https:// address: the system's roots, `--ca-file` and,
    /// for mutual TLS, `--cert-file` and `--key-file`.
    fn tls(&self) -> Result<ClientTlsConfig, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

const ADDR_VAR: &str = "HAILUO_GATEWAY_ADDR";
const DEFAULT_ADDR: &str = "http://localhost:50051";

/// `generate`: create a task, optionally wait for its video.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What the video should show.
    #[arg(long)]
    pub(crate) prompt: String,
    /// The first frame: a local JPEG, PNG or WebP file of at most 10 MiB
    /// (sent to the gateway, which uploads it to kie.ai), or an absolute
    /// http(s) URL.
    #[arg(long, visible_alias = "image-url", value_name = "PATH_OR_URL")]
    pub(crate) image: String,
    /// The last frame, as --image. Optional.
    #[arg(long, visible_alias = "end-image-url", value_name = "PATH_OR_URL")]
    pub(crate) end_image: Option<String>,
    /// Video length in seconds (default 10).
    #[arg(long, value_enum)]
    pub(crate) duration: Option<DurationArg>,
    /// Let kie.ai rewrite the prompt (`--prompt-optimizer` or
    /// `--prompt-optimizer=false`; unset leaves kie.ai's default).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) prompt_optimizer: Option<bool>,
    /// Video resolution (default 768p).
    #[arg(long, value_enum)]
    pub(crate) resolution: Option<ResolutionArg>,
    /// Follow the task until it ends, then print its video URLs (one
    /// GenerateVideo call).
    #[arg(long)]
    pub(crate) wait: bool,
    /// Idempotency key: running the same command again with it (after a
    /// broken connection, say) gets the same task instead of a second
    /// video.
    #[arg(long)]
    pub(crate) request_id: Option<String>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

/// `get` and `watch`: one existing task.
#[derive(Args, Debug)]
pub struct TaskArgs {
    /// The id `generate` printed.
    pub(crate) task_id: String,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum DurationArg {
    #[value(name = "6")]
    Six,
    #[value(name = "10")]
    Ten,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ResolutionArg {
    #[value(name = "512p", alias = "512P")]
    R512p,
    #[value(name = "768p", alias = "768P")]
    R768p,
}

/// Why a command failed; each kind has its own exit code and rendering.
enum Failure {
    Connect(String),
    /// A bad argument found after clap's checks (an unreadable --image).
    Usage(String),
    /// Fetching or saving a video.
    Download(String),
    Rpc(Status),
    TaskFailed(Task),
    StreamEnded,
    /// Ctrl-C during a watch.
    Interrupted,
    /// A watch that ended (`cause`) before its task did; the task goes on
    /// and `watch` follows it again.
    Detached {
        cause: Box<Failure>,
        task_id: String,
        addr: String,
    },
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::TaskFailed(_) => ExitCode::from(EXIT_TASK_FAILED),
            Self::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
            Self::Detached { cause, .. } => cause.exit_code(),
            Self::Usage(_) => ExitCode::from(EXIT_USAGE),
            Self::Rpc(status) if names_a_failed_task(status) => ExitCode::from(EXIT_TASK_FAILED),
            _ => ExitCode::FAILURE,
        }
    }

    fn render(&self) -> String {
        match self {
            Self::Connect(e) | Self::Usage(e) | Self::Download(e) => format!("error: {e}"),
            Self::Rpc(status) => render_status(status),
            Self::TaskFailed(task) => format!(
                "error: task {} FAILED: fail_code {}: {}",
                task.task_id,
                if task.fail_code.is_empty() {
                    "-"
                } else {
                    &task.fail_code
                },
                task.fail_message
            ),
            Self::StreamEnded => {
                "error: the watch ended before the task did: run `watch` again".into()
            }
            Self::Interrupted => "interrupted".into(),
            Self::Detached {
                cause,
                task_id,
                addr,
            } => {
                let cause = match cause.as_ref() {
                    Self::StreamEnded => "error: the watch ended before the task did".into(),
                    cause => cause.render(),
                };
                format!(
                    "{cause}\nthe task goes on; follow it again with:\n  \
                     hailuo-gateway watch {task_id} --addr {addr}"
                )
            }
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

/// Runs `generate`.
pub async fn generate(args: GenerateArgs) -> ExitCode {
    finish(run_generate(args).await)
}

/// Runs `get`.
pub async fn get(args: TaskArgs) -> ExitCode {
    finish(run_get(args).await)
}

/// Runs `watch`.
pub async fn watch(args: TaskArgs) -> ExitCode {
    finish(run_watch(args).await)
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.render());
            failure.exit_code()
        }
    }
}

async fn run_generate(args: GenerateArgs) -> Result<(), Failure> {
    let (image_url, image_data) = Frame::read("--image", &args.image)
        .map_err(Failure::Usage)?
        .into_fields();
    let (end_image_url, end_image_data) = match &args.end_image {
        Some(value) => Frame::read("--end-image", value)
            .map_err(Failure::Usage)?
            .into_fields(),
        None => Default::default(),
    };
    let mut client = connect(&args.connect).await?;
    let request = CreateTaskRequest {
        prompt: args.prompt,
        prompt_optimizer: args.prompt_optimizer,
        image_url,
        image_data,
        end_image_url,
        end_image_data,
        duration: args
            .duration
            .map_or(VideoDuration::Unspecified, |d| match d {
                DurationArg::Six => VideoDuration::VideoDuration6Seconds,
                DurationArg::Ten => VideoDuration::VideoDuration10Seconds,
            }) as i32,
        resolution: args
            .resolution
            .map_or(Resolution::Unspecified, |r| match r {
                ResolutionArg::R512p => Resolution::Resolution512p,
                ResolutionArg::R768p => Resolution::Resolution768p,
            }) as i32,
        request_id: args.request_id.unwrap_or_default(),
        ..Default::default()
    };
    if !args.wait {
        let task_id = client
            .create_task(unary(request))
            .await?
            .into_inner()
            .task_id;
        println!("{task_id}");
        return Ok(());
    }
    let mut stream = client
        .generate_video(GenerateVideoRequest {
            create: Some(request),
        })
        .await?
        .into_inner();
    // The first message names the new task, before any state is read.
    let Some(first) = stream.message().await? else {
        return Err(Failure::StreamEnded);
    };
    println!("{}", first.task_id);
    let known = Some(first.task_id.as_str());
    follow(
        stream.map(|m| m.map(|m| m.task)),
        known,
        &args.connect.addr(),
    )
    .await
}

async fn run_get(args: TaskArgs) -> Result<(), Failure> {
    let mut client = connect(&args.connect).await?;
    let task = client
        .get_task(unary(GetTaskRequest {
            task_id: args.task_id,
        }))
        .await?
        .into_inner()
        .task
        .unwrap_or_default();
    print!("{}", describe(&task));
    Ok(())
}

async fn run_watch(args: TaskArgs) -> Result<(), Failure> {
    let mut client = connect(&args.connect).await?;
    let stream = client
        .watch_task(WatchTaskRequest {
            task_id: args.task_id,
        })
        .await?
        .into_inner();
    follow(
        stream.map(|m| m.map(|m| m.task)),
        None,
        &args.connect.addr(),
    )
    .await
}

async fn connect(args: &ConnectArgs) -> Result<VideoGenerationClient<Channel>, Failure> {
    let addr = &args.addr();
    let mut endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| Failure::Connect(format!("bad --addr {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(args.tls().map_err(Failure::Connect)?)
            .map_err(|e| Failure::Connect(format!("TLS for {addr}: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Connect(format!("cannot connect to {addr}: {e}")))?;
    Ok(VideoGenerationClient::new(channel))
}

fn unary<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Follows a task's stream (WatchTask's or GenerateVideo's) to its end
/// with a live progress line (plain lines when stdout is not a terminal),
/// then prints its video URLs. `task_id` is the task when known before its
/// first state (GenerateVideo's first message); `addr` the gateway, for the
/// command that re-attaches when the watch ends first.
async fn follow(
    stream: impl Stream<Item = Result<Option<Task>, Status>> + Unpin,
    task_id: Option<&str>,
    addr: &str,
) -> Result<(), Failure> {
    let mut stream = stream;
    let mut progress = Progress::new();
    let mut last: Option<Task> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let ended = loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = &mut ctrl_c => break Err(Failure::Interrupted),
        };
        match message {
            None => break Ok(()),
            Some(Err(status)) => break Err(Failure::Rpc(status)),
            Some(Ok(None)) => {}
            Some(Ok(Some(task))) => {
                let state = task.state();
                if last.as_ref().map(Task::state) != Some(state) {
                    progress.state(state);
                }
                last = Some(task);
            }
        }
    };
    progress.finish(last.as_ref().map(Task::state));
    // Once the task is known, a watch that ends early leaves it running.
    let known = last
        .as_ref()
        .map(|t| t.task_id.clone())
        .or(task_id.map(str::to_owned));
    let detached = |cause: Failure| match known {
        Some(task_id) => Failure::Detached {
            cause: Box::new(cause),
            task_id,
            addr: addr.to_owned(),
        },
        None => cause,
    };
    if let Err(cause) = ended {
        return Err(detached(cause));
    }
    let Some(task) = last else {
        return Err(detached(Failure::StreamEnded));
    };
    match task.state() {
        TaskState::Succeeded => {
            for url in &task.video_urls {
                println!("{url}");
            }
            Ok(())
        }
        TaskState::Failed => Err(Failure::TaskFailed(task)),
        _ => Err(detached(Failure::StreamEnded)),
    }
}

/// The live state line: an indicatif spinner on a terminal, else one plain
/// line per state change. The state first seen is shown as found, without
/// a time: a watch of a finished task would otherwise say "after 0.0s".
struct Progress {
    started: Instant,
    spinner: Option<ProgressBar>,
    /// Whether the state changed while it was watched.
    changed: bool,
    seen: bool,
}

impl Progress {
    fn new() -> Self {
        let spinner = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                bar.set_style(style);
            }
            bar.set_message("watching");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            started: Instant::now(),
            spinner,
            changed: false,
            seen: false,
        }
    }

    fn state(&mut self, state: TaskState) {
        self.changed = std::mem::replace(&mut self.seen, true);
        match &self.spinner {
            Some(bar) => bar.set_message(state_name(state)),
            None => println!("{}", self.line(state)),
        }
    }

    fn line(&self, state: TaskState) -> String {
        let name = state_name(state);
        if self.changed {
            format!(
                "state {name} after {:.1}s",
                self.started.elapsed().as_secs_f64()
            )
        } else {
            format!("state {name}")
        }
    }

    /// Leaves the last state on screen once the spinner is gone.
    fn finish(&self, last: Option<TaskState>) {
        let Some(bar) = &self.spinner else { return };
        bar.finish_and_clear();
        if let Some(state) = last {
            println!("{}", self.line(state));
        }
    }
}

/// A task as `key: value` lines.
fn describe(task: &Task) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "task_id: {}", task.task_id);
    let _ = writeln!(out, "state: {}", state_name(task.state()));
    let _ = writeln!(out, "model: {}", task.model);
    for url in &task.video_urls {
        let _ = writeln!(out, "video_url: {url}");
    }
    if !task.fail_code.is_empty() || !task.fail_message.is_empty() {
        let _ = writeln!(out, "fail_code: {}", task.fail_code);
        let _ = writeln!(out, "fail_message: {}", task.fail_message);
    }
    for (name, time) in [
        ("create_time", task.create_time),
        ("update_time", task.update_time),
        ("complete_time", task.complete_time),
    ] {
        if let Some(time) = time.and_then(|t| SystemTime::try_from(t).ok()) {
            let _ = writeln!(out, "{name}: {}", humantime::format_rfc3339_seconds(time));
        }
    }
    if let Some(cost) = task.cost_time.and_then(|d| Duration::try_from(d).ok()) {
        let _ = writeln!(out, "cost_time: {}", humantime::format_duration(cost));
    }
    out
}

/// The proto's name without its `TASK_STATE_` prefix.
fn state_name(state: TaskState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("TASK_STATE_").unwrap_or(name)
}

/// A status with its `google.rpc` details, one line each.
fn render_status(status: &Status) -> String {
    let mut out = format!("error: {}: {}", code_name(status.code()), status.message());
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        let _ = write!(out, "\n  reason: {} (domain {})", info.reason, info.domain);
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        for (key, value) in metadata {
            let _ = write!(out, "\n  {key}: {value}");
        }
    }
    if let Some(bad) = details.bad_request() {
        for violation in &bad.field_violations {
            let _ = write!(
                out,
                "\n  field {}: {}",
                violation.field, violation.description
            );
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        let _ = write!(
            out,
            "\n  retry after: {}",
            humantime::format_duration(delay)
        );
    }
    out
}

// === download ===

/// `download`: save a finished task's video.
#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The id `generate` printed.
    pub(crate) task_id: String,
    /// Where to save the video (default TASK_ID.mp4). A task with several
    /// videos saves the others beside it as NAME-2.mp4, NAME-3.mp4, ...
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

/// Runs `download`.
pub async fn download(args: DownloadArgs) -> ExitCode {
    finish(run_download(args).await)
}

/// Asks for fresh links (a task's recorded URLs expire after about 24 h),
/// then saves each video and prints where.
async fn run_download(args: DownloadArgs) -> Result<(), Failure> {
    let mut client = connect(&args.connect).await?;
    let links = client
        .get_download_links(unary(GetDownloadLinksRequest {
            task_id: args.task_id.clone(),
        }))
        .await?
        .into_inner()
        .links;
    if links.is_empty() {
        return Err(Failure::Download(format!(
            "task {} has no video",
            args.task_id
        )));
    }
    // The gateway accepted the task id, so it is safe as a file name.
    let output = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.mp4", args.task_id)));
    for (index, link) in links.iter().enumerate() {
        let path = numbered(&output, index);
        video_file::save(&link.url, &path)
            .await
            .map_err(Failure::Download)?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `path` for the first video, `stem-N.ext` for the Nth after it.
fn numbered(path: &Path, index: usize) -> PathBuf {
    if index == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{}.{}", index + 1, ext.to_string_lossy()),
        None => format!("{stem}-{}", index + 1),
    };
    path.with_file_name(name)
}

/// GetDownloadLinks' answer for a task that ended FAILED: exit as a failed
/// task does.
fn names_a_failed_task(status: &Status) -> bool {
    status.get_error_details().error_info().is_some_and(|info| {
        info.reason == "TASK_NOT_SUCCEEDED"
            && info.metadata.get("state").map(String::as_str)
                == Some(TaskState::Failed.as_str_name())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use tonic::Code;

    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    #[test]
    fn a_rendered_status_names_code_reason_fields_and_retry_delay() {
        let mut details = ErrorDetails::new();
        details.set_error_info("INVALID_REQUEST", "hailuo-gateway", HashMap::new());
        details.set_bad_request(vec![FieldViolation::new("prompt", "prompt is required")]);
        details.set_retry_info(Some(Duration::from_secs(3)));
        let status = Status::with_error_details(Code::InvalidArgument, "invalid", details);

        let text = render_status(&status);

        assert!(
            text.starts_with("error: INVALID_ARGUMENT: invalid"),
            "{text}"
        );
        assert!(
            text.contains("reason: INVALID_REQUEST (domain hailuo-gateway)"),
            "{text}"
        );
        assert!(text.contains("field prompt: prompt is required"), "{text}");
        assert!(text.contains("retry after: 3s"), "{text}");
    }

    #[test]
    fn a_failed_task_exits_with_its_own_code_and_shows_fail_code() {
        let task = Task {
            task_id: "t1".into(),
            state: TaskState::Failed as i32,
            fail_code: "500".into(),
            fail_message: "rejected".into(),
            ..Default::default()
        };
        let failure = Failure::TaskFailed(task);

        assert_eq!(failure.exit_code(), ExitCode::from(EXIT_TASK_FAILED));
        assert_eq!(
            failure.render(),
            "error: task t1 FAILED: fail_code 500: rejected"
        );
    }

    #[test]
    fn download_of_a_failed_task_exits_as_a_failed_task() {
        let status = |state: &str| {
            let mut details = ErrorDetails::new();
            details.set_error_info(
                "TASK_NOT_SUCCEEDED",
                "hailuo-gateway",
                HashMap::from([("state".to_string(), state.to_string())]),
            );
            Failure::Rpc(Status::with_error_details(
                Code::FailedPrecondition,
                "no video",
                details,
            ))
        };

        assert_eq!(
            status("TASK_STATE_FAILED").exit_code(),
            ExitCode::from(EXIT_TASK_FAILED)
        );
        assert_eq!(
            status("TASK_STATE_GENERATING").exit_code(),
            ExitCode::FAILURE
        );
    }

    #[test]
    fn further_videos_are_numbered_beside_the_first() {
        assert_eq!(
            numbered(Path::new("out/v.mp4"), 0),
            PathBuf::from("out/v.mp4")
        );
        assert_eq!(
            numbered(Path::new("out/v.mp4"), 1),
            PathBuf::from("out/v-2.mp4")
        );
        assert_eq!(numbered(Path::new("v"), 2), PathBuf::from("v-3"));
    }

    #[test]
    fn a_watch_that_ends_before_its_task_says_how_to_follow_it_again() {
        let mut details = ErrorDetails::new();
        details.set_error_info("SHUTTING_DOWN", "hailuo-gateway", HashMap::new());
        let shutdown = Status::with_error_details(Code::Unavailable, "shutting down", details);
        let detached = |cause| Failure::Detached {
            cause: Box::new(cause),
            task_id: "t1".into(),
            addr: "http://gw:50051".into(),
        };
        let follow_again = "\nthe task goes on; follow it again with:\n  \
                            hailuo-gateway watch t1 --addr http://gw:50051";

        let text = detached(Failure::Rpc(shutdown)).render();
        assert!(
            text.starts_with("error: UNAVAILABLE: shutting down"),
            "{text}"
        );
        assert!(text.ends_with(follow_again), "{text}");
        assert_eq!(
            detached(Failure::Interrupted).render(),
            format!("interrupted{follow_again}")
        );
        assert_eq!(
            detached(Failure::Interrupted).exit_code(),
            ExitCode::from(EXIT_INTERRUPTED)
        );
        assert_eq!(
            detached(Failure::StreamEnded).render(),
            format!("error: the watch ended before the task did{follow_again}")
        );
    }

    #[test]
    fn the_first_state_is_shown_as_found_and_changes_with_their_time() {
        let mut progress = Progress {
            started: Instant::now(),
            spinner: None,
            changed: false,
            seen: false,
        };
        progress.state(TaskState::Succeeded);
        assert_eq!(progress.line(TaskState::Succeeded), "state SUCCEEDED");
        progress.state(TaskState::Failed);
        assert!(
            progress
                .line(TaskState::Failed)
                .starts_with("state FAILED after "),
            "{}",
            progress.line(TaskState::Failed)
        );
    }

    #[test]
    fn state_names_drop_the_enum_prefix() {
        assert_eq!(state_name(TaskState::Generating), "GENERATING");
    }
}
