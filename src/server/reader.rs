//! The acceptor: one thread, one epoll loop. It accepts connections and reads each request
//! (non-blocking, with header and body deadlines) so that a slow or stalled client holds a few
//! bytes of memory rather than a worker. Whole requests go to the job queue; anything refused
//! (bad request, wrong token, busy, shutting down, too slow) is answered here, after which the
//! connection is drained briefly so the client reads the answer instead of a reset.
//!
//! Where a whole request goes is the [`Dispatch`]: the pool's job queue, or (`reader/fork.rs`) a
//! child process forked for it, with the loop reaping children as they exit.

pub mod fork;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;
use super::peers::PeerSlot;
use super::queue::QueuedJob;
use crate::protocol::request::Progress;
use crate::protocol::{ErrorCode, ParseError, Request, RequestParser, Status};

const LISTENER_KEY: u64 = u64::MAX;
/// The fork model's SIGCHLD pipe.
const CHILD_KEY: u64 = u64::MAX - 1;
/// How long a refused connection is drained after its answer.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// How many bytes a refused connection may still send while drained.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

enum ConnState {
    /// Reading the request.
    Reading,
    /// Waiting to send a refusal (a wrong token waits on purpose).
    Refusing { at: Instant, status: Status },
    /// The refusal is sent; discarding what the client still sends until it closes.
    Draining { until: Instant, discarded: usize },
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    parser: Option<RequestParser>,
    state: ConnState,
    accepted_at: Instant,
    head_done_at: Option<Instant>,
    /// The client closed its sending side; it may still read our answer.
    peer_eof: bool,
    /// Bytes received so far.
    received: usize,
    /// Whether epoll watches it (a request read whole at accept never is).
    registered: bool,
    /// A whole request for the queue, handed over when the loop lets go of the connection.
    ready: Option<Request>,
    /// The client's share of the per-peer job limit, held until its job ends.
    peer_slot: Option<PeerSlot>,
}

/// Where whole requests go.
pub enum Dispatch {
    /// To the pool's bounded queue.
    Queue,
    /// To a child process each.
    Fork(fork::Children),
}

/// The acceptor's state.
pub struct EventLoop {
    listener: TcpListener,
    epoll: OwnedFd,
    shared: Arc<Shared>,
    dispatch: Dispatch,
    conns: HashMap<u64, Conn>,
    next_key: u64,
    accept_paused_until: Option<Instant>,
}

impl EventLoop {
    /// Sets up epoll for `listener`.
    ///
    /// # Errors
    /// If epoll cannot be created.
    pub fn new(
        listener: TcpListener,
        shared: Arc<Shared>,
        dispatch: Dispatch,
    ) -> io::Result<EventLoop> {
        // SAFETY: epoll_create1 has no pointer arguments; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let event_loop = EventLoop {
            listener,
            epoll,
            shared,
            dispatch,
            conns: HashMap::new(),
            next_key: 0,
            accept_paused_until: None,
        };
        event_loop.register(event_loop.listener.as_raw_fd(), LISTENER_KEY)?;
        if let Dispatch::Fork(children) = &event_loop.dispatch {
            event_loop.register(children.wakeup_fd(), CHILD_KEY)?;
        }
        Ok(event_loop)
    }

    fn register(&self, fd: RawFd, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key,
        };
        // SAFETY: valid epoll fd, valid fd, pointer to a local event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn deregister(&self, fd: RawFd) {
        // SAFETY: valid epoll fd; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Runs until the server's `reader_exit` flag is set.
    pub fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut last_sweep = Instant::now();
        while !self.shared.reader_exit.load(Ordering::SeqCst) {
            self.turn(&mut events, &mut last_sweep);
        }
    }

    /// One round: waits for events (at most 50 ms), handles them, and sweeps deadlines.
    fn turn(&mut self, events: &mut [libc::epoll_event], last_sweep: &mut Instant) {
        let timeout_ms = self.next_timeout_ms();
        // SAFETY: events is a valid buffer of the given length.
        let ready = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                i32::try_from(events.len()).unwrap_or(i32::MAX),
                timeout_ms,
            )
        };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                tracing::error!(%error, "epoll_wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Interrupted (the fork model's SIGCHLD does it often) still sweeps deadlines below.
        for event in &events[..usize::try_from(ready).unwrap_or(0)] {
            let key = event.u64;
            if key == LISTENER_KEY {
                self.accept_all();
            } else if key == CHILD_KEY {
                self.on_child_exit();
            } else {
                self.on_readable(key);
            }
        }
        self.resume_accepting();
        let now = Instant::now();
        if now.duration_since(*last_sweep) >= Duration::from_millis(20) {
            self.sweep(now);
            *last_sweep = now;
        }
    }

    fn next_timeout_ms(&self) -> i32 {
        let has_refusals = self
            .conns
            .values()
            .any(|conn| matches!(conn.state, ConnState::Refusing { .. }));
        if has_refusals { 10 } else { 50 }
    }

    fn accept_all(&mut self) {
        // Bounded so that a flood of connections does not starve reading the ones we have.
        for _ in 0..512 {
            match self.listener.accept() {
                Ok((stream, peer)) => self.on_accepted(stream, peer),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(error) => {
                    // EMFILE/ENFILE/ENOBUFS: the listener stays readable, so accepting again at
                    // once would spin. Pause, let connections finish, then resume.
                    let failures = self
                        .shared
                        .stats
                        .accept_errors
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    // Out of descriptors this repeats ten times a second: say it once in 100.
                    if failures % 100 == 1 {
                        tracing::warn!(%error, failures, "accept failed; pausing accepts for 100 ms");
                    }
                    self.deregister(self.listener.as_raw_fd());
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn resume_accepting(&mut self) {
        if let Some(until) = self.accept_paused_until
            && Instant::now() >= until
        {
            self.accept_paused_until = None;
            if let Err(error) = self.register(self.listener.as_raw_fd(), LISTENER_KEY) {
                tracing::error!(%error, "cannot resume accepting");
                self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
            }
        }
    }

    fn on_accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let key = self.next_key;
        self.next_key += 1;
        let mut conn = Conn {
            stream,
            peer,
            parser: Some(RequestParser::new(self.shared.config.parse_limits)),
            state: ConnState::Reading,
            accepted_at: Instant::now(),
            head_done_at: None,
            peer_eof: false,
            received: 0,
            registered: false,
            ready: None,
            peer_slot: None,
        };
        // Most clients send the request with the connection: read it now and watch the socket only
        // if more is to come, which spares two epoll_ctl calls and a loop round per request.
        if !self.read_request(&mut conn) {
            self.close(conn);
            return;
        }
        match self.register(conn.stream.as_raw_fd(), key) {
            Ok(()) => {
                conn.registered = true;
                self.conns.insert(key, conn);
            }
            Err(error) => tracing::warn!(%error, %peer, "cannot watch connection"),
        }
    }

    fn on_readable(&mut self, key: u64) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        let keep = match conn.state {
            ConnState::Reading => self.read_request(&mut conn),
            ConnState::Refusing { .. } => {
                if !drain(&mut conn) {
                    // Half-closed while its (delayed) answer waits: stop watching it, or the
                    // level-triggered end-of-file would wake the loop until the answer is due.
                    conn.peer_eof = true;
                    self.deregister(conn.stream.as_raw_fd());
                }
                true
            }
            ConnState::Draining { .. } => drain(&mut conn),
        };
        if keep {
            self.conns.insert(key, conn);
        } else {
            self.close(conn);
        }
    }

    /// Reads what is there; returns whether the connection stays with the loop.
    fn read_request(&mut self, conn: &mut Conn) -> bool {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match conn.stream.read(&mut buffer) {
                Ok(0) => return self.on_eof(conn),
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            };
            conn.received += n;
            let Some(parser) = conn.parser.as_mut() else {
                return false;
            };
            let head_was_done = parser.head().is_some();
            let used = match parser.feed(&buffer[..n]) {
                Ok(used) => used,
                Err(error) => {
                    self.refuse_parse(conn, &error);
                    return true;
                }
            };
            if !head_was_done && parser.head().is_some() {
                conn.head_done_at = Some(Instant::now());
                if let Some(status) = self.check_head(conn) {
                    self.refuse(conn, status);
                    return true;
                }
            }
            let Some(parser) = conn.parser.as_ref() else {
                return false;
            };
            if parser.progress() == Progress::Complete {
                if let Err(error) = parser.check_no_more(n - used) {
                    self.refuse_parse(conn, &error);
                    return true;
                }
                return self.enqueue(conn);
            }
        }
    }

    /// Checks what can be checked once the head is in: stopping, token, language.
    fn check_head(&self, conn: &Conn) -> Option<Status> {
        let head = conn.parser.as_ref()?.head()?;
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Some(unavailable());
        }
        if let Some(token) = &self.shared.config.token {
            let given = head.token.as_deref().unwrap_or_default();
            if !token.matches(given) {
                let what = if head.token.is_none() {
                    "this server requires a token: send a `Token:` header (the server printed its token when it started)"
                } else {
                    "wrong token: check the token the server printed when it started"
                };
                tracing::warn!(peer = %conn.peer, missing = head.token.is_none(), "unauthorized request");
                return Some(Status::error(ErrorCode::Unauthorized, what));
            }
        }
        if let Some(language) = &head.language
            && self.shared.executor.find(language).is_none()
        {
            let ids = self.shared.executor.language_ids();
            let offered = if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            };
            return Some(Status::error(
                ErrorCode::UnsupportedLanguage,
                format!("this server cannot run `{language}`; it offers: {offered}"),
            ));
        }
        None
    }

    fn on_eof(&mut self, conn: &mut Conn) -> bool {
        let Some(parser) = conn.parser.as_ref() else {
            return false;
        };
        match (parser.progress(), parser.head()) {
            (Progress::NeedBody, Some(head)) => {
                // The client half-closed (or closed) with the body incomplete: tell it, in case it
                // is still reading, then let go.
                let message = format!(
                    "the connection ended before the body was complete: Source-Length + Stdin-Length announced {} bytes",
                    head.source_length + head.stdin_length
                );
                self.refuse(conn, Status::error(ErrorCode::BadRequest, message));
                true
            }
            (Progress::NeedHead, _) if conn.received > 0 => {
                let message = "the connection ended before the request header was complete: end it with a blank line";
                self.refuse(conn, Status::error(ErrorCode::BadRequest, message));
                true
            }
            _ => {
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn enqueue(&mut self, conn: &mut Conn) -> bool {
        if self.shared.stopping.load(Ordering::SeqCst) {
            self.refuse(conn, unavailable());
            return true;
        }
        if conn
            .parser
            .as_ref()
            .and_then(RequestParser::head)
            .is_some_and(|head| head.intent().is_cluster())
        {
            let Some(request) = conn.parser.take().and_then(RequestParser::into_request) else {
                return false;
            };
            // Cluster traffic must never wait behind jobs in the queue.
            return self.route_cluster(conn, request);
        }
        if matches!(self.dispatch, Dispatch::Fork(_)) {
            return self.fork_request(conn);
        }
        let takes_worker_time = conn
            .parser
            .as_ref()
            .and_then(RequestParser::head)
            .is_some_and(|head| head.intent().takes_language());
        if takes_worker_time {
            match self.shared.peers.try_acquire(conn.peer.ip()) {
                Some(slot) => conn.peer_slot = Some(slot),
                None => {
                    let limit = self.shared.peers.limit();
                    let status = Status::error(
                        ErrorCode::Busy,
                        format!(
                            "this client ({}) already has {limit} jobs queued or running, the most one client may have (--max-jobs-per-peer {limit}); wait for one to finish",
                            conn.peer.ip()
                        ),
                    );
                    self.refuse(conn, status);
                    return true;
                }
            }
        }
        // Only this thread adds to the queue, so room seen now is still there at the push.
        if self.shared.queue.is_full() {
            conn.peer_slot = None;
            let status = Status::error(
                ErrorCode::Busy,
                format!(
                    "all {} workers are busy and {} requests are waiting; try again in a moment",
                    self.shared.config.workers, self.shared.config.queue_capacity
                ),
            );
            self.refuse(conn, status);
            return true;
        }
        // Queued by `close`, which owns the connection and can hand the socket over whole.
        conn.ready = conn.parser.take().and_then(RequestParser::into_request);
        false
    }

    /// Queues a connection's whole request; the worker gets the socket itself.
    fn queue_request(&self, conn: Conn, request: Request) {
        if conn.stream.set_nonblocking(false).is_err() {
            return;
        }
        let job = QueuedJob {
            stream: conn.stream,
            peer: conn.peer,
            request,
            accepted_at: conn.accepted_at,
            queued_at: Instant::now(),
            peer_slot: conn.peer_slot,
        };
        if let Err(job) = self.shared.queue.try_push(job) {
            // The queue closed in between: the server is stopping.
            super::worker::refuse_unavailable(&self.shared, job);
        }
    }

    /// Answers a peer's cluster message at once, or hands a status or log request to the cluster
    /// runtime's own thread.
    fn route_cluster(&mut self, conn: &mut Conn, request: crate::protocol::Request) -> bool {
        match super::cluster::route(&self.shared, request) {
            super::cluster::Route::Answer(bytes) => {
                // A whole answer is a few dozen bytes: it fits in any socket buffer.
                let _ = conn.stream.write_all(&bytes);
                let _ = conn.stream.shutdown(Shutdown::Write);
                conn.state = ConnState::Draining {
                    until: Instant::now() + DRAIN_TIME,
                    discarded: 0,
                };
                true
            }
            super::cluster::Route::Refuse(status) => {
                self.refuse(conn, status);
                true
            }
            super::cluster::Route::Handoff(request) => {
                let Some(cluster) = &self.shared.cluster else {
                    return false;
                };
                let Ok(stream) = conn.stream.try_clone() else {
                    return false;
                };
                self.deregister(conn.stream.as_raw_fd());
                if stream.set_nonblocking(false).is_err() {
                    return false;
                }
                cluster.serve(stream, request);
                false
            }
        }
    }

    fn refuse_parse(&mut self, conn: &mut Conn, error: &ParseError) {
        tracing::debug!(peer = %conn.peer, %error, "bad request");
        self.refuse(conn, Status::error(error.code(), error.to_string()));
    }

    fn refuse(&mut self, conn: &mut Conn, status: Status) {
        let delay = match &status {
            Status::Error {
                code: ErrorCode::Unauthorized,
                ..
            } => self.shared.config.unauthorized_delay,
            _ => Duration::ZERO,
        };
        conn.state = ConnState::Refusing {
            at: Instant::now() + delay,
            status,
        };
        if delay.is_zero() {
            self.send_refusal(conn);
        }
    }

    /// Writes a due refusal and starts draining.
    fn send_refusal(&self, conn: &mut Conn) {
        let ConnState::Refusing { status, .. } = &conn.state else {
            return;
        };
        if let Status::Error { code, message } = status {
            self.shared.stats.count_error(*code);
            tracing::info!(peer = %conn.peer, code = code.as_str(), %message, "request refused");
        }
        let bytes = status.encode();
        // A status line fits in any socket buffer; a client that filled ours is not reading.
        let _ = conn.stream.write_all(&bytes);
        let _ = conn.stream.shutdown(Shutdown::Write);
        let drain_time = if conn.peer_eof {
            Duration::ZERO
        } else {
            DRAIN_TIME
        };
        conn.state = ConnState::Draining {
            until: Instant::now() + drain_time,
            discarded: 0,
        };
    }

    /// Deadlines: refusals that are due, requests that are too slow, drains that are over.
    fn sweep(&mut self, now: Instant) {
        let header_timeout = self.shared.config.header_timeout;
        let body_timeout = self.shared.config.body_timeout;
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(mut conn) = self.conns.remove(&key) else {
                continue;
            };
            let keep = match &conn.state {
                ConnState::Reading => {
                    let timed_out = match conn.head_done_at {
                        None if now.duration_since(conn.accepted_at) >= header_timeout => {
                            Some(format!(
                                "no complete request header within {} ms (header timeout); send the intent line, headers and a blank line",
                                header_timeout.as_millis()
                            ))
                        }
                        Some(at) if now.duration_since(at) >= body_timeout => Some(format!(
                            "the body did not arrive within {} ms (body timeout)",
                            body_timeout.as_millis()
                        )),
                        _ => None,
                    };
                    if let Some(message) = timed_out {
                        self.refuse(&mut conn, Status::error(ErrorCode::Timeout, message));
                    }
                    true
                }
                ConnState::Refusing { at, .. } => {
                    if now >= *at {
                        self.send_refusal(&mut conn);
                    }
                    true
                }
                ConnState::Draining { until, .. } => now < *until,
            };
            if keep {
                self.conns.insert(key, conn);
            } else {
                self.close(conn);
            }
        }
    }

    /// Lets go of a connection: queues its request if it has a whole one, else closes it.
    fn close(&self, mut conn: Conn) {
        if conn.registered {
            self.deregister(conn.stream.as_raw_fd());
        }
        if let Some(request) = conn.ready.take() {
            self.queue_request(conn, request);
        }
    }
}

fn drain(conn: &mut Conn) -> bool {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match conn.stream.read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => {
                if let ConnState::Draining { discarded, .. } = &mut conn.state {
                    *discarded += n;
                    if *discarded > DRAIN_BYTES {
                        return false;
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn unavailable() -> Status {
    Status::error(
        ErrorCode::Unavailable,
        "the server is shutting down; try again later or use another server",
    )
}
