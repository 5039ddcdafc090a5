//! The CDP log's tap on a relayed connection: a reader wrapped around each side's read
//! half sees the bytes as the relay reads them, puts the frames back together (unmasking
//! the client's) and notes what the log needs: each command's method, id and size, its
//! answer's size and how long it took, each event's method and size. Only the start and
//! the end of a message are kept (Chrome writes `"id"` or `"method"` first and a flattened
//! session's `"sessionId"` last), so a 20 MB screenshot costs no copy. No payload is ever
//! written. Sessions without `log_cdp` are relayed without it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};

use crate::artifacts::cdp_log::CdpLog;

/// How much of a message's start and end is kept to read its fields.
const HEAD: usize = 4096;
const TAIL: usize = 256;
/// Commands waiting for their answer, at most (a client that never reads answers cannot
/// grow the table without end).
const MAX_PENDING: usize = 10_000;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    ToBrowser,
    ToClient,
}

/// One message, as far as the log cares.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Message {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub size: u64,
}

/// Puts frames back together from bytes in any chunks.
#[derive(Default)]
pub(crate) struct Frames {
    header: Vec<u8>,
    mask: Option<[u8; 4]>,
    /// Payload bytes of the current frame still to come, and how many came already.
    remaining: u64,
    offset: u64,
    fin: bool,
    control: bool,
    message: Message,
}

impl Frames {
    /// Feeds bytes; answers the data messages they complete.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Vec<Message> {
        let mut done = Vec::new();
        while !bytes.is_empty() {
            if self.remaining == 0 && !self.read_header(&mut bytes) {
                break;
            }
            let n = (self.remaining.min(bytes.len() as u64)) as usize;
            if !self.control {
                for (i, b) in bytes[..n].iter().enumerate() {
                    let b = match self.mask {
                        Some(m) => b ^ m[((self.offset + i as u64) % 4) as usize],
                        None => *b,
                    };
                    let m = &mut self.message;
                    if m.head.len() < HEAD {
                        m.head.push(b);
                    }
                    m.tail.push(b);
                }
                let tail = &mut self.message.tail;
                if tail.len() > TAIL {
                    tail.drain(..tail.len() - TAIL);
                }
                self.message.size += n as u64;
            }
            self.offset += n as u64;
            self.remaining -= n as u64;
            bytes = &bytes[n..];
            if self.remaining == 0 && self.header.is_empty() {
                self.frame_done(&mut done);
            }
        }
        done
    }

    /// Reads a frame header from `bytes` (perhaps across calls); true once it is whole.
    fn read_header(&mut self, bytes: &mut &[u8]) -> bool {
        loop {
            let need = header_len(&self.header);
            if self.header.len() >= need {
                break;
            }
            let Some((&b, rest)) = bytes.split_first() else {
                return false;
            };
            self.header.push(b);
            *bytes = rest;
        }
        let h = std::mem::take(&mut self.header);
        let masked = h[1] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")), 10),
            n => (u64::from(n), 2),
        };
        self.mask = masked.then(|| h[at..at + 4].try_into().expect("4 bytes"));
        self.fin = h[0] & 0x80 != 0;
        self.control = h[0] & 0x08 != 0;
        self.remaining = len;
        self.offset = 0;
        true
    }

    fn frame_done(&mut self, done: &mut Vec<Message>) {
        if !self.control && self.fin {
            let message = std::mem::take(&mut self.message);
            if message.size > 0 {
                done.push(message);
            }
        }
    }
}

/// Bytes of a frame header given its first bytes.
fn header_len(prefix: &[u8]) -> usize {
    if prefix.len() < 2 {
        return 2;
    }
    let len = match prefix[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    len + if prefix[1] & 0x80 != 0 { 4 } else { 0 }
}

/// The fields the log needs, from a message's kept start and end.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Fields {
    pub id: Option<i64>,
    pub method: Option<String>,
    pub session: Option<String>,
    pub error: bool,
}

pub(crate) fn fields(message: &Message) -> Fields {
    // Whole: parse it (client commands are mostly this small).
    if message.size as usize == message.head.len()
        && let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&message.head)
    {
        let name = |key: &str| {
            m.get(key)
                .and_then(Value::as_str)
                .filter(|v| name_like(v))
                .map(str::to_owned)
        };
        return Fields {
            id: m.get("id").and_then(Value::as_i64),
            method: name("method"),
            session: name("sessionId"),
            error: m.contains_key("error"),
        };
    }
    let head = String::from_utf8_lossy(&message.head);
    let tail = String::from_utf8_lossy(&message.tail);
    Fields {
        id: after(&head, "\"id\":").and_then(|s| {
            let digits: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect();
            digits.parse().ok()
        }),
        method: after(&head, "\"method\":\"").and_then(quoted),
        session: after(&tail, "\"sessionId\":\"").and_then(quoted),
        error: head.starts_with("{\"id\":") && head.contains("\"error\":{"),
    }
}

fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.find(key).map(|at| &text[at + key.len()..])
}

/// A CDP method or session id: up to the closing quote, plain characters only.
fn quoted(s: &str) -> Option<String> {
    let v = &s[..s.find('"')?];
    name_like(v).then(|| v.to_owned())
}

/// What the log writes of a name: letters, digits, `.`, `_`, `-`, at most 200 (anything
/// else a client put there is left out, so no payload can pass as a method's name).
fn name_like(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 200
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// One connection's log: commands waiting for answers, and the lines written.
pub(crate) struct ConnectionLog {
    log: Arc<CdpLog>,
    connection: u64,
    started: Instant,
    up: Frames,
    down: Frames,
    pending: HashMap<(Option<String>, i64), (String, u64, Instant)>,
}

impl ConnectionLog {
    pub(crate) fn new(log: Arc<CdpLog>, kind: &str) -> ConnectionLog {
        let connection = log.next_connection();
        log.line(json!({ "connection": connection, "opened": kind, "at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string() }).to_string());
        ConnectionLog {
            log,
            connection,
            started: Instant::now(),
            up: Frames::default(),
            down: Frames::default(),
            pending: HashMap::new(),
        }
    }

    pub(crate) fn feed(&mut self, way: Way, bytes: &[u8]) {
        let messages = match way {
            Way::ToBrowser => self.up.feed(bytes),
            Way::ToClient => self.down.feed(bytes),
        };
        for message in messages {
            self.note(way, &message);
        }
    }

    fn ms(&self, at: Instant) -> f64 {
        (at.duration_since(self.started).as_secs_f64() * 1e6).round() / 1e3
    }

    fn note(&mut self, way: Way, message: &Message) {
        let f = fields(message);
        let now = Instant::now();
        match (way, f.id, f.method) {
            (Way::ToBrowser, Some(id), Some(method)) if self.pending.len() < MAX_PENDING => {
                self.pending.insert((f.session, id), (method, message.size, now));
            }
            (Way::ToClient, Some(id), None) => {
                let Some((method, sent, at)) = self.pending.remove(&(f.session.clone(), id)) else {
                    return;
                };
                let mut line = json!({
                    "connection": self.connection,
                    "at_ms": self.ms(at),
                    "method": method,
                    "id": id,
                    "request_bytes": sent,
                    "response_bytes": message.size,
                    "took_ms": (now.duration_since(at).as_secs_f64() * 1e6).round() / 1e3,
                });
                if let Some(s) = f.session {
                    line["session"] = json!(s);
                }
                if f.error {
                    line["error"] = json!(true);
                }
                self.log.line(line.to_string());
            }
            (Way::ToClient, None, Some(method)) => {
                let mut line = json!({
                    "connection": self.connection,
                    "at_ms": self.ms(now),
                    "event": method,
                    "bytes": message.size,
                });
                if let Some(s) = f.session {
                    line["session"] = json!(s);
                }
                self.log.line(line.to_string());
            }
            _ => {}
        }
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        for ((session, id), (method, sent, at)) in std::mem::take(&mut self.pending) {
            let mut line = json!({
                "connection": self.connection, "at_ms": self.ms(at), "method": method, "id": id,
                "request_bytes": sent, "answered": false,
            });
            if let Some(s) = session {
                line["session"] = json!(s);
            }
            self.log.line(line.to_string());
        }
        let closed = json!({ "connection": self.connection, "closed_ms": self.ms(Instant::now()) });
        self.log.line(closed.to_string());
    }
}

/// A read half whose bytes the connection's log sees as they are read.
pub(crate) struct Tapped<R> {
    pub inner: R,
    pub log: Arc<Mutex<ConnectionLog>>,
    pub way: Way,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tapped<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                self.log.lock().unwrap_or_else(|e| e.into_inner()).feed(self.way, fresh);
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    #[test]
    fn frames_come_back_together_however_the_bytes_are_cut() {
        let command = br#"{"id":7,"method":"Page.navigate","params":{"url":"https://example.com"},"sessionId":"AB12"}"#;
        let big = format!(
            r#"{{"id":8,"result":{{"data":"{}"}},"sessionId":"AB12"}}"#,
            "x".repeat(100_000)
        );
        let mut bytes = frame(0x1, false, &command[..20], Some([1, 2, 3, 4]));
        bytes.extend(frame(0x9, true, b"ping", Some([9, 9, 9, 9]))); // a control frame between
        bytes.extend(frame(0x0, true, &command[20..], Some([5, 6, 7, 8])));
        bytes.extend(frame(0x1, true, big.as_bytes(), None));
        for cut in [1, 3, 7, 64, 4096, bytes.len()] {
            let mut frames = Frames::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                got.extend(frames.feed(chunk));
            }
            assert_eq!(got.len(), 2, "cut {cut}");
            let f = fields(&got[0]);
            assert_eq!(
                (f.id, f.method.as_deref(), f.session.as_deref()),
                (Some(7), Some("Page.navigate"), Some("AB12"))
            );
            assert_eq!(got[1].size, big.len() as u64);
            assert!(got[1].head.len() <= HEAD && got[1].tail.len() <= TAIL);
            let f = fields(&got[1]);
            assert_eq!(
                (f.id, f.method, f.session.as_deref(), f.error),
                (Some(8), None, Some("AB12"), false)
            );
        }
    }

    #[test]
    fn events_and_errors_are_told_apart_and_odd_names_are_dropped() {
        let event = Message {
            head: br#"{"method":"Network.requestWillBeSent","params":{"#.to_vec(),
            tail: br#","sessionId":"S-1"}"#.to_vec(),
            size: 500_000,
        };
        let f = fields(&event);
        assert_eq!(
            (f.id, f.method.as_deref(), f.session.as_deref()),
            (None, Some("Network.requestWillBeSent"), Some("S-1"))
        );
        let error = br#"{"id":3,"error":{"code":-32601,"message":"nope"}}"#;
        let f = fields(&Message {
            head: error.to_vec(),
            tail: error.to_vec(),
            size: error.len() as u64,
        });
        assert_eq!((f.id, f.error), (Some(3), true));
        let odd = Message {
            head: br#"{"method":"a\"b<script>""#.to_vec(),
            tail: vec![],
            size: 99_999,
        };
        assert_eq!(fields(&odd).method, None);
    }
}
