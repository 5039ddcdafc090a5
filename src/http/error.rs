//! The one place errors become HTTP answers: `{"detail": "..."}` with the status that fits
//! each domain error, and whose fault it was for the logs and `/metrics`.

use bytes::Bytes;
use hyper::{Response, StatusCode, header};
use serde_json::json;

use super::Body;
use crate::artifacts::FileError;
use crate::broker::{BrokerError, ForkError, NamedPoolError, SessionError};
use crate::browser::byo::ProbeError;
use crate::browser::cdp::CdpError;
use crate::browser::pool::PoolError;
use crate::browser::screenshot::ScreenshotError;
use crate::browser::upstream::{UpstreamError, is_unknown_target};
use crate::error::Origin;
use crate::metrics::Metrics;
use crate::proxy::ProxyError;
use crate::proxy::handshake::HandshakeError;
use crate::render::RenderError;
use crate::store::extensions::ExtensionError;
use crate::store::profiles::ProfileError;
use crate::store::{Status, StoreError};

/// Seconds a client is told to wait after a 503.
pub(crate) const RETRY_AFTER_SECS: u64 = 2;

/// An error a client sees. `detail` is one sentence the user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u64>,
    /// A machine-readable code beside `detail`, where a client may branch on the cause.
    pub code: Option<&'static str>,
    /// Whose fault it was: always the error's own, never a default.
    pub origin: Origin,
    /// For a 416: the file's length, told in `Content-Range`.
    pub file_len: Option<u64>,
}

impl ApiError {
    /// The one constructor: a status decided here, and the origin of the error it answers.
    fn of(status: StatusCode, origin: Origin, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
            retry_after: None,
            code: None,
            origin,
            file_len: None,
        }
    }

    fn retry_in(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    // The request's refusals, found by the HTTP layer itself: the client's.

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::BAD_REQUEST, Origin::Client, detail)
    }

    pub fn unauthorized() -> Self {
        Self::of(StatusCode::UNAUTHORIZED, Origin::Client, "Invalid API key")
    }

    /// A link or token that does not open what it names (the live view's).
    pub fn bad_link(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::UNAUTHORIZED, Origin::Client, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::NOT_FOUND, Origin::Client, detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::CONFLICT, Origin::Client, detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::UNPROCESSABLE_ENTITY, Origin::Client, detail)
    }

    /// A stream asked for without saying it can read one.
    /// More at once than one key may hold (no `Retry-After`: a place frees when one of
    /// the key's own closes).
    pub fn too_many(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::TOO_MANY_REQUESTS, Origin::Client, detail)
    }

    pub fn not_acceptable(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::NOT_ACCEPTABLE, Origin::Client, detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::of(StatusCode::METHOD_NOT_ALLOWED, Origin::Client, "Method Not Allowed")
    }

    /// A request body over its limit.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::PAYLOAD_TOO_LARGE, Origin::Client, detail)
    }

    /// A request body that did not arrive in time.
    pub fn read_timeout(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::REQUEST_TIMEOUT, Origin::Client, detail)
    }

    /// A byte range outside a file of `len` bytes.
    pub fn range_not_satisfiable(len: u64) -> Self {
        ApiError {
            file_len: Some(len),
            ..Self::of(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Origin::Client,
                format!("the file has {len} bytes"),
            )
        }
    }

    // The broker's own failures, where no domain error carries them.

    /// The broker cannot serve now (not ready, stopping).
    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        Self::of(StatusCode::SERVICE_UNAVAILABLE, Origin::Internal, detail).retry_in(retry_after)
    }

    /// Something failed inside the broker.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::of(StatusCode::INTERNAL_SERVER_ERROR, Origin::Internal, detail)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = json!({ "detail": self.detail });
        if let Some(code) = self.code {
            body["code"] = json!(code);
        }
        let mut response = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("digits are a valid header"),
            );
        }
        if let Some(len) = self.file_len {
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes */{len}").parse().expect("digits are a valid header"),
            );
        }
        response
    }
}

/// What a client was trying to do with a session that turned out not to be active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// PATCH.
    Change,
    /// Terminate.
    End,
    /// A CDP connection or discovery call.
    Connect,
    /// A single action.
    Act,
    /// A live view link (its page, its socket, its recording).
    View,
    /// A one-call render in a given session.
    Render,
    /// A fork of the session.
    Fork,
}

/// The one way a session lookup's refusal becomes an answer.
pub(crate) fn session_refusal(e: SessionError, attempt: Attempt) -> ApiError {
    let origin = e.origin();
    let status = match e {
        SessionError::NotFound if attempt == Attempt::View => {
            return ApiError::of(StatusCode::NOT_FOUND, origin, "This session no longer exists.");
        }
        SessionError::NotFound => return ApiError::of(StatusCode::NOT_FOUND, origin, "Session not found"),
        SessionError::Store(e) => return e.into(),
        SessionError::Ended(status) => status,
    };
    let expired = status == Status::Expired;
    let (status, detail): (StatusCode, String) = match (attempt, expired) {
        (Attempt::Change, true) => (
            StatusCode::CONFLICT,
            "Session has expired and can no longer change".into(),
        ),
        (Attempt::Change, false) => (
            StatusCode::CONFLICT,
            "Session is terminated and can no longer change".into(),
        ),
        (Attempt::End, true) => (StatusCode::CONFLICT, "Session has already expired".into()),
        (Attempt::End, false) => (StatusCode::CONFLICT, "Session is already terminated".into()),
        (Attempt::Connect, true) => (StatusCode::GONE, "Session has expired".into()),
        (Attempt::Connect, false) => (StatusCode::GONE, "Session is terminated".into()),
        (Attempt::View, true) => (StatusCode::GONE, "This session has expired.".into()),
        (Attempt::View, false) => (StatusCode::GONE, "This session has ended.".into()),
        (Attempt::Render, _) => (
            StatusCode::CONFLICT,
            format!("Session is {}: a render needs an active session", status.as_str()),
        ),
        (Attempt::Act, _) => (
            StatusCode::CONFLICT,
            format!("Session is {}: actions need an active session", status.as_str()),
        ),
        (Attempt::Fork, _) => (
            StatusCode::CONFLICT,
            format!("Session is {}: only an active session can be forked", status.as_str()),
        ),
    };
    ApiError::of(status, origin, detail)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let origin = e.origin();
        match e {
            StoreError::Unavailable(_) => ApiError::of(
                StatusCode::SERVICE_UNAVAILABLE,
                origin,
                format!("Sessions cannot be read right now ({e}). Retry later."),
            )
            .retry_in(RETRY_AFTER_SECS),
            StoreError::Io(_) => ApiError::of(StatusCode::INTERNAL_SERVER_ERROR, origin, e.to_string()),
        }
    }
}

impl From<ProfileError> for ApiError {
    fn from(e: ProfileError) -> ApiError {
        let origin = e.origin();
        let status = match e {
            ProfileError::NotFound => StatusCode::NOT_FOUND,
            ProfileError::Duplicate(_) | ProfileError::Busy(_) | ProfileError::InUse(_) | ProfileError::TooMany(_) => {
                StatusCode::CONFLICT
            }
            ProfileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProfileError::Unavailable(_) => {
                return ApiError::of(StatusCode::SERVICE_UNAVAILABLE, origin, e.to_string()).retry_in(RETRY_AFTER_SECS);
            }
        };
        ApiError::of(status, origin, e.to_string())
    }
}

impl From<ProbeError> for ApiError {
    fn from(e: ProbeError) -> ApiError {
        ApiError::of(StatusCode::UNPROCESSABLE_ENTITY, e.origin(), e.to_string()).with_code(e.code())
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> ApiError {
        let origin = e.origin();
        match e {
            PoolError::Busy => ApiError::of(
                StatusCode::SERVICE_UNAVAILABLE,
                origin,
                "No browser is available: every slot is in use. Retry later.",
            )
            .retry_in(RETRY_AFTER_SECS),
            PoolError::Launch(e) => ApiError::of(
                StatusCode::SERVICE_UNAVAILABLE,
                origin,
                format!("The browser could not be started: {e}"),
            )
            .retry_in(RETRY_AFTER_SECS),
            PoolError::Setup(e) => ApiError::of(
                StatusCode::BAD_GATEWAY,
                origin,
                format!("The browser context could not be set up: {e}"),
            ),
        }
    }
}

impl From<ExtensionError> for ApiError {
    fn from(e: ExtensionError) -> ApiError {
        let status = match e {
            ExtensionError::NotFound => StatusCode::NOT_FOUND,
            ExtensionError::Unknown(_) | ExtensionError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ExtensionError::Full(_) | ExtensionError::InUse(_) => StatusCode::CONFLICT,
            ExtensionError::Io(_) | ExtensionError::Unloadable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ExtensionError::Unavailable(_) => {
                return ApiError::of(StatusCode::SERVICE_UNAVAILABLE, e.origin(), e.to_string())
                    .retry_in(RETRY_AFTER_SECS);
            }
        };
        ApiError::of(status, e.origin(), e.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        let origin = e.origin();
        let status = match e {
            BrokerError::Capacity(e) => return e.into(),
            BrokerError::Byo(e) => return e.into(),
            BrokerError::Profile(e) => return e.into(),
            BrokerError::Extension(e) => return e.into(),
            BrokerError::ShuttingDown | BrokerError::Store(StoreError::Unavailable(_)) => {
                return ApiError::of(StatusCode::SERVICE_UNAVAILABLE, origin, e.to_string()).retry_in(RETRY_AFTER_SECS);
            }
            BrokerError::RateLimited { retry_after, .. } => {
                return ApiError::of(StatusCode::TOO_MANY_REQUESTS, origin, e.to_string()).retry_in(retry_after);
            }
            // No Retry-After: a place frees when one of the key's sessions ends, which
            // only its owner knows.
            BrokerError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            BrokerError::NamedPool(NamedPoolError::NotFound) => StatusCode::NOT_FOUND,
            BrokerError::NamedPool(NamedPoolError::Exists(_)) => StatusCode::CONFLICT,
            BrokerError::NamedPool(NamedPoolError::NoneReady) => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::NamedPool(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BrokerError::StateRefused(_) | BrokerError::OptionRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BrokerError::ProfileTimedOut(_) | BrokerError::ProfileBrowser(CdpError::Timeout) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            BrokerError::BrowserSetup(..) | BrokerError::ProfileBrowser(_) => StatusCode::BAD_GATEWAY,
            BrokerError::Store(_) | BrokerError::ProfileUnreadable(_) | BrokerError::ProfileNotSaved(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::of(status, origin, e.to_string())
    }
}

impl From<ForkError> for ApiError {
    fn from(e: ForkError) -> ApiError {
        let origin = e.origin();
        let status = match e {
            ForkError::Source(e) => return session_refusal(e, Attempt::Fork),
            ForkError::Create(e) => return e.into(),
            ForkError::External | ForkError::TooMuchStorage => StatusCode::UNPROCESSABLE_ENTITY,
            ForkError::Read(CdpError::Timeout) | ForkError::Write(CdpError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            ForkError::Read(_) | ForkError::Write(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::of(status, origin, e.to_string())
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        let origin = e.origin();
        match e {
            UpstreamError::Rejected { status, ref body } if is_unknown_target(status, body) => ApiError::of(
                StatusCode::NOT_FOUND,
                origin,
                "Target not found in this session's browser",
            ),
            UpstreamError::Refused(e) => ApiError::of(StatusCode::FORBIDDEN, origin, e.to_string()),
            _ => ApiError::of(
                StatusCode::BAD_GATEWAY,
                origin,
                "The session's browser is not reachable",
            ),
        }
    }
}

impl From<HandshakeError> for ApiError {
    fn from(e: HandshakeError) -> ApiError {
        let status = match e {
            HandshakeError::NotUpgrade => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Version | HandshakeError::MissingKey => StatusCode::BAD_REQUEST,
        };
        ApiError::of(status, e.origin(), e.to_string())
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> ApiError {
        let origin = e.origin();
        let status = match e {
            ProxyError::Session(e) => return session_refusal(e, Attempt::Connect),
            ProxyError::Upstream(e) => return e.into(),
            ProxyError::Handshake(e) => return e.into(),
            ProxyError::Token(_) => StatusCode::UNAUTHORIZED,
            ProxyError::ConnectionLimit(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NotFound | ProxyError::UnknownTarget(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UrlRefused(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::of(status, origin, e.to_string())
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> ApiError {
        let status = match e {
            FileError::BadName(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FileError::NotFound(_) => StatusCode::NOT_FOUND,
            FileError::InProgress(_) | FileError::Busy | FileError::TooMany(_) => StatusCode::CONFLICT,
            FileError::TooLarge(_) | FileError::OverQuota(_) => StatusCode::PAYLOAD_TOO_LARGE,
            FileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::of(status, e.origin(), e.to_string())
    }
}

impl From<ScreenshotError> for ApiError {
    fn from(e: ScreenshotError) -> ApiError {
        let origin = e.origin();
        let status = match e {
            ScreenshotError::Connect(e) => return e.into(),
            ScreenshotError::NoTab => StatusCode::CONFLICT,
            ScreenshotError::Call { .. } | ScreenshotError::Timeout(_) | ScreenshotError::BadImage(_) => {
                StatusCode::BAD_GATEWAY
            }
        };
        ApiError::of(status, origin, format!("The screen could not be taken: {e}"))
    }
}

impl From<RenderError> for ApiError {
    fn from(e: RenderError) -> ApiError {
        let origin = e.origin();
        let code = e.code();
        let status = match e {
            RenderError::Session(e) => return session_refusal(e, Attempt::Render),
            RenderError::Create(e) => return e.into(),
            RenderError::Connect(e) => return e.into(),
            RenderError::BadOption(_) => StatusCode::BAD_REQUEST,
            RenderError::NoElement(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RenderError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RenderError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            RenderError::Navigation(_)
            | RenderError::PageStatus { .. }
            | RenderError::Download
            | RenderError::TooLarge(_)
            | RenderError::Browser(_) => StatusCode::BAD_GATEWAY,
        };
        let mut answer = ApiError::of(status, origin, e.to_string());
        if status == StatusCode::TOO_MANY_REQUESTS {
            answer = answer.retry_in(1);
        }
        match code {
            Some(code) => answer.with_code(code),
            None => answer,
        }
    }
}

/// Logs and counts an error answer by whose fault it was (for answers rendered another
/// way than [`ApiError::into_response`], such as the live view's pages).
pub(crate) fn record(metrics: &Metrics, e: &ApiError) {
    metrics.record_error(e.origin);
    let status = e.status.as_u16();
    match e.origin {
        Origin::Client => tracing::debug!(status, origin = "client", detail = %e.detail, "refused"),
        origin => tracing::warn!(status, origin = origin.as_str(), detail = %e.detail, "failed"),
    }
}

/// The answer to a handler's result; errors are logged and counted by whose fault.
pub(crate) fn answer(metrics: &Metrics, result: Result<Response<Body>, ApiError>) -> Response<Body> {
    match result {
        Ok(response) => response,
        Err(e) => {
            record(metrics, &e);
            e.into_response()
        }
    }
}

/// A JSON answer with the given status.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(super::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An empty answer (204 and friends).
pub(crate) fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(super::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::TokenError;
    use crate::browser::LaunchError;
    use crate::browser::cdp::CdpError;
    use crate::browser::egress::EgressError;
    use crate::quota::{Kind, QuotaExceeded};

    /// Converts a domain error and checks the answer's status, and that its origin is the
    /// error's own.
    macro_rules! answers {
        ($error:expr, $status:expr) => {{
            let error = $error;
            let origin = error.origin();
            let answer = ApiError::from(error);
            assert_eq!(
                (answer.status, answer.origin),
                ($status, origin),
                "{}",
                stringify!($error)
            );
            answer
        }};
    }

    fn io() -> std::io::Error {
        std::io::Error::other("disk")
    }

    #[test]
    fn every_domain_error_answers_with_its_own_origin() {
        use Origin::*;
        use StatusCode as S;
        let timeout = || UpstreamError::Timeout(Duration::from_secs(1));
        let cases: Vec<(ApiError, Origin)> = vec![
            (
                answers!(StoreError::Unavailable("down".into()), S::SERVICE_UNAVAILABLE),
                Internal,
            ),
            (answers!(StoreError::Io(io()), S::INTERNAL_SERVER_ERROR), Internal),
            (answers!(ProfileError::NotFound, S::NOT_FOUND), Client),
            (answers!(ProfileError::InUse(2), S::CONFLICT), Client),
            (answers!(ProfileError::TooMany(1000), S::CONFLICT), Client),
            (answers!(ProfileError::Io(io()), S::INTERNAL_SERVER_ERROR), Internal),
            (answers!(ExtensionError::NotFound, S::NOT_FOUND), Client),
            (
                answers!(ExtensionError::Unknown("ext_1".into()), S::UNPROCESSABLE_ENTITY),
                Client,
            ),
            (
                answers!(ExtensionError::Refused("MV2".into()), S::UNPROCESSABLE_ENTITY),
                Client,
            ),
            (answers!(ExtensionError::InUse(1), S::CONFLICT), Client),
            (answers!(ExtensionError::Io(io()), S::INTERNAL_SERVER_ERROR), Internal),
            (
                answers!(
                    ExtensionError::Unloadable {
                        id: "ext_1".into(),
                        why: "changed".into()
                    },
                    S::INTERNAL_SERVER_ERROR
                ),
                Internal,
            ),
            (
                answers!(
                    ExtensionError::Unavailable(StoreError::Unavailable("down".into())),
                    S::SERVICE_UNAVAILABLE
                ),
                Internal,
            ),
            (
                answers!(ProfileError::Unavailable(StoreError::Io(io())), S::SERVICE_UNAVAILABLE),
                Internal,
            ),
            (
                answers!(ProbeError::InvalidUrl("x".into()), S::UNPROCESSABLE_ENTITY),
                Client,
            ),
            (answers!(ProbeError::Timeout(5), S::UNPROCESSABLE_ENTITY), Upstream),
            (answers!(PoolError::Busy, S::SERVICE_UNAVAILABLE), Internal),
            (
                answers!(PoolError::Launch(LaunchError::Exited), S::SERVICE_UNAVAILABLE),
                Internal,
            ),
            (answers!(PoolError::Setup("no".into()), S::BAD_GATEWAY), Upstream),
            (answers!(BrokerError::ShuttingDown, S::SERVICE_UNAVAILABLE), Internal),
            (
                answers!(
                    BrokerError::Quota(QuotaExceeded {
                        kind: Kind::Managed,
                        limit: 4,
                        running: 4
                    }),
                    S::TOO_MANY_REQUESTS
                ),
                Client,
            ),
            (
                answers!(BrokerError::OptionRefused("x".into()), S::UNPROCESSABLE_ENTITY),
                Client,
            ),
            (
                answers!(BrokerError::Capacity(PoolError::Setup("no".into())), S::BAD_GATEWAY),
                Upstream,
            ),
            (
                answers!(BrokerError::Byo(ProbeError::Timeout(5)), S::UNPROCESSABLE_ENTITY),
                Upstream,
            ),
            (
                answers!(
                    BrokerError::BrowserSetup("its identity", CdpError::Timeout),
                    S::BAD_GATEWAY
                ),
                Upstream,
            ),
            (
                answers!(BrokerError::ProfileBrowser(CdpError::Timeout), S::GATEWAY_TIMEOUT),
                Upstream,
            ),
            (
                answers!(
                    BrokerError::ProfileBrowser(CdpError::Protocol("closed".into())),
                    S::BAD_GATEWAY
                ),
                Upstream,
            ),
            (
                answers!(
                    BrokerError::ProfileTimedOut(Duration::from_secs(45)),
                    S::GATEWAY_TIMEOUT
                ),
                Upstream,
            ),
            (
                answers!(
                    BrokerError::ProfileUnreadable(ProfileError::Io(io())),
                    S::INTERNAL_SERVER_ERROR
                ),
                Internal,
            ),
            (
                answers!(BrokerError::Store(StoreError::Io(io())), S::INTERNAL_SERVER_ERROR),
                Internal,
            ),
            (
                answers!(
                    UpstreamError::Refused(EgressError::OwnBrowser {
                        addr: ([127, 0, 0, 1], 9).into()
                    }),
                    S::FORBIDDEN
                ),
                Client,
            ),
            (
                answers!(
                    UpstreamError::Rejected {
                        status: 404,
                        body: vec![]
                    },
                    S::NOT_FOUND
                ),
                Client,
            ),
            (
                answers!(
                    UpstreamError::Rejected {
                        status: 500,
                        body: b"crashed".to_vec()
                    },
                    S::BAD_GATEWAY
                ),
                Upstream,
            ),
            (answers!(timeout(), S::BAD_GATEWAY), Upstream),
            (answers!(HandshakeError::NotUpgrade, S::UPGRADE_REQUIRED), Client),
            (answers!(HandshakeError::MissingKey, S::BAD_REQUEST), Client),
            (
                answers!(ProxyError::Token(TokenError::Invalid), S::UNAUTHORIZED),
                Client,
            ),
            (
                answers!(ProxyError::Session(SessionError::NotFound), S::NOT_FOUND),
                Client,
            ),
            (
                answers!(ProxyError::Session(SessionError::Ended(Status::Expired)), S::GONE),
                Client,
            ),
            (
                answers!(
                    ProxyError::Session(SessionError::Store(StoreError::Io(io()))),
                    S::INTERNAL_SERVER_ERROR
                ),
                Internal,
            ),
            (answers!(ProxyError::ConnectionLimit(8), S::TOO_MANY_REQUESTS), Client),
            (answers!(ProxyError::Upstream(timeout()), S::BAD_GATEWAY), Upstream),
            (answers!(ProxyError::UnknownTarget("T".into()), S::NOT_FOUND), Client),
            (
                answers!(
                    ProxyError::UrlRefused(crate::browser::url_policy::Refused("file:")),
                    S::BAD_REQUEST
                ),
                Client,
            ),
            (answers!(FileError::TooLarge(10), S::PAYLOAD_TOO_LARGE), Client),
            (answers!(FileError::InProgress("a.pdf".into()), S::CONFLICT), Client),
            (answers!(FileError::Io(io()), S::INTERNAL_SERVER_ERROR), Internal),
            (answers!(ScreenshotError::NoTab, S::CONFLICT), Client),
            (
                answers!(ScreenshotError::Timeout(Duration::from_secs(5)), S::BAD_GATEWAY),
                Upstream,
            ),
            (answers!(ScreenshotError::Connect(timeout()), S::BAD_GATEWAY), Upstream),
        ];
        // The origins themselves, so that a change of one is a decision, not an accident.
        for (n, (answer, origin)) in cases.iter().enumerate() {
            assert_eq!(answer.origin, *origin, "case {n}: {}", answer.detail);
        }
    }

    #[test]
    fn unavailable_and_rate_limited_answers_say_when_to_retry() {
        let e = ApiError::from(BrokerError::Capacity(PoolError::Busy));
        assert_eq!(e.retry_after, Some(RETRY_AFTER_SECS));
        let e = ApiError::from(BrokerError::RateLimited {
            per_minute: 5,
            retry_after: 3,
        });
        assert_eq!(
            (e.status, e.origin, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Origin::Client, Some(3))
        );
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let e = ApiError::from(BrokerError::Quota(QuotaExceeded {
            kind: Kind::Byo,
            limit: 8,
            running: 8,
        }));
        assert_eq!(e.retry_after, None, "a quota frees when a session ends, not at a time");
        let response = ApiError::range_not_satisfiable(100).into_response();
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(response.headers()[header::CONTENT_RANGE], "bytes */100");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn a_session_that_is_not_active_is_refused_in_the_words_of_the_attempt() {
        let ended = |status, attempt| session_refusal(SessionError::Ended(status), attempt);
        let e = ended(Status::Expired, Attempt::Connect);
        assert_eq!((e.status, e.detail.as_str()), (StatusCode::GONE, "Session has expired"));
        let e = ended(Status::Terminated, Attempt::Act);
        assert_eq!(
            (e.status, e.detail.as_str()),
            (
                StatusCode::CONFLICT,
                "Session is terminated: actions need an active session"
            )
        );
        let e = ended(Status::Terminated, Attempt::View);
        assert_eq!(
            (e.status, e.detail.as_str()),
            (StatusCode::GONE, "This session has ended.")
        );
        let e = ended(Status::Expired, Attempt::Change);
        assert_eq!(e.status, StatusCode::CONFLICT);
        let e = session_refusal(SessionError::NotFound, Attempt::View);
        assert_eq!((e.status, e.origin), (StatusCode::NOT_FOUND, Origin::Client));
        let e = session_refusal(
            SessionError::Store(StoreError::Unavailable("down".into())),
            Attempt::End,
        );
        assert_eq!(
            (e.status, e.origin, e.retry_after),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Origin::Internal,
                Some(RETRY_AFTER_SECS)
            )
        );
    }

    #[test]
    fn the_http_layers_own_refusals_are_the_clients_and_its_failures_the_brokers() {
        for e in [
            ApiError::bad_request("x"),
            ApiError::unauthorized(),
            ApiError::bad_link("x"),
            ApiError::not_found("x"),
            ApiError::conflict("x"),
            ApiError::unprocessable("x"),
            ApiError::method_not_allowed(),
            ApiError::too_large("x"),
            ApiError::read_timeout("x"),
            ApiError::range_not_satisfiable(1),
        ] {
            assert!(e.status.is_client_error(), "{e:?}");
            assert_eq!(e.origin, Origin::Client, "{e:?}");
        }
        for e in [ApiError::internal("x"), ApiError::unavailable("x", 1)] {
            assert!(e.status.is_server_error(), "{e:?}");
            assert_eq!(e.origin, Origin::Internal, "{e:?}");
        }
    }
}
