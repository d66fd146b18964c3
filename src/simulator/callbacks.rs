//! End-of-task callbacks: one POST to the task's `callBackUrl`, signed like
//! kie.ai's (opt-in) webhook signatures, redelivered with doubling backoff.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handle::{CallbackAttempt, SimHandle};
use super::tasks;
use crate::http::callbacks::sign;

/// One end-of-task callback to send.
#[derive(Clone, Debug)]
pub(crate) struct Callback {
    pub url: String,
    pub body: Value,
    /// How many times to deliver it (2 for `[sim:callback-dup]`).
    pub copies: u32,
}

/// kie.ai documents a 15 s timeout for its callback requests.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// kie.ai's callback body: the recordInfo `data` wrapped like a market-model
/// callback (code 200 on success, 501 on failure).
pub fn body(record: Value) -> Value {
    let (code, msg) = if record["state"] == "fail" {
        (501, "Playground task failed.")
    } else {
        (200, "Playground task completed successfully.")
    };
    json!({ "code": code, "msg": msg, "data": record })
}

/// Waits until a task ends on its own, then sends its callback (unless a
/// manual completion already did). Cancelled by reset and shutdown.
pub(crate) fn spawn_timer(
    sim: SimHandle,
    task_id: String,
    deadline: Instant,
    epoch: CancellationToken,
) {
    let runtime = sim.runtime().clone();
    runtime.spawn(async move {
        tokio::select! {
            () = epoch.cancelled() => {}
            () = tokio::time::sleep_until(deadline) => {
                if let Some(callback) = sim.take_ended_callback(&task_id) {
                    deliver_copies(&sim, &task_id, &callback, &epoch).await;
                }
            }
        }
    });
}

pub(crate) fn spawn_delivery(
    sim: SimHandle,
    task_id: String,
    callback: Callback,
    epoch: CancellationToken,
) {
    let runtime = sim.runtime().clone();
    runtime.spawn(async move { deliver_copies(&sim, &task_id, &callback, &epoch).await });
}

/// Delivers each copy in turn; a copy that cannot be delivered ends it.
async fn deliver_copies(
    sim: &SimHandle,
    task_id: &str,
    callback: &Callback,
    epoch: &CancellationToken,
) {
    for _ in 0..callback.copies {
        if !deliver(sim, task_id, &callback.url, &callback.body, epoch).await {
            return;
        }
    }
}

/// Tries once, then `callback_retries` more times after a connect error or a
/// non-2xx answer, waiting `callback_backoff`, doubled after each retry.
/// Whether it was delivered.
async fn deliver(
    sim: &SimHandle,
    task_id: &str,
    url: &str,
    body: &Value,
    epoch: &CancellationToken,
) -> bool {
    let config = sim.config();
    let payload = body.to_string();
    let mut backoff = config.callback_backoff;
    let attempts = config.callback_retries.saturating_add(1);
    for attempt in 1..=attempts {
        let timestamp = tasks::now_ms() / 1000;
        let mut request = sim
            .http()
            .post(url)
            .timeout(DELIVERY_TIMEOUT)
            .header("content-type", "application/json")
            .body(payload.clone());
        if let Some(key) = &config.hmac_key {
            request = request
                .header("X-Webhook-Timestamp", timestamp.to_string())
                .header("X-Webhook-Signature", sign(key, task_id, timestamp));
        }
        let sent_ms = tasks::now_ms();
        let outcome = tokio::select! {
            () = epoch.cancelled() => return false,
            outcome = request.send() => outcome,
        };
        let (status, error) = match outcome {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(e) => (None, Some(error_chain(&e))),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        sim.record_callback(
            CallbackAttempt {
                task_id: task_id.to_owned(),
                url: url.to_owned(),
                attempt,
                status,
                error,
                signed: config.hmac_key.is_some(),
                sent_ms,
            },
            delivered,
        );
        if delivered {
            return true;
        }
        tracing::debug!(task_id, attempt, ?status, "callback delivery failed");
        if attempt < attempts {
            tokio::select! {
                () = epoch.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2);
        }
    }
    false
}

/// reqwest's top-level message hides the cause ("error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tasks_are_called_back_with_code_501() {
        assert_eq!(body(json!({"state": "fail"}))["code"], 501);
        assert_eq!(body(json!({"state": "success"}))["code"], 200);
    }
}
