//! Images sent as bytes: UploadImage, and CreateTask's image_data, uploaded
//! to kie.ai's file API (its own host: a second scripted server) before the
//! create. Every refusal is checked to have reached neither host.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hailuo_gateway::pb::upload_image_request::Content;
use hailuo_gateway::pb::{
    CreateTaskRequest, UploadImageMetadata, UploadImageRequest, UploadImageResponse,
};
use serde_json::{Value, json};
use tonic::{Code, Status};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

const UPLOAD_PATH: &str = "/api/file-stream-upload";
const MIB: usize = 1024 * 1024;
const LIMIT: usize = 10 * MIB;

/// A gateway whose kie.ai API and file API are two scripted hosts.
struct UploadApp {
    app: TestApp,
    files: MockServer,
}

impl std::ops::Deref for UploadApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

async fn spawn_upload_app() -> UploadApp {
    spawn_upload_app_with(|_| {}).await
}

async fn spawn_upload_app_with(
    configure: impl FnOnce(&mut hailuo_gateway::config::Settings),
) -> UploadApp {
    let files = MockServer::start().await;
    let files_url = files.uri().parse().expect("url");
    let app = spawn_app_with(|settings| {
        settings.upstream.upload_base_url = files_url;
        configure(settings);
    })
    .await;
    UploadApp { app, files }
}

impl UploadApp {
    async fn uploads(&self) -> Vec<Request> {
        self.files
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == UPLOAD_PATH)
            .collect()
    }

    /// Requests either host received, whatever the path.
    async fn anything_upstream(&self) -> usize {
        let api = self.upstream.received_requests().await.unwrap_or_default();
        let files = self.files.received_requests().await.unwrap_or_default();
        api.len() + files.len()
    }

    async fn answer_uploads(&self, answer: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path(UPLOAD_PATH))
            .respond_with(answer)
            .mount(&self.files)
            .await;
    }

    async fn upload(
        &self,
        messages: Vec<UploadImageRequest>,
    ) -> Result<UploadImageResponse, Status> {
        let answer = self
            .client
            .clone()
            .upload_image(tokio_stream::iter(messages))
            .await?;
        Ok(answer.into_inner())
    }
}

/// A PNG by its signature, padded to `len` bytes (the gateway reads only
/// the magic bytes; kie.ai is scripted).
fn png(len: usize) -> Bytes {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.resize(len, 7);
    bytes.into()
}

fn metadata(file_name: &str, content_type: &str) -> UploadImageRequest {
    UploadImageRequest {
        content: Some(Content::Metadata(UploadImageMetadata {
            file_name: file_name.into(),
            content_type: content_type.into(),
        })),
    }
}

fn chunk(bytes: Bytes) -> UploadImageRequest {
    UploadImageRequest {
        content: Some(Content::Chunk(bytes)),
    }
}

/// `image` in chunks of `size`.
fn chunks(image: &Bytes, size: usize) -> Vec<UploadImageRequest> {
    image
        .chunks(size)
        .map(|c| chunk(Bytes::copy_from_slice(c)))
        .collect()
}

/// kie.ai's file API answer, as documented.
fn upload_ok(download_url: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "success": true,
        "code": 200,
        "msg": "File uploaded successfully",
        "data": {
            "fileName": "x.png",
            "filePath": "hailuo-gateway/x.png",
            "downloadUrl": download_url,
            "fileSize": 1234,
            "mimeType": "image/png",
            "uploadedAt": "2025-01-01T12:00:00.000Z"
        }
    }))
}

/// One part of a multipart/form-data body: its headers and its content.
fn form_part<'a>(body: &'a [u8], name: &str) -> (String, &'a [u8]) {
    let marker = format!("name=\"{name}\"");
    let at = find(body, marker.as_bytes()).unwrap_or_else(|| panic!("no part {name}"));
    let header_end = at + find(&body[at..], b"\r\n\r\n").expect("part headers end");
    let content = &body[header_end + 4..];
    let end = find(content, b"\r\n--").expect("part end");
    let headers = String::from_utf8_lossy(&body[at..header_end]).into_owned();
    (headers, &content[..end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn text_part(body: &[u8], name: &str) -> String {
    String::from_utf8(form_part(body, name).1.to_vec()).expect("utf-8")
}

async fn assert_refused(app: &UploadApp, status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(status), [field], "{status:?}");
    assert_eq!(error_info(status).reason, "INVALID_REQUEST");
    assert_eq!(app.anything_upstream().await, 0, "nothing reached kie.ai");
}

// === UploadImage ===

#[tokio::test]
async fn an_uploaded_image_goes_to_kies_file_api_under_a_random_name_and_its_url_comes_back() {
    let app = spawn_upload_app().await;
    let url = "https://tempfile.redpandaai.co/hailuo-gateway/f.png";
    app.answer_uploads(upload_ok(url)).await;
    let image = png(300 * 1024);

    let mut messages = vec![metadata("first.png", "image/png")];
    messages.extend(chunks(&image, 64 * 1024));
    let before = SystemTime::now();
    let answer = app.upload(messages).await.expect("uploaded");

    assert_eq!(answer.url, url);
    assert_eq!(answer.size_bytes, image.len() as i64);
    assert_eq!(answer.content_type, "image/png");
    let expires: SystemTime = answer
        .expire_time
        .expect("expire_time")
        .try_into()
        .expect("a time");
    let lifetime = expires.duration_since(before).expect("later");
    assert!(
        (Duration::from_secs(24 * 3600 - 60)..=Duration::from_secs(24 * 3600 + 60))
            .contains(&lifetime),
        "the conservative 24 h, got {lifetime:?}"
    );

    let sent = app.uploads().await;
    assert_eq!(sent.len(), 1);
    let request = &sent[0];
    assert_eq!(
        request.headers.get("authorization").expect("auth"),
        &format!("Bearer {TEST_KEY}")
    );
    let content_type = request.headers.get("content-type").expect("content type");
    assert!(
        content_type
            .to_str()
            .expect("ascii")
            .starts_with("multipart/form-data; boundary="),
        "{content_type:?}"
    );
    assert_eq!(text_part(&request.body, "uploadPath"), "hailuo-gateway");
    let file_name = text_part(&request.body, "fileName");
    let (stem, ext) = file_name.split_once('.').expect("an extension");
    assert_eq!(ext, "png");
    assert!(
        stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()),
        "a random name, never the caller's: {file_name}"
    );
    let (headers, file) = form_part(&request.body, "file");
    assert!(headers.contains("Content-Type: image/png"), "{headers}");
    assert_eq!(file, &image[..], "the image, byte for byte");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0);

    // Another upload of the same image gets a name of its own: kie.ai would
    // overwrite the first file otherwise.
    app.upload(chunks(&image, MIB)).await.expect("uploaded");
    let sent = app.uploads().await;
    assert_ne!(text_part(&sent[1].body, "fileName"), file_name);
}

#[tokio::test]
async fn the_upload_path_is_configurable() {
    let app = spawn_upload_app_with(|s| s.uploads.path = "team-a/frames".into()).await;
    app.answer_uploads(upload_ok("https://files.example/a.jpg"))
        .await;
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    jpeg.resize(1000, 1);

    let answer = app.upload(vec![chunk(jpeg.into())]).await.expect("ok");

    assert_eq!(answer.content_type, "image/jpeg");
    let sent = app.uploads().await;
    assert_eq!(text_part(&sent[0].body, "uploadPath"), "team-a/frames");
    assert!(text_part(&sent[0].body, "fileName").ends_with(".jpg"));
}

#[tokio::test]
async fn uploads_that_are_not_images_empty_or_too_large_are_refused_before_kie_ai() {
    let app = spawn_upload_app().await;
    app.answer_uploads(upload_ok("https://files.example/a.png"))
        .await;

    // Nothing at all, or metadata only.
    let status = app.upload(vec![]).await.expect_err("empty");
    assert_refused(&app, &status, "chunk").await;
    let status = app
        .upload(vec![metadata("a.png", "image/png")])
        .await
        .expect_err("no bytes");
    assert_refused(&app, &status, "chunk").await;

    // The declared name and type do not make a GIF a PNG.
    let gif = Bytes::from_static(b"GIF89a\x01\0\x01\0\x80\0\0\xff\xff\xff");
    let status = app
        .upload(vec![metadata("a.png", "image/png"), chunk(gif)])
        .await
        .expect_err("a gif");
    assert_refused(&app, &status, "chunk").await;

    // Too short to be any of the formats.
    let status = app
        .upload(vec![chunk(Bytes::from_static(b"\x89PN"))])
        .await
        .expect_err("truncated");
    assert_refused(&app, &status, "chunk").await;

    // One byte over the limit, in small chunks.
    let status = app
        .upload(chunks(&png(LIMIT + 1), MIB))
        .await
        .expect_err("too large");
    assert_refused(&app, &status, "chunk").await;
    assert!(status.message().contains("10 MiB"), "{status:?}");

    // Metadata anywhere but first.
    let status = app
        .upload(vec![chunk(png(100)), metadata("a.png", "image/png")])
        .await
        .expect_err("late metadata");
    assert_refused(&app, &status, "metadata").await;

    // Exactly the limit is fine.
    app.upload(chunks(&png(LIMIT), MIB))
        .await
        .expect("10 MiB is accepted");
    assert_eq!(app.uploads().await.len(), 1);
}

#[tokio::test]
async fn a_gigabyte_stream_is_answered_once_it_passes_the_limit_and_the_gateway_stays_flat() {
    // The gateway in a process of its own, so that its memory is measured
    // apart from the client's and from other tests'.
    let api = MockServer::start().await;
    let files = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(upload_ok("https://files.example/a.png"))
        .mount(&files)
        .await;
    let gateway =
        crate::binary::start_gateway_with(&api, &[("KIE_UPLOAD_BASE_URL", &files.uri())]).await;
    let pid = gateway.child.id().expect("running");
    let caller = gateway.caller().await;
    // Warm up: one ordinary upload, so that buffers and pools exist.
    caller
        .client
        .clone()
        .upload_image(tokio_stream::iter(chunks(&png(MIB), 256 * 1024)))
        .await
        .expect("a small upload");
    const TOTAL: usize = 1024 * MIB;
    const CHUNK: usize = 256 * 1024;
    let produced = Arc::new(AtomicUsize::new(0));
    let zeros = Bytes::from(vec![0u8; CHUNK]);
    let counted = produced.clone();
    // Generated lazily from one shared buffer.
    let stream = tokio_stream::iter((0..TOTAL / CHUNK).map(move |i| {
        counted.fetch_add(CHUNK, Ordering::Relaxed);
        chunk(if i == 0 { png(CHUNK) } else { zeros.clone() })
    }));
    let rss_before = memory(pid, "VmRSS");

    let status = tokio::time::timeout(
        Duration::from_secs(60),
        caller.client.clone().upload_image(stream),
    )
    .await
    .expect("answered long before 1 GiB could be sent")
    .expect_err("too large");

    let rss_after = memory(pid, "VmRSS");
    // The high-water mark: what the gateway held at its peak.
    let peak = memory(pid, "VmHWM");
    let sent = produced.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(rss_before);
    let mib = |n: usize| n as f64 / MIB as f64;
    println!(
        "1 GiB stream: refused after the client produced {:.1} MiB; gateway RSS {:.1} MiB \
         before, {:.1} MiB after, peak {:.1} MiB (+{:.1} MiB)",
        mib(sent),
        mib(rss_before),
        mib(rss_after),
        mib(peak),
        mib(growth),
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), ["chunk"]);
    assert!(
        sent < 64 * MIB,
        "the gateway read on: {sent} bytes were produced"
    );
    assert!(
        growth < 48 * MIB,
        "the gateway's peak grew by {growth} bytes while refusing one stream"
    );
    assert_eq!(received(&files, UPLOAD_PATH).await, 1, "only the warm-up");
}

/// A memory figure of process `pid` (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} for {pid}"));
    kib * 1024
}

#[tokio::test]
async fn each_answer_of_kies_file_api_maps_to_a_status_with_error_info() {
    let html = |status| ResponseTemplate::new(status).set_body_string("<html>nope</html>");
    let coded = |code: i64, msg: &str| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"success": false, "code": code, "msg": msg, "data": null}))
    };
    let data = |data: Value| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"success": true, "code": 200, "msg": "ok", "data": data}))
    };
    // A case's name, kie.ai's answer, and the status expected (None: OK).
    type Case = (&'static str, ResponseTemplate, Option<(Code, &'static str)>);
    let cases: Vec<Case> = vec![
        ("documented", upload_ok("https://f.example/a.png"), None),
        (
            "success without a code",
            ResponseTemplate::new(200).set_body_json(
                json!({"success": "true", "data": {"downloadUrl": "https://f.example/b.png"}}),
            ),
            None,
        ),
        (
            "code as a string, unknown fields",
            ResponseTemplate::new(200).set_body_json(json!({"code": "200", "message": "ok",
                "data": {"downloadUrl": "https://f.example/c.png", "extra": [1]}})),
            None,
        ),
        (
            "400",
            coded(400, "uploadPath is required"),
            Some((Code::InvalidArgument, "UPSTREAM_VALIDATION_FAILED")),
        ),
        (
            "401",
            coded(401, "Unauthorized"),
            Some((Code::Internal, "UPSTREAM_UNAUTHENTICATED")),
        ),
        (
            "405",
            coded(405, "Method not allowed"),
            Some((Code::Internal, "UPSTREAM_MISCONFIGURED")),
        ),
        (
            "500",
            coded(500, "Server error"),
            Some((Code::Internal, "UPSTREAM_INTERNAL_ERROR")),
        ),
        (
            "a 404 page (the API host instead of the file host)",
            html(404),
            Some((Code::Internal, "UPSTREAM_MISCONFIGURED")),
        ),
        (
            "a proxy's 503 page",
            html(503),
            Some((Code::Unavailable, "UPSTREAM_UNAVAILABLE")),
        ),
        (
            "no downloadUrl",
            data(json!({"fileName": "a.png"})),
            Some((Code::Internal, "UPSTREAM_BAD_RESPONSE")),
        ),
        (
            "a downloadUrl that is not a web URL",
            data(json!({"downloadUrl": "file:///etc/passwd"})),
            Some((Code::Internal, "UPSTREAM_BAD_RESPONSE")),
        ),
        (
            "not JSON",
            html(200),
            Some((Code::Internal, "UPSTREAM_BAD_RESPONSE")),
        ),
    ];
    for (case, answer, expected) in cases {
        let app = spawn_upload_app().await;
        app.answer_uploads(answer).await;

        let got = app.upload(chunks(&png(2000), 1000)).await;

        match (got, expected) {
            (Ok(answer), None) => assert!(answer.url.starts_with("https://f.example/"), "{case}"),
            (Err(status), Some((code, reason))) => {
                assert_eq!(status.code(), code, "{case}: {status:?}");
                let info = error_info(&status);
                assert_eq!(info.reason, reason, "{case}");
                assert_eq!(info.domain, "kie.ai", "{case}");
                assert_eq!(info.metadata["endpoint"], "fileStreamUpload", "{case}");
                assert!(!status.message().contains(TEST_KEY), "{case}");
                // Only a failure that waiting can mend says to retry.
                assert_eq!(
                    retry_delay(&status).is_some(),
                    code == Code::Unavailable,
                    "{case}"
                );
            }
            (got, _) => panic!("{case}: {got:?}"),
        }
        assert_eq!(app.uploads().await.len(), 1, "{case}: sent once");
    }
}

#[tokio::test]
async fn uploads_beyond_the_bound_wait_then_are_shed_with_retry_info() {
    let app = spawn_upload_app_with(|s| s.uploads.max_concurrent = 1).await;
    // The first upload holds the one slot well past the second's deadline.
    app.answer_uploads(upload_ok("https://f.example/a.png").set_delay(Duration::from_secs(8)))
        .await;
    let first = {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .upload_image(tokio_stream::iter(chunks(&png(1000), 1000)))
                .await
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || async {
            app.uploads().await.len() == 1
        })
        .await
    );

    let mut client = app.client.clone();
    // A deadline long enough that the gateway's answer (at 2.9 s) beats
    // the client's own timer on a loaded machine.
    let request = with_timeout(
        tokio_stream::iter(chunks(&png(1000), 1000)),
        Duration::from_secs(3),
    );
    let status = client.upload_image(request).await.expect_err("shed");

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status).reason, "GATEWAY_OVERLOADED");
    assert!(retry_delay(&status).is_some());
    first
        .await
        .expect("joined")
        .expect("the first one finishes");
    assert_eq!(app.uploads().await.len(), 1);
}

// === CreateTask with image bytes ===

fn with_image_data(image: Bytes) -> CreateTaskRequest {
    CreateTaskRequest {
        image_url: String::new(),
        image_data: image,
        ..valid_request()
    }
}

#[tokio::test]
async fn create_task_with_image_bytes_uploads_them_then_creates_with_their_urls() {
    let app = spawn_upload_app().await;
    let first = "https://tempfile.redpandaai.co/hailuo-gateway/first.png";
    let last = "https://tempfile.redpandaai.co/hailuo-gateway/last.webp";
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(move |request: &Request| {
            let (headers, _) = form_part(&request.body, "file");
            if headers.contains("image/webp") {
                upload_ok(last)
            } else {
                upload_ok(first)
            }
        })
        .mount(&app.files)
        .await;
    mount_create_ok(&app, "task_from_bytes").await;
    let mut webp = b"RIFF\0\0\0\0WEBPVP8 ".to_vec();
    webp.resize(5000, 3);

    let request = CreateTaskRequest {
        end_image_data: webp.into(),
        ..with_image_data(png(4000))
    };
    let task_id = app.create(request).await.expect("created");

    assert_eq!(task_id, "task_from_bytes");
    assert_eq!(app.uploads().await.len(), 2);
    let body = app.first_create_body().await;
    assert_eq!(body["input"]["image_url"], first);
    assert_eq!(body["input"]["end_image_url"], last);
}

#[tokio::test]
async fn image_bytes_in_create_task_are_checked_before_anything_is_sent() {
    let app = spawn_upload_app().await;
    app.answer_uploads(upload_ok("https://f.example/a.png"))
        .await;
    mount_create_ok(&app, "t1").await;
    let gif = Bytes::from_static(b"GIF89a\x01\0\x01\0\x80\0\0\xff\xff\xff");

    let cases: Vec<(CreateTaskRequest, &str)> = vec![
        (with_image_data(gif.clone()), "image_data"),
        (with_image_data(png(LIMIT + 1)), "image_data"),
        (
            CreateTaskRequest {
                image_data: png(100),
                ..valid_request()
            },
            "image_data",
        ),
        (
            CreateTaskRequest {
                end_image_url: "https://example.com/last.png".into(),
                end_image_data: png(100),
                ..valid_request()
            },
            "end_image_data",
        ),
        (
            CreateTaskRequest {
                end_image_data: gif,
                ..valid_request()
            },
            "end_image_data",
        ),
        (with_image_data(Bytes::new()), "image_url"),
    ];
    for (request, field) in cases {
        let status = app.create(request).await.expect_err("refused");
        assert_refused(&app, &status, field).await;
    }

    // Two full-size images fit in one message.
    let request = CreateTaskRequest {
        end_image_data: png(LIMIT),
        ..with_image_data(png(LIMIT))
    };
    app.create(request).await.expect("two 10 MiB images");
    assert_eq!(app.uploads().await.len(), 2);
}

#[tokio::test]
async fn a_failed_upload_creates_nothing_and_frees_the_request_id() {
    let app = spawn_upload_app().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"success": false, "code": 500, "msg": "Server error"})),
        )
        .up_to_n_times(1)
        .mount(&app.files)
        .await;
    app.answer_uploads(upload_ok("https://f.example/a.png"))
        .await;
    mount_create_ok(&app, "t_second_try").await;
    let request = CreateTaskRequest {
        request_id: "upload-fails-once".into(),
        ..with_image_data(png(3000))
    };

    let status = app
        .create(request.clone())
        .await
        .expect_err("upload failed");

    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(error_info(&status).metadata["endpoint"], "fileStreamUpload");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0, "nothing created");

    let task_id = app.create(request).await.expect("the retry creates");
    assert_eq!(task_id, "t_second_try");
    assert_eq!(app.uploads().await.len(), 2);
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
}

#[tokio::test]
async fn concurrent_repeats_with_image_bytes_and_a_request_id_upload_once_and_create_once() {
    let app = spawn_upload_app().await;
    app.answer_uploads(
        upload_ok("https://f.example/once.png").set_delay(Duration::from_millis(300)),
    )
    .await;
    mount_create(
        &app,
        kie_ok(json!({"taskId": "task_once"})).set_delay(Duration::from_millis(200)),
    )
    .await;
    let request = CreateTaskRequest {
        request_id: "same-image-same-id".into(),
        ..with_image_data(png(2 * MIB))
    };

    let calls = (0..8).map(|_| {
        let caller = app.client.clone();
        let request = request.clone();
        tokio::spawn(async move { caller.clone().create_task(request).await })
    });
    let answers = futures_util::future::join_all(calls).await;

    for answer in answers {
        let task_id = answer
            .expect("joined")
            .expect("created")
            .into_inner()
            .task_id;
        assert_eq!(task_id, "task_once");
    }
    assert_eq!(app.uploads().await.len(), 1, "one upload");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1, "one create");

    // The same request_id with another image is another request.
    let other = CreateTaskRequest {
        request_id: "same-image-same-id".into(),
        ..with_image_data(png(2 * MIB + 1))
    };
    let status = app.create(other).await.expect_err("a different image");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test]
async fn repeats_with_image_bytes_over_two_replicas_sharing_redis_upload_once_and_create_once() {
    let redis = crate::redis_server::RedisServer::start().await;
    let api = MockServer::start().await;
    let files = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD_PATH))
        .respond_with(
            upload_ok("https://f.example/fleet.png").set_delay(Duration::from_millis(300)),
        )
        .mount(&files)
        .await;
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .respond_with(kie_ok(json!({"taskId": "task_fleet_bytes"})))
        .mount(&api)
        .await;
    let replica = || async {
        let mut settings = test_settings(&api.uri());
        settings.upstream.upload_base_url = files.uri().parse().expect("url");
        settings.redis = Some(redis.settings());
        spawn_gateway(settings).await
    };
    let (a, b) = (replica().await, replica().await);
    let request = CreateTaskRequest {
        request_id: "fleet-bytes".into(),
        ..with_image_data(png(MIB))
    };

    let calls = (0..10).map(|i| {
        let mut client = if i % 2 == 0 { &a } else { &b }.client.clone();
        let request = request.clone();
        async move { client.create_task(request).await }
    });
    let answers = futures_util::future::join_all(calls).await;

    for answer in answers {
        let task_id = answer.expect("created").into_inner().task_id;
        assert_eq!(task_id, "task_fleet_bytes");
    }
    assert_eq!(received(&files, UPLOAD_PATH).await, 1, "one upload");
    assert_eq!(received(&api, CREATE_PATH).await, 1, "one create");
}
