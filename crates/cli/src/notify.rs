//! Readiness and state notifications to systemd (`Type=notify` units). Without `NOTIFY_SOCKET`
//! (not started by systemd) every call does nothing.

use sd_notify::NotifyState;

/// The service is up: listening (server) or forwarding (client).
pub(crate) fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload began (SIGHUP); [`reloaded`] follows. The timestamp lets `Type=notify-reload`
/// units work too.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload ended, with or without success: the service is ready again.
pub(crate) fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// Shutdown began: live tunnels drain.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
