//! Request validation and task id parsing, against rules re-stated here
//! independently of src/task.rs.

use std::collections::BTreeSet;

use axum::http::HeaderMap;
use hailuo_gateway::error::GatewayError;
use hailuo_gateway::pb;
use hailuo_gateway::task::{CreateTaskInput, TaskId};
use proptest::prelude::*;
use tonic::Code;
use tonic_types::StatusExt;

/// Strings that sit on and around every validation boundary, plus anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[ \t\n\u{3000}\u{a0}]{0,4}",
        1 => Just(String::new()),
        // Around the 1500-character prompt limit, in 1- to 4-byte characters.
        2 => (1495usize..1506, prop::sample::select(vec!['a', 'é', '猫', '🐈', ' ']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        // Around the 128-character request id / task id limit.
        2 => (120usize..136, prop::sample::select(vec!['k', 'é', '\u{7f}', '-']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        // Huge: must cost no more than a long one, and never panic.
        1 => Just("p".repeat(2 << 20)),
    ]
}

/// URL-ish strings: valid, nearly valid, and around the 2048-byte limit.
fn url_text() -> impl Strategy<Value = String> {
    let host = "[a-z0-9]{1,12}(\\.[a-z]{2,5}){0,2}";
    prop_oneof![
        3 => (prop::sample::select(vec!["http", "https", "HTTPS", "ftp", "file", "data", "", "h ttp"]),
              prop::sample::select(vec!["://", ":", ":/", "//"]),
              host,
              prop::option::of(1u16..),
              "(/[a-zA-Z0-9._~%!$&'()*+,;=:@ -]{0,16}){0,3}(\\?[a-z=&]{0,10})?")
            .prop_map(|(scheme, sep, host, port, path)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{scheme}{sep}{host}{port}{path}")
            }),
        // Lengths either side of 2048 bytes.
        2 => (2030usize..2070).prop_map(|n| {
            let prefix = "https://example.com/";
            format!("{prefix}{}", "a".repeat(n - prefix.len()))
        }),
        1 => text(),
        1 => Just(String::new()),
    ]
}

fn enum_value(max_valid: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..=max_valid, 1 => any::<i32>()]
}

fn create_request() -> impl Strategy<Value = pb::CreateTaskRequest> {
    (
        (enum_value(1), text(), url_text(), url_text()),
        (
            enum_value(2),
            enum_value(2),
            any::<Option<bool>>(),
            url_text(),
            text(),
        ),
    )
        .prop_map(
            |(
                (model, prompt, image_url, end_image_url),
                (duration, resolution, prompt_optimizer, callback_url, request_id),
            )| pb::CreateTaskRequest {
                model,
                prompt,
                image_url,
                end_image_url,
                duration,
                resolution,
                prompt_optimizer,
                callback_url,
                request_id,
                // Image bytes have rules of their own (tests/api/uploads.rs).
                ..Default::default()
            },
        )
}

/// An absolute http(s) URL that names its host right after `://`, with no
/// raw whitespace or control characters.
fn is_http_url(raw: &str) -> bool {
    raw.len() <= 2048
        && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
        && url::Url::parse(raw).is_ok_and(|u| {
            let after_scheme = &raw[u.scheme().len()..];
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && after_scheme
                    .strip_prefix("://")
                    .is_some_and(|rest| !rest.starts_with(['/', '\\']))
        })
}

/// The form a URL is sent to kie.ai in.
fn normalised(raw: &str) -> String {
    url::Url::parse(raw).map(String::from).unwrap_or_default()
}

/// The fields a request should be refused for.
fn expected_bad_fields(r: &pb::CreateTaskRequest) -> BTreeSet<&'static str> {
    let mut bad = BTreeSet::new();
    if !(0..=1).contains(&r.model) {
        bad.insert("model");
    }
    if !(0..=2).contains(&r.duration) {
        bad.insert("duration");
    }
    if !(0..=2).contains(&r.resolution) {
        bad.insert("resolution");
    }
    if r.prompt.chars().all(char::is_whitespace) || r.prompt.chars().count() > 1500 {
        bad.insert("prompt");
    }
    if !is_http_url(&r.image_url) {
        bad.insert("image_url");
    }
    if !r.end_image_url.is_empty() && !is_http_url(&r.end_image_url) {
        bad.insert("end_image_url");
    }
    if !r.callback_url.is_empty() && !is_http_url(&r.callback_url) {
        bad.insert("callback_url");
    }
    if r.request_id.chars().count() > 128 || r.request_id.chars().any(char::is_control) {
        bad.insert("request_id");
    }
    bad
}

pub fn is_task_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn create_task_input_is_ok_exactly_when_every_rule_holds(req in create_request()) {
        let expected = expected_bad_fields(&req);
        match CreateTaskInput::try_from(req.clone()).map_err(GatewayError::from) {
            Ok(input) => {
                prop_assert!(expected.is_empty(), "accepted but {expected:?} are bad");
                prop_assert_eq!(&input.prompt, &req.prompt);
                let image_url = normalised(&req.image_url);
                prop_assert_eq!(input.image.url(), Some(image_url.as_str()));
                prop_assert_eq!(
                    input.end_image.as_ref().and_then(|e| e.url()).unwrap_or_default(),
                    normalised(&req.end_image_url)
                );
                prop_assert_eq!(
                    input.callback_url.unwrap_or_default(),
                    normalised(&req.callback_url)
                );
                prop_assert_eq!(input.request_id.unwrap_or_default(), req.request_id);
                prop_assert_eq!(input.prompt_optimizer, req.prompt_optimizer);
                prop_assert_eq!(input.model, "hailuo/02-image-to-video-standard");
                prop_assert_eq!(input.duration, if req.duration == 1 { "6" } else { "10" });
                prop_assert_eq!(input.resolution, if req.resolution == 1 { "512P" } else { "768P" });
            }
            Err(err) => {
                let GatewayError::InvalidArgument(violations) = &err else {
                    return Err(TestCaseError::fail(format!("not InvalidArgument: {err:?}")));
                };
                let named: Vec<&str> = violations.iter().map(|v| v.field).collect();
                let unique: BTreeSet<&str> = named.iter().copied().collect();
                prop_assert_eq!(unique.len(), named.len(), "a field named twice: {:?}", named);
                prop_assert_eq!(unique, expected);
                prop_assert!(violations.iter().all(|v| !v.description.is_empty()));

                // The status carries the same fields as BadRequest and can be
                // written as gRPC headers.
                let status = err.to_status();
                prop_assert_eq!(status.code(), Code::InvalidArgument);
                let details = status.get_error_details();
                let in_status: Vec<&str> = details
                    .bad_request()
                    .map(|b| b.field_violations.iter().map(|f| f.field.as_str()).collect())
                    .unwrap_or_default();
                prop_assert_eq!(in_status, named);
                prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
            }
        }
    }

    #[test]
    fn well_formed_http_urls_are_accepted_in_every_url_field(
        scheme in prop::sample::select(vec!["http", "https"]),
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){0,3}",
        port in prop::option::of(1u16..),
        path in "(/[a-zA-Z0-9._~-]{0,20}){0,4}",
    ) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!("{scheme}://{host}{port}{path}");
        let req = pb::CreateTaskRequest {
            prompt: "a cat".into(),
            image_url: url.clone(),
            end_image_url: url.clone(),
            callback_url: url,
            ..Default::default()
        };
        prop_assert!(CreateTaskInput::try_from(req).is_ok());
    }

    #[test]
    fn urls_without_an_http_scheme_are_refused(
        scheme in prop::sample::select(vec!["", "ftp://", "file://", "javascript:", "//", "mailto:", "data:"]),
        rest in "[a-z0-9./]{1,30}",
    ) {
        let req = pb::CreateTaskRequest {
            prompt: "a cat".into(),
            image_url: format!("{scheme}{rest}"),
            ..Default::default()
        };
        let err = GatewayError::from(CreateTaskInput::try_from(req).expect_err("refused"));
        let GatewayError::InvalidArgument(v) = err else {
            return Err(TestCaseError::fail("not InvalidArgument"));
        };
        prop_assert_eq!(v.iter().map(|f| f.field).collect::<Vec<_>>(), ["image_url"]);
    }

    #[test]
    fn task_id_parse_accepts_exactly_the_task_id_alphabet(
        raw in prop_oneof![
            3 => "[A-Za-z0-9_-]{0,140}",
            2 => any::<String>(),
            2 => ("[A-Za-z0-9_-]{1,128}", any::<prop::sample::Index>(), any::<char>())
                .prop_map(|(s, at, c)| {
                    let mut chars: Vec<char> = s.chars().collect();
                    let i = at.index(chars.len());
                    chars[i] = c;
                    chars.into_iter().collect()
                }),
        ]
    ) {
        match TaskId::parse(raw.clone()).map_err(GatewayError::from) {
            Ok(id) => {
                prop_assert!(is_task_id(&raw), "accepted {raw:?}");
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
            Err(GatewayError::InvalidArgument(v)) => {
                prop_assert!(!is_task_id(&raw), "refused {raw:?}");
                prop_assert_eq!(v.iter().map(|f| f.field).collect::<Vec<_>>(), ["task_id"]);
            }
            Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }
}
