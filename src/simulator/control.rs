//! Control and inspection endpoints under `/sim/` (not part of kie.ai, never
//! faulted, no key needed). Each mirrors a `SimHandle` method.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::handle::{CompleteError, Completion, SimHandle};

/// `GET /sim/requests`: every kie.ai API request received, oldest first.
pub async fn requests(State(sim): State<SimHandle>) -> Response {
    Json(sim.requests()).into_response()
}

/// `GET /sim/counts`.
pub async fn counts(State(sim): State<SimHandle>) -> Response {
    Json(sim.counts()).into_response()
}

/// `GET /sim/callbacks`: every callback POST tried, oldest first.
pub async fn callbacks(State(sim): State<SimHandle>) -> Response {
    Json(sim.callbacks()).into_response()
}

/// `POST /sim/reset`.
pub async fn reset(State(sim): State<SimHandle>) -> Response {
    sim.reset();
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /sim/tasks/{task_id}/complete`, body optional:
/// `{"state":"success"|"fail","failCode":..,"failMsg":..}`.
/// 200 with the task as recordInfo shows it, 404 unknown, 409 already ended.
pub async fn complete(
    State(sim): State<SimHandle>,
    Path(task_id): Path<String>,
    body: Bytes,
) -> Response {
    let completion = if body.iter().all(u8::is_ascii_whitespace) {
        Completion::default()
    } else {
        match serde_json::from_slice::<Completion>(&body) {
            Ok(completion) => completion,
            Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        }
    };
    match sim.complete(&task_id, completion) {
        Ok(record) => Json(record).into_response(),
        Err(e @ CompleteError::UnknownTask(_)) => problem(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ CompleteError::AlreadyEnded { .. }) => {
            problem(StatusCode::CONFLICT, &e.to_string())
        }
    }
}

fn problem(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// `POST /sim/credits` with `{"credits": N}`: sets the balance (0 makes
/// createTask answer 402); 200 with `{"credits": N}`.
pub async fn set_credits(State(sim): State<SimHandle>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetCredits {
        credits: f64,
    }
    match serde_json::from_slice::<SetCredits>(&body) {
        Ok(SetCredits { credits }) if credits.is_finite() && credits >= 0.0 => {
            sim.set_credits(credits);
            Json(json!({ "credits": credits })).into_response()
        }
        Ok(_) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "credits must be 0 or more",
        ),
        Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}
