//! The OpenSSL calls the `openssl` crate does not wrap. With `batch` (the `recvmmsg`/`sendmmsg` calls), the only modules allowed `unsafe`.
#![allow(unsafe_code)]

use std::time::Duration;

use foreign_types::ForeignType;
use foreign_types::ForeignTypeRef;
use openssl::ssl::{ShutdownState, SslContext, SslRef, SslSession, SslSessionRef};

/// `DTLS_CTRL_GET_TIMEOUT` (`DTLSv1_get_timeout` is a macro over `SSL_ctrl`).
const DTLS_CTRL_GET_TIMEOUT: libc::c_int = 73;
/// `SSL_CTRL_GET_EXTMS_SUPPORT` (`SSL_get_extms_support`).
const SSL_CTRL_GET_EXTMS_SUPPORT: libc::c_int = 122;

/// First retransmission timeout of a handshake flight.
pub(crate) const RETRANSMIT_INITIAL: Duration = Duration::from_millis(500);
/// Cap of the doubling retransmission timeout.
pub(crate) const RETRANSMIT_MAX: Duration = Duration::from_secs(2);

type TimerCb = extern "C" fn(*mut openssl_sys::SSL, libc::c_uint) -> libc::c_uint;

unsafe extern "C" {
    fn DTLS_get_data_mtu(s: *const openssl_sys::SSL) -> libc::size_t;
    fn DTLS_set_timer_cb(s: *mut openssl_sys::SSL, cb: Option<TimerCb>);
    fn SSL_SESSION_dup(s: *const openssl_sys::SSL_SESSION) -> *mut openssl_sys::SSL_SESSION;
}

/// OpenSSL's default schedule (1 s, doubling to 60 s) leaves a handshake over a lossy path
/// with few attempts inside a 10 s timeout, and OpenSSL retransmits each message of a flight
/// in its own datagram, so a flight needs several attempts. This one starts at 500 ms and
/// doubles up to 2 s: about eight attempts in 10 s, at most one flight per 2 s per handshake.
extern "C" fn retransmit_schedule(
    _ssl: *mut openssl_sys::SSL,
    previous_us: libc::c_uint,
) -> libc::c_uint {
    let initial = RETRANSMIT_INITIAL.as_micros() as libc::c_uint;
    let max = RETRANSMIT_MAX.as_micros() as libc::c_uint;
    if previous_us == 0 {
        initial
    } else {
        previous_us.saturating_mul(2).min(max)
    }
}

/// Installs [`retransmit_schedule`] on a connection.
pub(crate) fn set_retransmit_schedule(ssl: &mut SslRef) {
    // SAFETY: `ssl` is a live SSL object, exclusively borrowed. DTLS_set_timer_cb stores the
    // function pointer in it; the function is a plain `extern "C"` fn with 'static lifetime that
    // never dereferences its SSL argument and cannot panic (integer arithmetic only).
    unsafe { DTLS_set_timer_cb(ssl.as_ptr(), Some(retransmit_schedule)) }
}

/// Time left on the DTLS retransmission timer; `None` when it is not running.
///
/// OpenSSL retransmits by itself the next time the handshake reads and finds the timer expired,
/// so the caller only has to wake up then.
pub(crate) fn dtls_timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is a live SSL object for the duration of the borrow. For
    // DTLS_CTRL_GET_TIMEOUT, SSL_ctrl writes one `struct timeval` through `parg` and nothing else;
    // `tv` is a valid, exclusively borrowed timeval that outlives the call.
    let running = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&raw mut tv).cast::<libc::c_void>(),
        )
    };
    if running != 1 {
        return None;
    }
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
    Some(Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)))
}

/// Whether the extended master secret (RFC 7627) was negotiated on this connection.
pub(crate) fn extended_master_secret(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a live SSL object. SSL_CTRL_GET_EXTMS_SUPPORT reads the session's flag,
    // ignores `larg` and `parg` (null), and returns 1, 0 or -1 (no session yet).
    let r = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            SSL_CTRL_GET_EXTMS_SUPPORT,
            0,
            std::ptr::null_mut(),
        )
    };
    r == 1
}

/// Which close_notify alerts this connection has sent and received (`SSL_get_shutdown`).
///
/// `tokio_openssl::SslStream` only lends out `&SslRef`, and the `openssl` crate reads this
/// state only through its own `SslStream` (with `&mut`).
pub(crate) fn shutdown_state(ssl: &SslRef) -> ShutdownState {
    // SAFETY: `ssl` is a live SSL object; SSL_get_shutdown only reads its `shutdown` field.
    let bits = unsafe { openssl_sys::SSL_get_shutdown(ssl.as_ptr()) };
    ShutdownState::from_bits_retain(bits)
}

/// The largest application payload that fits in one datagram of the configured MTU.
pub(crate) fn data_mtu(ssl: &SslRef) -> usize {
    // SAFETY: `ssl` is a live SSL object; DTLS_get_data_mtu only reads it (and returns 0 when no
    // cipher is negotiated yet or the object is not DTLS).
    unsafe { DTLS_get_data_mtu(ssl.as_ptr()) }
}

/// A session of a finished client handshake, with the context of that handshake: it is
/// offered only to connections of the same context, which [`offer_session`] requires and
/// OpenSSL does not check. Holding the context keeps the comparison meaningful (its address
/// cannot be reused while this value lives).
pub(crate) struct ResumableSession {
    session: SslSession,
    ctx: SslContext,
}

impl ResumableSession {
    /// A copy of the session `ssl` negotiated (a copy: this connection's own session object is
    /// spoilt if it ends without close_notify); `None` when there is none or OpenSSL cannot
    /// allocate the copy.
    pub(crate) fn of(ssl: &SslRef) -> Option<Self> {
        Some(Self {
            session: copy_session(ssl.session()?)?,
            ctx: ssl.ssl_context().to_owned(),
        })
    }

    /// Offers a copy of the session for resumption in the next handshake of `ssl`. False when
    /// `ssl` belongs to another context or OpenSSL refuses the offer: a full handshake follows.
    ///
    /// A copy, because OpenSSL marks the session object of a connection freed without
    /// close_notify as not resumable: sharing it would let one dropped connection spoil the
    /// session for every later one.
    pub(crate) fn offer(&self, ssl: &mut SslRef) -> bool {
        if ssl.ssl_context().as_ptr() != self.ctx.as_ptr() {
            return false;
        }
        let Some(copy) = copy_session(&self.session) else {
            return false;
        };
        // SAFETY: `copy` is a copy of a session negotiated on `self.ctx`, and `ssl` belongs to
        // that same context (checked above).
        unsafe { offer_session(ssl, &copy) }
    }
}

/// Offers `session` for resumption in the next handshake of `ssl` (`SSL_set_session`, which
/// takes its own reference). False when OpenSSL refuses it.
///
/// # Safety
///
/// `session` must come from a handshake on an `Ssl` of the same context as `ssl`: OpenSSL does
/// not check it, and the `openssl` crate makes the call `unsafe` for that reason.
unsafe fn offer_session(ssl: &mut SslRef, session: &SslSessionRef) -> bool {
    // SAFETY: the caller guarantees that `session` belongs to `ssl`'s context.
    unsafe { ssl.set_session(session).is_ok() }
}

/// A copy of `session` that no connection uses (`SSL_SESSION_dup`); `None` when OpenSSL
/// cannot allocate it.
fn copy_session(session: &SslSessionRef) -> Option<SslSession> {
    // SAFETY: `SSL_SESSION_dup` reads a valid session and returns a new one with its own
    // reference count of one, or null; `from_ptr` takes that reference over.
    unsafe {
        let copy = SSL_SESSION_dup(session.as_ptr());
        (!copy.is_null()).then(|| SslSession::from_ptr(copy))
    }
}

/// Whether the certificate says it is a CA (basic constraints `CA:TRUE`).
pub(crate) fn is_ca(cert: &openssl::x509::X509Ref) -> bool {
    // SAFETY: `cert` is a valid certificate for the call; OpenSSL only reads (and caches) its
    // extensions.
    let flags = unsafe { openssl_sys::X509_get_extension_flags(cert.as_ptr()) };
    flags & openssl_sys::EXFLAG_CA != 0
}

#[cfg(test)]
mod tests {
    use openssl::ssl::{Ssl, SslContext, SslMethod};

    use super::*;

    #[test]
    fn calls_are_safe_on_a_fresh_dtls_object() {
        let ctx = SslContext::builder(SslMethod::dtls()).unwrap().build();
        let ssl = Ssl::new(&ctx).unwrap();
        assert_eq!(dtls_timeout(&ssl), None, "no timer before the handshake");
        assert!(!extended_master_secret(&ssl));
        assert_eq!(data_mtu(&ssl), 0, "no cipher negotiated yet");
        assert_eq!(shutdown_state(&ssl), ShutdownState::empty());
        let mut ssl = ssl;
        set_retransmit_schedule(&mut ssl);
        assert_eq!(
            dtls_timeout(&ssl),
            None,
            "installing the schedule starts no timer"
        );
    }

    #[test]
    fn retransmit_schedule_starts_at_half_a_second_and_caps_at_two() {
        let null = std::ptr::null_mut();
        assert_eq!(retransmit_schedule(null, 0), 500_000);
        assert_eq!(retransmit_schedule(null, 500_000), 1_000_000);
        assert_eq!(retransmit_schedule(null, 1_000_000), 2_000_000);
        assert_eq!(retransmit_schedule(null, 2_000_000), 2_000_000);
        assert_eq!(retransmit_schedule(null, u32::MAX), 2_000_000);
    }
    // The same functions on live connections: tests/session.rs (`data_mtu`, EMS checked on every
    // handshake, `shutdown_state` by every send and the close tests) and tests/loss.rs (timer and
    // schedule drive retransmissions).
}
