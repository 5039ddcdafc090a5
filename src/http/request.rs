//! Reading requests: JSON bodies within limits, fields, query strings, the API key.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, header};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::auth::Tenant;
use crate::broker::Broker;

/// The tenant whose API key the request carries; for a request another node sent on,
/// the tenant its checked hop header names (the client's key stayed on that node).
pub(crate) fn authenticate<B>(broker: &Broker, request: &Request<B>) -> Result<Tenant, ApiError> {
    if let Some(tenant) = crate::proxy::hop::hop_tenant(request) {
        return tenant.ok_or_else(ApiError::unauthorized);
    }
    broker
        .keys()
        .authenticate(request.headers())
        .ok_or_else(ApiError::unauthorized)
}

/// Refuses methods other than `allowed` with 405.
pub(crate) fn only(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}

/// A field that is present and not `null` (clients send `null` for "not given").
pub(crate) fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

/// Reads the body (at most `limit` bytes) as a JSON object. An empty body counts as `{}`.
pub(crate) async fn read_json_object(
    request: Request<Incoming>,
    limit: usize,
    read_time: Duration,
) -> Result<Map<String, Value>, ApiError> {
    json_object(&read_body(request, limit, read_time).await?)
}

/// Reads the body, at most `limit` bytes within `read_time`.
pub(crate) async fn read_body(
    request: Request<Incoming>,
    limit: usize,
    read_time: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("Request body is too large: the limit is {limit} bytes"));
    if let Some(length) = request.headers().get(header::CONTENT_LENGTH)
        && length
            .to_str()
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| l > limit)
    {
        return Err(too_large());
    }
    // A client that trickles its body is dropped like one that trickles its headers.
    let bytes = tokio::time::timeout(read_time, Limited::new(request.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::read_timeout(format!(
                "The request body did not arrive within {} s",
                read_time.as_secs_f64()
            ))
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad_request("The request body could not be read")
            }
        })?
        .to_bytes();
    Ok(bytes)
}

/// A body as a JSON object; an empty one counts as `{}`.
pub(crate) fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON in the request body: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::unprocessable("The request body must be a JSON object")),
    }
}

/// `a=1&b=x%20y` → [("a","1"), ("b","x y")].
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// A JSON number with no fractional part (`600` or `600.0`: both integers to JSON Schema),
/// if it is 0 or more and fits.
pub(crate) fn whole_number(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && (0.0..=9.0e15).contains(&f)).then_some(f as u64)
    })
}

/// Longest pool name.
pub(crate) const MAX_POOL_NAME: usize = 48;

/// A pool name: a short slug, so that it is safe in a path, a log line and a metric.
pub(crate) fn valid_pool_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=MAX_POOL_NAME).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// `body[name]` as a pool name, or the rule it breaks.
pub(crate) fn pool_name(body: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match field(body, name) {
        Some(Value::String(v)) if valid_pool_name(v) => Ok(v.clone()),
        _ => Err(ApiError::unprocessable(pool_name_rule(name))),
    }
}

fn pool_name_rule(field: &str) -> String {
    format!(
        "{field} must be a pool name: 1 to {MAX_POOL_NAME} lowercase letters, digits, '-' or '_', beginning with a letter or digit"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_are_short_slugs() {
        for good in ["a", "login-pool", "p_1", "0", &"x".repeat(MAX_POOL_NAME)] {
            assert!(valid_pool_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a b",
            "a/b",
            "..",
            "a.b",
            "é",
            &"x".repeat(MAX_POOL_NAME + 1),
        ] {
            assert!(!valid_pool_name(bad), "{bad}");
        }
    }

    #[test]
    fn queries_are_percent_decoded() {
        assert_eq!(
            query_pairs("status_filter=active&limit=5&x=a%20b+c&bad=%zz&end=%4"),
            vec![
                ("status_filter".into(), "active".into()),
                ("limit".into(), "5".into()),
                ("x".into(), "a b c".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
    }
}
