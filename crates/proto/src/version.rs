//! Header versions and their detection from the first bytes of a header.

use core::fmt;

use crate::HeaderError;
use crate::consts::{HEADER_LEN_V0_1_0, HEADER_LEN_V0_1_0_0, VERSION_LEN};

/// A header version, as named by the header's first [`VERSION_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Version {
    /// `0.1.0.0`: the 274-byte header without flags that the original package documentation
    /// describes. No released GoDoxy sends or accepts it.
    V0_1_0_0,
    /// `0.1.0`: the 275-byte header with a flag byte, the only one every released GoDoxy agent
    /// and server speaks. The default for what we send.
    #[default]
    V0_1_0,
}

impl Version {
    /// Every supported version, newest layout first.
    pub const ALL: [Version; 2] = [Version::V0_1_0_0, Version::V0_1_0];

    /// The version field as it appears on the wire: ASCII, NUL padded.
    pub const fn tag(self) -> &'static [u8; VERSION_LEN] {
        match self {
            Version::V0_1_0_0 => b"0.1.0.0\0",
            Version::V0_1_0 => b"0.1.0\0\0\0",
        }
    }

    /// The version as text, e.g. `"0.1.0.0"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0_0 => "0.1.0.0",
            Version::V0_1_0 => "0.1.0",
        }
    }

    /// Total length in bytes of a header of this version.
    pub const fn header_len(self) -> usize {
        match self {
            Version::V0_1_0_0 => HEADER_LEN_V0_1_0_0,
            Version::V0_1_0 => HEADER_LEN_V0_1_0,
        }
    }

    /// Whether headers of this version carry a flag byte.
    pub const fn has_flags(self) -> bool {
        matches!(self, Version::V0_1_0)
    }

    /// Detects the version from the first bytes of a header.
    ///
    /// Only the first [`VERSION_LEN`] bytes are looked at; fewer is an error.
    ///
    /// ```
    /// use streamproxy_proto::Version;
    /// assert_eq!(Version::detect(b"0.1.0\0\0\0")?.header_len(), 275);
    /// # Ok::<(), streamproxy_proto::HeaderError>(())
    /// ```
    pub fn detect(bytes: &[u8]) -> Result<Version, HeaderError> {
        let Some(tag) = bytes.first_chunk::<VERSION_LEN>() else {
            return Err(HeaderError::Length {
                expected: VERSION_LEN,
                found: bytes.len(),
            });
        };
        Version::ALL
            .into_iter()
            .find(|v| v.tag() == tag)
            .ok_or(HeaderError::UnknownVersion { found: *tag })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::str::FromStr for Version {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let mut found = [0u8; VERSION_LEN];
                let n = s.len().min(VERSION_LEN);
                found[..n].copy_from_slice(&s.as_bytes()[..n]);
                HeaderError::UnknownVersion { found }
            })
    }
}
