//! The server's counters, read by the STATS intent and the stress tool.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::{ErrorCode, Fields};

/// Counters, all monotonic except `active` and `queued`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Requests answered `OK` through to their result.
    pub served: AtomicU64,
    /// Requests answered `busy`.
    pub busy: AtomicU64,
    /// Requests answered `timeout`.
    pub timeouts: AtomicU64,
    /// Requests answered `bad-request`.
    pub bad_requests: AtomicU64,
    /// Requests answered `too-large`.
    pub too_large: AtomicU64,
    /// Requests answered `unauthorized`.
    pub unauthorized: AtomicU64,
    /// Requests answered `unsupported-language`.
    pub unsupported: AtomicU64,
    /// Requests answered `unavailable`.
    pub unavailable: AtomicU64,
    /// Requests answered `internal`.
    pub internal: AtomicU64,
    /// Connections that closed before sending a whole request.
    pub dropped: AtomicU64,
    /// Accept calls that failed (out of file descriptors and the like).
    pub accept_errors: AtomicU64,
    /// Jobs the client cancelled by going away.
    pub cancelled: AtomicU64,
    /// Jobs running now.
    pub active: AtomicU64,
    /// Highest number of jobs running at once.
    pub peak_active: AtomicU64,
    /// Fork model: child processes alive now.
    pub children: AtomicU64,
    /// Fork model: most child processes alive at once.
    pub peak_children: AtomicU64,
    /// Fork model: the largest peak resident memory of any child that has exited, in KiB.
    pub peak_child_rss_kib: AtomicU64,
}

impl Stats {
    /// Counts an error answer.
    pub fn count_error(&self, code: ErrorCode) {
        let counter = match code {
            ErrorCode::BadRequest => &self.bad_requests,
            ErrorCode::Unauthorized => &self.unauthorized,
            ErrorCode::UnsupportedLanguage => &self.unsupported,
            ErrorCode::TooLarge => &self.too_large,
            ErrorCode::Busy => &self.busy,
            ErrorCode::Timeout => &self.timeouts,
            ErrorCode::Unavailable => &self.unavailable,
            ErrorCode::Internal => &self.internal,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a job as started; returns a guard that marks it ended.
    pub fn job_started(&self) -> ActiveGuard<'_> {
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_active.fetch_max(now, Ordering::Relaxed);
        ActiveGuard { stats: self }
    }

    /// The counters as `key: value` fields.
    pub fn to_fields(&self) -> Fields {
        let mut fields = Fields::new();
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        fields
            .push("accepted", get(&self.accepted))
            .push("served", get(&self.served))
            .push("busy", get(&self.busy))
            .push("timeouts", get(&self.timeouts))
            .push("bad-requests", get(&self.bad_requests))
            .push("too-large", get(&self.too_large))
            .push("unauthorized", get(&self.unauthorized))
            .push("unsupported-language", get(&self.unsupported))
            .push("unavailable", get(&self.unavailable))
            .push("internal", get(&self.internal))
            .push("dropped", get(&self.dropped))
            .push("accept-errors", get(&self.accept_errors))
            .push("cancelled", get(&self.cancelled))
            .push("active", get(&self.active))
            .push("peak-active", get(&self.peak_active));
        fields
    }
}

/// Decrements `active` when dropped.
#[derive(Debug)]
pub struct ActiveGuard<'a> {
    stats: &'a Stats,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `/proc/PID/status` says about a process's memory and threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStatus {
    /// Peak resident memory (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// Threads now (`Threads`).
    pub threads: u64,
}

impl ProcessStatus {
    /// Reads the status of process `pid`; zeros when it cannot be read (not Linux, process gone).
    pub fn read(pid: u32) -> ProcessStatus {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|text| ProcessStatus::parse(&text))
            .unwrap_or_default()
    }

    /// Parses the text of a `/proc/PID/status` file.
    pub fn parse(text: &str) -> ProcessStatus {
        let mut status = ProcessStatus::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let number = || {
                value
                    .split_whitespace()
                    .next()
                    .and_then(|word| word.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match key {
                "VmHWM" => status.peak_rss_kib = number(),
                "Threads" => status.threads = number(),
                _ => {}
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_status_parses_peak_rss_and_threads() {
        let text = "Name:\tkiln\nVmPeak:\t  20000 kB\nVmHWM:\t    7344 kB\nThreads:\t5\n";
        assert_eq!(
            ProcessStatus::parse(text),
            ProcessStatus {
                peak_rss_kib: 7344,
                threads: 5
            }
        );
        let own = ProcessStatus::read(std::process::id());
        assert!(own.peak_rss_kib > 0, "{own:?}");
        assert!(own.threads >= 1, "{own:?}");
    }
}
