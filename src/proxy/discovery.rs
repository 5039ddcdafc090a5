//! The per-session discovery endpoints (`…/json/version`, `/json/list`, `/json/new`, …):
//! Chrome's answers with every address in them pointing back through the broker.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use url::form_urlencoded;

use super::error::{ProxyError, is_unknown_target};
use crate::broker::Broker;
use crate::browser::upstream::UpstreamError;
use crate::browser::url_policy;
use crate::session::Session;

/// The most of a user's own endpoint's discovery answer the broker parses.
const MAX_EXTERNAL_ANSWER: usize = 1 << 20;

/// Chrome's `/json/*` answers for the session's browser, with every address rewritten.
pub(super) async fn discovery(
    broker: &Broker,
    session: &Session,
    rest: &[&str],
    method: &Method,
    query: &str,
    token: &str,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    // Chrome wants PUT for /json/new; accept GET too, as older Chromes and many scripts use it.
    let (upstream_method, path) = match rest {
        [] | ["list"] => (Method::GET, "/json/list".to_owned()),
        ["version"] => (Method::GET, "/json/version".to_owned()),
        ["protocol"] => (Method::GET, "/json/protocol".to_owned()),
        ["new"] => {
            let url = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "url")
                .map(|(_, v)| v);
            // Parsed here for every session, so checked for every session: a new tab
            // opens at a web page or a blank one, never a file or Chrome's own pages.
            if let Some(url) = &url {
                url_policy::check_navigation(url)?;
            }
            let target = url
                .map(|u| format!("?{}", utf8_percent_encode(&u, COMPONENT)))
                .unwrap_or_default();
            (Method::PUT, format!("/json/new{target}"))
        }
        ["activate", id] if is_target_id(id) => (Method::GET, format!("/json/activate/{id}")),
        ["close", id] if is_target_id(id) => (Method::GET, format!("/json/close/{id}")),
        _ => return Err(ProxyError::NotFound),
    };
    if !(method == Method::GET || method == Method::HEAD || (method == Method::PUT && rest == ["new"])) {
        return Err(ProxyError::MethodNotAllowed);
    }
    // A context session's browser holds other contexts: only its own targets are shown,
    // and a new tab opens in its context.
    let mut created = None;
    if let Some(scope) = &session.upstream.scope {
        match rest {
            ["activate", id] | ["close", id] if !scope.owns(id).await => {
                return Err(ProxyError::UnknownTarget((*id).to_owned()));
            }
            ["new"] => {
                let url = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "url")
                    .map_or_else(|| "about:blank".to_owned(), |(_, v)| v.into_owned());
                let target = scope
                    .create_target(&url)
                    .await
                    .map_err(|e| UpstreamError::Http(format!("the tab could not be opened: {e:?}")))?;
                created = Some(target);
            }
            _ => {}
        }
    }
    let (upstream_method, path) = match created {
        Some(_) => (Method::GET, "/json/list".to_owned()),
        None => (upstream_method, path),
    };
    let (status, body) = session
        .upstream
        .http(
            upstream_method,
            &path,
            broker.egress(),
            session.upstream.timeout(broker.config().byo_timeout()),
        )
        .await?;
    // Another context's target and one Chrome does not know answer alike.
    if let ["activate", id] | ["close", id] = rest
        && is_unknown_target(status.as_u16(), &body)
    {
        return Err(ProxyError::UnknownTarget((*id).to_owned()));
    }
    // Chrome's protocol is passed on as it came (nothing in it to rewrite), unparsed.
    if path == "/json/protocol" {
        return Ok(json_response(status, body));
    }
    // A user's own endpoint may answer anything: what it says is parsed only up to a size
    // no Chrome's list or version comes near (a megabyte of tiny numbers parses to ~40).
    if session.upstream.external && body.len() > MAX_EXTERNAL_ANSWER {
        return Err(ProxyError::Upstream(UpstreamError::Http(format!(
            "its answer to {path} is over {MAX_EXTERNAL_ANSWER} bytes"
        ))));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(mut value) => {
            if let Some(scope) = &session.upstream.scope
                && let Value::Array(targets) = &mut value
            {
                let mut own = Vec::with_capacity(targets.len());
                for target in targets.drain(..) {
                    let id = target["id"].as_str().unwrap_or_default();
                    if scope.owns(id).await {
                        own.push(target);
                    }
                }
                value = match &created {
                    // `/json/new` answers the new tab alone.
                    Some(id) => own.into_iter().find(|t| t["id"] == id.as_str()).unwrap_or(Value::Null),
                    None => Value::Array(own),
                };
            }
            let rewriter = Rewriter {
                chrome: &session.upstream.authority,
                public_ws: &broker.urls().ws,
                session_id: &session.id,
                token,
            };
            rewriter.rewrite(&mut value);
            Ok(json_response(status, value.to_string()))
        }
        Err(_) => Ok(text_response(status, body)),
    }
}

fn json_response(status: StatusCode, json: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(json.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Chrome target ids are hex (32 upper-case digits); accept a little more, nothing that
/// could change the upstream path.
pub(crate) fn is_target_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Points every browser address in a discovery answer back through the broker.
pub(crate) struct Rewriter<'a> {
    /// Chrome's `127.0.0.1:port`.
    pub chrome: &'a str,
    /// `ws(s)://host[:port][/prefix]` of the broker.
    pub public_ws: &'a str,
    pub session_id: &'a str,
    pub token: &'a str,
}

impl Rewriter<'_> {
    pub(crate) fn rewrite(&self, value: &mut Value) {
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| self.rewrite(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.rewrite(v)),
            Value::String(s) if s.contains(self.chrome) => *s = self.rewrite_str(s),
            _ => {}
        }
    }

    fn rewrite_str(&self, s: &str) -> String {
        let after_scheme = s
            .strip_prefix("ws://")
            .or_else(|| s.strip_prefix("wss://"))
            .unwrap_or("");
        let browser_prefix = format!("{}/devtools/browser/", self.chrome);
        let page_prefix = format!("{}/devtools/page/", self.chrome);
        if after_scheme.starts_with(&browser_prefix) {
            return format!(
                "{}/devtools/browser/{}?token={}",
                self.public_ws, self.session_id, self.token
            );
        }
        if let Some(id) = after_scheme.strip_prefix(&page_prefix).filter(|id| is_target_id(id)) {
            return format!("{}/devtools/page/{id}?token={}", self.public_ws, self.token);
        }
        // A frontend URL carries the page address as `ws=127.0.0.1:port/devtools/page/ID`.
        let (scheme, host) = self.public_ws.split_once("://").unwrap_or(("ws", self.public_ws));
        let marker = format!("ws={}/devtools/page/", self.chrome);
        let mut out = String::with_capacity(s.len() + 256);
        let mut rest = s;
        while let Some(at) = rest.find(&marker) {
            out.push_str(&rest[..at]);
            let after = &rest[at + marker.len()..];
            let id_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(after.len());
            out.push_str(&format!(
                "{scheme}={host}/devtools/page/{}%3Ftoken%3D{}",
                &after[..id_len],
                self.token
            ));
            rest = &after[id_len..];
        }
        out.push_str(rest);
        // Whatever else named Chrome's port now names the broker.
        out.replace(self.chrome, host)
    }
}

/// Everything but unreserved characters is percent-encoded in a query component.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discovery_answers_point_through_the_broker() {
        let r = Rewriter {
            chrome: "127.0.0.1:41000",
            public_ws: "wss://gate.example",
            session_id: "sess_1",
            token: "a.b.c",
        };
        let mut v = json!([{
            "id": "ABC",
            "webSocketDebuggerUrl": "ws://127.0.0.1:41000/devtools/page/ABC",
            "devtoolsFrontendUrl": "/devtools/inspector.html?ws=127.0.0.1:41000/devtools/page/ABC",
            "url": "http://site.test/"
        }, {
            "webSocketDebuggerUrl": "ws://127.0.0.1:41000/devtools/browser/0f-9a"
        }]);
        r.rewrite(&mut v);
        assert_eq!(
            v[0]["webSocketDebuggerUrl"],
            "wss://gate.example/devtools/page/ABC?token=a.b.c"
        );
        assert_eq!(
            v[0]["devtoolsFrontendUrl"],
            "/devtools/inspector.html?wss=gate.example/devtools/page/ABC%3Ftoken%3Da.b.c"
        );
        assert_eq!(v[0]["url"], "http://site.test/");
        assert_eq!(
            v[1]["webSocketDebuggerUrl"],
            "wss://gate.example/devtools/browser/sess_1?token=a.b.c"
        );
        assert!(!v.to_string().contains("41000"));
    }

    #[test]
    fn new_target_urls_are_one_query_component() {
        assert_eq!(
            utf8_percent_encode("http://a.b/c?d=e f", COMPONENT).to_string(),
            "http%3A%2F%2Fa.b%2Fc%3Fd%3De%20f"
        );
    }
}
