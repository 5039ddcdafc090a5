//! The live view's filter: what a viewer's page may send to the session's browser. Beside
//! the context filter ([`super::filter`]), which holds a whole client to its context, this
//! one holds a viewer to watching (and, for an interactive link, to input): the HTTP layer
//! only wires the sockets and asks [`check`] about each message.

use serde_json::value::RawValue;
use serde_json::{Value, json};

/// What any viewer may send: find tabs, attach, watch.
pub(crate) const VIEW_METHODS: &[&str] = &[
    "Target.setDiscoverTargets",
    "Target.getTargets",
    "Target.attachToTarget",
    "Target.detachFromTarget",
    "Page.enable",
    "Page.startScreencast",
    "Page.stopScreencast",
    "Page.screencastFrameAck",
];

/// What an interactive viewer may send besides.
pub(crate) const INPUT_METHODS: &[&str] = &[
    "Target.activateTarget",
    "Input.dispatchMouseEvent",
    "Input.dispatchKeyEvent",
    "Input.insertText",
];

/// A viewer's command as the live view reads it: the parameters stay text (a viewer's
/// message is read within `max_parsed_message_bytes` and without growing), and a part
/// given twice or a part that is not one of these is refused, so the message can go to
/// the browser as it came: what the browser reads is what was checked.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewerCommand<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    method: Option<String>,
    // Read only to be known parts of a command (and valid JSON): they pass as written.
    #[serde(borrow, rename = "params")]
    _params: Option<&'a RawValue>,
    #[serde(borrow, rename = "sessionId")]
    _session: Option<&'a RawValue>,
}

/// The most of a refused method's name the refusal says back (no CDP name comes near).
const MAX_METHOD_SHOWN: usize = 100;

/// Whether a viewer may send the command `text` (then it goes on as it came, unchanged);
/// otherwise the CDP error to answer the viewer with.
pub(crate) fn check(text: &str, read_only: bool) -> Result<(), Value> {
    let command = text
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<ViewerCommand>(text).ok())
        .flatten();
    let method = command.as_ref().and_then(|c| c.method.as_deref()).unwrap_or("");
    // A message that is not a command has no method, which no list holds.
    if VIEW_METHODS.contains(&method) || (!read_only && INPUT_METHODS.contains(&method)) {
        return Ok(());
    }
    let why = if read_only && INPUT_METHODS.contains(&method) {
        "this live view link is read-only"
    } else {
        "not available to a live view"
    };
    let id = command
        .as_ref()
        .and_then(|c| c.id)
        .and_then(|id| serde_json::from_str::<i64>(id.get()).ok());
    // The name said back is cut short: a viewer's megabyte of method name is not echoed.
    let shown: String = method.chars().take(MAX_METHOD_SHOWN).collect();
    Err(json!({
        "id": id,
        "error": { "code": -32601, "message": format!("{shown}: {why}") },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_get_only_what_a_viewer_needs() {
        let cmd = |m: &str| json!({"id": 7, "method": m, "params": {}}).to_string();
        assert!(check(&cmd("Page.startScreencast"), true).is_ok());
        assert!(check(&cmd("Input.dispatchMouseEvent"), false).is_ok());
        let refused = check(&cmd("Input.dispatchMouseEvent"), true).unwrap_err();
        assert_eq!(refused["id"], 7);
        assert!(refused["error"]["message"].as_str().unwrap().contains("read-only"));
        for m in [
            "Runtime.evaluate",
            "Browser.close",
            "Storage.getCookies",
            "Target.createTarget",
            "",
        ] {
            assert!(check(&cmd(m), false).is_err(), "{m}");
        }
        assert!(check("not json", false).is_err());
        // What is sent on is what was checked: a part given twice, a part that is not one
        // of a command's, an array, or anything after the object is not a command.
        for text in [
            r#"{"id":1,"method":"Page.enable","method":"Runtime.evaluate"}"#,
            r#"{"id":1,"method":"Page.enable","Method":"Runtime.evaluate"}"#,
            r#"{"id":2,"method":"Page.startScreencast","params":{},"sessionId":"S","x":[0,0]}"#,
            r#"{"id":1,"method":"Page.enable"} {"id":2,"method":"Runtime.evaluate"}"#,
            r#"[1,"Page.enable"]"#,
        ] {
            assert!(check(text, false).is_err(), "{text}");
        }
        // An escaped method name is read as the browser reads it.
        assert!(check(r#"{"id":1,"method":"Runtime.\u0065valuate"}"#, false).is_err());
        assert!(check(r#"{"id":1,"method":"Page.\u0065nable"}"#, true).is_ok());
        assert!(
            check(
                r#" {"id":2,"method":"Page.startScreencast","params":{"format": "jpeg"},"sessionId":"S"} "#,
                true
            )
            .is_ok()
        );
    }
}
