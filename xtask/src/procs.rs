//! Child processes for interop and benchmarks: started with their output collected line by
//! line, waited on for a readiness line, and killed when dropped.

use std::io::Read;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child process; killed on drop. Its stdout and stderr are collected as bytes.
pub(crate) struct Proc {
    name: String,
    child: Child,
    output: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr captured and no stdin.
    pub(crate) fn start(name: &str, cmd: &mut Command) -> Result<Proc> {
        cmd.stdin(Stdio::null());
        Proc::spawn(name, cmd)
    }

    /// Starts `cmd` with stdout and stderr captured and a pipe for stdin.
    pub(crate) fn start_with_stdin(name: &str, cmd: &mut Command) -> Result<(Proc, ChildStdin)> {
        cmd.stdin(Stdio::piped());
        let mut proc = Proc::spawn(name, cmd)?;
        let stdin = proc.child.stdin.take().context("no stdin pipe")?;
        Ok((proc, stdin))
    }

    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let output = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        if let Some(out) = child.stdout.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || collect(out, &output));
        }
        if let Some(err) = child.stderr.take() {
            let output = Arc::clone(&output);
            std::thread::spawn(move || collect(err, &output));
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            output,
        })
    }

    /// Waits until `pick` finds something in the output so far, and returns it.
    pub(crate) fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.output;
        let mut out = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("output lock poisoned"))?;
        loop {
            if let Some(found) = pick(&out) {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: nothing expected within {timeout:?}; output:\n{}",
                    self.name,
                    String::from_utf8_lossy(&out)
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{}: exited ({status}) before producing the expected output:\n{}",
                    self.name,
                    String::from_utf8_lossy(&out)
                );
            }
            out = cond
                .wait_timeout(out, left.min(Duration::from_millis(100)))
                .map_err(|_| anyhow::anyhow!("output lock poisoned"))?
                .0;
        }
    }

    /// Waits for a line of output matching `pick`.
    pub(crate) fn wait_for_line<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        self.wait_for(timeout, |out| {
            String::from_utf8_lossy(out).lines().find_map(&mut pick)
        })
    }

    /// The process id (to read its memory use from /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub(crate) fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The output so far, as text.
    pub(crate) fn output(&self) -> String {
        let (lock, _) = &*self.output;
        lock.lock()
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the process to exit; returns whether it succeeded, and its output.
    pub(crate) fn finish(mut self, timeout: Duration) -> Result<(bool, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the readers drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return Ok((status.success(), self.output()));
            }
            if Instant::now() >= deadline {
                bail!("{}: still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut stream: impl Read, output: &(Mutex<Vec<u8>>, Condvar)) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut out) = output.0.lock() {
                    out.extend_from_slice(&buf[..n]);
                }
                output.1.notify_all();
            }
        }
    }
}

/// The first `HOST:PORT` with a non-zero port in `line` whose host is `host`.
pub(crate) fn find_port(line: &str, host: &str) -> Option<u16> {
    let mut rest = line;
    while let Some(i) = rest.find(host) {
        let after = &rest[i + host.len()..];
        if let Some(digits) = after.strip_prefix(':') {
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            if let Ok(port) = digits[..end].parse::<u16>() {
                if port != 0 {
                    return Some(port);
                }
            }
        }
        rest = after;
    }
    None
}

/// A port that was free a moment ago (bound and released).
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    // Also free for UDP: the forwards and servers use both.
    drop(l);
    let u = std::net::UdpSocket::bind(("127.0.0.1", port));
    match u {
        Ok(_) => Ok(port),
        Err(_) => free_port(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_ports_in_log_lines() {
        assert_eq!(
            super::find_port(
                "listening tcp=127.0.0.1:4431 udp=127.0.0.1:4431",
                "127.0.0.1"
            ),
            Some(4431)
        );
        assert_eq!(
            super::find_port("bind 127.0.0.1:0 then 127.0.0.1:80", "127.0.0.1"),
            Some(80)
        );
        assert_eq!(super::find_port("nothing", "127.0.0.1"), None);
    }
}
