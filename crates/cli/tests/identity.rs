//! Client-identity rules, their live reload and the PROXY protocol header, against the built
//! binary: certificates matched by common name, DNS SAN, URI SAN (a SPIFFE ID) and key pin,
//! and one that matches nothing, each tried on two destinations over TCP and UDP.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use support::*;
use test_support::blocking::{tcp_echo, udp_echo};
use test_support::payload;

/// A client certificate to issue: its common name and subject alternative names.
struct Who {
    dir: &'static str,
    cn: &'static str,
    sans: Vec<SanType>,
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("DNS name"))
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().expect("URI"))
}

/// Issues a client certificate from the CA in `ca_dir` into `out` (client.pem,
/// client-key.pem and ca.pem); returns the SHA-256 of its public key, in hex.
fn issue(ca_dir: &Path, out: &Path, cn: &str, sans: Vec<SanType>) -> String {
    let read = |name: &str| std::fs::read_to_string(ca_dir.join(name)).expect("read CA");
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::create_dir_all(out).expect("mkdir");
    std::fs::write(out.join("client.pem"), cert.pem()).expect("write");
    std::fs::write(out.join("client-key.pem"), key.serialize_pem()).expect("write");
    std::fs::write(out.join("ca.pem"), read("ca.pem")).expect("write");
    sha256_hex(&key.subject_public_key_info())
}

/// SHA-256 through rustls' provider: independent of the server's (OpenSSL) digest.
fn sha256_hex(data: &[u8]) -> String {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(data);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Destinations A and B: a TCP and a UDP echo each.
struct Destinations {
    tcp: [SocketAddr; 2],
    udp: [SocketAddr; 2],
}

impl Destinations {
    fn new() -> Destinations {
        Destinations {
            tcp: [tcp_echo(), tcp_echo()],
            udp: [udp_echo(), udp_echo()],
        }
    }

    /// The allow rule for destination `i` (0: A, 1: B) on both transports.
    fn rule(&self, i: usize) -> String {
        format!(
            "\"127.0.0.1:{}\", \"127.0.0.1:{}\"",
            self.tcp[i].port(),
            self.udp[i].port()
        )
    }
}

/// Writes the server's config file with one identity rule per way of matching.
fn write_config(path: &Path, d: &Destinations, pin: &str, extra: &str) {
    let config = format!(
        r#"
[server]
{extra}

[[server.identity]]
name = "by-cn"
cn = "ci-runner"
allow = [{a}]

[[server.identity]]
name = "by-dns"
dns = "runner.ci.internal"
allow = [{b}]

[[server.identity]]
name = "by-uri"
uri = "spiffe://example.org/ci/runner"
allow = [{a}]

[[server.identity]]
name = "by-spki"
spki = "{pin}"
allow = [{b}]
"#,
        a = d.rule(0),
        b = d.rule(1),
    );
    std::fs::write(path, config).expect("write config");
}

/// Issues the five certificates under `root`; returns the key pin of `spki`'s.
fn issue_all(root: &Path) -> String {
    let ca = root.join("ca");
    let out = streamproxy(&["certs", "ca", "--out", s(&ca)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = streamproxy(&["certs", "server", "--ca-dir", s(&ca), "--out", s(root)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pin = String::new();
    for who in everyone() {
        let p = issue(&ca, &root.join(who.dir), who.cn, who.sans);
        if who.dir == "spki" {
            pin = p;
        }
    }
    pin
}

fn everyone() -> Vec<Who> {
    vec![
        Who {
            dir: "cn",
            cn: "ci-runner",
            sans: vec![dns("cn-holder.example.invalid")],
        },
        Who {
            dir: "dns",
            cn: "dns-holder",
            sans: vec![dns("runner.ci.internal")],
        },
        Who {
            dir: "uri",
            cn: "uri-holder",
            sans: vec![uri("spiffe://example.org/ci/runner")],
        },
        Who {
            dir: "spki",
            cn: "key-holder",
            sans: vec![dns("key-holder.example.invalid")],
        },
        Who {
            dir: "none",
            cn: "laptop",
            sans: vec![
                dns("laptop.example.invalid"),
                uri("spiffe://example.org/laptop"),
            ],
        },
    ]
}

/// Whether a tunnel through the local TCP forward `local` echoes; `false` when the
/// forwarder closes it instead.
fn tcp_tunnel_works(local: SocketAddr, data: &[u8]) -> bool {
    let mut conn = TcpStream::connect(local).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    conn.write_all(data).expect("write");
    let mut back = vec![0u8; data.len()];
    match conn.read_exact(&mut back) {
        Ok(()) => {
            assert_eq!(back, data, "echo differs");
            true
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            panic!("neither an echo nor a close within {WAIT:?}")
        }
        Err(_) => false,
    }
}

/// Whether a tunnel log line names identity rule `rule`.
fn has_identity(line: &str, rule: &str) -> bool {
    line.contains(&format!("identity={rule} ")) || line.contains(&format!("identity=\"{rule}\""))
}

fn tls_dir(root: &Path, who: &str) -> std::path::PathBuf {
    root.join(who)
}

/// The matrix: each certificate x destinations A and B x TCP and UDP. `expect[who]` is the
/// destination (0: A, 1: B) its rule allows, or `None` when no rule matches it.
fn check_matrix(server: &mut Server, root: &Path, d: &Destinations) {
    let expect = [
        ("cn", Some((0, "by-cn"))),
        ("dns", Some((1, "by-dns"))),
        ("uri", Some((0, "by-uri"))),
        ("spki", Some((1, "by-spki"))),
        ("none", None),
    ];
    for (who, allowed) in expect {
        let forwards = [
            ("tcp", d.tcp[0]),
            ("tcp", d.tcp[1]),
            ("udp", d.udp[0]),
            ("udp", d.udp[1]),
        ];
        let (_client, locals) = client(&tls_dir(root, who), server.tcp, &forwards, &[]);
        for (i, (transport, destination)) in forwards.iter().enumerate() {
            let target = i % 2;
            let data = payload(64 + i, i as u64);
            let ok = allowed.is_some_and(|(dest, _)| dest == target);
            let what = format!("{who} -> {transport} {destination}");
            if *transport == "tcp" {
                assert_eq!(tcp_tunnel_works(locals[i], &data), ok, "{what}");
            } else if ok {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                socket.connect(locals[i]).expect("connect");
                udp_roundtrip(&socket, &data);
            } else {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                socket.send_to(&data, locals[i]).expect("send");
            }
            let line = match allowed {
                Some((_, rule)) if ok => {
                    let line = server.proc.wait_for("tunnel open");
                    assert!(has_identity(&line, rule), "{what}: {line}");
                    line
                }
                Some(_) => server.proc.wait_for("tunnel refused"),
                None => {
                    // The client's health check at start is refused too (over TCP): skip
                    // to this transport's line.
                    let transport_field = format!("transport={transport}");
                    let line = loop {
                        let line = server.proc.wait_for("client refused by the identity rules");
                        if line.contains(&transport_field) {
                            break line;
                        }
                    };
                    assert!(line.contains("cn=laptop"), "{what}: {line}");
                    assert!(
                        line.contains("dns=laptop.example.invalid"),
                        "{what}: {line}"
                    );
                    assert!(line.contains("spki="), "{what}: {line}");
                    line
                }
            };
            assert!(
                line.contains(&format!("transport={transport}")),
                "{what}: {line}"
            );
            if allowed.is_some() {
                assert!(
                    line.contains(&destination.port().to_string()),
                    "{what}: {line}"
                );
            }
        }
    }
}

#[test]
fn identity_rules_admit_each_certificate_to_its_own_destinations_on_tcp_and_udp() {
    let root = tmp();
    let pin = issue_all(root.path());
    let d = Destinations::new();
    let config = root.path().join("server.toml");
    write_config(&config, &d, &pin, "");
    let mut server = server(root.path(), &["--config", s(&config)]);
    check_matrix(&mut server, root.path(), &d);

    // Health checks are refused too for a client no rule matches, and answered for others.
    let healthy = |who: &str, udp: bool| {
        let address = if udp { server.udp } else { server.tcp };
        let mut args: Vec<String> = vec!["probe".into()];
        args.extend(client_args(&tls_dir(root.path(), who), address));
        args.extend(["--timeout".into(), "2s".into()]);
        if udp {
            args.push("--udp".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        streamproxy(&refs).status.success()
    };
    assert!(healthy("cn", false));
    assert!(healthy("uri", true));
    assert!(!healthy("none", false));
    assert!(!healthy("none", true));
}

#[test]
fn allow_client_admits_only_the_named_certificates() {
    let root = tmp();
    issue_all(root.path());
    let echo = tcp_echo();
    let mut server = server(
        root.path(),
        &[
            "--allow",
            "127.0.0.1",
            "--allow-client",
            "uri=spiffe://example.org/ci/runner",
            "--allow-client",
            "cn=ci-runner",
        ],
    );
    for (who, ok) in [("cn", true), ("uri", true), ("dns", false), ("none", false)] {
        let (_client, locals) = client(
            &tls_dir(root.path(), who),
            server.tcp,
            &[("tcp", echo)],
            &[],
        );
        assert_eq!(tcp_tunnel_works(locals[0], b"hello"), ok, "{who}");
        if ok {
            let line = server.proc.wait_for("tunnel open");
            assert!(has_identity(&line, "allow-client"), "{line}");
        } else {
            server.proc.wait_for("client refused by the identity rules");
        }
    }
}

#[test]
fn sighup_swaps_the_identity_rules_for_new_tunnels_and_keeps_live_ones() {
    let root = tmp();
    let pin = issue_all(root.path());
    let d = Destinations::new();
    let config = root.path().join("server.toml");
    write_config(&config, &d, &pin, "");
    let mut server = server(root.path(), &["--config", s(&config)]);
    let cn_dir = tls_dir(root.path(), "cn");
    let forwards = [
        ("tcp", d.tcp[0]),
        ("tcp", d.tcp[1]),
        ("udp", d.udp[0]),
        ("udp", d.udp[1]),
    ];
    let (_client, locals) = client(&cn_dir, server.tcp, &forwards, &[]);
    let mut live = TcpStream::connect(locals[0]).expect("connect");
    tcp_roundtrip(&mut live, b"before the reload");
    server.proc.wait_for("tunnel open");
    let live_udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    live_udp.connect(locals[2]).expect("connect");
    udp_roundtrip(&live_udp, b"udp before the reload");
    server.proc.wait_for("tunnel open");
    assert!(!tcp_tunnel_works(locals[1], b"B is not allowed yet"));
    server.proc.wait_for("tunnel refused");

    // A broken file changes nothing and says why.
    std::fs::write(
        &config,
        "[[server.identity]]\nname = \"by-cn\"\ncn = \"ci-runner\"\n",
    )
    .expect("write");
    server.proc.signal("HUP");
    let line = server.proc.wait_for("reload failed");
    assert!(line.contains("no allow rule"), "{line}");
    assert!(line.contains("nothing changed"), "{line}");
    assert!(!tcp_tunnel_works(locals[1], b"still not allowed"));
    server.proc.wait_for("tunnel refused");

    // The CN rule now allows B and no longer A.
    let d_swapped = Destinations {
        tcp: [d.tcp[1], d.tcp[0]],
        udp: [d.udp[1], d.udp[0]],
    };
    write_config(&config, &d_swapped, &pin, "");
    server.proc.signal("HUP");
    let line = server.proc.wait_for("reloaded the configuration");
    assert!(
        line.contains(&format!(
            "+identity by-cn: cn=ci-runner -> allow 127.0.0.1:{}",
            d.tcp[1].port()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "-identity by-cn: cn=ci-runner -> allow 127.0.0.1:{}",
            d.tcp[0].port()
        )),
        "{line}"
    );
    assert!(tcp_tunnel_works(locals[1], b"B is allowed now"));
    server.proc.wait_for("tunnel open");
    assert!(!tcp_tunnel_works(locals[0], b"A is not"));
    server.proc.wait_for("tunnel refused");
    let new_udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    new_udp.connect(locals[3]).expect("connect");
    udp_roundtrip(&new_udp, b"udp to B is allowed now");
    let line = server.proc.wait_for("tunnel open");
    assert!(line.contains(&d.udp[1].port().to_string()), "{line}");
    let refused_udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    refused_udp
        .send_to(b"udp to A is not", locals[2])
        .expect("send");
    let line = server.proc.wait_for("tunnel refused");
    assert!(line.contains("transport=udp"), "{line}");
    // The tunnels admitted before the reload keep running under the rules that admitted them.
    tcp_roundtrip(&mut live, b"after the reload");
    udp_roundtrip(&live_udp, b"udp after the reload");

    // Removing every identity rule (a server-wide rule instead) admits the stranger.
    std::fs::write(&config, "[server]\nallow = [\"127.0.0.1\"]\n").expect("write");
    server.proc.signal("HUP");
    let line = server.proc.wait_for("reloaded the configuration");
    assert!(line.contains("-identity by-spki"), "{line}");
    let (_stranger, locals) = client(
        &tls_dir(root.path(), "none"),
        server.tcp,
        &[("tcp", d.tcp[0])],
        &[],
    );
    assert!(tcp_tunnel_works(locals[0], b"anyone may now"));
}

/// What a destination behind `proxy_protocol = "v2"` receives first: the header, read with a
/// parser written from the specification.
struct Received {
    family_transport: u8,
    source_port: u16,
    tlvs: Vec<(u8, Vec<u8>)>,
    rest: Vec<u8>,
}

fn parse_v2(bytes: &[u8]) -> Received {
    assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n", "signature");
    assert_eq!(bytes[12], 0x21, "version 2, PROXY");
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let body = &bytes[16..16 + len];
    assert_eq!(bytes[13] >> 4, 1, "IPv4 on loopback");
    let source_port = u16::from_be_bytes([body[8], body[9]]);
    let mut tlvs = Vec::new();
    let mut rest = &body[12..];
    while !rest.is_empty() {
        let n = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        tlvs.push((rest[0], rest[3..3 + n].to_vec()));
        rest = &rest[3 + n..];
    }
    Received {
        family_transport: bytes[13],
        source_port,
        tlvs,
        rest: bytes[16 + len..].to_vec(),
    }
}

fn common_name_tlv(tlvs: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, ssl) = tlvs.iter().find(|(t, _)| *t == 0x20)?;
    assert_eq!(ssl[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
    let mut sub = &ssl[5..];
    while !sub.is_empty() {
        let n = usize::from(u16::from_be_bytes([sub[1], sub[2]]));
        if sub[0] == 0x22 {
            return Some(String::from_utf8(sub[3..3 + n].to_vec()).expect("utf-8"));
        }
        sub = &sub[3 + n..];
    }
    None
}

#[test]
fn proxy_protocol_v2_tells_tcp_and_udp_destinations_who_the_client_is() {
    let root = tmp();
    issue_all(root.path());
    let tcp_dest = TcpListener::bind("127.0.0.1:0").expect("bind");
    let udp_dest = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp_dest.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut server = server(
        root.path(),
        &["--allow", "127.0.0.1", "--proxy-protocol", "v2"],
    );
    let forwards = [
        ("tcp", tcp_dest.local_addr().expect("addr")),
        ("udp", udp_dest.local_addr().expect("addr")),
    ];
    let (_client, locals) = client(&tls_dir(root.path(), "cn"), server.tcp, &forwards, &[]);

    let mut conn = TcpStream::connect(locals[0]).expect("connect");
    conn.write_all(b"hello").expect("write");
    let (mut accepted, _) = tcp_dest.accept().expect("accept");
    accepted.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"hello") {
        let n = accepted.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let tcp = parse_v2(&got);
    assert_eq!(tcp.family_transport, 0x11, "TCP over IPv4");
    assert_eq!(tcp.rest, b"hello", "the header comes once, before the data");
    assert_ne!(tcp.source_port, 0);
    assert_eq!(common_name_tlv(&tcp.tlvs).as_deref(), Some("ci-runner"));
    let alpn = tcp.tlvs.iter().find(|(t, _)| *t == 0x01).expect("ALPN TLV");
    assert_eq!(alpn.1, b"godoxy-agent-stream/1");
    let tunnel_line = server.proc.wait_for("tunnel open");
    assert!(
        tunnel_line.contains(&format!(":{}", tcp.source_port)),
        "{tunnel_line}"
    );

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(locals[1]).expect("connect");
    for datagram in [&b"one"[..], b"two"] {
        socket.send(datagram).expect("send");
        let mut buf = [0u8; 2048];
        let (n, _) = udp_dest
            .recv_from(&mut buf)
            .expect("datagram with its header");
        let udp = parse_v2(&buf[..n]);
        assert_eq!(udp.family_transport, 0x12, "UDP over IPv4");
        assert_eq!(udp.rest, datagram, "every datagram carries the header");
        assert_eq!(common_name_tlv(&udp.tlvs).as_deref(), Some("ci-runner"));
    }
}

/// Whether Debian's `haproxy` can run here; skipped (with the reason printed) where it is not
/// installed, unless `STREAMPROXY_REQUIRE_HAPROXY` is set.
fn have_haproxy() -> bool {
    let why = match std::process::Command::new("haproxy").arg("-v").output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("`haproxy -v` failed with {}", out.status),
        Err(e) => format!("haproxy is not installed ({e})"),
    };
    assert!(
        std::env::var_os("STREAMPROXY_REQUIRE_HAPROXY").is_none(),
        "STREAMPROXY_REQUIRE_HAPROXY is set but {why}"
    );
    eprintln!("skipping: {why}");
    false
}

/// HAProxy with `accept-proxy` in front of an echo: it must take our header (it closes
/// connections whose header it cannot parse) and hand the client's address it read on to
/// the echo in its own PROXY v2 header (`send-proxy-v2`), an encoder independent of ours.
#[test]
fn haproxy_accepts_the_proxy_protocol_v2_header() {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};

    if !have_haproxy() {
        return;
    }
    let root = tmp();
    issue_all(root.path());
    // HAProxy inherits a socket already listening on a port the system chose: no fixed
    // port, and connections wait in its backlog until HAProxy accepts them.
    let front = TcpListener::bind("127.0.0.1:0").expect("bind");
    let front_addr = front.local_addr().expect("addr");
    nix::fcntl::fcntl(
        &front,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("let the child inherit the socket");
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = echo.accept().expect("accept");
        conn.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut head = [0u8; 16];
        conn.read_exact(&mut head).expect("HAProxy's header");
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        let mut rest = vec![0u8; len];
        conn.read_exact(&mut rest).expect("HAProxy's header");
        let header = [&head[..], &rest].concat();
        let _ = seen_tx.send(parse_v2(&header).source_port);
        let mut back = conn.try_clone().expect("clone");
        let _ = std::io::copy(&mut conn, &mut back);
    });
    let config = root.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 16\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend front\n  bind fd@{fd} accept-proxy\n  default_backend echo\n\
             backend echo\n  server echo {echo_addr} send-proxy-v2\n",
            fd = front.as_raw_fd(),
        ),
    )
    .expect("write haproxy.cfg");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _haproxy = Kill(
        Command::new("haproxy")
            .args(["-db", "-f", s(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );

    let mut server = server(
        root.path(),
        &["--allow", "127.0.0.1", "--proxy-protocol", "v2"],
    );
    let (_client, locals) = client(
        &tls_dir(root.path(), "cn"),
        server.tcp,
        &[("tcp", front_addr)],
        &[],
    );
    let mut conn = TcpStream::connect(locals[0]).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp_roundtrip(&mut conn, b"through haproxy");
    let line = server.proc.wait_for("tunnel open");
    let peer = field(&line, "peer");
    let source_port = seen_rx
        .recv_timeout(WAIT)
        .expect("the echo saw HAProxy's header");
    assert_eq!(
        source_port,
        peer.port(),
        "HAProxy read the client's address from our header"
    );
    drop(front);
}
