//! One cluster node as a state machine without I/O: bully election with terms and a majority
//! lease, the coordinator's lock table, and the node's own lock client.
//!
//! Inputs are messages (`Node::on_message`), the passage of time (`Node::on_tick`) and the local
//! lock API (`Node::request_lock`, `Node::release_lock`). Every input takes the current time in
//! milliseconds and returns `Output`s to carry out in order: state to persist, envelopes to send,
//! lock events for the local user, and log lines. Nothing here reads a clock, opens a socket or sleeps, so
//! `super::sim` drives this same code through crashes and partitions deterministically, and the
//! server only carries envelopes (`super::message`) and appends log lines (`super::log`).
//!
//! Why the rules are safe:
//! - *One acting coordinator per term.* Acknowledging a `COORDINATOR` or `HEARTBEAT` is a vote,
//!   given to at most one node per term and persisted before the acknowledgement is sent. A
//!   coordinator acts (grants, renews) only while acknowledgements from a majority, counting
//!   itself, are younger than `leader_lease_ms`, and two majorities share a node.
//! - *A deposed coordinator stops in bounded time.* Its lease is counted from when it *sent* the
//!   acknowledged heartbeat. A node that acknowledged a newer term refuses older ones, so once a
//!   new coordinator has its majority at time `b`, every older coordinator's last majority round
//!   was sent before `b`, and it stops acting by `b + leader_lease_ms`.
//! - *Lock holders never overlap.* A client counts its lease from the stamp of the request or
//!   renewal that the grant echoes, which it sent before the coordinator granted, so the client's
//!   lease ends no later than the coordinator's. A new coordinator grants only after every node
//!   reported its lock state (a node that reported refuses older terms, so it cannot be granted
//!   by an old coordinator afterwards), or after `leader_lease_ms + lock_lease_ms`, by which time
//!   any lease an old coordinator granted or renewed has run out. Fencing tokens are (term, seq)
//!   and a node never coordinates a term twice (a restarted node takes a new term), so tokens
//!   strictly increase.
//!
//! Liveness: clients repeat requests every `request_retry_ms` to whoever they believe leads, so a
//! queue lost with a coordinator is rebuilt; a coordinator that cannot reach a majority for a
//! while starts a new election; bully hands leadership to the highest node that is reachable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::lamport::LamportClock;
use super::log::{Event, FreeReason, LogEvent};
use super::message::{Envelope, FencingToken, Message, NodeId, RequestId, Term};

/// How many Lamport ticks a node reserves at a time in its persisted state, so that a restarted
/// node never reuses a Lamport time without persisting on every tick.
const LAMPORT_RESERVE: u64 = 1024;

/// How many finished request ids a coordinator and a client remember, to recognise late repeats.
const FINISHED_MEMORY: usize = 1024;

/// Timers and lease lengths, in milliseconds, plus what to log. Every node of a cluster should use
/// the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// How often the coordinator sends `HEARTBEAT`s.
    pub heartbeat_ms: u64,
    /// How long a follower waits without a heartbeat before it starts an election.
    pub failure_timeout_ms: u64,
    /// How long a candidate waits for an `ANSWER` from a higher node before it announces itself.
    pub election_timeout_ms: u64,
    /// How long a majority acknowledgement lets the coordinator act, counted from when it sent the
    /// acknowledged heartbeat.
    pub leader_lease_ms: u64,
    /// How long a lock grant or renewal lasts.
    pub lock_lease_ms: u64,
    /// How often a waiting client repeats its request.
    pub request_retry_ms: u64,
    /// Whether `HEARTBEAT` and `ACK` sends and receives are logged (they are most of the traffic).
    pub log_heartbeats: bool,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 100,
            failure_timeout_ms: 300,
            election_timeout_ms: 100,
            leader_lease_ms: 300,
            lock_lease_ms: 300,
            request_retry_ms: 100,
            log_heartbeats: false,
        }
    }
}

impl Timing {
    /// How long a candidate that got an `ANSWER` waits for `COORDINATOR` before it starts over:
    /// long enough for the chain of higher candidates above it to time out in turn.
    fn await_coordinator_ms(&self, cluster_size: usize) -> u64 {
        self.election_timeout_ms * cluster_size as u64 + self.heartbeat_ms
    }

    /// A holder renews once less than this much of its lease is left.
    fn renew_when_left_ms(&self) -> u64 {
        self.lock_lease_ms * 2 / 3
    }

    /// A holder repeats an unanswered renewal this often.
    fn renew_retry_ms(&self) -> u64 {
        (self.lock_lease_ms / 6).max(1)
    }

    /// A queued request that its client stopped repeating for this long is dropped.
    fn queue_forget_ms(&self) -> u64 {
        self.request_retry_ms * 5
    }

    /// A coordinator without a majority for this long gives up and starts a new election.
    fn give_up_ms(&self) -> u64 {
        self.failure_timeout_ms + self.election_timeout_ms
    }
}

/// What a node must keep across a crash. The server writes it (e.g. as JSON) whenever a node
/// outputs `Output::Persist`, *before* sending any envelope that follows in the same output list,
/// and passes it to `Node::restore` on restart. Everything else (lock table, queue, held locks) is
/// volatile: a restarted node holds no lock and is not coordinator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// The highest term seen.
    pub term: Term,
    /// Whom the node acknowledged as coordinator in `term`: its vote, which it must not change.
    pub voted_for: Option<NodeId>,
    /// A Lamport time no higher than any the node has used: it resumes from here.
    pub lamport: u64,
}

/// What a node asks its host to do after an input, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Deliver this envelope to `envelope.to` (best effort: loss is tolerated).
    Send(Envelope),
    /// Durably store this state before carrying out the outputs after it.
    Persist(PersistentState),
    /// The local client now holds the lock for `request_id`; present `fence` to fenced resources.
    Granted {
        /// The request granted.
        request_id: RequestId,
        /// Its fencing token.
        fence: FencingToken,
    },
    /// The local client's lease for `request_id` ran out: stop using the lock.
    LockLost {
        /// The request whose lock was lost.
        request_id: RequestId,
        /// Its fencing token.
        fence: FencingToken,
    },
    /// Append this line to the node's log.
    Log(LogEvent),
}

/// A node's part in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a coordinator, or is about to start an election.
    Follower,
    /// Sent `ELECTION` to higher nodes and waits for an `ANSWER`.
    Candidate,
    /// A higher node answered; waits for its `COORDINATOR`.
    AwaitingCoordinator,
    /// Announced itself coordinator for its term (acting only with a majority: see `acting`).
    Coordinator,
}

/// The coordinator's record of who holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holding node.
    pub node: NodeId,
    /// The granted request.
    pub request_id: RequestId,
    /// The grant's token.
    pub fence: FencingToken,
    /// When the coordinator considers the lease over, on the coordinator's clock.
    pub lease_until_ms: u64,
}

/// A request in the coordinator's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedLock {
    /// The requesting node.
    pub node: NodeId,
    /// The request.
    pub request_id: RequestId,
}

/// A snapshot of a node for `kiln cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Its current term.
    pub term: Term,
    /// Its part in the election.
    pub role: Role,
    /// Whom it believes is coordinator (itself when coordinator).
    pub leader: Option<NodeId>,
    /// Whether it is a coordinator acting with a majority right now.
    pub acting: bool,
    /// Its Lamport time.
    pub lamport: u64,
    /// As coordinator: the current holder.
    pub lock_holder: Option<LockHolder>,
    /// As coordinator: the waiting requests, first first.
    pub queue: Vec<QueuedLock>,
    /// As coordinator: the last token it granted.
    pub fence: Option<FencingToken>,
    /// As client: the locks it holds under a valid lease.
    pub held: Vec<(RequestId, FencingToken)>,
    /// As client: its requests not yet granted.
    pub pending: Vec<RequestId>,
}

/// The election phase, with the timers that belong to it.
#[derive(Debug)]
enum Phase {
    Follower {
        leader: Option<NodeId>,
        /// When the leader was last heard (or the node started following / gave up on it).
        last_contact: u64,
    },
    Candidate {
        deadline: u64,
    },
    Awaiting {
        deadline: u64,
    },
    Leader(Box<Coordinator>),
}

/// A bounded set of finished keys, forgetting the oldest.
#[derive(Debug)]
struct Finished<K: std::hash::Hash + Eq + Copy, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Copy, V> Finished<K, V> {
    fn new() -> Self {
        Finished {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
            if self.order.len() > FINISHED_MEMORY
                && let Some(oldest) = self.order.pop_front()
            {
                self.map.remove(&oldest);
            }
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    fn remove(&mut self, key: &K) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    node: NodeId,
    request_id: RequestId,
    /// The client's stamp to echo in the grant: the latest one received.
    stamp: u64,
    /// When the client last repeated the request (coordinator's clock).
    refreshed_at: u64,
}

/// State that exists only while the node is coordinator of its current term.
#[derive(Debug)]
struct Coordinator {
    last_heartbeat_sent: u64,
    /// Per peer, the latest stamp it acknowledged in this term.
    acks: HashMap<NodeId, u64>,
    /// Whether it was acting at the last evaluation (to log transitions once).
    was_acting: bool,
    ever_acted: bool,
    /// When it last acted, or announced itself.
    last_acting_at: u64,
    /// Nodes (itself included) that reported their lock state in this term.
    reported: BTreeSet<NodeId>,
    /// When leases granted by older coordinators are certainly over.
    old_leases_over_at: u64,
    gathered: bool,
    seq: u64,
    last_fence: Option<FencingToken>,
    holder: Option<LockHolder>,
    queue: VecDeque<Queued>,
    finished: Finished<(NodeId, RequestId), FreeReason>,
}

impl Coordinator {
    fn new(now: u64) -> Self {
        Coordinator {
            last_heartbeat_sent: now,
            acks: HashMap::new(),
            was_acting: false,
            ever_acted: false,
            last_acting_at: now,
            reported: BTreeSet::new(),
            old_leases_over_at: u64::MAX,
            gathered: false,
            seq: 0,
            last_fence: None,
            holder: None,
            queue: VecDeque::new(),
            finished: Finished::new(),
        }
    }

    fn holds(&self, node: NodeId, request_id: RequestId) -> bool {
        self.holder
            .is_some_and(|h| h.node == node && h.request_id == request_id)
    }
}

/// The local client's view of one of its requests.
#[derive(Debug, Clone, Copy)]
enum ClientLock {
    Pending {
        /// When and to whom the request was last sent.
        last_sent: Option<(u64, NodeId)>,
    },
    Held {
        fence: FencingToken,
        lease_until: u64,
        last_renew_sent: u64,
    },
}

/// One cluster node: elections, the coordinator's lock table, and its own lock client.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    peers: Vec<NodeId>,
    timing: Timing,
    clock: LamportClock,
    /// The Lamport time persisted as the restart point.
    lamport_reserved: u64,
    term: Term,
    voted_for: Option<NodeId>,
    phase: Phase,
    started: bool,
    restored: bool,
    locks: BTreeMap<RequestId, ClientLock>,
    finished_requests: Finished<RequestId, ()>,
    now: u64,
    out: Vec<Output>,
    loopback: VecDeque<Envelope>,
}

impl Node {
    /// A node starting for the first time. `peers` are the other nodes (the node's own id is
    /// ignored if listed). It starts an election at its first input, as bully nodes do on start.
    pub fn new(id: NodeId, peers: Vec<NodeId>, timing: Timing) -> Node {
        let mut node = Node::restore(id, peers, timing, PersistentState::default());
        node.restored = false;
        node
    }

    /// A node restarting after a crash with the state it last persisted.
    pub fn restore(id: NodeId, peers: Vec<NodeId>, timing: Timing, state: PersistentState) -> Node {
        let mut peers: Vec<NodeId> = peers.into_iter().filter(|&p| p != id).collect();
        peers.sort();
        peers.dedup();
        Node {
            id,
            peers,
            timing,
            clock: LamportClock::starting_at(state.lamport),
            lamport_reserved: state.lamport,
            term: state.term,
            voted_for: state.voted_for,
            phase: Phase::Follower {
                leader: None,
                last_contact: 0,
            },
            started: false,
            restored: true,
            locks: BTreeMap::new(),
            finished_requests: Finished::new(),
            now: 0,
            out: Vec::new(),
            loopback: VecDeque::new(),
        }
    }

    // ----- Inputs -----

    /// Time passed: heartbeats, timeouts, lease expiry, retries. Call it often (every 5-10 ms is
    /// plenty; timers fire at the first tick after they are due).
    pub fn on_tick(&mut self, now: u64) -> Vec<Output> {
        self.begin(now);
        self.tick_election();
        self.tick_client();
        self.finish()
    }

    /// A message arrived. Envelopes not addressed to this node, or claiming to come from it, are
    /// ignored.
    pub fn on_message(&mut self, now: u64, envelope: Envelope) -> Vec<Output> {
        self.begin(now);
        if envelope.to == self.id && envelope.from != self.id {
            self.handle(envelope);
        }
        self.finish()
    }

    /// The local client asks for the lock under a client-chosen id. Asking again with an id that
    /// is pending, held or finished does nothing, so callers may repeat themselves.
    pub fn request_lock(&mut self, now: u64, request_id: RequestId) -> Vec<Output> {
        self.begin(now);
        if !self.locks.contains_key(&request_id)
            && self.finished_requests.get(&request_id).is_none()
        {
            self.locks
                .insert(request_id, ClientLock::Pending { last_sent: None });
            self.log(Event::Requested { request_id });
            self.tick_client();
        }
        self.finish()
    }

    /// The local client gives the lock back, or withdraws a request not yet granted.
    pub fn release_lock(&mut self, now: u64, request_id: RequestId) -> Vec<Output> {
        self.begin(now);
        let leader = self.leader();
        match self.locks.remove(&request_id) {
            Some(ClientLock::Held { fence, .. }) => {
                self.finished_requests.insert(request_id, ());
                self.log(Event::Released { request_id, fence });
                if let Some(leader) = leader {
                    self.send(
                        leader,
                        Message::LockRelease {
                            request_id,
                            fence: Some(fence),
                        },
                    );
                }
            }
            Some(ClientLock::Pending { .. }) => {
                self.finished_requests.insert(request_id, ());
                self.log(Event::Cancelled { request_id });
                if let Some(leader) = leader {
                    self.send(
                        leader,
                        Message::LockRelease {
                            request_id,
                            fence: None,
                        },
                    );
                }
            }
            None => {}
        }
        self.finish()
    }

    /// Logs an event that happened on this node outside the cluster logic (a job starting or
    /// finishing), stamped with the node's Lamport clock so it takes its place in the merged order.
    pub fn record(&mut self, now: u64, event: Event) -> Vec<Output> {
        self.begin(now);
        self.log(event);
        self.finish()
    }

    // ----- Queries -----

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The other nodes.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// The timing the node runs with.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The node's current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The node's Lamport time.
    pub fn lamport(&self) -> u64 {
        self.clock.time()
    }

    /// Whom the node believes is coordinator (itself when it is), if anyone.
    pub fn leader(&self) -> Option<NodeId> {
        match &self.phase {
            Phase::Leader(_) => Some(self.id),
            Phase::Follower { leader, .. } => *leader,
            Phase::Candidate { .. } | Phase::Awaiting { .. } => None,
        }
    }

    /// The node's part in the election.
    pub fn role(&self) -> Role {
        match &self.phase {
            Phase::Follower { .. } => Role::Follower,
            Phase::Candidate { .. } => Role::Candidate,
            Phase::Awaiting { .. } => Role::AwaitingCoordinator,
            Phase::Leader(_) => Role::Coordinator,
        }
    }

    /// Whether the node is coordinator and may act at `now`: a majority, counting itself,
    /// acknowledged a heartbeat it sent less than `leader_lease_ms` ago.
    pub fn is_acting(&self, now: u64) -> bool {
        match &self.phase {
            Phase::Leader(coordinator) => now < self.acting_until(coordinator),
            _ => false,
        }
    }

    /// The token for `request_id` if the local client holds its lock under a lease still valid
    /// at `now`. Check it right before touching a fenced resource.
    pub fn lock_fence(&self, now: u64, request_id: RequestId) -> Option<FencingToken> {
        match self.locks.get(&request_id) {
            Some(ClientLock::Held {
                fence, lease_until, ..
            }) if now < *lease_until => Some(*fence),
            _ => None,
        }
    }

    /// Every lock the local client holds under a lease valid at `now`.
    pub fn held_locks(&self, now: u64) -> Vec<(RequestId, FencingToken)> {
        self.locks
            .keys()
            .filter_map(|&id| self.lock_fence(now, id).map(|fence| (id, fence)))
            .collect()
    }

    /// The local client's requests not yet granted.
    pub fn pending_requests(&self) -> Vec<RequestId> {
        self.locks
            .iter()
            .filter(|(_, lock)| matches!(lock, ClientLock::Pending { .. }))
            .map(|(&id, _)| id)
            .collect()
    }

    /// What the node must persist (the same as its latest `Output::Persist`).
    pub fn persistent(&self) -> PersistentState {
        PersistentState {
            term: self.term,
            voted_for: self.voted_for,
            lamport: self.lamport_reserved,
        }
    }

    /// A snapshot for `kiln cluster status`.
    pub fn status(&self, now: u64) -> NodeStatus {
        let coordinator = match &self.phase {
            Phase::Leader(coordinator) => Some(coordinator),
            _ => None,
        };
        NodeStatus {
            id: self.id,
            term: self.term,
            role: self.role(),
            leader: self.leader(),
            acting: self.is_acting(now),
            lamport: self.clock.time(),
            lock_holder: coordinator.and_then(|c| c.holder),
            queue: coordinator
                .map(|c| {
                    c.queue
                        .iter()
                        .map(|q| QueuedLock {
                            node: q.node,
                            request_id: q.request_id,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            fence: coordinator.and_then(|c| c.last_fence),
            held: self.held_locks(now),
            pending: self.pending_requests(),
        }
    }

    // ----- Plumbing -----

    fn begin(&mut self, now: u64) {
        // Time never goes backwards inside the node, even if the host's clock does.
        self.now = self.now.max(now);
        if !self.started {
            self.started = true;
            self.log(Event::Started {
                restored: self.restored,
            });
            self.phase = Phase::Follower {
                leader: None,
                last_contact: self.now,
            };
        }
    }

    fn finish(&mut self) -> Vec<Output> {
        loop {
            while let Some(envelope) = self.loopback.pop_front() {
                self.handle(envelope);
            }
            // A follower that knows no coordinator (just started, or saw a newer term) elects one.
            if matches!(self.phase, Phase::Follower { leader: None, .. }) {
                self.start_election();
            }
            if self.loopback.is_empty() {
                break;
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Advances the Lamport clock for an event, persisting a new restart point first when the
    /// clock reaches the old one.
    fn stamp(&mut self, received: Option<u64>) -> u64 {
        let time = match received {
            Some(received) => self.clock.receive(received),
            None => self.clock.tick(),
        };
        if time >= self.lamport_reserved {
            self.lamport_reserved = time.saturating_add(LAMPORT_RESERVE);
            self.out.push(Output::Persist(self.persistent()));
        }
        time
    }

    fn log(&mut self, event: Event) {
        let lamport = self.stamp(None);
        self.push_log(lamport, event);
    }

    fn push_log(&mut self, lamport: u64, event: Event) {
        self.out.push(Output::Log(LogEvent {
            node: self.id,
            lamport,
            time_ms: self.now,
            term: self.term,
            event,
        }));
    }

    fn logs_message(&self, msg: &Message) -> bool {
        self.timing.log_heartbeats || !msg.is_liveness()
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        let lamport = self.stamp(None);
        if self.logs_message(&msg) {
            self.push_log(
                lamport,
                Event::Send {
                    to,
                    msg: msg.name().to_owned(),
                },
            );
        }
        let envelope = Envelope {
            from: self.id,
            to,
            term: self.term,
            lamport,
            msg,
        };
        if to == self.id {
            // The node's client talking to its own coordinator: same rules, no network.
            self.loopback.push_back(envelope);
        } else {
            self.out.push(Output::Send(envelope));
        }
    }

    fn persist(&mut self) {
        self.out.push(Output::Persist(self.persistent()));
    }

    fn majority(&self) -> usize {
        let cluster_size = self.peers.len() + 1;
        cluster_size / 2 + 1
    }

    /// Until when the coordinator may act, from the acknowledgements it has.
    fn acting_until(&self, coordinator: &Coordinator) -> u64 {
        let needed = self.majority() - 1; // the coordinator counts itself
        if needed == 0 {
            return u64::MAX;
        }
        let mut stamps: Vec<u64> = coordinator.acks.values().copied().collect();
        if stamps.len() < needed {
            return 0;
        }
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        stamps[needed - 1].saturating_add(self.timing.leader_lease_ms)
    }

    fn coordinator_mut(&mut self) -> Option<&mut Coordinator> {
        match &mut self.phase {
            Phase::Leader(coordinator) => Some(coordinator),
            _ => None,
        }
    }

    // ----- Election -----

    fn tick_election(&mut self) {
        let now = self.now;
        match &self.phase {
            Phase::Follower {
                leader: Some(_),
                last_contact,
            } if now > last_contact + self.timing.failure_timeout_ms => {
                self.set_follower(None);
                self.start_election();
            }
            Phase::Follower { leader: None, .. } => self.start_election(),
            Phase::Candidate { deadline } if now >= *deadline => self.announce(),
            Phase::Awaiting { deadline } if now >= *deadline => self.start_election(),
            Phase::Leader(_) => self.tick_coordinator(),
            _ => {}
        }
    }

    /// Bully: ask every higher node; if none answers in time, announce.
    fn start_election(&mut self) {
        if matches!(self.phase, Phase::Leader(_)) {
            self.log(Event::SteppedDown);
        }
        self.log(Event::ElectionStarted);
        let higher: Vec<NodeId> = self
            .peers
            .iter()
            .copied()
            .filter(|&p| p > self.id)
            .collect();
        if higher.is_empty() {
            self.announce();
            return;
        }
        self.phase = Phase::Candidate {
            deadline: self.now + self.timing.election_timeout_ms,
        };
        for peer in higher {
            self.send(peer, Message::Election);
        }
    }

    /// Takes a new term, votes for itself and announces itself coordinator.
    fn announce(&mut self) {
        self.term = self.term.next();
        self.voted_for = Some(self.id);
        self.persist();
        self.phase = Phase::Leader(Box::new(Coordinator::new(self.now)));
        self.log(Event::Announced);
        let now = self.now;
        for peer in self.peers.clone() {
            self.send(peer, Message::Coordinator { stamp: now });
        }
        self.update_acting();
        self.try_grant();
    }

    /// Follows `leader` (or nobody), leaving any other phase, and logs a change.
    fn set_follower(&mut self, leader: Option<NodeId>) {
        let before = self.leader();
        if matches!(self.phase, Phase::Leader(_)) {
            self.log(Event::SteppedDown);
        }
        self.phase = Phase::Follower {
            leader,
            last_contact: self.now,
        };
        if before != leader {
            self.log(Event::LeaderChanged { leader });
        }
    }

    /// Starts following `claimant` if the node follows nobody live, or someone lower; refreshes
    /// the contact time if it already follows `claimant`.
    fn follow(&mut self, claimant: NodeId) {
        let now = self.now;
        let failure_timeout = self.timing.failure_timeout_ms;
        if let Phase::Follower {
            leader,
            last_contact,
        } = &mut self.phase
        {
            if *leader == Some(claimant) {
                *last_contact = now;
                return;
            }
            let live = leader.is_some() && now <= *last_contact + failure_timeout;
            if live && leader.is_some_and(|current| current > claimant) {
                return;
            }
        }
        self.set_follower(Some(claimant));
    }

    /// A newer term: adopt it, forget the vote, and stop coordinating or following the old one.
    fn observe_term(&mut self, term: Term) {
        self.term = term;
        self.voted_for = None;
        self.persist();
        if matches!(self.phase, Phase::Leader(_) | Phase::Follower { .. }) {
            self.set_follower(None);
        }
    }

    fn on_election(&mut self, from: NodeId) {
        self.send(from, Message::Answer);
        let now = self.now;
        match &self.phase {
            Phase::Leader(_) => self.send(from, Message::Coordinator { stamp: now }),
            Phase::Follower {
                leader: Some(_),
                last_contact,
            } if now <= last_contact + self.timing.failure_timeout_ms => {
                // A live coordinator's heartbeats will reach the candidate.
            }
            Phase::Candidate { .. } | Phase::Awaiting { .. } => {}
            Phase::Follower { .. } => self.start_election(),
        }
    }

    fn on_answer(&mut self, from: NodeId) {
        if from > self.id && matches!(self.phase, Phase::Candidate { .. }) {
            self.phase = Phase::Awaiting {
                deadline: self.now + self.timing.await_coordinator_ms(self.peers.len() + 1),
            };
        }
    }

    /// A `COORDINATOR` or `HEARTBEAT` from `claimant` for the current term.
    fn on_claim(&mut self, claimant: NodeId, stamp: u64) {
        if claimant == self.id {
            return;
        }
        let refuse = Message::Ack { stamp, ok: false };
        if matches!(self.phase, Phase::Leader(_)) {
            // Two claimants in one term (they announced at the same time): at most one can hold
            // a majority. The lower yields to the higher.
            self.send(claimant, refuse);
            if claimant > self.id {
                self.set_follower(Some(claimant));
            }
            return;
        }
        if claimant < self.id {
            // Bully: a higher node that sees a lower coordinator takes over.
            self.send(claimant, refuse);
            if !matches!(self.phase, Phase::Candidate { .. } | Phase::Awaiting { .. }) {
                self.start_election();
            }
            return;
        }
        if self.voted_for.is_none_or(|v| v == claimant) {
            if self.voted_for.is_none() {
                self.voted_for = Some(claimant);
                // The vote must be durable before the acknowledgement leaves.
                self.persist();
            }
            self.follow(claimant);
            self.send(claimant, Message::Ack { stamp, ok: true });
        } else {
            // Voted for another claimant in this term: no vote, but follow the higher one so
            // requests go where leadership will settle.
            self.send(claimant, refuse);
            self.follow(claimant);
        }
    }

    fn on_ack(&mut self, from: NodeId, stamp: u64, ok: bool) {
        let now = self.now;
        let id = self.id;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        if !ok {
            // A lower node refusing in our own term voted for another claimant of this term (two
            // nodes took the same term, e.g. one restarted without having persisted it). Until we
            // have acted in this term, take a fresh one: as the higher claimant we win it.
            if from < id && !coordinator.ever_acted {
                self.announce();
            }
            return;
        }
        // A stamp from the future would stretch the lease; trust only what has been sent.
        let stamp = stamp.min(now);
        let entry = coordinator.acks.entry(from).or_insert(stamp);
        *entry = (*entry).max(stamp);
        self.update_acting();
        self.try_grant();
    }

    // ----- Coordinator -----

    fn tick_coordinator(&mut self) {
        let now = self.now;
        let heartbeat_ms = self.timing.heartbeat_ms;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        if now >= coordinator.last_heartbeat_sent + heartbeat_ms {
            coordinator.last_heartbeat_sent = now;
            let unreported: Vec<NodeId> = if coordinator.ever_acted && !coordinator.gathered {
                let reported = coordinator.reported.clone();
                self.peers
                    .iter()
                    .copied()
                    .filter(|p| !reported.contains(p))
                    .collect()
            } else {
                Vec::new()
            };
            for peer in self.peers.clone() {
                self.send(peer, Message::Heartbeat { stamp: now });
            }
            // Queries may be lost: repeat them with the heartbeats until everyone reported.
            for peer in unreported {
                self.send(peer, Message::LockStateQuery);
            }
        }
        self.update_acting();

        let forget_ms = self.timing.queue_forget_ms();
        let give_up_ms = self.timing.give_up_ms();
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        let mut freed = None;
        if let Some(holder) = coordinator.holder
            && holder.lease_until_ms <= now
        {
            coordinator.holder = None;
            coordinator
                .finished
                .insert((holder.node, holder.request_id), FreeReason::Expired);
            freed = Some(holder);
        }
        // A client that stopped repeating its request crashed or gave up: do not grant to it.
        coordinator
            .queue
            .retain(|q| now < q.refreshed_at + forget_ms);
        let give_up = !coordinator.was_acting && now > coordinator.last_acting_at + give_up_ms;
        if let Some(holder) = freed {
            self.log(Event::Freed {
                holder: holder.node,
                request_id: holder.request_id,
                fence: holder.fence,
                reason: FreeReason::Expired,
            });
        }
        if give_up {
            // No majority for a while (partition): start over with a new election.
            self.start_election();
            return;
        }
        self.try_grant();
    }

    /// Logs acting transitions; on first acting in the term, starts gathering lock state.
    fn update_acting(&mut self) {
        let now = self.now;
        let acting = self.is_acting(now);
        let wait_ms = self.timing.leader_lease_ms + self.timing.lock_lease_ms;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        if acting {
            coordinator.last_acting_at = now;
        }
        if acting == coordinator.was_acting {
            return;
        }
        coordinator.was_acting = acting;
        if !acting {
            self.log(Event::LostMajority);
            return;
        }
        if coordinator.ever_acted {
            self.log(Event::Regained);
            return;
        }
        coordinator.ever_acted = true;
        coordinator.old_leases_over_at = now + wait_ms;
        self.log(Event::Elected);
        for peer in self.peers.clone() {
            self.send(peer, Message::LockStateQuery);
        }
        // Its own client reports directly.
        let held = self.held_locks(now).first().copied();
        let pending = self.pending_requests();
        self.on_report(self.id, held, pending, now);
    }

    fn on_query(&mut self, from: NodeId) {
        // Only a coordinator acting in this term asks; a node that knows no one may follow it.
        if matches!(self.phase, Phase::Follower { leader: None, .. }) {
            self.set_follower(Some(from));
        }
        let now = self.now;
        let held = self.held_locks(now).first().copied();
        let pending = self.pending_requests();
        self.send(
            from,
            Message::LockStateReport {
                held,
                pending,
                stamp: now,
            },
        );
    }

    fn on_report(
        &mut self,
        from: NodeId,
        held: Option<(RequestId, FencingToken)>,
        pending: Vec<RequestId>,
        stamp: u64,
    ) {
        let now = self.now;
        let lease_ms = self.timing.lock_lease_ms;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        coordinator.reported.insert(from);
        let mut adopted = None;
        if let Some((request_id, fence)) = held
            && !coordinator.gathered
        {
            match &mut coordinator.holder {
                None => {
                    let holder = LockHolder {
                        node: from,
                        request_id,
                        fence,
                        lease_until_ms: now + lease_ms,
                    };
                    coordinator.holder = Some(holder);
                    adopted = Some(holder);
                }
                Some(holder) if holder.node == from && holder.request_id == request_id => {
                    holder.lease_until_ms = holder.lease_until_ms.max(now + lease_ms);
                }
                Some(_) => {}
            }
            coordinator
                .queue
                .retain(|q| !(q.node == from && q.request_id == request_id));
        }
        if let Some(holder) = adopted {
            self.log(Event::Adopted {
                holder: holder.node,
                request_id: holder.request_id,
                fence: holder.fence,
            });
        }
        for request_id in pending {
            self.on_request(from, request_id, stamp);
        }
        self.check_gathered();
        self.try_grant();
    }

    fn check_gathered(&mut self) {
        let now = self.now;
        let everyone = self.peers.len() + 1;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        if coordinator.gathered || !coordinator.ever_acted {
            return;
        }
        let all_reported = coordinator.reported.len() >= everyone;
        if all_reported || now >= coordinator.old_leases_over_at {
            coordinator.gathered = true;
            let reported = coordinator.reported.len();
            self.log(Event::GatherDone {
                reported,
                waited: !all_reported,
            });
        }
    }

    fn on_request(&mut self, from: NodeId, request_id: RequestId, stamp: u64) {
        let now = self.now;
        let acting = self.is_acting(now);
        let lease_ms = self.timing.lock_lease_ms;
        let leader = self.leader();
        let Some(coordinator) = self.coordinator_mut() else {
            self.send(from, Message::NotLeader { request_id, leader });
            return;
        };
        let stamp = stamp.min(now);
        if coordinator.holds(from, request_id) {
            // The grant was lost: the repeat renews the lease and re-sends the grant.
            if let (true, Some(holder)) = (acting, &mut coordinator.holder) {
                holder.lease_until_ms = now + lease_ms;
                let fence = holder.fence;
                self.send(
                    from,
                    Message::LockGrant {
                        request_id,
                        fence,
                        lease_ms,
                        stamp,
                    },
                );
            }
            return;
        }
        match coordinator.finished.get(&(from, request_id)) {
            Some(FreeReason::Released) => return,
            // Granted but never used before it expired (the grant was lost): queue it again.
            Some(FreeReason::Expired) => coordinator.finished.remove(&(from, request_id)),
            None => {}
        }
        if let Some(queued) = coordinator
            .queue
            .iter_mut()
            .find(|q| q.node == from && q.request_id == request_id)
        {
            queued.stamp = queued.stamp.max(stamp);
            queued.refreshed_at = now;
            return;
        }
        coordinator.queue.push_back(Queued {
            node: from,
            request_id,
            stamp,
            refreshed_at: now,
        });
        self.log(Event::Queued {
            holder: from,
            request_id,
        });
        self.try_grant();
    }

    fn on_renew(&mut self, from: NodeId, request_id: RequestId, stamp: u64) {
        let now = self.now;
        let acting = self.is_acting(now);
        let lease_ms = self.timing.lock_lease_ms;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        if !acting || !coordinator.holds(from, request_id) {
            // Unknown holders are not renewed: their lease ends, as the grant rules assume.
            return;
        }
        let Some(holder) = &mut coordinator.holder else {
            return;
        };
        holder.lease_until_ms = now + lease_ms;
        let fence = holder.fence;
        self.send(
            from,
            Message::LockGrant {
                request_id,
                fence,
                lease_ms,
                stamp: stamp.min(now),
            },
        );
    }

    fn on_release(&mut self, from: NodeId, request_id: RequestId) {
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        let key = (from, request_id);
        let freed = if coordinator.holds(from, request_id) {
            coordinator.holder.take()
        } else {
            coordinator
                .queue
                .retain(|q| !(q.node == from && q.request_id == request_id));
            None
        };
        // Remembered so that a late repeat of the request is not granted again.
        coordinator.finished.insert(key, FreeReason::Released);
        if let Some(holder) = freed {
            self.log(Event::Freed {
                holder: holder.node,
                request_id: holder.request_id,
                fence: holder.fence,
                reason: FreeReason::Released,
            });
            self.try_grant();
        }
    }

    /// Grants to the first queued request when acting, gathered and free.
    fn try_grant(&mut self) {
        self.check_gathered();
        let now = self.now;
        if !self.is_acting(now) {
            return;
        }
        let term = self.term;
        let lease_ms = self.timing.lock_lease_ms;
        let Some(coordinator) = self.coordinator_mut() else {
            return;
        };
        if !coordinator.gathered || coordinator.holder.is_some() {
            return;
        }
        let Some(next) = coordinator.queue.pop_front() else {
            return;
        };
        coordinator.seq += 1;
        let fence = FencingToken {
            term,
            seq: coordinator.seq,
        };
        coordinator.last_fence = Some(fence);
        coordinator.holder = Some(LockHolder {
            node: next.node,
            request_id: next.request_id,
            fence,
            lease_until_ms: now + lease_ms,
        });
        self.log(Event::Granted {
            holder: next.node,
            request_id: next.request_id,
            fence,
            lease_ms,
        });
        self.send(
            next.node,
            Message::LockGrant {
                request_id: next.request_id,
                fence,
                lease_ms,
                stamp: next.stamp,
            },
        );
    }

    // ----- Client -----

    fn tick_client(&mut self) {
        let now = self.now;
        let leader = self.leader();
        let retry_ms = self.timing.request_retry_ms;
        let renew_when_left = self.timing.renew_when_left_ms();
        let renew_retry = self.timing.renew_retry_ms();
        let mut lost = Vec::new();
        let mut sends = Vec::new();
        for (&request_id, lock) in self.locks.iter_mut() {
            match lock {
                ClientLock::Pending { last_sent } => {
                    let Some(leader) = leader else { continue };
                    let due = last_sent.is_none_or(|(at, to)| to != leader || now >= at + retry_ms);
                    if due {
                        *last_sent = Some((now, leader));
                        sends.push((
                            leader,
                            Message::LockRequest {
                                request_id,
                                stamp: now,
                            },
                        ));
                    }
                }
                ClientLock::Held {
                    fence,
                    lease_until,
                    last_renew_sent,
                } => {
                    if now >= *lease_until {
                        lost.push((request_id, *fence, *lease_until));
                    } else if now + renew_when_left >= *lease_until
                        && now >= *last_renew_sent + renew_retry
                        && let Some(leader) = leader
                    {
                        *last_renew_sent = now;
                        sends.push((
                            leader,
                            Message::LockRenew {
                                request_id,
                                fence: *fence,
                                stamp: now,
                            },
                        ));
                    }
                }
            }
        }
        for (request_id, fence, lease_until_ms) in lost {
            self.locks.remove(&request_id);
            self.finished_requests.insert(request_id, ());
            self.out.push(Output::LockLost { request_id, fence });
            self.log(Event::LeaseLost {
                request_id,
                fence,
                lease_until_ms,
            });
        }
        for (to, msg) in sends {
            self.send(to, msg);
        }
    }

    fn on_grant(
        &mut self,
        from: NodeId,
        request_id: RequestId,
        fence: FencingToken,
        lease_ms: u64,
        stamp: u64,
    ) {
        let now = self.now;
        // The lease counts from the client's own send of the echoed request or renewal.
        let until = stamp.saturating_add(lease_ms);
        match self.locks.get_mut(&request_id) {
            Some(ClientLock::Pending { .. }) => {
                if until <= now {
                    // Arrived too late to be of use; the next repeat renews it.
                    return;
                }
                self.locks.insert(
                    request_id,
                    ClientLock::Held {
                        fence,
                        lease_until: until,
                        last_renew_sent: now,
                    },
                );
                self.out.push(Output::Granted { request_id, fence });
                self.log(Event::Acquired {
                    request_id,
                    fence,
                    lease_until_ms: until,
                });
            }
            Some(ClientLock::Held {
                fence: held,
                lease_until,
                ..
            }) => {
                if until > *lease_until && *lease_until > now {
                    *lease_until = until;
                    *held = (*held).max(fence);
                    let fence = *held;
                    self.log(Event::Renewed {
                        request_id,
                        fence,
                        lease_until_ms: until,
                    });
                }
            }
            None => {
                // Released, lost, or not ours (from before a restart): give it straight back.
                self.send(
                    from,
                    Message::LockRelease {
                        request_id,
                        fence: Some(fence),
                    },
                );
            }
        }
    }

    // ----- Dispatch -----

    fn handle(&mut self, envelope: Envelope) {
        let lamport = self.stamp(Some(envelope.lamport));
        if self.logs_message(&envelope.msg) {
            self.push_log(
                lamport,
                Event::Receive {
                    from: envelope.from,
                    msg: envelope.msg.name().to_owned(),
                    sent_lamport: envelope.lamport,
                },
            );
        }
        let from = envelope.from;
        if envelope.term > self.term {
            self.observe_term(envelope.term);
        }
        if envelope.term < self.term {
            // Older terms are ignored, so a paused-then-resumed coordinator cannot act; claims and
            // elections get an answer carrying the current term so the sender catches up.
            match envelope.msg {
                Message::Coordinator { stamp } | Message::Heartbeat { stamp } => {
                    self.send(from, Message::Ack { stamp, ok: false });
                }
                Message::Election => self.send(from, Message::Answer),
                _ => {}
            }
            return;
        }
        match envelope.msg {
            Message::Election => self.on_election(from),
            Message::Answer => self.on_answer(from),
            Message::Coordinator { stamp } | Message::Heartbeat { stamp } => {
                self.on_claim(from, stamp)
            }
            Message::Ack { stamp, ok } => self.on_ack(from, stamp, ok),
            Message::LockStateQuery => self.on_query(from),
            Message::LockStateReport {
                held,
                pending,
                stamp,
            } => self.on_report(from, held, pending, stamp),
            Message::LockRequest { request_id, stamp } => self.on_request(from, request_id, stamp),
            Message::LockGrant {
                request_id,
                fence,
                lease_ms,
                stamp,
            } => self.on_grant(from, request_id, fence, lease_ms, stamp),
            Message::LockRenew {
                request_id, stamp, ..
            } => self.on_renew(from, request_id, stamp),
            Message::LockRelease { request_id, .. } => self.on_release(from, request_id),
            Message::NotLeader { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::sim::{Fault, Sim, SimConfig, Target};

    fn quiet() -> SimConfig {
        SimConfig {
            clients: false,
            latency_ms: (1, 3),
            ..SimConfig::default()
        }
    }

    fn fence(term: u64, seq: u64) -> FencingToken {
        FencingToken {
            term: Term(term),
            seq,
        }
    }

    fn events(sim: &Sim, id: u32) -> Vec<Event> {
        sim.logs()[id as usize - 1]
            .iter()
            .map(|e| e.event.clone())
            .collect()
    }

    fn acquired(sim: &Sim, id: u32, request: u64) -> Option<u64> {
        sim.requests()
            .get(&(NodeId(id), RequestId(request)))
            .and_then(|r| r.acquired_at)
    }

    fn run(sim: &mut Sim, ms: u64) {
        if let Err(error) = sim.run_for(ms) {
            panic!("{error}");
        }
    }

    fn request(sim: &mut Sim, id: u32, request: u64) {
        if let Err(error) = sim.request_lock(NodeId(id), RequestId(request)) {
            panic!("{error}");
        }
    }

    fn release(sim: &mut Sim, id: u32, request: u64) {
        if let Err(error) = sim.release_lock(NodeId(id), RequestId(request)) {
            panic!("{error}");
        }
    }

    fn leader_of(sim: &Sim, id: u32) -> Option<NodeId> {
        sim.node(NodeId(id)).and_then(|n| n.leader())
    }

    #[test]
    fn highest_live_id_wins() {
        let mut sim = Sim::new(1, quiet());
        run(&mut sim, 500);
        assert_eq!(sim.acting(), vec![(NodeId(4), Term(1))]);
        for id in 1..=4 {
            assert_eq!(leader_of(&sim, id), Some(NodeId(4)));
        }

        let mut sim = Sim::new(2, quiet());
        sim.schedule(
            1,
            Fault::Crash {
                target: Target::Node(NodeId(4)),
                down_ms: None,
            },
        );
        run(&mut sim, 800);
        let acting = sim.acting();
        assert_eq!(acting.len(), 1);
        assert_eq!(acting[0].0, NodeId(3), "the highest live node leads");
    }

    #[test]
    fn a_higher_node_that_sees_a_lower_coordinator_takes_over() {
        let mut sim = Sim::new(3, quiet());
        sim.schedule(
            1,
            Fault::Crash {
                target: Target::Node(NodeId(4)),
                down_ms: Some(1000),
            },
        );
        run(&mut sim, 900);
        let (leader, term) = sim.acting()[0];
        assert_eq!(leader, NodeId(3));
        run(&mut sim, 600);
        let (new_leader, new_term) = sim.acting()[0];
        assert_eq!(
            new_leader,
            NodeId(4),
            "the restarted higher node takes over"
        );
        assert!(new_term > term);

        // Directly: a heartbeat from a lower claimant in the current term is refused and the
        // higher node starts an election (as the highest, it announces at once).
        let mut node = Node::new(NodeId(4), vec![NodeId(1), NodeId(2)], Timing::default());
        let mut lower = Node::new(NodeId(2), vec![NodeId(1), NodeId(4)], Timing::default());
        let _ = node.on_tick(0);
        let _ = lower.on_tick(0);
        let claim = Envelope {
            from: NodeId(2),
            to: NodeId(4),
            term: node.term(),
            lamport: 1,
            msg: Message::Heartbeat { stamp: 0 },
        };
        let outputs = node.on_message(1, claim);
        assert!(outputs.iter().any(|o| matches!(
            o,
            Output::Send(Envelope {
                to: NodeId(2),
                msg: Message::Ack { ok: false, .. },
                ..
            })
        )));
        assert_eq!(node.role(), Role::Coordinator);
    }

    #[test]
    fn messages_from_an_older_term_are_ignored() {
        let mut sim = Sim::new(4, quiet());
        run(&mut sim, 500);
        let node = sim.node(NodeId(2)).expect("alive");
        let current = node.term();
        assert_eq!(current, Term(1));
        // Push node 2 to term 3 with a claim from node 4, then replay term-1 traffic.
        let mut node = Node::new(
            NodeId(2),
            vec![NodeId(1), NodeId(3), NodeId(4)],
            Timing::default(),
        );
        let _ = node.on_tick(0);
        let _ = node.on_message(
            1,
            Envelope {
                from: NodeId(4),
                to: NodeId(2),
                term: Term(3),
                lamport: 1,
                msg: Message::Coordinator { stamp: 1 },
            },
        );
        assert_eq!((node.term(), node.leader()), (Term(3), Some(NodeId(4))));
        let _ = node.request_lock(2, RequestId(1));
        // A grant from an old coordinator of term 2 is not taken.
        let outputs = node.on_message(
            3,
            Envelope {
                from: NodeId(3),
                to: NodeId(2),
                term: Term(2),
                lamport: 5,
                msg: Message::LockGrant {
                    request_id: RequestId(1),
                    fence: fence(2, 9),
                    lease_ms: 300,
                    stamp: 2,
                },
            },
        );
        assert!(!outputs.iter().any(|o| matches!(o, Output::Granted { .. })));
        assert_eq!(node.lock_fence(3, RequestId(1)), None);
        // An old heartbeat is refused with the current term, and changes nothing.
        let outputs = node.on_message(
            4,
            Envelope {
                from: NodeId(3),
                to: NodeId(2),
                term: Term(2),
                lamport: 6,
                msg: Message::Heartbeat { stamp: 4 },
            },
        );
        assert!(outputs.iter().any(|o| matches!(
            o,
            Output::Send(Envelope {
                term: Term(3),
                msg: Message::Ack { ok: false, .. },
                ..
            })
        )));
        assert_eq!((node.term(), node.leader()), (Term(3), Some(NodeId(4))));
    }

    #[test]
    fn votes_are_one_per_term_and_survive_restarts() {
        let mut node = Node::new(NodeId(1), vec![NodeId(3), NodeId(4)], Timing::default());
        let _ = node.on_tick(0);
        let claim = |from: u32, lamport| Envelope {
            from: NodeId(from),
            to: NodeId(1),
            term: Term(5),
            lamport,
            msg: Message::Coordinator { stamp: 0 },
        };
        let outputs = node.on_message(1, claim(3, 1));
        assert!(outputs.iter().any(|o| matches!(
            o,
            Output::Persist(PersistentState {
                voted_for: Some(NodeId(3)),
                ..
            })
        )));
        let persisted = node.persistent();
        let mut restarted = Node::restore(
            NodeId(1),
            vec![NodeId(3), NodeId(4)],
            Timing::default(),
            persisted,
        );
        let outputs = restarted.on_message(2, claim(4, 2));
        assert!(
            outputs.iter().any(|o| matches!(
                o,
                Output::Send(Envelope {
                    msg: Message::Ack { ok: false, .. },
                    ..
                })
            )),
            "the vote for 3 in term 5 outlives the crash"
        );
        assert!(
            restarted.lamport() > node.lamport(),
            "Lamport time resumes past the old one"
        );
    }

    #[test]
    fn the_lock_is_granted_in_fifo_order() {
        let mut sim = Sim::new(5, quiet());
        run(&mut sim, 500);
        request(&mut sim, 4, 1);
        run(&mut sim, 20);
        assert!(acquired(&sim, 4, 1).is_some());
        for (id, at) in [(2, 0), (1, 10), (3, 10)] {
            run(&mut sim, at);
            request(&mut sim, id, 1);
        }
        run(&mut sim, 20);
        let status = sim.node(NodeId(4)).expect("alive").status(sim.now());
        let queue: Vec<u32> = status.queue.iter().map(|q| q.node.0).collect();
        assert_eq!(queue, vec![2, 1, 3]);
        assert_eq!(status.lock_holder.map(|h| h.node), Some(NodeId(4)));
        release(&mut sim, 4, 1);
        let mut order = Vec::new();
        for _ in 0..3 {
            run(&mut sim, 30);
            let (holder, request_id, _) = sim.holders()[0];
            order.push(holder.0);
            release(&mut sim, holder.0, request_id.0);
        }
        assert_eq!(order, vec![2, 1, 3]);
        let fences: Vec<FencingToken> = events(&sim, 4)
            .into_iter()
            .filter_map(|e| match e {
                Event::Granted { fence, .. } => Some(fence),
                _ => None,
            })
            .collect();
        assert_eq!(
            fences,
            vec![fence(1, 1), fence(1, 2), fence(1, 3), fence(1, 4)]
        );
    }

    #[test]
    fn a_dead_holders_lock_is_regranted_only_after_its_lease_expires() {
        let mut sim = Sim::new(6, quiet());
        run(&mut sim, 500);
        request(&mut sim, 1, 1);
        run(&mut sim, 150); // long enough for a renewal
        request(&mut sim, 2, 1);
        run(&mut sim, 5);
        let lease_until = events(&sim, 1)
            .into_iter()
            .filter_map(|e| match e {
                Event::Acquired { lease_until_ms, .. } | Event::Renewed { lease_until_ms, .. } => {
                    Some(lease_until_ms)
                }
                _ => None,
            })
            .max()
            .expect("node 1 holds");
        let crashed_at = sim.now();
        sim.schedule(
            crashed_at + 1,
            Fault::Crash {
                target: Target::Node(NodeId(1)),
                down_ms: None,
            },
        );
        run(&mut sim, 600);
        let regranted = acquired(&sim, 2, 1).expect("node 2 gets the lock in the end");
        assert!(regranted >= lease_until, "{regranted} < {lease_until}");
        assert!(
            regranted <= lease_until + 50,
            "re-granted promptly: {regranted} vs {lease_until}"
        );
        let expired = events(&sim, 4).into_iter().any(|e| {
            matches!(
                e,
                Event::Freed {
                    holder: NodeId(1),
                    reason: FreeReason::Expired,
                    ..
                }
            )
        });
        assert!(expired);
    }

    #[test]
    fn a_retried_request_is_granted_once() {
        let timing = Timing::default();
        let mut leader = Node::new(NodeId(2), vec![NodeId(1)], timing);
        // Two nodes: a majority is both. Become coordinator and get node 1's acknowledgement.
        let outputs = leader.on_tick(0);
        assert_eq!(leader.role(), Role::Coordinator);
        let stamp = outputs
            .iter()
            .find_map(|o| match o {
                Output::Send(Envelope {
                    msg: Message::Coordinator { stamp },
                    ..
                }) => Some(*stamp),
                _ => None,
            })
            .expect("announces");
        let term = leader.term();
        let from1 = |lamport, msg| Envelope {
            from: NodeId(1),
            to: NodeId(2),
            term,
            lamport,
            msg,
        };
        let _ = leader.on_message(1, from1(1, Message::Ack { stamp, ok: true }));
        assert!(leader.is_acting(1));
        let _ = leader.on_message(
            2,
            from1(
                2,
                Message::LockStateReport {
                    held: None,
                    pending: vec![],
                    stamp: 2,
                },
            ),
        );
        let grants = |outputs: &[Output]| -> Vec<FencingToken> {
            outputs
                .iter()
                .filter_map(|o| match o {
                    Output::Send(Envelope {
                        msg: Message::LockGrant { fence, .. },
                        ..
                    }) => Some(*fence),
                    _ => None,
                })
                .collect()
        };
        let request = |stamp| Message::LockRequest {
            request_id: RequestId(7),
            stamp,
        };
        let first = leader.on_message(3, from1(3, request(3)));
        assert_eq!(grants(&first), vec![FencingToken { term, seq: 1 }]);
        // The grant got lost; the client repeats: same token, lease renewed, nothing queued.
        let again = leader.on_message(50, from1(4, request(50)));
        assert_eq!(grants(&again), vec![FencingToken { term, seq: 1 }]);
        let status = leader.status(50);
        assert!(status.queue.is_empty());
        assert_eq!(
            status.lock_holder.map(|h| h.lease_until_ms),
            Some(50 + timing.lock_lease_ms)
        );
        // Released; a late duplicate of the request is not granted again.
        let _ = leader.on_message(
            60,
            from1(
                5,
                Message::LockRelease {
                    request_id: RequestId(7),
                    fence: Some(FencingToken { term, seq: 1 }),
                },
            ),
        );
        let late = leader.on_message(61, from1(6, request(3)));
        assert!(grants(&late).is_empty());
        assert_eq!(leader.status(61).lock_holder, None);
        assert_eq!(leader.status(61).fence, Some(FencingToken { term, seq: 1 }));

        // On the client side, asking twice with one id is one request.
        let mut client = Node::new(NodeId(1), vec![NodeId(2)], timing);
        let _ = client.on_tick(0);
        let _ = client.request_lock(1, RequestId(7));
        let _ = client.request_lock(2, RequestId(7));
        assert_eq!(client.pending_requests(), vec![RequestId(7)]);
    }

    #[test]
    fn a_new_coordinator_gathers_lock_state_before_granting() {
        // Node 4 is down at first, so node 3 leads; node 1 takes the lock and node 2 waits.
        let mut sim = Sim::new(7, quiet());
        sim.schedule(
            1,
            Fault::Crash {
                target: Target::Node(NodeId(4)),
                down_ms: Some(1400),
            },
        );
        run(&mut sim, 1300);
        request(&mut sim, 1, 1);
        run(&mut sim, 20);
        let (holder, _, old_fence) = sim.holders()[0];
        assert_eq!(holder, NodeId(1));
        request(&mut sim, 2, 1);
        // Node 4 returns and takes over while node 1 holds the lock.
        run(&mut sim, 400);
        assert_eq!(sim.acting()[0].0, NodeId(4));
        let log4 = events(&sim, 4);
        assert!(log4.iter().any(
            |e| matches!(e, Event::Adopted { holder: NodeId(1), fence, .. } if *fence == old_fence)
        ));
        assert_eq!(
            sim.holders()[0].0,
            NodeId(1),
            "node 1 still holds under the new coordinator"
        );
        assert_eq!(
            acquired(&sim, 2, 1),
            None,
            "and node 2 was not granted meanwhile"
        );
        release(&mut sim, 1, 1);
        run(&mut sim, 30);
        let (holder, _, new_fence) = sim.holders()[0];
        assert_eq!(holder, NodeId(2));
        assert!(new_fence.term > old_fence.term);
    }

    #[test]
    fn a_new_coordinator_that_misses_a_report_waits_out_old_leases() {
        let mut sim = Sim::new(11, quiet());
        run(&mut sim, 500);
        request(&mut sim, 2, 1);
        run(&mut sim, 20);
        sim.schedule(
            sim.now() + 1,
            Fault::Crash {
                target: Target::Node(NodeId(4)),
                down_ms: None,
            },
        );
        request(&mut sim, 1, 1);
        run(&mut sim, 1500);
        // Node 4 cannot report, so node 3 waits `leader_lease_ms + lock_lease_ms` after its
        // election before its first grant.
        let log3 = &sim.logs()[2];
        let time_of =
            |pred: &dyn Fn(&Event) -> bool| log3.iter().find(|e| pred(&e.event)).map(|e| e.time_ms);
        let elected = time_of(&|e| *e == Event::Elected).expect("node 3 elected");
        let gathered = time_of(&|e| matches!(e, Event::GatherDone { waited: true, .. }))
            .expect("gathered after waiting");
        let granted = time_of(&|e| matches!(e, Event::Granted { .. })).expect("granted");
        let timing = Timing::default();
        assert!(gathered >= elected + timing.leader_lease_ms + timing.lock_lease_ms);
        assert!(granted >= gathered);
        assert!(acquired(&sim, 1, 1).is_some());
    }

    #[test]
    fn a_new_coordinator_that_hears_from_everyone_grants_at_once() {
        let mut sim = Sim::new(8, quiet());
        sim.schedule(
            1,
            Fault::Crash {
                target: Target::Node(NodeId(4)),
                down_ms: Some(1000),
            },
        );
        run(&mut sim, 1500);
        // Node 4 came back and took over from 3: everyone could report, so no wait.
        let log4 = &sim.logs()[3];
        let elected = log4
            .iter()
            .rev()
            .find(|e| e.event == Event::Elected)
            .map(|e| e.time_ms);
        let gathered = log4
            .iter()
            .rev()
            .find(|e| matches!(e.event, Event::GatherDone { waited: false, .. }))
            .map(|e| e.time_ms);
        assert!(elected.is_some() && gathered.is_some());
        assert!(
            gathered < elected.map(|t| t + 50),
            "{elected:?} {gathered:?}"
        );
    }

    #[test]
    fn fences_increase_across_a_leader_change() {
        let mut sim = Sim::new(9, quiet());
        run(&mut sim, 500);
        let mut fences = Vec::new();
        for round in 0..6u64 {
            if round == 3 {
                sim.schedule(
                    sim.now() + 1,
                    Fault::Crash {
                        target: Target::Leader,
                        down_ms: Some(300),
                    },
                );
                run(&mut sim, 10);
            }
            let id = (round % 3 + 1) as u32;
            request(&mut sim, id, round);
            run(&mut sim, 1200);
            let (holder, _, fence) = sim.holders()[0];
            assert_eq!(holder.0, id);
            fences.push(fence);
            release(&mut sim, id, round);
        }
        assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
        assert!(fences[3].term > fences[2].term, "{fences:?}");
    }

    #[test]
    fn status_describes_the_node() {
        let mut sim = Sim::new(10, quiet());
        run(&mut sim, 500);
        request(&mut sim, 2, 1);
        run(&mut sim, 20);
        let status = sim.node(NodeId(4)).expect("alive").status(sim.now());
        assert_eq!(status.role, Role::Coordinator);
        assert!(status.acting);
        assert_eq!(status.lock_holder.map(|h| h.node), Some(NodeId(2)));
        let json = serde_json::to_value(&status).expect("serialises");
        assert_eq!(json["role"], "coordinator");
        let follower = sim.node(NodeId(2)).expect("alive").status(sim.now());
        assert_eq!(follower.leader, Some(NodeId(4)));
        assert_eq!(follower.held.len(), 1);
    }

    #[test]
    fn a_single_node_cluster_grants_to_itself() {
        let mut node = Node::new(NodeId(1), vec![], Timing::default());
        let _ = node.on_tick(0);
        assert!(node.is_acting(0));
        let outputs = node.request_lock(1, RequestId(1));
        assert!(outputs.iter().any(|o| matches!(o, Output::Granted { .. })));
        assert!(node.lock_fence(2, RequestId(1)).is_some());
        let _ = node.release_lock(3, RequestId(1));
        assert!(node.held_locks(3).is_empty());
    }
}
