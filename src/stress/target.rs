//! The servers under test: `kiln --server 127.0.0.1:0 --model ...` started as child processes (so
//! each step measures a fresh process, its own peak memory and threads), and the STATS counters read
//! before and after a step. `stress/mod.rs` drives them; `driver.rs` loads them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::{Client, Event, JobSpec};
use crate::protocol::{Fields, Intent};
use crate::server::ServerModel;

/// A server running as a child process; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// Kept open so the server's later lines do not meet a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl ServerProcess {
    /// Starts `exe --server 127.0.0.1:0 --model MODEL EXTRA...` and waits for its address.
    ///
    /// # Errors
    /// If it cannot start or does not say where it listens.
    pub fn start(exe: &Path, model: ServerModel, extra: &[String]) -> Result<ServerProcess> {
        let mut child = Command::new(exe)
            .args(["--server", "127.0.0.1:0", "--model", model.as_str()])
            .args(extra)
            // One log line per job would measure the terminal, not the server.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the server {}", exe.display()))?;
        let Some(stdout) = child.stdout.take() else {
            bail!("the server's output is not readable");
        };
        let mut stdout = BufReader::new(stdout);
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() && matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
            addr = line
                .trim()
                .strip_prefix("Kiln server listening on ")
                .and_then(|addr| addr.parse::<SocketAddr>().ok());
            line.clear();
        }
        let Some(addr) = addr else {
            let status = child.wait().ok();
            bail!(
                "the {} server did not start (exit status {status:?})",
                model.as_str()
            );
        };
        Ok(ServerProcess {
            child,
            addr,
            _stdout: stdout,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it: SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(mut self, grace: Duration) {
        self.stop_now(grace);
    }

    fn stop_now(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: a signal to our own child, which we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop_now(Duration::from_secs(5));
        }
    }
}

/// Asks a server for its counters.
///
/// # Errors
/// If the server does not answer STATS.
pub fn fetch_stats(addr: SocketAddr, token: Option<&str>) -> Result<Fields> {
    let client = Client::new(addr.to_string(), token.map(str::to_owned))
        .with_read_timeout(Some(Duration::from_secs(30)));
    let response = client
        .start(&JobSpec::simple(Intent::Stats))
        .with_context(|| format!("STATS to {addr}"))?;
    for event in response {
        if let Event::Stats(fields) = event.with_context(|| format!("STATS from {addr}"))? {
            return Ok(fields);
        }
    }
    bail!("{addr} answered STATS without a stats frame")
}

/// What the server counted during a step, and how big it got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerDelta {
    /// Connections accepted (the STATS requests of the step excluded).
    pub accepted: u64,
    /// Requests served (the STATS requests excluded).
    pub served: u64,
    /// Answered `busy`.
    pub busy: u64,
    /// Answered `timeout`.
    pub timeouts: u64,
    /// Answered another error (bad request, too large, unauthorized, unsupported, unavailable,
    /// internal).
    pub errors: u64,
    /// Closed before a whole request, or cancelled by the client going away.
    pub dropped: u64,
    /// Peak resident memory of the server process, in KiB.
    pub peak_rss_kib: u64,
    /// Threads of the server process at the end.
    pub threads: u64,
    /// Fork model: most children alive at once.
    pub peak_children: u64,
    /// Fork model: largest peak resident memory of a child, in KiB.
    pub peak_child_rss_kib: u64,
}

impl ServerDelta {
    /// The difference between two STATS answers of the same server, `after` being the last of
    /// `after_requests` STATS requests made after the step.
    pub fn between(before: &Fields, after: &Fields, after_requests: u64) -> ServerDelta {
        let diff = |key: &str| {
            let get = |fields: &Fields| fields.get_parsed::<u64>(key).unwrap_or(0);
            get(after).saturating_sub(get(before))
        };
        let now = |key: &str| after.get_parsed::<u64>(key).unwrap_or(0);
        let errors = [
            "bad-requests",
            "too-large",
            "unauthorized",
            "unsupported-language",
            "unavailable",
            "internal",
        ]
        .iter()
        .map(|key| diff(key))
        .sum();
        ServerDelta {
            // Each "after" STATS was accepted before it counted; the "before" one and all but the
            // last "after" one were served after they counted.
            accepted: diff("accepted").saturating_sub(after_requests),
            served: diff("served").saturating_sub(after_requests),
            busy: diff("busy"),
            timeouts: diff("timeouts"),
            errors,
            dropped: diff("dropped") + diff("cancelled"),
            peak_rss_kib: now("peak-rss-kib"),
            threads: now("threads"),
            peak_children: now("peak-children"),
            peak_child_rss_kib: now("peak-child-rss-kib"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_leaves_out_the_stats_requests() {
        let mut before = Fields::new();
        before
            .push("accepted", 10)
            .push("served", 9)
            .push("busy", 1);
        let mut after = Fields::new();
        after
            .push("accepted", 111)
            .push("served", 110)
            .push("busy", 1)
            .push("internal", 2)
            .push("peak-rss-kib", 5000)
            .push("threads", 4);
        let delta = ServerDelta::between(&before, &after, 1);
        assert_eq!(delta.accepted, 100);
        assert_eq!(delta.served, 100);
        assert_eq!(delta.busy, 0);
        assert_eq!(delta.errors, 2);
        assert_eq!(delta.peak_rss_kib, 5000);
        assert_eq!(delta.threads, 4);
    }
}
