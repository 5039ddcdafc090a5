//! What a one-call render asks for, checked field by field: the page (`url` or `html`),
//! what to wait for and how long, what to send with it, and what to produce. The session
//! options (`screen_config`, `proxy`, `user_agent`, …) are a create's and are checked by
//! the create's own parser; this module only knows their names.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::error::{RenderError, bad};
use crate::config::Config;

/// Fields a create takes that a render passes on to the session it creates. A create
/// option added later (`fingerprint`, `device`, `block`) is accepted by adding its name.
pub const CREATE_FIELDS: &[&str] = &[
    "ttl",
    "screen_config",
    "metadata",
    "profile_id",
    "persist_changes",
    "proxy",
    "user_agent",
    "locale",
    "timezone",
    "idle_timeout",
    "isolation",
    "record",
    "log_cdp",
];

/// Fields every render takes.
const COMMON_FIELDS: &[&str] = &[
    "url",
    "html",
    "wait_until",
    "timeout_ms",
    "cookies",
    "headers",
    "allow_error_status",
    "session_id",
    "keep_session",
];

/// Longest `url`, in bytes.
const MAX_URL_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 8 * 1024;
const MAX_COOKIES: usize = 100;
const MAX_COOKIE_BYTES: usize = 4 * 1024;
/// Longest CSS selector, in characters.
const MAX_SELECTOR_CHARS: usize = 1_000;
/// Most selectors a scrape names.
const MAX_SCRAPE_SELECTORS: usize = 50;
const MAX_SCRAPE_NAME_CHARS: usize = 100;
/// Largest screenshot area: a clip's width and height, and a full page's height (taller
/// pages are cut here).
pub(crate) const MAX_SHOT_WIDTH: f64 = 7_680.0;
pub(crate) const MAX_SHOT_HEIGHT: f64 = 16_384.0;
/// Farthest a clip may start from the document's origin, in CSS pixels.
const MAX_CLIP_OFFSET: f64 = 1_000_000.0;

/// The five renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Screenshot,
    Pdf,
    Content,
    Markdown,
    Scrape,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Screenshot => "screenshot",
            Kind::Pdf => "pdf",
            Kind::Content => "content",
            Kind::Markdown => "markdown",
            Kind::Scrape => "scrape",
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Screenshot => &["type", "quality", "full_page", "clip", "selector"],
            Kind::Pdf => &[
                "format",
                "width",
                "height",
                "margin",
                "landscape",
                "print_background",
                "scale",
            ],
            Kind::Content | Kind::Markdown => &[],
            Kind::Scrape => &["selectors", "include_html"],
        }
    }
}

/// Where the page comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Url(String),
    Html(String),
}

/// What the page must reach before it is rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitUntil {
    Load,
    DomContentLoaded,
    /// Chrome's `networkIdle`: no request for 500 ms after the load.
    NetworkIdle,
    /// An element matching the selector exists (after `DOMContentLoaded`).
    Selector(String),
    /// This long after the load.
    Delay(Duration),
}

/// How the page is opened.
#[derive(Debug, Clone)]
pub struct Load {
    pub source: Source,
    pub wait: WaitUntil,
    pub timeout: Duration,
    /// `Network.setExtraHTTPHeaders`' object.
    pub headers: Map<String, Value>,
    /// `Network.setCookies`' cookies, each with a `url` or `domain`.
    pub cookies: Vec<Value>,
    pub allow_error_status: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Png,
    Jpeg,
    Webp,
}

impl ImageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Png => "png",
            ImageType::Jpeg => "jpeg",
            ImageType::Webp => "webp",
        }
    }
}

/// A rectangle of the document, in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// What to produce.
#[derive(Debug, Clone)]
pub enum Output {
    Screenshot {
        image: ImageType,
        quality: Option<u8>,
        full_page: bool,
        clip: Option<Clip>,
        selector: Option<String>,
    },
    /// `Page.printToPDF`'s parameters.
    Pdf(Map<String, Value>),
    Content,
    Markdown,
    Scrape {
        selectors: Vec<(String, String)>,
        include_html: bool,
    },
}

/// A checked render request.
#[derive(Debug, Clone)]
pub struct RenderJob {
    pub load: Load,
    pub output: Output,
    /// Render in this session of the caller's instead of a fresh one.
    pub session_id: Option<String>,
    /// Leave the fresh session running and answer its id and `cdp_url`.
    pub keep_session: bool,
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn boolean(body: &Map<String, Value>, name: &str) -> Result<bool, RenderError> {
    match field(body, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{name} must be true or false"))),
    }
}

/// A number within `min..=max`, or the error naming `name`.
fn number(v: &Value, name: &str, min: f64, max: f64) -> Result<f64, RenderError> {
    v.as_f64()
        .filter(|n| n.is_finite() && (min..=max).contains(n))
        .ok_or_else(|| bad(format!("{name} must be a number from {min} to {max}")))
}

/// A whole number within `min..=max`.
fn whole(v: &Value, name: &str, min: u64, max: u64) -> Result<u64, RenderError> {
    v.as_f64()
        .filter(|n| n.fract() == 0.0 && (min as f64..=max as f64).contains(n))
        .map(|n| n as u64)
        .ok_or_else(|| bad(format!("{name} must be a whole number from {min} to {max}")))
}

fn selector(v: &Value, name: &str) -> Result<String, RenderError> {
    match v {
        Value::String(s) if !s.trim().is_empty() && s.chars().count() <= MAX_SELECTOR_CHARS => Ok(s.clone()),
        _ => Err(bad(format!(
            "{name} must be a CSS selector of 1 to {MAX_SELECTOR_CHARS} characters"
        ))),
    }
}

/// Checks `body` for a render of `kind`: every field known, each within its bounds.
pub fn parse(kind: Kind, body: &Map<String, Value>, config: &Config) -> Result<RenderJob, RenderError> {
    if let Some(name) = body.keys().find(|k| {
        let k = k.as_str();
        !COMMON_FIELDS.contains(&k) && !CREATE_FIELDS.contains(&k) && !kind.fields().contains(&k)
    }) {
        return Err(if name == "cdp_url" {
            bad("cdp_url cannot be rendered: a one-call render runs in a managed browser")
        } else {
            bad(format!("{name} is not a field of POST /public/{}", kind.as_str()))
        });
    }
    let source = match (field(body, "url"), field(body, "html")) {
        (Some(url), None) => Source::Url(parse_url(url)?),
        (None, Some(Value::String(html))) => {
            if html.len() > config.max_render_html_bytes {
                return Err(bad(format!(
                    "html is {} bytes: at most {} are accepted",
                    html.len(),
                    config.max_render_html_bytes
                )));
            }
            Source::Html(html.clone())
        }
        (None, Some(_)) => return Err(bad("html must be a string")),
        (Some(_), Some(_)) => return Err(bad("give url or html, not both")),
        (None, None) => return Err(bad("url or html is required")),
    };
    let timeout = match field(body, "timeout_ms") {
        Some(v) => Duration::from_millis(whole(v, "timeout_ms", 1, config.max_render_timeout_ms)?),
        None => config.render_timeout(),
    };
    let wait = match field(body, "wait_until") {
        None => WaitUntil::Load,
        Some(v) => parse_wait(v, config.max_render_timeout_ms)?,
    };
    let session_id = match field(body, "session_id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("session_id must be a string")),
    };
    let keep_session = boolean(body, "keep_session")?;
    if session_id.is_some() {
        if let Some(name) = CREATE_FIELDS.iter().find(|n| field(body, n).is_some()) {
            return Err(bad(format!(
                "{name} applies to the session a render creates; leave it out with session_id"
            )));
        }
        if keep_session {
            return Err(bad(
                "keep_session applies to the session a render creates; a given session_id is kept anyway",
            ));
        }
    }
    // A profile is read, never written, by a render.
    if field(body, "persist_changes") == Some(&Value::Bool(true)) {
        return Err(bad(
            "persist_changes cannot be true: a render reads its profile_id and never writes it",
        ));
    }
    let load = Load {
        cookies: parse_cookies(field(body, "cookies"), &source)?,
        headers: parse_headers(field(body, "headers"))?,
        allow_error_status: boolean(body, "allow_error_status")?,
        source,
        wait,
        timeout,
    };
    let output = match kind {
        Kind::Screenshot => parse_screenshot(body)?,
        Kind::Pdf => Output::Pdf(parse_pdf(body)?),
        Kind::Content => Output::Content,
        Kind::Markdown => Output::Markdown,
        Kind::Scrape => parse_scrape(body)?,
    };
    Ok(RenderJob {
        load,
        output,
        session_id,
        keep_session,
    })
}

fn parse_url(v: &Value) -> Result<String, RenderError> {
    let refuse = || bad("url must be an absolute http or https URL");
    let text = v.as_str().ok_or_else(refuse)?;
    if text.len() > MAX_URL_BYTES {
        return Err(bad(format!("url is over {MAX_URL_BYTES} bytes")));
    }
    // Read as Chrome reads it (WHATWG), so that no spelling passes here and loads otherwise.
    let url = url::Url::parse(text).map_err(|_| refuse())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(refuse());
    }
    Ok(url.to_string())
}

fn parse_wait(v: &Value, max_ms: u64) -> Result<WaitUntil, RenderError> {
    let refuse = || {
        bad(
            "wait_until must be \"load\", \"domcontentloaded\", \"networkidle\", {\"selector\": css} or {\"delay_ms\": n}",
        )
    };
    match v {
        Value::String(s) => match s.as_str() {
            "load" => Ok(WaitUntil::Load),
            "domcontentloaded" => Ok(WaitUntil::DomContentLoaded),
            "networkidle" => Ok(WaitUntil::NetworkIdle),
            _ => Err(refuse()),
        },
        Value::Object(o) if o.len() == 1 => {
            if let Some(css) = o.get("selector") {
                Ok(WaitUntil::Selector(selector(css, "wait_until.selector")?))
            } else if let Some(ms) = o.get("delay_ms") {
                Ok(WaitUntil::Delay(Duration::from_millis(whole(
                    ms,
                    "wait_until.delay_ms",
                    0,
                    max_ms,
                )?)))
            } else {
                Err(refuse())
            }
        }
        _ => Err(refuse()),
    }
}

fn parse_headers(v: Option<&Value>) -> Result<Map<String, Value>, RenderError> {
    let Some(v) = v else { return Ok(Map::new()) };
    let refuse = || {
        bad(format!(
            "headers must be an object of at most {MAX_HEADERS} names and string values"
        ))
    };
    let headers = v.as_object().filter(|h| h.len() <= MAX_HEADERS).ok_or_else(refuse)?;
    for (name, value) in headers {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || name.len() > 256 || !name.chars().all(token) {
            return Err(bad(format!("headers: {name:?} is not a header name")));
        }
        let Some(text) = value.as_str() else {
            return Err(bad(format!("headers.{name} must be a string")));
        };
        if text.len() > MAX_HEADER_BYTES || text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad(format!(
                "headers.{name} must be at most {MAX_HEADER_BYTES} bytes without control characters"
            )));
        }
    }
    Ok(headers.clone())
}

fn parse_cookies(v: Option<&Value>, source: &Source) -> Result<Vec<Value>, RenderError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let list = v
        .as_array()
        .filter(|l| l.len() <= MAX_COOKIES)
        .ok_or_else(|| bad(format!("cookies must be an array of at most {MAX_COOKIES} cookies")))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, cookie) in list.iter().enumerate() {
        let at = |what: &str| bad(format!("cookies[{i}]: {what}"));
        let c = cookie
            .as_object()
            .ok_or_else(|| at("must be an object with name and value"))?;
        let mut param = Map::new();
        for (key, value) in c {
            let cdp = match key.as_str() {
                "name" | "value" | "domain" | "path" | "url" => {
                    let s = value.as_str().ok_or_else(|| at(&format!("{key} must be a string")))?;
                    if s.len() > MAX_COOKIE_BYTES || s.chars().any(char::is_control) {
                        return Err(at(&format!(
                            "{key} must be at most {MAX_COOKIE_BYTES} bytes without control characters"
                        )));
                    }
                    if key == "url" {
                        parse_url(value).map_err(|_| at("url must be an http or https URL"))?;
                    }
                    key.as_str()
                }
                "secure" | "http_only" | "httpOnly" => {
                    if !value.is_boolean() {
                        return Err(at(&format!("{key} must be true or false")));
                    }
                    if key == "secure" { "secure" } else { "httpOnly" }
                }
                "same_site" | "sameSite" => {
                    if !matches!(value.as_str(), Some("Strict" | "Lax" | "None")) {
                        return Err(at("same_site must be \"Strict\", \"Lax\" or \"None\""));
                    }
                    "sameSite"
                }
                "expires" => {
                    number(value, &format!("cookies[{i}].expires"), -1.0, 1.0e11)?;
                    "expires"
                }
                other => return Err(at(&format!("{other} is not a cookie field"))),
            };
            param.insert(cdp.to_owned(), value.clone());
        }
        if !matches!(param.get("name"), Some(Value::String(n)) if !n.is_empty()) || !param.contains_key("value") {
            return Err(at("name and value are required"));
        }
        if !param.contains_key("url") && !param.contains_key("domain") {
            match source {
                Source::Url(url) => {
                    param.insert("url".into(), json!(url));
                }
                Source::Html(_) => return Err(at("with html, a cookie needs a domain or a url")),
            }
        }
        out.push(Value::Object(param));
    }
    Ok(out)
}

fn parse_screenshot(body: &Map<String, Value>) -> Result<Output, RenderError> {
    let image = match field(body, "type") {
        None => ImageType::Png,
        Some(v) => match v.as_str() {
            Some("png") => ImageType::Png,
            Some("jpeg" | "jpg") => ImageType::Jpeg,
            Some("webp") => ImageType::Webp,
            _ => return Err(bad("type must be \"png\", \"jpeg\" or \"webp\"")),
        },
    };
    let quality = match field(body, "quality") {
        None => None,
        Some(_) if image == ImageType::Png => return Err(bad("quality applies to jpeg and webp, not png")),
        Some(v) => Some(whole(v, "quality", 0, 100)? as u8),
    };
    let full_page = boolean(body, "full_page")?;
    let clip = match field(body, "clip") {
        None => None,
        Some(Value::Object(c)) => {
            if let Some(k) = c.keys().find(|k| !["x", "y", "width", "height"].contains(&k.as_str())) {
                return Err(bad(format!("clip.{k} is not a clip field (x, y, width, height)")));
            }
            let get = |k: &str, min: f64, max: f64| {
                c.get(k)
                    .ok_or_else(|| bad(format!("clip.{k} is required")))
                    .and_then(|v| number(v, &format!("clip.{k}"), min, max))
            };
            Some(Clip {
                x: get("x", 0.0, MAX_CLIP_OFFSET)?,
                y: get("y", 0.0, MAX_CLIP_OFFSET)?,
                width: get("width", 1.0, MAX_SHOT_WIDTH)?,
                height: get("height", 1.0, MAX_SHOT_HEIGHT)?,
            })
        }
        Some(_) => return Err(bad("clip must be an object {x, y, width, height}")),
    };
    let selector = field(body, "selector").map(|v| selector(v, "selector")).transpose()?;
    if [full_page, clip.is_some(), selector.is_some()]
        .iter()
        .filter(|b| **b)
        .count()
        > 1
    {
        return Err(bad("full_page, clip and selector are exclusive: give one"));
    }
    Ok(Output::Screenshot {
        image,
        quality,
        full_page,
        clip,
        selector,
    })
}

/// Paper sizes in inches (width, height).
const FORMATS: &[(&str, f64, f64)] = &[
    ("letter", 8.5, 11.0),
    ("legal", 8.5, 14.0),
    ("tabloid", 11.0, 17.0),
    ("ledger", 17.0, 11.0),
    ("a0", 33.1102, 46.811),
    ("a1", 23.3858, 33.1102),
    ("a2", 16.5354, 23.3858),
    ("a3", 11.6929, 16.5354),
    ("a4", 8.2677, 11.6929),
    ("a5", 5.8268, 8.2677),
    ("a6", 4.1339, 5.8268),
];

/// A length as inches: a number of CSS pixels, or a string with `px`, `in`, `cm` or `mm`.
fn inches(v: &Value, name: &str, min: f64, max: f64) -> Result<f64, RenderError> {
    let refuse = || {
        bad(format!(
            "{name} must be a length from {min} to {max} inches: a number of CSS pixels or a string such as \"8.5in\", \"210mm\", \"21cm\", \"816px\""
        ))
    };
    let value = match v {
        Value::Number(n) => n.as_f64().map(|px| px / 96.0),
        Value::String(s) => {
            let s = s.trim();
            let split = s.len().saturating_sub(2);
            let (n, unit) = (s.get(..split).unwrap_or(""), s.get(split..).unwrap_or(""));
            let per_inch = match unit {
                "px" => 96.0,
                "in" => 1.0,
                "cm" => 2.54,
                "mm" => 25.4,
                _ => return Err(refuse()),
            };
            n.trim().parse::<f64>().ok().map(|n| n / per_inch)
        }
        _ => None,
    };
    value
        .filter(|i| i.is_finite() && (min..=max).contains(i))
        .ok_or_else(refuse)
}

fn parse_pdf(body: &Map<String, Value>) -> Result<Map<String, Value>, RenderError> {
    let (mut width, mut height) = (8.5, 11.0);
    if let Some(f) = field(body, "format") {
        if field(body, "width").is_some() || field(body, "height").is_some() {
            return Err(bad("format and width/height are exclusive"));
        }
        let name = f.as_str().map(str::to_ascii_lowercase).unwrap_or_default();
        let (_, w, h) = FORMATS
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| bad("format must be one of Letter, Legal, Tabloid, Ledger, A0 to A6"))?;
        (width, height) = (*w, *h);
    }
    if let Some(w) = field(body, "width") {
        width = inches(w, "width", 1.0, 200.0)?;
    }
    if let Some(h) = field(body, "height") {
        height = inches(h, "height", 1.0, 200.0)?;
    }
    let mut params = Map::new();
    params.insert("paperWidth".into(), json!(width));
    params.insert("paperHeight".into(), json!(height));
    match field(body, "margin") {
        None => {}
        Some(Value::Object(m)) => {
            for (side, value) in m {
                let key = match side.as_str() {
                    "top" => "marginTop",
                    "right" => "marginRight",
                    "bottom" => "marginBottom",
                    "left" => "marginLeft",
                    _ => return Err(bad(format!("margin.{side} is not a side (top, right, bottom, left)"))),
                };
                params.insert(key.into(), json!(inches(value, &format!("margin.{side}"), 0.0, 50.0)?));
            }
        }
        Some(_) => return Err(bad("margin must be an object {top, right, bottom, left}")),
    }
    params.insert("landscape".into(), json!(boolean(body, "landscape")?));
    params.insert("printBackground".into(), json!(boolean(body, "print_background")?));
    if let Some(s) = field(body, "scale") {
        params.insert("scale".into(), json!(number(s, "scale", 0.1, 2.0)?));
    }
    Ok(params)
}

fn parse_scrape(body: &Map<String, Value>) -> Result<Output, RenderError> {
    let refuse = || {
        bad(format!(
            "selectors must be an object of 1 to {MAX_SCRAPE_SELECTORS} names, each a CSS selector"
        ))
    };
    let map = field(body, "selectors")
        .and_then(Value::as_object)
        .filter(|m| (1..=MAX_SCRAPE_SELECTORS).contains(&m.len()))
        .ok_or_else(refuse)?;
    let mut selectors = Vec::with_capacity(map.len());
    for (name, css) in map {
        if name.is_empty() || name.chars().count() > MAX_SCRAPE_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(bad(format!(
                "selectors: names are 1 to {MAX_SCRAPE_NAME_CHARS} characters without control characters"
            )));
        }
        selectors.push((name.clone(), selector(css, &format!("selectors.{name}"))?));
    }
    Ok(Output::Scrape {
        selectors,
        include_html: boolean(body, "include_html")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: Kind, v: Value) -> Result<RenderJob, String> {
        parse(kind, v.as_object().unwrap(), &Config::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn sources_are_one_http_url_or_bounded_html() {
        assert!(check(Kind::Content, json!({"url": "https://example.com/a"})).is_ok());
        assert!(check(Kind::Content, json!({"html": "<p>hi</p>"})).is_ok());
        for url in [
            "file:///etc/passwd",
            " FILE:///etc/passwd",
            "chrome://settings",
            "javascript:alert(1)",
            "/relative",
            "data:text/html,x",
        ] {
            let e = check(Kind::Content, json!({ "url": url })).unwrap_err();
            assert!(e.contains("http or https"), "{url}: {e}");
        }
        assert!(check(Kind::Content, json!({})).unwrap_err().contains("required"));
        assert!(check(Kind::Content, json!({"url": "https://a.b", "html": "x"})).is_err());
        let big = "x".repeat(Config::default().max_render_html_bytes + 1);
        assert!(
            check(Kind::Content, json!({ "html": big }))
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn unknown_fields_and_out_of_bounds_values_are_refused() {
        let url = "https://example.com";
        let refused = [
            json!({"url": url, "nope": 1}),
            json!({"url": url, "cdp_url": "ws://x"}),
            json!({"url": url, "timeout_ms": 0}),
            json!({"url": url, "timeout_ms": 1.5}),
            json!({"url": url, "timeout_ms": 10_000_000}),
            json!({"url": url, "wait_until": "never"}),
            json!({"url": url, "wait_until": {"delay_ms": -1}}),
            json!({"url": url, "clip": {"x": 0, "y": 0, "width": -5, "height": 10}}),
            json!({"url": url, "clip": {"x": 0, "y": 0, "width": 100000, "height": 10}}),
            json!({"url": url, "clip": {"x": 0, "y": 0, "width": 10, "height": 10}, "full_page": true}),
            json!({"url": url, "type": "gif"}),
            json!({"url": url, "type": "png", "quality": 50}),
            json!({"url": url, "headers": {"bad name": "x"}}),
            json!({"url": url, "headers": {"x": "a\r\nb"}}),
            json!({"url": url, "cookies": [{"name": "a"}]}),
            json!({"url": url, "session_id": "s", "proxy": {"server": "http://p:1"}}),
            json!({"url": url, "persist_changes": true}),
            json!({"url": url, "pdf": true}),
        ];
        for body in refused {
            assert!(check(Kind::Screenshot, body.clone()).is_err(), "{body}");
        }
    }

    #[test]
    fn pdf_sizes_read_units_and_formats() {
        let job = check(
            Kind::Pdf,
            json!({"url": "https://a.b", "format": "a4", "margin": {"top": "1cm", "left": 96}, "landscape": true}),
        )
        .unwrap();
        let Output::Pdf(p) = job.output else { panic!() };
        assert_eq!(p["paperWidth"], json!(8.2677));
        assert!((p["marginTop"].as_f64().unwrap() - 1.0 / 2.54).abs() < 1e-9);
        assert_eq!(p["marginLeft"], json!(1.0));
        assert_eq!(p["landscape"], json!(true));
        assert!(check(Kind::Pdf, json!({"url": "https://a.b", "width": "-3in"})).is_err());
        assert!(check(Kind::Pdf, json!({"url": "https://a.b", "width": "3furlongs"})).is_err());
        assert!(check(Kind::Pdf, json!({"url": "https://a.b", "format": "A4", "width": "3in"})).is_err());
    }

    #[test]
    fn cookies_default_to_the_url_and_scrape_selectors_are_bounded() {
        let job = check(
            Kind::Scrape,
            json!({"url": "https://a.b/x", "cookies": [{"name": "n", "value": "v", "http_only": true}], "selectors": {"t": "h1"}}),
        )
        .unwrap();
        assert_eq!(job.load.cookies[0]["url"], "https://a.b/x");
        assert_eq!(job.load.cookies[0]["httpOnly"], true);
        assert!(check(Kind::Scrape, json!({"url": "https://a.b", "selectors": {}})).is_err());
        assert!(
            check(
                Kind::Scrape,
                json!({"html": "x", "selectors": {"a": "b"}, "cookies": [{"name": "n", "value": "v"}]})
            )
            .is_err()
        );
    }
}
