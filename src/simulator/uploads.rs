//! The upload host (kie.ai: `https://kieai.redpandaai.co`, same Bearer key):
//! the three upload endpoints and the storage route their `downloadUrl`s
//! point at. Unlike the API host, its documented errors are real HTTP
//! statuses: the status and the JSON `code` agree, and `success` says which.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::api::{authorized, bearer};
use super::files::{self, FileKey};
use super::handle::{Endpoint, SimHandle};
use super::scenarios::message_for;

/// Room for the form's other fields and boundaries around the file itself.
const FORM_SLACK: u64 = 64 * 1024;
/// `uploadPath` and `fileName` fields, and the JSON bodies without a file.
const SMALL_FIELD: usize = 4 * 1024;

/// What the request log shows of an upload: its fields with the file
/// summarised. The server records it when the answer is sent, since an
/// upload's body is never buffered whole before the handler.
#[derive(Clone, Debug)]
pub struct RecordedBody(pub Value);

/// `data` of a successful upload, kie.ai's documented shape.
fn uploaded(key: &FileKey, download_url: String, size: usize, mime_type: &str) -> Response {
    let data = json!({
        "fileName": key.file_name,
        "filePath": key.file_path(),
        "downloadUrl": download_url,
        "fileSize": size,
        "mimeType": mime_type,
        "uploadedAt": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    });
    Json(json!({
        "success": true,
        "code": 200,
        "msg": "File uploaded successfully",
        "data": data,
    }))
    .into_response()
}

/// An error: the HTTP status is the code.
pub fn failed(code: u16, msg: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "success": false, "code": code, "msg": msg, "data": null })),
    )
        .into_response()
}

fn too_large(sim: &SimHandle) -> Response {
    let max = sim.config().files.max_bytes;
    failed(400, &format!("file size exceeds the limit of {max} bytes"))
}

fn with_record(mut response: Response, seen: Map<String, Value>) -> Response {
    response
        .extensions_mut()
        .insert(RecordedBody(Value::Object(seen)));
    response
}

/// `POST /api/file-stream-upload`, multipart: `file`, `uploadPath`,
/// optional `fileName` (else the part's own file name, else a random one).
/// The file is read as it streams in, and refused as soon as it passes the
/// limit (chunked bodies included): the rest is never read.
pub async fn stream(State(sim): State<SimHandle>, request: Request) -> Response {
    let mut seen = Map::new();
    let response = stream_upload(&sim, request, &mut seen).await;
    with_record(response, seen)
}

async fn stream_upload(
    sim: &SimHandle,
    request: Request,
    seen: &mut Map<String, Value>,
) -> Response {
    let Some(account) = account(sim, request.headers()) else {
        return failed(401, message_for(401));
    };
    let max = sim.config().files.max_bytes;
    if declared_length(request.headers()).is_some_and(|n| n > max + FORM_SLACK) {
        return too_large(sim);
    }
    let Ok(mut form) = Multipart::from_request(request, &()).await else {
        return failed(400, "the body must be multipart/form-data with a boundary");
    };
    let mut read = 0_u64;
    let mut file: Option<(Vec<u8>, Option<String>, Option<String>)> = None;
    let mut upload_path = None;
    let mut file_name = None;
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return failed(400, &format!("malformed multipart body: {e}")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let mut bytes = Vec::new();
        let limit = if name == "file" {
            max
        } else {
            SMALL_FIELD as u64
        };
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len() as u64;
                    if read > max + FORM_SLACK || (bytes.len() + chunk.len()) as u64 > limit {
                        return if name == "file" {
                            too_large(sim)
                        } else {
                            failed(400, &format!("form field {name} is too long"))
                        };
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return failed(400, &format!("malformed multipart body: {e}")),
            }
        }
        match name.as_str() {
            "file" => {
                let original = field.file_name().map(str::to_owned);
                let declared = field.content_type().map(str::to_owned);
                seen.insert(
                    "file".into(),
                    json!({"fileName": original, "contentType": declared, "size": bytes.len()}),
                );
                file = Some((bytes, original, declared));
            }
            "uploadPath" | "fileName" => {
                let Ok(text) = String::from_utf8(bytes) else {
                    return failed(400, &format!("{name} must be text"));
                };
                seen.insert(name.clone(), json!(text));
                if name == "uploadPath" {
                    upload_path = Some(text);
                } else {
                    file_name = Some(text);
                }
            }
            _ => {}
        }
    }
    let Some((bytes, original, declared)) = file else {
        return failed(400, "file is required");
    };
    let name = file_name.or(original.filter(|n| files::check_file_name(n).is_ok()));
    let upload = Upload {
        account,
        upload_path,
        file_name: name,
        declared_type: declared,
    };
    store(sim, upload, Bytes::from(bytes))
}

/// `POST /api/file-base64-upload`, JSON: `base64Data` (plain or a data URL),
/// `uploadPath`, optional `fileName`.
pub async fn base64(State(sim): State<SimHandle>, request: Request) -> Response {
    let mut seen = Map::new();
    let response = base64_upload(&sim, request, &mut seen).await;
    with_record(response, seen)
}

async fn base64_upload(
    sim: &SimHandle,
    request: Request,
    seen: &mut Map<String, Value>,
) -> Response {
    let Some(account) = account(sim, request.headers()) else {
        return failed(401, message_for(401));
    };
    let max = sim.config().files.max_bytes;
    let limit = max.div_ceil(3) * 4 + FORM_SLACK;
    let Some(body) = read_body(request.into_body(), limit).await else {
        return too_large(sim);
    };
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&body) else {
        return failed(400, "the body must be a JSON object");
    };
    let data = match fields.remove("base64Data") {
        Some(Value::String(data)) => data,
        _ => return failed(400, "base64Data is required"),
    };
    seen.insert("base64Data".into(), json!({ "chars": data.len() }));
    seen.extend(fields.clone());
    let (declared, encoded) = match data.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((header, encoded)) if header.ends_with(";base64") => {
                (header.strip_suffix(";base64").map(str::to_owned), encoded)
            }
            _ => return failed(400, "base64Data is a data URL without ;base64"),
        },
        None => (None, data.as_str()),
    };
    let compact: String = encoded.split_ascii_whitespace().collect();
    let Ok(bytes) = BASE64.decode(compact.as_bytes()) else {
        return failed(400, "base64Data is not valid base64");
    };
    if bytes.len() as u64 > max {
        return too_large(sim);
    }
    let (upload_path, file_name) = match path_and_name(&fields) {
        Ok(both) => both,
        Err(msg) => return failed(400, msg),
    };
    let upload = Upload {
        account,
        upload_path,
        file_name,
        declared_type: declared,
    };
    store(sim, upload, Bytes::from(bytes))
}

/// Standard base64, padding optional (data URLs come both ways).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `POST /api/file-url-upload`, JSON: `fileUrl`, `uploadPath`, optional
/// `fileName` (else the URL's last segment). The remote file must arrive
/// within `url_timeout` (kie.ai: 30 s).
pub async fn from_url(State(sim): State<SimHandle>, request: Request) -> Response {
    let mut seen = Map::new();
    let response = url_upload(&sim, request, &mut seen).await;
    with_record(response, seen)
}

async fn url_upload(sim: &SimHandle, request: Request, seen: &mut Map<String, Value>) -> Response {
    let Some(account) = account(sim, request.headers()) else {
        return failed(401, message_for(401));
    };
    let Some(body) = read_body(request.into_body(), SMALL_FIELD as u64 * 4).await else {
        return failed(400, "the body is too large");
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return failed(400, "the body must be a JSON object");
    };
    seen.extend(fields.clone());
    let file_url = match fields
        .get("fileUrl")
        .and_then(Value::as_str)
        .map(url::Url::parse)
    {
        Some(Ok(url)) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Some(_) => return failed(400, "fileUrl must be an http or https URL"),
        None => return failed(400, "fileUrl is required"),
    };
    let (upload_path, file_name) = match path_and_name(&fields) {
        Ok(both) => both,
        Err(msg) => return failed(400, msg),
    };
    let timeout = sim.config().files.url_timeout;
    let fetched = tokio::time::timeout(timeout, fetch(sim, file_url.clone())).await;
    let (bytes, declared) = match fetched {
        Ok(Ok(fetched)) => fetched,
        Ok(Err(Fetch::TooLarge)) => return too_large(sim),
        Ok(Err(Fetch::Failed(why))) => {
            return failed(400, &format!("could not download fileUrl: {why}"));
        }
        Err(_) => {
            let secs = timeout.as_secs_f64();
            return failed(400, &format!("could not download fileUrl within {secs} s"));
        }
    };
    let from_url = file_url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .map(|last| {
            percent_encoding::percent_decode_str(last)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|n| files::check_file_name(n).is_ok());
    let upload = Upload {
        account,
        upload_path,
        file_name: file_name.or(from_url),
        declared_type: declared,
    };
    store(sim, upload, bytes)
}

enum Fetch {
    TooLarge,
    Failed(String),
}

async fn fetch(sim: &SimHandle, url: url::Url) -> Result<(Bytes, Option<String>), Fetch> {
    let max = sim.config().files.max_bytes;
    let mut response = sim
        .http()
        .get(url)
        .send()
        .await
        .map_err(|e| Fetch::Failed(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(Fetch::Failed(format!(
            "HTTP {}",
            response.status().as_u16()
        )));
    }
    if response.content_length().is_some_and(|n| n > max) {
        return Err(Fetch::TooLarge);
    }
    let declared = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_owned());
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Fetch::Failed(e.without_url().to_string()))?
    {
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(Fetch::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(bytes), declared))
}

/// `uploadPath` (required) and `fileName` (optional) of a JSON upload.
fn path_and_name(
    fields: &Map<String, Value>,
) -> Result<(Option<String>, Option<String>), &'static str> {
    let text = |key: &str, msg: &'static str| match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(msg),
    };
    Ok((
        text("uploadPath", "uploadPath must be a string")?,
        text("fileName", "fileName must be a string")?,
    ))
}

/// The storage segment of an authorized caller's key.
fn account(sim: &SimHandle, headers: &HeaderMap) -> Option<String> {
    if !authorized(sim, headers) {
        return None;
    }
    bearer(headers).map(files::account_of)
}

/// An upload's fields besides the file, as the caller sent them.
struct Upload {
    account: String,
    upload_path: Option<String>,
    file_name: Option<String>,
    /// The part's or data URL's or remote server's type, the last resort.
    declared_type: Option<String>,
}

/// The checks every upload shares, then the store and the answer.
fn store(sim: &SimHandle, upload: Upload, bytes: Bytes) -> Response {
    let Upload {
        account,
        upload_path,
        file_name,
        declared_type,
    } = upload;
    let upload_path = upload_path.unwrap_or_default();
    if let Err(msg) = files::check_upload_path(&upload_path) {
        return failed(400, msg);
    }
    if let Some(Err(msg)) = file_name.as_deref().map(files::check_file_name) {
        return failed(400, msg);
    }
    if bytes.is_empty() {
        return failed(400, "file is empty");
    }
    let mime_type = files::mime_type(
        &bytes,
        file_name.as_deref().unwrap_or_default(),
        declared_type.as_deref(),
    );
    let key = FileKey {
        account,
        upload_path,
        file_name: file_name.unwrap_or_else(|| files::random_name(&mime_type)),
    };
    let size = bytes.len();
    let download_url = key.download_url(sim.upload_base());
    sim.files()
        .put(&key, bytes, mime_type.clone(), &sim.config().files);
    uploaded(&key, download_url, size, &mime_type)
}

/// The body, unless it passes `limit` bytes (then it is not read further).
async fn read_body(body: Body, limit: u64) -> Option<Bytes> {
    axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .ok()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `GET /files/{account}/{uploadPath}/{fileName}`: the storage host. No key
/// needed, served with the type found at upload; 404 once expired.
pub async fn file(State(sim): State<SimHandle>, Path(path): Path<String>) -> Response {
    let Some(stored) = sim.files().get(&path) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    sim.count_download(Endpoint::File);
    let content_type = HeaderValue::from_str(&stored.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    ([(header::CONTENT_TYPE, content_type)], stored.bytes).into_response()
}

/// An upload path called with another method than POST.
pub async fn method_not_allowed() -> Response {
    let mut response = failed(405, "Method Not Allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// Anything else on the upload host.
pub async fn not_found() -> Response {
    failed(404, message_for(404))
}
