//! The `--config` file: TOML with a `[server]` and a `[client]` table holding the same settings
//! as the flags, plus timeouts and limits. Unknown keys are errors naming the key and line.
//! Relative paths are relative to the file's directory. Flags override the file; a list
//! given on the command line (`--allow`, `--tcp`, ...) replaces the file's list.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};
use streamproxy::proxy::keepalive::{Keepalive, KeepaliveError};
use streamproxy::proxy::status::StatusAddr;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) server: ServerConfig,
    #[serde(default)]
    pub(crate) client: ClientConfig,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    pub(crate) listen: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) udp: Option<bool>,
    pub(crate) api: Option<bool>,
    pub(crate) agent_name: Option<String>,
    pub(crate) status_listen: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) api_header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) api_idle_timeout: Option<Duration>,
    pub(crate) api_max_connections: Option<usize>,
    pub(crate) api_max_request_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    pub(crate) allow_all: Option<bool>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    /// The short form of an identity rule: certificate matches (`cn=NAME`, ...) admitted to
    /// the server's `allow`/`deny` destinations.
    #[serde(default)]
    pub(crate) allow_clients: Vec<String>,
    /// `"v2"` or `"off"`.
    pub(crate) proxy_protocol: Option<String>,
    /// `[[server.identity]]` tables.
    #[serde(default)]
    pub(crate) identity: Vec<IdentityConfig>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) dial_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) udp_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) udp_client_silence_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) drain_period: Option<Duration>,
    pub(crate) max_tcp_tunnels: Option<usize>,
    pub(crate) max_udp_sessions: Option<usize>,
    pub(crate) max_handshakes: Option<usize>,
    pub(crate) max_handshakes_per_source: Option<usize>,
    pub(crate) max_lookups: Option<usize>,
    pub(crate) max_lookups_per_client: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) lookup_timeout: Option<Duration>,
    pub(crate) resumption: Option<bool>,
    pub(crate) udp_buffer_bytes: Option<usize>,
    pub(crate) tcp_keepalive: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) tcp_keepalive_idle: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) tcp_keepalive_interval: Option<Duration>,
    pub(crate) tcp_keepalive_retries: Option<u32>,
}

/// One `[[server.identity]]` table: who (any of the match keys) may reach what.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityConfig {
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) cn: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) dns: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) uri: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) spki: Vec<String>,
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    pub(crate) proxy_protocol: Option<String>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    match Raw::deserialize(d)? {
        Raw::One(one) => Ok(vec![one]),
        Raw::Many(many) => Ok(many),
    }
}

/// `[client]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientConfig {
    pub(crate) server: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) server_name: Option<String>,
    pub(crate) header_version: Option<String>,
    #[serde(default)]
    pub(crate) tcp: Vec<String>,
    #[serde(default)]
    pub(crate) udp: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) udp_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) udp_reply_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) drain_period: Option<Duration>,
    pub(crate) max_tunnels: Option<usize>,
    pub(crate) max_pending: Option<usize>,
    pub(crate) udp_buffer_bytes: Option<usize>,
    pub(crate) status_listen: Option<String>,
    pub(crate) tcp_keepalive: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) tcp_keepalive_idle: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) tcp_keepalive_interval: Option<Duration>,
    pub(crate) tcp_keepalive_retries: Option<u32>,
}

/// The `tcp_keepalive*` keys, which `[server]` and `[client]` share.
pub(crate) struct KeepaliveKeys {
    on: Option<bool>,
    idle: Option<Duration>,
    interval: Option<Duration>,
    retries: Option<u32>,
}

impl ServerConfig {
    pub(crate) fn keepalive(&self) -> KeepaliveKeys {
        KeepaliveKeys {
            on: self.tcp_keepalive,
            idle: self.tcp_keepalive_idle,
            interval: self.tcp_keepalive_interval,
            retries: self.tcp_keepalive_retries,
        }
    }
}

impl ClientConfig {
    pub(crate) fn keepalive(&self) -> KeepaliveKeys {
        KeepaliveKeys {
            on: self.tcp_keepalive,
            idle: self.tcp_keepalive_idle,
            interval: self.tcp_keepalive_interval,
            retries: self.tcp_keepalive_retries,
        }
    }
}

impl KeepaliveKeys {
    /// The keepalive to use: on with the defaults unless the keys say otherwise; values the
    /// kernel would refuse are errors naming the key.
    pub(crate) fn settings(&self) -> anyhow::Result<Option<Keepalive>> {
        let defaults = Keepalive::default();
        let keepalive = Keepalive::new(
            self.idle.unwrap_or(defaults.idle),
            self.interval.unwrap_or(defaults.interval),
            self.retries.unwrap_or(defaults.retries),
        )
        .map_err(|e| {
            let key = match e {
                KeepaliveError::Time {
                    what: "interval", ..
                } => "tcp_keepalive_interval",
                KeepaliveError::Time { .. } => "tcp_keepalive_idle",
                _ => "tcp_keepalive_retries",
            };
            anyhow::anyhow!("{key} in the config file: {e}")
        })?;
        Ok(self.on.unwrap_or(true).then_some(keepalive))
    }
}

impl ConfigFile {
    /// Reads `path`, or gives the empty configuration when there is none.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut config = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.server.ca,
            &mut config.server.cert,
            &mut config.server.key,
            &mut config.client.ca,
            &mut config.client.cert,
            &mut config.client.key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }
}

/// Parses the text of a configuration file; errors are one line, `line N: message`.
pub(crate) fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                anyhow::anyhow!("line {line}: {message}")
            }
            None => anyhow::anyhow!("{message}"),
        }
    })
}

/// A duration written as `"500ms"`, `"10s"`, `"2m"`, `"1h"`, or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    let raw = Raw::deserialize(d)?;
    match raw {
        Raw::Seconds(s) => Ok(Some(Duration::from_secs(s))),
        Raw::Text(text) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A duration as written in flags and the file: humantime's syntax (`500ms`, `10s`, `1h30m`,
/// `2m 30s`), or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    if let Ok(seconds) = t.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(t).map_err(|e| {
        anyhow::anyhow!("`{text}` is not a duration like \"500ms\", \"10s\" or \"1h30m\" ({e})")
    })
}

/// The status listener's address: the flag, else the file's `status_listen`.
pub(crate) fn status_addr(
    flag: Option<StatusAddr>,
    file: Option<&str>,
) -> anyhow::Result<Option<StatusAddr>> {
    match (flag, file) {
        (Some(addr), _) => Ok(Some(addr)),
        (None, Some(text)) => text
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("status_listen in the config file: {e}")),
        (None, None) => Ok(None),
    }
}

/// Fails naming every required option that was given neither as a flag nor in the file, so
/// that one run reports all of them. Each item: whether it is present, and how to give it.
pub(crate) fn all_present(items: &[(bool, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = items
        .iter()
        .filter(|(present, _)| !present)
        .map(|(_, what)| *what)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("missing {}", missing.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let config = parse(
            r#"
            [server]
            listen = "0.0.0.0:8890"
            ca = "ca.pem"
            cert = "server.pem"
            key = "server-key.pem"
            udp = true
            api = false
            allow = ["10.0.0.0/8:22,443"]
            allow_all = false
            deny = ["10.0.0.1"]
            header_timeout = "10s"
            dial_timeout = 10
            handshake_timeout = "10s"
            udp_idle_timeout = "2m"
            drain_period = "30s"
            max_tcp_tunnels = 4096
            max_udp_sessions = 4096
            max_handshakes = 256
            resumption = true
            tcp_keepalive = true
            tcp_keepalive_idle = "60s"
            tcp_keepalive_interval = "10s"
            tcp_keepalive_retries = 3

            [client]
            server = "proxy.example:8890"
            ca = "ca.pem"
            cert = "client.pem"
            key = "client-key.pem"
            server_name = "godoxy.agent"
            header_version = "0.1.0"
            tcp = ["127.0.0.1:2222=10.0.0.7:22"]
            udp = ["127.0.0.1:5353=10.0.0.53:53"]
            connect_timeout = "10s"
            udp_idle_timeout = "500ms"
            udp_reply_timeout = "20s"
            drain_period = "1h"
            max_tunnels = 100
            tcp_keepalive = true
            tcp_keepalive_idle = "60s"
            tcp_keepalive_interval = "10s"
            tcp_keepalive_retries = 3
            "#,
        )
        .expect("valid");
        assert_eq!(
            config.server.udp_idle_timeout,
            Some(Duration::from_secs(120))
        );
        assert_eq!(config.server.dial_timeout, Some(Duration::from_secs(10)));
        assert_eq!(
            config.client.udp_idle_timeout,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            config.client.udp_reply_timeout,
            Some(Duration::from_secs(20))
        );
        assert_eq!(config.client.drain_period, Some(Duration::from_secs(3600)));
        assert_eq!(config.client.tcp.len(), 1);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse("[server]\nlisten = \"0.0.0.0:1\"\nlisen = 3\n").expect_err("unknown key");
        let e = e.to_string();
        assert!(e.starts_with("line 3: unknown field `lisen`"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn bad_durations_are_refused() {
        let e = parse("[client]\ndrain_period = \"soon\"\n").expect_err("bad duration");
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }

    #[test]
    fn client_keepalive_keys_are_read_and_checked_like_the_servers() {
        let keepalive = |text: &str| parse(text).expect("valid").client.keepalive().settings();
        assert_eq!(keepalive("").expect("defaults"), Some(Keepalive::default()));
        assert_eq!(
            keepalive("[client]\ntcp_keepalive_idle = \"5s\"\ntcp_keepalive_retries = 4\n")
                .expect("accepted"),
            Some(Keepalive {
                idle: Duration::from_secs(5),
                retries: 4,
                ..Keepalive::default()
            })
        );
        assert_eq!(
            keepalive("[client]\ntcp_keepalive = false\n").expect("accepted"),
            None
        );
        let e = keepalive("[client]\ntcp_keepalive_interval = \"500ms\"\n").expect_err("refused");
        assert!(e.to_string().starts_with("tcp_keepalive_interval"), "{e}");
    }
}
