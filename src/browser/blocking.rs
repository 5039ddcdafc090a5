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
//! With `ads` (the operator's ad lists, [`super::ad_blocker`]), or a type Chrome's patterns
//! cannot name (`texttrack`, `prefetch`, …), every request is paused and decided here: its
//! type, the URL patterns, then the lists; the rest continue.
//!
//! Not the gateway: it sees `CONNECT host:port` for HTTPS, neither the path nor the type.
//! WebSockets are not covered: Chrome's `Fetch` domain does not intercept their handshakes.

use serde_json::{Value, json};

use super::ad_blocker::AdBlocker;

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

/// The types Chrome's `Fetch.enable` takes in a pattern (it refuses the whole command for
/// any other: `TextTrack`, `Prefetch`, `Manifest`, `SignedExchange`, `Preflight`).
const FETCH_FILTER_TYPES: &[&str] = &[
    "Document",
    "Stylesheet",
    "Image",
    "Media",
    "Font",
    "Script",
    "XHR",
    "Fetch",
    "EventSource",
    "Ping",
    "CSPViolationReport",
    "Other",
];

/// The `block` entry for the operator's ad and tracker lists.
pub(crate) const ADS: &str = "ads";

/// Most `block_urls` patterns, and the longest one.
pub(crate) const MAX_URL_PATTERNS: usize = 64;
pub(crate) const MAX_URL_PATTERN_LEN: usize = 512;

/// What a session blocks, as validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocking {
    /// Resource types, lower case, each once; [`ADS`] for the ad lists.
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

    /// Whether the ad lists apply.
    pub fn ads(&self) -> bool {
        self.types.iter().any(|t| t == ADS)
    }

    /// Checks `block`: known types (and [`ADS`] when `ads_lists`), each once. The error
    /// names the bad entry.
    pub fn parse_types(names: &[String], ads_lists: bool) -> Result<Vec<String>, String> {
        let mut types: Vec<String> = Vec::new();
        for name in names {
            if name == ADS && !ads_lists {
                return Err("block: \"ads\" needs ad block lists, and this broker has none (adblock_lists)".into());
            }
            if name != ADS && !RESOURCE_TYPES.iter().any(|(n, _)| n == name) {
                let shown: String = name.chars().take(40).collect();
                return Err(format!(
                    "block: {shown:?} is not a resource type ({}, or ads)",
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

    /// Whether every request is paused and decided by [`Blocking::blocks`]: with the ad
    /// lists, or a type Chrome's patterns cannot name.
    fn decides(&self) -> bool {
        self.ads()
            || self.types.iter().any(|t| {
                RESOURCE_TYPES
                    .iter()
                    .any(|(name, cdp)| name == t && !FETCH_FILTER_TYPES.contains(cdp))
            })
    }

    /// `Fetch.enable`'s parameters: one pattern per blocked type and URL pattern (every
    /// request when it [`decides`](Self::decides)); `None` when nothing is blocked.
    pub fn fetch_params(&self) -> Option<Value> {
        if self.is_empty() {
            return None;
        }
        if self.decides() {
            return Some(json!({ "patterns": [{ "urlPattern": "*" }] }));
        }
        let types = self.types.iter().filter_map(|t| {
            let cdp = RESOURCE_TYPES.iter().find(|(n, _)| n == t)?.1;
            Some(json!({ "urlPattern": "*", "resourceType": cdp }))
        });
        let urls = self.urls.iter().map(|u| json!({ "urlPattern": u }));
        Some(json!({ "patterns": types.chain(urls).collect::<Vec<_>>() }))
    }
    /// Whether the request a `Fetch.requestPaused` event (`paused`, its params) holds is
    /// blocked. Unless it [`decides`](Self::decides), the patterns paused only blocked ones.
    pub(crate) fn blocks(&self, paused: &Value, ads: Option<&AdBlocker>) -> bool {
        if !self.decides() {
            return true;
        }
        let url = paused["request"]["url"].as_str().unwrap_or_default();
        let cdp_type = paused["resourceType"].as_str().unwrap_or_default();
        if RESOURCE_TYPES
            .iter()
            .any(|(name, cdp)| *cdp == cdp_type && self.types.iter().any(|t| t == name))
            || self.urls.iter().any(|p| pattern_matches(p.as_bytes(), url.as_bytes()))
        {
            return true;
        }
        // A page or frame's document is never blocked by the lists (what it loads may be).
        let Some(ads) = ads.filter(|_| self.ads() && cdp_type != "Document") else {
            return false;
        };
        let headers = paused["request"]["headers"].as_object();
        let referer = headers
            .into_iter()
            .flatten()
            .find(|(name, _)| name.eq_ignore_ascii_case("referer"))
            .and_then(|(_, v)| v.as_str());
        ads.blocks(url, referer, cdp_type)
    }
}

/// Whether `url` matches a `Fetch` URL pattern: `*` any characters, `?` one, `\` escapes
/// the next. Greedy with one backtrack point: linear but for patterns of many stars.
fn pattern_matches(pattern: &[u8], url: &[u8]) -> bool {
    let (mut p, mut u) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while u < url.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, u));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                u += 1;
                continue;
            }
            Some(b'\\') if pattern.get(p + 1) == Some(&url[u]) => {
                p += 2;
                u += 1;
                continue;
            }
            Some(&c) if c != b'\\' && c == url[u] => {
                p += 1;
                u += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((after, from)) => {
                p = after;
                u = from + 1;
                star = Some((after, from + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `Fetch.failRequest`'s parameters for a paused request the session blocks.
pub(crate) fn refusal(paused: &Value) -> Option<Value> {
    let id = paused["requestId"].as_str()?;
    Some(json!({ "requestId": id, "errorReason": "BlockedByClient" }))
}

/// `Fetch.continueRequest`'s parameters for a paused request the session lets through.
pub(crate) fn passage(paused: &Value) -> Option<Value> {
    let id = paused["requestId"].as_str()?;
    Some(json!({ "requestId": id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn types_are_checked_and_mapped() {
        let types = Blocking::parse_types(&strings(&["image", "font", "image"]), false).unwrap();
        assert_eq!(types, ["image", "font"]);
        for bad in ["Image", "document", "websocket", "", "ads "] {
            assert!(Blocking::parse_types(&strings(&[bad]), true).is_err(), "{bad}");
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

    #[test]
    fn ads_need_lists() {
        let err = Blocking::parse_types(&strings(&["ads"]), false).unwrap_err();
        assert!(err.contains("adblock_lists"), "{err}");
        assert_eq!(
            Blocking::parse_types(&strings(&["ads", "font"]), true).unwrap(),
            ["ads", "font"]
        );
    }

    #[test]
    fn every_type_pattern_is_one_chrome_takes() {
        for (name, _) in RESOURCE_TYPES {
            let b = Blocking {
                types: vec![name.to_string()],
                urls: Vec::new(),
            };
            for p in b.fetch_params().unwrap()["patterns"].as_array().unwrap() {
                let t = p["resourceType"].as_str();
                assert!(t.is_none_or(|t| FETCH_FILTER_TYPES.contains(&t)), "{name}: {p}");
            }
        }
    }

    #[test]
    fn fetch_patterns_match_as_chrome_reads_them() {
        for (pattern, url, matches) in [
            ("*", "https://a.test/x", true),
            ("*.mp4", "https://a.test/v.mp4", true),
            ("*.mp4", "https://a.test/v.mp4?x", false),
            ("*://*.example.com/*", "https://cdn.example.com/a.js", true),
            ("*://*.example.com/*", "https://example.org/a.js", false),
            ("https://a.test/?", "https://a.test/x", true),
            ("https://a.test/?", "https://a.test/xy", false),
            ("https://a.test/\\*", "https://a.test/*", true),
            ("https://a.test/\\*", "https://a.test/x", false),
            ("*a*b*c", "xxaxxbxxcxxc", true),
            ("*a*b*c", "xxaxxbxx", false),
        ] {
            assert_eq!(
                pattern_matches(pattern.as_bytes(), url.as_bytes()),
                matches,
                "{pattern} {url}"
            );
        }
    }

    #[test]
    fn with_ads_the_types_patterns_and_lists_decide() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("ads.txt");
        std::fs::write(&list, "||ads.test^\n").unwrap();
        let ads = AdBlocker::load(&[list]).unwrap().unwrap();
        let blocking = Blocking {
            types: strings(&["ads", "font"]),
            urls: strings(&["*.mp4"]),
        };
        assert_eq!(
            blocking.fetch_params().unwrap()["patterns"],
            json!([{"urlPattern": "*"}])
        );
        let paused = |url: &str, kind: &str| {
            json!({"requestId": "1", "resourceType": kind,
                "request": {"url": url, "headers": {"Referer": "https://shop.test/"}}})
        };
        assert!(blocking.blocks(&paused("https://ads.test/a.js", "Script"), Some(&ads)));
        assert!(blocking.blocks(&paused("https://shop.test/f.woff2", "Font"), Some(&ads)));
        assert!(blocking.blocks(&paused("https://shop.test/v.mp4", "Media"), Some(&ads)));
        assert!(!blocking.blocks(&paused("https://shop.test/a.js", "Script"), Some(&ads)));
        assert!(!blocking.blocks(&paused("https://ads.test/", "Document"), Some(&ads)));
        // A type Chrome's patterns cannot name is decided here too.
        let prefetch = Blocking {
            types: strings(&["prefetch", "image"]),
            urls: Vec::new(),
        };
        assert_eq!(
            prefetch.fetch_params().unwrap()["patterns"],
            json!([{"urlPattern": "*"}])
        );
        assert!(prefetch.blocks(&paused("https://shop.test/next", "Prefetch"), None));
        assert!(prefetch.blocks(&paused("https://shop.test/a.png", "Image"), None));
        assert!(!prefetch.blocks(&paused("https://ads.test/a.js", "Script"), None));
        // Otherwise, whatever the patterns paused is blocked.
        let plain = Blocking {
            types: strings(&["font"]),
            urls: Vec::new(),
        };
        assert!(plain.blocks(&paused("https://shop.test/f.woff2", "Font"), Some(&ads)));
    }
}
