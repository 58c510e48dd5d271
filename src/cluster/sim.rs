//! A deterministic, seeded simulator for cluster nodes: a virtual clock, a network that delays,
//! reorders, drops and duplicates messages, crashes and restarts, pauses, partitions, lock clients
//! that update a fenced resource, and invariant checks after every step.
//!
//! It drives the real `super::node::Node` code, so a failing seed is a reproducible bug report:
//! `random_run(seed)` replays exactly. What a node keeps across a crash is what it asked to
//! persist (`Output::Persist`: term, vote, Lamport restart point); the rest is lost.
//!
//! Checked while running: never two coordinators acting in one term (ever, not just at once);
//! never two nodes holding the lock under a valid lease at the same instant; every acquisition
//! carries a higher fencing token than the one before; each request acquired at most once; a node
//! cut off from a majority stops acting within `leader_lease_ms` and grants nothing after that.
//! Checked at the end: no request from a node that stayed alive was lost once the system healed,
//! `super::log::check_history` finds nothing in the merged logs, and every logged receive sorts
//! after its send in the merged order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::log::{Event, LogEvent, check_history, merge_logs};
use super::message::{Envelope, FencingToken, NodeId, RequestId, Term};
use super::node::{Node, Output, PersistentState, Role, Timing};

/// How a simulation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// How many nodes (ids 1..=nodes).
    pub nodes: u32,
    /// The nodes' timing.
    pub timing: Timing,
    /// How often each node gets `on_tick`, in simulated ms (nodes are staggered).
    pub tick_ms: u64,
    /// Message latency, uniform in this inclusive range; different latencies reorder messages.
    pub latency_ms: (u64, u64),
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Whether nodes run a lock client that requests, holds and releases in a loop.
    pub clients: bool,
    /// Which nodes run a client when `clients` is on (`None`: all of them).
    pub client_nodes: Option<Vec<NodeId>>,
    /// How long a client holds the lock, uniform in this inclusive range.
    pub hold_ms: (u64, u64),
    /// How long a client waits between critical sections, uniform in this inclusive range.
    pub think_ms: (u64, u64),
    /// How often a holder writes to the fenced resource.
    pub write_every_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 4,
            timing: Timing::default(),
            tick_ms: 5,
            latency_ms: (1, 10),
            loss: 0.0,
            duplicate: 0.0,
            clients: true,
            client_nodes: None,
            hold_ms: (5, 40),
            think_ms: (0, 60),
            write_every_ms: 5,
        }
    }
}

/// Whom a fault hits, resolved when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A fixed node.
    Node(NodeId),
    /// The coordinator at that moment (the acting one with the highest term, else any node in the
    /// coordinator role, else the highest live node).
    Leader,
    /// A node holding the lock at that moment, else the leader.
    Holder,
}

/// Something that happens to the cluster at a scheduled time.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The node loses its volatile state; it restarts after `down_ms`, or never with `None`.
    Crash {
        /// Who crashes.
        target: Target,
        /// How long it stays down.
        down_ms: Option<u64>,
    },
    /// The node receives nothing and does nothing for `for_ms`; messages for it wait and arrive
    /// late, and it wakes with stale beliefs.
    Pause {
        /// Who pauses.
        target: Target,
        /// For how long.
        for_ms: u64,
    },
    /// The node can talk to nobody for `for_ms`.
    Isolate {
        /// Who is isolated.
        target: Target,
        /// For how long.
        for_ms: u64,
    },
    /// The nodes in `side` and the others cannot talk for `for_ms` (`[1, 2]` of four: a 2|2 split).
    Split {
        /// One side of the partition.
        side: Vec<NodeId>,
        /// For how long.
        for_ms: u64,
    },
    /// New loss and duplication probabilities.
    Network {
        /// Probability of loss.
        loss: f64,
        /// Probability of duplication.
        duplicate: f64,
    },
    /// Everything recovers: partitions end, paused nodes resume, crashed nodes restart (unless
    /// crashed for good), and messages stop being lost.
    Heal,
    /// Clients stop starting new critical sections (those waiting keep waiting).
    StopClients,
}

/// A simulation found a broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}, at {at_ms} ms: {what}")]
pub struct SimError {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The simulated time.
    pub at_ms: u64,
    /// What went wrong.
    pub what: String,
}

/// Counters over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Envelopes the nodes sent.
    pub sent: u64,
    /// Envelopes sent, by wire name.
    pub sent_by_name: BTreeMap<&'static str, u64>,
    /// Envelopes lost (dropped, partitioned, or addressed to a crashed node).
    pub lost: u64,
    /// Coordinator announcements (new terms taken).
    pub announcements: u64,
    /// Lock acquisitions.
    pub acquisitions: u64,
    /// Critical sections ended by a release.
    pub releases: u64,
    /// Leases that ran out under a holder.
    pub leases_lost: u64,
    /// Writes the fenced resource accepted.
    pub writes_accepted: u64,
    /// Writes the fenced resource rejected as stale (fencing doing its job).
    pub writes_rejected: u64,
}

/// A lock request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the client asked.
    pub issued_at: u64,
    /// When it acquired the lock.
    pub acquired_at: Option<u64>,
    /// Whether its node crashed before it was acquired (it no longer counts).
    pub abandoned: bool,
}

/// A shared resource that accepts a write only with a token at least as high as any seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FencedResource {
    /// The highest token seen.
    pub highest: Option<FencingToken>,
    /// The counter the writes increment.
    pub counter: u64,
}

impl FencedResource {
    /// Applies an increment carrying `fence`; false if rejected as stale.
    pub fn write(&mut self, fence: FencingToken) -> bool {
        if self.highest.is_some_and(|highest| fence < highest) {
            return false;
        }
        self.highest = Some(fence);
        self.counter += 1;
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Idle {
        next_at: u64,
    },
    Waiting {
        request_id: RequestId,
    },
    Holding {
        request_id: RequestId,
        until: u64,
        next_write: u64,
    },
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    node: Option<Node>,
    paused: bool,
    down_for_good: bool,
    persisted: PersistentState,
    /// Messages that arrived while paused, delivered on resume.
    inbox: VecDeque<Envelope>,
    client: Client,
    incarnation: u64,
    next_request: u64,
    /// Since when partitions have kept it in its current minority group.
    cut_off_since: Option<u64>,
    /// Which nodes it can reach, as of the last change of partitions.
    reach: Vec<bool>,
}

#[derive(Debug)]
struct Flight {
    at: u64,
    seq: u64,
    envelope: Envelope,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Flight {
    // Reversed, so the max-heap pops the earliest delivery first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
enum Scheduled {
    Fault(Fault),
    Restart(NodeId),
    Resume(NodeId),
    EndCut(u64),
}

/// The simulator: nodes, network, clients, resource and checks, all on one seeded RNG.
#[derive(Debug)]
pub struct Sim {
    seed: u64,
    config: SimConfig,
    rng: StdRng,
    now: u64,
    nodes: Vec<SimNode>,
    network: BinaryHeap<Flight>,
    seq: u64,
    schedule: BTreeMap<(u64, u64), Scheduled>,
    /// Active partitions: an id and, per node, which side it is on.
    cuts: Vec<(u64, Vec<bool>)>,
    loss: f64,
    duplicate: f64,
    issuing: bool,
    resource: FencedResource,
    /// Writes in flight to the resource: (arrival, seq, token), earliest first.
    writes: BinaryHeap<std::cmp::Reverse<(u64, u64, FencingToken)>>,
    requests: BTreeMap<(NodeId, RequestId), RequestRecord>,
    acting_terms: HashMap<Term, NodeId>,
    highest_acquired: Option<FencingToken>,
    stats: SimStats,
    logs: Vec<Vec<LogEvent>>,
}

impl Sim {
    /// A cluster of `config.nodes` fresh nodes at time 0; nothing happens until it steps.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let ids: Vec<NodeId> = (1..=config.nodes).map(NodeId).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = ids
            .iter()
            .map(|&id| SimNode {
                id,
                node: Some(Node::new(id, ids.clone(), config.timing)),
                paused: false,
                down_for_good: false,
                persisted: PersistentState::default(),
                inbox: VecDeque::new(),
                client: Client::Idle {
                    next_at: rng.gen_range(config.think_ms.0..=config.think_ms.1),
                },
                incarnation: 0,
                next_request: 0,
                cut_off_since: None,
                reach: vec![true; config.nodes as usize],
            })
            .collect();
        Sim {
            seed,
            loss: config.loss,
            duplicate: config.duplicate,
            issuing: config.clients,
            logs: ids.iter().map(|_| Vec::new()).collect(),
            config,
            rng,
            now: 0,
            nodes,
            network: BinaryHeap::new(),
            seq: 0,
            schedule: BTreeMap::new(),
            cuts: Vec::new(),
            resource: FencedResource::default(),
            writes: BinaryHeap::new(),
            requests: BTreeMap::new(),
            acting_terms: HashMap::new(),
            highest_acquired: None,
            stats: SimStats::default(),
        }
    }

    // ----- Control -----

    /// Schedules `fault` at simulated time `at_ms`.
    pub fn schedule(&mut self, at_ms: u64, fault: Fault) {
        self.push_schedule(at_ms, Scheduled::Fault(fault));
    }

    /// Runs until simulated time `until_ms`, checking invariants after every step.
    pub fn run_until(&mut self, until_ms: u64) -> Result<(), SimError> {
        while self.now < until_ms {
            self.step()?;
        }
        Ok(())
    }

    /// Runs for `ms` more simulated milliseconds.
    pub fn run_for(&mut self, ms: u64) -> Result<(), SimError> {
        self.run_until(self.now + ms)
    }

    /// The local client of node `id` asks for the lock (for tests driving requests by hand).
    pub fn request_lock(&mut self, id: NodeId, request_id: RequestId) -> Result<(), SimError> {
        let index = self.index(id);
        let now = self.now;
        let Some(node) = self.nodes[index].node.as_mut() else {
            return Ok(());
        };
        self.requests
            .entry((id, request_id))
            .or_insert(RequestRecord {
                issued_at: now,
                acquired_at: None,
                abandoned: false,
            });
        let outputs = node.request_lock(now, request_id);
        self.process(index, outputs)
    }

    /// The local client of node `id` releases the lock (for tests driving requests by hand).
    pub fn release_lock(&mut self, id: NodeId, request_id: RequestId) -> Result<(), SimError> {
        let index = self.index(id);
        let now = self.now;
        let Some(node) = self.nodes[index].node.as_mut() else {
            return Ok(());
        };
        let outputs = node.release_lock(now, request_id);
        self.process(index, outputs)
    }

    /// Delivers `envelope` to its receiver now, bypassing the network (to inject stale messages).
    pub fn inject(&mut self, envelope: Envelope) -> Result<(), SimError> {
        self.deliver(envelope)?;
        self.check_invariants()
    }

    // ----- Observation -----

    /// What is scheduled, in order, for reports and debugging.
    pub fn scheduled(&self) -> Vec<String> {
        self.schedule
            .iter()
            .map(|((at, _), scheduled)| format!("{at} ms: {scheduled:?}"))
            .collect()
    }

    /// The simulated time in ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Node `id`, unless crashed.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(self.index(id)).and_then(|n| n.node.as_ref())
    }

    /// Nodes acting as coordinator now, with their terms.
    pub fn acting(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .filter(|node| node.is_acting(self.now))
            .map(|node| (node.id(), node.term()))
            .collect()
    }

    /// Nodes whose client holds the lock under a valid lease now, with request and token.
    pub fn holders(&self) -> Vec<(NodeId, RequestId, FencingToken)> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .flat_map(|node| {
                node.held_locks(self.now)
                    .into_iter()
                    .map(move |(request_id, fence)| (node.id(), request_id, fence))
            })
            .collect()
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The fenced resource.
    pub fn resource(&self) -> FencedResource {
        self.resource
    }

    /// Every request the clients made, by node and id.
    pub fn requests(&self) -> &BTreeMap<(NodeId, RequestId), RequestRecord> {
        &self.requests
    }

    /// Each node's log, across its restarts, indexed by id - 1.
    pub fn logs(&self) -> &[Vec<LogEvent>] {
        &self.logs
    }

    /// Whether every request not abandoned has been acquired.
    pub fn all_requests_acquired(&self) -> bool {
        self.requests
            .values()
            .all(|r| r.abandoned || r.acquired_at.is_some())
    }

    /// The end-of-run checks: no lost request (call after healing and settling), a clean lock
    /// history, and a merged log order consistent with every logged send and receive.
    pub fn final_checks(&self) -> Result<(), SimError> {
        if let Some(((node, request_id), record)) = self
            .requests
            .iter()
            .find(|(_, r)| !r.abandoned && r.acquired_at.is_none())
        {
            return Err(self.error(format!(
                "request {request_id} of node {node}, issued at {} ms, was never granted",
                record.issued_at
            )));
        }
        let merged = merge_logs(self.logs.clone());
        let violations = check_history(&merged);
        if let Some(violation) = violations.first() {
            return Err(self.error(format!("lock history: {violation:?}")));
        }
        check_causal_order(&merged).map_err(|what| self.error(what))
    }

    // ----- Stepping -----

    /// Advances one simulated millisecond: scheduled faults, deliveries, ticks, clients, writes,
    /// then the invariant checks if anything happened.
    pub fn step(&mut self) -> Result<(), SimError> {
        self.now += 1;
        let now = self.now;
        let mut active = false;
        while let Some(entry) = self.schedule.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let scheduled = entry.remove();
            self.apply(scheduled)?;
            active = true;
        }
        while self.network.peek().is_some_and(|flight| flight.at <= now) {
            if let Some(flight) = self.network.pop() {
                self.deliver(flight.envelope)?;
                active = true;
            }
        }
        for index in 0..self.nodes.len() {
            if (now + index as u64) % self.config.tick_ms != 0 || self.nodes[index].paused {
                continue;
            }
            if let Some(node) = self.nodes[index].node.as_mut() {
                let outputs = node.on_tick(now);
                active |= !outputs.is_empty();
                self.process(index, outputs)?;
            }
        }
        if self.config.clients {
            for index in 0..self.nodes.len() {
                let id = self.nodes[index].id;
                if self
                    .config
                    .client_nodes
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&id))
                {
                    active |= self.run_client(index)?;
                }
            }
        }
        while let Some(std::cmp::Reverse((at, _, fence))) = self.writes.peek().copied() {
            if at > now {
                break;
            }
            self.writes.pop();
            if self.resource.write(fence) {
                self.stats.writes_accepted += 1;
            } else {
                self.stats.writes_rejected += 1;
            }
        }
        if active {
            self.check_invariants()?;
        }
        Ok(())
    }

    fn error(&self, what: String) -> SimError {
        SimError {
            seed: self.seed,
            at_ms: self.now,
            what,
        }
    }

    fn index(&self, id: NodeId) -> usize {
        (id.0 as usize).saturating_sub(1)
    }

    fn push_schedule(&mut self, at: u64, scheduled: Scheduled) {
        self.seq += 1;
        self.schedule.insert((at, self.seq), scheduled);
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let (a, b) = (self.index(a), self.index(b));
        self.cuts.iter().all(|(_, side)| side[a] == side[b])
    }

    /// Records, per node, since when partitions have kept it in the same minority group. (A node
    /// moved from one minority group to another may legitimately combine acknowledgements it got
    /// in each, so the clock restarts when its group changes.)
    fn update_cut_off(&mut self) {
        let majority = self.nodes.len() / 2 + 1;
        let now = self.now;
        for index in 0..self.nodes.len() {
            let id = self.nodes[index].id;
            let reach: Vec<bool> = self
                .nodes
                .iter()
                .map(|other| self.connected(id, other.id))
                .collect();
            let node = &mut self.nodes[index];
            let minority = reach.iter().filter(|&&r| r).count() < majority;
            if !minority {
                node.cut_off_since = None;
            } else if node.cut_off_since.is_none() || node.reach != reach {
                node.cut_off_since = Some(now);
            }
            node.reach = reach;
        }
    }

    fn resolve(&self, target: Target) -> Option<NodeId> {
        let live = |n: &&SimNode| n.node.is_some();
        let leader = || {
            let mut acting = self.acting();
            acting.sort_by_key(|&(id, term)| (term, id));
            acting
                .last()
                .map(|&(id, _)| id)
                .or_else(|| {
                    self.nodes
                        .iter()
                        .filter(live)
                        .find(|n| {
                            n.node
                                .as_ref()
                                .is_some_and(|node| node.role() == Role::Coordinator)
                        })
                        .map(|n| n.id)
                })
                .or_else(|| self.nodes.iter().filter(live).map(|n| n.id).max())
        };
        match target {
            Target::Node(id) => Some(id),
            Target::Leader => leader(),
            Target::Holder => self.holders().first().map(|&(id, _, _)| id).or_else(leader),
        }
    }

    fn apply(&mut self, scheduled: Scheduled) -> Result<(), SimError> {
        let now = self.now;
        match scheduled {
            Scheduled::Fault(Fault::Crash { target, down_ms }) => {
                if let Some(id) = self.resolve(target) {
                    self.crash(id);
                    match down_ms {
                        Some(ms) => self.push_schedule(now + ms, Scheduled::Restart(id)),
                        None => {
                            let index = self.index(id);
                            self.nodes[index].down_for_good = true;
                        }
                    }
                }
            }
            Scheduled::Fault(Fault::Pause { target, for_ms }) => {
                if let Some(id) = self.resolve(target) {
                    let index = self.index(id);
                    self.nodes[index].paused = true;
                    self.push_schedule(now + for_ms, Scheduled::Resume(id));
                }
            }
            Scheduled::Fault(Fault::Isolate { target, for_ms }) => {
                if let Some(id) = self.resolve(target) {
                    let side = self.nodes.iter().map(|n| n.id == id).collect();
                    self.cut(side, for_ms);
                }
            }
            Scheduled::Fault(Fault::Split { side, for_ms }) => {
                let side = self.nodes.iter().map(|n| side.contains(&n.id)).collect();
                self.cut(side, for_ms);
            }
            Scheduled::Fault(Fault::Network { loss, duplicate }) => {
                self.loss = loss;
                self.duplicate = duplicate;
            }
            Scheduled::Fault(Fault::Heal) => {
                self.cuts.clear();
                self.update_cut_off();
                self.loss = 0.0;
                for index in 0..self.nodes.len() {
                    let id = self.nodes[index].id;
                    if self.nodes[index].paused {
                        self.resume(id)?;
                    }
                    if self.nodes[index].node.is_none() && !self.nodes[index].down_for_good {
                        self.restart(id)?;
                    }
                }
            }
            Scheduled::Fault(Fault::StopClients) => self.issuing = false,
            Scheduled::Restart(id) => {
                let index = self.index(id);
                if self.nodes[index].node.is_none() {
                    self.restart(id)?;
                }
            }
            Scheduled::Resume(id) => {
                let index = self.index(id);
                if self.nodes[index].paused {
                    self.resume(id)?;
                }
            }
            Scheduled::EndCut(cut) => {
                self.cuts.retain(|(id, _)| *id != cut);
                self.update_cut_off();
            }
        }
        Ok(())
    }

    fn cut(&mut self, side: Vec<bool>, for_ms: u64) {
        self.seq += 1;
        let cut = self.seq;
        self.cuts.push((cut, side));
        self.update_cut_off();
        self.push_schedule(self.now + for_ms, Scheduled::EndCut(cut));
    }

    fn crash(&mut self, id: NodeId) {
        let index = self.index(id);
        let node = &mut self.nodes[index];
        node.node = None;
        node.paused = false;
        node.inbox.clear();
        node.client = Client::Idle { next_at: 0 };
        for ((owner, _), record) in self.requests.iter_mut() {
            if *owner == id && record.acquired_at.is_none() {
                record.abandoned = true;
            }
        }
    }

    fn restart(&mut self, id: NodeId) -> Result<(), SimError> {
        let index = self.index(id);
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let think = self
            .rng
            .gen_range(self.config.think_ms.0..=self.config.think_ms.1);
        let now = self.now;
        let sim_node = &mut self.nodes[index];
        let mut node = Node::restore(id, ids, self.config.timing, sim_node.persisted);
        sim_node.incarnation += 1;
        sim_node.next_request = 0;
        sim_node.client = Client::Idle {
            next_at: now + think,
        };
        let outputs = node.on_tick(now);
        sim_node.node = Some(node);
        self.process(index, outputs)
    }

    fn resume(&mut self, id: NodeId) -> Result<(), SimError> {
        let index = self.index(id);
        self.nodes[index].paused = false;
        let waiting: Vec<Envelope> = self.nodes[index].inbox.drain(..).collect();
        for envelope in waiting {
            self.deliver(envelope)?;
        }
        Ok(())
    }

    fn transmit(&mut self, envelope: Envelope) {
        self.stats.sent += 1;
        *self
            .stats
            .sent_by_name
            .entry(envelope.msg.name())
            .or_default() += 1;
        if !self.connected(envelope.from, envelope.to) || self.rng.gen_bool(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.gen_bool(self.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = self
                .rng
                .gen_range(self.config.latency_ms.0..=self.config.latency_ms.1);
            self.seq += 1;
            self.network.push(Flight {
                at: self.now + latency,
                seq: self.seq,
                envelope: envelope.clone(),
            });
        }
    }

    fn deliver(&mut self, envelope: Envelope) -> Result<(), SimError> {
        let index = self.index(envelope.to);
        if index >= self.nodes.len()
            || self.nodes[index].node.is_none()
            || !self.connected(envelope.from, envelope.to)
        {
            self.stats.lost += 1;
            return Ok(());
        }
        if self.nodes[index].paused {
            self.nodes[index].inbox.push_back(envelope);
            return Ok(());
        }
        let now = self.now;
        let outputs = match self.nodes[index].node.as_mut() {
            Some(node) => node.on_message(now, envelope),
            None => return Ok(()),
        };
        self.process(index, outputs)
    }

    fn process(&mut self, index: usize, outputs: Vec<Output>) -> Result<(), SimError> {
        let id = self.nodes[index].id;
        let now = self.now;
        for output in outputs {
            match output {
                Output::Send(envelope) => self.transmit(envelope),
                Output::Persist(state) => self.nodes[index].persisted = state,
                Output::Granted { request_id, fence } => {
                    if let Some(highest) = self.highest_acquired.filter(|&h| fence <= h) {
                        return Err(self.error(format!(
                            "node {id} acquired token {fence} after token {highest}"
                        )));
                    }
                    self.highest_acquired = Some(fence);
                    self.stats.acquisitions += 1;
                    let record = self
                        .requests
                        .entry((id, request_id))
                        .or_insert(RequestRecord {
                            issued_at: now,
                            acquired_at: None,
                            abandoned: false,
                        });
                    if record.acquired_at.is_some() {
                        return Err(
                            self.error(format!("request {request_id} of node {id} acquired twice"))
                        );
                    }
                    record.acquired_at = Some(now);
                    if self.nodes[index].client == (Client::Waiting { request_id }) {
                        let hold = self
                            .rng
                            .gen_range(self.config.hold_ms.0..=self.config.hold_ms.1);
                        self.nodes[index].client = Client::Holding {
                            request_id,
                            until: now + hold,
                            next_write: now,
                        };
                    }
                }
                Output::LockLost { request_id, .. } => {
                    self.stats.leases_lost += 1;
                    if matches!(self.nodes[index].client, Client::Holding { request_id: r, .. } if r == request_id)
                    {
                        self.nodes[index].client = Client::Idle { next_at: now };
                    }
                }
                Output::Log(event) => {
                    match &event.event {
                        Event::Announced => self.stats.announcements += 1,
                        Event::Granted { .. } => {
                            if let Some(since) = self.nodes[index].cut_off_since
                                && now >= since + self.config.timing.leader_lease_ms
                            {
                                return Err(self.error(format!(
                                    "node {id} granted the lock {} ms after losing its majority",
                                    now - since
                                )));
                            }
                        }
                        _ => {}
                    }
                    self.logs[index].push(event);
                }
            }
        }
        Ok(())
    }

    fn run_client(&mut self, index: usize) -> Result<bool, SimError> {
        let now = self.now;
        let sim_node = &mut self.nodes[index];
        if sim_node.paused {
            return Ok(false);
        }
        let Some(node) = sim_node.node.as_mut() else {
            return Ok(false);
        };
        match sim_node.client {
            Client::Idle { next_at } if self.issuing && now >= next_at => {
                let request_id = RequestId((sim_node.incarnation << 32) | sim_node.next_request);
                sim_node.next_request += 1;
                sim_node.client = Client::Waiting { request_id };
                self.requests.insert(
                    (sim_node.id, request_id),
                    RequestRecord {
                        issued_at: now,
                        acquired_at: None,
                        abandoned: false,
                    },
                );
                let outputs = node.request_lock(now, request_id);
                self.process(index, outputs)?;
                Ok(true)
            }
            Client::Holding {
                request_id,
                until,
                next_write,
            } => match node.lock_fence(now, request_id) {
                None => {
                    // The lease ran out under us (the node reports LockLost at its next tick).
                    sim_node.client = Client::Idle { next_at: now };
                    Ok(false)
                }
                Some(_) if now >= until => {
                    let outputs = node.release_lock(now, request_id);
                    let think = self
                        .rng
                        .gen_range(self.config.think_ms.0..=self.config.think_ms.1);
                    self.nodes[index].client = Client::Idle {
                        next_at: now + think,
                    };
                    self.stats.releases += 1;
                    self.process(index, outputs)?;
                    Ok(true)
                }
                Some(fence) if now >= next_write => {
                    sim_node.client = Client::Holding {
                        request_id,
                        until,
                        next_write: now + self.config.write_every_ms,
                    };
                    // The write travels to the resource and may arrive late: fencing's job.
                    let delay = self.rng.gen_range(0..=5);
                    self.seq += 1;
                    self.writes
                        .push(std::cmp::Reverse((now + delay, self.seq, fence)));
                    Ok(false)
                }
                Some(_) => Ok(false),
            },
            _ => Ok(false),
        }
    }

    fn check_invariants(&mut self) -> Result<(), SimError> {
        let now = self.now;
        let lease_ms = self.config.timing.leader_lease_ms;
        for sim_node in &self.nodes {
            let Some(node) = sim_node.node.as_ref() else {
                continue;
            };
            if !node.is_acting(now) {
                continue;
            }
            let (id, term) = (node.id(), node.term());
            if let Some(&other) = self.acting_terms.get(&term).filter(|&&other| other != id) {
                return Err(self.error(format!(
                    "nodes {other} and {id} both acted as coordinator in term {term}"
                )));
            }
            if let Some(since) = sim_node
                .cut_off_since
                .filter(|&since| now >= since + lease_ms)
            {
                return Err(self.error(format!(
                    "node {id} still acts {} ms after losing its majority",
                    now - since
                )));
            }
        }
        for (id, term) in self.acting() {
            self.acting_terms.insert(term, id);
        }
        let holders = self.holders();
        if holders.len() > 1 {
            return Err(self.error(format!("two holders at once: {holders:?}")));
        }
        Ok(())
    }
}

/// Checks that in `merged` every logged receive comes after its logged send.
pub fn check_causal_order(merged: &[LogEvent]) -> Result<(), String> {
    let mut sends: HashMap<(NodeId, u64), usize> = HashMap::new();
    for (position, event) in merged.iter().enumerate() {
        if let Event::Send { .. } = event.event {
            sends.insert((event.node, event.lamport), position);
        }
    }
    for (position, event) in merged.iter().enumerate() {
        if let Event::Receive {
            from, sent_lamport, ..
        } = &event.event
        {
            match sends.get(&(*from, *sent_lamport)) {
                Some(&send) if send < position => {}
                Some(_) => {
                    return Err(format!("receive {event:?} sorts before its send"));
                }
                None => return Err(format!("receive {event:?} has no logged send")),
            }
        }
    }
    Ok(())
}

/// Simulated ms of faults before healing in `random_run`.
pub const CHAOS_MS: u64 = 2000;
/// Simulated ms after healing by which every request must be granted in `random_run`.
pub const SETTLE_MS: u64 = 4000;

/// One randomized run for `seed`: random network quality, one to four random faults (crashes,
/// pauses, isolation, 2|2 splits, aimed at fixed nodes, the leader or the lock holder) during
/// `CHAOS_MS`, then healing; clients stop starting new work 500 ms after healing, and every
/// request must be granted within `SETTLE_MS`. Returns the simulator for inspection.
pub fn random_run(seed: u64) -> Result<Sim, SimError> {
    random_run_with(seed, |_| {})
}

/// `random_run` with the configuration adjusted by `adjust` after the seed chose the network
/// (to log heartbeats while debugging a seed, say).
pub fn random_run_with(seed: u64, adjust: impl FnOnce(&mut SimConfig)) -> Result<Sim, SimError> {
    let mut sim = random_sim(seed, adjust);
    run_random(&mut sim)?;
    Ok(sim)
}

/// The simulator `random_run` uses for `seed`, with faults scheduled but not yet run.
pub fn random_sim(seed: u64, adjust: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let latencies = [(1, 2), (1, 10), (1, 25)];
    let mut config = SimConfig {
        latency_ms: latencies[rng.gen_range(0..latencies.len())],
        loss: [0.0, 0.01, 0.05, 0.1][rng.gen_range(0..4)],
        duplicate: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
        ..SimConfig::default()
    };
    adjust(&mut config);
    let nodes = config.nodes;
    let mut sim = Sim::new(seed, config);
    let mut crashed_for_good = false;
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(300..CHAOS_MS - 100);
        let some_node = Target::Node(NodeId(rng.gen_range(1..=nodes)));
        let target = match rng.gen_range(0..3) {
            0 => some_node,
            1 => Target::Leader,
            _ => Target::Holder,
        };
        let duration = rng.gen_range(100..1000);
        let fault = match rng.gen_range(0..5) {
            0 => {
                // At most one node stays down, so a majority remains after healing.
                let forever = !crashed_for_good && rng.gen_bool(0.1);
                crashed_for_good |= forever;
                Fault::Crash {
                    target,
                    down_ms: (!forever).then_some(duration),
                }
            }
            1 => Fault::Pause {
                target,
                for_ms: duration,
            },
            2 => Fault::Isolate {
                target,
                for_ms: duration,
            },
            3 => {
                let first = rng.gen_range(1..=nodes);
                let mut second = rng.gen_range(1..=nodes);
                if second == first {
                    second = first % nodes + 1;
                }
                Fault::Split {
                    side: vec![NodeId(first), NodeId(second)],
                    for_ms: duration,
                }
            }
            _ => Fault::Pause {
                target: Target::Leader,
                for_ms: rng.gen_range(400..1200),
            },
        };
        sim.schedule(at, fault);
    }
    sim.schedule(CHAOS_MS, Fault::Heal);
    sim.schedule(CHAOS_MS + 500, Fault::StopClients);
    sim
}

/// Runs a simulator from `random_sim` to the end and makes the final checks.
pub fn run_random(sim: &mut Sim) -> Result<(), SimError> {
    sim.run_until(CHAOS_MS + 500)?;
    while sim.now() < CHAOS_MS + SETTLE_MS && !sim.all_requests_acquired() {
        sim.step()?;
    }
    sim.final_checks()
}
