//! Entry points for the fuzz targets under `fuzz/` (cargo-fuzz), also replayed over the
//! kept corpus by `tests/fuzz_corpus.rs`. Each takes untrusted bytes the way the broker
//! meets them and checks a property beyond "does not panic" where one exists.

use serde_json::{Map, Value};

use crate::action::{instruction, keys};
use crate::auth::{Scope, Tokens};
use crate::config::Config;
use crate::proxy::relay::FrameCursor;

/// A request body as every endpoint reads it: create, update, run-action, storage state,
/// plus the query string of a list.
pub fn request_body(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::http::request::query_pairs(text);
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let config = Config::default();
    let _ = crate::http::sessions::validate_create(&config, &body);
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    if let Some(v) = field("ttl") {
        let _ = crate::http::sessions::parse_ttl(v, config.max_ttl);
    }
    if let Some(v) = field("metadata") {
        let _ = crate::http::sessions::parse_metadata(v, config.max_metadata_bytes);
    }
    let _ = crate::http::actions::validate_body(&body);
    let _ = crate::store::storage_state::validate(&Value::Object(body.clone()));
    if let Some(state) = field("storage_state") {
        let _ = crate::store::storage_state::validate(state);
    }
}

/// A token from a URL: never accepted unless this broker signed it.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let tokens = Tokens::new(b"fuzzing-secret-fuzzing-secret-0123456789");
    let decoded = tokens.decode(Some(text));
    assert!(decoded.is_err(), "a token not signed here was accepted: {text:?}");
    let _ = tokens.verify(Some(text), "sess_x", Scope::Cdp);
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
