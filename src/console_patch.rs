//! The console patch and the frame it leaves in console messages.
//!
//! With a client's `Runtime.enable`, V8's inspector describes every console argument at the
//! call, which runs the page's `Error.prepareStackTrace` for an `Error` (fpscanner's
//! `hasCDP`). The patch (`browser/console_patch.js`) wraps the describing console methods
//! to hide it for the native call; it runs first in every page, frame and worker
//! (`browser::page_script` starts with [`script_head`]). The wrapper's call of the native
//! method then stands first in every `Runtime.consoleAPICalled` stack trace (twice where
//! the script ran twice in one window: a new tab's initial empty document, then the blank
//! page that replaces it and keeps its window), so wherever the broker hands those events
//! on (the relay, a context session's filter, the captured console) it drops those
//! frames: clients see the page's frame first, as without the patch.
//!
//! A frame is the wrapper's when its url is empty (a script the broker added), its function
//! is one of the wrapped methods and its position is exactly one of the wrapper's two call
//! sites. A page can build such a frame itself (an `eval`'d function named `log` calling the
//! console at that line and column): then its own top frame is dropped, which hides nothing
//! of anyone else's and forges nothing.

use std::borrow::Cow;
use std::sync::LazyLock;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

/// An expression: patches `Function.prototype.toString` and gives `native(fresh, original)`.
pub(crate) const NATIVE: &str = include_str!("browser/native.js");

/// A function expression of `native`.
const CONSOLE: &str = include_str!("browser/console_patch.js");

/// How the wrapper calls the native method: the text of both of its call sites.
const CALL: &str = "reflect(original, this, args)";

/// The console methods the patch wraps (its `DESCRIBING`).
pub(crate) const WRAPPED: [&str; 13] = [
    "debug",
    "error",
    "info",
    "log",
    "warn",
    "trace",
    "dir",
    "dirxml",
    "table",
    "group",
    "groupCollapsed",
    "assert",
    "timeLog",
];

/// How Chrome begins a console event: the relay looks for it before it parses anything.
pub(crate) const EVENT_PREFIX: &[u8] = br#"{"method":"Runtime.consoleAPICalled""#;

/// The first lines of every page script: `native`, then the console patch. Nothing comes
/// before them, so the wrapper's call sites are where [`call_sites`] finds them whatever
/// parts the script goes on with.
pub(crate) fn script_head() -> &'static str {
    static HEAD: LazyLock<String> = LazyLock::new(|| {
        format!(
            "(() => {{\nconst native = {};\n({})(native);\n",
            NATIVE.trim_end(),
            CONSOLE.trim_end()
        )
    });
    &HEAD
}

/// The wrapper's call sites in the page script: 0-based (line, column), as CDP counts.
pub(crate) fn call_sites() -> &'static [(u64, u64)] {
    static SITES: LazyLock<Vec<(u64, u64)>> = LazyLock::new(|| {
        let head = script_head();
        head.match_indices(CALL)
            .map(|(at, _)| {
                let before = &head[..at];
                let line = before.matches('\n').count() as u64;
                let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1);
                (line, column as u64)
            })
            .collect()
    });
    &SITES
}

fn is_wrapper_site(url: &str, function: &str, line: u64, column: u64) -> bool {
    url.is_empty() && WRAPPED.contains(&function) && call_sites().contains(&(line, column))
}

/// Whether a CDP `Runtime.CallFrame` is the wrapper's call of a native console method.
pub(crate) fn is_wrapper_frame(frame: &Value) -> bool {
    match (
        frame["url"].as_str(),
        frame["functionName"].as_str(),
        frame["lineNumber"].as_u64(),
        frame["columnNumber"].as_u64(),
    ) {
        (Some(url), Some(function), Some(line), Some(column)) => is_wrapper_site(url, function, line, column),
        _ => false,
    }
}

/// The frames of a stack trace from the page's on: past the wrapper's, if they top them.
pub(crate) fn page_frames(stack_trace: &Value) -> &[Value] {
    let frames = stack_trace["callFrames"].as_array().map_or(&[][..], Vec::as_slice);
    let wrappers = frames.iter().take_while(|f| is_wrapper_frame(f)).count();
    &frames[wrappers..]
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: Params<'a>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(rename = "stackTrace", borrow)]
    stack_trace: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StackTrace<'a> {
    #[serde(rename = "callFrames", borrow)]
    call_frames: Vec<&'a RawValue>,
    parent: Option<IgnoredAny>,
    #[serde(rename = "parentId")]
    parent_id: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CallFrame<'a> {
    #[serde(rename = "functionName", borrow)]
    function_name: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(rename = "lineNumber")]
    line_number: u64,
    #[serde(rename = "columnNumber")]
    column_number: u64,
}

/// A `Runtime.consoleAPICalled` message without the wrapper's frames on top, byte for byte
/// the same otherwise; `None` when there is nothing to drop (another message, no such
/// frame, not valid JSON). A stack trace of the wrapper's frame alone (a console method
/// called by the browser, as `setTimeout(console.log, 0, x)` does) goes as a whole, as
/// Chrome sends none there without the patch.
pub(crate) fn without_wrapper_frame(message: &str) -> Option<String> {
    let event: Event<'_> = serde_json::from_str(message).ok()?;
    if event.method != "Runtime.consoleAPICalled" {
        return None;
    }
    let raw_trace = event.params.stack_trace?;
    let trace: StackTrace<'_> = serde_json::from_str(raw_trace.get()).ok()?;
    let is_wrapper = |raw: &RawValue| {
        serde_json::from_str::<CallFrame<'_>>(raw.get())
            .is_ok_and(|f| is_wrapper_site(&f.url, &f.function_name, f.line_number, f.column_number))
    };
    // The wrapper's frames on top: one, or two where the patch ran twice in one window
    // (a tab's initial empty document and the blank page that replaces it, keeping its
    // window, each ran the page script).
    let wrappers = trace.call_frames.iter().take_while(|raw| is_wrapper(raw)).count();
    let (top, last) = (
        trace.call_frames.first()?,
        trace.call_frames.get(wrappers.checked_sub(1)?)?,
    );
    // Every raw value borrows from `message`: its place there is its pointer's offset.
    let offset = |raw: &RawValue| raw.get().as_ptr() as usize - message.as_ptr() as usize;
    let start = offset(top);
    let (cut_from, cut_to) = match trace.call_frames.get(wrappers) {
        // The frames and what separates them from the next one.
        Some(next) => (start, offset(next)),
        None => {
            let member = br#","stackTrace":"#;
            let trace_at = offset(raw_trace);
            let whole =
                trace.parent.is_none() && trace.parent_id.is_none() && message.as_bytes()[..trace_at].ends_with(member);
            if whole {
                (trace_at - member.len(), trace_at + raw_trace.get().len())
            } else {
                (start, offset(last) + last.get().len())
            }
        }
    };
    let mut out = String::with_capacity(message.len() - (cut_to - cut_from));
    out.push_str(&message[..cut_from]);
    out.push_str(&message[cut_to..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn site(n: usize) -> (u64, u64) {
        call_sites()[n]
    }

    fn frame(function: &str, url: &str, (line, column): (u64, u64)) -> Value {
        json!({"functionName": function, "scriptId": "4", "url": url, "lineNumber": line, "columnNumber": column})
    }

    fn event(frames: &[Value]) -> String {
        let mut params = json!({"type": "log", "args": [{"type": "string", "value": "x"}], "executionContextId": 1, "timestamp": 1.5});
        params["stackTrace"] = json!({ "callFrames": frames });
        json!({"method": "Runtime.consoleAPICalled", "params": params, "sessionId": "S"}).to_string()
    }

    #[test]
    fn the_call_sites_are_the_wrappers_two_calls() {
        assert_eq!(call_sites().len(), 2);
        // Each site's line holds the call at that column.
        for &(line, column) in call_sites() {
            let text = script_head().lines().nth(line as usize).unwrap();
            assert_eq!(&text[column as usize..column as usize + CALL.len()], CALL);
        }
        // The JS wraps exactly the methods named here.
        let list = WRAPPED.map(|m| format!("'{m}'")).join(", ");
        assert!(CONSOLE.contains(&format!("const DESCRIBING = [{list}];")));
    }

    #[test]
    fn only_the_wrappers_frame_is_dropped() {
        let page = frame("f", "https://a.test/app.js", (3, 8));
        let wrapper = frame("log", "", site(1));
        let message = event(&[wrapper.clone(), page.clone()]);
        let out = without_wrapper_frame(&message).unwrap();
        assert_eq!(
            out,
            event(std::slice::from_ref(&page)),
            "the rest is byte for byte the same"
        );
        assert_eq!(without_wrapper_frame(&out), None);
        // The patch run twice in one window: both of its frames go.
        let twice = event(&[frame("log", "", site(1)), wrapper.clone(), page.clone()]);
        assert_eq!(
            without_wrapper_frame(&twice).unwrap(),
            event(std::slice::from_ref(&page))
        );
        let twice_alone = event(&[frame("log", "", site(1)), frame("log", "", site(0))]);
        let value: Value = serde_json::from_str(&without_wrapper_frame(&twice_alone).unwrap()).unwrap();
        assert_eq!(value["params"].get("stackTrace"), None);
        let frames = [wrapper.clone(), wrapper.clone(), page.clone()];
        assert_eq!(
            page_frames(&json!({ "callFrames": frames })),
            std::slice::from_ref(&page)
        );
        // Not the wrapper's: another function, a url, another position, a page frame.
        for other in [
            frame("f", "", site(0)),
            frame("log", "x.js", site(0)),
            frame("log", "", (site(0).0, site(0).1 + 1)),
            page.clone(),
        ] {
            assert_eq!(without_wrapper_frame(&event(&[other, page.clone()])), None);
        }
        // Alone on the stack: the stack trace goes, as without the patch.
        let alone = without_wrapper_frame(&event(&[frame("warn", "", site(0))])).unwrap();
        let value: Value = serde_json::from_str(&alone).unwrap();
        assert_eq!(value["params"].get("stackTrace"), None);
        assert_eq!(value["params"]["args"][0]["value"], "x");
        // With an async parent, an empty list stays.
        let mut with_parent: Value = serde_json::from_str(&event(&[frame("warn", "", site(0))])).unwrap();
        with_parent["params"]["stackTrace"]["parent"] = json!({"callFrames": [page]});
        let out = without_wrapper_frame(&with_parent.to_string()).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["params"]["stackTrace"]["callFrames"], json!([]));
        assert!(value["params"]["stackTrace"]["parent"].is_object());
        with_parent["params"]["stackTrace"]["callFrames"] =
            json!([frame("log", "", site(1)), frame("warn", "", site(0))]);
        let out = without_wrapper_frame(&with_parent.to_string()).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["params"]["stackTrace"]["callFrames"], json!([]));
    }

    #[test]
    fn what_is_not_a_console_event_passes_unchanged() {
        let wrapper = frame("log", "", site(0));
        let good = event(std::slice::from_ref(&wrapper));
        for bad in [
            &good[..good.len() - 1],
            &good.replace("consoleAPICalled", "exceptionThrown"),
            "",
            "{}",
            r#"{"method":"Runtime.consoleAPICalled","params":{"stackTrace":{"callFrames":[]}}}"#,
            r#"{"method":"Runtime.consoleAPICalled","params":{"stackTrace":7}}"#,
            r#"{"method":"Runtime.consoleAPICalled","method":"x","params":{}}"#,
        ] {
            assert_eq!(without_wrapper_frame(bad), None, "{bad}");
        }
        // Strings that look like the frame do not count: only the parsed stack trace does.
        let mut spoof: Value = serde_json::from_str(&event(&[frame("f", "p.js", (1, 1))])).unwrap();
        spoof["params"]["args"][0]["value"] = Value::String(wrapper.to_string());
        assert_eq!(without_wrapper_frame(&spoof.to_string()), None);
        let frames = [wrapper.clone(), frame("f", "p.js", (1, 1))];
        assert!(page_frames(&json!({ "callFrames": frames }))[0]["url"] == "p.js");
        assert!(page_frames(&json!({})).is_empty());
        assert!(is_wrapper_frame(&wrapper));
    }
}
