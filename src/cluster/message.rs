//! What cluster nodes say to each other: identities, terms, fencing tokens, the `Message`s of the
//! bully election and the lock, and the `Envelope` that carries one message between two nodes.
//!
//! Every message has a stable upper-case wire name (`ELECTION`, `GRANT`, ...) and encodes to and from
//! ordered `key: value` pairs, so the transport (KILN/1 framing, owned by `crate::server`) can put
//! them in headers or a body without knowing what they mean. Parsing never panics on bad input: it
//! returns a `FieldsError`.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Ordered `key: value` pairs, as the transport carries them.
pub type FieldList = Vec<(String, String)>;

/// A node's identity: unique in the cluster, fixed, and ordered (the highest live id leads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for NodeId {
    type Err = ParseIntError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(NodeId)
    }
}

/// An election term: a coordinator is elected for one term, and anything stamped with an older
/// term than the receiver's is ignored. Persisted across restarts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Term {
    type Err = ParseIntError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(Term)
    }
}

/// A lock request's id, chosen by the client so that a retried request is recognised and not
/// granted twice. Unique per requesting node (the server can use its job ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for RequestId {
    type Err = ParseIntError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(RequestId)
    }
}

/// The token that comes with every lock grant: the coordinator's term, then a sequence number
/// within the term. Ordered by term first, so tokens strictly increase across coordinator changes;
/// a fenced resource rejects any write carrying a token lower than the highest it has seen.
///
/// Written `term.seq` (`3.17`) on the wire and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken {
    /// The term of the coordinator that granted it.
    pub term: Term,
    /// The grant's number within that term, from 1.
    pub seq: u64,
}

impl FencingToken {
    /// The token as one integer, `term << 32 | seq`, for resources that only store a number.
    /// Order-preserving while `seq` stays below 2^32 and `term` below 2^32.
    pub fn as_u64(self) -> u64 {
        (self.term.0 << 32) | (self.seq & 0xffff_ffff)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.seq)
    }
}

/// Why a fencing token failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fencing token `{0}` (expected TERM.SEQ)")]
pub struct FenceParseError(String);

impl FromStr for FencingToken {
    type Err = FenceParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || FenceParseError(text.to_owned());
        let (term, seq) = text.split_once('.').ok_or_else(invalid)?;
        Ok(FencingToken {
            term: term.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

impl Serialize for FencingToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FencingToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One cluster message. Times called `stamp` are the *sender's* clock in milliseconds, echoed back
/// unchanged in the reply, so each side only ever compares times from its own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Bully: "I am starting an election", sent to every higher id.
    Election,
    /// Bully: "I am alive and higher than you; stand down and wait for COORDINATOR".
    Answer,
    /// "I am the coordinator for the envelope's term"; acknowledging it is a vote.
    Coordinator {
        /// The coordinator's clock when it sent this (echoed in the `Ack`).
        stamp: u64,
    },
    /// The coordinator's periodic claim; acknowledged like `Coordinator`.
    Heartbeat {
        /// The coordinator's clock when it sent this (echoed in the `Ack`).
        stamp: u64,
    },
    /// The answer to `Coordinator` or `Heartbeat`. `ok: false` refuses (older term, voted for
    /// another node, or the claimant is lower than the receiver); the envelope's term tells a stale
    /// coordinator which term is current.
    Ack {
        /// The echoed `stamp` of the acknowledged claim.
        stamp: u64,
        /// Whether the receiver accepts the claimant as its coordinator for the term.
        ok: bool,
    },
    /// A new coordinator asks for the lock state a node knows before it grants anything.
    LockStateQuery,
    /// A node's lock state, sent to a new coordinator.
    LockStateReport {
        /// The lock this node holds under a still valid lease, if any.
        held: Option<(RequestId, FencingToken)>,
        /// This node's requests that are waiting for a grant.
        pending: Vec<RequestId>,
        /// The reporter's clock when it sent this (a grant for a pending request echoes it).
        stamp: u64,
    },
    /// A client asks for the lock (and repeats the ask until granted).
    LockRequest {
        /// The client-chosen id; a repeat with the same id is the same request.
        request_id: RequestId,
        /// The client's clock when it sent this.
        stamp: u64,
    },
    /// The coordinator grants the lock, or extends the lease of a holder.
    LockGrant {
        /// The request granted.
        request_id: RequestId,
        /// The grant's fencing token.
        fence: FencingToken,
        /// The lease, counted by the client from `stamp`.
        lease_ms: u64,
        /// The echoed stamp of the client's request or renewal.
        stamp: u64,
    },
    /// The holder asks to extend its lease.
    LockRenew {
        /// The request whose grant is renewed.
        request_id: RequestId,
        /// The token the holder holds.
        fence: FencingToken,
        /// The client's clock when it sent this.
        stamp: u64,
    },
    /// The client gives the lock back, or cancels a request not yet granted.
    LockRelease {
        /// The request released.
        request_id: RequestId,
        /// The token released, when the lock was held.
        fence: Option<FencingToken>,
    },
    /// A node that is not the coordinator refuses a lock request.
    NotLeader {
        /// The refused request.
        request_id: RequestId,
        /// Who the refusing node believes is the coordinator.
        leader: Option<NodeId>,
    },
}

impl Message {
    /// Every wire name, in the order of the enum.
    pub const NAMES: [&'static str; 12] = [
        "ELECTION",
        "ANSWER",
        "COORDINATOR",
        "HEARTBEAT",
        "ACK",
        "LOCK-STATE",
        "REPORT",
        "REQUEST",
        "GRANT",
        "RENEW",
        "RELEASE",
        "NOT-LEADER",
    ];

    /// The message's stable wire name (`GRANT`).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Election => "ELECTION",
            Message::Answer => "ANSWER",
            Message::Coordinator { .. } => "COORDINATOR",
            Message::Heartbeat { .. } => "HEARTBEAT",
            Message::Ack { .. } => "ACK",
            Message::LockStateQuery => "LOCK-STATE",
            Message::LockStateReport { .. } => "REPORT",
            Message::LockRequest { .. } => "REQUEST",
            Message::LockGrant { .. } => "GRANT",
            Message::LockRenew { .. } => "RENEW",
            Message::LockRelease { .. } => "RELEASE",
            Message::NotLeader { .. } => "NOT-LEADER",
        }
    }

    /// Whether this is periodic liveness traffic (`HEARTBEAT`, `ACK`), which logs leave out unless
    /// asked, to keep them readable.
    pub fn is_liveness(&self) -> bool {
        matches!(self, Message::Heartbeat { .. } | Message::Ack { .. })
    }

    /// The message's own fields, in a fixed order (the name is not included).
    pub fn to_fields(&self) -> FieldList {
        let mut out = FieldList::new();
        let mut push = |key: &str, value: String| out.push((key.to_owned(), value));
        match self {
            Message::Election | Message::Answer | Message::LockStateQuery => {}
            Message::Coordinator { stamp } | Message::Heartbeat { stamp } => {
                push("stamp", stamp.to_string());
            }
            Message::Ack { stamp, ok } => {
                push("stamp", stamp.to_string());
                push("ok", yes_no(*ok).to_owned());
            }
            Message::LockStateReport {
                held,
                pending,
                stamp,
            } => {
                let held = match held {
                    Some((request_id, fence)) => format!("{request_id}@{fence}"),
                    None => NONE.to_owned(),
                };
                push("held", held);
                let pending: Vec<String> = pending.iter().map(|id| id.to_string()).collect();
                push("pending", pending.join(" "));
                push("stamp", stamp.to_string());
            }
            Message::LockRequest { request_id, stamp } => {
                push("request", request_id.to_string());
                push("stamp", stamp.to_string());
            }
            Message::LockGrant {
                request_id,
                fence,
                lease_ms,
                stamp,
            } => {
                push("request", request_id.to_string());
                push("fence", fence.to_string());
                push("lease-ms", lease_ms.to_string());
                push("stamp", stamp.to_string());
            }
            Message::LockRenew {
                request_id,
                fence,
                stamp,
            } => {
                push("request", request_id.to_string());
                push("fence", fence.to_string());
                push("stamp", stamp.to_string());
            }
            Message::LockRelease { request_id, fence } => {
                push("request", request_id.to_string());
                push("fence", optional(fence));
            }
            Message::NotLeader { request_id, leader } => {
                push("request", request_id.to_string());
                push("leader", optional(leader));
            }
        }
        out
    }

    /// Parses a message from its wire name (any ASCII case) and fields. Keys are matched ignoring
    /// ASCII case; the first occurrence of a key wins and unknown keys are ignored, so newer peers
    /// can add fields.
    pub fn from_fields(name: &str, fields: &[(String, String)]) -> Result<Message, FieldsError> {
        let name = name.trim();
        let message = match name.to_ascii_uppercase().as_str() {
            "ELECTION" => Message::Election,
            "ANSWER" => Message::Answer,
            "COORDINATOR" => Message::Coordinator {
                stamp: parsed(fields, "stamp")?,
            },
            "HEARTBEAT" => Message::Heartbeat {
                stamp: parsed(fields, "stamp")?,
            },
            "ACK" => Message::Ack {
                stamp: parsed(fields, "stamp")?,
                ok: parse_yes_no("ok", required(fields, "ok")?)?,
            },
            "LOCK-STATE" => Message::LockStateQuery,
            "REPORT" => {
                let held = required(fields, "held")?;
                let held = if held == NONE {
                    None
                } else {
                    let (request_id, fence) =
                        held.split_once('@').ok_or_else(|| invalid("held", held))?;
                    Some((
                        parse_value("held", request_id)?,
                        parse_value("held", fence)?,
                    ))
                };
                let pending = field(fields, "pending")
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|id| parse_value("pending", id))
                    .collect::<Result<Vec<RequestId>, FieldsError>>()?;
                Message::LockStateReport {
                    held,
                    pending,
                    stamp: parsed(fields, "stamp")?,
                }
            }
            "REQUEST" => Message::LockRequest {
                request_id: parsed(fields, "request")?,
                stamp: parsed(fields, "stamp")?,
            },
            "GRANT" => Message::LockGrant {
                request_id: parsed(fields, "request")?,
                fence: parsed(fields, "fence")?,
                lease_ms: parsed(fields, "lease-ms")?,
                stamp: parsed(fields, "stamp")?,
            },
            "RENEW" => Message::LockRenew {
                request_id: parsed(fields, "request")?,
                fence: parsed(fields, "fence")?,
                stamp: parsed(fields, "stamp")?,
            },
            "RELEASE" => Message::LockRelease {
                request_id: parsed(fields, "request")?,
                fence: parsed_optional(fields, "fence")?,
            },
            "NOT-LEADER" => Message::NotLeader {
                request_id: parsed(fields, "request")?,
                leader: parsed_optional(fields, "leader")?,
            },
            _ => return Err(FieldsError::UnknownMessage(name.to_owned())),
        };
        Ok(message)
    }
}

/// One message from one node to another, with the sender's term and Lamport time.
///
/// The transport carries `from` as the KILN/1 `Node:` header and `lamport` as the `Lamport:`
/// header; `to_fields` lists them too, so a transport may also send the whole envelope as a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's current term.
    pub term: Term,
    /// The sender's Lamport time for the send.
    pub lamport: u64,
    /// What is said.
    pub msg: Message,
}

impl Envelope {
    /// The envelope as ordered fields: `message`, `from`, `to`, `term`, `lamport`, then the
    /// message's own fields.
    pub fn to_fields(&self) -> FieldList {
        let mut out = vec![
            ("message".to_owned(), self.msg.name().to_owned()),
            ("from".to_owned(), self.from.to_string()),
            ("to".to_owned(), self.to.to_string()),
            ("term".to_owned(), self.term.to_string()),
            ("lamport".to_owned(), self.lamport.to_string()),
        ];
        out.extend(self.msg.to_fields());
        out
    }

    /// Parses an envelope from the fields `to_fields` produces.
    pub fn from_fields(fields: &[(String, String)]) -> Result<Envelope, FieldsError> {
        Ok(Envelope {
            from: parsed(fields, "from")?,
            to: parsed(fields, "to")?,
            term: parsed(fields, "term")?,
            lamport: parsed(fields, "lamport")?,
            msg: Message::from_fields(required(fields, "message")?, fields)?,
        })
    }
}

/// Why fields did not parse into a message or envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldsError {
    /// A required key is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A key's value does not parse.
    #[error("field `{key}` has an invalid value `{value}`")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value as received.
        value: String,
    },
    /// The message name is not one of `Message::NAMES`.
    #[error("unknown cluster message `{0}`")]
    UnknownMessage(String),
}

/// The value written for an absent optional value.
const NONE: &str = "none";

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn optional<T: fmt::Display>(value: &Option<T>) -> String {
    match value {
        Some(value) => value.to_string(),
        None => NONE.to_owned(),
    }
}

fn invalid(key: &'static str, value: &str) -> FieldsError {
    FieldsError::Invalid {
        key,
        value: value.to_owned(),
    }
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(name, _)| name.trim().eq_ignore_ascii_case(key))
        .map(|(_, value)| value.trim())
}

fn required<'a>(fields: &'a [(String, String)], key: &'static str) -> Result<&'a str, FieldsError> {
    field(fields, key).ok_or(FieldsError::Missing(key))
}

fn parse_value<T: FromStr>(key: &'static str, value: &str) -> Result<T, FieldsError> {
    value.parse().map_err(|_| invalid(key, value))
}

fn parsed<T: FromStr>(fields: &[(String, String)], key: &'static str) -> Result<T, FieldsError> {
    parse_value(key, required(fields, key)?)
}

/// An optional value: absent or `none` is `None`.
fn parsed_optional<T: FromStr>(
    fields: &[(String, String)],
    key: &'static str,
) -> Result<Option<T>, FieldsError> {
    match field(fields, key) {
        None => Ok(None),
        Some(value) if value.eq_ignore_ascii_case(NONE) => Ok(None),
        Some(value) => parse_value(key, value).map(Some),
    }
}

fn parse_yes_no(key: &'static str, value: &str) -> Result<bool, FieldsError> {
    if value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(invalid(key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fence(term: u64, seq: u64) -> FencingToken {
        FencingToken {
            term: Term(term),
            seq,
        }
    }

    fn every_message() -> Vec<Message> {
        vec![
            Message::Election,
            Message::Answer,
            Message::Coordinator { stamp: 7 },
            Message::Heartbeat { stamp: 8 },
            Message::Ack { stamp: 9, ok: true },
            Message::Ack {
                stamp: 9,
                ok: false,
            },
            Message::LockStateQuery,
            Message::LockStateReport {
                held: Some((RequestId(4), fence(2, 3))),
                pending: vec![RequestId(5), RequestId(6)],
                stamp: 10,
            },
            Message::LockStateReport {
                held: None,
                pending: vec![],
                stamp: 11,
            },
            Message::LockRequest {
                request_id: RequestId(12),
                stamp: 13,
            },
            Message::LockGrant {
                request_id: RequestId(12),
                fence: fence(3, 1),
                lease_ms: 300,
                stamp: 13,
            },
            Message::LockRenew {
                request_id: RequestId(12),
                fence: fence(3, 1),
                stamp: 14,
            },
            Message::LockRelease {
                request_id: RequestId(12),
                fence: Some(fence(3, 1)),
            },
            Message::LockRelease {
                request_id: RequestId(12),
                fence: None,
            },
            Message::NotLeader {
                request_id: RequestId(12),
                leader: Some(NodeId(4)),
            },
            Message::NotLeader {
                request_id: RequestId(12),
                leader: None,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_in_an_envelope() {
        let mut names = std::collections::BTreeSet::new();
        for msg in every_message() {
            names.insert(msg.name());
            let envelope = Envelope {
                from: NodeId(1),
                to: NodeId(2),
                term: Term(3),
                lamport: 17,
                msg,
            };
            let fields = envelope.to_fields();
            assert_eq!(
                fields[0],
                ("message".to_owned(), envelope.msg.name().to_owned())
            );
            assert_eq!(Envelope::from_fields(&fields), Ok(envelope));
        }
        assert_eq!(
            names.len(),
            Message::NAMES.len(),
            "the test covers every message"
        );
        assert!(names.iter().all(|name| Message::NAMES.contains(name)));
    }

    #[test]
    fn fields_are_lenient_about_case_and_spaces_but_not_values() {
        let fields = vec![
            ("Message".to_owned(), " grant ".to_owned()),
            ("FROM".to_owned(), "1".to_owned()),
            ("to".to_owned(), "2".to_owned()),
            ("term".to_owned(), "3".to_owned()),
            ("lamport".to_owned(), "4".to_owned()),
            ("request".to_owned(), "5".to_owned()),
            ("fence".to_owned(), "3.1".to_owned()),
            ("lease-ms".to_owned(), "300".to_owned()),
            ("stamp".to_owned(), "9".to_owned()),
            ("future-field".to_owned(), "ignored".to_owned()),
        ];
        let envelope = Envelope::from_fields(&fields).expect("valid");
        assert_eq!(envelope.msg.name(), "GRANT");

        let mut bad = fields.clone();
        bad[6].1 = "3".to_owned();
        assert_eq!(
            Envelope::from_fields(&bad),
            Err(FieldsError::Invalid {
                key: "fence",
                value: "3".to_owned()
            })
        );
        let missing: Vec<_> = fields
            .iter()
            .filter(|(k, _)| k != "stamp")
            .cloned()
            .collect();
        assert_eq!(
            Envelope::from_fields(&missing),
            Err(FieldsError::Missing("stamp"))
        );
        let mut unknown = fields;
        unknown[0].1 = "GOSSIP".to_owned();
        assert_eq!(
            Envelope::from_fields(&unknown),
            Err(FieldsError::UnknownMessage("GOSSIP".to_owned()))
        );
    }

    #[test]
    fn fencing_tokens_order_by_term_then_seq() {
        assert!(fence(2, 100) < fence(3, 1));
        assert!(fence(3, 1) < fence(3, 2));
        assert!(fence(2, 100).as_u64() < fence(3, 1).as_u64());
        assert_eq!("3.17".parse(), Ok(fence(3, 17)));
        assert!("3".parse::<FencingToken>().is_err());
        assert!("x.1".parse::<FencingToken>().is_err());
        assert_eq!(
            serde_json::to_string(&fence(3, 17)).ok(),
            Some("\"3.17\"".to_owned())
        );
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(
            name in "[A-Z-]{0,12}",
            fields in proptest::collection::vec(("[a-z-]{1,8}", "[ -~]{0,12}"), 0..8),
        ) {
            let _ = Message::from_fields(&name, &fields);
            let _ = Envelope::from_fields(&fields);
        }

        #[test]
        fn reports_round_trip(
            held in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
            pending in proptest::collection::vec(any::<u64>(), 0..5),
            stamp in any::<u64>(),
        ) {
            let msg = Message::LockStateReport {
                held: held.map(|(id, term, seq)| (RequestId(id), fence(term, seq))),
                pending: pending.into_iter().map(RequestId).collect(),
                stamp,
            };
            prop_assert_eq!(Message::from_fields(msg.name(), &msg.to_fields()), Ok(msg));
        }
    }
}
