//! The kie.ai endpoints. Like live kie.ai, every answer is HTTP 200 and the
//! real outcome is the JSON `code`: `{"code":..,"msg":..,"data":..}`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::files::{self, ImageCheck};
use super::handle::{Endpoint, InsufficientCredits, Lookup, SimHandle};
use super::links::{self, LinkCheck, LinkQuery};
use super::scenarios::{CreateFault, Scenario, message_for};
use super::tasks::cost;
use super::validate;

/// kie.ai's envelope, always with HTTP 200.
pub fn kie(code: u16, msg: &str, data: Value) -> Response {
    Json(json!({ "code": code, "msg": msg, "data": data })).into_response()
}

/// An error envelope; 429 also carries `Retry-After: 3`.
pub fn kie_error(code: u16, msg: &str) -> Response {
    let mut response = kie(code, msg, Value::Null);
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
    }
    response
}

/// The Bearer token, if the header has a non-empty one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

pub(crate) fn authorized(sim: &SimHandle, headers: &HeaderMap) -> bool {
    match (bearer(headers), &sim.config().api_key) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(token), Some(key)) => token.as_bytes().ct_eq(key.as_bytes()).into(),
    }
}

fn unauthorized() -> Response {
    kie_error(401, message_for(401))
}

/// `POST /api/v1/jobs/createTask`. Order: auth, JSON, scenario markers,
/// validation, credits.
pub async fn create_task(
    State(sim): State<SimHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return kie_error(422, "request body must be valid JSON");
    };
    let prompt = body
        .pointer("/input/prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let scenario = match Scenario::parse(prompt) {
        Ok(scenario) => scenario,
        Err(msg) => return kie_error(422, &msg),
    };
    if let Some(code) = scenario.reject {
        return kie_error(code, message_for(code));
    }
    let request = match validate::create_request(&body) {
        Ok(request) => request,
        Err(msg) => return kie_error(422, &msg),
    };
    let images = [
        ("input.image_url", Some(&request.image_url)),
        ("input.end_image_url", request.end_image_url.as_ref()),
    ];
    for (field, url) in images {
        if let Some(msg) = url.and_then(|url| uploaded_image_problem(&sim, field, url)) {
            return kie_error(422, &msg);
        }
    }
    let price = cost(&request.duration, &request.resolution);
    let task_id = match sim.create_task(&body, request.callback_url, scenario, price) {
        Ok(task_id) => task_id,
        Err(InsufficientCredits) => return kie_error(402, message_for(402)),
    };
    let mut answer = kie(200, "success", json!({ "taskId": task_id }));
    // The task exists (and is charged) whatever happens to the answer.
    match scenario.create_fault {
        None => {}
        Some(CreateFault::Slow) => tokio::time::sleep(sim.config().slow_create).await,
        Some(CreateFault::Drop) => {
            answer.extensions_mut().insert(DropInsteadOfAnswer);
        }
    }
    answer
}

/// What is wrong with an image URL on this simulator's own storage: gone
/// (expired, never uploaded), not a JPEG, PNG or WebP, or over 10 MB. Any
/// other URL is taken as it is, as before.
fn uploaded_image_problem(sim: &SimHandle, field: &str, url: &str) -> Option<String> {
    let path = files::storage_path(sim.upload_base(), url)?;
    match sim.files().check_image(&path) {
        ImageCheck::Usable => None,
        ImageCheck::Missing => Some(format!(
            "{field} is not an uploaded file (expired or never uploaded)"
        )),
        ImageCheck::NotAnImage => Some(format!("{field} must be a jpeg, png or webp image")),
        ImageCheck::TooLarge => Some(format!(
            "{field} must be at most {} bytes",
            files::IMAGE_MAX_BYTES
        )),
    }
}

/// Marks an answer the server must not send: it closes the connection
/// instead.
#[derive(Clone, Copy, Debug)]
pub struct DropInsteadOfAnswer;

/// `GET /api/v1/jobs/recordInfo?taskId=ID`.
pub async fn record_info(
    State(sim): State<SimHandle>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    let Some(task_id) = query.get("taskId").filter(|id| !id.is_empty()) else {
        return kie_error(422, "taskId is required");
    };
    match sim.lookup(task_id) {
        Lookup::Found(record) => kie(200, "success", record),
        Lookup::Fault(code) => kie_error(code, message_for(code)),
        // Live kie.ai answers an unknown id this way, not with 404.
        Lookup::Unknown => kie_error(422, "recordInfo is null"),
    }
}

/// `GET /api/v1/chat/credit`.
pub async fn credit(State(sim): State<SimHandle>, headers: HeaderMap) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    kie(200, "success", balance(sim.credits()))
}

/// A whole balance as an integer (`1000`), any other as a float (`999.5`).
fn balance(credits: f64) -> Value {
    // 2^53: every integer below is exact in an f64.
    if credits.fract() == 0.0 && credits.abs() < 9_007_199_254_740_992.0 {
        json!(credits as i64)
    } else {
        json!(credits)
    }
}

/// `POST /api/v1/common/download-url` with `{"url": "<result URL>"}`: a fresh
/// link to a finished task's video, valid `download_link_ttl` (20 minutes);
/// `data` is the bare URL. Any URL that is not one of this simulator's
/// result videos (an uploaded file's, another host's) gets 422.
pub async fn download_url(
    State(sim): State<SimHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    let url = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("url").and_then(Value::as_str).map(str::to_owned));
    let Some(url) = url else {
        return kie_error(422, "url is required");
    };
    let task_id = url
        .strip_prefix(&format!("{}/sim/videos/", sim.base_url()))
        .and_then(|rest| rest.split(['?', '#']).next())
        .and_then(|file| file.strip_suffix(".mp4"))
        .filter(|task_id| sim.video_made_ms(task_id).is_some());
    let Some(task_id) = task_id else {
        return kie_error(422, "url is not a kie.ai generated file URL");
    };
    kie(200, "success", json!(links::fresh(&sim, task_id)))
}

/// The result video, a small real MP4, for a successful task: at its result
/// URL until `result_url_ttl` after the task ended, at a download-url link
/// until the link expires (then 403, as a storage host answers).
pub async fn video(
    State(sim): State<SimHandle>,
    Path(file): Path<String>,
    Query(query): Query<LinkQuery>,
) -> Response {
    let task_id = file.strip_suffix(".mp4").unwrap_or_default();
    let Some(made_ms) = sim.video_made_ms(task_id) else {
        return (StatusCode::NOT_FOUND, "no such video\n").into_response();
    };
    match links::check(&sim, task_id, made_ms, &query) {
        LinkCheck::Serve => {}
        LinkCheck::Expired => {
            return (StatusCode::FORBIDDEN, "this link has expired\n").into_response();
        }
        LinkCheck::BadSignature => {
            return (
                StatusCode::FORBIDDEN,
                "this link's signature is not valid\n",
            )
                .into_response();
        }
    }
    sim.count_download(Endpoint::Video);
    (
        [(header::CONTENT_TYPE, "video/mp4")],
        Bytes::from_static(SAMPLE_MP4),
    )
        .into_response()
}

/// 1 s of ffmpeg's `testsrc` at 128x72, H.264, faststart (about 4 KB).
pub const SAMPLE_MP4: &[u8] = include_bytes!("../../assets/sample.mp4");

/// Anything else: kie-style 404 (here the HTTP status says so too).
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "code": 404, "msg": message_for(404), "data": null })),
    )
        .into_response()
}
