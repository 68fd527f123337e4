//! Waiting for the signals that stop the process.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, registered up front so that neither is missed.
pub(crate) struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    pub(crate) fn register() -> anyhow::Result<Stop> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Returns the name of the first stop signal received.
    pub(crate) async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    /// After the first stop signal, while live tunnels drain: a second one ends the process
    /// at once (what an operator who presses Ctrl-C twice means), saying so, with the status
    /// a shell gives a process killed by that signal (130 for SIGINT, 143 for SIGTERM).
    pub(crate) fn exit_on_next(mut self) {
        tokio::spawn(async move {
            let name = self.wait().await;
            tracing::warn!(
                signal = name,
                "second stop signal: exiting now without waiting for live tunnels"
            );
            std::process::exit(exit_code(name));
        });
    }
}

fn exit_code(signal: &str) -> i32 {
    match signal {
        "SIGINT" => 128 + 2,
        _ => 128 + 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_shells_for_a_killed_process() {
        assert_eq!(exit_code("SIGINT"), 130);
        assert_eq!(exit_code("SIGTERM"), 143);
    }
}
