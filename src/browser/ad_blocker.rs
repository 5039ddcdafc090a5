//! `block: ["ads"]`: each request of the session's pages checked against the ad and
//! tracker lists the operator supplies (`adblock_lists`, EasyList format: EasyList,
//! EasyPrivacy, uBlock Origin's own), with Brave's engine (the `adblock` crate). The
//! broker ships no list: which lists to trust, and how fresh, is the operator's call.

use std::path::PathBuf;

use adblock::Engine;
use adblock::lists::{FilterSet, ParseOptions};
use adblock::request::Request;

/// Largest list file read (EasyList is about 2 MB).
const MAX_LIST_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) struct AdBlocker {
    engine: Engine,
    /// Lines of the lists that are network rules (cosmetic rules, `##…`, are not used).
    pub(crate) rules: usize,
}

impl AdBlocker {
    /// Reads the lists at `paths`; `None` when there are none. The error names the file.
    pub(crate) fn load(paths: &[PathBuf]) -> Result<Option<AdBlocker>, String> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut set = FilterSet::new(false);
        let mut rules = 0;
        for path in paths {
            let size = std::fs::metadata(path)
                .map_err(|e| format!("adblock list {}: {e}", path.display()))?
                .len();
            if size > MAX_LIST_BYTES {
                return Err(format!(
                    "adblock list {} is {size} bytes: at most {MAX_LIST_BYTES}",
                    path.display()
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("adblock list {}: {e}", path.display()))?;
            rules += text.lines().filter(|l| is_network_rule(l)).count();
            set.add_filter_list(text, ParseOptions::default());
        }
        Ok(Some(AdBlocker {
            engine: Engine::new_with_filter_set(set),
            rules,
        }))
    }

    /// Whether the lists block a request for `url` of Chrome's resource type `cdp_type`
    /// made by a page at `source` (its `Referer`; the request's own URL when it has none,
    /// which counts it first-party).
    pub(crate) fn blocks(&self, url: &str, source: Option<&str>, cdp_type: &str) -> bool {
        let Ok(request) = Request::new(url, source.unwrap_or(url), request_type(cdp_type), "GET") else {
            return false;
        };
        self.engine.check_network_request(&request).should_block()
    }
}

/// Whether a list line is a network rule: not blank, a comment, a header or a cosmetic rule.
fn is_network_rule(line: &str) -> bool {
    let line = line.trim();
    !(line.is_empty()
        || line.starts_with('!')
        || line.starts_with('[')
        || ["##", "#@#", "#?#", "#$#", "#%#"].iter().any(|c| line.contains(c)))
}

/// The engine's name for Chrome's resource type.
fn request_type(cdp_type: &str) -> &'static str {
    match cdp_type {
        "Image" => "image",
        "Media" => "media",
        "Font" => "font",
        "Stylesheet" => "stylesheet",
        "Script" => "script",
        "XHR" | "Fetch" | "EventSource" => "xmlhttprequest",
        "Ping" => "ping",
        "CSPViolationReport" => "csp_report",
        "WebSocket" => "websocket",
        "Document" => "sub_frame",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(list: &str) -> AdBlocker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(&path, list).unwrap();
        AdBlocker::load(&[path]).unwrap().unwrap()
    }

    #[test]
    fn rules_match_by_domain_party_and_type() {
        let b = blocker(
            "! Title: test\n||ads.example^\n/banner/*$image\n||tracker.test^$third-party\n@@||ads.example/allowed.js\nshop.test##.ad\n",
        );
        assert_eq!(b.rules, 4);
        let page = Some("https://shop.test/");
        assert!(b.blocks("https://ads.example/x.js", page, "Script"));
        assert!(
            !b.blocks("https://ads.example/allowed.js", page, "Script"),
            "an exception"
        );
        assert!(b.blocks("https://cdn.test/banner/1.png", page, "Image"));
        assert!(!b.blocks("https://cdn.test/banner/1.js", page, "Script"), "$image only");
        assert!(b.blocks("https://tracker.test/p", page, "XHR"));
        assert!(
            !b.blocks("https://tracker.test/p", Some("https://tracker.test/"), "XHR"),
            "first party"
        );
        assert!(!b.blocks("not a url", page, "Script"));
        let v = blocker("/video.mp4\n@@/video.mp4$media\n");
        assert!(!v.blocks(
            "http://127.0.0.1:3000/video.mp4?t=x",
            Some("http://127.0.0.1:3000/heavy?t=x"),
            "Media"
        ));
        assert!(v.blocks(
            "http://127.0.0.1:3000/video.mp4?t=x",
            Some("http://127.0.0.1:3000/heavy?t=x"),
            "Image"
        ));
    }

    #[test]
    fn a_missing_or_huge_list_is_an_error_naming_it() {
        let err = AdBlocker::load(&[PathBuf::from("/nonexistent/list.txt")])
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/list.txt"), "{err}");
        assert!(AdBlocker::load(&[]).unwrap().is_none());
    }
}
