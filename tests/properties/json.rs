//! Arbitrary JSON, often with kie.ai's field names, and bytes that are
//! nearly JSON: shared by the kie.ai JSON and callback properties.

use proptest::prelude::*;
use serde_json::Value;

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

pub fn json_leaf() -> impl Strategy<Value = Value> {
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

pub fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(json_key(), json_value(), 0..10)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Raw bytes that are often nearly JSON.
pub fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
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

pub fn reparse(v: &Value) -> Value {
    serde_json::from_str(&v.to_string()).expect("serde_json reads what it writes")
}
