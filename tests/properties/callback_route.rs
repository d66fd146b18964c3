//! The callback route, through the real router.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use hailuo_gateway::config::{Secret, Settings};
use hailuo_gateway::create::attempts::Attempts;
use hailuo_gateway::create::idempotency::InMemoryStore;
use hailuo_gateway::http::callbacks::{MAX_CALLBACK_BODY, sign, task_id_of, verify_signature};
use hailuo_gateway::http::{CallbackState, router};
use hailuo_gateway::hub::TaskWaker;
use hailuo_gateway::kie::KieClient;
use hailuo_gateway::metrics::Metrics;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::callbacks::now_secs;
use crate::json::{json_bytes, json_object};
use crate::validation::is_task_id;

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
    let app = |hmac_key| router(callback_state(hmac_key));
    CallbackApp {
        runtime,
        open: app(None),
        signed: app(Some(Secret::new(HMAC_KEY))),
    }
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
                    || verify_signature(&Secret::new(HMAC_KEY), id, &header_map, SystemTime::now())
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
