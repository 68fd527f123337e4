//! Protocol constants shared by every layer.

use core::time::Duration;

/// The TLS ALPN protocol name that routes a connection to the stream handler.
pub const STREAM_ALPN: &str = "godoxy-agent-stream/1";

/// The server name clients verify the server certificate against by default.
pub const DEFAULT_SERVER_NAME: &str = "godoxy.agent";

/// Length of the version field that starts every header.
pub const VERSION_LEN: usize = 8;

/// Longest host name a header can carry.
pub const MAX_HOST_LEN: usize = 255;

/// Longest port text a header can carry.
pub const MAX_PORT_LEN: usize = 5;

/// Total length of a version `0.1.0.0` header.
pub const HEADER_LEN_V0_1_0_0: usize = crate::field::v0_1_0_0::CHECKSUM.end;

/// Total length of a version `0.1.0` header.
pub const HEADER_LEN_V0_1_0: usize = crate::field::v0_1_0::CHECKSUM.end;

/// Length of the longest header of any version: a buffer this long fits every header.
pub const MAX_HEADER_LEN: usize = HEADER_LEN_V0_1_0;

/// How long the server waits to establish a connection to the destination.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Read deadline of a UDP destination socket in the original implementation.
pub const UDP_READ_DEADLINE: Duration = Duration::from_secs(10);

const _: () = assert!(HEADER_LEN_V0_1_0_0 == 274);
const _: () = assert!(HEADER_LEN_V0_1_0 == 275);
