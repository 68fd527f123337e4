//! `streamproxy demo`: the whole product on loopback, with no arguments and no files to keep.
//!
//! Throwaway certificates (generated in memory, written to a temporary directory that is
//! removed afterwards), a server, TCP and UDP echo destinations and client forwarders on ports
//! the system picks; traffic through both transports and both header versions, every byte
//! checked; a short report; exit status 0, or 1 naming what failed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use streamproxy::proto::Version;
use streamproxy::proxy::forward::{TcpForwarder, UdpForwarder};
use streamproxy::proxy::policy::Policy;
use streamproxy::proxy::server::{CertPaths, Server};
use streamproxy::proxy::settings::Settings;
use streamproxy::{dtls, proxy, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::certs;

/// Bytes sent each way through each TCP tunnel.
const TCP_BYTES: usize = 8 * 1024 * 1024;
/// Round trips measured per tunnel.
const ROUND_TRIPS: usize = 100;
/// Datagrams sent through each UDP tunnel.
const DATAGRAMS: usize = 300;
/// How long one step may take before the demo calls it failed.
const STEP: Duration = Duration::from_secs(10);

struct Outcome {
    bytes: usize,
    elapsed: Duration,
    rtt: Duration,
}

pub(crate) async fn run() -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("streamproxy-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut demo = Demo::start(dir.path()).await?;
    for version in Version::ALL {
        demo.tcp(version).await?;
    }
    for version in Version::ALL {
        demo.udp(version).await?;
    }
    demo.probes().await;
    let failures = demo.stop().await;
    if failures.is_empty() {
        println!(
            "all {} checks passed in {:.1} s",
            2 * Version::ALL.len() + 2,
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("demo failed: {}", failures.join("; "))
    }
}

/// A server, two echo destinations and client configurations, all on loopback.
struct Demo {
    loopback: SocketAddr,
    server_tcp: SocketAddr,
    server_udp: SocketAddr,
    echo_tcp: SocketAddr,
    echo_udp: SocketAddr,
    tls_config: tls::ClientConfig,
    dtls_config: dtls::ClientConfig,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    failures: Vec<String>,
}

impl Demo {
    /// Throwaway certificates in `dir`, a server allowing only 127.0.0.1, and the echoes.
    async fn start(dir: &std::path::Path) -> anyhow::Result<Demo> {
        let bundle = certs::generate(&[], 1)?;
        let paths = certs::write(dir, &bundle, false)?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let policy = Policy::new(["127.0.0.1".parse()?], [])?;
        let server = Server::builder(
            policy,
            CertPaths::new(&paths.server, &paths.server_key, &paths.ca),
        )
        .settings(Settings::default().drain_period(Duration::from_secs(2)))
        .bind(loopback)
        .await
        .context("starting the server")?;
        let (server_tcp, server_udp) = (server.tcp_addr(), server.udp_addr());
        let server_udp = server_udp.context("the server serves no UDP")?;
        let stop = CancellationToken::new();
        let tasks = vec![tokio::spawn(server.run(stop.clone().cancelled_owned()))];
        let tls_config = tls::ClientConfig::builder(
            &tls::CaCerts::from_pem_file(&paths.ca)?,
            &tls::Identity::from_pem_files(&paths.client, &paths.client_key)?,
        )
        .build()?;
        let dtls_config = dtls::ClientConfig::new(
            dtls::Identity::from_pem_files(&paths.client, &paths.client_key)?,
            dtls::CaCerts::from_pem_file(&paths.ca)?,
        );
        let demo = Demo {
            loopback,
            server_tcp,
            server_udp,
            echo_tcp: tcp_echo(loopback).await?,
            echo_udp: udp_echo(loopback).await?,
            tls_config,
            dtls_config,
            stop,
            tasks,
            failures: Vec::new(),
        };
        println!("streamproxy demo: everything on loopback, throwaway certificates");
        println!(
            "  server       {server_tcp} TLS, {server_udp} DTLS (mutual authentication, policy: allow 127.0.0.1)"
        );
        println!(
            "  destinations {} TCP echo, {} UDP echo",
            demo.echo_tcp, demo.echo_udp
        );
        Ok(demo)
    }

    /// A TCP forwarder speaking `version`, and bytes through it both ways.
    async fn tcp(&mut self, version: Version) -> anyhow::Result<()> {
        let name = format!("tcp {:<7}", version.as_str());
        let destination = self.echo_tcp.to_string().parse()?;
        let forwarder = TcpForwarder::bind(
            self.loopback,
            self.server_tcp,
            self.tls_config.clone(),
            destination,
        )
        .await?
        .header_version(version);
        let local = forwarder.local_addr();
        self.tasks.push(tokio::spawn(
            forwarder.run(self.stop.clone().cancelled_owned()),
        ));
        let echo = self.echo_tcp;
        let result = tcp_check(local).await.map(|o| {
            format!(
                "{local} -> {echo}: {} each way, every byte checked, {:.0} MiB/s, round trip {}",
                mib(o.bytes),
                o.bytes as f64 * 2.0 / 1_048_576.0 / o.elapsed.as_secs_f64(),
                ms(o.rtt)
            )
        });
        self.report(&name, result);
        Ok(())
    }

    /// A UDP forwarder speaking `version`, and datagrams through it both ways.
    async fn udp(&mut self, version: Version) -> anyhow::Result<()> {
        let name = format!("udp {:<7}", version.as_str());
        let destination = self.echo_udp.to_string().parse()?;
        let forwarder = UdpForwarder::bind(
            self.loopback,
            self.server_udp,
            self.dtls_config.clone(),
            destination,
        )
        .await?
        .header_version(version);
        let local = forwarder.local_addr();
        self.tasks.push(tokio::spawn(
            forwarder.run(self.stop.clone().cancelled_owned()),
        ));
        let echo = self.echo_udp;
        let result = udp_check(local).await.map(|o| {
            format!(
                "{local} -> {echo}: {DATAGRAMS} datagrams ({}) each way, every byte checked, {:.0} MiB/s, round trip {}",
                mib(o.bytes),
                o.bytes as f64 * 2.0 / 1_048_576.0 / o.elapsed.as_secs_f64(),
                ms(o.rtt)
            )
        });
        self.report(&name, result);
        Ok(())
    }

    /// The health checks of both transports.
    async fn probes(&mut self) {
        let tcp = proxy::tcp::health_check(self.server_tcp, &self.tls_config, STEP).await;
        self.report(
            "probe tcp  ",
            tcp.map(|()| "healthy".into()).map_err(Into::into),
        );
        let udp = proxy::udp::health_check(self.server_udp, &self.dtls_config, STEP).await;
        self.report(
            "probe udp  ",
            udp.map(|()| "healthy".into()).map_err(Into::into),
        );
    }

    fn report(&mut self, name: &str, result: anyhow::Result<String>) {
        match result {
            Ok(line) => println!("  {name} {line}"),
            Err(e) => {
                println!("  {name} FAILED: {e:#}");
                self.failures.push(format!("{}: {e:#}", name.trim_end()));
            }
        }
    }

    /// Stops the forwarders and the server; the failures seen.
    async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.failures
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// A deterministic pseudo-random byte stream.
fn pattern(offset: usize) -> u8 {
    let x = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ offset as u8
}

async fn tcp_echo(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .context("binding the TCP echo")?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(local)
}

async fn udp_echo(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind(addr)
        .await
        .context("binding the UDP echo")?;
    let local = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    Ok(local)
}

/// Round trips of small messages, then a bulk transfer both ways at once, every byte checked.
async fn tcp_check(local: SocketAddr) -> anyhow::Result<Outcome> {
    let mut conn = tokio::time::timeout(STEP, TcpStream::connect(local))
        .await
        .context("connecting timed out")?
        .context("connecting to the forwarder")?;
    conn.set_nodelay(true)?;
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    let mut buf = [0u8; 64];
    for i in 0..ROUND_TRIPS {
        let ping: Vec<u8> = (0..64).map(|k| pattern(i * 64 + k)).collect();
        let t = Instant::now();
        conn.write_all(&ping).await.context("sending a ping")?;
        tokio::time::timeout(STEP, conn.read_exact(&mut buf))
            .await
            .context("no echo in time")?
            .context("reading an echo")?;
        rtts.push(t.elapsed());
        ensure!(
            buf[..] == ping[..],
            "round trip {i}: the echo differs from what was sent"
        );
    }
    let (mut r, mut w) = conn.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < TCP_BYTES {
            let n = chunk.len().min(TCP_BYTES - sent);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            w.write_all(&chunk[..n]).await?;
            sent += n;
        }
        w.shutdown().await
    });
    let reader = async {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut chunk).await.context("reading the echo")?;
            if n == 0 {
                break;
            }
            if let Some(k) = (0..n).find(|&k| chunk[k] != pattern(got + k)) {
                bail!("byte {} of the echo differs from what was sent", got + k);
            }
            got += n;
        }
        ensure!(
            got == TCP_BYTES,
            "echo ended after {got} of {TCP_BYTES} bytes"
        );
        Ok(())
    };
    tokio::time::timeout(STEP * 3, reader)
        .await
        .context("the bulk transfer timed out")??;
    writer.await?.context("sending")?;
    Ok(Outcome {
        bytes: TCP_BYTES,
        elapsed: started.elapsed(),
        rtt: median(rtts),
    })
}

/// Datagrams of many sizes, one at a time, each echo checked byte for byte. A datagram lost
/// on the way (UDP may lose) is sent again, up to three times.
async fn udp_check(local: SocketAddr) -> anyhow::Result<Outcome> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    socket.connect(local).await?;
    let mut rtts = Vec::with_capacity(DATAGRAMS);
    let mut buf = vec![0u8; 65536];
    let mut bytes = 0;
    let started = Instant::now();
    for i in 0..DATAGRAMS {
        // Sizes from 4 bytes to 8 KiB; the first 4 bytes are the sequence number.
        let len = 4 + (i * 997) % 8100;
        let mut datagram: Vec<u8> = (0..len).map(|k| pattern(i * 8192 + k)).collect();
        datagram[..4].copy_from_slice(&(i as u32).to_be_bytes());
        let mut answered = false;
        for _attempt in 0..3 {
            let t = Instant::now();
            socket.send(&datagram).await.context("sending a datagram")?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await
                else {
                    break;
                };
                let n = received.context("receiving an echo")?;
                if n >= 4 && buf[..4] == datagram[..4] {
                    ensure!(
                        buf[..n] == datagram[..],
                        "datagram {i}: the echo differs from what was sent"
                    );
                    rtts.push(t.elapsed());
                    answered = true;
                    break;
                }
                // A late echo of an earlier datagram: skip it.
            }
            if answered {
                break;
            }
        }
        ensure!(
            answered,
            "datagram {i} ({len} bytes): no echo after 3 attempts"
        );
        bytes += len;
    }
    Ok(Outcome {
        bytes,
        elapsed: started.elapsed(),
        rtt: median(rtts),
    })
}
