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
