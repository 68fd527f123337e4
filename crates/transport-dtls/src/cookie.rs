//! Stateless DTLS cookies: HMAC-SHA256 of the client's address under a random secret that
//! rotates. The previous secret stays valid for one more period, so a client that received a
//! cookie just before a rotation still gets in. Time comes in as `now`; nothing here reads a
//! clock or touches a socket.
//!
//! Also OpenSSL's side of it: [`install_callbacks`] makes a server context issue and check the
//! one cookie the listener already verified, stored in each connection at [`ssl_index`].

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::memcmp;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::ssl::{Ssl, SslContextBuilder};

use crate::record::COOKIE_LEN;

struct Secret {
    key: PKey<Private>,
}

impl Secret {
    fn random() -> Result<Self, ErrorStack> {
        let mut bytes = [0u8; 32];
        openssl::rand::rand_bytes(&mut bytes)?;
        Ok(Self {
            key: PKey::hmac(&bytes)?,
        })
    }

    fn cookie(&self, peer: SocketAddr) -> Result<[u8; COOKIE_LEN], ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key)?;
        match peer {
            SocketAddr::V4(a) => signer.update(&a.ip().octets())?,
            SocketAddr::V6(a) => signer.update(&a.ip().octets())?,
        }
        signer.update(&peer.port().to_be_bytes())?;
        let mut out = [0u8; COOKIE_LEN];
        signer.sign(&mut out)?;
        Ok(out)
    }
}

/// The listener's cookie secrets.
pub(crate) struct CookieJar {
    current: Secret,
    previous: Option<Secret>,
    rotated_at: Instant,
    period: Duration,
}

impl CookieJar {
    pub(crate) fn new(now: Instant, period: Duration) -> Result<Self, ErrorStack> {
        Ok(Self {
            current: Secret::random()?,
            previous: None,
            rotated_at: now,
            period,
        })
    }

    /// Replaces the secret if a period has passed since the last rotation.
    pub(crate) fn rotate_if_due(&mut self, now: Instant) -> Result<(), ErrorStack> {
        if now.saturating_duration_since(self.rotated_at) >= self.period {
            let next = Secret::random()?;
            self.previous = Some(std::mem::replace(&mut self.current, next));
            self.rotated_at = now;
        }
        Ok(())
    }

    /// The cookie for `peer` under the current secret.
    pub(crate) fn issue(&self, peer: SocketAddr) -> Result<[u8; COOKIE_LEN], ErrorStack> {
        self.current.cookie(peer)
    }

    /// Whether `cookie` was issued to `peer` under the current or the previous secret.
    pub(crate) fn verify(&self, peer: SocketAddr, cookie: &[u8]) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        let check = |s: &Secret| s.cookie(peer).is_ok_and(|c| memcmp::eq(&c, cookie));
        check(&self.current) || self.previous.as_ref().is_some_and(check)
    }
}

/// The ex_data slot of an `Ssl` that holds the cookie its handshake must use.
pub(crate) fn ssl_index() -> Result<openssl::ex_data::Index<Ssl, [u8; COOKIE_LEN]>, ErrorStack> {
    static INDEX: OnceLock<openssl::ex_data::Index<Ssl, [u8; COOKIE_LEN]>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| index))
}

/// OpenSSL's cookie callbacks. The listener has already checked the client's cookie before it
/// created this connection's state; it stores that cookie in the connection, and OpenSSL, which
/// replays the exchange (see `demux`), issues and checks exactly that one.
pub(crate) fn install_callbacks(b: &mut SslContextBuilder) -> Result<(), ErrorStack> {
    let index = ssl_index()?;
    b.set_cookie_generate_cb(move |ssl, out| {
        let cookie = ssl.ex_data(index).ok_or_else(ErrorStack::get)?;
        let dst = out.get_mut(..COOKIE_LEN).ok_or_else(ErrorStack::get)?;
        dst.copy_from_slice(cookie);
        Ok(COOKIE_LEN)
    });
    b.set_cookie_verify_cb(move |ssl, presented| {
        ssl.ex_data(index)
            .is_some_and(|c| presented.len() == COOKIE_LEN && memcmp::eq(c, presented))
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn cookie_is_bound_to_the_address() {
        let jar = CookieJar::new(Instant::now(), Duration::from_secs(60)).unwrap();
        let c = jar.issue(addr(1000)).unwrap();
        assert!(jar.verify(addr(1000), &c));
        assert!(!jar.verify(addr(1001), &c));
        assert!(!jar.verify(addr(1000), &c[..31]));
    }

    #[test]
    fn previous_secret_is_accepted_for_one_period() {
        let t0 = Instant::now();
        let period = Duration::from_secs(60);
        let mut jar = CookieJar::new(t0, period).unwrap();
        let old = jar.issue(addr(7)).unwrap();
        jar.rotate_if_due(t0 + period / 2).unwrap();
        assert_eq!(jar.issue(addr(7)).unwrap(), old, "rotated too early");
        jar.rotate_if_due(t0 + period).unwrap();
        assert_ne!(jar.issue(addr(7)).unwrap(), old);
        assert!(jar.verify(addr(7), &old));
        jar.rotate_if_due(t0 + period * 2).unwrap();
        assert!(!jar.verify(addr(7), &old));
    }
}
