//! Callback task ids and signatures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use hailuo_gateway::config::Secret;
use hailuo_gateway::http::callbacks::{sign, task_id_of, verify_signature};
use proptest::prelude::*;
use serde_json::Value;

use crate::json::{json_bytes, json_leaf, json_object, reparse};

pub fn now_secs() -> u64 {
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
        let api_key = Secret::new(key.clone());
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
            verify_signature(&Secret::new(key), &task_id, &headers, clock),
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
        let _ = verify_signature(&Secret::new(key), &task_id, &headers, SystemTime::now());
    }
}
