//! The few DTLS 1.2 wire structures the listener reads before OpenSSL sees a datagram.
//!
//! Sans-I/O: parse from `&[u8]`, emit into caller-provided buffers. Only what the
//! demultiplexer needs: the record header, an epoch-0 ClientHello (to find its cookie) and the
//! HelloVerifyRequest the listener answers with. Everything else is OpenSSL's business.

use std::ops::Range;

/// Offsets in the DTLS record header (RFC 6347, 4.1).
mod field {
    use std::ops::Range;

    pub(super) const CONTENT_TYPE: usize = 0;
    pub(super) const VERSION: Range<usize> = 1..3;
    pub(super) const EPOCH: Range<usize> = 3..5;
    pub(super) const SEQUENCE: Range<usize> = 5..11;
    pub(super) const LENGTH: Range<usize> = 11..13;
    pub(super) const RECORD_HEADER_LEN: usize = LENGTH.end;

    // Handshake header (RFC 6347, 4.2.2), relative to the start of the record body.
    pub(super) const MSG_TYPE: usize = 0;
    pub(super) const MSG_LENGTH: Range<usize> = 1..4;
    pub(super) const MSG_SEQ: Range<usize> = 4..6;
    pub(super) const FRAG_OFFSET: Range<usize> = 6..9;
    pub(super) const FRAG_LENGTH: Range<usize> = 9..12;
    pub(super) const HANDSHAKE_HEADER_LEN: usize = FRAG_LENGTH.end;

    // ClientHello body: client_version, random, then variable-length fields.
    pub(super) const CH_SESSION_ID_LEN: usize = 2 + 32;
}

/// Length of a DTLS record header.
pub(crate) const RECORD_HEADER_LEN: usize = field::RECORD_HEADER_LEN;
const _: () = assert!(RECORD_HEADER_LEN == 13);
const _: () = assert!(field::HANDSHAKE_HEADER_LEN == 12);

/// Length of the cookies this crate issues.
pub(crate) const COOKIE_LEN: usize = 32;

/// Length of the HelloVerifyRequest datagram the listener sends (one record).
pub(crate) const HELLO_VERIFY_LEN: usize =
    RECORD_HEADER_LEN + field::HANDSHAKE_HEADER_LEN + 2 + 1 + COOKIE_LEN;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HELLO_VERIFY_REQUEST: u8 = 3;
/// DTLS 1.0's version number: what RFC 6347 says a HelloVerifyRequest carries.
const DTLS1_0: [u8; 2] = [0xfe, 0xff];

/// Why a datagram is not something the listener can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Shorter than a record header, or than the length the header declares.
    Truncated,
    /// The content type or version is not DTLS.
    NotDtls,
    /// A ClientHello this crate does not handle: fragmented, or with a malformed body.
    UnsupportedClientHello,
}

/// The parts of a DTLS record header the demultiplexer looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) content_type: u8,
    pub(crate) epoch: u16,
    pub(crate) sequence: u64,
    /// Length of the record body.
    pub(crate) length: usize,
}

impl RecordHeader {
    /// Parses the first record header of a datagram and checks the body fits.
    pub(crate) fn parse(datagram: &[u8]) -> Result<Self, RecordError> {
        let header = datagram
            .get(..RECORD_HEADER_LEN)
            .ok_or(RecordError::Truncated)?;
        let content_type = header[field::CONTENT_TYPE];
        if !(20..=25).contains(&content_type) || header[field::VERSION][0] != 0xfe {
            return Err(RecordError::NotDtls);
        }
        let epoch = u16::from_be_bytes([header[field::EPOCH][0], header[field::EPOCH][1]]);
        let mut sequence = [0u8; 8];
        sequence[2..].copy_from_slice(&header[field::SEQUENCE]);
        let length = usize::from(u16::from_be_bytes([
            header[field::LENGTH][0],
            header[field::LENGTH][1],
        ]));
        if datagram.len() < RECORD_HEADER_LEN + length {
            return Err(RecordError::Truncated);
        }
        Ok(Self {
            content_type,
            epoch,
            sequence: u64::from_be_bytes(sequence),
            length,
        })
    }

    /// Whether the record could be the start of a new handshake (epoch 0, handshake type).
    pub(crate) fn is_epoch0_handshake(&self) -> bool {
        self.content_type == CONTENT_HANDSHAKE && self.epoch == 0
    }
}

/// An unfragmented epoch-0 ClientHello at the start of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientHello {
    pub(crate) record: RecordHeader,
    pub(crate) message_seq: u16,
    /// Where the cookie bytes lie in the datagram (empty range: no cookie).
    pub(crate) cookie: Range<usize>,
    /// The client's random: the same in every copy and retransmission of one ClientHello
    /// (with or without the cookie), different in a new handshake.
    pub(crate) random: [u8; 32],
}

impl ClientHello {
    /// Parses `datagram` as a ClientHello. `Ok(None)`: a valid DTLS record of another kind.
    pub(crate) fn parse(datagram: &[u8]) -> Result<Option<Self>, RecordError> {
        let record = RecordHeader::parse(datagram)?;
        if !record.is_epoch0_handshake() {
            return Ok(None);
        }
        let body = &datagram[RECORD_HEADER_LEN..RECORD_HEADER_LEN + record.length];
        let Some(hs) = body.get(..field::HANDSHAKE_HEADER_LEN) else {
            return Err(RecordError::Truncated);
        };
        if hs[field::MSG_TYPE] != HANDSHAKE_CLIENT_HELLO {
            return Ok(None);
        }
        let msg_len = be24(&hs[field::MSG_LENGTH]);
        let frag_offset = be24(&hs[field::FRAG_OFFSET]);
        let frag_len = be24(&hs[field::FRAG_LENGTH]);
        let message = &body[field::HANDSHAKE_HEADER_LEN..];
        if frag_offset != 0 || frag_len != msg_len || message.len() != msg_len {
            return Err(RecordError::UnsupportedClientHello);
        }
        let message_seq = u16::from_be_bytes([hs[field::MSG_SEQ][0], hs[field::MSG_SEQ][1]]);
        let sid_len = usize::from(
            *message
                .get(field::CH_SESSION_ID_LEN)
                .ok_or(RecordError::UnsupportedClientHello)?,
        );
        let cookie_len_at = field::CH_SESSION_ID_LEN + 1 + sid_len;
        let cookie_len = usize::from(
            *message
                .get(cookie_len_at)
                .ok_or(RecordError::UnsupportedClientHello)?,
        );
        let cookie_start = cookie_len_at + 1;
        if message.len() < cookie_start + cookie_len {
            return Err(RecordError::UnsupportedClientHello);
        }
        let base = RECORD_HEADER_LEN + field::HANDSHAKE_HEADER_LEN;
        let mut random = [0u8; 32];
        // In bounds: the session id length byte after the random was read above.
        random.copy_from_slice(&message[2..field::CH_SESSION_ID_LEN]);
        Ok(Some(Self {
            record,
            message_seq,
            cookie: base + cookie_start..base + cookie_start + cookie_len,
            random,
        }))
    }

    /// Emits the same ClientHello as the client's first one would have been: no cookie, handshake
    /// message sequence 0 and the record sequence number before this one's. The listener feeds
    /// it to a fresh OpenSSL server before the real (cookie-carrying) ClientHello, so that OpenSSL
    /// walks its ordinary cookie path and then expects message sequence 1. `None` if this record
    /// has sequence number 0 (no earlier number exists) or is not message sequence 1.
    pub(crate) fn without_cookie(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if self.record.sequence == 0 || self.message_seq != 1 {
            return None;
        }
        let record_end = RECORD_HEADER_LEN + self.record.length;
        let cookie_len = self.cookie.len();
        let mut out = Vec::with_capacity(record_end - cookie_len);
        out.extend_from_slice(&datagram[..self.cookie.start - 1]);
        out.push(0);
        out.extend_from_slice(&datagram[self.cookie.end..record_end]);
        let seq = (self.record.sequence - 1).to_be_bytes();
        out[field::SEQUENCE].copy_from_slice(&seq[2..]);
        let record_len = u16::try_from(self.record.length - cookie_len).ok()?;
        out[field::LENGTH].copy_from_slice(&record_len.to_be_bytes());
        let msg_len = self.record.length - cookie_len - field::HANDSHAKE_HEADER_LEN;
        let hs = RECORD_HEADER_LEN;
        put_be24(
            &mut out[hs + field::MSG_LENGTH.start..hs + field::MSG_LENGTH.end],
            msg_len,
        );
        put_be24(
            &mut out[hs + field::FRAG_LENGTH.start..hs + field::FRAG_LENGTH.end],
            msg_len,
        );
        out[hs + field::MSG_SEQ.start..hs + field::MSG_SEQ.end].copy_from_slice(&[0, 0]);
        Some(out)
    }
}

/// Writes a HelloVerifyRequest answering a ClientHello with record sequence `sequence`
/// (RFC 6347, 4.2.1: the server echoes the ClientHello's record sequence number).
pub(crate) fn write_hello_verify_request(
    sequence: u64,
    cookie: &[u8; COOKIE_LEN],
    out: &mut [u8; HELLO_VERIFY_LEN],
) {
    const BODY_LEN: usize = 2 + 1 + COOKIE_LEN;
    const RECORD_LEN: usize = field::HANDSHAKE_HEADER_LEN + BODY_LEN;
    out[field::CONTENT_TYPE] = CONTENT_HANDSHAKE;
    out[field::VERSION].copy_from_slice(&DTLS1_0);
    out[field::EPOCH].copy_from_slice(&[0, 0]);
    out[field::SEQUENCE].copy_from_slice(&sequence.to_be_bytes()[2..]);
    out[field::LENGTH].copy_from_slice(&(RECORD_LEN as u16).to_be_bytes());
    let hs = &mut out[RECORD_HEADER_LEN..];
    hs[field::MSG_TYPE] = HANDSHAKE_HELLO_VERIFY_REQUEST;
    put_be24(&mut hs[field::MSG_LENGTH], BODY_LEN);
    hs[field::MSG_SEQ].copy_from_slice(&[0, 0]);
    put_be24(&mut hs[field::FRAG_OFFSET], 0);
    put_be24(&mut hs[field::FRAG_LENGTH], BODY_LEN);
    let body = &mut hs[field::HANDSHAKE_HEADER_LEN..];
    body[..2].copy_from_slice(&DTLS1_0);
    body[2] = COOKIE_LEN as u8;
    body[3..].copy_from_slice(cookie);
}

/// Whether a datagram OpenSSL wants to send starts with a HelloVerifyRequest.
pub(crate) fn is_hello_verify_request(datagram: &[u8]) -> bool {
    matches!(RecordHeader::parse(datagram), Ok(h) if h.is_epoch0_handshake())
        && datagram.get(RECORD_HEADER_LEN + field::MSG_TYPE)
            == Some(&HANDSHAKE_HELLO_VERIFY_REQUEST)
}

fn be24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

fn put_be24(out: &mut [u8], v: usize) {
    out[0] = (v >> 16) as u8;
    out[1] = (v >> 8) as u8;
    out[2] = v as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with a 4-byte cookie `c0 c1 c2 c3`, a 2-byte session id, one cipher suite,
    /// null compression and no extensions; record sequence 1, message sequence 1.
    #[rustfmt::skip]
    fn client_hello_with_cookie() -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[0xaa; 32]); // random
        body.extend_from_slice(&[2, 0x51, 0x52]); // session id
        body.extend_from_slice(&[4, 0xc0, 0xc1, 0xc2, 0xc3]); // cookie
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // cipher suites
        body.extend_from_slice(&[1, 0]); // compression
        let len = body.len();
        let mut d = vec![
            22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, (12 + len) as u8,
            1, 0, 0, len as u8, 0, 1, 0, 0, 0, 0, 0, len as u8,
        ];
        d.extend_from_slice(&body);
        d
    }

    #[test]
    fn test_parse() {
        let d = client_hello_with_cookie();
        let ch = ClientHello::parse(&d).unwrap().unwrap();
        assert_eq!(ch.record.sequence, 1);
        assert_eq!(ch.message_seq, 1);
        assert_eq!(&d[ch.cookie.clone()], &[0xc0, 0xc1, 0xc2, 0xc3]);
    }

    #[test]
    fn test_emit() {
        let mut out = [0u8; HELLO_VERIFY_LEN];
        write_hello_verify_request(0x0102_0304_0506, &[0x11; COOKIE_LEN], &mut out);
        #[rustfmt::skip]
        let golden_head: [u8; 28] = [
            22, 0xfe, 0xff, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0, 47,
            3, 0, 0, 35, 0, 0, 0, 0, 0, 0, 0, 35,
            0xfe, 0xff, 32,
        ];
        assert_eq!(&out[..28], &golden_head);
        assert_eq!(&out[28..], &[0x11; COOKIE_LEN]);
        assert!(is_hello_verify_request(&out));
        assert_eq!(out.len(), 60);
    }

    #[test]
    fn strips_cookie_and_rewinds_sequence_numbers() {
        let d = client_hello_with_cookie();
        let ch = ClientHello::parse(&d).unwrap().unwrap();
        let first = ch.without_cookie(&d).unwrap();
        assert_eq!(first.len(), d.len() - 4);
        let ch0 = ClientHello::parse(&first).unwrap().unwrap();
        assert_eq!(ch0.record.sequence, 0);
        assert_eq!(ch0.message_seq, 0);
        assert!(ch0.cookie.is_empty());
        // Everything after the cookie is unchanged.
        assert_eq!(&first[ch0.cookie.end..], &d[ch.cookie.end..]);
    }

    #[test]
    fn rejects_truncated_and_foreign_datagrams() {
        let d = client_hello_with_cookie();
        assert_eq!(RecordHeader::parse(&d[..12]), Err(RecordError::Truncated));
        assert_eq!(
            ClientHello::parse(&d[..d.len() - 1]),
            Err(RecordError::Truncated)
        );
        let mut foreign = d.clone();
        foreign[1] = 0x03; // TLS, not DTLS
        assert_eq!(RecordHeader::parse(&foreign), Err(RecordError::NotDtls));
        let mut app = d.clone();
        app[0] = 23;
        assert_eq!(ClientHello::parse(&app), Ok(None));
        let mut fragmented = d.clone();
        fragmented[RECORD_HEADER_LEN + 8] = 1; // fragment offset 1
        assert_eq!(
            ClientHello::parse(&fragmented),
            Err(RecordError::UnsupportedClientHello)
        );
        assert!(!is_hello_verify_request(&d));
    }
}
