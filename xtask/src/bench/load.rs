//! The load generators and destinations of the side-by-side benchmarks.
//!
//! Everything here is plain std threads and blocking loopback sockets in the xtask process, and
//! the same code drives every contender: a contender only changes the port the generator
//! connects to (a local forwarder, or the destination itself for plain loopback).
//!
//! Destinations: a TCP sink (reads an 8-byte length, then that many bytes, then answers one
//! byte), a TCP echo and a UDP echo, one thread per TCP connection and one thread for UDP.
//! Every UDP socket here (the echo's and the generator's) asks for 4 MiB buffers, so that a
//! datagram lost in a UDP scenario is lost by the contender, not by the bench.

use std::collections::VecDeque;
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
        let udp = udp_socket()?;
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

/// A UDP socket on 127.0.0.1 with 4 MiB receive and send buffers (the kernel doubles the
/// figure; `net.core.rmem_max` may cap it).
fn udp_socket() -> Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket.set_send_buffer_size(4 << 20)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(socket.into())
}

/// How the sessions of a [`udp_flow`] start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Each session is opened first (one echo back), then all send for a time.
    Established(Duration),
    /// All sessions start at once on fresh sockets, each sending this many datagrams with its
    /// window full from the first datagram on: the first datagram opens the session (a DTLS
    /// handshake, then the header), the rest arrive while it opens.
    Storm(u64),
}

/// The shape of a [`udp_flow`].
#[derive(Clone, Copy)]
pub(crate) struct Flow {
    pub(crate) sessions: usize,
    pub(crate) size: usize,
    pub(crate) window: usize,
    pub(crate) start: Start,
}

/// What a [`udp_flow`] found.
pub(crate) struct FlowResult {
    /// Distinct datagrams echoed in time per second, all sessions together.
    pub(crate) per_second: f64,
    /// Distinct datagrams echoed in time.
    pub(crate) echoed: u64,
    /// Datagrams sent and never echoed, late echoes included.
    pub(crate) lost: u64,
    pub(crate) sent: u64,
    /// Sessions that got no echo at all.
    pub(crate) silent: usize,
}

/// A datagram not echoed within this time stops counting as in flight, so the window makes
/// room for a new one (an echo that comes later is late, not lost). Before a session's first
/// echo (its handshake, whose first retransmission comes after 1 s) the time is longer.
const OPENING_WAIT: Duration = Duration::from_secs(3);
const ECHO_WAIT: Duration = Duration::from_millis(200);
/// How often a waiting session looks at its clock.
const POLL: Duration = Duration::from_millis(10);

/// UDP bursts with a loss checker: `sessions` sockets (one tunnel each) keep `window`
/// datagrams of `size` bytes in flight to the echo. Each datagram carries its sequence number,
/// so every echo is matched to what was sent: a duplicate is not counted twice and a datagram
/// is lost only if it never comes back (a late echo, after the window was refilled, is not
/// lost). The rate counts distinct echoes per second, from the start until the end of the
/// time (established) or the last echo (storm).
pub(crate) fn udp_flow(port: u16, flow: Flow) -> Result<FlowResult> {
    let Flow {
        sessions,
        size,
        window,
        start,
    } = flow;
    let size = size.max(8);
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut threads = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let socket = udp_socket()?;
        socket.connect(("127.0.0.1", port))?;
        let barrier = Arc::clone(&barrier);
        threads.push(thread::spawn(move || -> Result<SessionFlow> {
            let mut buf = vec![0u8; 65536];
            let mut datagram = vec![0x17u8; size];
            let warm = match start {
                Start::Established(_) => {
                    datagram[..8].copy_from_slice(&u64::MAX.to_be_bytes());
                    warm_up(&socket, &datagram, &mut buf)
                }
                Start::Storm(_) => Ok(()),
            };
            barrier.wait();
            warm?;
            session_flow(&socket, &mut datagram, &mut buf, window, start)
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let mut total = FlowResult {
        per_second: 0.0,
        echoed: 0,
        lost: 0,
        sent: 0,
        silent: 0,
    };
    let mut last_echo = started;
    for t in threads {
        let s = t
            .join()
            .map_err(|_| anyhow::anyhow!("a session panicked"))??;
        total.sent += s.sent;
        total.echoed += s.in_time;
        total.lost += s.sent - s.received;
        total.silent += usize::from(s.received == 0);
        if let Some(t) = s.last_echo {
            last_echo = last_echo.max(t);
        }
    }
    let elapsed = match start {
        Start::Established(d) => d,
        Start::Storm(_) => last_echo - started,
    }
    .max(Duration::from_millis(1));
    total.per_second = total.echoed as f64 / elapsed.as_secs_f64();
    Ok(total)
}

/// One session of a [`udp_flow`].
struct SessionFlow {
    sent: u64,
    /// Distinct echoes, late ones included.
    received: u64,
    /// Distinct echoes before the end of the time, or before the session gave up waiting.
    in_time: u64,
    last_echo: Option<Instant>,
}

fn session_flow(
    socket: &UdpSocket,
    datagram: &mut [u8],
    buf: &mut [u8],
    window: usize,
    start: Start,
) -> Result<SessionFlow> {
    let (deadline, count) = match start {
        Start::Established(d) => (Some(Instant::now() + d), u64::MAX),
        Start::Storm(n) => (None, n),
    };
    let mut states: Vec<Echo> = Vec::new();
    let mut outstanding: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut s = SessionFlow {
        sent: 0,
        received: 0,
        in_time: 0,
        last_echo: None,
    };
    let mut in_flight = 0usize;
    socket.set_read_timeout(Some(POLL))?;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let wait = if s.received == 0 {
            OPENING_WAIT
        } else {
            ECHO_WAIT
        };
        while let Some(&(seq, at)) = outstanding.front() {
            match states[seq] {
                Echo::InFlight if now.duration_since(at) >= wait => {
                    states[seq] = Echo::Overdue;
                    in_flight -= 1;
                }
                Echo::InFlight => break,
                Echo::Overdue | Echo::Back => {}
            }
            outstanding.pop_front();
        }
        if s.sent >= count && in_flight == 0 {
            break;
        }
        while in_flight < window && s.sent < count {
            datagram[..8].copy_from_slice(&s.sent.to_be_bytes());
            socket.send(datagram)?;
            outstanding.push_back((states.len(), Instant::now()));
            states.push(Echo::InFlight);
            s.sent += 1;
            in_flight += 1;
        }
        match socket.recv(buf) {
            Ok(n) => {
                if let Some(was) = record_echo(&buf[..n], &mut states) {
                    if was == Echo::InFlight {
                        in_flight -= 1;
                    }
                    s.received += 1;
                    s.in_time += 1;
                    s.last_echo = Some(Instant::now());
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Late echoes are not lost, only late.
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    while let Ok(n) = socket.recv(buf) {
        if record_echo(&buf[..n], &mut states).is_some() {
            s.received += 1;
        }
    }
    Ok(s)
}

/// Where a datagram of a [`udp_flow`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    InFlight,
    /// Not echoed in time: no longer counted in the window.
    Overdue,
    Back,
}

/// Marks the echo of a datagram; what the datagram was before, if this is the first echo of a
/// datagram sent.
fn record_echo(echo: &[u8], states: &mut [Echo]) -> Option<Echo> {
    let seq = u64::from_be_bytes(echo.get(..8)?.try_into().ok()?);
    let state = states.get_mut(usize::try_from(seq).ok()?)?;
    let was = *state;
    (was != Echo::Back).then(|| {
        *state = Echo::Back;
        was
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_counts_once_and_only_for_a_datagram_sent() {
        let mut states = vec![Echo::InFlight, Echo::Overdue];
        let echo = |seq: u64| {
            let mut d = seq.to_be_bytes().to_vec();
            d.extend_from_slice(&[0x17; 8]);
            d
        };
        assert!(record_echo(&echo(0), &mut states) == Some(Echo::InFlight));
        assert!(record_echo(&echo(0), &mut states).is_none());
        assert!(record_echo(&echo(1), &mut states) == Some(Echo::Overdue));
        assert!(record_echo(&echo(2), &mut states).is_none());
        assert!(record_echo(&echo(u64::MAX), &mut states).is_none());
        assert!(record_echo(&[1, 2], &mut states).is_none());
    }

    #[test]
    fn a_storm_through_plain_loopback_loses_nothing() {
        let dest = Destinations::start().unwrap();
        let flow = Flow {
            sessions: 4,
            size: 512,
            window: 16,
            start: Start::Storm(100),
        };
        let r = udp_flow(dest.udp_echo, flow).unwrap();
        assert_eq!((r.sent, r.lost, r.silent), (400, 0, 0));
        assert_eq!(r.echoed, 400);
    }
}
