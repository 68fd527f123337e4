//! A read-ahead under rustls: one large socket read serves many small TLS reads.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::{BufferPool, LentBuffer};

/// Size of the buffer a [`ReadAhead`] borrows for each read from its transport.
pub const READ_AHEAD_BUFFER: usize = 128 * 1024;

/// Bytes of read-ahead buffers lent at most at once (256 buffers of 128 KiB): beyond that,
/// reads go straight to the transport, so memory stays bounded however many connections
/// receive together.
const LEND_BYTES: usize = 32 << 20;

/// Bytes of read-ahead buffers kept for reuse while no connection needs them.
const SPARE_BYTES: usize = 2 << 20;

/// The process's read-ahead buffers.
static POOL: BufferPool = BufferPool::new(
    READ_AHEAD_BUFFER,
    SPARE_BYTES / READ_AHEAD_BUFFER,
    LEND_BYTES / READ_AHEAD_BUFFER,
);

/// A transport whose reads take everything the socket has (up to [`READ_AHEAD_BUFFER`] bytes)
/// into a buffer borrowed from a bounded pool, and serve smaller reads from it.
///
/// rustls reads at most one record (about 16 KiB) per `read_tls`, so over a bare socket
/// tokio-rustls makes one `recvfrom` per record; under this wrapper it makes one per
/// [`READ_AHEAD_BUFFER`] bytes the socket holds. The buffer is held only while it holds
/// unread bytes: it goes back to the pool as soon as the last one is read, when the transport
/// has nothing ready, at end of stream, on an error and when the wrapper is dropped, so an
/// idle connection holds none. When the pool has lent all it may, or the caller's buffer is at
/// least as large, a read goes straight to the transport. What the transport reports after
/// some bytes (end of stream, an error) is reported after those bytes.
///
/// Writes go straight to the transport, vectored when it is.
///
/// ```
/// # async fn example() -> std::io::Result<()> {
/// use streamproxy_tls::ReadAhead;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let (mut peer, io) = tokio::io::duplex(1024);
/// let mut io = ReadAhead::new(io);
/// peer.write_all(b"two reads").await?;
/// let mut small = [0u8; 4];
/// io.read_exact(&mut small).await?; // one read from the transport, 9 bytes ahead
/// assert_eq!(io.buffered(), 5);
/// io.read_exact(&mut [0u8; 5]).await?; // served from the buffer, which goes back
/// assert_eq!(io.buffered(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReadAhead<IO> {
    io: IO,
    ahead: Ahead,
}

/// What a [`ReadAhead`] holds: two words. A tunnel's tasks hold the stream by value at several
/// levels, so every byte here is paid several times per connection, idle or not; the bytes
/// read ahead and their positions are boxed, allocated once per transport read.
#[derive(Debug)]
enum Ahead {
    /// Nothing read ahead; the next read from the transport borrows from this pool.
    Empty(&'static BufferPool),
    /// Bytes read from the transport and not yet served.
    Holding(Box<Held>),
}

/// `buf[pos..end]`, read from the transport and not yet served; never empty.
#[derive(Debug)]
struct Held {
    buf: LentBuffer,
    pos: usize,
    end: usize,
}

impl<IO> ReadAhead<IO> {
    /// Wraps a transport; nothing is borrowed until bytes arrive.
    pub fn new(io: IO) -> Self {
        Self::with_pool(io, &POOL)
    }

    fn with_pool(io: IO, pool: &'static BufferPool) -> Self {
        Self {
            io,
            ahead: Ahead::Empty(pool),
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The transport. Reading from it directly skips the bytes read ahead.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Bytes read from the transport and not yet read from this wrapper.
    pub fn buffered(&self) -> usize {
        match &self.ahead {
            Ahead::Empty(_) => 0,
            Ahead::Holding(held) => held.end - held.pos,
        }
    }

    /// Copies what the buffer holds into `out`, giving the buffer back once it is empty.
    /// `false` when it held nothing.
    fn serve(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let Ahead::Holding(held) = &mut self.ahead else {
            return false;
        };
        let n = out.remaining().min(held.end - held.pos);
        out.put_slice(&held.buf[held.pos..held.pos + n]);
        held.pos += n;
        if held.pos == held.end {
            // Dropping the buffer gives it back.
            self.ahead = Ahead::Empty(held.buf.pool());
        }
        true
    }

    fn pool(&self) -> &'static BufferPool {
        match &self.ahead {
            Ahead::Empty(pool) => pool,
            Ahead::Holding(held) => held.buf.pool(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.serve(out) || out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let pool = this.pool();
        let lent = if out.remaining() < pool.size() {
            pool.lend()
        } else {
            None
        };
        let Some(mut buf) = lent else {
            return Pin::new(&mut this.io).poll_read(cx, out);
        };
        // On `Pending`, an error or end of stream the buffer is dropped: back to the pool.
        let n = {
            let mut ahead = ReadBuf::new(&mut buf);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut ahead))?;
            ahead.filled().len()
        };
        if n > 0 {
            this.ahead = Ahead::Holding(Box::new(Held {
                buf,
                pos: 0,
                end: n,
            }));
            this.serve(out);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport with `ready` bytes to give, then `then` (end of stream when `None`, unless
    /// `pending_after`), recording the size of every read asked of it.
    struct Script {
        ready: Vec<u8>,
        then: Option<io::ErrorKind>,
        pending_after: bool,
        asked: Vec<usize>,
        /// Most bytes one read returns.
        per_read: usize,
    }

    fn script(ready: Vec<u8>, then: Option<io::ErrorKind>) -> Script {
        Script {
            ready,
            then,
            pending_after: false,
            asked: Vec::new(),
            per_read: usize::MAX,
        }
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.asked.push(out.remaining());
            if !self.ready.is_empty() {
                let n = out.remaining().min(self.ready.len()).min(self.per_read);
                out.put_slice(&self.ready[..n]);
                self.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            match self.then {
                Some(kind) => Poll::Ready(Err(kind.into())),
                None if self.pending_after => Poll::Pending,
                None => Poll::Ready(Ok(())),
            }
        }
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// One read into a buffer of `len` bytes: what it returned.
    fn read(io: &mut ReadAhead<Script>, len: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut storage = vec![0u8; len];
        let mut out = ReadBuf::new(&mut storage);
        match Pin::new(io).poll_read(&mut cx, &mut out) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(out.filled().to_vec())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn got(poll: Poll<io::Result<Vec<u8>>>) -> Vec<u8> {
        match poll {
            Poll::Ready(Ok(bytes)) => bytes,
            other => panic!("expected bytes, got {other:?}"),
        }
    }

    #[test]
    fn the_wrapper_adds_at_most_two_words_to_the_transport() {
        assert!(std::mem::size_of::<Ahead>() <= 2 * std::mem::size_of::<usize>());
    }

    #[test]
    fn one_transport_read_serves_small_reads_and_the_buffer_goes_back_when_drained() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let data = bytes(40_000);
        let mut io = ReadAhead::with_pool(script(data.clone(), None), &POOL);
        io.get_mut().pending_after = true;
        let mut seen = Vec::new();
        while seen.len() < data.len() {
            seen.extend(got(read(&mut io, 16_709)));
            if seen.len() < data.len() {
                assert_eq!(POOL.lent(), 1, "held while it holds bytes");
            }
        }
        assert_eq!(seen, data);
        assert_eq!(
            io.get_ref().asked,
            [64 << 10],
            "one read from the transport"
        );
        assert_eq!((POOL.lent(), POOL.spare()), (0, 1), "back once drained");
        assert_eq!(io.buffered(), 0);
    }

    #[test]
    fn a_transport_with_nothing_ready_leaves_no_buffer_lent() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut io = ReadAhead::with_pool(script(Vec::new(), None), &POOL);
        io.get_mut().pending_after = true;
        assert!(read(&mut io, 100).is_pending());
        assert_eq!(POOL.lent(), 0, "an idle connection holds no buffer");
    }

    #[test]
    fn dropping_the_stream_gives_the_buffer_back() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut io = ReadAhead::with_pool(script(bytes(1000), None), &POOL);
        assert_eq!(got(read(&mut io, 10)).len(), 10);
        assert_eq!((POOL.lent(), io.buffered()), (1, 990));
        drop(io);
        assert_eq!((POOL.lent(), POOL.spare()), (0, 1));
    }

    #[test]
    fn partial_reads_deliver_every_byte_in_order() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let data = bytes(10_000);
        let mut s = script(data.clone(), None);
        // The transport gives at most 3,000 bytes per read: the wrapper reads again only
        // once what it holds is read.
        s.per_read = 3000;
        let mut io = ReadAhead::with_pool(s, &POOL);
        let mut seen = Vec::new();
        loop {
            let chunk = got(read(&mut io, 700));
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 700);
            seen.extend(chunk);
        }
        assert_eq!(seen, data);
        assert_eq!(
            io.get_ref().asked.len(),
            5,
            "four reads of data, one of the end"
        );
        assert_eq!(POOL.lent(), 0);
    }

    #[test]
    fn end_of_stream_comes_after_the_bytes_read_ahead() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut io = ReadAhead::with_pool(script(bytes(100), None), &POOL);
        assert_eq!(got(read(&mut io, 60)), bytes(100)[..60]);
        assert_eq!(got(read(&mut io, 60)), bytes(100)[60..]);
        assert_eq!(got(read(&mut io, 60)), [0u8; 0], "then end of stream");
        assert_eq!(POOL.lent(), 0);
    }

    #[test]
    fn an_error_comes_after_the_bytes_read_ahead() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut io = ReadAhead::with_pool(
            script(bytes(100), Some(io::ErrorKind::ConnectionReset)),
            &POOL,
        );
        assert_eq!(got(read(&mut io, 30)).len(), 30);
        assert_eq!(got(read(&mut io, 100)).len(), 70);
        match read(&mut io, 100) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected the error, got {other:?}"),
        }
        assert_eq!(POOL.lent(), 0, "an error leaves no buffer lent");
    }

    #[test]
    fn past_the_pool_bound_reads_go_straight_to_the_transport() {
        static POOL: BufferPool = BufferPool::new(64 << 10, 1, 1);
        let mut first = ReadAhead::with_pool(script(bytes(1000), None), &POOL);
        let mut second = ReadAhead::with_pool(script(bytes(1000), None), &POOL);
        assert_eq!(got(read(&mut first, 10)).len(), 10);
        assert_eq!(POOL.lent(), 1);
        assert_eq!(got(read(&mut second, 10)).len(), 10);
        assert_eq!(
            second.get_ref().asked,
            [10],
            "the caller's buffer, not a lent one"
        );
        assert_eq!((second.buffered(), POOL.lent()), (0, 1));
    }

    #[test]
    fn a_caller_buffer_as_large_as_the_pool_buffer_is_read_into_directly() {
        static POOL: BufferPool = BufferPool::new(4096, 1, 1);
        let mut io = ReadAhead::with_pool(script(bytes(10_000), None), &POOL);
        assert_eq!(got(read(&mut io, 8192)).len(), 8192);
        assert_eq!(io.get_ref().asked, [8192]);
        assert_eq!((POOL.lent(), POOL.spare()), (0, 0), "nothing borrowed");
    }
}
