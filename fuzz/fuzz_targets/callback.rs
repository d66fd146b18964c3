//! `POST /callbacks/kie` through the real axum router (`http::router`),
//! with arbitrary headers and body, with and without an HMAC key. The
//! answer must be JSON `{"code": <status>, "msg": …}` with one of the
//! statuses the handler documents, and what it decides must agree with
//! `task_id_of`, `verify_signature` and `TaskId::parse`.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use hailuo_gateway::create::attempts::Attempts;
use hailuo_gateway::config::{Secret, Settings};
use hailuo_gateway::http::callbacks::{MAX_CALLBACK_BODY, sign, task_id_of, verify_signature};
use hailuo_gateway::http::{CallbackState, router};
use hailuo_gateway::hub::TaskWaker;
use hailuo_gateway::create::idempotency::InMemoryStore;
use hailuo_gateway::kie::KieClient;
use hailuo_gateway::metrics::Metrics;
use hailuo_gateway::task::TaskId;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const HMAC_KEY: &str = "fuzz-hmac-key";
const HEADER_NAMES: [&str; 5] = [
    "x-webhook-timestamp",
    "x-webhook-signature",
    "content-type",
    "content-length",
    "x-other",
];

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit 0: the gateway has an HMAC key. Bit 1: sign the body correctly
    /// (so signed callbacks get past the check). Bit 2: a stale timestamp.
    flags: u8,
    headers: Vec<(u8, Vec<u8>)>,
    /// Last, so it takes the rest of the input: seeds are plain JSON.
    body: Vec<u8>,
}

struct App {
    runtime: tokio::runtime::Runtime,
    open: axum::Router,
    signed: axum::Router,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let app = |hmac_key| {
            let state = callback_state(hmac_key);
            let metrics = state.metrics.clone();
            router(state, metrics)
        };
        App {
            runtime,
            open: app(None),
            signed: app(Some(Secret::new(HMAC_KEY))),
        }
    })
}

/// The callback route's state, built from its narrow pieces with no
/// upstream: a waker of no hub wakes nothing, and attempts without a public
/// callback URL never re-read a task.
fn callback_state(hmac_key: Option<Secret>) -> CallbackState {
    let metrics = Arc::new(Metrics::new());
    // Port 9 (discard): nothing answers there, and nothing is sent.
    let settings = Settings::local("http://127.0.0.1:9/".parse().expect("url"), None);
    let kie = KieClient::new(&settings.upstream, metrics.clone()).expect("client");
    let idempotency = settings.idempotency;
    let attempts = Attempts::new(
        kie,
        InMemoryStore::new(idempotency),
        metrics.clone(),
        None,
        idempotency.ttl,
        idempotency.max_keys,
    );
    CallbackState {
        waker: TaskWaker::default(),
        attempts,
        metrics,
        hmac_key,
    }
}

fuzz_target!(|input: Input| {
    let app = app();
    let keyed = input.flags & 1 != 0;
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(HEADER_NAMES[usize::from(*name) % HEADER_NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let found = task_id_of(&input.body);
    if input.flags & 2 != 0
        && let Some(id) = &found
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let ts = if input.flags & 4 != 0 { now - 301 } else { now };
        let signature = sign(HMAC_KEY, id, ts);
        headers.insert("x-webhook-timestamp", HeaderValue::from(ts));
        headers.insert(
            "x-webhook-signature",
            HeaderValue::from_str(&signature).expect("base64 is ascii"),
        );
    }

    let mut request = Request::post("/callbacks/kie")
        .body(Body::from(input.body.clone()))
        .expect("request");
    *request.headers_mut() = headers.clone();
    let router = if keyed { &app.signed } else { &app.open };
    let (status, answer) = app.runtime.block_on(async {
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, bytes)
    });

    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(answer["code"].as_u64(), Some(u64::from(status.as_u16())));
    assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));

    let expected = if input.body.len() > MAX_CALLBACK_BODY {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if let Some(id) = &found {
        let verified = !keyed
            || verify_signature(&Secret::new(HMAC_KEY), id, &headers, SystemTime::now()).is_ok();
        if !verified {
            StatusCode::UNAUTHORIZED
        } else if TaskId::parse(id.clone()).is_ok() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }
    } else {
        StatusCode::BAD_REQUEST
    };
    assert_eq!(status, expected, "{answer}");
});
