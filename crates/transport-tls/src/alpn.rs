//! ALPN: which application protocols a listener offers, and which one a connection chose.

/// The ALPN protocol name of HTTP/1.1.
pub const HTTP11_ALPN: &str = "http/1.1";

/// The application protocols a listener offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlpnPolicy {
    /// A listener for stream tunnels only: `["godoxy-agent-stream/1"]`. A client that offers
    /// ALPN without the stream protocol fails the handshake with `no_application_protocol`.
    #[default]
    StreamOnly,
    /// A port shared with an HTTPS API: `["http/1.1", "godoxy-agent-stream/1"]`. The connection
    /// is routed by [`crate::PeerInfo::alpn`].
    SharedWithHttp11,
}

impl AlpnPolicy {
    /// The protocol names, in the server's order of preference.
    pub fn protocols(self) -> &'static [&'static str] {
        match self {
            Self::StreamOnly => &[proto::STREAM_ALPN],
            Self::SharedWithHttp11 => &[HTTP11_ALPN, proto::STREAM_ALPN],
        }
    }

    pub(crate) fn wire(self) -> Vec<Vec<u8>> {
        self.protocols()
            .iter()
            .map(|name| name.as_bytes().to_vec())
            .collect()
    }
}

/// The application protocol a connection negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AppProtocol {
    /// `godoxy-agent-stream/1`: a stream tunnel.
    Stream,
    /// `http/1.1`: the HTTPS API on a shared port.
    Http11,
}

impl AppProtocol {
    /// The protocol's ALPN name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => proto::STREAM_ALPN,
            Self::Http11 => HTTP11_ALPN,
        }
    }

    /// Maps a negotiated ALPN name to a protocol; `None` for a name we never offer.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        if name == proto::STREAM_ALPN.as_bytes() {
            Some(Self::Stream)
        } else if name == HTTP11_ALPN.as_bytes() {
            Some(Self::Http11)
        } else {
            None
        }
    }
}

impl std::fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
