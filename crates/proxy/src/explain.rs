//! Why a tunnel failed, in an operator's words, the same for TLS and DTLS.
//!
//! rustls and OpenSSL describe the same failure differently (`InvalidCertificate(Expired)` and
//! `certificate has expired`; `AlertReceived(UnknownCA)` and `tlsv1 alert unknown ca`), and a
//! refusal by the server's policy reaches the client only as a closed connection.
//! [`explain`] walks an error's chain and maps what it finds to a [`Diagnosis`], whose
//! `Display` says what happened and what to do about it:
//!
//! ```
//! use std::io;
//! use streamproxy_proxy::explain::{Diagnosis, explain};
//!
//! let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
//! assert_eq!(explain(&refused), Some(Diagnosis::ConnectionRefused));
//! assert!(Diagnosis::ConnectionRefused.to_string().contains("is the server running"));
//! ```
//!
//! [`ErrorChain`] prints an error with all its causes on one line, for log fields.

use std::error::Error;
use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError};

/// What went wrong with a tunnel, in words both transports share.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Diagnosis {
    /// The server's certificate has expired.
    ServerCertificateExpired {
        /// Its `notAfter` date (`YYYY-MM-DD`), when the TLS library reported it.
        not_after: Option<String>,
    },
    /// The server's certificate is not valid yet.
    ServerCertificateNotYetValid,
    /// The server's certificate is not signed by the CA this client trusts.
    ServerCertificateUntrusted,
    /// The server's certificate does not carry the name the client checks.
    ServerCertificateWrongName {
        /// The name the client checked, when known.
        expected: Option<String>,
    },
    /// The server refused our client certificate.
    ClientCertificateRejected {
        /// What the server's alert says about it.
        reason: &'static str,
    },
    /// The server refused the handshake for another reason (no common protocol version or
    /// cipher suite, or a certificate key type it does not take).
    HandshakeRefused,
    /// The server closed the tunnel without answering.
    ClosedBeforeAnswering,
    /// Nothing accepts connections at the server's address.
    ConnectionRefused,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnosis::ServerCertificateExpired {
                not_after: Some(date),
            } => write!(
                f,
                "the server's certificate expired on {date}: renew it on the server"
            ),
            Diagnosis::ServerCertificateExpired { not_after: None } => f.write_str(
                "the server's certificate has expired: renew it on the server (or check this host's clock)",
            ),
            Diagnosis::ServerCertificateNotYetValid => f.write_str(
                "the server's certificate is not valid yet: check the clocks of both hosts",
            ),
            Diagnosis::ServerCertificateUntrusted => f.write_str(
                "the server's certificate is not signed by the CA this client trusts (its --ca file): give the CA that issued the server's certificate",
            ),
            Diagnosis::ServerCertificateWrongName {
                expected: Some(name),
            } => write!(
                f,
                "the server's certificate is not valid for the name {name}: set --server-name to a name in the certificate"
            ),
            Diagnosis::ServerCertificateWrongName { expected: None } => f.write_str(
                "the server's certificate is not valid for the server name: set --server-name to a name in the certificate",
            ),
            Diagnosis::ClientCertificateRejected { reason } => write!(
                f,
                "the server rejected our client certificate ({reason}): use a certificate issued by the server's CA and valid now"
            ),
            Diagnosis::HandshakeRefused => f.write_str(
                "the server refused the handshake: no common protocol version or cipher suite, or a certificate key type it does not accept (streamproxy's DTLS takes ECDSA keys only)",
            ),
            Diagnosis::ClosedBeforeAnswering => f.write_str(
                "the server closed the tunnel before answering: its policy or limits refused it, or the destination is unreachable (see the server's log)",
            ),
            Diagnosis::ConnectionRefused => f.write_str(
                "nothing accepts connections at the server's address (connection refused): is the server running, and is the port right?",
            ),
        }
    }
}

/// Finds the cause of a failed tunnel in `error` and its sources.
///
/// Certificate and alert errors of either TLS library are recognised anywhere in the chain; a
/// connection that ended (end of stream, reset, broken pipe) becomes
/// [`Diagnosis::ClosedBeforeAnswering`], so call this only for failures before the server
/// answered. `None` when nothing is recognised: log the error itself.
pub fn explain(error: &(dyn Error + 'static)) -> Option<Diagnosis> {
    let mut ended = false;
    visit(error, &mut ended, 0).or_else(|| ended.then_some(Diagnosis::ClosedBeforeAnswering))
}

/// Looks at `e`, then at what it wraps: its `source()`, and the errors that `source()` skips
/// (an `io::Error`'s payload, and the inner error of `#[error(transparent)]` variants, whose
/// `source()` is the inner error's source).
fn visit(e: &(dyn Error + 'static), ended: &mut bool, depth: usize) -> Option<Diagnosis> {
    if depth > 16 {
        return None;
    }
    if let Some(d) = from_rustls(e).or_else(|| from_openssl(e)) {
        return Some(d);
    }
    if let Some(tls::ConnectError::AlertReceived(alert)) = e.downcast_ref::<tls::ConnectError>() {
        return Some(from_alert(u8::from(*alert)));
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        match io.kind() {
            io::ErrorKind::ConnectionRefused => return Some(Diagnosis::ConnectionRefused),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => *ended = true,
            _ => {}
        }
    }
    if matches!(
        e.downcast_ref::<dtls::RecvError>(),
        Some(dtls::RecvError::Replaced)
    ) || matches!(
        e.downcast_ref::<dtls::SendError>(),
        Some(dtls::SendError::Closed)
    ) {
        *ended = true;
    }
    let hidden: Option<&(dyn Error + 'static)> = if let Some(io) = e.downcast_ref::<io::Error>() {
        io.get_ref().map(|inner| inner as &(dyn Error + 'static))
    } else if let Some(c) = e.downcast_ref::<crate::client::ClientError>() {
        match c {
            crate::client::ClientError::Tls(inner) => Some(inner),
            crate::client::ClientError::Dtls(inner) => Some(inner),
            _ => None,
        }
    } else if let Some(crate::client::HealthError::Connect(inner)) =
        e.downcast_ref::<crate::client::HealthError>()
    {
        Some(inner)
    } else if let Some(dtls::ConnectError::Handshake(inner)) =
        e.downcast_ref::<dtls::ConnectError>()
    {
        Some(inner)
    } else {
        None
    };
    hidden
        .into_iter()
        .chain(e.source())
        .find_map(|next| visit(next, ended, depth + 1))
}

fn from_rustls(e: &(dyn Error + 'static)) -> Option<Diagnosis> {
    match e.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            CertificateError::Expired => Diagnosis::ServerCertificateExpired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => {
                Diagnosis::ServerCertificateExpired {
                    not_after: date(not_after.as_secs()),
                }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Diagnosis::ServerCertificateNotYetValid
            }
            CertificateError::NotValidForName => {
                Diagnosis::ServerCertificateWrongName { expected: None }
            }
            CertificateError::NotValidForNameContext { expected, .. } => {
                Diagnosis::ServerCertificateWrongName {
                    expected: Some(expected.to_str().into_owned()),
                }
            }
            // A certificate from another CA of the same name fails on its signature.
            _ => Diagnosis::ServerCertificateUntrusted,
        }),
        rustls::Error::AlertReceived(alert) => Some(from_alert(u8::from(*alert))),
        _ => None,
    }
}

fn from_openssl(e: &(dyn Error + 'static)) -> Option<Diagnosis> {
    if let Some(dtls::HandshakeError::PeerCertificate(result)) =
        e.downcast_ref::<dtls::HandshakeError>()
    {
        return Some(from_verify_result(result.as_raw()));
    }
    if let Some(result) = e.downcast_ref::<openssl::x509::X509VerifyResult>() {
        return Some(from_verify_result(result.as_raw()));
    }
    let ssl = e.downcast_ref::<openssl::ssl::Error>()?;
    // OpenSSL reports a received alert as the reason `SSL_AD_REASON_OFFSET + alert`.
    const ALERT_OFFSET: i32 = 1000;
    ssl.ssl_error()?.errors().iter().find_map(|err| {
        let code = err.reason_code() - ALERT_OFFSET;
        u8::try_from(code).ok().map(from_alert)
    })
}

/// OpenSSL's certificate verification results (`X509_V_ERR_*`).
fn from_verify_result(code: i32) -> Diagnosis {
    match code {
        openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED => {
            Diagnosis::ServerCertificateExpired { not_after: None }
        }
        openssl_sys::X509_V_ERR_CERT_NOT_YET_VALID => Diagnosis::ServerCertificateNotYetValid,
        openssl_sys::X509_V_ERR_HOSTNAME_MISMATCH | openssl_sys::X509_V_ERR_IP_ADDRESS_MISMATCH => {
            Diagnosis::ServerCertificateWrongName { expected: None }
        }
        _ => Diagnosis::ServerCertificateUntrusted,
    }
}

/// A TLS alert the server sent, by its wire number.
fn from_alert(alert: u8) -> Diagnosis {
    let is = |a: AlertDescription| u8::from(a) == alert;
    let reason = if is(AlertDescription::CertificateExpired) {
        "expired or not yet valid"
    } else if is(AlertDescription::UnknownCA) || is(AlertDescription::DecryptError) {
        // A client certificate from another CA with the same name fails on its signature.
        "not signed by the server's CA"
    } else if is(AlertDescription::CertificateRevoked) {
        "revoked"
    } else if is(AlertDescription::CertificateRequired) {
        "none was sent"
    } else if is(AlertDescription::BadCertificate)
        || is(AlertDescription::UnsupportedCertificate)
        || is(AlertDescription::CertificateUnknown)
        || is(AlertDescription::AccessDenied)
    {
        "not accepted"
    } else {
        return Diagnosis::HandshakeRefused;
    };
    Diagnosis::ClientCertificateRejected { reason }
}

/// The words for a log line's `reason` field: the diagnosis when there is one, else the error
/// and its causes.
pub fn reason(error: &(dyn Error + 'static)) -> String {
    match explain(error) {
        Some(d) => d.to_string(),
        None => ErrorChain(error).to_string(),
    }
}

/// `YYYY-MM-DD` of a Unix time.
fn date(unix_seconds: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix_seconds).ok()?).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}",
        t.year(),
        u8::from(t.month()),
        t.day()
    ))
}

/// An error and its causes on one line (`what failed: why: why`), leaving out a cause whose
/// text its parent already printed.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut printed = self.0.to_string();
        f.write_str(&printed)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !printed.contains(&text) {
                write!(f, ": {text}")?;
                printed = text;
            }
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_with(inner: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, inner)
    }

    #[test]
    fn an_expired_server_certificate_names_its_date() {
        let e = io_with(rustls::Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: rustls::pki_types::UnixTime::since_unix_epoch(
                    std::time::Duration::from_secs(1_738_500_000),
                ),
                not_after: rustls::pki_types::UnixTime::since_unix_epoch(
                    std::time::Duration::from_secs(1_738_368_000),
                ),
            },
        ));
        let d = explain(&e).expect("recognised");
        assert_eq!(
            d.to_string(),
            "the server's certificate expired on 2025-02-01: renew it on the server"
        );
    }

    #[test]
    fn another_ca_is_untrusted_and_a_wrong_name_is_named() {
        for c in [
            CertificateError::UnknownIssuer,
            CertificateError::BadSignature,
        ] {
            let e = io_with(rustls::Error::InvalidCertificate(c));
            assert_eq!(explain(&e), Some(Diagnosis::ServerCertificateUntrusted));
        }
        let e = io_with(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("proxy.example")
                    .expect("name")
                    .to_owned(),
                presented: vec!["godoxy.agent".into()],
            },
        ));
        assert!(
            explain(&e)
                .expect("recognised")
                .to_string()
                .contains("not valid for the name proxy.example")
        );
    }

    #[test]
    fn alerts_from_the_server_speak_of_our_client_certificate() {
        for (alert, words) in [
            (
                AlertDescription::DecryptError,
                "not signed by the server's CA",
            ),
            (AlertDescription::UnknownCA, "not signed by the server's CA"),
            (AlertDescription::CertificateExpired, "expired"),
            (AlertDescription::CertificateRequired, "none was sent"),
        ] {
            let e = io_with(rustls::Error::AlertReceived(alert));
            let text = explain(&e).expect("recognised").to_string();
            assert!(text.contains("rejected our client certificate"), "{text}");
            assert!(text.contains(words), "{alert:?}: {text}");
        }
        let e = tls::ConnectError::AlertReceived(AlertDescription::HandshakeFailure);
        assert_eq!(explain(&e), Some(Diagnosis::HandshakeRefused));
    }

    #[test]
    fn openssl_verify_results_map_to_the_same_words() {
        assert_eq!(
            from_verify_result(openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED),
            Diagnosis::ServerCertificateExpired { not_after: None }
        );
        assert_eq!(
            from_verify_result(openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
            Diagnosis::ServerCertificateUntrusted
        );
        assert_eq!(
            from_verify_result(openssl_sys::X509_V_ERR_HOSTNAME_MISMATCH),
            Diagnosis::ServerCertificateWrongName { expected: None }
        );
        // An alert received over DTLS reads as the TLS one does.
        assert_eq!(
            from_alert(u8::from(AlertDescription::UnknownCA)),
            Diagnosis::ClientCertificateRejected {
                reason: "not signed by the server's CA"
            }
        );
    }

    #[test]
    fn a_closed_connection_is_a_refusal_before_the_answer() {
        for kind in [
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
        ] {
            assert_eq!(
                explain(&io::Error::from(kind)),
                Some(Diagnosis::ClosedBeforeAnswering)
            );
        }
        assert_eq!(explain(&io::Error::from(io::ErrorKind::TimedOut)), None);
    }

    #[test]
    fn the_chain_prints_each_cause_once() {
        let inner = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = dtls::HandshakeError::Io(inner);
        assert_eq!(
            ErrorChain(&e).to_string(),
            "socket error during the DTLS handshake: connection refused"
        );
        let e = tls::ConnectError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot connect: connection refused"
        );
    }
}
