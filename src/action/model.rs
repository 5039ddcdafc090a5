//! The model-driven executor's side of the conversation: an OpenAI-compatible
//! chat-completions endpoint, the browser primitives offered to it as tools, and the
//! translation of its tool calls into [`Step`]s. Variable values never reach the model: it
//! sees the placeholder names and writes `{{name}}` where a value goes.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::instruction::{ScrollTo, Step, Target};
use crate::browser::upstream::UpstreamStream;

/// Interactive elements shown to the model per page.
pub(crate) const SNAPSHOT_ELEMENTS: usize = 200;

/// Where the model is and how to call it (from `config.toml`; the key from the environment).
#[derive(Clone)]
pub struct ModelClient {
    pub url: url::Url,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

/// What a tool call asks for.
pub(crate) enum Call {
    Step(Step),
    Done(String),
    Fail(String),
}

impl ModelClient {
    /// One chat-completions request; answers the assistant message.
    pub async fn complete(&self, messages: &[Value], tools: &Value) -> Result<Value, String> {
        let body = json!({
            "model": self.model,
            "messages": messages,
            "tools": tools,
            "tool_choice": "auto",
            "temperature": 0,
        });
        let answer = tokio::time::timeout(self.timeout, self.post(body.to_string()))
            .await
            .map_err(|_| format!("the model did not answer within {} s", self.timeout.as_secs()))??;
        answer["choices"][0]["message"]
            .as_object()
            .map(|m| Value::Object(m.clone()))
            .ok_or_else(|| "the model's answer has no message".to_owned())
    }

    async fn post(&self, body: String) -> Result<Value, String> {
        let host = self.url.host_str().ok_or("the model URL has no host")?.to_owned();
        let port = self.url.port_or_known_default().ok_or("the model URL has no port")?;
        let host_for_tls = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tcp = TcpStream::connect((host_for_tls.as_str(), port))
            .await
            .map_err(|e| format!("cannot reach the model endpoint: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = if self.url.scheme() == "https" {
            let name = rustls::pki_types::ServerName::try_from(host_for_tls).map_err(|e| e.to_string())?;
            let tls = crate::browser::upstream::tls_connector()
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with the model endpoint failed: {e}"))?;
            UpstreamStream::Tls(Box::new(tls))
        } else {
            UpstreamStream::Plain(tcp)
        };
        let authority = match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let path = match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_owned(),
        };
        let bearer = self.api_key.as_ref().map(|key| format!("Bearer {key}"));
        let (status, bytes) = crate::browser::cdp::http_exchange(
            stream,
            &authority,
            bearer.as_deref(),
            Method::POST,
            &path,
            Some(Bytes::from(body)),
        )
        .await
        .map_err(|e| format!("the model endpoint failed: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(format!("the model endpoint answered {status}: {text}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("the model's answer is not JSON: {e}"))
    }
}

/// The first message: what the model is for, and the placeholders it may use.
pub(crate) fn system_prompt(variables: &[String]) -> String {
    let mut prompt = String::from(
        "You operate a web browser to carry out one instruction from the user, using the tools. \
         Element numbers refer to the latest page snapshot, which follows every tool result. \
         Act only as far as the instruction asks. When it is done, call `done` with one short \
         sentence saying what you did, or with exactly the text the user asked for. If it \
         cannot be done, call `fail` with the reason.",
    );
    if !variables.is_empty() {
        prompt.push_str(&format!(
            " The values of these variables are hidden from you; write {{{{name}}}} in text you \
             type and it is replaced with the value: {}.",
            variables.join(", ")
        ));
    }
    prompt
}

/// The page as the model reads it: title, URL, numbered elements, the start of the text.
pub(crate) fn render_snapshot(snapshot: &Value) -> String {
    let mut out = format!(
        "Page: {}\nURL: {}\nElements:\n",
        snapshot["title"].as_str().unwrap_or(""),
        snapshot["url"].as_str().unwrap_or("")
    );
    for (i, e) in snapshot["elements"].as_array().into_iter().flatten().enumerate() {
        out.push_str(&format!(
            "[{}] {} \"{}\"",
            i + 1,
            e["role"].as_str().unwrap_or(""),
            e["name"].as_str().unwrap_or("")
        ));
        for field in ["value", "placeholder", "href"] {
            if let Some(v) = e[field].as_str() {
                out.push_str(&format!(" {field}=\"{v}\""));
            }
        }
        if let Some(checked) = e["checked"].as_bool() {
            out.push_str(if checked { " checked" } else { " unchecked" });
        }
        if e["disabled"] == true {
            out.push_str(" disabled");
        }
        out.push('\n');
    }
    out.push_str("Text:\n");
    out.push_str(snapshot["text"].as_str().unwrap_or(""));
    out
}

/// The primitives, as chat-completions tools.
pub(crate) fn tools() -> Value {
    let element = json!({"type": "integer", "description": "element number from the latest snapshot"});
    let tool = |name: &str, description: &str, properties: Value, required: &[&str]| {
        json!({"type": "function", "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        }})
    };
    json!([
        tool(
            "goto",
            "Open a URL in the tab.",
            json!({"url": {"type": "string"}}),
            &["url"]
        ),
        tool("click", "Click an element.", json!({"element": element}), &["element"]),
        tool(
            "type_text",
            "Type text into a field, replacing its content.",
            json!({"element": element, "text": {"type": "string"}}),
            &["element", "text"]
        ),
        tool(
            "press_key",
            "Press a key or chord, e.g. Enter, Tab, Control+A.",
            json!({"key": {"type": "string"}}),
            &["key"]
        ),
        tool(
            "select_option",
            "Choose an option of a drop-down list by its text.",
            json!({"element": element, "option": {"type": "string"}}),
            &["element", "option"]
        ),
        tool(
            "set_checked",
            "Check or uncheck a checkbox or radio button.",
            json!({"element": element, "checked": {"type": "boolean"}}),
            &["element", "checked"]
        ),
        tool(
            "hover",
            "Move the mouse over an element.",
            json!({"element": element}),
            &["element"]
        ),
        tool(
            "scroll",
            "Scroll the page.",
            json!({"direction": {"type": "string", "enum": ["up", "down"]}, "pixels": {"type": "integer"}}),
            &["direction"]
        ),
        tool(
            "wait_for_text",
            "Wait until a text appears on the page.",
            json!({"text": {"type": "string"}}),
            &["text"]
        ),
        tool(
            "read_text",
            "Read the text of an element, or of the whole page without one.",
            json!({"element": element}),
            &[]
        ),
        tool(
            "done",
            "Finish: the instruction is carried out.",
            json!({"result": {"type": "string"}}),
            &["result"]
        ),
        tool(
            "fail",
            "Give up: the instruction cannot be carried out.",
            json!({"reason": {"type": "string"}}),
            &["reason"]
        ),
    ])
}

/// Reads one tool call against the snapshot its element numbers refer to.
pub(crate) fn read_call(name: &str, arguments: &str, snapshot: &Value) -> Result<Call, String> {
    let args: Value = serde_json::from_str(if arguments.trim().is_empty() { "{}" } else { arguments })
        .map_err(|e| format!("the arguments are not JSON: {e}"))?;
    let text = |field: &str| {
        args[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("`{field}` must be a string"))
    };
    let element = || -> Result<Target, String> {
        let n = args["element"].as_u64().ok_or("`element` must be an element number")?;
        let list = snapshot["elements"].as_array().cloned().unwrap_or_default();
        let e = n
            .checked_sub(1)
            .and_then(|i| list.get(i as usize))
            .ok_or_else(|| format!("there is no element {n} in the snapshot"))?;
        Ok(Target {
            described: format!(
                "the {} \"{}\"",
                e["role"].as_str().unwrap_or("element"),
                e["name"].as_str().unwrap_or("")
            ),
            role: None,
            name: None,
            css: e["selector"].as_str().map(str::to_owned),
            fingerprint: e["fingerprint"].as_str().map(str::to_owned),
        })
    };
    Ok(Call::Step(match name {
        "goto" => Step::Goto { url: text("url")? },
        "click" => Step::Click {
            target: element()?,
            count: 1,
        },
        "type_text" => Step::Type {
            target: Some(element()?),
            text: text("text")?,
        },
        "press_key" => Step::Press {
            key: text("key")?,
            target: None,
        },
        "select_option" => Step::Select {
            target: element()?,
            option: text("option")?,
        },
        "set_checked" => Step::Check {
            target: element()?,
            on: args["checked"].as_bool().ok_or("`checked` must be true or false")?,
        },
        "hover" => Step::Hover { target: element()? },
        "scroll" => {
            let pixels = args["pixels"].as_i64().unwrap_or(600).clamp(1, 100_000);
            Step::Scroll {
                to: ScrollTo::By(if args["direction"] == "up" { -pixels } else { pixels }),
            }
        }
        "wait_for_text" => Step::WaitText { text: text("text")? },
        "read_text" => Step::ReadText {
            target: if args.get("element").is_some_and(|e| !e.is_null()) {
                Some(element()?)
            } else {
                None
            },
        },
        "done" => return Ok(Call::Done(text("result").unwrap_or_default())),
        "fail" => return Ok(Call::Fail(text("reason").unwrap_or_else(|_| "no reason given".into()))),
        other => return Err(format!("there is no tool `{other}`")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_become_steps_on_the_snapshot() {
        let snapshot = json!({"elements": [
            {"role": "textbox", "name": "username", "selector": "#user", "fingerprint": "input|textbox|username"},
            {"role": "button", "name": "sign in", "selector": "form > button:nth-of-type(1)", "fingerprint": "button|button|sign in"},
        ]});
        let Call::Step(Step::Click { target, .. }) = read_call("click", r#"{"element": 2}"#, &snapshot).unwrap() else {
            panic!()
        };
        assert_eq!(target.css.as_deref(), Some("form > button:nth-of-type(1)"));
        assert_eq!(target.fingerprint.as_deref(), Some("button|button|sign in"));
        let Call::Step(Step::Type { text, .. }) =
            read_call("type_text", r#"{"element": 1, "text": "{{user}}"}"#, &snapshot).unwrap()
        else {
            panic!()
        };
        assert_eq!(text, "{{user}}");
        assert!(matches!(read_call("done", r#"{"result": "ok"}"#, &snapshot), Ok(Call::Done(r)) if r == "ok"));
        for (name, args) in [
            ("click", r#"{"element": 3}"#),
            ("click", r#"{"element": 0}"#),
            ("click", r#"{"element": "x"}"#),
            ("click", "not json"),
            ("rm_rf", "{}"),
            ("set_checked", r#"{"element": 1}"#),
        ] {
            assert!(read_call(name, args, &snapshot).is_err(), "{name} {args}");
        }
        let rendered =
            render_snapshot(&json!({"title": "T", "url": "u", "text": "hi", "elements": snapshot["elements"]}));
        assert!(rendered.contains("[2] button \"sign in\""), "{rendered}");
    }
}
