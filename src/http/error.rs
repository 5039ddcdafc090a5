//! The one place errors become HTTP answers: `{"detail": "..."}` with the status that fits
//! each domain error, and whose fault it was for the logs and `/metrics`.

use bytes::Bytes;
use hyper::{Response, StatusCode, header};
use serde_json::json;

use super::Body;
use crate::broker::{BrokerError, SessionError};
use crate::browser::byo::ProbeError;
use crate::browser::pool::PoolError;
use crate::browser::upstream::UpstreamError;
use crate::error::Origin;
use crate::metrics::Metrics;
use crate::proxy::handshake::HandshakeError;
use crate::proxy::{ProxyError, is_unknown_target};
use crate::store::profiles::ProfileError;
use crate::store::{Status, StoreError};

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 2;

/// An error a client sees. `detail` is one sentence the user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u64>,
    /// A machine-readable code beside `detail`, where a client may branch on the cause.
    pub code: Option<&'static str>,
    pub origin: Origin,
}

impl ApiError {
    /// A refusal of the client's request.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
            retry_after: None,
            code: None,
            origin: Origin::Client,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Invalid API key")
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
    }

    /// Ours: the broker cannot serve now.
    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, detail).with_origin(Origin::Internal)
        }
    }

    /// Ours: something failed inside the broker.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail).with_origin(Origin::Internal)
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
        response
    }
}

/// What a client was trying to do with a session that turned out not to be active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// PATCH.
    Change,
    /// Terminate.
    End,
    /// A CDP connection or discovery call.
    Connect,
    /// A single action.
    Act,
}

/// The one way a session lookup's refusal becomes an answer.
pub fn session_refusal(e: SessionError, attempt: Attempt) -> ApiError {
    let status = match e {
        SessionError::NotFound => return ApiError::not_found("Session not found"),
        SessionError::Store(e) => return e.into(),
        SessionError::Ended(status) => status,
    };
    let expired = status == Status::Expired;
    let detail = match (attempt, expired) {
        (Attempt::Change, true) => "Session has expired and can no longer change".to_owned(),
        (Attempt::Change, false) => "Session is terminated and can no longer change".to_owned(),
        (Attempt::End, true) => "Session has already expired".to_owned(),
        (Attempt::End, false) => "Session is already terminated".to_owned(),
        (Attempt::Connect, true) => return ApiError::new(StatusCode::GONE, "Session has expired"),
        (Attempt::Connect, false) => return ApiError::new(StatusCode::GONE, "Session is terminated"),
        (Attempt::Act, _) => format!("Session is {}: actions need an active session", status.as_str()),
    };
    ApiError::conflict(detail)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(_) => ApiError::unavailable(
                format!("Sessions cannot be read right now ({e}). Retry later."),
                RETRY_AFTER_SECS,
            ),
            StoreError::Io(_) => ApiError::internal(e.to_string()),
        }
        .with_origin(Origin::Internal)
    }
}

impl From<ProfileError> for ApiError {
    fn from(e: ProfileError) -> ApiError {
        let status = match e {
            ProfileError::NotFound => StatusCode::NOT_FOUND,
            ProfileError::Duplicate(_) | ProfileError::Busy(_) | ProfileError::InUse(_) => StatusCode::CONFLICT,
            ProfileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProfileError::Unavailable(_) => {
                return ApiError::unavailable(e.to_string(), RETRY_AFTER_SECS).with_origin(e.origin());
            }
        };
        ApiError::new(status, e.to_string()).with_origin(e.origin())
    }
}

impl From<ProbeError> for ApiError {
    fn from(e: ProbeError) -> ApiError {
        ApiError::unprocessable(e.to_string())
            .with_code(e.code())
            .with_origin(e.origin())
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        let origin = e.origin();
        match e {
            BrokerError::ShuttingDown => ApiError::unavailable(e.to_string(), RETRY_AFTER_SECS),
            BrokerError::RateLimited { retry_after, .. } => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            },
            // No Retry-After: a place frees when one of the key's sessions ends, which
            // only its owner knows.
            BrokerError::Quota(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            BrokerError::Capacity(PoolError::Busy) => ApiError::unavailable(
                "No browser is available: every slot is in use. Retry later.",
                RETRY_AFTER_SECS,
            ),
            BrokerError::Capacity(PoolError::Launch(e)) => {
                ApiError::unavailable(format!("The browser could not be started: {e}"), RETRY_AFTER_SECS)
            }
            BrokerError::Capacity(PoolError::Setup(e)) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("The browser context could not be set up: {e}"),
            )
            .with_origin(Origin::Upstream),
            BrokerError::Byo(e) => e.into(),
            BrokerError::Profile(e) => e.into(),
            BrokerError::StateRefused(_) | BrokerError::OptionRefused(_) => ApiError::unprocessable(e.to_string()),
            BrokerError::BrowserSetup(_) => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()).with_origin(origin),
            BrokerError::ProfileTimedOut(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()).with_origin(origin)
            }
            BrokerError::Store(StoreError::Unavailable(_)) => ApiError::unavailable(e.to_string(), RETRY_AFTER_SECS),
            BrokerError::Store(_)
            | BrokerError::ProfileUnreadable(_)
            | BrokerError::ProfileBrowser(_)
            | BrokerError::ProfileNotSaved(_) => ApiError::internal(e.to_string()).with_origin(origin),
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        match e {
            UpstreamError::Rejected { status, ref body } if is_unknown_target(status, body) => {
                ApiError::not_found("Target not found in this session's browser")
            }
            UpstreamError::Refused(e) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "The session's browser is not reachable")
                .with_origin(Origin::Upstream),
        }
    }
}

impl From<HandshakeError> for ApiError {
    fn from(e: HandshakeError) -> ApiError {
        let status = match e {
            HandshakeError::NotUpgrade => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Version | HandshakeError::MissingKey => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> ApiError {
        match e {
            ProxyError::Token(_) => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
            ProxyError::Session(e) => session_refusal(e, Attempt::Connect),
            ProxyError::ConnectionLimit(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            ProxyError::Upstream(e) => e.into(),
            ProxyError::Handshake(e) => e.into(),
            ProxyError::NotFound => ApiError::not_found("Not Found"),
            ProxyError::MethodNotAllowed => ApiError::method_not_allowed(),
            ProxyError::UrlRefused(_) => ApiError::bad_request(e.to_string()),
        }
    }
}

/// The answer to a handler's result; errors are logged and counted by whose fault.
pub fn answer(metrics: &Metrics, result: Result<Response<Body>, ApiError>) -> Response<Body> {
    match result {
        Ok(response) => response,
        Err(e) => {
            metrics.record_error(e.origin);
            let status = e.status.as_u16();
            match e.origin {
                Origin::Client => {
                    tracing::debug!(status, origin = "client", detail = %e.detail, "refused")
                }
                origin => tracing::warn!(status, origin = origin.as_str(), detail = %e.detail, "failed"),
            }
            e.into_response()
        }
    }
}

/// A JSON answer with the given status.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(super::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An empty answer (204 and friends).
pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(super::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_origin_to_the_answer() {
        let e: ApiError = ProxyError::Upstream(UpstreamError::Timeout(std::time::Duration::from_secs(1))).into();
        assert_eq!((e.status, e.origin), (StatusCode::BAD_GATEWAY, Origin::Upstream));
        let e: ApiError = BrokerError::Capacity(PoolError::Busy).into();
        assert_eq!(
            (e.status, e.origin, e.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Origin::Internal, Some(2))
        );
        let e: ApiError = BrokerError::RateLimited {
            per_minute: 5,
            retry_after: 3,
        }
        .into();
        assert_eq!(
            (e.status, e.origin, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Origin::Client, Some(3))
        );
        let e = session_refusal(SessionError::Ended(Status::Expired), Attempt::Connect);
        assert_eq!((e.status, e.detail.as_str()), (StatusCode::GONE, "Session has expired"));
        let e = session_refusal(SessionError::Ended(Status::Terminated), Attempt::Act);
        assert_eq!(e.detail, "Session is terminated: actions need an active session");
    }
}
