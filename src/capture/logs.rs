//! A session's console: messages its pages and workers logged (`Runtime.consoleAPICalled`),
//! uncaught exceptions (`Runtime.exceptionThrown`) and what the browser reported about
//! them (`Log.entryAdded`: failed loads, interventions, violations). At most the config's
//! number of entries and bytes are kept; past either, the oldest go and are counted.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::{Value, json};

use super::common::{cut, wall_time_ms};
use crate::console_patch;

/// Longest text of one entry, in bytes.
const MAX_TEXT: usize = 8 * 1024;
/// Longest URL of one entry.
const MAX_URL: usize = 2048;
/// Console arguments read into one entry's text.
const MAX_ARGS: usize = 16;
/// Console errors, and apart uncaught exceptions, told as events one by one; the rest are
/// only counted (a page logging an error per frame must not flood the session's events).
pub(crate) const MAX_ERRORS_TOLD: u64 = 20;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    /// `console`, `exception`, `request_failed` (a load that failed or answered an error
    /// status) or `browser` (anything else the browser reported).
    pub(crate) kind: &'static str,
    /// `log`, `info`, `debug`, `warning`, `error`, … as the page or browser said.
    pub(crate) level: String,
    pub(crate) text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    /// 1-based, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) column: Option<u64>,
    /// RFC 3339, UTC, to the millisecond.
    pub(crate) timestamp: String,
    /// The tab, frame or worker it came from.
    pub(crate) target_id: String,
}

impl Entry {
    fn size(&self) -> usize {
        self.text.len() + self.url.as_ref().map_or(0, String::len) + self.target_id.len() + 96
    }
}

/// An error a page showed, to be told as an event: a console error or (`uncaught`) an
/// exception nothing caught, and how many of its kind the session has had.
pub(crate) struct ErrorSeen {
    pub(crate) uncaught: bool,
    pub(crate) count: u64,
    pub(crate) entry: Entry,
}

pub(crate) struct Logs {
    entries: VecDeque<Entry>,
    bytes: usize,
    dropped: u64,
    console_errors: u64,
    page_errors: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl Logs {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Logs {
        Logs {
            entries: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            console_errors: 0,
            page_errors: 0,
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Takes one of the three events; answers an error to tell, while there are few.
    pub(crate) fn take(&mut self, method: &str, params: &Value, target_id: &str) -> Option<ErrorSeen> {
        let entry = match method {
            "Runtime.consoleAPICalled" => console(params, target_id),
            "Runtime.exceptionThrown" => exception(params, target_id),
            "Log.entryAdded" => browser(params, target_id),
            _ => return None,
        };
        let counter = match entry.kind {
            "exception" => Some(&mut self.page_errors),
            "console" if matches!(entry.level.as_str(), "error" | "assert") => Some(&mut self.console_errors),
            _ => None,
        };
        let seen = counter.and_then(|count| {
            *count += 1;
            (*count <= MAX_ERRORS_TOLD).then(|| ErrorSeen {
                uncaught: entry.kind == "exception",
                count: *count,
                entry: entry.clone(),
            })
        });
        self.push(entry);
        seen
    }

    fn push(&mut self, entry: Entry) {
        self.bytes += entry.size();
        self.entries.push_back(entry);
        while self.entries.len() > self.max_entries || (self.bytes > self.max_bytes && self.entries.len() > 1) {
            let Some(old) = self.entries.pop_front() else { break };
            self.bytes -= old.size();
            self.dropped += 1;
        }
    }

    pub(crate) fn document(&self, session_id: &str) -> Value {
        json!({
            "session_id": session_id,
            "entries": self.entries,
            "dropped": self.dropped,
            "console_errors": self.console_errors,
            "page_errors": self.page_errors,
        })
    }
}

/// Where a stack trace's top frame is (CDP's lines and columns are 0-based): the page's,
/// past the console patch's wrapper.
fn top_frame(trace: &Value) -> (Option<String>, Option<u64>, Option<u64>) {
    let Some(frame) = console_patch::page_frames(trace).first() else {
        return (None, None, None);
    };
    let url = frame["url"].as_str().filter(|u| !u.is_empty()).map(|u| cut(u, MAX_URL));
    (
        url,
        frame["lineNumber"].as_u64().map(|l| l + 1),
        frame["columnNumber"].as_u64().map(|c| c + 1),
    )
}

/// A console argument as text: a string as it is, other values as DevTools shows them.
fn argument(arg: &Value) -> String {
    match &arg["value"] {
        Value::String(s) => s.clone(),
        Value::Null => arg["description"]
            .as_str()
            .or_else(|| arg["unserializableValue"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| arg["type"].as_str().unwrap_or("undefined").to_owned()),
        v => v.to_string(),
    }
}

fn console(params: &Value, target_id: &str) -> Entry {
    let text = params["args"]
        .as_array()
        .map(|args| args.iter().take(MAX_ARGS).map(argument).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let (url, line, column) = top_frame(&params["stackTrace"]);
    Entry {
        kind: "console",
        level: cut(params["type"].as_str().unwrap_or("log"), 32),
        text: cut(&text, MAX_TEXT),
        url,
        line,
        column,
        timestamp: wall_time_ms(params["timestamp"].as_f64().unwrap_or(0.0)),
        target_id: target_id.to_owned(),
    }
}

fn exception(params: &Value, target_id: &str) -> Entry {
    let details = &params["exceptionDetails"];
    let text = details["exception"]["description"]
        .as_str()
        .or_else(|| details["exception"]["value"].as_str())
        .or_else(|| details["text"].as_str())
        .unwrap_or("Uncaught");
    let (mut url, line, column) = top_frame(&details["stackTrace"]);
    if url.is_none() {
        url = details["url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(|u| cut(u, MAX_URL));
    }
    Entry {
        kind: "exception",
        level: "error".into(),
        text: cut(text, MAX_TEXT),
        url,
        line: line.or_else(|| details["lineNumber"].as_u64().map(|l| l + 1)),
        column: column.or_else(|| details["columnNumber"].as_u64().map(|c| c + 1)),
        timestamp: wall_time_ms(params["timestamp"].as_f64().unwrap_or(0.0)),
        target_id: target_id.to_owned(),
    }
}

fn browser(params: &Value, target_id: &str) -> Entry {
    let entry = &params["entry"];
    let failed = entry["source"] == "network" && entry["level"] == "error";
    Entry {
        kind: if failed { "request_failed" } else { "browser" },
        level: cut(entry["level"].as_str().unwrap_or("info"), 32),
        text: cut(entry["text"].as_str().unwrap_or(""), MAX_TEXT),
        url: entry["url"].as_str().filter(|u| !u.is_empty()).map(|u| cut(u, MAX_URL)),
        line: entry["lineNumber"].as_u64().map(|l| l + 1),
        column: None,
        timestamp: wall_time_ms(entry["timestamp"].as_f64().unwrap_or(0.0)),
        target_id: target_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_past_either_bound() {
        let mut logs = Logs::new(3, 1 << 20);
        for i in 0..10 {
            let params =
                json!({"type": "log", "args": [{"type": "string", "value": format!("line {i}")}], "timestamp": 1.0e12});
            logs.take("Runtime.consoleAPICalled", &params, "T");
        }
        let doc = logs.document("s");
        assert_eq!(doc["dropped"], 7);
        assert_eq!(doc["entries"][0]["text"], "line 7");
        let mut small = Logs::new(100, 400);
        let long = "x".repeat(300);
        for _ in 0..3 {
            let params = json!({"type": "log", "args": [{"type": "string", "value": long}]});
            small.take("Runtime.consoleAPICalled", &params, "T");
        }
        assert_eq!(small.document("s")["dropped"], 2);
        assert_eq!(small.entries.len(), 1);
    }

    #[test]
    fn the_console_patchs_frame_is_not_the_place() {
        let (line, column) = console_patch::call_sites()[0];
        let wrapper = json!({"functionName": "log", "url": "", "lineNumber": line, "columnNumber": column});
        let page = json!({"functionName": "f", "url": "http://a/x.js", "lineNumber": 4, "columnNumber": 2});
        let params = json!({"type": "log", "args": [], "stackTrace": {"callFrames": [wrapper, page]}});
        let e = console(&params, "T");
        assert_eq!(
            (e.url.as_deref(), e.line, e.column),
            (Some("http://a/x.js"), Some(5), Some(3))
        );
        let params = json!({"type": "log", "args": [], "stackTrace": {"callFrames": [wrapper]}});
        let e = console(&params, "T");
        assert_eq!((e.url, e.line, e.column), (None, None, None));
    }

    #[test]
    fn arguments_and_places_read_as_devtools_shows_them() {
        let params = json!({
            "type": "error",
            "args": [{"type": "string", "value": "bad"}, {"type": "number", "value": 2, "description": "2"},
                     {"type": "object", "className": "Object", "description": "Object"}],
            "stackTrace": {"callFrames": [{"url": "http://a/x.js", "lineNumber": 4, "columnNumber": 0}]},
            "timestamp": 1.7e12
        });
        let e = console(&params, "T");
        assert_eq!((e.text.as_str(), e.level.as_str()), ("bad 2 Object", "error"));
        assert_eq!(
            (e.url.as_deref(), e.line, e.column),
            (Some("http://a/x.js"), Some(5), Some(1))
        );
    }
}
