//! Whole-simulator faults: what an unreliable network or CDN in front of
//! kie.ai does to a request, independent of the request itself.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::config::Faults;

/// The fault picked for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the TCP connection without any HTTP answer.
    Drop,
    /// A CDN's non-JSON 502 page.
    Html502,
    /// HTTP 500 with a kie-style JSON body.
    Error500,
    /// Not random: the CDN in front of kie.ai has been reported to refuse
    /// requests that carry no User-Agent, so the simulator always does.
    NoUserAgent,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Html502 => "html502",
            Self::Error500 => "error500",
            Self::NoUserAgent => "no-user-agent",
        }
    }

    /// Rolls each configured rate in turn; the first hit wins.
    pub fn pick(faults: &Faults) -> Option<Self> {
        let hit = |rate: f64| rate > 0.0 && rand::random::<f64>() < rate;
        if hit(faults.drop_rate) {
            Some(Self::Drop)
        } else if hit(faults.html_502_rate) {
            Some(Self::Html502)
        } else if hit(faults.error_rate) {
            Some(Self::Error500)
        } else {
            None
        }
    }
}

/// The page a CDN sends when the origin is down.
pub const HTML_502_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n\
<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n\
</body>\r\n</html>\r\n";

pub fn html_502() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        HTML_502_PAGE,
    )
        .into_response()
}

/// What Cloudflare answers a request its browser-integrity rule refuses.
pub fn no_user_agent() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        "error code: 1010",
    )
        .into_response()
}

/// Unlike kie.ai's own errors (HTTP 200, code in the body) an infrastructure
/// failure also shows in the HTTP status.
pub fn error_500() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({
            "code": 500,
            "msg": "Server internal error, please try again in a few minutes",
            "data": null,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_of_zero_and_one_are_deterministic() {
        assert_eq!(Fault::pick(&Faults::default()), None);
        let always_drop = Faults {
            drop_rate: 1.0,
            error_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(Fault::pick(&always_drop), Some(Fault::Drop));
        let always_500 = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(Fault::pick(&always_500), Some(Fault::Error500));
    }
}
