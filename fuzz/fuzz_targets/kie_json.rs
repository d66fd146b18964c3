//! kie.ai's answers as the gateway reads them: the envelope, a recordInfo
//! record (`into_task`), a createTask `data`, and the status an error code
//! becomes. Beyond "no panic", each task must be well-formed.
#![no_main]

use hailuo_gateway::error::GatewayError;
use hailuo_gateway::kie::wire::{Created, Envelope, Record};
use hailuo_gateway::kie::{Endpoint, KeySource, UpstreamError, UpstreamErrorKind};
use hailuo_gateway::pb::{self, TaskState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        let reason = env.reason();
        match env.code {
            Some(200) => {}
            // The way Answer::read turns any other code into an error, and
            // the status a caller then sees.
            Some(code) => check_status(code, reason),
            None => {}
        }
        if let Some(raw) = env.data() {
            if let Ok(record) = serde_json::from_str::<Record>(raw.get()) {
                check_task(&record.into_task("fallback"));
            }
            if let Ok(created) = serde_json::from_str::<Created>(raw.get()) {
                assert!(created.task_id.is_none_or(|id| !id.is_empty()));
            }
        }
    }
    if let Ok(record) = serde_json::from_slice::<Record>(data) {
        check_task(&record.into_task("fallback"));
    }
    let _ = serde_json::from_slice::<Created>(data);
});

fn check_task(task: &pb::Task) {
    assert!(!task.task_id.is_empty(), "a task always has an id");
    assert!(TaskState::try_from(task.state).is_ok(), "a known state");
    for t in [&task.create_time, &task.update_time, &task.complete_time]
        .into_iter()
        .flatten()
    {
        assert!(t.seconds > 0 || t.nanos > 0, "unset, not zero: {t:?}");
        assert!((0..1_000_000_000).contains(&t.nanos), "{t:?}");
    }
    if let Some(d) = &task.cost_time {
        assert!(
            d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos),
            "{d:?}"
        );
    }
}

fn check_status(code: i64, msg: String) {
    for key_source in [KeySource::Gateway, KeySource::Caller] {
        let error = GatewayError::Upstream(UpstreamError {
            endpoint: Endpoint::RecordInfo,
            key_source,
            retry_after: None,
            kind: UpstreamErrorKind::Code {
                code,
                msg: msg.clone(),
            },
        });
        let status = error.to_status();
        assert!(!status.message().is_empty());
        let mut headers = tonic::codegen::http::HeaderMap::new();
        assert!(status.add_header(&mut headers).is_ok(), "{status:?}");
        let _ = error.severity();
    }
}
