//! Every call leaves one log line and one count, however it ends: a watch
//! ended by an operator-severity error is logged at ERROR with its reason and
//! message, and calls the caller left or tonic refused are counted too. Every
//! JSON log line is one object with unique keys.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use hailuo_gateway::pb::CreateTaskRequest;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::{Code, IntoRequest};
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, MockServer};

use crate::binary::*;
use crate::helpers::*;

/// The next JSON log line that `wanted` accepts.
async fn log_line(logs: &mut UnboundedReceiver<String>, wanted: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = logs.recv().await {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && wanted(&entry)
            {
                return entry;
            }
        }
        panic!("the gateway exited without the log line");
    })
    .await
    .expect("the log line in time")
}

fn rpc_line(entry: &Value, method: &str) -> bool {
    entry["method"] == method && entry["latency_ms"].is_number()
}

#[tokio::test]
async fn a_watch_ended_by_kie_refusing_the_gateways_key_is_logged_at_error_with_reason_and_message()
{
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(RECORD_PATH))
        .respond_with(Sequence::new(vec![
            kie_ok(record("t_key", "generating")),
            kie_error(401, "You do not have access permissions"),
        ]))
        .mount(&upstream)
        .await;
    let mut gateway = start_gateway_with(
        &upstream,
        &[
            ("GATEWAY_LOG_FORMAT", "json"),
            // The record's createTime is long past: the slow cadence applies.
            ("GATEWAY_POLL_SLOW", "50ms"),
        ],
    )
    .await;
    let caller = gateway.caller().await;
    let mut request = tonic::Request::new(watch_request("t_key"));
    request
        .metadata_mut()
        .insert("x-request-id", "req-watch-401".parse().expect("ascii"));

    let mut stream = caller.try_watch(request).await.expect("watch");
    next_message(&mut stream).await;
    let ended = stream.message().await.expect_err("ends with the refusal");
    assert_eq!(ended.code(), Code::Internal, "{ended:?}");

    let entry = log_line(&mut gateway.logs, |e| rpc_line(e, "WatchTask")).await;
    assert_eq!(entry["level"], "ERROR", "{entry}");
    assert_eq!(entry["message"], "rpc", "{entry}");
    assert_eq!(entry["request_id"], "req-watch-401", "{entry}");
    assert_eq!(entry["task_id"], "t_key", "{entry}");
    assert_eq!(entry["code"], "Internal", "{entry}");
    assert_eq!(entry["reason"], "UPSTREAM_UNAUTHENTICATED", "{entry}");
    let message = entry["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("refused the gateway's API key")
            && message.contains("You do not have access permissions"),
        "{entry}"
    );
    assert!(
        !entry.to_string().contains(TEST_KEY),
        "the key is never logged"
    );
}

#[tokio::test]
async fn a_create_task_the_caller_cancelled_is_logged_and_counted() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "t_late"})).set_delay(Duration::from_secs(30)))
        .mount(&upstream)
        .await;
    let mut gateway = start_gateway_with(&upstream, &[("GATEWAY_LOG_FORMAT", "json")]).await;
    let caller = gateway.caller().await;
    let mut client = caller.client.clone();
    let call = tokio::spawn(async move { client.create_task(valid_request()).await });
    let upstream_called = wait_for(Duration::from_secs(5), || async {
        received(&upstream, CREATE_PATH).await > 0
    })
    .await;
    assert!(upstream_called, "the call reached kie.ai");

    // Dropping the call's future resets its stream: the caller cancelled.
    call.abort();

    let entry = log_line(&mut gateway.logs, |e| rpc_line(e, "CreateTask")).await;
    assert_eq!(entry["code"], "Cancelled", "{entry}");
    assert_eq!(entry["level"], "INFO", "the caller's doing: {entry}");
    let metrics = caller.metrics().await;
    assert!(
        metrics.contains(r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="anonymous",code="CANCELLED"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_watch_whose_deadline_passes_before_its_first_message_is_counted() {
    let app = spawn_app().await;
    mount_record(
        &app,
        Sequence::new(vec![
            kie_ok(record("t_slow", "generating")).set_delay(Duration::from_secs(30)),
        ]),
    )
    .await;
    let request = with_timeout(watch_request("t_slow"), Duration::from_millis(300));

    let refused = app
        .new_client()
        .await
        .watch_task(request)
        .await
        .expect_err("no first message in time");
    assert_eq!(
        refused.code(),
        Code::Cancelled,
        "tonic's timer: {refused:?}"
    );

    let counted = wait_for(Duration::from_secs(5), || async {
        app.metrics()
            .await
            .contains(r#"hailuo_gateway_rpcs_total{method="WatchTask",caller="anonymous",code="CANCELLED"} 1"#)
    })
    .await;
    assert!(counted, "{}", app.metrics().await);
}

#[tokio::test]
async fn a_request_tonic_cannot_decode_is_counted() {
    let app = spawn_app().await;
    let too_large = CreateTaskRequest {
        // Above the 21 MiB limit (room for two 10 MiB images).
        prompt: "x".repeat(22 * 1024 * 1024),
        ..valid_request()
    };

    let refused = app
        .new_client()
        .await
        .create_task(too_large)
        .await
        .expect_err("above the message size limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    let counted = wait_for(Duration::from_secs(5), || async {
        app.metrics().await.contains(
            r#"hailuo_gateway_rpcs_total{method="CreateTask",caller="anonymous",code="RESOURCE_EXHAUSTED"} 1"#,
        )
    })
    .await;
    assert!(counted, "{}", app.metrics().await);
}

/// A JSON value parsed by a parser that refuses an object with a key twice
/// (serde_json keeps the last one): log pipelines reject such lines or
/// silently drop one of the values.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(UniqueKeys(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
            object.insert(key, value);
        }
        Ok(UniqueKeys(Value::Object(object)))
    }
}

pub(crate) fn strict_json(line: &str) -> Result<Value, String> {
    serde_json::from_str::<UniqueKeys>(line)
        .map(|UniqueKeys(value)| value)
        .map_err(|e| format!("{e}: {line}"))
}

#[test]
fn the_strict_parser_refuses_a_key_twice() {
    assert!(strict_json(r#"{"message":"rpc","a":{"b":1}}"#).is_ok());
    assert!(strict_json(r#"{"message":"rpc","message":"boom"}"#).is_err());
    assert!(strict_json(r#"{"a":[{"b":1,"b":2}]}"#).is_err());
}

/// `message` with its `x-request-id`.
fn tagged<T>(message: impl IntoRequest<T>, id: &str) -> tonic::Request<T> {
    let mut request = message.into_request();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("ascii"));
    request
}

/// One run of the real binary with JSON logs through successes and errors
/// of every kind, including the three a handler never answers itself (a
/// message tonic could not decode, a call its caller cancelled, a watch
/// whose deadline passed before its first message): every line is one JSON
/// object with unique keys, and every call has exactly one `rpc` line and
/// one count.
#[tokio::test]
async fn every_json_log_line_has_unique_keys_and_every_rpc_exactly_one_line_and_count() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .and(body_partial_json(json!({"input": {"prompt": "slow"}})))
        .respond_with(kie_ok(json!({"taskId": "t_late"})).set_delay(Duration::from_secs(30)))
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "t_ok"})))
        .mount(&upstream)
        .await;
    for (task, answer) in [
        ("t_ok", kie_ok(record("t_ok", "success"))),
        (
            "t_401",
            kie_error(401, "You do not have access permissions"),
        ),
        (
            "t_slow",
            kie_ok(record("t_slow", "generating")).set_delay(Duration::from_secs(30)),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(RECORD_PATH))
            .and(query_param("taskId", task))
            .respond_with(answer)
            .mount(&upstream)
            .await;
    }
    let mut gateway = start_gateway_with(&upstream, &[("GATEWAY_LOG_FORMAT", "json")]).await;
    let caller = gateway.caller().await;
    let mut client = caller.client.clone();

    // Successes.
    client
        .create_task(tagged(valid_request(), "r-create-ok"))
        .await
        .expect("created");
    client
        .get_task(tagged(get_request("t_ok"), "r-get-ok"))
        .await
        .expect("got");
    let mut watched = client
        .watch_task(tagged(watch_request("t_ok"), "r-watch-ok"))
        .await
        .expect("watch")
        .into_inner();
    while watched.message().await.expect("no error").is_some() {}
    // Errors the handlers answer: the caller's, and the operator's.
    let invalid = CreateTaskRequest {
        prompt: String::new(),
        ..valid_request()
    };
    let refused = client
        .create_task(tagged(invalid, "r-invalid"))
        .await
        .expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let refused = client
        .get_task(tagged(get_request("t_401"), "r-get-401"))
        .await
        .expect_err("key refused");
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    // A message tonic refuses before any handler runs.
    let too_large = CreateTaskRequest {
        prompt: "x".repeat(22 * 1024 * 1024),
        ..valid_request()
    };
    let refused = client
        .create_task(tagged(too_large, "r-too-large"))
        .await
        .expect_err("too large");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A call its caller cancels while kie.ai takes its time.
    let slow = CreateTaskRequest {
        prompt: "slow".into(),
        ..valid_request()
    };
    let mut cancelled_client = client.clone();
    let call = tokio::spawn(async move {
        cancelled_client
            .create_task(tagged(slow, "r-cancelled"))
            .await
    });
    let slow_create_sent = wait_for(Duration::from_secs(5), || async {
        received(&upstream, CREATE_PATH).await >= 2
    })
    .await;
    assert!(slow_create_sent, "the slow create reached kie.ai");
    call.abort();
    // A watch whose deadline passes before its first message.
    let timed_out = client
        .watch_task(tagged(
            with_timeout(watch_request("t_slow"), Duration::from_millis(300)),
            "r-deadline",
        ))
        .await;
    assert!(timed_out.is_err(), "no first message in time");

    let expected = [
        ("r-create-ok", "CreateTask", "OK"),
        ("r-get-ok", "GetTask", "OK"),
        ("r-watch-ok", "WatchTask", "OK"),
        ("r-invalid", "CreateTask", "INVALID_ARGUMENT"),
        ("r-get-401", "GetTask", "INTERNAL"),
        ("r-too-large", "CreateTask", "RESOURCE_EXHAUSTED"),
        ("r-cancelled", "CreateTask", "CANCELLED"),
        ("r-deadline", "WatchTask", "CANCELLED"),
    ];
    let series = |method: &str, code: &str| {
        format!(
            r#"hailuo_gateway_rpcs_total{{method="{method}",caller="anonymous",code="{code}"}}"#
        )
    };
    let mut wanted: HashMap<String, u32> = HashMap::new();
    for (_, method, code) in expected {
        *wanted.entry(series(method, code)).or_default() += 1;
    }
    let all_counted = wait_for(Duration::from_secs(10), || async {
        let metrics = caller.metrics().await;
        wanted
            .iter()
            .all(|(series, n)| metrics.contains(&format!("{series} {n}\n")))
    })
    .await;
    let metrics = caller.metrics().await;
    assert!(all_counted, "{metrics}");
    let counted: u32 = metrics
        .lines()
        .filter(|l| l.starts_with("hailuo_gateway_rpcs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
        .sum();
    assert_eq!(
        counted as usize,
        expected.len(),
        "one count per call: {metrics}"
    );

    // Every line the gateway writes up to its exit, startup included.
    sigterm(&gateway.child);
    exit_within(
        &mut gateway.child,
        Duration::from_secs(15),
        "exits on SIGTERM",
    )
    .await;
    let mut lines = gateway.startup_logs.clone();
    while let Some(line) = gateway.logs.recv().await {
        lines.push(line);
    }
    let mut entries = Vec::new();
    for line in &lines {
        entries.push(strict_json(line).unwrap_or_else(|e| panic!("not strict JSON: {e}")));
    }
    assert!(
        entries.iter().any(|e| e["level"] == "ERROR"),
        "an error line was among them: {lines:#?}"
    );
    let rpc_lines: Vec<&Value> = entries
        .iter()
        .filter(|e| e["message"] == "rpc" && e["method"].is_string())
        .collect();
    for (request_id, method, code) in expected {
        let of_call: Vec<_> = rpc_lines
            .iter()
            .filter(|e| e["request_id"] == request_id)
            .collect();
        assert_eq!(of_call.len(), 1, "{request_id}: {of_call:#?}");
        assert_eq!(of_call[0]["method"], method, "{}", of_call[0]);
        let code_name = of_call[0]["code"].as_str().unwrap_or_default();
        assert_eq!(
            code_name.to_uppercase(),
            code.replace('_', ""),
            "{}",
            of_call[0]
        );
    }
    assert_eq!(rpc_lines.len(), expected.len(), "{rpc_lines:#?}");
}
