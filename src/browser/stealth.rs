//! What a session's pages show a site about the browser by default: a person's Chromium,
//! not an automated one. Headless Chromium names itself in its user agent
//! (`HeadlessChrome/…`), its headless shell also in its client-hint brands, and the shell
//! lacks what only the full browser has (PDF plugins, `window.chrome`). The launch flags
//! here cover every target at no cost; the rest is set by the identity keeper
//! (`identity.rs`) on each target before it runs.
//!
//! The `--user-agent` flag (the launcher's, from [`Disguise`] read at calibration) alone is
//! not enough: with it Chromium sends its low-entropy hints but answers
//! `getHighEntropyValues` with an empty `fullVersionList`, itself a tell (measured on 156),
//! so the keeper also sets the override with client hints on each target. The flag covers
//! what no override reaches first: a service worker's script request and its
//! `navigator.userAgent`.

use serde_json::{Value, json};

/// Launch flags for every browser: `navigator.webdriver` is `false`, as in a person's
/// Chrome (headless and remote-debugged Chromium turn it on).
pub(crate) const DISABLED_BLINK_FEATURES: &[&str] = &["AutomationControlled"];

/// How the broker presents a browser by default, from its `Browser.getVersion`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Disguise {
    /// The browser's own user agent without `Headless` and with the version reduced to
    /// `MAJOR.0.0.0`, as Chrome sends it.
    pub(crate) user_agent: String,
    /// Client hints that agree with it: the brands Chromium gives itself, without the
    /// headless shell's `HeadlessChrome`.
    pub(crate) metadata: Value,
    /// The headless shell (`HeadlessChrome/…` product): its frames get `shell_patch.js`
    /// (in [`super::page_script`]).
    pub(crate) shell: bool,
}

impl Disguise {
    /// From `Browser.getVersion`'s `product` (`Chrome/156.0.8078.114`, the shell's
    /// `HeadlessChrome/156.0.8078.114`) and `userAgent`. None for what is not Chromium.
    pub(crate) fn of(product: &str, user_agent: &str) -> Option<Disguise> {
        let (name, version) = product.split_once('/')?;
        if !matches!(name, "Chrome" | "HeadlessChrome") {
            return None;
        }
        let major_text = version.split('.').next()?;
        let major: u32 = major_text.parse().ok()?;
        let reduced = format!("Chrome/{major}.0.0.0");
        let user_agent = user_agent
            .split(' ')
            .map(|token| match token.split_once('/') {
                Some(("HeadlessChrome" | "Chrome", _)) => reduced.as_str(),
                _ => token,
            })
            .collect::<Vec<_>>()
            .join(" ");
        let (grease, grease_version) = greased_brand(major);
        let pair = |chromium: &str, grease_version: &str| {
            let chromium = json!({ "brand": "Chromium", "version": chromium });
            let grease = json!({ "brand": grease, "version": grease_version });
            // Chromium's order of the two (`ShuffleBrandList`): by the major version.
            if major.is_multiple_of(2) {
                json!([grease, chromium])
            } else {
                json!([chromium, grease])
            }
        };
        let x86 = user_agent.contains("x86_64") || !user_agent.contains("arm");
        let metadata = json!({
            "brands": pair(major_text, &grease_version),
            "fullVersionList": pair(version, &format!("{grease_version}.0.0.0")),
            "fullVersion": version,
            "platform": platform(&user_agent),
            "platformVersion": "",
            "architecture": if x86 { "x86" } else { "arm" },
            "bitness": "64",
            "model": "",
            "mobile": false,
            "wow64": false,
        });
        Some(Disguise {
            user_agent,
            metadata,
            shell: name == "HeadlessChrome",
        })
    }
}

/// The platform a user agent names, as `Sec-CH-UA-Platform` spells it.
pub(crate) fn platform(ua: &str) -> &'static str {
    if ua.contains("Windows") {
        "Windows"
    } else if ua.contains("Android") {
        "Android"
    } else if ua.contains("CrOS") {
        "Chrome OS"
    } else if ua.contains("Macintosh") || ua.contains("Mac OS X") {
        "macOS"
    } else if ua.contains("Linux") || ua.contains("X11") {
        "Linux"
    } else {
        ""
    }
}

/// Chromium's GREASE brand for a major version (`GetGreasedUserAgentBrandVersion`):
/// `Not:A-Brand`/`8` for 156.
pub(crate) fn greased_brand(major: u32) -> (String, String) {
    const CHARS: [&str; 11] = [" ", "(", ":", "-", ".", "/", ")", ";", "=", "?", "_"];
    const VERSIONS: [&str; 3] = ["8", "99", "24"];
    let m = major as usize;
    (
        format!("Not{}A{}Brand", CHARS[m % 11], CHARS[(m + 1) % 11]),
        VERSIONS[m % 3].to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headless_shell_passes_for_chromium() {
        // As Chromium 156 and its headless shell answer `Browser.getVersion`.
        let shell = Disguise::of(
            "HeadlessChrome/156.0.8078.114",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.8078.114 Safari/537.36",
        )
        .unwrap();
        let full = Disguise::of(
            "Chrome/156.0.8078.114",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
        )
        .unwrap();
        let ua =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
        assert_eq!(shell.user_agent, ua);
        assert_eq!(full.user_agent, ua);
        assert!(shell.shell && !full.shell);
        assert_eq!(shell.metadata, full.metadata);
        // What the full Chromium 156 itself reports (navigator.userAgentData).
        assert_eq!(
            full.metadata["brands"],
            json!([{"brand": "Not:A-Brand", "version": "8"}, {"brand": "Chromium", "version": "156"}])
        );
        assert_eq!(
            full.metadata["fullVersionList"],
            json!([{"brand": "Not:A-Brand", "version": "8.0.0.0"}, {"brand": "Chromium", "version": "156.0.8078.114"}])
        );
        assert_eq!(full.metadata["platform"], "Linux");
        assert_eq!(greased_brand(157), ("Not-A.Brand".to_owned(), "99".to_owned()));
        assert!(Disguise::of("Firefox/128.0", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0)").is_none());
    }
}
