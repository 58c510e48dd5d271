//! The cluster runtime inside a real server: one thread owns the `Node`, feeds it messages, lock
//! calls and a tick every 5 ms, and carries out its outputs: persisting state to a file before
//! anything that follows, appending log lines to the node's JSON-lines log, handing envelopes to
//! the per-peer senders (`super::transport`) and waking jobs that wait for the lock.
//!
//! The server (`crate::server`) starts it when `--node` and `--peers` are given, routes `CLUSTER`
//! requests to `ClusterHandle::deliver` and `CLUSTER-STATUS` / `CLUSTER-LOG` to
//! `ClusterHandle::serve`, and wraps `Exclusive: yes` jobs in `acquire` / `release`. Callers never
//! wait on the node thread except through `acquire`, which is bounded by its timeout.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::log::{Event, LogEvent};
use super::message::{Envelope, FencingToken, NodeId, RequestId};
use super::node::{Node, NodeStatus, Output, PersistentState, Timing};
use super::remote::{self, ClusterStatus, NodeReport};
use super::transport::{PeerSenders, monotonic_ms};
use crate::client::Client;
use crate::protocol::{Channel, Fields, Frame, Intent, Request, Status, Verdict};

/// How often the node thread calls `Node::on_tick`.
const TICK: Duration = Duration::from_millis(5);
/// How long `CLUSTER-STATUS` waits for each peer's own status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(400);

/// One other node and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The peer's id.
    pub id: NodeId,
    /// `host:port` of its KILN/1 server.
    pub addr: String,
}

/// Why cluster options are wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClusterConfigError {
    /// A `--peers` entry is not `ID=HOST:PORT`.
    #[error("--peers entry `{0}` should look like ID=HOST:PORT (for example 2=127.0.0.2:7000)")]
    BadPeer(String),
    /// Two `--peers` entries name the same id with different addresses.
    #[error("--peers names node {0} twice")]
    DuplicatePeer(NodeId),
    /// No other node: a cluster of one has nothing to elect.
    #[error("--peers names no node other than this one ({0}); a cluster needs at least 2 nodes")]
    NoPeers(NodeId),
}

/// Parses `--peers`: `ID=HOST:PORT` entries separated by commas. The node's own id may appear
/// (so every node can get the same list); it is returned too and the runtime skips it.
///
/// # Errors
/// A `ClusterConfigError` naming the bad entry.
pub fn parse_peers(text: &str) -> Result<Vec<PeerAddr>, ClusterConfigError> {
    let mut peers: Vec<PeerAddr> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ClusterConfigError::BadPeer(entry.to_owned());
        let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        let valid_addr = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_addr {
            return Err(bad());
        }
        if let Some(existing) = peers.iter().find(|p| p.id == id) {
            if existing.addr != addr {
                return Err(ClusterConfigError::DuplicatePeer(id));
            }
            continue;
        }
        peers.push(PeerAddr {
            id,
            addr: addr.to_owned(),
        });
    }
    Ok(peers)
}

/// Everything a server needs to join a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id.
    pub id: NodeId,
    /// The nodes of the cluster (static membership); this node's own entry, if present, is skipped.
    pub peers: Vec<PeerAddr>,
    /// The cluster's token, sent on every message (the server's token).
    pub token: Option<String>,
    /// The JSON-lines event log this node appends to.
    pub log_path: PathBuf,
    /// Where the node's persistent state (term, vote, Lamport reserve) lives.
    pub state_path: PathBuf,
    /// Timers; the same on every node.
    pub timing: Timing,
}

impl ClusterConfig {
    /// A configuration with default timing and paths in the default state directory.
    ///
    /// # Errors
    /// `NoPeers` when `peers` names no other node.
    pub fn new(id: NodeId, peers: Vec<PeerAddr>) -> Result<ClusterConfig, ClusterConfigError> {
        if !peers.iter().any(|peer| peer.id != id) {
            return Err(ClusterConfigError::NoPeers(id));
        }
        let dir = default_state_dir();
        Ok(ClusterConfig {
            id,
            peers,
            token: None,
            log_path: dir.join(format!("cluster-node-{id}.log")),
            state_path: dir.join(format!("cluster-node-{id}.state.json")),
            timing: Timing::default(),
        })
    }

    /// The other nodes (this node's own entry left out).
    pub fn others(&self) -> impl Iterator<Item = &PeerAddr> {
        self.peers.iter().filter(move |peer| peer.id != self.id)
    }
}

/// `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`, else a directory under the temp dir.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kiln");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/kiln");
    }
    std::env::temp_dir().join("kiln-state")
}

/// Timing scaled to a heartbeat period: failure detection after 4 missed heartbeats (3 made
/// followers start elections whenever a shared, loaded machine stalled a process for 300 ms;
/// re-election still takes about 0.5 s at 100 ms heartbeats), leader leases of 3 heartbeats, a
/// lock lease of at least a second so a busy machine does not lose a running job's lock, and
/// retries every heartbeat.
pub fn timing_for_heartbeat(heartbeat_ms: u64) -> Timing {
    let heartbeat_ms = heartbeat_ms.max(1);
    Timing {
        heartbeat_ms,
        failure_timeout_ms: heartbeat_ms * 4,
        election_timeout_ms: heartbeat_ms,
        leader_lease_ms: heartbeat_ms * 3,
        lock_lease_ms: (heartbeat_ms * 3).max(1000),
        request_retry_ms: heartbeat_ms,
        log_heartbeats: false,
    }
}

/// Why an exclusive job did not get the lock.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LockError {
    /// The wait ran out.
    #[error(
        "could not get the cluster lock within {waited_ms} ms (the job's time limit): {situation}"
    )]
    Timeout {
        /// How long the job waited.
        waited_ms: u64,
        /// What the node knew when it gave up.
        situation: String,
    },
    /// The runtime has stopped.
    #[error("the cluster runtime of this server has stopped")]
    Stopped,
}

enum Command {
    Deliver(Envelope),
    Request(RequestId),
    Release(RequestId),
    Record(Event),
    Serve(TcpStream, Box<Request>),
}

/// What the node thread publishes for other threads.
#[derive(Debug)]
struct Published {
    status: NodeStatus,
    /// Peers the latest send to failed.
    unreachable: Vec<NodeId>,
    grants: HashMap<RequestId, FencingToken>,
    lost: HashSet<RequestId>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    commands: Mutex<Sender<Command>>,
    published: Mutex<Published>,
    changed: Condvar,
    stop: AtomicBool,
    next_answer: AtomicU64,
}

/// A running cluster runtime; dropping it stops the node thread and the senders.
#[derive(Debug)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ClusterHandle {
    /// Opens the log and state files and starts the node, its senders and its answering thread.
    ///
    /// # Errors
    /// If the log or state directory cannot be created, the log cannot be opened, the state file
    /// exists but does not parse, or a thread cannot start.
    pub fn start(config: ClusterConfig) -> io::Result<ClusterHandle> {
        for path in [&config.log_path, &config.state_path] {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|error| {
                    io::Error::new(
                        error.kind(),
                        format!("cannot create {}: {error}", dir.display()),
                    )
                })?;
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_path)
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "cannot open the cluster log {}: {error}",
                        config.log_path.display()
                    ),
                )
            })?;
        let peer_ids: Vec<NodeId> = config.others().map(|peer| peer.id).collect();
        let node = match read_state(&config.state_path)? {
            Some(state) => Node::restore(config.id, peer_ids, config.timing, state),
            None => Node::new(config.id, peer_ids, config.timing),
        };
        let peers: Vec<(NodeId, String)> = config
            .others()
            .map(|peer| (peer.id, peer.addr.clone()))
            .collect();
        let senders = PeerSenders::start(&peers, config.token.clone())?;
        let (sender, receiver) = mpsc::channel();
        let (answer_sender, answer_receiver) = mpsc::channel();
        let inner = Arc::new(Inner {
            published: Mutex::new(Published {
                status: node.status(monotonic_ms()),
                unreachable: Vec::new(),
                grants: HashMap::new(),
                lost: HashSet::new(),
            }),
            config,
            commands: Mutex::new(sender),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            next_answer: AtomicU64::new(0),
        });
        let node_thread = {
            let inner = Arc::clone(&inner);
            let mut runner = Runner {
                node,
                log,
                senders,
                inner: Arc::clone(&inner),
                answers: answer_sender,
            };
            std::thread::Builder::new()
                .name("kiln-cluster".into())
                .spawn(move || runner.run(&receiver))?
        };
        let answer_thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("kiln-cluster-answer".into())
                .spawn(move || answer_loop(&inner, &answer_receiver))?
        };
        tracing::info!(
            node = %inner.config.id,
            peers = inner.config.others().count(),
            log = %inner.config.log_path.display(),
            "cluster node started"
        );
        Ok(ClusterHandle {
            inner,
            threads: Mutex::new(vec![node_thread, answer_thread]),
        })
    }

    /// The configuration the runtime runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The node's status as of its latest tick.
    pub fn status(&self) -> Option<NodeStatus> {
        self.inner
            .published
            .lock()
            .ok()
            .map(|published| published.status.clone())
    }

    /// Hands an envelope that arrived from a peer to the node; never blocks.
    pub fn deliver(&self, envelope: Envelope) {
        self.command(Command::Deliver(envelope));
    }

    /// Logs a job event in the node's log, stamped with its Lamport time.
    pub fn record(&self, event: Event) {
        self.command(Command::Record(event));
    }

    /// Answers a `CLUSTER-STATUS` or `CLUSTER-LOG` request on `stream` (a blocking socket) from the
    /// runtime's answering thread.
    pub fn serve(&self, stream: TcpStream, request: Request) {
        self.command(Command::Serve(stream, Box::new(request)));
    }

    /// Asks for the cluster lock under `request_id` and waits up to `timeout` for the grant.
    /// On timeout the request is withdrawn, so it can never be granted later.
    ///
    /// # Errors
    /// `LockError::Timeout` with what the node knew, or `Stopped`.
    pub fn acquire(
        &self,
        request_id: RequestId,
        timeout: Duration,
    ) -> Result<FencingToken, LockError> {
        let started = Instant::now();
        self.command(Command::Request(request_id));
        let Ok(mut published) = self.inner.published.lock() else {
            return Err(LockError::Stopped);
        };
        loop {
            if let Some(fence) = published.grants.get(&request_id) {
                return Ok(*fence);
            }
            if self.inner.stop.load(Ordering::SeqCst) {
                return Err(LockError::Stopped);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                let status = published.status.clone();
                let unreachable = published.unreachable.clone();
                drop(published);
                self.release(request_id);
                // A follower cannot tell whether its coordinator still has a majority: ask it.
                let leader_status = status
                    .leader
                    .filter(|&leader| leader != status.id)
                    .and_then(|leader| self.inner.config.others().find(|p| p.id == leader))
                    .and_then(|peer| {
                        let client =
                            Client::new(peer.addr.clone(), self.inner.config.token.clone())
                                .with_connect_timeout(PEER_STATUS_TIMEOUT)
                                .with_read_timeout(Some(PEER_STATUS_TIMEOUT));
                        remote::fetch_node_status(&client).ok()
                    });
                let situation = describe_wait(
                    &status,
                    leader_status.as_ref(),
                    &unreachable,
                    self.inner.config.others().count() + 1,
                );
                return Err(LockError::Timeout {
                    waited_ms: crate::exec::millis(waited),
                    situation,
                });
            }
            let wait = (timeout - waited).min(Duration::from_millis(50));
            published = match self.inner.changed.wait_timeout(published, wait) {
                Ok((published, _)) => published,
                Err(_) => return Err(LockError::Stopped),
            };
        }
    }

    /// Whether the lock held under `request_id` was lost (its lease ran out) since it was granted.
    pub fn lost(&self, request_id: RequestId) -> bool {
        self.inner
            .published
            .lock()
            .is_ok_and(|published| published.lost.contains(&request_id))
    }

    /// Gives the lock back, or withdraws a request not yet granted.
    pub fn release(&self, request_id: RequestId) {
        self.command(Command::Release(request_id));
    }

    /// Reads this node's log from its file, keeping events after Lamport time `since`.
    ///
    /// # Errors
    /// If the file cannot be read.
    pub fn read_log(&self, since: u64) -> io::Result<Vec<LogEvent>> {
        read_log_file(&self.inner.config.log_path, since)
    }

    /// Stops the node thread, its senders and the answering thread, and waits for them.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
        let threads = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(_) => return,
        };
        for thread in threads {
            let _ = thread.join();
        }
    }

    fn command(&self, command: Command) {
        if let Ok(sender) = self.inner.commands.lock() {
            // The node thread only goes away at shutdown; commands after that are moot.
            let _ = sender.send(command);
        }
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads a JSON-lines cluster log, keeping events after Lamport time `since`. Lines that do not
/// parse (a line cut short by a crash) are skipped.
///
/// # Errors
/// If the file cannot be read.
pub fn read_log_file(path: &Path, since: u64) -> io::Result<Vec<LogEvent>> {
    let file = File::open(path)?;
    let mut events = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(event) = LogEvent::from_json_line(&line)
            && event.lamport > since
        {
            events.push(event);
        }
    }
    Ok(events)
}

fn read_state(path: &Path) -> io::Result<Option<PersistentState>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the cluster state file {} is damaged ({error}); move it away to start the node afresh",
                    path.display()
                ),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Writes the state to a temporary file and renames it over the old one, so a crash leaves either
/// the old or the new state. (A process crash, the failure the cluster tolerates, keeps written
/// data in the page cache; surviving power loss would also need an fsync here.)
fn write_state(path: &Path, state: &PersistentState) -> io::Result<()> {
    let text = serde_json::to_string(state).map_err(io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path)
}

/// Says why a lock wait ran out. `leader_status` is what the believed coordinator said about
/// itself when asked, if it answered.
fn describe_wait(
    status: &NodeStatus,
    leader_status: Option<&NodeStatus>,
    unreachable: &[NodeId],
    cluster_size: usize,
) -> String {
    let majority = cluster_size / 2 + 1;
    let answering = cluster_size - unreachable.len();
    if answering < majority {
        let names: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
        return format!(
            "node {} cannot reach nodes {}, so only {answering} of {cluster_size} nodes answer and there is no acting coordinator (that needs a majority, {majority})",
            status.id,
            names.join(", ")
        );
    }
    match status.leader {
        Some(leader) if leader == status.id && !status.acting => format!(
            "node {leader} claims term {} but there is no acting coordinator: no majority ({majority} of {cluster_size} nodes) acknowledges it",
            status.term
        ),
        Some(leader) if leader_status.is_some_and(|l| !l.acting) => format!(
            "node {leader} claims term {} but there is no acting coordinator: no majority ({majority} of {cluster_size} nodes) acknowledges it",
            status.term
        ),
        None => format!(
            "node {} knows no acting coordinator (electing one needs a majority, {majority} of {cluster_size} nodes)",
            status.id
        ),
        Some(leader) => format!(
            "node {leader} coordinates term {}, but the lock was not granted in time (held by another job, or the coordinator lost its majority)",
            status.term
        ),
    }
}

/// The node thread's state.
struct Runner {
    node: Node,
    log: File,
    senders: PeerSenders,
    inner: Arc<Inner>,
    answers: Sender<(TcpStream, Box<Request>)>,
}

impl Runner {
    fn run(&mut self, commands: &Receiver<Command>) {
        let mut next_tick = Instant::now();
        while !self.inner.stop.load(Ordering::SeqCst) {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait) {
                Ok(command) => {
                    self.apply(command);
                    while let Ok(command) = commands.try_recv() {
                        self.apply(command);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                let outputs = self.node.on_tick(monotonic_ms());
                self.carry_out(outputs);
                next_tick = Instant::now() + TICK;
            }
            self.publish();
        }
        self.senders.stop();
    }

    fn apply(&mut self, command: Command) {
        let now = monotonic_ms();
        let outputs = match command {
            Command::Deliver(envelope) => self.node.on_message(now, envelope),
            Command::Request(request_id) => self.node.request_lock(now, request_id),
            Command::Release(request_id) => {
                if let Ok(mut published) = self.inner.published.lock() {
                    published.grants.remove(&request_id);
                    published.lost.remove(&request_id);
                }
                self.node.release_lock(now, request_id)
            }
            Command::Record(event) => self.node.record(now, event),
            Command::Serve(stream, request) => {
                let _ = self.answers.send((stream, request));
                Vec::new()
            }
        };
        self.carry_out(outputs);
    }

    /// Carries out the node's outputs. Log lines go to the file first (they describe what the
    /// node already decided); then, in order, state is persisted before any later send or grant.
    fn carry_out(&mut self, outputs: Vec<Output>) {
        if outputs.is_empty() {
            return;
        }
        let mut lines = String::new();
        for output in &outputs {
            if let Output::Log(event) = output {
                lines.push_str(&event.to_json_line());
                lines.push('\n');
            }
        }
        if !lines.is_empty()
            && let Err(error) = self.log.write_all(lines.as_bytes())
        {
            tracing::error!(%error, "cannot append to the cluster log");
        }
        let mut woke = false;
        for output in outputs {
            match output {
                Output::Send(envelope) => self.senders.send(envelope),
                Output::Persist(state) => {
                    if let Err(error) = write_state(&self.inner.config.state_path, &state) {
                        // Acting on later outputs without the vote on disk could vote twice
                        // after a crash: drop them (the algorithms treat it as message loss).
                        tracing::error!(%error, "cannot persist cluster state; dropping this step's messages");
                        return;
                    }
                }
                Output::Granted { request_id, fence } => {
                    if let Ok(mut published) = self.inner.published.lock() {
                        published.grants.insert(request_id, fence);
                    }
                    woke = true;
                }
                Output::LockLost { request_id, fence } => {
                    tracing::warn!(request = %request_id, %fence, "cluster lock lease ran out while held");
                    if let Ok(mut published) = self.inner.published.lock() {
                        published.lost.insert(request_id);
                    }
                    woke = true;
                }
                Output::Log(_) => {}
            }
        }
        if woke {
            self.inner.changed.notify_all();
        }
    }

    fn publish(&self) {
        let status = self.node.status(monotonic_ms());
        let unreachable = self.senders.unreachable();
        if let Ok(mut published) = self.inner.published.lock() {
            published.status = status;
            published.unreachable = unreachable;
        }
    }
}

/// Answers `CLUSTER-STATUS` and `CLUSTER-LOG` one at a time, so a slow reader or peer never
/// delays the node thread.
fn answer_loop(inner: &Inner, requests: &Receiver<(TcpStream, Box<Request>)>) {
    while !inner.stop.load(Ordering::SeqCst) {
        match requests.recv_timeout(Duration::from_millis(100)) {
            Ok((stream, request)) => answer(inner, stream, &request),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn answer(inner: &Inner, mut stream: TcpStream, request: &Request) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let n = inner.next_answer.fetch_add(1, Ordering::Relaxed) + 1;
    let mut bytes = Status::Ok {
        job_id: format!("cluster-{}-{n}", inner.config.id),
    }
    .encode();
    let (channel, body, verdict) = match request.head.intent() {
        Intent::ClusterStatus => {
            let local_only = request
                .head
                .extra("scope")
                .is_some_and(|scope| scope.eq_ignore_ascii_case("local"));
            let body = if local_only {
                local_status(inner).map(|status| serde_json::to_vec(&status))
            } else {
                Some(serde_json::to_vec(&gather_status(inner)))
            };
            match body {
                Some(Ok(mut body)) => {
                    // One line, ending like a line, for people reading with nc.
                    body.push(b'\n');
                    (remote::STATUS_CHANNEL, body, Verdict::Ok)
                }
                _ => (remote::STATUS_CHANNEL, Vec::new(), Verdict::InternalError),
            }
        }
        Intent::ClusterLog => {
            let since = request
                .head
                .extra("since-lamport")
                .and_then(|value| value.parse().ok())
                .unwrap_or(0);
            match read_log_file(&inner.config.log_path, since) {
                Ok(events) => {
                    let mut body = String::new();
                    for event in events {
                        body.push_str(&event.to_json_line());
                        body.push('\n');
                    }
                    (remote::LOG_CHANNEL, body.into_bytes(), Verdict::Ok)
                }
                Err(error) => {
                    tracing::error!(%error, "cannot read the cluster log");
                    (remote::LOG_CHANNEL, Vec::new(), Verdict::InternalError)
                }
            }
        }
        _ => (remote::STATUS_CHANNEL, Vec::new(), Verdict::InternalError),
    };
    bytes.extend_from_slice(&Frame::new(Channel::Other(channel.into()), body).encode());
    let mut result = Fields::new();
    result.push("verdict", verdict);
    bytes.extend_from_slice(&Frame::new(Channel::Result, result.encode()).encode());
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn local_status(inner: &Inner) -> Option<NodeStatus> {
    inner
        .published
        .lock()
        .ok()
        .map(|published| published.status.clone())
}

/// This node's status plus each peer's own (`Scope: local`), asked in parallel with a short
/// timeout; a peer that does not answer is reported unreachable.
fn gather_status(inner: &Inner) -> ClusterStatus {
    let config = &inner.config;
    let own_addr = config
        .peers
        .iter()
        .find(|peer| peer.id == config.id)
        .map(|peer| peer.addr.clone())
        .unwrap_or_default();
    let mut nodes = vec![NodeReport {
        id: config.id,
        addr: own_addr,
        reachable: true,
        status: local_status(inner),
        error: None,
    }];
    let peers: Vec<&PeerAddr> = config.others().collect();
    let reports: Vec<NodeReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = peers
            .iter()
            .map(|peer| {
                let token = config.token.clone();
                scope.spawn(move || {
                    let client = Client::new(peer.addr.clone(), token)
                        .with_connect_timeout(PEER_STATUS_TIMEOUT)
                        .with_read_timeout(Some(PEER_STATUS_TIMEOUT));
                    match remote::fetch_node_status(&client) {
                        Ok(status) => NodeReport {
                            id: peer.id,
                            addr: peer.addr.clone(),
                            reachable: true,
                            status: Some(status),
                            error: None,
                        },
                        Err(error) => NodeReport {
                            id: peer.id,
                            addr: peer.addr.clone(),
                            reachable: false,
                            status: None,
                            error: Some(error.to_string()),
                        },
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&peers)
            .map(|(handle, peer)| {
                handle.join().unwrap_or_else(|_| NodeReport {
                    id: peer.id,
                    addr: peer.addr.clone(),
                    reachable: false,
                    status: None,
                    error: Some("status thread failed".into()),
                })
            })
            .collect()
    });
    nodes.extend(reports);
    nodes.sort_by_key(|node| node.id);
    ClusterStatus {
        answered_by: config.id,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_errors_name_the_entry() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=node2:7000,1=127.0.0.1:7001").expect("ok");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1].addr, "node2:7000");
        assert_eq!(
            parse_peers("x=1:2"),
            Err(ClusterConfigError::BadPeer("x=1:2".into()))
        );
        assert_eq!(
            parse_peers("2=host"),
            Err(ClusterConfigError::BadPeer("2=host".into()))
        );
        assert_eq!(
            parse_peers("2=a:1,2=b:1"),
            Err(ClusterConfigError::DuplicatePeer(NodeId(2)))
        );
        let lonely = ClusterConfig::new(NodeId(1), parse_peers("1=a:1").expect("ok"));
        assert_eq!(lonely, Err(ClusterConfigError::NoPeers(NodeId(1))));
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert_eq!(read_state(&path).expect("absent is fine"), None);
        let state = PersistentState {
            term: super::super::message::Term(4),
            voted_for: Some(NodeId(3)),
            lamport: 2048,
        };
        write_state(&path, &state).expect("write");
        assert_eq!(read_state(&path).expect("read"), Some(state));
        fs::write(&path, "{").expect("damage");
        let error = read_state(&path).expect_err("damaged");
        assert!(error.to_string().contains("damaged"), "{error}");
    }

    #[test]
    fn scaled_timing_keeps_the_ratios() {
        let timing = timing_for_heartbeat(100);
        assert_eq!(timing.failure_timeout_ms, 400);
        assert_eq!(timing.lock_lease_ms, 1000);
        assert_eq!(timing_for_heartbeat(500).lock_lease_ms, 1500);
    }
}
