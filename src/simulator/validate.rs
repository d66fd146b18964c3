//! kie.ai's own checks of a createTask body for Hailuo 02 image-to-video
//! standard. Each failure is one 422 `msg` naming the field.

use serde_json::{Map, Value};

use super::tasks::MODEL;

pub const PROMPT_MAX_CHARS: usize = 1500;
pub const DURATIONS: [&str; 2] = ["6", "10"];
pub const RESOLUTIONS: [&str; 2] = ["512P", "768P"];
/// kie.ai's documented defaults when a field is left out.
pub const DEFAULT_DURATION: &str = "10";
pub const DEFAULT_RESOLUTION: &str = "768P";

/// The parts of a valid createTask body the simulator acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    pub callback_url: Option<String>,
    pub image_url: String,
    pub end_image_url: Option<String>,
    pub duration: String,
    pub resolution: String,
}

pub fn create_request(body: &Value) -> Result<CreateRequest, String> {
    let body = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    match present(body, "model") {
        None => return Err("model is required".into()),
        Some(Value::String(model)) if model == MODEL => {}
        Some(Value::String(model)) => return Err(format!("model {model} is not supported")),
        Some(_) => return Err("model must be a string".into()),
    }
    let callback_url = match present(body, "callBackUrl") {
        None => None,
        Some(url) => Some(http_url("callBackUrl", url)?),
    };
    let input = match present(body, "input") {
        None => return Err("input is required".into()),
        Some(Value::Object(input)) => input,
        Some(_) => return Err("input must be an object".into()),
    };

    let prompt = match present(input, "prompt") {
        None => return Err("input.prompt is required".into()),
        Some(Value::String(p)) if p.trim().is_empty() => {
            return Err("input.prompt is required".into());
        }
        Some(Value::String(p)) => p,
        Some(_) => return Err("input.prompt must be a string".into()),
    };
    // kie.ai counts characters, not bytes.
    if prompt.chars().count() > PROMPT_MAX_CHARS {
        return Err(format!(
            "input.prompt must be at most {PROMPT_MAX_CHARS} characters"
        ));
    }
    let image_url = match present(input, "image_url") {
        None => return Err("input.image_url is required".into()),
        Some(url) => http_url("input.image_url", url)?,
    };
    let end_image_url = match present(input, "end_image_url") {
        None => None,
        Some(url) => Some(http_url("input.end_image_url", url)?),
    };
    let duration = one_of(input, "duration", &DURATIONS, DEFAULT_DURATION)?;
    let resolution = one_of(input, "resolution", &RESOLUTIONS, DEFAULT_RESOLUTION)?;
    for flag in ["prompt_optimizer", "nsfw_checker"] {
        if present(input, flag).is_some_and(|v| !v.is_boolean()) {
            return Err(format!("input.{flag} must be a boolean"));
        }
    }
    Ok(CreateRequest {
        callback_url,
        image_url,
        end_image_url,
        duration,
        resolution,
    })
}

/// A field that is there and not null.
fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn http_url(field: &str, value: &Value) -> Result<String, String> {
    let bad = || format!("{field} must be an http or https URL");
    let text = value.as_str().ok_or_else(bad)?;
    let url = url::Url::parse(text).map_err(|_| bad())?;
    if matches!(url.scheme(), "http" | "https") && url.host().is_some() {
        Ok(text.to_owned())
    } else {
        Err(bad())
    }
}

/// A string enum field; kie.ai wants strings even for numbers (`"6"`, not `6`).
fn one_of(
    input: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
    default: &str,
) -> Result<String, String> {
    match present(input, key) {
        None => Ok(default.to_owned()),
        Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(v.clone()),
        Some(_) => Err(format!(
            "input.{key} must be one of {}",
            allowed
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "model": MODEL,
            "callBackUrl": "https://example.com/cb",
            "input": {
                "prompt": "a cat",
                "image_url": "https://example.com/cat.png",
                "duration": "6",
                "resolution": "512P",
                "prompt_optimizer": true
            }
        })
    }

    fn error_after(edit: impl FnOnce(&mut Value)) -> String {
        let mut body = valid();
        edit(&mut body);
        create_request(&body).expect_err("the edit makes the body invalid")
    }

    #[test]
    fn a_valid_body_passes() {
        let request = create_request(&valid()).expect("valid body");
        assert_eq!(request.duration, "6");
        assert_eq!(request.resolution, "512P");
        assert_eq!(
            request.callback_url.as_deref(),
            Some("https://example.com/cb")
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(
            error_after(|b| b["model"] = json!("hailuo/nope")),
            "model hailuo/nope is not supported"
        );
        assert_eq!(
            error_after(|b| b["input"]["prompt"] = json!("")),
            "input.prompt is required"
        );
        assert_eq!(
            error_after(|b| b["input"]["prompt"] = json!("é".repeat(1501))),
            "input.prompt must be at most 1500 characters"
        );
        assert_eq!(
            error_after(|b| b["input"]["image_url"] = json!("ftp://x/y.png")),
            "input.image_url must be an http or https URL"
        );
        assert_eq!(
            error_after(|b| b["input"]["duration"] = json!(6)),
            "input.duration must be one of \"6\", \"10\""
        );
        assert_eq!(
            error_after(|b| b["input"]["resolution"] = json!("1080P")),
            "input.resolution must be one of \"512P\", \"768P\""
        );
        assert_eq!(
            error_after(|b| b["callBackUrl"] = json!("not a url")),
            "callBackUrl must be an http or https URL"
        );
    }

    #[test]
    fn prompts_are_measured_in_characters() {
        let mut body = valid();
        body["input"]["prompt"] = json!("é".repeat(1500));
        assert!(create_request(&body).is_ok());
    }

    #[test]
    fn left_out_options_take_the_documented_defaults() {
        let mut body = valid();
        let input = body["input"].as_object_mut().expect("input is an object");
        input.remove("duration");
        input.remove("resolution");
        let request = create_request(&body).expect("defaults apply");
        assert_eq!(
            (request.duration.as_str(), request.resolution.as_str()),
            ("10", "768P")
        );
    }
}
