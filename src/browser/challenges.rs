//! Known challenges a session's pages show (reCAPTCHA, hCaptcha, Cloudflare Turnstile),
//! recognised by the URL of the frame that holds them: the identity keeper hears every
//! frame's navigation (`Page.frameNavigated`) on each page and frame target. Nothing is
//! solved: the session records what it saw, and a person passes it through the live view.

use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

pub(crate) use crate::values::Challenge;

/// Most challenges a session keeps (the first ones).
pub(crate) const MAX_CHALLENGES: usize = 32;
/// The longest URL kept of a challenge frame.
const MAX_URL: usize = 256;

/// The challenge a frame at `url` shows, if it is one (a kind of
/// `metrics::CHALLENGE_KINDS`), with the URL to keep (scheme, host
/// and path: the query carries site keys and tokens).
pub(crate) fn recognise(url: &str) -> Option<(&'static str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = &rest[end..path_end];
    let kind = if matches!(
        host.as_str(),
        "www.google.com" | "google.com" | "www.recaptcha.net" | "recaptcha.net"
    ) && path.starts_with("/recaptcha/")
    {
        "recaptcha"
    } else if host == "hcaptcha.com" || host.ends_with(".hcaptcha.com") {
        "hcaptcha"
    } else if host == "challenges.cloudflare.com" {
        "turnstile"
    } else {
        return None;
    };
    let mut kept = format!("{scheme}://{host}{path}");
    if kept.len() > MAX_URL {
        let mut cut = MAX_URL;
        while !kept.is_char_boundary(cut) {
            cut -= 1;
        }
        kept.truncate(cut);
    }
    Some((kind, kept))
}

/// The challenges one session's pages showed, first [`MAX_CHALLENGES`] kept; `count` tells
/// watchers (the live view) when one is added.
pub struct Challenges {
    list: Mutex<Vec<(String, Challenge)>>,
    count: watch::Sender<usize>,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges {
            list: Mutex::default(),
            count: watch::Sender::new(0),
        }
    }
}

impl Challenges {
    /// Records the challenge frame `frame` navigated to `url` shows, if any, once per frame
    /// and URL (a frame in another process is heard on its parent's target and its own);
    /// answers its kind when it is new.
    pub fn seen(&self, frame: &str, url: &str) -> Option<&'static str> {
        let (kind, url) = recognise(url)?;
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() >= MAX_CHALLENGES || list.iter().any(|(f, c)| f == frame && c.url == url) {
            return None;
        }
        let challenge = Challenge {
            kind: kind.to_owned(),
            url,
            at: SystemTime::now(),
        };
        list.push((frame.to_owned(), challenge));
        self.count.send_replace(list.len());
        Some(kind)
    }

    pub fn list(&self) -> Vec<Challenge> {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Changes whenever a challenge is added (its value: how many there are).
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_frames_are_recognised() {
        let cases = [
            (
                "https://www.google.com/recaptcha/api2/anchor?ar=1&k=6Le-key&co=aHR0",
                Some(("recaptcha", "https://www.google.com/recaptcha/api2/anchor")),
            ),
            (
                "https://www.recaptcha.net/recaptcha/enterprise/bframe?k=x",
                Some(("recaptcha", "https://www.recaptcha.net/recaptcha/enterprise/bframe")),
            ),
            (
                "https://newassets.hcaptcha.com/captcha/v1/abc/static/hcaptcha.html#frame=checkbox",
                Some((
                    "hcaptcha",
                    "https://newassets.hcaptcha.com/captcha/v1/abc/static/hcaptcha.html",
                )),
            ),
            (
                "https://challenges.cloudflare.com/cdn-cgi/challenge-platform/h/b/turnstile/if/ov2/av0/rcv0/0/x/0x4AAA/auto/fbE/normal",
                Some((
                    "turnstile",
                    "https://challenges.cloudflare.com/cdn-cgi/challenge-platform/h/b/turnstile/if/ov2/av0/rcv0/0/x/0x4AAA/auto/fbE/normal",
                )),
            ),
            (
                "http://WWW.Google.com:80/recaptcha/api2/anchor",
                Some(("recaptcha", "http://www.google.com/recaptcha/api2/anchor")),
            ),
            ("https://www.google.com/search?q=recaptcha", None),
            ("https://www.google.com.evil.test/recaptcha/api2/anchor", None),
            ("https://hcaptcha.com.evil.test/", None),
            ("https://evil.test/?u=https://challenges.cloudflare.com/", None),
            ("https://evil.test/#challenges.cloudflare.com", None),
            ("https://challenges.cloudflare.com@evil.test/", None),
            ("about:blank", None),
            ("", None),
        ];
        for (url, expected) in cases {
            let found = recognise(url);
            let found = found.as_ref().map(|(k, u)| (*k, u.as_str()));
            assert_eq!(found, expected, "{url}");
        }
    }

    #[test]
    fn a_session_keeps_a_bounded_list() {
        let challenges = Challenges::default();
        assert_eq!(challenges.seen("F0", "https://example.com/"), None);
        assert_eq!(
            challenges.seen("F0", "https://challenges.cloudflare.com/x?a=1"),
            Some("turnstile")
        );
        assert_eq!(
            challenges.seen("F0", "https://challenges.cloudflare.com/x?a=2"),
            None,
            "the same frame"
        );
        for i in 0..MAX_CHALLENGES + 5 {
            challenges.seen(&format!("F{}", i + 1), "https://challenges.cloudflare.com/x");
        }
        assert_eq!(challenges.list().len(), MAX_CHALLENGES);
    }
}
