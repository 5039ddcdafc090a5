//! The HTTP layer, and the only place that knows HTTP status codes: the accept loop
//! ([`server`]), the route table and dispatch ([`router`]), request reading ([`request`]),
//! errors into answers ([`error`]), and the handlers by resource: [`sessions`],
//! [`profiles`], [`actions`] and [`live`] view, and the operator's [`admin`] view. CDP connections are handed to
//! [`crate::proxy`].
//!
//! Nothing below this layer imports from it.

pub(crate) mod actions;
pub mod admin;
pub(crate) mod capture;
pub(crate) mod dashboard;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod extensions;
pub(crate) mod files;
pub(crate) mod fork;
pub(crate) mod live;
pub(crate) mod mcp;
pub mod pools;
pub(crate) mod profiles;
pub(crate) mod render;
pub(crate) mod request;
pub mod router;
pub(crate) mod server;
pub(crate) mod sessions;

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Response;

/// Answers' bodies: whole (JSON, pages) or streamed (files, recordings).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of `bytes`, whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A page of the broker's own (live view, dashboard): HTML, never cached, no referrer,
/// under the content security policy `csp`.
pub fn html_page(status: hyper::StatusCode, html: impl Into<Bytes>, csp: &'static str) -> Response<Body> {
    use hyper::header::{self, HeaderValue};
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// An answer with a whole body (the proxy's) as an answer of this layer.
pub fn whole(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// ISO 8601 UTC to the second with a `Z`, as the wire contract shows.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_8601_to_the_second() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20Z");
    }
}
