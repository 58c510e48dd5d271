//! The fork model's half of the reader: when a request is whole, the loop forks a child that runs
//! it with the executor and exits; the loop reaps children as they exit (a SIGCHLD pipe wakes it)
//! and answers `busy` once `max_children` are alive. The public entry point is `server::fork`.
//!
//! Forking is only sound because the fork server's process has exactly one thread, this loop's:
//! the child gets a copy of the whole program state, locks included, and can use it freely.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::ForkResult;

use super::{Conn, EventLoop};
use crate::protocol::{ErrorCode, Request, RequestParser, Status};
use crate::server::queue::QueuedJob;
use crate::server::worker;

/// Exit code of a child whose client got the whole answer.
const EXIT_SERVED: i32 = 0;
/// Exit code of a child whose client went away.
const EXIT_CANCELLED: i32 = 1;
/// Exit code of a child that could not even start its job, or panicked.
const EXIT_FAILED: i32 = 2;

/// The live children and the pipe SIGCHLD writes to.
pub struct Children {
    live: HashSet<i32>,
    max: usize,
    wakeup: UnixStream,
    signal: signal_hook::SigId,
}

impl Children {
    /// Installs the SIGCHLD handler; at most `max` children live at once.
    ///
    /// # Errors
    /// If the pipe or the handler cannot be set up.
    pub fn new(max: usize) -> io::Result<Children> {
        let (wakeup, signal_end) = UnixStream::pair()?;
        wakeup.set_nonblocking(true)?;
        signal_end.set_nonblocking(true)?;
        let signal = signal_hook::low_level::pipe::register(libc::SIGCHLD, signal_end)?;
        Ok(Children {
            live: HashSet::new(),
            max: max.max(1),
            wakeup,
            signal,
        })
    }

    /// The descriptor that turns readable when a child exits.
    pub fn wakeup_fd(&self) -> RawFd {
        self.wakeup.as_raw_fd()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.signal);
    }
}

impl EventLoop {
    fn children(&self) -> Option<&Children> {
        match &self.dispatch {
            super::Dispatch::Fork(children) => Some(children),
            super::Dispatch::Queue => None,
        }
    }

    fn children_mut(&mut self) -> Option<&mut Children> {
        match &mut self.dispatch {
            super::Dispatch::Fork(children) => Some(children),
            super::Dispatch::Queue => None,
        }
    }

    /// Hands a whole request to a new child; returns whether the connection stays with the loop
    /// (it does when the request is refused).
    pub(super) fn fork_request(&mut self, conn: &mut Conn) -> bool {
        // Reaped here too, not only between loop rounds: one round may accept and fork hundreds,
        // and children that have already exited must not count against the cap.
        self.reap_children();
        let Some(children) = self.children() else {
            return false;
        };
        let (live, max) = (children.live.len(), children.max);
        if live >= max {
            let status = Status::error(
                ErrorCode::Busy,
                format!(
                    "all {max} child processes are busy (--max-children {max}); try again in a moment"
                ),
            );
            self.refuse(conn, status);
            return true;
        }
        let Some(request) = conn.parser.take().and_then(RequestParser::into_request) else {
            return false;
        };
        // Counted before the fork so the child's copy of the counters includes itself, as the
        // pool's STATS counts the job answering it.
        let stats = &self.shared.stats;
        let live_now = stats.children.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_children.fetch_max(live_now, Ordering::Relaxed);
        // SAFETY: the fork server's process has one thread (checked in `server::fork::run`), so
        // the child is a complete copy and may allocate, lock and log; it leaves with `_exit`.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => self.run_child(conn, request),
            Ok(ForkResult::Parent { child }) => {
                // The child took the job id the counter held; the next child takes the next one.
                self.shared.next_job.fetch_add(1, Ordering::Relaxed);
                let stats = &self.shared.stats;
                stats.active.store(live_now, Ordering::Relaxed);
                stats.peak_active.fetch_max(live_now, Ordering::Relaxed);
                if let Some(children) = self.children_mut() {
                    children.live.insert(child.as_raw());
                }
                // The child owns the connection now; the loop's copy is closed by the caller.
                false
            }
            Err(errno) => {
                self.shared.stats.children.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%errno, "fork failed");
                let status = Status::error(
                    ErrorCode::Busy,
                    format!(
                        "the server cannot start a child process now ({errno}); try again in a moment"
                    ),
                );
                self.refuse(conn, status);
                true
            }
        }
    }

    /// The child's whole life: let go of the parent's loop, run the job, exit.
    fn run_child(&self, conn: &Conn, request: Request) -> ! {
        // SAFETY: plain system calls on descriptors this process holds; the Rust owners of those
        // descriptors are never dropped, since the child leaves with `_exit`. Closing (rather than
        // EPOLL_CTL_DEL) leaves the parent's epoll instance, which the child shares, untouched.
        unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            for other in self.conns.values() {
                libc::close(other.stream.as_raw_fd());
            }
            libc::close(self.listener.as_raw_fd());
            libc::close(self.epoll.as_raw_fd());
            if let Some(children) = self.children() {
                libc::close(children.wakeup.as_raw_fd());
            }
        }
        let code = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let Ok(stream) = conn.stream.try_clone() else {
                return EXIT_FAILED;
            };
            if stream.set_nonblocking(false).is_err() {
                return EXIT_FAILED;
            }
            let job = QueuedJob {
                stream,
                peer: conn.peer,
                request,
                accepted_at: conn.accepted_at,
                queued_at: Instant::now(),
                // The fork model bounds work with --max-children rather than per client.
                peer_slot: None,
            };
            if worker::handle(&self.shared, job) {
                EXIT_SERVED
            } else {
                EXIT_CANCELLED
            }
        }))
        .unwrap_or(EXIT_FAILED);
        // SAFETY: ends this process without running the parent's destructors or atexit handlers
        // (which would flush the parent's buffered stdout a second time).
        unsafe { libc::_exit(code) }
    }

    /// SIGCHLD arrived: empty the pipe and reap.
    pub(super) fn on_child_exit(&mut self) {
        if let Some(children) = self.children() {
            let mut buffer = [0u8; 256];
            let mut wakeup = &children.wakeup;
            while matches!(wakeup.read(&mut buffer), Ok(n) if n > 0) {}
        }
        self.reap_children();
    }

    /// Reaps every child that has exited, and counts how each ended.
    fn reap_children(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: all-zero is a valid rusage.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers to locals; WNOHANG never blocks.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                return;
            }
            let stats = &self.shared.stats;
            let rss = u64::try_from(usage.ru_maxrss).unwrap_or(0);
            stats.peak_child_rss_kib.fetch_max(rss, Ordering::Relaxed);
            let exited = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            match exited {
                Some(EXIT_SERVED) => {
                    stats.served.fetch_add(1, Ordering::Relaxed);
                }
                Some(EXIT_CANCELLED) => {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    stats.internal.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pid, status, "a child ended abnormally");
                }
            }
            let Some(children) = self.children_mut() else {
                return;
            };
            children.live.remove(&pid);
            let live = children.live.len() as u64;
            let stats = &self.shared.stats;
            stats.children.store(live, Ordering::Relaxed);
            stats.active.store(live, Ordering::Relaxed);
        }
    }

    /// Runs the fork server on this thread until `stop` is set, then stops: new requests get
    /// `unavailable`, children get the grace period to finish and are then killed. Returns once
    /// every child has been reaped.
    pub fn run_fork(mut self, stop: &AtomicBool) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut last_sweep = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.turn(&mut events, &mut last_sweep);
            // Also reaps between wakeups, in case a SIGCHLD byte was lost to a full pipe.
            self.reap_children();
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.shared.config.grace;
        while self.children().is_some_and(|c| !c.live.is_empty()) && Instant::now() < deadline {
            self.turn(&mut events, &mut last_sweep);
            self.reap_children();
        }
        let left: Vec<i32> = self
            .children()
            .map(|c| c.live.iter().copied().collect())
            .unwrap_or_default();
        for pid in &left {
            // SAFETY: plain system call on our own child; its job dies with it (parent-death signal).
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        let until = Instant::now() + Duration::from_secs(5);
        while self.children().is_some_and(|c| !c.live.is_empty()) && Instant::now() < until {
            self.reap_children();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
