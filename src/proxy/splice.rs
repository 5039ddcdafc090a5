//! A large frame's payload moved from socket to socket by the kernel (`splice(2)` through a
//! pipe): the relay reads the frame's header as usual, then hands the kernel the payload's
//! length, and none of its bytes are copied into the relay and out again. A screenshot of a
//! megabyte crosses the relay as page references instead of two copies.
//!
//! Only between two plain TCP sockets, and only for the part of a frame nothing reads: the
//! relay's own buffer is written first, a frame a reader holds (the console hold, the
//! one-context guard, the CDP log's tap) never goes this way.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// What is left of a frame's payload, at least, for it to go through the kernel: below this
/// the pipe's set-up and the extra system call cost more than the copies saved.
pub(crate) const SPLICE_MIN: u64 = 64 * 1024;

/// The pipe's size asked for: a megabyte frame in four moves. Where the kernel refuses,
/// its default (64 KiB) serves.
const PIPE_SIZE: usize = 256 * 1024;

/// The pipe a payload goes through, made for one frame and closed after it, so that an idle
/// connection holds no descriptors for it.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    pub(crate) capacity: usize,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let (read, write) = sys::pipe()?;
        let capacity = sys::set_pipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
        Ok(Pipe { read, write, capacity })
    }

    /// Moves up to `len` bytes waiting on `socket` into the (empty) pipe; 0 at the end of
    /// the stream.
    pub(crate) async fn fill(&self, socket: &TcpStream, len: usize) -> io::Result<usize> {
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || {
                sys::splice(socket.as_raw_fd(), self.write.as_raw_fd(), len)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                moved => return moved,
            }
        }
    }

    /// Moves up to `len` of the pipe's bytes to `socket`.
    pub(crate) async fn drain(&self, socket: &TcpStream, len: usize) -> io::Result<usize> {
        loop {
            socket.writable().await?;
            match socket.try_io(Interest::WRITABLE, || {
                sys::splice(self.read.as_raw_fd(), socket.as_raw_fd(), len)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                moved => return moved,
            }
        }
    }
}

/// The pipe and splice calls (libc, hence unsafe).
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    /// A non-blocking pipe: (read end, write end).
    pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is two ints, which pipe2 fills on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made and are owned by nothing else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// Asks for a pipe of `size` bytes; the size it got, if it got one.
    pub(super) fn set_pipe_size(pipe: &OwnedFd, size: usize) -> Option<usize> {
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
        let got = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        (got > 0).then_some(got as usize)
    }

    pub(super) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: two open descriptors, no offsets (each is a socket or a pipe); no memory
        // of ours is read or written.
        let moved = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if moved < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(moved as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_payload_crosses_byte_for_byte_and_no_further_than_asked() {
        let (mut sender, from) = pair().await;
        let (to, mut receiver) = pair().await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let after = b"the next frame's header";
        let writer = tokio::spawn({
            let payload = payload.clone();
            async move {
                sender.write_all(&payload).await.unwrap();
                sender.write_all(after).await.unwrap();
                sender
            }
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 3_000_000];
            receiver.read_exact(&mut got).await.unwrap();
            got
        });
        let pipe = Pipe::new().unwrap();
        let mut left = payload.len();
        while left > 0 {
            let piped = pipe.fill(&from, left.min(pipe.capacity)).await.unwrap();
            assert!(piped > 0 && piped <= left);
            let mut out = piped;
            while out > 0 {
                out -= pipe.drain(&to, out).await.unwrap();
            }
            left -= piped;
        }
        assert_eq!(reader.await.unwrap(), payload);
        // What came after the payload is still on the socket, for the relay to read.
        let _sender = writer.await.unwrap();
        let mut rest = vec![0; after.len()];
        let mut from = from;
        from.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, after);
    }
}
