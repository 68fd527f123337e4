//! The byte relay between a client stream and a destination stream.

use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use tls::{BufferPool, LentBuffer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of the copy buffer a direction borrows from the pool while data moves. A read drains
/// everything its reader has ready (several TLS records) up to this size, and a write hands
/// all of it to the writer at once (rustls seals it into records and sends them with one
/// `writev` per 64 KiB, the limit of its outgoing buffer).
pub const RELAY_BUFFER: usize = 128 * 1024;

/// Size of the buffer a direction allocates when the pool has lent all it may: one TLS
/// record's worth of plaintext.
pub const SMALL_RELAY_BUFFER: usize = 16 * 1024;

/// Bytes of large buffers the pool lends at most at once (512 buffers of 128 KiB): beyond
/// that, busy directions copy through small buffers, so memory stays bounded however many
/// tunnels move data together.
const POOL_LEND_BYTES: usize = 64 << 20;

/// Bytes of large buffers the pool keeps for reuse while no direction needs them.
const POOL_SPARE_BYTES: usize = 2 << 20;

/// The process's relay buffers.
static POOL: BufferPool = BufferPool::new(
    RELAY_BUFFER,
    POOL_SPARE_BYTES / RELAY_BUFFER,
    POOL_LEND_BYTES / RELAY_BUFFER,
);

/// A copy buffer: a large one lent by the pool, or a small one of its own when the pool has
/// lent all it may.
#[derive(Debug)]
enum Buffer {
    Lent(LentBuffer),
    Small(Box<[u8]>),
}

impl Buffer {
    fn take(pool: &'static BufferPool) -> Buffer {
        match pool.lend() {
            Some(buf) => Buffer::Lent(buf),
            None => Buffer::Small(vec![0u8; SMALL_RELAY_BUFFER.min(pool.size())].into()),
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Buffer::Lent(buf) => buf,
            Buffer::Small(buf) => buf,
        }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Buffer::Lent(buf) => buf,
            Buffer::Small(buf) => buf,
        }
    }
}

/// What a finished relay moved, and how it ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes read from the client and written to the destination.
    pub up: u64,
    /// Bytes read from the destination and written to the client.
    pub down: u64,
    /// `Ok` when both directions reached end of stream; the first error otherwise.
    pub result: io::Result<()>,
}

/// Relays bytes both ways until both directions have ended or either side fails.
///
/// An end of stream from one side becomes a write shutdown on the other (for TLS, a
/// close_notify) while the other direction keeps flowing. Each direction copies through one
/// buffer of [`RELAY_BUFFER`] bytes from a bounded pool ([`SMALL_RELAY_BUFFER`] when the pool
/// has lent all it may), held only while data moves: a direction that waits for its reader
/// with nothing left to write gives the buffer back, so an idle tunnel holds none. Each read
/// takes everything the reader has ready, up to the buffer's size, and each write offers all
/// of it.
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
    relay_reporting(client, destination, |_, _| {}).await
}

/// [`relay`], telling `moved(up, down)` the bytes read since its last call whenever some
/// were, so that counters follow the bytes as they move rather than when the relay ends.
pub async fn relay_reporting<C, D>(
    client: &mut C,
    destination: &mut D,
    mut moved: impl FnMut(u64, u64),
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut reported = (0u64, 0u64);
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
        if (up.read, down.read) != reported {
            moved(up.read - reported.0, down.read - reported.1);
            reported = (up.read, down.read);
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
        up: up.read,
        down: down.read,
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
    buf: Option<Buffer>,
    pool: &'static BufferPool,
    pos: usize,
    cap: usize,
    read: u64,
    eof: bool,
    /// A read error that came after some bytes in the same fill: reported once they are
    /// written.
    read_error: Option<io::Error>,
    need_flush: bool,
    /// Whether the reader's end of stream shuts the writer down.
    shutdown_at_eof: bool,
}

impl Direction {
    fn new() -> Direction {
        Direction::with_pool(&POOL)
    }

    fn with_pool(pool: &'static BufferPool) -> Direction {
        Direction {
            buf: None,
            pool,
            pos: 0,
            cap: 0,
            read: 0,
            eof: false,
            read_error: None,
            need_flush: false,
            shutdown_at_eof: true,
        }
    }

    fn give_back(&mut self) {
        // A lent buffer goes back to its pool when dropped.
        self.buf = None;
    }

    /// Reads into the empty buffer until it is full or the reader has nothing more ready:
    /// every decrypted record rustls holds, and what the socket has, in as few calls as the
    /// reader allows. `Pending` only when nothing at all was read.
    fn poll_fill<R>(&mut self, cx: &mut Context<'_>, reader: &mut R) -> Poll<Result<(), Fault>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        self.pos = 0;
        self.cap = 0;
        let pool = self.pool;
        let buf = self.buf.get_or_insert_with(|| Buffer::take(pool));
        while self.cap < buf.len() {
            let mut rb = ReadBuf::new(&mut buf[self.cap..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                        break;
                    }
                    self.cap += n;
                    self.read += n as u64;
                }
                Poll::Ready(Err(e)) if self.cap == 0 => return Poll::Ready(Err(Fault::Read(e))),
                Poll::Ready(Err(e)) => {
                    self.read_error = Some(e);
                    break;
                }
                // The reader has registered this task's waker: it is woken when more comes.
                Poll::Pending if self.cap == 0 && !self.eof => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(()))
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
                if let Some(e) = self.read_error.take() {
                    return Poll::Ready(Err(Fault::Read(e)));
                }
                match self.poll_fill(cx, reader) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to write and nothing to read: the buffer goes back until
                        // the reader wakes this direction up again.
                        self.give_back();
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
                let Some(buf) = self.buf.as_ref() else {
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
            if let Some(e) = self.read_error.take() {
                self.give_back();
                return Poll::Ready(Err(Fault::Read(e)));
            }
            if self.eof {
                self.give_back();
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

    /// A reader that hands out its chunks one per read, then `Pending` (or an error).
    struct Chunks {
        chunks: std::collections::VecDeque<Vec<u8>>,
        then: Option<io::ErrorKind>,
        reads: usize,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            match self.chunks.pop_front() {
                Some(chunk) => {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.chunks.push_front(chunk[n..].to_vec());
                    }
                    Poll::Ready(Ok(()))
                }
                None => match self.then {
                    Some(kind) => Poll::Ready(Err(kind.into())),
                    None => Poll::Pending,
                },
            }
        }
    }

    /// A writer that records the size of every write and takes at most `limit` bytes each.
    #[derive(Default)]
    struct Writes {
        sizes: Vec<usize>,
        data: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.sizes.push(n);
            self.data.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn chunks(sizes: &[usize], then: Option<io::ErrorKind>) -> Chunks {
        Chunks {
            chunks: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| vec![i as u8; n])
                .collect(),
            then,
            reads: 0,
        }
    }

    fn poll_once<R, W>(d: &mut Direction, r: &mut R, w: &mut W) -> Poll<Result<(), Fault>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        d.poll_copy(&mut cx, r, w)
    }

    #[test]
    fn past_the_pool_bound_a_direction_copies_through_a_small_buffer_of_its_own() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 2, 1);
        let first = Buffer::take(&POOL);
        let second = Buffer::take(&POOL);
        assert!(matches!(first, Buffer::Lent(_)));
        assert!(matches!(second, Buffer::Small(_)));
        assert_eq!((first.len(), second.len()), (64 << 10, SMALL_RELAY_BUFFER));
        assert_eq!(POOL.lent(), 1, "small buffers are not counted");
        drop((first, second));
        assert_eq!(
            (POOL.lent(), POOL.spare()),
            (0, 1),
            "only the lent one is kept"
        );
    }

    #[test]
    fn a_direction_borrows_while_data_moves_and_gives_back_when_idle() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 4, 4);
        let mut d = Direction::with_pool(&POOL);
        let mut r = chunks(&[1000], None);
        // A writer that is never blocked: one poll moves everything and goes idle.
        let mut w = Writes {
            limit: usize::MAX,
            ..Writes::default()
        };
        assert!(poll_once(&mut d, &mut r, &mut w).is_pending());
        assert_eq!(w.data.len(), 1000);
        assert!(d.buf.is_none(), "idle again: the buffer went back");
        assert_eq!((POOL.lent(), POOL.spare()), (0, 1));

        // A writer that blocks keeps the buffer lent until the bytes are out.
        struct Blocked;
        impl AsyncWrite for Blocked {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Pending
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut r = chunks(&[10], None);
        assert!(poll_once(&mut d, &mut r, &mut Blocked).is_pending());
        assert_eq!(POOL.lent(), 1);
        drop(d);
        assert_eq!(
            (POOL.lent(), POOL.spare()),
            (0, 1),
            "given back when dropped"
        );
    }

    #[test]
    fn a_read_drains_everything_ready_and_one_write_takes_it() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut d = Direction::with_pool(&POOL);
        // Five records' worth of plaintext ready, as rustls hands them out: one per read.
        let mut r = chunks(&[16 << 10, 16 << 10, 16 << 10, 16 << 10, 5000], None);
        let mut w = Writes {
            limit: usize::MAX,
            ..Writes::default()
        };
        assert!(poll_once(&mut d, &mut r, &mut w).is_pending());
        assert_eq!(w.sizes, [64 << 10, 5000], "one write per full buffer");
        assert_eq!(d.read, (64 << 10) + 5000);
        let expected: Vec<u8> = [0u8, 1, 2, 3]
            .iter()
            .flat_map(|&b| vec![b; 16 << 10])
            .chain(vec![4u8; 5000])
            .collect();
        assert_eq!(w.data, expected);
    }

    #[test]
    fn partial_writes_deliver_every_byte_in_order() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut d = Direction::with_pool(&POOL);
        let mut r = chunks(&[3000, 7000], None);
        let mut w = Writes {
            limit: 999,
            ..Writes::default()
        };
        assert!(poll_once(&mut d, &mut r, &mut w).is_pending());
        assert_eq!(w.data.len(), 10_000);
        assert!(w.sizes.iter().all(|&n| n <= 999));
        assert_eq!(&w.data[2999..3001], &[0, 1]);
    }

    #[test]
    fn a_read_error_after_some_bytes_comes_after_those_bytes() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut d = Direction::with_pool(&POOL);
        let mut r = chunks(&[100, 200], Some(io::ErrorKind::ConnectionReset));
        let mut w = Writes {
            limit: usize::MAX,
            ..Writes::default()
        };
        match poll_once(&mut d, &mut r, &mut w) {
            Poll::Ready(Err(Fault::Read(e))) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset)
            }
            other => panic!("expected the read error, got {other:?}"),
        }
        assert_eq!(
            w.data.len(),
            300,
            "what was read before the error is written"
        );
        assert_eq!(d.read, 300);
        assert!(d.buf.is_none());
        assert_eq!(POOL.lent(), 0);
    }

    #[test]
    fn end_of_stream_after_some_bytes_writes_them_then_shuts_down() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut d = Direction::with_pool(&POOL);
        let mut r = chunks(&[100], Some(io::ErrorKind::UnexpectedEof));
        // An empty read after the chunk: end of stream.
        r.then = None;
        r.chunks.push_back(Vec::new());
        let mut w = Writes {
            limit: usize::MAX,
            ..Writes::default()
        };
        assert!(matches!(
            poll_once(&mut d, &mut r, &mut w),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(w.data.len(), 100);
        assert_eq!(POOL.lent(), 0);
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
        assert_eq!(outcome.up, 7);
        assert_eq!(outcome.down, 100_000);
    }
}
