//! Lenient reading of kie.ai's JSON: envelopes, records and created tasks.

use std::collections::BTreeMap;

use hailuo_gateway::http::callbacks::task_id_of;
use hailuo_gateway::kie::wire::{Created, Envelope, Record};
use hailuo_gateway::pb::TaskState;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::json::{json_bytes, json_leaf, json_object, reparse};

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

fn ms_to_parts(ms: i64) -> (i64, i32) {
    (
        ms.div_euclid(1000),
        (ms.rem_euclid(1000) * 1_000_000) as i32,
    )
}

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
