//! Result-video links. The URL in a task's `resultJson` serves the video for
//! `result_url_ttl` after the task ends, as kie.ai's "typically expire after
//! 24 hours"; `download-url` hands out signed links that serve it for
//! `download_link_ttl` (20 minutes), outliving the first.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::handle::SimHandle;
use super::tasks::{self, millis};

/// The query of a video request: empty for a result URL, both fields for a
/// download-url link.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LinkQuery {
    pub expires: Option<u64>,
    pub signature: Option<String>,
}

/// Whether a video request may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkCheck {
    Serve,
    Expired,
    BadSignature,
}

/// A fresh link to a task's video, valid `download_link_ttl` from now.
pub fn fresh(sim: &SimHandle, task_id: &str) -> String {
    let expires = (tasks::now_ms() + millis(sim.config().download_link_ttl)).div_ceil(1000);
    let signature = sign(sim, task_id, expires);
    format!(
        "{}?expires={expires}&signature={signature}",
        tasks::video_url(sim.base_url(), task_id)
    )
}

/// Checks a request for the video of a task that ended at `made_ms`.
pub fn check(sim: &SimHandle, task_id: &str, made_ms: u64, query: &LinkQuery) -> LinkCheck {
    let now_ms = tasks::now_ms();
    match (query.expires, &query.signature) {
        (None, None) => {
            if now_ms < made_ms.saturating_add(millis(sim.config().result_url_ttl)) {
                LinkCheck::Serve
            } else {
                LinkCheck::Expired
            }
        }
        (Some(expires), Some(signature)) => {
            let expected = sign(sim, task_id, expires);
            if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
                LinkCheck::BadSignature
            } else if now_ms < expires.saturating_mul(1000) {
                LinkCheck::Serve
            } else {
                LinkCheck::Expired
            }
        }
        _ => LinkCheck::BadSignature,
    }
}

fn sign(sim: &SimHandle, task_id: &str, expires: u64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(sim.link_key()).expect("HMAC takes a key of any length");
    mac.update(format!("{task_id}.{expires}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
