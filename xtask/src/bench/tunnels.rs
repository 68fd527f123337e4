//! `cargo xtask bench tunnels`: the side-by-side scenarios.
//!
//! Every scenario runs against every contender that can carry it, several times, interleaved
//! (run 1 of every contender, then run 2, ...) so that a change in the machine's load hits all
//! of them alike; each contender gets fresh processes for every measurement. Each cell is the
//! median of its runs, and streamproxy's ratio to a contender is the ratio of the medians.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::contenders::{self, Contender, Stack, Transport};
use super::load::{self, Destinations};
use super::report::{self, Metric, Target};
use crate::cmd::project_root;
use crate::interop::Tools;

/// The sizes of one run: the full benchmark or the quick smoke run.
pub(crate) struct Sizes {
    pub(crate) runs: usize,
    bulk: u64,
    parallel: [(usize, u64); 2],
    setup_clients: usize,
    setup_time: Duration,
    round_trips: usize,
    idle_tunnels: usize,
    udp_time: Duration,
    udp_sessions: usize,
    storm_datagrams: u64,
    handshake_time: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                runs: 1,
                bulk: 16 << 20,
                parallel: [(8, 2 << 20), (32, 512 << 10)],
                setup_clients: 8,
                setup_time: Duration::from_millis(300),
                round_trips: 300,
                idle_tunnels: 100,
                udp_time: Duration::from_millis(300),
                udp_sessions: 32,
                storm_datagrams: 64,
                handshake_time: Duration::from_millis(500),
            }
        } else {
            Sizes {
                runs: 3,
                bulk: 1 << 30,
                parallel: [(8, 128 << 20), (32, 32 << 20)],
                setup_clients: 8,
                setup_time: Duration::from_secs(3),
                round_trips: 20_000,
                idle_tunnels: 5_000,
                udp_time: Duration::from_secs(2),
                udp_sessions: 32,
                storm_datagrams: 500,
                handshake_time: Duration::from_secs(3),
            }
        }
    }
}

const TCP: &[Contender] = &[
    Contender::Streamproxy,
    Contender::Go,
    Contender::Stunnel,
    Contender::HaproxyTls,
    Contender::HaproxySplice,
    Contender::Loopback,
];
/// The TCP contenders that run processes of their own (CPU and system calls are theirs).
const TCP_PROCS: &[Contender] = &[
    Contender::Streamproxy,
    Contender::Go,
    Contender::Stunnel,
    Contender::HaproxyTls,
    Contender::HaproxySplice,
];
/// The TCP contenders that terminate mutual TLS.
const TUNNELS: &[Contender] = &[
    Contender::Streamproxy,
    Contender::Go,
    Contender::Stunnel,
    Contender::HaproxyTls,
];

/// Metric ids of a TCP throughput scenario: rate, then its [`CostIds`].
type ThroughputIds = (&'static str, CostIds);

/// Application write sizes of the bulk scenarios, with their metric ids.
const BULK_WRITES: [(usize, ThroughputIds); 3] = [
    (
        16 << 10,
        (
            "tcp_bulk_16k",
            CostIds::with_kernel(
                "tcp_bulk_16k_cpu",
                "tcp_bulk_16k_kernel",
                "tcp_bulk_16k_syscalls",
            ),
        ),
    ),
    (
        64 << 10,
        (
            "tcp_bulk_64k",
            CostIds::with_kernel(
                "tcp_bulk_64k_cpu",
                "tcp_bulk_64k_kernel",
                "tcp_bulk_64k_syscalls",
            ),
        ),
    ),
    (
        256 << 10,
        (
            "tcp_bulk_256k",
            CostIds::with_kernel(
                "tcp_bulk_256k_cpu",
                "tcp_bulk_256k_kernel",
                "tcp_bulk_256k_syscalls",
            ),
        ),
    ),
];

/// Metric ids of the parallel scenarios, in the order of [`Sizes::parallel`].
const PARALLEL_IDS: [ThroughputIds; 2] = [
    (
        "tcp_parallel_8",
        CostIds::with_kernel(
            "tcp_parallel_8_cpu",
            "tcp_parallel_8_kernel",
            "tcp_parallel_8_syscalls",
        ),
    ),
    (
        "tcp_parallel_32",
        CostIds::with_kernel(
            "tcp_parallel_32_cpu",
            "tcp_parallel_32_kernel",
            "tcp_parallel_32_syscalls",
        ),
    ),
];
/// The UDP contenders: the two tunnels, the plain relay (no crypto) and plain loopback.
const UDP: &[Contender] = &[
    Contender::Streamproxy,
    Contender::Go,
    Contender::UdpRelay,
    Contender::Loopback,
];
/// The UDP contenders that run processes of their own.
const UDP_PROCS: &[Contender] = &[Contender::Streamproxy, Contender::Go, Contender::UdpRelay];
/// The contenders that open DTLS sessions (plain loopback as the generator's ceiling).
const DTLS_RATE: &[Contender] = &[Contender::Streamproxy, Contender::Go, Contender::Loopback];
const DTLS: &[Contender] = &[Contender::Streamproxy, Contender::Go];

/// One UDP flow scenario (scenario 6): its name for `--only`, its row label, the shape and the
/// metric ids.
struct UdpScenario {
    name: &'static str,
    /// Number of sessions; 0 means [`Sizes::udp_sessions`].
    sessions: usize,
    size: usize,
    window: usize,
    /// All sessions start at once on fresh sockets ([`load::Start::Storm`]).
    storm: bool,
    /// Whether refused sessions and kernel drops get rows of their own.
    many: bool,
    rate_target: Option<Target>,
    /// rate, lost, refused, drops, CPU, calls.
    ids: [&'static str; 6],
    /// The id of a row with the bench's own CPU per echoed datagram (load generator and echo,
    /// the same work for every contender), if the scenario has one.
    bench_cpu: Option<&'static str>,
}

const UDP_SCENARIOS: [UdpScenario; 6] = [
    UdpScenario {
        name: "UDP 64 B",
        sessions: 1,
        size: 64,
        window: 64,
        storm: false,
        many: false,
        rate_target: Some(Target::RatioAnd(3.0, Contender::UdpRelay, 1.0)),
        ids: [
            "udp_64_rate",
            "udp_64_lost",
            "udp_64_refused",
            "udp_64_drops",
            "udp_64_cpu",
            "udp_64_syscalls",
        ],
        bench_cpu: Some("udp_64_bench_cpu"),
    },
    UdpScenario {
        name: "UDP 1200 B",
        sessions: 1,
        size: 1200,
        window: 64,
        storm: false,
        many: false,
        rate_target: Some(Target::RatioAnd(3.0, Contender::UdpRelay, 1.0)),
        ids: [
            "udp_1200_rate",
            "udp_1200_lost",
            "udp_1200_refused",
            "udp_1200_drops",
            "udp_1200_cpu",
            "udp_1200_syscalls",
        ],
        bench_cpu: Some("udp_1200_bench_cpu"),
    },
    UdpScenario {
        name: "UDP sessions",
        sessions: 0,
        size: 1200,
        window: 2,
        storm: false,
        many: false,
        rate_target: Some(Target::Ratio(3.0)),
        ids: [
            "udp_sessions_rate",
            "udp_sessions_lost",
            "udp_sessions_refused",
            "udp_sessions_drops",
            "udp_sessions_cpu",
            "udp_sessions_syscalls",
        ],
        bench_cpu: None,
    },
    UdpScenario {
        name: "UDP burst 8",
        sessions: 8,
        size: 512,
        window: 64,
        storm: false,
        many: true,
        rate_target: Some(Target::Ratio(3.0)),
        ids: [
            "udp_burst_8_rate",
            "udp_burst_8_lost",
            "udp_burst_8_refused",
            "udp_burst_8_drops",
            "udp_burst_8_cpu",
            "udp_burst_8_syscalls",
        ],
        bench_cpu: None,
    },
    UdpScenario {
        name: "UDP burst 50",
        sessions: 50,
        size: 512,
        window: 64,
        storm: false,
        many: true,
        rate_target: None,
        ids: [
            "udp_burst_50_rate",
            "udp_burst_50_lost",
            "udp_burst_50_refused",
            "udp_burst_50_drops",
            "udp_burst_50_cpu",
            "udp_burst_50_syscalls",
        ],
        bench_cpu: Some("udp_burst_50_bench_cpu"),
    },
    UdpScenario {
        name: "UDP storm 50",
        sessions: 50,
        size: 512,
        window: 64,
        storm: true,
        many: true,
        rate_target: None,
        ids: [
            "udp_storm_rate",
            "udp_storm_lost",
            "udp_storm_refused",
            "udp_storm_drops",
            "udp_storm_cpu",
            "udp_storm_syscalls",
        ],
        bench_cpu: None,
    },
];

impl UdpScenario {
    fn sessions(&self, s: &Sizes) -> usize {
        if self.sessions == 0 {
            s.udp_sessions
        } else {
            self.sessions
        }
    }

    /// The shape in words, for the table.
    fn shape(&self, s: &Sizes) -> String {
        let sessions = self.sessions(s);
        let who = if self.storm {
            format!(
                "{sessions} new sessions at once, {} datagrams each",
                s.storm_datagrams
            )
        } else if sessions == 1 {
            "1 session".to_owned()
        } else {
            format!("{sessions} sessions")
        };
        format!("{who} × {} in flight × {} B", self.window, self.size)
    }

    fn flow(&self, s: &Sizes) -> load::Flow {
        load::Flow {
            sessions: self.sessions(s),
            size: self.size,
            window: self.window,
            start: if self.storm {
                load::Start::Storm(s.storm_datagrams)
            } else {
                load::Start::Established(s.udp_time)
            },
        }
    }

    fn metrics(&self, s: &Sizes) -> Vec<Metric> {
        let [rate, lost, refused, drops, cpu, calls] = self.ids;
        let shape = self.shape(s);
        let rate_label = if self.sessions(s) == 1 {
            "datagrams/s"
        } else {
            "aggregate datagrams/s"
        };
        let mut rate = Metric::new(rate, format!("6. UDP, {shape} ({rate_label})"), UDP);
        if let Some(target) = self.rate_target {
            rate = rate.target(target);
        }
        let mut lost = Metric::new(lost, format!("6. UDP, {shape}, datagrams lost"), UDP).loss();
        if self.many {
            lost = lost.target(Target::Zero);
        }
        let mut rows = vec![rate, lost];
        if self.many {
            rows.push(
                Metric::new(
                    refused,
                    format!("6. UDP, {shape}, sessions refused by the server"),
                    DTLS,
                )
                .loss()
                .target(Target::Zero),
            );
            rows.push(
                Metric::new(
                    drops,
                    format!("6. UDP, {shape}, kernel drops at the contender's sockets"),
                    UDP_PROCS,
                )
                .loss(),
            );
        }
        rows.push(
            Metric::new(
                cpu,
                format!("6. UDP, {shape}, CPU per echoed datagram, both sides (µs)"),
                UDP_PROCS,
            )
            .lower()
            .optional(),
        );
        rows.push(
            Metric::new(
                calls,
                format!("6. UDP, {shape}, system calls per echoed datagram, both sides"),
                UDP_PROCS,
            )
            .lower()
            .optional(),
        );
        if let Some(id) = self.bench_cpu {
            rows.push(
                Metric::new(
                    id,
                    format!(
                        "6. UDP, {shape}, the bench's own CPU per echoed datagram, generator + echo (µs)"
                    ),
                    UDP,
                )
                .lower(),
            );
        }
        rows
    }
}

/// The cost rows of a TCP throughput scenario titled `title`: CPU per GiB, its kernel part,
/// system calls per MiB, for the contenders that run processes of their own.
fn cost_rows(costs: CostIds, title: &str) -> Vec<Metric> {
    let mut rows = vec![
        Metric::new(
            costs.cpu,
            format!("{title}, CPU per GiB, both sides (s)"),
            TCP_PROCS,
        )
        .lower()
        .optional(),
    ];
    if let Some(kernel) = costs.kernel {
        rows.push(
            Metric::new(
                kernel,
                format!("{title}, of which in the kernel (s)"),
                TCP_PROCS,
            )
            .lower()
            .optional(),
        );
    }
    rows.push(
        Metric::new(
            costs.calls,
            format!("{title}, system calls per MiB, both sides"),
            TCP_PROCS,
        )
        .lower()
        .optional(),
    );
    rows
}

/// The rows of the table, in order.
fn metrics(s: &Sizes) -> Vec<Metric> {
    let mib = |b: u64| b >> 20;
    let size = |b: u64| {
        if b >= 1 << 30 {
            format!("{} GiB", b >> 30)
        } else if b >= 1 << 20 {
            format!("{} MiB", mib(b))
        } else {
            format!("{} KiB", b >> 10)
        }
    };
    let more = Target::Ratio;
    [].into_iter()
        .chain(BULK_WRITES.iter().flat_map(|&(write, (rate, costs))| {
            let shape = format!("{} one way in {} KiB writes", size(s.bulk), write >> 10);
            let mut rows = vec![
                Metric::new(rate, format!("1. TCP bulk, {shape} (MB/s)"), TCP)
                    .target(Target::RatioAnd(1.5, Contender::HaproxyTls, 1.2)),
            ];
            rows.extend(cost_rows(
                costs,
                &format!("1. TCP bulk, {} KiB writes", write >> 10),
            ));
            rows
        }))
        .chain(
            s.parallel
                .iter()
                .zip(PARALLEL_IDS)
                .flat_map(|(&(streams, each), (rate, costs))| {
                    let mut rows = vec![
                        Metric::new(
                            rate,
                            format!(
                                "2. TCP parallel, {streams} × {} (aggregate MB/s)",
                                size(each)
                            ),
                            TCP,
                        )
                        .target(Target::RatioAnd(
                            1.5,
                            Contender::HaproxyTls,
                            1.2,
                        )),
                    ];
                    rows.extend(cost_rows(
                        costs,
                        &format!("2. TCP parallel, {streams} tunnels"),
                    ));
                    rows
                }),
        )
        .chain([
            Metric::new(
                "tcp_setup_rate",
                format!("3. TCP setup, {} clients (tunnels/s)", s.setup_clients),
                TCP,
            )
            .target(more(2.0)),
            Metric::new(
                "tcp_setup_cpu",
                "3. TCP setup, CPU per tunnel, client + server side (ms)",
                TUNNELS,
            )
            .lower(),
            Metric::new(
                "tcp_setup_p50",
                "3. TCP setup, time to first byte p50 (ms)",
                TCP,
            )
            .lower(),
            Metric::new(
                "tcp_setup_p99",
                "3. TCP setup, time to first byte p99 (ms)",
                TCP,
            )
            .lower(),
            Metric::new(
                "tcp_rtt_p50",
                "4. TCP latency, 64 B round trip p50 (µs)",
                TCP,
            )
            .lower()
            .target(Target::NoWorse),
            Metric::new(
                "tcp_rtt_p99",
                "4. TCP latency, 64 B round trip p99 (µs)",
                TCP,
            )
            .lower()
            .target(Target::NoWorse),
            Metric::new(
                "memory_per_tunnel",
                format!(
                    "5. Server memory per idle tunnel, {} open (KiB)",
                    s.idle_tunnels
                ),
                TUNNELS,
            )
            .lower()
            .target(Target::RatioAtMost(1.0 / 3.0)),
        ])
        .chain(UDP_SCENARIOS.iter().flat_map(|u| u.metrics(s)))
        .chain([
            Metric::new(
                "dtls_handshake_rate",
                format!(
                    "7. DTLS handshakes, {} clients (sessions/s)",
                    s.setup_clients
                ),
                DTLS_RATE,
            )
            .target(more(2.0)),
            Metric::new(
                "dtls_handshake_cpu",
                "7. DTLS sessions, CPU per session, client + server side (ms)",
                DTLS,
            )
            .lower(),
            Metric::new(
                "dtls_handshake_p50",
                "7. DTLS session, time to first echo p50 (ms)",
                DTLS_RATE,
            )
            .lower(),
            Metric::new(
                "dtls_handshake_p99",
                "7. DTLS session, time to first echo p99 (ms)",
                DTLS_RATE,
            )
            .lower(),
        ])
        .collect()
}

/// Samples per metric and contender, and what failed.
#[derive(Default)]
pub(crate) struct Samples {
    pub(crate) values: HashMap<(&'static str, Contender), Vec<f64>>,
    pub(crate) errors: Vec<String>,
}

struct Bench<'a> {
    tools: &'a Tools,
    only: Option<&'a str>,
    work: PathBuf,
    sizes: &'a Sizes,
    samples: Samples,
}

impl Bench<'_> {
    /// Runs `measure` `runs` times against each of `contenders`, each time on fresh processes
    /// forwarding `transport` to `target`.
    fn scenario(
        &mut self,
        name: &str,
        contenders: &[Contender],
        transport: Transport,
        target: u16,
        measure: impl Fn(&Stack) -> Result<Vec<(&'static str, f64)>>,
    ) {
        if self.only.is_some_and(|only| !selected(name, only)) {
            return;
        }
        for run in 1..=self.sizes.runs {
            for &contender in contenders {
                let started = Instant::now();
                let result = start(self.tools, &self.work, contender, transport, target)
                    .and_then(|stack| measure(&stack));
                match result {
                    Ok(values) => {
                        let shown: Vec<String> = values
                            .iter()
                            .map(|(id, v)| format!("{id}={}", report::number(*v)))
                            .collect();
                        eprintln!(
                            "bench: {name}, run {run}, {}: {} ({:.1} s)",
                            contender.title(),
                            shown.join(" "),
                            started.elapsed().as_secs_f64()
                        );
                        for (id, v) in values {
                            self.samples
                                .values
                                .entry((id, contender))
                                .or_default()
                                .push(v);
                        }
                    }
                    Err(e) => {
                        let msg = format!("{name}, run {run}, {}: {e:#}", contender.title());
                        eprintln!("bench: FAILED {msg}");
                        self.samples.errors.push(msg);
                    }
                }
            }
        }
    }
}

/// Whether `--only TEXT` selects the scenario `name`: TEXT is one or more words separated by
/// commas, and a scenario runs when its name contains any of them (case ignored).
fn selected(name: &str, only: &str) -> bool {
    let name = name.to_lowercase();
    only.split(',')
        .map(|w| w.trim().to_lowercase())
        .any(|w| !w.is_empty() && name.contains(&w))
}

/// Starts a contender, retrying twice: a port picked free can be taken a moment later.
fn start(
    tools: &Tools,
    work: &Path,
    contender: Contender,
    transport: Transport,
    target: u16,
) -> Result<Stack> {
    let mut attempt = 1;
    loop {
        match contenders::start(tools, work, contender, transport, target) {
            Ok(stack) => return Ok(stack),
            Err(e) if attempt < 3 => {
                eprintln!("bench: starting {} again: {e:#}", contender.title());
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Metric ids of what a measurement cost the contender: CPU (and the kernel's part of it, when
/// the scenario reports it) and system calls.
#[derive(Clone, Copy)]
struct CostIds {
    cpu: &'static str,
    kernel: Option<&'static str>,
    calls: &'static str,
}

impl CostIds {
    const fn new(cpu: &'static str, calls: &'static str) -> Self {
        Self {
            cpu,
            kernel: None,
            calls,
        }
    }

    const fn with_kernel(cpu: &'static str, kernel: &'static str, calls: &'static str) -> Self {
        Self {
            cpu,
            kernel: Some(kernel),
            calls,
        }
    }
}

/// CPU time and system calls of a contender's processes over one measurement.
struct Counted {
    cpu: Option<contenders::CpuTime>,
    calls: Option<contenders::SyscallCount>,
}

impl Counted {
    fn start(st: &Stack) -> Result<Counted> {
        if st.server_pid.is_none() {
            return Ok(Counted {
                cpu: None,
                calls: None,
            });
        }
        let calls = st.count_syscalls();
        Ok(Counted {
            cpu: Some(st.cpu_time()?),
            calls,
        })
    }

    /// Adds CPU seconds per GiB and system calls per MiB moved (when they were counted).
    fn finish(
        self,
        st: &Stack,
        bytes: u64,
        ids: CostIds,
        values: &mut Vec<(&'static str, f64)>,
    ) -> Result<()> {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let mib = bytes as f64 / (1u64 << 20) as f64;
        self.finish_per(st, gib, mib, ids, values)
    }

    /// Adds CPU seconds per `cpu_units` and system calls per `call_units` (when counted).
    fn finish_per(
        self,
        st: &Stack,
        cpu_units: f64,
        call_units: f64,
        ids: CostIds,
        values: &mut Vec<(&'static str, f64)>,
    ) -> Result<()> {
        if let Some(before) = self.cpu {
            let after = st.cpu_time()?;
            values.push((ids.cpu, (after.total() - before.total()) / cpu_units));
            if let Some(id) = ids.kernel {
                values.push((id, (after.system - before.system) / cpu_units));
            }
        }
        if let Some(calls) = self.calls {
            match calls.stop() {
                Ok(n) => values.push((ids.calls, n / call_units)),
                Err(e) => eprintln!("bench: no system call count: {e:#}"),
            }
        }
        Ok(())
    }
}

/// One measurement of a UDP flow scenario: rate, loss, refused sessions, kernel drops, CPU
/// and system calls per echoed datagram.
fn udp_flow(st: &Stack, u: &UdpScenario, flow: load::Flow) -> Result<Vec<(&'static str, f64)>> {
    let [rate, lost, refused, drops, cpu, calls] = u.ids;
    let own_drops = contenders::udp_drops(&[std::process::id()]);
    let drops_before = st.udp_drops();
    let refused_before = st.refused_sessions();
    let counted = Counted::start(st)?;
    let own_cpu = contenders::cpu_seconds(std::process::id())?;
    let r = load::udp_flow(st.port, flow)?;
    let mut values = vec![(rate, r.per_second), (lost, r.lost as f64)];
    let echoed = r.echoed.max(1) as f64;
    if let Some(id) = u.bench_cpu {
        let own = contenders::cpu_seconds(std::process::id())? - own_cpu;
        values.push((id, own * 1e6 / echoed));
    }
    counted.finish_per(
        st,
        echoed / 1e6,
        echoed,
        CostIds::new(cpu, calls),
        &mut values,
    )?;
    if st.server_pid.is_some() {
        values.push((
            drops,
            contenders::drops_since(&drops_before, &st.udp_drops()) as f64,
        ));
    }
    if let Some(before) = refused_before {
        // The server logs a refusal as it happens; give the last lines a moment to arrive.
        std::thread::sleep(Duration::from_millis(100));
        let after = st.refused_sessions().unwrap_or(before);
        values.push((refused, after.saturating_sub(before) as f64));
    }
    let bench_drops =
        contenders::drops_since(&own_drops, &contenders::udp_drops(&[std::process::id()]));
    eprintln!(
        "bench: {}: sent {}, echoed in time {}, lost {}, sessions without any echo {}, \
         dropped at the bench's own sockets {bench_drops}",
        u.name, r.sent, r.echoed, r.lost, r.silent
    );
    Ok(values)
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

/// Runs every scenario and prints and writes the results.
pub(crate) fn run(quick: bool, only: Option<&str>) -> Result<()> {
    let sizes = Sizes::new(quick);
    crate::system::ensure_bench_deps()?;
    let tools = Tools::prepare("bench-tunnels", true)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    let work = target_dir.join("bench-tunnels");
    let dest = Destinations::start()?;
    let load_before = load_average();
    let started = Instant::now();
    let mut bench = Bench {
        tools: &tools,
        only,
        work: work.clone(),
        sizes: &sizes,
        samples: Samples::default(),
    };
    let s = &sizes;

    for &(write, (rate, costs)) in &BULK_WRITES {
        let name = format!("TCP bulk {} KiB", write >> 10);
        bench.scenario(&name, TCP, Transport::Tcp, dest.tcp_sink, |st| {
            let counted = Counted::start(st)?;
            let mb = load::bulk(st.port, s.bulk, write)?;
            let mut values = vec![(rate, mb)];
            counted.finish(st, s.bulk, costs, &mut values)?;
            Ok(values)
        });
    }
    for (&(streams, each), (rate, costs)) in s.parallel.iter().zip(PARALLEL_IDS) {
        let name = format!("TCP parallel {streams}");
        bench.scenario(&name, TCP, Transport::Tcp, dest.tcp_sink, |st| {
            let counted = Counted::start(st)?;
            let mb = load::parallel(st.port, streams, each)?;
            let mut values = vec![(rate, mb)];
            counted.finish(st, each * streams as u64, costs, &mut values)?;
            Ok(values)
        });
    }
    bench.scenario("TCP setup", TCP, Transport::Tcp, dest.tcp_echo, |st| {
        let cpu = st.cpu_seconds()?;
        let r = load::setup(st.port, s.setup_clients, s.setup_time)?;
        if r.failures > 0 {
            eprintln!("bench: TCP setup: {} attempts failed", r.failures);
        }
        let mut values = vec![
            ("tcp_setup_rate", r.per_second),
            ("tcp_setup_p50", ms(r.times.quantile_us(0.5))),
            ("tcp_setup_p99", ms(r.times.quantile_us(0.99))),
        ];
        if st.server_pid.is_some() {
            let per = (st.cpu_seconds()? - cpu) / r.attempts() as f64;
            values.push(("tcp_setup_cpu", per * 1e3));
        }
        Ok(values)
    });
    bench.scenario("TCP latency", TCP, Transport::Tcp, dest.tcp_echo, |st| {
        let t = load::latency(st.port, s.round_trips)?;
        Ok(vec![
            ("tcp_rtt_p50", t.quantile_us(0.5)),
            ("tcp_rtt_p99", t.quantile_us(0.99)),
        ])
    });
    bench.scenario("memory", TUNNELS, Transport::Tcp, dest.tcp_echo, |st| {
        let pid = st.server_pid.context("no server process")?;
        // Warm up: the first tunnels allocate pools and buffers that later ones reuse.
        drop(load::idle_connections(st.port, 16)?);
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(pid)?;
        let conns = load::idle_connections(st.port, s.idle_tunnels)?;
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(pid)?;
        drop(conns);
        let per = (after - before) / s.idle_tunnels as f64;
        Ok(vec![("memory_per_tunnel", per)])
    });
    for u in &UDP_SCENARIOS {
        let flow = u.flow(s);
        bench.scenario(u.name, UDP, Transport::Udp, dest.udp_echo, |st| {
            udp_flow(st, u, flow)
        });
    }
    bench.scenario(
        "DTLS handshakes",
        DTLS_RATE,
        Transport::Udp,
        dest.udp_echo,
        |st| {
            let cpu = st.cpu_seconds()?;
            let r = load::udp_sessions(st.port, s.setup_clients, s.handshake_time)?;
            if r.failures > 0 {
                eprintln!("bench: DTLS handshakes: {} attempts failed", r.failures);
            }
            let mut values = vec![
                ("dtls_handshake_rate", r.per_second),
                ("dtls_handshake_p50", ms(r.times.quantile_us(0.5))),
                ("dtls_handshake_p99", ms(r.times.quantile_us(0.99))),
            ];
            if st.server_pid.is_some() {
                let per = (st.cpu_seconds()? - cpu) / r.attempts() as f64;
                values.push(("dtls_handshake_cpu", per * 1e3));
            }
            Ok(values)
        },
    );

    let samples = bench.samples;
    let metrics = metrics(&sizes);
    let context = report::Context {
        quick,
        runs: sizes.runs,
        machine: machine(),
        load_before,
        load_after: load_average(),
        seconds: started.elapsed().as_secs_f64(),
        partial: only.is_some(),
    };
    let table = report::table(&metrics, &samples, &context);
    println!("{table}");
    let json = report::json(&metrics, &samples, &context);
    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let file = out_dir.join(if quick {
        "tunnels-quick.json"
    } else {
        "tunnels.json"
    });
    std::fs::write(&file, json).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("bench: results in {}", file.display());
    let missing = if only.is_some() {
        Vec::new()
    } else {
        report::missing_cells(&metrics, &samples)
    };
    if !samples.errors.is_empty() || !missing.is_empty() {
        bail!(
            "bench: {} measurements failed, {} cells without a figure:\n{}\n{}",
            samples.errors.len(),
            missing.len(),
            samples.errors.join("\n"),
            missing.join("\n")
        );
    }
    Ok(())
}

/// Resident memory of a process, in KiB (VmRSS in /proc/PID/status).
fn rss_kib(pid: u32) -> Result<f64> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?;
    Ok(kib)
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU model, cores, memory and kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {} GiB", (kib + (1 << 19)) >> 20)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores{mem}, Linux {}, {}",
        kernel.trim(),
        std::env::consts::ARCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_by_any_word() {
        assert!(selected("UDP burst 50", "udp"));
        assert!(selected("UDP storm 50", "burst, Storm"));
        assert!(selected("DTLS handshakes", "udp,dtls"));
        assert!(!selected("TCP bulk 16 KiB", "udp,dtls"));
        assert!(!selected("TCP bulk 16 KiB", ","));
    }

    #[test]
    fn udp_scenario_ids_are_unique() {
        let s = Sizes::new(true);
        let mut ids: Vec<&str> = metrics(&s).iter().map(|m| m.id).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
