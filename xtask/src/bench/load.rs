//! The load generators and destinations of the side-by-side benchmarks.
//!
//! Everything here is plain std threads and blocking loopback sockets in the xtask process, and
//! the same code drives every contender: a contender only changes the port the generator
//! connects to (a local forwarder, or the destination itself for plain loopback).
//!
//! Destinations: a TCP sink (reads an 8-byte length, then that many bytes, then answers one
//! byte), a TCP echo and a UDP echo, one thread per TCP connection and one thread for UDP.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const IO_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 256 << 10;

/// The destinations every contender forwards to, running until the process exits.
pub(crate) struct Destinations {
    pub(crate) tcp_sink: u16,
    pub(crate) tcp_echo: u16,
    pub(crate) udp_echo: u16,
}

impl Destinations {
    pub(crate) fn start() -> Result<Destinations> {
        let sink = TcpListener::bind("127.0.0.1:0")?;
        let echo = TcpListener::bind("127.0.0.1:0")?;
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let ports = Destinations {
            tcp_sink: sink.local_addr()?.port(),
            tcp_echo: echo.local_addr()?.port(),
            udp_echo: udp.local_addr()?.port(),
        };
        thread::spawn(move || accept_loop(&sink, serve_sink));
        thread::spawn(move || accept_loop(&echo, serve_echo));
        thread::spawn(move || serve_udp_echo(&udp));
        Ok(ports)
    }
}

fn accept_loop(listener: &TcpListener, serve: fn(TcpStream) -> io::Result<()>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        // Thousands of idle connections are expected: keep the stacks small.
        let _ = thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || serve(conn));
    }
}

fn serve_sink(mut conn: TcpStream) -> io::Result<()> {
    let mut len = [0u8; 8];
    conn.read_exact(&mut len)?;
    let mut left = u64::from_be_bytes(len);
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left = left.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
    }
    conn.write_all(&[1])?;
    // Wait for the client to close first.
    let _ = conn.read(&mut buf);
    Ok(())
}

fn serve_echo(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return conn.shutdown(std::net::Shutdown::Write);
        }
        conn.write_all(&buf[..n])?;
    }
}

fn serve_udp_echo(socket: &UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

fn connect(port: u16) -> Result<TcpStream> {
    let conn = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Sends `len` bytes into the sink through `conn` in writes of `write` bytes, and waits for
/// its acknowledgement.
fn send_to_sink(conn: &mut TcpStream, len: u64, write: usize) -> Result<()> {
    let buf = vec![0x5au8; write.max(1)];
    conn.write_all(&len.to_be_bytes())?;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        conn.write_all(&buf[..n])?;
        left -= u64::try_from(n)?;
    }
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack)
        .context("waiting for the sink's acknowledgement")?;
    Ok(())
}

/// One byte through a first tunnel: whatever a contender sets up lazily is not measured.
fn warm_up_sink(port: u16) -> Result<()> {
    send_to_sink(&mut connect(port)?, 1, 1).context("warming up")
}

/// Megabytes (10^6 bytes) per second.
fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Scenario 1: one connection, `len` bytes one way into the sink in application writes of
/// `write` bytes; MB/s from the first byte written to the sink's acknowledgement.
pub(crate) fn bulk(port: u16, len: u64, write: usize) -> Result<f64> {
    warm_up_sink(port)?;
    let mut conn = connect(port)?;
    let started = Instant::now();
    send_to_sink(&mut conn, len, write)?;
    Ok(mb_per_s(len, started.elapsed()))
}

/// Scenario 2: `streams` connections at once, `len` bytes each; aggregate MB/s from the
/// moment all are connected to the last acknowledgement.
pub(crate) fn parallel(port: u16, streams: usize, len: u64) -> Result<f64> {
    warm_up_sink(port)?;
    let barrier = Arc::new(Barrier::new(streams + 1));
    let mut threads = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut conn = connect(port)?;
        let barrier = Arc::clone(&barrier);
        threads.push(thread::spawn(move || {
            barrier.wait();
            send_to_sink(&mut conn, len, CHUNK)
        }));
    }
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a stream panicked"))??;
    }
    Ok(mb_per_s(len * u64::try_from(streams)?, started.elapsed()))
}

/// Round-trip or setup times, sorted.
pub(crate) struct Times(Vec<Duration>);

impl Times {
    fn new(mut times: Vec<Duration>) -> Times {
        times.sort_unstable();
        Times(times)
    }

    /// The `p`-quantile (0..=1) in microseconds.
    pub(crate) fn quantile_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i.min(self.0.len() - 1)].as_secs_f64() * 1e6
    }
}

/// What a rate measurement found: successes per second and their times.
pub(crate) struct Rate {
    pub(crate) per_second: f64,
    pub(crate) times: Times,
    pub(crate) failures: usize,
}

impl Rate {
    /// Every attempt made, the unmeasured warm-up included.
    pub(crate) fn attempts(&self) -> usize {
        self.times.0.len() + self.failures + 1
    }
}

/// Runs `attempt` from `clients` threads until `duration` has passed; each successful attempt
/// returns its own time.
/// One attempt first, unmeasured (a warm-up).
fn rate(
    clients: usize,
    duration: Duration,
    attempt: impl Fn() -> Result<Duration> + Send + Sync + 'static,
) -> Result<Rate> {
    let warm = attempt().context("warming up")?;
    eprintln!(
        "bench: first attempt (warm-up, not measured): {:.1} ms",
        warm.as_secs_f64() * 1e3
    );
    let attempt = Arc::new(attempt);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut threads = Vec::with_capacity(clients);
    for _ in 0..clients {
        let attempt = Arc::clone(&attempt);
        let barrier = Arc::clone(&barrier);
        threads.push(thread::spawn(move || {
            barrier.wait();
            let deadline = Instant::now() + duration;
            let (mut times, mut failures) = (Vec::new(), 0usize);
            let mut first_error = None;
            while Instant::now() < deadline {
                match attempt() {
                    Ok(t) => times.push(t),
                    Err(e) => {
                        failures += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (times, failures, first_error)
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let (mut times, mut failures, mut first_error) = (Vec::new(), 0, None);
    for t in threads {
        let (t, f, e) = t.join().map_err(|_| anyhow::anyhow!("a client panicked"))?;
        times.extend(t);
        failures += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let elapsed = started.elapsed();
    if times.is_empty() {
        match first_error {
            Some(e) => return Err(e.context("no attempt succeeded")),
            None => bail!("no attempt succeeded"),
        }
    }
    Ok(Rate {
        per_second: times.len() as f64 / elapsed.as_secs_f64(),
        times: Times::new(times),
        failures,
    })
}

/// Scenario 3: new connections per second from `clients` threads, each connecting, writing
/// one byte and reading its echo; the time is connect to first byte back.
pub(crate) fn setup(port: u16, clients: usize, duration: Duration) -> Result<Rate> {
    rate(clients, duration, move || {
        let started = Instant::now();
        let mut conn = connect(port)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(&[7])?;
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte)?;
        Ok(started.elapsed())
    })
}

/// Scenario 4: 64-byte ping-pong through one connection to the echo; round-trip times.
pub(crate) fn latency(port: u16, round_trips: usize) -> Result<Times> {
    let mut conn = connect(port)?;
    let ping = [0x42u8; 64];
    let mut pong = [0u8; 64];
    let mut times = Vec::with_capacity(round_trips);
    for i in 0..round_trips + 200 {
        let started = Instant::now();
        conn.write_all(&ping)?;
        conn.read_exact(&mut pong)?;
        // The first round trips include the tunnel's setup: leave them out.
        if i >= 200 {
            times.push(started.elapsed());
        }
    }
    Ok(Times::new(times))
}

/// Scenario 5: opens `count` connections through to the echo (each one has carried one byte
/// both ways, so its tunnel is complete) and keeps them open.
pub(crate) fn idle_connections(port: u16, count: usize) -> Result<Vec<TcpStream>> {
    let workers = 8.min(count.max(1));
    let mut threads = Vec::new();
    for w in 0..workers {
        let share = count / workers + usize::from(w < count % workers);
        threads.push(thread::spawn(move || -> Result<Vec<TcpStream>> {
            let mut conns = Vec::with_capacity(share);
            for _ in 0..share {
                let mut conn = connect(port)?;
                conn.write_all(&[1])?;
                let mut byte = [0u8; 1];
                conn.read_exact(&mut byte)?;
                conns.push(conn);
            }
            Ok(conns)
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("an opener panicked"))??,
        );
    }
    Ok(all)
}

/// What a UDP run found: datagrams echoed per second, and the share lost.
pub(crate) struct UdpRate {
    pub(crate) per_second: f64,
    pub(crate) loss: f64,
}

/// Scenario 6: `sessions` UDP sockets (one tunnel each) send `size`-byte datagrams to the echo
/// for `duration`, each keeping `window` in flight; a window with nothing back for 20 ms
/// counts as lost and is refilled. The rate counts echoed datagrams (round trips).
pub(crate) fn udp(
    port: u16,
    sessions: usize,
    size: usize,
    window: usize,
    duration: Duration,
) -> Result<UdpRate> {
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut threads = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(("127.0.0.1", port))?;
        let barrier = Arc::clone(&barrier);
        threads.push(thread::spawn(move || -> Result<(u64, u64, u64)> {
            let mut buf = vec![0u8; 65536];
            let datagram = vec![0x17u8; size];
            // The first datagram opens the tunnel (handshake): wait until echoes come back.
            let warm = warm_up(&socket, &datagram, &mut buf);
            barrier.wait();
            warm?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let deadline = Instant::now() + duration;
            let (mut sent, mut received, mut in_flight) = (0u64, 0u64, 0usize);
            while Instant::now() < deadline {
                while in_flight < window {
                    socket.send(&datagram)?;
                    sent += 1;
                    in_flight += 1;
                }
                match socket.recv(&mut buf) {
                    Ok(_) => {
                        received += 1;
                        in_flight = in_flight.saturating_sub(1);
                    }
                    Err(e) if is_timeout(&e) => in_flight = 0,
                    Err(e) => return Err(e.into()),
                }
            }
            let in_time = received;
            // Late echoes are not lost, only late.
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            while socket.recv(&mut buf).is_ok() {
                received += 1;
            }
            Ok((sent, received, in_time))
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let (mut sent, mut received, mut in_time) = (0, 0, 0);
    for t in threads {
        let (s, r, i) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a session panicked"))??;
        sent += s;
        received += r.min(s);
        in_time += i;
    }
    let elapsed = started
        .elapsed()
        .min(duration)
        .max(Duration::from_millis(1));
    Ok(UdpRate {
        per_second: in_time as f64 / elapsed.as_secs_f64(),
        loss: if sent == 0 {
            0.0
        } else {
            1.0 - received as f64 / sent as f64
        },
    })
}

fn warm_up(socket: &UdpSocket, datagram: &[u8], buf: &mut [u8]) -> Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        socket.send(datagram)?;
        match socket.recv(buf) {
            Ok(_) => break,
            Err(e) if is_timeout(&e) && Instant::now() < deadline => continue,
            Err(e) => return Err(anyhow::Error::from(e).context("no echo through the tunnel")),
        }
    }
    // Drain the echoes of the retries.
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    while socket.recv(buf).is_ok() {}
    Ok(())
}

/// Scenario 7: new UDP sessions per second from `clients` threads; each binds a fresh socket
/// (a new source address, so the forwarder opens a new DTLS session), sends one byte and waits
/// for its echo, resending every 250 ms; the time is first send to echo.
pub(crate) fn udp_sessions(port: u16, clients: usize, duration: Duration) -> Result<Rate> {
    rate(clients, duration, move || {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(("127.0.0.1", port))?;
        socket.set_read_timeout(Some(Duration::from_millis(250)))?;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            socket.send(&[9])?;
            match socket.recv(&mut buf) {
                Ok(_) => return Ok(started.elapsed()),
                Err(e) if is_timeout(&e) && started.elapsed() < Duration::from_secs(5) => {}
                Err(e) => return Err(anyhow::Error::from(e).context("no echo")),
            }
        }
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
