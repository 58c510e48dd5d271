//! The load generator: a few threads, each an epoll loop driving many non-blocking client
//! connections at once (connect, send the request, read the answer to the end, classify it), so a
//! hundred thousand clients cost a few threads rather than one each. Sockets are bound to a spread of
//! 127.0.0.x source addresses so neither ephemeral ports nor TIME_WAIT limit a run. `stress/mod.rs`
//! uses it per step; the benchmark in `benches/` uses it against its baseline server too.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::protocol::frame::{Decoded, FrameDecoder};
use crate::protocol::{Channel, ErrorCode, Fields, Status, Verdict};

/// What one load step does.
#[derive(Debug, Clone)]
pub struct Load {
    /// The server.
    pub addr: SocketAddr,
    /// The request's bytes, sent as is by every client.
    pub request: Arc<Vec<u8>>,
    /// The verdict a successful answer carries (`pong` for PING, `ok` for RUN).
    pub expect: Verdict,
    /// How many clients in all.
    pub clients: usize,
    /// How many at once.
    pub concurrency: usize,
    /// Client threads (each an epoll loop).
    pub threads: usize,
    /// Source addresses to spread the clients over.
    pub sources: Vec<Ipv4Addr>,
    /// How long a client waits for its whole answer before counting a timeout.
    pub timeout: Duration,
}

/// Errors seen by clients, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientErrors {
    /// The connection was refused (nobody listening, or the backlog overflowed).
    pub refused: u64,
    /// The connection was reset or broken before the answer was complete.
    pub reset: u64,
    /// No whole answer within the timeout.
    pub timeout: u64,
    /// `KILN/1 ERROR busy`.
    pub busy: u64,
    /// An answer that does not follow KILN/1, was cut short, or had an unexpected verdict.
    pub protocol: u64,
    /// Another `ERROR` code, or an I/O error of another kind.
    pub other: u64,
}

impl ClientErrors {
    /// All errors.
    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.busy + self.protocol + self.other
    }

    fn add(&mut self, other: &ClientErrors) {
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.busy += other.busy;
        self.protocol += other.protocol;
        self.other += other.other;
    }
}

/// What a load step measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Clients that got the answer they expected.
    pub ok: u64,
    /// Clients that did not, by kind.
    pub errors: ClientErrors,
    /// Latency of every successful client, connect to end of answer, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Wall time of the whole step.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Successful clients per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency below which `percent` of successful clients finished.
    pub fn percentile(&self, percent: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let rank = (percent / 100.0 * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        Duration::from_micros(u64::from(self.latencies_us[index]))
    }
}

/// Runs a load step; `done` counts finished clients as they finish (for a progress bar).
///
/// # Errors
/// If a thread or an epoll instance cannot be created.
pub fn run(load: &Load, done: &AtomicU64) -> io::Result<LoadResult> {
    let threads = load.threads.clamp(1, load.concurrency.max(1));
    let started = Instant::now();
    let results: Vec<io::Result<LoadResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let share = |total: usize| total / threads + usize::from(index < total % threads);
                let clients = share(load.clients);
                let concurrency = share(load.concurrency).max(1);
                std::thread::Builder::new()
                    .name(format!("kiln-stress-{index}"))
                    .spawn_scoped(scope, move || {
                        ClientLoop::new(load, index, clients, concurrency, done)?.run()
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a client thread panicked"))),
                Err(error) => Err(error),
            })
            .collect()
    });
    let mut total = LoadResult::default();
    for result in results {
        let result = result?;
        total.ok += result.ok;
        total.errors.add(&result.errors);
        total.latencies_us.extend(result.latencies_us);
    }
    total.latencies_us.sort_unstable();
    total.elapsed = started.elapsed();
    Ok(total)
}

/// How one client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Ok,
    Refused,
    Reset,
    Timeout,
    Busy,
    Protocol,
    Other,
}

struct ClientConn {
    key: u64,
    stream: TcpStream,
    started: Instant,
    connected: bool,
    sent: usize,
    reading: bool,
    answer: Vec<u8>,
}

struct ClientLoop<'a> {
    load: &'a Load,
    epoll: OwnedFd,
    conns: HashMap<u64, ClientConn>,
    next_key: u64,
    next_source: usize,
    to_start: usize,
    concurrency: usize,
    done: &'a AtomicU64,
    result: LoadResult,
}

impl<'a> ClientLoop<'a> {
    fn new(
        load: &'a Load,
        index: usize,
        clients: usize,
        concurrency: usize,
        done: &'a AtomicU64,
    ) -> io::Result<ClientLoop<'a>> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ClientLoop {
            load,
            // SAFETY: a fresh descriptor nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            conns: HashMap::new(),
            next_key: 0,
            next_source: index,
            to_start: clients,
            concurrency,
            done,
            result: LoadResult {
                latencies_us: Vec::with_capacity(clients),
                ..LoadResult::default()
            },
        })
    }

    fn run(mut self) -> io::Result<LoadResult> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
        let mut last_sweep = Instant::now();
        while self.to_start > 0 || !self.conns.is_empty() {
            while self.to_start > 0 && self.conns.len() < self.concurrency {
                self.to_start -= 1;
                self.start_client();
            }
            if self.conns.is_empty() {
                continue;
            }
            // SAFETY: events is a valid buffer of the given length.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    i32::try_from(events.len()).unwrap_or(i32::MAX),
                    20,
                )
            };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            for event in &events[..usize::try_from(ready).unwrap_or(0)] {
                self.on_event(event.u64);
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= Duration::from_millis(50) {
                last_sweep = now;
                self.sweep(now);
            }
        }
        Ok(self.result)
    }

    fn start_client(&mut self) {
        let started = Instant::now();
        let source = self.load.sources[self.next_source % self.load.sources.len().max(1)];
        self.next_source += 1;
        let stream = match connect_from(source, self.load.addr) {
            Ok(stream) => stream,
            Err(error) => {
                self.finish(started, classify_io(&error));
                return;
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLOUT | libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key,
        };
        // SAFETY: valid epoll fd and socket, pointer to a local event.
        let added = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                &mut event,
            )
        };
        if added < 0 {
            self.finish(started, Ending::Other);
            return;
        }
        self.conns.insert(
            key,
            ClientConn {
                key,
                stream,
                started,
                connected: false,
                sent: 0,
                reading: false,
                answer: Vec::new(),
            },
        );
    }

    fn on_event(&mut self, key: u64) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        match self.advance(&mut conn) {
            Some(ending) => self.close(conn, ending),
            None => {
                self.conns.insert(key, conn);
            }
        }
    }

    /// Moves a connection along; `Some` once it has ended.
    fn advance(&mut self, conn: &mut ClientConn) -> Option<Ending> {
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(error)) | Err(error) => return Some(classify_io(&error)),
            }
            conn.connected = true;
        }
        let request = &self.load.request;
        while conn.sent < request.len() {
            match conn.stream.write(&request[conn.sent..]) {
                Ok(n) => conn.sent += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return None,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // The server may have answered and closed before taking the whole request:
                // what it said still counts, so read it.
                Err(_) => return Some(self.read_to_end(conn)),
            }
        }
        if conn.sent < request.len() {
            return None;
        }
        if !conn.reading {
            // Sent: stop asking for writability, which would wake the loop for nothing.
            conn.reading = true;
            self.watch_reads(conn);
        }
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match conn.stream.read(&mut buffer) {
                Ok(0) => return Some(judge(&conn.answer, self.load.expect)),
                Ok(n) => conn.answer.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return None,
                Err(error) => {
                    // An answer complete before the reset still counts as that answer.
                    return Some(match judge(&conn.answer, self.load.expect) {
                        Ending::Protocol => classify_io(&error),
                        ending => ending,
                    });
                }
            }
        }
    }

    fn watch_reads(&self, conn: &ClientConn) {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: conn.key,
        };
        // SAFETY: valid epoll fd and socket, pointer to a local event.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                conn.stream.as_raw_fd(),
                &mut event,
            );
        }
    }

    fn read_to_end(&self, conn: &mut ClientConn) -> Ending {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match conn.stream.read(&mut buffer) {
                Ok(0) => return judge(&conn.answer, self.load.expect),
                Ok(n) => conn.answer.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return match judge(&conn.answer, self.load.expect) {
                        Ending::Protocol => classify_io(&error),
                        ending => ending,
                    };
                }
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let timeout = self.load.timeout;
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, conn)| now.duration_since(conn.started) >= timeout)
            .map(|(key, _)| *key)
            .collect();
        for key in late {
            if let Some(conn) = self.conns.remove(&key) {
                self.close(conn, Ending::Timeout);
            }
        }
    }

    fn close(&mut self, conn: ClientConn, ending: Ending) {
        // SAFETY: valid epoll fd; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                conn.stream.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
        let started = conn.started;
        drop(conn);
        self.finish(started, ending);
    }

    fn finish(&mut self, started: Instant, ending: Ending) {
        let errors = &mut self.result.errors;
        match ending {
            Ending::Ok => {
                self.result.ok += 1;
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                self.result.latencies_us.push(micros);
            }
            Ending::Refused => errors.refused += 1,
            Ending::Reset => errors.reset += 1,
            Ending::Timeout => errors.timeout += 1,
            Ending::Busy => errors.busy += 1,
            Ending::Protocol => errors.protocol += 1,
            Ending::Other => errors.other += 1,
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A non-blocking connection from `source` (any free port) to `server`, under way.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if server.is_ipv4() {
        // Let connect() pick the port, unique per (source, server) pair rather than per source,
        // so the ephemeral range is not spent by bind().
        let on: libc::c_int = 1;
        // SAFETY: valid socket, pointer to a local int of the given size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
    }
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    Ok(socket.into())
}

fn classify_io(error: &io::Error) -> Ending {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Ending::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Ending::Reset,
        io::ErrorKind::TimedOut => Ending::Timeout,
        _ => Ending::Other,
    }
}

/// Reads a whole answer: a status line, frames, and a `result` with the expected verdict.
fn judge(answer: &[u8], expect: Verdict) -> Ending {
    let mut decoder = FrameDecoder::new(u64::MAX);
    decoder.push(answer);
    let mut status_ok = false;
    loop {
        match decoder.next_item() {
            Ok(Some(Decoded::Status(Status::Ok { .. }))) => status_ok = true,
            Ok(Some(Decoded::Status(Status::Error { code, .. }))) => {
                return if code == ErrorCode::Busy {
                    Ending::Busy
                } else {
                    Ending::Other
                };
            }
            Ok(Some(Decoded::Frame(frame))) if frame.channel == Channel::Result => {
                let verdict = Fields::parse(&frame.body)
                    .get("verdict")
                    .and_then(Verdict::parse);
                return if status_ok && verdict == Some(expect) {
                    Ending::Ok
                } else {
                    Ending::Protocol
                };
            }
            Ok(Some(Decoded::Frame(_))) => {}
            Ok(None) | Err(_) => return Ending::Protocol,
        }
    }
}

/// The source addresses to spread clients over: 127.0.0.1 ..= 127.0.0.`count`.
pub fn loopback_sources(count: usize) -> Vec<Ipv4Addr> {
    (1..=count.clamp(1, 250))
        .map(|last| Ipv4Addr::new(127, 0, 0, u8::try_from(last).unwrap_or(1)))
        .collect()
}

/// Raises this process's soft limit on open files to the hard limit; returns the new soft limit.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: valid pointer to a local struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    fn answer(status: &Status, verdict: &str) -> Vec<u8> {
        let mut bytes = status.encode();
        let mut fields = Fields::new();
        fields.push("verdict", verdict);
        bytes.extend(Frame::new(Channel::Result, fields.encode()).encode());
        bytes
    }

    #[test]
    fn answers_are_judged_by_status_and_verdict() {
        let ok = Status::Ok {
            job_id: "1-1".into(),
        };
        assert_eq!(judge(&answer(&ok, "pong"), Verdict::Pong), Ending::Ok);
        assert_eq!(judge(&answer(&ok, "ok"), Verdict::Pong), Ending::Protocol);
        let busy = Status::error(ErrorCode::Busy, "full").encode();
        assert_eq!(judge(&busy, Verdict::Pong), Ending::Busy);
        let timeout = Status::error(ErrorCode::Timeout, "slow").encode();
        assert_eq!(judge(&timeout, Verdict::Pong), Ending::Other);
        assert_eq!(judge(&ok.encode(), Verdict::Pong), Ending::Protocol);
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\n", Verdict::Pong),
            Ending::Protocol
        );
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let result = LoadResult {
            ok: 100,
            latencies_us: (1..=100).collect(),
            elapsed: Duration::from_secs(2),
            ..LoadResult::default()
        };
        assert_eq!(result.percentile(50.0), Duration::from_micros(50));
        assert_eq!(result.percentile(99.0), Duration::from_micros(99));
        assert_eq!(result.percentile(100.0), Duration::from_micros(100));
        assert!((result.throughput() - 50.0).abs() < 1e-9);
        assert_eq!(LoadResult::default().percentile(99.0), Duration::ZERO);
    }

    #[test]
    fn sources_stay_in_loopback() {
        let sources = loopback_sources(16);
        assert_eq!(sources.len(), 16);
        assert!(sources.iter().all(Ipv4Addr::is_loopback));
        assert_eq!(loopback_sources(0), vec![Ipv4Addr::new(127, 0, 0, 1)]);
    }
}
