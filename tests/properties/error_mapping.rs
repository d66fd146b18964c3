//! kie.ai codes and upstream failures → gRPC status with error details.

use std::time::Duration;

use axum::http::HeaderMap;
use hailuo_gateway::error::{GatewayError, OutcomeUnknown, Prospect, classify};
use hailuo_gateway::kie::{CreateOutcome, Endpoint, KeySource, UpstreamError, UpstreamErrorKind};
use proptest::prelude::*;
use tonic::Code;
use tonic_types::StatusExt;

/// What kie.ai (or a transport error) might say: anything, blank, or long.
/// Not megabytes: that costs seconds per case in percent-encoding.
fn message_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<String>(),
        1 => "[ \t\n]{0,3}",
        1 => Just("é%\n".repeat(10_000)),
    ]
}

/// (gRPC code, ErrorInfo reason, default retry delay) for a kie.ai code.
fn expected_mapping(
    code: i64,
    source: KeySource,
    endpoint: Endpoint,
) -> (Code, &'static str, Option<u64>) {
    let upload = endpoint == Endpoint::FileUpload;
    match code {
        400 if upload => (Code::InvalidArgument, "UPSTREAM_VALIDATION_FAILED", None),
        404 | 405 if upload => (Code::Internal, "UPSTREAM_MISCONFIGURED", None),
        401 if source == KeySource::Gateway => (Code::Internal, "UPSTREAM_UNAUTHENTICATED", None),
        401 => (Code::Unauthenticated, "UPSTREAM_UNAUTHENTICATED", None),
        402 => (Code::FailedPrecondition, "INSUFFICIENT_CREDITS", None),
        404 => (Code::NotFound, "TASK_NOT_FOUND", None),
        422 => (Code::InvalidArgument, "UPSTREAM_VALIDATION_FAILED", None),
        429 | 433 => (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED", Some(10)),
        455 => (Code::Unavailable, "UPSTREAM_MAINTENANCE", Some(30)),
        500 => (Code::Internal, "UPSTREAM_INTERNAL_ERROR", None),
        501 => (Code::Internal, "GENERATION_FAILED", None),
        505 => (Code::Unimplemented, "FEATURE_DISABLED", None),
        _ => (Code::Unknown, "UPSTREAM_UNKNOWN_CODE", None),
    }
}

fn upstream_error() -> impl Strategy<Value = UpstreamError> {
    let code = prop_oneof![
        3 => prop::sample::select(vec![
            200i64, 400, 401, 402, 404, 405, 408, 422, 429, 433, 455, 500, 501, 502, 503, 504, 505,
        ]),
        2 => any::<i64>(),
    ];
    let kind = prop_oneof![
        4 => (code, message_text()).prop_map(|(code, msg)| UpstreamErrorKind::Code { code, msg }),
        1 => (any::<i64>(), message_text()).prop_map(|(code, msg)| UpstreamErrorKind::TaskNotFound { code, msg }),
        1 => message_text().prop_map(|detail| UpstreamErrorKind::Unreachable { detail }),
        1 => message_text().prop_map(|detail| UpstreamErrorKind::ConnectionLost { detail }),
        1 => prop_oneof![300u16..600, Just(502u16), Just(504u16)]
            .prop_map(|status| UpstreamErrorKind::HttpStatus { status }),
        1 => Just(UpstreamErrorKind::Timeout),
        1 => message_text().prop_map(|detail| UpstreamErrorKind::BadResponse { detail }),
        1 => prop::sample::select(vec!["create_rate", "queue_full", "no_slot_in_time"])
            .prop_map(|reason| UpstreamErrorKind::Shed { reason }),
    ];
    (
        prop::sample::select(vec![
            Endpoint::CreateTask,
            Endpoint::RecordInfo,
            Endpoint::FileUpload,
        ]),
        prop::sample::select(vec![KeySource::Gateway, KeySource::Caller]),
        // Retry-After is parsed from kie.ai's header as any u64 seconds.
        prop::option::of(prop_oneof![0u64..120, any::<u64>()].prop_map(Duration::from_secs)),
        kind,
    )
        .prop_map(|(endpoint, key_source, retry_after, kind)| UpstreamError {
            endpoint,
            key_source,
            retry_after,
            kind,
        })
}

/// RetryInfo cannot say more than about 10,000 years.
const MAX_RETRY_DELAY: Duration = Duration::new(315_576_000_000, 999_999_999);

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn every_upstream_error_becomes_a_complete_status(e in upstream_error()) {
        let mapped = classify(&e);
        let status = GatewayError::Upstream(e.clone()).to_status();
        prop_assert_eq!(status.code(), mapped.code);
        prop_assert!(!status.message().trim().is_empty());
        prop_assert_eq!(status.message(), mapped.message.as_str());

        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo is always set");
        // The gateway's own shedding is its domain; everything else kie.ai's.
        let domain = if matches!(e.kind, UpstreamErrorKind::Shed { .. }) { "hailuo-gateway" } else { "kie.ai" };
        prop_assert_eq!(info.domain.as_str(), domain);
        prop_assert_eq!(info.reason.as_str(), mapped.reason);
        prop_assert_eq!(info.metadata.get("endpoint").map(String::as_str), Some(e.endpoint.as_str()));

        let (want_code, want_reason, default_retry) = match &e.kind {
            UpstreamErrorKind::Code { code, msg } => {
                prop_assert_eq!(info.metadata.get("kie_code"), Some(&code.to_string()));
                prop_assert_eq!(info.metadata.get("kie_msg"), Some(msg));
                let said = format!("kie.ai {code}: {msg}");
                prop_assert!(status.message().contains(&said));
                expected_mapping(*code, e.key_source, e.endpoint)
            }
            UpstreamErrorKind::TaskNotFound { code, msg } => {
                prop_assert_eq!(info.metadata.get("kie_code"), Some(&code.to_string()));
                prop_assert_eq!(info.metadata.get("kie_msg"), Some(msg));
                (Code::NotFound, "TASK_NOT_FOUND", None)
            }
            UpstreamErrorKind::Unreachable { detail } | UpstreamErrorKind::ConnectionLost { detail } => {
                prop_assert_eq!(info.metadata.get("detail"), Some(detail));
                (Code::Unavailable, "UPSTREAM_UNAVAILABLE", Some(1))
            }
            UpstreamErrorKind::HttpStatus { status } => {
                prop_assert_eq!(info.metadata.get("http_status"), Some(&status.to_string()));
                if (502..=504).contains(status) {
                    (Code::Unavailable, "UPSTREAM_UNAVAILABLE", Some(1))
                } else {
                    expected_mapping(i64::from(*status), e.key_source, e.endpoint)
                }
            }
            UpstreamErrorKind::Timeout => (Code::DeadlineExceeded, "UPSTREAM_TIMEOUT", None),
            UpstreamErrorKind::BadResponse { detail } => {
                prop_assert_eq!(info.metadata.get("detail"), Some(detail));
                (Code::Internal, "UPSTREAM_BAD_RESPONSE", None)
            }
            UpstreamErrorKind::Shed { reason } => {
                prop_assert_eq!(info.metadata.get("limit").map(String::as_str), Some(*reason));
                (Code::ResourceExhausted, "GATEWAY_OVERLOADED", Some(1))
            }
        };
        prop_assert_eq!((status.code(), info.reason.as_str()), (want_code, want_reason));

        // RetryInfo exactly for the codes a client should retry, honouring
        // Retry-After (clamped to what RetryInfo can say).
        let retryable = matches!(status.code(), Code::ResourceExhausted | Code::Unavailable);
        let retry = details.retry_info().map(|r| r.retry_delay);
        if retryable {
            let default = Duration::from_secs(default_retry.expect("a retryable code has a delay"));
            let want = e.retry_after.unwrap_or(default).min(MAX_RETRY_DELAY);
            prop_assert_eq!(retry, Some(Some(want)));
        } else {
            prop_assert_eq!(retry, None);
        }

        // Whatever kie.ai said, the status can be written as gRPC headers.
        prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
        let _ = GatewayError::Upstream(e.clone()).severity();
    }

    #[test]
    fn a_create_that_may_have_made_a_task_is_never_answered_with_a_retryable_code(e in upstream_error()) {
        prop_assume!(e.create_outcome() == CreateOutcome::MaybeCreated);
        let unknown = OutcomeUnknown {
            request_id: None,
            cause: e.to_string(),
            timed_out: e.is_timeout(),
            prospect: Prospect::NoRequestId,
        };
        let status = GatewayError::CreateOutcomeUnknown(unknown).to_status();
        let want = if e.is_timeout() { Code::DeadlineExceeded } else { Code::Unknown };
        prop_assert_eq!(status.code(), want);
        let details = status.get_error_details();
        prop_assert!(details.retry_info().is_none(), "no RetryInfo: a repeat may pay twice");
        let info = details.error_info().expect("ErrorInfo");
        prop_assert_eq!(info.reason.as_str(), "CREATE_OUTCOME_UNKNOWN");
        prop_assert!(status.message().contains("request_id"));
        prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
    }

    #[test]
    fn exhausted_watches_are_unavailable_with_retry_info(e in upstream_error(), attempts in any::<u32>()) {
        let status = GatewayError::WatchRetriesExhausted { attempts, last: e }.to_status();
        prop_assert_eq!(status.code(), Code::Unavailable);
        prop_assert!(!status.message().is_empty());
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        prop_assert_eq!(info.domain.as_str(), "kie.ai");
        prop_assert_eq!(info.metadata.get("attempts"), Some(&attempts.to_string()));
        prop_assert!(details.retry_info().is_some());
        prop_assert!(status.add_header(&mut HeaderMap::new()).is_ok());
    }
}
