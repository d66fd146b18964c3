//! kie.ai's JSON: request bodies as documented, answers read tolerantly
//! (unknown fields ignored, `msg` or `message`, numbers or strings, null or
//! empty optional fields).

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::pb::{self, TaskState};
use crate::task::{CreateTaskInput, parse_state};

/// `POST /api/v1/jobs/createTask` body. Optional fields are left out, never
/// sent as empty strings.
#[derive(Serialize)]
pub struct CreateTaskBody<'a> {
    pub(crate) model: &'a str,
    #[serde(rename = "callBackUrl", skip_serializing_if = "Option::is_none")]
    pub(crate) call_back_url: Option<&'a str>,
    pub(crate) input: CreateTaskInputBody<'a>,
}

#[derive(Serialize)]
pub(crate) struct CreateTaskInputBody<'a> {
    pub(crate) prompt: &'a str,
    pub(crate) image_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) end_image_url: Option<&'a str>,
    pub(crate) duration: &'a str,
    pub(crate) resolution: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prompt_optimizer: Option<bool>,
}

impl<'a> CreateTaskBody<'a> {
    /// `None` while a frame is still bytes: kie.ai takes only URLs.
    pub fn new(input: &'a CreateTaskInput, call_back_url: Option<&'a str>) -> Option<Self> {
        let end_image_url = match &input.end_image {
            Some(end) => Some(end.url()?),
            None => None,
        };
        Some(Self {
            model: input.model,
            call_back_url,
            input: CreateTaskInputBody {
                prompt: &input.prompt,
                image_url: input.image.url()?,
                end_image_url,
                duration: input.duration,
                resolution: input.resolution,
                prompt_optimizer: input.prompt_optimizer,
            },
        })
    }
}

/// The envelope of every answer: `{"code":…,"msg":…,"data":…}`.
#[derive(Deserialize)]
pub struct Envelope<'a> {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub code: Option<i64>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(crate) msg: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(crate) message: Option<String>,
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
    /// The file upload API's flag beside `code`.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub(crate) success: Option<bool>,
}

impl<'a> Envelope<'a> {
    /// kie.ai's reason, from `msg` or (one doc's spelling) `message`.
    pub fn reason(&self) -> String {
        self.msg
            .clone()
            .or_else(|| self.message.clone())
            .unwrap_or_default()
    }

    /// The code, or 200 for an upload answer that says only `success: true`.
    pub fn code(&self) -> Option<i64> {
        self.code
            .or_else(|| self.success.and_then(|ok| ok.then_some(200)))
    }

    /// `data`, unless absent or JSON null.
    pub fn data(&self) -> Option<&'a RawValue> {
        self.data.filter(|raw| raw.get() != "null")
    }
}

/// `data` of a createTask answer.
#[derive(Deserialize)]
pub struct Created {
    #[serde(rename = "taskId", deserialize_with = "lenient_string")]
    pub task_id: Option<String>,
}

/// `data` of a file upload's answer (`{success, code, msg, data}`); only
/// the URL matters, the rest is kie.ai's account of the file.
#[derive(Deserialize)]
pub struct Uploaded {
    #[serde(rename = "downloadUrl", default, deserialize_with = "lenient_string")]
    pub download_url: Option<String>,
}

/// `data` of a download-url answer: documented as the bare URL; an object
/// with `url` or `downloadUrl` is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Link {
    Bare(String),
    Object {
        #[serde(alias = "downloadUrl")]
        url: String,
    },
}

impl Link {
    pub fn url(&self) -> Option<&str> {
        let url = match self {
            Self::Bare(url) | Self::Object { url } => url,
        };
        (!url.is_empty()).then_some(url)
    }
}

/// `data` of a credit answer: a number, possibly fractional, or the same
/// as a string.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Credits {
    Number(f64),
    Text(String),
}

impl Credits {
    pub fn value(&self) -> Option<f64> {
        let value = match self {
            Self::Number(n) => *n,
            Self::Text(s) => s.trim().parse().ok()?,
        };
        value.is_finite().then_some(value)
    }
}

/// `data` of a recordInfo answer (and of a callback).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Record {
    #[serde(deserialize_with = "lenient_string")]
    pub(crate) task_id: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub(crate) model: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub(crate) state: Option<String>,
    /// A JSON *string* holding `{"resultUrls":[…]}`; an object is accepted too.
    pub(crate) result_json: Option<serde_json::Value>,
    /// The createTask body kie.ai echoes, as a JSON *string* (an object is
    /// accepted too).
    pub(crate) param: Option<serde_json::Value>,
    #[serde(deserialize_with = "lenient_string")]
    pub(crate) fail_code: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub(crate) fail_msg: Option<String>,
    #[serde(deserialize_with = "lenient_i64")]
    pub(crate) cost_time: Option<i64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub(crate) create_time: Option<i64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub(crate) update_time: Option<i64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub(crate) complete_time: Option<i64>,
    /// What kie.ai charged for the task: a float live, 0 for a failure it
    /// did not charge; quotas settle against it.
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) credits_consumed: Option<f64>,
}

#[derive(Deserialize)]
struct ResultJson {
    #[serde(default, rename = "resultUrls")]
    result_urls: Vec<String>,
}

impl Record {
    /// The `callBackUrl` the task was created with, from `param`.
    pub(crate) fn call_back_url(&self) -> Option<String> {
        let param = match self.param.as_ref()? {
            serde_json::Value::String(text) => serde_json::from_str(text).ok()?,
            other => other.clone(),
        };
        param.get("callBackUrl")?.as_str().map(str::to_owned)
    }

    /// The Task a caller sees. `fallback_id` fills in a missing `taskId`.
    pub fn into_task(self, fallback_id: &str) -> pb::Task {
        let state = self
            .state
            .as_deref()
            .and_then(parse_state)
            .unwrap_or(TaskState::Unspecified);
        let video_urls = match self.result_json {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                serde_json::from_str::<ResultJson>(&s)
                    .map(|r| r.result_urls)
                    .unwrap_or_default()
            }
            Some(v @ serde_json::Value::Object(_)) => serde_json::from_value::<ResultJson>(v)
                .map(|r| r.result_urls)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        pb::Task {
            task_id: self
                .task_id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| fallback_id.to_string()),
            model: self.model.unwrap_or_default(),
            state: state as i32,
            video_urls,
            fail_code: self.fail_code.unwrap_or_default(),
            fail_message: self.fail_msg.unwrap_or_default(),
            create_time: self.create_time.and_then(timestamp_from_ms),
            update_time: self.update_time.and_then(timestamp_from_ms),
            complete_time: self.complete_time.and_then(timestamp_from_ms),
            cost_time: self
                .cost_time
                .filter(|ms| *ms >= 0)
                .map(|ms| prost_types::Duration {
                    seconds: ms / 1000,
                    nanos: ((ms % 1000) * 1_000_000) as i32,
                }),
        }
    }
}

/// Unix milliseconds to a Timestamp; zero and negative mean "not set".
fn timestamp_from_ms(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// A finite number, a numeric string, or null/absent.
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
        Other(de::IgnoredAny),
    }
    Ok(match Option::<Num>::deserialize(d)? {
        Some(Num::F(f)) => Some(f),
        Some(Num::S(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite()))
}

/// A number, a numeric string, or null/absent.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num<'a> {
        I(i64),
        F(f64),
        S(&'a str),
        Owned(String),
        Other(de::IgnoredAny),
    }
    Ok(match Option::<Num>::deserialize(d)? {
        Some(Num::I(i)) => Some(i),
        Some(Num::F(f)) if f.is_finite() => Some(f as i64),
        Some(Num::S(s)) => s.trim().parse().ok(),
        Some(Num::Owned(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// A string (empty means absent), a number written as a string, or
/// null/absent.
/// `true`/`false`, or the same as a string; anything else is unknown.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
        F(f64),
        B(bool),
        Other(de::IgnoredAny),
    }
    Ok(match Option::<Text>::deserialize(d)? {
        Some(Text::S(s)) if !s.is_empty() => Some(s),
        Some(Text::I(i)) => Some(i.to_string()),
        Some(Text::F(f)) => Some(f.to_string()),
        Some(Text::B(b)) => Some(b.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_back_url_is_read_from_param_as_a_string_or_an_object() {
        let as_string: Record = serde_json::from_str(
            r#"{"param":"{\"model\":\"m\",\"callBackUrl\":\"https://g/cb?attempt=a1\"}"}"#,
        )
        .expect("record");
        assert_eq!(
            as_string.call_back_url().as_deref(),
            Some("https://g/cb?attempt=a1")
        );
        let as_object: Record =
            serde_json::from_str(r#"{"param":{"callBackUrl":"https://g/cb"}}"#).expect("record");
        assert_eq!(as_object.call_back_url().as_deref(), Some("https://g/cb"));
        let without: Record = serde_json::from_str(r#"{"param":"not json"}"#).expect("record");
        assert_eq!(without.call_back_url(), None);
    }

    #[test]
    fn reads_a_realistic_success_record() {
        let body = r#"{"code":200,"message":"success","data":{
            "taskId":"task_hailuo_1765185334551","model":"hailuo/02-image-to-video-standard",
            "state":"success","param":"{\"model\":\"x\"}",
            "resultJson":"{\"resultUrls\":[\"https://cdn.example/v.mp4\"]}",
            "failCode":null,"failMsg":null,"costTime":71234,"completeTime":1765185405785,
            "createTime":1765185334551,"updateTime":1765185405785,"creditsConsumed":20,"progress":100}}"#;
        let env: Envelope = serde_json::from_str(body).expect("envelope");
        assert_eq!(env.code, Some(200));
        assert_eq!(env.reason(), "success");
        let record: Record = serde_json::from_str(env.data().expect("data").get()).expect("rec");
        assert_eq!(record.credits_consumed, Some(20.0));
        let task = record.into_task("fallback");
        assert_eq!(task.task_id, "task_hailuo_1765185334551");
        assert_eq!(task.state, TaskState::Succeeded as i32);
        assert_eq!(task.video_urls, ["https://cdn.example/v.mp4"]);
        assert_eq!(
            task.create_time.map(|t| (t.seconds, t.nanos)),
            Some((1765185334, 551_000_000))
        );
        assert_eq!(
            task.cost_time.map(|d| (d.seconds, d.nanos)),
            Some((71, 234_000_000))
        );
        assert_eq!(task.fail_code, "");
    }

    #[test]
    fn tolerates_strings_for_numbers_and_empty_optionals() {
        let data = r#"{"taskId":"t1","state":"fail","resultJson":"","failCode":500,
            "failMsg":"moderation","createTime":"1765185334551","completeTime":null}"#;
        let record = serde_json::from_str::<Record>(data).expect("record");
        assert_eq!(record.credits_consumed, None);
        for (credits, read) in [(r#""12.5""#, Some(12.5)), ("0", Some(0.0)), ("null", None)] {
            let with: Record =
                serde_json::from_str(&format!(r#"{{"creditsConsumed":{credits}}}"#)).expect("rec");
            assert_eq!(with.credits_consumed, read);
        }
        let task = record.into_task("t1");
        assert_eq!(task.state, TaskState::Failed as i32);
        assert_eq!(task.fail_code, "500");
        assert_eq!(task.fail_message, "moderation");
        assert!(task.video_urls.is_empty());
        assert!(task.create_time.is_some());
        assert!(task.complete_time.is_none());
    }

    #[test]
    fn create_body_leaves_unset_optionals_out() {
        let input = CreateTaskInput::try_from(pb::CreateTaskRequest {
            prompt: "p".into(),
            image_url: "https://x/y.png".into(),
            ..Default::default()
        })
        .expect("valid");
        let json = serde_json::to_value(CreateTaskBody::new(&input, None).expect("urls only"))
            .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"model":"hailuo/02-image-to-video-standard",
                "input":{"prompt":"p","image_url":"https://x/y.png","duration":"10","resolution":"768P"}})
        );
    }
}
