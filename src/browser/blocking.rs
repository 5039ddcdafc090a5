//! A session's resource blocking: `block` (Chrome's resource types) and `block_urls`
//! (URL patterns). Enforced in Chrome by the identity keeper's own connection: `Fetch.enable`
//! with patterns for the blocked types and URLs only (so nothing else is paused), on the
//! browser target for a process session (the whole browser is the session's), on each
//! page, frame and worker target of a context before it runs; `Fetch.failRequest` with
//! `BlockedByClient` for what is paused. A client's own interception (Puppeteer's
//! `setRequestInterception`, Playwright's `route`) runs first, on its own connection: what
//! it lets through still reaches the keeper, so it cannot un-block a request; it may answer
//! one itself (`fulfillRequest`), which sends nothing to the network.
//!
//! Not the gateway: it sees `CONNECT host:port` for HTTPS, neither the path nor the type.
//! WebSockets are not covered: Chrome's `Fetch` domain does not intercept their handshakes.

use serde_json::{Value, json};

/// Chrome's resource types as the API names them (lower case), and as CDP does. The
/// document itself is not among them: blocking it would leave no page.
const RESOURCE_TYPES: &[(&str, &str)] = &[
    ("image", "Image"),
    ("media", "Media"),
    ("font", "Font"),
    ("stylesheet", "Stylesheet"),
    ("script", "Script"),
    ("xhr", "XHR"),
    ("fetch", "Fetch"),
    ("texttrack", "TextTrack"),
    ("eventsource", "EventSource"),
    ("prefetch", "Prefetch"),
    ("manifest", "Manifest"),
    ("ping", "Ping"),
    ("signedexchange", "SignedExchange"),
    ("cspviolationreport", "CSPViolationReport"),
    ("preflight", "Preflight"),
    ("other", "Other"),
];

/// Most `block_urls` patterns, and the longest one.
pub(crate) const MAX_URL_PATTERNS: usize = 64;
pub(crate) const MAX_URL_PATTERN_LEN: usize = 512;

/// What a session blocks, as validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocking {
    /// Resource types, lower case, each once.
    pub types: Vec<String>,
    /// URL patterns: `*` any characters, `?` one, `\` escapes (Chrome's `Fetch` patterns).
    pub urls: Vec<String>,
}

impl Blocking {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.urls.is_empty()
    }

    /// The API's names of every resource type that can be blocked.
    pub fn type_names() -> impl Iterator<Item = &'static str> {
        RESOURCE_TYPES.iter().map(|(name, _)| *name)
    }

    /// Checks `block`: known types, each once. The error names the bad entry.
    pub fn parse_types(names: &[String]) -> Result<Vec<String>, String> {
        let mut types: Vec<String> = Vec::new();
        for name in names {
            if !RESOURCE_TYPES.iter().any(|(n, _)| n == name) {
                let shown: String = name.chars().take(40).collect();
                return Err(format!(
                    "block: {shown:?} is not a resource type ({})",
                    Self::type_names().collect::<Vec<_>>().join(", ")
                ));
            }
            if !types.contains(name) {
                types.push(name.clone());
            }
        }
        Ok(types)
    }

    /// Checks `block_urls`: at most [`MAX_URL_PATTERNS`], each 1 to
    /// [`MAX_URL_PATTERN_LEN`] printable ASCII characters without spaces, not a lone `*`
    /// (that would block the pages themselves).
    pub fn parse_urls(patterns: &[String]) -> Result<Vec<String>, String> {
        if patterns.len() > MAX_URL_PATTERNS {
            return Err(format!("block_urls holds at most {MAX_URL_PATTERNS} patterns"));
        }
        for p in patterns {
            let printable = p.bytes().all(|b| (0x21..0x7f).contains(&b));
            if !(1..=MAX_URL_PATTERN_LEN).contains(&p.len()) || !printable {
                return Err(format!(
                    "block_urls entries must be 1 to {MAX_URL_PATTERN_LEN} printable ASCII characters without spaces"
                ));
            }
            if p.bytes().all(|b| b == b'*') {
                return Err("block_urls: a pattern of only * would block every page".into());
            }
        }
        let mut urls = patterns.to_vec();
        urls.dedup();
        Ok(urls)
    }

    /// `Fetch.enable`'s parameters: one pattern per blocked type and URL pattern; `None`
    /// when nothing is blocked (no interception at all).
    pub fn fetch_params(&self) -> Option<Value> {
        if self.is_empty() {
            return None;
        }
        let types = self.types.iter().filter_map(|t| {
            let cdp = RESOURCE_TYPES.iter().find(|(n, _)| n == t)?.1;
            Some(json!({ "urlPattern": "*", "resourceType": cdp }))
        });
        let urls = self.urls.iter().map(|u| json!({ "urlPattern": u }));
        Some(json!({ "patterns": types.chain(urls).collect::<Vec<_>>() }))
    }
}

/// `Fetch.failRequest`'s parameters for a `Fetch.requestPaused` event's: every request the
/// keeper's patterns pause is one the session blocks.
pub(crate) fn refusal(paused: &Value) -> Option<Value> {
    let id = paused["requestId"].as_str()?;
    Some(json!({ "requestId": id, "errorReason": "BlockedByClient" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn types_are_checked_and_mapped() {
        let types = Blocking::parse_types(&strings(&["image", "font", "image"])).unwrap();
        assert_eq!(types, ["image", "font"]);
        for bad in ["Image", "document", "websocket", "", "ads "] {
            assert!(Blocking::parse_types(&strings(&[bad])).is_err(), "{bad}");
        }
        let blocking = Blocking {
            types,
            urls: strings(&["*.mp4"]),
        };
        let params = blocking.fetch_params().unwrap();
        assert_eq!(params["patterns"][0]["resourceType"], "Image");
        assert_eq!(params["patterns"][1]["resourceType"], "Font");
        assert_eq!(params["patterns"][2]["urlPattern"], "*.mp4");
        assert!(Blocking::default().fetch_params().is_none());
    }

    #[test]
    fn url_patterns_are_bounded() {
        assert!(Blocking::parse_urls(&strings(&["*://*.example.com/*", "*.mp4"])).is_ok());
        let too_many = vec!["*.png".to_owned(); MAX_URL_PATTERNS + 1];
        assert!(Blocking::parse_urls(&too_many).is_err());
        let too_long = "a".repeat(MAX_URL_PATTERN_LEN + 1);
        for bad in ["", "*", "**", "a b", "a\nb", too_long.as_str(), "é"] {
            assert!(Blocking::parse_urls(&strings(&[bad])).is_err(), "{bad:?}");
        }
    }
}
