//! `POST /callbacks/kie`: kie.ai's "task finished" callback. A callback is
//! only a wake-up: the task's poller re-reads recordInfo at once, so a
//! forged body can never put a state or URL in front of a caller. With
//! Redis the wake-up is also published to the other replicas (the
//! `TaskWaker` does it), as the task's poller may run on any of them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::Secret;
use crate::create::attempts::{self, Attempts};
use crate::hub::TaskWaker;
use crate::metrics::Metrics;
use crate::task::TaskId;

/// kie.ai's callback is a recordInfo-sized JSON document; anything larger
/// is not from kie.ai.
pub const MAX_CALLBACK_BODY: usize = 64 * 1024;
/// A sender slower than this is not kie.ai either (it times out at 15 s).
pub(crate) const CALLBACK_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Signed callbacks older (or newer) than this are refused as replays.
pub(crate) const MAX_SIGNATURE_AGE: Duration = Duration::from_secs(5 * 60);

/// What the callback route needs, and no more: a callback can wake a
/// task's pollers and settle a create attempt, nothing else.
#[derive(Clone)]
pub struct CallbackState {
    pub waker: TaskWaker,
    /// Create attempts a callback may name the task of.
    pub attempts: Arc<Attempts>,
    pub metrics: Arc<Metrics>,
    /// Verify X-Webhook-Signature with this key when set.
    pub hmac_key: Option<Secret>,
}

type Answer = (StatusCode, Json<Value>);

fn answer(status: StatusCode, msg: &str) -> Answer {
    (status, Json(json!({"code": status.as_u16(), "msg": msg})))
}

pub(crate) async fn receive(
    State(state): State<CallbackState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let metrics = &state.metrics;
    let reject = |status: StatusCode, reason: &'static str, msg: &str| {
        metrics.callback(reason);
        tracing::warn!(reason, "callback rejected");
        answer(status, msg)
    };

    let bytes = match tokio::time::timeout(
        CALLBACK_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_CALLBACK_BODY),
    )
    .await
    {
        Err(_) => return reject(StatusCode::REQUEST_TIMEOUT, "slow_body", "body too slow"),
        Ok(Err(_)) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body too large or broken",
            );
        }
        Ok(Ok(bytes)) => bytes,
    };
    let Some(raw_id) = task_id_of(&bytes) else {
        return reject(
            StatusCode::BAD_REQUEST,
            "no_task_id",
            "no task id in the body",
        );
    };
    if let Some(key) = &state.hmac_key
        && let Err(why) = verify_signature(key, &raw_id, &headers, SystemTime::now())
    {
        return reject(StatusCode::UNAUTHORIZED, why, why);
    }
    let Ok(task_id) = TaskId::parse(raw_id) else {
        return reject(StatusCode::BAD_REQUEST, "bad_task_id", "malformed task id");
    };
    metrics.callback("accepted");
    // Wakes this replica's pollers, and announces it to the fleet.
    let woken = state.waker.wake(&task_id);
    tracing::info!(%task_id, woken, "callback accepted");
    // A create attempt whose answer was lost learns its task this way.
    if let Some(token) = attempt_token(query.as_deref()) {
        state.attempts.callback(&token, &task_id);
    }
    // Unknown tasks are answered 200 too: kie.ai must not retry them.
    answer(StatusCode::OK, "success")
}

/// The create attempt's token in the callback URL's query, if any.
fn attempt_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == attempts::TOKEN_PARAM)
        .map(|(_, token)| token.into_owned())
}

/// kie.ai's id of the task: `data.taskId`, `data.task_id` (other kie.ai
/// products and its signing docs) or a top-level `taskId`.
pub fn task_id_of(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let data = doc.get("data");
    [
        data.and_then(|d| d.get("taskId")),
        data.and_then(|d| d.get("task_id")),
        doc.get("taskId"),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// `X-Webhook-Signature` must be base64(HMAC-SHA256(key, taskId + "." +
/// X-Webhook-Timestamp)), compared in constant time, with a timestamp no
/// further than 5 minutes from now.
pub fn verify_signature(
    key: &Secret,
    task_id: &str,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<(), &'static str> {
    let timestamp = headers
        .get("x-webhook-timestamp")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing_timestamp")?;
    let signature = headers
        .get("x-webhook-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing_signature")?;
    let sent: u64 = timestamp.trim().parse().map_err(|_| "bad_timestamp")?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "bad_clock")?
        .as_secs();
    if now.abs_diff(sent) > MAX_SIGNATURE_AGE.as_secs() {
        return Err("stale_timestamp");
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| "bad_signature")?;
    // Over the timestamp exactly as sent: that is the text kie.ai signed.
    let mac = signature_mac(key.expose(), task_id, timestamp).map_err(|_| "bad_signature")?;
    // verify_slice compares in constant time.
    mac.verify_slice(&signature).map_err(|_| "bad_signature")
}

/// Signs like kie.ai does: the simulator's callbacks and the tests use it.
pub fn sign(key: &str, task_id: &str, timestamp: u64) -> String {
    let mac = signature_mac(key, task_id, &timestamp.to_string())
        .expect("HMAC-SHA256 takes a key of any length");
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// HMAC-SHA256(key, taskId + "." + timestamp), shared by both sides so they
/// cannot drift apart.
fn signature_mac(
    key: &str,
    task_id: &str,
    timestamp: &str,
) -> Result<Hmac<Sha256>, hmac::digest::InvalidLength> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())?;
    mac.update(task_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timestamp: u64, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-webhook-timestamp",
            timestamp.to_string().parse().expect("ascii"),
        );
        h.insert("x-webhook-signature", signature.parse().expect("ascii"));
        h
    }

    #[test]
    fn a_fresh_correct_signature_passes_and_anything_else_fails() {
        let key = Secret::new("hmac-key");
        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let good = sign("hmac-key", "t1", ts);
        assert_eq!(
            verify_signature(&key, "t1", &headers(ts, &good), now),
            Ok(())
        );
        assert_eq!(
            verify_signature(&key, "t2", &headers(ts, &good), now),
            Err("bad_signature")
        );
        let other = sign("other-key", "t1", ts);
        assert_eq!(
            verify_signature(&key, "t1", &headers(ts, &other), now),
            Err("bad_signature")
        );
        let old = ts - 301;
        assert_eq!(
            verify_signature(&key, "t1", &headers(old, &sign("hmac-key", "t1", old)), now),
            Err("stale_timestamp")
        );
        assert_eq!(
            verify_signature(&key, "t1", &HeaderMap::new(), now),
            Err("missing_timestamp")
        );
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // echo -n 'task_hailuo_1.1700000000' | openssl dgst -sha256 -hmac key -binary | base64
        assert_eq!(
            sign("key", "task_hailuo_1", 1_700_000_000),
            "FPKYDvpM6Nx9aQPcH9DyZgEcaCb19pct0tOGhqFr5/k="
        );
    }

    #[test]
    fn the_task_id_is_found_wherever_kie_puts_it() {
        assert_eq!(
            task_id_of(br#"{"data":{"taskId":"a"}}"#).as_deref(),
            Some("a")
        );
        assert_eq!(
            task_id_of(br#"{"data":{"task_id":"b"}}"#).as_deref(),
            Some("b")
        );
        assert_eq!(task_id_of(br#"{"taskId":"c"}"#).as_deref(), Some("c"));
        assert_eq!(task_id_of(br#"{"data":null}"#), None);
        assert_eq!(task_id_of(b"not json"), None);
    }
}
