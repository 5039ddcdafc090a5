//! A client's `Target.createBrowserContext`, turned on its way into a method Chrome does not
//! know, for a browser that holds one browser context (a one-process headless shell,
//! `single_process_shell`): such a browser exits as soon as a page opens in a second
//! context, which would end the session; this way the client gets an error answer instead
//! (`'Target.oneContextPerSession' wasn't found`, with its own `id` and `sessionId`, from
//! Chrome itself) and the session goes on.
//!
//! The relay passes client bytes without decoding them, so this follows the frames as they
//! go by and reads the payload of text messages unmasked, a byte at a time: a small JSON
//! lexer (strings, escapes, nesting) finds a top-level `"method"` whose value starts with
//! `Target.createBrowserContext`, and the value's bytes still in the buffer are overwritten
//! (masked again) before the buffer is written on. Matching at the name's last byte means at
//! least that byte is still unsent however the reads split the message, and the method name
//! then changes (the two names differ in their last byte). A name written with JSON escapes
//! is not recognised: this spares well-meaning clients a lost session, it is no boundary
//! (the browser is confined either way, and its end ends only its own session).

use super::frame::{OP_CONTINUATION, OP_TEXT, header_len, parse_header};

/// The method refused, and what it becomes: the same length, so frames keep their sizes.
pub(crate) const REFUSED: &[u8] = b"Target.createBrowserContext";
pub(crate) const REPLACEMENT: &[u8] = b"Target.oneContextPerSession";
const _: () = assert!(REFUSED.len() == REPLACEMENT.len());

/// The key whose value is compared, as it appears between its quotes.
const KEY: &[u8] = b"method";

#[derive(Debug, Default)]
pub(crate) struct OneContext {
    /// A frame header split across reads.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame not yet seen.
    remaining: u64,
    /// The current frame's masking key, and the position of the next byte in its payload.
    key: [u8; 4],
    offset: usize,
    /// The current frame's payload is (part of) a text message.
    scanning: bool,
    /// A message is under way across frames (its next frame goes on with it).
    in_text: bool,
    json: Lexer,
    /// Frames that could not be parsed: the relay closes the connection; nothing more is read.
    broken: bool,
}

impl OneContext {
    /// Reads `bytes` (just read from the client, none of them sent yet) and rewrites the
    /// refused method wherever it is found. Returns how many were rewritten.
    pub(crate) fn scan(&mut self, bytes: &mut [u8]) -> usize {
        self.json.new_read();
        let mut rewritten = 0;
        let mut at = 0;
        while at < bytes.len() && !self.broken {
            if self.remaining > 0 {
                let n = self.remaining.min((bytes.len() - at) as u64) as usize;
                if self.scanning {
                    for i in at..at + n {
                        let mask = self.key[self.offset % 4];
                        self.offset += 1;
                        if self.json.byte(bytes[i] ^ mask, i, mask) {
                            self.json.rewrite(bytes);
                            rewritten += 1;
                        }
                    }
                }
                self.remaining -= n as u64;
                at += n;
                continue;
            }
            // Gather a header, which may have started in an earlier read.
            let need = header_len(&self.header[..self.header_len]);
            let take = (need - self.header_len).min(bytes.len() - at);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[at..at + take]);
            self.header_len += take;
            at += take;
            let need = header_len(&self.header[..self.header_len]);
            if self.header_len < need {
                continue;
            }
            self.start_frame(need);
        }
        rewritten
    }

    fn start_frame(&mut self, len: usize) {
        let raw = &self.header[..len];
        let Ok(header) = parse_header(raw) else {
            self.broken = true;
            return;
        };
        self.key = if raw[1] & 0x80 != 0 {
            raw[len - 4..len].try_into().expect("4 bytes")
        } else {
            [0; 4]
        };
        self.header_len = 0;
        self.remaining = header.len;
        self.offset = 0;
        match header.opcode {
            // Read as Chrome reads them: every text or continuation frame up to one marked
            // final is one message, whichever opcode the first had.
            OP_TEXT | OP_CONTINUATION => {
                if !self.in_text {
                    self.json = Lexer::default();
                }
                self.in_text = !header.fin;
                self.scanning = true;
            }
            // Control frames may come between a message's frames: they leave it as it is.
            _ if header.opcode & 0x8 != 0 => self.scanning = false,
            _ => {
                self.in_text = false;
                self.scanning = false;
            }
        }
    }
}

/// Follows one JSON message a byte at a time, as far as finding its top-level `"method"`.
#[derive(Debug, Default)]
struct Lexer {
    /// Nesting depth outside strings: the message's own object is depth 1.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The string being read is a top-level key or value worth comparing: how much of it
    /// matched so far (`None` once it cannot match).
    compared: Option<usize>,
    /// What the top-level string being compared would be.
    role: Role,
    /// Where each matched byte of the value is in the current read (with its mask), or
    /// `None` if it was in an earlier read and has gone.
    positions: [Option<(usize, u8)>; REFUSED.len()],
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A key, or a value that is not the method's.
    #[default]
    Other,
    /// The key `"method"` was read: a `:` and then its value follow.
    AfterKey,
    /// The `:` after the key: the next string is the method.
    BeforeValue,
    /// Reading the method's value.
    Value,
}

impl Lexer {
    fn new_read(&mut self) {
        self.positions = [None; REFUSED.len()];
    }

    /// Takes one unmasked byte at `at` in the read; true when the refused method's name has
    /// just been read whole.
    fn byte(&mut self, b: u8, at: usize, mask: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
                self.compared = None;
            } else if b == b'\\' {
                self.escaped = true;
                self.compared = None;
            } else if b == b'"' {
                self.in_string = false;
                self.end_string();
            } else if let Some(n) = self.compared {
                return self.compare(n, b, at, mask);
            }
            return false;
        }
        match b {
            b'"' => {
                self.in_string = true;
                let top = self.depth == 1;
                self.compared = top.then_some(0);
                if self.role == Role::BeforeValue && top {
                    self.role = Role::Value;
                } else {
                    self.role = Role::Other;
                }
            }
            b'{' | b'[' => {
                self.depth += 1;
                self.role = Role::Other;
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                self.role = Role::Other;
            }
            b':' if self.role == Role::AfterKey => self.role = Role::BeforeValue,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => self.role = Role::Other,
        }
        false
    }

    fn compare(&mut self, n: usize, b: u8, at: usize, mask: u8) -> bool {
        let target = if self.role == Role::Value { REFUSED } else { KEY };
        if n >= target.len() || target[n] != b {
            self.compared = None;
            return false;
        }
        if self.role == Role::Value {
            self.positions[n] = Some((at, mask));
        }
        self.compared = Some(n + 1);
        // The value is taken as soon as its name is whole (see the module's comment).
        self.role == Role::Value && n + 1 == REFUSED.len()
    }

    fn end_string(&mut self) {
        self.role = match (self.role, self.compared) {
            (Role::Other, Some(n)) if n == KEY.len() => Role::AfterKey,
            _ => Role::Other,
        };
        self.compared = None;
    }

    /// Overwrites what of the value is still in `bytes` with the replacement's bytes.
    fn rewrite(&mut self, bytes: &mut [u8]) {
        for (i, position) in self.positions.iter_mut().enumerate() {
            if let Some((at, mask)) = position.take() {
                bytes[at] = REPLACEMENT[i] ^ mask;
            }
        }
        self.compared = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked text (or another opcode), FIN as asked.
    fn frame(opcode: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    /// The payloads of a stream of client frames, unmasked.
    fn payloads(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = header_len(bytes);
            let header = parse_header(&bytes[..len]).unwrap();
            let key: [u8; 4] = bytes[len - 4..len].try_into().unwrap();
            let payload = &bytes[len..len + header.len as usize];
            out.push(String::from_utf8(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect()).unwrap());
            bytes = &bytes[len + header.len as usize..];
        }
        out
    }

    /// Passes `stream` through a scanner in reads of `split` bytes.
    fn through(stream: &[u8], split: usize) -> (Vec<u8>, usize) {
        let mut scanner = OneContext::default();
        let mut out = stream.to_vec();
        let rewritten = out.chunks_mut(split).map(|read| scanner.scan(read)).sum();
        (out, rewritten)
    }

    const KEY_BYTES: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Whether `sent`, with the refused name in it, came out renamed: the name's bytes still
    /// in the read that finished it are the replacement's (its last byte at least), those
    /// gone in earlier reads are as they were, and nothing else changed.
    fn renamed(got: &str, sent: &str) -> bool {
        let Some(at) = sent.find("Target.createBrowserContext") else {
            return got == sent;
        };
        let (name, end) = (at..at + REFUSED.len(), at + REFUSED.len());
        let new = &got.as_bytes()[name.clone()];
        got.len() == sent.len()
            && got[..at] == sent[..at]
            && got[end..] == sent[end..]
            && (0..REFUSED.len()).any(|k| new[..k] == REFUSED[..k] && new[k..] == REPLACEMENT[k..])
    }

    #[test]
    fn the_refused_method_is_renamed_however_the_reads_split_it() {
        let command = r#"{"id":7,"method":"Target.createBrowserContext","params":{"disposeOnDetach":true}}"#;
        let other = r#"{"id":6,"method":"Target.getTargets"}"#;
        let stream = [
            frame(OP_TEXT, true, other.as_bytes(), KEY_BYTES),
            frame(OP_TEXT, true, command.as_bytes(), [1, 2, 3, 4]),
        ]
        .concat();
        for split in 1..=stream.len() {
            let (out, rewritten) = through(&stream, split);
            assert_eq!(rewritten, 1, "reads of {split}");
            let got = payloads(&out);
            assert_eq!(got[0], other, "reads of {split}");
            assert!(renamed(&got[1], command), "reads of {split}: {}", got[1]);
        }
        // In one read, the whole name.
        let renamed_whole = command.replace("createBrowserContext", "oneContextPerSession");
        assert_eq!(payloads(&through(&stream, stream.len()).0)[1], renamed_whole);
    }

    #[test]
    fn spaces_session_ids_and_continuation_frames_are_followed() {
        let message = br#"{ "sessionId" : "AB", "id" : 3 , "method" :  "Target.createBrowserContext" }"#;
        let (first, rest) = message.split_at(30);
        let stream = [
            frame(OP_TEXT, false, first, KEY_BYTES),
            frame(0x9, true, b"ping", KEY_BYTES), // a control frame between the two
            frame(OP_CONTINUATION, true, rest, [9, 8, 7, 6]),
        ]
        .concat();
        for split in [1, 5, 64, stream.len()] {
            let (out, rewritten) = through(&stream, split);
            assert_eq!(rewritten, 1, "reads of {split}");
            let joined = payloads(&out)[0].clone() + &payloads(&out)[2];
            assert!(renamed(&joined, std::str::from_utf8(message).unwrap()), "{joined}");
            if split == stream.len() {
                assert!(joined.contains("\"Target.oneContextPerSession\""), "{joined}");
            }
        }
    }

    #[test]
    fn frames_are_joined_as_chrome_joins_them() {
        // Chrome reads a lone final continuation frame as a message, and two text frames
        // (the first not final) as one.
        let command = br#"{"id":1,"method":"Target.createBrowserContext"}"#;
        let lone = frame(OP_CONTINUATION, true, command, KEY_BYTES);
        let (out, rewritten) = through(&lone, lone.len());
        assert_eq!(rewritten, 1);
        assert!(payloads(&out)[0].contains("Target.oneContextPerSession"));
        let (first, rest) = command.split_at(17);
        let two = [
            frame(OP_TEXT, false, first, KEY_BYTES),
            frame(OP_TEXT, true, rest, [3; 4]),
        ]
        .concat();
        let (out, rewritten) = through(&two, 9);
        assert_eq!(rewritten, 1);
        assert!(renamed(
            &(payloads(&out)[0].clone() + &payloads(&out)[1]),
            std::str::from_utf8(command).unwrap()
        ));
        // Nor is a string inside a message mistaken for a top-level one when its frames
        // are both text frames.
        let nested =
            br#"{"id":1,"method":"Target.getTargets","params":{"x":{"method":"Target.createBrowserContext"}}}"#;
        let (first, rest) = nested.split_at(50);
        let two = [
            frame(OP_TEXT, false, first, KEY_BYTES),
            frame(OP_TEXT, true, rest, KEY_BYTES),
        ]
        .concat();
        assert_eq!(through(&two, 11), (two.clone(), 0));
    }

    #[test]
    fn unmasked_empty_and_long_headed_frames_are_followed() {
        let command = br#"{"id":2,"method":"Target.createBrowserContext"}"#;
        // An unmasked frame (no client sends one; the name is renamed all the same), an
        // empty one, a payload behind a 64-bit length, then the command after a partial match.
        let mut unmasked = vec![0x80 | OP_TEXT, command.len() as u8];
        unmasked.extend_from_slice(command);
        let mut long = vec![0x80 | 0x2, 0x80 | 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        long.extend_from_slice(&KEY_BYTES);
        long.extend(std::iter::repeat_n(7u8, 70_000));
        let partial = br#"{"id":3,"method":"Target.createBrowserContextual","x":{"method":"Target.createBrowserContext"},"method":"Target.createBrowserContext"}"#;
        let stream = [
            unmasked,
            frame(OP_TEXT, true, b"", KEY_BYTES),
            long,
            frame(OP_TEXT, true, partial, KEY_BYTES),
        ]
        .concat();
        for split in [1, 13, stream.len()] {
            let (out, rewritten) = through(&stream, split);
            // The unmasked command, the first method's prefix (a name that is no method:
            // harmless) and the last; not the nested one.
            assert_eq!(rewritten, 3, "reads of {split}");
            let changed: Vec<usize> = (0..stream.len()).filter(|&i| out[i] != stream[i]).collect();
            assert!(changed.len() <= 3 * REPLACEMENT.len(), "reads of {split}: {changed:?}");
            let last_frame = stream.len() - frame(OP_TEXT, true, partial, KEY_BYTES).len();
            let last = payloads(&out[last_frame..])[0].clone();
            assert!(
                last.contains(r#""x":{"method":"Target.createBrowserContext"}"#),
                "{last}"
            );
        }
    }

    #[test]
    fn the_name_anywhere_but_a_top_level_method_is_left_alone() {
        let untouched = [
            // In an expression (escaped quotes), as a nested key's value, as another key's
            // value, as a key, in a binary message.
            r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"x = {\"method\":\"Target.createBrowserContext\"}"}}"#,
            r#"{"id":2,"method":"Runtime.callFunctionOn","params":{"arguments":[{"value":{"method":"Target.createBrowserContext"}}]}}"#,
            r#"{"id":3,"note":"Target.createBrowserContext","method":"Target.getTargets"}"#,
            r#"{"id":4,"Target.createBrowserContext":"method","method":"Browser.getVersion"}"#,
            r#"{"id":5,"method":"Target.createBrowserContex\u0074"}"#,
        ];
        let mut stream: Vec<u8> = untouched
            .iter()
            .flat_map(|m| frame(OP_TEXT, true, m.as_bytes(), KEY_BYTES))
            .collect();
        stream.extend(frame(
            0x2,
            true,
            br#"{"id":6,"method":"Target.createBrowserContext"}"#,
            KEY_BYTES,
        ));
        for split in [1, 7, stream.len()] {
            let (out, rewritten) = through(&stream, split);
            assert_eq!(rewritten, 0, "reads of {split}");
            assert_eq!(out, stream, "reads of {split}");
        }
    }

    #[test]
    fn every_command_of_a_burst_is_renamed_and_nothing_else_changes() {
        let commands: Vec<String> = (0..50)
            .map(|i| {
                if i % 7 == 3 {
                    format!(r#"{{"id":{i},"method":"Target.createBrowserContext"}}"#)
                } else {
                    format!(
                        r#"{{"id":{i},"method":"Page.navigate","params":{{"url":"http://a/{}"}}}}"#,
                        "x".repeat(i * 40)
                    )
                }
            })
            .collect();
        let stream: Vec<u8> = commands
            .iter()
            .flat_map(|c| frame(OP_TEXT, true, c.as_bytes(), KEY_BYTES))
            .collect();
        let (out, rewritten) = through(&stream, 4096);
        assert_eq!(rewritten, 7);
        for (got, sent) in payloads(&out).iter().zip(&commands) {
            assert!(renamed(got, sent), "{got}");
        }
    }
}
