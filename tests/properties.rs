//! Property tests for the gateway's pure edges: request validation, task id
//! parsing, lenient reading of kie.ai's JSON, the kie code → gRPC status
//! mapping, and callback task ids and signatures (plus the callback route
//! driven through the real router).
//!
//! Each property re-states the rule independently of the code under test,
//! so a change of behaviour fails here and not only a crash. 256 cases per
//! property by default; `PROPTEST_CASES=10000 cargo test --test properties`
//! digs deeper.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use hailuo_gateway::callbacks::{MAX_CALLBACK_BODY, sign, task_id_of, verify_signature};
use hailuo_gateway::config::ApiKey;
use hailuo_gateway::error::{GatewayError, classify};
use hailuo_gateway::http::{HttpState, router};
use hailuo_gateway::kie::wire::{Created, Envelope, Record};
use hailuo_gateway::kie::{Endpoint, KeySource, UpstreamError, UpstreamErrorKind};
use hailuo_gateway::pb::{self, TaskState};
use hailuo_gateway::task::{CreateTaskInput, TaskId};
use proptest::prelude::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use tower::ServiceExt;

// === strategies ===

/// Strings that sit on and around every validation boundary, plus anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[ \t\n\u{3000}\u{a0}]{0,4}",
        1 => Just(String::new()),
        // Around the 1500-character prompt limit, in 1- to 4-byte characters.
        2 => (1495usize..1506, prop::sample::select(vec!['a', 'é', '猫', '🐈', ' ']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        // Around the 128-character request id / task id limit.
        2 => (120usize..136, prop::sample::select(vec!['k', 'é', '\u{7f}', '-']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        // Huge: must cost no more than a long one, and never panic.
        1 => Just("p".repeat(2 << 20)),
    ]
}

/// What kie.ai (or a transport error) might say: anything, blank, or long.
/// Not megabytes: that costs seconds per case in percent-encoding.
fn message_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<String>(),
        1 => "[ \t\n]{0,3}",
        1 => Just("é%\n".repeat(10_000)),
    ]
}

/// URL-ish strings: valid, nearly valid, and around the 2048-byte limit.
fn url_text() -> impl Strategy<Value = String> {
    let host = "[a-z0-9]{1,12}(\\.[a-z]{2,5}){0,2}";
    prop_oneof![
        3 => (prop::sample::select(vec!["http", "https", "HTTPS", "ftp", "file", "data", "", "h ttp"]),
              prop::sample::select(vec!["://", ":", ":/", "//"]),
              host,
              prop::option::of(1u16..),
              "(/[a-zA-Z0-9._~%!$&'()*+,;=:@ -]{0,16}){0,3}(\\?[a-z=&]{0,10})?")
            .prop_map(|(scheme, sep, host, port, path)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{scheme}{sep}{host}{port}{path}")
            }),
        // Lengths either side of 2048 bytes.
        2 => (2030usize..2070).prop_map(|n| {
            let prefix = "https://example.com/";
            format!("{prefix}{}", "a".repeat(n - prefix.len()))
        }),
        1 => text(),
        1 => Just(String::new()),
    ]
}

fn enum_value(max_valid: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..=max_valid, 1 => any::<i32>()]
}

fn create_request() -> impl Strategy<Value = pb::CreateTaskRequest> {
    (
        (enum_value(1), text(), url_text(), url_text()),
        (
            enum_value(2),
            enum_value(2),
            any::<Option<bool>>(),
            url_text(),
            text(),
        ),
    )
        .prop_map(
            |(
                (model, prompt, image_url, end_image_url),
                (duration, resolution, prompt_optimizer, callback_url, request_id),
            )| pb::CreateTaskRequest {
                model,
                prompt,
                image_url,
                end_image_url,
                duration,
                resolution,
                prompt_optimizer,
                callback_url,
                request_id,
            },
        )
}

/// Field names kie.ai uses, so arbitrary documents hit the lenient readers.
const KIE_KEYS: &[&str] = &[
    "code",
    "msg",
    "message",
    "data",
    "taskId",
    "task_id",
    "model",
    "state",
    "resultJson",
    "resultUrls",
    "failCode",
    "failMsg",
    "costTime",
    "createTime",
    "updateTime",
    "completeTime",
];

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KIE_KEYS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        any::<String>().prop_map(Value::String),
        // Numbers and states written as strings, as kie.ai sometimes does.
        "[ ]?[+-]?[0-9]{1,20}[ ]?".prop_map(Value::String),
        prop::sample::select(vec![
            "waiting",
            "queuing",
            "generating",
            "success",
            "fail",
            ""
        ])
        .prop_map(|s| Value::String(s.into())),
        "\\{\"resultUrls\":\\[(\"[a-z:/.]{0,12}\",?){0,3}\\]\\}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(json_key(), json_value(), 0..10)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Raw bytes that are often nearly JSON.
fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        // A JSON document cut short or with one byte changed.
        3 => (json_object(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>())
            .prop_map(|(v, at, byte, truncate)| {
                let mut bytes = v.to_string().into_bytes();
                let i = at.index(bytes.len());
                if truncate {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
                bytes
            }),
    ]
}

// === reference rules, re-stated independently of src/task.rs ===

fn is_http_url(raw: &str) -> bool {
    raw.len() <= 2048
        && url::Url::parse(raw)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// The fields a request should be refused for.
fn expected_bad_fields(r: &pb::CreateTaskRequest) -> BTreeSet<&'static str> {
    let mut bad = BTreeSet::new();
    if !(0..=1).contains(&r.model) {
        bad.insert("model");
    }
    if !(0..=2).contains(&r.duration) {
        bad.insert("duration");
    }
    if !(0..=2).contains(&r.resolution) {
        bad.insert("resolution");
    }
    if r.prompt.chars().all(char::is_whitespace) || r.prompt.chars().count() > 1500 {
        bad.insert("prompt");
    }
    if !is_http_url(&r.image_url) {
        bad.insert("image_url");
    }
    if !r.end_image_url.is_empty() && !is_http_url(&r.end_image_url) {
        bad.insert("end_image_url");
    }
    if !r.callback_url.is_empty() && !is_http_url(&r.callback_url) {
        bad.insert("callback_url");
    }
    if r.request_id.chars().count() > 128 || r.request_id.chars().any(char::is_control) {
        bad.insert("request_id");
    }
    bad
}

fn is_task_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn kie_state(s: &str) -> TaskState {
    match s {
        "waiting" => TaskState::Waiting,
        "queuing" => TaskState::Queuing,
        "generating" => TaskState::Generating,
        "success" => TaskState::Succeeded,
        "fail" => TaskState::Failed,
        _ => TaskState::Unspecified,
    }
}

/// (gRPC code, ErrorInfo reason, default retry delay) for a kie.ai code.
fn expected_mapping(code: i64, source: KeySource) -> (Code, &'static str, Option<u64>) {
    match code {
        401 if source == KeySource::Gateway => (Code::Internal, "UPSTREAM_UNAUTHENTICATED", None),
        401 => (Code::Unauthenticated, "UPSTREAM_UNAUTHENTICATED", None),
        402 => (Code::FailedPrecondition, "INSUFFICIENT_CREDITS", None),
        404 => (Code::NotFound, "TASK_NOT_FOUND", None),
        422 => (Code::InvalidArgument, "UPSTREAM_VALIDATION_FAILED", None),
        429 | 433 => (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED", Some(10)),
        455 => (Code::Unavailable, "UPSTREAM_MAINTENANCE", Some(30)),
        500 => (Code::Internal, "UPSTREAM_INTERNAL_ERROR", None),
        501 => (Code::Internal, "GENERATION_FAILED", None),
        505 => (Code::Unimplemented, "FEATURE_DISABLED", None),
        _ => (Code::Unknown, "UPSTREAM_UNKNOWN_CODE", None),
    }
}

fn reparse(v: &Value) -> Value {
    serde_json::from_str(&v.to_string()).expect("serde_json reads what it writes")
}

fn ms_to_parts(ms: i64) -> (i64, i32) {
    (
        ms.div_euclid(1000),
        (ms.rem_euclid(1000) * 1_000_000) as i32,
    )
}

// === validation ===

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn create_task_input_is_ok_exactly_when_every_rule_holds(req in create_request()) {
        let expected = expected_bad_fields(&req);
        match CreateTaskInput::try_from(req.clone()) {
            Ok(input) => {
                prop_assert!(expected.is_empty(), "accepted but {expected:?} are bad");
                prop_assert_eq!(&input.prompt, &req.prompt);
                prop_assert_eq!(&input.image_url, &req.image_url);
                prop_assert_eq!(input.end_image_url.unwrap_or_default(), req.end_image_url);
                prop_assert_eq!(input.callback_url.unwrap_or_default(), req.callback_url);
                prop_assert_eq!(input.request_id.unwrap_or_default(), req.request_id);
                prop_assert_eq!(input.prompt_optimizer, req.prompt_optimizer);
                prop_assert_eq!(input.model, "hailuo/02-image-to-video-standard");
                prop_assert_eq!(input.duration, if req.duration == 1 { "6" } else { "10" });
                prop_assert_eq!(input.resolution, if req.resolution == 1 { "512P" } else { "768P" });
            }
            Err(err) => {
                let GatewayError::InvalidArgument(violations) = &err else {
                    return Err(TestCaseError::fail(format!("not InvalidArgument: {err:?}")));
                };
                let named: Vec<&str> = violations.iter().map(|v| v.field).collect();
                let unique: BTreeSet<&str> = named.iter().copied().collect();
                prop_assert_eq!(unique.len(), named.len(), "a field named twice: {:?}", named);
                prop_assert_eq!(unique, expected);
                prop_assert!(violations.iter().all(|v| !v.description.is_empty()));

                // The status carries the same fields as BadRequest and can be
                // written as gRPC headers.
                let status = err.to_status();
                prop_assert_eq!(status.code(), Code::InvalidArgument);
                let details = status.get_error_details();
                let in_status: Vec<&str> = details
                    .bad_request()
                    .map(|b| b.field_violations.iter().map(|f| f.field.as_str()).collect())
                    .unwrap_or_default();
                prop_assert_eq!(in_status, named);
                prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
            }
        }
    }

    #[test]
    fn well_formed_http_urls_are_accepted_in_every_url_field(
        scheme in prop::sample::select(vec!["http", "https"]),
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){0,3}",
        port in prop::option::of(1u16..),
        path in "(/[a-zA-Z0-9._~-]{0,20}){0,4}",
    ) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!("{scheme}://{host}{port}{path}");
        let req = pb::CreateTaskRequest {
            prompt: "a cat".into(),
            image_url: url.clone(),
            end_image_url: url.clone(),
            callback_url: url,
            ..Default::default()
        };
        prop_assert!(CreateTaskInput::try_from(req).is_ok());
    }

    #[test]
    fn urls_without_an_http_scheme_are_refused(
        scheme in prop::sample::select(vec!["", "ftp://", "file://", "javascript:", "//", "mailto:", "data:"]),
        rest in "[a-z0-9./]{1,30}",
    ) {
        let req = pb::CreateTaskRequest {
            prompt: "a cat".into(),
            image_url: format!("{scheme}{rest}"),
            ..Default::default()
        };
        let err = CreateTaskInput::try_from(req).expect_err("refused");
        let GatewayError::InvalidArgument(v) = err else {
            return Err(TestCaseError::fail("not InvalidArgument"));
        };
        prop_assert_eq!(v.iter().map(|f| f.field).collect::<Vec<_>>(), ["image_url"]);
    }

    #[test]
    fn task_id_parse_accepts_exactly_the_task_id_alphabet(
        raw in prop_oneof![
            3 => "[A-Za-z0-9_-]{0,140}",
            2 => any::<String>(),
            2 => ("[A-Za-z0-9_-]{1,128}", any::<prop::sample::Index>(), any::<char>())
                .prop_map(|(s, at, c)| {
                    let mut chars: Vec<char> = s.chars().collect();
                    let i = at.index(chars.len());
                    chars[i] = c;
                    chars.into_iter().collect()
                }),
        ]
    ) {
        match TaskId::parse(raw.clone()) {
            Ok(id) => {
                prop_assert!(is_task_id(&raw), "accepted {raw:?}");
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
            Err(GatewayError::InvalidArgument(v)) => {
                prop_assert!(!is_task_id(&raw), "refused {raw:?}");
                prop_assert_eq!(v.iter().map(|f| f.field).collect::<Vec<_>>(), ["task_id"]);
            }
            Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }
}

// === kie.ai JSON ===

/// How a well-formed record writes one number: as a number or a string.
#[derive(Clone, Debug)]
enum NumForm {
    Number(i64),
    Text(i64, &'static str),
}

impl NumForm {
    fn value(&self) -> i64 {
        match self {
            Self::Number(n) | Self::Text(n, _) => *n,
        }
    }
    fn json(&self) -> Value {
        match self {
            Self::Number(n) => json!(n),
            Self::Text(..) => json!(self.text()),
        }
    }
    /// What a string field holding this value reads as.
    fn text(&self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(n, pad) => format!("{pad}{n}{pad}"),
        }
    }
}

fn num_form(values: impl Strategy<Value = i64> + Clone) -> impl Strategy<Value = NumForm> {
    prop_oneof![
        values.clone().prop_map(NumForm::Number),
        (values, prop::sample::select(vec!["", " "])).prop_map(|(n, p)| NumForm::Text(n, p)),
    ]
}

fn time_ms() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![
        3 => 1_600_000_000_000i64..1_900_000_000_000,
        1 => -2000i64..2000,
        1 => any::<i64>(),
    ]
}

#[derive(Clone, Debug)]
enum ResultForm {
    /// kie.ai's documented form: a JSON string holding the object.
    Text,
    /// An object, which the gateway accepts too.
    Object,
}

#[derive(Clone, Debug)]
struct RecordModel {
    task_id: Option<String>,
    model: Option<String>,
    state: Option<String>,
    urls: Option<(Vec<String>, ResultForm)>,
    fail_code: Option<NumForm>,
    fail_msg: Option<String>,
    cost_time: Option<NumForm>,
    create_time: Option<NumForm>,
    update_time: Option<NumForm>,
    complete_time: Option<NumForm>,
    extra: BTreeMap<String, Value>,
}

fn record_model() -> impl Strategy<Value = RecordModel> {
    let state = prop_oneof![
        4 => prop::sample::select(vec!["waiting", "queuing", "generating", "success", "fail"])
            .prop_map(str::to_string),
        1 => any::<String>(),
    ];
    let urls = (
        prop::collection::vec(any::<String>(), 0..4),
        prop_oneof![Just(ResultForm::Text), Just(ResultForm::Object)],
    );
    (
        (
            prop::option::of(any::<String>()),
            prop::option::of(any::<String>()),
            prop::option::of(state),
            prop::option::of(urls),
            prop::option::of(num_form(any::<i64>())),
            prop::option::of(any::<String>()),
        ),
        (
            prop::option::of(num_form(time_ms())),
            prop::option::of(num_form(time_ms())),
            prop::option::of(num_form(time_ms())),
            prop::option::of(num_form(time_ms())),
            // Fields the gateway does not read must not get in the way.
            prop::collection::btree_map(
                prop::sample::select(vec!["param", "progress", "creditsConsumed", "x"])
                    .prop_map(str::to_string),
                json_leaf(),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(
                (task_id, model, state, urls, fail_code, fail_msg),
                (cost_time, create_time, update_time, complete_time, extra),
            )| RecordModel {
                task_id,
                model,
                state,
                urls,
                fail_code,
                fail_msg,
                cost_time,
                create_time,
                update_time,
                complete_time,
                extra,
            },
        )
}

impl RecordModel {
    fn json(&self) -> Value {
        let mut m: serde_json::Map<String, Value> = self.extra.clone().into_iter().collect();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("taskId", self.task_id.clone().map(Value::String));
        put("model", self.model.clone().map(Value::String));
        put("state", self.state.clone().map(Value::String));
        put(
            "resultJson",
            self.urls.as_ref().map(|(urls, form)| {
                let object = json!({ "resultUrls": urls });
                match form {
                    ResultForm::Text => Value::String(object.to_string()),
                    ResultForm::Object => object,
                }
            }),
        );
        put("failCode", self.fail_code.as_ref().map(NumForm::json));
        put("failMsg", self.fail_msg.clone().map(Value::String));
        put("costTime", self.cost_time.as_ref().map(NumForm::json));
        put("createTime", self.create_time.as_ref().map(NumForm::json));
        put("updateTime", self.update_time.as_ref().map(NumForm::json));
        put(
            "completeTime",
            self.complete_time.as_ref().map(NumForm::json),
        );
        Value::Object(m)
    }
}

fn expected_timestamp(form: &Option<NumForm>) -> Option<(i64, i32)> {
    form.as_ref()
        .map(NumForm::value)
        .filter(|ms| *ms > 0)
        .map(ms_to_parts)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn reading_arbitrary_bytes_never_panics(bytes in json_bytes()) {
        if let Ok(env) = serde_json::from_slice::<Envelope>(&bytes) {
            let _ = env.reason();
            if let Some(data) = env.data() {
                if let Ok(record) = serde_json::from_str::<Record>(data.get()) {
                    let _ = record.into_task("fallback");
                }
                let _ = serde_json::from_str::<Created>(data.get());
            }
        }
        if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
            let _ = record.into_task("fallback");
        }
        let _ = serde_json::from_slice::<Created>(&bytes);
    }

    /// Leniency: whatever kie.ai puts in its fields, an object is read, and
    /// the task made from it is well-formed.
    #[test]
    fn any_json_object_is_read_as_an_envelope_and_a_record(doc in json_object()) {
        let text = doc.to_string();
        let env = serde_json::from_str::<Envelope>(&text);
        prop_assert!(env.is_ok(), "envelope: {:?}", env.err());
        let record = serde_json::from_str::<Record>(&text);
        prop_assert!(record.is_ok(), "record: {:?}", record.err());
        let task = record.expect("checked").into_task("fallback");
        prop_assert!(!task.task_id.is_empty());
        prop_assert!(TaskState::try_from(task.state).is_ok());
        for t in [task.create_time, task.update_time, task.complete_time].into_iter().flatten() {
            prop_assert!(t.seconds >= 0 && (0..1_000_000_000).contains(&t.nanos), "{t:?}");
        }
        if let Some(d) = task.cost_time {
            prop_assert!(d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos), "{d:?}");
        }
    }

    #[test]
    fn well_formed_records_round_trip(model in record_model(), fallback in "[a-z0-9]{1,12}") {
        let doc = model.json();
        let record: Record = serde_json::from_str(&doc.to_string()).expect("record");
        let task = record.into_task(&fallback);

        let want_id = model.task_id.clone().filter(|s| !s.is_empty()).unwrap_or(fallback);
        prop_assert_eq!(&task.task_id, &want_id);
        prop_assert_eq!(&task.model, &model.model.clone().unwrap_or_default());
        let want_state = model.state.as_deref().map_or(TaskState::Unspecified, kie_state);
        prop_assert_eq!(task.state, want_state as i32);
        prop_assert_eq!(&task.video_urls, &model.urls.clone().map(|(u, _)| u).unwrap_or_default());
        let want_code = model.fail_code.as_ref().map(NumForm::text).unwrap_or_default();
        prop_assert_eq!(&task.fail_code, &want_code);
        prop_assert_eq!(&task.fail_message, &model.fail_msg.clone().unwrap_or_default());

        let parts = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
        prop_assert_eq!(parts(task.create_time), expected_timestamp(&model.create_time));
        prop_assert_eq!(parts(task.update_time), expected_timestamp(&model.update_time));
        prop_assert_eq!(parts(task.complete_time), expected_timestamp(&model.complete_time));
        let want_cost = model
            .cost_time
            .as_ref()
            .map(NumForm::value)
            .filter(|ms| *ms >= 0)
            .map(ms_to_parts);
        prop_assert_eq!(task.cost_time.map(|d| (d.seconds, d.nanos)), want_cost);
    }

    #[test]
    fn envelopes_yield_their_code_reason_and_data(
        code in num_form(any::<i64>()),
        msg in prop::option::of(any::<String>()),
        message in prop::option::of(any::<String>()),
        data in prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            record_model().prop_map(|m| Some(m.json())),
        ],
    ) {
        let mut doc = json!({ "code": code.json() });
        if let Some(m) = &msg {
            doc["msg"] = json!(m);
        }
        if let Some(m) = &message {
            doc["message"] = json!(m);
        }
        if let Some(d) = &data {
            doc["data"] = d.clone();
        }
        let text = doc.to_string();
        let env: Envelope = serde_json::from_str(&text).expect("envelope");
        // serde_json may read a float back one ulp off: compare with what it
        // reads, not with what was generated.
        let data = data.map(|d| reparse(&d));
        prop_assert_eq!(env.code, Some(code.value()));
        let want_reason = [msg, message]
            .into_iter()
            .flatten()
            .find(|m| !m.is_empty())
            .unwrap_or_default();
        prop_assert_eq!(env.reason(), want_reason);
        let got = env.data().map(|raw| serde_json::from_str::<Value>(raw.get()).expect("raw json"));
        prop_assert_eq!(got, data.filter(|d| !d.is_null()));
    }

    #[test]
    fn created_reads_any_task_id_that_is_a_string_or_number(
        id in prop_oneof![any::<String>().prop_map(Value::String), any::<i64>().prop_map(Value::from)],
    ) {
        let created: Created =
            serde_json::from_str(&json!({ "taskId": id }).to_string()).expect("created");
        let want = match &id {
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        prop_assert_eq!(created.task_id, want);
    }
}

#[test]
fn deeply_nested_json_neither_overflows_the_stack_nor_yields_a_task() {
    for depth in [1_000usize, 100_000] {
        // Arrays: a struct may be read from a JSON array, so the nesting
        // reaches the lenient field readers and serde_json's depth limit.
        let arrays = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(serde_json::from_str::<Envelope>(&arrays).is_err());
        assert!(serde_json::from_str::<Record>(&arrays).is_err());
        assert_eq!(task_id_of(arrays.as_bytes()), None);

        // Objects under `data`: kept raw (skipped without recursion), so
        // the envelope reads; the record inside has nothing to offer.
        let objects = format!("{}1{}", "{\"data\":".repeat(depth), "}".repeat(depth));
        let env = serde_json::from_str::<Envelope>(&objects).expect("data is kept raw");
        let data = env.data().expect("data").get();
        let task = serde_json::from_str::<Record>(data)
            .expect("unknown fields are skipped")
            .into_task("fallback");
        assert_eq!(task.task_id, "fallback");
        assert_eq!(task_id_of(objects.as_bytes()), None);
    }
}

// === kie.ai codes → gRPC status ===

fn upstream_error() -> impl Strategy<Value = UpstreamError> {
    let code = prop_oneof![
        3 => prop::sample::select(vec![
            200i64, 400, 401, 402, 404, 408, 422, 429, 433, 455, 500, 501, 502, 503, 504, 505,
        ]),
        2 => any::<i64>(),
    ];
    let kind = prop_oneof![
        4 => (code, message_text()).prop_map(|(code, msg)| UpstreamErrorKind::Code { code, msg }),
        1 => (any::<i64>(), message_text()).prop_map(|(code, msg)| UpstreamErrorKind::TaskNotFound { code, msg }),
        1 => message_text().prop_map(|detail| UpstreamErrorKind::Unavailable { detail }),
        1 => Just(UpstreamErrorKind::Timeout),
        1 => message_text().prop_map(|detail| UpstreamErrorKind::BadResponse { detail }),
        1 => prop::sample::select(vec!["create_rate", "queue_full", "no_slot_in_time"])
            .prop_map(|reason| UpstreamErrorKind::Shed { reason }),
    ];
    (
        prop::sample::select(vec![Endpoint::CreateTask, Endpoint::RecordInfo]),
        prop::sample::select(vec![KeySource::Gateway, KeySource::Caller]),
        // Retry-After is parsed from kie.ai's header as any u64 seconds.
        prop::option::of(prop_oneof![0u64..120, any::<u64>()].prop_map(Duration::from_secs)),
        kind,
    )
        .prop_map(|(endpoint, key_source, retry_after, kind)| UpstreamError {
            endpoint,
            key_source,
            retry_after,
            kind,
        })
}

/// RetryInfo cannot say more than about 10,000 years.
const MAX_RETRY_DELAY: Duration = Duration::new(315_576_000_000, 999_999_999);

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn every_upstream_error_becomes_a_complete_status(e in upstream_error()) {
        let mapped = classify(&e);
        let status = GatewayError::Upstream(e.clone()).to_status();
        prop_assert_eq!(status.code(), mapped.code);
        prop_assert!(!status.message().trim().is_empty());
        prop_assert_eq!(status.message(), mapped.message.as_str());

        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo is always set");
        // The gateway's own shedding is its domain; everything else kie.ai's.
        let domain = if matches!(e.kind, UpstreamErrorKind::Shed { .. }) { "hailuo-gateway" } else { "kie.ai" };
        prop_assert_eq!(info.domain.as_str(), domain);
        prop_assert_eq!(info.reason.as_str(), mapped.reason);
        prop_assert_eq!(info.metadata.get("endpoint").map(String::as_str), Some(e.endpoint.as_str()));

        let (want_code, want_reason, default_retry) = match &e.kind {
            UpstreamErrorKind::Code { code, msg } => {
                prop_assert_eq!(info.metadata.get("kie_code"), Some(&code.to_string()));
                prop_assert_eq!(info.metadata.get("kie_msg"), Some(msg));
                let said = format!("kie.ai {code}: {msg}");
                prop_assert!(status.message().contains(&said));
                expected_mapping(*code, e.key_source)
            }
            UpstreamErrorKind::TaskNotFound { code, msg } => {
                prop_assert_eq!(info.metadata.get("kie_code"), Some(&code.to_string()));
                prop_assert_eq!(info.metadata.get("kie_msg"), Some(msg));
                (Code::NotFound, "TASK_NOT_FOUND", None)
            }
            UpstreamErrorKind::Unavailable { detail } => {
                prop_assert_eq!(info.metadata.get("detail"), Some(detail));
                (Code::Unavailable, "UPSTREAM_UNAVAILABLE", Some(1))
            }
            UpstreamErrorKind::Timeout => (Code::DeadlineExceeded, "UPSTREAM_TIMEOUT", None),
            UpstreamErrorKind::BadResponse { detail } => {
                prop_assert_eq!(info.metadata.get("detail"), Some(detail));
                (Code::Internal, "UPSTREAM_BAD_RESPONSE", None)
            }
            UpstreamErrorKind::Shed { reason } => {
                prop_assert_eq!(info.metadata.get("limit").map(String::as_str), Some(*reason));
                (Code::ResourceExhausted, "GATEWAY_OVERLOADED", Some(1))
            }
        };
        prop_assert_eq!((status.code(), info.reason.as_str()), (want_code, want_reason));

        // RetryInfo exactly for the codes a client should retry, honouring
        // Retry-After (clamped to what RetryInfo can say).
        let retryable = matches!(status.code(), Code::ResourceExhausted | Code::Unavailable);
        let retry = details.retry_info().map(|r| r.retry_delay);
        if retryable {
            let default = Duration::from_secs(default_retry.expect("a retryable code has a delay"));
            let want = e.retry_after.unwrap_or(default).min(MAX_RETRY_DELAY);
            prop_assert_eq!(retry, Some(Some(want)));
        } else {
            prop_assert_eq!(retry, None);
        }

        // Whatever kie.ai said, the status can be written as gRPC headers.
        prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
        let _ = GatewayError::Upstream(e.clone()).severity();
    }

    #[test]
    fn exhausted_watches_are_unavailable_with_retry_info(e in upstream_error(), attempts in any::<u32>()) {
        let status = GatewayError::WatchRetriesExhausted { attempts, last: e }.to_status();
        prop_assert_eq!(status.code(), Code::Unavailable);
        prop_assert!(!status.message().is_empty());
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        prop_assert_eq!(info.domain.as_str(), "kie.ai");
        prop_assert_eq!(info.metadata.get("attempts"), Some(&attempts.to_string()));
        prop_assert!(details.retry_info().is_some());
        prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
    }
}

// === callbacks ===

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn signed_headers(timestamp: &str, signature: &[u8]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(
        "x-webhook-timestamp",
        HeaderValue::from_str(timestamp).ok()?,
    );
    h.insert(
        "x-webhook-signature",
        HeaderValue::from_bytes(signature).ok()?,
    );
    Some(h)
}

fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        json_leaf(),
    ]
}

/// What `task_id_of` should find in one place.
fn usable_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn task_id_of_never_panics(bytes in json_bytes()) {
        let _ = task_id_of(&bytes);
    }

    #[test]
    fn task_id_of_prefers_data_task_id_then_data_task_id_snake_then_top_level(
        data_camel in prop::option::of(id_value()),
        data_snake in prop::option::of(id_value()),
        top in prop::option::of(id_value()),
        noise in json_object(),
    ) {
        let mut doc = noise;
        let mut data = serde_json::Map::new();
        if let Some(v) = &data_camel {
            data.insert("taskId".into(), v.clone());
        }
        if let Some(v) = &data_snake {
            data.insert("task_id".into(), v.clone());
        }
        doc["data"] = Value::Object(data);
        match &top {
            Some(v) => doc["taskId"] = v.clone(),
            None => {
                doc.as_object_mut().expect("object").remove("taskId");
            }
        }
        // serde_json may read a float back one ulp off: expect what it reads.
        let read = reparse(&doc);
        let want = usable_id(read["data"].get("taskId"))
            .or_else(|| usable_id(read["data"].get("task_id")))
            .or_else(|| usable_id(read.get("taskId")));
        prop_assert_eq!(task_id_of(doc.to_string().as_bytes()), want);
        // And the places are the ones generated.
        prop_assert_eq!(read["data"].get("taskId").is_some(), data_camel.is_some());
        prop_assert_eq!(read["data"].get("task_id").is_some(), data_snake.is_some());
        prop_assert_eq!(read.get("taskId").is_some(), top.is_some());
    }

    #[test]
    fn a_fresh_signature_verifies_and_any_one_byte_change_does_not(
        key in any::<String>(),
        task_id in any::<String>(),
        skew in -300i64..=300,
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        mutate_id in any::<bool>(),
    ) {
        let now = now_secs();
        let ts = now.saturating_add_signed(skew);
        let signature = sign(&key, &task_id, ts);
        let api_key = ApiKey::new(key.clone());
        let clock = UNIX_EPOCH + Duration::from_secs(now);
        let headers = signed_headers(&ts.to_string(), signature.as_bytes()).expect("ascii");
        prop_assert_eq!(verify_signature(&api_key, &task_id, &headers, clock), Ok(()));

        if mutate_id {
            let mut bytes = task_id.clone().into_bytes();
            if bytes.is_empty() {
                bytes.push(flip);
            } else {
                let i = at.index(bytes.len());
                bytes[i] ^= flip;
            }
            // Only an id that is still text can arrive in a JSON body.
            if let Ok(other_id) = String::from_utf8(bytes) {
                prop_assert!(verify_signature(&api_key, &other_id, &headers, clock).is_err());
            }
        } else {
            let mut bytes = signature.clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            // A byte a header cannot carry never reaches the check.
            if let Some(headers) = signed_headers(&ts.to_string(), &bytes) {
                prop_assert!(verify_signature(&api_key, &task_id, &headers, clock).is_err(),
                    "accepted {:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn signatures_outside_five_minutes_are_stale(
        key in "[ -~]{0,40}",
        task_id in "[A-Za-z0-9_-]{1,40}",
        skew in prop_oneof![301i64..100_000, -100_000i64..-300],
    ) {
        let now = now_secs();
        let ts = now.saturating_add_signed(skew);
        let headers = signed_headers(&ts.to_string(), sign(&key, &task_id, ts).as_bytes())
            .expect("ascii");
        let clock = UNIX_EPOCH + Duration::from_secs(now);
        prop_assert_eq!(
            verify_signature(&ApiKey::new(key), &task_id, &headers, clock),
            Err("stale_timestamp")
        );
    }

    #[test]
    fn verify_signature_never_panics_on_arbitrary_headers(
        key in any::<String>(),
        task_id in any::<String>(),
        timestamp in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        signature in prop::option::of(prop::collection::vec(any::<u8>(), 0..60)),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(v) = timestamp.and_then(|t| HeaderValue::from_bytes(&t).ok()) {
            headers.insert("x-webhook-timestamp", v);
        }
        if let Some(v) = signature.and_then(|s| HeaderValue::from_bytes(&s).ok()) {
            headers.insert("x-webhook-signature", v);
        }
        let _ = verify_signature(&ApiKey::new(key), &task_id, &headers, SystemTime::now());
    }
}

// === the callback route, through the real router ===

const HMAC_KEY: &str = "callback-hmac-key";

struct CallbackApp {
    runtime: tokio::runtime::Runtime,
    open: axum::Router,
    signed: axum::Router,
}

fn callback_app() -> CallbackApp {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (open, signed) = runtime.block_on(async {
        (
            router(HttpState::detached(None).expect("state")),
            router(HttpState::detached(Some(ApiKey::new(HMAC_KEY))).expect("state")),
        )
    });
    CallbackApp {
        runtime,
        open,
        signed,
    }
}

impl CallbackApp {
    fn post(
        &self,
        signed: bool,
        body: Vec<u8>,
        headers: &[(String, Vec<u8>)],
    ) -> (StatusCode, Value) {
        let router = if signed { &self.signed } else { &self.open };
        let mut request = Request::post("/callbacks/kie");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_slice());
        }
        let request = request.body(Body::from(body)).expect("request");
        self.runtime.block_on(async {
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (
                status,
                serde_json::from_slice(&bytes).expect("a JSON answer"),
            )
        })
    }
}

fn callback_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_bytes(),
        3 => ("[A-Za-z0-9_-]{1,130}|[a-z /?&%.]{1,20}", json_object()).prop_map(|(id, mut doc)| {
            doc["data"] = json!({ "taskId": id, "state": "success" });
            doc.to_string().into_bytes()
        }),
        1 => (MAX_CALLBACK_BODY - 40..MAX_CALLBACK_BODY + 16)
            .prop_map(|n| format!("{{\"taskId\":\"{}\"}}", "a".repeat(n)).into_bytes()),
    ]
}

fn callback_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        "x-webhook-timestamp",
        "x-webhook-signature",
        "content-type",
        "x-other",
    ]);
    let value = prop_oneof![
        "[ -~]{0,48}".prop_map(String::into_bytes),
        "[0-9]{1,12}".prop_map(String::into_bytes),
        // Header values are visible ASCII or obs-text; HeaderValue refuses
        // control characters, so only those are generated.
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..48),
    ];
    prop::collection::vec((name.prop_map(str::to_string), value), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn the_callback_route_answers_json_and_only_the_expected_statuses(
        body in callback_body(),
        headers in callback_headers(),
        sign_it in any::<bool>(),
    ) {
        static APP: OnceLock<CallbackApp> = OnceLock::new();
        let app = APP.get_or_init(callback_app);
        let found = task_id_of(&body);
        let too_large = body.len() > MAX_CALLBACK_BODY;
        let mut headers = headers;
        if sign_it && let Some(id) = &found {
            let ts = now_secs();
            headers = vec![
                ("x-webhook-timestamp".into(), ts.to_string().into_bytes()),
                ("x-webhook-signature".into(), sign(HMAC_KEY, id, ts).into_bytes()),
            ];
        }
        let header_map: HeaderMap = headers
            .iter()
            .map(|(n, v)| {
                (n.parse().expect("name"), HeaderValue::from_bytes(v).expect("value"))
            })
            .collect();

        for signed in [false, true] {
            let (status, answer) = app.post(signed, body.clone(), &headers);
            prop_assert_eq!(answer["code"].as_u64(), Some(u64::from(status.as_u16())));
            prop_assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));
            let want = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else if let Some(id) = &found {
                let verified = !signed
                    || verify_signature(&ApiKey::new(HMAC_KEY), id, &header_map, SystemTime::now())
                        .is_ok();
                if !verified {
                    StatusCode::UNAUTHORIZED
                } else if is_task_id(id) {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                }
            } else {
                StatusCode::BAD_REQUEST
            };
            prop_assert_eq!(status, want);
        }
    }
}
