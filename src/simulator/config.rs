//! Simulator settings, and the clap arguments of the standalone
//! `hailuo-gateway simulate` subcommand that build them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything one simulator instance needs; each instance owns a copy.
#[derive(Clone)]
pub struct SimulatorConfig {
    /// `None`: any non-empty Bearer token is accepted. `Some(k)`: only `k`.
    pub api_key: Option<String>,
    /// When set, callbacks carry `X-Webhook-Timestamp` and `X-Webhook-Signature`.
    pub hmac_key: Option<String>,
    /// Credits at start and after a reset; see `tasks::cost` for the price list.
    /// kie.ai's balance need not be a whole number, so neither is this.
    pub starting_credits: f64,
    /// How long a task stays in each state before the next one.
    pub timings: StateTimings,
    /// Whole-simulator fault injection on the kie.ai API routes, all off by default.
    pub faults: Faults,
    /// Redeliveries after a failed callback (connect error or non-2xx).
    pub callback_retries: u32,
    /// Wait before the first redelivery; doubles on each further one.
    pub callback_backoff: Duration,
    /// How late a `[sim:slow-create]` task's createTask answer comes.
    pub slow_create: Duration,
    /// The file API's and storage host's settings.
    pub files: FileSettings,
    /// How long a task's recorded result URL serves the video after the task
    /// ends (kie.ai: "typically 24 hours"); download-url's links outlive it.
    pub result_url_ttl: Duration,
    /// How long a `download-url` link serves the video (kie.ai: 20 minutes).
    pub download_link_ttl: Duration,
}

/// The upload host: kie.ai's file API and the storage its `downloadUrl`s
/// point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSettings {
    /// Largest file the upload API takes (live: about 100 MB).
    pub max_bytes: u64,
    /// How long an uploaded file is served (kie.ai's pages say 3 days and
    /// 24 hours; the simulator keeps the shorter).
    pub retention: Duration,
    /// Bytes all stored files may take together; the oldest file goes first
    /// when a new one would pass it, so a long sandbox run stays bounded.
    pub storage_bytes: u64,
    /// How long `file-url-upload` waits for the remote file (kie.ai: 30 s).
    pub url_timeout: Duration,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            max_bytes: 100 * MIB,
            retention: Duration::from_secs(24 * 3600),
            storage_bytes: 1024 * MIB,
            url_timeout: Duration::from_secs(30),
        }
    }
}

const MIB: u64 = 1024 * 1024;

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            hmac_key: None,
            starting_credits: 1000.0,
            timings: StateTimings::default(),
            faults: Faults::default(),
            callback_retries: 3,
            callback_backoff: Duration::from_millis(200),
            slow_create: Duration::from_secs(5),
            files: FileSettings::default(),
            result_url_ttl: Duration::from_secs(24 * 3600),
            download_link_ttl: Duration::from_secs(20 * 60),
        }
    }
}

// Hand-written so the keys never reach a log line.
impl fmt::Debug for SimulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .field("starting_credits", &self.starting_credits)
            .field("timings", &self.timings)
            .field("faults", &self.faults)
            .field("callback_retries", &self.callback_retries)
            .field("callback_backoff", &self.callback_backoff)
            .field("slow_create", &self.slow_create)
            .field("files", &self.files)
            .field("result_url_ttl", &self.result_url_ttl)
            .field("download_link_ttl", &self.download_link_ttl)
            .finish()
    }
}

/// Time a task spends in `waiting`, `queuing` and `generating`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTimings {
    pub waiting: Duration,
    pub queuing: Duration,
    pub generating: Duration,
}

impl Default for StateTimings {
    fn default() -> Self {
        Self {
            waiting: Duration::from_secs(1),
            queuing: Duration::from_secs(1),
            generating: Duration::from_secs(3),
        }
    }
}

impl StateTimings {
    /// Time from creation to the end of `generating`.
    pub fn total(&self) -> Duration {
        self.waiting + self.queuing + self.generating
    }

    pub(crate) fn scaled(self, factor: u32) -> Self {
        Self {
            waiting: self.waiting * factor,
            queuing: self.queuing * factor,
            generating: self.generating * factor,
        }
    }
}

/// Faults applied to every request on the kie.ai routes (`/api/...`); the
/// `/sim/...` control routes are never faulted so tests can always inspect.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Added before every answer (and before a dropped connection).
    pub latency: Duration,
    /// Share (0..=1) of requests answered HTTP 500 with a kie-style JSON body.
    pub error_rate: f64,
    /// Share (0..=1) of requests whose TCP connection is closed without an answer.
    pub drop_rate: f64,
    /// Share (0..=1) of requests answered by a CDN-style `text/html` 502 page.
    pub html_502_rate: f64,
}

/// Arguments of `hailuo-gateway simulate`; every flag can also come from the
/// environment variable named next to it.
#[derive(Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (kie.ai's API host).
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Address of the upload host (kie.ai's file API and its file storage),
    /// a host of its own at kie.ai too. Default: --listen's address and the
    /// next port (8091), or a free port when --listen's port is 0.
    #[arg(long, env = "SIM_UPLOAD_LISTEN")]
    pub upload_listen: Option<SocketAddr>,
    /// Only this Bearer key is accepted; without it any non-empty key is.
    #[arg(long, env = "SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sign callbacks with this HMAC-SHA256 key.
    #[arg(long, env = "SIM_HMAC_KEY", hide_env_values = true)]
    pub hmac_key: Option<String>,
    /// Credits at start (and after POST /sim/reset).
    #[arg(long, env = "SIM_CREDITS", default_value_t = 1000.0, value_parser = parse_credits)]
    pub credits: f64,
    /// Time a task stays `waiting` (e.g. 250ms, 2s, 1m).
    #[arg(long, env = "SIM_WAITING", default_value = "1s", value_parser = humantime::parse_duration)]
    pub waiting: Duration,
    /// Time a task stays `queuing`.
    #[arg(long, env = "SIM_QUEUING", default_value = "1s", value_parser = humantime::parse_duration)]
    pub queuing: Duration,
    /// Time a task stays `generating`.
    #[arg(long, env = "SIM_GENERATING", default_value = "3s", value_parser = humantime::parse_duration)]
    pub generating: Duration,
    /// Latency added to every kie.ai API answer.
    #[arg(long, env = "SIM_LATENCY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share (0..=1) of kie.ai API requests answered HTTP 500.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Share (0..=1) of kie.ai API requests whose connection is dropped unanswered.
    #[arg(long, env = "SIM_DROP_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub drop_rate: f64,
    /// Share (0..=1) of kie.ai API requests answered by an HTML 502 page.
    #[arg(long = "html-502-rate", env = "SIM_HTML_502_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub html_502_rate: f64,
    /// Redeliveries of a failed callback.
    #[arg(long, env = "SIM_CALLBACK_RETRIES", default_value_t = 3)]
    pub callback_retries: u32,
    /// First redelivery delay, doubled each time.
    #[arg(long, env = "SIM_CALLBACK_BACKOFF", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub callback_backoff: Duration,
    /// How late a `[sim:slow-create]` task's createTask answer comes.
    #[arg(long, env = "SIM_SLOW_CREATE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_create: Duration,
    /// Largest file the upload API takes, in bytes.
    #[arg(long, env = "SIM_UPLOAD_MAX_BYTES", default_value_t = FileSettings::default().max_bytes)]
    pub upload_max_bytes: u64,
    /// How long an uploaded file is served.
    #[arg(long, env = "SIM_FILE_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub file_retention: Duration,
    /// Bytes all uploaded files may take together (the oldest goes first).
    #[arg(long, env = "SIM_FILE_STORAGE_BYTES", default_value_t = FileSettings::default().storage_bytes)]
    pub file_storage_bytes: u64,
    /// How long a task's result URL serves its video after the task ends.
    #[arg(long, env = "SIM_RESULT_URL_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub result_url_ttl: Duration,
    /// How long a download-url link serves the video.
    #[arg(long, env = "SIM_DOWNLOAD_LINK_TTL", default_value = "20m", value_parser = humantime::parse_duration)]
    pub download_link_ttl: Duration,
}

impl SimulateArgs {
    /// `--upload-listen`, or its default beside `--listen`.
    pub fn upload_addr(&self) -> SocketAddr {
        self.upload_listen.unwrap_or_else(|| {
            let port = match self.listen.port() {
                0 => 0,
                port => port.saturating_add(1),
            };
            SocketAddr::new(self.listen.ip(), port)
        })
    }

    pub fn config(&self) -> SimulatorConfig {
        SimulatorConfig {
            api_key: self.api_key.clone(),
            hmac_key: self.hmac_key.clone(),
            starting_credits: self.credits,
            timings: StateTimings {
                waiting: self.waiting,
                queuing: self.queuing,
                generating: self.generating,
            },
            faults: Faults {
                latency: self.latency,
                error_rate: self.error_rate,
                drop_rate: self.drop_rate,
                html_502_rate: self.html_502_rate,
            },
            callback_retries: self.callback_retries,
            callback_backoff: self.callback_backoff,
            slow_create: self.slow_create,
            files: FileSettings {
                max_bytes: self.upload_max_bytes,
                retention: self.file_retention,
                storage_bytes: self.file_storage_bytes,
                ..FileSettings::default()
            },
            result_url_ttl: self.result_url_ttl,
            download_link_ttl: self.download_link_ttl,
        }
    }
}

impl fmt::Debug for SimulateArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulateArgs")
            .field("listen", &self.listen)
            .field("upload_listen", &self.upload_addr())
            .field("config", &self.config())
            .finish()
    }
}

/// Parses a balance: a finite number, not negative, fractions allowed.
pub fn parse_credits(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(credits) if credits.is_finite() && credits >= 0.0 => Ok(credits),
        _ => Err(format!("`{text}` is not a balance (a number, 0 or more)")),
    }
}

/// Parses a probability between 0 and 1.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("`{text}` is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's flags and the gateway's take one duration syntax:
    /// humantime's, which also reads fractions.
    #[test]
    fn durations_read_the_same_as_the_gateway_flags() {
        use clap::Parser;

        #[derive(Parser)]
        struct Simulate {
            #[command(flatten)]
            args: SimulateArgs,
        }
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: crate::config::ServeArgs,
        }
        let simulator = |text: &str| {
            Simulate::try_parse_from(["simulate", "--waiting", text]).map(|c| c.args.waiting)
        };
        let gateway = |text: &str| {
            Serve::try_parse_from(["serve", "--poll-fast", text])
                .map(|c| Duration::from(c.args.poll_fast))
        };
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2s", Duration::from_secs(2)),
            ("1m 30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("500us", Duration::from_micros(500)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(simulator(text).ok(), Some(expected), "simulate {text}");
            assert_eq!(gateway(text).ok(), Some(expected), "gateway {text}");
        }
        for text in ["5", "5 fortnights", "ms"] {
            assert!(simulator(text).is_err(), "simulate {text}");
            assert!(gateway(text).is_err(), "gateway {text}");
        }
    }

    #[test]
    fn rates_must_be_probabilities() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("often").is_err());
    }

    #[test]
    fn balances_may_be_fractional_but_not_negative() {
        assert_eq!(parse_credits("100.5"), Ok(100.5));
        assert_eq!(parse_credits("1000000000000000"), Ok(1e15));
        assert!(parse_credits("-1").is_err());
        assert!(parse_credits("NaN").is_err());
        assert!(parse_credits("lots").is_err());
    }

    #[test]
    fn debug_output_hides_keys() {
        let config = SimulatorConfig {
            api_key: Some("sk-secret".into()),
            hmac_key: Some("hmac-secret".into()),
            ..SimulatorConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
