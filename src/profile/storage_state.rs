//! Playwright's `storageState` (cookies, and localStorage by origin) in and out of a
//! profile, so users can move logins between cdpgate and their own scripts.
//!
//! Both directions run in a browser started on the profile: cookies through `Storage`,
//! localStorage by opening a page at each origin, served locally through `Fetch` since
//! the network may be closed.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::browser::cdp::{CdpError, Connection};

/// Limits on an imported document. Each origin's localStorage is written by opening a page
/// at it (a few hundred ms each on a busy machine), so origins are few enough that an
/// import ends well within its deadline (`storage_state_timeout_ms`).
const MAX_COOKIES: usize = 3000;
pub(crate) const MAX_ORIGINS: usize = 50;

/// Limits on an exported document: the origins whose localStorage is read (one page each,
/// opened and closed in turn; those holding storage on disk and those the pages showed or
/// reached first, cookies' domains after), and the localStorage bytes read in all. A
/// session's pages can set cookies on thousands of domains and fill each origin's storage.
const MAX_EXPORT_ORIGINS: usize = 256;
const MAX_EXPORT_STORAGE_BYTES: usize = 64 << 20;

/// Checks an imported document and answers what is wrong with it, if anything.
pub(crate) fn validate(state: &Value) -> Result<(), String> {
    let obj = state.as_object().ok_or("storage_state must be a JSON object")?;
    let cookies = obj
        .get("cookies")
        .map(|c| c.as_array().ok_or("cookies must be an array"))
        .transpose()?;
    for (i, c) in cookies.into_iter().flatten().enumerate() {
        if !(c["name"].is_string() && c["value"].is_string() && c["domain"].is_string()) {
            return Err(format!("cookies[{i}] needs string name, value and domain"));
        }
    }
    if cookies.is_some_and(|c| c.len() > MAX_COOKIES) {
        return Err(format!("at most {MAX_COOKIES} cookies"));
    }
    let origins = obj
        .get("origins")
        .map(|o| o.as_array().ok_or("origins must be an array"))
        .transpose()?;
    if origins.is_some_and(|o| o.len() > MAX_ORIGINS) {
        return Err(format!("at most {MAX_ORIGINS} origins"));
    }
    for (i, o) in origins.into_iter().flatten().enumerate() {
        let origin = o["origin"]
            .as_str()
            .ok_or(format!("origins[{i}].origin must be a string"))?;
        if !is_origin(origin) {
            return Err(format!(
                "origins[{i}].origin must be an origin such as https://example.com: http or https, a \
                 host name or an IP address, an optional port, and no path, wildcard or credentials"
            ));
        }
        // Absent or null: none.
        let items = match &o["localStorage"] {
            Value::Null => &Vec::new(),
            v => v
                .as_array()
                .ok_or(format!("origins[{i}].localStorage must be an array"))?,
        };
        if items
            .iter()
            .any(|it| !(it["name"].is_string() && it["value"].is_string()))
        {
            return Err(format!("origins[{i}].localStorage entries need string name and value"));
        }
    }
    Ok(())
}

/// `scheme://host[:port]` for http or https, in any case, and nothing more: the host a DNS
/// name (letters, digits, `-`, `_`; IDNs as their punycode) or an IP address. The URL
/// parser takes more as a host (`a.b.c*`), which Chrome then refuses to open.
fn is_origin(s: &str) -> bool {
    let Ok(url) = url::Url::parse(s) else { return false };
    let host_ok = match url.host() {
        Some(url::Host::Domain(name)) => is_dns_name(name),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    };
    matches!(url.scheme(), "http" | "https")
        && host_ok
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && !s.ends_with('/')
        && url.query().is_none()
        && url.fragment().is_none()
}

fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn canonical_origin(s: &str) -> Option<String> {
    let url = url::Url::parse(s).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
}

/// Reads the storage state of the browser (or the context) behind `conn`, whose user data
/// is `user_data` (none for a context: its storage is in memory). localStorage is read for
/// the origins of its cookies, of its open pages, those found on disk and those its pages
/// `reached` (as its gateway saw them). Past `until` no further origin is read: what was
/// read so far, the cookies with it, is the answer (a save that would otherwise be lost).
pub(crate) async fn export(
    conn: &mut Connection,
    user_data: &Path,
    reached: &[String],
    until: Option<tokio::time::Instant>,
) -> Result<Value, CdpError> {
    let all = conn.call(None, "Storage.getCookies", json!({})).await?;
    let mut cookies = Vec::new();
    let mut candidates = Candidates::default();
    // The pages' own origins first, then those they reached, then those with storage on
    // disk: past the cap, the origins a cookie flood names are the ones left out.
    candidates.extend(conn.page_origins().await?);
    candidates.extend(reached.iter().filter_map(|o| canonical_origin(o)));
    candidates.extend(origins_on_disk(user_data));
    for c in all["cookies"].as_array().into_iter().flatten() {
        let domain = c["domain"].as_str().unwrap_or_default();
        let host = domain.trim_start_matches('.');
        for scheme in ["https", "http"] {
            candidates.extend(canonical_origin(&format!("{scheme}://{host}")));
        }
        cookies.push(json!({
            "name": c["name"],
            "value": c["value"],
            "domain": domain,
            "path": c["path"],
            "expires": if c["session"] == true { json!(-1) } else { c["expires"].clone() },
            "httpOnly": c["httpOnly"],
            "secure": c["secure"],
            "sameSite": c.get("sameSite").cloned().unwrap_or(json!("Lax")),
        }));
    }
    let mut origins = Vec::new();
    let mut storage_bytes = 0;
    for origin in candidates.in_order {
        if until.is_some_and(|until| tokio::time::Instant::now() >= until) {
            tracing::warn!(
                origins = origins.len(),
                "storage state export: out of time, the origins not read yet left out"
            );
            break;
        }
        let Ok(page) = conn.page_at(&origin).await else {
            conn.close_pages().await;
            continue;
        };
        let entries = conn
            .evaluate(&page, "JSON.stringify(Object.entries(localStorage))")
            .await;
        // One tab at a time, however many origins.
        conn.close_pages().await;
        let entries = entries?;
        let entries = entries.as_str().unwrap_or("[]");
        if storage_bytes + entries.len() > MAX_EXPORT_STORAGE_BYTES {
            tracing::warn!(
                origin,
                "storage state export: this origin's localStorage would pass {MAX_EXPORT_STORAGE_BYTES} bytes in all, left out"
            );
            continue;
        }
        storage_bytes += entries.len();
        let entries: Vec<(String, String)> = serde_json::from_str(entries).unwrap_or_default();
        if !entries.is_empty() {
            let items: Vec<Value> = entries
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            origins.push(json!({ "origin": origin, "localStorage": items }));
        }
    }
    Ok(json!({ "cookies": cookies, "origins": origins }))
}

/// The origins an export reads, in the order they came, each once, at most
/// `MAX_EXPORT_ORIGINS`.
#[derive(Default)]
struct Candidates {
    seen: BTreeSet<String>,
    in_order: Vec<String>,
}

impl Extend<String> for Candidates {
    fn extend<I: IntoIterator<Item = String>>(&mut self, origins: I) {
        for origin in origins {
            if self.in_order.len() >= MAX_EXPORT_ORIGINS {
                return;
            }
            if self.seen.insert(origin.clone()) {
                self.in_order.push(origin);
            }
        }
    }
}

/// Writes a (validated) storage state into the browser behind `conn`.
pub(crate) async fn import(conn: &mut Connection, state: &Value) -> Result<(), CdpError> {
    let cookies: Vec<Value> = state["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut p = Map::new();
            for key in ["name", "value", "domain", "path", "httpOnly", "secure", "sameSite"] {
                if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
                    p.insert(key.into(), v.clone());
                }
            }
            if let Some(expires) = c["expires"].as_f64().filter(|e| *e > 0.0) {
                p.insert("expires".into(), json!(expires));
            }
            Value::Object(p)
        })
        .collect();
    if !cookies.is_empty() {
        conn.call(None, "Storage.setCookies", json!({ "cookies": cookies }))
            .await?;
    }
    for o in state["origins"].as_array().into_iter().flatten() {
        // Validated: an http(s) origin, perhaps not in canonical form ("HTTP://Example.com:80").
        let origin = canonical_origin(o["origin"].as_str().unwrap_or_default()).unwrap_or_default();
        let page = conn.page_at(&origin).await?;
        let pairs: Vec<(&str, &str)> = o["localStorage"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|it| Some((it["name"].as_str()?, it["value"].as_str()?)))
            .collect();
        let script = format!(
            "for (const [k, v] of {}) localStorage.setItem(k, v); true",
            serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
        );
        conn.evaluate(&page, &script).await?;
        // One tab at a time, however many origins.
        conn.close_pages().await;
    }
    Ok(())
}

/// Origins that have localStorage in a Chrome profile, read from the keys of its
/// LevelDB files (`META:<origin>` and `_<origin>\0<key>`).
fn origins_on_disk(user_data: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let dir = user_data.join("Default").join("Local Storage").join("leveldb");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        for start in memchr_all(&bytes, b"http") {
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || b"-.:/[]".contains(b)))
                .map_or(bytes.len(), |n| start + n);
            let prefix_ok = start >= 1 && (bytes[start - 1] == b'_' || bytes[..start].ends_with(b"META:"));
            if let (true, Ok(candidate)) = (prefix_ok, std::str::from_utf8(&bytes[start..end]))
                && let Some(origin) = canonical_origin(candidate)
                && origin == candidate
            {
                found.insert(origin);
            }
        }
    }
    found
}

fn memchr_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's pages can set cookies on thousands of domains: an export reads at most
    /// `MAX_EXPORT_ORIGINS`, those with storage on disk and those its pages showed first.
    #[test]
    fn an_export_reads_a_bounded_set_of_origins_those_that_matter_first() {
        let mut candidates = Candidates::default();
        candidates.extend(["https://disk.test".to_owned()]);
        candidates.extend(["https://page.test".to_owned(), "https://disk.test".to_owned()]);
        candidates.extend((0..5000).map(|i| format!("https://c{i}.test")));
        assert_eq!(candidates.in_order.len(), MAX_EXPORT_ORIGINS);
        assert_eq!(
            candidates.in_order[..3],
            ["https://disk.test", "https://page.test", "https://c0.test"]
        );
    }

    #[test]
    fn documents_are_checked() {
        assert!(validate(&json!({"cookies": [], "origins": []})).is_ok());
        assert!(validate(&json!({"cookies": [{"name": "a", "value": "b", "domain": "x.test", "path": "/"}]})).is_ok());
        assert!(validate(&json!([])).is_err());
        assert!(validate(&json!({"cookies": [{"name": "a"}]})).is_err());
        assert!(validate(&json!({"origins": [{"origin": "https://x.test/path", "localStorage": []}]})).is_err());
        assert!(validate(&json!({"origins": [{"origin": "javascript:alert(1)", "localStorage": []}]})).is_err());
        assert!(validate(&json!({"origins": [{"origin": "https://user@x.test", "localStorage": []}]})).is_err());
        for bad in [
            "HTTP://a.b.c*",
            "https://*.x.test",
            "https://x.test/*",
            "https://-x.test",
            "https://x..test",
            "ftp://x.test",
            "https://x.test:99999",
            "https://x.test?q",
        ] {
            let err = validate(&json!({"origins": [{"origin": bad, "localStorage": []}]})).unwrap_err();
            assert!(err.contains("origins[0].origin"), "{bad}: {err}");
        }
        for good in [
            "https://x.test:8443",
            "http://[::1]:80",
            "https://Bücher.example",
            "http://_dmarc.x.test",
        ] {
            assert!(validate(&json!({"origins": [{"origin": good}]})).is_ok(), "{good}");
        }
        let many: Vec<Value> = (0..=MAX_ORIGINS)
            .map(|i| json!({"origin": format!("https://o{i}.test")}))
            .collect();
        let err = validate(&json!({ "origins": many })).unwrap_err();
        assert!(err.contains("at most 50 origins"), "{err}");
        // Not canonical, still an origin: imported as https://x.test.
        assert!(validate(&json!({"origins": [{"origin": "HTTPS://X.test:443", "localStorage": []}]})).is_ok());
        assert!(
            validate(&json!({"origins": [{"origin": "http://127.0.0.1:8080", "localStorage": [{"name": "k"}]}]}))
                .is_err()
        );
        assert!(validate(&json!({"origins": [{"origin": "http://127.0.0.1:8080", "localStorage": [{"name": "k", "value": "v"}]}]})).is_ok());
    }

    #[test]
    fn origins_are_found_in_leveldb_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ls = dir.path().join("Default/Local Storage/leveldb");
        std::fs::create_dir_all(&ls).unwrap();
        let mut log = b"\x01\x02META:http://127.0.0.1:4321\x08\x10_http://127.0.0.1:4321\x00\x01user".to_vec();
        log.extend_from_slice(b"junk http://not-a-key.test more _https://b.test\x00\x01k");
        std::fs::write(ls.join("000003.log"), log).unwrap();
        let found: Vec<String> = origins_on_disk(dir.path()).into_iter().collect();
        assert_eq!(found, vec!["http://127.0.0.1:4321", "https://b.test"]);
    }
}
