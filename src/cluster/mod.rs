//! Cluster mode (issue 6), the pure part: Lamport clocks, bully election with terms and a majority
//! lease, and the coordinator-run lock with fencing tokens, as I/O-free state machines plus a
//! seeded simulator that checks them under crashes, pauses, message loss and partitions.
//!
//! - `lamport`: the logical clock every message and log line carries.
//! - `message`: node ids, terms, fencing tokens, the messages and their `key: value` encoding.
//! - `node`: one node's logic (`Node`), driven by messages, ticks and the local lock API, with
//!   time passed in; it returns what to send, persist and log.
//! - `log`: the JSON-lines event log, `merge_logs` and the lock-history checker.
//! - `sim`: the deterministic simulator the tests use.
//!
//! And the part that runs in real servers:
//! - `transport`: envelopes as `KILN/1 CLUSTER` requests (`Node:` and `Lamport:` headers), sent by
//!   one thread per peer over short-lived connections with short timeouts.
//! - `runtime`: the thread that owns the `Node`, ticks it, persists its state, appends its log and
//!   lets `Exclusive: yes` jobs wait for the lock (`ClusterHandle`).
//! - `remote`: the client side (`fetch_status`, `fetch_log`) for `kiln cluster` and the app.
//!
//! Neighbours: `crate::server` starts the runtime, routes cluster intents to it (never through
//! the job queue) and wraps exclusive jobs; `crate::cli` has `kiln cluster up|status|log`; the
//! desktop app (`crate::ui`) draws the space-time diagram from the merged log.

pub mod lamport;
pub mod log;
pub mod message;
pub mod node;
pub mod remote;
pub mod runtime;
pub mod sim;
pub mod transport;

#[cfg(test)]
mod sim_tests;

pub use lamport::LamportClock;
pub use log::{Event, FreeReason, HistoryViolation, Hold, LogEvent, check_history, merge_logs};
pub use message::{
    Envelope, FenceParseError, FencingToken, FieldList, FieldsError, Message, NodeId, RequestId,
    Term,
};
pub use node::{LockHolder, Node, NodeStatus, Output, PersistentState, QueuedLock, Role, Timing};
pub use remote::{ClusterStatus, NodeReport, RemoteError, fetch_log, fetch_status};
pub use runtime::{ClusterConfig, ClusterHandle, LockError, PeerAddr, parse_peers};
