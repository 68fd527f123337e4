//! The byte relay between a client stream and a destination stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of each direction's copy buffer: one TLS record's worth of plaintext.
pub const RELAY_BUFFER: usize = 16 * 1024;

/// Copy buffers kept for reuse per worker thread, so that a burst after an idle spell does
/// not go to the allocator.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A copy buffer from this thread's spares, or a new one.
fn take_buffer() -> Box<[u8]> {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; RELAY_BUFFER].into_boxed_slice())
}

/// Gives a copy buffer back to this thread's spares (or to the allocator when they are full).
fn give_buffer(buf: Box<[u8]>) {
    // During thread teardown the spares are gone already: the buffer is freed.
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

/// What a finished relay moved, and how it ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes read from the client and written to the destination.
    pub client_to_destination: u64,
    /// Bytes read from the destination and written to the client.
    pub destination_to_client: u64,
    /// `Ok` when both directions reached end of stream; the first error otherwise.
    pub result: io::Result<()>,
}

/// Relays bytes both ways until both directions have ended or either side fails.
///
/// An end of stream from one side becomes a write shutdown on the other (for TLS, a
/// close_notify) while the other direction keeps flowing. Each direction copies through one
/// buffer of [`RELAY_BUFFER`] bytes, held only while data moves: a direction that waits for
/// its reader with nothing left to write gives the buffer back, so an idle tunnel holds none.
/// A side that does not read slows the other down: memory per tunnel is bounded. The byte
/// counts are exact even when the relay ends in an error.
///
/// When writing to the destination fails (it reset the connection), what the destination sent
/// before going away is still delivered to the client: the other direction runs until the
/// destination's side ends, which a dead connection does at once, and the relay then fails
/// without shutting the client's side down (a TLS client sees a truncation, not a clean end).
/// Any other failure ends both directions at once.
pub async fn relay<C, D>(client: &mut C, destination: &mut D) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Direction::new();
    let mut down = Direction::new();
    let mut up_end: Option<Result<(), Fault>> = None;
    let mut down_end: Option<Result<(), Fault>> = None;
    let result = std::future::poll_fn(|cx| {
        if up_end.is_none() {
            if let Poll::Ready(end) = up.poll_copy(cx, &mut *client, &mut *destination) {
                up_end = Some(end);
            }
        }
        if down_end.is_none() {
            // After a reset, the destination's end of stream is no clean end: deliver what it
            // sent, but no close_notify that would make a cut stream look complete.
            down.shutdown_at_eof = !matches!(up_end, Some(Err(Fault::Write(_))));
            if let Poll::Ready(end) = down.poll_copy(cx, &mut *destination, &mut *client) {
                down_end = Some(end);
            }
        }
        match (&mut up_end, &mut down_end) {
            (Some(Ok(())), Some(Ok(()))) => Poll::Ready(Ok(())),
            // The destination is gone: drain what it sent before it went.
            (Some(Err(Fault::Write(_))), None) => Poll::Pending,
            (Some(Err(e)), _) | (_, Some(Err(e))) => Poll::Ready(Err(e.take())),
            _ => Poll::Pending,
        }
    })
    .await;
    RelayOutcome {
        client_to_destination: up.read,
        destination_to_client: down.read,
        result,
    }
}

/// How one direction failed.
#[derive(Debug)]
enum Fault {
    Read(io::Error),
    Write(io::Error),
}

impl Fault {
    fn take(&mut self) -> io::Error {
        let (Fault::Read(e) | Fault::Write(e)) = self;
        std::mem::replace(e, io::Error::other("reported already"))
    }
}

/// One direction of the relay: its copy buffer while data moves, and the bytes read so far.
struct Direction {
    /// Holds `buf[pos..cap]`, not yet written; `None` whenever that range is empty and the
    /// reader has nothing to give.
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read: u64,
    eof: bool,
    need_flush: bool,
    /// Whether the reader's end of stream shuts the writer down.
    shutdown_at_eof: bool,
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buffer(buf);
        }
    }
}

impl Direction {
    fn new() -> Direction {
        Direction {
            buf: None,
            pos: 0,
            cap: 0,
            read: 0,
            eof: false,
            need_flush: false,
            shutdown_at_eof: true,
        }
    }

    /// Copies from `reader` to `writer` until the reader's end of stream (then flushes and
    /// shuts the writer down) or an error.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), Fault>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.eof {
                let mut buf = ReadBuf::new(self.buf.get_or_insert_with(take_buffer));
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            self.read += n as u64;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Fault::Read(e))),
                    Poll::Pending => {
                        // Nothing to write and nothing to read: the buffer goes back until
                        // the reader wakes this direction up again.
                        if let Some(buf) = self.buf.take() {
                            give_buffer(buf);
                        }
                        // Nothing more to send for now: push out what was written.
                        if self.need_flush {
                            match Pin::new(&mut *writer).poll_flush(cx) {
                                Poll::Ready(Ok(())) => self.need_flush = false,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(Fault::Write(e))),
                                Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    // Unreachable: a read fills the buffer it keeps.
                    return Poll::Ready(Err(Fault::Read(io::Error::other("relay buffer lost"))));
                };
                match Pin::new(&mut *writer).poll_write(cx, &buf[self.pos..self.cap]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Fault::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Fault::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof {
                if let Some(buf) = self.buf.take() {
                    give_buffer(buf);
                }
                let mut w = Pin::new(&mut *writer);
                return match w.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) if !self.shutdown_at_eof => Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => w.poll_shutdown(cx).map_err(Fault::Write),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Fault::Write(e))),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut client_app, mut client_side) = tokio::io::duplex(64);
        let (mut dest_side, mut dest_app) = tokio::io::duplex(64);
        let mut up = Direction::new();
        let poll = |up: &mut Direction, r: &mut DuplexStream, w: &mut DuplexStream| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            up.poll_copy(&mut cx, r, w)
        };
        assert!(poll(&mut up, &mut client_side, &mut dest_side).is_pending());
        assert!(up.buf.is_none(), "idle before any byte");

        client_app.write_all(b"ping").await.expect("write");
        assert!(poll(&mut up, &mut client_side, &mut dest_side).is_pending());
        assert!(up.buf.is_none(), "idle again once the bytes are written");
        let mut got = [0u8; 4];
        dest_app.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        assert_eq!(up.read, 4);

        // A writer that does not take everything keeps the buffer until it does.
        client_app.write_all(&[1u8; 60]).await.expect("write");
        dest_side
            .write_all(&[0u8; 40])
            .await
            .expect("fill the pipe");
        assert!(poll(&mut up, &mut client_side, &mut dest_side).is_pending());
        assert!(up.buf.is_some(), "holds what is not written yet");
        let mut drain = vec![0u8; 64];
        dest_app.read_exact(&mut drain).await.expect("read");
        assert!(poll(&mut up, &mut client_side, &mut dest_side).is_pending());
        assert!(up.buf.is_none(), "gave it back once the rest is written");
        let mut rest = vec![0u8; 36];
        dest_app.read_exact(&mut rest).await.expect("read");
        assert_eq!(rest, [1u8; 36]);
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_flowing() {
        let (mut client_app, mut client_side) = tokio::io::duplex(64);
        let (mut dest_side, mut dest_app) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { relay(&mut client_side, &mut dest_side).await });

        client_app.write_all(b"request").await.expect("write");
        client_app.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        dest_app.read_to_end(&mut got).await.expect("read to eof");
        assert_eq!(got, b"request");

        // The destination answers after the client's EOF, with more than the pipe holds.
        let response = vec![7u8; 100_000];
        let writer = tokio::spawn({
            let response = response.clone();
            async move {
                dest_app.write_all(&response).await.expect("write");
                dest_app.shutdown().await.expect("shutdown");
            }
        });
        let mut back = Vec::new();
        client_app.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, response);
        writer.await.expect("writer");
        let outcome = relay.await.expect("relay");
        assert!(outcome.result.is_ok());
        assert_eq!(outcome.client_to_destination, 7);
        assert_eq!(outcome.destination_to_client, 100_000);
    }
}
