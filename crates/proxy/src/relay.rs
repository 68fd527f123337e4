//! The byte relay between a client stream and a destination stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of each direction's copy buffer: one TLS record's worth of plaintext.
pub const RELAY_BUFFER: usize = 16 * 1024;

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
/// close_notify) while the other direction keeps flowing. Each direction has one fixed
/// buffer, and a side that does not read slows the other down: memory per tunnel is bounded.
/// The byte counts are exact even when the relay ends in an error.
pub async fn relay<C, D>(client: &mut C, destination: &mut D) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut client = Counted::new(client);
    let mut destination = Counted::new(destination);
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut destination,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    .map(|_| ());
    RelayOutcome {
        client_to_destination: client.read,
        destination_to_client: destination.read,
        result,
    }
}

/// Counts the bytes read through a stream.
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    read: u64,
}

impl<'a, S: ?Sized> Counted<'a, S> {
    fn new(inner: &'a mut S) -> Self {
        Counted { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.read += (buf.filled().len() - before) as u64;
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
