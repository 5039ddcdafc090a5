//! A live browser's (or browser context's) state as a fork takes it, and the same state
//! put into another: its cookies (session cookies too) and its open web tabs, each with its
//! URL, scroll position and its page's localStorage and sessionStorage.
//!
//! Reading happens on the broker's own connection by attaching to the pages that are open,
//! in an isolated world of the broker's: no tab is opened, nothing navigates, nothing runs
//! in the page's own world (whose scripts could forge what is read), so the session's own
//! clients see nothing. Writing opens the tabs in the new browser with the storage put in
//! place by a script that runs before the page's own, so a page that reads its login at
//! load finds it.

use std::time::Duration;

use serde_json::{Value, json};

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::cdp::{CdpError, Connection};

/// Told once a tab's navigation is about to be sent (or why it will not be).
type Started = oneshot::Sender<Result<(), CdpError>>;

/// What a fork carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// As `Storage.setCookies` takes them.
    pub cookies: Vec<Value>,
    pub tabs: Vec<Tab>,
}

/// One open web tab.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tab {
    pub url: String,
    pub scroll_x: f64,
    pub scroll_y: f64,
    /// Its page's origin's localStorage, and its own sessionStorage (name, value).
    pub local_storage: Vec<(String, String)>,
    pub session_storage: Vec<(String, String)>,
}

impl Snapshot {
    /// Tabs whose page had localStorage, and had sessionStorage.
    pub(crate) fn storage_counts(&self) -> (usize, usize) {
        let local = self.tabs.iter().filter(|t| !t.local_storage.is_empty()).count();
        let session = self.tabs.iter().filter(|t| !t.session_storage.is_empty()).count();
        (local, session)
    }
}

/// Most storage a fork carries, in characters of keys and values summed over every tab's
/// localStorage and sessionStorage: each is copied into every fork's tab, so a source's
/// tabs must not make the broker hold gigabytes.
pub(crate) const MAX_STORAGE_CHARS: usize = 8 * 1024 * 1024;

/// Read in an isolated world of the broker's, where the page's scripts cannot change what
/// `JSON`, `Object` or `Storage` do (so a page can neither forge what a fork carries nor
/// swell it past its real storage); key by key, since a key named as one of `Storage`'s own
/// properties (`length`, `getItem`, `__proto__`) is no own property to list. A storage the
/// page may not use reads as empty; past `budget` characters only the size is answered.
const READ_PAGE: &str = r#"(budget => {
  const read = get => { try { const s = get(), out = [];
    for (let i = 0; i < s.length; i++) { const k = s.key(i); out.push([k, s.getItem(k)]); }
    return out; } catch (e) { return []; } };
  const local = read(() => localStorage), session = read(() => sessionStorage);
  let size = 0;
  for (const [k, v] of local.concat(session)) size += k.length + v.length;
  if (size > budget) return JSON.stringify({ size });
  return JSON.stringify({ x: scrollX, y: scrollY, local, session, size });
})"#;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Browser(#[from] CdpError),
    #[error("its tabs hold more than {MAX_STORAGE_CHARS} characters of storage")]
    TooMuchStorage,
}

/// How long a restored tab's page may take to load before it is scrolled all the same.
const LOAD_WAIT: Duration = Duration::from_secs(5);

/// The state of the browser at `ws_url` (its default context) or of its `context`.
pub(crate) async fn read(ws_url: &str, context: Option<&str>) -> Result<Snapshot, ReadError> {
    let mut conn = open(ws_url, context).await?;
    let found = conn.call(None, "Storage.getCookies", json!({})).await?;
    let cookies = found["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(settable)
        .collect();
    let mut tabs = Vec::new();
    let mut budget = MAX_STORAGE_CHARS;
    for (target, url) in pages(&mut conn, context).await? {
        if !is_web(&url) {
            continue;
        }
        let attached = conn
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        // A tab closed since the list was read is not carried.
        let Ok(attached) = attached else { continue };
        let session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
        let read = read_page(&mut conn, &session, &target, budget).await;
        let _ = conn
            .call(None, "Target.detachFromTarget", json!({ "sessionId": session }))
            .await;
        let page: Value = serde_json::from_str(read?.as_str().unwrap_or("{}")).unwrap_or_default();
        let size = page["size"].as_u64().unwrap_or(0) as usize;
        if size > budget {
            return Err(ReadError::TooMuchStorage);
        }
        budget -= size;
        tabs.push(Tab {
            url,
            scroll_x: page["x"].as_f64().unwrap_or(0.0),
            scroll_y: page["y"].as_f64().unwrap_or(0.0),
            local_storage: pairs(&page["local"]),
            session_storage: pairs(&page["session"]),
        });
    }
    Ok(Snapshot { cookies, tabs })
}

/// The storage and scroll of the page of `session` (the tab `target`), read in a world
/// of the broker's own.
async fn read_page(conn: &mut Connection, session: &str, target: &str, budget: usize) -> Result<Value, CdpError> {
    let world = conn
        .call(
            Some(session),
            "Page.createIsolatedWorld",
            json!({ "frameId": target, "worldName": "cdpgate-fork" }),
        )
        .await?;
    let params = json!({
        "expression": format!("{READ_PAGE}({budget})"),
        "contextId": world["executionContextId"],
        "returnByValue": true,
    });
    let result = conn.call(Some(session), "Runtime.evaluate", params).await?;
    Ok(result["result"]["value"].clone())
}

/// How far a write goes before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TabsReady {
    /// Every tab loaded (or given up on after `LOAD_WAIT`) and scrolled.
    #[default]
    Loaded,
    /// Every tab's storage script in place and its navigation about to be sent; the loads
    /// and scrolls go on in the background, each on its own connection, which ends with
    /// them (or with the browser context, should the session end first).
    Started,
}

/// Puts `snapshot` into the fresh browser at `ws_url` (its default context) or its
/// `context`: the cookies, then each tab (the first in the tab already open) loaded and
/// scrolled, waited for as `ready` says. The tabs are opened in order, then restored at
/// once, each on a connection of its own: a tab's time is mostly its page's load, which
/// the others need not wait for. Restores that go on after the answer are `tracker`'s.
pub(crate) async fn write(
    ws_url: &str,
    context: Option<&str>,
    snapshot: &Snapshot,
    ready: TabsReady,
    tracker: &TaskTracker,
) -> Result<(), CdpError> {
    let mut conn = open(ws_url, context).await?;
    if !snapshot.cookies.is_empty() {
        conn.call(None, "Storage.setCookies", json!({ "cookies": snapshot.cookies }))
            .await?;
    }
    let first = pages(&mut conn, context).await?.into_iter().next().map(|(id, _)| id);
    // New tabs get the first one's window: the session's screen.
    let mut size = json!({ "width": null });
    if let Some(first) = &first
        && snapshot.tabs.len() > 1
        && let Ok(window) = conn
            .call(None, "Browser.getWindowForTarget", json!({ "targetId": first }))
            .await
    {
        size = json!({ "width": window["bounds"]["width"], "height": window["bounds"]["height"] });
    }
    let mut targets = Vec::with_capacity(snapshot.tabs.len());
    for i in 0..snapshot.tabs.len() {
        let target = match (&first, i) {
            (Some(first), 0) => first.clone(),
            _ => {
                let blank = json!({ "url": "about:blank" });
                let mut sized = blank.clone();
                sized["width"] = size["width"].clone();
                sized["height"] = size["height"].clone();
                // Chromium proper puts a new tab in the window it has (sized already) and
                // refuses a size there; the headless shell sizes each tab.
                let created = match conn.call(None, "Target.createTarget", sized).await {
                    Err(CdpError::Refused { .. }) => conn.call(None, "Target.createTarget", blank).await?,
                    other => other?,
                };
                created["targetId"].as_str().unwrap_or_default().to_owned()
            }
        };
        targets.push(target);
    }
    if ready == TabsReady::Started {
        return start_tabs(ws_url, context, conn, snapshot, targets, tracker).await;
    }
    let mut tabs = snapshot.tabs.iter().zip(&targets);
    let Some((first_tab, first_target)) = tabs.next() else {
        return Ok(());
    };
    let others = tabs.map(|(tab, target)| async move {
        let mut own = open(ws_url, context).await?;
        write_tab(&mut own, target, tab, &mut None).await
    });
    let mut untold = None;
    let (first_written, others) = tokio::join!(
        write_tab(&mut conn, first_target, first_tab, &mut untold),
        futures_util::future::join_all(others)
    );
    first_written?;
    others.into_iter().collect()
}

/// Restores every tab in a task of its own on `tracker` (the first on `conn`), so that a
/// stopping broker waits for them, and answers once each has reached its navigation, or
/// with the first error before that.
async fn start_tabs(
    ws_url: &str,
    context: Option<&str>,
    conn: Connection,
    snapshot: &Snapshot,
    targets: Vec<String>,
    tracker: &TaskTracker,
) -> Result<(), CdpError> {
    let mut conn = Some(conn);
    let mut started = Vec::with_capacity(targets.len());
    for (tab, target) in snapshot.tabs.iter().cloned().zip(targets) {
        let (tell, told) = oneshot::channel();
        let own = conn.take();
        let (ws_url, context) = (ws_url.to_owned(), context.map(str::to_owned));
        tracker.spawn(async move {
            let mut tell = Some(tell);
            let written = async {
                let mut conn = match own {
                    Some(conn) => conn,
                    None => open(&ws_url, context.as_deref()).await?,
                };
                write_tab(&mut conn, &target, &tab, &mut tell).await
            }
            .await;
            match (written, tell) {
                (Err(e), Some(tell)) => {
                    let _ = tell.send(Err(e));
                }
                (Err(e), None) => tracing::debug!(error = %e, url = %tab.url, "a forked tab's load was cut short"),
                _ => {}
            }
        });
        started.push(told);
    }
    for told in started {
        told.await
            .unwrap_or_else(|_| Err(CdpError::Protocol("a tab's restore stopped".into())))?;
    }
    Ok(())
}

/// Restores `tab` into the page `target` on `conn`.
/// `started`, if given, is told once the tab's navigation is about to be sent.
async fn write_tab(
    conn: &mut Connection,
    target: &str,
    tab: &Tab,
    started: &mut Option<Started>,
) -> Result<(), CdpError> {
    let attached = conn
        .call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )
        .await?;
    let session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
    restore_tab(conn, &session, tab, started).await?;
    let _ = conn
        .call(None, "Target.detachFromTarget", json!({ "sessionId": session }))
        .await;
    Ok(())
}

/// Loads `tab` in the page of `session` with its storage in place before the page's own
/// scripts run, then scrolls it once it has loaded.
async fn restore_tab(
    conn: &mut Connection,
    session: &str,
    tab: &Tab,
    started: &mut Option<Started>,
) -> Result<(), CdpError> {
    let origin = url::Url::parse(&tab.url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let data = |v: &Vec<(String, String)>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    // Only in the tab's top document at its origin: a frame or a redirect elsewhere gets none.
    let source = format!(
        "(() => {{ if (window !== window.top || location.origin !== {origin}) return; \
         try {{ for (const [k, v] of {local}) localStorage.setItem(k, v); \
         for (const [k, v] of {session}) sessionStorage.setItem(k, v); }} catch (e) {{}} }})()",
        origin = json!(origin),
        local = data(&tab.local_storage),
        session = data(&tab.session_storage),
    );
    // Chrome runs a session's scripts on new documents only while its Page domain is on.
    conn.call(Some(session), "Page.enable", json!({})).await?;
    let added = conn
        .call(
            Some(session),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": source }),
        )
        .await?;
    if let Some(started) = started.take() {
        let _ = started.send(Ok(()));
    }
    // A page that fails to load stays on Chrome's error page, as it would in the source.
    conn.call(Some(session), "Page.navigate", json!({ "url": tab.url }))
        .await?;
    let settle = format!(
        "new Promise(done => {{ const t0 = Date.now(); const tick = () => {{ \
         if ((location.href !== 'about:blank' && document.readyState === 'complete') || Date.now() - t0 > {wait}) \
         {{ scrollTo({x}, {y}); done(true); }} else setTimeout(tick, 10); }}; tick(); }})",
        wait = LOAD_WAIT.as_millis(),
        x = tab.scroll_x,
        y = tab.scroll_y,
    );
    // The document may still be replaced (a commit after the answer, a redirect): its
    // context then goes away under the evaluation, which is tried again in the new one.
    let mut tries = 0;
    loop {
        let params = json!({ "expression": settle, "awaitPromise": true, "returnByValue": true });
        match conn.call(Some(session), "Runtime.evaluate", params).await {
            Ok(_) => break,
            Err(CdpError::Refused { .. }) if tries < 5 => tries += 1,
            Err(e) => return Err(e),
        }
    }
    let _ = conn
        .call(
            Some(session),
            "Page.removeScriptToEvaluateOnNewDocument",
            json!({ "identifier": added["identifier"] }),
        )
        .await;
    Ok(())
}

async fn open(ws_url: &str, context: Option<&str>) -> Result<Connection, CdpError> {
    match context {
        Some(context) => Connection::open_in(ws_url, context).await,
        None => Connection::open(ws_url).await,
    }
}

/// The page targets (id, URL) of `context`, or of the default context: a process session's
/// client may make contexts of its own, whose cookies a fork does not carry either.
async fn pages(conn: &mut Connection, context: Option<&str>) -> Result<Vec<(String, String)>, CdpError> {
    let context = match context {
        Some(c) => Some(c.to_owned()),
        None => conn
            .call(None, "Target.getBrowserContexts", json!({}))
            .await?
            .get("defaultBrowserContextId")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    let targets = conn.call(None, "Target.getTargets", json!({})).await?;
    Ok(targets["targetInfos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "page")
        .filter(|t| context.as_ref().is_none_or(|c| t["browserContextId"] == c.as_str()))
        .filter_map(|t| Some((t["targetId"].as_str()?.to_owned(), t["url"].as_str()?.to_owned())))
        .collect())
}

fn is_web(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
        .collect()
}

/// A cookie as `Storage.getCookies` answers it, as `Storage.setCookies` takes it: a session
/// cookie stays one (no expiry). One partitioned under an opaque key cannot be set again.
pub(crate) fn settable(c: &Value) -> Option<Value> {
    if c["partitionKeyOpaque"] == true {
        return None;
    }
    let mut p = serde_json::Map::new();
    for key in [
        "name",
        "value",
        "domain",
        "path",
        "secure",
        "httpOnly",
        "sameSite",
        "priority",
        "sourceScheme",
        "sourcePort",
        "partitionKey",
    ] {
        if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
            p.insert(key.into(), v.clone());
        }
    }
    if c["session"] != true
        && let Some(expires) = c["expires"].as_f64().filter(|e| *e > 0.0)
    {
        p.insert("expires".into(), json!(expires));
    }
    Some(Value::Object(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_stay_session_cookies() {
        let read = json!({"name": "sid", "value": "v", "domain": "127.0.0.1", "path": "/", "expires": -1,
            "size": 4, "httpOnly": true, "secure": false, "session": true, "priority": "Medium",
            "sourceScheme": "NonSecure", "sourcePort": 8080});
        let set = settable(&read).unwrap();
        assert!(set.get("expires").is_none() && set.get("size").is_none() && set.get("session").is_none());
        assert_eq!((&set["httpOnly"], &set["sourcePort"]), (&json!(true), &json!(8080)));
        let lasting =
            json!({"name": "a", "value": "b", "domain": "x.test", "path": "/", "expires": 2e9, "session": false});
        assert_eq!(settable(&lasting).unwrap()["expires"], json!(2e9));
        assert!(settable(&json!({"name": "p", "partitionKeyOpaque": true})).is_none());
    }

    #[test]
    fn storage_pairs_skip_what_is_not_text() {
        let v = json!([["a", "1"], ["b", 2], ["c"], "d", ["e", "5"]]);
        assert_eq!(pairs(&v), vec![("a".into(), "1".into()), ("e".into(), "5".into())]);
        assert!(is_web("http://127.0.0.1:9/x") && !is_web("about:blank") && !is_web("chrome://newtab/"));
    }
}
