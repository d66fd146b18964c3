use hailuo_gateway::pb::CreateTaskRequest;
use tonic::Code;

use crate::helpers::*;

/// Sends `request` and expects INVALID_ARGUMENT naming exactly `fields`,
/// with nothing sent upstream.
async fn assert_rejected(request: CreateTaskRequest, fields: &[&str]) {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;

    let status = app.create(request).await.expect_err("rejected");

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status), fields, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "INVALID_REQUEST");
    assert_eq!(info.domain, "hailuo-gateway");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 0, "no upstream call");
}

async fn assert_accepted(request: CreateTaskRequest) {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    app.create(request).await.expect("accepted");
    assert_eq!(app.upstream_count(CREATE_PATH).await, 1);
}

#[tokio::test]
async fn prompt_is_required() {
    for prompt in ["", "   "] {
        let mut r = valid_request();
        r.prompt = prompt.into();
        assert_rejected(r, &["prompt"]).await;
    }
}

#[tokio::test]
async fn prompt_length_is_counted_in_characters_not_bytes() {
    let mut r = valid_request();
    r.prompt = "猫".repeat(1500); // 4500 bytes
    assert_accepted(r.clone()).await;
    r.prompt.push('猫');
    assert_rejected(r, &["prompt"]).await;

    let mut r = valid_request();
    r.prompt = "a".repeat(1500);
    assert_accepted(r.clone()).await;
    r.prompt.push('a');
    assert_rejected(r, &["prompt"]).await;
}

#[tokio::test]
async fn image_url_is_required_and_absolute_http() {
    for url in [
        "",
        "cat.png",
        "/images/cat.png",
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "https://",
    ] {
        let mut r = valid_request();
        r.image_url = url.into();
        assert_rejected(r, &["image_url"]).await;
    }
    let mut r = valid_request();
    r.image_url = "http://example.com:8080/a/b.jpeg?x=1".into();
    assert_accepted(r).await;
}

#[tokio::test]
async fn optional_urls_must_be_absolute_http_when_present() {
    let mut r = valid_request();
    r.end_image_url = "last.png".into();
    assert_rejected(r, &["end_image_url"]).await;

    let mut r = valid_request();
    r.callback_url = "mailto:ops@example.com".into();
    assert_rejected(r, &["callback_url"]).await;
}

#[tokio::test]
async fn urls_without_a_host_or_with_raw_spaces_or_control_characters_never_reach_kie() {
    for url in [
        "https:///c.png",
        "https:/c.png",
        "https://a b/c.png",
        "https://example.com/a b.png",
        " https://example.com/c.png",
        "https://example.com/\tc.png",
        "https://example.com/c.png\r\n",
        "https://example.com/\u{0}c.png",
    ] {
        for field in ["image_url", "end_image_url", "callback_url"] {
            let mut r = valid_request();
            match field {
                "image_url" => r.image_url = url.into(),
                "end_image_url" => r.end_image_url = url.into(),
                _ => r.callback_url = url.into(),
            }
            assert_rejected(r, &[field]).await;
        }
    }
}

#[tokio::test]
async fn urls_are_sent_to_kie_in_their_normalised_form() {
    let app = spawn_app().await;
    mount_create_ok(&app, "t1").await;
    let mut r = valid_request();
    r.image_url = "HTTPS://Example.COM:443/a/../cat.png".into();
    r.end_image_url = "https://bücher.example/ü.png".into();
    r.callback_url = "http://Hooks.Example.com:80".into();

    app.create(r).await.expect("accepted");

    let body = app.first_create_body().await;
    assert_eq!(body["input"]["image_url"], "https://example.com/cat.png");
    assert_eq!(
        body["input"]["end_image_url"],
        "https://xn--bcher-kva.example/%C3%BC.png"
    );
    assert_eq!(body["callBackUrl"], "http://hooks.example.com/");
}

#[tokio::test]
async fn enum_values_out_of_range_are_rejected() {
    let mut r = valid_request();
    r.model = 7;
    r.duration = 3;
    r.resolution = -2;
    assert_rejected(r, &["duration", "model", "resolution"]).await;
}

#[tokio::test]
async fn request_id_must_be_printable_and_at_most_128_characters() {
    let mut r = valid_request();
    r.request_id = "é".repeat(128);
    assert_accepted(r.clone()).await;
    r.request_id.push('x');
    assert_rejected(r, &["request_id"]).await;

    let mut r = valid_request();
    r.request_id = "tab\there".into();
    assert_rejected(r, &["request_id"]).await;
}

#[tokio::test]
async fn every_bad_field_is_named_at_once() {
    let r = CreateTaskRequest {
        model: 9,
        prompt: String::new(),
        image_url: "nope".into(),
        end_image_url: "nope".into(),
        duration: 9,
        resolution: 9,
        callback_url: "nope".into(),
        ..Default::default()
    };
    assert_rejected(
        r,
        &[
            "callback_url",
            "duration",
            "end_image_url",
            "image_url",
            "model",
            "prompt",
            "resolution",
        ],
    )
    .await;
}

#[tokio::test]
async fn task_ids_with_path_or_query_characters_are_rejected_by_get_and_watch() {
    let app = spawn_app().await;
    mount_record(&app, Sequence::states("x", &["success"])).await;
    let too_long = "a".repeat(129);
    for bad in [
        "",
        "../etc/passwd",
        "a?b=c",
        "a&b",
        "a%00",
        "a/b",
        "a b",
        too_long.as_str(),
    ] {
        let get = app.get(bad).await.expect_err("rejected");
        assert_eq!(get.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(bad_fields(&get), ["task_id"]);

        let watch = app
            .try_watch(watch_request(bad))
            .await
            .expect_err("rejected");
        assert_eq!(watch.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(bad_fields(&watch), ["task_id"]);
    }
    assert_eq!(app.upstream_count(RECORD_PATH).await, 0, "no upstream call");

    let longest = "a".repeat(128);
    app.get(&longest).await.expect("128 characters are fine");
}
