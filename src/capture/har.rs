//! A session's network traffic as HAR 1.2, built from CDP's Network domain on the broker's
//! own connection: one entry per request (a redirect ends one and starts the next), with
//! timings, sizes and headers; the values of `Authorization`, `Proxy-Authorization`,
//! `Cookie` and `Set-Cookie` are never kept. Bodies only when the session asked for them,
//! each up to `max_har_body_bytes` and all of them up to `max_har_bodies_bytes_per_session`.
//! Past `max_har_entries_per_session` requests, later ones are counted, not kept.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::common::{Limits, cut, wall_time_ms};

/// Headers whose values are secrets (compared without case).
const SECRET_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];
const REDACTED: &str = "[redacted]";
const MAX_URL: usize = 64 * 1024;
const MAX_HEADER: usize = 8 * 1024;
/// A headers object as kept: its names and values up to this many bytes in all (a page's
/// server may send hundreds of KiB of them).
const MAX_HEADERS_BYTES: usize = 64 * 1024;
/// URLs and headers kept for one session in all: past it, later requests are counted, not
/// kept, as past `max_har_entries_per_session`.
const MAX_KEPT_BYTES: usize = 64 * 1024 * 1024;
/// Raw headers kept for requests not announced yet (they come a moment before).
const MAX_EARLY: usize = 256;

#[derive(Default)]
struct Entry {
    /// The CDP session that reported it: the same request seen by another target (a
    /// frame's document is announced to its parent too) is that one's, not a second entry.
    session: String,
    target_id: String,
    resource_type: String,
    wall_ms: f64,
    started: f64,
    method: String,
    url: String,
    request_headers: Value,
    raw_request_headers: Option<Value>,
    post_data: Option<String>,
    post_size: usize,
    response: Option<Value>,
    raw_response_headers: Option<Value>,
    data_length: u64,
    ended: Option<f64>,
    encoded_total: Option<f64>,
    error: Option<String>,
    body: Option<(String, bool)>,
}

pub(crate) struct Har {
    limits: Limits,
    bodies: bool,
    entries: Vec<Entry>,
    /// Request id → the entry it is building now.
    current: HashMap<String, usize>,
    /// Request id → an entry whose body was asked for.
    awaiting: HashMap<String, usize>,
    /// Raw headers (`…ExtraInfo`) that came before their request.
    early: HashMap<String, (Option<Value>, Option<Value>)>,
    dropped: u64,
    body_bytes: usize,
    /// Bytes of URLs and headers kept (`MAX_KEPT_BYTES`).
    kept_bytes: usize,
}

impl Har {
    pub(crate) fn new(limits: Limits, bodies: bool) -> Har {
        Har {
            limits,
            bodies,
            entries: Vec::new(),
            current: HashMap::new(),
            awaiting: HashMap::new(),
            early: HashMap::new(),
            dropped: 0,
            body_bytes: 0,
            kept_bytes: 0,
        }
    }

    /// The entry request `id` builds, if `session` is the one that reports it.
    fn entry(&mut self, id: &str, session: &str) -> Option<&mut Entry> {
        let index = *self.current.get(id)?;
        self.entries.get_mut(index).filter(|e| e.session == session)
    }

    /// Takes a `Network.*` event; answers a request id whose body to ask for.
    pub(crate) fn take(&mut self, method: &str, params: &Value, session: &str, target_id: &str) -> Option<String> {
        let id = params["requestId"].as_str()?.to_owned();
        match method {
            "Network.requestWillBeSent" => self.request(&id, params, session, target_id),
            "Network.requestWillBeSentExtraInfo" => {
                let headers = self.keep_headers(&params["headers"])?;
                match self.entry(&id, session) {
                    Some(e) if e.response.is_none() => e.raw_request_headers = Some(headers),
                    Some(_) => {}
                    None => self.keep_early(id)?.0 = Some(headers),
                }
            }
            "Network.responseReceived" => {
                self.entry(&id, session)?;
                let response = self.keep_response(&params["response"])?;
                if let Some(e) = self.entry(&id, session) {
                    e.response = Some(response);
                    e.resource_type = cut(params["type"].as_str().unwrap_or(""), 64);
                }
            }
            "Network.responseReceivedExtraInfo" => {
                let headers = self.keep_headers(&params["headers"])?;
                match self.entry(&id, session) {
                    Some(e) => e.raw_response_headers = Some(headers),
                    None => self.keep_early(id)?.1 = Some(headers),
                }
            }
            "Network.dataReceived" => {
                if let Some(e) = self.entry(&id, session) {
                    e.data_length += params["dataLength"].as_u64().unwrap_or(0);
                }
            }
            "Network.loadingFinished" => {
                let bodies = self.bodies;
                let room = self.limits.bodies_bytes.saturating_sub(self.body_bytes);
                let cap = self.limits.body_bytes;
                let e = self.entry(&id, session)?;
                e.ended = params["timestamp"].as_f64();
                e.encoded_total = params["encodedDataLength"].as_f64();
                let wanted = bodies && e.data_length as usize <= cap.min(room);
                let index = self.current.remove(&id)?;
                if wanted {
                    self.awaiting.insert(id.clone(), index);
                    return Some(id);
                }
            }
            "Network.loadingFailed" => {
                let e = self.entry(&id, session)?;
                e.ended = params["timestamp"].as_f64();
                let mut error = params["errorText"].as_str().unwrap_or("failed").to_owned();
                if let Some(reason) = params["blockedReason"].as_str() {
                    error = format!("{error} ({reason})");
                }
                e.error = Some(cut(&error, 256));
                self.current.remove(&id);
            }
            _ => {}
        }
        None
    }

    /// Headers as kept (within `MAX_HEADERS_BYTES`, secrets redacted), if the session's
    /// budget has room for them.
    fn keep_headers(&mut self, headers: &Value) -> Option<Value> {
        let (kept, bytes) = kept_headers(headers);
        self.spend(bytes).then_some(kept)
    }

    /// What the HAR reads of a response, its headers kept as `keep_headers` keeps them.
    fn keep_response(&mut self, response: &Value) -> Option<Value> {
        let (headers, bytes) = kept_headers(&response["headers"]);
        if !self.spend(bytes) {
            return None;
        }
        let mut kept = Map::new();
        // Only what the source has, as it has it: the HAR tells a missing field apart.
        for (name, max) in [
            ("statusText", 256),
            ("protocol", 32),
            ("mimeType", 256),
            ("remoteIPAddress", 64),
        ] {
            if let Some(text) = response[name].as_str() {
                kept.insert(name.into(), json!(cut(text, max)));
            }
        }
        for name in ["status", "encodedDataLength"] {
            if response[name].is_number() {
                kept.insert(name.into(), response[name].clone());
            }
        }
        for name in ["fromDiskCache", "fromServiceWorker"] {
            if response[name].is_boolean() {
                kept.insert(name.into(), response[name].clone());
            }
        }
        if response["timing"].is_object() {
            kept.insert("timing".into(), kept_timing(&response["timing"]));
        }
        kept.insert("headers".into(), headers);
        Some(Value::Object(kept))
    }

    /// A place for raw headers that came before their request: none once no entry would
    /// be made for it, or while many are waiting.
    fn keep_early(&mut self, id: String) -> Option<&mut (Option<Value>, Option<Value>)> {
        if self.entries.len() >= self.limits.har_entries
            || (self.early.len() >= MAX_EARLY && !self.early.contains_key(&id))
        {
            return None;
        }
        Some(self.early.entry(id).or_default())
    }

    /// Takes `bytes` from the session's budget of kept URLs and headers, if it has them.
    fn spend(&mut self, bytes: usize) -> bool {
        if self.kept_bytes + bytes > MAX_KEPT_BYTES {
            return false;
        }
        self.kept_bytes += bytes;
        true
    }

    fn request(&mut self, id: &str, params: &Value, session: &str, target_id: &str) {
        if let Some(redirect) = params.get("redirectResponse") {
            // The same request id goes on at the redirect's target: this entry ends here.
            let redirect = match self.entry(id, session) {
                Some(_) => self.keep_response(redirect),
                None => None,
            };
            if let Some(e) = self.entry(id, session) {
                e.response = redirect;
                e.ended = params["timestamp"].as_f64();
                self.current.remove(id);
            }
        } else if self.current.contains_key(id) {
            // Announced to another target as well: the first one's.
            return;
        }
        let request = &params["request"];
        let mut url = request["url"].as_str().unwrap_or("").to_owned();
        if let Some(fragment) = request["urlFragment"].as_str() {
            url.push_str(fragment);
        }
        let url = cut(&url, MAX_URL);
        let (request_headers, header_bytes) = kept_headers(&request["headers"]);
        if self.entries.len() >= self.limits.har_entries || !self.spend(url.len() + header_bytes) {
            self.dropped += 1;
            self.early.remove(id);
            return;
        }
        let post_size = request["postDataEntries"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p["bytes"].as_str())
                    .map(|b| b.len() * 3 / 4)
                    .sum()
            })
            .or_else(|| request["postData"].as_str().map(str::len))
            .unwrap_or(0);
        let (raw_request, raw_response) = self.early.remove(id).unwrap_or_default();
        let post_data = request["postData"]
            .as_str()
            .filter(|p| self.bodies && p.len() <= self.limits.body_bytes)
            .map(str::to_owned);
        self.entries.push(Entry {
            session: session.to_owned(),
            target_id: target_id.to_owned(),
            resource_type: params["type"].as_str().unwrap_or("").to_owned(),
            wall_ms: params["wallTime"].as_f64().unwrap_or(0.0) * 1000.0,
            started: params["timestamp"].as_f64().unwrap_or(0.0),
            method: cut(request["method"].as_str().unwrap_or("GET"), 32),
            url,
            request_headers,
            raw_request_headers: raw_request,
            post_data,
            post_size,
            raw_response_headers: raw_response,
            ..Entry::default()
        });
        self.current.insert(id.to_owned(), self.entries.len() - 1);
    }

    /// The reply to `Network.getResponseBody` of request `id`.
    pub(crate) fn body(&mut self, _session: &str, id: &str, result: &Value) {
        let Some(index) = self.awaiting.remove(id) else { return };
        let Some(text) = result["body"].as_str() else { return };
        if text.len() > self.limits.body_bytes || self.body_bytes + text.len() > self.limits.bodies_bytes {
            return;
        }
        self.body_bytes += text.len();
        if let Some(e) = self.entries.get_mut(index) {
            e.body = Some((text.to_owned(), result["base64Encoded"].as_bool().unwrap_or(false)));
        }
    }

    pub(crate) fn document(&self) -> Value {
        json!({
            "log": {
                "version": "1.2",
                "creator": { "name": "cdpgate", "version": env!("CARGO_PKG_VERSION") },
                "pages": [],
                "entries": self.entries.iter().map(render).collect::<Vec<_>>(),
                "_dropped": self.dropped,
            }
        })
    }
}

/// A headers object as kept, and its bytes: secrets redacted, each value (several of one
/// name joined by newlines) within `MAX_HEADER` a line, names within 256 bytes, and none
/// past `MAX_HEADERS_BYTES` in all.
fn kept_headers(headers: &Value) -> (Value, usize) {
    let Some(map) = headers.as_object() else {
        return (Value::Object(Map::new()), 0);
    };
    let mut kept = Map::new();
    let mut bytes = 0;
    for (name, value) in map {
        let name = cut(name, 256);
        let secret = SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s));
        let lines = value.as_str().unwrap_or("").split('\n');
        let lines: Vec<String> = match secret {
            true => lines.map(|_| REDACTED.to_owned()).collect(), // one per value, as sent
            false => lines.map(|l| cut(l, MAX_HEADER)).collect(),
        };
        let value = lines.join("\n");
        if bytes + name.len() + value.len() > MAX_HEADERS_BYTES {
            break;
        }
        bytes += name.len() + value.len();
        kept.insert(name, Value::String(value));
    }
    (Value::Object(kept), bytes)
}

/// CDP's `ResourceTiming`: its numbers only.
fn kept_timing(timing: &Value) -> Value {
    let numbers = timing
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.is_number())
        .take(64)
        .map(|(k, v)| (cut(k, 64), v.clone()));
    Value::Object(numbers.collect())
}

/// CDP's headers (an object; several values of one name joined by newlines) as HAR's
/// list, secrets redacted.
fn headers(headers: &Value) -> Vec<Value> {
    let Some(map) = headers.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let secret = SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s));
        let value = value.as_str().unwrap_or("");
        for one in value.split('\n') {
            let value = if secret {
                REDACTED.to_owned()
            } else {
                cut(one, MAX_HEADER)
            };
            out.push(json!({ "name": name, "value": value }));
        }
    }
    out
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn query(url: &str) -> Vec<Value> {
    url::Url::parse(url)
        .map(|u| u.query_pairs().map(|(k, v)| json!({ "name": k, "value": v })).collect())
        .unwrap_or_default()
}

/// HAR's timings from CDP's (ms after `requestTime`); -1 where a phase did not happen.
fn timings(e: &Entry) -> (f64, Value) {
    let span = |from: f64, to: f64| {
        if from >= 0.0 && to >= 0.0 {
            (to - from).max(0.0)
        } else {
            -1.0
        }
    };
    let total_ms = e.ended.map_or(0.0, |end| ((end - e.started) * 1000.0).max(0.0));
    let timing = e.response.as_ref().map(|r| &r["timing"]).filter(|t| t.is_object());
    let Some(t) = timing else {
        let timings =
            json!({ "blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0, "wait": total_ms, "receive": 0 });
        return (total_ms, timings);
    };
    let at = |name: &str| t[name].as_f64().unwrap_or(-1.0);
    let request_time = t["requestTime"].as_f64().unwrap_or(e.started);
    let first = [at("dnsStart"), at("connectStart"), at("sendStart")]
        .into_iter()
        .find(|v| *v >= 0.0)
        .unwrap_or(0.0);
    let queued = ((request_time - e.started) * 1000.0).max(0.0);
    let blocked = queued + first;
    let dns = span(at("dnsStart"), at("dnsEnd"));
    let connect = span(at("connectStart"), at("connectEnd"));
    let ssl = span(at("sslStart"), at("sslEnd"));
    let send = span(at("sendStart"), at("sendEnd")).max(0.0);
    let wait = span(at("sendEnd"), at("receiveHeadersEnd")).max(0.0);
    let receive = e.ended.map_or(0.0, |end| {
        ((end - request_time) * 1000.0 - at("receiveHeadersEnd")).max(0.0)
    });
    let time = [blocked, dns, connect, send, wait, receive]
        .into_iter()
        .filter(|v| *v > 0.0)
        .sum::<f64>();
    let timings = json!({ "blocked": blocked, "dns": dns, "connect": connect, "ssl": ssl, "send": send, "wait": wait, "receive": receive });
    (time, timings)
}

fn render(e: &Entry) -> Value {
    let request_headers = e.raw_request_headers.as_ref().unwrap_or(&e.request_headers);
    let mut request = json!({
        "method": e.method,
        "url": e.url,
        "httpVersion": e.response.as_ref().and_then(|r| r["protocol"].as_str()).unwrap_or(""),
        "cookies": [],
        "headers": headers(request_headers),
        "queryString": query(&e.url),
        "headersSize": -1,
        "bodySize": e.post_size,
    });
    if let Some(text) = &e.post_data {
        let mime = header(request_headers, "content-type").unwrap_or("");
        request["postData"] = json!({ "mimeType": mime, "text": text });
    }
    let response = match &e.response {
        Some(r) => {
            let raw = e.raw_response_headers.as_ref().unwrap_or(&r["headers"]);
            let headers_bytes = r["encodedDataLength"].as_f64().unwrap_or(0.0);
            let mut content = json!({
                "size": e.data_length,
                "mimeType": r["mimeType"].as_str().unwrap_or("x-unknown"),
            });
            if let Some((text, base64)) = &e.body {
                content["text"] = json!(text);
                if *base64 {
                    content["encoding"] = json!("base64");
                }
            }
            let mut response = json!({
                "status": r["status"].as_u64().unwrap_or(0),
                "statusText": r["statusText"].as_str().unwrap_or(""),
                "httpVersion": r["protocol"].as_str().unwrap_or(""),
                "cookies": [],
                "headers": headers(raw),
                "content": content,
                "redirectURL": header(raw, "location").unwrap_or(""),
                "headersSize": -1,
                "bodySize": e.encoded_total.map_or(-1.0, |t| (t - headers_bytes).max(0.0)),
            });
            if r["fromDiskCache"] == true || r["fromServiceWorker"] == true {
                response["_fromCache"] = json!(true);
            }
            response
        }
        None => json!({
            "status": 0,
            "statusText": "",
            "httpVersion": "",
            "cookies": [],
            "headers": [],
            "content": { "size": 0, "mimeType": "x-unknown" },
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }),
    };
    let (time, timings) = timings(e);
    let mut entry = Map::new();
    entry.insert("startedDateTime".into(), json!(wall_time_ms(e.wall_ms)));
    entry.insert("time".into(), json!(time));
    entry.insert("request".into(), request);
    entry.insert("response".into(), response);
    entry.insert("cache".into(), json!({}));
    entry.insert("timings".into(), timings);
    if let Some(ip) = e.response.as_ref().and_then(|r| r["remoteIPAddress"].as_str()) {
        entry.insert("serverIPAddress".into(), json!(ip));
    }
    entry.insert("_resourceType".into(), json!(e.resource_type));
    entry.insert("_targetId".into(), json!(e.target_id));
    if let Some(error) = &e.error {
        entry.insert("_error".into(), json!(error));
    } else if e.ended.is_none() {
        entry.insert("_pending".into(), json!(true));
    }
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            log_entries: 10,
            log_bytes: 1 << 20,
            har_entries: 2,
            body_bytes: 10,
            bodies_bytes: 15,
        }
    }

    fn sent(har: &mut Har, id: &str, url: &str) {
        let params = json!({"requestId": id, "request": {"url": url, "method": "GET", "headers": {"Authorization": "Bearer s3cret"}},
                            "timestamp": 1.0, "wallTime": 1.7e9, "type": "Document"});
        har.take("Network.requestWillBeSent", &params, "S", "T");
    }

    #[test]
    fn what_a_hostile_server_sends_is_kept_within_bounds() {
        let mut har = Har::new(limits(), false);
        // Raw headers for requests never announced: a bounded few wait.
        for i in 0..10_000 {
            let extra = json!({"requestId": format!("x{i}"), "headers": {"a": "b"}});
            har.take("Network.responseReceivedExtraInfo", &extra, "S", "T");
        }
        assert_eq!(har.early.len(), MAX_EARLY);
        // Past the entries' cap, none waits at all.
        sent(&mut har, "1", "http://a/1");
        sent(&mut har, "2", "http://a/2");
        har.early.clear();
        let extra = json!({"requestId": "y", "headers": {"a": "b"}});
        har.take("Network.requestWillBeSentExtraInfo", &extra, "S", "T");
        assert!(har.early.is_empty());

        // A megabyte of headers on one response: kept within the bounds, the secret redacted.
        let mut many = Map::new();
        for i in 0..100 {
            many.insert(format!("x-h{i}"), json!("v".repeat(20_000)));
        }
        many.insert("Set-Cookie".into(), json!("sid=s3cret"));
        let response = json!({"requestId": "1", "type": "Document", "response": {"status": 200, "headers": many,
            "securityDetails": {"sanList": vec!["x".repeat(1000); 1000]}}});
        har.take("Network.responseReceived", &response, "S", "T");
        let kept = har.entries[0].response.as_ref().unwrap();
        let bytes: usize = kept["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| k.len() + v.as_str().unwrap().len())
            .sum();
        assert!(bytes <= MAX_HEADERS_BYTES, "{bytes}");
        assert!(kept.get("securityDetails").is_none());
        assert!(!kept.to_string().contains("s3cret"));

        // The session's budget: past it, requests are counted, not kept.
        let mut wide = Har::new(
            Limits {
                har_entries: 100_000,
                ..limits()
            },
            false,
        );
        let headers: Map<String, Value> = (0..8).map(|i| (format!("h{i}"), json!("z".repeat(8000)))).collect();
        for i in 0..2_000 {
            let params = json!({"requestId": format!("r{i}"), "request": {"url": "http://a/", "method": "GET", "headers": headers}});
            wide.take("Network.requestWillBeSent", &params, "S", "T");
        }
        assert!(wide.kept_bytes <= MAX_KEPT_BYTES);
        assert!(wide.entries.len() < 2_000 && wide.dropped as usize == 2_000 - wide.entries.len());
    }

    #[test]
    fn secrets_are_redacted_and_the_cap_counts() {
        let mut har = Har::new(limits(), true);
        sent(&mut har, "1", "http://a/x?q=1");
        let extra = json!({"requestId": "1", "headers": {"Cookie": "sid=s3cret", "Set-Cookie": "a=s3cret\nb=s3cret"}});
        har.take("Network.responseReceivedExtraInfo", &extra, "S", "T");
        let response = json!({"requestId": "1", "type": "Document", "response": {"status": 200, "statusText": "OK", "headers": {}, "mimeType": "text/html", "encodedDataLength": 100.0}});
        har.take("Network.responseReceived", &response, "S", "T");
        har.take(
            "Network.dataReceived",
            &json!({"requestId": "1", "dataLength": 8}),
            "S",
            "T",
        );
        // Another target announcing the same request adds nothing.
        har.take(
            "Network.dataReceived",
            &json!({"requestId": "1", "dataLength": 8}),
            "S2",
            "T2",
        );
        let asked = har.take(
            "Network.loadingFinished",
            &json!({"requestId": "1", "timestamp": 1.5, "encodedDataLength": 120.0}),
            "S",
            "T",
        );
        assert_eq!(asked.as_deref(), Some("1"));
        har.body("S", "1", &json!({"body": "12345678", "base64Encoded": false}));
        sent(&mut har, "2", "http://a/y");
        sent(&mut har, "3", "http://a/z");
        let doc = har.document();
        let text = doc.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        let entries = doc["log"]["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(doc["log"]["_dropped"], 1);
        let first = &entries[0];
        assert_eq!(first["response"]["status"], 200);
        assert_eq!(first["response"]["content"]["size"], 8);
        assert_eq!(first["response"]["content"]["text"], "12345678");
        assert_eq!(first["response"]["bodySize"], 20.0);
        assert_eq!(first["request"]["queryString"][0]["name"], "q");
        assert_eq!(first["response"]["headers"].as_array().unwrap().len(), 3);
        assert_eq!(entries[1]["_pending"], true);
    }

    #[test]
    fn a_redirect_ends_one_entry_and_starts_the_next() {
        let mut har = Har::new(limits(), false);
        sent(&mut har, "1", "http://a/old");
        let params = json!({"requestId": "1", "request": {"url": "http://a/new", "method": "GET", "headers": {}},
                            "timestamp": 1.2, "wallTime": 1.7e9,
                            "redirectResponse": {"status": 302, "statusText": "Found", "headers": {"Location": "/new"}, "mimeType": ""}});
        har.take("Network.requestWillBeSent", &params, "S", "T");
        let failed = json!({"requestId": "1", "timestamp": 1.3, "errorText": "net::ERR_FAILED"});
        har.take("Network.loadingFailed", &failed, "S", "T");
        let doc = har.document();
        let entries = doc["log"]["entries"].as_array().unwrap();
        assert_eq!(entries[0]["response"]["status"], 302);
        assert_eq!(entries[0]["response"]["redirectURL"], "/new");
        assert_eq!(entries[1]["request"]["url"], "http://a/new");
        assert_eq!(entries[1]["_error"], "net::ERR_FAILED");
        assert_eq!(entries[1]["response"]["status"], 0);
    }
}
