//! TLS over the read-ahead: records split across transport reads, and many records in one
//! read, arrive whole and in order, both ways.

mod support;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use streamproxy_tls::{Acceptor, ServerConfigBuilder, connect};
use support::Pki;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// A transport that returns at most `cap` bytes per read, so the read-ahead sees TLS records
/// cut wherever `cap` falls.
struct Capped {
    io: DuplexStream,
    cap: usize,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let cap = self.cap.min(out.remaining());
        let mut limited = ReadBuf::new(out.initialize_unfilled_to(cap));
        let poll = Pin::new(&mut self.io).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        out.advance(n);
        poll
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 241) as u8 ^ seed).collect::<Vec<u8>>()
}

/// A handshake over a pipe of `pipe` bytes whose reads return at most `cap` bytes, then 300 KB
/// each way at once; both sides must read exactly what the other wrote.
async fn transfer(pipe: usize, cap: usize) {
    let pki = Pki::new("read-ahead");
    let server_config = ServerConfigBuilder::new(&pki.credentials())
        .build()
        .expect("server config");
    let acceptor = Acceptor::new(&server_config);
    let client_config = pki.client_config();
    let (a, b) = tokio::io::duplex(pipe);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    let (server, client) = tokio::join!(
        acceptor.accept(Capped { io: a, cap }, peer),
        connect(Capped { io: b, cap }, &client_config),
    );
    let mut server = server.expect("server handshake").stream;
    let mut client = client.expect("client handshake");

    let up = payload(300_000, 0x5a);
    let down = payload(300_000, 0xa5);
    let (at_server, at_client) = tokio::join!(
        one_way(&mut server, down.clone()),
        one_way(&mut client, up.clone()),
    );
    assert_eq!(at_server.len(), up.len());
    assert!(at_server == up, "the server read what the client wrote");
    assert!(at_client == down, "the client read what the server wrote");
    assert_eq!(server.get_ref().0.buffered(), 0);
    assert_eq!(client.get_ref().0.buffered(), 0);
}

/// Writes `send` and shuts down while reading to the end; what was read.
async fn one_way<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, send: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(&send).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut got = Vec::new();
    let ((), read) = tokio::join!(write, r.read_to_end(&mut got));
    read.expect("read to end");
    got
}

#[tokio::test]
async fn records_cut_across_reads_arrive_whole() {
    // 1,000 bytes per read: every 16 KiB record spans many reads, and reads end mid-header.
    transfer(64 << 10, 1000).await;
}

#[tokio::test]
async fn many_records_in_one_read_arrive_whole() {
    // The whole pipe in one read: several records, the last often cut.
    transfer(256 << 10, usize::MAX).await;
}
