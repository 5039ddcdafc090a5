//! A session's browser identity: user agent (with client hints to match), locale and time
//! zone, on every page, frame and worker of its browser (or of its browser context); by
//! default the browser's own user agent and client hints without their automation tells
//! ([`super::stealth`]). A warm browser cannot change its launch flags, so the broker's
//! identity keeper (`keeper.rs`) sets these overrides on each target before it runs:
//! here is what a session asks for and the commands that put it on one target.

use serde_json::{Value, json};

use super::fingerprint;
use super::page_script;
use super::stealth::{self, Disguise};
use crate::capture::SessionCapture;
use crate::values::Fingerprint;

/// What a session asked its pages to look like; every part optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub user_agent: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    /// A whole machine to pass for (a desktop preset or a device); its user agent and
    /// client hints win over the browser's own.
    pub fingerprint: Option<Fingerprint>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.user_agent.is_none() && self.locale.is_none() && self.timezone.is_none() && self.fingerprint.is_none()
    }
}

/// Checks a user agent: printable ASCII (it becomes a header), 1 to 1024 characters.
pub(crate) fn valid_user_agent(ua: &str) -> bool {
    (1..=1024).contains(&ua.len()) && ua.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Checks a BCP 47 language tag's shape (`en`, `en-US`, `zh-Hant-TW`).
pub(crate) fn valid_locale(locale: &str) -> bool {
    let mut parts = locale.split('-');
    let language = parts.next().unwrap_or("");
    locale.len() <= 35
        && (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Checks an IANA time zone name against the system's zone database
/// (`/usr/share/zoneinfo`); where there is none, against the shape of a name only.
pub(crate) fn valid_timezone(name: &str) -> bool {
    let shaped = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !shaped {
        return false;
    }
    let database = std::path::Path::new("/usr/share/zoneinfo");
    if !database.is_dir() {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(database.join(name))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == b"TZif")
}

/// Client hints that agree with a Chrome user agent string (none for other browsers'
/// strings: Chrome then sends no `Sec-CH-UA` that would contradict it).
fn user_agent_metadata(ua: &str) -> Option<Value> {
    let version = ua
        .split_whitespace()
        .find_map(|token| token.strip_prefix("Chrome/"))?
        .to_owned();
    let major = version.split('.').next().unwrap_or("").to_owned();
    let platform = stealth::platform(ua);
    let architecture = if ua.contains("arm") || ua.contains("aarch64") {
        "arm"
    } else {
        "x86"
    };
    let brands = |v: &str| {
        json!([
            { "brand": "Chromium", "version": v },
            { "brand": "Google Chrome", "version": v },
            { "brand": "Not_A Brand", "version": "99" },
        ])
    };
    Some(json!({
        "brands": brands(&major),
        "fullVersionList": brands(&version),
        "fullVersion": version,
        "platform": platform,
        "platformVersion": "",
        "architecture": architecture,
        "model": "",
        "mobile": ua.contains("Mobile"),
    }))
}

/// What the browser says of itself (`Browser.getVersion`), read once by each keeper.
#[derive(Debug, Clone, Default)]
pub(crate) struct BrowserFacts {
    /// The browser's own user agent, where it is not Chromium's (no disguise).
    pub default_user_agent: String,
    /// How the browser passes for a person's Chromium.
    pub disguise: Option<Disguise>,
}

impl BrowserFacts {
    pub(crate) fn of(version: &Value) -> BrowserFacts {
        let default_user_agent = version["userAgent"].as_str().unwrap_or("").to_owned();
        let product = version["product"].as_str().unwrap_or("");
        BrowserFacts {
            disguise: Disguise::of(product, &default_user_agent),
            default_user_agent,
        }
    }
}

/// The commands, in order, that put `identity` on a newly attached target of `kind`
/// (`targetInfo.type`) before it runs a line, with the session's capture (`capture`) and a
/// target-level blocking (`fetch`: `Fetch.enable`'s parameters, for a session whose
/// blocking is not set on the browser target). The target is then let go
/// (`Runtime.runIfWaitingForDebugger`), which is the caller's.
pub(crate) fn target_commands(
    identity: &Identity,
    facts: &BrowserFacts,
    kind: &str,
    fetch: Option<Value>,
    capture: Option<&SessionCapture>,
) -> Vec<(&'static str, Value)> {
    let page = matches!(kind, "page" | "iframe");
    let worker = matches!(kind, "worker" | "shared_worker" | "service_worker");
    if !page && !worker {
        return Vec::new();
    }
    let mut commands = Vec::new();
    let disguise = facts.disguise.as_ref();
    let fp = identity.fingerprint.as_ref();
    let ua = match (&identity.user_agent, disguise) {
        (_, _) if fp.is_some() => fp.map(|f| f.user_agent.clone()).unwrap_or_default(),
        (Some(ua), _) => ua.clone(),
        (None, Some(d)) => d.user_agent.clone(),
        (None, None) => facts.default_user_agent.clone(),
    };
    // No `platform` by default: Chrome keeps navigator.platform per DevTools client, and
    // once another client has attached (Puppeteer does), the next document shows the
    // machine's again (measured on 156: the user agent stays, the platform does not). A
    // fingerprint sets it here for the first document and in its script for the rest.
    let mut override_ua = json!({ "userAgent": ua });
    if let Some(locale) = &identity.locale {
        override_ua["acceptLanguage"] = json!(locale);
    }
    let metadata = match (fp, &identity.user_agent) {
        (Some(fp), _) => fp.client_hints.clone(),
        (None, Some(ua)) => user_agent_metadata(ua),
        (None, None) => disguise.map(|d| d.metadata.clone()),
    };
    if let Some(fp) = fp {
        override_ua["platform"] = json!(fp.platform);
        if let Some(locale) = &identity.locale {
            override_ua["acceptLanguage"] = json!(fingerprint::accept_language(locale));
        }
    }
    if let Some(metadata) = metadata {
        override_ua["userAgentMetadata"] = metadata;
    }
    let wants_ua = identity.user_agent.is_some() || identity.locale.is_some() || fp.is_some() || disguise.is_some();
    if wants_ua && !ua.is_empty() {
        let method = if page {
            "Emulation.setUserAgentOverride"
        } else {
            "Network.setUserAgentOverride"
        };
        commands.push((method, override_ua));
    }
    if let Some(params) = fetch
        && (page || kind == "service_worker" || kind == "shared_worker")
    {
        // A page's interception covers its dedicated workers' requests too.
        commands.push(("Fetch.enable", params));
    }
    if page {
        // Frame navigations tell challenges apart (`Page.frameNavigated`).
        commands.push(("Page.enable", json!({})));
    }
    if let Some(capture) = capture {
        // What the session captures, on this connection only: its console (`Runtime`,
        // whose console serialization page scripts cannot see on 156: `tests/capture.rs`
        // probes it; `Log` for what the browser reports) and its network (`Network`,
        // buffering bodies only when they are kept).
        if capture.wants.console {
            commands.push(("Runtime.enable", json!({})));
            if page {
                commands.push(("Log.enable", json!({})));
            }
        }
        if capture.wants.network {
            let (resource, total) = if capture.wants.bodies {
                (capture.limits().body_bytes, capture.limits().bodies_bytes)
            } else {
                (0, 0)
            };
            let params = json!({ "maxResourceBufferSize": resource, "maxTotalBufferSize": total });
            commands.push(("Network.enable", params));
        }
    }
    if let Some(locale) = &identity.locale {
        commands.push(("Emulation.setLocaleOverride", json!({ "locale": locale })));
    }
    if let Some(tz) = &identity.timezone {
        commands.push(("Emulation.setTimezoneOverride", json!({ "timezoneId": tz })));
    }
    commands.extend(fp.map(|f| fingerprint::commands(f, kind)).unwrap_or_default());
    // The console patch, what the headless shell lacks and what a fingerprint sets that no
    // command reaches, before the target's own scripts: one script, so one toString patch.
    // A page's script needs the Page domain, enabled above (it stays on: disabling it drops
    // the script). Also at once on the document there is: a popup's first document keeps
    // its window for a same-origin page.
    let shell = page && disguise.is_some_and(|d| d.shell);
    let config = fp.map(|fp| fingerprint::patch_config(fp, kind));
    let source = page_script::script(shell, config.as_ref());
    if page {
        let script = json!({ "source": source, "runImmediately": true });
        commands.push(("Page.addScriptToEvaluateOnNewDocument", script));
    } else {
        // The worker waits for the keeper: this runs before its first line.
        let script = json!({ "expression": source, "silent": true });
        commands.push(("Runtime.evaluate", script));
    }
    // Frames and workers this target starts are attached (and held) the same way.
    let attach = json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true });
    commands.push(("Target.setAutoAttach", attach));
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked() {
        assert!(valid_user_agent("Mozilla/5.0 (X11; Linux x86_64)"));
        assert!(!valid_user_agent(""));
        assert!(!valid_user_agent("a\r\nX-Evil: 1"));
        assert!(!valid_user_agent(&"a".repeat(1025)));
        for good in ["en", "en-US", "zh-Hant-TW", "de-DE-u-co-phonebk"] {
            assert!(valid_locale(good), "{good}");
        }
        for bad in ["", "e", "english-US", "en_US", "en--US", "en-US-", "1n"] {
            assert!(!valid_locale(bad), "{bad}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "/etc/localtime",
            "Europe/../UTC",
            "Europe/Berlin\n",
        ] {
            assert!(!valid_timezone(bad), "{bad}");
        }
        if std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
            assert!(valid_timezone("Europe/Berlin"));
            assert!(valid_timezone("America/Argentina/Buenos_Aires"));
            assert!(!valid_timezone("Mars/Olympus_Mons"));
        }
    }

    #[test]
    fn client_hints_follow_a_chrome_user_agent() {
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.86 Safari/537.36";
        let m = user_agent_metadata(ua).unwrap();
        assert_eq!(m["platform"], "Windows");
        assert_eq!(m["brands"][0]["version"], "131");
        assert_eq!(m["fullVersion"], "131.0.6778.86");
        assert_eq!(m["mobile"], false);
        assert!(
            user_agent_metadata("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0").is_none()
        );
    }
}
