//! What the process holds: open file descriptors, resident memory, the descriptor limit.

use std::fs;

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Open TCP and UDP sockets of this process: what tunnels hold (unlike the polling descriptors
/// and local sockets each test's runtime and harness create).
pub fn open_sockets() -> usize {
    let mut inet = std::collections::HashSet::new();
    for proto in ["tcp", "udp", "tcp6", "udp6"] {
        let table = fs::read_to_string(format!("/proc/net/{proto}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inet.insert(format!("socket:[{inode}]"));
            }
        }
    }
    fs::read_dir("/proc/self/fd").map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| {
                fs::read_link(e.path()).is_ok_and(|t| inet.contains(t.to_string_lossy().as_ref()))
            })
            .count()
    })
}

/// Resident set size now, in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

/// Peak resident set size of the process's life, in KiB (`VmHWM`).
pub fn peak_rss_kib() -> u64 {
    status_field("VmHWM:")
}

fn status_field(name: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Returns freed heap memory to the system, so that RSS measures what is still in use.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft limit of open files to `want` (or to the hard limit if lower); returns the
/// soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A count scaled by `STREAMPROXY_SCALE` (a factor, default 1) for longer local runs.
pub fn scaled(n: usize) -> usize {
    let factor: f64 = std::env::var("STREAMPROXY_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f: &f64| *f > 0.0)
        .unwrap_or(1.0);
    ((n as f64 * factor).round() as usize).max(1)
}

/// What each open descriptor refers to (`socket:[inode]`, a path, ...), for diagnostics.
pub fn fd_targets() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| {
            let mut target = fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                target.push_str(&socket_ends(inode));
            }
            format!("{}={target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v
}

/// ` udp 0100007F:1F90->0100007F:D431` for a socket inode found in `/proc/net/{tcp,udp}`.
fn socket_ends(inode: &str) -> String {
    for proto in ["tcp", "udp", "tcp6", "udp6"] {
        let table = fs::read_to_string(format!("/proc/net/{proto}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(9) == Some(&inode) {
                return format!(" {proto} {}->{}", cols[1], cols[2]);
            }
        }
    }
    String::new()
}
