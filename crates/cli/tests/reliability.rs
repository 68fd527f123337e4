//! Faults against the real `streamproxy` binary, where the process matters: SIGTERM
//! mid-transfer, certificate rotation (SIGHUP) under load, a client that vanishes without a
//! FIN or close_notify (in a network namespace made here), keepalive on the sockets, a server
//! killed and restarted under a UDP source that never pauses, and a destination that never
//! reads, measured by the server process's own resident memory and its peak. The server's file
//! descriptors and memory are read from `/proc/PID`.
//!
//! Faults of the relay itself (a destination that resets, one that stops sending early, DTLS
//! through a lossy path) live in-process, in `tests/tests/faults.rs`.
//!
//! The namespace case needs root and `ip` (iproute2); without them it says so and passes,
//! unless `STREAMPROXY_REQUIRE_NETNS=1` (set by `cargo xtask ci`) makes that a failure.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use test_support::blocking::{tcp_echo, udp_echo, wait_until};
use test_support::payload;

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("server.toml");
    std::fs::write(&path, text).expect("write config");
    s(&path).to_owned()
}

/// Sends `data` through `addr` in paced chunks while a second thread reads the echo; counts
/// the tunnel in `opened` once its first byte came back; returns what came back.
fn paced_echo(addr: SocketAddr, data: &[u8], pause: Duration, opened: &AtomicU64) -> Vec<u8> {
    let chunk = 64 << 10;
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp_roundtrip(&mut conn, &data[..1]);
    opened.fetch_add(1, Ordering::SeqCst);
    let mut reader = conn.try_clone().expect("clone");
    let len = data.len() - 1;
    let read = thread::spawn(move || {
        let mut back = vec![0u8; len];
        reader.read_exact(&mut back).expect("read the echo");
        back
    });
    for part in data[1..].chunks(chunk) {
        conn.write_all(part).expect("write");
        thread::sleep(pause);
    }
    let mut back = data[..1].to_vec();
    back.extend(read.join().expect("reader"));
    conn.shutdown(Shutdown::Write).expect("shutdown");
    back
}

#[test]
fn sigterm_mid_transfer_lets_every_tunnel_finish_byte_exact() {
    let dir = tmp();
    certs(dir.path());
    // The client closes an idle UDP tunnel (close_notify) after 1 s, so the server's drain
    // can end before its 20 s once every tunnel and session is done.
    let config = write_config(
        dir.path(),
        "[server]\ndrain_period = \"20s\"\n[client]\nudp_idle_timeout = \"1s\"\n",
    );
    let mut server = server(dir.path(), &["--allow-all", "--config", &config]);
    let (_client, locals) = client(
        dir.path(),
        server.tcp,
        &[("tcp", tcp_echo()), ("udp", udp_echo())],
        &["--config", &config],
    );
    let (tcp, udp) = (locals[0], locals[1]);
    let opened = Arc::new(AtomicU64::new(0));
    let mut tunnels = Vec::new();
    for i in 0..8u64 {
        let opened = Arc::clone(&opened);
        tunnels.push(thread::spawn(move || {
            // 2 MiB in 64 KiB chunks 40 ms apart: about 1.3 s, most of it after SIGTERM.
            let data = payload(2 << 20, i);
            let back = paced_echo(tcp, &data, Duration::from_millis(40), &opened);
            assert!(back == data, "tunnel {i}: echo differs");
        }));
    }
    let mut sessions = Vec::new();
    for i in 0..4u64 {
        let opened = Arc::clone(&opened);
        sessions.push(thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket.connect(udp).expect("connect");
            udp_roundtrip(&socket, &payload(100, i));
            opened.fetch_add(1, Ordering::SeqCst);
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = vec![0u8; 2048];
            for n in 0..50u64 {
                let datagram = payload(1000, i * 1000 + n);
                socket.send(&datagram).expect("send");
                let got = socket.recv(&mut buf).expect("echo during the drain");
                assert_eq!(&buf[..got], &datagram[..], "session {i}, datagram {n}");
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    wait_until("every tunnel open", WAIT, || {
        opened.load(Ordering::SeqCst) == 12
    });
    let signalled = Instant::now();
    server.proc.signal("TERM");
    server.proc.wait_for("draining");
    // No new tunnel while draining: the listener is closed.
    assert_ne!(probe(dir.path(), server.tcp, false).status.code(), Some(0));
    for t in tunnels {
        t.join().expect("a TCP tunnel lost or altered bytes");
    }
    for u in sessions {
        u.join().expect("a UDP session lost or altered datagrams");
    }
    let status = server.proc.wait_exit();
    assert!(status.success(), "{status}");
    let stopped = signalled.elapsed();
    assert!(
        stopped < Duration::from_secs(15),
        "the server waited for the drain period, not for its tunnels: {stopped:?}"
    );
    eprintln!(
        "figures sigterm: 8 TCP tunnels x 2 MiB and 4 UDP sessions x 50 datagrams exact; server exited 0 after {stopped:?}"
    );
}

/// A new server key and certificate under the same CA, written over the server's files.
fn reissue_server_certificate(dir: &Path, serial: u32) {
    let tmp_key = dir.join("new-key.pem");
    let tmp_cert = dir.join("new-cert.pem");
    let csr = dir.join("new.csr");
    let ext = dir.join("new.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:godoxy.agent,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=godoxy.agent",
        "-keyout",
        s(&tmp_key),
        "-out",
        s(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        s(&csr),
        "-CA",
        s(&dir.join("ca.pem")),
        "-CAkey",
        s(&dir.join("ca").join("ca-key.pem")),
        "-set_serial",
        &serial.to_string(),
        "-days",
        "2",
        "-extfile",
        s(&ext),
        "-out",
        s(&tmp_cert),
    ]);
    std::fs::rename(&tmp_key, dir.join("server-key.pem")).expect("rename key");
    std::fs::rename(&tmp_cert, dir.join("server.pem")).expect("rename cert");
}

/// SHA-256 fingerprint of the certificate a fresh `openssl s_client` is shown by `server`.
fn presented_fingerprint(dir: &Path, server: SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {server} -servername godoxy.agent -cert {} -key {} \
             -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            s(&dir.join("client.pem")),
            s(&dir.join("client-key.pem")),
            s(&dir.join("ca.pem")),
        ))
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn file_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", s(cert)])
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn rotation_under_load_fails_no_tunnel_and_keeps_live_ones() {
    let dir = tmp();
    certs(dir.path());
    let mut server = server(dir.path(), &["--allow-all"]);
    // Idle UDP tunnels close after 1 s, so the server's sessions end after the load.
    let config = write_config(dir.path(), "[client]\nudp_idle_timeout = \"1s\"\n");
    let (_client, locals) = client(
        dir.path(),
        server.tcp,
        &[("tcp", tcp_echo()), ("udp", udp_echo())],
        &["--config", &config],
    );
    let (tcp, udp) = (locals[0], locals[1]);
    let fds_before = server.proc.open_fds();
    let mut live_tcp = TcpStream::connect(tcp).expect("connect");
    tcp_roundtrip(&mut live_tcp, b"before the first rotation");
    let live_udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    live_udp.connect(udp).expect("connect");
    udp_roundtrip(&live_udp, b"before the first rotation");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        workers.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut conn = TcpStream::connect(tcp).expect("connect");
                conn.set_read_timeout(Some(WAIT)).expect("timeout");
                let data = payload(1 + (n as usize * 997) % 16_384, w << 32 | n);
                tcp_roundtrip(&mut conn, &data);
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for w in 0..2u64 {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        workers.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // A new source port: a new DTLS session each time.
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                socket.connect(udp).expect("connect");
                udp_roundtrip(&socket, &payload(1200, 1 << 40 | w << 32 | n));
                udp_roundtrip(&socket, &payload(64, 1 << 41 | w << 32 | n));
                n += 1;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let rotations = 6;
    for r in 0..rotations {
        let before = done.load(Ordering::SeqCst);
        reissue_server_certificate(dir.path(), 1000 + r);
        server.proc.signal("HUP");
        server.proc.wait_for("reloaded");
        // Load goes on between rotations.
        wait_until("tunnels between rotations", WAIT, || {
            done.load(Ordering::SeqCst) >= before + 20
        });
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("a tunnel failed during rotation");
    }
    tcp_roundtrip(&mut live_tcp, b"after the last rotation");
    udp_roundtrip(&live_udp, b"after the last rotation");
    drop((live_tcp, live_udp));
    let fds_peak = server.proc.open_fds();
    wait_until("server descriptors back to the baseline", WAIT, || {
        server.proc.open_fds() <= fds_before
    });
    assert_eq!(
        presented_fingerprint(dir.path(), server.tcp),
        file_fingerprint(&dir.path().join("server.pem")),
        "new handshakes present the last certificate"
    );
    eprintln!(
        "figures rotation: {rotations} rotations, {} tunnels and sessions, 0 failed; live tunnel and session unaffected; server fds {fds_before} -> {fds_peak} -> {}",
        done.load(Ordering::SeqCst),
        server.proc.open_fds()
    );
}

#[test]
fn a_destination_that_never_reads_holds_the_writer_back_with_bounded_server_memory() {
    let dir = tmp();
    certs(dir.path());
    let server = server(dir.path(), &["--allow-all"]);
    let sink = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sink_addr = sink.local_addr().expect("addr");
    let (_client, locals) = client(dir.path(), server.tcp, &[("tcp", sink_addr)], &[]);
    // A first tunnel warms the server up (pools, TLS state) before the baseline.
    drop(TcpStream::connect(locals[0]).expect("connect"));
    let (warm, _) = sink.accept().expect("accept warm-up");
    drop(warm);
    let fds_before = server.proc.open_fds();
    let rss_before = server.proc.rss_kib();
    let hwm_before = server.proc.hwm_kib();

    let total = 64usize << 20;
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = Arc::clone(&written);
        let addr = locals[0];
        thread::spawn(move || {
            let data = payload(total, 99);
            let mut conn = TcpStream::connect(addr).expect("connect");
            for part in data.chunks(64 << 10) {
                conn.write_all(part).expect("write");
                written.fetch_add(part.len() as u64, Ordering::SeqCst);
            }
            conn.shutdown(Shutdown::Write).expect("shutdown");
            data
        })
    };
    let (mut destination, _) = sink.accept().expect("accept");
    wait_until("the upload starts", WAIT, || {
        written.load(Ordering::SeqCst) > 0
    });
    // The writer stalls: nothing more is accepted for half a second.
    let mut last = 0;
    let mut still_since = Instant::now();
    wait_until("the writer stalls", WAIT, || {
        let now = written.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        still_since.elapsed() > Duration::from_millis(500)
    });
    let stalled_at = written.load(Ordering::SeqCst);
    let rss_stalled = server.proc.rss_kib();
    assert!(
        (stalled_at as usize) < total,
        "the whole upload went through a destination that reads nothing"
    );
    assert!(
        rss_stalled.saturating_sub(rss_before) < 16 << 10,
        "server RSS {rss_before} -> {rss_stalled} KiB while stalled"
    );
    let mut got = Vec::with_capacity(total);
    destination.read_to_end(&mut got).expect("read");
    let data = writer.join().expect("writer");
    assert!(got == data, "the destination got other bytes");
    // The peak over the whole transfer, the stall and the catch-up at full speed included,
    // stays within the same bound (unless start-up had already peaked higher).
    let hwm_after = server.proc.hwm_kib();
    assert!(
        hwm_after <= hwm_before.max(rss_before + (16 << 10)),
        "server peak RSS {hwm_before} -> {hwm_after} KiB (RSS before {rss_before} KiB)"
    );
    drop(destination);
    wait_until("server descriptors back to the baseline", WAIT, || {
        server.proc.open_fds() <= fds_before
    });
    eprintln!(
        "figures never-reads: {} KiB accepted before the writer stalled; server RSS {rss_before} -> {rss_stalled} KiB, peak {hwm_before} -> {hwm_after} KiB; 64 MiB delivered exact; server fds {fds_before} before and after",
        stalled_at >> 10
    );
}

/// A TCP echo destination that sends, for each connection, when its peer ended it.
fn tcp_echo_reporting_close() -> (SocketAddr, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut back = conn.try_clone().expect("clone");
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = tx.send(Instant::now());
            });
        }
    });
    (addr, rx)
}

/// A network namespace with a veth pair to the root namespace, removed on drop.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
    host_if: String,
    ns_if: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            return Err("not root".into());
        }
        let id = std::process::id() % 100_000;
        // A /30 no interface uses yet, so that runs in parallel (other checkouts) do not
        // route into each other's namespaces.
        let used = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        let used = String::from_utf8_lossy(&used.stdout).into_owned();
        let subnet = (0..200)
            .map(|k| 16 + (id + k) % 200)
            .find(|s| !used.contains(&format!("10.213.{s}.")))
            .ok_or("no free 10.213.N.0/30")?;
        let ns = Netns {
            name: format!("spns{id}"),
            host_ip: format!("10.213.{subnet}.1"),
            ns_ip: format!("10.213.{subnet}.2"),
            host_if: format!("spv{id}a"),
            ns_if: format!("spv{id}b"),
        };
        // Left over by a killed run with the same process id: no live run can own them.
        let _ = ip(&["link", "del", &ns.host_if]);
        let _ = ip(&["netns", "del", &ns.name]);
        // From here on, a failure drops `ns`, which removes what was made.
        ns.setup()?;
        Ok(ns)
    }

    fn setup(&self) -> Result<(), String> {
        let ns = self;
        let host_if = ns.host_if.clone();
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if])?;
        inside(&["link", "set", &ns.ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Cuts the namespace off: its interface goes down, so nothing it sends (no FIN, no
    /// reset, no close_notify) reaches the root namespace, and nothing comes back.
    fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.ns_if,
            "down",
        ])
        .expect("cut the link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The namespace lives on while the vanished client's orphaned sockets retransmit into
        // the cut link; deleting the root end of the pair removes both ends now.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn a_client_that_vanishes_is_dropped_by_keepalive_and_the_idle_timeout() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            assert!(
                std::env::var_os("STREAMPROXY_REQUIRE_NETNS").is_none(),
                "network namespaces required but unavailable: {why}"
            );
            eprintln!("skipped: cannot make a network namespace ({why})");
            return;
        }
    };
    let dir = tmp();
    certs(dir.path());
    let config = write_config(
        dir.path(),
        "[server]\ntcp_keepalive_idle = \"1s\"\ntcp_keepalive_interval = \"1s\"\n\
         tcp_keepalive_retries = 2\nudp_idle_timeout = \"2s\"\n",
    );
    let server = server_on(
        dir.path(),
        &format!("{}:0", ns.host_ip),
        &["--allow-all", "--config", &config],
    );
    // The client runs inside the namespace; its forwards listen on the namespace's address,
    // which this process reaches over the veth pair.
    let (tcp_dest, tcp_closes) = tcp_echo_reporting_close();
    let udp_dest = udp_echo();
    let fds_before = server.proc.open_fds();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, BIN, "client"]);
    cmd.args(client_args(dir.path(), server.tcp));
    cmd.args(["--tcp", &format!("{}:0={tcp_dest}", ns.ns_ip)]);
    cmd.args(["--udp", &format!("{}:0={udp_dest}", ns.ns_ip)]);
    let mut client = Proc::spawn_command(cmd);
    let tcp = field(&client.wait_for("forwarding"), "local");
    let udp = field(&client.wait_for("forwarding"), "local");
    // The client's start-up health check holds a server descriptor until the server has
    // answered it; the baseline is the server before the client came.
    wait_until("the health check's descriptor freed", WAIT, || {
        server.proc.open_fds() <= fds_before
    });

    let mut conn = TcpStream::connect(tcp).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp_roundtrip(&mut conn, &payload(100_000, 1));
    let socket = UdpSocket::bind((ns.host_ip.as_str(), 0)).expect("bind");
    socket.connect(udp).expect("connect");
    udp_roundtrip(&socket, &payload(1000, 2));
    let fds_open = server.proc.open_fds();
    assert!(
        fds_open >= fds_before + 3,
        "tunnel and session hold descriptors: {fds_before} -> {fds_open}"
    );

    // The client vanishes: its link goes down first, so the kill below sends nothing that
    // arrives.
    ns.cut();
    let vanished = Instant::now();
    let _ = client.child.kill();
    let _ = client.child.wait();
    // Descriptors from the cut on: the first one freed, and all of them.
    let mut first_freed = None;
    wait_until("server descriptors back to the baseline", WAIT, || {
        let fds = server.proc.open_fds();
        if fds < fds_open && first_freed.is_none() {
            first_freed = Some(vanished.elapsed());
        }
        fds <= fds_before
    });
    let freed = vanished.elapsed();
    let first_freed = first_freed.unwrap_or(freed);
    // The destination's connection ends when keepalive gives the client up: 1 s idle, then
    // 2 probes 1 s apart, so about 3 s after the last packet. A FIN or reset would have done
    // it within milliseconds; without keepalive it would stay open (the echo never closes).
    let tcp_closed = tcp_closes
        .recv_timeout(Duration::from_secs(1))
        .expect("the destination connection closed with the tunnel")
        .saturating_duration_since(vanished);
    assert!(
        tcp_closed >= Duration::from_secs(2) && tcp_closed < Duration::from_secs(10),
        "destination connection closed {tcp_closed:?} after the link went down"
    );
    // The first to go is the UDP session, at its 2 s idle timeout: nothing went before.
    assert!(
        first_freed >= Duration::from_millis(1500),
        "a descriptor was freed {first_freed:?} after the link went down"
    );
    assert!(freed < Duration::from_secs(10), "freed after {freed:?}");
    eprintln!(
        "figures vanished client: after the client's link went down, first descriptor freed after {first_freed:?}, destination connection closed after {tcp_closed:?}, all freed after {freed:?}; server fds {fds_before} -> {fds_open} -> {}",
        server.proc.open_fds()
    );
}

/// An established IPv4 TCP socket of this network namespace, from `/proc/net/tcp`.
#[derive(Debug, Clone, Copy)]
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    /// The kernel's timer: 0 none, 1 retransmission, 2 keepalive, 4 zero-window probe.
    timer: u8,
    /// When the timer fires.
    expires_in: Duration,
}

fn established_tcp_sockets() -> Vec<TcpSocket> {
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let port = |addr: &str| {
        let hex = addr.rsplit(':').next().expect("address:port");
        u16::from_str_radix(hex, 16).expect("hex port")
    };
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"01") {
                return None;
            }
            let (timer, when) = f[5].split_once(':').expect("tr:tm->when");
            Some(TcpSocket {
                local_port: port(f[1]),
                remote_port: port(f[2]),
                timer: u8::from_str_radix(timer, 16).expect("timer"),
                expires_in: Duration::from_millis(
                    u64::from_str_radix(when, 16).expect("when") * 1000 / ticks,
                ),
            })
        })
        .collect()
}

/// The one established socket `pick` selects, once no retransmission is pending on it.
fn settled_socket(what: &str, pick: impl Fn(&TcpSocket) -> bool) -> TcpSocket {
    let mut found = None;
    wait_until(what, WAIT, || {
        let matching: Vec<TcpSocket> = established_tcp_sockets()
            .into_iter()
            .filter(&pick)
            .collect();
        found = match matching[..] {
            [one] if one.timer != 1 => Some(one),
            _ => None,
        };
        found.is_some()
    });
    found.expect("found")
}

#[test]
fn keepalive_is_set_on_the_tunnels_tcp_sockets_on_both_sides_and_off_when_configured() {
    let dir = tmp();
    certs(dir.path());
    for on in [true, false] {
        // Idle times no default has, so the timers show which file section was read.
        let config = write_config(
            dir.path(),
            &format!(
                "[server]\ntcp_keepalive = {on}\ntcp_keepalive_idle = \"37s\"\n\
                 [client]\ntcp_keepalive = {on}\ntcp_keepalive_idle = \"43s\"\n"
            ),
        );
        let server = server(dir.path(), &["--allow-all", "--config", &config]);
        let destination = tcp_echo();
        let (_client, locals) = client(
            dir.path(),
            server.tcp,
            &[("tcp", destination)],
            &["--config", &config],
        );
        let mut conn = TcpStream::connect(locals[0]).expect("connect");
        conn.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp_roundtrip(&mut conn, b"keepalive");

        let (server_port, destination_port) = (server.tcp.port(), destination.port());
        let accepted = settled_socket("the server's client connection", |s| {
            s.local_port == server_port
        });
        let dialed = settled_socket("the server's destination connection", |s| {
            s.remote_port == destination_port
        });
        let forwarder = settled_socket("the client's connection to the server", |s| {
            s.remote_port == server_port
        });
        for (name, socket) in [("client", accepted), ("destination", dialed)] {
            if on {
                assert_eq!(socket.timer, 2, "{name} connection: {socket:?}");
                assert!(
                    socket.expires_in > Duration::from_secs(27)
                        && socket.expires_in <= Duration::from_secs(37),
                    "{name} connection: first probe not 37 s after the last packet: {socket:?}"
                );
            } else {
                assert_eq!(socket.timer, 0, "{name} connection: {socket:?}");
            }
        }
        // The client's forwarder follows `[client]`.
        if on {
            assert_eq!(forwarder.timer, 2, "forwarder connection: {forwarder:?}");
            assert!(
                forwarder.expires_in > Duration::from_secs(33)
                    && forwarder.expires_in <= Duration::from_secs(43),
                "forwarder connection: first probe not 43 s after the last packet: {forwarder:?}"
            );
        } else {
            assert_eq!(forwarder.timer, 0, "forwarder connection: {forwarder:?}");
        }
        tcp_roundtrip(&mut conn, b"still relays");
    }
}

#[test]
fn a_server_killed_and_restarted_on_its_port_is_reached_again_over_udp_and_tcp() {
    let dir = tmp();
    certs(dir.path());
    let first = server(dir.path(), &["--allow-all"]);
    let listen = first.tcp.to_string();
    let config = write_config(dir.path(), "[client]\nudp_reply_timeout = \"1s\"\n");
    let (udp_target, tcp_target) = (udp_echo(), tcp_echo());
    let (mut client, locals) = client(
        dir.path(),
        first.tcp,
        &[("tcp", tcp_target), ("udp", udp_target)],
        &["--config", &config],
    );
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(locals[1]).expect("connect");
    udp_roundtrip(&socket, b"before the restart");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");

    // SIGKILL: no close_notify, the client's DTLS session is simply forgotten. The new
    // process binds the same port number.
    drop(first);
    let second = server_on(dir.path(), &listen, &["--allow-all"]);
    assert_eq!(second.tcp.to_string(), listen);

    // The source never pauses for as long as the idle timeout (120 s): only the reply
    // timeout brings its tunnel back.
    let mut buf = [0u8; 64];
    let mut sent = 0u32;
    let took = wait_until("an answer through the restarted server", WAIT, || {
        sent += 1;
        socket
            .send(format!("after {sent}").as_bytes())
            .expect("send");
        matches!(socket.recv(&mut buf), Ok(n) if buf[..n].starts_with(b"after "))
    });
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}: the first restarted answer cannot come before the reply timeout"
    );
    client.wait_for("replacing the tunnel");
    // New TCP tunnels reach the new process.
    let mut conn = TcpStream::connect(locals[0]).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp_roundtrip(&mut conn, &payload(10_000, 9));
}
