//! Cluster mode (issue 6), the pure part: Lamport clocks, bully election with terms and a majority
//! lease, and the coordinator-run lock with fencing tokens, as I/O-free state machines plus a
//! seeded simulator that checks them under crashes, pauses, message loss and partitions.
//!
//! - `lamport`: the logical clock every message and log line carries.
//! - `message`: node ids, terms, fencing tokens, the messages and their `key: value` encoding.
//! - `node`: one node's logic (`Node`), driven by messages, ticks and the local lock API, with
//!   time passed in; it returns what to send, persist and log.
//! - `log`: the JSON-lines event log, `merge_logs` and the lock-history checker.
//! - `sim`: the deterministic simulator the tests (and later integration tests) use.
//!
//! Neighbours: `crate::server` carries envelopes over TCP in KILN/1 framing (`Node:` and
//! `Lamport:` headers), calls `Node::on_tick` on a timer, runs `Exclusive: yes` jobs under the lock,
//! and serves `kiln cluster status` from `Node::status`; the desktop app (`crate::ui`) draws the
//! space-time diagram from the merged log.

pub mod lamport;
pub mod log;
pub mod message;
pub mod node;
pub mod sim;

#[cfg(test)]
mod sim_tests;

pub use lamport::LamportClock;
pub use log::{Event, FreeReason, HistoryViolation, Hold, LogEvent, check_history, merge_logs};
pub use message::{
    Envelope, FenceParseError, FencingToken, FieldList, FieldsError, Message, NodeId, RequestId,
    Term,
};
pub use node::{LockHolder, Node, NodeStatus, Output, PersistentState, QueuedLock, Role, Timing};
