//! The listener's demultiplexing decision, kept pure: given the time, a source address, a
//! datagram and what the listener knows about that address, decide whether to route the
//! datagram to the peer's session, answer with a stateless HelloVerifyRequest, start a
//! handshake, or drop it (with a reason). No sockets, no tasks, no clock.

use std::net::SocketAddr;
use std::time::Instant;

use crate::cookie::CookieJar;
use crate::record::{
    COOKIE_LEN, ClientHello, HELLO_VERIFY_LEN, RecordError, write_hello_verify_request,
};

/// What the listener knows about a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerState {
    /// No session and no handshake.
    Unknown,
    /// A handshake (past the cookie check) is in progress.
    Handshaking,
    /// A finished session.
    Established,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Not a well-formed DTLS record, or a ClientHello this crate does not handle.
    Malformed(RecordError),
    /// Not a ClientHello, from an address with no session.
    UnknownPeer,
    /// A ClientHello with a cookie this listener did not issue to that address.
    BadCookie,
    /// A ClientHello shorter than the answer would be (no amplification).
    TooShortToAnswer,
    /// A valid ClientHello while the listener no longer accepts sessions.
    NotAccepting,
    /// Computing the cookie failed (OpenSSL error).
    CookieFailure,
    /// A late copy of the ClientHello that started the address's established session
    /// (duplicated or delayed on the path): not a restarted client, so it must not replace
    /// the session.
    StaleHello,
}

/// The decision for one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Route the datagram to the address's session or handshake.
    Deliver,
    /// Send [`Demux::hello_verify_request`] back to the source; keep no state.
    HelloVerify,
    /// Start a handshake: feed OpenSSL `first_hello` (the ClientHello as it was before the
    /// cookie) and then the datagram itself. `replace`: an established session from this address
    /// exists and must end. `evict_oldest`: the half-open limit is reached, so the oldest
    /// handshake in progress makes room (a peer that proved its address but stalls cannot keep
    /// newcomers out; it loses its slot to them).
    Start {
        replace: bool,
        evict_oldest: bool,
        random: [u8; 32],
        cookie: [u8; COOKIE_LEN],
        first_hello: Vec<u8>,
    },
    /// Drop the datagram.
    Drop(DropReason),
}

/// What the decision needs besides the datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub(crate) now: Instant,
    pub(crate) source: SocketAddr,
    pub(crate) peer: PeerState,
    /// The client random of the ClientHello that started the address's handshake or session.
    pub(crate) peer_random: Option<[u8; 32]>,
    pub(crate) half_open: usize,
    pub(crate) accepting: bool,
}

pub(crate) struct Demux {
    cookies: CookieJar,
    max_half_open: usize,
    hello_verify: [u8; HELLO_VERIFY_LEN],
}

impl Demux {
    pub(crate) fn new(cookies: CookieJar, max_half_open: usize) -> Self {
        Self {
            cookies,
            max_half_open,
            hello_verify: [0; HELLO_VERIFY_LEN],
        }
    }

    /// The HelloVerifyRequest written by the last [`Action::HelloVerify`].
    pub(crate) fn hello_verify_request(&self) -> &[u8] {
        &self.hello_verify
    }

    pub(crate) fn decide(&mut self, cx: Context, datagram: &[u8]) -> Action {
        let hello = match ClientHello::parse(datagram) {
            Ok(Some(hello)) => hello,
            Ok(None) => {
                return match cx.peer {
                    PeerState::Unknown => Action::Drop(DropReason::UnknownPeer),
                    PeerState::Handshaking | PeerState::Established => Action::Deliver,
                };
            }
            // A session's peer may send anything; its OpenSSL drops what does not authenticate.
            Err(_) if cx.peer != PeerState::Unknown => return Action::Deliver,
            Err(e) => return Action::Drop(DropReason::Malformed(e)),
        };
        if cx.peer == PeerState::Handshaking {
            // A retransmission belongs to the handshake in progress.
            return Action::Deliver;
        }
        if cx.peer == PeerState::Established && cx.peer_random == Some(hello.random) {
            return Action::Drop(DropReason::StaleHello);
        }
        if self.cookies.rotate_if_due(cx.now).is_err() {
            return Action::Drop(DropReason::CookieFailure);
        }
        if hello.cookie.is_empty() {
            if datagram.len() < HELLO_VERIFY_LEN {
                return Action::Drop(DropReason::TooShortToAnswer);
            }
            let Ok(cookie) = self.cookies.issue(cx.source) else {
                return Action::Drop(DropReason::CookieFailure);
            };
            // Record sequence 0, not the ClientHello's (RFC 6347's advice for servers that answer
            // statelessly): the OpenSSL state created later numbers its records from 1 on (its
            // own, suppressed HelloVerifyRequest takes 0), and a client drops any epoch-0 record
            // whose number it has already seen. Echoing the ClientHello's number would make the
            // client discard the first ServerHello flight and cost a retransmission timeout.
            write_hello_verify_request(0, &cookie, &mut self.hello_verify);
            return Action::HelloVerify;
        }
        let presented = &datagram[hello.cookie.clone()];
        if !self.cookies.verify(cx.source, presented) {
            return Action::Drop(DropReason::BadCookie);
        }
        if !cx.accepting {
            return Action::Drop(DropReason::NotAccepting);
        }
        let Some(first_hello) = hello.without_cookie(datagram) else {
            return Action::Drop(DropReason::Malformed(RecordError::UnsupportedClientHello));
        };
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(presented);
        Action::Start {
            replace: cx.peer == PeerState::Established,
            evict_oldest: cx.half_open >= self.max_half_open,
            random: hello.random,
            cookie,
            first_hello,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::{RECORD_HEADER_LEN, is_hello_verify_request};

    const PERIOD: Duration = Duration::from_secs(30);

    fn src(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn cx(now: Instant, port: u16, peer: PeerState, half_open: usize) -> Context {
        Context {
            now,
            source: src(port),
            peer,
            peer_random: None,
            half_open,
            accepting: true,
        }
    }

    /// A ClientHello (record sequence `seq`, message sequence `msg_seq`) with `cookie`.
    fn client_hello(seq: u8, msg_seq: u8, cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b, 1, 0]);
        let len = body.len();
        let mut d = vec![
            22,
            0xfe,
            0xfd,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            seq,
            0,
            (12 + len) as u8,
        ];
        d.extend_from_slice(&[1, 0, 0, len as u8, 0, msg_seq, 0, 0, 0, 0, 0, len as u8]);
        d.extend_from_slice(&body);
        d
    }

    fn demux(now: Instant, max_half_open: usize) -> Demux {
        Demux::new(CookieJar::new(now, PERIOD).unwrap(), max_half_open)
    }

    /// Runs the cookie round trip and returns the cookie the listener issued to `port`.
    fn cookie_for(d: &mut Demux, now: Instant, port: u16) -> [u8; COOKIE_LEN] {
        let action = d.decide(
            cx(now, port, PeerState::Unknown, 0),
            &client_hello(0, 0, &[]),
        );
        assert_eq!(action, Action::HelloVerify);
        let hvr = d.hello_verify_request();
        assert!(is_hello_verify_request(hvr));
        hvr[hvr.len() - COOKIE_LEN..].try_into().unwrap()
    }

    #[test]
    fn answers_cookieless_hello_without_keeping_state() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let first = cookie_for(&mut d, now, 4000);
        // Same address, same cookie: nothing was remembered but the secret.
        assert_eq!(cookie_for(&mut d, now, 4000), first);
        assert_ne!(cookie_for(&mut d, now, 4001), first);
    }

    #[test]
    fn starts_a_handshake_for_a_valid_cookie() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let cookie = cookie_for(&mut d, now, 4000);
        let hello = client_hello(1, 1, &cookie);
        match d.decide(cx(now, 4000, PeerState::Unknown, 0), &hello) {
            Action::Start {
                replace,
                evict_oldest,
                cookie: c,
                first_hello,
                ..
            } => {
                assert!(!replace);
                assert!(!evict_oldest);
                assert_eq!(c, cookie);
                assert_eq!(first_hello, client_hello(0, 0, &[]));
            }
            other => panic!("expected Start, got {other:?}"),
        }
    }

    #[test]
    fn rejects_cookie_issued_to_another_address() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let cookie = cookie_for(&mut d, now, 4000);
        let action = d.decide(
            cx(now, 4001, PeerState::Unknown, 0),
            &client_hello(1, 1, &cookie),
        );
        assert_eq!(action, Action::Drop(DropReason::BadCookie));
    }

    #[test]
    fn cookie_expires_after_two_rotations() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let cookie = cookie_for(&mut d, now, 4000);
        let hello = client_hello(1, 1, &cookie);
        let later = now + PERIOD;
        assert!(matches!(
            d.decide(cx(later, 4000, PeerState::Unknown, 0), &hello),
            Action::Start { .. }
        ));
        let much_later = now + PERIOD * 2;
        assert_eq!(
            d.decide(cx(much_later, 4000, PeerState::Unknown, 0), &hello),
            Action::Drop(DropReason::BadCookie)
        );
    }

    #[test]
    fn evicts_the_oldest_handshake_at_the_half_open_limit() {
        let now = Instant::now();
        let mut d = demux(now, 2);
        let cookie = cookie_for(&mut d, now, 4000);
        let hello = client_hello(1, 1, &cookie);
        for (half_open, evict) in [(1, false), (2, true), (3, true)] {
            match d.decide(cx(now, 4000, PeerState::Unknown, half_open), &hello) {
                Action::Start { evict_oldest, .. } => assert_eq!(evict_oldest, evict),
                other => panic!("expected Start, got {other:?}"),
            }
        }
        // The cookie answer costs no state, so it is not limited.
        cookie_for(&mut d, now, 4000);
    }

    #[test]
    fn at_the_limit_only_a_verified_hello_evicts() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let cookie = cookie_for(&mut d, now, 4000);
        let full = |port, peer| cx(now, port, peer, 4);
        // Nothing that costs no state, or that fails a check, makes room.
        assert_eq!(
            d.decide(full(4000, PeerState::Unknown), &client_hello(0, 0, &[])),
            Action::HelloVerify
        );
        assert_eq!(
            d.decide(
                full(4000, PeerState::Unknown),
                &client_hello(1, 1, &[0; COOKIE_LEN])
            ),
            Action::Drop(DropReason::BadCookie)
        );
        let mut closed = full(4000, PeerState::Unknown);
        closed.accepting = false;
        assert_eq!(
            d.decide(closed, &client_hello(1, 1, &cookie)),
            Action::Drop(DropReason::NotAccepting)
        );
        // A retransmission belongs to its own handshake, which holds a slot already.
        assert_eq!(
            d.decide(
                full(4000, PeerState::Handshaking),
                &client_hello(1, 1, &cookie)
            ),
            Action::Deliver
        );
        // A verified ClientHello evicts; a restarted client also replaces its old session.
        for (peer, replaces) in [(PeerState::Unknown, false), (PeerState::Established, true)] {
            match d.decide(full(4000, peer), &client_hello(1, 1, &cookie)) {
                Action::Start {
                    replace,
                    evict_oldest,
                    ..
                } => {
                    assert!(evict_oldest);
                    assert_eq!(replace, replaces);
                }
                other => panic!("expected Start, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_late_copy_of_the_first_hello_does_not_replace_the_session() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let cookie = cookie_for(&mut d, now, 4000);
        let hello = client_hello(1, 1, &cookie);
        let Action::Start { random, .. } = d.decide(cx(now, 4000, PeerState::Unknown, 0), &hello)
        else {
            panic!("expected Start");
        };
        // The session is up; the path delivers another copy of the same ClientHello.
        let mut established = cx(now, 4000, PeerState::Established, 0);
        established.peer_random = Some(random);
        assert_eq!(
            d.decide(established, &hello),
            Action::Drop(DropReason::StaleHello)
        );
        // A restarted client on the same port sends a new random: it replaces the session.
        let mut restarted = hello.clone();
        restarted[13 + 12 + 2] ^= 0xff;
        match d.decide(established, &restarted) {
            Action::Start { replace, .. } => assert!(replace),
            other => panic!("expected Start, got {other:?}"),
        }
    }

    #[test]
    fn drops_valid_hello_when_not_accepting() {
        let now = Instant::now();
        let mut d = demux(now, 2);
        let cookie = cookie_for(&mut d, now, 4000);
        let mut c = cx(now, 4000, PeerState::Unknown, 0);
        c.accepting = false;
        let action = d.decide(c, &client_hello(1, 1, &cookie));
        assert_eq!(action, Action::Drop(DropReason::NotAccepting));
    }

    #[test]
    fn replaces_established_session_only_after_the_cookie_checks_out() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        // A restarted client's first ClientHello gets a cookie; the old session is untouched.
        let action = d.decide(
            cx(now, 4000, PeerState::Established, 0),
            &client_hello(0, 0, &[]),
        );
        assert_eq!(action, Action::HelloVerify);
        let cookie = cookie_for(&mut d, now, 4000);
        let forged = d.decide(
            cx(now, 4000, PeerState::Established, 0),
            &client_hello(1, 1, &[0; COOKIE_LEN]),
        );
        assert_eq!(forged, Action::Drop(DropReason::BadCookie));
        let action = d.decide(
            cx(now, 4000, PeerState::Established, 0),
            &client_hello(1, 1, &cookie),
        );
        assert!(matches!(action, Action::Start { replace: true, .. }));
    }

    #[test]
    fn routes_everything_from_known_peers() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let app_data = [23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 1, 0xff];
        for peer in [PeerState::Handshaking, PeerState::Established] {
            assert_eq!(d.decide(cx(now, 1, peer, 0), &app_data), Action::Deliver);
            assert_eq!(d.decide(cx(now, 1, peer, 0), &[1, 2, 3]), Action::Deliver);
        }
        // A retransmitted ClientHello goes to the handshake in progress.
        let hello = client_hello(1, 1, &[5; COOKIE_LEN]);
        let action = d.decide(cx(now, 1, PeerState::Handshaking, 0), &hello);
        assert_eq!(action, Action::Deliver);
    }

    #[test]
    fn drops_everything_else_from_unknown_addresses() {
        let now = Instant::now();
        let mut d = demux(now, 4);
        let unknown =
            |d: &mut Demux, datagram: &[u8]| d.decide(cx(now, 9, PeerState::Unknown, 0), datagram);
        let app_data = [23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 1, 0xff];
        assert_eq!(
            unknown(&mut d, &app_data),
            Action::Drop(DropReason::UnknownPeer)
        );
        assert_eq!(
            unknown(&mut d, &[0u8; 5]),
            Action::Drop(DropReason::Malformed(RecordError::Truncated))
        );
        assert_eq!(
            unknown(&mut d, b"GET / HTTP/1.1\r\n\r\n"),
            Action::Drop(DropReason::Malformed(RecordError::NotDtls))
        );
        let hello = client_hello(0, 0, &[]);
        assert_eq!(
            unknown(&mut d, &hello[..RECORD_HEADER_LEN + 20]),
            Action::Drop(DropReason::Malformed(RecordError::Truncated))
        );
        // A ClientHello at sequence 0 that carries a cookie cannot follow a HelloVerifyRequest.
        let cookie = cookie_for(&mut d, now, 9);
        assert_eq!(
            unknown(&mut d, &client_hello(0, 1, &cookie)),
            Action::Drop(DropReason::Malformed(RecordError::UnsupportedClientHello))
        );
    }
}
