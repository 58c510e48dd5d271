//! The client side of cluster mode: what `kiln cluster status`, `kiln cluster log` and the
//! desktop app's Cluster view call to ask a server about its cluster, over KILN/1.
//!
//! - `fetch_status(&client)` sends `CLUSTER-STATUS`; the node answers with its own status and
//!   each peer's (it asks them, with a short timeout), as a [`ClusterStatus`].
//! - `fetch_node_status(&client)` sends `CLUSTER-STATUS` with `Scope: local`: that node only.
//! - `fetch_log(&client, since_lamport)` sends `CLUSTER-LOG`: the node's own event log after a
//!   Lamport time, for the space-time diagram; merge several nodes' with `super::merge_logs`.
//!
//! The answers are produced by `super::runtime`; the JSON shapes are `NodeStatus` and `LogEvent`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::log::{LogEvent, merge_logs};
use super::message::NodeId;
use super::node::{LockHolder, NodeStatus, QueuedLock};
use crate::client::{Client, ClientError, Event, JobSpec};
use crate::protocol::{Channel, Intent, Verdict};

/// The frame channel that carries a status as JSON.
pub const STATUS_CHANNEL: &str = "cluster-status";
/// The frame channel that carries log events as JSON lines.
pub const LOG_CHANNEL: &str = "cluster-log";

/// One node as seen by the node that answered `CLUSTER-STATUS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node.
    pub id: NodeId,
    /// Where it listens (empty for the answering node when `--peers` left it out).
    pub addr: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its own status, when it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The whole cluster as one node sees it: its own status and what each peer said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub answered_by: NodeId,
    /// Every node, by id.
    pub nodes: Vec<NodeReport>,
}

impl ClusterStatus {
    /// The coordinator acting with a majority, if a reachable node says it is one (the highest
    /// term wins if, briefly, two say so).
    pub fn acting_leader(&self) -> Option<&NodeStatus> {
        self.statuses()
            .filter(|status| status.acting)
            .max_by_key(|status| status.term)
    }

    /// The lock holder according to the acting coordinator.
    pub fn lock_holder(&self) -> Option<LockHolder> {
        self.acting_leader().and_then(|leader| leader.lock_holder)
    }

    /// The lock queue according to the acting coordinator, first first.
    pub fn queue(&self) -> Vec<QueuedLock> {
        self.acting_leader()
            .map(|leader| leader.queue.clone())
            .unwrap_or_default()
    }

    /// The statuses of the nodes that answered.
    pub fn statuses(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter_map(|node| node.status.as_ref())
    }
}

/// Why a cluster question failed.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// Connecting, sending or a refusal (a server not in a cluster refuses with `bad-request`).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server answered something that is not the expected JSON.
    #[error("the server's {what} does not parse: {source}")]
    Json {
        /// What was being parsed.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The answer lacked its data frame, or said the server failed.
    #[error("the server sent no {0}")]
    Missing(&'static str),
}

/// Asks the server at `client` for the whole cluster's status (it asks its peers).
///
/// # Errors
/// A `RemoteError`: unreachable, not clustered, or a malformed answer.
pub fn fetch_status(client: &Client) -> Result<ClusterStatus, RemoteError> {
    let body = fetch_frame(client, Intent::ClusterStatus, &[], STATUS_CHANNEL)?;
    serde_json::from_slice(&body).map_err(|source| RemoteError::Json {
        what: "cluster status",
        source,
    })
}

/// Asks the server at `client` for its own node status only.
///
/// # Errors
/// As [`fetch_status`].
pub fn fetch_node_status(client: &Client) -> Result<NodeStatus, RemoteError> {
    let body = fetch_frame(
        client,
        Intent::ClusterStatus,
        &[("Scope", "local".to_owned())],
        STATUS_CHANNEL,
    )?;
    serde_json::from_slice(&body).map_err(|source| RemoteError::Json {
        what: "node status",
        source,
    })
}

/// Asks the server at `client` for its log events after Lamport time `since_lamport` (0: all).
///
/// # Errors
/// As [`fetch_status`]; a line that does not parse fails the whole answer.
pub fn fetch_log(client: &Client, since_lamport: u64) -> Result<Vec<LogEvent>, RemoteError> {
    let body = fetch_frame(
        client,
        Intent::ClusterLog,
        &[("Since-Lamport", since_lamport.to_string())],
        LOG_CHANNEL,
    )?;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            LogEvent::from_json_line(line).map_err(|source| RemoteError::Json {
                what: "cluster log",
                source,
            })
        })
        .collect()
}

/// Fetches the logs of several servers and merges them into one causal order.
///
/// # Errors
/// The first server that fails.
pub fn fetch_merged_log(clients: &[Client]) -> Result<Vec<LogEvent>, RemoteError> {
    let mut logs = Vec::new();
    for client in clients {
        logs.push(fetch_log(client, 0)?);
    }
    Ok(merge_logs(logs))
}

fn fetch_frame(
    client: &Client,
    intent: Intent,
    headers: &[(&str, String)],
    channel: &'static str,
) -> Result<Vec<u8>, RemoteError> {
    let mut job = JobSpec::simple(intent);
    for (name, value) in headers {
        job.head.extra.push(((*name).to_owned(), value.clone()));
    }
    let (events, result) = client.run_to_end(&job)?;
    if result.verdict != Verdict::Ok {
        return Err(RemoteError::Missing(channel));
    }
    events
        .into_iter()
        .find_map(|event| match event {
            Event::Other(frame) if frame.channel == Channel::Other(channel.to_owned()) => {
                Some(frame.body)
            }
            _ => None,
        })
        .ok_or(RemoteError::Missing(channel))
}
