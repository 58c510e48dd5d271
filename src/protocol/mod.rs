//! The KILN/1 wire format, as pure code: no sockets, no threads, no clocks.
//!
//! `request` parses what a client sends (incrementally, enforcing every limit as bytes arrive) and
//! encodes requests for the client; `frame` encodes and decodes the status line and the frames of an
//! answer; `fields` holds the `key: value` bodies (`result`, `info`) and `problems` lines. The server
//! (`crate::server`) and the client (`crate::client`) both build on this module; `docs/protocol.md` is
//! the contract it implements.

pub mod fields;
pub mod frame;
pub mod request;

use std::fmt;

pub use fields::{Fields, Problem, Severity, Verdict};
pub use frame::{Channel, Frame, FrameDecoder, FrameError, Status};
pub use request::{
    ParseError, ParseLimits, Request, RequestHead, RequestParser, encode_request_head,
};

/// The protocol name and version that starts every request and status line.
pub const PROTOCOL: &str = "KILN/1";

/// Default limit on the bytes of source a server accepts (1 MiB).
pub const DEFAULT_MAX_SOURCE: u64 = 1024 * 1024;
/// Default limit on the bytes of stdin a server accepts (8 MiB).
pub const DEFAULT_MAX_STDIN: u64 = 8 * 1024 * 1024;
/// Limit on the bytes of the intent line and headers together (16 KiB).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Limit on the number of lines of the intent line and headers together.
pub const MAX_HEAD_LINES: usize = 64;

/// What a request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    /// Liveness check; answered with `verdict: pong`.
    Ping,
    /// Describe the server: version, model, limits, languages.
    Info,
    /// Server counters (accepted, served, busy, ...), as `key: value` lines.
    Stats,
    /// Compile or syntax-check the source and report problems.
    Check,
    /// Compile if needed, then run the program with stdin and arguments, streaming its output.
    Run,
    /// Compile and return the compiled program as an artifact.
    Build,
    /// Cluster mode: one message from a peer node (`Message:`, `Node:`, `Lamport:` headers).
    Cluster,
    /// Cluster mode: the nodes, leader, clocks, lock holder and queue, as JSON.
    ClusterStatus,
    /// Cluster mode: the node's event log as JSON lines (`Since-Lamport:` to skip older lines).
    ClusterLog,
}

impl Intent {
    /// Every intent, in the order the docs list them.
    pub const ALL: [Intent; 9] = [
        Intent::Ping,
        Intent::Info,
        Intent::Stats,
        Intent::Check,
        Intent::Run,
        Intent::Build,
        Intent::Cluster,
        Intent::ClusterStatus,
        Intent::ClusterLog,
    ];

    /// The word on the wire (`RUN`).
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Ping => "PING",
            Intent::Info => "INFO",
            Intent::Stats => "STATS",
            Intent::Check => "CHECK",
            Intent::Run => "RUN",
            Intent::Build => "BUILD",
            Intent::Cluster => "CLUSTER",
            Intent::ClusterStatus => "CLUSTER-STATUS",
            Intent::ClusterLog => "CLUSTER-LOG",
        }
    }

    /// Parses the word on the wire, ignoring ASCII case.
    pub fn parse(word: &str) -> Option<Intent> {
        Intent::ALL
            .into_iter()
            .find(|intent| intent.as_str().eq_ignore_ascii_case(word))
    }

    /// Whether this intent names a language and carries source.
    pub fn takes_language(self) -> bool {
        matches!(self, Intent::Check | Intent::Run | Intent::Build)
    }

    /// Whether this intent belongs to cluster mode (answered by the cluster runtime, never queued
    /// behind jobs).
    pub fn is_cluster(self) -> bool {
        matches!(
            self,
            Intent::Cluster | Intent::ClusterStatus | Intent::ClusterLog
        )
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The code of a `KILN/1 ERROR` status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request does not follow the protocol.
    BadRequest,
    /// The token is missing or wrong.
    Unauthorized,
    /// The server cannot run the requested language.
    UnsupportedLanguage,
    /// A length exceeds the server's limit.
    TooLarge,
    /// Every worker is taken and the queue is full; try again shortly.
    Busy,
    /// The request did not arrive in time.
    Timeout,
    /// The server is shutting down.
    Unavailable,
    /// Something failed inside the server.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::UnsupportedLanguage,
        ErrorCode::TooLarge,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The word on the wire (`bad-request`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnsupportedLanguage => "unsupported-language",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses the word on the wire.
    pub fn parse(word: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == word)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shortens and escapes untrusted text so it can be quoted inside a one-line error message.
pub fn quote_for_message(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (count, ch) in text.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip_and_ignore_case() {
        for intent in Intent::ALL {
            assert_eq!(Intent::parse(intent.as_str()), Some(intent));
            assert_eq!(Intent::parse(&intent.as_str().to_lowercase()), Some(intent));
        }
        assert_eq!(Intent::parse("FETCH"), None);
    }

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }

    #[test]
    fn quoting_escapes_controls_and_truncates() {
        assert_eq!(quote_for_message(b"a\nb", 10), "a\\nb");
        assert_eq!(quote_for_message(b"abcdef", 3), "abc…");
        assert_eq!(quote_for_message(&[0xff, b'x'], 5), "\u{fffd}x");
    }
}
