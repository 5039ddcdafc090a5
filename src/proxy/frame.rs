//! WebSocket frame headers, as far as the relay and its console hold read them.

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Why a stream of frames cannot be relayed further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A message above the limit (close code 1009).
    TooBig,
    /// Not WebSocket framing (close code 1002).
    Protocol,
}

/// A frame header, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(super) fin: bool,
    pub(super) opcode: u8,
    pub(crate) len: u64,
}

/// Length of a header whose first bytes are `prefix` (as far as they tell).
pub(crate) fn header_len(prefix: &[u8]) -> usize {
    if prefix.len() < 2 {
        return 2;
    }
    let mask = if prefix[1] & 0x80 != 0 { 4 } else { 0 };
    let ext = match prefix[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + mask
}

pub(crate) fn parse_header(h: &[u8]) -> Result<Header, Violation> {
    if h[0] & 0x70 != 0 {
        // Reserved bits: no extension was negotiated through this relay.
        return Err(Violation::Protocol);
    }
    let len = match h[1] & 0x7f {
        126 => u16::from_be_bytes([h[2], h[3]]) as u64,
        127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        n => n as u64,
    };
    Ok(Header {
        fin: h[0] & 0x80 != 0,
        opcode: h[0] & 0x0f,
        len,
    })
}
