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
    let bundle = certs::generate(&[], 1)?;
    let paths = certs::write(dir.path(), &bundle, false)?;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();

    // The destinations may only be on loopback.
    let policy = Policy::new(["127.0.0.1".parse()?], [])?;
    let server = Server::builder(
        policy,
        CertPaths::new(&paths.server, &paths.server_key, &paths.ca),
    )
    .settings(Settings::default().drain_period(Duration::from_secs(2)))
    .bind(loopback)
    .await
    .context("starting the server")?;
    let server_tcp = server.tcp_addr();
    let server_udp = server.udp_addr().context("the server serves no UDP")?;
    let stop = CancellationToken::new();
    let server_task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let echo_tcp = tcp_echo(loopback).await?;
    let echo_udp = udp_echo(loopback).await?;

    let tls_config = tls::ClientConfig::builder(
        &tls::CaCerts::from_pem_file(&paths.ca)?,
        &tls::Identity::from_pem_files(&paths.client, &paths.client_key)?,
    )
    .build()?;
    let dtls_config = dtls::ClientConfig::new(
        dtls::Identity::from_pem_files(&paths.client, &paths.client_key)?,
        dtls::CaCerts::from_pem_file(&paths.ca)?,
    );

    println!("streamproxy demo: everything on loopback, throwaway certificates");
    println!(
        "  server       {server_tcp} TLS, {server_udp} DTLS (mutual authentication, policy: allow 127.0.0.1)"
    );
    println!("  destinations {echo_tcp} TCP echo, {echo_udp} UDP echo");

    let mut failures = Vec::new();
    let mut forwarders = Vec::new();
    for version in Version::ALL {
        let name = format!("tcp {:<7}", version.as_str());
        let forwarder = TcpForwarder::bind(
            loopback,
            server_tcp,
            tls_config.clone(),
            echo_tcp.to_string().parse()?,
        )
        .await?
        .header_version(version);
        let local = forwarder.local_addr();
        forwarders.push(tokio::spawn(forwarder.run(stop.clone().cancelled_owned())));
        match tcp_check(local).await {
            Ok(o) => println!(
                "  {name} {local} -> {echo_tcp}: {} each way, every byte checked, {:.0} MiB/s, round trip {}",
                mib(o.bytes),
                o.bytes as f64 * 2.0 / 1_048_576.0 / o.elapsed.as_secs_f64(),
                ms(o.rtt)
            ),
            Err(e) => {
                println!("  {name} FAILED: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    for version in Version::ALL {
        let name = format!("udp {:<7}", version.as_str());
        let forwarder = UdpForwarder::bind(
            loopback,
            server_udp,
            dtls_config.clone(),
            echo_udp.to_string().parse()?,
        )
        .await?
        .header_version(version);
        let local = forwarder.local_addr();
        forwarders.push(tokio::spawn(forwarder.run(stop.clone().cancelled_owned())));
        match udp_check(local).await {
            Ok(o) => println!(
                "  {name} {local} -> {echo_udp}: {DATAGRAMS} datagrams ({}) each way, every byte checked, {:.0} MiB/s, round trip {}",
                mib(o.bytes),
                o.bytes as f64 * 2.0 / 1_048_576.0 / o.elapsed.as_secs_f64(),
                ms(o.rtt)
            ),
            Err(e) => {
                println!("  {name} FAILED: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    for (name, result) in [
        (
            "probe tcp  ",
            proxy::tcp::health_check(server_tcp, &tls_config, STEP).await,
        ),
        (
            "probe udp  ",
            proxy::udp::health_check(server_udp, &dtls_config, STEP).await,
        ),
    ] {
        match result {
            Ok(()) => println!("  {name} healthy"),
            Err(e) => {
                println!("  {name} FAILED: {e}");
                failures.push(format!("{}: {e}", name.trim_end()));
            }
        }
    }

    stop.cancel();
    for f in forwarders {
        let _ = f.await;
    }
    let _ = server_task.await;
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
