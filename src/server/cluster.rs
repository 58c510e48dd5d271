//! Where the server meets cluster mode (`crate::cluster`): routing cluster intents away from the
//! job queue, running `Exclusive: yes` jobs under the cluster lock with `KILN_FENCE` set,
//! logging jobs in the node's event log, and the cluster lines of INFO.
//!
//! The acceptor (`super::reader`) calls `route` for `CLUSTER`, `CLUSTER-STATUS` and `CLUSTER-LOG`;
//! the worker (`super::worker`) calls `execute_job` and `push_info`.

use std::time::Duration;

use super::Shared;
use crate::cluster::log::Event;
use crate::cluster::message::RequestId;
use crate::cluster::transport::envelope_from_head;
use crate::exec::{JobInput, JobSink, Outcome};
use crate::protocol::{Channel, ErrorCode, Fields, Frame, Intent, Request, Status, Verdict};

/// What the acceptor does with a cluster request.
pub(super) enum Route {
    /// Write these bytes (a whole answer) and close.
    Answer(Vec<u8>),
    /// Refuse with this status.
    Refuse(Status),
    /// Hand the connection to the cluster runtime's answering thread.
    Handoff(Request),
}

/// Decides what to do with a complete cluster request; peer messages are delivered at once.
pub(super) fn route(shared: &Shared, request: Request) -> Route {
    let Some(cluster) = &shared.cluster else {
        return Route::Refuse(Status::error(
            ErrorCode::BadRequest,
            format!(
                "{} needs a server in a cluster; this one is not (start it with --node ID --peers ID=HOST:PORT,...)",
                request.head.intent()
            ),
        ));
    };
    match request.head.intent() {
        Intent::Cluster => {
            let envelope = match envelope_from_head(&request.head) {
                Ok(envelope) => envelope,
                Err(error) => {
                    return Route::Refuse(Status::error(
                        ErrorCode::BadRequest,
                        format!("CLUSTER message: {error}"),
                    ));
                }
            };
            let me = cluster.config().id;
            if envelope.to != me {
                return Route::Refuse(Status::error(
                    ErrorCode::BadRequest,
                    format!(
                        "CLUSTER message for node {} reached node {me}; check --peers",
                        envelope.to
                    ),
                ));
            }
            cluster.deliver(envelope);
            let mut bytes = Status::Ok {
                job_id: format!("cluster-{me}"),
            }
            .encode();
            let mut result = Fields::new();
            result.push("verdict", Verdict::Ok);
            bytes.extend_from_slice(&Frame::new(Channel::Result, result.encode()).encode());
            Route::Answer(bytes)
        }
        _ => Route::Handoff(request),
    }
}

/// Whether the request asks to run under the cluster lock (`Exclusive: yes`).
fn exclusive(request: &Request) -> Result<bool, String> {
    match request.head.extra("exclusive") {
        None => Ok(false),
        Some(value) if value.eq_ignore_ascii_case("yes") => Ok(true),
        Some(value) if value.eq_ignore_ascii_case("no") => Ok(false),
        Some(value) => Err(format!(
            "Exclusive must be `yes` or `no`, got `{}`",
            crate::protocol::quote_for_message(value.as_bytes(), 30)
        )),
    }
}

/// Runs a CHECK, RUN or BUILD job; on a clustered server it is logged in the node's event log,
/// and an `Exclusive: yes` RUN waits (up to its time limit) for the cluster lock, runs with
/// `KILN_FENCE` set to its fencing token (`term << 32 | seq`), and releases the lock after.
pub(super) fn execute_job(
    shared: &Shared,
    job_id: &str,
    request: &Request,
    mut input: JobInput,
    sink: &mut dyn JobSink,
) -> Outcome {
    let wants_lock = match exclusive(request) {
        Ok(wants) => wants && input.intent == Intent::Run,
        Err(message) => {
            return Outcome {
                message: Some(message),
                ..Outcome::verdict(Verdict::LockUnavailable)
            };
        }
    };
    let Some(cluster) = &shared.cluster else {
        if wants_lock {
            return Outcome {
                message: Some(
                    "Exclusive: yes needs a server in a cluster; this one is not (start it with --node and --peers)"
                        .into(),
                ),
                ..Outcome::verdict(Verdict::LockUnavailable)
            };
        }
        return shared.executor.execute(&input, sink);
    };
    let record = |phase: String| {
        cluster.record(Event::Job {
            job: job_id.to_owned(),
            phase,
        });
    };
    let mut held = None;
    if wants_lock {
        let request_id = RequestId(rand::random());
        record(format!("waiting for the lock (request {request_id})"));
        let timeout = input.limits.wall.max(Duration::from_millis(1));
        match cluster.acquire(request_id, timeout) {
            Ok(fence) => {
                record(format!("holds the lock, fence {fence}"));
                input
                    .env
                    .push(("KILN_FENCE".into(), fence.as_u64().to_string()));
                input
                    .env
                    .push(("KILN_FENCE_TOKEN".into(), fence.to_string()));
                held = Some(request_id);
            }
            Err(error) => {
                record("lock unavailable".into());
                return Outcome {
                    message: Some(error.to_string()),
                    ..Outcome::verdict(Verdict::LockUnavailable)
                };
            }
        }
    }
    record(format!("started {}", input.intent));
    let mut outcome = shared.executor.execute(&input, sink);
    if let Some(request_id) = held {
        if cluster.lost(request_id) && outcome.message.is_none() {
            outcome.message = Some(
                "the cluster lock's lease ran out while the job ran; fenced resources refuse its late writes".into(),
            );
        }
        cluster.release(request_id);
    }
    record(format!("finished {}", outcome.verdict));
    outcome
}

/// Adds the cluster lines to INFO: node, term, leader, Lamport time, peers.
pub(super) fn push_info(shared: &Shared, fields: &mut Fields) {
    let Some(cluster) = &shared.cluster else {
        return;
    };
    let config = cluster.config();
    fields.push("node", config.id);
    if let Some(status) = cluster.status() {
        fields
            .push("term", status.term)
            .push(
                "leader",
                status
                    .leader
                    .map_or_else(|| "none".to_owned(), |leader| leader.to_string()),
            )
            .push("lamport", status.lamport);
    }
    for peer in config.others() {
        fields.push("peer", format!("{}={}", peer.id, peer.addr));
    }
}
