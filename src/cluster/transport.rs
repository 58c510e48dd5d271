//! How cluster envelopes travel between real servers: one `KILN/1 CLUSTER` request per envelope
//! over a short-lived TCP connection, with the envelope in headers (`Message:`, `Node:`, `To:`,
//! `Term:`, `Lamport:`, then the message's own fields), and one sender thread per peer with a
//! small queue that drops the oldest envelopes, so a dead or stopped peer never blocks the node.
//!
//! The server's acceptor (`crate::server::reader`) parses the request and calls
//! `envelope_from_head`; `super::runtime` owns the `PeerSenders`. The node logic never sees any
//! of this (`super::node`).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::message::{Envelope, FieldsError, NodeId};
use crate::protocol::{Intent, RequestHead, encode_request_head};

/// How long a sender waits for a peer to accept a connection. Loopback and LAN peers accept in
/// well under a millisecond; a longer wait only means the peer is gone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);
/// How long a sender waits for a peer's status line. A stopped (SIGSTOP) peer's kernel still
/// accepts connections, so this bounds how long such a peer holds its sender.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);
/// Envelopes waiting for one peer; beyond this the oldest are dropped (the algorithms tolerate
/// loss, and stale heartbeats are worthless anyway).
pub const PEER_QUEUE: usize = 64;

/// Reads CLOCK_MONOTONIC in milliseconds: the time every cluster input gets. It is shared by all
/// processes on a machine (so `check_history` can compare their logs), keeps running while a
/// process is stopped, and never jumps.
pub fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec we pass and reads nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// The request head that carries `envelope`: intent `CLUSTER`, the cluster's token, and the
/// envelope's fields as headers (`from` travels as `Node:`).
pub fn envelope_head(envelope: &Envelope, token: Option<&str>) -> RequestHead {
    let mut head = RequestHead::new(Intent::Cluster);
    head.token = token.map(str::to_owned);
    for (key, value) in envelope.to_fields() {
        let key = if key == "from" {
            "node".to_owned()
        } else {
            key
        };
        head.extra.push((header_name(&key), value));
    }
    head
}

/// Parses the envelope a `CLUSTER` request carries in its headers.
///
/// # Errors
/// A `FieldsError` naming the missing or invalid header.
pub fn envelope_from_head(head: &RequestHead) -> Result<Envelope, FieldsError> {
    let fields: Vec<(String, String)> = head
        .extra
        .iter()
        .map(|(key, value)| {
            let key = key.to_ascii_lowercase();
            let key = if key == "node" {
                "from".to_owned()
            } else {
                key
            };
            (key, value.clone())
        })
        .collect();
    Envelope::from_fields(&fields)
}

/// `lease-ms` → `Lease-Ms`.
fn header_name(key: &str) -> String {
    key.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Sends one envelope and waits briefly for the peer's status line.
///
/// # Errors
/// A one-line description of what failed (connect, write, refusal, no answer).
pub fn send_envelope(
    addr: SocketAddr,
    envelope: &Envelope,
    token: Option<&str>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|error| format!("connect to {addr}: {error}"))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let request = encode_request_head(&envelope_head(envelope, token));
    stream
        .write_all(&request)
        .map_err(|error| format!("write to {addr}: {error}"))?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 512];
    while !answer.contains(&b'\n') && answer.len() < 4096 {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("no answer from {addr}: {error}")),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    let line = line.lines().next().unwrap_or_default();
    if line.starts_with("KILN/1 OK") {
        Ok(())
    } else {
        Err(format!("{addr} refused: {line}"))
    }
}

/// One peer's queue and the address to reach it.
#[derive(Debug)]
struct PeerQueue {
    peer: NodeId,
    addr: String,
    state: Mutex<QueueState>,
    ready: Condvar,
    /// Whether the latest send to this peer succeeded.
    reachable: AtomicBool,
}

#[derive(Debug, Default)]
struct QueueState {
    envelopes: VecDeque<Envelope>,
    closed: bool,
}

/// Counters of what the senders did.
#[derive(Debug, Default)]
pub struct SendCounters {
    /// Envelopes a peer acknowledged.
    pub delivered: AtomicU64,
    /// Envelopes that failed (peer down, stopped, refusing).
    pub failed: AtomicU64,
    /// Envelopes dropped because a peer's queue was full.
    pub dropped: AtomicU64,
}

/// One sender thread per peer, each with a bounded queue.
#[derive(Debug)]
pub struct PeerSenders {
    queues: Vec<Arc<PeerQueue>>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<SendCounters>,
}

impl PeerSenders {
    /// Starts a sender for each `(peer, "host:port")`, sending with `token`.
    ///
    /// # Errors
    /// If a thread cannot be started.
    pub fn start(
        peers: &[(NodeId, String)],
        token: Option<String>,
    ) -> std::io::Result<PeerSenders> {
        let counters = Arc::new(SendCounters::default());
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for (peer, addr) in peers {
            let queue = Arc::new(PeerQueue {
                peer: *peer,
                addr: addr.clone(),
                state: Mutex::new(QueueState::default()),
                ready: Condvar::new(),
                reachable: AtomicBool::new(true),
            });
            let thread = {
                let queue = Arc::clone(&queue);
                let token = token.clone();
                let counters = Arc::clone(&counters);
                std::thread::Builder::new()
                    .name(format!("kiln-send-{peer}"))
                    .spawn(move || run_sender(&queue, token.as_deref(), &counters))?
            };
            queues.push(queue);
            threads.push(thread);
        }
        Ok(PeerSenders {
            queues,
            threads,
            counters,
        })
    }

    /// Queues `envelope` for its receiver; never blocks. Envelopes for unknown nodes are dropped.
    pub fn send(&self, envelope: Envelope) {
        let Some(queue) = self.queues.iter().find(|queue| queue.peer == envelope.to) else {
            tracing::debug!(to = %envelope.to, "envelope for an unknown node dropped");
            return;
        };
        let Ok(mut state) = queue.state.lock() else {
            return;
        };
        if state.envelopes.len() >= PEER_QUEUE {
            state.envelopes.pop_front();
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        state.envelopes.push_back(envelope);
        queue.ready.notify_one();
    }

    /// The peers whose latest send failed.
    pub fn unreachable(&self) -> Vec<NodeId> {
        self.queues
            .iter()
            .filter(|queue| !queue.reachable.load(Ordering::Relaxed))
            .map(|queue| queue.peer)
            .collect()
    }

    /// What the senders did so far.
    pub fn counters(&self) -> &SendCounters {
        &self.counters
    }

    /// Stops the senders (dropping what is queued) and waits for them.
    pub fn stop(&mut self) {
        for queue in &self.queues {
            if let Ok(mut state) = queue.state.lock() {
                state.closed = true;
                state.envelopes.clear();
            }
            queue.ready.notify_all();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for PeerSenders {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_sender(queue: &PeerQueue, token: Option<&str>, counters: &SendCounters) {
    let mut resolved: Option<SocketAddr> = None;
    let mut last_error_logged: Option<String> = None;
    loop {
        let envelope = {
            let Ok(mut state) = queue.state.lock() else {
                return;
            };
            loop {
                if state.closed {
                    return;
                }
                if let Some(envelope) = state.envelopes.pop_front() {
                    break envelope;
                }
                state = match queue.ready.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
        };
        // Resolve lazily and again after a failure: in containers a peer's name may only resolve
        // once the peer is up.
        if resolved.is_none() {
            resolved = queue
                .addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next());
        }
        let result = match resolved {
            Some(addr) => send_envelope(addr, &envelope, token),
            None => Err(format!("cannot resolve {}", queue.addr)),
        };
        match result {
            Ok(()) => {
                queue.reachable.store(true, Ordering::Relaxed);
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if last_error_logged.take().is_some() {
                    tracing::info!(peer = %queue.peer, addr = %queue.addr, "peer reachable again");
                }
            }
            Err(error) => {
                queue.reachable.store(false, Ordering::Relaxed);
                counters.failed.fetch_add(1, Ordering::Relaxed);
                resolved = None;
                // Log a peer going away once, not every heartbeat.
                if last_error_logged.is_none() {
                    tracing::info!(peer = %queue.peer, %error, "peer unreachable");
                }
                last_error_logged = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::message::{Message, Term};
    use crate::protocol::{RequestParser, request::Progress};

    #[test]
    fn envelopes_survive_the_wire() {
        let envelope = Envelope {
            from: NodeId(3),
            to: NodeId(1),
            term: Term(7),
            lamport: 42,
            msg: Message::LockStateReport {
                held: None,
                pending: Vec::new(),
                stamp: 9,
            },
        };
        let bytes = encode_request_head(&envelope_head(&envelope, Some("secret")));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.starts_with("KILN/1 CLUSTER\n"), "{text}");
        assert!(text.contains("\nNode: 3\n") && text.contains("\nLamport: 42\n"));
        let mut parser = RequestParser::new(Default::default());
        parser.feed(&bytes).expect("parses");
        assert_eq!(parser.progress(), Progress::Complete);
        let request = parser.into_request().expect("complete");
        assert_eq!(request.head.token.as_deref(), Some("secret"));
        assert_eq!(envelope_from_head(&request.head), Ok(envelope));
    }

    #[test]
    fn a_missing_header_is_named() {
        let head = RequestHead::new(Intent::Cluster);
        let error = envelope_from_head(&head).expect_err("empty");
        assert!(error.to_string().contains("missing field"), "{error}");
    }

    #[test]
    fn header_names_are_capitalised() {
        assert_eq!(header_name("lease-ms"), "Lease-Ms");
        assert_eq!(header_name("node"), "Node");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let first = monotonic_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(monotonic_ms() >= first + 4);
    }
}
