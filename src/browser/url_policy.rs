//! Which URLs a client may send a tab to, or have the browser fetch, through the broker.
//!
//! The second layer behind the operating system's confinement of each browser: a URL that
//! would show a file of the broker's disk (`file:`), Chrome's own pages (`chrome:`,
//! `devtools:`, `chrome-untrusted:`…), an extension's, or another scheme's source is
//! refused before Chrome reads it. An allow-list, so that a scheme Chrome learns later is
//! refused until it is looked at.
//!
//! URLs are read as Chrome reads them (the WHATWG URL standard, which the `url` crate
//! follows): leading and trailing C0 controls and spaces are stripped, tabs and newlines
//! are removed anywhere, the scheme is case-insensitive. JSON escapes are decoded before
//! (by serde), so `\u0066ile:` is `file:` here as it is in Chrome. What cannot be parsed
//! as an absolute URL is refused: Chrome would not navigate to it either, or would guess
//! (a bare path can become `file:`).

use url::Url;

/// Why a URL was refused, for the client's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the URL is not allowed: {0}")]
pub struct Refused(pub &'static str);

/// A URL a tab may be opened at or navigated to (`Target.createTarget`, `Page.navigate`,
/// discovery's `/json/new`): http(s), `about:blank` and `about:srcdoc`, `data:` and
/// `blob:` (content the page or the client made, never a file), and `view-source:` of
/// http(s). An empty URL is `about:blank`, as Chrome takes it.
pub(crate) fn check_navigation(url: &str) -> Result<(), Refused> {
    if url.trim_matches(|c: char| c <= ' ').is_empty() {
        return Ok(());
    }
    let parsed = parse(url)?;
    match parsed.scheme() {
        "http" | "https" | "data" | "blob" => Ok(()),
        "about" if matches!(parsed.path(), "blank" | "srcdoc") => Ok(()),
        "about" => Err(Refused("about: pages other than about:blank are Chrome's own")),
        "view-source" => {
            let inner = &parsed.as_str()["view-source:".len()..];
            check_fetch(inner).map_err(|_| Refused("view-source: is allowed of http(s) pages only"))
        }
        "file" | "filesystem" => Err(Refused("a tab may not show the broker's files")),
        _ => Err(Refused("only http(s), about:blank, data: and blob: URLs may be opened")),
    }
}

/// A URL the browser is asked to fetch itself (`Network.loadNetworkResource`, a request
/// an interception continues to elsewhere): http(s) only.
pub(crate) fn check_fetch(url: &str) -> Result<(), Refused> {
    match parse(url)?.scheme() {
        "http" | "https" => Ok(()),
        _ => Err(Refused("only http(s) URLs may be fetched")),
    }
}

fn parse(url: &str) -> Result<Url, Refused> {
    Url::parse(url).map_err(|_| Refused("not an absolute URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_and_blank_pages_are_allowed() {
        for url in [
            "https://example.com/",
            "http://127.0.0.1:8080/a?b#c",
            "HTTPS://EXAMPLE.COM",
            "  https://example.com/  ",
            "http:example.com",
            "about:blank",
            "about:blank#top",
            "about:blank?x=1",
            "about:srcdoc",
            "ABOUT:blank",
            "",
            "   ",
            "data:text/html,<h1>hi</h1>",
            "blob:https://example.com/0b4d9a2e-3c55-4d8a-9f0e-1f2e3d4c5b6a",
            "view-source:https://example.com/",
            "VIEW-SOURCE:http://example.com/",
        ] {
            assert_eq!(check_navigation(url), Ok(()), "{url:?}");
        }
    }

    #[test]
    fn local_and_chrome_pages_are_refused_however_they_are_spelled() {
        for url in [
            "file:///etc/passwd",
            "FILE:///etc/passwd",
            "File:/etc/passwd",
            "file:etc/passwd",
            "file://localhost/etc/passwd",
            "file:///C:/Windows/",
            " file:///etc/passwd",
            "\u{0}file:///etc/passwd",
            "\u{1f}\u{1}  file:///etc/passwd \u{7}",
            "fi\tle:///etc/passwd",
            "f\ni\rle:///etc/passwd",
            "\tfile\n:///etc/passwd",
            "filesystem:http://example.com/temporary/x",
            "chrome://version",
            "chrome://settings",
            "CHROME://gpu",
            "chrome:version",
            "chrome-untrusted://terminal/",
            "chrome-extension://abcdefghijklmnopabcdefghijklmnop/page.html",
            "chrome-search://local-ntp/",
            "chrome-native://newtab/",
            "devtools://devtools/bundled/inspector.html",
            "view-source:file:///etc/passwd",
            "view-source:chrome://version",
            "view-source:view-source:file:///etc/passwd",
            "view-source: file:///etc/passwd",
            "view-source:",
            "about:version",
            "about:settings",
            "about:BLANK",
            "about:blank/../version",
            "about:",
            "javascript:alert(1)",
            "ws://example.com/",
            "wss://example.com/",
            "ftp://example.com/",
            "mailto:a@example.com",
            "/etc/passwd",
            "etc/passwd",
            "~/secret",
            "C:\\Windows\\win.ini",
            "\\\\server\\share",
            "//example.com/",
            "%66ile:///etc/passwd",
            "\u{feff}file:///etc/passwd",
            "\u{a0}file:///etc/passwd",
            "ｆｉｌｅ:///etc/passwd",
        ] {
            assert!(check_navigation(url).is_err(), "{url:?} was allowed");
        }
    }

    #[test]
    fn json_escapes_are_read_before_the_policy() {
        for text in [
            r#""\u0066ile:///etc/passwd""#,
            r#""\u0009file:///etc/passwd""#,
            r#""ch\u0072ome://version""#,
        ] {
            let url: String = serde_json::from_str(text).unwrap();
            assert!(check_navigation(&url).is_err(), "{text}");
        }
    }

    #[test]
    fn fetches_are_http_only() {
        assert_eq!(check_fetch("https://example.com/x.map"), Ok(()));
        for url in ["file:///etc/passwd", "data:,x", "chrome://version", "", "/etc/passwd"] {
            assert!(check_fetch(url).is_err(), "{url:?}");
        }
    }
}
