//! The frame-level relay between a CDP client and its browser.
//!
//! Bytes are forwarded as they arrive, unchanged: client frames stay masked (browsers
//! accept masked frames from clients), browser frames stay unmasked, nothing is decoded
//! into text or re-encoded. A small cursor per direction follows the frame headers as the
//! bytes go by, which is enough to count messages, enforce the message size limit, and
//! end a connection on a frame boundary with a real close frame when the session ends.
//!
//! Buffers start small and grow while reads fill them (screenshots are megabytes), then
//! shrink back, so an idle connection holds a few KiB.

use std::future::Future;
use std::io;
use std::ops::ControlFlow;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::console_frames::ConsoleFrames;
use super::frame::{
    Header, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Violation, header_len, parse_header,
};
use super::one_context::OneContext;
use crate::metrics::{Counter, Metrics};
use crate::store::EndReason;

const MIN_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 1024 * 1024;
/// How long finishing a half-sent frame and sending the close frame may take.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a dropped browser connection waits to learn whether the browser is exiting. A
/// Chromium told to close drops its sockets first and may take seconds more to exit on a
/// busy machine (seen: over 1 s with the test suite's browsers starting alongside).
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Follows frame boundaries in a stream of bytes passing through.
#[derive(Debug, Clone, Default)]
pub(crate) struct FrameCursor {
    /// Payload bytes of the current frame not yet passed.
    remaining: u64,
    /// A header split across reads.
    partial: [u8; 14],
    partial_len: usize,
    /// Length so far of the data message being passed (for the size limit).
    message_len: u64,
}

impl FrameCursor {
    pub(crate) fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.partial_len == 0
    }

    /// Passes `bytes` through the cursor, calling `on_header` for each complete header.
    pub(crate) fn advance(
        &mut self,
        mut bytes: &[u8],
        max_message: u64,
        mut on_header: impl FnMut(Header),
    ) -> Result<(), Violation> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len() as u64);
                self.remaining -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            // Gather a header, which may have started in an earlier read.
            let need = header_len(&self.partial[..self.partial_len]);
            let take = (need - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take;
            bytes = &bytes[take..];
            let need = header_len(&self.partial[..self.partial_len]);
            if self.partial_len < need {
                continue; // still short: the loop ends if `bytes` is exhausted
            }
            let header = parse_header(&self.partial[..self.partial_len])?;
            self.partial_len = 0;
            self.remaining = header.len;
            match header.opcode {
                OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                    self.message_len = self.message_len.saturating_add(header.len);
                    if self.message_len > max_message {
                        return Err(Violation::TooBig);
                    }
                    if header.fin {
                        self.message_len = 0;
                    }
                }
                OP_CLOSE | OP_PING | OP_PONG if header.fin && header.len <= 125 => {}
                _ => return Err(Violation::Protocol),
            }
            on_header(header);
        }
        Ok(())
    }

    /// How many of `bytes` finish the current frame, if they do.
    pub(crate) fn boundary_within(&self, bytes: &[u8]) -> Option<usize> {
        if self.at_boundary() {
            return Some(0);
        }
        let mut probe = self.clone();
        for i in 0..bytes.len() {
            // One byte at a time through headers; payload in one step.
            if probe.remaining > 0 {
                let n = probe.remaining.min((bytes.len() - i) as u64) as usize;
                probe.remaining -= n as u64;
                if probe.at_boundary() {
                    return Some(i + n);
                }
                return None;
            }
            probe.advance(&bytes[i..i + 1], u64::MAX, |_| {}).ok()?;
            if probe.at_boundary() {
                return Some(i + 1);
            }
        }
        None
    }
}

/// A close frame from the server side (unmasked): code and reason.
pub(crate) fn server_close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x80 | OP_CLOSE);
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// What ended a pump.
#[derive(Debug)]
enum PumpEnd {
    /// The source closed (EOF) or failed.
    SourceGone,
    /// The destination failed.
    DestinationGone,
    /// A close frame was passed through: the closing handshake is under way.
    Closed,
    Violation(Violation),
}

/// Counters one direction adds to.
struct Counters<'a> {
    messages: &'a Counter,
    bytes: &'a Counter,
}

/// What a relay allows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest message, in bytes (close 1009 above it).
    pub max_message: usize,
    /// Largest message from the client; smaller when something behind the relay parses
    /// them (a context session's filter), so that one is refused before it is read.
    pub max_client_message: usize,
    /// How long a write may make no progress before the peer counts as gone (a client
    /// that stops reading is dropped rather than held).
    pub write_stall: Duration,
    /// Longest busy-polling window after bytes pass (relays on their own cores only).
    pub busy_poll: Duration,
    /// Console events to the client lose the console patch's frame (a managed session's
    /// browser runs the patch; a user's own browser does not).
    pub console_frames: bool,
    /// The browser holds one browser context (a one-process shell): a client's
    /// `Target.createBrowserContext` is renamed on its way (`one_context`).
    pub one_context: bool,
}

impl Limits {
    pub(crate) fn from_config(config: &crate::config::Config) -> Limits {
        Limits {
            max_message: config.max_message_bytes,
            max_client_message: config.max_message_bytes,
            write_stall: Duration::from_millis(config.write_stall_timeout_ms),
            busy_poll: Duration::from_micros(config.relay_busy_poll_us),
            console_frames: false,
            one_context: false,
        }
    }
}

struct Direction {
    buf: Vec<u8>,
    write_stall: Duration,
    busy_poll: Duration,
    filled: usize,
    sent: usize,
    cursor: FrameCursor,
    max_message: u64,
    /// A close frame went by; the other side's echo ends the relay.
    close_passed: bool,
    /// Console events held to be rewritten (the browser's direction of a managed session).
    console: Option<ConsoleFrames>,
    /// `buf[sent..clear_upto]` holds no console event's beginning: it passes as it is.
    clear_upto: usize,
    /// Renames a second browser context's creation (the client's direction to a browser
    /// that holds one).
    one_context: Option<OneContext>,
    /// Messages and bytes passed and not yet added to the shared counters: added once per
    /// read rather than once per message, so that relays on different cores do not contend
    /// for the counters' cache line at every message.
    unpublished: (u64, u64),
}

impl Direction {
    fn new(limits: Limits, initial: &[u8]) -> Direction {
        let mut buf = Vec::with_capacity(MIN_BUFFER.max(initial.len()));
        buf.extend_from_slice(initial);
        Direction {
            buf,
            filled: initial.len(),
            sent: 0,
            cursor: FrameCursor::default(),
            max_message: limits.max_message as u64,
            write_stall: limits.write_stall,
            busy_poll: limits.busy_poll,
            close_passed: false,
            console: None,
            clear_upto: 0,
            one_context: None,
            unpublished: (0, 0),
        }
    }

    /// The client's direction to a browser of one browser context: what was read before
    /// the relay began is read by the guard too.
    fn with_one_context(mut self, on: bool) -> Direction {
        self.one_context = on.then(OneContext::default);
        self.guard_read();
        self
    }

    /// Lets the one-context guard read (and rewrite) what was just read, before any of it
    /// is written on.
    fn guard_read(&mut self) {
        if let Some(guard) = &mut self.one_context
            && guard.scan(&mut self.buf[self.sent..self.filled]) > 0
        {
            tracing::debug!("a second browser context refused: the browser holds one");
        }
    }

    /// The browser's direction of a managed session: console events are rewritten.
    fn with_console_frames(mut self, on: bool) -> Direction {
        self.console = on.then(ConsoleFrames::default);
        self
    }

    /// Whether what the destination got so far ends on a frame boundary.
    fn client_at_boundary(&self) -> bool {
        match self.console.as_ref().and_then(ConsoleFrames::client_at_boundary) {
            Some(at) => at,
            None => self.cursor.at_boundary(),
        }
    }

    /// Adds what was passed since the last time to the shared counters.
    fn publish(&mut self, counters: &Counters<'_>) {
        let (messages, bytes) = std::mem::take(&mut self.unpublished);
        if messages > 0 {
            counters.messages.inc_by(messages);
        }
        if bytes > 0 {
            counters.bytes.inc_by(bytes);
        }
    }

    /// Forwards from `src` to `dst` until something ends it. Cancel-safe: every byte read
    /// is accounted for in `filled`/`sent`, so the caller can finish a frame afterwards.
    async fn pump<R, W>(&mut self, src: &mut R, dst: &mut W, counters: &Counters<'_>) -> PumpEnd
    where
        R: Source,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.console.as_ref().is_some_and(|c| c.pending().is_some()) {
                if let ControlFlow::Break(end) = self.write_held(dst).await {
                    return end;
                }
                continue;
            }
            if self.sent < self.filled {
                let upto = match self.passable() {
                    Ok(upto) => upto,
                    Err(v) => return PumpEnd::Violation(v),
                };
                if upto == self.sent {
                    continue; // taken into the hold
                }
                if let ControlFlow::Break(end) = self.write_some(dst, upto).await {
                    return end;
                }
                if self.close_passed && self.sent == self.filled && self.client_at_boundary() {
                    return PumpEnd::Closed;
                }
                continue;
            }
            if dst.flush().await.is_err() {
                return PumpEnd::DestinationGone;
            }
            self.publish(counters);
            super::cores::active(self.busy_poll);
            self.resize();
            // Waiting for the next bytes holds no buffer: an idle connection costs little.
            {
                let mut ready = std::pin::pin!(src.ready());
                let at_once = std::future::poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx).is_ready())).await;
                if !at_once {
                    if self.buf.capacity() <= MIN_BUFFER {
                        self.buf = Vec::new();
                    }
                    ready.await;
                }
            }
            self.ensure_buffer();
            // Into the buffer's spare capacity: nothing is zeroed first.
            self.buf.clear();
            match src.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return PumpEnd::SourceGone,
                Ok(n) => {
                    self.filled = n;
                    self.sent = 0;
                    self.clear_upto = 0;
                    self.guard_read();
                }
            }
        }
    }

    /// How far `buf` may be written as it is. Without console frames, all of it; with
    /// them, up to where a console event may begin, whose bytes then go to the hold.
    fn passable(&mut self) -> Result<usize, Violation> {
        let Some(console) = &mut self.console else {
            return Ok(self.filled);
        };
        if !console.collecting() {
            if self.sent < self.clear_upto {
                return Ok(self.clear_upto);
            }
            let clear = ConsoleFrames::clear_len(self.cursor.remaining, &self.buf[self.sent..self.filled]);
            if clear > 0 {
                self.clear_upto = self.sent + clear;
                return Ok(self.clear_upto);
            }
        }
        let taken = console.take(&self.buf[self.sent..self.filled]);
        let (from, to) = (self.sent, self.sent + taken);
        self.sent = to;
        self.clear_upto = to;
        self.account(from, to)?;
        Ok(self.sent)
    }

    /// Writes some of what the hold has for the destination.
    async fn write_held<W: AsyncWrite + Unpin>(&mut self, dst: &mut W) -> ControlFlow<PumpEnd> {
        let Some(console) = &mut self.console else {
            return ControlFlow::Continue(());
        };
        let Some(pending) = console.pending() else {
            return ControlFlow::Continue(());
        };
        let written = match tokio::time::timeout(self.write_stall, dst.write(pending)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return ControlFlow::Break(PumpEnd::DestinationGone),
            Ok(Ok(n)) => n,
        };
        console.wrote(written);
        self.unpublished.1 += written as u64;
        ControlFlow::Continue(())
    }

    /// Follows the frames of `buf[from..to]`, passed on (or held): counts messages, notes a
    /// close frame, enforces the size limit.
    fn account(&mut self, from: usize, to: usize) -> Result<(), Violation> {
        let mut close = false;
        let mut messages = 0;
        let result = self.cursor.advance(&self.buf[from..to], self.max_message, |h| {
            if h.fin && matches!(h.opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION) {
                messages += 1;
            }
            close |= h.opcode == OP_CLOSE;
        });
        self.unpublished.0 += messages;
        self.close_passed |= close;
        result
    }

    /// Writes `buf[sent..upto]` once, advancing the cursor over what was written.
    async fn write_some<W: AsyncWrite + Unpin>(&mut self, dst: &mut W, upto: usize) -> ControlFlow<PumpEnd> {
        let written = match tokio::time::timeout(self.write_stall, dst.write(&self.buf[self.sent..upto])).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return ControlFlow::Break(PumpEnd::DestinationGone),
            Ok(Ok(n)) => n,
        };
        let result = self.account(self.sent, self.sent + written);
        self.unpublished.1 += written as u64;
        self.sent += written;
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(v) => ControlFlow::Break(PumpEnd::Violation(v)),
        }
    }

    /// A buffer to read into (an idle wait gave it up).
    fn ensure_buffer(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = Vec::with_capacity(MIN_BUFFER);
        }
    }

    /// Grows the buffer while reads fill it; shrinks it back when traffic is light.
    fn resize(&mut self) {
        let capacity = self.buf.capacity();
        if self.filled == capacity && capacity < MAX_BUFFER {
            self.buf = Vec::with_capacity((capacity * 4).min(MAX_BUFFER));
        } else if self.filled < MIN_BUFFER && capacity > MIN_BUFFER {
            self.buf = Vec::with_capacity(MIN_BUFFER);
        }
        self.filled = 0;
        self.sent = 0;
    }

    /// Passes the rest of the current frame, reading more from `src` if needed, so that
    /// something else can be written to `dst` on a frame boundary. False if it could not.
    async fn finish_frame<R, W>(&mut self, src: &mut R, dst: &mut W, counters: &Counters<'_>) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let finished = self.finish_frame_unpublished(src, dst).await;
        self.publish(counters);
        finished
    }

    async fn finish_frame_unpublished<R, W>(&mut self, src: &mut R, dst: &mut W) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some(console) = &self.console {
                if console.collecting() {
                    return true; // nothing of the held frame went: the client is on a boundary
                }
                if console.pending().is_some() {
                    if self.write_held(dst).await.is_break() {
                        return false;
                    }
                    continue;
                }
            }
            if let Some(n) = self.cursor.boundary_within(&self.buf[self.sent..self.filled]) {
                let upto = self.sent + n;
                while self.sent < upto {
                    if self.write_some(dst, upto).await.is_break() {
                        return false;
                    }
                }
                return true;
            }
            // The frame goes on past what was read: pass all of it and read on.
            while self.sent < self.filled {
                if self.write_some(dst, self.filled).await.is_break() {
                    return false;
                }
            }
            self.ensure_buffer();
            self.buf.clear();
            match src.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    self.filled = n;
                    self.sent = 0;
                    self.clear_upto = 0;
                    self.guard_read();
                }
            }
        }
    }
}

/// A read half the relay can wait on before it reads, so that it holds no buffer while a
/// connection is idle.
pub(crate) trait Source: AsyncRead + Unpin {
    /// Resolves once a read would not wait (bytes, the end, or an error); a source that
    /// cannot tell resolves at once.
    fn ready(&mut self) -> impl Future<Output = ()> + Send;
}

impl Source for tokio::net::tcp::OwnedReadHalf {
    #[allow(clippy::manual_async_fn)]
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        async {
            let _ = self.readable().await;
        }
    }
}

impl<'a> Source for Box<dyn AsyncRead + Unpin + Send + 'a> {
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

impl<T: AsyncRead + Send> Source for tokio::io::ReadHalf<T> {
    fn ready(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// One side of a relay: its two halves, and bytes it sent that were read already (past
/// its handshake) and must be passed on first.
pub(crate) struct Peer<R, W> {
    pub rx: R,
    pub tx: W,
    pub early: Vec<u8>,
}

/// Relays between a client and a browser (both past their handshakes) until either side
/// closes or `ended` fires. Then the client gets a close frame saying why: `end_reason`
/// is asked once `ended` has fired or the browser went away.
pub(crate) async fn relay<CR, CW, BR, BW>(
    client: Peer<CR, CW>,
    browser: Peer<BR, BW>,
    ended: &CancellationToken,
    end_reason: impl Fn() -> Option<EndReason>,
    limits: Limits,
    metrics: &Metrics,
) where
    CR: Source,
    CW: AsyncWrite + Unpin,
    BR: Source,
    BW: AsyncWrite + Unpin,
{
    let Peer {
        rx: mut client_rx,
        tx: mut client_tx,
        early: from_client,
    } = client;
    let Peer {
        rx: mut browser_rx,
        tx: mut browser_tx,
        early: from_browser,
    } = browser;
    let mut up = Direction::new(
        Limits {
            max_message: limits.max_client_message,
            ..limits
        },
        &from_client,
    )
    .with_one_context(limits.one_context);
    let mut down = Direction::new(limits, &from_browser).with_console_frames(limits.console_frames);
    let to_browser = Counters {
        messages: &metrics.messages_to_browser,
        bytes: &metrics.bytes_to_browser,
    };
    let to_client = Counters {
        messages: &metrics.messages_to_client,
        bytes: &metrics.bytes_to_client,
    };

    enum Ending {
        ClientGone,
        BrowserGone,
        Ended,
        ClientViolation(Violation),
        BrowserViolation(Violation),
    }
    let ending = {
        let ending = tokio::select! {
            biased;
            _ = ended.cancelled() => Ending::Ended,
            end = up.pump(&mut client_rx, &mut browser_tx, &to_browser) => match end {
                PumpEnd::Violation(v) => Ending::ClientViolation(v),
                PumpEnd::DestinationGone => Ending::BrowserGone,
                // After the client's close frame, the browser's echo comes back on the
                // other direction; then the browser closes the TCP connection.
                PumpEnd::Closed => match down.pump(&mut browser_rx, &mut client_tx, &to_client).await {
                    PumpEnd::Violation(v) => Ending::BrowserViolation(v),
                    _ => Ending::ClientGone,
                },
                PumpEnd::SourceGone => Ending::ClientGone,
            },
            end = down.pump(&mut browser_rx, &mut client_tx, &to_client) => match end {
                PumpEnd::Violation(v) => Ending::BrowserViolation(v),
                PumpEnd::DestinationGone => Ending::ClientGone,
                // The browser closed (its own close frame, passed on), or vanished.
                PumpEnd::Closed | PumpEnd::SourceGone => Ending::BrowserGone,
            },
        };
        if matches!(ending, Ending::Ended) {
            // Let the frame in flight to the client finish, so the close frame lands on
            // a boundary; if it cannot finish in time, the connection is just dropped.
            let finished = tokio::time::timeout(
                CLOSE_GRACE,
                down.finish_frame(&mut browser_rx, &mut client_tx, &to_client),
            )
            .await;
            if !matches!(finished, Ok(true)) {
                up.publish(&to_browser);
                down.publish(&to_client);
                return;
            }
        }
        ending
    };
    up.publish(&to_browser);
    down.publish(&to_client);
    let _ = browser_tx.shutdown().await;
    drop((browser_rx, browser_tx));

    let close = match ending {
        Ending::ClientGone => return,
        Ending::Ended => end_reason().unwrap_or(EndReason::Terminated).close_code(),
        Ending::BrowserGone => {
            if down.close_passed {
                return; // the browser's own close frame reached the client
            }
            // A browser that is exiting drops its sockets a moment before the process is
            // gone; give the session that moment to end so the client hears why.
            let _ = tokio::time::timeout(EXIT_GRACE, ended.cancelled()).await;
            match end_reason() {
                Some(reason) if ended.is_cancelled() => reason.close_code(),
                _ => (1011, "browser connection lost"),
            }
        }
        Ending::ClientViolation(Violation::TooBig) | Ending::BrowserViolation(Violation::TooBig) => {
            (1009, "message too big")
        }
        Ending::ClientViolation(Violation::Protocol) | Ending::BrowserViolation(Violation::Protocol) => {
            (1002, "protocol error")
        }
    };
    if !down.client_at_boundary() {
        return; // mid-frame: a close frame now would corrupt the stream
    }
    tracing::debug!(code = close.0, reason = close.1, "closing client connection");
    metrics.record_close(close.0);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        client_tx.write_all(&server_close_frame(close.0, close.1)).await?;
        client_tx.flush().await?;
        // Wait for the client's echo (or its hang-up) so the close completes cleanly.
        let mut sink = [0u8; 256];
        while client_rx.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn test_limits() -> Limits {
        Limits {
            max_message: 1 << 30,
            max_client_message: 1 << 30,
            write_stall: Duration::from_secs(5),
            busy_poll: Duration::ZERO,
            console_frames: false,
            one_context: false,
        }
    }

    fn peer<T: AsyncRead + AsyncWrite>(io: T) -> Peer<tokio::io::ReadHalf<T>, tokio::io::WriteHalf<T>> {
        let (rx, tx) = tokio::io::split(io);
        Peer {
            rx,
            tx,
            early: Vec::new(),
        }
    }

    /// A frame as a client sends it (masked) or a server does (unmasked).
    fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n < 65536 => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [1u8, 2, 3, 4];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    #[test]
    fn the_cursor_follows_frames_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend(frame(true, OP_TEXT, b"hello", true));
        stream.extend(frame(false, OP_BINARY, &vec![7; 300], false));
        stream.extend(frame(true, OP_PING, b"", true));
        stream.extend(frame(true, OP_CONTINUATION, &vec![8; 70_000], false));
        stream.extend(frame(true, OP_CLOSE, &[3, 232], true));
        for split in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let mut cursor = FrameCursor::default();
            let mut headers = Vec::new();
            for chunk in stream.chunks(split) {
                cursor.advance(chunk, u64::MAX, |h| headers.push(h)).unwrap();
            }
            assert!(cursor.at_boundary(), "split {split}");
            let ops: Vec<(bool, u8, u64)> = headers.iter().map(|h| (h.fin, h.opcode, h.len)).collect();
            assert_eq!(
                ops,
                vec![
                    (true, OP_TEXT, 5),
                    (false, OP_BINARY, 300),
                    (true, OP_PING, 0),
                    (true, OP_CONTINUATION, 70_000),
                    (true, OP_CLOSE, 2)
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn limits_and_bad_framing_are_caught() {
        let mut c = FrameCursor::default();
        let two_parts = [
            frame(false, OP_TEXT, &[0; 600], false),
            frame(true, OP_CONTINUATION, &[0; 600], false),
        ];
        c.advance(&two_parts[0], 1000, |_| {}).unwrap();
        assert_eq!(c.advance(&two_parts[1], 1000, |_| {}), Err(Violation::TooBig));
        let mut c = FrameCursor::default();
        assert_eq!(
            c.advance(&[0x83, 0x00], 1000, |_| {}),
            Err(Violation::Protocol),
            "reserved opcode"
        );
        let mut c = FrameCursor::default();
        assert_eq!(
            c.advance(&[0xC1, 0x00], 1000, |_| {}),
            Err(Violation::Protocol),
            "RSV1 without deflate"
        );
        let mut c = FrameCursor::default();
        assert_eq!(
            c.advance(&frame(false, OP_PING, b"x", false), 1000, |_| {}),
            Err(Violation::Protocol),
            "fragmented control frame"
        );
    }

    #[test]
    fn boundaries_are_found_ahead() {
        let a = frame(true, OP_TEXT, &[1; 200], false);
        let b = frame(true, OP_TEXT, &[2; 10], false);
        let mut c = FrameCursor::default();
        c.advance(&a[..50], u64::MAX, |_| {}).unwrap();
        let mut rest = a[50..].to_vec();
        rest.extend(&b);
        assert_eq!(c.boundary_within(&rest), Some(a.len() - 50));
        assert_eq!(c.boundary_within(&rest[..10]), None);
        let mut c = FrameCursor::default();
        c.advance(&a[..1], u64::MAX, |_| {}).unwrap();
        assert_eq!(c.boundary_within(&a[1..]), Some(a.len() - 1), "from inside a header");
        assert_eq!(FrameCursor::default().boundary_within(&a), Some(0));
    }

    #[tokio::test]
    async fn bytes_pass_unchanged_and_an_ending_session_closes_on_a_frame_boundary() {
        let metrics = Metrics::default();
        let (client_end, relay_client) = tokio::io::duplex(1 << 20);
        let (relay_browser, browser_end) = tokio::io::duplex(1 << 20);
        let ended = CancellationToken::new();
        let relay_task = relay(
            peer(relay_client),
            peer(relay_browser),
            &ended,
            || Some(EndReason::Expired),
            test_limits(),
            &metrics,
        );
        let peers = async {
            let (mut client, mut browser) = (client_end, browser_end);
            let request = frame(true, OP_TEXT, br#"{"id":1,"method":"Browser.getVersion"}"#, true);
            client.write_all(&request).await.unwrap();
            let mut got = vec![0; request.len()];
            browser.read_exact(&mut got).await.unwrap();
            assert_eq!(got, request, "client frames pass still masked");

            // Half of a big reply, then the session ends: the relay finishes the frame.
            let reply = frame(true, OP_BINARY, &vec![9; 300_000], false);
            browser.write_all(&reply[..100_000]).await.unwrap();
            let mut got = vec![0; reply.len()];
            client.read_exact(&mut got[..50_000]).await.unwrap();
            ended.cancel();
            browser.write_all(&reply[100_000..]).await.unwrap();
            client.read_exact(&mut got[50_000..]).await.unwrap();
            assert_eq!(got, reply);
            let mut close = vec![0; 2 + 2 + "session expired".len()];
            client.read_exact(&mut close).await.unwrap();
            assert_eq!(close, server_close_frame(4001, "session expired"));
            client
                .write_all(&frame(true, OP_CLOSE, &[15, 161], true))
                .await
                .unwrap();
            drop(client);
        };
        tokio::join!(relay_task, peers);
        assert_eq!(metrics.messages_to_browser.get(), 1);
        assert_eq!(metrics.messages_to_client.get(), 1);
    }

    /// Two ends of a loopback TCP connection.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (near, far) = tokio::join!(TcpStream::connect(address), listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    fn tcp(stream: TcpStream) -> Peer<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf> {
        let (rx, tx) = stream.into_split();
        Peer {
            rx,
            tx,
            early: Vec::new(),
        }
    }

    /// Frames of these payload sizes, each filled with its own pattern.
    fn frames_of(sizes: &[usize], masked: bool) -> Vec<u8> {
        sizes
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| {
                let payload: Vec<u8> = (0..n).map(|j| (j * 31 + i * 7) as u8).collect();
                frame(true, OP_BINARY, &payload, masked)
            })
            .collect()
    }

    /// Writes `bytes` in writes of `step`, then reads `expect` bytes from `reader`.
    async fn across(writer: &mut TcpStream, reader: &mut TcpStream, bytes: &[u8], step: usize) -> Vec<u8> {
        let write = async {
            for chunk in bytes.chunks(step) {
                writer.write_all(chunk).await.unwrap();
            }
        };
        let read = async {
            let mut got = vec![0; bytes.len()];
            reader.read_exact(&mut got).await.unwrap();
            got
        };
        tokio::join!(write, read).1
    }

    #[tokio::test]
    async fn large_frames_between_tcp_sockets_pass_byte_for_byte_and_a_cut_one_is_finished() {
        let metrics = Metrics::default();
        let (mut client, relay_client) = tcp_pair().await;
        let (relay_browser, mut browser) = tcp_pair().await;
        let ended = CancellationToken::new();
        let limits = Limits {
            console_frames: true, // a managed session's: a console reader rides along
            ..test_limits()
        };
        let relay_task = relay(
            tcp(relay_client),
            tcp(relay_browser),
            &ended,
            || Some(EndReason::Expired),
            limits,
            &metrics,
        );
        let peers = async {
            // Sizes about the buffer's steps and past its largest, small ones between.
            let down = frames_of(
                &[10, 70_000, 65_535, 65_736, 3_000_000, 5, 1_048_576, 200_000, 1],
                false,
            );
            assert_eq!(across(&mut browser, &mut client, &down, 77_777).await, down);
            let up = frames_of(&[70_000, 5, 300_000], true);
            assert_eq!(across(&mut client, &mut browser, &up, 1 << 20).await, up);

            // Part of a big reply, then the session ends: the relay finishes the frame and
            // then closes on the boundary.
            let reply = frame(true, OP_BINARY, &vec![9; 2_000_000], false);
            browser.write_all(&reply[..700_000]).await.unwrap();
            let mut got = vec![0; reply.len()];
            client.read_exact(&mut got[..300_000]).await.unwrap();
            ended.cancel();
            let (_, read) = tokio::join!(
                browser.write_all(&reply[700_000..]),
                client.read_exact(&mut got[300_000..])
            );
            read.unwrap();
            assert!(got == reply, "the cut frame arrived whole");
            let mut close = vec![0; 2 + 2 + "session expired".len()];
            client.read_exact(&mut close).await.unwrap();
            assert_eq!(close, server_close_frame(4001, "session expired"));
            client
                .write_all(&frame(true, OP_CLOSE, &[15, 161], true))
                .await
                .unwrap();
            drop(client);
            (down.len(), up.len())
        };
        let ((), (down, up)) = tokio::join!(relay_task, peers);
        assert_eq!(metrics.messages_to_client.get(), 10);
        assert_eq!(metrics.messages_to_browser.get(), 3);
        let (to_client, to_browser) = (metrics.bytes_to_client.get(), metrics.bytes_to_browser.get());
        // Counted as frames' bytes (headers included), the cut reply's whole frame too.
        assert_eq!(to_client, down as u64 + 2_000_000 + 10);
        assert_eq!(to_browser, up as u64);
    }

    /// A source that hands out its chunks exactly as cut, one per read.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(chunk) = self.0.front_mut() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    self.0.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl Source for Chunks {
        fn ready(&mut self) -> impl Future<Output = ()> + Send {
            std::future::ready(())
        }
    }

    /// A destination that takes at most `.1` bytes a write.
    struct Trickle(Vec<u8>, usize);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.1);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The browser's direction of a managed session, fed `chunks`: what the client got
    /// and the messages counted.
    async fn through_console_frames(chunks: Vec<Vec<u8>>, per_write: usize, console: bool) -> (Vec<u8>, u64) {
        let metrics = Metrics::default();
        let counters = Counters {
            messages: &metrics.messages_to_client,
            bytes: &metrics.bytes_to_client,
        };
        let limits = Limits {
            console_frames: console,
            ..test_limits()
        };
        let mut down = Direction::new(limits, &[]).with_console_frames(limits.console_frames);
        // An empty read is the end: no empty chunks.
        let mut src = Chunks(chunks.into_iter().filter(|c| !c.is_empty()).collect());
        let mut dst = Trickle(Vec::new(), per_write);
        let end = down.pump(&mut src, &mut dst, &counters).await;
        assert!(matches!(end, PumpEnd::SourceGone), "{end:?}");
        assert!(down.client_at_boundary());
        down.publish(&counters);
        assert_eq!(metrics.bytes_to_client.get(), dst.0.len() as u64);
        (dst.0, metrics.messages_to_client.get())
    }

    fn console_event(frames: &[serde_json::Value], text: &str) -> String {
        serde_json::json!({"method": "Runtime.consoleAPICalled", "params": {"type": "log",
            "args": [{"type": "string", "value": text}], "executionContextId": 1, "timestamp": 1.5,
            "stackTrace": {"callFrames": frames}}, "sessionId": "S1"})
        .to_string()
    }

    /// Frames from the browser with console events among them, and what the client must
    /// get: the same, each event with the wrapper's frame on top without it.
    fn console_stream(big: bool) -> (Vec<u8>, Vec<u8>, u64) {
        let (line, column) = crate::console_patch::call_sites()[0];
        let wrapper = serde_json::json!({"functionName": "log", "scriptId": "4", "url": "", "lineNumber": line, "columnNumber": column});
        let page = serde_json::json!({"functionName": "f", "scriptId": "5", "url": "https://a.test/app.js", "lineNumber": 9, "columnNumber": 4});
        let long = if big { "y".repeat(70_000) } else { "x".into() };
        let with = console_event(&[wrapper.clone(), page.clone()], &long);
        let without = console_event(std::slice::from_ref(&page), &long);
        let plain = console_event(std::slice::from_ref(&page), "no patch frame");
        let broken = format!("{}]", &with[..with.len() - 1]);
        let other = r#"{"method":"Runtime.consoleAPICalledLater","params":{}}"#;
        let mut input = Vec::new();
        let mut expected = Vec::new();
        let mut both = |i: Vec<u8>, e: Vec<u8>| {
            input.extend(&i);
            expected.extend(e);
        };
        let same = |f: Vec<u8>| (f.clone(), f);
        let (i, e) = same(frame(true, OP_TEXT, br#"{"id":1,"result":{}}"#, false));
        both(i, e);
        both(
            frame(true, OP_TEXT, with.as_bytes(), false),
            frame(true, OP_TEXT, without.as_bytes(), false),
        );
        let (i, e) = same(frame(true, OP_PING, b"", false));
        both(i, e);
        for f in [
            frame(true, OP_TEXT, plain.as_bytes(), false),
            frame(true, OP_TEXT, broken.as_bytes(), false),
            frame(true, OP_TEXT, other.as_bytes(), false),
            frame(true, OP_TEXT, &with.as_bytes()[..20], false),
            // Masked, or a binary frame, or one of several: not Chrome's events.
            frame(true, OP_TEXT, with.as_bytes(), true),
            frame(true, OP_BINARY, with.as_bytes(), false),
            frame(false, OP_TEXT, with.as_bytes(), false),
            frame(true, OP_CONTINUATION, b"", false),
        ] {
            let (i, e) = same(f);
            both(i, e);
        }
        both(
            frame(true, OP_TEXT, with.as_bytes(), false),
            frame(true, OP_TEXT, without.as_bytes(), false),
        );
        (input, expected, 10)
    }

    #[tokio::test]
    async fn console_events_lose_the_patch_frame_and_the_rest_passes_byte_for_byte() {
        let (input, expected, messages) = console_stream(false);
        assert_ne!(input, expected);
        // Cut in two at every byte: headers and the event's prefix split across reads.
        for at in 0..=input.len() {
            let chunks = vec![input[..at].to_vec(), input[at..].to_vec()];
            assert_eq!(
                through_console_frames(chunks, usize::MAX, true).await,
                (expected.clone(), messages),
                "cut at {at}"
            );
        }
        // A byte a read, and a few bytes a write.
        let bytes = input.chunks(1).map(<[u8]>::to_vec).collect();
        assert_eq!(
            through_console_frames(bytes, 3, true).await,
            (expected.clone(), messages)
        );
        // Long events (a 16-bit length), cut anywhere.
        let (input, expected, messages) = console_stream(true);
        for size in [1, 7, 100, 4095, 70_001, input.len()] {
            let chunks = input.chunks(size).map(<[u8]>::to_vec).collect();
            assert_eq!(
                through_console_frames(chunks, 1000, true).await,
                (expected.clone(), messages),
                "chunks of {size}"
            );
        }
        // A user's own browser runs no patch: its stream passes untouched.
        let chunks = input.chunks(4096).map(<[u8]>::to_vec).collect();
        assert_eq!(
            through_console_frames(chunks, usize::MAX, false).await,
            (input, messages)
        );
    }

    #[tokio::test]
    async fn a_console_event_over_the_bound_passes_unchanged() {
        let (line, column) = crate::console_patch::call_sites()[1];
        let wrapper = serde_json::json!({"functionName": "warn", "scriptId": "4", "url": "", "lineNumber": line, "columnNumber": column});
        let event = console_event(
            std::slice::from_ref(&wrapper),
            &"z".repeat(super::super::console_frames::MAX_HELD as usize),
        );
        let input = frame(true, OP_TEXT, event.as_bytes(), false);
        let chunks = input.chunks(65536).map(<[u8]>::to_vec).collect();
        assert_eq!(through_console_frames(chunks, usize::MAX, true).await, (input, 1));
        // Just under it, it is held and rewritten.
        let small = console_event(&[wrapper], "z");
        let input = frame(true, OP_TEXT, small.as_bytes(), false);
        let (out, _) = through_console_frames(vec![input.clone()], usize::MAX, true).await;
        assert!(out.len() < input.len());
        assert!(!String::from_utf8_lossy(&out).contains("\"warn\""));
    }

    /// What holding console events costs the relay: a Chrome-like stream (events of a few
    /// hundred bytes to a few KiB, `with_console` of them console events) through the
    /// browser's direction with console frames on and off, in 64 KiB reads; medians of
    /// MB/s. `cargo test --lib -- --ignored console_frames_cost --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn console_frames_cost() {
        let (line, column) = crate::console_patch::call_sites()[0];
        let wrapper = serde_json::json!({"functionName": "log", "scriptId": "4", "url": "", "lineNumber": line, "columnNumber": column});
        let page = serde_json::json!({"functionName": "f", "scriptId": "5", "url": "https://a.test/app.js", "lineNumber": 9, "columnNumber": 4});
        for every in [0, 20, 2] {
            let mut stream = Vec::new();
            for i in 0..20_000 {
                let payload = if every > 0 && i % every == 0 {
                    console_event(&[wrapper.clone(), page.clone()], &"c".repeat(i % 400))
                } else {
                    format!(
                        r#"{{"method":"Network.requestWillBeSent","params":{{"requestId":"{i}","url":"https://a.test/{}"}},"sessionId":"S1"}}"#,
                        "p".repeat((i * 37) % 3000)
                    )
                };
                stream.extend(frame(true, OP_TEXT, payload.as_bytes(), false));
            }
            let mut rates = [Vec::new(), Vec::new()];
            for round in 0..14 {
                let on = round % 2 == 0;
                let chunks = stream.chunks(65536).map(<[u8]>::to_vec).collect();
                let start = std::time::Instant::now();
                let (out, _) = through_console_frames(chunks, usize::MAX, on).await;
                let rate = stream.len() as f64 / start.elapsed().as_secs_f64() / 1e6;
                assert!(out.len() <= stream.len());
                rates[on as usize].push(rate);
            }
            for r in &mut rates {
                r.sort_by(f64::total_cmp);
            }
            let share = 100usize.checked_div(every).unwrap_or(0);
            println!(
                "{share}% console events, {} MB: off {:.0} MB/s, on {:.0} MB/s (medians of 7)",
                stream.len() / 1_000_000,
                rates[0][3],
                rates[1][3]
            );
        }
    }

    #[tokio::test]
    async fn an_ending_session_closes_before_a_held_console_event() {
        let metrics = Metrics::default();
        let (client_end, relay_client) = tokio::io::duplex(1 << 20);
        let (relay_browser, browser_end) = tokio::io::duplex(1 << 20);
        let ended = CancellationToken::new();
        let limits = Limits {
            console_frames: true,
            ..test_limits()
        };
        let relay_task = relay(
            peer(relay_client),
            peer(relay_browser),
            &ended,
            || Some(EndReason::Expired),
            limits,
            &metrics,
        );
        let peers = async {
            let (mut client, mut browser) = (client_end, browser_end);
            let reply = frame(true, OP_TEXT, br#"{"id":1,"result":{}}"#, false);
            browser.write_all(&reply).await.unwrap();
            let mut got = vec![0; reply.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, reply);
            // Half of a console event, held; the session ends before the rest comes.
            let (line, column) = crate::console_patch::call_sites()[0];
            let wrapper =
                serde_json::json!({"functionName": "log", "url": "", "lineNumber": line, "columnNumber": column});
            let event = frame(true, OP_TEXT, console_event(&[wrapper], "x").as_bytes(), false);
            browser.write_all(&event[..event.len() / 2]).await.unwrap();
            tokio::task::yield_now().await;
            ended.cancel();
            let mut close = vec![0; 2 + 2 + "session expired".len()];
            client.read_exact(&mut close).await.unwrap();
            assert_eq!(
                close,
                server_close_frame(4001, "session expired"),
                "the close frame on a boundary"
            );
            client
                .write_all(&frame(true, OP_CLOSE, &[15, 161], true))
                .await
                .unwrap();
            drop(client);
            drop(browser);
        };
        tokio::join!(relay_task, peers);
    }

    #[tokio::test]
    async fn a_client_close_is_echoed_by_the_browser_and_ends_the_relay() {
        let metrics = Metrics::default();
        let (mut client, relay_client) = tokio::io::duplex(4096);
        let (relay_browser, mut browser) = tokio::io::duplex(4096);
        let ended = CancellationToken::new();
        let relay_task = relay(
            peer(relay_client),
            peer(relay_browser),
            &ended,
            || None,
            test_limits(),
            &metrics,
        );
        let peers = async {
            let close = frame(true, OP_CLOSE, &[3, 232], true);
            client.write_all(&close).await.unwrap();
            let mut got = vec![0; close.len()];
            browser.read_exact(&mut got).await.unwrap();
            let echo = frame(true, OP_CLOSE, &[3, 232], false);
            browser.write_all(&echo).await.unwrap();
            let mut got = vec![0; echo.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, echo);
            drop(browser);
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "nothing after the browser's close: {rest:?}");
        };
        tokio::join!(relay_task, peers);
    }
}
