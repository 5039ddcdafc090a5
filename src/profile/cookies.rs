//! A profile's cookies in and out of a running browser. Chrome keeps cookies without an
//! expiry only in memory, so they are read over CDP before a save and set again after a copy.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{Browser, cdp, snapshot};
use crate::store::SaveOutcome;
use crate::store::profiles::{ProfileUse, Profiles};

/// How long a browser has to close cleanly (and flush its stores) before a save.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Saves the state of `browser` (still running) into the profile: session cookies
/// read over CDP, a clean close so Chrome flushes its stores, then the commit.
/// Answers what became of it, for the session record.
pub(crate) async fn save_from(profiles: &Profiles, hold: &ProfileUse, browser: &Browser) -> SaveOutcome {
    let cookies = if browser.is_alive() {
        session_cookies(browser).await
    } else {
        Vec::new()
    };
    let closed = browser.close_gracefully(CLOSE_LIMIT).await;
    match (closed, browser.exited_cleanly()) {
        (true, Some(true)) => {}
        (true, None) | (false, _) => {
            return SaveOutcome::NotClosedInTime;
        }
        (true, Some(false)) => return SaveOutcome::Crashed,
    }
    profiles.save(hold, &browser.dir, &cookies).await
}

/// Restores cookies that have no expiry (Chrome forgets them at exit) into a browser.
pub(crate) async fn restore_session_cookies(browser: &Browser, cookies: &[Value]) -> Result<(), cdp::CdpError> {
    if cookies.is_empty() {
        return Ok(());
    }
    // The saved cookies are session ones: they stay so (no expiry given).
    let params: Vec<Value> = cookies.iter().filter_map(snapshot::settable).collect();
    let url = browser.ws_url();
    cdp::command(&url, "Storage.setCookies", json!({ "cookies": params }))
        .await
        .map(|_| ())
}

/// The browser's cookies that have no expiry.
async fn session_cookies(browser: &Browser) -> Vec<Value> {
    let url = browser.ws_url();
    match cdp::command(&url, "Storage.getCookies", json!({})).await {
        Ok(result) => result["cookies"]
            .as_array()
            .map(|all| all.iter().filter(|c| c["session"] == true).cloned().collect())
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read session cookies");
            Vec::new()
        }
    }
}
