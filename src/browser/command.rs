//! A client's CDP command, read no further than a decision about it needs.
//!
//! A `serde_json::Value` of a list of small numbers takes dozens of times the text's size
//! (a 64 MiB message of `[0,0,…]` took the broker from 16 MB to 2.4 GB), so the envelope
//! is read into a typed struct whose parts stay JSON text ([`RawValue`], borrowed from the
//! message), and a command's parameters are split into their values, still as text, only
//! for the methods whose parameters are checked or rewritten. A method whose parameters
//! are not read has them passed on exactly as the client wrote them.
//!
//! What is sent on is written anew from what was read: one `id`, one `method`, one
//! `sessionId` (serde refuses a part given twice), and for the read methods one value per
//! parameter name, so Chrome acts on what was checked.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A command of a client, parsed.
#[derive(Debug)]
pub(crate) struct Command<'a> {
    pub id: i64,
    pub method: String,
    pub session: Option<String>,
    pub params: Params<'a>,
}

/// A command's parameters.
#[derive(Debug)]
pub(crate) enum Params<'a> {
    /// Not read: passed on as the client wrote them (`None`: there were none).
    Verbatim(Option<&'a RawValue>),
    /// Read by name, each value still its JSON text.
    Fields(Fields<'a>),
}

/// Why a message is not a command, as a CDP error (code and message) with what of it
/// could be read.
#[derive(Debug, PartialEq)]
pub(crate) struct Malformed {
    pub id: Option<i64>,
    pub session: Option<String>,
    pub code: i64,
    pub message: &'static str,
}

/// The envelope, each part left as text.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow, rename = "sessionId")]
    session: Option<&'a RawValue>,
}

impl<'a> Command<'a> {
    /// Parses `text`; the parameters are split by name when `read_params(method)`.
    pub(crate) fn parse(text: &'a str, read_params: impl Fn(&str) -> bool) -> Result<Command<'a>, Malformed> {
        let malformed = |id, session, code, message| Malformed {
            id,
            session,
            code,
            message,
        };
        // An array would fill the struct's fields in order: only an object is a command.
        let envelope = match is_object(text) {
            true => serde_json::from_str::<Envelope<'a>>(text).ok(),
            false => None,
        };
        let Some(envelope) = envelope else {
            return Err(malformed(None, None, -32700, "Message must be a valid JSON object"));
        };
        let session = match envelope.session {
            None => None,
            Some(raw) => match read::<String>(raw) {
                Some(s) => Some(s),
                None => return Err(malformed(None, None, -32600, "sessionId must be a string")),
            },
        };
        let Some(id) = envelope.id.and_then(read::<i64>).filter(|id| *id >= 0) else {
            let message = "Message must have a non-negative integer 'id' property";
            return Err(malformed(None, session, -32600, message));
        };
        let Some(method) = envelope.method.and_then(read::<String>) else {
            let message = "Message must have a string 'method' property";
            return Err(malformed(Some(id), session, -32600, message));
        };
        let params = match envelope.params {
            None if read_params(&method) => Params::Fields(Fields::default()),
            None => Params::Verbatim(None),
            Some(raw) if !is_object(raw.get()) => {
                let message = "Invalid parameters: params must be an object";
                return Err(malformed(Some(id), session, -32602, message));
            }
            Some(raw) if read_params(&method) => match Fields::parse(raw) {
                Some(fields) => Params::Fields(fields),
                None => {
                    let message = "Invalid parameters: params must be an object";
                    return Err(malformed(Some(id), session, -32602, message));
                }
            },
            Some(raw) => Params::Verbatim(Some(raw)),
        };
        Ok(Command {
            id,
            method,
            session,
            params,
        })
    }

    /// The command as it goes to the browser.
    pub(crate) fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Out<'b> {
            Raw(&'b RawValue),
            Fields(&'b Fields<'b>),
        }
        #[derive(Serialize)]
        struct Sent<'b> {
            id: i64,
            method: &'b str,
            params: Out<'b>,
            #[serde(rename = "sessionId", skip_serializing_if = "Option::is_none")]
            session: Option<&'b str>,
        }
        let empty = Fields::default();
        let params = match &self.params {
            Params::Verbatim(Some(raw)) => Out::Raw(raw),
            Params::Verbatim(None) => Out::Fields(&empty),
            Params::Fields(fields) => Out::Fields(fields),
        };
        let sent = Sent {
            id: self.id,
            method: &self.method,
            params,
            session: self.session.as_deref(),
        };
        // Sized up front: a large command is written once, not copied as it grows.
        let params_len = match &self.params {
            Params::Verbatim(raw) => raw.map_or(2, |r| r.get().len()),
            Params::Fields(fields) => fields.0.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum(),
        };
        let len = 64 + self.method.len() + self.session.as_ref().map_or(0, String::len) + params_len;
        let mut out = Vec::with_capacity(len);
        serde_json::to_writer(&mut out, &sent).expect("a command serializes");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

/// A command's parameters by name, each value its JSON text: reading one costs that
/// value's size, a value not read costs nothing more. A name given twice keeps its last
/// value, which is then the only one sent.
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub(crate) struct Fields<'a>(BTreeMap<String, Cow<'a, RawValue>>);

impl<'a> Fields<'a> {
    /// The fields of an object; `None` if `raw` is not one.
    pub(crate) fn parse(raw: &'a RawValue) -> Option<Fields<'a>> {
        if !is_object(raw.get()) {
            return None;
        }
        let fields: BTreeMap<String, &'a RawValue> = serde_json::from_str(raw.get()).ok()?;
        Some(Fields(fields.into_iter().map(|(k, v)| (k, Cow::Borrowed(v))).collect()))
    }

    /// The value of `key` as a `T`, if it is one.
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        read(self.0.get(key)?)
    }

    pub(crate) fn str(&self, key: &str) -> Option<String> {
        self.get(key)
    }

    pub(crate) fn raw(&self, key: &str) -> Option<&RawValue> {
        self.0.get(key).map(|v| v.as_ref())
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// `key` is missing or `null`.
    pub(crate) fn is_null(&self, key: &str) -> bool {
        self.0.get(key).is_none_or(|v| v.get() == "null")
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Serialize) {
        let raw = serde_json::value::to_raw_value(&value).expect("a value serializes");
        self.0.insert(key.to_owned(), Cow::Owned(raw));
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// Keeps only the names in `keys`.
    pub(crate) fn retain(&mut self, keys: &[&str]) {
        self.0.retain(|key, _| keys.contains(&key.as_str()));
    }

    /// The fields as one JSON object.
    pub(crate) fn to_raw(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(self).expect("fields serialize")
    }
}

fn read<T: DeserializeOwned>(raw: &RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// JSON text that starts an object (after JSON's own whitespace).
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn parameters_not_read_pass_as_written() {
        let text = r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"1", "x":[0,0,0]},"sessionId":"S"}"#;
        let command = Command::parse(text, |_| false).unwrap();
        assert_eq!(
            command.to_json(),
            r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"1", "x":[0,0,0]},"sessionId":"S"}"#
        );
        let command = Command::parse(r#"{"method":"Page.enable","id":2,"junk":[1,2]}"#, all).unwrap();
        assert_eq!(command.to_json(), r#"{"id":2,"method":"Page.enable","params":{}}"#);
    }

    #[test]
    fn read_parameters_are_sent_once_each() {
        let text = r#"{"id":1,"method":"Page.navigate","params":{"url":"https://a/","u\u0072l":"file:///etc/passwd"}}"#;
        let command = Command::parse(text, all).unwrap();
        let Params::Fields(fields) = &command.params else {
            panic!()
        };
        assert_eq!(fields.str("url").as_deref(), Some("file:///etc/passwd"));
        assert_eq!(
            command.to_json(),
            r#"{"id":1,"method":"Page.navigate","params":{"url":"file:///etc/passwd"}}"#
        );
    }

    #[test]
    fn what_is_not_one_command_is_refused() {
        let code = |text: &str| Command::parse(text, all).map(|_| ()).unwrap_err().code;
        for text in [
            "[0,0,0,0]",
            r#"[1,"Browser.getVersion",{},"S"]"#,
            "not json",
            r#"{"id":1,"method":"A","id":2}"#,
            r#"{"id":1,"method":"A","sessionId":"X","sessionId":"Y"}"#,
            r#"{"id":1,"method":"A","method":"B"}"#,
        ] {
            assert_eq!(code(text), -32700, "{text}");
        }
        assert_eq!(code(r#"{"id":-1,"method":"A"}"#), -32600);
        assert_eq!(code(r#"{"id":1.5,"method":"A"}"#), -32600);
        assert_eq!(code(r#"{"id":1,"method":7}"#), -32600);
        assert_eq!(code(r#"{"id":1,"method":"A","sessionId":[0,0]}"#), -32600);
        assert_eq!(code(r#"{"id":1,"method":"A","params":[0,0]}"#), -32602);
        let refused = Command::parse(r#"{"id":3,"method":"A","params":1,"sessionId":"S"}"#, |_| false).unwrap_err();
        assert_eq!((refused.id, refused.session.as_deref()), (Some(3), Some("S")));
    }

    #[test]
    fn a_large_command_is_read_without_growing() {
        // Not a measurement (that is scripts/bench-parse.sh), a shape: the parts of a
        // command are borrowed text, so nothing the size of the list is built.
        let list = format!("[{}0]", "0,".repeat(1 << 20));
        let text = format!(r#"{{"id":1,"method":"Runtime.evaluate","params":{{"x":{list}}}}}"#);
        let command = Command::parse(&text, all).unwrap();
        let Params::Fields(fields) = &command.params else {
            panic!()
        };
        assert_eq!(fields.raw("x").unwrap().get().len(), list.len());
        assert!(matches!(fields.0["x"], Cow::Borrowed(_)));
    }
}
