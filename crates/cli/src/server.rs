//! `streamproxy server`: TLS and DTLS on one port number, a destination policy, SIGHUP
//! reloads the certificates, SIGINT/SIGTERM drain and exit.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use streamproxy::proxy::policy::{Policy, Rule};
use streamproxy::proxy::server::{CertPaths, Server};
use streamproxy::proxy::settings::Settings;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ServerArgs;
use crate::config::{ConfigFile, ServerConfig, required};
use crate::signals::Stop;

/// Everything a server needs, flags and file merged.
struct Plan {
    listen: SocketAddr,
    certs: CertPaths,
    policy: Policy,
    settings: Settings,
    udp: bool,
    api: bool,
}

const NO_POLICY: &str = "no destination policy: give --allow RULE (e.g. --allow 10.0.0.0/8:443, repeatable) or --allow-all to allow every destination";

fn plan(args: ServerArgs) -> anyhow::Result<Plan> {
    let file = ConfigFile::load(args.config.as_deref())?.server;
    let listen = match args.listen {
        Some(addr) => addr,
        None => {
            let text = required(
                None,
                file.listen.clone(),
                "--listen ADDR (e.g. --listen 0.0.0.0:8890)",
            )?;
            text.parse().map_err(|_| {
                anyhow::anyhow!(
                    "listen = `{text}` in the config file is not an address like 0.0.0.0:8890"
                )
            })?
        }
    };
    let certs = CertPaths::new(
        required::<PathBuf>(
            args.files.cert,
            file.cert.clone(),
            "--cert FILE (the server certificate)",
        )?,
        required::<PathBuf>(
            args.files.key,
            file.key.clone(),
            "--key FILE (the server's private key)",
        )?,
        required::<PathBuf>(
            args.files.ca,
            file.ca.clone(),
            "--ca FILE (the CA client certificates chain to)",
        )?,
    );
    let allow = if args.allow.is_empty() {
        parse_rules(&file.allow, "allow")?
    } else {
        args.allow
    };
    let deny = if args.deny.is_empty() {
        parse_rules(&file.deny, "deny")?
    } else {
        args.deny
    };
    let allow_all = args.allow_all || (allow.is_empty() && file.allow_all == Some(true));
    let policy = if allow_all {
        if !allow.is_empty() {
            bail!("give either allow rules or allow-all, not both");
        }
        Policy::allow_all(deny)
    } else if allow.is_empty() {
        bail!(NO_POLICY);
    } else {
        Policy::new(allow, deny)?
    };
    Ok(Plan {
        listen,
        certs,
        policy,
        settings: settings(&file)?,
        udp: !args.no_udp && file.udp.unwrap_or(true),
        api: !args.no_api && file.api.unwrap_or(true),
    })
}

fn parse_rules(rules: &[String], key: &str) -> anyhow::Result<Vec<Rule>> {
    rules
        .iter()
        .map(|r| {
            r.parse::<Rule>()
                .with_context(|| format!("{key} in the config file"))
        })
        .collect()
}

fn settings(file: &ServerConfig) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    if let Some(d) = file.header_timeout {
        s = s.header_timeout(d);
    }
    if let Some(d) = file.dial_timeout {
        s = s.dial_timeout(d);
    }
    if let Some(d) = file.handshake_timeout {
        s = s.handshake_timeout(d);
    }
    if let Some(d) = file.udp_idle_timeout {
        s = s.udp_idle_timeout(d);
    }
    if let Some(d) = file.drain_period {
        s = s.drain_period(d);
    }
    if let Some(n) = file.max_tcp_tunnels {
        s = s.max_tcp_tunnels(n);
    }
    if let Some(n) = file.max_udp_sessions {
        s = s.max_udp_sessions(n);
    }
    if let Some(n) = file.max_handshakes {
        s = s.max_handshakes(n);
    }
    if let Some(on) = file.resumption {
        s = s.resumption(on);
    }
    let (global, per_client) = (
        file.max_lookups.unwrap_or(s.max_lookups),
        file.max_lookups_per_client
            .unwrap_or(s.max_lookups_per_client),
    );
    s = s.max_lookups(global, per_client);
    if let Some(d) = file.lookup_timeout {
        s = s.lookup_timeout(d);
    }
    // A limit of zero refuses every connection: refused here rather than serving nothing.
    for (key, value) in [
        ("max_tcp_tunnels", s.max_tcp_tunnels),
        ("max_udp_sessions", s.max_udp_sessions),
        ("max_handshakes", s.max_handshakes),
        ("max_lookups", s.max_lookups),
        ("max_lookups_per_client", s.max_lookups_per_client),
    ] {
        if value == 0 {
            anyhow::bail!(
                "{key} = 0 in the config file would refuse every connection; give at least 1"
            );
        }
    }
    for (key, value) in [
        ("header_timeout", s.header_timeout),
        ("dial_timeout", s.dial_timeout),
        ("handshake_timeout", s.handshake_timeout),
        ("lookup_timeout", s.lookup_timeout),
    ] {
        if value.is_zero() {
            anyhow::bail!(
                "{key} = 0 in the config file would refuse every connection; give a positive duration"
            );
        }
    }
    if s.max_lookups_per_client > s.max_lookups {
        anyhow::bail!(
            "max_lookups_per_client ({}) is larger than max_lookups ({}) in the config file",
            s.max_lookups_per_client,
            s.max_lookups
        );
    }
    Ok(s.tcp_keepalive(file.keepalive().settings()?))
}

/// Warns when the server's private key can be read by its group or by others.
fn warn_if_key_readable(key: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %key.display(), mode = %format!("{mode:04o}"), "the private key is readable by its group or by others; chmod 600 it");
        }
    }
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let plan = plan(args)?;
    // Registered before binding, so that a signal right after the ready line is not missed.
    let mut stop = Stop::register()?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let drain = plan.settings.drain_period;
    let server = Server::builder(plan.policy.clone(), plan.certs.clone())
        .settings(plan.settings)
        .udp(plan.udp)
        .api(plan.api)
        .bind(plan.listen)
        .await?;
    // After the material loaded: a file that holds no key gets its error alone.
    warn_if_key_readable(&plan.certs.key);
    let tcp = server.tcp_addr();
    match server.udp_addr() {
        Some(udp) => {
            tracing::info!(tcp = %tcp, udp = %udp, api = plan.api, allow_all = plan.policy.is_allow_all(), "listening")
        }
        None => {
            tracing::info!(tcp = %tcp, udp = "off", api = plan.api, allow_all = plan.policy.is_allow_all(), "listening")
        }
    }
    let reloader = server.reloader();
    server
        .run(async move {
            loop {
                tokio::select! {
                    name = stop.wait() => {
                        tracing::info!(signal = name, drain = ?drain, "shutting down: draining live tunnels");
                        return;
                    }
                    _ = hangup.recv() => match reloader.reload() {
                        Ok(()) => tracing::info!(signal = "SIGHUP", "reloaded the certificate, key and CA"),
                        Err(e) => tracing::error!(signal = "SIGHUP", error = %e, "reload failed; keeping the previous certificates"),
                    },
                }
            }
        })
        .await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use streamproxy::proxy::keepalive::Keepalive;

    use super::*;
    use crate::config::parse;

    fn keepalive_of(text: &str) -> Option<Keepalive> {
        settings(&parse(text).expect("valid").server)
            .expect("accepted")
            .tcp_keepalive
    }

    fn refusal(text: &str) -> String {
        settings(&parse(text).expect("valid").server)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn keepalive_is_on_with_the_defaults_when_the_file_says_nothing() {
        assert_eq!(keepalive_of(""), Some(Keepalive::default()));
    }

    #[test]
    fn keepalive_keys_reach_the_settings() {
        let keepalive = keepalive_of(
            "[server]\ntcp_keepalive_idle = \"5s\"\ntcp_keepalive_interval = \"2s\"\n\
             tcp_keepalive_retries = 7\n",
        );
        assert_eq!(
            keepalive,
            Some(Keepalive {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                retries: 7,
            })
        );
    }

    #[test]
    fn keepalive_values_the_kernel_refuses_are_errors_naming_the_key() {
        for (text, key) in [
            (
                "tcp_keepalive_interval = \"500ms\"",
                "tcp_keepalive_interval",
            ),
            ("tcp_keepalive_idle = \"1500ms\"", "tcp_keepalive_idle"),
            ("tcp_keepalive_idle = 0", "tcp_keepalive_idle"),
            ("tcp_keepalive_idle = \"10h\"", "tcp_keepalive_idle"),
            ("tcp_keepalive_retries = 0", "tcp_keepalive_retries"),
            ("tcp_keepalive_retries = 128", "tcp_keepalive_retries"),
        ] {
            let e = refusal(&format!("[server]\n{text}\n"));
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn keepalive_false_turns_it_off() {
        let text = "[server]\ntcp_keepalive = false\ntcp_keepalive_idle = \"5s\"\n";
        assert_eq!(keepalive_of(text), None);
    }
}
