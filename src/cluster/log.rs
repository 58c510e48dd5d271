//! The cluster event log: one JSON line per job or cluster event, stamped with the node and its
//! Lamport time, so the logs of all nodes merge into one order consistent with causality
//! (`merge_logs`), and a checker (`check_history`) that finds two nodes holding the lock at once.
//!
//! `super::node::Node` produces the events; the server appends them to its log file, `kiln cluster`
//! and the desktop app's space-time diagram read them back with `LogEvent::from_json_line`. The
//! checker serves both the simulator (`super::sim`) and tests that run real processes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::message::{FencingToken, NodeId, RequestId, Term};

/// One logged event: `{"node":1,"lamport":17,"time_ms":1200,"term":3,"event":"elected",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// The node the event happened on.
    pub node: NodeId,
    /// The node's Lamport time for the event; unique and increasing within one node.
    pub lamport: u64,
    /// The node's clock in milliseconds (whatever the server passes as `now`); only comparable
    /// across nodes that share a clock, such as processes on one machine or the simulator.
    pub time_ms: u64,
    /// The node's term when the event happened.
    pub term: Term,
    /// What happened, with its details.
    #[serde(flatten)]
    pub event: Event,
}

impl LogEvent {
    /// The event as one line of JSON, without the line break.
    pub fn to_json_line(&self) -> String {
        // Serialising plain data with string keys cannot fail; fall back to a visible marker
        // rather than panicking if a future field ever makes it fail.
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }

    /// Parses one line written by `to_json_line`.
    pub fn from_json_line(line: &str) -> Result<LogEvent, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Why a coordinator stopped tracking a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreeReason {
    /// The holder released it.
    Released,
    /// The holder's lease ran out without a renewal.
    Expired,
}

/// What happened. Serialised as the `event` key plus the variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The node started; `restored` when it came back with persisted state after a crash.
    Started {
        /// Whether persisted state was restored.
        restored: bool,
    },
    /// A message was sent (liveness traffic only when `Timing::log_heartbeats`).
    Send {
        /// The receiver.
        to: NodeId,
        /// The message's wire name.
        msg: String,
    },
    /// A message was received; `(from, sent_lamport)` names the matching `send` event.
    Receive {
        /// The sender.
        from: NodeId,
        /// The message's wire name.
        msg: String,
        /// The sender's Lamport time for the send.
        sent_lamport: u64,
    },
    /// The node suspects the coordinator (or has none) and starts a bully election.
    ElectionStarted,
    /// No higher node answered: the node takes a new term and announces itself coordinator.
    Announced,
    /// A majority acknowledged the node as coordinator for the first time in this term; it now
    /// gathers lock state before granting.
    Elected,
    /// A coordinator that had lost its majority has it again (same term, same lock table).
    Regained,
    /// The coordinator's majority acknowledgements expired; it stops acting.
    LostMajority,
    /// The node stopped being coordinator (a newer term or a higher coordinator appeared).
    SteppedDown,
    /// The node now believes `leader` is the coordinator (`None`: it does not know one).
    LeaderChanged {
        /// The coordinator the node follows.
        leader: Option<NodeId>,
    },
    /// The new coordinator may grant: every node reported, or old leases had time to expire.
    GatherDone {
        /// How many nodes (counting itself) reported their lock state.
        reported: usize,
        /// Whether it had to wait out old leases because some node did not report.
        waited: bool,
    },
    /// Client side: the node asks for the lock.
    Requested {
        /// The request.
        request_id: RequestId,
    },
    /// Client side: the node withdrew a request that was not yet granted.
    Cancelled {
        /// The request.
        request_id: RequestId,
    },
    /// Coordinator side: a request joined the FIFO queue.
    Queued {
        /// The requesting node.
        holder: NodeId,
        /// The request.
        request_id: RequestId,
    },
    /// Coordinator side: the lock was granted.
    Granted {
        /// The node granted the lock.
        holder: NodeId,
        /// The request granted.
        request_id: RequestId,
        /// The grant's fencing token.
        fence: FencingToken,
        /// The lease length.
        lease_ms: u64,
    },
    /// Coordinator side: a new coordinator learned from a report that a node holds the lock.
    Adopted {
        /// The holder.
        holder: NodeId,
        /// The held request.
        request_id: RequestId,
        /// The holder's token (from an older term).
        fence: FencingToken,
    },
    /// Coordinator side: the lock is free again.
    Freed {
        /// The former holder.
        holder: NodeId,
        /// The former holder's request.
        request_id: RequestId,
        /// The former holder's token.
        fence: FencingToken,
        /// Released by the holder, or expired.
        reason: FreeReason,
    },
    /// Client side: the node holds the lock until `lease_until_ms` (its own clock) unless renewed.
    Acquired {
        /// The request granted.
        request_id: RequestId,
        /// The token to present to fenced resources.
        fence: FencingToken,
        /// When the lease runs out.
        lease_until_ms: u64,
    },
    /// Client side: the lease was extended.
    Renewed {
        /// The held request.
        request_id: RequestId,
        /// The held token.
        fence: FencingToken,
        /// The new end of the lease.
        lease_until_ms: u64,
    },
    /// Client side: the node gave the lock back.
    Released {
        /// The released request.
        request_id: RequestId,
        /// The released token.
        fence: FencingToken,
    },
    /// Client side: the lease ran out before a renewal came; the node no longer holds the lock.
    LeaseLost {
        /// The lost request.
        request_id: RequestId,
        /// The lost token.
        fence: FencingToken,
        /// When the lease ran out.
        lease_until_ms: u64,
    },
    /// A job event logged by the server (`Node::record`), so jobs appear in the merged order.
    Job {
        /// The job's id.
        job: String,
        /// What happened to it (`queued`, `started`, `finished`, ...).
        phase: String,
    },
}

/// Merges the logs of several nodes into one total order consistent with causality: by Lamport
/// time, ties broken by node id. If event `a` happened before `b` (same node earlier, or `a` is a
/// send and `b` its receive, or a chain of those), `a` sorts first.
pub fn merge_logs(logs: Vec<Vec<LogEvent>>) -> Vec<LogEvent> {
    let mut merged: Vec<LogEvent> = logs.into_iter().flatten().collect();
    merged.sort_by_key(|event| (event.lamport, event.node));
    merged
}

/// One node's tenure of the lock as reconstructed from the log, on the nodes' shared clock:
/// from `Acquired` until `Released`, or until its lease ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The holder.
    pub node: NodeId,
    /// The holder's request.
    pub request_id: RequestId,
    /// The holder's token.
    pub fence: FencingToken,
    /// When the holder acquired the lock.
    pub from_ms: u64,
    /// When the holder stopped holding it (exclusive).
    pub until_ms: u64,
}

/// A safety violation `check_history` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryViolation {
    /// Two different holds overlap in time.
    OverlappingHolders {
        /// The hold that started first.
        first: Hold,
        /// The hold that started while `first` was still valid.
        second: Hold,
    },
    /// A later hold carries a token that is not higher than an earlier one's.
    FenceNotIncreasing {
        /// The earlier hold.
        earlier: Hold,
        /// The later hold with the lower or equal token.
        later: Hold,
    },
    /// One request was acquired twice.
    AcquiredTwice {
        /// The requesting node.
        node: NodeId,
        /// The request.
        request_id: RequestId,
    },
}

/// Checks the lock history in `events` (any order; usually several nodes' logs merged) and
/// returns every violation found: two holds overlapping in time, a later hold with a token not
/// above an earlier one's, or a request acquired twice.
///
/// Holds come from the client-side events `acquired`, `renewed`, `released` and `lease_lost`. A
/// hold ends at its release or at the end of its lease, whichever is first; a hold that never
/// ended in the log (its node crashed) ends when its node restarted or its last known lease ran
/// out, whichever is first. Times are `time_ms`, so
/// the nodes must share a clock (the simulator, or processes on one machine).
pub fn check_history(events: &[LogEvent]) -> Vec<HistoryViolation> {
    let mut violations = Vec::new();
    let mut holds: HashMap<(NodeId, RequestId), Hold> = HashMap::new();
    let mut order: Vec<(NodeId, RequestId)> = Vec::new();
    let mut by_node: Vec<&LogEvent> = events.iter().collect();
    // Each node's own events in its own order; the relative order of nodes does not matter here.
    by_node.sort_by_key(|event| (event.node, event.lamport));
    for event in by_node {
        let node = event.node;
        match &event.event {
            Event::Acquired {
                request_id,
                fence,
                lease_until_ms,
            } => {
                let key = (node, *request_id);
                if holds.contains_key(&key) {
                    violations.push(HistoryViolation::AcquiredTwice {
                        node,
                        request_id: *request_id,
                    });
                    continue;
                }
                order.push(key);
                holds.insert(
                    key,
                    Hold {
                        node,
                        request_id: *request_id,
                        fence: *fence,
                        from_ms: event.time_ms,
                        until_ms: *lease_until_ms,
                    },
                );
            }
            Event::Renewed {
                request_id,
                lease_until_ms,
                ..
            } => {
                if let Some(hold) = holds.get_mut(&(node, *request_id)) {
                    // A renewal only counts if it came while the lease was still running.
                    if hold.until_ms > event.time_ms {
                        hold.until_ms = hold.until_ms.max(*lease_until_ms);
                    }
                }
            }
            Event::Released { request_id, .. } => {
                if let Some(hold) = holds.get_mut(&(node, *request_id)) {
                    hold.until_ms = hold.until_ms.min(event.time_ms);
                }
            }
            Event::LeaseLost {
                request_id,
                lease_until_ms,
                ..
            } => {
                if let Some(hold) = holds.get_mut(&(node, *request_id)) {
                    hold.until_ms = hold.until_ms.min(*lease_until_ms);
                }
            }
            Event::Started { .. } => {
                // A restart ends whatever the node held before it crashed, at the latest now: a
                // new coordinator may count on the restarted node's report of holding nothing.
                for key in &order {
                    if key.0 == node
                        && let Some(hold) = holds.get_mut(key)
                    {
                        hold.until_ms = hold.until_ms.min(event.time_ms);
                    }
                }
            }
            _ => {}
        }
    }

    let mut sorted: Vec<Hold> = order
        .iter()
        .filter_map(|key| holds.get(key).copied())
        .collect();
    sorted.sort_by_key(|hold| (hold.from_ms, hold.fence));
    // Sweep in start order, remembering the hold that reaches furthest and the highest token.
    let mut furthest: Option<Hold> = None;
    let mut highest: Option<Hold> = None;
    for hold in sorted {
        if let Some(previous) = furthest.filter(|previous| hold.from_ms < previous.until_ms) {
            violations.push(HistoryViolation::OverlappingHolders {
                first: previous,
                second: hold,
            });
        }
        if let Some(previous) = highest.filter(|previous| hold.fence <= previous.fence) {
            violations.push(HistoryViolation::FenceNotIncreasing {
                earlier: previous,
                later: hold,
            });
        }
        if furthest.is_none_or(|previous| hold.until_ms > previous.until_ms) {
            furthest = Some(hold);
        }
        if highest.is_none_or(|previous| hold.fence > previous.fence) {
            highest = Some(hold);
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(term: u64, seq: u64) -> FencingToken {
        FencingToken {
            term: Term(term),
            seq,
        }
    }

    fn at(node: u32, lamport: u64, time_ms: u64, event: Event) -> LogEvent {
        LogEvent {
            node: NodeId(node),
            lamport,
            time_ms,
            term: Term(1),
            event,
        }
    }

    fn acquired(request: u64, f: FencingToken, until: u64) -> Event {
        Event::Acquired {
            request_id: RequestId(request),
            fence: f,
            lease_until_ms: until,
        }
    }

    fn released(request: u64, f: FencingToken) -> Event {
        Event::Released {
            request_id: RequestId(request),
            fence: f,
        }
    }

    #[test]
    fn json_line_has_node_lamport_and_event() {
        let event = at(
            1,
            17,
            1200,
            Event::Granted {
                holder: NodeId(2),
                request_id: RequestId(9),
                fence: fence(3, 1),
                lease_ms: 300,
            },
        );
        let line = event.to_json_line();
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["node"], 1);
        assert_eq!(value["lamport"], 17);
        assert_eq!(value["event"], "granted");
        assert_eq!(value["fence"], "3.1");
        assert_eq!(LogEvent::from_json_line(&line).ok(), Some(event));

        let unit = at(2, 3, 4, Event::Elected);
        assert_eq!(
            unit.to_json_line(),
            r#"{"node":2,"lamport":3,"time_ms":4,"term":1,"event":"elected"}"#
        );
        assert_eq!(
            LogEvent::from_json_line(&unit.to_json_line()).ok(),
            Some(unit)
        );
        assert!(LogEvent::from_json_line(r#"{"node":1}"#).is_err());
    }

    #[test]
    fn merge_orders_by_lamport_then_node() {
        let a = vec![at(2, 1, 0, Event::Elected), at(2, 5, 0, Event::Elected)];
        let b = vec![at(1, 1, 0, Event::Elected), at(1, 3, 0, Event::Elected)];
        let merged = merge_logs(vec![a, b]);
        let keys: Vec<(u64, u32)> = merged.iter().map(|e| (e.lamport, e.node.0)).collect();
        assert_eq!(keys, vec![(1, 1), (1, 2), (3, 1), (5, 2)]);
    }

    #[test]
    fn sequential_holds_pass() {
        let events = vec![
            at(1, 1, 100, acquired(1, fence(1, 1), 400)),
            at(1, 2, 150, released(1, fence(1, 1))),
            at(2, 1, 160, acquired(7, fence(1, 2), 460)),
            at(
                2,
                2,
                300,
                Event::Renewed {
                    request_id: RequestId(7),
                    fence: fence(1, 2),
                    lease_until_ms: 600,
                },
            ),
            at(
                2,
                3,
                600,
                Event::LeaseLost {
                    request_id: RequestId(7),
                    fence: fence(1, 2),
                    lease_until_ms: 600,
                },
            ),
            at(3, 1, 600, acquired(1, fence(2, 1), 900)),
        ];
        assert_eq!(check_history(&events), vec![]);
    }

    #[test]
    fn overlap_stale_fence_and_double_acquire_are_found() {
        let events = vec![
            at(1, 1, 100, acquired(1, fence(1, 1), 400)),
            at(2, 1, 200, acquired(1, fence(1, 2), 500)),
        ];
        assert!(matches!(
            check_history(&events).as_slice(),
            [HistoryViolation::OverlappingHolders { .. }]
        ));

        let events = vec![
            at(1, 1, 100, acquired(1, fence(2, 1), 400)),
            at(1, 2, 150, released(1, fence(2, 1))),
            at(2, 1, 200, acquired(1, fence(1, 9), 500)),
        ];
        assert!(matches!(
            check_history(&events).as_slice(),
            [HistoryViolation::FenceNotIncreasing { .. }]
        ));

        let events = vec![
            at(1, 1, 100, acquired(1, fence(1, 1), 400)),
            at(1, 2, 150, released(1, fence(1, 1))),
            at(1, 3, 200, acquired(1, fence(1, 2), 500)),
        ];
        assert_eq!(
            check_history(&events),
            vec![HistoryViolation::AcquiredTwice {
                node: NodeId(1),
                request_id: RequestId(1)
            }]
        );
    }

    #[test]
    fn a_crashed_holder_holds_until_its_last_lease() {
        // Node 1 never logs a release (it crashed); its last renewal reached 700.
        let events = vec![
            at(1, 1, 100, acquired(1, fence(1, 1), 400)),
            at(
                1,
                2,
                300,
                Event::Renewed {
                    request_id: RequestId(1),
                    fence: fence(1, 1),
                    lease_until_ms: 700,
                },
            ),
            at(2, 1, 650, acquired(1, fence(2, 1), 900)),
        ];
        assert_eq!(check_history(&events).len(), 1);
        let events = vec![
            at(1, 1, 100, acquired(1, fence(1, 1), 400)),
            at(2, 1, 700, acquired(1, fence(2, 1), 900)),
        ];
        assert_eq!(check_history(&events), vec![]);
    }
}
