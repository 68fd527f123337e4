//! Client configuration that running forwarders pick up for their next tunnel.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// A client configuration (TLS or DTLS) shared by forwarders and replaceable while they run:
/// a tunnel opened after [`replace`](Self::replace) uses the new configuration; tunnels already
/// open keep the one they started with. Cloning gives another handle to the same slot.
///
/// ```
/// # fn configs() -> (tls::ClientConfig, tls::ClientConfig) { unimplemented!() }
/// # fn demo() {
/// use streamproxy_proxy::forward::LiveConfig;
/// let (old, new) = configs();
/// let live = LiveConfig::new(old);
/// // ... forwarders built `.with_live_config(live.clone())` run ...
/// live.replace(new); // SIGHUP: new tunnels use the new certificate, key and CA
/// # }
/// ```
pub struct LiveConfig<T>(Arc<ArcSwap<T>>);

impl<T> LiveConfig<T> {
    /// A slot holding `config`.
    pub fn new(config: T) -> Self {
        LiveConfig(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// Makes `config` the one new tunnels use.
    pub fn replace(&self, config: T) {
        self.0.store(Arc::new(config));
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<T> {
        self.0.load_full()
    }
}

impl<T> Clone for LiveConfig<T> {
    fn clone(&self) -> Self {
        LiveConfig(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for LiveConfig<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveConfig")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_reaches_every_handle_and_spares_what_was_taken() {
        let live = LiveConfig::new(1);
        let other = live.clone();
        let taken = live.current();
        other.replace(2);
        assert_eq!(*live.current(), 2);
        assert_eq!(*taken, 1);
    }
}
