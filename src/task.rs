//! Domain types made from the caller's requests: a request is turned into one
//! of these at the edge, or refused with every bad field named, so inner code
//! never sees unchecked input.

use std::fmt;

use bytes::Bytes;
use url::Url;

use crate::image::ImageData;
use crate::pb::{self, Model, Resolution, TaskState, VideoDuration};

/// Longest prompt kie.ai accepts, in Unicode characters.
pub(crate) const MAX_PROMPT_CHARS: usize = 1500;
/// Longest task id accepted; kie.ai's ids are far shorter.
pub(crate) const MAX_TASK_ID_LEN: usize = 128;
/// Longest idempotency key.
pub(crate) const MAX_REQUEST_ID_CHARS: usize = 128;
/// Longest URL accepted in any URL field.
pub(crate) const MAX_URL_LEN: usize = 2048;

/// One bad field of a request, named as in the proto.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

impl FieldViolation {
    pub(crate) fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// A request refused at the edge, with every bad field named; nothing was
/// sent upstream. The error module turns it into INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidRequest(pub Vec<FieldViolation>);

/// A syntactically valid kie.ai task id: 1 to 128 characters from
/// `A-Z a-z 0-9 _ -`, so it can never smuggle a path or query into the
/// upstream URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskId(String);

impl TaskId {
    pub fn parse(raw: String) -> Result<Self, InvalidRequest> {
        let problem = if raw.is_empty() {
            Some("task_id is required".to_string())
        } else if raw.len() > MAX_TASK_ID_LEN {
            Some(format!(
                "task_id must be at most {MAX_TASK_ID_LEN} characters, got {}",
                raw.len()
            ))
        } else if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("task_id may only contain A-Z, a-z, 0-9, '_' and '-'".to_string())
        } else {
            None
        };
        match problem {
            Some(description) => Err(InvalidRequest(vec![FieldViolation {
                field: "task_id",
                description,
            }])),
            None => Ok(Self(raw)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// kie.ai's model id for each `Model`.
pub fn model_id(model: Model) -> &'static str {
    match model {
        Model::Unspecified | Model::Hailuo02ImageToVideoStandard => {
            "hailuo/02-image-to-video-standard"
        }
    }
}

/// kie.ai's `input.duration` value; unspecified is the documented default.
pub fn duration_value(duration: VideoDuration) -> &'static str {
    match duration {
        VideoDuration::VideoDuration6Seconds => "6",
        VideoDuration::Unspecified | VideoDuration::VideoDuration10Seconds => "10",
    }
}

/// kie.ai's `input.resolution` value; unspecified is the documented default.
pub fn resolution_value(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Resolution512p => "512P",
        Resolution::Unspecified | Resolution::Resolution768p => "768P",
    }
}

/// kie.ai's state names; `None` for a state this version does not know.
pub(crate) fn parse_state(state: &str) -> Option<TaskState> {
    Some(match state {
        "waiting" => TaskState::Waiting,
        "queuing" => TaskState::Queuing,
        "generating" => TaskState::Generating,
        "success" => TaskState::Succeeded,
        "fail" => TaskState::Failed,
        _ => return None,
    })
}

pub(crate) fn is_terminal(state: TaskState) -> bool {
    matches!(state, TaskState::Succeeded | TaskState::Failed)
}

/// Where a frame comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// A URL kie.ai fetches itself.
    Url(String),
    /// Bytes the gateway uploads to kie.ai's file storage first.
    Data(ImageData),
}

impl ImageSource {
    /// The URL kie.ai gets; `None` until the bytes are uploaded.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Url(url) => Some(url),
            Self::Data(_) => None,
        }
    }
}

/// A CreateTask request that passed validation. The defaults are applied:
/// kie.ai has been seen not to fill in documented defaults.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CreateTaskInput {
    pub model: &'static str,
    pub prompt: String,
    pub image: ImageSource,
    pub end_image: Option<ImageSource>,
    pub duration: &'static str,
    pub resolution: &'static str,
    pub prompt_optimizer: Option<bool>,
    pub callback_url: Option<String>,
    pub request_id: Option<String>,
}

impl TryFrom<pb::CreateTaskRequest> for CreateTaskInput {
    type Error = InvalidRequest;

    fn try_from(req: pb::CreateTaskRequest) -> Result<Self, Self::Error> {
        let mut bad = Vec::new();

        let model = match Model::try_from(req.model) {
            Ok(m) => model_id(m),
            Err(_) => {
                bad.push(enum_violation("model", req.model));
                ""
            }
        };
        let duration = match VideoDuration::try_from(req.duration) {
            Ok(d) => duration_value(d),
            Err(_) => {
                bad.push(enum_violation("duration", req.duration));
                ""
            }
        };
        let resolution = match Resolution::try_from(req.resolution) {
            Ok(r) => resolution_value(r),
            Err(_) => {
                bad.push(enum_violation("resolution", req.resolution));
                ""
            }
        };

        if req.prompt.trim().is_empty() {
            bad.push(FieldViolation::new("prompt", "prompt is required"));
        } else {
            // Count no further than needed: a 2 MiB prompt costs no more
            // than a 1501-character one.
            let chars = req.prompt.chars().take(MAX_PROMPT_CHARS + 1).count();
            if chars > MAX_PROMPT_CHARS {
                bad.push(FieldViolation::new(
                    "prompt",
                    format!("prompt must be at most {MAX_PROMPT_CHARS} characters"),
                ));
            }
        }

        let image = match image_source(("image_url", req.image_url), ("image_data", req.image_data))
        {
            Ok(Some(image)) => Some(image),
            Ok(None) => {
                bad.push(FieldViolation::new(
                    "image_url",
                    "image_url or image_data is required",
                ));
                None
            }
            Err(violation) => {
                bad.push(violation);
                None
            }
        };
        let end_image = image_source(
            ("end_image_url", req.end_image_url),
            ("end_image_data", req.end_image_data),
        )
        .unwrap_or_else(|violation| {
            bad.push(violation);
            None
        });
        let callback_url = match http_url(&req.callback_url) {
            _ if req.callback_url.is_empty() => None,
            Ok(url) => Some(url),
            Err(why) => {
                bad.push(FieldViolation::new(
                    "callback_url",
                    format!("callback_url {why}"),
                ));
                None
            }
        };

        if !req.request_id.is_empty() {
            let printable = req.request_id.chars().all(|c| !c.is_control());
            let len = req
                .request_id
                .chars()
                .take(MAX_REQUEST_ID_CHARS + 1)
                .count();
            if !printable || len > MAX_REQUEST_ID_CHARS {
                bad.push(FieldViolation::new(
                    "request_id",
                    format!(
                        "request_id must be printable characters, at most {MAX_REQUEST_ID_CHARS}"
                    ),
                ));
            }
        }

        let (true, Some(image)) = (bad.is_empty(), image) else {
            return Err(InvalidRequest(bad));
        };
        Ok(Self {
            model,
            prompt: req.prompt,
            image,
            end_image,
            duration,
            resolution,
            prompt_optimizer: req.prompt_optimizer,
            callback_url,
            request_id: non_empty(req.request_id),
        })
    }
}

/// A frame given as a URL or as bytes, at most one of them; `None` when
/// neither is set. (proto3 cannot tell empty bytes from unset ones.)
fn image_source(
    (url_field, url): (&'static str, String),
    (data_field, data): (&'static str, Bytes),
) -> Result<Option<ImageSource>, FieldViolation> {
    match (url.is_empty(), data.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Err(FieldViolation::new(
            data_field,
            format!("set {url_field} or {data_field}, not both"),
        )),
        (false, true) => http_url(&url)
            .map(|url| Some(ImageSource::Url(url)))
            .map_err(|why| FieldViolation::new(url_field, format!("{url_field} {why}"))),
        (true, false) => ImageData::parse(data_field, data)
            .map(|image| Some(ImageSource::Data(image)))
            .map_err(|why| FieldViolation::new(data_field, why)),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn enum_violation(field: &'static str, value: i32) -> FieldViolation {
    FieldViolation::new(field, format!("{field} has no value {value}"))
}

/// An absolute http(s) URL with a host, in the normalised form kie.ai is
/// sent (lower-case scheme and host, default port dropped, path
/// percent-encoded).
///
/// The WHATWG parser forgives what a caller most likely got wrong: it drops
/// tabs and newlines, trims spaces, and reads `https:///c.png` as the host
/// `c.png`. Those are refused here instead of guessed at.
fn http_url(raw: &str) -> Result<String, &'static str> {
    if raw.len() > MAX_URL_LEN {
        return Err("must be at most 2048 bytes");
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters (percent-encode them)");
    }
    let url = Url::parse(raw).map_err(|_| "must be an absolute http(s) URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use http or https");
    }
    // Nothing was trimmed, so `raw` starts with the scheme: the host must
    // follow `://` directly.
    let after_scheme = raw.get(url.scheme().len()..).unwrap_or_default();
    let names_host = after_scheme
        .strip_prefix("://")
        .is_some_and(|rest| !rest.starts_with(['/', '\\']));
    if !names_host || url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host (`https://host/path`)");
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::CreateTaskRequest {
        pb::CreateTaskRequest {
            prompt: "a cat".into(),
            image_url: "https://example.com/cat.png".into(),
            ..Default::default()
        }
    }

    fn fields(err: InvalidRequest) -> Vec<&'static str> {
        err.0.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn defaults_are_applied() {
        let input = CreateTaskInput::try_from(valid()).expect("valid");
        assert_eq!(input.model, "hailuo/02-image-to-video-standard");
        assert_eq!(input.duration, "10");
        assert_eq!(input.resolution, "768P");
        assert_eq!(input.end_image, None);
        assert_eq!(input.callback_url, None);
    }

    #[test]
    fn prompt_length_counts_characters_not_bytes() {
        let mut req = valid();
        req.prompt = "猫".repeat(1500);
        assert!(CreateTaskInput::try_from(req.clone()).is_ok());
        req.prompt.push('猫');
        assert_eq!(
            fields(CreateTaskInput::try_from(req).expect_err("invalid")),
            ["prompt"]
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let req = pb::CreateTaskRequest {
            model: 9,
            prompt: " ".into(),
            image_url: "ftp://x/y.png".into(),
            end_image_url: "not a url".into(),
            duration: 7,
            resolution: -1,
            callback_url: "/relative".into(),
            request_id: "a\nb".into(),
            ..Default::default()
        };
        let mut got = fields(CreateTaskInput::try_from(req).expect_err("invalid"));
        got.sort();
        assert_eq!(
            got,
            [
                "callback_url",
                "duration",
                "end_image_url",
                "image_url",
                "model",
                "prompt",
                "request_id",
                "resolution"
            ]
        );
    }

    #[test]
    fn urls_need_a_host_and_no_raw_spaces_or_control_characters() {
        for bad in [
            "https:///c.png",
            "https:/c.png",
            "https:\\\\c.png",
            "https://a b/c.png",
            "https://a.com/b c.png",
            " https://a.com/c.png",
            "https://a.com/c.png ",
            "https://a.com/\tc.png",
            "https://a.com/c.png\n",
            "https://a.com/\u{7f}c.png",
            "https://a.com/\u{a0}c.png",
        ] {
            assert!(http_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_sent_in_their_normalised_form() {
        for (raw, sent) in [
            (
                "HTTPS://Example.COM:443/a/../b.png",
                "https://example.com/b.png",
            ),
            ("http://example.com", "http://example.com/"),
            (
                "https://bücher.de/ü.png?q=ä",
                "https://xn--bcher-kva.de/%C3%BC.png?q=%C3%A4",
            ),
            (
                "https://example.com/c.png?x=1#f",
                "https://example.com/c.png?x=1#f",
            ),
        ] {
            assert_eq!(http_url(raw).as_deref(), Ok(sent), "{raw:?}");
        }
    }

    #[test]
    fn task_id_rejects_path_and_query_characters() {
        for bad in [
            "",
            "../etc",
            "a?b",
            "a&b",
            "a%00",
            "a/b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(TaskId::parse(bad.to_string()).is_err(), "{bad:?}");
        }
        assert!(TaskId::parse("task_hailuo_1765185334551".into()).is_ok());
        assert!(TaskId::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn kie_states_map_to_task_states() {
        assert_eq!(parse_state("waiting"), Some(TaskState::Waiting));
        assert_eq!(parse_state("queuing"), Some(TaskState::Queuing));
        assert_eq!(parse_state("generating"), Some(TaskState::Generating));
        assert_eq!(parse_state("success"), Some(TaskState::Succeeded));
        assert_eq!(parse_state("fail"), Some(TaskState::Failed));
        assert_eq!(parse_state("exploded"), None);
    }
}
