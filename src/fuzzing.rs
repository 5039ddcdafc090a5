//! Entry points for the fuzz targets under `fuzz/` (cargo-fuzz), also replayed over the
//! kept corpus by `tests/fuzz_corpus.rs`. Each takes untrusted bytes the way the broker
//! meets them and checks a property beyond "does not panic" where one exists.

use serde_json::{Map, Value};

use crate::action::{instruction, keys};
use crate::auth::{Scope, Tokens};
use crate::config::Config;
use crate::proxy::relay::FrameCursor;

/// A request body as every endpoint reads it: create, update, run-action, storage state,
/// plus the query string of a list. What a validator accepts is within every limit it
/// names: a TTL of 1 s to `max_ttl`, a screen within bounds, metadata within its size and
/// without the broker's own keys, header-safe identity strings, a lower-case profile UUID
/// never beside a `cdp_url`; and a query string reads back the same once written again.
pub fn request_body(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let pairs = crate::http::request::query_pairs(text);
        let written = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pairs)
            .finish();
        assert_eq!(
            crate::http::request::query_pairs(&written),
            pairs,
            "a query string read, written and read again changed: {text:?}"
        );
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let config = Config::default();
    if let Ok(new) = crate::http::sessions::validate_create(&config, &body) {
        check_new_session(&config, &new);
    }
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    if let Some(v) = field("ttl")
        && let Ok(ttl) = crate::http::sessions::parse_ttl(v, config.max_ttl)
    {
        assert!((1..=config.max_ttl).contains(&ttl.as_secs()), "ttl {ttl:?} from {v}");
    }
    if let Some(v) = field("metadata")
        && let Ok(metadata) = crate::http::sessions::parse_metadata(v, config.max_metadata_bytes)
    {
        check_metadata(&config, &metadata);
    }
    let _ = crate::http::actions::validate_body(&body);
    let _ = crate::profile::storage_state::validate(&Value::Object(body.clone()));
    if let Some(state) = field("storage_state") {
        let _ = crate::profile::storage_state::validate(state);
    }
}

/// What `validate_create` accepted is within the limits it enforces.
fn check_new_session(config: &Config, new: &crate::broker::NewSession) {
    use crate::config::{MAX_HEIGHT, MAX_WIDTH, MIN_SIDE};
    assert!((1..=config.max_ttl).contains(&new.ttl.as_secs()), "ttl {:?}", new.ttl);
    let screen = new.screen;
    assert!(
        (MIN_SIDE..=MAX_WIDTH).contains(&screen.width) && (MIN_SIDE..=MAX_HEIGHT).contains(&screen.height),
        "screen {}x{}",
        screen.width,
        screen.height
    );
    check_metadata(config, &new.metadata);
    assert!(
        new.profile_id.is_none() || new.external_url.is_none(),
        "a profile beside a cdp_url"
    );
    if let Some(id) = &new.profile_id {
        assert!(
            id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase()),
            "profile id {id:?}"
        );
    }
    assert!(new.options.idle_timeout <= config.max_ttl, "idle_timeout");
    let identity = &new.options.identity;
    for text in [&identity.user_agent, &identity.locale, &identity.timezone]
        .into_iter()
        .flatten()
    {
        // These reach HTTP headers and Chrome's command channel.
        assert!(
            !text.is_empty() && !text.chars().any(char::is_control),
            "identity string {text:?}"
        );
    }
}

fn check_metadata(config: &Config, metadata: &Map<String, Value>) {
    assert!(
        !metadata.contains_key("live_url") && !metadata.contains_key("live_url_read_only"),
        "a planted live view link was kept"
    );
    let size = serde_json::to_vec(metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    assert!(size <= config.max_metadata_bytes, "metadata of {size} bytes");
}

/// The secret the `token` target signs with.
const FUZZ_TOKEN_SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-0123456789";

/// A token from a URL: never accepted unless this broker signed it. Beyond the raw text,
/// a token this broker did sign is spliced with the bytes inside its signed part (its
/// header and claims): any change there is refused, and the token itself opens its own
/// session and scope only.
pub fn token(data: &[u8]) {
    use std::time::{Duration, SystemTime};
    let tokens = Tokens::new(FUZZ_TOKEN_SECRET);
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            tokens.decode(Some(text)).is_err(),
            "a token not signed here was accepted: {text:?}"
        );
        assert!(
            tokens.verify(Some(text), "sess_x", Scope::Cdp).is_err(),
            "a token not signed here was verified: {text:?}"
        );
    }
    let now = SystemTime::now();
    let signed = tokens.mint(
        "sess_x",
        &crate::auth::Tenant::from_id("t_fuzz"),
        Scope::Cdp,
        now,
        now + Duration::from_secs(600),
    );
    assert!(
        tokens.verify(Some(&signed), "sess_x", Scope::Cdp).is_ok(),
        "our own token"
    );
    assert!(
        tokens.verify(Some(&signed), "sess_y", Scope::Cdp).is_err(),
        "another session"
    );
    assert!(
        tokens.verify(Some(&signed), "sess_x", Scope::Live).is_err(),
        "another scope"
    );
    // Splice: the first byte picks where in the signed part, the first bit of the second
    // whether the rest replaces a byte or is inserted.
    let Some((&at, rest)) = data.split_first() else { return };
    let Some((&how, insert)) = rest.split_first() else {
        return;
    };
    let Ok(insert) = std::str::from_utf8(insert) else {
        return;
    };
    let signed_part = signed.rfind('.').unwrap_or(0);
    let mut at = usize::from(at) * signed_part / 256;
    while !signed.is_char_boundary(at) {
        at += 1;
    }
    let skip = if how & 1 == 1 && at < signed_part { 1 } else { 0 };
    let changed = format!("{}{insert}{}", &signed[..at], &signed[at + skip..]);
    if changed != signed {
        assert!(
            tokens.verify(Some(&changed), "sess_x", Scope::Cdp).is_err(),
            "a changed token was accepted: {changed:?}"
        );
    }
}

/// A browser's discovery answer: after the rewrite no value names the browser's own port.
pub fn discovery(data: &[u8]) {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let rewriter = crate::proxy::discovery::Rewriter {
        chrome: "127.0.0.1:9222",
        public_ws: "wss://broker.example",
        session_id: "sess_1",
        token: "tok",
    };
    rewriter.rewrite(&mut value);
    fn check(v: &Value) {
        match v {
            Value::String(s) => assert!(!s.contains("127.0.0.1:9222"), "left pointing at the browser: {s:?}"),
            Value::Array(items) => items.iter().for_each(check),
            Value::Object(map) => map.values().for_each(check),
            _ => {}
        }
    }
    check(&value);
}

/// WebSocket frames: read whole or in any pieces, the cursor sees the same headers and the
/// same verdict, and `boundary_within` agrees with `advance`.
pub fn frames(data: &[u8]) {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let limit = 1 << 20;
    let mut whole = FrameCursor::default();
    let mut seen_whole = Vec::new();
    let verdict_whole = whole.advance(bytes, limit, |h| seen_whole.push(h));

    let mut pieces = FrameCursor::default();
    let mut seen_pieces = Vec::new();
    let step = usize::from(split % 17) + 1;
    let mut verdict_pieces = Ok(());
    for chunk in bytes.chunks(step) {
        if let Some(n) = pieces.boundary_within(chunk) {
            let mut probe = pieces.clone();
            if probe.advance(&chunk[..n], u64::MAX, |_| {}).is_ok() {
                assert!(probe.at_boundary(), "boundary_within said {n} but the frame goes on");
            }
        }
        verdict_pieces = pieces.advance(chunk, limit, |h| seen_pieces.push(h));
        if verdict_pieces.is_err() {
            break;
        }
    }
    assert_eq!(verdict_whole, verdict_pieces);
    if verdict_whole.is_ok() {
        assert_eq!(seen_whole, seen_pieces);
    }
    one_context(bytes, step);
}

/// The one-context guard over client bytes read whole and in pieces finds the same methods
/// (it decides at a name's last byte, whatever came before it), rewrites only their names
/// (the pieces a subset of the same bytes, to the same values), and never panics.
fn one_context(bytes: &[u8], step: usize) {
    use crate::proxy::one_context::{OneContext, REPLACEMENT};
    let mut whole = bytes.to_vec();
    let found = OneContext::default().scan(&mut whole);
    let mut pieces = bytes.to_vec();
    let mut guard = OneContext::default();
    let found_in_pieces: usize = pieces.chunks_mut(step).map(|read| guard.scan(read)).sum();
    assert_eq!(found, found_in_pieces, "found whole and in reads of {step}");
    let changed = bytes.iter().zip(&whole).filter(|(a, b)| a != b).count();
    assert!(
        changed <= found * REPLACEMENT.len(),
        "{changed} bytes changed for {found} names"
    );
    for ((sent, once), piecewise) in bytes.iter().zip(&whole).zip(&pieces) {
        assert!(piecewise == sent || piecewise == once, "a byte no name covers changed");
    }
    // Every changed byte is a payload byte that, unmasked, was the refused name's and is
    // now the replacement's at the same place in the name; no header byte changes.
    let masks = payload_masks(bytes);
    for (i, (sent, now)) in bytes.iter().zip(&whole).enumerate().filter(|(_, (a, b))| a != b) {
        let mask = masks[i].unwrap_or_else(|| panic!("header byte {i} changed"));
        let (was, is) = (sent ^ mask, now ^ mask);
        assert!(
            (0..REPLACEMENT.len()).any(|k| crate::proxy::one_context::REFUSED[k] == was && REPLACEMENT[k] == is),
            "byte {i} went from {was:?} to {is:?}"
        );
    }
}

/// For each byte of a stream of frames, the mask byte it is read with if it is payload, or
/// `None` for a header byte (and everything past a frame that cannot be parsed).
fn payload_masks(bytes: &[u8]) -> Vec<Option<u8>> {
    use crate::proxy::frame::{header_len, parse_header};
    let mut masks = vec![None; bytes.len()];
    let mut at = 0;
    while at < bytes.len() {
        let len = header_len(&bytes[at..]);
        if at + len > bytes.len() {
            break;
        }
        let raw = &bytes[at..at + len];
        let Ok(header) = parse_header(raw) else { break };
        let key = if raw[1] & 0x80 != 0 {
            [raw[len - 4], raw[len - 3], raw[len - 2], raw[len - 1]]
        } else {
            [0; 4]
        };
        at += len;
        let end = (at as u64).saturating_add(header.len).min(bytes.len() as u64) as usize;
        for (j, mask) in masks[at..end].iter_mut().enumerate() {
            *mask = Some(key[j % 4]);
        }
        at = end;
    }
    masks
}

/// An action's instruction and variables: parsing never fails hard, filling without values
/// changes nothing, and keys parse or not without panicking.
pub fn instruction(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = instruction::parse(text);
    let _ = instruction::target(text);
    let _ = keys::parse(text);
    assert_eq!(instruction::fill(text, |_| None), text);
    for name in instruction::placeholders(text) {
        assert!(text.contains(&name));
    }
    let mut body = Map::new();
    body.insert("action".into(), Value::String(text.to_owned()));
    let _ = crate::http::actions::validate_body(&body);
}

/// A context session's CDP filter fed a script of client commands and browser messages
/// (built from the bytes: methods, ids, targets, sessions and contexts of the session's own
/// or of another context, download events of either, and raw text): nothing the client
/// sent reaches the browser naming the other context's target, context or session, nothing
/// of them (nor their downloads) reaches the client, no path the client chose reaches the
/// browser, and no path of the broker's reaches the client.
pub fn context_filter(data: &[u8]) {
    use crate::browser::filter::{Filter, Out, Root, Targets};
    use serde_json::json;
    use std::sync::Arc;

    const THEIRS: [&str; 5] = ["T-THEIRS", "CTX-THEIRS", "S-THEIRS", "G-THEIRS", "BROKER-PATH"];
    /// A path or a local URL a client chose: never in a command that reaches the browser
    /// (see `chooses_no_path`).
    const CLIENT_PATH: &str = "CLIENT-PATH";
    /// Methods whose parameters name paths or URLs (each given `CLIENT_PATH` in a form).
    const PATH_METHODS: [&str; 6] = [
        "Browser.setDownloadBehavior",
        "Page.setDownloadBehavior",
        "DOM.setFileInputFiles",
        "Input.dispatchDragEvent",
        "Target.createTarget",
        "Page.navigate",
    ];
    /// What of the client's input an output may carry back.
    enum Echo {
        None,
        ToClient(String),
        Both(String),
    }
    const METHODS: [&str; 28] = [
        "Page.setDownloadBehavior",
        "DOM.setFileInputFiles",
        "Input.dispatchDragEvent",
        "Page.getFrameTree",
        "Target.getTargets",
        "Target.attachToTarget",
        "Target.activateTarget",
        "Target.closeTarget",
        "Target.getTargetInfo",
        "Target.createTarget",
        "Target.detachFromTarget",
        "Target.setAutoAttach",
        "Target.setDiscoverTargets",
        "Target.autoAttachRelated",
        "Target.disposeBrowserContext",
        "Target.getBrowserContexts",
        "Target.sendMessageToTarget",
        "Target.exposeDevToolsProtocol",
        "Browser.close",
        "Browser.setDownloadBehavior",
        "Browser.grantPermissions",
        "Browser.getWindowForTarget",
        "Browser.setWindowBounds",
        "Storage.getCookies",
        "Storage.setCookies",
        "Runtime.evaluate",
        "Page.navigate",
        "SystemInfo.getInfo",
    ];
    let names = |b: u8, ours: &str, theirs: &str| match b % 4 {
        0 => None,
        1 => Some(ours.to_owned()),
        2 => Some(theirs.to_owned()),
        _ => Some("UNKNOWN".to_owned()),
    };
    let targets = Arc::new(Targets::default());
    targets.insert("T-OURS", "CTX-OURS");
    targets.insert("T-THEIRS", "CTX-THEIRS");
    let root = if data.first().is_some_and(|b| b & 1 == 1) {
        Root::Page
    } else {
        Root::Browser
    };
    let mut filter = Filter::new("CTX-OURS", root, targets)
        .with_download_dir("/SESSION-DOWNLOADS")
        .with_files_dir("/nonexistent-session-files".into());
    let mut rest = data.get(1..).unwrap_or_default();
    // The commands that reached the browser, by (session, id): what its answers may hold.
    let mut sent = std::collections::HashMap::<(Option<String>, i64), String>::new();
    while let [op, a, b, c, tail @ ..] = rest {
        rest = tail;
        let mut browser_text = None;
        let (outs, echo) = match op % 5 {
            // Raw text from the client, as it comes.
            0 => {
                let len = usize::from(*a).min(rest.len());
                let text = String::from_utf8_lossy(&rest[..len]).into_owned();
                rest = &rest[len..];
                (filter.on_client(&text, c & 1 == 1), Echo::Both(text))
            }
            // A command naming things of either context.
            1 => {
                let method = METHODS[usize::from(*c) % METHODS.len()];
                let mut params = serde_json::Map::new();
                // Page methods pass with whatever parameters they carry; the others may
                // name things of either context.
                let names_things = !(method.starts_with("Runtime.") || method.starts_with("Page."));
                for (key, value) in [
                    ("targetId", names(*b, "T-OURS", "T-THEIRS")),
                    ("sessionId", names(*b >> 2, "S-OURS", "S-THEIRS")),
                    ("browserContextId", names(*b >> 4, "CTX-OURS", "CTX-THEIRS")),
                ] {
                    if let Some(v) = value.filter(|_| names_things) {
                        params.insert(key.into(), json!(v));
                    }
                }
                params.insert("flatten".into(), json!(c & 2 == 2));
                params.insert("windowId".into(), json!(c >> 4));
                if PATH_METHODS.contains(&method) {
                    let path = format!("/tmp/../{CLIENT_PATH}");
                    let url = [
                        format!("file:///{CLIENT_PATH}"),
                        format!(" \tFILE:{CLIENT_PATH}"),
                        format!("view-source:file:///{CLIENT_PATH}"),
                        format!("chrome://{CLIENT_PATH}"),
                    ][usize::from(*b) % 4]
                        .clone();
                    let behavior = ["allow", "deny", "default", "allowAndName"][usize::from(*a) % 4];
                    params.insert("behavior".into(), json!(behavior));
                    params.insert("downloadPath".into(), json!(path));
                    params.insert("files".into(), json!([path]));
                    params.insert(
                        "data".into(),
                        json!({"items": [], "files": [path], "dragOperationsMask": 1}),
                    );
                    params.insert("url".into(), json!(url));
                }
                let mut message = json!({"id": a, "method": method, "params": params});
                if let Some(s) = names(*b >> 6, "S-OURS", "S-THEIRS") {
                    message["sessionId"] = json!(s);
                }
                let text = message.to_string();
                (filter.on_client(&text, c & 1 == 1), Echo::ToClient(text))
            }
            // A target event of either context, on the root or a session.
            2 => {
                let context = if b & 1 == 0 { "CTX-OURS" } else { "CTX-THEIRS" };
                let (target, session) = if b & 1 == 0 {
                    ("T-OURS", "S-OURS")
                } else {
                    ("T-THEIRS", "S-THEIRS")
                };
                let method = [
                    "targetCreated",
                    "targetInfoChanged",
                    "targetDestroyed",
                    "attachedToTarget",
                    "detachedFromTarget",
                ][usize::from(*a) % 5];
                let info = json!({"targetId": target, "type": "page", "browserContextId": context});
                let mut event = json!({"method": format!("Target.{method}"), "params": {
                    "targetInfo": info, "targetId": target, "sessionId": session, "waitingForDebugger": c & 1 == 1}});
                if let Some(s) = names(*c >> 1, "S-OURS", "S-THEIRS") {
                    event["sessionId"] = json!(s);
                }
                let text = event.to_string();
                browser_text = Some(text.clone());
                (filter.on_browser(&text), Echo::None)
            }
            // A download event of either context, on the root or a session: its beginning
            // (by a target's frame, a subframe seen in a page of ours, or one never seen),
            // or its progress with the broker's path.
            4 => {
                // A frame the filter cannot place counts as theirs: its download is not shown.
                let frame = ["T-OURS", "T-THEIRS", "F-OURS", "F-UNSEEN"][usize::from(*a) % 4];
                let ours = if b & 2 == 0 {
                    frame.ends_with("OURS")
                } else {
                    b & 1 == 0
                };
                let guid = if ours { "G-OURS" } else { "G-THEIRS" };
                let state = ["inProgress", "completed", "canceled"][usize::from(*c) % 3];
                let mut event = match b & 2 {
                    0 => json!({"method": "Browser.downloadWillBegin", "params": {
                        "frameId": frame, "guid": guid, "url": "https://x/", "suggestedFilename": "f"}}),
                    _ => json!({"method": "Browser.downloadProgress", "params": {
                        "guid": guid, "totalBytes": 1, "receivedBytes": 1,
                        "state": state,
                        "filePath": format!("/BROKER-PATH/{guid}")}}),
                };
                if let Some(s) = names(*c >> 2, "S-OURS", "S-THEIRS") {
                    event["sessionId"] = json!(s);
                }
                // A subframe of ours announced itself first, on one of our sessions.
                if frame == "F-OURS" {
                    let attached = json!({"method": "Page.frameAttached",
                        "params": {"frameId": "F-OURS", "parentFrameId": "T-OURS"}, "sessionId": "S-OURS"});
                    let _ = filter.on_browser(&attached.to_string());
                }
                let text = event.to_string();
                browser_text = Some(text.clone());
                (filter.on_browser(&text), Echo::None)
            }
            // An answer to an id, listing targets of both contexts, or a page event.
            _ => {
                let infos = json!([
                    {"targetId": "T-OURS", "browserContextId": "CTX-OURS"},
                    {"targetId": "T-THEIRS", "browserContextId": "CTX-THEIRS"},
                ]);
                let session = names(*c, "S-OURS", "S-THEIRS");
                // Chrome lists targets only in answer to `Target.getTargets`.
                let asked = sent.get(&(session.clone(), i64::from(*a))).map(String::as_str);
                let mut message = match b % 3 {
                    0 if asked == Some("Target.getTargets") => json!({"id": a, "result": {"targetInfos": infos}}),
                    0 => json!({"id": a, "result": {}}),
                    1 => json!({"id": a, "result": {"sessionId": "S-OURS", "targetId": "T-OURS", "windowId": 1}}),
                    _ => json!({"method": "Page.frameNavigated", "params": {"frame": {}}}),
                };
                if let Some(s) = session {
                    message["sessionId"] = json!(s);
                }
                let text = message.to_string();
                browser_text = Some(text.clone());
                (filter.on_browser(&text), Echo::None)
            }
        };
        for out in outs {
            if let Out::Browser(t) = &out
                && let Ok(m) = serde_json::from_str::<Value>(t)
                && let (Some(id), Some(method)) = (m["id"].as_i64(), m["method"].as_str())
            {
                sent.insert((m["sessionId"].as_str().map(str::to_owned), id), method.to_owned());
            }
            let (to, text) = match out {
                Out::Browser(t) => ("browser", t),
                Out::Client(t) => ("client", t),
                Out::Pass => ("client", browser_text.clone().unwrap_or_default()),
                _ => continue,
            };
            if to == "browser" {
                if let Ok(sent) = serde_json::from_str::<Value>(&text) {
                    assert!(chooses_no_path(&sent), "a client's path reached the browser: {text}");
                }
                // The filter's own commands (negative ids) let go of another context's
                // session an auto-attach made; nothing the client sent names theirs.
                let own = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|m| m["id"].as_i64())
                    .is_some_and(|id| id < 0);
                if own {
                    assert!(!text.contains("T-THEIRS") && !text.contains("CTX-THEIRS"), "{text}");
                    continue;
                }
            }
            // The client's own text may come back to it in an error; raw text may also be a
            // page command passed on as it is (an expression that happens to name them).
            let quoted = match &echo {
                Echo::Both(t) => Some(t),
                Echo::ToClient(t) if to == "client" => Some(t),
                _ => None,
            };
            if quoted.is_some_and(|t| THEIRS.iter().any(|theirs| t.contains(theirs))) {
                continue;
            }
            for theirs in THEIRS {
                assert!(!text.contains(theirs), "{theirs} reached the {to}: {text}");
            }
        }
    }
}

/// A command on its way to the browser of a context session (whose download folder is
/// `/SESSION-DOWNLOADS` and whose files directory does not exist) chooses no path of the
/// broker's disk and opens no local URL.
fn chooses_no_path(sent: &Value) -> bool {
    let params = &sent["params"];
    let no_files = |files: &Value| files.is_null() || files.as_array().is_some_and(Vec::is_empty);
    match sent["method"].as_str().unwrap_or_default() {
        "Browser.setDownloadBehavior" | "Page.setDownloadBehavior" => {
            params["downloadPath"].is_null() || params["downloadPath"] == "/SESSION-DOWNLOADS"
        }
        "DOM.setFileInputFiles" => no_files(&params["files"]),
        "Input.dispatchDragEvent" => no_files(&params["data"]["files"]),
        "Target.createTarget" | "Page.navigate" => params["url"]
            .as_str()
            .is_none_or(|url| crate::browser::url_policy::check_navigation(url).is_ok()),
        _ => true,
    }
}

/// The CDP log's tap (`proxy::tap`): bytes of frames (masked or not), whole or in any
/// pieces, give the same messages; what it reads from them never carries more than a name.
pub fn cdp_tap(data: &[u8]) {
    use crate::proxy::tap::{Frames, fields};
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = Frames::default().feed(bytes);
    let mut pieces = Frames::default();
    let step = usize::from(split % 23) + 1;
    let cut: Vec<_> = bytes.chunks(step).flat_map(|chunk| pieces.feed(chunk)).collect();
    assert_eq!(whole, cut);
    for message in &whole {
        assert!(message.head.len() <= 4096 && message.tail.len() <= 256);
        let f = fields(message);
        for name in [&f.method, &f.session].into_iter().flatten() {
            assert!(
                name.len() <= 200 && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)),
                "{name:?}"
            );
        }
    }
}
