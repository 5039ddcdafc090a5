//! Console events held on their way to a managed session's client, to drop the console
//! patch's frame from their stack trace (`console_patch`).
//!
//! Chrome writes each event as one unmasked text frame, `"method"` first. Whatever may be
//! the start of `{"method":"Runtime.consoleAPICalled"` is held from its frame header on
//! (a header or a prefix split across reads included) until it is told apart: another
//! message goes on as it came, a console event is held whole, rewritten and re-framed.
//! Everything else passes through the relay's buffer byte for byte, uncopied. Events over
//! [`MAX_HELD`] are not held: they pass unchanged, the patch's frame still on top.

use super::frame::{Header, OP_TEXT, header_len, parse_header};
use crate::console_patch::{EVENT_PREFIX, without_wrapper_frame};

/// The largest console event held and rewritten (what a page logs is mostly small; one
/// that logs megabytes keeps the patch's frame rather than the relay holding megabytes).
pub(crate) const MAX_HELD: u64 = 1024 * 1024;

/// What a held buffer of `HELD_KEPT` or less keeps between events.
const HELD_KEPT: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct ConsoleFrames {
    /// A frame from its header on: read and not yet written.
    held: Vec<u8>,
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Idle,
    /// Gathering a frame that may be a console event: nothing of it written.
    Collecting,
    /// `held` is what goes to the client (rewritten or as it came), `written` of it sent.
    Sending { written: usize },
}

/// What the held bytes tell.
enum Told {
    /// More bytes are needed, up to this many held in all.
    Short(usize),
    /// Not a console event (or past the bound): it goes as it came.
    Other,
    /// A whole console event, its header this long.
    Whole(usize),
}

/// Whether a frame with this header and payload so far may be a console event worth
/// holding.
fn may_be_console(header: &[u8], h: Header, payload: &[u8]) -> bool {
    let masked = header[1] & 0x80 != 0;
    let seen = payload.len().min(EVENT_PREFIX.len());
    h.fin
        && h.opcode == OP_TEXT
        && !masked
        && (EVENT_PREFIX.len() as u64..=MAX_HELD).contains(&h.len)
        && payload[..seen] == EVENT_PREFIX[..seen]
}

impl ConsoleFrames {
    /// How many of `bytes` (the stream from a frame boundary, or from inside a payload
    /// with `remaining` bytes left of it) pass before a frame that may be a console event
    /// begins; all of them when none does.
    pub(crate) fn clear_len(remaining: u64, bytes: &[u8]) -> usize {
        let mut at = remaining.min(bytes.len() as u64) as usize;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let len = header_len(rest);
            if rest.len() < len {
                return at; // a header cut short: told apart with the next read
            }
            let Ok(h) = parse_header(&rest[..len]) else {
                return bytes.len(); // the relay's cursor refuses it as it passes
            };
            if may_be_console(rest, h, &rest[len..]) {
                return at;
            }
            let end = (at + len) as u64 + h.len;
            if end >= bytes.len() as u64 {
                return bytes.len();
            }
            at = end as usize;
        }
        bytes.len()
    }

    /// Gathering a frame: the relay's bytes go here until it is told apart.
    pub(crate) fn collecting(&self) -> bool {
        self.state == State::Collecting
    }

    /// What is still to be written to the client before anything else.
    pub(crate) fn pending(&self) -> Option<&[u8]> {
        match self.state {
            State::Sending { written } => Some(&self.held[written..]),
            _ => None,
        }
    }

    /// `n` more of [`Self::pending`] were written.
    pub(crate) fn wrote(&mut self, n: usize) {
        if let State::Sending { written } = &mut self.state {
            *written += n;
            if *written >= self.held.len() {
                self.state = State::Idle;
                self.held.clear();
                if self.held.capacity() > HELD_KEPT {
                    self.held = Vec::new();
                }
            }
        }
    }

    /// Whether the client's stream is on a frame boundary, if this can tell (nothing of a
    /// held frame written yet: yes; part of one: no); `None` when nothing is held.
    pub(crate) fn client_at_boundary(&self) -> Option<bool> {
        match self.state {
            State::Idle => None,
            State::Collecting => Some(true),
            State::Sending { written } => Some(written == 0),
        }
    }

    /// Takes the bytes of the frame that begins (or began) a hold from `bytes`, as many as
    /// it needs to be told apart; answers how many it took. Once told, [`Self::pending`]
    /// has what goes to the client.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> usize {
        self.state = State::Collecting;
        let mut taken = 0;
        loop {
            match self.told() {
                Told::Short(want) => {
                    let n = (want - self.held.len()).min(bytes.len() - taken);
                    if n == 0 {
                        return taken;
                    }
                    self.held.extend_from_slice(&bytes[taken..taken + n]);
                    taken += n;
                }
                Told::Other => break,
                Told::Whole(header) => {
                    let rewritten = std::str::from_utf8(&self.held[header..])
                        .ok()
                        .and_then(without_wrapper_frame);
                    if let Some(text) = rewritten {
                        self.held.clear();
                        push_text_frame(&mut self.held, text.as_bytes());
                    }
                    break;
                }
            }
        }
        self.state = State::Sending { written: 0 };
        taken
    }

    fn told(&self) -> Told {
        let held = &self.held;
        let len = header_len(held);
        if held.len() < len {
            return Told::Short(len);
        }
        let Ok(h) = parse_header(&held[..len]) else {
            return Told::Other;
        };
        let payload = &held[len..];
        if !may_be_console(held, h, payload) {
            return Told::Other;
        }
        let whole = len + h.len as usize;
        if payload.len() < EVENT_PREFIX.len() {
            Told::Short(len + EVENT_PREFIX.len())
        } else if held.len() < whole {
            Told::Short(whole)
        } else {
            Told::Whole(len)
        }
    }
}

/// An unmasked final text frame of `payload`, as Chrome writes one.
fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x80 | OP_TEXT);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n < 65536 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}
