//! The server's header-reading path fed an arbitrary byte stream, cut into arbitrary reads.
//!
//! The first byte of the input picks how the stream is cut (fixed chunk sizes, or sizes taken
//! from a running hash), and some reads return `Pending` first. Whatever the bytes:
//! `read_header` never panics and never reads past one header; what it accepts decodes to the
//! same request with the codec, and what it refuses as truncated really ended early.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use streamproxy_proto::{Header, Version};
use streamproxy_proxy::request::{ReadHeaderError, Request, read_header};
use tokio::io::{AsyncRead, ReadBuf};

/// A stream over `data`, handing out at most `chunk(i)` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    mode: u8,
    reads: usize,
    pending: bool,
}

impl Chunked<'_> {
    fn chunk(&self) -> usize {
        match self.mode % 4 {
            0 => 1,
            1 => 7,
            2 => 4096,
            _ => 1 + (self.reads.wrapping_mul(2_654_435_761) >> 3) % 300,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads += 1;
        if self.mode & 4 != 0 && !self.pending && self.reads % 3 == 0 {
            self.pending = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending = false;
        let n = self
            .chunk()
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut stream = Chunked {
        data,
        pos: 0,
        mode,
        reads: 0,
        pending: false,
    };
    let result = runtime().block_on(read_header(&mut stream));
    match result {
        Ok(request) => {
            let version = Version::detect(data).expect("an accepted header has a version");
            let len = version.header_len();
            assert_eq!(stream.pos, len, "read past the header");
            let header = Header::decode(&data[..len]).expect("the codec accepts it too");
            assert_eq!(request, Request::from_header(&header));
        }
        Err(ReadHeaderError::Truncated { received, expected }) => {
            assert_eq!(received, data.len(), "truncated before the stream ended");
            assert!(received < expected);
        }
        Err(ReadHeaderError::Invalid(_)) => {
            assert!(
                stream.pos <= Version::V0_1_0.header_len(),
                "read past the header"
            );
        }
        Err(ReadHeaderError::Io(e)) => panic!("no I/O error was injected: {e}"),
        Err(e) => panic!("unexpected error {e:?}"),
    }
});
