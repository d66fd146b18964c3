//! The upload host: kie.ai's file API on a listener of its own, its answer
//! shapes, codes and limits, and the files served at their `downloadUrl`s.

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hailuo_gateway::simulator::{Endpoint, FileSettings, SimulatorConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

fn with_files(files: FileSettings) -> SimulatorConfig {
    SimulatorConfig { files, ..config() }
}

/// kie.ai's documented `data`, exactly these fields.
fn assert_uploaded(answer: &Answer, upload_base: &str, file_path: &str, size: usize, mime: &str) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.json["success"], true);
    assert_eq!(answer.json["code"], 200);
    assert_eq!(answer.json["msg"], "File uploaded successfully");
    let data = answer.json["data"].as_object().expect("data is an object");
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "downloadUrl",
            "fileName",
            "filePath",
            "fileSize",
            "mimeType",
            "uploadedAt"
        ]
    );
    assert_eq!(data["filePath"], file_path);
    assert_eq!(
        data["fileName"],
        file_path.rsplit('/').next().expect("a name")
    );
    assert_eq!(data["fileSize"], size);
    assert_eq!(data["mimeType"], mime);
    let url = data["downloadUrl"].as_str().expect("downloadUrl");
    assert!(url.starts_with(&format!("{upload_base}/files/")), "{url}");
    let uploaded_at = data["uploadedAt"].as_str().expect("uploadedAt");
    assert!(
        humantime::parse_rfc3339(uploaded_at).is_ok() && uploaded_at.ends_with('Z'),
        "{uploaded_at}"
    );
}

async fn fetch(sim: &TestSim, url: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    // No key: the storage host is public, like kie.ai's tempfile host.
    let response = sim.client.get(url).send().await.expect("answered");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = response.bytes().await.expect("body").to_vec();
    (status, content_type, bytes)
}

#[tokio::test]
async fn a_stream_upload_answers_kies_shape_and_the_file_is_served_at_its_download_url() {
    let sim = spawn_sim(config()).await;
    let image = png(5000);
    let form = Form::new()
        .text("uploadPath", "images/user-uploads")
        .text("fileName", "cat.png")
        .file("file", Some("IMG_0001.PNG"), Some("image/png"), &image);
    let answer = sim.upload_form(Some(KEY), &form).await;
    assert_uploaded(
        &answer,
        &sim.upload_base_url,
        "images/user-uploads/cat.png",
        5000,
        "image/png",
    );
    let url = answer.json["data"]["downloadUrl"].as_str().expect("url");
    let (status, content_type, bytes) = fetch(&sim, url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("image/png"));
    assert_eq!(bytes, image);

    let counts = sim.handle.counts();
    assert_eq!((counts.file_stream_upload, counts.file), (1, 1));
    assert_eq!(counts.create_task, 0, "the API host's counts are apart");
    // The log shows the upload's fields and the file's size, never its bytes.
    let recorded = sim.handle.requests().pop().expect("recorded");
    assert_eq!(recorded.path, "/api/file-stream-upload");
    assert!(recorded.bearer);
    assert_eq!(
        recorded.body,
        json!({
            "uploadPath": "images/user-uploads",
            "fileName": "cat.png",
            "file": {"fileName": "IMG_0001.PNG", "contentType": "image/png", "size": 5000}
        })
    );
}

#[tokio::test]
async fn without_a_file_name_the_parts_own_name_is_kept_or_a_random_one_made() {
    let sim = spawn_sim(config()).await;
    let own = sim.upload_ok("first frame.jpg", &jpeg(100)).await;
    assert_eq!(own["fileName"], "first frame.jpg");
    assert_eq!(own["mimeType"], "image/jpeg");
    assert!(
        own["downloadUrl"]
            .as_str()
            .expect("url")
            .ends_with("/images/tests/first%20frame.jpg")
    );
    let form = Form::new()
        .text("uploadPath", "images/tests")
        .file("file", None, None, &webp(100));
    let random = sim.upload_form(Some(KEY), &form).await;
    let name = random.json["data"]["fileName"].as_str().expect("name");
    assert!(name.ends_with(".webp") && name.len() > 20, "{name}");
    assert_eq!(random.json["data"]["mimeType"], "image/webp");
}

#[tokio::test]
async fn base64_uploads_take_plain_base64_and_data_urls() {
    let sim = spawn_sim(config()).await;
    let image = jpeg(300);
    let plain = sim
        .upload_json(
            "/api/file-base64-upload",
            Some(KEY),
            &json!({"base64Data": STANDARD.encode(&image), "uploadPath": "images/b64", "fileName": "a.jpg"}),
        )
        .await;
    assert_uploaded(
        &plain,
        &sim.upload_base_url,
        "images/b64/a.jpg",
        300,
        "image/jpeg",
    );
    let url = plain.json["data"]["downloadUrl"].as_str().expect("url");
    assert_eq!(fetch(&sim, url).await.2, image);

    let data_url = format!(
        "data:image/png;base64,{}",
        STANDARD.encode(png(64)).trim_end_matches('=')
    );
    let from_data_url = sim
        .upload_json(
            "/api/file-base64-upload",
            Some(KEY),
            &json!({"base64Data": data_url, "uploadPath": "images/b64"}),
        )
        .await;
    assert_eq!(
        from_data_url.status,
        StatusCode::OK,
        "{}",
        from_data_url.json
    );
    assert_eq!(from_data_url.json["data"]["mimeType"], "image/png");
    assert_eq!(from_data_url.json["data"]["fileSize"], 64);
    let name = from_data_url.json["data"]["fileName"]
        .as_str()
        .expect("name");
    assert!(name.ends_with(".png"), "a random name of the type: {name}");

    let recorded = sim.handle.requests().pop().expect("recorded");
    assert_eq!(
        recorded.body["base64Data"],
        json!({"chars": data_url.len()}),
        "the log keeps the length, not the data"
    );
    assert_eq!(sim.handle.count(Endpoint::FileBase64Upload), 2);

    for (body, msg) in [
        (
            json!({"base64Data": "not base64!", "uploadPath": "x"}),
            "base64Data is not valid base64",
        ),
        (json!({"uploadPath": "x"}), "base64Data is required"),
        (
            json!({"base64Data": "data:image/png,abc", "uploadPath": "x"}),
            "base64Data is a data URL without ;base64",
        ),
        (
            json!({"base64Data": STANDARD.encode(png(10))}),
            "uploadPath is required",
        ),
    ] {
        let answer = sim
            .upload_json("/api/file-base64-upload", Some(KEY), &body)
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            answer.json,
            json!({"success": false, "code": 400, "msg": msg, "data": null})
        );
    }
}

/// A stand-in for someone else's web server, on 127.0.0.1:0.
async fn remote_files() -> (String, tokio_util::sync::CancellationToken) {
    let app = axum::Router::new()
        .route(
            "/pictures/cat.png",
            axum::routing::get(|| async { png(2048) }),
        )
        .route(
            "/slow.png",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                png(10)
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    (format!("http://{addr}"), stop)
}

#[tokio::test]
async fn url_uploads_fetch_the_file_within_the_timeout() {
    let sim = spawn_sim(with_files(FileSettings {
        url_timeout: Duration::from_millis(300),
        ..FileSettings::default()
    }))
    .await;
    let (remote, stop) = remote_files().await;
    let answer = sim
        .upload_json(
            "/api/file-url-upload",
            Some(KEY),
            &json!({"fileUrl": format!("{remote}/pictures/cat.png"), "uploadPath": "images/fetched"}),
        )
        .await;
    assert_uploaded(
        &answer,
        &sim.upload_base_url,
        "images/fetched/cat.png",
        2048,
        "image/png",
    );
    let url = answer.json["data"]["downloadUrl"].as_str().expect("url");
    assert_eq!(fetch(&sim, url).await.2, png(2048));

    let missing = sim
        .upload_json(
            "/api/file-url-upload",
            Some(KEY),
            &json!({"fileUrl": format!("{remote}/nothing.png"), "uploadPath": "x"}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json["msg"], "could not download fileUrl: HTTP 404");

    let started = std::time::Instant::now();
    let slow = sim
        .upload_json(
            "/api/file-url-upload",
            Some(KEY),
            &json!({"fileUrl": format!("{remote}/slow.png"), "uploadPath": "x"}),
        )
        .await;
    assert_eq!(slow.status, StatusCode::BAD_REQUEST);
    assert_eq!(slow.json["msg"], "could not download fileUrl within 0.3 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up on time"
    );

    let not_http = sim
        .upload_json(
            "/api/file-url-upload",
            Some(KEY),
            &json!({"fileUrl": "ftp://example.com/a.png", "uploadPath": "x"}),
        )
        .await;
    assert_eq!(not_http.json["msg"], "fileUrl must be an http or https URL");
    assert_eq!(sim.handle.count(Endpoint::FileUrlUpload), 4);
    stop.cancel();
}

#[tokio::test]
async fn uploads_without_the_key_are_401_and_store_nothing() {
    let sim = spawn_sim(SimulatorConfig {
        api_key: Some(KEY.into()),
        ..config()
    })
    .await;
    let form = Form::new()
        .text("uploadPath", "images")
        .file("file", Some("a.png"), None, &png(10));
    for key in [None, Some("sk-wrong")] {
        let answer = sim.upload_form(key, &form).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json["success"], false);
        assert_eq!(answer.json["code"], 401);
        let json_upload = sim
            .upload_json(
                "/api/file-base64-upload",
                key,
                &json!({"base64Data": STANDARD.encode(png(10)), "uploadPath": "images"}),
            )
            .await;
        assert_eq!(json_upload.status, StatusCode::UNAUTHORIZED);
    }
    let answer = sim.upload_form(Some(KEY), &form).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["data"]["fileName"], "a.png");
}

#[tokio::test]
async fn another_method_is_405() {
    let sim = spawn_sim(config()).await;
    for path in [
        "/api/file-stream-upload",
        "/api/file-base64-upload",
        "/api/file-url-upload",
    ] {
        let response = sim
            .client
            .get(format!("{}{path}", sim.upload_base_url))
            .header("authorization", format!("Bearer {KEY}"))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(response.headers()["allow"], "POST");
        assert_eq!(
            json_of(response).await,
            json!({"success": false, "code": 405, "msg": "Method Not Allowed", "data": null})
        );
    }
}

#[tokio::test]
async fn a_missing_file_or_a_bad_path_or_name_is_400() {
    let sim = spawn_sim(config()).await;
    let image = png(10);
    let cases = [
        (Form::new().text("uploadPath", "images"), "file is required"),
        (
            Form::new().file("file", Some("a.png"), None, &image),
            "uploadPath is required",
        ),
        (
            Form::new()
                .text("uploadPath", "/images")
                .file("file", Some("a.png"), None, &image),
            "uploadPath must not start or end with a slash",
        ),
        (
            Form::new()
                .text("uploadPath", "images/")
                .file("file", Some("a.png"), None, &image),
            "uploadPath must not start or end with a slash",
        ),
        (
            Form::new().text("uploadPath", "images/../etc").file(
                "file",
                Some("a.png"),
                None,
                &image,
            ),
            "uploadPath must be segments separated by single slashes",
        ),
        (
            Form::new()
                .text("uploadPath", "images")
                .text("fileName", "a/b.png")
                .file("file", Some("a.png"), None, &image),
            "fileName must be a file name, without slashes",
        ),
        (
            Form::new()
                .text("uploadPath", "images")
                .file("file", Some("a.png"), None, b""),
            "file is empty",
        ),
    ];
    for (form, msg) in cases {
        let answer = sim.upload_form(Some(KEY), &form).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{msg}");
        assert_eq!(
            answer.json,
            json!({"success": false, "code": 400, "msg": msg, "data": null})
        );
    }
    let not_multipart = sim
        .client
        .post(format!("{}/api/file-stream-upload", sim.upload_base_url))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(not_multipart.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(not_multipart).await["msg"],
        "the body must be multipart/form-data with a boundary"
    );
}

#[tokio::test]
async fn files_over_the_limit_are_400_whichever_way_they_come() {
    let sim = spawn_sim(with_files(FileSettings {
        max_bytes: 1000,
        ..FileSettings::default()
    }))
    .await;
    let limit_msg = "file size exceeds the limit of 1000 bytes";
    let at_limit = sim.upload_ok("a.png", &png(1000)).await;
    assert_eq!(at_limit["fileSize"], 1000);

    let form =
        Form::new()
            .text("uploadPath", "images")
            .file("file", Some("a.png"), None, &png(1001));
    let over = sim.upload_form(Some(KEY), &form).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.json["msg"], limit_msg);

    let base64 = sim
        .upload_json(
            "/api/file-base64-upload",
            Some(KEY),
            &json!({"base64Data": STANDARD.encode(png(1001)), "uploadPath": "images"}),
        )
        .await;
    assert_eq!(base64.status, StatusCode::BAD_REQUEST);
    assert_eq!(base64.json["msg"], limit_msg);
}

/// Sends the head of a request and `body_prefix`, then stops writing (the
/// body is never finished) and reads the answer.
async fn answer_to_unfinished(upload_base: &str, head: &str, body_prefix: &[u8]) -> String {
    let addr = upload_base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body_prefix).await.expect("body prefix");
    let mut answer = Vec::new();
    let mut buf = [0_u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&answer).contains("\"data\":null}") {
                        break;
                    }
                }
            }
        }
    })
    .await
    .expect("answered without the rest of the body");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_oversized_stream_is_answered_as_soon_as_it_passes_the_limit() {
    let sim = spawn_sim(with_files(FileSettings {
        max_bytes: 10_000,
        ..FileSettings::default()
    }))
    .await;
    // Chunked, no Content-Length: the form's head and 200 kB of a file that
    // would go on for 1 GB; the answer must come without the rest.
    let head = format!(
        "POST /api/file-stream-upload HTTP/1.1\r\nHost: sim\r\nUser-Agent: t\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\nimages\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&png(200_000));
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n");
    let answer = answer_to_unfinished(&sim.upload_base_url, &head, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("file size exceeds the limit of 10000 bytes"),
        "{answer}"
    );

    // A declared length over the limit is refused before any byte of the body.
    let head = format!(
        "POST /api/file-stream-upload HTTP/1.1\r\nHost: sim\r\nUser-Agent: t\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: 1073741824\r\n\r\n"
    );
    let answer = answer_to_unfinished(&sim.upload_base_url, &head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(sim.handle.count(Endpoint::FileStreamUpload), 2);
}

#[tokio::test]
async fn a_reused_path_and_name_silently_replaces_the_file_and_keys_keep_apart() {
    let sim = spawn_sim(config()).await;
    let first = sim.upload_ok("frame.png", &png(100)).await;
    let second = sim.upload_ok("frame.png", &jpeg(50)).await;
    let url = first["downloadUrl"].as_str().expect("url");
    assert_eq!(second["downloadUrl"], url, "the same path and name");
    let (status, content_type, bytes) = fetch(&sim, url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(bytes, jpeg(50), "the second upload replaced the first");

    // Another key's file of the same name lives elsewhere.
    let form = Form::new().text("uploadPath", "images/tests").file(
        "file",
        Some("frame.png"),
        None,
        &png(100),
    );
    let other = sim.upload_form(Some("sk-another-key"), &form).await;
    let other_url = other.json["data"]["downloadUrl"].as_str().expect("url");
    assert_ne!(other_url, url);
    assert!(!other_url.contains(KEY) && !other_url.contains("sk-another-key"));
    assert_eq!(fetch(&sim, url).await.2, jpeg(50), "untouched");
}

#[tokio::test]
async fn files_are_served_until_their_retention_passes() {
    let sim = spawn_sim(with_files(FileSettings {
        retention: Duration::from_millis(300),
        ..FileSettings::default()
    }))
    .await;
    let data = sim.upload_ok("a.png", &png(100)).await;
    let url = data["downloadUrl"].as_str().expect("url").to_owned();
    assert_eq!(fetch(&sim, &url).await.0, StatusCode::OK);
    let gone = wait_for(Duration::from_secs(5), || async {
        (fetch(&sim, &url).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some(), "expired files are no longer served");
}

#[tokio::test]
async fn the_two_hosts_serve_only_their_own_paths() {
    let sim = spawn_sim(config()).await;
    // Live, api.kie.ai answers 404 to the upload paths.
    let form = Form::new()
        .text("uploadPath", "images")
        .file("file", Some("a.png"), None, &png(10));
    let on_api_host = sim
        .client
        .post(sim.url("/api/file-stream-upload"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", form.content_type())
        .body(form.body())
        .send()
        .await
        .expect("answered");
    assert_eq!(on_api_host.status(), StatusCode::NOT_FOUND);
    let on_upload_host = sim
        .upload_json("/api/v1/jobs/createTask", Some(KEY), &body("a cat"))
        .await;
    assert_eq!(on_upload_host.status, StatusCode::NOT_FOUND);
    assert_eq!(on_upload_host.json["code"], 404);
    assert_eq!(sim.handle.count(Endpoint::CreateTask), 0);
    assert_eq!(sim.handle.count(Endpoint::FileStreamUpload), 0);
}

#[tokio::test]
async fn the_cdns_user_agent_rule_and_the_faults_apply_to_uploads_too() {
    let sim = spawn_sim(SimulatorConfig {
        faults: hailuo_gateway::simulator::Faults {
            error_rate: 1.0,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let form = Form::new()
        .text("uploadPath", "images")
        .file("file", Some("a.png"), None, &png(10));
    let faulted = sim.upload_form(Some(KEY), &form).await;
    assert_eq!(faulted.status, StatusCode::INTERNAL_SERVER_ERROR);
    let no_user_agent = hailuo_gateway::http_client::builder()
        .expect("TLS config builds")
        .no_proxy()
        .build()
        .expect("client builds");
    let bare = no_user_agent
        .post(format!("{}/api/file-stream-upload", sim.upload_base_url))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", form.content_type())
        .body(form.body())
        .send()
        .await
        .expect("answered");
    assert_eq!(bare.status(), StatusCode::FORBIDDEN);
    let faults: Vec<Option<String>> = sim.handle.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some("error500".to_owned()),
            Some("no-user-agent".to_owned())
        ]
    );
}

#[tokio::test]
async fn create_task_takes_uploaded_images_and_refuses_unusable_ones() {
    let sim = spawn_sim(with_files(FileSettings {
        retention: Duration::from_secs(2),
        ..FileSettings::default()
    }))
    .await;
    let first = sim.upload_ok("first.png", &png(1000)).await;
    let last = sim.upload_ok("last.webp", &webp(1000)).await;
    let mut create = body("a cat");
    create["input"]["image_url"] = first["downloadUrl"].clone();
    create["input"]["end_image_url"] = last["downloadUrl"].clone();
    let task_id = sim.create_body_ok(&create).await;
    let param: Value =
        serde_json::from_str(sim.task(&task_id).await["param"].as_str().expect("param"))
            .expect("param is JSON");
    assert_eq!(param["input"]["image_url"], first["downloadUrl"]);

    let text = sim.upload_ok("notes.txt", b"not a picture").await;
    let big = sim
        .upload_ok(
            "big.png",
            &png(usize::try_from(hailuo_gateway::simulator::IMAGE_MAX_BYTES).expect("fits") + 1),
        )
        .await;
    let missing = format!("{}/files/nobody/images/none.png", sim.upload_base_url);
    for (field, url, msg) in [
        (
            "image_url",
            text["downloadUrl"].clone(),
            "input.image_url must be a jpeg, png or webp image",
        ),
        (
            "end_image_url",
            big["downloadUrl"].clone(),
            "input.end_image_url must be at most 10485760 bytes",
        ),
        (
            "image_url",
            json!(missing),
            "input.image_url is not an uploaded file (expired or never uploaded)",
        ),
    ] {
        let mut create = body("a cat");
        create["input"][field] = url;
        let answer = sim.create(&create).await;
        assert_eq!(
            answer.json,
            json!({"code": 422, "msg": msg, "data": null}),
            "{field}"
        );
    }
    // Once expired, the same URL is refused.
    wait_for(Duration::from_secs(10), || async {
        (fetch(&sim, first["downloadUrl"].as_str().expect("url"))
            .await
            .0
            == StatusCode::NOT_FOUND)
            .then_some(())
    })
    .await
    .expect("expires");
    let again = sim.create(&create).await;
    assert_eq!(again.json["code"], 422);
    assert_eq!(sim.handle.count(Endpoint::CreateTask), 5);
    assert_eq!(sim.handle.credits(), 970.0, "only the first was charged");
}
